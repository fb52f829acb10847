/*
 * electra_model.c - the steady-state model of the ELECTRA topology across
 * clusters (see electra_model.h and docs/planner.md, "ELECTRA topology").
 */
#include "daemon/planner/electra_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "daemon/planner/cost.h"
#include "kernels/common.h"

/* The batch header of docs/electra.md, "What crosses the link". */
#define EM_HEADER_BYTES 28.0

static int bad(char *err, size_t errlen, const char *what, const char *who, int g)
{
    if (err && errlen) {
        if (g >= 0)
            snprintf(err, errlen, "%s %d: %s", who, g, what);
        else
            snprintf(err, errlen, "%s: %s", who, what);
    }
    return NB_EINVAL;
}

static const char *compute_check(const nb_em_compute_t *c)
{
    if (c->devices < 1 || c->devices > 1 << 20)
        return "devices must be 1..2^20";
    if (c->seqs < 1)
        return "seqs must be >= 1";
    if (!(c->flops_per_seq > 0) || !isfinite(c->flops_per_seq))
        return "flops_per_seq must be finite and > 0";
    if (!(c->device_flops > 0) || !isfinite(c->device_flops))
        return "device_flops must be finite and > 0";
    if (!(c->overhead >= 0) || !isfinite(c->overhead))
        return "overhead must be finite and >= 0";
    if (!(c->grad_bytes >= 0) || !isfinite(c->grad_bytes))
        return "grad_bytes must be finite and >= 0";
    if (c->devices > 1 && c->grad_bytes > 0 && (!(c->reduce_bw > 0) || !isfinite(c->reduce_bw)))
        return "reduce_bw must be finite and > 0 with several devices";
    return NULL;
}

/* The replica all-reduce of cost.c (docs/planner.md, "Replicas"), asked
 * through a one-stage cost model so that both models share one formula. */
static double allreduce(const nb_em_compute_t *c)
{
    if (c->devices < 2 || !(c->grad_bytes > 0))
        return 0;
    nb_cost_t *m = calloc(1, sizeof *m);
    if (!m) /* the same formula, should memory run out */
        return 2.0 * (c->devices - 1) / c->devices * c->grad_bytes / c->reduce_bw;
    m->p = 1;
    m->stage[0].replicas = c->devices;
    m->stage[0].reduce_bw = c->reduce_bw;
    double t = nb_cost_allreduce(m, 0, c->grad_bytes);
    free(m);
    return t;
}

double nb_em_compute_time(const nb_em_compute_t *c)
{
    if (!c || compute_check(c))
        return NB_EINVAL;
    int shard = (c->seqs + c->devices - 1) / c->devices;
    return c->overhead + shard * c->flops_per_seq / c->device_flops + allreduce(c);
}

double nb_em_wire_bytes(int n, int T, int w)
{
    double tokens = (double)n * T;
    return EM_HEADER_BYTES + tokens * w + ceil(tokens / 8);
}

const char *nb_em_bound_name(enum nb_em_bound b)
{
    switch (b) {
    case NB_EM_BOUND_DISC: return "disc";
    case NB_EM_BOUND_GEN: return "gen";
    case NB_EM_BOUND_LINK: return "link";
    case NB_EM_BOUND_WINDOW: return "window";
    }
    return "?";
}

int nb_em_predict(const nb_em_job_t *j, nb_em_result_t *out, char *err, size_t errlen)
{
    const char *why;
    if (!j || !out)
        return bad(err, errlen, "no job or no result", "electra model", -1);
    if (j->n_gen < 1 || j->n_gen > NB_EM_MAX_GEN)
        return bad(err, errlen, "n_gen must be 1..8", "electra model", -1);
    if (j->seq_len < 1)
        return bad(err, errlen, "seq_len must be >= 1", "electra model", -1);
    if (j->id_width != 1 && j->id_width != 2 && j->id_width != 4)
        return bad(err, errlen, "id_width must be 1, 2 or 4", "electra model", -1);
    if (j->window < 1)
        return bad(err, errlen, "window must be >= 1", "electra model", -1);
    if ((why = compute_check(&j->disc)))
        return bad(err, errlen, why, "discriminator", -1);
    long sum = 0;
    for (int g = 0; g < j->n_gen; g++) {
        if ((why = compute_check(&j->gen[g])))
            return bad(err, errlen, why, "generator", g);
        const nb_em_link_t *l = &j->link[g];
        if (!(l->latency >= 0) || !isfinite(l->latency) || !(l->bandwidth > 0) || !isfinite(l->bandwidth))
            return bad(err, errlen, "link needs a finite latency >= 0 and bandwidth > 0", "generator", g);
        sum += j->gen[g].seqs;
    }
    if (sum != j->disc.seqs)
        return bad(err, errlen, "seqs must be the sum of the generators' seqs", "discriminator", -1);

    nb_em_result_t r = {0};
    r.t_disc = nb_em_compute_time(&j->disc);
    r.step = r.t_disc;
    r.bound = NB_EM_BOUND_DISC;
    r.bound_gen = -1;
    /* in the order of the tie rule: every generator, then every link, then the window */
    for (int g = 0; g < j->n_gen; g++) {
        r.t_gen[g] = nb_em_compute_time(&j->gen[g]);
        r.batch_bytes[g] = nb_em_wire_bytes(j->gen[g].seqs, j->seq_len, j->id_width);
        r.t_xfer[g] = r.batch_bytes[g] / j->link[g].bandwidth;
        r.t_cycle[g] = (r.t_disc + r.t_gen[g] + r.t_xfer[g] + 2 * j->link[g].latency) / j->window;
    }
    for (int g = 0; g < j->n_gen; g++)
        if (r.t_gen[g] > r.step)
            r.step = r.t_gen[g], r.bound = NB_EM_BOUND_GEN, r.bound_gen = g;
    for (int g = 0; g < j->n_gen; g++)
        if (r.t_xfer[g] > r.step)
            r.step = r.t_xfer[g], r.bound = NB_EM_BOUND_LINK, r.bound_gen = g;
    for (int g = 0; g < j->n_gen; g++)
        if (r.t_cycle[g] > r.step)
            r.step = r.t_cycle[g], r.bound = NB_EM_BOUND_WINDOW, r.bound_gen = g;
    r.tokens_per_s = (double)j->disc.seqs * j->seq_len / r.step;
    *out = r;
    return 0;
}
