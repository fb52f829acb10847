/*
 * model_lowrank.c - the low-rank split of a transformer (model.h, "low-rank
 * split"; docs/lowrank.md): in one block, the MLP output projection
 * W (C,F) becomes U (C,r) S (r,r) V (r,F), initialised from W's truncated
 * SVD, and the MLP's residual branch is dropped, so that a pipeline cut
 * between V and S moves r values per position instead of C.
 *
 * Shapes (letters of backend.h): N = B*T rows, C d_model, F d_ff, R rank.
 * The split block (post-LN, BERT):
 *     res1 = x + proj(attn(qkv(x))); ln1 = LN1(res1); h = gelu(fc(ln1))
 *     z = h V^T (N,R)          -- a part ending at the factor stops here
 *     s = z S^T (N,R); y = s U^T + b (N,C); out = LN2(y)
 * pre-LN (GPT-2): ln1 = LN1(x); res1 = x + proj(attn(qkv(ln1)));
 *     h = gelu(fc(LN2(res1))); z, s, y as above; out = y.
 * The lower half repeats the attention half of model_pass.c's block on
 * purpose: that file stays untouched by the split.
 */
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/model_impl.h"

static bool is_post(const nb_part_t *p) { return p->cfg.norm == NB_MODEL_NORM_POST; }

nb_lr_mode_t nb__lowrank_mode(const nb_model_config_t *cfg, const nb_part_spec_t *spec)
{
    int k = cfg->lowrank_block;
    if (cfg->lowrank_rank <= 0)
        return NB_LR_NONE;
    if (spec->first <= k && k < spec->last)
        return spec->last == k + 1 && !spec->head ? NB_LR_LOWER : NB_LR_WHOLE;
    if (spec->first == k + 1 && !spec->embed)
        return NB_LR_UPPER;
    return NB_LR_NONE;
}

int nb_part_spec_out_width(const nb_model_config_t *cfg, const nb_part_spec_t *spec)
{
    return nb__lowrank_mode(cfg, spec) == NB_LR_LOWER ? cfg->lowrank_rank : cfg->d_model;
}

int nb_part_spec_in_width(const nb_model_config_t *cfg, const nb_part_spec_t *spec)
{
    return nb__lowrank_mode(cfg, spec) == NB_LR_UPPER ? cfg->lowrank_rank : cfg->d_model;
}

int nb_part_out_width(const nb_part_t *p) { return p->lr_mode == NB_LR_LOWER ? p->cfg.lowrank_rank : p->cfg.d_model; }
int nb_part_in_width(const nb_part_t *p) { return p->lr_mode == NB_LR_UPPER ? p->cfg.lowrank_rank : p->cfg.d_model; }

int nb_lowrank_check(const nb_model_config_t *cfg, char *why, size_t whylen)
{
    int k = cfg->lowrank_block, r = cfg->lowrank_rank;
    if (r == 0)
        return 0;
    if (k < 0 || k >= cfg->n_layer) {
        snprintf(why, whylen, "job.lowrank.block %d: the model has no such block (blocks 0..%d)", k,
                 cfg->n_layer - 1);
        return NB_EINVAL;
    }
    int full = cfg->d_model < cfg->d_ff ? cfg->d_model : cfg->d_ff;
    if (r < 0 || r > full) {
        snprintf(why, whylen, "job.lowrank.rank %d: must be in 1..%d, the rank of h%d.fcproj.w (%d x %d)", r, full, k,
                 cfg->d_model, cfg->d_ff);
        return NB_EINVAL;
    }
    return 0;
}

/* ---- layout ------------------------------------------------------------ */

bool nb__lowrank_skips(const nb_model_config_t *c, int l, int id)
{
    if (c->lowrank_rank <= 0 || l != c->lowrank_block)
        return false;
    /* fcproj and, post-LN, ln2 follow the factor: they are low-rank tensors */
    return id == NB_B_FCPW || id == NB_B_FCPB ||
           (c->norm == NB_MODEL_NORM_POST && (id == NB_B_LN2W || id == NB_B_LN2B));
}

void nb__lowrank_layout(const nb_model_config_t *c, const nb_part_spec_t *s, int l, nb__layout_t *L)
{
    int64_t C = c->d_model, F = c->d_ff, R = c->lowrank_rank;
    static const char *const nm[NB_LR_COUNT] = { "fcproj.v", "fcproj.s", "fcproj.u", "fcproj.b", "ln2.w", "ln2.b" };
    const int64_t rows[NB_LR_COUNT] = { R, R, C, C, C, C }, cols[NB_LR_COUNT] = { F, R, R, 0, 0, 0 };
    nb_lr_mode_t mode = nb__lowrank_mode(c, s);
    int from = mode == NB_LR_UPPER ? NB_LR_S : NB_LR_V;
    int to = mode == NB_LR_LOWER ? NB_LR_S : c->norm == NB_MODEL_NORM_POST ? NB_LR_COUNT : NB_LR_LN2W;
    char name[32];
    for (int id = from; id < to; id++) {
        snprintf(name, sizeof name, "h%d.%s", l, nm[id]);
        nb__layout_add(L, name, cols[id] ? 2 : 1, rows[id], cols[id], NB_INIT_KEY_LOWRANK, (uint32_t)id);
    }
}

/* ---- passes ------------------------------------------------------------ */

/* s = z S^T, y = s U^T + b, then post-LN: ln = LN2(y). */
static void upper_fwd(nb_part_t *p, const float *z, float *s, float *y, float *ln, float *mean, float *rstd, int N)
{
    nb_backend_t *be = p->be;
    int C = p->cfg.d_model, R = p->cfg.lowrank_rank;
    nb__linear_fwd(be, s, z, p->lrw[NB_LR_S], NULL, N, R, R, 0.0f);
    nb__linear_fwd(be, y, s, p->lrw[NB_LR_U], p->lrw[NB_LR_B], N, R, C, 0.0f);
    if (is_post(p))
        nb_layernorm_fwd(be, ln, mean, rstd, y, p->lrw[NB_LR_LN2W], p->lrw[NB_LR_LN2B], p->cfg.ln_eps, N, C);
}

/* dz (N,R) from dout, the gradient of the split block's output. Uses the
 * scratch d_tmp (dy) and d_qkv (ds). */
static void upper_bwd(nb_part_t *p, const float *z, const float *s, const float *y, const float *mean,
                      const float *rstd, const float *dout, float *dz, int N)
{
    nb_backend_t *be = p->be;
    int C = p->cfg.d_model, R = p->cfg.lowrank_rank;
    const float *dy = dout;
    if (is_post(p)) {
        nb_be_memset0(be, p->d_tmp, (size_t)N * (size_t)C * sizeof(float));
        nb_layernorm_bwd(be, p->d_tmp, p->lrg[NB_LR_LN2W], p->lrg[NB_LR_LN2B], dout, y, p->lrw[NB_LR_LN2W], mean,
                         rstd, N, C);
        dy = p->d_tmp;
    }
    float *ds = p->d_qkv; /* (N,R): R <= C */
    nb__linear_bwd(be, ds, 0.0f, p->lrg[NB_LR_U], p->lrg[NB_LR_B], dy, s, p->lrw[NB_LR_U], N, R, C);
    nb__linear_bwd(be, dz, 0.0f, p->lrg[NB_LR_S], NULL, ds, z, p->lrw[NB_LR_S], N, R, R);
}

void nb__lowrank_block_fwd(nb_part_t *p, nb_part_acts_t *a, int i, const float *x)
{
    nb_backend_t *be = p->be;
    const nb_block_ptrs_t *w = &p->blocks[i];
    nb_block_acts_t *s = &a->blocks[i];
    int B = a->B, T = a->T, C = p->cfg.d_model, F = p->cfg.d_ff, N = B * T, R = p->cfg.lowrank_rank;
    size_t nC = (size_t)N * (size_t)C * sizeof(float);
    const uint8_t *mask = a->has_mask ? a->mask : NULL;
    const float *attn_in = x;
    if (!is_post(p)) {
        nb_layernorm_fwd(be, s->ln1, s->ln1_mean, s->ln1_rstd, x, w->w[NB_B_LN1W], w->w[NB_B_LN1B], p->cfg.ln_eps, N, C);
        attn_in = s->ln1;
    }
    nb__linear_fwd(be, s->qkv, attn_in, w->w[NB_B_QKVW], w->w[NB_B_QKVB], N, C, 3 * C, 0.0f);
    nb_attention_fwd(be, s->atty, s->att, s->qkv, mask, p->cfg.causal, B, T, C, p->cfg.n_head);
    nb_be_copy(be, s->res1, x, nC);
    nb__linear_fwd(be, s->res1, s->atty, w->w[NB_B_PROJW], w->w[NB_B_PROJB], N, C, C, 1.0f);
    const float *mlp_in;
    if (is_post(p)) {
        nb_layernorm_fwd(be, s->ln1, s->ln1_mean, s->ln1_rstd, s->res1, w->w[NB_B_LN1W], w->w[NB_B_LN1B], p->cfg.ln_eps, N, C);
        mlp_in = s->ln1;
    } else {
        nb_layernorm_fwd(be, s->ln2, s->ln2_mean, s->ln2_rstd, s->res1, w->w[NB_B_LN2W], w->w[NB_B_LN2B], p->cfg.ln_eps, N, C);
        mlp_in = s->ln2;
    }
    nb__linear_fwd(be, s->fch, mlp_in, w->w[NB_B_FCW], w->w[NB_B_FCB], N, C, F, 0.0f);
    nb__gelu_fwd(p, s->fchg, s->fch, (size_t)N * (size_t)F);
    nb__linear_fwd(be, a->lr_z, s->fchg, p->lrw[NB_LR_V], NULL, N, F, R, 0.0f);
    if (p->lr_mode == NB_LR_WHOLE) /* no residual: res2 = y, post-LN out = LN2(y) */
        upper_fwd(p, a->lr_z, a->lr_s, s->res2, s->ln2, s->ln2_mean, s->ln2_rstd, N);
}

void nb__lowrank_block_bwd(nb_part_t *p, nb_part_acts_t *a, int i, const float *x, const float *dout, float *dx)
{
    nb_backend_t *be = p->be;
    const nb_block_ptrs_t *w = &p->blocks[i];
    const nb_block_acts_t *s = &a->blocks[i];
    int B = a->B, T = a->T, C = p->cfg.d_model, F = p->cfg.d_ff, N = B * T, R = p->cfg.lowrank_rank;
    size_t nC = (size_t)N * (size_t)C * sizeof(float);
    size_t nF = (size_t)N * (size_t)F;
    const uint8_t *mask = a->has_mask ? a->mask : NULL;
    float *tmp = p->d_tmp, *tmp2 = p->d_tmp2;
    float *const *g = w->g;
    const float *dz = dout; /* NB_LR_LOWER: dout is the factor's gradient */
    if (p->lr_mode == NB_LR_WHOLE) {
        /* dz lands in dx (N,R <= C), free until the end of this block */
        upper_bwd(p, a->lr_z, a->lr_s, s->res2, s->ln2_mean, s->ln2_rstd, dout, dx, N);
        dz = dx;
    }
    nb__linear_bwd(be, p->d_fchg, 0.0f, p->lrg[NB_LR_V], NULL, dz, s->fchg, p->lrw[NB_LR_V], N, F, R);
    nb_be_memset0(be, p->d_fch, nF * sizeof(float));
    nb__gelu_bwd(p, p->d_fch, s->fch, p->d_fchg, nF);
    if (!is_post(p)) {
        nb__linear_bwd(be, tmp, 0.0f, g[NB_B_FCW], g[NB_B_FCB], p->d_fch, s->ln2, w->w[NB_B_FCW], N, C, F);
        nb_be_memset0(be, tmp2, nC); /* dres1: through LN2 only (no residual) */
        nb_layernorm_bwd(be, tmp2, g[NB_B_LN2W], g[NB_B_LN2B], tmp, s->res1, w->w[NB_B_LN2W], s->ln2_mean,
                         s->ln2_rstd, N, C);
        nb__linear_bwd(be, tmp, 0.0f, g[NB_B_PROJW], g[NB_B_PROJB], tmp2, s->atty, w->w[NB_B_PROJW], N, C, C);
        nb_be_memset0(be, p->d_qkv, 3 * nC);
        nb_attention_bwd(be, p->d_qkv, tmp, s->qkv, s->att, mask, p->cfg.causal, B, T, C, p->cfg.n_head);
        nb__linear_bwd(be, tmp, 0.0f, g[NB_B_QKVW], g[NB_B_QKVB], p->d_qkv, s->ln1, w->w[NB_B_QKVW], N, C, 3 * C);
        nb_be_copy(be, dx, tmp2, nC);
        nb_layernorm_bwd(be, dx, g[NB_B_LN1W], g[NB_B_LN1B], tmp, x, w->w[NB_B_LN1W], s->ln1_mean, s->ln1_rstd, N, C);
    } else {
        /* dln1: through fc only (no residual) */
        nb__linear_bwd(be, tmp, 0.0f, g[NB_B_FCW], g[NB_B_FCB], p->d_fch, s->ln1, w->w[NB_B_FCW], N, C, F);
        nb_be_memset0(be, tmp2, nC);
        nb_layernorm_bwd(be, tmp2, g[NB_B_LN1W], g[NB_B_LN1B], tmp, s->res1, w->w[NB_B_LN1W], s->ln1_mean,
                         s->ln1_rstd, N, C);
        nb__linear_bwd(be, tmp, 0.0f, g[NB_B_PROJW], g[NB_B_PROJB], tmp2, s->atty, w->w[NB_B_PROJW], N, C, C);
        nb_be_memset0(be, p->d_qkv, 3 * nC);
        nb_attention_bwd(be, p->d_qkv, tmp, s->qkv, s->att, mask, p->cfg.causal, B, T, C, p->cfg.n_head);
        nb_be_copy(be, dx, tmp2, nC);
        nb__linear_bwd(be, dx, 1.0f, g[NB_B_QKVW], g[NB_B_QKVB], p->d_qkv, x, w->w[NB_B_QKVW], N, C, 3 * C);
    }
}

void nb__lowrank_upper_fwd(nb_part_t *p, nb_part_acts_t *a)
{
    upper_fwd(p, a->input, a->lr_s, a->lr_y, a->lr_ln, a->lr_mean, a->lr_rstd, a->B * a->T);
}

void nb__lowrank_upper_bwd(nb_part_t *p, nb_part_acts_t *a, const float *dout, float *dz)
{
    upper_bwd(p, a->input, a->lr_s, a->lr_y, a->lr_mean, a->lr_rstd, dout, dz, a->B * a->T);
}

const float *nb__lowrank_upper_out(const nb_part_acts_t *a)
{
    return a->p->cfg.norm == NB_MODEL_NORM_POST ? a->lr_ln : a->lr_y;
}

/* ---- initialisation from the dense layer ------------------------------- */

int nb_lowrank_svd(const float *w, int m, int n, int r, float *u, float *s, float *v)
{
    int k = m < n ? m : n;
    if (m <= 0 || n <= 0 || r < 1 || r > k)
        return NB_EINVAL;
    float *a = malloc((size_t)m * (size_t)n * sizeof(float));
    float *sv = malloc((size_t)k * sizeof(float));
    float *uu = malloc((size_t)m * (size_t)k * sizeof(float));
    float *vt = malloc((size_t)k * (size_t)n * sizeof(float));
    int rc = NB_ENOMEM;
    if (!a || !sv || !uu || !vt)
        goto out;
    memcpy(a, w, (size_t)m * (size_t)n * sizeof(float)); /* sgesdd overwrites its input */
    rc = NB_EIO;
    if (LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', m, n, a, n, sv, uu, k, vt, n) != 0)
        goto out;
    memset(s, 0, (size_t)r * (size_t)r * sizeof(float));
    for (int j = 0; j < r; j++) {
        /* sign: the largest-magnitude entry of u's column j is positive */
        int best = 0;
        for (int i = 1; i < m; i++)
            if (fabsf(uu[(size_t)i * k + j]) > fabsf(uu[(size_t)best * k + j]))
                best = i;
        float sg = uu[(size_t)best * k + j] < 0.0f ? -1.0f : 1.0f;
        for (int i = 0; i < m; i++)
            u[(size_t)i * r + j] = sg * uu[(size_t)i * k + j];
        for (int c = 0; c < n; c++)
            v[(size_t)j * n + c] = sg * vt[(size_t)j * n + c];
        s[(size_t)j * r + j] = sv[j];
    }
    rc = 0;
out:
    free(a);
    free(sv);
    free(uu);
    free(vt);
    return rc;
}

/* Copies tensor di of dst from the tensor of src with its name, via the host. */
static int copy_tensor(nb_part_t *dst, const nb_param_info_t *di, nb_part_t *src, char *err, size_t errlen)
{
    int si = nb_part_find_tensor(src, di->name);
    if (si < 0)
        return 0; /* a tensor the dense model lacks (a new head) keeps its init */
    if (nb_part_tensor(src, si)->numel != di->numel) {
        snprintf(err, errlen, "low-rank init: the dense model has another shape for tensor %s", di->name);
        return NB_EINVAL;
    }
    float *h = malloc(di->numel * sizeof(float));
    if (!h)
        return NB_ENOMEM;
    nb_be_to_host(src->be, h, src->params + nb_part_tensor(src, si)->offset, di->numel * sizeof(float));
    nb_be_from_host(dst->be, dst->params + di->offset, h, di->numel * sizeof(float));
    nb_be_sync(dst->be);
    free(h);
    return 0;
}

int nb_part_lowrank_init(nb_part_t *dst, nb_part_t *dense, char *err, size_t errlen)
{
    const nb_model_config_t *c = &dst->cfg;
    int k = c->lowrank_block, R = c->lowrank_rank, C = c->d_model, F = c->d_ff;
    float *w = NULL, *u = NULL, *s = NULL, *v = NULL;
    int rc = 0;
    bool svd_done = false;
    for (int i = 0; i < dst->n_info && !rc; i++) {
        const nb_param_info_t *di = &dst->info[i];
        uint32_t id = dst->init_id[i];
        if (dst->init_key[i] != NB_INIT_KEY_LOWRANK || id > NB_LR_U) {
            rc = copy_tensor(dst, di, dense, err, errlen);
            continue;
        }
        if (!svd_done) {
            char name[32];
            snprintf(name, sizeof name, "h%d.fcproj.w", k);
            int wi = nb_part_find_tensor(dense, name);
            if (wi < 0 || nb_part_tensor(dense, wi)->numel != (size_t)C * (size_t)F) {
                snprintf(err, errlen, "low-rank init: the dense model lacks %s (%d x %d)", name, C, F);
                rc = NB_EINVAL;
                break;
            }
            w = malloc((size_t)C * (size_t)F * sizeof(float));
            u = malloc((size_t)C * (size_t)R * sizeof(float));
            s = malloc((size_t)R * (size_t)R * sizeof(float));
            v = malloc((size_t)R * (size_t)F * sizeof(float));
            if (!w || !u || !s || !v) {
                rc = NB_ENOMEM;
                break;
            }
            nb_be_to_host(dense->be, w, dense->params + nb_part_tensor(dense, wi)->offset,
                          (size_t)C * (size_t)F * sizeof(float));
            if ((rc = nb_lowrank_svd(w, C, F, R, u, s, v)) != 0) {
                snprintf(err, errlen, "low-rank init: the SVD of %s failed", name);
                break;
            }
            svd_done = true;
        }
        const float *src = id == NB_LR_U ? u : id == NB_LR_S ? s : v;
        nb_be_from_host(dst->be, dst->params + di->offset, src, di->numel * sizeof(float));
        nb_be_sync(dst->be);
    }
    free(w);
    free(u);
    free(s);
    free(v);
    return rc;
}
