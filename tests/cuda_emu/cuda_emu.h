/*
 * cuda_emu.h - a host emulation of the subset of CUDA, cuBLAS and NCCL that
 * the CUDA backend (kernels/cuda/) uses, so that the same sources compile
 * with the host C++ compiler into libnebula-cuda-emu.so and their logic is
 * tested on a machine without a GPU (docs/cuda.md, "Emulated device").
 *
 * Execution model: a launch runs at once, on the calling thread, block after
 * block. Every CUDA thread of a block is a fiber (ucontext) with its own
 * stack; __syncthreads() and __syncwarp() are real barriers, and the warp
 * shuffles exchange values through a per-warp slot array between two warp
 * barriers. Between barriers a fiber runs until it blocks, in thread order
 * or, with NB_CUDA_EMU_ORDER=reverse, in reverse thread order: a kernel that
 * reads shared memory another thread wrote without a barrier between them
 * gives a different result in one of the two orders. A barrier that not
 * every live thread of the block reaches is a deadlock, reported and
 * aborted. Shared memory (__shared__, NB_DYN_SMEM) is one array per block;
 * dynamic shared memory starts as 0xff bytes in every block, a static
 * __shared__ array keeps what the previous block left in it.
 *
 * Memory is host memory, so an out-of-bounds device access is caught by
 * AddressSanitizer in a SAN=1 build. Streams and events are ordered trivially
 * (everything is synchronous); events record wall time. cuBLAS's sgemm runs
 * on OpenBLAS with cuBLAS's column-major semantics and argument checks.
 *
 * What it cannot tell: speed, a race the two fiber orders do not expose,
 * device-only numerics (the GPU's libm, FMA contraction, cuBLAS's summation
 * order). The device run (tests/gpu/run.sh) covers those.
 *
 * Thread: each host thread has its own current device and fiber pool, so
 * backends on several threads (replicas) run concurrently.
 */
#ifndef NB_CUDA_EMU_H
#define NB_CUDA_EMU_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <tuple>
#include <utility>

/* ---- qualifiers ------------------------------------------------------------ */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
/* One array per block: blocks of a launch run one after another on one host
 * thread, whose fibers all see the same thread-local static. */
#define __shared__ static thread_local

/* ---- built-in types and variables ----------------------------------------- */
struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
    dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;
static const int warpSize = 32;

/* ---- device functions -------------------------------------------------------- */
namespace nb_emu {
void syncthreads();
void syncwarp();
/* Exchanges 8 bytes with the lane src of the calling thread's warp. */
uint64_t shfl_bits(uint64_t mine, int src_lane);
int lane_id();
void *dyn_smem();
/* Run the threads of the calling host thread's blocks in reverse order
 * (the default comes from NB_CUDA_EMU_ORDER); for the emulator's own test. */
void set_reverse(bool reverse);
} // namespace nb_emu

static inline void __syncthreads() { nb_emu::syncthreads(); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) { (void)mask; nb_emu::syncwarp(); }
static inline void __threadfence() {}
static inline void __threadfence_block() {}

template <class T> static inline T nb_emu_shfl(T v, int src)
{
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    bits = nb_emu::shfl_bits(bits, src);
    T r;
    memcpy(&r, &bits, sizeof r);
    return r;
}
/* width: the shuffle works in segments of width lanes (a power of two <= 32) */
template <class T> static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32)
{
    (void)mask;
    int lane = nb_emu::lane_id(), base = lane & ~(width - 1);
    return nb_emu_shfl(v, base + (src & (width - 1)));
}
template <class T> static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32)
{
    (void)mask;
    int lane = nb_emu::lane_id(), base = lane & ~(width - 1), src = lane ^ lane_mask;
    return nb_emu_shfl(v, (src & ~(width - 1)) == base ? src : lane);
}
template <class T> static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32)
{
    (void)mask;
    int lane = nb_emu::lane_id(), base = lane & ~(width - 1), src = lane + (int)delta;
    return nb_emu_shfl(v, src < base + width ? src : lane);
}
template <class T> static inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32)
{
    (void)mask;
    int lane = nb_emu::lane_id(), base = lane & ~(width - 1), src = lane - (int)delta;
    return nb_emu_shfl(v, src >= base ? src : lane);
}
static inline unsigned __ballot_sync(unsigned mask, int pred)
{
    (void)mask;
    unsigned r = 0;
    for (int l = 0; l < 32; l++)
        r |= nb_emu_shfl((unsigned)(pred != 0), l) << l;
    return r;
}

static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static inline int __float_as_int(float f) { int u; memcpy(&u, &f, 4); return u; }
static inline float __int_as_float(int u) { float f; memcpy(&f, &u, 4); return f; }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
static inline int __clzll(unsigned long long x) { return x ? __builtin_clzll(x) : 64; }
static inline int __ffs(unsigned x) { return __builtin_ffs((int)x); }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
template <class T> static inline T __ldg(const T *p) { return *p; }

/* The device's overloaded min and max. */
#define NB_EMU_MINMAX(T)                                        \
    static inline T min(T a, T b) { return a < b ? a : b; }     \
    static inline T max(T a, T b) { return a > b ? a : b; }
NB_EMU_MINMAX(int)
NB_EMU_MINMAX(unsigned)
NB_EMU_MINMAX(long)
NB_EMU_MINMAX(unsigned long)
NB_EMU_MINMAX(long long)
NB_EMU_MINMAX(unsigned long long)
NB_EMU_MINMAX(float)
NB_EMU_MINMAX(double)
#undef NB_EMU_MINMAX

/* ---- runtime API ------------------------------------------------------------- */
typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevice = 101,
    cudaErrorNoDevice = 100,
} cudaError_t;

typedef enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
} cudaMemcpyKind;

typedef enum cudaFuncAttribute {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
} cudaFuncAttribute;

typedef struct nb_emu_stream *cudaStream_t;
typedef struct nb_emu_event *cudaEvent_t;
#define cudaStreamDefault 0x0
#define cudaStreamNonBlocking 0x1
#define cudaEventDefault 0x0
#define cudaEventDisableTiming 0x2
#define cudaHostAllocDefault 0x0
#define cudaHostAllocPortable 0x1

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    size_t sharedMemPerBlockOptin;
    int multiProcessorCount;
    int major, minor;
    int maxThreadsPerBlock;
    int warpSize;
    int clockRate; /* kHz */
};

cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorString(cudaError_t e);

cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaMallocAsync(void **p, size_t bytes, cudaStream_t s);
cudaError_t cudaFree(void *p);
cudaError_t cudaFreeAsync(void *p, cudaStream_t s);
cudaError_t cudaMallocHost(void **p, size_t bytes);
cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned flags);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind k);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind k, cudaStream_t s);
cudaError_t cudaMemset(void *dst, int v, size_t n);
cudaError_t cudaMemsetAsync(void *dst, int v, size_t n, cudaStream_t s);

cudaError_t cudaStreamCreate(cudaStream_t *s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0);
cudaError_t cudaEventCreate(cudaEvent_t *e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b);
cudaError_t cudaEventDestroy(cudaEvent_t e);

namespace nb_emu {
cudaError_t func_set_smem(const void *fn, int bytes);
}
template <class F> static inline cudaError_t cudaFuncSetAttribute(F *fn, cudaFuncAttribute attr, int value)
{
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize)
        return cudaErrorInvalidValue;
    return nb_emu::func_set_smem((const void *)fn, value);
}

/* ---- kernel launch ------------------------------------------------------- */
namespace nb_emu {
/* Runs body(ctx) as every thread of grid x block, block after block. An
 * invalid configuration sets the error cudaGetLastError reports, and runs
 * nothing, as on a device. */
void run_grid(const void *fn, dim3 grid, dim3 block, size_t smem, void (*body)(void *), void *ctx);

template <class... P> struct launcher {
    void (*fn)(P...);
    dim3 grid, block;
    size_t smem;
    template <class... A> void operator()(A &&...a) const
    {
        struct call {
            void (*fn)(P...);
            std::tuple<P...> args;
        } c{ fn, std::tuple<P...>(std::forward<A>(a)...) };
        run_grid((const void *)fn, grid, block, smem,
                 [](void *p) {
                     call *cp = (call *)p;
                     std::apply(cp->fn, cp->args); /* each thread gets its own copies */
                 },
                 &c);
    }
};
template <class... P>
static inline launcher<P...> launch(void (*fn)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s)
{
    (void)s;
    return launcher<P...>{ fn, grid, block, smem };
}
} // namespace nb_emu

/* ---- cuBLAS ------------------------------------------------------------------ */
typedef enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
} cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 } cublasOperation_t;
typedef enum { CUBLAS_ATOMICS_NOT_ALLOWED = 0, CUBLAS_ATOMICS_ALLOWED = 1 } cublasAtomicsMode_t;
typedef enum {
    CUBLAS_DEFAULT_MATH = 0,
    CUBLAS_TF32_TENSOR_OP_MATH = 3,
    CUBLAS_PEDANTIC_MATH = 2,
} cublasMath_t;
typedef struct nb_emu_blas *cublasHandle_t;
typedef enum { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14 } cudaDataType_t;
typedef enum {
    CUBLAS_COMPUTE_32F = 68,
    CUBLAS_COMPUTE_32F_FAST_16F = 74,
    CUBLAS_COMPUTE_32F_FAST_16BF = 75,
    CUBLAS_COMPUTE_32F_FAST_TF32 = 77,
} cublasComputeType_t;
typedef enum { CUBLAS_GEMM_DEFAULT = -1 } cublasGemmAlgo_t;

cublasStatus_t cublasCreate(cublasHandle_t *h);
cublasStatus_t cublasDestroy(cublasHandle_t h);
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s);
cublasStatus_t cublasSetAtomicsMode(cublasHandle_t h, cublasAtomicsMode_t m);
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m);
const char *cublasGetStatusString(cublasStatus_t s);
/* Column-major, as cuBLAS: C = alpha op(A) op(B) + beta C, op(A) m x k. */
cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *B, int ldb,
                           const float *beta, float *C, int ldc);
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                         int m, int n, int k, const float *alpha,
                                         const float *A, int lda, long long sa,
                                         const float *B, int ldb, long long sb,
                                         const float *beta, float *C, int ldc, long long sc, int batch);

/* fp32 matrices only; CUBLAS_COMPUTE_32F_FAST_16BF rounds both inputs to
 * bf16 (nearest even) and accumulates in fp32, FAST_TF32 rounds them to tf32
 * (10-bit mantissa), as the tensor cores see them. */
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                          int m, int n, int k, const void *alpha,
                                          const void *A, cudaDataType_t at, int lda, long long sa,
                                          const void *B, cudaDataType_t bt, int ldb, long long sb,
                                          const void *beta, void *C, cudaDataType_t ct, int ldc, long long sc,
                                          int batch, cublasComputeType_t compute, cublasGemmAlgo_t algo);

#endif /* NB_CUDA_EMU_H */
