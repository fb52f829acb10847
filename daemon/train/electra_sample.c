/*
 * electra_sample.c - replacement draws of an ELECTRA generator; see
 * electra_sample.h.
 */
#include <math.h>
#include "kernels/common.h"
#include "kernels/rng.h"
#include "daemon/train/electra_sample.h"

/* Keeps replacement draws apart from the data and init streams of the same
 * seed. */
#define NB_ELECTRA_SAMPLE_STREAM 0x656c656374726173ULL

double nb_electra_uniform(uint64_t seed, int gen, uint64_t step, uint64_t pos)
{
    nb_rng_t r;
    nb_rng_init(&r, seed ^ NB_ELECTRA_SAMPLE_STREAM ^ ((uint64_t)(uint32_t)gen << 48), step, pos);
    return (double)(nb_rng_u64(&r) >> 11) * (1.0 / 9007199254740992.0);
}

int32_t nb_electra_draw(const float *logits, int n_ids, int32_t skip, double u)
{
    NB_CHECK(n_ids >= 1 && !(n_ids == 1 && skip == 0));
    double mx = -INFINITY;
    for (int i = 0; i < n_ids; i++)
        if (i != skip && logits[i] > mx)
            mx = logits[i];
    double sum = 0.0;
    for (int i = 0; i < n_ids; i++)
        if (i != skip)
            sum += exp((double)logits[i] - mx);
    double target = u * sum, acc = 0.0;
    int32_t last = -1;
    for (int i = 0; i < n_ids; i++) {
        if (i == skip)
            continue;
        acc += exp((double)logits[i] - mx);
        last = i;
        if (acc > target)
            return i;
    }
    return last;
}

long nb_electra_corrupt(const float *logits, int cols, int n_ids, int32_t mask_token, const int32_t *inputs,
                        const int32_t *targets, int n, int T, uint64_t seed, int gen, uint64_t step,
                        int32_t *ids, uint8_t *replaced)
{
    NB_CHECK(n_ids >= 1 && n_ids <= cols);
    int32_t skip = mask_token >= 0 && mask_token < n_ids ? mask_token : -1;
    long n_replaced = 0;
    for (long k = 0; k < (long)n * T; k++) {
        if (targets[k] < 0) {
            ids[k] = inputs[k];
            replaced[k] = 0;
            continue;
        }
        double u = nb_electra_uniform(seed, gen, step, (uint64_t)k);
        ids[k] = nb_electra_draw(logits + (size_t)k * cols, n_ids, skip, u);
        replaced[k] = ids[k] != targets[k];
        n_replaced += replaced[k];
    }
    return n_replaced;
}
