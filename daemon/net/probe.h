/*
 * probe.h - link measurement on a ready connection: RTT (ping/pong), timed
 * bulk transfer in either direction, and passive estimates from real
 * traffic. The coordinator's cost model reads these.
 *
 * Thread: loop thread only. Callbacks run on the loop thread, never from
 * inside the call that started the measurement. One measurement of each kind
 * may be outstanding per connection; if the connection closes first the
 * callback gets NB_ECLOSED.
 */
#ifndef NB_PROBE_H
#define NB_PROBE_H

#include <stdint.h>
#include "daemon/net/net.h"

/* rtt_ms: round trip of one small frame through both TLS stacks. */
typedef void (*nb_probe_rtt_cb)(nb_conn_t *c, int status, double rtt_ms, void *ud);
/* bytes_per_s: payload goodput measured by the receiving side, from the
 * arrival of the first chunk to the last (so the RTT does not bias it). */
typedef void (*nb_probe_bw_cb)(nb_conn_t *c, int status, double bytes_per_s, void *ud);

/* Sends a ping. Errors: NB_ESTATE (not ready, or a ping is outstanding). */
int nb_probe_rtt(nb_conn_t *c, nb_probe_rtt_cb cb, void *ud);

/* Measures this side -> peer: sends `bytes` (>= 2 chunks of 256 KiB, at most
 * the endpoint's probe_max_bytes, default 64 MiB) of probe payload; the peer
 * reports what it measured. Errors:
 * NB_ERANGE (size), NB_ESTATE (not ready or a transfer is outstanding). */
int nb_probe_bw_send(nb_conn_t *c, uint64_t bytes, nb_probe_bw_cb cb, void *ud);

/* Measures peer -> this side: asks the peer to send `bytes` and times the
 * arrival here. Same errors as nb_probe_bw_send; a peer that refuses the
 * request (above its own limit, or already sending to us) answers at once
 * and the callback gets NB_ELIMIT. */
int nb_probe_bw_recv(nb_conn_t *c, uint64_t bytes, nb_probe_bw_cb cb, void *ud);

/* Passive estimates, updated from heartbeats and real transfers. */
typedef struct {
    double rtt_ms;        /* last ping round trip (heartbeats ping too); 0: none yet */
    double rtt_ewma_ms;   /* exponentially weighted, alpha 1/8 */
    double rx_bps_ewma;   /* payload bytes/s while frames >= 64 KiB arrive */
    double tx_bw_probe;   /* last nb_probe_bw_send result, bytes/s; 0: none */
    double rx_bw_probe;   /* last nb_probe_bw_recv result, bytes/s; 0: none */
    uint64_t bytes_tx, bytes_rx; /* payload bytes on this connection */
} nb_link_t;

void nb_probe_link(const nb_conn_t *c, nb_link_t *out);

#endif
