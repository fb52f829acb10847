/*
 * conn.c - one TLS connection on the loop: handshake, Hello, framed reads
 * straight into payload buffers, a bounded send queue pumped as the socket
 * drains, heartbeats, dead-peer detection and orderly close. See net.h.
 */
#include <string.h>
#include <time.h>
#include <openssl/crypto.h>
#include "daemon/clock.h"
#include "kernels/common.h"
#include "daemon/log.h"
#include "daemon/net/ktls.h"
#include "daemon/net/net_internal.h"

static uint64_t now_ms(const nb_conn_t *c)
{
    return uv_now(c->net->loop);
}

static const char *who(const nb_conn_t *c)
{
    return c->name[0] ? c->name : c->addr;
}

/* ---- close ---------------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h)
{
    nb_conn_t *c = h->data;
    if (--c->handles_open > 0)
        return;
    while (c->txq) {
        nb__tx_t *t = c->txq;
        c->txq = t->next;
        if (t->free_cb)
            t->free_cb((void *)t->payload, t->free_ud);
        free(t->hdr);
        free(t);
    }
    nb_frame_rx_free(&c->rx);
    nb__probe_closed(c);
    nb_tls_free(c->tls);
    c->tls = NULL;
    free(c->plain);
    c->plain = NULL;
    nb_net_t *n = c->net;
    n->stats.closed++;
    if (c->reported_ready && n->cb.on_closed)
        n->cb.on_closed(c, c->close_err, n->ud);
    nb__net_conn_gone(c); /* frees c */
}

static void close_handles(nb_conn_t *c)
{
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->handles_open = 3;
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->tick, on_handle_closed);
    uv_close((uv_handle_t *)&c->delay, on_handle_closed);
}

/* Immediate close after an error (or an orderly close that finished). The
 * object is freed later, from the close callbacks. */
void nb__conn_fail(nb_conn_t *c, int err)
{
    if (c->closing)
        return;
    if (c->rx.state != 0 || c->rx.have != 0) {
        if (c->rx.state <= 2) { /* prefix, header or payload part way */
            c->net->stats.frame_faults++;
            c->net->stats.truncated_frames++;
            nb_log_warn(who(c), "connection from %s ended inside a frame (truncated frame dropped)",
                        c->addr);
        }
    }
    c->closing = 1;
    c->close_err = err;
    close_handles(c);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    nb_conn_t *c = req->data;
    if (!c->closing) {
        c->closing = 1;
        close_handles(c);
    }
}

static void flush_tls(nb_conn_t *c);

/* The queue is empty: say close_notify, half-close, then close. */
static void finish_drain(nb_conn_t *c)
{
    if (c->closing || c->inflight)
        return;
    uv_os_fd_t fd;
    if (c->ktls_tx && uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
        nb_ktls_send_alert(fd, 1, 0); /* close_notify, sealed by the kernel */
    else if (c->tls)
        nb_tls_shutdown(c->tls);
    flush_tls(c);
    c->sreq.data = c;
    c->close_err = 0;
    if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
        nb__conn_fail(c, 0);
    else
        c->draining = 2; /* shutdown in flight */
}

void nb_conn_close(nb_conn_t *c)
{
    if (c->closing || c->draining)
        return;
    if (c->state != NB__C_READY) {
        nb__conn_fail(c, 0);
        return;
    }
    c->draining = 1;
    /* No pings while draining: last_ping_ms now marks the start of the
     * drain, which on_tick bounds by dead_after_ms. Left as it was, a
     * connection closed before its first heartbeat (last_ping_ms 0) was cut
     * at the next tick, its queued frames lost. */
    c->last_ping_ms = now_ms(c);
    if (!c->txq)
        finish_drain(c);
}

/* ---- send ------------------------------------------------------------------- */

typedef struct {
    uv_write_t req;
    nb_conn_t *c;
    size_t len;
    uint8_t *data; /* ciphertext from nb_tls_take_out */
} wbuf_t;

static void pump(nb_conn_t *c);
static void try_ktls(nb_conn_t *c);
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_write(uv_write_t *req, int status)
{
    wbuf_t *w = (wbuf_t *)req;
    nb_conn_t *c = w->c;
    c->inflight -= w->len;
    free(w->data);
    free(w);
    if (c->closing)
        return;
    if (status < 0) {
        nb_log_warn(who(c), "write failed: %s", uv_strerror(status));
        nb__conn_fail(c, NB_EIO);
        return;
    }
    if (c->ktls_pending)
        try_ktls(c); /* pumps */
    else
        pump(c);
}

/* Hands data (malloc'd, len bytes; ours from now on) to libuv. */
static int write_buf(nb_conn_t *c, uint8_t *data, size_t len)
{
    wbuf_t *w = malloc(sizeof *w);
    if (!w) {
        free(data);
        nb__conn_fail(c, NB_ENOMEM);
        return NB_ENOMEM;
    }
    w->c = c;
    w->data = data;
    w->len = len;
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)w->len);
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (rc < 0) {
        free(w->data);
        free(w);
        nb__conn_fail(c, NB_EIO);
        return NB_EIO;
    }
    c->inflight += w->len;
    return 0;
}

static void flush_tls(nb_conn_t *c)
{
    if (c->closing || !c->tls)
        return;
    if (c->ktls_tx) {
        /* OpenSSL's own records (a key update, an alert) were sealed with
         * keys the kernel now owns the sequence of: they cannot go out */
        if (nb_tls_pending_out(c->tls) > 0) {
            size_t n;
            free(nb_tls_take_out(c->tls, &n));
        }
        if (c->plain_len) {
            uint8_t *d = c->plain;
            size_t n = c->plain_len;
            c->plain = NULL;
            c->plain_len = c->plain_cap = 0;
            write_buf(c, d, n);
        }
        return;
    }
    while (nb_tls_pending_out(c->tls) > 0) {
        size_t len;
        uint8_t *d = nb_tls_take_out(c->tls, &len);
        if (write_buf(c, d, len) != 0)
            return;
    }
}

/* ktls_tx: frame bytes gathered for the next write (the kernel seals them). */
static int plain_append(nb_conn_t *c, const uint8_t *p, size_t k)
{
    if (c->plain_len + k > c->plain_cap) {
        size_t cap = c->plain_len + k > NB__NET_CHUNK ? c->plain_len + k : NB__NET_CHUNK;
        uint8_t *n = realloc(c->plain, cap);
        if (!n)
            return NB_ENOMEM;
        c->plain = n;
        c->plain_cap = cap;
    }
    memcpy(c->plain + c->plain_len, p, k);
    c->plain_len += k;
    return 0;
}

/* After the handshake, once its last flight has left (nothing in flight, no
 * ciphertext waiting): hands the sending direction to the kernel, or falls
 * back to OpenSSL (tls.ktls auto), or fails the connection (tls.ktls on, or
 * a socket the kernel took but would not key). Then resumes sending. */
static void try_ktls(nb_conn_t *c)
{
    if (!c->ktls_pending || c->closing || c->inflight || nb_tls_pending_out(c->tls) > 0)
        return;
    c->ktls_pending = 0;
    nb_tls_tx_keys_t k;
    char why[160] = "";
    int rc = nb_tls_tx_keys(c->tls, &k);
    if (rc == 0) {
        uv_os_fd_t fd;
        rc = uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0 ? nb_ktls_enable_tx(fd, &k, why, sizeof why) : NB_EIO;
        OPENSSL_cleanse(&k, sizeof k);
    } else {
        snprintf(why, sizeof why, "no sending keys (%s)", nb_strerror(rc));
    }
    if (rc == 0) {
        c->ktls_tx = 1;
        c->net->stats.ktls_tx++;
        nb_log_debug(who(c), "kernel TLS encrypts what this side sends");
    } else if (rc == NB_ECLOSED || c->net->cfg.ktls == NB_KTLS_ON) {
        nb_log_error(who(c), "kernel TLS refused (%s); closing the connection", why);
        nb__conn_fail(c, NB_EIO);
        return;
    } else {
        c->net->stats.ktls_fallbacks++;
        nb_log_debug(who(c), "kernel TLS refused (%s); OpenSSL encrypts", why);
    }
    pump(c);
}

static void maybe_writable(nb_conn_t *c)
{
    size_t lim = c->net->cfg.send_queue_bytes;
    if (c->probe.tx_blocked && c->queued < lim / 2 && !c->closing && !c->draining)
        nb__probe_writable(c);
    if (c->want_writable && c->queued < lim / 2 && !c->closing && !c->draining) {
        c->want_writable = 0;
        if (c->net->cb.on_writable)
            c->net->cb.on_writable(c, c->net->ud);
    }
}

static void process_plain(nb_conn_t *c);

/* Reading from the socket is on while the application has not paused it
 * and this loop turn's frame budget is not spent. */
static void update_reading(nb_conn_t *c)
{
    int want = !c->closing && !c->read_paused && !c->read_yielded;
    if (want == c->reading)
        return;
    if (want && uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        nb__conn_fail(c, NB_EIO);
        return;
    }
    if (!want)
        uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = want;
}

static void on_delay(uv_timer_t *t)
{
    nb_conn_t *c = t->data;
    if (c->resume_pending && !c->read_paused && !c->closing && c->tls) {
        c->resume_pending = 0;
        c->read_yielded = 0;
        process_plain(c); /* may spend the budget again and yield */
        if (!c->closing && nb_tls_feed_done(c->tls) < 0)
            nb__conn_fail(c, NB_ENOMEM);
        if (c->closing)
            return;
        update_reading(c);
        if (c->closing)
            return;
    }
    pump(c);
}

/* Encrypts queued frames in chunks while less than NB__NET_INFLIGHT bytes of
 * ciphertext wait in libuv, so a slow socket stops the pump and the queue
 * (bounded by send_queue_bytes) holds the rest. */
static void pump(nb_conn_t *c)
{
    while (!c->closing && !c->ktls_pending && c->state >= NB__C_HELLO && c->inflight < NB__NET_INFLIGHT &&
           c->txq) {
        nb__tx_t *t = c->txq;
        if (t->due_ms) {
            uint64_t now = now_ms(c);
            if (t->due_ms > now) {
                uv_timer_start(&c->delay, on_delay, t->due_ms - now, 0);
                return;
            }
        }
        size_t budget = NB__NET_CHUNK;
        while (budget && t->off < t->hdr_len + t->len) {
            const uint8_t *p;
            size_t avail;
            if (t->off < t->hdr_len) {
                p = t->hdr + t->off;
                avail = t->hdr_len - t->off;
            } else {
                p = t->payload + (t->off - t->hdr_len);
                avail = t->len - (t->off - t->hdr_len);
            }
            size_t k = avail < budget ? avail : budget;
            if (c->ktls_tx ? plain_append(c, p, k) < 0 : nb_tls_write(c->tls, p, k) < 0) {
                nb_log_warn(who(c), "TLS write failed");
                nb__conn_fail(c, NB_EIO);
                return;
            }
            t->off += k;
            budget -= k;
        }
        if (t->off == t->hdr_len + t->len) {
            c->txq = t->next;
            if (!c->txq)
                c->txq_tail = NULL;
            if (!t->internal)
                c->queued -= t->hdr_len + t->len;
            c->net->stats.frames_tx++;
            c->net->stats.payload_tx += t->len;
            c->probe.link.bytes_tx += t->len;
            if (t->free_cb)
                t->free_cb((void *)t->payload, t->free_ud);
            free(t->hdr);
            free(t);
        }
        flush_tls(c);
    }
    if (c->closing)
        return;
    maybe_writable(c);
    if (c->draining == 1 && !c->txq && !c->inflight)
        finish_drain(c);
}

static int enqueue(nb_conn_t *c, Nebula__Frame *f, const void *payload, size_t len,
                   nb_free_cb free_cb, void *free_ud, int internal, int front)
{
    uint8_t *hdr;
    size_t hlen;
    int rc = nb_frame_encode(f, payload, len, &c->net->cfg.limits, &hdr, &hlen);
    if (rc)
        return rc;
    nb__tx_t *t = calloc(1, sizeof *t);
    if (!t) {
        free(hdr);
        return NB_ENOMEM;
    }
    t->hdr = hdr;
    t->hdr_len = hlen;
    t->payload = payload;
    t->len = len;
    t->free_cb = free_cb;
    t->free_ud = free_ud;
    t->internal = internal;
    if (c->net->cfg.emu_send_delay_ms)
        t->due_ms = now_ms(c) + c->net->cfg.emu_send_delay_ms;
    /* Control frames go ahead of application frames but stay in order among
     * themselves (the Hello first), and never split a frame already begun. */
    nb__tx_t **pp = &c->txq;
    if (front)
        while (*pp && ((*pp)->internal || (*pp)->off > 0))
            pp = &(*pp)->next;
    else if (c->txq_tail)
        pp = &c->txq_tail->next;
    t->next = *pp;
    *pp = t;
    if (!t->next)
        c->txq_tail = t;
    if (!internal)
        c->queued += hlen + len;
    /* Never pump from here: the caller may be inside a callback of ours, and
     * free_cb must not run inside nb_conn_send. The delay timer with 0 runs
     * the pump on the next loop iteration. */
    if (!uv_is_active((uv_handle_t *)&c->delay))
        uv_timer_start(&c->delay, on_delay, 0, 0);
    return 0;
}

int nb__conn_send_internal(nb_conn_t *c, Nebula__Frame *f, const void *payload,
                           size_t len, nb_free_cb free_cb, void *free_ud)
{
    if (c->closing)
        return NB_ESTATE;
    return enqueue(c, f, payload, len, free_cb, free_ud, 1, 1);
}

int nb__conn_send_counted(nb_conn_t *c, Nebula__Frame *f, const void *payload, size_t len,
                          nb_free_cb free_cb, void *free_ud)
{
    if (c->closing || c->draining || c->state != NB__C_READY)
        return NB_ESTATE;
    if (c->queued >= c->net->cfg.send_queue_bytes)
        return NB_ELIMIT;
    return enqueue(c, f, payload, len, free_cb, free_ud, 0, 0);
}

int nb_conn_send(nb_conn_t *c, Nebula__Frame *hdr, const void *payload, size_t len,
                 nb_free_cb free_cb, void *free_ud)
{
    if (c->closing || c->draining || c->state != NB__C_READY)
        return NB_ESTATE;
    if (c->queued >= c->net->cfg.send_queue_bytes) {
        c->want_writable = 1;
        return NB_ELIMIT;
    }
    /* A frame over the limits can never be sent: not NB_ELIMIT, which the
     * caller takes for back-pressure and would retry forever. */
    if (len > c->net->cfg.limits.max_payload) {
        nb_log_error(who(c), "frame of %zu payload bytes is over transport.max_frame_payload (%llu); not sent", len,
                     (unsigned long long)c->net->cfg.limits.max_payload);
        return NB_ERANGE;
    }
    int rc = enqueue(c, hdr, payload, len, free_cb, free_ud, 0, 0);
    return rc == NB_ELIMIT ? NB_ERANGE : rc;
}

void nb_conn_pause_read(nb_conn_t *c)
{
    if (c->closing || c->read_paused || c->state != NB__C_READY)
        return;
    c->read_paused = 1;
    update_reading(c);
}

void nb_conn_resume_read(nb_conn_t *c)
{
    if (c->closing || !c->read_paused)
        return;
    c->read_paused = 0;
    c->last_rx_ms = now_ms(c);
    /* A pong that waited in the socket while we did not read would be a
     * false RTT sample: forget the outstanding ping. */
    if (!c->probe.rtt_cb)
        c->probe.ping_t_ns = 0;
    update_reading(c);
    if (c->closing)
        return;
    /* Frames already decrypted or buffered were left when the read paused:
     * decode them on the next tick (never from inside this call). */
    c->resume_pending = 1;
    uv_timer_start(&c->delay, on_delay, 0, 0);
}

size_t nb_conn_queued_bytes(const nb_conn_t *c)
{
    return c->queued;
}

const char *nb_conn_peer_name(const nb_conn_t *c)
{
    return c->name;
}

const char *nb_conn_tls_layer(const nb_conn_t *c)
{
    return c->ktls_tx ? "ktls-tx" : "user";
}

const char *nb_conn_tls_cipher(const nb_conn_t *c)
{
    const char *s = c->tls ? nb_tls_cipher(c->tls) : NULL;
    return s ? s : "";
}

const char *nb_conn_addr(const nb_conn_t *c)
{
    return c->addr;
}

/* ---- receive ---------------------------------------------------------------- */

static void send_hello(nb_conn_t *c)
{
    Nebula__Frame f = NEBULA__FRAME__INIT;
    Nebula__Hello h = NEBULA__HELLO__INIT;
    static char cap_probe[] = "probe:bulk";
    static char cap_raw[] = "codec:raw";
    char *caps[] = { cap_probe, cap_raw };
    h.protocol_version = NB_PROTOCOL_VERSION;
    h.daemon_name = (char *)c->net->cfg.name;
    h.role = c->net->cfg.role;
    h.n_capabilities = 2;
    h.capabilities = caps;
    f.body_case = NEBULA__FRAME__BODY_HELLO;
    f.hello = &h;
    if (enqueue(c, &f, NULL, 0, NULL, NULL, 1, 1) != 0)
        nb__conn_fail(c, NB_ENOMEM);
}

static void refuse_frame(nb_conn_t *c, int err, const char *why)
{
    nb_net_stats_t *s = &c->net->stats;
    s->frame_faults++;
    if (-err >= 0 && -err < (int)NB_ARRAY_LEN(s->frame_fault_by_code))
        s->frame_fault_by_code[-err]++;
    nb_log_warn(who(c), "refused frame from %s: %s (%s); closing connection", c->addr, why,
                nb_strerror(err));
    nb__conn_fail(c, err);
}

static void handle_hello(nb_conn_t *c, Nebula__Frame *f)
{
    Nebula__Hello *h = f->hello;
    if (h->protocol_version != NB_PROTOCOL_VERSION) {
        c->net->stats.hello_refused++;
        nb_log_warn(who(c), "refused hello from %s: protocol version %u, this daemon speaks %u",
                    c->addr, h->protocol_version, NB_PROTOCOL_VERSION);
        nb__conn_fail(c, NB_EVERSION);
        return;
    }
    if (strcmp(h->daemon_name, c->name) != 0) {
        c->net->stats.hello_refused++;
        nb_log_warn(who(c), "refused hello from %s: daemon name '%.64s' is not the certificate name",
                    c->addr, h->daemon_name);
        nb__conn_fail(c, NB_EAUTH);
        return;
    }
    /* One connection per peer name. While the old one is alive (heard
     * from within two heartbeats, or paused by us) a newcomer under the
     * same name is refused: it may be a copy of a stage key, and evicting a
     * healthy link would fail the job. A peer that restarted left an old
     * connection that is closed or silent: that one is replaced. */
    uint64_t now = now_ms(c);
    for (nb_conn_t *o = c->net->conns; o; o = o->next) {
        if (o == c || o->state != NB__C_READY || o->closing || strcmp(o->name, c->name) != 0)
            continue;
        uint64_t quiet = now - o->last_rx_ms;
        if (o->read_paused || quiet < 2ull * c->net->cfg.heartbeat_ms) {
            c->net->stats.dup_refused++;
            NB__LOG_PEER_REFUSAL(c->net, c->name,
                                 "refused a second connection as '%s' from %s: the connection "
                                 "from %s is alive (heard from %llu ms ago)",
                                 c->name, c->addr, o->addr, (unsigned long long)quiet);
            nb__conn_fail(c, NB_EAUTH);
            return;
        }
        nb_log_warn(c->name, "new connection from %s replaces the one from %s (silent for %llu ms)",
                    c->addr, o->addr, (unsigned long long)quiet);
        nb__conn_fail(o, NB_ECLOSED);
    }
    c->state = NB__C_READY;
    nb__admit_release(c);
    c->rx.allow_payload = 1;
    c->reported_ready = 1;
    c->net->stats.ready++;
    if (c->peer)
        c->peer->attempts = 0;
    nb_log_info(c->name, "connected (%s, %s, %s)", c->addr, nb_tls_version(c->tls),
                nb_tls_cipher(c->tls));
    if (c->net->cb.on_ready)
        c->net->cb.on_ready(c, c->net->ud);
}

/* Handles one complete frame; takes ownership of f and payload. */
static void handle_frame(nb_conn_t *c, Nebula__Frame *f, uint8_t *payload, size_t len)
{
    nb_net_t *n = c->net;
    n->stats.frames_rx++;
    n->stats.payload_rx += len;
    c->probe.link.bytes_rx += len;
    if (c->state != NB__C_READY) {
        if (f->body_case == NEBULA__FRAME__BODY_HELLO)
            handle_hello(c, f);
        else {
            n->stats.hello_refused++;
            nb_log_warn(who(c), "refused frame from %s: message type %d before hello",
                        c->addr, (int)f->body_case);
            nb__conn_fail(c, NB_ESTATE);
        }
        nebula__frame__free_unpacked(f, NULL);
        free(payload);
        return;
    }
    switch (f->body_case) {
    case NEBULA__FRAME__BODY_HELLO:
        refuse_frame(c, NB_ESTATE, "second hello");
        break;
    case NEBULA__FRAME__BODY_PROBE:
        nb__probe_on_frame(c, f, payload, len); /* takes f and payload */
        return;
    case NEBULA__FRAME__BODY_HEARTBEAT:
        break;
    case NEBULA__FRAME__BODY_TENSOR:
        if (f->tensor->job_id == 0 || f->tensor->job_id != n->job_id) {
            n->stats.unknown_job++;
            refuse_frame(c, NB_EINVAL, "tensor for an unknown job");
            break;
        }
        if (len >= (64u << 10) && c->rx_frame_start_ns) {
            uint64_t dt = nb_mono_ns() - c->rx_frame_start_ns;
            if (dt > 0) {
                double bps = (double)len * 1e9 / (double)dt;
                c->probe.link.rx_bps_ewma = c->probe.link.rx_bps_ewma == 0
                                          ? bps
                                          : c->probe.link.rx_bps_ewma * 0.875 + bps * 0.125;
            }
        }
        /* fall through */
    default:
        if (n->cb.on_frame) {
            n->cb.on_frame(c, f, payload, len, n->ud);
            return;
        }
    }
    nebula__frame__free_unpacked(f, NULL);
    free(payload);
}

static void count_refusal(nb_conn_t *c)
{
    const char *detail;
    nb_tls_refusal_t r = nb_tls_refusal(c->tls, &detail);
    c->net->stats.tls_refused[r]++;
    if (c->is_server) /* a stranger can cause this as often as it likes */
        NB__LOG_REFUSAL(c->net, who(c), "refused TLS from %s: %s: %s", c->addr,
                        nb_tls_refusal_name(r), detail);
    else
        nb_log_warn(who(c), "refused TLS to %s: %s: %s", c->addr, nb_tls_refusal_name(r), detail);
}

static void on_handshake_done(nb_conn_t *c)
{
    const char *pn = nb_tls_peer_name(c->tls);
    NB_CHECK(pn && pn[0]);
    snprintf(c->name, sizeof c->name, "%s", pn);
    c->state = NB__C_HELLO;
    c->rx.allow_payload = 0; /* nothing but Hello until the peer said hello */
    c->ktls_pending = c->ktls_want; /* the Hello waits for the switch */
    send_hello(c);
    try_ktls(c);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    nb_conn_t *c = h->data;
    *buf = uv_buf_init((char *)c->readbuf, sizeof c->readbuf);
}

/* Nothing a peer sends holds the loop for long: after
 * NB__NET_FRAMES_PER_TURN frames the connection stops reading for this loop
 * turn and decodes the rest (already buffered) on the next. */
static void yield_read(nb_conn_t *c)
{
    c->read_yielded = 1;
    update_reading(c);
    c->resume_pending = 1;
    uv_timer_start(&c->delay, on_delay, 0, 0);
}

static void process_plain(nb_conn_t *c)
{
    int frames = 0;
    while (!c->closing && !c->read_paused && !c->read_yielded) {
        if (frames == NB__NET_FRAMES_PER_TURN) {
            yield_read(c);
            return;
        }
        uint8_t *dst;
        size_t want;
        nb_frame_rx_want(&c->rx, &dst, &want);
        int was_prefix = c->rx.state == 0 && c->rx.have == 0;
        long n = nb_tls_read(c->tls, dst, want);
        if (n == 0)
            return;
        if (n == NB_EAUTH) {
            count_refusal(c);
            nb__conn_fail(c, NB_EAUTH);
            return;
        }
        if (n == NB_ECLOSED) {
            nb_log_info(who(c), "peer closed the connection");
            nb__conn_fail(c, c->rx.state == 0 && c->rx.have == 0 ? 0 : NB_ECLOSED);
            return;
        }
        if (n < 0) {
            const char *d;
            nb_tls_refusal(c->tls, &d);
            nb_log_warn(who(c), "TLS read failed: %s", d);
            nb__conn_fail(c, NB_EIO);
            return;
        }
        if (was_prefix)
            c->rx_frame_start_ns = nb_mono_ns();
        int rc = nb_frame_rx_advance(&c->rx, (size_t)n);
        if (rc < 0) {
            refuse_frame(c, rc, c->rx.fault);
            return;
        }
        if (rc == 1) {
            Nebula__Frame *f;
            uint8_t *p;
            size_t len;
            nb_frame_rx_take(&c->rx, &f, &p, &len);
            frames++;
            handle_frame(c, f, p, len);
        }
    }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    nb_conn_t *c = s->data;
    if (c->closing || nread == 0)
        return;
    if (nread < 0) {
        if (c->state == NB__C_READY || c->state == NB__C_HELLO)
            nb_log_info(who(c), "connection closed by peer (%s)", uv_err_name((int)nread));
        else if (c->is_server)
            NB__LOG_REFUSAL(c->net, who(c), "connection from %s lost during TLS handshake (%s)",
                            c->addr, uv_err_name((int)nread));
        else
            nb_log_warn(who(c), "connection to %s lost during TLS handshake (%s)", c->addr,
                        uv_err_name((int)nread));
        nb__conn_fail(c, nread == UV_EOF ? NB_ECLOSED : NB_EIO);
        return;
    }
    c->last_rx_ms = now_ms(c);
    if (nb_tls_feed(c->tls, buf->base, (size_t)nread) < 0) {
        count_refusal(c);
        nb__conn_fail(c, NB_EAUTH);
        return;
    }
    if (c->state == NB__C_HANDSHAKE) {
        int r = nb_tls_handshake(c->tls);
        flush_tls(c);
        if (r < 0) {
            count_refusal(c);
            nb__conn_fail(c, NB_EAUTH);
            return;
        }
        if (c->closing)
            return;
        if (r == 0) {
            if (nb_tls_feed_done(c->tls) < 0)
                nb__conn_fail(c, NB_ENOMEM);
            return;
        }
        on_handshake_done(c);
    }
    process_plain(c);
    if (c->closing)
        return;
    if (nb_tls_feed_done(c->tls) < 0) {
        nb__conn_fail(c, NB_ENOMEM);
        return;
    }
    flush_tls(c); /* e.g. TLS key updates */
}

/* ---- timers ------------------------------------------------------------------- */

static void hb_sent(void *payload, void *ud)
{
    (void)payload;
    *(int *)ud = 0;
}

static void on_tick(uv_timer_t *t)
{
    nb_conn_t *c = t->data;
    if (c->closing)
        return;
    const nb_net_cfg_t *cfg = &c->net->cfg;
    uint64_t now = now_ms(c);
    if (c->state != NB__C_READY) {
        if (now - c->t_open_ms >= cfg->handshake_timeout_ms) {
            c->net->stats.handshake_timeouts++;
            if (c->is_server)
                NB__LOG_REFUSAL(c->net, who(c), "handshake with %s timed out after %u ms",
                                c->addr, cfg->handshake_timeout_ms);
            else
                nb_log_warn(who(c), "handshake with %s timed out after %u ms", c->addr,
                            cfg->handshake_timeout_ms);
            nb__conn_fail(c, NB_ETIMEDOUT);
        }
        return;
    }
    if (c->read_paused)
        c->last_rx_ms = now; /* not reading: silence proves nothing */
    if (now - c->last_rx_ms >= cfg->dead_after_ms) {
        c->net->stats.dead_peers++;
        nb_log_warn(who(c), "peer silent for %llu ms: declared dead",
                    (unsigned long long)(now - c->last_rx_ms));
        nb__conn_fail(c, NB_ETIMEDOUT);
        return;
    }
    if (c->draining && now - c->last_ping_ms >= cfg->dead_after_ms) {
        /* An orderly close that cannot drain in time becomes a hard one. */
        nb__conn_fail(c, NB_ETIMEDOUT);
        return;
    }
    if (!c->draining && now - c->last_ping_ms >= cfg->heartbeat_ms) {
        c->last_ping_ms = now;
        if (c->probe.ping_t_ns) {
            /* The last ping is unanswered (slow link, or we are not
             * reading): still prove to the peer that we are alive. */
            Nebula__Frame f = NEBULA__FRAME__INIT;
            Nebula__Heartbeat hb = NEBULA__HEARTBEAT__INIT;
            hb.t_ns = nb_mono_ns();
            f.body_case = NEBULA__FRAME__BODY_HEARTBEAT;
            f.heartbeat = &hb;
            /* one at a time: a peer that does not read cannot grow the queue */
            if (!c->probe.hb_queued &&
                nb__conn_send_internal(c, &f, NULL, 0, hb_sent, &c->probe.hb_queued) == 0)
                c->probe.hb_queued = 1;
        } else {
            nb__probe_ping(c);
        }
    }
}

/* ---- setup ---------------------------------------------------------------------- */

int nb__conn_new(nb_net_t *n, int is_server, nb__peer_t *peer, nb_conn_t **out)
{
    nb_conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return NB_ENOMEM;
    c->net = n;
    c->peer = peer;
    c->is_server = is_server;
    c->state = NB__C_CONNECTING;
    snprintf(c->addr, sizeof c->addr, "?");
    if (peer)
        snprintf(c->name, sizeof c->name, "%s", peer->name);
    nb_frame_rx_init(&c->rx, &n->cfg.limits);
    c->rx.allow_payload = 0;
    uv_tcp_init(n->loop, &c->tcp);
    uv_timer_init(n->loop, &c->tick);
    uv_timer_init(n->loop, &c->delay);
    c->tcp.data = c->tick.data = c->delay.data = c;
    c->t_open_ms = c->last_rx_ms = uv_now(n->loop);
    uint32_t tick = n->cfg.heartbeat_ms / 4;
    if (tick > 250)
        tick = 250;
    if (tick < 10)
        tick = 10;
    uv_timer_start(&c->tick, on_tick, tick, tick);
    c->next = n->conns;
    n->conns = c;
    *out = c;
    return 0;
}

/* The TCP connection is up: create the TLS session (re-reading the
 * certificate files) and start the handshake. */
void nb__conn_start_tls(nb_conn_t *c)
{
    nb_net_t *n = c->net;
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        char ip[48] = "?";
        int port = 0;
        if (ss.ss_family == AF_INET) {
            uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        }
        snprintf(c->addr, sizeof c->addr, "%s:%d", ip, port);
    }
    uv_tcp_nodelay(&c->tcp, 1);
    char err[256] = "";
    const char *one[1] = { c->name };
    int rc;
    if (c->is_server) {
        if (n->cfg.n_allowed_peers == 0) {
            n->stats.tls_refused[NB_TLS_REFUSE_OTHER]++;
            NB__LOG_REFUSAL(n, c->addr, "refused connection from %s: no inbound peers configured", c->addr);
            nb__conn_fail(c, NB_EAUTH);
            return;
        }
        rc = nb_tls_new(&n->cfg.tls, 1, (const char *const *)n->allowed, n->cfg.n_allowed_peers,
                        &c->tls, err, sizeof err);
    } else {
        rc = nb_tls_new(&n->cfg.tls, 0, one, 1, &c->tls, err, sizeof err);
    }
    if (rc < 0) {
        nb_log_error(who(c), "cannot set up TLS: %s", err);
        nb__conn_fail(c, rc);
        return;
    }
    if (n->cfg.ktls != NB_KTLS_OFF && nb_ktls_available(NULL)) {
        c->ktls_want = 1;
        nb_tls_keep_tx_secret(c->tls);
    }
    c->state = NB__C_HANDSHAKE;
    update_reading(c);
    if (c->closing)
        return;
    if (!c->is_server) {
        if (nb_tls_handshake(c->tls) < 0) {
            count_refusal(c);
            nb__conn_fail(c, NB_EAUTH);
            return;
        }
        flush_tls(c);
    }
}
