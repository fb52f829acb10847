/*
 * codec_stream.c - per-stream codec state: the error-feedback residual kept
 * by a sender, and the delta bases (last reconstruction per key) that sender
 * and receiver both keep in delta mode. All tensors live on the stream's
 * backend. Keys are few (one per sample or micro-batch in a fine-tuning
 * epoch), so they are found by a linear scan; eviction is oldest-first.
 */
#include <string.h>
#include "kernels/codec/codec_internal.h"

typedef struct {
    uint64_t key;
    uint32_t visit;
    size_t n;
    float *base;
} entry_t;

struct nb_codec_stream {
    nb_backend_t *be;
    size_t max_bytes;
    float *resid;
    size_t resid_n;
    float *work[2];
    size_t work_n[2];
    entry_t *ents; /* oldest first */
    size_t nents, cap;
    size_t base_bytes;
};

nb_codec_stream_t *nb_codec_stream_new(nb_backend_t *be, size_t max_state_bytes)
{
    nb_codec_stream_t *st = calloc(1, sizeof *st);
    if (!st)
        return NULL;
    st->be = be;
    st->max_bytes = max_state_bytes;
    return st;
}

void nb_codec_stream_reset(nb_codec_stream_t *st)
{
    if (!st)
        return;
    if (st->resid)
        nb_be_dealloc(st->be, st->resid);
    st->resid = NULL;
    st->resid_n = 0;
    for (size_t i = 0; i < st->nents; i++)
        nb_be_dealloc(st->be, st->ents[i].base);
    st->nents = 0;
    st->base_bytes = 0;
}

void nb_codec_stream_free(nb_codec_stream_t *st)
{
    if (!st)
        return;
    nb_codec_stream_reset(st);
    for (int i = 0; i < 2; i++)
        if (st->work[i])
            nb_be_dealloc(st->be, st->work[i]);
    free(st->ents);
    free(st);
}

size_t nb_codec_stream_bytes(const nb_codec_stream_t *st)
{
    return st->resid_n * sizeof(float) + st->base_bytes;
}

double nb_codec_stream_residual_sumsq(nb_codec_stream_t *st)
{
    double s = 0.0;
    if (st->resid)
        nb_sumsq(st->be, &s, st->resid, st->resid_n);
    return s;
}

float *nb__codec_stream_work(nb_codec_stream_t *st, int slot, size_t n)
{
    NB_CHECK(slot == 0 || slot == 1);
    if (st->work_n[slot] >= n && st->work[slot])
        return st->work[slot];
    size_t bytes;
    if (nb_mul_size(n, sizeof(float), &bytes))
        return NULL;
    float *w = nb_be_alloc(st->be, bytes);
    if (!w)
        return NULL;
    if (st->work[slot])
        nb_be_dealloc(st->be, st->work[slot]);
    st->work[slot] = w;
    st->work_n[slot] = n;
    return w;
}

float *nb__codec_stream_residual(nb_codec_stream_t *st, size_t n)
{
    if (st->resid && st->resid_n == n)
        return st->resid;
    size_t bytes;
    if (nb_mul_size(n, sizeof(float), &bytes))
        return NULL;
    float *r = nb_be_alloc(st->be, bytes);
    if (!r)
        return NULL;
    nb_be_memset0(st->be, r, bytes);
    if (st->resid)
        nb_be_dealloc(st->be, st->resid);
    st->resid = r;
    st->resid_n = n;
    return r;
}

static entry_t *find(nb_codec_stream_t *st, uint64_t key)
{
    for (size_t i = 0; i < st->nents; i++)
        if (st->ents[i].key == key)
            return &st->ents[i];
    return NULL;
}

float *nb__codec_stream_base(nb_codec_stream_t *st, uint64_t key, size_t n, uint32_t *visit)
{
    entry_t *e = find(st, key);
    if (!e || e->n != n) {
        *visit = 0;
        return NULL;
    }
    *visit = e->visit;
    return e->base;
}

int nb__codec_stream_set_base(nb_codec_stream_t *st, uint64_t key, const float *recon, size_t n,
                              bool fresh)
{
    size_t bytes;
    if (nb_mul_size(n, sizeof(float), &bytes))
        return NB_ENOMEM;
    entry_t *e = find(st, key);
    if (e && e->n == n) {
        nb_be_copy(st->be, e->base, recon, bytes);
        e->visit = fresh ? 1 : e->visit + 1;
        return 0;
    }
    if (e) { /* same key, new size: start over */
        nb_be_dealloc(st->be, e->base);
        st->base_bytes -= e->n * sizeof(float);
        memmove(e, e + 1, (size_t)(st->ents + st->nents - (e + 1)) * sizeof *e);
        st->nents--;
    }
    if (bytes > st->max_bytes)
        return NB_ELIMIT;
    while (st->nents && st->base_bytes + bytes > st->max_bytes) {
        nb_be_dealloc(st->be, st->ents[0].base);
        st->base_bytes -= st->ents[0].n * sizeof(float);
        memmove(st->ents, st->ents + 1, (st->nents - 1) * sizeof *st->ents);
        st->nents--;
    }
    if (st->nents == st->cap) {
        size_t cap = st->cap ? st->cap * 2 : 16;
        entry_t *ne = realloc(st->ents, cap * sizeof *ne);
        if (!ne)
            return NB_ENOMEM;
        st->ents = ne;
        st->cap = cap;
    }
    float *b = nb_be_alloc(st->be, bytes);
    if (!b)
        return NB_ENOMEM;
    nb_be_copy(st->be, b, recon, bytes);
    st->ents[st->nents++] = (entry_t){ .key = key, .visit = 1, .n = n, .base = b };
    st->base_bytes += bytes;
    return 0;
}

/* ---- state copy, export and import ---------------------------------------- */

bool nb_codec_stream_empty(const nb_codec_stream_t *st)
{
    return !st || (!st->resid && st->nents == 0);
}

int nb_codec_stream_set_residual(nb_codec_stream_t *st, const float *src, size_t n)
{
    float *r = nb__codec_stream_residual(st, n);
    if (!r)
        return NB_ENOMEM;
    nb_be_copy(st->be, r, src, n * sizeof(float));
    return 0;
}

int nb_codec_stream_add_base(nb_codec_stream_t *st, uint64_t key, uint32_t visit, const float *src, size_t n)
{
    int rc = nb__codec_stream_set_base(st, key, src, n, true);
    if (rc)
        return rc;
    entry_t *e = find(st, key);
    if (e)
        e->visit = visit;
    return 0;
}

int nb_codec_stream_copy(nb_codec_stream_t *dst, const nb_codec_stream_t *src)
{
    if (dst == src)
        return 0;
    nb_codec_stream_reset(dst);
    int rc = 0;
    if (src->resid)
        rc = nb_codec_stream_set_residual(dst, src->resid, src->resid_n);
    for (size_t i = 0; rc == 0 && i < src->nents; i++)
        rc = nb_codec_stream_add_base(dst, src->ents[i].key, src->ents[i].visit, src->ents[i].base,
                                      src->ents[i].n);
    if (rc)
        nb_codec_stream_reset(dst);
    return rc;
}

const float *nb_codec_stream_residual_state(const nb_codec_stream_t *st, size_t *n)
{
    *n = st->resid ? st->resid_n : 0;
    return st->resid;
}

size_t nb_codec_stream_num_bases(const nb_codec_stream_t *st)
{
    return st->nents;
}

const float *nb_codec_stream_base_state(const nb_codec_stream_t *st, size_t i, uint64_t *key, uint32_t *visit,
                                        size_t *n)
{
    if (i >= st->nents)
        return NULL;
    *key = st->ents[i].key;
    *visit = st->ents[i].visit;
    *n = st->ents[i].n;
    return st->ents[i].base;
}
