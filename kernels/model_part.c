/*
 * model_part.c - a part of the transformer: its parameter table (one flat
 * buffer for parameters, one for gradients), seeded init, and the per
 * micro-batch activation objects. The tensor list itself (names, shapes,
 * order, init streams) is nb_model_layout's, in model_layout.c; the
 * passes are in model_pass.c.
 */
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include "kernels/model_impl.h"
#include "kernels/rng.h"

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Saturating size product: SIZE_MAX on overflow (then allocation fails). */
static size_t mul_sat(size_t a, size_t b)
{
    size_t r;
    return nb_mul_size(a, b, &r) ? SIZE_MAX : r;
}

static bool head_has_lnf(const nb_model_config_t *c) { return c->norm == NB_MODEL_NORM_PRE; }
static bool head_is_vocab(const nb_model_config_t *c) { return c->head == NB_MODEL_HEAD_LM || c->head == NB_MODEL_HEAD_MLM; }
static bool head_tied(const nb_model_config_t *c) { return head_is_vocab(c) && c->tie_embeddings; }

/* ---- parameter layout -------------------------------------------------- */

int nb__part_layout_cap(const nb_part_spec_t *spec)
{
    return NB_E_COUNT + NB_H_COUNT + (spec->last - spec->first) * NB_B_COUNT + NB_LR_COUNT;
}

/* nb_model_layout's callback: appends one tensor to the part's table. */
struct part_table {
    nb_part_t *p;
    int cap;
};

static int add_tensor(void *ud, const nb_layout_tensor_t *l)
{
    struct part_table *pt = ud;
    nb_part_t *p = pt->p;
    if (p->n_info >= pt->cap)
        return NB_ENOMEM;
    nb_param_info_t *t = &p->info[p->n_info];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", l->name);
    t->ndim = l->ndim;
    t->shape[0] = l->shape[0];
    t->shape[1] = l->shape[1];
    t->numel = l->numel;
    t->offset = l->offset;
    t->grad_offset = l->offset;
    t->decay = l->ndim == 2;
    t->trainable = true;
    p->init_key[p->n_info] = l->init_key;
    p->init_id[p->n_info] = l->init_id;
    p->n_info++;
    p->n_params = l->offset + l->numel;
    if (l->init_key == NB_INIT_KEY_HEAD && p->head_offset == SIZE_MAX)
        p->head_offset = l->offset;
    return 0;
}

int nb__part_build_layout(nb_part_t *p, int cap)
{
    struct part_table pt = { p, cap };
    p->n_info = 0;
    p->n_params = 0;
    p->head_offset = SIZE_MAX;
    int rc = nb_model_layout(&p->cfg, &p->spec, add_tensor, &pt);
    if (p->head_offset == SIZE_MAX) /* no head tensor: where one would begin */
        p->head_offset = p->n_params;
    return rc < 0 ? NB_ENOMEM : 0;
}

void nb__part_resolve(nb_part_t *p)
{
    size_t go = 0; /* gradient floats of the tensors before i */
    bool head_seen = false;
    for (int i = 0; i < p->n_info; i++) {
        uint32_t key = p->init_key[i], id = p->init_id[i];
        float *w = p->params + p->info[i].offset;
        float *g = p->info[i].trainable ? p->grads + p->info[i].grad_offset : NULL;
        if (key == NB_INIT_KEY_HEAD && !head_seen) {
            p->head_goff = go;
            head_seen = true;
        } else if (key == NB_INIT_KEY_LOWRANK && id == NB_LR_S && p->lr_mode == NB_LR_UPPER) {
            p->lr_goff = go; /* the first tensor of a part beginning at the factor */
        } else if (key < NB_INIT_KEY_EMBED && id == 0) {
            p->blocks[key - (uint32_t)p->spec.first].goff = go;
        }
        if (p->info[i].trainable)
            go += p->info[i].numel;
        if (key == NB_INIT_KEY_EMBED) {
            p->ew[id] = w;
            p->eg[id] = g;
        } else if (key == NB_INIT_KEY_HEAD) {
            p->hw[id] = w;
            p->hg[id] = g;
        } else if (key == NB_INIT_KEY_LOWRANK) {
            p->lrw[id] = w;
            p->lrg[id] = g;
        } else {
            nb_block_ptrs_t *b = &p->blocks[key - (uint32_t)p->spec.first];
            b->w[id] = w;
            b->g[id] = g;
        }
    }
    if (!head_seen)
        p->head_goff = go;
}

/* Standard deviation of the normal init of a 2-D tensor (GPT-2 scheme:
 * residual projections scaled by 1/sqrt(2 n_layer)). */
static double init_std(const nb_model_config_t *c, uint32_t key, uint32_t id)
{
    if (key < NB_INIT_KEY_EMBED && (id == NB_B_PROJW || id == NB_B_FCPW || id == NB_B_XPROJW))
        return 0.02 / sqrt(2.0 * (c->n_layer > 0 ? c->n_layer : 1));
    return 0.02;
}

int nb_part_init_params(nb_part_t *p, uint64_t seed)
{
    size_t maxn = 0;
    for (int i = 0; i < p->n_info; i++)
        if (p->info[i].numel > maxn)
            maxn = p->info[i].numel;
    float *host = malloc((maxn ? maxn : 1) * sizeof(float));
    if (!host)
        return NB_ENOMEM;
    for (int i = 0; i < p->n_info; i++) {
        const nb_param_info_t *t = &p->info[i];
        uint32_t key = p->init_key[i], id = p->init_id[i];
        bool ln_weight = (key == NB_INIT_KEY_EMBED && id == NB_E_LNW) ||
                         (key == NB_INIT_KEY_HEAD && id == NB_H_LNFW) ||
                         (key == NB_INIT_KEY_LOWRANK && id == NB_LR_LN2W) ||
                         (key < NB_INIT_KEY_EMBED && (id == NB_B_LN1W || id == NB_B_LN2W || id == NB_B_XLNW));
        /* an adapter's up-projection starts at zero: a fresh adapter is
         * the identity, so a pretrained model starts unchanged */
        bool adapter_up = key < NB_INIT_KEY_EMBED && id >= NB_B_AD && (id - NB_B_AD) % 4 == NB_AD_UW;
        if (t->ndim == 2 && !adapter_up) {
            nb_rng_t r;
            nb_rng_init(&r, seed, key, id);
            double sd = init_std(&p->cfg, key, id);
            for (size_t k = 0; k < t->numel; k++)
                host[k] = (float)(nb_rng_normal(&r) * sd);
        } else {
            for (size_t k = 0; k < t->numel; k++)
                host[k] = ln_weight ? 1.0f : 0.0f;
        }
        nb_be_from_host(p->be, p->params + t->offset, host, t->numel * sizeof(float));
        nb_be_sync(p->be); /* host is reused for the next tensor */
    }
    free(host);
    return 0;
}

/* Field by field: padding bytes of the structs may differ. */
static bool config_equal(const nb_model_config_t *a, const nb_model_config_t *b)
{
    return a->n_layer == b->n_layer && a->d_model == b->d_model && a->n_head == b->n_head &&
           a->d_ff == b->d_ff && a->vocab == b->vocab && a->max_seq == b->max_seq && a->causal == b->causal &&
           a->norm == b->norm && a->head == b->head && a->n_classes == b->n_classes &&
           a->tie_embeddings == b->tie_embeddings && nb_model_ln_eps(a) == nb_model_ln_eps(b) &&
           a->gelu == b->gelu && a->adapter_size == b->adapter_size &&
           (a->adapter_size == 0 || (a->adapter_after == b->adapter_after && a->adapter_first == b->adapter_first &&
                                     a->adapter_last == b->adapter_last)) &&
           a->cross_attn == b->cross_attn && a->lowrank_rank == b->lowrank_rank &&
           (a->lowrank_rank == 0 || a->lowrank_block == b->lowrank_block);
}

int nb_part_new(nb_backend_t *be, const nb_model_config_t *cfg, const nb_part_spec_t *spec,
                uint64_t seed, nb_part_t *tie_with, nb_part_t **out, char *err, size_t errlen)
{
    *out = NULL;
    const char *why = nb_model_config_validate(cfg);
    if (why) {
        set_err(err, errlen, "model config: %s", why);
        return NB_EINVAL;
    }
    if (!spec || spec->first < 0 || spec->first > spec->last || spec->last > cfg->n_layer) {
        set_err(err, errlen, "part: blocks [%d, %d) are not a range of 0..%d",
                spec ? spec->first : -1, spec ? spec->last : -1, cfg->n_layer);
        return NB_EINVAL;
    }
    if (!spec->embed && !spec->head && spec->first == spec->last) {
        set_err(err, errlen, "part: holds nothing (no embedding, no blocks, no head)");
        return NB_EINVAL;
    }
    bool need_tie = spec->head && !spec->embed && head_tied(cfg);
    if (need_tie) {
        if (!tie_with || !tie_with->spec.embed || tie_with->be != be || !config_equal(&tie_with->cfg, cfg)) {
            set_err(err, errlen, "part: tie_embeddings needs the embedding part of the same model "
                                 "on the same backend (tie_with), or tie_embeddings: false");
            return NB_EINVAL;
        }
        if (tie_with->tied_head) {
            set_err(err, errlen, "part: the embedding part is already tied to another head part");
            return NB_EINVAL;
        }
    } else if (tie_with) {
        set_err(err, errlen, "part: tie_with is only for a head part without the embedding "
                             "of a model with tied embeddings");
        return NB_EINVAL;
    }

    /* Refuse a backend that lacks an op here, not with an abort mid-step. */
    static const nb_op_t needed[] = {
        NB_OP_MATMUL, NB_OP_ADD, NB_OP_BIAS_ADD, NB_OP_BIAS_GRAD, NB_OP_EMBED_FWD, NB_OP_EMBED_BWD,
        NB_OP_LAYERNORM_FWD, NB_OP_LAYERNORM_BWD, NB_OP_GELU_FWD, NB_OP_GELU_BWD,
        NB_OP_ATTENTION_FWD, NB_OP_ATTENTION_BWD, NB_OP_XENT_FWD_BWD,
    };
    for (size_t i = 0; i < NB_ARRAY_LEN(needed); i++)
        if (!nb_be_supports(be, needed[i])) {
            set_err(err, errlen, "backend %s does not support %s, which the model needs",
                    be->iface->name, nb_op_name(needed[i]));
            return NB_EINVAL;
        }
    if (cfg->cross_attn)
        for (nb_op_t op = NB_OP_XATTN_FWD; op <= NB_OP_XATTN_BWD; op++)
            if (!nb_be_supports(be, op)) {
                set_err(err, errlen, "backend %s does not support %s, which the model needs (cross_attn)",
                        be->iface->name, nb_op_name(op));
                return NB_EINVAL;
            }
    int hs = cfg->d_model / cfg->n_head;
    if (be->iface->max_head_size > 0 && hs > be->iface->max_head_size) {
        set_err(err, errlen, "backend %s: head size %d (d_model %d / n_head %d) is above the %d its attention "
                "kernels take", be->iface->name, hs, cfg->d_model, cfg->n_head, be->iface->max_head_size);
        return NB_EINVAL;
    }
    if (cfg->token_shift && spec->embed && !nb_be_supports(be, NB_OP_TOKEN_SHIFT)) {
        set_err(err, errlen, "backend %s does not support %s, which the model needs (token_shift)",
                be->iface->name, nb_op_name(NB_OP_TOKEN_SHIFT));
        return NB_EINVAL;
    }
    if (cfg->gelu == NB_MODEL_GELU_ERF)
        for (nb_op_t op = NB_OP_GELU_ERF_FWD; op <= NB_OP_GELU_ERF_BWD; op++)
            if (!nb_be_supports(be, op)) {
                set_err(err, errlen, "backend %s does not support %s, which the model needs (gelu: erf)",
                        be->iface->name, nb_op_name(op));
                return NB_EINVAL;
            }

    nb_part_t *p = calloc(1, sizeof *p);
    if (!p)
        return NB_ENOMEM;
    p->be = be;
    p->cfg = *cfg;
    p->cfg.ln_eps = nb_model_ln_eps(cfg); /* 0 means the default: store what it means */
    p->spec = *spec;
    p->lr_mode = nb__lowrank_mode(cfg, spec);
    int nblk = spec->last - spec->first;
    int cap = nb__part_layout_cap(spec);
    p->info = calloc((size_t)cap, sizeof *p->info);
    p->init_key = calloc((size_t)cap, sizeof *p->init_key);
    p->init_id = calloc((size_t)cap, sizeof *p->init_id);
    p->blocks = calloc((size_t)(nblk ? nblk : 1), sizeof *p->blocks);
    int rc = NB_ENOMEM;
    if (!p->info || !p->init_key || !p->init_id || !p->blocks)
        goto err;
    if ((rc = nb__part_build_layout(p, cap)) != 0) {
        set_err(err, errlen, "part: parameter count overflows");
        goto err;
    }
    size_t bytes = mul_sat(p->n_params ? p->n_params : 1, sizeof(float));
    rc = NB_ENOMEM;
    p->params = bytes == SIZE_MAX ? NULL : nb_be_alloc(be, bytes);
    p->grads = bytes == SIZE_MAX ? NULL : nb_be_alloc(be, bytes);
    if (!p->params || !p->grads) {
        set_err(err, errlen, "part: cannot allocate %zu parameters", p->n_params);
        goto err;
    }
    p->n_grads = p->n_params;
    p->n_trainable = p->n_info;
    nb__part_resolve(p);
    if (p->spec.head && head_tied(cfg)) {
        /* The head reads wte but accumulates its gradient apart; see
         * nb_part_finish_grads() for why. A frozen wte (tie_with's) needs
         * no such buffer. */
        p->tied_owner = need_tie ? tie_with : p;
        p->tied_numel = (size_t)cfg->vocab * (size_t)cfg->d_model;
        if (p->tied_owner->eg[NB_E_WTE] && !(p->tied_grad = nb_be_alloc(be, p->tied_numel * sizeof(float)))) {
            set_err(err, errlen, "part: cannot allocate the tied embedding gradient");
            goto err;
        }
        p->hw[NB_H_LMW] = p->tied_owner->ew[NB_E_WTE];
        p->hg[NB_H_LMW] = p->tied_grad;
    }
    if ((rc = nb_part_init_params(p, seed)) != 0) {
        set_err(err, errlen, "part: out of host memory for the initial weights");
        goto err;
    }
    nb_part_zero_grad(p);
    if (p->tied_owner)
        p->tied_owner->tied_head = p;
    *out = p;
    return 0;
err:
    nb_part_free(p);
    return rc;
}

void nb_part_free(nb_part_t *p)
{
    if (!p)
        return;
    if (p->tied_owner && p->tied_owner != p && p->tied_owner->tied_head == p)
        p->tied_owner->tied_head = NULL;
    if (p->params)
        nb_be_dealloc(p->be, p->params);
    if (p->grads)
        nb_be_dealloc(p->be, p->grads);
    if (p->scratch)
        nb_be_dealloc(p->be, p->scratch);
    if (p->tied_grad)
        nb_be_dealloc(p->be, p->tied_grad);
    free(p->info);
    free(p->init_key);
    free(p->init_id);
    free(p->blocks);
    free(p);
}

const nb_model_config_t *nb_part_config(const nb_part_t *p) { return &p->cfg; }
const nb_part_spec_t *nb_part_spec(const nb_part_t *p) { return &p->spec; }
nb_backend_t *nb_part_backend(const nb_part_t *p) { return p->be; }
int nb_part_num_tensors(const nb_part_t *p) { return p->n_info; }
size_t nb_part_num_params(const nb_part_t *p) { return p->n_params; }
size_t nb_part_num_grads(const nb_part_t *p) { return p->n_grads; }
int nb_part_num_trainable(const nb_part_t *p) { return p->n_trainable; }

size_t nb_part_grad_bytes(const nb_part_t *p)
{
    return (p->n_grads + (p->tied_grad ? p->tied_numel : 0)) * sizeof(float);
}
float *nb_part_params(nb_part_t *p) { return p->params; }
float *nb_part_grads(nb_part_t *p)
{
    nb_part_finish_grads(p);
    return p->grads;
}

const nb_param_info_t *nb_part_tensor(const nb_part_t *p, int i)
{
    NB_CHECK(i >= 0 && i < p->n_info);
    return &p->info[i];
}

int nb_part_find_tensor(const nb_part_t *p, const char *name)
{
    for (int i = 0; i < p->n_info; i++)
        if (strcmp(p->info[i].name, name) == 0)
            return i;
    return -1;
}

void nb_part_zero_grad(nb_part_t *p)
{
    if (p->n_grads)
        nb_be_memset0(p->be, p->grads, p->n_grads * sizeof(float));
    if (p->tied_grad) {
        nb_be_memset0(p->be, p->tied_grad, p->tied_numel * sizeof(float));
        p->tied_pending = false;
    }
}

/* Adds a tied head's pending share of wte's gradient into its owner's. */
static void fold_tied(nb_part_t *head)
{
    if (!head->tied_pending || !head->tied_grad)
        return;
    /* One addition of two complete sums: a + b == b + a, so the result is
     * the same whatever order the micro-batches' backwards ran in. */
    nb_add(head->be, head->tied_owner->eg[NB_E_WTE], head->tied_grad, 1.0f, head->tied_numel);
    nb_be_memset0(head->be, head->tied_grad, head->tied_numel * sizeof(float));
    head->tied_pending = false;
}

void nb_part_finish_grads(nb_part_t *p)
{
    if (p->tied_grad)
        fold_tied(p);
    if (p->tied_head)
        fold_tied(p->tied_head);
}

/* ---- activations ------------------------------------------------------- */

/* Carves consecutive 64-byte aligned regions; with base NULL only counts. */
typedef struct {
    char *base;
    size_t total;
    bool overflow;
} carver_t;

static void *carve(carver_t *cv, size_t bytes)
{
    size_t rounded;
    if (bytes == SIZE_MAX || nb_add_size(bytes, 63, &rounded)) {
        cv->overflow = true;
        return NULL;
    }
    rounded &= ~(size_t)63;
    size_t off = cv->total;
    if (nb_add_size(cv->total, rounded, &cv->total))
        cv->overflow = true;
    return cv->base ? cv->base + off : NULL;
}

static void carve_acts(nb_part_acts_t *a, carver_t *cv)
{
    const nb_part_t *p = a->p;
    const nb_model_config_t *c = &p->cfg;
    size_t BT = mul_sat((size_t)a->B, (size_t)a->T);
    size_t BTC = mul_sat(BT, (size_t)c->d_model);
    size_t fl = sizeof(float);
    if (p->spec.embed)
        a->tokens = carve(cv, mul_sat(BT, sizeof(int32_t)));
    a->mask = carve(cv, BT);
    if (p->spec.head)
        a->targets = carve(cv, mul_sat(BT, sizeof(int32_t)));
    size_t BSC = mul_sat(mul_sat((size_t)a->B, (size_t)a->S), (size_t)c->d_model);
    if (c->cross_attn && p->spec.last > p->spec.first) { /* blocks read the encoder */
        a->enc = carve(cv, mul_sat(BSC, fl));
        a->denc = carve(cv, mul_sat(BSC, fl));
        a->enc_mask = carve(cv, mul_sat((size_t)a->B, (size_t)a->S));
    }
    if (!p->spec.embed) {
        a->input = carve(cv, mul_sat(BTC, fl));
        a->dinput = carve(cv, mul_sat(BTC, fl));
    } else {
        a->emb_out = carve(cv, mul_sat(BTC, fl));
        if (c->token_shift)
            a->emb_sum = carve(cv, mul_sat(BTC, fl));
        if (c->norm == NB_MODEL_NORM_POST) {
            a->emb_raw = carve(cv, mul_sat(BTC, fl));
            a->emb_mean = carve(cv, mul_sat(BT, fl));
            a->emb_rstd = carve(cv, mul_sat(BT, fl));
        }
    }
    for (int i = 0; i < p->spec.last - p->spec.first; i++) {
        nb_block_acts_t *b = &a->blocks[i];
        b->ln1 = carve(cv, mul_sat(BTC, fl));
        b->ln1_mean = carve(cv, mul_sat(BT, fl));
        b->ln1_rstd = carve(cv, mul_sat(BT, fl));
        b->qkv = carve(cv, mul_sat(mul_sat(BTC, 3), fl));
        b->att = carve(cv, mul_sat(nb_attention_state_floats(p->be, a->B, c->n_head, a->T, a->T), fl));
        b->atty = carve(cv, mul_sat(BTC, fl));
        b->res1 = carve(cv, mul_sat(BTC, fl));
        b->ln2 = carve(cv, mul_sat(BTC, fl));
        b->ln2_mean = carve(cv, mul_sat(BT, fl));
        b->ln2_rstd = carve(cv, mul_sat(BT, fl));
        b->fch = carve(cv, mul_sat(mul_sat(BT, (size_t)c->d_ff), fl));
        b->fchg = carve(cv, mul_sat(mul_sat(BT, (size_t)c->d_ff), fl));
        b->res2 = carve(cv, mul_sat(BTC, fl));
        if (c->cross_attn) {
            b->xln = carve(cv, mul_sat(BTC, fl));
            b->xln_mean = carve(cv, mul_sat(BT, fl));
            b->xln_rstd = carve(cv, mul_sat(BT, fl));
            b->xq = carve(cv, mul_sat(BTC, fl));
            b->xkv = carve(cv, mul_sat(mul_sat(BSC, 2), fl));
            b->xatt = carve(cv, mul_sat(nb_attention_state_floats(p->be, a->B, c->n_head, a->T, a->S), fl));
            b->xatty = carve(cv, mul_sat(BTC, fl));
            b->resx = carve(cv, mul_sat(BTC, fl));
        }
        for (int k = 0; k < NB_AD_COUNT; k++)
            if (nb_model_has_adapter(c, p->spec.first + i, 1u << k)) {
                b->adz[k] = carve(cv, mul_sat(BTC, fl));
                b->adh[k] = carve(cv, mul_sat(mul_sat(BT, (size_t)c->adapter_size), fl));
                b->adg[k] = carve(cv, mul_sat(mul_sat(BT, (size_t)c->adapter_size), fl));
            }
    }
    if (p->lr_mode != NB_LR_NONE) { /* low-rank split: model_lowrank.c */
        size_t BTR = mul_sat(BT, (size_t)c->lowrank_rank);
        a->lr_z = carve(cv, mul_sat(BTR, fl));
        a->lr_s = carve(cv, mul_sat(BTR, fl));
        if (p->lr_mode == NB_LR_UPPER) {
            a->lr_y = carve(cv, mul_sat(BTC, fl));
            a->lr_ln = carve(cv, mul_sat(BTC, fl));
            a->lr_mean = carve(cv, mul_sat(BT, fl));
            a->lr_rstd = carve(cv, mul_sat(BT, fl));
        }
    }
    if (p->spec.head) {
        if (head_has_lnf(c)) {
            a->lnf = carve(cv, mul_sat(BTC, fl));
            a->lnf_mean = carve(cv, mul_sat(BT, fl));
            a->lnf_rstd = carve(cv, mul_sat(BT, fl));
        }
        size_t rows = c->head == NB_MODEL_HEAD_SEQCLS ? (size_t)a->B : BT;
        size_t cols = head_is_vocab(c) ? (size_t)c->vocab : (size_t)c->n_classes;
        if (c->head == NB_MODEL_HEAD_SEQCLS)
            a->cls_in = carve(cv, mul_sat(mul_sat(rows, (size_t)c->d_model), fl));
        a->logits = carve(cv, mul_sat(mul_sat(rows, cols), fl));
        a->dlogits = carve(cv, mul_sat(mul_sat(rows, cols), fl));
        a->losses = carve(cv, mul_sat(rows, fl));
        a->out_rows = (int)rows;
        a->out_cols = (int)cols;
    }
}

/* Grows the part's backward scratch to hold bt rows (and bs encoder rows). */
static int ensure_scratch(nb_part_t *p, size_t bt, size_t bs)
{
    if (p->scratch && p->scratch_bt >= bt && p->scratch_bs >= bs)
        return 0;
    if (p->scratch_bt > bt)
        bt = p->scratch_bt;
    if (p->scratch_bs > bs)
        bs = p->scratch_bs;
    size_t C = (size_t)p->cfg.d_model, F = (size_t)p->cfg.d_ff, fl = sizeof(float);
    size_t A = (size_t)p->cfg.adapter_size;
    carver_t cv = { 0 };
    for (int pass = 0; pass < 2; pass++) {
        p->d_ping = carve(&cv, mul_sat(mul_sat(bt, C), fl));
        p->d_pong = carve(&cv, mul_sat(mul_sat(bt, C), fl));
        p->d_tmp = carve(&cv, mul_sat(mul_sat(bt, C), fl));
        p->d_tmp2 = carve(&cv, mul_sat(mul_sat(bt, C), fl));
        p->d_qkv = carve(&cv, mul_sat(mul_sat(bt, 3 * C), fl));
        p->d_fch = carve(&cv, mul_sat(mul_sat(bt, F), fl));
        p->d_fchg = carve(&cv, mul_sat(mul_sat(bt, F), fl));
        if (A) {
            p->d_ada = carve(&cv, mul_sat(mul_sat(bt, A), fl));
            p->d_adb = carve(&cv, mul_sat(mul_sat(bt, A), fl));
            p->d_adz = carve(&cv, mul_sat(mul_sat(bt, C), fl));
        }
        if (p->cfg.cross_attn) {
            p->d_xq = carve(&cv, mul_sat(mul_sat(bt, C), fl));
            p->d_xkv = carve(&cv, mul_sat(mul_sat(bs, 2 * C), fl));
        }
        if (pass == 0) {
            if (cv.overflow)
                return NB_ENOMEM;
            void *mem = nb_be_alloc(p->be, cv.total);
            if (!mem)
                return NB_ENOMEM;
            if (p->scratch)
                nb_be_dealloc(p->be, p->scratch);
            p->scratch = mem;
            p->scratch_bt = bt;
            p->scratch_bs = bs;
            cv.base = mem;
            cv.total = 0;
        }
    }
    return 0;
}

int nb_part_acts_new(nb_part_t *p, int B, int T, nb_part_acts_t **out)
{
    return nb_part_acts_new_cross(p, B, T, T, out);
}

int nb_part_acts_new_cross(nb_part_t *p, int B, int T, int S, nb_part_acts_t **out)
{
    *out = NULL;
    if (B <= 0 || T <= 0 || T > p->cfg.max_seq || B > (1 << 24) || S <= 0 || S > (1 << 20))
        return NB_EINVAL;
    /* The backend ops index with int: every activation tensor must have
     * fewer than 2^31 elements. */
    const nb_model_config_t *c = &p->cfg;
    size_t widest = (size_t)c->d_model * 3;
    size_t other[] = { (size_t)c->d_ff, (size_t)c->vocab, (size_t)c->n_head * (size_t)T,
                       (size_t)c->n_head * (size_t)S };
    for (size_t i = 0; i < NB_ARRAY_LEN(other); i++)
        if (other[i] > widest)
            widest = other[i];
    if ((size_t)B * (size_t)T > (size_t)INT32_MAX / widest)
        return NB_EINVAL;
    /* encoder rows: xkv (B,S,2C) and xatt (B,NH,T,S) */
    size_t enc_w = (size_t)c->d_model * 2 > (size_t)c->n_head * (size_t)T ? (size_t)c->d_model * 2
                                                                           : (size_t)c->n_head * (size_t)T;
    if (c->cross_attn && (size_t)B * (size_t)S > (size_t)INT32_MAX / enc_w)
        return NB_EINVAL;
    nb_part_acts_t *a = calloc(1, sizeof *a);
    if (!a)
        return NB_ENOMEM;
    a->p = p;
    a->B = B;
    a->T = T;
    a->S = S;
    int nblk = p->spec.last - p->spec.first;
    a->blocks = calloc((size_t)(nblk ? nblk : 1), sizeof *a->blocks);
    size_t BT = (size_t)B * (size_t)T;
    a->host_ids = malloc(BT * sizeof(int32_t));
    a->host_losses = malloc(BT * sizeof(float));
    int rc = NB_ENOMEM;
    if (!a->blocks || !a->host_ids || !a->host_losses)
        goto err;
    carver_t cv = { 0 };
    carve_acts(a, &cv);
    if (cv.overflow)
        goto err;
    a->mem = nb_be_alloc(p->be, cv.total);
    if (!a->mem)
        goto err;
    a->bytes = cv.total;
    cv = (carver_t){ .base = a->mem };
    carve_acts(a, &cv);
    if ((rc = ensure_scratch(p, BT, p->cfg.cross_attn ? (size_t)B * (size_t)S : 0)) != 0)
        goto err;
    *out = a;
    return 0;
err:
    nb_part_acts_free(a);
    return rc;
}

void nb_part_acts_free(nb_part_acts_t *a)
{
    if (!a)
        return;
    if (a->mem)
        nb_be_dealloc(a->p->be, a->mem);
    free(a->blocks);
    free(a->host_ids);
    free(a->host_losses);
    free(a);
}

size_t nb_part_acts_bytes(const nb_part_acts_t *a) { return a->bytes; }

size_t nb_part_acts_size(const nb_part_t *p, int B, int T)
{
    if (B <= 0 || T <= 0 || T > p->cfg.max_seq)
        return 0;
    nb_part_acts_t a = { .p = (nb_part_t *)p, .B = B, .T = T, .S = T };
    int nblk = p->spec.last - p->spec.first;
    a.blocks = calloc((size_t)(nblk ? nblk : 1), sizeof *a.blocks);
    if (!a.blocks)
        return 0;
    carver_t cv = { 0 };
    carve_acts(&a, &cv);
    free(a.blocks);
    return cv.overflow ? 0 : cv.total;
}
