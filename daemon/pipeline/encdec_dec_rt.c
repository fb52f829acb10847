/*
 * encdec_dec_rt.c - the decoder's daemon of an encoder-decoder job across
 * two daemons: the job's coordinator (admission, Job, Commit) and the
 * decoder's half of every step. See encdec_rt.h and docs/finetune.md,
 * "Across two daemons".
 *
 * The steps run in lock-step: per micro-batch one encoder output comes in
 * and one gradient goes out; after the last one the encoder's Report brings
 * its sum of squares, and the Commit goes back. After the last Commit the
 * encoder's daemon confirms (JobStatus DONE) that it applied it and wrote
 * its weights; only then is the job done here. Anything else (a tensor out
 * of turn, of the wrong shape or codec, a second connection of the encoder)
 * ends the job with the sender named: the stream is deterministic, so
 * asking again would bring the same tensor. There is no recovery yet: the
 * encoder's daemon going away ends the job.
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
#include "daemon/pipeline/encdec_msg.h"
#include "daemon/pipeline/encdec_rt.h"
#include "daemon/pipeline/rt_common.h"
#include "daemon/service/device.h"
#include "daemon/train/weights.h"
#include "kernels/common.h"

typedef enum { WORK_MICRO, WORK_COMMIT } work_kind_t;

struct nb_encdec_dec_rt {
    nb_rt_base_t b; /* service, configuration, state, loop, transport, failed, stopping */
    bool timer_open, busy, finished, ever;
    uv_timer_t timer;
    uv_work_t work;
    nb_backend_t *be;
    const char *texts[NB_CFG_MAX_TEXTS];
    nb_encdec_config_t ec;
    nb_encdec_t *t;
    nb_conn_t *enc;                /* the encoder's daemon */
    const char *enc_name;
    char digest[NB_ENCDEC_DIGEST_LEN]; /* of the settings, texts and tokenizer */
    nb_codec_spec_t fwd, bwd;      /* job.codecs, parsed */
    char fwd_text[NB_ENCDEC_CODEC_TEXT], bwd_text[NB_ENCDEC_CODEC_TEXT]; /* and canonical */
    uint64_t job_id;
    int rows, cols;                /* B*S, C */
    int step, micro;               /* the step in flight and the micro-batch expected next */
    float loss;                    /* of the step in flight */
    double t_start, t_step;
    uint64_t wire_fwd, wire_bwd, raw;
    nb_encdec_wait_t wait;         /* what the encoder's daemon owes, until when (the step deadline) */
    float first_loss, last_loss;
    /* the work item (its inputs set on the loop thread before it is queued) */
    work_kind_t kind;
    Nebula__Tensor *in;            /* received tensor and its payload */
    uint8_t *in_payload;
    size_t in_len;
    double enc_ss;                 /* the encoder's sum of squares */
    double w_ss;                   /* the global one */
    nb_codec_msg_t out;            /* the gradient to send */
    float w_loss;
    nb_train_step_t w_st;
    int w_rc;
    char w_err[1024];
    int m_steps, m_loss, m_refused;
};

static void job_fail(nb_encdec_dec_rt_t *rt, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tell_encoder(void *ud, const char *why)
{
    nb_encdec_dec_rt_t *rt = ud;
    if (rt->enc)
        nb_rt_send_shutdown(rt->enc, why);
}

static void job_fail(nb_encdec_dec_rt_t *rt, const char *fmt, ...)
{
    if (rt->finished || rt->b.failed)
        return;
    va_list ap;
    va_start(ap, fmt);
    nb_rt_job_vfail(&rt->b, tell_encoder, rt, fmt, ap);
    va_end(ap);
}

/* The encoder's daemon owes the next frame: fmt says which. */
static void await_encoder(nb_encdec_dec_rt_t *rt, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void await_encoder(nb_encdec_dec_rt_t *rt, const char *fmt, ...)
{
    char what[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    nb_encdec_wait_set(&rt->wait, nb_encdec_step_deadline_s(rt->b.cfg), NB_ENCDEC_STEP_KEY, "%s", what);
}

static void drop_input(nb_encdec_dec_rt_t *rt)
{
    if (rt->in)
        nebula__tensor__free_unpacked(rt->in, NULL);
    free(rt->in_payload);
    rt->in = NULL;
    rt->in_payload = NULL;
}

/* ---- the decoder's half (work thread) ------------------------------------- */

static void work_cb(uv_work_t *req)
{
    nb_encdec_dec_rt_t *rt = req->data;
    char *e = rt->w_err;
    size_t el = sizeof rt->w_err;
    rt->w_rc = 0;
    if (rt->kind == WORK_COMMIT) {
        rt->w_ss = nb_encdec_sumsq(rt->t, rt->enc_ss); /* the encoder's first, as nb_encdec_step */
        rt->w_rc = nb_encdec_commit(rt->t, rt->w_ss, rt->loss, &rt->w_st, e, el);
        if ((rt->w_rc == 0 || rt->w_rc == NB_ELIMIT) && rt->w_st.step + 1 == rt->ec.steps && rt->b.cfg->job.output[0] &&
            nb_weights_save(rt->b.cfg->job.output, nb_encdec_decoder(rt->t), e, el))
            rt->w_rc = NB_EIO;
        nb_be_sync(rt->be);
        return;
    }
    const Nebula__Tensor *t = rt->in;
    if (rt->micro == 0 && (rt->w_rc = nb_encdec_begin(rt->t, e, el)))
        return;
    int64_t shape[2] = { rt->rows, rt->cols };
    nb_tensor_t dst = nb_tensor_view(rt->be, NB_F32, nb_encdec_cut_buf(rt->t), 2, shape);
    rt->w_rc = nb_codec_decode_into(rt->be, t->codec, t->codec_meta.data, t->codec_meta.len, rt->in_payload,
                                    rt->in_len, 0, NULL, &dst, e, el);
    if (rt->w_rc) {
        char why[512];
        snprintf(why, sizeof why, "%.500s", e);
        snprintf(e, el, "refused the encoder output from %s: %s", rt->enc_name, why);
        return;
    }
    const float *denc;
    if ((rt->w_rc = nb_encdec_dec_micro(rt->t, rt->micro, nb_encdec_cut_buf(rt->t), &denc, &rt->w_loss, e, el)))
        return;
    nb_tensor_t g = nb_tensor_view(rt->be, NB_F32, (void *)denc, 2, shape);
    rt->w_rc = nb_codec_encode(rt->be, &rt->bwd, &g, (uint64_t)rt->step * 65536u + (uint64_t)rt->micro, NULL, 0,
                               &rt->out, e, el);
    nb_be_sync(rt->be);
}

/* The encoder's daemon confirmed the last commit (enc_said: its DONE's
 * message): the job is done on both. */
static void finish(nb_encdec_dec_rt_t *rt, const char *enc_said)
{
    rt->finished = true;
    double secs = nb_mono_s() - rt->t_start;
    nb_log_info(NULL, "job done: %d steps in %.1f s: loss %.4f -> %.4f; wire bytes: forward %llu, backward %llu "
                "(%.3f of fp32)%s%s; the encoder's daemon %s: %.300s", rt->ec.steps, secs, rt->first_loss,
                rt->last_loss, (unsigned long long)rt->wire_fwd, (unsigned long long)rt->wire_bwd,
                rt->raw ? (double)(rt->wire_fwd + rt->wire_bwd) / (double)rt->raw : 0.0,
                rt->b.cfg->job.output[0] ? "; decoder weights written to " : "", rt->b.cfg->job.output, rt->enc_name,
                enc_said);
    nb_service_set_state(rt->b.svc, NB_SVC_DONE, "job done: %d steps, loss %.4f", rt->ec.steps, rt->last_loss);
    if (rt->enc)
        nb_rt_send_shutdown(rt->enc, "job done");
}

static void send_commit(nb_encdec_dec_rt_t *rt)
{
    const nb_train_step_t *st = &rt->w_st;
    Nebula__Commit cm;
    nebula__commit__init(&cm);
    cm.job_id = rt->job_id;
    cm.step = (uint64_t)st->step;
    cm.global_grad_sumsq = rt->w_ss; /* exactly: the encoder derives the same clip and skip */
    cm.skip = st->skipped;
    cm.last = st->step + 1 == rt->ec.steps;
    Nebula__Frame f;
    nebula__frame__init(&f);
    f.body_case = NEBULA__FRAME__BODY_COMMIT;
    f.commit = &cm;
    int rc = rt->enc ? nb_rt_send_ctl(rt->enc, &f) : NB_ESTATE;
    if (rc)
        job_fail(rt, "cannot send the commit of step %d to %s: %s", st->step + 1, rt->enc_name, nb_strerror(rc));
}

static void work_done(uv_work_t *req, int status)
{
    nb_encdec_dec_rt_t *rt = req->data;
    rt->busy = false;
    drop_input(rt);
    if (rt->b.failed || rt->b.stopping)
        return;
    if (status || (rt->w_rc && rt->w_rc != NB_ELIMIT)) {
        job_fail(rt, "step %d: %s", rt->step + 1, status ? "cancelled" : rt->w_err);
        return;
    }
    if (rt->kind == WORK_MICRO) {
        rt->loss += rt->w_loss / (float)rt->ec.micro_batches;
        size_t n = nb_codec_msg_bytes(&rt->out);
        int rc = rt->enc ? nb_encdec_send(rt->enc, rt->job_id, (uint64_t)rt->step, (uint32_t)rt->micro,
                                          NEBULA__TENSOR_KIND__KIND_GRADIENT, (uint64_t)rt->rows, (uint64_t)rt->cols,
                                          &rt->out)
                         : NB_ESTATE;
        if (rc) {
            job_fail(rt, "cannot send the gradient of step %d micro-batch %d to %s: %s", rt->step + 1, rt->micro,
                     rt->enc_name, nb_strerror(rc));
            return;
        }
        rt->wire_bwd += n;
        rt->raw += 2 * (uint64_t)rt->rows * (uint64_t)rt->cols * sizeof(float);
        rt->micro++;
        if (rt->micro < rt->ec.micro_batches)
            await_encoder(rt, "encoder output of step %d micro-batch %d", rt->step + 1, rt->micro);
        else
            await_encoder(rt, "report of step %d", rt->step + 1);
        return;
    }
    /* WORK_COMMIT */
    const nb_train_step_t *st = &rt->w_st;
    if (st->skipped)
        nb_log_warn(NULL, "step %d: non-finite gradient norm (%g): update skipped (%d consecutive)", st->step + 1,
                    st->grad_norm, st->skipped_run);
    send_commit(rt);
    if (rt->b.failed)
        return;
    if (rt->w_rc == NB_ELIMIT) {
        job_fail(rt, "%s", rt->w_err);
        return;
    }
    double now = nb_mono_s(), secs = now - rt->t_step;
    rt->t_step = now;
    if (st->step == 0)
        rt->first_loss = st->loss;
    rt->last_loss = st->loss;
    int every = rt->b.cfg->job.log_every > 0 ? (int)rt->b.cfg->job.log_every : 1;
    if ((st->step + 1) % every == 0 || st->step == 0 || st->step + 1 == rt->ec.steps)
        /* nebula-train's line, so that the two can be compared */
        nb_log_info(NULL, "step %5d/%d  loss %.4f  lr %.2e  grad_norm %.3f  pairs/s %.0f  wire %llu+%llu B",
                    st->step + 1, rt->ec.steps, st->loss, st->lr, st->grad_norm,
                    rt->ec.batch / (secs > 0 ? secs : 1e-9), (unsigned long long)rt->wire_fwd,
                    (unsigned long long)rt->wire_bwd);
    nb_job_info_t ji;
    memset(&ji, 0, sizeof ji);
    ji.active = true;
    ji.step = st->step + 1;
    ji.steps = rt->ec.steps;
    ji.loss = st->loss;
    ji.step_time_s = secs;
    ji.bubble_measured = ji.bubble_predicted = -1;
    ji.bytes_raw = rt->raw;
    ji.bytes_wire = rt->wire_fwd + rt->wire_bwd;
    snprintf(ji.codec_forward, sizeof ji.codec_forward, "%s", rt->b.cfg->job.codecs.forward);
    snprintf(ji.codec_backward, sizeof ji.codec_backward, "%s", rt->b.cfg->job.codecs.backward);
    ji.micro_batches = rt->ec.micro_batches;
    snprintf(ji.schedule, sizeof ji.schedule, "encdec");
    snprintf(ji.layers, sizeof ji.layers, "decoder");
    nb_state_job_update(rt->b.state, &ji);
    nb_metrics_t *mx = nb_state_metrics(rt->b.state);
    nb_metrics_inc(mx, rt->m_steps, 1);
    nb_metrics_set(mx, rt->m_loss, st->loss);
    nb_service_status_line(rt->b.svc, "step %d/%d loss %.4f", st->step + 1, rt->ec.steps, st->loss);
    rt->step++;
    rt->micro = 0;
    rt->loss = 0.0f;
    if (rt->step == rt->ec.steps)
        await_encoder(rt, "confirmation (JobStatus DONE) that it applied the last commit and wrote its weights");
    else
        await_encoder(rt, "encoder output of step %d micro-batch 0", rt->step + 1);
}

static void queue(nb_encdec_dec_rt_t *rt, work_kind_t kind)
{
    rt->kind = kind;
    rt->busy = true;
    rt->work.data = rt;
    if (uv_queue_work(rt->b.loop, &rt->work, work_cb, work_done) != 0) {
        rt->busy = false;
        drop_input(rt);
        job_fail(rt, "cannot queue the decoder's work");
    }
}

/* ---- transport callbacks -------------------------------------------------- */

static void send_job(nb_encdec_dec_rt_t *rt)
{
    Nebula__Job j;
    nebula__job__init(&j);
    j.job_id = rt->job_id;
    j.steps = (uint64_t)rt->ec.steps;
    j.seed = rt->ec.seed;
    j.model_digest = rt->digest;
    j.recovery_timeout_s = (uint32_t)rt->b.cfg->job.recovery_timeout_s;
    Nebula__Frame f;
    nebula__frame__init(&f);
    f.body_case = NEBULA__FRAME__BODY_JOB;
    f.job = &j;
    int rc = nb_rt_send_ctl(rt->enc, &f);
    if (rc)
        job_fail(rt, "cannot send the job to %s: %s", rt->enc_name, nb_strerror(rc));
}

static void on_ready(nb_conn_t *c, void *ud)
{
    nb_encdec_dec_rt_t *rt = ud;
    const char *peer = nb_conn_peer_name(c);
    if (strcmp(peer, rt->enc_name) != 0 || rt->enc) {
        nb_log_warn(peer, "%s; closing", rt->enc ? "already connected" : "not the encoder's daemon of this job");
        nb_conn_close(c);
        return;
    }
    if (rt->ever && !rt->finished) {
        nb_conn_close(c);
        job_fail(rt, "the encoder's daemon %s came back in the middle of the job: an encoder-decoder job across "
                 "daemons has no recovery yet", peer);
        return;
    }
    rt->enc = c;
    rt->ever = true;
    nb_rt_peer_row(rt->b.state, peer, "encoder", "", "connected", c);
    if (rt->finished) {
        nb_rt_send_shutdown(c, "job done");
        return;
    }
    send_job(rt);
    /* the first output follows the encoder's build (its texts, tokenizer
     * and weights read): connect_timeout_s more for that */
    double build = rt->b.cfg->connect_timeout_s;
    nb_encdec_wait_set(&rt->wait, build + nb_encdec_step_deadline_s(rt->b.cfg),
                       build > 0 ? "connect_timeout_s + " NB_ENCDEC_STEP_KEY : NB_ENCDEC_STEP_KEY,
                       "encoder output of step %d micro-batch %d", rt->step + 1, rt->micro);
    rt->t_step = nb_mono_s();
    nb_service_set_state(rt->b.svc, NB_SVC_RUNNING, "encoder %s connected; step %d/%d", peer, rt->step + 1,
                         rt->ec.steps);
}

static void refuse(nb_encdec_dec_rt_t *rt, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void refuse(nb_encdec_dec_rt_t *rt, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    nb_metrics_inc(nb_state_metrics(rt->b.state), rt->m_refused, 1);
    job_fail(rt, "%s", msg);
}

static void on_frame(nb_conn_t *c, Nebula__Frame *f, uint8_t *payload, size_t len, void *ud)
{
    nb_encdec_dec_rt_t *rt = ud;
    const char *peer = nb_conn_peer_name(c);
    bool live = !rt->finished && !rt->b.failed && !rt->b.stopping;
    if (!live || c != rt->enc) {
        /* the job is over, or not the encoder: nothing to do */
    } else if (f->body_case == NEBULA__FRAME__BODY_TENSOR) {
        char err[1024];
        nb_encdec_rx_t x = { .peer = rt->enc_name, .job_id = rt->job_id, .step = (uint64_t)rt->step,
                             .micro = (uint32_t)rt->micro, .kind = NEBULA__TENSOR_KIND__KIND_ACTIVATION,
                             .codec = rt->fwd_text, .rows = (uint64_t)rt->rows,
                             .cols = (uint64_t)rt->cols };
        if (rt->busy || rt->micro >= rt->ec.micro_batches)
            refuse(rt, "refused a tensor from %s: step %d has no micro-batch %d (sent out of turn)", peer,
                   rt->step + 1, rt->micro);
        else if (nb_encdec_rx_check(&x, peer, f->tensor, len, err, sizeof err))
            refuse(rt, "%s", err);
        else {
            rt->wire_fwd += len + f->tensor->codec_meta.len + strlen(f->tensor->codec);
            rt->in = f->tensor;
            f->tensor = NULL; /* kept until the work is done */
            f->body_case = NEBULA__FRAME__BODY__NOT_SET;
            rt->in_payload = payload;
            rt->in_len = len;
            payload = NULL;
            nb_encdec_wait_clear(&rt->wait);
            queue(rt, WORK_MICRO);
        }
    } else if (f->body_case == NEBULA__FRAME__BODY_REPORT) {
        const Nebula__Report *r = f->report;
        if (rt->busy || rt->micro != rt->ec.micro_batches || r->job_id != rt->job_id || r->step != (uint64_t)rt->step)
            refuse(rt, "refused a report from %s: job %llu step %llu, expected job %llu step %d after its %d "
                   "micro-batches", peer, (unsigned long long)r->job_id, (unsigned long long)r->step + 1,
                   (unsigned long long)rt->job_id, rt->step + 1, rt->ec.micro_batches);
        else if (r->grad_sumsq < 0)
            refuse(rt, "refused a report from %s: a negative sum of squares (%g)", peer, r->grad_sumsq);
        else {
            rt->enc_ss = r->grad_sumsq; /* NaN or inf: the step is skipped on both sides */
            nb_encdec_wait_clear(&rt->wait);
            queue(rt, WORK_COMMIT);
        }
    } else if (f->body_case == NEBULA__FRAME__BODY_JOB_STATUS &&
               f->job_status->state == NEBULA__JOB_STATUS__STATE__JOB_STATE_DONE) {
        const Nebula__JobStatus *js = f->job_status;
        if (rt->busy || rt->step != rt->ec.steps || js->job_id != rt->job_id)
            refuse(rt, "refused a DONE from %s: job %llu, at step %d of job %llu; DONE comes after the last "
                   "commit (step %d)", peer, (unsigned long long)js->job_id, rt->step + 1,
                   (unsigned long long)rt->job_id, rt->ec.steps);
        else {
            nb_encdec_wait_clear(&rt->wait);
            finish(rt, js->message && js->message[0] ? js->message : "last commit applied");
        }
    } else if (f->body_case == NEBULA__FRAME__BODY_JOB_STATUS &&
               f->job_status->state == NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED) {
        job_fail(rt, "the encoder's daemon %s failed: %s", peer, f->job_status->message ? f->job_status->message : "");
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
    nb_encdec_dec_rt_t *rt = ud;
    if (c != rt->enc)
        return;
    rt->enc = NULL;
    nb_rt_peer_row(rt->b.state, rt->enc_name, "encoder", "", "gone", NULL);
    if (!rt->finished && !rt->b.failed && !rt->b.stopping)
        job_fail(rt, "the encoder's daemon %s went away (%s) at step %d: an encoder-decoder job across daemons has "
                 "no recovery yet", rt->enc_name, err ? nb_strerror(err) : "closed", rt->step + 1);
}

/* Once a second: an encoder's daemon that never connects, or that owes
 * its next frame past the step deadline, ends the job. */
static void on_timer(uv_timer_t *t)
{
    nb_encdec_dec_rt_t *rt = t->data;
    double limit = rt->b.cfg->connect_timeout_s, now = nb_mono_s();
    char why[512];
    if (rt->b.failed || rt->b.stopping || rt->finished)
        return;
    if (!rt->ever && limit > 0 && now - rt->t_start > limit)
        job_fail(rt, "the encoder's daemon %s did not connect within %.0f s (connect_timeout_s)", rt->enc_name, limit);
    else if (rt->enc && !rt->busy &&
             nb_encdec_wait_expired(&rt->wait, now, "the encoder's daemon", rt->enc_name, why, sizeof why))
        job_fail(rt, "%s", why);
}

/* ---- service hooks -------------------------------------------------------- */

static void note(void *ud, const char *msg)
{
    (void)ud;
    nb_log_info(NULL, "%s", msg);
}

static int rt_start(nb_service_t *svc, void *ud)
{
    nb_encdec_dec_rt_t *rt = ud;
    const nb_config_t *cfg = rt->b.cfg;
    char err[2048];
    if (nb_encdec_cfg_convert(cfg, &rt->ec, rt->texts, err, sizeof err)) {
        nb_service_start_error(svc, "%s", err);
        return NB_EINVAL;
    }
    rt->ec.half = NB_ENCDEC_DECODER;
    if (nb_encdec_codecs(cfg, &rt->fwd, &rt->bwd, rt->fwd_text, rt->bwd_text, err, sizeof err)) {
        nb_service_start_error(svc, "%s", err);
        return NB_EINVAL;
    }
    if (nb_encdec_job_digest_at_start(&rt->ec, rt->fwd_text, rt->bwd_text, rt->digest, err, sizeof err)) {
        nb_service_start_error(svc, "%s: %s", cfg->path, err);
        return NB_EINVAL;
    }
    char why[256];
    rt->be = nb_device_open(cfg->n_devices > 0 ? &cfg->devices[0] : NULL, why, sizeof why);
    if (!rt->be) {
        nb_service_start_error(svc, "%s", why);
        return NB_EINVAL;
    }
    int rc = nb_encdec_new(rt->be, &rt->ec, note, NULL, &rt->t, err, sizeof err);
    if (rc) {
        nb_service_start_error(svc, "%s: %s", cfg->path, err);
        return rc;
    }
    int B, S, C;
    nb_encdec_cut_shape(rt->t, &B, &S, &C);
    rt->rows = B * S;
    rt->cols = C;
    rt->enc_name = cfg->job.encoder.daemon;
    rt->job_id = ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid() ^ 2;
    nb_net_cfg_t nc;
    nb_rt_net_cfg(cfg, NEBULA__ROLE__ROLE_COORDINATOR, &nc);
    const char *names[1] = { rt->enc_name };
    nc.allowed_peers = names;
    nc.n_allowed_peers = 1;
    const nb_net_cb_t cb = { on_ready, on_frame, on_writable, on_closed };
    char bound[NB_CFG_ADDR_MAX + 16];
    char bwhy[NB_CFG_ADDR_MAX + 128];
    rc = nb_rt_open_net(rt->b.loop, cfg, &nc, &cb, rt, rt->b.state, &rt->b.net, bound, sizeof bound, bwhy,
                        sizeof bwhy);
    rt->b.net_open = rt->b.net != NULL;
    if (rc) {
        nb_service_start_error(svc, "%s", bwhy);
        return rc;
    }
    nb_net_set_job(rt->b.net, rt->job_id);
    rt->t_start = nb_mono_s();
    nb_rt_peer_row(rt->b.state, rt->enc_name, "encoder", "", "waiting", NULL);
    uv_timer_init(rt->b.loop, &rt->timer);
    rt->timer.data = rt;
    rt->timer_open = true;
    uv_timer_start(&rt->timer, on_timer, 1000, 1000);
    nb_part_t *d = nb_encdec_decoder(rt->t);
    nb_log_info(NULL, "encoder-decoder job, decoder half: %d layers, d_model %d, %zu parameters (%d of %d tensors "
                "train); batch %d in %d micro-batches of %d x %d encoder states, %d steps; codecs forward %s, "
                "backward %s; job digest %s; backend %s", rt->ec.dec.model.n_layer, rt->ec.dec.model.d_model,
                nb_part_num_params(d), nb_part_num_trainable(d), nb_part_num_tensors(d), rt->ec.batch,
                rt->ec.micro_batches, B, S, rt->ec.steps, cfg->job.codecs.forward, cfg->job.codecs.backward,
                rt->digest, rt->be->iface->name);
    nb_service_set_state(svc, NB_SVC_WAITING, "listening on %s; waiting for the encoder's daemon %s", bound,
                         rt->enc_name);
    return 0;
}

static void rt_stop(nb_service_t *svc, void *ud)
{
    (void)svc;
    nb_encdec_dec_rt_t *rt = ud;
    if (!rt->b.failed && !rt->finished && rt->enc)
        nb_rt_send_shutdown(rt->enc, "the decoder's daemon is stopping");
    rt->b.stopping = true;
    nb_rt_close_handle(&rt->timer, &rt->timer_open);
    nb_rt_close_net(&rt->b);
}

static const nb_runtime_i dec_runtime = {
    .start = rt_start,
    .stop = rt_stop,
    .binds_listener = true,
};

int nb_encdec_dec_rt_attach(nb_service_t *svc, nb_encdec_dec_rt_t **out)
{
    nb_encdec_dec_rt_t *rt = calloc(1, sizeof *rt);
    if (!rt)
        return NB_ENOMEM;
    nb_rt_base_init(&rt->b, svc);
    nb_codec_msg_init(&rt->out);
    nb_metrics_t *mx = nb_state_metrics(rt->b.state);
    rt->m_steps = nb_metrics_add(mx, "nebula_job_steps_total", NULL, NB_METRIC_COUNTER, "Steps done");
    rt->m_loss = nb_metrics_add(mx, "nebula_job_loss", NULL, NB_METRIC_GAUGE, "Loss of the last step");
    rt->m_refused = nb_metrics_add(mx, "nebula_encdec_refused_total", NULL, NB_METRIC_COUNTER,
                                   "Frames of the encoder's daemon refused (the job then fails)");
    nb_service_set_runtime(svc, &dec_runtime, rt);
    *out = rt;
    return 0;
}

void nb_encdec_dec_rt_free(nb_encdec_dec_rt_t *rt)
{
    if (!rt)
        return;
    drop_input(rt);
    nb_codec_msg_free(&rt->out);
    nb_encdec_free(rt->t);
    if (rt->be)
        nb_be_free(rt->be);
    free(rt);
}
