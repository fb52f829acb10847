/*
 * coord_rt_internal.h - what the parts of the coordinator's runtime share:
 * coord_rt.c (the steps, the transport, the service hooks), coord_recover.c
 * (faults, the recovery decision, resuming), coord_ckpt.c (coordinated
 * checkpoints and their manifests) and coord_eval.c (held-out evaluation). Private to daemon/pipeline/. Every
 * function here runs on the loop thread.
 */
#ifndef NB_COORD_RT_INTERNAL_H
#define NB_COORD_RT_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include "daemon/clock.h"
#include "daemon/net/net.h"
#include "daemon/pipeline/coord_plan.h"
#include "daemon/pipeline/coord_rt.h"
#include "daemon/pipeline/job.h"
#include "daemon/pipeline/rt_common.h"
#include "daemon/train/checkpoint.h"

/* What a stage daemon said it holds (JobStatus JOINED). */
typedef struct {
    bool has_job;
    uint64_t job_id;
    uint32_t attempt;
    uint64_t committed;
    bool prepared;
    bool has_lc;
    uint64_t lc_step;
    double lc_sumsq;
    bool lc_skip;
} joined_t;

typedef struct {
    bool connected, links_ready, done, reported;
    bool joined;                /* JOINED received since the last abort */
    joined_t js;
    bool ckpt_done;             /* the checkpoint round in flight: its files are written */
    int n_files;
    nb_ckpt_file_t files[NB_SCHED_MAX_STAGES];
    nb_conn_t *conn;
    double grad_sumsq, loss;
    uint64_t nonfinite_stages;  /* the report's: stages with a NaN/Inf gradient */
    bool has_loss;
    uint64_t bytes_raw, bytes_wire, step_ns;
    double busy_s[NB_SCHED_MAX_STAGES]; /* compute seconds per hosted stage this step */
    bool eval_reported;         /* the evaluation in flight: this daemon's part is done */
    bool eval_has_loss;         /* its report carries the held-out loss (it hosts the head) */
    double eval_loss;
} daemon_slot_t;

struct nb_coord_rt {
    nb_rt_base_t b; /* service, configuration, state, loop, transport, failed, stopping */
    uv_timer_t connect_timer; /* the deadline of the wait in `waiting` */
    bool timer_open;
    enum { WAIT_CONNECT, WAIT_LINKS, WAIT_STEPS, WAIT_DONE, WAIT_RECOVER } waiting;
    double wait_s;            /* its deadline, in seconds */
    nb_job_desc_t job;
    int m, mb_size;           /* this step's micro-batches and their size */
    nb_sched_spec_t sched;
    nb_cplan_t *plan;         /* the planner, when it has something to choose */
    double pred_bubble;       /* the running plan's prediction; < 0 unknown */
    char fwd_codec[NB_PMSG_SPEC_MAX], bwd_codec[NB_PMSG_SPEC_MAX];
    daemon_slot_t d[NB_SCHED_MAX_STAGES];
    bool job_sent, running, finished;
    int64_t step;             /* the step in flight (or next): steps committed so far */
    double t_job_start, t_step_start;
    uint64_t total_raw, total_wire;
    double loss_sum_first, last_loss;
    int m_steps, m_loss, m_tps, m_bubble, m_raw, m_wire, m_replans, m_pred;
    int m_skipped;
    int64_t skipped_run;      /* consecutive steps skipped for a non-finite norm */
    int64_t skipped_total;    /* steps skipped in the whole job (AdamW count = steps - this) */
    long replans_seen;

    /* ---- recovery (coord_recover.c) ---- */
    uint32_t attempt;         /* the attempt running or being set up */
    bool recovering;          /* between a fault and every daemon's JOINED */
    bool resuming;            /* the next attempt's Jobs went out; LINKS_READY pending */
    bool step_in_flight;      /* a Plan went out and its Commit did not */
    bool force_checkpoint;    /* a resume in memory was refused: use the checkpoint */
    double t_fault;           /* when the recovery began */
    int64_t high_water;       /* most steps ever committed */
    int64_t restarts;
    char fault_why[512];
    bool has_decided;         /* the last Commit sent, for a recovery to re-send */
    uint64_t dec_step;
    double dec_sumsq;
    bool dec_skip;
    uv_timer_t recovery_timer;
    bool recovery_timer_open;
    int m_restarts, m_recovery_s, m_redone;

    /* ---- checkpoints (coord_ckpt.c) ---- */
    bool ckpt_enabled;        /* job.checkpoint asks for some */
    bool ckpt_requested;      /* nebulactl checkpoint: at the next step boundary */
    bool ckpt_final_pending;  /* the last step's checkpoint waits for the one in flight */
    int64_t ckpt_inflight;    /* the step of the round in flight; -1 none */
    double t_ckpt_start, t_last_ckpt;
    int64_t last_ckpt;        /* newest complete checkpoint (steps); -1 none */
    char *last_manifest;      /* its manifest JSON (malloc'd) */
    int m_ckpts, m_ckpt_s, m_ckpt_step, m_ckpt_failed;

    /* ---- held-out evaluation (coord_eval.c) ---- */
    bool eval_on;             /* job.eval: evaluate every job.eval.every_steps and at the end */
    bool eval_in_flight;      /* an eval Plan went out; not every report is in */
    int64_t eval_at;          /* the steps done it evaluates */
    bool eval_last;           /* it follows the last step: the job finishes after it */
    double t_eval_start;
    char eval_line[512];      /* the progress line that waits for the held-out loss */
    double eval_first, eval_last_loss;   /* first and latest held-out loss */
    int64_t eval_first_step, eval_last_step; /* their steps; -1 none */
    int m_eval_loss, m_eval_step, m_eval_s, m_eval_dropped;

    /* ---- re-partitioning (coord_repart.c) ---- */
    bool repart_on;           /* job.planner.repartition, with checkpoints and a planner */
    bool repart_pending;      /* a move decided: its checkpoint round is in flight */
    bool repart_restart;      /* the move's attempt is being set up */
    int64_t repart_step;      /* the steps done at the move */
    int repart_layers[NB_SCHED_MAX_STAGES];
    nb_pipe_layout_t repart_old; /* the layout before the move, for a revert */
    char repart_why[320];
    double t_repart;          /* when the move's checkpoint was asked for */
    int m_repart, m_repart_s;
};

void nb__coord_job_fail(nb_coord_rt_t *rt, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Sends a control frame to daemon i; a failure is reported as a fault. */
int nb__coord_send(nb_coord_rt_t *rt, int i, Nebula__Frame *f, const char *what);
/* Sends the Job of attempt rt->attempt (resume says how the stages get
 * their parts) to every daemon and waits for LINKS_READY. */
void nb__coord_send_job(nb_coord_rt_t *rt, int resume, uint64_t resume_step, const char *manifest);
/* Declares the job done once every stage wrote its final weights and no
 * checkpoint round is in flight. */
void nb__coord_maybe_finish(nb_coord_rt_t *rt);
/* The Commit of the step committed last (rt->dec_*) to daemon i. */
int nb__coord_send_commit(nb_coord_rt_t *rt, int i, uint64_t step, double sumsq, bool skip, bool last);

/* coord_recover.c */
/* A fault ended the attempt in flight: abort it everywhere and wait for the
 * daemons to come back (bounded by job.recovery_timeout_s). */
void nb__coord_fault(nb_coord_rt_t *rt, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* JobStatus JOINED from daemon i: once every daemon has said what it holds,
 * decide where the job (re)starts and send the Jobs. */
void nb__coord_joined(nb_coord_rt_t *rt, int i, const Nebula__JobStatus *s);
/* Every daemon reported LINKS_READY for the attempt: log the recovery. */
void nb__coord_recovered(nb_coord_rt_t *rt);
void nb__coord_recover_init(nb_coord_rt_t *rt);
/* Ends the attempt in flight everywhere (Abort with why) and waits for
 * every daemon's JOINED; the caller has set rt->recovering. */
void nb__coord_abort_attempt(nb_coord_rt_t *rt, const char *why);
/* Starts the recovery deadline (job.recovery_timeout_s) for a restart that
 * is not a fault (a re-partition); why names it if the deadline passes. */
void nb__coord_recover_arm(nb_coord_rt_t *rt, const char *why);
void nb__coord_recover_close(nb_coord_rt_t *rt);

/* After step rt->step's Commit (and its evaluation, when one was due): the
 * next step's Plan, or, after the last, the final Commit and the wait for
 * DONE. */
void nb__coord_next_step(nb_coord_rt_t *rt, bool last);

/* Every step committed: the last Commit again with `last` set; wait for DONE. */
void nb__coord_finish_now(nb_coord_rt_t *rt);

/* coord_eval.c */
/* Registers the evaluation metrics; reads job.eval. */
void nb__coord_eval_init(nb_coord_rt_t *rt);
/* Is an evaluation due once `done` steps are committed? job.eval.every_steps
 * and the last step, as nebula-train. */
bool nb__coord_eval_due(const nb_coord_rt_t *rt, int64_t done);
/* Sends the eval Plan for the weights after rt->step + 1 steps (rt->step's
 * Commit is out); line is the step's progress line, printed with the
 * held-out loss once every report is in (always, as nebula-train prints an
 * evaluated step); then the next step, or after the last (last) the final
 * Commit. */
void nb__coord_eval_start(nb_coord_rt_t *rt, const char *line, bool last);
/* An eval Report from daemon i. */
void nb__coord_eval_report(nb_coord_rt_t *rt, int i, const Nebula__Report *r);
/* A fault ended the evaluation in flight: it is dropped (the job recovers
 * as usual; the next one comes at the next due step). */
void nb__coord_eval_abandon(nb_coord_rt_t *rt);
/* " validation loss A (step a) -> B (step b)" for the job's last line, or "". */
const char *nb__coord_eval_summary(const nb_coord_rt_t *rt, char *buf, size_t len);

/* coord_repart.c */
/* Reads job.planner.repartition: NB_EINVAL with err when the job cannot
 * re-partition (no checkpoints, no planner); registers the metrics. */
int nb__coord_repart_init(nb_coord_rt_t *rt, char *err, size_t errlen);
/* After step rt->step's Commit (not the last step, no evaluation due): asks
 * the planner whether the split should move; if so, asks for a checkpoint
 * at this step boundary (rt->ckpt_requested) and returns true: the next
 * Plan waits for the move. */
bool nb__coord_repart_maybe(nb_coord_rt_t *rt);
/* The checkpoint round of step `step` ended (ok: complete). For the move's
 * round: ok ends the attempt and restarts it from that checkpoint on the
 * new split; not ok drops the move and sends the next Plan. */
void nb__coord_repart_ckpt_done(nb_coord_rt_t *rt, int64_t step, bool ok);
/* A fault ended the attempt: a move not yet under way is dropped. */
void nb__coord_repart_abandon(nb_coord_rt_t *rt);
/* The move's attempt did not start (a stage could not read its new
 * tensors, or any other fault while its links came up; why: the fault,
 * logged): the job goes back to the old split, from the same checkpoint,
 * and re-partitions no more. */
void nb__coord_repart_revert(nb_coord_rt_t *rt, const char *why);
/* The move's attempt has its links up: log and count it. True when the
 * attempt was a move (the caller logs nothing else). */
bool nb__coord_repart_done(nb_coord_rt_t *rt);
/* "2 stages, split 5,1" for the job's status line. */
const char *nb__coord_split_text(const nb_coord_rt_t *rt, char *buf, size_t len);

/* coord_ckpt.c */
/* At start: checks job.checkpoint against the configuration and finds the
 * newest checkpoint of this run in checkpoint_dir (rt->last_ckpt,
 * rt->last_manifest, and its job id in *job_id). Errors: NB_EINVAL with the
 * reason in err (a checkpoint of another run; checkpoints without a
 * checkpoint_dir). */
int nb__coord_ckpt_start(nb_coord_rt_t *rt, uint64_t *job_id, char *err, size_t errlen);
/* After the Commit of a step: starts a checkpoint round when one is due
 * (every_steps, every_seconds, nebulactl checkpoint, the last step). */
void nb__coord_ckpt_maybe(nb_coord_rt_t *rt, bool last);
/* Checkpoint DONE from daemon i. */
void nb__coord_ckpt_done(nb_coord_rt_t *rt, int i, const Nebula__Checkpoint *ck);
/* A fault ended the round in flight (its files stay incomplete, pruned later). */
void nb__coord_ckpt_abandon(nb_coord_rt_t *rt);
/* Registers `checkpoint` on the status socket and the checkpoint metrics. */
void nb__coord_ckpt_init(nb_coord_rt_t *rt);

#endif
