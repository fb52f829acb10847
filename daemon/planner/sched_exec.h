/*
 * sched_exec.h - runs the op lists of every stage together, in logical time,
 * to prove a schedule is complete and deadlock-free, and merges the lists of
 * stages that share one daemon (U-shape placements) into one order.
 *
 * Model: each list is one sequential worker that blocks on its head op.
 * Between stage s and s+1 there is one FIFO channel per direction holding at
 * most queue_cap messages (a send blocks while its channel is full, a receive
 * while it is empty), like the stage runtime's bounded mailboxes. Because
 * every worker is sequential and every channel FIFO, the outcome (completes
 * or deadlocks) does not depend on timing: a list set that completes here
 * completes under any compute and link speeds with the same capacities.
 *
 * Thread: pure functions, safe from any thread.
 */
#ifndef NB_PLANNER_SCHED_EXEC_H
#define NB_PLANNER_SCHED_EXEC_H

#include <stddef.h>

#include "daemon/planner/schedule.h"

typedef struct {
    int peak_inflight[NB_SCHED_MAX_STAGES]; /* per stage: max F done, B not */
    long rounds;                            /* logical time steps used */
} nb_sched_exec_stats_t;

/* Runs lists[0..nlists) (lens[i] ops each) for a p-stage, m-micro-batch step.
 * queue_cap <= 0 means unbounded channels. Returns 0 when every op of every
 * stage ran exactly once; NB_ESTATE on a deadlock (err names each blocked
 * head); NB_EFORMAT for a list that can never be right (an op twice or
 * missing, a forward before its receive, a backward before its forward,
 * micro-batches arriving out of order). err (may be NULL) gets one line.
 * stats may be NULL. */
int nb_sched_exec_check(int p, int m, const nb_sched_op_t *const *lists,
                        const int *lens, int nlists, int queue_cap,
                        nb_sched_exec_stats_t *stats, char *err, size_t errlen);

/* Builds every stage's list for spec and checks them together: the one-call
 * proof used by tests and by the coordinator before it sends a plan. */
int nb_sched_verify(const nb_sched_spec_t *spec, int p, int m, int queue_cap,
                    nb_sched_exec_stats_t *stats, char *err, size_t errlen);

/* Number of ops a daemon runs: the sum of nb_sched_count over the stages
 * placed on it (placement[s] = daemon index of stage s, p entries). */
int nb_sched_daemon_count(int p, int m, const int *placement, int daemon);

/* The one ordered list daemon `daemon` runs when it hosts several stages
 * (each op carries its stage). Obtained by running all stages together with
 * each daemon as one worker that takes the first ready op among its stages'
 * lists (sends and receives first, then backwards, then forwards), so it is
 * deadlock-free by construction for channels of queue_cap (<= 0: unbounded).
 * A daemon hosting one stage gets that stage's list unchanged.
 * Returns the count, NB_EINVAL, NB_ELIMIT (cap too small) or the error of
 * nb_sched_exec_check. Caller owns ops. */
int nb_sched_build_daemon(const nb_sched_spec_t *spec, int p, int m,
                          const int *placement, int daemon, int queue_cap,
                          nb_sched_op_t *ops, int cap);

#endif
