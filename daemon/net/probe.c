/*
 * probe.c - RTT and bandwidth measurement over Probe frames, and the passive
 * link estimates. See probe.h for the API, docs/protocol.md for the frames.
 */
#include <string.h>
#include "kernels/common.h"
#include "daemon/log.h"
#include "daemon/net/net_internal.h"

/* Probe chunks all point into this one zeroed buffer: nothing is copied and
 * nothing is freed per chunk. */
static const uint8_t probe_zeros[NB__PROBE_CHUNK];

static int send_probe(nb_conn_t *c, Nebula__Probe *pr, const void *payload, size_t len)
{
    Nebula__Frame f = NEBULA__FRAME__INIT;
    f.body_case = NEBULA__FRAME__BODY_PROBE;
    f.probe = pr;
    return nb__conn_send_internal(c, &f, payload, len, NULL, NULL);
}

int nb__probe_ping(nb_conn_t *c)
{
    if (c->ping_t_ns)
        return NB_ESTATE; /* one outstanding at a time */
    Nebula__Probe pr = NEBULA__PROBE__INIT;
    pr.kind = NEBULA__PROBE__KIND__PROBE_PING;
    pr.id = ++c->ping_id;
    pr.t_ns = nb__now_ns();
    int rc = send_probe(c, &pr, NULL, 0);
    if (rc == 0)
        c->ping_t_ns = pr.t_ns;
    return rc;
}

int nb_probe_rtt(nb_conn_t *c, nb_probe_rtt_cb cb, void *ud)
{
    if (c->state != NB__C_READY || c->closing || c->rtt_cb)
        return NB_ESTATE;
    c->rtt_cb = cb;
    c->rtt_ud = ud;
    if (c->ping_t_ns)
        return 0; /* a heartbeat ping is out; its pong answers this too */
    int rc = nb__probe_ping(c);
    if (rc)
        c->rtt_cb = NULL;
    return rc;
}

static int bulk_send(nb_conn_t *c, uint64_t id, uint64_t bytes)
{
    uint64_t off = 0, seq = 0;
    while (off < bytes) {
        uint64_t n = bytes - off < NB__PROBE_CHUNK ? bytes - off : NB__PROBE_CHUNK;
        Nebula__Probe pr = NEBULA__PROBE__INIT;
        pr.kind = NEBULA__PROBE__KIND__PROBE_BULK;
        pr.id = id;
        pr.seq = seq++;
        pr.total_bytes = bytes;
        int rc = send_probe(c, &pr, probe_zeros, (size_t)n);
        if (rc)
            return rc;
        off += n;
    }
    return 0;
}

static int bw_start(nb_conn_t *c, uint64_t bytes, nb_probe_bw_cb cb, void *ud, int dir)
{
    if (bytes < 2 * NB__PROBE_CHUNK || bytes > (1ull << 30))
        return NB_ERANGE;
    if (c->state != NB__C_READY || c->closing || c->bw_cb)
        return NB_ESTATE;
    c->bw_id++;
    c->bw_total = bytes;
    int rc;
    if (dir == 1) {
        rc = bulk_send(c, c->bw_id, bytes);
    } else {
        Nebula__Probe pr = NEBULA__PROBE__INIT;
        pr.kind = NEBULA__PROBE__KIND__PROBE_BULK_REQUEST;
        pr.id = c->bw_id;
        pr.total_bytes = bytes;
        rc = send_probe(c, &pr, NULL, 0);
    }
    if (rc)
        return rc;
    c->bw_cb = cb;
    c->bw_ud = ud;
    c->bw_dir = dir;
    return 0;
}

int nb_probe_bw_send(nb_conn_t *c, uint64_t bytes, nb_probe_bw_cb cb, void *ud)
{
    return bw_start(c, bytes, cb, ud, 1);
}

int nb_probe_bw_recv(nb_conn_t *c, uint64_t bytes, nb_probe_bw_cb cb, void *ud)
{
    return bw_start(c, bytes, cb, ud, 2);
}

static void bw_finish(nb_conn_t *c, int status, double bps)
{
    nb_probe_bw_cb cb = c->bw_cb;
    void *ud = c->bw_ud;
    if (status == 0) {
        if (c->bw_dir == 1)
            c->link.tx_bw_probe = bps;
        else
            c->link.rx_bw_probe = bps;
    }
    c->bw_cb = NULL;
    c->bw_dir = 0;
    if (cb)
        cb(c, status, bps, ud);
}

/* Receiver side of a bulk transfer: the clock starts when the first chunk
 * has arrived and only the bytes after it count, so the fill latency of the
 * path does not bias the rate. */
static void on_bulk(nb_conn_t *c, const Nebula__Probe *pr, size_t len)
{
    uint64_t now = nb__now_ns();
    if (pr->seq == 0 || pr->id != c->bwr_id) {
        c->bwr_id = pr->id;
        c->bwr_total = pr->total_bytes;
        c->bwr_got = len;
        c->bwr_measured = 0;
        c->bwr_t0_ns = now;
    } else {
        c->bwr_got += len;
        c->bwr_measured += len;
    }
    if (c->bwr_got < c->bwr_total)
        return;
    uint64_t dt = now - c->bwr_t0_ns;
    if (c->bw_dir == 2 && pr->id == c->bw_id) {
        /* We asked for this transfer: we are the measuring end. */
        bw_finish(c, dt ? 0 : NB_ERANGE, dt ? (double)c->bwr_measured * 1e9 / (double)dt : 0);
        return;
    }
    Nebula__Probe r = NEBULA__PROBE__INIT;
    r.kind = NEBULA__PROBE__KIND__PROBE_BULK_RESULT;
    r.id = pr->id;
    r.total_bytes = c->bwr_total;
    r.measured_bytes = c->bwr_measured;
    r.duration_ns = dt;
    send_probe(c, &r, NULL, 0);
}

void nb__probe_on_frame(nb_conn_t *c, Nebula__Frame *f, uint8_t *payload, size_t len)
{
    const Nebula__Probe *pr = f->probe;
    switch (pr->kind) {
    case NEBULA__PROBE__KIND__PROBE_PING: {
        Nebula__Probe r = NEBULA__PROBE__INIT;
        r.kind = NEBULA__PROBE__KIND__PROBE_PONG;
        r.id = pr->id;
        r.t_ns = pr->t_ns;
        send_probe(c, &r, NULL, 0);
        break;
    }
    case NEBULA__PROBE__KIND__PROBE_PONG:
        if (c->ping_t_ns && pr->id == c->ping_id && pr->t_ns == c->ping_t_ns) {
            double ms = (double)(nb__now_ns() - c->ping_t_ns) / 1e6;
            c->ping_t_ns = 0;
            c->link.rtt_ms = ms;
            c->link.rtt_ewma_ms = c->link.rtt_ewma_ms == 0 ? ms
                                                           : c->link.rtt_ewma_ms * 0.875 + ms * 0.125;
            if (c->rtt_cb) {
                nb_probe_rtt_cb cb = c->rtt_cb;
                c->rtt_cb = NULL;
                cb(c, 0, ms, c->rtt_ud);
            }
        }
        break;
    case NEBULA__PROBE__KIND__PROBE_BULK:
        on_bulk(c, pr, len);
        break;
    case NEBULA__PROBE__KIND__PROBE_BULK_RESULT:
        if (c->bw_dir == 1 && pr->id == c->bw_id) {
            int ok = pr->duration_ns > 0 && pr->measured_bytes > 0;
            bw_finish(c, ok ? 0 : NB_ERANGE,
                      ok ? (double)pr->measured_bytes * 1e9 / (double)pr->duration_ns : 0);
        }
        break;
    case NEBULA__PROBE__KIND__PROBE_BULK_REQUEST:
        if (pr->total_bytes >= 2 * NB__PROBE_CHUNK && pr->total_bytes <= (1ull << 30))
            bulk_send(c, pr->id, pr->total_bytes);
        else
            nb_log_warn(c->name, "ignored bulk probe request of %llu bytes",
                        (unsigned long long)pr->total_bytes);
        break;
    default:
        break;
    }
    nebula__frame__free_unpacked(f, NULL);
    free(payload);
}

void nb__probe_closed(nb_conn_t *c)
{
    if (c->rtt_cb) {
        nb_probe_rtt_cb cb = c->rtt_cb;
        c->rtt_cb = NULL;
        cb(c, NB_ECLOSED, 0, c->rtt_ud);
    }
    if (c->bw_cb)
        bw_finish(c, NB_ECLOSED, 0);
}

void nb_probe_link(const nb_conn_t *c, nb_link_t *out)
{
    *out = c->link;
}
