/*
 * encdec_msg.h - the encoder-decoder job across two daemons
 * (docs/finetune.md, "Across two daemons"): the one conversion from the
 * YAML structs that nebula-train and both daemons use, so that the halves
 * run exactly the reference's models, and the digest by which the two
 * daemons check that they read the same job.
 *
 * Thread: pure functions, no shared state.
 */
#ifndef NB_ENCDEC_MSG_H
#define NB_ENCDEC_MSG_H

#include <stdbool.h>
#include <stdint.h>
#include "daemon/config/config.h"
#include "daemon/net/net.h"
#include "daemon/train/encdec.h"
#include "kernels/codec/codec.h"
#include "proto/nebula.pb-c.h"

/* Fills ec from an encoder-decoder job (cfg->job.encoder present);
 * texts (NB_CFG_MAX_TEXTS entries) receives the text paths (cfg must
 * outlive ec). Errors: -1 with a message naming the file and key
 * (adapters that do not fit a model). */
int nb_encdec_cfg_convert(const nb_config_t *cfg, nb_encdec_config_t *ec, const char **texts, char *err,
                          size_t errlen);

/* A digest (16 hex digits and NUL) of what both halves must agree on:
 * both models' shapes, adapters and freeze lists, the optimizer, seed,
 * batch, micro-batches, steps, the task's numbers (not its file paths, which
 * are each machine's own) and the two codec specs. */
/* The job's codecs (job.codecs.forward, .backward of cfg) parsed, and in
 * the canonical text a sender writes in its frames (nb_codec_spec_format;
 * "int8(block=256)" and "int8" are one codec), which the digest and the
 * checks on every tensor compare. Refuses, naming the key, a spec that does
 * not parse and one that keeps state between steps (ef, delta: not across
 * these two daemons). 0 or NB_EINVAL with the reason in err. */
#define NB_ENCDEC_CODEC_TEXT 128
int nb_encdec_codecs(const nb_config_t *cfg, nb_codec_spec_t *fwd, nb_codec_spec_t *bwd,
                     char fwd_text[NB_ENCDEC_CODEC_TEXT], char bwd_text[NB_ENCDEC_CODEC_TEXT], char *err,
                     size_t errlen);

void nb_encdec_cfg_digest(const nb_encdec_config_t *ec, const char *fwd_codec, const char *bwd_codec,
                          char out[17]);

/* The job's inputs that both daemons must hold byte for byte, not only by
 * name (each reads them at its own paths): the SHA-256 of each
 * job.spans.text file, and of the tokenizer's files (those
 * nb_tokenizer_load reads for job.spans.tokenizer: tokenizer.json; or
 * vocab.txt with tokenizer_config.json beside it when present; or
 * vocab.json with merges.txt). */
typedef struct {
    int n_texts;
    char text[NB_CFG_MAX_TEXTS][65];   /* lowercase hex */
    int n_tok;
    char tok_file[3][NB_CFG_PATH_MAX + 32];
    char tok[3][65];
    char texts16[17], tok16[17];       /* what the job digest carries of them */
} nb_encdec_inputs_t;

/* Hashes the files of ec's task into in. 0, or NB_EIO / NB_ENOMEM with err
 * naming the key and file ("job.spans.text: PATH: cannot read: ..."). A
 * tokenizer path holding none of its files hashes as no files (opening it
 * fails later with the reason). Reads every file whole: call at start. */
int nb_encdec_inputs_hash(const nb_encdec_config_t *ec, nb_encdec_inputs_t *in, char *err, size_t errlen);

/* The job digest the Job frame carries (model_digest): "S-T-K", the
 * settings' digest (nb_encdec_cfg_digest), the texts' and the tokenizer's,
 * 16 hex digits each. */
#define NB_ENCDEC_DIGEST_LEN 51
void nb_encdec_job_digest(const char settings[17], const nb_encdec_inputs_t *in, char out[NB_ENCDEC_DIGEST_LEN]);

/* What differs between two job digests, as words for a refusal ("the
 * texts' contents (job.spans.text)", "the settings and the tokenizer's
 * files (job.spans.tokenizer)"); a digest not of the form S-T-K counts as
 * other settings. Writes "" when they are equal. */
void nb_encdec_digest_diff(const char *mine, const char *theirs, char *out, size_t outlen);

/* One line for the log: each file's path and the first 16 hex digits of
 * its SHA-256, so that two daemons' logs show which file differs. */
void nb_encdec_inputs_describe(const nb_encdec_config_t *ec, const nb_encdec_inputs_t *in, char *out,
                               size_t outlen);

/* What each daemon does at start: the job digest of ec with its canonical
 * codecs (nb_encdec_cfg_digest, the inputs hashed, nb_encdec_job_digest)
 * into out, and nb_encdec_inputs_describe's line logged. 0, or
 * nb_encdec_inputs_hash's error. */
int nb_encdec_job_digest_at_start(const nb_encdec_config_t *ec, const char *fwd_codec, const char *bwd_codec,
                                  char out[NB_ENCDEC_DIGEST_LEN], char *err, size_t errlen);

/* What one daemon accepts of a tensor across the cut, and the checks: the
 * frame must come from the peer named `peer` (its certificate name), carry
 * kind, job_id, step and micro-batch as expected, the codec spec expected,
 * and the shape (B*S, C); the payload's length must be what the codec's
 * metadata says (nb_codec_peek). 0, or NB_EINVAL / NB_EFORMAT with a
 * message naming the sender and what is wrong. */
typedef struct {
    const char *peer;
    uint64_t job_id, step;
    uint32_t micro;
    int kind;              /* NEBULA__TENSOR_KIND__KIND_ACTIVATION or _GRADIENT */
    const char *codec;
    uint64_t rows, cols;   /* B*S, C */
} nb_encdec_rx_t;

int nb_encdec_rx_check(const nb_encdec_rx_t *x, const char *sender, const Nebula__Tensor *t, size_t len,
                       char *err, size_t errlen);

/* Sends m (nb_codec_encode's result) as the Tensor (kind, job, step,
 * micro-batch, shape rows x cols) on c; on success the transport owns the
 * payload and m's payload is empty. Errors as nb_conn_send. */
int nb_encdec_send(nb_conn_t *c, uint64_t job_id, uint64_t step, uint32_t micro, int kind, uint64_t rows,
                   uint64_t cols, nb_codec_msg_t *m);

/* The step deadline: how long one daemon waits for the next frame of the
 * running job from the other (a tensor, a Report, a Commit, the last
 * commit's JobStatus DONE) before it ends the job: 4 x heartbeat_timeout_s,
 * the bound a pipeline stage puts on its wait for a neighbour's tensor. A
 * peer that is gone (or stopped whole) falls silent and the heartbeat
 * finds it sooner; this finds one whose connection lives while its work
 * does not go on (a hung device, a work thread stuck). */
double nb_encdec_step_deadline_s(const nb_config_t *cfg);
#define NB_ENCDEC_STEP_KEY "4 x heartbeat_timeout_s" /* for messages */

/* What one daemon awaits from the other, since when and for how long;
 * owned by the runtime's loop thread. */
typedef struct {
    char what[160];   /* "" = nothing awaited */
    double since;     /* nb_mono_s() when the wait began */
    double limit;     /* seconds allowed */
    const char *key;  /* the settings the limit comes from, for the message */
} nb_encdec_wait_t;

/* Starts a wait for what fmt says (it replaces any other), of limit
 * seconds from now, limit coming from the settings named key (a static
 * string). */
void nb_encdec_wait_set(nb_encdec_wait_t *w, double limit, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Nothing is awaited any more (the frame came, or this daemon's own work
 * runs). */
void nb_encdec_wait_clear(nb_encdec_wait_t *w);
/* Whether the wait ran past its limit at time now (nb_mono_s); if so writes
 * "PEER_WHAT PEER sent no WHAT within N s (KEY): ..." into why. */
bool nb_encdec_wait_expired(const nb_encdec_wait_t *w, double now, const char *peer_what, const char *peer,
                            char *why, size_t whylen);

#endif
