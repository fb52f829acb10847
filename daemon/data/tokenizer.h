/*
 * tokenizer.h - subword tokenizers compatible with Hugging Face files:
 * BERT's WordPiece (vocab.txt, or tokenizer.json with a WordPiece model) and
 * GPT-2's byte-level BPE (vocab.json + merges.txt, or tokenizer.json with a
 * BPE model). Token IDs equal those of the `tokenizers` package encoding the
 * same text without special tokens added (no [CLS]/[SEP] around it, no
 * truncation, no padding). docs/tokenizers.md says what is supported.
 *
 * Text must be UTF-8; other bytes are refused with their offset, never
 * replaced. Thread: a loaded tokenizer is read-only; any thread may encode or
 * decode with it.
 */
#ifndef NB_TOKENIZER_H
#define NB_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct nb_tokenizer nb_tokenizer_t;

enum nb_tok_kind { NB_TOK_WORDPIECE = 1, NB_TOK_BPE = 2 };

/* A growable array of token IDs; zero-initialise it, free ids when done. */
typedef struct {
    uint32_t *ids;
    size_t n, cap;
} nb_idvec_t;

/* Loads a tokenizer from path: a tokenizer.json file, or a directory holding
 * (first match wins) tokenizer.json, vocab.txt (WordPiece; lower-casing from
 * tokenizer_config.json's do_lower_case, default on), or vocab.json +
 * merges.txt (byte-level BPE). Errors: NB_EIO (nothing to load, unreadable),
 * NB_EFORMAT (a broken line or entry: err names file, line and reason),
 * NB_EINVAL (a setting this build does not support: err says which),
 * NB_ENOMEM. The caller frees *out with nb_tokenizer_free. */
int nb_tokenizer_load(const char *path, nb_tokenizer_t **out, char *err, size_t errlen);
void nb_tokenizer_free(nb_tokenizer_t *t);

int nb_tokenizer_kind(const nb_tokenizer_t *t);
/* Vocabulary size: the largest token ID + 1. */
uint32_t nb_tokenizer_vocab(const nb_tokenizer_t *t);
/* One line for people: kind, source file, size, settings. */
const char *nb_tokenizer_describe(const nb_tokenizer_t *t);

/* Appends the IDs of text[0..len) to out. Errors: NB_EFORMAT when the text is
 * not UTF-8 (err gives the byte offset and line), NB_ENOMEM. */
int nb_tokenizer_encode(const nb_tokenizer_t *t, const char *text, size_t len, nb_idvec_t *out,
                        char *err, size_t errlen);

/* Turns ids back into text (malloc'd, NUL-terminated, *len bytes without the
 * NUL), as the `tokenizers` decoder does with special tokens kept: byte-level
 * BPE gives back the original bytes; WordPiece joins words with spaces and
 * glues "##" pieces (its text is normalised: lower case, no accents).
 * Errors: NB_ERANGE for an ID that is not in the vocabulary (err gives its
 * index and value), NB_ENOMEM. */
int nb_tokenizer_decode(const nb_tokenizer_t *t, const uint32_t *ids, size_t n, char **text,
                        size_t *len, char *err, size_t errlen);

/* Appends one ID, growing the array. Returns 0 or NB_ENOMEM. */
int nb_idvec_push(nb_idvec_t *v, uint32_t id);

#endif /* NB_TOKENIZER_H */
