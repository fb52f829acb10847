/*
 * bench_kernels.c - throughput of the CPU backend: BLAS sgemm at 2048^3 and
 * the forward+backward pass of one GPT-2-style pre-LN transformer block
 * (d=768, 12 heads, T=128, B=8), run by the product's own model code (a
 * part holding block 0 only, kernels/model_pass.c), and the ratio of the
 * two. Once for the process's kernel level (the unsuffixed names), then per
 * level this processor runs: bench block_vs_sgemm_ratio_<level>.
 * Prints "bench <name> <value> <unit>" lines (see docs/benchmarks.md).
 *
 * FLOPs counted for the block: the four linear layers and the two attention
 * products, forward 2*B*T*(C*3C + C*C + 2*C*4C) + 2*2*B*NH*T*T*HS, backward
 * twice the forward. Elementwise work (LayerNorm, GELU, softmax, bias,
 * residual) is not counted: the ratio shows how much it and the small
 * attention products cost against pure sgemm.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cblas.h>
#include "daemon/clock.h"
#include "kernels/backend.h"
#include "kernels/cpu_level.h"
#include "kernels/model.h"

static void fill(float *p, size_t n, unsigned seed, float scale)
{
    uint64_t s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        p[i] = scale * (float)((double)(s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
}

/* One timed cblas_sgemm of n^3; seconds. */
static double time_sgemm(const float *a, const float *b, float *c, int n)
{
    double t0 = nb_mono_s();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    return nb_mono_s() - t0;
}

enum { N = 2048, B = 8, T = 128, C = 768, NH = 12, F = 4 * C, BT = B * T };

typedef struct {
    double sgemm_gflops, block_gflops, fwd_ms, fwd_bwd_ms;
} result_t;

/* Times block 0 of the model at one level against sgemm, alternating. */
static int run_level(nb_backend_t *be, const float *sa, const float *sb, float *sc, result_t *res)
{
    nb_model_config_t cfg = { .n_layer = 1, .d_model = C, .n_head = NH, .d_ff = F, .vocab = 256,
                              .max_seq = T, .causal = true, .norm = NB_MODEL_NORM_PRE,
                              .head = NB_MODEL_HEAD_LM, .tie_embeddings = false };
    nb_part_spec_t spec = { .embed = false, .first = 0, .last = 1, .head = false };
    nb_part_t *p = NULL;
    nb_part_acts_t *a = NULL;
    char err[256];
    if (nb_part_new(be, &cfg, &spec, 42, NULL, &p, err, sizeof err) || nb_part_acts_new(p, B, T, &a)) {
        fprintf(stderr, "bench_kernels: %s\n", p ? "out of memory for activations" : err);
        nb_part_free(p);
        return 1;
    }
    float *x = nb_be_alloc(be, sizeof(float) * BT * C), *dy = nb_be_alloc(be, sizeof(float) * BT * C);
    if (!x || !dy) {
        fprintf(stderr, "bench_kernels: out of memory\n");
        return 1;
    }
    fill(x, (size_t)BT * C, 7, 1.0f);
    fill(dy, (size_t)BT * C, 8, 1.0f);
    nb_part_input_t in = { .x = x };
    /* Rounds alternate sgemm and block so both see the same machine: on a
     * shared machine a busy spell then hurts both figures, not the ratio.
     * Best of the rounds, after one warm-up round (threads, caches, pages). */
    enum { ROUNDS = 6 };
    double best = 1e30, tf_best = 1e30, sg_best = 1e30;
    for (int r = 0; r < ROUNDS + 1; r++) {
        double ts = time_sgemm(sa, sb, sc, N);
        double t0 = nb_mono_s();
        nb_part_zero_grad(p);
        int rc = nb_part_forward(p, a, &in, NULL);
        nb_be_sync(be);
        double t1 = nb_mono_s();
        rc = rc ? rc : nb_part_backward(p, a, dy);
        nb_be_sync(be);
        double t2 = nb_mono_s();
        if (rc) {
            fprintf(stderr, "bench_kernels: block pass failed: %s\n", nb_strerror(rc));
            return 1;
        }
        if (r > 0) {
            if (ts < sg_best) sg_best = ts;
            if (t2 - t0 < best) best = t2 - t0;
            if (t1 - t0 < tf_best) tf_best = t1 - t0;
        }
    }
    /* a fast wrong answer is no figure: the gradients must be finite and not zero */
    double ss_dx, ss_dw;
    nb_sumsq(be, &ss_dx, nb_part_acts_dinput(a), (size_t)BT * C);
    nb_sumsq(be, &ss_dw, nb_part_grads(p), nb_part_num_grads(p));
    if (!(ss_dx > 0 && ss_dx < 1e30 && ss_dw > 0 && ss_dw < 1e30)) {
        fprintf(stderr, "bench_kernels: block gradients not finite (%g, %g)\n", ss_dx, ss_dw);
        return 1;
    }
    double fwd_flops = 2.0 * BT * ((double)C * 3 * C + (double)C * C + 2.0 * C * F) +
                       2.0 * 2.0 * B * NH * (double)T * T * (C / NH);
    res->sgemm_gflops = 2.0 * N * (double)N * N / sg_best / 1e9;
    res->block_gflops = 3.0 * fwd_flops / best / 1e9;
    res->fwd_ms = tf_best * 1e3;
    res->fwd_bwd_ms = best * 1e3;
    nb_be_dealloc(be, x);
    nb_be_dealloc(be, dy);
    nb_part_acts_free(a);
    nb_part_free(p);
    return 0;
}

int main(void)
{
    nb_cpu_level_t level;
    const char *why = NULL;
    if (nb_cpu_level_select(&level, &why) != 0) {
        fprintf(stderr, "bench_kernels: %s\n", why);
        return 1;
    }
    float *sa = malloc(sizeof(float) * N * N), *sb = malloc(sizeof(float) * N * N);
    float *sc = calloc((size_t)N * N, sizeof(float));
    if (!sa || !sb || !sc)
        return 1;
    fill(sa, (size_t)N * N, 1, 1.0f);
    fill(sb, (size_t)N * N, 2, 1.0f);
    char kernels[96];
    nb_cpu_describe(kernels, sizeof kernels);
    printf("# kernels %s\n", kernels);
    for (int l = -1; l < NB_CPU_LEVEL_COUNT; l++) {
        /* -1: the process's level, under the names without a suffix */
        nb_cpu_level_t at = l < 0 ? level : (nb_cpu_level_t)l;
        nb_backend_t *be = nb_cpu_backend_new_at(at);
        if (!be) {
            printf("# level %s: not on this processor\n", nb_cpu_level_name(at));
            continue;
        }
        result_t r;
        if (run_level(be, sa, sb, sc, &r))
            return 1;
        nb_be_free(be);
        char sfx[16] = "";
        if (l >= 0)
            snprintf(sfx, sizeof sfx, "_%s", nb_cpu_level_name(at));
        fprintf(stderr, "block at %s: fwd %.1f ms, fwd+bwd %.1f ms\n", nb_cpu_level_name(at), r.fwd_ms,
                r.fwd_bwd_ms);
        printf("bench sgemm_2048_gflops%s %.1f GFLOP/s\n", sfx, r.sgemm_gflops);
        printf("bench block_fwd_bwd_gflops%s %.1f GFLOP/s\n", sfx, r.block_gflops);
        printf("bench block_vs_sgemm_ratio%s %.2f ratio\n", sfx, r.block_gflops / r.sgemm_gflops);
        fflush(stdout);
    }
    free(sa);
    free(sb);
    free(sc);
    return 0;
}
