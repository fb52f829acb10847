/*
 * stage_ckpt.c - a stage daemon's share of coordinated checkpoints
 * (docs/pipeline.md, "Checkpoints"): at a step boundary it snapshots its
 * parts in memory and writes them on a writer thread while training goes
 * on, reports the files to the coordinator, keeps a copy of the manifest the
 * coordinator commits, prunes old checkpoints, and restores its parts from a
 * checkpoint when a job resumes. Format: daemon/train/checkpoint.h.
 * Threads: the compute thread calls in; the writer thread only writes files
 * and posts OUT_CKPT to the outbox.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "daemon/clock.h"
#include "daemon/log.h"
#include "daemon/pipeline/stage_rt_internal.h"
#include "kernels/cpu_level.h"

/* One write in progress: the snapshots of the hosted parts. */
typedef struct {
    nb_stage_rt_t *rt;
    char dir[NB_CFG_PATH_MAX + 32];
    nb_ckpt_meta_t meta;
    uint32_t attempt;
    int n;
    int stage[NB_SCHED_MAX_STAGES];
    nb_ckpt_snap_t *snap[NB_SCHED_MAX_STAGES]; /* the compute thread's, borrowed */
} write_job_t;

static void post_done(nb_stage_rt_t *rt, const write_job_t *w, const ckpt_done_t *d, const char *msg)
{
    out_item_t *o = calloc(1, sizeof *o);
    if (!o)
        return;
    o->kind = OUT_CKPT;
    o->ckpt = *d;
    o->ckpt.step = (uint64_t)w->meta.step;
    o->ckpt.attempt = w->attempt;
    snprintf(o->text, sizeof o->text, "%s", msg ? msg : "");
    if (nb_mbox_push(rt->outbox, o) != 0) {
        free(o);
        return;
    }
    uv_async_send(&rt->wake);
}

static void *writer_main(void *arg)
{
    write_job_t *w = arg;
    nb_stage_rt_t *rt = w->rt;
    ckpt_done_t d;
    memset(&d, 0, sizeof d);
    char err[512] = "";
    uint64_t t0 = nb_mono_ns();
    uint64_t bytes = 0;
    /* a directory of an earlier round of this step (a recovery ran it
     * again) loses its manifest copy first: the coordinator's is the one */
    int rc = nb_ckpt_begin(w->dir, err, sizeof err);
    for (int i = 0; i < w->n && rc == 0; i++) {
        char name[NB_CKPT_FILE_NAME_MAX];
        snprintf(name, sizeof name, "stage-%d.safetensors", w->stage[i]);
        rc = nb_ckpt_write_file(w->dir, name, &w->snap[i], 1, &w->meta, &d.files[i], err, sizeof err);
        if (rc == 0) {
            d.files[i].stages = 1ull << w->stage[i];
            bytes += d.files[i].bytes;
            d.n_files = i + 1;
        }
    }
    d.ok = rc == 0;
    if (rc) {
        nb_log_error(NULL, "checkpoint at step %lld: %s", (long long)w->meta.step, err);
    } else {
        nb_metrics_inc(nb_state_metrics(rt->b.state), rt->m_ckpts, (double)d.n_files);
        nb_log_info(NULL, "checkpoint at step %lld: wrote %.1f MB in %.2f s to %s", (long long)w->meta.step,
                    (double)bytes / 1e6, (double)(nb_mono_ns() - t0) / 1e9, w->dir);
    }
    post_done(rt, w, &d, rc ? err : NULL);
    free(w);
    return NULL;
}

void nb__stage_ckpt_join(compute_t *c)
{
    if (c->writer_started) {
        pthread_join(c->writer, NULL);
        c->writer_started = false;
    }
}

void nb__stage_ckpt_release(compute_t *c)
{
    nb__stage_ckpt_join(c);
    for (int i = 0; i < NB_SCHED_MAX_STAGES; i++) {
        nb_ckpt_snap_free(c->snap[i]);
        c->snap[i] = NULL;
    }
}

void nb__stage_ckpt_save(nb_stage_rt_t *rt, compute_t *c, const Nebula__Checkpoint *ck)
{
    char err[512] = "";
    ckpt_done_t d;
    memset(&d, 0, sizeof d);
    write_job_t *w = calloc(1, sizeof *w);
    if (!w)
        return;
    w->rt = rt;
    w->attempt = ck->attempt;
    w->meta.step = (int64_t)ck->step;
    if (ck->step != c->committed || c->prepared || !rt->b.cfg->checkpoint_dir[0]) {
        snprintf(err, sizeof err, "%s: asked for a checkpoint at step %llu, but this daemon %s", rt->b.cfg->name,
                 (unsigned long long)ck->step,
                 !rt->b.cfg->checkpoint_dir[0] ? "has no checkpoint_dir" : "is at another step");
        nb_log_error(NULL, "%s", err);
        post_done(rt, w, &d, err);
        free(w);
        return;
    }
    /* one write at a time: a slow disk slows the checkpoints, not the steps
     * between them */
    nb__stage_ckpt_join(c);
    const nb_pipe_layout_t *l = &rt->job.layout;
    nb_ckpt_step_dir(rt->b.cfg->checkpoint_dir, (int64_t)ck->step, w->dir, sizeof w->dir);
    w->meta = (nb_ckpt_meta_t){ .job_id = l->job_id, .step = (int64_t)ck->step, .seed = l->seed,
                                .batch = l->micro_batch_size * (c->last_m > 0 ? c->last_m : 1),
                                .micro_batches = c->last_m > 0 ? c->last_m : 1, .seq_len = l->seq_len,
                                .model = l->model };
    nb_cpu_describe(w->meta.kernels, sizeof w->meta.kernels);
    if (mkdir(rt->b.cfg->checkpoint_dir, 0750) != 0 && errno != EEXIST) {
        snprintf(err, sizeof err, "%.300s: cannot create: %s", rt->b.cfg->checkpoint_dir, strerror(errno));
        post_done(rt, w, &d, err);
        free(w);
        return;
    }
    /* the copy the step waits for: into the last checkpoint's snapshot
     * when there is one (its pages are mapped already), else a new one */
    int rc = 0;
    for (int i = 0; i < nb_host_num_stages(c->host) && rc == 0; i++) {
        nb_part_t *part = nb_host_part(c->host, i);
        nb_optim_t *opt = nb_host_optim(c->host, i);
        w->stage[i] = nb_host_stage(c->host, i);
        if (c->snap[i] && nb_ckpt_snapshot_refresh(c->snap[i], part, opt, err, sizeof err) != 0) {
            nb_ckpt_snap_free(c->snap[i]);
            c->snap[i] = NULL;
        }
        if (!c->snap[i])
            rc = nb_ckpt_snapshot(part, opt, &c->snap[i], err, sizeof err);
        if (rc == 0 && (rc = nb__stage_streams_snapshot(c->host, i, nb_stage_codec_backend(nb_host_codec(c->host)), c->snap[i])))
            snprintf(err, sizeof err, "stage %d: codec stream state: %s", w->stage[i], nb_strerror(rc));
        if (rc == 0) {
            w->snap[i] = c->snap[i];
            w->n = i + 1;
        }
    }
    if (rc == 0)
        w->meta.optim_steps = nb_optim_steps(nb_host_optim(c->host, 0));
    if (rc || pthread_create(&c->writer, NULL, writer_main, w) != 0) {
        if (!rc)
            snprintf(err, sizeof err, "cannot start the checkpoint writer thread");
        nb_log_error(NULL, "checkpoint at step %llu: %s", (unsigned long long)ck->step, err);
        post_done(rt, w, &d, err);
        free(w);
        return;
    }
    c->writer_started = true;
}

void nb__stage_ckpt_committed(nb_stage_rt_t *rt, compute_t *c, const Nebula__Checkpoint *ck)
{
    char err[512], dir[NB_CFG_PATH_MAX + 32];
    if (!rt->b.cfg->checkpoint_dir[0] || !ck->manifest)
        return;
    /* the files must be on disk before their manifest is */
    nb__stage_ckpt_join(c);
    nb_ckpt_manifest_t m;
    if (nb_ckpt_manifest_parse(ck->manifest, strlen(ck->manifest), "the coordinator's manifest", &m, err,
                               sizeof err) != 0 || (uint64_t)m.meta.step != ck->step) {
        nb_log_warn(NULL, "checkpoint at step %llu: the coordinator's manifest does not parse: %s",
                    (unsigned long long)ck->step, err);
        return;
    }
    nb_ckpt_step_dir(rt->b.cfg->checkpoint_dir, m.meta.step, dir, sizeof dir);
    if (nb_ckpt_manifest_write(dir, &m, err, sizeof err) != 0)
        nb_log_warn(NULL, "checkpoint at step %lld: cannot keep the manifest: %s", (long long)m.meta.step, err);
    int keep = ck->keep > 0 ? (int)ck->keep : 3;
    if (nb_ckpt_prune(rt->b.cfg->checkpoint_dir, keep, err, sizeof err) < 0)
        nb_log_warn(NULL, "checkpoints: cannot prune %s: %s", rt->b.cfg->checkpoint_dir, err);
}

int nb__stage_ckpt_restore(nb_stage_rt_t *rt, nb_host_t *host, const char *manifest_json, uint64_t step,
                           char *err, size_t errlen)
{
    char dir[NB_CFG_PATH_MAX + 32], why[512];
    if (!rt->b.cfg->checkpoint_dir[0]) {
        snprintf(err, errlen, "the job resumes from checkpoint step %llu, but this daemon has no checkpoint_dir",
                 (unsigned long long)step);
        return NB_EINVAL;
    }
    nb_ckpt_manifest_t m;
    int rc = nb_ckpt_manifest_parse(manifest_json ? manifest_json : "", manifest_json ? strlen(manifest_json) : 0,
                                    "the coordinator's manifest", &m, why, sizeof why);
    if (rc) {
        snprintf(err, errlen, "checkpoint at step %llu: %s", (unsigned long long)step, why);
        return rc;
    }
    if ((uint64_t)m.meta.step != step) {
        snprintf(err, errlen, "the coordinator's manifest is of step %lld, not %llu", (long long)m.meta.step,
                 (unsigned long long)step);
        return NB_EFORMAT;
    }
    nb_ckpt_step_dir(rt->b.cfg->checkpoint_dir, m.meta.step, dir, sizeof dir);
    for (int i = 0; i < nb_host_num_stages(host); i++) {
        rc = nb_ckpt_load_part(dir, &m, nb_host_part(host, i), nb_host_optim(host, i), why, sizeof why);
        if (rc == 0)
            rc = nb__stage_streams_restore(host, i, nb_stage_codec_backend(nb_host_codec(host)), dir, &m,
                                           why, sizeof why);
        if (rc) {
            snprintf(err, errlen, "stage %d from checkpoint %s: %s", nb_host_stage(host, i), dir, why);
            return rc;
        }
    }
    if ((rc = nb_host_save_streams(host))) {
        snprintf(err, errlen, "checkpoint %s: codec streams: %s", dir, nb_strerror(rc));
        return rc;
    }
    /* the files held what the manifest says: keep it with them */
    nb_ckpt_manifest_t have;
    if (nb_ckpt_manifest_read(dir, &have, why, sizeof why) != 0 &&
        nb_ckpt_manifest_write(dir, &m, why, sizeof why) != 0)
        nb_log_warn(NULL, "checkpoint at step %lld: cannot keep the manifest: %s", (long long)m.meta.step, why);
    nb_log_info(NULL, "restored %d stage%s from %s (step %lld)", nb_host_num_stages(host),
                nb_host_num_stages(host) == 1 ? "" : "s", dir, (long long)m.meta.step);
    return 0;
}
