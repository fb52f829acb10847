/* test_replica.c - the planner's replica model (docs/planner.md,
 * "Replicas"): compute per micro-batch on R replicas is the per-device fit
 * at the largest shard ceil(n/R) plus a per-op overhead; the gradient
 * all-reduce after the last backward costs 2 (R-1)/R G / bw; the simulator
 * adds it after the stage's last op (hidden when another stage finishes
 * later); the search reports its share; the measurements file and the
 * values a peer sends are checked. Run from the repository root. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/planner/measure.h"
#include "daemon/planner/offline.h"
#include "daemon/planner/replica.h"
#include "daemon/planner/search.h"
#include "daemon/planner/sim.h"
#include "kernels/common.h"

static void one_stage(nb_cost_t *c, int replicas)
{
    memset(c, 0, sizeof *c);
    c->p = 1;
    c->stage[0].fwd_layer = (nb_fit_t){ 0.001, 0.002 };
    c->stage[0].bwd_layer = (nb_fit_t){ 0.002, 0.004 };
    c->stage[0].replicas = replicas;
    c->stage[0].replica_overhead = 0.0005;
}

static void test_compute_split(void **state)
{
    (void)state;
    nb_cost_t c;
    one_stage(&c, 0); /* 0: one device */
    assert_int_equal(nb_cost_replicas(&c, 0), 1);
    assert_true(fabs(nb_cost_fwd(&c, 0, 2, 8) - 2 * (0.001 + 0.016)) < 1e-12);
    one_stage(&c, 2);
    /* 8 samples on 2 replicas: 4 each, plus the split's overhead */
    assert_true(fabs(nb_cost_fwd(&c, 0, 2, 8) - (2 * (0.001 + 0.008) + 0.0005)) < 1e-12);
    assert_true(fabs(nb_cost_bwd(&c, 0, 2, 8) - (2 * (0.002 + 0.016) + 0.0005)) < 1e-12);
    /* uneven: 5 samples on 2 replicas, the shard of 3 sets the time */
    assert_true(fabs(nb_cost_fwd(&c, 0, 1, 5) - (0.001 + 0.006 + 0.0005)) < 1e-12);
    /* more replicas than samples: one sample each, the others idle */
    one_stage(&c, 4);
    assert_true(fabs(nb_cost_fwd(&c, 0, 1, 2) - (0.001 + 0.002 + 0.0005)) < 1e-12);
    /* a report of the replicated op refines the per-device fit at the shard:
     * measured 2x the prediction at n=8 (shard 4) doubles the fit */
    one_stage(&c, 2);
    double pred = nb_cost_fwd(&c, 0, 2, 8);
    assert_int_equal(nb_cost_observe_stage(&c, 0, 2, 8, 2 * pred - 0.0005, 0, 1.0), 0);
    assert_true(fabs(nb_cost_fwd(&c, 0, 2, 8) - (2 * pred - 0.0005)) < 1e-9);
    assert_true(fabs(c.stage[0].fwd_layer.b - 0.004) < 1e-9);
}

static void test_allreduce_cost(void **state)
{
    (void)state;
    nb_cost_model_t mdl;
    assert_int_equal(nb_cost_model_gpt(12, 768, 12, 128, 30522, 1, 64, &mdl), 0);
    /* stage 0 of 2 holds the embedding, stage 1 of 2 the (tied: no) head */
    double g0 = nb_cost_grad_bytes(&mdl, 2, 0, 6), g1 = nb_cost_grad_bytes(&mdl, 2, 1, 6);
    assert_true(fabs(g1 - 4.0 * 6 * mdl.params_per_layer) < 1);
    assert_true(fabs(g0 - g1 - 4.0 * mdl.embed_params) < 1);
    nb_cost_t c;
    one_stage(&c, 1);
    assert_true(nb_cost_allreduce(&c, 0, 1e8) == 0); /* one replica: nothing to reduce */
    one_stage(&c, 4);
    c.stage[0].reduce_bw = 1e9;
    /* ring: 2 (4-1)/4 of 100 MB at 1 GB/s */
    assert_true(fabs(nb_cost_allreduce(&c, 0, 1e8) - 0.15) < 1e-12);
    c.stage[0].reduce_bw = 0; /* unknown: the documented CPU figure */
    assert_true(fabs(nb_cost_allreduce(&c, 0, 1e8) - 1.5e8 / NB_COST_REDUCE_BW_CPU) < 1e-12);
}

static void test_sim_tail(void **state)
{
    (void)state;
    nb_sim_input_t in;
    nb_sim_result_t r;
    memset(&in, 0, sizeof in);
    in.p = 1, in.m = 1;
    in.sched = (nb_sched_spec_t){ NB_SCHED_GPIPE, 0 };
    in.tf[0] = 1, in.tb[0] = 2, in.tail[0] = 0.5;
    assert_int_equal(nb_sim_run(&in, &r, NULL, 0, NULL), 0);
    assert_true(fabs(r.step_time - 3.5) < 1e-12);
    assert_true(fabs(r.tail_exposed - 0.5) < 1e-12);
    assert_true(fabs(r.busy[0] - 3) < 1e-12); /* the all-reduce is not compute */
    /* p=2, m=2, gpipe, no link cost: stage 1 ends at 5, stage 0 at 6. A
     * tail of 0.5 on stage 1 hides behind stage 0; 2 shows 1 s of it. */
    memset(&in, 0, sizeof in);
    in.p = 2, in.m = 2;
    in.sched = (nb_sched_spec_t){ NB_SCHED_GPIPE, 0 };
    for (int s = 0; s < 2; s++)
        in.tf[s] = 1, in.tb[s] = 1;
    assert_int_equal(nb_sim_run(&in, &r, NULL, 0, NULL), 0);
    double T = r.step_time;
    assert_true(fabs(T - 6) < 1e-12);
    in.tail[1] = 0.5;
    assert_int_equal(nb_sim_run(&in, &r, NULL, 0, NULL), 0);
    assert_true(fabs(r.step_time - T) < 1e-12 && r.tail_exposed == 0);
    in.tail[1] = 2;
    assert_int_equal(nb_sim_run(&in, &r, NULL, 0, NULL), 0);
    assert_true(fabs(r.step_time - 7) < 1e-12 && fabs(r.tail_exposed - 1) < 1e-12);
    in.tail[0] = 0.25; /* the last stage to finish: all of it shows */
    assert_int_equal(nb_sim_run(&in, &r, NULL, 0, NULL), 0);
    assert_true(fabs(r.step_time - 7) < 1e-12);
    in.tail[1] = 0, in.tail[0] = 0.25;
    assert_int_equal(nb_sim_run(&in, &r, NULL, 0, NULL), 0);
    assert_true(fabs(r.step_time - 6.25) < 1e-12);
    in.tail[0] = NAN;
    assert_int_equal(nb_sim_run(&in, &r, NULL, 0, NULL), NB_EINVAL);
}

/* Two stages on a fast link; stage 0 with R replicas. */
static void two_stages(nb_cost_t *c, nb_plan_req_t *req, int replicas)
{
    memset(c, 0, sizeof *c);
    c->p = 2;
    for (int s = 0; s < 2; s++) {
        c->stage[s].fwd_layer = (nb_fit_t){ 0.002, 0.004 };
        c->stage[s].bwd_layer = (nb_fit_t){ 0.004, 0.008 };
    }
    c->stage[0].replicas = replicas;
    c->stage[0].reduce_bw = 4e9;
    c->link[0].dir[0] = c->link[0].dir[1] = (nb_cost_dir_t){ 0.01, 1.25e9, 0 };
    c->ncodecs = 1;
    c->codec[0] = (nb_cost_codec_t){ "fp32", 1.0, 0, 0, 0 };
    memset(req, 0, sizeof *req);
    req->p = 2;
    assert_int_equal(nb_cost_model_gpt(8, 512, 8, 128, 8192, 1, 32, &req->model), 0);
    req->fixed_layers[0] = req->fixed_layers[1] = 4;
}

static void test_search_share(void **state)
{
    (void)state;
    nb_cost_t c;
    nb_plan_req_t req;
    nb_plan_result_t r;
    char err[256] = "";
    two_stages(&c, &req, 1);
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
    double t1 = r.cand[0].step_time;
    assert_true(r.cand[0].allreduce_s == 0 && r.cand[0].allreduce_share == 0);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_int_equal(nb_plan_print(f, &c, &r, 3), 0);
    fclose(f);
    assert_null(strstr(text, "allreduce")); /* no replicas: no column */
    free(text);
    nb_plan_result_free(&r);

    two_stages(&c, &req, 2);
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
    const nb_plan_cand_t *b = &r.cand[0];
    /* stage 0's embedding + 4 blocks, 2 replicas at 4 GB/s */
    double g = nb_cost_grad_bytes(&req.model, 2, 0, 4), ar = 2.0 * 1 / 2 * g / 4e9;
    assert_true(b->allreduce_s > 0 && b->allreduce_s <= ar + 1e-12);
    assert_true(fabs(b->allreduce_share - b->allreduce_s / b->step_time) < 1e-12);
    /* stage 0 is now faster, stage 1 sets the pace: faster than one replica */
    assert_true(b->step_time < t1);
    char line[320];
    assert_non_null(strstr(nb_plan_describe(&c, b, line, sizeof line), "allreduce="));
    f = open_memstream(&text, &len);
    assert_int_equal(nb_plan_print(f, &c, &r, 3), 0);
    fclose(f);
    assert_non_null(strstr(text, "allreduce"));
    free(text);
    nb_plan_result_free(&r);
    /* a slow reduction costs what the formula says, all of it exposed at
     * the end of stage 0, the last stage to finish its backwards */
    c.stage[0].reduce_bw = 1e7;
    ar = g / 1e7;
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
    assert_true(fabs(r.cand[0].allreduce_s - ar) < 1e-9);
    assert_true(r.cand[0].allreduce_share > 0.5);
    nb_plan_result_free(&r);
}

/* A micro-batch is split across a stage's replicas, so the search never
 * offers one with fewer sequences than a stage has replicas (the stage
 * would refuse it); with more replicas than the global batch nothing is
 * left, and the error says why. */
static void test_search_min_shard(void **state)
{
    (void)state;
    nb_cost_t c;
    nb_plan_req_t req;
    nb_plan_result_t r;
    char err[256] = "";
    two_stages(&c, &req, 4);
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), 0);
    bool small_m = false;
    for (int i = 0; i < r.n; i++) {
        assert_true(r.cand[i].mb_size >= 4);
        small_m |= r.cand[i].m == 8;
    }
    assert_true(small_m); /* global batch 32: m = 8 (4 sequences) is still offered */
    nb_plan_result_free(&r);
    two_stages(&c, &req, 16);
    req.model.global_batch = 8;
    assert_int_equal(nb_plan_search(&c, &req, &r, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "at least one sequence per replica"));
}

/* A replicated stage over its memory limit: the refusal's state and stash
 * add up to the per-device need it states (a shard's stash). */
static void test_oom_line(void **state)
{
    (void)state;
    nb_cost_t c;
    nb_plan_req_t req;
    two_stages(&c, &req, 4);
    c.stage[0].mem_limit = 0.3 * 1024 * 1024 * 1024;
    nb_plan_cand_t out;
    char err[320] = "";
    nb_sched_spec_t gp = { NB_SCHED_GPIPE, 0 };
    assert_int_equal(nb_plan_evaluate(&c, &req.model, 1, &gp, "fp32", "fp32", req.fixed_layers, &out, err,
                                      sizeof err), NB_ELIMIT);
    double need, state_gib, stash;
    const char *at = strstr(err, "needs ");
    assert_non_null(at);
    assert_int_equal(sscanf(at, "needs %lf GiB", &need), 1);
    at = strstr(err, "state ");
    assert_non_null(at);
    assert_int_equal(sscanf(at, "state %lf GiB + stash %lf GiB", &state_gib, &stash), 2);
    /* the state is the whole stage's (every replica holds it), the stash a
     * shard's: 1 of 4 samples' worth of the micro-batch of 32 */
    double gib = 1024.0 * 1024.0 * 1024.0;
    double st = nb_cost_stage_mem(&req.model, 2, 0, 4, 0, 32) / gib;
    double sh = (nb_cost_stage_mem(&req.model, 2, 0, 4, 1, 8) - nb_cost_stage_mem(&req.model, 2, 0, 4, 0, 8)) / gib;
    assert_true(fabs(state_gib - st) < 0.006);
    assert_true(fabs(stash - sh) < 0.006);
    assert_true(fabs(state_gib + stash - need) < 0.011);
}

static void test_peer_values(void **state)
{
    (void)state;
    char err[128] = "";
    assert_int_equal(nb_replica_check(0, 0, NB_REPLICA_MAX, err, sizeof err), 1); /* an older peer */
    assert_int_equal(nb_replica_check(4, 3e9, NB_REPLICA_MAX, err, sizeof err), 4);
    assert_int_equal(nb_replica_check(16, 3e9, NB_REPLICA_MAX, err, sizeof err), 16);
    assert_int_equal(nb_replica_check(17, 3e9, NB_REPLICA_MAX, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "replicas 17 out of range 1..16"));
    assert_int_equal(nb_replica_check(0xffffffffu, 0, NB_REPLICA_MAX, err, sizeof err), NB_EINVAL);
    assert_int_equal(nb_replica_check(2, NAN, NB_REPLICA_MAX, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "reduce bandwidth"));
    assert_int_equal(nb_replica_check(2, -1, NB_REPLICA_MAX, err, sizeof err), NB_EINVAL);
    /* a positive rate below 1 MB/s would price every plan at infinity */
    assert_int_equal(nb_replica_check(2, 1e-300, NB_REPLICA_MAX, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "not 0 (unknown) or a finite value in 1e6..1e15"));
    assert_int_equal(nb_replica_check(2, 1e6, NB_REPLICA_MAX, err, sizeof err), 2);
    /* the machine's figure: some positive rate (not a speed test) */
    double bw = nb_replica_reduce_bw(1 << 20, 2);
    assert_true(bw > 0 && isfinite(bw));
    assert_true(nb_replica_reduce_bw(16, 2) == 0);
    assert_true(nb_replica_local_bw(1, false) == 0);
    assert_true(nb_replica_local_bw(2, true) == NB_COST_REDUCE_BW_NCCL);
    assert_true(nb_replica_local_bw(2, false) > 0);
}

static const char *meas_fmt =
    "{\"nebula_measurements\": 1,\n"
    " \"stages\": [{\"name\": \"a\", \"forward_layer_s\": {\"a\": 0.001, \"b\": 0.002},\n"
    "              \"backward_layer_s\": {\"a\": 0.002, \"b\": 0.004}%s},\n"
    "            {\"name\": \"b\", \"forward_layer_s\": {\"a\": 0.001, \"b\": 0.002},\n"
    "              \"backward_layer_s\": {\"a\": 0.002, \"b\": 0.004}}],\n"
    " \"links\": [{\"between\": [0, 1],\n"
    "   \"forward\": {\"latency_ms\": 10, \"bandwidth_mbit\": 100},\n"
    "   \"backward\": {\"latency_ms\": 10, \"bandwidth_mbit\": 100}}],\n"
    " \"codecs\": [{\"spec\": \"fp32\", \"ratio\": 1.0}]}\n";

static int parse_with(const char *extra, nb_cost_t *c, char *err, size_t len)
{
    char buf[2048];
    snprintf(buf, sizeof buf, meas_fmt, extra);
    return nb_measure_parse(buf, "m.json", c, err, len);
}

static void test_measurements_file(void **state)
{
    (void)state;
    nb_cost_t c;
    char err[256] = "";
    assert_int_equal(parse_with("", &c, err, sizeof err), 0);
    assert_int_equal(nb_cost_replicas(&c, 0), 1);
    assert_int_equal(
        parse_with(", \"replicas\": 8, \"reduce_gbyte_s\": 2.5, \"replica_overhead_ms\": 0.2", &c, err, sizeof err),
        0);
    assert_int_equal(nb_cost_replicas(&c, 0), 8);
    assert_true(fabs(c.stage[0].reduce_bw - 2.5e9) < 1);
    assert_true(fabs(c.stage[0].replica_overhead - 2e-4) < 1e-12);
    assert_int_equal(nb_cost_replicas(&c, 1), 1);
    assert_int_equal(parse_with(", \"replicas\": 0", &c, err, sizeof err), NB_EFORMAT);
    assert_non_null(strstr(err, "stages[0].replicas"));
    assert_int_equal(parse_with(", \"replicas\": 17", &c, err, sizeof err), NB_EFORMAT);
    assert_non_null(strstr(err, "stages[0].replicas: 17"));
    assert_int_equal(parse_with(", \"replicas\": 1.5", &c, err, sizeof err), NB_EFORMAT);
    assert_int_equal(parse_with(", \"reduce_gbyte_s\": -1", &c, err, sizeof err), NB_EFORMAT);
    assert_non_null(strstr(err, "reduce_gbyte_s"));
}

/* nebulactl plan --job ... --measurements: the header names the replicas,
 * the table has the all-reduce column. */
static void test_offline_table(void **state)
{
    (void)state;
    char path[] = "/tmp/nb-test-replica-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    char buf[2048];
    snprintf(buf, sizeof buf, meas_fmt, ", \"replicas\": 4, \"reduce_gbyte_s\": 8");
    FILE *f = fdopen(fd, "w");
    fputs(buf, f);
    fclose(f);
    nb_cost_t c;
    nb_plan_req_t req;
    two_stages(&c, &req, 1);
    char *text = NULL, err[256] = "";
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    int rc = nb_plan_offline(out, &req, path, 0, 3, NULL, err, sizeof err);
    fclose(out);
    unlink(path);
    if (rc)
        fail_msg("%s", err);
    assert_non_null(strstr(text, "4 replicas (all-reduce at 8.0 GB/s)"));
    assert_non_null(strstr(text, "allreduce"));
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compute_split),   cmocka_unit_test(test_allreduce_cost),
        cmocka_unit_test(test_sim_tail),        cmocka_unit_test(test_search_share),
        cmocka_unit_test(test_search_min_shard),
        cmocka_unit_test(test_peer_values),     cmocka_unit_test(test_measurements_file),
        cmocka_unit_test(test_offline_table),   cmocka_unit_test(test_oom_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
