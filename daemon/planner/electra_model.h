/*
 * electra_model.h - a steady-state model of the ELECTRA topology across
 * clusters (docs/electra.md, "Across daemons"; docs/planner.md, "ELECTRA
 * topology"): G generator clusters each send one batch of token IDs per
 * discriminator step, one way, to one discriminator cluster, paced by a
 * credit window of W steps. It predicts the step period from each side's
 * compute, the replica all-reduce of nb_cost_allreduce and each link; it is
 * a PREDICTION, not a measurement, and knows nothing the caller does not
 * state.
 *
 * Thread: pure functions, no shared state.
 */
#ifndef NB_PLANNER_ELECTRA_MODEL_H
#define NB_PLANNER_ELECTRA_MODEL_H

#include <stddef.h>

/* Most generator clusters the model takes (the job's NB_ELECTRA_MAX_GEN). */
#define NB_EM_MAX_GEN 8

/* One cluster's compute for one step: `seqs` sequences split evenly along
 * the batch over `devices` data-parallel replicas (the largest shard,
 * ceil(seqs / devices), sets the time), each sequence costing
 * flops_per_seq (forward, backward and, for a generator, sampling) at
 * device_flops effective FLOP/s, plus `overhead` seconds per step (kernel
 * launches, optimizer), then the ring all-reduce of grad_bytes at
 * reduce_bw bytes/s (nb_cost_allreduce: 2 (R-1)/R G / bw, not overlapped
 * with the backward). */
typedef struct {
    int devices;          /* >= 1 */
    int seqs;             /* sequences per step, >= 1 */
    double flops_per_seq; /* > 0 */
    double device_flops;  /* effective FLOP/s of one device, > 0 */
    double overhead;      /* s per step, >= 0 */
    double grad_bytes;    /* bytes all-reduced per step, >= 0 */
    double reduce_bw;     /* bytes/s, > 0 when devices > 1 */
} nb_em_compute_t;

/* One generator's link to the discriminator's cluster, one way. */
typedef struct {
    double latency;   /* s one way (the credit comes back with the same) */
    double bandwidth; /* bytes/s, > 0 */
} nb_em_link_t;

typedef struct {
    int n_gen; /* 1..NB_EM_MAX_GEN */
    int seq_len;
    /* Encoded bytes per token of a batch (docs/electra.md, "What crosses
     * the link": ID width + 1/8 for the flag; nb_em_wire_bytes gives the
     * whole batch, header included). */
    int id_width; /* 1, 2 or 4 */
    int window;   /* W >= 1: a generator runs at most W steps ahead */
    nb_em_compute_t disc; /* disc.seqs = the sum of the generators' seqs */
    nb_em_compute_t gen[NB_EM_MAX_GEN];
    nb_em_link_t link[NB_EM_MAX_GEN];
} nb_em_job_t;

enum nb_em_bound {
    NB_EM_BOUND_DISC,   /* the discriminator's step */
    NB_EM_BOUND_GEN,    /* a generator's step */
    NB_EM_BOUND_LINK,   /* a link's transfer of one batch */
    NB_EM_BOUND_WINDOW, /* the credit round trip does not fit in W steps */
};

typedef struct {
    double t_disc;                   /* s, the discriminator's step */
    double t_gen[NB_EM_MAX_GEN];     /* s, each generator's step */
    double t_xfer[NB_EM_MAX_GEN];    /* s, one batch on its link (bytes / bandwidth) */
    double t_cycle[NB_EM_MAX_GEN];   /* s, credit round trip / W (see nb_em_predict) */
    double batch_bytes[NB_EM_MAX_GEN];
    double step;                     /* s, the predicted steady-state period */
    double tokens_per_s;             /* discriminator tokens per second */
    enum nb_em_bound bound;
    int bound_gen;                   /* which generator, for GEN, LINK, WINDOW; else -1 */
} nb_em_result_t;

/* Seconds of one step of c (see nb_em_compute_t), or a negative NB_EINVAL
 * for a bad field. */
double nb_em_compute_time(const nb_em_compute_t *c);

/* Bytes of one encoded batch of n sequences of T tokens with IDs of w
 * bytes: the 28-byte header, n T w ID bytes and ceil(n T / 8) flag bytes. */
double nb_em_wire_bytes(int n, int T, int w);

/* Predicts the steady-state step period of job j:
 *
 *   step = max(t_disc, max_g t_gen[g], max_g t_xfer[g], max_g t_cycle[g])
 *   t_cycle[g] = (t_disc + t_gen[g] + t_xfer[g] + 2 latency[g]) / W
 *
 * The discriminator, each generator and each link are resources that work
 * in parallel on different steps; the window couples them: a generator may
 * compute step s only after the discriminator has finished step s - W and
 * the credit has crossed back, so W steps must hold one credit's latency,
 * the generator's step, the transfer, the batch's latency and the
 * discriminator's step. While that round trip is shorter than W slowest
 * steps the window hides latency and transfer entirely. Ties go to the
 * first of DISC, GEN, LINK, WINDOW. Returns 0, or NB_EINVAL with why in err
 * (a field out of range, disc.seqs not the sum of the generators' seqs). */
int nb_em_predict(const nb_em_job_t *j, nb_em_result_t *out, char *err, size_t errlen);

/* Name of a bound ("disc", "gen", "link", "window"). */
const char *nb_em_bound_name(enum nb_em_bound b);

#endif
