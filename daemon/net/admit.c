/*
 * admit.c - who may start a handshake, and how loudly a stranger is refused:
 * the global and per-source-address caps on inbound handshakes in progress
 * (with room kept for configured peers' addresses), the refusal log limit
 * ("N more refused in the last 10 s") and handing free heap back to the
 * system once a connection flood is over. See net.h and docs/protocol.md.
 */
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include "kernels/common.h"
#include "daemon/log.h"
#include "daemon/net/net_internal.h"

static int src_from_sockaddr(const struct sockaddr_storage *ss, nb__src_t *out)
{
    memset(out, 0, sizeof *out);
    if (ss->ss_family == AF_INET) {
        out->family = AF_INET;
        memcpy(out->ip, &((const struct sockaddr_in *)ss)->sin_addr, 4);
        return 0;
    }
    if (ss->ss_family == AF_INET6) {
        const uint8_t *a = (const uint8_t *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
        static const uint8_t v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
        if (memcmp(a, v4mapped, 12) == 0) { /* ::ffff:a.b.c.d is a.b.c.d */
            out->family = AF_INET;
            memcpy(out->ip, a + 12, 4);
        } else {
            out->family = AF_INET6;
            memcpy(out->ip, a, 16);
        }
        return 0;
    }
    return NB_EINVAL;
}

static int src_eq(const nb__src_t *a, const nb__src_t *b)
{
    return a->family == b->family && memcmp(a->ip, b->ip, 16) == 0;
}

int nb_net_reserve_addr(nb_net_t *n, const char *host)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (!host || (uv_ip4_addr(host, 0, (struct sockaddr_in *)&ss) != 0 &&
                  uv_ip6_addr(host, 0, (struct sockaddr_in6 *)&ss) != 0))
        return NB_EINVAL;
    nb__src_t s;
    if (src_from_sockaddr(&ss, &s) != 0)
        return NB_EINVAL;
    for (unsigned i = 0; i < n->n_reserved; i++)
        if (src_eq(&n->reserved[i], &s))
            return 0;
    if (n->n_reserved >= NB__MAX_RESERVED)
        return NB_ELIMIT;
    n->reserved[n->n_reserved++] = s;
    return 0;
}

/* Handshake slots kept free for reserved addresses. */
static uint32_t reserved_room(const nb_net_t *n)
{
    uint64_t r = (uint64_t)n->n_reserved * n->cfg.max_pending_per_addr;
    uint32_t half = n->cfg.max_pending / 2;
    return r > half ? half : (uint32_t)r;
}

const char *nb__admit_inbound(nb_net_t *n, nb_conn_t *c)
{
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    memset(&c->src, 0, sizeof c->src);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0)
        src_from_sockaddr(&ss, &c->src);
    int reserved = 0;
    for (unsigned i = 0; i < n->n_reserved && !reserved; i++)
        reserved = src_eq(&n->reserved[i], &c->src);
    const char *why = NULL;
    uint32_t cnt = n->pending;
    if (n->pending >= n->cfg.max_pending) {
        n->stats.pending_refused++;
        why = "handshakes already under way";
    } else if (!reserved && n->pending_other >= n->cfg.max_pending - reserved_room(n)) {
        n->stats.pending_refused++;
        why = "handshakes already under way (the rest is kept for configured peers)";
    } else if (c->src.family) {
        uint32_t same = 0;
        for (nb_conn_t *o = n->conns; o; o = o->next)
            if (o != c && o->counted_pending && src_eq(&o->src, &c->src))
                same++;
        if (same >= n->cfg.max_pending_per_addr) {
            n->stats.pending_refused_addr++;
            cnt = same;
            why = "handshakes from this address already under way";
        }
    }
    if (why) {
        char ip[64] = "?";
        if (c->src.family == AF_INET)
            uv_inet_ntop(AF_INET, c->src.ip, ip, sizeof ip);
        else if (c->src.family == AF_INET6)
            uv_inet_ntop(AF_INET6, c->src.ip, ip, sizeof ip);
        NB__LOG_REFUSAL(n, NULL, "refused connection from %s: %u %s", ip, cnt, why);
        return why;
    }
    n->pending++;
    c->counted_pending = 1;
    c->pending_reserved = reserved;
    if (!reserved)
        n->pending_other++;
    return NULL;
}

void nb__admit_release(nb_conn_t *c)
{
    if (!c->counted_pending)
        return;
    c->counted_pending = 0;
    c->net->pending--;
    if (!c->pending_reserved)
        c->net->pending_other--;
}

/* ---- the refusal log limit ---------------------------------------------------- */

/* Free heap pages the flood's connections left behind (their TLS sessions
 * and read buffers, freed between live blocks) go back to the system, so a
 * flood does not raise the daemon's resident memory for good. */
static void trim_memory(nb_net_t *n)
{
    n->stats.mem_trims++;
#ifdef __GLIBC__
    malloc_trim(0);
#endif
    nb_log_info(NULL, "connection flood over: free memory handed back to the system");
}

static void on_rl_tick(uv_timer_t *t)
{
    nb_net_t *n = t->data;
    static const char *const what[NB__RL_KINDS] = { "refused", "refused from peers" };
    uint64_t events = 0;
    for (int k = 0; k < NB__RL_KINDS; k++) {
        if (n->rl[k].suppressed)
            nb_log_warn(NULL, "%llu more %s in the last %g s (not logged one by one)",
                        (unsigned long long)n->rl[k].suppressed, what[k],
                        n->cfg.refusal_log_ms / 1000.0);
        events += n->rl[k].events;
        n->rl[k].events = n->rl[k].logged = n->rl[k].suppressed = 0;
    }
    if (events == 0) {
        uv_timer_stop(t); /* a quiet window: the flood, if any, is over */
        if (n->rl_flood)
            trim_memory(n);
        n->rl_flood = 0;
    } else if (events > NB__REFUSAL_BURST) {
        n->rl_flood = 1;
    }
}

int nb__refusal_log_ok(nb_net_t *n, int kind)
{
    n->rl[kind].events++;
    if (!n->closing && !uv_is_active((uv_handle_t *)&n->rl_timer))
        uv_timer_start(&n->rl_timer, on_rl_tick, n->cfg.refusal_log_ms, n->cfg.refusal_log_ms);
    if (n->rl[kind].logged < NB__REFUSAL_BURST) {
        n->rl[kind].logged++;
        return 1;
    }
    n->rl[kind].suppressed++;
    n->stats.log_suppressed++;
    return 0;
}

static void on_rl_closed(uv_handle_t *h)
{
    nb_net_t *n = h->data;
    n->handles_open--;
    nb__net_maybe_done(n);
}

void nb__admit_init(nb_net_t *n)
{
    uv_timer_init(n->loop, &n->rl_timer);
    n->rl_timer.data = n;
    n->handles_open++;
}

void nb__admit_close(nb_net_t *n)
{
    uv_close((uv_handle_t *)&n->rl_timer, on_rl_closed);
}
