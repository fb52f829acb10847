/*
 * rt_common.h - small pieces shared by the stage and coordinator runtimes:
 * transport settings from the configuration, peer status rows, and the
 * tensor-kind mapping between pipeline messages and frames.
 */
#ifndef NB_RT_COMMON_H
#define NB_RT_COMMON_H

#include "daemon/config/config.h"
#include "daemon/net/net.h"
#include "daemon/net/probe.h"
#include "daemon/pipeline/pipe_msg.h"
#include "daemon/core/state.h"

/* Transport settings of a daemon from its configuration (strings point into
 * cfg, which must outlive the call to nb_net_new). */
void nb_rt_net_cfg(const nb_config_t *cfg, int role, nb_net_cfg_t *out);

/* Creates the transport endpoint of a pipeline daemon on loop with nc and
 * cb, and binds its peer listener on cfg->listen; the bound address
 * ("host:port") is published in st and written to bound. On error writes
 * the reason into why ("listen 0.0.0.0:7001: address already in use") and
 * returns a negative NB_E* code; *out is set as soon as the endpoint exists
 * (so the caller closes it), NULL before. */
int nb_rt_open_net(uv_loop_t *loop, const nb_config_t *cfg, const nb_net_cfg_t *nc, const nb_net_cb_t *cb,
                   void *ud, nb_state_t *st, nb_net_t **out, char *bound, size_t boundlen, char *why,
                   size_t whylen);

/* Keeps handshake room on n for connections from the host of "host:port"
 * or "[v6]:port" (a configured peer's address), so a connection flood from
 * elsewhere cannot lock that peer out. Host names are skipped (only IP
 * literals are reserved); never fails. */
void nb_rt_reserve_peer_addr(nb_net_t *n, const char *hostport);

/* Publishes one peer's row (connection state, RTT, bandwidth, bytes) in the
 * daemon's status. c may be NULL (peer not connected). */
void nb_rt_peer_row(nb_state_t *st, const char *name, const char *role, const char *address,
                    const char *state, const nb_conn_t *c);

/* Adds one micro-batch's forward and backward of `stage` to the trace ring
 * (track "stage N"; times in monotonic nanoseconds of the daemon that ran
 * them). Silently skips when the ring has no room for another track. */
void nb_rt_trace_mb(nb_trace_t *tr, int64_t step, int stage, int mb, uint64_t fwd_start_ns,
                    uint64_t fwd_ns, uint64_t bwd_start_ns, uint64_t bwd_ns);

/* Frame tensor kind of a pipeline message kind, and back (-1: none). */
int nb_rt_frame_kind(nb_pmsg_kind_t k);
int nb_rt_pmsg_kind(int frame_kind);

/* Sends a small control frame (no payload); returns nb_conn_send's code. */
int nb_rt_send_ctl(nb_conn_t *c, Nebula__Frame *f);

#endif
