/*
 * stage_step.c - runs one training step of the stage host: the daemon's
 * merged schedule op by op (forward, backward, and the transfers of
 * stage_xfer.c), then the replicas' all-reduce and the gradients' sum of
 * squares for the global clip; and aborting a step a fault ended.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/clock.h"
#include "daemon/pipeline/stage_host_internal.h"
#include "daemon/planner/sched_exec.h"

static int op_forward(step_ctx_t *c, const nb_sched_op_t *op)
{
    nb_host_t *h = c->h;
    int s = op->stage, mb = op->mb, m = c->plan->m;
    hosted_t *hs = &h->st[h->local_of[s]];
    const nb_part_spec_t *ps = &h->l.parts[s];
    size_t bt = nb__host_bt_elems(h);
    nb_part_input_t in = { .loss_scale = 1.0f / (float)m };
    nb_mb_timing_t *tm = nb__host_timing(h, s, mb, m);
    if (ps->embed) {
        int32_t *inputs = malloc(bt * sizeof(int32_t)), *targets = malloc(bt * sizeof(int32_t));
        if (!inputs || !targets) {
            free(inputs);
            free(targets);
            return NB_ENOMEM;
        }
        /* the trainer's samplers (trainer.h): masked tokens for mlm */
        int rc = h->l.model.head == NB_MODEL_HEAD_MLM
                     ? nb_tokens_sample_mlm(h->tokens, h->l.seed, (uint64_t)c->plan->step, (uint32_t)mb,
                                            h->l.micro_batch_size, h->l.seq_len, NB_TOKENS_MLM_MASK_PROB,
                                            nb_model_mask_token(&h->l.model), inputs, targets)
                     : nb_tokens_sample(h->tokens, h->l.seed, (uint64_t)c->plan->step, (uint32_t)mb,
                                        h->l.micro_batch_size, h->l.seq_len, inputs, targets);
        if (rc) {
            free(inputs);
            free(targets);
            snprintf(c->err, c->errlen, "step %lld micro-batch %d: cannot sample a batch",
                     (long long)c->plan->step, mb);
            return rc;
        }
        nb_be_from_host(h->be, hs->d_tokens, inputs, bt * sizeof(int32_t));
        nb_be_sync(h->be); /* inputs is freed next */
        free(inputs);
        nb__host_put_labels(h, mb, targets);
        in.tokens = hs->d_tokens;
    } else {
        in.x = hs->x_in;
    }
    if (ps->head) {
        NB_CHECK(h->labels[mb]);
        nb_be_from_host(h->be, hs->d_targets, h->labels[mb], bt * sizeof(int32_t));
        in.targets = hs->d_targets;
        if (nb_reps_count(hs->reps) > 1) /* shards normalise by the whole micro-batch */
            for (size_t i = 0; i < bt; i++)
                in.loss_count += h->labels[mb][i] >= 0;
    }
    nb_reps_acts_t *a;
    int rc = nb__host_acquire_slot(h, hs, mb, &a);
    if (rc) {
        snprintf(c->err, c->errlen, "stage %d: out of memory for the activations of micro-batch %d", s, mb);
        return rc;
    }
    float loss = 0.0f;
    tm->fwd_start_ns = nb_mono_ns();
    char why[160];
    rc = nb_reps_forward(hs->reps, a, &in, &loss, why, sizeof why);
    nb_be_sync(h->be);
    tm->fwd_ns = nb_mono_ns() - tm->fwd_start_ns;
    if (rc) {
        snprintf(c->err, c->errlen, "stage %d micro-batch %d: %s", s, mb, why);
        return rc;
    }
    if (ps->head) /* in float, in micro-batch order, as nb_trainer_step: the trainer's loss to the bit */
        c->loss = (double)((float)c->loss + loss / (float)m);
    return 0;
}

static int op_backward(step_ctx_t *c, const nb_sched_op_t *op)
{
    nb_host_t *h = c->h;
    int s = op->stage, mb = op->mb;
    hosted_t *hs = &h->st[h->local_of[s]];
    int slot = hs->slot_of_mb[mb];
    NB_CHECK(slot >= 0);
    nb_mb_timing_t *tm = nb__host_timing(h, s, mb, c->plan->m);
    tm->bwd_start_ns = nb_mono_ns();
    char why[160];
    int rc = nb_reps_backward(hs->reps, hs->pool[slot], h->l.parts[s].head ? NULL : hs->dout,
                              mb == c->last_bwd[s], why, sizeof why);
    nb_be_sync(h->be);
    tm->bwd_ns = nb_mono_ns() - tm->bwd_start_ns;
    if (rc) {
        snprintf(c->err, c->errlen, "stage %d micro-batch %d: %s", s, mb, why);
        return rc;
    }
    /* the slot stays busy until its input gradient has been sent */
    if (h->l.parts[s].embed)
        nb__host_release_slot(hs, mb);
    return 0;
}

static void release_after_send(nb_host_t *h, const nb_sched_op_t *op)
{
    if (op->kind == NB_OP_SEND_GRAD)
        nb__host_release_slot(&h->st[h->local_of[op->stage]], op->mb);
}

int nb_host_run_step(nb_host_t *h, const nb_step_plan_t *plan, const nb_pipe_io_i *io,
                     int timeout_ms, nb_step_result_t *res, char *err, size_t errlen)
{
    uint64_t t_start = nb_mono_ns();
    const nb_pipe_layout_t *l = &h->l;
    if (plan->m < 1 || plan->m > NB_SCHED_MAX_MB) {
        snprintf(err, errlen, "plan: %d micro-batches out of range 1..%d", plan->m, NB_SCHED_MAX_MB);
        return NB_EINVAL;
    }
    step_ctx_t c = { .h = h, .plan = plan, .io = io, .timeout_ms = timeout_ms, .err = err, .errlen = errlen };
    int rc;
    if ((rc = nb_codec_spec_parse(plan->fwd_codec, &c.fwd, err, errlen)) ||
        (rc = nb_codec_spec_parse(plan->bwd_codec, &c.bwd, err, errlen)))
        return rc;
    int n = nb_sched_daemon_count(l->p, plan->m, l->placement, h->daemon);
    if (n < 0) {
        snprintf(err, errlen, "plan: no schedule for %d stages and %d micro-batches", l->p, plan->m);
        return n;
    }
    if (n > h->ops_cap) {
        nb_sched_op_t *o = realloc(h->ops, (size_t)n * sizeof *o);
        if (!o)
            return NB_ENOMEM;
        h->ops = o;
        h->ops_cap = n;
    }
    n = nb_sched_build_daemon(&plan->sched, l->p, plan->m, l->placement, h->daemon,
                              nb_sched_min_queue_cap(&plan->sched), h->ops, h->ops_cap);
    if (n < 0) {
        snprintf(err, errlen, "plan: the schedule cannot run on this placement (%s)", nb_strerror(n));
        return n;
    }
    if (plan->micro_batch_size > 0 && plan->micro_batch_size != l->micro_batch_size &&
        (rc = nb__host_resize_batch(h, plan->micro_batch_size, err, errlen)))
        return rc;
    int R = nb_host_replicas(h);
    if (l->micro_batch_size < R) {
        snprintf(err, errlen, "plan: a micro-batch of %d sequences cannot be split across this daemon's %d "
                 "replicas (each needs one sequence at least; docs/pipeline.md, \"Replicas\")",
                 l->micro_batch_size, R);
        return NB_EINVAL;
    }
    if ((rc = nb__host_prepare_step(h, plan->m)))
        return rc;
    for (int i = 0; i < n; i++)
        if (h->ops[i].kind == NB_OP_BWD)
            c.last_bwd[h->ops[i].stage] = h->ops[i].mb;
    for (int i = 0; i < n && rc == 0; i++) {
        const nb_sched_op_t *op = &h->ops[i];
        switch (op->kind) {
        case NB_OP_RECV_ACT:
        case NB_OP_RECV_GRAD: rc = nb__host_op_recv(&c, op); break;
        case NB_OP_FWD: rc = op_forward(&c, op); break;
        case NB_OP_BWD: rc = op_backward(&c, op); break;
        case NB_OP_SEND_ACT:
        case NB_OP_SEND_GRAD:
            rc = nb__host_op_send(&c, op);
            if (rc == 0)
                release_after_send(h, op);
            break;
        }
    }
    for (int i = 0; i < h->n && rc == 0; i++) { /* after the last backward: sum over the replicas */
        char why[160];
        if ((rc = nb_reps_reduce(h->st[i].reps, why, sizeof why)))
            snprintf(err, errlen, "stage %d: the all-reduce of the replicas' gradients failed: %s", h->st[i].stage,
                     why);
    }
    if (rc)
        return rc;
    double ss = 0.0;
    uint64_t nonfinite = 0;
    for (int i = 0; i < h->n; i++) {
        hosted_t *hs = &h->st[i];
        if (nb_grad_fault_hits(&h->fault, plan->step, hs->stage))
            nb_grad_fault_poison(h->be, nb_part_grads(hs->part));
        double si = nb_optim_sumsq(h->be, nb_part_grads(hs->part), nb_part_num_grads(hs->part));
        if (!isfinite(si))
            nonfinite |= 1ull << hs->stage;
        ss += si;
    }
    bool has_head = h->local_of[l->p - 1] >= 0;
    res->step = plan->step;
    res->loss = has_head ? c.loss : NAN;
    res->grad_sumsq = ss;
    res->nonfinite_stages = nonfinite;
    res->bytes_raw = c.bytes_raw;
    res->bytes_wire = c.bytes_wire;
    res->n_timings = h->n * plan->m;
    res->timings = h->timings;
    res->step_ns = nb_mono_ns() - t_start;
    return 0;
}

void nb_host_abort_step(nb_host_t *h)
{
    for (int i = 0; i < h->n; i++) {
        hosted_t *s = &h->st[i];
        for (int j = 0; j < s->pool_n; j++)
            s->busy[j] = false;
        for (int k = 0; k < 2; k++) {
            local_xfer_t x;
            while (nb__fifo_pop(&s->local_in[k], &x) == 0)
                nb_be_dealloc(h->be, x.dev);
        }
        /* the streams go back to where the last commit left them, as
         * their peers' do: the step runs again from the same state */
        for (int k = 0; k < 4; k++)
            if (s->streams[k] && nb_codec_stream_copy(s->streams[k], s->saved[k]) != 0)
                nb_codec_stream_reset(s->streams[k]);
        nb_reps_zero_grad(s->reps);
    }
    nb_be_sync(h->be);
}
