/*
 * tokens.h - token files (docs/data-format.md) and the deterministic batch
 * sampler that feeds training.
 *
 * A token file is a 32-byte header (magic "NBTK", version, token width 2 or
 * 4 bytes, vocabulary size, token count) followed by the token IDs, little
 * endian. Opening validates everything, including every ID against the
 * vocabulary, so training never sees a bad token.
 *
 * The sampler is keyed by (seed, step, micro-batch), never by process: the
 * first stage of a pipeline draws exactly the batches of the single-process
 * trainer.
 *
 * Thread: an open file is read-only; any thread may sample from it.
 */
#ifndef NB_TOKENS_H
#define NB_TOKENS_H

#include <stddef.h>
#include <stdint.h>

#define NB_TOKENS_VERSION 1u
#define NB_TOKENS_HEADER_BYTES 32u

typedef struct nb_tokens nb_tokens_t;

/* Opens and validates path (maps it read-only). Errors: NB_EIO (cannot
 * open/read), NB_EFORMAT (bad magic, truncated, size mismatch), NB_EVERSION,
 * NB_ERANGE (a token >= vocab): err names the file and the byte offset. */
int nb_tokens_open(const char *path, nb_tokens_t **out, char *err, size_t errlen);
void nb_tokens_close(nb_tokens_t *t);

/* A view of tokens [first, first + n) of src (n >= 1, within src): the
 * same IDs, sampled as if they were the whole file (held-out splits). It
 * borrows src's mapping: close it (nb_tokens_close) before src. Errors:
 * NB_EINVAL (out of range), NB_ENOMEM. */
int nb_tokens_slice(const nb_tokens_t *src, uint64_t first, uint64_t n, nb_tokens_t **out);

uint64_t nb_tokens_count(const nb_tokens_t *t);
uint32_t nb_tokens_vocab(const nb_tokens_t *t);
/* Token i (< count). */
uint32_t nb_tokens_get(const nb_tokens_t *t, uint64_t i);

/* Writes n IDs (each < vocab) as a token file at path, via a temporary file
 * renamed into place, with width 2 when vocab <= 65536, else 4. Errors:
 * NB_EINVAL (an ID >= vocab, vocab 0), NB_EIO; err says which. */
int nb_tokens_write(const char *path, const uint32_t *ids, uint64_t n, uint32_t vocab,
                    char *err, size_t errlen);

/* Byte-level tokenizer: writes the first max_bytes bytes of the text file at
 * text_path (0: all of it) as a token file at out_path, one token per byte
 * (vocabulary 256). *count (may be NULL) gets the number of tokens. Errors:
 * NB_EIO (cannot read or write; err names the file), NB_ENOMEM, and those
 * of nb_tokens_write. */
int nb_tokens_from_text(const char *text_path, const char *out_path, uint64_t max_bytes,
                        uint64_t *count, char *err, size_t errlen);

/* Fills one language-model micro-batch: for each row b < B a start s drawn
 * uniformly from [0, count - T - 1] by the stream (seed, step, micro);
 * inputs[b*T + t] = id[s + t], targets[b*T + t] = id[s + t + 1] (host
 * arrays of B*T). Errors: NB_EINVAL when the file holds fewer than T + 1
 * tokens or B, T <= 0. */
int nb_tokens_sample(const nb_tokens_t *t, uint64_t seed, uint64_t step, uint32_t micro,
                     int B, int T, int32_t *inputs, int32_t *targets);

/* Share of masked positions nebula-train and the pipeline use for the mlm
 * head (docs/data-format.md). */
#define NB_TOKENS_MLM_MASK_PROB 0.15f

/* Fills one masked-LM micro-batch: for each row b < B a start s drawn
 * uniformly from [0, count - T] by the stream (seed, step, micro), then for
 * each position t, in order, a uniform draw u: when u < mask_prob the input
 * is mask_token and the target id[s + t]; otherwise the input is id[s + t]
 * and the target -1 (ignored). A row with no masked position gets one at a
 * position drawn from the same stream, so every row counts. Errors:
 * NB_EINVAL when the file holds fewer than T tokens, B, T <= 0, or
 * mask_prob is not in (0, 1]. */
int nb_tokens_sample_mlm(const nb_tokens_t *t, uint64_t seed, uint64_t step, uint32_t micro,
                         int B, int T, float mask_prob, int32_t mask_token,
                         int32_t *inputs, int32_t *targets);

#endif /* NB_TOKENS_H */
