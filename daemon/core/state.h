/*
 * state.h - what a daemon reports about itself: the provider API between the
 * runtimes that do the work (coordinator, stage) and the status socket.
 *
 * The runtimes write (nb_state_set_*, nb_state_peer_*, nb_state_job_*); the
 * status handlers read a consistent snapshot (nb_state_snapshot). The state
 * also owns the daemon's metrics registry and trace ring.
 *
 * Thread: every function may be called from any thread (one mutex); the
 * metrics and trace objects have their own locks.
 */
#ifndef NB_STATE_H
#define NB_STATE_H

#include <stdbool.h>
#include <stdint.h>
#include "daemon/config/config.h"
#include "daemon/metrics.h"
#include "daemon/core/memory.h"
#include "daemon/trace.h"

#define NB_STATE_PEERS_MAX 32
#define NB_STATE_LINKS_MAX 64

/* Daemon lifecycle, in order. */
typedef enum {
    NB_SVC_STARTING = 0, /* config loaded, sockets not yet bound */
    NB_SVC_WAITING,      /* bound; stage: waiting for the coordinator; coordinator: for stages */
    NB_SVC_CONNECTING,   /* peers connecting and authenticating */
    NB_SVC_RUNNING,      /* training */
    NB_SVC_DONE,         /* job finished, still serving status */
    NB_SVC_STOPPING,     /* orderly stop in progress */
    NB_SVC_FAILED,       /* the job stopped on an error; detail says which */
} nb_svc_state_t;

typedef struct {
    char name[NB_CFG_NAME_MAX];
    char role[16];    /* "coordinator", "stage", "client", ... */
    char address[NB_CFG_ADDR_MAX];
    char state[16];   /* "connecting", "up", "down" */
    double rtt_ms;    /* < 0: not measured */
    double bandwidth_mbps;
    uint64_t bytes_sent, bytes_received;
    char tls[16];     /* record layer: "ktls", "ktls-tx", "user"; "" unknown */
} nb_peer_info_t;

/* A stage-to-stage data link as the coordinator learns it from the stages'
 * LINKS_READY and Reports (docs/operations.md, "Links"). */
typedef struct {
    char from[NB_CFG_NAME_MAX], to[NB_CFG_NAME_MAX];
    double rtt_ms;        /* from's round-trip estimate; < 0: unknown */
    double probe_mbps;    /* from -> to, from's bulk probe goodput; < 0: not probed */
    double passive_mbps;  /* from -> to, to's estimate from tensor frames; < 0: none yet */
    uint64_t bytes;       /* payload bytes from -> to, as from counts them */
} nb_link_info_t;

typedef struct {
    bool active;
    int64_t step, steps;
    double loss;            /* NAN before the first step */
    double tokens_per_s;
    double step_time_s;
    double bubble_measured, bubble_predicted; /* fractions 0..1; < 0 unknown */
    uint64_t bytes_raw, bytes_wire;           /* payload before / after codecs */
    char codec_forward[NB_CFG_SPEC_MAX], codec_backward[NB_CFG_SPEC_MAX];
    int64_t micro_batches;
    char schedule[16];
    char layers[32];        /* this stage's part, e.g. "0-5" or "embed+0-5+head" */
    int replicas;           /* a stage daemon's replicas of its stages (one per
                               device); 0 = not a stage daemon (not shown) */
    double eval_loss;       /* held-out loss of the latest evaluation (coordinator) */
    int64_t eval_step;      /* the steps done it evaluated; 0: none yet */
} nb_job_info_t;

typedef struct {
    char name[NB_CFG_NAME_MAX];
    nb_cfg_role_t role;
    nb_svc_state_t state;
    char detail[256];       /* one line for humans: why this state */
    double started_at;      /* CLOCK_REALTIME seconds */
    double uptime_s;
    int pid;
    char listen[NB_CFG_ADDR_MAX];  /* the address actually bound */
    char status_socket[NB_CFG_PATH_MAX];
    int n_peers;
    nb_peer_info_t peers[NB_STATE_PEERS_MAX];
    nb_job_info_t job;
    int n_links;
    nb_link_info_t links[NB_STATE_LINKS_MAX]; /* coordinator only */
    nb_mem_report_t memory;  /* sampled by nb_state_snapshot */
    char kernel_tls[320];    /* nb_ktls_state() of a daemon with a transport; "" otherwise */
} nb_state_snapshot_t;

typedef struct nb_state nb_state_t;

/* New state for a daemon (name and role copied), with a metrics registry and
 * a trace ring of trace_capacity events. NULL when out of memory. */
nb_state_t *nb_state_new(const char *name, nb_cfg_role_t role, size_t trace_capacity);
void nb_state_free(nb_state_t *s);

void nb_state_set(nb_state_t *s, nb_svc_state_t st, const char *detail_fmt, ...)
    __attribute__((format(printf, 3, 4)));
nb_svc_state_t nb_state_get(nb_state_t *s);
void nb_state_set_listen(nb_state_t *s, const char *bound_address, const char *status_socket);

/* Inserts or replaces the peer with the same name; NB_ELIMIT when full. */
int nb_state_peer_update(nb_state_t *s, const nb_peer_info_t *p);
/* Removes a peer by name; NB_EINVAL when absent. */
int nb_state_peer_remove(nb_state_t *s, const char *name);

/* Replaces the job info. */
void nb_state_job_update(nb_state_t *s, const nb_job_info_t *j);
/* Sets only the job's latest held-out loss and the step it belongs to. */
void nb_state_job_eval(nb_state_t *s, double loss, int64_t step);

/* Inserts or replaces the link with the same (from, to); NB_ELIMIT when
 * full. nb_state_link_get copies it into *out, or returns NB_EINVAL when
 * there is none. */
int nb_state_link_update(nb_state_t *s, const nb_link_info_t *l);
int nb_state_link_get(nb_state_t *s, const char *from, const char *to, nb_link_info_t *out);

/* The kernel TLS line of the daemon's transport (copied). */
void nb_state_set_kernel_tls(nb_state_t *s, const char *line);

/* The model state the runtime holds now (replaces the previous figures). */
void nb_state_set_model_memory(nb_state_t *s, const nb_mem_model_t *m);

/* The stage's compute device and its memory as last sampled (replaces
 * the previous figures); nb_state_device_memory reads them back. Any
 * thread. */
void nb_state_set_device_memory(nb_state_t *s, const nb_mem_device_t *d);
void nb_state_device_memory(nb_state_t *s, nb_mem_device_t *out);

/* The sum of the model state figures last set. Any thread. */
uint64_t nb_state_model_total(nb_state_t *s);

/* Copies everything into *out (uptime computed and memory sampled now). */
void nb_state_snapshot(nb_state_t *s, nb_state_snapshot_t *out);

nb_metrics_t *nb_state_metrics(nb_state_t *s);
nb_trace_t *nb_state_trace(nb_state_t *s);

const char *nb_svc_state_name(nb_svc_state_t st);

#endif
