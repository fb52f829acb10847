/*
 * rng.h - deterministic, counter-based random numbers for Nebula.
 *
 * Every random stream in Nebula (parameter init, batch sampling, masking) is
 * keyed by a few integers (seed, block, tensor id; or seed, step, micro-batch)
 * rather than by process or thread, so the same stream comes out wherever a
 * part of the model or a batch is computed. The generator is SplitMix64
 * (Steele, Lea, Flood 2014): tiny, fast and good enough for init and sampling.
 *
 * Thread: an nb_rng_t belongs to its user; the functions keep no global state.
 */
#ifndef NB_RNG_H
#define NB_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t state;
} nb_rng_t;

/* Seeds a stream from a key of three integers; different keys give
 * independent-looking streams, the same key always the same stream. */
void nb_rng_init(nb_rng_t *r, uint64_t seed, uint64_t a, uint64_t b);
/* Next 64 random bits. */
uint64_t nb_rng_u64(nb_rng_t *r);
/* Uniform integer in [0, n); n must be > 0 (NB_CHECK). Unbiased (rejection). */
uint64_t nb_rng_below(nb_rng_t *r, uint64_t n);
/* Uniform float in [0, 1) with 24 random bits. */
float nb_rng_uniform(nb_rng_t *r);
/* Standard normal (Box-Muller, one value per call, computed in double). */
double nb_rng_normal(nb_rng_t *r);

#endif /* NB_RNG_H */
