/*
 * stage_codec.c - a stage's codecs on its device, or on the host through a
 * pinned staging buffer when the device has no codec primitives; see
 * stage_codec.h.
 */
#include <stdio.h>
#include <string.h>
#include "daemon/pipeline/stage_codec.h"
#include "kernels/codec/codec_ops.h"

int nb_stage_codec_init(nb_stage_codec_t *c, nb_backend_t *be)
{
    memset(c, 0, sizeof *c);
    c->be = c->cbe = be;
    if (nb_codec_ops_ok(be))
        return 0;
    if (!(c->own = nb_cpu_backend_new()))
        return NB_ENOMEM;
    c->cbe = c->own;
    return 0;
}

void nb_stage_codec_free(nb_stage_codec_t *c)
{
    if (c->staging)
        nb_be_host_free(c->be, c->staging);
    if (c->own)
        nb_be_free(c->own);
    memset(c, 0, sizeof *c);
}

/* The staging buffer, at least bytes large; NULL when out of memory. */
static void *staging(nb_stage_codec_t *c, size_t bytes)
{
    if (bytes <= c->staging_bytes)
        return c->staging;
    if (c->staging)
        nb_be_host_free(c->be, c->staging);
    c->staging_bytes = 0;
    if (!(c->staging = nb_be_host_alloc(c->be, bytes)))
        return NULL;
    c->staging_bytes = bytes;
    return c->staging;
}

int nb_stage_codec_encode(nb_stage_codec_t *c, const nb_codec_spec_t *spec, const float *dev, int64_t rows,
                          int64_t cols, uint64_t seed, nb_codec_stream_t *st, uint64_t key, nb_codec_msg_t *out,
                          char *err, size_t errlen)
{
    int64_t shape[2] = { rows, cols };
    const float *src = dev;
    if (!nb_stage_codec_on_device(c)) {
        size_t bytes = (size_t)rows * (size_t)cols * sizeof(float);
        float *host = staging(c, bytes);
        if (!host) {
            snprintf(err, errlen, "out of memory for a %zu-byte staging buffer", bytes);
            return NB_ENOMEM;
        }
        nb_be_to_host(c->be, host, dev, bytes);
        src = host;
    }
    nb_tensor_t x = nb_tensor_view(c->cbe, NB_F32, (void *)src, 2, shape);
    return nb_codec_encode(c->cbe, spec, &x, seed, st, key, out, err, errlen);
}

int nb_stage_codec_decode(nb_stage_codec_t *c, const char *spec, const uint8_t *meta, size_t meta_len,
                          const uint8_t *payload, size_t payload_len, uint64_t max_bytes, nb_codec_stream_t *st,
                          float *dev, int64_t rows, int64_t cols, char *err, size_t errlen)
{
    int64_t shape[2] = { rows, cols };
    size_t bytes = (size_t)rows * (size_t)cols * sizeof(float);
    float *dst = dev;
    if (!nb_stage_codec_on_device(c) && !(dst = staging(c, bytes))) {
        snprintf(err, errlen, "out of memory for a %zu-byte staging buffer", bytes);
        return NB_ENOMEM;
    }
    nb_tensor_t view = nb_tensor_view(c->cbe, NB_F32, dst, 2, shape);
    int rc = nb_codec_decode_into(c->cbe, spec, meta, meta_len, payload, payload_len, max_bytes, st, &view, err,
                                  errlen);
    if (rc == 0 && dst != dev) {
        nb_be_from_host(c->be, dev, dst, bytes);
        nb_be_sync(c->be); /* the staging buffer is reused by the next transfer */
    }
    return rc;
}
