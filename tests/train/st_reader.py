#!/usr/bin/env python3
"""An independent reader for the safetensors files nebula-weights exports.

    st_reader.py check WEIGHTS SAFETENSORS NAMES   # json + struct only
    st_reader.py torch WEIGHTS SAFETENSORS NAMES   # safetensors + torch

Reads the Nebula weights file (docs/model.md) and the safetensors file
(header parsed with json, values with struct, or loaded by the
`safetensors` package into torch tensors) and compares every value of
every tensor, through the GPT-2 / BERT name maps of docs/import-export.md
written out again here. Exit 0 when every value is equal, 1 otherwise,
77 (torch mode) when torch or safetensors is not importable.
"""
import json
import re
import struct
import sys


def read_weights(path):
    """Returns the 15 header fields and {name: (shape, [values])}."""
    b = open(path, "rb").read()
    assert b[:4] == b"NBWT", "not a weights file"
    hdr = struct.unpack_from("<15i", b, 8)
    nt, npar = struct.unpack_from("<IQ", b, 68)
    at, table = 80, []
    for _ in range(nt):
        name = b[at:at + 32].split(b"\0")[0].decode()
        nd, s0, s1 = struct.unpack_from("<IQQ", b, at + 32)
        table.append((name, [s0, s1][:nd]))
        at += 52
    vals = struct.unpack_from("<%df" % npar, b, at)
    assert at + 4 * npar == len(b), "weights file length"
    out, off = {}, 0
    for name, shape in table:
        n = 1
        for d in shape:
            n *= d
        out[name] = (shape, list(vals[off:off + n]))
        off += n
    return hdr, out


def read_safetensors(path):
    """Returns (metadata, {name: (dtype, shape, [values])}), checking the layout."""
    b = open(path, "rb").read()
    (n,) = struct.unpack_from("<Q", b, 0)
    assert 8 + n <= len(b), "header length past the end"
    hdr = json.loads(b[8:8 + n].decode("utf-8"))
    assert (8 + n) % 8 == 0, "data not 8-byte aligned"
    meta = hdr.pop("__metadata__", {})
    data = b[8 + n:]
    spans = sorted((v["data_offsets"][0], v["data_offsets"][1], k) for k, v in hdr.items())
    at = 0
    for lo, hi, k in spans:
        assert lo == at, "tensor %s: offsets not contiguous" % k
        at = hi
    assert at == len(data), "tensors do not cover the data"
    out = {}
    for k, v in hdr.items():
        assert v["dtype"] == "F32", "tensor %s: dtype %s" % (k, v["dtype"])
        lo, hi = v["data_offsets"]
        n = 1
        for d in v["shape"]:
            n *= d
        assert hi - lo == 4 * n, "tensor %s: byte range" % k
        out[k] = (v["dtype"], v["shape"], list(struct.unpack_from("<%df" % n, data, lo)))
    return meta, out


BLOCK = {  # nebula suffix: (gpt2 suffix, transposed, bert suffix)
    "ln1.w": ("ln_1.weight", False, "attention.output.LayerNorm.weight"),
    "ln1.b": ("ln_1.bias", False, "attention.output.LayerNorm.bias"),
    "qkv.w": ("attn.c_attn.weight", True, None),
    "qkv.b": ("attn.c_attn.bias", False, None),
    "proj.w": ("attn.c_proj.weight", True, "attention.output.dense.weight"),
    "proj.b": ("attn.c_proj.bias", False, "attention.output.dense.bias"),
    "ln2.w": ("ln_2.weight", False, "output.LayerNorm.weight"),
    "ln2.b": ("ln_2.bias", False, "output.LayerNorm.bias"),
    "fc.w": ("mlp.c_fc.weight", True, "intermediate.dense.weight"),
    "fc.b": ("mlp.c_fc.bias", False, "intermediate.dense.bias"),
    "fcproj.w": ("mlp.c_proj.weight", True, "output.dense.weight"),
    "fcproj.b": ("mlp.c_proj.bias", False, "output.dense.bias"),
}
TOP = {"wte": ("wte.weight", "embeddings.word_embeddings.weight"),
       "wpe": ("wpe.weight", "embeddings.position_embeddings.weight"),
       "emb_ln.w": (None, "embeddings.LayerNorm.weight"), "emb_ln.b": (None, "embeddings.LayerNorm.bias"),
       "lnf.w": ("ln_f.weight", None), "lnf.b": ("ln_f.bias", None), "lm.w": ("lm_head.weight", None)}


def expected(names, nb_name, shape, vals):
    """The (file name, file shape, values) list the export of one tensor must hold."""
    if names == "nebula":
        return [(nb_name, shape, vals)]
    m = re.fullmatch(r"h(\d+)\.(.*)", nb_name)
    if m:
        l, rest = m.group(1), m.group(2)
        g, t, bert = BLOCK[rest]
        if names == "gpt2":
            if t:
                r, c = shape
                return [("h.%s.%s" % (l, g), [c, r], [vals[i * c + j] for j in range(c) for i in range(r)])]
            return [("h.%s.%s" % (l, g), shape, vals)]
        if rest.startswith("qkv."):
            third = len(vals) // 3
            sh = [shape[0] // 3] + shape[1:]
            return [("encoder.layer.%s.attention.self.%s.%s" % (l, k, "weight" if rest == "qkv.w" else "bias"),
                     sh, vals[i * third:(i + 1) * third]) for i, k in enumerate(("query", "key", "value"))]
        return [("encoder.layer.%s.%s" % (l, bert), shape, vals)]
    return [(TOP[nb_name][0 if names == "gpt2" else 1], shape, vals)]


def main():
    mode, wpath, spath, names = sys.argv[1:5]
    _, weights = read_weights(wpath)
    meta, st = read_safetensors(spath)
    if mode == "torch":
        try:
            import torch  # noqa: F401
            from safetensors.torch import load_file
        except ImportError as e:
            print("SKIP: torch or safetensors is not importable (%s): the PyTorch load is not checked" % e)
            return 77
        loaded = load_file(spath)
        st = {k: ("F32", list(v.shape), v.flatten().tolist()) for k, v in loaded.items()}
        print("loaded %d tensors with safetensors.torch.load_file (torch %s)" % (len(loaded), torch.__version__))
    assert meta.get("format") == "pt" or mode == "torch", "metadata format"
    want = {}
    for nb_name, (shape, vals) in weights.items():
        for fname, fshape, fvals in expected(names, nb_name, shape, vals):
            want[fname] = (fshape, fvals)
    if names == "bert" and "wte" in weights:
        c = weights["wte"][0][1]
        want["embeddings.token_type_embeddings.weight"] = ([2, c], [0.0] * (2 * c))
    bad = 0
    for k in sorted(set(want) | set(st)):
        if k not in st or k not in want:
            print("%-40s %s" % (k, "missing from the file" if k not in st else "not expected"))
            bad += 1
            continue
        (wshape, wv), (_, fshape, fv) = want[k], st[k]
        diff = max((abs(a - b) for a, b in zip(wv, fv)), default=0.0)
        ok = list(fshape) == list(wshape) and len(wv) == len(fv) and diff == 0.0
        print("%-40s %-12s max abs diff %g%s" % (k, fshape, diff, "" if ok else "  MISMATCH (want %s)" % wshape))
        bad += not ok
    print("%s: %d tensors, %s" % (spath, len(st), "equal" if not bad else "%d DIFFERENT" % bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
