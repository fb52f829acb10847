/*
 * cuda_common.cuh - what every file of the CUDA backend shares: the CUDA
 * headers (or, in the emulated build, their host emulation), error checks,
 * the launch macro, the backend's context, and the registration functions by
 * which each op file fills its entries of the backend table.
 *
 * Two builds of the same sources (docs/cuda.md):
 *  - nvcc: the real backend, libnebula-cuda.so, loaded on demand.
 *  - NB_CUDA_EMU: the sources compiled as C++ by the host compiler against
 *    tests/cuda_emu/cuda_emu.h, which runs every thread of a kernel as a host
 *    fiber with real __syncthreads and warp-shuffle semantics. That build,
 *    libnebula-cuda-emu.so, lets `make test` check every kernel's logic
 *    against the CPU backend on a machine without a GPU. It says nothing about
 *    speed, and cannot see hardware-only faults (a race the fiber order does
 *    not expose, a cuBLAS numeric difference); the device run does that.
 *
 * Rules the kernels follow so that both builds work:
 *  - launch with NB_LAUNCH(kernel, grid, block, smem_bytes, stream)(args...);
 *  - dynamic shared memory through NB_DYN_SMEM(type, name);
 *  - static shared arrays with __shared__ at kernel scope;
 *  - no atomics in reductions (bit-reproducible runs): reduce per block into
 *    scratch, then reduce the partials in a fixed order.
 */
#ifndef NB_CUDA_COMMON_CUH
#define NB_CUDA_COMMON_CUH

#ifdef NB_CUDA_EMU
#include "tests/cuda_emu/cuda_emu.h"
#include "tests/cuda_emu/nccl_emu.h"
#else
#include <cuda_runtime.h>
#include <cublas_v2.h>
#ifdef NB_HAVE_NCCL
#include <nccl.h>
#endif
#endif
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include "kernels/backend.h"

#ifdef NB_CUDA_EMU
#define NB_LAUNCH(kernel, grid, block, smem, stream) nb_emu::launch(kernel, dim3(grid), dim3(block), (smem), (stream))
#define NB_DYN_SMEM(type, name) type *name = (type *)nb_emu::dyn_smem()
#else
#define NB_LAUNCH(kernel, grid, block, smem, stream) kernel<<<(grid), (block), (smem), (stream)>>>
#define NB_DYN_SMEM(type, name) extern __shared__ type name[]
#endif

/* Record file, line and the library's own error string, then abort: a failed
 * CUDA call after the backend opened is a broken invariant (device lost). */
#define NB_CUDA_CHECK(call)                                                        \
    do {                                                                           \
        cudaError_t e_ = (call);                                                   \
        if (e_ != cudaSuccess) {                                                   \
            fprintf(stderr, "nebula: CUDA error at %s:%d: %s: %s\n", __FILE__,     \
                    __LINE__, #call, cudaGetErrorString(e_));                      \
            abort();                                                               \
        }                                                                          \
    } while (0)
#define NB_CUBLAS_CHECK(call)                                                      \
    do {                                                                           \
        cublasStatus_t s_ = (call);                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                         \
            fprintf(stderr, "nebula: cuBLAS error at %s:%d: %s: %s\n", __FILE__,   \
                    __LINE__, #call, cublasGetStatusString(s_));                   \
            abort();                                                               \
        }                                                                          \
    } while (0)
/* After a launch: a bad configuration is reported at once, not at the next
 * synchronisation. */
#define NB_CUDA_LAUNCHED() NB_CUDA_CHECK(cudaGetLastError())

struct nb_cuda_ctx {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    /* Stream-ordered scratch for the partial sums of the two-pass reductions;
     * grown by nb_cuda_scratch, never shrunk. */
    void *scratch;
    size_t scratch_bytes;
    /* Pinned host buffer for small synchronous results (sumsq). */
    double *host_result;
    /* The matmul precision (nb_be_set_precision). */
    nb_precision_t precision;
};

static inline nb_cuda_ctx *nb_cuda_ctx_of(nb_backend_t *be) { return (nb_cuda_ctx *)be->ctx; }
static inline cudaStream_t nb_cuda_stream(nb_backend_t *be) { return nb_cuda_ctx_of(be)->stream; }

/* A device buffer of at least bytes, valid for ops enqueued until the next
 * call (every op on the stream runs in order, so one buffer serves all). */
void *nb_cuda_scratch(nb_backend_t *be, size_t bytes);

/* Blocks of `threads` threads that cover n elements (at least 1). */
static inline unsigned nb_cuda_blocks(size_t n, unsigned threads)
{
    size_t b = (n + threads - 1) / threads;
    return (unsigned)(b ? b : 1);
}

/* ---- warp and block reductions (every thread of the warp/block calls) --- */

__device__ __forceinline__ float nb_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double nb_warp_sum_d(double v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float nb_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
/* Sum over the block (blockDim.x a multiple of 32, at most 1024); every
 * thread gets the result. Uses 32 floats of shared memory passed in. */
__device__ __forceinline__ float nb_block_sum(float v, float *shared32)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = nb_warp_sum(v);
    __syncthreads(); /* shared32 may still be read by a previous call */
    if (lane == 0)
        shared32[warp] = v;
    __syncthreads();
    v = lane < nwarps ? shared32[lane] : 0.0f;
    return nb_warp_sum(v);
}
__device__ __forceinline__ float nb_block_max(float v, float *shared32)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = nb_warp_max(v);
    __syncthreads();
    if (lane == 0)
        shared32[warp] = v;
    __syncthreads();
    v = lane < nwarps ? shared32[lane] : -INFINITY;
    return nb_warp_max(v);
}

/* ---- registration: each op file fills its entries of the table ---------- */

void nb_cuda_register_elementwise(nb_backend_i *i); /* cuda_ops_elementwise.cu: gelu, bias, adamw */
void nb_cuda_register_embed(nb_backend_i *i);       /* cuda_ops_embed.cu */
void nb_cuda_register_norm(nb_backend_i *i);        /* cuda_ops_norm.cu: layernorm, sumsq */
void nb_cuda_register_xent(nb_backend_i *i);        /* cuda_ops_xent.cu */
void nb_cuda_register_attention(nb_backend_i *i);   /* cuda_ops_attention.cu: self and cross */
void nb_cuda_register_codec(nb_backend_i *i);       /* cuda_codec.cu */

#endif /* NB_CUDA_COMMON_CUH */
