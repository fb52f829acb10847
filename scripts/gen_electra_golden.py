#!/usr/bin/env python3
"""Writes tests/data/ref_electra.bin: a PyTorch replica of three steps of
multi-generator ELECTRA (daemon/train/electra.h), for
tests/train/test_electra_golden.c.

Everything random in the C job is keyed, so it is written out here from
its description, not shared with the C side: the masked sampler
(daemon/data/tokens.h, nb_tokens_sample_mlm), the keyed replacement draw
(daemon/train/electra_sample.h) and SplitMix64 (kernels/rng.h). The
models are those of scripts/gen_reference.py (op by op from docs/model.md,
float64). Two generators (MLM, tied head, widths 16 and 8) with their own
token files, seeds and AdamW, one discriminator (tokcls, 2 classes); per
step: each generator masks, runs forward/backward and draws replacements;
the discriminator runs each generator's batch in order with loss scale
disc_weight * n_g / N; every model clips its own gradients and takes an
AdamW step with its own learning rate schedule.

The file holds the initial weights (rounded to float32, the C side loads
them), the token files, per step the generators' losses, the corrupted
IDs and replaced flags, the discriminator's loss, and the final weights.

Usage: python3 scripts/gen_electra_golden.py [OUT]  (default
tests/data/ref_electra.bin). Needs torch. The tests never run this script.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_reference as R  # noqa: E402

M = (1 << 64) - 1
DATA_STREAM = 0x6461746173747265
SAMPLE_STREAM = 0x656c656374726173
STEPS, T, V_DATA, MASK_PROB, DISC_WEIGHT = 3, 8, 32, 0.3, 50.0
SEED = 21


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M
    return z ^ (z >> 31)


class Rng:
    def __init__(self, seed, a, b):
        h = mix64((seed + 0x9e3779b97f4a7c15) & M)
        h = mix64(h ^ ((a + 0x632be59bd9b4e019) & M))
        self.state = mix64(h ^ ((b + 0x85157af5) & M))

    def u64(self):
        self.state = (self.state + 0x9e3779b97f4a7c15) & M
        return mix64(self.state)

    def below(self, n):
        limit = M - M % n
        while True:
            x = self.u64()
            if x < limit:
                return x % n

    def uniform24(self):
        return (self.u64() >> 40) / 16777216.0


def f32(x):
    return torch.tensor(x, dtype=torch.float32).item()


def sample_mlm(tok, seed, step, n, mask):
    """nb_tokens_sample_mlm with micro-batch 0."""
    r = Rng(seed ^ DATA_STREAM, step, 0)
    starts = len(tok) - T + 1
    inputs, targets = [], []
    p = f32(MASK_PROB)
    for _ in range(n):
        s = r.below(starts)
        row_in, row_tg = [], []
        for i in range(T):
            tid = tok[s + i]
            m = r.uniform24() < p
            row_in.append(mask if m else tid)
            row_tg.append(tid if m else -1)
        if all(t < 0 for t in row_tg):
            i = r.below(T)
            row_tg[i] = row_in[i]
            row_in[i] = mask
        inputs.append(row_in)
        targets.append(row_tg)
    return torch.tensor(inputs, dtype=torch.int64), torch.tensor(targets, dtype=torch.int64)


def uniform53(seed, gen, step, pos):
    r = Rng(seed ^ SAMPLE_STREAM ^ (gen << 48), step, pos)
    return (r.u64() >> 11) * (1.0 / 9007199254740992.0)


def draw(logits_row, n_ids, skip, u):
    """Inverse CDF of the softmax over IDs < n_ids but skip."""
    allowed = [i for i in range(n_ids) if i != skip]
    x = logits_row[allowed]
    p = torch.exp(x - x.max())
    acc, target = 0.0, u * p.sum().item()
    for k, i in enumerate(allowed):
        acc += p[k].item()
        if acc > target:
            return i
    return allowed[-1]


def optim_conf(lr):
    return dict(lr=lr, lr_min=lr / 10, warmup=2, total=STEPS, b1=0.9, b2=0.95, eps=1e-8, wd=0.1, clip=1.0)


def make_opt(cfg, P, o):
    names = [n for n, _ in R.param_list(cfg)]
    groups = [{"params": [P[n] for n in names if P[n].dim() == 2], "weight_decay": o["wd"]},
              {"params": [P[n] for n in names if P[n].dim() != 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o["lr"], betas=(o["b1"], o["b2"]), eps=o["eps"], foreach=False)


def update(cfg, P, opt, o, step):
    names = [n for n, _ in R.param_list(cfg)]
    torch.nn.utils.clip_grad_norm_([P[n] for n in names], o["clip"])
    for g in opt.param_groups:
        g["lr"] = R.lr_at(o, step)
    opt.step()


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(__file__), "..", "tests", "data", "ref_electra.bin")
    gen = torch.Generator().manual_seed(SEED)
    V = V_DATA + 1  # the mask token is V - 1
    gcfgs = [dict(n_layer=1, d_model=16, n_head=2, d_ff=32, vocab=V, max_seq=T, causal=False,
                  norm=R.NORM_PRE, head=R.HEAD_MLM, tie=True),
             dict(n_layer=1, d_model=8, n_head=2, d_ff=16, vocab=V, max_seq=T, causal=False,
                  norm=R.NORM_PRE, head=R.HEAD_MLM, tie=True)]
    dcfg = dict(n_layer=1, d_model=32, n_head=2, d_ff=64, vocab=V, max_seq=T, causal=False,
                norm=R.NORM_PRE, head=R.HEAD_TOKCLS, n_classes=2, tie=False)
    seqs, gseeds = [3, 2], [101, 202]
    toks = [torch.randint(0, V_DATA, (200,), generator=gen).tolist() for _ in gcfgs]
    PG = [R.init_params(c, gen) for c in gcfgs]
    PD = R.init_params(dcfg, gen)
    with torch.no_grad():
        for P in PG + [PD]:
            for t in P.values():
                t.copy_(t.float().double())
    out = []
    conf = [STEPS, T, V_DATA, len(gcfgs), seqs[0], seqs[1], gseeds[0], gseeds[1]]
    out.append(("config", R.DT_I32, torch.tensor(conf, dtype=torch.int32)))
    for i, c in enumerate(gcfgs):
        out.append(("gmodel%d" % i, R.DT_I32, torch.tensor([c["n_layer"], c["d_model"], c["n_head"], c["d_ff"]],
                                                           dtype=torch.int32)))
    out.append(("dmodel", R.DT_I32, torch.tensor([dcfg["n_layer"], dcfg["d_model"], dcfg["n_head"], dcfg["d_ff"]],
                                                 dtype=torch.int32)))
    out.append(("scalars", R.DT_F32, torch.tensor([MASK_PROB, DISC_WEIGHT], dtype=torch.float32)))
    og, od = optim_conf(2e-2), optim_conf(1e-2)
    for name, o in (("goptim", og), ("doptim", od)):
        out.append((name, R.DT_F32, torch.tensor([o["lr"], o["lr_min"], o["warmup"], o["total"], o["b1"], o["b2"],
                                                  o["eps"], o["wd"], o["clip"]], dtype=torch.float32)))
    for i, t in enumerate(toks):
        out.append(("tok%d" % i, R.DT_I32, torch.tensor(t, dtype=torch.int32)))
    for i, (c, P) in enumerate(zip(gcfgs, PG)):
        for n, _ in R.param_list(c):
            out.append(("w%d.%s" % (i, n), R.DT_F32, P[n].float()))
    for n, _ in R.param_list(dcfg):
        out.append(("wd.%s" % n, R.DT_F32, PD[n].float()))

    gopts = [make_opt(c, P, og) for c, P in zip(gcfgs, PG)]
    dopt = make_opt(dcfg, PD, od)
    N = sum(seqs)
    for s in range(STEPS):
        corrupted, labels, glosses = [], [], []
        for g, (c, P, opt) in enumerate(zip(gcfgs, PG, gopts)):
            opt.zero_grad(set_to_none=False)
            inputs, targets = sample_mlm(toks[g], gseeds[g], s, seqs[g], V - 1)
            logits, loss = R.forward(c, P, inputs, None, targets)
            loss.backward()
            glosses.append(loss.item())
            ids = inputs.clone().reshape(-1)
            rep = torch.zeros(seqs[g] * T, dtype=torch.int64)
            tg = targets.reshape(-1)
            for k in range(seqs[g] * T):
                if tg[k] >= 0:
                    ids[k] = draw(logits[k].detach(), V_DATA, V - 1, uniform53(gseeds[g], g, s, k))
                    rep[k] = int(ids[k] != tg[k])
            corrupted.append(ids.reshape(seqs[g], T))
            labels.append(rep.reshape(seqs[g], T))
        dopt.zero_grad(set_to_none=False)
        dloss = 0.0
        for g in range(len(gcfgs)):
            _, l = R.forward(dcfg, PD, corrupted[g], None, labels[g])
            (l * DISC_WEIGHT * seqs[g] / N).backward()
            dloss += l.item() * seqs[g] / N
        for c, P, opt in zip(gcfgs, PG, gopts):
            update(c, P, opt, og, s)
        update(dcfg, PD, dopt, od, s)
        out.append(("s%d.gen_loss" % s, R.DT_F32, torch.tensor(glosses, dtype=torch.float32)))
        out.append(("s%d.disc_loss" % s, R.DT_F32, torch.tensor([dloss], dtype=torch.float32)))
        for g in range(len(gcfgs)):
            out.append(("s%d.ids%d" % (s, g), R.DT_I32, corrupted[g].to(torch.int32)))
            out.append(("s%d.rep%d" % (s, g), R.DT_U8, labels[g].to(torch.uint8)))
        print("step %d: gen %s disc %.6f replaced %s" % (s, ["%.6f" % x for x in glosses], dloss,
                                                          [int(x.sum()) for x in labels]))
    for n, _ in R.param_list(dcfg):
        out.append(("fd.%s" % n, R.DT_F32, PD[n].float()))
    for i, (c, P) in enumerate(zip(gcfgs, PG)):
        for n, _ in R.param_list(c):
            out.append(("f%d.%s" % (i, n), R.DT_F32, P[n].float()))
    R.write_file(out_path, out)


if __name__ == "__main__":
    main()
