/*
 * sim.h - discrete-event simulation of one pipeline training step.
 *
 * Resources: one compute unit per stage (runs its schedule's F and B ops one
 * at a time, in list order, each as soon as the unit is free and its input
 * has arrived) and one wire per link direction (carries one message at a
 * time: a message of occupancy x leaves when it is ready and the wire is
 * free, frees the wire x later and arrives latency later still). Codec
 * encode/decode run on the compute thread, so the caller folds them into the
 * op times. Compute and transfers overlap freely. Channels are unbounded
 * (the runtime's queues are large enough not to stall, see schedule.h).
 *
 * Every resource serves its work in an order fixed in advance (compute: the
 * schedule list; a wire: micro-batch order, which is the order its messages
 * become ready), so the event simulation is exact by evaluating
 * start = max(resource free, input arrived) in dependency order.
 *
 * Definitions: step time T = end of the last op on any stage (all start at
 * 0). busy_s = sum of op times on stage s. Bubble = 1 - sum_s busy_s / (p T):
 * the fraction of the p stages' compute time idle during the step.
 *
 * Thread: pure functions.
 */
#ifndef NB_PLANNER_SIM_H
#define NB_PLANNER_SIM_H

#include "daemon/planner/schedule.h"

#define NB_SIM_MAX_STAGES NB_SCHED_MAX_STAGES

typedef struct {
    int p, m;
    nb_sched_spec_t sched;
    double tf[NB_SIM_MAX_STAGES], tb[NB_SIM_MAX_STAGES]; /* per micro-batch, s */
    /* Boundary s (between stage s and s+1), s < p-1: */
    double xf[NB_SIM_MAX_STAGES], lf[NB_SIM_MAX_STAGES]; /* activations: busy, latency */
    double xb[NB_SIM_MAX_STAGES], lb[NB_SIM_MAX_STAGES]; /* gradients: busy, latency */
    /* Optional: placement[s] = daemon (0..p-1) hosting stage s. Stages on one
     * daemon share its compute unit and run in the merged order of
     * nb_sched_build_daemon (U-shape). 0: one unit per stage. */
    int use_placement;
    int placement[NB_SIM_MAX_STAGES];
    /* Work a stage does once after its last op: the all-reduce of its
     * gradients across its replicas (s; 0: none). It occupies the stage's
     * compute unit (stages sharing a unit reduce one after the other) and
     * counts in T, not in busy. */
    double tail[NB_SIM_MAX_STAGES];
} nb_sim_input_t;

typedef enum {
    NB_SIM_EV_FWD = 0,    /* where = stage */
    NB_SIM_EV_BWD = 1,    /* where = stage */
    NB_SIM_EV_XFER_F = 2, /* where = boundary s (s -> s+1) */
    NB_SIM_EV_XFER_B = 3, /* where = boundary s (s+1 -> s) */
} nb_sim_ev_kind_t;

/* One op or transfer. For transfers, end is the arrival (leave + x + lat);
 * the wire is busy from start to start + x. */
typedef struct {
    nb_sim_ev_kind_t kind;
    int where, mb;
    double start, end;
} nb_sim_event_t;

typedef struct {
    double step_time;
    double tail_exposed; /* step_time minus the step without the tails */
    double bubble;
    double busy[NB_SIM_MAX_STAGES];
    int peak_inflight[NB_SIM_MAX_STAGES];
    double wire_busy[NB_SIM_MAX_STAGES][2]; /* per boundary, per direction */
} nb_sim_result_t;

/* Simulates one step. ev (may be NULL) receives up to ev_cap events sorted
 * by start time (ties: compute before transfer, then lower stage, then mb);
 * *nev (may be NULL) the number of events (4m(p-1) + 2mp in all; when more
 * than ev_cap, only the first ev_cap are kept). Returns 0, NB_EINVAL (bad p,
 * m, schedule, or a negative or non-finite time), NB_ENOMEM. */
int nb_sim_run(const nb_sim_input_t *in, nb_sim_result_t *out, nb_sim_event_t *ev, int ev_cap,
               int *nev);

/* Closed form for GPipe on a uniform pipeline (all stages tf, tb; every
 * boundary the same busy x and latency l per direction), docs/planner.md:
 *   T = p(tf+tb) + (m-1)(max(tf,xf) + max(tb,xb)) + (p-1)(xf+lf + xb+lb)
 * (p = 1: m(tf+tb)). */
double nb_sim_closed_gpipe(int p, int m, double tf, double tb, double xf, double lf, double xb,
                           double lb);
/* Bubble of a uniform pipeline: 1 - m(tf+tb) / T. */
double nb_sim_closed_bubble(int m, double tf, double tb, double T);

#endif
