/*
 * cpu_codec_avx2.h - the AVX2 + F16C bodies of the CPU codec primitives:
 * 8 elements per vector (16 or 32 per step where the output packs), leaving
 * the tail to the scalar loop of cpu_codec.c. Included by cpu_codec.c only
 * in its avx2 copy; the contract of every body is in cpu_codec_simd.h.
 */
#ifndef NB_CPU_CODEC_AVX2_H
#define NB_CPU_CODEC_AVX2_H

#include <immintrin.h>
#include <stdbool.h>

#define NB_CODEC_SIMD_NAME "avx2"

static size_t simd_f16(uint16_t *dst, const float *src, size_t n, float scale)
{
    const __m256 s = _mm256_set1_ps(scale);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(src + i), s);
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    return i;
}

static size_t simd_f16_to_f32(float *dst, const uint16_t *src, size_t n, float scale)
{
    const __m256 s = _mm256_set1_ps(scale);
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))), s));
    return i;
}

/* 8 floats (as bits) -> 8 bf16 in the low 16 bits of each 32-bit lane. */
static inline __m256i bf16_round8(__m256i u)
{
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), 16);
    /* |u| and 0x7f800000 are both below 2^31: a signed compare is exact */
    __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                     _mm256_set1_epi32(0x7f800000));
    __m256i q = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    return _mm256_blendv_epi8(r, q, nan);
}

static size_t simd_bf16(uint16_t *dst, const float *src, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i a = bf16_round8(_mm256_loadu_si256((const __m256i *)(src + i)));
        __m256i b = bf16_round8(_mm256_loadu_si256((const __m256i *)(src + i + 8)));
        /* packus works per 128-bit lane: a0 b0 a1 b1 -> a0 a1 b0 b1 */
        __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xd8);
        _mm256_storeu_si256((__m256i *)(dst + i), p);
    }
    return i;
}

static size_t simd_bf16_to_f32(float *dst, const uint16_t *src, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_slli_epi32(w, 16));
    }
    return i;
}

static size_t simd_absmax(const float *x, size_t n, float *max, bool *nan)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 vm = _mm256_setzero_ps(), vnan = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_and_ps(_mm256_loadu_ps(x + i), absmask);
        vnan = _mm256_or_ps(vnan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        vm = _mm256_max_ps(vm, v);
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vm), _mm256_extractf128_ps(vm, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    *max = _mm_cvtss_f32(m4);
    *nan = _mm256_movemask_ps(vnan) != 0;
    return i;
}

/* 8 codes from 8 floats at element index base: nb_cpu_codec_quant_one. */
static inline __m256i quant8v(__m256 x, __m256 inv, __m256 qmax, bool sr, uint64_t seed, size_t base)
{
    __m256 v = _mm256_mul_ps(x, inv);
    if (sr) {
        __m256i idx = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)base), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256i h = _mm256_add_epi32(_mm256_mullo_epi32(idx, _mm256_set1_epi32((int)0x9E3779B9U)),
                                     _mm256_set1_epi32((int)(uint32_t)seed));
#define NB_MIX(h)                                                                   \
    h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 16));                              \
    h = _mm256_mullo_epi32(h, _mm256_set1_epi32(0x7feb352d));                       \
    h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 15));                              \
    h = _mm256_mullo_epi32(h, _mm256_set1_epi32((int)0x846ca68bU));                 \
    h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 16));
        NB_MIX(h);
        h = _mm256_xor_si256(h, _mm256_set1_epi32((int)(uint32_t)(seed >> 32)));
        NB_MIX(h);
#undef NB_MIX
        __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(h, 8)), _mm256_set1_ps(1.0f / 16777216.0f));
        v = _mm256_round_ps(_mm256_add_ps(v, u), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    } else {
        v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    /* NaN (only from a non-finite block, inv 0) clamps to -qmax as in fmaxf */
    v = _mm256_min_ps(_mm256_max_ps(v, _mm256_sub_ps(_mm256_setzero_ps(), qmax)), qmax);
    return _mm256_cvttps_epi32(v);
}

/* 16 int8 codes (in [-127, 127]) from two vectors of 8 int32, in order. */
static inline __m128i codes16(__m256i a, __m256i b)
{
    __m128i wa = _mm_packs_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    __m128i wb = _mm_packs_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
    return _mm_packs_epi16(wa, wb);
}

static size_t simd_quant8(uint8_t *codes, const float *x, size_t n, float inv, bool sr,
                          uint64_t seed, size_t base)
{
    const __m256 vinv = _mm256_set1_ps(inv), vq = _mm256_set1_ps(127.0f);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i a = quant8v(_mm256_loadu_ps(x + i), vinv, vq, sr, seed, base + i);
        __m256i b = quant8v(_mm256_loadu_ps(x + i + 8), vinv, vq, sr, seed, base + i + 8);
        _mm_storeu_si128((__m128i *)(codes + i), codes16(a, b));
    }
    return i;
}

/* Each 16-bit lane of c (16 int8 codes) holds codes 2j (low byte) and 2j+1:
 * packs them into one nibble pair per byte, in the low 8 bytes. */
static inline __m128i nibble_pairs(__m128i c)
{
    const __m128i lo4 = _mm_set1_epi16(0x000f);
    return _mm_or_si128(_mm_and_si128(c, lo4), _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(c, 8), lo4), 4));
}

static size_t simd_quant4(uint8_t *codes, const float *x, size_t i, size_t end, float inv,
                          bool sr, uint64_t seed)
{
    const __m256 vinv = _mm256_set1_ps(inv), vq = _mm256_set1_ps(7.0f);
    for (; i + 32 <= end; i += 32) {
        __m128i c[2];
        for (int h = 0; h < 2; h++) {
            size_t j = i + 16 * (size_t)h;
            __m256i a = quant8v(_mm256_loadu_ps(x + j), vinv, vq, sr, seed, j);
            __m256i b = quant8v(_mm256_loadu_ps(x + j + 8), vinv, vq, sr, seed, j + 8);
            c[h] = nibble_pairs(codes16(a, b));
        }
        _mm_storeu_si128((__m128i *)(codes + i / 2), _mm_packus_epi16(c[0], c[1]));
    }
    return i;
}

static size_t simd_dequant8(float *y, const uint8_t *codes, size_t n, float scale)
{
    const __m256 s = _mm256_set1_ps(scale);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(codes + i)));
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_cvtepi32_ps(q), s));
    }
    return i;
}

static size_t simd_dequant4(float *y, const uint8_t *codes, size_t i, size_t end, float scale)
{
    const __m256 s = _mm256_set1_ps(scale);
    for (; i + 16 <= end; i += 16) {
        __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(codes + i / 2)));
        __m256 lo = _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(v, 28), 28)); /* elements 2j */
        __m256 hi = _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(v, 24), 28)); /* elements 2j+1 */
        /* unpack works per 128-bit lane: a = e0..e3 | e8..e11, b = e4..e7 | e12..e15 */
        __m256 a = _mm256_unpacklo_ps(lo, hi), b = _mm256_unpackhi_ps(lo, hi);
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_permute2f128_ps(a, b, 0x20), s));
        _mm256_storeu_ps(y + i + 8, _mm256_mul_ps(_mm256_permute2f128_ps(a, b, 0x31), s));
    }
    return i;
}

#endif /* NB_CPU_CODEC_AVX2_H */
