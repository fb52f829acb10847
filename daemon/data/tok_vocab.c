/*
 * tok_vocab.c - the tokenizer's hash tables: token string -> ID (with the
 * strings by ID), BPE merge pair -> (rank, merged ID), and the per-call word
 * cache; see tok_internal.h.
 */
#include <stdlib.h>
#include <string.h>
#include "kernels/common.h"
#include "daemon/data/tok_internal.h"

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h ^ h >> 29;
}

static int vocab_grow(nb_vocab_t *v)
{
    uint32_t cap = v->slot ? (v->mask + 1) * 2 : 1024;
    uint32_t *slot = calloc(cap, sizeof *slot);
    if (!slot)
        return NB_ENOMEM;
    for (uint32_t i = 0; v->slot && i <= v->mask; i++) {
        if (!v->slot[i])
            continue;
        uint32_t id = v->slot[i] - 1;
        uint64_t h = hash_bytes(v->str[id], v->len[id]);
        uint32_t j = (uint32_t)h & (cap - 1);
        while (slot[j])
            j = (j + 1) & (cap - 1);
        slot[j] = id + 1;
    }
    free(v->slot);
    v->slot = slot;
    v->mask = cap - 1;
    return 0;
}

uint32_t nb_vocab_find(const nb_vocab_t *v, const char *s, size_t len)
{
    if (!v->slot)
        return NB_TOK_NONE;
    uint32_t j = (uint32_t)hash_bytes(s, len) & v->mask;
    while (v->slot[j]) {
        uint32_t id = v->slot[j] - 1;
        if (v->len[id] == len && !memcmp(v->str[id], s, len))
            return id;
        j = (j + 1) & v->mask;
    }
    return NB_TOK_NONE;
}

int nb_vocab_add(nb_vocab_t *v, const char *s, size_t len, uint32_t id, uint32_t *dup_id)
{
    if (id >= NB_TOK_MAX_VOCAB || len > UINT32_MAX / 2)
        return NB_ERANGE;
    uint32_t other = nb_vocab_find(v, s, len);
    if (other != NB_TOK_NONE || (id < v->n && v->str[id])) {
        if (dup_id)
            *dup_id = other != NB_TOK_NONE ? other : id;
        return NB_EFORMAT;
    }
    if (id >= v->cap) {
        uint32_t cap = v->cap ? v->cap : 1024;
        while (cap <= id)
            cap *= 2;
        char **str = realloc(v->str, cap * sizeof *str);
        if (!str)
            return NB_ENOMEM;
        v->str = str;
        uint32_t *l = realloc(v->len, cap * sizeof *l);
        if (!l)
            return NB_ENOMEM;
        v->len = l;
        memset(v->str + v->cap, 0, (cap - v->cap) * sizeof *str);
        memset(v->len + v->cap, 0, (cap - v->cap) * sizeof *l);
        v->cap = cap;
    }
    if (!v->slot || (v->used + 1) * 2 > v->mask + 1) {
        int rc = vocab_grow(v);
        if (rc)
            return rc;
    }
    char *copy = malloc(len + 1);
    if (!copy)
        return NB_ENOMEM;
    memcpy(copy, s, len);
    copy[len] = 0;
    v->str[id] = copy;
    v->len[id] = (uint32_t)len;
    if (id >= v->n)
        v->n = id + 1;
    uint32_t j = (uint32_t)hash_bytes(s, len) & v->mask;
    while (v->slot[j])
        j = (j + 1) & v->mask;
    v->slot[j] = id + 1;
    v->used++;
    return 0;
}

void nb_vocab_free(nb_vocab_t *v)
{
    for (uint32_t i = 0; i < v->n; i++)
        free(v->str[i]);
    free(v->str);
    free(v->len);
    free(v->slot);
    memset(v, 0, sizeof *v);
}

static uint32_t hash_pair(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (uint32_t)k;
}

static int merges_grow(nb_merges_t *m)
{
    uint32_t cap = m->key ? (m->mask + 1) * 2 : 1024;
    uint64_t *key = malloc(cap * sizeof *key);
    uint32_t *rank = malloc(cap * sizeof *rank), *merged = malloc(cap * sizeof *merged);
    if (!key || !rank || !merged) {
        free(key), free(rank), free(merged);
        return NB_ENOMEM;
    }
    memset(key, 0xff, cap * sizeof *key);
    for (uint32_t i = 0; m->key && i <= m->mask; i++) {
        if (m->key[i] == UINT64_MAX)
            continue;
        uint32_t j = hash_pair(m->key[i]) & (cap - 1);
        while (key[j] != UINT64_MAX)
            j = (j + 1) & (cap - 1);
        key[j] = m->key[i], rank[j] = m->rank[i], merged[j] = m->merged[i];
    }
    free(m->key), free(m->rank), free(m->merged);
    m->key = key, m->rank = rank, m->merged = merged;
    m->mask = cap - 1;
    return 0;
}

uint32_t nb_merges_find(const nb_merges_t *m, uint32_t a, uint32_t b, uint32_t *merged)
{
    if (!m->key)
        return NB_TOK_NONE;
    uint64_t k = (uint64_t)a << 32 | b;
    uint32_t j = hash_pair(k) & m->mask;
    while (m->key[j] != UINT64_MAX) {
        if (m->key[j] == k) {
            *merged = m->merged[j];
            return m->rank[j];
        }
        j = (j + 1) & m->mask;
    }
    return NB_TOK_NONE;
}

int nb_merges_add(nb_merges_t *m, uint32_t a, uint32_t b, uint32_t rank, uint32_t merged)
{
    uint32_t x;
    if (nb_merges_find(m, a, b, &x) != NB_TOK_NONE)
        return NB_EFORMAT;
    if (!m->key || (m->used + 1) * 2 > m->mask + 1) {
        int rc = merges_grow(m);
        if (rc)
            return rc;
    }
    uint64_t k = (uint64_t)a << 32 | b;
    uint32_t j = hash_pair(k) & m->mask;
    while (m->key[j] != UINT64_MAX)
        j = (j + 1) & m->mask;
    m->key[j] = k, m->rank[j] = rank, m->merged[j] = merged;
    m->used++;
    return 0;
}

void nb_merges_free(nb_merges_t *m)
{
    free(m->key), free(m->rank), free(m->merged);
    memset(m, 0, sizeof *m);
}

#define WCACHE_SLOTS 4096u
#define WCACHE_BYTES 23u
#define WCACHE_IDS 8u

struct nb_wcache {
    struct {
        uint8_t len, nids; /* len 0: empty */
        unsigned char b[WCACHE_BYTES];
        uint32_t ids[WCACHE_IDS];
    } e[WCACHE_SLOTS];
};

nb_wcache_t *nb_wcache_new(void) { return calloc(1, sizeof(nb_wcache_t)); }

static uint32_t wcache_slot(const unsigned char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 16777619u;
    return (h ^ h >> 15) & (WCACHE_SLOTS - 1);
}

int nb_wcache_get(nb_wcache_t *c, const unsigned char *s, size_t n, nb_idvec_t *out)
{
    if (!c || n == 0 || n > WCACHE_BYTES)
        return 0;
    uint32_t k = wcache_slot(s, n);
    if (c->e[k].len != n || memcmp(c->e[k].b, s, n) != 0)
        return 0;
    for (uint32_t i = 0; i < c->e[k].nids; i++)
        if (nb_idvec_push(out, c->e[k].ids[i]))
            return NB_ENOMEM;
    return 1;
}

void nb_wcache_put(nb_wcache_t *c, const unsigned char *s, size_t n, const uint32_t *ids, size_t nids)
{
    if (!c || n == 0 || n > WCACHE_BYTES || nids > WCACHE_IDS)
        return;
    uint32_t k = wcache_slot(s, n);
    c->e[k].len = (uint8_t)n;
    c->e[k].nids = (uint8_t)nids;
    memcpy(c->e[k].b, s, n);
    memcpy(c->e[k].ids, ids, nids * sizeof *ids);
}
