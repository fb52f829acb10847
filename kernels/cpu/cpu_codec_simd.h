/*
 * cpu_codec_simd.h - picks the vector bodies of the CPU codec primitives for
 * the ISA level this copy of cpu_codec.c is compiled for.
 *
 * Every body converts or quantises a prefix of its input with exactly the
 * arithmetic of the scalar definitions (cpu_codec_scalar.h) and returns how
 * far it got; cpu_codec.c finishes the rest with the scalar code. So a body
 * may stop early (AVX2 leaves tails), or do nothing at all (generic).
 *
 *   simd_f16(dst, src, n, scale)        dst[i] = f16(src[i] * scale)
 *   simd_f16_to_f32(dst, src, n, scale) dst[i] = f32(src[i]) * scale
 *   simd_bf16(dst, src, n)              dst[i] = bf16(src[i])
 *   simd_bf16_to_f32(dst, src, n)       dst[i] = f32(src[i])
 *   simd_absmax(x, n, &max, &nan)       max|x| and whether a NaN was seen, over
 *                                       the prefix it returns (max >= 0)
 *   simd_quant8(codes, x, n, inv, sr, seed, base)   codes of x[0..), element
 *                                       indices base + i for the SR hash
 *   simd_quant4(codes, x, i, end, inv, sr, seed)    nibble-packed codes of
 *                                       x[i..end) from an even i; returns the new i
 *   simd_dequant8(y, codes, n, scale)   y[i] = code[i] * scale
 *   simd_dequant4(y, codes, i, end, scale)          as quant4, inverse
 */
#ifndef NB_CPU_CODEC_SIMD_H
#define NB_CPU_CODEC_SIMD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include "kernels/cpu/cpu_codec_avx512.h"
#elif defined(__AVX2__) && defined(__F16C__)
#include "kernels/cpu/cpu_codec_avx2.h"
#else
/* generic: the scalar loops of cpu_codec.c do all the work */
#define NB_CODEC_SIMD_NAME "generic"
static inline size_t simd_f16(uint16_t *d, const float *s, size_t n, float sc) { return 0; }
static inline size_t simd_f16_to_f32(float *d, const uint16_t *s, size_t n, float sc) { return 0; }
static inline size_t simd_bf16(uint16_t *d, const float *s, size_t n) { return 0; }
static inline size_t simd_bf16_to_f32(float *d, const uint16_t *s, size_t n) { return 0; }
static inline size_t simd_absmax(const float *x, size_t n, float *max, bool *nan)
{
    *max = 0.0f;
    *nan = false;
    return 0;
}
static inline size_t simd_quant8(uint8_t *c, const float *x, size_t n, float inv, bool sr,
                                 uint64_t seed, size_t base) { return 0; }
static inline size_t simd_quant4(uint8_t *c, const float *x, size_t i, size_t end, float inv,
                                 bool sr, uint64_t seed) { return i; }
static inline size_t simd_dequant8(float *y, const uint8_t *c, size_t n, float sc) { return 0; }
static inline size_t simd_dequant4(float *y, const uint8_t *c, size_t i, size_t end, float sc) { return i; }
#endif

#endif /* NB_CPU_CODEC_SIMD_H */
