/*
 * model_freeze.c - frozen tensors of a model part (model.h, "frozen
 * tensors"): the gradient layout of the trainable tensors only, the
 * patterns that choose what freezes (job.freeze / job.trainable), their
 * check against the whole model, and the optimizer over the trainable
 * tensors.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/model_impl.h"

/* ---- the gradient layout ------------------------------------------------ */

int nb__part_tied_sync(nb_part_t *owner)
{
    nb_part_t *head = owner->tied_head;
    if (!head)
        return 0;
    bool want = owner->eg[NB_E_WTE] != NULL;
    if (want && !head->tied_grad) {
        head->tied_grad = nb_be_alloc(head->be, head->tied_numel * sizeof(float));
        if (!head->tied_grad)
            return NB_ENOMEM;
        nb_be_memset0(head->be, head->tied_grad, head->tied_numel * sizeof(float));
    } else if (!want && head->tied_grad) {
        nb_be_dealloc(head->be, head->tied_grad);
        head->tied_grad = NULL;
    }
    head->tied_pending = false;
    head->hg[NB_H_LMW] = head->tied_grad;
    return 0;
}

/* Blocks at the bottom of a part with the embedding whose backward can be
 * skipped: the embedding and every block below them are frozen. */
static int count_bwd_stop(const nb_part_t *p)
{
    if (!p->spec.embed || p->cfg.cross_attn)
        return 0; /* the previous stage (or the encoder) needs the gradient of the input */
    int nblk = p->spec.last - p->spec.first;
    int k = 0;
    for (int i = 0; i < p->n_info; i++) {
        if (!p->info[i].trainable)
            continue;
        uint32_t key = p->init_key[i];
        if (key == NB_INIT_KEY_EMBED)
            return 0;
        if (key == NB_INIT_KEY_HEAD)
            return nblk; /* blocks all frozen: only the head trains */
        if (key == NB_INIT_KEY_LOWRANK) /* the split block's low-rank tensors */
            return p->cfg.lowrank_block - p->spec.first;
        /* the first trainable tensor in buffer order is in the lowest
         * block that needs its backward */
        k = (int)key - p->spec.first;
        return k;
    }
    return nblk; /* nothing trains here */
}

int nb_part_set_frozen(nb_part_t *p, const bool *frozen)
{
    size_t n = 0;
    int trainable = 0, wte = -1;
    for (int i = 0; i < p->n_info; i++) {
        if (p->init_key[i] == NB_INIT_KEY_EMBED && p->init_id[i] == NB_E_WTE)
            wte = i;
        if (!frozen || !frozen[i]) {
            n += p->info[i].numel; /* no overflow: n <= n_params */
            trainable++;
        }
    }
    float *g = nb_be_alloc(p->be, (n ? n : 1) * sizeof(float));
    if (!g)
        return NB_ENOMEM;
    /* a tied head that will need its own buffer of wte's gradient again
     * gets it before anything changes: on failure p stays as it was */
    nb_part_t *head = p->tied_head;
    if (wte >= 0 && head && !head->tied_grad && !(frozen && frozen[wte])) {
        head->tied_grad = nb_be_alloc(head->be, head->tied_numel * sizeof(float));
        if (!head->tied_grad) {
            nb_be_dealloc(p->be, g);
            return NB_ENOMEM;
        }
        nb_be_memset0(head->be, head->tied_grad, head->tied_numel * sizeof(float));
    }
    size_t off = 0;
    for (int i = 0; i < p->n_info; i++) {
        nb_param_info_t *t = &p->info[i];
        t->trainable = !frozen || !frozen[i];
        t->grad_offset = t->trainable ? off : 0;
        if (t->trainable)
            off += t->numel;
    }
    nb_be_dealloc(p->be, p->grads);
    p->grads = g;
    p->n_grads = n;
    p->n_trainable = trainable;
    nb__part_resolve(p); /* a tied head's lm.w slot is not a tensor of its own: kept */
    p->bwd_stop = count_bwd_stop(p);
    nb_part_zero_grad(p);
    if (wte >= 0)
        NB_CHECK(nb__part_tied_sync(p) == 0); /* allocated above when needed */
    return 0;
}

/* ---- patterns ----------------------------------------------------------- */

bool nb_freeze_glob(const char *pat, const char *name)
{
    /* iterative glob with one backtrack point: linear in practice, never
     * recursive (patterns come from the network too) */
    const char *star = NULL, *resume = NULL;
    while (*name) {
        if (*pat == '*') {
            star = pat++;
            resume = name;
        } else if (*pat && (*pat == '?' || *pat == *name)) {
            pat++;
            name++;
        } else if (star) {
            pat = star + 1;
            name = ++resume;
        } else {
            return false;
        }
    }
    while (*pat == '*')
        pat++;
    return *pat == 0;
}

static bool any_match(char (*pats)[NB_FREEZE_PATTERN_MAX], int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (nb_freeze_glob(pats[i], name))
            return true;
    return false;
}

bool nb_freeze_matches(const nb_freeze_spec_t *f, const char *name)
{
    return any_match((char (*)[NB_FREEZE_PATTERN_MAX])f->freeze, f->n_freeze, name) &&
           !any_match((char (*)[NB_FREEZE_PATTERN_MAX])f->trainable, f->n_trainable, name);
}

/* NULL when pat is a pattern, else why not. */
static const char *pattern_bad(const char *pat)
{
    size_t len = strnlen(pat, NB_FREEZE_PATTERN_MAX);
    if (len == 0)
        return "is empty";
    if (len >= NB_FREEZE_PATTERN_MAX)
        return "is longer than 63 bytes";
    for (const char *s = pat; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-' || c == '*' || c == '?'))
            return "may contain only letters, digits, '.', '_', '-' and the wildcards '*' and '?'";
    }
    return NULL;
}

int nb_freeze_check(const nb_model_config_t *cfg, const nb_freeze_spec_t *f, char *why, size_t whylen)
{
    if (f->n_freeze < 0 || f->n_freeze > NB_FREEZE_MAX || f->n_trainable < 0 || f->n_trainable > NB_FREEZE_MAX) {
        snprintf(why, whylen, "job.freeze and job.trainable hold at most %d patterns each", NB_FREEZE_MAX);
        return NB_EINVAL;
    }
    if (f->n_trainable && !f->n_freeze) {
        snprintf(why, whylen, "job.trainable lists exceptions to job.freeze, which is empty: every tensor trains "
                 "already (to train only some tensors, freeze the rest: freeze: [\"*\"], trainable: [...])");
        return NB_EINVAL;
    }
    for (int k = 0; k < 2; k++) {
        int n = k ? f->n_trainable : f->n_freeze;
        for (int i = 0; i < n; i++) {
            const char *pat = k ? f->trainable[i] : f->freeze[i];
            const char *bad = pattern_bad(pat);
            if (bad) {
                snprintf(why, whylen, "job.%s[%d] \"%.63s\" %s", k ? "trainable" : "freeze", i,
                         pat, bad);
                return NB_EINVAL;
            }
        }
    }
    if (!f->n_freeze)
        return 0;
    nb_part_spec_t full = nb_part_spec_full(cfg);
    int nt = 0;
    nb_param_info_t *info = nb_part_layout(cfg, &full, &nt);
    if (!info) {
        snprintf(why, whylen, "job.freeze: cannot list the model's tensors (a bad model config, or out of memory)");
        return NB_EINVAL;
    }
    int rc = 0;
    for (int k = 0; k < 2 && !rc; k++) {
        int n = k ? f->n_trainable : f->n_freeze;
        for (int i = 0; i < n && !rc; i++) {
            const char *pat = k ? f->trainable[i] : f->freeze[i];
            bool hit = false;
            for (int t = 0; t < nt && !hit; t++)
                hit = nb_freeze_glob(pat, info[t].name);
            if (!hit) {
                snprintf(why, whylen, "job.%s[%d] \"%s\" matches no tensor of the model (%d tensors: %s, %s, "
                         "..., %s; names as in docs/model.md, blocks h0..h%d)", k ? "trainable" : "freeze", i,
                         pat, nt, info[0].name, nt > 1 ? info[1].name : "", info[nt - 1].name,
                         cfg->n_layer - 1);
                rc = NB_EINVAL;
            }
        }
    }
    int frozen = 0;
    for (int t = 0; t < nt && !rc; t++)
        frozen += nb_freeze_matches(f, info[t].name);
    if (!rc && frozen == nt) {
        snprintf(why, whylen, "job.freeze freezes every one of the model's %d tensors: nothing would train "
                 "(list the tensors to keep training in job.trainable)", nt);
        rc = NB_EINVAL;
    }
    free(info);
    return rc;
}

int nb_part_freeze(nb_part_t *p, const nb_freeze_spec_t *f)
{
    bool *frozen = calloc((size_t)(p->n_info ? p->n_info : 1), sizeof *frozen);
    if (!frozen)
        return NB_ENOMEM;
    for (int i = 0; i < p->n_info; i++)
        frozen[i] = f && nb_freeze_matches(f, p->info[i].name);
    int rc = nb_part_set_frozen(p, frozen);
    free(frozen);
    return rc;
}

/* ---- layout without a part, and the optimizer --------------------------- */

nb_param_info_t *nb_part_layout(const nb_model_config_t *cfg, const nb_part_spec_t *spec, int *n)
{
    *n = 0;
    if (nb_model_config_validate(cfg) || spec->first < 0 || spec->first > spec->last || spec->last > cfg->n_layer)
        return NULL;
    nb_part_t p = { .cfg = *cfg, .spec = *spec, .lr_mode = nb__lowrank_mode(cfg, spec) };
    int cap = nb__part_layout_cap(spec);
    p.info = calloc((size_t)cap, sizeof *p.info);
    p.init_key = calloc((size_t)cap, sizeof *p.init_key);
    p.init_id = calloc((size_t)cap, sizeof *p.init_id);
    if (!p.info || !p.init_key || !p.init_id || nb__part_build_layout(&p, cap) != 0) {
        free(p.info);
        p.info = NULL;
    }
    free(p.init_key);
    free(p.init_id);
    if (p.info)
        *n = p.n_info;
    return p.info;
}

int nb_part_optim_new(const nb_part_t *p, const nb_optim_config_t *c, nb_optim_t **out)
{
    *out = NULL;
    nb_optim_segment_t *segs = calloc((size_t)(p->n_info ? p->n_info : 1), sizeof *segs);
    if (!segs)
        return NB_ENOMEM;
    int ns = 0;
    for (int i = 0; i < p->n_info; i++) {
        const nb_param_info_t *t = &p->info[i];
        if (t->trainable)
            segs[ns++] = (nb_optim_segment_t){ .offset = t->offset, .numel = t->numel, .decay = t->decay,
                                               .grad_offset = t->grad_offset };
    }
    int rc = nb_optim_new(p->be, c, p->n_grads, segs, ns, out);
    free(segs);
    return rc;
}
