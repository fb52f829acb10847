/*
 * coord_eval.c - the coordinator's side of held-out evaluation
 * (docs/pipeline.md, "Held-out evaluation"): after the Commit of every
 * job.eval.every_steps-th step and of the last, an eval Plan asks the
 * stages for the loss on the held-out batches with the weights as they now
 * are; the head's daemon reports it, every daemon says its part is done,
 * and the progress line, the metrics and the status get it before the next
 * step's Plan. A fault drops the evaluation in flight. Loop thread.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "daemon/clock.h"
#include "daemon/log.h"
#include "daemon/pipeline/coord_rt_internal.h"
#include "daemon/pipeline/rt_common.h"

void nb__coord_eval_init(nb_coord_rt_t *rt)
{
    const nb_cfg_eval_t *e = &rt->b.cfg->job.eval;
    rt->eval_on = e->fraction > 0.0 || e->data[0];
    rt->eval_first = rt->eval_last_loss = NAN;
    rt->eval_first_step = rt->eval_last_step = -1;
    nb_metrics_t *mx = nb_state_metrics(rt->b.state);
    rt->m_eval_loss = nb_metrics_add(mx, "nebula_job_eval_loss", NULL, NB_METRIC_GAUGE,
                                     "Held-out loss of the latest evaluation "
                                     "(0 while nebula_job_eval_step is 0: none yet)");
    rt->m_eval_step = nb_metrics_add(mx, "nebula_job_eval_step", NULL, NB_METRIC_GAUGE,
                                     "Steps done when the latest held-out loss was taken (0: none yet)");
    rt->m_eval_s = nb_metrics_add(mx, "nebula_job_eval_seconds", NULL, NB_METRIC_GAUGE,
                                  "Time the latest evaluation took, from its Plan to the last report");
    rt->m_eval_dropped = nb_metrics_add(mx, "nebula_job_evals_dropped_total", NULL, NB_METRIC_COUNTER,
                                        "Evaluations a fault ended (the job recovered without them)");
    nb_metrics_set(mx, rt->m_eval_s, -1);
}

bool nb__coord_eval_due(const nb_coord_rt_t *rt, int64_t done)
{
    int64_t every = rt->b.cfg->job.eval.every_steps;
    return rt->eval_on && ((every > 0 && done % every == 0) || done == rt->job.steps);
}

void nb__coord_eval_start(nb_coord_rt_t *rt, const char *line, bool last)
{
    const nb_cfg_job_t *j = &rt->b.cfg->job;
    rt->eval_in_flight = true;
    rt->eval_at = rt->step + 1;
    rt->eval_last = last;
    snprintf(rt->eval_line, sizeof rt->eval_line, "%s", line);
    rt->t_eval_start = nb_mono_s();
    for (int i = 0; i < rt->job.n_daemons; i++)
        rt->d[i].eval_reported = false;
    Nebula__Plan p;
    nebula__plan__init(&p);
    p.job_id = rt->job.layout.job_id;
    p.step = (uint64_t)rt->eval_at;
    p.eval = true;
    /* nebula-train's eval batches: batch / micro_batches sequences (auto: 1) */
    p.micro_batches = (uint32_t)(j->eval.batches > 0 ? j->eval.batches : 8);
    p.micro_batch_size = (uint32_t)(j->batch / (j->micro_batches > 0 ? j->micro_batches : 1));
    p.schedule = "";
    p.forward_codec = rt->fwd_codec; /* the codec the step just committed used */
    p.backward_codec = "";
    p.seed = rt->job.layout.seed;
    p.attempt = rt->attempt;
    Nebula__Frame f;
    nebula__frame__init(&f);
    f.body_case = NEBULA__FRAME__BODY_PLAN;
    f.plan = &p;
    for (int i = 0; i < rt->job.n_daemons; i++)
        if (nb__coord_send(rt, i, &f, "an evaluation plan"))
            return;
}

void nb__coord_eval_report(nb_coord_rt_t *rt, int di, const Nebula__Report *r)
{
    daemon_slot_t *d = &rt->d[di];
    if (rt->recovering || r->attempt != rt->attempt)
        return; /* of an attempt a fault ended */
    if (!rt->eval_in_flight || r->job_id != rt->job.layout.job_id || (int64_t)r->step != rt->eval_at ||
        d->eval_reported) {
        nb__coord_job_fail(rt, "%s sent an evaluation report for step %llu while %s", rt->job.names[di],
                           (unsigned long long)r->step, rt->eval_in_flight ? "another is in flight" : "none is");
        return;
    }
    int head = rt->job.layout.placement[rt->job.layout.p - 1];
    if (r->has_loss && di != head) {
        nb__coord_job_fail(rt, "%s sent a held-out loss for step %llu but does not host the head (%s does)",
                           rt->job.names[di], (unsigned long long)r->step, rt->job.names[head]);
        return;
    }
    d->eval_reported = true;
    d->eval_has_loss = r->has_loss;
    d->eval_loss = r->loss;
    rt->total_raw += r->bytes_raw;
    rt->total_wire += r->bytes_wire;
    nb_metrics_t *mx = nb_state_metrics(rt->b.state);
    nb_metrics_inc(mx, rt->m_raw, (double)r->bytes_raw);
    nb_metrics_inc(mx, rt->m_wire, (double)r->bytes_wire);
    for (int i = 0; i < rt->job.n_daemons; i++)
        if (!rt->d[i].eval_reported)
            return;
    /* only the head's daemon may carry a loss (checked above); none: NaN */
    double loss = rt->d[head].eval_has_loss ? rt->d[head].eval_loss : NAN;
    rt->eval_in_flight = false;
    if (rt->eval_first_step < 0) {
        rt->eval_first = loss;
        rt->eval_first_step = rt->eval_at;
    }
    rt->eval_last_loss = loss;
    rt->eval_last_step = rt->eval_at;
    if (isfinite(loss))
        nb_metrics_set(mx, rt->m_eval_loss, loss);
    nb_metrics_set(mx, rt->m_eval_step, (double)rt->eval_at);
    nb_metrics_set(mx, rt->m_eval_s, nb_mono_s() - rt->t_eval_start);
    nb_state_job_eval(rt->b.state, loss, rt->eval_at);
    nb_log_info(NULL, "%s val_loss %.4f", rt->eval_line, loss);
    if (rt->eval_last) {
        rt->running = false;
        rt->step++;
        nb__coord_finish_now(rt);
        return;
    }
    nb__coord_next_step(rt, false);
}

void nb__coord_eval_abandon(nb_coord_rt_t *rt)
{
    if (!rt->eval_in_flight)
        return;
    rt->eval_in_flight = false;
    nb_metrics_inc(nb_state_metrics(rt->b.state), rt->m_eval_dropped, 1);
    nb_log_info(NULL, "evaluation after step %lld dropped: a fault ended it (the job recovers without it)",
                (long long)rt->eval_at);
    nb_log_info(NULL, "%s", rt->eval_line);
}

const char *nb__coord_eval_summary(const nb_coord_rt_t *rt, char *buf, size_t len)
{
    buf[0] = '\0';
    if (rt->eval_last_step > 0)
        snprintf(buf, len, ", validation loss %.4f (step %lld) -> %.4f (step %lld)", rt->eval_first,
                 (long long)rt->eval_first_step, rt->eval_last_loss, (long long)rt->eval_last_step);
    return buf;
}
