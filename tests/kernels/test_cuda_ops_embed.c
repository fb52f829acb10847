/* test_cuda_ops_embed.c - the CUDA backend's embedding forward and backward
 * against the CPU backend (the reference): odd B, T, C, heavily repeated
 * tokens, a position table longer than T, wpe NULL, dwte or dwpe NULL,
 * pre-filled gradients (the backward accumulates), sizes that give one and
 * several channel blocks, token tiles and vocabulary partitions, and two
 * runs compared bit for bit. Both ops give the CPU's bits (the same additions
 * in the same order: docs/cuda.md), so the comparison is exact. A negative
 * token id, which the CPU backend refuses, gives a NaN row forward and no
 * dwte contribution backward. The token shift (forward and backward,
 * causal or not, with padding, C not a multiple of 4) equals the CPU's bits.
 * Without a CUDA device (or module) the test is reported as skipped. */
#include "test_ops_util.h"
#include "test_cuda_util.h"

typedef struct {
    int B, T, C, V, maxT;
} shape_t;

/* One shape: forward with and without wpe, backward with every combination
 * of NULL gradients, each compared exactly with the CPU and run twice. */
static void check_shape(cuda_fixture_t *f, shape_t s)
{
    size_t N = (size_t)s.B * s.T, nout = N * s.C, nwte = (size_t)s.V * s.C, nwpe = (size_t)s.maxT * s.C;
    tu_rng_t r = { 0x7777ull + (uint64_t)s.B * 1000003u + (uint64_t)s.T * 1009u + (uint64_t)s.C };
    int32_t *tok = malloc((N ? N : 1) * sizeof *tok);
    assert_non_null(tok);
    for (size_t i = 0; i < N; i++) {
        /* a third of the positions reuse a few ids: repeated tokens
         * accumulate in order */
        uint32_t u = (uint32_t)((tu_uniform(&r) + 1.0f) * 0.5f * 1e6f);
        tok[i] = (int32_t)(u % (uint32_t)(i % 3 == 0 && s.V > 3 ? 3 : s.V));
    }
    tok[N - 1] = s.V - 1; /* the last row is used */
    float *wte = tu_alloc(nwte), *wpe = tu_alloc(nwpe), *dout = tu_alloc(nout);
    float *dwte0 = tu_alloc(nwte), *dwpe0 = tu_alloc(nwpe);
    float *ref = tu_alloc(nout), *got = tu_alloc(nout), *got2 = tu_alloc(nout);
    float *rte = tu_alloc(nwte), *rpe = tu_alloc(nwpe), *gte = tu_alloc(nwte), *gpe = tu_alloc(nwpe);
    tu_fill(&r, wte, nwte, 1.0f);
    tu_fill(&r, wpe, nwpe, 1.0f);
    tu_fill(&r, dout, nout, 1.0f);
    tu_fill(&r, dwte0, nwte, 0.5f);
    tu_fill(&r, dwpe0, nwpe, 0.5f);
    int32_t *dtok = cuda_up(f->gpu, tok, N * sizeof *tok);
    float *dwte_v = cuda_up(f->gpu, wte, nwte * 4), *dwpe_v = cuda_up(f->gpu, wpe, nwpe * 4);
    float *ddout = cuda_up(f->gpu, dout, nout * 4), *dout_v = cuda_up(f->gpu, ref, nout * 4);
    char what[96];

    for (int with_pe = 0; with_pe < 2; with_pe++) {
        nb_embed_fwd(f->cpu, ref, tok, wte, with_pe ? wpe : NULL, s.B, s.T, s.C);
        nb_embed_fwd(f->gpu, dout_v, dtok, dwte_v, with_pe ? dwpe_v : NULL, s.B, s.T, s.C);
        cuda_down(f->gpu, got, dout_v, nout * 4);
        nb_be_memset0(f->gpu, dout_v, nout * 4);
        nb_embed_fwd(f->gpu, dout_v, dtok, dwte_v, with_pe ? dwpe_v : NULL, s.B, s.T, s.C);
        cuda_down(f->gpu, got2, dout_v, nout * 4);
        snprintf(what, sizeof what, "embed_fwd B%d T%d C%d%s", s.B, s.T, s.C, with_pe ? "" : " no wpe");
        assert_memory_equal(got, ref, nout * 4);
        assert_memory_equal(got2, got, nout * 4);
        printf("# %-40s bit-identical\n", what);
    }

    for (int mode = 0; mode < 4; mode++) {
        bool te = !(mode & 1), pe = !(mode & 2);
        memcpy(rte, dwte0, nwte * 4);
        memcpy(rpe, dwpe0, nwpe * 4);
        nb_embed_bwd(f->cpu, te ? rte : NULL, pe ? rpe : NULL, dout, tok, s.B, s.T, s.C);
        for (int run = 0; run < 2; run++) {
            float *gte_d = cuda_up(f->gpu, dwte0, nwte * 4), *gpe_d = cuda_up(f->gpu, dwpe0, nwpe * 4);
            nb_embed_bwd(f->gpu, te ? gte_d : NULL, pe ? gpe_d : NULL, ddout, dtok, s.B, s.T, s.C);
            float *hte = run ? tu_alloc(nwte) : gte, *hpe = run ? tu_alloc(nwpe) : gpe;
            cuda_down(f->gpu, hte, gte_d, nwte * 4);
            cuda_down(f->gpu, hpe, gpe_d, nwpe * 4);
            if (run) {
                assert_memory_equal(hte, gte, nwte * 4);
                assert_memory_equal(hpe, gpe, nwpe * 4);
                free(hte);
                free(hpe);
            }
            nb_be_dealloc(f->gpu, gte_d);
            nb_be_dealloc(f->gpu, gpe_d);
        }
        /* a NULL gradient's buffer is untouched: rte/rpe still equal the
         * pre-fill there, and so must the device's */
        assert_memory_equal(gte, rte, nwte * 4);
        assert_memory_equal(gpe, rpe, nwpe * 4);
        snprintf(what, sizeof what, "embed_bwd B%d T%d C%d%s%s", s.B, s.T, s.C, te ? "" : " dwte NULL",
                 pe ? "" : " dwpe NULL");
        printf("# %-40s bit-identical\n", what);
    }

    nb_be_dealloc(f->gpu, dtok);
    nb_be_dealloc(f->gpu, dwte_v); nb_be_dealloc(f->gpu, dwpe_v);
    nb_be_dealloc(f->gpu, ddout); nb_be_dealloc(f->gpu, dout_v);
    free(tok); free(wte); free(wpe); free(dout); free(dwte0); free(dwpe0);
    free(ref); free(got); free(got2); free(rte); free(rpe); free(gte); free(gpe);
}

static void test_embed_matches_cpu(void **state)
{
    cuda_fixture_t *f = cuda_fx(state);
    const shape_t shapes[] = {
        { 3, 37, 48, 101, 40 },  /* the usual odd sizes; one token tile */
        { 3, 101, 65, 7, 101 },  /* two channel blocks (the second nearly empty), two tiles, tiny V */
        { 2, 5, 1, 3, 8 },       /* C = 1: many partitions, N small */
        { 1, 1, 3, 1, 1 },
        { 2, 3, 300, 5, 4 },     /* two channel groups forward, five backward */
    };
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++)
        check_shape(f, shapes[k]);
}

static void test_embed_empty(void **state)
{
    cuda_fixture_t *f = cuda_fx(state);
    float h[4] = { 1, 2, 3, 4 }, got[4];
    int32_t t = 0;
    float *d = cuda_up(f->gpu, h, sizeof h);
    int32_t *dt = cuda_up(f->gpu, &t, sizeof t);
    nb_embed_fwd(f->gpu, d, dt, d, d, 0, 1, 4);
    nb_embed_fwd(f->gpu, d, dt, d, d, 1, 0, 4);
    nb_embed_bwd(f->gpu, d, d, d, dt, 0, 1, 4);
    nb_embed_bwd(f->gpu, d, d, d, dt, 1, 1, 0);
    cuda_down(f->gpu, got, d, sizeof got);
    assert_memory_equal(got, h, sizeof h);
    nb_be_dealloc(f->gpu, d);
    nb_be_dealloc(f->gpu, dt);
}

/* A negative id: the forward row is NaN, the backward adds nothing to dwte
 * for it (dwpe still gets its dout row: positions do not depend on ids). */
static void test_embed_negative_id(void **state)
{
    cuda_fixture_t *f = cuda_fx(state);
    enum { B = 2, T = 3, C = 5, V = 4 };
    int32_t tok[B * T] = { 1, 2, -1, 3, 1, 0 };
    tu_rng_t r = { 42 };
    float wte[V * C], wpe[T * C], dout[B * T * C], dwte[V * C], dwpe[T * C], out[B * T * C] = { 0 };
    tu_fill(&r, wte, V * C, 1.0f);
    tu_fill(&r, wpe, T * C, 1.0f);
    tu_fill(&r, dout, B * T * C, 1.0f);
    tu_fill(&r, dwte, V * C, 1.0f);
    tu_fill(&r, dwpe, T * C, 1.0f);
    int32_t *dt = cuda_up(f->gpu, tok, sizeof tok);
    float *dwte_v = cuda_up(f->gpu, wte, sizeof wte), *dwpe_v = cuda_up(f->gpu, wpe, sizeof wpe);
    float *dout_d = cuda_up(f->gpu, dout, sizeof dout), *o = cuda_up(f->gpu, out, sizeof out);
    float *gte = cuda_up(f->gpu, dwte, sizeof dwte), *gpe = cuda_up(f->gpu, dwpe, sizeof dwpe);
    nb_embed_fwd(f->gpu, o, dt, dwte_v, dwpe_v, B, T, C);
    cuda_down(f->gpu, out, o, sizeof out);
    for (int i = 0; i < B * T * C; i++)
        assert_true((i / C == 2) == (bool)isnan(out[i]));
    nb_embed_bwd(f->gpu, gte, gpe, dout_d, dt, B, T, C);
    float got_te[V * C], got_pe[T * C];
    cuda_down(f->gpu, got_te, gte, sizeof got_te);
    cuda_down(f->gpu, got_pe, gpe, sizeof got_pe);
    /* reference: the CPU with that position's id made valid and its dout
     * row zero for dwte (x + 0 == x for the non-zero pre-fill), and the
     * real dout for dwpe */
    int32_t tok_ok[B * T];
    memcpy(tok_ok, tok, sizeof tok);
    tok_ok[2] = 0;
    float dout0[B * T * C];
    memcpy(dout0, dout, sizeof dout);
    for (int c = 0; c < C; c++)
        dout0[2 * C + c] = 0.0f;
    nb_embed_bwd(f->cpu, dwte, NULL, dout0, tok_ok, B, T, C);
    nb_embed_bwd(f->cpu, NULL, dwpe, dout, tok_ok, B, T, C);
    assert_memory_equal(got_te, dwte, sizeof dwte);
    assert_memory_equal(got_pe, dwpe, sizeof dwpe);
    nb_be_dealloc(f->gpu, dt); nb_be_dealloc(f->gpu, dwte_v); nb_be_dealloc(f->gpu, dwpe_v);
    nb_be_dealloc(f->gpu, dout_d); nb_be_dealloc(f->gpu, o);
    nb_be_dealloc(f->gpu, gte); nb_be_dealloc(f->gpu, gpe);
}

/* The token shift, both directions, causal or not, with and without a key
 * mask (a third of the positions padding), against the CPU bit for bit. */
static void test_token_shift_matches_cpu(void **state)
{
    cuda_fixture_t *f = cuda_fx(state);
    const int shapes[][3] = { { 3, 37, 48 }, { 2, 5, 18 }, { 1, 1, 8 }, { 2, 4, 3 }, { 1, 600, 301 } };
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        int B = shapes[k][0], T = shapes[k][1], C = shapes[k][2];
        size_t N = (size_t)B * T, n = N * C;
        tu_rng_t r = { 0x5151ull + k };
        float *x = tu_alloc(n), *ref = tu_alloc(n), *got = tu_alloc(n);
        uint8_t *mask = malloc(N);
        assert_non_null(mask);
        tu_fill(&r, x, n, 1.0f);
        for (size_t i = 0; i < N; i++)
            mask[i] = tu_uniform(&r) > -0.33f;
        float *dx = cuda_up_f(f->gpu, x, n), *dout = cuda_up_f(f->gpu, got, n);
        uint8_t *dmask = cuda_up(f->gpu, mask, N);
        for (int v = 0; v < 8; v++) {
            bool causal = v & 1, backward = v & 2, masked = v & 4;
            const uint8_t *m = masked ? mask : NULL;
            if (backward)
                nb_token_shift_bwd(f->cpu, ref, x, m, causal, B, T, C);
            else
                nb_token_shift_fwd(f->cpu, ref, x, m, causal, B, T, C);
            if (backward)
                nb_token_shift_bwd(f->gpu, dout, dx, masked ? dmask : NULL, causal, B, T, C);
            else
                nb_token_shift_fwd(f->gpu, dout, dx, masked ? dmask : NULL, causal, B, T, C);
            cuda_down_f(f->gpu, got, dout, n);
            cuda_assert_same("token shift", got, ref, n);
        }
        nb_be_dealloc(f->gpu, dx);
        nb_be_dealloc(f->gpu, dout);
        nb_be_dealloc(f->gpu, dmask);
        free(x); free(ref); free(got); free(mask);
    }
}

static void test_supports(void **state)
{
    cuda_fixture_t *f = cuda_fx(state);
    assert_true(nb_be_supports(f->gpu, NB_OP_EMBED_FWD));
    assert_true(nb_be_supports(f->gpu, NB_OP_EMBED_BWD));
    assert_true(nb_be_supports(f->gpu, NB_OP_TOKEN_SHIFT));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_supports),
        cmocka_unit_test(test_embed_matches_cpu),
        cmocka_unit_test(test_embed_empty),
        cmocka_unit_test(test_embed_negative_id),
        cmocka_unit_test(test_token_shift_matches_cpu),
    };
    return cmocka_run_group_tests(tests, cuda_setup, cuda_teardown);
}
