/*
 * cuda_ops_elementwise.cu - the CUDA backend's gelu (tanh and erf forms), bias add and gradient, AdamW.
 *
 * Specification: kernels/cpu/cpu_ops_gelu.c, cpu_ops_bias.c, cpu_ops_optim.c.
 *
 * Bit equality with the CPU backend. The CPU backend is compiled with
 * -ffp-contract=off; nvcc would otherwise fuse a*b+c into one FMA, whose
 * single rounding gives other bits. The arithmetic of the tanh GELU and of
 * AdamW is therefore spelt with the round-to-nearest intrinsics (__fmul_rn,
 * __fadd_rn, ..., never fused), in the CPU's order, and the tanh GELU uses
 * the CPU's own exp polynomial (cpu_vec.h nb_v_exp) instead of the device's
 * expf. Those two and bias_add give the CPU's bits. The erf GELU calls the
 * device's erff/expf (a few ulp from glibc's) and bias_grad sums in another
 * association (two passes), so both are within a stated tolerance of the CPU
 * (docs/cuda.md). Every op gives the same bits on every run.
 *
 * Launch shapes: one thread per element, 256 threads a block, for gelu and
 * adamw. bias_add: grid.x covers the columns (up to 256 threads a block),
 * grid.y = min(rows, 4096) blocks stride over the rows. bias_grad: pass 1, blocks of 32 columns x 8 row lanes
 * over chunks of BG_CHUNK rows (grid.x chunks, grid.y column groups), each
 * chunk's column sums into scratch; pass 2, one thread per column adds the
 * chunk partials in chunk order to dbias. One chunk: pass 1 adds into dbias
 * directly. The chunk size is a constant, so the bits do not depend on the
 * device. No atomics anywhere.
 */
#include "kernels/cuda/cuda_common.cuh"
#include <math.h>

/* IEEE operations that the compiler may not contract into an FMA. */
#ifdef NB_CUDA_EMU
#define EW_MUL(a, b) ((float)(a) * (float)(b))
#define EW_ADD(a, b) ((float)(a) + (float)(b))
#define EW_SUB(a, b) ((float)(a) - (float)(b))
#define EW_DIV(a, b) ((float)(a) / (float)(b))
#define EW_SQRT(a) sqrtf(a)
#else
#define EW_MUL(a, b) __fmul_rn((a), (b))
#define EW_ADD(a, b) __fadd_rn((a), (b))
#define EW_SUB(a, b) __fsub_rn((a), (b))
#define EW_DIV(a, b) __fdiv_rn((a), (b))
#define EW_SQRT(a) __fsqrt_rn(a)
#endif

#define EW_THREADS 256

#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_A 0.044715f
#define GELU_SQRT1_2 0.70710678118654752440f
#define GELU_INV_SQRT_2PI 0.39894228040143267794f

/* ---- GELU, tanh form ------------------------------------------------------- */

/* The CPU backend's nb_v_exp (cpu_vec.h), one lane, operation for operation:
 * clamp, n = round(x / ln2) by the 1.5*2^23 trick, Cody-Waite reduction, the
 * Cephes polynomial, 2^n as two normal factors; 0 below -87.3, +inf above
 * 88.7, NaN for NaN. */
__device__ __forceinline__ float ew_exp(float x)
{
    const float hi = 88.7f, lo = -87.3f, magic = 12582912.0f;
    float xc = x > lo ? x : lo;
    xc = xc < hi ? xc : hi;
    float t = EW_MUL(xc, 1.44269504088896341f);
    float n = EW_SUB(EW_ADD(t, magic), magic);
    float r = EW_SUB(xc, EW_MUL(n, 0.693145751953125f));
    r = EW_SUB(r, EW_MUL(n, 1.428606765330187045e-06f));
    float p = 1.9875691500e-4f;
    p = EW_ADD(EW_MUL(p, r), 1.3981999507e-3f);
    p = EW_ADD(EW_MUL(p, r), 8.3334519073e-3f);
    p = EW_ADD(EW_MUL(p, r), 4.1665795894e-2f);
    p = EW_ADD(EW_MUL(p, r), 1.6666665459e-1f);
    p = EW_ADD(EW_MUL(p, r), 5.0000001201e-1f);
    p = EW_ADD(EW_ADD(EW_MUL(p, EW_MUL(r, r)), r), 1.0f);
    int ni = (int)n;
    int n1 = ni >> 1, n2 = ni - n1;
    float s1 = __int_as_float((n1 + 127) << 23), s2 = __int_as_float((n2 + 127) << 23);
    float y = EW_MUL(EW_MUL(p, s1), s2);
    if (x < lo)
        y = 0.0f;
    if (x > hi)
        y = INFINITY;
    if (x != x)
        y = x;
    return y;
}

/* x * sigmoid(2u), u = k (x + a x^3), as the CPU's gelu_v. */
__device__ __forceinline__ float ew_gelu(float x)
{
    float u = EW_MUL(GELU_K, EW_ADD(x, EW_MUL(EW_MUL(EW_MUL(GELU_A, x), x), x)));
    return EW_DIV(x, EW_ADD(1.0f, ew_exp(EW_MUL(-2.0f, u))));
}

/* s + 2 x s (1 - s) k (1 + 3a x^2), s = sigmoid(2u), 1 - s = e s; as the
 * CPU's gelu_grad_v. */
__device__ __forceinline__ float ew_gelu_grad(float x)
{
    const float k2 = -2.0f * GELU_K, a3 = 3.0f * GELU_A; /* folded in float, as in C */
    float x2 = EW_MUL(x, x);
    float arg = EW_MUL(k2, EW_ADD(x, EW_MUL(EW_MUL(GELU_A, x2), x)));
    float e = ew_exp(arg < 80.0f ? arg : 80.0f);
    float s = EW_DIV(1.0f, EW_ADD(1.0f, e));
    float t = EW_MUL(EW_MUL(EW_MUL(2.0f, x), EW_MUL(s, EW_MUL(e, s))), GELU_K);
    return EW_ADD(s, EW_MUL(t, EW_ADD(1.0f, EW_MUL(a3, x2))));
}

__global__ static void gelu_fwd_kernel(float *out, const float *x, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        out[i] = ew_gelu(x[i]);
}

__global__ static void gelu_bwd_kernel(float *dx, const float *x, const float *dout, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        dx[i] = EW_ADD(dx[i], EW_MUL(ew_gelu_grad(x[i]), dout[i]));
}

/* ---- GELU, erf form ---------------------------------------------------------- */

__global__ static void gelu_erf_fwd_kernel(float *out, const float *x, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = x[i];
        out[i] = EW_MUL(EW_MUL(v, 0.5f), EW_ADD(1.0f, erff(EW_MUL(v, GELU_SQRT1_2))));
    }
}

/* d/dx = Phi(x) + x phi(x), as the CPU's. */
__global__ static void gelu_erf_bwd_kernel(float *dx, const float *x, const float *dout, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = x[i];
        float cdf = EW_MUL(0.5f, EW_ADD(1.0f, erff(EW_MUL(v, GELU_SQRT1_2))));
        float pdf = EW_MUL(expf(EW_MUL(EW_MUL(-0.5f, v), v)), GELU_INV_SQRT_2PI);
        dx[i] = EW_ADD(dx[i], EW_MUL(EW_ADD(cdf, EW_MUL(v, pdf)), dout[i]));
    }
}

static void cu_gelu_fwd(nb_backend_t *be, float *out, const float *x, size_t n)
{
    if (n == 0)
        return;
    NB_LAUNCH(gelu_fwd_kernel, nb_cuda_blocks(n, EW_THREADS), EW_THREADS, 0, nb_cuda_stream(be))(out, x, n);
    NB_CUDA_LAUNCHED();
}

static void cu_gelu_bwd(nb_backend_t *be, float *dx, const float *x, const float *dout, size_t n)
{
    if (n == 0)
        return;
    NB_LAUNCH(gelu_bwd_kernel, nb_cuda_blocks(n, EW_THREADS), EW_THREADS, 0, nb_cuda_stream(be))(dx, x, dout, n);
    NB_CUDA_LAUNCHED();
}

static void cu_gelu_erf_fwd(nb_backend_t *be, float *out, const float *x, size_t n)
{
    if (n == 0)
        return;
    NB_LAUNCH(gelu_erf_fwd_kernel, nb_cuda_blocks(n, EW_THREADS), EW_THREADS, 0, nb_cuda_stream(be))(out, x, n);
    NB_CUDA_LAUNCHED();
}

static void cu_gelu_erf_bwd(nb_backend_t *be, float *dx, const float *x, const float *dout, size_t n)
{
    if (n == 0)
        return;
    NB_LAUNCH(gelu_erf_bwd_kernel, nb_cuda_blocks(n, EW_THREADS), EW_THREADS, 0, nb_cuda_stream(be))(dx, x, dout, n);
    NB_CUDA_LAUNCHED();
}

/* ---- bias -------------------------------------------------------------------- */

/* Block (column group blockIdx.x, rows blockIdx.y, blockIdx.y + gridDim.y,
 * ...): the bias value is loaded once, no division per element. */
__global__ static void bias_add_kernel(float *y, const float *bias, int rows, int cols)
{
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= cols)
        return;
    float b = bias[col];
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        float *p = y + (size_t)r * cols + col;
        *p = EW_ADD(*p, b);
    }
}

static void cu_bias_add(nb_backend_t *be, float *y, const float *bias, int rows, int cols)
{
    NB_CHECK(rows >= 0 && cols >= 0);
    if (rows == 0 || cols == 0)
        return;
    unsigned threads = cols >= EW_THREADS ? EW_THREADS : (unsigned)(cols + 31) / 32 * 32;
    unsigned groups = nb_cuda_blocks((size_t)cols, threads);
    NB_CHECK(groups <= 65535);
    /* enough blocks to fill the device, each row visited once */
    unsigned per_col = (unsigned)(rows < 4096 ? rows : 4096);
    dim3 grid(groups, per_col);
    NB_LAUNCH(bias_add_kernel, grid, threads, 0, nb_cuda_stream(be))(y, bias, rows, cols);
    NB_CUDA_LAUNCHED();
}

/* Rows per chunk of pass 1 and the block shape: 32 columns (one warp, so a
 * row's loads are coalesced) times BG_LANES row lanes. */
#define BG_CHUNK 256
#define BG_COLS 32
#define BG_LANES 8

/* Pass 1: block (chunk = blockIdx.x, column group = blockIdx.y). Row lane l
 * sums rows l, l + 8, ... of the chunk in order; lane sums are added in lane
 * order. direct: add the sum to out[col] (one chunk); otherwise write it to
 * out[chunk * cols + col]. */
__global__ static void bias_grad_partial_kernel(float *out, const float *dy, int rows, int cols, int direct)
{
    __shared__ float part[BG_LANES][BG_COLS];
    int cx = threadIdx.x % BG_COLS, lane = threadIdx.x / BG_COLS;
    int col = blockIdx.y * BG_COLS + cx;
    int r0 = blockIdx.x * BG_CHUNK;
    int r1 = r0 + BG_CHUNK < rows ? r0 + BG_CHUNK : rows;
    float acc = 0.0f;
    if (col < cols)
        for (int r = r0 + lane; r < r1; r += BG_LANES)
            acc += dy[(size_t)r * cols + col];
    part[lane][cx] = acc;
    __syncthreads();
    if (lane == 0 && col < cols) {
        float s = part[0][cx];
        for (int l = 1; l < BG_LANES; l++)
            s += part[l][cx];
        if (direct)
            out[col] += s;
        else
            out[(size_t)blockIdx.x * cols + col] = s;
    }
}

/* Pass 2: dbias[col] += partials of chunks 0..nchunks-1, in that order. */
__global__ static void bias_grad_final_kernel(float *dbias, const float *partial, int nchunks, int cols)
{
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= cols)
        return;
    float s = 0.0f;
    for (int k = 0; k < nchunks; k++)
        s += partial[(size_t)k * cols + col];
    dbias[col] += s;
}

static void cu_bias_grad(nb_backend_t *be, float *dbias, const float *dy, int rows, int cols)
{
    NB_CHECK(rows >= 0 && cols >= 0);
    if (rows == 0 || cols == 0)
        return;
    unsigned groups = nb_cuda_blocks((size_t)cols, BG_COLS);
    NB_CHECK(groups <= 65535);
    unsigned nchunks = nb_cuda_blocks((size_t)rows, BG_CHUNK);
    cudaStream_t st = nb_cuda_stream(be);
    dim3 grid(nchunks, groups);
    if (nchunks == 1) {
        NB_LAUNCH(bias_grad_partial_kernel, grid, BG_COLS * BG_LANES, 0, st)(dbias, dy, rows, cols, 1);
        NB_CUDA_LAUNCHED();
        return;
    }
    float *partial = (float *)nb_cuda_scratch(be, (size_t)nchunks * cols * sizeof(float));
    NB_LAUNCH(bias_grad_partial_kernel, grid, BG_COLS * BG_LANES, 0, st)(partial, dy, rows, cols, 0);
    NB_CUDA_LAUNCHED();
    NB_LAUNCH(bias_grad_final_kernel, nb_cuda_blocks((size_t)cols, EW_THREADS), EW_THREADS, 0, st)(
        dbias, partial, (int)nchunks, cols);
    NB_CUDA_LAUNCHED();
}

/* ---- AdamW ------------------------------------------------------------------- */

/* x^n by squaring, as the CPU's pow_int: the same double scalars. */
static double pow_int(double x, int n)
{
    double r = 1.0;
    for (; n > 0; n >>= 1, x *= x)
        if (n & 1)
            r *= x;
    return r;
}

/* torch.optim.AdamW's element update, in the CPU's order and roundings. */
__global__ static void adamw_kernel(float *param, const float *grad, float *m, float *v, size_t n,
                                    float beta2, float eps, float grad_scale, float step_size,
                                    float bc2_sqrt, float decay, float w1, float w2)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    float g = EW_MUL(grad[i], grad_scale);
    float p = EW_MUL(param[i], decay);
    float m0 = m[i], v0 = v[i];
    float mi = EW_ADD(m0, EW_MUL(w1, EW_SUB(g, m0)));
    float vi = EW_ADD(EW_MUL(v0, beta2), EW_MUL(EW_MUL(w2, g), g));
    float denom = EW_ADD(EW_DIV(EW_SQRT(vi), bc2_sqrt), eps);
    param[i] = EW_SUB(p, EW_MUL(step_size, EW_DIV(mi, denom)));
    m[i] = mi;
    v[i] = vi;
}

static void cu_adamw(nb_backend_t *be, float *param, const float *grad, float *m, float *v,
                     size_t n, float lr, float beta1, float beta2, float eps,
                     float weight_decay, float grad_scale, int step)
{
    NB_CHECK(step >= 1);
    if (n == 0)
        return;
    /* the scalars in double on the host, exactly as the CPU backend */
    double bc1 = 1.0 - pow_int((double)beta1, step);
    double bc2 = 1.0 - pow_int((double)beta2, step);
    float step_size = (float)((double)lr / bc1);
    float bc2_sqrt = (float)sqrt(bc2);
    float decay = (float)(1.0 - (double)lr * (double)weight_decay);
    float w1 = (float)(1.0 - (double)beta1), w2 = (float)(1.0 - (double)beta2);
    NB_LAUNCH(adamw_kernel, nb_cuda_blocks(n, EW_THREADS), EW_THREADS, 0, nb_cuda_stream(be))(
        param, grad, m, v, n, beta2, eps, grad_scale, step_size, bc2_sqrt, decay, w1, w2);
    NB_CUDA_LAUNCHED();
}

void nb_cuda_register_elementwise(nb_backend_i *i)
{
    i->gelu_fwd = cu_gelu_fwd;
    i->gelu_bwd = cu_gelu_bwd;
    i->gelu_erf_fwd = cu_gelu_erf_fwd;
    i->gelu_erf_bwd = cu_gelu_erf_bwd;
    i->bias_add = cu_bias_add;
    i->bias_grad = cu_bias_grad;
    i->adamw = cu_adamw;
}
