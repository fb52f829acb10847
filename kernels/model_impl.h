/*
 * model_impl.h - internals of the transformer parts shared by model_part.c
 * (layout, init, acts) and model_pass.c (forward, backward). Not for callers
 * outside kernels/model*.c: they use model.h.
 */
#ifndef NB_MODEL_IMPL_H
#define NB_MODEL_IMPL_H

#include "kernels/model.h"

/* Tensor ids of a block, in buffer order; also the init stream id. */
enum {
    NB_B_LN1W, NB_B_LN1B, NB_B_QKVW, NB_B_QKVB, NB_B_PROJW, NB_B_PROJB,
    NB_B_LN2W, NB_B_LN2B, NB_B_FCW, NB_B_FCB, NB_B_FCPW, NB_B_FCPB,
    /* cross-attention (cross_attn blocks; model_xattn.c) */
    NB_B_XLNW, NB_B_XLNB, NB_B_XQW, NB_B_XQB, NB_B_XKVW, NB_B_XKVB, NB_B_XPROJW, NB_B_XPROJB,
    /* adapters (model_adapter.c): NB_B_AD + 4 * sub-layer (NB_AD_*) +
     * down.w, down.b, up.w, up.b */
    NB_B_AD,
    NB_B_COUNT = NB_B_AD + 12
};
/* Sub-layers an adapter follows, as indices (NB_ADAPTER_* are the bits). */
enum { NB_AD_ATTN, NB_AD_XATTN, NB_AD_FFN, NB_AD_COUNT };
enum { NB_AD_DW, NB_AD_DB, NB_AD_UW, NB_AD_UB };
/* Tensor ids of the embedding and of the head. */
enum { NB_E_WTE, NB_E_WPE, NB_E_LNW, NB_E_LNB, NB_E_COUNT };
enum { NB_H_LNFW, NB_H_LNFB, NB_H_LMW, NB_H_CLSW, NB_H_CLSB, NB_H_COUNT };

/* Init stream "block index" of the embedding and the head (blocks use 0..). */
#define NB_INIT_KEY_EMBED 0xFFFFFFF0u
#define NB_INIT_KEY_HEAD 0xFFFFFFF1u

/* Low-rank split (model_lowrank.c): the tensors of the split block that
 * differ from a plain block's, under a key of their own so that a part
 * beginning at the factor can hold them without the block. */
#define NB_INIT_KEY_LOWRANK 0xFFFFFFF2u
enum { NB_LR_V, NB_LR_S, NB_LR_U, NB_LR_B, NB_LR_LN2W, NB_LR_LN2B, NB_LR_COUNT };
typedef enum {
    NB_LR_NONE = 0,  /* no split block in the part */
    NB_LR_WHOLE,     /* the part holds the whole split block */
    NB_LR_LOWER,     /* the part ends at the factor z (B,T,r) */
    NB_LR_UPPER,     /* the part begins at the factor: S, U, b (, ln2) */
} nb_lr_mode_t;

typedef struct {
    float *w[NB_B_COUNT];
    float *g[NB_B_COUNT];
    size_t goff;               /* the block's first float in the gradient buffer
                                  (where its trainable tensors start) */
} nb_block_ptrs_t;

struct nb_part {
    nb_backend_t *be;
    nb_model_config_t cfg;
    nb_part_spec_t spec;
    int n_info;
    nb_param_info_t *info;     /* host array, n_info entries */
    uint32_t *init_key;        /* per tensor: block key and tensor id */
    uint32_t *init_id;
    size_t n_params;
    size_t n_grads;            /* floats of grads: the trainable tensors' */
    int n_trainable;
    float *params, *grads;     /* device, one allocation each (grads at least
                                  one float, so never NULL) */
    int bwd_stop;              /* backward runs blocks [bwd_stop, nblk): the
                                  ones below, and the embedding, are frozen
                                  and need no gradient (model_freeze.c) */
    /* embedding (NULL when absent) */
    float *ew[NB_E_COUNT], *eg[NB_E_COUNT];
    /* head: lm_w/dlm_w point at wte/dwte (possibly another part's) when tied */
    float *hw[NB_H_COUNT], *hg[NB_H_COUNT];
    nb_block_ptrs_t *blocks;   /* last - first entries */
    /* tied head: the head's part of wte's gradient, added into the owner's
     * wte gradient by nb_part_finish_grads() */
    float *tied_grad;
    size_t tied_numel;
    nb_part_t *tied_owner;     /* the part holding wte (this one or tie_with) */
    bool tied_pending;         /* tied_grad holds terms not yet added */
    nb_part_t *tied_head;      /* on the wte owner: the head part tied to it */
    size_t head_offset;        /* first float of the head's tensors (n_params without) */
    size_t head_goff;          /* the same in the gradient buffer (n_grads without) */
    /* low-rank split (model_lowrank.c) */
    nb_lr_mode_t lr_mode;
    float *lrw[NB_LR_COUNT], *lrg[NB_LR_COUNT];
    size_t lr_goff;            /* NB_LR_UPPER: first float of its gradients */
    nb_part_grad_ready_cb grad_ready; /* nb_part_set_grad_ready */
    void *grad_ready_ud;
    /* backward scratch, device, sized for scratch_bt rows */
    size_t scratch_bt;
    void *scratch;
    float *d_ping, *d_pong, *d_tmp, *d_tmp2, *d_qkv, *d_fch, *d_fchg;
    float *d_ada, *d_adb, *d_adz;  /* adapters: (N,A), (N,A), (N,C) */
    float *d_xq, *d_xkv;           /* cross-attention: (N,C), (B*S,2C) */
    size_t scratch_bs;             /* B*S rows d_xkv holds */
};

typedef struct {
    float *ln1, *ln1_mean, *ln1_rstd, *qkv, *att, *atty, *res1;
    float *ln2, *ln2_mean, *ln2_rstd, *fch, *fchg, *res2;
    /* cross-attention: xln (N,C) LayerNorm (pre-LN: of its input; post-LN:
     * of resx), xq (N,C), xkv (B,S,2C), xatt (B,NH,T,S), xatty (N,C),
     * resx (N,C) its residual sum */
    float *xln, *xln_mean, *xln_rstd, *xq, *xkv, *xatt, *xatty, *resx;
    /* adapters per sub-layer: z (N,C) the sub-layer's output, h (N,A)
     * down(z), g (N,A) gelu(h) */
    float *adz[NB_AD_COUNT], *adh[NB_AD_COUNT], *adg[NB_AD_COUNT];
} nb_block_acts_t;

struct nb_part_acts {
    nb_part_t *p;
    int B, T;
    int S;                     /* encoder positions (cross_attn parts) */
    size_t bytes;
    void *mem;                 /* device, one allocation */
    int32_t *tokens;           /* (B,T) */
    uint8_t *mask;             /* (B,T) */
    bool has_mask;
    int32_t *targets;          /* (B,T) or (B) */
    float *input;              /* (B,T,C) copy of x (no embedding) */
    float *emb_raw, *emb_mean, *emb_rstd, *emb_out;
    float *emb_sum;            /* (B,T,C) wte + wpe before the token shift (token_shift only) */
    nb_block_acts_t *blocks;   /* host array */
    float *lnf, *lnf_mean, *lnf_rstd, *cls_in, *logits, *dlogits, *losses;
    float *enc, *denc;         /* (B,S,C) cross_attn parts: copy of the
                                  encoder output and its gradient */
    uint8_t *enc_mask;         /* (B,S) */
    bool has_enc_mask;
    float *dinput;             /* (B,T,C); (B,T,r) beginning at the factor */
    /* low-rank split: z (B,T,r) = V h, s = S z (B,T,r); a part beginning
     * at the factor also keeps y (B,T,C) and LN2(y) with its statistics */
    float *lr_z, *lr_s, *lr_y, *lr_ln, *lr_mean, *lr_rstd;
    int out_rows, out_cols;    /* logits shape */
    /* host scratch for validating inputs and summing the loss */
    int32_t *host_ids;
    float *host_losses;
    bool fwd_done, can_bwd;
};

/* Fills the part's tensor table from nb_model_layout (p->cfg, p->spec
 * set; p->info, init_key and init_id hold cap entries), all trainable,
 * gradient offsets equal to parameter offsets; sets n_info, n_params and
 * head_offset. 0 or NB_ENOMEM (bad config, count overflow). */
int nb__part_build_layout(nb_part_t *p, int cap);
/* An enumeration of a part's tensors under way (model_layout.c). */
typedef struct {
    nb_layout_fn fn;
    void *ud;
    size_t n_params; /* floats of the tensors listed so far */
    int n;           /* tensors listed so far */
    int rc;          /* the first error (NB_ERANGE or fn's): the rest is skipped */
} nb__layout_t;
/* Lists one tensor (d1 unused for a vector) at the end of L's buffer. */
void nb__layout_add(nb__layout_t *L, const char *name, int ndim, int64_t d0, int64_t d1, uint32_t key,
                    uint32_t id);
/* Tensors a part of spec has at most (the cap build_layout needs). */
int nb__part_layout_cap(const nb_part_spec_t *spec);
/* Points the named weight and gradient slots at their place in the flat
 * buffers; a frozen tensor's gradient slot is NULL. */
void nb__part_resolve(nb_part_t *p);
/* Makes a tied head's own wte-gradient buffer agree with its owner's wte:
 * allocated while wte trains, freed while it is frozen. owner is the part
 * holding wte. 0 or NB_ENOMEM. */
int nb__part_tied_sync(nb_part_t *owner);

/* Linear layer and GELU of model_pass.c, for model_adapter.c and
 * model_xattn.c. y (N,OC) = x (N,IC) @ w^T + beta * y (+ b); backward:
 * dx = dy @ w + dx_beta * dx (dx NULL: skipped), dw += dy^T x, db += sums
 * (NULL: frozen, skipped). */
void nb__linear_fwd(nb_backend_t *be, float *y, const float *x, const float *w, const float *b,
                    int N, int IC, int OC, float beta);
void nb__linear_bwd(nb_backend_t *be, float *dx, float dx_beta, float *dw, float *db,
                    const float *dy, const float *x, const float *w, int N, int IC, int OC);
void nb__gelu_fwd(nb_part_t *p, float *out, const float *x, size_t n);
void nb__gelu_bwd(nb_part_t *p, float *dx, const float *x, const float *dout, size_t n);

/* model_adapter.c. Adapter tensors of block l in the layout (model_layout.c
 * lists them after the block's own and its cross-attention's). */
void nb__adapter_layout(const nb_model_config_t *c, int l, nb__layout_t *L);
/* dst (N,C) = resid + S(x @ w^T + b), S the adapter of block i's sub-layer
 * k (NB_AD_*) or the identity where it has none. resid may be dst. */
void nb__sublayer_fwd(nb_part_t *p, nb_part_acts_t *a, int i, int k, float *dst, const float *resid,
                      const float *x, const float *w, const float *b, int IC);
/* Given dr, the gradient of the sub-layer's residual sum, returns the
 * gradient of its output z before the adapter (dr itself where block i
 * has no adapter after sub-layer k; else p->d_adz) and accumulates the
 * adapter's weight gradients. */
const float *nb__adapter_bwd(nb_part_t *p, nb_part_acts_t *a, int i, int k, const float *dr);

/* model_xattn.c. Cross-attention tensors of block l in the layout. */
void nb__xattn_layout(const nb_model_config_t *c, int l, nb__layout_t *L);
/* Forward of block i's cross-attention sub-layer on the residual stream
 * `h` (pre-LN: res1; post-LN: ln1); returns the stream the MLP reads
 * (pre-LN: resx; post-LN: xln). */
const float *nb__xattn_fwd(nb_part_t *p, nb_part_acts_t *a, int i, const float *h);
/* Backward: d (N,C) holds the gradient of what nb__xattn_fwd returned
 * and is overwritten with the gradient of h; adds to a->denc and the
 * weight gradients. t is a free (N,C) buffer (clobbered); neither may be
 * p->d_adz. */
void nb__xattn_bwd(nb_part_t *p, nb_part_acts_t *a, int i, const float *h, float *d, float *t);

/* Output of block i (0-based within the part) of a forward pass. */
const float *nb__block_out(const nb_part_acts_t *a, int i);

/* ---- low-rank split (model_lowrank.c) ---- */
/* Where the split block sits relative to a part of cfg holding spec. */
nb_lr_mode_t nb__lowrank_mode(const nb_model_config_t *cfg, const nb_part_spec_t *spec);
/* Adds the tensors of the split block (global index l) that a part of c
 * holding s has, in buffer order (for NB_LR_UPPER: called once, before
 * the blocks). */
void nb__lowrank_layout(const nb_model_config_t *c, const nb_part_spec_t *s, int l, nb__layout_t *L);
/* Whether plain tensor id of block l of c is replaced by a low-rank one or
 * (NB_LR_LOWER) left to the part above. */
bool nb__lowrank_skips(const nb_model_config_t *c, int l, int id);
/* Forward of the split block (index i within the part, input x), and
 * its backward (dout: gradient of its output, (N,r) for NB_LR_LOWER;
 * dx: gradient of x). Use the part's scratch like block_bwd. */
void nb__lowrank_block_fwd(nb_part_t *p, nb_part_acts_t *a, int i, const float *x);
void nb__lowrank_block_bwd(nb_part_t *p, nb_part_acts_t *a, int i, const float *x, const float *dout, float *dx);
/* NB_LR_UPPER: the rest of the split block from the factor in a->input,
 * and its backward (dout (N,C) -> dz (N,r)). */
void nb__lowrank_upper_fwd(nb_part_t *p, nb_part_acts_t *a);
void nb__lowrank_upper_bwd(nb_part_t *p, nb_part_acts_t *a, const float *dout, float *dz);
/* NB_LR_UPPER: the output of the rest of the split block. */
const float *nb__lowrank_upper_out(const nb_part_acts_t *a);

#endif /* NB_MODEL_IMPL_H */
