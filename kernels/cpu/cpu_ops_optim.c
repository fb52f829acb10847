/*
 * cpu_ops_optim.c - optimizer primitives on the CPU backend: the sum of
 * squares behind gradient clipping by global norm, and one AdamW step with
 * exactly torch.optim.AdamW's arithmetic (decoupled weight decay, bias
 * correction with the 1-based step, eps added after the bias-corrected
 * square root).
 */
#include <math.h>
#include "kernels/cpu/cpu_ops.h"

/* Eight double partial sums in a fixed interleave, added pairwise at the
 * end: deterministic, and accurate over millions of elements. */
void nb_cpu_sumsq(nb_backend_t *be, double *out_host, const float *x, size_t n)
{
    double acc[8] = { 0 };
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += (double)x[i + j] * (double)x[i + j];
    for (int j = 0; i < n; i++, j++)
        acc[j] += (double)x[i] * (double)x[i];
    *out_host = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

/* x^n by squaring: only multiplications, each rounded as IEEE says, so the
 * same bits on every processor (libm's pow may pick an FMA variant at run
 * time). Within a few ulp of pow in double, far below float resolution. */
static double pow_int(double x, int n)
{
    double r = 1.0;
    for (; n > 0; n >>= 1, x *= x)
        if (n & 1)
            r *= x;
    return r;
}

void nb_cpu_adamw(nb_backend_t *be, float *param, const float *grad, float *m, float *v,
                  size_t n, float lr, float beta1, float beta2, float eps,
                  float weight_decay, float grad_scale, int step)
{
    NB_CHECK(step >= 1);
    /* scalars in double, as torch computes them in Python */
    double bc1 = 1.0 - pow_int((double)beta1, step);
    double bc2 = 1.0 - pow_int((double)beta2, step);
    float step_size = (float)((double)lr / bc1);
    float bc2_sqrt = (float)sqrt(bc2);
    float decay = (float)(1.0 - (double)lr * (double)weight_decay);
    float w1 = (float)(1.0 - (double)beta1), w2 = (float)(1.0 - (double)beta2);
    for (size_t i = 0; i < n; i++) {
        float g = grad[i] * grad_scale;
        float p = param[i] * decay;
        float mi = m[i] + w1 * (g - m[i]);     /* exp_avg.lerp_(grad, 1-beta1) */
        float vi = v[i] * beta2 + w2 * g * g;  /* exp_avg_sq.mul_(b2).addcmul_(g, g, 1-b2) */
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        param[i] = p - step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
    }
}
