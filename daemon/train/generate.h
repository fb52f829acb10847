/*
 * generate.h - sampling tokens from a causal language model (a whole part
 * with the embedding, every block and the lm head): greedy, temperature and
 * top-k, with a seeded random stream so a seed gives the same text on every
 * run and every machine. Used by nebula-generate (docs/generate.md).
 *
 * There is no key/value cache: each new token runs the forward on the whole
 * context (at most max_seq tokens, the latest ones), which is simple and
 * exact, and fast enough for the small models Nebula trains on a CPU.
 * Thread: the thread that owns the part's backend.
 */
#ifndef NB_TRAIN_GENERATE_H
#define NB_TRAIN_GENERATE_H

#include <stddef.h>
#include <stdint.h>
#include "kernels/model.h"

typedef struct {
    int max_new;       /* tokens to generate (>= 0) */
    float temperature; /* 0: greedy (argmax, lowest ID on ties); else softmax(logits / T) */
    int top_k;         /* sample among the k largest logits; 0: all */
    uint64_t seed;     /* token i uses the stream keyed (seed, i) */
} nb_gen_config_t;

/* Picks the next token from one row of logits (V floats) per c: greedy
 * when temperature is 0, else a draw from the tempered softmax over the
 * top_k largest logits (ties: lower ID first), using the stream keyed
 * (c->seed, index). Pure: the same inputs give the same token. */
int32_t nb_gen_pick(const float *logits, int V, const nb_gen_config_t *c, uint64_t index);

/* Appends c->max_new tokens to ids[0..*n) (capacity cap >= *n + max_new).
 * p must be a whole causal lm part (embedding, every block, head).
 * Errors: NB_EINVAL (not such a part, an empty prompt, an ID outside the
 * vocabulary: message in err), NB_ENOMEM. */
int nb_gen_run(nb_part_t *p, int32_t *ids, size_t *n, size_t cap, const nb_gen_config_t *c, char *err,
               size_t errlen);

#endif
