/*
 * electra_sample.h - an ELECTRA generator's replacements: at every masked
 * position, a token drawn from the generator's softmax; the corrupted
 * sequence and its replaced flags follow.
 *
 * The draw at a position is keyed by (seed, generator index, step,
 * sequence * T + position), like the masked sampler of
 * daemon/data/tokens.h: it depends on the logits and the key only, never on
 * the batch layout, a thread or a process. The softmax and its inverse
 * CDF are computed on the host in double, in index order, from the float
 * logits: the same logits give the same token on every machine with the
 * same libm exp().
 *
 * Thread: no shared state.
 */
#ifndef NB_ELECTRA_SAMPLE_H
#define NB_ELECTRA_SAMPLE_H

#include <stdint.h>

/* Draws one token from softmax(logits[0 .. n_ids)) with the uniform u in
 * [0, 1), skipping the ID `skip` (-1: none). The smallest k whose
 * cumulative probability exceeds u; ties and rounding fall to the last
 * allowed ID. n_ids >= 1 and at least one ID allowed. */
int32_t nb_electra_draw(const float *logits, int n_ids, int32_t skip, double u);

/* The uniform in [0, 1) (53 bits) of the position keyed by (seed, gen,
 * step, pos). */
double nb_electra_uniform(uint64_t seed, int gen, uint64_t step, uint64_t pos);

/* Corrupts one generator batch of n sequences of T tokens. logits is the
 * generator's output, host memory of n*T rows of `cols` floats; inputs are
 * the masked inputs (mask_token at masked positions) and targets the
 * originals at masked positions (-1 elsewhere), as nb_tokens_sample_mlm
 * fills them. At each masked position the replacement is drawn among IDs
 * 0 .. n_ids-1 (n_ids <= cols: the IDs the generator's data can hold; the
 * mask token is skipped when below n_ids) with the uniform of (seed, gen,
 * step, k) for flattened position k. Writes ids (corrupted sequence: the
 * draw at masked positions, the input elsewhere) and replaced (1 where
 * ids differs from the original token: a draw equal to the original counts
 * as original, as in ELECTRA). Returns the number of replaced tokens. */
long nb_electra_corrupt(const float *logits, int cols, int n_ids, int32_t mask_token, const int32_t *inputs,
                        const int32_t *targets, int n, int T, uint64_t seed, int gen, uint64_t step,
                        int32_t *ids, uint8_t *replaced);

#endif /* NB_ELECTRA_SAMPLE_H */
