/*
 * probe.c - RTT and bandwidth measurement over Probe frames, and the passive
 * link estimates. See probe.h for the API, docs/protocol.md for the frames.
 */
#include <string.h>
#include "daemon/clock.h"
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

static void reply_sent(void *payload, void *ud)
{
    (void)payload;
    *(int *)ud = 0;
}

/* A reply the peer asked for (pong, bulk result): at most one of each kind
 * waits in the send queue, so a peer that floods requests and never reads
 * cannot grow it. */
static int send_reply(nb_conn_t *c, Nebula__Probe *pr, int *queued)
{
    if (*queued)
        return NB_ELIMIT;
    Nebula__Frame f = NEBULA__FRAME__INIT;
    f.body_case = NEBULA__FRAME__BODY_PROBE;
    f.probe = pr;
    int rc = nb__conn_send_internal(c, &f, NULL, 0, reply_sent, queued);
    if (rc == 0)
        *queued = 1;
    return rc;
}

int nb__probe_ping(nb_conn_t *c)
{
    nb__probe_t *p = &c->probe;
    if (p->ping_t_ns)
        return NB_ESTATE; /* one outstanding at a time */
    Nebula__Probe pr = NEBULA__PROBE__INIT;
    pr.kind = NEBULA__PROBE__KIND__PROBE_PING;
    pr.id = ++p->ping_id;
    pr.t_ns = nb_mono_ns();
    int rc = send_probe(c, &pr, NULL, 0);
    if (rc == 0)
        p->ping_t_ns = pr.t_ns;
    return rc;
}

int nb_probe_rtt(nb_conn_t *c, nb_probe_rtt_cb cb, void *ud)
{
    nb__probe_t *p = &c->probe;
    if (c->state != NB__C_READY || c->closing || p->rtt_cb)
        return NB_ESTATE;
    p->rtt_cb = cb;
    p->rtt_ud = ud;
    if (p->ping_t_ns)
        return 0; /* a heartbeat ping is out; its pong answers this too */
    int rc = nb__probe_ping(c);
    if (rc)
        p->rtt_cb = NULL;
    return rc;
}

/* ---- bulk sender ---------------------------------------------------------------- */

static void bulk_fill(nb_conn_t *c);

static void chunk_sent(void *payload, void *ud)
{
    (void)payload;
    nb_conn_t *c = ud;
    c->probe.tx_queued--;
    if (!c->closing)
        bulk_fill(c);
}

/* Feeds the transfer to the send queue NB__PROBE_QUEUED chunks at a time,
 * counted against send_queue_bytes like any frame: the queue never holds
 * more than a megabyte of probe, and the loop does a few chunks' work per
 * call however large the transfer. */
static void bulk_fill(nb_conn_t *c)
{
    nb__probe_t *p = &c->probe;
    p->tx_blocked = 0;
    while (p->tx_active && p->tx_off < p->tx_total && p->tx_queued < NB__PROBE_QUEUED) {
        uint64_t n = p->tx_total - p->tx_off < NB__PROBE_CHUNK ? p->tx_total - p->tx_off
                                                               : NB__PROBE_CHUNK;
        Nebula__Probe pr = NEBULA__PROBE__INIT;
        pr.kind = NEBULA__PROBE__KIND__PROBE_BULK;
        pr.id = p->tx_id;
        pr.seq = p->tx_seq;
        pr.total_bytes = p->tx_total;
        Nebula__Frame f = NEBULA__FRAME__INIT;
        f.body_case = NEBULA__FRAME__BODY_PROBE;
        f.probe = &pr;
        int rc = nb__conn_send_counted(c, &f, probe_zeros, (size_t)n, chunk_sent, c);
        if (rc == NB_ELIMIT) {
            p->tx_blocked = 1; /* nb__probe_writable resumes */
            return;
        }
        if (rc) {
            p->tx_active = 0; /* closing: the transfer ends here */
            return;
        }
        p->tx_queued++;
        p->tx_seq++;
        p->tx_off += n;
    }
    if (p->tx_active && p->tx_off >= p->tx_total)
        p->tx_active = 0; /* all queued; the last chunks are still on their way */
}

void nb__probe_writable(nb_conn_t *c)
{
    bulk_fill(c);
}

static int bulk_start(nb_conn_t *c, uint64_t id, uint64_t bytes)
{
    nb__probe_t *p = &c->probe;
    if (p->tx_active)
        return NB_ESTATE;
    p->tx_active = 1;
    p->tx_id = id;
    p->tx_total = bytes;
    p->tx_off = p->tx_seq = 0;
    bulk_fill(c);
    return 0;
}

static int bw_start(nb_conn_t *c, uint64_t bytes, nb_probe_bw_cb cb, void *ud, int dir)
{
    nb__probe_t *p = &c->probe;
    if (bytes < 2 * NB__PROBE_CHUNK || bytes > c->net->cfg.probe_max_bytes)
        return NB_ERANGE;
    if (c->state != NB__C_READY || c->closing || p->bw_cb || (dir == 1 && p->tx_active))
        return NB_ESTATE;
    p->bw_id++;
    p->bw_total = bytes;
    int rc;
    if (dir == 1) {
        rc = bulk_start(c, p->bw_id, bytes);
    } else {
        Nebula__Probe pr = NEBULA__PROBE__INIT;
        pr.kind = NEBULA__PROBE__KIND__PROBE_BULK_REQUEST;
        pr.id = p->bw_id;
        pr.total_bytes = bytes;
        rc = send_probe(c, &pr, NULL, 0);
    }
    if (rc)
        return rc;
    p->bw_cb = cb;
    p->bw_ud = ud;
    p->bw_dir = dir;
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
    nb__probe_t *p = &c->probe;
    nb_probe_bw_cb cb = p->bw_cb;
    void *ud = p->bw_ud;
    if (status == 0) {
        if (p->bw_dir == 1)
            p->link.tx_bw_probe = bps;
        else
            p->link.rx_bw_probe = bps;
    }
    p->bw_cb = NULL;
    p->bw_dir = 0;
    if (cb)
        cb(c, status, bps, ud);
}

/* Receiver side of a bulk transfer: the clock starts when the first chunk
 * has arrived and only the bytes after it count, so the fill latency of the
 * path does not bias the rate. */
static void on_bulk(nb_conn_t *c, const Nebula__Probe *pr, size_t len)
{
    nb__probe_t *p = &c->probe;
    uint64_t now = nb_mono_ns();
    if (pr->seq == 0 || pr->id != p->bwr_id) {
        p->bwr_id = pr->id;
        p->bwr_total = pr->total_bytes;
        p->bwr_got = len;
        p->bwr_measured = 0;
        p->bwr_t0_ns = now;
    } else {
        p->bwr_got += len;
        p->bwr_measured += len;
    }
    if (p->bwr_got < p->bwr_total)
        return;
    uint64_t dt = now - p->bwr_t0_ns;
    p->bwr_total = UINT64_MAX; /* answered: chunks past the total do not answer again */
    if (p->bw_dir == 2 && pr->id == p->bw_id) {
        /* We asked for this transfer: we are the measuring end. */
        bw_finish(c, dt ? 0 : NB_ERANGE, dt ? (double)p->bwr_measured * 1e9 / (double)dt : 0);
        return;
    }
    Nebula__Probe r = NEBULA__PROBE__INIT;
    r.kind = NEBULA__PROBE__KIND__PROBE_BULK_RESULT;
    r.id = pr->id;
    r.total_bytes = p->bwr_got;
    r.measured_bytes = p->bwr_measured;
    r.duration_ns = dt;
    send_reply(c, &r, &p->result_queued);
}

/* A peer asks us to send: one transfer at a time, of at most
 * probe_max_bytes; anything else is refused (counted, logged within the
 * refusal log limit) and the connection stays up. */
static void on_bulk_request(nb_conn_t *c, const Nebula__Probe *pr)
{
    nb_net_t *n = c->net;
    const char *why = NULL;
    if (pr->total_bytes < 2 * NB__PROBE_CHUNK || pr->total_bytes > n->cfg.probe_max_bytes)
        why = "size out of range";
    else if (c->probe.tx_active)
        why = "a transfer to this peer is under way";
    else if (bulk_start(c, pr->id, pr->total_bytes) != 0)
        why = "cannot start";
    if (!why)
        return;
    /* An empty result tells the asking side at once (its callback gets
     * NB_ELIMIT) instead of leaving it waiting. */
    Nebula__Probe r = NEBULA__PROBE__INIT;
    r.kind = NEBULA__PROBE__KIND__PROBE_BULK_RESULT;
    r.id = pr->id;
    send_reply(c, &r, &c->probe.result_queued);
    n->stats.probe_refused++;
    NB__LOG_PEER_REFUSAL(n, c->name,
                         "refused bulk probe request of %llu bytes (at most %llu): %s",
                         (unsigned long long)pr->total_bytes,
                         (unsigned long long)n->cfg.probe_max_bytes, why);
}

void nb__probe_on_frame(nb_conn_t *c, Nebula__Frame *f, uint8_t *payload, size_t len)
{
    nb__probe_t *p = &c->probe;
    const Nebula__Probe *pr = f->probe;
    switch (pr->kind) {
    case NEBULA__PROBE__KIND__PROBE_PING: {
        Nebula__Probe r = NEBULA__PROBE__INIT;
        r.kind = NEBULA__PROBE__KIND__PROBE_PONG;
        r.id = pr->id;
        r.t_ns = pr->t_ns;
        send_reply(c, &r, &p->pong_queued); /* a pong already queued answers for this one */
        break;
    }
    case NEBULA__PROBE__KIND__PROBE_PONG:
        if (p->ping_t_ns && pr->id == p->ping_id && pr->t_ns == p->ping_t_ns) {
            double ms = (double)(nb_mono_ns() - p->ping_t_ns) / 1e6;
            p->ping_t_ns = 0;
            p->link.rtt_ms = ms;
            p->link.rtt_ewma_ms = p->link.rtt_ewma_ms == 0 ? ms
                                                           : p->link.rtt_ewma_ms * 0.875 + ms * 0.125;
            if (p->rtt_cb) {
                nb_probe_rtt_cb cb = p->rtt_cb;
                p->rtt_cb = NULL;
                cb(c, 0, ms, p->rtt_ud);
            }
        }
        break;
    case NEBULA__PROBE__KIND__PROBE_BULK:
        on_bulk(c, pr, len);
        break;
    case NEBULA__PROBE__KIND__PROBE_BULK_RESULT:
        if (p->bw_dir == 2 && pr->id == p->bw_id && pr->measured_bytes == 0) {
            bw_finish(c, NB_ELIMIT, 0); /* the peer refused our request */
        } else if (p->bw_dir == 1 && pr->id == p->bw_id) {
            int ok = pr->duration_ns > 0 && pr->measured_bytes > 0;
            bw_finish(c, ok ? 0 : NB_ERANGE,
                      ok ? (double)pr->measured_bytes * 1e9 / (double)pr->duration_ns : 0);
        }
        break;
    case NEBULA__PROBE__KIND__PROBE_BULK_REQUEST:
        on_bulk_request(c, pr);
        break;
    default:
        break;
    }
    nebula__frame__free_unpacked(f, NULL);
    free(payload);
}

void nb__probe_closed(nb_conn_t *c)
{
    nb__probe_t *p = &c->probe;
    p->tx_active = 0;
    if (p->rtt_cb) {
        nb_probe_rtt_cb cb = p->rtt_cb;
        p->rtt_cb = NULL;
        cb(c, NB_ECLOSED, 0, p->rtt_ud);
    }
    if (p->bw_cb)
        bw_finish(c, NB_ECLOSED, 0);
}

void nb_probe_link(const nb_conn_t *c, nb_link_t *out)
{
    *out = c->probe.link;
}
