/*
 * encdec.h - the single-process trainer of an encoder-decoder job
 * (job.encoder + job.model with cross_attn + job.spans; docs/finetune.md):
 * the reference a two-stage pipeline (the encoder's part on one cluster,
 * the decoder's on another) must reproduce.
 *
 * One training step (0-based index s), micro-batch i = 0 .. m-1 in order:
 *   draw the span pairs keyed by (seed, s, i) (spans.h);
 *   encoder forward on the source                      -> enc (B,S,C)
 *   decoder forward on its input with cross-attention to enc, loss scale 1/m
 *   decoder backward                                    -> d enc (B,S,C)
 *   encoder backward from d enc (when the encoder has a trainable tensor)
 * then one global sum of squares over both models' gradients (encoder's
 * first), one clip factor, the learning rate of step s, and one AdamW step
 * for each model's trainable tensors. A step whose sum of squares is not
 * finite is skipped as in trainer.h. The only values that cross between
 * the two halves are enc forward and d enc backward: the cut of the
 * pipeline.
 *
 * Init: the decoder's parts are seeded with seed, the encoder's with
 * seed + 1 (two models with equal shapes still start apart), then each
 * side's init file, if any, replaces them (nb_hf_init_part: a Nebula
 * weights file or safetensors; the encoder's part has no head).
 *
 * Held-out score (nb_encdec_eval): held-out pairs 0 .. n-1 (spans.h) in
 * micro-batches of B: the teacher-forced loss (mean of the batches' mean
 * losses), and greedy decoding: the decoder starts from [CLS] and at each
 * position takes the most likely token, until [SEP] or T tokens; the
 * prediction scores exact match and token F1 against the removed span
 * (means over the n pairs).
 *
 * Thread: one thread, the backend's.
 */
#ifndef NB_ENCDEC_H
#define NB_ENCDEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "daemon/train/spans.h"
#include "daemon/train/trainer.h"
#include "kernels/model.h"
#include "kernels/optim.h"

/* One of the two models. */
typedef struct {
    nb_model_config_t model;   /* adapters already set (nb_model_set_adapters) */
    nb_freeze_spec_t freeze;   /* its own job.freeze / job.trainable */
    char init[1024];           /* pretrained weights; "" = seeded */
    const char *key;           /* "job.encoder" or "job": names its keys in messages */
} nb_encdec_side_t;

/* Which models a trainer holds: both (nebula-train), or one half of the
 * pipeline (a daemon of the job across two clusters, docs/finetune.md). */
typedef enum { NB_ENCDEC_BOTH = 0, NB_ENCDEC_ENCODER, NB_ENCDEC_DECODER } nb_encdec_half_t;

typedef struct {
    nb_encdec_side_t enc, dec;
    nb_encdec_half_t half;     /* BOTH (0) unless one half runs here */
    nb_optim_config_t optim;
    uint64_t seed;
    int batch, micro_batches;  /* m divides batch */
    int steps;
    int max_skipped_steps;     /* 0 = NB_TRAIN_MAX_SKIPPED_DEFAULT */
    nb_spans_config_t task;    /* src_len = S; its texts must outlive nb_encdec_new */
    int eval_pairs;            /* held-out pairs scored */
} nb_encdec_config_t;

/* What an evaluation gives. */
typedef struct {
    double loss;               /* teacher-forced, mean over batches */
    double exact;              /* share of spans restored exactly */
    double f1;                 /* mean token F1 */
    int pairs;
} nb_encdec_score_t;

typedef struct nb_encdec nb_encdec_t;

/* Called with each note of a weights import, prefixed with the side's
 * key ("job.encoder.init: ..."). */
typedef void (*nb_encdec_note_cb)(void *ud, const char *note);

/* Opens the task, checks each model against it (vocab at least the
 * tokenizer's, S and T within max_seq), creates both parts (the encoder's
 * without head), loads their init files, freezes per side (a side may be
 * wholly frozen; both may not) and creates the optimizers. Errors:
 * NB_EINVAL (a config, a pattern or a file that does not fit: err names the
 * key), NB_EIO/NB_EFORMAT (a file), NB_ENOMEM. */
int nb_encdec_new(nb_backend_t *be, const nb_encdec_config_t *c, nb_encdec_note_cb note, void *ud,
                  nb_encdec_t **out, char *err, size_t errlen);
void nb_encdec_free(nb_encdec_t *t);

/* The next step (see above); as nb_trainer_step. */
int nb_encdec_step(nb_encdec_t *t, nb_train_step_t *out, char *err, size_t errlen);
/* The held-out score with the current weights (see above). */
int nb_encdec_eval(nb_encdec_t *t, nb_encdec_score_t *out, char *err, size_t errlen);
int nb_encdec_steps_done(const nb_encdec_t *t);

/* ---- the cut: one step in halves ----------------------------------------
 * What the two daemons of the job across clusters run (docs/finetune.md,
 * "Across two daemons"); with fp32 on the wire they compute exactly what
 * nb_encdec_step computes. Per step s: nb_encdec_begin on both halves; per
 * micro-batch i in order: enc = nb_encdec_enc_forward (encoder half),
 * nb_encdec_dec_micro(enc) -> d enc (decoder half), nb_encdec_enc_backward
 * (d enc) (encoder half); then ss_e = nb_encdec_sumsq(encoder half, 0),
 * ss = nb_encdec_sumsq(decoder half, ss_e) (the encoder's first, as in
 * nb_encdec_step) and nb_encdec_commit(ss) on both. The pointers are device
 * memory of the trainer's backend, (B, S, C) floats (nb_encdec_cut_shape);
 * an output stays valid until the next call on the same trainer.
 * Errors: NB_ESTATE (a call its half cannot make, or all steps done),
 * NB_EINVAL (micro out of range), a model error; err says which. */
void nb_encdec_cut_shape(const nb_encdec_t *t, int *B, int *S, int *C);
/* A (B,S,C) device buffer owned by t, for a received tensor. */
float *nb_encdec_cut_buf(nb_encdec_t *t);
int nb_encdec_begin(nb_encdec_t *t, char *err, size_t errlen);
int nb_encdec_enc_forward(nb_encdec_t *t, int micro, const float **enc, char *err, size_t errlen);
/* Decoder forward and backward on the pair (step, micro) reading enc;
 * *loss the micro-batch's mean loss (not yet divided by m). */
int nb_encdec_dec_micro(nb_encdec_t *t, int micro, const float *enc, const float **denc, float *loss, char *err,
                        size_t errlen);
int nb_encdec_enc_backward(nb_encdec_t *t, const float *denc, char *err, size_t errlen);
/* before + the sum of squares of the held trainable gradients (encoder's
 * first). */
double nb_encdec_sumsq(nb_encdec_t *t, double before);
/* Ends the step with the global sum of squares ss: skip or clip and step
 * the held optimizers, as nb_encdec_step; loss is what out reports. */
int nb_encdec_commit(nb_encdec_t *t, double ss, float loss, nb_train_step_t *out, char *err, size_t errlen);

/* The encoder (no head) and the decoder; borrowed (NULL when the other
 * half holds it). */
nb_part_t *nb_encdec_encoder(nb_encdec_t *t);
nb_part_t *nb_encdec_decoder(nb_encdec_t *t);
/* The optimizers (NULL for a wholly frozen side); borrowed. */
nb_optim_t *nb_encdec_optim(nb_encdec_t *t, bool encoder);
/* The task; borrowed. */
const nb_spans_t *nb_encdec_task(const nb_encdec_t *t);

#endif /* NB_ENCDEC_H */
