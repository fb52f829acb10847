/*
 * test_cpu_levels.c - every ISA level of the CPU kernels gives the same bits.
 *
 * Runs each op of the CPU backend and each codec primitive at every level this
 * processor can run (nb_cpu_backend_new_at) on the same inputs, odd sizes so
 * the vector tails run, and compares the outputs byte for byte with the
 * generic level's. Also checks level selection: names, refusal of levels the
 * processor lacks. A processor without AVX-512 or AVX2 still runs the levels
 * it has; tests/kernels/cpu-levels.test.sh runs the same binaries on emulated
 * processors of each kind.
 */
#include "tests/kernels/test_ops_util.h"
#include "kernels/codec/codec_ops.h"
#include "kernels/cpu_level.h"

/* Outputs of one op at one level: every output buffer, concatenated. */
typedef struct {
    unsigned char *bytes;
    size_t len, cap;
} out_t;

static void out_add(out_t *o, const void *p, size_t n)
{
    if (o->len + n > o->cap) {
        o->cap = (o->len + n) * 2;
        o->bytes = realloc(o->bytes, o->cap);
        assert_non_null(o->bytes);
    }
    memcpy(o->bytes + o->len, p, n);
    o->len += n;
}

enum { N = 3 * 4096 + 77, B = 2, T = 37, C = 48, NH = 4, V = 61 };

typedef struct {
    float x[N], y[N], w[N], dy[N];
    int32_t tok[B * T], tgt[B * T];
    uint8_t mask[B * T];
} inputs_t;

static void make_inputs(inputs_t *in)
{
    tu_rng_t r = { 0x5eed1234u };
    tu_fill(&r, in->x, N, 3.0f);
    tu_fill(&r, in->y, N, 1.0f);
    tu_fill(&r, in->w, N, 0.5f);
    tu_fill(&r, in->dy, N, 0.1f);
    /* values that stress rounding: ties for fp16/bf16, denormals, huge */
    for (int i = 0; i < 64; i++) {
        in->x[i] = ldexpf(1.0f + ldexpf((float)(i % 3), -11), i % 40 - 20);
        in->x[N - 1 - i] = ldexpf(tu_uniform(&r), -130 + i % 8);
    }
    for (int i = 0; i < B * T; i++) {
        in->tok[i] = (int32_t)((i * 7919u) % V);
        in->tgt[i] = i % 11 == 0 ? -1 : (int32_t)((i * 104729u) % V);
        in->mask[i] = (uint8_t)(i % 13 != 5);
    }
}

/* Runs every op at one level and collects the outputs. */
static void run_level(nb_backend_t *be, const inputs_t *in, out_t *o)
{
    float *a = tu_alloc(N), *b = tu_alloc(N), *c = tu_alloc(N), *d = tu_alloc(N);
    double sum = 0;
    /* dense */
    memcpy(a, in->y, sizeof in->y);
    nb_add(be, a, in->x, 0.37f, N);
    nb_scale(be, a, -1.7f, N);
    out_add(o, a, N * 4);
    memcpy(a, in->y, sizeof in->y);
    nb_bias_add(be, a, in->w, N / 77, 77);
    memset(b, 0, N * 4);
    nb_bias_grad(be, b, in->x, N / 77, 77);
    out_add(o, a, N * 4);
    out_add(o, b, 77 * 4);
    /* embedding */
    nb_embed_fwd(be, a, in->tok, in->w, in->y, B, T, C);
    out_add(o, a, B * T * C * 4);
    memset(b, 0, (size_t)(V + T) * C * 4);
    nb_embed_bwd(be, b, b + V * C, in->dy, in->tok, B, T, C);
    out_add(o, b, (size_t)(V + T) * C * 4);
    /* layernorm */
    float mean[B * T], rstd[B * T];
    nb_layernorm_fwd(be, a, mean, rstd, in->x, in->w, in->y, 1e-5f, B * T, C);
    out_add(o, a, B * T * C * 4);
    nb_layernorm_fwd(be, a, mean, rstd, in->x, in->w, in->y, 1e-12f, B * T, C);
    out_add(o, a, B * T * C * 4);
    out_add(o, mean, sizeof mean);
    out_add(o, rstd, sizeof rstd);
    memset(b, 0, (size_t)(B * T + 2) * C * 4);
    nb_layernorm_bwd(be, b, b + B * T * C, b + (B * T + 1) * C, in->dy, in->x, in->w, mean, rstd, B * T, C);
    out_add(o, b, (size_t)(B * T + 2) * C * 4);
    /* gelu */
    nb_gelu_fwd(be, a, in->x, N);
    out_add(o, a, N * 4);
    memcpy(b, in->y, sizeof in->y);
    nb_gelu_bwd(be, b, in->x, in->dy, N);
    out_add(o, b, N * 4);
    nb_gelu_erf_fwd(be, a, in->x, N);
    out_add(o, a, N * 4);
    memcpy(b, in->y, sizeof in->y);
    nb_gelu_erf_bwd(be, b, in->x, in->dy, N);
    out_add(o, b, N * 4);
    /* attention, causal and masked */
    for (int causal = 0; causal < 2; causal++) {
        nb_attention_fwd(be, a, c, in->x, causal ? NULL : in->mask, causal, B, T, C, NH);
        out_add(o, a, B * T * C * 4);
        out_add(o, c, B * NH * T * T * 4);
        memset(d, 0, B * T * 3 * C * 4);
        nb_attention_bwd(be, d, in->dy, in->x, c, causal ? NULL : in->mask, causal, B, T, C, NH);
        out_add(o, d, B * T * 3 * C * 4);
    }
    /* cross-entropy */
    float losses[B * T];
    memcpy(a, in->x, B * T * V * 4);
    nb_xent_fwd_bwd(be, losses, a, a, in->tgt, 0.25f, B * T, V);
    out_add(o, losses, sizeof losses);
    out_add(o, a, B * T * V * 4);
    /* optimizer */
    nb_sumsq(be, &sum, in->x, N);
    out_add(o, &sum, sizeof sum);
    memcpy(a, in->w, N * 4);
    memcpy(b, in->y, N * 4);
    for (size_t i = 0; i < N; i++)
        c[i] = in->dy[i] * in->dy[i];
    for (int step = 1; step <= 3; step++)
        nb_adamw(be, a, in->x, b, c, N, 3e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.8f, step * 977);
    out_add(o, a, N * 4);
    out_add(o, b, N * 4);
    out_add(o, c, N * 4);
    /* codec primitives, at an odd offset so nothing is aligned */
    uint16_t *h = malloc(N * 2 + 2);
    uint8_t *codes = malloc(N + 1);
    uint32_t *idx = malloc(N * 4);
    float scales[N / 16 + 2];
    assert_true(h && codes && idx);
    const float *xs = in->x + 1;
    size_t n = N - 1;
    nb_codec_op_f32_to_f16(be, h + 1, scales, xs, n);
    out_add(o, h + 1, n * 2);
    out_add(o, scales, (n + NB_CODEC_F16_BLOCK - 1) / NB_CODEC_F16_BLOCK * 4);
    nb_codec_op_f16_to_f32(be, a, h + 1, scales, n);
    out_add(o, a, n * 4);
    nb_codec_op_f32_to_bf16(be, h + 1, xs, n);
    out_add(o, h + 1, n * 2);
    nb_codec_op_bf16_to_f32(be, a, h + 1, n);
    out_add(o, a, n * 4);
    for (int bits = 4; bits <= 8; bits += 4)
        for (int sr = 0; sr < 2; sr++)
            for (size_t block = 63; block <= 256; block += 193) {
                size_t nb = (n + block - 1) / block;
                nb_codec_op_quant(be, codes + 1, scales, xs, n, block, bits, sr, 0x1234567890abcdefULL);
                out_add(o, codes + 1, bits == 8 ? n : (n + 1) / 2);
                out_add(o, scales, nb * 4);
                nb_codec_op_dequant(be, a, codes + 1, scales, n, block, bits);
                out_add(o, a, n * 4);
            }
    nb_codec_op_topk(be, idx, b, xs, n, n / 7);
    out_add(o, idx, n / 7 * 4);
    out_add(o, b, n / 7 * 4);
    nb_codec_op_scatter(be, a, idx, b, n, n / 7);
    out_add(o, a, n * 4);
    free(h);
    free(codes);
    free(idx);
    free(a);
    free(b);
    free(c);
    free(d);
}

static void test_levels_bit_identical(void **state)
{
    (void)state;
    inputs_t *in = malloc(sizeof *in);
    assert_non_null(in);
    make_inputs(in);
    out_t ref = { 0 };
    nb_backend_t *be = nb_cpu_backend_new_at(NB_CPU_GENERIC);
    assert_non_null(be);
    run_level(be, in, &ref);
    nb_be_free(be);
    int compared = 0;
    for (int l = NB_CPU_GENERIC + 1; l < NB_CPU_LEVEL_COUNT; l++) {
        be = nb_cpu_backend_new_at((nb_cpu_level_t)l);
        if (!be) {
            printf("# level %s: not on this processor\n", nb_cpu_level_name((nb_cpu_level_t)l));
            continue;
        }
        out_t got = { 0 };
        run_level(be, in, &got);
        nb_be_free(be);
        assert_int_equal(got.len, ref.len);
        size_t first = got.len;
        for (size_t i = 0; i < got.len && first == got.len; i++)
            if (got.bytes[i] != ref.bytes[i])
                first = i;
        printf("# level %s vs generic: %zu bytes of output, %s\n",
               nb_cpu_level_name((nb_cpu_level_t)l), got.len, first == got.len ? "identical" : "DIFFERENT");
        if (first != got.len)
            fail_msg("level %s differs from generic at output byte %zu",
                     nb_cpu_level_name((nb_cpu_level_t)l), first);
        compared++;
        free(got.bytes);
    }
    printf("# %d level(s) compared with generic\n", compared);
    free(ref.bytes);
    free(in);
}

static void test_level_selection(void **state)
{
    (void)state;
    nb_cpu_level_t l;
    assert_int_equal(nb_cpu_level_parse("generic", &l), 0);
    assert_int_equal(l, NB_CPU_GENERIC);
    assert_int_equal(nb_cpu_level_parse("avx512", &l), 0);
    assert_int_equal(l, NB_CPU_AVX512);
    assert_int_equal(nb_cpu_level_parse("AVX2", &l), NB_EINVAL);
    assert_int_equal(nb_cpu_level_parse("sse", &l), NB_EINVAL);
    assert_string_equal(nb_cpu_level_name(NB_CPU_AVX2), "avx2");
    assert_string_equal(nb_cpu_level_name((nb_cpu_level_t)7), "?");
    /* generic always runs; nothing above the best level opens */
    assert_true(nb_cpu_level_usable(NB_CPU_GENERIC));
    nb_cpu_level_t best = nb_cpu_level_best();
    for (int i = 0; i < NB_CPU_LEVEL_COUNT; i++) {
        nb_backend_t *be = nb_cpu_backend_new_at((nb_cpu_level_t)i);
        assert_int_equal(be != NULL, i <= (int)best);
        if (be)
            nb_be_free(be);
    }
    /* the process level: what NEBULA_CPU_LEVEL asks for, else the best */
    const char *why = NULL;
    const char *env = getenv(NB_CPU_LEVEL_ENV);
    int rc = nb_cpu_level_select(&l, &why);
    if (env && *env) {
        nb_cpu_level_t want;
        if (nb_cpu_level_parse(env, &want) == 0 && want <= best) {
            assert_int_equal(rc, 0);
            assert_int_equal(l, want);
        } else {
            assert_int_equal(rc, NB_EINVAL);
            assert_non_null(strstr(why, NB_CPU_LEVEL_ENV));
            assert_null(nb_cpu_backend_new());
        }
    } else {
        assert_int_equal(rc, 0);
        assert_int_equal(l, best);
    }
    char desc[96];
    nb_cpu_describe(desc, sizeof desc);
    printf("# kernels: %s\n", desc);
    assert_non_null(strstr(desc, " blas="));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_level_selection),
        cmocka_unit_test(test_levels_bit_identical),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
