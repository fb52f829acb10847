/*
 * cpu_ops_xattn.c - multi-head cross-attention on the CPU backend (a
 * decoder's queries against an encoder's keys and values), forward and
 * backward.
 *
 * Shapes: q, dq, out, dout (B,T,C) decoder side; kv, dkv (B,S,2C) packed
 * [k | v] along the last axis, from the encoder's states; att (B,NH,T,S)
 * softmax probabilities, row t = query t; key_mask (B,S) or NULL, 0 = an
 * encoder padding position. Head h uses columns h*HS .. h*HS+HS-1 of q, k, v
 * and out. HS = C/NH, scale 1/sqrt(HS). No causal mask: a decoder position
 * sees the whole encoder output.
 *
 * As in cpu_ops_attention.c the products go through nb_cpu_matmul_f32 batched over
 * the heads of one sequence with strides into the packed layout. Masked keys
 * get probability exactly 0, so the backward needs no mask; a query whose
 * keys are all masked gets an all-zero row and a zero output.
 */
#include <math.h>
#include "kernels/cpu/cpu_ops.h"

/* Softmax of one row of S scores in place, with additive mask madd. */
static void softmax_row(float *row, const float *madd, int S)
{
    float mx = -INFINITY;
    for (int j = 0; j < S; j++) {
        row[j] += madd[j];
        mx = row[j] > mx ? row[j] : mx;
    }
    if (mx == -INFINITY) {
        for (int j = 0; j < S; j++)
            row[j] = 0.0f;
        return;
    }
    float sum = 0.0f;
    for (int j = 0; j < S; j++) {
        row[j] = expf(row[j] - mx);
        sum += row[j];
    }
    float inv = 1.0f / sum;
    for (int j = 0; j < S; j++)
        row[j] *= inv;
}

void nb_cpu_xattn_fwd(nb_backend_t *be, float *out, float *att, const float *q, const float *kv,
                      const uint8_t *key_mask, int B, int T, int S, int C, int NH)
{
    NB_CHECK(B >= 0 && T > 0 && S > 0 && C > 0 && NH > 0 && C % NH == 0);
    int HS = C / NH, C2 = 2 * C;
    float scale = 1.0f / sqrtf((float)HS);
    float *madd = nb_cpu_scratch(be, (size_t)S * sizeof(float));
    size_t TS = (size_t)T * S;
    for (int b = 0; b < B; b++) {
        const float *qb = q + (size_t)b * T * C;
        const float *k = kv + (size_t)b * S * C2, *v = k + C;
        float *ab = att + (size_t)b * NH * TS;
        for (int j = 0; j < S; j++)
            madd[j] = (!key_mask || key_mask[(size_t)b * S + j]) ? 0.0f : -INFINITY;
        /* att[h] = scale * Q_h K_h^T  (T,S) */
        nb_cpu_matmul_f32(be, false, true, T, S, HS, scale, qb, C, HS, k, C2, HS, 0.0f, ab, S, (int64_t)TS, NH);
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++)
                softmax_row(ab + h * TS + (size_t)t * S, madd, S);
        /* out_h = att[h] V_h  (T,HS), written into its head's columns */
        nb_cpu_matmul_f32(be, false, false, T, HS, S, 1.0f, ab, S, (int64_t)TS, v, C2, HS,
                  0.0f, out + (size_t)b * T * C, C, HS, NH);
    }
}

void nb_cpu_xattn_bwd(nb_backend_t *be, float *dq, float *dkv, const float *dout, const float *q,
                      const float *kv, const float *att, const uint8_t *key_mask,
                      int B, int T, int S, int C, int NH)
{
    (void)key_mask; /* masked keys have probability 0 in att */
    NB_CHECK(B >= 0 && T > 0 && S > 0 && C > 0 && NH > 0 && C % NH == 0);
    int HS = C / NH, C2 = 2 * C;
    float scale = 1.0f / sqrtf((float)HS);
    size_t TS = (size_t)T * S;
    size_t bytes;
    NB_CHECK(nb_mul_size(TS * sizeof(float), (size_t)NH, &bytes) == 0);
    float *datt = nb_cpu_scratch(be, bytes);
    for (int b = 0; b < B; b++) {
        const float *qb = q + (size_t)b * T * C;
        const float *k = kv + (size_t)b * S * C2, *v = k + C;
        float *dqb = dq + (size_t)b * T * C;
        float *dk = dkv + (size_t)b * S * C2, *dv = dk + C;
        const float *ab = att + (size_t)b * NH * TS;
        const float *db = dout + (size_t)b * T * C;
        /* datt[h] = dout_h V_h^T  (T,S) */
        nb_cpu_matmul_f32(be, false, true, T, S, HS, 1.0f, db, C, HS, v, C2, HS, 0.0f, datt, S, (int64_t)TS, NH);
        /* dV_h += att[h]^T dout_h  (S,HS) */
        nb_cpu_matmul_f32(be, true, false, S, HS, T, 1.0f, ab, S, (int64_t)TS, db, C, HS, 1.0f, dv, C2, HS, NH);
        /* softmax backward, scale folded in */
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const float *a = ab + h * TS + (size_t)t * S;
                float *d = datt + h * TS + (size_t)t * S;
                float s = 0.0f;
                for (int j = 0; j < S; j++)
                    s += a[j] * d[j];
                for (int j = 0; j < S; j++)
                    d[j] = scale * a[j] * (d[j] - s);
            }
        /* dQ_h += dpre K_h  (T,HS); dK_h += dpre^T Q_h  (S,HS) */
        nb_cpu_matmul_f32(be, false, false, T, HS, S, 1.0f, datt, S, (int64_t)TS, k, C2, HS, 1.0f, dqb, C, HS, NH);
        nb_cpu_matmul_f32(be, true, false, S, HS, T, 1.0f, datt, S, (int64_t)TS, qb, C, HS, 1.0f, dk, C2, HS, NH);
    }
}
