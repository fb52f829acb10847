/*
 * model_layout.c - the one list of a part's tensors: names, shapes, buffer
 * order, offsets and init keys (nb_model_layout, model.h; docs/model.md).
 * The part (model_part.c) builds its parameter table from it, and the
 * weights-file checks (daemon/train) compare a file's header with it, so a
 * model feature adds its tensors here (or in its own file's *_layout
 * helper, called from here) and nowhere else. Allocates nothing.
 */
#include <stdio.h>
#include "kernels/model_impl.h"

void nb__layout_add(nb__layout_t *L, const char *name, int ndim, int64_t d0, int64_t d1, uint32_t key,
                    uint32_t id)
{
    if (L->rc)
        return;
    nb_layout_tensor_t t = { .name = name, .ndim = ndim, .shape = { d0, ndim == 2 ? d1 : 1 },
                             .offset = L->n_params, .init_key = key, .init_id = id };
    size_t end;
    if (nb_mul_size((size_t)t.shape[0], (size_t)t.shape[1], &t.numel) || nb_add_size(L->n_params, t.numel, &end)) {
        L->rc = NB_ERANGE;
        return;
    }
    int rc = L->fn ? L->fn(L->ud, &t) : 0;
    if (rc < 0) {
        L->rc = rc;
        return;
    }
    L->n_params = end;
    L->n++;
}

int nb_model_layout(const nb_model_config_t *c, const nb_part_spec_t *s, nb_layout_fn fn, void *ud)
{
    if (!c || !s || nb_model_config_validate(c) || s->first < 0 || s->first > s->last || s->last > c->n_layer)
        return NB_EINVAL;
    nb__layout_t L = { .fn = fn, .ud = ud };
    int64_t C = c->d_model, F = c->d_ff, V = c->vocab;
    char name[32];
    if (s->embed) {
        nb__layout_add(&L, "wte", 2, V, C, NB_INIT_KEY_EMBED, NB_E_WTE);
        nb__layout_add(&L, "wpe", 2, c->max_seq, C, NB_INIT_KEY_EMBED, NB_E_WPE);
        if (c->norm == NB_MODEL_NORM_POST) {
            nb__layout_add(&L, "emb_ln.w", 1, C, 0, NB_INIT_KEY_EMBED, NB_E_LNW);
            nb__layout_add(&L, "emb_ln.b", 1, C, 0, NB_INIT_KEY_EMBED, NB_E_LNB);
        }
    }
    static const char *const bn[NB_B_XLNW] = {
        "ln1.w", "ln1.b", "qkv.w", "qkv.b", "proj.w", "proj.b",
        "ln2.w", "ln2.b", "fc.w", "fc.b", "fcproj.w", "fcproj.b",
    };
    const int64_t rows[NB_B_XLNW] = { C, C, 3 * C, 3 * C, C, C, C, C, F, F, C, C };
    const int64_t cols[NB_B_XLNW] = { 0, 0, C, 0, C, 0, 0, 0, C, 0, F, 0 };
    if (nb__lowrank_mode(c, s) == NB_LR_UPPER) /* the rest of the split block below */
        nb__lowrank_layout(c, s, c->lowrank_block, &L);
    for (int l = s->first; l < s->last; l++) {
        for (int t = 0; t < NB_B_XLNW; t++) {
            if (nb__lowrank_skips(c, l, t))
                continue;
            snprintf(name, sizeof name, "h%d.%s", l, bn[t]);
            nb__layout_add(&L, name, cols[t] ? 2 : 1, rows[t], cols[t], (uint32_t)l, (uint32_t)t);
        }
        /* a decoder's cross-attention, then adapters (model_xattn.c,
         * model_adapter.c); the split block's low-rank tensors
         * (model_lowrank.c: the model has neither beside a split) */
        nb__xattn_layout(c, l, &L);
        nb__adapter_layout(c, l, &L);
        if (c->lowrank_rank > 0 && l == c->lowrank_block)
            nb__lowrank_layout(c, s, l, &L);
    }
    if (s->head) {
        bool vocab = c->head == NB_MODEL_HEAD_LM || c->head == NB_MODEL_HEAD_MLM;
        if (c->norm == NB_MODEL_NORM_PRE) {
            nb__layout_add(&L, "lnf.w", 1, C, 0, NB_INIT_KEY_HEAD, NB_H_LNFW);
            nb__layout_add(&L, "lnf.b", 1, C, 0, NB_INIT_KEY_HEAD, NB_H_LNFB);
        }
        if (vocab && !c->tie_embeddings) /* tied: the head reads wte */
            nb__layout_add(&L, "lm.w", 2, V, C, NB_INIT_KEY_HEAD, NB_H_LMW);
        if (!vocab) {
            nb__layout_add(&L, "cls.w", 2, c->n_classes, C, NB_INIT_KEY_HEAD, NB_H_CLSW);
            nb__layout_add(&L, "cls.b", 1, c->n_classes, 0, NB_INIT_KEY_HEAD, NB_H_CLSB);
        }
    }
    return L.rc ? L.rc : L.n;
}
