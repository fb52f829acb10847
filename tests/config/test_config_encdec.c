/* test_config_encdec.c - the keys of an encoder-decoder job (job.encoder,
 * job.spans, job.model.cross_attn): defaults, per-model freeze, trainable
 * and adapters, and every refusal with its exact "FILE:LINE:COL: key:
 * message". */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>
#include "daemon/config/config.h"

static nb_config_t cfg;
static char err[1024];

/* A valid job; each test replaces one line of it. */
static const char *const JOB[] = {
    "name: t\n",                           /* 0 */
    "role: train\n",                       /* 1 */
    "job:\n",                              /* 2 */
    "  encoder:\n",                        /* 3 */
    "    model: { n_layer: 2, d_model: 32, n_head: 2, vocab: 30522, max_seq: 64, norm: post }\n", /* 4 */
    "    init: minilm/model.safetensors\n", /* 5 */
    "    freeze: ['*']\n",                 /* 6 */
    "    trainable: ['*.ad_*']\n",         /* 7 */
    "    adapters: { size: 8, after: [attn, ffn] }\n", /* 8 */
    "  model: { n_layer: 2, d_model: 32, n_head: 2, vocab: 30522, max_seq: 8, cross_attn: true }\n", /* 9 */
    "  adapters: { size: 4, after: [xattn] }\n", /* 10 */
    "  spans:\n",                          /* 11 */
    "    text: [a.txt, /abs/b.txt]\n",     /* 12 */
    "    tokenizer: vocab\n",              /* 13 */
    "    max_tokens: 5\n",                 /* 14 */
    "  batch: 4\n",                        /* 15 */
    "  seq_len: 16\n",                     /* 16 */
    "  steps: 3\n",                        /* 17 */
};
#define NLINES (sizeof JOB / sizeof JOB[0])

/* Loads JOB with line `at` replaced by `with` ("" drops it; at < 0 = none)
 * and `extra` appended. */
static int load_job(int at, const char *with, const char *extra)
{
    char buf[4096] = "";
    for (size_t i = 0; i < NLINES; i++)
        strcat(buf, (int)i == at ? with : JOB[i]);
    strcat(buf, extra ? extra : "");
    return nb_cfg_load_string("dir/t.yaml", buf, strlen(buf), &cfg, err, sizeof err);
}

/* Loads JOB without lines first..last. */
static int load_job_without(int first, int last)
{
    char buf[4096] = "";
    for (int i = 0; i < (int)NLINES; i++)
        if (i < first || i > last)
            strcat(buf, JOB[i]);
    return nb_cfg_load_string("dir/t.yaml", buf, strlen(buf), &cfg, err, sizeof err);
}

#define expect_err(rc_expr, msg)                      \
    do {                                              \
        int rc_ = (rc_expr);                          \
        if (rc_ == 0 || strcmp(err, msg) != 0)        \
            print_error("got rc %d '%s'\n", rc_, err); \
        assert_int_not_equal(rc_, 0);                 \
        assert_string_equal(err, msg);                \
    } while (0)

static void test_encdec_parsed(void **state)
{
    (void)state;
    if (load_job(-1, NULL, NULL))
        fail_msg("%s", err);
    const nb_cfg_job_t *j = &cfg.job;
    assert_true(j->encoder.present);
    assert_true(j->model.cross_attn);
    assert_false(j->encoder.model.cross_attn);
    assert_false(j->encoder.model.causal); /* an encoder's default */
    assert_true(j->model.causal);
    assert_int_equal(j->encoder.model.norm, NB_NORM_POST);
    assert_int_equal(j->encoder.model.d_ff, 128);
    assert_string_equal(j->encoder.init, "dir/minilm/model.safetensors");
    assert_int_equal(j->encoder.n_freeze, 1);
    assert_string_equal(j->encoder.freeze[0], "*");
    assert_int_equal(j->encoder.n_trainable, 1);
    assert_string_equal(j->encoder.trainable[0], "*.ad_*");
    assert_int_equal(j->encoder.adapters.size, 8);
    assert_int_equal(j->encoder.adapters.n_after, 2);
    /* the decoder's own: job.adapters, no job.freeze */
    assert_int_equal(j->adapters.size, 4);
    assert_string_equal(j->adapters.after[0], "xattn");
    assert_int_equal(j->n_freeze, 0);
    assert_int_equal(j->spans.n_text, 2);
    assert_string_equal(j->spans.text[0], "dir/a.txt");
    assert_string_equal(j->spans.text[1], "/abs/b.txt");
    assert_string_equal(j->spans.tokenizer, "dir/vocab");
    assert_int_equal(j->spans.min_tokens, 1);
    assert_int_equal(j->spans.max_tokens, 5);
    assert_int_equal(j->spans.hold, 10);
    assert_int_equal(j->spans.eval_windows, 256);
    /* job.output: the decoder's weights (a weights file records its
     * cross-attention, version 5), beside job.encoder.output */
    if (load_job(-1, NULL, "  output: dec.weights\n"))
        fail_msg("%s", err);
    assert_string_equal(cfg.job.output, "dir/dec.weights");
    /* an explicit causal encoder stays causal */
    assert_int_equal(load_job(4, "    model: { n_layer: 2, d_model: 32, n_head: 2, vocab: 30522, causal: true }\n",
                              NULL), 0);
    assert_true(cfg.job.encoder.model.causal);
    /* a one-model job has no encoder */
    const char *plain = "name: t\nrole: train\njob:\n  model: { n_layer: 1, d_model: 8, n_head: 1, vocab: 16 }\n"
                        "  data: tok.bin\n  batch: 1\n  seq_len: 4\n  steps: 1\n";
    assert_int_equal(nb_cfg_load_string("dir/t.yaml", plain, strlen(plain), &cfg, err, sizeof err), 0);
    assert_false(cfg.job.encoder.present);
    assert_false(cfg.job.model.cross_attn);
}

static void test_encdec_refusals(void **state)
{
    (void)state;
    /* job.precision bf16 is for decoder/encoder pipelines and nebula-train */
    assert_int_not_equal(load_job(-1, NULL, "  precision: bf16\n"), 0);
    assert_non_null(strstr(err, "job.precision: bf16 is for decoder and encoder pipelines"));
    assert_int_equal(load_job(-1, NULL, "  precision: fp32\n"), 0);
    expect_err(load_job(9, "  model: { n_layer: 2, d_model: 32, n_head: 2, vocab: 30522, max_seq: 8 }\n", NULL),
               "dir/t.yaml:10:10: job.model.cross_attn: job.model is the decoder of this encoder-decoder job: it "
               "needs cross_attn: true (its blocks read the encoder's output)");
    expect_err(load_job(4, "    model: { n_layer: 2, d_model: 32, n_head: 2, vocab: 30522, head: mlm }\n", NULL),
               "dir/t.yaml:5:70: job.encoder.model.head: an encoder has no head: the decoder's cross-attention "
               "reads the output of its last block; remove head");
    expect_err(load_job(4, "    model: { n_layer: 2, d_model: 32, n_head: 2, vocab: 30522, tie_embeddings: false }\n",
                        NULL),
               "dir/t.yaml:5:80: job.encoder.model.tie_embeddings: an encoder has no head: the decoder's "
               "cross-attention reads the output of its last block; remove tie_embeddings");
    expect_err(load_job(4, "    model: { n_layer: 2, d_model: 32, n_head: 2, vocab: 30522, cross_attn: true }\n",
                        NULL),
               "dir/t.yaml:5:76: job.encoder.model.cross_attn: the encoder reads only the source tokens: its blocks "
               "have no cross-attention; remove cross_attn");
    expect_err(load_job(4, "    model: { n_layer: 2, d_model: 64, n_head: 2, vocab: 30522 }\n", NULL),
               "dir/t.yaml:5:35: job.encoder.model.d_model: 64, but the decoder's cross-attention "
               "(job.model.d_model) reads encoder states of width 32: they must be equal (there is no projection "
               "between them)");
    expect_err(load_job(9, "  model: { n_layer: 2, d_model: 32, n_head: 2, vocab: 30522, cross_attn: true, head: mlm }\n",
                        NULL),
               "dir/t.yaml:10:86: job.model.head: the decoder of an encoder-decoder job generates the target "
               "tokens: head must be lm, got mlm");
    expect_err(load_job_without(11, 14),
               "dir/t.yaml:4:3: job.spans: missing: an encoder-decoder job needs its task (job.spans: the text, the "
               "tokenizer and the span lengths)");
    expect_err(load_job(-1, NULL, "  data: tok.bin\n"),
               "dir/t.yaml:19:9: job.data: not used by an encoder-decoder job: its (source, target) pairs come from "
               "job.spans.text");
    expect_err(load_job(-1, NULL, "  eval: { fraction: 0.1 }\n"),
               "dir/t.yaml:19:9: job.eval: not used by an encoder-decoder job: its held-out windows are every "
               "job.spans.hold-th window of each text, scored at the end");
    expect_err(load_job(-1, NULL, "  lowrank: { block: 0, rank: 4 }\n"),
               "dir/t.yaml:19:12: job.lowrank: not supported in an encoder-decoder job yet");
    expect_err(load_job(14, "    max_tokens: 8\n", NULL),
               "dir/t.yaml:15:17: job.spans.max_tokens: the decoder reads max_tokens + 1 positions ([CLS] and the "
               "span): must be below job.model.max_seq (8), got 8");
    expect_err(load_job(14, "    min_tokens: 6\n    max_tokens: 5\n", NULL),
               "dir/t.yaml:15:17: job.spans.min_tokens: must not exceed max_tokens (5), got 6");
    expect_err(load_job(16, "  seq_len: 7\n", NULL),
               "dir/t.yaml:17:12: job.seq_len: a window of job.seq_len - 2 = 5 tokens leaves no context around a "
               "span of job.spans.max_tokens = 5: make seq_len at least 8");
    expect_err(load_job(16, "  seq_len: 65\n", NULL),
               "dir/t.yaml:17:12: job.seq_len: the encoder reads job.seq_len positions (a window of job.seq_len - 2 "
               "tokens between [CLS] and [SEP]): must not exceed job.encoder.model.max_seq (64), got 65");
    expect_err(load_job(13, "", NULL),
               "dir/t.yaml:13:5: job.spans.tokenizer: missing required key (role train)");
    expect_err(load_job(9, "  model: { n_layer: 2, d_model: 32, n_head: 2, vocab: 30522, max_seq: 8, cross_attn: true, "
                           "causal: false }\n", NULL),
               "dir/t.yaml:10:100: job.model.causal: the decoder of an encoder-decoder job must be causal: trained "
               "with teacher forcing, a position that sees the next input learns to copy it, and greedy decoding "
               "would read the positions not generated yet");
    expect_err(load_job(5, "    init: minilm/model.safetensors\n    output: same.weights\n", "  output: same.weights\n"),
               "dir/t.yaml:7:13: job.encoder.output: the same file as job.output (dir/same.weights): the decoder's "
               "weights would overwrite the encoder's; give each its own file");
    expect_err(load_job(-1, NULL, "  schedule: gpipe\n"),
               "dir/t.yaml:19:13: job.schedule: not used by an encoder-decoder job: its micro-batches run in "
               "lock-step (docs/finetune.md)");
    expect_err(load_job(6, "    freeze: ['h0.$']\n", NULL),
               "dir/t.yaml:7:14: job.encoder.freeze[0]: a tensor-name pattern may contain only letters, digits, "
               "'.', '_', '-', '*' and '?'");
}

/* Without an encoder: a decoder, and the span task, are refused. */
static void test_no_encoder(void **state)
{
    (void)state;
    const char *dec = "name: t\nrole: train\njob:\n"
                      "  model: { n_layer: 1, d_model: 8, n_head: 1, vocab: 16, cross_attn: true }\n"
                      "  data: tok.bin\n  batch: 1\n  seq_len: 4\n  steps: 1\n";
    expect_err(nb_cfg_load_string("dir/t.yaml", dec, strlen(dec), &cfg, err, sizeof err),
               "dir/t.yaml:4:70: job.model.cross_attn: a decoder reads an encoder's output, and this job has none: "
               "add job.encoder (an encoder-decoder job, role train; docs/finetune.md) or remove cross_attn");
    const char *spans = "name: t\nrole: train\njob:\n"
                        "  model: { n_layer: 1, d_model: 8, n_head: 1, vocab: 16 }\n"
                        "  data: tok.bin\n  spans: { text: [a.txt], tokenizer: v }\n  batch: 1\n  seq_len: 4\n"
                        "  steps: 1\n";
    expect_err(nb_cfg_load_string("dir/t.yaml", spans, strlen(spans), &cfg, err, sizeof err),
               "dir/t.yaml:6:10: job.spans: the span task trains an encoder-decoder pair: add job.encoder "
               "(job.model is then the decoder)");
    /* a coordinator (the decoder's daemon across two daemons) must name the encoder's daemon */
    expect_err(load_job(1, "role: coordinator\nlisten: 127.0.0.1:1\ntls: {cert: c, key: k, ca: a}\n", NULL),
               "dir/t.yaml:7:5: job.encoder.daemon: missing required key (role coordinator)");
    /* a stage reads a job section only as the encoder's daemon */
    expect_err(load_job(1, "role: stage\nlisten: 127.0.0.1:1\ntls: {cert: c, key: k, ca: a}\n"
                           "coordinator: {address: \"127.0.0.1:2\", name: d}\n", NULL),
               "dir/t.yaml:7:3: job: a stage daemon gets its job from the coordinator; only the encoder's daemon of "
               "an encoder-decoder job (encdec_encoder: true) reads its own job section");
}

/* The examples under config/finetune load (run from the repository root). */
static void test_examples(void **state)
{
    (void)state;
    if (nb_cfg_load("config/finetune/encdec-minilm.yaml", &cfg, err, sizeof err))
        fail_msg("%s", err);
    assert_true(cfg.job.encoder.present && cfg.job.model.cross_attn);
    assert_int_equal(cfg.job.encoder.model.d_model, cfg.job.model.d_model);
    assert_int_equal(cfg.job.spans.n_text, 6);
    if (nb_cfg_load("config/finetune/decoder-pretrain.yaml", &cfg, err, sizeof err))
        fail_msg("%s", err);
    assert_false(cfg.job.encoder.present);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encdec_parsed),
        cmocka_unit_test(test_encdec_refusals),
        cmocka_unit_test(test_no_encoder),
        cmocka_unit_test(test_examples),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
