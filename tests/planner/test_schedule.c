/* test_schedule.c - GPipe and 1F1B op lists: exact small cases, every op once,
 * in-order backwards, deadlock freedom with unbounded and bounded channels,
 * peak stash per stage, and U-shape daemon merges. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "daemon/planner/sched_exec.h"
#include "daemon/planner/schedule.h"
#include "kernels/common.h"

/* Renders the compute ops of a list as "F0 F1 B0 B1". */
static void compute_order(const nb_sched_op_t *ops, int n, char *buf, size_t len)
{
    size_t off = 0;
    buf[0] = 0;
    for (int i = 0; i < n; i++) {
        if (ops[i].kind != NB_OP_FWD && ops[i].kind != NB_OP_BWD)
            continue;
        off += (size_t)snprintf(buf + off, len - off, "%s%s%d", off ? " " : "",
                                ops[i].kind == NB_OP_FWD ? "F" : "B", ops[i].mb);
    }
}

static void test_parse_and_names(void **state)
{
    (void)state;
    nb_sched_spec_t s;
    char buf[32];
    assert_int_equal(nb_sched_parse("gpipe", &s), 0);
    assert_int_equal(s.kind, NB_SCHED_GPIPE);
    assert_int_equal(nb_sched_parse("1f1b", &s), 0);
    assert_int_equal(s.kind, NB_SCHED_1F1B);
    assert_int_equal(s.extra, 0);
    assert_int_equal(nb_sched_parse("1f1b:3", &s), 0);
    assert_int_equal(s.extra, 3);
    assert_string_equal(nb_sched_format(&s, buf, sizeof buf), "1f1b:3");
    assert_int_equal(nb_sched_parse("1f1b:", &s), NB_EINVAL);
    assert_int_equal(nb_sched_parse("1f1b:-1", &s), NB_EINVAL);
    assert_int_equal(nb_sched_parse("1f1b:2x", &s), NB_EINVAL);
    assert_int_equal(nb_sched_parse("GPipe", &s), NB_EINVAL);
    assert_int_equal(nb_sched_parse("", &s), NB_EINVAL);
    assert_string_equal(nb_sched_kind_name(NB_SCHED_GPIPE), "gpipe");
    assert_string_equal(nb_sched_kind_name(NB_SCHED_1F1B), "1f1b");
}

static void test_exact_small_lists(void **state)
{
    (void)state;
    nb_sched_op_t ops[256];
    char buf[512];

    /* p=2, m=2, GPipe, stage 0, with its transfers. */
    int n = nb_sched_build(NB_SCHED_GPIPE, 2, 2, 0, ops, 256);
    assert_int_equal(n, 8);
    const nb_sched_op_kind_t want0[] = {NB_OP_FWD, NB_OP_SEND_ACT, NB_OP_FWD, NB_OP_SEND_ACT,
                                        NB_OP_RECV_GRAD, NB_OP_BWD, NB_OP_RECV_GRAD, NB_OP_BWD};
    const int mb0[] = {0, 0, 1, 1, 0, 0, 1, 1};
    for (int i = 0; i < 8; i++) {
        assert_int_equal(ops[i].kind, want0[i]);
        assert_int_equal(ops[i].mb, mb0[i]);
        assert_int_equal(ops[i].stage, 0);
    }
    /* p=2, m=2, 1F1B, last stage: forward, backward alternate. */
    n = nb_sched_build(NB_SCHED_1F1B, 2, 2, 1, ops, 256);
    assert_int_equal(n, 8);
    const nb_sched_op_kind_t want1[] = {NB_OP_RECV_ACT, NB_OP_FWD, NB_OP_BWD, NB_OP_SEND_GRAD,
                                        NB_OP_RECV_ACT, NB_OP_FWD, NB_OP_BWD, NB_OP_SEND_GRAD};
    for (int i = 0; i < 8; i++)
        assert_int_equal(ops[i].kind, want1[i]);

    /* p=4, m=6, 1F1B: warm-up 3, 2, 1, 0. */
    const char *want[] = {
        "F0 F1 F2 F3 B0 F4 B1 F5 B2 B3 B4 B5",
        "F0 F1 F2 B0 F3 B1 F4 B2 F5 B3 B4 B5",
        "F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 B5",
        "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5",
    };
    for (int s = 0; s < 4; s++) {
        n = nb_sched_build(NB_SCHED_1F1B, 4, 6, s, ops, 256);
        compute_order(ops, n, buf, sizeof buf);
        assert_string_equal(buf, want[s]);
    }
    /* m < p: 1F1B on stage 0 degenerates to all forwards then backwards. */
    n = nb_sched_build(NB_SCHED_1F1B, 4, 2, 0, ops, 256);
    compute_order(ops, n, buf, sizeof buf);
    assert_string_equal(buf, "F0 F1 B0 B1");
    n = nb_sched_build(NB_SCHED_1F1B, 4, 2, 2, ops, 256);
    compute_order(ops, n, buf, sizeof buf);
    assert_string_equal(buf, "F0 F1 B0 B1");
    n = nb_sched_build(NB_SCHED_1F1B, 4, 2, 3, ops, 256);
    compute_order(ops, n, buf, sizeof buf);
    assert_string_equal(buf, "F0 B0 F1 B1");
    /* 1f1b:1 on p=3: warm-up 4, 2, 0. */
    nb_sched_spec_t k1 = {NB_SCHED_1F1B, 1};
    n = nb_sched_build_spec(&k1, 3, 6, 0, ops, 256);
    compute_order(ops, n, buf, sizeof buf);
    assert_string_equal(buf, "F0 F1 F2 F3 F4 B0 F5 B1 B2 B3 B4 B5");
    n = nb_sched_build(NB_SCHED_GPIPE, 3, 3, 1, ops, 256);
    compute_order(ops, n, buf, sizeof buf);
    assert_string_equal(buf, "F0 F1 F2 B0 B1 B2");
}

static void test_bad_args(void **state)
{
    (void)state;
    nb_sched_op_t ops[64];
    assert_int_equal(nb_sched_build(NB_SCHED_1F1B, 0, 2, 0, ops, 64), NB_EINVAL);
    assert_int_equal(nb_sched_build(NB_SCHED_1F1B, 2, 0, 0, ops, 64), NB_EINVAL);
    assert_int_equal(nb_sched_build(NB_SCHED_1F1B, 2, 2, 2, ops, 64), NB_EINVAL);
    assert_int_equal(nb_sched_build(NB_SCHED_1F1B, 2, 2, -1, ops, 64), NB_EINVAL);
    assert_int_equal(nb_sched_build(NB_SCHED_1F1B, 3, 4, 1, ops, 23), NB_ELIMIT);
    assert_int_equal(nb_sched_build(NB_SCHED_1F1B, 3, 4, 1, ops, 24), 24);
    assert_int_equal(nb_sched_build(NB_SCHED_1F1B, 3, 4, 0, ops, 16), 16);
    assert_int_equal(nb_sched_build((nb_sched_kind_t)7, 2, 2, 0, ops, 64), NB_EINVAL);
    nb_sched_spec_t bad = {NB_SCHED_GPIPE, 2};
    assert_int_equal(nb_sched_build_spec(&bad, 2, 2, 0, ops, 64), NB_EINVAL);
}

/* Every (p, m, schedule): each op exactly once, forwards and backwards in
 * order, all stages together complete with unbounded and bounded channels,
 * and the peak stash is the documented one. */
static void test_all_small_pipelines(void **state)
{
    (void)state;
    static nb_sched_op_t ops[8 * 20 * 6];
    const char *specs[] = {"gpipe", "1f1b", "1f1b:1", "1f1b:2", "1f1b:5"};
    for (size_t k = 0; k < NB_ARRAY_LEN(specs); k++) {
        nb_sched_spec_t spec;
        assert_int_equal(nb_sched_parse(specs[k], &spec), 0);
        for (int p = 1; p <= 8; p++) {
            for (int m = 1; m <= 20; m++) {
                for (int s = 0; s < p; s++) {
                    int n = nb_sched_build_spec(&spec, p, m, s, ops, (int)NB_ARRAY_LEN(ops));
                    assert_int_equal(n, nb_sched_count(p, m, s));
                    int seen[6][20];
                    memset(seen, 0, sizeof seen);
                    int next_f = 0, next_b = 0;
                    for (int i = 0; i < n; i++) {
                        assert_int_equal(ops[i].stage, s);
                        seen[ops[i].kind][ops[i].mb]++;
                        if (ops[i].kind == NB_OP_FWD)
                            assert_int_equal(ops[i].mb, next_f++);
                        if (ops[i].kind == NB_OP_BWD)
                            assert_int_equal(ops[i].mb, next_b++);
                    }
                    for (int mb = 0; mb < m; mb++) {
                        assert_int_equal(seen[NB_OP_FWD][mb], 1);
                        assert_int_equal(seen[NB_OP_BWD][mb], 1);
                        assert_int_equal(seen[NB_OP_RECV_ACT][mb], s > 0);
                        assert_int_equal(seen[NB_OP_SEND_GRAD][mb], s > 0);
                        assert_int_equal(seen[NB_OP_SEND_ACT][mb], s < p - 1);
                        assert_int_equal(seen[NB_OP_RECV_GRAD][mb], s < p - 1);
                    }
                }
                int mc = nb_sched_min_queue_cap(&spec);
                int caps[] = {0, mc, mc + 1};
                for (size_t c = 0; c < NB_ARRAY_LEN(caps); c++) {
                    nb_sched_exec_stats_t st;
                    char err[256] = "";
                    int rc = nb_sched_verify(&spec, p, m, caps[c], &st, err, sizeof err);
                    if (rc != 0)
                        fail_msg("%s p=%d m=%d cap=%d: %s", specs[k], p, m, caps[c], err);
                    for (int s = 0; s < p; s++) {
                        int want = nb_sched_peak_inflight(&spec, p, m, s);
                        assert_int_equal(st.peak_inflight[s], want);
                        if (strcmp(specs[k], "gpipe") == 0)
                            assert_int_equal(want, m);
                        if (strcmp(specs[k], "1f1b") == 0)
                            assert_int_equal(want, (p - s) < m ? (p - s) : m);
                    }
                }
            }
        }
        /* One slot less than the stated minimum deadlocks once m is large. */
        int mc = nb_sched_min_queue_cap(&spec);
        if (mc > 1) {
            char err[256];
            assert_int_equal(nb_sched_verify(&spec, 2, 12, mc - 1, NULL, err, sizeof err),
                             NB_ESTATE);
        }
    }
}

/* The checker is not vacuous: broken lists are reported, not passed. */
static void test_checker_catches_broken_lists(void **state)
{
    (void)state;
    char err[256];
    int lens[2];
    const nb_sched_op_t *lists[2];
    /* Stage 0 waits for a gradient before sending the activation: deadlock. */
    nb_sched_op_t s0[] = {{NB_OP_FWD, 0, 0}, {NB_OP_RECV_GRAD, 0, 0}, {NB_OP_SEND_ACT, 0, 0},
                          {NB_OP_BWD, 0, 0}};
    nb_sched_op_t s1[] = {{NB_OP_RECV_ACT, 1, 0}, {NB_OP_FWD, 1, 0}, {NB_OP_BWD, 1, 0},
                          {NB_OP_SEND_GRAD, 1, 0}};
    lists[0] = s0, lists[1] = s1, lens[0] = 4, lens[1] = 4;
    assert_int_equal(nb_sched_exec_check(2, 1, lists, lens, 2, 0, NULL, err, sizeof err),
                     NB_ESTATE);
    assert_non_null(strstr(err, "deadlock"));
    assert_non_null(strstr(err, "recv-grad(0)"));

    /* Stage 1 expects micro-batch 1 first: out of order. */
    nb_sched_op_t a0[8], a1[8];
    assert_int_equal(nb_sched_build(NB_SCHED_GPIPE, 2, 2, 0, a0, 8), 8);
    assert_int_equal(nb_sched_build(NB_SCHED_GPIPE, 2, 2, 1, a1, 8), 8);
    a1[0].mb = 1; /* recv-act(1) before recv-act(0) */
    a1[3].mb = 0;
    lists[0] = a0, lists[1] = a1, lens[0] = 8, lens[1] = 8;
    assert_int_equal(nb_sched_exec_check(2, 2, lists, lens, 2, 0, NULL, err, sizeof err),
                     NB_EFORMAT);
    assert_non_null(strstr(err, "arrives first"));

    /* A missing backward. */
    assert_int_equal(nb_sched_build(NB_SCHED_GPIPE, 2, 2, 1, a1, 8), 8);
    lens[1] = 7; /* drops the last send-grad */
    assert_int_equal(nb_sched_exec_check(2, 2, lists, lens, 2, 0, NULL, err, sizeof err),
                     NB_ESTATE); /* stage 0 waits forever for that gradient */
    /* A duplicated forward. */
    lens[1] = 8;
    a0[2] = a0[0];
    assert_int_equal(nb_sched_exec_check(2, 2, lists, lens, 2, 0, NULL, err, sizeof err),
                     NB_EFORMAT);
    assert_non_null(strstr(err, "twice"));
    /* B before its gradient on a non-last stage. */
    assert_int_equal(nb_sched_build(NB_SCHED_GPIPE, 2, 2, 0, a0, 8), 8);
    nb_sched_op_t tmp = a0[4];
    a0[4] = a0[5];
    a0[5] = tmp;
    assert_int_equal(nb_sched_exec_check(2, 2, lists, lens, 2, 0, NULL, err, sizeof err),
                     NB_EFORMAT);
    assert_non_null(strstr(err, "before receiving"));
}

/* U-shape: one daemon hosts the first and last stages. Concatenating their
 * lists deadlocks; the merged order completes, under bounded channels too. */
static void test_u_shape_merge(void **state)
{
    (void)state;
    static nb_sched_op_t mem[4][2048];
    char err[256];
    struct {
        int p;
        int placement[8];
        int ndaemons;
    } cases[] = {
        {3, {0, 1, 0}, 2},
        {4, {0, 1, 1, 0}, 2},
        {4, {0, 1, 2, 0}, 3},
        {5, {0, 1, 2, 1, 0}, 3},
        {2, {0, 0}, 1},
    };
    const char *specs[] = {"gpipe", "1f1b", "1f1b:2"};
    for (size_t c = 0; c < NB_ARRAY_LEN(cases); c++) {
        for (size_t k = 0; k < NB_ARRAY_LEN(specs); k++) {
            nb_sched_spec_t spec;
            assert_int_equal(nb_sched_parse(specs[k], &spec), 0);
            for (int m = 1; m <= 9; m++) {
                int caps[2] = {0, nb_sched_min_queue_cap(&spec)};
                for (int ci = 0; ci < 2; ci++) {
                    int cap = caps[ci];
                    const nb_sched_op_t *lists[4];
                    int lens[4];
                    int p = cases[c].p;
                    for (int d = 0; d < cases[c].ndaemons; d++) {
                        int n = nb_sched_build_daemon(&spec, p, m, cases[c].placement, d, cap,
                                                      mem[d], 2048);
                        assert_int_equal(n, nb_sched_daemon_count(p, m, cases[c].placement, d));
                        /* Each stage's own order is kept inside the merge. */
                        for (int s = 0; s < p; s++) {
                            if (cases[c].placement[s] != d)
                                continue;
                            nb_sched_op_t own[512];
                            int no = nb_sched_build_spec(&spec, p, m, s, own, 512), j = 0;
                            for (int i = 0; i < n; i++)
                                if (mem[d][i].stage == s) {
                                    assert_int_equal(mem[d][i].kind, own[j].kind);
                                    assert_int_equal(mem[d][i].mb, own[j].mb);
                                    j++;
                                }
                            assert_int_equal(j, no);
                        }
                        lists[d] = mem[d];
                        lens[d] = n;
                    }
                    int rc = nb_sched_exec_check(p, m, lists, lens, cases[c].ndaemons, cap,
                                                 NULL, err, sizeof err);
                    if (rc != 0)
                        fail_msg("case %zu %s m=%d cap=%d: %s", c, specs[k], m, cap, err);
                }
            }
        }
    }
    /* Naive concatenation (all of stage 0, then all of stage 2) deadlocks. */
    nb_sched_op_t cat[64], mid[64];
    int n0 = nb_sched_build(NB_SCHED_1F1B, 3, 2, 0, cat, 64);
    int n2 = nb_sched_build(NB_SCHED_1F1B, 3, 2, 2, cat + n0, 64 - n0);
    int n1 = nb_sched_build(NB_SCHED_1F1B, 3, 2, 1, mid, 64);
    const nb_sched_op_t *lists[2] = {cat, mid};
    int lens[2] = {n0 + n2, n1};
    assert_int_equal(nb_sched_exec_check(3, 2, lists, lens, 2, 0, NULL, err, sizeof err),
                     NB_ESTATE);
    /* A daemon with no stage, and a too-small buffer. */
    int pl[3] = {0, 1, 0};
    nb_sched_spec_t spec = {NB_SCHED_1F1B, 0};
    assert_int_equal(nb_sched_build_daemon(&spec, 3, 2, pl, 2, 0, cat, 64), NB_EINVAL);
    assert_int_equal(nb_sched_build_daemon(&spec, 3, 2, pl, 0, 0, cat, 10), NB_ELIMIT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_and_names),
        cmocka_unit_test(test_exact_small_lists),
        cmocka_unit_test(test_bad_args),
        cmocka_unit_test(test_all_small_pipelines),
        cmocka_unit_test(test_checker_catches_broken_lists),
        cmocka_unit_test(test_u_shape_merge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
