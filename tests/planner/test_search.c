/* test_search.c - the planner's search: interior optimum of m across a slow
 * link, layer split towards faster clusters, memory limits and their report,
 * tie-breaking, request validation and the printed table. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/planner/search.h"
#include "kernels/common.h"

#define GIB (1024.0 * 1024.0 * 1024.0)

/* A GPT-small-like job: 12 blocks, hidden 768, sequence 512, batch 32. */
static nb_cost_model_t model(void)
{
    nb_cost_model_t m = {
        .n_layers = 12,
        .params_per_layer = 7.1e6,
        .embed_params = 39e6,
        .head_params = 0,
        .state_bytes_per_param = 16,
        .act_bytes_per_sample_layer = 34.0 * 512 * 768,
        .boundary_bytes_per_sample = 512.0 * 768 * 4,
        .global_batch = 32,
    };
    return m;
}

/* p identical stages joined by mbit links of lat_ms latency. */
static void world(nb_cost_t *c, int p, double mbit, double lat_ms)
{
    memset(c, 0, sizeof *c);
    c->p = p;
    for (int s = 0; s < p; s++) {
        nb_cost_stage_t *st = &c->stage[s];
        snprintf(st->name, sizeof st->name, "cluster%d", s);
        st->fwd_layer = (nb_fit_t){0.002, 0.004};
        st->bwd_layer = (nb_fit_t){0.004, 0.008};
        st->fwd_fixed = (nb_fit_t){0.003, 0.001};
        st->bwd_fixed = (nb_fit_t){0.006, 0.002};
    }
    for (int s = 0; s + 1 < p; s++)
        for (int d = 0; d < 2; d++)
            c->link[s].dir[d] = (nb_cost_dir_t){lat_ms / 1000, mbit * 1e6 / 8, 0.004};
    c->ncodecs = 3;
    c->codec[0] = (nb_cost_codec_t){"fp32", 1.0, 0, 0, 0};
    c->codec[1] = (nb_cost_codec_t){"fp16", 0.5, 2e-11, 2e-11, 1};
    c->codec[2] = (nb_cost_codec_t){"int8", 0.25, 5e-11, 5e-11, 2};
}

static nb_plan_req_t request(int p)
{
    nb_plan_req_t r;
    memset(&r, 0, sizeof r);
    r.model = model();
    r.p = p;
    return r;
}

/* Fastest feasible step time among candidates with this m (INFINITY: none). */
static double best_at(const nb_plan_result_t *r, int m)
{
    double t = INFINITY;
    for (int i = 0; i < r->n; i++)
        if (r->cand[i].m == m && r->cand[i].feasible)
            t = fmin(t, r->cand[i].step_time);
    return t;
}

/* Across a 100 Mbit/s, 40 ms link, more micro-batches is not always better:
 * per-message cost and per-micro-batch compute overhead grow with m, fill
 * and drain shrink with it, so the best m is interior. */
static void test_interior_optimum(void **state)
{
    (void)state;
    nb_cost_t c;
    world(&c, 3, 100, 40);
    /* Each message holds the wire for one round trip before the next may
     * start (a window-limited sender waiting for its acknowledgement). */
    for (int s = 0; s < 2; s++)
        c.link[s].dir[0].overhead = c.link[s].dir[1].overhead = 0.08;
    nb_plan_req_t req = request(3);
    req.nfwd = req.nbwd = 1;
    req.fwd_codecs[0] = req.bwd_codecs[0] = "fp32";
    nb_plan_result_t r;
    char err[256] = "";
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
    int best_m = r.cand[0].m;
    double t1 = best_at(&r, 1), t32 = best_at(&r, 32), tb = r.cand[0].step_time;
    print_message("interior: m=1 %.4fs, m=%d %.4fs (chosen), m=32 %.4fs\n", t1, best_m, tb,
                  t32);
    assert_true(best_m > 1 && best_m < 32);
    assert_true(tb < t1 * 0.99 && tb < t32 * 0.99);
    /* Each divisor was tried. */
    const int divs[] = {1, 2, 4, 8, 16, 32};
    for (size_t i = 0; i < NB_ARRAY_LEN(divs); i++)
        assert_true(isfinite(best_at(&r, divs[i])));
    /* The chosen candidate's prediction is the simulator's on its input. */
    nb_sim_input_t in;
    nb_sim_result_t sr;
    assert_int_equal(nb_plan_sim_input(&c, &req.model, &r.cand[0], &in), 0);
    assert_int_equal(nb_sim_run(&in, &sr, NULL, 0, NULL), 0);
    assert_true(fabs(sr.step_time - tb) < 1e-12);
    nb_plan_result_free(&r);

    /* With no link cost and no per-micro-batch overhead, the largest m wins. */
    world(&c, 3, 1e9, 0);
    for (int s = 0; s < 3; s++) {
        c.stage[s].fwd_layer.a = c.stage[s].bwd_layer.a = 0;
        c.stage[s].fwd_fixed.a = c.stage[s].bwd_fixed.a = 0;
    }
    for (int s = 0; s < 2; s++)
        c.link[s].dir[0].overhead = c.link[s].dir[1].overhead = 0;
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
    assert_int_equal(r.cand[0].m, 32);
    nb_plan_result_free(&r);
}

/* A cluster twice as fast per block gets about twice the blocks. */
static void test_split_follows_speed(void **state)
{
    (void)state;
    nb_cost_t c;
    world(&c, 2, 10000, 1);
    c.stage[1].fwd_layer.a /= 2, c.stage[1].fwd_layer.b /= 2;
    c.stage[1].bwd_layer.a /= 2, c.stage[1].bwd_layer.b /= 2;
    nb_plan_req_t req = request(2);
    nb_plan_result_t r;
    char err[256];
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
    assert_int_equal(r.cand[0].layers[0] + r.cand[0].layers[1], 12);
    assert_int_equal(r.cand[0].layers[0], 4);
    assert_int_equal(r.cand[0].layers[1], 8);
    nb_plan_result_free(&r);
    /* Equal clusters: an even split. */
    world(&c, 2, 10000, 1);
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
    assert_int_equal(r.cand[0].layers[0], 6);
    nb_plan_result_free(&r);
    /* A pinned split is kept. */
    req.fixed_layers[0] = 2, req.fixed_layers[1] = 10;
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
    for (int i = 0; i < r.n; i++)
        assert_int_equal(r.cand[i].layers[0], 2);
    nb_plan_result_free(&r);
}

/* On small cases the chosen split is as fast, in simulation, as the best of
 * every contiguous split (exhaustive), for fixed m, schedule and codecs. */
static void test_split_vs_exhaustive(void **state)
{
    (void)state;
    /* Stage 0 slow per block, stage 1 fast, stage 2 slow with a large fixed
     * cost (the head): the min-max split alone is indifferent among many
     * splits of stages 0 and 1. */
    const double speed[][3] = {{3, 1, 1}, {1, 1, 1}, {1, 2, 4}, {2, 1, 3}};
    const double fixed2[] = {0.2, 0, 0.05, 0.1};
    for (size_t v = 0; v < NB_ARRAY_LEN(speed); v++) {
        nb_cost_t c;
        world(&c, 3, 200, 20);
        for (int s = 0; s < 3; s++) {
            c.stage[s].fwd_layer.b *= speed[v][s], c.stage[s].bwd_layer.b *= speed[v][s];
            c.stage[s].fwd_layer.a *= speed[v][s], c.stage[s].bwd_layer.a *= speed[v][s];
        }
        c.stage[2].fwd_fixed.a += fixed2[v];
        c.stage[2].bwd_fixed.a += 2 * fixed2[v];
        nb_plan_req_t req = request(3);
        req.model.n_layers = 9;
        req.m_min = req.m_max = 8;
        req.nscheds = 1;
        req.scheds[0] = (nb_sched_spec_t){NB_SCHED_1F1B, 1};
        req.nfwd = req.nbwd = 1;
        req.fwd_codecs[0] = req.bwd_codecs[0] = "int8";
        nb_plan_result_t r;
        char err[256];
        assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
        assert_int_equal(r.n, 1);
        double best = INFINITY;
        int bl[3] = {0, 0, 0};
        for (int a = 1; a <= 7; a++)
            for (int b = 1; a + b <= 8; b++) {
                int split[3] = {a, b, 9 - a - b};
                nb_plan_cand_t e;
                assert_int_equal(nb_plan_evaluate(&c, &req.model, 8, &req.scheds[0], "int8",
                                                  "int8", split, &e, err, sizeof err),
                                 0);
                if (e.step_time < best)
                    best = e.step_time, memcpy(bl, split, sizeof bl);
            }
        if (r.cand[0].step_time > best * (1 + 1e-9))
            fail_msg("variant %zu: chose %d,%d,%d at %.6f s, best %d,%d,%d at %.6f s", v,
                     r.cand[0].layers[0], r.cand[0].layers[1], r.cand[0].layers[2],
                     r.cand[0].step_time, bl[0], bl[1], bl[2], best);
        nb_plan_result_free(&r);
    }
}

/* A memory limit rules out deep stashes; the report names the stage. */
static void test_memory_limits(void **state)
{
    (void)state;
    nb_cost_t c;
    world(&c, 2, 1000, 10);
    nb_plan_req_t req = request(2);
    nb_plan_result_t r;
    char err[512] = "";
    /* 6 blocks of state ~0.63 GiB + embedding; one sample of one block's
     * stash is 13 MiB. Limit 2 GiB: GPipe at full batch does not fit. */
    for (int s = 0; s < 2; s++)
        c.stage[s].mem_limit = 2.0 * GIB;
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
    assert_true(r.nfeasible > 0 && r.nfeasible < r.n);
    for (int i = 0; i < r.n; i++) {
        const nb_plan_cand_t *cd = &r.cand[i];
        double worst = 0;
        for (int s = 0; s < 2; s++)
            worst = fmax(worst, cd->mem[s] - c.stage[s].mem_limit);
        if (cd->feasible)
            assert_true(worst <= 0);
        else
            assert_true(worst > 0 && cd->oom_stage >= 0 && cd->oom_need > cd->oom_limit);
        /* Feasible ones come first. */
        if (i > 0 && cd->feasible)
            assert_true(r.cand[i - 1].feasible);
    }
    assert_true(r.cand[0].feasible);
    nb_plan_result_free(&r);

    /* Nothing fits: the error says which stage needs how much at which m. */
    c.stage[1].mem_limit = 0.05 * GIB; /* less than one block's state */
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), NB_ELIMIT);
    print_message("%s\n", err);
    assert_non_null(strstr(err, "stage 1 needs"));
    assert_non_null(strstr(err, "limit 0.05 GiB"));
    assert_non_null(strstr(err, "m="));
    assert_int_equal(r.nfeasible, 0);
    assert_true(r.n > 0);
    nb_plan_result_free(&r);
}

/* Near-ties go to fewer micro-batches, then less memory, then the less
 * lossy codec. */
static void test_ties(void **state)
{
    (void)state;
    nb_cost_t c;
    world(&c, 2, 1000, 1);
    /* Two codecs identical in cost; "int8b" claims more loss. */
    c.codec[0] = (nb_cost_codec_t){"int8b", 0.25, 0, 0, 3};
    c.codec[1] = (nb_cost_codec_t){"int8a", 0.25, 0, 0, 2};
    c.ncodecs = 2;
    nb_plan_req_t req = request(2);
    req.nscheds = 1;
    req.scheds[0] = (nb_sched_spec_t){NB_SCHED_1F1B, 0};
    nb_plan_result_t r;
    char err[256];
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
    assert_string_equal(c.codec[r.cand[0].fwd_codec].spec, "int8a");
    assert_string_equal(c.codec[r.cand[0].bwd_codec].spec, "int8a");
    int m_exact = r.cand[0].m;
    nb_plan_result_free(&r);
    /* A wide window: the fewest micro-batches within 50% of the best. */
    req.tie_rel = 0.5;
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
    assert_true(r.cand[0].m <= m_exact);
    double fastest = INFINITY;
    for (int i = 0; i < r.n; i++)
        fastest = fmin(fastest, r.cand[i].step_time);
    assert_true(r.cand[0].step_time <= fastest * 1.5);
    for (int i = 1; i < r.n; i++)
        if (r.cand[i].step_time <= fastest * 1.5)
            assert_true(r.cand[i].m >= r.cand[0].m);
    nb_plan_result_free(&r);
}

/* Quality budget: on a slow link topk(0.1) is by far the fastest codec, but
 * its measured error (0.76) is over a budget of 0.05, so no candidate uses
 * it in either direction; int4 (0.10) is over it too; without a budget
 * topk wins. A budget nothing meets is an error naming the least lossy. */
static void test_error_budget(void **state)
{
    (void)state;
    nb_cost_t c;
    world(&c, 2, 10, 20);
    c.codec[3] = (nb_cost_codec_t){"int4", 0.13, 5e-11, 5e-11, 3};
    c.codec[4] = (nb_cost_codec_t){"topk(0.1)", 0.1, 1e-11, 1e-11, 5};
    c.ncodecs = 5;
    c.codec_err[1] = 2e-4;
    c.codec_err[2] = 0.0055;
    c.codec_err[3] = 0.10;
    c.codec_err[4] = 0.76;
    nb_plan_req_t req = request(2);
    req.nscheds = 1;
    req.scheds[0] = (nb_sched_spec_t){NB_SCHED_1F1B, 0};
    nb_plan_result_t r;
    char err[256];
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
    assert_string_equal(c.codec[r.cand[0].fwd_codec].spec, "topk(0.1)");
    nb_plan_result_free(&r);
    req.max_err = 0.05;
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
    assert_true(r.n > 0);
    for (int i = 0; i < r.n; i++) {
        assert_true(c.codec_err[r.cand[i].fwd_codec] <= 0.05);
        assert_true(c.codec_err[r.cand[i].bwd_codec] <= 0.05);
    }
    assert_string_equal(c.codec[r.cand[0].fwd_codec].spec, "int8");
    nb_plan_result_free(&r);
    /* an explicit list is filtered the same way */
    req.nfwd = req.nbwd = 2;
    req.fwd_codecs[0] = req.bwd_codecs[0] = "topk(0.1)";
    req.fwd_codecs[1] = req.bwd_codecs[1] = "fp16";
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
    for (int i = 0; i < r.n; i++)
        assert_string_equal(c.codec[r.cand[i].fwd_codec].spec, "fp16");
    nb_plan_result_free(&r);
    req.nfwd = req.nbwd = 1;
    req.fwd_codecs[0] = req.bwd_codecs[0] = "topk(0.1)";
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "error budget 0.05"));
    assert_non_null(strstr(err, "topk(0.1)"));
}

/* U-shape: stage 2 is the head on stage 0's daemon, with no blocks; the
 * daemon's memory limit covers both of its stages. */
static void test_u_shape(void **state)
{
    (void)state;
    nb_cost_t c;
    world(&c, 3, 100, 20);
    nb_plan_req_t req = request(3);
    req.head_only_last = 1;
    req.use_placement = 1;
    req.placement[0] = 0, req.placement[1] = 1, req.placement[2] = 0;
    req.model.head_params = 39e6; /* untied head */
    nb_plan_result_t r;
    char err[512];
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
    assert_int_equal(r.nfeasible, r.n);
    for (int i = 0; i < r.n; i++) {
        assert_int_equal(r.cand[i].layers[2], 0);
        assert_int_equal(r.cand[i].layers[0] + r.cand[i].layers[1], 12);
        assert_true(r.cand[i].layers[0] >= 1 && r.cand[i].layers[1] >= 1);
        assert_true(r.cand[i].mem[2] > 39e6 * 16 - 1);
    }
    /* Limit daemon 0 to what stage 0 alone would need: every candidate
     * whose stage 0 and stage 2 together exceed it is out. */
    double lim = r.cand[0].mem[0] + 0.5 * r.cand[0].mem[2];
    nb_plan_result_free(&r);
    c.stage[0].mem_limit = lim;
    int rc = nb_plan_search(&c, &req, &r, err, sizeof err);
    assert_true(rc == 0 || rc == NB_ELIMIT);
    int seen_oom = 0;
    for (int i = 0; i < r.n; i++) {
        const nb_plan_cand_t *cd = &r.cand[i];
        double need0 = cd->mem[0] + cd->mem[2];
        assert_int_equal(cd->feasible, need0 <= lim && (c.stage[1].mem_limit == 0));
        if (!cd->feasible) {
            seen_oom = 1;
            assert_int_equal(cd->oom_stage, 0);
            assert_true(fabs(cd->oom_need - need0) < 1);
        }
    }
    assert_true(seen_oom);
    nb_plan_result_free(&r);
    /* Without the placement, the same limit checks stage 0 alone. */
    req.use_placement = 0;
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
    for (int i = 0; i < r.n; i++)
        assert_int_equal(r.cand[i].feasible, r.cand[i].mem[0] <= lim);
    nb_plan_result_free(&r);
    /* A pinned U-shape split must give the head stage 0 blocks. */
    req.fixed_layers[0] = 4, req.fixed_layers[1] = 7, req.fixed_layers[2] = 1;
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "head-only"));
    req.fixed_layers[1] = 8, req.fixed_layers[2] = 0;
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
    assert_int_equal(r.cand[0].layers[1], 8);
    nb_plan_result_free(&r);
}

static void test_bad_requests(void **state)
{
    (void)state;
    nb_cost_t c;
    world(&c, 2, 100, 10);
    nb_plan_req_t req = request(2);
    nb_plan_result_t r;
    char err[256];
    req.nfwd = 1;
    req.fwd_codecs[0] = "zstd";
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "zstd"));
    req = request(3);
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "stages"));
    req = request(2);
    req.fixed_layers[0] = 5, req.fixed_layers[1] = 5;
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "layer split"));
    req = request(2);
    req.m_min = 5, req.m_max = 7; /* no divisor of 32 */
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "micro-batches"));
    req = request(2);
    c.link[0].dir[1].bandwidth = 0;
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "bandwidth"));
}

/* A pinned plan: predicted like the search predicts it, refused with the
 * numbers when it does not fit. */
static void test_evaluate(void **state)
{
    (void)state;
    nb_cost_t c;
    world(&c, 2, 100, 20);
    nb_plan_req_t req = request(2);
    nb_plan_result_t r;
    char err[512];
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
    const nb_plan_cand_t *best = &r.cand[0];
    nb_plan_cand_t e;
    assert_int_equal(nb_plan_evaluate(&c, &req.model, best->m, &best->sched,
                                      c.codec[best->fwd_codec].spec,
                                      c.codec[best->bwd_codec].spec, best->layers, &e, err,
                                      sizeof err),
                     0);
    assert_true(fabs(e.step_time - best->step_time) < 1e-12);
    assert_true(fabs(e.mem[0] - best->mem[0]) < 1e-6);
    nb_plan_result_free(&r);

    int split[2] = {6, 6};
    nb_sched_spec_t gp = {NB_SCHED_GPIPE, 0};
    c.stage[1].mem_limit = 2.0 * GIB;
    /* GPipe, m=2: 16 samples of 6 blocks in flight do not fit 2 GiB. */
    assert_int_equal(nb_plan_evaluate(&c, &req.model, 2, &gp, "fp32", "int8", split, &e, err,
                                      sizeof err),
                     NB_ELIMIT);
    print_message("%s\n", err);
    assert_non_null(strstr(err, "stage 1 needs"));
    assert_non_null(strstr(err, "at m=2 (micro-batch 16, 2 in flight"));
    assert_non_null(strstr(err, "limit 2.00 GiB"));
    assert_int_equal(e.feasible, 0);
    assert_int_equal(nb_plan_evaluate(&c, &req.model, 3, &gp, "fp32", "fp32", split, &e, err,
                                      sizeof err),
                     NB_EINVAL);
    assert_non_null(strstr(err, "does not divide"));
    assert_int_equal(nb_plan_evaluate(&c, &req.model, 4, &gp, "fp32", "lz4", split, &e, err,
                                      sizeof err),
                     NB_EINVAL);
    assert_non_null(strstr(err, "backward codec 'lz4'"));
    split[1] = 5;
    assert_int_equal(nb_plan_evaluate(&c, &req.model, 4, &gp, "fp32", "fp32", split, &e, err,
                                      sizeof err),
                     NB_EINVAL);
    assert_non_null(strstr(err, "layer split"));
}

/* A low-rank split (job.lowrank) in block 8 of 12 at rank 8: the cut after
 * 9 blocks carries 8 of 768 floats per position. The planner's predicted
 * wire bytes on that cut are r/d of the dense cut's (the link time less
 * its per-message cost, forward and backward), every other cut is as
 * dense. Across a 20 Mbit/s link the choice moves from the even split 6/6
 * of the dense model to 9/3, the cut at the factor, and predicts a faster
 * step; across a 100 Gbit/s link (compute-bound) it stays the dense
 * model's. */
static void test_lowrank_cut(void **state)
{
    (void)state;
    const double r = 8, d = 768;
    nb_cost_t c;
    world(&c, 2, 20, 20);
    nb_plan_req_t dense = request(2), split = request(2);
    split.model.narrow_cut = 9;
    split.model.narrow_bytes_per_sample = dense.model.boundary_bytes_per_sample * r / d;
    assert_true(nb_cost_cut_bytes(&split.model, 9) == split.model.narrow_bytes_per_sample);
    assert_true(nb_cost_cut_bytes(&split.model, 8) == dense.model.boundary_bytes_per_sample);
    assert_true(nb_cost_cut_bytes(&dense.model, 9) == dense.model.boundary_bytes_per_sample);
    dense.nfwd = dense.nbwd = split.nfwd = split.nbwd = 1;
    dense.fwd_codecs[0] = dense.bwd_codecs[0] = split.fwd_codecs[0] = split.bwd_codecs[0] = "fp32";
    /* the predicted transfer of one micro-batch on each cut */
    for (int cut = 8; cut <= 10; cut++) {
        nb_plan_cand_t k = { .m = 4, .mb_size = 8, .sched = {NB_SCHED_1F1B, 0}, .layers = {cut, 12 - cut} };
        nb_sim_input_t di, si;
        assert_int_equal(nb_plan_sim_input(&c, &dense.model, &k, &di), 0);
        assert_int_equal(nb_plan_sim_input(&c, &split.model, &k, &si), 0);
        double ovh = c.link[0].dir[NB_DIR_FWD].overhead, bw = c.link[0].dir[NB_DIR_FWD].bandwidth;
        double want = (cut == 9 ? r / d : 1.0) * 8 * dense.model.boundary_bytes_per_sample;
        print_message("cut after %d blocks: predicted %.0f bytes forward (dense %.0f), %.4f s on the link\n", cut,
                      (si.xf[0] - ovh) * bw, (di.xf[0] - ovh) * bw, si.xf[0]);
        assert_true(fabs((si.xf[0] - ovh) * bw - want) < 1e-6 * want);
        assert_true(fabs((si.xb[0] - ovh) * bw - want) < 1e-6 * want);
        assert_true(fabs((di.xf[0] - ovh) * bw - 8 * dense.model.boundary_bytes_per_sample) < 1);
    }
    nb_plan_result_t rd, rs;
    char err[512];
    assert_int_equal(nb_plan_search(&c, &dense, &rd, err, sizeof err), 0);
    assert_int_equal(nb_plan_search(&c, &split, &rs, err, sizeof err), 0);
    print_message("20 Mbit/s: dense %d/%d %.3f s, low-rank %d/%d %.3f s\n", rd.cand[0].layers[0],
                  rd.cand[0].layers[1], rd.cand[0].step_time, rs.cand[0].layers[0], rs.cand[0].layers[1],
                  rs.cand[0].step_time);
    assert_int_equal(rd.cand[0].layers[0], 6);
    assert_int_equal(rs.cand[0].layers[0], 9);
    assert_int_equal(rs.cand[0].layers[1], 3);
    assert_true(rs.cand[0].step_time < rd.cand[0].step_time / 4);
    nb_plan_result_free(&rd);
    nb_plan_result_free(&rs);
    world(&c, 2, 100000, 0.1);
    assert_int_equal(nb_plan_search(&c, &dense, &rd, err, sizeof err), 0);
    assert_int_equal(nb_plan_search(&c, &split, &rs, err, sizeof err), 0);
    print_message("100 Gbit/s: dense %d/%d %.4f s, low-rank %d/%d %.4f s\n", rd.cand[0].layers[0],
                  rd.cand[0].layers[1], rd.cand[0].step_time, rs.cand[0].layers[0], rs.cand[0].layers[1],
                  rs.cand[0].step_time);
    assert_int_equal(rs.cand[0].layers[0], rd.cand[0].layers[0]);
    assert_true(rs.cand[0].layers[0] != 9);
    assert_true(fabs(rs.cand[0].step_time - rd.cand[0].step_time) < 1e-3 * rd.cand[0].step_time);
    nb_plan_result_free(&rd);
    nb_plan_result_free(&rs);
}

static void test_table(void **state)
{
    (void)state;
    nb_cost_t c;
    world(&c, 2, 100, 20);
    c.stage[0].mem_limit = c.stage[1].mem_limit = 2.0 * GIB;
    nb_plan_req_t req = request(2);
    nb_plan_result_t r;
    char err[256];
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_int_equal(nb_plan_print(f, &c, &r, 0), 0);
    fclose(f);
    assert_non_null(strstr(buf, "rank"));
    assert_non_null(strstr(buf, "<- chosen"));
    assert_non_null(strstr(buf, "OOM: stage"));
    int lines = 0;
    for (char *q = buf; *q; q++)
        lines += *q == '\n';
    assert_int_equal(lines, r.n + 1);
    free(buf);
    f = open_memstream(&buf, &len);
    assert_int_equal(nb_plan_print(f, &c, &r, 3), 0);
    fclose(f);
    assert_non_null(strstr(buf, "more candidates not shown"));
    char line[256];
    nb_plan_describe(&c, &r.cand[0], line, sizeof line);
    assert_non_null(strstr(line, "split="));
    free(buf);
    nb_plan_result_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_interior_optimum),
        cmocka_unit_test(test_split_follows_speed),
        cmocka_unit_test(test_split_vs_exhaustive),
        cmocka_unit_test(test_memory_limits),
        cmocka_unit_test(test_ties),
        cmocka_unit_test(test_u_shape),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_evaluate),
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_lowrank_cut),
        cmocka_unit_test(test_error_budget),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
