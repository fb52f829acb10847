/*
 * codec.c - encode and decode: the metadata block (layout v1 below and in
 * docs/codecs.md), validation of everything a peer sends, the dense path and
 * the stateful wrappers (error feedback, delta) around the structure codecs.
 *
 * Metadata v1, 56 bytes, little endian:
 *   0 magic "NBCD"   4 u8 version (1)   5 u8 value   6 u8 struct
 *   7 u8 flags (1 sr, 2 delta, 4 bitmap)   8 u32 rows   12 u32 cols
 *  16 u32 block      20 u32 k or rank   24 u32 index bytes   28 u32 visit
 *  32 u64 key        40 u64 decoded bytes   48 u64 payload bytes
 */
#include <string.h>
#include "kernels/codec/codec_internal.h"

enum { F_SR = 1, F_DELTA = 2, F_BITMAP = 4 };

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint32_t get32(const uint8_t *p) { uint32_t v = 0; for (int i = 3; i >= 0; i--) v = v << 8 | p[i]; return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v = 0; for (int i = 7; i >= 0; i--) v = v << 8 | p[i]; return v; }

static bool is_quant(nb_codec_value_t v) { return v == NB_CODEC_V_I8 || v == NB_CODEC_V_I4; }

static void write_meta(nb_codec_msg_t *m, const nb_codec_info_t *in)
{
    uint8_t *p = m->meta;
    memcpy(p, "NBCD", 4);
    p[4] = 1;
    p[5] = (uint8_t)in->value;
    p[6] = (uint8_t)in->kind;
    p[7] = (uint8_t)((in->sr ? F_SR : 0) | (in->delta ? F_DELTA : 0) | (in->bitmap ? F_BITMAP : 0));
    put32(p + 8, in->rows);
    put32(p + 12, in->cols);
    put32(p + 16, in->block);
    put32(p + 20, in->k_or_rank);
    put32(p + 24, in->index_bytes);
    put32(p + 28, in->visit);
    put64(p + 32, in->key);
    put64(p + 40, in->decoded_bytes);
    put64(p + 48, in->payload_bytes);
    m->meta_len = NB_CODEC_META_V1_LEN;
}

/* The exact payload length info describes, from sizes alone. */
static int payload_bytes(const nb_codec_spec_t *s, const nb_codec_info_t *in, uint64_t *out)
{
    size_t n = (size_t)in->rows * in->cols, sb, cb, sb2, cb2, t;
    switch (in->kind) {
    case NB_CODEC_S_DENSE:
        if (nb__codec_val_bytes(s, n, in->cols, &sb, &cb) || nb_add_size(sb, cb, &t))
            return NB_ERANGE;
        break;
    case NB_CODEC_S_TOPK:
        if (nb__codec_val_bytes(s, in->k_or_rank, in->k_or_rank, &sb, &cb) || nb_add_size(sb, cb, &t) ||
            nb_add_size(t, in->index_bytes, &t))
            return NB_ERANGE;
        break;
    case NB_CODEC_S_SVD:
        if (nb__codec_val_bytes(s, (size_t)in->rows * in->k_or_rank, in->k_or_rank, &sb, &cb) ||
            nb__codec_val_bytes(s, (size_t)in->k_or_rank * in->cols, in->cols, &sb2, &cb2) ||
            nb_add_size(sb, cb, &t) || nb_add_size(t, sb2, &t) || nb_add_size(t, cb2, &t))
            return NB_ERANGE;
        break;
    default:
        return NB_EINVAL;
    }
    *out = t;
    return 0;
}

int nb_codec_peek(const char *spec_text, const uint8_t *meta, size_t meta_len,
                  nb_codec_info_t *info, char *err, size_t errlen)
{
    nb_codec_spec_t s;
    int rc = nb_codec_spec_parse(spec_text, &s, err, errlen);
    if (rc)
        return rc;
    if (!meta || meta_len < 8 || memcmp(meta, "NBCD", 4))
        return nb__codec_err(err, errlen, NB_EFORMAT, "codec metadata: bad magic or %zu bytes", meta ? meta_len : 0);
    if (meta[4] != 1)
        return nb__codec_err(err, errlen, NB_EVERSION, "codec metadata: version %u, this build reads 1", meta[4]);
    if (meta_len != NB_CODEC_META_V1_LEN)
        return nb__codec_err(err, errlen, NB_EFORMAT, "codec metadata: %zu bytes, version 1 has %d",
                             meta_len, NB_CODEC_META_V1_LEN);
    nb_codec_info_t in = {
        .value = meta[5], .kind = meta[6],
        .sr = meta[7] & F_SR, .delta = meta[7] & F_DELTA, .bitmap = meta[7] & F_BITMAP,
        .rows = get32(meta + 8), .cols = get32(meta + 12), .block = get32(meta + 16),
        .k_or_rank = get32(meta + 20), .index_bytes = get32(meta + 24), .visit = get32(meta + 28),
        .key = get64(meta + 32), .decoded_bytes = get64(meta + 40), .payload_bytes = get64(meta + 48),
    };
    if (meta[7] & ~(F_SR | F_DELTA | F_BITMAP))
        return nb__codec_err(err, errlen, NB_EFORMAT, "codec metadata: unknown flags 0x%02x", meta[7]);
    if (meta[5] != s.value || meta[6] != s.kind)
        return nb__codec_err(err, errlen, NB_EFORMAT, "codec metadata (value %u, struct %u) does not match spec '%s'",
                             meta[5], meta[6], spec_text);
    if (in.delta != s.delta || in.sr != (s.sr && is_quant(s.value)))
        return nb__codec_err(err, errlen, NB_EFORMAT, "codec metadata flags 0x%02x do not match spec '%s'",
                             meta[7], spec_text);
    if (in.block != (is_quant(s.value) ? s.block : 0))
        return nb__codec_err(err, errlen, NB_EFORMAT, "codec metadata: block %u, spec '%s' says %u",
                             in.block, spec_text, is_quant(s.value) ? s.block : 0);
    uint64_t n = (uint64_t)in.rows * in.cols;
    if (in.rows == 0 || in.cols == 0 || n > UINT32_MAX)
        return nb__codec_err(err, errlen, NB_ERANGE, "codec metadata: bad matrix size %ux%u", in.rows, in.cols);
    if (in.decoded_bytes != n * 4)
        return nb__codec_err(err, errlen, NB_EFORMAT,
                             "codec metadata declares %llu decoded bytes, but %ux%u floats are %llu",
                             (unsigned long long)in.decoded_bytes, in.rows, in.cols, (unsigned long long)(n * 4));
    switch (in.kind) {
    case NB_CODEC_S_DENSE:
        if (in.k_or_rank || in.index_bytes || in.bitmap)
            return nb__codec_err(err, errlen, NB_EFORMAT, "codec metadata: dense codec with k/rank/index fields");
        break;
    case NB_CODEC_S_TOPK:
        if (in.k_or_rank < 1 || in.k_or_rank > n)
            return nb__codec_err(err, errlen, NB_ERANGE, "codec metadata: top-k k=%u for %llu elements",
                                 in.k_or_rank, (unsigned long long)n);
        if (in.bitmap ? in.index_bytes != n / 8 + (n % 8 != 0)
                      : (in.index_bytes < in.k_or_rank || (uint64_t)in.index_bytes > 5ull * in.k_or_rank))
            return nb__codec_err(err, errlen, NB_EFORMAT, "codec metadata: %u index bytes impossible for k=%u (%s)",
                                 in.index_bytes, in.k_or_rank, in.bitmap ? "bitmap" : "varint");
        break;
    case NB_CODEC_S_SVD: {
        uint32_t mn = in.rows < in.cols ? in.rows : in.cols;
        if (in.k_or_rank < 1 || in.k_or_rank > mn)
            return nb__codec_err(err, errlen, NB_ERANGE, "codec metadata: rank %u for a %ux%u matrix (max %u)",
                                 in.k_or_rank, in.rows, in.cols, mn);
        if (in.index_bytes || in.bitmap)
            return nb__codec_err(err, errlen, NB_EFORMAT, "codec metadata: svd with index fields");
        break;
    }
    }
    if (!in.delta && (in.visit || in.key))
        return nb__codec_err(err, errlen, NB_EFORMAT, "codec metadata: delta fields without delta mode");
    uint64_t want;
    if (payload_bytes(&s, &in, &want))
        return nb__codec_err(err, errlen, NB_ERANGE, "codec metadata: payload size overflows");
    if (want != in.payload_bytes)
        return nb__codec_err(err, errlen, NB_EFORMAT, "codec metadata declares a %llu-byte payload, its sizes give %llu",
                             (unsigned long long)in.payload_bytes, (unsigned long long)want);
    *info = in;
    return 0;
}

/* Decodes a validated (spec, info, payload) into y_dev (n floats). */
static int decode_body(nb_backend_t *be, const nb_codec_spec_t *s, const nb_codec_info_t *in,
                       const uint8_t *payload, float *y_dev, char *err, size_t errlen)
{
    size_t n = (size_t)in->rows * in->cols, sb, cb;
    switch (in->kind) {
    case NB_CODEC_S_DENSE:
        if (nb__codec_val_bytes(s, n, in->cols, &sb, &cb))
            return NB_ERANGE;
        return nb__codec_val_decode(be, s, y_dev, n, in->cols, payload, payload + sb, err, errlen);
    case NB_CODEC_S_TOPK:
        return nb__codec_topk_decode(be, s, in, payload, y_dev, err, errlen);
    case NB_CODEC_S_SVD:
        return nb__codec_svd_decode(be, s, in, payload, y_dev, err, errlen);
    }
    return NB_EINVAL;
}

int nb_codec_encode(nb_backend_t *be, const nb_codec_spec_t *spec, const nb_tensor_t *x,
                    uint64_t seed, nb_codec_stream_t *st, uint64_t key,
                    nb_codec_msg_t *out, char *err, size_t errlen)
{
    out->payload_len = 0;
    out->meta_len = 0;
    out->spec[0] = '\0';
    if (!nb_codec_ops_ok(be))
        return nb__codec_err(err, errlen, NB_EINVAL, "backend %s has no codec primitives", be->iface->name);
    if (!x || x->be != be || x->dtype != NB_F32 || x->ndim < 1)
        return nb__codec_err(err, errlen, NB_EINVAL, "codec input must be an f32 tensor on backend %s",
                             be->iface->name);
    int64_t numel = nb_tensor_numel(x), cols64 = x->shape[x->ndim - 1];
    if (numel <= 0 || cols64 <= 0)
        return nb__codec_err(err, errlen, NB_EINVAL, "codec input is empty");
    if (numel > (int64_t)UINT32_MAX)
        return nb__codec_err(err, errlen, NB_ERANGE, "codec input has %lld elements (max 2^32-1)", (long long)numel);
    if ((spec->ef || spec->delta) && !st)
        return nb__codec_err(err, errlen, NB_EINVAL, "codec with %s needs a stream", spec->ef ? "ef" : "delta");
    if (nb_codec_spec_format(spec, out->spec, sizeof out->spec) < 0)
        return nb__codec_err(err, errlen, NB_ERANGE, "codec spec does not fit %d characters", NB_CODEC_SPEC_MAX);

    size_t n = (size_t)numel;
    nb_codec_info_t in = {
        .value = spec->value, .kind = spec->kind, .sr = spec->sr && is_quant(spec->value),
        .delta = spec->delta, .rows = (uint32_t)(n / (size_t)cols64), .cols = (uint32_t)cols64,
        .block = is_quant(spec->value) ? spec->block : 0, .decoded_bytes = (uint64_t)n * 4,
    };
    const float *xe = x->data;
    float *base = NULL, *work = NULL;
    int rc;
    if (st) {
        if (!(work = nb__codec_stream_work(st, 0, n)))
            return nb__codec_err(err, errlen, NB_ENOMEM, "out of device memory for the stream");
    }
    if (spec->ef) {
        float *r = nb__codec_stream_residual(st, n);
        if (!r)
            return nb__codec_err(err, errlen, NB_ENOMEM, "out of device memory for the residual");
        nb_be_copy(be, work, x->data, n * 4);
        nb_add(be, work, r, 1.0f, n);
        xe = work;
    } else if (spec->delta) {
        base = nb__codec_stream_base(st, key, n, &in.visit);
        in.key = key;
        if (base) {
            nb_be_copy(be, work, x->data, n * 4);
            nb_add(be, work, base, -1.0f, n);
            xe = work;
        }
    }

    switch (spec->kind) {
    case NB_CODEC_S_DENSE: {
        size_t sb, cb, total;
        if (nb__codec_val_bytes(spec, n, in.cols, &sb, &cb) || nb_add_size(sb, cb, &total))
            return nb__codec_err(err, errlen, NB_ERANGE, "payload too large");
        if ((rc = nb__codec_msg_reserve(out, total)))
            return nb__codec_err(err, errlen, rc, "out of memory for a %zu-byte payload", total);
        if ((rc = nb__codec_val_encode(be, spec, xe, n, in.cols, out->payload, out->payload + sb, seed, err, errlen)))
            return rc;
        out->payload_len = total;
        break;
    }
    case NB_CODEC_S_TOPK:
        if ((rc = nb__codec_topk_encode(be, spec, xe, n, seed, out, &in, err, errlen)))
            return rc;
        break;
    case NB_CODEC_S_SVD:
        if ((rc = nb__codec_svd_encode(be, spec, xe, in.rows, in.cols, seed, out, &in, err, errlen)))
            return rc;
        break;
    }
    in.payload_bytes = out->payload_len;
    write_meta(out, &in);

    if (spec->ef || spec->delta) {
        /* the sender reconstructs what the receiver will see */
        float *recon = nb__codec_stream_work(st, 1, n);
        if (!recon)
            return nb__codec_err(err, errlen, NB_ENOMEM, "out of device memory for the stream");
        if ((rc = decode_body(be, spec, &in, out->payload, recon, err, errlen)))
            return rc;
        if (spec->ef) {
            float *r = nb__codec_stream_residual(st, n);
            nb_be_copy(be, r, xe, n * 4);
            nb_add(be, r, recon, -1.0f, n);
        } else {
            if (base)
                nb_add(be, recon, base, 1.0f, n);
            if ((rc = nb__codec_stream_set_base(st, key, recon, n, base == NULL)))
                return nb__codec_err(err, errlen, rc, "delta base of %zu floats exceeds the stream's limit", n);
        }
    }
    return 0;
}

int nb_codec_decode_into(nb_backend_t *be, const char *spec_text, const uint8_t *meta, size_t meta_len,
                         const uint8_t *payload, size_t payload_len, uint64_t max_bytes,
                         nb_codec_stream_t *st, nb_tensor_t *dst, char *err, size_t errlen)
{
    nb_codec_info_t in;
    nb_codec_spec_t s;
    int rc = nb_codec_peek(spec_text, meta, meta_len, &in, err, errlen);
    if (rc)
        return rc;
    NB_CHECK(nb_codec_spec_parse(spec_text, &s, NULL, 0) == 0); /* peek parsed it */
    if (!nb_codec_ops_ok(be))
        return nb__codec_err(err, errlen, NB_EINVAL, "backend %s has no codec primitives", be->iface->name);
    if (max_bytes && in.decoded_bytes > max_bytes)
        return nb__codec_err(err, errlen, NB_ELIMIT, "decoded size %llu bytes exceeds the limit of %llu",
                             (unsigned long long)in.decoded_bytes, (unsigned long long)max_bytes);
    if (payload_len != in.payload_bytes || (!payload && payload_len))
        return nb__codec_err(err, errlen, NB_EFORMAT, "payload is %zu bytes, codec metadata says %llu",
                             payload_len, (unsigned long long)in.payload_bytes);
    if (!dst || dst->be != be || dst->dtype != NB_F32 || (uint64_t)nb_tensor_numel(dst) * 4 != in.decoded_bytes)
        return nb__codec_err(err, errlen, NB_EINVAL, "decode target must be an f32 tensor of %ux%u on %s",
                             in.rows, in.cols, be->iface->name);
    size_t n = (size_t)in.rows * in.cols;
    float *base = NULL;
    if (in.delta) {
        if (!st)
            return nb__codec_err(err, errlen, NB_EINVAL, "delta codec needs a stream");
        if (in.visit) {
            uint32_t have;
            base = nb__codec_stream_base(st, in.key, n, &have);
            if (!base || have != in.visit)
                return nb__codec_err(err, errlen, NB_ESTATE,
                                     "delta for key %llu builds on visit %u, this stream has %u",
                                     (unsigned long long)in.key, in.visit, base ? have : 0);
        }
    }
    if ((rc = decode_body(be, &s, &in, payload, dst->data, err, errlen)))
        return rc;
    if (in.delta) {
        if (base)
            nb_add(be, dst->data, base, 1.0f, n);
        if ((rc = nb__codec_stream_set_base(st, in.key, dst->data, n, base == NULL)))
            return nb__codec_err(err, errlen, rc, "delta base of %zu floats exceeds the stream's limit", n);
    }
    return 0;
}

int nb_codec_decode(nb_backend_t *be, const char *spec, const uint8_t *meta, size_t meta_len,
                    const uint8_t *payload, size_t payload_len, uint64_t max_bytes,
                    nb_codec_stream_t *st, nb_tensor_t **out, char *err, size_t errlen)
{
    *out = NULL;
    nb_codec_info_t in;
    int rc = nb_codec_peek(spec, meta, meta_len, &in, err, errlen);
    if (rc)
        return rc;
    if (max_bytes && in.decoded_bytes > max_bytes)
        return nb__codec_err(err, errlen, NB_ELIMIT, "decoded size %llu bytes exceeds the limit of %llu",
                             (unsigned long long)in.decoded_bytes, (unsigned long long)max_bytes);
    if (payload_len != in.payload_bytes)
        return nb__codec_err(err, errlen, NB_EFORMAT, "payload is %zu bytes, codec metadata says %llu",
                             payload_len, (unsigned long long)in.payload_bytes);
    int64_t shape[2] = { in.rows, in.cols };
    nb_tensor_t *t = nb_tensor_new(be, NB_F32, 2, shape);
    if (!t)
        return nb__codec_err(err, errlen, NB_ENOMEM, "out of memory for a %ux%u tensor", in.rows, in.cols);
    rc = nb_codec_decode_into(be, spec, meta, meta_len, payload, payload_len, max_bytes, st, t, err, errlen);
    if (rc) {
        nb_tensor_free(t);
        return rc;
    }
    *out = t;
    return 0;
}
