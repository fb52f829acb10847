/* rt_common.c - helpers shared by the pipeline runtimes; see rt_common.h. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "daemon/log.h"
#include "daemon/net/ktls.h"
#include "daemon/pipeline/rt_common.h"
#include "kernels/common.h"

void nb_rt_base_init(nb_rt_base_t *b, nb_service_t *svc)
{
    memset(b, 0, sizeof *b);
    b->svc = svc;
    b->cfg = nb_service_config(svc);
    b->state = nb_service_state(svc);
    b->loop = nb_service_loop(svc);
}

bool nb_rt_job_vfail(nb_rt_base_t *b, nb_rt_tell_fn tell, void *ud, const char *fmt, va_list ap)
{
    if (b->failed || b->stopping)
        return false;
    char why[1024];
    vsnprintf(why, sizeof why, fmt, ap);
    b->failed = true;
    nb_log_error(NULL, "job failed: %s", why);
    if (tell)
        tell(ud, why);
    nb_service_fail(b->svc, why);
    return true;
}

bool nb_rt_job_fail(nb_rt_base_t *b, nb_rt_tell_fn tell, void *ud, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    bool done = nb_rt_job_vfail(b, tell, ud, fmt, ap);
    va_end(ap);
    return done;
}

void nb_rt_close_net(nb_rt_base_t *b)
{
    if (b->net_open) {
        nb_net_close(b->net, NULL, NULL);
        b->net_open = false;
    }
}

void nb_rt_close_handle(void *handle, bool *open)
{
    if (*open) {
        uv_close((uv_handle_t *)handle, NULL);
        *open = false;
    }
}

void nb_rt_net_cfg(const nb_config_t *cfg, int role, nb_net_cfg_t *out)
{
    nb_net_cfg_default(out);
    out->name = cfg->name;
    out->role = role;
    out->tls.cert_file = cfg->tls.cert;
    out->tls.key_file = cfg->tls.key;
    out->tls.ca_file = cfg->tls.ca;
    out->ktls = cfg->tls.ktls;
    if (cfg->heartbeat_interval_s > 0)
        out->heartbeat_ms = (uint32_t)(cfg->heartbeat_interval_s * 1000.0);
    if (cfg->heartbeat_timeout_s > 0)
        out->dead_after_ms = (uint32_t)(cfg->heartbeat_timeout_s * 1000.0);
    /* zero (a config struct not from the loader): keep the transport's default */
    nb_frame_limits_default(&out->limits);
    if (cfg->transport.max_frame_payload)
        out->limits.max_payload = cfg->transport.max_frame_payload;
    if (cfg->transport.send_queue_bytes)
        out->send_queue_bytes = (size_t)cfg->transport.send_queue_bytes;
    if (cfg->transport.max_pending_handshakes > 0)
        out->max_pending = (uint32_t)cfg->transport.max_pending_handshakes;
    if (cfg->transport.max_pending_per_address > 0)
        out->max_pending_per_addr = (uint32_t)cfg->transport.max_pending_per_address;
}

int nb_rt_open_net(uv_loop_t *loop, const nb_config_t *cfg, const nb_net_cfg_t *nc, const nb_net_cb_t *cb,
                   void *ud, nb_state_t *st, nb_net_t **out, char *bound, size_t boundlen, char *why,
                   size_t whylen)
{
    *out = NULL;
    int rc = nb_net_new(loop, nc, cb, ud, out);
    if (rc) {
        snprintf(why, whylen, "cannot create the transport: %s", nb_strerror(rc));
        *out = NULL;
        return rc;
    }
    int port = 0;
    if ((rc = nb_net_listen_err(*out, cfg->listen.host, cfg->listen.port, &port, why, whylen)))
        return rc;
    snprintf(bound, boundlen, "%s:%d", cfg->listen.host, port);
    nb_state_set_listen(st, bound, cfg->status_socket);
    /* tls.ktls on needs the kernel's tls protocol: refuse to start without */
    const char *kwhy;
    bool kavail = nb_ktls_available(&kwhy);
    if (cfg->tls.ktls == NB_KTLS_ON && !kavail) {
        snprintf(why, whylen, "tls.ktls is on, but %s", kwhy);
        return NB_EINVAL;
    }
    char line[400];
    snprintf(line, sizeof line, "tls.ktls %s: %s%s", nb_ktls_mode_name((nb_ktls_mode_t)cfg->tls.ktls),
             nb_ktls_state(),
             cfg->tls.ktls == NB_KTLS_OFF || !kavail ? "; records are encrypted in user space"
                                                    : "; the kernel encrypts what this daemon sends");
    nb_log_info(NULL, "%s", line);
    nb_state_set_kernel_tls(st, line);
    return 0;
}

void nb_rt_peer_row(nb_state_t *st, const char *name, const char *role, const char *address,
                    const char *state, const nb_conn_t *c)
{
    nb_peer_info_t p;
    memset(&p, 0, sizeof p);
    snprintf(p.name, sizeof p.name, "%s", name);
    snprintf(p.role, sizeof p.role, "%s", role);
    snprintf(p.address, sizeof p.address, "%s", address);
    snprintf(p.state, sizeof p.state, "%s", state);
    p.rtt_ms = -1;
    p.bandwidth_mbps = -1;
    if (c) {
        nb_link_t l;
        nb_probe_link(c, &l);
        if (l.rtt_ewma_ms > 0)
            p.rtt_ms = l.rtt_ewma_ms;
        double bps = l.tx_bw_probe > 0 ? l.tx_bw_probe : l.rx_bps_ewma;
        if (bps > 0)
            p.bandwidth_mbps = bps * 8.0 / 1e6;
        p.bytes_sent = l.bytes_tx;
        p.bytes_received = l.bytes_rx;
        snprintf(p.tls, sizeof p.tls, "%s", nb_conn_tls_layer(c));
    }
    nb_state_peer_update(st, &p);
}

void nb_rt_trace_mb(nb_trace_t *tr, int64_t step, int stage, int mb, uint64_t fwd_start_ns,
                    uint64_t fwd_ns, uint64_t bwd_start_ns, uint64_t bwd_ns)
{
    char name[32];
    snprintf(name, sizeof name, "stage %d", stage);
    int track = nb_trace_track(tr, name, false);
    if (track < 0)
        return;
    nb_trace_event_t ev = { .step = step, .micro = mb, .track = (int16_t)track, .kind = NB_TEV_FORWARD,
                            .ts_us = (double)fwd_start_ns / 1e3, .dur_us = (double)fwd_ns / 1e3 };
    nb_trace_add(tr, &ev);
    ev.kind = NB_TEV_BACKWARD;
    ev.ts_us = (double)bwd_start_ns / 1e3;
    ev.dur_us = (double)bwd_ns / 1e3;
    nb_trace_add(tr, &ev);
}

int nb_rt_frame_kind(nb_pmsg_kind_t k)
{
    switch (k) {
    case NB_PMSG_ACT: return NEBULA__TENSOR_KIND__KIND_ACTIVATION;
    case NB_PMSG_GRAD: return NEBULA__TENSOR_KIND__KIND_GRADIENT;
    case NB_PMSG_LABELS: return NEBULA__TENSOR_KIND__KIND_LABELS;
    default: return -1;
    }
}

int nb_rt_pmsg_kind(int frame_kind)
{
    switch (frame_kind) {
    case NEBULA__TENSOR_KIND__KIND_ACTIVATION: return NB_PMSG_ACT;
    case NEBULA__TENSOR_KIND__KIND_GRADIENT: return NB_PMSG_GRAD;
    case NEBULA__TENSOR_KIND__KIND_LABELS: return NB_PMSG_LABELS;
    default: return -1;
    }
}

int nb_rt_send_ctl(nb_conn_t *c, Nebula__Frame *f)
{
    return nb_conn_send(c, f, NULL, 0, NULL, NULL);
}

int nb_rt_send_shutdown(nb_conn_t *c, const char *why)
{
    Nebula__Frame f;
    Nebula__Shutdown s;
    nebula__frame__init(&f);
    nebula__shutdown__init(&s);
    s.reason = (char *)why;
    f.body_case = NEBULA__FRAME__BODY_SHUTDOWN;
    f.shutdown = &s;
    return nb_rt_send_ctl(c, &f);
}

int nb_rt_send_job_failed(nb_conn_t *c, uint64_t job_id, uint32_t daemon, const char *why)
{
    Nebula__Frame f;
    Nebula__JobStatus js;
    nebula__frame__init(&f);
    nebula__job_status__init(&js);
    js.job_id = job_id;
    js.daemon = daemon;
    js.state = NEBULA__JOB_STATUS__STATE__JOB_STATE_FAILED;
    js.message = (char *)why;
    f.body_case = NEBULA__FRAME__BODY_JOB_STATUS;
    f.job_status = &js;
    return nb_rt_send_ctl(c, &f);
}

void nb_rt_reserve_peer_addr(nb_net_t *n, const char *hostport)
{
    nb_cfg_addr_t a;
    char msg[128];
    if (!hostport || nb_cfg_parse_addr(hostport, &a, 1, msg, sizeof msg) != 0)
        return;
    if (nb_net_reserve_addr(n, a.host) != 0)
        nb_log_debug(NULL, "no handshake room reserved for %s (not an IP literal)", hostport);
}
