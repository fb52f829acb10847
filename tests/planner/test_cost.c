/* test_cost.c - compute fits (least squares, EMA refinement), transfer and
 * memory arithmetic of the planner's cost model. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>

#include "daemon/planner/cost.h"
#include "kernels/common.h"

#define assert_close(a, b, eps)                                                    \
    do {                                                                           \
        double a_ = (a), b_ = (b);                                                 \
        if (!(fabs(a_ - b_) <= (eps)))                                             \
            fail_msg("%s = %.12g, want %.12g", #a, a_, b_);                        \
    } while (0)

static void test_least_squares(void **state)
{
    (void)state;
    nb_fit_t f;
    double n[] = {1, 2, 4, 8}, t[4];
    for (int i = 0; i < 4; i++)
        t[i] = 0.003 + 0.0015 * n[i];
    assert_int_equal(nb_fit_least_squares(n, t, 4, &f), 0);
    assert_close(f.a, 0.003, 1e-12);
    assert_close(f.b, 0.0015, 1e-12);
    assert_close(nb_fit_eval(&f, 16), 0.003 + 0.024, 1e-12);
    /* One size: all per sample. */
    assert_int_equal(nb_fit_least_squares(n, t, 1, &f), 0);
    assert_close(f.a, 0, 0);
    assert_close(f.b, t[0], 1e-15);
    /* A negative intercept from noise is clamped: line through the origin. */
    double t2[] = {0.5, 2.0, 4.5, 8.0};
    assert_int_equal(nb_fit_least_squares(n, t2, 4, &f), 0);
    assert_true(f.a == 0 && f.b > 0);
    /* Falling times: a constant. */
    double t3[] = {4, 3, 2, 1};
    assert_int_equal(nb_fit_least_squares(n, t3, 4, &f), 0);
    assert_close(f.b, 0, 0);
    assert_close(f.a, 2.5, 1e-12);
    double bad[] = {1, NAN};
    assert_int_equal(nb_fit_least_squares(n, bad, 2, &f), NB_EINVAL);
    assert_int_equal(nb_fit_least_squares(n, t, 0, &f), NB_EINVAL);
}

static void test_ema(void **state)
{
    (void)state;
    nb_fit_t f = {0.01, 0.001};
    /* Reports say the stage is twice as slow: the fit converges there. */
    for (int i = 0; i < 60; i++)
        assert_int_equal(nb_fit_ema_update(&f, 10, 2 * (0.01 + 0.01), 0.2), 0);
    assert_close(nb_fit_eval(&f, 10), 0.04, 1e-6);
    assert_close(f.a / f.b, 10, 1e-9); /* shape kept */
    /* One step with alpha 0.5 moves half way. */
    nb_fit_t g = {0, 1};
    assert_int_equal(nb_fit_ema_update(&g, 1, 3, 0.5), 0);
    assert_close(g.b, 2, 1e-12);
    assert_int_equal(nb_fit_ema_update(&g, 1, 3, 0), NB_EINVAL);
    assert_int_equal(nb_fit_ema_update(&g, 1, -1, 0.5), NB_EINVAL);
    nb_fit_t z = {0, 0};
    assert_int_equal(nb_fit_ema_update(&z, 1, 1, 0.5), NB_EINVAL);
}

static void test_link_and_memory(void **state)
{
    (void)state;
    nb_cost_t c;
    memset(&c, 0, sizeof c);
    c.p = 2;
    c.link[0].dir[NB_DIR_FWD] = (nb_cost_dir_t){0.03, 12.5e6, 0.001};
    c.ncodecs = 2;
    c.codec[0] = (nb_cost_codec_t){"fp32", 1.0, 0, 0, 0};
    c.codec[1] = (nb_cost_codec_t){"int8", 0.25, 1e-9, 1e-9, 2};
    const nb_cost_codec_t *i8 = nb_cost_codec_find(&c, "int8");
    assert_non_null(i8);
    assert_null(nb_cost_codec_find(&c, "fp8"));
    /* 1 MB raw over 100 Mbit/s in int8: 0.25 MB on the wire = 20 ms + 1 ms. */
    assert_close(nb_cost_xfer_busy(&c.link[0].dir[NB_DIR_FWD], i8, 1e6), 0.021, 1e-12);
    nb_cost_set_bandwidth_mbit(&c, 20);
    assert_close(c.link[0].dir[NB_DIR_FWD].bandwidth, 2.5e6, 1e-6);
    assert_close(c.link[0].dir[NB_DIR_BWD].bandwidth, 2.5e6, 1e-6);

    c.stage[1].fwd_layer = (nb_fit_t){0.001, 0.0002};
    c.stage[1].fwd_fixed = (nb_fit_t){0.002, 0.0001};
    assert_close(nb_cost_fwd(&c, 1, 3, 4), 0.002 + 0.0004 + 3 * (0.001 + 0.0008), 1e-12);

    nb_cost_model_t mdl = {.n_layers = 4,
                           .params_per_layer = 1000,
                           .embed_params = 500,
                           .head_params = 300,
                           .state_bytes_per_param = 16,
                           .act_bytes_per_sample_layer = 100,
                           .boundary_bytes_per_sample = 10,
                           .global_batch = 8};
    /* Stage 0 of 2: 2 blocks + embedding; 3 in flight of 4 samples. */
    assert_close(nb_cost_stage_mem(&mdl, 2, 0, 2, 3, 4), 2500 * 16 + 3 * 4 * (200 + 10), 1e-9);
    /* Single stage holds embedding and head. */
    assert_close(nb_cost_stage_mem(&mdl, 1, 0, 4, 1, 8), 4800 * 16 + 8 * (400 + 10), 1e-9);
}

static void test_observe(void **state)
{
    (void)state;
    nb_cost_t c;
    memset(&c, 0, sizeof c);
    c.p = 2;
    c.stage[0].fwd_layer = (nb_fit_t){0.001, 0.002};
    c.stage[0].fwd_fixed = (nb_fit_t){0.004, 0};
    c.stage[0].bwd_layer = (nb_fit_t){0.002, 0.004};
    c.stage[0].bwd_fixed = (nb_fit_t){0.008, 0};
    /* 4 blocks, n=2: predicted fwd 0.004 + 4*0.005 = 0.024; measured 0.036. */
    for (int i = 0; i < 80; i++)
        assert_int_equal(nb_cost_observe_stage(&c, 0, 4, 2, 0.036, 0, 0.25), 0);
    assert_close(nb_cost_fwd(&c, 0, 4, 2), 0.036, 1e-9);
    assert_close(nb_cost_bwd(&c, 0, 4, 2), 0.048, 1e-12); /* not measured: unchanged */
    assert_close(c.stage[0].fwd_fixed.a / c.stage[0].fwd_layer.a, 4, 1e-9);
    assert_int_equal(nb_cost_observe_stage(&c, 2, 4, 2, 1, 1, 0.5), NB_EINVAL);

    c.link[0].dir[NB_DIR_FWD] = (nb_cost_dir_t){0.03, 12.5e6, 0.001};
    /* 2.5 MB took 0.031 + 1.0 s: 2.5 MB/s (20 Mbit/s). alpha 1: taken as is. */
    assert_int_equal(nb_cost_observe_link(&c, 0, NB_DIR_FWD, 2.5e6, 1.031, 1.0), 0);
    assert_close(c.link[0].dir[NB_DIR_FWD].bandwidth, 2.5e6, 1e-3);
    assert_int_equal(nb_cost_observe_link(&c, 0, NB_DIR_FWD, 2.5e6, 1.031 + 1.0, 0.5), 0);
    assert_close(c.link[0].dir[NB_DIR_FWD].bandwidth, 0.5 * 2.5e6 + 0.5 * 1.25e6, 1e-3);
    /* A tiny message says nothing about bandwidth. */
    double before = c.link[0].dir[NB_DIR_FWD].bandwidth;
    assert_int_equal(nb_cost_observe_link(&c, 0, NB_DIR_FWD, 100, 0.0315, 0.5), 0);
    assert_close(c.link[0].dir[NB_DIR_FWD].bandwidth, before, 0);
    assert_int_equal(nb_cost_observe_link(&c, 1, NB_DIR_FWD, 100, 1, 0.5), NB_EINVAL);
}

static void test_gpt_shape(void **state)
{
    (void)state;
    nb_cost_model_t m;
    assert_int_equal(nb_cost_model_gpt(12, 768, 12, 1024, 50257, 1, 64, &m), 0);
    /* GPT-2 small: ~85 M in the blocks, ~39.4 M in the embeddings. */
    assert_close(m.params_per_layer * 12, 85.05e6, 0.01e6);
    assert_close(m.embed_params, 50257.0 * 768 + 1024.0 * 768, 0);
    assert_close(m.head_params, 0, 0);
    assert_close(m.boundary_bytes_per_sample, 4.0 * 1024 * 768, 0);
    /* 18 values of width h per token and two 12-head 1024x1024 score maps. */
    assert_close(m.act_bytes_per_sample_layer, 4.0 * (1024.0 * 18 * 768 + 2.0 * 12 * 1024 * 1024),
                 1e-6);
    assert_int_equal(nb_cost_model_gpt(12, 768, 12, 1024, 50257, 0, 64, &m), 0);
    assert_close(m.head_params, 50257.0 * 768, 0);
    assert_int_equal(nb_cost_model_gpt(0, 768, 12, 1024, 50257, 0, 64, &m), NB_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_least_squares),
        cmocka_unit_test(test_ema),
        cmocka_unit_test(test_link_and_memory),
        cmocka_unit_test(test_observe),
        cmocka_unit_test(test_gpt_shape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
