/* test_plan_config.c - the job section of the example coordinator configs
 * mapped onto planner requests, and planned offline against the example
 * measurements (chain with a pinned split; U-shape with the head back on the
 * first cluster). Run from the repository root. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/planner/measure.h"
#include "daemon/planner/offline.h"
#include "daemon/planner/plan_config.h"
#include "kernels/common.h"

static nb_config_t *load(const char *path)
{
    nb_config_t *cfg = malloc(sizeof *cfg);
    char err[512] = "";
    int rc = nb_cfg_load(path, cfg, err, sizeof err);
    if (rc)
        fail_msg("%s: %s", path, err);
    return cfg;
}

static void test_chain_pinned_split(void **state)
{
    (void)state;
    nb_config_t *cfg = load("config/2-cluster/coordinator.yaml");
    nb_plan_req_t req;
    char err[512] = "";
    assert_int_equal(nb_plan_req_from_config(&cfg->job, &req, err, sizeof err), 0);
    assert_int_equal(req.p, 2);
    assert_int_equal(req.model.n_layers, 12);
    assert_int_equal(req.model.global_batch, 64);
    /* GPT-2 small: 7.08 M parameters per block. */
    assert_true(fabs(req.model.params_per_layer - 7087872) < 1);
    assert_true(fabs(req.model.boundary_bytes_per_sample - 4.0 * 1024 * 768) < 1);
    assert_int_equal(req.fixed_layers[0], 6);
    assert_int_equal(req.fixed_layers[1], 6);
    assert_int_equal(req.nfwd, 4);
    assert_string_equal(req.fwd_codecs[3], "fp16(svd(0.6))");
    assert_int_equal(req.nscheds, 0); /* schedule: auto */
    assert_int_equal(req.m_min, 0);   /* micro_batches: auto */
    assert_int_equal(req.head_only_last, 0);

    char *buf = NULL;
    size_t len = 0;
    nb_plan_cand_t chosen;
    FILE *f = open_memstream(&buf, &len);
    int rc = nb_plan_offline(f, &req, "tests/planner/data/measurements-2cloud.json", 0, 5,
                             &chosen, err, sizeof err);
    fclose(f);
    if (rc)
        fail_msg("%s", err);
    print_message("%s", buf);
    assert_int_equal(chosen.layers[0], 6);
    assert_int_equal(chosen.layers[1], 6);
    free(buf);
    free(cfg);
}

static void test_u_shape(void **state)
{
    (void)state;
    nb_config_t *cfg = load("config/3-cluster/coordinator.yaml");
    nb_plan_req_t req;
    char err[512] = "";
    assert_int_equal(nb_plan_config_stages(&cfg->job), 4);
    assert_int_equal(nb_plan_req_from_config(&cfg->job, &req, err, sizeof err), 0);
    assert_int_equal(req.p, 4);
    assert_int_equal(req.head_only_last, 1);
    assert_int_equal(req.use_placement, 1);
    assert_int_equal(req.placement[3], 0);
    assert_int_equal(req.placement[2], 2);
    assert_int_equal(req.fixed_layers[0], 0); /* layers: auto */

    nb_cost_t cost;
    assert_int_equal(nb_measure_load("tests/planner/data/measurements-3cluster-ushape.json",
                                     &cost, err, sizeof err),
                     0);
    nb_plan_config_memory(&cfg->job, &cost);
    assert_true(fabs(cost.stage[3].mem_limit - 80.0 * 1024 * 1024 * 1024) < 1);
    assert_true(fabs(cost.stage[2].mem_limit - 40.0 * 1024 * 1024 * 1024) < 1);
    nb_plan_result_t r;
    int rc = nb_plan_search(&cost, &req, &r, err, sizeof err);
    if (rc)
        fail_msg("%s", err);
    const nb_plan_cand_t *c = &r.cand[0];
    char line[256];
    print_message("chosen: %s\n", nb_plan_describe(&cost, c, line, sizeof line));
    assert_int_equal(c->layers[3], 0);
    assert_int_equal(c->layers[0] + c->layers[1] + c->layers[2], 24);
    /* far is about half as fast per block as home and mid. */
    assert_true(c->layers[2] < c->layers[1]);
    assert_int_equal(128 % c->m, 0);
    nb_plan_result_free(&r);
    free(cfg);
}

/* job.lowrank: the request's cut widths come from the model family
 * (nb_part_spec_out_width): a split in block 8 at rank 8 makes the cut
 * after 9 blocks carry 8 of 768 floats per position, every other cut
 * d_model; a split in the top block makes the cut after all 12 narrow (the
 * U-shape's last link); rank 0, or a rank as wide as d_model, narrows
 * nothing. */
static void test_lowrank_widths(void **state)
{
    (void)state;
    nb_config_t *cfg = load("config/2-cluster/coordinator.yaml");
    nb_plan_req_t req;
    char err[512] = "";
    assert_int_equal(nb_plan_req_from_config(&cfg->job, &req, err, sizeof err), 0);
    assert_int_equal(req.model.narrow_cut, 0);
    static const struct { int block, rank, cut; } cases[] = { { 8, 8, 9 }, { 11, 32, 12 }, { 0, 16, 1 },
                                                               { 4, 768, 0 } };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        cfg->job.lowrank.block = cases[k].block;
        cfg->job.lowrank.rank = cases[k].rank;
        assert_int_equal(nb_plan_req_from_config(&cfg->job, &req, err, sizeof err), 0);
        print_message("lowrank block %d rank %d: narrow cut after %d blocks, %.0f of %.0f bytes per sample\n",
                      cases[k].block, cases[k].rank, req.model.narrow_cut, req.model.narrow_bytes_per_sample,
                      req.model.boundary_bytes_per_sample);
        assert_int_equal(req.model.narrow_cut, cases[k].cut);
        if (cases[k].cut)
            assert_true(fabs(req.model.narrow_bytes_per_sample -
                             req.model.boundary_bytes_per_sample * cases[k].rank / 768.0) < 1e-6);
        for (int cut = 1; cut <= 12; cut++)
            assert_true(nb_cost_cut_bytes(&req.model, cut) ==
                        (cut == cases[k].cut ? req.model.narrow_bytes_per_sample
                                             : req.model.boundary_bytes_per_sample));
    }
    free(cfg);
}

static void test_pins_and_errors(void **state)
{
    (void)state;
    nb_config_t *cfg = load("config/demo/coordinator.yaml");
    nb_plan_req_t req;
    char err[512] = "";
    /* the demo leaves m and the schedule to the planner */
    assert_int_equal(nb_plan_req_from_config(&cfg->job, &req, err, sizeof err), 0);
    assert_int_equal(req.m_min, 0); /* 0: every divisor of the batch */
    assert_int_equal(req.m_max, 0);
    assert_int_equal(req.nscheds, 0); /* 0: every schedule */
    /* pinned, they are all the planner may use */
    cfg->job.micro_batches = 4;
    cfg->job.schedule = NB_CFG_SCHED_1F1B;
    assert_int_equal(nb_plan_req_from_config(&cfg->job, &req, err, sizeof err), 0);
    assert_int_equal(req.m_min, 4);
    assert_int_equal(req.m_max, 4);
    assert_int_equal(req.nscheds, 1);
    assert_int_equal(req.scheds[0].kind, NB_SCHED_1F1B);
    assert_int_equal(req.nfwd, 1); /* no planner.codecs: the pinned ones */
    assert_string_equal(req.fwd_codecs[0], "fp16"); /* as config/demo pins them */
    assert_string_equal(req.bwd_codecs[0], "int8");
    /* A tied head costs only its final LayerNorm. */
    nb_cfg_job_t job = cfg->job;
    job.model.tie_embeddings = true;
    assert_int_equal(nb_plan_req_from_config(&job, &req, err, sizeof err), 0);
    assert_true(fabs(req.model.head_params - 2 * cfg->job.model.d_model) < 1e-9);
    job.clusters[1].layers_auto = true;
    assert_int_equal(nb_plan_req_from_config(&job, &req, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "job.clusters[].layers"));
    job = cfg->job;
    job.present = false;
    assert_int_equal(nb_plan_req_from_config(&job, &req, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "no job section"));
    free(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chain_pinned_split),
        cmocka_unit_test(test_u_shape),
        cmocka_unit_test(test_pins_and_errors),
        cmocka_unit_test(test_lowrank_widths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
