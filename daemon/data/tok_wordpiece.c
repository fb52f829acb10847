/*
 * tok_wordpiece.c - BERT's tokenization as Hugging Face `tokenizers` does it:
 * BertNormalizer (clean text, CJK characters spaced out, accents stripped
 * after NFD, lower case per code point), BertPreTokenizer (split on
 * whitespace, every punctuation character alone) and the WordPiece model
 * (greedy longest match, "##" pieces, a word with any piece missing or
 * longer than max_chars is [UNK] as a whole); and its decoder.
 */
#include <stdlib.h>
#include <string.h>
#include "kernels/common.h"
#include "daemon/data/tok_internal.h"
#include "daemon/data/unicode.h"

/* tokenizers' is_control: the "other" categories, except unassigned code
 * points (its table keeps those) and \t \n \r (whitespace). */
static int is_control(uint32_t c)
{
    if (c == '\t' || c == '\n' || c == '\r')
        return 0;
    if (c < 0x20 || c == 0x7F)
        return 1;
    if (c < 0x80)
        return 0;
    enum nb_ucat k = nb_ucat(c);
    return k == NB_UCAT_Cc || k == NB_UCAT_Cf || k == NB_UCAT_Co || k == NB_UCAT_Cs;
}

static int is_chinese(uint32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

static int is_punct(uint32_t c)
{
    if (c < 0x80)
        return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
               (c >= 123 && c <= 126);
    enum nb_ucat k = nb_ucat(c);
    return k >= NB_UCAT_Pc && k <= NB_UCAT_Po;
}

/* The word being collected: its UTF-8 bytes and character offsets, kept only
 * up to max_chars characters (a longer word is [UNK] whatever it holds). */
typedef struct {
    const nb_tokenizer_t *t;
    nb_idvec_t *out;
    nb_wcache_t *cache;
    char *buf;      /* prefix_len bytes of room, then the word */
    size_t *off;    /* [max_chars + 1] */
    size_t nchars, nbytes;
    int rc;
} wp_word_t;

static void word_flush(wp_word_t *w)
{
    const nb_tokenizer_t *t = w->t;
    size_t C = w->nchars;
    if (C == 0 || w->rc)
        return;
    w->nchars = w->nbytes = 0;
    if (C > t->max_chars) {
        w->rc = nb_idvec_push(w->out, t->unk_id);
        return;
    }
    char *word = w->buf + t->prefix_len;
    int hit = nb_wcache_get(w->cache, (const unsigned char *)word, w->off[C], w->out);
    if (hit) {
        w->rc = hit < 0 ? hit : 0;
        return;
    }
    size_t mark = w->out->n, start = 0;
    while (start < C) {
        uint32_t id = NB_TOK_NONE;
        size_t end = C;
        for (; end > start; end--) {
            const char *key = word + w->off[start];
            size_t klen = w->off[end] - w->off[start];
            if (start > 0) {
                /* the prefix goes just before the piece: save what it covers */
                char save[32];
                memcpy(save, key - t->prefix_len, t->prefix_len);
                memcpy((char *)key - t->prefix_len, t->prefix, t->prefix_len);
                id = nb_vocab_find(&t->vocab, key - t->prefix_len, klen + t->prefix_len);
                memcpy((char *)key - t->prefix_len, save, t->prefix_len);
            } else {
                id = nb_vocab_find(&t->vocab, key, klen);
            }
            if (id != NB_TOK_NONE)
                break;
        }
        if (id == NB_TOK_NONE) {
            w->out->n = mark;
            w->rc = nb_idvec_push(w->out, t->unk_id);
            return;
        }
        if ((w->rc = nb_idvec_push(w->out, id)))
            return;
        start = end;
    }
    nb_wcache_put(w->cache, (const unsigned char *)word, w->off[C], w->out->ids + mark, w->out->n - mark);
}

static void word_add(wp_word_t *w, uint32_t c)
{
    if (w->nchars < w->t->max_chars + 1) {
        w->off[w->nchars] = w->nbytes;
        w->nbytes += (size_t)nb_utf8_encode(c, (unsigned char *)w->buf + w->t->prefix_len + w->nbytes);
        w->off[w->nchars + 1] = w->nbytes;
    }
    w->nchars++;
}

/* Pre-tokenizes one normalised code point. */
static void split_char(wp_word_t *w, uint32_t c)
{
    if (c == ' ' || nb_uni_is_space(c)) {
        word_flush(w);
    } else if (is_punct(c)) {
        word_flush(w);
        word_add(w, c);
        word_flush(w);
    } else {
        word_add(w, c);
    }
}

int nb_wp_encode(const nb_tokenizer_t *t, const char *s, size_t n, nb_idvec_t *out, nb_wcache_t *cache)
{
    wp_word_t w = {.t = t, .out = out, .cache = cache};
    w.buf = malloc(t->prefix_len + 4 * (t->max_chars + 2));
    w.off = malloc((t->max_chars + 3) * sizeof *w.off);
    if (!w.buf || !w.off) {
        free(w.buf), free(w.off);
        return NB_ENOMEM;
    }
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n && !w.rc) {
        uint32_t c;
        int k = nb_utf8_decode(p + i, n - i, &c);
        NB_CHECK(k > 0); /* checked by the caller */
        i += (size_t)k;
        if (t->clean_text) {
            if (c == 0 || c == 0xFFFD || is_control(c))
                continue;
            if (c == '\t' || c == '\n' || c == '\r' || nb_uni_is_space(c))
                c = ' ';
        }
        if (t->chinese && is_chinese(c)) {
            word_flush(&w);
            word_add(&w, c);
            word_flush(&w);
            continue;
        }
        uint32_t d[4];
        int nd = 1;
        d[0] = c;
        if (t->strip_accents)
            nd = nb_uni_nfd(c, d);
        for (int j = 0; j < nd; j++) {
            if (t->strip_accents && d[j] >= 0x300 && nb_ucat(d[j]) == NB_UCAT_Mn)
                continue;
            if (t->lowercase) {
                uint32_t l[3];
                int nl = nb_uni_lower(d[j], l);
                for (int m = 0; m < nl; m++)
                    split_char(&w, l[m]);
            } else {
                split_char(&w, d[j]);
            }
        }
    }
    word_flush(&w);
    free(w.buf), free(w.off);
    return w.rc;
}

/* tokenizers' decoder cleanup, applied to each token with its leading space. */
static void cleanup(char *s, size_t *n)
{
    static const char *const rep[][2] = {
        {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
        {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"},
    };
    for (size_t r = 0; r < NB_ARRAY_LEN(rep); r++) {
        size_t fl = strlen(rep[r][0]), tl = strlen(rep[r][1]);
        for (size_t i = 0; i + fl <= *n;) {
            if (memcmp(s + i, rep[r][0], fl) != 0) {
                i++;
                continue;
            }
            /* every replacement is no longer than what it replaces */
            memcpy(s + i, rep[r][1], tl);
            memmove(s + i + tl, s + i + fl, *n - i - fl);
            *n -= fl - tl;
            i += tl;
        }
    }
}

int nb_wp_decode(const nb_tokenizer_t *t, const uint32_t *ids, size_t n, nb_strbuf_t *out)
{
    char *tmp = NULL;
    size_t cap = 0;
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        const char *s = t->vocab.str[ids[i]];
        size_t len = t->vocab.len[ids[i]];
        int glue = i > 0 && t->prefix_len && len >= t->prefix_len && !memcmp(s, t->prefix, t->prefix_len);
        if (glue)
            s += t->prefix_len, len -= t->prefix_len;
        size_t need = len + 2;
        if (need > cap) {
            char *p = realloc(tmp, need);
            if (!p) {
                rc = NB_ENOMEM;
                break;
            }
            tmp = p, cap = need;
        }
        size_t m = 0;
        if (i > 0 && !glue)
            tmp[m++] = ' ';
        memcpy(tmp + m, s, len);
        m += len;
        cleanup(tmp, &m);
        rc = nb_strbuf_put(out, tmp, m);
    }
    free(tmp);
    return rc;
}
