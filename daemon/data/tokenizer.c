/*
 * tokenizer.c - the tokenizer's front: choosing the files to load, special
 * tokens matched on the raw text, UTF-8 checking, and dispatch to the
 * WordPiece (tok_wordpiece.c) or byte-level BPE (tok_bpe.c) encoder and
 * decoder; see tokenizer.h.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "kernels/common.h"
#include "daemon/data/tok_internal.h"
#include "daemon/data/unicode.h"

int nb_idvec_push(nb_idvec_t *v, uint32_t id)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 256;
        uint32_t *ids = realloc(v->ids, cap * sizeof *ids);
        if (!ids)
            return NB_ENOMEM;
        v->ids = ids;
        v->cap = cap;
    }
    v->ids[v->n++] = id;
    return 0;
}

int nb_strbuf_put(nb_strbuf_t *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return NB_ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

int nb_tok_add_special(nb_tokenizer_t *t, const char *s, size_t len, uint32_t id)
{
    if (len == 0)
        return NB_EFORMAT;
    for (size_t i = 0; i < t->n_special; i++)
        if (t->special[i].len == len && !memcmp(t->special[i].s, s, len))
            return 0;
    nb_special_t *sp = realloc(t->special, (t->n_special + 1) * sizeof *sp);
    if (!sp)
        return NB_ENOMEM;
    t->special = sp;
    char *c = malloc(len + 1);
    if (!c)
        return NB_ENOMEM;
    memcpy(c, s, len);
    c[len] = 0;
    sp[t->n_special++] = (nb_special_t){c, len, id};
    t->special_first[(unsigned char)s[0]] = 1;
    return 0;
}

static int is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

int nb_tokenizer_load(const char *path, nb_tokenizer_t **out, char *err, size_t errlen)
{
    *out = NULL;
    nb_tokenizer_t *t = calloc(1, sizeof *t);
    if (!t)
        return NB_ENOMEM;
    t->unk_id = NB_TOK_NONE;
    char a[4096], b[4096];
    int rc;
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(err, errlen, "%s: no such tokenizer file or directory", path);
        rc = NB_EIO;
        goto fail;
    }
    if (S_ISREG(st.st_mode)) {
        rc = nb_tok_load_json(t, path, err, errlen);
        snprintf(a, sizeof a, "%s", path);
    } else if (snprintf(a, sizeof a, "%s/tokenizer.json", path), is_file(a)) {
        rc = nb_tok_load_json(t, a, err, errlen);
    } else if (snprintf(a, sizeof a, "%s/vocab.txt", path), is_file(a)) {
        rc = nb_tok_load_vocab_txt(t, a, err, errlen);
    } else if (snprintf(a, sizeof a, "%s/vocab.json", path), snprintf(b, sizeof b, "%s/merges.txt", path),
               is_file(a) && is_file(b)) {
        t->kind = NB_TOK_BPE;
        rc = nb_tok_load_vocab_json(t, a, err, errlen);
        if (rc == 0)
            rc = nb_tok_load_merges_txt(t, b, err, errlen);
        /* GPT-2's files carry no list of specials; its end-of-text marker is one. */
        uint32_t eot = nb_vocab_find(&t->vocab, "<|endoftext|>", 13);
        if (rc == 0 && eot != NB_TOK_NONE)
            rc = nb_tok_add_special(t, "<|endoftext|>", 13, eot);
    } else {
        snprintf(err, errlen, "%s: holds no tokenizer.json, vocab.txt, or vocab.json with merges.txt", path);
        rc = NB_EIO;
        goto fail;
    }
    if (rc)
        goto fail;
    rc = nb_tok_finish(t, a, err, errlen);
    if (rc)
        goto fail;
    *out = t;
    return 0;
fail:
    nb_tokenizer_free(t);
    return rc;
}

void nb_tokenizer_free(nb_tokenizer_t *t)
{
    if (!t)
        return;
    nb_vocab_free(&t->vocab);
    nb_merges_free(&t->merges);
    for (size_t i = 0; i < t->n_special; i++)
        free(t->special[i].s);
    free(t->special);
    free(t);
}

int nb_tokenizer_kind(const nb_tokenizer_t *t) { return t->kind; }
uint32_t nb_tokenizer_vocab(const nb_tokenizer_t *t) { return t->vocab.n; }
const char *nb_tokenizer_describe(const nb_tokenizer_t *t) { return t->describe; }

/* The longest special token at s[0..n), or NULL. */
static const nb_special_t *special_at(const nb_tokenizer_t *t, const char *s, size_t n)
{
    const nb_special_t *best = NULL;
    for (size_t i = 0; i < t->n_special; i++) {
        const nb_special_t *sp = &t->special[i];
        if (sp->len <= n && !memcmp(sp->s, s, sp->len) && (!best || sp->len > best->len))
            best = sp;
    }
    return best;
}

int nb_tokenizer_encode(const nb_tokenizer_t *t, const char *text, size_t len, nb_idvec_t *out,
                        char *err, size_t errlen)
{
    size_t bad;
    if (nb_utf8_check((const unsigned char *)text, len, &bad) != 0) {
        size_t line = 1, col = 1;
        for (size_t i = 0; i < bad; i++) {
            if (text[i] == '\n')
                line++, col = 1;
            else if (((unsigned char)text[i] & 0xC0) != 0x80)
                col++;
        }
        snprintf(err, errlen, "byte offset %zu (line %zu, character %zu): byte 0x%02x is not UTF-8",
                 bad, line, col, (unsigned char)text[bad]);
        return NB_EFORMAT;
    }
    /* Specials split the text; the pieces between them are encoded alone. */
    size_t start = 0;
    int rc = 0;
    nb_wcache_t *cache = NULL;
    if (len > 4096 && !(cache = nb_wcache_new())) {
        snprintf(err, errlen, "out of memory");
        return NB_ENOMEM;
    }
    for (size_t i = 0; i <= len; i++) {
        const nb_special_t *sp = NULL;
        if (i < len && t->special_first[(unsigned char)text[i]])
            sp = special_at(t, text + i, len - i);
        if (!sp && i < len)
            continue;
        if (i > start) {
            rc = t->kind == NB_TOK_WORDPIECE ? nb_wp_encode(t, text + start, i - start, out, cache)
                                             : nb_bpe_encode(t, text + start, i - start, out, cache);
            if (rc)
                break;
        }
        if (sp) {
            if ((rc = nb_idvec_push(out, sp->id)))
                break;
            i += sp->len - 1;
            start = i + 1;
        }
    }
    free(cache);
    if (rc)
        snprintf(err, errlen, "out of memory");
    return rc;
}

int nb_tokenizer_decode(const nb_tokenizer_t *t, const uint32_t *ids, size_t n, char **text,
                        size_t *len, char *err, size_t errlen)
{
    *text = NULL;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] >= t->vocab.n || !t->vocab.str[ids[i]]) {
            snprintf(err, errlen, "token %zu is %u, not in the vocabulary of %u (%s)", i, ids[i],
                     t->vocab.n, t->kind == NB_TOK_WORDPIECE ? "WordPiece" : "byte-level BPE");
            return NB_ERANGE;
        }
    }
    nb_strbuf_t b = {0};
    int rc = nb_strbuf_put(&b, "", 0);
    if (rc == 0)
        rc = t->kind == NB_TOK_WORDPIECE ? nb_wp_decode(t, ids, n, &b) : nb_bpe_decode(t, ids, n, &b);
    if (rc) {
        free(b.p);
        snprintf(err, errlen, "out of memory");
        return rc;
    }
    *text = b.p;
    *len = b.n;
    return 0;
}
