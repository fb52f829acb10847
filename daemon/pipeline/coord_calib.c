/*
 * coord_calib.c - codec calibration for the coordinator's planner
 * (coord_calib.h): each candidate codec's ratio, encode and decode cost per
 * raw byte, and round-trip error, on a synthetic boundary tensor.
 */
#include "daemon/clock.h"
#include "daemon/pipeline/coord_calib.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/codec/codec.h"
#include "kernels/common.h"

/* 0 lossless, 1 half-precision, 2 int8, 3 int4; +2 with a structure codec. */
static int codec_lossiness(const nb_codec_spec_t *s)
{
    if (nb_codec_spec_lossless(s))
        return 0;
    int r = s->value == NB_CODEC_V_F16 || s->value == NB_CODEC_V_BF16 ? 1 : s->value == NB_CODEC_V_I8 ? 2 : 3;
    return r + (s->kind != NB_CODEC_S_DENSE ? 2 : 0);
}

void nb_cplan_calib_data(float *h, size_t n)
{
    /* activations look roughly Gaussian after a LayerNorm: sum of uniforms */
    uint64_t z = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < n; i++) {
        double v = 0;
        for (int k = 0; k < 4; k++) {
            z = z * 6364136223846793005ull + 1442695040888963407ull;
            v += (double)(z >> 11) / 9007199254740992.0 - 0.5;
        }
        h[i] = (float)(v * 1.7);
    }
}

/* ||x - y|| / ||x|| over n host floats (0 when x is all zeros). */
static double rel_error(const float *x, const float *y, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)x[i] - (double)y[i];
        num += d * d;
        den += (double)x[i] * (double)x[i];
    }
    return den > 0 ? sqrt(num / den) : 0;
}

int nb_cplan_calibrate(const char *text, int rows, int cols, nb_cost_codec_t *out, double *rel_err, char *err,
                       size_t errlen)
{
    nb_codec_spec_t spec;
    char cerr[256] = "out of memory";
    if (nb_codec_spec_parse(text, &spec, cerr, sizeof cerr)) {
        snprintf(err, errlen, "job.planner.codecs: %s", cerr);
        return NB_EINVAL;
    }
    memset(out, 0, sizeof *out);
    *rel_err = 0;
    snprintf(out->spec, sizeof out->spec, "%s", text);
    out->lossiness = codec_lossiness(&spec);
    out->ratio = 1.0;
    nb_backend_t *be = nb_cpu_backend_new();
    if (!be)
        return NB_ENOMEM;
    int64_t shape[2] = { rows, cols };
    nb_tensor_t *x = nb_tensor_new(be, NB_F32, 2, shape);
    nb_tensor_t *y = nb_tensor_new(be, NB_F32, 2, shape);
    /* a stateful codec has a stream per side, as on a link: the sender's
     * (residual, delta bases) and the receiver's (delta bases) */
    nb_codec_stream_t *st = (spec.ef || spec.delta) ? nb_codec_stream_new(be, (size_t)64 << 20) : NULL;
    nb_codec_stream_t *rst = spec.delta ? nb_codec_stream_new(be, (size_t)64 << 20) : NULL;
    nb_codec_msg_t msg;
    nb_codec_msg_init(&msg);
    int rc = (!x || !y || ((spec.ef || spec.delta) && !st) || (spec.delta && !rst)) ? NB_ENOMEM : 0;
    size_t n = (size_t)rows * (size_t)cols;
    float *h = rc == 0 ? malloc(2 * n * sizeof *h) : NULL;
    if (rc == 0 && !h)
        rc = NB_ENOMEM;
    if (rc == 0) {
        nb_cplan_calib_data(h, n);
        nb_be_from_host(be, x->data, h, n * sizeof *h);
        nb_be_sync(be);
    }
    double raw = (double)rows * cols * 4.0, best_e = INFINITY, best_d = INFINITY;
    for (int it = 0; rc == 0 && it < 3; it++) {
        double t0 = nb_mono_s();
        rc = nb_codec_encode(be, &spec, x, 7 + (uint64_t)it, st, 1, &msg, cerr, sizeof cerr);
        nb_be_sync(be);
        double t1 = nb_mono_s();
        if (rc == 0)
            rc = nb_codec_decode_into(be, msg.spec, msg.meta, msg.meta_len, msg.payload, msg.payload_len, 0,
                                      rst, y, cerr, sizeof cerr);
        nb_be_sync(be);
        double t2 = nb_mono_s();
        if (rc == 0 && it == 0) {
            nb_be_to_host(be, h + n, y->data, n * sizeof *h);
            nb_be_sync(be);
            *rel_err = rel_error(h, h + n, n);
        }
        best_e = fmin(best_e, t1 - t0);
        best_d = fmin(best_d, t2 - t1);
    }
    if (rc == 0) {
        out->ratio = (double)nb_codec_msg_bytes(&msg) / raw;
        out->enc_per_byte = best_e / raw;
        out->dec_per_byte = best_d / raw;
        /* fp32 travels as is: the copy costs next to nothing, keep it 0 */
        if (out->lossiness == 0 && spec.kind == NB_CODEC_S_DENSE)
            out->enc_per_byte = out->dec_per_byte = 0;
    } else {
        snprintf(err, errlen, "job.planner.codecs: cannot calibrate '%s': %s", text, cerr);
    }
    nb_codec_msg_free(&msg);
    nb_codec_stream_free(st);
    nb_codec_stream_free(rst);
    free(h);
    nb_tensor_free(x);
    nb_tensor_free(y);
    nb_be_free(be);
    return rc;
}

