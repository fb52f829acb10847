/*
 * electra_gen_rt.c - a generator daemon of an ELECTRA job: dials the
 * discriminator's daemon (its coordinator), builds the generator that the
 * ElectraJob names on this daemon's own token file, and sends one batch per
 * discriminator step within its credit. See electra_rt.h and
 * docs/electra.md, "Across daemons".
 *
 * The generator depends on nothing but its seed and its text, so any state
 * it had can be recomputed: the last NB_ELECTRA_WINDOW encoded batches are
 * kept for re-sending, and an ElectraJob that asks for a step this daemon
 * no longer holds (it restarted, or the discriminator's daemon did) makes
 * it rebuild the generator from its seed and replay the steps before that
 * one without sending them; the replayed generator is bit for bit the one
 * that ran before.
 */
#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/clock.h"
#include "daemon/log.h"
#include "daemon/pipeline/electra_msg.h"
#include "daemon/pipeline/electra_rt.h"
#include "daemon/pipeline/rt_common.h"
#include "daemon/service/device.h"
#include "kernels/common.h"

#define W NB_ELECTRA_WINDOW

typedef struct {
    bool valid;
    uint64_t step;
    uint8_t *buf;
    size_t len;
    float loss;
} kept_t;

typedef enum { WORK_BUILD, WORK_STEP } work_kind_t;

struct nb_electra_gen_rt {
    nb_rt_base_t b; /* service, configuration, state, loop, transport, failed, stopping */
    nb_conn_t *coord;
    uv_timer_t timer;
    double since;                  /* monotonic seconds: start, or when the coordinator went away */
    uint32_t recovery_timeout_s;   /* from the Job: how long the coordinator may be away */
    bool timer_open;
    bool busy, done, have_job, pending_job;
    uv_work_t work;
    work_kind_t kind;
    nb_backend_t *be;
    nb_electra_gen_t *gen;         /* NULL until built */
    nb_electra_gen_config_t gc;
    nb_electra_job_info_t info;
    nb_electra_gen_config_t p_gc;  /* a job that came while a step ran */
    nb_electra_job_info_t p_info;
    uint64_t gstep;                /* steps computed and applied */
    uint64_t next_send;            /* the step to send next */
    uint64_t credit;
    size_t wire_cap;
    kept_t kept[W];                /* batch of step s in kept[s % W] */
    /* work results */
    int w_rc;
    char w_err[2048];
    long w_len;
    float w_loss;
    int m_steps, m_loss;
};

static void fail(nb_electra_gen_rt_t *rt, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tell_discriminator(void *ud, const char *why)
{
    nb_electra_gen_rt_t *rt = ud;
    if (rt->coord)
        nb_rt_send_job_failed(rt->coord, rt->info.job_id, (uint32_t)rt->info.index, why);
}

static void fail(nb_electra_gen_rt_t *rt, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    nb_rt_job_vfail(&rt->b, tell_discriminator, rt, fmt, ap);
    va_end(ap);
}

static void free_payload(void *p, void *ud)
{
    (void)ud;
    free(p);
}

static void pump(nb_electra_gen_rt_t *rt);

/* Sends kept batches from next_send on, within the credit. */
static void send_kept(nb_electra_gen_rt_t *rt)
{
    while (rt->coord && rt->next_send < rt->gstep && rt->next_send < rt->credit) {
        kept_t *k = &rt->kept[rt->next_send % W];
        NB_CHECK(k->valid && k->step == rt->next_send);
        uint8_t *copy = malloc(k->len); /* the transport owns what it sends; kept[] is rewritten */
        if (!copy) {
            fail(rt, "out of memory for a batch");
            return;
        }
        memcpy(copy, k->buf, k->len);
        Nebula__Tensor t;
        nebula__tensor__init(&t);
        uint64_t shape = k->len;
        t.job_id = rt->info.job_id;
        t.step = k->step;
        t.kind = NEBULA__TENSOR_KIND__KIND_TOKEN_IDS;
        t.dtype = NEBULA__DTYPE__DTYPE_U8;
        t.n_shape = 1;
        t.shape = &shape;
        t.codec = (char *)NB_ELECTRA_CODEC;
        t.decoded_bytes = k->len;
        t.from_stage = (uint32_t)rt->info.index;
        t.gen_loss = k->loss;
        Nebula__Frame f;
        nebula__frame__init(&f);
        f.body_case = NEBULA__FRAME__BODY_TENSOR;
        f.tensor = &t;
        int rc = nb_conn_send(rt->coord, &f, copy, k->len, free_payload, NULL);
        if (rc) {
            free(copy);
            if (rc != NB_ELIMIT && rc != NB_ESTATE)
                fail(rt, "cannot send the batch of step %llu: %s", (unsigned long long)k->step + 1, nb_strerror(rc));
            return; /* NB_ELIMIT: on_writable resumes; NB_ESTATE: the job comes again on reconnection */
        }
        rt->next_send++;
    }
}

/* ---- the generator (work thread) ------------------------------------------- */

static void work_cb(uv_work_t *req)
{
    nb_electra_gen_rt_t *rt = req->data;
    rt->w_rc = 0;
    if (rt->kind == WORK_BUILD) {
        nb_electra_gen_free(rt->gen);
        rt->gen = NULL;
        rt->w_rc = nb_electra_gen_new(rt->be, &rt->gc, rt->info.index, rt->info.seq_len, rt->info.mask_prob, &rt->gen,
                                      rt->w_err, sizeof rt->w_err);
        if (rt->w_rc == 0 && nb_electra_gen_vocab(rt->gen) > rt->info.disc_vocab) {
            snprintf(rt->w_err, sizeof rt->w_err, "generator '%s': %.900s has vocabulary %u, more than the "
                     "discriminator's vocab %u", rt->gc.name, rt->gc.data, nb_electra_gen_vocab(rt->gen),
                     rt->info.disc_vocab);
            rt->w_rc = NB_EINVAL;
        }
        if (rt->w_rc == 0) {
            rt->wire_cap = nb_electra_wire_size(rt->gc.sequences, rt->info.seq_len, nb_electra_gen_vocab(rt->gen));
            for (int k = 0; k < W && !rt->w_rc; k++) {
                free(rt->kept[k].buf);
                rt->kept[k] = (kept_t){ .buf = malloc(rt->wire_cap) };
                if (!rt->kept[k].buf)
                    rt->w_rc = NB_ENOMEM;
            }
        }
        return;
    }
    uint64_t s = rt->gstep;
    nb_electra_batch_t b;
    rt->w_rc = nb_electra_gen_compute(rt->gen, s, &b, &rt->w_loss, rt->w_err, sizeof rt->w_err);
    if (rt->w_rc)
        return;
    kept_t *k = &rt->kept[s % W];
    rt->w_len = nb_electra_wire_encode(&b, nb_electra_gen_vocab(rt->gen), k->buf, rt->wire_cap);
    NB_CHECK(rt->w_len > 0);
    if (nb_electra_gen_update(rt->gen, s, NULL))
        nb_log_warn(NULL, "step %llu: the generator's update was skipped for a non-finite gradient norm",
                    (unsigned long long)s + 1);
    nb_be_sync(rt->be);
}

static void apply_job(nb_electra_gen_rt_t *rt, const nb_electra_gen_config_t *gc, const nb_electra_job_info_t *in);

static void work_done(uv_work_t *req, int status)
{
    nb_electra_gen_rt_t *rt = req->data;
    rt->busy = false;
    if (rt->b.failed || rt->b.stopping)
        return;
    if (status || rt->w_rc) {
        fail(rt, "%s", status ? "the generator's work was cancelled" : rt->w_err);
        return;
    }
    if (rt->kind == WORK_BUILD) {
        nb_log_info(NULL, "generator '%s' (index %d): %d layers, d_model %d, %zu parameters, %d sequences of %d tokens "
                    "per step, data %s (vocabulary %u)%s", rt->gc.name, rt->info.index, rt->gc.model.n_layer,
                    rt->gc.model.d_model, nb_part_num_params(nb_electra_gen_part(rt->gen)), rt->gc.sequences,
                    rt->info.seq_len, rt->gc.data, nb_electra_gen_vocab(rt->gen),
                    rt->next_send > 0 ? "; replaying the steps the discriminator has" : "");
        nb_service_set_state(rt->b.svc, NB_SVC_RUNNING, "generator '%s': step %llu/%d", rt->gc.name,
                             (unsigned long long)rt->next_send + 1, rt->info.steps);
    } else {
        kept_t *k = &rt->kept[rt->gstep % W];
        k->valid = true;
        k->step = rt->gstep;
        k->len = (size_t)rt->w_len;
        k->loss = rt->w_loss;
        rt->gstep++;
        nb_metrics_t *mx = nb_state_metrics(rt->b.state);
        nb_metrics_inc(mx, rt->m_steps, 1);
        nb_metrics_set(mx, rt->m_loss, rt->w_loss);
        nb_log_debug(NULL, "step %llu/%d gen %s loss %.4f", (unsigned long long)rt->gstep, rt->info.steps,
                     rt->gc.name, rt->w_loss);
        nb_service_status_line(rt->b.svc, "generator '%s': step %llu/%d loss %.4f", rt->gc.name,
                               (unsigned long long)rt->gstep, rt->info.steps, rt->w_loss);
    }
    if (rt->pending_job) {
        rt->pending_job = false;
        apply_job(rt, &rt->p_gc, &rt->p_info);
        return;
    }
    pump(rt);
}

/* Sends what it may, then computes the next step when allowed: steps before
 * next_send are replays (not sent), the others need credit. */
static void pump(nb_electra_gen_rt_t *rt)
{
    if (rt->b.failed || rt->b.stopping || rt->busy || !rt->have_job)
        return;
    send_kept(rt);
    if (rt->b.failed || !rt->gen)
        return;
    uint64_t s = rt->gstep;
    if (s >= (uint64_t)rt->info.steps || (s >= rt->next_send && s >= rt->credit))
        return;
    /* keep every batch not yet sent: kept[s % W] may be rewritten only once step s - W is out */
    if (s >= rt->next_send + W)
        return;
    rt->kind = WORK_STEP;
    rt->busy = true;
    rt->work.data = rt;
    if (uv_queue_work(rt->b.loop, &rt->work, work_cb, work_done) != 0) {
        rt->busy = false;
        fail(rt, "cannot queue the generator's step");
    }
}

/* A (new or repeated) ElectraJob: keep what still serves it, else rebuild. */
static void apply_job(nb_electra_gen_rt_t *rt, const nb_electra_gen_config_t *gc, const nb_electra_job_info_t *in)
{
    if (rt->b.stopping)
        return;
    if (rt->busy) {
        rt->p_gc = *gc;
        rt->p_info = *in;
        rt->pending_job = true;
        return;
    }
    bool same = rt->gen && nb_electra_job_same(gc, in, &rt->gc, &rt->info);
    bool held = true; /* every batch from resume_step up to gstep is kept */
    for (uint64_t s = in->resume_step; same && held && s < rt->gstep; s++)
        held = rt->kept[s % W].valid && rt->kept[s % W].step == s;
    bool rebuild = !same || !held;
    uint64_t credit = rt->have_job ? nb_electra_credit_after_job(rt->info.job_id, rt->credit, in) : in->credit;
    rt->gc = *gc;
    rt->info = *in;
    rt->credit = credit;
    rt->next_send = in->resume_step;
    rt->have_job = true;
    if (rebuild) {
        if (rt->gen)
            nb_log_info(NULL, "the discriminator needs step %llu, which this generator no longer holds: rebuilding it "
                        "from its seed and replaying", (unsigned long long)in->resume_step + 1);
        rt->gstep = 0;
        rt->kind = WORK_BUILD;
        rt->busy = true;
        rt->work.data = rt;
        if (uv_queue_work(rt->b.loop, &rt->work, work_cb, work_done) != 0) {
            rt->busy = false;
            fail(rt, "cannot queue the generator's build");
        }
        return;
    }
    pump(rt);
}

/* ---- transport callbacks -------------------------------------------------- */

static bool is_coord(const nb_electra_gen_rt_t *rt, const nb_conn_t *c)
{
    return strcmp(nb_conn_peer_name(c), rt->b.cfg->coordinator.name) == 0;
}

static void on_ready(nb_conn_t *c, void *ud)
{
    nb_electra_gen_rt_t *rt = ud;
    if (!is_coord(rt, c)) {
        nb_conn_close(c);
        return;
    }
    rt->coord = c;
    nb_rt_peer_row(rt->b.state, rt->b.cfg->coordinator.name, "coordinator", rt->b.cfg->coordinator.address.text,
                   "connected", c);
    if (!rt->done && !rt->b.failed)
        nb_service_set_state(rt->b.svc, NB_SVC_CONNECTING, "connected to %s; waiting for the job",
                             rt->b.cfg->coordinator.name);
}

static void on_frame(nb_conn_t *c, Nebula__Frame *f, uint8_t *payload, size_t len, void *ud)
{
    (void)len;
    nb_electra_gen_rt_t *rt = ud;
    const char *peer = nb_conn_peer_name(c);
    if (!is_coord(rt, c) || rt->b.failed || rt->done || rt->b.stopping) {
        /* nothing but the coordinator's frames, and only while the job runs */
    } else if (f->body_case == NEBULA__FRAME__BODY_JOB) {
        char err[1024];
        nb_electra_gen_config_t gc;
        nb_electra_job_info_t info;
        if (!f->job->electra)
            fail(rt, "%s sent a pipeline job; this daemon is an ELECTRA generator (electra_generator: true)", peer);
        else if (nb_electra_job_from_msg(f->job->electra, rt->b.cfg->name, rt->b.cfg->data, &gc, &info, err, sizeof err))
            fail(rt, "%s", err);
        else {
            rt->recovery_timeout_s = f->job->recovery_timeout_s;
            apply_job(rt, &gc, &info);
        }
    } else if (f->body_case == NEBULA__FRAME__BODY_ELECTRA_CREDIT) {
        /* a job parked while a step runs must not take back credit granted after it */
        if (rt->pending_job && f->electra_credit->job_id == rt->p_info.job_id &&
            f->electra_credit->credit > rt->p_info.credit)
            rt->p_info.credit = f->electra_credit->credit;
        if (f->electra_credit->job_id == rt->info.job_id && f->electra_credit->credit > rt->credit) {
            rt->credit = f->electra_credit->credit;
            pump(rt);
        }
    } else if (f->body_case == NEBULA__FRAME__BODY_SHUTDOWN) {
        const char *why = f->shutdown->reason ? f->shutdown->reason : "";
        if (strcmp(why, "job done") == 0) {
            rt->done = true;
            nb_log_info(NULL, "job done: generator '%s' sent %llu batches", rt->gc.name,
                        (unsigned long long)rt->next_send);
            nb_service_set_state(rt->b.svc, NB_SVC_DONE, "job done: generator '%s', %d steps", rt->gc.name,
                                 rt->info.steps);
        } else {
            fail(rt, "the discriminator's daemon ended the job: %s", why);
        }
    } else {
        nb_log_debug(peer, "ignoring a frame of type %d", (int)f->body_case);
    }
    nebula__frame__free_unpacked(f, NULL);
    free(payload);
}

static void on_writable(nb_conn_t *c, void *ud)
{
    (void)c;
    pump(ud);
}

static void on_closed(nb_conn_t *c, int err, void *ud)
{
    nb_electra_gen_rt_t *rt = ud;
    if (c != rt->coord)
        return;
    rt->coord = NULL;
    rt->since = nb_mono_s();
    nb_rt_peer_row(rt->b.state, rt->b.cfg->coordinator.name, "coordinator", rt->b.cfg->coordinator.address.text, "gone",
                   NULL);
    if (!rt->done && !rt->b.failed)
        nb_log_warn(NULL, "lost the discriminator's daemon %s (%s); redialling, the job goes on when it is back",
                    rt->b.cfg->coordinator.name, err ? nb_strerror(err) : "closed");
}

/* Once a second: no job within connect_timeout_s, or the coordinator away
 * for longer than the job's recovery timeout, ends this daemon's part. */
static void on_timer(uv_timer_t *t)
{
    nb_electra_gen_rt_t *rt = t->data;
    if (rt->b.failed || rt->done || rt->b.stopping || rt->coord)
        return;
    double away = nb_mono_s() - rt->since, limit = rt->have_job ? rt->recovery_timeout_s : rt->b.cfg->connect_timeout_s;
    if (limit > 0 && away > limit)
        fail(rt, rt->have_job ? "the discriminator's daemon %s did not come back within %.0f s (job.recovery_timeout_s)"
                              : "no job from the discriminator's daemon %s within %.0f s (connect_timeout_s)",
             rt->b.cfg->coordinator.name, limit);
}

/* ---- service hooks -------------------------------------------------------- */

static int rt_start(nb_service_t *svc, void *ud)
{
    nb_electra_gen_rt_t *rt = ud;
    char why[256];
    rt->be = nb_device_open(rt->b.cfg->n_devices > 0 ? &rt->b.cfg->devices[0] : NULL, why, sizeof why);
    if (!rt->be) {
        nb_service_start_error(svc, "%s", why);
        return NB_EINVAL;
    }
    nb_net_cfg_t nc;
    nb_rt_net_cfg(rt->b.cfg, NEBULA__ROLE__ROLE_STAGE, &nc);
    const nb_net_cb_t cb = { on_ready, on_frame, on_writable, on_closed };
    char bound[NB_CFG_ADDR_MAX + 16];
    char bwhy[NB_CFG_ADDR_MAX + 128];
    int rc = nb_rt_open_net(rt->b.loop, rt->b.cfg, &nc, &cb, rt, rt->b.state, &rt->b.net, bound, sizeof bound, bwhy,
                            sizeof bwhy);
    rt->b.net_open = rt->b.net != NULL;
    if (rc) {
        nb_service_start_error(svc, "%s", bwhy);
        return rc;
    }
    const nb_cfg_coord_t *co = &rt->b.cfg->coordinator;
    if ((rc = nb_net_connect(rt->b.net, co->name, co->address.host, co->address.port))) {
        nb_service_start_error(svc, "coordinator.address %s: %s", co->address.text, nb_strerror(rc));
        return rc;
    }
    nb_rt_peer_row(rt->b.state, co->name, "coordinator", co->address.text, "dialling", NULL);
    rt->since = nb_mono_s();
    uv_timer_init(rt->b.loop, &rt->timer);
    rt->timer.data = rt;
    rt->timer_open = true;
    uv_timer_start(&rt->timer, on_timer, 1000, 1000);
    nb_service_set_state(svc, NB_SVC_WAITING, "ELECTRA generator on %s; dialling the discriminator's daemon %s at %s",
                         rt->b.cfg->data, co->name, co->address.text);
    return 0;
}

static void rt_stop(nb_service_t *svc, void *ud)
{
    (void)svc;
    nb_electra_gen_rt_t *rt = ud;
    rt->b.stopping = true; /* a step or build in flight ends in work_done, which then queues nothing */
    nb_rt_close_handle(&rt->timer, &rt->timer_open);
    nb_rt_close_net(&rt->b);
}

static const nb_runtime_i gen_runtime = {
    .start = rt_start,
    .stop = rt_stop,
    .binds_listener = true,
};

int nb_electra_gen_rt_attach(nb_service_t *svc, nb_electra_gen_rt_t **out)
{
    nb_electra_gen_rt_t *rt = calloc(1, sizeof *rt);
    if (!rt)
        return NB_ENOMEM;
    nb_rt_base_init(&rt->b, svc);
    nb_metrics_t *mx = nb_state_metrics(rt->b.state);
    rt->m_steps = nb_metrics_add(mx, "nebula_electra_generator_steps_total", NULL, NB_METRIC_COUNTER,
                                 "Generator steps computed (replays included)");
    rt->m_loss = nb_metrics_add(mx, "nebula_electra_generator_loss", NULL, NB_METRIC_GAUGE,
                                "The generator's MLM loss of its last step");
    nb_service_set_runtime(svc, &gen_runtime, rt);
    *out = rt;
    return 0;
}

void nb_electra_gen_rt_free(nb_electra_gen_rt_t *rt)
{
    if (!rt)
        return;
    for (int k = 0; k < W; k++)
        free(rt->kept[k].buf);
    nb_electra_gen_free(rt->gen);
    if (rt->be)
        nb_be_free(rt->be);
    free(rt);
}
