/*
 * spans.h - span restoration, the seq2seq task of an encoder-decoder job
 * (job.spans; docs/finetune.md): (source, target) pairs cut from real text.
 *
 * Each text file is read whole, tokenized with a WordPiece (BERT)
 * vocabulary and cut into consecutive windows of W = S - 2 tokens (S the
 * encoder's positions). Every hold-th window of each file (index % hold ==
 * hold - 1) is held out; the others are the training text. A training
 * window starts anywhere inside a run of training windows (never reaching
 * into a held-out one); a held-out window is exactly one of those cut.
 * (The streams' seed is the job's mixed with a constant of the task's own.)
 * In a window, one span of L tokens (min_tokens <= L <= max_tokens) at
 * position P is removed:
 *   source  [CLS] w[0..P) [MASK] w[P+L..W) [SEP]  padded with [PAD] to S
 *   decoder [CLS] w[P..P+L)                       padded with [PAD] to T
 *   target  w[P..P+L) [SEP]                       padded with -1 to T
 * with T = max_tokens + 1. The window, L and P are drawn from a stream
 * keyed by (seed, step, micro-batch, row) for training and by (seed,
 * NB_SPANS_EVAL_KEY, window) for held-out data: the same pairs on every
 * run, every machine.
 *
 * Thread: read-only after nb_spans_open; any thread may draw batches.
 */
#ifndef NB_SPANS_H
#define NB_SPANS_H

#include <stddef.h>
#include <stdint.h>
#include "daemon/data/tokenizer.h"

#define NB_SPANS_EVAL_KEY UINT64_MAX

typedef struct {
    const char *const *texts; /* UTF-8 text files */
    int n_texts;
    const char *tokenizer;    /* WordPiece vocabulary: vocab.txt, tokenizer.json or their directory */
    int src_len;              /* S: encoder positions, window + 2 */
    int min_tokens, max_tokens;
    int hold;                 /* >= 2 */
} nb_spans_config_t;

typedef struct nb_spans nb_spans_t;

/* Pairs of one micro-batch (host memory; nb_spans_batch_alloc). */
typedef struct {
    int B, S, T;
    int32_t *src;      /* (B,S) encoder tokens */
    uint8_t *src_mask; /* (B,S) 1 = real position, 0 = padding */
    int32_t *dec_in;   /* (B,T) decoder input (teacher forcing) */
    int32_t *dec_tgt;  /* (B,T) decoder targets, -1 = none */
    int *span_len;     /* (B) L of each row */
} nb_spans_batch_t;

/* Reads and tokenizes the texts, finds [CLS], [SEP], [MASK], [PAD] and
 * [UNK] in the vocabulary (those four markers written literally in a text
 * become [UNK]) and cuts the windows. Errors: NB_EIO (a file unreadable),
 * NB_EFORMAT (a file not UTF-8, a broken vocabulary), NB_EINVAL (a
 * tokenizer without the four special tokens, a bad config, a file too short
 * for one training and one held-out window), NB_ENOMEM; err names the file
 * and the reason. The caller frees *out with nb_spans_free. */
int nb_spans_open(const nb_spans_config_t *c, nb_spans_t **out, char *err, size_t errlen);
void nb_spans_free(nb_spans_t *s);

/* The tokenizer (borrowed) and its vocabulary size: each model's vocab
 * must be at least this. */
const nb_tokenizer_t *nb_spans_tokenizer(const nb_spans_t *s);
int nb_spans_vocab(const nb_spans_t *s);
/* T: decoder positions, max_tokens + 1. */
int nb_spans_dec_len(const nb_spans_t *s);
/* The end-of-span token ([SEP]) the decoder emits after the span, and
 * the padding token ([PAD]). */
int32_t nb_spans_eos(const nb_spans_t *s);
int32_t nb_spans_pad(const nb_spans_t *s);
/* Training tokens (in runs of training windows), held-out windows, and
 * training window starts (the positions a training window may take). */
uint64_t nb_spans_train_tokens(const nb_spans_t *s);
int nb_spans_heldout_windows(const nb_spans_t *s);
uint64_t nb_spans_train_starts(const nb_spans_t *s);

/* Allocates a batch of B rows for s; free with nb_spans_batch_free.
 * 0 or NB_ENOMEM. */
int nb_spans_batch_alloc(const nb_spans_t *s, int B, nb_spans_batch_t *b);
void nb_spans_batch_free(nb_spans_batch_t *b);

/* Fills b with the training pairs of (seed, step, micro). */
void nb_spans_train(const nb_spans_t *s, uint64_t seed, uint64_t step, uint32_t micro, nb_spans_batch_t *b);
/* Fills b with held-out pairs first .. first + b->B - 1 of n (n spread
 * evenly over the held-out windows: pair j is window floor(j * H / n) of
 * the H held out, its span drawn by j, so with n > H a window comes back
 * with other spans); rows past n get pair n - 1 again. */
void nb_spans_heldout(const nb_spans_t *s, uint64_t seed, int first, int n, nb_spans_batch_t *b);

/* Scores a predicted span against the reference: exact match (1 or 0) and
 * token F1 (the harmonic mean of precision and recall of the multiset of
 * tokens, as SQuAD scores answers; 1 when both are empty). */
void nb_spans_score(const int32_t *pred, int npred, const int32_t *ref, int nref, double *exact, double *f1);

#endif /* NB_SPANS_H */
