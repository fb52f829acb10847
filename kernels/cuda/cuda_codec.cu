/*
 * cuda_codec.cu - the codec primitives on the device (kernels/codec/codec_ops.h):
 * fp32 <-> fp16 (power-of-two scale per 4096-element block) and bf16,
 * blockwise absmax int8 / int4 quantisation (nearest even or stochastic
 * rounding), top-k by magnitude and its inverse scatter.
 *
 * The CPU backend (kernels/cpu/cpu_codec*.c, cpu_codec_scalar.h) is the
 * specification, and the encoded bytes are bit-identical to its bytes for the
 * same input: a stage on a GPU and a stage on a CPU read each other's
 * messages. To get there:
 *  - conversions are integer bit arithmetic copied from cpu_codec_scalar.h;
 *  - a block's max |x| is the unsigned max of the magnitude bits (NaN bits
 *    order above inf, so a NaN in the block is seen exactly as on the CPU);
 *  - the stochastic-rounding product x * inv is rounded on its own before
 *    the offset is added (no fused multiply-add, as on every CPU path);
 *  - a multiplication whose result is NaN returns the NaN an x86 CPU
 *    returns (the NaN operand made quiet, else the default NaN), where a GPU
 *    would return its canonical NaN;
 *  - top-k is a radix select on the magnitude bits (8 digits of 4 bits,
 *    histograms counted per block and summed in a fixed order, the digit
 *    chosen on the device) followed by an ordered compaction: the same
 *    threshold and the same ties-to-the-lower-index rule as the CPU.
 * No atomics anywhere; all results are bit-identical run to run. All work is
 * stream ordered on the backend's stream, without host synchronisation.
 * Kernel design and figures: docs/cuda.md, "Codecs on the device".
 */
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/codec/codec_ops.h"

#define CODEC_THREADS 256
/* Elements per tile of the top-k compaction: CODEC_THREADS x TOPK_ITEMS. */
#define TOPK_ITEMS 16
#define TOPK_TILE (CODEC_THREADS * TOPK_ITEMS)
/* Digits of the radix select: 8 passes of 4 bits over the 31 magnitude bits. */
#define TOPK_DIGIT_BITS 4
#define TOPK_BINS 16
#define TOPK_PASSES 8
/* Blocks of the histogram passes (each thread walks a grid stride). */
#define TOPK_HIST_BLOCKS_MAX 1024

/* ---- scalar definitions (device copies of kernels/cpu/cpu_codec_scalar.h) -- */

__device__ __forceinline__ uint32_t f32_bits(float x) { return __float_as_uint(x); }
__device__ __forceinline__ float bits_f32(uint32_t u) { return __uint_as_float(u); }

/* a * b with the NaN an x86 CPU gives: a NaN operand made quiet (the first
 * one when both are), else the default NaN (sign set) for inf * 0. */
__device__ __forceinline__ float mul_as_cpu(float a, float b)
{
    float p = a * b;
    if (p != p) {
        uint32_t ua = f32_bits(a), ub = f32_bits(b);
        if ((ua & 0x7fffffffU) > 0x7f800000U)
            return bits_f32(ua | 0x00400000U);
        if ((ub & 0x7fffffffU) > 0x7f800000U)
            return bits_f32(ub | 0x00400000U);
        return bits_f32(0xffc00000U);
    }
    return p;
}

/* a * b rounded to fp32 on its own, never fused with a following add. */
__device__ __forceinline__ float mul_rn(float a, float b)
{
#ifdef NB_CUDA_EMU
    volatile float p = a * b;
    return p;
#else
    return __fmul_rn(a, b);
#endif
}

__device__ __forceinline__ uint16_t f16_from_f32(float x)
{
    uint32_t u = f32_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffU;
    if (a >= 0x7f800000U)
        return sign | (a > 0x7f800000U ? (uint16_t)(0x7e00 | ((a >> 13) & 0x3ff)) : 0x7c00);
    if (a >= 0x477ff000U)
        return sign | 0x7c00;
    if (a < 0x38800000U) {
        if (a < 0x33000000U)
            return sign;
        uint32_t e = a >> 23;
        uint32_t m = (a & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e;
        uint32_t h = m >> shift;
        uint32_t rem = m & ((1U << shift) - 1);
        uint32_t half = 1U << (shift - 1);
        if (rem > half || (rem == half && (h & 1)))
            h++;
        return sign | (uint16_t)h;
    }
    uint32_t h = (a - 0x38000000U) >> 13;
    uint32_t rem = a & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
        h++;
    return sign | (uint16_t)h;
}

__device__ __forceinline__ float f32_from_f16(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0x1f)
        return bits_f32(sign | 0x7f800000U | (m << 13));
    if (e == 0) {
        if (m == 0)
            return bits_f32(sign);
        float v = (float)m * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    return bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

__device__ __forceinline__ uint16_t bf16_from_f32(float x)
{
    uint32_t u = f32_bits(x);
    if ((u & 0x7fffffffU) > 0x7f800000U)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffU + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

__device__ __forceinline__ uint32_t mix32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

__device__ __forceinline__ float sr_u(uint64_t seed, uint32_t i)
{
    uint32_t h = mix32(i * 0x9E3779B9U + (uint32_t)seed);
    h = mix32(h ^ (uint32_t)(seed >> 32));
    return (float)(h >> 8) * (1.0f / 16777216.0f);
}

__device__ __forceinline__ int32_t quant_one(float x, float inv, float qmax, bool sr, uint64_t seed,
                                             uint32_t i)
{
    float v = sr ? floorf(mul_rn(x, inv) + sr_u(seed, i)) : nearbyintf(mul_rn(x, inv));
    v = fminf(fmaxf(v, -qmax), qmax);
    return (int32_t)v;
}

/* fp16 block scale exponent s for a block whose max |x| has the bits amax
 * (magnitude bits: NaN above 0x7f800000): 15 - e with max = f 2^e, f in
 * [0.5, 1), clamped to [-100, 100]; 0 for a zero or non-finite maximum. The
 * exponent comes from the bits (denormals included), as frexpf gives it. */
__device__ __forceinline__ int f16_shift(uint32_t amax)
{
    if (amax == 0 || amax >= 0x7f800000U)
        return 0;
    uint32_t ex = amax >> 23;
    int e = ex ? (int)ex - 126 : (31 - __clz((int)amax)) - 148;
    int s = 15 - e;
    return s < -100 ? -100 : s > 100 ? 100 : s;
}

/* 2^s for s in [-126, 127], exact. */
__device__ __forceinline__ float pow2f(int s) { return bits_f32((uint32_t)(127 + s) << 23); }

/* ---- block-wide helpers (every thread of the block calls) ---------------- */

__device__ __forceinline__ uint32_t warp_max_u(uint32_t v)
{
    for (int o = 16; o > 0; o >>= 1) {
        uint32_t w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w > v ? w : v;
    }
    return v;
}

__device__ __forceinline__ uint32_t warp_sum_u(uint32_t v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Exclusive prefix sum over the block in thread order; *total gets the sum.
 * sh: 32 unsigned of shared memory. */
__device__ __forceinline__ uint32_t block_excl_scan(uint32_t v, uint32_t *sh, uint32_t *total)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    uint32_t incl = v;
    for (int o = 1; o < 32; o <<= 1) {
        uint32_t w = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o)
            incl += w;
    }
    __syncthreads(); /* sh may still be read by a previous call */
    if (lane == 31)
        sh[warp] = incl;
    __syncthreads();
    uint32_t before = 0, all = 0;
    for (int w = 0; w < nwarps; w++) {
        uint32_t t = sh[w];
        if (w < warp)
            before += t;
        all += t;
    }
    *total = all;
    return before + incl - v;
}

/* ---- conversions -------------------------------------------------------------- */

/* Maximum magnitude bits of the segments of x: mode per_warp gives each warp
 * of the block one segment (segment blockIdx.x * warps + warp), else the
 * whole block takes segment blockIdx.x. Then per segment b, for fp16 (bits
 * 16): scales[b] = 2^-s and aux[b] = 2^s; for int (bits 8 / 4): scales[b] =
 * max / qmax and aux[b] = qmax / max (0 for a zero or non-finite max). */
__global__ void seg_scale_kernel(float *scales, float *aux, const float *x, size_t n, size_t seg,
                                 size_t nseg, int per_warp, int bits)
{
    __shared__ uint32_t sh[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    size_t b, first, step;
    if (per_warp) {
        b = (size_t)blockIdx.x * (blockDim.x >> 5) + warp;
        first = lane;
        step = 32;
    } else {
        b = blockIdx.x;
        first = threadIdx.x;
        step = blockDim.x;
    }
    size_t b0 = b * seg;
    size_t len = b < nseg ? (n - b0 < seg ? n - b0 : seg) : 0;
    const uint32_t *xu = (const uint32_t *)x + (b < nseg ? b0 : 0);
    uint32_t m = 0;
    for (size_t i = first; i < len; i += step) {
        uint32_t k = xu[i] & 0x7fffffffU;
        m = k > m ? k : m;
    }
    m = warp_max_u(m);
    if (!per_warp) {
        if (lane == 0)
            sh[warp] = m;
        __syncthreads();
        m = 0;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++)
            m = sh[w] > m ? sh[w] : m;
    }
    if (b >= nseg || first != 0)
        return;
    if (bits == 16) {
        int s = f16_shift(m);
        scales[b] = pow2f(-s);
        aux[b] = pow2f(s);
        return;
    }
    float qmax = bits == 8 ? 127.0f : 7.0f;
    if (m > 0x7f800000U) { /* NaN in the block: the CPU's NAN / qmax */
        scales[b] = bits_f32(0x7fc00000U);
        aux[b] = 0.0f;
        return;
    }
    float amax = bits_f32(m);
    scales[b] = amax / qmax;
    aux[b] = amax > 0.0f && m < 0x7f800000U ? qmax / amax : 0.0f;
}

__global__ void f16_kernel(uint16_t *dst, const float *src, const float *mult, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = f16_from_f32(mul_as_cpu(src[i], mult[i / NB_CODEC_F16_BLOCK]));
}

__global__ void f16_to_f32_kernel(float *dst, const uint16_t *src, const float *scales, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = mul_as_cpu(f32_from_f16(src[i]), scales[i / NB_CODEC_F16_BLOCK]);
}

__global__ void bf16_kernel(uint16_t *dst, const float *src, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = bf16_from_f32(src[i]);
}

__global__ void bf16_to_f32_kernel(uint32_t *dst, const uint16_t *src, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = (uint32_t)src[i] << 16;
}

/* Grid for an elementwise kernel over n items (grid-stride beyond). */
static unsigned ew_grid(size_t n)
{
    unsigned g = nb_cuda_blocks(n, CODEC_THREADS);
    return g > 65535u * 4u ? 65535u * 4u : g;
}

/* Computes the per-segment scales (and aux multipliers into scratch), see
 * seg_scale_kernel; returns aux. */
static float *seg_scales(nb_backend_t *be, float *scales, const float *x, size_t n, size_t seg, int bits)
{
    size_t nseg = n / seg + (n % seg != 0);
    float *aux = (float *)nb_cuda_scratch(be, nseg * sizeof(float));
    int per_warp = seg <= 1024;
    size_t per_block = per_warp ? CODEC_THREADS / 32 : 1;
    size_t grid = nseg / per_block + (nseg % per_block != 0);
    NB_LAUNCH(seg_scale_kernel, (unsigned)grid, CODEC_THREADS, 0, nb_cuda_stream(be))(
        scales, aux, x, n, seg, nseg, per_warp, bits);
    NB_CUDA_LAUNCHED();
    return aux;
}

static void cu_f32_to_f16(nb_backend_t *be, uint16_t *dst, float *scales, const float *src, size_t n)
{
    if (!n)
        return;
    float *mult = seg_scales(be, scales, src, n, NB_CODEC_F16_BLOCK, 16);
    NB_LAUNCH(f16_kernel, ew_grid(n), CODEC_THREADS, 0, nb_cuda_stream(be))(dst, src, mult, n);
    NB_CUDA_LAUNCHED();
}

static void cu_f16_to_f32(nb_backend_t *be, float *dst, const uint16_t *src, const float *scales, size_t n)
{
    if (!n)
        return;
    NB_LAUNCH(f16_to_f32_kernel, ew_grid(n), CODEC_THREADS, 0, nb_cuda_stream(be))(dst, src, scales, n);
    NB_CUDA_LAUNCHED();
}

static void cu_f32_to_bf16(nb_backend_t *be, uint16_t *dst, const float *src, size_t n)
{
    if (!n)
        return;
    NB_LAUNCH(bf16_kernel, ew_grid(n), CODEC_THREADS, 0, nb_cuda_stream(be))(dst, src, n);
    NB_CUDA_LAUNCHED();
}

static void cu_bf16_to_f32(nb_backend_t *be, float *dst, const uint16_t *src, size_t n)
{
    if (!n)
        return;
    NB_LAUNCH(bf16_to_f32_kernel, ew_grid(n), CODEC_THREADS, 0, nb_cuda_stream(be))((uint32_t *)dst, src, n);
    NB_CUDA_LAUNCHED();
}

/* ---- absmax quantisation -------------------------------------------------------- */

__global__ void quant8_kernel(uint8_t *codes, const float *x, const float *inv, size_t n, size_t block,
                              bool sr, uint64_t seed)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        codes[i] = (uint8_t)(int8_t)quant_one(x[i], inv[i / block], 127.0f, sr, seed, (uint32_t)i);
}

/* One byte per thread: element 2j in the low nibble, 2j + 1 (if any) in the
 * high one; the two may belong to different blocks. */
__global__ void quant4_kernel(uint8_t *codes, const float *x, const float *inv, size_t n, size_t block,
                              bool sr, uint64_t seed)
{
    size_t nbytes = n / 2 + (n & 1);
    for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < nbytes;
         j += (size_t)gridDim.x * blockDim.x) {
        size_t i = 2 * j;
        uint32_t lo = (uint32_t)quant_one(x[i], inv[i / block], 7.0f, sr, seed, (uint32_t)i) & 0xf;
        uint32_t hi = 0;
        if (i + 1 < n)
            hi = (uint32_t)quant_one(x[i + 1], inv[(i + 1) / block], 7.0f, sr, seed, (uint32_t)(i + 1)) & 0xf;
        codes[j] = (uint8_t)(lo | hi << 4);
    }
}

__global__ void dequant_kernel(float *y, const uint8_t *codes, const float *scales, size_t n, size_t block,
                               int bits)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        int32_t q;
        if (bits == 8) {
            q = (int8_t)codes[i];
        } else {
            uint8_t byte = codes[i / 2];
            q = (i & 1) ? (byte >> 4) : (byte & 0x0f);
            q = q >= 8 ? q - 16 : q;
        }
        y[i] = mul_as_cpu((float)q, scales[i / block]);
    }
}

static void cu_quant(nb_backend_t *be, uint8_t *codes, float *scales, const float *x,
                     size_t n, size_t block, int bits, bool sr, uint64_t seed)
{
    NB_CHECK(block > 0 && (bits == 8 || bits == 4));
    if (!n)
        return;
    float *inv = seg_scales(be, scales, x, n, block, bits);
    cudaStream_t s = nb_cuda_stream(be);
    if (bits == 8) {
        NB_LAUNCH(quant8_kernel, ew_grid(n), CODEC_THREADS, 0, s)(codes, x, inv, n, block, sr, seed);
    } else {
        NB_LAUNCH(quant4_kernel, ew_grid(n / 2 + 1), CODEC_THREADS, 0, s)(codes, x, inv, n, block, sr, seed);
    }
    NB_CUDA_LAUNCHED();
}

static void cu_dequant(nb_backend_t *be, float *y, const uint8_t *codes, const float *scales,
                       size_t n, size_t block, int bits)
{
    NB_CHECK(block > 0 && (bits == 8 || bits == 4));
    if (!n)
        return;
    NB_LAUNCH(dequant_kernel, ew_grid(n), CODEC_THREADS, 0, nb_cuda_stream(be))(y, codes, scales, n, block, bits);
    NB_CUDA_LAUNCHED();
}

/* ---- top-k -------------------------------------------------------------------- */

/* Device state of one selection: the digits fixed so far (prefix under
 * mask) and how many elements with that prefix are still to be taken. After
 * the last pass prefix is the k-th largest magnitude T. */
struct topk_state {
    uint32_t prefix, mask, need, pad;
};

__global__ void topk_init_kernel(topk_state *st, uint32_t k)
{
    if (threadIdx.x == 0) {
        st->prefix = 0;
        st->mask = 0;
        st->need = k;
        st->pad = 0;
    }
}

/* Pass p: counts, per block, the elements whose magnitude bits match the
 * prefix, by their digit p. part: gridDim.x x TOPK_BINS counts. Each thread
 * counts into its own row of shared memory (no atomics); the rows are then
 * summed in a fixed order. blockDim.x == CODEC_THREADS. */
__global__ void topk_hist_kernel(uint32_t *part, const topk_state *st, const float *x, size_t n, int shift)
{
    __shared__ uint32_t sh[CODEC_THREADS][TOPK_BINS + 1]; /* +1: rows on different banks */
    uint32_t prefix = st->prefix, mask = st->mask;
    int t = threadIdx.x;
    for (int d = 0; d < TOPK_BINS; d++)
        sh[t][d] = 0;
    const uint32_t *xu = (const uint32_t *)x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + t; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t key = xu[i] & 0x7fffffffU;
        if ((key & mask) == prefix)
            sh[t][(key >> shift) & (TOPK_BINS - 1)]++;
    }
    __syncthreads();
    /* thread (group g, bin b) sums rows 16 g .. 16 g + 15 of bin b */
    int bin = t % TOPK_BINS, g = t / TOPK_BINS;
    uint32_t v = 0;
    for (int r = 0; r < CODEC_THREADS / TOPK_BINS; r++)
        v += sh[g * (CODEC_THREADS / TOPK_BINS) + r][bin];
    __syncthreads();
    sh[g][bin] = v;
    __syncthreads();
    if (t < TOPK_BINS) {
        uint32_t tot = 0;
        for (int r = 0; r < CODEC_THREADS / TOPK_BINS; r++)
            tot += sh[r][t];
        part[(size_t)blockIdx.x * TOPK_BINS + t] = tot;
    }
}

/* One block: sums the per-block counts of pass p and fixes digit p, the
 * largest digit whose count (with the larger digits') reaches `need`. */
__global__ void topk_pick_kernel(topk_state *st, const uint32_t *part, unsigned nparts, int shift)
{
    __shared__ uint32_t sh[CODEC_THREADS / TOPK_BINS][TOPK_BINS];
    int bin = threadIdx.x % TOPK_BINS, row = threadIdx.x / TOPK_BINS;
    int rows = blockDim.x / TOPK_BINS;
    uint32_t v = 0;
    for (unsigned b = row; b < nparts; b += rows)
        v += part[(size_t)b * TOPK_BINS + bin];
    sh[row][bin] = v;
    __syncthreads();
    if (threadIdx.x != 0)
        return;
    uint32_t hist[TOPK_BINS];
    for (int d = 0; d < TOPK_BINS; d++) {
        uint32_t t = 0;
        for (int r = 0; r < rows; r++)
            t += sh[r][d];
        hist[d] = t;
    }
    uint32_t need = st->need, d = TOPK_BINS;
    while (d > 0) {
        d--;
        if (hist[d] >= need)
            break;
        need -= hist[d];
    }
    st->prefix |= d << shift;
    st->mask |= (uint32_t)(TOPK_BINS - 1) << shift;
    st->need = need;
}

/* Per tile of TOPK_TILE elements: how many magnitudes are above T (cnt[2t])
 * and equal to T (cnt[2t + 1]). Thread j of the block reads elements
 * TOPK_ITEMS j .. TOPK_ITEMS (j + 1) - 1 of the tile. */
__global__ void topk_count_kernel(uint32_t *cnt, const topk_state *st, const float *x, size_t n)
{
    __shared__ uint32_t sh[32];
    uint32_t t = st->prefix;
    const uint32_t *xu = (const uint32_t *)x;
    size_t base = (size_t)blockIdx.x * TOPK_TILE + (size_t)threadIdx.x * TOPK_ITEMS;
    uint32_t gt = 0, eq = 0;
    for (int j = 0; j < TOPK_ITEMS && base + j < n; j++) {
        uint32_t key = xu[base + j] & 0x7fffffffU;
        gt += key > t;
        eq += key == t;
    }
    /* both counts in one sum: per tile each is <= TOPK_TILE < 2^16 */
    uint32_t tot;
    block_excl_scan(gt << 16 | eq, sh, &tot);
    if (threadIdx.x == 0) {
        cnt[2 * (size_t)blockIdx.x] = tot >> 16;
        cnt[2 * (size_t)blockIdx.x + 1] = tot & 0xffff;
    }
}

/* One block: turns the tile counts into exclusive prefixes, in place. Each
 * thread takes a contiguous run of tiles. */
__global__ void topk_scan_kernel(uint32_t *cnt, size_t ntiles)
{
    __shared__ uint32_t sh[32];
    size_t per = ntiles / blockDim.x + (ntiles % blockDim.x != 0);
    size_t lo = threadIdx.x * per, hi = lo + per < ntiles ? lo + per : ntiles;
    uint32_t gt = 0, eq = 0, tot;
    for (size_t b = lo; b < hi; b++) {
        gt += cnt[2 * b];
        eq += cnt[2 * b + 1];
    }
    uint32_t gt0 = block_excl_scan(gt, sh, &tot);
    uint32_t eq0 = block_excl_scan(eq, sh, &tot);
    for (size_t b = lo; b < hi; b++) {
        uint32_t g = cnt[2 * b], e = cnt[2 * b + 1];
        cnt[2 * b] = gt0;
        cnt[2 * b + 1] = eq0;
        gt0 += g;
        eq0 += e;
    }
}

/* Per tile, in index order: element i is taken when its magnitude is above
 * T, or equal to T and among the first `need` such; it goes to position
 * (taken above T before i) + min(equal to T before i, need). Thread j takes
 * the same TOPK_ITEMS consecutive elements as in topk_count_kernel: one
 * block scan gives what precedes its run, then it walks the run in order. */
__global__ void topk_emit_kernel(uint32_t *idx, uint32_t *vals, const topk_state *st, const uint32_t *cnt,
                                 const float *x, size_t n)
{
    __shared__ uint32_t sh[32];
    uint32_t t = st->prefix, need = st->need;
    const uint32_t *xu = (const uint32_t *)x;
    size_t base = (size_t)blockIdx.x * TOPK_TILE + (size_t)threadIdx.x * TOPK_ITEMS;
    uint32_t gt = 0, eq = 0;
    for (int j = 0; j < TOPK_ITEMS && base + j < n; j++) {
        uint32_t key = xu[base + j] & 0x7fffffffU;
        gt += key > t;
        eq += key == t;
    }
    uint32_t tot, before = block_excl_scan(gt << 16 | eq, sh, &tot);
    uint32_t gt_before = cnt[2 * (size_t)blockIdx.x] + (before >> 16);
    uint32_t eq_before = cnt[2 * (size_t)blockIdx.x + 1] + (before & 0xffff);
    for (int j = 0; j < TOPK_ITEMS && base + j < n; j++) {
        uint32_t bits = xu[base + j], key = bits & 0x7fffffffU;
        if (key > t || (key == t && eq_before < need)) {
            uint32_t pos = gt_before + (eq_before < need ? eq_before : need);
            idx[pos] = (uint32_t)(base + j);
            vals[pos] = bits;
        }
        gt_before += key > t;
        eq_before += key == t;
    }
}

static void cu_topk(nb_backend_t *be, uint32_t *idx, float *vals, const float *x, size_t n, size_t k)
{
    NB_CHECK(k >= 1 && k <= n && n <= UINT32_MAX);
    cudaStream_t s = nb_cuda_stream(be);
    size_t hb = n / (CODEC_THREADS * 8) + 1;
    unsigned hist_blocks = hb > TOPK_HIST_BLOCKS_MAX ? TOPK_HIST_BLOCKS_MAX : (unsigned)hb;
    size_t ntiles = n / TOPK_TILE + (n % TOPK_TILE != 0);
    /* scratch: state, histogram partials, tile counts (one buffer) */
    size_t part_off = sizeof(topk_state);
    size_t cnt_off = part_off + (size_t)hist_blocks * TOPK_BINS * sizeof(uint32_t);
    size_t bytes = cnt_off + 2 * ntiles * sizeof(uint32_t);
    uint8_t *scr = (uint8_t *)nb_cuda_scratch(be, bytes);
    topk_state *st = (topk_state *)scr;
    uint32_t *part = (uint32_t *)(scr + part_off), *cnt = (uint32_t *)(scr + cnt_off);
    NB_LAUNCH(topk_init_kernel, 1, 32, 0, s)(st, (uint32_t)k);
    NB_CUDA_LAUNCHED();
    for (int p = 0; p < TOPK_PASSES; p++) {
        int shift = 32 - TOPK_DIGIT_BITS * (p + 1);
        NB_LAUNCH(topk_hist_kernel, hist_blocks, CODEC_THREADS, 0, s)(part, st, x, n, shift);
        NB_CUDA_LAUNCHED();
        NB_LAUNCH(topk_pick_kernel, 1, 64, 0, s)(st, part, hist_blocks, shift);
        NB_CUDA_LAUNCHED();
    }
    NB_LAUNCH(topk_count_kernel, (unsigned)ntiles, CODEC_THREADS, 0, s)(cnt, st, x, n);
    NB_CUDA_LAUNCHED();
    /* one warp while each thread has at most 64 tiles to walk */
    NB_LAUNCH(topk_scan_kernel, 1, ntiles <= 32 * 64 ? 32 : CODEC_THREADS, 0, s)(cnt, ntiles);
    NB_CUDA_LAUNCHED();
    NB_LAUNCH(topk_emit_kernel, (unsigned)ntiles, CODEC_THREADS, 0, s)(idx, (uint32_t *)vals, st, cnt, x, n);
    NB_CUDA_LAUNCHED();
}

__global__ void scatter_kernel(uint32_t *y, const uint32_t *idx, const uint32_t *vals, size_t n, size_t k)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < k; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t j = idx[i];
        if (j < n) /* the codec layer validated; never write out of bounds */
            y[j] = vals[i];
    }
}

static void cu_scatter(nb_backend_t *be, float *y, const uint32_t *idx, const float *vals, size_t n, size_t k)
{
    if (!n)
        return;
    cudaStream_t s = nb_cuda_stream(be);
    NB_CUDA_CHECK(cudaMemsetAsync(y, 0, n * sizeof(float), s));
    if (!k)
        return;
    NB_LAUNCH(scatter_kernel, ew_grid(k), CODEC_THREADS, 0, s)((uint32_t *)y, idx, (const uint32_t *)vals, n, k);
    NB_CUDA_LAUNCHED();
}

static struct nb_codec_ops cuda_codec_ops;

void nb_cuda_register_codec(nb_backend_i *i)
{
    cuda_codec_ops.f32_to_f16 = cu_f32_to_f16;
    cuda_codec_ops.f16_to_f32 = cu_f16_to_f32;
    cuda_codec_ops.f32_to_bf16 = cu_f32_to_bf16;
    cuda_codec_ops.bf16_to_f32 = cu_bf16_to_f32;
    cuda_codec_ops.quant = cu_quant;
    cuda_codec_ops.dequant = cu_dequant;
    cuda_codec_ops.topk = cu_topk;
    cuda_codec_ops.scatter = cu_scatter;
    i->codec = &cuda_codec_ops;
}
