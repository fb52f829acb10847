/* test_tokenizer.c - the WordPiece and byte-level BPE tokenizers against
 * golden token IDs of the Hugging Face `tokenizers` package
 * (tests/data/tokenizers/, written by scripts/gen_tokenizer_golden.py): every
 * ID equal, the mismatch count printed; BERT's known traps one by one; UTF-8
 * decoding; and each kind of bad input refused with file, line and reason. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "daemon/data/tokenizer.h"
#include "daemon/data/unicode.h"
#include "kernels/common.h"

#define DATA "tests/data/tokenizers"

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s (run from the repository root)", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, (size_t)n, f), (size_t)n);
    p[n] = 0;
    fclose(f);
    *len = (size_t)n;
    return p;
}

static uint32_t *read_ids(const char *path, size_t *n)
{
    size_t len;
    char *s = slurp(path, &len), *e;
    uint32_t *ids = malloc((len / 2 + 1) * sizeof *ids);
    assert_non_null(ids);
    *n = 0;
    for (char *p = s; *p; p = e) {
        unsigned long v = strtoul(p, &e, 10);
        if (e == p)
            break;
        ids[(*n)++] = (uint32_t)v;
    }
    free(s);
    return ids;
}

/* Encodes sample.txt with the tokenizer at tok_path and compares with the
 * golden IDs; returns the number of mismatches (positions that differ, plus
 * the difference in length). */
static size_t golden_mismatches(const char *tok_path, const char *ids_path, const char *what)
{
    char err[1024];
    nb_tokenizer_t *t;
    if (nb_tokenizer_load(tok_path, &t, err, sizeof err) != 0)
        fail_msg("%s", err);
    size_t len, ngold;
    char *text = slurp(DATA "/sample.txt", &len);
    uint32_t *gold = read_ids(ids_path, &ngold);
    nb_idvec_t v = {0};
    assert_int_equal(nb_tokenizer_encode(t, text, len, &v, err, sizeof err), 0);
    size_t mism = v.n > ngold ? v.n - ngold : ngold - v.n, first = SIZE_MAX;
    for (size_t i = 0; i < v.n && i < ngold; i++) {
        if (v.ids[i] != gold[i]) {
            mism++;
            if (first == SIZE_MAX)
                first = i;
        }
    }
    printf("%s (%s): %zu tokens, reference %zu, %zu mismatches", what, tok_path, v.n, ngold, mism);
    if (first != SIZE_MAX)
        printf(" (first at token %zu: %u, reference %u)", first, v.ids[first], gold[first]);
    printf("\n");
    free(v.ids), free(gold), free(text);
    nb_tokenizer_free(t);
    return mism;
}

static void test_wordpiece_golden(void **state)
{
    assert_int_equal(golden_mismatches(DATA "/minilm", DATA "/wordpiece.ids", "wordpiece"), 0);
    /* decoding gives the reference decoder's text (special tokens kept) */
    char err[512];
    nb_tokenizer_t *t;
    assert_int_equal(nb_tokenizer_load(DATA "/minilm", &t, err, sizeof err), 0);
    size_t n, len, dlen;
    uint32_t *ids = read_ids(DATA "/wordpiece.ids", &n);
    char *want = slurp(DATA "/wordpiece.decoded.txt", &len), *got;
    assert_int_equal(nb_tokenizer_decode(t, ids, n, &got, &dlen, err, sizeof err), 0);
    assert_int_equal(dlen, len);
    assert_memory_equal(got, want, len);
    free(got), free(want), free(ids);
    nb_tokenizer_free(t);
}

static void test_bpe_golden(void **state)
{
    assert_int_equal(golden_mismatches(DATA "/bpe", DATA "/bpe.ids", "bpe"), 0);
    assert_int_equal(golden_mismatches(DATA "/bpe.tokenizer.json", DATA "/bpe.ids", "bpe"), 0);
    /* byte-level decoding gives the text back, byte for byte */
    char err[512];
    nb_tokenizer_t *t;
    assert_int_equal(nb_tokenizer_load(DATA "/bpe", &t, err, sizeof err), 0);
    assert_int_equal(nb_tokenizer_kind(t), NB_TOK_BPE);
    assert_int_equal(nb_tokenizer_vocab(t), 2257);
    size_t n, len, dlen;
    uint32_t *ids = read_ids(DATA "/bpe.ids", &n);
    char *want = slurp(DATA "/sample.txt", &len), *got;
    assert_int_equal(nb_tokenizer_decode(t, ids, n, &got, &dlen, err, sizeof err), 0);
    assert_int_equal(dlen, len);
    assert_memory_equal(got, want, len);
    free(got), free(want), free(ids);
    nb_tokenizer_free(t);
}

static void expect(nb_tokenizer_t *t, const char *text, const uint32_t *want, size_t n)
{
    char err[512];
    nb_idvec_t v = {0};
    assert_int_equal(nb_tokenizer_encode(t, text, strlen(text), &v, err, sizeof err), 0);
    if (v.n != n)
        fail_msg("'%s': %zu tokens, want %zu", text, v.n, n);
    for (size_t i = 0; i < n; i++)
        if (v.ids[i] != want[i])
            fail_msg("'%s': token %zu is %u, want %u", text, i, v.ids[i], want[i]);
    free(v.ids);
}

#define EXPECT(t, text, ...)                                                   \
    do {                                                                       \
        static const uint32_t w_[] = {__VA_ARGS__};                            \
        expect(t, text, w_, NB_ARRAY_LEN(w_));                                 \
    } while (0)

/* BERT's traps, IDs from the reference (MiniLM's vocabulary). */
static void test_wordpiece_traps(void **state)
{
    char err[512];
    nb_tokenizer_t *t;
    assert_int_equal(nb_tokenizer_load(DATA "/minilm", &t, err, sizeof err), 0);
    /* a word-final capital sigma lower-cases to σ (per character), not ς */
    EXPECT(t, "\xce\x9f\xce\x94\xce\xa5\xce\xa3\xce\xa3\xce\x95\xce\xa5\xce\xa3", 1169, 29722, 29735, 29733,
           29733, 29723, 29735, 29733);
    /* literal [SEP] is the special token; [sep] is not */
    EXPECT(t, "a[SEP]b [sep]", 1037, 102, 1038, 1031, 19802, 1033);
    /* ° and € stay inside their words */
    EXPECT(t, "21.5\xc2\xb0" "C 12\xe2\x82\xac", 2538, 1012, 1019, 7737, 2278, 2260, 30102);
    /* accents stripped after NFD (İ -> i, Å -> a) */
    EXPECT(t, "\xc4\xb0stanbul \xc3\x85ngstr\xc3\xb6m", 9960, 17076, 15687);
    /* CJK characters one by one; one missing from the vocabulary is [UNK] */
    EXPECT(t, "\xe6\x88\x91\xe7\x88\xb1NLP", 1855, 100, 17953, 2361);
    /* a word with any piece missing is [UNK] as a whole */
    EXPECT(t, "ab\xf0\x9f\x99\x82" "cd ok", 100, 7929);
    /* zero-width space removed, tab and no-break space split */
    EXPECT(t, "Hello\xe2\x80\x8bworld\tx\xc2\xa0y", 7592, 11108, 1060, 1061);
    /* more than 100 characters: [UNK] */
    char long_word[102];
    memset(long_word, 'x', 101);
    long_word[101] = 0;
    EXPECT(t, long_word, 100);
    nb_tokenizer_free(t);
}

static void test_bpe_cases(void **state)
{
    char err[512];
    nb_tokenizer_t *t;
    assert_int_equal(nb_tokenizer_load(DATA "/bpe", &t, err, sizeof err), 0);
    /* runs of spaces leave their last space to the next word; <|endoftext|> is special */
    EXPECT(t, "Hello  world\n\n the<|endoftext|>x", 40, 1960, 79, 221, 2183, 199, 199, 267, 0, 88);
    EXPECT(t, "it's  ", 280, 585, 270);
    nb_tokenizer_free(t);
}

/* Random text (ASCII, odd spaces, accents, marks, CJK, emoji, specials,
 * long runs): byte-level BPE gives it back byte for byte; WordPiece gives
 * IDs inside its vocabulary. Run under ASan by make asan. */
static void test_random_text(void **state)
{
    static const uint32_t pool[] = {'a', 'Z', '0', ' ', ' ', ' ', '\n', '\t', '\r', '\'', 's', '.', '#', 0xA0,
                                    0x2003, 0x3000, 0xE9, 0x301, 0x3A3, 0x130, 0x4E2D, 0xD55C, 0x1F600,
                                    0x200D, 0xFFFD, 0x7, 0x85, 0x0378, 0xE000, 0x10FFFF, '[', ']', '<', '|'};
    static const char *const bits[] = {"[SEP]", "<|endoftext|>", "[UNK]", "'ll", "  ", "\xc2\xb0"};
    char err[512];
    nb_tokenizer_t *bpe, *wp;
    assert_int_equal(nb_tokenizer_load(DATA "/bpe", &bpe, err, sizeof err), 0);
    assert_int_equal(nb_tokenizer_load(DATA "/minilm", &wp, err, sizeof err), 0);
    uint64_t x = 88172645463325252ULL;
    char *buf = malloc(70000);
    assert_non_null(buf);
    for (int iter = 0; iter < 300; iter++) {
        size_t n = 0;
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t target = iter == 299 ? 60000 : x % 400;
        while (n < target) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            if (x % 10 == 0) {
                const char *b = bits[(x >> 8) % NB_ARRAY_LEN(bits)];
                memcpy(buf + n, b, strlen(b));
                n += strlen(b);
            } else if (x % 37 == 1) { /* a long run of one character */
                uint32_t c = pool[(x >> 8) % NB_ARRAY_LEN(pool)];
                for (int r = 0; r < 300; r++)
                    n += (size_t)nb_utf8_encode(c, (unsigned char *)buf + n);
            } else {
                n += (size_t)nb_utf8_encode(pool[(x >> 8) % NB_ARRAY_LEN(pool)], (unsigned char *)buf + n);
            }
        }
        nb_idvec_t v = {0};
        assert_int_equal(nb_tokenizer_encode(bpe, buf, n, &v, err, sizeof err), 0);
        char *text;
        size_t len;
        assert_int_equal(nb_tokenizer_decode(bpe, v.ids, v.n, &text, &len, err, sizeof err), 0);
        assert_int_equal(len, n);
        assert_memory_equal(text, buf, n);
        free(text);
        v.n = 0;
        assert_int_equal(nb_tokenizer_encode(wp, buf, n, &v, err, sizeof err), 0);
        for (size_t i = 0; i < v.n; i++)
            assert_true(v.ids[i] < nb_tokenizer_vocab(wp));
        assert_int_equal(nb_tokenizer_decode(wp, v.ids, v.n, &text, &len, err, sizeof err), 0);
        free(text);
        free(v.ids);
    }
    free(buf);
    nb_tokenizer_free(bpe);
    nb_tokenizer_free(wp);
}

static void test_utf8(void **state)
{
    uint32_t cp;
    assert_int_equal(nb_utf8_decode((const unsigned char *)"\xe2\x82\xac", 3, &cp), 3);
    assert_int_equal(cp, 0x20AC);
    assert_int_equal(nb_utf8_decode((const unsigned char *)"\xf0\x9f\x99\x82", 4, &cp), 4);
    assert_int_equal(cp, 0x1F642);
    static const char *const bad[] = {"\x80", "\xc0\x80", "\xc1\xbf", "\xe0\x80\x80", "\xed\xa0\x80",
                                      "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xe2\x82", "\xff"};
    for (size_t i = 0; i < NB_ARRAY_LEN(bad); i++)
        assert_int_equal(nb_utf8_decode((const unsigned char *)bad[i], strlen(bad[i]), &cp), 0);
    uint32_t d[4];
    assert_int_equal(nb_uni_nfd(0xD55C, d), 3); /* 한 = ᄒ ᅡ ᆫ */
    assert_int_equal(d[0], 0x1112);
    assert_int_equal(d[1], 0x1161);
    assert_int_equal(d[2], 0x11AB);
    assert_int_equal(nb_uni_nfd(0x212B, d), 2); /* Å (angstrom) = A + ring */
    assert_int_equal(d[0], 'A');
    assert_int_equal(d[1], 0x30A);
    assert_int_equal(nb_uni_lower(0x3A3, d), 1); /* Σ -> σ, never ς */
    assert_int_equal(d[0], 0x3C3);
    assert_int_equal(nb_uni_lower(0x130, d), 2); /* İ -> i + dot above */
    assert_int_equal(nb_ucat(0xB0), NB_UCAT_So);
    assert_int_equal(nb_ucat(0x20AC), NB_UCAT_Sc);
    assert_int_equal(nb_ucat(0x10FFFF), NB_UCAT_Cn);
    /* the per-thread cache of the last run changes no answer: every code
     * point, forward, then in a scattered order */
    unsigned char *cat = malloc(0x110000);
    assert_non_null(cat);
    for (uint32_t c = 0; c < 0x110000; c++)
        cat[c] = (unsigned char)nb_ucat(c);
    for (uint32_t i = 0, c = 0; i < 0x110000; i++, c = (c + 0x9E3B) % 0x110000)
        if (nb_ucat(c) != cat[c])
            fail_msg("U+%04X: category %d, then %d", c, cat[c], nb_ucat(c));
    free(cat);
}

/* Not-UTF-8 text is refused with its offset and line; nothing is replaced. */
static void test_text_not_utf8(void **state)
{
    char err[512];
    nb_tokenizer_t *t;
    assert_int_equal(nb_tokenizer_load(DATA "/bpe", &t, err, sizeof err), 0);
    nb_idvec_t v = {0};
    const char text[] = "line one\nline \xc3\xa9 two \xff\n";
    assert_int_equal(nb_tokenizer_encode(t, text, sizeof text - 1, &v, err, sizeof err), NB_EFORMAT);
    assert_non_null(strstr(err, "byte offset 21 (line 2, character 12): byte 0xff is not UTF-8"));
    assert_int_equal(v.n, 0);
    free(v.ids);
    nb_tokenizer_free(t);
}

static char dir[64];

static int setup_dir(void **state)
{
    snprintf(dir, sizeof dir, "/tmp/nb_tok_test_%d", (int)getpid());
    mkdir(dir, 0700);
    return 0;
}

static int teardown_dir(void **state)
{
    static const char *const names[] = {"vocab.txt", "vocab.json", "merges.txt", "tokenizer.json",
                                        "tokenizer_config.json"};
    char p[128];
    for (size_t i = 0; i < NB_ARRAY_LEN(names); i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
    return 0;
}

static void put(const char *name, const char *content, size_t n)
{
    char p[128];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(content, 1, n, f), n);
    fclose(f);
}

#define PUT(name, s) put(name, s, sizeof(s) - 1)

/* Loading dir fails with code rc and a message holding each of the strings. */
static void refused(const char *path, int rc, const char *s1, const char *s2)
{
    char err[1024];
    nb_tokenizer_t *t = NULL;
    int got = nb_tokenizer_load(path, &t, err, sizeof err);
    if (got != rc)
        fail_msg("%s: loaded with %d, want %d (%s)", path, got, rc, got ? err : "no error");
    if (!strstr(err, s1) || (s2 && !strstr(err, s2)))
        fail_msg("message '%s' lacks '%s' / '%s'", err, s1, s2 ? s2 : "");
    printf("refused as it should be: %s\n", err);
    assert_null(t);
}

/* The cased variant (do_lower_case false: no lower case, no accent
 * stripping) of the same vocabulary. */
static void test_wordpiece_cased_golden(void **state)
{
    char vocab[4096], link[128];
    assert_non_null(realpath(DATA "/minilm/vocab.txt", vocab));
    snprintf(link, sizeof link, "%s/vocab.txt", dir);
    assert_int_equal(symlink(vocab, link), 0);
    PUT("tokenizer_config.json", "{\"do_lower_case\": false, \"unk_token\": \"[UNK]\"}");
    assert_int_equal(golden_mismatches(dir, DATA "/wordpiece_cased.ids", "wordpiece cased"), 0);
}

static void test_bad_vocab_txt(void **state)
{
    PUT("vocab.txt", "[PAD]\n[UNK]\n\nhello\n");
    refused(dir, NB_EFORMAT, "vocab.txt: line 3: empty line", NULL);
    PUT("vocab.txt", "[PAD]\n[UNK]\nhello\nworld\nhello\n");
    refused(dir, NB_EFORMAT, "vocab.txt: line 5: token 'hello' is given twice", NULL);
    PUT("vocab.txt", "[PAD]\n[UNK]\nhel lo\n");
    refused(dir, NB_EFORMAT, "vocab.txt: line 3: byte 4 is a space inside a token", NULL);
    PUT("vocab.txt", "[PAD]\n[UNK]\nhello\nw\xe9rld\n");
    refused(dir, NB_EFORMAT, "vocab.txt: line 4: byte 2 (0xe9) is not UTF-8", NULL);
    PUT("vocab.txt", "[PAD]\nhello\n");
    refused(dir, NB_EFORMAT, "no unknown-word token", NULL);
    PUT("vocab.txt", "[PAD]\r\n[UNK]\r\nhello\r\n"); /* CRLF is fine */
    char err[512];
    nb_tokenizer_t *t;
    assert_int_equal(nb_tokenizer_load(dir, &t, err, sizeof err), 0);
    EXPECT(t, "Hello bye", 2, 1);
    /* a token ID beyond the vocabulary is refused by decode */
    uint32_t ids[] = {2, 3};
    char *text;
    size_t len;
    assert_int_equal(nb_tokenizer_decode(t, ids, 2, &text, &len, err, sizeof err), NB_ERANGE);
    assert_non_null(strstr(err, "token 1 is 3, not in the vocabulary of 3"));
    nb_tokenizer_free(t);
    PUT("tokenizer_config.json", "{\"do_lower_case\": true,\n \"x\": }");
    refused(dir, NB_EFORMAT, "tokenizer_config.json: line 2", NULL);
}

/* A byte-level vocabulary: the 256 byte tokens, then what the merges need. */
static void put_bpe(const char *extra_vocab, const char *merges)
{
    char *v = malloc(65536);
    assert_non_null(v);
    size_t n = (size_t)sprintf(v, "{");
    for (int b = 0, next = 256; b < 256; b++) {
        int keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        uint32_t cp = keep ? (uint32_t)b : (uint32_t)next++;
        unsigned char u[4];
        int k = nb_utf8_encode(cp, u);
        n += (size_t)sprintf(v + n, "%s\"%s%.*s\": %d", b ? ", " : "", cp == '"' || cp == '\\' ? "\\" : "", k,
                             (const char *)u, b);
    }
    n += (size_t)sprintf(v + n, "%s}\n", extra_vocab);
    put("vocab.json", v, n);
    put("merges.txt", merges, strlen(merges));
    free(v);
}

static void test_bad_bpe(void **state)
{
    put_bpe(", \"he\": 256, \"hel\": 257", "#version: 0.2\nh e\nhe l\n");
    char err[512];
    nb_tokenizer_t *t;
    assert_int_equal(nb_tokenizer_load(dir, &t, err, sizeof err), 0);
    EXPECT(t, "hello", 257, 'l', 'o');
    uint32_t ids[] = {257, 258};
    char *text;
    size_t len;
    assert_int_equal(nb_tokenizer_decode(t, ids, 2, &text, &len, err, sizeof err), NB_ERANGE);
    assert_non_null(strstr(err, "token 1 is 258, not in the vocabulary of 258"));
    nb_tokenizer_free(t);

    put_bpe(", \"he\": 256", "#version: 0.2\nh e\nhe zz\n");
    refused(dir, NB_EFORMAT, "merges.txt: line 3: token 'zz' is not in the vocabulary", NULL);
    put_bpe(", \"he\": 256", "h e\nh l\n");
    refused(dir, NB_EFORMAT, "merges.txt: line 2: the merged token 'hl' is not in the vocabulary", NULL);
    put_bpe(", \"he\": 256", "h e x\n");
    refused(dir, NB_EFORMAT, "merges.txt: line 1: expected two tokens separated by one space", NULL);
    put_bpe(", \"he\": 256", "h e\nh e\n");
    refused(dir, NB_EFORMAT, "merges.txt: line 2: the pair 'h' 'e' is given twice", NULL);
    put_bpe(", \"he\": \"x\"", "h e\n");
    refused(dir, NB_EFORMAT, "vocab.json: entry[\"he\"]: the ID is not an integer", NULL);
    put_bpe(", \"he\": 3", "h e\n");
    refused(dir, NB_EFORMAT, "ID 3 is given twice ('he' and '\xc4\x83')", NULL);
    PUT("vocab.json", "{\"a\": 0,\n \"b\": 1,\n \"c\" 2}");
    refused(dir, NB_EFORMAT, "vocab.json: line 3", NULL);
    PUT("vocab.json", "{\"a\": 0, \"b\": 1, \"ab\": 2}");
    PUT("merges.txt", "a b\n");
    refused(dir, NB_EFORMAT, "lacks the token of byte 0x00", "not byte-level BPE");
}

static void test_bad_tokenizer_json(void **state)
{
    char p[128];
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    PUT("tokenizer.json", "{\"model\": {\"type\": \"Unigram\"}}");
    refused(p, NB_EINVAL, "model.type Unigram is not supported", NULL);
    PUT("tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"[UNK]\": 0}},\n"
                          " \"normalizer\": {\"type\": \"NFC\"}, \"pre_tokenizer\": {\"type\": \"BertPreTokenizer\"}}");
    refused(p, NB_EINVAL, "normalizer NFC is not supported", NULL);
    PUT("tokenizer.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]},\n"
                          " \"normalizer\": null, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}");
    refused(p, NB_EFORMAT, "model.merges[0]: token 'b' is not in the vocabulary", NULL);
    PUT("tokenizer.json", "{\"model\": {\"type\": \"BPE\",\n\n \"vocab\": {\"a\": 0, \"a\": 1}}}");
    refused(p, NB_EFORMAT, "tokenizer.json: line 3", "duplicate");
    refused("/nonexistent/tok", NB_EIO, "no such tokenizer file or directory", NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wordpiece_golden),
        cmocka_unit_test(test_bpe_golden),
        cmocka_unit_test(test_wordpiece_traps),
        cmocka_unit_test(test_bpe_cases),
        cmocka_unit_test(test_random_text),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_text_not_utf8),
        cmocka_unit_test_setup_teardown(test_wordpiece_cased_golden, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_bad_vocab_txt, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_bad_bpe, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_bad_tokenizer_json, setup_dir, teardown_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
