/* test_replan.c - the re-planning policy: K consecutive drifting steps
 * trigger, noise and alternating drift do not, cooldown, and the counter. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_link_drop_triggers_after_k),
        cmocka_unit_test(test_hysteresis),
        cmocka_unit_test(test_cooldown_and_bad_cfg),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
