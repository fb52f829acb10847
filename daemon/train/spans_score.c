/*
 * spans_score.c - scores of a restored span (spans.h): exact match and
 * token F1 over the multiset of token IDs.
 */
#include <stdbool.h>
#include <stdlib.h>
#include "daemon/train/spans.h"

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

void nb_spans_score(const int32_t *pred, int npred, const int32_t *ref, int nref, double *exact, double *f1)
{
    bool same = npred == nref;
    for (int i = 0; same && i < npred; i++)
        same = pred[i] == ref[i];
    *exact = same ? 1.0 : 0.0;
    if (npred == 0 || nref == 0) {
        *f1 = npred == nref ? 1.0 : 0.0;
        return;
    }
    /* spans are short (job.spans.max_tokens <= 1024; a prediction has at
     * most max_tokens + 1 tokens): sorted copies on the stack */
    int32_t a[1025], b[1025];
    int na = npred < 1025 ? npred : 1025, nb = nref < 1025 ? nref : 1025;
    for (int i = 0; i < na; i++)
        a[i] = pred[i];
    for (int i = 0; i < nb; i++)
        b[i] = ref[i];
    qsort(a, (size_t)na, sizeof a[0], cmp_i32);
    qsort(b, (size_t)nb, sizeof b[0], cmp_i32);
    int common = 0;
    for (int i = 0, j = 0; i < na && j < nb;) {
        if (a[i] == b[j]) {
            common++;
            i++;
            j++;
        } else if (a[i] < b[j]) {
            i++;
        } else {
            j++;
        }
    }
    if (common == 0) {
        *f1 = 0.0;
        return;
    }
    double p = (double)common / na, r = (double)common / nb;
    *f1 = 2 * p * r / (p + r);
}
