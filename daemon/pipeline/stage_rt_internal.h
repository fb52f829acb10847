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
#include "daemon/pipeline/rt_common.h"
#include "daemon/pipeline/mailbox.h"
#include "daemon/pipeline/stage_eval.h"
#include "daemon/pipeline/stage_rt.h"
#include "daemon/train/checkpoint.h"

#define OUTBOX_CAP 4     /* tensors waiting for the loop: back-pressure beyond */
#define CTL_CAP 64       /* control frames from the coordinator */
#define INBOX_CAP 4096   /* per stage and kind: >= micro-batches of one step */
#define INBOX_MARGIN 2   /* messages per inbox beyond the plan's micro-batches */

typedef enum { OUT_TENSOR, OUT_REPORT, OUT_STATUS, OUT_LINKS, OUT_JOINED, OUT_CKPT } out_kind_t;

/* What the compute thread holds of the job, as JobStatus JOINED says it. */
typedef struct {
    bool has_job;
    uint64_t steps_committed;    /* updates applied */
    bool prepared;               /* complete gradients of step steps_committed held */
    bool has_last_commit;
    uint64_t last_commit_step;
    double last_commit_sumsq;
    bool last_commit_skip;
} joined_state_t;

#define CKPT_MAX_FILES NB_SCHED_MAX_STAGES

/* A checkpoint this daemon wrote (or failed to write): Checkpoint DONE. */
typedef struct {
    uint64_t step;
    uint32_t attempt;
    bool ok;
    int n_files;
    nb_ckpt_file_t files[CKPT_MAX_FILES];
} ckpt_done_t;

typedef struct {
    out_kind_t kind;
    nb_pmsg_t *msg;              /* OUT_TENSOR */
    nb_step_result_t res;        /* OUT_REPORT (timings copied) */
    int status;                  /* OUT_STATUS: Nebula__JobStatus__State */
    char text[512];              /* OUT_STATUS, OUT_CKPT (failed) message */
    uint64_t t_queued_ns;
    uint32_t attempt;            /* OUT_REPORT, OUT_STATUS, OUT_LINKS, OUT_JOINED */
    bool eval;                   /* OUT_REPORT: of a held-out evaluation (res.loss, no gradient) */
    bool exit_after;             /* OUT_STATUS: the daemon stops (exit 1) once it is sent */
    joined_state_t joined;       /* OUT_JOINED */
    ckpt_done_t ckpt;            /* OUT_CKPT */
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
    nb_rt_base_t b; /* service, configuration, state, loop, transport, failed, stopping */
    uv_async_t wake;
    bool wake_open;
    nb_conn_t *coord;
    out_item_t *pending;         /* blocked by a full send queue */
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
    bool links_opened;           /* neighbours dialled / admitted (once per job) */
    int link_track[NB_SCHED_MAX_STAGES];

    /* Recovery (docs/pipeline.md, "Faults and recovery"), loop thread. */
    uint32_t attempt;            /* the attempt whose links are (being) set up */
    uint32_t aborted_attempt;    /* highest attempt an Abort or a local fault ended */
    bool any_aborted;            /* aborted_attempt is meaningful */
    bool aborting;               /* between a fault and the next attempt's links */
    bool job_done;               /* DONE sent: faults no longer matter */
    joined_state_t joined;       /* the compute thread's last OUT_JOINED */
    bool joined_valid;           /* it answered the latest abort */
    double recovery_timeout_s;   /* from the Job */
    uint32_t pending_attempt;    /* attempt of the last Job handed to the compute thread */
    uint64_t pending_job_id;     /* and its job id */
    uv_timer_t recovery_timer;   /* bounds the wait for a lost coordinator */
    bool recovery_timer_open;
    int abort_flag;              /* atomic: the compute thread drops the step in flight */
    uint64_t probe_bytes;        /* from the Job; 0: no probes */
    link_probe_t probe[NB_SCHED_MAX_STAGES];
    uv_timer_t probe_timer;      /* waits for a neighbour's probe to finish */
    bool probe_timer_open;
    uint64_t probe_wait_ns;      /* when the wait began; 0: not waiting */
    uv_timer_t wait_timer;       /* connect_timeout_s: for the coordinator, then for the links */
    bool wait_timer_open;

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
    int m_stale, m_aborts, m_ckpts;
};

/* The compute thread's view of the job (stage_compute.c, stage_ckpt.c). */
typedef struct {
    nb_backend_t *be;            /* bes[0] */
    nb_backend_t *bes[NB_CFG_MAX_DEVICES]; /* one per configured device: the replicas */
    int n_bes;
    nb_host_t *host;
    nb_eval_t *eval;             /* the job evaluates: held-out evaluation (stage_eval.h);
                                    borrows host, freed before it */
    uint32_t attempt;            /* of the last Job */
    bool aborted;                /* an abort was handled: plans wait for the next Job */
    uint64_t committed;          /* updates applied: steps done */
    bool prepared;               /* the gradients of step `committed` are complete */
    bool has_last_commit;
    uint64_t lc_step;            /* the last Commit applied */
    double lc_sumsq;
    bool lc_skip;
    int last_m;                  /* micro-batches of the last plan */
    /* the checkpoint writer thread (stage_ckpt.c) and the snapshots it
     * writes, one per hosted stage, reused by the next checkpoint */
    pthread_t writer;
    bool writer_started;
    nb_ckpt_snap_t *snap[NB_SCHED_MAX_STAGES];
} compute_t;

/* Checkpoint SAVE at a step boundary: snapshots the hosted parts (a memory
 * copy) and writes them on the writer thread, which posts OUT_CKPT. Waits
 * for the previous write first. Compute thread. */
void nb__stage_ckpt_save(nb_stage_rt_t *rt, compute_t *c, const Nebula__Checkpoint *ck);
/* Checkpoint COMMITTED: keeps a copy of the manifest next to this daemon's
 * files and prunes old checkpoints. Compute thread. */
void nb__stage_ckpt_committed(nb_stage_rt_t *rt, compute_t *c, const Nebula__Checkpoint *ck);
/* Loads every hosted part from the checkpoint that manifest_json describes
 * (checkpoint_dir/step-N of this daemon; the manifest is kept there too).
 * Errors: negative NB_E* code, message in err. Compute thread. */
int nb__stage_ckpt_restore(nb_stage_rt_t *rt, nb_host_t *host, const char *manifest_json, uint64_t step,
                           char *err, size_t errlen);
/* Adds hosted stage i's codec stream state (stage_streams.c; be: the
 * streams' backend, nb_stage_codec_backend) to snap as
 * extra tensors named by cut. Errors: NB_ENOMEM, NB_ERANGE. */
int nb__stage_streams_snapshot(nb_host_t *h, int i, nb_backend_t *be, nb_ckpt_snap_t *snap);
/* Sets hosted stage i's codec streams from the checkpoint's extras (empty
 * where it has none for the cut). Errors: NB_E* with the reason in err. */
int nb__stage_streams_restore(nb_host_t *h, int i, nb_backend_t *be, const char *dir, const nb_ckpt_manifest_t *m,
                              char *err, size_t errlen);
/* Waits for a checkpoint write in progress. */
void nb__stage_ckpt_join(compute_t *c);
/* Waits for a write in progress and frees the snapshots (the parts they
 * copy are about to go). */
void nb__stage_ckpt_release(compute_t *c);

/* Pushes a local ABORT marker (an Abort frame) into the control box so the
 * compute thread drops the step in flight and answers with OUT_JOINED.
 * Returns 0 or NB_ECLOSED / NB_ENOMEM. Loop thread. */
int nb__stage_push_abort(nb_stage_rt_t *rt, uint32_t attempt, const char *why);

/* Frees an outbox item and whatever it holds (mailbox free callback). */
void nb__stage_free_out(void *p);

/* The compute thread's body (pthread start routine; arg is the runtime):
 * takes Job, Plan and Commit frames from rt->ctl until it is closed. */
void *nb__stage_compute_main(void *arg);

#endif
