/*
 * cuda_nccl.cu - the NCCL all-reduce across the CUDA backends of one process
 * (kernels/allreduce.h): the gradient sum of a stage's CUDA replicas
 * (docs/pipeline.md, "Replicas").
 *
 * Single process, several GPUs: one communicator per device from
 * ncclCommInitAll (no unique id to hand out inside one process), and one
 * stream of the engine's own per device, so the sums of finished buckets run
 * beside the backward kernels still queued on the backends' streams (as
 * PyTorch DDP's NCCL stream). A call issues every rank's ncclAllReduce (in
 * place, ncclFloat, ncclSum) between ncclGroupStart and ncclGroupEnd from
 * the calling thread, then waits for the engine's streams: on return the
 * sums are in every buffer. Calls are serialised by a mutex, so every rank
 * sees the collectives in one order whatever thread makes them.
 *
 * Determinism: NCCL does not add in rank order (its ring and tree
 * algorithms start each chunk at another rank), but for the same
 * communicator (ranks, devices, topology), NCCL version, environment
 * (NCCL_ALGO, NCCL_PROTO) and the same sequence of counts, it adds in the
 * same order on every run, and every rank receives the same bits. With two
 * ranks every element is one addition, a + b = b + a: the result is the CPU
 * engine's to the bit.
 *
 * Built with NCCL when the Makefile finds it (NB_HAVE_NCCL), and always in
 * the emulated build (tests/cuda_emu/nccl_emu.h); otherwise
 * nb_cuda_allreduce_new says the module was built without NCCL.
 */
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/allreduce.h"
#include <pthread.h>

/* The CUDA runtime's current device is per thread, and a kernel launch on a
 * stream of another device fails: a thread that runs a replica's ops makes
 * its device current first (kernels/allreduce.h). */
extern "C" int nb_cuda_make_current(nb_backend_t *be)
{
    if (!be || be->iface->kind != NB_DEV_CUDA)
        return NB_EINVAL;
    return cudaSetDevice(nb_cuda_ctx_of(be)->device) == cudaSuccess ? 0 : NB_EIO;
}

#if defined(NB_CUDA_EMU) || defined(NB_HAVE_NCCL)

namespace {

struct nccl_ctx {
    int n;
    int devices[16];
    ncclComm_t comms[16];
    cudaStream_t streams[16];
    pthread_mutex_t mu;
    bool broken; /* a call failed: NCCL's state is unknown */
};

thread_local char why_buf[256];

void destroy(nccl_ctx *c)
{
    int cur = 0;
    cudaGetDevice(&cur);
    for (int r = 0; r < c->n; r++) {
        if (c->streams[r]) {
            cudaSetDevice(c->devices[r]);
            cudaStreamSynchronize(c->streams[r]);
            cudaStreamDestroy(c->streams[r]);
        }
        if (c->comms[r])
            ncclCommDestroy(c->comms[r]);
    }
    cudaSetDevice(cur);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

int nccl_sum(nb_allreduce_t *a, float *const *bufs, size_t n, char *err, size_t errlen)
{
    nccl_ctx *c = (nccl_ctx *)a->ctx;
    if (n == 0)
        return 0;
    pthread_mutex_lock(&c->mu);
    int rc = 0;
    if (c->broken) {
        snprintf(err, errlen, "NCCL all-reduce across %d CUDA devices: an earlier call failed", c->n);
        pthread_mutex_unlock(&c->mu);
        return NB_EIO;
    }
    int cur = 0;
    cudaGetDevice(&cur);
    ncclResult_t nr = ncclGroupStart();
    const char *what = "ncclGroupStart";
    for (int r = 0; nr == ncclSuccess && r < c->n; r++) {
        nr = ncclAllReduce(bufs[r], bufs[r], n, ncclFloat, ncclSum, c->comms[r], c->streams[r]);
        what = "ncclAllReduce";
    }
    ncclResult_t ne = ncclGroupEnd(); /* closes the group even after a failed call */
    if (nr == ncclSuccess && ne != ncclSuccess) {
        nr = ne;
        what = "ncclGroupEnd";
    }
    if (nr != ncclSuccess) {
        snprintf(err, errlen, "%s of %zu floats across %d CUDA devices: %s", what, n, c->n, ncclGetErrorString(nr));
        rc = NB_EIO;
    }
    for (int r = 0; rc == 0 && r < c->n; r++) {
        cudaError_t e = cudaSetDevice(c->devices[r]);
        if (e == cudaSuccess)
            e = cudaStreamSynchronize(c->streams[r]);
        if (e != cudaSuccess) {
            snprintf(err, errlen, "NCCL all-reduce on CUDA device %d: %s", c->devices[r], cudaGetErrorString(e));
            rc = NB_EIO;
        }
    }
    cudaSetDevice(cur);
    if (rc)
        c->broken = true;
    pthread_mutex_unlock(&c->mu);
    return rc;
}

void nccl_free(nb_allreduce_t *a)
{
    destroy((nccl_ctx *)a->ctx);
    free(a);
}

const nb_allreduce_i nccl_iface = { "nccl", nccl_sum, nccl_free };

} // namespace

extern "C" nb_allreduce_t *nb_cuda_allreduce_new(nb_backend_t *const *bes, int n, const char **why)
{
    const char *dummy;
    if (!why)
        why = &dummy;
    if (n < 1 || n > 16) {
        snprintf(why_buf, sizeof why_buf, "NCCL all-reduce: %d devices (1 to 16 allowed)", n);
        *why = why_buf;
        return NULL;
    }
    nccl_ctx *c = (nccl_ctx *)calloc(1, sizeof *c);
    nb_allreduce_t *a = (nb_allreduce_t *)calloc(1, sizeof *a);
    if (!c || !a || pthread_mutex_init(&c->mu, NULL) != 0) {
        free(c);
        free(a);
        *why = "out of memory";
        return NULL;
    }
    for (int r = 0; r < n; r++) {
        if (!bes[r] || bes[r]->iface->kind != NB_DEV_CUDA) {
            snprintf(why_buf, sizeof why_buf, "NCCL all-reduce: replica %d is not on a CUDA device", r);
            goto fail;
        }
        c->devices[r] = nb_cuda_ctx_of(bes[r])->device;
        for (int q = 0; q < r; q++)
            if (c->devices[q] == c->devices[r]) {
                snprintf(why_buf, sizeof why_buf,
                         "NCCL all-reduce: replicas %d and %d are both on CUDA device %d (one replica per device)", q,
                         r, c->devices[r]);
                goto fail;
            }
    }
    {
        ncclResult_t nr = ncclCommInitAll(c->comms, n, c->devices);
        if (nr != ncclSuccess) {
            memset(c->comms, 0, sizeof c->comms);
            snprintf(why_buf, sizeof why_buf, "ncclCommInitAll across %d CUDA devices: %s", n, ncclGetErrorString(nr));
            goto fail;
        }
    }
    c->n = n;
    {
        int cur = 0;
        cudaGetDevice(&cur);
        for (int r = 0; r < n; r++) {
            cudaError_t e = cudaSetDevice(c->devices[r]);
            if (e == cudaSuccess)
                e = cudaStreamCreateWithFlags(&c->streams[r], cudaStreamNonBlocking);
            if (e != cudaSuccess) {
                c->streams[r] = NULL;
                cudaSetDevice(cur);
                snprintf(why_buf, sizeof why_buf, "NCCL all-reduce: no stream on CUDA device %d: %s", c->devices[r],
                         cudaGetErrorString(e));
                goto fail;
            }
        }
        cudaSetDevice(cur);
    }
    a->iface = &nccl_iface;
    a->n_ranks = n;
    a->ctx = c;
    return a;
fail:
    c->n = n; /* destroy what was made: comms and streams are NULL where not */
    destroy(c);
    free(a);
    *why = why_buf;
    return NULL;
}

#else /* a real build without NCCL */

extern "C" nb_allreduce_t *nb_cuda_allreduce_new(nb_backend_t *const *bes, int n, const char **why)
{
    (void)bes;
    (void)n;
    if (why)
        *why = "the CUDA module was built without NCCL (nccl.h and libnccl.so were not found at build time)";
    return NULL;
}

#endif
