/*
 * trainer.h - the deterministic single-process trainer: the reference every
 * distributed run is compared with.
 *
 * One training step (0-based index s):
 *   zero the gradients;
 *   for micro-batch i = 0 .. m-1, in order: draw the batch keyed by
 *     (seed, s, i) from the token file (nb_tokens_sample for the lm head,
 *     nb_tokens_sample_mlm with mask token vocab-1 for mlm), run the whole
 *     model forward with loss scale 1/m and backward (gradients accumulate);
 *     the step's loss is the sum over i of loss_i / m, added in that order;
 *   nb_part_finish_grads() (tied embeddings: the head's share of wte's
 *     gradient joins the embedding's, as one addition);
 *   global sum of squares of the gradients -> clip factor; learning rate of
 *   step s (warmup + cosine); one AdamW step.
 *   When the sum of squares is not finite (a NaN or Inf anywhere in the
 *   gradients) the step is skipped instead: weights and optimizer state
 *   (moments, bias-correction count) stay as they were, the step index
 *   still advances, and the skip is counted. After max_skipped_steps
 *   consecutive skips the step returns NB_ELIMIT: the run must stop.
 * A pipeline that keeps this order reproduces the same numbers.
 *
 * Held-out evaluation (nb_trainer_eval): with eval_fraction f the last
 * ceil(f * count) tokens of the file are held out and training samples only
 * from the tokens before them (windows never cross the split); with
 * eval_data a second token file is held out and training uses the whole
 * first one. Eval batch j (j < eval_batches) is the batch the training
 * sampler draws from the held-out tokens with the key (seed, 2^64 - 1, j):
 * the same batches at every evaluation, so losses are comparable. The loss
 * is the mean of the batches' mean losses, with the current weights,
 * forward only (no gradient, no update).
 *
 * Thread: a trainer is used by one thread (the one owning the backend).
 */
#ifndef NB_TRAINER_H
#define NB_TRAINER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "kernels/model.h"
#include "kernels/optim.h"
#include "daemon/train/checkpoint.h"

typedef struct {
    nb_model_config_t model;   /* head lm (next token) or mlm (masked tokens;
                                  the mask token is vocab-1, which the token
                                  file's vocabulary must leave free) */
    nb_optim_config_t optim;   /* total_steps is usually steps */
    uint64_t seed;             /* init and data streams */
    int batch;                 /* sequences per step */
    int micro_batches;         /* m >= 1, dividing batch */
    int seq_len;               /* T <= model.max_seq */
    int steps;
    char data[1024];           /* token file */
    float mask_prob;           /* mlm: share of masked positions; 0 = 0.15 */
    int max_skipped_steps;     /* consecutive steps skipped for a non-finite
                                  gradient norm that stop the run (job.
                                  max_skipped_steps); 0 = the default */
    double eval_fraction;      /* held-out share of data's tail; 0 = none */
    char eval_data[1024];      /* held-out token file; "" = none (not with eval_fraction) */
    int eval_batches;          /* micro-batches per evaluation; 0 = 8 */
    nb_precision_t precision;  /* matmul precision (job.precision); fp32 = 0 */
    nb_freeze_spec_t freeze;   /* frozen tensors (job.freeze, job.trainable);
                                  zero = every tensor trains */
} nb_train_config_t;

/* Default of job.eval.batches, and the sampler's step key of eval batches. */
#define NB_TRAIN_EVAL_BATCHES_DEFAULT 8
#define NB_TRAIN_EVAL_STEP_KEY UINT64_MAX

/* Default of job.max_skipped_steps (docs/config.md). */
#define NB_TRAIN_MAX_SKIPPED_DEFAULT 10

/* What one step produced. */
typedef struct {
    int step;                  /* 0-based index of the step just taken */
    float loss;                /* mean loss of the step (before the update) */
    float lr;
    double grad_norm;          /* global norm before clipping (NaN or Inf
                                  when the step was skipped) */
    double seconds;            /* wall time of the step */
    bool skipped;              /* non-finite gradient norm: no update */
    int skipped_run;           /* consecutive skipped steps, this one included */
    int skipped_total;         /* skipped steps since the trainer was made */
} nb_train_step_t;

typedef struct nb_trainer nb_trainer_t;

/* Validates c, opens the token file (its vocabulary must not exceed the
 * model's), creates the model with weights seeded from c->seed, freezes
 * the tensors c->freeze names (nb_freeze_check: a pattern matching no
 * tensor, or one freezing everything, is NB_EINVAL) and creates the
 * optimizer over the trainable ones. Errors: negative NB_E* code with a message naming the field or
 * file in err. */
int nb_trainer_new(nb_backend_t *be, const nb_train_config_t *c, nb_trainer_t **out, char *err, size_t errlen);
void nb_trainer_free(nb_trainer_t *t);

/* Takes the next step. Errors: NB_ESTATE after the configured steps,
 * NB_ELIMIT when this step made max_skipped_steps consecutive skips (*out
 * is filled, the step is counted; message in err), other codes from the
 * model (message in err). */
int nb_trainer_step(nb_trainer_t *t, nb_train_step_t *out, char *err, size_t errlen);
/* Held-out loss with the current weights (see above). Errors: NB_ESTATE
 * when no held-out data is configured, model errors (message in err). */
int nb_trainer_eval(nb_trainer_t *t, double *loss, char *err, size_t errlen);
/* Tokens training samples from and tokens held out (0 without eval). */
void nb_trainer_split(const nb_trainer_t *t, uint64_t *train_tokens, uint64_t *eval_tokens);
/* Steps taken so far. */
int nb_trainer_steps_done(const nb_trainer_t *t);
/* Writes a checkpoint of the run as it stands to the directory dir
 * (usually nb_ckpt_step_dir(root, steps done)): one file,
 * model.safetensors, holding the whole model's parameters and AdamW
 * moments by their global names, then manifest.json with the seed, batch,
 * micro_batches, seq_len, steps done and AdamW updates applied
 * (checkpoint.h; crash-safe; a manifest already in dir is removed first).
 * Errors: NB_EIO, NB_ENOMEM; message in err. */
int nb_trainer_save(nb_trainer_t *t, const char *dir, char *err, size_t errlen);
/* Restores the checkpoint in the directory dir, written by a run with the
 * same model, seed, batch, micro_batches and seq_len, by nb_trainer_save or
 * by any layer split (a pipeline's stages: each tensor is taken by name);
 * the next step is the one after the saved ones, and the optimizer's step
 * count is the checkpoint's (steps skipped before it stay skipped), so a
 * resumed run equals an uninterrupted one bit for bit (the count of
 * consecutive skipped steps is not saved: it starts again at 0). Errors:
 * NB_ENOENT (no manifest), NB_EINVAL (another run or model, naming the
 * field, or more steps than configured), NB_EFORMAT (a damaged checkpoint:
 * file, tensor and reason named), NB_EIO. On error the trainer is exactly
 * as it was. */
int nb_trainer_resume(nb_trainer_t *t, const char *dir, char *err, size_t errlen);
/* What a checkpoint of the run as it stands records (checkpoint.h): job_id
 * 0, steps done, AdamW updates applied, seed, batch, micro_batches,
 * seq_len, model and kernels. */
void nb_trainer_ckpt_meta(const nb_trainer_t *t, nb_ckpt_meta_t *out);
/* The kernels this trainer computes with, as checkpoints record them
 * ("avx512 blas=SkylakeX"; docs/kernels.md): at most cap bytes, terminated. */
void nb_trainer_kernels(const nb_trainer_t *t, char *buf, size_t cap);
/* After nb_trainer_resume: the kernels line the checkpoint recorded (""
 * when it recorded none, or when there was no resume). Borrowed. */
const char *nb_trainer_resumed_kernels(const nb_trainer_t *t);
/* The optimizer (over nb_trainer_part's flat buffers). Borrowed. */
nb_optim_t *nb_trainer_optim(nb_trainer_t *t);
/* The model (one part holding everything). Borrowed. */
nb_part_t *nb_trainer_part(nb_trainer_t *t);

#endif /* NB_TRAINER_H */
