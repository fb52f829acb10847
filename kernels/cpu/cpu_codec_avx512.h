/*
 * cpu_codec_avx512.h - the AVX-512 (F, BW, VL) bodies of the CPU codec
 * primitives: 16 elements per vector, masked tails, so each body handles all
 * n elements it is given. Included by cpu_codec.c only in its avx512 copy;
 * the contract of every body is in cpu_codec_simd.h.
 */
#ifndef NB_CPU_CODEC_AVX512_H
#define NB_CPU_CODEC_AVX512_H

#include <immintrin.h>
#include <stdbool.h>

#define NB_CODEC_SIMD_NAME "avx512"

static inline __mmask16 simd_tail_mask(size_t r) { return (__mmask16)((1U << r) - 1); }

static size_t simd_f16(uint16_t *dst, const float *src, size_t n, float scale)
{
    const __m512 s = _mm512_set1_ps(scale);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_mul_ps(_mm512_loadu_ps(src + i), s);
        _mm256_storeu_si256((__m256i *)(dst + i),
                            _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    if (i < n) {
        __mmask16 m = simd_tail_mask(n - i);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, src + i), s);
        _mm256_mask_storeu_epi16(dst + i, m, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    return n;
}

static size_t simd_f16_to_f32(float *dst, const uint16_t *src, size_t n, float scale)
{
    const __m512 s = _mm512_set1_ps(scale);
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))), s));
    if (i < n) {
        __mmask16 m = simd_tail_mask(n - i);
        _mm512_mask_storeu_ps(dst + i, m, _mm512_mul_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, src + i)), s));
    }
    return n;
}

static inline __m256i bf16_round16(__m512i u)
{
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb));
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, absmask), _mm512_set1_epi32(0x7f800000));
    __m512i q = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    r = _mm512_mask_mov_epi32(_mm512_srli_epi32(r, 16), nan, q);
    return _mm512_cvtepi32_epi16(r);
}

static size_t simd_bf16(uint16_t *dst, const float *src, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i), bf16_round16(_mm512_loadu_si512(src + i)));
    if (i < n) {
        __mmask16 m = simd_tail_mask(n - i);
        _mm256_mask_storeu_epi16(dst + i, m, bf16_round16(_mm512_maskz_loadu_epi32(m, src + i)));
    }
    return n;
}

static size_t simd_bf16_to_f32(float *dst, const uint16_t *src, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + i)));
        _mm512_storeu_si512(dst + i, _mm512_slli_epi32(w, 16));
    }
    if (i < n) {
        __mmask16 m = simd_tail_mask(n - i);
        __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, src + i));
        _mm512_mask_storeu_epi32(dst + i, m, _mm512_slli_epi32(w, 16));
    }
    return n;
}

static size_t simd_absmax(const float *x, size_t n, float *max, bool *nan)
{
    __m512 vm = _mm512_setzero_ps();
    __mmask16 vnan = 0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_abs_ps(_mm512_loadu_ps(x + i));
        vnan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        vm = _mm512_max_ps(vm, v);
    }
    if (i < n) {
        __mmask16 k = simd_tail_mask(n - i);
        __m512 v = _mm512_abs_ps(_mm512_maskz_loadu_ps(k, x + i));
        vnan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        vm = _mm512_max_ps(vm, v);
    }
    *max = _mm512_reduce_max_ps(vm);
    *nan = vnan != 0;
    return n;
}

/* 16 codes from 16 floats at element index base: nb_cpu_codec_quant_one. */
static inline __m512i quant16(__m512 x, __m512 inv, __m512 qmax, bool sr, uint64_t seed, size_t base)
{
    __m512 v = _mm512_mul_ps(x, inv);
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
        __m512 u = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(h, 8)), _mm512_set1_ps(1.0f / 16777216.0f));
        v = _mm512_roundscale_ps(_mm512_add_ps(v, u), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    } else {
        v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    /* NaN (only from a non-finite block, inv 0) clamps to -qmax as in fmaxf */
    v = _mm512_min_ps(_mm512_max_ps(v, _mm512_sub_ps(_mm512_setzero_ps(), qmax)), qmax);
    return _mm512_cvttps_epi32(v);
}

static size_t simd_quant8(uint8_t *codes, const float *x, size_t n, float inv, bool sr,
                          uint64_t seed, size_t base)
{
    const __m512 vinv = _mm512_set1_ps(inv), vq = _mm512_set1_ps(127.0f);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i q = quant16(_mm512_loadu_ps(x + i), vinv, vq, sr, seed, base + i);
        _mm_storeu_si128((__m128i *)(codes + i), _mm512_cvtepi32_epi8(q));
    }
    if (i < n) {
        __mmask16 k = simd_tail_mask(n - i);
        __m512i q = quant16(_mm512_maskz_loadu_ps(k, x + i), vinv, vq, sr, seed, base + i);
        _mm_mask_storeu_epi8(codes + i, k, _mm512_cvtepi32_epi8(q));
    }
    return n;
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
    const __m512 vinv = _mm512_set1_ps(inv), vq = _mm512_set1_ps(7.0f);
    for (; i + 32 <= end; i += 32) {
        __m128i c0 = _mm512_cvtepi32_epi8(quant16(_mm512_loadu_ps(x + i), vinv, vq, sr, seed, i));
        __m128i c1 = _mm512_cvtepi32_epi8(quant16(_mm512_loadu_ps(x + i + 16), vinv, vq, sr, seed, i + 16));
        _mm_storeu_si128((__m128i *)(codes + i / 2), _mm_packus_epi16(nibble_pairs(c0), nibble_pairs(c1)));
    }
    return i;
}

static size_t simd_dequant8(float *y, const uint8_t *codes, size_t n, float scale)
{
    const __m512 s = _mm512_set1_ps(scale);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i q = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(codes + i)));
        _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_cvtepi32_ps(q), s));
    }
    if (i < n) {
        __mmask16 k = simd_tail_mask(n - i);
        __m512i q = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, codes + i));
        _mm512_mask_storeu_ps(y + i, k, _mm512_mul_ps(_mm512_cvtepi32_ps(q), s));
    }
    return n;
}

static size_t simd_dequant4(float *y, const uint8_t *codes, size_t i, size_t end, float scale)
{
    const __m512 s = _mm512_set1_ps(scale);
    const __m512i even = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i odd = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (; i + 32 <= end; i += 32) {
        __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(codes + i / 2)));
        __m512 lo = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 28), 28));
        __m512 hi = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 24), 28));
        _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_permutex2var_ps(lo, even, hi), s));
        _mm512_storeu_ps(y + i + 16, _mm512_mul_ps(_mm512_permutex2var_ps(lo, odd, hi), s));
    }
    return i;
}

#endif /* NB_CPU_CODEC_AVX512_H */
