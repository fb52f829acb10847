/*
 * replica_reduce.c - the all-reduce engines of a stage's replicas: the CPU
 * engine's fixed-order element-wise sum, and the NCCL engine for CUDA
 * replicas, a wrapper of the CUDA module's (see replica_reduce.h).
 */
#include <stdlib.h>
#include "daemon/pipeline/replica_reduce.h"
#include "kernels/allreduce.h"

void nb_reduce_sum_range(float *const *bufs, int n, size_t lo, size_t hi)
{
    for (size_t i = lo; i < hi; i++) {
        float acc = bufs[0][i];
        for (int r = 1; r < n; r++)
            acc += bufs[r][i];
        for (int r = 0; r < n; r++)
            bufs[r][i] = acc;
    }
}

/* The sum runs in blocks so each block's R inputs stay in cache while they
 * are read and written back. */
#define REDUCE_BLOCK 4096

static int cpu_allreduce(nb_reduce_t *e, float *const *bufs, size_t n, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    for (size_t lo = 0; lo < n; lo += REDUCE_BLOCK)
        nb_reduce_sum_range(bufs, e->n_ranks, lo, lo + REDUCE_BLOCK < n ? lo + REDUCE_BLOCK : n);
    return 0;
}

static void cpu_free(nb_reduce_t *e) { (void)e; }

static const nb_reduce_i cpu_iface = { "cpu", cpu_allreduce, cpu_free };

static int nccl_allreduce(nb_reduce_t *e, float *const *bufs, size_t n, char *err, size_t errlen)
{
    return nb_allreduce_sum(e->ctx, bufs, n, err, errlen);
}

static void nccl_free(nb_reduce_t *e) { nb_allreduce_free(e->ctx); }

static const nb_reduce_i nccl_iface = { "nccl", nccl_allreduce, nccl_free };

nb_reduce_t *nb_reduce_new(nb_backend_t *const *bes, int n, const char **why)
{
    int cuda = 0;
    for (int r = 0; r < n; r++)
        cuda += bes[r]->iface->kind == NB_DEV_CUDA;
    if (cuda && cuda != n) {
        *why = "replicas on CPU and CUDA devices in one stage: one stage runs on one kind of device";
        return NULL;
    }
    nb_reduce_t *e = calloc(1, sizeof *e);
    if (!e || !(e->bes = calloc((size_t)n, sizeof *e->bes))) {
        free(e);
        *why = "out of memory";
        return NULL;
    }
    for (int r = 0; r < n; r++)
        e->bes[r] = bes[r];
    e->iface = &cpu_iface;
    e->n_ranks = n;
    if (cuda) {
        if (!(e->ctx = nb_cuda_allreduce_new(bes, n, why))) {
            free(e->bes);
            free(e);
            return NULL;
        }
        e->iface = &nccl_iface;
    }
    return e;
}

void nb_reduce_free(nb_reduce_t *e)
{
    if (!e)
        return;
    e->iface->free(e);
    free(e->bes);
    free(e);
}
