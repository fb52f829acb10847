/*
 * cpu_ops_attention.c - multi-head scaled dot-product self-attention on the
 * CPU backend, forward and backward.
 *
 * Shapes: qkv, dqkv (B,T,3C) packed [q | k | v] along the last axis, head h
 * using columns h*HS .. h*HS+HS-1 of each part; out, dout (B,T,C), heads
 * concatenated the same way; att (B,NH,T,T) softmax probabilities, row t =
 * query t; key_mask (B,T) or NULL, 0 = padding key. HS = C/NH, scale
 * 1/sqrt(HS).
 *
 * The four products per head (Q K^T, att V and the three of the backward) go
 * through nb_cpu_matmul_f32 (fp32 at every job.precision, as the CUDA
 * backend's fused attention) batched over the NH heads of one sequence, with strides
 * straight into the packed layout: no transposes, no copies. Masked keys get
 * probability exactly 0, so the backward needs no mask: every gradient path
 * through a masked entry is multiplied by its zero probability. A query whose
 * keys are all masked gets an all-zero att row and a zero output.
 */
#include <math.h>
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_vec.h"

/* Softmax of one row in place over keys [0, L) with additive mask madd
 * (0 or -inf per key); entries [L, T) become 0. */
static void softmax_row(float *row, const float *madd, int L, int T)
{
    nb_v16 vmax = nb_v_set1(-INFINITY);
    int j = 0;
    for (; j + NB_VL <= L; j += NB_VL) {
        nb_v16 v = nb_v_load(row + j) + nb_v_load(madd + j);
        nb_v_store(row + j, v);
        vmax = nb_v_max(vmax, v);
    }
    float mx = nb_v_hmax(vmax);
    for (; j < L; j++) {
        row[j] += madd[j];
        mx = row[j] > mx ? row[j] : mx;
    }
    if (mx == -INFINITY) { /* every key masked: attend to nothing */
        for (j = 0; j < T; j++)
            row[j] = 0.0f;
        return;
    }
    nb_v16 vm = nb_v_set1(mx), acc = nb_v_set1(0.0f);
    j = 0;
    for (; j + NB_VL <= L; j += NB_VL) {
        nb_v16 e = nb_v_exp(nb_v_load(row + j) - vm);
        nb_v_store(row + j, e);
        acc += e;
    }
    if (j < L) {
        nb_v16 e = nb_v_exp(nb_v_load_part(row + j, (size_t)(L - j), -INFINITY) - vm);
        nb_v_store_part(row + j, e, (size_t)(L - j));
        acc += e; /* padded lanes are exp(-inf) = 0 */
    }
    float inv = 1.0f / nb_v_hsum(acc);
    nb_v16 vinv = nb_v_set1(inv);
    j = 0;
    for (; j + NB_VL <= L; j += NB_VL)
        nb_v_store(row + j, nb_v_load(row + j) * vinv);
    for (; j < L; j++)
        row[j] *= inv;
    for (j = L; j < T; j++)
        row[j] = 0.0f;
}

void nb_cpu_attention_fwd(nb_backend_t *be, float *out, float *att, const float *qkv,
                          const uint8_t *key_mask, bool causal, int B, int T, int C, int NH)
{
    NB_CHECK(B >= 0 && T > 0 && C > 0 && NH > 0 && C % NH == 0);
    int HS = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)HS);
    float *madd = nb_cpu_scratch(be, (size_t)T * sizeof(float));
    size_t TT = (size_t)T * T;
    for (int b = 0; b < B; b++) {
        const float *q = qkv + (size_t)b * T * C3, *k = q + C, *v = q + 2 * C;
        float *ab = att + (size_t)b * NH * TT;
        for (int j = 0; j < T; j++)
            madd[j] = (!key_mask || key_mask[(size_t)b * T + j]) ? 0.0f : -INFINITY;
        /* att[h] = scale * Q_h K_h^T  (T,T) */
        nb_cpu_matmul_f32(be, false, true, T, T, HS, scale, q, C3, HS, k, C3, HS,
                  0.0f, ab, T, (int64_t)TT, NH);
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++)
                softmax_row(ab + h * TT + (size_t)t * T, madd, causal ? t + 1 : T, T);
        /* out_h = att[h] V_h  (T,HS), written into its head's columns */
        nb_cpu_matmul_f32(be, false, false, T, HS, T, 1.0f, ab, T, (int64_t)TT, v, C3, HS,
                  0.0f, out + (size_t)b * T * C, C, HS, NH);
    }
}

void nb_cpu_attention_bwd(nb_backend_t *be, float *dqkv, const float *dout,
                          const float *qkv, const float *att, const uint8_t *key_mask,
                          bool causal, int B, int T, int C, int NH)
{
    NB_CHECK(B >= 0 && T > 0 && C > 0 && NH > 0 && C % NH == 0);
    int HS = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)HS);
    size_t TT = (size_t)T * T;
    size_t bytes;
    NB_CHECK(nb_mul_size(TT * sizeof(float), (size_t)NH, &bytes) == 0);
    float *datt = nb_cpu_scratch(be, bytes);
    for (int b = 0; b < B; b++) {
        const float *q = qkv + (size_t)b * T * C3, *k = q + C, *v = q + 2 * C;
        float *dq = dqkv + (size_t)b * T * C3, *dk = dq + C, *dv = dq + 2 * C;
        const float *ab = att + (size_t)b * NH * TT;
        const float *db = dout + (size_t)b * T * C;
        /* datt[h] = dout_h V_h^T */
        nb_cpu_matmul_f32(be, false, true, T, T, HS, 1.0f, db, C, HS, v, C3, HS,
                  0.0f, datt, T, (int64_t)TT, NH);
        /* dV_h += att[h]^T dout_h */
        nb_cpu_matmul_f32(be, true, false, T, HS, T, 1.0f, ab, T, (int64_t)TT, db, C, HS,
                  1.0f, dv, C3, HS, NH);
        /* softmax backward, scale folded in:
         * dpre = scale * att * (datt - sum_j att*datt) */
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const float *a = ab + h * TT + (size_t)t * T;
                float *d = datt + h * TT + (size_t)t * T;
                int L = causal ? t + 1 : T;
                nb_v16 acc = nb_v_set1(0.0f);
                int j = 0;
                for (; j + NB_VL <= L; j += NB_VL)
                    acc += nb_v_load(a + j) * nb_v_load(d + j);
                float s = nb_v_hsum(acc);
                for (; j < L; j++)
                    s += a[j] * d[j];
                nb_v16 vs = nb_v_set1(s);
                j = 0;
                for (; j + NB_VL <= L; j += NB_VL)
                    nb_v_store(d + j, scale * nb_v_load(a + j) * (nb_v_load(d + j) - vs));
                for (; j < L; j++)
                    d[j] = scale * a[j] * (d[j] - s);
                for (; j < T; j++)
                    d[j] = 0.0f;
            }
        /* dQ_h += dpre K_h ; dK_h += dpre^T Q_h */
        nb_cpu_matmul_f32(be, false, false, T, HS, T, 1.0f, datt, T, (int64_t)TT, k, C3, HS,
                  1.0f, dq, C3, HS, NH);
        nb_cpu_matmul_f32(be, true, false, T, HS, T, 1.0f, datt, T, (int64_t)TT, q, C3, HS,
                  1.0f, dk, C3, HS, NH);
    }
}
