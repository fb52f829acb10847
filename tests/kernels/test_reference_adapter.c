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
#include "tests/support/ref_file.h"

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

/* ---- encoder-decoder (tests/data/ref_encdec.bin) ------------------------ */

typedef struct {
    nb_model_config_t cfg;
    int B, T;
    nb_part_t *p;
    nb_part_acts_t *a;
    nb_optim_t *o;
} ed_model_t;

static const nb_ref_tensor_t *ed_need(const nb_ref_file_t *f, const char *tag, const char *what)
{
    char name[160];
    snprintf(name, sizeof name, "%s.%s", tag, what);
    const nb_ref_tensor_t *t = nb_ref_get(f, name);
    if (!t)
        fail_msg("reference file lacks tensor '%s'", name);
    return t;
}

static double ed_compare(const char *what, const float *c, const nb_ref_tensor_t *ref, double tol)
{
    float *r = malloc(ref->numel * sizeof(float));
    nb_ref_floats(ref, r);
    double maxerr = 0, maxref = 0;
    for (size_t i = 0; i < ref->numel; i++) {
        double e = fabs((double)c[i] - r[i]);
        maxerr = e > maxerr || isnan(e) ? (isnan(e) ? INFINITY : e) : maxerr;
        maxref = fmax(maxref, fabs((double)r[i]));
    }
    free(r);
    double rel = maxerr / fmax(maxref, 1e-30);
    printf("  %-24s max abs err %.3e  max |ref| %.3e  rel %.2e\n", what, maxerr, maxref, rel);
    if (!(rel <= tol))
        fail_msg("%s: relative error %.3e exceeds %.1e", what, rel, tol);
    return rel;
}

/* One model of the file: its config, part, weights and frozen tensors. */
static void ed_model(nb_backend_t *be, const nb_ref_file_t *f, const char *tag, int S, bool head, ed_model_t *m)
{
    int32_t c[13], ad[4];
    nb_ref_ints(ed_need(f, tag, "config"), c);
    nb_ref_ints(ed_need(f, tag, "adapter"), ad);
    m->cfg = (nb_model_config_t){ .n_layer = c[0], .d_model = c[1], .n_head = c[2], .d_ff = c[3], .vocab = c[4],
                                  .max_seq = c[5], .causal = c[6] != 0, .norm = (nb_norm_t)c[7],
                                  .head = (nb_head_kind_t)c[8], .n_classes = c[9], .tie_embeddings = c[10] != 0,
                                  .adapter_size = ad[0], .adapter_after = (unsigned)ad[1], .adapter_first = ad[2],
                                  .adapter_last = ad[3], .cross_attn = S > 0 };
    m->B = c[11];
    m->T = c[12];
    assert_null(nb_model_config_validate(&m->cfg));
    nb_part_spec_t spec = nb_part_spec_full(&m->cfg);
    spec.head = head;
    char err[200], name[96];
    if (nb_part_new(be, &m->cfg, &spec, 1, NULL, &m->p, err, sizeof err))
        fail_msg("%s: %s", tag, err);
    for (int i = 0; i < nb_part_num_tensors(m->p); i++) {
        const nb_param_info_t *pi = nb_part_tensor(m->p, i);
        snprintf(name, sizeof name, "w.%s", pi->name);
        const nb_ref_tensor_t *t = ed_need(f, tag, name);
        assert_int_equal(t->numel, pi->numel);
        nb_ref_floats(t, nb_part_params(m->p) + pi->offset); /* CPU backend: host memory */
    }
    nb_freeze_spec_t fz;
    memset(&fz, 0, sizeof fz);
    fz.n_freeze = fz.n_trainable = 1;
    snprintf(fz.freeze[0], sizeof fz.freeze[0], "*");
    snprintf(fz.trainable[0], sizeof fz.trainable[0], "*.ad_*");
    assert_int_equal(nb_part_freeze(m->p, &fz), 0);
    assert_int_equal(S > 0 ? nb_part_acts_new_cross(m->p, m->B, m->T, S, &m->a) : nb_part_acts_new(m->p, m->B, m->T, &m->a), 0);
}

/* Encoder forward, decoder forward on its output, decoder backward, encoder
 * backward from the decoder's gradient of the encoder output. */
static float ed_step(ed_model_t *e, ed_model_t *d, const int32_t *etok, const uint8_t *emask, const int32_t *dtok,
                     const int32_t *tgt)
{
    nb_part_zero_grad(e->p);
    nb_part_zero_grad(d->p);
    nb_part_input_t ein = { .tokens = etok, .key_mask = emask };
    assert_int_equal(nb_part_forward(e->p, e->a, &ein, NULL), 0);
    nb_part_input_t din = { .tokens = dtok, .targets = tgt, .loss_scale = 1.0f,
                            .enc = nb_part_acts_output(e->a), .enc_mask = emask };
    float loss;
    assert_int_equal(nb_part_forward(d->p, d->a, &din, &loss), 0);
    assert_int_equal(nb_part_backward(d->p, d->a, NULL), 0);
    assert_int_equal(nb_part_backward(e->p, e->a, nb_part_acts_denc(d->a)), 0);
    return loss;
}

/* The encoder's output feeds the decoder's cross-attention and the
 * decoder's gradient of it drives the encoder's backward: against one
 * PyTorch graph of both, with only the adapters of both training. */
static void test_encdec(void **state)
{
    (void)state;
    nb_ref_file_t f;
    char err[256];
    if (nb_ref_load("tests/data/ref_encdec.bin", &f, err, sizeof err))
        fail_msg("%s", err);
    nb_backend_t *be = nb_cpu_backend_new();
    ed_model_t e, d;
    ed_model(be, &f, "enc", 0, false, &e);
    ed_model(be, &f, "dec", e.T, true, &d);
    printf("tests/data/ref_encdec.bin: encoder %s-LN L=%d S=%d, decoder %s-LN L=%d T=%d, B=%d; %d + %d tensors train\n",
           nb_norm_name(e.cfg.norm), e.cfg.n_layer, e.T, nb_norm_name(d.cfg.norm), d.cfg.n_layer, d.T, e.B,
           nb_part_num_trainable(e.p), nb_part_num_trainable(d.p));
    int32_t etok[64], dtok[64], tgt[64];
    uint8_t emask[64];
    assert_true(e.B * e.T <= 64 && d.B * d.T <= 64);
    nb_ref_ints(ed_need(&f, "enc", "tokens"), etok);
    nb_ref_ints(ed_need(&f, "dec", "tokens"), dtok);
    nb_ref_ints(ed_need(&f, "dec", "targets"), tgt);
    memcpy(emask, ed_need(&f, "enc", "key_mask")->data, (size_t)(e.B * e.T));
    float loss = ed_step(&e, &d, etok, emask, dtok, tgt), ref_loss;
    nb_ref_floats(nb_ref_get(&f, "loss"), &ref_loss);
    printf("  loss %.7f vs %.7f\n", loss, ref_loss);
    assert_true(fabs((double)loss - ref_loss) <= 1e-5 * fabs((double)ref_loss));
    ed_compare("logits", nb_part_acts_logits(d.a, NULL, NULL), nb_ref_get(&f, "logits"), 1e-4);
    char name[96];
    ed_model_t *ms[2] = { &e, &d };
    const char *tags[2] = { "enc", "dec" };
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < nb_part_num_tensors(ms[k]->p); i++) {
            const nb_param_info_t *pi = nb_part_tensor(ms[k]->p, i);
            if (!pi->trainable)
                continue;
            snprintf(name, sizeof name, "g.%s", pi->name);
            char what[160];
            snprintf(what, sizeof what, "%s.%s", tags[k], name);
            ed_compare(what, nb_part_grads(ms[k]->p) + pi->grad_offset, ed_need(&f, tags[k], name), 1e-4);
        }
    /* 10 AdamW steps over both models, one clip norm */
    float o[9], ref_losses[16];
    nb_ref_floats(nb_ref_get(&f, "optim"), o);
    nb_optim_config_t oc = { .lr = o[0], .lr_min = o[1], .warmup_steps = (int)o[2], .total_steps = (int)o[3],
                             .beta1 = o[4], .beta2 = o[5], .eps = o[6], .weight_decay = o[7], .grad_clip = o[8] };
    const nb_ref_tensor_t *lt = nb_ref_get(&f, "losses");
    nb_ref_floats(lt, ref_losses);
    assert_int_equal(nb_part_optim_new(e.p, &oc, &e.o), 0);
    assert_int_equal(nb_part_optim_new(d.p, &oc, &d.o), 0);
    for (int s = 0; s < (int)lt->numel; s++) {
        loss = ed_step(&e, &d, etok, emask, dtok, tgt);
        double ss = nb_optim_sumsq(be, nb_part_grads(e.p), nb_part_num_grads(e.p)) +
                    nb_optim_sumsq(be, nb_part_grads(d.p), nb_part_num_grads(d.p));
        float scale = nb_optim_clip_scale(&oc, ss);
        printf("  adamw loss %d  %.7f vs %.7f\n", s, loss, ref_losses[s]);
        if (!(fabs((double)loss - ref_losses[s]) <= 1e-5 * fabs((double)ref_losses[s])))
            fail_msg("step %d: loss %.7f vs reference %.7f", s, loss, ref_losses[s]);
        nb_optim_step(e.o, nb_part_params(e.p), nb_part_grads(e.p), (float)nb_optim_lr(&oc, s), scale);
        nb_optim_step(d.o, nb_part_params(d.p), nb_part_grads(d.p), (float)nb_optim_lr(&oc, s), scale);
    }
    for (int k = 0; k < 2; k++) {
        nb_optim_free(ms[k]->o);
        nb_part_acts_free(ms[k]->a);
        nb_part_free(ms[k]->p);
    }
    nb_be_free(be);
    nb_ref_free(&f);
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
        cmocka_unit_test(test_encdec),
        cmocka_unit_test(test_fresh_adapters_identity),
        cmocka_unit_test(test_xattn_op),
        cmocka_unit_test(test_config_refusals),
        cmocka_unit_test(test_job_refusals),
        cmocka_unit_test(test_adapter_only_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
