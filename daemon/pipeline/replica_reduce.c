/*
 * replica_reduce.c - the CPU all-reduce engine of a stage's replicas: a
 * fixed-order element-wise sum (see replica_reduce.h).
 */
#include <stdlib.h>
#include "daemon/pipeline/replica_reduce.h"

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

nb_reduce_t *nb_reduce_new(nb_backend_t *const *bes, int n, const char **why)
{
    for (int r = 0; r < n; r++)
        if (bes[r]->iface->kind != NB_DEV_CPU) {
            *why = "replicas on CUDA devices need the NCCL all-reduce engine, which this version does not "
                   "have (docs/pipeline.md, \"Replicas\"); list one CUDA device per stage daemon";
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
