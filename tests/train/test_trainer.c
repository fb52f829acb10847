/* test_trainer.c - the single-process trainer: the loss falls on the GPL-3
 * text every Debian machine has; two runs with one seed are bit-identical
 * (losses and weights) and another seed differs; a step equals the
 * documented recipe done by hand; bad configs are refused with the field
 * named; weights files round-trip and broken ones are refused with the file
 * and offset named; checkpoints resume exactly, from the trainer's own or
 * from one written by two stages, and after skipped steps. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "daemon/data/tokens.h"
#include "daemon/train/grad_fault.h"
#include "daemon/train/trainer.h"
#include "daemon/train/checkpoint.h"
#include "daemon/train/weights.h"

#define GPL3 "/usr/share/common-licenses/GPL-3"

static char tok_path[128], w_path[128];

/* Byte-level tokens of the GPL-3 text (first 64 KiB); without the file the
 * group setup fails, and so does every test of this binary. */
static int setup(void **state)
{
    snprintf(tok_path, sizeof tok_path, "/tmp/nb_trainer_test_%d.tok", (int)getpid());
    snprintf(w_path, sizeof w_path, "/tmp/nb_trainer_test_%d.weights", (int)getpid());
    char err[256];
    return nb_tokens_from_text(GPL3, tok_path, 1 << 16, NULL, err, sizeof err);
}

static int teardown(void **state)
{
    unlink(tok_path);
    unlink(w_path);
    return 0;
}

static nb_train_config_t small_config(void)
{
    nb_train_config_t c = {
        .model = { .n_layer = 2, .d_model = 32, .n_head = 4, .d_ff = 128, .vocab = 256, .max_seq = 32,
                   .causal = true, .norm = NB_MODEL_NORM_PRE, .head = NB_MODEL_HEAD_LM, .tie_embeddings = true },
        .optim = nb_optim_config_default(),
        .seed = 1234, .batch = 8, .micro_batches = 2, .seq_len = 32, .steps = 60,
    };
    c.optim.lr = 3e-3f;
    c.optim.lr_min = 3e-4f;
    c.optim.warmup_steps = 5;
    c.optim.total_steps = c.steps;
    snprintf(c.data, sizeof c.data, "%s", tok_path);
    return c;
}

static void run(const nb_train_config_t *c, float *losses, float **weights, size_t *nparams)
{
    nb_backend_t *be = nb_cpu_backend_new();
    nb_trainer_t *t;
    char err[512];
    if (nb_trainer_new(be, c, &t, err, sizeof err) != 0)
        fail_msg("%s", err);
    for (int s = 0; s < c->steps; s++) {
        nb_train_step_t st;
        assert_int_equal(nb_trainer_step(t, &st, err, sizeof err), 0);
        assert_int_equal(st.step, s);
        losses[s] = st.loss;
    }
    nb_train_step_t st;
    assert_int_equal(nb_trainer_step(t, &st, err, sizeof err), NB_ESTATE);
    nb_part_t *p = nb_trainer_part(t);
    *nparams = nb_part_num_params(p);
    *weights = malloc(*nparams * sizeof(float));
    nb_be_to_host(be, *weights, nb_part_params(p), *nparams * sizeof(float));
    nb_trainer_free(t);
    nb_be_free(be);
}

static void test_loss_falls_on_gpl3(void **state)
{
    nb_train_config_t c = small_config();
    float losses[60];
    float *w;
    size_t n;
    run(&c, losses, &w, &n);
    double first = 0, last = 0;
    for (int i = 0; i < 5; i++) {
        first += losses[i] / 5;
        last += losses[55 + i] / 5;
    }
    printf("  GPL-3, %zu parameters: mean loss of steps 1-5 %.3f, of steps 56-60 %.3f\n", n, first, last);
    /* starts near ln(256) = 5.55; byte statistics alone give about 3 */
    assert_true(first > 5.0);
    assert_true(last < first - 2.0);
    free(w);
}

/* BERT-style masked-LM pre-training on the same text. */
static void test_mlm_loss_falls(void **state)
{
    nb_train_config_t c = small_config();
    c.model.vocab = 257; /* 256 bytes + the mask token */
    c.model.causal = false;
    c.model.norm = NB_MODEL_NORM_POST;
    c.model.head = NB_MODEL_HEAD_MLM;
    float losses[60];
    float *w;
    size_t n;
    run(&c, losses, &w, &n);
    double first = 0, last = 0;
    for (int i = 0; i < 5; i++) {
        first += losses[i] / 5;
        last += losses[55 + i] / 5;
    }
    printf("  GPL-3 masked LM: mean loss of steps 1-5 %.3f, of steps 56-60 %.3f\n", first, last);
    assert_true(first > 5.0);
    assert_true(last < first - 1.5);
    free(w);
}

static void test_deterministic(void **state)
{
    nb_train_config_t c = small_config();
    c.steps = c.optim.total_steps = 6;
    float l1[6], l2[6], l3[6];
    float *w1, *w2, *w3;
    size_t n1, n2, n3;
    run(&c, l1, &w1, &n1);
    run(&c, l2, &w2, &n2);
    assert_memory_equal(l1, l2, sizeof l1);
    assert_int_equal(n1, n2);
    assert_memory_equal(w1, w2, n1 * sizeof(float));
    c.seed++;
    run(&c, l3, &w3, &n3);
    assert_memory_not_equal(l1, l3, sizeof l1);
    free(w1);
    free(w2);
    free(w3);
}

/* One trainer step equals the recipe of trainer.h done by hand. */
static void test_step_recipe(void **state)
{
    nb_train_config_t c = small_config();
    c.steps = c.optim.total_steps = 2;
    c.micro_batches = 4;
    float losses[2];
    float *w;
    size_t n;
    run(&c, losses, &w, &n);

    nb_backend_t *be = nb_cpu_backend_new();
    char err[512];
    nb_part_spec_t spec = nb_part_spec_full(&c.model);
    nb_part_t *p;
    assert_int_equal(nb_part_new(be, &c.model, &spec, c.seed, NULL, &p, err, sizeof err), 0);
    int B = c.batch / c.micro_batches, T = c.seq_len;
    nb_part_acts_t *a;
    assert_int_equal(nb_part_acts_new(p, B, T, &a), 0);
    nb_tokens_t *tk;
    assert_int_equal(nb_tokens_open(tok_path, &tk, err, sizeof err), 0);
    nb_optim_t *o;
    assert_int_equal(nb_part_optim_new(p, &c.optim, &o), 0);
    int32_t hin[64], htg[64];
    int32_t *din = nb_be_alloc(be, sizeof hin), *dtg = nb_be_alloc(be, sizeof htg);
    for (int s = 0; s < c.steps; s++) {
        nb_part_zero_grad(p);
        float loss = 0;
        for (int i = 0; i < c.micro_batches; i++) {
            assert_int_equal(nb_tokens_sample(tk, c.seed, (uint64_t)s, (uint32_t)i, B, T, hin, htg), 0);
            nb_be_from_host(be, din, hin, (size_t)B * T * 4);
            nb_be_from_host(be, dtg, htg, (size_t)B * T * 4);
            nb_part_input_t in = { .tokens = din, .targets = dtg, .loss_scale = 1.0f / (float)c.micro_batches };
            float li;
            assert_int_equal(nb_part_forward(p, a, &in, &li), 0);
            assert_int_equal(nb_part_backward(p, a, NULL), 0);
            loss += li / (float)c.micro_batches;
        }
        nb_part_finish_grads(p);
        assert_true(loss == losses[s]);
        double ss = nb_optim_sumsq(be, nb_part_grads(p), nb_part_num_grads(p));
        nb_optim_step(o, nb_part_params(p), nb_part_grads(p), (float)nb_optim_lr(&c.optim, s),
                      nb_optim_clip_scale(&c.optim, ss));
    }
    float *mine = malloc(n * sizeof(float));
    nb_be_to_host(be, mine, nb_part_params(p), n * sizeof(float));
    assert_memory_equal(mine, w, n * sizeof(float));
    free(mine);
    free(w);
    nb_be_dealloc(be, din);
    nb_be_dealloc(be, dtg);
    nb_optim_free(o);
    nb_tokens_close(tk);
    nb_part_acts_free(a);
    nb_part_free(p);
    nb_be_free(be);
}

static void expect_refused(nb_train_config_t c, const char *needle)
{
    nb_backend_t *be = nb_cpu_backend_new();
    nb_trainer_t *t = NULL;
    char err[512] = "";
    assert_true(nb_trainer_new(be, &c, &t, err, sizeof err) < 0);
    assert_null(t);
    printf("  refused: %s\n", err);
    if (!strstr(err, needle))
        fail_msg("'%s' does not mention '%s'", err, needle);
    nb_be_free(be);
}

static void test_bad_config(void **state)
{
    nb_train_config_t c = small_config();
    c.micro_batches = 3;
    expect_refused(c, "micro_batches");
    c = small_config();
    c.seq_len = 33;
    expect_refused(c, "seq_len");
    c = small_config();
    c.model.n_head = 5;
    expect_refused(c, "n_head");
    c = small_config();
    c.model.vocab = 100;
    expect_refused(c, "vocabulary");
    c = small_config();
    c.model.head = NB_MODEL_HEAD_SEQCLS;
    c.model.n_classes = 2;
    expect_refused(c, "head");
    c = small_config();
    c.model.head = NB_MODEL_HEAD_MLM; /* vocab 256 leaves no mask token */
    expect_refused(c, "mask token");
    c = small_config();
    c.optim.lr = -1;
    expect_refused(c, "lr");
    c = small_config();
    snprintf(c.data, sizeof c.data, "/nonexistent/data.tok");
    expect_refused(c, "/nonexistent/data.tok");
    /* job.freeze: a pattern naming no tensor (2 blocks: h0, h1), and
     * everything frozen */
    c = small_config();
    c.freeze.n_freeze = 2;
    snprintf(c.freeze.freeze[0], sizeof c.freeze.freeze[0], "wte");
    snprintf(c.freeze.freeze[1], sizeof c.freeze.freeze[1], "h2.*");
    expect_refused(c, "job.freeze[1] \"h2.*\" matches no tensor of the model");
    snprintf(c.freeze.freeze[1], sizeof c.freeze.freeze[1], "*");
    expect_refused(c, "nothing would train");
}

static void test_weights_file(void **state)
{
    nb_backend_t *be = nb_cpu_backend_new();
    nb_train_config_t c = small_config();
    nb_part_spec_t spec = nb_part_spec_full(&c.model);
    nb_part_t *p, *q;
    char err[512];
    assert_int_equal(nb_part_new(be, &c.model, &spec, 1, NULL, &p, err, sizeof err), 0);
    assert_int_equal(nb_part_new(be, &c.model, &spec, 2, NULL, &q, err, sizeof err), 0);
    assert_int_equal(nb_weights_save(w_path, p, err, sizeof err), 0);
    assert_int_equal(nb_weights_load(w_path, q, err, sizeof err), 0);
    size_t n = nb_part_num_params(p);
    float *a = malloc(n * 4), *b = malloc(n * 4);
    nb_be_to_host(be, a, nb_part_params(p), n * 4);
    nb_be_to_host(be, b, nb_part_params(q), n * 4);
    assert_memory_equal(a, b, n * 4);

    /* another model: the differing field is named */
    nb_model_config_t m2 = c.model;
    m2.d_ff = 64;
    nb_part_t *r;
    assert_int_equal(nb_part_new(be, &m2, &spec, 1, NULL, &r, err, sizeof err), 0);
    assert_int_equal(nb_weights_load(w_path, r, err, sizeof err), NB_EINVAL);
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "d_ff"));
    nb_part_free(r);
    /* another part of the same model */
    nb_part_spec_t s2 = { .embed = true, .first = 0, .last = 1, .head = false };
    assert_int_equal(nb_part_new(be, &c.model, &s2, 1, NULL, &r, err, sizeof err), 0);
    assert_int_equal(nb_weights_load(w_path, r, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "part.last"));
    nb_part_free(r);

    /* truncated, wrong magic, wrong version, trailing bytes: q stays as it was */
    FILE *f = fopen(w_path, "rb");
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)len + 4);
    assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    struct { long len; int byte; unsigned char val; int code; const char *needle; } cases[] = {
        { len - 8, -1, 0, NB_EFORMAT, "header describes" },
        { 30, -1, 0, NB_EFORMAT, "truncated header" },
        { len, 0, 'X', NB_EFORMAT, "offset 0" },
        { len, 4, 7, NB_EVERSION, "version 7" },
        { len + 4, -1, 0, NB_EFORMAT, "truncated or padded" },
        { len, 80, 'Z', NB_EFORMAT, "tensor 0" },
    };
    nb_be_to_host(be, b, nb_part_params(q), n * 4);
    for (size_t k = 0; k < NB_ARRAY_LEN(cases); k++) {
        unsigned char *copy = malloc((size_t)len + 4);
        memcpy(copy, buf, (size_t)len);
        memset(copy + len, 0, 4);
        if (cases[k].byte >= 0)
            copy[cases[k].byte] = cases[k].val;
        f = fopen(w_path, "wb");
        fwrite(copy, 1, (size_t)cases[k].len, f);
        fclose(f);
        free(copy);
        assert_int_equal(nb_weights_load(w_path, q, err, sizeof err), cases[k].code);
        printf("  refused: %s\n", err);
        assert_non_null(strstr(err, w_path));
        if (!strstr(err, cases[k].needle))
            fail_msg("'%s' does not mention '%s'", err, cases[k].needle);
        nb_be_to_host(be, a, nb_part_params(q), n * 4);
        assert_memory_equal(a, b, n * 4);
    }
    assert_int_equal(nb_weights_load("/nonexistent/w", q, err, sizeof err), NB_EIO);
    free(buf);
    free(a);
    free(b);
    nb_part_free(p);
    nb_part_free(q);
    nb_be_free(be);
}

static uint32_t file_version(const char *path)
{
    uint32_t v = 0;
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 4, SEEK_SET), 0);
    assert_int_equal(fread(&v, 4, 1, f), 1);
    fclose(f);
    return v;
}

/* q's parameters equal want (n floats) bit for bit. */
static void expect_params(nb_backend_t *be, nb_part_t *q, const float *want, size_t n)
{
    float *got = malloc(n * 4);
    assert_non_null(got);
    nb_be_to_host(be, got, nb_part_params(q), n * 4);
    assert_memory_equal(got, want, n * 4);
    free(got);
}

/* Saves p to w_path, which must come out as the given file version, loads
 * it into q (a part of the same model) and checks q now holds p's
 * parameters bit for bit. Returns p's parameters on the host (the caller
 * frees them); *n gets their count. */
static float *save_load_same(nb_backend_t *be, nb_part_t *p, nb_part_t *q, uint32_t version, size_t *n)
{
    char err[512];
    assert_int_equal(nb_weights_save(w_path, p, err, sizeof err), 0);
    assert_int_equal(file_version(w_path), version);
    if (nb_weights_load(w_path, q, err, sizeof err))
        fail_msg("%s", err);
    *n = nb_part_num_params(p);
    float *a = malloc(*n * 4);
    assert_non_null(a);
    nb_be_to_host(be, a, nb_part_params(p), *n * 4);
    expect_params(be, q, a, *n);
    return a;
}

/* Overwrites header field i (the i-th i32 after the magic and the version)
 * of the weights file at path with value. */
static void poke_header_field(const char *path, int i, int32_t value)
{
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, 8 + 4 * (long)i, SEEK_SET), 0);
    assert_int_equal(fwrite(&value, 4, 1, f), 1);
    fclose(f);
}

/* The model settings (LayerNorm eps, GELU form) travel in the weights file:
 * a default model is written as version 1 (what earlier builds read), any
 * other as version 2 with the settings; a file is refused by a model whose
 * settings differ, naming the setting; peek reads them back. */
static void test_weights_model_settings(void **state)
{
    nb_backend_t *be = nb_cpu_backend_new();
    nb_train_config_t c = small_config();
    nb_part_spec_t spec = nb_part_spec_full(&c.model);
    nb_model_config_t bert = c.model, erf_only = c.model, eps_only = c.model;
    bert.ln_eps = 1e-12f;
    bert.gelu = NB_MODEL_GELU_ERF;
    erf_only.gelu = NB_MODEL_GELU_ERF;
    eps_only.ln_eps = 1e-12f;
    nb_part_t *def, *p, *q, *e, *g;
    char err[512];
    assert_int_equal(nb_part_new(be, &c.model, &spec, 1, NULL, &def, err, sizeof err), 0);
    assert_int_equal(nb_part_new(be, &bert, &spec, 1, NULL, &p, err, sizeof err), 0);
    assert_int_equal(nb_part_new(be, &bert, &spec, 2, NULL, &q, err, sizeof err), 0);
    assert_int_equal(nb_part_new(be, &eps_only, &spec, 2, NULL, &e, err, sizeof err), 0);
    assert_int_equal(nb_part_new(be, &erf_only, &spec, 2, NULL, &g, err, sizeof err), 0);

    assert_int_equal(nb_weights_save(w_path, def, err, sizeof err), 0);
    assert_int_equal(file_version(w_path), 1);
    assert_int_equal(nb_weights_load(w_path, q, err, sizeof err), NB_EINVAL);
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "ln_eps is 1e-05 in the file (by its version), 1e-12 in this model"));

    size_t n;
    float *a = save_load_same(be, p, q, 2, &n);
    assert_int_equal(nb_weights_load(w_path, def, err, sizeof err), NB_EINVAL);
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "ln_eps is 1e-12 in the file, 1e-05 in this model"));
    assert_int_equal(nb_weights_load(w_path, e, err, sizeof err), NB_EINVAL);
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "gelu is erf in the file, tanh in this model"));
    assert_int_equal(nb_weights_load(w_path, g, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "ln_eps"));

    nb_weights_info_t info;
    assert_int_equal(nb_weights_peek(w_path, &info, err, sizeof err), 0);
    assert_true(info.model.ln_eps == 1e-12f);
    assert_int_equal(info.model.gelu, NB_MODEL_GELU_ERF);
    assert_int_equal(info.n_params, n);
    nb_weights_info_free(&info);
    free(a);
    nb_part_free(def);
    nb_part_free(p);
    nb_part_free(q);
    nb_part_free(e);
    nb_part_free(g);
    nb_be_free(be);
}

/* The low-rank split (job.lowrank) travels in the weights file: a split
 * model is written as version 4 and reads back bit for bit; a model with
 * another rank or block, or without the split, refuses it naming the
 * field, and a split model refuses a dense file (version 1: no split by its
 * version); peek and job.init (nb_weights_load_part, a stage's half at the
 * factor) read the split back. */
static void test_weights_lowrank(void **state)
{
    nb_backend_t *be = nb_cpu_backend_new();
    nb_train_config_t c = small_config();
    nb_model_config_t lr = c.model, r8 = c.model, b1 = c.model;
    lr.lowrank_block = 0;
    lr.lowrank_rank = 4;
    r8 = lr;
    r8.lowrank_rank = 8;
    b1 = lr;
    b1.lowrank_block = 1;
    nb_part_spec_t spec = nb_part_spec_full(&c.model);
    nb_part_t *p, *q, *other, *dense;
    char err[512];
    assert_int_equal(nb_part_new(be, &lr, &spec, 1, NULL, &p, err, sizeof err), 0);
    assert_int_equal(nb_part_new(be, &lr, &spec, 2, NULL, &q, err, sizeof err), 0);
    assert_int_equal(nb_part_new(be, &c.model, &spec, 1, NULL, &dense, err, sizeof err), 0);
    size_t n;
    float *a = save_load_same(be, p, q, 4, &n);
    struct { const nb_model_config_t *m; const char *needle; } refuse[] = {
        { &r8, "lowrank_rank is 4 in the file, 8 in this model (job.lowrank)" },
        { &b1, "lowrank_block is 0 in the file, 1 in this model (job.lowrank)" },
        { &c.model, "lowrank_rank is 4 in the file, 0 in this model (job.lowrank)" },
    };
    for (size_t k = 0; k < NB_ARRAY_LEN(refuse); k++) {
        assert_int_equal(nb_part_new(be, refuse[k].m, &spec, 3, NULL, &other, err, sizeof err), 0);
        assert_int_equal(nb_weights_load(w_path, other, err, sizeof err), NB_EINVAL);
        printf("  refused: %s\n", err);
        if (!strstr(err, refuse[k].needle))
            fail_msg("'%s' does not say '%s'", err, refuse[k].needle);
        assert_int_equal(nb_weights_load_part(w_path, other, err, sizeof err), NB_EINVAL);
        printf("  refused (job.init): %s\n", err);
        assert_non_null(strstr(err, refuse[k].m->lowrank_rank != 4 ? "lowrank_rank is 4 in the file"
                                                                  : "lowrank_block is 0 in the file"));
        nb_part_free(other);
    }
    nb_weights_info_t info;
    assert_int_equal(nb_weights_peek(w_path, &info, err, sizeof err), 0);
    assert_int_equal(info.model.lowrank_rank, 4);
    assert_int_equal(info.model.lowrank_block, 0);
    assert_int_equal(info.n_params, n);
    nb_weights_info_free(&info);
    /* job.init of each half at the factor from the whole split file */
    nb_part_spec_t halves[2] = { { .embed = true, .first = 0, .last = 1 }, { .first = 1, .last = 2, .head = true } };
    nb_part_t *lo;
    assert_int_equal(nb_part_new(be, &lr, &halves[0], 7, NULL, &lo, err, sizeof err), 0);
    assert_int_equal(nb_part_out_width(lo), 4);
    for (int h = 0; h < 2; h++) {
        nb_part_t *x;
        assert_int_equal(nb_part_new(be, &lr, &halves[h], 7, h ? lo : NULL, &x, err, sizeof err), 0);
        if (nb_weights_load_part(w_path, x, err, sizeof err))
            fail_msg("%s", err);
        for (int i = 0; i < nb_part_num_tensors(x); i++) {
            const nb_param_info_t *t = nb_part_tensor(x, i);
            const nb_param_info_t *w = nb_part_tensor(p, nb_part_find_tensor(p, t->name));
            float *v = malloc(t->numel * 4);
            nb_be_to_host(be, v, nb_part_params(x) + t->offset, t->numel * 4);
            if (memcmp(v, a + w->offset, t->numel * 4))
                fail_msg("job.init of half %d: %s differs", h, t->name);
            free(v);
        }
        nb_part_free(x);
    }
    nb_part_free(lo);
    /* a dense file (version 1) into the split model: no split by its version */
    assert_int_equal(nb_weights_save(w_path, dense, err, sizeof err), 0);
    assert_int_equal(file_version(w_path), 1);
    assert_int_equal(nb_weights_load(w_path, q, err, sizeof err), NB_EINVAL);
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "lowrank_rank is 0 in the file (by its version), 4 in this model (job.lowrank)"));
    expect_params(be, q, a, n); /* unchanged by the refusal */
    free(a);
    nb_part_free(p);
    nb_part_free(q);
    nb_part_free(dense);
    nb_be_free(be);
}

/* Cross-attention (job.model.cross_attn: the decoder of an encoder-decoder
 * job) travels in the weights file: such a model is written as version 5
 * and reads back bit for bit (with adapters after xattn too); a model
 * without cross-attention refuses the file naming the field, in
 * nb_weights_load and job.init, and a decoder refuses a file without it
 * (version 1: none by its version), unchanged; peek reads it back, and a
 * cross_attn field other than 0 or 1 is refused. */
/* Token shift (job.model.token_shift) travels in the weights file: a model
 * with it is written as version 6 and reads back bit for bit; a model
 * without it stays version 1 (the bytes earlier builds wrote); a file of
 * either refuses the other model, by load and by job.init, naming the
 * field; peek reads it back and refuses a field other than 0 or 1. */
static void test_weights_token_shift(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    nb_train_config_t c = small_config();
    nb_model_config_t ts = c.model;
    ts.token_shift = true;
    nb_part_spec_t spec = nb_part_spec_full(&c.model);
    char err[512];
    nb_part_t *p, *q, *plain;
    assert_int_equal(nb_part_new(be, &ts, &spec, 1, NULL, &p, err, sizeof err), 0);
    assert_int_equal(nb_part_new(be, &ts, &spec, 2, NULL, &q, err, sizeof err), 0);
    assert_int_equal(nb_part_new(be, &c.model, &spec, 3, NULL, &plain, err, sizeof err), 0);
    size_t n;
    float *a = save_load_same(be, p, q, 6, &n);
    if (nb_weights_load_part(w_path, q, err, sizeof err))
        fail_msg("%s", err);
    nb_weights_info_t info;
    if (nb_weights_peek(w_path, &info, err, sizeof err))
        fail_msg("%s", err);
    assert_true(info.model.token_shift);
    assert_false(info.model.cross_attn);
    assert_int_equal(info.n_params, n);
    nb_weights_info_free(&info);
    /* into a model without it: refused, naming the field */
    assert_int_equal(nb_weights_load(w_path, plain, err, sizeof err), NB_EINVAL);
    printf("  refused: %s\n", err);
    if (!strstr(err, "token_shift is true in the file, false in this model (job.model.token_shift"))
        fail_msg("'%s' does not name token_shift", err);
    assert_int_equal(nb_weights_load_part(w_path, plain, err, sizeof err), NB_EINVAL);
    printf("  refused (job.init): %s\n", err);
    if (!strstr(err, "token_shift is true in the file, false in this model"))
        fail_msg("'%s' does not name token_shift", err);
    /* a token_shift field of 2: refused by peek and load */
    poke_header_field(w_path, 24, 2);
    assert_int_equal(nb_weights_peek(w_path, &info, err, sizeof err), NB_EFORMAT);
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "token_shift is 2, must be 0 or 1"));
    assert_int_equal(nb_weights_load(w_path, q, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "token_shift is"));
    /* a file without it stays version 1 and refuses the token-shift model */
    assert_int_equal(nb_weights_save(w_path, plain, err, sizeof err), 0);
    assert_int_equal(file_version(w_path), 1);
    assert_int_equal(nb_weights_load(w_path, q, err, sizeof err), NB_EINVAL);
    printf("  refused: %s\n", err);
    if (!strstr(err, "token_shift is false in the file (by its version), true in this model"))
        fail_msg("'%s' does not name token_shift", err);
    assert_int_equal(nb_weights_load_part(w_path, q, err, sizeof err), NB_EINVAL);
    if (!strstr(err, "token_shift is false in the file, true in this model"))
        fail_msg("'%s' does not name token_shift", err);
    free(a);
    nb_part_free(p);
    nb_part_free(q);
    nb_part_free(plain);
    nb_be_free(be);
}

static void test_weights_cross_attn(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    nb_train_config_t c = small_config();
    nb_model_config_t xa = c.model, xad = c.model;
    xa.cross_attn = true;
    xad = xa;
    xad.adapter_size = 4;
    xad.adapter_after = NB_ADAPTER_XATTN | NB_ADAPTER_FFN;
    xad.adapter_first = 0;
    xad.adapter_last = 2;
    nb_part_spec_t spec = nb_part_spec_full(&c.model);
    char err[512];
    const nb_model_config_t *models[2] = { &xa, &xad };
    for (int v = 0; v < 2; v++) {
        nb_part_t *p, *q, *plain;
        assert_int_equal(nb_part_new(be, models[v], &spec, 1, NULL, &p, err, sizeof err), 0);
        assert_int_equal(nb_part_new(be, models[v], &spec, 2, NULL, &q, err, sizeof err), 0);
        assert_int_equal(nb_part_new(be, &c.model, &spec, 3, NULL, &plain, err, sizeof err), 0);
        size_t n;
        float *a = save_load_same(be, p, q, 5, &n);
        nb_weights_info_t info;
        if (nb_weights_peek(w_path, &info, err, sizeof err))
            fail_msg("%s", err);
        assert_true(info.model.cross_attn);
        assert_int_equal(info.model.adapter_size, models[v]->adapter_size);
        assert_int_equal(info.n_tensors, nb_part_num_tensors(p));
        assert_int_equal(info.n_params, n);
        nb_weights_info_free(&info);
        /* into a model without cross-attention: refused, naming the field */
        if (v == 0) {
            assert_int_equal(nb_weights_load(w_path, plain, err, sizeof err), NB_EINVAL);
            printf("  refused: %s\n", err);
            if (!strstr(err, "cross_attn is 1 in the file, 0 in this model (job.model.cross_attn"))
                fail_msg("'%s' does not name cross_attn", err);
            assert_int_equal(nb_weights_load_part(w_path, plain, err, sizeof err), NB_EINVAL);
            printf("  refused (job.init): %s\n", err);
            if (!strstr(err, "cross_attn is 1 in the file, 0 in this model"))
                fail_msg("'%s' does not name cross_attn", err);
        }
        /* a cross_attn field of 2: refused by peek (and so job.init) and load */
        poke_header_field(w_path, 23, 2);
        assert_int_equal(nb_weights_peek(w_path, &info, err, sizeof err), NB_EFORMAT);
        printf("  refused: %s\n", err);
        assert_non_null(strstr(err, "cross_attn is 2, must be 0 or 1"));
        assert_int_equal(nb_weights_load(w_path, q, err, sizeof err), NB_EINVAL);
        assert_non_null(strstr(err, "cross_attn is 2 in the file"));
        /* a file without cross-attention (version 1) into the decoder */
        assert_int_equal(nb_weights_save(w_path, plain, err, sizeof err), 0);
        assert_int_equal(file_version(w_path), 1);
        if (v == 0) {
            assert_int_equal(nb_weights_load(w_path, q, err, sizeof err), NB_EINVAL);
            printf("  refused: %s\n", err);
            assert_non_null(strstr(err, "cross_attn is 0 in the file (by its version), 1 in this model"));
            assert_int_equal(nb_weights_load_part(w_path, q, err, sizeof err), NB_EINVAL);
            printf("  refused (job.init): %s\n", err);
            assert_non_null(strstr(err, "cross_attn is 0 in the file, 1 in this model"));
        }
        expect_params(be, q, a, n); /* unchanged by the refusals */
        free(a);
        nb_part_free(p);
        nb_part_free(q);
        nb_part_free(plain);
    }
    nb_be_free(be);
}

/* Held-out evaluation: with eval_fraction 0.1 the file's last 10% is held
 * out. Its tokens (IDs 200..255, which the first 90% lacks) never reach a
 * training batch: their rows of the untied input embedding keep their
 * initial values exactly (no gradient, no weight decay), while with
 * fraction 0 they move. The reported loss is finite and equals a
 * recomputation from the documented batches (the sampler's key (seed,
 * 2^64 - 1, j) on the held-out tokens). A second token file works the same;
 * bad settings are refused. */
static void test_eval_split(void **state)
{
    char tpath[160], epath[160], err[512];
    snprintf(tpath, sizeof tpath, "%s.split.tok", tok_path);
    snprintf(epath, sizeof epath, "%s.eval.tok", tok_path);
    enum { N = 4000, HELD = 400 };
    uint32_t *ids = malloc(N * sizeof *ids);
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < N; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        ids[i] = i < N - HELD ? (uint32_t)(x % 200) : 200 + (uint32_t)(x % 56);
    }
    assert_int_equal(nb_tokens_write(tpath, ids, N, 256, err, sizeof err), 0);
    assert_int_equal(nb_tokens_write(epath, ids + N - HELD, HELD, 256, err, sizeof err), 0);
    free(ids);

    nb_train_config_t c = small_config();
    snprintf(c.data, sizeof c.data, "%s", tpath);
    c.model.tie_embeddings = false;
    c.optim.weight_decay = 0.0f;
    c.steps = c.optim.total_steps = 10;
    c.eval_fraction = 0.1;
    c.eval_batches = 3;
    size_t V = 256, C = (size_t)c.model.d_model;
    for (int pass = 0; pass < 2; pass++) {
        nb_backend_t *be = nb_cpu_backend_new();
        nb_trainer_t *t;
        if (nb_trainer_new(be, &c, &t, err, sizeof err))
            fail_msg("%s", err);
        uint64_t ntr, nev;
        nb_trainer_split(t, &ntr, &nev);
        assert_int_equal(ntr, pass == 0 ? N - HELD : N);
        assert_int_equal(nev, pass == 0 ? HELD : 0);
        nb_part_t *p = nb_trainer_part(t);
        int wi = nb_part_find_tensor(p, "wte");
        size_t off = nb_part_tensor(p, wi)->offset;
        float *w0 = malloc(V * C * 4), *w1 = malloc(V * C * 4);
        nb_be_to_host(be, w0, nb_part_params(p) + off, V * C * 4);
        for (int s = 0; s < c.steps; s++)
            if (nb_trainer_step(t, NULL, err, sizeof err))
                fail_msg("%s", err);
        nb_be_to_host(be, w1, nb_part_params(p) + off, V * C * 4);
        int moved_held = 0, moved_train = 0;
        for (size_t v = 0; v < V; v++) {
            bool moved = memcmp(w0 + v * C, w1 + v * C, C * 4) != 0;
            moved_held += moved && v >= 200;
            moved_train += moved && v < 200;
        }
        print_message("  fraction %g: embedding rows moved: %d of 200 training IDs, %d of 56 held-out IDs\n",
                      pass == 0 ? 0.1 : 0.0, moved_train, moved_held);
        assert_true(moved_train > 150);
        if (pass == 0) {
            assert_int_equal(moved_held, 0);
            double vl;
            if (nb_trainer_eval(t, &vl, err, sizeof err))
                fail_msg("%s", err);
            assert_true(isfinite(vl) && vl > 0);
            /* recompute: the held-out slice, the documented batches, a copy of the model */
            nb_tokens_t *f, *held;
            assert_int_equal(nb_tokens_open(tpath, &f, err, sizeof err), 0);
            assert_int_equal(nb_tokens_slice(f, N - HELD, HELD, &held), 0);
            nb_part_spec_t spec = nb_part_spec_full(&c.model);
            nb_part_t *q;
            nb_part_acts_t *a;
            int B = c.batch / c.micro_batches, T = c.seq_len;
            assert_int_equal(nb_part_new(be, &c.model, &spec, 99, NULL, &q, err, sizeof err), 0);
            nb_be_copy(be, nb_part_params(q), nb_part_params(p), nb_part_num_params(p) * 4);
            assert_int_equal(nb_part_acts_new(q, B, T, &a), 0);
            int32_t *in = malloc((size_t)B * T * 4), *tg = malloc((size_t)B * T * 4);
            double sum = 0;
            for (int j = 0; j < c.eval_batches; j++) {
                assert_int_equal(nb_tokens_sample(held, c.seed, UINT64_MAX, (uint32_t)j, B, T, in, tg), 0);
                for (int i = 0; i < B * T; i++)
                    assert_true(in[i] >= 200 && tg[i] >= 200); /* held-out tokens only */
                nb_part_input_t pin = { .tokens = in, .targets = tg, .loss_scale = 1.0f };
                float li;
                assert_int_equal(nb_part_forward(q, a, &pin, &li), 0);
                sum += li;
            }
            print_message("  held-out loss %.6f, recomputed %.6f\n", vl, sum / c.eval_batches);
            assert_true(vl == sum / c.eval_batches);
            free(in);
            free(tg);
            nb_part_acts_free(a);
            nb_part_free(q);
            nb_tokens_close(held);
            nb_tokens_close(f);
        } else {
            assert_true(moved_held > 0); /* the check above can fail */
            double vl;
            assert_int_equal(nb_trainer_eval(t, &vl, err, sizeof err), NB_ESTATE);
        }
        free(w0);
        free(w1);
        nb_trainer_free(t);
        nb_be_free(be);
        c.eval_fraction = 0.0;
    }

    /* a second file: training keeps the whole first one */
    snprintf(c.eval_data, sizeof c.eval_data, "%s", epath);
    nb_backend_t *be = nb_cpu_backend_new();
    nb_trainer_t *t;
    if (nb_trainer_new(be, &c, &t, err, sizeof err))
        fail_msg("%s", err);
    uint64_t ntr, nev;
    nb_trainer_split(t, &ntr, &nev);
    assert_int_equal(ntr, N);
    assert_int_equal(nev, HELD);
    double vl;
    assert_int_equal(nb_trainer_eval(t, &vl, err, sizeof err), 0);
    assert_true(isfinite(vl));
    nb_trainer_free(t);
    /* refusals */
    c.eval_fraction = 0.1;
    assert_int_equal(nb_trainer_new(be, &c, &t, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "exclude each other"));
    c.eval_data[0] = '\0';
    c.eval_fraction = 0.005; /* 20 tokens held out: fewer than seq_len + 1 */
    assert_int_equal(nb_trainer_new(be, &c, &t, err, sizeof err), NB_EINVAL);
    print_message("  refused: %s\n", err);
    assert_non_null(strstr(err, "each needs seq_len + 1"));
    nb_be_free(be);
    unlink(tpath);
    unlink(epath);
}

static float *params_copy(nb_trainer_t *t, size_t *n)
{
    nb_part_t *p = nb_trainer_part(t);
    *n = nb_part_num_params(p);
    float *v = malloc(*n * sizeof *v);
    nb_be_to_host(nb_part_backend(p), v, nb_part_params(p), *n * sizeof *v);
    return v;
}

static bool all_finite(const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return false;
    return true;
}

/* Stop after 3 steps, checkpoint, resume in a new trainer: the same losses
 * and weights as 6 steps without a break. Another run's checkpoint, a
 * weights file and a damaged checkpoint are refused, the trainer left as
 * it was. */
static void test_checkpoint_resume(void **state)
{
    nb_train_config_t c = small_config();
    c.steps = c.optim.total_steps = 6;
    float ref[6];
    float *wref;
    size_t n;
    run(&c, ref, &wref, &n);

    char ck[160], err[512], cmd[200];
    snprintf(ck, sizeof ck, "%s.ckpt", w_path);
    nb_backend_t *be = nb_cpu_backend_new();
    nb_trainer_t *a, *b;
    nb_train_step_t st;
    assert_int_equal(nb_trainer_new(be, &c, &a, err, sizeof err), 0);
    for (int s = 0; s < 3; s++) {
        assert_int_equal(nb_trainer_step(a, &st, err, sizeof err), 0);
        assert_true(st.loss == ref[s]);
    }
    assert_int_equal(nb_trainer_save(a, ck, err, sizeof err), 0);
    nb_trainer_free(a);
    assert_int_equal(nb_trainer_new(be, &c, &b, err, sizeof err), 0);
    assert_int_equal(nb_trainer_resume(b, ck, err, sizeof err), 0);
    assert_int_equal(nb_trainer_steps_done(b), 3);
    for (int s = 3; s < 6; s++) {
        assert_int_equal(nb_trainer_step(b, &st, err, sizeof err), 0);
        assert_int_equal(st.step, s);
        assert_true(st.loss == ref[s]);
    }
    float *w = malloc(n * 4);
    nb_be_to_host(be, w, nb_part_params(nb_trainer_part(b)), n * 4);
    assert_memory_equal(w, wref, n * 4);
    nb_trainer_free(b);

    /* another run's checkpoint is refused, naming what differs */
    nb_train_config_t other = c;
    other.seed++;
    assert_int_equal(nb_trainer_new(be, &other, &b, err, sizeof err), 0);
    assert_int_equal(nb_trainer_resume(b, ck, err, sizeof err), NB_EINVAL);
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "seed"));
    nb_trainer_free(b);
    other = c;
    other.micro_batches = 4;
    assert_int_equal(nb_trainer_new(be, &other, &b, err, sizeof err), 0);
    assert_int_equal(nb_trainer_resume(b, ck, err, sizeof err), NB_EINVAL);
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "micro_batches"));
    /* the model settings: a checkpoint of the default model refuses a run
     * with the erf GELU or another eps, and the other way round */
    other = c;
    other.model.gelu = NB_MODEL_GELU_ERF;
    nb_trainer_free(b);
    assert_int_equal(nb_trainer_new(be, &other, &b, err, sizeof err), 0);
    assert_int_equal(nb_trainer_resume(b, ck, err, sizeof err), NB_EINVAL);
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "model.gelu is"));
    char ck2[170];
    snprintf(ck2, sizeof ck2, "%s.erf", ck);
    assert_int_equal(nb_trainer_save(b, ck2, err, sizeof err), 0);
    nb_trainer_free(b);
    assert_int_equal(nb_trainer_new(be, &c, &b, err, sizeof err), 0);
    assert_int_equal(nb_trainer_resume(b, ck2, err, sizeof err), NB_EINVAL);
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "model.gelu is"));
    nb_trainer_free(b);
    other.model.ln_eps = 1e-12f;
    assert_int_equal(nb_trainer_new(be, &other, &b, err, sizeof err), 0);
    assert_int_equal(nb_trainer_resume(b, ck2, err, sizeof err), NB_EINVAL);
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "model.ln_eps is"));
    nb_trainer_free(b);
    other.model.ln_eps = 0;
    assert_int_equal(nb_trainer_new(be, &other, &b, err, sizeof err), 0);
    assert_int_equal(nb_trainer_resume(b, ck2, err, sizeof err), 0);
    snprintf(cmd, sizeof cmd, "rm -rf '%.170s'", ck2);
    assert_int_equal(system(cmd), 0);
    /* token shift (job.model.token_shift): recorded only when set; a
     * checkpoint of a model without it refuses a run with it and the other
     * way round, naming it; a run with it resumes its own bit for bit */
    other = c;
    other.model.token_shift = true;
    nb_trainer_free(b);
    assert_int_equal(nb_trainer_new(be, &other, &b, err, sizeof err), 0);
    assert_int_equal(nb_trainer_resume(b, ck, err, sizeof err), NB_EINVAL);
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "model.token_shift is"));
    size_t n_ts;
    float *ts_saved = params_copy(b, &n_ts);
    for (size_t i = 0; i < n_ts; i++) /* weights no fresh run of this seed has */
        ts_saved[i] += 0.25f;
    nb_part_t *tp = nb_trainer_part(b);
    nb_be_from_host(nb_part_backend(tp), nb_part_params(tp), ts_saved, n_ts * 4);
    nb_be_sync(nb_part_backend(tp));
    assert_int_equal(nb_trainer_save(b, ck2, err, sizeof err), 0);
    nb_trainer_free(b);
    assert_int_equal(nb_trainer_new(be, &c, &b, err, sizeof err), 0);
    assert_int_equal(nb_trainer_resume(b, ck2, err, sizeof err), NB_EINVAL);
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "model.token_shift is true"));
    nb_trainer_free(b);
    assert_int_equal(nb_trainer_new(be, &other, &b, err, sizeof err), 0);
    if (nb_trainer_resume(b, ck2, err, sizeof err))
        fail_msg("%s", err);
    size_t n_back;
    float *ts_back = params_copy(b, &n_back);
    assert_int_equal(n_back, n_ts);
    assert_memory_equal(ts_back, ts_saved, n_ts * 4);
    free(ts_saved);
    free(ts_back);
    assert_int_equal(system(cmd), 0);
    other = c;
    other.steps = other.optim.total_steps = 2;
    nb_trainer_free(b);
    assert_int_equal(nb_trainer_new(be, &other, &b, err, sizeof err), 0);
    assert_int_equal(nb_trainer_resume(b, ck, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "more than the 2 configured"));
    /* a weights file is not a checkpoint; a truncated checkpoint is refused */
    assert_int_equal(nb_weights_save(w_path, nb_trainer_part(b), err, sizeof err), 0);
    assert_int_equal(nb_trainer_resume(b, w_path, err, sizeof err), NB_ENOENT);
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "manifest.json"));
    nb_trainer_free(b);
    char file[200];
    snprintf(file, sizeof file, "%s/model.safetensors", ck);
    FILE *f = fopen(file, "rb");
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fclose(f);
    assert_int_equal(truncate(file, len - 4), 0);
    assert_int_equal(nb_trainer_new(be, &c, &b, err, sizeof err), 0);
    size_t n0;
    float *before = params_copy(b, &n0);
    assert_int_equal(nb_trainer_resume(b, ck, err, sizeof err), NB_EFORMAT);
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "model.safetensors"));
    assert_non_null(strstr(err, "truncated"));
    assert_int_equal(nb_trainer_steps_done(b), 0);
    float *after = params_copy(b, &n0);
    assert_memory_equal(before, after, n0 * 4);
    free(before);
    free(after);
    nb_trainer_free(b);
    snprintf(cmd, sizeof cmd, "rm -rf %s", ck);
    assert_int_equal(system(cmd), 0);
    free(w);
    free(wref);
    nb_be_free(be);
}

/* Frozen tensors (job.freeze) through a checkpoint: 3 steps, save,
 * resume in a new trainer with the same freeze, 3 more: the losses and
 * weights of 6 steps without a break, bit for bit, and the frozen tensors
 * still hold their seeded weights. A trainer that would train them (no
 * freeze) refuses the checkpoint, naming the tensor, and stays as it was. */
static void test_frozen_resume(void **state)
{
    nb_train_config_t c = small_config();
    c.steps = c.optim.total_steps = 6;
    c.optim.weight_decay = 0.1f;
    c.freeze.n_freeze = 2;
    snprintf(c.freeze.freeze[0], sizeof c.freeze.freeze[0], "wte");
    snprintf(c.freeze.freeze[1], sizeof c.freeze.freeze[1], "h0.*");
    float ref[6], unfrozen[6];
    float *wref, *wun;
    size_t n;
    run(&c, ref, &wref, &n);
    nb_train_config_t u = c;
    memset(&u.freeze, 0, sizeof u.freeze);
    run(&u, unfrozen, &wun, &n);
    assert_true(ref[5] != unfrozen[5]); /* freezing changed the run */

    char ck[160], err[1024], cmd[200];
    snprintf(ck, sizeof ck, "%s.frozen", w_path);
    nb_backend_t *be = nb_cpu_backend_new();
    nb_trainer_t *a, *b;
    nb_train_step_t st;
    assert_int_equal(nb_trainer_new(be, &c, &a, err, sizeof err), 0);
    size_t n0;
    float *seeded = params_copy(a, &n0);
    for (int s = 0; s < 3; s++) {
        assert_int_equal(nb_trainer_step(a, &st, err, sizeof err), 0);
        assert_true(st.loss == ref[s]);
    }
    assert_int_equal(nb_trainer_save(a, ck, err, sizeof err), 0);
    nb_trainer_free(a);
    assert_int_equal(nb_trainer_new(be, &c, &b, err, sizeof err), 0);
    if (nb_trainer_resume(b, ck, err, sizeof err))
        fail_msg("%s", err);
    for (int s = 3; s < 6; s++) {
        assert_int_equal(nb_trainer_step(b, &st, err, sizeof err), 0);
        assert_true(st.loss == ref[s]);
    }
    float *w = params_copy(b, &n0);
    assert_memory_equal(w, wref, n * 4);
    nb_part_t *p = nb_trainer_part(b);
    int frozen = 0;
    for (int i = 0; i < nb_part_num_tensors(p); i++) {
        const nb_param_info_t *t = nb_part_tensor(p, i);
        bool same = memcmp(w + t->offset, seeded + t->offset, t->numel * 4) == 0;
        if (same != !t->trainable)
            fail_msg("%s (%s) %s", t->name, t->trainable ? "trainable" : "frozen", same ? "did not change" : "changed");
        frozen += !t->trainable;
    }
    assert_int_equal(frozen, 13); /* wte and h0's 12 */
    printf("  3 + 3 steps with wte and h0.* frozen: bit-identical to 6; %d frozen tensors as seeded\n", frozen);
    nb_trainer_free(b);
    /* the same checkpoint, resumed by a run that trains everything */
    assert_int_equal(nb_trainer_new(be, &u, &b, err, sizeof err), 0);
    float *before = params_copy(b, &n0);
    assert_int_equal(nb_trainer_resume(b, ck, err, sizeof err), NB_EINVAL);
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "tensor 'wte' trains in this run but has no AdamW state"));
    assert_int_equal(nb_trainer_steps_done(b), 0);
    float *after = params_copy(b, &n0);
    assert_memory_equal(before, after, n0 * 4);
    nb_trainer_free(b);
    snprintf(cmd, sizeof cmd, "rm -rf %s", ck);
    assert_int_equal(system(cmd), 0);
    free(before);
    free(after);
    free(w);
    free(seeded);
    free(wref);
    free(wun);
    nb_be_free(be);
}

/* 100 steps in legs of 50 + 50 and 33 + 33 + 34, each leg a new trainer
 * resuming the previous leg's checkpoint: the final weights equal 100
 * steps without a break, bit for bit. */
static void test_resume_legs(void **state)
{
    nb_train_config_t c = small_config();
    c.model.n_layer = 1;
    c.batch = 4;
    c.seq_len = 16;
    c.steps = c.optim.total_steps = 100;
    float ref[100];
    float *wref;
    size_t n;
    run(&c, ref, &wref, &n);
    static const int legs[][4] = { { 50, 100 }, { 33, 66, 100 } };
    nb_backend_t *be = nb_cpu_backend_new();
    for (int k = 0; k < 2; k++) {
        char prev[160] = "", dir[160], err[512], cmd[400];
        for (int l = 0; l < 4 && legs[k][l]; l++) {
            nb_trainer_t *t;
            nb_train_step_t st;
            assert_int_equal(nb_trainer_new(be, &c, &t, err, sizeof err), 0);
            if (prev[0] && nb_trainer_resume(t, prev, err, sizeof err))
                fail_msg("%s", err);
            while (nb_trainer_steps_done(t) < legs[k][l]) {
                int s = nb_trainer_steps_done(t);
                assert_int_equal(nb_trainer_step(t, &st, err, sizeof err), 0);
                assert_true(st.loss == ref[s]);
            }
            snprintf(dir, sizeof dir, "%s.leg%d", w_path, l);
            assert_int_equal(nb_trainer_save(t, dir, err, sizeof err), 0);
            if (legs[k][l] == 100) {
                float *w = malloc(n * 4);
                nb_be_to_host(be, w, nb_part_params(nb_trainer_part(t)), n * 4);
                assert_memory_equal(w, wref, n * 4);
                free(w);
            }
            nb_trainer_free(t);
            if (prev[0]) {
                snprintf(cmd, sizeof cmd, "rm -rf %s", prev);
                assert_int_equal(system(cmd), 0);
            }
            snprintf(prev, sizeof prev, "%s", dir);
        }
        snprintf(cmd, sizeof cmd, "rm -rf %s", prev);
        assert_int_equal(system(cmd), 0);
        printf("  %s: 100 steps bit-identical\n", k ? "33 + 33 + 34" : "50 + 50");
    }
    free(wref);
    nb_be_free(be);
}

/* A checkpoint whose files were written by the stages of a pipeline (two
 * parts, one file each, tied embeddings across them) resumes the trainer
 * exactly: the same losses and weights as an uninterrupted run. */
static void test_resume_from_stages(void **state)
{
    nb_train_config_t c = small_config();
    c.steps = c.optim.total_steps = 6;
    float ref[6];
    float *wref;
    size_t n;
    run(&c, ref, &wref, &n);
    char one[160], two[160], err[512], cmd[400];
    snprintf(one, sizeof one, "%s.one", w_path);
    snprintf(two, sizeof two, "%s.two", w_path);
    nb_backend_t *be = nb_cpu_backend_new();
    nb_trainer_t *a;
    nb_train_step_t st;
    assert_int_equal(nb_trainer_new(be, &c, &a, err, sizeof err), 0);
    for (int s = 0; s < 3; s++)
        assert_int_equal(nb_trainer_step(a, &st, err, sizeof err), 0);
    assert_int_equal(nb_trainer_save(a, one, err, sizeof err), 0);
    /* two stages: embedding + block 0, block 1 + head (tied to stage 0's wte) */
    nb_ckpt_manifest_t *m = calloc(1, sizeof *m), *m1 = calloc(1, sizeof *m1);
    assert_int_equal(nb_ckpt_manifest_read(one, m1, err, sizeof err), 0);
    nb_trainer_ckpt_meta(a, &m->meta);
    nb_part_t *parts[2];
    nb_optim_t *opts[2];
    for (int i = 0; i < 2; i++) {
        nb_part_spec_t sp = { .embed = i == 0, .first = i, .last = i ? 2 : 1, .head = i == 1 };
        assert_int_equal(nb_part_new(be, &c.model, &sp, 5, i ? parts[0] : NULL, &parts[i], err, sizeof err), 0);
        assert_int_equal(nb_part_optim_new(parts[i], &c.optim, &opts[i]), 0);
        assert_int_equal(nb_ckpt_load_part(one, m1, parts[i], opts[i], err, sizeof err), 0);
    }
    assert_int_equal(nb_ckpt_begin(two, err, sizeof err), 0);
    for (int i = 0; i < 2; i++) {
        nb_ckpt_snap_t *snap;
        char name[32];
        snprintf(name, sizeof name, "stage%d.safetensors", i);
        assert_int_equal(nb_ckpt_snapshot(parts[i], opts[i], &snap, err, sizeof err), 0);
        assert_int_equal(nb_ckpt_write_file(two, name, &snap, 1, &m->meta, &m->files[i], err, sizeof err), 0);
        m->files[i].stages = 1ull << i;
        nb_ckpt_snap_free(snap);
    }
    m->n_files = 2;
    assert_int_equal(nb_ckpt_manifest_write(two, m, err, sizeof err), 0);
    for (int i = 1; i >= 0; i--) {
        nb_optim_free(opts[i]);
        nb_part_free(parts[i]);
    }
    nb_trainer_free(a);
    snprintf(cmd, sizeof cmd, "rm -rf %s", one);
    assert_int_equal(system(cmd), 0);
    nb_trainer_t *b;
    assert_int_equal(nb_trainer_new(be, &c, &b, err, sizeof err), 0);
    if (nb_trainer_resume(b, two, err, sizeof err))
        fail_msg("%s", err);
    for (int s = 3; s < 6; s++) {
        assert_int_equal(nb_trainer_step(b, &st, err, sizeof err), 0);
        assert_true(st.loss == ref[s]);
    }
    float *w = malloc(n * 4);
    nb_be_to_host(be, w, nb_part_params(nb_trainer_part(b)), n * 4);
    assert_memory_equal(w, wref, n * 4);
    printf("  2-stage checkpoint after 3 steps -> trainer: 6 steps bit-identical\n");
    nb_trainer_free(b);
    snprintf(cmd, sizeof cmd, "rm -rf %s", two);
    assert_int_equal(system(cmd), 0);
    free(w);
    free(wref);
    free(m);
    free(m1);
    nb_be_free(be);
}

/* A low-rank split (job.lowrank) through checkpoints: 3 steps, save,
 * resume in a new trainer, 3 more: the losses and weights of 6 steps
 * without a break, bit for bit. The same checkpoint rewritten by the two
 * stages of a pipeline cut at the factor (the lower part ends with
 * h0.fcproj.v, the upper begins with h0.fcproj.s, .u, .b) resumes the
 * trainer exactly too. A run with another rank, another block or no split
 * refuses it naming model.lowrank, and stays as it was. */
static void test_lowrank_resume(void **state)
{
    nb_train_config_t c = small_config();
    c.steps = c.optim.total_steps = 6;
    c.model.lowrank_block = 0;
    c.model.lowrank_rank = 4;
    float ref[6];
    float *wref;
    size_t n;
    run(&c, ref, &wref, &n);
    char one[160], two[160], err[1024], cmd[400];
    snprintf(one, sizeof one, "%s.lr1", w_path);
    snprintf(two, sizeof two, "%s.lr2", w_path);
    nb_backend_t *be = nb_cpu_backend_new();
    nb_trainer_t *a, *b;
    nb_train_step_t st;
    assert_int_equal(nb_trainer_new(be, &c, &a, err, sizeof err), 0);
    for (int s = 0; s < 3; s++)
        assert_int_equal(nb_trainer_step(a, &st, err, sizeof err), 0);
    assert_int_equal(nb_trainer_save(a, one, err, sizeof err), 0);
    nb_ckpt_manifest_t *m = calloc(1, sizeof *m), *m1 = calloc(1, sizeof *m1);
    assert_int_equal(nb_ckpt_manifest_read(one, m1, err, sizeof err), 0);
    assert_int_equal(m1->meta.model.lowrank_rank, 4);
    assert_int_equal(m1->meta.model.lowrank_block, 0);
    /* the trainer's own checkpoint */
    assert_int_equal(nb_trainer_new(be, &c, &b, err, sizeof err), 0);
    if (nb_trainer_resume(b, one, err, sizeof err))
        fail_msg("%s", err);
    for (int s = 3; s < 6; s++) {
        assert_int_equal(nb_trainer_step(b, &st, err, sizeof err), 0);
        assert_true(st.loss == ref[s]);
    }
    float *w = params_copy(b, &n);
    assert_memory_equal(w, wref, n * 4);
    free(w);
    nb_trainer_free(b);
    printf("  low-rank split (block 0, r 4): 3 + 3 steps bit-identical to 6\n");
    /* two stages cut at the factor: embedding + block 0 up to V, the rest */
    nb_trainer_ckpt_meta(a, &m->meta);
    nb_part_t *parts[2];
    nb_optim_t *opts[2];
    for (int i = 0; i < 2; i++) {
        nb_part_spec_t sp = { .embed = i == 0, .first = i, .last = i ? 2 : 1, .head = i == 1 };
        assert_int_equal(nb_part_new(be, &c.model, &sp, 5, i ? parts[0] : NULL, &parts[i], err, sizeof err), 0);
        assert_int_equal(nb_part_optim_new(parts[i], &c.optim, &opts[i]), 0);
        if (nb_ckpt_load_part(one, m1, parts[i], opts[i], err, sizeof err))
            fail_msg("%s", err);
    }
    assert_int_equal(nb_part_out_width(parts[0]), 4);
    assert_int_equal(nb_part_in_width(parts[1]), 4);
    assert_true(nb_part_find_tensor(parts[0], "h0.fcproj.v") >= 0);
    assert_true(nb_part_find_tensor(parts[1], "h0.fcproj.s") >= 0);
    assert_int_equal(nb_ckpt_begin(two, err, sizeof err), 0);
    for (int i = 0; i < 2; i++) {
        nb_ckpt_snap_t *snap;
        char name[32];
        snprintf(name, sizeof name, "stage%d.safetensors", i);
        assert_int_equal(nb_ckpt_snapshot(parts[i], opts[i], &snap, err, sizeof err), 0);
        assert_int_equal(nb_ckpt_write_file(two, name, &snap, 1, &m->meta, &m->files[i], err, sizeof err), 0);
        m->files[i].stages = 1ull << i;
        nb_ckpt_snap_free(snap);
    }
    m->n_files = 2;
    assert_int_equal(nb_ckpt_manifest_write(two, m, err, sizeof err), 0);
    for (int i = 1; i >= 0; i--) {
        nb_optim_free(opts[i]);
        nb_part_free(parts[i]);
    }
    nb_trainer_free(a);
    assert_int_equal(nb_trainer_new(be, &c, &b, err, sizeof err), 0);
    if (nb_trainer_resume(b, two, err, sizeof err))
        fail_msg("%s", err);
    for (int s = 3; s < 6; s++) {
        assert_int_equal(nb_trainer_step(b, &st, err, sizeof err), 0);
        assert_true(st.loss == ref[s]);
    }
    w = params_copy(b, &n);
    assert_memory_equal(w, wref, n * 4);
    free(w);
    nb_trainer_free(b);
    printf("  2-stage checkpoint cut at the factor after 3 steps -> trainer: 6 steps bit-identical\n");
    /* another split, or none: refused naming model.lowrank, unchanged */
    static const int other[][2] = { { 0, 8 }, { 1, 4 }, { 0, 0 } };
    for (size_t k = 0; k < NB_ARRAY_LEN(other); k++) {
        nb_train_config_t o = c;
        o.model.lowrank_block = other[k][0];
        o.model.lowrank_rank = other[k][1];
        assert_int_equal(nb_trainer_new(be, &o, &b, err, sizeof err), 0);
        size_t n0;
        float *before = params_copy(b, &n0);
        assert_int_equal(nb_trainer_resume(b, one, err, sizeof err), NB_EINVAL);
        printf("  refused: %s\n", err);
        assert_non_null(strstr(err, "model.lowrank"));
        char want[96];
        snprintf(want, sizeof want, "is [0, 4] in the checkpoint, [%d, %d] in this model", other[k][1] ? other[k][0] : 0,
                 other[k][1]);
        if (!strstr(err, want))
            fail_msg("'%s' does not say '%s'", err, want);
        assert_int_equal(nb_trainer_steps_done(b), 0);
        float *after = params_copy(b, &n0);
        assert_memory_equal(before, after, n0 * 4);
        free(before);
        free(after);
        nb_trainer_free(b);
    }
    snprintf(cmd, sizeof cmd, "rm -rf %s %s", one, two);
    assert_int_equal(system(cmd), 0);
    free(wref);
    free(m);
    free(m1);
    nb_be_free(be);
}

/* Steps skipped for a non-finite gradient before the checkpoint: the
 * optimizer's step count (bias correction) is what the checkpoint records,
 * so the resumed run still equals the uninterrupted one. */
static void test_resume_after_skipped(void **state)
{
    nb_train_config_t c = small_config();
    c.steps = c.optim.total_steps = 6;
    setenv(NB_GRAD_FAULT_ENV, "1-2", 1);
    float ref[6];
    float *wref;
    size_t n;
    run(&c, ref, &wref, &n);
    char ck[160], err[512], cmd[200];
    snprintf(ck, sizeof ck, "%s.skip", w_path);
    nb_backend_t *be = nb_cpu_backend_new();
    nb_trainer_t *a, *b;
    nb_train_step_t st;
    assert_int_equal(nb_trainer_new(be, &c, &a, err, sizeof err), 0);
    for (int s = 0; s < 4; s++)
        assert_int_equal(nb_trainer_step(a, &st, err, sizeof err), 0);
    assert_int_equal(nb_trainer_save(a, ck, err, sizeof err), 0);
    nb_trainer_free(a);
    nb_ckpt_manifest_t m;
    assert_int_equal(nb_ckpt_manifest_read(ck, &m, err, sizeof err), 0);
    assert_int_equal(m.meta.step, 4);
    assert_int_equal(m.meta.optim_steps, 2); /* steps 1 and 2 were skipped */
    assert_int_equal(nb_trainer_new(be, &c, &b, err, sizeof err), 0);
    assert_int_equal(nb_trainer_resume(b, ck, err, sizeof err), 0);
    assert_int_equal(nb_optim_steps(nb_trainer_optim(b)), 2);
    for (int s = 4; s < 6; s++) {
        assert_int_equal(nb_trainer_step(b, &st, err, sizeof err), 0);
        assert_true(st.loss == ref[s]);
    }
    float *w = malloc(n * 4);
    nb_be_to_host(be, w, nb_part_params(nb_trainer_part(b)), n * 4);
    assert_memory_equal(w, wref, n * 4);
    nb_trainer_free(b);
    unsetenv(NB_GRAD_FAULT_ENV);
    snprintf(cmd, sizeof cmd, "rm -rf %s", ck);
    assert_int_equal(system(cmd), 0);
    free(w);
    free(wref);
    nb_be_free(be);
}

/* Stops nb_model_layout at the tensor named ud. */
static int stop_at(void *ud, const nb_layout_tensor_t *t) { return strcmp(t->name, ud) == 0 ? NB_EIO : 0; }

/* nb_weights_layout (over kernels' nb_model_layout) equals the layout of a
 * real part (names, shapes, offsets, sizes), for every head, norm, tying
 * and cut, with and without a low-rank split in block 0 (beside adapters
 * and token shift) or in the top block (whose cuts then end at, and begin
 * with, the factor: the head-only part of a U-shape begins with it), with
 * cross-attention and adapters after all three sub-layers, and with token
 * shift alone (no tensors of its own); nb_weights_peek reads a real file's
 * table. nb_model_layout refuses a bad config or spec and stops where its
 * callback says. */
static void test_weights_layout(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    char err[512];
    nb_head_kind_t heads[] = { NB_MODEL_HEAD_LM, NB_MODEL_HEAD_MLM, NB_MODEL_HEAD_SEQCLS, NB_MODEL_HEAD_TOKCLS };
    nb_part_spec_t specs[] = { { true, 0, 3, true }, { true, 0, 1, false }, { false, 1, 3, false },
                               { false, 3, 3, true }, { false, 2, 3, true } };
    int n_adapters = 0, n_xattn = 0, n_lowrank = 0;
    /* feature 0: none; 1: split in block 0, adapters after attn and ffn in
     * blocks 1..2, token shift; 2: split in block 2; 3: cross-attention,
     * adapters after all three sub-layers in blocks 0..1; 4: token shift */
    for (int ft = 0; ft < 5; ft++)
    for (int hk = 0; hk < 4; hk++)
        for (int norm = 0; norm < 2; norm++)
            for (int tie = 0; tie < 2; tie++)
                for (size_t sp = 0; sp < NB_ARRAY_LEN(specs); sp++) {
                    nb_model_config_t m = { .n_layer = 3, .d_model = 16, .n_head = 2, .d_ff = 24, .vocab = 40,
                                            .max_seq = 8, .causal = true, .norm = norm ? NB_MODEL_NORM_POST
                                                                                       : NB_MODEL_NORM_PRE,
                                            .head = heads[hk], .n_classes = 3, .tie_embeddings = tie,
                                            .lowrank_block = ft == 2 ? 2 : 0,
                                            .lowrank_rank = ft == 1 || ft == 2 ? 5 : 0, .cross_attn = ft == 3,
                                            .token_shift = ft == 1 || ft == 4 };
                    if (ft == 1)
                        m.adapter_size = 4, m.adapter_after = NB_ADAPTER_ATTN | NB_ADAPTER_FFN, m.adapter_first = 1,
                        m.adapter_last = 3;
                    if (ft == 3)
                        m.adapter_size = 3, m.adapter_after = NB_ADAPTER_ATTN | NB_ADAPTER_XATTN | NB_ADAPTER_FFN,
                        m.adapter_first = 0, m.adapter_last = 2;
                    if (hk < 2)
                        m.n_classes = 0;
                    nb_part_t *tie_part = NULL, *p = NULL;
                    nb_part_spec_t es = { true, 0, 0, false };
                    if (specs[sp].head && !specs[sp].embed && tie && hk < 2)
                        assert_int_equal(nb_part_new(be, &m, &es, 1, NULL, &tie_part, err, sizeof err), 0);
                    if (nb_part_new(be, &m, &specs[sp], 1, tie_part, &p, err, sizeof err))
                        fail_msg("%s", err);
                    nb_weights_tensor_t t[128];
                    uint64_t np;
                    int n = nb_weights_layout(&m, &specs[sp], t, 128, &np);
                    assert_int_equal(n, nb_part_num_tensors(p));
                    assert_int_equal(np, nb_part_num_params(p));
                    assert_int_equal(nb_model_layout(&m, &specs[sp], NULL, NULL), n);
                    uint64_t off = 0;
                    for (int i = 0; i < n; i++) {
                        const nb_param_info_t *pi = nb_part_tensor(p, i);
                        assert_string_equal(t[i].name, pi->name);
                        assert_int_equal(t[i].ndim, pi->ndim);
                        assert_int_equal(t[i].shape[0], pi->shape[0]);
                        assert_int_equal(t[i].shape[1], pi->shape[1]);
                        assert_int_equal(t[i].numel, pi->numel);
                        assert_int_equal(pi->offset, off); /* packed, in this order */
                        off += t[i].numel;
                        n_adapters += strstr(t[i].name, ".ad_") != NULL;
                        n_xattn += strstr(t[i].name, ".xq.") != NULL;
                        n_lowrank += strstr(t[i].name, ".fcproj.") && strstr(t[i].name, ".fcproj.w") == NULL;
                    }
                    assert_int_equal(off, np);
                    if (n > 1) /* the callback's error stops the list there */
                        assert_int_equal(nb_model_layout(&m, &specs[sp], stop_at, t[1].name), NB_EIO);
                    assert_int_equal(nb_weights_save(w_path, p, err, sizeof err), 0);
                    nb_weights_info_t info;
                    assert_int_equal(nb_weights_peek(w_path, &info, err, sizeof err), 0);
                    assert_int_equal(info.n_tensors, n);
                    assert_int_equal(info.n_params, np);
                    assert_int_equal(info.model.lowrank_rank, m.lowrank_rank);
                    assert_int_equal(info.model.lowrank_block, m.lowrank_block);
                    assert_int_equal(info.model.cross_attn, m.cross_attn);
                    assert_int_equal(info.model.token_shift, m.token_shift);
                    assert_int_equal(info.model.adapter_size, m.adapter_size);
                    if (n > 0) /* a post-LN tied head alone holds no tensor */
                        assert_int_equal(info.tensors[n - 1].file_offset + info.tensors[n - 1].numel * 4,
                                         info.file_bytes);
                    nb_weights_info_free(&info);
                    nb_part_free(p);
                    nb_part_free(tie_part);
                }
    /* every feature listed its tensors somewhere */
    assert_true(n_adapters > 0 && n_xattn > 0 && n_lowrank > 0);
    nb_model_config_t bad = { .n_layer = 3, .d_model = 16, .n_head = 3, .d_ff = 24, .vocab = 40, .max_seq = 8 };
    nb_part_spec_t all = { true, 0, 3, true }, past = { true, 0, 4, true };
    assert_int_equal(nb_model_layout(&bad, &all, NULL, NULL), NB_EINVAL); /* 16 % 3 heads */
    assert_int_equal(nb_weights_layout(&bad, &all, NULL, 0, NULL), NB_EINVAL);
    bad.n_head = 2;
    assert_int_equal(nb_model_layout(&bad, &past, NULL, NULL), NB_EINVAL);
    assert_int_equal(nb_model_layout(&bad, NULL, NULL, NULL), NB_EINVAL);
    nb_be_free(be);
}

/* A 200-byte file whose header describes a 355M-parameter model (1.4 GB of
 * floats) is refused from its length alone, before anything is allocated. */
static void test_weights_peek_checks_length(void **state)
{
    (void)state;
    char err[512];
    struct __attribute__((packed)) {
        char magic[4];
        uint32_t version;
        int32_t h[15];
        uint32_t nt;
        uint64_t np;
        char pad[200 - 80];
    } f = { .magic = "NBWT", .version = 1,
            .h = { 24, 1024, 16, 4096, 50257, 1024, 1, 0, 0, 0, 1, 1, 0, 24, 1 } };
    nb_model_config_t m = { .n_layer = 24, .d_model = 1024, .n_head = 16, .d_ff = 4096, .vocab = 50257,
                            .max_seq = 1024, .causal = true, .tie_embeddings = true };
    nb_part_spec_t spec = nb_part_spec_full(&m);
    uint64_t np;
    f.nt = (uint32_t)nb_weights_layout(&m, &spec, NULL, 0, &np);
    f.np = np;
    FILE *fp = fopen(w_path, "wb");
    assert_int_equal(fwrite(&f, 1, sizeof f, fp), 200);
    fclose(fp);
    nb_weights_info_t info;
    assert_int_equal(nb_weights_peek(w_path, &info, err, sizeof err), NB_EFORMAT);
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "the file is 200 bytes, but its header describes 1419307936 bytes"));
    assert_null(info.tensors);
    /* counts that disagree with the config are refused too */
    f.np = 7;
    fp = fopen(w_path, "wb");
    assert_int_equal(fwrite(&f, 1, sizeof f, fp), 200);
    fclose(fp);
    assert_int_equal(nb_weights_peek(w_path, &info, err, sizeof err), NB_EFORMAT);
    assert_non_null(strstr(err, "the model it describes has"));
}

/* A NaN in the gradient (injected through the test-only environment hook)
 * skips the step: the weights stay as they were and finite, the skip is
 * counted, training resumes on the next step; max_skipped_steps consecutive
 * skips stop the run with NB_ELIMIT and the reason. */
static void test_nonfinite_gradient_skips(void **state)
{
    (void)state;
    nb_train_config_t c = small_config();
    c.steps = 8;
    c.optim.total_steps = c.steps;
    char err[512];
    nb_grad_fault_t f;
    assert_int_equal(nb_grad_fault_parse("3-4x", &f, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, NB_GRAD_FAULT_ENV));
    assert_int_equal(nb_grad_fault_parse("4-3", &f, err, sizeof err), NB_EINVAL);
    setenv(NB_GRAD_FAULT_ENV, "3-4", 1);
    nb_backend_t *be = nb_cpu_backend_new();
    nb_trainer_t *t;
    assert_int_equal(nb_trainer_new(be, &c, &t, err, sizeof err), 0);
    size_t n;
    float *before = NULL;
    for (int s = 0; s < c.steps; s++) {
        if (s == 3)
            before = params_copy(t, &n);
        nb_train_step_t st;
        assert_int_equal(nb_trainer_step(t, &st, err, sizeof err), 0);
        assert_int_equal(st.skipped, s == 3 || s == 4);
        assert_int_equal(st.skipped_total, s < 3 ? 0 : s == 3 ? 1 : 2);
        assert_int_equal(st.skipped_run, s == 3 ? 1 : s == 4 ? 2 : 0);
        if (s == 4) {
            float *now = params_copy(t, &n);
            assert_memory_equal(before, now, n * sizeof *now); /* two skipped steps: no change */
            free(now);
        }
    }
    float *end = params_copy(t, &n);
    assert_true(all_finite(end, n));
    assert_true(memcmp(before, end, n * sizeof *end) != 0); /* training went on */
    free(before);
    free(end);
    nb_trainer_free(t);
    /* three in a row with a limit of 3: the third stops the run */
    setenv(NB_GRAD_FAULT_ENV, "2-7", 1);
    c.max_skipped_steps = 3;
    assert_int_equal(nb_trainer_new(be, &c, &t, err, sizeof err), 0);
    int rc = 0, s;
    nb_train_step_t st;
    for (s = 0; s < c.steps && rc == 0; s++)
        rc = nb_trainer_step(t, &st, err, sizeof err);
    assert_int_equal(rc, NB_ELIMIT);
    assert_int_equal(s, 5);
    assert_true(st.skipped && st.skipped_run == 3);
    assert_non_null(strstr(err, "3 consecutive steps skipped for a non-finite gradient norm"));
    end = params_copy(t, &n);
    assert_true(all_finite(end, n));
    free(end);
    nb_trainer_free(t);
    unsetenv(NB_GRAD_FAULT_ENV);
    nb_be_free(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loss_falls_on_gpl3),
        cmocka_unit_test(test_mlm_loss_falls),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_step_recipe),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_weights_file),
        cmocka_unit_test(test_weights_model_settings),
        cmocka_unit_test(test_weights_lowrank),
        cmocka_unit_test(test_weights_cross_attn),
        cmocka_unit_test(test_weights_token_shift),
        cmocka_unit_test(test_eval_split),
        cmocka_unit_test(test_checkpoint_resume),
        cmocka_unit_test(test_resume_legs),
        cmocka_unit_test(test_frozen_resume),
        cmocka_unit_test(test_resume_from_stages),
        cmocka_unit_test(test_lowrank_resume),
        cmocka_unit_test(test_resume_after_skipped),
        cmocka_unit_test(test_nonfinite_gradient_skips),
        cmocka_unit_test(test_weights_layout),
        cmocka_unit_test(test_weights_peek_checks_length),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
