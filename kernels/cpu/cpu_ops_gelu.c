/*
 * cpu_ops_gelu.c - GELU with the tanh approximation (PyTorch
 * approximate='tanh'), forward and backward, on the CPU backend:
 *   gelu(x) = 0.5 x (1 + tanh(k (x + 0.044715 x^3))),  k = sqrt(2/pi).
 * The backward uses PyTorch's formula term by term. Vectorised through
 * cpu_vec.h; the tail is computed as a padded vector, so every element gets
 * the same arithmetic wherever it sits.
 */
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_vec.h"

#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_A 0.044715f

static inline nb_v16 gelu_v(nb_v16 x)
{
    nb_v16 inner = GELU_K * (x + GELU_A * x * x * x);
    return 0.5f * x * (1.0f + nb_v_tanh(inner));
}

static inline nb_v16 gelu_grad_v(nb_v16 x)
{
    nb_v16 x2 = x * x;
    nb_v16 th = nb_v_tanh(GELU_K * (x + GELU_A * x2 * x));
    nb_v16 left = 0.5f * x, right = 1.0f + th;
    nb_v16 dleft = 0.5f * right;
    nb_v16 dright = left * (1.0f - th * th) * GELU_K * (1.0f + 3.0f * GELU_A * x2);
    return dleft + dright;
}

void nb_cpu_gelu_fwd(nb_backend_t *be, float *out, const float *x, size_t n)
{
    size_t i = 0;
    for (; i + NB_VL <= n; i += NB_VL)
        nb_v_store(out + i, gelu_v(nb_v_load(x + i)));
    if (i < n)
        nb_v_store_part(out + i, gelu_v(nb_v_load_part(x + i, n - i, 0.0f)), n - i);
}

void nb_cpu_gelu_bwd(nb_backend_t *be, float *dx, const float *x, const float *dout, size_t n)
{
    size_t i = 0;
    for (; i + NB_VL <= n; i += NB_VL)
        nb_v_store(dx + i, nb_v_load(dx + i) + gelu_grad_v(nb_v_load(x + i)) * nb_v_load(dout + i));
    if (i < n) {
        size_t r = n - i;
        nb_v16 g = gelu_grad_v(nb_v_load_part(x + i, r, 0.0f)) * nb_v_load_part(dout + i, r, 0.0f);
        nb_v_store_part(dx + i, nb_v_load_part(dx + i, r, 0.0f) + g, r);
    }
}
