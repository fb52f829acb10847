/*
 * electra_msg.h - the ELECTRA job across daemons (docs/electra.md, "Across
 * daemons"): the configuration both the single-process reference and the
 * discriminator's daemon build from one YAML file, the ElectraJob message a
 * generator daemon gets, and the checks on every batch the discriminator's
 * daemon receives.
 *
 * One conversion from the YAML structs serves nebula-electra and nebulad, so
 * the distributed job runs exactly the reference's models and optimizers.
 *
 * Thread: pure functions, no shared state.
 */
#ifndef NB_ELECTRA_MSG_H
#define NB_ELECTRA_MSG_H

#include <stdint.h>
#include "daemon/config/config.h"
#include "daemon/train/electra.h"
#include "proto/nebula.pb-c.h"

/* Batches a generator may run ahead of the discriminator: it may send the
 * batch of step s once the discriminator has done s + 1 - NB_ELECTRA_WINDOW
 * steps, so the discriminator's daemon holds at most this many batches per
 * generator (and a generator keeps the same number for re-sending). */
#define NB_ELECTRA_WINDOW 2
/* Codec name of a batch's Tensor frame: the payload is electra_wire.h's. */
#define NB_ELECTRA_CODEC "electra-wire"

/* Fills ec from an electra job (cfg->job.electra, role train or
 * coordinator) for `steps` steps: job.model is the discriminator, each
 * generator its own model, optimizer, seed and data (data stays "" for a
 * coordinator: each generator daemon reads its own). Errors: -1 with a
 * message when the file has no job.electra section. */
int nb_electra_cfg_convert(const nb_config_t *cfg, int steps, nb_electra_config_t *ec, char *err,
                           size_t errlen);

/* What a generator daemon learns from ElectraJob besides its generator. */
typedef struct {
    uint64_t job_id;
    int index;            /* its place among the generators */
    int seq_len;
    int steps;
    float mask_prob;
    uint32_t disc_vocab;  /* every ID it sends must be below this */
    uint64_t resume_step; /* first step the discriminator still needs */
    uint64_t credit;      /* it may send batches of steps below this */
} nb_electra_job_info_t;

/* Whether a generator built for (a, ai) computes exactly what (b, bi)
 * asks for: every field of the generator's config and of the job that
 * shapes its batches (job id, resume step and credit aside). Compared
 * field by field (the structs have padding). */
bool nb_electra_job_same(const nb_electra_gen_config_t *a, const nb_electra_job_info_t *ai,
                         const nb_electra_gen_config_t *b, const nb_electra_job_info_t *bi);

/* The credit a generator holds after (re)applying job `in` while it held
 * credit cur_credit for job cur_job: within one job credit never goes
 * down (an ElectraJob parked while a step ran may be older than credit
 * frames that came after it); a new job starts from its own credit. */
uint64_t nb_electra_credit_after_job(uint64_t cur_job, uint64_t cur_credit, const nb_electra_job_info_t *in);

/* Storage for the pointers of an ElectraJob message (outlives the message). */
typedef struct {
    Nebula__ElectraJob job;
    Nebula__ModelConfig model;
    Nebula__OptimConfig optim;
} nb_electra_msg_store_t;

/* Fills st->job for generator g of ec (resume and credit as in
 * nb_electra_job_info_t); nothing is allocated, ec must outlive it. */
void nb_electra_job_to_msg(const nb_electra_config_t *ec, int g, uint64_t job_id, uint64_t resume_step,
                           uint64_t credit, nb_electra_msg_store_t *st);

/* The most a generator daemon allocates for one ElectraJob's generator
 * (nb_electra_gen_bytes): a larger job is refused before anything is
 * allocated (docs/electra.md, "Across daemons"). */
#define NB_ELECTRA_GEN_MEM_MAX (8ull << 30)

/* About the bytes a generator of model m with `sequences` sequences of
 * seq_len tokens allocates: model state (weights, gradients, AdamW m and v),
 * activations (attention scores included) and logits with their gradient,
 * all float32; the parts go to *state, *acts, *logits (each may be NULL).
 * Saturates at UINT64_MAX on overflow (any input). */
uint64_t nb_electra_gen_bytes(const nb_model_config_t *m, int sequences, int seq_len, uint64_t *state,
                              uint64_t *acts, uint64_t *logits);

/* Validates a received ElectraJob (from the network: every range is
 * checked) and converts it: gc gets the generator (its data = data, the
 * daemon's own token file), info the rest. my_name is this daemon's name:
 * the job must name it. Errors: NB_EFORMAT (a field out of range: the
 * message names it, its value and the allowed range), NB_EINVAL (another
 * daemon's job, an invalid model), NB_ELIMIT (more memory than
 * NB_ELECTRA_GEN_MEM_MAX: the message names the sizes). */
int nb_electra_job_from_msg(const Nebula__ElectraJob *m, const char *my_name, const char *data,
                            nb_electra_gen_config_t *gc, nb_electra_job_info_t *info, char *err, size_t errlen);

/* A generator's loss as the peer reported it, for a progress line: "%.4f",
 * or "n/a" when it is not finite (a peer's NaN or inf is printed as
 * nothing it is not). Writes into buf (NB_ELECTRA_LOSS_TEXT bytes
 * suffice) and returns it. */
#define NB_ELECTRA_LOSS_TEXT 32
const char *nb_electra_loss_text(double loss, char *buf, size_t len);

/* What the discriminator's daemon accepts now. */
typedef struct {
    uint64_t job_id;
    int n_gen;
    const char *names[NB_ELECTRA_MAX_GEN]; /* = the generator daemons' certificate names */
    int seqs[NB_ELECTRA_MAX_GEN];
    int seq_len, vocab;                    /* the discriminator's T and vocab */
    uint64_t next[NB_ELECTRA_MAX_GEN];     /* the step expected next from each generator */
    uint64_t credit;                       /* steps below this may be sent */
} nb_electra_rx_t;

/* Checks one Tensor frame from the peer called sender (its verified name)
 * and decodes it into b (whose arrays hold cap_tokens entries): sender must
 * be a generator of the job; the frame a KIND_TOKEN_IDS, U8, NB_ELECTRA_CODEC
 * tensor of this job whose from_stage is the sender's index, for exactly the
 * step expected next from it and below the credit; the payload a batch of
 * that generator and step with its n_g sequences of T tokens, every ID
 * below the discriminator's vocab (nb_electra_wire_decode). Returns the
 * generator's index, or NB_EINVAL / NB_EFORMAT / NB_ELIMIT with a message
 * naming the sender and what is wrong (b is then unchanged). */
int nb_electra_rx_accept(const nb_electra_rx_t *x, const char *sender, const Nebula__Tensor *t,
                         const uint8_t *payload, size_t len, nb_electra_batch_t *b, size_t cap_tokens, char *err,
                         size_t errlen);

#endif
