/*
 * replica_reduce.h - the all-reduce of a stage's gradients across its
 * replicas (data parallel inside one daemon; docs/pipeline.md, "Replicas").
 *
 * An engine is an opaque context behind a table of function pointers
 * (nb_reduce_i), so that a device library's collective plugs in beside the
 * CPU engine without changes to its callers. Two engines:
 *  - "cpu" for CPU replicas: a deterministic in-process sum in a fixed order
 *    (replica 0 + replica 1 + ... for every element), so the result does not
 *    depend on thread timing and every replica ends with the same bits;
 *  - "nccl" for CUDA replicas: NCCL's all-reduce across the devices, from
 *    the CUDA module (kernels/allreduce.h, kernels/cuda/cuda_nccl.cu), which
 *    states its determinism: the same bits on every run for the same bucket
 *    sizes, and the CPU engine's bits with two replicas.
 *
 * Thread: calls on disjoint ranges may come at once from the replicas'
 * threads (the buckets of the overlapped reduction, stage_replicas.c); the
 * range of a call must not be touched by anyone else during it, and the
 * backends that wrote it must be synchronised. The CPU engine holds no
 * state between calls; the NCCL engine serialises its calls, each of which
 * issues every rank's part, so the ranks see the collectives in one order.
 * Errors: negative NB_E* codes with a message in err.
 */
#ifndef NB_REPLICA_REDUCE_H
#define NB_REPLICA_REDUCE_H

#include <stddef.h>
#include "kernels/backend.h"

typedef struct nb_reduce nb_reduce_t;

typedef struct nb_reduce_i {
    const char *name;
    /* Sum-all-reduce: bufs[r] holds n floats on replica r's backend; on
     * return every bufs[r] holds the element-wise sum over all replicas. */
    int (*allreduce)(nb_reduce_t *e, float *const *bufs, size_t n, char *err, size_t errlen);
    void (*free)(nb_reduce_t *e);
} nb_reduce_i;

struct nb_reduce {
    const nb_reduce_i *iface;
    int n_ranks;
    nb_backend_t **bes; /* n_ranks, borrowed */
    void *ctx;
};

/* The engine for replicas on the backends bes[0..n-1] (borrowed; they must
 * outlive the engine). All CPU: the deterministic CPU engine. All CUDA: the
 * NCCL engine, or NULL with its reason in *why (built without CUDA or NCCL,
 * a device listed twice, NCCL failed). CPU and CUDA mixed: NULL (one stage
 * runs on one kind of device). NULL with "out of memory" when allocation
 * fails. */
nb_reduce_t *nb_reduce_new(nb_backend_t *const *bes, int n, const char **why);
void nb_reduce_free(nb_reduce_t *e);

/* See nb_reduce_i.allreduce. */
static inline int nb_reduce_allreduce(nb_reduce_t *e, float *const *bufs, size_t n, char *err, size_t errlen)
{
    return e->iface->allreduce(e, bufs, n, err, errlen);
}

/* The CPU engine's kernel, exposed for tests: for i in [lo, hi),
 * acc = bufs[0][i] + bufs[1][i] + ... + bufs[n-1][i] in that order, in
 * float, written back to every bufs[r][i]. */
void nb_reduce_sum_range(float *const *bufs, int n, size_t lo, size_t hi);

#endif
