/*
 * spans.c - span restoration pairs from real text (spans.h): reading and
 * tokenizing the files, cutting training runs and held-out windows, and
 * drawing (source, target) pairs from keyed random streams.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/train/spans.h"
#include "kernels/common.h"
#include "kernels/rng.h"

#define SPANS_FILE_MAX (64u << 20) /* a text larger than 64 MiB is not what this task is for */
/* Mixed into the seed of the pair streams, so they never share a key with
 * the init or another sampler keyed by the same (seed, a, b). */
#define SPANS_STREAM 0x5350414e53ull /* "SPANS" */

typedef struct {
    int file;
    uint64_t start, len; /* tokens of the file */
} span_run_t;

struct nb_spans {
    nb_spans_config_t cfg;
    nb_tokenizer_t *tok;
    int W, T;
    int32_t cls, sep, mask, pad, unk;
    int n_files;
    nb_idvec_t *ids;      /* per file */
    span_run_t *runs;     /* training runs, each at least W tokens */
    uint64_t *run_first;  /* cumulative window starts before run i */
    int n_runs;
    uint64_t n_starts, n_train_tokens;
    span_run_t *held;     /* held-out windows (len W) */
    int n_held;
};

/* Reads path whole into a malloc'd buffer. 0, NB_EIO or NB_ENOMEM/NB_ELIMIT. */
static int read_all(const char *path, char **out, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        return NB_EIO;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    int rc = 0;
    while (buf) {
        if (n == cap) {
            if (cap >= SPANS_FILE_MAX) {
                snprintf(err, errlen, "%s: larger than %u bytes", path, SPANS_FILE_MAX);
                rc = NB_ELIMIT;
                break;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) { /* reported below as out of memory, never as a shorter text */
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    if (!rc && buf && ferror(f)) {
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(EIO));
        rc = NB_EIO;
    }
    fclose(f);
    if (!buf) {
        snprintf(err, errlen, "%s: out of memory", path);
        return NB_ENOMEM;
    }
    if (rc) {
        free(buf);
        return rc;
    }
    *out = buf;
    *len = n;
    return 0;
}

/* The ID of a special token, which must encode as one token. */
static int special(const nb_tokenizer_t *t, const char *name, int32_t *id, char *err, size_t errlen)
{
    nb_idvec_t v = { 0 };
    char e[256];
    int rc = nb_tokenizer_encode(t, name, strlen(name), &v, e, sizeof e);
    bool one = rc == 0 && v.n == 1;
    if (one)
        *id = (int32_t)v.ids[0];
    free(v.ids);
    if (rc == NB_ENOMEM)
        return rc;
    if (!one) {
        snprintf(err, errlen, "job.spans.tokenizer: %s has no token %s (the span task needs a WordPiece (BERT) "
                 "vocabulary with [CLS], [SEP], [MASK], [PAD] and [UNK])", nb_tokenizer_describe(t), name);
        return NB_EINVAL;
    }
    return 0;
}

static int push_run(nb_spans_t *s, span_run_t r, bool held, int *cap_runs, int *cap_held)
{
    span_run_t **arr = held ? &s->held : &s->runs;
    int *n = held ? &s->n_held : &s->n_runs, *cap = held ? cap_held : cap_runs;
    if (*n == *cap) {
        int nc = *cap ? *cap * 2 : 64;
        span_run_t *na = realloc(*arr, (size_t)nc * sizeof *na);
        if (!na)
            return NB_ENOMEM;
        *arr = na;
        *cap = nc;
    }
    (*arr)[(*n)++] = r;
    return 0;
}

/* Cuts every file into windows: held-out ones and runs of training ones. */
static int cut(nb_spans_t *s)
{
    int cap_runs = 0, cap_held = 0, rc;
    uint64_t W = (uint64_t)s->W;
    for (int f = 0; f < s->n_files; f++) {
        uint64_t nwin = s->ids[f].n / W;
        span_run_t run = { .file = f, .start = 0, .len = 0 };
        for (uint64_t k = 0; k < nwin; k++) {
            if (k % (uint64_t)s->cfg.hold == (uint64_t)s->cfg.hold - 1) {
                if (run.len && (rc = push_run(s, run, false, &cap_runs, &cap_held)))
                    return rc;
                if ((rc = push_run(s, (span_run_t){ .file = f, .start = k * W, .len = W }, true, &cap_runs,
                                   &cap_held)))
                    return rc;
                run = (span_run_t){ .file = f, .start = (k + 1) * W, .len = 0 };
            } else {
                run.len += W;
            }
        }
        if (run.len && (rc = push_run(s, run, false, &cap_runs, &cap_held)))
            return rc;
    }
    s->run_first = malloc((size_t)(s->n_runs ? s->n_runs : 1) * sizeof *s->run_first);
    if (!s->run_first)
        return NB_ENOMEM;
    for (int i = 0; i < s->n_runs; i++) {
        s->run_first[i] = s->n_starts;
        s->n_starts += s->runs[i].len - W + 1;
        s->n_train_tokens += s->runs[i].len;
    }
    return 0;
}

int nb_spans_open(const nb_spans_config_t *c, nb_spans_t **out, char *err, size_t errlen)
{
    *out = NULL;
    if (c->n_texts < 1 || c->min_tokens < 1 || c->max_tokens < c->min_tokens || c->hold < 2 ||
        c->src_len - 2 <= c->max_tokens) {
        snprintf(err, errlen, "job.spans: bad task (texts %d, spans of %d..%d tokens, hold %d, windows of %d tokens)",
                 c->n_texts, c->min_tokens, c->max_tokens, c->hold, c->src_len - 2);
        return NB_EINVAL;
    }
    nb_spans_t *s = calloc(1, sizeof *s);
    if (!s)
        return NB_ENOMEM;
    s->cfg = *c;
    s->cfg.texts = NULL; /* not kept: the caller's */
    s->W = c->src_len - 2;
    s->T = c->max_tokens + 1;
    int rc = nb_tokenizer_load(c->tokenizer, &s->tok, err, errlen);
    if (rc)
        goto fail;
    if (nb_tokenizer_kind(s->tok) != NB_TOK_WORDPIECE) {
        snprintf(err, errlen, "job.spans.tokenizer: %s is not a WordPiece (BERT) vocabulary: the span task needs "
                 "[CLS], [SEP], [MASK] and [PAD]", nb_tokenizer_describe(s->tok));
        rc = NB_EINVAL;
        goto fail;
    }
    if ((rc = special(s->tok, "[CLS]", &s->cls, err, errlen)) || (rc = special(s->tok, "[SEP]", &s->sep, err, errlen)) ||
        (rc = special(s->tok, "[MASK]", &s->mask, err, errlen)) || (rc = special(s->tok, "[PAD]", &s->pad, err, errlen)) ||
        (rc = special(s->tok, "[UNK]", &s->unk, err, errlen)))
        goto fail;
    s->ids = calloc((size_t)c->n_texts, sizeof *s->ids);
    if (!s->ids) {
        rc = NB_ENOMEM;
        goto fail;
    }
    s->n_files = c->n_texts;
    for (int f = 0; f < c->n_texts; f++) {
        char *text = NULL, e[512];
        size_t len = 0;
        if ((rc = read_all(c->texts[f], &text, &len, err, errlen)))
            goto fail;
        rc = nb_tokenizer_encode(s->tok, text, len, &s->ids[f], e, sizeof e);
        free(text);
        if (rc) {
            snprintf(err, errlen, "job.spans.text[%d]: %s: %s", f, c->texts[f], e);
            goto fail;
        }
        /* a literal "[MASK]" (or [SEP], ...) in the text must not pass
         * for the task's own markers */
        for (size_t i = 0; i < s->ids[f].n; i++) {
            int32_t id = (int32_t)s->ids[f].ids[i];
            if (id == s->cls || id == s->sep || id == s->mask || id == s->pad)
                s->ids[f].ids[i] = (uint32_t)s->unk;
        }
    }
    if ((rc = cut(s))) {
        snprintf(err, errlen, "job.spans: out of memory");
        goto fail;
    }
    if (s->n_held == 0 || s->n_runs == 0) {
        uint64_t total = 0;
        for (int f = 0; f < s->n_files; f++)
            total += s->ids[f].n;
        snprintf(err, errlen, "job.spans.text: %llu tokens in all give no %s window: a file needs at least %d "
                 "windows of job.seq_len - 2 = %d tokens (job.spans.hold = %d)", (unsigned long long)total,
                 s->n_held ? "training" : "held-out", c->hold, s->W, c->hold);
        rc = NB_EINVAL;
        goto fail;
    }
    *out = s;
    return 0;
fail:
    nb_spans_free(s);
    return rc;
}

void nb_spans_free(nb_spans_t *s)
{
    if (!s)
        return;
    for (int f = 0; s->ids && f < s->n_files; f++)
        free(s->ids[f].ids);
    free(s->ids);
    free(s->runs);
    free(s->run_first);
    free(s->held);
    nb_tokenizer_free(s->tok);
    free(s);
}

const nb_tokenizer_t *nb_spans_tokenizer(const nb_spans_t *s) { return s->tok; }
int nb_spans_vocab(const nb_spans_t *s) { return (int)nb_tokenizer_vocab(s->tok); }
int nb_spans_dec_len(const nb_spans_t *s) { return s->T; }
int32_t nb_spans_eos(const nb_spans_t *s) { return s->sep; }
int32_t nb_spans_pad(const nb_spans_t *s) { return s->pad; }
uint64_t nb_spans_train_tokens(const nb_spans_t *s) { return s->n_train_tokens; }
int nb_spans_heldout_windows(const nb_spans_t *s) { return s->n_held; }
uint64_t nb_spans_train_starts(const nb_spans_t *s) { return s->n_starts; }

int nb_spans_batch_alloc(const nb_spans_t *s, int B, nb_spans_batch_t *b)
{
    memset(b, 0, sizeof *b);
    b->B = B;
    b->S = s->cfg.src_len;
    b->T = s->T;
    size_t bs = (size_t)B * (size_t)b->S, bt = (size_t)B * (size_t)b->T;
    b->src = malloc(bs * sizeof *b->src);
    b->src_mask = malloc(bs);
    b->dec_in = malloc(bt * sizeof *b->dec_in);
    b->dec_tgt = malloc(bt * sizeof *b->dec_tgt);
    b->span_len = malloc((size_t)B * sizeof *b->span_len);
    if (!b->src || !b->src_mask || !b->dec_in || !b->dec_tgt || !b->span_len) {
        nb_spans_batch_free(b);
        return NB_ENOMEM;
    }
    return 0;
}

void nb_spans_batch_free(nb_spans_batch_t *b)
{
    free(b->src);
    free(b->src_mask);
    free(b->dec_in);
    free(b->dec_tgt);
    free(b->span_len);
    memset(b, 0, sizeof *b);
}

/* Row r of b from the window w (W tokens), its span drawn from rng. */
static void fill_row(const nb_spans_t *s, const uint32_t *w, nb_rng_t *rng, nb_spans_batch_t *b, int r)
{
    int W = s->W, S = b->S, T = b->T;
    int L = s->cfg.min_tokens + (int)nb_rng_below(rng, (uint64_t)(s->cfg.max_tokens - s->cfg.min_tokens + 1));
    int P = (int)nb_rng_below(rng, (uint64_t)(W - L + 1));
    int32_t *src = b->src + (size_t)r * S;
    uint8_t *m = b->src_mask + (size_t)r * S;
    int n = 0;
    src[n++] = s->cls;
    for (int i = 0; i < P; i++)
        src[n++] = (int32_t)w[i];
    src[n++] = s->mask;
    for (int i = P + L; i < W; i++)
        src[n++] = (int32_t)w[i];
    src[n++] = s->sep;
    for (int i = 0; i < S; i++)
        m[i] = i < n;
    for (int i = n; i < S; i++)
        src[i] = s->pad;
    int32_t *din = b->dec_in + (size_t)r * T, *tgt = b->dec_tgt + (size_t)r * T;
    din[0] = s->cls;
    for (int i = 0; i < L; i++) {
        din[1 + i] = (int32_t)w[P + i];
        tgt[i] = (int32_t)w[P + i];
    }
    tgt[L] = s->sep;
    for (int i = L + 1; i < T; i++) {
        din[i] = s->pad;
        tgt[i] = -1;
    }
    b->span_len[r] = L;
}

void nb_spans_train(const nb_spans_t *s, uint64_t seed, uint64_t step, uint32_t micro, nb_spans_batch_t *b)
{
    for (int r = 0; r < b->B; r++) {
        nb_rng_t rng;
        nb_rng_init(&rng, seed ^ SPANS_STREAM, step, ((uint64_t)micro << 32) | (uint32_t)r);
        uint64_t u = nb_rng_below(&rng, s->n_starts);
        int lo = 0, hi = s->n_runs - 1; /* the last run whose first start is <= u */
        while (lo < hi) {
            int mid = (lo + hi + 1) / 2;
            if (s->run_first[mid] <= u)
                lo = mid;
            else
                hi = mid - 1;
        }
        const span_run_t *run = &s->runs[lo];
        fill_row(s, s->ids[run->file].ids + run->start + (u - s->run_first[lo]), &rng, b, r);
    }
}

void nb_spans_heldout(const nb_spans_t *s, uint64_t seed, int first, int n, nb_spans_batch_t *b)
{
    NB_CHECK(n >= 1);
    for (int r = 0; r < b->B; r++) {
        int j = first + r < n ? first + r : n - 1;
        int k = (int)((int64_t)j * s->n_held / n);
        nb_rng_t rng;
        nb_rng_init(&rng, seed ^ SPANS_STREAM, NB_SPANS_EVAL_KEY, (uint64_t)j);
        const span_run_t *win = &s->held[k];
        fill_row(s, s->ids[win->file].ids + win->start, &rng, b, r);
    }
}
