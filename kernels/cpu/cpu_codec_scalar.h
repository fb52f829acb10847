/*
 * cpu_codec_scalar.h - the scalar definitions of the codec primitives'
 * element conversions and of the stochastic-rounding offset. Every vector
 * path of kernels/cpu/cpu_codec.c, at every ISA level, must give these bits
 * exactly (tests/codec/test_cpu_codec.c, tests/kernels/test_cpu_levels.c).
 *
 * Static inline, so the per-ISA copies of the CPU backend and the tests each
 * get their own copy of one definition. Pure functions, any thread.
 */
#ifndef NB_CPU_CODEC_SCALAR_H
#define NB_CPU_CODEC_SCALAR_H

#include <stdint.h>
#include <string.h>

static inline uint32_t nb_cpu_codec_f32_bits(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
static inline float nb_cpu_codec_bits_f32(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

/* fp32 -> IEEE fp16, round to nearest even; overflow to inf; NaN made quiet
 * with the payload's top bits kept (what F16C's vcvtps2ph does). */
static inline uint16_t nb_cpu_codec_f16_from_f32(float x)
{
    uint32_t u = nb_cpu_codec_f32_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffU;
    if (a >= 0x7f800000U) /* inf or NaN (NaN made quiet, payload top bits kept) */
        return sign | (a > 0x7f800000U ? (uint16_t)(0x7e00 | ((a >> 13) & 0x3ff)) : 0x7c00);
    if (a >= 0x477ff000U) /* rounds to >= 65520: overflow to inf */
        return sign | 0x7c00;
    if (a < 0x38800000U) { /* below the smallest normal half: denormal or zero */
        if (a < 0x33000000U) /* below half the smallest denormal: +-0 */
            return sign;
        uint32_t e = a >> 23;                   /* 102..112 */
        uint32_t m = (a & 0x7fffff) | 0x800000; /* 24 significant bits */
        uint32_t shift = 126 - e;               /* 14..24 */
        uint32_t h = m >> shift;
        uint32_t rem = m & ((1U << shift) - 1);
        uint32_t half = 1U << (shift - 1);
        if (rem > half || (rem == half && (h & 1)))
            h++;
        return sign | (uint16_t)h;
    }
    /* normal: rebias exponent, round the 13 dropped bits to nearest even */
    uint32_t h = (a - 0x38000000U) >> 13;
    uint32_t rem = a & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
        h++;
    return sign | (uint16_t)h;
}

/* IEEE fp16 -> fp32, exact. */
static inline float nb_cpu_codec_f32_from_f16(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0x1f)
        return nb_cpu_codec_bits_f32(sign | 0x7f800000U | (m << 13));
    if (e == 0) {
        if (m == 0)
            return nb_cpu_codec_bits_f32(sign);
        float v = (float)m * (1.0f / 16777216.0f); /* m * 2^-24, exact */
        return sign ? -v : v;
    }
    return nb_cpu_codec_bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

/* fp32 -> bf16, round to nearest even (denormals kept); NaN stays a quiet NaN. */
static inline uint16_t nb_cpu_codec_bf16_from_f32(float x)
{
    uint32_t u = nb_cpu_codec_f32_bits(x);
    if ((u & 0x7fffffffU) > 0x7f800000U)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffU + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

/* The stochastic-rounding offset in [0, 1) for element i under seed: a
 * counter-based hash, identical in every implementation of quant. */
static inline uint32_t nb_cpu_codec_mix32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}
static inline float nb_cpu_codec_sr_u(uint64_t seed, uint32_t i)
{
    uint32_t h = nb_cpu_codec_mix32(i * 0x9E3779B9U + (uint32_t)seed);
    h = nb_cpu_codec_mix32(h ^ (uint32_t)(seed >> 32));
    return (float)(h >> 8) * (1.0f / 16777216.0f);
}

/* The code of one element under absmax quantisation with inv = qmax / max|x|
 * (0 for an all-zero or non-finite block): round to nearest even, or
 * floor(x * inv + u) when sr. The product and the sum are rounded separately
 * (no fused multiply-add), as on every ISA path. */
static inline int32_t nb_cpu_codec_quant_one(float x, float inv, float qmax, int sr,
                                             uint64_t seed, uint32_t i)
{
    float p = x * inv;
    float v = sr ? __builtin_floorf(p + nb_cpu_codec_sr_u(seed, i)) : __builtin_nearbyintf(p);
    v = __builtin_fminf(__builtin_fmaxf(v, -qmax), qmax);
    return (int32_t)v;
}

#endif /* NB_CPU_CODEC_SCALAR_H */
