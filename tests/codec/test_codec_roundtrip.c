/* test_codec_roundtrip.c - every codec on realistic tensors: activations and
 * gradients captured at the cut of a tiny GPT trained for a few dozen steps
 * on real text (codec_fixture.h), and a trained-model-like matrix (low rank
 * plus noise plus heavy-tailed outliers). Per codec: the relative L2 error
 * stays within the bound documented in docs/codecs.md, lossless paths are
 * bit-exact, the payload is exactly the size the documented layout gives,
 * and the same seed gives the same bytes. Plus error feedback and delta mode. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include "kernels/codec/codec_ops.h"
#include "tests/codec/codec_fixture.h"

typedef struct {
    nb_fx_t fx;
    nb_tensor_t *act, *grad, *lowrank;
} world_t;

static world_t W;

static nb_tensor_t *clone(nb_backend_t *be, const nb_tensor_t *t)
{
    nb_tensor_t *c = nb_tensor_new(be, NB_F32, t->ndim, t->shape);
    NB_CHECK(c);
    nb_be_copy(be, c->data, t->data, nb_tensor_nbytes(t));
    return c;
}

/* rows x cols: rank-8 signal + 5% noise + 0.2% outliers of 20x. */
static nb_tensor_t *lowrank_matrix(nb_backend_t *be, int rows, int cols, uint64_t seed)
{
    int64_t shape[2] = { rows, cols };
    nb_tensor_t *t = nb_tensor_new(be, NB_F32, 2, shape);
    float *a = t->data;
    nb_rng_t g;
    nb_rng_init(&g, seed, 3, 4);
    enum { R = 8 };
    float *u = malloc(sizeof(float) * rows * R), *v = malloc(sizeof(float) * R * cols);
    for (int i = 0; i < rows * R; i++)
        u[i] = (float)nb_rng_normal(&g);
    for (int i = 0; i < R * cols; i++)
        v[i] = (float)nb_rng_normal(&g) / (float)(1 + i / cols);
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            float s = 0;
            for (int r = 0; r < R; r++)
                s += u[i * R + r] * v[r * cols + j];
            s += 0.05f * (float)nb_rng_normal(&g);
            if (nb_rng_below(&g, 500) == 0)
                s *= 20.0f;
            a[(size_t)i * cols + j] = s;
        }
    free(u);
    free(v);
    return t;
}

static int setup(void **state)
{
    (void)state;
    /* 40 uncompressed steps, then step 40 captured: activations the second
     * part saw, gradient the first part got */
    nb_fx_init(&W.fx, 2, 128, 4, 64, 60, 11);
    for (int s = 0; s < 40; s++)
        nb_fx_step(&W.fx, s, 11, NULL, NULL, NULL, NULL, NULL, NULL, true);
    nb_fx_step(&W.fx, 40, 11, NULL, NULL, NULL, NULL, NULL, NULL, true);
    W.act = clone(W.fx.be, W.fx.cut_x);
    W.grad = clone(W.fx.be, W.fx.cut_g);
    W.lowrank = lowrank_matrix(W.fx.be, 512, 256, 5);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    nb_tensor_free(W.act);
    nb_tensor_free(W.grad);
    nb_tensor_free(W.lowrank);
    nb_fx_free(&W.fx);
    return 0;
}

static double rel_err(const nb_tensor_t *a, const nb_tensor_t *b)
{
    const float *x = a->data, *y = b->data;
    double num = 0, den = 0;
    for (int64_t i = 0; i < nb_tensor_numel(a); i++) {
        double d = (double)x[i] - y[i];
        num += d * d;
        den += (double)x[i] * x[i];
    }
    return sqrt(num / den);
}

static size_t cdiv(size_t a, size_t b) { return a / b + (a % b != 0); }

/* The payload size the documented layout gives, computed independently. */
static size_t expected_payload(const nb_codec_spec_t *s, const nb_tensor_t *x, const nb_codec_msg_t *m)
{
    size_t cols = (size_t)x->shape[x->ndim - 1], n = (size_t)nb_tensor_numel(x), rows = n / cols;
    size_t B = s->block;
    /* bytes of a value array of len elements, one row being row elements */
#define VAL(len, row)                                                                            \
    (s->value == NB_CODEC_V_F32 ? 4 * (len) : s->value == NB_CODEC_V_F16 ? 4 * cdiv((len), 4096) + 2 * (len)      \
         : s->value == NB_CODEC_V_BF16 ? 2 * (len)                                                \
         : (s->value == NB_CODEC_V_I8 ? (len) : cdiv((len), 2)) + 4 * cdiv((len), B ? B : (row)))
    if (s->kind == NB_CODEC_S_DENSE)
        return VAL(n, cols);
    if (s->kind == NB_CODEC_S_TOPK) {
        size_t k = (size_t)ceil(s->topk_frac * (double)n);
        k = k < 1 ? 1 : k > n ? n : k;
        /* index section: whichever of bitmap and gap varints is smaller */
        uint32_t *idx = malloc(k * 4);
        float *vals = malloc(k * 4);
        nb_codec_op_topk(x->be, idx, vals, x->data, n, k);
        size_t var = 0;
        for (size_t i = 0, prev = 0; i < k; i++) {
            uint32_t g = (uint32_t)(idx[i] - prev);
            prev = idx[i];
            var += g < (1u << 7) ? 1 : g < (1u << 14) ? 2 : g < (1u << 21) ? 3 : g < (1u << 28) ? 4 : 5;
        }
        free(idx);
        free(vals);
        size_t bm = cdiv(n, 8);
        return VAL(k, k) + (bm < var ? bm : var);
    }
    size_t r = s->svd_rank ? s->svd_rank : (size_t)floor(s->svd_p * (double)rows * cols / (double)(rows + cols));
    r = r < 1 ? 1 : r;
    r = r < rows ? r : rows;
    r = r < cols ? r : cols;
    if (s->svd_energy > 0) { /* energy may lower the rank: read it back */
        nb_codec_info_t in;
        NB_CHECK(nb_codec_peek(m->spec, m->meta, m->meta_len, &in, NULL, 0) == 0);
        r = in.k_or_rank;
    }
    return VAL(rows * r, r) + VAL(r * cols, cols);
#undef VAL
}

typedef struct {
    const char *spec;
    double act, grad, lowrank; /* relative L2 error bounds; 0 = bit-exact */
} case_t;

/* The bounds documented in docs/codecs.md ("Error bounds"). */
static const case_t cases[] = {
    { "fp32", 0, 0, 0 },
    { "fp16", 1e-3, 1e-3, 1e-3 },
    { "bf16", 5e-3, 5e-3, 5e-3 },
    { "int8", 0.008, 0.01, 0.02 },
    { "int8(block=row)", 0.008, 0.01, 0.035 },
    { "int8(block=32,sr)", 0.01, 0.012, 0.02 },
    { "int4", 0.12, 0.15, 0.25 },
    { "int4(block=16)", 0.1, 0.12, 0.15 },
    { "topk(1)", 0, 0, 0 },
    { "topk(0.25)", 0.65, 0.6, 0.4 },
    { "topk(0.01)", 0.99, 0.99, 0.8 },
    { "int8(topk(0.1))", 0.85, 0.8, 0.55 },
    { "svd(rank=8)", 0.15, 0.6, 0.65 },
    { "svd(0.6)", 0.04, 0.025, 0.12 },
    { "svd(0.2)", 0.1, 0.35, 0.4 },
    { "fp16(svd(0.6))", 0.04, 0.025, 0.12 },
    { "int8(svd(0.6))", 0.04, 0.03, 0.12 },
    { "svd(0.6,energy=0.9)", 0.33, 0.33, 0.33 },
};

/* Error-bound failures are collected so one run prints every figure. */
static int bound_failures;

static void run_case(const case_t *c, const char *what, const nb_tensor_t *x, double bound)
{
    nb_backend_t *be = W.fx.be;
    nb_codec_spec_t s;
    char err[256] = "";
    nb_codec_msg_t m, m2;
    nb_codec_msg_init(&m);
    nb_codec_msg_init(&m2);
    if (nb_codec_spec_parse(c->spec, &s, err, sizeof err))
        fail_msg("%s", err);
    if (nb_codec_encode(be, &s, x, 1234, NULL, 0, &m, err, sizeof err))
        fail_msg("%s on %s: encode: %s", c->spec, what, err);
    size_t want = expected_payload(&s, x, &m);
    if (m.payload_len != want)
        fail_msg("%s on %s: payload %zu bytes, layout gives %zu", c->spec, what, m.payload_len, want);
    assert_int_equal(m.meta_len, NB_CODEC_META_V1_LEN);
    assert_int_equal(nb_codec_msg_bytes(&m), strlen(m.spec) + m.meta_len + m.payload_len);
    nb_codec_info_t in;
    assert_int_equal(nb_codec_peek(m.spec, m.meta, m.meta_len, &in, err, sizeof err), 0);
    assert_int_equal(in.payload_bytes, m.payload_len);
    assert_int_equal(in.decoded_bytes, nb_tensor_nbytes(x));
    /* deterministic: same seed, same bytes */
    assert_int_equal(nb_codec_encode(be, &s, x, 1234, NULL, 0, &m2, err, sizeof err), 0);
    assert_int_equal(m2.payload_len, m.payload_len);
    assert_memory_equal(m2.payload, m.payload, m.payload_len);
    assert_memory_equal(m2.meta, m.meta, m.meta_len);
    nb_tensor_t *y = NULL;
    if (nb_codec_decode(be, m.spec, m.meta, m.meta_len, m.payload, m.payload_len, 1 << 30, NULL, &y, err,
                        sizeof err))
        fail_msg("%s on %s: decode: %s", c->spec, what, err);
    assert_int_equal(nb_tensor_numel(y), nb_tensor_numel(x));
    double e = rel_err(x, y);
    double ratio = (double)nb_tensor_nbytes(x) / (double)nb_codec_msg_bytes(&m);
    printf("  %-22s %-8s rel_err %.5f  ratio %6.2fx  (bound %g)\n", m.spec, what, e, ratio, bound);
    if (bound == 0) {
        if (memcmp(x->data, y->data, nb_tensor_nbytes(x)))
            fail_msg("%s on %s: lossless path not bit-exact (rel err %g)", c->spec, what, e);
    } else if (!(e <= bound)) {
        printf("  FAIL: %s on %s: relative L2 error %.5f above the documented %g\n", c->spec, what, e, bound);
        bound_failures++;
    }
    nb_tensor_free(y);
    nb_codec_msg_free(&m);
    nb_codec_msg_free(&m2);
}

static void test_codecs_on_realistic_tensors(void **state)
{
    (void)state;
    for (size_t i = 0; i < NB_ARRAY_LEN(cases); i++) {
        run_case(&cases[i], "act", W.act, cases[i].act);
        run_case(&cases[i], "grad", W.grad, cases[i].grad);
        run_case(&cases[i], "lowrank", W.lowrank, cases[i].lowrank);
    }
    assert_int_equal(bound_failures, 0);
}

/* Values already representable in fp16 / bf16 cross those codecs bit-exact;
 * odd shapes exercise every tail. */
static void test_lossless_representable(void **state)
{
    (void)state;
    nb_backend_t *be = W.fx.be;
    int64_t shape[3] = { 3, 7, 33 };
    nb_tensor_t *x = nb_tensor_new(be, NB_F32, 3, shape), *y = nb_tensor_new(be, NB_F32, 3, shape);
    size_t n = (size_t)nb_tensor_numel(x);
    uint16_t *h = malloc(n * 2);
    const char *specs[] = { "fp16", "bf16" };
    char err[256];
    nb_codec_msg_t m;
    nb_codec_msg_init(&m);
    for (int k = 0; k < 2; k++) {
        nb_rng_t g;
        nb_rng_init(&g, 77, (uint64_t)k, 0);
        for (size_t i = 0; i < n; i++)
            ((float *)x->data)[i] = (float)nb_rng_normal(&g) * 10.0f;
        if (k == 0) {
            float sc[1];
            nb_codec_op_f32_to_f16(be, h, sc, x->data, n);
            nb_codec_op_f16_to_f32(be, x->data, h, sc, n);
        } else {
            nb_codec_op_f32_to_bf16(be, h, x->data, n);
            nb_codec_op_bf16_to_f32(be, x->data, h, n);
        }
        nb_codec_spec_t s;
        assert_int_equal(nb_codec_spec_parse(specs[k], &s, NULL, 0), 0);
        assert_int_equal(nb_codec_encode(be, &s, x, 0, NULL, 0, &m, err, sizeof err), 0);
        assert_int_equal(m.payload_len, n * 2 + (k == 0 ? 4 : 0));
        assert_int_equal(nb_codec_decode_into(be, m.spec, m.meta, m.meta_len, m.payload, m.payload_len, 0, NULL,
                                              y, err, sizeof err), 0);
        assert_memory_equal(x->data, y->data, n * 4);
    }
    nb_codec_msg_free(&m);
    free(h);
    nb_tensor_free(x);
    nb_tensor_free(y);
}

/* Error feedback: what top-k drops is carried into the next encode, so the
 * sum of what was sent tracks the sum of the gradients. */
static void test_error_feedback(void **state)
{
    (void)state;
    nb_backend_t *be = W.fx.be;
    const nb_tensor_t *g = W.grad;
    size_t n = (size_t)nb_tensor_numel(g);
    enum { STEPS = 40 };
    double errs[2];
    const char *specs[2] = { "topk(0.1)", "topk(0.1,ef)" };
    char err[256];
    for (int k = 0; k < 2; k++) {
        nb_codec_spec_t s;
        assert_int_equal(nb_codec_spec_parse(specs[k], &s, err, sizeof err), 0);
        nb_codec_stream_t *st = nb_codec_stream_new(be, 0);
        nb_codec_msg_t m;
        nb_codec_msg_init(&m);
        double *sum = calloc(n, sizeof *sum);
        nb_tensor_t *y = NULL;
        for (int t = 0; t < STEPS; t++) {
            assert_int_equal(nb_codec_encode(be, &s, g, (uint64_t)t, s.ef ? st : NULL, 0, &m, err, sizeof err), 0);
            assert_int_equal(nb_codec_decode(be, m.spec, m.meta, m.meta_len, m.payload, m.payload_len, 0, NULL,
                                             &y, err, sizeof err), 0);
            for (size_t i = 0; i < n; i++)
                sum[i] += ((float *)y->data)[i];
            nb_tensor_free(y);
        }
        double num = 0, den = 0, resid = 0;
        for (size_t i = 0; i < n; i++) {
            double want = (double)STEPS * ((float *)g->data)[i];
            num += (sum[i] - want) * (sum[i] - want);
            den += want * want;
        }
        errs[k] = sqrt(num / den);
        if (s.ef) {
            /* the residual is exactly what has not been sent yet */
            resid = nb_codec_stream_residual_sumsq(st);
            assert_true(fabs(sqrt(resid) - sqrt(num)) <= 1e-3 * sqrt(num) + 1e-6);
            assert_true(nb_codec_stream_bytes(st) >= n * 4);
        }
        free(sum);
        nb_codec_msg_free(&m);
        nb_codec_stream_free(st);
    }
    printf("  sum of %d top-k(10%%) steps: rel err %.4f without, %.4f with error feedback\n", STEPS, errs[0], errs[1]);
    assert_true(errs[0] > 0.5);
    assert_true(errs[1] < 0.25 * errs[0]);
    /* a stateful spec without a stream is refused */
    nb_codec_spec_t s;
    nb_codec_msg_t m;
    nb_codec_msg_init(&m);
    assert_int_equal(nb_codec_spec_parse("int8(ef)", &s, NULL, 0), 0);
    assert_int_equal(nb_codec_encode(be, &s, g, 0, NULL, 0, &m, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "needs a stream"));
    nb_codec_msg_free(&m);
}

/* Delta mode: a sample seen again is sent as its change since last time. */
static void test_delta_mode(void **state)
{
    (void)state;
    nb_backend_t *be = W.fx.be;
    const nb_tensor_t *a1 = W.act;
    size_t n = (size_t)nb_tensor_numel(a1);
    nb_tensor_t *a2 = clone(be, a1), *y = nb_tensor_new(be, NB_F32, a1->ndim, a1->shape);
    nb_rng_t g;
    nb_rng_init(&g, 5, 5, 5);
    for (size_t i = 0; i < n; i++) /* the sample's activation drifts a little */
        ((float *)a2->data)[i] += 0.02f * (float)nb_rng_normal(&g);
    char err[256];
    nb_codec_spec_t sd, sp;
    assert_int_equal(nb_codec_spec_parse("int4(delta)", &sd, NULL, 0), 0);
    assert_int_equal(nb_codec_spec_parse("int4", &sp, NULL, 0), 0);
    nb_codec_stream_t *tx = nb_codec_stream_new(be, 2 * n * 4), *rx = nb_codec_stream_new(be, 2 * n * 4);
    nb_codec_msg_t m;
    nb_codec_msg_init(&m);
    /* visit 1 of key 7: plain int4 of a1 */
    assert_int_equal(nb_codec_encode(be, &sd, a1, 1, tx, 7, &m, err, sizeof err), 0);
    assert_int_equal(nb_codec_decode_into(be, m.spec, m.meta, m.meta_len, m.payload, m.payload_len, 0, rx, y,
                                          err, sizeof err), 0);
    double e1 = rel_err(a1, y);
    /* visit 2: the change, on top of the shared reconstruction */
    assert_int_equal(nb_codec_encode(be, &sd, a2, 2, tx, 7, &m, err, sizeof err), 0);
    nb_codec_msg_t second = m;
    assert_int_equal(nb_codec_decode_into(be, m.spec, m.meta, m.meta_len, m.payload, m.payload_len, 0, rx, y,
                                          err, sizeof err), 0);
    double e2 = rel_err(a2, y);
    /* replaying visit 2 finds the receiver already at visit 2: refused */
    assert_int_equal(nb_codec_decode_into(be, second.spec, second.meta, second.meta_len, second.payload,
                                          second.payload_len, 0, rx, y, err, sizeof err), NB_ESTATE);
    assert_non_null(strstr(err, "key 7"));
    /* a receiver without the base refuses, naming the key */
    nb_codec_stream_t *fresh = nb_codec_stream_new(be, 1 << 30);
    assert_int_equal(nb_codec_decode_into(be, m.spec, m.meta, m.meta_len, m.payload, m.payload_len, 0, fresh, y,
                                          err, sizeof err), NB_ESTATE);
    assert_int_equal(nb_codec_decode_into(be, m.spec, m.meta, m.meta_len, m.payload, m.payload_len, 0, NULL, y,
                                          err, sizeof err), NB_EINVAL);
    nb_codec_stream_free(fresh);
    /* plain int4 of a2 for comparison */
    nb_codec_msg_t mp;
    nb_codec_msg_init(&mp);
    assert_int_equal(nb_codec_encode(be, &sp, a2, 2, NULL, 0, &mp, err, sizeof err), 0);
    nb_tensor_t *yp = NULL;
    assert_int_equal(nb_codec_decode(be, mp.spec, mp.meta, mp.meta_len, mp.payload, mp.payload_len, 0, NULL, &yp,
                                     err, sizeof err), 0);
    double ep = rel_err(a2, yp);
    printf("  int4 delta: first visit %.4f, second visit %.4f, plain int4 %.4f\n", e1, e2, ep);
    assert_true(e2 < 0.5 * ep);
    /* eviction: the limit holds two bases; keys 8 and 9 push key 7 out on
     * both sides alike, and key 7 starts over as a first visit */
    for (uint64_t key = 8; key <= 9; key++) {
        assert_int_equal(nb_codec_encode(be, &sd, a1, 3, tx, key, &m, err, sizeof err), 0);
        assert_int_equal(nb_codec_decode_into(be, m.spec, m.meta, m.meta_len, m.payload, m.payload_len, 0, rx, y,
                                              err, sizeof err), 0);
    }
    assert_true(nb_codec_stream_bytes(tx) <= 2 * n * 4);
    assert_int_equal(nb_codec_encode(be, &sd, a2, 4, tx, 7, &m, err, sizeof err), 0);
    nb_codec_info_t in;
    assert_int_equal(nb_codec_peek(m.spec, m.meta, m.meta_len, &in, NULL, 0), 0);
    assert_int_equal(in.visit, 0);
    assert_int_equal(nb_codec_decode_into(be, m.spec, m.meta, m.meta_len, m.payload, m.payload_len, 0, rx, y,
                                          err, sizeof err), 0);
    assert_true(fabs(rel_err(a2, y) - ep) < 0.02);
    /* a stream too small for one base refuses instead of growing */
    nb_codec_stream_t *tiny = nb_codec_stream_new(be, 16);
    assert_int_equal(nb_codec_encode(be, &sd, a1, 1, tiny, 1, &m, err, sizeof err), NB_ELIMIT);
    nb_codec_stream_free(tiny);
    nb_tensor_free(yp);
    nb_codec_msg_free(&mp);
    nb_codec_msg_free(&m);
    nb_codec_stream_free(tx);
    nb_codec_stream_free(rx);
    nb_tensor_free(a2);
    nb_tensor_free(y);
}

/* Odd and degenerate shapes: a single element, a vector (one row), a
 * column, a 3-D tensor; every codec encodes, sizes match the layout and the
 * lossless ones are exact. */
static void test_odd_shapes(void **state)
{
    (void)state;
    nb_backend_t *be = W.fx.be;
    static const struct { int ndim; int64_t shape[3]; } shapes[] = {
        { 1, { 1 } }, { 1, { 1001 } }, { 2, { 3, 1 } }, { 3, { 7, 5, 3 } }, { 2, { 2, 4097 } },
    };
    const char *specs[] = { "fp32", "fp16", "bf16", "int8", "int4(block=3)", "int4(block=row,sr)", "topk(0.3)",
                            "topk(1)", "int8(topk(0.5))", "svd(1)", "svd(rank=2)", "fp16(svd(0.5))", "int4(svd(0.1))" };
    char err[256];
    nb_codec_msg_t m;
    nb_codec_msg_init(&m);
    for (size_t si = 0; si < NB_ARRAY_LEN(shapes); si++) {
        nb_tensor_t *x = nb_tensor_new(be, NB_F32, shapes[si].ndim, shapes[si].shape);
        size_t n = (size_t)nb_tensor_numel(x);
        for (size_t i = 0; i < n; i++)
            ((float *)x->data)[i] = sinf(0.7f * (float)i + 0.3f) * (1.0f + (float)(i % 5));
        for (size_t k = 0; k < NB_ARRAY_LEN(specs); k++) {
            nb_codec_spec_t s;
            assert_int_equal(nb_codec_spec_parse(specs[k], &s, NULL, 0), 0);
            if (nb_codec_encode(be, &s, x, 3, NULL, 0, &m, err, sizeof err))
                fail_msg("%s on %zu elements: %s", specs[k], n, err);
            assert_int_equal(m.payload_len, expected_payload(&s, x, &m));
            nb_tensor_t *y = NULL;
            if (nb_codec_decode(be, m.spec, m.meta, m.meta_len, m.payload, m.payload_len, 0, NULL, &y, err,
                                sizeof err))
                fail_msg("%s on %zu elements: %s", specs[k], n, err);
            assert_int_equal(nb_tensor_numel(y), (int64_t)n);
            /* a payload at an odd address (as a receive buffer may hold it)
             * decodes to the same bits */
            uint8_t *odd = malloc(m.payload_len + 1);
            memcpy(odd + 1, m.payload, m.payload_len);
            nb_tensor_t *y2 = nb_tensor_new(be, NB_F32, 1, (int64_t[]){ (int64_t)n });
            if (nb_codec_decode_into(be, m.spec, m.meta, m.meta_len, odd + 1, m.payload_len, 0, NULL, y2, err,
                                     sizeof err))
                fail_msg("%s misaligned: %s", specs[k], err);
            assert_memory_equal(y->data, y2->data, n * 4);
            nb_tensor_free(y2);
            free(odd);
            if (nb_codec_spec_lossless(&s) || !strcmp(specs[k], "topk(1)"))
                assert_memory_equal(x->data, y->data, n * 4);
            else
                if (!(rel_err(x, y) < 1.0))
                    fail_msg("%s on %zu elements: rel err %g", specs[k], n, rel_err(x, y));
            nb_tensor_free(y);
        }
        nb_tensor_free(x);
    }
    nb_codec_msg_free(&m);
}

/* The staging paths a device backend takes (payload bytes copied to and
 * from device buffers, top-k indices and SVD sketches copied to the host):
 * exercised by the CPU backend's table posing as a non-CPU device, and
 * required to give the CPU backend's bytes exactly. */
static void test_device_staging(void **state)
{
    (void)state;
    nb_backend_t *be = W.fx.be;
    nb_backend_i iface = *be->iface;
    iface.kind = NB_DEV_CUDA;
    iface.name = "staged";
    nb_backend_t dev = { .iface = &iface, .ctx = NULL };
    const char *specs[] = { "fp32", "fp16", "bf16", "int8(sr)", "int4(block=row)", "topk(0.01)", "topk(0.6)",
                            "int8(topk(0.1))", "fp16(svd(0.3))", "int4(delta)", "int8(topk(0.05),ef)" };
    char err[256];
    for (size_t k = 0; k < NB_ARRAY_LEN(specs); k++) {
        nb_codec_spec_t s;
        assert_int_equal(nb_codec_spec_parse(specs[k], &s, NULL, 0), 0);
        nb_tensor_t *xd = nb_tensor_new(&dev, NB_F32, W.act->ndim, W.act->shape);
        nb_tensor_t *yc = nb_tensor_new(be, NB_F32, W.act->ndim, W.act->shape);
        nb_tensor_t *yd = nb_tensor_new(&dev, NB_F32, W.act->ndim, W.act->shape);
        nb_be_from_host(&dev, xd->data, W.act->data, nb_tensor_nbytes(W.act));
        nb_codec_stream_t *sc = nb_codec_stream_new(be, 1 << 24), *sd = nb_codec_stream_new(&dev, 1 << 24);
        nb_codec_stream_t *rc = nb_codec_stream_new(be, 1 << 24), *rd = nb_codec_stream_new(&dev, 1 << 24);
        nb_codec_msg_t mc, md;
        nb_codec_msg_init(&mc);
        nb_codec_msg_init(&md);
        for (int round = 0; round < 2; round++) { /* twice: stateful specs use their state */
            if (nb_codec_encode(be, &s, W.act, 5, sc, 9, &mc, err, sizeof err) ||
                nb_codec_encode(&dev, &s, xd, 5, sd, 9, &md, err, sizeof err))
                fail_msg("%s: %s", specs[k], err);
            assert_int_equal(mc.payload_len, md.payload_len);
            assert_memory_equal(mc.payload, md.payload, mc.payload_len);
            assert_memory_equal(mc.meta, md.meta, mc.meta_len);
            assert_int_equal(nb_codec_decode_into(be, mc.spec, mc.meta, mc.meta_len, mc.payload, mc.payload_len, 0,
                                                  rc, yc, err, sizeof err), 0);
            if (nb_codec_decode_into(&dev, md.spec, md.meta, md.meta_len, md.payload, md.payload_len, 0, rd, yd, err,
                                     sizeof err))
                fail_msg("%s staged decode: %s", specs[k], err);
            assert_memory_equal(yc->data, yd->data, nb_tensor_nbytes(yc));
        }
        nb_codec_msg_free(&mc);
        nb_codec_msg_free(&md);
        nb_codec_stream_free(sc);
        nb_codec_stream_free(sd);
        nb_codec_stream_free(rc);
        nb_codec_stream_free(rd);
        nb_tensor_free(xd);
        nb_tensor_free(yc);
        nb_tensor_free(yd);
    }
}

/* Stochastic rounding depends on the seed, and only on it. */
static void test_seeds(void **state)
{
    (void)state;
    nb_backend_t *be = W.fx.be;
    char err[256];
    nb_codec_spec_t s;
    nb_codec_msg_t a, b;
    nb_codec_msg_init(&a);
    nb_codec_msg_init(&b);
    const char *specs[] = { "int8(sr)", "svd(0.3)" };
    for (int k = 0; k < 2; k++) {
        assert_int_equal(nb_codec_spec_parse(specs[k], &s, NULL, 0), 0);
        assert_int_equal(nb_codec_encode(be, &s, W.grad, 1, NULL, 0, &a, err, sizeof err), 0);
        assert_int_equal(nb_codec_encode(be, &s, W.grad, 2, NULL, 0, &b, err, sizeof err), 0);
        assert_int_equal(a.payload_len, b.payload_len);
        assert_memory_not_equal(a.payload, b.payload, a.payload_len);
    }
    nb_codec_msg_free(&a);
    nb_codec_msg_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codecs_on_realistic_tensors),
        cmocka_unit_test(test_lossless_representable),
        cmocka_unit_test(test_error_feedback),
        cmocka_unit_test(test_delta_mode),
        cmocka_unit_test(test_seeds),
        cmocka_unit_test(test_odd_shapes),
        cmocka_unit_test(test_device_staging),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
