/*
 * cpu_ops_embed.c - token + learned position embedding on the CPU backend.
 * Shapes: tokens (B,T); wte (V,C); wpe (maxT,C) or NULL; out, dout (B,T,C).
 * Token ids are validated by the caller (the model checks them against V
 * when a batch is loaded); a negative id is a broken invariant here.
 */
#include <string.h>
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_vec.h"

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
                int c = 0;
                for (; c + NB_VL <= C; c += NB_VL)
                    nb_v_store(o + c, nb_v_load(e + c) + nb_v_load(p + c));
                for (; c < C; c++)
                    o[c] = e[c] + p[c];
            } else {
                memcpy(o, e, (size_t)C * sizeof *o);
            }
        }
}

static void add_row(float *y, const float *x, int C)
{
    int c = 0;
    for (; c + NB_VL <= C; c += NB_VL)
        nb_v_store(y + c, nb_v_load(y + c) + nb_v_load(x + c));
    for (; c < C; c++)
        y[c] += x[c];
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
            if (dwte)
                add_row(dwte + (size_t)id * C, d, C);
            if (dwpe)
                add_row(dwpe + (size_t)t * C, d, C);
        }
}
