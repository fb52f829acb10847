/*
 * cuda_ops_embed.cu - the CUDA backend's token and position embedding, forward and backward.
 *
 * Specification: kernels/cpu/cpu_ops_embed.c. Shapes: tokens (B,T) int32 on
 * the device; wte (V,C); wpe (maxT,C) or NULL; out, dout (B,T,C).
 *
 * Token ids are device data: the host never reads them (no hidden copy), so
 * they are not validated here; the model checks them against V when a batch
 * is loaded. A negative id, which the CPU backend treats as a broken
 * invariant, cannot abort a kernel: the forward writes NaN for its row (the
 * loss shows it) and the backward ignores it. An id >= V is the caller's bug
 * as on the CPU.
 *
 * Forward: one block per position (grid.x = B*T) and channel group
 * (grid.y, up to 256 channels a block); out = wte row + wpe row, or a copy
 * of the wte row without wpe. Bit-identical to the CPU.
 *
 * Backward, without atomics and bit-identical to the CPU, whose order is a
 * scatter-add in (b, t) order:
 *  - dwte: thread (c, p) owns channel c of every token id with
 *    id % P == p (P a power of two, grid.y = P, grid.x covers C in blocks of
 *    EB_THREADS channels). It scans all B*T positions in order, staging the
 *    ids in shared memory a tile at a time, and adds dout[bt][c] to
 *    dwte[id][c] for each of its ids. Every element of dwte therefore gets
 *    its contributions in (b, t) order, which is the CPU's order whatever P
 *    is; P only sets the parallelism (about EB_TARGET threads).
 *  - dwpe: one thread per (t, c) adds dout[b][t][c] for b = 0..B-1 in order.
 *
 * Token shift (specification: kernels/cpu/cpu_ops_shift.c): one thread per
 * output element, forward and backward in one kernel; pure data movement,
 * bit-identical to the CPU.
 */
#include "kernels/cuda/cuda_common.cuh"
#include <math.h>

#define EF_THREADS 256
#define EB_THREADS 64     /* channels per block of the dwte kernel */
#define EB_TILE 256       /* token ids staged in shared memory per step */
#define EB_TARGET 131072  /* threads the dwte kernel aims for */
#define EB_MAX_PARTS 1024

/* ---- forward ----------------------------------------------------------------- */

/* Block (position bt = blockIdx.x, channel group blockIdx.y). */
__global__ static void embed_fwd_kernel(float *out, const int32_t *tokens, const float *wte,
                                        const float *wpe, int T, int C)
{
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    unsigned bt = blockIdx.x;
    float *o = out + (size_t)bt * C + c;
    int32_t id = tokens[bt];
    if (id < 0) {
        *o = NAN;
        return;
    }
    float e = wte[(size_t)id * C + c];
    if (wpe)
        e = e + wpe[(size_t)(bt % (unsigned)T) * C + c];
    *o = e;
}

static void cu_embed_fwd(nb_backend_t *be, float *out, const int32_t *tokens, const float *wte,
                         const float *wpe, int B, int T, int C)
{
    NB_CHECK(B >= 0 && T >= 0 && C >= 0);
    NB_CHECK((int64_t)B * T <= INT32_MAX);
    if (B == 0 || T == 0 || C == 0)
        return;
    unsigned threads = C >= EF_THREADS ? EF_THREADS : (unsigned)(C + 31) / 32 * 32;
    unsigned groups = nb_cuda_blocks((size_t)C, threads);
    NB_CHECK(groups <= 65535);
    dim3 grid((unsigned)(B * T), groups);
    NB_LAUNCH(embed_fwd_kernel, grid, threads, 0, nb_cuda_stream(be))(out, tokens, wte, wpe, T, C);
    NB_CUDA_LAUNCHED();
}

/* ---- backward ---------------------------------------------------------------- */

/* Block (channel group blockIdx.x, partition blockIdx.y of P = gridDim.y,
 * a power of two). Every thread of the block takes part in staging the ids,
 * also those past C, so the barriers are reached by all. */
__global__ static void embed_bwd_wte_kernel(float *dwte, const float *dout, const int32_t *tokens,
                                            int N, int C)
{
    __shared__ int32_t ids[EB_TILE];
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    int32_t part = (int32_t)blockIdx.y, mask = (int32_t)gridDim.y - 1;
    for (int base = 0; base < N; base += EB_TILE) {
        int len = N - base < EB_TILE ? N - base : EB_TILE;
        for (int j = threadIdx.x; j < len; j += blockDim.x)
            ids[j] = tokens[base + j];
        __syncthreads();
        if (c < C)
            for (int j = 0; j < len; j++) {
                int32_t id = ids[j];
                if (id >= 0 && (id & mask) == part) {
                    float *w = dwte + (size_t)id * C + c;
                    *w = *w + dout[(size_t)(base + j) * C + c];
                }
            }
        __syncthreads(); /* the tile is read by all before the next overwrites it */
    }
}

__global__ static void embed_bwd_wpe_kernel(float *dwpe, const float *dout, int B, int T, int C)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t tc = (size_t)T * (size_t)C;
    if (i >= tc)
        return;
    float acc = dwpe[i];
    for (int b = 0; b < B; b++)
        acc = acc + dout[(size_t)b * tc + i];
    dwpe[i] = acc;
}

/* Partitions of the vocabulary for the dwte kernel: a power of two, about
 * EB_TARGET / C, at most one per position. The result does not depend on
 * it. */
static unsigned embed_parts(int N, int C)
{
    size_t want = EB_TARGET / (size_t)C;
    unsigned p = 1;
    while (p * 2 <= want && p * 2 <= (unsigned)N && p * 2 <= EB_MAX_PARTS)
        p *= 2;
    return p;
}

static void cu_embed_bwd(nb_backend_t *be, float *dwte, float *dwpe, const float *dout,
                         const int32_t *tokens, int B, int T, int C)
{
    NB_CHECK(B >= 0 && T >= 0 && C >= 0);
    NB_CHECK((int64_t)B * T <= INT32_MAX);
    int N = B * T;
    if (N == 0 || C == 0)
        return;
    cudaStream_t st = nb_cuda_stream(be);
    if (dwte) {
        dim3 grid(nb_cuda_blocks((size_t)C, EB_THREADS), embed_parts(N, C));
        NB_LAUNCH(embed_bwd_wte_kernel, grid, EB_THREADS, 0, st)(dwte, dout, tokens, N, C);
        NB_CUDA_LAUNCHED();
    }
    if (dwpe) {
        size_t tc = (size_t)T * (size_t)C;
        NB_LAUNCH(embed_bwd_wpe_kernel, nb_cuda_blocks(tc, EF_THREADS), EF_THREADS, 0, st)(dwpe, dout, B, T, C);
        NB_CUDA_LAUNCHED();
    }
}

/* ---- token shift --------------------------------------------------------------- */

__global__ static void token_shift_kernel(float *out, const float *x, const uint8_t *key_mask, int groups,
                                          bool backward, int T, int C, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    int c = (int)(i % (size_t)C);
    size_t bt = i / (size_t)C;
    int t = (int)(bt % (size_t)T), q = C / 4, g = q ? c / q : groups;
    if (g >= groups) { /* a channel that stays */
        out[i] = x[i];
        return;
    }
    int d = g == 0 ? -1 : 1;
    int s = backward ? t - d : t + d;
    size_t sbt = bt - (size_t)t + (size_t)s; /* the same sequence, position s */
    bool live = s >= 0 && s < T && (!key_mask || key_mask[backward ? bt : sbt]);
    out[i] = live ? x[sbt * (size_t)C + (size_t)c] : 0.0f;
}

static void cu_token_shift(nb_backend_t *be, float *out, const float *x, const uint8_t *key_mask, bool causal,
                           bool backward, int B, int T, int C)
{
    NB_CHECK(B >= 0 && T >= 0 && C >= 0);
    size_t n = (size_t)B * (size_t)T * (size_t)C;
    if (n == 0)
        return;
    NB_CHECK(n / EF_THREADS < INT32_MAX); /* the grid's x limit */
    NB_LAUNCH(token_shift_kernel, nb_cuda_blocks(n, EF_THREADS), EF_THREADS, 0, nb_cuda_stream(be))(
        out, x, key_mask, causal ? 1 : 2, backward, T, C, n);
    NB_CUDA_LAUNCHED();
}

void nb_cuda_register_embed(nb_backend_i *i)
{
    i->token_shift = cu_token_shift;
    i->embed_fwd = cu_embed_fwd;
    i->embed_bwd = cu_embed_bwd;
}
