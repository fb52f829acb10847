/* status_cmds.c - status, metrics, trace and stop handlers; see status_cmds.h. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "daemon/log.h"
#include "daemon/core/version.h"
#include "kernels/cpu_level.h"
#include "daemon/status/status_cmds.h"
#include "kernels/common.h"

/* NaN and negative "unknown" values become JSON null. */
static json_t *num_or_null(double v, bool negative_unknown)
{
    if (isnan(v) || isinf(v) || (negative_unknown && v < 0))
        return json_null();
    return json_real(v);
}

/* The "memory" object: model state, heap and resident set, in bytes, and
 * a stage's compute device ("device": null elsewhere; free and total null
 * when the backend cannot tell). */
static json_t *memory_json(const nb_mem_report_t *m)
{
    uint64_t other = m->rss > m->model_total ? m->rss - m->model_total : 0;
    const nb_mem_device_t *d = &m->device;
    json_t *dev = d->name[0] ? json_pack("{s:s, s:o, s:o}", "name", d->name, "free",
                                         d->total ? json_integer((json_int_t)d->free) : json_null(), "total",
                                         d->total ? json_integer((json_int_t)d->total) : json_null())
                             : json_null();
    if (!dev)
        return NULL;
    return json_pack("{s:o, s:{s:I, s:I, s:I, s:I, s:I}, s:{s:I, s:I, s:I}, s:I, s:I, s:I, s:I, s:I, s:i}", "device", dev,
                     "model",
                     "weights", (json_int_t)m->model.weights, "gradients", (json_int_t)m->model.gradients,
                     "optimizer", (json_int_t)m->model.optimizer, "activations", (json_int_t)m->model.activations,
                     "total", (json_int_t)m->model_total, "heap", "in_use", (json_int_t)m->heap_in_use, "free",
                     (json_int_t)m->heap_free, "mmapped", (json_int_t)m->heap_mmapped, "rss", (json_int_t)m->rss,
                     "peak_rss", (json_int_t)m->peak_rss, "rss_anon", (json_int_t)m->rss_anon, "rss_file",
                     (json_int_t)m->rss_file, "other", (json_int_t)other, "threads", (int)m->threads);
}

static json_t *links_json(const nb_state_snapshot_t *s)
{
    json_t *links = json_array();
    for (int i = 0; links && i < s->n_links; i++) {
        const nb_link_info_t *l = &s->links[i];
        double mbps = l->probe_mbps > 0 ? l->probe_mbps : l->passive_mbps;
        json_array_append_new(links, json_pack("{s:s, s:s, s:o, s:o, s:o, s:o, s:I}", "from", l->from, "to", l->to,
                                               "rtt_ms", num_or_null(l->rtt_ms, true), "mbps",
                                               num_or_null(mbps, true), "probe_mbps",
                                               num_or_null(l->probe_mbps, true), "passive_mbps",
                                               num_or_null(l->passive_mbps, true), "bytes",
                                               (json_int_t)l->bytes));
    }
    return links;
}

json_t *nb_status_to_json(const nb_state_snapshot_t *s)
{
    json_t *peers = json_array();
    for (int i = 0; peers && i < s->n_peers; i++) {
        const nb_peer_info_t *p = &s->peers[i];
        json_array_append_new(peers, json_pack("{s:s, s:s, s:s, s:s, s:o, s:o, s:I, s:I, s:s}", "name", p->name,
                                               "role", p->role, "address", p->address, "state", p->state,
                                               "rtt_ms", num_or_null(p->rtt_ms, true), "bandwidth_mbps",
                                               num_or_null(p->bandwidth_mbps, true), "bytes_sent",
                                               (json_int_t)p->bytes_sent, "bytes_received",
                                               (json_int_t)p->bytes_received, "tls", p->tls));
    }
    json_t *job = json_null();
    const nb_job_info_t *j = &s->job;
    if (j->active) {
        double ratio = j->bytes_wire ? (double)j->bytes_raw / (double)j->bytes_wire : NAN;
        job = json_pack("{s:I, s:I, s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:o, s:{s:s, s:s}, s:I, s:s, s:s}", "step",
                        (json_int_t)j->step, "steps", (json_int_t)j->steps, "loss", num_or_null(j->loss, false),
                        "tokens_per_s", num_or_null(j->tokens_per_s, true), "step_time_s",
                        num_or_null(j->step_time_s, true), "bubble_measured", num_or_null(j->bubble_measured, true),
                        "bubble_predicted", num_or_null(j->bubble_predicted, true), "bytes_raw",
                        (json_int_t)j->bytes_raw, "bytes_wire", (json_int_t)j->bytes_wire, "compression_ratio",
                        num_or_null(ratio, false), "codecs", "forward", j->codec_forward, "backward",
                        j->codec_backward, "micro_batches", (json_int_t)j->micro_batches, "schedule", j->schedule,
                        "layers", j->layers);
        if (job && j->replicas > 0)
            json_object_set_new(job, "replicas", json_integer(j->replicas));
        /* the held-out loss and its step: null until the first evaluation */
        if (job && json_object_set_new(job, "eval_loss", num_or_null(j->eval_step > 0 ? j->eval_loss : NAN, false)))
            job = (json_decref(job), NULL);
        if (job && json_object_set_new(job, "eval_step", j->eval_step > 0 ? json_integer(j->eval_step) : json_null()))
            job = (json_decref(job), NULL);
    }
    json_t *links = links_json(s), *memory = memory_json(&s->memory);
    if (!peers || !job || !links || !memory) {
        json_decref(peers);
        json_decref(job);
        json_decref(links);
        json_decref(memory);
        return NULL;
    }
    nb_cpu_level_t level;
    const char *level_name = nb_cpu_level_select(&level, NULL) == 0 ? nb_cpu_level_name(level) : "invalid";
    return json_pack("{s:s, s:s, s:s, s:{s:s, s:s}, s:i, s:f, s:f, s:s, s:s, s:s, s:s, s:o, s:o, s:o, s:o, s:s}", "name", s->name,
                     "role", nb_cfg_role_name(s->role), "version", NB_VERSION, "kernels", "cpu_level", level_name,
                     "blas_core", nb_cpu_blas_core(), "pid", s->pid, "uptime_s", s->uptime_s, "started_at",
                     s->started_at, "state", nb_svc_state_name(s->state), "detail", s->detail, "listen", s->listen,
                     "status_socket", s->status_socket, "peers", peers, "job", job, "links", links,
                     "memory", memory, "kernel_tls", s->kernel_tls);
}

/* The nebula_memory_* gauges: name, labels, help; set from one sample. */
static const struct {
    const char *name, *labels, *help;
} mem_series[NB_STATUS_MEM_SERIES] = {
    { "nebula_memory_rss_bytes", NULL, "Resident memory of the daemon (VmRSS)" },
    { "nebula_memory_peak_rss_bytes", NULL, "Peak resident memory of the daemon (VmHWM)" },
    { "nebula_memory_rss_file_bytes", NULL, "Resident memory backed by files (shared libraries)" },
    { "nebula_memory_heap_in_use_bytes", NULL, "malloc blocks in use, all arenas (mallinfo2)" },
    { "nebula_memory_heap_free_bytes", NULL, "free blocks malloc keeps (mallinfo2 fordblks)" },
    { "nebula_memory_model_bytes", "part=\"weights\"", "Model state held by this daemon, by part" },
    { "nebula_memory_model_bytes", "part=\"gradients\"", "Model state held by this daemon, by part" },
    { "nebula_memory_model_bytes", "part=\"optimizer\"", "Model state held by this daemon, by part" },
    { "nebula_memory_model_bytes", "part=\"activations\"", "Model state held by this daemon, by part" },
    { "nebula_memory_threads", NULL, "Threads of the daemon process" },
    { "nebula_memory_device_free_bytes", NULL, "Free memory of the stage's compute device (cudaMemGetInfo; CPU: "
      "MemAvailable)" },
    { "nebula_memory_device_total_bytes", NULL, "Total memory of the stage's compute device" },
};

static void set_memory_metrics(nb_status_ctx_t *ctx, nb_metrics_t *m, const nb_mem_report_t *r)
{
    const double v[NB_STATUS_MEM_SERIES] = { (double)r->rss,          (double)r->peak_rss,          (double)r->rss_file,
                           (double)r->heap_in_use,  (double)r->heap_free,         (double)r->model.weights,
                           (double)r->model.gradients, (double)r->model.optimizer, (double)r->model.activations,
                           (double)r->threads, (double)r->device.free, (double)r->device.total };
    for (int i = 0; i < NB_STATUS_MEM_SERIES; i++) /* device gauges: 0 without a device */
        if (ctx->m_mem[i] >= 0)
            nb_metrics_set(m, ctx->m_mem[i], v[i]);
}

static json_t *cmd_status(void *ud, const json_t *req, const nb_status_caller_t *caller, char *err, size_t errlen)
{
    nb_status_ctx_t *ctx = ud;
    nb_metrics_inc(nb_state_metrics(ctx->state), ctx->m_requests, 1);
    nb_state_snapshot_t *snap = malloc(sizeof *snap);
    if (!snap) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    nb_state_snapshot(ctx->state, snap);
    json_t *r = nb_status_to_json(snap);
    free(snap);
    if (!r)
        snprintf(err, errlen, "out of memory");
    return r;
}

static json_t *cmd_metrics(void *ud, const json_t *req, const nb_status_caller_t *caller, char *err, size_t errlen)
{
    nb_status_ctx_t *ctx = ud;
    nb_metrics_t *m = nb_state_metrics(ctx->state);
    nb_metrics_inc(m, ctx->m_requests, 1);
    nb_state_snapshot_t *snap = malloc(sizeof *snap);
    if (snap) {
        nb_state_snapshot(ctx->state, snap);
        nb_metrics_set(m, ctx->m_uptime, snap->uptime_s);
        set_memory_metrics(ctx, m, &snap->memory);
        free(snap);
    }
    size_t len;
    char *text = nb_metrics_render(m, &len);
    if (!text) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    json_t *r = json_pack("{s:s, s:s%}", "format", "prometheus-text-0.0.4", "text", text, len);
    free(text);
    return r;
}

static json_t *cmd_trace(void *ud, const json_t *req, const nb_status_caller_t *caller, char *err, size_t errlen)
{
    nb_status_ctx_t *ctx = ud;
    nb_metrics_inc(nb_state_metrics(ctx->state), ctx->m_requests, 1);
    int64_t steps = ctx->trace_steps;
    json_t *js = json_object_get(req, "steps");
    if (js) {
        if (!json_is_integer(js) || json_integer_value(js) < 0) {
            snprintf(err, errlen, "\"steps\" must be a non-negative integer");
            return NULL;
        }
        steps = json_integer_value(js);
    }
    json_t *t = nb_trace_to_json(nb_state_trace(ctx->state), steps);
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    return json_pack("{s:o}", "trace", t);
}

static json_t *cmd_stop(void *ud, const json_t *req, const nb_status_caller_t *caller, char *err, size_t errlen)
{
    nb_status_ctx_t *ctx = ud;
    nb_metrics_inc(nb_state_metrics(ctx->state), ctx->m_requests, 1);
    if (!ctx->stop) {
        snprintf(err, errlen, "this daemon cannot be stopped through its socket");
        return NULL;
    }
    char why[96];
    snprintf(why, sizeof why, "stop requested on the status socket by uid %u pid %d", (unsigned)caller->uid,
             (int)caller->pid);
    ctx->stop(ctx->stop_ud, why);
    return json_pack("{s:b}", "stopping", 1);
}

int nb_status_cmds_register(nb_status_server_t *srv, nb_status_ctx_t *ctx)
{
    nb_metrics_t *m = nb_state_metrics(ctx->state);
    nb_state_snapshot_t *snap = malloc(sizeof *snap);
    if (!snap)
        return NB_ENOMEM;
    nb_state_snapshot(ctx->state, snap);
    char labels[224];
    nb_cpu_level_t level;
    snprintf(labels, sizeof labels, "name=\"%s\",role=\"%s\",version=\"%s\",cpu_level=\"%s\"", snap->name,
             nb_cfg_role_name(snap->role), NB_VERSION,
             nb_cpu_level_select(&level, NULL) == 0 ? nb_cpu_level_name(level) : "invalid");
    free(snap);
    ctx->m_info = nb_metrics_add(m, "nebula_info", labels, NB_METRIC_GAUGE, "Daemon identity; always 1");
    ctx->m_uptime = nb_metrics_add(m, "nebula_uptime_seconds", NULL, NB_METRIC_GAUGE, "Seconds since the daemon started");
    ctx->m_requests = nb_metrics_add(m, "nebula_status_requests_total", NULL, NB_METRIC_COUNTER,
                                     "Commands served on the status socket");
    if (ctx->m_info < 0 || ctx->m_uptime < 0 || ctx->m_requests < 0)
        return NB_EINVAL;
    for (int i = 0; i < NB_STATUS_MEM_SERIES; i++)
        if ((ctx->m_mem[i] = nb_metrics_add(m, mem_series[i].name, mem_series[i].labels, NB_METRIC_GAUGE,
                                            mem_series[i].help)) < 0)
            return NB_EINVAL;
    nb_metrics_set(m, ctx->m_info, 1);
    int rc = nb_status_server_add(srv, "status", false, cmd_status, ctx);
    if (!rc)
        rc = nb_status_server_add(srv, "metrics", false, cmd_metrics, ctx);
    if (!rc)
        rc = nb_status_server_add(srv, "trace", false, cmd_trace, ctx);
    if (!rc)
        rc = nb_status_server_add(srv, "stop", true, cmd_stop, ctx);
    return rc;
}
