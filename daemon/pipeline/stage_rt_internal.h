/*
 * stage_rt_internal.h - what the two halves of the stage daemon's runtime
 * share: stage_rt.c (the loop thread: sockets, routing, probes, service
 * hooks) and stage_compute.c (the compute thread: the stage host, one step
 * per plan). Private to daemon/pipeline/.
 */
#ifndef NB_STAGE_RT_INTERNAL_H
#define NB_STAGE_RT_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include "daemon/net/net.h"
#include "daemon/net/probe.h"
#include "daemon/pipeline/job.h"
#include "daemon/pipeline/mailbox.h"
#include "daemon/pipeline/stage_rt.h"

#define OUTBOX_CAP 4     /* tensors waiting for the loop: back-pressure beyond */
#define CTL_CAP 64       /* control frames from the coordinator */
#define INBOX_CAP 4096   /* per stage and kind: >= micro-batches of one step */
#define INBOX_MARGIN 2   /* messages per inbox beyond the plan's micro-batches */

typedef enum { OUT_TENSOR, OUT_REPORT, OUT_STATUS, OUT_LINKS } out_kind_t;

typedef struct {
    out_kind_t kind;
    nb_pmsg_t *msg;              /* OUT_TENSOR */
    nb_step_result_t res;        /* OUT_REPORT (timings copied) */
    int status;                  /* OUT_STATUS: Nebula__JobStatus__State */
    char text[512];              /* OUT_STATUS message */
    uint64_t t_queued_ns;
} out_item_t;

/* One data link's probes before LINKS_READY (Job.probe_bytes > 0). */
typedef struct {
    nb_stage_rt_t *rt;
    int peer;                    /* daemon index */
    double rtt_ms, tx_bps;       /* 0: not measured */
    bool started, warm, done;
} link_probe_t;

/* A short transfer before the measured one opens the TCP window, so the
 * measurement does not include slow start (it would at 500 Mbit/s). */
#define PROBE_WARMUP_BYTES (512u << 10)

/* A tensor the transport is sending: for the trace and to free the message. */
typedef struct {
    nb_stage_rt_t *rt;
    nb_pmsg_t *msg;
    int track;
    uint64_t t0_ns;
} sending_t;

struct nb_stage_rt {
    nb_service_t *svc;
    const nb_config_t *cfg;
    nb_state_t *state;
    uv_loop_t *loop;
    nb_net_t *net;
    bool net_open;
    uv_async_t wake;
    bool wake_open;
    nb_conn_t *coord;
    out_item_t *pending;         /* blocked by a full send queue */
    bool stopping, failed;
    bool ready_sent;
    bool job_pending;            /* a Job went to the compute thread, which has
                                  * neither published (OUT_LINKS) nor refused it */

    /* set by the compute thread before OUT_LINKS, read-only afterwards */
    nb_job_desc_t job;
    int me, first_stage;
    bool have_job;
    bool need_peer[NB_SCHED_MAX_STAGES];
    bool peer_ready[NB_SCHED_MAX_STAGES];
    nb_conn_t *peer_conn[NB_SCHED_MAX_STAGES];
    bool links_reported;
    int link_track[NB_SCHED_MAX_STAGES];
    uint64_t probe_bytes;        /* from the Job; 0: no probes */
    link_probe_t probe[NB_SCHED_MAX_STAGES];
    uv_timer_t probe_timer;      /* waits for a neighbour's probe to finish */
    bool probe_timer_open;
    uint64_t probe_wait_ns;      /* when the wait began; 0: not waiting */

    nb_mbox_t *outbox, *ctl;
    /* inbox[][] is created by the compute thread (handle_job) while the loop
     * thread may close it (job_fail, stop) before it has seen OUT_LINKS:
     * both hold inbox_mu for that. Once OUT_LINKS is posted the array is
     * read-only until nb_stage_rt_free. */
    pthread_mutex_t inbox_mu;
    bool inbox_closed;           /* under inbox_mu: closed, create no more */
    nb_mbox_t *inbox[NB_SCHED_MAX_STAGES][NB_PMSG_KINDS];
    /* Receive back-pressure: an inbox holds at most inbox_limit messages
     * (the current plan's micro-batches + INBOX_MARGIN, set by the compute
     * thread per plan); the connection that filled one stops being read
     * until the compute thread has taken from it (it then wakes the loop). */
    int inbox_limit;             /* atomic */
    int reads_paused;            /* atomic: some connection is paused */
    bool read_paused[NB_SCHED_MAX_STAGES]; /* loop thread */
    pthread_t compute;
    bool compute_started;

    int m_steps, m_bytes_raw, m_bytes_wire, m_refused, m_model_bytes, m_peak_rss;
};

/* Frees an outbox item and whatever it holds (mailbox free callback). */
void nb__stage_free_out(void *p);

/* The compute thread's body (pthread start routine; arg is the runtime):
 * takes Job, Plan and Commit frames from rt->ctl until it is closed. */
void *nb__stage_compute_main(void *arg);

#endif
