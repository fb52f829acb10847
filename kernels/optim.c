/*
 * optim.c - AdamW over segments of a flat buffer, clipping and the LR
 * schedule (optim.h). The arithmetic per element is the backend's adamw op.
 */
#include <math.h>
#include <string.h>
#include "kernels/optim.h"

struct nb_optim {
    nb_backend_t *be;
    nb_optim_config_t cfg;
    size_t n;
    void *mem; /* m then v */
    float *m, *v;
    nb_optim_segment_t *segs;
    int nsegs;
    int steps;
};

nb_optim_config_t nb_optim_config_default(void)
{
    nb_optim_config_t c = {
        .lr = 3e-4f, .lr_min = 3e-5f, .warmup_steps = 0, .total_steps = 1,
        .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f, .grad_clip = 1.0f,
    };
    return c;
}

const char *nb_optim_config_validate(const nb_optim_config_t *c)
{
    if (!(c->lr > 0.0f) || !isfinite(c->lr))
        return "lr must be a positive number";
    if (!(c->lr_min >= 0.0f) || c->lr_min > c->lr)
        return "lr_min must be in 0..lr";
    if (c->warmup_steps < 0)
        return "warmup_steps must be >= 0";
    if (c->total_steps < 1)
        return "total_steps must be >= 1";
    if (!(c->beta1 >= 0.0f && c->beta1 < 1.0f))
        return "beta1 must be in [0, 1)";
    if (!(c->beta2 >= 0.0f && c->beta2 < 1.0f))
        return "beta2 must be in [0, 1)";
    if (!(c->eps > 0.0f))
        return "eps must be > 0";
    if (!(c->weight_decay >= 0.0f))
        return "weight_decay must be >= 0";
    if (isnan(c->grad_clip))
        return "grad_clip must be a number";
    return NULL;
}

double nb_optim_lr(const nb_optim_config_t *c, int step)
{
    if (step < c->warmup_steps)
        return (double)c->lr * (double)(step + 1) / (double)c->warmup_steps;
    int decay = c->total_steps - c->warmup_steps;
    double progress = decay > 0 ? (double)(step - c->warmup_steps) / (double)decay : 1.0;
    if (progress > 1.0)
        progress = 1.0;
    return (double)c->lr_min + 0.5 * ((double)c->lr - (double)c->lr_min) * (1.0 + cos(M_PI * progress));
}

int nb_optim_new(nb_backend_t *be, const nb_optim_config_t *c, size_t n,
                 const nb_optim_segment_t *segs, int nsegs, nb_optim_t **out)
{
    *out = NULL;
    if (nb_optim_config_validate(c) || nsegs < 0 || (nsegs && !segs) ||
        !nb_be_supports(be, NB_OP_ADAMW) || !nb_be_supports(be, NB_OP_SUMSQ))
        return NB_EINVAL;
    size_t end = 0;
    for (int i = 0; i < nsegs; i++) {
        size_t e;
        if (segs[i].grad_offset < end || nb_add_size(segs[i].grad_offset, segs[i].numel, &e) || e > n)
            return NB_EINVAL;
        end = e;
    }
    size_t bytes;
    if (nb_mul_size(n ? n : 1, 2 * sizeof(float), &bytes))
        return NB_ENOMEM;
    nb_optim_t *o = calloc(1, sizeof *o);
    if (!o)
        return NB_ENOMEM;
    o->segs = calloc((size_t)(nsegs ? nsegs : 1), sizeof *o->segs);
    o->mem = nb_be_alloc(be, bytes);
    if (!o->segs || !o->mem) {
        free(o->segs);
        if (o->mem)
            nb_be_dealloc(be, o->mem);
        free(o);
        return NB_ENOMEM;
    }
    if (nsegs)
        memcpy(o->segs, segs, (size_t)nsegs * sizeof *segs);
    o->be = be;
    o->cfg = *c;
    o->n = n;
    o->nsegs = nsegs;
    o->m = o->mem;
    o->v = o->m + n;
    nb_be_memset0(be, o->mem, bytes);
    *out = o;
    return 0;
}

void nb_optim_free(nb_optim_t *o)
{
    if (!o)
        return;
    nb_be_dealloc(o->be, o->mem);
    free(o->segs);
    free(o);
}

double nb_optim_sumsq(nb_backend_t *be, const float *grads, size_t n)
{
    double s = 0.0;
    if (n)
        nb_sumsq(be, &s, grads, n);
    return s;
}

float nb_optim_clip_scale(const nb_optim_config_t *c, double global_sumsq)
{
    if (!(c->grad_clip > 0.0f))
        return 1.0f;
    double coef = (double)c->grad_clip / (sqrt(global_sumsq) + 1e-6);
    return coef < 1.0 ? (float)coef : 1.0f;
}

void nb_optim_step(nb_optim_t *o, float *params, const float *grads, float lr, float grad_scale)
{
    o->steps++;
    const nb_optim_config_t *c = &o->cfg;
    for (int i = 0; i < o->nsegs; i++) {
        const nb_optim_segment_t *s = &o->segs[i];
        if (!s->numel)
            continue;
        nb_adamw(o->be, params + s->offset, grads + s->grad_offset, o->m + s->grad_offset, o->v + s->grad_offset,
                 s->numel, lr, c->beta1, c->beta2, c->eps, s->decay ? c->weight_decay : 0.0f,
                 grad_scale, o->steps);
    }
}

int nb_optim_steps(const nb_optim_t *o) { return o->steps; }
size_t nb_optim_numel(const nb_optim_t *o) { return o->n; }
float *nb_optim_m(nb_optim_t *o) { return o->m; }
float *nb_optim_v(nb_optim_t *o) { return o->v; }
void nb_optim_set_steps(nb_optim_t *o, int steps) { o->steps = steps; }
