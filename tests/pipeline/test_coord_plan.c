/* test_coord_plan.c - the coordinator's planning glue driven by synthetic
 * step reports from a known world (two stages whose forward takes
 * 2 ms + 4 ms per sequence and backward twice that, a 100 Mbit/s link): the
 * profiling steps run two micro-batch sizes, the fitted compute equals the
 * world's, the chosen plan's prediction equals nb_plan_evaluate's, a link
 * that drops to a fifth triggers exactly one re-plan after replan_steps
 * steps and the model takes the new bandwidth, a pin is checked and obeyed,
 * and the "plan" reply lists ranked candidates and the measured history.
 * Run from the repository root. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/pipeline/coord_plan.h"
#include "daemon/planner/plan_config.h"
#include "kernels/common.h"

static const char *cfg_text =
    "name: coord\n"
    "role: coordinator\n"
    "listen: 127.0.0.1:0\n"
    "tls: {cert: c.pem, key: c.key, ca: ca.pem}\n"
    "job:\n"
    "  model: {n_layer: 4, d_model: 64, n_head: 4, d_ff: 256, vocab: 256, max_seq: 32, tie_embeddings: false}\n"
    "  data: data.tok\n"
    "  batch: 16\n"
    "  seq_len: 32\n"
    "  steps: 1000\n"
    "  micro_batches: auto\n"
    "  schedule: auto\n"
    "  codecs: {forward: fp32, backward: fp32}\n"
    "  clusters:\n"
    "    - {name: a, address: 127.0.0.1:1}\n"
    "    - {name: b, address: 127.0.0.1:2}\n"
    "  planner: {enabled: true, codecs: [fp32, fp16], replan_steps: 3, replan_threshold: 0.2}\n";

#define LINK_BPS 12.5e6 /* 100 Mbit/s */

typedef struct {
    nb_config_t cfg;
    nb_job_desc_t desc;
    nb_cplan_t *cp;
    double rx_bps; /* the link's rate this step (the passive estimates say so too) */
    nb_plan_req_t req;
} world_t;

static double w_fwd(int n) { return 0.002 + 0.004 * n; }
static double w_bwd(int n) { return 2 * w_fwd(n); }

static int setup(void **state)
{
    world_t *w = calloc(1, sizeof *w);
    char err[512] = "";
    if (nb_cfg_load_string("coord.yaml", cfg_text, strlen(cfg_text), &w->cfg, err, sizeof err))
        fail_msg("config: %s", err);
    if (nb_job_from_cfg(&w->cfg.job, 4, 77, &w->desc, err, sizeof err))
        fail_msg("job: %s", err);
    if (nb_cplan_new(&w->cfg.job, &w->desc, 4, &w->cp, err, sizeof err))
        fail_msg("planner: %s", err);
    w->rx_bps = LINK_BPS;
    if (nb_plan_req_from_config(&w->cfg.job, &w->req, err, sizeof err))
        fail_msg("request: %s", err);
    *state = w;
    return 0;
}

static int teardown(void **state)
{
    world_t *w = *state;
    nb_cplan_free(w->cp);
    free(w);
    return 0;
}

/* One step of plan ps in the synthetic world: both daemons report. */
static void run_step(world_t *w, int64_t step, const nb_cplan_step_t *ps)
{
    int m = ps->m, n = ps->mb_size;
    for (int d = 0; d < 2; d++) {
        Nebula__MicroBatchTiming *tm = calloc((size_t)m, sizeof *tm), **tp = calloc((size_t)m, sizeof *tp);
        for (int i = 0; i < m; i++) {
            nebula__micro_batch_timing__init(&tm[i]);
            tm[i].stage = (uint32_t)d;
            tm[i].micro_batch = (uint32_t)i;
            tm[i].forward_ns = (uint64_t)(w_fwd(n) * 1e9);
            tm[i].backward_ns = (uint64_t)(w_bwd(n) * 1e9);
            tp[i] = &tm[i];
        }
        Nebula__LinkMeasurement lm = NEBULA__LINK_MEASUREMENT__INIT, *lp = &lm;
        lm.peer = (uint32_t)(1 - d);
        lm.rx_bytes_per_s = w->rx_bps;
        Nebula__Report r = NEBULA__REPORT__INIT;
        r.step = (uint64_t)step;
        r.daemon = (uint32_t)d;
        r.n_timings = (size_t)m;
        r.timings = tp;
        r.n_links = 1;
        r.links = &lp;
        nb_cplan_report(w->cp, d, &r);
        free(tm);
        free(tp);
    }
    /* the step takes what the world's exact model says, plus 5 ms of commit
     * and optimizer: the planner's codecs, the world's compute and link */
    nb_cost_t *truth = malloc(sizeof *truth);
    *truth = *nb_cplan_cost(w->cp);
    for (int st = 0; st < 2; st++) {
        truth->stage[st].fwd_layer = (nb_fit_t){ 0.001, 0.002 };
        truth->stage[st].bwd_layer = (nb_fit_t){ 0.002, 0.004 };
        truth->stage[st].fwd_fixed = truth->stage[st].bwd_fixed = (nb_fit_t){ 0, 0 };
    }
    for (int d = 0; d < 2; d++)
        truth->link[0].dir[d] = (nb_cost_dir_t){ .latency = 0.001, .bandwidth = w->rx_bps, .overhead = 0 };
    int layers[2] = { 2, 2 };
    nb_plan_cand_t c;
    char err[256];
    assert_int_equal(nb_plan_evaluate(truth, &w->req.model, m, &ps->sched, ps->fwd, ps->bwd, layers, &c, err,
                                      sizeof err), 0);
    free(truth);
    nb_cplan_step_done(w->cp, step, c.step_time + 0.005, c.step_time);
}

static void test_profile_fit_plan(void **state)
{
    world_t *w = *state;
    nb_cplan_link_probe(w->cp, 0, 1, 2.0, LINK_BPS);
    nb_cplan_link_probe(w->cp, 1, 0, 2.0, LINK_BPS);
    nb_cplan_link_probe(w->cp, 5, 0, 2.0, 1); /* out of range: ignored */
    nb_cplan_link_probe(w->cp, 0, 1, NAN, INFINITY); /* a peer's nonsense: ignored */
    nb_cplan_link_probe(w->cp, 1, 0, -1, -5);
    nb_cplan_step_t ps;
    int seen_m[3];
    for (int64_t s = 0; s < 3; s++) {
        assert_int_equal(nb_cplan_plan(w->cp, s, &ps), 0);
        assert_string_equal(ps.why, "profiling");
        assert_true(ps.pred_step_s < 0);
        seen_m[s] = ps.m;
        run_step(w, s, &ps);
    }
    assert_int_equal(seen_m[0], 4);
    assert_int_equal(seen_m[1], 4);
    assert_int_equal(seen_m[2], 8); /* the divisor of 16 nearest 2 m0 */
    /* the fit is the world's line: t(n) = 2 ms + 4 ms n */
    const nb_cost_t *c = nb_cplan_cost(w->cp);
    for (int st = 0; st < 2; st++)
        for (int n = 1; n <= 16; n *= 2) {
            assert_true(fabs(nb_cost_fwd(c, st, 2, n) - w_fwd(n)) < 1e-6);
            assert_true(fabs(nb_cost_bwd(c, st, 2, n) - w_bwd(n)) < 1e-6);
        }
    assert_true(fabs(c->link[0].dir[NB_DIR_FWD].bandwidth - LINK_BPS) < 1);
    assert_true(fabs(c->link[0].dir[NB_DIR_BWD].latency - 0.001) < 1e-9);
    assert_int_equal(nb_cplan_plan(w->cp, 3, &ps), 0);
    assert_string_equal(ps.why, "planned");
    assert_true(ps.pred_step_s > 0);
    assert_true(ps.pred_bubble >= 0 && ps.pred_bubble < 1);
    assert_int_equal(16 % ps.m, 0);
    assert_int_equal(ps.mb_size * ps.m, 16);
    /* the prediction equals nb_plan_evaluate on the same model */
    nb_plan_req_t req;
    char err[256];
    assert_int_equal(nb_plan_req_from_config(&w->cfg.job, &req, err, sizeof err), 0);
    int layers[2] = { 2, 2 };
    nb_plan_cand_t ev;
    assert_int_equal(nb_plan_evaluate(c, &req.model, ps.m, &ps.sched, ps.fwd, ps.bwd, layers, &ev, err, sizeof err),
                     0);
    assert_true(fabs(ev.step_time - ps.pred_step_s) < 1e-12);
    /* and it is the fastest of every m and schedule (fp32 both ways) */
    int ms[] = { 1, 2, 4, 8, 16 };
    nb_sched_spec_t sc[] = { { NB_SCHED_GPIPE, 0 }, { NB_SCHED_1F1B, 0 } };
    for (size_t i = 0; i < 5; i++)
        for (size_t k = 0; k < 2; k++) {
            nb_plan_cand_t o;
            assert_int_equal(nb_plan_evaluate(c, &req.model, ms[i], &sc[k], "fp32", "fp32", layers, &o, err,
                                              sizeof err), 0);
            assert_true(ps.pred_step_s <= o.step_time * 1.005 + 1e-12);
        }
}

static void test_replan_on_link_drop(void **state)
{
    world_t *w = *state;
    nb_cplan_link_probe(w->cp, 0, 1, 2.0, LINK_BPS);
    nb_cplan_link_probe(w->cp, 1, 0, 2.0, LINK_BPS);
    nb_cplan_step_t ps;
    int64_t s = 0;
    for (; s < 12; s++) { /* profiling, plan, settle the basis, steady */
        nb_cplan_plan(w->cp, s, &ps);
        run_step(w, s, &ps);
    }
    assert_string_equal(ps.why, "planned");
    assert_int_equal(nb_cplan_replans(w->cp), 0);
    double before = ps.pred_step_s;
    w->rx_bps = LINK_BPS / 5;
    int fired_at = -1;
    for (int k = 0; k < 6 && fired_at < 0; k++, s++) {
        nb_cplan_plan(w->cp, s, &ps);
        if (strcmp(ps.why, "re-planned") == 0)
            fired_at = k;
        run_step(w, s, &ps);
    }
    /* the third slow step fires, the next boundary re-plans */
    assert_int_equal(fired_at, 3);
    assert_int_equal(nb_cplan_replans(w->cp), 1);
    const nb_cost_t *c = nb_cplan_cost(w->cp);
    assert_true(fabs(c->link[0].dir[NB_DIR_FWD].bandwidth - LINK_BPS / 5) < 1);
    assert_true(fabs(c->link[0].dir[NB_DIR_BWD].bandwidth - LINK_BPS / 5) < 1);
    assert_true(ps.pred_step_s > before);
    /* steady at the new rate: no further re-plans */
    for (int k = 0; k < 20; k++, s++) {
        nb_cplan_plan(w->cp, s, &ps);
        run_step(w, s, &ps);
    }
    assert_int_equal(nb_cplan_replans(w->cp), 1);
    /* the world has no per-message cost: the calibration finds none */
    assert_true(nb_cplan_cost(w->cp)->link[0].dir[NB_DIR_FWD].overhead < 1e-9);
}

static void test_pin_and_json(void **state)
{
    world_t *w = *state;
    nb_cplan_link_probe(w->cp, 0, 1, 2.0, LINK_BPS);
    nb_cplan_link_probe(w->cp, 1, 0, 2.0, LINK_BPS);
    nb_cplan_step_t ps;
    int64_t s = 0;
    for (; s < 6; s++) {
        nb_cplan_plan(w->cp, s, &ps);
        run_step(w, s, &ps);
    }
    char err[256] = "";
    nb_cplan_step_t pin = { .m = 3, .sched = { NB_SCHED_GPIPE, 0 } };
    snprintf(pin.fwd, sizeof pin.fwd, "fp16");
    snprintf(pin.bwd, sizeof pin.bwd, "fp32");
    assert_int_equal(nb_cplan_pin(w->cp, &pin, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "does not divide"));
    pin.m = 2;
    snprintf(pin.fwd, sizeof pin.fwd, "int4");
    assert_int_equal(nb_cplan_pin(w->cp, &pin, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "not among"));
    snprintf(pin.fwd, sizeof pin.fwd, "fp16");
    assert_int_equal(nb_cplan_pin(w->cp, &pin, err, sizeof err), 0);
    for (int k = 0; k < 3; k++, s++) {
        nb_cplan_plan(w->cp, s, &ps);
        assert_int_equal(ps.m, 2);
        assert_int_equal(ps.sched.kind, NB_SCHED_GPIPE);
        assert_string_equal(ps.fwd, "fp16");
        assert_string_equal(ps.why, "pinned");
        assert_true(ps.pred_step_s > 0);
        run_step(w, s, &ps);
    }
    assert_null(nb_cplan_json(w->cp, 5, -3, err, sizeof err));
    assert_non_null(strstr(err, "bandwidth"));
    json_t *j = nb_cplan_json(w->cp, 5, 0, err, sizeof err);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "pinned");
    json_t *cands = json_object_get(j, "candidates");
    assert_int_equal(json_array_size(cands), 5);
    /* ranked: nothing beats the choice by more than the near-tie window */
    double first = json_number_value(json_object_get(json_array_get(cands, 0), "step_s")), prev = 0;
    for (size_t i = 0; i < 5; i++) {
        double t = json_number_value(json_object_get(json_array_get(cands, i), "step_s"));
        assert_true(t >= first * (1 - 0.005) - 1e-12);
        prev = fmax(prev, t);
    }
    assert_non_null(strstr(json_string_value(json_object_get(j, "table")), "<- chosen"));
    json_t *h = json_object_get(j, "history");
    assert_true(json_array_size(h) >= 2);
    bool found = false;
    for (size_t i = 0; i < json_array_size(h); i++) {
        json_t *x = json_array_get(h, i);
        if (json_integer_value(json_object_get(x, "m")) == 2 &&
            strcmp(json_string_value(json_object_get(x, "forward")), "fp16") == 0) {
            found = true;
            /* pinned steps took the prediction + 5 ms: the history says so */
            double meas = json_number_value(json_object_get(x, "measured_step_s"));
            double pred = json_number_value(json_object_get(x, "predicted_with_overhead_s"));
            assert_int_equal(json_integer_value(json_object_get(x, "steps")), 2);
            assert_true(fabs(pred / meas - 1) < 0.01);
        }
    }
    assert_true(found);
    json_decref(j);
    /* what if the link were 1 Mbit/s: slower predictions */
    j = nb_cplan_json(w->cp, 1, 1, err, sizeof err);
    assert_non_null(j);
    double slow = json_number_value(json_object_get(json_array_get(json_object_get(j, "candidates"), 0), "step_s"));
    assert_true(slow > prev);
    json_decref(j);
    assert_int_equal(nb_cplan_pin(w->cp, NULL, err, sizeof err), 0);
    nb_cplan_plan(w->cp, s, &ps);
    assert_string_equal(ps.why, "planned");
}

static void test_wanted(void **state)
{
    world_t *w = *state;
    nb_cfg_job_t j = w->cfg.job;
    assert_true(nb_cplan_wanted(&j));
    j.micro_batches = 4;
    j.schedule = NB_CFG_SCHED_1F1B;
    j.planner.n_codecs = 0;
    assert_false(nb_cplan_wanted(&j)); /* nothing left to choose: run as without a planner */
    j.planner.n_codecs = 2;
    assert_true(nb_cplan_wanted(&j));
    j.planner.enabled = false;
    assert_false(nb_cplan_wanted(&j));
    /* a codec the codec module does not know is refused with its key */
    char err[256] = "";
    nb_cplan_t *cp = NULL;
    j = w->cfg.job;
    snprintf(j.planner.codecs[1], sizeof j.planner.codecs[1], "fp17");
    assert_int_equal(nb_cplan_new(&j, &w->desc, 4, &cp, err, sizeof err), NB_EINVAL);
    assert_null(cp);
    assert_non_null(strstr(err, "job.planner.codecs"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_profile_fit_plan, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replan_on_link_drop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pin_and_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wanted, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
