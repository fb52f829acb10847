/*
 * bench_kernels.c - throughput of the CPU backend: BLAS sgemm at 2048^3 and
 * the forward+backward pass of one GPT-2-style pre-LN transformer block
 * (d=768, 12 heads, T=128, B=8) written directly out of the backend
 * wrappers, and the ratio of the two. Prints "bench <name> <value> <unit>"
 * lines (see docs/benchmarks.md).
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
#include "kernels/backend.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* every buffer, for freeing at the end */
static float *allocated[128];
static int n_allocated;

static float *falloc(nb_backend_t *be, size_t n, unsigned seed, float scale)
{
    float *p = nb_be_alloc(be, n * sizeof *p);
    if (!p || n_allocated == (int)(sizeof allocated / sizeof allocated[0])) {
        fprintf(stderr, "bench_kernels: out of memory (%zu floats)\n", n);
        exit(1);
    }
    uint64_t s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        p[i] = scale * (float)((double)(s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
    allocated[n_allocated++] = p;
    return p;
}

/* One timed cblas_sgemm of n^3; seconds. */
static double time_sgemm(const float *a, const float *b, float *c, int n)
{
    double t0 = now_s();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    return now_s() - t0;
}

enum { B = 8, T = 128, C = 768, NH = 12, F = 4 * C, BT = B * T };

typedef struct {
    /* parameters (PyTorch Linear layout: weight (out, in)) and their grads */
    float *ln1w, *ln1b, *wqkv, *bqkv, *wproj, *bproj, *ln2w, *ln2b, *wfc, *bfc, *wfc2, *bfc2;
    float *dln1w, *dln1b, *dwqkv, *dbqkv, *dwproj, *dbproj, *dln2w, *dln2b, *dwfc, *dbfc, *dwfc2, *dbfc2;
    /* activations */
    float *x, *ln1, *m1, *r1, *qkv, *att, *ao, *x2, *ln2, *m2, *r2, *h, *hg, *y;
    /* activation grads */
    float *dy, *dx2, *dhg, *dh, *dln2, *dao, *dqkv, *dln1, *dx;
} block_t;

/* y = x @ W^T + b for W (out, in) */
static void linear_fwd(nb_backend_t *be, float *y, const float *x, const float *w, const float *b,
                       int n, int in, int out)
{
    nb_matmul(be, false, true, n, out, in, 1.0f, x, in, 0, w, in, 0, 0.0f, y, out, 0, 1);
    nb_bias_add(be, y, b, n, out);
}

/* dx = dy @ W (overwrite); dW += dy^T @ x; db += colsum(dy) */
static void linear_bwd(nb_backend_t *be, float *dx, float *dw, float *db, const float *dy,
                       const float *x, const float *w, int n, int in, int out)
{
    nb_matmul(be, true, false, out, in, n, 1.0f, dy, out, 0, x, in, 0, 1.0f, dw, in, 0, 1);
    nb_bias_grad(be, db, dy, n, out);
    nb_matmul(be, false, false, n, in, out, 1.0f, dy, out, 0, w, in, 0, 0.0f, dx, in, 0, 1);
}

static void block_fwd(nb_backend_t *be, block_t *k)
{
    nb_layernorm_fwd(be, k->ln1, k->m1, k->r1, k->x, k->ln1w, k->ln1b, BT, C);
    linear_fwd(be, k->qkv, k->ln1, k->wqkv, k->bqkv, BT, C, 3 * C);
    nb_attention_fwd(be, k->ao, k->att, k->qkv, NULL, true, B, T, C, NH);
    linear_fwd(be, k->x2, k->ao, k->wproj, k->bproj, BT, C, C);
    nb_add(be, k->x2, k->x, 1.0f, (size_t)BT * C);           /* residual */
    nb_layernorm_fwd(be, k->ln2, k->m2, k->r2, k->x2, k->ln2w, k->ln2b, BT, C);
    linear_fwd(be, k->h, k->ln2, k->wfc, k->bfc, BT, C, F);
    nb_gelu_fwd(be, k->hg, k->h, (size_t)BT * F);
    linear_fwd(be, k->y, k->hg, k->wfc2, k->bfc2, BT, F, C);
    nb_add(be, k->y, k->x2, 1.0f, (size_t)BT * C);           /* residual */
}

static void block_bwd(nb_backend_t *be, block_t *k)
{
    size_t nc = (size_t)BT * C * sizeof(float);
    /* MLP branch; the residual passes dy straight to dx2 */
    linear_bwd(be, k->dhg, k->dwfc2, k->dbfc2, k->dy, k->hg, k->wfc2, BT, F, C);
    nb_be_memset0(be, k->dh, (size_t)BT * F * sizeof(float));
    nb_gelu_bwd(be, k->dh, k->h, k->dhg, (size_t)BT * F);
    linear_bwd(be, k->dln2, k->dwfc, k->dbfc, k->dh, k->ln2, k->wfc, BT, C, F);
    nb_be_copy(be, k->dx2, k->dy, nc);
    nb_layernorm_bwd(be, k->dx2, k->dln2w, k->dln2b, k->dln2, k->x2, k->ln2w, k->m2, k->r2, BT, C);
    /* attention branch; the residual passes dx2 straight to dx */
    linear_bwd(be, k->dao, k->dwproj, k->dbproj, k->dx2, k->ao, k->wproj, BT, C, C);
    nb_be_memset0(be, k->dqkv, 3 * nc);
    nb_attention_bwd(be, k->dqkv, k->dao, k->qkv, k->att, NULL, true, B, T, C, NH);
    linear_bwd(be, k->dln1, k->dwqkv, k->dbqkv, k->dqkv, k->ln1, k->wqkv, BT, C, 3 * C);
    nb_be_copy(be, k->dx, k->dx2, nc);
    nb_layernorm_bwd(be, k->dx, k->dln1w, k->dln1b, k->dln1, k->x, k->ln1w, k->m1, k->r1, BT, C);
}

int main(void)
{
    nb_backend_t *be = nb_cpu_backend_new();
    if (!be) {
        fprintf(stderr, "bench_kernels: no CPU backend\n");
        return 1;
    }
    enum { N = 2048 };
    float *sa = falloc(be, (size_t)N * N, 1, 1.0f), *sb = falloc(be, (size_t)N * N, 2, 1.0f);
    float *sc = falloc(be, (size_t)N * N, 3, 0.0f);

    block_t k;
    unsigned s = 10;
    const float ws = 0.02f;
    k.ln1w = falloc(be, C, s++, 1.0f); k.ln1b = falloc(be, C, s++, 0.1f);
    k.wqkv = falloc(be, (size_t)3 * C * C, s++, ws); k.bqkv = falloc(be, 3 * C, s++, ws);
    k.wproj = falloc(be, (size_t)C * C, s++, ws); k.bproj = falloc(be, C, s++, ws);
    k.ln2w = falloc(be, C, s++, 1.0f); k.ln2b = falloc(be, C, s++, 0.1f);
    k.wfc = falloc(be, (size_t)F * C, s++, ws); k.bfc = falloc(be, F, s++, ws);
    k.wfc2 = falloc(be, (size_t)C * F, s++, ws); k.bfc2 = falloc(be, C, s++, ws);
    k.dln1w = falloc(be, C, 0, 0); k.dln1b = falloc(be, C, 0, 0);
    k.dwqkv = falloc(be, (size_t)3 * C * C, 0, 0); k.dbqkv = falloc(be, 3 * C, 0, 0);
    k.dwproj = falloc(be, (size_t)C * C, 0, 0); k.dbproj = falloc(be, C, 0, 0);
    k.dln2w = falloc(be, C, 0, 0); k.dln2b = falloc(be, C, 0, 0);
    k.dwfc = falloc(be, (size_t)F * C, 0, 0); k.dbfc = falloc(be, F, 0, 0);
    k.dwfc2 = falloc(be, (size_t)C * F, 0, 0); k.dbfc2 = falloc(be, C, 0, 0);
    size_t nc = (size_t)BT * C;
    k.x = falloc(be, nc, s++, 1.0f); k.ln1 = falloc(be, nc, 0, 0);
    k.m1 = falloc(be, BT, 0, 0); k.r1 = falloc(be, BT, 0, 0);
    k.qkv = falloc(be, 3 * nc, 0, 0); k.att = falloc(be, (size_t)B * NH * T * T, 0, 0);
    k.ao = falloc(be, nc, 0, 0); k.x2 = falloc(be, nc, 0, 0); k.ln2 = falloc(be, nc, 0, 0);
    k.m2 = falloc(be, BT, 0, 0); k.r2 = falloc(be, BT, 0, 0);
    k.h = falloc(be, (size_t)BT * F, 0, 0); k.hg = falloc(be, (size_t)BT * F, 0, 0);
    k.y = falloc(be, nc, 0, 0);
    k.dy = falloc(be, nc, s++, 1.0f); k.dx2 = falloc(be, nc, 0, 0);
    k.dhg = falloc(be, (size_t)BT * F, 0, 0); k.dh = falloc(be, (size_t)BT * F, 0, 0);
    k.dln2 = falloc(be, nc, 0, 0); k.dao = falloc(be, nc, 0, 0);
    k.dqkv = falloc(be, 3 * nc, 0, 0); k.dln1 = falloc(be, nc, 0, 0); k.dx = falloc(be, nc, 0, 0);

    double fwd_flops = 2.0 * BT * ((double)C * 3 * C + (double)C * C + 2.0 * C * F) +
                       2.0 * 2.0 * B * NH * (double)T * T * (C / NH);
    double flops = 3.0 * fwd_flops;
    /* Rounds alternate sgemm and block so both see the same machine: on a
     * shared machine a busy spell then hurts both figures, not the ratio.
     * Best of the rounds, after one warm-up round (threads, caches, pages). */
    enum { ROUNDS = 6 };
    double best = 1e30, tf_best = 1e30, sg_best = 1e30;
    for (int r = 0; r < ROUNDS + 1; r++) {
        double ts = time_sgemm(sa, sb, sc, N);
        double t0 = now_s();
        block_fwd(be, &k);
        double t1 = now_s();
        block_bwd(be, &k);
        nb_be_sync(be);
        double t2 = now_s();
        if (r > 0) {
            if (ts < sg_best) sg_best = ts;
            if (t2 - t0 < best) best = t2 - t0;
            if (t1 - t0 < tf_best) tf_best = t1 - t0;
        }
    }
    /* a fast wrong answer is no figure: the gradients must be finite */
    double ss_dx, ss_dw;
    nb_sumsq(be, &ss_dx, k.dx, nc);
    nb_sumsq(be, &ss_dw, k.dwqkv, (size_t)3 * C * C);
    if (!(ss_dx > 0 && ss_dx < 1e30 && ss_dw > 0 && ss_dw < 1e30)) {
        fprintf(stderr, "bench_kernels: block gradients not finite (%g, %g)\n", ss_dx, ss_dw);
        return 1;
    }
    double sg = 2.0 * N * (double)N * N / sg_best / 1e9;
    printf("bench sgemm_2048_gflops %.1f GFLOP/s\n", sg);
    double bg = flops / best / 1e9;
    fprintf(stderr, "block: fwd %.1f ms, fwd+bwd %.1f ms, %.2f GFLOP counted\n",
            tf_best * 1e3, best * 1e3, flops / 1e9);
    printf("bench block_fwd_bwd_gflops %.1f GFLOP/s\n", bg);
    printf("bench block_vs_sgemm_ratio %.2f ratio\n", bg / sg);
    for (int i = 0; i < n_allocated; i++)
        nb_be_dealloc(be, allocated[i]);
    nb_be_free(be);
    return 0;
}
