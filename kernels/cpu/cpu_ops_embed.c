/*
 * cpu_ops_embed.c - token + learned position embedding on the CPU backend.
 * Shapes: tokens (B,T); wte (V,C); wpe (maxT,C) or NULL; out, dout (B,T,C).
 * Token ids are validated by the caller (the model checks them against V
 * when a batch is loaded); a negative id is a broken invariant here.
 */
#include <string.h>
#include "kernels/cpu/cpu_ops.h"

void nb_cpu_embed_fwd(nb_backend_t *be, float *out, const int32_t *tokens,
                      const float *wte, const float *wpe, int B, int T, int C)
{
    NB_CHECK(B >= 0 && T >= 0 && C >= 0);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            size_t bt = (size_t)b * T + t;
            int32_t id = tokens[bt];
            NB_CHECK(id >= 0);
            float *o = out + bt * C;
            const float *e = wte + (size_t)id * C;
            if (wpe) {
                const float *p = wpe + (size_t)t * C;
                for (int c = 0; c < C; c++)
                    o[c] = e[c] + p[c];
            } else {
                memcpy(o, e, (size_t)C * sizeof *o);
            }
        }
}

/* Scatter-add in (b, t) order: repeated tokens accumulate in a fixed order. */
void nb_cpu_embed_bwd(nb_backend_t *be, float *dwte, float *dwpe, const float *dout,
                      const int32_t *tokens, int B, int T, int C)
{
    NB_CHECK(B >= 0 && T >= 0 && C >= 0);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            size_t bt = (size_t)b * T + t;
            int32_t id = tokens[bt];
            NB_CHECK(id >= 0);
            const float *d = dout + bt * C;
            float *e = dwte + (size_t)id * C;
            for (int c = 0; c < C; c++)
                e[c] += d[c];
            if (dwpe) {
                float *p = dwpe + (size_t)t * C;
                for (int c = 0; c < C; c++)
                    p[c] += d[c];
            }
        }
}
