/*
 * coord_plan.h - the coordinator's planning glue: turns what the stage
 * daemons measure (link probes when the links come up, per-micro-batch
 * timings and passive link estimates in every step report) into the
 * planner's cost model (daemon/planner/cost.h), chooses each step's plan
 * (m, schedule, codec per direction) with nb_plan_search, and re-plans when
 * a link or a stage drifts (daemon/planner/replan.h).
 *
 * Life of a job with the planner on (docs/planner.md, "In the coordinator"):
 *   profiling  the first steps run at two micro-batch sizes (step 0 is a
 *              warm-up whose compute is not used), so every stage's forward
 *              and backward time gets a line t(n) = a + b n;
 *   planned    the search over m (divisors of job.batch), the schedules and
 *              the codec pairs the job allows, on the split the Job fixed
 *              (weights cannot move after the Job is sent), under
 *              job.planner.stage_memory;
 *   re-planned when nb_replan_observe fires: the cost model takes the drift,
 *              the search runs again at the next step boundary;
 *   pinned     an operator (or a validation sweep) forced a plan through
 *              the status socket ("plan-pin"); the planner keeps measuring.
 * Every closed step also refines the model: per stage and micro-batch size an
 * EMA of the measured times, fitted by least squares; before every search
 * the links' per-message cost is calibrated against the plans run so far.
 *
 * Thread: the coordinator's loop thread only; not thread-safe. Ownership:
 * the caller owns the nb_cplan_t (nb_cplan_free); borrowed inputs are noted.
 */
#ifndef NB_COORD_PLAN_H
#define NB_COORD_PLAN_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/config/config.h"
#include "daemon/pipeline/job.h"
#include "daemon/planner/search.h"
#include "proto/nebula.pb-c.h"

typedef struct nb_cplan nb_cplan_t;

/* Probe size the coordinator asks each stage daemon to send over each data
 * link when it comes up (Job.probe_bytes). */
#define NB_CPLAN_PROBE_BYTES (4u << 20)

/* One step's plan. */
typedef struct {
    int m;                             /* micro-batches */
    int mb_size;                       /* sequences per micro-batch: batch / m */
    nb_sched_spec_t sched;
    char fwd[NB_CFG_SPEC_MAX];         /* codec specs as the job config spells them */
    char bwd[NB_CFG_SPEC_MAX];
    double pred_step_s;                /* simulated step time; < 0 unknown (profiling) */
    double pred_bubble;                /* < 0 unknown */
    const char *why;                   /* "profiling", "planned", "re-planned", "pinned" (static) */
} nb_cplan_step_t;

/* True when the job leaves the planner something to choose: planner enabled
 * and micro_batches auto, schedule auto, or a list of planner codecs. When
 * false the coordinator runs the job's fixed plan exactly as without a
 * planner (no probes, no extra steps). */
bool nb_cplan_wanted(const nb_cfg_job_t *job);

/* Creates the planner for job (borrowed; must outlive the planner) laid out
 * as desc (copied). m0 is the micro-batch count the Job was sent with; it
 * is the first profiling size. Codecs the job allows are calibrated here
 * once (encode and decode of a boundary-sized tensor on the CPU backend:
 * ratio, speed and round-trip error), speed to be refined from reports.
 * The search skips codecs over job.planner.max_codec_error. Errors: NB_EINVAL with err
 * naming the config key (e.g. an unknown codec), NB_ENOMEM. */
int nb_cplan_new(const nb_cfg_job_t *job, const nb_job_desc_t *desc, int m0, nb_cplan_t **out,
                 char *err, size_t errlen);
void nb_cplan_free(nb_cplan_t *cp);

/* A link probe result from stage daemon `from` about its link to `to`
 * (daemon indices): round trip in ms, and goodput from -> to in bytes/s
 * (<= 0: not measured). Sets the latency and bandwidth of every boundary
 * whose stages sit on these daemons. Out-of-range indices are ignored, and
 * so are non-finite or absurd values (the numbers come from a peer). */
void nb_cplan_link_probe(nb_cplan_t *cp, int from, int to, double rtt_ms, double bytes_per_s);

/* Stage daemon `daemon` runs its stages on `replicas` devices each (>= 1,
 * checked by the caller, nb_replica_check) and reduces gradients between
 * them at reduce_bw bytes/s (0: unknown, NB_COST_REDUCE_BW_CPU is assumed).
 * Sets the replica model of every stage it hosts (docs/planner.md,
 * "Replicas"); forgets the compute measured so far for those stages when the
 * count changes (a daemon restarted with other devices). */
void nb_cplan_replicas(nb_cplan_t *cp, int daemon, int replicas, double reduce_bw);

/* Stage daemon `daemon` runs on a device with `bytes` of memory for its
 * stages (the free memory it reported plus what its model state holds
 * already; docs/pipeline.md, "GPU stages"). Sets the memory limit of every stage
 * it hosts to the smaller of that and job.planner.stage_memory (when set);
 * bytes <= 0 or not finite (a peer's number) restores the configured
 * limit. Returns the limit set, 0 for none. */
double nb_cplan_device_memory(nb_cplan_t *cp, int daemon, double bytes);

/* Takes one daemon's report for the step in flight (the step the last
 * nb_cplan_plan call returned): micro-batch timings per stage and the
 * passive link estimates (Report.links). The report is only read. Entries
 * naming a stage or daemon outside the job are ignored. */
void nb_cplan_report(nb_cplan_t *cp, int daemon, const Nebula__Report *r);

/* Closes the step: wall_s is the coordinator's step time (plan sent -> last
 * report), stage_s the longest stage step (Report.step_ns). Refines the cost
 * model, records the step in the plan's history, and feeds the re-plan
 * policy; when it fires the next nb_cplan_plan re-plans. */
void nb_cplan_step_done(nb_cplan_t *cp, int64_t step, double wall_s, double stage_s);

/* The plan for `step` (call once per step, in order, before sending it).
 * Logs every plan change with its prediction (nb_plan_describe), and on a
 * re-plan the old plan with its old and current predictions. Returns 0;
 * if a search fails (e.g. nothing fits in memory) it logs why and keeps
 * the previous plan (still 0). */
int nb_cplan_plan(nb_cplan_t *cp, int64_t step, nb_cplan_step_t *out);

/* Pins the plan from the next step on (pin != NULL: m, sched, fwd, bwd are
 * read) or returns to planning (pin == NULL). Checks m divides the batch,
 * the codecs are allowed and the plan fits in memory (nb_plan_evaluate).
 * Returns 0, or NB_EINVAL / NB_ELIMIT with err saying why. */
int nb_cplan_pin(nb_cplan_t *cp, const nb_cplan_step_t *pin, char *err, size_t errlen);

/* Re-plans so far (for nebula_replans_total). */
long nb_cplan_replans(const nb_cplan_t *cp);

/* The status socket's "plan" reply for the current measurements: the ranked
 * candidates ("table" as text, "candidates" as objects, at most max_rows,
 * <= 0: 20), the current plan, the cost model ("measurements") and the
 * measured history of every plan run so far, each with its prediction from
 * the current model. bandwidth_mbit > 0 asks "what if every link ran at
 * this rate" (the job's own plan is not changed); 0 keeps the measured
 * links. Reads cp only (the search runs on a copy of the cost model), in
 * coord_plan_json.c; one search, about 20 ms for a 4-stage job on a
 * 2-core machine. New reference; NULL with err on failure (a negative or
 * non-finite bandwidth, a failed search). */
json_t *nb_cplan_json(const nb_cplan_t *cp, int max_rows, double bandwidth_mbit, char *err, size_t errlen);

/* Re-partitioning (job.planner.repartition; docs/planner.md,
 * "Re-partitioning"), after nb_cplan_step_done of `step`: 1 when the
 * measured stage speeds call for another layer split now (predicted at
 * least job.planner.repartition_min_gain faster for the running plan,
 * under every stage's memory limit, the same split for
 * job.planner.replan_steps steps in a row, and not within the cooldown of
 * the last move); layers (p entries) gets it, why a line for the log.
 * Else 0. */
int nb_cplan_repart_check(nb_cplan_t *cp, int64_t step, int *layers, char *why, size_t whylen);

/* The job now runs with desc's layer split (a re-partition took effect):
 * the planner pins it, forgets the per-size measurements of the old split
 * (the per-block fits stay until the new split's steps refit them) and
 * re-plans at the next step. */
void nb_cplan_set_split(nb_cplan_t *cp, const nb_job_desc_t *desc);

/* Re-partitions decided so far. */
long nb_cplan_repartitions(const nb_cplan_t *cp);

/* The cost model as it stands (borrowed; valid until the next call). */
const nb_cost_t *nb_cplan_cost(const nb_cplan_t *cp);

#endif
