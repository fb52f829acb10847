/*
 * codec_values.c - value arrays: how an array of floats is stored by a value
 * codec (fp32 raw, fp16 with one power-of-two scale, bf16, or int8 / int4
 * codes with fp32 absmax scales), through the backend's codec primitives.
 * Used for dense tensors, top-k values and SVD factors alike.
 *
 * fp16 carries one scale 2^-s per NB_CODEC_F16_BLOCK elements, s chosen so
 * that the block's max|x| * 2^s lies in [2^14, 2^15): gradients (often below 1e-4, where fp16 goes subnormal)
 * keep full precision and outliers above 65504 do not overflow. Power-of-two
 * scaling is exact, so fp16-representable inputs still cross bit-exact.
 */
#include <math.h>
#include <string.h>
#include "kernels/codec/codec_internal.h"

static size_t eff_block(const nb_codec_spec_t *s, size_t row_len)
{
    size_t b = s->block ? s->block : row_len;
    return b ? b : 1;
}

int nb__codec_val_bytes(const nb_codec_spec_t *s, size_t n, size_t row_len,
                        size_t *scale_bytes, size_t *code_bytes)
{
    *scale_bytes = 0;
    switch (s->value) {
    case NB_CODEC_V_F32:
        return nb_mul_size(n, 4, code_bytes) ? NB_ENOMEM : 0;
    case NB_CODEC_V_F16:
        *scale_bytes = 4 * (n / NB_CODEC_F16_BLOCK + (n % NB_CODEC_F16_BLOCK != 0));
        return nb_mul_size(n, 2, code_bytes) ? NB_ENOMEM : 0;
    case NB_CODEC_V_BF16:
        return nb_mul_size(n, 2, code_bytes) ? NB_ENOMEM : 0;
    case NB_CODEC_V_I8:
    case NB_CODEC_V_I4: {
        size_t b = eff_block(s, row_len);
        size_t nblocks = n / b + (n % b != 0);
        if (nb_mul_size(nblocks, 4, scale_bytes))
            return NB_ENOMEM;
        *code_bytes = s->value == NB_CODEC_V_I8 ? n : n / 2 + (n & 1);
        return 0;
    }
    }
    return NB_EINVAL;
}

int nb__codec_val_encode(nb_backend_t *be, const nb_codec_spec_t *s, const float *x_dev,
                         size_t n, size_t row_len, uint8_t *scales, uint8_t *codes,
                         uint64_t seed, char *err, size_t errlen)
{
    size_t sb, cb;
    int rc = nb__codec_val_bytes(s, n, row_len, &sb, &cb);
    if (rc)
        return nb__codec_err(err, errlen, rc, "value array of %zu elements too large", n);
    void *dcodes, *tcodes, *dscales = NULL, *tscales = NULL;
    if (s->value == NB_CODEC_V_F32) {
        nb_be_to_host(be, codes, x_dev, cb);
        return 0;
    }
    if ((rc = nb__codec_dev_out(be, codes, cb, &dcodes, &tcodes)))
        return nb__codec_err(err, errlen, rc, "out of device memory");
    switch (s->value) {
    case NB_CODEC_V_BF16:
        nb_codec_op_f32_to_bf16(be, dcodes, x_dev, n);
        break;
    default:
        if ((rc = nb__codec_dev_out(be, scales, sb, &dscales, &tscales))) {
            nb__codec_dev_release(be, tcodes);
            return nb__codec_err(err, errlen, rc, "out of device memory");
        }
        if (s->value == NB_CODEC_V_F16) {
            nb_codec_op_f32_to_f16(be, dcodes, dscales, x_dev, n);
            nb__codec_dev_out_done(be, scales, sb, tscales);
            break;
        }
        nb_codec_op_quant(be, dcodes, dscales, x_dev, n, eff_block(s, row_len),
                          s->value == NB_CODEC_V_I8 ? 8 : 4, s->sr, seed);
        nb__codec_dev_out_done(be, scales, sb, tscales);
        break;
    }
    nb__codec_dev_out_done(be, codes, cb, tcodes);
    if (sb && s->value != NB_CODEC_V_F16) {
        /* a non-finite block maximum means the input was not finite: int
         * codes cannot carry it, so refuse rather than send garbage */
        for (size_t i = 0; i < sb / 4; i++) {
            float v;
            memcpy(&v, scales + 4 * i, 4);
            if (!isfinite(v))
                return nb__codec_err(err, errlen, NB_EINVAL,
                                     "input has non-finite values (block %zu); int codes cannot encode them", i);
        }
    }
    return 0;
}

int nb__codec_val_decode(nb_backend_t *be, const nb_codec_spec_t *s, float *y_dev, size_t n,
                         size_t row_len, const uint8_t *scales, const uint8_t *codes,
                         char *err, size_t errlen)
{
    size_t sb, cb;
    int rc = nb__codec_val_bytes(s, n, row_len, &sb, &cb);
    if (rc)
        return nb__codec_err(err, errlen, rc, "value array of %zu elements too large", n);
    for (size_t i = 0; i < sb / 4; i++) {
        float v;
        memcpy(&v, scales + 4 * i, 4);
        if (!(v >= 0.0f) || !isfinite(v))
            return nb__codec_err(err, errlen, NB_EFORMAT, "scale %zu is %g (must be finite, >= 0)", i, (double)v);
    }
    if (s->value == NB_CODEC_V_F32) {
        nb_be_from_host(be, y_dev, codes, cb);
        nb_be_sync(be);
        return 0;
    }
    const void *dcodes, *dscales;
    void *tcodes, *tscales = NULL;
    if ((rc = nb__codec_dev_in(be, codes, cb, &dcodes, &tcodes)))
        return nb__codec_err(err, errlen, rc, "out of device memory");
    switch (s->value) {
    case NB_CODEC_V_BF16:
        nb_codec_op_bf16_to_f32(be, y_dev, dcodes, n);
        break;
    default:
        if ((rc = nb__codec_dev_in(be, scales, sb, &dscales, &tscales))) {
            nb__codec_dev_release(be, tcodes);
            return nb__codec_err(err, errlen, rc, "out of device memory");
        }
        if (s->value == NB_CODEC_V_F16) {
            nb_codec_op_f16_to_f32(be, y_dev, dcodes, dscales, n);
            break;
        }
        nb_codec_op_dequant(be, y_dev, dcodes, dscales, n, eff_block(s, row_len),
                            s->value == NB_CODEC_V_I8 ? 8 : 4);
        break;
    }
    nb_be_sync(be);
    nb__codec_dev_release(be, tscales);
    nb__codec_dev_release(be, tcodes);
    return 0;
}
