/* test_config.c - the YAML loader: defaults, every error class with its exact
 * "FILE:LINE:COL: key: message", layer coverage, role rules, relative paths,
 * the example files under config/, and docs/config.md naming every key. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "daemon/config/config.h"
#include "kernels/common.h"

static nb_config_t cfg;
static char err[1024];

static const char *TRAIN_HEAD =
    "name: t\n"
    "role: train\n"
    "job:\n"
    "  model:\n"
    "    n_layer: 4\n"
    "    d_model: 64\n"
    "    n_head: 4\n"
    "    vocab: 256\n"
    "  data: tok.bin\n"
    "  batch: 8\n"
    "  seq_len: 32\n"
    "  steps: 10\n";

static int load(const char *text)
{
    return nb_cfg_load_string("dir/t.yaml", text, strlen(text), &cfg, err, sizeof err);
}

/* Loads TRAIN_HEAD followed by extra lines. */
static int load_train(const char *extra)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s%s", TRAIN_HEAD, extra);
    return load(buf);
}

#define expect_err(rc_expr, msg)                      \
    do {                                              \
        int rc_ = (rc_expr);                          \
        if (rc_ == 0 || strcmp(err, msg) != 0)        \
            print_error("got rc %d '%s'\n", rc_, err); \
        assert_int_not_equal(rc_, 0);                 \
        assert_string_equal(err, msg);                \
    } while (0)

static void test_train_defaults(void **state)
{
    (void)state;
    assert_int_equal(load_train(""), 0);
    assert_int_equal(cfg.role, NB_ROLE_TRAIN);
    assert_string_equal(cfg.name, "t");
    assert_true(cfg.job.present);
    assert_int_equal(cfg.job.model.d_ff, 256); /* 4 * d_model */
    assert_int_equal(cfg.job.model.max_seq, 1024);
    assert_true(cfg.job.model.causal);
    assert_int_equal(cfg.job.model.norm, NB_NORM_PRE);
    assert_int_equal(cfg.job.model.head, NB_HEAD_LM);
    assert_int_equal(cfg.job.micro_batches, 0); /* auto */
    assert_int_equal(cfg.job.schedule, NB_CFG_SCHED_AUTO);
    assert_int_equal(cfg.job.seed, 1337);
    assert_true(cfg.job.optimizer.lr > 2.9e-4 && cfg.job.optimizer.lr < 3.1e-4);
    assert_string_equal(cfg.job.codecs.forward, "fp32");
    assert_string_equal(cfg.job.data, "dir/tok.bin"); /* relative to the file */
    assert_string_equal(cfg.status_socket, "/run/nebula/t.sock");
    assert_int_equal(cfg.n_devices, 1);
    assert_string_equal(cfg.devices[0].text, "cpu");
    assert_string_equal(cfg.log_level, "info");
    assert_int_equal(cfg.job.n_clusters, 0);
}

static void test_values_parsed(void **state)
{
    (void)state;
    assert_int_equal(load_train("  micro_batches: 4\n"
                                "  schedule: 1f1b\n"
                                "  optimizer: {lr: 1e-3, beta2: 0.95}\n"
                                "  codecs: {forward: fp16(svd(0.6)), backward: int8}\n"
                                "  planner: {stage_memory: 2GiB, codecs: [fp16, int8]}\n"
                                "  output: /abs/w.bin\n"
                                "devices: [cuda:1, cuda:3]\n"
                                "log_level: debug\n"),
                     0);
    assert_int_equal(cfg.job.micro_batches, 4);
    assert_int_equal(cfg.job.schedule, NB_CFG_SCHED_1F1B);
    assert_true(cfg.job.optimizer.beta2 == 0.95);
    assert_true(cfg.job.optimizer.lr == 1e-3);
    assert_string_equal(cfg.job.codecs.forward, "fp16(svd(0.6))");
    assert_string_equal(cfg.job.codecs.backward, "int8");
    assert_int_equal(cfg.job.planner.stage_memory_bytes, 2ull << 30);
    assert_int_equal(cfg.job.planner.n_codecs, 2);
    assert_string_equal(cfg.job.planner.codecs[1], "int8");
    assert_true(cfg.job.planner.max_codec_error == 0.25); /* the default budget */
    assert_string_equal(cfg.job.output, "/abs/w.bin");
    assert_int_equal(cfg.n_devices, 2);
    assert_true(cfg.devices[1].cuda);
    assert_int_equal(cfg.devices[1].index, 3);
    /* codec parameters (docs/codecs.md) in a job: key=value inside the spec */
    assert_int_equal(load_train("  codecs: {forward: \"int4(block=row)\", backward: \"int8(block=32,sr)\"}\n"
                                "  planner: {codecs: [\"svd(rank=8)\", fp16]}\n"),
                     0);
    assert_string_equal(cfg.job.codecs.forward, "int4(block=row)");
    assert_string_equal(cfg.job.codecs.backward, "int8(block=32,sr)");
    assert_string_equal(cfg.job.planner.codecs[0], "svd(rank=8)");
    assert_int_equal(load_train("  planner: {codecs: [fp16, int4], max_codec_error: 0.05}\n"), 0);
    assert_true(cfg.job.planner.max_codec_error == 0.05);
    expect_err(load_train("  codecs: {forward: \"int8;fp16\"}\n"),
               "dir/t.yaml:13:21: job.codecs.forward: codec spec may contain only letters, digits, '.', ',', '_', '+', "
               "'=', ' ' and parentheses");
}

/* job.model.token_shift: a boolean, false by default; anything else is refused */
static void test_token_shift(void **state)
{
    (void)state;
    assert_int_equal(load_train(""), 0);
    assert_false(cfg.job.model.token_shift);
    const char *head = "name: t\nrole: train\njob:\n  data: tok.bin\n  batch: 8\n  seq_len: 32\n  steps: 10\n"
                       "  model: {n_layer: 4, d_model: 64, n_head: 4, vocab: 256, token_shift: ";
    char buf[512];
    snprintf(buf, sizeof buf, "%strue}\n", head);
    assert_int_equal(load(buf), 0);
    assert_true(cfg.job.model.token_shift);
    assert_false(cfg.job.model.cross_attn);
    snprintf(buf, sizeof buf, "%s1}\n", head);
    expect_err(load(buf), "dir/t.yaml:8:72: job.model.token_shift: wrong type: expected true or false, got '1'");
    snprintf(buf, sizeof buf, "%s[true]}\n", head);
    assert_int_not_equal(load(buf), 0);
    assert_non_null(strstr(err, "job.model.token_shift: wrong type"));
}

static void test_unknown_key(void **state)
{
    (void)state;
    expect_err(load_train("  modle: {}\n"), "dir/t.yaml:13:3: job.modle: unknown key; did you mean 'model'?");
    expect_err(load_train("  n_layer: 4\n"),
               "dir/t.yaml:13:3: job.n_layer: unknown key here; 'n_layer' belongs in section 'job.model'");
    expect_err(load_train("zzzzzzzz: 1\n"), "dir/t.yaml:13:1: zzzzzzzz: unknown key");
    expect_err(load_train("log_levl: info\n"), "dir/t.yaml:13:1: log_levl: unknown key; did you mean 'log_level'?");
}

static void test_wrong_type(void **state)
{
    (void)state;
    expect_err(load_train("  steps: many\n"), "dir/t.yaml:13:3: job.steps: duplicate key (first set on line 12)");
    expect_err(load("name: t\nrole: train\njob:\n  steps: many\n"),
               "dir/t.yaml:4:10: job.steps: wrong type: expected an integer, got 'many'");
    expect_err(load("name: t\nrole: train\njob:\n  model: {n_layer: four, d_model: 64, n_head: 4, vocab: 256}\n"),
               "dir/t.yaml:4:20: job.model.n_layer: wrong type: expected an integer, got 'four'");
    expect_err(load("name: t\nrole: train\njob: [1, 2]\n"),
               "dir/t.yaml:3:6: job: wrong type: expected a mapping, got a list");
    expect_err(load_train("  schedule: pipedream\n"),
               "dir/t.yaml:13:13: job.schedule: must be one of auto, gpipe, 1f1b; got 'pipedream'");
    expect_err(load_train("  schedule: 1f1c\n"),
               "dir/t.yaml:13:13: job.schedule: must be one of auto, gpipe, 1f1b; got '1f1c'; did you mean '1f1b'?");
    expect_err(load("name: s\nrole: stag\n"),
               "dir/t.yaml:2:7: role: must be one of coordinator, stage, train; got 'stag'; did you mean 'stage'?");
    expect_err(load_train("devices: [gpu0]\n"),
               "dir/t.yaml:13:11: devices[0]: must be cpu or cuda:N (N from 0 to 63); got 'gpu0'");
    expect_err(load_train("devices: [cuda:0, cuda:2, cuda:0]\n"),
               "dir/t.yaml:13:27: devices[2]: cuda:0 is listed twice (devices[0] and devices[2]); each replica "
               "needs a device of its own");
    expect_err(load_train("devices: [cpu, cuda:1]\n"),
               "dir/t.yaml:13:16: devices[1]: 'cuda:1' after 'cpu': the replicas of a stage run on one kind of "
               "device; list only cpu or only cuda:N devices");
    expect_err(load_train("  planner: {enabled: maybe}\n"),
               "dir/t.yaml:13:22: job.planner.enabled: wrong type: expected true or false, got 'maybe'");
    expect_err(load_train("  micro_batches: lots\n"),
               "dir/t.yaml:13:18: job.micro_batches: wrong type: expected an integer or auto, got 'lots'");
    expect_err(load_train("  optimizer: {lr: [1]}\n"),
               "dir/t.yaml:13:19: job.optimizer.lr: wrong type: expected a number, got a list");
    expect_err(load("- a\n- b\n"), "dir/t.yaml:1:1: (top): wrong type: expected a mapping of keys, got a list");
    expect_err(load_train("name: other\n"), "dir/t.yaml:13:1: name: duplicate key (first set on line 1)");
}

static void test_bounds(void **state)
{
    (void)state;
    expect_err(load_train("  optimizer: {beta1: 1.5}\n"),
               "dir/t.yaml:13:22: job.optimizer.beta1: out of bounds: must be between 0 and 0.999999, got 1.5");
    expect_err(load("name: t\nrole: train\njob:\n  model: {n_layer: 0, d_model: 64, n_head: 4, vocab: 256}\n"),
               "dir/t.yaml:4:20: job.model.n_layer: out of bounds: must be between 1 and 1024, got 0");
    expect_err(load_train("  micro_batches: 3\n"), "dir/t.yaml:13:18: job.micro_batches: must divide batch (8), got 3");
    expect_err(load_train("  seq_len: 2000\n"), "dir/t.yaml:13:3: job.seq_len: duplicate key (first set on line 11)");
    expect_err(load("name: t\nrole: train\njob:\n  model: {n_layer: 2, d_model: 64, n_head: 5, vocab: 256}\n"
                    "  data: x\n  batch: 1\n  seq_len: 8\n  steps: 1\n"),
               "dir/t.yaml:4:44: job.model.n_head: must divide d_model (64), got 5");
    expect_err(load("name: t\nrole: train\njob:\n  model: {n_layer: 2, d_model: 64, n_head: 4, vocab: 256, max_seq: 16}\n"
                    "  data: x\n  batch: 1\n  seq_len: 32\n  steps: 1\n"),
               "dir/t.yaml:7:12: job.seq_len: out of bounds: must not exceed model.max_seq (16), got 32");
    expect_err(load_train("  optimizer: {lr: 1e-4, min_lr: 1e-3}\n"),
               "dir/t.yaml:13:33: job.optimizer.min_lr: must not exceed lr (0.0001), got 0.001");
    expect_err(load_train("name2: x\n"), "dir/t.yaml:13:1: name2: unknown key; did you mean 'name'?");
    expect_err(load_train("heartbeat_interval_s: 5\nheartbeat_timeout_s: 2\n"),
               "dir/t.yaml:14:22: heartbeat_timeout_s: must exceed heartbeat_interval_s (5), got 2");
    expect_err(load_train("  planner: {stage_memory: 12 parsecs}\n"),
               "dir/t.yaml:13:27: job.planner.stage_memory: wrong type: expected a size in bytes like 4096 or 16GiB, "
               "got '12 parsecs'");
}

static void test_missing(void **state)
{
    (void)state;
    expect_err(load("name: t\nrole: train\n"), "dir/t.yaml:1:1: job: missing required key (role train)");
    expect_err(load("name: t\n"), "dir/t.yaml:1:1: role: missing required key (coordinator, stage or train)");
    expect_err(load(""), "dir/t.yaml:1:1: role: missing required key (the file is empty)");
    expect_err(load("name: t\nrole: train\njob:\n  model: {n_layer: 2, d_model: 64, n_head: 4}\n"),
               "dir/t.yaml:4:10: job.model.vocab: missing required key (role train)");
    expect_err(load("name: s\nrole: stage\nlisten: 127.0.0.1:7001\ntls: {cert: a, key: b, ca: c}\n"),
               "dir/t.yaml:1:1: coordinator: missing required key (role stage)");
    expect_err(load("name: s\nrole: boss\n"), "dir/t.yaml:2:7: role: must be one of coordinator, stage, train; got 'boss'");
    expect_err(load("name: t\nrole: train\njob:\n  steps:\n"), "dir/t.yaml:4:9: job.steps: missing value");
}

static int load_coord(const char *clusters);

static void test_roles(void **state)
{
    (void)state;
    /* A stage may not hold a job; a trainer needs no cluster keys. */
    expect_err(load("name: s\nrole: stage\nlisten: 127.0.0.1:7001\ntls: {cert: a, key: b, ca: c}\n"
                    "coordinator: {address: 'h:1', name: c}\njob: {}\n"),
               "dir/t.yaml:6:6: job: a stage daemon gets its job from the coordinator; only the encoder's daemon of an "
               "encoder-decoder job (encdec_encoder: true) reads its own job section");
    expect_err(load_train("coordinator: {address: 'h:1', name: c}\n"),
               "dir/t.yaml:13:1: coordinator: not allowed for role train (only for stage)");
    /* job.init (trainer, coordinator) and a stage's own init file */
    assert_int_equal(load_train("  init: gpt2/model.safetensors\n"), 0);
    assert_string_equal(cfg.job.init, "dir/gpt2/model.safetensors");
    assert_int_equal(load_coord("    - {name: a, address: 'h:1'}\n  init: w.safetensors\n"), 0);
    assert_string_equal(cfg.job.init, "dir/w.safetensors");
    assert_int_equal(load("name: s\nrole: stage\nlisten: 127.0.0.1:0\ntls: {cert: a, key: b, ca: c}\n"
                          "coordinator: {address: 'h:1', name: c}\ninit: /m/model.safetensors\n"),
                     0);
    assert_string_equal(cfg.init, "/m/model.safetensors");
    expect_err(load_train("init: w.safetensors\n"), "dir/t.yaml:13:1: init: not allowed for role train (only for stage)");
    /* held-out evaluation: nebula-train's and a pipeline's; a stage's own held-out file */
    assert_int_equal(load_train("  eval: {fraction: 0.1, every_steps: 50}\n"), 0);
    assert_true(cfg.job.eval.fraction == 0.1 && cfg.job.eval.every_steps == 50 && cfg.job.eval.batches == 8);
    assert_int_equal(load_coord("    - {name: a, address: 'h:1'}\n  eval: {fraction: 0.1, batches: 2}\n"), 0);
    assert_true(cfg.job.eval.fraction == 0.1 && cfg.job.eval.batches == 2);
    expect_err(load_coord("    - {name: a, address: 'h:1'}\n  eval: {fraction: 0.1, data: held.tok}\n"),
               "dir/t.yaml:12:31: job.eval.data: eval.fraction and eval.data exclude each other (fraction 0.1): hold out a "
               "share of the token file or another file, not both");
    assert_int_equal(load("name: s\nrole: stage\nlisten: 127.0.0.1:0\ntls: {cert: a, key: b, ca: c}\n"
                          "coordinator: {address: 'h:1', name: c}\neval_data: held.tok\n"),
                     0);
    assert_string_equal(cfg.eval_data, "dir/held.tok");
    expect_err(load_train("eval_data: h.tok\n"), "dir/t.yaml:13:1: eval_data: not allowed for role train (only for stage)");
    assert_int_equal(load("name: s\nrole: stage\nlisten: 127.0.0.1:0\ntls: {cert: a, key: /b, ca: c}\n"
                          "coordinator: {address: '[::1]:7000', name: c}\nstatus_socket: s.sock\n"),
                     0);
    assert_int_equal(cfg.role, NB_ROLE_STAGE);
    assert_false(cfg.job.present);
    assert_string_equal(cfg.coordinator.address.host, "::1");
    assert_int_equal(cfg.coordinator.address.port, 7000);
    assert_string_equal(cfg.listen.host, "127.0.0.1");
    assert_int_equal(cfg.listen.port, 0);
    assert_string_equal(cfg.tls.cert, "dir/a");
    assert_string_equal(cfg.tls.key, "/b");
    assert_string_equal(cfg.status_socket, "dir/s.sock");
    expect_err(load("name: s\nrole: stage\nlisten: 127.0.0.1\n"),
               "dir/t.yaml:3:9: listen: expected HOST:PORT, got '127.0.0.1'");
    expect_err(load("name: s\nrole: stage\nlisten: 'h:70000'\n"),
               "dir/t.yaml:3:9: listen: port must be between 0 and 65535, got 70000");
    expect_err(load("name: 'a b'\nrole: stage\n"),
               "dir/t.yaml:1:7: name: may contain only letters, digits, '-', '_' and '.'");
}

static const char *COORD_HEAD =
    "name: c\n"
    "role: coordinator\n"
    "listen: 127.0.0.1:7000\n"
    "tls: {cert: a, key: b, ca: c}\n"
    "job:\n"
    "  model: {n_layer: 6, d_model: 64, n_head: 4, vocab: 256, tie_embeddings: false}\n"
    "  batch: 8\n"
    "  seq_len: 32\n"
    "  steps: 10\n"
    "  clusters:\n";

static int load_coord(const char *clusters)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s%s", COORD_HEAD, clusters);
    return load(buf);
}

/* A pipeline trains lm and mlm only (docs/pipeline.md): a coordinator with a
 * classifier head is refused at load time, naming the head. */
/* job.lowrank: read, and refused with the reason when the block does not
 * exist or the rank is larger than the layer (d_model 64, d_ff 256) */
static void test_lowrank(void **state)
{
    assert_int_equal(load_train("  lowrank: {block: 3, rank: 64}\n"), 0);
    assert_int_equal(cfg.job.lowrank.block, 3);
    assert_int_equal(cfg.job.lowrank.rank, 64);
    assert_int_equal(load_train(""), 0);
    assert_int_equal(cfg.job.lowrank.rank, 0);
    expect_err(load_train("  lowrank: {block: 3, rank: 65}\n"),
               "dir/t.yaml:13:29: job.lowrank.rank: 65 is larger than the split layer h3.fcproj.w (64 x 256): at "
               "most 64");
    expect_err(load_train("  lowrank: {block: 4, rank: 8}\n"),
               "dir/t.yaml:13:20: job.lowrank.block: the model has no block 4 (blocks 0..3 of job.model.n_layer 4)");
    /* a coordinator checkpoints a split model (the checkpoints record it) */
    char buf[2048];
    snprintf(buf, sizeof buf, "%s", COORD_HEAD);
    strcat(buf, "    - {name: a, address: 'h:1'}\n  lowrank: {block: 5, rank: 8}\n  checkpoint: {every_steps: 5}\n");
    assert_int_equal(load(buf), 0);
    assert_int_equal(cfg.job.lowrank.rank, 8);
    assert_int_equal(cfg.job.checkpoint.every_steps, 5);
    expect_err(load_train("  lowrank: {block: 1, rank: -1}\n"),
               "dir/t.yaml:13:29: job.lowrank.rank: out of bounds: must be between 0 and 1048576, got -1");
}

static void test_pipeline_heads(void **state)
{
    (void)state;
    const char *heads[] = { "seqcls", "tokcls" };
    for (int i = 0; i < 2; i++) {
        char buf[1024], want[512];
        snprintf(buf, sizeof buf,
                 "name: c\nrole: coordinator\nlisten: 127.0.0.1:7000\ntls: {cert: a, key: b, ca: c}\n"
                 "job:\n  model: {n_layer: 2, d_model: 64, n_head: 4, vocab: 256, tie_embeddings: false,\n"
                 "          head: %s, n_classes: 3}\n  batch: 8\n  seq_len: 32\n  steps: 10\n"
                 "  clusters:\n    - {name: a, address: 'h:1'}\n", heads[i]);
        snprintf(want, sizeof want, "dir/t.yaml:7:17: job.model.head: head %s is not supported in a pipeline "
                 "(the token file holds no class labels, and nebula-train trains lm and mlm only); use lm or mlm",
                 heads[i]);
        expect_err(load(buf), want);
    }
    assert_int_equal(load_coord("    - {name: a, address: 'h:1'}\n"), 0);
    char buf[1024];
    snprintf(buf, sizeof buf,
             "name: c\nrole: coordinator\nlisten: 127.0.0.1:7000\ntls: {cert: a, key: b, ca: c}\n"
             "job:\n  model: {n_layer: 2, d_model: 64, n_head: 4, vocab: 257, tie_embeddings: false, head: mlm}\n"
             "  batch: 8\n  seq_len: 32\n  steps: 10\n  clusters:\n    - {name: a, address: 'h:1'}\n");
    assert_int_equal(load(buf), 0);
}

static void test_layers(void **state)
{
    (void)state;
    assert_int_equal(load_coord("    - {name: a, address: 'h:1', layers: 0-2}\n"
                                "    - {name: b, address: 'h:2', layers: 3-5}\n"),
                     0);
    assert_int_equal(cfg.job.n_clusters, 2);
    assert_int_equal(cfg.job.clusters[1].layer_first, 3);
    assert_int_equal(cfg.job.clusters[1].layer_last, 5);
    assert_false(cfg.job.clusters[1].layers_auto);
    assert_int_equal(load_coord("    - {name: a, address: 'h:1'}\n    - {name: b, address: 'h:2', layers: auto}\n"), 0);
    assert_true(cfg.job.clusters[0].layers_auto);
    /* gap */
    expect_err(load_coord("    - {name: a, address: 'h:1', layers: 0-2}\n"
                          "    - {name: b, address: 'h:2', layers: 4-5}\n"),
               "dir/t.yaml:12:41: job.clusters[1].layers: layer ranges do not cover the model exactly: range 4-5 "
               "should start at block 3 (the model has 6 layers, 0-5)");
    /* overlap */
    expect_err(load_coord("    - {name: a, address: 'h:1', layers: 0-3}\n"
                          "    - {name: b, address: 'h:2', layers: 3-5}\n"),
               "dir/t.yaml:12:41: job.clusters[1].layers: layer ranges do not cover the model exactly: range 3-5 "
               "should start at block 4 (the model has 6 layers, 0-5)");
    /* short */
    expect_err(load_coord("    - {name: a, address: 'h:1', layers: 0-2}\n"
                          "    - {name: b, address: 'h:2', layers: 3-4}\n"),
               "dir/t.yaml:12:41: job.clusters[1].layers: layer ranges do not cover the model exactly: they end at "
               "block 4 but the model has 6 layers (0-5)");
    /* too long */
    expect_err(load_coord("    - {name: a, address: 'h:1', layers: 0-2}\n"
                          "    - {name: b, address: 'h:2', layers: 3-9}\n"),
               "dir/t.yaml:12:41: job.clusters[1].layers: layer ranges do not cover the model exactly: range 3-9 "
               "ends past the last block 5");
    expect_err(load_coord("    - {name: a, address: 'h:1', layers: 0-2}\n    - {name: b, address: 'h:2'}\n"),
               "dir/t.yaml:12:7: job.clusters[1].layers: mixing auto and explicit layer ranges; give every cluster "
               "a range or none");
    expect_err(load_coord("    - {name: a, address: 'h:1', layers: 2-1}\n"),
               "dir/t.yaml:11:41: job.clusters[0].layers: expected \"A-B\" (first and last block, 0 <= A <= B) or "
               "auto; got '2-1'");
    expect_err(load_coord("    - {name: a, address: 'h:1'}\n    - {name: a, address: 'h:2'}\n"),
               "dir/t.yaml:12:14: job.clusters[1].name: duplicate cluster name 'a' (also clusters[0])");
    /* tied embeddings need embedding and head on one daemon */
    char buf[2048];
    snprintf(buf, sizeof buf, "%s", COORD_HEAD);
    char *tie = strstr(buf, ", tie_embeddings: false");
    memmove(tie, tie + 23, strlen(tie + 23) + 1);
    strcat(buf, "    - {name: a, address: 'h:1'}\n    - {name: b, address: 'h:2'}\n");
    expect_err(load(buf), "dir/t.yaml:6:10: job.model.tie_embeddings: a chain of 2 clusters puts the embedding and "
                          "the head on different daemons, and tied embeddings need both on one: set tie_embeddings: "
                          "false or topology: ushape");
    strcat(buf, "  topology: ushape\n");
    assert_int_equal(load(buf), 0);
    expect_err(load_coord("    - {name: a}\n"), "dir/t.yaml:11:7: job.clusters[0].address: missing required key (role coordinator)");
    expect_err(load_coord("    []\n"), "dir/t.yaml:11:5: job.clusters: must have at least one item");
    expect_err(load(COORD_HEAD), "dir/t.yaml:10:12: job.clusters: missing value");
}

static void test_files(void **state)
{
    (void)state;
    int rc = nb_cfg_load("/nonexistent/nebula.yaml", &cfg, err, sizeof err);
    assert_int_equal(rc, NB_EIO);
    assert_string_equal(err, "/nonexistent/nebula.yaml: cannot read config file: No such file or directory");
    rc = nb_cfg_load(".", &cfg, err, sizeof err);
    assert_int_equal(rc, NB_EIO);
    assert_string_equal(err, ".: cannot read config file: Is a directory");
    rc = load("name: [unclosed\n");
    assert_int_equal(rc, NB_EFORMAT);
    assert_non_null(strstr(err, "dir/t.yaml:2:1: yaml: "));
    assert_int_equal(nb_cfg_edit_distance("modle", "model"), 2);
    assert_int_equal(nb_cfg_edit_distance("", "abc"), 3);
}

/* Nesting is refused at level 65 with the position of the offending
 * collection, before libyaml builds a document (its time grows with the
 * square of the depth: 25,000 levels took 2.2 s, 100,000 levels 37 s). */
static void test_deep_nesting(void **state)
{
    (void)state;
    const int levels = 100000;
    size_t n = 32 + 2 * (size_t)levels;
    char *text = malloc(n);
    assert_non_null(text);
    int k = snprintf(text, n, "name: t\nrole: train\njob: ");
    memset(text + k, '[', (size_t)levels);
    memset(text + k + levels, ']', (size_t)levels);
    text[k + 2 * levels] = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = load(text);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    print_message("%d levels refused in %.3f ms\n", levels,
                  (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
    assert_int_equal(rc, NB_ELIMIT);
    /* the root mapping is level 1, so the 64th '[' (column 69) is level 65 */
    assert_string_equal(err, "dir/t.yaml:3:69: yaml: nesting deeper than 64 levels of mappings and lists");
    free(text);

    /* block style too */
    char block[16384];
    k = snprintf(block, sizeof block, "name: t\nrole: train\n");
    for (int i = 0; i < 70; i++)
        k += snprintf(block + k, sizeof block - (size_t)k, "%*sk%d:\n", i, "", i);
    k += snprintf(block + k, sizeof block - (size_t)k, "%*sv: 1\n", 70, "");
    expect_err(load(block), "dir/t.yaml:67:65: yaml: nesting deeper than 64 levels of mappings and lists");

    /* 64 levels are not refused for their depth */
    k = snprintf(text = malloc(256), 256, "name: t\nrole: train\njob: ");
    memset(text + k, '[', 63);
    memset(text + k + 63, ']', 63);
    text[k + 126] = 0;
    assert_int_not_equal(load(text), 0);
    assert_null(strstr(err, "nesting"));
    free(text);
}

static const char *const examples[] = {
    "config/demo/coordinator.yaml", "config/demo/stage-a.yaml", "config/demo/stage-b.yaml",
    "config/2-cluster/coordinator.yaml", "config/2-cluster/east.yaml", "config/2-cluster/west.yaml",
    "config/3-cluster/coordinator.yaml", "config/3-cluster/home.yaml", "config/3-cluster/mid.yaml",
    "config/3-cluster/far.yaml", "config/train/tiny-gpt.yaml",
};

static void test_examples(void **state)
{
    (void)state;
    for (size_t i = 0; i < NB_ARRAY_LEN(examples); i++) {
        int rc = nb_cfg_load(examples[i], &cfg, err, sizeof err);
        if (rc)
            print_error("%s: %s\n", examples[i], err);
        assert_int_equal(rc, 0);
    }
    assert_int_equal(nb_cfg_load("config/train/tiny-gpt.yaml", &cfg, err, sizeof err), 0);
    assert_int_equal(cfg.role, NB_ROLE_TRAIN);
    assert_int_equal(nb_cfg_load("config/3-cluster/coordinator.yaml", &cfg, err, sizeof err), 0);
    assert_int_equal(cfg.job.topology, NB_TOPO_USHAPE);
    assert_int_equal(cfg.job.n_clusters, 3);
}

static char *docs;
static int undocumented;
static void check_doc(const char *path, const char *type, const char *def, bool required, void *ud)
{
    char needle[200];
    snprintf(needle, sizeof needle, "`%s`", path);
    if (!strstr(docs, needle)) {
        print_error("docs/config.md does not document %s\n", needle);
        undocumented++;
    }
}

static void test_docs_name_every_key(void **state)
{
    (void)state;
    FILE *f = fopen("docs/config.md", "rb");
    assert_non_null(f);
    static char buf[1 << 17];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    docs = buf;
    undocumented = 0;
    nb_cfg_each_key(check_doc, NULL);
    assert_int_equal(undocumented, 0);
}

/* The one address parser: configs, jobs from a coordinator, command lines. */
static void test_parse_addr(void **state)
{
    nb_cfg_addr_t a;
    char msg[160];
    assert_int_equal(nb_cfg_parse_addr("[::1]:7000", &a, 1, msg, sizeof msg), 0);
    assert_string_equal(a.host, "::1");
    assert_int_equal(a.port, 7000);
    assert_int_equal(nb_cfg_parse_addr("10.0.0.2:65535", &a, 1, msg, sizeof msg), 0);
    assert_string_equal(a.host, "10.0.0.2");
    assert_int_equal(a.port, 65535);
    assert_int_equal(nb_cfg_parse_addr("host:0", &a, 0, msg, sizeof msg), 0);
    static const char *bad[] = { "host:0", "host:65536", "host:", ":7000", "host", "::1:7000",
                                 "[::1]7000", "[::1:7000", "host:7x", "" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        msg[0] = 0;
        assert_int_equal(nb_cfg_parse_addr(bad[i], &a, 1, msg, sizeof msg), -1);
        assert_true(msg[0] != 0);
    }
    char lng[NB_CFG_ADDR_MAX + 8];
    memset(lng, 'h', sizeof lng - 1);
    lng[sizeof lng - 1] = 0;
    assert_int_equal(nb_cfg_parse_addr(lng, &a, 1, msg, sizeof msg), -1);
    assert_non_null(strstr(msg, "longer than"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_train_defaults), cmocka_unit_test(test_values_parsed),
        cmocka_unit_test(test_token_shift),
        cmocka_unit_test(test_unknown_key),    cmocka_unit_test(test_wrong_type),
        cmocka_unit_test(test_bounds),         cmocka_unit_test(test_missing),
        cmocka_unit_test(test_roles),          cmocka_unit_test(test_layers),
        cmocka_unit_test(test_pipeline_heads),
        cmocka_unit_test(test_lowrank),
        cmocka_unit_test(test_files),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_examples),
        cmocka_unit_test(test_docs_name_every_key),
        cmocka_unit_test(test_parse_addr),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
