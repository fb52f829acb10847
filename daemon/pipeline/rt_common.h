/*
 * rt_common.h - what every pipeline runtime (coordinator, stage, ELECTRA
 * discriminator and generator) shares: the runtime base (the service it is
 * attached to, its transport endpoint, failing a job), transport settings
 * from the configuration, peer status rows, the control frames every role
 * sends, and the tensor-kind mapping between pipeline messages and frames.
 */
#ifndef NB_RT_COMMON_H
#define NB_RT_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include "daemon/config/config.h"
#include "daemon/net/net.h"
#include "daemon/net/probe.h"
#include "daemon/pipeline/pipe_msg.h"
#include "daemon/core/state.h"
#include "daemon/service/service.h"

/* The head of every runtime struct, owned by the loop thread: what the
 * service gives the runtime when it attaches, its transport endpoint, and
 * how the job ended on this daemon. */
typedef struct nb_rt_base {
    nb_service_t *svc;
    const nb_config_t *cfg; /* the daemon's configuration (the service's) */
    nb_state_t *state;      /* what the status socket reports */
    uv_loop_t *loop;
    nb_net_t *net;          /* the transport endpoint, once open */
    bool net_open;          /* net exists and is not closed yet */
    bool failed;            /* the job failed on this daemon: it exits 1 */
    bool stopping;          /* the runtime's stop ran: nothing new starts */
} nb_rt_base_t;

/* Fills b from the service a runtime attaches to (everything else zero). */
void nb_rt_base_init(nb_rt_base_t *b, nb_service_t *svc);

/* Called by nb_rt_job_fail with the reason, before the service fails: the
 * runtime tells its peers why (queued frames still go out in the orderly
 * close) and stops its own work. */
typedef void (*nb_rt_tell_fn)(void *ud, const char *why);

/* Fails the job on this daemon with the reason fmt/ap: unless it failed or
 * is stopping already (then nothing happens and false is returned), marks
 * b failed, logs "job failed: <why>", calls tell(ud, why) when given, and
 * fails the service (the daemon exits 1). The reason is cut at 1 KiB. */
bool nb_rt_job_vfail(nb_rt_base_t *b, nb_rt_tell_fn tell, void *ud, const char *fmt, va_list ap);
bool nb_rt_job_fail(nb_rt_base_t *b, nb_rt_tell_fn tell, void *ud, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Closes the transport endpoint if it is open (connections close in
 * order, queued frames first). */
void nb_rt_close_net(nb_rt_base_t *b);

/* uv_close()s handle if *open and clears *open; no close callback. */
void nb_rt_close_handle(void *handle, bool *open);

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

/* Sends c a Shutdown frame with the reason; returns nb_conn_send's code. */
int nb_rt_send_shutdown(nb_conn_t *c, const char *why);

/* Tells the coordinator on c that the job failed on daemon `daemon` (a
 * JobStatus FAILED of job_id with the reason); returns nb_conn_send's
 * code. */
int nb_rt_send_job_failed(nb_conn_t *c, uint64_t job_id, uint32_t daemon, const char *why);

#endif
