/*
 * electra_disc_rt.c - the discriminator's daemon of an ELECTRA job: the
 * job's coordinator (admission, ElectraJob, credit) and the discriminator's
 * steps. See electra_rt.h and docs/electra.md, "Across daemons".
 *
 * Step s runs when every generator's batch of step s is here (batches of
 * one generator arrive in step order; each is checked by
 * nb_electra_rx_accept before it is stored). After step s every generator
 * gets credit s + 1 + NB_ELECTRA_WINDOW: it may send batches of steps below
 * that, so at most NB_ELECTRA_WINDOW batches of a generator wait here, and a
 * slow generator holds the others back by at most that many steps.
 *
 * A refused batch ends the job (its sender is named): a generator's stream
 * is deterministic, so asking again would bring the same batch. A generator
 * that goes away gets job.recovery_timeout_s to come back; when it does it
 * gets its ElectraJob again with the first step still needed, and resends
 * or recomputes from there (electra_gen_rt.c).
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
#include "daemon/pipeline/electra_msg.h"
#include "daemon/pipeline/electra_rt.h"
#include "daemon/pipeline/rt_common.h"
#include "daemon/service/device.h"
#include "daemon/train/weights.h"
#include "kernels/common.h"

#define W NB_ELECTRA_WINDOW

typedef struct {
    nb_conn_t *conn;
    bool ever;                     /* connected at least once */
    double gone_at;                /* monotonic seconds it went away (or the start) */
    nb_electra_batch_t slot[W];    /* batch of step s in slot s % W */
    float loss[W];                 /* its MLM loss of that step */
    size_t wire[W];                /* encoded bytes of that batch */
} gen_peer_t;

struct nb_electra_disc_rt {
    nb_rt_base_t b; /* service, configuration, state, loop, transport, failed, stopping */
    bool timer_open, busy, finished;
    uv_timer_t timer;
    uv_work_t work;
    nb_backend_t *be;
    nb_electra_config_t ec;
    nb_electra_disc_t *disc;
    nb_electra_rx_t rx;            /* what is accepted now (next steps, credit) */
    gen_peer_t g[NB_ELECTRA_MAX_GEN];
    uint64_t done;                 /* discriminator steps done */
    double t_start, t_first;       /* start; end of step 1 */
    double wire_total, tokens_total;
    uint64_t raw_total;
    uint64_t refused;
    float first_loss, last_loss;
    /* the step in flight (work thread writes, loop reads after it) */
    nb_electra_batch_t in[NB_ELECTRA_MAX_GEN];
    float w_loss, w_acc;
    int w_rc, w_skipped, w_save_rc;
    double w_seconds;
    char w_err[1024];
    int m_steps, m_loss, m_refused, m_received;
};

static void send_shutdown(nb_electra_disc_rt_t *rt, const char *why)
{
    for (int i = 0; i < rt->ec.n_gen; i++) {
        if (rt->g[i].conn)
            nb_rt_send_shutdown(rt->g[i].conn, why);
    }
}

static void job_fail(nb_electra_disc_rt_t *rt, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tell_generators(void *ud, const char *why)
{
    send_shutdown(ud, why);
}

static void job_fail(nb_electra_disc_rt_t *rt, const char *fmt, ...)
{
    if (rt->finished)
        return;
    va_list ap;
    va_start(ap, fmt);
    nb_rt_job_vfail(&rt->b, tell_generators, rt, fmt, ap);
    va_end(ap);
}

static void peer_row(nb_electra_disc_rt_t *rt, int i, const char *state)
{
    nb_rt_peer_row(rt->b.state, rt->ec.gen[i].name, "generator", "", state, rt->g[i].conn);
}

/* The generator's ElectraJob: from the first step the discriminator still
 * needs from it, with the credit of now. */
static void send_job(nb_electra_disc_rt_t *rt, int i)
{
    nb_electra_msg_store_t st;
    nb_electra_job_to_msg(&rt->ec, i, rt->rx.job_id, rt->rx.next[i], rt->rx.credit, &st);
    Nebula__Job j;
    nebula__job__init(&j);
    j.job_id = rt->rx.job_id;
    j.seq_len = (uint32_t)rt->ec.seq_len;
    j.steps = (uint64_t)rt->ec.steps;
    j.your_daemon = (uint32_t)i;
    j.recovery_timeout_s = (uint32_t)rt->b.cfg->job.recovery_timeout_s;
    j.electra = &st.job;
    Nebula__Frame f;
    nebula__frame__init(&f);
    f.body_case = NEBULA__FRAME__BODY_JOB;
    f.job = &j;
    int rc = nb_rt_send_ctl(rt->g[i].conn, &f);
    if (rc)
        nb_log_warn(rt->ec.gen[i].name, "cannot send its job: %s", nb_strerror(rc));
}

static void send_credit(nb_electra_disc_rt_t *rt)
{
    for (int i = 0; i < rt->ec.n_gen; i++) {
        if (!rt->g[i].conn)
            continue;
        Nebula__ElectraCredit c;
        nebula__electra_credit__init(&c);
        c.job_id = rt->rx.job_id;
        c.credit = rt->rx.credit;
        Nebula__Frame f;
        nebula__frame__init(&f);
        f.body_case = NEBULA__FRAME__BODY_ELECTRA_CREDIT;
        f.electra_credit = &c;
        nb_rt_send_ctl(rt->g[i].conn, &f); /* a closing connection: the generator gets its job again */
    }
}

/* ---- the discriminator step (work thread) --------------------------------- */

static void step_work(uv_work_t *req)
{
    nb_electra_disc_rt_t *rt = req->data;
    uint64_t s = rt->done;
    double t0 = nb_mono_s();
    rt->w_rc = nb_electra_disc_compute(rt->disc, s, rt->in, &rt->w_loss, &rt->w_acc, rt->w_err, sizeof rt->w_err);
    if (rt->w_rc == 0) {
        rt->w_skipped = nb_electra_disc_update(rt->disc, s, NULL);
        nb_be_sync(rt->be);
    }
    rt->w_save_rc = 0;
    if (rt->w_rc == 0 && s + 1 == (uint64_t)rt->ec.steps && rt->b.cfg->job.output[0])
        rt->w_save_rc = nb_weights_save(rt->b.cfg->job.output, nb_electra_disc_part(rt->disc), rt->w_err,
                                        sizeof rt->w_err);
    rt->w_seconds = nb_mono_s() - t0;
}

static void try_step(nb_electra_disc_rt_t *rt);

static void step_done(uv_work_t *req, int status)
{
    nb_electra_disc_rt_t *rt = req->data;
    rt->busy = false;
    if (rt->b.failed || rt->b.stopping)
        return;
    if (status || rt->w_rc) {
        job_fail(rt, "step %llu: %s", (unsigned long long)rt->done + 1, status ? "cancelled" : rt->w_err);
        return;
    }
    uint64_t s = rt->done;
    const nb_electra_config_t *ec = &rt->ec;
    long replaced = 0, tokens = 0;
    size_t wire = 0;
    for (int i = 0; i < ec->n_gen; i++) {
        size_t bt = (size_t)rt->in[i].n * (size_t)rt->in[i].T;
        for (size_t k = 0; k < bt; k++)
            replaced += rt->in[i].replaced[k];
        tokens += (long)bt;
        wire += rt->g[i].wire[s % W];
    }
    if (rt->w_skipped)
        nb_log_warn(NULL, "step %llu: the discriminator's update was skipped for a non-finite gradient norm",
                    (unsigned long long)s + 1);
    rt->wire_total += (double)wire;
    rt->tokens_total += (double)tokens;
    if (s == 0) {
        rt->first_loss = rt->w_loss;
        rt->t_first = nb_mono_s();
    }
    rt->last_loss = rt->w_loss;
    int every = rt->b.cfg->job.log_every > 0 ? (int)rt->b.cfg->job.log_every : 1;
    if ((s + 1) % (uint64_t)every == 0 || s == 0 || s + 1 == (uint64_t)ec->steps) {
        /* the line nebula-electra prints, so that the two can be compared */
        char line[1024];
        int o = snprintf(line, sizeof line, "step %5llu/%d ", (unsigned long long)s + 1, ec->steps);
        char lt[NB_ELECTRA_LOSS_TEXT];
        for (int i = 0; i < ec->n_gen && o < (int)sizeof line; i++)
            o += snprintf(line + o, sizeof line - (size_t)o, " gen %s loss %s", ec->gen[i].name,
                          nb_electra_loss_text(rt->g[i].loss[s % W], lt, sizeof lt));
        if (o < (int)sizeof line)
            snprintf(line + o, sizeof line - (size_t)o, "  disc loss %.4f acc %.3f  replaced %.1f%%  wire %.3f "
                     "B/token  tokens/s %.0f", rt->w_loss, rt->w_acc, 100.0 * (double)replaced / (double)tokens,
                     (double)wire / (double)tokens, (double)tokens / (rt->w_seconds > 0 ? rt->w_seconds : 1e-9));
        nb_log_info(NULL, "%s", line);
    }
    nb_job_info_t ji;
    memset(&ji, 0, sizeof ji);
    ji.active = true;
    ji.step = (int64_t)s + 1;
    ji.steps = ec->steps;
    ji.loss = rt->w_loss;
    ji.step_time_s = rt->w_seconds;
    ji.tokens_per_s = (double)tokens / (rt->w_seconds > 0 ? rt->w_seconds : 1e-9);
    ji.bubble_measured = ji.bubble_predicted = -1;
    rt->raw_total += (uint64_t)tokens * 5; /* an int32 ID and a byte flag, before the wire encoding */
    ji.bytes_raw = rt->raw_total;
    ji.bytes_wire = (uint64_t)rt->wire_total;
    snprintf(ji.codec_forward, sizeof ji.codec_forward, "%s", NB_ELECTRA_CODEC);
    snprintf(ji.codec_backward, sizeof ji.codec_backward, "none");
    ji.micro_batches = ec->n_gen;
    snprintf(ji.schedule, sizeof ji.schedule, "electra");
    snprintf(ji.layers, sizeof ji.layers, "discriminator");
    nb_state_job_update(rt->b.state, &ji);
    nb_metrics_t *mx = nb_state_metrics(rt->b.state);
    nb_metrics_inc(mx, rt->m_steps, 1);
    nb_metrics_set(mx, rt->m_loss, rt->w_loss);
    nb_service_status_line(rt->b.svc, "step %llu/%d disc loss %.4f", (unsigned long long)s + 1, ec->steps,
                           rt->w_loss);
    rt->done = s + 1;
    rt->rx.credit = rt->done + W;
    if (rt->done == (uint64_t)ec->steps) {
        if (rt->w_save_rc) {
            job_fail(rt, "cannot write job.output: %s", rt->w_err);
            return;
        }
        rt->finished = true;
        double now = nb_mono_s(), secs = now - rt->t_start, after = now - rt->t_first;
        /* steady: the steps after the first, which waits for the generators to connect and build */
        double steady = ec->steps > 1 && after > 0 ? rt->tokens_total * (ec->steps - 1) / ec->steps / after : 0;
        nb_log_info(NULL, "job done: %d steps in %.1f s: disc loss %.4f -> %.4f, %.0f discriminator tokens/s after "
                    "step 1; %.3f wire bytes per discriminator token%s%s", ec->steps, secs, rt->first_loss,
                    rt->last_loss, steady, rt->wire_total / rt->tokens_total,
                    rt->b.cfg->job.output[0] ? "; discriminator weights written to " : "", rt->b.cfg->job.output);
        nb_service_set_state(rt->b.svc, NB_SVC_DONE, "job done: %d steps, disc loss %.4f", ec->steps, rt->last_loss);
        send_shutdown(rt, "job done");
        return;
    }
    send_credit(rt);
    try_step(rt);
}

/* Runs the next step when every generator's batch for it is here. */
static void try_step(nb_electra_disc_rt_t *rt)
{
    if (rt->busy || rt->finished || rt->b.failed || rt->b.stopping)
        return;
    uint64_t s = rt->done;
    for (int i = 0; i < rt->ec.n_gen; i++)
        if (rt->rx.next[i] <= s)
            return;
    for (int i = 0; i < rt->ec.n_gen; i++)
        rt->in[i] = rt->g[i].slot[s % W];
    rt->busy = true;
    rt->work.data = rt;
    if (uv_queue_work(rt->b.loop, &rt->work, step_work, step_done) != 0) {
        rt->busy = false;
        job_fail(rt, "cannot queue the discriminator's step");
    }
}

/* ---- transport callbacks -------------------------------------------------- */

static int gen_index(const nb_electra_disc_rt_t *rt, const char *name)
{
    for (int i = 0; i < rt->ec.n_gen; i++)
        if (strcmp(rt->ec.gen[i].name, name) == 0)
            return i;
    return -1;
}

static void on_ready(nb_conn_t *c, void *ud)
{
    nb_electra_disc_rt_t *rt = ud;
    const char *peer = nb_conn_peer_name(c);
    int i = gen_index(rt, peer);
    if (i < 0 || rt->g[i].conn) {
        nb_log_warn(peer, "%s; closing", i < 0 ? "not a generator of this job" : "already connected");
        nb_conn_close(c);
        return;
    }
    rt->g[i].conn = c;
    if (rt->g[i].ever)
        nb_log_info(peer, "generator back; it resends from step %llu", (unsigned long long)rt->rx.next[i] + 1);
    rt->g[i].ever = true;
    peer_row(rt, i, "connected");
    if (rt->finished) {
        send_shutdown(rt, "job done");
        return;
    }
    send_job(rt, i);
    int n = 0;
    for (int k = 0; k < rt->ec.n_gen; k++)
        n += rt->g[k].conn != NULL;
    if (n == rt->ec.n_gen && !rt->b.failed)
        nb_service_set_state(rt->b.svc, NB_SVC_RUNNING, "%d generators connected; step %llu/%d", n,
                             (unsigned long long)rt->done + 1, rt->ec.steps);
}

static void on_frame(nb_conn_t *c, Nebula__Frame *f, uint8_t *payload, size_t len, void *ud)
{
    nb_electra_disc_rt_t *rt = ud;
    const char *peer = nb_conn_peer_name(c);
    int i = gen_index(rt, peer);
    if (f->body_case == NEBULA__FRAME__BODY_TENSOR && !rt->finished && !rt->b.failed) {
        char err[1024];
        uint64_t s = f->tensor->step;
        int slot = (int)(s % W);
        size_t cap = i >= 0 ? (size_t)rt->ec.gen[i].sequences * (size_t)rt->ec.seq_len : 0;
        nb_electra_batch_t tmp = { 0 };
        nb_electra_batch_t *dst = i >= 0 ? &rt->g[i].slot[slot] : &tmp;
        int g = nb_electra_rx_accept(&rt->rx, peer, f->tensor, payload, len, dst, cap, err, sizeof err);
        if (g < 0) {
            rt->refused++;
            nb_metrics_inc(nb_state_metrics(rt->b.state), rt->m_refused, 1);
            job_fail(rt, "%s", err);
        } else {
            rt->g[g].loss[slot] = (float)f->tensor->gen_loss;
            rt->g[g].wire[slot] = len;
            rt->rx.next[g] = s + 1;
            nb_metrics_inc(nb_state_metrics(rt->b.state), rt->m_received, 1);
            try_step(rt);
        }
    } else if (f->body_case == NEBULA__FRAME__BODY_JOB_STATUS &&
               f->job_status->state == NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED) {
        job_fail(rt, "generator '%s' failed: %s", peer, f->job_status->message ? f->job_status->message : "");
    } else if (f->body_case == NEBULA__FRAME__BODY_TENSOR) {
        /* the job is over: late batches are dropped */
    } else {
        nb_log_debug(peer, "ignoring a frame of type %d", (int)f->body_case);
    }
    nebula__frame__free_unpacked(f, NULL);
    free(payload);
}

static void on_writable(nb_conn_t *c, void *ud)
{
    (void)c;
    (void)ud;
}

static void on_closed(nb_conn_t *c, int err, void *ud)
{
    nb_electra_disc_rt_t *rt = ud;
    const char *peer = nb_conn_peer_name(c);
    int i = gen_index(rt, peer);
    if (i < 0 || rt->g[i].conn != c)
        return;
    rt->g[i].conn = NULL;
    rt->g[i].gone_at = nb_mono_s();
    peer_row(rt, i, "gone");
    if (!rt->finished && !rt->b.failed && !rt->b.stopping)
        nb_log_warn(peer, "generator gone (%s) at discriminator step %llu; waiting up to %.0f s "
                    "(job.recovery_timeout_s) for it to come back", err ? nb_strerror(err) : "closed",
                    (unsigned long long)rt->done + 1, rt->b.cfg->job.recovery_timeout_s);
}

/* Once a second: a generator away for too long ends the job. */
static void on_timer(uv_timer_t *t)
{
    nb_electra_disc_rt_t *rt = t->data;
    if (rt->b.failed || rt->b.stopping)
        return;
    double now = nb_mono_s();
    for (int i = 0; i < rt->ec.n_gen; i++) {
        if (rt->g[i].conn) {
            peer_row(rt, i, "connected"); /* bytes and round trip, for the status */
            continue;
        }
        double limit = rt->g[i].ever ? rt->b.cfg->job.recovery_timeout_s : rt->b.cfg->connect_timeout_s;
        if (!rt->finished && limit > 0 && now - rt->g[i].gone_at > limit) {
            job_fail(rt, rt->g[i].ever ? "generator '%s' did not come back within %.0f s (job.recovery_timeout_s)"
                                       : "generator '%s' did not connect within %.0f s (connect_timeout_s)",
                     rt->ec.gen[i].name, limit);
            return;
        }
    }
}

/* ---- service hooks -------------------------------------------------------- */

static int rt_start(nb_service_t *svc, void *ud)
{
    nb_electra_disc_rt_t *rt = ud;
    char err[2048];
    if (nb_electra_cfg_convert(rt->b.cfg, (int)rt->b.cfg->job.steps, &rt->ec, err, sizeof err)) {
        nb_service_start_error(svc, "%s", err);
        return NB_EINVAL;
    }
    if (rt->ec.tie_embeddings) {
        nb_service_start_error(svc, "%s: job.electra.tie_embeddings: one process only; the daemons of an electra "
                               "job keep their embeddings untied (docs/electra.md)", rt->b.cfg->path);
        return NB_EINVAL;
    }
    if (rt->ec.disc_weight == 0.0f)
        rt->ec.disc_weight = NB_ELECTRA_DISC_WEIGHT_DEFAULT;
    char why[256];
    rt->be = nb_device_open(rt->b.cfg->n_devices > 0 ? &rt->b.cfg->devices[0] : NULL, why, sizeof why);
    if (!rt->be) {
        nb_service_start_error(svc, "%s", why);
        return NB_EINVAL;
    }
    const nb_electra_config_t *ec = &rt->ec;
    int seqs[NB_ELECTRA_MAX_GEN];
    const char *names[NB_ELECTRA_MAX_GEN];
    for (int i = 0; i < ec->n_gen; i++) {
        seqs[i] = ec->gen[i].sequences;
        names[i] = ec->gen[i].name;
    }
    int rc = nb_electra_disc_new(rt->be, &ec->model, &ec->optim, ec->seed, ec->seq_len, ec->disc_weight, ec->n_gen,
                                 seqs, names, &rt->disc, err, sizeof err);
    if (rc) {
        nb_service_start_error(svc, "%s: %s", rt->b.cfg->path, err);
        return rc;
    }
    rt->rx.job_id = ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid() ^ 1;
    rt->rx.n_gen = ec->n_gen;
    rt->rx.seq_len = ec->seq_len;
    rt->rx.vocab = ec->model.vocab;
    rt->rx.credit = W;
    for (int i = 0; i < ec->n_gen; i++) {
        rt->rx.names[i] = ec->gen[i].name;
        rt->rx.seqs[i] = seqs[i];
        size_t bt = (size_t)seqs[i] * (size_t)ec->seq_len;
        for (int k = 0; k < W; k++) {
            rt->g[i].slot[k].ids = malloc(bt * sizeof(int32_t));
            rt->g[i].slot[k].replaced = malloc(bt);
            if (!rt->g[i].slot[k].ids || !rt->g[i].slot[k].replaced)
                return NB_ENOMEM;
        }
    }
    nb_net_cfg_t nc;
    nb_rt_net_cfg(rt->b.cfg, NEBULA__ROLE__ROLE_COORDINATOR, &nc);
    nc.allowed_peers = names;
    nc.n_allowed_peers = (size_t)ec->n_gen;
    const nb_net_cb_t cb = { on_ready, on_frame, on_writable, on_closed };
    char bound[NB_CFG_ADDR_MAX + 16];
    char bwhy[NB_CFG_ADDR_MAX + 128];
    rc = nb_rt_open_net(rt->b.loop, rt->b.cfg, &nc, &cb, rt, rt->b.state, &rt->b.net, bound, sizeof bound, bwhy,
                        sizeof bwhy);
    rt->b.net_open = rt->b.net != NULL;
    if (rc) {
        nb_service_start_error(svc, "%s", bwhy);
        return rc;
    }
    nb_net_set_job(rt->b.net, rt->rx.job_id);
    rt->t_start = nb_mono_s();
    for (int i = 0; i < ec->n_gen; i++) {
        rt->g[i].gone_at = rt->t_start;
        peer_row(rt, i, "waiting");
    }
    uv_timer_init(rt->b.loop, &rt->timer);
    rt->timer.data = rt;
    rt->timer_open = true;
    uv_timer_start(&rt->timer, on_timer, 1000, 1000);
    nb_log_info(NULL, "electra discriminator: %d layers, d_model %d, %zu parameters; %d generators, %d x %d tokens "
                "per step, %d steps, disc_weight %g, untied embeddings, window %d steps, backend %s",
                ec->model.n_layer, ec->model.d_model, nb_part_num_params(nb_electra_disc_part(rt->disc)), ec->n_gen,
                (int)rt->b.cfg->job.batch, ec->seq_len, ec->steps, (double)ec->disc_weight, W, rt->be->iface->name);
    nb_service_set_state(svc, NB_SVC_WAITING, "listening on %s; waiting for %d generator daemons", bound, ec->n_gen);
    return 0;
}

static void rt_stop(nb_service_t *svc, void *ud)
{
    (void)svc;
    nb_electra_disc_rt_t *rt = ud;
    if (!rt->b.failed && !rt->finished)
        send_shutdown(rt, "the discriminator's daemon is stopping");
    rt->b.stopping = true;
    nb_rt_close_handle(&rt->timer, &rt->timer_open);
    nb_rt_close_net(&rt->b);
}

static const nb_runtime_i disc_runtime = {
    .start = rt_start,
    .stop = rt_stop,
    .binds_listener = true,
};

int nb_electra_disc_rt_attach(nb_service_t *svc, nb_electra_disc_rt_t **out)
{
    nb_electra_disc_rt_t *rt = calloc(1, sizeof *rt);
    if (!rt)
        return NB_ENOMEM;
    nb_rt_base_init(&rt->b, svc);
    nb_metrics_t *mx = nb_state_metrics(rt->b.state);
    rt->m_steps = nb_metrics_add(mx, "nebula_job_steps_total", NULL, NB_METRIC_COUNTER, "Discriminator steps done");
    rt->m_loss = nb_metrics_add(mx, "nebula_job_loss", NULL, NB_METRIC_GAUGE, "Discriminator loss of the last step");
    rt->m_refused = nb_metrics_add(mx, "nebula_electra_batches_refused_total", NULL, NB_METRIC_COUNTER,
                                   "Generator batches refused (the job then fails)");
    rt->m_received = nb_metrics_add(mx, "nebula_electra_batches_received_total", NULL, NB_METRIC_COUNTER,
                                    "Generator batches received and accepted");
    nb_service_set_runtime(svc, &disc_runtime, rt);
    *out = rt;
    return 0;
}

void nb_electra_disc_rt_free(nb_electra_disc_rt_t *rt)
{
    if (!rt)
        return;
    for (int i = 0; i < NB_ELECTRA_MAX_GEN; i++)
        for (int k = 0; k < W; k++) {
            free(rt->g[i].slot[k].ids);
            free(rt->g[i].slot[k].replaced);
        }
    nb_electra_disc_free(rt->disc);
    if (rt->be)
        nb_be_free(rt->be);
    free(rt);
}
