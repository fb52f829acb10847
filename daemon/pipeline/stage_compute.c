/*
 * stage_compute.c - the stage daemon's runtime, compute-thread half: builds
 * the stage host for a Job, runs one step per Plan through the host with the
 * mailboxes as its I/O, applies each Commit, writes the final weights, and
 * posts reports and job status to the loop thread (stage_rt.c).
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include "daemon/clock.h"
#include "daemon/log.h"
#include "daemon/pipeline/rt_common.h"
#include "daemon/pipeline/stage_rt_internal.h"
#include "daemon/service/device.h"
#include "daemon/train/hf_model.h"
#include "daemon/train/lowrank_init.h"
#include "daemon/train/weights.h"
#include "kernels/allreduce.h"

static void free_pmsg(void *p) { nb_pmsg_free(p); }

/* ---- compute thread ------------------------------------------------------ */

static int io_send(void *ud, nb_pmsg_t *msg)
{
    nb_stage_rt_t *rt = ud;
    out_item_t *o = calloc(1, sizeof *o);
    if (!o)
        return NB_ENOMEM;
    o->kind = OUT_TENSOR;
    o->msg = msg;
    o->t_queued_ns = nb_mono_ns();
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
    if (rc == 0 && __atomic_load_n(&rt->reads_paused, __ATOMIC_ACQUIRE))
        uv_async_send(&rt->wake); /* room again: the loop resumes reading */
    return rc;
}

static int post(nb_stage_rt_t *rt, out_item_t *o)
{
    int rc = nb_mbox_push(rt->outbox, o);
    if (rc) {
        nb__stage_free_out(o);
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
    nb_trace_t *tr = nb_state_trace(rt->b.state);
    for (int i = 0; i < res->n_timings; i++) {
        const nb_mb_timing_t *t = &res->timings[i];
        nb_rt_trace_mb(tr, res->step, t->stage, t->mb, t->fwd_start_ns, t->fwd_ns, t->bwd_start_ns, t->bwd_ns);
    }
}

/* One backend per configured device ("cpu" or "cuda:N"): the stage's
 * replicas (docs/pipeline.md, "Replicas"). Returns the count, or 0 with the
 * reason in why when one cannot be opened (none is kept then). */
static int open_backends(const nb_config_t *cfg, nb_backend_t **bes, char *why, size_t whylen)
{
    int n = cfg->n_devices > 0 ? cfg->n_devices : 1;
    for (int r = 0; r < n; r++) {
        const nb_cfg_device_t *dev = cfg->n_devices > 0 ? &cfg->devices[r] : NULL;
        if (!(bes[r] = nb_device_open(dev, why, whylen))) {
            while (r-- > 0)
                nb_be_free(bes[r]);
            return 0;
        }
    }
    /* opening a CUDA device makes it current on this thread: this thread
     * runs replica 0 (the replicas' own threads make theirs current) */
    if (n > 1 && bes[0]->iface->kind == NB_DEV_CUDA && nb_cuda_make_current(bes[0]) != 0) {
        snprintf(why, whylen, "devices: cannot make CUDA device %d current", cfg->devices[0].index);
        for (int r = 0; r < n; r++)
            nb_be_free(bes[r]);
        return 0;
    }
    return n;
}

/* The stage's compute device and its free and total memory now
 * (nb_be_mem_info), for `nebulactl status` and the coordinator's planner
 * (LINKS_READY). With replicas, the first device's figures. */
static void sample_device(nb_stage_rt_t *rt, nb_backend_t *be, int n_bes)
{
    const nb_config_t *cfg = rt->b.cfg;
    nb_mem_device_t d;
    memset(&d, 0, sizeof d);
    snprintf(d.name, sizeof d.name, "%.16s%s", cfg->n_devices > 0 ? cfg->devices[0].text : "cpu",
             n_bes > 1 ? " (+more)" : "");
    size_t f, t;
    if (nb_be_mem_info(be, &f, &t) == 0) {
        d.free = f;
        d.total = t;
    }
    nb_state_set_device_memory(rt->b.state, &d);
}

static void log_init_note(void *ud, const char *note)
{
    nb_stage_rt_t *rt = ud;
    nb_log_info(rt->b.cfg->coordinator.name, "init: %s", note);
}

/* job.init: every part hosted here loads its own tensors from this
 * daemon's init file (docs/import-export.md). */
static int init_parts(nb_stage_rt_t *rt, nb_host_t *host, char *err, size_t errlen)
{
    for (int i = 0; i < nb_host_num_stages(host); i++) {
        int rc = nb_lowrank_init_part(rt->b.cfg->init, nb_host_part(host, i), log_init_note, rt, err, errlen);
        if (rc)
            return rc;
        nb_log_info(rt->b.cfg->coordinator.name, "stage %d: weights from %s", nb_host_stage(host, i), rt->b.cfg->init);
    }
    return 0;
}

/* Creates the inboxes of the stages this daemon hosts, unless the loop
 * thread has closed the mailboxes meanwhile (the job failed or the daemon
 * stops while the host was being built): then NB_ECLOSED. */
static int open_inboxes(nb_stage_rt_t *rt, const nb_pipe_layout_t *l, int me)
{
    int rc = 0;
    pthread_mutex_lock(&rt->inbox_mu);
    if (rt->inbox_closed)
        rc = NB_ECLOSED;
    for (int s = 0; rc == 0 && s < l->p; s++)
        if (l->placement[s] == me)
            for (int k = 0; rc == 0 && k < NB_PMSG_KINDS; k++)
                if (!(rt->inbox[s][k] = nb_mbox_new(INBOX_CAP, free_pmsg)))
                    rc = NB_ENOMEM;
    pthread_mutex_unlock(&rt->inbox_mu);
    return rc;
}

/* Reopens the inboxes of an ended attempt (dropping what they hold), unless
 * the loop thread has closed the mailboxes for good (NB_ECLOSED). */
static int reopen_inboxes(nb_stage_rt_t *rt)
{
    int rc = 0;
    pthread_mutex_lock(&rt->inbox_mu);
    if (rt->inbox_closed)
        rc = NB_ECLOSED;
    for (int s = 0; rc == 0 && s < NB_SCHED_MAX_STAGES; s++)
        for (int k = 0; k < NB_PMSG_KINDS; k++)
            if (rt->inbox[s][k])
                nb_mbox_reopen(rt->inbox[s][k]);
    pthread_mutex_unlock(&rt->inbox_mu);
    return rc;
}

static void post_joined(nb_stage_rt_t *rt, const compute_t *c)
{
    out_item_t *o = calloc(1, sizeof *o);
    if (!o)
        return;
    o->kind = OUT_JOINED;
    o->attempt = c->attempt;
    o->joined = (joined_state_t){ .has_job = c->host != NULL, .steps_committed = c->committed,
                                  .prepared = c->prepared, .has_last_commit = c->has_last_commit,
                                  .last_commit_step = c->lc_step, .last_commit_sumsq = c->lc_sumsq,
                                  .last_commit_skip = c->lc_skip };
    post(rt, o);
}

/* An abort (the coordinator's or a local fault's): drop the step in flight
 * but keep a completed step's gradients (a Commit for it may still come),
 * and say what this daemon holds. */
static void handle_abort(nb_stage_rt_t *rt, compute_t *c)
{
    if (c->host && !c->prepared)
        nb_host_abort_step(c->host);
    c->aborted = true;
    post_joined(rt, c);
}

/* The held-out evaluation of a job that has one (job.eval): the stage
 * hosting stage 0 holds out a share of its token file (nb_host_new did
 * the split) or its own eval_data file. */
static int open_eval(nb_stage_rt_t *rt, nb_host_t *host, const nb_job_desc_t *d, int me, nb_eval_t **out, char *err,
                     size_t errlen)
{
    bool first = d->layout.placement[0] == me;
    if (first && d->eval_file && !rt->b.cfg->eval_data[0]) {
        snprintf(err, errlen, "the job evaluates on a held-out file (job.eval.data) and stage 0 is hosted here, but "
                              "this daemon's configuration has no eval_data file");
        return NB_EINVAL;
    }
    int rc = nb_eval_new(host, first && d->eval_file ? rt->b.cfg->eval_data : NULL, out, err, errlen);
    if (rc == 0 && first)
        nb_log_info(rt->b.cfg->coordinator.name, "held-out evaluation on %llu tokens (%s)",
                    (unsigned long long)nb_tokens_count(nb_eval_tokens(*out)),
                    d->eval_file ? rt->b.cfg->eval_data : "the tail of data");
    return rc;
}

/* True when job a and b differ at most in their stages' layer ranges: a
 * re-partition (docs/pipeline.md, "Re-partitioning"), which a daemon
 * follows by rebuilding its parts from the checkpoint the Job names. */
static bool only_split_differs(const nb_job_desc_t *a, const nb_job_desc_t *b)
{
    nb_job_desc_t x = *a;
    for (int s = 0; s < NB_SCHED_MAX_STAGES; s++) {
        x.layout.parts[s].first = b->layout.parts[s].first;
        x.layout.parts[s].last = b->layout.parts[s].last;
    }
    return memcmp(&x, b, sizeof x) == 0;
}

/* Builds (or, for a resumed job, restores) the parts for a received Job and
 * asks the loop to open the links. c->be may be NULL (the device did not
 * open); be_why then says why. Job.resume says where the parts come from:
 * the seed or job.init (FRESH), this daemon's memory (MEMORY: they must be
 * at resume_step), or checkpoint resume_step (CHECKPOINT). */
static int handle_job(nb_stage_rt_t *rt, compute_t *c, const char *be_why, const Nebula__Job *msg)
{
    char err[512];
    nb_job_desc_t d;
    int me;
    int rc = nb_job_from_msg(msg, &d, &me, err, sizeof err);
    if (rc == 0 && !c->be) {
        snprintf(err, sizeof err, "%s", be_why);
        rc = NB_EINVAL;
    } else if (rc == 0 && strcmp(d.names[me], rt->b.cfg->name) != 0) {
        snprintf(err, sizeof err, "the coordinator assigned daemon %d (%s) to this daemon (%s)", me, d.names[me],
                 rt->b.cfg->name);
        rc = NB_EINVAL;
    }
    bool had = c->host != NULL;
    bool moved = rc == 0 && had && memcmp(&d, &rt->job, sizeof d) != 0 &&
                 msg->resume == NEBULA__JOB__RESUME__RESUME_CHECKPOINT && only_split_differs(&d, &rt->job);
    if (rc == 0 && had && !moved && memcmp(&d, &rt->job, sizeof d) != 0) {
        /* another job or another layout: what this daemon holds is of no
         * use, and its links are set up for the old one. Tell the
         * coordinator (a fault: it waits for this daemon to come back) and
         * exit, so that the service restarts clean and joins the new job. */
        out_item_t *o = calloc(1, sizeof *o);
        if (!o)
            return NB_ENOMEM;
        o->kind = OUT_STATUS;
        o->status = NEBULA__JOB_STATUS__STATE__JOB_STATE_FAULT;
        o->attempt = msg->attempt;
        o->exit_after = true;
        snprintf(o->text, sizeof o->text, "%s: the coordinator sent job %llu with another job or layout than the "
                 "one this daemon holds (job %llu); exiting so that the service restarts clean and joins it",
                 rt->b.cfg->name, (unsigned long long)msg->job_id, (unsigned long long)rt->job.layout.job_id);
        nb_log_warn(rt->b.cfg->coordinator.name, "%s", o->text);
        post(rt, o);
        return NB_ESTATE;
    }
    if (rc == 0 && msg->pretrained && !rt->b.cfg->init[0]) {
        snprintf(err, sizeof err, "the job starts from pretrained weights (job.init) but this daemon's "
                                  "configuration has no init file");
        rc = NB_EINVAL;
    }
    if (rc == 0 && msg->checkpoints && !rt->b.cfg->checkpoint_dir[0]) {
        snprintf(err, sizeof err, "the job takes checkpoints (job.checkpoint) but this daemon's configuration "
                                  "has no checkpoint_dir");
        rc = NB_EINVAL;
    }
    if (rc == 0 && msg->resume == NEBULA__JOB__RESUME__RESUME_MEMORY) {
        if (!had || c->committed != msg->resume_step) {
            snprintf(err, sizeof err, "asked to resume in memory at step %llu, but this daemon holds %s%llu",
                     (unsigned long long)msg->resume_step, had ? "step " : "no job (steps ",
                     (unsigned long long)(had ? c->committed : 0));
            rc = NB_ESTATE;
            nb_log_warn(rt->b.cfg->coordinator.name, "%s", err);
            c->attempt = msg->attempt;
            post_status(rt, NEBULA__JOB_STATUS__STATE__JOB_STATE_FAULT, "%s: %s", rt->b.cfg->name, err);
            return 0; /* the coordinator falls back to a checkpoint */
        }
        if (c->prepared) /* that step runs again */
            nb_host_abort_step(c->host);
        c->prepared = false;
    } else if (rc == 0) {
        nb_host_t *moved_host = NULL;
        nb_eval_t *moved_eval = NULL;
        if (moved) {
            /* the new parts (replicas filled, evaluation open) first, beside
             * the old ones: when this daemon cannot read a tensor it now
             * needs (its checkpoint_dir is not shared with the stage that
             * wrote it) or cannot finish them, it keeps what it holds, says
             * so (FAULT), and the coordinator goes back to the old split */
            rc = nb_host_new_replicas(c->bes, c->n_bes, &d.layout, me, rt->b.cfg->data, &moved_host, err, sizeof err);
            if (rc == 0)
                rc = nb__stage_ckpt_restore(rt, moved_host, msg->manifest, msg->resume_step, err, sizeof err);
            if (rc == 0 && (rc = nb_host_sync_replicas(moved_host))) /* replica 0 was filled */
                snprintf(err, sizeof err, "out of memory copying the weights to the replicas");
            if (rc == 0 && nb_job_evaluates(&d))
                rc = open_eval(rt, moved_host, &d, me, &moved_eval, err, sizeof err);
            if (rc) {
                nb_eval_free(moved_eval); /* borrows the host */
                nb_host_free(moved_host);
                nb_log_warn(rt->b.cfg->coordinator.name, "re-partition refused: %s", err);
                c->attempt = msg->attempt;
                out_item_t *o = calloc(1, sizeof *o);
                if (!o)
                    return NB_ENOMEM;
                o->kind = OUT_STATUS;
                o->status = NEBULA__JOB_STATUS__STATE__JOB_STATE_FAULT;
                o->attempt = msg->attempt; /* the coordinator takes a FAULT of the attempt it set up */
                snprintf(o->text, sizeof o->text, "%s: re-partition refused: %.400s", rt->b.cfg->name, err);
                return post(rt, o);
            }
        }
        nb__stage_ckpt_release(c);
        nb_eval_free(c->eval); /* borrows the host */
        c->eval = NULL;
        if (had) {
            nb_host_free(c->host);
            c->host = NULL;
        }
        c->prepared = false;
        c->has_last_commit = false;
        if (moved) {
            c->host = moved_host; /* built, restored and synced above */
            c->eval = moved_eval;
        } else {
            if ((rc = nb_host_new_replicas(c->bes, c->n_bes, &d.layout, me, rt->b.cfg->data, &c->host, err,
                                           sizeof err)) == 0 &&
                msg->resume == NEBULA__JOB__RESUME__RESUME_CHECKPOINT)
                rc = nb__stage_ckpt_restore(rt, c->host, msg->manifest, msg->resume_step, err, sizeof err);
            else if (rc == 0 && msg->resume_step != 0) {
                snprintf(err, sizeof err, "a fresh start at step %llu", (unsigned long long)msg->resume_step);
                rc = NB_EFORMAT;
            } else if (rc == 0 && msg->pretrained)
                rc = init_parts(rt, c->host, err, sizeof err);
            if (rc == 0 && (rc = nb_host_sync_replicas(c->host))) /* replica 0 was filled */
                snprintf(err, sizeof err, "out of memory copying the weights to the replicas");
            if (rc == 0 && nb_job_evaluates(&d))
                rc = open_eval(rt, c->host, &d, me, &c->eval, err, sizeof err);
        }
        c->committed = msg->resume_step;
        if (rc && c->host) {
            nb_host_free(c->host);
            c->host = NULL;
        }
    }
    if (rc) {
        nb_log_error(rt->b.cfg->coordinator.name, "refusing job %llu: %s", (unsigned long long)msg->job_id, err);
        post_status(rt, NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED, "%s: %s", rt->b.cfg->name, err);
        return had ? rc : (rc == NB_ESTATE ? rc : NB_EINVAL);
    }
    c->attempt = msg->attempt;
    c->aborted = false;
    if ((rc = had ? reopen_inboxes(rt) : open_inboxes(rt, &d.layout, me))) {
        if (rc == NB_ECLOSED)
            nb_log_info(rt->b.cfg->coordinator.name, "job %llu ended while its stages were being built",
                        (unsigned long long)msg->job_id);
        return rc;
    }
    __atomic_store_n(&rt->inbox_limit, 2 + INBOX_MARGIN, __ATOMIC_RELEASE); /* until the first plan */
    static const char *const how[] = { "fresh", "from memory", "from checkpoint" };
    if (!had) {
        rt->job = d;
        rt->me = me;
        rt->probe_bytes = msg->probe_bytes;
        rt->first_stage = nb_host_stage(c->host, 0);
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
        nb_log_info(rt->b.cfg->coordinator.name, "job %llu: daemon %d of %d, stages %s, %d x %d tokens per "
                    "micro-batch%s%s at step %llu", (unsigned long long)d.layout.job_id, me, d.n_daemons, layers,
                    d.layout.micro_batch_size, d.layout.seq_len, msg->attempt ? ", resumed " : "",
                    msg->attempt ? how[msg->resume <= 2 ? msg->resume : 0] : "",
                    (unsigned long long)msg->resume_step);
    } else if (moved) {
        /* only the compute thread reads the layer ranges; the loop thread
         * reads the placement, which did not change */
        for (int s = 0; s < d.layout.p; s++)
            rt->job.layout.parts[s] = d.layout.parts[s];
        char layers[128];
        layers_text(&d.layout, me, layers, sizeof layers);
        nb_log_info(rt->b.cfg->coordinator.name, "job %llu attempt %u: re-partitioned: stages %s, restored from the "
                    "checkpoint at step %llu", (unsigned long long)d.layout.job_id, msg->attempt, layers,
                    (unsigned long long)msg->resume_step);
    } else {
        nb_log_info(rt->b.cfg->coordinator.name, "job %llu attempt %u: resuming %s at step %llu",
                    (unsigned long long)d.layout.job_id, msg->attempt, how[msg->resume <= 2 ? msg->resume : 0],
                    (unsigned long long)msg->resume_step);
    }
    /* the figures LINKS_READY gives the coordinator's planner: the device
     * once the parts are built, and what they hold on it */
    nb_mem_model_t mm;
    nb_host_memory_parts(c->host, &mm);
    nb_state_set_model_memory(rt->b.state, &mm);
    sample_device(rt, nb_host_backend(c->host), nb_host_replicas(c->host));
    nb_backend_t *hbe = nb_host_backend(c->host);
    if (hbe->iface->kind != NB_DEV_CPU && !had)
        nb_log_info(NULL, "codecs run %s", nb_stage_codec_on_device(nb_host_codec(c->host))
                                               ? "on the device: only the encoded bytes cross to the host"
                                               : "on the host: the device has no codec primitives, each tensor "
                                                 "crosses through a pinned staging buffer");
    out_item_t *o = calloc(1, sizeof *o);
    if (!o)
        return NB_ENOMEM;
    o->kind = OUT_LINKS;
    o->attempt = msg->attempt;
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

static int handle_plan(nb_stage_rt_t *rt, compute_t *c, const Nebula__Plan *p)
{
    char err[512];
    nb_host_t *host = c->host;
    if (host && p->job_id == rt->job.layout.job_id &&
        (c->aborted || p->attempt != c->attempt || __atomic_load_n(&rt->abort_flag, __ATOMIC_ACQUIRE))) {
        nb_log_debug(NULL, "plan for step %llu of attempt %u dropped: attempt %u ended",
                     (unsigned long long)p->step, p->attempt, c->attempt);
        return 0;
    }
    if (host && p->job_id == rt->job.layout.job_id && (p->step != c->committed || c->prepared)) {
        post_status(rt, NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED, "%s: plan for step %llu, but this daemon "
                    "has applied %llu steps%s", rt->b.cfg->name, (unsigned long long)p->step,
                    (unsigned long long)c->committed, c->prepared ? " and holds the gradients of the next" : "");
        return NB_ESTATE;
    }
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
    /* What the schedule allows in flight per inbox: this plan's micro-batches */
    int lim = plan.m + INBOX_MARGIN < INBOX_CAP ? plan.m + INBOX_MARGIN : INBOX_CAP;
    if (__atomic_exchange_n(&rt->inbox_limit, lim, __ATOMIC_ACQ_REL) != lim)
        uv_async_send(&rt->wake);
    snprintf(plan.fwd_codec, sizeof plan.fwd_codec, "%s", p->forward_codec);
    snprintf(plan.bwd_codec, sizeof plan.bwd_codec, "%s", p->backward_codec);
    int timeout_ms = (int)(rt->b.cfg->heartbeat_timeout_s > 0 ? rt->b.cfg->heartbeat_timeout_s * 4000 : 60000);
    nb_step_result_t res;
    int rc = nb_host_run_step(host, &plan, &io, timeout_ms, &res, err, sizeof err);
    if (rc && __atomic_load_n(&rt->abort_flag, __ATOMIC_ACQUIRE)) {
        /* a fault ended the attempt under the step: the abort that follows
         * in the control box cleans up */
        nb_log_info(NULL, "step %lld abandoned: its attempt ended", (long long)plan.step + 1);
        return 0;
    }
    if (rc == NB_ETIMEDOUT || rc == NB_ECLOSED) {
        /* a neighbour stopped sending without its link dropping (yet):
         * a fault the coordinator recovers from */
        nb_host_abort_step(host);
        c->aborted = true;
        post_status(rt, NEBULA__JOB_STATUS__STATE__JOB_STATE_FAULT, "%s: step %lld: %s", rt->b.cfg->name,
                    (long long)plan.step + 1, err);
        return 0;
    }
    if (rc) {
        post_status(rt, NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED, "%s: step %lld: %s", rt->b.cfg->name,
                    (long long)plan.step, err);
        nb_log_error(NULL, "step %lld: %s", (long long)plan.step, err);
        return rc;
    }
    c->prepared = true;
    c->last_m = plan.m;
    if (!isnan(res.loss)) /* the coordinator logs four decimals; tests compare runs closer */
        nb_log_debug(NULL, "step %lld loss %.9g", (long long)plan.step + 1, res.loss);
    for (int s = 0; s < rt->job.layout.p; s++)
        if (res.nonfinite_stages >> s & 1)
            nb_log_warn(NULL, "step %lld: stage %d's gradient is not finite (NaN or Inf); the coordinator "
                        "will skip the step", (long long)plan.step + 1, s);
    trace_step(rt, &res);
    nb_metrics_t *mx = nb_state_metrics(rt->b.state);
    nb_metrics_inc(mx, rt->m_steps, 1);
    nb_metrics_inc(mx, rt->m_bytes_raw, (double)res.bytes_raw);
    nb_metrics_inc(mx, rt->m_bytes_wire, (double)res.bytes_wire);
    nb_metrics_set(mx, rt->m_model_bytes, (double)nb_host_memory_bytes(host));
    nb_mem_model_t mm;
    nb_host_memory_parts(host, &mm);
    nb_state_set_model_memory(rt->b.state, &mm);
    sample_device(rt, nb_host_backend(host), nb_host_replicas(host));
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
    j.replicas = nb_host_replicas(host);
    nb_state_job_update(rt->b.state, &j);
    out_item_t *o = calloc(1, sizeof *o);
    if (!o)
        return NB_ENOMEM;
    o->kind = OUT_REPORT;
    o->attempt = c->attempt;
    o->res = res;
    o->res.timings = malloc((size_t)res.n_timings * sizeof *res.timings);
    if (!o->res.timings) {
        free(o);
        return NB_ENOMEM;
    }
    memcpy(o->res.timings, res.timings, (size_t)res.n_timings * sizeof *res.timings);
    return post(rt, o);
}

/* An eval Plan (docs/pipeline.md, "Held-out evaluation"): the held-out
 * loss with the weights after p->step steps, forward only. It changes
 * nothing a training step uses, so a fault under it needs no clean-up
 * beyond the abort's: the evaluation is dropped and the job recovers. */
static int handle_eval(nb_stage_rt_t *rt, compute_t *c, const Nebula__Plan *p)
{
    char err[512];
    if (c->host && p->job_id == rt->job.layout.job_id &&
        (c->aborted || p->attempt != c->attempt || __atomic_load_n(&rt->abort_flag, __ATOMIC_ACQUIRE))) {
        nb_log_debug(NULL, "evaluation after step %llu of attempt %u dropped: attempt %u ended",
                     (unsigned long long)p->step, p->attempt, c->attempt);
        return 0;
    }
    if (!c->host || p->job_id != rt->job.layout.job_id || !c->eval || p->step != c->committed || c->prepared) {
        post_status(rt, NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED, "%s: evaluation plan after step %llu of job "
                    "%llu, but this daemon %s", rt->b.cfg->name, (unsigned long long)p->step,
                    (unsigned long long)p->job_id,
                    !c->host || p->job_id != rt->job.layout.job_id ? "does not run that job"
                    : !c->eval                                     ? "has no held-out evaluation in its job"
                                                                   : "is at another step");
        return NB_ESTATE;
    }
    if (!p->forward_codec || strlen(p->forward_codec) >= NB_PMSG_SPEC_MAX || p->micro_batches < 1 ||
        p->micro_batches > NB_EVAL_MAX_BATCHES || p->micro_batch_size < 1 || p->micro_batch_size > 65536) {
        post_status(rt, NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED, "malformed evaluation plan after step %llu",
                    (unsigned long long)p->step);
        return NB_EFORMAT;
    }
    nb_eval_plan_t ep = { .step = (int64_t)p->step, .batches = (int)p->micro_batches,
                          .micro_batch_size = (int)p->micro_batch_size };
    snprintf(ep.fwd_codec, sizeof ep.fwd_codec, "%s", p->forward_codec);
    /* at most a window of batches is in flight per inbox */
    int lim = NB_EVAL_WINDOW + INBOX_MARGIN;
    if (__atomic_exchange_n(&rt->inbox_limit, lim, __ATOMIC_ACQ_REL) != lim)
        uv_async_send(&rt->wake);
    nb_pipe_io_i io = { io_send, io_recv, rt };
    int timeout_ms = (int)(rt->b.cfg->heartbeat_timeout_s > 0 ? rt->b.cfg->heartbeat_timeout_s * 4000 : 60000);
    nb_eval_result_t res;
    int rc = nb_eval_run(c->eval, &ep, &io, timeout_ms, &res, err, sizeof err);
    if (rc && __atomic_load_n(&rt->abort_flag, __ATOMIC_ACQUIRE)) {
        nb_log_info(NULL, "evaluation after step %lld abandoned: its attempt ended", (long long)ep.step);
        return 0;
    }
    if (rc == NB_ETIMEDOUT || rc == NB_ECLOSED) {
        c->aborted = true;
        post_status(rt, NEBULA__JOB_STATUS__STATE__JOB_STATE_FAULT, "%s: evaluation after step %lld: %s",
                    rt->b.cfg->name, (long long)ep.step, err);
        return 0;
    }
    if (rc) {
        post_status(rt, NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED, "%s: evaluation after step %lld: %s",
                    rt->b.cfg->name, (long long)ep.step, err);
        nb_log_error(NULL, "evaluation after step %lld: %s", (long long)ep.step, err);
        return rc;
    }
    if (!isnan(res.loss))
        nb_log_info(NULL, "step %lld: held-out loss %.4f (%d batches)", (long long)ep.step, res.loss, ep.batches);
    nb_metrics_t *mx = nb_state_metrics(rt->b.state);
    nb_metrics_inc(mx, rt->m_bytes_raw, (double)res.bytes_raw);
    nb_metrics_inc(mx, rt->m_bytes_wire, (double)res.bytes_wire);
    out_item_t *o = calloc(1, sizeof *o);
    if (!o)
        return NB_ENOMEM;
    o->kind = OUT_REPORT;
    o->eval = true;
    o->attempt = c->attempt;
    o->res = (nb_step_result_t){ .step = ep.step, .loss = res.loss, .bytes_raw = res.bytes_raw,
                                 .bytes_wire = res.bytes_wire, .step_ns = res.ns };
    return post(rt, o);
}

/* Test-only: NEBULA_TEST_FINAL_DELAY_S=SECONDS holds the final weights'
 * write back that long, so that a test can hit a daemon after the last
 * step (tests/pipeline/pipeline-chaos.test.sh). Never set it outside a
 * test. */
static void test_final_delay(void)
{
    const char *v = getenv("NEBULA_TEST_FINAL_DELAY_S");
    double s = v ? atof(v) : 0;
    if (s > 0 && s < 600) {
        nb_log_warn(NULL, "NEBULA_TEST_FINAL_DELAY_S: waiting %.1f s before writing the final weights", s);
        struct timespec ts = { (time_t)s, (long)((s - (double)(time_t)s) * 1e9) };
        nanosleep(&ts, NULL);
    }
}

static int save_weights(nb_stage_rt_t *rt, nb_host_t *host)
{
    test_final_delay();
    if (!rt->b.cfg->checkpoint_dir[0]) {
        nb_log_warn(NULL, "checkpoint_dir is not set: the final weights of this daemon's stages are not written");
        return 0;
    }
    if (mkdir(rt->b.cfg->checkpoint_dir, 0750) != 0 && errno != EEXIST) {
        nb_log_error(NULL, "%s: cannot create: %s", rt->b.cfg->checkpoint_dir, strerror(errno));
        return NB_EIO;
    }
    for (int i = 0; i < nb_host_num_stages(host); i++) {
        char path[NB_CFG_PATH_MAX + 64], err[512];
        snprintf(path, sizeof path, "%s/final-stage%d.weights", rt->b.cfg->checkpoint_dir, nb_host_stage(host, i));
        int rc = nb_weights_save(path, nb_host_part(host, i), err, sizeof err);
        if (rc) {
            nb_log_error(NULL, "%s", err);
            return rc;
        }
        nb_log_info(NULL, "wrote %s", path);
    }
    return 0;
}

/* Commit: apply step s's update once. A Commit for a step already applied
 * is a no-op (a recovery re-sends the last one; docs/pipeline.md, "Faults
 * and recovery"); the last one then writes the final weights. */
static int handle_commit(nb_stage_rt_t *rt, compute_t *c, const Nebula__Commit *cm)
{
    if (!c->host || cm->job_id != rt->job.layout.job_id)
        return NB_ESTATE;
    uint64_t s = cm->step;
    if (s + 1 <= c->committed) {
        nb_log_debug(NULL, "commit of step %llu: applied already", (unsigned long long)s + 1);
    } else if (s == c->committed && c->prepared) {
        uint64_t t0 = nb_mono_ns();
        if (!nb_host_apply(c->host, (int64_t)s, cm->skip ? NAN : cm->global_grad_sumsq))
            nb_log_warn(NULL, "step %llu: update skipped: the global gradient norm is not finite",
                        (unsigned long long)s + 1);
        c->committed = s + 1;
        c->prepared = false;
        c->has_last_commit = true;
        c->lc_step = s;
        c->lc_sumsq = cm->global_grad_sumsq;
        c->lc_skip = cm->skip;
        nb_trace_t *tr = nb_state_trace(rt->b.state);
        int track = nb_trace_track(tr, "optimizer", false);
        nb_trace_event_t ev = { .step = (int64_t)s, .micro = -1, .track = (int16_t)track,
                                .kind = NB_TEV_OPTIMIZER, .ts_us = (double)t0 / 1e3,
                                .dur_us = (double)(nb_mono_ns() - t0) / 1e3 };
        if (track >= 0)
            nb_trace_add(tr, &ev);
    } else {
        post_status(rt, NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED, "%s: commit of step %llu, but this daemon "
                    "has applied %llu steps and %s the gradients of the next", rt->b.cfg->name,
                    (unsigned long long)s + 1, (unsigned long long)c->committed,
                    c->prepared ? "holds" : "does not hold");
        return NB_ESTATE;
    }
    if (cm->last && c->committed == s + 1) {
        int rc = save_weights(rt, c->host);
        if (rc == 0)
            post_status(rt, NEBULA__JOB_STATUS__STATE__JOB_STATE_DONE, "%s: %lld steps done", rt->b.cfg->name,
                        (long long)s + 1);
        else
            post_status(rt, NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED, "%s: cannot write the weights",
                        rt->b.cfg->name);
    }
    return 0;
}

void *nb__stage_compute_main(void *arg)
{
    nb_stage_rt_t *rt = arg;
    char why[256] = "";
    compute_t c;
    memset(&c, 0, sizeof c);
    c.n_bes = open_backends(rt->b.cfg, c.bes, why, sizeof why);
    c.be = c.n_bes ? c.bes[0] : NULL;
    if (!c.be)
        nb_log_error(NULL, "%s; every job will be refused", why);
    else if (c.n_bes > 1)
        nb_log_info(NULL, "%d replicas of each stage, one per device (docs/pipeline.md, \"Replicas\")", c.n_bes);
    if (c.be) /* the device in `nebulactl status` before any job */
        sample_device(rt, c.be, c.n_bes);
    for (;;) {
        void *item;
        if (nb_mbox_pop(rt->ctl, &item, -1) != 0)
            break;
        Nebula__Frame *f = item;
        int rc = 0;
        switch (f->body_case) {
        case NEBULA__FRAME__BODY_JOB:
            rc = handle_job(rt, &c, why, f->job);
            break;
        case NEBULA__FRAME__BODY_PLAN:
            rc = f->plan->eval ? handle_eval(rt, &c, f->plan) : handle_plan(rt, &c, f->plan);
            break;
        case NEBULA__FRAME__BODY_COMMIT:
            rc = handle_commit(rt, &c, f->commit);
            break;
        case NEBULA__FRAME__BODY_ABORT:
            handle_abort(rt, &c);
            break;
        case NEBULA__FRAME__BODY_CHECKPOINT:
            if (!c.host || f->checkpoint->job_id != rt->job.layout.job_id)
                break;
            if (f->checkpoint->action == NEBULA__CHECKPOINT__ACTION__CHECKPOINT_SAVE)
                nb__stage_ckpt_save(rt, &c, f->checkpoint);
            else if (f->checkpoint->action == NEBULA__CHECKPOINT__ACTION__CHECKPOINT_COMMITTED)
                nb__stage_ckpt_committed(rt, &c, f->checkpoint);
            break;
        default:
            break;
        }
        bool fatal = rc && f->body_case != NEBULA__FRAME__BODY_JOB; /* a refused job leaves us waiting */
        nebula__frame__free_unpacked(f, NULL);
        if (fatal)
            break;
    }
    nb__stage_ckpt_release(&c);
    nb_eval_free(c.eval);
    nb_host_free(c.host);
    for (int r = 0; r < c.n_bes; r++)
        nb_be_free(c.bes[r]);
    return NULL;
}
