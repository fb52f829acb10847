/*
 * repart.c - the best layer split from measured stage compute, and when to
 * move to it (see repart.h).
 */
#include "daemon/planner/repart.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "kernels/common.h"

double nb_repart_head_blocks(int d_model, int d_ff, int vocab, int seq_len)
{
    double c = d_model, v = vocab, s = seq_len, f = d_ff > 0 ? d_ff : 4.0 * d_model;
    double block = 2.0 * (4.0 * c * c + 2.0 * c * f) + 4.0 * s * c;
    return block > 0 ? (2.0 * c * v + 5.0 * v) / block : 0;
}

int nb_repart_fit_stage(const nb_fit_t *t, int layers, double fixed_blocks, nb_fit_t *per_block, nb_fit_t *fixed)
{
    double units = layers + fixed_blocks;
    if (layers < 0 || !(fixed_blocks >= 0) || !(units > 0) || !isfinite(t->a) || !isfinite(t->b))
        return NB_EINVAL;
    *per_block = (nb_fit_t){ t->a / units, t->b / units };
    *fixed = (nb_fit_t){ per_block->a * fixed_blocks, per_block->b * fixed_blocks };
    return 0;
}

int nb_repart_choose(const nb_cost_t *cost, const nb_plan_req_t *req, int m, const nb_sched_spec_t *sched,
                     const char *fwd, const char *bwd, const int *cur, nb_repart_choice_t *out, char *err,
                     size_t errlen)
{
    memset(out, 0, sizeof *out);
    int p = cost->p;
    if (p < 1 || p > NB_COST_MAX_STAGES || req->p != p) {
        if (err && errlen)
            snprintf(err, errlen, "repartition: the request has %d stages, the cost model %d", req->p, p);
        return NB_EINVAL;
    }
    memcpy(out->layers, cur, (size_t)p * sizeof *cur);
    nb_plan_cand_t now;
    int rc = nb_plan_evaluate(cost, &req->model, m, sched, fwd, bwd, cur, &now, err, errlen);
    if (rc == NB_ELIMIT)
        now.step_time = INFINITY; /* the current split no longer fits: any that does is better */
    else if (rc)
        return rc;
    out->cur_s = now.step_time;
    out->best_s = now.step_time;

    /* the running plan with the split left to the search */
    nb_plan_req_t q = *req;
    q.m_min = q.m_max = m;
    q.nscheds = 1;
    q.scheds[0] = *sched;
    q.nfwd = q.nbwd = 1;
    q.fwd_codecs[0] = fwd;
    q.bwd_codecs[0] = bwd;
    q.max_err = 0; /* the codecs run already: the budget chose them */
    memset(q.fixed_layers, 0, sizeof q.fixed_layers);
    nb_plan_result_t r;
    rc = nb_plan_search(cost, &q, &r, NULL, 0);
    if (rc == NB_ENOMEM)
        return rc;
    if (rc == 0 && r.nfeasible > 0 && r.cand[0].feasible && r.cand[0].step_time < now.step_time) {
        out->best_s = r.cand[0].step_time;
        memcpy(out->layers, r.cand[0].layers, (size_t)p * sizeof *cur);
        out->gain = isfinite(now.step_time) ? 1.0 - out->best_s / now.step_time : 1.0;
        out->changed = memcmp(out->layers, cur, (size_t)p * sizeof *cur) != 0;
        if (!out->changed)
            out->gain = 0;
    }
    if (rc == 0 || rc == NB_ELIMIT)
        nb_plan_result_free(&r);
    return 0;
}

int nb_repart_init(nb_repart_t *r, const nb_repart_cfg_t *cfg, int p)
{
    if (!(cfg->min_gain > 0) || cfg->min_gain >= 1 || cfg->k < 1 || cfg->cooldown < 0 || p < 1 ||
        p > NB_COST_MAX_STAGES)
        return NB_EINVAL;
    memset(r, 0, sizeof *r);
    r->cfg = *cfg;
    r->p = p;
    r->last_move = -1;
    return 0;
}

static int same_split(const nb_repart_t *r, const int *a, const int *b)
{
    return memcmp(a, b, (size_t)r->p * sizeof *a) == 0;
}

static nb_repart_seen_t *seen_find(const nb_repart_t *r, const int *layers)
{
    for (int i = 0; i < r->nseen; i++)
        if (same_split(r, r->seen[i].layers, layers))
            return (nb_repart_seen_t *)&r->seen[i];
    return NULL;
}

int nb_repart_measure(nb_repart_t *r, const int *layers, double step_s)
{
    if (!isfinite(step_s))
        return NB_EINVAL;
    memcpy(r->cur, layers, (size_t)r->p * sizeof *layers);
    if (!(step_s > 0))
        return 0;
    nb_repart_seen_t *e = seen_find(r, layers);
    if (!e) {
        e = &r->seen[r->next_seen];
        r->next_seen = (r->next_seen + 1) % NB_REPART_MAX_SPLITS;
        if (r->nseen < NB_REPART_MAX_SPLITS)
            r->nseen++;
        memcpy(e->layers, layers, (size_t)r->p * sizeof *layers);
    }
    e->step_s = step_s;
    return 0;
}

double nb_repart_measured(const nb_repart_t *r, const int *layers)
{
    const nb_repart_seen_t *e = seen_find(r, layers);
    return e ? e->step_s : -1;
}

int nb_repart_observe(nb_repart_t *r, int64_t step, const nb_repart_choice_t *c)
{
    if (r->stopped)
        return NB_REPART_STAY;
    double now = nb_repart_measured(r, r->cur);
    if (r->on_trial && now > 0) {
        /* the split moved to has its measurement: judge the move by it,
         * not by the model that proposed it */
        double before = nb_repart_measured(r, r->from);
        r->on_trial = 0;
        if (before > 0 && now > before * (1 + r->cfg.min_gain)) {
            memcpy(r->layers, r->from, (size_t)r->p * sizeof *r->layers);
            r->streak = 0;
            r->stopped = 1;
            r->last_move = step;
            r->moves++;
            return NB_REPART_BACK;
        }
    }
    if (!c->changed || !(c->gain >= r->cfg.min_gain)) {
        r->streak = 0;
        return NB_REPART_STAY;
    }
    double there = nb_repart_measured(r, c->layers);
    if (there > 0 && now > 0 && there >= now) {
        r->streak = 0; /* run already, and slower: the prediction is wrong */
        return NB_REPART_STAY;
    }
    /* the best split may change from step to step (measurements are
     * noisy, and near the optimum several splits are close); what must
     * last is that some split beats the current one by min_gain. The move
     * goes to the newest best. */
    memcpy(r->layers, c->layers, (size_t)r->p * sizeof *c->layers);
    r->streak++;
    if (r->streak < r->cfg.k || (r->last_move >= 0 && step - r->last_move < r->cfg.cooldown) || !(now > 0))
        return NB_REPART_STAY;
    r->streak = 0;
    r->last_move = step;
    r->moves++;
    /* on trial: the target is judged by its own steps from now on (an
     * older figure for it, from before, does not count) */
    memcpy(r->from, r->cur, (size_t)r->p * sizeof *r->cur);
    r->on_trial = 1;
    nb_repart_seen_t *e = seen_find(r, r->layers);
    if (e) {
        *e = r->seen[r->nseen - 1]; /* the last takes its place */
        r->nseen--;
        r->next_seen = r->nseen;
    }
    return NB_REPART_MOVE;
}
