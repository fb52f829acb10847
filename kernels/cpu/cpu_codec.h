/*
 * cpu_codec.h - internals of the CPU backend's codec primitives
 * (kernels/cpu/cpu_codec*.c), shared between those files. The scalar
 * definitions the vector paths must match are in cpu_codec_scalar.h.
 * Callers use the wrappers in kernels/codec/codec_ops.h.
 */
#ifndef NB_CPU_CODEC_H
#define NB_CPU_CODEC_H

#include <stdint.h>
#include <stddef.h>
#include "kernels/codec/codec_ops.h"
#include "kernels/cpu/cpu_isa_names.h"
#include "kernels/cpu/cpu_codec_scalar.h"

/* This level's table of codec primitives (cpu_codec.c). */
extern const struct nb_codec_ops nb_cpu_codec_ops;

/* cpu_codec_topk.c */
void nb_cpu_codec_topk(nb_backend_t *be, uint32_t *idx, float *vals, const float *x,
                       size_t n, size_t k);
void nb_cpu_codec_scatter(nb_backend_t *be, float *y, const uint32_t *idx, const float *vals,
                          size_t n, size_t k);

#endif
