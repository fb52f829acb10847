/*
 * service.c - the daemon's lifecycle: bind, notify systemd, serve, stop in
 * order. See service.h.
 */
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include "daemon/log.h"
#include "daemon/service/service_internal.h"
#include "kernels/common.h"

#define TRACE_RING_EVENTS 65536

void nb__service_notify(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    /* Without NOTIFY_SOCKET sd_notify does nothing and returns 0. */
    int rc = sd_notify(0, buf);
    if (rc < 0)
        nb_log_warn(NULL, "sd_notify failed: %s", strerror(-rc));
}

int nb_service_new(const nb_config_t *cfg, uv_loop_t *loop, nb_service_t **out)
{
    *out = NULL;
    if (cfg->role != NB_ROLE_COORDINATOR && cfg->role != NB_ROLE_STAGE)
        return NB_EINVAL;
    nb_service_t *svc = calloc(1, sizeof *svc);
    if (!svc)
        return NB_ENOMEM;
    svc->cfg = *cfg;
    svc->loop = loop;
    svc->state = nb_state_new(cfg->name, cfg->role, TRACE_RING_EVENTS);
    if (!svc->state) {
        free(svc);
        return NB_ENOMEM;
    }
    *out = svc;
    return 0;
}

void nb_service_set_runtime(nb_service_t *svc, const nb_runtime_i *rt, void *ud)
{
    svc->rt = rt;
    svc->rt_ud = ud;
}

void nb_service_set_status_limits(nb_service_t *svc, const nb_status_limits_t *lim)
{
    svc->status_lim = *lim;
}

nb_state_t *nb_service_state(nb_service_t *svc) { return svc->state; }
const nb_config_t *nb_service_config(nb_service_t *svc) { return &svc->cfg; }
uv_loop_t *nb_service_loop(nb_service_t *svc) { return svc->loop; }
nb_status_server_t *nb_service_status_server(nb_service_t *svc) { return svc->status; }

void nb_service_set_state(nb_service_t *svc, nb_svc_state_t st, const char *fmt, ...)
{
    char detail[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    bool changed = nb_state_get(svc->state) != st;
    nb_state_set(svc->state, st, "%s", detail);
    /* progress within a state (every training step) goes to systemd's STATUS=
     * and the status socket, not to the log */
    nb_log(changed ? NB_LOG_INFO : NB_LOG_DEBUG, NULL, "state %s: %s", nb_svc_state_name(st), detail);
    nb__service_notify("STATUS=%s: %s", nb_svc_state_name(st), detail);
}

/* ---- callbacks ---------------------------------------------------------------- */

static void signal_cb(uv_signal_t *h, int signum)
{
    nb_service_t *svc = h->data;
    if (signum == SIGHUP) {
        nb__service_reload(svc);
        return;
    }
    nb_service_stop(svc, signum == SIGTERM ? "SIGTERM received" : "SIGINT received");
}

static void watchdog_cb(uv_timer_t *t)
{
    /* Sent from the loop itself: a stuck loop stops the pings and systemd
     * restarts the daemon. */
    nb__service_notify("WATCHDOG=1");
}

static void peer_connection_cb(uv_stream_t *server, int status)
{
    nb_service_t *svc = server->data;
    if (status < 0) {
        nb_log_warn(NULL, "peer listener: accept failed: %s", uv_strerror(status));
        return;
    }
    if (svc->rt && svc->rt->on_connection) {
        svc->rt->on_connection(svc, server, svc->rt_ud);
        return;
    }
    /* No pipeline runtime in this daemon: accept and close at once so the
     * connection does not sit in the backlog. */
    uv_tcp_t *c = malloc(sizeof *c);
    if (!c || uv_tcp_init(svc->loop, c) != 0) {
        free(c);
        return;
    }
    if (uv_accept(server, (uv_stream_t *)c) == 0)
        nb_log_info(NULL, "peer connection closed: no pipeline runtime is attached to this daemon");
    uv_close((uv_handle_t *)c, (uv_close_cb)free);
}

static int bind_listener(nb_service_t *svc, char *err, size_t errlen)
{
    const nb_cfg_addr_t *a = &svc->cfg.listen;
    char port[16];
    snprintf(port, sizeof port, "%d", a->port);
    uv_getaddrinfo_t gai;
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
    int rc = uv_getaddrinfo(svc->loop, &gai, NULL, a->host, port, &hints); /* synchronous: no callback */
    if (rc != 0) {
        snprintf(err, errlen, "listen %s: cannot resolve: %s", a->text, uv_strerror(rc));
        return NB_EIO;
    }
    rc = uv_tcp_init(svc->loop, &svc->listener);
    if (rc == 0) {
        svc->listener_open = true;
        svc->listener.data = svc;
        rc = uv_tcp_bind(&svc->listener, gai.addrinfo->ai_addr, 0);
    }
    uv_freeaddrinfo(gai.addrinfo);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&svc->listener, 64, peer_connection_cb);
    if (rc != 0) {
        snprintf(err, errlen, "listen %s: %s", a->text, uv_strerror(rc));
        return NB_EIO;
    }
    struct sockaddr_storage ss;
    int len = sizeof ss;
    char host[64] = "?", bound[NB_CFG_ADDR_MAX];
    int bport = 0;
    if (uv_tcp_getsockname(&svc->listener, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, host, sizeof host);
            bport = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
            snprintf(bound, sizeof bound, "[%s]:%d", host, bport);
        } else {
            uv_ip4_name((struct sockaddr_in *)&ss, host, sizeof host);
            bport = ntohs(((struct sockaddr_in *)&ss)->sin_port);
            snprintf(bound, sizeof bound, "%s:%d", host, bport);
        }
    } else {
        snprintf(bound, sizeof bound, "%s", a->text);
    }
    nb_state_set_listen(svc->state, bound, svc->cfg.status_socket);
    return 0;
}

static void stop_svc(void *ud, const char *why)
{
    nb_service_stop(ud, why);
}

/* What the daemon waits for before a pipeline runtime drives it; reported
 * as peers so `nebulactl status` shows it. */
static void describe_waiting(nb_service_t *svc)
{
    const nb_config_t *c = &svc->cfg;
    nb_peer_info_t p;
    if (c->role == NB_ROLE_STAGE) {
        memset(&p, 0, sizeof p);
        snprintf(p.name, sizeof p.name, "%s", c->coordinator.name);
        snprintf(p.role, sizeof p.role, "coordinator");
        snprintf(p.address, sizeof p.address, "%s", c->coordinator.address.text);
        snprintf(p.state, sizeof p.state, "waiting");
        p.rtt_ms = p.bandwidth_mbps = -1;
        nb_state_peer_update(svc->state, &p);
        nb_state_snapshot_t *snap = malloc(sizeof *snap);
        if (!snap)
            return;
        nb_state_snapshot(svc->state, snap);
        nb_service_set_state(svc, NB_SVC_WAITING, "listening on %s; waiting for coordinator %s (%s)", snap->listen,
                             c->coordinator.name, c->coordinator.address.text);
        free(snap);
        return;
    }
    char names[512] = "";
    for (int i = 0; i < c->job.n_clusters; i++) {
        const nb_cfg_cluster_t *cl = &c->job.clusters[i];
        memset(&p, 0, sizeof p);
        snprintf(p.name, sizeof p.name, "%s", cl->name);
        snprintf(p.role, sizeof p.role, "stage");
        snprintf(p.address, sizeof p.address, "%s", cl->address.text);
        snprintf(p.state, sizeof p.state, "waiting");
        p.rtt_ms = p.bandwidth_mbps = -1;
        nb_state_peer_update(svc->state, &p);
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "", cl->name);
    }
    nb_job_info_t j = { .active = true, .step = 0, .steps = c->job.steps, .micro_batches = c->job.micro_batches };
    j.loss = 0.0 / 0.0;
    j.tokens_per_s = j.step_time_s = j.bubble_measured = j.bubble_predicted = -1;
    snprintf(j.codec_forward, sizeof j.codec_forward, "%s", c->job.codecs.forward);
    snprintf(j.codec_backward, sizeof j.codec_backward, "%s", c->job.codecs.backward);
    snprintf(j.schedule, sizeof j.schedule, "%s", nb_cfg_schedule_name(c->job.schedule));
    nb_state_job_update(svc->state, &j);
    nb_service_set_state(svc, NB_SVC_WAITING, "holding job (%lld steps, %d clusters); waiting for stages %s",
                         (long long)c->job.steps, c->job.n_clusters, names);
}

int nb_service_start(nb_service_t *svc, char *err, size_t errlen)
{
    int rc;
    char dummy[8];
    if (!err) {
        err = dummy;
        errlen = sizeof dummy;
    }
    nb_log_info(NULL, "starting %s %s from %s", nb_cfg_role_name(svc->cfg.role), svc->cfg.name, svc->cfg.path);
    if (!(svc->rt && svc->rt->binds_listener) && (rc = bind_listener(svc, err, errlen)) != 0)
        goto fail;
    rc = nb_status_server_start(svc->loop, svc->cfg.status_socket, &svc->status_lim, &svc->status, err, errlen);
    if (rc)
        goto fail;
    svc->status_ctx.state = svc->state;
    svc->status_ctx.trace_steps = svc->cfg.job.trace_steps;
    svc->status_ctx.stop = stop_svc;
    svc->status_ctx.stop_ud = svc;
    if ((rc = nb_status_cmds_register(svc->status, &svc->status_ctx)) != 0) {
        snprintf(err, errlen, "status commands: %s", nb_strerror(rc));
        goto fail;
    }
    svc->m_reloads = nb_metrics_add(nb_state_metrics(svc->state), "nebula_reloads_total", NULL, NB_METRIC_COUNTER,
                                    "Configuration reloads (SIGHUP) that succeeded");
    uv_signal_init(svc->loop, &svc->sig_term);
    uv_signal_init(svc->loop, &svc->sig_int);
    uv_signal_init(svc->loop, &svc->sig_hup);
    svc->sig_term.data = svc->sig_int.data = svc->sig_hup.data = svc;
    svc->signals_open = true;
    uv_signal_start(&svc->sig_term, signal_cb, SIGTERM);
    uv_signal_start(&svc->sig_int, signal_cb, SIGINT);
    uv_signal_start(&svc->sig_hup, signal_cb, SIGHUP);
    uv_timer_init(svc->loop, &svc->stop_timer);
    svc->stop_timer.data = svc;
    svc->stop_timer_open = true;
    uint64_t wd_usec = 0;
    if (sd_watchdog_enabled(0, &wd_usec) > 0 && wd_usec > 0) {
        uint64_t every_ms = wd_usec / 2000;
        if (every_ms == 0)
            every_ms = 1;
        uv_timer_init(svc->loop, &svc->watchdog);
        svc->watchdog.data = svc;
        svc->watchdog_open = true;
        uv_timer_start(&svc->watchdog, watchdog_cb, every_ms, every_ms);
        nb_log_info(NULL, "systemd watchdog: %llu ms; pinging every %llu ms", (unsigned long long)(wd_usec / 1000),
                    (unsigned long long)every_ms);
    }
    if (svc->rt && svc->rt->start) {
        if ((rc = svc->rt->start(svc, svc->rt_ud)) != 0) {
            if (svc->start_err[0])
                snprintf(err, errlen, "%s", svc->start_err);
            else
                snprintf(err, errlen, "runtime start failed: %s", nb_strerror(rc));
            goto fail;
        }
    } else {
        describe_waiting(svc);
    }
    nb_state_snapshot_t *s2 = malloc(sizeof *s2);
    if (s2) {
        nb_state_snapshot(svc->state, s2);
        /* After the runtime's start: it may bind the listener itself. */
        nb_log_info(NULL, "peers: %s; status socket %s", s2->listen[0] ? s2->listen : "(no listener)",
                    svc->cfg.status_socket);
        free(s2);
    }
    if (!(svc->rt && svc->rt->defers_ready))
        nb_service_ready(svc);
    return 0;
fail:
    svc->failed = true;
    nb_service_stop(svc, err);
    return rc;
}

void nb_service_start_error(nb_service_t *svc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(svc->start_err, sizeof svc->start_err, fmt, ap);
    va_end(ap);
}

void nb_service_ready(nb_service_t *svc)
{
    if (svc->ready_sent || svc->stopping)
        return;
    svc->ready_sent = true;
    nb_state_snapshot_t *s = malloc(sizeof *s);
    if (!s) {
        nb__service_notify("READY=1");
        return;
    }
    nb_state_snapshot(svc->state, s);
    nb__service_notify("READY=1\nSTATUS=%s: %s\nMAINPID=%d", nb_svc_state_name(s->state), s->detail, s->pid);
    free(s);
}

void nb_service_status_line(nb_service_t *svc, const char *fmt, ...)
{
    char detail[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    nb_svc_state_t st = nb_state_get(svc->state);
    nb_state_set(svc->state, st, "%s", detail);
    nb__service_notify("STATUS=%s: %s", nb_svc_state_name(st), detail);
}

static void close_all(nb_service_t *svc)
{
    if (svc->status) {
        nb_status_server_close(svc->status, NULL, NULL);
        svc->status = NULL;
    }
    if (svc->listener_open) {
        uv_close((uv_handle_t *)&svc->listener, NULL);
        svc->listener_open = false;
    }
    if (svc->signals_open) {
        uv_close((uv_handle_t *)&svc->sig_term, NULL);
        uv_close((uv_handle_t *)&svc->sig_int, NULL);
        uv_close((uv_handle_t *)&svc->sig_hup, NULL);
        svc->signals_open = false;
    }
    if (svc->watchdog_open) {
        uv_close((uv_handle_t *)&svc->watchdog, NULL);
        svc->watchdog_open = false;
    }
    if (svc->stop_timer_open) {
        uv_close((uv_handle_t *)&svc->stop_timer, NULL);
        svc->stop_timer_open = false;
    }
}

static void stop_timer_cb(uv_timer_t *t)
{
    close_all(t->data);
}

void nb_service_stop(nb_service_t *svc, const char *why)
{
    if (svc->stopping)
        return;
    svc->stopping = true;
    nb__service_notify("STOPPING=1");
    nb_service_set_state(svc, svc->failed ? NB_SVC_FAILED : NB_SVC_STOPPING, "%s", why ? why : "stop requested");
    if (svc->rt && svc->rt->stop)
        svc->rt->stop(svc, svc->rt_ud);
    /* Close on the next iteration: the caller may be a status command whose
     * reply is still being queued on a handle we are about to close. */
    if (svc->stop_timer_open)
        uv_timer_start(&svc->stop_timer, stop_timer_cb, 0, 0);
    else
        close_all(svc);
}

void nb_service_fail(nb_service_t *svc, const char *why)
{
    svc->failed = true;
    nb_service_stop(svc, why);
}

int nb_service_run(nb_service_t *svc)
{
    uv_run(svc->loop, UV_RUN_DEFAULT);
    if (!svc->failed)
        nb_log_info(NULL, "stopped");
    return svc->failed ? 1 : 0;
}

void nb_service_free(nb_service_t *svc)
{
    if (!svc)
        return;
    NB_CHECK(!svc->status && !svc->listener_open && !svc->signals_open);
    nb_state_free(svc->state);
    free(svc);
}
