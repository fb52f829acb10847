/*
 * plan_config.c - YAML job config -> planner request (see plan_config.h).
 */
#include "daemon/planner/plan_config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "kernels/common.h"
#include "kernels/model.h"

static int bad(char *err, size_t len, const char *fmt, ...)
{
    if (err && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, len, fmt, ap);
        va_end(ap);
    }
    return NB_EINVAL;
}

int nb_plan_config_stages(const nb_cfg_job_t *job)
{
    return job->topology == NB_TOPO_USHAPE ? job->n_clusters + 1 : job->n_clusters;
}

int nb_plan_req_from_config(const nb_cfg_job_t *job, nb_plan_req_t *out, char *err,
                            size_t errlen)
{
    memset(out, 0, sizeof *out);
    const nb_cfg_model_t *md = &job->model;
    if (!job->present)
        return bad(err, errlen, "job: the config has no job section");
    int p = nb_plan_config_stages(job);
    if (job->n_clusters < 1 || p > NB_COST_MAX_STAGES)
        return bad(err, errlen, "job.clusters: %d clusters cannot be planned (1..%d stages)",
                   job->n_clusters, NB_COST_MAX_STAGES);
    if (md->n_layer < 1 || md->d_model < 1 || md->n_head < 1 || md->vocab < 1)
        return bad(err, errlen, "job.model: n_layer, d_model, n_head and vocab must be >= 1");
    if (job->batch < 1 || job->batch > 1 << 30)
        return bad(err, errlen, "job.batch: %lld cannot be planned", (long long)job->batch);
    int seq = (int)(job->seq_len > 0 ? job->seq_len : md->max_seq);
    double h = md->d_model, dff = md->d_ff > 0 ? md->d_ff : 4.0 * md->d_model, S = seq;
    nb_cost_model_t *m = &out->model;
    m->n_layers = md->n_layer;
    m->params_per_layer = 4 * h * h + 2 * h * dff + 9 * h + dff;
    m->embed_params = (double)md->vocab * h + (double)md->max_seq * h;
    if (md->head == NB_HEAD_SEQCLS || md->head == NB_HEAD_TOKCLS)
        m->head_params = 2 * h + md->n_classes * (h + 1);
    else
        m->head_params = 2 * h + (md->tie_embeddings ? 0 : (double)md->vocab * h);
    m->state_bytes_per_param = 16;
    m->act_bytes_per_sample_layer = 4.0 * (S * (10 * h + 2 * dff) + 2.0 * md->n_head * S * S);
    m->boundary_bytes_per_sample = 4.0 * S * h;
    /* each cut's width from the model family: the part below a cut ends
     * there without the head (the head is on the last stage), so its
     * output width is what crosses; a low-rank split (job.lowrank) makes
     * the cut at its factor rank-wide */
    nb_model_config_t mc = { .n_layer = md->n_layer, .d_model = md->d_model, .d_ff = (int)dff,
                             .lowrank_block = job->lowrank.rank > 0 ? job->lowrank.block : 0,
                             .lowrank_rank = job->lowrank.rank > 0 ? job->lowrank.rank : 0 };
    for (int cut = 1; cut <= md->n_layer; cut++) {
        nb_part_spec_t below = { .embed = false, .first = cut - 1, .last = cut, .head = false };
        int w = nb_part_spec_out_width(&mc, &below);
        if (w != md->d_model) {
            m->narrow_cut = cut;
            m->narrow_bytes_per_sample = 4.0 * S * w;
        }
    }
    m->global_batch = (int)job->batch;
    out->p = p;
    if (job->micro_batches > 0)
        out->m_min = out->m_max = (int)job->micro_batches;
    if (job->schedule == NB_CFG_SCHED_GPIPE) {
        out->nscheds = 1;
        out->scheds[0] = (nb_sched_spec_t){NB_SCHED_GPIPE, 0};
    } else if (job->schedule == NB_CFG_SCHED_1F1B) {
        out->nscheds = 1;
        out->scheds[0] = (nb_sched_spec_t){NB_SCHED_1F1B, 0};
    }
    if (job->planner.n_codecs > 0) {
        if (job->planner.n_codecs > NB_PLAN_MAX_CHOICES)
            return bad(err, errlen, "job.planner.codecs: at most %d codecs",
                       NB_PLAN_MAX_CHOICES);
        for (int i = 0; i < job->planner.n_codecs; i++)
            out->fwd_codecs[i] = out->bwd_codecs[i] = job->planner.codecs[i];
        out->nfwd = out->nbwd = job->planner.n_codecs;
        /* the budget bounds the planner's choice; codecs the job fixes
         * itself are the operator's and run as given */
        out->max_err = job->planner.max_codec_error;
    } else {
        if (job->codecs.forward[0]) {
            out->fwd_codecs[0] = job->codecs.forward;
            out->nfwd = 1;
        }
        if (job->codecs.backward[0]) {
            out->bwd_codecs[0] = job->codecs.backward;
            out->nbwd = 1;
        }
    }
    if (job->topology == NB_TOPO_USHAPE) {
        if (job->n_clusters < 2)
            return bad(err, errlen, "job.topology: ushape needs at least 2 clusters");
        out->head_only_last = 1;
        out->use_placement = 1;
        for (int s = 0; s < p - 1; s++)
            out->placement[s] = s;
        out->placement[p - 1] = 0;
    }
    int pinned = 0;
    for (int c = 0; c < job->n_clusters; c++)
        pinned += !job->clusters[c].layers_auto;
    if (pinned == job->n_clusters) {
        int sum = 0;
        for (int c = 0; c < job->n_clusters; c++) {
            const nb_cfg_cluster_t *cl = &job->clusters[c];
            int n = cl->layer_last - cl->layer_first + 1;
            if (n < 1)
                return bad(err, errlen, "job.clusters[%d].layers: %d-%d holds no block", c,
                           cl->layer_first, cl->layer_last);
            out->fixed_layers[c] = n;
            sum += n;
        }
        if (sum != md->n_layer)
            return bad(err, errlen, "job.clusters[].layers: cover %d blocks, the model has %d",
                       sum, md->n_layer);
    } else if (pinned) {
        return bad(err, errlen, "job.clusters[].layers: give every cluster a range, or none");
    }
    return 0;
}

void nb_plan_config_memory(const nb_cfg_job_t *job, nb_cost_t *cost)
{
    double lim = (double)job->planner.stage_memory_bytes;
    if (lim <= 0)
        return;
    for (int s = 0; s < cost->p; s++)
        if (cost->stage[s].mem_limit <= 0)
            cost->stage[s].mem_limit = lim;
}
