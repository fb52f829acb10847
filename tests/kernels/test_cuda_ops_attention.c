/* test_cuda_ops_attention.c - the CUDA backend's fused self- and
 * cross-attention (forward and backward) against the CPU backend on random
 * inputs of odd sizes: causal and bidirectional, without a key mask and with
 * one that has a partly masked batch row, a row whose first keys are masked
 * (causal queries that see no key) and a fully masked batch row (zero output
 * and zero gradients, as on the CPU); head sizes 8 .. 128 (odd and not
 * powers of two, every tile configuration of the kernels); cross-attention
 * with S != T. Gradients accumulate: dqkv / dq / dkv are pre-filled with
 * random values. A second run gives bit-identical out, state and gradients.
 * The state is one log-sum-exp per (b, h, query), never B*NH*T*S floats.
 *
 * Tolerance, per element: |cuda - cpu| <= ATOL + RTOL |cpu| with ATOL 1e-5,
 * RTOL 1e-4 on out and on the gradients (the inputs are in [-1, 1); the
 * kernels sum in another order than the CPU's sgemm and recompute the
 * probabilities from the log-sum-exp; the printed maximum errors are ~1e-6).
 * The accumulated outputs are compared as gradient = result - pre-fill, so the
 * tolerance applies to the gradient and not to the pre-filled values. Skipped
 * when no CUDA backend opens (no device, no module). */
#include "tests/kernels/test_ops_util.h"

#define ATOL 1e-5
#define RTOL 1e-4

static nb_backend_t *gpu, *cpu;

static int setup(void **state)
{
    (void)state;
    const char *why = NULL;
    gpu = nb_cuda_backend_new(0, &why);
    if (!gpu)
        printf("cuda backend unavailable: %s\n", why ? why : "?");
    cpu = nb_cpu_backend_new();
    return cpu ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    if (gpu)
        nb_be_free(gpu);
    nb_be_free(cpu);
    return 0;
}

/* Batch b % 3 == 0: ~20% of keys masked at random; 1: the first three keys
 * masked too (causal queries 0..2 see no key); 2: every key masked. */
static void make_mask(uint8_t *m, int B, int S, tu_rng_t *r)
{
    for (int b = 0; b < B; b++)
        for (int j = 0; j < S; j++) {
            uint8_t keep = tu_uniform(r) > -0.6f;
            if (b % 3 == 1 && j < 3)
                keep = 0;
            if (b % 3 == 2)
                keep = 0;
            m[(size_t)b * S + j] = keep;
        }
}

static void *dev_copy(const void *h, size_t bytes)
{
    void *d = nb_be_alloc(gpu, bytes);
    assert_non_null(d);
    nb_be_from_host(gpu, d, h, bytes);
    return d;
}

/* got - base against ref - base, in double. */
static void assert_grad(const char *what, const float *got, const float *ref, const float *base, size_t n)
{
    double *r = malloc(n * sizeof *r);
    float *g = malloc(n * sizeof *g);
    assert_non_null(r);
    assert_non_null(g);
    for (size_t i = 0; i < n; i++) {
        r[i] = (double)ref[i] - base[i];
        g[i] = (float)((double)got[i] - base[i]);
    }
    tu_assert_close(what, g, r, n, ATOL, RTOL);
    free(r);
    free(g);
}

/* A zero-output row must be exactly zero (not NaN, not tiny). */
static void assert_masked_rows_zero(const float *out, const uint8_t *mask, bool causal, int B, int T, int S, int C)
{
    if (!mask)
        return;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int L = causal ? t + 1 : S, any = 0;
            for (int j = 0; j < L; j++)
                any |= mask[(size_t)b * S + j];
            if (!any)
                for (int c = 0; c < C; c++)
                    assert_true(out[((size_t)b * T + t) * C + c] == 0.0f);
        }
}

typedef struct { int B, T, NH, HS; } shape_t;

/* Self-attention, one shape, one causal setting, with and without mask. */
static void check_self(const shape_t *sh, bool causal, bool masked, uint64_t seed)
{
    const int B = sh->B, T = sh->T, NH = sh->NH, C = NH * sh->HS;
    const size_t nqkv = (size_t)B * T * 3 * C, nout = (size_t)B * T * C;
    tu_rng_t r = { seed };
    float *qkv = tu_alloc(nqkv), *dout = tu_alloc(nout), *pre = tu_alloc(nqkv);
    uint8_t *mask = masked ? malloc((size_t)B * T) : NULL;
    tu_fill(&r, qkv, nqkv, 1.0f);
    tu_fill(&r, dout, nout, 1.0f);
    tu_fill(&r, pre, nqkv, 1.0f);
    if (mask)
        make_mask(mask, B, T, &r);
    char what[96];

    /* CPU reference */
    float *out_c = tu_alloc(nout), *att_c = tu_alloc(nb_attention_state_floats(cpu, B, NH, T, T));
    float *dqkv_c = tu_alloc(nqkv);
    memcpy(dqkv_c, pre, nqkv * sizeof(float));
    nb_attention_fwd(cpu, out_c, att_c, qkv, mask, causal, B, T, C, NH);
    nb_attention_bwd(cpu, dqkv_c, dout, qkv, att_c, mask, causal, B, T, C, NH);

    /* CUDA, twice */
    size_t nst = nb_attention_state_floats(gpu, B, NH, T, T);
    assert_int_equal(nst, (size_t)B * NH * T);
    float *d_qkv = dev_copy(qkv, nqkv * 4), *d_dout = dev_copy(dout, nout * 4);
    uint8_t *d_mask = mask ? dev_copy(mask, (size_t)B * T) : NULL;
    float *d_out = nb_be_alloc(gpu, nout * 4), *d_att = nb_be_alloc(gpu, nst * 4);
    float *d_dqkv = nb_be_alloc(gpu, nqkv * 4);
    float *out_g[2], *att_g[2], *dqkv_g[2];
    for (int run = 0; run < 2; run++) {
        out_g[run] = tu_alloc(nout);
        att_g[run] = tu_alloc(nst);
        dqkv_g[run] = tu_alloc(nqkv);
        nb_be_memset0(gpu, d_out, nout * 4);
        nb_be_from_host(gpu, d_dqkv, pre, nqkv * 4);
        nb_attention_fwd(gpu, d_out, d_att, d_qkv, d_mask, causal, B, T, C, NH);
        nb_attention_bwd(gpu, d_dqkv, d_dout, d_qkv, d_att, d_mask, causal, B, T, C, NH);
        nb_be_to_host(gpu, out_g[run], d_out, nout * 4);
        nb_be_to_host(gpu, att_g[run], d_att, nst * 4);
        nb_be_to_host(gpu, dqkv_g[run], d_dqkv, nqkv * 4);
    }
    snprintf(what, sizeof what, "self B%d T%d NH%d HS%d %s%s out", B, T, NH, sh->HS,
             causal ? "causal" : "bidir", mask ? " mask" : "");
    tu_assert_close_f(what, out_g[0], out_c, nout, ATOL, RTOL);
    assert_masked_rows_zero(out_g[0], mask, causal, B, T, T, C);
    snprintf(what, sizeof what, "self B%d T%d NH%d HS%d %s%s dqkv", B, T, NH, sh->HS,
             causal ? "causal" : "bidir", mask ? " mask" : "");
    assert_grad(what, dqkv_g[0], dqkv_c, pre, nqkv);
    assert_memory_equal(out_g[0], out_g[1], nout * 4);
    assert_memory_equal(att_g[0], att_g[1], nst * 4);
    assert_memory_equal(dqkv_g[0], dqkv_g[1], nqkv * 4);

    for (int run = 0; run < 2; run++) {
        free(out_g[run]);
        free(att_g[run]);
        free(dqkv_g[run]);
    }
    nb_be_dealloc(gpu, d_qkv);
    nb_be_dealloc(gpu, d_dout);
    nb_be_dealloc(gpu, d_mask);
    nb_be_dealloc(gpu, d_out);
    nb_be_dealloc(gpu, d_att);
    nb_be_dealloc(gpu, d_dqkv);
    free(qkv); free(dout); free(pre); free(mask);
    free(out_c); free(att_c); free(dqkv_c);
}

/* Cross-attention: q (B,T,C), kv (B,S,2C). */
static void check_cross(const shape_t *sh, int S, bool masked, uint64_t seed)
{
    const int B = sh->B, T = sh->T, NH = sh->NH, C = NH * sh->HS;
    const size_t nq = (size_t)B * T * C, nkv = (size_t)B * S * 2 * C;
    tu_rng_t r = { seed };
    float *q = tu_alloc(nq), *kv = tu_alloc(nkv), *dout = tu_alloc(nq);
    float *preq = tu_alloc(nq), *prekv = tu_alloc(nkv);
    uint8_t *mask = masked ? malloc((size_t)B * S) : NULL;
    tu_fill(&r, q, nq, 1.0f);
    tu_fill(&r, kv, nkv, 1.0f);
    tu_fill(&r, dout, nq, 1.0f);
    tu_fill(&r, preq, nq, 1.0f);
    tu_fill(&r, prekv, nkv, 1.0f);
    if (mask)
        make_mask(mask, B, S, &r);
    char what[96];

    float *out_c = tu_alloc(nq), *att_c = tu_alloc(nb_attention_state_floats(cpu, B, NH, T, S));
    float *dq_c = tu_alloc(nq), *dkv_c = tu_alloc(nkv);
    memcpy(dq_c, preq, nq * 4);
    memcpy(dkv_c, prekv, nkv * 4);
    nb_xattn_fwd(cpu, out_c, att_c, q, kv, mask, B, T, S, C, NH);
    nb_xattn_bwd(cpu, dq_c, dkv_c, dout, q, kv, att_c, mask, B, T, S, C, NH);

    size_t nst = nb_attention_state_floats(gpu, B, NH, T, S);
    assert_int_equal(nst, (size_t)B * NH * T);
    float *d_q = dev_copy(q, nq * 4), *d_kv = dev_copy(kv, nkv * 4), *d_dout = dev_copy(dout, nq * 4);
    uint8_t *d_mask = mask ? dev_copy(mask, (size_t)B * S) : NULL;
    float *d_out = nb_be_alloc(gpu, nq * 4), *d_att = nb_be_alloc(gpu, nst * 4);
    float *d_dq = nb_be_alloc(gpu, nq * 4), *d_dkv = nb_be_alloc(gpu, nkv * 4);
    float *out_g[2], *att_g[2], *dq_g[2], *dkv_g[2];
    for (int run = 0; run < 2; run++) {
        out_g[run] = tu_alloc(nq);
        att_g[run] = tu_alloc(nst);
        dq_g[run] = tu_alloc(nq);
        dkv_g[run] = tu_alloc(nkv);
        nb_be_memset0(gpu, d_out, nq * 4);
        nb_be_from_host(gpu, d_dq, preq, nq * 4);
        nb_be_from_host(gpu, d_dkv, prekv, nkv * 4);
        nb_xattn_fwd(gpu, d_out, d_att, d_q, d_kv, d_mask, B, T, S, C, NH);
        nb_xattn_bwd(gpu, d_dq, d_dkv, d_dout, d_q, d_kv, d_att, d_mask, B, T, S, C, NH);
        nb_be_to_host(gpu, out_g[run], d_out, nq * 4);
        nb_be_to_host(gpu, att_g[run], d_att, nst * 4);
        nb_be_to_host(gpu, dq_g[run], d_dq, nq * 4);
        nb_be_to_host(gpu, dkv_g[run], d_dkv, nkv * 4);
    }
    snprintf(what, sizeof what, "cross B%d T%d S%d NH%d HS%d%s out", B, T, S, NH, sh->HS, mask ? " mask" : "");
    tu_assert_close_f(what, out_g[0], out_c, nq, ATOL, RTOL);
    assert_masked_rows_zero(out_g[0], mask, false, B, T, S, C);
    snprintf(what, sizeof what, "cross B%d T%d S%d NH%d HS%d%s dq", B, T, S, NH, sh->HS, mask ? " mask" : "");
    assert_grad(what, dq_g[0], dq_c, preq, nq);
    snprintf(what, sizeof what, "cross B%d T%d S%d NH%d HS%d%s dkv", B, T, S, NH, sh->HS, mask ? " mask" : "");
    assert_grad(what, dkv_g[0], dkv_c, prekv, nkv);
    assert_memory_equal(out_g[0], out_g[1], nq * 4);
    assert_memory_equal(att_g[0], att_g[1], nst * 4);
    assert_memory_equal(dq_g[0], dq_g[1], nq * 4);
    assert_memory_equal(dkv_g[0], dkv_g[1], nkv * 4);

    for (int run = 0; run < 2; run++) {
        free(out_g[run]);
        free(att_g[run]);
        free(dq_g[run]);
        free(dkv_g[run]);
    }
    nb_be_dealloc(gpu, d_q);
    nb_be_dealloc(gpu, d_kv);
    nb_be_dealloc(gpu, d_dout);
    nb_be_dealloc(gpu, d_mask);
    nb_be_dealloc(gpu, d_out);
    nb_be_dealloc(gpu, d_att);
    nb_be_dealloc(gpu, d_dq);
    nb_be_dealloc(gpu, d_dkv);
    free(q); free(kv); free(dout); free(preq); free(prekv); free(mask);
    free(out_c); free(att_c); free(dq_c); free(dkv_c);
}

static void require_gpu(void)
{
    if (!gpu)
        skip();
}

static void test_self_attention(void **state)
{
    (void)state;
    require_gpu();
    assert_true(nb_be_supports(gpu, NB_OP_ATTENTION_FWD));
    assert_true(nb_be_supports(gpu, NB_OP_ATTENTION_BWD));
    /* T 1, 17, 37, 70: one partial tile, several tiles with tails */
    static const shape_t shapes[] = {
        { 2, 1, 2, 8 }, { 3, 17, 3, 12 }, { 3, 37, 4, 10 }, { 2, 70, 2, 24 }, { 3, 37, 2, 17 },
    };
    uint64_t seed = 1;
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        for (int causal = 0; causal < 2; causal++)
            for (int masked = 0; masked < 2; masked++)
                check_self(&shapes[i], causal, masked, 0x9e3779b97f4a7c15ull * ++seed);
}

/* Head sizes of the other tile configurations: 33 .. 64, 65 .. 96, 97 .. 128. */
static void test_self_attention_wide_heads(void **state)
{
    (void)state;
    require_gpu();
    static const shape_t shapes[] = { { 2, 37, 1, 40 }, { 1, 37, 2, 64 }, { 2, 19, 1, 72 }, { 1, 41, 1, 128 } };
    uint64_t seed = 100;
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        check_self(&shapes[i], i % 2 == 0, true, 0x9e3779b97f4a7c15ull * ++seed);
    check_self(&shapes[3], false, false, 0x9e3779b97f4a7c15ull * ++seed);
}

static void test_cross_attention(void **state)
{
    (void)state;
    require_gpu();
    assert_true(nb_be_supports(gpu, NB_OP_XATTN_FWD));
    assert_true(nb_be_supports(gpu, NB_OP_XATTN_BWD));
    static const struct { shape_t sh; int S; } cases[] = {
        { { 2, 1, 2, 8 }, 5 }, { { 3, 17, 3, 12 }, 37 }, { { 3, 37, 4, 10 }, 9 }, { { 2, 70, 2, 18 }, 41 },
        { { 1, 13, 1, 100 }, 35 },
    };
    uint64_t seed = 200;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        for (int masked = 0; masked < 2; masked++)
            check_cross(&cases[i].sh, cases[i].S, masked, 0x9e3779b97f4a7c15ull * ++seed);
}

/* B == 0 is a no-op; the state of a 1024-token sequence is its log-sum-exps. */
static void test_edges(void **state)
{
    (void)state;
    require_gpu();
    nb_attention_fwd(gpu, NULL, NULL, NULL, NULL, true, 0, 5, 8, 2);
    nb_attention_bwd(gpu, NULL, NULL, NULL, NULL, NULL, true, 0, 5, 8, 2);
    nb_xattn_fwd(gpu, NULL, NULL, NULL, NULL, NULL, 0, 5, 7, 8, 2);
    nb_xattn_bwd(gpu, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 5, 7, 8, 2);
    nb_be_sync(gpu);
    assert_int_equal(nb_attention_state_floats(gpu, 8, 12, 1024, 1024), (size_t)8 * 12 * 1024);
    assert_int_equal(nb_attention_state_floats(gpu, 1 << 30, 1 << 30, 1 << 30, 1), SIZE_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_self_attention),
        cmocka_unit_test(test_self_attention_wide_heads),
        cmocka_unit_test(test_cross_attention),
        cmocka_unit_test(test_edges),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
