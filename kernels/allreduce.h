/*
 * allreduce.h - a device library's sum-all-reduce across several backends of
 * one process: NCCL across CUDA devices, exported by the CUDA module
 * (kernels/cuda/cuda_nccl.cu) and found by the loader (cuda_loader.c), so
 * that nothing outside the module links NCCL and the CPU build needs nothing
 * new. The data-parallel replicas of a stage use it through their reduction
 * engine (daemon/pipeline/replica_reduce.h; docs/pipeline.md, "Replicas").
 *
 * An object carries its own table (nb_allreduce_i), as a backend does.
 * Thread: calls on one object may come from several threads; the object
 * serialises them (each call issues every rank's part at once, so the ranks
 * see the calls in one order). Errors: negative NB_E* codes with the
 * library's own message in err.
 */
#ifndef NB_ALLREDUCE_H
#define NB_ALLREDUCE_H

#include <stddef.h>
#include "kernels/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct nb_allreduce nb_allreduce_t;

typedef struct nb_allreduce_i {
    const char *name; /* "nccl" */
    /* bufs[r]: n floats in the memory of rank r's backend, complete when
     * called (the caller has synchronised the backends that wrote them).
     * Returns when every bufs[r] holds the element-wise sum over the ranks;
     * n == 0 does nothing. Errors: NB_EIO (the library failed; err names the
     * call and its reason; the object is then unusable). */
    int (*sum)(nb_allreduce_t *a, float *const *bufs, size_t n, char *err, size_t errlen);
    void (*free)(nb_allreduce_t *a);
} nb_allreduce_i;

struct nb_allreduce {
    const nb_allreduce_i *iface;
    int n_ranks;
    void *ctx;
};

/* NCCL across the CUDA backends bes[0..n-1] (borrowed; they must outlive the
 * object): rank r is bes[r]'s device. NULL with the reason in *why (static
 * storage) when built without CUDA or NCCL, when the module cannot be
 * loaded, when a backend is not a CUDA backend, when two backends share a
 * device, or when NCCL cannot make the communicators. Free with
 * nb_allreduce_free. Thread: any. */
nb_allreduce_t *nb_cuda_allreduce_new(nb_backend_t *const *bes, int n, const char **why);

/* Makes be's device the calling thread's current CUDA device (the CUDA
 * runtime keeps one per thread; a kernel launched on a stream of another
 * device fails). A thread that runs ops of several CUDA backends, or of one
 * it did not open, calls it before them. 0; NB_EINVAL for a backend that is
 * not CUDA or without a module; NB_EIO when the runtime refuses. */
int nb_cuda_make_current(nb_backend_t *be);

/* See nb_allreduce_i.sum. */
static inline int nb_allreduce_sum(nb_allreduce_t *a, float *const *bufs, size_t n, char *err, size_t errlen)
{
    return a->iface->sum(a, bufs, n, err, errlen);
}

/* NULL is a no-op. */
static inline void nb_allreduce_free(nb_allreduce_t *a)
{
    if (a)
        a->iface->free(a);
}

#ifdef __cplusplus
}
#endif

#endif
