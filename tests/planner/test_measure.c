/* test_measure.c - the measurements file (the example in tests/planner/data
 * and malformed variants, each with an error naming file and field) and
 * offline planning with a bandwidth override. Run from the repository root. */
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
#include "kernels/common.h"

#define EXAMPLE "tests/planner/data/measurements-2cloud.json"

static void test_load_example(void **state)
{
    (void)state;
    nb_cost_t c;
    char err[256] = "";
    int rc = nb_measure_load(EXAMPLE, &c, err, sizeof err);
    if (rc)
        fail_msg("%s", err);
    assert_int_equal(c.p, 2);
    assert_string_equal(c.stage[0].name, "east-a100");
    assert_true(fabs(c.stage[0].mem_limit - 24.0 * 1024 * 1024 * 1024) < 1);
    assert_true(fabs(c.stage[0].fwd_layer.b - 0.0021) < 1e-15);
    /* Fitted from sizes and times: 0.0018 + 0.0053 n. */
    assert_true(fabs(c.stage[1].fwd_layer.a - 0.0018) < 1e-9);
    assert_true(fabs(c.stage[1].fwd_layer.b - 0.0053) < 1e-9);
    assert_true(fabs(c.link[0].dir[NB_DIR_FWD].bandwidth - 12.5e6) < 1e-6);
    assert_true(fabs(c.link[0].dir[NB_DIR_BWD].latency - 0.035) < 1e-12);
    assert_true(fabs(c.link[0].dir[NB_DIR_FWD].overhead - 0.002) < 1e-12);
    assert_int_equal(c.ncodecs, 4);
    const nb_cost_codec_t *svd = nb_cost_codec_find(&c, "fp16(svd(0.6))");
    assert_non_null(svd);
    assert_int_equal(svd->lossiness, 3);
    assert_true(fabs(svd->enc_per_byte - 2.5e-9) < 1e-18);
    assert_true(fabs(nb_cost_codec_find(&c, "fp32")->enc_per_byte) == 0);
}

static const char *GOOD =
    "{\"nebula_measurements\": 1,"
    " \"stages\": [{\"forward_layer_s\": {\"a\": 0, \"b\": 1}, \"backward_layer_s\": {\"a\": 0, "
    "\"b\": 2}},"
    "              {\"forward_layer_s\": {\"a\": 0, \"b\": 1}, \"backward_layer_s\": {\"a\": 0, "
    "\"b\": 2}}],"
    " \"links\": [{\"between\": [0, 1], \"forward\": {\"latency_ms\": 1, \"bandwidth_mbit\": 10},"
    "             \"backward\": {\"latency_ms\": 1, \"bandwidth_mbit\": 10}}],"
    " \"codecs\": [{\"spec\": \"fp32\", \"ratio\": 1}]}";

/* Replaces the first occurrence of from in GOOD by to. */
static char *variant(const char *from, const char *to)
{
    const char *at = strstr(GOOD, from);
    assert_non_null(at);
    size_t n = strlen(GOOD) - strlen(from) + strlen(to) + 1;
    char *s = malloc(n);
    snprintf(s, n, "%.*s%s%s", (int)(at - GOOD), GOOD, to, at + strlen(from));
    return s;
}

static void test_malformed(void **state)
{
    (void)state;
    nb_cost_t c;
    char err[256];
    assert_int_equal(nb_measure_parse(GOOD, "good.json", &c, err, sizeof err), 0);
    assert_int_equal(c.p, 2);
    assert_true(c.codec_err[0] == 0); /* absent: 0 */
    char *with_err = variant("\"ratio\": 1", "\"ratio\": 1, \"error\": 0.125");
    assert_int_equal(nb_measure_parse(with_err, "good.json", &c, err, sizeof err), 0);
    assert_true(c.codec_err[0] == 0.125);
    free(with_err);
    struct {
        const char *from, *to;
        int rc;
        const char *want;
    } cases[] = {
        {"\"nebula_measurements\": 1", "\"nebula_measurements\": 2", NB_EVERSION,
         "version 2"},
        {"\"nebula_measurements\": 1,", "", NB_EFORMAT, "nebula_measurements: missing"},
        {"\"bandwidth_mbit\": 10", "\"bandwidth_mbit\": -10", NB_EFORMAT,
         "links[0].forward.bandwidth_mbit: -10 is out of range"},
        {"\"bandwidth_mbit\": 10", "\"bandwidth_mbit\": \"fast\"", NB_EFORMAT,
         "links[0].forward.bandwidth_mbit: expected a number"},
        {"\"bandwidth_mbit\": 10", "\"bandwith_mbit\": 10", NB_EFORMAT,
         "links[0].forward.bandwith_mbit: unknown field"},
        {"\"between\": [0, 1]", "\"between\": [1, 2]", NB_EFORMAT, "links[0].between"},
        {"{\"a\": 0, \"b\": 1}", "{\"a\": 0}", NB_EFORMAT, "stages[0].forward_layer_s.b: missing"},
        {"{\"a\": 0, \"b\": 1}", "{\"sizes\": [1, 2], \"times\": [1]}", NB_EFORMAT,
         "stages[0].forward_layer_s: sizes and times"},
        {"\"ratio\": 1", "\"ratio\": 1.5", NB_EFORMAT, "codecs[0].ratio"},
        {"\"ratio\": 1", "\"ratio\": 1, \"error\": -0.1", NB_EFORMAT, "codecs[0].error: -0.1 is out of range"},
        {"\"spec\": \"fp32\", ", "", NB_EFORMAT, "codecs[0].spec: missing"},
        {"\"links\": [{", "\"linkz\": [{", NB_EFORMAT, "linkz: unknown field"},
        {"\"codecs\": [{\"spec\": \"fp32\", \"ratio\": 1}]", "\"codecs\": []", NB_EFORMAT,
         "codecs: expected an array of 1"},
        {"}]}", "}]", NB_EFORMAT, "line "},
    };
    for (size_t i = 0; i < NB_ARRAY_LEN(cases); i++) {
        char *s = variant(cases[i].from, cases[i].to);
        memset(&c, 0x5a, sizeof c);
        int rc = nb_measure_parse(s, "bad.json", &c, err, sizeof err);
        if (rc != cases[i].rc || !strstr(err, cases[i].want) || strncmp(err, "bad.json: ", 10))
            fail_msg("case %zu: rc %d err '%s' (want %d, '%s')", i, rc, err, cases[i].rc,
                     cases[i].want);
        free(s);
    }
    assert_int_equal(nb_measure_load("tests/planner/data/no-such-file.json", &c, err, sizeof err),
                     NB_EIO);
    assert_non_null(strstr(err, "no-such-file.json: cannot open"));
}

static nb_plan_req_t gpt_small(void)
{
    nb_plan_req_t r;
    memset(&r, 0, sizeof r);
    r.model = (nb_cost_model_t){
        .n_layers = 12,
        .params_per_layer = 7.1e6,
        .embed_params = 39e6,
        .head_params = 0,
        .state_bytes_per_param = 16,
        .act_bytes_per_sample_layer = 34.0 * 512 * 768,
        .boundary_bytes_per_sample = 512.0 * 768 * 4,
        .global_batch = 32,
    };
    return r;
}

/* "What if the link were 20 Mbit/s": slower, and no less compression. */
static void test_offline_what_if(void **state)
{
    (void)state;
    nb_plan_req_t req = gpt_small();
    char err[256] = "";
    char *buf = NULL;
    size_t len = 0;
    nb_plan_cand_t at100, at20, at10g;
    FILE *f = open_memstream(&buf, &len);
    int rc = nb_plan_offline(f, &req, EXAMPLE, 0, 10, &at100, err, sizeof err);
    fclose(f);
    if (rc)
        fail_msg("%s", err);
    print_message("%s", buf);
    assert_non_null(strstr(buf, "chosen: m="));
    assert_non_null(strstr(buf, "link 0-1 forward 100.0 Mbit/s 35.0 ms"));
    assert_non_null(strstr(buf, "<- chosen"));
    free(buf);
    f = open_memstream(&buf, &len);
    assert_int_equal(nb_plan_offline(f, &req, EXAMPLE, 20, 5, &at20, err, sizeof err), 0);
    fclose(f);
    print_message("%s", buf);
    assert_non_null(strstr(buf, "20.0 Mbit/s"));
    assert_non_null(strstr(buf, "(bandwidth overridden)"));
    free(buf);
    f = open_memstream(&buf, &len);
    assert_int_equal(nb_plan_offline(f, &req, EXAMPLE, 10000, 5, &at10g, err, sizeof err), 0);
    fclose(f);
    free(buf);
    nb_cost_t c;
    assert_int_equal(nb_measure_load(EXAMPLE, &c, err, sizeof err), 0);
    assert_true(at20.step_time > at100.step_time);
    assert_true(at10g.step_time < at100.step_time);
    assert_true(c.codec[at20.fwd_codec].ratio <= c.codec[at100.fwd_codec].ratio);
    /* On a 10 Gbit/s link compression stops paying: the exact codec wins. */
    assert_string_equal(c.codec[at10g.fwd_codec].spec, "fp32");
    /* The slower west cluster gets fewer blocks. */
    assert_true(at10g.layers[1] < at10g.layers[0]);

    f = open_memstream(&buf, &len);
    assert_int_equal(nb_plan_offline(f, &req, EXAMPLE, -1, 5, NULL, err, sizeof err), NB_EINVAL);
    assert_int_equal(nb_plan_offline(f, &req, "tests/planner/data/none.json", 0, 5, NULL, err,
                                     sizeof err),
                     NB_EIO);
    fclose(f);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_example),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_offline_what_if),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
