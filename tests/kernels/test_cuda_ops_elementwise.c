/* test_cuda_ops_elementwise.c - the CUDA backend's gelu (tanh and erf),
 * bias add and gradient and AdamW against the CPU backend (the reference),
 * on odd sizes, with pre-filled outputs for the accumulating ops, n == 0,
 * and two runs of each op compared bit for bit.
 *
 * Tolerances (docs/cuda.md): gelu tanh fwd/bwd, bias_add and adamw give the
 * CPU's bits (the same operations in the same order, no FMA contraction),
 * so they are compared exactly. gelu erf fwd/bwd use the device's erff/expf:
 * |gpu - cpu| <= 2e-6 + 1e-5 |cpu|. bias_grad sums in another order (two
 * passes): |gpu - cpu| <= 1e-6 (|dbias| + sum |dy|) per column.
 * Without a CUDA device (or module) the test is reported as skipped. */
#include "test_ops_util.h"
#include "test_cuda_util.h"

/* Bit equality, except that any NaN matches any NaN (a device's default NaN
 * has other bits than the host's). */
static void assert_bits(const char *what, const float *got, const float *ref, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp(&got[i], &ref[i], sizeof got[i]) != 0 && !(isnan(got[i]) && isnan(ref[i])))
            fail_msg("%s: element %zu is %.9g, expected %.9g (bit-identical)", what, i,
                     (double)got[i], (double)ref[i]);
    printf("# %-34s n=%-6zu bit-identical\n", what, n);
}

/* |got - ref| <= atol + rtol |ref|, where equal values (infinities) and two
 * NaNs also match; prints the largest error of the finite elements. */
static void assert_close(const char *what, const float *got, const float *ref, size_t n,
                         double atol, double rtol)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        if (got[i] == ref[i] || (isnan(got[i]) && isnan(ref[i])))
            continue;
        double e = fabs((double)got[i] - ref[i]);
        if (!(e <= atol + rtol * fabs(ref[i])))
            fail_msg("%s: element %zu is %.9g, expected %.9g (atol %g rtol %g)", what, i,
                     (double)got[i], (double)ref[i], atol, rtol);
        if (e > worst)
            worst = e;
    }
    printf("# %-34s n=%-6zu max abs err %.3g\n", what, n, worst);
}

/* Inputs across the range, with the special values the kernels clamp. */
static void gelu_inputs(tu_rng_t *r, float *x, size_t n)
{
    tu_fill(r, x, n, 6.0f);
    const float special[] = { 0.0f, -0.0f, 1e-30f, -1e-30f, 10.0f, -10.0f, 20.0f, -20.0f,
                              50.0f, -50.0f, 100.0f, -100.0f, 1e30f, -1e30f, INFINITY, -INFINITY, NAN };
    for (size_t i = 0; i < sizeof special / sizeof *special && i * 7 < n; i++)
        x[i * 7] = special[i];
}

typedef void (*unary_fn)(nb_backend_t *, float *, const float *, size_t);
typedef void (*binary_acc_fn)(nb_backend_t *, float *, const float *, const float *, size_t);

static void check_gelu(cuda_fixture_t *f, const char *name, unary_fn fwd, binary_acc_fn bwd, bool exact, size_t n)
{
    tu_rng_t r = { 0x9e3779b97f4a7c15ull ^ n };
    float *x = tu_alloc(n), *dout = tu_alloc(n), *dx0 = tu_alloc(n);
    float *ref = tu_alloc(n), *got = tu_alloc(n), *got2 = tu_alloc(n);
    gelu_inputs(&r, x, n);
    tu_fill(&r, dout, n, 1.0f);
    tu_fill(&r, dx0, n, 2.0f); /* accumulate: dx starts non-zero */
    float *dxv = cuda_up_f(f->gpu, x, n), *dout_d = cuda_up_f(f->gpu, dout, n), *dy = cuda_up_f(f->gpu, ref, n);
    char what[96];

    /* forward */
    fwd(f->cpu, ref, x, n);
    fwd(f->gpu, dy, dxv, n);
    cuda_down_f(f->gpu, got, dy, n);
    fwd(f->gpu, dy, dxv, n);
    cuda_down_f(f->gpu, got2, dy, n);
    snprintf(what, sizeof what, "%s fwd", name);
    if (exact)
        assert_bits(what, got, ref, n);
    else
        assert_close(what, got, ref, n, 2e-6, 1e-5);
    assert_memory_equal(got, got2, n * sizeof *got);

    /* backward, accumulating into dx0 */
    memcpy(ref, dx0, n * sizeof *ref);
    bwd(f->cpu, ref, x, dout, n);
    for (int run = 0; run < 2; run++) {
        float *dd = cuda_up_f(f->gpu, dx0, n);
        bwd(f->gpu, dd, dxv, dout_d, n);
        cuda_down_f(f->gpu, run ? got2 : got, dd, n);
        nb_be_dealloc(f->gpu, dd);
    }
    snprintf(what, sizeof what, "%s bwd (accumulating)", name);
    if (exact)
        assert_bits(what, got, ref, n);
    else
        assert_close(what, got, ref, n, 2e-6, 1e-5);
    assert_memory_equal(got, got2, n * sizeof *got);

    nb_be_dealloc(f->gpu, dxv);
    nb_be_dealloc(f->gpu, dout_d);
    nb_be_dealloc(f->gpu, dy);
    free(x); free(dout); free(dx0); free(ref); free(got); free(got2);
}

static void test_gelu_tanh(void **state)
{
    cuda_fixture_t *f = cuda_fx(state);
    const size_t sizes[] = { 1, 17, 255, 4099 };
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++)
        check_gelu(f, "gelu tanh", nb_gelu_fwd, nb_gelu_bwd, true, sizes[k]);
    /* n == 0 touches nothing */
    float one = 3.0f, *d = cuda_up_f(f->gpu, &one, 1);
    nb_gelu_fwd(f->gpu, d, d, 0);
    nb_gelu_bwd(f->gpu, d, d, d, 0);
    cuda_down_f(f->gpu, &one, d, 1);
    assert_true(one == 3.0f);
    nb_be_dealloc(f->gpu, d);
}

static void test_gelu_erf(void **state)
{
    cuda_fixture_t *f = cuda_fx(state);
    const size_t sizes[] = { 1, 17, 4099 };
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++)
        check_gelu(f, "gelu erf", nb_gelu_erf_fwd, nb_gelu_erf_bwd, false, sizes[k]);
    float one = 3.0f, *d = cuda_up_f(f->gpu, &one, 1);
    nb_gelu_erf_fwd(f->gpu, d, d, 0);
    nb_gelu_erf_bwd(f->gpu, d, d, d, 0);
    cuda_down_f(f->gpu, &one, d, 1);
    assert_true(one == 3.0f);
    nb_be_dealloc(f->gpu, d);
}

static void test_bias_add(void **state)
{
    cuda_fixture_t *f = cuda_fx(state);
    /* narrow and wide (two column groups), and more rows than the grid's
     * 4096 (each block strides over several) */
    const int shapes[][2] = { { 1, 1 }, { 37, 48 }, { 5, 301 }, { 111, 7 }, { 4099, 3 }, { 0, 9 }, { 9, 0 } };
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        int rows = shapes[k][0], cols = shapes[k][1];
        size_t n = (size_t)rows * cols;
        tu_rng_t r = { 0x1234567ull + k };
        float *y = tu_alloc(n), *b = tu_alloc(cols), *got = tu_alloc(n);
        tu_fill(&r, y, n, 1.0f);
        tu_fill(&r, b, cols, 1.0f);
        float *dyv = cuda_up_f(f->gpu, y, n), *db = cuda_up_f(f->gpu, b, cols);
        nb_bias_add(f->cpu, y, b, rows, cols);
        nb_bias_add(f->gpu, dyv, db, rows, cols);
        cuda_down_f(f->gpu, got, dyv, n);
        char what[64];
        snprintf(what, sizeof what, "bias_add %dx%d", rows, cols);
        assert_bits(what, got, y, n);
        nb_be_dealloc(f->gpu, dyv);
        nb_be_dealloc(f->gpu, db);
        free(y); free(b); free(got);
    }
}

static void test_bias_grad(void **state)
{
    cuda_fixture_t *f = cuda_fx(state);
    /* one chunk (direct), several chunks with a partial last one, narrow and
     * wide, and the empty shapes */
    const int shapes[][2] = { { 1, 1 }, { 37, 48 }, { 256, 33 }, { 257, 33 }, { 1000, 77 },
                              { 3, 301 }, { 0, 9 }, { 9, 0 } };
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        int rows = shapes[k][0], cols = shapes[k][1];
        size_t n = (size_t)rows * cols;
        tu_rng_t r = { 0xabcdefull + k };
        float *dy = tu_alloc(n), *db0 = tu_alloc(cols), *ref = tu_alloc(cols);
        float *got = tu_alloc(cols), *got2 = tu_alloc(cols);
        double *bound = calloc(cols ? cols : 1, sizeof *bound);
        assert_non_null(bound);
        tu_fill(&r, dy, n, 1.0f);
        tu_fill(&r, db0, cols, 3.0f); /* accumulate: dbias starts non-zero */
        for (int c = 0; c < cols; c++) {
            bound[c] = fabs(db0[c]);
            for (int i = 0; i < rows; i++)
                bound[c] += fabs(dy[(size_t)i * cols + c]);
        }
        memcpy(ref, db0, cols * sizeof *ref);
        nb_bias_grad(f->cpu, ref, dy, rows, cols);
        float *dyv = cuda_up_f(f->gpu, dy, n);
        for (int run = 0; run < 2; run++) {
            float *dd = cuda_up_f(f->gpu, db0, cols);
            nb_bias_grad(f->gpu, dd, dyv, rows, cols);
            cuda_down_f(f->gpu, run ? got2 : got, dd, cols);
            nb_be_dealloc(f->gpu, dd);
        }
        double worst = 0;
        for (int c = 0; c < cols; c++) {
            double e = fabs((double)got[c] - ref[c]);
            if (!(e <= 1e-6 * bound[c]))
                fail_msg("bias_grad %dx%d: column %d is %.9g, expected %.9g (bound %.3g)", rows, cols,
                         c, (double)got[c], (double)ref[c], 1e-6 * bound[c]);
            if (e / bound[c] > worst)
                worst = e / bound[c];
        }
        printf("# bias_grad %4dx%-4d max err / (|dbias| + sum|dy|) %.3g\n", rows, cols, worst);
        assert_memory_equal(got, got2, cols * sizeof *got);
        if (rows == 0)
            assert_memory_equal(got, db0, cols * sizeof *got);
        nb_be_dealloc(f->gpu, dyv);
        free(dy); free(db0); free(ref); free(got); free(got2); free(bound);
    }
}

static void test_adamw(void **state)
{
    cuda_fixture_t *f = cuda_fx(state);
    const size_t sizes[] = { 1, 33, 4099 };
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        size_t n = sizes[k];
        tu_rng_t r = { 0x5151ull + n };
        float *p = tu_alloc(n), *m = tu_alloc(n), *v = tu_alloc(n), *g = tu_alloc(n);
        float *gp = tu_alloc(n), *gm = tu_alloc(n), *gv = tu_alloc(n);
        tu_fill(&r, p, n, 1.0f);
        float *dp = cuda_up_f(f->gpu, p, n), *dm = cuda_up_f(f->gpu, m, n), *dv = cuda_up_f(f->gpu, v, n), *dg = cuda_up_f(f->gpu, g, n);
        /* steps 1..4, then a late step (bias correction near 1), with
         * clipping scales, weight decay and tiny gradients (eps matters) */
        const int steps[] = { 1, 2, 3, 4, 1000 };
        for (int s = 0; s < 5; s++) {
            tu_fill(&r, g, n, s == 3 ? 1e-7f : 2.0f);
            nb_be_from_host(f->gpu, dg, g, n * sizeof *g);
            float gscale = s == 2 ? 0.25f : 1.0f, wd = s == 1 ? 0.0f : 0.1f;
            nb_adamw(f->cpu, p, g, m, v, n, 3e-4f, 0.9f, 0.95f, 1e-8f, wd, gscale, steps[s]);
            nb_adamw(f->gpu, dp, dg, dm, dv, n, 3e-4f, 0.9f, 0.95f, 1e-8f, wd, gscale, steps[s]);
            cuda_down_f(f->gpu, gp, dp, n);
            cuda_down_f(f->gpu, gm, dm, n);
            cuda_down_f(f->gpu, gv, dv, n);
            char what[64];
            snprintf(what, sizeof what, "adamw step %d param", steps[s]);
            assert_bits(what, gp, p, n);
            snprintf(what, sizeof what, "adamw step %d m", steps[s]);
            assert_bits(what, gm, m, n);
            snprintf(what, sizeof what, "adamw step %d v", steps[s]);
            assert_bits(what, gv, v, n);
        }
        nb_adamw(f->gpu, dp, dg, dm, dv, 0, 3e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, 6);
        cuda_down_f(f->gpu, gp, dp, n);
        assert_memory_equal(gp, p, n * sizeof *p);
        nb_be_dealloc(f->gpu, dp); nb_be_dealloc(f->gpu, dm);
        nb_be_dealloc(f->gpu, dv); nb_be_dealloc(f->gpu, dg);
        free(p); free(m); free(v); free(g); free(gp); free(gm); free(gv);
    }
}

static void test_supports(void **state)
{
    cuda_fixture_t *f = cuda_fx(state);
    const nb_op_t ops[] = { NB_OP_GELU_FWD, NB_OP_GELU_BWD, NB_OP_GELU_ERF_FWD, NB_OP_GELU_ERF_BWD,
                            NB_OP_BIAS_ADD, NB_OP_BIAS_GRAD, NB_OP_ADAMW };
    for (size_t k = 0; k < sizeof ops / sizeof *ops; k++)
        assert_true(nb_be_supports(f->gpu, ops[k]));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_supports),
        cmocka_unit_test(test_gelu_tanh),
        cmocka_unit_test(test_gelu_erf),
        cmocka_unit_test(test_bias_add),
        cmocka_unit_test(test_bias_grad),
        cmocka_unit_test(test_adamw),
    };
    return cmocka_run_group_tests(tests, cuda_setup, cuda_teardown);
}
