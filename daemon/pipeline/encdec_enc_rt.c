/*
 * encdec_enc_rt.c - the encoder's daemon of an encoder-decoder job across
 * two daemons: dials the decoder's daemon (its coordinator), checks that
 * the Job it gets carries the digest of the job section it read itself,
 * and runs the encoder's half of every step. See encdec_rt.h and
 * docs/finetune.md, "Across two daemons".
 *
 * Per step: for each micro-batch the encoder forward, its output sent
 * (job.codecs.forward), the gradient awaited and the backward run; then a
 * Report with the encoder's sum of squares, and the step taken on the
 * Commit; after the last one (and the encoder's weights written) a
 * JobStatus DONE tells the decoder's daemon, which reports the job done
 * only then. A frame out of turn or of the wrong shape ends the job with
 * the sender named; so does losing the decoder's daemon (no recovery
 * yet).
 */
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/clock.h"
#include "daemon/log.h"
#include "daemon/pipeline/encdec_msg.h"
#include "daemon/pipeline/encdec_rt.h"
#include "daemon/pipeline/rt_common.h"
#include "daemon/service/device.h"
#include "daemon/train/weights.h"
#include "kernels/common.h"

typedef enum { WORK_BUILD, WORK_FWD, WORK_BWD, WORK_COMMIT } work_kind_t;

struct nb_encdec_enc_rt {
    nb_rt_base_t b; /* service, configuration, state, loop, transport, failed, stopping */
    nb_conn_t *coord;
    bool busy, done, have_job, waiting_grad, waiting_commit;
    uv_timer_t timer;
    bool timer_open;
    double t_start;
    uv_work_t work;
    nb_backend_t *be;
    const char *texts[NB_CFG_MAX_TEXTS];
    nb_encdec_config_t ec;
    nb_encdec_t *t;
    char digest[NB_ENCDEC_DIGEST_LEN]; /* of the settings, texts and tokenizer */
    nb_codec_spec_t fwd, bwd;      /* job.codecs, parsed */
    char fwd_text[NB_ENCDEC_CODEC_TEXT], bwd_text[NB_ENCDEC_CODEC_TEXT]; /* and canonical */
    uint64_t job_id;
    int rows, cols;
    int step, micro;
    /* the work item */
    work_kind_t kind;
    Nebula__Tensor *in;
    uint8_t *in_payload;
    size_t in_len;
    double global_ss;
    nb_codec_msg_t out;
    double w_ss;
    int w_rc;
    char w_err[1024];
    uint64_t wire;
    nb_encdec_wait_t wait;         /* what the decoder's daemon owes, until when (the step deadline) */
    int m_steps;
};

static void fail(nb_encdec_enc_rt_t *rt, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tell_decoder(void *ud, const char *why)
{
    nb_encdec_enc_rt_t *rt = ud;
    if (rt->coord)
        nb_rt_send_job_failed(rt->coord, rt->job_id, 0, why);
}

static void fail(nb_encdec_enc_rt_t *rt, const char *fmt, ...)
{
    if (rt->b.failed || rt->done)
        return;
    va_list ap;
    va_start(ap, fmt);
    nb_rt_job_vfail(&rt->b, tell_decoder, rt, fmt, ap);
    va_end(ap);
}

static void drop_input(nb_encdec_enc_rt_t *rt)
{
    if (rt->in)
        nebula__tensor__free_unpacked(rt->in, NULL);
    free(rt->in_payload);
    rt->in = NULL;
    rt->in_payload = NULL;
}

static void note(void *ud, const char *msg)
{
    (void)ud;
    nb_log_info(NULL, "%s", msg);
}

/* ---- the encoder's half (work thread) ------------------------------------- */

static void work_cb(uv_work_t *req)
{
    nb_encdec_enc_rt_t *rt = req->data;
    char *e = rt->w_err;
    size_t el = sizeof rt->w_err;
    int64_t shape[2] = { rt->rows, rt->cols };
    rt->w_rc = 0;
    switch (rt->kind) {
    case WORK_BUILD:
        rt->w_rc = nb_encdec_new(rt->be, &rt->ec, note, NULL, &rt->t, e, el);
        return;
    case WORK_FWD: {
        const float *enc;
        if ((rt->micro == 0 && (rt->w_rc = nb_encdec_begin(rt->t, e, el))) ||
            (rt->w_rc = nb_encdec_enc_forward(rt->t, rt->micro, &enc, e, el)))
            return;
        nb_tensor_t x = nb_tensor_view(rt->be, NB_F32, (void *)enc, 2, shape);
        rt->w_rc = nb_codec_encode(rt->be, &rt->fwd, &x, (uint64_t)rt->step * 65536u + (uint64_t)rt->micro, NULL, 0,
                                   &rt->out, e, el);
        break;
    }
    case WORK_BWD: {
        const Nebula__Tensor *t = rt->in;
        nb_tensor_t dst = nb_tensor_view(rt->be, NB_F32, nb_encdec_cut_buf(rt->t), 2, shape);
        rt->w_rc = nb_codec_decode_into(rt->be, t->codec, t->codec_meta.data, t->codec_meta.len, rt->in_payload,
                                        rt->in_len, 0, NULL, &dst, e, el);
        if (rt->w_rc) {
            char why[512];
            snprintf(why, sizeof why, "%.500s", e);
            snprintf(e, el, "refused the gradient from %s: %s", rt->b.cfg->coordinator.name, why);
            return;
        }
        if ((rt->w_rc = nb_encdec_enc_backward(rt->t, nb_encdec_cut_buf(rt->t), e, el)))
            return;
        if (rt->micro + 1 == rt->ec.micro_batches)
            rt->w_ss = nb_encdec_sumsq(rt->t, 0.0);
        break;
    }
    case WORK_COMMIT:
        rt->w_rc = nb_encdec_commit(rt->t, rt->global_ss, 0.0f, NULL, e, el);
        if ((rt->w_rc == 0 || rt->w_rc == NB_ELIMIT) && rt->step + 1 == rt->ec.steps &&
            rt->b.cfg->job.encoder.output[0] &&
            nb_weights_save(rt->b.cfg->job.encoder.output, nb_encdec_encoder(rt->t), e, el))
            rt->w_rc = NB_EIO;
        break;
    }
    nb_be_sync(rt->be);
}

static void queue(nb_encdec_enc_rt_t *rt, work_kind_t kind);

static void finish(nb_encdec_enc_rt_t *rt)
{
    rt->done = true;
    nb_log_info(NULL, "job done: %d encoder steps, %llu bytes of encoder output sent%s%s", rt->step,
                (unsigned long long)rt->wire, rt->b.cfg->job.encoder.output[0] ? "; encoder weights written to " : "",
                rt->b.cfg->job.encoder.output);
    nb_service_set_state(rt->b.svc, NB_SVC_DONE, "job done: encoder, %d steps", rt->step);
}

/* The last commit is applied and the weights written: tell the decoder's
 * daemon (JobStatus DONE), which waits for this before it reports the job
 * done, and end this daemon's part. */
static void confirm(nb_encdec_enc_rt_t *rt)
{
    char msg[NB_CFG_PATH_MAX + 64];
    const char *out = rt->b.cfg->job.encoder.output;
    snprintf(msg, sizeof msg, "last commit applied%s%s", out[0] ? "; encoder weights written to " : "", out);
    Nebula__JobStatus js;
    nebula__job_status__init(&js);
    js.job_id = rt->job_id;
    js.state = NEBULA__JOB_STATUS__STATE__JOB_STATE_DONE;
    js.message = msg;
    Nebula__Frame f;
    nebula__frame__init(&f);
    f.body_case = NEBULA__FRAME__BODY_JOB_STATUS;
    f.job_status = &js;
    int rc = rt->coord ? nb_rt_send_ctl(rt->coord, &f) : NB_ESTATE;
    if (rc)
        fail(rt, "cannot confirm the last commit to %s: %s", rt->b.cfg->coordinator.name, nb_strerror(rc));
    else
        finish(rt);
}

static void send_report(nb_encdec_enc_rt_t *rt)
{
    Nebula__Report r;
    nebula__report__init(&r);
    r.job_id = rt->job_id;
    r.step = (uint64_t)rt->step;
    r.grad_sumsq = rt->w_ss;
    r.bytes_wire = rt->wire;
    Nebula__Frame f;
    nebula__frame__init(&f);
    f.body_case = NEBULA__FRAME__BODY_REPORT;
    f.report = &r;
    int rc = rt->coord ? nb_rt_send_ctl(rt->coord, &f) : NB_ESTATE;
    if (rc)
        fail(rt, "cannot send the report of step %d: %s", rt->step + 1, nb_strerror(rc));
}

static void work_done(uv_work_t *req, int status)
{
    nb_encdec_enc_rt_t *rt = req->data;
    rt->busy = false;
    drop_input(rt);
    if (rt->b.failed || rt->b.stopping)
        return;
    if (status || (rt->w_rc && rt->w_rc != NB_ELIMIT)) {
        fail(rt, "%s", status ? "the encoder's work was cancelled" : rt->w_err);
        return;
    }
    switch (rt->kind) {
    case WORK_BUILD: {
        nb_part_t *p = nb_encdec_encoder(rt->t);
        int B, S, C;
        nb_encdec_cut_shape(rt->t, &B, &S, &C);
        rt->rows = B * S;
        rt->cols = C;
        nb_log_info(NULL, "encoder-decoder job, encoder half: %d layers, d_model %d, %zu parameters (%d of %d tensors "
                    "train); %d micro-batches of %d x %d, %d steps; codecs forward %s, backward %s",
                    rt->ec.enc.model.n_layer, rt->ec.enc.model.d_model, nb_part_num_params(p),
                    nb_part_num_trainable(p), nb_part_num_tensors(p), rt->ec.micro_batches, B, S, rt->ec.steps,
                    rt->b.cfg->job.codecs.forward, rt->b.cfg->job.codecs.backward);
        nb_service_set_state(rt->b.svc, NB_SVC_RUNNING, "encoder: step 1/%d", rt->ec.steps);
        queue(rt, WORK_FWD);
        return;
    }
    case WORK_FWD: {
        size_t n = nb_codec_msg_bytes(&rt->out);
        int rc = rt->coord ? nb_encdec_send(rt->coord, rt->job_id, (uint64_t)rt->step, (uint32_t)rt->micro,
                                            NEBULA__TENSOR_KIND__KIND_ACTIVATION, (uint64_t)rt->rows,
                                            (uint64_t)rt->cols, &rt->out)
                           : NB_ESTATE;
        if (rc) {
            fail(rt, "cannot send the encoder output of step %d micro-batch %d: %s", rt->step + 1, rt->micro,
                 nb_strerror(rc));
            return;
        }
        rt->wire += n;
        rt->waiting_grad = true;
        nb_encdec_wait_set(&rt->wait, nb_encdec_step_deadline_s(rt->b.cfg), NB_ENCDEC_STEP_KEY,
                           "gradient of step %d micro-batch %d", rt->step + 1, rt->micro);
        return;
    }
    case WORK_BWD:
        rt->micro++;
        if (rt->micro < rt->ec.micro_batches) {
            queue(rt, WORK_FWD);
            return;
        }
        send_report(rt);
        rt->waiting_commit = true;
        nb_encdec_wait_set(&rt->wait, nb_encdec_step_deadline_s(rt->b.cfg), NB_ENCDEC_STEP_KEY,
                           "commit of step %d", rt->step + 1);
        return;
    case WORK_COMMIT:
        if (rt->w_rc == NB_ELIMIT) {
            fail(rt, "%s", rt->w_err);
            return;
        }
        nb_metrics_inc(nb_state_metrics(rt->b.state), rt->m_steps, 1);
        rt->step++;
        rt->micro = 0;
        nb_service_status_line(rt->b.svc, "encoder: step %d/%d", rt->step, rt->ec.steps);
        if (rt->step < rt->ec.steps)
            queue(rt, WORK_FWD);
        else
            confirm(rt);
        return;
    }
}

static void queue(nb_encdec_enc_rt_t *rt, work_kind_t kind)
{
    rt->kind = kind;
    rt->busy = true;
    rt->work.data = rt;
    if (uv_queue_work(rt->b.loop, &rt->work, work_cb, work_done) != 0) {
        rt->busy = false;
        drop_input(rt);
        fail(rt, "cannot queue the encoder's work");
    }
}

/* ---- transport callbacks -------------------------------------------------- */

static bool is_coord(const nb_encdec_enc_rt_t *rt, const nb_conn_t *c)
{
    return strcmp(nb_conn_peer_name(c), rt->b.cfg->coordinator.name) == 0;
}

static void on_ready(nb_conn_t *c, void *ud)
{
    nb_encdec_enc_rt_t *rt = ud;
    if (!is_coord(rt, c) || rt->coord || rt->have_job) {
        if (rt->have_job && is_coord(rt, c) && !rt->done)
            fail(rt, "the decoder's daemon %s came back in the middle of the job: an encoder-decoder job across "
                 "daemons has no recovery yet", nb_conn_peer_name(c));
        nb_conn_close(c);
        return;
    }
    rt->coord = c;
    nb_rt_peer_row(rt->b.state, rt->b.cfg->coordinator.name, "coordinator", rt->b.cfg->coordinator.address.text,
                   "connected", c);
    nb_service_set_state(rt->b.svc, NB_SVC_CONNECTING, "connected to %s; waiting for the job",
                         rt->b.cfg->coordinator.name);
}

static void on_frame(nb_conn_t *c, Nebula__Frame *f, uint8_t *payload, size_t len, void *ud)
{
    nb_encdec_enc_rt_t *rt = ud;
    const char *peer = nb_conn_peer_name(c);
    char err[1024];
    if (c != rt->coord || rt->b.failed || rt->done || rt->b.stopping) {
        /* nothing but the coordinator's frames, and only while the job runs */
    } else if (f->body_case == NEBULA__FRAME__BODY_JOB) {
        const Nebula__Job *j = f->job;
        if (rt->have_job)
            fail(rt, "%s sent a second job; this daemon runs one encoder-decoder job", peer);
        else if (j->job_id == 0)
            fail(rt, "%s sent a job with id 0; a job's id is never 0", peer);
        else if (j->electra || !j->model_digest || strcmp(j->model_digest, rt->digest) != 0) {
            const char *theirs = j->model_digest ? j->model_digest : "";
            nb_encdec_digest_diff(rt->digest, theirs, err, sizeof err);
            fail(rt, "%s sent a job with digest '%.64s'; the job section of %s gives '%s': %s differ: both daemons "
                 "must read the same job (models, optimizer, seed, batch, steps, task and job.codecs) and the same "
                 "texts and tokenizer, byte for byte (each daemon logs its files' SHA-256 at start)", peer, theirs,
                 rt->b.cfg->path, rt->digest, err);
        } else {
            rt->have_job = true;
            rt->job_id = j->job_id;
            nb_net_set_job(rt->b.net, rt->job_id); /* the transport drops tensors of other jobs */
            queue(rt, WORK_BUILD);
        }
    } else if (f->body_case == NEBULA__FRAME__BODY_TENSOR) {
        nb_encdec_rx_t x = { .peer = rt->b.cfg->coordinator.name, .job_id = rt->job_id, .step = (uint64_t)rt->step,
                             .micro = (uint32_t)rt->micro, .kind = NEBULA__TENSOR_KIND__KIND_GRADIENT,
                             .codec = rt->bwd_text, .rows = (uint64_t)rt->rows,
                             .cols = (uint64_t)rt->cols };
        if (rt->busy || !rt->waiting_grad)
            fail(rt, "refused a tensor from %s: no gradient is awaited now (sent out of turn)", peer);
        else if (nb_encdec_rx_check(&x, peer, f->tensor, len, err, sizeof err))
            fail(rt, "%s", err);
        else {
            rt->waiting_grad = false;
            nb_encdec_wait_clear(&rt->wait);
            rt->in = f->tensor;
            f->tensor = NULL;
            f->body_case = NEBULA__FRAME__BODY__NOT_SET;
            rt->in_payload = payload;
            rt->in_len = len;
            payload = NULL;
            queue(rt, WORK_BWD);
        }
    } else if (f->body_case == NEBULA__FRAME__BODY_COMMIT) {
        const Nebula__Commit *cm = f->commit;
        double g = cm->global_grad_sumsq;
        bool last = rt->step + 1 == rt->ec.steps;
        if (rt->busy || !rt->waiting_commit || cm->job_id != rt->job_id || cm->step != (uint64_t)rt->step)
            fail(rt, "refused a commit from %s: job %llu step %llu, expected job %llu step %d after its report",
                 peer, (unsigned long long)cm->job_id, (unsigned long long)cm->step + 1,
                 (unsigned long long)rt->job_id, rt->step + 1);
        /* the global sum adds this daemon's to the decoder's: never below
         * it, never finite when this one is not, skipped exactly when not
         * finite (NaN or inf: a sum overflowed, the step is skipped), and
         * the last step is the job's last */
        else if (g < 0 || (isfinite(g) && !isfinite(rt->w_ss)) ||
                 (isfinite(g) && g < rt->w_ss * (1 - 1e-9)) || cm->skip != !isfinite(g) || cm->last != last)
            fail(rt, "refused a commit from %s for step %d: global sum of squares %g (this daemon's %g), skip %d, "
                 "last %d: not what the two reports add up to", peer, rt->step + 1, g, rt->w_ss, (int)cm->skip,
                 (int)cm->last);
        else {
            rt->waiting_commit = false;
            nb_encdec_wait_clear(&rt->wait);
            rt->global_ss = cm->global_grad_sumsq;
            queue(rt, WORK_COMMIT);
        }
    } else if (f->body_case == NEBULA__FRAME__BODY_SHUTDOWN) {
        /* "job done" comes only after this daemon's DONE, when it is done
         * and reads no more: here it ends the job early */
        fail(rt, "the decoder's daemon ended the job: %s", f->shutdown->reason ? f->shutdown->reason : "");
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
    nb_encdec_enc_rt_t *rt = ud;
    if (c != rt->coord)
        return;
    rt->coord = NULL;
    nb_rt_peer_row(rt->b.state, rt->b.cfg->coordinator.name, "coordinator", rt->b.cfg->coordinator.address.text, "gone",
                   NULL);
    /* after this daemon's DONE the decoder's daemon closes: the end, not
     * a loss */
    if (rt->have_job && !rt->done && !rt->b.stopping)
        fail(rt, "lost the decoder's daemon %s (%s) at step %d: an encoder-decoder job across daemons has no "
             "recovery yet", rt->b.cfg->coordinator.name, err ? nb_strerror(err) : "closed", rt->step + 1);
}

/* Once a second: no job within connect_timeout_s, or the decoder's
 * daemon owing its next frame past the step deadline, ends this daemon's
 * part. */
static void on_timer(uv_timer_t *t)
{
    nb_encdec_enc_rt_t *rt = t->data;
    double limit = rt->b.cfg->connect_timeout_s, now = nb_mono_s();
    char why[512];
    if (rt->b.failed || rt->b.stopping || rt->done)
        return;
    if (!rt->have_job && limit > 0 && now - rt->t_start > limit)
        fail(rt, "no job from the decoder's daemon %s within %.0f s (connect_timeout_s)", rt->b.cfg->coordinator.name,
             limit);
    else if (rt->coord && !rt->busy &&
             nb_encdec_wait_expired(&rt->wait, now, "the decoder's daemon", rt->b.cfg->coordinator.name, why,
                                    sizeof why))
        fail(rt, "%s", why);
}

/* ---- service hooks -------------------------------------------------------- */

static int rt_start(nb_service_t *svc, void *ud)
{
    nb_encdec_enc_rt_t *rt = ud;
    const nb_config_t *cfg = rt->b.cfg;
    char err[2048];
    if (nb_encdec_cfg_convert(cfg, &rt->ec, rt->texts, err, sizeof err)) {
        nb_service_start_error(svc, "%s", err);
        return NB_EINVAL;
    }
    rt->ec.half = NB_ENCDEC_ENCODER;
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
    nb_net_cfg_t nc;
    nb_rt_net_cfg(cfg, NEBULA__ROLE__ROLE_STAGE, &nc);
    const nb_net_cb_t cb = { on_ready, on_frame, on_writable, on_closed };
    char bound[NB_CFG_ADDR_MAX + 16];
    char bwhy[NB_CFG_ADDR_MAX + 128];
    int rc = nb_rt_open_net(rt->b.loop, cfg, &nc, &cb, rt, rt->b.state, &rt->b.net, bound, sizeof bound, bwhy,
                            sizeof bwhy);
    rt->b.net_open = rt->b.net != NULL;
    if (rc) {
        nb_service_start_error(svc, "%s", bwhy);
        return rc;
    }
    const nb_cfg_coord_t *co = &cfg->coordinator;
    if ((rc = nb_net_connect(rt->b.net, co->name, co->address.host, co->address.port))) {
        nb_service_start_error(svc, "coordinator.address %s: %s", co->address.text, nb_strerror(rc));
        return rc;
    }
    nb_rt_peer_row(rt->b.state, co->name, "coordinator", co->address.text, "dialling", NULL);
    rt->t_start = nb_mono_s();
    uv_timer_init(rt->b.loop, &rt->timer);
    rt->timer.data = rt;
    rt->timer_open = true;
    uv_timer_start(&rt->timer, on_timer, 1000, 1000);
    nb_service_set_state(svc, NB_SVC_WAITING, "encoder of an encoder-decoder job (digest %s); dialling the decoder's "
                         "daemon %s at %s", rt->digest, co->name, co->address.text);
    return 0;
}

static void rt_stop(nb_service_t *svc, void *ud)
{
    (void)svc;
    nb_encdec_enc_rt_t *rt = ud;
    rt->b.stopping = true; /* work in flight ends in work_done, which then queues nothing */
    nb_rt_close_handle(&rt->timer, &rt->timer_open);
    nb_rt_close_net(&rt->b);
}

static const nb_runtime_i enc_runtime = {
    .start = rt_start,
    .stop = rt_stop,
    .binds_listener = true,
};

int nb_encdec_enc_rt_attach(nb_service_t *svc, nb_encdec_enc_rt_t **out)
{
    nb_encdec_enc_rt_t *rt = calloc(1, sizeof *rt);
    if (!rt)
        return NB_ENOMEM;
    nb_rt_base_init(&rt->b, svc);
    nb_codec_msg_init(&rt->out);
    rt->m_steps = nb_metrics_add(nb_state_metrics(rt->b.state), "nebula_encdec_encoder_steps_total", NULL,
                                 NB_METRIC_COUNTER, "Encoder steps done");
    nb_service_set_runtime(svc, &enc_runtime, rt);
    *out = rt;
    return 0;
}

void nb_encdec_enc_rt_free(nb_encdec_enc_rt_t *rt)
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
