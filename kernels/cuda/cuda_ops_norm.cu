/*
 * cuda_ops_norm.cu - the CUDA backend's LayerNorm forward and backward, the sum of squares.
 *
 * Same arithmetic as kernels/cpu/cpu_ops_layernorm.c and nb_cpu_sumsq, in
 * another summation order (docs/cuda.md states the tolerances). Every
 * reduction has a fixed order that depends only on the shapes, never on
 * timing: no atomics, so a result is bit-identical run to run.
 *  - layernorm_fwd: one warp per row (four rows per 128-thread block); the
 *    row's mean, then its variance around the mean (two passes, as the CPU).
 *  - layernorm_bwd: one warp per row for dx; dw and db by a second kernel
 *    over (column, chunk of rows) that writes per-chunk partial sums into the
 *    backend's scratch, and a third that adds the chunks in order 0..n-1.
 *  - sumsq: a grid of blocks each summing a strided share in double into
 *    scratch, one block adding those partials in order, then a copy to the
 *    pinned host result and a stream synchronisation (the op is synchronous).
 */
#include "kernels/cuda/cuda_common.cuh"

/* ---- LayerNorm forward ---------------------------------------------------- */

enum { LN_WARPS = 4, LN_THREADS = LN_WARPS * 32 };

/* out (N,C), mean and rstd (N, either may be NULL) from x (N,C), w, b (C). */
__global__ static void ln_fwd_kernel(float *out, float *mean, float *rstd, const float *x,
                                     const float *w, const float *b, float eps, int N, int C)
{
    int lane = threadIdx.x & 31;
    int row = blockIdx.x * LN_WARPS + (threadIdx.x >> 5);
    if (row >= N) /* the whole warp leaves together */
        return;
    const float *xr = x + (size_t)row * C;
    float *o = out + (size_t)row * C;
    float s = 0.0f;
    for (int c = lane; c < C; c += 32)
        s += xr[c];
    float m = nb_warp_sum(s) / (float)C;
    float v = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float d = xr[c] - m;
        v += d * d;
    }
    float rs = 1.0f / sqrtf(nb_warp_sum(v) / (float)C + eps);
    for (int c = lane; c < C; c += 32)
        o[c] = (xr[c] - m) * rs * w[c] + b[c];
    if (lane == 0) {
        if (mean)
            mean[row] = m;
        if (rstd)
            rstd[row] = rs;
    }
}

static void cu_layernorm_fwd(nb_backend_t *be, float *out, float *mean, float *rstd,
                             const float *x, const float *w, const float *b, float eps, int N, int C)
{
    NB_CHECK(N >= 0 && C > 0 && eps > 0.0f);
    if (N == 0)
        return;
    NB_LAUNCH(ln_fwd_kernel, nb_cuda_blocks((size_t)N, LN_WARPS), LN_THREADS, 0,
              nb_cuda_stream(be))(out, mean, rstd, x, w, b, eps, N, C);
    NB_CUDA_LAUNCHED();
}

/* ---- LayerNorm backward ---------------------------------------------------- */

/* dx (N,C) += rstd * (dnorm - mean(dnorm) - xhat * mean(dnorm * xhat)),
 * dnorm = dout * w; one warp per row. */
__global__ static void ln_bwd_dx_kernel(float *dx, const float *dout, const float *x,
                                        const float *w, const float *mean, const float *rstd,
                                        int N, int C)
{
    int lane = threadIdx.x & 31;
    int row = blockIdx.x * LN_WARPS + (threadIdx.x >> 5);
    if (row >= N)
        return;
    size_t off = (size_t)row * C;
    const float *xr = x + off, *g = dout + off;
    float *dxr = dx + off;
    float m = mean[row], rs = rstd[row];
    float s1 = 0.0f, s2 = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float xh = (xr[c] - m) * rs;
        float dn = g[c] * w[c];
        s1 += dn;
        s2 += dn * xh;
    }
    float mdn = nb_warp_sum(s1) / (float)C, mdnx = nb_warp_sum(s2) / (float)C;
    for (int c = lane; c < C; c += 32) {
        float xh = (xr[c] - m) * rs;
        float dn = g[c] * w[c];
        dxr[c] += (dn - mdn - xh * mdnx) * rs;
    }
}

enum { LN_COL_THREADS = 128, LN_CHUNK_MIN_ROWS = 32, LN_MAX_CHUNKS = 1024 };

/* Rows per chunk of the parameter-gradient reduction: a function of N only,
 * so the summation order (and the bits) never depend on the device. */
static int ln_chunk_rows(int N)
{
    int rows = (N + LN_MAX_CHUNKS - 1) / LN_MAX_CHUNKS;
    return rows < LN_CHUNK_MIN_ROWS ? LN_CHUNK_MIN_ROWS : rows;
}

/* Block (column tile blockIdx.x, chunk blockIdx.y): one thread per column
 * sums its chunk's rows in order into pw[chunk][c] (dout * xhat) and
 * pb[chunk][c] (dout). */
__global__ static void ln_bwd_partial_kernel(float *pw, float *pb, const float *dout,
                                             const float *x, const float *mean,
                                             const float *rstd, int N, int C, int chunk_rows)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    int r0 = blockIdx.y * chunk_rows;
    int r1 = r0 + chunk_rows < N ? r0 + chunk_rows : N;
    float sw = 0.0f, sb = 0.0f;
    for (int r = r0; r < r1; r++) {
        size_t i = (size_t)r * C + c;
        float g = dout[i];
        float xh = (x[i] - mean[r]) * rstd[r];
        sw += g * xh;
        sb += g;
    }
    pw[(size_t)blockIdx.y * C + c] = sw;
    pb[(size_t)blockIdx.y * C + c] = sb;
}

/* dw[c] += sum of pw[0..chunks-1][c], db likewise, in chunk order; either
 * output may be NULL. */
__global__ static void ln_bwd_final_kernel(float *dw, float *db, const float *pw,
                                           const float *pb, int chunks, int C)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    float sw = 0.0f, sb = 0.0f;
    for (int k = 0; k < chunks; k++) {
        sw += pw[(size_t)k * C + c];
        sb += pb[(size_t)k * C + c];
    }
    if (dw)
        dw[c] += sw;
    if (db)
        db[c] += sb;
}

static void cu_layernorm_bwd(nb_backend_t *be, float *dx, float *dw, float *db,
                             const float *dout, const float *x, const float *w,
                             const float *mean, const float *rstd, int N, int C)
{
    NB_CHECK(N >= 0 && C > 0);
    if (N == 0)
        return;
    cudaStream_t st = nb_cuda_stream(be);
    NB_LAUNCH(ln_bwd_dx_kernel, nb_cuda_blocks((size_t)N, LN_WARPS), LN_THREADS, 0,
              st)(dx, dout, x, w, mean, rstd, N, C);
    NB_CUDA_LAUNCHED();
    if (!dw && !db)
        return;
    int rows = ln_chunk_rows(N);
    int chunks = (N + rows - 1) / rows;
    float *pw = (float *)nb_cuda_scratch(be, (size_t)2 * chunks * C * sizeof(float));
    float *pb = pw + (size_t)chunks * C;
    dim3 grid(nb_cuda_blocks((size_t)C, LN_COL_THREADS), (unsigned)chunks);
    NB_LAUNCH(ln_bwd_partial_kernel, grid, LN_COL_THREADS, 0, st)(pw, pb, dout, x, mean, rstd,
                                                                  N, C, rows);
    NB_CUDA_LAUNCHED();
    NB_LAUNCH(ln_bwd_final_kernel, nb_cuda_blocks((size_t)C, LN_COL_THREADS), LN_COL_THREADS,
              0, st)(dw, db, pw, pb, chunks, C);
    NB_CUDA_LAUNCHED();
}

/* ---- sum of squares ---------------------------------------------------------- */

enum { SQ_THREADS = 256, SQ_PER_THREAD = 8, SQ_MAX_BLOCKS = 1024 };

/* Sum over the block in double; every thread gets the result. */
__device__ __forceinline__ double sq_block_sum(double v, double *shared32)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = nb_warp_sum_d(v);
    __syncthreads();
    if (lane == 0)
        shared32[warp] = v;
    __syncthreads();
    v = lane < nwarps ? shared32[lane] : 0.0;
    return nb_warp_sum_d(v);
}

/* partial[blockIdx.x] = sum of x[i]^2 over i = blockIdx.x * blockDim.x +
 * threadIdx.x + k * gridDim.x * blockDim.x, in double. */
__global__ static void sumsq_partial_kernel(double *partial, const float *x, size_t n)
{
    __shared__ double red[32];
    double s = 0.0;
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        double v = (double)x[i];
        s += v * v;
    }
    s = sq_block_sum(s, red);
    if (threadIdx.x == 0)
        partial[blockIdx.x] = s;
}

/* *result = sum of partial[0..count-1], one block, fixed order. */
__global__ static void sumsq_final_kernel(double *result, const double *partial, int count)
{
    __shared__ double red[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x)
        s += partial[i];
    s = sq_block_sum(s, red);
    if (threadIdx.x == 0)
        *result = s;
}

static void cu_sumsq(nb_backend_t *be, double *out_host, const float *x, size_t n)
{
    if (n == 0) {
        *out_host = 0.0;
        return;
    }
    nb_cuda_ctx *c = nb_cuda_ctx_of(be);
    unsigned blocks = nb_cuda_blocks(n, SQ_THREADS * SQ_PER_THREAD);
    if (blocks > SQ_MAX_BLOCKS)
        blocks = SQ_MAX_BLOCKS;
    double *partial = (double *)nb_cuda_scratch(be, (blocks + 1) * sizeof(double));
    double *result = partial + blocks;
    NB_LAUNCH(sumsq_partial_kernel, blocks, SQ_THREADS, 0, c->stream)(partial, x, n);
    NB_CUDA_LAUNCHED();
    NB_LAUNCH(sumsq_final_kernel, 1, SQ_THREADS, 0, c->stream)(result, partial, (int)blocks);
    NB_CUDA_LAUNCHED();
    NB_CUDA_CHECK(cudaMemcpyAsync(c->host_result, result, sizeof(double),
                                  cudaMemcpyDeviceToHost, c->stream));
    NB_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    *out_host = *c->host_result;
}

void nb_cuda_register_norm(nb_backend_i *i)
{
    i->layernorm_fwd = cu_layernorm_fwd;
    i->layernorm_bwd = cu_layernorm_bwd;
    i->sumsq = cu_sumsq;
}
