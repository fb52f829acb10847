/*
 * service_reload.c - SIGHUP: re-read the config file; apply what can change
 * while running (log level now; the runtime's reload hook gets the new file,
 * e.g. for certificates) and name every changed key that needs a restart.
 * A file that no longer loads changes nothing and is reported.
 */
#include <stdlib.h>
#include <string.h>
#include "daemon/log.h"
#include "daemon/service/service_internal.h"
#include "kernels/common.h"

void nb__service_reload(nb_service_t *svc)
{
    nb__service_notify("RELOADING=1");
    nb_config_t *n = malloc(sizeof *n);
    char err[1024];
    if (!n) {
        nb_log_error(NULL, "reload: out of memory; configuration unchanged");
        goto out;
    }
    int rc = nb_cfg_load(svc->cfg.path, n, err, sizeof err);
    if (rc) {
        nb_log_error(NULL, "reload failed, running configuration kept: %s", err);
        goto out;
    }
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
out:
    free(n);
    nb__service_notify("READY=1");
}
