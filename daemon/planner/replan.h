/*
 * replan.h - when to re-plan: compares each step's measured link bandwidth
 * and stage compute with what the current plan assumed, and asks for a new
 * plan once one quantity has drifted beyond a threshold, in the same
 * direction, for K consecutive steps.
 *
 * Hysteresis: a quantity's streak grows only while it stays beyond the
 * threshold on the same side; one step back inside the band (or across to
 * the other side) restarts it, so noise around the threshold never
 * triggers. After a re-plan the policy waits `cooldown` steps before it may
 * trigger again (the new plan's first steps warm up the cost model).
 *
 * The caller (the coordinator's loop thread) owns the struct; not
 * thread-safe.
 */
#ifndef NB_PLANNER_REPLAN_H
#define NB_PLANNER_REPLAN_H

#include <stddef.h>

#include "daemon/planner/cost.h"
#include "daemon/planner/search.h"

typedef struct {
    double threshold; /* relative drift, e.g. 0.2 = 20%; > 0 */
    int k;            /* consecutive steps; >= 1 */
    int cooldown;     /* steps after a re-plan with no trigger; >= 0 */
} nb_replan_cfg_t;

/* What a plan assumed, or what one step measured. A value <= 0 means
 * unknown / not measured this step and is skipped. */
typedef struct {
    double bandwidth[NB_COST_MAX_STAGES][2]; /* per boundary, NB_DIR_FWD/BWD, bytes/s */
    double compute[NB_COST_MAX_STAGES];      /* per stage, s of compute per step */
} nb_replan_sample_t;

typedef struct {
    nb_replan_cfg_t cfg;
    int p;
    nb_replan_sample_t basis;
    int bw_streak[NB_COST_MAX_STAGES][2]; /* signed: + faster, - slower */
    int cpu_streak[NB_COST_MAX_STAGES];
    int cooldown_left;
    long steps, replans;
    char reason[160];
} nb_replan_t;

/* Starts a policy for a p-stage plan that assumed basis. Returns 0 or
 * NB_EINVAL (threshold <= 0, k < 1, cooldown < 0, p out of range). */
int nb_replan_init(nb_replan_t *r, const nb_replan_cfg_t *cfg, int p,
                   const nb_replan_sample_t *basis);

/* Feeds one step's measurements. Returns 1 when the coordinator should
 * re-plan at the next step boundary (r->reason then says which quantity
 * moved from what to what, for how many steps), else 0. */
int nb_replan_observe(nb_replan_t *r, const nb_replan_sample_t *obs);

/* The coordinator re-planned: new basis, streaks cleared, cooldown starts,
 * the re-plan counter (for metrics) grows by one. */
void nb_replan_accept(nb_replan_t *r, const nb_replan_sample_t *basis);

/* The basis a chosen plan implies: every link direction's bandwidth from
 * cost, and each stage's compute per step, m (tf_s + tb_s) with codec work,
 * as the step reports measure it. Returns 0 or NB_EINVAL. */
int nb_replan_basis_from_plan(const nb_cost_t *cost, const nb_cost_model_t *mdl,
                              const nb_plan_cand_t *plan, nb_replan_sample_t *out);

#endif
