/*
 * model_xattn.c - the cross-attention sub-layer of a decoder block
 * (nb_model_config_t.cross_attn): queries from the decoder's residual
 * stream, keys and values from the encoder's output through projections of
 * their own, no causal mask, then an output projection and the residual
 * add (with an adapter where one is configured, model_adapter.c).
 *
 * Pre-LN:  xln = LNx(h); resx = h + xproj(xattn(xq(xln), xkv(enc)))
 *          the MLP reads resx.
 * Post-LN: resx = h + xproj(xattn(xq(h), xkv(enc))); xln = LNx(resx)
 *          the MLP reads xln.
 * h is the self-attention's result (pre-LN res1, post-LN ln1). Tensors:
 * h<l>.xln.{w,b} (C), xq.w (C,C), xq.b, xkv.w (2C,C) packed [k|v], xkv.b,
 * xproj.w (C,C), xproj.b. Shapes: N = B*T decoder rows, S encoder
 * positions, enc (B,S,C).
 */
#include <stdio.h>
#include "kernels/model_impl.h"

void nb__xattn_layout(const nb_model_config_t *c, int l, nb__layout_t *L)
{
    if (!c->cross_attn)
        return;
    int64_t C = c->d_model;
    static const char *const names[8] = { "xln.w", "xln.b", "xq.w", "xq.b", "xkv.w", "xkv.b", "xproj.w", "xproj.b" };
    const int64_t rows[8] = { C, C, C, C, 2 * C, 2 * C, C, C };
    const int64_t cols[8] = { 0, 0, C, 0, C, 0, C, 0 };
    char name[32];
    for (int t = 0; t < 8; t++) {
        snprintf(name, sizeof name, "h%d.%s", l, names[t]);
        nb__layout_add(L, name, cols[t] ? 2 : 1, rows[t], cols[t], (uint32_t)l, (uint32_t)(NB_B_XLNW + t));
    }
}

static bool pre(const nb_part_t *p) { return p->cfg.norm == NB_MODEL_NORM_PRE; }

const float *nb__xattn_fwd(nb_part_t *p, nb_part_acts_t *a, int i, const float *h)
{
    nb_backend_t *be = p->be;
    float *const *w = p->blocks[i].w;
    nb_block_acts_t *s = &a->blocks[i];
    int B = a->B, T = a->T, S = a->S, C = p->cfg.d_model, N = B * T;
    const uint8_t *mask = a->has_enc_mask ? a->enc_mask : NULL;
    const float *qin = h;
    if (pre(p)) {
        nb_layernorm_fwd(be, s->xln, s->xln_mean, s->xln_rstd, h, w[NB_B_XLNW], w[NB_B_XLNB], p->cfg.ln_eps, N, C);
        qin = s->xln;
    }
    nb__linear_fwd(be, s->xq, qin, w[NB_B_XQW], w[NB_B_XQB], N, C, C, 0.0f);
    nb__linear_fwd(be, s->xkv, a->enc, w[NB_B_XKVW], w[NB_B_XKVB], B * S, C, 2 * C, 0.0f);
    nb_xattn_fwd(be, s->xatty, s->xatt, s->xq, s->xkv, mask, B, T, S, C, p->cfg.n_head);
    nb__sublayer_fwd(p, a, i, NB_AD_XATTN, s->resx, h, s->xatty, w[NB_B_XPROJW], w[NB_B_XPROJB], C);
    if (pre(p))
        return s->resx;
    nb_layernorm_fwd(be, s->xln, s->xln_mean, s->xln_rstd, s->resx, w[NB_B_XLNW], w[NB_B_XLNB], p->cfg.ln_eps, N, C);
    return s->xln;
}

void nb__xattn_bwd(nb_part_t *p, nb_part_acts_t *a, int i, const float *h, float *d, float *t)
{
    nb_backend_t *be = p->be;
    float *const *w = p->blocks[i].w;
    float *const *g = p->blocks[i].g;
    const nb_block_acts_t *s = &a->blocks[i];
    int B = a->B, T = a->T, S = a->S, C = p->cfg.d_model, N = B * T;
    size_t nC = (size_t)N * (size_t)C * sizeof(float);
    /* dres: gradient of resx; dy: a free (N,C) buffer */
    float *dres = d, *dy = t;
    if (!pre(p)) {
        nb_be_memset0(be, t, nC);
        nb_layernorm_bwd(be, t, g[NB_B_XLNW], g[NB_B_XLNB], d, s->resx, w[NB_B_XLNW],
                         s->xln_mean, s->xln_rstd, N, C);
        dres = t;
        dy = d;
    }
    const float *dz = nb__adapter_bwd(p, a, i, NB_AD_XATTN, dres);
    nb__linear_bwd(be, dy, 0.0f, g[NB_B_XPROJW], g[NB_B_XPROJB], dz, s->xatty, w[NB_B_XPROJW], N, C, C);
    nb_be_memset0(be, p->d_xq, nC);
    nb_be_memset0(be, p->d_xkv, (size_t)B * (size_t)S * 2 * (size_t)C * sizeof(float));
    nb_xattn_bwd(be, p->d_xq, p->d_xkv, dy, s->xq, s->xkv, s->xatt, a->has_enc_mask ? a->enc_mask : NULL,
                 B, T, S, C, p->cfg.n_head);
    nb__linear_bwd(be, a->denc, 1.0f, g[NB_B_XKVW], g[NB_B_XKVB], p->d_xkv, a->enc, w[NB_B_XKVW], B * S, C, 2 * C);
    if (pre(p)) {
        /* d(h) = dres (residual) + LNx backward of d(xln) */
        nb__linear_bwd(be, dy, 0.0f, g[NB_B_XQW], g[NB_B_XQB], p->d_xq, s->xln, w[NB_B_XQW], N, C, C);
        nb_layernorm_bwd(be, d, g[NB_B_XLNW], g[NB_B_XLNB], dy, h, w[NB_B_XLNW], s->xln_mean, s->xln_rstd, N, C);
    } else {
        /* d(h) = dres (residual) + the query path */
        nb__linear_bwd(be, t, 1.0f, g[NB_B_XQW], g[NB_B_XQB], p->d_xq, h, w[NB_B_XQW], N, C, C);
        nb_be_copy(be, d, t, nC);
    }
}
