/* test_electra_model.c - the planner's model of the ELECTRA topology
 * (docs/planner.md, "ELECTRA topology"), against cases computed by hand:
 * the discriminator, a generator, a link or the credit window bounds the
 * step; the window hides a transfer and its latency while the round trip
 * fits in W steps; bad jobs are refused with the field named. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>

#include "daemon/planner/electra_model.h"
#include "kernels/common.h"

#define EPS 1e-12

/* Two generators of 5 sequences of 100 one-byte tokens each:
 *   generator: 5 x 2e9 FLOPs at 1e12 FLOP/s on 1 device = 0.01 s
 *   discriminator: 10 sequences on 2 devices, shard 5 x 1e10 / 1e12 =
 *     0.05 s, plus the all-reduce 2 (2-1)/2 x 1e8 / 1e10 = 0.01 s: 0.06 s
 *   a batch: 28 + 500 + ceil(500/8) = 591 bytes; links at 591 / 0.005
 *     bytes/s (0.005 s a batch), 1 ms one way
 *   window 2: cycle (0.06 + 0.01 + 0.005 + 0.002) / 2 = 0.0385 s */
static void base(nb_em_job_t *j)
{
    memset(j, 0, sizeof *j);
    j->n_gen = 2;
    j->seq_len = 100;
    j->id_width = 1;
    j->window = 2;
    j->disc = (nb_em_compute_t){2, 10, 1e10, 1e12, 0, 1e8, 1e10};
    for (int g = 0; g < 2; g++) {
        j->gen[g] = (nb_em_compute_t){1, 5, 2e9, 1e12, 0, 0, 0};
        j->link[g] = (nb_em_link_t){0.001, 591 / 0.005};
    }
}

static nb_em_result_t predict(const nb_em_job_t *j)
{
    nb_em_result_t r;
    char err[128] = "";
    int rc = nb_em_predict(j, &r, err, sizeof err);
    if (rc != 0)
        fail_msg("nb_em_predict: %s", err);
    return r;
}

static void test_parts(void **state)
{
    (void)state;
    nb_em_job_t j;
    base(&j);
    assert_true(fabs(nb_em_wire_bytes(5, 100, 1) - 591) < EPS);
    assert_true(fabs(nb_em_wire_bytes(128, 512, 2) - (28 + 131072 + 8192)) < EPS);
    assert_true(fabs(nb_em_compute_time(&j.gen[0]) - 0.01) < EPS);
    assert_true(fabs(nb_em_compute_time(&j.disc) - 0.06) < EPS);
    /* one device: no all-reduce; an uneven split: the largest shard */
    nb_em_compute_t c = {1, 10, 1e10, 1e12, 0.002, 1e8, 1e10};
    assert_true(fabs(nb_em_compute_time(&c) - 0.102) < EPS);
    c.devices = 3; /* shard 4: 0.04 + 0.002 + 2 (2/3) 1e8 / 1e10 */
    assert_true(fabs(nb_em_compute_time(&c) - (0.042 + 4.0 / 3 * 0.01)) < EPS);
}

static void test_disc_bound(void **state)
{
    (void)state;
    nb_em_job_t j;
    base(&j);
    nb_em_result_t r = predict(&j);
    assert_int_equal(r.bound, NB_EM_BOUND_DISC);
    assert_int_equal(r.bound_gen, -1);
    assert_true(fabs(r.step - 0.06) < EPS);
    assert_true(fabs(r.t_xfer[1] - 0.005) < EPS);
    assert_true(fabs(r.t_cycle[0] - 0.0385) < EPS);
    assert_true(fabs(r.tokens_per_s - 1000 / 0.06) < 1e-6);
    assert_string_equal(nb_em_bound_name(r.bound), "disc");
}

static void test_gen_bound(void **state)
{
    (void)state;
    nb_em_job_t j;
    base(&j);
    j.gen[1].flops_per_seq = 1.5e10; /* 5 x 1.5e10 / 1e12 = 0.075 s; cycle (0.06+0.075+0.007)/2 = 0.071 */
    nb_em_result_t r = predict(&j);
    assert_int_equal(r.bound, NB_EM_BOUND_GEN);
    assert_int_equal(r.bound_gen, 1);
    assert_true(fabs(r.step - 0.075) < EPS);
    /* two devices halve it (5 sequences: shard 3) and the discriminator binds again */
    j.gen[1].devices = 2;
    j.gen[1].reduce_bw = 1e10;
    r = predict(&j);
    assert_true(fabs(r.t_gen[1] - 0.045) < EPS);
    assert_int_equal(r.bound, NB_EM_BOUND_DISC);
    assert_true(fabs(r.step - 0.06) < EPS);
}

static void test_link_bound(void **state)
{
    (void)state;
    nb_em_job_t j;
    base(&j);
    j.link[0].bandwidth = 591 / 0.1; /* 0.1 s a batch; cycle (0.06+0.01+0.1+0.002)/2 = 0.086 */
    nb_em_result_t r = predict(&j);
    assert_int_equal(r.bound, NB_EM_BOUND_LINK);
    assert_int_equal(r.bound_gen, 0);
    assert_true(fabs(r.step - 0.1) < EPS);
    /* two-byte IDs double the ID bytes: 28 + 1000 + 63 = 1091 bytes */
    j.id_width = 2;
    r = predict(&j);
    assert_true(fabs(r.batch_bytes[0] - 1091) < EPS);
    assert_true(fabs(r.step - 1091 / (591 / 0.1)) < EPS);
}

static void test_window(void **state)
{
    (void)state;
    nb_em_job_t j;
    base(&j);
    /* 0.02 s of transfer and 0.01 s each way: the round trip
     * 0.06 + 0.01 + 0.02 + 0.02 = 0.11 s fits in 2 steps of 0.06 s, so the
     * window hides it: the step is the discriminator's, as with no link */
    j.link[1] = (nb_em_link_t){0.01, 591 / 0.02};
    nb_em_result_t r = predict(&j);
    assert_int_equal(r.bound, NB_EM_BOUND_DISC);
    assert_true(fabs(r.step - 0.06) < EPS);
    assert_true(fabs(r.t_cycle[1] - 0.055) < EPS);
    /* W = 1 hides nothing: the step is the whole round trip */
    j.window = 1;
    r = predict(&j);
    assert_int_equal(r.bound, NB_EM_BOUND_WINDOW);
    assert_int_equal(r.bound_gen, 1);
    assert_true(fabs(r.step - 0.11) < EPS);
    /* W = 2 with 50 ms one way: (0.06 + 0.01 + 0.02 + 0.1) / 2 = 0.095 s */
    j.window = 2;
    j.link[1].latency = 0.05;
    r = predict(&j);
    assert_int_equal(r.bound, NB_EM_BOUND_WINDOW);
    assert_true(fabs(r.step - 0.095) < EPS);
    /* a wider window hides it again */
    j.window = 4;
    r = predict(&j);
    assert_int_equal(r.bound, NB_EM_BOUND_DISC);
}

static void test_refused(void **state)
{
    (void)state;
    nb_em_job_t j;
    nb_em_result_t r;
    char err[128];
    base(&j);
    j.disc.seqs = 11;
    assert_int_equal(nb_em_predict(&j, &r, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "discriminator"));
    base(&j);
    j.gen[1].device_flops = 0;
    assert_int_equal(nb_em_predict(&j, &r, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "generator 1"));
    base(&j);
    j.link[0].bandwidth = 0;
    assert_int_equal(nb_em_predict(&j, &r, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "generator 0"));
    base(&j);
    j.id_width = 3;
    assert_int_equal(nb_em_predict(&j, &r, err, sizeof err), NB_EINVAL);
    base(&j);
    j.n_gen = NB_EM_MAX_GEN + 1;
    assert_int_equal(nb_em_predict(&j, &r, err, sizeof err), NB_EINVAL);
    assert_true(nb_em_compute_time(&(nb_em_compute_t){0, 1, 1, 1, 0, 0, 0}) < 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parts),      cmocka_unit_test(test_disc_bound), cmocka_unit_test(test_gen_bound),
        cmocka_unit_test(test_link_bound), cmocka_unit_test(test_window),     cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
