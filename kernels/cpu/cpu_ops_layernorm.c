/*
 * cpu_ops_layernorm.c - LayerNorm over the last dimension on the CPU backend,
 * PyTorch semantics: biased variance, the caller's eps inside the square
 * root (1e-5 for GPT-2, 1e-12 for BERT).
 * Shapes: x, out, dx, dout (N,C); w, b, dw, db (C); mean, rstd (N).
 * One row at a time: the row stays in L1 across its passes.
 */
#include <math.h>
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_vec.h"

void nb_cpu_layernorm_fwd(nb_backend_t *be, float *out, float *mean, float *rstd,
                          const float *x, const float *w, const float *b, float eps, int N, int C)
{
    NB_CHECK(N >= 0 && C > 0 && eps > 0.0f);
    for (int i = 0; i < N; i++) {
        const float *xr = x + (size_t)i * C;
        float *o = out + (size_t)i * C;
        /* mean, then variance around it (two passes over an L1-resident row:
         * more accurate than E[x^2]-E[x]^2 for rows with a large offset) */
        nb_v16 acc = nb_v_set1(0.0f);
        int c = 0;
        for (; c + NB_VL <= C; c += NB_VL)
            acc += nb_v_load(xr + c);
        float s = nb_v_hsum(acc);
        for (; c < C; c++)
            s += xr[c];
        float m = s / (float)C;
        nb_v16 vm = nb_v_set1(m);
        acc = nb_v_set1(0.0f);
        c = 0;
        for (; c + NB_VL <= C; c += NB_VL) {
            nb_v16 d = nb_v_load(xr + c) - vm;
            acc += d * d;
        }
        float v = nb_v_hsum(acc);
        for (; c < C; c++) {
            float d = xr[c] - m;
            v += d * d;
        }
        float rs = 1.0f / sqrtf(v / (float)C + eps);
        nb_v16 vrs = nb_v_set1(rs);
        c = 0;
        for (; c + NB_VL <= C; c += NB_VL)
            nb_v_store(o + c, (nb_v_load(xr + c) - vm) * vrs * nb_v_load(w + c) + nb_v_load(b + c));
        for (; c < C; c++)
            o[c] = (xr[c] - m) * rs * w[c] + b[c];
        if (mean)
            mean[i] = m;
        if (rstd)
            rstd[i] = rs;
    }
}

void nb_cpu_layernorm_bwd(nb_backend_t *be, float *dx, float *dw, float *db,
                          const float *dout, const float *x, const float *w,
                          const float *mean, const float *rstd, int N, int C)
{
    NB_CHECK(N >= 0 && C > 0);
    for (int i = 0; i < N; i++) {
        const float *xr = x + (size_t)i * C;
        const float *g = dout + (size_t)i * C;
        float *dxr = dx + (size_t)i * C;
        float m = mean[i], rs = rstd[i];
        nb_v16 vm = nb_v_set1(m), vrs = nb_v_set1(rs);
        /* pass 1: the two row means the input gradient needs, and the
         * parameter gradients (rows accumulate in order 0..N-1) */
        nb_v16 a1 = nb_v_set1(0.0f), a2 = nb_v_set1(0.0f);
        int c = 0;
        for (; c + NB_VL <= C; c += NB_VL) {
            nb_v16 xh = (nb_v_load(xr + c) - vm) * vrs;
            nb_v16 gv = nb_v_load(g + c);
            nb_v16 dn = gv * nb_v_load(w + c);
            a1 += dn;
            a2 += dn * xh;
            if (dw)
                nb_v_store(dw + c, nb_v_load(dw + c) + gv * xh);
            if (db)
                nb_v_store(db + c, nb_v_load(db + c) + gv);
        }
        float s1 = nb_v_hsum(a1), s2 = nb_v_hsum(a2);
        for (; c < C; c++) {
            float xh = (xr[c] - m) * rs;
            float dn = g[c] * w[c];
            s1 += dn;
            s2 += dn * xh;
            if (dw)
                dw[c] += g[c] * xh;
            if (db)
                db[c] += g[c];
        }
        float mdn = s1 / (float)C, mdnx = s2 / (float)C;
        nb_v16 vmdn = nb_v_set1(mdn), vmdnx = nb_v_set1(mdnx);
        /* pass 2: dx += rstd * (dnorm - mean(dnorm) - xhat * mean(dnorm*xhat)) */
        c = 0;
        for (; c + NB_VL <= C; c += NB_VL) {
            nb_v16 xh = (nb_v_load(xr + c) - vm) * vrs;
            nb_v16 dn = nb_v_load(g + c) * nb_v_load(w + c);
            nb_v_store(dxr + c, nb_v_load(dxr + c) + (dn - vmdn - xh * vmdnx) * vrs);
        }
        for (; c < C; c++) {
            float xh = (xr[c] - m) * rs;
            float dn = g[c] * w[c];
            dxr[c] += (dn - mdn - xh * mdnx) * rs;
        }
    }
}
