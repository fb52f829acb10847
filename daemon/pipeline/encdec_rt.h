/*
 * encdec_rt.h - the runtimes of the encoder-decoder job across two daemons
 * (docs/finetune.md, "Across two daemons"):
 *
 *   the decoder's daemon (role coordinator with job.encoder) is the job's
 *   coordinator: it admits only the daemon named job.encoder.daemon over
 *   mutually authenticated TLS, sends it a Job carrying the digest of the
 *   job it read, runs the decoder's forward and backward on each encoder
 *   output it receives and sends back its gradient, and ends each step: the
 *   global sum of squares (the encoder's, from its Report, first), the
 *   clip, its optimizer step, and a Commit; the job is done when the
 *   encoder's daemon confirms the last one (JobStatus DONE);
 *
 *   the encoder's daemon (role stage, encdec_encoder: true) reads the same
 *   job section, refuses a Job whose digest differs from its own, runs the
 *   encoder forward on each micro-batch (the pairs drawn by seed, step and
 *   micro-batch on both sides), sends its output with job.codecs.forward,
 *   runs the backward from the gradient (job.codecs.backward), reports its
 *   sum of squares after the last micro-batch and steps on the Commit;
 *   after the last, with its weights written, it sends JobStatus DONE.
 *
 * Models run on a libuv work thread, one work item at a time.
 *
 * Thread: the loop thread, except the models.
 */
#ifndef NB_ENCDEC_RT_H
#define NB_ENCDEC_RT_H

#include "daemon/service/service.h"

typedef struct nb_encdec_dec_rt nb_encdec_dec_rt_t;
typedef struct nb_encdec_enc_rt nb_encdec_enc_rt_t;

/* Create the runtime for svc and register it as the service's runtime.
 * Call before nb_service_start; free after nb_service_run returned.
 * Errors: NB_ENOMEM. */
int nb_encdec_dec_rt_attach(nb_service_t *svc, nb_encdec_dec_rt_t **out);
void nb_encdec_dec_rt_free(nb_encdec_dec_rt_t *rt);
int nb_encdec_enc_rt_attach(nb_service_t *svc, nb_encdec_enc_rt_t **out);
void nb_encdec_enc_rt_free(nb_encdec_enc_rt_t *rt);

#endif
