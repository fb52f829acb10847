/* test_ops_optim.c - optimizer primitives on the CPU backend: sum of squares
 * in double, and AdamW against a two-step sequence computed by hand and
 * against a double-precision transcription of torch.optim.AdamW. */
#include "tests/kernels/test_ops_util.h"

static void test_sumsq(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    enum { N = 100003 };
    tu_rng_t rng = { 41 };
    float *x = tu_alloc(N);
    tu_fill(&rng, x, N, 3.0f);
    double ref = 0, got = -1;
    for (int i = 0; i < N; i++)
        ref += (double)x[i] * x[i];
    nb_sumsq(be, &got, x, N);
    printf("# sumsq rel err %.3g\n", fabs(got - ref) / ref);
    assert_true(fabs(got - ref) <= 1e-12 * ref);
    nb_sumsq(be, &got, x, 0);
    assert_true(got == 0.0);
    nb_sumsq(be, &got, x, 3);
    assert_true(got == (double)x[0] * x[0] + (double)x[1] * x[1] + (double)x[2] * x[2]);
    free(x);
    nb_be_free(be);
}

/* p = 1, g = 0.5 then -0.25 (grad_scale 0.5 applied to 1 and -0.5),
 * lr 0.1, betas (0.9, 0.999), eps 1e-8, wd 0.01, worked out by hand:
 * step 1: p = 1*(1-0.001) = 0.999; m = 0.05; v = 0.00025;
 *         mhat = 0.5, vhat = 0.25, p -= 0.1*0.5/(0.5+1e-8)  -> 0.899000002
 * step 2: p = 0.899000002*0.999 = 0.898101002; m = 0.045-0.025 = 0.02;
 *         v = 0.00024975+0.0000625 = 0.00031225;
 *         mhat = 0.02/0.19 = 0.105263158; vhat = 0.00031225/0.001999 = 0.156203102,
 *         sqrt = 0.395225382; p -= 0.1*0.105263158/(0.395225392) -> 0.871467...
 */
static void test_adamw_two_steps(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    float p = 1.0f, m = 0.0f, v = 0.0f, g1 = 1.0f, g2 = -0.5f;
    nb_adamw(be, &p, &g1, &m, &v, 1, 0.1f, 0.9f, 0.999f, 1e-8f, 0.01f, 0.5f, 1);
    /* betas arrive as float: 1 - 0.999f is 0.00099998713, so v is off from
     * the decimal value by ~1.3e-5 relative (bias correction cancels it) */
    assert_true(fabs(m - 0.05) < 1e-6 * 0.05);
    assert_true(fabs(v - 0.00025) < 2e-5 * 0.00025);
    assert_true(fabs(p - 0.899000002) < 1e-6);
    nb_adamw(be, &p, &g2, &m, &v, 1, 0.1f, 0.9f, 0.999f, 1e-8f, 0.01f, 0.5f, 2);
    double p2 = 0.899000002 * 0.999;
    double mhat = 0.02 / 0.19, vhat = 0.00031225 / (1 - 0.999 * 0.999);
    p2 -= 0.1 * mhat / (sqrt(vhat) + 1e-8);
    printf("# adamw two steps: p %.9f expected %.9f\n", p, p2);
    assert_true(fabs(m - 0.02) < 1e-5 * 0.02);
    assert_true(fabs(v - 0.00031225) < 2e-5 * 0.00031225);
    assert_true(fabs(p - p2) < 1e-6);
    nb_be_free(be);
}

/* Many elements and steps against a double transcription of torch's loop. */
static void test_adamw_vs_reference(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    enum { N = 257, STEPS = 5 };
    tu_rng_t rng = { 43 };
    float *p = tu_alloc(N), *m = tu_alloc(N), *v = tu_alloc(N), *g = tu_alloc(N);
    double rp[N], rm[N] = { 0 }, rv[N] = { 0 };
    tu_fill(&rng, p, N, 1.0f);
    for (int i = 0; i < N; i++) rp[i] = p[i];
    const double lr = 3e-3, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1, gs = 0.7;
    for (int t = 1; t <= STEPS; t++) {
        tu_fill(&rng, g, N, 2.0f);
        nb_adamw(be, p, g, m, v, N, (float)lr, (float)b1, (float)b2, (float)eps, (float)wd, (float)gs, t);
        for (int i = 0; i < N; i++) {
            double gg = (double)g[i] * gs;
            rp[i] *= 1 - lr * wd;
            rm[i] = b1 * rm[i] + (1 - b1) * gg;
            rv[i] = b2 * rv[i] + (1 - b2) * gg * gg;
            double mh = rm[i] / (1 - pow(b1, t)), vh = rv[i] / (1 - pow(b2, t));
            rp[i] -= lr * mh / (sqrt(vh) + eps);
        }
    }
    tu_assert_close("adamw params after 5 steps", p, rp, N, 1e-6, 1e-5);
    tu_assert_close("adamw m after 5 steps", m, rm, N, 1e-7, 1e-5);
    tu_assert_close("adamw v after 5 steps", v, rv, N, 1e-8, 1e-5);
    free(p); free(m); free(v); free(g);
    nb_be_free(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sumsq),
        cmocka_unit_test(test_adamw_two_steps),
        cmocka_unit_test(test_adamw_vs_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
