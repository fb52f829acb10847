/*
 * electra.h - multi-generator ELECTRA (Clark et al. 2020) in one process:
 * the reference the distributed topology (generators and the
 * discriminator on separate daemons) must reproduce bit for bit.
 *
 * G generators, each an MLM transformer of its own size, with its own
 * token file, seed and AdamW, and one discriminator, a transformer with the
 * token-classification head (n_classes 2) trained on replaced-token
 * detection. Discriminator step s (0-based):
 *
 *   generator side, for g = 0 .. G-1 in order (nb_electra_gen_compute):
 *     draw n_g sequences of T tokens from g's file and mask them
 *       (nb_tokens_sample_mlm keyed by (seed_g, s, 0), mask_prob, the
 *       generator's mask token);
 *     forward + backward of the generator on them (MLM loss, scale 1);
 *     at each masked position draw a replacement from the generator's
 *       softmax over the IDs of its token file, keyed by (seed_g, g, s,
 *       position) (electra_sample.h);
 *     the batch: corrupted IDs and replaced flags (electra_wire.h): what
 *       crosses the link;
 *   the batches are encoded and decoded as the link would carry them;
 *   discriminator side (nb_electra_disc_compute): zero its gradients; for
 *     g = 0 .. G-1 in order, check g's batch (shape, step, IDs within the
 *     vocabulary: a bad batch is refused with the generator named), forward
 *     + backward with targets = replaced flags and loss scale
 *     disc_weight * n_g / N (N = sum of n_g); the step's loss is
 *     sum_g loss_g * n_g / N (unweighted);
 *   tied embeddings only (single process): every generator's wte gradient
 *     is added to the discriminator's in generator order, and zeroed;
 *   updates (nb_electra_gen_update, nb_electra_disc_update), generators
 *     first: global-norm clip of the model's own gradients, learning rate
 *     of step s, AdamW; a non-finite norm skips that model's update;
 *   tied only: the discriminator's wte is copied into every generator.
 *
 * Sampling cuts the gradient path from the discriminator to the
 * generators, so untied, the two sides share nothing but the batches:
 * each generator can run where its text is. The loss weight then only acts
 * through the discriminator's clipping and AdamW's eps (AdamW is invariant
 * to a constant gradient scale otherwise). docs/electra.md.
 *
 * Thread: a job, a generator or a discriminator is used by one thread (the
 * one owning the backend). Errors: negative NB_E* codes, message in err.
 */
#ifndef NB_ELECTRA_H
#define NB_ELECTRA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "kernels/model.h"
#include "kernels/optim.h"
#include "daemon/train/electra_wire.h"

#define NB_ELECTRA_MAX_GEN 8
#define NB_ELECTRA_DISC_WEIGHT_DEFAULT 50.0f
#define NB_ELECTRA_NAME_MAX 64

typedef struct {
    char name[NB_ELECTRA_NAME_MAX]; /* names the source in messages */
    char data[1024];                /* its token file */
    nb_model_config_t model;        /* head mlm */
    nb_optim_config_t optim;        /* total_steps: usually the job's steps */
    uint64_t seed;                  /* init, data, mask and replacement streams */
    int sequences;                  /* n_g: sequences per discriminator step */
} nb_electra_gen_config_t;

typedef struct {
    nb_model_config_t model;    /* discriminator: head tokcls, n_classes 2 */
    nb_optim_config_t optim;
    uint64_t seed;              /* discriminator init */
    int seq_len;                /* T, every sequence of every generator */
    int steps;
    float mask_prob;            /* 0 = 0.15 */
    float disc_weight;          /* 0 = 50 */
    bool tie_embeddings;        /* one wte for all models (single process
                                   only; equal d_model and vocab needed) */
    int n_gen;
    nb_electra_gen_config_t gen[NB_ELECTRA_MAX_GEN];
} nb_electra_config_t;

/* ---- generator side ------------------------------------------------------ */

typedef struct nb_electra_gen nb_electra_gen_t;

/* Opens gc->data (its vocabulary must leave the mask token free), creates
 * the generator (weights from gc->seed) and its AdamW. index is its place
 * in the job's order (it keys the replacement draws). Errors: NB_EINVAL
 * (config or data: err names the generator and the field or file),
 * NB_EIO/NB_EFORMAT (token file), NB_ENOMEM. */
int nb_electra_gen_new(nb_backend_t *be, const nb_electra_gen_config_t *gc, int index, int seq_len,
                       float mask_prob, nb_electra_gen_t **out, char *err, size_t errlen);
void nb_electra_gen_free(nb_electra_gen_t *g);

/* Generator half of step `step`: masks a batch, runs forward and backward
 * (zeroing the gradients first), draws the replacements. out gets the
 * batch; its arrays are the generator's and stay valid until the next
 * call. *loss gets the MLM loss. Does not update the weights. */
int nb_electra_gen_compute(nb_electra_gen_t *g, uint64_t step, nb_electra_batch_t *out, float *loss,
                           char *err, size_t errlen);
/* Clip + AdamW with the learning rate of `step`. *grad_norm (may be NULL)
 * gets the norm before clipping; a non-finite one skips the update and
 * returns 1, else 0. */
int nb_electra_gen_update(nb_electra_gen_t *g, uint64_t step, double *grad_norm);
/* The IDs the generator emits are below this (its token file's
 * vocabulary); the wire width follows from it. */
uint32_t nb_electra_gen_vocab(const nb_electra_gen_t *g);
/* Replaced tokens and masked tokens of the last compute. */
void nb_electra_gen_counts(const nb_electra_gen_t *g, long *replaced, long *masked);
/* Originals of the last computed batch (n*T host IDs). Borrowed. */
const int32_t *nb_electra_gen_originals(const nb_electra_gen_t *g);
nb_part_t *nb_electra_gen_part(nb_electra_gen_t *g);
nb_optim_t *nb_electra_gen_optim(nb_electra_gen_t *g);

/* ---- discriminator side -------------------------------------------------- */

typedef struct nb_electra_disc nb_electra_disc_t;

/* The discriminator for n_src sources, source i sending seqs[i] sequences
 * of seq_len tokens per step and called names[i] (copied). model must have
 * the tokcls head with 2 classes. Errors: NB_EINVAL, NB_ENOMEM. */
int nb_electra_disc_new(nb_backend_t *be, const nb_model_config_t *model, const nb_optim_config_t *optim,
                        uint64_t seed, int seq_len, float disc_weight, int n_src, const int *seqs,
                        const char *const *names, nb_electra_disc_t **out, char *err, size_t errlen);
void nb_electra_disc_free(nb_electra_disc_t *d);

/* Discriminator half of step `step` over b[0 .. n_src-1] (source order):
 * checks each batch (NB_EINVAL naming the source, the sequence and the
 * position; nothing is computed then), zeroes the gradients, forward +
 * backward of each. *loss: mean replaced-token-detection loss over all
 * tokens (unweighted); *acc (may be NULL): share of tokens classified
 * right. Does not update the weights. */
int nb_electra_disc_compute(nb_electra_disc_t *d, uint64_t step, const nb_electra_batch_t *b, float *loss,
                            float *acc, char *err, size_t errlen);
/* As nb_electra_gen_update. */
int nb_electra_disc_update(nb_electra_disc_t *d, uint64_t step, double *grad_norm);
nb_part_t *nb_electra_disc_part(nb_electra_disc_t *d);

/* ---- the whole job in one process ---------------------------------------- */

typedef struct {
    int step;                              /* 0-based index of the step just taken */
    float gen_loss[NB_ELECTRA_MAX_GEN];    /* MLM loss per generator */
    float disc_loss;                       /* replaced-token detection, unweighted */
    float disc_acc;                        /* share of tokens classified right */
    long replaced, tokens;                 /* replaced tokens / discriminator tokens */
    size_t wire_bytes;                     /* encoded batches of the step, all generators */
    double gen_norm[NB_ELECTRA_MAX_GEN], disc_norm;
    int skipped;                           /* models whose update was skipped */
    double seconds;
} nb_electra_step_t;

typedef struct nb_electra nb_electra_t;

/* Validates c and builds every generator and the discriminator. Errors:
 * NB_EINVAL (err names the field or the generator), those of the
 * constructors above. */
int nb_electra_new(nb_backend_t *be, const nb_electra_config_t *c, nb_electra_t **out, char *err, size_t errlen);
void nb_electra_free(nb_electra_t *e);
/* Takes the next step (see above). Errors: NB_ESTATE after the configured
 * steps, model and batch errors (message in err). */
int nb_electra_step(nb_electra_t *e, nb_electra_step_t *out, char *err, size_t errlen);
int nb_electra_steps_done(const nb_electra_t *e);
/* The batch of generator i the discriminator consumed in the last step, as
 * decoded from its wire encoding (NULL before the first step or for a bad
 * i). Borrowed; valid until the next step. */
const nb_electra_batch_t *nb_electra_received(const nb_electra_t *e, int i);
nb_electra_gen_t *nb_electra_gen(nb_electra_t *e, int i);
nb_electra_disc_t *nb_electra_disc(nb_electra_t *e);

#endif /* NB_ELECTRA_H */
