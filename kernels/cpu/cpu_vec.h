/*
 * cpu_vec.h - 16-lane float vectors (GCC/Clang vector extensions) and the
 * vectorised exp/tanh the CPU ops share. The compiler lowers nb_v16 to
 * whatever the target has (one AVX-512 register, two AVX registers, ...), so
 * this stays portable C while hot loops get SIMD without -ffast-math.
 *
 * nb_v_exp is accurate to 2^-23 relative (tested), returns 0
 * below -87.3, +inf above 88.7 and NaN for NaN; it is deterministic (no lookup tables that
 * depend on the CPU). Internal to the CPU backend.
 */
#ifndef NB_CPU_VEC_H
#define NB_CPU_VEC_H

#include <stdint.h>
#include <string.h>
#include <math.h>

#define NB_VL 16
typedef float nb_v16 __attribute__((vector_size(64)));
typedef int32_t nb_v16i __attribute__((vector_size(64)));

static inline nb_v16 nb_v_load(const float *p) { nb_v16 v; memcpy(&v, p, sizeof v); return v; }
static inline void nb_v_store(float *p, nb_v16 v) { memcpy(p, &v, sizeof v); }
static inline nb_v16 nb_v_set1(float x) { return (nb_v16){ x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x }; }

static inline float nb_v_hsum(nb_v16 v)
{
    /* fixed pairwise order: deterministic */
    float s8[8], s4[4];
    for (int i = 0; i < 8; i++) s8[i] = v[i] + v[i + 8];
    for (int i = 0; i < 4; i++) s4[i] = s8[i] + s8[i + 4];
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

static inline float nb_v_hmax(nb_v16 v)
{
    float m = v[0];
    for (int i = 1; i < NB_VL; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}

/* Lane-wise mask ? a : b, mask lanes all ones or zero (a comparison's
 * result); C has no vector ?: so it is spelt with bit operations. */
static inline nb_v16 nb_v_select(nb_v16i mask, nb_v16 a, nb_v16 b)
{
    nb_v16i ia, ib, r;
    memcpy(&ia, &a, sizeof ia);
    memcpy(&ib, &b, sizeof ib);
    r = (mask & ia) | (~mask & ib);
    nb_v16 out;
    memcpy(&out, &r, sizeof out);
    return out;
}
static inline nb_v16 nb_v_max(nb_v16 a, nb_v16 b) { return nb_v_select(a > b, a, b); }
static inline nb_v16 nb_v_min(nb_v16 a, nb_v16 b) { return nb_v_select(a < b, a, b); }

/* e^x: x = n ln2 + r, |r| <= ln2/2, e^r by a minimax polynomial, 2^n by
 * building the exponent bits. */
static inline nb_v16 nb_v_exp(nb_v16 x)
{
    const nb_v16 hi = nb_v_set1(88.7f), lo = nb_v_set1(-87.3f);
    nb_v16 xc = nb_v_min(nb_v_max(x, lo), hi);
    nb_v16 t = xc * 1.44269504088896341f;
    /* round to nearest via the 1.5*2^23 trick (|t| < 128 so it is exact) */
    const nb_v16 magic = nb_v_set1(12582912.0f);
    nb_v16 n = (t + magic) - magic;
    nb_v16 r = xc - n * 0.693145751953125f;
    r = r - n * 1.428606765330187045e-06f;
    /* minimax polynomial for (e^r - 1 - r) / r^2 (the Cephes expf one) */
    nb_v16 p = nb_v_set1(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    nb_v16i ni = __builtin_convertvector(n, nb_v16i);
    /* n in [-126, 128]: split 2^n into two factors so both are normal */
    nb_v16i n1 = ni >> 1, n2 = ni - n1;
    nb_v16i b1 = (n1 + 127) << 23, b2 = (n2 + 127) << 23;
    nb_v16 s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    nb_v16 y = p * s1 * s2;
    nb_v16i under = x < lo, over = x > hi;
    y = nb_v_select(under, nb_v_set1(0.0f), y);
    y = nb_v_select(over, nb_v_set1(INFINITY), y);
    /* NaN in, NaN out: the clamps above would turn it into a number, and a
     * diverging run must show NaN in its loss, not hide it */
    y = nb_v_select(x != x, x, y);
    return y;
}

/* tanh(x) = sign(x) (1 - 2 / (e^{2|x|} + 1)); absolute error ~1e-7. */
static inline nb_v16 nb_v_tanh(nb_v16 x)
{
    nb_v16i neg = x < 0.0f;
    nb_v16 ax = nb_v_select(neg, -x, x);
    nb_v16 e = nb_v_exp(nb_v_min(2.0f * ax, nb_v_set1(40.0f)));
    nb_v16 t = 1.0f - 2.0f / (e + 1.0f);
    t = nb_v_select(neg, -t, t);
    return nb_v_select(x != x, x, t); /* NaN propagates */
}

/* Loads up to NB_VL floats (n < NB_VL allowed), padding with fill. */
static inline nb_v16 nb_v_load_part(const float *p, size_t n, float fill)
{
    nb_v16 v = nb_v_set1(fill);
    for (size_t i = 0; i < n; i++)
        v[i] = p[i];
    return v;
}
static inline void nb_v_store_part(float *p, nb_v16 v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = v[i];
}

#endif /* NB_CPU_VEC_H */
