/*
 * cpu_codec.h - internals of the CPU backend's codec primitives
 * (kernels/cpu/cpu_codec*.c), shared between those files and exposed to the
 * tests, which compare the vector paths against these scalar definitions.
 * Callers use the wrappers in kernels/codec/codec_ops.h.
 */
#ifndef NB_CPU_CODEC_H
#define NB_CPU_CODEC_H

#include <stdint.h>
#include <stddef.h>
#include "kernels/codec/codec_ops.h"

/* Scalar reference conversions: the definition the vector paths must match
 * bit for bit. Pure functions, any thread. */
uint16_t nb_cpu_codec_f16_from_f32(float x);
float nb_cpu_codec_f32_from_f16(uint16_t h);
uint16_t nb_cpu_codec_bf16_from_f32(float x);

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

/* cpu_codec_topk.c */
void nb_cpu_codec_topk(nb_backend_t *be, uint32_t *idx, float *vals, const float *x,
                       size_t n, size_t k);
void nb_cpu_codec_scatter(nb_backend_t *be, float *y, const uint32_t *idx, const float *vals,
                          size_t n, size_t k);

#endif
