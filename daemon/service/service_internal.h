/* service_internal.h - the service struct, shared by service.c (lifecycle)
 * and service_reload.c (SIGHUP). Not for other modules. */
#ifndef NB_SERVICE_INTERNAL_H
#define NB_SERVICE_INTERNAL_H

#include "daemon/service/service.h"
#include "daemon/status/status_cmds.h"

struct nb_service {
    uv_loop_t *loop;
    nb_config_t cfg;
    nb_state_t *state;
    const nb_runtime_i *rt;
    void *rt_ud;
    nb_status_limits_t status_lim;
    nb_status_server_t *status;
    nb_status_ctx_t status_ctx;
    uv_tcp_t listener;
    bool listener_open;
    uv_signal_t sig_term, sig_int, sig_hup;
    bool signals_open;
    uv_timer_t watchdog;
    bool watchdog_open;
    uv_timer_t stop_timer; /* defers closing handles out of the caller's callback */
    bool stop_timer_open;
    bool stopping, failed;
    bool ready_sent;
    bool reloading;    /* a reload's file is being read on a worker thread */
    bool reload_again; /* SIGHUP during that read: read once more after it */
    int m_reloads;
};

/* SIGHUP: re-reads the config file on a worker thread, then applies what can
 * change at run time on the loop thread. Returns at once. */
void nb__service_reload(nb_service_t *svc);

/* Sends one sd_notify line when running under systemd (NOTIFY_SOCKET). */
void nb__service_notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
