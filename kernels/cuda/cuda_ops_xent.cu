/*
 * cuda_ops_xent.cu - the CUDA backend's fused softmax cross-entropy with its gradient.
 *
 * One block per row of logits (N,V). Pass 1: each thread keeps an online
 * maximum and a sum of exponentials scaled to it over its strided share of
 * the row; the block combines them (fixed tree: bit-identical run to run)
 * into the row maximum M and S = sum exp(x - M). loss = M + log S - x[target].
 * Pass 2 writes dlogits = dloss_scale * (exp(x - M) / S - onehot): the
 * probabilities live only in registers, never in a buffer of their own, so
 * dlogits may be logits itself (each element is read, then overwritten by the
 * same thread; x[target] is read before the first barrier). A target < 0 is
 * ignored (loss 0, gradient row 0). A target >= V is the caller's broken
 * invariant (the CPU backend aborts); here its loss is NaN, so it cannot
 * pass unnoticed.
 */
#include "kernels/cuda/cuda_common.cuh"
#include <float.h>

enum { XENT_MAX_THREADS = 1024, XENT_PER_THREAD = 8 };

/* Threads per row block: a multiple of 32 giving each thread about
 * XENT_PER_THREAD elements, at most XENT_MAX_THREADS (large vocabularies). */
static unsigned xent_threads(int V)
{
    unsigned t = (unsigned)(((size_t)V + XENT_PER_THREAD - 1) / XENT_PER_THREAD);
    t = (t + 31) / 32 * 32;
    if (t < 32)
        t = 32;
    return t > (unsigned)XENT_MAX_THREADS ? (unsigned)XENT_MAX_THREADS : t;
}

__global__ static void xent_kernel(float *losses, float *dlogits, const float *logits,
                                   const int32_t *targets, float dloss_scale, int V)
{
    __shared__ float red[32];
    size_t off = (size_t)blockIdx.x * V;
    const float *x = logits + off;
    float *d = dlogits ? dlogits + off : NULL;
    int tgt = targets[blockIdx.x];
    if (tgt < 0) { /* the whole block takes this branch */
        if (threadIdx.x == 0)
            losses[blockIdx.x] = 0.0f;
        if (d)
            for (int j = threadIdx.x; j < V; j += blockDim.x)
                d[j] = 0.0f;
        return;
    }
    /* read before any thread writes d (which may be x): a barrier follows */
    float xt = tgt < V ? x[tgt] : NAN;
    /* -FLT_MAX, not -inf: a -inf logit then adds exp(-inf) = 0, not NaN */
    float m = -FLT_MAX, s = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float v = x[j];
        if (v > m) {
            s = s * expf(m - v) + 1.0f;
            m = v;
        } else {
            s += expf(v - m);
        }
    }
    float M = nb_block_max(m, red);
    float S = nb_block_sum(s * expf(m - M), red);
    if (threadIdx.x == 0)
        losses[blockIdx.x] = (M + logf(S)) - xt;
    if (!d)
        return;
    float k = dloss_scale / S;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float g = expf(x[j] - M) * k;
        if (j == tgt)
            g -= dloss_scale;
        d[j] = g;
    }
}

static void cu_xent_fwd_bwd(nb_backend_t *be, float *losses, float *dlogits,
                            const float *logits, const int32_t *targets,
                            float dloss_scale, int N, int V)
{
    NB_CHECK(N >= 0 && V > 0);
    if (N == 0)
        return;
    NB_LAUNCH(xent_kernel, (unsigned)N, xent_threads(V), 0, nb_cuda_stream(be))(
        losses, dlogits, logits, targets, dloss_scale, V);
    NB_CUDA_LAUNCHED();
}

void nb_cuda_register_xent(nb_backend_i *i)
{
    i->xent_fwd_bwd = cu_xent_fwd_bwd;
}
