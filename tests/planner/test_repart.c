/* test_repart.c - layer re-partitioning: a stage's measured time split into
 * per-block and fixed work, the best split of the running plan from
 * measured per-block times (checked against every contiguous split), no
 * move when the gain is under the threshold or the better split does not
 * fit in memory, and the hysteresis (k steps of the same split, cooldown). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "daemon/planner/repart.h"
#include "kernels/common.h"

static const nb_sched_spec_t GPIPE = {NB_SCHED_GPIPE, 0};

static nb_plan_req_t request(int p, int layers)
{
    nb_plan_req_t r;
    memset(&r, 0, sizeof r);
    r.p = p;
    r.model = (nb_cost_model_t){
        .n_layers = layers,
        .params_per_layer = 1e6,
        .embed_params = 4e6,
        .head_params = 1e3,
        .state_bytes_per_param = 16,
        .act_bytes_per_sample_layer = 1e5,
        .boundary_bytes_per_sample = 1e4,
        .global_batch = 8,
    };
    return r;
}

/* p stages whose blocks take block_s[s] per sample (forward; backward
 * twice that), fast links. */
static void world(nb_cost_t *c, int p, const double *block_s)
{
    memset(c, 0, sizeof *c);
    c->p = p;
    for (int s = 0; s < p; s++) {
        snprintf(c->stage[s].name, sizeof c->stage[s].name, "c%d", s);
        c->stage[s].fwd_layer = (nb_fit_t){0, block_s[s]};
        c->stage[s].bwd_layer = (nb_fit_t){0, 2 * block_s[s]};
    }
    for (int s = 0; s + 1 < p; s++)
        for (int d = 0; d < 2; d++)
            c->link[s].dir[d] = (nb_cost_dir_t){1e-4, 1e10, 0};
    c->ncodecs = 1;
    c->codec[0] = (nb_cost_codec_t){"fp32", 1.0, 0, 0, 0};
}

/* The fastest split by evaluating every contiguous one (two stages). */
static double exhaustive2(const nb_cost_t *c, const nb_plan_req_t *r, int m, int *best_l0)
{
    double best = INFINITY;
    for (int l0 = 1; l0 < r->model.n_layers; l0++) {
        int lay[2] = {l0, r->model.n_layers - l0};
        nb_plan_cand_t cand;
        if (nb_plan_evaluate(c, &r->model, m, &GPIPE, "fp32", "fp32", lay, &cand, NULL, 0) == 0 &&
            cand.step_time < best) {
            best = cand.step_time;
            *best_l0 = l0;
        }
    }
    return best;
}

/* A measured stage time spreads over its blocks and its head, by the
 * head's block equivalent; the head of a tiny vocabulary model weighs
 * about a block, GPT-2 small's about 5. */
static void test_fit_stage(void **state)
{
    (void)state;
    nb_fit_t t = {0.010, 0.030}, per, fix;
    assert_int_equal(nb_repart_fit_stage(&t, 2, 1.0, &per, &fix), 0);
    assert_true(fabs(per.a - 0.010 / 3) < 1e-12 && fabs(per.b - 0.010) < 1e-12);
    assert_true(fabs(fix.b - 0.010) < 1e-12);
    assert_int_equal(nb_repart_fit_stage(&t, 4, 0.0, &per, &fix), 0);
    assert_true(fabs(per.b - 0.0075) < 1e-12 && fix.a == 0 && fix.b == 0);
    assert_int_equal(nb_repart_fit_stage(&t, 0, 0.0, &per, &fix), NB_EINVAL);
    assert_int_equal(nb_repart_fit_stage(&t, -1, 2.0, &per, &fix), NB_EINVAL);
    double tiny = nb_repart_head_blocks(32, 64, 256, 16);
    assert_true(tiny > 0.9 && tiny < 1.0);
    double gpt2 = nb_repart_head_blocks(768, 3072, 50257, 1024);
    assert_true(gpt2 > 4.0 && gpt2 < 6.0);
}

/* Measured per-layer times, one cluster 3x slower per block: from an even
 * split of 8 blocks the best split gives the fast cluster more, equals the
 * exhaustive optimum, and its gain is the predicted step ratio. */
static void test_choose_from_measured(void **state)
{
    (void)state;
    const double block[2] = {0.003, 0.001}; /* stage 0 is the slow one */
    nb_cost_t c;
    world(&c, 2, block);
    nb_plan_req_t r = request(2, 8);
    int cur[2] = {4, 4};
    nb_repart_choice_t ch;
    char err[256] = "";
    assert_int_equal(nb_repart_choose(&c, &r, 4, &GPIPE, "fp32", "fp32", cur, &ch, err, sizeof err), 0);
    int best_l0 = 0;
    double best = exhaustive2(&c, &r, 4, &best_l0);
    assert_true(ch.changed);
    assert_int_equal(ch.layers[0], best_l0);
    assert_int_equal(ch.layers[0] + ch.layers[1], 8);
    assert_true(ch.layers[0] < 4); /* the fast cluster takes more blocks */
    assert_true(fabs(ch.best_s - best) < 1e-12);
    nb_plan_cand_t now;
    assert_int_equal(nb_plan_evaluate(&c, &r.model, 4, &GPIPE, "fp32", "fp32", cur, &now, NULL, 0), 0);
    assert_true(fabs(ch.cur_s - now.step_time) < 1e-12);
    assert_true(fabs(ch.gain - (1 - best / now.step_time)) < 1e-12);
    assert_true(ch.gain > 0.3);

    /* already on the best split: nothing to gain */
    int at_best[2] = {ch.layers[0], ch.layers[1]};
    assert_int_equal(nb_repart_choose(&c, &r, 4, &GPIPE, "fp32", "fp32", at_best, &ch, err, sizeof err), 0);
    assert_false(ch.changed);
    assert_true(ch.gain == 0);
}

/* Stages 15% apart in speed over 16 blocks: moving one block (8+8 ->
 * 7+9) is better, but by about 2%, under a 10% threshold, so the policy
 * never moves, however many steps; a 1% threshold takes it after k = 3. */
static void test_no_move_below_threshold(void **state)
{
    (void)state;
    const double block[2] = {0.00115, 0.001};
    nb_cost_t c;
    world(&c, 2, block);
    nb_plan_req_t r = request(2, 16);
    int cur[2] = {8, 8};
    nb_repart_choice_t ch;
    assert_int_equal(nb_repart_choose(&c, &r, 4, &GPIPE, "fp32", "fp32", cur, &ch, NULL, 0), 0);
    assert_true(ch.changed);
    assert_int_equal(ch.layers[0], 7);
    assert_true(ch.gain > 0.01 && ch.gain < 0.10);
    nb_repart_t pol;
    nb_repart_cfg_t cfg = {0.10, 3, 5};
    assert_int_equal(nb_repart_init(&pol, &cfg, 2), 0);
    assert_int_equal(nb_repart_measure(&pol, cur, ch.cur_s), 0);
    for (int step = 0; step < 50; step++)
        assert_int_equal(nb_repart_observe(&pol, step, &ch), 0);
    assert_int_equal(pol.moves, 0);
    cfg.min_gain = 0.01;
    assert_int_equal(nb_repart_init(&pol, &cfg, 2), 0);
    for (int step = 0; step < 10; step++) /* the current split has no measurement yet */
        assert_int_equal(nb_repart_observe(&pol, step, &ch), 0);
    assert_int_equal(nb_repart_init(&pol, &cfg, 2), 0);
    assert_int_equal(nb_repart_measure(&pol, cur, ch.cur_s), 0);
    assert_int_equal(nb_repart_observe(&pol, 0, &ch), 0);
    assert_int_equal(nb_repart_observe(&pol, 1, &ch), 0);
    assert_int_equal(nb_repart_observe(&pol, 2, &ch), 1);
}

/* The better split would put more blocks on stage 1 than its memory
 * allows: the choice keeps within the limit, and with a limit that only
 * the current split meets there is no move. */
static void test_memory_check(void **state)
{
    (void)state;
    const double block[2] = {0.003, 0.001};
    nb_cost_t c;
    world(&c, 2, block);
    nb_plan_req_t r = request(2, 8);
    int cur[2] = {4, 4};
    /* stage 1 fits at most 4 blocks (state 16 MB per block + stash) */
    nb_plan_cand_t four;
    assert_int_equal(nb_plan_evaluate(&c, &r.model, 4, &GPIPE, "fp32", "fp32", cur, &four, NULL, 0), 0);
    c.stage[1].mem_limit = four.mem[1] * 1.01;
    nb_repart_choice_t ch;
    assert_int_equal(nb_repart_choose(&c, &r, 4, &GPIPE, "fp32", "fp32", cur, &ch, NULL, 0), 0);
    assert_false(ch.changed);
    assert_true(ch.gain == 0);
    /* room for 5 blocks: the choice takes 5, not the unconstrained best */
    int five[2] = {3, 5};
    nb_plan_cand_t f5;
    c.stage[1].mem_limit = 0;
    assert_int_equal(nb_plan_evaluate(&c, &r.model, 4, &GPIPE, "fp32", "fp32", five, &f5, NULL, 0), 0);
    c.stage[1].mem_limit = f5.mem[1] * 1.01;
    assert_int_equal(nb_repart_choose(&c, &r, 4, &GPIPE, "fp32", "fp32", cur, &ch, NULL, 0), 0);
    assert_true(ch.changed);
    assert_int_equal(ch.layers[1], 5);
}

/* Hysteresis: k steps in a row with a split min_gain better move once, to
 * the newest best; a step under the threshold restarts the count; after a
 * move the cooldown holds. */
static void test_hysteresis(void **state)
{
    (void)state;
    nb_repart_t pol;
    nb_repart_cfg_t cfg = {0.10, 3, 10};
    assert_int_equal(nb_repart_init(&pol, &cfg, 2), 0);
    const int even[2] = {4, 4};
    assert_int_equal(nb_repart_measure(&pol, even, 1.0), 0);
    nb_repart_choice_t a = {.cur_s = 1.0, .best_s = 0.8, .gain = 0.2, .layers = {3, 5}, .changed = 1};
    nb_repart_choice_t b = a;
    b.layers[0] = 2;
    b.layers[1] = 6;
    nb_repart_choice_t small = a;
    small.gain = 0.05;
    nb_repart_choice_t none = a;
    none.changed = 0;
    none.gain = 0;
    assert_int_equal(nb_repart_observe(&pol, 1, &a), 0);
    assert_int_equal(nb_repart_observe(&pol, 2, &a), 0);
    assert_int_equal(nb_repart_observe(&pol, 3, &small), 0); /* under the threshold: restarts */
    assert_int_equal(nb_repart_observe(&pol, 4, &a), 0);
    assert_int_equal(nb_repart_observe(&pol, 5, &none), 0); /* already best: restarts */
    assert_int_equal(nb_repart_observe(&pol, 6, &a), 0);
    assert_int_equal(nb_repart_observe(&pol, 7, &b), 0); /* another better split: the count goes on */
    assert_int_equal(nb_repart_observe(&pol, 8, &a), 1); /* and the move takes the newest */
    assert_int_equal(pol.moves, 1);
    assert_int_equal(pol.layers[0], 3);
    /* cooldown: 10 steps from step 8 */
    for (int s = 9; s < 18; s++)
        assert_int_equal(nb_repart_observe(&pol, s, &b), 0);
    assert_int_equal(nb_repart_observe(&pol, 18, &b), 1);
    assert_int_equal(nb_repart_measure(&pol, even, NAN), NB_EINVAL);
    nb_repart_cfg_t bad = {0, 3, 0};
    assert_int_equal(nb_repart_init(&pol, &bad, 2), NB_EINVAL);
    bad = (nb_repart_cfg_t){0.1, 0, 0};
    assert_int_equal(nb_repart_init(&pol, &bad, 2), NB_EINVAL);
}

/* The choices of a model that believes the other extreme is always
 * better (the flapping the benchmark saw: 1,11 <-> 11,1), as steps. */
static nb_repart_choice_t towards(int a, int b)
{
    nb_repart_choice_t c = {.cur_s = 1.0, .best_s = 0.6, .gain = 0.4, .layers = {a, b}, .changed = 1};
    return c;
}

/* runs `steps` closed steps on split cur with measured step_s (< 0: not
 * yet measured) and the choice c; returns the first non-STAY answer (and
 * its step in *at), or NB_REPART_STAY */
static int run_steps(nb_repart_t *pol, int64_t *step, int steps, const int *cur, double step_s,
                     const nb_repart_choice_t *c)
{
    for (int i = 0; i < steps; i++, (*step)++) {
        assert_int_equal(nb_repart_measure(pol, cur, step_s), 0);
        int d = nb_repart_observe(pol, *step, c);
        if (d != NB_REPART_STAY) {
            (*step)++;
            return d;
        }
    }
    return NB_REPART_STAY;
}

/* A move that measures worse than the split it left by more than
 * min_gain is undone at once (past the cooldown), and the policy moves no
 * more for the job, whatever the model predicts. */
static void test_worse_move_undone(void **state)
{
    (void)state;
    nb_repart_t pol;
    nb_repart_cfg_t cfg = {0.10, 3, 20};
    assert_int_equal(nb_repart_init(&pol, &cfg, 2), 0);
    const int even[2] = {6, 6}, lop[2] = {1, 11};
    nb_repart_choice_t to_lop = towards(1, 11), to_even = towards(6, 6);
    int64_t step = 0;
    assert_int_equal(run_steps(&pol, &step, 10, even, 1.0, &to_lop), NB_REPART_MOVE);
    assert_int_equal(pol.layers[0], 1);
    /* on 1,11: not measured yet for a few steps, then 30% slower */
    assert_int_equal(run_steps(&pol, &step, 4, lop, -1, &to_even), NB_REPART_STAY);
    assert_int_equal(run_steps(&pol, &step, 1, lop, 1.3, &to_even), NB_REPART_BACK);
    assert_int_equal(pol.layers[0], 6);
    assert_int_equal(pol.layers[1], 6);
    assert_true(pol.stopped);
    assert_int_equal(pol.moves, 2);
    /* stopped: no further move, even with a big predicted gain */
    assert_int_equal(run_steps(&pol, &step, 200, even, 1.0, &to_lop), NB_REPART_STAY);
    assert_int_equal(pol.moves, 2);
    /* slower by less than min_gain: the move stays */
    assert_int_equal(nb_repart_init(&pol, &cfg, 2), 0);
    step = 0;
    assert_int_equal(run_steps(&pol, &step, 10, even, 1.0, &to_lop), NB_REPART_MOVE);
    assert_int_equal(run_steps(&pol, &step, 30, lop, 1.05, &to_lop), NB_REPART_STAY);
    assert_false(pol.stopped);
    assert_int_equal(pol.moves, 1);
}

/* A split measured slower than the current one is never chosen again,
 * however long the model keeps predicting it faster; an unmeasured one
 * still is. */
static void test_measured_slower_never_again(void **state)
{
    (void)state;
    nb_repart_t pol;
    nb_repart_cfg_t cfg = {0.10, 3, 5};
    assert_int_equal(nb_repart_init(&pol, &cfg, 2), 0);
    const int even[2] = {6, 6}, lop[2] = {1, 11}, other[2] = {11, 1};
    nb_repart_choice_t to_lop = towards(1, 11), to_even = towards(6, 6), to_other = towards(11, 1);
    int64_t step = 0;
    /* 1,11 was run (1.08 s: slower, but within min_gain, so no undo) */
    assert_int_equal(run_steps(&pol, &step, 10, lop, 1.08, &to_even), NB_REPART_MOVE);
    assert_int_equal(run_steps(&pol, &step, 10, even, 1.0, &to_lop), NB_REPART_STAY);
    assert_true(nb_repart_measured(&pol, lop) == 1.08);
    assert_int_equal(run_steps(&pol, &step, 300, even, 1.0, &to_lop), NB_REPART_STAY);
    assert_int_equal(pol.moves, 1);
    assert_false(pol.stopped);
    /* 11,1 has no measurement: the model's word stands */
    assert_int_equal(run_steps(&pol, &step, 10, even, 1.0, &to_other), NB_REPART_MOVE);
    assert_int_equal(pol.layers[0], 11);
    (void)other;
}

/* A move that measures better stays: no undo, and the split it left
 * (now measured slower) is not gone back to. */
static void test_better_move_stays(void **state)
{
    (void)state;
    nb_repart_t pol;
    nb_repart_cfg_t cfg = {0.10, 3, 5};
    assert_int_equal(nb_repart_init(&pol, &cfg, 2), 0);
    const int lop[2] = {11, 1}, even[2] = {6, 6};
    nb_repart_choice_t to_even = towards(6, 6), to_lop = towards(11, 1);
    int64_t step = 0;
    assert_int_equal(run_steps(&pol, &step, 10, lop, 1.0, &to_even), NB_REPART_MOVE);
    assert_int_equal(run_steps(&pol, &step, 3, even, -1, &to_lop), NB_REPART_STAY);
    assert_int_equal(run_steps(&pol, &step, 300, even, 0.7, &to_lop), NB_REPART_STAY);
    assert_int_equal(pol.moves, 1);
    assert_false(pol.stopped);
    assert_false(pol.on_trial);
    assert_true(nb_repart_measured(&pol, even) == 0.7);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fit_stage),
        cmocka_unit_test(test_choose_from_measured),
        cmocka_unit_test(test_no_move_below_threshold),
        cmocka_unit_test(test_memory_check),
        cmocka_unit_test(test_hysteresis),
        cmocka_unit_test(test_worse_move_undone),
        cmocka_unit_test(test_measured_slower_never_again),
        cmocka_unit_test(test_better_move_stays),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
