/*
 * sim.c - one pipeline step in simulated time (see sim.h).
 */
#include "daemon/planner/sim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/planner/sched_exec.h"
#include "kernels/common.h"

static int finite_nonneg(double v) { return isfinite(v) && v >= 0; }

static int input_ok(const nb_sim_input_t *in)
{
    if (in->p < 1 || in->p > NB_SIM_MAX_STAGES || in->m < 1 || in->m > NB_SCHED_MAX_MB)
        return 0;
    for (int s = 0; s < in->p; s++) {
        if (!finite_nonneg(in->tf[s]) || !finite_nonneg(in->tb[s]))
            return 0;
        if (!finite_nonneg(in->tail[s]))
            return 0;
        if (s < in->p - 1 && (!finite_nonneg(in->xf[s]) || !finite_nonneg(in->lf[s]) ||
                              !finite_nonneg(in->xb[s]) || !finite_nonneg(in->lb[s])))
            return 0;
    }
    return 1;
}

static int ev_cmp(const void *pa, const void *pb)
{
    const nb_sim_event_t *a = pa, *b = pb;
    if (a->start != b->start)
        return a->start < b->start ? -1 : 1;
    int ca = a->kind >= NB_SIM_EV_XFER_F, cb = b->kind >= NB_SIM_EV_XFER_F;
    if (ca != cb)
        return ca - cb;
    if (a->where != b->where)
        return a->where - b->where;
    if (a->mb != b->mb)
        return a->mb - b->mb;
    return (int)a->kind - (int)b->kind;
}

int nb_sim_run(const nb_sim_input_t *in, nb_sim_result_t *out, nb_sim_event_t *ev, int ev_cap,
               int *nev)
{
    if (!in || !out || !input_ok(in))
        return NB_EINVAL;
    const int p = in->p, m = in->m;
    int per_stage_max = nb_sched_count(p, m, p > 1 ? 1 : 0);
    size_t pm = (size_t)p * (size_t)m;
    nb_sched_op_t *ops = NULL; /* nu lists of stride ops each, allocated below */
    double *act_arr = malloc(pm * sizeof(double));  /* [s*m+mb], s >= 1 */
    double *grad_arr = malloc(pm * sizeof(double)); /* [s*m+mb], s <= p-2 */
    int nev_total = 2 * m * p + 2 * m * (p - 1);
    nb_sim_event_t *all = malloc((size_t)nev_total * sizeof *all);
    int rc = 0;
    if (!act_arr || !grad_arr || !all) {
        rc = NB_ENOMEM;
        goto out;
    }
    /* Compute units: one per stage, or one per daemon with a placement,
     * whose ops run in the merged order the daemon runs them in. */
    int nu = 0, len[NB_SIM_MAX_STAGES], pos[NB_SIM_MAX_STAGES];
    if (in->use_placement) {
        for (int s = 0; s < p; s++) {
            if (in->placement[s] < 0 || in->placement[s] >= p) {
                rc = NB_EINVAL;
                goto out;
            }
            if (in->placement[s] + 1 > nu)
                nu = in->placement[s] + 1;
        }
    } else {
        nu = p;
    }
    /* A daemon's merged list holds all of its stages' ops. */
    int stride = per_stage_max;
    for (int u = 0; in->use_placement && u < nu; u++) {
        int n = nb_sched_daemon_count(p, m, in->placement, u);
        if (n > stride)
            stride = n;
    }
    ops = malloc((size_t)nu * (size_t)stride * sizeof *ops);
    if (!ops) {
        rc = NB_ENOMEM;
        goto out;
    }
    for (int u = 0; u < nu; u++) {
        nb_sched_op_t *dst = ops + (size_t)u * stride;
        int n;
        if (in->use_placement) {
            n = nb_sched_daemon_count(p, m, in->placement, u);
            if (n == 0) {
                len[u] = pos[u] = 0;
                continue;
            }
            n = nb_sched_build_daemon(&in->sched, p, m, in->placement, u, 0, dst, stride);
        } else {
            n = nb_sched_build_spec(&in->sched, p, m, u, dst, per_stage_max);
        }
        if (n < 0) {
            rc = n;
            goto out;
        }
        len[u] = n;
        pos[u] = 0;
    }
    for (size_t i = 0; i < pm; i++)
        act_arr[i] = grad_arr[i] = -1;
    memset(out, 0, sizeof *out);
    double free_at[NB_SIM_MAX_STAGES] = {0};
    double wire_f[NB_SIM_MAX_STAGES] = {0}, wire_b[NB_SIM_MAX_STAGES] = {0};
    int inflight[NB_SIM_MAX_STAGES] = {0};
    int k = 0, remaining = 0;
    for (int u = 0; u < nu; u++)
        remaining += len[u];
    while (remaining > 0) {
        int progress = 0;
        for (int u = 0; u < nu; u++) {
            const nb_sched_op_t *list = ops + (size_t)u * stride;
            /* Run every op of this unit whose input is known. */
            while (pos[u] < len[u]) {
                const nb_sched_op_t *op = &list[pos[u]];
                int mb = op->mb, s = op->stage;
                if (op->kind == NB_OP_FWD || op->kind == NB_OP_BWD) {
                    int fwd = op->kind == NB_OP_FWD;
                    double ready = 0;
                    if (fwd && s > 0)
                        ready = act_arr[s * m + mb];
                    else if (!fwd && s < p - 1)
                        ready = grad_arr[s * m + mb];
                    if (ready < 0)
                        break; /* not arrived yet */
                    double start = fmax(free_at[u], ready);
                    double dur = fwd ? in->tf[s] : in->tb[s];
                    double end = start + dur;
                    free_at[u] = end;
                    out->busy[s] += dur;
                    all[k++] = (nb_sim_event_t){fwd ? NB_SIM_EV_FWD : NB_SIM_EV_BWD, s, mb,
                                                start, end};
                    if (fwd) {
                        if (++inflight[s] > out->peak_inflight[s])
                            out->peak_inflight[s] = inflight[s];
                    } else {
                        inflight[s]--;
                    }
                    if (end > out->step_time)
                        out->step_time = end;
                    /* The message this op produces: its wire serves in mb order,
                     * which is the order this stage produces them. */
                    if (fwd && s < p - 1) {
                        double leave = fmax(end, wire_f[s]);
                        wire_f[s] = leave + in->xf[s];
                        out->wire_busy[s][0] += in->xf[s];
                        act_arr[(s + 1) * m + mb] = leave + in->xf[s] + in->lf[s];
                        all[k++] = (nb_sim_event_t){NB_SIM_EV_XFER_F, s, mb, leave,
                                                    act_arr[(s + 1) * m + mb]};
                    } else if (!fwd && s > 0) {
                        double leave = fmax(end, wire_b[s - 1]);
                        wire_b[s - 1] = leave + in->xb[s - 1];
                        out->wire_busy[s - 1][1] += in->xb[s - 1];
                        grad_arr[(s - 1) * m + mb] = leave + in->xb[s - 1] + in->lb[s - 1];
                        all[k++] = (nb_sim_event_t){NB_SIM_EV_XFER_B, s - 1, mb, leave,
                                                    grad_arr[(s - 1) * m + mb]};
                    }
                }
                /* Transfer ops are modelled by the wires above. */
                pos[u]++;
                remaining--;
                progress = 1;
            }
        }
        /* The schedules are proven deadlock-free (sched_exec.h); no progress
         * with ops left would be a broken invariant. */
        NB_CHECK(progress);
    }
    NB_CHECK(k == nev_total);
    /* The tails: after a unit's last op, its stages' all-reduces in turn. */
    double t0 = out->step_time;
    for (int u = 0; u < nu; u++) {
        double end = free_at[u];
        for (int s = 0; s < p; s++)
            if ((in->use_placement ? in->placement[s] : s) == u)
                end += in->tail[s];
        if (end > out->step_time)
            out->step_time = end;
    }
    out->tail_exposed = out->step_time - t0;
    double total_busy = 0;
    for (int s = 0; s < p; s++)
        total_busy += out->busy[s];
    out->bubble = out->step_time > 0 ? 1.0 - total_busy / (p * out->step_time) : 0;
    if (ev) {
        qsort(all, (size_t)k, sizeof *all, ev_cmp);
        int keep = k < ev_cap ? k : ev_cap;
        if (keep > 0)
            memcpy(ev, all, (size_t)keep * sizeof *all);
    }
    if (nev)
        *nev = k;
out:
    free(ops);
    free(act_arr);
    free(grad_arr);
    free(all);
    return rc;
}

double nb_sim_closed_gpipe(int p, int m, double tf, double tb, double xf, double lf, double xb,
                           double lb)
{
    if (p == 1)
        return m * (tf + tb);
    return p * (tf + tb) + (m - 1) * (fmax(tf, xf) + fmax(tb, xb)) +
           (p - 1) * (xf + lf + xb + lb);
}

double nb_sim_closed_bubble(int m, double tf, double tb, double T)
{
    return T > 0 ? 1.0 - m * (tf + tb) / T : 0;
}
