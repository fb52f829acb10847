/* test_replan.c - the re-planning policy: K consecutive drifting steps
 * trigger, noise and alternating drift do not, cooldown, and the counter. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>

#include "daemon/planner/replan.h"
#include "kernels/common.h"

static nb_replan_sample_t basis(void)
{
    nb_replan_sample_t b;
    memset(&b, 0, sizeof b);
    b.bandwidth[0][NB_DIR_FWD] = b.bandwidth[0][NB_DIR_BWD] = 12.5e6; /* 100 Mbit/s */
    b.compute[0] = b.compute[1] = 2.0;
    return b;
}

static void test_link_drop_triggers_after_k(void **state)
{
    (void)state;
    nb_replan_t r;
    nb_replan_cfg_t cfg = {0.2, 3, 0};
    nb_replan_sample_t b = basis();
    assert_int_equal(nb_replan_init(&r, &cfg, 2, &b), 0);
    nb_replan_sample_t o = b;
    /* Within the band: never. */
    for (int i = 0; i < 10; i++) {
        o.bandwidth[0][NB_DIR_FWD] = 12.5e6 * (i % 2 ? 1.15 : 0.85);
        assert_int_equal(nb_replan_observe(&r, &o), 0);
    }
    /* The link drops to 20 Mbit/s: fires on the third step, not before. */
    o = b;
    o.bandwidth[0][NB_DIR_FWD] = 2.5e6;
    assert_int_equal(nb_replan_observe(&r, &o), 0);
    assert_int_equal(nb_replan_observe(&r, &o), 0);
    assert_int_equal(nb_replan_observe(&r, &o), 1);
    assert_non_null(strstr(r.reason, "link 0-1 forward"));
    assert_non_null(strstr(r.reason, "-80%"));
    assert_non_null(strstr(r.reason, "20 Mbit/s"));
    b.bandwidth[0][NB_DIR_FWD] = 2.5e6;
    nb_replan_accept(&r, &b);
    assert_int_equal(r.replans, 1);
    /* The new basis matches: quiet again. */
    for (int i = 0; i < 5; i++)
        assert_int_equal(nb_replan_observe(&r, &o), 0);
}

static void test_hysteresis(void **state)
{
    (void)state;
    nb_replan_t r;
    nb_replan_cfg_t cfg = {0.2, 3, 0};
    nb_replan_sample_t b = basis();
    assert_int_equal(nb_replan_init(&r, &cfg, 2, &b), 0);
    nb_replan_sample_t lo = b, hi = b, ok = b;
    lo.compute[1] = 3.0; /* +50% */
    hi.compute[1] = 1.0; /* -50% */
    /* Two slow, one normal, two slow: the streak restarts. */
    assert_int_equal(nb_replan_observe(&r, &lo), 0);
    assert_int_equal(nb_replan_observe(&r, &lo), 0);
    assert_int_equal(nb_replan_observe(&r, &ok), 0);
    assert_int_equal(nb_replan_observe(&r, &lo), 0);
    assert_int_equal(nb_replan_observe(&r, &lo), 0);
    /* Flipping side restarts it too. */
    assert_int_equal(nb_replan_observe(&r, &hi), 0);
    assert_int_equal(nb_replan_observe(&r, &lo), 0);
    assert_int_equal(nb_replan_observe(&r, &lo), 0);
    assert_int_equal(nb_replan_observe(&r, &lo), 1);
    assert_non_null(strstr(r.reason, "stage 1 compute"));
    /* A step without a measurement (0) neither breaks nor extends a streak. */
    nb_replan_t q;
    assert_int_equal(nb_replan_init(&q, &cfg, 2, &b), 0);
    nb_replan_sample_t none;
    memset(&none, 0, sizeof none);
    assert_int_equal(nb_replan_observe(&q, &lo), 0);
    assert_int_equal(nb_replan_observe(&q, &none), 0);
    assert_int_equal(nb_replan_observe(&q, &lo), 0);
    assert_int_equal(nb_replan_observe(&q, &lo), 1);
}

static void test_cooldown_and_bad_cfg(void **state)
{
    (void)state;
    nb_replan_t r;
    nb_replan_cfg_t cfg = {0.1, 1, 2};
    nb_replan_sample_t b = basis(), o = basis();
    assert_int_equal(nb_replan_init(&r, &cfg, 2, &b), 0);
    o.bandwidth[0][NB_DIR_BWD] = 50e6; /* faster link: also a reason */
    assert_int_equal(nb_replan_observe(&r, &o), 1);
    assert_non_null(strstr(r.reason, "backward"));
    nb_replan_accept(&r, &b); /* (pretend the new plan kept the old basis) */
    assert_int_equal(nb_replan_observe(&r, &o), 0);
    assert_int_equal(nb_replan_observe(&r, &o), 0);
    assert_int_equal(nb_replan_observe(&r, &o), 1);
    nb_replan_cfg_t bad = {0, 3, 0};
    assert_int_equal(nb_replan_init(&r, &bad, 2, &b), NB_EINVAL);
    bad = (nb_replan_cfg_t){0.2, 0, 0};
    assert_int_equal(nb_replan_init(&r, &bad, 2, &b), NB_EINVAL);
    bad = (nb_replan_cfg_t){0.2, 2, -1};
    assert_int_equal(nb_replan_init(&r, &bad, 2, &b), NB_EINVAL);
    assert_int_equal(nb_replan_init(&r, &cfg, 0, &b), NB_EINVAL);
}

/* The basis of a chosen plan, then a link that drops to a fifth: the policy
 * fires after K steps and the new search predicts a slower step. */
static void test_basis_from_plan(void **state)
{
    (void)state;
    nb_cost_t c;
    memset(&c, 0, sizeof c);
    c.p = 2;
    for (int s = 0; s < 2; s++) {
        c.stage[s].fwd_layer = (nb_fit_t){0.001, 0.002};
        c.stage[s].bwd_layer = (nb_fit_t){0.002, 0.004};
    }
    for (int d = 0; d < 2; d++)
        c.link[0].dir[d] = (nb_cost_dir_t){0.02, 12.5e6, 0.001};
    c.ncodecs = 1;
    c.codec[0] = (nb_cost_codec_t){"fp32", 1, 0, 0, 0};
    nb_plan_req_t req;
    memset(&req, 0, sizeof req);
    req.p = 2;
    assert_int_equal(nb_cost_model_gpt(4, 256, 4, 128, 1000, 1, 16, &req.model), 0);
    nb_plan_result_t r;
    char err[256];
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
    nb_plan_cand_t old = r.cand[0];
    nb_plan_result_free(&r);
    nb_replan_sample_t b;
    assert_int_equal(nb_replan_basis_from_plan(&c, &req.model, &old, &b), 0);
    double n = old.mb_size;
    double want0 =
        old.m * (old.layers[0] * (0.001 + 0.002 * n) + old.layers[0] * (0.002 + 0.004 * n));
    assert_true(fabs(b.compute[0] - want0) < 1e-12);
    assert_true(b.bandwidth[0][NB_DIR_FWD] == 12.5e6);

    nb_replan_t pol;
    nb_replan_cfg_t cfg = {0.2, 3, 2};
    assert_int_equal(nb_replan_init(&pol, &cfg, 2, &b), 0);
    nb_replan_sample_t o = b;
    o.bandwidth[0][NB_DIR_BWD] = 2.5e6;
    int fired = 0, steps = 0;
    while (!fired && steps < 10) {
        fired = nb_replan_observe(&pol, &o);
        steps++;
    }
    assert_int_equal(steps, 3);
    /* The coordinator folds the observation into its cost model and plans. */
    for (int i = 0; i < 3; i++)
        assert_int_equal(nb_cost_observe_link(&c, 0, NB_DIR_BWD, 2.5e6, 1.0 + 0.021, 1.0), 0);
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
    assert_true(r.cand[0].step_time > old.step_time);
    nb_replan_sample_t nb;
    assert_int_equal(nb_replan_basis_from_plan(&c, &req.model, &r.cand[0], &nb), 0);
    nb_replan_accept(&pol, &nb);
    assert_int_equal(pol.replans, 1);
    assert_true(fabs(nb.bandwidth[0][NB_DIR_BWD] - 2.5e6) < 1);
    nb_plan_result_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_link_drop_triggers_after_k),
        cmocka_unit_test(test_hysteresis),
        cmocka_unit_test(test_cooldown_and_bad_cfg),
        cmocka_unit_test(test_basis_from_plan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
