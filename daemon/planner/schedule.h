/*
 * schedule.h - pipeline schedules: the exact order of operations each stage
 * runs in one training step.
 *
 * A step pushes m micro-batches through p pipeline stages. Stage s runs, for
 * every micro-batch i, a forward F(i) and a backward B(i), and the transfers
 * they imply: receive activations from stage s-1 before F(i) (s > 0), send
 * activations to stage s+1 after F(i) (s < p-1), receive the gradient from
 * stage s+1 before B(i) (s < p-1), send the input gradient to stage s-1 after
 * B(i) (s > 0). The last stage computes the loss inside its forward/backward.
 *
 * Schedules (both process backwards in order 0..m-1 on every stage, so the
 * gradient accumulation order equals the single-process trainer's):
 *   gpipe    all m forwards, then all m backwards. Peak stash: m.
 *   1f1b     warm-up of w = min(p-s-1, m) forwards, then one forward / one
 *            backward until the forwards run out, then the remaining
 *            backwards. Peak stash: min(p-s, m).
 *   1f1b:K   1F1B with K extra warm-up forwards per downstream boundary:
 *            w = min((p-s-1)(1+K), m). Keeps more micro-batches in flight to
 *            hide link time (see docs/planner.md); K=0 is 1f1b and a large K
 *            is gpipe. Peak stash: min((p-s-1)(1+K)+1, m).
 *
 * Lists are per pipeline stage, never per daemon: one daemon may host several
 * stages (the U-shape keeps stage 0 and stage p-1 in the cluster that owns the
 * data). sched_exec.h merges the lists of the stages one daemon hosts into one
 * deadlock-free order.
 *
 * Thread: every function is pure and safe from any thread.
 */
#ifndef NB_PLANNER_SCHEDULE_H
#define NB_PLANNER_SCHEDULE_H

#include <stddef.h>

typedef enum {
    NB_SCHED_GPIPE = 0,
    NB_SCHED_1F1B = 1,
} nb_sched_kind_t;

/* A schedule: its kind and, for 1F1B, the extra warm-up per boundary. */
typedef struct {
    nb_sched_kind_t kind;
    int extra; /* 1f1b only: K of "1f1b:K"; 0 for gpipe and plain 1f1b */
} nb_sched_spec_t;

typedef enum {
    NB_OP_RECV_ACT = 0,  /* wait for activations of mb from stage-1 */
    NB_OP_FWD = 1,       /* forward of mb (the last stage: with the loss) */
    NB_OP_SEND_ACT = 2,  /* send activations of mb to stage+1 */
    NB_OP_RECV_GRAD = 3, /* wait for the output gradient of mb from stage+1 */
    NB_OP_BWD = 4,       /* backward of mb; accumulates parameter gradients */
    NB_OP_SEND_GRAD = 5, /* send the input gradient of mb to stage-1 */
} nb_sched_op_kind_t;

typedef struct {
    nb_sched_op_kind_t kind;
    int stage; /* pipeline stage the op belongs to */
    int mb;    /* micro-batch, 0..m-1 */
} nb_sched_op_t;

/* Largest p and m the schedule functions accept (sizes stay small ints). */
#define NB_SCHED_MAX_STAGES 64
#define NB_SCHED_MAX_MB 4096

/* "gpipe", "1f1b", "1f1b:K" (K > 0). */
const char *nb_sched_kind_name(nb_sched_kind_t kind);
/* Parses "gpipe", "1f1b" or "1f1b:K" (0 <= K <= 64) into *out. Returns 0 or
 * NB_EINVAL (out untouched). */
int nb_sched_parse(const char *s, nb_sched_spec_t *out);
/* Writes the spec's name ("1f1b:2") into buf (always terminated). Returns buf. */
const char *nb_sched_format(const nb_sched_spec_t *spec, char *buf, size_t len);

/* Number of ops stage `stage` runs: 2m compute ops plus 2m transfers per
 * neighbour. NB_EINVAL for p, m or stage out of range. */
int nb_sched_count(int p, int m, int stage);

/* Warm-up forwards stage runs before its first backward (m for gpipe). */
int nb_sched_warmup(const nb_sched_spec_t *spec, int p, int m, int stage);
/* Largest number of micro-batches whose activations stage keeps at once
 * (forwards done, backward not yet): the stash the memory model charges. */
int nb_sched_peak_inflight(const nb_sched_spec_t *spec, int p, int m, int stage);

/* Fills ops[0..n) with stage's list and returns n (= nb_sched_count), or
 * NB_EINVAL for bad arguments, NB_ELIMIT if cap < n (ops untouched then).
 * Caller owns ops. */
int nb_sched_build_spec(const nb_sched_spec_t *spec, int p, int m, int stage,
                        nb_sched_op_t *ops, int cap);
/* Same for a plain kind (extra = 0). */
int nb_sched_build(nb_sched_kind_t kind, int p, int m, int stage,
                   nb_sched_op_t *ops, int cap);

/* Smallest capacity of each directed channel (messages buffered between a
 * send and its receive: outbound queue, socket, inbound queue together) with
 * which every stage's list completes: 1 for gpipe and 1f1b, floor(K/2)+1 for
 * 1f1b:K (the upstream stage is still sending its deeper warm-up while the
 * downstream one already returns gradients; the K+1 surplus messages sit in
 * the two directions' buffers together). Tests check it is enough for
 * p <= 8, m <= 20 and that one less deadlocks. */
int nb_sched_min_queue_cap(const nb_sched_spec_t *spec);

/* Short op name: "F", "B", "recv-act", ... */
const char *nb_sched_op_name(nb_sched_op_kind_t kind);

#endif
