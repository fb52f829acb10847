/*
 * ref_file.c - reader of the PyTorch reference files; see ref_file.h.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/common.h"
#include "tests/support/ref_file.h"

#define REF_VERSION 1u

typedef struct {
    const unsigned char *p;
    size_t len, off;
} cursor_t;

static int take(cursor_t *c, void *dst, size_t n)
{
    if (c->len - c->off < n)
        return -1;
    memcpy(dst, c->p + c->off, n);
    c->off += n;
    return 0;
}

int nb_ref_load(const char *path, nb_ref_file_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NB_EIO;
    }
    size_t cap = 0, len = 0;
    unsigned char *buf = NULL;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 65536;
            unsigned char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                snprintf(err, errlen, "%s: out of memory", path);
                return NB_ENOMEM;
            }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0)
            break;
    }
    fclose(f);
    out->buf = buf;
    cursor_t c = { buf, len, 0 };
    char magic[4];
    uint32_t version, count;
    int rc = NB_EFORMAT;
    if (take(&c, magic, 4) || memcmp(magic, "NBRF", 4) != 0) {
        snprintf(err, errlen, "%s: offset 0: not a reference file (magic is not NBRF)", path);
        goto fail;
    }
    if (take(&c, &version, 4)) {
        snprintf(err, errlen, "%s: offset 4: truncated header", path);
        goto fail;
    }
    if (version != REF_VERSION) {
        snprintf(err, errlen, "%s: offset 4: version %u, this reader knows %u", path, version, REF_VERSION);
        rc = NB_EVERSION;
        goto fail;
    }
    if (take(&c, &count, 4) || count > 100000) {
        snprintf(err, errlen, "%s: offset 8: truncated header or bad tensor count", path);
        goto fail;
    }
    out->t = calloc(count ? count : 1, sizeof *out->t);
    if (!out->t) {
        rc = NB_ENOMEM;
        snprintf(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    for (uint32_t i = 0; i < count; i++) {
        nb_ref_tensor_t *t = &out->t[i];
        size_t at = c.off;
        uint16_t nlen;
        uint8_t dt, nd;
        if (take(&c, &nlen, 2) || nlen == 0 || nlen >= sizeof t->name || take(&c, t->name, nlen) ||
            take(&c, &dt, 1) || take(&c, &nd, 1)) {
            snprintf(err, errlen, "%s: offset %zu: truncated or bad header of tensor %u", path, at, i);
            goto fail;
        }
        size_t esize = dt == 0 || dt == 3 ? 4 : dt == 4 ? 1 : 0;
        if (!esize || nd > 4) {
            snprintf(err, errlen, "%s: offset %zu: tensor '%s' has dtype %u / ndim %u", path, at, t->name, dt, nd);
            goto fail;
        }
        t->dtype = dt;
        t->ndim = nd;
        size_t numel = 1;
        for (int d = 0; d < nd; d++) {
            if (take(&c, &t->shape[d], 8) || t->shape[d] > (1u << 30) ||
                nb_mul_size(numel, (size_t)t->shape[d], &numel)) {
                snprintf(err, errlen, "%s: offset %zu: bad shape of tensor '%s'", path, c.off, t->name);
                goto fail;
            }
        }
        t->numel = numel;
        size_t bytes;
        if (nb_mul_size(numel, esize, &bytes) || len - c.off < bytes) {
            snprintf(err, errlen, "%s: offset %zu: truncated data of tensor '%s' (%zu bytes needed, %zu left)",
                     path, c.off, t->name, numel * esize, len - c.off);
            goto fail;
        }
        t->data = buf + c.off;
        c.off += bytes;
        out->n = (int)i + 1;
    }
    if (c.off != len) {
        snprintf(err, errlen, "%s: offset %zu: %zu trailing bytes", path, c.off, len - c.off);
        goto fail;
    }
    return 0;
fail:
    nb_ref_free(out);
    return rc;
}

const nb_ref_tensor_t *nb_ref_get(const nb_ref_file_t *f, const char *name)
{
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->t[i].name, name) == 0)
            return &f->t[i];
    return NULL;
}

long nb_ref_floats(const nb_ref_tensor_t *t, float *dst)
{
    if (t->dtype != 0)
        return -1;
    memcpy(dst, t->data, t->numel * 4);
    return (long)t->numel;
}

long nb_ref_ints(const nb_ref_tensor_t *t, int32_t *dst)
{
    if (t->dtype != 3)
        return -1;
    memcpy(dst, t->data, t->numel * 4);
    return (long)t->numel;
}

void nb_ref_free(nb_ref_file_t *f)
{
    free(f->t);
    free(f->buf);
    memset(f, 0, sizeof *f);
}
