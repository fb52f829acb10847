/*
 * encdec_run.h - nebula-train's run of an encoder-decoder job (job.encoder;
 * docs/finetune.md): the progress lines, the held-out score at the end and
 * the final weights of both models. Kept apart from nebula-train.c, which
 * only maps the config and hands over.
 *
 * Thread: the caller's (the backend's).
 */
#ifndef NB_ENCDEC_RUN_H
#define NB_ENCDEC_RUN_H

#include <signal.h>
#include "daemon/train/encdec.h"

typedef struct {
    const char *config_path;          /* for messages */
    int stop_after;                   /* stop once this many steps are done; 0 = all */
    int log_every;                    /* progress line every N steps */
    const char *enc_output;           /* job.encoder.output; "" = none */
    const char *dec_output;           /* job.output; "" = none */
    volatile sig_atomic_t *stop;      /* set by a signal: stop after the current step */
    int eval_only;                    /* no step: score the weights the job starts from */
} nb_encdec_run_t;

/* Trains c on be and reports as nebula-train does (with r->eval_only:
 * trains nothing, scores the held-out windows with the weights the job
 * starts from - job.encoder.init and job.init - and writes no weights);
 * returns the exit
 * status (0 done, 1 runtime error, 78 a config or file refused at start;
 * the signal's 128 + N is the caller's). */
int nb_encdec_run(nb_backend_t *be, const nb_encdec_config_t *c, const nb_encdec_run_t *r);

#endif /* NB_ENCDEC_RUN_H */
