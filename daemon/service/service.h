/*
 * service.h - nebulad's lifecycle as a Linux service: the libuv loop, the
 * peer listener, the status socket, signals (SIGTERM/SIGINT: orderly stop;
 * SIGHUP: reload what can be reloaded), sd_notify (READY=1 once the listener
 * and the status socket are bound, STATUS= on every state change,
 * WATCHDOG=1 from a loop timer at half the watchdog interval, RELOADING=1,
 * STOPPING=1) and the reportable state (daemon/core/state.h).
 *
 * The role's work (coordinator or stage runtime) plugs in through
 * nb_runtime_i. Without a runtime the daemon binds its sockets, reports
 * state "waiting" truthfully and serves its status socket until stopped.
 *
 * Thread: everything here runs on the loop thread; nb_service_state() may be
 * used from any thread.
 */
#ifndef NB_SERVICE_H
#define NB_SERVICE_H

#include <uv.h>
#include "daemon/config/config.h"
#include "daemon/core/state.h"
#include "daemon/status/status_server.h"

typedef struct nb_service nb_service_t;

/* The role runtime's hooks; any may be NULL. */
typedef struct {
    /* After the sockets are bound and before READY=1. Return 0, or a negative
     * NB_E* code to fail the start (the daemon exits 1). */
    int (*start)(nb_service_t *svc, void *ud);
    /* An orderly stop began: close every handle the runtime owns. The loop
     * ends when all handles are closed. */
    void (*stop)(nb_service_t *svc, void *ud);
    /* A peer connected to the listener: the runtime calls uv_accept on it.
     * When NULL the service accepts and closes the connection. */
    void (*on_connection)(nb_service_t *svc, uv_stream_t *listener, void *ud);
    /* SIGHUP with a freshly loaded, valid configuration. */
    void (*reload)(nb_service_t *svc, const nb_config_t *cfg, void *ud);
    /* True when the runtime binds the peer listener itself in start (the
     * pipeline runtimes hand it to the TLS transport) and reports the bound
     * address with nb_state_set_listen; the service then binds only the
     * status socket. */
    bool binds_listener;
    /* True when the runtime sends READY=1 itself with nb_service_ready()
     * (e.g. a stage once its peers are authenticated) instead of the
     * service sending it right after start. Mind TimeoutStartSec. */
    bool defers_ready;
} nb_runtime_i;

/* Creates a service for cfg (copied) on loop (not owned). Binds nothing.
 * Returns 0, NB_ENOMEM or NB_EINVAL (role train is not a daemon role). */
int nb_service_new(const nb_config_t *cfg, uv_loop_t *loop, nb_service_t **out);

/* Registers the role runtime; rt must outlive the service. Call before start. */
void nb_service_set_runtime(nb_service_t *svc, const nb_runtime_i *rt, void *ud);

/* Status socket limits (tests lower them); call before start. */
void nb_service_set_status_limits(nb_service_t *svc, const nb_status_limits_t *lim);

/* Binds the peer listener and the status socket, installs signal handlers and
 * the watchdog timer, runs the runtime's start hook and sends READY=1.
 * On error writes a reason into err, closes what it opened (the loop must
 * still be run to let close callbacks finish: nb_service_run does that) and
 * returns a negative NB_E* code. */
int nb_service_start(nb_service_t *svc, char *err, size_t errlen);

/* Runs the loop until every handle is closed. Returns the process exit
 * status: 0 after an orderly stop, 1 when the service failed. */
int nb_service_run(nb_service_t *svc);

/* Begins an orderly stop (idempotent; safe from any loop callback, including
 * a status command): STOPPING=1, runtime stop hook, then every service handle
 * is closed on the next loop iteration. why is logged. */
void nb_service_stop(nb_service_t *svc, const char *why);

/* Marks the service failed (exit status 1) and stops it. */
void nb_service_fail(nb_service_t *svc, const char *why);

/* Sets the lifecycle state with a one-line detail and sends it to systemd as
 * STATUS=. A change of state is logged at info, a new detail in the same
 * state at debug (so per-step calls do not flood the log). */
void nb_service_set_state(nb_service_t *svc, nb_svc_state_t st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* For a runtime's start hook that is about to fail: the reason, used in
 * "start failed: REASON" in place of the error code's name (e.g.
 * "listen 127.0.0.1:7001: address already in use"). Loop thread. */
void nb_service_start_error(nb_service_t *svc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Sends READY=1 with the current STATUS= (once; later calls do nothing).
 * For runtimes with defers_ready. */
void nb_service_ready(nb_service_t *svc);

/* Sets the state's detail and sends it as STATUS= without a log line: for
 * per-step progress ("step 12/300 loss 3.21"). The state stays as it is. */
void nb_service_status_line(nb_service_t *svc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Frees the service after nb_service_run returned (or after a failed start
 * followed by nb_service_run). */
void nb_service_free(nb_service_t *svc);

nb_state_t *nb_service_state(nb_service_t *svc);
const nb_config_t *nb_service_config(nb_service_t *svc);
uv_loop_t *nb_service_loop(nb_service_t *svc);
/* The status server, to register more commands (e.g. "plan"); NULL before
 * start. */
nb_status_server_t *nb_service_status_server(nb_service_t *svc);

#endif
