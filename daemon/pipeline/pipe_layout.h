/*
 * pipe_layout.h - how a pipeline job is laid out: the model, the part each
 * stage holds, the daemon each stage is placed on, and the training
 * settings every daemon shares; and the check of a layout, used by the job
 * (job.c), the stage host and re-partitioning.
 */
#ifndef NB_PIPE_LAYOUT_H
#define NB_PIPE_LAYOUT_H

#include <stdint.h>
#include "daemon/planner/schedule.h"
#include "kernels/model.h"
#include "kernels/optim.h"

/* How the whole pipeline is laid out and trained; identical on every daemon. */
typedef struct {
    uint64_t job_id;
    nb_model_config_t model;
    int p;                                    /* pipeline stages */
    nb_part_spec_t parts[NB_SCHED_MAX_STAGES];/* what each stage holds */
    int placement[NB_SCHED_MAX_STAGES];       /* daemon index of each stage */
    int n_daemons;
    uint64_t seed;
    int micro_batch_size;                     /* B: sequences per micro-batch */
    int seq_len;                              /* T */
    nb_optim_config_t optim;
    nb_precision_t precision;                 /* job.precision of every stage's matmuls */
    double eval_fraction;                     /* job.eval.fraction: stage 0 trains on the head of
                                                 its token file only (holdout.h); 0 = all of it */
    nb_freeze_spec_t freeze;                  /* frozen tensors (job.freeze): each
                                                 stage freezes those it holds */
} nb_pipe_layout_t;

/* Checks a layout: head lm or mlm (nb_job_head_unsupported), stages cover
 * the model exactly in order (embedding on stage 0, head on stage p-1),
 * placement in range, sizes valid. Returns NULL or a static message. */
const char *nb_pipe_layout_validate(const nb_pipe_layout_t *l);

#endif
