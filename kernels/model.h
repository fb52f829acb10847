/*
 * model.h - the transformer family of Nebula, cut into parts.
 *
 * A model is a config (nb_model_config_t). It runs as one or more contiguous
 * *parts*: [embedding] + blocks [first, last) + [head]. A part is a pipeline
 * stage of the distributed runtime, so its input and output are plain device
 * tensors:
 *   input   tokens (B,T) int32       when the part holds the embedding,
 *           activations (B,T,C) f32  otherwise;
 *   output  activations (B,T,C) f32  when the part has no head,
 *           the loss (a host float)  when it has the head (targets given).
 * Backward takes the gradient of the part's output ((B,T,C), or nothing for a
 * head part: the loss is the end) and produces the gradient of its input
 * ((B,T,C); none for a part with the embedding).
 *
 * Memory: a part's parameters are carved out of ONE device allocation and its
 * gradients out of another, in the order nb_model_layout() lists (the one
 * list of a part's tensors; docs/model.md), so the optimizer and the codecs
 * see flat buffers. Gradients accumulate across
 * backward calls until nb_part_zero_grad(). What one micro-batch needs for
 * its backward lives in an nb_part_acts_t (one per in-flight micro-batch),
 * also one allocation. Everything is allocated through the backend: the
 * model runs unchanged on any backend; host code reads values with
 * nb_be_to_host().
 *
 * Init is seeded per tensor from (seed, global block index, tensor id), so a
 * part's weights equal the same layers of the full model for any partition.
 *
 * Thread: a part and its acts are used by one thread at a time (the thread
 * that owns the backend). Errors: negative NB_E* codes; a short message in
 * the caller's err buffer where one is taken.
 */
#ifndef NB_MODEL_H
#define NB_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"
#include "kernels/optim.h"

typedef enum {
    NB_MODEL_NORM_PRE = 0,  /* GPT-2: x + f(LN(x)); final LayerNorm before the head */
    NB_MODEL_NORM_POST = 1, /* BERT: LN(x + f(x)); LayerNorm after the embedding */
} nb_norm_t;

typedef enum {
    NB_MODEL_HEAD_LM = 0,     /* logits over the vocabulary, cross-entropy per position */
    NB_MODEL_HEAD_MLM = 1,    /* same logits; only positions with target >= 0 count */
    NB_MODEL_HEAD_SEQCLS = 2, /* first token -> n_classes, one target per sequence */
    NB_MODEL_HEAD_TOKCLS = 3, /* every token -> n_classes (2 for replaced-token detection) */
} nb_head_kind_t;

typedef enum {
    NB_MODEL_GELU_TANH = 0, /* tanh approximation (GPT-2's gelu_new); the default */
    NB_MODEL_GELU_ERF = 1,  /* exact erf form (BERT's hidden_act "gelu") */
} nb_gelu_t;

/* LayerNorm eps of a config whose ln_eps is 0 (GPT-2's and PyTorch's). */
#define NB_MODEL_LN_EPS_DEFAULT 1e-5f

typedef struct {
    int n_layer;
    int d_model;
    int n_head;
    int d_ff;
    int vocab;
    int max_seq;
    bool causal;
    nb_norm_t norm;
    nb_head_kind_t head;
    int n_classes;       /* seqcls/tokcls only; ignored otherwise */
    bool tie_embeddings; /* lm/mlm: the head uses wte transposed */
    float ln_eps;        /* LayerNorm eps of every LayerNorm; 0 = 1e-5 (BERT: 1e-12) */
    nb_gelu_t gelu;      /* GELU form of the MLP */
    int mask_token;      /* mlm training: input ID of masked positions; 0 = vocab - 1
                            (BERT's [MASK] is 103; ID 0 is [PAD], never a mask) */
    /* Bottleneck adapters (kernels/model_adapter.c): after each sub-layer
     * named in adapter_after of blocks [adapter_first, adapter_last), the
     * sub-layer's output z becomes z + up(gelu(down(z))) before the
     * residual add; down (A,C), up (C,A), A = adapter_size. up starts at
     * zero, so a pretrained model starts unchanged. adapter_size 0 = none
     * (then the other three are ignored). */
    int adapter_size;
    unsigned adapter_after;         /* NB_ADAPTER_* bits */
    int adapter_first, adapter_last;
    /* Decoder blocks: every block has cross-attention to an encoder output
     * (nb_part_input_t.enc) between its self-attention and its MLP
     * (kernels/model_xattn.c). */
    bool cross_attn;
    /* low-rank split (job.lowrank; kernels/model_lowrank.c): block
     * lowrank_block's MLP output projection is U S V of rank lowrank_rank
     * and the block drops its MLP residual. lowrank_rank 0 = none. */
    int lowrank_block;
    int lowrank_rank;
    /* Token shift (model_pass.c, backend.h nb_token_shift_fwd; job.model.token_shift): before
     * block 0 (and before the embedding LayerNorm of a post-LN model) the
     * embedding sum e (B,T,C) has channels [0, C/4) taken from position
     * t-1 and, in a bidirectional model, channels [C/4, C/2) from position
     * t+1; a neighbour past either end of the sequence, or a padding
     * position (key mask 0), gives zeros. No parameters: every token sees
     * its neighbours from the first step (docs/model.md). */
    bool token_shift;
} nb_model_config_t;

/* Sub-layers an adapter can follow (nb_model_config_t.adapter_after). */
enum { NB_ADAPTER_ATTN = 1, NB_ADAPTER_XATTN = 2, NB_ADAPTER_FFN = 4 };
/* Whether block l of cfg has an adapter after sub-layer bit `which`. */
bool nb_model_has_adapter(const nb_model_config_t *cfg, int l, unsigned which);
/* Sets cfg's adapters from the job's words (job.adapters, docs/config.md):
 * size, the sub-layers they follow ("attn", "xattn", "ffn") and blocks
 * ("all", "I" or "I-J", inclusive; NULL or "" = all). size 0 with no
 * sub-layer = no adapters. 0, or NB_EINVAL with the reason in why (a size
 * of 0 or wider than d_model, an unknown sub-layer, xattn in a model
 * without cross-attention, a block the model lacks); cfg's adapter fields
 * are then cleared. */
int nb_model_set_adapters(nb_model_config_t *cfg, int size, const char *const *after, int n_after,
                          const char *blocks, char *why, size_t whylen);

/* NULL when cfg can work, else a static message naming the field. */
const char *nb_model_config_validate(const nb_model_config_t *cfg);
/* The LayerNorm eps cfg means: ln_eps, or NB_MODEL_LN_EPS_DEFAULT when 0.
 * Compare configs through this, so 0 and 1e-5 are the same model. */
float nb_model_ln_eps(const nb_model_config_t *cfg);
/* The mask token cfg means: mask_token, or vocab - 1 when 0. */
int nb_model_mask_token(const nb_model_config_t *cfg);
/* "tanh" / "erf" and the parser (0, or NB_EINVAL for an unknown name). */
const char *nb_gelu_name(nb_gelu_t g);
int nb_gelu_parse(const char *s, nb_gelu_t *out);
/* Name of a head kind / norm placement ("lm", "mlm", "seqcls", "tokcls";
 * "pre", "post") and their parsers (0, or NB_EINVAL for an unknown name). */
const char *nb_head_kind_name(nb_head_kind_t h);
int nb_head_kind_parse(const char *s, nb_head_kind_t *out);
const char *nb_norm_name(nb_norm_t n);
int nb_norm_parse(const char *s, nb_norm_t *out);

/* Which slice of the model a part holds. */
typedef struct {
    bool embed; /* token + position embedding (and its LayerNorm when post-LN) */
    int first;  /* first block, 0 <= first <= last <= n_layer */
    int last;   /* one past the last block */
    bool head;  /* final LayerNorm (pre-LN), head and loss */
} nb_part_spec_t;

/* The whole model as one part. */
nb_part_spec_t nb_part_spec_full(const nb_model_config_t *cfg);

typedef struct nb_part nb_part_t;
typedef struct nb_part_acts nb_part_acts_t;

/* One parameter tensor of a part. */
typedef struct {
    char name[32];     /* e.g. "wte", "h3.qkv.w" (global block index) */
    int ndim;
    int64_t shape[2];
    size_t offset;     /* in floats, into the flat parameter buffer */
    size_t numel;
    bool decay;        /* weight decay applies (2-D tensors: GPT-2 convention) */
    bool trainable;    /* false: frozen (nb_part_set_frozen): no gradient, no
                          optimizer state, never updated */
    size_t grad_offset;/* trainable tensors: in floats, into the flat gradient
                          buffer (which holds the trainable tensors only, in
                          buffer order); 0 and meaningless when frozen */
} nb_param_info_t;

/* Creates a part on be with seeded weights and zero gradients.
 * tie_with: when cfg->tie_embeddings and the part has the head but not the
 * embedding, the head needs wte: pass the part holding the embedding, in
 * the same process and on the same backend; the head then reads that part's
 * wte and, through nb_part_finish_grads(), adds to its gradient (tie_with
 * must outlive this part; one head part per embedding part).
 * Otherwise pass NULL. Errors: NB_EINVAL (bad config or spec, or a backend
 * lacking an op the passes need; message in err), NB_ENOMEM. On error *out
 * is NULL. */
int nb_part_new(nb_backend_t *be, const nb_model_config_t *cfg, const nb_part_spec_t *spec,
                uint64_t seed, nb_part_t *tie_with, nb_part_t **out, char *err, size_t errlen);
/* Frees the part, its parameters and gradients; NULL is a no-op. Free every
 * acts of the part first. */
void nb_part_free(nb_part_t *p);

const nb_model_config_t *nb_part_config(const nb_part_t *p);
const nb_part_spec_t *nb_part_spec(const nb_part_t *p);
nb_backend_t *nb_part_backend(const nb_part_t *p);

/* The parameter tensors, in buffer order. Borrowed, valid while p lives. */
int nb_part_num_tensors(const nb_part_t *p);
const nb_param_info_t *nb_part_tensor(const nb_part_t *p, int i);
/* Index of the tensor called name, or -1. */
int nb_part_find_tensor(const nb_part_t *p, const char *name);
/* The flat parameter buffer holds nb_part_num_params() floats (every
 * tensor, at nb_param_info_t.offset); the flat gradient buffer holds
 * nb_part_num_grads() floats (the trainable tensors only, at
 * nb_param_info_t.grad_offset; equal to nb_part_num_params() when nothing
 * is frozen). Both are device memory, borrowed; nb_part_grads() is never
 * NULL, also when every tensor of p is frozen.
 * nb_part_grads() first calls nb_part_finish_grads(p), so what it returns
 * always includes a tied head's share of wte's gradient. */
size_t nb_part_num_params(const nb_part_t *p);
size_t nb_part_num_grads(const nb_part_t *p);
float *nb_part_params(nb_part_t *p);
float *nb_part_grads(nb_part_t *p);
/* Device bytes of gradient memory p holds: the flat gradient buffer plus,
 * for a tied head, its own buffer of wte's gradient (none when wte is
 * frozen). For memory accounting. */
size_t nb_part_grad_bytes(const nb_part_t *p);
/* Sets every gradient of p to zero, including a tied head's pending wte
 * gradient (not the wte gradient of a tie_with part). */
void nb_part_zero_grad(nb_part_t *p);
/* With tied embeddings the head accumulates its share of wte's gradient in
 * a buffer of its own; this adds that buffer into the wte gradient (p may be
 * the head part or the part holding wte) and clears it. Keeping the two
 * sums apart until the end of the step makes the result independent of how
 * the head's and the embedding's backwards interleave (GPipe, 1F1B, one
 * part or several): a single a + b. nb_part_grads() calls it, so reading
 * the gradients once after the step's last backward (sum of squares,
 * optimizer, codecs) is all a caller does; reading them mid-step is still
 * correct but adds in another order. A no-op without a tied head. */
void nb_part_finish_grads(nb_part_t *p);
/* Re-initialises every parameter from seed (what nb_part_new did).
 * Errors: NB_ENOMEM (host staging buffer); p is then partly initialised. */
int nb_part_init_params(nb_part_t *p, uint64_t seed);

/* ---- frozen tensors ------------------------------------------------------
 *
 * A frozen tensor takes part in forward and backward (the gradient of the
 * part's input still flows through it) but has no gradient buffer and no
 * optimizer state, and backward skips its weight-gradient computation.
 * With tied embeddings a frozen wte is frozen for the head too (it is one
 * tensor). Where the part holds the embedding and it and the part's first
 * k blocks are all frozen, backward stops above them: nothing below needs
 * a gradient. */

/* Freezes the tensors i with frozen[i] (nb_part_num_tensors entries; NULL
 * = none) and makes every other one trainable: rebuilds the gradient
 * layout (grad_offset), reallocates the gradient buffer for the trainable
 * tensors only and zeroes it. Call between steps, before creating the
 * optimizer (nb_part_optim_new), with no backward pending. A tied head
 * part follows its embedding part's wte. Errors: NB_ENOMEM (p unchanged). */
int nb_part_set_frozen(nb_part_t *p, const bool *frozen);
/* Trainable tensors of p (those with a gradient). */
int nb_part_num_trainable(const nb_part_t *p);

/* Patterns that choose the frozen tensors of a model by global name
 * (job.freeze and job.trainable, docs/config.md): a tensor is frozen when
 * it matches a freeze pattern and no trainable pattern. A pattern is a
 * glob over the names of docs/model.md: '*' matches any run of characters
 * (dots included), '?' one character; the rest of [A-Za-z0-9._-] matches
 * itself. */
#define NB_FREEZE_MAX 32         /* patterns per list */
#define NB_FREEZE_PATTERN_MAX 64 /* bytes of a pattern, NUL included */
typedef struct {
    int n_freeze, n_trainable;
    char freeze[NB_FREEZE_MAX][NB_FREEZE_PATTERN_MAX];
    char trainable[NB_FREEZE_MAX][NB_FREEZE_PATTERN_MAX];
} nb_freeze_spec_t;

/* Whether name matches glob pattern pat. */
bool nb_freeze_glob(const char *pat, const char *name);
/* Whether f freezes the tensor called name. */
bool nb_freeze_matches(const nb_freeze_spec_t *f, const char *name);
/* Checks f against the whole model of cfg: counts in range, every pattern
 * well-formed and matching at least one tensor of the model, trainable
 * patterns only beside freeze patterns, and at least one tensor left to
 * train. 0, or NB_EINVAL with the reason in why (naming the key
 * "job.freeze[i]" / "job.trainable[i]" and the pattern). */
int nb_freeze_check(const nb_model_config_t *cfg, const nb_freeze_spec_t *f, char *why, size_t whylen);
/* Freezes the tensors of p that f matches (nb_part_set_frozen). 0 or
 * NB_ENOMEM. */
int nb_part_freeze(nb_part_t *p, const nb_freeze_spec_t *f);

/* One tensor of a part's layout, as nb_model_layout reports it. */
typedef struct {
    const char *name;           /* "wte", "h3.qkv.w": valid during the call only */
    int ndim;                   /* 1 or 2 */
    int64_t shape[2];           /* shape[1] = 1 for a vector */
    size_t numel;
    size_t offset;              /* in floats, into the part's parameter buffer */
    uint32_t init_key, init_id; /* the stream that seeds its init (model_part.c) */
} nb_layout_tensor_t;
/* Called once per tensor; 0 goes on, a negative NB_E* code stops. */
typedef int (*nb_layout_fn)(void *ud, const nb_layout_tensor_t *t);

/* The single source of a part's tensor list (kernels/model_layout.c): calls
 * fn (may be NULL: only counts) once per tensor of the part of cfg holding
 * spec, in buffer order, with the names, shapes, offsets and init streams
 * nb_part_new uses. Needs no backend and allocates nothing; an empty spec
 * (no embedding, blocks or head) lists nothing. Returns the tensor count;
 * NB_EINVAL, fn never called, when cfg fails nb_model_config_validate or
 * spec is NULL or not a block range of 0..n_layer; NB_ERANGE when a
 * tensor's size or the running parameter count overflows size_t (fn has
 * seen the tensors before it); or the negative code fn returned. */
int nb_model_layout(const nb_model_config_t *cfg, const nb_part_spec_t *spec, nb_layout_fn fn, void *ud);

/* The tensors a part of cfg holding spec would have, in buffer order,
 * without allocating the part: a malloc'd array of *n entries (free it),
 * all trainable. NULL on NB_EINVAL (bad config or spec) or NB_ENOMEM. */
nb_param_info_t *nb_part_layout(const nb_model_config_t *cfg, const nb_part_spec_t *spec, int *n);

/* An AdamW optimizer (kernels/optim.h) for p's trainable tensors: one
 * segment per trainable tensor, its state laid out as p's gradient buffer
 * (nb_part_num_grads floats each for m and v), decay as the tensor says.
 * Create it after nb_part_set_frozen. Errors: as nb_optim_new. */
int nb_part_optim_new(const nb_part_t *p, const nb_optim_config_t *c, nb_optim_t **out);

/* Activations of one in-flight micro-batch of shape (B,T), T <= max_seq.
 * Errors: NB_EINVAL (sizes; also when one activation tensor would reach
 * 2^31 elements), NB_ENOMEM. Free with nb_part_acts_free. */
int nb_part_acts_new(nb_part_t *p, int B, int T, nb_part_acts_t **out);
void nb_part_acts_free(nb_part_acts_t *a);
/* The same for a part with cross_attn blocks whose encoder output has S
 * positions (nb_part_acts_new uses S = T). */
int nb_part_acts_new_cross(nb_part_t *p, int B, int T, int S, nb_part_acts_t **out);
/* Gradient of the encoder output (B,S,C) after backward, summed over the
 * part's cross-attention blocks; NULL for a part without them. */
const float *nb_part_acts_denc(const nb_part_acts_t *a);

/* Inputs of one forward call; every pointer is device memory on the part's
 * backend and is copied into the acts, so the caller may reuse it. */
typedef struct {
    const int32_t *tokens;   /* (B,T); parts with the embedding */
    const float *x;          /* (B,T,C); parts without the embedding */
    const uint8_t *key_mask; /* (B,T) 1 = real token, 0 = padding; NULL = none.
                                Every part with blocks needs it when used. */
    const int32_t *targets;  /* head parts: (B,T) for lm/mlm/tokcls, (B) for
                                seqcls; < 0 = ignored. NULL = no loss, no backward. */
    float loss_scale;        /* head parts: gradient of the loss that backward
                                propagates (1/m for m accumulated micro-batches) */
    const float *enc;        /* cross_attn parts: the encoder's output (B,S,C),
                                S as given to nb_part_acts_new_cross */
    const uint8_t *enc_mask; /* cross_attn parts: (B,S) 1 = real encoder
                                position, 0 = padding; NULL = none */
    long loss_count;         /* head parts: 0 = normalise by this call's counted
                                targets; > 0 = this call is one shard of a larger
                                micro-batch with loss_count counted targets in
                                all: loss and gradient are normalised by it, and
                                a shard without a counted target is allowed */
} nb_part_input_t;

/* Runs the part forward for one micro-batch. Head parts with targets also
 * compute the loss (mean over counted targets, not scaled; with loss_count
 * the shard's share: its sum over loss_count) into *loss and
 * the gradient of the logits for backward. Token IDs and targets are
 * checked on the host first. Errors: NB_EINVAL (a missing input, a token
 * outside the vocabulary, a target outside the classes, or no counted
 * target). */
int nb_part_forward(nb_part_t *p, nb_part_acts_t *a, const nb_part_input_t *in, float *loss);
/* Called by nb_part_backward on its thread each time the gradients from
 * float `offset` to the end of the flat gradient buffer (the trainable
 * tensors' offsets, nb_param_info_t.grad_offset) are complete for
 * that call: after the head, after each block (last to first), after the
 * embedding (offset 0), as the buffer is laid out in the reverse order.
 * The ops are enqueued, not necessarily done: on an asynchronous backend
 * the callee orders after them. A caller reducing gradients across data-
 * parallel replicas starts on them while the rest of the backward runs.
 * A tied head's share of wte is not in the embedding's range until
 * nb_part_finish_grads(). */
typedef void (*nb_part_grad_ready_cb)(void *ud, size_t offset);
/* Sets (cb not NULL) or removes the callback of p's backward. */
void nb_part_set_grad_ready(nb_part_t *p, nb_part_grad_ready_cb cb, void *ud);
/* True when a head part is tied to p's wte (p holds the embedding and the
 * head's share of its gradient arrives through nb_part_finish_grads). */
bool nb_part_has_tied_head(const nb_part_t *p);

/* Backward of the last forward on a: dout (B,T,C) device for parts without
 * the head, NULL for head parts. Accumulates parameter gradients; leaves the
 * input gradient in nb_part_acts_dinput(a) for parts without the embedding.
 * Errors: NB_ESTATE (no forward with targets on a), NB_EINVAL. */
int nb_part_backward(nb_part_t *p, nb_part_acts_t *a, const float *dout);

/* Output activations (B,T,C) of the last forward (parts without head). */
const float *nb_part_acts_output(const nb_part_acts_t *a);
/* Gradient of the input (B,T,C) after backward (parts without embedding). */
const float *nb_part_acts_dinput(const nb_part_acts_t *a);
/* Logits of the last forward (head parts): rows x cols, device memory. */
const float *nb_part_acts_logits(const nb_part_acts_t *a, int *rows, int *cols);
/* Device bytes of one acts object. */
size_t nb_part_acts_bytes(const nb_part_acts_t *a);
/* Device bytes an acts object of shape (B,T) would take, without allocating
 * (for memory planning: m in-flight micro-batches need m of them); 0 for an
 * invalid shape (a decoder part's with S = T encoder positions). The part
 * also keeps one backward scratch of about B*T*(7C + 2F) floats (adapters
 * add B*T*(C + 2A), cross-attention B*T*C + 2*B*S*C), shared by all its
 * acts. */
size_t nb_part_acts_size(const nb_part_t *p, int B, int T);

/* ---- low-rank split (kernels/model_lowrank.c; docs/lowrank.md) ----------
 *
 * With cfg->lowrank_rank r > 0, block k = cfg->lowrank_block computes its
 * MLP output as y = U (S (V h)) + b (h = gelu(fc(.)), V (r,F), S (r,r),
 * U (C,r): tensors hk.fcproj.v/.s/.u replace hk.fcproj.w) and drops the
 * MLP's residual branch (post-LN: out = LN2(y); pre-LN: out = y).
 * Parts may be cut inside block k, between V and S: a part with
 * last == k + 1 and no head then ends at the factor z = V h (B,T,r), and
 * the part with first == k + 1 and no embedding begins with the rest of
 * block k (S, U, fcproj.b and, post-LN, ln2) and takes z as its input.
 * Only r values per position cross that cut instead of C. */

/* Width of a part's output activations per position: r for a part that
 * ends at the factor, else d_model. */
int nb_part_out_width(const nb_part_t *p);
/* Width of the input activations per position of a part without the
 * embedding: r for a part that begins at the factor, else d_model. */
int nb_part_in_width(const nb_part_t *p);
/* The same for a part of cfg holding spec, without the part. */
int nb_part_spec_out_width(const nb_model_config_t *cfg, const nb_part_spec_t *spec);
int nb_part_spec_in_width(const nb_model_config_t *cfg, const nb_part_spec_t *spec);
/* Checks the low-rank fields of cfg against its model: 0, or NB_EINVAL
 * with the reason in why (naming job.lowrank.block / job.lowrank.rank,
 * the value and the bound: the block must exist, the rank must be at
 * least 1 and at most min(d_model, d_ff), the rank of the layer). */
int nb_lowrank_check(const nb_model_config_t *cfg, char *why, size_t whylen);
/* Truncated SVD of the row-major m x n matrix w (host): u (m,r) row-major,
 * s (r,r) diagonal with the r largest singular values in decreasing
 * order, v (r,n) row-major, so that u s v is the best rank-r approximation
 * of w. Signs are fixed (each column of u has its largest-magnitude entry
 * positive) so every process computes the same factors. 0, NB_EINVAL
 * (r outside 1..min(m,n)), NB_ENOMEM, or NB_EIO (LAPACK did not converge). */
int nb_lowrank_svd(const float *w, int m, int n, int r, float *u, float *s, float *v);
/* Initialises the part dst of a low-rank model from dense, a part of the
 * same model without the split (lowrank_rank 0) that holds every block
 * of dst: each tensor of dst takes the tensor of the same name of dense
 * (one dense lacks, e.g. a new classifier head, keeps its seeded init),
 * and hk.fcproj.u/.s/.v the truncated SVD of dense's hk.fcproj.w. With
 * lowrank_rank 0 it only copies. Errors: NB_EINVAL (a tensor of another
 * shape, or dense lacks hk.fcproj.w: named in err), NB_ENOMEM, NB_EIO. */
int nb_part_lowrank_init(nb_part_t *dst, nb_part_t *dense, char *err, size_t errlen);

#endif /* NB_MODEL_H */
