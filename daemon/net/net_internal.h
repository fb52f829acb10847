/*
 * net_internal.h - structures shared by net.c, conn.c and probe.c only.
 * Nothing outside daemon/net/ may include this file.
 */
#ifndef NB_NET_INTERNAL_H
#define NB_NET_INTERNAL_H

#include <sys/socket.h>
#include "daemon/clock.h"
#include "daemon/net/net.h"
#include "daemon/net/probe.h"

#define NB__NET_READBUF (64u << 10)
#define NB__NET_CHUNK (512u << 10)     /* plaintext encrypted per step */
#define NB__NET_INFLIGHT (4u << 20)    /* ciphertext handed to libuv, not yet written */
#define NB__PROBE_CHUNK (256u << 10)
#define NB__NET_FRAMES_PER_TURN 128    /* frames decoded per connection per loop turn */
#define NB__PROBE_QUEUED 4             /* bulk chunks in the send queue at a time */
#define NB__REFUSAL_BURST 10           /* refusal lines logged per window */
#define NB__MAX_RESERVED 64            /* reserved source addresses */

/* A source address without its port: the key of the per-address limit. */
typedef struct {
    int family;                        /* AF_INET, AF_INET6, 0: unknown */
    uint8_t ip[16];
} nb__src_t;

/* Probe state of one connection (probe.c owns it; conn.c reads ping_t_ns,
 * rtt_cb and link). */
typedef struct {
    uint64_t ping_id, ping_t_ns;
    nb_probe_rtt_cb rtt_cb;
    void *rtt_ud;
    int pong_queued;       /* PONG in the send queue: at most one */
    int result_queued;     /* BULK_RESULT in the send queue: at most one */
    int hb_queued;         /* one-way Heartbeat in the send queue: at most one */
    /* our own measurement */
    nb_probe_bw_cb bw_cb;
    void *bw_ud;
    int bw_dir;            /* 0 none, 1 we send, 2 we receive */
    uint64_t bw_id, bw_total;
    /* receiver side of a bulk transfer */
    uint64_t bwr_id, bwr_total, bwr_got, bwr_measured, bwr_t0_ns;
    /* sender side: one transfer at a time, fed to the send queue
     * NB__PROBE_QUEUED chunks at a time, under its byte limit */
    int tx_active, tx_blocked;
    uint64_t tx_id, tx_total, tx_off, tx_seq;
    unsigned tx_queued;
    nb_link_t link;
} nb__probe_t;

typedef struct nb__peer nb__peer_t;

/* Refusal log budgets: strangers (before the certificate is checked) and
 * authenticated peers that misbehave (second Hello, probe requests). */
enum { NB__RL_STRANGER = 0, NB__RL_PEER, NB__RL_KINDS };

typedef struct nb__tx {
    struct nb__tx *next;
    uint8_t *hdr;          /* prefix + protobuf header, malloc'd */
    size_t hdr_len;
    const uint8_t *payload;
    size_t len;
    size_t off;            /* progress over hdr then payload */
    nb_free_cb free_cb;
    void *free_ud;
    uint64_t due_ms;       /* emulated send delay */
    int internal;          /* not counted against the queue limit */
} nb__tx_t;

enum { NB__C_CONNECTING = 0, NB__C_HANDSHAKE, NB__C_HELLO, NB__C_READY };

struct nb_conn {
    uv_tcp_t tcp;
    uv_timer_t tick;       /* handshake deadline, heartbeat, dead peer, drain */
    uv_timer_t delay;      /* emulated send delay */
    uv_connect_t creq;
    uv_shutdown_t sreq;
    nb_net_t *net;
    nb__peer_t *peer;      /* outbound peer that owns this connection, or NULL */
    struct nb_conn *next;  /* in net->conns */
    int is_server;
    int counted_pending;   /* counted in net->pending */
    int pending_reserved;  /* from a reserved address (not in net->pending_other) */
    nb__src_t src;         /* source address of an inbound connection */
    int state;
    int closing;           /* handles are closing; the object dies in their callbacks */
    int draining;          /* orderly close requested: send the queue, then close */
    int handles_open;
    int close_err;
    int reported_ready;
    int read_paused;
    char name[NB_FRAME_MAX_NAME + 1]; /* expected (client) or verified name */
    char addr[64];
    nb_tls_t *tls;
    nb_frame_rx_t rx;
    nb__tx_t *txq, *txq_tail;
    size_t queued;         /* application bytes queued */
    size_t inflight;
    int want_writable;
    int ktls_want;         /* tls.ktls auto/on and the kernel offers it: switch after the handshake */
    int ktls_pending;      /* handshake done, waiting for its last flight to leave before the switch */
    int ktls_tx;           /* the kernel encrypts what we send: frames go to the socket in the clear */
    uint8_t *plain;        /* ktls_tx: frame bytes gathered for the next write */
    size_t plain_len, plain_cap;
    uint64_t t_open_ms, last_rx_ms, last_ping_ms;
    uint64_t rx_frame_start_ns;
    int resume_pending;    /* decode buffered bytes on the next tick */
    int read_yielded;      /* reading stopped for this loop turn (frame budget spent) */
    int reading;           /* uv_read_start is in effect */
    nb__probe_t probe;
    uint8_t readbuf[NB__NET_READBUF];
};

struct nb__peer {
    nb__peer_t *next;
    nb_net_t *net;
    char name[NB_FRAME_MAX_NAME + 1];
    char host[256];        /* as configured: an IP literal or a DNS name */
    int port;
    int literal;           /* host is an IP literal: addr is fixed */
    int resolving;         /* gai in flight (counted in net->handles_open) */
    int timer_closed;      /* retry timer closed: free once not resolving */
    uv_getaddrinfo_t gai;
    struct sockaddr_storage addr;
    nb_conn_t *conn;
    uv_timer_t retry;
    unsigned attempts;
    unsigned failed;       /* connects refused or timed out since the last success */
    unsigned unreported;   /* of those, not yet in a log line */
    uint64_t reported_ms;  /* loop time of the last "cannot connect" line */
};

/* A peer that cannot be reached is named in the log at its first failed
 * connect and then at most once per this many ms, with the count. */
#define NB__NET_CONNECT_LOG_MS 10000

struct nb_net {
    uv_loop_t *loop;
    nb_net_cfg_t cfg;      /* strings below are our copies */
    char **allowed;
    nb_net_cb_t cb;
    void *ud;
    uv_tcp_t listener;
    uv_timer_t closer;     /* closed by nb_net_close so done runs from a close callback */
    int listening;
    uint32_t pending;      /* inbound connections not yet ready */
    uint32_t pending_other;/* of those, from addresses not reserved */
    nb__src_t reserved[NB__MAX_RESERVED];
    unsigned n_reserved;
    /* refusal log limit (admit.c), one budget per kind of refusal */
    uv_timer_t rl_timer;
    struct {
        uint64_t events, logged, suppressed;
    } rl[NB__RL_KINDS];
    int rl_flood;          /* the last window was busy: trim memory when it calms */
    nb_conn_t *conns;
    nb__peer_t *peers;
    uint64_t job_id;
    nb_net_stats_t stats;
    int closing;
    int handles_open;      /* listener + peer timers */
    void (*done)(void *);
    void *done_ud;
};

/* conn.c */
int nb__conn_new(nb_net_t *n, int is_server, nb__peer_t *peer, nb_conn_t **out);
void nb__conn_start_tls(nb_conn_t *c);
void nb__conn_fail(nb_conn_t *c, int err);
int nb__conn_send_internal(nb_conn_t *c, Nebula__Frame *f, const void *payload,
                           size_t len, nb_free_cb free_cb, void *free_ud);
/* Queues a frame counted against send_queue_bytes (bulk probe chunks):
 * NB_ELIMIT when the queue is full (probe.c waits for nb__probe_writable). */
int nb__conn_send_counted(nb_conn_t *c, Nebula__Frame *f, const void *payload, size_t len,
                          nb_free_cb free_cb, void *free_ud);
/* net.c: a connection's handles are all closed; unlink and free it. */
void nb__net_conn_gone(nb_conn_t *c);
/* net.c: frees the endpoint and runs done once closing and nothing is open. */
void nb__net_maybe_done(nb_net_t *n);
/* admit.c: inbound admission and the refusal log limit */
void nb__admit_init(nb_net_t *n);   /* the rl_timer handle (counted in handles_open) */
void nb__admit_close(nb_net_t *n);
/* Decides whether the accepted connection c may start its handshake; on
 * NULL it is counted as pending, else the static reason it was refused
 * (counted, and logged within the limit). */
const char *nb__admit_inbound(nb_net_t *n, nb_conn_t *c);
/* c no longer counts as a handshake in progress (ready or gone). */
void nb__admit_release(nb_conn_t *c);
/* Counts one refusal of an unauthenticated connection (or other input a
 * stranger controls); 1 when its log line may be written now, 0 when it is
 * summed up in the "N more refused" line at the end of the window. */
int nb__refusal_log_ok(nb_net_t *n, int kind);
#define NB__LOG_REFUSAL(n, ...)                                                               \
    do {                                                                                      \
        if (nb__refusal_log_ok(n, NB__RL_STRANGER))                                           \
            nb_log_warn(__VA_ARGS__);                                                         \
    } while (0)
#define NB__LOG_PEER_REFUSAL(n, ...)                                                          \
    do {                                                                                      \
        if (nb__refusal_log_ok(n, NB__RL_PEER))                                               \
            nb_log_warn(__VA_ARGS__);                                                         \
    } while (0)
/* probe.c */
void nb__probe_on_frame(nb_conn_t *c, Nebula__Frame *f, uint8_t *payload, size_t len);
void nb__probe_closed(nb_conn_t *c);
int nb__probe_ping(nb_conn_t *c);
/* The send queue has room again: feed a blocked bulk transfer. */
void nb__probe_writable(nb_conn_t *c);

#endif
