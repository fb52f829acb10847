/*
 * cpu_codec.c - the CPU backend's codec primitives: fp32 <-> fp16 / bf16
 * conversion and blockwise absmax int8 / int4 quantisation (top-k is in
 * cpu_codec_topk.c). Hot loops use AVX-512 (F16C conversion, masked tails)
 * when the build targets it; the scalar code below is the definition and the
 * fallback, and both give identical bits (tests/codec/test_cpu_codec.c).
 *
 * Determinism: products that feed a rounding step are written as explicit
 * fused multiply-adds (fmaf / _mm512_fmadd_ps) so the compiler's
 * contraction choices cannot change results between paths.
 */
#include <math.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include "kernels/cpu/cpu_codec.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define NB_CODEC_AVX512 1
#else
#define NB_CODEC_AVX512 0
#endif

/* ---- scalar definitions ------------------------------------------------- */

static inline uint32_t f32_bits(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
static inline float bits_f32(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

uint16_t nb_cpu_codec_f16_from_f32(float x)
{
    uint32_t u = f32_bits(x);
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

float nb_cpu_codec_f32_from_f16(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0x1f)
        return bits_f32(sign | 0x7f800000U | (m << 13));
    if (e == 0) {
        if (m == 0)
            return bits_f32(sign);
        float v = (float)m * (1.0f / 16777216.0f); /* m * 2^-24, exact */
        return sign ? -v : v;
    }
    return bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

uint16_t nb_cpu_codec_bf16_from_f32(float x)
{
    uint32_t u = f32_bits(x);
    if ((u & 0x7fffffffU) > 0x7f800000U)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffU + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

/* ---- conversions ------------------------------------------------------------ */

static void f16_block(uint16_t *dst, const float *src, size_t n, float scale)
{
    size_t i = 0;
#if NB_CODEC_AVX512
    const __m512 s = _mm512_set1_ps(scale);
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_mul_ps(_mm512_loadu_ps(src + i), s);
        _mm256_storeu_si256((__m256i *)(dst + i),
                            _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1U << (n - i)) - 1);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, src + i), s);
        _mm256_mask_storeu_epi16(dst + i, m,
                                 _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        i = n;
    }
#endif
    for (; i < n; i++) {
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
    size_t i = 0;
#if NB_CODEC_AVX512
    const __m512 s = _mm512_set1_ps(scale);
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))), s));
    if (i < n) {
        __mmask16 m = (__mmask16)((1U << (n - i)) - 1);
        _mm512_mask_storeu_ps(dst + i, m, _mm512_mul_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, src + i)), s));
        i = n;
    }
#endif
    for (; i < n; i++) {
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

#if NB_CODEC_AVX512
static inline __m256i bf16_round16(__m512i u)
{
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb));
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, absmask),
                                            _mm512_set1_epi32(0x7f800000));
    __m512i q = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    r = _mm512_mask_mov_epi32(_mm512_srli_epi32(r, 16), nan, q);
    return _mm512_cvtepi32_epi16(r);
}
#endif

static void cpu_f32_to_bf16(nb_backend_t *be, uint16_t *dst, const float *src, size_t n)
{
    (void)be;
    size_t i = 0;
#if NB_CODEC_AVX512
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i), bf16_round16(_mm512_loadu_si512(src + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1U << (n - i)) - 1);
        _mm256_mask_storeu_epi16(dst + i, m, bf16_round16(_mm512_maskz_loadu_epi32(m, src + i)));
        i = n;
    }
#endif
    for (; i < n; i++) {
        float x;
        memcpy(&x, src + i, 4);
        uint16_t h = nb_cpu_codec_bf16_from_f32(x);
        memcpy(dst + i, &h, 2);
    }
}

static void cpu_bf16_to_f32(nb_backend_t *be, float *dst, const uint16_t *src, size_t n)
{
    (void)be;
    size_t i = 0;
#if NB_CODEC_AVX512
    for (; i + 16 <= n; i += 16) {
        __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + i)));
        _mm512_storeu_si512(dst + i, _mm512_slli_epi32(w, 16));
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1U << (n - i)) - 1);
        __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, src + i));
        _mm512_mask_storeu_epi32(dst + i, m, _mm512_slli_epi32(w, 16));
        i = n;
    }
#endif
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + i, 2);
        uint32_t u = (uint32_t)h << 16;
        memcpy(dst + i, &u, 4);
    }
}

/* ---- absmax quantisation -------------------------------------------------------- */

static float block_absmax(const float *x, size_t n)
{
    size_t i = 0;
    float m = 0.0f;
    bool nan = false;
#if NB_CODEC_AVX512
    __m512 vm = _mm512_setzero_ps();
    __mmask16 vnan = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_abs_ps(_mm512_loadu_ps(x + i));
        vnan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        vm = _mm512_max_ps(vm, v);
    }
    if (i < n) {
        __mmask16 k = (__mmask16)((1U << (n - i)) - 1);
        __m512 v = _mm512_abs_ps(_mm512_maskz_loadu_ps(k, x + i));
        vnan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        vm = _mm512_max_ps(vm, v);
        i = n;
    }
    m = _mm512_reduce_max_ps(vm);
    nan = vnan != 0;
#endif
    for (; i < n; i++) {
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

/* The code of one element: the scalar definition of quantisation. */
static inline int32_t quant_one(float x, float inv, float qmax, bool sr, uint64_t seed, size_t i)
{
    float v = sr ? floorf(fmaf(x, inv, nb_cpu_codec_sr_u(seed, (uint32_t)i)))
                 : nearbyintf(x * inv);
    v = fminf(fmaxf(v, -qmax), qmax);
    return (int32_t)v;
}

#if NB_CODEC_AVX512
/* 16 codes from 16 floats at element index base; same maths as quant_one. */
static inline __m512i quant16(__m512 x, __m512 inv, __m512 qmax, bool sr, uint64_t seed, size_t base)
{
    __m512 v;
    if (sr) {
        __m512i idx = _mm512_add_epi32(_mm512_set1_epi32((int)(uint32_t)base),
                                       _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
        __m512i h = _mm512_add_epi32(_mm512_mullo_epi32(idx, _mm512_set1_epi32((int)0x9E3779B9U)),
                                     _mm512_set1_epi32((int)(uint32_t)seed));
#define NB_MIX(h)                                                                   \
    h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));                              \
    h = _mm512_mullo_epi32(h, _mm512_set1_epi32(0x7feb352d));                       \
    h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 15));                              \
    h = _mm512_mullo_epi32(h, _mm512_set1_epi32((int)0x846ca68bU));                 \
    h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
        NB_MIX(h);
        h = _mm512_xor_si512(h, _mm512_set1_epi32((int)(uint32_t)(seed >> 32)));
        NB_MIX(h);
#undef NB_MIX
        __m512 u = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(h, 8)),
                                 _mm512_set1_ps(1.0f / 16777216.0f));
        v = _mm512_roundscale_ps(_mm512_fmadd_ps(x, inv, u), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    } else {
        v = _mm512_roundscale_ps(_mm512_mul_ps(x, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    v = _mm512_min_ps(_mm512_max_ps(v, _mm512_sub_ps(_mm512_setzero_ps(), qmax)), qmax);
    return _mm512_cvttps_epi32(v);
}
#endif

static void quant8_block(uint8_t *codes, const float *x, size_t n, float inv, bool sr,
                         uint64_t seed, size_t base)
{
    size_t i = 0;
#if NB_CODEC_AVX512
    __m512 vinv = _mm512_set1_ps(inv), vq = _mm512_set1_ps(127.0f);
    for (; i + 16 <= n; i += 16) {
        __m512i q = quant16(_mm512_loadu_ps(x + i), vinv, vq, sr, seed, base + i);
        _mm_storeu_si128((__m128i *)(codes + i), _mm512_cvtepi32_epi8(q));
    }
    if (i < n) {
        __mmask16 k = (__mmask16)((1U << (n - i)) - 1);
        __m512i q = quant16(_mm512_maskz_loadu_ps(k, x + i), vinv, vq, sr, seed, base + i);
        _mm_mask_storeu_epi8(codes + i, k, _mm512_cvtepi32_epi8(q));
        i = n;
    }
#endif
    for (; i < n; i++) {
        float v;
        memcpy(&v, x + i, 4);
        codes[i] = (uint8_t)(int8_t)quant_one(v, inv, 127.0f, sr, seed, base + i);
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
#if NB_CODEC_AVX512
        if (!(b0 & 1)) { /* 32 codes -> 16 bytes while the block lasts */
            const __m512 vinv = _mm512_set1_ps(inv), vq = _mm512_set1_ps(qmax);
            const __m128i lo4 = _mm_set1_epi16(0x000f);
            for (; i + 32 <= b0 + len; i += 32) {
                __m128i c0 = _mm512_cvtepi32_epi8(quant16(_mm512_loadu_ps(x + i), vinv, vq, sr, seed, i));
                __m128i c1 = _mm512_cvtepi32_epi8(quant16(_mm512_loadu_ps(x + i + 16), vinv, vq, sr, seed, i + 16));
                /* each 16-bit lane holds codes 2j (low byte) and 2j+1 */
                __m128i p0 = _mm_or_si128(_mm_and_si128(c0, lo4), _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(c0, 8), lo4), 4));
                __m128i p1 = _mm_or_si128(_mm_and_si128(c1, lo4), _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(c1, 8), lo4), 4));
                _mm_storeu_si128((__m128i *)(codes + i / 2), _mm_packus_epi16(p0, p1));
            }
        }
#endif
        for (; i < b0 + len; i++) {
            float v;
            memcpy(&v, x + i, 4);
            uint8_t q = (uint8_t)(quant_one(v, inv, qmax, sr, seed, i) & 0xf);
            if (i & 1)
                codes[i / 2] = (uint8_t)((codes[i / 2] & 0x0f) | (q << 4));
            else
                codes[i / 2] = q;
        }
    }
}

static void dequant8_block(float *y, const uint8_t *codes, size_t n, float scale)
{
    size_t i = 0;
#if NB_CODEC_AVX512
    __m512 s = _mm512_set1_ps(scale);
    for (; i + 16 <= n; i += 16) {
        __m512i q = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(codes + i)));
        _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_cvtepi32_ps(q), s));
    }
    if (i < n) {
        __mmask16 k = (__mmask16)((1U << (n - i)) - 1);
        __m512i q = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, codes + i));
        _mm512_mask_storeu_ps(y + i, k, _mm512_mul_ps(_mm512_cvtepi32_ps(q), s));
        i = n;
    }
#endif
    for (; i < n; i++) {
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
#if NB_CODEC_AVX512
        if (!(b0 & 1)) {
            const __m512 s = _mm512_set1_ps(scale);
            const __m512i even = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
            const __m512i odd = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
            for (; i + 32 <= b0 + len; i += 32) {
                __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(codes + i / 2)));
                __m512 lo = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 28), 28));
                __m512 hi = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 24), 28));
                _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_permutex2var_ps(lo, even, hi), s));
                _mm512_storeu_ps(y + i + 16, _mm512_mul_ps(_mm512_permutex2var_ps(lo, odd, hi), s));
            }
        }
#endif
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
