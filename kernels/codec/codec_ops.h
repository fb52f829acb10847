/*
 * codec_ops.h - the codec primitives a backend provides (its `codec` sub-table
 * in nb_backend_i), and the inline wrappers the codec layer calls them through.
 *
 * The codecs in kernels/codec/ are written once, above these primitives:
 * element conversion (fp32 <-> fp16 / bf16), blockwise absmax quantisation to
 * int8 / int4 with optional stochastic rounding, top-k selection by magnitude
 * and its inverse scatter. Low-rank factorisation uses nb_matmul and, for the
 * small exact SVD and QR steps, LAPACKE on the host; error feedback uses nb_add.
 *
 * Every pointer argument is a *device* pointer on `be` (on the CPU backend a
 * plain host pointer, with no alignment requirement). Primitives cannot fail:
 * sizes are validated by the codec layer before the call (the CPU
 * implementation checks the few invariants it depends on with NB_CHECK).
 * All primitives are deterministic: the same inputs (and seed) give the same
 * bits on every run. Thread: the backend's thread.
 */
#ifndef NB_CODEC_OPS_H
#define NB_CODEC_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"

/* Elements per power-of-two scale of the fp16 codec. */
#define NB_CODEC_F16_BLOCK 4096

struct nb_codec_ops {
    /* Scaled fp16 in blocks of NB_CODEC_F16_BLOCK elements (the last may be
     * shorter): for block b with m = max|x| finite and > 0, s = 15 - e where
     * m = f x 2^e, f in [0.5, 1) (frexp), clamped to [-100, 100]; else s = 0.
     * scales[b] = 2^-s and dst[i] = fp16(src[i] * 2^s), IEEE round to nearest
     * even (NaN stays NaN). The power-of-two scale keeps small gradients out
     * of the fp16 subnormals and outliers below its overflow, and is exact,
     * so fp16-representable inputs survive bit for bit. One pass: each block
     * is scanned and converted while it is in cache. */
    void (*f32_to_f16)(nb_backend_t *be, uint16_t *dst, float *scales, const float *src, size_t n);
    /* dst[i] = (float)src[i] * scales[i / NB_CODEC_F16_BLOCK]. */
    void (*f16_to_f32)(nb_backend_t *be, float *dst, const uint16_t *src, const float *scales, size_t n);
    /* dst[i] = bf16(src[i]), round to nearest even (denormals kept); NaN stays
     * a quiet NaN. */
    void (*f32_to_bf16)(nb_backend_t *be, uint16_t *dst, const float *src, size_t n);
    /* dst[i] = (float)src[i], exact. */
    void (*bf16_to_f32)(nb_backend_t *be, float *dst, const uint16_t *src, size_t n);

    /* Blockwise absmax quantisation of x (n elements) in blocks of `block`
     * consecutive elements (the last block may be shorter): scales[b] =
     * max|x| over block b divided by qmax (127 for bits 8, 7 for bits 4), and
     * each code = round(x / scale) clamped to [-qmax, qmax] (0 when the scale
     * is 0). Rounding is to nearest even, or stochastic when `sr`: floor(x /
     * scale + u) with u uniform in [0, 1) drawn from a counter-based hash of
     * (seed, element index), so the result is unbiased and reproducible.
     * bits 8: codes has n bytes (int8 two's complement). bits 4: codes has
     * ceil(n / 2) bytes, element 2i in the low nibble of byte i and 2i+1 in
     * the high nibble (4-bit two's complement); an odd tail leaves the high
     * nibble 0. scales has ceil(n / block) floats. A non-finite block maximum
     * yields a non-finite scale (the codec layer rejects it). */
    void (*quant)(nb_backend_t *be, uint8_t *codes, float *scales, const float *x,
                  size_t n, size_t block, int bits, bool sr, uint64_t seed);
    /* Inverse of quant: y[i] = code[i] * scales[i / block]. */
    void (*dequant)(nb_backend_t *be, float *y, const uint8_t *codes, const float *scales,
                    size_t n, size_t block, int bits);

    /* The k (1 <= k <= n, n < 2^32) elements of x with the largest |x|,
     * ties broken towards the lower index (NaN counts as largest): their
     * indices in ascending order into idx and their values into vals. */
    void (*topk)(nb_backend_t *be, uint32_t *idx, float *vals, const float *x,
                 size_t n, size_t k);
    /* y (n) = 0 everywhere except y[idx[i]] = vals[i] for i < k. Requires
     * idx strictly ascending and below n (the codec layer validates). */
    void (*scatter)(nb_backend_t *be, float *y, const uint32_t *idx, const float *vals,
                    size_t n, size_t k);
};

/* True when be provides every codec primitive. */
static inline bool nb_codec_ops_ok(const nb_backend_t *be)
{
    const struct nb_codec_ops *o = be->iface->codec;
    return o && o->f32_to_f16 && o->f16_to_f32 && o->f32_to_bf16 && o->bf16_to_f32 &&
           o->quant && o->dequant && o->topk && o->scatter;
}

/* ---- wrappers: contracts are on the table fields above ---------------- */

static inline void nb_codec_op_f32_to_f16(nb_backend_t *be, uint16_t *d, float *scales, const float *s, size_t n)
{ NB_CHECK(be->iface->codec); be->iface->codec->f32_to_f16(be, d, scales, s, n); }
static inline void nb_codec_op_f16_to_f32(nb_backend_t *be, float *d, const uint16_t *s, const float *scales, size_t n)
{ NB_CHECK(be->iface->codec); be->iface->codec->f16_to_f32(be, d, s, scales, n); }
static inline void nb_codec_op_f32_to_bf16(nb_backend_t *be, uint16_t *d, const float *s, size_t n)
{ NB_CHECK(be->iface->codec); be->iface->codec->f32_to_bf16(be, d, s, n); }
static inline void nb_codec_op_bf16_to_f32(nb_backend_t *be, float *d, const uint16_t *s, size_t n)
{ NB_CHECK(be->iface->codec); be->iface->codec->bf16_to_f32(be, d, s, n); }
static inline void nb_codec_op_quant(nb_backend_t *be, uint8_t *codes, float *scales, const float *x,
                                     size_t n, size_t block, int bits, bool sr, uint64_t seed)
{ NB_CHECK(be->iface->codec); be->iface->codec->quant(be, codes, scales, x, n, block, bits, sr, seed); }
static inline void nb_codec_op_dequant(nb_backend_t *be, float *y, const uint8_t *codes,
                                       const float *scales, size_t n, size_t block, int bits)
{ NB_CHECK(be->iface->codec); be->iface->codec->dequant(be, y, codes, scales, n, block, bits); }
static inline void nb_codec_op_topk(nb_backend_t *be, uint32_t *idx, float *vals, const float *x,
                                    size_t n, size_t k)
{ NB_CHECK(be->iface->codec); be->iface->codec->topk(be, idx, vals, x, n, k); }
static inline void nb_codec_op_scatter(nb_backend_t *be, float *y, const uint32_t *idx,
                                       const float *vals, size_t n, size_t k)
{ NB_CHECK(be->iface->codec); be->iface->codec->scatter(be, y, idx, vals, n, k); }

#endif /* NB_CODEC_OPS_H */
