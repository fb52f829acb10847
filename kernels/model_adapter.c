/*
 * model_adapter.c - bottleneck adapters (Houlsby et al.; ABNet) inside the
 * blocks of a transformer part: after a chosen sub-layer (self-attention,
 * cross-attention or MLP) of chosen blocks, the sub-layer's output z (its
 * output projection, before the residual add) becomes
 *     z + up(gelu(down(z))),  down (A,C) + bias (A), up (C,A) + bias (C),
 * A = adapter_size, GELU in the model's form. up.w and up.b start at zero
 * (model_part.c), so a pretrained model with fresh adapters computes what
 * it computed without them. Tensor names: h<l>.ad_<attn|xattn|ffn>.
 * <down|up>.<w|b> (docs/model.md). The choice is in nb_model_config_t
 * (adapter_*); training only the adapters is job.freeze: ["*"] with
 * job.trainable: ["*.ad_*"].
 *
 * Shapes: N = B*T rows, C d_model, A adapter size.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/model_impl.h"

static const char *const ad_names[NB_AD_COUNT] = { "attn", "xattn", "ffn" };
static const unsigned ad_bits[NB_AD_COUNT] = { NB_ADAPTER_ATTN, NB_ADAPTER_XATTN, NB_ADAPTER_FFN };

void nb__adapter_layout(const nb_model_config_t *c, int l, nb__layout_t *L)
{
    int64_t C = c->d_model, A = c->adapter_size;
    char name[32];
    for (int k = 0; k < NB_AD_COUNT; k++) {
        if (!nb_model_has_adapter(c, l, ad_bits[k]))
            continue;
        uint32_t id = (uint32_t)(NB_B_AD + 4 * k);
        snprintf(name, sizeof name, "h%d.ad_%s.down.w", l, ad_names[k]);
        nb__layout_add(L, name, 2, A, C, (uint32_t)l, id + NB_AD_DW);
        snprintf(name, sizeof name, "h%d.ad_%s.down.b", l, ad_names[k]);
        nb__layout_add(L, name, 1, A, 0, (uint32_t)l, id + NB_AD_DB);
        snprintf(name, sizeof name, "h%d.ad_%s.up.w", l, ad_names[k]);
        nb__layout_add(L, name, 2, C, A, (uint32_t)l, id + NB_AD_UW);
        snprintf(name, sizeof name, "h%d.ad_%s.up.b", l, ad_names[k]);
        nb__layout_add(L, name, 1, C, 0, (uint32_t)l, id + NB_AD_UB);
    }
}

static bool has(const nb_part_t *p, int i, int k)
{
    return nb_model_has_adapter(&p->cfg, p->spec.first + i, ad_bits[k]);
}

void nb__sublayer_fwd(nb_part_t *p, nb_part_acts_t *a, int i, int k, float *dst, const float *resid,
                      const float *x, const float *w, const float *b, int IC)
{
    nb_backend_t *be = p->be;
    int N = a->B * a->T, C = p->cfg.d_model, A = p->cfg.adapter_size;
    size_t nC = (size_t)N * (size_t)C;
    if (dst != resid)
        nb_be_copy(be, dst, resid, nC * sizeof(float));
    if (!has(p, i, k)) { /* the residual sum straight from the product */
        nb__linear_fwd(be, dst, x, w, b, N, IC, C, 1.0f);
        return;
    }
    nb_block_acts_t *s = &a->blocks[i];
    float *const *aw = p->blocks[i].w + NB_B_AD + 4 * k;
    nb__linear_fwd(be, s->adz[k], x, w, b, N, IC, C, 0.0f);
    nb__linear_fwd(be, s->adh[k], s->adz[k], aw[NB_AD_DW], aw[NB_AD_DB], N, C, A, 0.0f);
    nb__gelu_fwd(p, s->adg[k], s->adh[k], (size_t)N * (size_t)A);
    nb_add(be, dst, s->adz[k], 1.0f, nC);
    nb__linear_fwd(be, dst, s->adg[k], aw[NB_AD_UW], aw[NB_AD_UB], N, A, C, 1.0f);
}

const float *nb__adapter_bwd(nb_part_t *p, nb_part_acts_t *a, int i, int k, const float *dr)
{
    if (!has(p, i, k))
        return dr;
    nb_backend_t *be = p->be;
    int N = a->B * a->T, C = p->cfg.d_model, A = p->cfg.adapter_size;
    const nb_block_acts_t *s = &a->blocks[i];
    float *const *aw = p->blocks[i].w + NB_B_AD + 4 * k;
    float *const *ag = p->blocks[i].g + NB_B_AD + 4 * k;
    /* dg = dr @ up.w; d up += dr^T g */
    nb__linear_bwd(be, p->d_ada, 0.0f, ag[NB_AD_UW], ag[NB_AD_UB], dr, s->adg[k], aw[NB_AD_UW], N, A, C);
    nb_be_memset0(be, p->d_adb, (size_t)N * (size_t)A * sizeof(float));
    nb__gelu_bwd(p, p->d_adb, s->adh[k], p->d_ada, (size_t)N * (size_t)A);
    /* dz = dr (the adapter's own residual) + dh @ down.w */
    nb_be_copy(be, p->d_adz, dr, (size_t)N * (size_t)C * sizeof(float));
    nb__linear_bwd(be, p->d_adz, 1.0f, ag[NB_AD_DW], ag[NB_AD_DB], p->d_adb, s->adz[k], aw[NB_AD_DW], N, C, A);
    return p->d_adz;
}

int nb_model_set_adapters(nb_model_config_t *c, int size, const char *const *after, int n_after,
                          const char *blocks, char *why, size_t whylen)
{
    c->adapter_size = 0;
    c->adapter_after = 0;
    c->adapter_first = c->adapter_last = 0;
    if (size == 0 && n_after == 0)
        return 0; /* no adapters */
    if (size <= 0 || size > c->d_model) {
        snprintf(why, whylen, "job.adapters.size %d: an adapter's bottleneck must be 1..d_model (%d) wide", size,
                 c->d_model);
        return NB_EINVAL;
    }
    if (n_after <= 0) {
        snprintf(why, whylen, "job.adapters.after is empty: name the sub-layers the adapters follow (attn, xattn, ffn)");
        return NB_EINVAL;
    }
    unsigned bits = 0;
    for (int i = 0; i < n_after; i++) {
        int k = 0;
        while (k < NB_AD_COUNT && strcmp(after[i], ad_names[k]) != 0)
            k++;
        if (k == NB_AD_COUNT) {
            snprintf(why, whylen, "job.adapters.after[%d] \"%.32s\": no such sub-layer (a block has attn, xattn in "
                     "a decoder, and ffn)", i, after[i]);
            return NB_EINVAL;
        }
        if (ad_bits[k] == NB_ADAPTER_XATTN && !c->cross_attn) {
            snprintf(why, whylen, "job.adapters.after[%d] \"xattn\": the model's blocks have no cross-attention "
                     "sub-layer (only a decoder's do)", i);
            return NB_EINVAL;
        }
        bits |= ad_bits[k];
    }
    int first = 0, last = c->n_layer;
    if (blocks && *blocks && strcmp(blocks, "all") != 0) {
        char *end;
        long a = strtol(blocks, &end, 10), b = a;
        if (end != blocks && *end == '-')
            b = strtol(end + 1, &end, 10);
        if (end == blocks || *end || a < 0 || b < a) {
            snprintf(why, whylen, "job.adapters.blocks \"%.32s\": write all, a block index I or a range I-J", blocks);
            return NB_EINVAL;
        }
        if (b >= c->n_layer) {
            snprintf(why, whylen, "job.adapters.blocks \"%.32s\": no block %ld (the model has blocks 0..%d)", blocks,
                     b, c->n_layer - 1);
            return NB_EINVAL;
        }
        first = (int)a;
        last = (int)b + 1;
    }
    c->adapter_size = size;
    c->adapter_after = bits;
    c->adapter_first = first;
    c->adapter_last = last;
    const char *bad = nb_model_config_validate(c);
    if (bad) {
        c->adapter_size = 0;
        snprintf(why, whylen, "job.adapters: %s", bad);
        return NB_EINVAL;
    }
    return 0;
}
