/*
 * search.h - the planner's choice: micro-batch count, schedule, codec per
 * direction and layer split, ranked by simulated step time under each
 * stage's memory limit.
 *
 * For every m (divisors of the global batch in [m_min, m_max]), schedule and
 * (forward, backward) codec pair, the layer split is the contiguous split
 * that minimises the slowest stage's compute per micro-batch among the
 * splits that fit every stage's memory (dynamic programming over stages and
 * layers, so faster clusters get more layers), unless the request pins the
 * split. Each candidate is then simulated (sim.h), and the splits of the 32
 * fastest are polished by simulation (one block at a time across a
 * boundary while the step gets faster) before the final ranking.
 *
 * Choice and ties: the fastest predicted step wins; candidates within
 * tie_rel of it are near-ties, decided by fewer micro-batches, then less
 * peak memory (largest stage), then the less lossy codec pair, then the
 * simpler schedule (gpipe, 1f1b, 1f1b:1, ...). docs/planner.md explains why.
 *
 * Thread: pure; the result is owned by the caller (nb_plan_result_free).
 */
#ifndef NB_PLANNER_SEARCH_H
#define NB_PLANNER_SEARCH_H

#include <stdio.h>

#include "daemon/planner/cost.h"
#include "daemon/planner/schedule.h"
#include "daemon/planner/sim.h"

#define NB_PLAN_MAX_CHOICES 16
/* In a request, a 1f1b spec with this extra means "deep enough to hide the
 * links": K = ceil(2 tt / (tf + tb)) from the slowest boundary round trip
 * and the fastest stage on the even split, at least 1 (docs/planner.md). */
#define NB_PLAN_EXTRA_AUTO (-1)

typedef struct {
    nb_cost_model_t model;
    int p;                  /* stages; must equal cost->p */
    int m_min, m_max;       /* 0: 1 and global_batch */
    int nscheds; /* 0: gpipe, 1f1b, 1f1b:1, 1f1b:2, 1f1b:4, 1f1b:auto */
    nb_sched_spec_t scheds[NB_PLAN_MAX_CHOICES];
    int nfwd, nbwd;         /* 0: every codec the cost model knows */
    const char *fwd_codecs[NB_PLAN_MAX_CHOICES];
    const char *bwd_codecs[NB_PLAN_MAX_CHOICES];
    int fixed_layers[NB_COST_MAX_STAGES]; /* all > 0: pinned split; else searched */
    /* U-shape: the last stage holds the head (and loss) and no blocks; it
     * lives on the first stage's daemon. Blocks go to stages 0..p-2. */
    int head_only_last;
    /* When set, placement[s] is the daemon hosting stage s, and memory
     * limits apply per daemon: the limit of the daemon's first stage
     * against the sum of its stages' memory. */
    int use_placement;
    int placement[NB_COST_MAX_STAGES];
    double tie_rel;         /* near-tie window; 0: 0.005 (0.5%) */
    /* Quality budget: codecs whose measured err (nb_cost_codec_t) exceeds
     * it are never candidates, however fast; <= 0: no budget. */
    double max_err;
} nb_plan_req_t;

typedef struct {
    int m;
    double mb_size; /* samples per micro-batch */
    nb_sched_spec_t sched;
    int fwd_codec, bwd_codec; /* indices into cost->codec */
    int layers[NB_COST_MAX_STAGES];
    int use_placement; /* copied from the request */
    int placement[NB_COST_MAX_STAGES];
    double step_time, bubble;
    /* The part of step_time the replicas' gradient all-reduces add (after
     * the last backward; 0 without replicas), and its share of the step. */
    double allreduce_s, allreduce_share;
    double samples_per_s;
    double mem[NB_COST_MAX_STAGES];
    int inflight[NB_COST_MAX_STAGES];
    int feasible;
    /* When not feasible: the stage furthest over its limit, on the split
     * that fits best (the even split when none fits). */
    int oom_stage;
    double oom_need, oom_limit;
} nb_plan_cand_t;

typedef struct {
    nb_plan_cand_t *cand; /* n entries: the choice first, then feasible by
                             step time, then infeasible ones */
    int n;
    int nfeasible;
} nb_plan_result_t;

/* Ranks every candidate. Returns 0 with at least one feasible candidate
 * (cand[0] is the choice); NB_ELIMIT when none fits in memory (err names
 * the stage, what it needs at which m and its limit, for the candidate that
 * comes closest; out still lists them all); NB_EINVAL for a request that
 * does not match the cost model (err says which field); NB_ENOMEM. On
 * error other than NB_ELIMIT, out is empty. err may be NULL. */
int nb_plan_search(const nb_cost_t *cost, const nb_plan_req_t *req, nb_plan_result_t *out,
                   char *err, size_t errlen);
void nb_plan_result_free(nb_plan_result_t *r);

/* The simulator input for one candidate: op times including codec work on
 * the compute thread, wire busy and latency per boundary. With a placement,
 * stages on one daemon share its compute unit and a boundary between two of
 * them costs nothing (tensors stay in memory). */
int nb_plan_sim_input(const nb_cost_t *cost, const nb_cost_model_t *mdl,
                      const nb_plan_cand_t *c, nb_sim_input_t *in);

/* Prints the ranked table (at most max_rows rows, <= 0: all) to f:
 * rank, m, micro-batch size, schedule, codecs, layer split, predicted step
 * time, samples/s, bubble, peak memory per stage; infeasible rows say which
 * stage needs how much. Returns 0 or NB_EIO. */
int nb_plan_print(FILE *f, const nb_cost_t *cost, const nb_plan_result_t *r, int max_rows);

/* Predicts one fully specified plan (a plan pinned in the job config, or
 * one point of a validation sweep): m must divide the global batch, codecs
 * are specs known to cost, layers has cost->p entries summing to
 * mdl->n_layers (each >= 1, except 0 on a head-only last stage; limits are
 * checked per stage, not per daemon). Fills *out (step time, bubble, memory) and returns 0;
 * NB_ELIMIT when a stage does not fit (out filled, err from
 * nb_plan_oom_line: the numbers to refuse the plan with); NB_EINVAL with err
 * naming the bad argument. */
int nb_plan_evaluate(const nb_cost_t *cost, const nb_cost_model_t *mdl, int m,
                     const nb_sched_spec_t *sched, const char *fwd_codec, const char *bwd_codec,
                     const int *layers, nb_plan_cand_t *out, char *err, size_t errlen);

/* For a candidate that does not fit: "stage 1 needs 12.30 GiB at m=8
 * (micro-batch 4, 3 in flight: state 4.10 GiB + stash 8.20 GiB), limit
 * 10.00 GiB". Returns buf. */
const char *nb_plan_oom_line(const nb_cost_model_t *mdl, int p, const nb_plan_cand_t *c,
                             char *buf, size_t len);

/* One line describing a candidate ("m=8 1f1b fwd=int8 bwd=fp32 split=3,3
 * T=1.234s bubble=12.0%"), for logs of old and new plans. */
const char *nb_plan_describe(const nb_cost_t *cost, const nb_plan_cand_t *c, char *buf,
                             size_t len);

#endif
