/*
 * cost.c - fits and evaluations of the planner's cost model (see cost.h).
 */
#include "daemon/planner/cost.h"

#include <math.h>
#include <string.h>

#include "kernels/common.h"

double nb_fit_eval(const nb_fit_t *f, double n)
{
    return f->a + f->b * n;
}

int nb_fit_least_squares(const double *n, const double *t, int count, nb_fit_t *out)
{
    if (!n || !t || !out || count < 1)
        return NB_EINVAL;
    double sn = 0, st = 0;
    for (int i = 0; i < count; i++) {
        if (!isfinite(n[i]) || !isfinite(t[i]) || n[i] < 0 || t[i] < 0)
            return NB_EINVAL;
        sn += n[i];
        st += t[i];
    }
    double mn = sn / count, mt = st / count;
    double sxx = 0, sxy = 0;
    for (int i = 0; i < count; i++) {
        sxx += (n[i] - mn) * (n[i] - mn);
        sxy += (n[i] - mn) * (t[i] - mt);
    }
    nb_fit_t f;
    if (sxx <= 0) {
        /* One size only: all of the time is per sample. */
        f.a = 0;
        f.b = mn > 0 ? mt / mn : 0;
    } else {
        f.b = sxy / sxx;
        f.a = mt - f.b * mn;
    }
    if (f.b < 0) {
        /* Time falling with size is noise: a constant cost. */
        f.b = 0;
        f.a = mt;
    } else if (f.a < 0) {
        /* Best line through the origin. */
        double sxx0 = 0, sxy0 = 0;
        for (int i = 0; i < count; i++) {
            sxx0 += n[i] * n[i];
            sxy0 += n[i] * t[i];
        }
        f.a = 0;
        f.b = sxx0 > 0 ? sxy0 / sxx0 : 0;
    }
    *out = f;
    return 0;
}

int nb_fit_ema_update(nb_fit_t *f, double n, double measured, double alpha)
{
    if (!f || !(alpha > 0 && alpha <= 1) || !(measured > 0) || !isfinite(measured))
        return NB_EINVAL;
    double pred = nb_fit_eval(f, n);
    if (!(pred > 0))
        return NB_EINVAL;
    double k = 1 + alpha * (measured / pred - 1);
    f->a *= k;
    f->b *= k;
    return 0;
}

int nb_cost_model_gpt(int n_layers, int h, int heads, int seq, int vocab, int tied_head,
                      int global_batch, nb_cost_model_t *out)
{
    if (!out || n_layers < 1 || h < 1 || heads < 1 || seq < 1 || vocab < 1 || global_batch < 1)
        return NB_EINVAL;
    double H = h, S = seq;
    *out = (nb_cost_model_t){
        .n_layers = n_layers,
        .params_per_layer = 12.0 * H * H + 13.0 * H,
        .embed_params = (double)vocab * H + S * H,
        .head_params = tied_head ? 0 : (double)vocab * H,
        .state_bytes_per_param = 16,
        .act_bytes_per_sample_layer = 4.0 * (S * (10.0 * H + 8.0 * H) + 2.0 * heads * S * S),
        .boundary_bytes_per_sample = 4.0 * S * H,
        .global_batch = global_batch,
    };
    return 0;
}

double nb_cost_cut_bytes(const nb_cost_model_t *mdl, int blocks_below)
{
    if (mdl->narrow_cut > 0 && blocks_below == mdl->narrow_cut)
        return mdl->narrow_bytes_per_sample;
    return mdl->boundary_bytes_per_sample;
}

const nb_cost_codec_t *nb_cost_codec_find(const nb_cost_t *c, const char *spec)
{
    for (int i = 0; i < c->ncodecs; i++)
        if (strcmp(c->codec[i].spec, spec) == 0)
            return &c->codec[i];
    return NULL;
}

double nb_cost_xfer_busy(const nb_cost_dir_t *d, const nb_cost_codec_t *codec, double raw_bytes)
{
    NB_CHECK(d->bandwidth > 0);
    double ratio = codec ? codec->ratio : 1.0;
    return d->overhead + ratio * raw_bytes / d->bandwidth;
}

int nb_cost_replicas(const nb_cost_t *c, int s)
{
    NB_CHECK(s >= 0 && s < c->p);
    return c->stage[s].replicas > 1 ? c->stage[s].replicas : 1;
}

/* The shard the slowest replica runs, and what splitting costs. */
static double shard(const nb_cost_t *c, int s, double n, double *extra)
{
    int r = nb_cost_replicas(c, s);
    *extra = r > 1 ? c->stage[s].replica_overhead : 0;
    return r > 1 ? ceil(n / r - 1e-9) : n;
}

double nb_cost_fwd(const nb_cost_t *c, int s, int layers, double n)
{
    const nb_cost_stage_t *st = &c->stage[s];
    double extra, k = shard(c, s, n, &extra);
    return nb_fit_eval(&st->fwd_fixed, k) + layers * nb_fit_eval(&st->fwd_layer, k) + extra;
}

double nb_cost_bwd(const nb_cost_t *c, int s, int layers, double n)
{
    const nb_cost_stage_t *st = &c->stage[s];
    double extra, k = shard(c, s, n, &extra);
    return nb_fit_eval(&st->bwd_fixed, k) + layers * nb_fit_eval(&st->bwd_layer, k) + extra;
}

double nb_cost_grad_bytes(const nb_cost_model_t *mdl, int p, int s, int layers)
{
    double params = layers * mdl->params_per_layer;
    if (s == 0)
        params += mdl->embed_params;
    if (s == p - 1)
        params += mdl->head_params;
    return 4.0 * params;
}

double nb_cost_allreduce(const nb_cost_t *c, int s, double grad_bytes)
{
    int r = nb_cost_replicas(c, s);
    if (r < 2 || !(grad_bytes > 0))
        return 0;
    double bw = c->stage[s].reduce_bw > 0 ? c->stage[s].reduce_bw : NB_COST_REDUCE_BW_CPU;
    return 2.0 * (r - 1) / r * grad_bytes / bw;
}

double nb_cost_stage_mem(const nb_cost_model_t *mdl, int p, int s, int layers, int inflight,
                         double n)
{
    double params = layers * mdl->params_per_layer;
    if (s == 0)
        params += mdl->embed_params;
    if (s == p - 1)
        params += mdl->head_params;
    double state = params * mdl->state_bytes_per_param;
    double stash = (double)inflight * n *
                   (layers * mdl->act_bytes_per_sample_layer + mdl->boundary_bytes_per_sample);
    return state + stash;
}

void nb_cost_set_bandwidth_mbit(nb_cost_t *c, double mbit)
{
    for (int s = 0; s + 1 < c->p; s++)
        for (int d = 0; d < 2; d++)
            c->link[s].dir[d].bandwidth = mbit * 1e6 / 8.0;
}

/* Scales a+b fits so that fixed + layers * per-block predicts `measured`. */
static int observe_pair(nb_fit_t *fixed, nb_fit_t *layer, int layers, double n, double measured,
                        double alpha)
{
    if (!(measured > 0))
        return 0;
    double pred = nb_fit_eval(fixed, n) + layers * nb_fit_eval(layer, n);
    if (!(pred > 0) || !isfinite(measured))
        return NB_EINVAL;
    double k = 1 + alpha * (measured / pred - 1);
    fixed->a *= k, fixed->b *= k;
    layer->a *= k, layer->b *= k;
    return 0;
}

int nb_cost_observe_stage(nb_cost_t *c, int s, int layers, double n, double fwd_s, double bwd_s,
                          double alpha)
{
    if (!c || s < 0 || s >= c->p || layers < 0 || !(n > 0) || !(alpha > 0 && alpha <= 1))
        return NB_EINVAL;
    nb_cost_stage_t *st = &c->stage[s];
    /* the fits are per device: a replicated stage measured its largest shard */
    double extra, k = shard(c, s, n, &extra);
    if (fwd_s > 0)
        fwd_s = fmax(fwd_s - extra, 1e-12);
    if (bwd_s > 0)
        bwd_s = fmax(bwd_s - extra, 1e-12);
    int rc = observe_pair(&st->fwd_fixed, &st->fwd_layer, layers, k, fwd_s, alpha);
    if (rc == 0)
        rc = observe_pair(&st->bwd_fixed, &st->bwd_layer, layers, k, bwd_s, alpha);
    return rc;
}

int nb_cost_observe_link(nb_cost_t *c, int boundary, int dir, double wire_bytes, double seconds,
                         double alpha)
{
    if (!c || boundary < 0 || boundary >= c->p - 1 || (dir != NB_DIR_FWD && dir != NB_DIR_BWD) ||
        !(wire_bytes > 0) || !(seconds > 0) || !isfinite(seconds) ||
        !(alpha > 0 && alpha <= 1))
        return NB_EINVAL;
    nb_cost_dir_t *d = &c->link[boundary].dir[dir];
    double payload = seconds - d->latency - d->overhead;
    if (payload < 0.002)
        return 0; /* dominated by latency: no bandwidth information */
    double bw = wire_bytes / payload;
    d->bandwidth = d->bandwidth > 0 ? d->bandwidth + alpha * (bw - d->bandwidth) : bw;
    return 0;
}
