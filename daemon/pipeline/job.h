/*
 * job.h - a pipeline job: from the coordinator's configuration to the layout
 * every daemon runs (stages, layer ranges, placement), and to and from the
 * Job message that carries it over the wire.
 *
 * Placement (docs/pipeline.md):
 *   chain   cluster i hosts stage i; the first cluster's stage has the
 *           embedding, the last cluster's stage the head. p = n clusters.
 *   ushape  cluster i hosts stage i, and the first cluster also hosts a
 *           last stage p = n holding only the head (final LayerNorm, head
 *           and loss): tokens and labels never leave the first cluster.
 * Layer ranges come from the clusters' `layers`, or, when every cluster says
 * auto, blocks are split as evenly as possible (earlier clusters take the
 * remainder).
 *
 * Thread: pure functions. Errors: negative NB_E* codes and a message.
 */
#ifndef NB_PIPELINE_JOB_H
#define NB_PIPELINE_JOB_H

#include "daemon/config/config.h"
#include "daemon/pipeline/stage_host.h"
#include "proto/nebula.pb-c.h"

/* Everything a daemon needs to take part in a job. */
typedef struct {
    nb_pipe_layout_t layout;
    int64_t steps;
    int n_daemons;
    char names[NB_SCHED_MAX_STAGES][NB_CFG_NAME_MAX];     /* certificate names */
    char addresses[NB_SCHED_MAX_STAGES][NB_CFG_ADDR_MAX]; /* data-plane host:port */
    char digest[17];                                      /* model config digest, hex */
    bool eval_file;                                       /* job.eval.data: stage 0 holds out its own
                                                             eval_data file (layout.eval_fraction: a
                                                             share of its token file) */
} nb_job_desc_t;

/* Does the job evaluate on held-out tokens (job.eval.fraction or .data)? */
static inline bool nb_job_evaluates(const nb_job_desc_t *d)
{
    return d->layout.eval_fraction > 0.0 || d->eval_file;
}

/* Converts the configuration's model section. Errors: NB_EINVAL. */
int nb_job_model_from_cfg(const nb_cfg_model_t *in, nb_model_config_t *out);
/* Sets model's low-rank split from job.lowrank and checks it against the
 * model (nb_lowrank_check). 0, or NB_EINVAL with the reason in err. */
int nb_job_lowrank_from_cfg(const nb_cfg_job_t *job, nb_model_config_t *model, char *err, size_t errlen);
/* Converts the optimizer section for a job of `steps` steps. */
nb_optim_config_t nb_job_optim_from_cfg(const nb_cfg_optim_t *in, int64_t steps);

/* NULL when a pipeline can train head `head` (lm, mlm: the heads whose
 * batches come from a token file, as in nebula-train), else a static reason
 * naming the head. Both nb_job_from_cfg and nb_job_from_msg refuse the
 * others. */
const char *nb_job_head_unsupported(nb_head_kind_t head);

/* Builds the job a coordinator runs from its configuration; m is the number of
 * micro-batches (must divide job.batch). job_id is given by the caller.
 * Errors: NB_EINVAL with a message (no clusters, bad model, a job.freeze
 * pattern matching no tensor of the model or freezing all of them...). */
int nb_job_from_cfg(const nb_cfg_job_t *job, int m, uint64_t job_id, nb_job_desc_t *out,
                    char *err, size_t errlen);

/* Hex digest (16 chars) of a model config: identical configs, identical digests. */
void nb_job_model_digest(const nb_model_config_t *m, char out[17]);

/* Fills msg (with storage in *store, which must outlive msg) for daemon
 * `daemon`. The caller owns neither; nothing is allocated. */
typedef struct {
    Nebula__ModelConfig model;
    Nebula__OptimConfig optim;
    Nebula__StagePart parts[NB_SCHED_MAX_STAGES];
    Nebula__StagePart *part_ptrs[NB_SCHED_MAX_STAGES];
    Nebula__DaemonInfo daemons[NB_SCHED_MAX_STAGES];
    Nebula__DaemonInfo *daemon_ptrs[NB_SCHED_MAX_STAGES];
    char *freeze_ptrs[NB_FREEZE_MAX];
    char *trainable_ptrs[NB_FREEZE_MAX];
} nb_job_msg_store_t;
void nb_job_to_msg(const nb_job_desc_t *d, int daemon, nb_job_msg_store_t *store, Nebula__Job *msg);

/* Validates a received Job message (it comes from the network: every count,
 * range and string is checked, the freeze patterns as nb_freeze_check
 * does) and converts it. *your_daemon gets the index
 * the coordinator assigned. Errors: NB_EFORMAT / NB_EINVAL with a message. */
int nb_job_from_msg(const Nebula__Job *msg, nb_job_desc_t *out, int *your_daemon, char *err,
                    size_t errlen);

#endif
