/*
 * ckpt_snap.c - snapshots: a host copy of a part's parameters and AdamW
 * moments (one allocation, copied with the backend's device-to-host copy),
 * plus extra named tensors; see checkpoint.h.
 */
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include "daemon/train/ckpt_internal.h"
#include "kernels/common.h"

static int grow(nb_ckpt_snap_t *s, int more)
{
    if (s->n + more <= s->cap)
        return 0;
    int cap = s->cap ? s->cap : 16;
    while (cap < s->n + more)
        cap *= 2;
    nb__ckpt_tensor_t *t = realloc(s->t, (size_t)cap * sizeof *t);
    if (!t)
        return NB_ENOMEM;
    s->t = t;
    s->cap = cap;
    return 0;
}

nb_ckpt_snap_t *nb_ckpt_snap_new(void)
{
    return calloc(1, sizeof(nb_ckpt_snap_t));
}

void nb_ckpt_snap_free(nb_ckpt_snap_t *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->n; i++)
        free(s->t[i].own);
    free(s->t);
    free(s->state);
    free(s);
}

/* Points the part's entries of s at its state buffer: every parameter,
 * then (copies 3) the moments of the trainable tensors. */
static void describe_part(nb_ckpt_snap_t *s, nb_part_t *p)
{
    static const char *const prefix[3] = { "", "adamw.m.", "adamw.v." };
    int nt = nb_part_num_tensors(p);
    s->n = 0;
    for (int c = 0; c < s->copies; c++)
        for (int i = 0; i < nt; i++) {
            const nb_param_info_t *pi = nb_part_tensor(p, i);
            if (c && !pi->trainable)
                continue; /* frozen: no optimizer state */
            nb__ckpt_tensor_t *t = &s->t[s->n++];
            memset(t, 0, sizeof *t);
            snprintf(t->name, sizeof t->name, "%s%s", prefix[c], pi->name);
            t->ndim = pi->ndim;
            t->shape[0] = pi->shape[0];
            t->shape[1] = pi->shape[1];
            t->numel = pi->numel;
            t->data = c == 0 ? s->state + pi->offset
                             : s->state + s->n_params + (size_t)(c - 1) * s->n_grads + pi->grad_offset;
        }
    s->n_part = s->n;
}

/* Copies p's parameters and o's moments into s->state. */
static void copy_state(nb_ckpt_snap_t *s, nb_part_t *p, nb_optim_t *o)
{
    size_t n = s->n_params, g = s->n_grads;
    nb_backend_t *be = nb_part_backend(p);
    /* host backends copy with memcpy; device backends with their own copy */
    nb_be_to_host(be, s->state, nb_part_params(p), n * sizeof(float));
    if (o) {
        nb_be_to_host(be, s->state + n, nb_optim_m(o), g * sizeof(float));
        nb_be_to_host(be, s->state + n + g, nb_optim_v(o), g * sizeof(float));
    }
    nb_be_sync(be);
}

int nb_ckpt_snapshot(nb_part_t *p, nb_optim_t *o, nb_ckpt_snap_t **out, char *err, size_t errlen)
{
    *out = NULL;
    size_t n = nb_part_num_params(p), g = nb_part_num_grads(p);
    if (o && nb_optim_numel(o) != g) {
        snprintf(err, errlen, "the optimizer covers %zu floats, the part's trainable tensors %zu", nb_optim_numel(o),
                 g);
        return NB_EINVAL;
    }
    int nt = nb_part_num_tensors(p), copies = o ? 3 : 1;
    size_t floats = n + (o ? 2 * g : 0);
    nb_ckpt_snap_t *s = nb_ckpt_snap_new();
    if (!s || grow(s, nt * copies) || !(s->state = malloc((floats ? floats : 1) * sizeof(float)))) {
        nb_ckpt_snap_free(s);
        snprintf(err, errlen, "out of memory for a snapshot of %zu parameters", n);
        return NB_ENOMEM;
    }
    s->n_params = n;
    s->n_grads = o ? g : 0;
    s->copies = copies;
    copy_state(s, p, o);
    describe_part(s, p);
    *out = s;
    return 0;
}

int nb_ckpt_snap_add(nb_ckpt_snap_t *s, const char *name, int ndim, const int64_t *shape, const float *data)
{
    if (!name || !*name || strlen(name) >= NB__CKPT_NAME_MAX || !strcmp(name, "__metadata__") || ndim < 0 ||
        ndim > 8)
        return NB_EINVAL;
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || __builtin_mul_overflow(numel, (size_t)shape[d], &numel))
            return NB_EINVAL;
    }
    if (numel > SIZE_MAX / sizeof(float))
        return NB_EINVAL;
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->t[i].name, name))
            return NB_EINVAL;
    if (grow(s, 1))
        return NB_ENOMEM;
    float *own = malloc((numel ? numel : 1) * sizeof(float));
    if (!own)
        return NB_ENOMEM;
    if (numel)
        memcpy(own, data, numel * sizeof(float));
    nb__ckpt_tensor_t *t = &s->t[s->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++)
        t->shape[d] = shape[d];
    t->numel = numel;
    t->data = t->own = own;
    return 0;
}

size_t nb_ckpt_snap_bytes(const nb_ckpt_snap_t *s)
{
    size_t b = 0;
    for (int i = 0; i < s->n; i++)
        b += s->t[i].numel * sizeof(float);
    return b;
}

int nb_ckpt_snapshot_refresh(nb_ckpt_snap_t *s, nb_part_t *p, nb_optim_t *o, char *err, size_t errlen)
{
    size_t n = nb_part_num_params(p), g = nb_part_num_grads(p);
    if (!s->copies || s->n_params != n || s->copies != (o ? 3 : 1) ||
        (o && (s->n_grads != g || nb_optim_numel(o) != g))) {
        snprintf(err, errlen, "the snapshot was not made from this part%s", o ? " and optimizer" : "");
        return NB_EINVAL;
    }
    /* the same tensors, each trainable or frozen as when it was taken */
    int k = 0, nt = nb_part_num_tensors(p);
    for (int c = 0; c < s->copies; c++)
        for (int i = 0; i < nt; i++) {
            const nb_param_info_t *pi = nb_part_tensor(p, i);
            if (c && !pi->trainable)
                continue;
            char want[NB__CKPT_NAME_MAX];
            snprintf(want, sizeof want, "%s%s", c == 0 ? "" : c == 1 ? "adamw.m." : "adamw.v.", pi->name);
            if (k >= s->n_part || strcmp(s->t[k].name, want) != 0) {
                snprintf(err, errlen, "the snapshot's tensor %d is '%s', the part's '%s'", k,
                         k < s->n_part ? s->t[k].name : "(none)", want);
                return NB_EINVAL;
            }
            k++;
        }
    if (k != s->n_part) {
        snprintf(err, errlen, "the snapshot holds %d tensors of its part, the part %d", s->n_part, k);
        return NB_EINVAL;
    }
    /* the extras belong to the step the snapshot was taken at */
    for (int i = s->n_part; i < s->n; i++)
        free(s->t[i].own);
    s->n = s->n_part;
    copy_state(s, p, o);
    return 0;
}
