/*
 * stage_rt.c - the stage daemon's runtime; see stage_rt.h for the threads
 * and docs/pipeline.md for the protocol.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "daemon/log.h"
#include "daemon/pipeline/job.h"
#include "daemon/pipeline/mailbox.h"
#include "daemon/pipeline/rt_common.h"
#include "daemon/pipeline/stage_rt.h"
#include "daemon/net/probe.h"
#include "daemon/train/weights.h"

#define OUTBOX_CAP 4     /* tensors waiting for the loop: back-pressure beyond */
#define CTL_CAP 64       /* control frames from the coordinator */
#define INBOX_CAP 4096   /* per stage and kind: >= micro-batches of one step */

typedef enum { OUT_TENSOR, OUT_REPORT, OUT_STATUS, OUT_LINKS } out_kind_t;

typedef struct {
    out_kind_t kind;
    nb_pmsg_t *msg;              /* OUT_TENSOR */
    nb_step_result_t res;        /* OUT_REPORT (timings copied) */
    int status;                  /* OUT_STATUS: Nebula__JobStatus__State */
    char text[512];              /* OUT_STATUS message */
    uint64_t t_queued_ns;
} out_item_t;

/* One data link's probes before LINKS_READY (Job.probe_bytes > 0). */
typedef struct {
    nb_stage_rt_t *rt;
    int peer;                    /* daemon index */
    double rtt_ms, tx_bps;       /* 0: not measured */
    bool started, warm, done;
} link_probe_t;

/* A short transfer before the measured one opens the TCP window, so the
 * measurement does not include slow start (it would at 500 Mbit/s). */
#define PROBE_WARMUP_BYTES (512u << 10)

/* A tensor the transport is sending: for the trace and to free the message. */
typedef struct {
    nb_stage_rt_t *rt;
    nb_pmsg_t *msg;
    int track;
    uint64_t t0_ns;
} sending_t;

struct nb_stage_rt {
    nb_service_t *svc;
    const nb_config_t *cfg;
    nb_state_t *state;
    uv_loop_t *loop;
    nb_net_t *net;
    bool net_open;
    uv_async_t wake;
    bool wake_open;
    nb_conn_t *coord;
    out_item_t *pending;         /* blocked by a full send queue */
    bool stopping, failed;
    bool ready_sent;

    /* set by the compute thread before OUT_LINKS, read-only afterwards */
    nb_job_desc_t job;
    int me, first_stage;
    bool have_job;
    bool need_peer[NB_SCHED_MAX_STAGES];
    bool peer_ready[NB_SCHED_MAX_STAGES];
    nb_conn_t *peer_conn[NB_SCHED_MAX_STAGES];
    bool links_reported;
    int link_track[NB_SCHED_MAX_STAGES];
    uint64_t probe_bytes;        /* from the Job; 0: no probes */
    link_probe_t probe[NB_SCHED_MAX_STAGES];
    uv_timer_t probe_timer;      /* waits for a neighbour's probe to finish */
    bool probe_timer_open;
    uint64_t probe_wait_ns;      /* when the wait began; 0: not waiting */

    nb_mbox_t *outbox, *ctl;
    nb_mbox_t *inbox[NB_SCHED_MAX_STAGES][NB_PMSG_KINDS];
    pthread_t compute;
    bool compute_started;

    int m_steps, m_bytes_raw, m_bytes_wire, m_refused, m_model_bytes, m_peak_rss;
};

static void free_out(void *p)
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

static void free_pmsg(void *p) { nb_pmsg_free(p); }

/* ---- job failure (loop thread) ------------------------------------------ */

static void close_mailboxes(nb_stage_rt_t *rt)
{
    nb_mbox_close(rt->ctl);
    nb_mbox_close(rt->outbox);
    for (int s = 0; s < NB_SCHED_MAX_STAGES; s++)
        for (int k = 0; k < NB_PMSG_KINDS; k++)
            if (rt->inbox[s][k])
                nb_mbox_close(rt->inbox[s][k]);
}

static void job_fail(nb_stage_rt_t *rt, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void job_fail(nb_stage_rt_t *rt, const char *fmt, ...)
{
    if (rt->failed || rt->stopping)
        return;
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    rt->failed = true;
    close_mailboxes(rt);
    nb_log_error(NULL, "job failed: %s", why);
    /* Tell the coordinator why before the orderly close (queued frames go
     * out first), so its log names the cause, not just this daemon leaving. */
    if (rt->coord && rt->have_job) {
        Nebula__Frame f;
        Nebula__JobStatus js;
        nebula__frame__init(&f);
        nebula__job_status__init(&js);
        js.job_id = rt->job.layout.job_id;
        js.daemon = (uint32_t)rt->me;
        js.state = NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED;
        js.message = why;
        f.body_case = NEBULA__FRAME__BODY_JOB_STATUS;
        f.job_status = &js;
        nb_rt_send_ctl(rt->coord, &f);
    }
    nb_service_fail(rt->svc, why);
}

/* ---- compute thread ------------------------------------------------------ */

static int io_send(void *ud, nb_pmsg_t *msg)
{
    nb_stage_rt_t *rt = ud;
    out_item_t *o = calloc(1, sizeof *o);
    if (!o)
        return NB_ENOMEM;
    o->kind = OUT_TENSOR;
    o->msg = msg;
    o->t_queued_ns = nb_host_now_ns();
    int rc = nb_mbox_push(rt->outbox, o);
    if (rc) {
        o->msg = NULL; /* the caller keeps msg on error */
        free(o);
        return rc;
    }
    uv_async_send(&rt->wake);
    return 0;
}

static int io_recv(void *ud, int stage, nb_pmsg_kind_t kind, nb_pmsg_t **out, int timeout_ms)
{
    nb_stage_rt_t *rt = ud;
    void *m;
    int rc = nb_mbox_pop(rt->inbox[stage][kind], &m, timeout_ms);
    if (rc == 0)
        *out = m;
    return rc;
}

static int post(nb_stage_rt_t *rt, out_item_t *o)
{
    int rc = nb_mbox_push(rt->outbox, o);
    if (rc) {
        free_out(o);
        return rc;
    }
    uv_async_send(&rt->wake);
    return 0;
}

static void post_status(nb_stage_rt_t *rt, int state, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void post_status(nb_stage_rt_t *rt, int state, const char *fmt, ...)
{
    out_item_t *o = calloc(1, sizeof *o);
    if (!o)
        return;
    o->kind = OUT_STATUS;
    o->status = state;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->text, sizeof o->text, fmt, ap);
    va_end(ap);
    post(rt, o);
}

static void layers_text(const nb_pipe_layout_t *l, int daemon, char *buf, size_t len)
{
    buf[0] = 0;
    for (int s = 0; s < l->p; s++) {
        if (l->placement[s] != daemon)
            continue;
        const nb_part_spec_t *ps = &l->parts[s];
        size_t n = strlen(buf);
        snprintf(buf + n, len - n, "%s%s%d-%d%s", n ? "," : "", ps->embed ? "embed+" : "", ps->first,
                 ps->last - 1, ps->head ? "+head" : "");
    }
}

static void trace_step(nb_stage_rt_t *rt, const nb_step_result_t *res)
{
    nb_trace_t *tr = nb_state_trace(rt->state);
    for (int i = 0; i < res->n_timings; i++) {
        const nb_mb_timing_t *t = &res->timings[i];
        char name[32];
        snprintf(name, sizeof name, "stage %d", t->stage);
        int track = nb_trace_track(tr, name, false);
        if (track < 0)
            continue;
        nb_trace_event_t ev = { .step = res->step, .micro = t->mb, .track = (int16_t)track };
        ev.kind = NB_TEV_FORWARD;
        ev.ts_us = (double)t->fwd_start_ns / 1e3;
        ev.dur_us = (double)t->fwd_ns / 1e3;
        nb_trace_add(tr, &ev);
        ev.kind = NB_TEV_BACKWARD;
        ev.ts_us = (double)t->bwd_start_ns / 1e3;
        ev.dur_us = (double)t->bwd_ns / 1e3;
        nb_trace_add(tr, &ev);
    }
}

/* Builds the host for a received Job and asks the loop to open the links. */
static int handle_job(nb_stage_rt_t *rt, nb_backend_t *be, nb_host_t **host, const Nebula__Job *msg)
{
    char err[512];
    nb_job_desc_t d;
    int me;
    if (*host) {
        post_status(rt, NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED, "a job is already running");
        return NB_ESTATE;
    }
    int rc = nb_job_from_msg(msg, &d, &me, err, sizeof err);
    if (rc == 0 && strcmp(d.names[me], rt->cfg->name) != 0) {
        snprintf(err, sizeof err, "the coordinator assigned daemon %d (%s) to this daemon (%s)", me, d.names[me],
                 rt->cfg->name);
        rc = NB_EINVAL;
    }
    if (rc == 0)
        rc = nb_host_new(be, &d.layout, me, rt->cfg->data, host, err, sizeof err);
    if (rc) {
        nb_log_error(rt->cfg->coordinator.name, "refusing job %llu: %s", (unsigned long long)msg->job_id, err);
        post_status(rt, NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED, "%s: %s", rt->cfg->name, err);
        return rc;
    }
    for (int s = 0; s < d.layout.p; s++)
        if (d.layout.placement[s] == me)
            for (int k = 0; k < NB_PMSG_KINDS; k++)
                if (!(rt->inbox[s][k] = nb_mbox_new(INBOX_CAP, free_pmsg)))
                    return NB_ENOMEM;
    rt->job = d;
    rt->me = me;
    rt->probe_bytes = msg->probe_bytes;
    rt->first_stage = nb_host_stage(*host, 0);
    for (int s = 0; s + 1 < d.layout.p; s++) {
        int a = d.layout.placement[s], b = d.layout.placement[s + 1];
        if (a == b)
            continue;
        if (a == me)
            rt->need_peer[b] = true;
        if (b == me)
            rt->need_peer[a] = true;
    }
    char layers[128];
    layers_text(&d.layout, me, layers, sizeof layers);
    nb_log_info(rt->cfg->coordinator.name, "job %llu: daemon %d of %d, stages %s, %d x %d tokens per micro-batch",
                (unsigned long long)d.layout.job_id, me, d.n_daemons, layers, d.layout.micro_batch_size,
                d.layout.seq_len);
    out_item_t *o = calloc(1, sizeof *o);
    if (!o)
        return NB_ENOMEM;
    o->kind = OUT_LINKS;
    return post(rt, o);
}

/* Peak resident set of this process (VmHWM), 0 when unknown. */
static uint64_t peak_rss_bytes(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return 0;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %llu kB", &kb) == 1)
            break;
    fclose(f);
    return (uint64_t)kb * 1024;
}

static int handle_plan(nb_stage_rt_t *rt, nb_host_t *host, const Nebula__Plan *p)
{
    char err[512];
    nb_pipe_io_i io = { io_send, io_recv, rt };
    nb_step_plan_t plan;
    memset(&plan, 0, sizeof plan);
    plan.step = (int64_t)p->step;
    plan.m = (int)p->micro_batches;
    plan.micro_batch_size = (int)p->micro_batch_size;
    if (!host || p->job_id != rt->job.layout.job_id) {
        post_status(rt, NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED, "plan for job %llu, which this daemon does not run",
                    (unsigned long long)p->job_id);
        return NB_ESTATE;
    }
    if (!p->schedule || nb_sched_parse(p->schedule, &plan.sched) || !p->forward_codec || !p->backward_codec ||
        p->micro_batches < 1 || p->micro_batches > NB_SCHED_MAX_MB || p->micro_batch_size < 1 ||
        p->micro_batch_size > 65536) {
        post_status(rt, NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED, "malformed plan for step %llu",
                    (unsigned long long)p->step);
        return NB_EFORMAT;
    }
    snprintf(plan.fwd_codec, sizeof plan.fwd_codec, "%s", p->forward_codec);
    snprintf(plan.bwd_codec, sizeof plan.bwd_codec, "%s", p->backward_codec);
    int timeout_ms = (int)(rt->cfg->heartbeat_timeout_s > 0 ? rt->cfg->heartbeat_timeout_s * 4000 : 60000);
    nb_step_result_t res;
    int rc = nb_host_run_step(host, &plan, &io, timeout_ms, &res, err, sizeof err);
    if (rc) {
        if (rc != NB_ECLOSED)
            post_status(rt, NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED, "%s: step %lld: %s", rt->cfg->name,
                        (long long)plan.step, err);
        nb_log_error(NULL, "step %lld: %s", (long long)plan.step, err);
        return rc;
    }
    trace_step(rt, &res);
    nb_metrics_t *mx = nb_state_metrics(rt->state);
    nb_metrics_inc(mx, rt->m_steps, 1);
    nb_metrics_inc(mx, rt->m_bytes_raw, (double)res.bytes_raw);
    nb_metrics_inc(mx, rt->m_bytes_wire, (double)res.bytes_wire);
    nb_metrics_set(mx, rt->m_model_bytes, (double)nb_host_memory_bytes(host));
    nb_metrics_set(mx, rt->m_peak_rss, (double)peak_rss_bytes());
    nb_job_info_t j;
    memset(&j, 0, sizeof j);
    j.active = true;
    j.step = plan.step + 1;
    j.steps = rt->job.steps;
    j.loss = res.loss;
    j.step_time_s = (double)res.step_ns / 1e9;
    j.tokens_per_s = (double)plan.m * plan.micro_batch_size * rt->job.layout.seq_len / j.step_time_s;
    j.bubble_measured = j.bubble_predicted = -1;
    j.bytes_raw = (uint64_t)nb_metrics_get(mx, rt->m_bytes_raw);
    j.bytes_wire = (uint64_t)nb_metrics_get(mx, rt->m_bytes_wire);
    snprintf(j.codec_forward, sizeof j.codec_forward, "%s", plan.fwd_codec);
    snprintf(j.codec_backward, sizeof j.codec_backward, "%s", plan.bwd_codec);
    j.micro_batches = plan.m;
    nb_sched_format(&plan.sched, j.schedule, sizeof j.schedule);
    layers_text(&rt->job.layout, rt->me, j.layers, sizeof j.layers);
    nb_state_job_update(rt->state, &j);
    out_item_t *o = calloc(1, sizeof *o);
    if (!o)
        return NB_ENOMEM;
    o->kind = OUT_REPORT;
    o->res = res;
    o->res.timings = malloc((size_t)res.n_timings * sizeof *res.timings);
    if (!o->res.timings) {
        free(o);
        return NB_ENOMEM;
    }
    memcpy(o->res.timings, res.timings, (size_t)res.n_timings * sizeof *res.timings);
    return post(rt, o);
}

static int save_weights(nb_stage_rt_t *rt, nb_host_t *host)
{
    if (!rt->cfg->checkpoint_dir[0])
        return 0;
    if (mkdir(rt->cfg->checkpoint_dir, 0750) != 0 && errno != EEXIST) {
        nb_log_error(NULL, "%s: cannot create: %s", rt->cfg->checkpoint_dir, strerror(errno));
        return NB_EIO;
    }
    for (int i = 0; i < nb_host_num_stages(host); i++) {
        char path[NB_CFG_PATH_MAX + 64], err[512];
        snprintf(path, sizeof path, "%s/final-stage%d.weights", rt->cfg->checkpoint_dir, nb_host_stage(host, i));
        int rc = nb_weights_save(path, nb_host_part(host, i), err, sizeof err);
        if (rc) {
            nb_log_error(NULL, "%s", err);
            return rc;
        }
        nb_log_info(NULL, "wrote %s", path);
    }
    return 0;
}

static void *compute_main(void *arg)
{
    nb_stage_rt_t *rt = arg;
    nb_backend_t *be = nb_cpu_backend_new();
    nb_host_t *host = NULL;
    for (;;) {
        void *item;
        if (nb_mbox_pop(rt->ctl, &item, -1) != 0)
            break;
        Nebula__Frame *f = item;
        int rc = 0;
        switch (f->body_case) {
        case NEBULA__FRAME__BODY_JOB:
            rc = handle_job(rt, be, &host, f->job);
            break;
        case NEBULA__FRAME__BODY_PLAN:
            rc = handle_plan(rt, host, f->plan);
            break;
        case NEBULA__FRAME__BODY_COMMIT:
            if (!host || f->commit->job_id != rt->job.layout.job_id) {
                rc = NB_ESTATE;
                break;
            }
            {
                uint64_t t0 = nb_host_now_ns();
                nb_host_apply(host, (int64_t)f->commit->step, f->commit->global_grad_sumsq);
                nb_trace_t *tr = nb_state_trace(rt->state);
                int track = nb_trace_track(tr, "optimizer", false);
                nb_trace_event_t ev = { .step = (int64_t)f->commit->step, .micro = -1, .track = (int16_t)track,
                                        .kind = NB_TEV_OPTIMIZER, .ts_us = (double)t0 / 1e3,
                                        .dur_us = (double)(nb_host_now_ns() - t0) / 1e3 };
                if (track >= 0)
                    nb_trace_add(tr, &ev);
            }
            if (f->commit->last) {
                rc = save_weights(rt, host);
                if (rc == 0)
                    post_status(rt, NEBULA__JOB_STATUS__STATE__JOB_STATE_DONE, "%s: %lld steps done", rt->cfg->name,
                                (long long)f->commit->step + 1);
                else
                    post_status(rt, NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED, "%s: cannot write the weights",
                                rt->cfg->name);
            }
            break;
        default:
            break;
        }
        bool fatal = rc && f->body_case != NEBULA__FRAME__BODY_JOB; /* a refused job leaves us waiting */
        nebula__frame__free_unpacked(f, NULL);
        if (fatal)
            break;
    }
    nb_host_free(host);
    nb_be_free(be);
    return NULL;
}

/* ---- loop thread: sending ------------------------------------------------- */

static void sent_cb(void *payload, void *ud)
{
    (void)payload;
    sending_t *s = ud;
    if (s->track >= 0) {
        uint64_t now = nb_host_now_ns();
        nb_trace_event_t ev = { .step = s->msg->step, .micro = s->msg->mb, .track = (int16_t)s->track,
                                .kind = NB_TEV_SEND, .ts_us = (double)s->t0_ns / 1e3,
                                .dur_us = (double)(now - s->t0_ns) / 1e3, .bytes = s->msg->payload_len };
        nb_trace_add(nb_state_trace(s->rt->state), &ev);
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
        f.body_case = NEBULA__FRAME__BODY_TENSOR;
        f.tensor = &t;
        sending_t *s = malloc(sizeof *s);
        if (!s)
            return NB_ENOMEM;
        *s = (sending_t){ rt, m, rt->link_track[d], nb_host_now_ns() };
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
        r.step_ns = o->res.step_ns;
        r.daemon = (uint32_t)rt->me;
        Nebula__LinkMeasurement lm[NB_SCHED_MAX_STAGES], *lp[NB_SCHED_MAX_STAGES];
        r.n_links = link_measurements(rt, false, lm, lp);
        r.links = lp;
        f.body_case = NEBULA__FRAME__BODY_REPORT;
        f.report = &r;
        int rc = nb_rt_send_ctl(rt->coord, &f);
        free(tm);
        free(tp);
        /* refresh the status rows once per step: RTT, bandwidth, bytes */
        nb_rt_peer_row(rt->state, rt->cfg->coordinator.name, "coordinator", rt->cfg->coordinator.address.text,
                       "up", rt->coord);
        for (int d = 0; d < rt->job.n_daemons; d++)
            if (rt->peer_conn[d])
                nb_rt_peer_row(rt->state, rt->job.names[d], "stage", rt->job.addresses[d], "up", rt->peer_conn[d]);
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
        Nebula__LinkMeasurement lm[NB_SCHED_MAX_STAGES], *lp[NB_SCHED_MAX_STAGES];
        if (o->status == NEBULA__JOB_STATUS__STATE__JOB_STATE_LINKS_READY)
            js.n_links = link_measurements(rt, true, lm, lp);
        js.links = lp;
        f.body_case = NEBULA__FRAME__BODY_JOB_STATUS;
        f.job_status = &js;
        int rc = nb_rt_send_ctl(rt->coord, &f);
        if (rc == 0 && o->status == NEBULA__JOB_STATUS__STATE__JOB_STATE_DONE)
            nb_service_set_state(rt->svc, NB_SVC_DONE, "%s", o->text);
        if (rc == 0 && o->status == NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED)
            nb_service_set_state(rt->svc, NB_SVC_FAILED, "%s", o->text);
        return rc;
    }
    case OUT_LINKS:
        break;
    }
    return 0;
}

static void check_links_ready(nb_stage_rt_t *rt);

/* The compute thread published the job: admit and dial the neighbours. */
static void open_links(nb_stage_rt_t *rt)
{
    rt->have_job = true;
    nb_net_set_job(rt->net, rt->job.layout.job_id);
    nb_trace_t *tr = nb_state_trace(rt->state);
    for (int d = 0; d < rt->job.n_daemons; d++) {
        rt->link_track[d] = -1;
        if (!rt->need_peer[d])
            continue;
        char name[2 * NB_CFG_NAME_MAX + 8];
        snprintf(name, sizeof name, "link %.28s->%.28s", rt->cfg->name, rt->job.names[d]);
        rt->link_track[d] = nb_trace_track(tr, name, true);
        nb_rt_peer_row(rt->state, rt->job.names[d], "stage", rt->job.addresses[d], "connecting", NULL);
        if (d > rt->me) {
            /* the lower index dials; one connection per pair carries both directions */
            char host[NB_CFG_ADDR_MAX];
            int port = 0;
            const char *a = rt->job.addresses[d];
            const char *colon = strrchr(a, ':');
            if (!colon || colon == a) {
                job_fail(rt, "daemon %s has no usable address '%s'", rt->job.names[d], a);
                return;
            }
            size_t hl = (size_t)(colon - a);
            if (a[0] == '[' && hl >= 2 && a[hl - 1] == ']') {
                memcpy(host, a + 1, hl - 2);
                host[hl - 2] = 0;
            } else {
                memcpy(host, a, hl);
                host[hl] = 0;
            }
            port = atoi(colon + 1);
            if (nb_net_connect(rt->net, rt->job.names[d], host, port) != 0) {
                job_fail(rt, "cannot dial %s at %s", rt->job.names[d], a);
                return;
            }
        } else if (nb_net_allow_peer(rt->net, rt->job.names[d]) != 0) {
            job_fail(rt, "cannot admit %s", rt->job.names[d]);
            return;
        }
    }
    nb_service_set_state(rt->svc, NB_SVC_CONNECTING, "job %llu: connecting to pipeline neighbours",
                         (unsigned long long)rt->job.layout.job_id);
    check_links_ready(rt);
}

static void drain_outbox(nb_stage_rt_t *rt)
{
    while (!rt->stopping) {
        out_item_t *o = rt->pending;
        if (!o) {
            void *p;
            if (nb_mbox_try_pop(rt->outbox, &p) != 0)
                return;
            o = p;
        }
        rt->pending = NULL;
        if (o->kind == OUT_LINKS) {
            free_out(o);
            open_links(rt);
            continue;
        }
        int rc = send_item(rt, o);
        if (rc == NB_ELIMIT) {
            rt->pending = o; /* back-pressure: wait for on_writable */
            return;
        }
        if (rc) {
            free_out(o);
            job_fail(rt, "cannot send to a peer: %s", nb_strerror(rc));
            return;
        }
        free_out(o);
    }
}

static void wake_cb(uv_async_t *a)
{
    drain_outbox(a->data);
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
    if (!lp->warm && status == 0 && !rt->stopping && !rt->failed) {
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
    if (rt->stopping || rt->failed || status == NB_ECLOSED) {
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
    uint64_t now = nb_host_now_ns();
    if (!rt->probe_wait_ns)
        rt->probe_wait_ns = now;
    if (l.bytes_rx >= rt->probe_bytes + PROBE_WARMUP_BYTES || now - rt->probe_wait_ns > 20000000000ull)
        return true;
    if (!rt->probe_timer_open) {
        uv_timer_init(rt->loop, &rt->probe_timer);
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
    if (!rt->have_job || rt->links_reported)
        return;
    for (int d = 0; d < rt->job.n_daemons; d++)
        if (rt->need_peer[d] && !rt->peer_ready[d])
            return;
    if (probing(rt) || rt->links_reported) /* a probe callback may have reported already */
        return;
    rt->links_reported = true;
    if (rt->probe_timer_open) {
        uv_close((uv_handle_t *)&rt->probe_timer, NULL);
        rt->probe_timer_open = false;
    }
    out_item_t *o = calloc(1, sizeof *o);
    if (!o)
        return;
    o->kind = OUT_STATUS;
    o->status = NEBULA__JOB_STATUS__STATE__JOB_STATE_LINKS_READY;
    snprintf(o->text, sizeof o->text, "%s: links ready", rt->cfg->name);
    int rc = send_item(rt, o);
    free_out(o);
    if (rc)
        job_fail(rt, "cannot report to the coordinator: %s", nb_strerror(rc));
    else
        nb_service_set_state(rt->svc, NB_SVC_RUNNING, "job %llu: links up, waiting for plans",
                             (unsigned long long)rt->job.layout.job_id);
}

static void on_ready(nb_conn_t *c, void *ud)
{
    nb_stage_rt_t *rt = ud;
    const char *peer = nb_conn_peer_name(c);
    if (strcmp(peer, rt->cfg->coordinator.name) == 0) {
        rt->coord = c;
        nb_rt_peer_row(rt->state, peer, "coordinator", rt->cfg->coordinator.address.text, "up", c);
        /* READY=1 once the coordinator is authenticated (defers_ready) */
        if (!rt->ready_sent) {
            rt->ready_sent = true;
            nb_service_ready(rt->svc);
        }
        nb_service_set_state(rt->svc, NB_SVC_WAITING, "joined coordinator %s; waiting for a job", peer);
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
    nb_rt_peer_row(rt->state, peer, "stage", rt->job.addresses[d], "up", c);
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
    if (nb_mbox_try_push(rt->inbox[to][kind], m) != 0) {
        m->payload = NULL; /* the caller frees it */
        nb_pmsg_free(m);
        return "more tensors than the schedule allows";
    }
    return NULL;
}

static void on_frame(nb_conn_t *c, Nebula__Frame *hdr, uint8_t *payload, size_t len, void *ud)
{
    nb_stage_rt_t *rt = ud;
    const char *peer = nb_conn_peer_name(c);
    bool from_coord = c == rt->coord;
    switch (hdr->body_case) {
    case NEBULA__FRAME__BODY_JOB:
    case NEBULA__FRAME__BODY_PLAN:
    case NEBULA__FRAME__BODY_COMMIT:
        if (!from_coord) {
            nb_log_warn(peer, "control frame from a peer that is not the coordinator; closing");
            nb_metrics_inc(nb_state_metrics(rt->state), rt->m_refused, 1);
            break;
        }
        if (hdr->body_case == NEBULA__FRAME__BODY_JOB)
            nb_service_set_state(rt->svc, NB_SVC_CONNECTING, "job %llu received from %s",
                                 (unsigned long long)hdr->job->job_id, peer);
        if (nb_mbox_try_push(rt->ctl, hdr) != 0) {
            job_fail(rt, "coordinator %s sent more control frames than this daemon can queue", peer);
            break;
        }
        free(payload);
        return; /* hdr now belongs to the compute thread */
    case NEBULA__FRAME__BODY_TENSOR: {
        const char *why = rt->have_job ? route_tensor(rt, c, hdr, payload, len) : "tensor before the job";
        if (why) {
            nb_metrics_inc(nb_state_metrics(rt->state), rt->m_refused, 1);
            free(payload);
            job_fail(rt, "peer %s: step %llu micro-batch %u: %s", peer, (unsigned long long)hdr->tensor->step,
                     hdr->tensor->micro_batch, why);
        }
        nebula__frame__free_unpacked(hdr, NULL);
        return; /* payload now belongs to the inbox (or was freed) */
    }
    case NEBULA__FRAME__BODY_SHUTDOWN:
        nb_log_info(peer, "shutdown: %s", hdr->shutdown->reason ? hdr->shutdown->reason : "");
        if (from_coord && !rt->have_job)
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
        nb_rt_peer_row(rt->state, peer, "coordinator", rt->cfg->coordinator.address.text, "down", NULL);
        if (rt->have_job && nb_state_get(rt->state) != NB_SVC_DONE)
            job_fail(rt, "lost the coordinator %s (%s)", peer, err ? nb_strerror(err) : "closed");
        return;
    }
    int d = daemon_of(rt, peer);
    if (d >= 0 && rt->peer_conn[d] == c) {
        rt->peer_conn[d] = NULL;
        rt->peer_ready[d] = false;
        nb_rt_peer_row(rt->state, peer, "stage", rt->job.addresses[d], "down", NULL);
        if (nb_state_get(rt->state) != NB_SVC_DONE)
            job_fail(rt, "lost pipeline neighbour %s (%s)", peer, err ? nb_strerror(err) : "closed");
    }
}

/* ---- service hooks --------------------------------------------------------- */

static int rt_start(nb_service_t *svc, void *ud)
{
    nb_stage_rt_t *rt = ud;
    nb_net_cfg_t nc;
    nb_rt_net_cfg(rt->cfg, NEBULA__ROLE__ROLE_STAGE, &nc);
    const nb_net_cb_t cb = { on_ready, on_frame, on_writable, on_closed };
    char bound[NB_CFG_ADDR_MAX + 16];
    int rc = nb_rt_open_net(rt->loop, rt->cfg, &nc, &cb, rt, rt->state, &rt->net, bound, sizeof bound);
    rt->net_open = rt->net != NULL;
    if (rc)
        return rc;
    if ((rc = nb_net_connect(rt->net, rt->cfg->coordinator.name, rt->cfg->coordinator.address.host,
                             rt->cfg->coordinator.address.port))) {
        nb_log_error(NULL, "cannot dial coordinator %s: %s", rt->cfg->coordinator.address.text, nb_strerror(rc));
        return rc;
    }
    uv_async_init(rt->loop, &rt->wake, wake_cb);
    rt->wake.data = rt;
    rt->wake_open = true;
    if (pthread_create(&rt->compute, NULL, compute_main, rt) != 0)
        return NB_ENOMEM;
    rt->compute_started = true;
    nb_rt_peer_row(rt->state, rt->cfg->coordinator.name, "coordinator", rt->cfg->coordinator.address.text,
                   "connecting", NULL);
    nb_service_set_state(svc, NB_SVC_WAITING, "listening on %s; dialling coordinator %s at %s", bound,
                         rt->cfg->coordinator.name, rt->cfg->coordinator.address.text);
    return 0;
}

static void rt_stop(nb_service_t *svc, void *ud)
{
    (void)svc;
    nb_stage_rt_t *rt = ud;
    rt->stopping = true;
    close_mailboxes(rt);
    if (rt->net_open) {
        nb_net_close(rt->net, NULL, NULL);
        rt->net_open = false;
    }
    if (rt->wake_open) {
        uv_close((uv_handle_t *)&rt->wake, NULL);
        rt->wake_open = false;
    }
    if (rt->probe_timer_open) {
        uv_close((uv_handle_t *)&rt->probe_timer, NULL);
        rt->probe_timer_open = false;
    }
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
    rt->svc = svc;
    rt->cfg = nb_service_config(svc);
    rt->state = nb_service_state(svc);
    rt->loop = nb_service_loop(svc);
    rt->outbox = nb_mbox_new(OUTBOX_CAP, free_out);
    rt->ctl = nb_mbox_new(CTL_CAP, free_frame);
    if (!rt->outbox || !rt->ctl) {
        nb_stage_rt_free(rt);
        return NB_ENOMEM;
    }
    nb_metrics_t *mx = nb_state_metrics(rt->state);
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
    free_out(rt->pending);
    nb_mbox_free(rt->outbox);
    nb_mbox_free(rt->ctl);
    for (int s = 0; s < NB_SCHED_MAX_STAGES; s++)
        for (int k = 0; k < NB_PMSG_KINDS; k++)
            nb_mbox_free(rt->inbox[s][k]);
    free(rt);
}
