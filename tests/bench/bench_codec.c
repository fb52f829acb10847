/* bench_codec.c - codec throughput on the CPU backend: encode + decode of one
 * 8x128x768 fp32 tensor (a (1024, 768) activation matrix) per codec, in GB/s
 * of fp32 input, beside memcpy of the same bytes measured in the same run;
 * with the compression ratio (input bytes / spec + metadata + payload bytes)
 * and the relative L2 error on trained-model-like data (rank-32 signal with
 * decaying spectrum, noise, and 0.1% outliers of 10x).
 *
 * Then training quality: the tiny GPT of tests/codec/codec_fixture.h (2
 * blocks, d=64, cut after block 1, batch 4 x 64 byte tokens of real text)
 * trains 150 steps with each forward / backward codec pair at the cut; the
 * held-out loss, its gap to the uncompressed run and the bytes crossing the
 * cut per step are printed.
 * Then the same throughput per CPU kernel level this processor runs
 * (generic, avx2, avx512), each level's codecs against memcpy timed in the
 * same round: bench codec_<codec>_vs_memcpy_<level>.
 * Prints "bench <name> <value> <unit>" lines (make bench). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "daemon/clock.h"
#include "kernels/backend.h"
#include "kernels/codec/codec.h"
#include "kernels/cpu_level.h"
#include "kernels/rng.h"
#include "tests/codec/codec_fixture.h"

enum { B = 8, T = 128, C = 768, ROWS = B * T, R = 32 };

static void make_input(nb_backend_t *be, float *x)
{
    nb_rng_t g;
    nb_rng_init(&g, 2026, 11, 28);
    float *u = malloc(sizeof(float) * ROWS * R), *v = malloc(sizeof(float) * R * C);
    for (int i = 0; i < ROWS * R; i++)
        u[i] = (float)nb_rng_normal(&g);
    for (int i = 0; i < R * C; i++)
        v[i] = (float)nb_rng_normal(&g) / (float)(1 + i / C) * 0.3f;
    nb_matmul(be, false, false, ROWS, C, R, 1.0f, u, R, 0, v, C, 0, 0.0f, x, C, 0, 1);
    for (size_t i = 0; i < (size_t)ROWS * C; i++) {
        x[i] += 0.1f * (float)nb_rng_normal(&g);
        if (nb_rng_below(&g, 1000) == 0)
            x[i] *= 10.0f;
    }
    free(u);
    free(v);
}

typedef struct {
    const char *name, *spec;
} codec_case_t;

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Seconds per memcpy of bytes: median of 15 batches of 20 copies. */
static double time_memcpy(void *dst, const void *src, size_t bytes)
{
    double t[15];
    for (int r = 0; r < 15; r++) {
        double t0 = nb_mono_s();
        for (int i = 0; i < 20; i++) {
            memcpy(dst, src, bytes);
            __asm__ volatile("" ::"r"(dst) : "memory");
        }
        t[r] = (nb_mono_s() - t0) / 20;
    }
    qsort(t, 15, sizeof(double), cmp_d);
    return t[7];
}

/* Seconds per encode + decode of x into y with spec s: warm up, size the
 * batches to ~40 ms, median of 9 (5 for slow codecs). Leaves the last
 * message in m; -1 on a codec error (printed). */
static double time_codec(nb_backend_t *be, const nb_codec_spec_t *s, const char *name, nb_tensor_t *x,
                         nb_tensor_t *y, nb_codec_msg_t *m)
{
    char err[256];
    double t0 = nb_mono_s();
    int warm = 0;
    do {
        if (nb_codec_encode(be, s, x, (uint64_t)warm, NULL, 0, m, err, sizeof err) ||
            nb_codec_decode_into(be, m->spec, m->meta, m->meta_len, m->payload, m->payload_len, 0, NULL, y, err,
                                 sizeof err)) {
            fprintf(stderr, "%s: %s\n", name, err);
            return -1;
        }
        warm++;
    } while (nb_mono_s() - t0 < 0.05 && warm < 200);
    int inner = (int)(0.04 / ((nb_mono_s() - t0) / warm)) + 1;
    int reps = inner > 1 ? 9 : 5;
    double t[9];
    for (int r = 0; r < reps; r++) {
        double t1 = nb_mono_s();
        for (int i = 0; i < inner; i++) {
            nb_codec_encode(be, s, x, (uint64_t)i, NULL, 0, m, err, sizeof err);
            nb_codec_decode_into(be, m->spec, m->meta, m->meta_len, m->payload, m->payload_len, 0, NULL, y, err,
                                 sizeof err);
        }
        t[r] = (nb_mono_s() - t1) / inner;
    }
    qsort(t, (size_t)reps, sizeof(double), cmp_d);
    return t[reps / 2];
}

/* The element codecs at every level this processor runs: the level's codec
 * primitives against memcpy timed in the same round, three alternating
 * rounds, the median ratio of each. */
static int level_sweep(nb_tensor_t *x, nb_tensor_t *y, size_t bytes)
{
    static const char *const specs[] = { "fp16", "bf16", "int8", "int4" };
    enum { NS = 4, ROUNDS = 3 };
    nb_codec_msg_t m;
    nb_codec_msg_init(&m);
    for (int l = 0; l < NB_CPU_LEVEL_COUNT; l++) {
        nb_backend_t *be = nb_cpu_backend_new_at((nb_cpu_level_t)l);
        if (!be) {
            printf("# level %s: not on this processor\n", nb_cpu_level_name((nb_cpu_level_t)l));
            continue;
        }
        /* views of the same host memory on this level's backend */
        nb_tensor_t lx = nb_tensor_view(be, NB_F32, x->data, x->ndim, x->shape);
        nb_tensor_t ly = nb_tensor_view(be, NB_F32, y->data, y->ndim, y->shape);
        double ratio[NS][ROUNDS], mc = 0;
        for (int r = 0; r < ROUNDS; r++) {
            double t_mc = time_memcpy(y->data, x->data, bytes);
            mc += t_mc;
            for (int c = 0; c < NS; c++) {
                nb_codec_spec_t s;
                if (nb_codec_spec_parse(specs[c], &s, NULL, 0))
                    abort();
                double t = time_codec(be, &s, specs[c], &lx, &ly, &m);
                if (t < 0)
                    return 1;
                ratio[c][r] = t_mc / t;
            }
        }
        const char *ln = nb_cpu_level_name((nb_cpu_level_t)l);
        printf("bench codec_memcpy_gbps_%s %.2f GB/s\n", ln, (double)bytes / 1e9 / (mc / ROUNDS));
        for (int c = 0; c < NS; c++) {
            qsort(ratio[c], ROUNDS, sizeof(double), cmp_d);
            printf("bench codec_%s_vs_memcpy_%s %.3f ratio\n", specs[c], ln, ratio[c][ROUNDS / 2]);
        }
        fflush(stdout);
        nb_be_free(be);
    }
    nb_codec_msg_free(&m);
    return 0;
}

/* Held-out loss after training with fwd / bwd at the cut (NULL: none). */
static double train_with(const char *fwd, const char *bwd, double *bytes_per_step)
{
    enum { STEPS = 150, EVAL = 16 };
    nb_fx_t f;
    nb_fx_init(&f, 2, 64, 4, 64, STEPS, 21);
    nb_codec_spec_t sf, sb;
    if (fwd && nb_codec_spec_parse(fwd, &sf, NULL, 0))
        abort();
    if (bwd && nb_codec_spec_parse(bwd, &sb, NULL, 0))
        abort();
    nb_codec_stream_t *btx = nb_codec_stream_new(f.be, 0);
    for (int s = 0; s < STEPS; s++)
        nb_fx_step(&f, s, 21, fwd ? &sf : NULL, bwd ? &sb : NULL, NULL, NULL, btx, NULL, true);
    *bytes_per_step = (double)(f.bytes_fwd + f.bytes_bwd) / STEPS;
    double eval = 0;
    for (int i = 0; i < EVAL; i++)
        eval += nb_fx_step(&f, 100000 + i, 21, fwd ? &sf : NULL, NULL, NULL, NULL, NULL, NULL, false);
    nb_codec_stream_free(btx);
    nb_fx_free(&f);
    return eval / EVAL;
}

static void train_sweep(void)
{
    static const struct { const char *name, *fwd, *bwd; } runs[] = {
        { "fp16", "fp16", "fp16" },
        { "bf16", "bf16", "bf16" },
        { "int8", "int8", "int8" },
        { "int8_sr", "int8(sr)", "int8(sr)" },
        { "int4", "int4", "int4" },
        { "fp16_svd_0.6+int8", "fp16(svd(0.6))", "int8" },
        { "fp16_svd_0.2+int8", "fp16(svd(0.2))", "int8" },
        { "int8_svd_0.2+int8_topk_0.1_ef", "int8(svd(0.2))", "int8(topk(0.1),ef)" },
        { "fp16+topk_0.1_ef", "fp16", "topk(0.1,ef)" },
        { "fp16+topk_0.1", "fp16", "topk(0.1)" },
        { "topk_0.25+int8", "topk(0.25)", "int8" },
    };
    double base_bytes, bytes;
    double base = train_with(NULL, NULL, &base_bytes);
    printf("bench codec_train_fp32_loss %.4f loss\n", base);
    printf("bench codec_train_fp32_bytes_per_step %.0f B\n", base_bytes);
    fflush(stdout);
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        double l = train_with(runs[i].fwd, runs[i].bwd, &bytes);
        printf("bench codec_train_%s_loss %.4f loss\n", runs[i].name, l);
        printf("bench codec_train_%s_gap %.3f %%\n", runs[i].name, 100.0 * (l - base) / base);
        printf("bench codec_train_%s_bytes_per_step %.0f B\n", runs[i].name, bytes);
        fflush(stdout);
    }
}

int main(void)
{
    nb_backend_t *be = nb_cpu_backend_new();
    int64_t shape[3] = { B, T, C };
    nb_tensor_t *x = nb_tensor_new(be, NB_F32, 3, shape), *y = nb_tensor_new(be, NB_F32, 3, shape);
    if (!be || !x || !y)
        return 1;
    make_input(be, x->data);
    size_t bytes = nb_tensor_nbytes(x);
    double gb = (double)bytes / 1e9;

    double memcpy_gbps = gb / time_memcpy(y->data, x->data, bytes);
    char kernels[96];
    nb_cpu_describe(kernels, sizeof kernels);
    printf("# kernels %s\n", kernels);
    printf("bench codec_memcpy_gbps %.2f GB/s\n", memcpy_gbps);

    static const codec_case_t cases[] = {
        { "fp32", "fp32" },
        { "fp16", "fp16" },
        { "bf16", "bf16" },
        { "int8", "int8" },
        { "int8_sr", "int8(sr)" },
        { "int8_row", "int8(block=row)" },
        { "int4", "int4" },
        { "topk_0.01", "topk(0.01)" },
        { "int8_topk_0.1", "int8(topk(0.1))" },
        { "svd_0.6", "svd(0.6)" },
        { "fp16_svd_0.6", "fp16(svd(0.6))" },
        { "fp16_svd_0.2", "fp16(svd(0.2))" },
        { "int8_svd_0.2", "int8(svd(0.2))" },
    };
    nb_codec_msg_t m;
    nb_codec_msg_init(&m);
    char err[256];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        nb_codec_spec_t s;
        if (nb_codec_spec_parse(cases[c].spec, &s, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        double secs = time_codec(be, &s, cases[c].spec, x, y, &m);
        if (secs < 0)
            return 1;
        double gbps = gb / secs;
        const float *a = x->data, *b = y->data;
        double num = 0, den = 0;
        for (size_t i = 0; i < bytes / 4; i++) {
            num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
            den += (double)a[i] * a[i];
        }
        printf("bench codec_%s_gbps %.3f GB/s\n", cases[c].name, gbps);
        printf("bench codec_%s_vs_memcpy %.3f ratio\n", cases[c].name, gbps / memcpy_gbps);
        printf("bench codec_%s_ratio %.2f x\n", cases[c].name, (double)bytes / (double)nb_codec_msg_bytes(&m));
        printf("bench codec_%s_rel_err %.5f rel\n", cases[c].name, sqrt(num / den));
        fflush(stdout);
    }
    nb_codec_msg_free(&m);
    if (level_sweep(x, y, bytes))
        return 1;
    nb_tensor_free(x);
    nb_tensor_free(y);
    nb_be_free(be);
    train_sweep();
    return 0;
}
