/*
 * coord_repart.c - layer re-partitioning while a job runs, the
 * coordinator's side (docs/pipeline.md, "Re-partitioning"): when the
 * planner finds that the measured stage speeds call for another layer split
 * (daemon/planner/repart.h), the coordinator takes a checkpoint at that
 * step boundary, ends the attempt as a recovery would, and starts the next
 * one from that checkpoint with the new layer ranges in the Job: every
 * stage rebuilds its parts and reads its tensors by their global names
 * from the checkpoint (one checkpoint_dir shared by the stages), and the
 * job goes on at the next step. Loop thread.
 */
#include <stdio.h>
#include <string.h>
#include "daemon/clock.h"
#include "daemon/log.h"
#include "daemon/pipeline/coord_rt_internal.h"

int nb__coord_repart_init(nb_coord_rt_t *rt, char *err, size_t errlen)
{
    const nb_cfg_job_t *j = &rt->b.cfg->job;
    nb_metrics_t *mx = nb_state_metrics(rt->b.state);
    rt->m_repart = nb_metrics_add(mx, "nebula_job_repartitions_total", NULL, NB_METRIC_COUNTER,
                                  "Layer re-partitions: the split moved while the job ran");
    rt->m_repart_s = nb_metrics_add(mx, "nebula_job_repartition_seconds", NULL, NB_METRIC_GAUGE,
                                    "Time the last re-partition took, from its checkpoint request to the links "
                                    "up on the new split (-1: none)");
    nb_metrics_set(mx, rt->m_repart_s, -1);
    if (!j->planner.repartition)
        return 0;
    if (!rt->plan) {
        snprintf(err, errlen, "job.planner.repartition needs the planner (job.planner.enabled: true)");
        return NB_EINVAL;
    }
    if (!rt->ckpt_enabled) {
        snprintf(err, errlen, "job.planner.repartition moves the layers through a checkpoint: set "
                              "job.checkpoint (every_steps or every_seconds) and a checkpoint_dir shared by "
                              "every stage daemon");
        return NB_EINVAL;
    }
    rt->repart_on = true;
    return 0;
}

const char *nb__coord_split_text(const nb_coord_rt_t *rt, char *buf, size_t len)
{
    const nb_pipe_layout_t *l = &rt->job.layout;
    int n = snprintf(buf, len, "%d stages, split ", l->p);
    for (int s = 0; s < l->p && n >= 0 && (size_t)n < len; s++)
        n += snprintf(buf + n, len - (size_t)n, "%s%d", s ? "," : "", l->parts[s].last - l->parts[s].first);
    return buf;
}

bool nb__coord_repart_maybe(nb_coord_rt_t *rt)
{
    if (!rt->repart_on || rt->repart_pending || rt->recovering || rt->ckpt_inflight >= 0 || rt->b.failed)
        return false;
    int layers[NB_SCHED_MAX_STAGES];
    if (!nb_cplan_repart_check(rt->plan, rt->step, layers, rt->repart_why, sizeof rt->repart_why))
        return false;
    memcpy(rt->repart_layers, layers, sizeof layers);
    rt->repart_pending = true;
    rt->repart_step = rt->step + 1;
    rt->t_repart = nb_mono_s();
    rt->ckpt_requested = true;
    nb_log_info(NULL, "re-partition after step %lld: %s; checkpointing, then every stage reloads its layers "
                "from it", (long long)rt->repart_step, rt->repart_why);
    return true;
}

/* The new ranges: blocks in stage order, a U-shape's head-only last stage
 * unchanged. */
static int apply_split(nb_coord_rt_t *rt)
{
    nb_pipe_layout_t l = rt->job.layout;
    int first = 0;
    for (int s = 0; s < l.p; s++) {
        if (l.parts[s].first == l.parts[s].last && l.parts[s].head && s == l.p - 1 && s > 0 &&
            rt->repart_layers[s] == 0)
            continue; /* the U-shape's head-only stage */
        l.parts[s].first = first;
        l.parts[s].last = first + rt->repart_layers[s];
        first = l.parts[s].last;
    }
    const char *why = first == l.model.n_layer ? nb_pipe_layout_validate(&l) : "the split does not cover the model";
    if (why) {
        nb_log_error(NULL, "re-partition dropped: the planner's split does not make a layout: %s", why);
        return NB_EINVAL;
    }
    rt->repart_old = rt->job.layout;
    rt->job.layout = l;
    return 0;
}

void nb__coord_repart_ckpt_done(nb_coord_rt_t *rt, int64_t step, bool ok)
{
    if (!rt->repart_pending || step != rt->repart_step)
        return;
    rt->repart_pending = false;
    if (!ok || apply_split(rt) != 0) {
        if (!ok)
            nb_log_warn(NULL, "re-partition after step %lld dropped: its checkpoint failed; the job goes on "
                        "with its split", (long long)step);
        if (!rt->recovering && !rt->b.failed && !rt->finished)
            nb__coord_next_step(rt, false);
        return;
    }
    char split[96];
    nb_cplan_set_split(rt->plan, &rt->job);
    nb_log_info(NULL, "re-partition after step %lld: the checkpoint is complete; restarting the attempt on %s",
                (long long)step, nb__coord_split_text(rt, split, sizeof split));
    nb_service_set_state(rt->b.svc, NB_SVC_CONNECTING, "re-partitioning: %s", split);
    /* a recovery without a fault: the next attempt resumes from the
     * checkpoint just taken (not from memory: the stages' parts change) */
    rt->repart_restart = true;
    rt->recovering = true;
    rt->resuming = false;
    rt->running = false;
    rt->force_checkpoint = true;
    char why[160];
    snprintf(why, sizeof why, "re-partition to %s", split);
    nb__coord_recover_arm(rt, why); /* bounded by job.recovery_timeout_s, as a recovery */
    nb__coord_abort_attempt(rt, why);
}

void nb__coord_repart_abandon(nb_coord_rt_t *rt)
{
    if (rt->repart_pending)
        nb_log_info(NULL, "re-partition after step %lld abandoned: a fault ended the attempt; the job recovers on "
                    "its split", (long long)rt->repart_step);
    rt->repart_pending = false;
}

void nb__coord_repart_revert(nb_coord_rt_t *rt, const char *why)
{
    if (!rt->repart_restart)
        return;
    rt->repart_restart = false;
    rt->repart_on = false;
    rt->job.layout = rt->repart_old;
    nb_cplan_set_split(rt->plan, &rt->job);
    rt->force_checkpoint = true; /* the same checkpoint, on the old split: every stage has its own files */
    char split[96];
    nb_log_warn(NULL, "re-partition undone: its attempt did not start: %s; the job goes back to %s from the same "
                "checkpoint and re-partitions no more (docs/pipeline.md, \"Re-partitioning\")", why,
                nb__coord_split_text(rt, split, sizeof split));
}

bool nb__coord_repart_done(nb_coord_rt_t *rt)
{
    if (!rt->repart_restart)
        return false;
    rt->repart_restart = false;
    char split[96];
    double secs = nb_mono_s() - rt->t_repart;
    nb_metrics_inc(nb_state_metrics(rt->b.state), rt->m_repart, 1);
    nb_metrics_set(nb_state_metrics(rt->b.state), rt->m_repart_s, secs);
    nb_log_info(NULL, "re-partitioned in %.1f s (attempt %u): %s; the job goes on at step %lld of %lld", secs,
                rt->attempt, nb__coord_split_text(rt, split, sizeof split), (long long)rt->step + 1,
                (long long)rt->job.steps);
    nb_service_set_state(rt->b.svc, NB_SVC_RUNNING, "training: step %lld of %lld (%s)", (long long)rt->step,
                         (long long)rt->job.steps, split);
    return true;
}
