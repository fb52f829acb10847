/* bench_tokenizer.c - the tokenizers against the reference and their speed:
 * token IDs of tests/data/tokenizers/sample.txt that differ from the golden
 * IDs of Hugging Face `tokenizers` (must be 0; a mismatch fails the bench),
 * and encoding throughput on that text repeated to 8 MB (median of 5 runs,
 * one thread). Run from the repository root. Prints "bench <name> <value>
 * <unit>". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/clock.h"
#include "daemon/data/tokenizer.h"

#define DATA "tests/data/tokenizers"
#define RUNS 5

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    if (p)
        p[n] = 0;
    *len = (size_t)n;
    return p;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Mismatches against the golden file (-1 on a load error) and MB/s. */
static long run(const char *name, const char *tok_path, const char *ids_path, const char *text, size_t len,
                const char *big, size_t big_len)
{
    char err[1024];
    nb_tokenizer_t *t;
    if (nb_tokenizer_load(tok_path, &t, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    size_t glen;
    char *g = slurp(ids_path, &glen), *e;
    nb_idvec_t v = {0};
    if (!g || nb_tokenizer_encode(t, text, len, &v, err, sizeof err) != 0) {
        fprintf(stderr, "%s: %s\n", name, g ? err : "cannot read the golden IDs");
        free(g);
        nb_tokenizer_free(t);
        return -1;
    }
    size_t i = 0;
    long mism = 0;
    for (char *p = g;; p = e) {
        unsigned long id = strtoul(p, &e, 10);
        if (e == p)
            break;
        mism += i >= v.n || v.ids[i] != id;
        i++;
    }
    if (v.n > i)
        mism += (long)(v.n - i);
    printf("# %s: %zu tokens, reference %zu\n", name, v.n, i);
    printf("bench tokenizer_%s_mismatches %ld count\n", name, mism);
    double secs[RUNS];
    size_t ntok = 0;
    for (int r = 0; r < RUNS; r++) {
        v.n = 0;
        double t0 = nb_mono_s();
        if (nb_tokenizer_encode(t, big, big_len, &v, err, sizeof err) != 0) {
            fprintf(stderr, "%s: %s\n", name, err);
            mism = -1;
            break;
        }
        secs[r] = nb_mono_s() - t0;
        ntok = v.n;
    }
    if (mism >= 0) {
        qsort(secs, RUNS, sizeof secs[0], cmp_double);
        double s = secs[RUNS / 2];
        printf("bench tokenizer_%s_mb_per_s %.1f MB/s\n", name, (double)big_len / s / 1e6);
        printf("bench tokenizer_%s_mtokens_per_s %.2f Mtok/s\n", name, (double)ntok / s / 1e6);
    }
    free(v.ids);
    free(g);
    nb_tokenizer_free(t);
    return mism;
}

int main(void)
{
    size_t len;
    char *text = slurp(DATA "/sample.txt", &len);
    if (!text) {
        fprintf(stderr, "cannot read %s/sample.txt (run from the repository root)\n", DATA);
        return 1;
    }
    size_t reps = (8u << 20) / len + 1, big_len = reps * len;
    char *big = malloc(big_len);
    if (!big)
        return 1;
    for (size_t r = 0; r < reps; r++)
        memcpy(big + r * len, text, len);
    long a = run("wordpiece", DATA "/minilm", DATA "/wordpiece.ids", text, len, big, big_len);
    long b = run("bpe", DATA "/bpe", DATA "/bpe.ids", text, len, big, big_len);
    free(big);
    free(text);
    if (a != 0 || b != 0) {
        fprintf(stderr, "token IDs differ from the reference (wordpiece %ld, bpe %ld)\n", a, b);
        return 1;
    }
    return 0;
}
