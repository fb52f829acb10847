#!/usr/bin/env python3
"""Writes the PyTorch reference files tests/data/ref_*.bin.

The C tests (tests/kernels/test_reference.c) load these files and check that
Nebula's transformer computes the same logits, loss, gradients and AdamW
trajectory. The model here is written out op by op from the description in
docs/model.md (same tensor names, shapes and order); it does not share code
with the C side. Computation is in float64 so the files hold the exact
answer and the C float32 result is judged against it.

Usage: python3 scripts/gen_reference.py [OUTDIR]   (default tests/data)

Files with model settings beyond the defaults (LayerNorm eps 1e-5, tanh
GELU) hold a "variant" tensor: f32 [ln_eps, gelu] with gelu 0 tanh, 1 erf.
Files with frozen tensors (ref_*_frozen.bin; job.freeze) hold "frozen": u8,
one per parameter in buffer order, 1 = frozen (requires_grad False: no
gradient, not clipped, not decayed, not updated); "g.<name>" only for the
trainable ones, and "w_end.<name>" for every parameter after the AdamW
steps.
Files with bottleneck adapters (ref_*adapter*.bin) hold "adapter": i32
[size, after, first, last] (after: bits 1 attn, 2 xattn, 4 ffn; blocks
[first, last)). Decoder files (ref_dec*.bin: cross-attention blocks) hold
"cross": i32 [S], the encoder output "enc" (B,S,C) f32 that every block's
cross-attention reads, "enc_mask" (B,S) u8 and "g.enc", the gradient of the
loss with respect to enc. ref_encdec.bin holds an encoder (a part without
head) feeding a decoder, tensors prefixed "enc." and "dec."
(make_encdec_case).
Files of a low-rank split model (ref_*_lowrank.bin; job.lowrank) hold
"lowrank": i32 [block, rank]: that block's fcproj.w is fcproj.u (C,r)
fcproj.s (r,r) fcproj.v (r,F), y = U (S (V h)) + b, and the block has no MLP
residual (docs/lowrank.md); its tensors are listed as model_lowrank.c does.
Files of a token-shift model (ref_*_tokshift.bin; job.model.token_shift)
hold "tokshift": i32 [1]: after the embedding sum (before the embedding
LayerNorm), channels [0, C/4) come from position t-1 and, unless causal,
[C/4, C/2) from t+1; zero past either end and from a padding neighbour.
Needs torch (pip install torch). The tests never run this script.

Usage: python3 scripts/gen_reference.py [OUTDIR [FILE...]] writes every
file, or only the named ones (e.g. ref_gpt_frozen.bin).

File format (little endian), version 1:
  magic "NBRF", u32 version, u32 tensor count, then per tensor:
  u16 name length, name bytes, u8 dtype (0 f32, 3 i32, 4 u8), u8 ndim,
  ndim x u64 dims, the elements.
"""
import math
import os
import struct
import sys

import torch
import torch.nn.functional as F

MAGIC = b"NBRF"
VERSION = 1
DT_F32, DT_I32, DT_U8 = 0, 3, 4
NORM_PRE, NORM_POST = 0, 1
HEAD_LM, HEAD_MLM, HEAD_SEQCLS, HEAD_TOKCLS = 0, 1, 2, 3
AD_BITS = (("attn", 1), ("xattn", 2), ("ffn", 4))
ADAM_STEPS = 10


def write_file(path, tensors):
    out = bytearray()
    out += MAGIC + struct.pack("<II", VERSION, len(tensors))
    for name, dtype, t in tensors:
        t = t.detach().contiguous().cpu()
        nb = name.encode()
        out += struct.pack("<H", len(nb)) + nb
        out += struct.pack("<BB", dtype, t.dim())
        for d in t.shape:
            out += struct.pack("<Q", d)
        flat = t.reshape(-1).tolist()
        fmt = {DT_F32: "f", DT_I32: "i", DT_U8: "B"}[dtype]
        out += struct.pack("<%d%s" % (len(flat), fmt), *flat)
    with open(path, "wb") as f:
        f.write(out)
    print("wrote %s (%d bytes, %d tensors)" % (path, len(out), len(tensors)))


def has_adapter(cfg, l, k):
    ad = cfg.get("adapter")
    return bool(ad) and k in ad["after"] and ad["first"] <= l < ad["last"]


def param_list(cfg):
    """(name, shape) in the buffer order of docs/model.md (one full part)."""
    C, Fd, V = cfg["d_model"], cfg["d_ff"], cfg["vocab"]
    ps = [("wte", (V, C)), ("wpe", (cfg["max_seq"], C))]
    if cfg["norm"] == NORM_POST:
        ps += [("emb_ln.w", (C,)), ("emb_ln.b", (C,))]
    lr_block, R = cfg.get("lowrank", (-1, 0))
    for l in range(cfg["n_layer"]):
        h = "h%d." % l
        if l == lr_block:  # the split block: fcproj (and post-LN ln2) follow the factor
            ps += [(h + "ln1.w", (C,)), (h + "ln1.b", (C,)),
                   (h + "qkv.w", (3 * C, C)), (h + "qkv.b", (3 * C,)),
                   (h + "proj.w", (C, C)), (h + "proj.b", (C,))]
            if cfg["norm"] == NORM_PRE:
                ps += [(h + "ln2.w", (C,)), (h + "ln2.b", (C,))]
            ps += [(h + "fc.w", (Fd, C)), (h + "fc.b", (Fd,)),
                   (h + "fcproj.v", (R, Fd)), (h + "fcproj.s", (R, R)), (h + "fcproj.u", (C, R)),
                   (h + "fcproj.b", (C,))]
            if cfg["norm"] == NORM_POST:
                ps += [(h + "ln2.w", (C,)), (h + "ln2.b", (C,))]
            continue
        ps += [(h + "ln1.w", (C,)), (h + "ln1.b", (C,)),
               (h + "qkv.w", (3 * C, C)), (h + "qkv.b", (3 * C,)),
               (h + "proj.w", (C, C)), (h + "proj.b", (C,)),
               (h + "ln2.w", (C,)), (h + "ln2.b", (C,)),
               (h + "fc.w", (Fd, C)), (h + "fc.b", (Fd,)),
               (h + "fcproj.w", (C, Fd)), (h + "fcproj.b", (C,))]
        if cfg.get("cross"):
            ps += [(h + "xln.w", (C,)), (h + "xln.b", (C,)),
                   (h + "xq.w", (C, C)), (h + "xq.b", (C,)),
                   (h + "xkv.w", (2 * C, C)), (h + "xkv.b", (2 * C,)),
                   (h + "xproj.w", (C, C)), (h + "xproj.b", (C,))]
        for k, _ in AD_BITS:
            if has_adapter(cfg, l, k):
                A = cfg["adapter"]["size"]
                a = h + "ad_%s." % k
                ps += [(a + "down.w", (A, C)), (a + "down.b", (A,)), (a + "up.w", (C, A)), (a + "up.b", (C,))]
    if cfg.get("body_only"):  # an encoder part: embedding and blocks
        return ps
    if cfg["norm"] == NORM_PRE:
        ps += [("lnf.w", (C,)), ("lnf.b", (C,))]
    if cfg["head"] in (HEAD_LM, HEAD_MLM):
        if not cfg["tie"]:
            ps += [("lm.w", (V, C))]
    else:
        ps += [("cls.w", (cfg["n_classes"], C)), ("cls.b", (cfg["n_classes"],))]
    return ps


def init_params(cfg, gen):
    params = {}
    for name, shape in param_list(cfg):
        if len(shape) == 2:
            t = torch.randn(shape, generator=gen, dtype=torch.float64) * 0.05
        elif name.endswith(("ln1.w", "ln2.w", "xln.w")) or name in ("lnf.w", "emb_ln.w"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)
        else:
            t = 0.02 * torch.randn(shape, generator=gen, dtype=torch.float64)
        params[name] = t.requires_grad_(True)
    return params


def attention(qkv, key_mask, causal, nh):
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // nh
    q, k, v = qkv.split(C, dim=2)
    q = q.view(B, T, nh, hs).transpose(1, 2)
    k = k.view(B, T, nh, hs).transpose(1, 2)
    v = v.view(B, T, nh, hs).transpose(1, 2)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
    if causal:
        tri = torch.tril(torch.ones(T, T, dtype=torch.bool))
        att = att.masked_fill(~tri, float("-inf"))
    if key_mask is not None:
        att = att.masked_fill(key_mask[:, None, None, :] == 0, float("-inf"))
    att = F.softmax(att, dim=-1)
    return (att @ v).transpose(1, 2).contiguous().view(B, T, C)


def cross_attention(q, kv, enc_mask, nh):
    B, T, C = q.shape
    S = kv.shape[1]
    hs = C // nh
    k, v = kv.split(C, dim=2)
    q = q.view(B, T, nh, hs).transpose(1, 2)
    k = k.view(B, S, nh, hs).transpose(1, 2)
    v = v.view(B, S, nh, hs).transpose(1, 2)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
    if enc_mask is not None:
        att = att.masked_fill(enc_mask[:, None, None, :] == 0, float("-inf"))
    att = F.softmax(att, dim=-1)
    return (att @ v).transpose(1, 2).contiguous().view(B, T, C)


def token_shift(x, key_mask, causal):
    """Channels [0,q) from t-1, [q,2q) from t+1 (not causal), q = C // 4;
    a neighbour past either end or with key_mask 0 gives zeros."""
    B, T, C = x.shape
    q = C // 4
    keep = torch.ones(B, T, 1, dtype=x.dtype) if key_mask is None else key_mask.to(x.dtype)[:, :, None]
    src = x * keep  # what each position offers its neighbours
    zero = torch.zeros(B, 1, q, dtype=x.dtype)
    parts = [torch.cat([zero, src[:, :-1, :q]], 1)]
    if not causal:
        parts.append(torch.cat([src[:, 1:, q:2 * q], zero], 1))
    parts.append(x[:, :, len(parts) * q:])
    return torch.cat(parts, 2)


def forward(cfg, P, tokens, key_mask, targets, enc=None, enc_mask=None):
    C, nh = cfg["d_model"], cfg["n_head"]
    B, T = tokens.shape
    eps = cfg.get("ln_eps", 1e-5)
    ln = lambda x, n: F.layer_norm(x, (C,), P[n + ".w"], P[n + ".b"], eps=eps)
    lin = lambda x, n, bias=True: F.linear(x, P[n + ".w"], P[n + ".b"] if bias else None)
    gelu = lambda x: F.gelu(x, approximate="none" if cfg.get("gelu") == "erf" else "tanh")
    x = P["wte"][tokens] + P["wpe"][:T][None, :, :]
    if cfg.get("tokshift"):
        x = token_shift(x, key_mask, cfg["causal"])
    if cfg["norm"] == NORM_POST:
        x = ln(x, "emb_ln")
    lr_block = cfg.get("lowrank", (-1, 0))[0]
    for l in range(cfg["n_layer"]):
        h = "h%d." % l

        def ad(z, k):  # bottleneck adapter after sub-layer k, where configured
            if not has_adapter(cfg, l, k):
                return z
            return z + lin(gelu(lin(z, h + "ad_%s.down" % k)), h + "ad_%s.up" % k)

        def xatt(xin):  # cross-attention to the encoder output
            return lin(cross_attention(lin(xin, h + "xq"), lin(enc, h + "xkv"), enc_mask, nh), h + "xproj")

        if l == lr_block:  # low-rank split: y = U (S (V h)) + b, no MLP residual
            def mlp(x):
                z = F.linear(gelu(lin(x, h + "fc")), P[h + "fcproj.v"])
                return F.linear(F.linear(z, P[h + "fcproj.s"]), P[h + "fcproj.u"], P[h + "fcproj.b"])
            if cfg["norm"] == NORM_PRE:
                x = x + lin(attention(lin(ln(x, h + "ln1"), h + "qkv"), key_mask, cfg["causal"], nh), h + "proj")
                x = mlp(ln(x, h + "ln2"))
            else:
                x = ln(x + lin(attention(lin(x, h + "qkv"), key_mask, cfg["causal"], nh), h + "proj"), h + "ln1")
                x = ln(mlp(x), h + "ln2")
            continue
        if cfg["norm"] == NORM_PRE:
            x = x + ad(lin(attention(lin(ln(x, h + "ln1"), h + "qkv"), key_mask, cfg["causal"], nh), h + "proj"),
                       "attn")
            if cfg.get("cross"):
                x = x + ad(xatt(ln(x, h + "xln")), "xattn")
            x = x + ad(lin(gelu(lin(ln(x, h + "ln2"), h + "fc")), h + "fcproj"), "ffn")
        else:
            x = ln(x + ad(lin(attention(lin(x, h + "qkv"), key_mask, cfg["causal"], nh), h + "proj"), "attn"),
                   h + "ln1")
            if cfg.get("cross"):
                x = ln(x + ad(xatt(x), "xattn"), h + "xln")
            x = ln(x + ad(lin(gelu(lin(x, h + "fc")), h + "fcproj"), "ffn"), h + "ln2")
    if cfg.get("body_only"):
        return x
    if cfg["norm"] == NORM_PRE:
        x = ln(x, "lnf")
    if cfg["head"] in (HEAD_LM, HEAD_MLM):
        w = P["wte"] if cfg["tie"] else P["lm.w"]
        logits = F.linear(x, w)
    elif cfg["head"] == HEAD_TOKCLS:
        logits = lin(x, "cls")
    else:
        logits = lin(x[:, 0, :], "cls")
    flat = logits.reshape(-1, logits.shape[-1])
    loss = F.cross_entropy(flat, targets.reshape(-1), ignore_index=-1)
    return flat, loss


def lr_at(o, step):
    if step < o["warmup"]:
        return o["lr"] * (step + 1) / o["warmup"]
    decay = o["total"] - o["warmup"]
    progress = min(1.0, (step - o["warmup"]) / decay) if decay > 0 else 1.0
    return o["lr_min"] + 0.5 * (o["lr"] - o["lr_min"]) * (1.0 + math.cos(math.pi * progress))


def make_case(path, cfg, B, T, seed, frozen=()):
    gen = torch.Generator().manual_seed(seed)
    P = init_params(cfg, gen)
    all_names = [n for n, _ in param_list(cfg)]
    for n in frozen:
        assert n in P, n
    for n in frozen:
        P[n].requires_grad_(False)
    V = cfg["vocab"]
    tokens = torch.randint(0, V, (B, T + 1), generator=gen)
    key_mask = None
    if cfg["head"] == HEAD_LM:
        targets = tokens[:, 1:].clone()
        tokens = tokens[:, :T].clone()
    else:
        tokens = tokens[:, :T].clone()
        key_mask = torch.ones(B, T, dtype=torch.uint8)
        for b in range(1, B):  # sequence b ends with b padding positions
            key_mask[b, T - b:] = 0
            tokens[b, T - b:] = 0
        if cfg["head"] == HEAD_MLM:
            pick = torch.rand(B, T, generator=gen) < 0.3
            pick[:, 0] = True  # every row has a counted position
            pick &= key_mask.bool()
            targets = torch.where(pick, tokens, torch.full_like(tokens, -1))
            tokens = torch.where(pick, torch.full_like(tokens, V - 1), tokens)
        elif cfg["head"] == HEAD_TOKCLS:
            targets = torch.randint(0, 2, (B, T), generator=gen)
            targets = torch.where(key_mask.bool(), targets, torch.full_like(targets, -1))
        else:
            targets = torch.randint(0, cfg["n_classes"], (B,), generator=gen)
    tokens = tokens.to(torch.int64)
    targets = targets.to(torch.int64)
    enc = enc_mask = None
    if cfg.get("cross"):
        S = cfg["cross"]
        enc = torch.randn(B, S, cfg["d_model"], generator=gen, dtype=torch.float64)
        enc = enc.float().double().requires_grad_(True)
        enc_mask = torch.ones(B, S, dtype=torch.uint8)
        for b in range(1, B):  # encoder sequence b ends with b padding positions
            enc_mask[b, S - min(b, S - 1):] = 0

    o = dict(lr=1e-2, lr_min=1e-3, warmup=3, total=ADAM_STEPS, b1=0.9, b2=0.95, eps=1e-8, wd=0.1, clip=0.5)
    out = []
    conf = [cfg["n_layer"], cfg["d_model"], cfg["n_head"], cfg["d_ff"], V, cfg["max_seq"],
            int(cfg["causal"]), cfg["norm"], cfg["head"], cfg.get("n_classes", 0), int(cfg["tie"]), B, T]
    out.append(("config", DT_I32, torch.tensor(conf, dtype=torch.int32)))
    if cfg.get("adapter"):
        ad = cfg["adapter"]
        bits = sum(b for k, b in AD_BITS if k in ad["after"])
        out.append(("adapter", DT_I32, torch.tensor([ad["size"], bits, ad["first"], ad["last"]], dtype=torch.int32)))
    if cfg.get("cross"):
        out.append(("cross", DT_I32, torch.tensor([cfg["cross"]], dtype=torch.int32)))
        out.append(("enc", DT_F32, enc.detach().float()))
        out.append(("enc_mask", DT_U8, enc_mask))
    if "ln_eps" in cfg or "gelu" in cfg:
        # model settings beyond the 13 ints: LayerNorm eps, GELU form (0 tanh, 1 erf)
        out.append(("variant", DT_F32, torch.tensor([cfg.get("ln_eps", 1e-5),
                                                     1.0 if cfg.get("gelu") == "erf" else 0.0],
                                                    dtype=torch.float32)))
    if cfg.get("tokshift"):
        out.append(("tokshift", DT_I32, torch.tensor([1], dtype=torch.int32)))
    if "lowrank" in cfg:
        out.append(("lowrank", DT_I32, torch.tensor(list(cfg["lowrank"]), dtype=torch.int32)))
    out.append(("optim", DT_F32, torch.tensor([o["lr"], o["lr_min"], o["warmup"], o["total"], o["b1"],
                                               o["b2"], o["eps"], o["wd"], o["clip"]], dtype=torch.float32)))
    out.append(("tokens", DT_I32, tokens.to(torch.int32)))
    out.append(("targets", DT_I32, targets.to(torch.int32)))
    if key_mask is not None:
        out.append(("key_mask", DT_U8, key_mask))
    if frozen:
        out.append(("frozen", DT_U8, torch.tensor([1 if n in frozen else 0 for n in all_names],
                                                  dtype=torch.uint8)))
    # Round the weights to float32 first: the C model starts from exactly these.
    with torch.no_grad():
        for t in P.values():
            t.copy_(t.float().double())
    for name, _ in param_list(cfg):
        out.append(("w." + name, DT_F32, P[name].float()))
    logits, loss = forward(cfg, P, tokens, key_mask, targets, enc, enc_mask)
    loss.backward()
    out.append(("logits", DT_F32, logits.float()))
    out.append(("loss", DT_F32, loss.detach().float().reshape(1)))
    for name, _ in param_list(cfg):
        if name not in frozen:
            out.append(("g." + name, DT_F32, P[name].grad.float()))
    if enc is not None:
        out.append(("g.enc", DT_F32, enc.grad.float()))

    # AdamW trajectory on the same batch: loss before each update. Frozen
    # tensors are in no group: no state, no decay, not in the clip norm.
    names = [n for n in all_names if n not in frozen]
    groups = [{"params": [P[n] for n in names if P[n].dim() == 2], "weight_decay": o["wd"]},
              {"params": [P[n] for n in names if P[n].dim() != 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=o["lr"], betas=(o["b1"], o["b2"]), eps=o["eps"], foreach=False)
    losses = []
    for step in range(ADAM_STEPS):
        opt.zero_grad(set_to_none=False)
        _, loss = forward(cfg, P, tokens, key_mask, targets, enc, enc_mask)
        loss.backward()
        losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_([P[n] for n in names], o["clip"])
        for g in opt.param_groups:
            g["lr"] = lr_at(o, step)
        opt.step()
    out.append(("losses", DT_F32, torch.tensor(losses, dtype=torch.float32)))
    if frozen:
        for name in all_names:
            out.append(("w_end." + name, DT_F32, P[name].detach().float()))
    write_file(path, out)


def make_encdec_case(path, ecfg, dcfg, B, S, T, seed):
    """An encoder (a part without head) whose output feeds a decoder's
    cross-attention, both frozen but for their adapters: one loss, the
    gradient of every trainable tensor of both, 10 AdamW steps over both
    (one clip norm). Tensors of each model carry the prefix "enc." or
    "dec." ("enc.config", "dec.w.h0.qkv.w", "enc.g.h1.ad_ffn.up.w", ...);
    "enc.config"'s T is the encoder's S."""
    gen = torch.Generator().manual_seed(seed)
    PE, PD = init_params(ecfg, gen), init_params(dcfg, gen)
    Ve, Vd = ecfg["vocab"], dcfg["vocab"]
    etok = torch.randint(0, Ve, (B, S), generator=gen)
    emask = torch.ones(B, S, dtype=torch.uint8)
    for b in range(1, B):
        emask[b, S - b:] = 0
        etok[b, S - b:] = 0
    dtok = torch.randint(0, Vd, (B, T + 1), generator=gen)
    targets = dtok[:, 1:].clone()
    dtok = dtok[:, :T].clone()
    with torch.no_grad():
        for t in list(PE.values()) + list(PD.values()):
            t.copy_(t.float().double())
    for P in (PE, PD):
        for n, t in P.items():
            if ".ad_" not in n:
                t.requires_grad_(False)

    def run():
        enc = forward(ecfg, PE, etok, emask, None)
        return forward(dcfg, PD, dtok, None, targets, enc, emask)

    o = dict(lr=1e-2, lr_min=1e-3, warmup=3, total=ADAM_STEPS, b1=0.9, b2=0.95, eps=1e-8, wd=0.1, clip=0.5)
    out = []
    for tag, cfg, Bc, Tc in (("enc", ecfg, B, S), ("dec", dcfg, B, T)):
        conf = [cfg["n_layer"], cfg["d_model"], cfg["n_head"], cfg["d_ff"], cfg["vocab"], cfg["max_seq"],
                int(cfg["causal"]), cfg["norm"], cfg["head"], cfg.get("n_classes", 0), int(cfg["tie"]), Bc, Tc]
        out.append((tag + ".config", DT_I32, torch.tensor(conf, dtype=torch.int32)))
        ad = cfg["adapter"]
        bits = sum(b for k, b in AD_BITS if k in ad["after"])
        out.append((tag + ".adapter", DT_I32, torch.tensor([ad["size"], bits, ad["first"], ad["last"]],
                                                           dtype=torch.int32)))
    out.append(("optim", DT_F32, torch.tensor([o["lr"], o["lr_min"], o["warmup"], o["total"], o["b1"],
                                               o["b2"], o["eps"], o["wd"], o["clip"]], dtype=torch.float32)))
    out.append(("enc.tokens", DT_I32, etok.to(torch.int32)))
    out.append(("enc.key_mask", DT_U8, emask))
    out.append(("dec.tokens", DT_I32, dtok.to(torch.int32)))
    out.append(("dec.targets", DT_I32, targets.to(torch.int32)))
    for tag, cfg, P in (("enc", ecfg, PE), ("dec", dcfg, PD)):
        for name, _ in param_list(cfg):
            out.append((tag + ".w." + name, DT_F32, P[name].float()))
    logits, loss = run()
    loss.backward()
    out.append(("logits", DT_F32, logits.float()))
    out.append(("loss", DT_F32, loss.detach().float().reshape(1)))
    train = []
    for tag, cfg, P in (("enc", ecfg, PE), ("dec", dcfg, PD)):
        for name, _ in param_list(cfg):
            if P[name].requires_grad:
                out.append((tag + ".g." + name, DT_F32, P[name].grad.float()))
                train.append(P[name])
    groups = [{"params": [p for p in train if p.dim() == 2], "weight_decay": o["wd"]},
              {"params": [p for p in train if p.dim() != 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=o["lr"], betas=(o["b1"], o["b2"]), eps=o["eps"], foreach=False)
    losses = []
    for step in range(ADAM_STEPS):
        opt.zero_grad(set_to_none=False)
        _, loss = run()
        loss.backward()
        losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(train, o["clip"])
        for g in opt.param_groups:
            g["lr"] = lr_at(o, step)
        opt.step()
    out.append(("losses", DT_F32, torch.tensor(losses, dtype=torch.float32)))
    write_file(path, out)


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "data")
    only = set(sys.argv[2:])
    os.makedirs(outdir, exist_ok=True)
    torch.manual_seed(0)
    gpt = dict(n_layer=2, d_model=32, n_head=4, d_ff=64, vocab=64, max_seq=16, causal=True,
               norm=NORM_PRE, head=HEAD_LM, tie=True)
    bert = dict(n_layer=2, d_model=32, n_head=4, d_ff=64, vocab=64, max_seq=16, causal=False,
                norm=NORM_POST, head=HEAD_MLM, tie=False)
    seqcls = dict(n_layer=1, d_model=16, n_head=2, d_ff=32, vocab=32, max_seq=8, causal=False,
                  norm=NORM_POST, head=HEAD_SEQCLS, n_classes=3, tie=False)
    tokcls = dict(n_layer=1, d_model=16, n_head=2, d_ff=32, vocab=32, max_seq=8, causal=False,
                  norm=NORM_PRE, head=HEAD_TOKCLS, n_classes=2, tie=False)
    # Per-model settings: BERT's own (erf GELU, eps 1e-12), and a GPT with the
    # erf GELU and an eps large enough (0.05) that a LayerNorm ignoring it
    # misses the tolerance (1e-12 against 1e-5 is below it on random weights;
    # the MiniLM golden shows that difference).
    bert_hf = dict(bert, ln_eps=1e-12, gelu="erf")
    gpt_erf = dict(gpt, ln_eps=0.05, gelu="erf")
    # Frozen tensors (job.freeze): a tied wte (the lm head frozen with it)
    # beside a trainable wpe, below a frozen block; the bottom of a model
    # (embedding and block 0: backward stops above them); frozen weights
    # beside trainable biases, LayerNorm halves and the embedding LayerNorm,
    # and an untied lm head; a classifier fine-tuned on a frozen encoder.
    h1 = ["h1.ln1.w", "h1.ln2.b"]
    # Low-rank split (job.lowrank): the top block of a BERT-style classifier
    # (post-LN: ln2 follows the factor), and block 0 of a GPT (pre-LN) with
    # a frozen S beside trainable U and V.
    seqcls_lr = dict(seqcls, n_layer=2, lowrank=(1, 4))
    gpt_lr = dict(gpt, lowrank=(0, 5))
    cases = [
        ("ref_gpt.bin", gpt, 4, 16, 1, ()),
        ("ref_bert.bin", bert, 4, 16, 2, ()),
        ("ref_seqcls.bin", seqcls, 4, 8, 3, ()),
        ("ref_tokcls.bin", tokcls, 4, 8, 4, ()),
        ("ref_bert_erf.bin", bert_hf, 4, 16, 5, ()),
        ("ref_gpt_erf.bin", gpt_erf, 4, 16, 6, ()),
        ("ref_gpt_frozen.bin", gpt, 4, 16, 7, ["wte"] + [n for n, _ in param_list(gpt) if n.startswith("h0.")]),
        ("ref_gpt_bottom_frozen.bin", gpt, 4, 16, 10,
         ["wte", "wpe"] + [n for n, _ in param_list(gpt) if n.startswith("h0.")]),
        ("ref_bert_frozen.bin", bert, 4, 16, 8, ["emb_ln.w", "emb_ln.b", "h0.qkv.w", "h0.fc.w", "lm.w"] + h1),
        ("ref_seqcls_frozen.bin", seqcls, 4, 8, 9, [n for n, _ in param_list(seqcls) if not n.startswith("cls.")]),
        ("ref_seqcls_lowrank.bin", seqcls_lr, 4, 8, 11, ()),
        ("ref_gpt_lowrank.bin", gpt_lr, 4, 16, 12, ["h0.fcproj.s", "h1.qkv.w"]),
    ]
    # Bottleneck adapters: after every sub-layer of every block of a GPT,
    # all trainable; after the MLP of block 1 of a BERT whose other tensors
    # are all frozen (backward stops above block 0). Decoders (cross-
    # attention to an encoder output of S != T positions, with padding):
    # pre-LN causal with adapters after all three sub-layers; post-LN with
    # adapters after the cross-attention of block 1 only training, so the
    # encoder's gradient must still flow through every frozen block.
    ad_all = dict(size=8, after=("attn", "ffn"), first=0, last=2)
    gpt_ad = dict(gpt, adapter=ad_all)
    bert_ad = dict(bert, adapter=dict(size=4, after=("ffn",), first=1, last=2))
    dec = dict(gpt, cross=6, adapter=dict(size=8, after=("attn", "xattn", "ffn"), first=0, last=2))
    dec_post = dict(bert, causal=True, head=HEAD_LM, cross=5, adapter=dict(size=4, after=("xattn",), first=1, last=2))
    # Token shift (job.model.token_shift): a causal GPT (only t-1 moves);
    # a post-LN BERT with padding (the shift comes before the embedding
    # LayerNorm; padding neighbours give zeros); a pre-LN replaced-token
    # detector like ELECTRA's discriminator, d_model 18 so C/4 rounds down.
    cases += [
        ("ref_gpt_tokshift.bin", dict(gpt, tokshift=True), 4, 16, 16, ()),
        ("ref_bert_tokshift.bin", dict(bert, tokshift=True), 4, 16, 17, ()),
        ("ref_tokcls_tokshift.bin", dict(tokcls, tokshift=True, d_model=18, n_head=3), 4, 8, 18, ()),
    ]
    cases += [
        ("ref_gpt_adapter.bin", gpt_ad, 4, 16, 11, ()),
        ("ref_bert_adapter_frozen.bin", bert_ad, 4, 16, 12,
         [n for n, _ in param_list(bert_ad) if ".ad_" not in n]),
        ("ref_dec.bin", dec, 4, 8, 13, ()),
        ("ref_dec_post_frozen.bin", dec_post, 3, 8, 14, [n for n, _ in param_list(dec_post) if ".ad_" not in n]),
    ]
    for name, cfg, B, T, seed, frozen in cases:
        if not only or name in only:
            make_case(os.path.join(outdir, name), cfg, B, T, seed, frozen)
    # Encoder-decoder: a BERT-style encoder part (S = 6 positions, padded)
    # with adapters after both sub-layers, and a pre-LN decoder with
    # adapters after its cross-attention and MLP, everything else frozen:
    # the decoder's gradient reaches the encoder's adapters through the
    # encoder output.
    enc = dict(bert, body_only=True, adapter=dict(size=4, after=("attn", "ffn"), first=0, last=2))
    dec2 = dict(gpt, vocab=48, cross=6, adapter=dict(size=4, after=("xattn", "ffn"), first=0, last=2))
    if not only or "ref_encdec.bin" in only:
        make_encdec_case(os.path.join(outdir, "ref_encdec.bin"), enc, dec2, 3, 6, 8, 15)


if __name__ == "__main__":
    main()
