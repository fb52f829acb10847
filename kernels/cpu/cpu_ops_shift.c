/*
 * cpu_ops_shift.c - the token shift of the model's embedding (model.h,
 * token_shift) on the CPU backend, forward and backward in one function.
 *
 * Shapes: x, out (B,T,C); key_mask (B,T) or NULL. q = C / 4. Channel group
 * g (0: channels [0,q), 1: [q,2q), the latter only when not causal) reads
 * position t + d_g with d_0 = -1, d_1 = +1 in the forward. The backward is
 * the transpose: position t takes the gradient of position t - d_g, and
 * only when t itself is not padding (a padding source fed nothing forward).
 * Pure data movement, bit-identical on every backend.
 */
#include <string.h>
#include "kernels/cpu/cpu_ops.h"

static bool real(const uint8_t *key_mask, size_t bt) { return !key_mask || key_mask[bt]; }

void nb_cpu_token_shift(nb_backend_t *be, float *out, const float *x, const uint8_t *key_mask,
                        bool causal, bool backward, int B, int T, int C)
{
    (void)be;
    NB_CHECK(B >= 0 && T >= 0 && C >= 0);
    int q = C / 4, groups = causal ? 1 : 2;
    size_t row = (size_t)C * sizeof(float);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            size_t bt = (size_t)b * T + t;
            float *o = out + bt * C;
            memcpy(o, x + bt * C, row); /* channels past the shifted groups */
            for (int g = 0; g < groups; g++) {
                int d = g == 0 ? -1 : 1;
                int s = backward ? t - d : t + d; /* the position read */
                bool live = s >= 0 && s < T && real(key_mask, backward ? bt : (size_t)b * T + s);
                if (live)
                    memcpy(o + g * q, x + ((size_t)b * T + s) * C + g * q, (size_t)q * sizeof(float));
                else
                    memset(o + g * q, 0, (size_t)q * sizeof(float));
            }
        }
}
