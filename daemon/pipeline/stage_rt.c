/*
 * stage_rt.c - the stage daemon's runtime, loop-thread half: the transport
 * (coordinator and pipeline neighbours), routing of received tensors to the
 * compute thread's inboxes, the outbox drain with back-pressure, link probes
 * and the service hooks. The compute half is stage_compute.c; see
 * stage_rt.h for the threads and docs/pipeline.md for the protocol.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/clock.h"
#include "daemon/log.h"
#include "daemon/pipeline/rt_common.h"
#include "daemon/pipeline/stage_rt_internal.h"
#include "daemon/planner/replica.h"

void nb__stage_free_out(void *p)
{
    out_item_t *o = p;
    if (!o)
        return;
    nb_pmsg_free(o->msg);
    free(o->res.timings);
    free(o);
}

static void free_frame(void *p)
{
    if (p)
        nebula__frame__free_unpacked(p, NULL);
}

/* ---- job failure (loop thread) ------------------------------------------ */

static void close_mailboxes(nb_stage_rt_t *rt)
{
    nb_mbox_close(rt->ctl);
    nb_mbox_close(rt->outbox);
    pthread_mutex_lock(&rt->inbox_mu);
    rt->inbox_closed = true;
    for (int s = 0; s < NB_SCHED_MAX_STAGES; s++)
        for (int k = 0; k < NB_PMSG_KINDS; k++)
            if (rt->inbox[s][k])
                nb_mbox_close(rt->inbox[s][k]);
    pthread_mutex_unlock(&rt->inbox_mu);
}

static void job_fail(nb_stage_rt_t *rt, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Stops the compute thread's work and tells the coordinator why before the
 * orderly close (queued frames go out first), so its log names the cause,
 * not just this daemon leaving. */
static void tell_coordinator(void *ud, const char *why)
{
    nb_stage_rt_t *rt = ud;
    close_mailboxes(rt);
    if (rt->coord && rt->have_job)
        nb_rt_send_job_failed(rt->coord, rt->job.layout.job_id, (uint32_t)rt->me, why);
}

static void job_fail(nb_stage_rt_t *rt, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    nb_rt_job_vfail(&rt->b, tell_coordinator, rt, fmt, ap);
    va_end(ap);
}

/* The compute thread refused the job or failed a step and has told the
 * coordinator why (the frame is queued): the daemon stops and exits 1, as
 * after any failed job (docs/pipeline.md, "Failure handling"). */
static void stop_work(void *ud, const char *why)
{
    (void)why;
    close_mailboxes(ud);
}

static void stop_failed(nb_stage_rt_t *rt, const char *why)
{
    nb_rt_job_fail(&rt->b, stop_work, rt, "%s", why);
}

/* ---- faults and recovery (loop thread) -------------------------------------- */

/* The job's id as the loop thread may read it: rt->job is the compute
 * thread's until it has published the job (OUT_LINKS). */
static uint64_t loop_job_id(const nb_stage_rt_t *rt)
{
    return rt->have_job ? rt->job.layout.job_id : rt->pending_job_id;
}

static void send_joined(nb_stage_rt_t *rt);

static void recovery_timeout_cb(uv_timer_t *t)
{
    nb_stage_rt_t *rt = t->data;
    if (rt->coord || rt->job_done)
        return;
    job_fail(rt, "the coordinator %s did not come back within %.0f s (job.recovery_timeout_s) after it was lost",
             rt->b.cfg->coordinator.name, rt->recovery_timeout_s);
}

/* The attempt in flight cannot go on: drop it here and let the coordinator
 * recover the job (docs/pipeline.md, "Faults and recovery"). Tensors of the
 * attempt are dropped from now on, the compute thread abandons the step
 * (its inboxes close) and answers with its state (OUT_JOINED), which goes
 * to the coordinator as JobStatus JOINED. tell: send JobStatus FAULT first
 * (the fault was found here). attempt: the attempt that ended. */
static void attempt_abort(nb_stage_rt_t *rt, bool tell, uint32_t attempt, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void attempt_abort(nb_stage_rt_t *rt, bool tell, uint32_t attempt, const char *fmt, ...)
{
    if (rt->b.failed || rt->b.stopping || rt->job_done)
        return;
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    bool first = !rt->aborting;
    rt->aborting = true;
    rt->joined_valid = false;
    if (!rt->any_aborted || attempt > rt->aborted_attempt)
        rt->aborted_attempt = attempt;
    rt->any_aborted = true;
    __atomic_store_n(&rt->abort_flag, 1, __ATOMIC_RELEASE);
    if (first) {
        nb_metrics_inc(nb_state_metrics(rt->b.state), rt->m_aborts, 1);
        nb_log_warn(NULL, "attempt %u of job %llu ended: %s; the step in flight is dropped and the coordinator "
                    "recovers the job", attempt, (unsigned long long)loop_job_id(rt), why);
        nb_service_set_state(rt->b.svc, NB_SVC_CONNECTING, "recovering: %s", why);
    }
    if (tell && rt->coord) {
        Nebula__Frame f;
        Nebula__JobStatus js;
        nebula__frame__init(&f);
        nebula__job_status__init(&js);
        js.job_id = loop_job_id(rt);
        js.daemon = (uint32_t)(rt->have_job ? rt->me : 0);
        js.state = NEBULA__JOB_STATUS__STATE__JOB_STATE_FAULT;
        js.message = why;
        js.attempt = attempt;
        f.body_case = NEBULA__FRAME__BODY_JOB_STATUS;
        f.job_status = &js;
        nb_rt_send_ctl(rt->coord, &f);
    }
    /* wake a compute thread waiting for a neighbour; the inboxes open again
     * with the next attempt (the compute thread reopens them) */
    pthread_mutex_lock(&rt->inbox_mu);
    for (int st = 0; st < NB_SCHED_MAX_STAGES; st++)
        for (int k = 0; k < NB_PMSG_KINDS; k++)
            if (rt->inbox[st][k])
                nb_mbox_close(rt->inbox[st][k]);
    pthread_mutex_unlock(&rt->inbox_mu);
    if (rt->pending && rt->pending->kind == OUT_TENSOR) {
        nb__stage_free_out(rt->pending);
        rt->pending = NULL;
    }
    /* what a paused neighbour still sends belongs to the ended attempt */
    __atomic_store_n(&rt->reads_paused, 0, __ATOMIC_RELEASE);
    for (int d = 0; d < NB_SCHED_MAX_STAGES; d++)
        if (rt->read_paused[d]) {
            rt->read_paused[d] = false;
            if (rt->peer_conn[d])
                nb_conn_resume_read(rt->peer_conn[d]);
        }
    if (rt->wait_timer_open)
        uv_timer_stop(&rt->wait_timer);
    if (nb__stage_push_abort(rt, attempt, why) != 0)
        job_fail(rt, "cannot hand the abort to the compute thread");
}

int nb__stage_push_abort(nb_stage_rt_t *rt, uint32_t attempt, const char *why)
{
    /* pack and unpack, so the compute thread frees it like any frame */
    Nebula__Frame f;
    Nebula__Abort a;
    nebula__frame__init(&f);
    nebula__abort__init(&a);
    a.job_id = loop_job_id(rt);
    a.attempt = attempt;
    a.reason = (char *)why;
    f.body_case = NEBULA__FRAME__BODY_ABORT;
    f.abort = &a;
    size_t n = nebula__frame__get_packed_size(&f);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return NB_ENOMEM;
    nebula__frame__pack(&f, buf);
    Nebula__Frame *u = nebula__frame__unpack(NULL, n, buf);
    free(buf);
    if (!u)
        return NB_ENOMEM;
    if (nb_mbox_try_push(rt->ctl, u) != 0) {
        nebula__frame__free_unpacked(u, NULL);
        return NB_ECLOSED;
    }
    return 0;
}

/* ---- deadlines (loop thread) ------------------------------------------------ */

/* connect_timeout_s bounds the stage's waits for others: for its
 * coordinator (at start and whenever it is lost before a job) and for its
 * pipeline links once a job arrived. The wait for a job on a connected
 * coordinator is the coordinator's to bound. */
static void wait_timeout_cb(uv_timer_t *t)
{
    nb_stage_rt_t *rt = t->data;
    double secs = rt->b.cfg->connect_timeout_s;
    if (!rt->have_job) {
        if (!rt->coord)
            job_fail(rt, "coordinator %s at %s not connected within %.0f s (connect_timeout_s)",
                     rt->b.cfg->coordinator.name, rt->b.cfg->coordinator.address.text, secs);
        return;
    }
    if (rt->links_reported || rt->aborting)
        return;
    char missing[512] = "";
    for (int d = 0; d < rt->job.n_daemons; d++)
        if (rt->need_peer[d])
            snprintf(missing + strlen(missing), sizeof missing - strlen(missing), "%s%s (%s, %s)",
                     missing[0] ? ", " : "", rt->job.names[d], rt->job.addresses[d],
                     !rt->peer_ready[d] ? (d > rt->me ? "dialled, not connected" : "not connected to us")
                                        : "probing");
    if (rt->attempt == 0 && !rt->any_aborted) /* at the job's start: most likely a wrong address */
        job_fail(rt, "pipeline links not up within %.0f s (connect_timeout_s) of the job: %s", secs, missing);
    else
        attempt_abort(rt, true, rt->attempt, "pipeline links not up within %.0f s (connect_timeout_s) of attempt "
                      "%u: %s", secs, rt->attempt, missing);
}

/* Starts (or restarts) the deadline; stop with arm_wait(rt, false). */
static void arm_wait(nb_stage_rt_t *rt, bool on)
{
    if (!rt->wait_timer_open)
        return;
    if (on)
        uv_timer_start(&rt->wait_timer, wait_timeout_cb, (uint64_t)(rt->b.cfg->connect_timeout_s * 1000), 0);
    else
        uv_timer_stop(&rt->wait_timer);
}

/* ---- loop thread: sending ------------------------------------------------- */

static void sent_cb(void *payload, void *ud)
{
    (void)payload;
    sending_t *s = ud;
    if (s->track >= 0) {
        uint64_t now = nb_mono_ns();
        nb_trace_event_t ev = { .step = s->msg->step, .micro = s->msg->mb, .track = (int16_t)s->track,
                                .kind = NB_TEV_SEND, .ts_us = (double)s->t0_ns / 1e3,
                                .dur_us = (double)(now - s->t0_ns) / 1e3, .bytes = s->msg->payload_len };
        nb_trace_add(nb_state_trace(s->rt->b.state), &ev);
    }
    nb_pmsg_free(s->msg);
    free(s);
}

/* What this daemon knows about each of its data links: the probes (with
 * LINKS_READY) and the transport's passive estimates. Fills lm/lp (one per
 * linked neighbour) and returns the count. */
static size_t link_measurements(nb_stage_rt_t *rt, bool probes, Nebula__LinkMeasurement *lm,
                                Nebula__LinkMeasurement **lp)
{
    size_t n = 0;
    for (int d = 0; rt->have_job && d < rt->job.n_daemons; d++) {
        if (!rt->need_peer[d] || !rt->peer_conn[d])
            continue;
        nb_link_t l;
        nb_probe_link(rt->peer_conn[d], &l);
        nebula__link_measurement__init(&lm[n]);
        lm[n].peer = (uint32_t)d;
        lm[n].rtt_ms = l.rtt_ewma_ms > 0 ? l.rtt_ewma_ms : l.rtt_ms;
        lm[n].rx_bytes_per_s = l.rx_bps_ewma;
        lm[n].tx_bytes = l.bytes_tx;
        lm[n].rx_bytes = l.bytes_rx;
        if (probes) {
            if (rt->probe[d].rtt_ms > 0)
                lm[n].rtt_ms = rt->probe[d].rtt_ms;
            lm[n].tx_bytes_per_s = rt->probe[d].tx_bps;
        }
        lp[n] = &lm[n];
        n++;
    }
    return n;
}

/* Sends one item; NB_ELIMIT means "keep it and retry on writable". */
static int send_item(nb_stage_rt_t *rt, out_item_t *o)
{
    Nebula__Frame f;
    nebula__frame__init(&f);
    switch (o->kind) {
    case OUT_TENSOR: {
        nb_pmsg_t *m = o->msg;
        int d = rt->job.layout.placement[m->to_stage];
        nb_conn_t *c = rt->peer_conn[d];
        if (!c)
            return NB_ECLOSED;
        Nebula__Tensor t;
        nebula__tensor__init(&t);
        uint64_t shape[2] = { (uint64_t)m->rows, (uint64_t)m->cols };
        t.job_id = rt->job.layout.job_id;
        t.step = (uint64_t)m->step;
        t.micro_batch = (uint32_t)m->mb;
        t.kind = (Nebula__TensorKind)nb_rt_frame_kind(m->kind);
        t.dtype = m->kind == NB_PMSG_LABELS ? NEBULA__DTYPE__DTYPE_I32 : NEBULA__DTYPE__DTYPE_F32;
        t.n_shape = 2;
        t.shape = shape;
        t.codec = m->spec;
        t.codec_meta.data = m->meta;
        t.codec_meta.len = m->meta_len;
        t.decoded_bytes = m->raw_bytes;
        t.from_stage = (uint32_t)m->from_stage;
        t.to_stage = (uint32_t)m->to_stage;
        t.attempt = rt->attempt;
        t.eval = m->eval;
        f.body_case = NEBULA__FRAME__BODY_TENSOR;
        f.tensor = &t;
        sending_t *s = malloc(sizeof *s);
        if (!s)
            return NB_ENOMEM;
        *s = (sending_t){ rt, m, rt->link_track[d], nb_mono_ns() };
        int rc = nb_conn_send(c, &f, m->payload, m->payload_len, sent_cb, s);
        if (rc) {
            free(s);
            return rc;
        }
        o->msg = NULL; /* now the transport's, freed in sent_cb */
        return 0;
    }
    case OUT_REPORT: {
        if (!rt->coord)
            return NB_ECLOSED;
        Nebula__Report r;
        nebula__report__init(&r);
        int n = o->res.n_timings;
        Nebula__MicroBatchTiming *tm = calloc((size_t)n + 1, sizeof *tm);
        Nebula__MicroBatchTiming **tp = calloc((size_t)n + 1, sizeof *tp);
        if (!tm || !tp) {
            free(tm);
            free(tp);
            return NB_ENOMEM;
        }
        for (int i = 0; i < n; i++) {
            const nb_mb_timing_t *t = &o->res.timings[i];
            nebula__micro_batch_timing__init(&tm[i]);
            tm[i].micro_batch = (uint32_t)t->mb;
            tm[i].stage = (uint32_t)t->stage;
            tm[i].forward_ns = t->fwd_ns;
            tm[i].backward_ns = t->bwd_ns;
            tm[i].encode_ns = t->encode_ns;
            tm[i].decode_ns = t->decode_ns;
            tm[i].wait_ns = t->wait_ns;
            tm[i].bytes_raw = t->bytes_raw;
            tm[i].bytes_wire = t->bytes_wire;
            tm[i].forward_start_ns = t->fwd_start_ns;
            tm[i].backward_start_ns = t->bwd_start_ns;
            tm[i].act_error = t->act_err;
            tm[i].grad_error = t->grad_err;
            tp[i] = &tm[i];
        }
        r.job_id = rt->job.layout.job_id;
        r.step = (uint64_t)o->res.step;
        r.stage = (uint32_t)rt->first_stage;
        r.n_timings = (size_t)n;
        r.timings = tp;
        r.has_loss = !isnan(o->res.loss);
        r.loss = r.has_loss ? o->res.loss : 0.0;
        r.bytes_raw = o->res.bytes_raw;
        r.bytes_wire = o->res.bytes_wire;
        r.grad_sumsq = o->res.grad_sumsq;
        r.nonfinite_stages = o->res.nonfinite_stages;
        r.step_ns = o->res.step_ns;
        r.daemon = (uint32_t)rt->me;
        r.attempt = o->attempt;
        r.eval = o->eval;
        Nebula__LinkMeasurement lm[NB_SCHED_MAX_STAGES], *lp[NB_SCHED_MAX_STAGES];
        r.n_links = link_measurements(rt, false, lm, lp);
        r.links = lp;
        f.body_case = NEBULA__FRAME__BODY_REPORT;
        f.report = &r;
        int rc = nb_rt_send_ctl(rt->coord, &f);
        free(tm);
        free(tp);
        /* refresh the status rows once per step: RTT, bandwidth, bytes */
        nb_rt_peer_row(rt->b.state, rt->b.cfg->coordinator.name, "coordinator", rt->b.cfg->coordinator.address.text,
                       "up", rt->coord);
        for (int d = 0; d < rt->job.n_daemons; d++)
            if (rt->peer_conn[d])
                nb_rt_peer_row(rt->b.state, rt->job.names[d], "stage", rt->job.addresses[d], "up", rt->peer_conn[d]);
        return rc;
    }
    case OUT_STATUS: {
        if (!rt->coord)
            return NB_ECLOSED;
        Nebula__JobStatus js;
        nebula__job_status__init(&js);
        js.job_id = rt->job.layout.job_id;
        js.daemon = (uint32_t)rt->me;
        js.state = (Nebula__JobStatus__State)o->status;
        js.message = o->text;
        js.attempt = o->attempt;
        Nebula__LinkMeasurement lm[NB_SCHED_MAX_STAGES], *lp[NB_SCHED_MAX_STAGES];
        nb_mem_device_t dev;
        if (o->status == NEBULA__JOB_STATUS__STATE__JOB_STATE_LINKS_READY) {
            js.n_links = link_measurements(rt, true, lm, lp);
            /* the device as the compute thread sampled it before
             * publishing the job (OUT_LINKS) */
            nb_state_device_memory(rt->b.state, &dev);
            js.device = dev.name;
            js.device_free_bytes = dev.free;
            js.device_total_bytes = dev.total;
            js.device_held_bytes = nb_state_model_total(rt->b.state);
        }
        js.links = lp;
        f.body_case = NEBULA__FRAME__BODY_JOB_STATUS;
        f.job_status = &js;
        int rc = nb_rt_send_ctl(rt->coord, &f);
        if (rc == 0 && o->status == NEBULA__JOB_STATUS__STATE__JOB_STATE_DONE) {
            rt->job_done = true;
            nb_service_set_state(rt->b.svc, NB_SVC_DONE, "%s", o->text);
        }
        if (o->status == NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED && !rt->have_job)
            rt->job_pending = false; /* the compute thread refused the job */
        if (rc == 0 && (o->status == NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED || o->exit_after))
            stop_failed(rt, o->text);
        if (rc == 0 && o->status == NEBULA__JOB_STATUS__STATE__JOB_STATE_FAULT && !o->exit_after)
            attempt_abort(rt, false, o->attempt, "%s", o->text);
        return rc;
    }
    case OUT_CKPT: {
        if (!rt->coord)
            return 0; /* the coordinator that asked is gone: so is its round */
        Nebula__Checkpoint ck;
        nebula__checkpoint__init(&ck);
        Nebula__CheckpointFile cf[CKPT_MAX_FILES], *cp[CKPT_MAX_FILES];
        ck.action = NEBULA__CHECKPOINT__ACTION__CHECKPOINT_DONE;
        ck.job_id = rt->job.layout.job_id;
        ck.step = o->ckpt.step;
        ck.attempt = o->ckpt.attempt;
        ck.daemon = (uint32_t)rt->me;
        ck.ok = o->ckpt.ok;
        ck.message = o->text;
        for (int i = 0; i < o->ckpt.n_files; i++) {
            nebula__checkpoint_file__init(&cf[i]);
            cf[i].name = o->ckpt.files[i].name;
            cf[i].bytes = o->ckpt.files[i].bytes;
            cf[i].sha256 = o->ckpt.files[i].sha256;
            cf[i].stages = o->ckpt.files[i].stages;
            cp[i] = &cf[i];
        }
        ck.n_files = (size_t)o->ckpt.n_files;
        ck.files = cp;
        f.body_case = NEBULA__FRAME__BODY_CHECKPOINT;
        f.checkpoint = &ck;
        return nb_rt_send_ctl(rt->coord, &f);
    }
    case OUT_LINKS:
    case OUT_JOINED:
        break;
    }
    return 0;
}

/* Tells the coordinator what this daemon holds (JobStatus JOINED): after it
 * connects, and after each abort once the compute thread has answered. */
static void send_joined(nb_stage_rt_t *rt)
{
    if (!rt->coord)
        return;
    if ((rt->have_job || rt->job_pending) && !rt->joined_valid)
        return; /* the compute thread's answer comes with OUT_JOINED */
    Nebula__Frame f;
    Nebula__JobStatus js;
    nebula__frame__init(&f);
    nebula__job_status__init(&js);
    js.state = NEBULA__JOB_STATUS__STATE__JOB_STATE_JOINED;
    js.message = "";
    /* the planner's replica model: one replica per listed device */
    int ndev = rt->b.cfg->n_devices > 0 ? rt->b.cfg->n_devices : 1;
    js.replicas = (uint32_t)ndev;
    js.reduce_bytes_per_s = nb_replica_local_bw(ndev, rt->b.cfg->n_devices > 0 && rt->b.cfg->devices[0].cuda);
    if (rt->have_job && rt->joined.has_job) {
        const joined_state_t *j = &rt->joined;
        js.job_id = rt->job.layout.job_id;
        js.daemon = (uint32_t)rt->me;
        js.attempt = rt->aborted_attempt;
        js.has_job = true;
        js.steps_committed = j->steps_committed;
        js.prepared = j->prepared;
        js.has_last_commit = j->has_last_commit;
        js.last_commit_step = j->last_commit_step;
        js.last_commit_sumsq = j->last_commit_sumsq;
        js.last_commit_skip = j->last_commit_skip;
    }
    f.body_case = NEBULA__FRAME__BODY_JOB_STATUS;
    f.job_status = &js;
    int rc = nb_rt_send_ctl(rt->coord, &f);
    if (rc)
        nb_log_warn(rt->b.cfg->coordinator.name, "cannot report this daemon's state: %s", nb_strerror(rc));
}

static void check_links_ready(nb_stage_rt_t *rt);

/* The compute thread published the job (or the next attempt of it): admit
 * and dial the neighbours (once: the transport keeps re-dialling a lost
 * one), then report LINKS_READY once all are up. */
static void open_links(nb_stage_rt_t *rt, uint32_t attempt)
{
    rt->job_pending = false;
    rt->have_job = true;
    if (rt->any_aborted && attempt <= rt->aborted_attempt) {
        /* an Abort of this attempt came meanwhile: the compute thread
         * answers it (OUT_JOINED); wait for the next Job */
        return;
    }
    rt->attempt = attempt;
    rt->aborting = false;
    rt->links_reported = false;
    __atomic_store_n(&rt->abort_flag, 0, __ATOMIC_RELEASE);
    if (rt->links_opened) {
        nb_service_set_state(rt->b.svc, NB_SVC_CONNECTING, "job %llu attempt %u: connecting to pipeline neighbours",
                             (unsigned long long)rt->job.layout.job_id, attempt);
        /* every daemon is back (the coordinator saw them all): a neighbour
         * still unreachable is dialled now, not after its back-off */
        for (int d = rt->me + 1; d < rt->job.n_daemons; d++)
            if (rt->need_peer[d] && !rt->peer_conn[d])
                nb_net_redial(rt->b.net, rt->job.names[d]);
        arm_wait(rt, true);
        check_links_ready(rt);
        return;
    }
    rt->links_opened = true;
    nb_net_set_job(rt->b.net, rt->job.layout.job_id);
    nb_trace_t *tr = nb_state_trace(rt->b.state);
    for (int d = 0; d < rt->job.n_daemons; d++) {
        rt->link_track[d] = -1;
        if (!rt->need_peer[d])
            continue;
        char name[2 * NB_CFG_NAME_MAX + 8];
        snprintf(name, sizeof name, "link %.28s->%.28s", rt->b.cfg->name, rt->job.names[d]);
        rt->link_track[d] = nb_trace_track(tr, name, true);
        nb_rt_peer_row(rt->b.state, rt->job.names[d], "stage", rt->job.addresses[d], "connecting", NULL);
        if (d > rt->me) {
            /* the lower index dials; one connection per pair carries both directions */
            const char *a = rt->job.addresses[d];
            nb_cfg_addr_t addr;
            char why[160];
            if (nb_cfg_parse_addr(a, &addr, 1, why, sizeof why) != 0) {
                job_fail(rt, "daemon %s has no usable address: %s", rt->job.names[d], why);
                return;
            }
            if (nb_net_connect(rt->b.net, rt->job.names[d], addr.host, addr.port) != 0) {
                job_fail(rt, "cannot dial %s at %s", rt->job.names[d], a);
                return;
            }
        } else if (nb_net_allow_peer(rt->b.net, rt->job.names[d]) != 0) {
            job_fail(rt, "cannot admit %s", rt->job.names[d]);
            return;
        } else {
            nb_rt_reserve_peer_addr(rt->b.net, rt->job.addresses[d]);
        }
    }
    nb_service_set_state(rt->b.svc, NB_SVC_CONNECTING, "job %llu: connecting to pipeline neighbours",
                         (unsigned long long)rt->job.layout.job_id);
    arm_wait(rt, true);
    check_links_ready(rt);
}

static void drain_outbox(nb_stage_rt_t *rt)
{
    while (!rt->b.stopping) {
        out_item_t *o = rt->pending;
        if (!o) {
            void *p;
            if (nb_mbox_try_pop(rt->outbox, &p) != 0)
                return;
            o = p;
        }
        rt->pending = NULL;
        if (o->kind == OUT_LINKS) {
            uint32_t attempt = o->attempt;
            nb__stage_free_out(o);
            open_links(rt, attempt);
            continue;
        }
        if (o->kind == OUT_JOINED) {
            rt->joined = o->joined;
            rt->joined_valid = true;
            nb__stage_free_out(o);
            send_joined(rt);
            continue;
        }
        if ((o->kind == OUT_TENSOR || o->kind == OUT_REPORT) && rt->aborting) {
            nb__stage_free_out(o); /* of the attempt that ended */
            continue;
        }
        if (o->kind == OUT_TENSOR && !rt->peer_conn[rt->job.layout.placement[o->msg->to_stage]]) {
            int d = rt->job.layout.placement[o->msg->to_stage];
            nb__stage_free_out(o);
            attempt_abort(rt, true, rt->attempt, "no link to pipeline neighbour %s", rt->job.names[d]);
            continue;
        }
        int rc = send_item(rt, o);
        if (rc == NB_ELIMIT) {
            rt->pending = o; /* back-pressure: wait for on_writable */
            return;
        }
        if ((rc == NB_ESTATE || rc == NB_ECLOSED) && o->kind == OUT_TENSOR) {
            /* the neighbour's connection is closing: a fault, as when its
             * close is seen first (on_closed) */
            int d = rt->job.layout.placement[o->msg->to_stage];
            nb__stage_free_out(o);
            attempt_abort(rt, true, rt->attempt, "lost pipeline neighbour %s (its connection closed while a "
                          "tensor was sent)", rt->job.names[d]);
            continue;
        }
        if ((rc == NB_ESTATE || rc == NB_ECLOSED) && (rt->have_job || rt->job_pending)) {
            /* the coordinator's connection is closing: on_closed handles
             * its loss; what it was told comes again as JOINED. A refusal
             * still ends this daemon. */
            bool stop = o->kind == OUT_STATUS &&
                        (o->status == NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED || o->exit_after);
            char why[sizeof o->text];
            snprintf(why, sizeof why, "%s", o->text);
            nb__stage_free_out(o);
            if (stop) {
                stop_failed(rt, why);
                return;
            }
            continue;
        }
        if (rc) {
            nb__stage_free_out(o);
            job_fail(rt, "cannot send to a peer: %s", nb_strerror(rc));
            return;
        }
        nb__stage_free_out(o);
    }
}

static void resume_reads(nb_stage_rt_t *rt);

static void wake_cb(uv_async_t *a)
{
    drain_outbox(a->data);
    resume_reads(a->data);
}

/* ---- loop thread: transport callbacks ---------------------------------- */

static int daemon_of(nb_stage_rt_t *rt, const char *name)
{
    for (int d = 0; rt->have_job && d < rt->job.n_daemons; d++)
        if (strcmp(rt->job.names[d], name) == 0)
            return d;
    return -1;
}

static void probe_bw_cb(nb_conn_t *c, int status, double bytes_per_s, void *ud)
{
    link_probe_t *lp = ud;
    nb_stage_rt_t *rt = lp->rt;
    if (!lp->warm && status == 0 && !rt->b.stopping && !rt->b.failed) {
        lp->warm = true;
        if (nb_probe_bw_send(c, rt->probe_bytes, probe_bw_cb, lp) == 0)
            return;
    }
    if (status == 0)
        lp->tx_bps = bytes_per_s;
    else
        nb_log_warn(rt->job.names[lp->peer], "bandwidth probe failed: %s", nb_strerror(status));
    lp->done = true;
    if (status == 0)
        nb_log_info(rt->job.names[lp->peer], "link probe: rtt %.2f ms, %.1f Mbit/s towards it (%llu bytes)",
                    lp->rtt_ms, bytes_per_s * 8e-6, (unsigned long long)rt->probe_bytes);
    check_links_ready(rt);
}

static void probe_rtt_cb(nb_conn_t *c, int status, double rtt_ms, void *ud)
{
    link_probe_t *lp = ud;
    nb_stage_rt_t *rt = lp->rt;
    if (status == 0)
        lp->rtt_ms = rtt_ms;
    if (rt->b.stopping || rt->b.failed || status == NB_ECLOSED) {
        lp->done = true;
        return;
    }
    int rc = nb_probe_bw_send(c, PROBE_WARMUP_BYTES, probe_bw_cb, lp);
    if (rc) {
        nb_log_warn(rt->job.names[lp->peer], "cannot probe the link: %s", nb_strerror(rc));
        lp->done = true;
        check_links_ready(rt);
    }
}

static void probe_timer_cb(uv_timer_t *t)
{
    check_links_ready(t->data);
}

/* The daemon with the higher index probes a link only once the lower one's
 * probe payload has arrived: the two directions of a link then run one at a
 * time, as a bulk transfer sees them (measured at once, each direction
 * loses some of its rate to the other's acknowledgements). A neighbour that
 * sends nothing is given 20 s. */
static bool probe_may_start(nb_stage_rt_t *rt, int d)
{
    if (d > rt->me)
        return true;
    nb_link_t l;
    nb_probe_link(rt->peer_conn[d], &l);
    uint64_t now = nb_mono_ns();
    if (!rt->probe_wait_ns)
        rt->probe_wait_ns = now;
    if (l.bytes_rx >= rt->probe_bytes + PROBE_WARMUP_BYTES || now - rt->probe_wait_ns > 20000000000ull)
        return true;
    if (!rt->probe_timer_open) {
        uv_timer_init(rt->b.loop, &rt->probe_timer);
        rt->probe_timer.data = rt;
        rt->probe_timer_open = true;
        uv_timer_start(&rt->probe_timer, probe_timer_cb, 10, 10);
    }
    return false;
}

/* Probes every data link once (round trip, then probe_bytes towards the
 * peer) before LINKS_READY, so the coordinator's planner starts from
 * measured links. Returns true while probes are outstanding. */
static bool probing(nb_stage_rt_t *rt)
{
    if (rt->probe_bytes == 0)
        return false;
    bool busy = false;
    for (int d = 0; d < rt->job.n_daemons; d++) {
        link_probe_t *lp = &rt->probe[d];
        if (!rt->need_peer[d])
            continue;
        if (!lp->started && !probe_may_start(rt, d)) {
            busy = true;
            continue;
        }
        if (!lp->started) {
            *lp = (link_probe_t){ .rt = rt, .peer = d, .started = true };
            int rc = nb_probe_rtt(rt->peer_conn[d], probe_rtt_cb, lp);
            if (rc) /* a heartbeat ping is outstanding: skip to the bandwidth */
                probe_rtt_cb(rt->peer_conn[d], rc, 0, lp);
        }
        busy |= !lp->done;
    }
    return busy;
}

static void check_links_ready(nb_stage_rt_t *rt)
{
    if (!rt->have_job || rt->links_reported || rt->aborting)
        return;
    for (int d = 0; d < rt->job.n_daemons; d++)
        if (rt->need_peer[d] && !rt->peer_ready[d])
            return;
    if (probing(rt) || rt->links_reported) /* a probe callback may have reported already */
        return;
    rt->links_reported = true;
    arm_wait(rt, false);
    nb_rt_close_handle(&rt->probe_timer, &rt->probe_timer_open);
    out_item_t *o = calloc(1, sizeof *o);
    if (!o)
        return;
    o->kind = OUT_STATUS;
    o->status = NEBULA__JOB_STATUS__STATE__JOB_STATE_LINKS_READY;
    o->attempt = rt->attempt;
    snprintf(o->text, sizeof o->text, "%s: links ready", rt->b.cfg->name);
    int rc = send_item(rt, o);
    nb__stage_free_out(o);
    if (rc)
        job_fail(rt, "cannot report to the coordinator: %s", nb_strerror(rc));
    else
        nb_service_set_state(rt->b.svc, NB_SVC_RUNNING, "job %llu: links up, waiting for plans",
                             (unsigned long long)rt->job.layout.job_id);
    if (rc == 0 && rt->attempt > 0)
        nb_log_info(NULL, "attempt %u: pipeline links up; the job goes on", rt->attempt);
}

static void on_ready(nb_conn_t *c, void *ud)
{
    nb_stage_rt_t *rt = ud;
    const char *peer = nb_conn_peer_name(c);
    if (strcmp(peer, rt->b.cfg->coordinator.name) == 0) {
        rt->coord = c;
        nb_rt_peer_row(rt->b.state, peer, "coordinator", rt->b.cfg->coordinator.address.text, "up", c);
        if (!rt->have_job)
            arm_wait(rt, false);
        if (rt->recovery_timer_open)
            uv_timer_stop(&rt->recovery_timer);
        /* READY=1 once the coordinator is authenticated (defers_ready) */
        if (!rt->ready_sent) {
            rt->ready_sent = true;
            nb_service_ready(rt->b.svc);
        }
        if (!rt->have_job)
            nb_service_set_state(rt->b.svc, NB_SVC_WAITING, "joined coordinator %s; waiting for a job", peer);
        else
            nb_log_info(peer, "coordinator back; reporting this daemon's state");
        if (rt->have_job && rt->job_done && !rt->joined_valid && !rt->aborting) {
            /* lost after this daemon's last step (no abort then: DONE was
             * sent) while the coordinator still recovers the job: as for
             * its Abort, the job is not done until every stage is, and the
             * compute thread's answer (OUT_JOINED) is the report */
            rt->job_done = false;
            attempt_abort(rt, false, rt->attempt, "the coordinator came back after this daemon's last step");
            return;
        }
        send_joined(rt);
        return;
    }
    int d = daemon_of(rt, peer);
    if (d < 0 || !rt->need_peer[d]) {
        nb_log_warn(peer, "connection from a daemon this job does not link to; closing");
        nb_conn_close(c);
        return;
    }
    rt->peer_conn[d] = c;
    rt->peer_ready[d] = true;
    nb_rt_peer_row(rt->b.state, peer, "stage", rt->job.addresses[d], "up", c);
    nb_log_info(peer, "pipeline link up (%s)", nb_conn_addr(c));
    check_links_ready(rt);
}

/* A tensor from a neighbour: check it belongs to this daemon's stages and
 * hand it to the compute thread. Returns 0 or a fault message. */
static const char *route_tensor(nb_stage_rt_t *rt, nb_conn_t *c, Nebula__Frame *hdr, uint8_t *payload,
                                size_t len)
{
    const Nebula__Tensor *t = hdr->tensor;
    int from_d = daemon_of(rt, nb_conn_peer_name(c));
    int kind = nb_rt_pmsg_kind(t->kind);
    const nb_pipe_layout_t *l = &rt->job.layout;
    if (from_d < 0 || kind < 0)
        return "tensor of an unknown kind or from an unknown daemon";
    if (t->to_stage >= (uint32_t)l->p || t->from_stage >= (uint32_t)l->p)
        return "tensor names a stage outside the pipeline";
    int to = (int)t->to_stage, from = (int)t->from_stage;
    if (l->placement[to] != rt->me || l->placement[from] != from_d)
        return "tensor for a stage this daemon does not host, or from a stage the peer does not host";
    if ((kind == NB_PMSG_GRAD) != (from == to + 1) || (kind != NB_PMSG_GRAD && from != to - 1))
        return "tensor direction does not match its kind";
    if (t->n_shape != 2 || strlen(t->codec) >= NB_PMSG_SPEC_MAX || t->codec_meta.len > NB_PMSG_META_MAX)
        return "tensor shape, codec name or codec metadata malformed";
    nb_pmsg_t *m = nb_pmsg_new();
    if (!m)
        return "out of memory";
    m->kind = (nb_pmsg_kind_t)kind;
    m->from_stage = from;
    m->to_stage = to;
    m->step = (int64_t)t->step;
    m->mb = (int)t->micro_batch;
    m->rows = (int64_t)t->shape[0];
    m->cols = (int64_t)t->shape[1];
    snprintf(m->spec, sizeof m->spec, "%s", t->codec);
    if (t->codec_meta.len) /* data is NULL when empty */
        memcpy(m->meta, t->codec_meta.data, t->codec_meta.len);
    m->meta_len = t->codec_meta.len;
    m->payload = payload;
    m->payload_len = len;
    m->raw_bytes = t->decoded_bytes;
    m->eval = t->eval;
    if (nb_mbox_try_push(rt->inbox[to][kind], m) != 0) {
        m->payload = NULL; /* the caller frees it */
        nb_pmsg_free(m);
        return "more tensors than the schedule allows";
    }
    /* Full up to what the schedule allows in flight: stop reading this
     * peer (TCP then stops it) until the compute thread takes from the box. */
    if ((int)nb_mbox_len(rt->inbox[to][kind]) >= __atomic_load_n(&rt->inbox_limit, __ATOMIC_ACQUIRE) &&
        !rt->read_paused[from_d]) {
        rt->read_paused[from_d] = true;
        __atomic_store_n(&rt->reads_paused, 1, __ATOMIC_RELEASE);
        nb_conn_pause_read(c);
        nb_log_debug(nb_conn_peer_name(c), "inbox of stage %d full (%zu tensors): reading paused", to,
                     nb_mbox_len(rt->inbox[to][kind]));
    }
    return NULL;
}

/* Resumes the paused connections once every inbox is below the limit
 * (called on each wake from the compute thread). */
static void resume_reads(nb_stage_rt_t *rt)
{
    if (!__atomic_load_n(&rt->reads_paused, __ATOMIC_ACQUIRE) || rt->b.stopping || rt->b.failed)
        return;
    int lim = __atomic_load_n(&rt->inbox_limit, __ATOMIC_ACQUIRE);
    for (int s = 0; s < NB_SCHED_MAX_STAGES; s++)
        for (int k = 0; k < NB_PMSG_KINDS; k++)
            if (rt->inbox[s][k] && (int)nb_mbox_len(rt->inbox[s][k]) >= lim)
                return;
    __atomic_store_n(&rt->reads_paused, 0, __ATOMIC_RELEASE);
    for (int d = 0; d < NB_SCHED_MAX_STAGES; d++)
        if (rt->read_paused[d]) {
            rt->read_paused[d] = false;
            if (rt->peer_conn[d])
                nb_conn_resume_read(rt->peer_conn[d]);
        }
}

static void on_frame(nb_conn_t *c, Nebula__Frame *hdr, uint8_t *payload, size_t len, void *ud)
{
    nb_stage_rt_t *rt = ud;
    const char *peer = nb_conn_peer_name(c);
    bool from_coord = c == rt->coord;
    switch (hdr->body_case) {
    case NEBULA__FRAME__BODY_ABORT:
        if (!from_coord) {
            nb_log_warn(peer, "control frame from a peer that is not the coordinator; closing");
            nb_metrics_inc(nb_state_metrics(rt->b.state), rt->m_refused, 1);
            break;
        }
        if (rt->have_job || rt->job_pending) {
            /* after the last step too: the job is not done until every
             * stage is (a recovery then makes this one write its weights
             * again) */
            rt->job_done = false;
            if (!rt->aborting)
                attempt_abort(rt, false, hdr->abort->attempt, "the coordinator aborted it: %s",
                              hdr->abort->reason ? hdr->abort->reason : "");
            else {
                /* answer this Abort too, with the compute thread's state now */
                rt->joined_valid = false;
                if (!rt->any_aborted || hdr->abort->attempt > rt->aborted_attempt)
                    rt->aborted_attempt = hdr->abort->attempt;
                if (nb__stage_push_abort(rt, hdr->abort->attempt, "abort") != 0)
                    job_fail(rt, "cannot hand the abort to the compute thread");
            }
        } else {
            send_joined(rt);
        }
        break;
    case NEBULA__FRAME__BODY_JOB:
    case NEBULA__FRAME__BODY_PLAN:
    case NEBULA__FRAME__BODY_COMMIT:
    case NEBULA__FRAME__BODY_CHECKPOINT:
        if (!from_coord) {
            nb_log_warn(peer, "control frame from a peer that is not the coordinator; closing");
            nb_metrics_inc(nb_state_metrics(rt->b.state), rt->m_refused, 1);
            break;
        }
        if (hdr->body_case == NEBULA__FRAME__BODY_JOB)
            nb_service_set_state(rt->b.svc, NB_SVC_CONNECTING, "job %llu received from %s",
                                 (unsigned long long)hdr->job->job_id, peer);
        bool is_job = hdr->body_case == NEBULA__FRAME__BODY_JOB; /* hdr is not ours once pushed */
        uint32_t job_attempt = is_job ? hdr->job->attempt : 0;
        uint64_t job_id = is_job ? hdr->job->job_id : 0;
        if (is_job)
            rt->recovery_timeout_s = (double)hdr->job->recovery_timeout_s;
        if (nb_mbox_try_push(rt->ctl, hdr) != 0) {
            job_fail(rt, "coordinator %s sent more control frames than this daemon can queue", peer);
            break;
        }
        if (is_job && !rt->have_job)
            rt->job_pending = true;
        if (is_job) {
            rt->pending_attempt = job_attempt;
            rt->pending_job_id = job_id;
        }
        free(payload);
        return; /* hdr now belongs to the compute thread */
    case NEBULA__FRAME__BODY_TENSOR: {
        if (rt->have_job && (rt->aborting || hdr->tensor->attempt != rt->attempt)) {
            /* of an attempt that ended (or, never, of one not begun here) */
            nb_metrics_inc(nb_state_metrics(rt->b.state), rt->m_stale, 1);
            free(payload);
            nebula__frame__free_unpacked(hdr, NULL);
            return;
        }
        const char *why = rt->have_job ? route_tensor(rt, c, hdr, payload, len) : "tensor before the job";
        if (why) {
            nb_metrics_inc(nb_state_metrics(rt->b.state), rt->m_refused, 1);
            free(payload);
            job_fail(rt, "peer %s: step %llu micro-batch %u: %s", peer, (unsigned long long)hdr->tensor->step,
                     hdr->tensor->micro_batch, why);
        }
        nebula__frame__free_unpacked(hdr, NULL);
        return; /* payload now belongs to the inbox (or was freed) */
    }
    case NEBULA__FRAME__BODY_SHUTDOWN:
        nb_log_info(peer, "shutdown: %s", hdr->shutdown->reason ? hdr->shutdown->reason : "");
        /* A job still being built is ended too (its links must not open). */
        if (from_coord && !rt->have_job && !rt->job_pending)
            break;
        if (from_coord)
            job_fail(rt, "the coordinator ended the job: %s", hdr->shutdown->reason ? hdr->shutdown->reason : "");
        break;
    default:
        nb_log_debug(peer, "ignoring frame type %d", (int)hdr->body_case);
        break;
    }
    nebula__frame__free_unpacked(hdr, NULL);
    free(payload);
}

static void on_writable(nb_conn_t *c, void *ud)
{
    (void)c;
    drain_outbox(ud);
}

static void on_closed(nb_conn_t *c, int err, void *ud)
{
    nb_stage_rt_t *rt = ud;
    const char *peer = nb_conn_peer_name(c);
    if (c == rt->coord) {
        rt->coord = NULL;
        nb_rt_peer_row(rt->b.state, peer, "coordinator", rt->b.cfg->coordinator.address.text, "down", NULL);
        if ((rt->have_job || rt->job_pending) && !rt->job_done && nb_state_get(rt->b.state) != NB_SVC_DONE) {
            /* keep the job in memory and wait for the coordinator (the
             * transport re-dials it), at most job.recovery_timeout_s */
            attempt_abort(rt, false, rt->job_pending && rt->pending_attempt > rt->attempt ? rt->pending_attempt
                                                                                          : rt->attempt,
                          "lost the coordinator %s (%s)", peer, err ? nb_strerror(err) : "closed");
            if (rt->recovery_timer_open && !rt->b.failed)
                uv_timer_start(&rt->recovery_timer, recovery_timeout_cb,
                               (uint64_t)(rt->recovery_timeout_s > 0 ? rt->recovery_timeout_s * 1000 : 600000), 0);
        } else if (!rt->have_job) {
            arm_wait(rt, true); /* waiting for it again */
        }
        return;
    }
    int d = daemon_of(rt, peer);
    if (d >= 0 && rt->peer_conn[d] == c) {
        rt->peer_conn[d] = NULL;
        rt->peer_ready[d] = false;
        nb_rt_peer_row(rt->b.state, peer, "stage", rt->job.addresses[d], "down", NULL);
        if (nb_state_get(rt->b.state) != NB_SVC_DONE && !rt->aborting)
            attempt_abort(rt, true, rt->attempt, "lost pipeline neighbour %s (%s)", peer,
                          err ? nb_strerror(err) : "closed");
    }
}

/* ---- service hooks --------------------------------------------------------- */

static int rt_start(nb_service_t *svc, void *ud)
{
    nb_stage_rt_t *rt = ud;
    nb_net_cfg_t nc;
    nb_rt_net_cfg(rt->b.cfg, NEBULA__ROLE__ROLE_STAGE, &nc);
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
    if ((rc = nb_net_connect(rt->b.net, rt->b.cfg->coordinator.name, rt->b.cfg->coordinator.address.host,
                             rt->b.cfg->coordinator.address.port))) {
        nb_log_error(NULL, "cannot dial coordinator %s: %s", rt->b.cfg->coordinator.address.text, nb_strerror(rc));
        return rc;
    }
    if (rt->b.cfg->connect_timeout_s > 0) {
        uv_timer_init(rt->b.loop, &rt->wait_timer);
        rt->wait_timer.data = rt;
        rt->wait_timer_open = true;
        arm_wait(rt, true);
    }
    uv_timer_init(rt->b.loop, &rt->recovery_timer);
    rt->recovery_timer.data = rt;
    rt->recovery_timer_open = true;
    uv_async_init(rt->b.loop, &rt->wake, wake_cb);
    rt->wake.data = rt;
    rt->wake_open = true;
    if (pthread_create(&rt->compute, NULL, nb__stage_compute_main, rt) != 0)
        return NB_ENOMEM;
    rt->compute_started = true;
    nb_rt_peer_row(rt->b.state, rt->b.cfg->coordinator.name, "coordinator", rt->b.cfg->coordinator.address.text,
                   "connecting", NULL);
    nb_service_set_state(svc, NB_SVC_WAITING, "listening on %s; dialling coordinator %s at %s", bound,
                         rt->b.cfg->coordinator.name, rt->b.cfg->coordinator.address.text);
    return 0;
}

static void rt_stop(nb_service_t *svc, void *ud)
{
    (void)svc;
    nb_stage_rt_t *rt = ud;
    rt->b.stopping = true;
    close_mailboxes(rt);
    nb_rt_close_net(&rt->b);
    nb_rt_close_handle(&rt->wake, &rt->wake_open);
    nb_rt_close_handle(&rt->probe_timer, &rt->probe_timer_open);
    nb_rt_close_handle(&rt->wait_timer, &rt->wait_timer_open);
    nb_rt_close_handle(&rt->recovery_timer, &rt->recovery_timer_open);
}

static const nb_runtime_i stage_runtime = {
    .start = rt_start,
    .stop = rt_stop,
    .binds_listener = true,
    .defers_ready = true,
};

int nb_stage_rt_attach(nb_service_t *svc, nb_stage_rt_t **out)
{
    nb_stage_rt_t *rt = calloc(1, sizeof *rt);
    if (!rt)
        return NB_ENOMEM;
    pthread_mutex_init(&rt->inbox_mu, NULL);
    nb_rt_base_init(&rt->b, svc);
    rt->outbox = nb_mbox_new(OUTBOX_CAP, nb__stage_free_out);
    rt->ctl = nb_mbox_new(CTL_CAP, free_frame);
    if (!rt->outbox || !rt->ctl) {
        nb_stage_rt_free(rt);
        return NB_ENOMEM;
    }
    nb_metrics_t *mx = nb_state_metrics(rt->b.state);
    rt->m_steps = nb_metrics_add(mx, "nebula_stage_steps_total", NULL, NB_METRIC_COUNTER, "Training steps run");
    rt->m_bytes_raw = nb_metrics_add(mx, "nebula_stage_sent_raw_bytes_total", NULL, NB_METRIC_COUNTER,
                                     "Tensor bytes sent to neighbours before compression");
    rt->m_bytes_wire = nb_metrics_add(mx, "nebula_stage_sent_wire_bytes_total", NULL, NB_METRIC_COUNTER,
                                      "Tensor bytes sent to neighbours after compression");
    rt->m_refused = nb_metrics_add(mx, "nebula_stage_refused_frames_total", NULL, NB_METRIC_COUNTER,
                                   "Frames refused: wrong sender, stage, step or kind");
    rt->m_model_bytes = nb_metrics_add(mx, "nebula_stage_model_bytes", NULL, NB_METRIC_GAUGE,
                                       "Weights, gradients, optimizer state and stashed activations held");
    rt->m_peak_rss = nb_metrics_add(mx, "nebula_stage_peak_rss_bytes", NULL, NB_METRIC_GAUGE,
                                    "Peak resident memory of the daemon process");
    rt->m_stale = nb_metrics_add(mx, "nebula_stage_stale_frames_total", NULL, NB_METRIC_COUNTER,
                                 "Tensors of an attempt that a fault ended, dropped");
    rt->m_aborts = nb_metrics_add(mx, "nebula_stage_attempts_aborted_total", NULL, NB_METRIC_COUNTER,
                                  "Attempts of the job this daemon saw end in a fault");
    rt->m_ckpts = nb_metrics_add(mx, "nebula_stage_checkpoints_written_total", NULL, NB_METRIC_COUNTER,
                                 "Checkpoint files this daemon wrote");
    nb_service_set_runtime(svc, &stage_runtime, rt);
    *out = rt;
    return 0;
}

void nb_stage_rt_free(nb_stage_rt_t *rt)
{
    if (!rt)
        return;
    if (rt->ctl)
        close_mailboxes(rt);
    if (rt->compute_started)
        pthread_join(rt->compute, NULL);
    nb__stage_free_out(rt->pending);
    nb_mbox_free(rt->outbox);
    nb_mbox_free(rt->ctl);
    for (int s = 0; s < NB_SCHED_MAX_STAGES; s++)
        for (int k = 0; k < NB_PMSG_KINDS; k++)
            nb_mbox_free(rt->inbox[s][k]);
    pthread_mutex_destroy(&rt->inbox_mu);
    free(rt);
}
