/*
 * codec_mem.c - memory helpers of the codec layer: error formatting, device
 * staging of host payload bytes, and the message's payload buffer.
 */
#include <stdarg.h>
#include <string.h>
#include "kernels/codec/codec_internal.h"

int nb__codec_err(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

int nb__codec_dev_in(nb_backend_t *be, const void *host, size_t n, const void **dev, void **tmp)
{
    *tmp = NULL;
    if (be->iface->kind == NB_DEV_CPU) {
        *dev = host;
        return 0;
    }
    void *d = nb_be_alloc(be, n ? n : 1);
    if (!d)
        return NB_ENOMEM;
    nb_be_from_host(be, d, host, n);
    nb_be_sync(be); /* host bytes may be reused by the caller right after */
    *dev = d;
    *tmp = d;
    return 0;
}

int nb__codec_dev_out(nb_backend_t *be, void *host, size_t n, void **dev, void **tmp)
{
    *tmp = NULL;
    if (be->iface->kind == NB_DEV_CPU) {
        *dev = host;
        return 0;
    }
    void *d = nb_be_alloc(be, n ? n : 1);
    if (!d)
        return NB_ENOMEM;
    *dev = d;
    *tmp = d;
    return 0;
}

void nb__codec_dev_out_done(nb_backend_t *be, void *host, size_t n, void *tmp)
{
    if (!tmp)
        return;
    nb_be_to_host(be, host, tmp, n);
    nb_be_dealloc(be, tmp);
}

void nb__codec_dev_release(nb_backend_t *be, void *tmp)
{
    if (tmp)
        nb_be_dealloc(be, tmp);
}

int nb__codec_msg_reserve(nb_codec_msg_t *m, size_t n)
{
    if (n <= m->payload_cap && m->payload)
        return 0;
    size_t cap = n < 64 ? 64 : n;
    size_t rounded;
    if (nb_add_size(cap, 63, &rounded))
        return NB_ENOMEM;
    rounded &= ~(size_t)63;
    void *p = NULL;
    if (posix_memalign(&p, 64, rounded))
        return NB_ENOMEM;
    free(m->payload);
    m->payload = p;
    m->payload_cap = rounded;
    return 0;
}

void nb_codec_msg_init(nb_codec_msg_t *m)
{
    memset(m, 0, sizeof *m);
}

void nb_codec_msg_free(nb_codec_msg_t *m)
{
    if (!m)
        return;
    free(m->payload);
    memset(m, 0, sizeof *m);
}

size_t nb_codec_msg_bytes(const nb_codec_msg_t *m)
{
    return strnlen(m->spec, sizeof m->spec) + m->meta_len + m->payload_len;
}
