/*
 * model_pass.c - forward and backward of a transformer part (model.h).
 *
 * Shapes (letters of backend.h): B batch, T sequence, C d_model, F d_ff,
 * NH heads, V vocabulary (or n_classes for classification heads); N = B*T.
 * Linear layers store weights PyTorch style (out, in): y = x @ W^T + b.
 *
 * Pre-LN block (GPT-2):  ln1 = LN1(x); res1 = x + proj(attn(qkv(ln1)));
 *                        ln2 = LN2(res1); res2 = res1 + fcproj(gelu(fc(ln2)))
 *                        out = res2
 * Post-LN block (BERT):  res1 = x + proj(attn(qkv(x))); ln1 = LN1(res1);
 *                        res2 = ln1 + fcproj(gelu(fc(ln1))); ln2 = LN2(res2)
 *                        out = ln2
 * Embedding:             e = wte[tokens] + wpe; e = shift(e) with token_shift
 *                        (backend.h, nb_token_shift_fwd); post-LN: LN(e)
 * Only backend wrappers are called, so the passes run on any backend.
 */
#include <string.h>
#include "kernels/model_impl.h"

/* y (N,OC) = x (N,IC) @ w^T + beta * y, then + b (OC) when b is not NULL. */
static void linear_fwd(nb_backend_t *be, float *y, const float *x, const float *w, const float *b,
                       int N, int IC, int OC, float beta)
{
    nb_matmul(be, false, true, N, OC, IC, 1.0f, x, IC, 0, w, IC, 0, beta, y, OC, 0, 1);
    if (b)
        nb_bias_add(be, y, b, N, OC);
}

/* dx (N,IC) = dy (N,OC) @ w + dx_beta * dx (skipped when dx is NULL);
 * dw (OC,IC) += dy^T @ x; db (OC) += column sums of dy. A NULL dw or db
 * (a frozen tensor) skips its product: frozen weights cost no compute. */
static void linear_bwd(nb_backend_t *be, float *dx, float dx_beta, float *dw, float *db,
                       const float *dy, const float *x, const float *w, int N, int IC, int OC)
{
    if (dx)
        nb_matmul(be, false, false, N, IC, OC, 1.0f, dy, OC, 0, w, IC, 0, dx_beta, dx, IC, 0, 1);
    if (dw)
        nb_matmul(be, true, false, OC, IC, N, 1.0f, dy, OC, 0, x, IC, 0, 1.0f, dw, IC, 0, 1);
    if (db)
        nb_bias_grad(be, db, dy, N, OC);
}

static bool is_post(const nb_part_t *p) { return p->cfg.norm == NB_MODEL_NORM_POST; }

/* The MLP's GELU in the form the config names (nb_part_new checked that the
 * backend has it). */
static void gelu_fwd(nb_part_t *p, float *out, const float *x, size_t n)
{
    if (p->cfg.gelu == NB_MODEL_GELU_ERF)
        nb_gelu_erf_fwd(p->be, out, x, n);
    else
        nb_gelu_fwd(p->be, out, x, n);
}

static void gelu_bwd(nb_part_t *p, float *dx, const float *x, const float *dout, size_t n)
{
    if (p->cfg.gelu == NB_MODEL_GELU_ERF)
        nb_gelu_erf_bwd(p->be, dx, x, dout, n);
    else
        nb_gelu_bwd(p->be, dx, x, dout, n);
}

/* For model_adapter.c, model_xattn.c and model_lowrank.c (model_impl.h). */
void nb__linear_fwd(nb_backend_t *be, float *y, const float *x, const float *w, const float *b,
                    int N, int IC, int OC, float beta)
{
    linear_fwd(be, y, x, w, b, N, IC, OC, beta);
}
void nb__linear_bwd(nb_backend_t *be, float *dx, float dx_beta, float *dw, float *db,
                    const float *dy, const float *x, const float *w, int N, int IC, int OC)
{
    linear_bwd(be, dx, dx_beta, dw, db, dy, x, w, N, IC, OC);
}
void nb__gelu_fwd(nb_part_t *p, float *out, const float *x, size_t n) { gelu_fwd(p, out, x, n); }
void nb__gelu_bwd(nb_part_t *p, float *dx, const float *x, const float *dout, size_t n) { gelu_bwd(p, dx, x, dout, n); }

const float *nb__block_out(const nb_part_acts_t *a, int i)
{
    if (a->p->lr_mode == NB_LR_LOWER && i == a->p->spec.last - a->p->spec.first - 1)
        return a->lr_z; /* the part ends at the low-rank factor */
    return is_post(a->p) ? a->blocks[i].ln2 : a->blocks[i].res2;
}

/* Input of the first block (or of the head when the part has no blocks). */
static const float *part_body_input(const nb_part_acts_t *a)
{
    if (a->p->lr_mode == NB_LR_UPPER)
        return nb__lowrank_upper_out(a);
    return a->p->spec.embed ? a->emb_out : a->input;
}

static const float *head_input(const nb_part_acts_t *a)
{
    int nblk = a->p->spec.last - a->p->spec.first;
    return nblk ? nb__block_out(a, nblk - 1) : part_body_input(a);
}

static void block_fwd(nb_part_t *p, nb_part_acts_t *a, int i, const float *x)
{
    nb_backend_t *be = p->be;
    const nb_block_ptrs_t *w = &p->blocks[i];
    nb_block_acts_t *s = &a->blocks[i];
    int B = a->B, T = a->T, C = p->cfg.d_model, F = p->cfg.d_ff, N = B * T;
    const uint8_t *mask = a->has_mask ? a->mask : NULL;
    const float *attn_in = x;
    if (!is_post(p)) {
        nb_layernorm_fwd(be, s->ln1, s->ln1_mean, s->ln1_rstd, x, w->w[NB_B_LN1W], w->w[NB_B_LN1B], p->cfg.ln_eps, N, C);
        attn_in = s->ln1;
    }
    linear_fwd(be, s->qkv, attn_in, w->w[NB_B_QKVW], w->w[NB_B_QKVB], N, C, 3 * C, 0.0f);
    nb_attention_fwd(be, s->atty, s->att, s->qkv, mask, p->cfg.causal, B, T, C, p->cfg.n_head);
    /* res1 = x + proj(atty), through an adapter where configured */
    nb__sublayer_fwd(p, a, i, NB_AD_ATTN, s->res1, x, s->atty, w->w[NB_B_PROJW], w->w[NB_B_PROJB], C);
    const float *mlp_in;
    /* mid: the residual stream the MLP adds to (res1 pre-LN, ln1 post-LN;
     * after a decoder's cross-attention, what that returns) */
    const float *mid;
    if (is_post(p)) {
        nb_layernorm_fwd(be, s->ln1, s->ln1_mean, s->ln1_rstd, s->res1, w->w[NB_B_LN1W], w->w[NB_B_LN1B], p->cfg.ln_eps, N, C);
        mid = p->cfg.cross_attn ? nb__xattn_fwd(p, a, i, s->ln1) : s->ln1;
        mlp_in = mid;
    } else {
        mid = p->cfg.cross_attn ? nb__xattn_fwd(p, a, i, s->res1) : s->res1;
        nb_layernorm_fwd(be, s->ln2, s->ln2_mean, s->ln2_rstd, mid, w->w[NB_B_LN2W], w->w[NB_B_LN2B], p->cfg.ln_eps, N, C);
        mlp_in = s->ln2;
    }
    linear_fwd(be, s->fch, mlp_in, w->w[NB_B_FCW], w->w[NB_B_FCB], N, C, F, 0.0f);
    gelu_fwd(p, s->fchg, s->fch, (size_t)N * (size_t)F);
    /* residual: res2 = mid + fcproj(...) */
    nb__sublayer_fwd(p, a, i, NB_AD_FFN, s->res2, mid, s->fchg, w->w[NB_B_FCPW], w->w[NB_B_FCPB], F);
    if (is_post(p))
        nb_layernorm_fwd(be, s->ln2, s->ln2_mean, s->ln2_rstd, s->res2, w->w[NB_B_LN2W], w->w[NB_B_LN2B], p->cfg.ln_eps, N, C);
}

/* dx (N,C) = gradient of block i's input given dout (its output gradient).
 * Uses the part's scratch d_tmp, d_tmp2, d_qkv, d_fch, d_fchg. */
static void block_bwd(nb_part_t *p, nb_part_acts_t *a, int i, const float *x, const float *dout, float *dx)
{
    nb_backend_t *be = p->be;
    const nb_block_ptrs_t *w = &p->blocks[i];
    const nb_block_acts_t *s = &a->blocks[i];
    int B = a->B, T = a->T, C = p->cfg.d_model, F = p->cfg.d_ff, N = B * T;
    size_t nC = (size_t)N * (size_t)C * sizeof(float);
    size_t nF = (size_t)N * (size_t)F;
    const uint8_t *mask = a->has_mask ? a->mask : NULL;
    float *tmp = p->d_tmp, *tmp2 = p->d_tmp2;
    bool causal = p->cfg.causal;
    int NH = p->cfg.n_head;
    float *const *g = w->g;

    if (!is_post(p)) {
        /* MLP: dout is the gradient of res2 */
        linear_bwd(be, p->d_fchg, 0.0f, g[NB_B_FCPW], g[NB_B_FCPB], nb__adapter_bwd(p, a, i, NB_AD_FFN, dout),
                   s->fchg, w->w[NB_B_FCPW], N, F, C);
        nb_be_memset0(be, p->d_fch, nF * sizeof(float));
        gelu_bwd(p, p->d_fch, s->fch, p->d_fchg, nF);
        linear_bwd(be, tmp, 0.0f, g[NB_B_FCW], g[NB_B_FCB], p->d_fch, s->ln2, w->w[NB_B_FCW], N, C, F);
        nb_be_copy(be, tmp2, dout, nC); /* dres1 = residual + through LN2 */
        nb_layernorm_bwd(be, tmp2, g[NB_B_LN2W], g[NB_B_LN2B], tmp, p->cfg.cross_attn ? s->resx : s->res1,
                         w->w[NB_B_LN2W], s->ln2_mean, s->ln2_rstd, N, C);
        if (p->cfg.cross_attn) /* tmp2: gradient of resx, then of res1 */
            nb__xattn_bwd(p, a, i, s->res1, tmp2, tmp);
        /* attention: tmp2 is the gradient of res1 */
        linear_bwd(be, tmp, 0.0f, g[NB_B_PROJW], g[NB_B_PROJB], nb__adapter_bwd(p, a, i, NB_AD_ATTN, tmp2),
                   s->atty, w->w[NB_B_PROJW], N, C, C);
        nb_be_memset0(be, p->d_qkv, 3 * nC);
        nb_attention_bwd(be, p->d_qkv, tmp, s->qkv, s->att, mask, causal, B, T, C, NH);
        linear_bwd(be, tmp, 0.0f, g[NB_B_QKVW], g[NB_B_QKVB], p->d_qkv, s->ln1, w->w[NB_B_QKVW], N, C, 3 * C);
        nb_be_copy(be, dx, tmp2, nC);
        nb_layernorm_bwd(be, dx, g[NB_B_LN1W], g[NB_B_LN1B], tmp, x, w->w[NB_B_LN1W],
                         s->ln1_mean, s->ln1_rstd, N, C);
    } else {
        /* dout is the gradient of ln2 = LN2(res2) */
        nb_be_memset0(be, tmp2, nC);
        nb_layernorm_bwd(be, tmp2, g[NB_B_LN2W], g[NB_B_LN2B], dout, s->res2, w->w[NB_B_LN2W],
                         s->ln2_mean, s->ln2_rstd, N, C);
        linear_bwd(be, p->d_fchg, 0.0f, g[NB_B_FCPW], g[NB_B_FCPB], nb__adapter_bwd(p, a, i, NB_AD_FFN, tmp2),
                   s->fchg, w->w[NB_B_FCPW], N, F, C);
        nb_be_memset0(be, p->d_fch, nF * sizeof(float));
        gelu_bwd(p, p->d_fch, s->fch, p->d_fchg, nF);
        nb_be_copy(be, tmp, tmp2, nC); /* dln1 = residual + through fc */
        linear_bwd(be, tmp, 1.0f, g[NB_B_FCW], g[NB_B_FCB], p->d_fch, p->cfg.cross_attn ? s->xln : s->ln1,
                   w->w[NB_B_FCW], N, C, F);
        if (p->cfg.cross_attn) /* tmp: gradient of xln, then of ln1 */
            nb__xattn_bwd(p, a, i, s->ln1, tmp, tmp2);
        nb_be_memset0(be, tmp2, nC);
        nb_layernorm_bwd(be, tmp2, g[NB_B_LN1W], g[NB_B_LN1B], tmp, s->res1, w->w[NB_B_LN1W],
                         s->ln1_mean, s->ln1_rstd, N, C);
        /* tmp2 is the gradient of res1 */
        linear_bwd(be, tmp, 0.0f, g[NB_B_PROJW], g[NB_B_PROJB], nb__adapter_bwd(p, a, i, NB_AD_ATTN, tmp2),
                   s->atty, w->w[NB_B_PROJW], N, C, C);
        nb_be_memset0(be, p->d_qkv, 3 * nC);
        nb_attention_bwd(be, p->d_qkv, tmp, s->qkv, s->att, mask, causal, B, T, C, NH);
        nb_be_copy(be, dx, tmp2, nC);
        linear_bwd(be, dx, 1.0f, g[NB_B_QKVW], g[NB_B_QKVB], p->d_qkv, x, w->w[NB_B_QKVW], N, C, 3 * C);
    }
}

/* Copies n ids to the host and checks 0 <= id < limit (or id < 0 allowed
 * when allow_neg). Returns the count of ids >= 0, or NB_EINVAL. */
static long check_ids(nb_part_acts_t *a, const int32_t *dev, size_t n, int limit, bool allow_neg)
{
    nb_be_to_host(a->p->be, a->host_ids, dev, n * sizeof(int32_t));
    long count = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t v = a->host_ids[i];
        if (v >= limit || (v < 0 && !allow_neg))
            return NB_EINVAL;
        count += v >= 0;
    }
    return count;
}

static int head_fwd(nb_part_t *p, nb_part_acts_t *a, const nb_part_input_t *in, float *loss)
{
    nb_backend_t *be = p->be;
    const nb_model_config_t *c = &p->cfg;
    int B = a->B, T = a->T, C = c->d_model, N = B * T;
    const float *h = head_input(a);
    if (c->norm == NB_MODEL_NORM_PRE) {
        nb_layernorm_fwd(be, a->lnf, a->lnf_mean, a->lnf_rstd, h, p->hw[NB_H_LNFW], p->hw[NB_H_LNFB], p->cfg.ln_eps, N, C);
        h = a->lnf;
    }
    int rows = a->out_rows, cols = a->out_cols;
    switch (c->head) {
    case NB_MODEL_HEAD_LM:
    case NB_MODEL_HEAD_MLM:
        linear_fwd(be, a->logits, h, p->hw[NB_H_LMW], NULL, N, C, cols, 0.0f);
        break;
    case NB_MODEL_HEAD_TOKCLS:
        linear_fwd(be, a->logits, h, p->hw[NB_H_CLSW], p->hw[NB_H_CLSB], N, C, cols, 0.0f);
        break;
    case NB_MODEL_HEAD_SEQCLS:
        for (int b = 0; b < B; b++) /* first token of each sequence */
            nb_be_copy(be, a->cls_in + (size_t)b * C, h + (size_t)b * T * C, (size_t)C * sizeof(float));
        linear_fwd(be, a->logits, a->cls_in, p->hw[NB_H_CLSW], p->hw[NB_H_CLSB], B, C, cols, 0.0f);
        break;
    }
    if (!in->targets)
        return 0;
    nb_be_copy(be, a->targets, in->targets, (size_t)rows * sizeof(int32_t));
    long count = check_ids(a, a->targets, (size_t)rows, cols, true);
    if (count < 0 || (count == 0 && in->loss_count <= 0) || (in->loss_count > 0 && count > in->loss_count))
        return NB_EINVAL; /* a target out of range, or none counted */
    if (in->loss_count > 0) /* a shard: normalised by the whole micro-batch */
        count = in->loss_count;
    nb_xent_fwd_bwd(be, a->losses, a->dlogits, a->logits, a->targets,
                    in->loss_scale / (float)count, rows, cols);
    nb_be_to_host(be, a->host_losses, a->losses, (size_t)rows * sizeof(float));
    double sum = 0.0;
    for (int i = 0; i < rows; i++)
        if (a->host_ids[i] >= 0)
            sum += a->host_losses[i];
    if (loss)
        *loss = (float)(sum / (double)count);
    a->can_bwd = true;
    return 0;
}

int nb_part_forward(nb_part_t *p, nb_part_acts_t *a, const nb_part_input_t *in, float *loss)
{
    NB_CHECK(a->p == p);
    nb_backend_t *be = p->be;
    const nb_model_config_t *c = &p->cfg;
    int B = a->B, T = a->T, C = c->d_model, N = B * T;
    size_t nC = (size_t)N * (size_t)nb_part_in_width(p) * sizeof(float); /* the input: C, or r past a cut */
    a->fwd_done = a->can_bwd = false;
    if (!in)
        return NB_EINVAL;
    if (p->spec.embed ? !in->tokens : !in->x)
        return NB_EINVAL;
    if (a->enc) { /* a part with decoder blocks */
        if (!in->enc)
            return NB_EINVAL; /* a decoder part needs the encoder's output */
        size_t BS = (size_t)B * (size_t)a->S;
        nb_be_copy(be, a->enc, in->enc, BS * (size_t)C * sizeof(float));
        a->has_enc_mask = in->enc_mask != NULL;
        if (a->has_enc_mask)
            nb_be_copy(be, a->enc_mask, in->enc_mask, BS);
    }
    a->has_mask = in->key_mask != NULL;
    if (a->has_mask)
        nb_be_copy(be, a->mask, in->key_mask, (size_t)N);
    if (p->spec.embed) {
        nb_be_copy(be, a->tokens, in->tokens, (size_t)N * sizeof(int32_t));
        if (check_ids(a, a->tokens, (size_t)N, c->vocab, false) < 0)
            return NB_EINVAL;
        float *dst = c->norm == NB_MODEL_NORM_POST ? a->emb_raw : a->emb_out;
        float *sum = c->token_shift ? a->emb_sum : dst;
        nb_embed_fwd(be, sum, a->tokens, p->ew[NB_E_WTE], p->ew[NB_E_WPE], B, T, C);
        if (c->token_shift)
            nb_token_shift_fwd(be, dst, sum, a->has_mask ? a->mask : NULL, c->causal, B, T, C);
        if (c->norm == NB_MODEL_NORM_POST)
            nb_layernorm_fwd(be, a->emb_out, a->emb_mean, a->emb_rstd, a->emb_raw,
                             p->ew[NB_E_LNW], p->ew[NB_E_LNB], p->cfg.ln_eps, N, C);
    } else {
        nb_be_copy(be, a->input, in->x, nC);
        if (p->lr_mode == NB_LR_UPPER)
            nb__lowrank_upper_fwd(p, a);
    }
    const float *x = part_body_input(a);
    for (int i = 0; i < p->spec.last - p->spec.first; i++) {
        if (c->lowrank_rank > 0 && p->spec.first + i == c->lowrank_block)
            nb__lowrank_block_fwd(p, a, i, x);
        else
            block_fwd(p, a, i, x);
        x = nb__block_out(a, i);
    }
    a->fwd_done = true;
    if (p->spec.head)
        return head_fwd(p, a, in, loss);
    return 0;
}

/* Gradient of the head's input into dh (N,C), from the saved dlogits. */
static void head_bwd(nb_part_t *p, nb_part_acts_t *a, float *dh)
{
    nb_backend_t *be = p->be;
    const nb_model_config_t *c = &p->cfg;
    int B = a->B, T = a->T, C = c->d_model, N = B * T, cols = a->out_cols;
    size_t nC = (size_t)N * (size_t)C * sizeof(float);
    const float *h = head_input(a);
    const float *hf = c->norm == NB_MODEL_NORM_PRE ? a->lnf : h;
    float *dhf = c->norm == NB_MODEL_NORM_PRE ? p->d_tmp : dh;
    switch (c->head) {
    case NB_MODEL_HEAD_LM:
    case NB_MODEL_HEAD_MLM:
        linear_bwd(be, dhf, 0.0f, p->hg[NB_H_LMW], NULL, a->dlogits, hf, p->hw[NB_H_LMW], N, C, cols);
        p->tied_pending = p->tied_grad != NULL;
        break;
    case NB_MODEL_HEAD_TOKCLS:
        linear_bwd(be, dhf, 0.0f, p->hg[NB_H_CLSW], p->hg[NB_H_CLSB], a->dlogits, hf, p->hw[NB_H_CLSW], N, C, cols);
        break;
    case NB_MODEL_HEAD_SEQCLS:
        linear_bwd(be, p->d_tmp2, 0.0f, p->hg[NB_H_CLSW], p->hg[NB_H_CLSB], a->dlogits, a->cls_in,
                   p->hw[NB_H_CLSW], B, C, cols);
        nb_be_memset0(be, dhf, nC);
        for (int b = 0; b < B; b++)
            nb_be_copy(be, dhf + (size_t)b * T * C, p->d_tmp2 + (size_t)b * C, (size_t)C * sizeof(float));
        break;
    }
    if (c->norm == NB_MODEL_NORM_PRE) {
        nb_be_memset0(be, dh, nC);
        nb_layernorm_bwd(be, dh, p->hg[NB_H_LNFW], p->hg[NB_H_LNFB], dhf, h, p->hw[NB_H_LNFW],
                         a->lnf_mean, a->lnf_rstd, N, C);
    }
}

static void embed_bwd(nb_part_t *p, nb_part_acts_t *a, const float *demb)
{
    nb_backend_t *be = p->be;
    const nb_model_config_t *c = &p->cfg;
    int B = a->B, T = a->T, C = c->d_model, N = B * T;
    bool post = c->norm == NB_MODEL_NORM_POST;
    if (!p->eg[NB_E_WTE] && !p->eg[NB_E_WPE] && (!post || (!p->eg[NB_E_LNW] && !p->eg[NB_E_LNB])))
        return; /* the embedding is frozen */
    if (post) {
        float *draw = p->d_tmp;
        nb_be_memset0(be, draw, (size_t)N * (size_t)C * sizeof(float));
        nb_layernorm_bwd(be, draw, p->eg[NB_E_LNW], p->eg[NB_E_LNB], demb, a->emb_raw, p->ew[NB_E_LNW],
                         a->emb_mean, a->emb_rstd, N, C);
        demb = draw;
    }
    if (c->token_shift && (p->eg[NB_E_WTE] || p->eg[NB_E_WPE])) {
        float *dsum = p->d_tmp2; /* d_tmp holds draw (post-LN) */
        nb_token_shift_bwd(be, dsum, demb, a->has_mask ? a->mask : NULL, c->causal, B, T, C);
        demb = dsum;
    }
    if (p->eg[NB_E_WTE] || p->eg[NB_E_WPE])
        nb_embed_bwd(be, p->eg[NB_E_WTE], p->eg[NB_E_WPE], demb, a->tokens, B, T, C);
}

int nb_part_backward(nb_part_t *p, nb_part_acts_t *a, const float *dout)
{
    NB_CHECK(a->p == p);
    if (!a->fwd_done || (p->spec.head && !a->can_bwd))
        return NB_ESTATE;
    if (p->spec.head ? dout != NULL : dout == NULL)
        return NB_EINVAL;
    nb_backend_t *be = p->be;
    size_t nC = (size_t)a->B * (size_t)a->T * (size_t)nb_part_in_width(p) * sizeof(float);
    /* cur holds the gradient of the current output; blocks write the
     * gradient of their input into the other ping-pong buffer. */
    const float *cur = dout;
    if (a->denc) /* the decoder blocks add their share */
        nb_be_memset0(be, a->denc, (size_t)a->B * (size_t)a->S * (size_t)p->cfg.d_model * sizeof(float));
    if (p->spec.head) {
        head_bwd(p, a, p->d_ping);
        cur = p->d_ping;
        if (p->grad_ready)
            p->grad_ready(p->grad_ready_ud, p->head_goff);
    }
    /* blocks below bwd_stop and the embedding are frozen and nothing below
     * them needs a gradient (a part with the embedding only) */
    for (int i = p->spec.last - p->spec.first - 1; i >= p->bwd_stop; i--) {
        const float *x = i ? nb__block_out(a, i - 1) : part_body_input(a);
        float *next = cur == p->d_ping ? p->d_pong : p->d_ping;
        if (p->cfg.lowrank_rank > 0 && p->spec.first + i == p->cfg.lowrank_block)
            nb__lowrank_block_bwd(p, a, i, x, cur, next);
        else
            block_bwd(p, a, i, x, cur, next);
        cur = next;
        if (p->grad_ready) /* the block's first float in the gradient buffer */
            p->grad_ready(p->grad_ready_ud, p->blocks[i].goff);
    }
    if (p->spec.embed) {
        if (p->bwd_stop == 0)
            embed_bwd(p, a, cur);
        if (p->grad_ready) /* frozen blocks below bwd_stop hold no gradient */
            p->grad_ready(p->grad_ready_ud, 0);
    } else {
        if (p->lr_mode == NB_LR_UPPER) { /* the rest of the split block: dz */
            float *next = cur == p->d_ping ? p->d_pong : p->d_ping;
            nb__lowrank_upper_bwd(p, a, cur, next);
            cur = next;
            if (p->grad_ready)
                p->grad_ready(p->grad_ready_ud, p->lr_goff);
        }
        nb_be_copy(be, a->dinput, cur, nC);
    }
    a->can_bwd = false;
    a->fwd_done = false;
    return 0;
}

void nb_part_set_grad_ready(nb_part_t *p, nb_part_grad_ready_cb cb, void *ud)
{
    p->grad_ready = cb;
    p->grad_ready_ud = ud;
}

bool nb_part_has_tied_head(const nb_part_t *p) { return p->tied_head != NULL; }

const float *nb_part_acts_output(const nb_part_acts_t *a) { return head_input(a); }
const float *nb_part_acts_dinput(const nb_part_acts_t *a) { return a->dinput; }
const float *nb_part_acts_denc(const nb_part_acts_t *a) { return a->denc; }

const float *nb_part_acts_logits(const nb_part_acts_t *a, int *rows, int *cols)
{
    if (rows)
        *rows = a->out_rows;
    if (cols)
        *cols = a->out_cols;
    return a->logits;
}
