/*
 * licence_snippets.c - the licence classification task; see
 * licence_snippets.h.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "kernels/rng.h"
#include "tests/support/licence_snippets.h"

typedef struct {
    char *text;       /* the whole file */
    size_t n;
    char *train;      /* the chunks not held out, joined */
    size_t n_train;
    size_t *held;     /* first byte of each held-out chunk */
    int n_held;
} lic_class_t;

struct nb_lic {
    int k;
    size_t len, chunk;
    lic_class_t c[NB_LIC_MAX];
};

void nb_lic_free(nb_lic_t *l)
{
    if (!l)
        return;
    for (int i = 0; i < l->k; i++) {
        free(l->c[i].text);
        free(l->c[i].train);
        free(l->c[i].held);
    }
    free(l);
}

static int read_file(const char *path, char **out, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    size_t cap = 1 << 16, len = 0, got;
    char *buf = malloc(cap);
    while (buf && (got = fread(buf + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len < cap)
            continue;
        char *grown = realloc(buf, cap *= 2);
        if (!grown)
            free(buf);
        buf = grown;
    }
    bool bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        free(buf);
        return -1;
    }
    *out = buf;
    *n = len;
    return 0;
}

int nb_lic_open(const char *const *names, int k, size_t len, size_t chunk, int hold, nb_lic_t **out, char *why,
                size_t whylen)
{
    *out = NULL;
    if (k < 2 || k > NB_LIC_MAX || chunk < len || hold < 2) {
        snprintf(why, whylen, "licence snippets: bad parameters");
        return -1;
    }
    nb_lic_t *l = calloc(1, sizeof *l);
    if (!l)
        return -1;
    l->len = len;
    l->chunk = chunk;
    for (int i = 0; i < k; i++, l->k++) {
        lic_class_t *c = &l->c[i];
        char path[512];
        snprintf(path, sizeof path, "%s/%s", NB_LIC_DIR, names[i]);
        if (access(path, R_OK) != 0) {
            snprintf(why, whylen, "%s is missing", path);
            nb_lic_free(l);
            return 77;
        }
        if (read_file(path, &c->text, &c->n) || !(c->train = malloc(c->n)) ||
            !(c->held = malloc((c->n / chunk + 1) * sizeof *c->held))) {
            snprintf(why, whylen, "%s: cannot read", path);
            l->k++;
            nb_lic_free(l);
            return -1;
        }
        for (size_t c0 = 0; c0 < c->n; c0 += chunk) {
            size_t end = c0 + chunk < c->n ? c0 + chunk : c->n;
            if ((c0 / chunk) % (size_t)hold == (size_t)hold - 1 && end - c0 == chunk) {
                c->held[c->n_held++] = c0;
            } else {
                memcpy(c->train + c->n_train, c->text + c0, end - c0);
                c->n_train += end - c0;
            }
        }
        if (c->n_held == 0 || c->n_train < len) {
            snprintf(why, whylen, "%s: %zu bytes, too short for held-out chunks of %zu", path, c->n, chunk);
            l->k++;
            nb_lic_free(l);
            return -1;
        }
    }
    *out = l;
    return 0;
}

void nb_lic_train(const nb_lic_t *l, int cls, uint64_t key, char *out)
{
    const lic_class_t *c = &l->c[cls];
    nb_rng_t r;
    nb_rng_init(&r, 0x11c, (uint64_t)cls, key);
    memcpy(out, c->train + nb_rng_below(&r, c->n_train - l->len + 1), l->len);
}

void nb_lic_heldout(const nb_lic_t *l, int cls, int j, int n, char *out)
{
    const lic_class_t *c = &l->c[cls];
    /* snippet j: chunk j % n_held, at offset j / n_held of the per-chunk share */
    int per = (n + c->n_held - 1) / c->n_held;
    size_t room = l->chunk - l->len;
    size_t start = c->held[j % c->n_held] + room * (size_t)(j / c->n_held) / (size_t)(per > 1 ? per - 1 : 1);
    memcpy(out, c->text + start, l->len);
}

int nb_lic_held_chunks(const nb_lic_t *l, int cls) { return l->c[cls].n_held; }
