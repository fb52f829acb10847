/*
 * repart.h - layer re-partitioning while a job runs: from each stage's
 * measured compute to the best contiguous layer split for the plan that
 * runs, and the decision to move the weights there (docs/planner.md,
 * "Re-partitioning").
 *
 * A stage's measured forward (or backward) time per micro-batch is one
 * number for its blocks and its fixed work together (the embedding on
 * stage 0, the final LayerNorm, head and loss on the stage holding the
 * head). nb_repart_fit_stage splits it with the fixed work expressed in
 * block equivalents (nb_repart_head_blocks: the head's matrix product
 * against a block's, from the model's shape), so a cluster's per-block
 * speed carries over to any number of blocks. nb_repart_choose then asks
 * the search for the best split of the running plan (same m, schedule and
 * codecs; only the split moves) under every stage's memory limit, and
 * compares its predicted step with the current split's.
 *
 * Hysteresis (nb_repart_observe): a new split is taken only when one is
 * predicted at least min_gain faster in k closed steps in a row (the best
 * split itself may differ between them: near the optimum several are
 * close, and measurements are noisy; the move goes to the newest), and
 * cooldown steps have passed since the last move. A move costs a
 * checkpoint and a restart of the attempt, so small gains are not worth it,
 * and the model of the new split is refitted from its own measurements
 * before the next decision.
 *
 * Measured guard (nb_repart_measure): the model assumes one speed per
 * block per stage, but a stage's speed may change with the number of
 * blocks it holds (a daemon sharing a core runs near full speed while it
 * mostly waits, slower once it holds many blocks), so the predicted gain
 * can be wrong in a way refitting does not fix. The policy therefore keeps
 * every split's measured step time (the caller's median of the steps after
 * the move settled), keyed by the split, and: moves only once the current
 * split has a measurement; never moves to a split measured slower than the
 * current one; and once the split it moved to has a measurement, if that
 * is more than min_gain slower than the split it left, moves back
 * (NB_REPART_BACK, at once, past streak and cooldown) and moves no more in
 * the job (stopped).
 *
 * Thread: pure functions and caller-owned state; not thread-safe.
 */
#ifndef NB_PLANNER_REPART_H
#define NB_PLANNER_REPART_H

#include <stdint.h>

#include "daemon/planner/cost.h"
#include "daemon/planner/search.h"

typedef struct {
    double min_gain; /* predicted relative step-time gain, e.g. 0.10; > 0 */
    int k;           /* consecutive closed steps; >= 1 */
    int cooldown;    /* steps after a move before the next may be decided; >= 0 */
} nb_repart_cfg_t;

#define NB_REPART_MAX_SPLITS 16 /* splits remembered with their measured step; the oldest goes first */

/* nb_repart_observe's answers */
enum { NB_REPART_STAY = 0, NB_REPART_MOVE = 1, NB_REPART_BACK = 2 };

typedef struct {
    int layers[NB_COST_MAX_STAGES];
    double step_s; /* measured step time (s) on this split; > 0 */
} nb_repart_seen_t;

typedef struct {
    nb_repart_cfg_t cfg;
    int p;
    int streak;                      /* steps in a row a split won by min_gain */
    int layers[NB_COST_MAX_STAGES];  /* the newest such split; after a move, its target */
    int64_t last_move;               /* step of the last move; -1 none */
    long moves;
    int cur[NB_COST_MAX_STAGES];     /* the running split (nb_repart_measure); all 0 until told */
    int from[NB_COST_MAX_STAGES];    /* the split the last move left, while on_trial */
    int on_trial;                    /* the last forward move awaits its measurement */
    int stopped;                     /* a move measured worse was undone: no more moves */
    nb_repart_seen_t seen[NB_REPART_MAX_SPLITS];
    int nseen, next_seen;
} nb_repart_t;

/* The best split for one plan, against the current one. */
typedef struct {
    double cur_s, best_s; /* predicted step times (s) */
    double gain;          /* 1 - best_s / cur_s; 0 when no better split fits */
    int layers[NB_COST_MAX_STAGES];
    int changed;          /* layers differ from the current split */
} nb_repart_choice_t;

/* The head's compute per token in block equivalents: the vocabulary
 * product and softmax (2 C V + 5 V) against a block's matrix products and
 * attention (2 (4 C^2 + 2 C dff) + 4 S C). d_ff <= 0 means 4 C. */
double nb_repart_head_blocks(int d_model, int d_ff, int vocab, int seq_len);

/* Splits a stage's measured time line t(n) (its blocks and its fixed work
 * together) into a per-block line and a fixed line: per_block = t / (layers
 * + fixed_blocks), fixed = per_block * fixed_blocks. layers >= 0 and
 * layers + fixed_blocks > 0, else NB_EINVAL. */
int nb_repart_fit_stage(const nb_fit_t *t, int layers, double fixed_blocks, nb_fit_t *per_block,
                        nb_fit_t *fixed);

/* The best split for the plan (m, sched, fwd, bwd) with the current split
 * cur (req supplies the model, p, U-shape and placement; its m, schedule,
 * codec and split fields are ignored). Fills *out (gain 0 and layers = cur
 * when no feasible split beats cur). Returns 0, or NB_EINVAL with err
 * (the current plan does not evaluate: unknown codec, bad split), NB_ENOMEM. */
int nb_repart_choose(const nb_cost_t *cost, const nb_plan_req_t *req, int m, const nb_sched_spec_t *sched,
                     const char *fwd, const char *bwd, const int *cur, nb_repart_choice_t *out, char *err,
                     size_t errlen);

/* Starts the policy for p stages. NB_EINVAL for a bad cfg or p. */
int nb_repart_init(nb_repart_t *r, const nb_repart_cfg_t *cfg, int p);

/* Tells the policy the running split (p entries) and, when step_s > 0,
 * its measured step time (replacing an older figure for that split).
 * Call it before each nb_repart_observe. NB_EINVAL for a non-finite
 * step_s. */
int nb_repart_measure(nb_repart_t *r, const int *layers, double step_s);

/* The measured step time of a split (p entries); -1 when it has none. */
double nb_repart_measured(const nb_repart_t *r, const int *layers);

/* One closed step's choice. NB_REPART_MOVE when the split should move now
 * to r->layers (= c->layers; the streak restarts, the cooldown begins at
 * step, the move is on trial until the new split is measured);
 * NB_REPART_BACK when the split on trial measured more than min_gain
 * slower than the one it left: move back to r->layers (that one) and stop
 * for the job; else NB_REPART_STAY. A choice below min_gain, or towards a
 * split measured slower than the current one, restarts the streak; no
 * forward move before the current split has a measurement. */
int nb_repart_observe(nb_repart_t *r, int64_t step, const nb_repart_choice_t *c);

#endif
