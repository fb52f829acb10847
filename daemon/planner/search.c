/*
 * search.c - enumerate plans, split layers, simulate, rank (see search.h).
 */
#include "daemon/planner/search.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/common.h"

#define GIB (1024.0 * 1024.0 * 1024.0)
/* Candidates whose split is polished by simulation (refine_split). */
#define NB_PLAN_REFINE_TOP 32

static void seterr(char *err, size_t len, const char *fmt, ...)
{
    if (!err || len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
}

/* Compute per micro-batch of stage s with L layers, the first of them
 * block `first` (so its input cut has `first` blocks below it and its
 * output cut first + L), codec work included: each cut's own width
 * (nb_cost_cut_bytes). */
static double stage_time_w(const nb_cost_t *cost, const nb_cost_model_t *mdl, int s, int first, int L,
                           double n, const nb_cost_codec_t *cf, const nb_cost_codec_t *cb,
                           int wire_in, int wire_out, double *tf_out, double *tb_out)
{
    double raw_in = n * nb_cost_cut_bytes(mdl, first), raw_out = n * nb_cost_cut_bytes(mdl, first + L);
    double tf = nb_cost_fwd(cost, s, L, n), tb = nb_cost_bwd(cost, s, L, n);
    if (wire_in) {
        tf += cf->dec_per_byte * raw_in; /* decode incoming activations */
        tb += cb->enc_per_byte * raw_in; /* encode outgoing input gradient */
    }
    if (wire_out) {
        tf += cf->enc_per_byte * raw_out;
        tb += cb->dec_per_byte * raw_out;
    }
    if (tf_out)
        *tf_out = tf;
    if (tb_out)
        *tb_out = tb;
    return tf + tb;
}

/* Compute per micro-batch of stage s with L layers, codec work included
 * (every boundary a wire). */
static double stage_time(const nb_cost_t *cost, const nb_cost_model_t *mdl, int p, int s, int first, int L,
                         double n, const nb_cost_codec_t *cf, const nb_cost_codec_t *cb,
                         double *tf_out, double *tb_out)
{
    return stage_time_w(cost, mdl, s, first, L, n, cf, cb, s > 0, s < p - 1, tf_out, tb_out);
}

int nb_plan_sim_input(const nb_cost_t *cost, const nb_cost_model_t *mdl, const nb_plan_cand_t *c,
                      nb_sim_input_t *in)
{
    int p = cost->p;
    if (c->fwd_codec < 0 || c->fwd_codec >= cost->ncodecs || c->bwd_codec < 0 ||
        c->bwd_codec >= cost->ncodecs)
        return NB_EINVAL;
    const nb_cost_codec_t *cf = &cost->codec[c->fwd_codec], *cb = &cost->codec[c->bwd_codec];
    memset(in, 0, sizeof *in);
    in->p = p;
    in->m = c->m;
    in->sched = c->sched;
    if (c->use_placement) {
        in->use_placement = 1;
        memcpy(in->placement, c->placement, (size_t)p * sizeof(int));
    }
    int below = 0; /* blocks of the stages before s: where its input cut is */
    for (int s = 0; s < p; s++) {
        int local_in = s > 0 && c->use_placement && c->placement[s - 1] == c->placement[s];
        int local_out =
            s < p - 1 && c->use_placement && c->placement[s] == c->placement[s + 1];
        stage_time_w(cost, mdl, s, below, c->layers[s], c->mb_size, cf, cb, s > 0 && !local_in,
                     s < p - 1 && !local_out, &in->tf[s], &in->tb[s]);
        below += c->layers[s];
        /* this cut's own width: rank-wide at a low-rank split's factor */
        double raw = c->mb_size * nb_cost_cut_bytes(mdl, below);
        /* once per step: the all-reduce across the stage's replicas */
        in->tail[s] = nb_cost_allreduce(cost, s, nb_cost_grad_bytes(mdl, p, s, c->layers[s]));
        if (local_out) {
            /* Same daemon: no wire, and no codec either way. */
            in->xf[s] = in->lf[s] = in->xb[s] = in->lb[s] = 0;
        } else if (s < p - 1) {
            const nb_cost_link_t *l = &cost->link[s];
            in->xf[s] = nb_cost_xfer_busy(&l->dir[NB_DIR_FWD], cf, raw);
            in->lf[s] = l->dir[NB_DIR_FWD].latency;
            in->xb[s] = nb_cost_xfer_busy(&l->dir[NB_DIR_BWD], cb, raw);
            in->lb[s] = l->dir[NB_DIR_BWD].latency;
        }
    }
    return 0;
}

/* Samples one device of stage s holds of a micro-batch of n: the largest
 * shard when the stage has replicas (each holds the whole stage's state). */
static double dev_n(const nb_cost_t *cost, int s, double n)
{
    int r = nb_cost_replicas(cost, s);
    return r > 1 ? ceil(n / r - 1e-9) : n;
}

static int fits(const nb_cost_t *cost, int s, double need)
{
    double lim = cost->stage[s].mem_limit;
    return lim <= 0 || need <= lim;
}

/* Min-max contiguous split by dynamic programming; 0, 1 when no split fits
 * in memory, or NB_ENOMEM. best[s][k]: the slowest stage time when stages 0..s hold
 * the first k layers. */
static int split_layers(const nb_cost_t *cost, const nb_cost_model_t *mdl, int p, int pb,
                        const int *inflight, double n, const nb_cost_codec_t *cf,
                        const nb_cost_codec_t *cb, int *layers)
{
    int L = mdl->n_layers;
    /* Blocks go to stages 0..pb-1; a head-only last stage (pb = p-1) keeps 0. */
    if (pb < p)
        layers[p - 1] = 0;
    size_t cells = (size_t)p * (size_t)(L + 1);
    double *best = malloc(cells * sizeof(double));
    int *from = malloc(cells * sizeof(int));
    if (!best || !from) {
        free(best);
        free(from);
        return NB_ENOMEM;
    }
    for (size_t i = 0; i < cells; i++)
        best[i] = INFINITY, from[i] = -1;
#define AT(s, k) ((size_t)(s) * (size_t)(L + 1) + (size_t)(k))
    for (int s = 0; s < pb; s++) {
        for (int k = s + 1; k <= L - (pb - 1 - s); k++) {
            for (int j = s; j < k; j++) { /* stages 0..s-1 hold j layers */
                double prev = s == 0 ? (j == 0 ? 0 : INFINITY) : best[AT(s - 1, j)];
                if (!isfinite(prev))
                    continue;
                int own = k - j;
                if (!fits(cost, s, nb_cost_stage_mem(mdl, p, s, own, inflight[s], dev_n(cost, s, n))))
                    continue;
                double t = stage_time(cost, mdl, p, s, j, own, n, cf, cb, NULL, NULL);
                double v = fmax(prev, t);
                if (v < best[AT(s, k)]) {
                    best[AT(s, k)] = v;
                    from[AT(s, k)] = j;
                }
            }
        }
    }
    int rc = 1;
    if (isfinite(best[AT(pb - 1, L)])) {
        int k = L;
        for (int s = pb - 1; s >= 0; s--) {
            int j = from[AT(s, k)];
            NB_CHECK(j >= 0 && j < k);
            layers[s] = k - j;
            k = j;
        }
        NB_CHECK(k == 0);
        rc = 0;
    }
#undef AT
    free(best);
    free(from);
    return rc;
}

static void even_split(int L, int p, int pb, int *layers)
{
    for (int s = 0; s < pb; s++)
        layers[s] = L / pb + (s < L % pb ? 1 : 0);
    for (int s = pb; s < p; s++)
        layers[s] = 0;
}

/* K for 1f1b:auto: enough extra warm-up per boundary to cover the slowest
 * round trip's transfers with the fastest stage's work (even split). */
/* How stages map onto blocks and daemons for one request. */
typedef struct {
    int pb;                                /* stages holding blocks: p, or p-1 */
    int by_daemon;                         /* memory limits per daemon */
    int placement[NB_COST_MAX_STAGES];     /* daemon of each stage */
} shape_t;

static void shape_identity(shape_t *sh, int p)
{
    memset(sh, 0, sizeof *sh);
    sh->pb = p;
    for (int s = 0; s < p; s++)
        sh->placement[s] = s;
}

static int auto_depth(const nb_cost_t *cost, const nb_cost_model_t *mdl, const shape_t *sh,
                      nb_plan_cand_t *c)
{
    int p = cost->p;
    if (p < 2)
        return 1;
    even_split(mdl->n_layers, p, sh->pb, c->layers);
    nb_sim_input_t in;
    c->sched.extra = 0;
    NB_CHECK(nb_plan_sim_input(cost, mdl, c, &in) == 0);
    double tt = 0, work = INFINITY;
    for (int s = 0; s < p; s++) {
        work = fmin(work, in.tf[s] + in.tb[s]);
        if (s < p - 1)
            tt = fmax(tt, fmax(in.xf[s] + in.lf[s], in.xb[s] + in.lb[s]));
    }
    double k = work > 0 ? ceil(2 * tt / work - 1e-9) : 64;
    if (!(k >= 1))
        k = 1;
    return k > 64 ? 64 : (int)k;
}

/* Memory check and simulation of a candidate whose m, schedule, codecs,
 * in-flight counts and split are set. */
static int finish(const nb_cost_t *cost, const nb_cost_model_t *mdl, const shape_t *sh,
                  nb_plan_cand_t *c, char *err, size_t errlen)
{
    int p = cost->p;
    c->feasible = 1;
    c->oom_stage = -1;
    double worst = 0;
    for (int s = 0; s < p; s++)
        c->mem[s] = nb_cost_stage_mem(mdl, p, s, c->layers[s], c->inflight[s], dev_n(cost, s, c->mb_size));
    for (int s = 0; s < p; s++) {
        /* With a placement, a daemon's first stage carries the limit and
         * the sum of the stages it hosts. */
        double need = c->mem[s];
        if (sh->by_daemon) {
            int first = 1;
            for (int t = 0; t < s; t++)
                first &= sh->placement[t] != sh->placement[s];
            if (!first)
                continue;
            for (int t = s + 1; t < p; t++)
                if (sh->placement[t] == sh->placement[s])
                    need += c->mem[t];
        }
        double lim = cost->stage[s].mem_limit;
        if (lim > 0 && need > lim) {
            c->feasible = 0;
            if (c->oom_stage < 0 || need - lim > worst) {
                worst = need - lim;
                c->oom_stage = s;
                c->oom_need = need;
                c->oom_limit = lim;
            }
        }
    }
    nb_sim_input_t in;
    nb_sim_result_t r;
    NB_CHECK(nb_plan_sim_input(cost, mdl, c, &in) == 0);
    int rc = nb_sim_run(&in, &r, NULL, 0, NULL);
    if (rc < 0) {
        seterr(err, errlen, "simulation failed (%s): check stage times", nb_strerror(rc));
        return rc;
    }
    c->step_time = r.step_time;
    c->allreduce_s = r.tail_exposed;
    c->allreduce_share = r.step_time > 0 ? r.tail_exposed / r.step_time : 0;
    c->bubble = r.bubble;
    c->samples_per_s = r.step_time > 0 ? mdl->global_batch / r.step_time : 0;
    return 0;
}

/* Moves boundary b of c (between stages b and b+1) so that the cut has
 * `cut` blocks below it; false when either stage would be left without a
 * block. */
static bool move_cut(nb_plan_cand_t *c, int b, int cut)
{
    int below = 0;
    for (int s = 0; s < b; s++)
        below += c->layers[s];
    int pair = c->layers[b] + c->layers[b + 1];
    if (cut - below < 1 || below + pair - cut < 1 || cut == below + c->layers[b])
        return false;
    c->layers[b] = cut - below;
    c->layers[b + 1] = pair - c->layers[b];
    return true;
}

/* Improves a feasible candidate's split by moving one block at a time
 * across a boundary while the simulated step gets faster. The min-max split
 * only balances the slowest stage; fill and drain also depend on the other
 * stages (a slow stage that is not the bottleneck still lengthens them).
 * With a narrow cut (a low-rank split's factor), each boundary may also
 * jump onto it: its link time can fall by d_model / r, more than any one
 * block moved costs, and the way there one block at a time may first get
 * slower. */
static int refine_split(const nb_cost_t *cost, const nb_cost_model_t *mdl, const shape_t *sh,
                        nb_plan_cand_t *c, char *err, size_t errlen)
{
    int p = sh->pb; /* a head-only last stage keeps its 0 blocks */
    for (int iter = 0; iter < mdl->n_layers * p; iter++) {
        nb_plan_cand_t best = *c;
        for (int b = 0; b + 1 < p; b++)
            for (int dir = -1; dir <= 1; dir += 2) {
                int from = dir > 0 ? b : b + 1, to = dir > 0 ? b + 1 : b;
                if (c->layers[from] < 2)
                    continue;
                nb_plan_cand_t t = *c;
                t.layers[from]--;
                t.layers[to]++;
                int rc = finish(cost, mdl, sh, &t, err, errlen);
                if (rc < 0)
                    return rc;
                if (t.feasible && t.step_time < best.step_time * (1 - 1e-12))
                    best = t;
            }
        for (int b = 0; mdl->narrow_cut > 0 && b + 1 < p; b++) {
            nb_plan_cand_t t = *c;
            if (!move_cut(&t, b, mdl->narrow_cut))
                continue;
            int rc = finish(cost, mdl, sh, &t, err, errlen);
            if (rc < 0)
                return rc;
            if (t.feasible && t.step_time < best.step_time * (1 - 1e-12))
                best = t;
        }
        if (best.step_time >= c->step_time)
            break;
        *c = best;
    }
    return 0;
}

static double peak_mem(const nb_plan_cand_t *c, int p)
{
    double m = 0;
    for (int s = 0; s < p; s++)
        m = fmax(m, c->mem[s]);
    return m;
}

static int sched_order(const nb_sched_spec_t *s)
{
    return s->kind == NB_SCHED_GPIPE ? 0 : 1 + s->extra;
}

static int cmp_time(const void *pa, const void *pb)
{
    const nb_plan_cand_t *a = pa, *b = pb;
    if (a->feasible != b->feasible)
        return b->feasible - a->feasible;
    if (!a->feasible) {
        double oa = a->oom_need - a->oom_limit, ob = b->oom_need - b->oom_limit;
        if (oa != ob)
            return oa < ob ? -1 : 1;
        return a->m - b->m;
    }
    if (a->step_time != b->step_time)
        return a->step_time < b->step_time ? -1 : 1;
    return a->m - b->m;
}

/* Tie-breakers among near-ties: <0 when a is preferred. */
static int cmp_tie(const nb_cost_t *cost, const nb_plan_cand_t *a, const nb_plan_cand_t *b)
{
    if (a->m != b->m)
        return a->m - b->m;
    double ma = peak_mem(a, cost->p), mb = peak_mem(b, cost->p);
    if (ma != mb)
        return ma < mb ? -1 : 1;
    int la = cost->codec[a->fwd_codec].lossiness + cost->codec[a->bwd_codec].lossiness;
    int lb = cost->codec[b->fwd_codec].lossiness + cost->codec[b->bwd_codec].lossiness;
    if (la != lb)
        return la - lb;
    int sa = sched_order(&a->sched), sb = sched_order(&b->sched);
    if (sa != sb)
        return sa - sb;
    return a->step_time < b->step_time ? -1 : a->step_time > b->step_time;
}

/* The codec indices the search may use in one direction: the request's list
 * (every known codec when empty) less those over the quality budget.
 * Returns their count, or NB_EINVAL when a name is unknown or the budget
 * leaves none (the message names the least lossy one over it). */
static int codec_list(const nb_cost_t *cost, const char *const *names, int n, double max_err,
                      int *idx, const char *what, char *err, size_t errlen)
{
    int k = 0;
    const nb_cost_codec_t *least = NULL;
    for (int i = 0; i < (n ? n : cost->ncodecs); i++) {
        const nb_cost_codec_t *c = n == 0 ? &cost->codec[i]
                                   : names[i] ? nb_cost_codec_find(cost, names[i]) : NULL;
        if (!c) {
            seterr(err, errlen, "%s codec '%s' has no measurements", what,
                   names[i] ? names[i] : "(null)");
            return NB_EINVAL;
        }
        if (max_err > 0 && cost->codec_err[c - cost->codec] > max_err) {
            if (!least || cost->codec_err[c - cost->codec] < cost->codec_err[least - cost->codec])
                least = c;
            continue;
        }
        idx[k++] = (int)(c - cost->codec);
    }
    if (k == 0 && least) {
        seterr(err, errlen,
               "%s codecs: every one is over the error budget %g (the least, '%s', has %.4g)",
               what, max_err, least->spec, cost->codec_err[least - cost->codec]);
        return NB_EINVAL;
    }
    return k;
}

static const char *split_str(const nb_plan_cand_t *c, int p, char *buf, size_t len)
{
    size_t off = 0;
    buf[0] = 0;
    for (int s = 0; s < p && off < len; s++)
        off += (size_t)snprintf(buf + off, len - off, "%s%d", s ? "," : "", c->layers[s]);
    return buf;
}

int nb_plan_search(const nb_cost_t *cost, const nb_plan_req_t *req, nb_plan_result_t *out,
                   char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    const nb_cost_model_t *mdl = &req->model;
    int p = req->p;
    if (p < 1 || p > NB_COST_MAX_STAGES || p != cost->p) {
        seterr(err, errlen, "stages: the request has %d, the measurements %d", p, cost->p);
        return NB_EINVAL;
    }
    if (mdl->global_batch < 1) {
        seterr(err, errlen, "global_batch: must be >= 1 (is %d)", mdl->global_batch);
        return NB_EINVAL;
    }
    for (int s = 0; s + 1 < p; s++)
        for (int d = 0; d < 2; d++)
            if (!(cost->link[s].dir[d].bandwidth > 0)) {
                seterr(err, errlen, "link %d-%d %s: bandwidth must be > 0", s, s + 1,
                       d == NB_DIR_FWD ? "forward" : "backward");
                return NB_EINVAL;
            }
    shape_t sh;
    shape_identity(&sh, p);
    if (req->head_only_last) {
        if (p < 2) {
            seterr(err, errlen, "head_only_last: needs at least 2 stages");
            return NB_EINVAL;
        }
        sh.pb = p - 1;
    }
    if (req->use_placement) {
        for (int s = 0; s < p; s++) {
            if (req->placement[s] < 0) {
                seterr(err, errlen, "placement: stage %d has daemon %d", s, req->placement[s]);
                return NB_EINVAL;
            }
            sh.placement[s] = req->placement[s];
        }
        sh.by_daemon = 1;
    }
    if (mdl->n_layers < sh.pb) {
        seterr(err, errlen, "n_layers: %d blocks cannot fill %d stages", mdl->n_layers, sh.pb);
        return NB_EINVAL;
    }
    int fixed = 1, fixed_sum = 0;
    for (int s = 0; s < sh.pb; s++) {
        if (req->fixed_layers[s] <= 0)
            fixed = 0;
        fixed_sum += req->fixed_layers[s];
    }
    if (fixed && sh.pb < p && req->fixed_layers[p - 1] != 0) {
        seterr(err, errlen, "layer split: the head-only last stage must hold 0 blocks");
        return NB_EINVAL;
    }
    if (fixed && fixed_sum != mdl->n_layers) {
        seterr(err, errlen, "layer split: sums to %d, the model has %d blocks", fixed_sum,
               mdl->n_layers);
        return NB_EINVAL;
    }
    int fidx[NB_COST_MAX_CODECS], bidx[NB_COST_MAX_CODECS];
    int nf = codec_list(cost, req->fwd_codecs, req->nfwd, req->max_err, fidx, "forward", err, errlen);
    if (nf < 0)
        return nf;
    int nbk = codec_list(cost, req->bwd_codecs, req->nbwd, req->max_err, bidx, "backward", err, errlen);
    if (nbk < 0)
        return nbk;
    if (nf == 0 || nbk == 0) {
        seterr(err, errlen, "codecs: none measured");
        return NB_EINVAL;
    }
    nb_sched_spec_t defaults[] = {{NB_SCHED_GPIPE, 0}, {NB_SCHED_1F1B, 0},
                                  {NB_SCHED_1F1B, 1},     {NB_SCHED_1F1B, 2},
                                  {NB_SCHED_1F1B, 4},     {NB_SCHED_1F1B, NB_PLAN_EXTRA_AUTO}};
    const nb_sched_spec_t *scheds = req->nscheds ? req->scheds : defaults;
    int ns = req->nscheds ? req->nscheds : (int)NB_ARRAY_LEN(defaults);
    int mlo = req->m_min > 0 ? req->m_min : 1;
    int mhi = req->m_max > 0 ? req->m_max : mdl->global_batch;
    if (mhi > NB_SCHED_MAX_MB)
        mhi = NB_SCHED_MAX_MB;
    /* a micro-batch is split across a stage's replicas: it needs at least
     * one sequence per replica (the stage refuses fewer) */
    int rmax = 1;
    for (int s = 0; s < cost->p; s++)
        if (nb_cost_replicas(cost, s) > rmax)
            rmax = nb_cost_replicas(cost, s);
    if (mhi > mdl->global_batch / rmax)
        mhi = mdl->global_batch / rmax;
    int nm = 0;
    for (int m = mlo; m <= mhi; m++)
        if (mdl->global_batch % m == 0)
            nm++;
    if (nm == 0) {
        seterr(err, errlen, "micro-batches: no divisor of the global batch %d in [%d, %d]%s",
               mdl->global_batch, mlo, mhi,
               rmax > 1 ? " (a micro-batch needs at least one sequence per replica of each stage)" : "");
        return NB_EINVAL;
    }
    size_t total = (size_t)nm * (size_t)ns * (size_t)nf * (size_t)nbk;
    out->cand = calloc(total, sizeof *out->cand);
    if (!out->cand)
        return NB_ENOMEM;
    int k = 0;
    for (int m = mlo; m <= mhi; m++) {
        if (mdl->global_batch % m)
            continue;
        double n = (double)mdl->global_batch / m;
        for (int si = 0; si < ns; si++)
            for (int fi = 0; fi < nf; fi++)
                for (int bi = 0; bi < nbk; bi++) {
                    nb_plan_cand_t *c = &out->cand[k++];
                    c->m = m;
                    c->mb_size = n;
                    c->sched = scheds[si];
                    c->fwd_codec = fidx[fi];
                    c->bwd_codec = bidx[bi];
                    c->use_placement = sh.by_daemon;
                    memcpy(c->placement, sh.placement, sizeof c->placement);
                    if (c->sched.kind == NB_SCHED_1F1B && c->sched.extra == NB_PLAN_EXTRA_AUTO) {
                        c->sched.extra = auto_depth(cost, mdl, &sh, c);
                        /* Already in the list explicitly: not twice. */
                        int dup = 0;
                        for (int j = 0; j < ns; j++)
                            dup |= scheds[j].kind == NB_SCHED_1F1B &&
                                   scheds[j].extra == c->sched.extra;
                        if (dup) {
                            memset(c, 0, sizeof *c);
                            k--;
                            continue;
                        }
                    }
                    for (int s = 0; s < p; s++) {
                        int w = nb_sched_peak_inflight(&c->sched, p, m, s);
                        if (w < 0) {
                            seterr(err, errlen, "schedule %d: invalid", si);
                            nb_plan_result_free(out);
                            return NB_EINVAL;
                        }
                        c->inflight[s] = w;
                    }
                    int rc = 0;
                    if (fixed)
                        memcpy(c->layers, req->fixed_layers, (size_t)p * sizeof(int));
                    else
                        rc = split_layers(cost, mdl, p, sh.pb, c->inflight, n,
                                          &cost->codec[c->fwd_codec],
                                          &cost->codec[c->bwd_codec], c->layers);
                    if (rc < 0) {
                        nb_plan_result_free(out);
                        return rc;
                    }
                    if (rc > 0)
                        even_split(mdl->n_layers, p, sh.pb, c->layers);
                    rc = finish(cost, mdl, &sh, c, err, errlen);
                    if (rc < 0) {
                        nb_plan_result_free(out);
                        return rc;
                    }
                    if (c->feasible)
                        out->nfeasible++;
                }
    }
    NB_CHECK((size_t)k <= total);
    out->n = k;
    qsort(out->cand, (size_t)k, sizeof *out->cand, cmp_time);
    if (!fixed && p > 1) {
        /* Polish the splits of the leading candidates by simulation, then
         * rank again. */
        int top = out->nfeasible < NB_PLAN_REFINE_TOP ? out->nfeasible : NB_PLAN_REFINE_TOP;
        for (int i = 0; i < top; i++) {
            int rc = refine_split(cost, mdl, &sh, &out->cand[i], err, errlen);
            if (rc < 0) {
                nb_plan_result_free(out);
                return rc;
            }
        }
        qsort(out->cand, (size_t)k, sizeof *out->cand, cmp_time);
    }
    if (out->nfeasible == 0) {
        const nb_plan_cand_t *c = &out->cand[0];
        char sb[24], sp[256], line[320];
        seterr(err, errlen, "no plan fits in memory; closest: %s on split %s, where %s",
               nb_sched_format(&c->sched, sb, sizeof sb), split_str(c, p, sp, sizeof sp),
               nb_plan_oom_line(mdl, p, c, line, sizeof line));
        return NB_ELIMIT;
    }
    /* Near-ties of the fastest: the preferred one moves to the front. */
    double tie = req->tie_rel > 0 ? req->tie_rel : 0.005;
    double tmax = out->cand[0].step_time * (1 + tie);
    int pick = 0;
    for (int i = 1; i < out->nfeasible && out->cand[i].step_time <= tmax; i++)
        if (cmp_tie(cost, &out->cand[i], &out->cand[pick]) < 0)
            pick = i;
    if (pick) {
        nb_plan_cand_t chosen = out->cand[pick];
        memmove(&out->cand[1], &out->cand[0], (size_t)pick * sizeof *out->cand);
        out->cand[0] = chosen;
    }
    return 0;
}

void nb_plan_result_free(nb_plan_result_t *r)
{
    if (!r)
        return;
    free(r->cand);
    memset(r, 0, sizeof *r);
}

const char *nb_plan_describe(const nb_cost_t *cost, const nb_plan_cand_t *c, char *buf,
                             size_t len)
{
    char sb[24], sp[256];
    int n = snprintf(buf, len, "m=%d %s fwd=%s bwd=%s split=%s T=%.4fs bubble=%.1f%%", c->m,
                     nb_sched_format(&c->sched, sb, sizeof sb), cost->codec[c->fwd_codec].spec,
                     cost->codec[c->bwd_codec].spec, split_str(c, cost->p, sp, sizeof sp),
                     c->step_time, 100 * c->bubble);
    if (c->allreduce_s > 0 && n >= 0 && (size_t)n < len)
        snprintf(buf + n, len - (size_t)n, " allreduce=%.1f%%", 100 * c->allreduce_share);
    return buf;
}

int nb_plan_print(FILE *f, const nb_cost_t *cost, const nb_plan_result_t *r, int max_rows)
{
    int p = cost->p;
    int rows = (max_rows > 0 && max_rows < r->n) ? max_rows : r->n;
    /* The all-reduce column appears when some stage has replicas. */
    int dp = 0;
    for (int s = 0; s < p; s++)
        dp |= nb_cost_replicas(cost, s) > 1;
    fprintf(f, "%4s %5s %7s %-8s %-16s %7s %-16s %7s %-12s %10s %10s %7s", "rank", "m", "mb",
            "schedule", "fwd codec", "fwd err", "bwd codec", "bwd err", "split", "step (s)",
            "samples/s", "bubble");
    if (dp)
        fprintf(f, " %9s", "allreduce");
    fprintf(f, "  %s\n", "peak memory per stage (GiB)");
    for (int i = 0; i < rows; i++) {
        const nb_plan_cand_t *c = &r->cand[i];
        char sb[24], sp[256], mem[512];
        size_t off = 0;
        mem[0] = 0;
        for (int s = 0; s < p && off < sizeof mem; s++)
            off += (size_t)snprintf(mem + off, sizeof mem - off, "%s%.2f", s ? " " : "",
                                    c->mem[s] / GIB);
        char rank[16];
        if (c->feasible)
            snprintf(rank, sizeof rank, "%d", i + 1);
        else
            snprintf(rank, sizeof rank, "-");
        fprintf(f, "%4s %5d %7g %-8s %-16s %6.2f%% %-16s %6.2f%% %-12s %10.4f %10.1f %6.1f%%",
                rank, c->m, c->mb_size, nb_sched_format(&c->sched, sb, sizeof sb),
                cost->codec[c->fwd_codec].spec, 100 * cost->codec_err[c->fwd_codec],
                cost->codec[c->bwd_codec].spec, 100 * cost->codec_err[c->bwd_codec],
                split_str(c, p, sp, sizeof sp), c->step_time, c->samples_per_s,
                100 * c->bubble);
        if (dp)
            fprintf(f, " %8.1f%%", 100 * c->allreduce_share);
        fprintf(f, "  %s", mem);
        if (!c->feasible)
            fprintf(f, "  OOM: stage %d needs %.2f GiB, limit %.2f", c->oom_stage,
                    c->oom_need / GIB, c->oom_limit / GIB);
        else if (i == 0)
            fprintf(f, "  <- chosen");
        fputc('\n', f);
    }
    if (rows < r->n)
        fprintf(f, "(%d more candidates not shown)\n", r->n - rows);
    return ferror(f) ? NB_EIO : 0;
}

const char *nb_plan_oom_line(const nb_cost_model_t *mdl, int p, const nb_plan_cand_t *c,
                             char *buf, size_t len)
{
    int s = c->oom_stage;
    if (c->feasible || s < 0) {
        snprintf(buf, len, "fits in memory");
        return buf;
    }
    if (fabs(c->oom_need - c->mem[s]) > 0.5) {
        snprintf(buf, len,
                 "the daemon hosting stage %d and the stages placed with it needs %.2f GiB at "
                 "m=%d (micro-batch %g; stage %d alone %.2f GiB), limit %.2f GiB",
                 s, c->oom_need / GIB, c->m, c->mb_size, s, c->mem[s] / GIB, c->oom_limit / GIB);
        return buf;
    }
    /* c->mem is per device (a replica stashes only its shard) */
    double stash = c->mem[s] - nb_cost_stage_mem(mdl, p, s, c->layers[s], 0, c->mb_size);
    snprintf(buf, len,
             "stage %d needs %.2f GiB at m=%d (micro-batch %g, %d in flight: state %.2f GiB + "
             "stash %.2f GiB), limit %.2f GiB",
             s, c->oom_need / GIB, c->m, c->mb_size, c->inflight[s],
             (c->oom_need - stash) / GIB, stash / GIB, c->oom_limit / GIB);
    return buf;
}

int nb_plan_evaluate(const nb_cost_t *cost, const nb_cost_model_t *mdl, int m,
                     const nb_sched_spec_t *sched, const char *fwd_codec, const char *bwd_codec,
                     const int *layers, nb_plan_cand_t *out, char *err, size_t errlen)
{
    int p = cost->p;
    memset(out, 0, sizeof *out);
    if (m < 1 || m > NB_SCHED_MAX_MB || mdl->global_batch % m != 0) {
        seterr(err, errlen, "micro-batches: %d does not divide the global batch %d", m,
               mdl->global_batch);
        return NB_EINVAL;
    }
    const nb_cost_codec_t *cf = nb_cost_codec_find(cost, fwd_codec ? fwd_codec : "");
    const nb_cost_codec_t *cb = nb_cost_codec_find(cost, bwd_codec ? bwd_codec : "");
    if (!cf || !cb) {
        seterr(err, errlen, "%s codec '%s' has no measurements", cf ? "backward" : "forward",
               cf ? (bwd_codec ? bwd_codec : "(null)") : (fwd_codec ? fwd_codec : "(null)"));
        return NB_EINVAL;
    }
    int sum = 0;
    for (int s = 0; s < p; s++) {
        if (layers[s] < (s == p - 1 && p > 1 ? 0 : 1)) {
            seterr(err, errlen, "layer split: stage %d has %d blocks", s, layers[s]);
            return NB_EINVAL;
        }
        sum += layers[s];
    }
    if (sum != mdl->n_layers) {
        seterr(err, errlen, "layer split: sums to %d, the model has %d blocks", sum,
               mdl->n_layers);
        return NB_EINVAL;
    }
    out->m = m;
    out->mb_size = (double)mdl->global_batch / m;
    out->sched = *sched;
    out->fwd_codec = (int)(cf - cost->codec);
    out->bwd_codec = (int)(cb - cost->codec);
    memcpy(out->layers, layers, (size_t)p * sizeof(int));
    for (int s = 0; s < p; s++) {
        int w = nb_sched_peak_inflight(sched, p, m, s);
        if (w < 0) {
            seterr(err, errlen, "schedule: invalid");
            return NB_EINVAL;
        }
        out->inflight[s] = w;
    }
    shape_t sh;
    shape_identity(&sh, p);
    if (layers[p - 1] == 0 && p > 1)
        sh.pb = p - 1;
    int rc = finish(cost, mdl, &sh, out, err, errlen);
    if (rc < 0)
        return rc;
    if (!out->feasible) {
        char line[320];
        seterr(err, errlen, "%s", nb_plan_oom_line(mdl, p, out, line, sizeof line));
        return NB_ELIMIT;
    }
    return 0;
}
