/*
 * rng.c - SplitMix64 streams keyed by (seed, a, b); see rng.h.
 */
#include <math.h>
#include "kernels/common.h"
#include "kernels/rng.h"

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void nb_rng_init(nb_rng_t *r, uint64_t seed, uint64_t a, uint64_t b)
{
    /* Hash the key in sequence so (a, b) and (b, a) differ. */
    uint64_t h = mix64(seed + 0x9e3779b97f4a7c15ULL);
    h = mix64(h ^ (a + 0x632be59bd9b4e019ULL));
    h = mix64(h ^ (b + 0x85157af5ULL));
    r->state = h;
}

uint64_t nb_rng_u64(nb_rng_t *r)
{
    r->state += 0x9e3779b97f4a7c15ULL;
    return mix64(r->state);
}

uint64_t nb_rng_below(nb_rng_t *r, uint64_t n)
{
    NB_CHECK(n > 0);
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do {
        x = nb_rng_u64(r);
    } while (x >= limit);
    return x % n;
}

float nb_rng_uniform(nb_rng_t *r)
{
    return (float)(nb_rng_u64(r) >> 40) * (1.0f / 16777216.0f);
}

double nb_rng_normal(nb_rng_t *r)
{
    /* u1 in (0, 1] so log() is finite. */
    double u1 = ((double)(nb_rng_u64(r) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(nb_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
