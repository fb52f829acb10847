/*
 * tok_bpe.c - GPT-2's byte-level BPE as Hugging Face `tokenizers` does it:
 * the ByteLevel pre-tokenizer (the GPT-2 regex below, written out by hand,
 * then each piece's bytes mapped to printable code points), the BPE model
 * (pairs merged lowest rank first, leftmost first among equal ranks) and the
 * ByteLevel decoder.
 *
 * The regex: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * with \s the White_Space property, \p{L} categories L*, \p{N} categories N*.
 */
#include <stdlib.h>
#include <string.h>
#include "kernels/common.h"
#include "daemon/data/tok_internal.h"
#include "daemon/data/unicode.h"

void nb_bpe_byte_map(nb_tokenizer_t *t)
{
    /* bytes_to_unicode(): printable Latin-1 bytes keep their value, the
     * others get 256, 257, ... in byte order. */
    uint32_t next = 256;
    for (int i = 0; i < 324; i++)
        t->cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        t->byte_cp[b] = keep ? (uint32_t)b : next++;
        t->cp_byte[t->byte_cp[b]] = (int16_t)b;
    }
}

enum { CL_SPACE, CL_L, CL_N, CL_OTHER };

static int cls(uint32_t c)
{
    if (c < 0x80) {
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
            return CL_L;
        if (c >= '0' && c <= '9')
            return CL_N;
        return nb_uni_is_space(c) ? CL_SPACE : CL_OTHER;
    }
    if (nb_uni_is_space(c))
        return CL_SPACE;
    enum nb_ucat k = nb_ucat(c);
    if (k >= NB_UCAT_Lu && k <= NB_UCAT_Lo)
        return CL_L;
    if (k >= NB_UCAT_Nd && k <= NB_UCAT_No)
        return CL_N;
    return CL_OTHER;
}

/* Symbols of one word during merging: a doubly linked list over an array. */
typedef struct {
    uint32_t id;
    int32_t prev, next;
    int alive;
} sym_t;

typedef struct {
    uint32_t rank, pos, merged;
} cand_t;

static int cand_less(cand_t a, cand_t b) { return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos); }

typedef struct {
    cand_t *h;
    size_t n, cap;
} heap_t;

static int heap_push(heap_t *q, cand_t c)
{
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 64;
        cand_t *h = realloc(q->h, cap * sizeof *h);
        if (!h)
            return NB_ENOMEM;
        q->h = h, q->cap = cap;
    }
    size_t i = q->n++;
    while (i > 0 && cand_less(c, q->h[(i - 1) / 2])) {
        q->h[i] = q->h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    q->h[i] = c;
    return 0;
}

static cand_t heap_pop(heap_t *q)
{
    cand_t top = q->h[0], last = q->h[--q->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        cand_t best = last;
        if (l < q->n && cand_less(q->h[l], best))
            m = l, best = q->h[l];
        if (l + 1 < q->n && cand_less(q->h[l + 1], best))
            m = l + 1, best = q->h[l + 1];
        if (m == i)
            break;
        q->h[i] = q->h[m];
        i = m;
    }
    if (q->n)
        q->h[i] = last;
    return top;
}

typedef struct {
    sym_t *sym;
    size_t cap;
    heap_t q;
} bpe_scratch_t;

static int push_pair(const nb_tokenizer_t *t, bpe_scratch_t *w, int32_t pos)
{
    int32_t nx = w->sym[pos].next;
    if (nx < 0)
        return 0;
    uint32_t merged;
    uint32_t r = nb_merges_find(&t->merges, w->sym[pos].id, w->sym[nx].id, &merged);
    if (r == NB_TOK_NONE)
        return 0;
    return heap_push(&w->q, (cand_t){r, (uint32_t)pos, merged});
}

static int bpe_merge(const nb_tokenizer_t *t, bpe_scratch_t *w, const unsigned char *s, size_t n,
                     nb_idvec_t *out);

/* BPE over the bytes of one pre-token, through the cache for short words. */
static int bpe_word(const nb_tokenizer_t *t, bpe_scratch_t *w, nb_wcache_t *c, const unsigned char *s,
                    size_t n, nb_idvec_t *out)
{
    int hit = nb_wcache_get(c, s, n, out);
    if (hit)
        return hit < 0 ? hit : 0;
    size_t mark = out->n;
    int rc = bpe_merge(t, w, s, n, out);
    if (rc == 0)
        nb_wcache_put(c, s, n, out->ids + mark, out->n - mark);
    return rc;
}

/* BPE over the bytes of one pre-token. */
static int bpe_merge(const nb_tokenizer_t *t, bpe_scratch_t *w, const unsigned char *s, size_t n,
                     nb_idvec_t *out)
{
    if (n > w->cap) {
        sym_t *p = realloc(w->sym, n * sizeof *p);
        if (!p)
            return NB_ENOMEM;
        w->sym = p, w->cap = n;
    }
    for (size_t i = 0; i < n; i++)
        w->sym[i] = (sym_t){t->byte_id[s[i]], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1, 1};
    w->q.n = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (push_pair(t, w, (int32_t)i))
            return NB_ENOMEM;
    while (w->q.n) {
        cand_t c = heap_pop(&w->q);
        sym_t *a = &w->sym[c.pos];
        if (!a->alive || a->next < 0)
            continue;
        sym_t *b = &w->sym[a->next];
        uint32_t merged;
        if (nb_merges_find(&t->merges, a->id, b->id, &merged) != c.rank || merged != c.merged)
            continue;
        a->id = merged;
        b->alive = 0;
        a->next = b->next;
        if (b->next >= 0)
            w->sym[b->next].prev = (int32_t)c.pos;
        if (a->prev >= 0 && push_pair(t, w, a->prev))
            return NB_ENOMEM;
        if (push_pair(t, w, (int32_t)c.pos))
            return NB_ENOMEM;
    }
    for (int32_t i = 0; i >= 0; i = w->sym[i].next)
        if (nb_idvec_push(out, w->sym[i].id))
            return NB_ENOMEM;
    return 0;
}

/* Code point at s[*i] (valid UTF-8) and its class; *len gets its byte length. */
static int class_at(const unsigned char *s, size_t n, size_t i, size_t *len)
{
    uint32_t c;
    int k = nb_utf8_decode(s + i, n - i, &c);
    NB_CHECK(k > 0);
    *len = (size_t)k;
    return cls(c);
}

/* Length of the regex match at s[i] (i < n). */
static size_t match_at(const unsigned char *s, size_t n, size_t i)
{
    if (s[i] == '\'' && i + 1 < n) {
        unsigned char a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd')
            return 2;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
            return 3;
    }
    size_t k, j = i;
    int c = class_at(s, n, i, &k);
    int lead = s[i] == ' ';
    if (lead && i + 1 < n) {
        size_t k2;
        int c2 = class_at(s, n, i + 1, &k2);
        if (c2 != CL_SPACE) {
            /* " ?X+" with X the class of the character after the space */
            j = i + 1;
            while (j < n && class_at(s, n, j, &k2) == c2)
                j += k2;
            return j - i;
        }
    }
    if (c != CL_SPACE) {
        while (j < n && class_at(s, n, j, &k) == c)
            j += k;
        return j - i;
    }
    /* \s+(?!\S) | \s+ : a run of spaces, less its last one when a non-space
     * follows (that one starts the next match), unless the run is one long */
    size_t last = i;
    while (j < n && class_at(s, n, j, &k) == CL_SPACE) {
        last = j;
        j += k;
    }
    if (j < n && last > i)
        return last - i;
    return j - i;
}

int nb_bpe_encode(const nb_tokenizer_t *t, const char *text, size_t n, nb_idvec_t *out, nb_wcache_t *cache)
{
    bpe_scratch_t w = {0};
    int rc = 0;
    const unsigned char *s = (const unsigned char *)text;
    unsigned char *tmp = NULL;
    if (t->add_prefix_space && n > 0 && s[0] != ' ') {
        tmp = malloc(n + 1);
        if (!tmp)
            return NB_ENOMEM;
        tmp[0] = ' ';
        memcpy(tmp + 1, s, n);
        s = tmp, n++;
    }
    for (size_t i = 0; i < n && !rc;) {
        size_t m = match_at(s, n, i);
        rc = bpe_word(t, &w, cache, s + i, m, out);
        i += m;
    }
    free(w.sym), free(w.q.h), free(tmp);
    return rc;
}

int nb_bpe_decode(const nb_tokenizer_t *t, const uint32_t *ids, size_t n, nb_strbuf_t *out)
{
    for (size_t i = 0; i < n; i++) {
        const unsigned char *s = (const unsigned char *)t->vocab.str[ids[i]];
        size_t len = t->vocab.len[ids[i]];
        int special = 0;
        for (size_t k = 0; k < t->n_special; k++)
            special |= t->special[k].id == ids[i];
        for (size_t j = 0; j < len;) {
            uint32_t c;
            int k = nb_utf8_decode(s + j, len - j, &c);
            if (k <= 0)
                k = 1, c = 0xFFFD;
            /* a special token's text, and any character outside the byte map, as is */
            char b = (char)(c < 324 && t->cp_byte[c] >= 0 && !special ? t->cp_byte[c] : 0);
            int rc = c < 324 && t->cp_byte[c] >= 0 && !special ? nb_strbuf_put(out, &b, 1)
                                                                : nb_strbuf_put(out, (const char *)s + j, (size_t)k);
            if (rc)
                return rc;
            j += (size_t)k;
        }
    }
    return 0;
}
