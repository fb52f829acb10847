/*
 * replica.h - what a stage daemon tells the coordinator's planner about its
 * replicas (data parallel inside its cluster, docs/planner.md "Replicas"):
 * how many, and how fast it can reduce gradients between them in memory.
 *
 * Thread: any; no shared state.
 */
#ifndef NB_PLANNER_REPLICA_H
#define NB_PLANNER_REPLICA_H

#include <stdbool.h>
#include <stddef.h>

/* Most replicas a stage may have: one per device of a stage daemon's
 * config (NB_CFG_MAX_DEVICES). */
#define NB_REPLICA_MAX 16

/* Bytes of each buffer nb_replica_reduce_bw sums: 4 MiB, a bucket of the
 * size gradient all-reduces use, larger than the caches of one core. */
#define NB_REPLICA_PROBE_BYTES ((size_t)4 << 20)

/* Measures this machine's in-memory reduction bandwidth: sums one fp32
 * buffer of `bytes` into another (a += b), best of `rounds` (>= 1) after one
 * warm-up, and returns bytes of one buffer reduced per second (the
 * reduce_bw of nb_cost_allreduce). About 1 ms per round for 4 MiB.
 * Returns 0 when it cannot measure (no memory, bytes too small). */
double nb_replica_reduce_bw(size_t bytes, int rounds);

/* The reduce bandwidth a stage daemon reports for its devices: for CUDA
 * devices NB_COST_REDUCE_BW_NCCL (an assumption, not measured: NCCL is
 * not timed at start-up), for CPU devices nb_replica_reduce_bw of
 * NB_REPLICA_PROBE_BYTES, best of 3; 0 (unknown) with one device, where
 * nothing is reduced. The CPU figure is measured on the first call (about
 * 5 ms) and kept for the process. */
double nb_replica_local_bw(int n_devices, bool cuda);

/* Checks a replica count and reduce bandwidth that came from a peer:
 * replicas 0 (an older peer that sends none) means 1; 1..max_replicas is
 * accepted; bandwidth must be finite and >= 0 (0: unknown). Returns the
 * replica count (>= 1), or a negative NB_EINVAL with why (e.g. "replicas 40
 * out of range 1..16") in err. */
int nb_replica_check(unsigned replicas, double bytes_per_s, int max_replicas, char *err,
                     size_t errlen);

#endif
