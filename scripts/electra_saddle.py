"""electra_saddle.py - a PyTorch replica of tests/bench/bench_electra.c,
written to find what lets the ELECTRA discriminator leave the prior at the
benchmark's scale (docs/benchmarks.md, "What breaks the saddle"). An
independent implementation: it shares no code with Nebula, only the recipe.

  python3 scripts/electra_saddle.py --name NAME [--tokshift 1] [--conv 3] [--pre 1500] \
      [--down 8 --heads seqcls,vote] ...
prints the discriminator's loss against its prior (and, with --down N, the
downstream accuracy pre-trained vs from scratch over N paired seeds) and
appends the result to electra_saddle.jsonl (--out). --tokshift, --conv,
--alibi and --relpos are changes to the model family that Nebula does not
have; --pos, --pos_std, --lr and --seqs are recipe changes it could use.

Data: K=4 licence texts (GPL-2, GPL-3, LGPL-2.1, Apache-2.0) as bytes,
1 KiB chunks, every 4th held out. Generator: unigram sampling from each
text's byte frequencies (what the bench's generators converge to in ~150
steps). Discriminator: 2 layers, d_model 64, 4 heads, d_ff 256, pre-LN,
bidirectional, learned wpe, GPT-2 init (std 0.02, residual projections
0.02/sqrt(2L)), vocab 257, T=256; 2 sequences per text per step (8 x 256),
loss weight 50, AdamW lr 1e-3 warmup 10% cosine to lr/10, wd 0.01 on
2-D tensors, beta2 0.999, grad clip 1.0.

Downstream: seqcls head on the first token (or 'vote' tokcls), POOL 8
labelled snippets per class, FT 120 steps of 16, lr 1e-3, eval 48 per
class from held-out chunks, paired seeds.
"""
import argparse, json, math, sys, time
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)
TEXTS = ["GPL-2", "GPL-3", "LGPL-2.1", "Apache-2.0"]
K, T, V, CHUNK, HOLD = 4, 256, 257, 1024, 4


def load():
    full, train, held = [], [], []
    for name in TEXTS:
        b = np.frombuffer(open(f"/usr/share/common-licenses/{name}", "rb").read(), dtype=np.uint8).astype(np.int64)
        tr, hf = [], []
        for c0 in range(0, len(b), CHUNK):
            end = min(c0 + CHUNK, len(b))
            if (c0 // CHUNK) % HOLD == HOLD - 1 and end - c0 == CHUNK and len(hf) < 64:
                hf.append(c0)
            else:
                tr.append(b[c0:end])
        full.append(b)
        train.append(np.concatenate(tr))
        held.append(hf)
    return full, train, held


FULL, TRAIN, HELD = load()
UNI, BI = [], []
for tr in TRAIN:
    cnt = np.bincount(tr, minlength=256).astype(np.float64)
    UNI.append(torch.tensor(cnt / cnt.sum(), dtype=torch.float32))
    M = np.zeros((256, 256)); np.add.at(M, (tr[:-1], tr[1:]), 1)
    M += 1e-3 * (cnt / cnt.sum())[None, :]  # empty rows fall back to the unigram
    BI.append(torch.tensor(M / M.sum(1, keepdims=True), dtype=torch.float32))


class Block(nn.Module):
    def __init__(s, C, H, L, a):
        super().__init__()
        s.H, s.a = H, a
        s.ln1, s.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        s.qkv, s.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        s.fc, s.fcp = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)
        for m in (s.qkv, s.fc):
            nn.init.normal_(m.weight, std=0.02); nn.init.zeros_(m.bias)
        for m in (s.proj, s.fcp):
            nn.init.normal_(m.weight, std=0.02 / math.sqrt(2 * L)); nn.init.zeros_(m.bias)
        if a.conv:  # family change: depthwise 1-D conv (residual) before attention
            s.lnc = nn.LayerNorm(C)
            s.conv = nn.Conv1d(C, C, a.conv, padding=a.conv // 2, groups=C)
            nn.init.normal_(s.conv.weight, std=a.conv_std); nn.init.zeros_(s.conv.bias)
        if a.relpos:  # family change: learned per-head bias for offsets -R..R (T5-like, clipped)
            s.rel = nn.Parameter(torch.zeros(H, 2 * a.relpos + 1))

    def forward(s, x, bias):
        B, Tn, C = x.shape
        if s.a.conv:
            x = x + s.conv(s.lnc(x).transpose(1, 2)).transpose(1, 2)
        q, k, v = s.qkv(s.ln1(x)).split(C, 2)
        q, k, v = [t.view(B, Tn, s.H, C // s.H).transpose(1, 2) for t in (q, k, v)]
        if s.a.relpos:
            R = s.a.relpos
            i = torch.arange(Tn)
            off = (i[None, :] - i[:, None]).clamp(-R, R) + R
            rb = s.rel[:, off]  # H,T,T
            bias = rb if bias is None else bias + rb
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x + s.proj(y.transpose(1, 2).reshape(B, Tn, C))
        return x + s.fcp(F.gelu(s.fc(s.ln2(x))))


def sinusoid(Tn, C):
    pos = torch.arange(Tn, dtype=torch.float32)[:, None]
    i = torch.arange(0, C, 2, dtype=torch.float32)
    ang = pos / (10000 ** (i / C))
    pe = torch.zeros(Tn, C)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(ang), torch.cos(ang)
    return pe


class Model(nn.Module):
    def __init__(s, a, n_out, seed):
        super().__init__()
        torch.manual_seed(seed)
        C, H, L = a.d, 4, 2
        s.a = a
        s.wte = nn.Embedding(V, C)
        nn.init.normal_(s.wte.weight, std=a.wte_std)
        s.wpe = nn.Parameter(torch.zeros(T, C))
        if a.pos == "normal":
            nn.init.normal_(s.wpe, std=a.pos_std)
        elif a.pos == "sin":  # learned, sinusoidal init, scaled to rms pos_std
            s.wpe.data = sinusoid(T, C) * (a.pos_std / math.sqrt(0.5))
        elif a.pos == "none":
            s.wpe.requires_grad_(False)
        s.blocks = nn.ModuleList([Block(C, H, L, a) for _ in range(L)])
        s.lnf = nn.LayerNorm(C)
        s.head = nn.Linear(C, n_out)
        nn.init.normal_(s.head.weight, std=0.02); nn.init.zeros_(s.head.bias)
        s.bias = None
        if a.alibi:  # family change: ALiBi, symmetric |i-j| penalty, slopes 2^-(8h/H) * alibi scale
            i = torch.arange(T)
            dist = (i[None, :] - i[:, None]).abs().float()
            sl = torch.tensor([2 ** (-8 * (h + 1) / H) for h in range(H)]) * a.alibi
            s.bias = -sl[:, None, None] * dist[None]
        if a.tokshift:  # family change: zero-param token shift (quarter of channels from t-1, quarter from t+1)
            pass

    def body(s, ids):
        x = s.wte(ids) + s.wpe[: ids.shape[1]]
        if s.a.tokshift:
            C = x.shape[2]; q = C // 4
            prev = F.pad(x[:, :-1, :q], (0, 0, 1, 0))
            nxt = F.pad(x[:, 1:, q:2 * q], (0, 0, 0, 1))
            x = torch.cat([prev, nxt, x[:, :, 2 * q:]], 2)
        bias = s.bias[:, : ids.shape[1], : ids.shape[1]] if s.bias is not None else None
        for b in s.blocks:
            x = b(x, bias)
        return s.lnf(x)

    def forward(s, ids):
        return s.head(s.body(ids))


def make_opt(m, lr, steps, wd=0.01):
    dec = [p for n, p in m.named_parameters() if p.requires_grad and p.dim() >= 2]
    nod = [p for n, p in m.named_parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW([{"params": dec, "weight_decay": wd}, {"params": nod, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.999), eps=1e-8)
    warm = max(1, steps // 10)

    def lr_at(s, lr=lr):
        if s < warm:
            return (s + 1) / warm * lr
        p = (s - warm) / max(1, steps - warm)
        return lr / 10 + (lr - lr / 10) * 0.5 * (1 + math.cos(math.pi * p))
    return opt, lr_at


def corrupt(ids, cls, g, mask_prob=0.15, gen="unigram"):
    """15% positions redrawn; label 1 where the token changed."""
    B, Tn = ids.shape
    m = torch.rand(B, Tn, generator=g) < mask_prob
    new = ids.clone()
    for b in range(B):
        n = int(m[b].sum())
        if n:
            if gen == "unigram":
                new[b, m[b]] = torch.multinomial(UNI[cls[b]], n, replacement=True, generator=g)
            elif gen == "bigram":  # from P(. | original previous byte): a generator that reads its left neighbour
                prev = F.pad(ids[b, :-1], (1, 0), value=32)[m[b]]
                new[b, m[b]] = torch.multinomial(BI[cls[b]][prev], 1, generator=g)[:, 0]
            else:  # uniform bytes (the early, foreign-byte generator)
                new[b, m[b]] = torch.randint(0, 256, (n,), generator=g)
    return new, (new != ids).long()


def pre_batch(rng, seqs=2, Tn=T):
    ids, cls = [], []
    for c in range(K):
        for _ in range(seqs):
            st = rng.integers(0, len(TRAIN[c]) - Tn + 1)
            ids.append(TRAIN[c][st:st + Tn]); cls.append(c)
    return torch.tensor(np.stack(ids)), cls


def bern_h(q):
    return -(q * math.log(q) + (1 - q) * math.log(1 - q))


def pretrain(a, log=True):
    m = Model(a, 2, a.seed)
    opt, lr_at = make_opt(m, a.lr, a.pre)
    rng = np.random.default_rng(1234 + a.seed)
    g = torch.Generator().manual_seed(99 + a.seed)
    hist, reps, toks, curve = [], 0, 0, []
    t0 = time.time()
    for s in range(a.pre):
        ids, cls = pre_batch(rng, a.seqs)
        x, y = corrupt(ids, cls, g, gen=a.gen)
        logits = m(x)
        loss = F.cross_entropy(logits.reshape(-1, 2), y.reshape(-1))
        for pg in opt.param_groups:
            pg["lr"] = lr_at(s)
        opt.zero_grad()
        (a.w * loss).backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        hist.append(loss.item())
        if s >= a.pre - a.win:
            reps += int(y.sum()); toks += y.numel()
        if (s + 1) % 50 == 0:
            curve.append(round(float(np.mean(hist[-50:])), 4))
            if log:
                print(f"  step {s+1} disc {curve[-1]:.4f} ({time.time()-t0:.0f}s)", flush=True)
    q = reps / toks
    # fixed eval: held-out-free, 32 fresh batches from the training text with a fixed rng
    m.eval()
    erng = np.random.default_rng(777); eg = torch.Generator().manual_seed(778)
    el, er, et = 0.0, 0, 0
    with torch.no_grad():
        for _ in range(16):
            ids, cls = pre_batch(erng, 2)
            x, y = corrupt(ids, cls, eg, gen=a.gen)
            el += F.cross_entropy(m(x).reshape(-1, 2), y.reshape(-1), reduction="sum").item()
            er += int(y.sum()); et += y.numel()
    m.train()
    res = dict(last=float(np.mean(hist[-a.win:])), prior=bern_h(q), eval=el / et, eval_prior=bern_h(er / et),
               curve=curve, secs=round(time.time() - t0))
    res["gap"] = res["eval_prior"] - res["eval"]
    return m, res


def snippets(seed, step, B, ev, pool):
    ids, lab = [], []
    for b in range(B):
        c = b % K
        if ev:
            j = b // K; nh = len(HELD[c]); per = (B // K + nh - 1) // nh
            st = HELD[c][j % nh] + (CHUNK - T) * (j // nh) // (per - 1 if per > 1 else 1)
            ids.append(FULL[c][st:st + T])
        else:
            r = np.random.default_rng([77 + 1000 * seed, step, b])
            j = r.integers(0, pool)
            r2 = np.random.default_rng([78 + 1000 * seed, c, j])
            st = r2.integers(0, len(TRAIN[c]) - T + 1)
            ids.append(TRAIN[c][st:st + T])
        lab.append(c)
    return torch.tensor(np.stack(ids)), torch.tensor(lab)


def finetune(a, body_state, seed, vote=False, ft=120, batch=16, pool=8, lr=1e-3, freeze=False):
    m = Model(a, K, 11 + 1000 * seed)
    if body_state is not None:
        sd = {k: v for k, v in body_state.items() if not k.startswith("head.")}
        missing = m.load_state_dict(sd, strict=False)
        assert set(missing.missing_keys) == {"head.weight", "head.bias"}, missing
    if freeze:  # a probe: the head alone trains
        for n_, p_ in m.named_parameters():
            p_.requires_grad_(n_.startswith("head."))
    opt, lr_at = make_opt(m, lr, ft)
    for s in range(ft):
        ids, lab = snippets(seed, s, batch, False, pool)
        out = m(ids)
        if vote:
            loss = F.cross_entropy(out.reshape(-1, K), lab.repeat_interleave(T))
        else:
            loss = F.cross_entropy(out[:, 0], lab)
        for pg in opt.param_groups:
            pg["lr"] = lr_at(s)
        opt.zero_grad(); loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
    m.eval()
    ids, lab = snippets(seed, 0, K * 48, True, pool)
    with torch.no_grad():
        out = m(ids)
        if vote:
            sc = F.log_softmax(out, -1).sum(1)
        else:
            sc = out[:, 0]
    return (sc.argmax(-1) == lab).float().mean().item()


def parser():
    p = argparse.ArgumentParser()
    p.add_argument("--name", default="base")
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--pos", default="normal", choices=["normal", "sin", "none"])
    p.add_argument("--pos_std", type=float, default=0.02)
    p.add_argument("--wte_std", type=float, default=0.02)
    p.add_argument("--alibi", type=float, default=0.0)
    p.add_argument("--relpos", type=int, default=0)
    p.add_argument("--conv", type=int, default=0)
    p.add_argument("--conv_std", type=float, default=0.02)
    p.add_argument("--tokshift", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--pre", type=int, default=300)
    p.add_argument("--seqs", type=int, default=2)
    p.add_argument("--w", type=float, default=50.0)
    p.add_argument("--win", type=int, default=20)
    p.add_argument("--gen", default="unigram")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--down", type=int, default=0, help="seeds for the downstream check (0: none)")
    p.add_argument("--heads", default="seqcls")
    p.add_argument("--ft", type=int, default=120)
    p.add_argument("--down_from", type=int, default=0)
    p.add_argument("--freeze", type=int, default=0)
    p.add_argument("--ft_lr", type=float, default=1e-3)
    p.add_argument("--out", default="electra_saddle.jsonl")
    return p


def main():
    a = parser().parse_args()
    print(a.name, vars(a), flush=True)
    m, res = pretrain(a)
    print(f"{a.name}: disc last{a.win} {res['last']:.4f} prior {res['prior']:.4f} | eval {res['eval']:.4f} "
          f"prior {res['eval_prior']:.4f} gap {res['gap']:+.4f} ({res['secs']}s)", flush=True)
    if a.down:
        st = {k: v.clone() for k, v in m.state_dict().items()}
        for head in a.heads.split(","):
            pre, scr = [], []
            for sd in range(a.down_from, a.down_from + a.down):
                pre.append(finetune(a, st, sd, head == "vote", ft=a.ft, lr=a.ft_lr, freeze=bool(a.freeze)))
                scr.append(finetune(a, None, sd, head == "vote", ft=a.ft, lr=a.ft_lr, freeze=bool(a.freeze)))
                print(f"  {head} seed {sd}: pretrained {pre[-1]:.3f} scratch {scr[-1]:.3f}", flush=True)
            gain = np.array(pre) - np.array(scr)
            res[head] = dict(pre=pre, scr=scr, pre_mean=float(np.mean(pre)), scr_mean=float(np.mean(scr)),
                             gain=float(gain.mean()), gain_sd=float(gain.std(ddof=1)) if len(gain) > 1 else 0.0,
                             won=int((gain > 0).sum()))
            print(f"  {head}: pretrained {np.mean(pre):.3f} scratch {np.mean(scr):.3f} gain {gain.mean():+.3f} "
                  f"sd {res[head]['gain_sd']:.3f} won {res[head]['won']}/{len(gain)}", flush=True)
    res["name"] = a.name; res["args"] = vars(a)
    with open(a.out, "a") as f:
        f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
