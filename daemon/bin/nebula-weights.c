/*
 * nebula-weights.c - inspects and compares weights files (docs/model.md):
 *
 *   nebula-weights show FILE
 *   nebula-weights compare [--tol X] REF FILE...
 *
 * compare matches every tensor of the FILEs (e.g. the final weights of each
 * pipeline stage) by name against REF (e.g. the single-process trainer's
 * output), prints the largest difference of each tensor relative to its
 * largest magnitude, and fails unless every tensor of REF is covered and
 * every difference is <= tol (default 1e-5).
 * Files are read without building a model: the header's sizes are checked
 * against the file's length first (nb_weights_peek), then tensors are read
 * in chunks, so a short file claiming a large model costs nothing.
 * Exit status: 0 equal within tol, 1 different, 2 usage or unreadable file.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/cpu_level.h"
#include "daemon/train/weights.h"

/* One opened weights file: its checked header and table, and the stream. */
typedef struct {
    const char *path;
    nb_weights_info_t info;
    FILE *f;
} wfile_t;

/* Opens and checks path (nb_weights_peek: the header's sizes against the
 * file's length before anything else), printing why not. */
static int wfile_open(wfile_t *w, const char *path)
{
    char err[512];
    memset(w, 0, sizeof *w);
    w->path = path;
    if (nb_weights_peek(path, &w->info, err, sizeof err)) {
        fprintf(stderr, "nebula-weights: %s\n", err);
        return -1;
    }
    if (!(w->f = fopen(path, "rb"))) {
        fprintf(stderr, "nebula-weights: %s: cannot open\n", path);
        nb_weights_info_free(&w->info);
        return -1;
    }
    return 0;
}

static void wfile_close(wfile_t *w)
{
    if (w->f)
        fclose(w->f);
    nb_weights_info_free(&w->info);
}

/* Reads `count` floats of tensor t from element `at` on into buf. */
static int read_floats(wfile_t *w, const nb_weights_tensor_t *t, uint64_t at, float *buf, size_t count)
{
    if (fseeko(w->f, (off_t)(t->file_offset + at * 4), SEEK_SET) != 0 || fread(buf, 4, count, w->f) != count) {
        fprintf(stderr, "nebula-weights: %s: cannot read tensor %s\n", w->path, t->name);
        return -1;
    }
    return 0;
}

/* Tensors are read in chunks: memory stays small whatever the file holds. */
#define CHUNK 65536

static int show(const char *path)
{
    wfile_t w;
    if (wfile_open(&w, path))
        return 2;
    const nb_part_spec_t *s = &w.info.spec;
    printf("%s: %s blocks %d-%d%s, %llu parameters\n", path, s->embed ? "embedding +" : "", s->first, s->last - 1,
           s->head ? " + head" : "", (unsigned long long)w.info.n_params);
    static float buf[CHUNK];
    int status = 0;
    for (int i = 0; i < w.info.n_tensors && !status; i++) {
        const nb_weights_tensor_t *t = &w.info.tensors[i];
        double ss = 0;
        for (uint64_t at = 0; at < t->numel && !status; at += CHUNK) {
            size_t k = t->numel - at < CHUNK ? (size_t)(t->numel - at) : CHUNK;
            if (read_floats(&w, t, at, buf, k)) {
                status = 2;
                break;
            }
            for (size_t e = 0; e < k; e++)
                ss += (double)buf[e] * buf[e];
        }
        printf("  %-16s %6llu x %-6llu rms %.6g\n", t->name, (unsigned long long)t->shape[0],
               (unsigned long long)t->shape[1], sqrt(ss / (double)(t->numel ? t->numel : 1)));
    }
    wfile_close(&w);
    return status;
}

static const nb_weights_tensor_t *find_tensor(const wfile_t *w, const char *name)
{
    for (int i = 0; i < w->info.n_tensors; i++)
        if (strcmp(w->info.tensors[i].name, name) == 0)
            return &w->info.tensors[i];
    return NULL;
}

static int compare(double tol, const char *ref_path, int n, char **paths)
{
    wfile_t ref, files[64];
    if (n > 64)
        n = 64;
    if (wfile_open(&ref, ref_path))
        return 2;
    for (int i = 0; i < n; i++)
        if (wfile_open(&files[i], paths[i])) {
            while (i-- > 0)
                wfile_close(&files[i]);
            wfile_close(&ref);
            return 2;
        }
    static float a[CHUNK], b[CHUNK];
    int status = 0;
    double worst = 0;
    for (int t = 0; t < ref.info.n_tensors && status != 2; t++) {
        const nb_weights_tensor_t *ri = &ref.info.tensors[t], *pi = NULL;
        int found = -1;
        for (int i = 0; i < n && found < 0; i++)
            if ((pi = find_tensor(&files[i], ri->name)))
                found = i;
        if (found < 0) {
            printf("  %-16s missing from every file\n", ri->name);
            status = 1;
            continue;
        }
        if (pi->numel != ri->numel) {
            printf("  %-16s shape differs\n", ri->name);
            status = 1;
            continue;
        }
        double maxabs = 1e-12, maxd = 0;
        for (uint64_t at = 0; at < ri->numel; at += CHUNK) {
            size_t k = ri->numel - at < CHUNK ? (size_t)(ri->numel - at) : CHUNK;
            if (read_floats(&ref, ri, at, a, k) || read_floats(&files[found], pi, at, b, k)) {
                status = 2;
                break;
            }
            for (size_t e = 0; e < k; e++) {
                maxabs = fmax(maxabs, fabs(a[e]));
                double d = fabs((double)a[e] - b[e]);
                if (!(d <= maxd))
                    maxd = d;
            }
        }
        if (status == 2)
            break;
        double rel = maxd / maxabs;
        printf("  %-16s max abs diff %.3g, relative %.3g%s\n", ri->name, maxd, rel, rel <= tol ? "" : "  > tol");
        if (!(rel <= tol))
            status = 1;
        if (!(rel <= worst))
            worst = rel;
    }
    if (status != 2)
        printf("%s: largest relative difference %.3g (tolerance %.3g): %s\n", ref_path, worst, tol,
               status ? "DIFFERENT" : "equal");
    for (int i = 0; i < n; i++)
        wfile_close(&files[i]);
    wfile_close(&ref);
    return status;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: nebula-weights show FILE\n"
               "       nebula-weights compare [--tol X] REF FILE...\n");
        return 0;
    }
    nb_cpu_level_t level;
    const char *why_level = NULL;
    if (nb_cpu_level_select(&level, &why_level) != 0) {
        fprintf(stderr, "nebula-weights: %s\n", why_level);
        return 2;
    }
    if (argc == 3 && !strcmp(argv[1], "show"))
        return show(argv[2]);
    if (argc >= 4 && !strcmp(argv[1], "compare")) {
        double tol = 1e-5;
        int i = 2;
        if (!strcmp(argv[i], "--tol") && argc >= 6) {
            tol = atof(argv[i + 1]);
            i += 2;
        }
        return compare(tol, argv[i], argc - i - 1, argv + i + 1);
    }
    fprintf(stderr, "usage: nebula-weights show FILE | compare [--tol X] REF FILE...\n");
    return 2;
}
