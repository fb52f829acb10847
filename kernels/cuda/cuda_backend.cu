/*
 * cuda_backend.cu - the CUDA backend: device memory, stream-ordered copies and
 * dense linear algebra through cuBLAS on one stream per backend.
 *
 * The table's other ops come from the op files (cuda_ops_*.cu, cuda_codec.cu)
 * through their registration functions (cuda_common.cuh); an op no file
 * registers reports unsupported through nb_be_supports(). Built by nvcc when it
 * is found, and always as the host emulation (cuda_common.cuh);
 * nb_cuda_backend_new() returns NULL with a reason on a machine without a
 * usable device.
 */
#include "kernels/cuda/cuda_common.cuh"

typedef nb_cuda_ctx cuda_ctx;
static cuda_ctx *ctx_of(nb_backend_t *be) { return nb_cuda_ctx_of(be); }

void *nb_cuda_scratch(nb_backend_t *be, size_t bytes)
{
    cuda_ctx *c = ctx_of(be);
    if (bytes <= c->scratch_bytes)
        return c->scratch;
    if (c->scratch)
        NB_CUDA_CHECK(cudaFreeAsync(c->scratch, c->stream));
    size_t want = bytes < ((size_t)1 << 20) ? ((size_t)1 << 20) : bytes;
    c->scratch = NULL;
    c->scratch_bytes = 0;
    NB_CUDA_CHECK(cudaMallocAsync(&c->scratch, want, c->stream));
    c->scratch_bytes = want;
    return c->scratch;
}

static void *cu_alloc(nb_backend_t *be, size_t bytes)
{
    void *p = NULL;
    if (cudaMallocAsync(&p, bytes ? bytes : 1, ctx_of(be)->stream) != cudaSuccess)
        return NULL;
    return p;
}

static void cu_dealloc(nb_backend_t *be, void *p)
{
    if (p)
        NB_CUDA_CHECK(cudaFreeAsync(p, ctx_of(be)->stream));
}

static void cu_memset0(nb_backend_t *be, void *d, size_t n)
{
    NB_CUDA_CHECK(cudaMemsetAsync(d, 0, n, ctx_of(be)->stream));
}

static void cu_h2d(nb_backend_t *be, void *d, const void *s, size_t n)
{
    NB_CUDA_CHECK(cudaMemcpyAsync(d, s, n, cudaMemcpyHostToDevice, ctx_of(be)->stream));
}

static void cu_d2h(nb_backend_t *be, void *d, const void *s, size_t n)
{
    NB_CUDA_CHECK(cudaMemcpyAsync(d, s, n, cudaMemcpyDeviceToHost, ctx_of(be)->stream));
    NB_CUDA_CHECK(cudaStreamSynchronize(ctx_of(be)->stream));
}

static void cu_d2d(nb_backend_t *be, void *d, const void *s, size_t n)
{
    NB_CUDA_CHECK(cudaMemcpyAsync(d, s, n, cudaMemcpyDeviceToDevice, ctx_of(be)->stream));
}

static void cu_sync(nb_backend_t *be) { NB_CUDA_CHECK(cudaStreamSynchronize(ctx_of(be)->stream)); }

/* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, so the
 * operands swap and cuBLAS sees n x m. bf16: fp32 in and out, the inputs
 * rounded to bf16 for the tensor cores, fp32 accumulation. */
static void cu_matmul(nb_backend_t *be, bool ta, bool tb, int m, int n, int k, float alpha,
                      const float *a, int lda, int64_t sa, const float *b, int ldb, int64_t sb,
                      float beta, float *c, int ldc, int64_t sc, int batch)
{
    cuda_ctx *cx = ctx_of(be);
    cublasOperation_t opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (cx->precision == NB_PREC_BF16) {
        NB_CUBLAS_CHECK(cublasGemmStridedBatchedEx(cx->blas, opb, opa, n, m, k, &alpha,
                                                   b, CUDA_R_32F, ldb, sb, a, CUDA_R_32F, lda, sa,
                                                   &beta, c, CUDA_R_32F, ldc, sc, batch,
                                                   CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT));
        return;
    }
    NB_CUBLAS_CHECK(cublasSgemmStridedBatched(cx->blas, opb, opa, n, m, k, &alpha, b, ldb, sb, a, lda, sa,
                                              &beta, c, ldc, sc, batch));
}

static int cu_set_precision(nb_backend_t *be, nb_precision_t p)
{
    if (p != NB_PREC_FP32 && p != NB_PREC_BF16)
        return NB_EINVAL;
    ctx_of(be)->precision = p;
    return 0;
}

__global__ static void axpy_kernel(float *y, const float *x, float alpha, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] += alpha * x[i];
}

__global__ static void scale_kernel(float *y, float alpha, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] *= alpha;
}

static unsigned blocks_for(size_t n) { return nb_cuda_blocks(n, 256); }

static void cu_add(nb_backend_t *be, float *y, const float *x, float alpha, size_t n)
{
    if (n == 0)
        return;
    NB_LAUNCH(axpy_kernel, blocks_for(n), 256, 0, ctx_of(be)->stream)(y, x, alpha, n);
    NB_CUDA_LAUNCHED();
}

static void cu_scale(nb_backend_t *be, float *y, float alpha, size_t n)
{
    if (n == 0)
        return;
    NB_LAUNCH(scale_kernel, blocks_for(n), 256, 0, ctx_of(be)->stream)(y, alpha, n);
    NB_CUDA_LAUNCHED();
}

static void cu_free(nb_backend_t *be)
{
    cuda_ctx *c = ctx_of(be);
    cudaStreamSynchronize(c->stream);
    if (c->scratch)
        cudaFree(c->scratch);
    if (c->host_result)
        cudaFreeHost(c->host_result);
    cublasDestroy(c->blas);
    cudaStreamDestroy(c->stream);
    free(c);
    free(be);
}

static nb_backend_i make_iface(void)
{
    nb_backend_i i = {};
    i.name = "cuda";
    i.kind = NB_DEV_CUDA;
    i.free = cu_free;
    i.alloc = cu_alloc;
    i.dealloc = cu_dealloc;
    i.memset0 = cu_memset0;
    i.copy_h2d = cu_h2d;
    i.copy_d2h = cu_d2h;
    i.copy_d2d = cu_d2d;
    i.sync = cu_sync;
    i.matmul = cu_matmul;
    i.set_precision = cu_set_precision;
    i.add = cu_add;
    i.scale = cu_scale;
    nb_cuda_register_elementwise(&i);
    nb_cuda_register_embed(&i);
    nb_cuda_register_norm(&i);
    nb_cuda_register_xent(&i);
    nb_cuda_register_attention(&i);
    nb_cuda_register_codec(&i);
    return i;
}

static const nb_backend_i cuda_iface = make_iface();

extern "C" nb_backend_t *nb_cuda_backend_new(int device, const char **why)
{
    static char msg[256];
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || device < 0 || device >= count) {
        snprintf(msg, sizeof msg, "no CUDA device %d (%s)", device,
                 e != cudaSuccess ? cudaGetErrorString(e) : "index out of range");
        if (why)
            *why = msg;
        return NULL;
    }
    cuda_ctx *c = (cuda_ctx *)calloc(1, sizeof *c);
    nb_backend_t *be = (nb_backend_t *)calloc(1, sizeof *be);
    if (!c || !be || cudaSetDevice(device) != cudaSuccess ||
        cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking) != cudaSuccess) {
        free(c);
        free(be);
        if (why)
            *why = "cannot create a CUDA stream";
        return NULL;
    }
    if (cublasCreate(&c->blas) != CUBLAS_STATUS_SUCCESS) {
        cudaStreamDestroy(c->stream);
        free(c);
        free(be);
        if (why)
            *why = "cannot create a cuBLAS handle";
        return NULL;
    }
    NB_CUBLAS_CHECK(cublasSetStream(c->blas, c->stream));
    /* Bit-reproducible matmuls: no split-K with atomics (cuBLAS's
     * CUBLAS_ATOMICS_NOT_ALLOWED is the default; state it). */
    NB_CUBLAS_CHECK(cublasSetAtomicsMode(c->blas, CUBLAS_ATOMICS_NOT_ALLOWED));
    if (cudaMallocHost((void **)&c->host_result, sizeof(double)) != cudaSuccess) {
        cublasDestroy(c->blas);
        cudaStreamDestroy(c->stream);
        free(c);
        free(be);
        if (why)
            *why = "cannot allocate pinned host memory";
        return NULL;
    }
    c->device = device;
    be->iface = &cuda_iface;
    be->ctx = c;
    return be;
}
