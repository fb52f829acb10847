/* test_sim.c - the step simulator against the closed forms of docs/planner.md
 * (to 1e-9) and against hand-worked event orders on p=2, m=2. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>

#include "daemon/planner/sim.h"
#include "kernels/common.h"

#define EPS 1e-9
#define assert_close(a, b, eps)                                                    \
    do {                                                                           \
        double a_ = (a), b_ = (b);                                                 \
        if (!(fabs(a_ - b_) <= (eps)))                                             \
            fail_msg("%s = %.12g, want %.12g", #a, a_, b_);                        \
    } while (0)

static nb_sim_input_t uniform(const char *sched, int p, int m, double tf, double tb, double xf,
                              double lf, double xb, double lb)
{
    nb_sim_input_t in;
    memset(&in, 0, sizeof in);
    in.p = p;
    in.m = m;
    assert_int_equal(nb_sched_parse(sched, &in.sched), 0);
    for (int s = 0; s < p; s++) {
        in.tf[s] = tf, in.tb[s] = tb;
        in.xf[s] = xf, in.lf[s] = lf, in.xb[s] = xb, in.lb[s] = lb;
    }
    return in;
}

static double run_T(const nb_sim_input_t *in, nb_sim_result_t *r)
{
    assert_int_equal(nb_sim_run(in, r, NULL, 0, NULL), 0);
    return r->step_time;
}

/* No communication: GPipe and 1F1B both take (m+p-1)(tf+tb), bubble
 * (p-1)/(m+p-1), for every m including m < p. */
static void test_uniform_no_comm(void **state)
{
    (void)state;
    const char *scheds[] = {"gpipe", "1f1b", "1f1b:1"};
    for (size_t k = 0; k < NB_ARRAY_LEN(scheds); k++)
        for (int p = 1; p <= 6; p++)
            for (int m = 1; m <= 16; m++) {
                double tf = 0.7, tb = 1.9;
                nb_sim_input_t in = uniform(scheds[k], p, m, tf, tb, 0, 0, 0, 0);
                nb_sim_result_t r;
                double T = run_T(&in, &r);
                assert_close(T, (m + p - 1) * (tf + tb), EPS);
                assert_close(r.bubble, (double)(p - 1) / (m + p - 1), EPS);
                assert_close(nb_sim_closed_gpipe(p, m, tf, tb, 0, 0, 0, 0), T, EPS);
                for (int s = 0; s < p; s++) {
                    assert_close(r.busy[s], m * (tf + tb), EPS);
                    assert_int_equal(r.peak_inflight[s],
                                     nb_sched_peak_inflight(&in.sched, p, m, s));
                }
            }
}

/* With communication, GPipe follows
 *   T = p(tf+tb) + (m-1)(max(tf,xf)+max(tb,xb)) + (p-1)(xf+lf+xb+lb),
 * both when the GPU sets the pace (x <= t) and when the link does (x > t). */
static void test_gpipe_with_comm(void **state)
{
    (void)state;
    const double links[][4] = {
        {0.1, 0.3, 0.1, 0.3},  /* x < t: fill and drain grow by tt per boundary */
        {0.5, 2.0, 0.2, 2.0},  /* long latency */
        {2.5, 0.4, 0.5, 0.1},  /* forward link slower than tf: it sets the pace */
        {3.0, 1.0, 4.0, 1.0},  /* both directions link-bound */
    };
    for (size_t i = 0; i < NB_ARRAY_LEN(links); i++)
        for (int p = 1; p <= 6; p++)
            for (int m = 1; m <= 16; m++) {
                double tf = 1.0, tb = 2.0;
                const double *L = links[i];
                nb_sim_input_t in = uniform("gpipe", p, m, tf, tb, L[0], L[1], L[2], L[3]);
                nb_sim_result_t r;
                double T = run_T(&in, &r);
                double want = nb_sim_closed_gpipe(p, m, tf, tb, L[0], L[1], L[2], L[3]);
                assert_close(T, want, EPS);
                assert_close(r.bubble, nb_sim_closed_bubble(m, tf, tb, want), EPS);
                if (p > 1)
                    assert_close(r.wire_busy[0][0], m * L[0], EPS);
            }
}

/* 1F1B with communication: stage 0 holds at most p micro-batches while one
 * round trip takes p(tf+tb) + 2(p-1)tt, so its steady period is
 * max(tf+tb, tf+tb + 2(p-1)tt/p). 1f1b:K with K >= 2tt/(tf+tb) keeps enough
 * in flight and matches GPipe's closed form exactly. */
static void test_1f1b_with_comm(void **state)
{
    (void)state;
    double tf = 1.0, tb = 2.0;
    const double tts[] = {0.25, 0.5, 1.5, 3.0, 7.0};
    for (int p = 2; p <= 6; p++)
        for (size_t t = 0; t < NB_ARRAY_LEN(tts); t++) {
            double tt = tts[t], x = fmin(tt / 2, tf), l = tt - x;
            double period = fmax(tf + tb, tf + tb + 2 * (p - 1) * tt / p);
            for (int m = 2 * p; m <= 3 * p; m++) {
                nb_sim_input_t in = uniform("1f1b", p, m, tf, tb, x, l, x, l);
                nb_sim_result_t r1, r2;
                double T1 = run_T(&in, &r1);
                in.m = m + p;
                double T2 = run_T(&in, &r2);
                assert_close((T2 - T1) / p, period, EPS);
                assert_true(T1 > nb_sim_closed_gpipe(p, m, tf, tb, x, l, x, l) + EPS);
            }
            int K = (int)ceil(2 * tt / (tf + tb) - 1e-12);
            char name[16];
            snprintf(name, sizeof name, "1f1b:%d", K);
            for (int m = 1; m <= 20; m++) {
                nb_sim_input_t in = uniform(name, p, m, tf, tb, x, l, x, l);
                nb_sim_result_t r;
                assert_close(run_T(&in, &r), nb_sim_closed_gpipe(p, m, tf, tb, x, l, x, l),
                                    EPS);
            }
        }
}

typedef struct {
    int kind; /* nb_sim_ev_kind_t */
    int where, mb;
    double start, end;
} want_ev_t;

static void check_events(const nb_sim_input_t *in, const want_ev_t *want, int n, double T)
{
    nb_sim_event_t ev[64];
    nb_sim_result_t r;
    int nev = 0;
    assert_int_equal(nb_sim_run(in, &r, ev, 64, &nev), 0);
    assert_int_equal(nev, n);
    for (int i = 0; i < n; i++) {
        if ((int)ev[i].kind != want[i].kind || ev[i].where != want[i].where || ev[i].mb != want[i].mb ||
            fabs(ev[i].start - want[i].start) > EPS || fabs(ev[i].end - want[i].end) > EPS)
            fail_msg("event %d: got kind %d at %d mb %d [%g, %g], want kind %d at %d mb %d "
                     "[%g, %g]",
                     i, ev[i].kind, ev[i].where, ev[i].mb, ev[i].start, ev[i].end, want[i].kind,
                     want[i].where, want[i].mb, want[i].start, want[i].end);
    }
    assert_close(r.step_time, T, EPS);
}

/* p=2, m=2, tf=1, tb=2, worked by hand in docs/planner.md. */
static void test_hand_worked_p2_m2(void **state)
{
    (void)state;
    enum { F = NB_SIM_EV_FWD, B = NB_SIM_EV_BWD, XF = NB_SIM_EV_XFER_F, XB = NB_SIM_EV_XFER_B };
    /* GPipe, no link time. */
    nb_sim_input_t in = uniform("gpipe", 2, 2, 1, 2, 0, 0, 0, 0);
    const want_ev_t g0[] = {
        {F, 0, 0, 0, 1}, {F, 0, 1, 1, 2}, {F, 1, 0, 1, 2}, {XF, 0, 0, 1, 1},
        {F, 1, 1, 2, 3}, {XF, 0, 1, 2, 2}, {B, 1, 0, 3, 5}, {B, 0, 0, 5, 7},
        {B, 1, 1, 5, 7}, {XB, 0, 0, 5, 5}, {B, 0, 1, 7, 9}, {XB, 0, 1, 7, 7},
    };
    check_events(&in, g0, 12, 9);
    /* 1F1B, no link time: stage 1 alternates, stage 0 waits for B0's gradient. */
    in = uniform("1f1b", 2, 2, 1, 2, 0, 0, 0, 0);
    const want_ev_t o0[] = {
        {F, 0, 0, 0, 1}, {F, 0, 1, 1, 2}, {F, 1, 0, 1, 2}, {XF, 0, 0, 1, 1},
        {B, 1, 0, 2, 4}, {XF, 0, 1, 2, 2}, {B, 0, 0, 4, 6}, {F, 1, 1, 4, 5},
        {XB, 0, 0, 4, 4}, {B, 1, 1, 5, 7}, {B, 0, 1, 7, 9}, {XB, 0, 1, 7, 7},
    };
    check_events(&in, o0, 12, 9);
    /* GPipe with links: forward busy 0.5 + latency 1, backward busy 0.25 +
     * latency 1. */
    in = uniform("gpipe", 2, 2, 1, 2, 0.5, 1, 0.25, 1);
    const want_ev_t g1[] = {
        {F, 0, 0, 0, 1}, {F, 0, 1, 1, 2}, {XF, 0, 0, 1, 2.5}, {XF, 0, 1, 2, 3.5},
        {F, 1, 0, 2.5, 3.5}, {F, 1, 1, 3.5, 4.5}, {B, 1, 0, 4.5, 6.5}, {B, 1, 1, 6.5, 8.5},
        {XB, 0, 0, 6.5, 7.75}, {B, 0, 0, 7.75, 9.75}, {XB, 0, 1, 8.5, 9.75},
        {B, 0, 1, 9.75, 11.75},
    };
    check_events(&in, g1, 12, 11.75);
    /* 1F1B with a slow forward wire (busy 1.5 > tf): the second activation
     * waits for the wire. */
    in = uniform("1f1b", 2, 2, 1, 2, 1.5, 1, 0.25, 1);
    const want_ev_t o1[] = {
        {F, 0, 0, 0, 1}, {F, 0, 1, 1, 2}, {XF, 0, 0, 1, 3.5}, {XF, 0, 1, 2.5, 5},
        {F, 1, 0, 3.5, 4.5}, {B, 1, 0, 4.5, 6.5}, {F, 1, 1, 6.5, 7.5}, {XB, 0, 0, 6.5, 7.75},
        {B, 1, 1, 7.5, 9.5}, {B, 0, 0, 7.75, 9.75}, {XB, 0, 1, 9.5, 10.75},
        {B, 0, 1, 10.75, 12.75},
    };
    check_events(&in, o1, 12, 12.75);
}

/* A slow middle stage sets the pace; bubble counts everyone's idle time. */
static void test_heterogeneous(void **state)
{
    (void)state;
    nb_sim_input_t in = uniform("1f1b", 3, 12, 1, 2, 0, 0, 0, 0);
    in.tf[1] = 2, in.tb[1] = 4;
    nb_sim_result_t r;
    double T = run_T(&in, &r);
    /* Lower bound: the slow stage's work plus the fill/drain of the others. */
    assert_true(T >= 12 * 6 + 1 + 2 - EPS);
    double busy = 12 * 3 + 12 * 6 + 12 * 3;
    assert_close(r.bubble, 1 - busy / (3 * T), EPS);
    assert_close(r.busy[1], 72, EPS);
}

/* Stages placed on one daemon share its compute unit. */
static void test_shared_compute(void **state)
{
    (void)state;
    /* Two stages on one daemon, no wire: the unit is never idle, so the step
     * is all the work, m (tf0+tb0+tf1+tb1). */
    const char *scheds[] = {"gpipe", "1f1b", "1f1b:2"};
    for (size_t k = 0; k < NB_ARRAY_LEN(scheds); k++)
        for (int m = 1; m <= 9; m++) {
            nb_sim_input_t in = uniform(scheds[k], 2, m, 1, 2, 0, 0, 0, 0);
            in.tf[1] = 0.5, in.tb[1] = 1.5;
            in.use_placement = 1;
            in.placement[0] = in.placement[1] = 0;
            nb_sim_result_t r;
            assert_close(run_T(&in, &r), m * 5.0, EPS);
            assert_close(r.bubble, 0.5, EPS); /* two stages, one unit */
        }
    /* U-shape p=3, stages 0 and 2 on daemon 0: never faster than separate
     * units, and the shared unit never runs two ops at once. */
    for (int m = 1; m <= 12; m++) {
        nb_sim_input_t in = uniform("1f1b", 3, m, 1, 2, 0.3, 0.5, 0.3, 0.5);
        in.tf[2] = in.tb[2] = 0.25; /* the head */
        nb_sim_result_t sep, sh;
        double Ts = run_T(&in, &sep);
        in.use_placement = 1;
        in.placement[0] = 0, in.placement[1] = 1, in.placement[2] = 0;
        nb_sim_event_t ev[512];
        int nev = 0;
        assert_int_equal(nb_sim_run(&in, &sh, ev, 512, &nev), 0);
        assert_true(sh.step_time >= Ts - EPS);
        double last_end = 0;
        for (int i = 0; i < nev; i++) {
            if (ev[i].kind > NB_SIM_EV_BWD || ev[i].where == 1)
                continue;
            assert_true(ev[i].start >= last_end - EPS); /* sorted by start */
            last_end = ev[i].end;
        }
        assert_close(sh.busy[0] + sh.busy[2], m * 3.5, EPS);
    }
}

static void test_bad_input(void **state)
{
    (void)state;
    nb_sim_result_t r;
    nb_sim_input_t in = uniform("gpipe", 2, 2, 1, 1, 0, 0, 0, 0);
    in.tf[1] = -1;
    assert_int_equal(nb_sim_run(&in, &r, NULL, 0, NULL), NB_EINVAL);
    in.tf[1] = NAN;
    assert_int_equal(nb_sim_run(&in, &r, NULL, 0, NULL), NB_EINVAL);
    in = uniform("gpipe", 2, 2, 1, 1, 0, INFINITY, 0, 0);
    assert_int_equal(nb_sim_run(&in, &r, NULL, 0, NULL), NB_EINVAL);
    in = uniform("gpipe", 2, 0, 1, 1, 0, 0, 0, 0);
    assert_int_equal(nb_sim_run(&in, &r, NULL, 0, NULL), NB_EINVAL);
    in = uniform("gpipe", 2, 2, 1, 1, 0, 0, 0, 0);
    in.sched.kind = (nb_sched_kind_t)9;
    assert_int_equal(nb_sim_run(&in, &r, NULL, 0, NULL), NB_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uniform_no_comm),
        cmocka_unit_test(test_gpipe_with_comm),
        cmocka_unit_test(test_1f1b_with_comm),
        cmocka_unit_test(test_hand_worked_p2_m2),
        cmocka_unit_test(test_heterogeneous),
        cmocka_unit_test(test_shared_compute),
        cmocka_unit_test(test_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
