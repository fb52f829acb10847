/*
 * holdout.c - the held-out split of a token file; see holdout.h.
 */
#include <math.h>
#include <stdio.h>
#include "kernels/common.h"
#include "daemon/train/holdout.h"

int nb_holdout_split(const nb_tokens_t *file, const char *path, double fraction, int seq_len,
                     nb_tokens_t **train, nb_tokens_t **held, char *err, size_t errlen)
{
    *train = *held = NULL;
    uint64_t count = nb_tokens_count(file);
    uint64_t need = (uint64_t)seq_len + 1;
    uint64_t h = (uint64_t)ceil(fraction * (double)count);
    if (!(fraction > 0.0 && fraction <= 0.5) || h < need || count - h < need) {
        snprintf(err, errlen, "%s: %llu tokens: eval.fraction %g leaves %llu for training and %llu held out; "
                 "each needs seq_len + 1 = %llu", path, (unsigned long long)count, fraction,
                 (unsigned long long)(count - (h < count ? h : count)), (unsigned long long)h,
                 (unsigned long long)need);
        return NB_EINVAL;
    }
    int rc = nb_tokens_slice(file, 0, count - h, train);
    if (rc == 0 && (rc = nb_tokens_slice(file, count - h, h, held)) != 0) {
        nb_tokens_close(*train);
        *train = NULL;
    }
    return rc;
}
