/*
 * coord_ckpt.c - coordinated checkpoints, the coordinator's side
 * (docs/pipeline.md, "Checkpoints"): at a step boundary it asks every stage
 * daemon to write its parts (Checkpoint SAVE), collects their files and
 * digests (DONE), and writes the manifest last, in its own checkpoint_dir:
 * that is the commit point. It then tells the stages (COMMITTED) so that
 * each keeps a copy next to its files and prunes old ones. At start it
 * finds the newest checkpoint of this run to resume from. Loop thread.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "daemon/clock.h"
#include "daemon/log.h"
#include "daemon/pipeline/coord_rt_internal.h"
#include "daemon/pipeline/rt_common.h"

static json_t *cmd_checkpoint(void *ud, const json_t *req, const nb_status_caller_t *caller, char *err,
                              size_t errlen)
{
    (void)req;
    (void)caller;
    nb_coord_rt_t *rt = ud;
    if (!rt->b.cfg->checkpoint_dir[0]) {
        snprintf(err, errlen, "checkpoint: the coordinator has no checkpoint_dir for the manifests");
        return NULL;
    }
    if (rt->finished || rt->b.failed) {
        snprintf(err, errlen, "checkpoint: the job has ended");
        return NULL;
    }
    rt->ckpt_requested = true;
    return json_pack("{s:b, s:I, s:I}", "requested", 1, "after_step", (json_int_t)(rt->step + 1),
                     "last_complete_step", (json_int_t)rt->last_ckpt);
}

void nb__coord_ckpt_init(nb_coord_rt_t *rt)
{
    nb_metrics_t *mx = nb_state_metrics(rt->b.state);
    rt->m_ckpts = nb_metrics_add(mx, "nebula_job_checkpoints_total", NULL, NB_METRIC_COUNTER,
                                 "Complete checkpoints (manifest written)");
    rt->m_ckpt_failed = nb_metrics_add(mx, "nebula_job_checkpoints_failed_total", NULL, NB_METRIC_COUNTER,
                                       "Checkpoint rounds a stage could not write");
    rt->m_ckpt_s = nb_metrics_add(mx, "nebula_job_checkpoint_seconds", NULL, NB_METRIC_GAUGE,
                                  "Time of the last checkpoint, from the request to the manifest");
    rt->m_ckpt_step = nb_metrics_add(mx, "nebula_job_last_checkpoint_step", NULL, NB_METRIC_GAUGE,
                                     "Steps done at the newest complete checkpoint (-1: none)");
    nb_metrics_set(mx, rt->m_ckpt_s, -1);
    nb_metrics_set(mx, rt->m_ckpt_step, (double)rt->last_ckpt);
    nb_status_server_t *srv = nb_service_status_server(rt->b.svc);
    if (srv && nb_status_server_add(srv, "checkpoint", true, cmd_checkpoint, rt))
        nb_log_warn(NULL, "cannot register the checkpoint command on the status socket");
}

/* The first field in which checkpoint meta m differs from this job, or NULL. */
static const char *other_run(const nb_coord_rt_t *rt, const nb_ckpt_meta_t *m)
{
    const nb_pipe_layout_t *l = &rt->job.layout;
    char a[17], b[17];
    nb_job_model_digest(&l->model, a);
    nb_job_model_digest(&m->model, b);
    if (strcmp(a, b) != 0)
        return "job.model";
    if (m->seed != l->seed)
        return "job.seed";
    if (m->seq_len != l->seq_len)
        return "job.seq_len";
    if (m->batch != (int)rt->b.cfg->job.batch)
        return "job.batch";
    return NULL;
}

int nb__coord_ckpt_start(nb_coord_rt_t *rt, uint64_t *job_id, char *err, size_t errlen)
{
    const nb_cfg_checkpoint_t *c = &rt->b.cfg->job.checkpoint;
    const char *root = rt->b.cfg->checkpoint_dir;
    rt->ckpt_enabled = c->every_steps > 0 || c->every_seconds > 0;
    rt->t_last_ckpt = nb_mono_s();
    if (rt->ckpt_enabled && !root[0]) {
        snprintf(err, errlen, "job.checkpoint asks for checkpoints but the coordinator has no checkpoint_dir "
                              "(where it writes their manifests)");
        return NB_EINVAL;
    }
    if (!root[0])
        return 0;
    int64_t steps[1];
    int n = nb_ckpt_list(root, steps, 1);
    if (n < 0) {
        snprintf(err, errlen, "checkpoint_dir %.400s: cannot list it", root);
        return NB_EINVAL;
    }
    if (n == 0)
        return 0;
    char dir[NB_CFG_PATH_MAX + 32], why[512];
    nb_ckpt_step_dir(root, steps[0], dir, sizeof dir);
    nb_ckpt_manifest_t m;
    if (nb_ckpt_manifest_read(dir, &m, why, sizeof why) != 0) {
        snprintf(err, errlen, "%.400s", why);
        return NB_EINVAL;
    }
    if (!c->resume) {
        snprintf(err, errlen, "checkpoint_dir %.300s holds checkpoints (newest: step %lld) and "
                 "job.checkpoint.resume is false: move them away, or resume", root, (long long)m.meta.step);
        return NB_EINVAL;
    }
    const char *field = other_run(rt, &m.meta);
    if (field) {
        snprintf(err, errlen, "checkpoint_dir %.300s holds a checkpoint of another run (%s differs; newest: "
                 "step %lld of job %llu): point checkpoint_dir elsewhere, or set job.checkpoint.resume: false "
                 "after moving it away", root, field, (long long)m.meta.step, (unsigned long long)m.meta.job_id);
        return NB_EINVAL;
    }
    size_t len;
    rt->last_manifest = nb_ckpt_manifest_format(&m, &len);
    if (!rt->last_manifest) {
        snprintf(err, errlen, "out of memory");
        return NB_ENOMEM;
    }
    rt->last_ckpt = m.meta.step;
    rt->high_water = m.meta.step;
    *job_id = m.meta.job_id;
    nb_log_info(NULL, "resuming job %llu from its checkpoint at step %lld of %lld (%s)",
                (unsigned long long)m.meta.job_id, (long long)m.meta.step, (long long)rt->job.steps, dir);
    return 0;
}

static void send_ckpt(nb_coord_rt_t *rt, int action, uint64_t step, const char *manifest)
{
    Nebula__Frame f;
    Nebula__Checkpoint ck;
    nebula__frame__init(&f);
    nebula__checkpoint__init(&ck);
    ck.action = (Nebula__Checkpoint__Action)action;
    ck.job_id = rt->job.layout.job_id;
    ck.step = step;
    ck.attempt = rt->attempt;
    ck.manifest = (char *)(manifest ? manifest : "");
    ck.keep = (uint32_t)rt->b.cfg->job.checkpoint.keep;
    f.body_case = NEBULA__FRAME__BODY_CHECKPOINT;
    f.checkpoint = &ck;
    for (int i = 0; i < rt->job.n_daemons; i++)
        if (nb__coord_send(rt, i, &f, "a checkpoint request"))
            return;
}

void nb__coord_ckpt_maybe(nb_coord_rt_t *rt, bool last)
{
    const nb_cfg_checkpoint_t *c = &rt->b.cfg->job.checkpoint;
    int64_t n = rt->step + 1; /* steps done once this Commit is applied */
    bool due = rt->ckpt_requested || (c->every_steps > 0 && n % c->every_steps == 0) ||
               (c->every_seconds > 0 && nb_mono_s() - rt->t_last_ckpt >= c->every_seconds) ||
               (last && rt->ckpt_enabled);
    if (!due || rt->recovering || n == rt->last_ckpt)
        return;
    if (rt->ckpt_inflight >= 0 && last) {
        rt->ckpt_final_pending = true; /* taken once the one in flight is complete */
        return;
    }
    if (rt->ckpt_inflight >= 0) {
        nb_log_debug(NULL, "checkpoint due at step %lld: the one of step %lld is still being written",
                     (long long)n, (long long)rt->ckpt_inflight);
        return;
    }
    rt->ckpt_requested = false;
    rt->ckpt_inflight = n;
    rt->t_ckpt_start = nb_mono_s();
    rt->t_last_ckpt = rt->t_ckpt_start;
    for (int i = 0; i < rt->job.n_daemons; i++) {
        rt->d[i].ckpt_done = false;
        rt->d[i].n_files = 0;
    }
    nb_log_info(NULL, "checkpoint at step %lld: asking the stages", (long long)n);
    send_ckpt(rt, NEBULA__CHECKPOINT__ACTION__CHECKPOINT_SAVE, (uint64_t)n, NULL);
}

void nb__coord_ckpt_abandon(nb_coord_rt_t *rt)
{
    rt->ckpt_final_pending = false;
    if (rt->ckpt_inflight >= 0)
        nb_log_info(NULL, "checkpoint at step %lld abandoned", (long long)rt->ckpt_inflight);
    rt->ckpt_inflight = -1;
}

static bool file_ok(const Nebula__CheckpointFile *f)
{
    if (!f->name || !f->sha256 || strlen(f->name) == 0 || strlen(f->name) >= NB_CKPT_FILE_NAME_MAX ||
        strchr(f->name, '/') || strcmp(f->name, NB_CKPT_MANIFEST) == 0 || f->name[0] == '.' ||
        strlen(f->sha256) != 64)
        return false;
    for (const char *p = f->sha256; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

/* Every daemon wrote its files: the manifest makes the checkpoint exist. */
static void commit_round(nb_coord_rt_t *rt)
{
    int64_t step = rt->ckpt_inflight;
    rt->ckpt_inflight = -1;
    nb_ckpt_manifest_t *m = calloc(1, sizeof *m);
    if (!m) {
        nb_metrics_inc(nb_state_metrics(rt->b.state), rt->m_ckpt_failed, 1);
        nb_log_error(NULL, "checkpoint at step %lld: cannot write its manifest: out of memory", (long long)step);
        nb__coord_repart_ckpt_done(rt, step, false); /* a move waiting for it gives up, not stalls */
        return;
    }
    const nb_pipe_layout_t *l = &rt->job.layout;
    m->meta = (nb_ckpt_meta_t){ .job_id = l->job_id, .step = step, .optim_steps = step - rt->skipped_total,
                                .seed = l->seed, .batch = (int)rt->b.cfg->job.batch, .micro_batches = rt->m,
                                .seq_len = l->seq_len, .model = l->model };
    uint64_t bytes = 0;
    for (int i = 0; i < rt->job.n_daemons; i++)
        for (int k = 0; k < rt->d[i].n_files && m->n_files < NB_CKPT_MAX_FILES; k++) {
            m->files[m->n_files++] = rt->d[i].files[k];
            bytes += rt->d[i].files[k].bytes;
        }
    char dir[NB_CFG_PATH_MAX + 32], err[512];
    const char *root = rt->b.cfg->checkpoint_dir;
    nb_ckpt_step_dir(root, step, dir, sizeof dir);
    int rc = 0;
    if ((mkdir(root, 0750) != 0 && errno != EEXIST) || (mkdir(dir, 0750) != 0 && errno != EEXIST)) {
        snprintf(err, sizeof err, "%.400s: cannot create: %s", dir, strerror(errno));
        rc = NB_EIO;
    }
    if (rc == 0)
        rc = nb_ckpt_manifest_write(dir, m, err, sizeof err);
    size_t len = 0;
    char *json = rc == 0 ? nb_ckpt_manifest_format(m, &len) : NULL;
    free(m);
    if (rc || !json) {
        nb_metrics_inc(nb_state_metrics(rt->b.state), rt->m_ckpt_failed, 1);
        nb_log_error(NULL, "checkpoint at step %lld: cannot write its manifest: %s", (long long)step,
                     rc ? err : "out of memory");
        free(json);
        nb__coord_repart_ckpt_done(rt, step, false);
        return;
    }
    free(rt->last_manifest);
    rt->last_manifest = json;
    rt->last_ckpt = step;
    double secs = nb_mono_s() - rt->t_ckpt_start;
    nb_metrics_t *mx = nb_state_metrics(rt->b.state);
    nb_metrics_inc(mx, rt->m_ckpts, 1);
    nb_metrics_set(mx, rt->m_ckpt_s, secs);
    nb_metrics_set(mx, rt->m_ckpt_step, (double)step);
    nb_log_info(NULL, "checkpoint at step %lld complete: %.1f MB in the stages' checkpoint_dir, manifest %s "
                "(%.2f s)", (long long)step, (double)bytes / 1e6, dir, secs);
    send_ckpt(rt, NEBULA__CHECKPOINT__ACTION__CHECKPOINT_COMMITTED, (uint64_t)step, json);
    if (nb_ckpt_prune(root, (int)rt->b.cfg->job.checkpoint.keep, err, sizeof err) < 0)
        nb_log_warn(NULL, "checkpoints: cannot prune %s: %s", root, err);
    if (rt->ckpt_final_pending) {
        /* the stages hold the final state until they stop: checkpoint it */
        rt->ckpt_final_pending = false;
        int64_t keep_step = rt->step;
        rt->step = rt->job.steps - 1;
        nb__coord_ckpt_maybe(rt, true);
        rt->step = keep_step;
    }
    nb__coord_maybe_finish(rt);
    nb__coord_repart_ckpt_done(rt, step, true); /* a move waiting for this checkpoint */
}

void nb__coord_ckpt_done(nb_coord_rt_t *rt, int i, const Nebula__Checkpoint *ck)
{
    if (ck->action != NEBULA__CHECKPOINT__ACTION__CHECKPOINT_DONE || rt->ckpt_inflight < 0 ||
        ck->attempt != rt->attempt || (int64_t)ck->step != rt->ckpt_inflight || ck->job_id != rt->job.layout.job_id)
        return; /* of a round that ended */
    daemon_slot_t *d = &rt->d[i];
    if (!ck->ok) {
        nb_metrics_inc(nb_state_metrics(rt->b.state), rt->m_ckpt_failed, 1);
        nb_log_error(rt->job.names[i], "checkpoint at step %lld failed: %s; the job goes on without it",
                     (long long)rt->ckpt_inflight, ck->message ? ck->message : "");
        int64_t failed = rt->ckpt_inflight;
        rt->ckpt_inflight = -1;
        nb__coord_maybe_finish(rt);
        nb__coord_repart_ckpt_done(rt, failed, false);
        return;
    }
    if (ck->n_files > NB_SCHED_MAX_STAGES) {
        nb_log_error(rt->job.names[i], "checkpoint at step %lld: %zu files, more than a daemon may write",
                     (long long)rt->ckpt_inflight, ck->n_files);
        int64_t failed = rt->ckpt_inflight;
        rt->ckpt_inflight = -1;
        nb__coord_repart_ckpt_done(rt, failed, false);
        return;
    }
    d->n_files = 0;
    for (size_t k = 0; k < ck->n_files; k++) {
        const Nebula__CheckpointFile *f = ck->files[k];
        if (!file_ok(f)) {
            nb_log_error(rt->job.names[i], "checkpoint at step %lld: a malformed file entry; round abandoned",
                         (long long)rt->ckpt_inflight);
            int64_t failed = rt->ckpt_inflight;
            rt->ckpt_inflight = -1;
            nb__coord_repart_ckpt_done(rt, failed, false);
            return;
        }
        nb_ckpt_file_t *o = &d->files[d->n_files++];
        memset(o, 0, sizeof *o);
        snprintf(o->name, sizeof o->name, "%s", f->name);
        snprintf(o->sha256, sizeof o->sha256, "%s", f->sha256);
        o->bytes = f->bytes;
        o->stages = f->stages;
    }
    d->ckpt_done = true;
    for (int k = 0; k < rt->job.n_daemons; k++)
        if (!rt->d[k].ckpt_done)
            return;
    commit_round(rt);
}
