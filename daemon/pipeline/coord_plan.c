/*
 * coord_plan.c - the coordinator's planning glue: measurements -> cost
 * model -> plan per step, re-planning on drift (see coord_plan.h).
 */
#include "daemon/pipeline/coord_plan.h"
#include "daemon/pipeline/coord_calib.h"
#include "daemon/pipeline/coord_plan_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/log.h"
#include "daemon/planner/plan_config.h"
#include "daemon/planner/replan.h"
#include "daemon/planner/repart.h"
#include "kernels/codec/codec.h"
#include "kernels/common.h"


static int fail(char *err, size_t len, int rc, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t len, int rc, const char *fmt, ...)
{
    if (err && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, len, fmt, ap);
        va_end(ap);
    }
    return rc;
}

bool nb_cplan_wanted(const nb_cfg_job_t *job)
{
    return job->planner.enabled && (job->micro_batches <= 0 || job->schedule == NB_CFG_SCHED_AUTO ||
                                    job->planner.n_codecs > 0 || job->planner.repartition);
}

static int add_codec(nb_cplan_t *cp, const char *text, int rows, char *err, size_t errlen)
{
    if (nb_cost_codec_find(&cp->cost, text))
        return 0;
    if (cp->cost.ncodecs >= NB_COST_MAX_CODECS)
        return fail(err, errlen, NB_EINVAL, "job.planner.codecs: more than %d codecs", NB_COST_MAX_CODECS);
    int rc = nb_cplan_calibrate(text, rows, cp->dmodel, &cp->cost.codec[cp->cost.ncodecs],
                       &cp->cost.codec_err[cp->cost.ncodecs], err, errlen);
    if (rc == 0)
        cp->cost.ncodecs++;
    return rc;
}

/* ---- construction ------------------------------------------------------------ */

static int nearest_other_divisor(int batch, int m0)
{
    int best = 0;
    for (int m = 1; m <= batch; m++)
        if (batch % m == 0 && m != m0 && (!best || abs(m - 2 * m0) < abs(best - 2 * m0)))
            best = m;
    return best;
}

/* True when codec `spec` (calibrated) is within the request's budget. */
static bool within_budget(const nb_cplan_t *cp, const char *spec)
{
    const nb_cost_codec_t *c = nb_cost_codec_find(&cp->cost, spec);
    return !c || cp->req.max_err <= 0 || cp->cost.codec_err[c - cp->cost.codec] <= cp->req.max_err;
}

/* The profiling steps' codec: want when listed and within the budget, else
 * the first listed codec within it (NULL: none is; want when no list). */
static const char *pick_codec(const nb_cplan_t *cp, const char *const *list, int n, const char *want)
{
    for (int i = 0; i < n; i++)
        if (strcmp(list[i], want) == 0 && within_budget(cp, want))
            return want;
    for (int i = 0; i < n; i++)
        if (within_budget(cp, list[i]))
            return list[i];
    return n > 0 ? NULL : want;
}

int nb_cplan_new(const nb_cfg_job_t *job, const nb_job_desc_t *desc, int m0, nb_cplan_t **out, char *err,
                 size_t errlen)
{
    *out = NULL;
    nb_cplan_t *cp = calloc(1, sizeof *cp);
    if (!cp)
        return NB_ENOMEM;
    cp->job = job;
    cp->desc = *desc;
    const nb_pipe_layout_t *l = &desc->layout;
    int rc = nb_plan_req_from_config(job, &cp->req, err, errlen);
    if (rc)
        goto err;
    cp->p = l->p;
    cp->batch = (int)job->batch;
    cp->seq = l->seq_len;
    cp->dmodel = l->model.d_model;
    if (cp->req.p != cp->p || m0 < 1 || cp->batch % m0) {
        rc = fail(err, errlen, NB_EINVAL, "job: the planner sees %d stages, the layout %d (m0 %d, batch %d)",
                  cp->req.p, cp->p, m0, cp->batch);
        goto err;
    }
    /* the Job fixes the layer ranges: the split is pinned */
    for (int s = 0; s < cp->p; s++)
        cp->req.fixed_layers[s] = l->parts[s].last - l->parts[s].first;
    cp->cost.p = cp->p;
    for (int s = 0; s < cp->p; s++) {
        snprintf(cp->cost.stage[s].name, sizeof cp->cost.stage[s].name, "%s",
                 desc->names[l->placement[s]]);
        if (s + 1 < cp->p)
            for (int d = 0; d < 2; d++)
                cp->cost.link[s].dir[d] = (nb_cost_dir_t){ .latency = 0, .bandwidth = DEFAULT_BW, .overhead = 0 };
    }
    nb_plan_config_memory(job, &cp->cost);
    int rows = (cp->batch / m0) * cp->seq;
    for (int i = 0; rc == 0 && i < cp->req.nfwd; i++)
        rc = add_codec(cp, cp->req.fwd_codecs[i], rows, err, errlen);
    for (int i = 0; rc == 0 && i < cp->req.nbwd; i++)
        rc = add_codec(cp, cp->req.bwd_codecs[i], rows, err, errlen);
    /* the job's own codecs too: an operator may pin them (plan-pin) even
     * when the planner chooses from another list */
    if (rc == 0 && job->codecs.forward[0])
        rc = add_codec(cp, job->codecs.forward, rows, err, errlen);
    if (rc == 0 && job->codecs.backward[0])
        rc = add_codec(cp, job->codecs.backward, rows, err, errlen);
    if (rc == 0 && cp->cost.ncodecs == 0)
        rc = add_codec(cp, "fp32", rows, err, errlen);
    if (rc)
        goto err;
    /* profiling: step 0 warms up, then one step at each of two sizes */
    cp->prof_m[0] = m0;
    cp->nprof = 1;
    if (cp->req.m_min == 0 || cp->req.m_min != cp->req.m_max) {
        int m1 = nearest_other_divisor(cp->batch, m0);
        if (m1 > 0)
            cp->prof_m[cp->nprof++] = m1;
    }
    cp->profile_end = 1 + cp->nprof;
    nb_cplan_step_t *c = &cp->cur;
    c->m = m0;
    c->mb_size = cp->batch / m0;
    c->sched = cp->req.nscheds == 1 ? cp->req.scheds[0] : (nb_sched_spec_t){ NB_SCHED_1F1B, 0 };
    const char *pf = pick_codec(cp, cp->req.fwd_codecs, cp->req.nfwd,
                                job->codecs.forward[0] ? job->codecs.forward : "fp32");
    const char *pb = pick_codec(cp, cp->req.bwd_codecs, cp->req.nbwd,
                                job->codecs.backward[0] ? job->codecs.backward : "fp32");
    if (!pf || !pb) {
        rc = fail(err, errlen, NB_EINVAL,
                  "job.planner.max_codec_error: every %s codec in job.planner.codecs has a round-trip error "
                  "over %g (docs/planner.md, \"Codec quality\")",
                  pf ? "backward" : "forward", cp->req.max_err);
        goto err;
    }
    snprintf(c->fwd, sizeof c->fwd, "%s", pf);
    snprintf(c->bwd, sizeof c->bwd, "%s", pb);
    if (!nb_cost_codec_find(&cp->cost, c->fwd) || !nb_cost_codec_find(&cp->cost, c->bwd)) {
        rc = fail(err, errlen, NB_EINVAL, "job.codecs: %s / %s are not among the planner's codecs", c->fwd, c->bwd);
        goto err;
    }
    c->pred_step_s = c->pred_bubble = -1;
    c->why = "profiling";
    cp->rcfg.threshold = job->planner.replan_threshold > 0 ? job->planner.replan_threshold : 0.2;
    cp->rcfg.k = job->planner.replan_steps > 0 ? (int)job->planner.replan_steps : 5;
    cp->rcfg.cooldown = 2;
    cp->head_blocks = nb_repart_head_blocks(l->model.d_model, l->model.d_ff, l->model.vocab, l->seq_len);
    if (job->planner.repartition) {
        /* k steps of the same better split; then the new split's own
         * measurements (a median over SIZE_OBS steps) settle first */
        nb_repart_cfg_t rc2 = { .min_gain = job->planner.repartition_min_gain, .k = cp->rcfg.k,
                                .cooldown = 2 * (cp->rcfg.k + SIZE_OBS) };
        if (nb_repart_init(&cp->repart, &rc2, cp->p) == 0)
            cp->repart_on = true;
    }
    *out = cp;
    return 0;
err:
    free(cp);
    return rc;
}

void nb_cplan_free(nb_cplan_t *cp)
{
    free(cp);
}

long nb_cplan_replans(const nb_cplan_t *cp) { return cp->replans; }
const nb_cost_t *nb_cplan_cost(const nb_cplan_t *cp) { return &cp->cost; }

/* ---- measurements ------------------------------------------------------------ */

void nb_cplan_link_probe(nb_cplan_t *cp, int from, int to, double rtt_ms, double bytes_per_s)
{
    const nb_pipe_layout_t *l = &cp->desc.layout;
    if (from < 0 || to < 0 || from >= l->n_daemons || to >= l->n_daemons || from == to)
        return;
    if (!isfinite(rtt_ms) || rtt_ms > 60e3)
        rtt_ms = 0; /* a peer's number, not trusted blindly */
    if (!isfinite(bytes_per_s) || bytes_per_s > 1e13)
        bytes_per_s = 0;
    for (int s = 0; s + 1 < cp->p; s++) {
        int dir;
        if (l->placement[s] == from && l->placement[s + 1] == to)
            dir = NB_DIR_FWD;
        else if (l->placement[s] == to && l->placement[s + 1] == from)
            dir = NB_DIR_BWD;
        else
            continue;
        nb_cost_dir_t *d = &cp->cost.link[s].dir[dir];
        if (rtt_ms > 0)
            d->latency = rtt_ms / 2e3;
        if (bytes_per_s > 0) {
            d->bandwidth = bytes_per_s;
            cp->probe_bw[s][dir] = bytes_per_s;
            cp->link_measured[s][dir] = true;
        }
    }
}

void nb_cplan_replicas(nb_cplan_t *cp, int daemon, int replicas, double reduce_bw)
{
    if (daemon < 0 || daemon >= cp->desc.layout.n_daemons || replicas < 1)
        return;
    for (int s = 0; s < cp->p; s++) {
        if (cp->desc.layout.placement[s] != daemon)
            continue;
        nb_cost_stage_t *st = &cp->cost.stage[s];
        int was = st->replicas > 1 ? st->replicas : 1;
        if (was != replicas)
            cp->npts[s] = 0; /* the sizes seen were shards of another split */
        st->replicas = replicas;
        st->reduce_bw = reduce_bw > 0 ? reduce_bw : 0;
    }
}

double nb_cplan_device_memory(nb_cplan_t *cp, int daemon, double bytes)
{
    if (daemon < 0 || daemon >= cp->desc.layout.n_daemons)
        return 0;
    double cfg = (double)cp->job->planner.stage_memory_bytes;
    double lim = cfg > 0 ? cfg : 0;
    if (isfinite(bytes) && bytes > 0 && bytes < 1e18 && (lim <= 0 || bytes < lim))
        lim = bytes;
    for (int s = 0; s < cp->p; s++)
        if (cp->desc.layout.placement[s] == daemon)
            cp->cost.stage[s].mem_limit = lim;
    return lim;
}

/* Samples the slowest replica of stage s runs of a micro-batch of n: the
 * per-device size the compute fits are kept at. */
static int shard_n(const nb_cplan_t *cp, int s, int n)
{
    int r = nb_cost_replicas(&cp->cost, s);
    return (n + r - 1) / r;
}

void nb_cplan_report(nb_cplan_t *cp, int daemon, const Nebula__Report *r)
{
    for (size_t i = 0; i < r->n_timings; i++) {
        const Nebula__MicroBatchTiming *t = r->timings[i];
        if (t->stage >= (uint32_t)cp->p)
            continue;
        int s = (int)t->stage;
        cp->acc_f[s] += (double)t->forward_ns / 1e9;
        cp->acc_b[s] += (double)t->backward_ns / 1e9;
        cp->acc_enc[s] += (double)t->encode_ns / 1e9;
        cp->acc_dec[s] += (double)t->decode_ns / 1e9;
        cp->acc_n[s]++;
        /* a peer's figure: only finite values in [0, 10] count */
        if (isfinite(t->act_error) && t->act_error > 0 && t->act_error <= 10)
            cp->acc_err[0] = fmax(cp->acc_err[0], t->act_error);
        if (isfinite(t->grad_error) && t->grad_error > 0 && t->grad_error <= 10)
            cp->acc_err[1] = fmax(cp->acc_err[1], t->grad_error);
    }
    int nd = cp->desc.layout.n_daemons;
    if (daemon < 0 || daemon >= nd)
        return;
    for (size_t i = 0; i < r->n_links; i++) {
        const Nebula__LinkMeasurement *lm = r->links[i];
        if (lm->peer < (uint32_t)nd && (int)lm->peer != daemon && lm->rx_bytes_per_s > 0 &&
            isfinite(lm->rx_bytes_per_s))
            cp->rx_bps[lm->peer][daemon] = lm->rx_bytes_per_s;
    }
}

static void refit_stage(nb_cplan_t *cp, int s)
{
    double n[MAX_SIZES], f[MAX_SIZES], b[MAX_SIZES];
    int k = cp->npts[s];
    for (int i = 0; i < k; i++) {
        n[i] = cp->pts[s][i].n;
        f[i] = cp->pts[s][i].f;
        b[i] = cp->pts[s][i].b;
    }
    nb_fit_t ff, fb;
    if (k < 1 || nb_fit_least_squares(n, f, k, &ff) || nb_fit_least_squares(n, b, k, &fb))
        return;
    nb_cost_stage_t *st = &cp->cost.stage[s];
    int layers = cp->req.fixed_layers[s];
    /* a report gives the stage total; spread it over the blocks and the
     * head (in block equivalents, nb_repart_head_blocks), so that another
     * split (a re-partition, an offline what-if) gets this cluster's
     * per-block speed; the current split's total is unchanged */
    double fixed_blocks = cp->desc.layout.parts[s].head ? cp->head_blocks : 0;
    if (layers > 0) {
        nb_repart_fit_stage(&ff, layers, fixed_blocks, &st->fwd_layer, &st->fwd_fixed);
        nb_repart_fit_stage(&fb, layers, fixed_blocks, &st->bwd_layer, &st->bwd_fixed);
    } else {
        st->fwd_fixed = ff;
        st->bwd_fixed = fb;
        st->fwd_layer = st->bwd_layer = (nb_fit_t){ 0, 0 };
    }
}

static double median_of(const double *v, int n)
{
    double x[SIZE_OBS];
    memcpy(x, v, (size_t)n * sizeof *x);
    for (int i = 1; i < n; i++) /* insertion sort: n <= SIZE_OBS */
        for (int j = i; j > 0 && x[j - 1] > x[j]; j--) {
            double t = x[j];
            x[j] = x[j - 1];
            x[j - 1] = t;
        }
    return n % 2 ? x[n / 2] : (x[n / 2 - 1] + x[n / 2]) / 2;
}

/* A size's time is the median of its last SIZE_OBS steps: on a shared
 * machine another process's burst lands in a step now and then, and an
 * average would carry it into every prediction at that size (an EMA did:
 * docs/benchmarks.md, "Planner validation"). */
static void observe_size(nb_cplan_t *cp, int s, int n, double f, double b)
{
    size_pt_t *pt = NULL;
    for (int i = 0; i < cp->npts[s] && !pt; i++)
        if (cp->pts[s][i].n == n)
            pt = &cp->pts[s][i];
    if (!pt) {
        if (cp->npts[s] >= MAX_SIZES)
            return;
        pt = &cp->pts[s][cp->npts[s]++];
        memset(pt, 0, sizeof *pt);
        pt->n = n;
    }
    pt->fv[pt->next] = f;
    pt->bv[pt->next] = b;
    pt->next = (pt->next + 1) % SIZE_OBS;
    if (pt->nv < SIZE_OBS)
        pt->nv++;
    pt->f = median_of(pt->fv, pt->nv);
    pt->b = median_of(pt->bv, pt->nv);
}

static bool sends(const nb_cplan_t *cp, int s, int dir)
{
    const int *pl = cp->desc.layout.placement;
    if (dir == NB_DIR_FWD)
        return s + 1 < cp->p && pl[s] != pl[s + 1];
    return s > 0 && pl[s - 1] != pl[s];
}

static void ema(double *v, double x)
{
    *v = *v > 0 ? *v + FIT_ALPHA * (x - *v) : x;
}

/* Codec work per raw byte, when the step says which codec did it: a stage
 * that only sends activations encodes with the forward codec, and so on. */
/* Raw bytes per micro-batch of mb samples that stage s encodes and
 * decodes on one of its cuts: each cut as wide as the model family says
 * (a low-rank split's factor is rank-wide), the mean of both when the stage
 * has a wire on each side. */
static double stage_raw_per_mb(const nb_cplan_t *cp, int s, int mb, bool sa, bool sg)
{
    const nb_pipe_layout_t *l = &cp->desc.layout;
    double per = (double)mb * cp->seq * 4.0;
    double out = per * nb_part_spec_out_width(&l->model, &l->parts[s]);
    double in = per * nb_part_spec_in_width(&l->model, &l->parts[s]);
    return sa && sg ? (in + out) / 2 : sa ? out : in;
}

static void observe_codecs(nb_cplan_t *cp, int s, int mb)
{
    int n = cp->acc_n[s];
    nb_cost_codec_t *fc = (nb_cost_codec_t *)nb_cost_codec_find(&cp->cost, cp->cur.fwd);
    nb_cost_codec_t *bc = (nb_cost_codec_t *)nb_cost_codec_find(&cp->cost, cp->cur.bwd);
    bool sa = sends(cp, s, NB_DIR_FWD), sg = sends(cp, s, NB_DIR_BWD);
    double raw_per_mb = stage_raw_per_mb(cp, s, mb, sa, sg);
    if (n < 1 || !fc || !bc || raw_per_mb <= 0)
        return;
    double enc = cp->acc_enc[s] / n / raw_per_mb, dec = cp->acc_dec[s] / n / raw_per_mb;
    /* encoding: activations if sa, gradients if sg; decoding the opposite */
    nb_cost_codec_t *e = sa && !sg ? fc : sg && !sa ? bc : (sa && fc == bc ? fc : NULL);
    nb_cost_codec_t *d = sa && !sg ? bc : sg && !sa ? fc : (sa && fc == bc ? fc : NULL);
    double share = sa && sg ? 0.5 : 1.0;
    if (e && e->lossiness > 0)
        ema(&e->enc_per_byte, enc * share);
    if (d && d->lossiness > 0)
        ema(&d->dec_per_byte, dec * share);
}

static hist_t *hist_find(nb_cplan_t *cp, const nb_cplan_step_t *c, bool add)
{
    for (int i = 0; i < cp->nhist; i++) {
        hist_t *h = &cp->hist[i];
        if (h->m == c->m && h->sched.kind == c->sched.kind && h->sched.extra == c->sched.extra &&
            strcmp(h->fwd, c->fwd) == 0 && strcmp(h->bwd, c->bwd) == 0)
            return h;
    }
    if (!add || cp->nhist >= MAX_HIST)
        return NULL;
    hist_t *h = &cp->hist[cp->nhist++];
    memset(h, 0, sizeof *h);
    h->pre_s = h->pre_ovh_s = -1;
    h->pre_step = -1;
    h->m = c->m;
    h->sched = c->sched;
    snprintf(h->fwd, sizeof h->fwd, "%s", c->fwd);
    snprintf(h->bwd, sizeof h->bwd, "%s", c->bwd);
    return h;
}

/* After a re-plan for a link: the transport's passive estimate lags (an
 * EWMA over frames), so the rate it showed when the policy fired may not be
 * the new rate yet. Once the next basis is measured, a direction clearly
 * below its probe (the link is the bottleneck, so the estimate is the rate)
 * enters the model as is, and a change beyond the threshold re-plans once
 * more. */
static void settle_links(nb_cplan_t *cp, const nb_replan_sample_t *b)
{
    cp->settle_links = false;
    for (int s = 0; s + 1 < cp->p; s++)
        for (int d = 0; d < 2; d++) {
            double seen = b->bandwidth[s][d], probe = cp->probe_bw[s][d];
            nb_cost_dir_t *x = &cp->cost.link[s].dir[d];
            if (!(seen > 0 && probe > 0 && seen < 0.95 * probe))
                continue;
            double was = x->bandwidth;
            x->bandwidth = seen;
            if (fabs(seen / was - 1) > cp->rcfg.threshold && !cp->replan_due) {
                cp->replan_due = true;
                snprintf(cp->reason, sizeof cp->reason,
                         "link %d-%d %s bandwidth settled at %.3g Mbit/s (the model had %.3g)", s, s + 1,
                         d == NB_DIR_FWD ? "forward" : "backward", seen * 8e-6, was * 8e-6);
                nb_log_info(NULL, "planner: re-plan at the next step boundary: %s", cp->reason);
            }
        }
}

static void live_errors(nb_cplan_t *cp);

void nb_cplan_step_done(nb_cplan_t *cp, int64_t step, double wall_s, double stage_s)
{
    const int *pl = cp->desc.layout.placement;
    int n = cp->cur.mb_size;
    nb_replan_sample_t obs;
    memset(&obs, 0, sizeof obs);
    for (int s = 0; s < cp->p; s++) {
        int k = cp->acc_n[s];
        if (k > 0) {
            obs.compute[s] = cp->acc_f[s] + cp->acc_b[s] + cp->acc_enc[s] + cp->acc_dec[s];
            if (step > 0) { /* step 0 warms caches and allocators up */
                observe_size(cp, s, shard_n(cp, s, n), cp->acc_f[s] / k, cp->acc_b[s] / k);
                refit_stage(cp, s);
                observe_codecs(cp, s, n);
                cp->compute_measured = true;
            }
        }
        if (s + 1 < cp->p && pl[s] != pl[s + 1]) {
            obs.bandwidth[s][NB_DIR_FWD] = cp->rx_bps[pl[s]][pl[s + 1]];
            obs.bandwidth[s][NB_DIR_BWD] = cp->rx_bps[pl[s + 1]][pl[s]];
            /* The passive estimate times each tensor frame from its first
             * byte to its last: right while the link is the bottleneck,
             * far too high when a whole frame sits in the socket buffer
             * before it is read (one such frame lingers in the transport's
             * EWMA). Capped by the probe, it sees a link get slower, and
             * recover up to the probed rate, never beyond. */
            for (int d = 0; d < 2; d++)
                if (cp->probe_bw[s][d] > 0 && obs.bandwidth[s][d] > cp->probe_bw[s][d])
                    obs.bandwidth[s][d] = cp->probe_bw[s][d];
        }
    }
    if (step > 0 && wall_s > 0 && stage_s > 0 && wall_s >= stage_s) {
        double o = wall_s - stage_s;
        cp->overhead = cp->have_overhead ? cp->overhead + OVH_ALPHA * (o - cp->overhead) : o;
        cp->have_overhead = true;
    }
    if (step > cp->cur_since && wall_s > 0) {
        hist_t *h = hist_find(cp, &cp->cur, true);
        if (h) {
            if (h->steps < HIST_STEPS) {
                h->wall[h->steps] = wall_s;
                h->stage[h->steps] = stage_s;
            }
            h->steps++;
            h->wall_sum += wall_s;
            h->stage_sum += stage_s;
            for (int s = 0; s < cp->p; s++) {
                int k = cp->acc_n[s] > 0 ? cp->acc_n[s] : 1;
                h->f[s] += cp->acc_f[s] / k;
                h->b[s] += cp->acc_b[s] / k;
                h->enc[s] += cp->acc_enc[s] / k;
                h->dec[s] += cp->acc_dec[s] / k;
            }
        }
    }
    memset(cp->acc_f, 0, sizeof cp->acc_f);
    memset(cp->acc_b, 0, sizeof cp->acc_b);
    memset(cp->acc_enc, 0, sizeof cp->acc_enc);
    memset(cp->acc_dec, 0, sizeof cp->acc_dec);
    memset(cp->acc_n, 0, sizeof cp->acc_n);
    cp->last_obs = obs;
    live_errors(cp);
    if (!cp->planned || cp->pinned || cp->replan_due)
        return;
    if (!cp->basis_set) {
        if (step < cp->basis_at)
            return;
        /* the basis is what the plan measured once settled (the mean of its
         * steps 2..4): the passive link estimates depend on the frame size,
         * so comparing them with the probe would see drift that is not
         * there, and one step alone is noisy */
        if (cp->basis_n == 0)
            memset(&cp->basis_sum, 0, sizeof cp->basis_sum);
        for (int s = 0; s < cp->p; s++) {
            cp->basis_sum.compute[s] += obs.compute[s];
            for (int d = 0; d < 2; d++)
                cp->basis_sum.bandwidth[s][d] += obs.bandwidth[s][d];
        }
        if (++cp->basis_n < BASIS_STEPS)
            return;
        for (int s = 0; s < cp->p; s++) {
            cp->basis_sum.compute[s] /= BASIS_STEPS;
            for (int d = 0; d < 2; d++)
                cp->basis_sum.bandwidth[s][d] /= BASIS_STEPS;
        }
        if (nb_replan_init(&cp->rp, &cp->rcfg, cp->p, &cp->basis_sum) == 0)
            cp->basis_set = true;
        cp->basis_n = 0;
        if (cp->settle_links)
            settle_links(cp, &cp->basis_sum);
        return;
    }
    if (nb_replan_observe(&cp->rp, &obs)) {
        cp->replan_due = true;
        snprintf(cp->reason, sizeof cp->reason, "%s", cp->rp.reason);
        nb_log_info(NULL, "planner: re-plan at the next step boundary: %s", cp->reason);
    }
}

/* The live round-trip errors the step's reports sampled replace the current
 * codecs' calibrated errors (the largest over the boundaries); a chosen codec
 * whose live error is over the budget re-plans at the next step boundary, so
 * the search (which skips it now) moves to one within the budget. */
static void live_errors(nb_cplan_t *cp)
{
    const char *spec[2] = { cp->cur.fwd, cp->cur.bwd };
    for (int d = 0; d < 2; d++) {
        double e = cp->acc_err[d];
        cp->acc_err[d] = 0;
        nb_cost_codec_t *c = e > 0 ? (nb_cost_codec_t *)nb_cost_codec_find(&cp->cost, spec[d]) : NULL;
        if (!c)
            continue;
        int i = (int)(c - cp->cost.codec);
        cp->cost.codec_err[i] = e;
        cp->err_live[i] = true;
        if (cp->req.max_err > 0 && e > cp->req.max_err && cp->planned && !cp->pinned && !cp->replan_due) {
            cp->replan_due = true;
            snprintf(cp->reason, sizeof cp->reason, "%s codec %s: live round-trip error %.3g over the budget %g",
                     d ? "backward" : "forward", spec[d], e, cp->req.max_err);
            nb_log_info(NULL, "planner: re-plan at the next step boundary: %s", cp->reason);
        }
    }
}

/* ---- choosing ---------------------------------------------------------------- */

static void cand_to_step(const nb_cplan_t *cp, const nb_plan_cand_t *c, const char *why, nb_cplan_step_t *out)
{
    out->m = c->m;
    out->mb_size = cp->batch / c->m;
    out->sched = c->sched;
    snprintf(out->fwd, sizeof out->fwd, "%s", cp->cost.codec[c->fwd_codec].spec);
    snprintf(out->bwd, sizeof out->bwd, "%s", cp->cost.codec[c->bwd_codec].spec);
    out->pred_step_s = c->step_time;
    out->pred_bubble = c->bubble;
    out->why = why;
}

static const char *step_text(const nb_cplan_step_t *c, char *buf, size_t len)
{
    char sb[24];
    nb_sched_format(&c->sched, sb, sizeof sb);
    if (c->pred_step_s >= 0)
        snprintf(buf, len, "m=%d %s fwd=%s bwd=%s T=%.4fs bubble=%.1f%%", c->m, sb, c->fwd, c->bwd, c->pred_step_s,
                 100 * c->pred_bubble);
    else
        snprintf(buf, len, "m=%d %s fwd=%s bwd=%s", c->m, sb, c->fwd, c->bwd);
    return buf;
}

/* The prediction for a fully given plan on the current model; < 0 if it
 * cannot be evaluated. */
double nb__cplan_predict(const nb_cplan_t *cp, const nb_cost_t *cost, int m, const nb_sched_spec_t *sched,
                         const char *fwd, const char *bwd, double *bubble)
{
    nb_plan_cand_t c;
    char err[256];
    int rc = nb_plan_evaluate(cost, &cp->req.model, m, sched, fwd, bwd, cp->req.fixed_layers, &c, err, sizeof err);
    if (rc < 0 && rc != NB_ELIMIT)
        return -1;
    if (bubble)
        *bubble = c.bubble;
    return c.step_time;
}

/* Scales what drifted into the cost model: link bandwidths by measured /
 * basis, and each stage's remembered sizes by its compute ratio (the size
 * in use is already current). */
static void absorb_drift(nb_cplan_t *cp)
{
    const nb_replan_sample_t *b = &cp->rp.basis, *o = &cp->last_obs;
    for (int s = 0; s + 1 < cp->p; s++)
        for (int d = 0; d < 2; d++)
            if (b->bandwidth[s][d] > 0 && o->bandwidth[s][d] > 0 &&
                fabs(o->bandwidth[s][d] / b->bandwidth[s][d] - 1) > cp->rcfg.threshold) {
                cp->cost.link[s].dir[d].bandwidth *= o->bandwidth[s][d] / b->bandwidth[s][d];
                cp->settle_links = true;
            }
    for (int s = 0; s < cp->p; s++) {
        if (!(b->compute[s] > 0 && o->compute[s] > 0))
            continue;
        double r = o->compute[s] / b->compute[s];
        if (fabs(r - 1) <= cp->rcfg.threshold)
            continue;
        for (int i = 0; i < cp->npts[s]; i++) {
            size_pt_t *pt = &cp->pts[s][i];
            if (pt->n != shard_n(cp, s, cp->cur.mb_size)) {
                pt->f *= r;
                pt->b *= r;
                for (int k = 0; k < pt->nv; k++)
                    pt->fv[k] *= r, pt->bv[k] *= r;
            } else {
                /* the size in use: only the steps since the drift (the
                 * policy's k), which a median of all kept steps may not
                 * follow yet */
                int k = cp->rcfg.k < pt->nv ? cp->rcfg.k : pt->nv;
                double fv[SIZE_OBS], bv[SIZE_OBS];
                for (int j = 0; j < k; j++) {
                    int at = (pt->next - 1 - j + 2 * SIZE_OBS) % SIZE_OBS;
                    fv[j] = pt->fv[at];
                    bv[j] = pt->bv[at];
                }
                if (k > 0) {
                    pt->f = median_of(fv, k);
                    pt->b = median_of(bv, k);
                }
            }
        }
        refit_stage(cp, s);
    }
}

static int run_search(nb_cplan_t *cp, nb_plan_cand_t *best)
{
    nb_plan_result_t res;
    char err[512];
    int rc = nb_plan_search(&cp->cost, &cp->req, &res, err, sizeof err);
    if (rc < 0) {
        nb_log_error(NULL, "planner: no plan: %s; keeping the current plan", err);
        if (rc == NB_ELIMIT)
            nb_plan_result_free(&res);
        return rc;
    }
    *best = res.cand[0];
    nb_plan_result_free(&res);
    return 0;
}

static bool same_plan(const nb_cplan_step_t *a, const nb_cplan_step_t *b)
{
    return a->m == b->m && a->sched.kind == b->sched.kind && a->sched.extra == b->sched.extra &&
           strcmp(a->fwd, b->fwd) == 0 && strcmp(a->bwd, b->bwd) == 0;
}

static void set_plan(nb_cplan_t *cp, int64_t step, const nb_cplan_step_t *next)
{
    if (!same_plan(&cp->cur, next) || !cp->have_cur) {
        cp->cur_since = step;
        /* A plan new to this job: keep the prediction it starts with, made
         * before any of its steps ran, to score it against what it then
         * measures (docs/planner.md, "Out-of-sample predictions"). */
        if (next->pred_step_s >= 0 && !hist_find(cp, next, false)) {
            hist_t *h = hist_find(cp, next, true);
            if (h) {
                h->pre_s = next->pred_step_s;
                h->pre_ovh_s = next->pred_step_s + (cp->have_overhead ? cp->overhead : 0);
                h->pre_step = step;
            }
        }
    }
    cp->cur = *next;
    cp->have_cur = true;
}


static void calibrate_overhead(nb_cplan_t *cp);

int nb_cplan_plan(nb_cplan_t *cp, int64_t step, nb_cplan_step_t *out)
{
    char a[512], b[8];
    nb_cplan_step_t next = cp->cur;
    if (cp->pinned) {
        if (cp->pin_pending) {
            /* the pin's prediction (its out-of-sample figure) on the
             * per-message cost fitted to every plan run so far */
            calibrate_overhead(cp);
            next = cp->pin;
            next.pred_step_s = nb__cplan_predict(cp, &cp->cost, next.m, &next.sched, next.fwd, next.bwd, &next.pred_bubble);
            nb_log_info(NULL, "planner: step %lld: pinned plan %s", (long long)step + 1, step_text(&next, a, sizeof a));
            cp->pin_pending = false;
        }
    } else if (step < cp->profile_end) {
        int m = cp->prof_m[step < 2 ? 0 : cp->nprof - 1];
        next.m = m;
        next.mb_size = cp->batch / m;
        next.why = "profiling";
        if (!cp->have_cur || next.m != cp->cur.m)
            nb_log_info(NULL, "planner: step %lld: profiling at m=%d (%d sequences per micro-batch)",
                        (long long)step + 1, m, next.mb_size);
    } else if (!cp->planned || cp->replan_due || cp->pin_pending) {
        nb_plan_cand_t best;
        bool replan = cp->planned && cp->replan_due;
        nb_cplan_step_t old = cp->cur;
        double old_now = -1;
        if (replan) {
            absorb_drift(cp);
            old_now = nb__cplan_predict(cp, &cp->cost, old.m, &old.sched, old.fwd, old.bwd, NULL);
        }
        calibrate_overhead(cp);
        if (run_search(cp, &best) == 0) {
            cand_to_step(cp, &best, replan ? "re-planned" : "planned", &next);
            char d[320];
            nb_plan_describe(&cp->cost, &best, d, sizeof d);
            if (replan) {
                cp->replans++;
                nb_log_info(NULL, "planner: re-plan %ld at step %lld (%s): old %s, now predicted %.4fs; new %s",
                            cp->replans, (long long)step + 1, cp->reason, step_text(&old, a, sizeof a), old_now, d);
            } else {
                if (cp->pin_pending)
                    nb_log_info(NULL, "planner: chose %s (pin cleared)", d);
                else
                    nb_log_info(NULL, "planner: chose %s (after %lld profiling steps, from probed links and "
                                "profiled compute)", d, (long long)step);
            }
        }
        cp->planned = true;
        cp->replan_due = false;
        cp->pin_pending = false;
        cp->basis_set = false;
        cp->basis_n = 0;
        cp->basis_at = step + 1;
        (void)b;
    }
    set_plan(cp, step, &next);
    *out = cp->cur;
    return 0;
}

int nb_cplan_pin(nb_cplan_t *cp, const nb_cplan_step_t *pin, char *err, size_t errlen)
{
    if (!pin) {
        if (cp->pinned) {
            cp->pinned = false;
            cp->pin_pending = true; /* plan afresh at the next boundary */
            nb_log_info(NULL, "planner: pin cleared; planning again from the next step");
        }
        return 0;
    }
    if (pin->m < 1 || cp->batch % pin->m)
        return fail(err, errlen, NB_EINVAL, "m=%d does not divide the batch of %d", pin->m, cp->batch);
    if (!nb_cost_codec_find(&cp->cost, pin->fwd) || !nb_cost_codec_find(&cp->cost, pin->bwd))
        return fail(err, errlen, NB_EINVAL, "codecs %s / %s: not among the job's codecs", pin->fwd, pin->bwd);
    nb_plan_cand_t c;
    char why[256];
    int rc = nb_plan_evaluate(&cp->cost, &cp->req.model, pin->m, &pin->sched, pin->fwd, pin->bwd,
                              cp->req.fixed_layers, &c, why, sizeof why);
    if (rc == NB_ELIMIT)
        return fail(err, errlen, rc, "%s", why);
    if (rc < 0)
        return fail(err, errlen, NB_EINVAL, "%s", why);
    cp->pin = *pin;
    cp->pin.mb_size = cp->batch / pin->m;
    cp->pin.why = "pinned";
    cp->pinned = true;
    cp->pin_pending = true;
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median of a plan's kept step times (wall or longest stage): on a shared
 * machine another process's burst lands in a few steps, and the median
 * ignores them. */
double nb__cplan_hist_median(const hist_t *h, bool wall)
{
    int n = h->steps < HIST_STEPS ? (int)h->steps : HIST_STEPS;
    double v[HIST_STEPS];
    if (n < 1)
        return -1;
    memcpy(v, wall ? h->wall : h->stage, (size_t)n * sizeof *v);
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The step a plan run would take with the compute its own steps measured
 * (per stage, per micro-batch, codec work on the side it runs) and the
 * current link model: the simulator judged on its own, apart from the
 * compute fit. < 0 if it cannot be evaluated. */
double nb__cplan_predict_own(const nb_cplan_t *cp, const nb_cost_t *cost, const hist_t *h)
{
    nb_plan_cand_t c;
    char err[256];
    int rc = nb_plan_evaluate(cost, &cp->req.model, h->m, &h->sched, h->fwd, h->bwd, cp->req.fixed_layers, &c, err,
                              sizeof err);
    nb_sim_input_t in;
    if ((rc < 0 && rc != NB_ELIMIT) || h->steps < 1 || nb_plan_sim_input(cost, &cp->req.model, &c, &in) < 0)
        return -1;
    for (int s = 0; s < cp->p; s++) {
        bool sa = sends(cp, s, NB_DIR_FWD), sg = sends(cp, s, NB_DIR_BWD);
        double enc = h->enc[s] / h->steps, dec = h->dec[s] / h->steps;
        /* encoding follows the op whose output leaves; decoding precedes
         * the op whose input arrived (activations: F, gradients: B) */
        double enc_f = sa && sg ? enc / 2 : sa ? enc : 0, dec_f = sa && sg ? dec / 2 : sg ? dec : 0;
        in.tf[s] = h->f[s] / h->steps + enc_f + dec_f;
        in.tb[s] = h->b[s] / h->steps + (enc - enc_f) + (dec - dec_f);
    }
    nb_sim_result_t r;
    if (nb_sim_run(&in, &r, NULL, 0, NULL) < 0)
        return -1;
    return r.step_time;
}

/* The per-message cost of the links (nb_cost_dir_t.overhead: framing, TLS
 * records, the hand-offs between the compute thread, the loop thread and
 * the kernel) is not probed; it shows as the part of a plan's measured step
 * that grows with the number of messages. Fitted by a grid search (0 to
 * 3 ms in 0.05 ms) minimising the squared relative error between the
 * longest stage step every plan run so far measured and the simulation
 * with that plan's own compute (absolute relative error, median step
 * times: robust to the odd slow step), then applied to every link
 * direction. Needs measured plans of at least two micro-batch counts;
 * until then the cost stays where it was (0 at first). */
double nb__cplan_fit_overhead(const nb_cplan_t *cp)
{
    /* A cost per message is told apart from a compute error only by plans
     * that send different numbers of messages: with measured steps of one
     * m alone, the grid would turn any error in that plan's prediction
     * (another process's burst, the compute fit) into a per-message cost
     * and carry it into every other plan's prediction. */
    int ms[MAX_HIST], nm = 0;
    for (int i = 0; i < cp->nhist; i++) {
        bool seen = false;
        for (int k = 0; k < nm; k++)
            seen |= ms[k] == cp->hist[i].m;
        if (cp->hist[i].steps > 0 && !seen)
            ms[nm++] = cp->hist[i].m;
    }
    if (nm < 2)
        return -1;
    nb_cost_t *trial = malloc(sizeof *trial);
    if (!trial)
        return -1;
    *trial = cp->cost;
    double best = INFINITY, best_o = -1;
    for (int k = 0; k <= 60; k++) {
        double o = k * 0.05e-3, sse = 0;
        int n = 0;
        for (int s = 0; s + 1 < trial->p; s++)
            for (int d = 0; d < 2; d++)
                trial->link[s].dir[d].overhead = o;
        for (int i = 0; i < cp->nhist; i++) {
            const hist_t *h = &cp->hist[i];
            double meas = nb__cplan_hist_median(h, false), sim = meas > 0 ? nb__cplan_predict_own(cp, trial, h) : -1;
            if (sim > 0) {
                sse += fabs(sim / meas - 1);
                n++;
            }
        }
        if (n > 0 && sse < best - 1e-12) {
            best = sse;
            best_o = o;
        }
    }
    free(trial);
    return best_o;
}

void nb__cplan_set_overhead(nb_cost_t *cost, double overhead)
{
    for (int s = 0; s + 1 < cost->p; s++)
        for (int d = 0; d < 2; d++)
            cost->link[s].dir[d].overhead = overhead;
}

static void calibrate_overhead(nb_cplan_t *cp)
{
    double o = nb__cplan_fit_overhead(cp);
    if (o >= 0)
        nb__cplan_set_overhead(&cp->cost, o);
}

/* ---- re-partitioning ------------------------------------------------------------ */

static const char *split_text(const int *layers, int p, char *buf, size_t len)
{
    buf[0] = 0;
    for (int s = 0; s < p; s++) {
        size_t n = strlen(buf);
        snprintf(buf + n, len - n, "%s%d", s ? "," : "", layers[s]);
    }
    return buf;
}

int nb_cplan_repart_check(nb_cplan_t *cp, int64_t step, int *layers, char *why, size_t whylen)
{
    if (!cp->repart_on || !cp->planned || cp->pinned || cp->replan_due || step < cp->profile_end ||
        !cp->compute_measured)
        return 0;
    for (int s = 0; s < cp->p; s++)
        if (cp->npts[s] == 0) /* a stage the current split has not measured yet */
            return 0;
    nb_repart_choice_t c;
    char err[256];
    if (nb_repart_choose(&cp->cost, &cp->req, cp->cur.m, &cp->cur.sched, cp->cur.fwd, cp->cur.bwd,
                         cp->req.fixed_layers, &c, err, sizeof err) != 0) {
        nb_log_debug(NULL, "planner: no re-partition check at step %lld: %s", (long long)step + 1, err);
        return 0;
    }
    cp->repart_last = c;
    cp->repart_have = true;
    /* the running split's measured step: the median of the current plan's
     * steps on it, once k of them ran (the first after a switch is not
     * kept); the guard against a model that mispredicts (repart.h) */
    const hist_t *h = hist_find(cp, &cp->cur, false);
    double meas = h && h->steps >= cp->rcfg.k ? nb__cplan_hist_median(h, true) : -1;
    nb_repart_measure(&cp->repart, cp->req.fixed_layers, meas > 0 ? meas : -1);
    int trial = cp->repart.on_trial;
    int d = nb_repart_observe(&cp->repart, step, &c);
    char a[96], b[96];
    /* a trial that ended on the split it left is a move that failed (the
     * job went back to it): nothing to report */
    if (trial && !cp->repart.on_trial && d != NB_REPART_BACK &&
        memcmp(cp->repart.from, cp->req.fixed_layers, (size_t)cp->p * sizeof *cp->repart.from) != 0)
        nb_log_info(NULL, "planner: split %s measured %.4f s per step against %.4f s on %s, the split it left: "
                    "the move stays", split_text(cp->req.fixed_layers, cp->p, a, sizeof a), meas,
                    nb_repart_measured(&cp->repart, cp->repart.from), split_text(cp->repart.from, cp->p, b, sizeof b));
    if (d == NB_REPART_STAY)
        return 0;
    memcpy(layers, cp->repart.layers, (size_t)cp->p * sizeof *layers);
    if (d == NB_REPART_BACK) {
        double left = nb_repart_measured(&cp->repart, layers);
        snprintf(why, whylen, "split %s measured %.4f s per step against %.4f s on %s, the split it left "
                 "(%.0f%% slower; job.planner.repartition_min_gain %.0f%%): moving back, and no more "
                 "re-partitions in this job", split_text(cp->req.fixed_layers, cp->p, b, sizeof b), meas, left,
                 split_text(layers, cp->p, a, sizeof a), 100 * (meas / left - 1), 100 * cp->repart.cfg.min_gain);
        nb_log_info(NULL, "planner: %s", why);
        return 1;
    }
    snprintf(why, whylen, "split %s predicted %.4f s per step against %.4f s on %s (%.0f%% faster; "
             "job.planner.repartition_min_gain %.0f%%)", split_text(c.layers, cp->p, a, sizeof a), c.best_s,
             c.cur_s, split_text(cp->req.fixed_layers, cp->p, b, sizeof b), 100 * c.gain,
             100 * cp->repart.cfg.min_gain);
    return 1;
}

void nb_cplan_set_split(nb_cplan_t *cp, const nb_job_desc_t *desc)
{
    char a[96];
    cp->desc = *desc;
    for (int s = 0; s < cp->p; s++) {
        cp->req.fixed_layers[s] = desc->layout.parts[s].last - desc->layout.parts[s].first;
        /* the sizes measured were of the old split; the per-block fits stay
         * until the new split's own steps refit them */
        cp->npts[s] = 0;
    }
    /* the plans measured so far ran on another split */
    cp->nhist = 0;
    cp->repart_have = false;
    if (cp->planned && !cp->pinned) {
        cp->replan_due = true;
        snprintf(cp->reason, sizeof cp->reason, "the layer split moved to %s",
                 split_text(cp->req.fixed_layers, cp->p, a, sizeof a));
    }
}

long nb_cplan_repartitions(const nb_cplan_t *cp)
{
    return cp->repart_on ? cp->repart.moves : 0;
}
