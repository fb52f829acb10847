/* test_ops_attention.c - multi-head self-attention on the CPU backend.
 * Forward against a naive per-head double-precision loop for causal and
 * bidirectional attention, with and without a key padding mask; a query with
 * every key masked must give zeros (not NaN); finite-difference check of the
 * backward on every qkv element; accumulation; bit-identical reruns. */
#include "tests/kernels/test_ops_util.h"

enum { B = 2, T = 19, C = 12, NH = 3, HS = C / NH };

/* batch 0: last two keys are padding; batch 1: the first three keys are
 * padding, so with causal attention queries 0..2 see no key at all */
static const uint8_t MASK[B * T] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0,
    0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

static void naive_attention(double *out, const float *qkv, const uint8_t *mask, bool causal)
{
    double scale = 1.0 / sqrt((double)HS);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const float *q = qkv + (b * T + t) * 3 * C + h * HS;
                double s[T], mx = -INFINITY, sum = 0;
                bool ok[T];
                for (int j = 0; j < T; j++) {
                    ok[j] = (!causal || j <= t) && (!mask || mask[b * T + j]);
                    const float *k = qkv + (b * T + j) * 3 * C + C + h * HS;
                    s[j] = 0;
                    for (int d = 0; d < HS; d++)
                        s[j] += (double)q[d] * k[d];
                    s[j] *= scale;
                    if (ok[j] && s[j] > mx)
                        mx = s[j];
                }
                for (int j = 0; j < T; j++) {
                    s[j] = ok[j] ? exp(s[j] - mx) : 0.0;
                    sum += s[j];
                }
                for (int d = 0; d < HS; d++) {
                    double o = 0;
                    for (int j = 0; j < T; j++)
                        if (ok[j])
                            o += s[j] / sum * qkv[(b * T + j) * 3 * C + 2 * C + h * HS + d];
                    out[(b * T + t) * C + h * HS + d] = o;
                }
            }
}

typedef struct {
    nb_backend_t *be;
    float *qkv, *out, *att, *r;
    const uint8_t *mask;
    bool causal;
} at_t;

static double att_loss(void *p)
{
    at_t *s = p;
    nb_attention_fwd(s->be, s->out, s->att, s->qkv, s->mask, s->causal, B, T, C, NH);
    return tu_dot(s->out, s->r, B * T * C);
}

static void attention_case(bool causal, bool masked)
{
    char name[96];
    const char *tag = causal ? (masked ? "causal+mask" : "causal") : (masked ? "bidir+mask" : "bidir");
    tu_rng_t rng = { 21u + causal * 2u + masked };
    at_t s = { nb_cpu_backend_new(), tu_alloc(B * T * 3 * C), tu_alloc(B * T * C),
               tu_alloc(B * NH * T * T), tu_alloc(B * T * C), masked ? MASK : NULL, causal };
    tu_fill(&rng, s.qkv, B * T * 3 * C, 1.5f);
    tu_fill(&rng, s.r, B * T * C, 1.0f);

    /* forward vs naive */
    att_loss(&s);
    double *ref = malloc(sizeof(double) * B * T * C);
    assert_non_null(ref);
    naive_attention(ref, s.qkv, s.mask, causal);
    snprintf(name, sizeof name, "attention_fwd %s", tag);
    tu_assert_close(name, s.out, ref, B * T * C, 1e-5, 1e-4);
    free(ref);

    /* att rows: zero where not allowed, sum to 1 (or 0 if nothing allowed) */
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const float *a = s.att + ((b * NH + h) * T + t) * T;
                double sum = 0;
                bool any = false;
                for (int j = 0; j < T; j++) {
                    bool ok = (!causal || j <= t) && (!masked || MASK[b * T + j]);
                    any |= ok;
                    if (!ok)
                        assert_true(a[j] == 0.0f);
                    sum += a[j];
                }
                assert_true(fabs(sum - (any ? 1.0 : 0.0)) < 1e-5);
            }

    /* backward vs finite differences on every element of qkv */
    float *dqkv = tu_alloc(B * T * 3 * C);
    att_loss(&s);
    nb_attention_bwd(s.be, dqkv, s.r, s.qkv, s.att, s.mask, causal, B, T, C, NH);
    snprintf(name, sizeof name, "attention_bwd %s (fd)", tag);
    tu_fd_check(name, s.qkv, B * T * 3 * C, dqkv, att_loss, &s, 1e-2f, 1e-3, 1e-2);

    /* accumulates: a second call adds the same again */
    float *d2 = tu_alloc(B * T * 3 * C);
    memcpy(d2, dqkv, sizeof(float) * B * T * 3 * C);
    att_loss(&s);
    nb_attention_bwd(s.be, d2, s.r, s.qkv, s.att, s.mask, causal, B, T, C, NH);
    for (int i = 0; i < B * T * 3 * C; i++)
        dqkv[i] *= 2;
    snprintf(name, sizeof name, "attention_bwd %s accumulates", tag);
    tu_assert_close_f(name, d2, dqkv, B * T * 3 * C, 1e-6, 1e-6);
    free(s.qkv); free(s.out); free(s.att); free(s.r); free(dqkv); free(d2);
    nb_be_free(s.be);
}

static void test_attention_causal(void **state) { (void)state; attention_case(true, false); }
static void test_attention_bidirectional(void **state) { (void)state; attention_case(false, false); }
static void test_attention_causal_masked(void **state) { (void)state; attention_case(true, true); }
static void test_attention_bidirectional_masked(void **state) { (void)state; attention_case(false, true); }

/* Every key of a sequence masked: zeros out, zero gradients, no NaN, even
 * with huge scores. */
static void test_attention_fully_masked(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    tu_rng_t rng = { 77 };
    float *qkv = tu_alloc(B * T * 3 * C), *out = tu_alloc(B * T * C), *att = tu_alloc(B * NH * T * T);
    float *dout = tu_alloc(B * T * C), *dqkv = tu_alloc(B * T * 3 * C);
    tu_fill(&rng, qkv, B * T * 3 * C, 50.0f);
    tu_fill(&rng, dout, B * T * C, 1.0f);
    uint8_t mask[B * T];
    for (int i = 0; i < B * T; i++)
        mask[i] = i >= T; /* batch 0 all padding, batch 1 none */
    for (int causal = 0; causal < 2; causal++) {
        memset(dqkv, 0, sizeof(float) * B * T * 3 * C);
        nb_attention_fwd(be, out, att, qkv, mask, causal, B, T, C, NH);
        nb_attention_bwd(be, dqkv, dout, qkv, att, mask, causal, B, T, C, NH);
        for (int i = 0; i < T * C; i++)
            assert_true(out[i] == 0.0f);
        for (int i = 0; i < NH * T * T; i++)
            assert_true(att[i] == 0.0f);
        for (int i = 0; i < T * 3 * C; i++)
            assert_true(dqkv[i] == 0.0f);
        for (int i = 0; i < B * T * 3 * C; i++)
            assert_false(isnan(dqkv[i]) || isinf(dqkv[i]));
        for (int i = T * C; i < B * T * C; i++)
            assert_false(isnan(out[i]));
    }
    free(qkv); free(out); free(att); free(dout); free(dqkv);
    nb_be_free(be);
}

/* Same inputs, bit-identical outputs, on the sizes the benchmark uses for
 * one head group (exercises the full vector path). */
static void test_attention_deterministic(void **state)
{
    (void)state;
    enum { B2 = 2, T2 = 64, C2 = 128, NH2 = 2 };
    nb_backend_t *be = nb_cpu_backend_new();
    tu_rng_t rng = { 99 };
    size_t nq = B2 * T2 * 3 * C2, no = B2 * T2 * C2, na = B2 * NH2 * T2 * T2;
    float *qkv = tu_alloc(nq), *dout = tu_alloc(no);
    float *o[2] = { tu_alloc(no), tu_alloc(no) }, *a[2] = { tu_alloc(na), tu_alloc(na) };
    float *d[2] = { tu_alloc(nq), tu_alloc(nq) };
    tu_fill(&rng, qkv, nq, 1.0f);
    tu_fill(&rng, dout, no, 1.0f);
    for (int r = 0; r < 2; r++) {
        nb_attention_fwd(be, o[r], a[r], qkv, NULL, true, B2, T2, C2, NH2);
        nb_attention_bwd(be, d[r], dout, qkv, a[r], NULL, true, B2, T2, C2, NH2);
    }
    assert_memory_equal(o[0], o[1], no * sizeof(float));
    assert_memory_equal(a[0], a[1], na * sizeof(float));
    assert_memory_equal(d[0], d[1], nq * sizeof(float));
    free(qkv); free(dout);
    for (int r = 0; r < 2; r++) { free(o[r]); free(a[r]); free(d[r]); }
    nb_be_free(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention_causal),
        cmocka_unit_test(test_attention_bidirectional),
        cmocka_unit_test(test_attention_causal_masked),
        cmocka_unit_test(test_attention_bidirectional_masked),
        cmocka_unit_test(test_attention_fully_masked),
        cmocka_unit_test(test_attention_deterministic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
