/*
 * coord_recover.c - the coordinator's side of faults and recovery
 * (docs/pipeline.md, "Faults and recovery"): a fault ends the attempt in
 * flight; every stage drops it and says what it holds (JOINED); once all
 * have, the coordinator decides where the job goes on: in memory at the
 * step every stage holds (after re-sending a decided Commit to those that
 * missed it), else from the newest complete checkpoint, else from the
 * start; and sends the next attempt's Job. Loop thread.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/clock.h"
#include "daemon/log.h"
#include "daemon/pipeline/coord_rt_internal.h"
#include "daemon/pipeline/rt_common.h"

static void recovery_timeout_cb(uv_timer_t *t)
{
    nb_coord_rt_t *rt = t->data;
    if (!rt->recovering || rt->finished || rt->b.failed)
        return;
    char missing[512] = "";
    for (int i = 0; i < rt->job.n_daemons; i++)
        if (!rt->d[i].connected || !rt->d[i].joined)
            snprintf(missing + strlen(missing), sizeof missing - strlen(missing), "%s%s (%s)",
                     missing[0] ? ", " : "", rt->job.names[i], rt->d[i].connected ? "connected" : "not connected");
    nb__coord_job_fail(rt, "the job did not recover within %.0f s (job.recovery_timeout_s) of the fault (%s)%s%s",
                       rt->b.cfg->job.recovery_timeout_s, rt->fault_why, missing[0] ? "; waiting for " : "", missing);
}

void nb__coord_recover_init(nb_coord_rt_t *rt)
{
    nb_metrics_t *mx = nb_state_metrics(rt->b.state);
    rt->m_restarts = nb_metrics_add(mx, "nebula_job_restarts_total", NULL, NB_METRIC_COUNTER,
                                    "Recoveries of the job after a fault (a lost daemon or link)");
    rt->m_recovery_s = nb_metrics_add(mx, "nebula_job_recovery_seconds", NULL, NB_METRIC_GAUGE,
                                      "Time the last recovery took, from the fault to the links up again");
    rt->m_redone = nb_metrics_add(mx, "nebula_job_steps_redone_total", NULL, NB_METRIC_COUNTER,
                                  "Steps run again after a recovery (the step in flight and any rolled back)");
    nb_metrics_set(mx, rt->m_recovery_s, -1);
    uv_timer_init(rt->b.loop, &rt->recovery_timer);
    rt->recovery_timer.data = rt;
    rt->recovery_timer_open = true;
}

void nb__coord_recover_close(nb_coord_rt_t *rt)
{
    nb_rt_close_handle(&rt->recovery_timer, &rt->recovery_timer_open);
}

void nb__coord_fault(nb_coord_rt_t *rt, const char *fmt, ...)
{
    if (rt->finished || rt->b.failed || rt->b.stopping || !rt->job_sent)
        return;
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    if (rt->recovering) {
        nb_log_info(NULL, "while recovering: %s", why);
        return;
    }
    /* a fault while the next attempt's links come up continues the same
     * recovery (its clock and count) with another attempt */
    bool continuing = rt->resuming;
    rt->recovering = true;
    rt->resuming = false;
    rt->running = false;
    nb__coord_eval_abandon(rt); /* dropped: the job recovers without it */
    if (continuing) {
        nb_log_warn(NULL, "attempt %u did not start: %s; trying again", rt->attempt, why);
        nb__coord_repart_revert(rt, why); /* a move that did not start: back to the old split */
        goto abort_all;
    }
    rt->restarts++;
    rt->t_fault = nb_mono_s();
    snprintf(rt->fault_why, sizeof rt->fault_why, "%s", why);
    nb_metrics_inc(nb_state_metrics(rt->b.state), rt->m_restarts, 1);
    int64_t limit = rt->b.cfg->job.max_restarts;
    if (rt->restarts > limit) {
        rt->recovering = false;
        nb__coord_job_fail(rt, "%s; the job has recovered %lld times already (job.max_restarts = %lld)", why,
                           (long long)rt->restarts - 1, (long long)limit);
        return;
    }
    nb_log_warn(NULL, "fault in attempt %u at step %lld: %s; recovering (recovery %lld, at most %.0f s)",
                rt->attempt, (long long)rt->step + 1, why, (long long)rt->restarts, rt->b.cfg->job.recovery_timeout_s);
    nb_service_set_state(rt->b.svc, NB_SVC_CONNECTING, "recovering from: %s", why);
    nb__coord_ckpt_abandon(rt);
    nb__coord_repart_abandon(rt);
    if (rt->recovery_timer_open)
        uv_timer_start(&rt->recovery_timer, recovery_timeout_cb, (uint64_t)(rt->b.cfg->job.recovery_timeout_s * 1000), 0);
abort_all:
    nb__coord_abort_attempt(rt, why);
}

void nb__coord_recover_arm(nb_coord_rt_t *rt, const char *why)
{
    snprintf(rt->fault_why, sizeof rt->fault_why, "%s", why);
    if (rt->recovery_timer_open)
        uv_timer_start(&rt->recovery_timer, recovery_timeout_cb, (uint64_t)(rt->b.cfg->job.recovery_timeout_s * 1000), 0);
}

void nb__coord_abort_attempt(nb_coord_rt_t *rt, const char *why)
{
    rt->waiting = WAIT_RECOVER;
    if (rt->timer_open)
        uv_timer_stop(&rt->connect_timer);
    Nebula__Frame f;
    Nebula__Abort a;
    nebula__frame__init(&f);
    nebula__abort__init(&a);
    a.job_id = rt->job.layout.job_id;
    a.attempt = rt->attempt;
    a.reason = (char *)why;
    f.body_case = NEBULA__FRAME__BODY_ABORT;
    f.abort = &a;
    for (int i = 0; i < rt->job.n_daemons; i++) {
        rt->d[i].joined = false;
        rt->d[i].done = false; /* a fault after the last step: they write their weights again */
        rt->d[i].links_ready = false;
        rt->d[i].reported = false;
        if (rt->d[i].conn)
            nb_rt_send_ctl(rt->d[i].conn, &f); /* a closing one answers by coming back */
    }
}

/* The Commit decided for step `step`, from this coordinator or from a
 * daemon that applied it. */
static bool decision_for(nb_coord_rt_t *rt, uint64_t step, double *sumsq, bool *skip)
{
    if (rt->has_decided && rt->dec_step == step) {
        *sumsq = rt->dec_sumsq;
        *skip = rt->dec_skip;
        return true;
    }
    for (int i = 0; i < rt->job.n_daemons; i++) {
        const joined_t *j = &rt->d[i].js;
        if (j->has_job && j->has_lc && j->lc_step == step) {
            *sumsq = j->lc_sumsq;
            *skip = j->lc_skip;
            return true;
        }
    }
    return false;
}

/* Can the job go on from the daemons' memory? Yes when each holds this job
 * at the same step S, or at S-1 with the complete gradients of step S-1
 * and the decision for it known (it is re-sent). *at = S. */
static bool memory_resumable(nb_coord_rt_t *rt, uint64_t *at)
{
    uint64_t s = 0;
    for (int i = 0; i < rt->job.n_daemons; i++) {
        const joined_t *j = &rt->d[i].js;
        if (!j->has_job || j->job_id != rt->job.layout.job_id)
            return false;
        if (j->committed > s)
            s = j->committed;
    }
    double sumsq;
    bool skip;
    for (int i = 0; i < rt->job.n_daemons; i++) {
        const joined_t *j = &rt->d[i].js;
        if (j->committed == s)
            continue;
        if (!(j->committed + 1 == s && j->prepared && decision_for(rt, s - 1, &sumsq, &skip)))
            return false;
    }
    *at = s;
    return true;
}

void nb__coord_joined(nb_coord_rt_t *rt, int i, const Nebula__JobStatus *s)
{
    daemon_slot_t *d = &rt->d[i];
    d->joined = true;
    d->js = (joined_t){ .has_job = s->has_job, .job_id = s->job_id, .attempt = s->attempt,
                        .committed = s->steps_committed, .prepared = s->prepared, .has_lc = s->has_last_commit,
                        .lc_step = s->last_commit_step, .lc_sumsq = s->last_commit_sumsq,
                        .lc_skip = s->last_commit_skip };
    if (s->has_job)
        nb_log_info(rt->job.names[i], "holds job %llu: %llu steps applied%s", (unsigned long long)s->job_id,
                    (unsigned long long)s->steps_committed, s->prepared ? ", the gradients of the next ready" : "");
    if (rt->finished || rt->b.failed)
        return;
    if (rt->job_sent && !rt->recovering)
        return; /* an answer to an Abort of an attempt already replaced */
    for (int k = 0; k < rt->job.n_daemons; k++)
        if (!rt->d[k].connected || !rt->d[k].joined)
            return;

    /* Every daemon is here and said what it holds: where does the job go on? */
    if (!rt->job_sent && rt->last_ckpt < 0) {
        /* a restarted coordinator without checkpoints: the daemons may all
         * still hold one job (a daemon checks that it is this job's layout) */
        uint64_t id = rt->d[0].js.job_id;
        bool same = true;
        for (int k = 0; k < rt->job.n_daemons; k++)
            same = same && rt->d[k].js.has_job && rt->d[k].js.job_id == id;
        if (same && id) {
            nb_log_info(NULL, "every stage daemon holds job %llu: taking it over", (unsigned long long)id);
            rt->job.layout.job_id = id;
        }
    }
    uint32_t attempt = rt->attempt;
    bool any_job = false;
    for (int k = 0; k < rt->job.n_daemons; k++) {
        const joined_t *j = &rt->d[k].js;
        if (j->has_job) {
            any_job = true;
            if (j->attempt > attempt)
                attempt = j->attempt;
        }
    }
    if (rt->job_sent || any_job)
        attempt++;
    uint64_t at = 0;
    int resume;
    const char *how;
    bool was_sent = rt->job_sent;
    if (!rt->force_checkpoint && memory_resumable(rt, &at)) {
        resume = NEBULA__JOB__RESUME__RESUME_MEMORY;
        how = "from the daemons' memory";
    } else if (rt->last_ckpt >= 0 && rt->last_manifest) {
        resume = NEBULA__JOB__RESUME__RESUME_CHECKPOINT;
        at = (uint64_t)rt->last_ckpt;
        how = "from the newest checkpoint";
    } else {
        resume = NEBULA__JOB__RESUME__RESUME_FRESH;
        at = 0;
        how = rt->job_sent ? "from the start (no checkpoint to go back to)" : "fresh";
    }
    rt->force_checkpoint = false;
    rt->attempt = attempt;
    /* steps thrown away: the one in flight, and those rolled back */
    int64_t redone = (rt->step_in_flight ? 1 : 0) + (rt->high_water > (int64_t)at ? rt->high_water - (int64_t)at : 0);
    if (was_sent || at > 0) {
        nb_metrics_inc(nb_state_metrics(rt->b.state), rt->m_redone, (double)redone);
        nb_log_info(NULL, "attempt %u: resuming %s at step %llu (%lld step%s to run again)", attempt, how,
                    (unsigned long long)at, (long long)redone, redone == 1 ? "" : "s");
    }
    rt->step_in_flight = false;
    if (resume == NEBULA__JOB__RESUME__RESUME_MEMORY && at > 0) {
        /* a daemon that missed the decided Commit gets it first */
        double sumsq = 0;
        bool skip = false;
        bool known = decision_for(rt, at - 1, &sumsq, &skip);
        for (int k = 0; k < rt->job.n_daemons; k++)
            if (rt->d[k].js.committed + 1 == at) {
                nb_log_info(rt->job.names[k], "re-sending the commit of step %llu", (unsigned long long)at);
                if (nb__coord_send_commit(rt, k, at - 1, sumsq, skip, false))
                    return;
            }
        if (known) {
            rt->has_decided = true;
            rt->dec_step = at - 1;
            rt->dec_sumsq = sumsq;
            rt->dec_skip = skip;
        }
    }
    if (resume == NEBULA__JOB__RESUME__RESUME_CHECKPOINT && rt->last_manifest) {
        /* the AdamW count of the checkpoint: skipped steps are not counted */
        nb_ckpt_manifest_t m;
        char err[256];
        if (nb_ckpt_manifest_parse(rt->last_manifest, strlen(rt->last_manifest), "manifest", &m, err,
                                   sizeof err) == 0)
            rt->skipped_total = m.meta.step - m.meta.optim_steps;
        rt->has_decided = false;
    }
    if (resume == NEBULA__JOB__RESUME__RESUME_FRESH)
        rt->skipped_total = 0, rt->has_decided = false;
    rt->skipped_run = 0;
    rt->recovering = false;
    rt->resuming = was_sent || at > 0;
    if ((int64_t)at > rt->high_water)
        rt->high_water = (int64_t)at;
    /* until every LINKS_READY of this attempt, a fault starts another one */
    nb__coord_send_job(rt, resume, at, resume == NEBULA__JOB__RESUME__RESUME_CHECKPOINT ? rt->last_manifest : NULL);
}

void nb__coord_recovered(nb_coord_rt_t *rt)
{
    if (rt->t_job_start == 0)
        rt->t_job_start = nb_mono_s();
    if (rt->recovery_timer_open)
        uv_timer_stop(&rt->recovery_timer);
    bool was_fault = rt->restarts > 0 && rt->t_fault > 0;
    rt->resuming = false;
    if (!was_fault && nb__coord_repart_done(rt))
        return;
    if (!was_fault) {
        nb_log_info(NULL, "job %llu: attempt %u runs from step %lld of %lld", (unsigned long long)rt->job.layout.job_id,
                    rt->attempt, (long long)rt->step + 1, (long long)rt->job.steps);
        nb_service_set_state(rt->b.svc, NB_SVC_RUNNING, "training: step %lld of %lld", (long long)rt->step,
                             (long long)rt->job.steps);
        return;
    }
    double secs = nb_mono_s() - rt->t_fault;
    rt->t_fault = 0;
    nb_metrics_set(nb_state_metrics(rt->b.state), rt->m_recovery_s, secs);
    nb_log_info(NULL, "recovered in %.1f s (attempt %u): the job goes on at step %lld of %lld", secs, rt->attempt,
                (long long)rt->step + 1, (long long)rt->job.steps);
    nb_service_set_state(rt->b.svc, NB_SVC_RUNNING, "training: step %lld of %lld (recovered)", (long long)rt->step,
                         (long long)rt->job.steps);
}
