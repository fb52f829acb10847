/* test_job_msg.c - the model settings (LayerNorm eps, GELU form) in the Job
 * message: they survive the wire (pack, unpack, nb_job_from_msg), enter the
 * model digest only when they are not the defaults (a default model keeps
 * the digest of earlier builds' text), and a stage whose message disagrees
 * with the digest, or carries an unknown GELU, refuses the job. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/pipeline/job.h"

static nb_job_desc_t make_desc(float eps, nb_gelu_t gelu)
{
    nb_job_desc_t d;
    memset(&d, 0, sizeof d);
    nb_pipe_layout_t *l = &d.layout;
    l->job_id = 9;
    l->model = (nb_model_config_t){ .n_layer = 2, .d_model = 32, .n_head = 4, .d_ff = 64, .vocab = 257,
                                    .max_seq = 16, .causal = false, .norm = NB_MODEL_NORM_POST,
                                    .head = NB_MODEL_HEAD_MLM, .tie_embeddings = false, .ln_eps = eps,
                                    .gelu = gelu };
    l->p = 2;
    l->n_daemons = 2;
    l->seed = 3;
    l->micro_batch_size = 2;
    l->seq_len = 16;
    l->optim = nb_optim_config_default();
    l->parts[0] = (nb_part_spec_t){ .embed = true, .first = 0, .last = 1 };
    l->parts[1] = (nb_part_spec_t){ .first = 1, .last = 2, .head = true };
    l->placement[1] = 1;
    d.n_daemons = 2;
    d.steps = 5;
    for (int i = 0; i < 2; i++) {
        snprintf(d.names[i], sizeof d.names[i], "s%d", i);
        snprintf(d.addresses[i], sizeof d.addresses[i], "127.0.0.1:%d", 7000 + i);
    }
    nb_job_model_digest(&l->model, d.digest);
    return d;
}

/* Packs msg, unpacks it and converts: what a stage daemon does. */
static int over_the_wire(const Nebula__Job *msg, nb_job_desc_t *out, char *err, size_t errlen)
{
    size_t n = nebula__job__get_packed_size(msg);
    uint8_t *buf = malloc(n);
    assert_non_null(buf);
    nebula__job__pack(msg, buf);
    Nebula__Job *back = nebula__job__unpack(NULL, n, buf);
    assert_non_null(back);
    int daemon = -1;
    int rc = nb_job_from_msg(back, out, &daemon, err, errlen);
    nebula__job__free_unpacked(back, NULL);
    free(buf);
    return rc;
}

static void test_settings_travel(void **state)
{
    (void)state;
    char err[512];
    nb_job_desc_t d = make_desc(1e-12f, NB_MODEL_GELU_ERF), got;
    d.layout.model.mask_token = 103;
    nb_job_model_digest(&d.layout.model, d.digest);
    nb_job_msg_store_t st;
    Nebula__Job msg;
    nb_job_to_msg(&d, 1, &st, &msg);
    msg.model_digest = d.digest;
    if (over_the_wire(&msg, &got, err, sizeof err))
        fail_msg("%s", err);
    assert_true(got.layout.model.ln_eps == 1e-12f);
    assert_int_equal(got.layout.model.gelu, NB_MODEL_GELU_ERF);
    assert_int_equal(got.layout.model.mask_token, 103);
    assert_string_equal(got.digest, d.digest);

    /* a stage that reads the message differently (eps or GELU) disagrees
     * with the digest: refused */
    st.model.gelu = 0;
    assert_int_equal(over_the_wire(&msg, &got, err, sizeof err), NB_EINVAL);
    print_message("  refused: %s\n", err);
    assert_non_null(strstr(err, "model digest"));
    st.model.gelu = 1;
    st.model.ln_eps = 1e-5f;
    assert_int_equal(over_the_wire(&msg, &got, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "model digest"));
    st.model.ln_eps = 1e-12f;
    st.model.gelu = 7;
    assert_int_equal(over_the_wire(&msg, &got, err, sizeof err), NB_EFORMAT);
    assert_non_null(strstr(err, "out of range"));
    st.model.gelu = 1;
    st.model.ln_eps = -1.0f;
    assert_int_equal(over_the_wire(&msg, &got, err, sizeof err), NB_EINVAL);
    print_message("  refused: %s\n", err);
    assert_non_null(strstr(err, "ln_eps"));
}

static void test_digest(void **state)
{
    (void)state;
    nb_job_desc_t a = make_desc(0.0f, NB_MODEL_GELU_TANH), b = make_desc(1e-5f, NB_MODEL_GELU_TANH),
                  c = make_desc(1e-12f, NB_MODEL_GELU_TANH), e = make_desc(1e-5f, NB_MODEL_GELU_ERF);
    /* 0 means 1e-5: the same model */
    assert_string_equal(a.digest, b.digest);
    assert_string_not_equal(a.digest, c.digest);
    assert_string_not_equal(a.digest, e.digest);
    assert_string_not_equal(c.digest, e.digest);
    nb_job_desc_t m = make_desc(1e-5f, NB_MODEL_GELU_TANH), m0 = m;
    m.layout.model.mask_token = 103;
    nb_job_model_digest(&m.layout.model, m.digest);
    assert_string_not_equal(a.digest, m.digest);
    m0.layout.model.mask_token = 256; /* vocab - 1 named explicitly: the same model */
    nb_job_model_digest(&m0.layout.model, m0.digest);
    assert_string_equal(a.digest, m0.digest);
    /* a default model's digest is the one of the text earlier builds hashed */
    const char *text = "n_layer=2;d_model=32;n_head=4;d_ff=64;vocab=257;max_seq=16;causal=0;norm=1;head=1;"
                       "n_classes=0;tie=0";
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char *p = text; *p; p++) {
        h ^= (uint8_t)*p;
        h *= 0x100000001b3ull;
    }
    char want[17];
    snprintf(want, sizeof want, "%016llx", (unsigned long long)h);
    assert_string_equal(a.digest, want);
}

/* job.model.token_shift travels in the Job and enters the digest only when
 * set; a stage that reads it otherwise disagrees with the digest. */
static void test_token_shift_travels(void **state)
{
    (void)state;
    char err[512];
    nb_job_desc_t plain = make_desc(0.0f, NB_MODEL_GELU_TANH), d = plain, got;
    d.layout.model.token_shift = true;
    nb_job_model_digest(&d.layout.model, d.digest);
    assert_string_not_equal(plain.digest, d.digest);
    nb_job_msg_store_t st;
    Nebula__Job msg;
    nb_job_to_msg(&d, 1, &st, &msg);
    if (over_the_wire(&msg, &got, err, sizeof err))
        fail_msg("%s", err);
    assert_true(got.layout.model.token_shift);
    assert_string_equal(got.digest, d.digest);
    st.model.token_shift = false; /* the coordinator's digest names a token-shift model */
    assert_int_equal(over_the_wire(&msg, &got, err, sizeof err), NB_EINVAL);
    print_message("  refused: %s\n", err);
    assert_non_null(strstr(err, "model digest"));
    nb_job_to_msg(&plain, 1, &st, &msg); /* and the other way round */
    st.model.token_shift = true;
    assert_int_equal(over_the_wire(&msg, &got, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "model digest"));
    /* nb_job_model_from_cfg carries the configuration's setting */
    nb_cfg_model_t cm = { .n_layer = 2, .d_model = 32, .n_head = 4, .d_ff = 64, .vocab = 257, .max_seq = 16,
                          .head = NB_HEAD_LM, .ln_eps = 1e-5, .token_shift = true };
    nb_model_config_t mc;
    assert_int_equal(nb_job_model_from_cfg(&cm, &mc), 0);
    assert_true(mc.token_shift);
}

/* Held-out evaluation travels in the Job (docs/pipeline.md, "Held-out
 * evaluation"): the fraction into the layout (stage 0 trains on the head
 * only), the eval.data flag; a fraction out of range, or both, is refused. */
static void test_eval_travels(void **state)
{
    (void)state;
    char err[512];
    nb_job_desc_t d = make_desc(0.0f, NB_MODEL_GELU_TANH), got;
    d.layout.eval_fraction = 0.125;
    nb_job_msg_store_t st;
    Nebula__Job msg;
    nb_job_to_msg(&d, 0, &st, &msg);
    if (over_the_wire(&msg, &got, err, sizeof err))
        fail_msg("%s", err);
    assert_true(got.layout.eval_fraction == 0.125 && !got.eval_file && nb_job_evaluates(&got));
    d.layout.eval_fraction = 0;
    d.eval_file = true;
    nb_job_to_msg(&d, 0, &st, &msg);
    if (over_the_wire(&msg, &got, err, sizeof err))
        fail_msg("%s", err);
    assert_true(got.eval_file && got.layout.eval_fraction == 0 && nb_job_evaluates(&got));
    msg.eval_fraction = 0.1;
    assert_int_equal(over_the_wire(&msg, &got, err, sizeof err), NB_EFORMAT);
    print_message("  refused: %s\n", err);
    assert_non_null(strstr(err, "held-out"));
    msg.eval_file = false;
    msg.eval_fraction = 0.75;
    assert_int_equal(over_the_wire(&msg, &got, err, sizeof err), NB_EFORMAT);
    msg.eval_fraction = 0;
    if (over_the_wire(&msg, &got, err, sizeof err))
        fail_msg("%s", err);
    assert_false(nb_job_evaluates(&got));
}

/* job.precision travels in the Job; an unknown value is refused. */
static void test_precision_travels(void **state)
{
    (void)state;
    char err[512];
    nb_job_desc_t d = make_desc(0.0f, NB_MODEL_GELU_TANH), got;
    nb_job_msg_store_t st;
    Nebula__Job msg;
    nb_job_to_msg(&d, 0, &st, &msg);
    if (over_the_wire(&msg, &got, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(got.layout.precision, NB_PREC_FP32);
    d.layout.precision = NB_PREC_BF16;
    nb_job_to_msg(&d, 0, &st, &msg);
    if (over_the_wire(&msg, &got, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(got.layout.precision, NB_PREC_BF16);
    msg.precision = (Nebula__Job__Precision)9;
    assert_int_equal(over_the_wire(&msg, &got, err, sizeof err), NB_EFORMAT);
    assert_non_null(strstr(err, "precision"));
}

/* job.lowrank travels in the model config and enters the digest; a stage
 * refuses a split block the model lacks or a rank larger than the layer,
 * with the reason, and so does the coordinator's job from the config. */
static void test_lowrank_travels(void **state)
{
    (void)state;
    char err[512];
    nb_job_desc_t d = make_desc(1e-5f, NB_MODEL_GELU_TANH), got;
    char plain[17];
    memcpy(plain, d.digest, sizeof plain);
    d.layout.model.lowrank_block = 1;
    d.layout.model.lowrank_rank = 8;
    nb_job_model_digest(&d.layout.model, d.digest);
    assert_string_not_equal(plain, d.digest);
    nb_job_msg_store_t st;
    Nebula__Job msg;
    nb_job_to_msg(&d, 0, &st, &msg);
    if (over_the_wire(&msg, &got, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(got.layout.model.lowrank_block, 1);
    assert_int_equal(got.layout.model.lowrank_rank, 8);
    assert_memory_equal(&got.layout, &d.layout, sizeof d.layout);
    /* what a peer may send wrong: a rank above min(d_model 32, d_ff 64),
     * a block past n_layer 2 */
    struct { uint32_t block, rank; const char *why; } bad[] = {
        { 1, 33, "job.lowrank.rank 33: must be in 1..32" },
        { 2, 8, "job.lowrank.block 2: the model has no such block" },
    };
    for (int i = 0; i < 2; i++) {
        nb_job_desc_t b = d;
        b.layout.model.lowrank_block = (int)bad[i].block;
        b.layout.model.lowrank_rank = (int)bad[i].rank;
        nb_job_model_digest(&b.layout.model, b.digest);
        nb_job_to_msg(&b, 0, &st, &msg);
        assert_int_equal(over_the_wire(&msg, &got, err, sizeof err), NB_EINVAL);
        print_message("  refused: %s\n", err);
        assert_non_null(strstr(err, bad[i].why));
    }
    /* the coordinator, from job.lowrank */
    nb_cfg_job_t job;
    memset(&job, 0, sizeof job);
    job.lowrank.block = 0;
    job.lowrank.rank = 40;
    nb_model_config_t m = d.layout.model;
    assert_int_equal(nb_job_lowrank_from_cfg(&job, &m, err, sizeof err), NB_EINVAL);
    print_message("  refused: %s\n", err);
    assert_non_null(strstr(err, "job.lowrank.rank 40: must be in 1..32, the rank of h0.fcproj.w (32 x 64)"));
    job.lowrank.rank = 32;
    assert_int_equal(nb_job_lowrank_from_cfg(&job, &m, err, sizeof err), 0);
    assert_int_equal(m.lowrank_rank, 32);
}

static void test_freeze_travels(void **state)
{
    (void)state;
    char err[512];
    nb_job_desc_t d = make_desc(1e-5f, NB_MODEL_GELU_TANH), got;
    nb_freeze_spec_t *f = &d.layout.freeze;
    f->n_freeze = 2;
    snprintf(f->freeze[0], sizeof f->freeze[0], "*");
    snprintf(f->freeze[1], sizeof f->freeze[1], "h0.*");
    f->n_trainable = 1;
    snprintf(f->trainable[0], sizeof f->trainable[0], "h1.*");
    nb_job_msg_store_t st;
    Nebula__Job msg;
    nb_job_to_msg(&d, 0, &st, &msg);
    if (over_the_wire(&msg, &got, err, sizeof err))
        fail_msg("%s", err);
    assert_memory_equal(&got.layout.freeze, f, sizeof *f);
    assert_true(nb_freeze_matches(&got.layout.freeze, "wte"));
    assert_false(nb_freeze_matches(&got.layout.freeze, "h1.qkv.w"));
    /* as the stage compares it with the job it holds: equal */
    assert_memory_equal(&got.layout, &d.layout, sizeof d.layout);

    /* what a peer may send wrong */
    char *many[NB_FREEZE_MAX + 1];
    for (int i = 0; i <= NB_FREEZE_MAX; i++)
        many[i] = "wte";
    msg.n_freeze = NB_FREEZE_MAX + 1;
    msg.freeze = many;
    assert_int_equal(over_the_wire(&msg, &got, err, sizeof err), NB_EFORMAT);
    print_message("  refused: %s\n", err);
    assert_non_null(strstr(err, "at most 32"));
    char longp[NB_FREEZE_PATTERN_MAX + 8];
    memset(longp, 'a', sizeof longp - 1);
    longp[sizeof longp - 1] = 0;
    char *one[1] = { longp };
    msg.n_freeze = 1;
    msg.freeze = one;
    assert_int_equal(over_the_wire(&msg, &got, err, sizeof err), NB_EFORMAT);
    print_message("  refused: %s\n", err);
    assert_non_null(strstr(err, "longer than 63 bytes"));
    struct { char *pat; int rc; const char *why; } bad[] = {
        { "h7.*", NB_EINVAL, "\"h7.*\" matches no tensor of the model" },
        { "h0.(qkv)", NB_EINVAL, "may contain only" },
    };
    for (int i = 0; i < 2; i++) {
        one[0] = bad[i].pat;
        msg.n_trainable = 0;
        assert_int_equal(over_the_wire(&msg, &got, err, sizeof err), bad[i].rc);
        print_message("  refused: %s\n", err);
        assert_non_null(strstr(err, bad[i].why));
    }
    one[0] = "*"; /* everything frozen, no exception: nothing would train */
    msg.n_trainable = 0;
    assert_int_equal(over_the_wire(&msg, &got, err, sizeof err), NB_EINVAL);
    print_message("  refused: %s\n", err);
    assert_non_null(strstr(err, "nothing would train"));
    char *tr[1] = { "h1.*" };
    msg.n_trainable = 1;
    msg.trainable = tr;
    assert_int_equal(over_the_wire(&msg, &got, err, sizeof err), 0);
    char *null_pat[1] = { NULL };
    msg.trainable = null_pat; /* protobuf-c never yields NULL; the check must not trust it */
    int daemon;
    assert_int_equal(nb_job_from_msg(&msg, &got, &daemon, err, sizeof err), NB_EFORMAT);
    assert_non_null(strstr(err, "missing"));
}

/* job.adapters travel in the model config and enter the digest; a peer's
 * adapter that does not fit the model is refused with the reason. */
static void test_adapters_travel(void **state)
{
    (void)state;
    char err[512];
    nb_job_desc_t d = make_desc(1e-5f, NB_MODEL_GELU_TANH), got;
    char plain[17];
    memcpy(plain, d.digest, sizeof plain);
    const char *after[] = { "attn", "ffn" };
    assert_int_equal(nb_model_set_adapters(&d.layout.model, 8, after, 2, "1", err, sizeof err), 0);
    nb_job_model_digest(&d.layout.model, d.digest);
    assert_string_not_equal(plain, d.digest);
    nb_job_msg_store_t st;
    Nebula__Job msg;
    nb_job_to_msg(&d, 0, &st, &msg);
    if (over_the_wire(&msg, &got, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(got.layout.model.adapter_size, 8);
    assert_int_equal(got.layout.model.adapter_after, NB_ADAPTER_ATTN | NB_ADAPTER_FFN);
    assert_int_equal(got.layout.model.adapter_first, 1);
    assert_int_equal(got.layout.model.adapter_last, 2);
    assert_memory_equal(&got.layout.model, &d.layout.model, sizeof d.layout.model);
    st.model.adapter_size = 33; /* wider than d_model 32 */
    assert_int_equal(over_the_wire(&msg, &got, err, sizeof err), NB_EINVAL);
    print_message("  refused: %s\n", err);
    assert_non_null(strstr(err, "adapter size"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_settings_travel),
        cmocka_unit_test(test_eval_travels),
        cmocka_unit_test(test_precision_travels),
        cmocka_unit_test(test_freeze_travels),
        cmocka_unit_test(test_adapters_travel),
        cmocka_unit_test(test_lowrank_travels),
        cmocka_unit_test(test_digest),
        cmocka_unit_test(test_token_shift_travels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
