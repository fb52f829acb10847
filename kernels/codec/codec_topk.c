/*
 * codec_topk.c - the top-k structure codec: keep the ceil(F * n) largest
 * magnitudes, send their values (stored by the wrapping value codec) and
 * their positions. Positions are coded as whichever is smaller: a bitmap of
 * n bits, or LEB128 varints of the gaps between ascending indices (first gap
 * from 0). Index coding happens on the host, where decoding validates every
 * index before the scatter runs on the backend.
 *
 * Payload: [value scales][value codes][index bytes].
 */
#include <math.h>
#include <string.h>
#include "kernels/codec/codec_internal.h"

size_t nb__codec_topk_k(double frac, size_t n)
{
    double k = ceil(frac * (double)n);
    if (k < 1.0)
        return 1;
    if (k > (double)n)
        return n;
    return (size_t)k;
}

static size_t varint_len(uint32_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

int nb__codec_topk_encode(nb_backend_t *be, const nb_codec_spec_t *s, const float *x_dev,
                          size_t n, uint64_t seed, nb_codec_msg_t *m, nb_codec_info_t *info,
                          char *err, size_t errlen)
{
    size_t k = nb__codec_topk_k(s->topk_frac, n);
    size_t ib, vb;
    if (nb_mul_size(k, 4, &ib) || nb_mul_size(k, 4, &vb))
        return nb__codec_err(err, errlen, NB_ENOMEM, "top-k of %zu elements too large", k);
    uint32_t *idx = nb_be_alloc(be, ib);
    float *vals = nb_be_alloc(be, vb);
    uint32_t *hidx = NULL;
    int rc = 0;
    if (!idx || !vals) {
        rc = nb__codec_err(err, errlen, NB_ENOMEM, "out of device memory for top-k");
        goto out;
    }
    nb_codec_op_topk(be, idx, vals, x_dev, n, k);
    if (be->iface->kind == NB_DEV_CPU) {
        hidx = idx;
    } else {
        if (!(hidx = malloc(ib))) {
            rc = nb__codec_err(err, errlen, NB_ENOMEM, "out of memory for top-k indices");
            goto out;
        }
        nb_be_to_host(be, hidx, idx, ib);
    }
    size_t vlen = 0;
    for (size_t i = 0, prev = 0; i < k; i++) {
        vlen += varint_len((uint32_t)(hidx[i] - prev));
        prev = hidx[i];
    }
    size_t blen = n / 8 + (n % 8 != 0);
    bool bitmap = blen < vlen;
    size_t index_bytes = bitmap ? blen : vlen;
    size_t sb, cb, total;
    if ((rc = nb__codec_val_bytes(s, k, k, &sb, &cb)) || nb_add_size(sb, cb, &total) ||
        nb_add_size(total, index_bytes, &total) || index_bytes > UINT32_MAX) {
        rc = nb__codec_err(err, errlen, NB_ENOMEM, "top-k payload too large");
        goto out;
    }
    if ((rc = nb__codec_msg_reserve(m, total))) {
        rc = nb__codec_err(err, errlen, rc, "out of memory for a %zu-byte payload", total);
        goto out;
    }
    if ((rc = nb__codec_val_encode(be, s, vals, k, k, m->payload, m->payload + sb, seed, err, errlen)))
        goto out;
    uint8_t *p = m->payload + sb + cb;
    if (bitmap) {
        memset(p, 0, blen);
        for (size_t i = 0; i < k; i++)
            p[hidx[i] / 8] |= (uint8_t)(1U << (hidx[i] % 8));
    } else {
        for (size_t i = 0, prev = 0; i < k; i++) {
            uint32_t g = (uint32_t)(hidx[i] - prev);
            prev = hidx[i];
            while (g >= 0x80) {
                *p++ = (uint8_t)(g | 0x80);
                g >>= 7;
            }
            *p++ = (uint8_t)g;
        }
    }
    m->payload_len = total;
    info->k_or_rank = (uint32_t)k;
    info->index_bytes = (uint32_t)index_bytes;
    info->bitmap = bitmap;
out:
    if (hidx && hidx != idx)
        free(hidx);
    if (idx)
        nb_be_dealloc(be, idx);
    if (vals)
        nb_be_dealloc(be, vals);
    return rc;
}

/* Reads the k indices from the index section into out (host), checking that
 * they are ascending, below n and exactly fill the section. */
static int read_indices(const nb_codec_info_t *info, const uint8_t *p, size_t n, uint32_t *out,
                        char *err, size_t errlen)
{
    size_t k = info->k_or_rank, len = info->index_bytes, got = 0;
    if (info->bitmap) {
        for (size_t byte = 0; byte < len; byte++) {
            for (unsigned b = 0; b < 8 && p[byte] >> b; b++) {
                if (!(p[byte] & (1U << b)))
                    continue;
                size_t i = byte * 8 + b;
                if (i >= n)
                    return nb__codec_err(err, errlen, NB_EFORMAT, "top-k bitmap marks index %zu of %zu", i, n);
                if (got == k)
                    return nb__codec_err(err, errlen, NB_EFORMAT, "top-k bitmap marks more than k=%zu indices", k);
                out[got++] = (uint32_t)i;
            }
        }
    } else {
        size_t pos = 0;
        uint64_t prev = 0;
        while (got < k) {
            uint64_t g = 0;
            for (unsigned shift = 0;; shift += 7) {
                if (pos >= len)
                    return nb__codec_err(err, errlen, NB_EFORMAT, "top-k index section ends inside index %zu", got);
                if (shift > 28)
                    return nb__codec_err(err, errlen, NB_EFORMAT, "top-k gap %zu longer than 5 bytes", got);
                uint8_t byte = p[pos++];
                g |= (uint64_t)(byte & 0x7f) << shift;
                if (!(byte & 0x80))
                    break;
            }
            if (got > 0 && g == 0)
                return nb__codec_err(err, errlen, NB_EFORMAT, "top-k index %zu repeats the previous one", got);
            uint64_t i = prev + g;
            if (i >= n)
                return nb__codec_err(err, errlen, NB_EFORMAT, "top-k index %zu is %llu, beyond %zu elements",
                                     got, (unsigned long long)i, n);
            out[got++] = (uint32_t)i;
            prev = i;
        }
        if (pos != len)
            return nb__codec_err(err, errlen, NB_EFORMAT, "top-k index section has %zu bytes after the last index",
                                 len - pos);
    }
    if (got != k)
        return nb__codec_err(err, errlen, NB_EFORMAT, "top-k index section holds %zu indices, metadata says %zu",
                             got, k);
    return 0;
}

int nb__codec_topk_decode(nb_backend_t *be, const nb_codec_spec_t *s, const nb_codec_info_t *info,
                          const uint8_t *payload, float *y_dev, char *err, size_t errlen)
{
    size_t n = (size_t)info->rows * info->cols, k = info->k_or_rank;
    size_t sb, cb;
    int rc = nb__codec_val_bytes(s, k, k, &sb, &cb);
    if (rc)
        return nb__codec_err(err, errlen, rc, "top-k payload too large");
    uint32_t *hidx = malloc(k * sizeof *hidx); /* k <= n < 2^32: no overflow on 64-bit */
    float *vals = nb_be_alloc(be, k * sizeof(float));
    const void *didx = NULL;
    void *tidx = NULL;
    if (!hidx || !vals) {
        rc = nb__codec_err(err, errlen, NB_ENOMEM, "out of memory for %zu top-k values", k);
        goto out;
    }
    if ((rc = read_indices(info, payload + sb + cb, n, hidx, err, errlen)))
        goto out;
    if ((rc = nb__codec_val_decode(be, s, vals, k, k, payload, payload + sb, err, errlen)))
        goto out;
    if ((rc = nb__codec_dev_in(be, hidx, k * sizeof *hidx, &didx, &tidx))) {
        rc = nb__codec_err(err, errlen, rc, "out of device memory");
        goto out;
    }
    nb_codec_op_scatter(be, y_dev, didx, vals, n, k);
    nb_be_sync(be);
out:
    nb__codec_dev_release(be, tidx);
    if (vals)
        nb_be_dealloc(be, vals);
    free(hidx);
    return rc;
}
