/* test_reference_adapter.c - bottleneck adapters and cross-attention
 * (decoder) blocks against PyTorch: tests/data/ref_gpt_adapter.bin,
 * ref_bert_adapter_frozen.bin, ref_dec.bin, ref_dec_post_frozen.bin,
 * written by scripts/gen_reference.py: logits, loss, every gradient (for a
 * decoder also the gradient of the encoder output), 10 AdamW steps, frozen
 * weights bit-identical; every split equals the whole model. Beside them,
 * without PyTorch: fresh adapters leave a model's output unchanged (their
 * up-projection starts at zero), the cross-attention op against a direct
 * evaluation, the adapter settings a model config refuses, and the memory
 * an adapter-only fine-tune keeps (gradients and optimizer state of the
 * adapters only). Tolerances: tests/support/ref_case.h. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/model.h"
#include "kernels/optim.h"
#include "tests/support/ref_case.h"

static void test_gpt_adapter(void **state) { nb_ref_run_case("tests/data/ref_gpt_adapter.bin"); }
static void test_bert_adapter_frozen(void **state) { nb_ref_run_case("tests/data/ref_bert_adapter_frozen.bin"); }
static void test_dec(void **state) { nb_ref_run_case("tests/data/ref_dec.bin"); }
static void test_dec_post_frozen(void **state) { nb_ref_run_case("tests/data/ref_dec_post_frozen.bin"); }
static void test_split_gpt_adapter(void **state) { nb_ref_split_case("tests/data/ref_gpt_adapter.bin"); }
static void test_split_bert_adapter_frozen(void **state) { nb_ref_split_case("tests/data/ref_bert_adapter_frozen.bin"); }
static void test_split_dec(void **state) { nb_ref_split_case("tests/data/ref_dec.bin"); }
static void test_split_dec_post_frozen(void **state) { nb_ref_split_case("tests/data/ref_dec_post_frozen.bin"); }

static nb_model_config_t small(nb_norm_t norm)
{
    nb_model_config_t c = { .n_layer = 3, .d_model = 16, .n_head = 2, .d_ff = 32, .vocab = 24, .max_seq = 8,
                            .causal = norm == NB_MODEL_NORM_PRE, .norm = norm,
                            .head = norm == NB_MODEL_NORM_PRE ? NB_MODEL_HEAD_LM : NB_MODEL_HEAD_MLM,
                            .tie_embeddings = norm == NB_MODEL_NORM_PRE };
    return c;
}

/* Logits of one forward of a model of c (seed 3) on a fixed batch; the
 * same seed gives the same weights for every tensor both models have. */
static float *logits_of(nb_backend_t *be, const nb_model_config_t *c, int *n)
{
    enum { B = 2, T = 8 };
    nb_part_spec_t s = nb_part_spec_full(c);
    nb_part_t *p;
    char err[200];
    assert_int_equal(nb_part_new(be, c, &s, 3, NULL, &p, err, sizeof err), 0);
    nb_part_acts_t *a;
    assert_int_equal(nb_part_acts_new(p, B, T, &a), 0);
    int32_t tok[B * T], tgt[B * T];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (i * 7 + 3) % (c->vocab - 1);
        tgt[i] = (i * 5 + 1) % (c->vocab - 1);
    }
    int32_t *dt = nb_be_alloc(be, sizeof tok), *dg = nb_be_alloc(be, sizeof tgt);
    nb_be_from_host(be, dt, tok, sizeof tok);
    nb_be_from_host(be, dg, tgt, sizeof tgt);
    nb_part_input_t in = { .tokens = dt, .targets = dg, .loss_scale = 1.0f };
    float loss;
    assert_int_equal(nb_part_forward(p, a, &in, &loss), 0);
    int rows, cols;
    const float *lg = nb_part_acts_logits(a, &rows, &cols);
    *n = rows * cols;
    float *out = malloc((size_t)*n * sizeof(float));
    nb_be_to_host(be, out, lg, (size_t)*n * sizeof(float));
    nb_be_dealloc(be, dt);
    nb_be_dealloc(be, dg);
    nb_part_acts_free(a);
    nb_part_free(p);
    return out;
}

/* A pretrained model starts unchanged: with fresh adapters (up = 0) after
 * every sub-layer the logits equal the model's without adapters to float
 * rounding (the residual sum is formed in another order). */
static void test_fresh_adapters_identity(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    for (int norm = 0; norm < 2; norm++) {
        nb_model_config_t c = small((nb_norm_t)norm);
        int n0, n1;
        float *base = logits_of(be, &c, &n0);
        c.adapter_size = 4;
        c.adapter_after = NB_ADAPTER_ATTN | NB_ADAPTER_FFN;
        c.adapter_first = 0;
        c.adapter_last = c.n_layer;
        float *with = logits_of(be, &c, &n1);
        assert_int_equal(n0, n1);
        double maxerr = 0, maxref = 0;
        for (int i = 0; i < n0; i++) {
            maxerr = fmax(maxerr, fabs((double)base[i] - with[i]));
            maxref = fmax(maxref, fabs((double)base[i]));
        }
        printf("  %s-LN: fresh adapters change the logits by at most %.3e (max |logit| %.3e)\n",
               nb_norm_name(c.norm), maxerr, maxref);
        if (!(maxerr <= 1e-6 * maxref))
            fail_msg("fresh adapters change the output: %.3e", maxerr);
        free(base);
        free(with);
    }
    nb_be_free(be);
}

/* The cross-attention op against a direct double evaluation, with S != T
 * and a padded encoder position. */
static void test_xattn_op(void **state)
{
    (void)state;
    enum { B = 2, T = 3, S = 5, C = 4, NH = 2, HS = C / NH };
    nb_backend_t *be = nb_cpu_backend_new();
    float q[B * T * C], kv[B * S * 2 * C], out[B * T * C], att[B * NH * T * S];
    uint8_t mask[B * S];
    for (int i = 0; i < B * T * C; i++)
        q[i] = sinf(0.7f * (float)i);
    for (int i = 0; i < B * S * 2 * C; i++)
        kv[i] = cosf(0.3f * (float)i + 1.0f);
    for (int i = 0; i < B * S; i++)
        mask[i] = !(i == S + 4); /* the second sequence's last position is padding */
    nb_xattn_fwd(be, out, att, q, kv, mask, B, T, S, C, NH);
    double maxerr = 0;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                double sc[S], mx = -1e300, sum = 0;
                for (int j = 0; j < S; j++) {
                    double d = 0;
                    for (int e = 0; e < HS; e++)
                        d += (double)q[(b * T + t) * C + h * HS + e] * kv[(b * S + j) * 2 * C + h * HS + e];
                    sc[j] = mask[b * S + j] ? d / sqrt((double)HS) : -INFINITY;
                    mx = fmax(mx, sc[j]);
                }
                for (int j = 0; j < S; j++)
                    sum += (sc[j] = exp(sc[j] - mx));
                for (int e = 0; e < HS; e++) {
                    double o = 0;
                    for (int j = 0; j < S; j++)
                        o += sc[j] / sum * kv[(b * S + j) * 2 * C + C + h * HS + e];
                    maxerr = fmax(maxerr, fabs(o - out[(b * T + t) * C + h * HS + e]));
                }
                assert_true(att[((b * NH + h) * T + t) * S + S - 1] == 0.0f || b == 0);
            }
    printf("  cross-attention forward: max abs err %.3e\n", maxerr);
    assert_true(maxerr < 1e-5);
    nb_be_free(be);
}

/* Bad adapter settings are refused with the reason. */
static void test_config_refusals(void **state)
{
    (void)state;
    struct {
        int size;
        unsigned after;
        int first, last;
        bool cross;
        const char *needle;
    } bad[] = {
        { 17, NB_ADAPTER_ATTN, 0, 3, false, "1..d_model" },
        { -1, NB_ADAPTER_ATTN, 0, 3, false, "1..d_model" },
        { 4, 0, 0, 3, false, "attn, xattn or ffn" },
        { 4, 8, 0, 3, false, "attn, xattn or ffn" },
        { 4, NB_ADAPTER_XATTN, 0, 3, false, "cross_attn" },
        { 4, NB_ADAPTER_FFN, 0, 4, false, "blocks" },
        { 4, NB_ADAPTER_FFN, 2, 2, false, "blocks" },
        { 4, NB_ADAPTER_FFN, -1, 2, false, "blocks" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        nb_model_config_t c = small(NB_MODEL_NORM_PRE);
        c.adapter_size = bad[i].size;
        c.adapter_after = bad[i].after;
        c.adapter_first = bad[i].first;
        c.adapter_last = bad[i].last;
        c.cross_attn = bad[i].cross;
        const char *why = nb_model_config_validate(&c);
        assert_non_null(why);
        printf("  refused: %s\n", why);
        assert_non_null(strstr(why, bad[i].needle));
    }
    nb_model_config_t ok = small(NB_MODEL_NORM_PRE);
    ok.adapter_size = 16;
    ok.adapter_after = NB_ADAPTER_XATTN | NB_ADAPTER_FFN;
    ok.adapter_first = 2;
    ok.adapter_last = 3;
    ok.cross_attn = true;
    assert_null(nb_model_config_validate(&ok));
}

/* The job's words (job.adapters) refused with the reason. */
static void test_job_refusals(void **state)
{
    (void)state;
    struct {
        int size;
        const char *after[3];
        int n;
        const char *blocks;
        bool cross;
        const char *needle;
    } bad[] = {
        { 0, { "attn" }, 1, "all", false, "size 0" },
        { 17, { "attn" }, 1, "all", false, "1..d_model (16)" },
        { 4, { NULL }, 0, "all", false, "after is empty" },
        { 4, { "attn", "mlp" }, 2, "all", false, "after[1] \"mlp\": no such sub-layer" },
        { 4, { "xattn" }, 1, "all", false, "no cross-attention" },
        { 4, { "ffn" }, 1, "3", false, "no block 3 (the model has blocks 0..2)" },
        { 4, { "ffn" }, 1, "1-7", false, "no block 7" },
        { 4, { "ffn" }, 1, "2-1", false, "I-J" },
        { 4, { "ffn" }, 1, "top", false, "I-J" },
    };
    char why[300];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        nb_model_config_t c = small(NB_MODEL_NORM_PRE);
        c.cross_attn = bad[i].cross;
        assert_int_equal(nb_model_set_adapters(&c, bad[i].size, bad[i].after, bad[i].n, bad[i].blocks, why,
                                               sizeof why), NB_EINVAL);
        printf("  refused: %s\n", why);
        if (!strstr(why, bad[i].needle))
            fail_msg("'%s' does not say '%s'", why, bad[i].needle);
        assert_int_equal(c.adapter_size, 0);
    }
    nb_model_config_t c = small(NB_MODEL_NORM_PRE);
    c.cross_attn = true;
    const char *ok[] = { "xattn", "ffn" };
    assert_int_equal(nb_model_set_adapters(&c, 16, ok, 2, "1-2", why, sizeof why), 0);
    assert_true(c.adapter_size == 16 && c.adapter_after == (NB_ADAPTER_XATTN | NB_ADAPTER_FFN) &&
                c.adapter_first == 1 && c.adapter_last == 3);
    assert_int_equal(nb_model_set_adapters(&c, 0, NULL, 0, "all", why, sizeof why), 0);
    assert_int_equal(c.adapter_size, 0);
}

/* Adapter-only fine-tuning: freeze: ["*"], trainable: ["*.ad_*"] keeps
 * gradients and optimizer state for the adapters only; the frozen saving
 * shows in nb_part_grad_bytes and the optimizer's size. */
static void test_adapter_only_memory(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    nb_model_config_t c = small(NB_MODEL_NORM_PRE);
    c.adapter_size = 4;
    c.adapter_after = NB_ADAPTER_ATTN | NB_ADAPTER_FFN;
    c.adapter_first = 0;
    c.adapter_last = c.n_layer;
    nb_freeze_spec_t f;
    memset(&f, 0, sizeof f);
    f.n_freeze = 1;
    f.n_trainable = 1;
    snprintf(f.freeze[0], sizeof f.freeze[0], "*");
    snprintf(f.trainable[0], sizeof f.trainable[0], "*.ad_*");
    char why[300];
    assert_int_equal(nb_freeze_check(&c, &f, why, sizeof why), 0);
    nb_part_spec_t s = nb_part_spec_full(&c);
    nb_part_t *p;
    char err[200];
    assert_int_equal(nb_part_new(be, &c, &s, 3, NULL, &p, err, sizeof err), 0);
    size_t full = nb_part_grad_bytes(p);
    assert_int_equal(nb_part_freeze(p, &f), 0);
    /* per adapter: down (A,C) + A + up (C,A) + C */
    size_t per = 2 * 4 * 16 + 4 + 16, want = per * 2 * (size_t)c.n_layer;
    assert_int_equal(nb_part_num_grads(p), want);
    assert_int_equal(nb_part_num_trainable(p), 4 * 2 * c.n_layer);
    assert_int_equal(nb_part_grad_bytes(p), want * sizeof(float));
    nb_optim_config_t oc = nb_optim_config_default();
    nb_optim_t *o;
    assert_int_equal(nb_part_optim_new(p, &oc, &o), 0);
    assert_int_equal(nb_optim_numel(o), want);
    printf("  adapter-only: %zu of %zu parameters train; gradient memory %zu of %zu bytes\n", want,
           nb_part_num_params(p), nb_part_grad_bytes(p), full);
    nb_optim_free(o);
    nb_part_free(p);
    nb_be_free(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpt_adapter),
        cmocka_unit_test(test_bert_adapter_frozen),
        cmocka_unit_test(test_dec),
        cmocka_unit_test(test_dec_post_frozen),
        cmocka_unit_test(test_split_gpt_adapter),
        cmocka_unit_test(test_split_bert_adapter_frozen),
        cmocka_unit_test(test_split_dec),
        cmocka_unit_test(test_split_dec_post_frozen),
        cmocka_unit_test(test_fresh_adapters_identity),
        cmocka_unit_test(test_xattn_op),
        cmocka_unit_test(test_config_refusals),
        cmocka_unit_test(test_job_refusals),
        cmocka_unit_test(test_adapter_only_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
