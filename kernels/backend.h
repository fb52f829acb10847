/*
 * backend.h - the compute backend interface of Nebula.
 *
 * Model code, codecs and the optimizer never call BLAS, CUDA or any device API
 * directly: they call the inline wrappers below, which dispatch through one
 * table of function pointers (nb_backend_i). The CPU backend (kernels/cpu/,
 * OpenBLAS + plain C) is the reference specification; the CUDA backend
 * (kernels/cuda/, cuBLAS + kernels) must match it within stated tolerances.
 *
 * Design rules, chosen so a GPU backend fits without changes to callers:
 *  - Tensors know their backend (device). Their data pointer is a *device*
 *    pointer; only the CPU backend lets the host dereference it. Host code that
 *    must read values copies them out with nb_be_to_host().
 *  - Execution is stream ordered: every op is enqueued on the backend's single
 *    stream and may return before it finishes. nb_be_sync() waits for all of
 *    it. The CPU backend executes synchronously, which is a valid ordering.
 *  - No hidden host copies: an op never moves data between host and device on
 *    its own; only the explicit copy functions do.
 *  - nb_be_supports(be, op) says whether an op is implemented; a NULL entry in
 *    the table means "not supported" and its wrapper asserts.
 *
 * Shape letters used throughout kernels/: B batch, T sequence, C model width,
 * NH heads, HS head size (C/NH), F feed-forward width, V vocabulary.
 * All tensors are row major and contiguous.
 *
 * Thread: a backend handle is used by one thread at a time (the stage's compute
 * thread). Errors: allocation returns NULL; ops on valid inputs cannot fail
 * (shape mismatches are broken invariants and abort via NB_CHECK).
 */
#ifndef NB_BACKEND_H
#define NB_BACKEND_H

#include <stddef.h>
#include <stdlib.h>
#include <stdint.h>
#include <stdbool.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    NB_DEV_CPU = 0,
    NB_DEV_CUDA = 1,
} nb_device_kind_t;

typedef enum {
    NB_F32 = 0,
    NB_F16 = 1,
    NB_BF16 = 2,
    NB_I32 = 3,
    NB_U8 = 4,
    NB_DTYPE_COUNT
} nb_dtype_t;

/* Size in bytes of one element of dtype. */
size_t nb_dtype_size(nb_dtype_t dt);
/* Stable lowercase name ("f32", "f16", ...); "?" for an unknown value. */
const char *nb_dtype_name(nb_dtype_t dt);

typedef struct nb_backend nb_backend_t;

#define NB_MAX_DIMS 4

/* A dense, contiguous, row-major tensor living on one backend.
 * Ownership: a tensor made by nb_tensor_new() owns its data and is released
 * with nb_tensor_free(); a view (nb_tensor_view) borrows and must not outlive
 * what it views. */
typedef struct nb_tensor {
    nb_backend_t *be;
    nb_dtype_t dtype;
    int ndim;
    int64_t shape[NB_MAX_DIMS];
    void *data;     /* device pointer on be */
    bool owns_data;
} nb_tensor_t;

/* Precision of the backend's matmuls (job.precision; docs/cuda.md,
 * "Precision"). NB_PREC_BF16: each matmul rounds its two inputs to bf16
 * (round to nearest even) and accumulates and writes in fp32, the tensor-core
 * bf16 mode of cuBLAS (CUBLAS_COMPUTE_32F_FAST_16BF); weights, optimizer state
 * and stored activations stay fp32. The other ops are fp32 either way. */
typedef enum {
    NB_PREC_FP32 = 0,
    NB_PREC_BF16 = 1,
} nb_precision_t;

/* Operations a backend may implement; used by nb_be_supports(). */
typedef enum {
    NB_OP_MATMUL,
    NB_OP_ADD,
    NB_OP_SCALE,
    NB_OP_BIAS_ADD,
    NB_OP_BIAS_GRAD,
    NB_OP_EMBED_FWD,
    NB_OP_EMBED_BWD,
    NB_OP_LAYERNORM_FWD,
    NB_OP_LAYERNORM_BWD,
    NB_OP_GELU_FWD,
    NB_OP_GELU_BWD,
    NB_OP_ATTENTION_FWD,
    NB_OP_ATTENTION_BWD,
    NB_OP_XENT_FWD_BWD,
    NB_OP_SUMSQ,
    NB_OP_ADAMW,
    NB_OP_GELU_ERF_FWD,
    NB_OP_GELU_ERF_BWD,
    NB_OP_XATTN_FWD,
    NB_OP_XATTN_BWD,
    NB_OP_TOKEN_SHIFT,
    NB_OP_COUNT
} nb_op_t;

/* The backend vtable. Every pointer may be NULL (= unsupported op) except the
 * memory functions. Contracts are on the inline wrappers below. */
typedef struct nb_backend_i {
    const char *name;
    nb_device_kind_t kind;
    void (*free)(nb_backend_t *be);

    /* memory */
    void *(*alloc)(nb_backend_t *be, size_t bytes);
    void (*dealloc)(nb_backend_t *be, void *ptr);
    void (*memset0)(nb_backend_t *be, void *dst, size_t bytes);
    void (*copy_h2d)(nb_backend_t *be, void *dst, const void *src, size_t bytes);
    void (*copy_d2h)(nb_backend_t *be, void *dst, const void *src, size_t bytes);
    void (*copy_d2d)(nb_backend_t *be, void *dst, const void *src, size_t bytes);
    void (*sync)(nb_backend_t *be);

    /* dense linear algebra (fp32) */
    void (*matmul)(nb_backend_t *be, bool trans_a, bool trans_b,
                   int m, int n, int k, float alpha,
                   const float *a, int lda, int64_t stride_a,
                   const float *b, int ldb, int64_t stride_b,
                   float beta, float *c, int ldc, int64_t stride_c,
                   int batch);
    /* Sets the precision of later matmuls; NULL: fp32 only. Returns 0, or
     * NB_EINVAL for a precision the backend does not have. */
    int (*set_precision)(nb_backend_t *be, nb_precision_t p);
    void (*add)(nb_backend_t *be, float *y, const float *x, float alpha, size_t n);
    void (*scale)(nb_backend_t *be, float *y, float alpha, size_t n);
    void (*bias_add)(nb_backend_t *be, float *y, const float *bias, int rows, int cols);
    void (*bias_grad)(nb_backend_t *be, float *dbias, const float *dy, int rows, int cols);

    /* transformer ops; see wrappers for shapes */
    void (*embed_fwd)(nb_backend_t *be, float *out, const int32_t *tokens,
                      const float *wte, const float *wpe, int B, int T, int C);
    void (*embed_bwd)(nb_backend_t *be, float *dwte, float *dwpe, const float *dout,
                      const int32_t *tokens, int B, int T, int C);
    void (*token_shift)(nb_backend_t *be, float *out, const float *x, const uint8_t *key_mask,
                        bool causal, bool backward, int B, int T, int C);
    void (*layernorm_fwd)(nb_backend_t *be, float *out, float *mean, float *rstd,
                          const float *x, const float *w, const float *b, float eps, int N, int C);
    void (*layernorm_bwd)(nb_backend_t *be, float *dx, float *dw, float *db,
                          const float *dout, const float *x, const float *w,
                          const float *mean, const float *rstd, int N, int C);
    void (*gelu_fwd)(nb_backend_t *be, float *out, const float *x, size_t n);
    void (*gelu_bwd)(nb_backend_t *be, float *dx, const float *x, const float *dout, size_t n);
    void (*gelu_erf_fwd)(nb_backend_t *be, float *out, const float *x, size_t n);
    void (*gelu_erf_bwd)(nb_backend_t *be, float *dx, const float *x, const float *dout, size_t n);
    void (*attention_fwd)(nb_backend_t *be, float *out, float *att, const float *qkv,
                          const uint8_t *key_mask, bool causal, int B, int T, int C, int NH);
    void (*attention_bwd)(nb_backend_t *be, float *dqkv, const float *dout,
                          const float *qkv, const float *att, const uint8_t *key_mask,
                          bool causal, int B, int T, int C, int NH);
    void (*xattn_fwd)(nb_backend_t *be, float *out, float *att, const float *q, const float *kv,
                      const uint8_t *key_mask, int B, int T, int S, int C, int NH);
    void (*xattn_bwd)(nb_backend_t *be, float *dq, float *dkv, const float *dout, const float *q,
                      const float *kv, const float *att, const uint8_t *key_mask,
                      int B, int T, int S, int C, int NH);
    /* Largest head size (C / NH) the attention ops take; 0 = any. */
    int max_head_size;
    /* Floats of the attention state a forward saves for its backward (the
     * att argument), for B batches, NH heads, T queries, S keys; NULL means
     * B * NH * T * S (the softmax probabilities). */
    size_t (*attention_state_floats)(int B, int NH, int T, int S);
    void (*xent_fwd_bwd)(nb_backend_t *be, float *losses, float *dlogits,
                         const float *logits, const int32_t *targets,
                         float dloss_scale, int N, int V);
    void (*sumsq)(nb_backend_t *be, double *out_host, const float *x, size_t n);
    void (*adamw)(nb_backend_t *be, float *param, const float *grad, float *m, float *v,
                  size_t n, float lr, float beta1, float beta2, float eps,
                  float weight_decay, float grad_scale, int step);

    /* Host memory and device figures; each may be NULL (see the wrappers
     * nb_be_host_alloc, nb_be_host_free and nb_be_mem_info). */
    void *(*host_alloc)(nb_backend_t *be, size_t bytes);
    void (*host_free)(nb_backend_t *be, void *ptr);
    int (*mem_info)(nb_backend_t *be, size_t *free_bytes, size_t *total_bytes);

    /* Compression codecs (kernels/codec/): the backend's implementation of
     * the codec primitives, or NULL when the backend has none. The table's
     * type and contracts are in kernels/codec/codec_ops.h. */
    const struct nb_codec_ops *codec;
} nb_backend_i;

struct nb_backend {
    const nb_backend_i *iface;
    void *ctx;
};

/* Backends. Each returns NULL (and logs why via the message out-parameter when
 * it is not NULL) if the device cannot be opened. Freed with nb_be_free(). */
nb_backend_t *nb_cpu_backend_new(void);
/* The CUDA backend; NULL when built without CUDA or when no device is usable. */
nb_backend_t *nb_cuda_backend_new(int device, const char **why);
void nb_be_free(nb_backend_t *be);

/* True when be implements op. */
bool nb_be_supports(const nb_backend_t *be, nb_op_t op);
const char *nb_op_name(nb_op_t op);

/* ---- tensors --------------------------------------------------------- */

/* Allocates an uninitialised tensor of the given shape on be; NULL on
 * allocation failure or on a shape whose byte size overflows. */
nb_tensor_t *nb_tensor_new(nb_backend_t *be, nb_dtype_t dt, int ndim, const int64_t *shape);
/* Like nb_tensor_new, zero filled. */
nb_tensor_t *nb_tensor_zeros(nb_backend_t *be, nb_dtype_t dt, int ndim, const int64_t *shape);
/* A non-owning view of data on be with the given shape. */
nb_tensor_t nb_tensor_view(nb_backend_t *be, nb_dtype_t dt, void *data, int ndim, const int64_t *shape);
void nb_tensor_free(nb_tensor_t *t);
int64_t nb_tensor_numel(const nb_tensor_t *t);
size_t nb_tensor_nbytes(const nb_tensor_t *t);

/* ---- inline wrappers: the contract of each op --------------------------- */

static inline void *nb_be_alloc(nb_backend_t *be, size_t bytes) { return be->iface->alloc(be, bytes); }
static inline void nb_be_dealloc(nb_backend_t *be, void *p) { be->iface->dealloc(be, p); }
static inline void nb_be_memset0(nb_backend_t *be, void *dst, size_t n) { be->iface->memset0(be, dst, n); }
/* Host -> device copy; src must stay valid until nb_be_sync(). */
static inline void nb_be_from_host(nb_backend_t *be, void *dst, const void *src, size_t n) { be->iface->copy_h2d(be, dst, src, n); }
/* Device -> host copy; synchronous: dst holds the values on return. */
static inline void nb_be_to_host(nb_backend_t *be, void *dst, const void *src, size_t n) { be->iface->copy_d2h(be, dst, src, n); }
static inline void nb_be_copy(nb_backend_t *be, void *dst, const void *src, size_t n) { be->iface->copy_d2d(be, dst, src, n); }
static inline void nb_be_sync(nb_backend_t *be) { be->iface->sync(be); }
/* Host memory for staging copies to and from be: page-locked (pinned) on
 * the CUDA backend, so that a copy runs at the link's full speed and can
 * overlap with compute; plain malloc where the backend has no such memory.
 * The host dereferences it freely. NULL when out of memory. Free with
 * nb_be_host_free on the same backend (never with free()). */
static inline void *nb_be_host_alloc(nb_backend_t *be, size_t bytes)
{ return be->iface->host_alloc ? be->iface->host_alloc(be, bytes) : malloc(bytes ? bytes : 1); }
static inline void nb_be_host_free(nb_backend_t *be, void *p)
{ if (be->iface->host_free) be->iface->host_free(be, p); else free(p); }
/* The device's free and total memory in bytes, as the device sees it now
 * (cudaMemGetInfo on CUDA: every process's allocations count; the CPU:
 * available and physical memory of the machine). 0, or NB_EINVAL when
 * the backend cannot tell (both then 0). Any thread the backend's is. */
static inline int nb_be_mem_info(nb_backend_t *be, size_t *free_bytes, size_t *total_bytes)
{
    *free_bytes = *total_bytes = 0;
    return be->iface->mem_info ? be->iface->mem_info(be, free_bytes, total_bytes) : NB_EINVAL;
}

/* Sets the precision of the matmuls that follow (nb_precision_t). Returns 0,
 * or NB_EINVAL when the backend does not have it (every backend has fp32). */
static inline int nb_be_set_precision(nb_backend_t *be, nb_precision_t p)
{
    if (be->iface->set_precision)
        return be->iface->set_precision(be, p);
    return p == NB_PREC_FP32 ? 0 : NB_EINVAL;
}

/* C[i] = alpha * op(A[i]) @ op(B[i]) + beta * C[i] for i < batch, row major.
 * op(A) is m x k, op(B) is k x n, C is m x n. stride_* are element offsets
 * between consecutive batch matrices (ignored when batch == 1). */
static inline void nb_matmul(nb_backend_t *be, bool ta, bool tb, int m, int n, int k, float alpha,
                             const float *a, int lda, int64_t sa, const float *b, int ldb, int64_t sb,
                             float beta, float *c, int ldc, int64_t sc, int batch)
{
    NB_CHECK(be->iface->matmul);
    be->iface->matmul(be, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc, sc, batch);
}
/* y += alpha * x, n elements. */
static inline void nb_add(nb_backend_t *be, float *y, const float *x, float alpha, size_t n)
{ NB_CHECK(be->iface->add); be->iface->add(be, y, x, alpha, n); }
/* y *= alpha. */
static inline void nb_scale(nb_backend_t *be, float *y, float alpha, size_t n)
{ NB_CHECK(be->iface->scale); be->iface->scale(be, y, alpha, n); }
/* y (rows, cols) += bias (cols) on every row. */
static inline void nb_bias_add(nb_backend_t *be, float *y, const float *bias, int rows, int cols)
{ NB_CHECK(be->iface->bias_add); be->iface->bias_add(be, y, bias, rows, cols); }
/* dbias (cols) += column sums of dy (rows, cols). */
static inline void nb_bias_grad(nb_backend_t *be, float *dbias, const float *dy, int rows, int cols)
{ NB_CHECK(be->iface->bias_grad); be->iface->bias_grad(be, dbias, dy, rows, cols); }
/* out (B,T,C) = wte[tokens] + wpe[t]; wpe may be NULL (no position table). */
static inline void nb_embed_fwd(nb_backend_t *be, float *out, const int32_t *tokens, const float *wte,
                                const float *wpe, int B, int T, int C)
{ NB_CHECK(be->iface->embed_fwd); be->iface->embed_fwd(be, out, tokens, wte, wpe, B, T, C); }
/* dwte (V,C) and dwpe (maxT,C) += scatter of dout (B,T,C). Accumulates.
 * Either may be NULL (no position table, or a frozen tensor). */
static inline void nb_embed_bwd(nb_backend_t *be, float *dwte, float *dwpe, const float *dout,
                                const int32_t *tokens, int B, int T, int C)
{ NB_CHECK(be->iface->embed_bwd); be->iface->embed_bwd(be, dwte, dwpe, dout, tokens, B, T, C); }
/* Token shift (model.h, token_shift), q = C / 4: out (B,T,C) is x with
 * channels [0,q) taken from position t-1 and, unless causal, channels
 * [q,2q) from position t+1; the other channels are copied. A neighbour
 * outside [0,T), or one whose key_mask is 0 (padding; key_mask (B,T) may be
 * NULL: no padding), gives 0. out and x do not overlap. */
static inline void nb_token_shift_fwd(nb_backend_t *be, float *out, const float *x, const uint8_t *key_mask,
                                      bool causal, int B, int T, int C)
{ NB_CHECK(be->iface->token_shift); be->iface->token_shift(be, out, x, key_mask, causal, false, B, T, C); }
/* Its backward: dx (B,T,C) = the gradient of x given dout (the transpose
 * of the forward's move: channels [0,q) from t+1, [q,2q) from t-1, zero at
 * a padding position and past either end). Overwrites dx; no overlap. */
static inline void nb_token_shift_bwd(nb_backend_t *be, float *dx, const float *dout, const uint8_t *key_mask,
                                      bool causal, int B, int T, int C)
{ NB_CHECK(be->iface->token_shift); be->iface->token_shift(be, dx, dout, key_mask, causal, true, B, T, C); }
/* out (N,C) = (x - mean) / sqrt(var + eps) * w + b per row (biased
 * variance; GPT-2 uses eps 1e-5, BERT 1e-12); saves mean, rstd (N) for
 * backward, which therefore needs no eps. */
static inline void nb_layernorm_fwd(nb_backend_t *be, float *out, float *mean, float *rstd, const float *x,
                                    const float *w, const float *b, float eps, int N, int C)
{ NB_CHECK(be->iface->layernorm_fwd); be->iface->layernorm_fwd(be, out, mean, rstd, x, w, b, eps, N, C); }
/* dx (N,C) += input grad; dw, db (C) += param grads. Accumulates into all three.
 * dw and db may both be NULL (frozen parameters). */
static inline void nb_layernorm_bwd(nb_backend_t *be, float *dx, float *dw, float *db, const float *dout,
                                    const float *x, const float *w, const float *mean, const float *rstd,
                                    int N, int C)
{ NB_CHECK(be->iface->layernorm_bwd); be->iface->layernorm_bwd(be, dx, dw, db, dout, x, w, mean, rstd, N, C); }
/* out = GELU(x), tanh approximation (PyTorch approximate='tanh'). */
static inline void nb_gelu_fwd(nb_backend_t *be, float *out, const float *x, size_t n)
{ NB_CHECK(be->iface->gelu_fwd); be->iface->gelu_fwd(be, out, x, n); }
/* dx += GELU'(x) * dout. Accumulates. */
static inline void nb_gelu_bwd(nb_backend_t *be, float *dx, const float *x, const float *dout, size_t n)
{ NB_CHECK(be->iface->gelu_bwd); be->iface->gelu_bwd(be, dx, x, dout, n); }
/* out = GELU(x), exact erf form x * 0.5 (1 + erf(x / sqrt 2)) (PyTorch's
 * default, BERT's hidden_act "gelu"). */
static inline void nb_gelu_erf_fwd(nb_backend_t *be, float *out, const float *x, size_t n)
{ NB_CHECK(be->iface->gelu_erf_fwd); be->iface->gelu_erf_fwd(be, out, x, n); }
/* dx += GELU_erf'(x) * dout, GELU_erf'(x) = Phi(x) + x phi(x). Accumulates. */
static inline void nb_gelu_erf_bwd(nb_backend_t *be, float *dx, const float *x, const float *dout, size_t n)
{ NB_CHECK(be->iface->gelu_erf_bwd); be->iface->gelu_erf_bwd(be, dx, x, dout, n); }
/* Floats of the attention state (the att argument of the attention ops) for B
 * batches, NH heads, T queries and S keys (S = T for self-attention). The
 * state is the backend's own: the CPU backend keeps the softmax probabilities
 * (B,NH,T,S); the CUDA backend's fused kernels keep one log-sum-exp per
 * query row (B,NH,T), so no T x S matrix is ever stored. Saturates
 * at SIZE_MAX instead of overflowing (the allocation then fails). */
static inline size_t nb_attention_state_floats(const nb_backend_t *be, int B, int NH, int T, int S)
{
    if (be->iface->attention_state_floats)
        return be->iface->attention_state_floats(B, NH, T, S);
    size_t n = 1;
    const size_t f[4] = { (size_t)B, (size_t)NH, (size_t)T, (size_t)S };
    for (int i = 0; i < 4; i++)
        if (__builtin_mul_overflow(n, f[i], &n))
            return SIZE_MAX;
    return n;
}
/* qkv (B,T,3C) packed [q|k|v] -> out (B,T,C); att (nb_attention_state_floats
 * (be, B, NH, T, T) floats) holds what backward needs (on the CPU backend the
 * softmax probabilities (B,NH,T,T)). key_mask (B,T), may be NULL: 0 = padding key,
 * never attended to. causal: position t attends to keys <= t. */
static inline void nb_attention_fwd(nb_backend_t *be, float *out, float *att, const float *qkv,
                                    const uint8_t *key_mask, bool causal, int B, int T, int C, int NH)
{ NB_CHECK(be->iface->attention_fwd); be->iface->attention_fwd(be, out, att, qkv, key_mask, causal, B, T, C, NH); }
/* dqkv (B,T,3C) += gradient of attention given dout (B,T,C). Accumulates. */
static inline void nb_attention_bwd(nb_backend_t *be, float *dqkv, const float *dout, const float *qkv,
                                    const float *att, const uint8_t *key_mask, bool causal,
                                    int B, int T, int C, int NH)
{ NB_CHECK(be->iface->attention_bwd); be->iface->attention_bwd(be, dqkv, dout, qkv, att, key_mask, causal, B, T, C, NH); }
/* Cross-attention (decoder to encoder): q (B,T,C) of the decoder, kv (B,S,2C)
 * packed [k|v] from the encoder's states -> out (B,T,C); att
 * (nb_attention_state_floats(be, B, NH, T, S) floats) holds what backward
 * needs. key_mask (B,S), may be NULL: 0 =
 * padding position of the encoder, never attended to. No causal mask: every
 * decoder position sees the whole encoder output. */
static inline void nb_xattn_fwd(nb_backend_t *be, float *out, float *att, const float *q, const float *kv,
                                const uint8_t *key_mask, int B, int T, int S, int C, int NH)
{ NB_CHECK(be->iface->xattn_fwd); be->iface->xattn_fwd(be, out, att, q, kv, key_mask, B, T, S, C, NH); }
/* dq (B,T,C) and dkv (B,S,2C) += gradients of cross-attention given dout
 * (B,T,C); key_mask is the forward's. Accumulates. */
static inline void nb_xattn_bwd(nb_backend_t *be, float *dq, float *dkv, const float *dout, const float *q,
                                const float *kv, const float *att, const uint8_t *key_mask,
                                int B, int T, int S, int C, int NH)
{ NB_CHECK(be->iface->xattn_bwd); be->iface->xattn_bwd(be, dq, dkv, dout, q, kv, att, key_mask, B, T, S, C, NH); }
/* Softmax cross-entropy over logits (N,V). losses (N) gets -log p[target];
 * targets < 0 are ignored (loss 0, zero gradient). dlogits (N,V), if not NULL,
 * is *overwritten* with dloss_scale * (softmax - onehot) for each counted row;
 * it may be logits itself (in place, saves a (N,V) buffer). */
static inline void nb_xent_fwd_bwd(nb_backend_t *be, float *losses, float *dlogits, const float *logits,
                                   const int32_t *targets, float dloss_scale, int N, int V)
{ NB_CHECK(be->iface->xent_fwd_bwd); be->iface->xent_fwd_bwd(be, losses, dlogits, logits, targets, dloss_scale, N, V); }
/* *out_host = sum of x[i]^2 in double; synchronous. */
static inline void nb_sumsq(nb_backend_t *be, double *out_host, const float *x, size_t n)
{ NB_CHECK(be->iface->sumsq); be->iface->sumsq(be, out_host, x, n); }
/* One AdamW step (PyTorch semantics, decoupled weight decay, bias correction
 * with the 1-based step). grad is multiplied by grad_scale first (clipping). */
static inline void nb_adamw(nb_backend_t *be, float *p, const float *g, float *m, float *v, size_t n,
                            float lr, float b1, float b2, float eps, float wd, float gscale, int step)
{ NB_CHECK(be->iface->adamw); be->iface->adamw(be, p, g, m, v, n, lr, b1, b2, eps, wd, gscale, step); }

#ifdef __cplusplus
}
#endif

#endif /* NB_BACKEND_H */
