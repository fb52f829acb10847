/*
 * service_reload.c - SIGHUP: re-read the config file; apply what can change
 * while running (log level now; the runtime's reload hook gets the new file,
 * e.g. for certificates) and name every changed key that needs a restart.
 * A file that no longer loads changes nothing and is reported.
 *
 * The file is read and parsed on a libuv worker thread (uv_queue_work), never
 * on the loop thread: whatever the file holds, the loop keeps serving peers,
 * timers and the status socket meanwhile. The result is applied on the loop
 * thread in the work's completion callback. One reload runs at a time; a
 * SIGHUP during a reload re-reads the file once that one ends.
 */
#include <stdlib.h>
#include <string.h>
#include "daemon/log.h"
#include "daemon/service/service_internal.h"
#include "kernels/common.h"

typedef struct {
    uv_work_t req;           /* req.data: the service */
    char path[NB_CFG_PATH_MAX];
    nb_config_t cfg;         /* written by the worker, read after it */
    int rc;
    char err[1024];
} reload_work_t;

/* Worker thread: touches nothing but the work item. */
static void reload_work_cb(uv_work_t *req)
{
    reload_work_t *w = (reload_work_t *)req;
    w->rc = nb_cfg_load(w->path, &w->cfg, w->err, sizeof w->err);
}

/* Loop thread: applies a loaded file n to the running service. */
static void reload_apply(nb_service_t *svc, const nb_config_t *n)
{
    nb_config_t *o = &svc->cfg;
    char restart[512] = "";
#define CHANGED(field, label)                                                                    \
    if (memcmp(&o->field, &n->field, sizeof o->field) != 0)                                      \
        snprintf(restart + strlen(restart), sizeof restart - strlen(restart), "%s%s", restart[0] ? ", " : "", label)
    CHANGED(name, "name");
    CHANGED(role, "role");
    CHANGED(listen, "listen");
    CHANGED(status_socket, "status_socket");
    CHANGED(coordinator, "coordinator");
    CHANGED(devices, "devices");
    CHANGED(n_devices, "devices");
    CHANGED(data, "data");
    CHANGED(checkpoint_dir, "checkpoint_dir");
    CHANGED(heartbeat_interval_s, "heartbeat_interval_s");
    CHANGED(heartbeat_timeout_s, "heartbeat_timeout_s");
    CHANGED(connect_timeout_s, "connect_timeout_s");
    CHANGED(transport, "transport");
    CHANGED(job, "job");
#undef CHANGED
    nb_log_level_t lvl;
    if (strcmp(o->log_level, n->log_level) != 0 && nb_log_level_parse(n->log_level, &lvl) == 0) {
        nb_log_set_level(lvl);
        nb_log_info(NULL, "reload: log_level %s -> %s", o->log_level, n->log_level);
        memcpy(o->log_level, n->log_level, sizeof o->log_level);
    }
    if (memcmp(&o->tls, &n->tls, sizeof o->tls) != 0) {
        if (svc->rt && svc->rt->reload) {
            nb_log_info(NULL, "reload: tls file paths changed; passed to the runtime");
            o->tls = n->tls;
        } else {
            snprintf(restart + strlen(restart), sizeof restart - strlen(restart), "%stls", restart[0] ? ", " : "");
        }
    }
    if (svc->rt && svc->rt->reload)
        svc->rt->reload(svc, n, svc->rt_ud);
    if (restart[0])
        nb_log_warn(NULL, "reload: changed but not applied until restart: %s", restart);
    nb_metrics_inc(nb_state_metrics(svc->state), svc->m_reloads, 1);
    nb_log_info(NULL, "reload done");
}

/* Loop thread, after the worker (or after a cancel at close). */
static void reload_after_cb(uv_work_t *req, int status)
{
    reload_work_t *w = (reload_work_t *)req;
    nb_service_t *svc = req->data;
    svc->reloading = false;
    if (status == 0 && !svc->stopping) {
        if (w->rc)
            nb_log_error(NULL, "reload failed, running configuration kept: %s", w->err);
        else
            reload_apply(svc, &w->cfg);
        nb__service_notify("READY=1");
    }
    free(w);
    if (svc->reload_again && !svc->stopping) {
        svc->reload_again = false;
        nb__service_reload(svc);
    }
}

void nb__service_reload(nb_service_t *svc)
{
    if (svc->stopping)
        return;
    if (svc->reloading) {
        svc->reload_again = true;
        nb_log_info(NULL, "reload: already reading the file; it is read again when that ends");
        return;
    }
    nb__service_notify("RELOADING=1");
    reload_work_t *w = calloc(1, sizeof *w);
    if (!w) {
        nb_log_error(NULL, "reload: out of memory; configuration unchanged");
        nb__service_notify("READY=1");
        return;
    }
    snprintf(w->path, sizeof w->path, "%s", svc->cfg.path);
    w->req.data = svc;
    int rc = uv_queue_work(svc->loop, &w->req, reload_work_cb, reload_after_cb);
    if (rc) {
        nb_log_error(NULL, "reload: cannot start reading the file (%s); configuration unchanged", uv_strerror(rc));
        free(w);
        nb__service_notify("READY=1");
        return;
    }
    svc->reloading = true;
}
