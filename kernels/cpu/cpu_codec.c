/*
 * cpu_codec.c - the CPU backend's codec primitives: fp32 <-> fp16 / bf16
 * conversion and blockwise absmax int8 / int4 quantisation (top-k is in
 * cpu_codec_topk.c). Compiled once per ISA level: the block loops here hand
 * each block to that level's vector body (cpu_codec_simd.h: AVX-512, AVX2 +
 * F16C, or none) and finish what it leaves with the scalar definitions of
 * cpu_codec_scalar.h. Every level gives identical bits
 * (tests/codec/test_cpu_codec.c under each level, tests/kernels/test_cpu_levels.c).
 *
 * Determinism: no fused multiply-adds anywhere (the build uses
 * -ffp-contract=off, and the vector bodies multiply and add separately), so
 * no level rounds once where another rounds twice.
 */
#include <math.h>
#include <string.h>
#include "kernels/cpu/cpu_codec.h"
#include "kernels/cpu/cpu_codec_simd.h"

/* ---- conversions ------------------------------------------------------------ */

static void f16_block(uint16_t *dst, const float *src, size_t n, float scale)
{
    for (size_t i = simd_f16(dst, src, n, scale); i < n; i++) {
        float x;
        memcpy(&x, src + i, 4);
        uint16_t h = nb_cpu_codec_f16_from_f32(x * scale);
        memcpy(dst + i, &h, 2);
    }
}

static float block_absmax(const float *x, size_t n);

static void cpu_f32_to_f16(nb_backend_t *be, uint16_t *dst, float *scales, const float *src, size_t n)
{
    (void)be;
    for (size_t b0 = 0, bi = 0; b0 < n; b0 += NB_CODEC_F16_BLOCK, bi++) {
        size_t len = n - b0 < NB_CODEC_F16_BLOCK ? n - b0 : NB_CODEC_F16_BLOCK;
        float amax = block_absmax(src + b0, len);
        int e = 0, s = 0;
        if (amax > 0.0f && isfinite(amax)) {
            frexpf(amax, &e);
            s = 15 - e;
            s = s < -100 ? -100 : s > 100 ? 100 : s;
        }
        float inv = ldexpf(1.0f, -s);
        memcpy(scales + bi, &inv, 4);
        f16_block(dst + b0, src + b0, len, ldexpf(1.0f, s));
    }
}

static void f32_block(float *dst, const uint16_t *src, size_t n, float scale)
{
    for (size_t i = simd_f16_to_f32(dst, src, n, scale); i < n; i++) {
        uint16_t h;
        memcpy(&h, src + i, 2);
        float x = nb_cpu_codec_f32_from_f16(h) * scale;
        memcpy(dst + i, &x, 4);
    }
}

static void cpu_f16_to_f32(nb_backend_t *be, float *dst, const uint16_t *src, const float *scales, size_t n)
{
    (void)be;
    for (size_t b0 = 0, bi = 0; b0 < n; b0 += NB_CODEC_F16_BLOCK, bi++) {
        size_t len = n - b0 < NB_CODEC_F16_BLOCK ? n - b0 : NB_CODEC_F16_BLOCK;
        float scale;
        memcpy(&scale, scales + bi, 4);
        f32_block(dst + b0, src + b0, len, scale);
    }
}

static void cpu_f32_to_bf16(nb_backend_t *be, uint16_t *dst, const float *src, size_t n)
{
    (void)be;
    for (size_t i = simd_bf16(dst, src, n); i < n; i++) {
        float x;
        memcpy(&x, src + i, 4);
        uint16_t h = nb_cpu_codec_bf16_from_f32(x);
        memcpy(dst + i, &h, 2);
    }
}

static void cpu_bf16_to_f32(nb_backend_t *be, float *dst, const uint16_t *src, size_t n)
{
    (void)be;
    for (size_t i = simd_bf16_to_f32(dst, src, n); i < n; i++) {
        uint16_t h;
        memcpy(&h, src + i, 2);
        uint32_t u = (uint32_t)h << 16;
        memcpy(dst + i, &u, 4);
    }
}

/* ---- absmax quantisation -------------------------------------------------------- */

/* max|x| over the block, NaN when the block holds a NaN. */
static float block_absmax(const float *x, size_t n)
{
    float m;
    bool nan;
    for (size_t i = simd_absmax(x, n, &m, &nan); i < n; i++) {
        float a;
        memcpy(&a, x + i, 4);
        a = fabsf(a);
        if (a != a)
            nan = true;
        else if (a > m)
            m = a;
    }
    return nan ? NAN : m;
}

static void quant8_block(uint8_t *codes, const float *x, size_t n, float inv, bool sr,
                         uint64_t seed, size_t base)
{
    for (size_t i = simd_quant8(codes, x, n, inv, sr, seed, base); i < n; i++) {
        float v;
        memcpy(&v, x + i, 4);
        codes[i] = (uint8_t)(int8_t)nb_cpu_codec_quant_one(v, inv, 127.0f, sr, seed, (uint32_t)(base + i));
    }
}

static void cpu_quant(nb_backend_t *be, uint8_t *codes, float *scales, const float *x,
                      size_t n, size_t block, int bits, bool sr, uint64_t seed)
{
    (void)be;
    NB_CHECK(block > 0 && (bits == 8 || bits == 4));
    const float qmax = bits == 8 ? 127.0f : 7.0f;
    if (bits == 4 && n)
        codes[(n - 1) / 2] = 0; /* odd tail: high nibble defined */
    for (size_t b0 = 0, bi = 0; b0 < n; b0 += block, bi++) {
        size_t len = n - b0 < block ? n - b0 : block;
        float amax = block_absmax(x + b0, len);
        float scale = amax / qmax;
        float inv = amax > 0.0f && isfinite(amax) ? qmax / amax : 0.0f;
        memcpy(scales + bi, &scale, 4);
        if (bits == 8) {
            quant8_block(codes + b0, x + b0, len, inv, sr, seed, b0);
            continue;
        }
        size_t i = b0;
        if (!(b0 & 1)) /* whole bytes while the block lasts */
            i = simd_quant4(codes, x, i, b0 + len, inv, sr, seed);
        for (; i < b0 + len; i++) {
            float v;
            memcpy(&v, x + i, 4);
            uint8_t q = (uint8_t)(nb_cpu_codec_quant_one(v, inv, qmax, sr, seed, (uint32_t)i) & 0xf);
            if (i & 1)
                codes[i / 2] = (uint8_t)((codes[i / 2] & 0x0f) | (q << 4));
            else
                codes[i / 2] = q;
        }
    }
}

static void dequant8_block(float *y, const uint8_t *codes, size_t n, float scale)
{
    for (size_t i = simd_dequant8(y, codes, n, scale); i < n; i++) {
        float v = (float)(int8_t)codes[i] * scale;
        memcpy(y + i, &v, 4);
    }
}

static void cpu_dequant(nb_backend_t *be, float *y, const uint8_t *codes, const float *scales,
                        size_t n, size_t block, int bits)
{
    (void)be;
    NB_CHECK(block > 0 && (bits == 8 || bits == 4));
    for (size_t b0 = 0, bi = 0; b0 < n; b0 += block, bi++) {
        size_t len = n - b0 < block ? n - b0 : block;
        float scale;
        memcpy(&scale, scales + bi, 4);
        if (bits == 8) {
            dequant8_block(y + b0, codes + b0, len, scale);
            continue;
        }
        size_t i = b0;
        if (!(b0 & 1))
            i = simd_dequant4(y, codes, i, b0 + len, scale);
        for (; i < b0 + len; i++) {
            uint8_t byte = codes[i / 2];
            int32_t q = (i & 1) ? (byte >> 4) : (byte & 0x0f);
            q = q >= 8 ? q - 16 : q;
            float v = (float)q * scale;
            memcpy(y + i, &v, 4);
        }
    }
}

const struct nb_codec_ops nb_cpu_codec_ops = {
    .f32_to_f16 = cpu_f32_to_f16,
    .f16_to_f32 = cpu_f16_to_f32,
    .f32_to_bf16 = cpu_f32_to_bf16,
    .bf16_to_f32 = cpu_bf16_to_f32,
    .quant = cpu_quant,
    .dequant = cpu_dequant,
    .topk = nb_cpu_codec_topk,
    .scatter = nb_cpu_codec_scatter,
};
