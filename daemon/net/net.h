/*
 * net.h - the peer transport endpoint of one daemon: a TLS listener, outbound
 * peers that reconnect on their own, and the connections between them.
 *
 * Threads: everything here runs on the libuv loop thread that owns the loop
 * passed to nb_net_new; no function may be called from another thread. A
 * compute thread hands tensors to the loop through its own queue plus
 * uv_async_send and calls nb_conn_send from the loop side.
 *
 * Lifetimes follow libuv: a connection's memory is freed only after all its
 * handles' close callbacks ran, and on_closed is always called from a close
 * callback, never from inside the call that asked for the close.
 */
#ifndef NB_NET_H
#define NB_NET_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include "daemon/net/frame.h"
#include "daemon/net/tls.h"

typedef struct nb_net nb_net_t;
typedef struct nb_conn nb_conn_t;

/* Settings, filled from the YAML configuration by daemon/config. Strings are
 * copied by nb_net_new. Zero fields take the defaults noted. */
typedef struct {
    const char *name;              /* this daemon; must match its certificate */
    int role;                      /* Nebula__Role sent in Hello */
    nb_tls_files_t tls;            /* re-read for every new connection */
    const char *const *allowed_peers; /* client names admitted inbound */
    size_t n_allowed_peers;        /* 0: no inbound connection is admitted */
    nb_frame_limits_t limits;      /* zero: nb_frame_limits_default */
    size_t send_queue_bytes;       /* per connection; default 64 MiB */
    uint32_t handshake_timeout_ms; /* TCP accept/connect to Hello done; default 10000 */
    uint32_t heartbeat_ms;         /* ping interval; default 1000 */
    uint32_t dead_after_ms;        /* silence that declares a peer dead; default 5000 */
    uint32_t backoff_min_ms;       /* first reconnect delay; default 100 */
    uint32_t backoff_max_ms;       /* reconnect delay cap; default 30000 */
    uint32_t max_pending;          /* inbound connections still in handshake;
                                      more are closed at once; default 256 */
    uint32_t max_pending_per_addr; /* of those, from one source address;
                                      default 8 */
    uint32_t refusal_log_ms;       /* window of the refusal log limit: the
                                      first 10 refusals of unauthenticated
                                      connections in a window are logged, the
                                      rest summed up at its end; default 10000 */
    uint64_t probe_max_bytes;      /* largest bulk probe sent or served;
                                      default 64 MiB, at most 1 GiB */
    /* Latency emulation for tests and benchmarks only (this kernel has no
     * netem): every outgoing frame is held this long before it is sent.
     * Never set by a production configuration; a warning is logged. */
    uint32_t emu_send_delay_ms;
} nb_net_cfg_t;

/* Application callbacks; all run on the loop thread. */
typedef struct {
    /* TLS verified and Hello exchanged; nb_conn_peer_name(c) is the name. */
    void (*on_ready)(nb_conn_t *c, void *ud);
    /* One validated frame (tensor, plan, report, checkpoint, error,
     * shutdown). hdr and payload now belong to the callee: free hdr with
     * nebula__frame__free_unpacked(hdr, NULL) and payload with free()
     * (payload is NULL when len is 0). Hello, ping and probe frames are
     * handled inside the transport and never delivered. */
    void (*on_frame)(nb_conn_t *c, Nebula__Frame *hdr, uint8_t *payload,
                     size_t len, void *ud);
    /* The send queue fell below half its byte limit after nb_conn_send
     * returned NB_ELIMIT. */
    void (*on_writable)(nb_conn_t *c, void *ud);
    /* A connection that was ready is gone (err: 0 orderly, else NB_E*);
     * c must not be used after this returns. */
    void (*on_closed)(nb_conn_t *c, int err, void *ud);
} nb_net_cb_t;

/* Counters; read with nb_net_stats. Every refusal and fault is counted. */
typedef struct {
    uint64_t accepted, connect_attempts, ready, closed;
    uint64_t tls_refused[NB_TLS_REFUSE_COUNT]; /* by nb_tls_refusal_t */
    uint64_t handshake_timeouts;
    uint64_t pending_refused;     /* inbound refused: max_pending handshakes under way */
    uint64_t pending_refused_addr;/* inbound refused: max_pending_per_addr from that address */
    uint64_t dup_refused;         /* second connection under the name of a live one */
    uint64_t probe_refused;       /* bulk probe requests refused (size, one at a time) */
    uint64_t log_suppressed;      /* refusal log lines summed up instead of written */
    uint64_t mem_trims;           /* free heap handed back to the system after a flood */
    uint64_t hello_refused;       /* bad version, name mismatch, no hello first */
    uint64_t frame_faults;        /* all decode and validation faults */
    uint64_t frame_fault_by_code[16]; /* index -NB_E* (e.g. [-NB_ECRC]) */
    uint64_t truncated_frames;    /* connection ended inside a frame */
    uint64_t unknown_job;         /* tensor for a job other than the current */
    uint64_t dead_peers;
    uint64_t frames_tx, frames_rx, payload_tx, payload_rx;
} nb_net_stats_t;

/* Fills cfg with zeros, then the defaults above (name, tls stay NULL). */
void nb_net_cfg_default(nb_net_cfg_t *cfg);

/* Creates an endpoint on loop. cfg->name and the three TLS files must be set.
 * On success *out is owned by the caller until nb_net_close's done callback.
 * Errors: NB_EINVAL (missing setting), NB_ENOMEM. */
int nb_net_new(uv_loop_t *loop, const nb_net_cfg_t *cfg, const nb_net_cb_t *cb,
               void *ud, nb_net_t **out);

/* Listens on host:port (port 0: any; the bound port goes to *bound_port when
 * not NULL). Errors: NB_EINVAL (bad address), NB_EIO (bind/listen failed). */
int nb_net_listen(nb_net_t *n, const char *host, int port, int *bound_port);
/* As nb_net_listen; on failure also writes "listen HOST:PORT: reason" (e.g.
 * "address already in use") into err when err is not NULL. */
int nb_net_listen_err(nb_net_t *n, const char *host, int port, int *bound_port, char *err, size_t errlen);

/* Adds an outbound peer: connects to host:port expecting the certificate name
 * peer_name, and reconnects with exponential backoff and jitter whenever the
 * connection fails or drops, until nb_net_close. host is an IPv4/IPv6
 * literal or a DNS name, resolved again (asynchronously) before every dial,
 * IPv4 preferred. Errors: NB_EINVAL (empty name, bad host, port not in
 * 1..65535). */
int nb_net_connect(nb_net_t *n, const char *peer_name, const char *host, int port);

/* Dials peer_name (added with nb_net_connect) now and starts its back-off
 * over, unless it is connected or a dial is in flight: for a caller that
 * knows the peer is back (a recovering job). NB_EINVAL: no such peer. */
int nb_net_redial(nb_net_t *n, const char *peer_name);

/* Admits inbound connections from peer_name from now on (a stage learns its
 * upstream neighbours from the job). Errors: NB_EINVAL (empty or too long
 * name), NB_ENOMEM. */
int nb_net_allow_peer(nb_net_t *n, const char *peer_name);

/* Keeps room for inbound handshakes from host (an IPv4 or IPv6 literal; a
 * configured peer's address): connections from other addresses may hold at
 * most max_pending minus the reserved room (max_pending_per_addr per
 * reserved address, at most half of max_pending). Errors: NB_EINVAL (not an
 * IP literal), NB_ELIMIT (64 addresses already reserved). */
int nb_net_reserve_addr(nb_net_t *n, const char *host);

/* The ready connection to/from peer_name, or NULL. */
nb_conn_t *nb_net_conn(nb_net_t *n, const char *peer_name);

/* Sets the job whose tensors are accepted; tensors for any other job are
 * refused (the connection is closed). 0 (the start value) accepts none. */
void nb_net_set_job(nb_net_t *n, uint64_t job_id);

const nb_net_stats_t *nb_net_stats(const nb_net_t *n);

/* Closes the listener, every peer and connection (orderly where possible)
 * and frees the endpoint; done (may be NULL) runs from the last close
 * callback. Must be called exactly once. */
void nb_net_close(nb_net_t *n, void (*done)(void *ud), void *ud);

/* ---- connections ---- */

/* Called with (payload, free_ud) once the transport no longer needs a
 * payload handed to nb_conn_send (sent, or dropped because the connection
 * closed). */
typedef void (*nb_free_cb)(void *payload, void *free_ud);

/* Queues one frame. hdr is packed at once (the caller keeps ownership of
 * hdr); payload (len bytes, may be NULL when len is 0) is not copied: on
 * success the transport owns it until it calls free_cb(payload, free_ud)
 * (free_cb may be NULL for memory the caller keeps alive anyway); it calls it
 * exactly once, from the loop thread, never from inside nb_conn_send.
 * Errors (payload stays the caller's, free_cb is not called):
 *   NB_ELIMIT  the queue holds send_queue_bytes or more: retry after
 *              on_writable (back-pressure to the producer);
 *   NB_ESTATE  the connection is not ready or is closing;
 *   NB_EFORMAT/NB_ELIMIT from nb_frame_encode (header too large...). */
int nb_conn_send(nb_conn_t *c, Nebula__Frame *hdr, const void *payload, size_t len,
                 nb_free_cb free_cb, void *free_ud);

/* Receive-side back-pressure: stop reading from the socket (TCP flow
 * control then slows the peer) until nb_conn_resume_read; use when the
 * compute thread's inbound queue is full. Dead-peer detection is suspended
 * while paused, since the peer's pings are not read. */
void nb_conn_pause_read(nb_conn_t *c);
void nb_conn_resume_read(nb_conn_t *c);

/* Bytes queued and not yet handed to the socket. */
size_t nb_conn_queued_bytes(const nb_conn_t *c);

/* Orderly close: queued frames are sent, then a TLS close_notify, then the
 * socket closes; on_closed(c, 0) follows. Safe to call more than once. */
void nb_conn_close(nb_conn_t *c);

/* Verified name of the peer (never NULL for a ready connection). */
const char *nb_conn_peer_name(const nb_conn_t *c);
/* Remote address "ip:port" for logs. */
const char *nb_conn_addr(const nb_conn_t *c);

#endif
