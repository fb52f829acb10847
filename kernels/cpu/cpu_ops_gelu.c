/*
 * cpu_ops_gelu.c - GELU with the tanh approximation (PyTorch
 * approximate='tanh'), forward and backward, on the CPU backend:
 *   gelu(x) = 0.5 x (1 + tanh(k (x + 0.044715 x^3))),  k = sqrt(2/pi).
 * computed as x * sigmoid(2u) (the same function, fewer operations and no
 * cancellation for large negative x). Vectorised through
 * cpu_vec.h; the tail is computed as a padded vector, so every element gets
 * the same arithmetic wherever it sits.
 *
 * The exact form (PyTorch's default, BERT's hidden_act "gelu"),
 *   gelu(x) = 0.5 x (1 + erf(x / sqrt 2)),
 * is a plain loop over libm's erff and expf: one scalar function whatever
 * the ISA level, so every level gives the same bits, and as accurate as
 * libm (about 1 ulp) where a polynomial of our own would need its own
 * proof. It is slower than the tanh form; it runs on (B,T,F) once forward
 * and once backward per block.
 */
#include <math.h>
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_vec.h"

#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_A 0.044715f

/* 0.5 (1 + tanh(u)) = sigmoid(2u) = 1 / (1 + e), e = exp(-2u): one exp and
 * one division per element, and no cancellation in 1 + tanh(u) for large
 * negative x. */
static inline nb_v16 gelu_v(nb_v16 x)
{
    nb_v16 u = GELU_K * (x + GELU_A * x * x * x);
    return x / (1.0f + nb_v_exp(-2.0f * u));
}

/* d/dx: 0.5 (1 + th) + 0.5 x (1 - th^2) k (1 + 3a x^2) with th = tanh(u),
 * rewritten with s = sigmoid(2u) = 1/(1+e): s + 2 x s (1 - s) k (1 + 3a x^2),
 * and 1 - s = e s computed without cancellation. */
static inline nb_v16 gelu_grad_v(nb_v16 x)
{
    nb_v16 x2 = x * x;
    /* clamped so e stays finite: e * s would be inf * 0 for x << 0 */
    nb_v16 e = nb_v_exp(nb_v_min(-2.0f * GELU_K * (x + GELU_A * x2 * x), nb_v_set1(80.0f)));
    nb_v16 s = 1.0f / (1.0f + e);
    return s + 2.0f * x * (s * (e * s)) * GELU_K * (1.0f + 3.0f * GELU_A * x2);
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

#define GELU_SQRT1_2 0.70710678118654752440f    /* 1/sqrt(2) */
#define GELU_INV_SQRT_2PI 0.39894228040143267794f /* 1/sqrt(2 pi) */

void nb_cpu_gelu_erf_fwd(nb_backend_t *be, float *out, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        out[i] = v * 0.5f * (1.0f + erff(v * GELU_SQRT1_2));
    }
}

/* d/dx = Phi(x) + x phi(x), Phi(x) = 0.5 (1 + erf(x/sqrt2)),
 * phi(x) = exp(-x^2/2) / sqrt(2 pi) (PyTorch's GeluBackward, none). */
void nb_cpu_gelu_erf_bwd(nb_backend_t *be, float *dx, const float *x, const float *dout, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        float cdf = 0.5f * (1.0f + erff(v * GELU_SQRT1_2));
        float pdf = expf(-0.5f * v * v) * GELU_INV_SQRT_2PI;
        dx[i] += (cdf + v * pdf) * dout[i];
    }
}
