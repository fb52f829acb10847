/*
 * optim.h - AdamW, gradient clipping by global norm and the learning-rate
 * schedule (linear warmup, cosine decay to a floor).
 *
 * Semantics are torch.optim.AdamW's (decoupled weight decay, bias correction
 * with the 1-based step) and torch.nn.utils.clip_grad_norm_'s (scale =
 * max_norm / (norm + 1e-6) when that is below 1). Weight decay applies to
 * 2-D tensors only (GPT-2 convention), as marked in the segments.
 *
 * The optimizer state (m, v) is carved from one device allocation with the
 * same layout as the gradient buffer it serves; a segment names a tensor's
 * place in the parameter buffer and in the gradient buffer, which differ
 * when some tensors are frozen (they have parameters but no gradient and
 * no state: kernels/model.h). The global norm may combine
 * several buffers (the stages of a pipeline): each computes its local sum of
 * squares with nb_optim_sumsq() and the caller passes the total to
 * nb_optim_clip_scale().
 *
 * Deterministic: fixed reduction order on a given backend.
 * Thread: one optimizer is used by the thread that owns its backend.
 */
#ifndef NB_OPTIM_H
#define NB_OPTIM_H

#include <stdbool.h>
#include <stddef.h>
#include "kernels/backend.h"

typedef struct {
    float lr;            /* peak learning rate */
    float lr_min;        /* floor reached at the end of the cosine */
    int warmup_steps;    /* linear warmup from lr/warmup to lr */
    int total_steps;     /* warmup + decay; after it the rate stays at lr_min */
    float beta1, beta2, eps;
    float weight_decay;  /* on segments marked decay */
    float grad_clip;     /* max global norm; <= 0 disables clipping */
} nb_optim_config_t;

/* Sensible defaults (GPT-2 style): lr 3e-4, floor lr/10, betas 0.9/0.95,
 * eps 1e-8, weight decay 0.1, clip 1.0, warmup 0, total 1. */
nb_optim_config_t nb_optim_config_default(void);
/* NULL when valid, else a static message naming the field. */
const char *nb_optim_config_validate(const nb_optim_config_t *c);

/* Learning rate for 0-based step under c: (step+1)/warmup * lr during warmup,
 * then lr_min + (lr - lr_min) * (1 + cos(pi * progress)) / 2. */
double nb_optim_lr(const nb_optim_config_t *c, int step);

/* One contiguous range of the flat buffers: params[offset ..] is updated
 * from grads[grad_offset ..], with state m and v at grad_offset too. */
typedef struct {
    size_t offset, numel;  /* into the parameter buffer */
    bool decay;
    size_t grad_offset;    /* into the gradient buffer and the state */
} nb_optim_segment_t;

typedef struct nb_optim nb_optim_t;

/* Creates an optimizer whose state covers n floats (the gradient buffer's
 * length), updating the ranges segments describe (copied; their gradient
 * ranges must be sorted, non-overlapping and inside n; the parameter
 * ranges are the caller's to get right). State starts at zero. For a
 * model part use nb_part_optim_new (kernels/model.h).
 * Errors: NB_EINVAL (bad config or segments, or a backend without the
 * adamw and sumsq ops), NB_ENOMEM. */
int nb_optim_new(nb_backend_t *be, const nb_optim_config_t *c, size_t n,
                 const nb_optim_segment_t *segs, int nsegs, nb_optim_t **out);
void nb_optim_free(nb_optim_t *o);

/* Sum of squares of n gradient floats (double, synchronous). */
double nb_optim_sumsq(nb_backend_t *be, const float *grads, size_t n);
/* Factor to multiply gradients by given the GLOBAL sum of squares. */
float nb_optim_clip_scale(const nb_optim_config_t *c, double global_sumsq);

/* One step: params -= AdamW(grads * grad_scale) with learning rate lr.
 * Increments the step counter (bias correction uses it). */
void nb_optim_step(nb_optim_t *o, float *params, const float *grads, float lr, float grad_scale);
/* Steps taken so far. */
int nb_optim_steps(const nb_optim_t *o);
/* Floats of state per moment (the n given to nb_optim_new). */
size_t nb_optim_numel(const nb_optim_t *o);
/* The flat state buffers (device, n floats each), for checkpoints. */
float *nb_optim_m(nb_optim_t *o);
float *nb_optim_v(nb_optim_t *o);
/* Sets the step counter (when state is restored from a checkpoint). */
void nb_optim_set_steps(nb_optim_t *o, int steps);

#endif /* NB_OPTIM_H */
