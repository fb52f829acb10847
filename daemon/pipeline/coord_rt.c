/*
 * coord_rt.c - the coordinator daemon's runtime; see coord_rt.h and
 * docs/pipeline.md for the message sequence.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "daemon/clock.h"
#include "daemon/log.h"
#include "daemon/pipeline/coord_links.h"
#include "daemon/pipeline/coord_plan.h"
#include "daemon/pipeline/coord_rt.h"
#include "daemon/pipeline/coord_rt_internal.h"
#include "daemon/pipeline/job.h"
#include "daemon/pipeline/rt_common.h"
#include "daemon/planner/cost.h"
#include "daemon/planner/replica.h"
#include "kernels/codec/codec.h"

static void connect_timeout_cb(uv_timer_t *t);

/* Every wait of the lifecycle but a step's reports (dead stages are found by
 * the heartbeat there) ends within connect_timeout_s: the stages
 * connecting, their links coming up, their final weights written. */
static void wait_for(nb_coord_rt_t *rt, int what)
{
    rt->waiting = what;
    if (!rt->timer_open)
        return;
    if (what == WAIT_STEPS || what == WAIT_RECOVER) {
        uv_timer_stop(&rt->connect_timer); /* the heartbeat, or the recovery timer, bounds these */
        return;
    }
    rt->wait_s = rt->b.cfg->connect_timeout_s;
    if (what == WAIT_DONE) {
        /* the stages apply the last step and write their weights first:
         * allow 1 s per 50 MB of the whole model's fp32 weights on top */
        const nb_pipe_layout_t *l = &rt->job.layout;
        nb_cost_model_t mdl;
        if (nb_cost_model_gpt(l->model.n_layer, l->model.d_model, l->model.n_head, l->seq_len, l->model.vocab,
                              l->model.tie_embeddings, (int)rt->b.cfg->job.batch, &mdl) == 0)
            rt->wait_s += 4.0 * (mdl.params_per_layer * l->model.n_layer + mdl.embed_params + mdl.head_params) / 50e6;
    }
    uv_timer_start(&rt->connect_timer, connect_timeout_cb, (uint64_t)(rt->wait_s * 1000), 0);
}

static void send_all_shutdown(nb_coord_rt_t *rt, const char *why)
{
    for (int i = 0; i < rt->job.n_daemons; i++) {
        if (rt->d[i].conn)
            nb_rt_send_shutdown(rt->d[i].conn, why);
    }
}

static void tell_all(void *ud, const char *why)
{
    send_all_shutdown(ud, why);
}

void nb__coord_job_fail(nb_coord_rt_t *rt, const char *fmt, ...)
{
    if (rt->finished)
        return;
    va_list ap;
    va_start(ap, fmt);
    nb_rt_job_vfail(&rt->b, tell_all, rt, fmt, ap);
    va_end(ap);
}

/* A control frame could not go to stage daemon i: its connection is
 * closing (NB_ESTATE) or its queue is full; either way the attempt cannot
 * go on with it (on_closed says the same when it sees the close first). */
int nb__coord_send(nb_coord_rt_t *rt, int i, Nebula__Frame *f, const char *what)
{
    if (!rt->d[i].conn) {
        nb__coord_fault(rt, "stage daemon %s is not connected (%s of step %lld)", rt->job.names[i], what,
                        (long long)rt->step + 1);
        return NB_ECLOSED;
    }
    int rc = nb_rt_send_ctl(rt->d[i].conn, f);
    if (rc == NB_ESTATE)
        nb__coord_fault(rt, "lost stage daemon %s (its connection closed while %s of step %lld was sent)",
                        rt->job.names[i], what, (long long)rt->step + 1);
    else if (rc)
        nb__coord_fault(rt, "cannot send %s of step %lld to %s: %s", what, (long long)rt->step + 1,
                        rt->job.names[i], nb_strerror(rc));
    return rc;
}

static int daemon_index(nb_coord_rt_t *rt, const char *name)
{
    for (int i = 0; i < rt->job.n_daemons; i++)
        if (strcmp(rt->job.names[i], name) == 0)
            return i;
    return -1;
}

void nb__coord_send_job(nb_coord_rt_t *rt, int resume, uint64_t resume_step, const char *manifest)
{
    rt->job_sent = true;
    rt->step = (int64_t)resume_step;
    for (int i = 0; i < rt->job.n_daemons; i++)
        rt->d[i].links_ready = false;
    wait_for(rt, WAIT_LINKS);
    if (rt->attempt == 0)
        nb_service_set_state(rt->b.svc, NB_SVC_CONNECTING, "all %d stage daemons connected; assigning stages",
                             rt->job.n_daemons);
    for (int i = 0; i < rt->job.n_daemons; i++) {
        static nb_job_msg_store_t store; /* loop thread only; packed at once */
        Nebula__Job j;
        nb_job_to_msg(&rt->job, i, &store, &j);
        if (rt->plan)
            j.probe_bytes = NB_CPLAN_PROBE_BYTES;
        j.pretrained = rt->b.cfg->job.init[0] != '\0';
        j.attempt = rt->attempt;
        j.resume = (Nebula__Job__Resume)resume;
        j.resume_step = resume_step;
        j.manifest = (char *)(manifest ? manifest : "");
        j.checkpoints = rt->ckpt_enabled;
        j.recovery_timeout_s = (uint32_t)rt->b.cfg->job.recovery_timeout_s;
        Nebula__Frame f;
        nebula__frame__init(&f);
        f.body_case = NEBULA__FRAME__BODY_JOB;
        f.job = &j;
        if (nb__coord_send(rt, i, &f, "the job"))
            return;
    }
}

int nb__coord_send_commit(nb_coord_rt_t *rt, int i, uint64_t step, double sumsq, bool skip, bool last)
{
    Nebula__Commit c;
    nebula__commit__init(&c);
    c.job_id = rt->job.layout.job_id;
    c.step = step;
    c.global_grad_sumsq = sumsq;
    c.last = last;
    c.skip = skip;
    c.attempt = rt->attempt;
    Nebula__Frame f;
    nebula__frame__init(&f);
    f.body_case = NEBULA__FRAME__BODY_COMMIT;
    f.commit = &c;
    return nb__coord_send(rt, i, &f, "a commit");
}

/* Takes the planner's plan for the step in flight. */
static int apply_cplan(nb_coord_rt_t *rt)
{
    nb_cplan_step_t ps;
    nb_cplan_plan(rt->plan, rt->step, &ps);
    long n = nb_cplan_replans(rt->plan);
    if (n > rt->replans_seen)
        nb_metrics_inc(nb_state_metrics(rt->b.state), rt->m_replans, (double)(n - rt->replans_seen));
    rt->replans_seen = n;
    nb_codec_spec_t spec;
    char err[256];
    if (nb_codec_spec_parse(ps.fwd, &spec, err, sizeof err) ||
        nb_codec_spec_format(&spec, rt->fwd_codec, sizeof rt->fwd_codec) < 0 ||
        nb_codec_spec_parse(ps.bwd, &spec, err, sizeof err) ||
        nb_codec_spec_format(&spec, rt->bwd_codec, sizeof rt->bwd_codec) < 0)
        return NB_EINVAL;
    rt->m = ps.m;
    rt->mb_size = ps.mb_size;
    rt->sched = ps.sched;
    rt->pred_bubble = ps.pred_bubble;
    nb_metrics_set(nb_state_metrics(rt->b.state), rt->m_pred, ps.pred_step_s);
    return 0;
}

static void send_plan(nb_coord_rt_t *rt)
{
    if (rt->plan && apply_cplan(rt)) {
        nb__coord_job_fail(rt, "the planner chose codecs that do not parse for step %lld", (long long)rt->step);
        return;
    }
    char sched[32];
    nb_sched_format(&rt->sched, sched, sizeof sched);
    Nebula__Plan p;
    nebula__plan__init(&p);
    p.job_id = rt->job.layout.job_id;
    p.step = (uint64_t)rt->step;
    p.micro_batches = (uint32_t)rt->m;
    p.schedule = sched;
    p.forward_codec = rt->fwd_codec;
    p.backward_codec = rt->bwd_codec;
    p.micro_batch_size = (uint32_t)rt->mb_size;
    p.seed = rt->job.layout.seed;
    p.attempt = rt->attempt;
    Nebula__Frame f;
    nebula__frame__init(&f);
    f.body_case = NEBULA__FRAME__BODY_PLAN;
    f.plan = &p;
    rt->step_in_flight = true;
    rt->t_step_start = nb_mono_s();
    for (int i = 0; i < rt->job.n_daemons; i++) {
        rt->d[i].reported = false;
        memset(rt->d[i].busy_s, 0, sizeof rt->d[i].busy_s);
    }
    for (int i = 0; i < rt->job.n_daemons; i++)
        if (nb__coord_send(rt, i, &f, "a plan"))
            return;
}


/* Every daemon reported LINKS_READY for the attempt: run the steps from
 * rt->step (0, or where a recovery resumed). */
static void start_steps(nb_coord_rt_t *rt)
{
    rt->running = true;
    wait_for(rt, WAIT_STEPS);
    if (rt->attempt > 0 || rt->step > 0) {
        nb__coord_recovered(rt);
        if (rt->step >= rt->job.steps) {
            nb__coord_finish_now(rt);
            return;
        }
        send_plan(rt);
        return;
    }
    rt->t_job_start = nb_mono_s();
    char sched[32];
    nb_sched_format(&rt->sched, sched, sizeof sched);
    nb_log_info(NULL, "job %llu: %lld steps, %d stages on %d daemons, m=%d (%d sequences each), %s, codecs %s / %s%s",
                (unsigned long long)rt->job.layout.job_id, (long long)rt->job.steps, rt->job.layout.p,
                rt->job.n_daemons, rt->m, rt->job.layout.micro_batch_size, sched, rt->fwd_codec, rt->bwd_codec,
                rt->plan ? "; the planner chooses m, schedule and codecs per step" : "");
    nb_service_set_state(rt->b.svc, NB_SVC_RUNNING, "training: step 0 of %lld", (long long)rt->job.steps);
    send_plan(rt);
}

/* Every step is committed and the stages hold the final state (a resumed
 * job, or the evaluation after the last step is done): the last Commit
 * again, with `last` set (a no-op for them but for that), makes them write
 * their final weights and answer DONE. */
void nb__coord_finish_now(nb_coord_rt_t *rt)
{
    rt->running = false;
    wait_for(rt, WAIT_DONE);
    for (int i = 0; i < rt->job.n_daemons; i++)
        if (nb__coord_send_commit(rt, i, (uint64_t)rt->job.steps - 1, rt->dec_sumsq, rt->dec_skip, true))
            return;
}

static void update_job_info(nb_coord_rt_t *rt, double loss, double tps, double step_s, double bubble)
{
    nb_job_info_t j;
    memset(&j, 0, sizeof j);
    j.active = true;
    j.step = rt->step + 1;
    j.steps = rt->job.steps;
    j.loss = loss;
    j.tokens_per_s = tps;
    j.step_time_s = step_s;
    j.bubble_measured = bubble;
    j.bubble_predicted = rt->plan ? rt->pred_bubble : -1;
    j.bytes_raw = rt->total_raw;
    j.bytes_wire = rt->total_wire;
    snprintf(j.codec_forward, sizeof j.codec_forward, "%s", rt->fwd_codec);
    snprintf(j.codec_backward, sizeof j.codec_backward, "%s", rt->bwd_codec);
    j.micro_batches = rt->m;
    nb_sched_format(&rt->sched, j.schedule, sizeof j.schedule);
    nb__coord_split_text(rt, j.layers, sizeof j.layers);
    j.eval_loss = rt->eval_last_loss;
    j.eval_step = rt->eval_last_step > 0 ? rt->eval_last_step : 0;
    nb_state_job_update(rt->b.state, &j);
}

static void trace_report(nb_coord_rt_t *rt, const Nebula__Report *r)
{
    nb_trace_t *tr = nb_state_trace(rt->b.state);
    for (size_t i = 0; i < r->n_timings; i++) {
        const Nebula__MicroBatchTiming *t = r->timings[i];
        nb_rt_trace_mb(tr, (int64_t)r->step, (int)t->stage, (int)t->micro_batch, t->forward_start_ns,
                       t->forward_ns, t->backward_start_ns, t->backward_ns);
    }
}

/* " (m=4 1f1b, predicted 0.123 s)" for the progress line. */
static const char *plan_note(nb_coord_rt_t *rt, char *buf, size_t len)
{
    char sched[32];
    nb_sched_format(&rt->sched, sched, sizeof sched);
    double pred = nb_metrics_get(nb_state_metrics(rt->b.state), rt->m_pred);
    if (pred > 0)
        snprintf(buf, len, " (m=%d %s, predicted %.3f s + step overhead)", rt->m, sched, pred);
    else
        snprintf(buf, len, " (m=%d %s, profiling)", rt->m, sched);
    return buf;
}

/* "stage 1 (on b), stage 2 (on c)": the stages whose gradient sum of
 * squares was not finite; a daemon that named none is listed by name. */
static const char *nonfinite_text(nb_coord_rt_t *rt, char *buf, size_t len)
{
    size_t n = 0;
    buf[0] = '\0';
    for (int i = 0; i < rt->job.n_daemons && n < len; i++) {
        const daemon_slot_t *d = &rt->d[i];
        if (isfinite(d->grad_sumsq))
            continue;
        bool named = false;
        for (int st = 0; st < rt->job.layout.p && n < len; st++)
            if ((d->nonfinite_stages >> st & 1) && rt->job.layout.placement[st] == i) {
                n += (size_t)snprintf(buf + n, len - n, "%sstage %d (on %s)", n ? ", " : "", st, rt->job.names[i]);
                named = true;
            }
        if (!named && n < len)
            n += (size_t)snprintf(buf + n, len - n, "%sdaemon %s", n ? ", " : "", rt->job.names[i]);
    }
    return buf;
}

/* A non-finite global norm: count the skip, log it with the stages that
 * produced it, and fail the job after job.max_skipped_steps in a row.
 * Returns false when the job failed. */
static bool note_skip(nb_coord_rt_t *rt, double sumsq)
{
    char from[256];
    int64_t limit = rt->b.cfg->job.max_skipped_steps > 0 ? rt->b.cfg->job.max_skipped_steps : 10;
    rt->skipped_run++;
    nb_metrics_inc(nb_state_metrics(rt->b.state), rt->m_skipped, 1);
    nonfinite_text(rt, from, sizeof from);
    nb_log_warn(NULL, "step %lld: global gradient norm is %g, from %s: every stage skips this step's update "
                "(%lld consecutive, limit job.max_skipped_steps = %lld)", (long long)rt->step + 1, sqrt(sumsq),
                from, (long long)rt->skipped_run, (long long)limit);
    if (rt->skipped_run < limit)
        return true;
    nb__coord_job_fail(rt, "%lld consecutive steps skipped for a non-finite gradient norm (job.max_skipped_steps = %lld); "
             "step %lld's came from %s", (long long)rt->skipped_run, (long long)limit, (long long)rt->step + 1, from);
    return false;
}

/* All reports of the step are in: commit, log, plan the next step. */
static void finish_step(nb_coord_rt_t *rt)
{
    char pnote[96];
    double step_s = nb_mono_s() - rt->t_step_start;
    double sumsq = 0.0, loss = NAN, busy = 0.0, max_step_s = 0.0;
    uint64_t raw = 0, wire = 0;
    for (int i = 0; i < rt->job.n_daemons; i++) {
        daemon_slot_t *d = &rt->d[i];
        sumsq += d->grad_sumsq;
        if (d->has_loss)
            loss = d->loss;
        raw += d->bytes_raw;
        wire += d->bytes_wire;
        for (int s = 0; s < rt->job.layout.p; s++)
            busy += d->busy_s[s];
        max_step_s = fmax(max_step_s, (double)d->step_ns / 1e9);
    }
    rt->total_raw += raw;
    rt->total_wire += wire;
    rt->last_loss = loss;
    double bubble = max_step_s > 0 ? 1.0 - busy / (rt->job.layout.p * max_step_s) : -1;
    if (bubble < 0 && max_step_s > 0)
        bubble = 0;
    double tokens = (double)rt->m * rt->mb_size * rt->job.layout.seq_len;
    double tps = tokens / step_s;
    if (rt->plan)
        nb_cplan_step_done(rt->plan, rt->step, step_s, max_step_s);
    bool last = rt->step + 1 >= rt->job.steps;
    /* an evaluation after the last step comes before the stages' final
     * write: that Commit goes out again, with last set, after it */
    bool eval = nb__coord_eval_due(rt, rt->step + 1);
    /* NaN or Inf anywhere: no stage may apply it (nb_optim_clip_scale(NaN)
     * is 1, and the update would poison every weight) */
    bool skip = !isfinite(sumsq);
    if (skip && !note_skip(rt, sumsq))
        return;
    if (!skip)
        rt->skipped_run = 0;
    else
        rt->skipped_total++;
    /* the decision: from here on step rt->step is committed, whichever
     * daemons the Commit reaches now (a recovery re-sends it) */
    rt->has_decided = true;
    rt->dec_step = (uint64_t)rt->step;
    rt->dec_sumsq = sumsq;
    rt->dec_skip = skip;
    rt->step_in_flight = false;
    if (rt->step + 1 > rt->high_water)
        rt->high_water = rt->step + 1;
    for (int i = 0; i < rt->job.n_daemons; i++)
        if (nb__coord_send_commit(rt, i, (uint64_t)rt->step, sumsq, skip, last && !eval))
            return;
    /* a layer re-partition waits for a checkpoint at this boundary */
    bool repart = !last && !eval && nb__coord_repart_maybe(rt);
    nb__coord_ckpt_maybe(rt, last);
    if (rt->recovering)
        return;
    nb_metrics_t *mx = nb_state_metrics(rt->b.state);
    nb_metrics_inc(mx, rt->m_steps, 1);
    nb_metrics_set(mx, rt->m_loss, loss);
    nb_metrics_set(mx, rt->m_tps, tps);
    nb_metrics_set(mx, rt->m_bubble, bubble);
    nb_metrics_inc(mx, rt->m_raw, (double)raw);
    nb_metrics_inc(mx, rt->m_wire, (double)wire);
    update_job_info(rt, loss, tps, step_s, bubble);
    for (int i = 0; i < rt->job.n_daemons; i++)
        nb_rt_peer_row(rt->b.state, rt->job.names[i], "stage", rt->job.addresses[i], "up", rt->d[i].conn);
    int64_t every = rt->b.cfg->job.log_every > 0 ? rt->b.cfg->job.log_every : 1;
    bool log = (rt->step + 1) % every == 0 || last || rt->step == 0;
    char line[512];
    snprintf(line, sizeof line,
             "step %lld/%lld loss %.4f tokens/s %.0f bubble %.2f wire %.2f MB ratio %.2fx step %.3f s%s",
             (long long)rt->step + 1, (long long)rt->job.steps, loss, tps, bubble, (double)rt->total_wire / 1e6,
             rt->total_wire ? (double)rt->total_raw / (double)rt->total_wire : 1.0, step_s,
             rt->plan ? plan_note(rt, pnote, sizeof pnote) : "");
    nb_service_set_state(rt->b.svc, NB_SVC_RUNNING, "training: step %lld of %lld, loss %.4f", (long long)rt->step + 1,
                         (long long)rt->job.steps, loss);
    if (eval) {
        nb__coord_eval_start(rt, line, last); /* the line waits for the held-out loss */
        return;
    }
    if (log)
        nb_log_info(NULL, "%s", line);
    if (repart && rt->repart_pending) {
        if (rt->ckpt_inflight == rt->repart_step)
            return; /* the next Plan waits for the move */
        rt->ckpt_requested = false;
        /* this step's checkpoint exists already (the step ran again after a recovery) */
        nb__coord_repart_ckpt_done(rt, rt->repart_step, rt->last_ckpt == rt->repart_step);
        return;
    }
    nb__coord_next_step(rt, last);
}

void nb__coord_next_step(nb_coord_rt_t *rt, bool last)
{
    if (last) {
        rt->running = false;
        rt->step++;
        wait_for(rt, WAIT_DONE);
        return; /* the stages answer DONE after writing their weights */
    }
    rt->step++;
    send_plan(rt);
}

static void handle_report(nb_coord_rt_t *rt, int di, const Nebula__Report *r)
{
    daemon_slot_t *d = &rt->d[di];
    if (r->eval) {
        nb__coord_eval_report(rt, di, r);
        return;
    }
    if (rt->recovering || r->attempt != rt->attempt)
        return; /* of an attempt a fault ended */
    if (!rt->running || r->job_id != rt->job.layout.job_id || (int64_t)r->step != rt->step || d->reported) {
        nb__coord_job_fail(rt, "%s sent a report for step %llu while step %lld is in flight", rt->job.names[di],
                 (unsigned long long)r->step, (long long)rt->step);
        return;
    }
    d->reported = true;
    d->grad_sumsq = r->grad_sumsq;
    d->nonfinite_stages = r->nonfinite_stages;
    d->has_loss = r->has_loss;
    d->loss = r->loss;
    d->bytes_raw = r->bytes_raw;
    d->bytes_wire = r->bytes_wire;
    d->step_ns = r->step_ns;
    if (rt->plan)
        nb_cplan_report(rt->plan, di, r);
    nb_coord_links_update(rt->b.state, rt->job.names, rt->job.n_daemons, di, r->links, r->n_links, false);
    for (size_t i = 0; i < r->n_timings; i++) {
        const Nebula__MicroBatchTiming *t = r->timings[i];
        if (t->stage < (uint32_t)rt->job.layout.p)
            d->busy_s[t->stage] += (double)(t->forward_ns + t->backward_ns) / 1e9;
    }
    /* the ring keeps the newest events; `trace` returns the last trace_steps */
    trace_report(rt, r);
    for (int i = 0; i < rt->job.n_daemons; i++)
        if (!rt->d[i].reported)
            return;
    finish_step(rt);
}

static void handle_status(nb_coord_rt_t *rt, int di, const Nebula__JobStatus *s)
{
    const char *msg = s->message ? s->message : "";
    switch (s->state) {
    case NEBULA__JOB_STATUS__STATE__JOB_STATE_JOINED: {
        /* its replicas (data parallel inside its cluster) for the planner */
        char why[128];
        int r = nb_replica_check(s->replicas, s->reduce_bytes_per_s, NB_CFG_MAX_DEVICES, why, sizeof why);
        if (r < 0) {
            nb__coord_job_fail(rt, "stage daemon %s: JobStatus JOINED: %s", rt->job.names[di], why);
            return;
        }
        if (rt->plan)
            nb_cplan_replicas(rt->plan, di, r, s->reduce_bytes_per_s);
        nb__coord_joined(rt, di, s);
        return;
    }
    case NEBULA__JOB_STATUS__STATE__JOB_STATE_FAULT:
        if (s->attempt == rt->attempt && !rt->finished)
            nb__coord_fault(rt, "stage daemon %s: %s", rt->job.names[di], msg);
        return;
    case NEBULA__JOB_STATUS__STATE__JOB_STATE_LINKS_READY:
        if (s->attempt != rt->attempt || rt->waiting != WAIT_LINKS)
            return; /* of an attempt a fault ended */
        rt->d[di].links_ready = true;
        nb_log_info(rt->job.names[di], "%s", msg);
        if (s->device && strncmp(s->device, "cuda", 4) == 0 && s->device_total_bytes > 0) {
            /* a GPU's memory is the stage's own: the planner's limit is
             * what it has free plus what it holds (docs/pipeline.md, "GPU stages") */
            double have = (double)s->device_free_bytes + (double)s->device_held_bytes;
            double lim = rt->plan ? nb_cplan_device_memory(rt->plan, di, have) : 0;
            char lim_text[64] = "";
            if (lim > 0)
                snprintf(lim_text, sizeof lim_text, "; the planner's memory limit is %.1f MiB", lim / 1048576.0);
            nb_log_info(rt->job.names[di], "device %.24s: %.1f MiB free of %.1f MiB, the stage holds %.1f MiB%s",
                        s->device, (double)s->device_free_bytes / 1048576.0,
                        (double)s->device_total_bytes / 1048576.0, (double)s->device_held_bytes / 1048576.0,
                        lim_text);
        }
        nb_coord_links_update(rt->b.state, rt->job.names, rt->job.n_daemons, di, s->links, s->n_links, true);
        for (size_t i = 0; rt->plan && i < s->n_links; i++) {
            const Nebula__LinkMeasurement *l = s->links[i];
            if (l->peer < (uint32_t)rt->job.n_daemons)
                nb_log_info(rt->job.names[di], "link to %s: rtt %.2f ms, %.1f Mbit/s out", rt->job.names[l->peer],
                            l->rtt_ms, l->tx_bytes_per_s * 8e-6);
            nb_cplan_link_probe(rt->plan, di, (int)l->peer, l->rtt_ms, l->tx_bytes_per_s);
        }
        for (int i = 0; i < rt->job.n_daemons; i++)
            if (!rt->d[i].links_ready)
                return;
        if (!rt->running && !rt->finished)
            start_steps(rt);
        return;
    case NEBULA__JOB_STATUS__STATE__JOB_STATE_DONE:
        if (rt->recovering || rt->waiting != WAIT_DONE)
            return;
        rt->d[di].done = true;
        nb__coord_maybe_finish(rt);
        return;
    case NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED:
        nb__coord_job_fail(rt, "stage daemon %s: %s", rt->job.names[di], msg);
        return;
    default:
        return;
    }
}

/* Every stage wrote its final weights (and the last checkpoint, when one
 * was taken, is complete): the job is done. */
void nb__coord_maybe_finish(nb_coord_rt_t *rt)
{
    if (rt->finished || rt->recovering || rt->waiting != WAIT_DONE || rt->ckpt_inflight >= 0)
        return;
    for (int i = 0; i < rt->job.n_daemons; i++)
        if (!rt->d[i].done)
            return;
    {
        rt->finished = true;
        if (rt->timer_open)
            uv_timer_stop(&rt->connect_timer);
        {
            double secs = nb_mono_s() - rt->t_job_start;
            double tokens = (double)rt->job.steps * rt->job.layout.seq_len * (double)rt->b.cfg->job.batch;
            char val[128];
            nb_log_info(NULL, "job done: %lld steps in %.1f s, %.0f tokens/s, final loss %.4f, %.2f MB on the wire "
                        "(%.2f MB raw, ratio %.2fx)%s", (long long)rt->job.steps, secs, tokens / secs, rt->last_loss,
                        (double)rt->total_wire / 1e6, (double)rt->total_raw / 1e6,
                        rt->total_wire ? (double)rt->total_raw / (double)rt->total_wire : 1.0,
                        nb__coord_eval_summary(rt, val, sizeof val));
            nb_service_set_state(rt->b.svc, NB_SVC_DONE, "job done: %lld steps, final loss %.4f",
                                 (long long)rt->job.steps, rt->last_loss);
        }
        if (rt->recovery_timer_open)
            uv_timer_stop(&rt->recovery_timer);
    }
}

/* ---- transport callbacks ----------------------------------------------- */

static void on_ready(nb_conn_t *c, void *ud)
{
    nb_coord_rt_t *rt = ud;
    const char *peer = nb_conn_peer_name(c);
    int di = daemon_index(rt, peer);
    if (di < 0 || rt->d[di].connected) {
        nb_log_warn(peer, "%s; closing", di < 0 ? "not a stage of this job" : "already connected");
        nb_conn_close(c);
        return;
    }
    if (rt->finished || rt->b.failed) {
        nb_log_info(peer, "connected after the job ended; closing");
        nb_conn_close(c);
        return;
    }
    rt->d[di].connected = true;
    rt->d[di].conn = c;
    rt->d[di].joined = false;
    nb_rt_peer_row(rt->b.state, peer, "stage", rt->job.addresses[di], "up", c);
    nb_log_info(peer, "stage daemon connected from %s", nb_conn_addr(c));
    /* it says what it holds (JOINED) next; a daemon that comes back while
     * the job runs was lost without the coordinator noticing */
    if (rt->job_sent && !rt->recovering)
        nb__coord_fault(rt, "stage daemon %s connected again", peer);
}

static void on_frame(nb_conn_t *c, Nebula__Frame *hdr, uint8_t *payload, size_t len, void *ud)
{
    (void)len;
    nb_coord_rt_t *rt = ud;
    int di = daemon_index(rt, nb_conn_peer_name(c));
    if (di >= 0 && rt->d[di].conn == c) {
        switch (hdr->body_case) {
        case NEBULA__FRAME__BODY_REPORT: handle_report(rt, di, hdr->report); break;
        case NEBULA__FRAME__BODY_JOB_STATUS: handle_status(rt, di, hdr->job_status); break;
        case NEBULA__FRAME__BODY_CHECKPOINT: nb__coord_ckpt_done(rt, di, hdr->checkpoint); break;
        default:
            nb_log_warn(rt->job.names[di], "unexpected frame type %d from a stage", (int)hdr->body_case);
            break;
        }
    }
    nebula__frame__free_unpacked(hdr, NULL);
    free(payload);
}

static void on_writable(nb_conn_t *c, void *ud)
{
    (void)c;
    (void)ud;
}

static void on_closed(nb_conn_t *c, int err, void *ud)
{
    nb_coord_rt_t *rt = ud;
    const char *peer = nb_conn_peer_name(c);
    int di = daemon_index(rt, peer);
    if (di < 0 || rt->d[di].conn != c)
        return;
    rt->d[di].conn = NULL;
    rt->d[di].connected = false;
    nb_rt_peer_row(rt->b.state, peer, "stage", rt->job.addresses[di], "down", NULL);
    rt->d[di].joined = false;
    if (rt->finished || rt->b.failed)
        return;
    if (rt->job_sent)
        nb__coord_fault(rt, "lost stage daemon %s (%s)", peer, err ? nb_strerror(err) : "closed");
    else
        nb_log_warn(peer, "stage daemon disconnected before the job started; waiting for it again");
}

static void connect_timeout_cb(uv_timer_t *t)
{
    nb_coord_rt_t *rt = t->data;
    char missing[512] = "";
    for (int i = 0; i < rt->job.n_daemons; i++) {
        const daemon_slot_t *d = &rt->d[i];
        bool late = rt->waiting == WAIT_CONNECT ? !d->connected || !d->joined : rt->waiting == WAIT_LINKS ? !d->links_ready
                                                                                          : !d->done;
        if (late)
            snprintf(missing + strlen(missing), sizeof missing - strlen(missing), "%s%s (%s)",
                     missing[0] ? ", " : "", rt->job.names[i], rt->job.addresses[i]);
    }
    double secs = rt->waiting == WAIT_CONNECT ? rt->b.cfg->connect_timeout_s : rt->wait_s;
    switch (rt->waiting) {
    case WAIT_CONNECT:
        nb__coord_job_fail(rt, "stage daemons did not connect within %.0f s: %s", secs, missing);
        break;
    case WAIT_LINKS:
        if (rt->attempt > 0) {
            nb__coord_fault(rt, "stage daemons did not report their pipeline links up within %.0f s "
                            "(connect_timeout_s) of attempt %u: %s", secs, rt->attempt, missing);
            break;
        }
        nb__coord_job_fail(rt, "stage daemons did not report their pipeline links up within %.0f s (connect_timeout_s) "
                 "after the job was sent: %s; check that each cluster's address in job.clusters is the address "
                 "its daemon listens on", secs, missing);
        break;
    case WAIT_DONE:
        nb__coord_job_fail(rt, "stage daemons did not report the job done (final weights written) within %.0f s "
                 "(connect_timeout_s plus 1 s per 50 MB of weights) after the last step: %s", secs, missing);
        break;
    default:
        break;
    }
}

/* ---- service hooks ------------------------------------------------------- */

static int choose_m(const nb_cfg_job_t *j, int p)
{
    if (j->micro_batches > 0)
        return (int)j->micro_batches;
    /* auto without the planner: the largest divisor of the batch up to 2p,
     * enough to keep every stage busy in steady 1F1B */
    int best = 1;
    for (int m = 1; m <= 2 * p && m <= j->batch; m++)
        if (j->batch % m == 0)
            best = m;
    return best;
}

/* Refuses a plan whose stashed activations would not fit a stage's memory
 * limit (job.planner.stage_memory_bytes), with the numbers. */
static int check_memory(nb_coord_rt_t *rt, char *err, size_t errlen)
{
    const nb_cfg_job_t *j = &rt->b.cfg->job;
    double limit = (double)j->planner.stage_memory_bytes;
    if (limit <= 0)
        return 0;
    const nb_pipe_layout_t *l = &rt->job.layout;
    nb_cost_model_t mdl;
    if (nb_cost_model_gpt(l->model.n_layer, l->model.d_model, l->model.n_head, l->seq_len, l->model.vocab,
                          l->model.tie_embeddings, (int)j->batch, &mdl))
        return 0;
    for (int s = 0; s < l->p; s++) {
        int layers = l->parts[s].last - l->parts[s].first;
        int inflight = nb_sched_peak_inflight(&rt->sched, l->p, rt->m, s);
        double need = nb_cost_stage_mem(&mdl, l->p, s, layers, inflight, l->micro_batch_size);
        if (need > limit) {
            snprintf(err, errlen, "stage %d (%s, %d blocks) needs %.1f MiB at m=%d (%d micro-batches of %d "
                     "sequences in flight under %s), more than job.planner.stage_memory = %.1f MiB",
                     s, rt->job.names[l->placement[s]], layers, need / 1048576.0, rt->m, inflight,
                     l->micro_batch_size, rt->sched.kind == NB_SCHED_GPIPE ? "gpipe" : "1f1b", limit / 1048576.0);
            return NB_ELIMIT;
        }
    }
    return 0;
}

/* ---- status socket: plan, plan-pin ------------------------------------------ */

static const char *no_planner(nb_coord_rt_t *rt)
{
    if (!rt->b.cfg->job.planner.enabled)
        return "the planner is off for this job (job.planner.enabled: false)";
    return "the planner has nothing to choose: job.micro_batches, job.schedule and job.codecs are all pinned";
}

static json_t *cmd_plan(void *ud, const json_t *req, const nb_status_caller_t *caller, char *err, size_t errlen)
{
    (void)caller;
    nb_coord_rt_t *rt = ud;
    if (!rt->plan) {
        snprintf(err, errlen, "%s", no_planner(rt));
        return NULL;
    }
    const json_t *rows = json_object_get(req, "rows"), *bw = json_object_get(req, "bandwidth_mbit");
    if ((rows && !json_is_integer(rows)) || (bw && !json_is_number(bw))) {
        snprintf(err, errlen, "plan: \"rows\" must be an integer and \"bandwidth_mbit\" a number");
        return NULL;
    }
    double mbit = bw ? json_number_value(bw) : 0;
    if (bw && !(mbit > 0)) {
        snprintf(err, errlen, "plan: bandwidth_mbit must be > 0 (is %g)", mbit);
        return NULL;
    }
    json_int_t n = rows ? json_integer_value(rows) : 20;
    if (n < 1 || n > 10000) {
        snprintf(err, errlen, "plan: rows must be 1..10000");
        return NULL;
    }
    return nb_cplan_json(rt->plan, (int)n, mbit, err, errlen);
}

static json_t *cmd_plan_pin(void *ud, const json_t *req, const nb_status_caller_t *caller, char *err,
                            size_t errlen)
{
    (void)caller;
    nb_coord_rt_t *rt = ud;
    if (!rt->plan) {
        snprintf(err, errlen, "%s", no_planner(rt));
        return NULL;
    }
    if (json_is_true(json_object_get(req, "clear"))) {
        nb_cplan_pin(rt->plan, NULL, err, errlen);
        return json_pack("{s:b}", "pinned", 0);
    }
    const json_t *m = json_object_get(req, "m"), *sc = json_object_get(req, "schedule");
    const json_t *fw = json_object_get(req, "forward"), *bw = json_object_get(req, "backward");
    if (!json_is_integer(m) || (sc && !json_is_string(sc)) || (fw && !json_is_string(fw)) ||
        (bw && !json_is_string(bw))) {
        snprintf(err, errlen, "plan-pin: needs \"m\" (integer) and optionally \"schedule\", \"forward\", "
                 "\"backward\" (strings), or \"clear\": true");
        return NULL;
    }
    nb_cplan_step_t pin;
    memset(&pin, 0, sizeof pin);
    json_int_t mv = json_integer_value(m);
    pin.m = mv >= 1 && mv <= NB_SCHED_MAX_MB ? (int)mv : 0;
    pin.sched = rt->sched;
    if (sc && nb_sched_parse(json_string_value(sc), &pin.sched)) {
        snprintf(err, errlen, "plan-pin: schedule '%.64s' is not gpipe, 1f1b or 1f1b:K", json_string_value(sc));
        return NULL;
    }
    snprintf(pin.fwd, sizeof pin.fwd, "%s", fw ? json_string_value(fw) : rt->b.cfg->job.codecs.forward);
    snprintf(pin.bwd, sizeof pin.bwd, "%s", bw ? json_string_value(bw) : rt->b.cfg->job.codecs.backward);
    if (nb_cplan_pin(rt->plan, &pin, err, errlen))
        return NULL;
    char sb[32];
    return json_pack("{s:b, s:i, s:s, s:s, s:s}", "pinned", 1, "m", pin.m, "schedule",
                     nb_sched_format(&pin.sched, sb, sizeof sb), "forward", pin.fwd, "backward", pin.bwd);
}

static int rt_start(nb_service_t *svc, void *ud)
{
    nb_coord_rt_t *rt = ud;
    const nb_cfg_job_t *j = &rt->b.cfg->job;
    char err[512];
    nb_codec_spec_t spec;
    if (nb_codec_spec_parse(j->codecs.forward, &spec, err, sizeof err) ||
        nb_codec_spec_format(&spec, rt->fwd_codec, sizeof rt->fwd_codec) < 0 ||
        nb_codec_spec_parse(j->codecs.backward, &spec, err, sizeof err) ||
        nb_codec_spec_format(&spec, rt->bwd_codec, sizeof rt->bwd_codec) < 0) {
        nb_log_error(NULL, "%s: job.codecs: %s", rt->b.cfg->path, err);
        return NB_EINVAL;
    }
    int p = j->n_clusters + (j->topology == NB_TOPO_USHAPE ? 1 : 0);
    rt->m = choose_m(j, p);
    rt->sched = (nb_sched_spec_t){ .kind = j->schedule == NB_CFG_SCHED_GPIPE ? NB_SCHED_GPIPE : NB_SCHED_1F1B };
    uint64_t job_id = ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid() ^ 1;
    if (nb_job_from_cfg(j, rt->m, job_id, &rt->job, err, sizeof err)) {
        nb_log_error(NULL, "%s: %s", rt->b.cfg->path, err);
        return NB_EINVAL;
    }
    rt->ckpt_inflight = -1;
    rt->last_ckpt = -1;
    if (nb__coord_ckpt_start(rt, &rt->job.layout.job_id, err, sizeof err)) {
        nb_log_error(NULL, "%s: %s", rt->b.cfg->path, err);
        return NB_EINVAL;
    }
    if (check_memory(rt, err, sizeof err)) {
        nb_log_error(NULL, "%s: %s", rt->b.cfg->path, err);
        return NB_ELIMIT;
    }
    rt->mb_size = rt->job.layout.micro_batch_size;
    rt->pred_bubble = -1;
    if (nb_cplan_wanted(j) && nb_cplan_new(j, &rt->job, rt->m, &rt->plan, err, sizeof err)) {
        nb_log_error(NULL, "%s: planner: %s", rt->b.cfg->path, err);
        return NB_EINVAL;
    }
    if (nb__coord_repart_init(rt, err, sizeof err)) {
        nb_log_error(NULL, "%s: %s", rt->b.cfg->path, err);
        return NB_EINVAL;
    }
    nb__coord_recover_init(rt);
    nb__coord_ckpt_init(rt);
    nb__coord_eval_init(rt);
    nb_status_server_t *srv = nb_service_status_server(svc);
    if (srv && (nb_status_server_add(srv, "plan", false, cmd_plan, rt) ||
                nb_status_server_add(srv, "plan-pin", true, cmd_plan_pin, rt)))
        nb_log_warn(NULL, "cannot register the plan commands on the status socket");
    nb_net_cfg_t nc;
    nb_rt_net_cfg(rt->b.cfg, NEBULA__ROLE__ROLE_COORDINATOR, &nc);
    const char *names[NB_SCHED_MAX_STAGES];
    for (int i = 0; i < rt->job.n_daemons; i++)
        names[i] = rt->job.names[i];
    nc.allowed_peers = names;
    nc.n_allowed_peers = (size_t)rt->job.n_daemons;
    const nb_net_cb_t cb = { on_ready, on_frame, on_writable, on_closed };
    char bound[NB_CFG_ADDR_MAX + 16];
    char why[NB_CFG_ADDR_MAX + 128];
    int rc = nb_rt_open_net(rt->b.loop, rt->b.cfg, &nc, &cb, rt, rt->b.state, &rt->b.net, bound, sizeof bound, why,
                            sizeof why);
    rt->b.net_open = rt->b.net != NULL;
    if (rc) {
        nb_service_start_error(svc, "%s", why);
        return rc;
    }
    for (int i = 0; i < rt->job.n_daemons; i++) {
        nb_rt_reserve_peer_addr(rt->b.net, rt->job.addresses[i]);
        nb_rt_peer_row(rt->b.state, rt->job.names[i], "stage", rt->job.addresses[i], "waiting", NULL);
    }
    if (rt->b.cfg->connect_timeout_s > 0) {
        uv_timer_init(rt->b.loop, &rt->connect_timer);
        rt->connect_timer.data = rt;
        rt->timer_open = true;
        uv_timer_start(&rt->connect_timer, connect_timeout_cb, (uint64_t)(rt->b.cfg->connect_timeout_s * 1000), 0);
    }
    update_job_info(rt, NAN, -1, -1, -1);
    rt->step = -1;
    nb_service_set_state(svc, NB_SVC_WAITING, "listening on %s; waiting for %d stage daemons", bound,
                         rt->job.n_daemons);
    return 0;
}

static void rt_stop(nb_service_t *svc, void *ud)
{
    (void)svc;
    nb_coord_rt_t *rt = ud;
    if (rt->running && !rt->b.failed)
        send_all_shutdown(rt, "the coordinator is stopping");
    rt->b.stopping = true;
    nb_rt_close_handle(&rt->connect_timer, &rt->timer_open);
    nb__coord_recover_close(rt);
    nb_rt_close_net(&rt->b);
}

static const nb_runtime_i coord_runtime = {
    .start = rt_start,
    .stop = rt_stop,
    .binds_listener = true,
};

int nb_coord_rt_attach(nb_service_t *svc, nb_coord_rt_t **out)
{
    nb_coord_rt_t *rt = calloc(1, sizeof *rt);
    if (!rt)
        return NB_ENOMEM;
    nb_rt_base_init(&rt->b, svc);
    nb_metrics_t *mx = nb_state_metrics(rt->b.state);
    rt->m_steps = nb_metrics_add(mx, "nebula_job_steps_total", NULL, NB_METRIC_COUNTER, "Steps committed");
    rt->m_loss = nb_metrics_add(mx, "nebula_job_loss", NULL, NB_METRIC_GAUGE, "Loss of the last step");
    rt->m_tps = nb_metrics_add(mx, "nebula_job_tokens_per_second", NULL, NB_METRIC_GAUGE,
                               "Tokens per second of the last step");
    rt->m_bubble = nb_metrics_add(mx, "nebula_job_bubble_ratio", NULL, NB_METRIC_GAUGE,
                                  "Measured bubble fraction of the last step");
    rt->m_raw = nb_metrics_add(mx, "nebula_job_tensor_raw_bytes_total", NULL, NB_METRIC_COUNTER,
                               "Tensor bytes crossing cuts before compression");
    rt->m_wire = nb_metrics_add(mx, "nebula_job_tensor_wire_bytes_total", NULL, NB_METRIC_COUNTER,
                                "Tensor bytes crossing cuts after compression");
    rt->m_replans = nb_metrics_add(mx, "nebula_replans_total", NULL, NB_METRIC_COUNTER,
                                   "Re-plans after a measured drift of a link or a stage");
    rt->m_pred = nb_metrics_add(mx, "nebula_job_predicted_step_seconds", NULL, NB_METRIC_GAUGE,
                                "The planner's predicted step time of the running plan (-1: none)");
    nb_metrics_set(mx, rt->m_pred, -1);
    rt->m_skipped = nb_metrics_add(mx, "nebula_job_steps_skipped_total", NULL, NB_METRIC_COUNTER,
                                   "Steps whose update every stage skipped: non-finite gradient norm");
    nb_service_set_runtime(svc, &coord_runtime, rt);
    *out = rt;
    return 0;
}

void nb_coord_rt_free(nb_coord_rt_t *rt)
{
    if (rt) {
        nb_cplan_free(rt->plan);
        free(rt->last_manifest);
    }
    free(rt);
}
