/*
 * replan.c - drift detection with hysteresis (see replan.h).
 */
#include "daemon/planner/replan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/common.h"

int nb_replan_init(nb_replan_t *r, const nb_replan_cfg_t *cfg, int p,
                   const nb_replan_sample_t *basis)
{
    if (!r || !cfg || !basis || !(cfg->threshold > 0) || cfg->k < 1 || cfg->cooldown < 0 ||
        p < 1 || p > NB_COST_MAX_STAGES)
        return NB_EINVAL;
    memset(r, 0, sizeof *r);
    r->cfg = *cfg;
    r->p = p;
    r->basis = *basis;
    return 0;
}

/* Updates one signed streak; returns its new value. */
static int step_streak(int streak, double planned, double seen, double thr)
{
    if (!(planned > 0) || !(seen > 0) || !isfinite(seen))
        return streak; /* not measured this step: no evidence either way */
    double rel = seen / planned - 1;
    if (rel > thr)
        return streak > 0 ? streak + 1 : 1;
    if (rel < -thr)
        return streak < 0 ? streak - 1 : -1;
    return 0;
}

int nb_replan_observe(nb_replan_t *r, const nb_replan_sample_t *obs)
{
    r->steps++;
    double thr = r->cfg.threshold;
    int fire = 0;
    r->reason[0] = 0;
    for (int s = 0; s + 1 < r->p; s++)
        for (int d = 0; d < 2; d++) {
            int *st = &r->bw_streak[s][d];
            *st = step_streak(*st, r->basis.bandwidth[s][d], obs->bandwidth[s][d], thr);
            if (!fire && abs(*st) >= r->cfg.k) {
                fire = 1;
                double a = r->basis.bandwidth[s][d], b = obs->bandwidth[s][d];
                snprintf(r->reason, sizeof r->reason,
                         "link %d-%d %s bandwidth %.3g -> %.3g Mbit/s (%+.0f%%) for %d steps", s,
                         s + 1, d == NB_DIR_FWD ? "forward" : "backward", a * 8e-6, b * 8e-6,
                         100 * (b / a - 1), abs(*st));
            }
        }
    for (int s = 0; s < r->p; s++) {
        int *st = &r->cpu_streak[s];
        *st = step_streak(*st, r->basis.compute[s], obs->compute[s], thr);
        if (!fire && abs(*st) >= r->cfg.k) {
            fire = 1;
            double a = r->basis.compute[s], b = obs->compute[s];
            snprintf(r->reason, sizeof r->reason,
                     "stage %d compute %.4g -> %.4g s per step (%+.0f%%) for %d steps", s, a, b,
                     100 * (b / a - 1), abs(*st));
        }
    }
    if (r->cooldown_left > 0) {
        r->cooldown_left--;
        r->reason[0] = 0;
        return 0;
    }
    return fire;
}

void nb_replan_accept(nb_replan_t *r, const nb_replan_sample_t *basis)
{
    r->basis = *basis;
    memset(r->bw_streak, 0, sizeof r->bw_streak);
    memset(r->cpu_streak, 0, sizeof r->cpu_streak);
    r->cooldown_left = r->cfg.cooldown;
    r->replans++;
}

int nb_replan_basis_from_plan(const nb_cost_t *cost, const nb_cost_model_t *mdl,
                              const nb_plan_cand_t *plan, nb_replan_sample_t *out)
{
    nb_sim_input_t in;
    int rc = nb_plan_sim_input(cost, mdl, plan, &in);
    if (rc < 0)
        return rc;
    memset(out, 0, sizeof *out);
    for (int s = 0; s < cost->p; s++) {
        out->compute[s] = plan->m * (in.tf[s] + in.tb[s]);
        if (s + 1 < cost->p)
            for (int d = 0; d < 2; d++)
                out->bandwidth[s][d] = cost->link[s].dir[d].bandwidth;
    }
    return 0;
}
