/* backend.c - backend-independent parts of the backend interface: dtypes,
 * tensors, op queries. */
#include <string.h>
#include "backend.h"

static const size_t dtype_sizes[NB_DTYPE_COUNT] = { 4, 2, 2, 4, 1 };
static const char *const dtype_names[NB_DTYPE_COUNT] = { "f32", "f16", "bf16", "i32", "u8" };

size_t nb_dtype_size(nb_dtype_t dt)
{
    NB_CHECK((unsigned)dt < NB_DTYPE_COUNT);
    return dtype_sizes[dt];
}

const char *nb_dtype_name(nb_dtype_t dt)
{
    return (unsigned)dt < NB_DTYPE_COUNT ? dtype_names[dt] : "?";
}

static const char *const op_names[NB_OP_COUNT] = {
    "matmul", "add", "scale", "bias_add", "bias_grad", "embed_fwd", "embed_bwd",
    "layernorm_fwd", "layernorm_bwd", "gelu_fwd", "gelu_bwd", "attention_fwd",
    "attention_bwd", "xent_fwd_bwd", "sumsq", "adamw", "gelu_erf_fwd", "gelu_erf_bwd",
    "xattn_fwd", "xattn_bwd", "token_shift",
};

const char *nb_op_name(nb_op_t op)
{
    return (unsigned)op < NB_OP_COUNT ? op_names[op] : "?";
}

bool nb_be_supports(const nb_backend_t *be, nb_op_t op)
{
    const nb_backend_i *i = be->iface;
    switch (op) {
    case NB_OP_MATMUL: return i->matmul != NULL;
    case NB_OP_ADD: return i->add != NULL;
    case NB_OP_SCALE: return i->scale != NULL;
    case NB_OP_BIAS_ADD: return i->bias_add != NULL;
    case NB_OP_BIAS_GRAD: return i->bias_grad != NULL;
    case NB_OP_EMBED_FWD: return i->embed_fwd != NULL;
    case NB_OP_EMBED_BWD: return i->embed_bwd != NULL;
    case NB_OP_LAYERNORM_FWD: return i->layernorm_fwd != NULL;
    case NB_OP_LAYERNORM_BWD: return i->layernorm_bwd != NULL;
    case NB_OP_GELU_FWD: return i->gelu_fwd != NULL;
    case NB_OP_GELU_BWD: return i->gelu_bwd != NULL;
    case NB_OP_ATTENTION_FWD: return i->attention_fwd != NULL;
    case NB_OP_ATTENTION_BWD: return i->attention_bwd != NULL;
    case NB_OP_XENT_FWD_BWD: return i->xent_fwd_bwd != NULL;
    case NB_OP_SUMSQ: return i->sumsq != NULL;
    case NB_OP_ADAMW: return i->adamw != NULL;
    case NB_OP_GELU_ERF_FWD: return i->gelu_erf_fwd != NULL;
    case NB_OP_GELU_ERF_BWD: return i->gelu_erf_bwd != NULL;
    case NB_OP_XATTN_FWD: return i->xattn_fwd != NULL;
    case NB_OP_XATTN_BWD: return i->xattn_bwd != NULL;
    case NB_OP_TOKEN_SHIFT: return i->token_shift != NULL;
    default: return false;
    }
}

void nb_be_free(nb_backend_t *be)
{
    if (be)
        be->iface->free(be);
}

static int shape_bytes(nb_dtype_t dt, int ndim, const int64_t *shape, size_t *out)
{
    if (ndim < 0 || ndim > NB_MAX_DIMS)
        return -1;
    size_t n = nb_dtype_size(dt);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || nb_mul_size(n, (size_t)shape[i], &n))
            return -1;
    }
    *out = n;
    return 0;
}

nb_tensor_t nb_tensor_view(nb_backend_t *be, nb_dtype_t dt, void *data, int ndim, const int64_t *shape)
{
    nb_tensor_t t;
    memset(&t, 0, sizeof t);
    NB_CHECK(ndim >= 0 && ndim <= NB_MAX_DIMS);
    t.be = be;
    t.dtype = dt;
    t.ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t.shape[i] = shape[i];
    t.data = data;
    t.owns_data = false;
    return t;
}

nb_tensor_t *nb_tensor_new(nb_backend_t *be, nb_dtype_t dt, int ndim, const int64_t *shape)
{
    size_t bytes;
    if (shape_bytes(dt, ndim, shape, &bytes))
        return NULL;
    nb_tensor_t *t = malloc(sizeof *t);
    if (!t)
        return NULL;
    *t = nb_tensor_view(be, dt, NULL, ndim, shape);
    t->data = nb_be_alloc(be, bytes ? bytes : 1);
    if (!t->data) {
        free(t);
        return NULL;
    }
    t->owns_data = true;
    return t;
}

nb_tensor_t *nb_tensor_zeros(nb_backend_t *be, nb_dtype_t dt, int ndim, const int64_t *shape)
{
    nb_tensor_t *t = nb_tensor_new(be, dt, ndim, shape);
    if (t)
        nb_be_memset0(be, t->data, nb_tensor_nbytes(t));
    return t;
}

void nb_tensor_free(nb_tensor_t *t)
{
    if (!t)
        return;
    if (t->owns_data && t->data)
        nb_be_dealloc(t->be, t->data);
    free(t);
}

int64_t nb_tensor_numel(const nb_tensor_t *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

size_t nb_tensor_nbytes(const nb_tensor_t *t)
{
    return (size_t)nb_tensor_numel(t) * nb_dtype_size(t->dtype);
}
