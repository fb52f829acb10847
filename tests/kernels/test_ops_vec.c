/* test_ops_vec.c - the vector exp and tanh the CPU ops are built on
 * (kernels/cpu/cpu_vec.h), against libm in double: exp within 2^-23
 * relative over the whole range that neither under- nor overflows, and
 * saturating outside it; tanh within 2e-7 absolute, and odd. */
#include "tests/kernels/test_ops_util.h"
#include "kernels/cpu/cpu_vec.h"

static void test_exp(void **state)
{
    (void)state;
    double worst = 0;
    float at = 0;
    for (int i = 0; i <= 200000; i += NB_VL) {
        float xs[NB_VL];
        for (int l = 0; l < NB_VL; l++)
            xs[l] = -87.0f + 175.5f * (float)(i + l) / 200000.0f; /* -87 .. 88.5 */
        nb_v16 y = nb_v_exp(nb_v_load(xs));
        for (int l = 0; l < NB_VL; l++) {
            double ref = exp((double)xs[l]);
            double rel = fabs((double)y[l] - ref) / ref;
            if (rel > worst) { worst = rel; at = xs[l]; }
        }
    }
    printf("# exp max rel err %.3g (%.2f ulp) at x=%g\n", worst, worst / 5.96e-8, (double)at);
    assert_true(worst < 2 * 5.96e-8);
    float sp[NB_VL] = { -INFINITY, -1000.0f, -88.0f, 0.0f, 1.0f, 89.0f, 1000.0f, INFINITY,
                        -0.0f, 1e-30f, -1e-30f, 0.5f, -0.5f, 2.0f, -2.0f, 10.0f };
    nb_v16 e = nb_v_exp(nb_v_load(sp));
    assert_true(e[0] == 0.0f && e[1] == 0.0f && e[2] >= 0.0f && e[2] < 1e-37f);
    assert_true(e[3] == 1.0f && e[8] == 1.0f && e[9] == 1.0f && e[10] == 1.0f);
    assert_true(fabs(e[4] - M_E) < 3e-7);
    assert_true(isinf(e[5]) && isinf(e[6]) && isinf(e[7]));
    /* NaN propagates (a diverging run must see NaN, not a clamped number) */
    sp[3] = NAN;
    e = nb_v_exp(nb_v_load(sp));
    assert_true(isnan(e[3]) && e[4] > 2.7f);
    assert_true(isnan(nb_v_tanh(nb_v_load(sp))[3]));
}

static void test_tanh(void **state)
{
    (void)state;
    double worst = 0;
    for (int i = 0; i <= 40000; i += NB_VL) {
        float xs[NB_VL];
        for (int l = 0; l < NB_VL; l++)
            xs[l] = -20.0f + 40.0f * (float)(i + l) / 40000.0f;
        nb_v16 y = nb_v_tanh(nb_v_load(xs));
        nb_v16 yn = nb_v_tanh(-nb_v_load(xs));
        for (int l = 0; l < NB_VL; l++) {
            double e = fabs((double)y[l] - tanh((double)xs[l]));
            worst = e > worst ? e : worst;
            assert_true(y[l] == -yn[l]);
        }
    }
    printf("# tanh max abs err %.3g\n", worst);
    assert_true(worst < 2e-7);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exp),
        cmocka_unit_test(test_tanh),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
