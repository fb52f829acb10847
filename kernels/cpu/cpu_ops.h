/*
 * cpu_ops.h - CPU implementations of the transformer ops of nb_backend_i.
 * Internal to the CPU backend; callers use the wrappers in kernels/backend.h,
 * whose comments are the contracts (shapes, accumulate vs overwrite).
 * NB_CPU_OPS_INIT lists the designated initialisers that cpu_backend.c puts in
 * its table, so adding an op touches this header and its .c file only.
 *
 * Every op here is deterministic: fixed loop and reduction order, no atomics,
 * so the same inputs give bit-identical outputs run to run. The files are
 * compiled once per ISA level (cpu_isa_names.h); with no contraction into
 * fused multiply-adds (-ffp-contract=off) and the same order of operations in
 * every vector width, every level gives the same bits as well.
 */
#ifndef NB_CPU_OPS_H
#define NB_CPU_OPS_H

#include "kernels/backend.h"
#include "kernels/cpu/cpu_isa_names.h"

/* cpu_ops_bias.c */
void nb_cpu_bias_add(nb_backend_t *be, float *y, const float *bias, int rows, int cols);
void nb_cpu_bias_grad(nb_backend_t *be, float *dbias, const float *dy, int rows, int cols);

/* cpu_ops_embed.c */
void nb_cpu_embed_fwd(nb_backend_t *be, float *out, const int32_t *tokens,
                      const float *wte, const float *wpe, int B, int T, int C);
void nb_cpu_embed_bwd(nb_backend_t *be, float *dwte, float *dwpe, const float *dout,
                      const int32_t *tokens, int B, int T, int C);

/* cpu_ops_shift.c */
void nb_cpu_token_shift(nb_backend_t *be, float *out, const float *x, const uint8_t *key_mask,
                        bool causal, bool backward, int B, int T, int C);

/* cpu_ops_layernorm.c */
void nb_cpu_layernorm_fwd(nb_backend_t *be, float *out, float *mean, float *rstd,
                          const float *x, const float *w, const float *b, float eps, int N, int C);
void nb_cpu_layernorm_bwd(nb_backend_t *be, float *dx, float *dw, float *db,
                          const float *dout, const float *x, const float *w,
                          const float *mean, const float *rstd, int N, int C);

/* cpu_ops_gelu.c */
void nb_cpu_gelu_fwd(nb_backend_t *be, float *out, const float *x, size_t n);
void nb_cpu_gelu_bwd(nb_backend_t *be, float *dx, const float *x, const float *dout, size_t n);
void nb_cpu_gelu_erf_fwd(nb_backend_t *be, float *out, const float *x, size_t n);
void nb_cpu_gelu_erf_bwd(nb_backend_t *be, float *dx, const float *x, const float *dout, size_t n);

/* cpu_ops_attention.c */
void nb_cpu_attention_fwd(nb_backend_t *be, float *out, float *att, const float *qkv,
                          const uint8_t *key_mask, bool causal, int B, int T, int C, int NH);
void nb_cpu_attention_bwd(nb_backend_t *be, float *dqkv, const float *dout,
                          const float *qkv, const float *att, const uint8_t *key_mask,
                          bool causal, int B, int T, int C, int NH);

/* cpu_ops_xattn.c */
void nb_cpu_xattn_fwd(nb_backend_t *be, float *out, float *att, const float *q, const float *kv,
                      const uint8_t *key_mask, int B, int T, int S, int C, int NH);
void nb_cpu_xattn_bwd(nb_backend_t *be, float *dq, float *dkv, const float *dout, const float *q,
                      const float *kv, const float *att, const uint8_t *key_mask,
                      int B, int T, int S, int C, int NH);

/* cpu_ops_xent.c */
void nb_cpu_xent_fwd_bwd(nb_backend_t *be, float *losses, float *dlogits,
                         const float *logits, const int32_t *targets,
                         float dloss_scale, int N, int V);

/* cpu_ops_optim.c */
void nb_cpu_sumsq(nb_backend_t *be, double *out_host, const float *x, size_t n);
void nb_cpu_adamw(nb_backend_t *be, float *param, const float *grad, float *m, float *v,
                  size_t n, float lr, float beta1, float beta2, float eps,
                  float weight_decay, float grad_scale, int step);

/* cpu_scratch.c: a per-backend scratch buffer for ops that need temporary
 * memory (attention backward). Returns at least `bytes` bytes, 64-byte
 * aligned, valid until the next call on the same backend or nb_be_free().
 * Aborts via NB_CHECK when the allocation fails (ops cannot fail by
 * contract). Thread: the backend's thread. */
float *nb_cpu_scratch(nb_backend_t *be, size_t bytes);
/* The same for one of several independent buffers (slot < NB_CPU_SCRATCH_SLOTS):
 * the matmul's bf16 rounding uses its own, so an op may pass its scratch to
 * nb_matmul. */
enum { NB_CPU_SCRATCH_OPS, NB_CPU_SCRATCH_MM_A, NB_CPU_SCRATCH_MM_B, NB_CPU_SCRATCH_SLOTS };
float *nb_cpu_scratch_slot(nb_backend_t *be, int slot, size_t bytes);
void nb_cpu_scratch_free(nb_backend_t *be);
/* The matmul precision (nb_be_set_precision); fp32 until set. */
nb_precision_t nb_cpu_precision(nb_backend_t *be);
int nb_cpu_set_precision(nb_backend_t *be, nb_precision_t p);
/* An fp32 matmul whatever the precision: the attention ops' internal
 * products (the CUDA backend's fused attention is fp32 too). Arguments as
 * nb_matmul. */
void nb_cpu_matmul_f32(nb_backend_t *be, bool ta, bool tb, int m, int n, int k, float alpha,
                       const float *a, int lda, int64_t sa, const float *b, int ldb, int64_t sb,
                       float beta, float *c, int ldc, int64_t sc, int batch);

#define NB_CPU_OPS_INIT                          \
    .bias_add = nb_cpu_bias_add,                 \
    .bias_grad = nb_cpu_bias_grad,               \
    .embed_fwd = nb_cpu_embed_fwd,               \
    .embed_bwd = nb_cpu_embed_bwd,               \
    .token_shift = nb_cpu_token_shift,           \
    .layernorm_fwd = nb_cpu_layernorm_fwd,       \
    .layernorm_bwd = nb_cpu_layernorm_bwd,       \
    .gelu_fwd = nb_cpu_gelu_fwd,                 \
    .gelu_bwd = nb_cpu_gelu_bwd,                 \
    .gelu_erf_fwd = nb_cpu_gelu_erf_fwd,         \
    .gelu_erf_bwd = nb_cpu_gelu_erf_bwd,         \
    .attention_fwd = nb_cpu_attention_fwd,       \
    .attention_bwd = nb_cpu_attention_bwd,       \
    .xattn_fwd = nb_cpu_xattn_fwd,               \
    .xattn_bwd = nb_cpu_xattn_bwd,               \
    .xent_fwd_bwd = nb_cpu_xent_fwd_bwd,         \
    .sumsq = nb_cpu_sumsq,                       \
    .adamw = nb_cpu_adamw,

#endif
