/* test_encdec_cut.c - the encoder-decoder job run in halves (encdec.h, "the
 * cut"): an encoder-only trainer and a decoder-only trainer joined by the
 * codec, the encoder's output crossing once per micro-batch and its
 * gradient once back, the encoder's sum of squares handed to the decoder's
 * side. With fp32 on the wire the losses, gradient norms and final weights
 * of both models equal nb_encdec_step's bit for bit (gradient clipping
 * active); with fp16 forward and int8 backward the bytes shrink and the
 * loss stays close. A half refuses the calls of the other half. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/train/encdec.h"
#include "kernels/codec/codec.h"
#include "kernels/common.h"

#define TEXT "tests/data/tokenizers/sample.txt"
#define VOCAB "tests/data/tokenizers/minilm"
#define STEPS 4

static const char *const texts[] = { TEXT };

static nb_encdec_config_t config(nb_encdec_half_t half)
{
    nb_model_config_t m = { .n_layer = 1, .d_model = 32, .n_head = 2, .d_ff = 64, .vocab = 30522, .max_seq = 32,
                            .norm = NB_MODEL_NORM_PRE, .head = NB_MODEL_HEAD_LM };
    nb_encdec_config_t c = { .optim = nb_optim_config_default(), .seed = 7, .batch = 4, .micro_batches = 2,
                             .steps = STEPS, .eval_pairs = 4, .half = half };
    c.enc = (nb_encdec_side_t){ .model = m, .key = "job.encoder" };
    c.dec = (nb_encdec_side_t){ .model = m, .key = "job" };
    c.dec.model.causal = true;
    c.dec.model.cross_attn = true;
    c.dec.model.max_seq = 8;
    c.optim.lr = 3e-3f;
    c.optim.total_steps = STEPS;
    c.optim.grad_clip = 0.5f; /* clipped every step: the scale depends on both sides' sums */
    c.task = (nb_spans_config_t){ .texts = texts, .n_texts = 1, .tokenizer = VOCAB, .src_len = 18, .min_tokens = 1,
                                  .max_tokens = 3, .hold = 4 };
    return c;
}

static nb_encdec_t *open_half(nb_backend_t *be, nb_encdec_half_t half)
{
    nb_encdec_config_t c = config(half);
    nb_encdec_t *t = NULL;
    char err[1024];
    if (nb_encdec_new(be, &c, NULL, NULL, &t, err, sizeof err))
        fail_msg("%s", err);
    return t;
}

/* src (device, rows x cols) through the codec spec into dst; returns the
 * bytes the message takes. */
static size_t xfer(nb_backend_t *be, const char *spec, const float *src, float *dst, int rows, int cols)
{
    nb_codec_spec_t s;
    char err[512];
    assert_int_equal(nb_codec_spec_parse(spec, &s, err, sizeof err), 0);
    int64_t shape[2] = { rows, cols };
    nb_tensor_t x = nb_tensor_view(be, NB_F32, (void *)src, 2, shape);
    nb_tensor_t y = nb_tensor_view(be, NB_F32, dst, 2, shape);
    nb_codec_msg_t m;
    nb_codec_msg_init(&m);
    if (nb_codec_encode(be, &s, &x, 1, NULL, 0, &m, err, sizeof err) ||
        nb_codec_decode_into(be, m.spec, m.meta, m.meta_len, m.payload, m.payload_len, 0, NULL, &y, err, sizeof err))
        fail_msg("%s: %s", spec, err);
    size_t n = nb_codec_msg_bytes(&m);
    nb_codec_msg_free(&m);
    return n;
}

/* One step in halves; the wire's bytes added to *fwd, *bwd. */
static void half_step(nb_backend_t *be, nb_encdec_t *e, nb_encdec_t *d, const char *fspec, const char *bspec,
                      nb_train_step_t *out, size_t *fwd, size_t *bwd)
{
    char err[1024];
    int B, S, C, m = config(NB_ENCDEC_BOTH).micro_batches;
    nb_encdec_cut_shape(d, &B, &S, &C);
    assert_int_equal(nb_encdec_begin(e, err, sizeof err), 0);
    assert_int_equal(nb_encdec_begin(d, err, sizeof err), 0);
    float loss = 0.0f;
    for (int i = 0; i < m; i++) {
        const float *enc, *denc;
        float li;
        assert_int_equal(nb_encdec_enc_forward(e, i, &enc, err, sizeof err), 0);
        *fwd += xfer(be, fspec, enc, nb_encdec_cut_buf(d), B * S, C);
        assert_int_equal(nb_encdec_dec_micro(d, i, nb_encdec_cut_buf(d), &denc, &li, err, sizeof err), 0);
        *bwd += xfer(be, bspec, denc, nb_encdec_cut_buf(e), B * S, C);
        assert_int_equal(nb_encdec_enc_backward(e, nb_encdec_cut_buf(e), err, sizeof err), 0);
        loss += li / (float)m;
    }
    double ss = nb_encdec_sumsq(d, nb_encdec_sumsq(e, 0.0));
    assert_int_equal(nb_encdec_commit(e, ss, loss, NULL, err, sizeof err), 0);
    assert_int_equal(nb_encdec_commit(d, ss, loss, out, err, sizeof err), 0);
}

static void assert_params_equal(nb_backend_t *be, nb_part_t *a, nb_part_t *b)
{
    size_t n = nb_part_num_params(a);
    assert_int_equal(n, nb_part_num_params(b));
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    assert_non_null(x);
    assert_non_null(y);
    nb_be_to_host(be, x, nb_part_params(a), n * sizeof *x);
    nb_be_to_host(be, y, nb_part_params(b), n * sizeof *y);
    size_t diff = 0;
    for (size_t i = 0; i < n; i++)
        diff += memcmp(&x[i], &y[i], sizeof *x) != 0;
    if (diff)
        fail_msg("%zu of %zu parameters differ", diff, n);
    free(x);
    free(y);
}

static void test_fp32_equals_one_process(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    nb_encdec_t *ref = open_half(be, NB_ENCDEC_BOTH), *e = open_half(be, NB_ENCDEC_ENCODER),
                *d = open_half(be, NB_ENCDEC_DECODER);
    char err[1024];
    size_t fwd = 0, bwd = 0;
    for (int s = 0; s < STEPS; s++) {
        nb_train_step_t r, h;
        assert_int_equal(nb_encdec_step(ref, &r, err, sizeof err), 0);
        half_step(be, e, d, "fp32", "fp32", &h, &fwd, &bwd);
        printf("step %d: loss %.6f / %.6f, grad_norm %.6f / %.6f\n", s + 1, r.loss, h.loss, r.grad_norm, h.grad_norm);
        assert_memory_equal(&r.loss, &h.loss, sizeof r.loss);
        assert_memory_equal(&r.grad_norm, &h.grad_norm, sizeof r.grad_norm);
        assert_true(r.grad_norm > 0.5); /* the clip acted */
    }
    int B, S, C;
    nb_encdec_cut_shape(d, &B, &S, &C);
    assert_true(fwd >= (size_t)STEPS * 2 * B * S * C * 4);
    assert_int_equal(fwd, bwd);
    assert_params_equal(be, nb_encdec_encoder(ref), nb_encdec_encoder(e));
    assert_params_equal(be, nb_encdec_decoder(ref), nb_encdec_decoder(d));
    assert_null(nb_encdec_decoder(e));
    assert_null(nb_encdec_encoder(d));
    nb_encdec_free(ref);
    nb_encdec_free(e);
    nb_encdec_free(d);
    nb_be_free(be);
}

static void test_lossy_codecs(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    nb_encdec_t *ref = open_half(be, NB_ENCDEC_BOTH), *e = open_half(be, NB_ENCDEC_ENCODER),
                *d = open_half(be, NB_ENCDEC_DECODER);
    char err[1024];
    size_t fwd = 0, bwd = 0;
    nb_train_step_t r, h;
    assert_int_equal(nb_encdec_step(ref, &r, err, sizeof err), 0);
    half_step(be, e, d, "fp16", "int8", &h, &fwd, &bwd);
    int B, S, C;
    nb_encdec_cut_shape(d, &B, &S, &C);
    size_t raw = (size_t)2 * B * S * C * 4;
    printf("fp16 forward %zu bytes, int8 backward %zu bytes, fp32 %zu; loss %.6f / %.6f\n", fwd, bwd, raw, r.loss,
           h.loss);
    assert_true(fwd < raw * 55 / 100);
    assert_true(bwd < raw * 30 / 100);
    assert_true(fabsf(h.loss - r.loss) < 1e-3f * r.loss);
    nb_encdec_free(ref);
    nb_encdec_free(e);
    nb_encdec_free(d);
    nb_be_free(be);
}

static void test_half_refuses_other_half(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    nb_encdec_t *e = open_half(be, NB_ENCDEC_ENCODER), *d = open_half(be, NB_ENCDEC_DECODER);
    char err[1024];
    const float *p;
    float l;
    nb_train_step_t st;
    nb_encdec_score_t sc;
    assert_int_equal(nb_encdec_step(e, &st, err, sizeof err), NB_ESTATE);
    assert_int_equal(nb_encdec_eval(d, &sc, err, sizeof err), NB_ESTATE);
    assert_int_equal(nb_encdec_begin(e, err, sizeof err), 0);
    assert_int_equal(nb_encdec_dec_micro(e, 0, nb_encdec_cut_buf(e), &p, &l, err, sizeof err), NB_ESTATE);
    assert_non_null(strstr(err, "decoder runs on the other half"));
    assert_int_equal(nb_encdec_enc_forward(d, 0, &p, err, sizeof err), NB_ESTATE);
    assert_int_equal(nb_encdec_enc_backward(d, nb_encdec_cut_buf(d), err, sizeof err), NB_ESTATE);
    assert_int_equal(nb_encdec_enc_forward(e, 2, &p, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "micro-batch 2: out of range"));
    nb_encdec_free(e);
    nb_encdec_free(d);
    nb_be_free(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp32_equals_one_process),
        cmocka_unit_test(test_lossy_codecs),
        cmocka_unit_test(test_half_refuses_other_half),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
