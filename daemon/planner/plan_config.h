/*
 * plan_config.h - the job section of a coordinator's YAML config, mapped onto
 * a planner request: model shape, batch, the schedules, codecs and split the
 * operator allows or pins, the topology (chain, or U-shape with the head on
 * the first cluster) and the per-stage memory limit.
 *
 * Thread: no shared state.
 */
#ifndef NB_PLANNER_PLAN_CONFIG_H
#define NB_PLANNER_PLAN_CONFIG_H

#include <stddef.h>

#include "daemon/config/config.h"
#include "daemon/planner/search.h"

/* Pipeline stages the job has: one per cluster in a chain; one more in a
 * U-shape (the head, on the first cluster, as the last stage). */
int nb_plan_config_stages(const nb_cfg_job_t *job);

/* Fills *out from job:
 *   model    GPT blocks: 4h^2 + 2 h d_ff + 9h + d_ff parameters each;
 *            embedding vocab h + max_seq h; head 2h + (tied ? 0 : vocab h)
 *            for lm/mlm, 2h + n_classes (h + 1) for seqcls/tokcls; fp32
 *            AdamW state (16 bytes per parameter); stash and boundary as
 *            nb_cost_model_gpt, with d_ff; with job.lowrank the cut at
 *            the split block's factor is rank-wide (narrow_cut: the
 *            width nb_part_spec_out_width gives the part below it).
 *   m        job.micro_batches pins m when set, else every divisor.
 *   schedule auto: the search's defaults; gpipe or 1f1b: only that one.
 *   codecs   job.planner.codecs (both directions) when given, else the
 *            pinned job.codecs.forward / backward.
 *   split    cluster layer ranges, when given, pin the split.
 *   shape    ushape: head_only_last, placement {0, 1, .., n-1, 0}.
 * Codec strings in *out point into job: keep job alive while out is used.
 * Returns 0 or NB_EINVAL with err naming the config key. */
int nb_plan_req_from_config(const nb_cfg_job_t *job, nb_plan_req_t *out, char *err,
                            size_t errlen);

/* Applies job.planner.stage_memory to every stage of cost whose measured
 * limit is 0 (a limit from measurements, being specific, wins). */
void nb_plan_config_memory(const nb_cfg_job_t *job, nb_cost_t *cost);

#endif
