/*
 * stage_host.c - the stage host's lifecycle: the parts, optimizers,
 * replicas, buffers and token files of the stages one daemon hosts, what it
 * reports about them, and applying a step's gradients. The step itself is
 * stage_step.c; see stage_host.h for the contract and docs/pipeline.md for
 * what crosses each cut.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/data/tokens.h"
#include "daemon/pipeline/stage_host_internal.h"
#include "daemon/train/holdout.h"

void nb_host_free(nb_host_t *h)
{
    if (!h)
        return;
    /* head parts may borrow the embedding part's wte: free them first */
    for (int i = h->n - 1; i >= 0; i--) {
        hosted_t *s = &h->st[i];
        for (int j = 0; j < s->pool_n; j++)
            nb_reps_acts_free(s->pool[j]);
        free(s->pool);
        free(s->busy);
        free(s->slot_of_mb);
        if (s->x_in) nb_be_dealloc(h->be, s->x_in);
        if (s->dout) nb_be_dealloc(h->be, s->dout);
        if (s->d_tokens) nb_be_dealloc(h->be, s->d_tokens);
        if (s->d_targets) nb_be_dealloc(h->be, s->d_targets);
        for (int k = 0; k < 4; k++) {
            nb_codec_stream_free(s->streams[k]);
            nb_codec_stream_free(s->saved[k]);
        }
        nb__fifo_free(h->be, &s->local_in[0]);
        nb__fifo_free(h->be, &s->local_in[1]);
        nb_reps_free(s->reps);
        nb_optim_free(s->optim);
        nb_part_free(s->part);
    }
    for (int i = 0; i < h->labels_cap; i++)
        free(h->labels[i]);
    free(h->labels);
    free(h->ops);
    free(h->timings);
    nb_codec_msg_free(&h->enc);
    nb_tokens_close(h->heldout); /* slices: before the file they borrow */
    nb_tokens_close(h->tokens);
    nb_tokens_close(h->file);
    free(h);
}

int nb_host_new(nb_backend_t *be, const nb_pipe_layout_t *l, int daemon, const char *data,
                nb_host_t **out, char *err, size_t errlen)
{
    return nb_host_new_replicas(&be, 1, l, daemon, data, out, err, errlen);
}

int nb_host_new_replicas(nb_backend_t *const *bes, int n_replicas, const nb_pipe_layout_t *l, int daemon,
                         const char *data, nb_host_t **out, char *err, size_t errlen)
{
    *out = NULL;
    nb_backend_t *be = bes[0];
    const char *why = nb_pipe_layout_validate(l);
    if (why) {
        snprintf(err, errlen, "%s", why);
        return NB_EINVAL;
    }
    if (daemon < 0 || daemon >= l->n_daemons) {
        snprintf(err, errlen, "layout: daemon index %d out of range", daemon);
        return NB_EINVAL;
    }
    for (int r = 0; r < n_replicas; r++)
        if (nb_be_set_precision(bes[r], l->precision)) {
            snprintf(err, errlen, "job.precision bf16: the %s backend has no bf16 matmuls", bes[r]->iface->name);
            return NB_EINVAL;
        }
    nb_host_t *h = calloc(1, sizeof *h);
    if (!h)
        return NB_ENOMEM;
    h->be = be;
    h->l = *l;
    h->daemon = daemon;
    h->labels_travel = l->placement[0] != l->placement[l->p - 1];
    nb_codec_msg_init(&h->enc);
    int rc = nb_grad_fault_from_env(&h->fault, err, errlen);
    if (rc)
        goto fail;
    for (int s = 0; s < l->p; s++)
        h->local_of[s] = -1;
    for (int s = 0; s < l->p; s++) {
        if (l->placement[s] != daemon)
            continue;
        hosted_t *hs = &h->st[h->n];
        hs->stage = s;
        h->local_of[s] = h->n++;
        nb_part_t *tie = NULL;
        if (l->parts[s].head && !l->parts[s].embed && l->model.tie_embeddings)
            tie = h->st[h->local_of[0]].part; /* validated: stage 0 is here */
        if ((rc = nb_part_new(be, &l->model, &l->parts[s], l->seed, tie, &hs->part, err, errlen)))
            goto fail;
        /* each stage freezes the tensors of the job's patterns it holds */
        if ((rc = nb_part_freeze(hs->part, &l->freeze)) ||
            (rc = nb_part_optim_new(hs->part, &l->optim, &hs->optim))) {
            snprintf(err, errlen, "stage %d: cannot create the gradients or the optimizer (%s)", s,
                     nb_strerror(rc));
            goto fail;
        }
        nb_reps_t *tie_reps = tie ? h->st[h->local_of[0]].reps : NULL;
        if ((rc = nb_reps_new(hs->part, hs->optim, bes, n_replicas, &l->optim, l->seed, tie_reps, &hs->reps,
                              err, errlen)))
            goto fail;
        size_t ab = nb__host_act_elems(h) * sizeof(float), tb = nb__host_bt_elems(h) * sizeof(int32_t);
        if (!l->parts[s].embed && !(hs->x_in = nb_be_alloc(be, ab)))
            goto oom;
        if (!l->parts[s].head && !(hs->dout = nb_be_alloc(be, ab)))
            goto oom;
        if (l->parts[s].embed && !(hs->d_tokens = nb_be_alloc(be, tb)))
            goto oom;
        if (l->parts[s].head && !(hs->d_targets = nb_be_alloc(be, tb)))
            goto oom;
        for (int k = 0; k < 4; k++)
            if (!(hs->streams[k] = nb_codec_stream_new(be, HOST_STREAM_STATE_BYTES)) ||
                !(hs->saved[k] = nb_codec_stream_new(be, HOST_STREAM_STATE_BYTES)))
                goto oom;
    }
    if (h->local_of[0] >= 0) {
        if (!data || !*data) {
            snprintf(err, errlen, "stage 0 is hosted here but no token file (data) is configured");
            rc = NB_EINVAL;
            goto fail;
        }
        if ((rc = nb_tokens_open(data, &h->tokens, err, errlen)))
            goto fail;
        bool mlm = l->model.head == NB_MODEL_HEAD_MLM;
        if (nb_tokens_vocab(h->tokens) > (uint32_t)l->model.vocab - (mlm && !l->model.mask_token ? 1u : 0u)) {
            snprintf(err, errlen, "%s: vocabulary %u is larger than model.vocab %d%s", data,
                     nb_tokens_vocab(h->tokens), l->model.vocab, mlm ? " minus the mask token" : "");
            rc = NB_EINVAL;
            goto fail;
        }
        if (l->eval_fraction > 0.0) {
            /* nebula-train's rule: the tail is held out, training never sees it */
            h->file = h->tokens;
            h->tokens = NULL;
            if ((rc = nb_holdout_split(h->file, data, l->eval_fraction, l->seq_len, &h->tokens, &h->heldout, err,
                                       errlen)))
                goto fail;
        }
    }
    *out = h;
    return 0;
oom:
    snprintf(err, errlen, "out of memory for the stage buffers");
    rc = NB_ENOMEM;
fail:
    nb_host_free(h);
    return rc;
}

int nb_host_num_stages(const nb_host_t *h) { return h->n; }
const nb_pipe_layout_t *nb_host_layout(const nb_host_t *h) { return &h->l; }
int nb_host_daemon(const nb_host_t *h) { return h->daemon; }
nb_backend_t *nb_host_backend(const nb_host_t *h) { return h->be; }
const nb_tokens_t *nb_host_heldout(const nb_host_t *h) { return h->heldout; }
int nb_host_stage(const nb_host_t *h, int i) { return h->st[i].stage; }
nb_part_t *nb_host_part(nb_host_t *h, int i) { return h->st[i].part; }

int nb_host_replicas(const nb_host_t *h) { return h->n ? nb_reps_count(h->st[0].reps) : 1; }
nb_part_t *nb_host_replica_part(nb_host_t *h, int i, int r) { return nb_reps_part(h->st[i].reps, r); }

size_t nb_host_overlapped(const nb_host_t *h)
{
    size_t n = 0;
    for (int i = 0; i < h->n; i++)
        n += nb_reps_overlapped(h->st[i].reps);
    return n;
}

int nb_host_sync_replicas(nb_host_t *h)
{
    for (int i = 0; i < h->n; i++) {
        int rc = nb_reps_sync(h->st[i].reps);
        if (rc)
            return rc;
    }
    return 0;
}

size_t nb_host_memory_bytes(const nb_host_t *h)
{
    nb_mem_model_t m;
    nb_host_memory_parts(h, &m);
    return (size_t)(m.weights + m.gradients + m.optimizer + m.activations);
}

void nb_host_memory_parts(const nb_host_t *h, nb_mem_model_t *out)
{
    memset(out, 0, sizeof *out);
    uint64_t R = (uint64_t)nb_host_replicas(h);
    for (int i = 0; i < h->n; i++) {
        /* on every replica; frozen tensors have weights but no gradient
         * and no AdamW state */
        out->weights += nb_part_num_params(h->st[i].part) * sizeof(float) * R;
        out->gradients += nb_part_grad_bytes(h->st[i].part) * R;
        out->optimizer += nb_optim_numel(h->st[i].optim) * sizeof(float) * 2 * R; /* AdamW m and v */
    }
    out->activations = h->peak_acts_bytes;
}


int nb_host_save_streams(nb_host_t *h)
{
    int rc = 0;
    for (int i = 0; i < h->n; i++)
        for (int k = 0; k < 4; k++) {
            hosted_t *s = &h->st[i];
            if (nb_codec_stream_empty(s->streams[k]) && nb_codec_stream_empty(s->saved[k]))
                continue;
            int r = nb_codec_stream_copy(s->saved[k], s->streams[k]);
            if (r && !rc)
                rc = r;
        }
    return rc;
}

nb_codec_stream_t *nb_host_stream(nb_host_t *h, int i, int k)
{
    return h->st[i].streams[k];
}

nb_optim_t *nb_host_optim(nb_host_t *h, int i) { return h->st[i].optim; }

bool nb_host_apply(nb_host_t *h, int64_t step, double global_sumsq)
{
    /* nb_optim_clip_scale(NaN) is 1: a non-finite norm must never reach the
     * update, or every weight it touches becomes NaN */
    bool apply = isfinite(global_sumsq);
    if (apply) {
        float scale = nb_optim_clip_scale(&h->l.optim, global_sumsq);
        float lr = (float)nb_optim_lr(&h->l.optim, (int)step);
        for (int i = 0; i < h->n; i++) /* every replica steps with the same gradients */
            nb_reps_step(h->st[i].reps, lr, scale);
    }
    for (int i = 0; i < h->n; i++)
        nb_reps_zero_grad(h->st[i].reps);
    nb_be_sync(h->be);
    /* the streams' state at this step boundary is what an aborted next
     * step returns to; out of memory here is found by the next copy */
    (void)nb_host_save_streams(h);
    return apply;
}
