/*
 * net.c - the endpoint: settings, listener, outbound peers with reconnect
 * (exponential backoff with jitter) and orderly teardown. See net.h.
 */
#include <netdb.h>
#include <string.h>
#include "kernels/common.h"
#include "daemon/log.h"
#include "daemon/net/net_internal.h"

void nb_net_cfg_default(nb_net_cfg_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
}

static void apply_defaults(nb_net_cfg_t *c)
{
    if (!c->limits.max_header)
        nb_frame_limits_default(&c->limits);
    if (!c->send_queue_bytes)
        c->send_queue_bytes = 64u << 20;
    if (!c->handshake_timeout_ms)
        c->handshake_timeout_ms = 10000;
    if (!c->heartbeat_ms)
        c->heartbeat_ms = 1000;
    if (!c->dead_after_ms)
        c->dead_after_ms = 5000;
    if (!c->backoff_min_ms)
        c->backoff_min_ms = 100;
    if (!c->backoff_max_ms)
        c->backoff_max_ms = 30000;
    if (!c->max_pending)
        c->max_pending = 256;
    if (!c->max_pending_per_addr)
        c->max_pending_per_addr = 8;
    if (c->max_pending_per_addr > c->max_pending)
        c->max_pending_per_addr = c->max_pending;
    if (!c->refusal_log_ms)
        c->refusal_log_ms = 10000;
    if (!c->probe_max_bytes)
        c->probe_max_bytes = 64u << 20;
    if (c->probe_max_bytes > (1ull << 30))
        c->probe_max_bytes = 1ull << 30;
    if (c->probe_max_bytes < 2 * NB__PROBE_CHUNK)
        c->probe_max_bytes = 2 * NB__PROBE_CHUNK;
    if (c->backoff_max_ms < c->backoff_min_ms)
        c->backoff_max_ms = c->backoff_min_ms;
}

static void free_net(nb_net_t *n)
{
    for (size_t i = 0; i < n->cfg.n_allowed_peers; i++)
        free(n->allowed[i]);
    free(n->allowed);
    free((char *)n->cfg.name);
    free((char *)n->cfg.tls.cert_file);
    free((char *)n->cfg.tls.key_file);
    free((char *)n->cfg.tls.ca_file);
    free(n);
}

int nb_net_allow_peer(nb_net_t *n, const char *peer_name)
{
    if (!peer_name || !peer_name[0] || strlen(peer_name) > NB_FRAME_MAX_NAME)
        return NB_EINVAL; /* an empty name would disable the name check */
    for (size_t i = 0; i < n->cfg.n_allowed_peers; i++)
        if (strcmp(n->allowed[i], peer_name) == 0)
            return 0;
    char **a = realloc(n->allowed, (n->cfg.n_allowed_peers + 2) * sizeof *a);
    if (!a)
        return NB_ENOMEM;
    n->allowed = a;
    if (!(a[n->cfg.n_allowed_peers] = strdup(peer_name)))
        return NB_ENOMEM;
    n->cfg.n_allowed_peers++;
    a[n->cfg.n_allowed_peers] = NULL;
    return 0;
}

int nb_net_new(uv_loop_t *loop, const nb_net_cfg_t *cfg, const nb_net_cb_t *cb,
               void *ud, nb_net_t **out)
{
    if (!cfg->name || !cfg->name[0] || strlen(cfg->name) > NB_FRAME_MAX_NAME ||
        !cfg->tls.cert_file || !cfg->tls.key_file || !cfg->tls.ca_file)
        return NB_EINVAL;
    for (size_t i = 0; i < cfg->n_allowed_peers; i++)
        if (!cfg->allowed_peers[i] || !cfg->allowed_peers[i][0])
            return NB_EINVAL; /* an empty name would disable the name check */
    nb_net_t *n = calloc(1, sizeof *n);
    if (!n)
        return NB_ENOMEM;
    n->loop = loop;
    n->cfg = *cfg;
    n->cfg.name = strdup(cfg->name);
    n->cfg.tls.cert_file = strdup(cfg->tls.cert_file);
    n->cfg.tls.key_file = strdup(cfg->tls.key_file);
    n->cfg.tls.ca_file = strdup(cfg->tls.ca_file);
    n->cfg.n_allowed_peers = 0;
    n->allowed = calloc(cfg->n_allowed_peers + 1, sizeof *n->allowed);
    int ok = n->cfg.name && n->cfg.tls.cert_file && n->cfg.tls.key_file && n->cfg.tls.ca_file &&
             n->allowed;
    for (size_t i = 0; ok && i < cfg->n_allowed_peers; i++) {
        n->allowed[i] = strdup(cfg->allowed_peers[i]);
        ok = n->allowed[i] != NULL;
        n->cfg.n_allowed_peers = i + 1;
    }
    n->cfg.allowed_peers = NULL;
    if (!ok) {
        free_net(n);
        return NB_ENOMEM;
    }
    apply_defaults(&n->cfg);
    if (n->cfg.emu_send_delay_ms)
        nb_log_warn(NULL, "latency emulation: every frame held %u ms before sending "
                          "(test setting, never for production)", n->cfg.emu_send_delay_ms);
    uv_timer_init(loop, &n->closer);
    n->closer.data = n;
    n->handles_open = 1;
    nb__admit_init(n);
    if (cb)
        n->cb = *cb;
    n->ud = ud;
    *out = n;
    return 0;
}

void nb__net_maybe_done(nb_net_t *n)
{
    if (!n->closing || n->handles_open || n->conns || n->peers)
        return;
    void (*done)(void *) = n->done;
    void *ud = n->done_ud;
    free_net(n);
    if (done)
        done(ud);
}

/* ---- inbound ---------------------------------------------------------------- */

static void on_connection(uv_stream_t *server, int status)
{
    nb_net_t *n = server->data;
    if (status < 0 || n->closing)
        return;
    nb_conn_t *c;
    if (nb__conn_new(n, 1, NULL, &c) != 0) {
        nb_log_error(NULL, "out of memory accepting a connection");
        return;
    }
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        nb__conn_fail(c, NB_EIO);
        return;
    }
    n->stats.accepted++;
    /* Unauthenticated connections cost memory and handshakes: cap them, in
     * all and per source address, keeping room for configured peers. */
    if (nb__admit_inbound(n, c) != NULL) {
        nb__conn_fail(c, NB_ELIMIT);
        return;
    }
    nb__conn_start_tls(c);
}

static int parse_addr(const char *host, int port, struct sockaddr_storage *ss)
{
    if (port < 0 || port > 65535 || !host)
        return NB_EINVAL;
    memset(ss, 0, sizeof *ss);
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0)
        return 0;
    if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0)
        return 0;
    return NB_EINVAL;
}

static void on_listener_closed(uv_handle_t *h)
{
    nb_net_t *n = h->data;
    n->handles_open--;
    nb__net_maybe_done(n);
}

int nb_net_listen_err(nb_net_t *n, const char *host, int port, int *bound_port, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    if (n->listening || parse_addr(host, port, &ss) != 0) {
        if (err && errlen)
            snprintf(err, errlen, "listen %s:%d: %s", host ? host : "?", port,
                     n->listening ? "already listening" : "not an IP address and port");
        return NB_EINVAL;
    }
    uv_tcp_init(n->loop, &n->listener);
    n->listener.data = n;
    n->listening = 1;
    n->handles_open++;
    int rc = uv_tcp_bind(&n->listener, (struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&n->listener, 256, on_connection);
    if (rc != 0) {
        /* libuv reports a bind error (EADDRINUSE) only at listen time */
        if (!err || !errlen)
            nb_log_error(NULL, "cannot listen on %s:%d: %s", host, port, uv_strerror(rc));
        else
            snprintf(err, errlen, "listen %s%s%s:%d: %s", strchr(host, ':') ? "[" : "", host,
                     strchr(host, ':') ? "]" : "", port, uv_strerror(rc));
        uv_close((uv_handle_t *)&n->listener, on_listener_closed);
        n->listening = 0;
        return NB_EIO;
    }
    if (bound_port) {
        struct sockaddr_storage b;
        int bl = sizeof b;
        uv_tcp_getsockname(&n->listener, (struct sockaddr *)&b, &bl);
        *bound_port = ntohs(b.ss_family == AF_INET ? ((struct sockaddr_in *)&b)->sin_port
                                                   : ((struct sockaddr_in6 *)&b)->sin6_port);
    }
    nb_log_info(NULL, "listening on %s:%d", host, port);
    return 0;
}

int nb_net_listen(nb_net_t *n, const char *host, int port, int *bound_port)
{
    return nb_net_listen_err(n, host, port, bound_port, NULL, 0);
}

/* ---- outbound --------------------------------------------------------------- */

static void peer_dial(nb__peer_t *p);

static void on_retry(uv_timer_t *t)
{
    peer_dial(t->data);
}

static void peer_schedule(nb__peer_t *p)
{
    nb_net_t *n = p->net;
    if (n->closing)
        return;
    /* Exponential backoff with jitter: base doubles per failed attempt up to
     * the cap; the delay is uniform in [base/2, base) so restarting peers do
     * not reconnect in lockstep. */
    uint64_t base = n->cfg.backoff_min_ms;
    for (unsigned i = 0; i < p->attempts && base < n->cfg.backoff_max_ms; i++)
        base *= 2;
    if (base > n->cfg.backoff_max_ms)
        base = n->cfg.backoff_max_ms;
    uint64_t delay = base / 2 + (uint64_t)(random() % (long)(base / 2 + 1));
    p->attempts++;
    uv_timer_start(&p->retry, on_retry, delay, 0);
}

/* Logs a failed connect so an operator sees a peer that is down, without
 * flooding the log while the back-off retries: the first failure, then one
 * line per NB__NET_CONNECT_LOG_MS with the count of failures in between. */
static void peer_connect_failed(nb__peer_t *p, int status)
{
    uint64_t now = uv_now(p->net->loop);
    p->failed++;
    p->unreported++;
    if (p->failed > 1 && now - p->reported_ms < NB__NET_CONNECT_LOG_MS)
        return;
    if (p->failed == 1)
        nb_log_warn(p->name, "cannot connect to %s:%d: %s; retrying with back-off (at most every %u s)", p->host,
                    p->port, uv_strerror(status), p->net->cfg.backoff_max_ms / 1000);
    else
        nb_log_warn(p->name, "cannot connect to %s:%d: %s (%u failed attempts in the last %.0f s, %u in all); "
                    "still retrying", p->host, p->port, uv_strerror(status), p->unreported,
                    (double)(now - p->reported_ms) / 1000.0, p->failed);
    p->reported_ms = now;
    p->unreported = 0;
}

static void on_connect(uv_connect_t *req, int status)
{
    nb_conn_t *c = req->data;
    if (c->closing)
        return;
    if (status < 0) {
        nb_log_debug(c->name, "connect failed: %s", uv_strerror(status));
        if (c->peer)
            peer_connect_failed(c->peer, status);
        nb__conn_fail(c, NB_EIO);
        return;
    }
    if (c->peer && c->peer->failed) {
        nb_log_info(c->peer->name, "reached %s:%d after %u failed attempts", c->peer->host, c->peer->port,
                    c->peer->failed);
        c->peer->failed = c->peer->unreported = 0;
    }
    nb__conn_start_tls(c);
}

static void peer_connect(nb__peer_t *p);

/* Frees a peer once its timer is closed and no lookup is in flight. */
static void peer_release(nb__peer_t *p)
{
    nb_net_t *n = p->net;
    if (!p->timer_closed || p->resolving)
        return;
    for (nb__peer_t **pp = &n->peers; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    if (p->conn)
        p->conn->peer = NULL;
    free(p);
    nb__net_maybe_done(n);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    nb__peer_t *p = req->data;
    nb_net_t *n = p->net;
    p->resolving = 0;
    n->handles_open--;
    if (status == 0 && res) {
        const struct addrinfo *pick = res;
        for (const struct addrinfo *a = res; a; a = a->ai_next)
            if (a->ai_family == AF_INET) { /* prefer IPv4, as listeners usually bind it */
                pick = a;
                break;
            }
        memset(&p->addr, 0, sizeof p->addr);
        memcpy(&p->addr, pick->ai_addr, pick->ai_addrlen);
    }
    uv_freeaddrinfo(res);
    if (p->timer_closed) {
        peer_release(p);
        return;
    }
    if (n->closing)
        return;
    if (status != 0 || !res) {
        nb_log_warn(p->name, "cannot resolve %s: %s", p->host, uv_strerror(status));
        peer_schedule(p);
        return;
    }
    peer_connect(p);
}

/* Names are resolved again on every dial, so a changed DNS record is
 * followed without a restart. */
static void peer_dial(nb__peer_t *p)
{
    nb_net_t *n = p->net;
    if (n->closing || p->conn || p->resolving)
        return;
    if (p->literal) {
        peer_connect(p);
        return;
    }
    char port[16];
    snprintf(port, sizeof port, "%d", p->port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    p->gai.data = p;
    int rc = uv_getaddrinfo(n->loop, &p->gai, on_resolved, p->host, port, &hints);
    if (rc != 0) {
        nb_log_warn(p->name, "cannot resolve %s: %s", p->host, uv_strerror(rc));
        peer_schedule(p);
        return;
    }
    p->resolving = 1;
    n->handles_open++;
}

static void peer_connect(nb__peer_t *p)
{
    nb_net_t *n = p->net;
    if (n->closing || p->conn)
        return;
    nb_conn_t *c;
    if (nb__conn_new(n, 0, p, &c) != 0) {
        peer_schedule(p);
        return;
    }
    p->conn = c;
    n->stats.connect_attempts++;
    c->creq.data = c;
    if (uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&p->addr, on_connect) != 0)
        nb__conn_fail(c, NB_EIO);
}

int nb_net_connect(nb_net_t *n, const char *peer_name, const char *host, int port)
{
    if (!peer_name || !peer_name[0] || strlen(peer_name) > NB_FRAME_MAX_NAME || n->closing ||
        port <= 0 || port > 65535)
        return NB_EINVAL;
    nb__peer_t *p = calloc(1, sizeof *p);
    if (!p)
        return NB_ENOMEM;
    if (parse_addr(host, port, &p->addr) != 0) {
        /* not an IP literal: a DNS name, resolved at each dial */
        size_t hl = host ? strlen(host) : 0;
        if (hl == 0 || hl >= sizeof p->host || port <= 0 || port > 65535 ||
            strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") != hl) {
            free(p);
            return NB_EINVAL;
        }
        p->literal = 0;
    } else {
        p->literal = 1;
    }
    snprintf(p->host, sizeof p->host, "%s", host);
    p->port = port;
    p->net = n;
    snprintf(p->name, sizeof p->name, "%s", peer_name);
    uv_timer_init(n->loop, &p->retry);
    p->retry.data = p;
    n->handles_open++;
    p->next = n->peers;
    n->peers = p;
    /* Dial on the next loop tick, never from inside this call. */
    uv_timer_start(&p->retry, on_retry, 0, 0);
    return 0;
}

int nb_net_redial(nb_net_t *n, const char *peer_name)
{
    for (nb__peer_t *p = n->peers; p; p = p->next) {
        if (strcmp(p->name, peer_name) != 0)
            continue;
        if (n->closing || p->conn || p->resolving || p->timer_closed)
            return 0;
        p->attempts = 0;
        uv_timer_start(&p->retry, on_retry, 0, 0);
        return 0;
    }
    return NB_EINVAL;
}

void nb__net_conn_gone(nb_conn_t *c)
{
    nb_net_t *n = c->net;
    nb__admit_release(c);
    for (nb_conn_t **pp = &n->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    nb__peer_t *p = c->peer;
    free(c);
    if (p) {
        p->conn = NULL;
        peer_schedule(p);
    }
    nb__net_maybe_done(n);
}

nb_conn_t *nb_net_conn(nb_net_t *n, const char *peer_name)
{
    for (nb_conn_t *c = n->conns; c; c = c->next)
        if (c->state == NB__C_READY && !c->closing && !c->draining &&
            strcmp(c->name, peer_name) == 0)
            return c;
    return NULL;
}

void nb_net_set_job(nb_net_t *n, uint64_t job_id)
{
    n->job_id = job_id;
}

const nb_net_stats_t *nb_net_stats(const nb_net_t *n)
{
    return &n->stats;
}

static void on_peer_timer_closed(uv_handle_t *h)
{
    nb__peer_t *p = h->data;
    p->net->handles_open--;
    p->timer_closed = 1;
    if (p->resolving)
        uv_cancel((uv_req_t *)&p->gai); /* on_resolved then releases p */
    peer_release(p);
}

void nb_net_close(nb_net_t *n, void (*done)(void *ud), void *ud)
{
    NB_CHECK(!n->closing);
    n->closing = 1;
    n->done = done;
    n->done_ud = ud;
    if (n->listening) {
        n->listening = 0;
        uv_close((uv_handle_t *)&n->listener, on_listener_closed);
    }
    for (nb__peer_t *p = n->peers; p; p = p->next)
        uv_close((uv_handle_t *)&p->retry, on_peer_timer_closed);
    for (nb_conn_t *c = n->conns; c; c = c->next)
        nb_conn_close(c);
    nb__admit_close(n);
    /* done always runs from a close callback, never inside this call. */
    uv_close((uv_handle_t *)&n->closer, on_listener_closed);
}
