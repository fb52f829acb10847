/* test_cuda_ops_norm.c - the CUDA backend's LayerNorm forward and backward
 * and sum of squares against the CPU backend (the specification), on random
 * inputs of odd sizes: rows shorter than a warp, not a multiple of it, and
 * longer than 1024; row counts that leave partial blocks and partial chunks
 * of the parameter-gradient reduction.
 * Checked: accumulation into dx, dw, db (pre-filled with non-zero values),
 * NULL dw/db (either or both), NULL mean/rstd in forward, N == 0 and n == 0,
 * nothing written past the end of an output, and bit equality of two runs of
 * each op.
 * Tolerances (normalised max error, max |gpu - cpu| / max |cpu|): LayerNorm
 * outputs, mean, rstd, dx 1e-5; dw, db 2e-5 (a sum over rows in another
 * order); sumsq relative 1e-12 (double sums in another order).
 * Without a CUDA device or module the test is reported as skipped. */
#include "tests/kernels/test_ops_util.h"
#include "tests/kernels/test_cuda_util.h"

/* A device buffer of n floats (from host unless NULL) followed by a guard of
 * g floats holding a pattern, to see writes past the end (rows or columns a
 * partial block must leave alone). */
#define GUARD_VALUE 12345.0f
static float *up_guarded(nb_backend_t *gpu, const float *host, size_t n, size_t g)
{
    float *d = nb_be_alloc(gpu, (n + g) * sizeof *d);
    assert_non_null(d);
    float *pat = tu_alloc(g);
    for (size_t i = 0; i < g; i++)
        pat[i] = GUARD_VALUE;
    if (host && n)
        nb_be_from_host(gpu, d, host, n * sizeof *d);
    nb_be_from_host(gpu, d + n, pat, g * sizeof *d);
    nb_be_sync(gpu);
    free(pat);
    return d;
}

static void assert_guard(const char *what, nb_backend_t *gpu, const float *d, size_t n, size_t g)
{
    float *h = cuda_fetch(gpu, d + n, g);
    for (size_t i = 0; i < g; i++)
        if (h[i] != GUARD_VALUE)
            fail_msg("%s: written past the end (element %zu)", what, n + i);
    free(h);
}

static void check_layernorm(nb_backend_t *gpu, nb_backend_t *cpu, int N, int C, uint64_t seed)
{
    printf("# layernorm N=%d C=%d\n", N, C);
    tu_rng_t r = { seed };
    size_t nc = (size_t)N * C;
    float *x = tu_alloc(nc), *w = tu_alloc(C), *b = tu_alloc(C), *dout = tu_alloc(nc);
    float *dx = tu_alloc(nc), *dw = tu_alloc(C), *db = tu_alloc(C);
    tu_fill(&r, x, nc, 2.0f);
    for (size_t i = 0; i < nc; i++)
        x[i] += 3.0f; /* an offset: the variance must be taken around the mean */
    tu_fill(&r, w, C, 1.0f);
    tu_fill(&r, b, C, 0.5f);
    tu_fill(&r, dout, nc, 1.0f);
    tu_fill(&r, dx, nc, 1.0f); /* accumulate targets start non-zero */
    tu_fill(&r, dw, C, 1.0f);
    tu_fill(&r, db, C, 1.0f);

    /* reference */
    float *out = tu_alloc(nc), *mean = tu_alloc(N), *rstd = tu_alloc(N);
    float *rdx = tu_alloc(nc), *rdw = tu_alloc(C), *rdb = tu_alloc(C);
    memcpy(rdx, dx, nc * sizeof *dx);
    memcpy(rdw, dw, C * sizeof *dw);
    memcpy(rdb, db, C * sizeof *db);
    nb_layernorm_fwd(cpu, out, mean, rstd, x, w, b, 1e-5f, N, C);
    nb_layernorm_bwd(cpu, rdx, rdw, rdb, dout, x, w, mean, rstd, N, C);

    float *gx = cuda_up(gpu, x, nc * 4), *gw = cuda_up(gpu, w, C * 4), *gb = cuda_up(gpu, b, C * 4);
    float *gdout = cuda_up(gpu, dout, nc * 4);
    /* guards: three rows past the last (a block holds four), and a column
     * tile of 128 past the parameter gradients */
    size_t grow = 3 * (size_t)C + 1, gcol = 129;
    float *gout = up_guarded(gpu, NULL, nc, grow), *gmean = up_guarded(gpu, NULL, N, 4);
    float *grstd = up_guarded(gpu, NULL, N, 4);

    /* forward, twice: bit-identical */
    nb_layernorm_fwd(gpu, gout, gmean, grstd, gx, gw, gb, 1e-5f, N, C);
    float *o1 = cuda_fetch(gpu, gout, nc), *m1 = cuda_fetch(gpu, gmean, N), *s1 = cuda_fetch(gpu, grstd, N);
    cuda_assert_nmax("layernorm_fwd out", o1, out, nc, 1e-5);
    cuda_assert_nmax("layernorm_fwd mean", m1, mean, N, 1e-5);
    cuda_assert_nmax("layernorm_fwd rstd", s1, rstd, N, 1e-5);
    nb_be_memset0(gpu, gout, nc * 4);
    nb_layernorm_fwd(gpu, gout, gmean, grstd, gx, gw, gb, 1e-5f, N, C);
    float *o2 = cuda_fetch(gpu, gout, nc), *m2 = cuda_fetch(gpu, gmean, N), *s2 = cuda_fetch(gpu, grstd, N);
    cuda_assert_same("layernorm_fwd out", o1, o2, nc);
    cuda_assert_same("layernorm_fwd mean", m1, m2, N);
    cuda_assert_same("layernorm_fwd rstd", s1, s2, N);
    assert_guard("layernorm_fwd out", gpu, gout, nc, grow);
    assert_guard("layernorm_fwd mean", gpu, gmean, N, 4);
    assert_guard("layernorm_fwd rstd", gpu, grstd, N, 4);
    /* mean and rstd are optional: the output is the same without them */
    nb_be_memset0(gpu, gout, nc * 4);
    nb_layernorm_fwd(gpu, gout, NULL, NULL, gx, gw, gb, 1e-5f, N, C);
    free(o2);
    o2 = cuda_fetch(gpu, gout, nc);
    cuda_assert_same("layernorm_fwd without mean/rstd", o1, o2, nc);

    /* backward from the CPU's saved mean and rstd, accumulating */
    nb_be_from_host(gpu, gmean, mean, N * 4);
    nb_be_from_host(gpu, grstd, rstd, N * 4);
    float *gdx = up_guarded(gpu, dx, nc, grow), *gdw = up_guarded(gpu, dw, C, gcol);
    float *gdb = up_guarded(gpu, db, C, gcol);
    nb_layernorm_bwd(gpu, gdx, gdw, gdb, gdout, gx, gw, gmean, grstd, N, C);
    float *dx1 = cuda_fetch(gpu, gdx, nc), *dw1 = cuda_fetch(gpu, gdw, C), *db1 = cuda_fetch(gpu, gdb, C);
    cuda_assert_nmax("layernorm_bwd dx", dx1, rdx, nc, 1e-5);
    cuda_assert_nmax("layernorm_bwd dw", dw1, rdw, C, 2e-5);
    cuda_assert_nmax("layernorm_bwd db", db1, rdb, C, 2e-5);
    /* twice from the same start: bit-identical */
    nb_be_from_host(gpu, gdx, dx, nc * 4);
    nb_be_from_host(gpu, gdw, dw, C * 4);
    nb_be_from_host(gpu, gdb, db, C * 4);
    nb_layernorm_bwd(gpu, gdx, gdw, gdb, gdout, gx, gw, gmean, grstd, N, C);
    float *dx2 = cuda_fetch(gpu, gdx, nc), *dw2 = cuda_fetch(gpu, gdw, C), *db2 = cuda_fetch(gpu, gdb, C);
    cuda_assert_same("layernorm_bwd dx", dx1, dx2, nc);
    cuda_assert_same("layernorm_bwd dw", dw1, dw2, C);
    cuda_assert_same("layernorm_bwd db", db1, db2, C);
    assert_guard("layernorm_bwd dx", gpu, gdx, nc, grow);
    assert_guard("layernorm_bwd dw", gpu, gdw, C, gcol);
    assert_guard("layernorm_bwd db", gpu, gdb, C, gcol);
    /* frozen parameters: both NULL, then one of them; dx is the same, the
     * other parameter gradient too, the NULL one is not written */
    nb_be_from_host(gpu, gdx, dx, nc * 4);
    nb_layernorm_bwd(gpu, gdx, NULL, NULL, gdout, gx, gw, gmean, grstd, N, C);
    free(dx2);
    dx2 = cuda_fetch(gpu, gdx, nc);
    cuda_assert_same("layernorm_bwd dx, dw db NULL", dx1, dx2, nc);
    nb_be_from_host(gpu, gdx, dx, nc * 4);
    nb_be_from_host(gpu, gdw, dw, C * 4);
    nb_be_from_host(gpu, gdb, db, C * 4);
    nb_layernorm_bwd(gpu, gdx, gdw, NULL, gdout, gx, gw, gmean, grstd, N, C);
    free(dw2);
    free(db2);
    dw2 = cuda_fetch(gpu, gdw, C);
    db2 = cuda_fetch(gpu, gdb, C);
    cuda_assert_same("layernorm_bwd dw, db NULL", dw1, dw2, C);
    cuda_assert_same("layernorm_bwd db untouched", db, db2, C);
    nb_be_from_host(gpu, gdw, dw, C * 4);
    nb_layernorm_bwd(gpu, gdx, NULL, gdb, gdout, gx, gw, gmean, grstd, N, C);
    free(dw2);
    free(db2);
    dw2 = cuda_fetch(gpu, gdw, C);
    db2 = cuda_fetch(gpu, gdb, C);
    cuda_assert_same("layernorm_bwd db, dw NULL", db1, db2, C);
    cuda_assert_same("layernorm_bwd dw untouched", dw, dw2, C);

    float *ptrs[] = { gx, gw, gb, gdout, gout, gmean, grstd, gdx, gdw, gdb };
    for (size_t i = 0; i < sizeof ptrs / sizeof *ptrs; i++)
        nb_be_dealloc(gpu, ptrs[i]);
    float *hp[] = { x, w, b, dout, dx, dw, db, out, mean, rstd, rdx, rdw, rdb,
                    o1, m1, s1, o2, m2, s2, dx1, dw1, db1, dx2, dw2, db2 };
    for (size_t i = 0; i < sizeof hp / sizeof *hp; i++)
        free(hp[i]);
}

static void test_layernorm(void **state)
{
    (void)state;
    nb_backend_t *gpu = cuda_open();
    if (!gpu)
        skip();
    nb_backend_t *cpu = nb_cpu_backend_new();
    check_layernorm(gpu, cpu, 111, 48, 1);  /* B=3 T=37 C=48: a partial block */
    check_layernorm(gpu, cpu, 67, 33, 2);   /* C one past a warp, chunks 32+32+3 */
    check_layernorm(gpu, cpu, 6, 1031, 3);  /* C beyond 1024 */
    check_layernorm(gpu, cpu, 1, 7, 4);     /* one row shorter than a warp */
    nb_be_free(gpu);
    nb_be_free(cpu);
}

/* N == 0 touches nothing */
static void test_layernorm_empty(void **state)
{
    (void)state;
    nb_backend_t *gpu = cuda_open();
    if (!gpu)
        skip();
    float h[8] = { 1, 2, 3, 4, 5, 6, 7, 8 }, back[8];
    float *g = cuda_up(gpu, h, sizeof h);
    nb_layernorm_fwd(gpu, g, g, g, g, g, g, 1e-5f, 0, 8);
    nb_layernorm_bwd(gpu, g, g, g, g, g, g, g, g, 0, 8);
    nb_be_to_host(gpu, back, g, sizeof back);
    assert_memory_equal(h, back, sizeof h);
    nb_be_dealloc(gpu, g);
    nb_be_free(gpu);
}

static void check_sumsq(nb_backend_t *gpu, nb_backend_t *cpu, size_t n, uint64_t seed)
{
    tu_rng_t r = { seed };
    float *x = tu_alloc(n);
    tu_fill(&r, x, n, 3.0f);
    double ref = -1, got = -1, again = -2;
    nb_sumsq(cpu, &ref, x, n);
    float *g = cuda_up(gpu, x, n * sizeof *x);
    nb_sumsq(gpu, &got, g, n);
    nb_sumsq(gpu, &again, g, n);
    double rel = ref > 0 ? fabs(got - ref) / ref : fabs(got - ref);
    printf("# sumsq n=%-8zu %.17g vs %.17g, relative error %.3g\n", n, got, ref, rel);
    assert_true(rel <= 1e-12);
    assert_memory_equal(&got, &again, sizeof got);
    nb_be_dealloc(gpu, g);
    free(x);
}

static void test_sumsq(void **state)
{
    (void)state;
    nb_backend_t *gpu = cuda_open();
    if (!gpu)
        skip();
    nb_backend_t *cpu = nb_cpu_backend_new();
    check_sumsq(gpu, cpu, 0, 1);
    check_sumsq(gpu, cpu, 1, 2);
    check_sumsq(gpu, cpu, 1001, 3);
    check_sumsq(gpu, cpu, 99991, 4); /* several blocks, a partial last one */
    /* the result is on the host at return, without a sync by the caller,
     * after a queued op that changes the input */
    float v[3] = { 1.0f, 2.0f, 2.0f };
    float *g = cuda_up(gpu, v, sizeof v);
    nb_scale(gpu, g, 2.0f, 3);
    double s = 0;
    nb_sumsq(gpu, &s, g, 3);
    assert_true(s == 36.0);
    nb_be_dealloc(gpu, g);
    nb_be_free(gpu);
    nb_be_free(cpu);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_layernorm_empty),
        cmocka_unit_test(test_sumsq),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
