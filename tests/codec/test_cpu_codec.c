/* test_cpu_codec.c - the CPU backend's codec primitives against their scalar
 * definitions: fp16 / bf16 conversion bit for bit over a sweep of float bit
 * patterns (vector bodies and masked tails), absmax int8 / int4 quantisation
 * against an independent reference, stochastic rounding (reproducible,
 * unbiased), top-k against a sort, scatter. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/codec/codec_ops.h"
#include "kernels/cpu/cpu_codec_scalar.h"
#include "kernels/rng.h"

static float fbits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t ubits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* A sweep of bit patterns: a stride through all of them plus edge cases. */
static size_t patterns(float *out, size_t cap)
{
    static const uint32_t edge[] = {
        0x00000000, 0x80000000, 0x3f800000, 0xbf800000, 0x477fe000, 0x477fefff, 0x477ff000,
        0x477fffff, 0x47800000, 0x7f7fffff, 0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001,
        0xffc00001, 0x33000000, 0x33000001, 0x33400000, 0x33800000, 0x387fc000, 0x387fe000,
        0x38800000, 0x3f801000, 0x3f803000, 0x3f807fff, 0x3f808000, 0x3f818000, 0x00000001,
        0x007fffff, 0x3effffff, 0x43008000, 0x43018000,
    };
    size_t n = 0;
    for (size_t i = 0; i < NB_ARRAY_LEN(edge) && n < cap; i++)
        out[n++] = fbits(edge[i]);
    for (uint64_t u = 12345; u <= 0xffffffffULL && n < cap; u += 40009)
        out[n++] = fbits((uint32_t)u);
    return n;
}

static void test_f16_known(void **state)
{
    (void)state;
    assert_int_equal(nb_cpu_codec_f16_from_f32(1.0f), 0x3c00);
    assert_int_equal(nb_cpu_codec_f16_from_f32(-2.0f), 0xc000);
    assert_int_equal(nb_cpu_codec_f16_from_f32(65504.0f), 0x7bff);
    assert_int_equal(nb_cpu_codec_f16_from_f32(65519.0f), 0x7bff);
    assert_int_equal(nb_cpu_codec_f16_from_f32(65520.0f), 0x7c00);
    assert_int_equal(nb_cpu_codec_f16_from_f32(ldexpf(1.0f, -24)), 0x0001);
    assert_int_equal(nb_cpu_codec_f16_from_f32(ldexpf(1.0f, -25)), 0x0000);       /* tie -> even 0 */
    assert_int_equal(nb_cpu_codec_f16_from_f32(ldexpf(3.0f, -25)), 0x0002);       /* tie -> even 2 */
    assert_int_equal(nb_cpu_codec_f16_from_f32(1.0f + ldexpf(1.0f, -11)), 0x3c00); /* tie -> even */
    assert_int_equal(nb_cpu_codec_f16_from_f32(1.0f + ldexpf(3.0f, -11)), 0x3c02);
    assert_int_equal(nb_cpu_codec_f16_from_f32(INFINITY), 0x7c00);
    assert_true((nb_cpu_codec_f16_from_f32(NAN) & 0x7c00) == 0x7c00 && (nb_cpu_codec_f16_from_f32(NAN) & 0x3ff));
    assert_int_equal(nb_cpu_codec_bf16_from_f32(1.0f), 0x3f80);
    assert_int_equal(nb_cpu_codec_bf16_from_f32(fbits(0x3f808000)), 0x3f80); /* tie -> even */
    assert_int_equal(nb_cpu_codec_bf16_from_f32(fbits(0x3f818000)), 0x3f82);
    assert_int_equal(nb_cpu_codec_bf16_from_f32(fbits(0x7f7fffff)), 0x7f80);  /* rounds to inf */
    /* every half converts to a float and back to itself */
    for (uint32_t h = 0; h < 65536; h++) {
        float f = nb_cpu_codec_f32_from_f16((uint16_t)h);
        if (f != f)
            continue;
        if (nb_cpu_codec_f16_from_f32(f) != h)
            fail_msg("half 0x%04x -> %a -> 0x%04x", h, (double)f, nb_cpu_codec_f16_from_f32(f));
    }
}

static void test_conversions_match_scalar(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    enum { CAP = 120000 };
    float *x = malloc(CAP * 4), *y = malloc(CAP * 4), *sc = malloc((CAP / NB_CODEC_F16_BLOCK + 1) * 4);
    uint16_t *h = malloc(CAP * 2);
    size_t n = patterns(x, CAP);
    /* odd lengths exercise the masked tails */
    size_t lens[] = { n, n - 1, 15, 17, 1 };
    for (size_t li = 0; li < NB_ARRAY_LEN(lens); li++) {
        size_t m = lens[li];
        nb_codec_op_f32_to_f16(be, h, sc, x, m);
        for (size_t i = 0; i < m; i++) {
            float s = 1.0f / sc[i / NB_CODEC_F16_BLOCK]; /* a power of two: exact */
            if (h[i] != nb_cpu_codec_f16_from_f32(x[i] * s))
                fail_msg("f16(%08x) = %04x, scalar %04x", ubits(x[i]), h[i], nb_cpu_codec_f16_from_f32(x[i] * s));
        }
        nb_codec_op_f16_to_f32(be, y, h, sc, m);
        for (size_t i = 0; i < m; i++) {
            float r = nb_cpu_codec_f32_from_f16(h[i]) * sc[i / NB_CODEC_F16_BLOCK];
            if (ubits(y[i]) != ubits(r) && !(r != r && y[i] != y[i]))
                fail_msg("f32(%04x) = %08x, scalar %08x", h[i], ubits(y[i]), ubits(r));
        }
        nb_codec_op_f32_to_bf16(be, h, x, m);
        for (size_t i = 0; i < m; i++)
            if (h[i] != nb_cpu_codec_bf16_from_f32(x[i]))
                fail_msg("bf16(%08x) = %04x, scalar %04x", ubits(x[i]), h[i], nb_cpu_codec_bf16_from_f32(x[i]));
        nb_codec_op_bf16_to_f32(be, y, h, m);
        for (size_t i = 0; i < m; i++)
            assert_int_equal(ubits(y[i]), (uint32_t)h[i] << 16);
    }
    free(x);
    free(y);
    free(h);
    free(sc);
    nb_be_free(be);
}

/* The fp16 scale rule: per block, max|x| * 2^s in [2^14, 2^15). */
static void test_f16_scales(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    enum { N = 3 * NB_CODEC_F16_BLOCK + 5 };
    float *x = malloc(N * 4), *y = malloc(N * 4), sc[4];
    uint16_t *h = malloc(N * 2);
    const float mags[4] = { 3e-6f, 1e5f, 0.0f, 1.0f };
    for (int i = 0; i < N; i++)
        x[i] = mags[i / NB_CODEC_F16_BLOCK] * sinf(0.37f * (float)i);
    nb_codec_op_f32_to_f16(be, h, sc, x, N);
    nb_codec_op_f16_to_f32(be, y, h, sc, N);
    for (int b = 0; b < 4; b++) {
        float amax = 0;
        for (int i = b * NB_CODEC_F16_BLOCK; i < N && i < (b + 1) * NB_CODEC_F16_BLOCK; i++)
            amax = fmaxf(amax, fabsf(x[i]));
        if (amax == 0) {
            assert_true(sc[b] == 1.0f);
            continue;
        }
        float scaled = amax / sc[b];
        assert_true(scaled >= 16384.0f && scaled < 32768.0f);
        int e;
        assert_true(frexpf(sc[b], &e) == 0.5f); /* a power of two */
    }
    /* tiny gradients and values above 65504 both keep ~11 bits */
    for (int i = 0; i < N; i++)
        assert_true(fabsf(y[i] - x[i]) <= fabsf(x[i]) * 1e-3f + 1e-30f);
    free(x);
    free(y);
    free(h);
    nb_be_free(be);
}

/* Independent reference of round-to-nearest absmax quantisation. */
static int ref_code(float x, float amax, float qmax)
{
    if (amax == 0.0f)
        return 0;
    float v = nearbyintf(x * (qmax / amax));
    return (int)fminf(fmaxf(v, -qmax), qmax);
}

static void fill_heavy(float *x, size_t n, uint64_t seed)
{
    nb_rng_t g;
    nb_rng_init(&g, seed, 1, 2);
    for (size_t i = 0; i < n; i++) {
        x[i] = (float)nb_rng_normal(&g);
        if (nb_rng_below(&g, 50) == 0)
            x[i] *= 30.0f; /* outliers */
    }
}

static void test_quant_reference(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    enum { N = 1001 };
    float x[N], y[N], scales[N];
    uint8_t codes[N];
    fill_heavy(x, N, 7);
    for (int i = 200; i < 264; i++)
        x[i] = 0.0f; /* an all-zero block */
    size_t blocks[] = { 64, 100, 16, 1, N, 7 };
    for (size_t bi = 0; bi < NB_ARRAY_LEN(blocks); bi++) {
        size_t B = blocks[bi];
        for (int bits = 8; bits >= 4; bits -= 4) {
            float qmax = bits == 8 ? 127.0f : 7.0f;
            memset(codes, 0xAA, sizeof codes);
            nb_codec_op_quant(be, codes, scales, x, N, B, bits, false, 0);
            nb_codec_op_dequant(be, y, codes, scales, N, B, bits);
            for (size_t b0 = 0; b0 < N; b0 += B) {
                size_t len = N - b0 < B ? N - b0 : B;
                float amax = 0;
                for (size_t i = b0; i < b0 + len; i++)
                    amax = fmaxf(amax, fabsf(x[i]));
                assert_true(scales[b0 / B] == amax / qmax);
                for (size_t i = b0; i < b0 + len; i++) {
                    int q = bits == 8 ? (int8_t)codes[i]
                                      : (((codes[i / 2] >> (4 * (i & 1))) & 0xf) ^ 8) - 8;
                    if (q != ref_code(x[i], amax, qmax))
                        fail_msg("bits %d block %zu: code[%zu] = %d, want %d", bits, B, i, q,
                                 ref_code(x[i], amax, qmax));
                    assert_true(y[i] == (float)q * scales[b0 / B]);
                    assert_true(fabsf(y[i] - x[i]) <= 0.5f * scales[b0 / B] * 1.0001f + 1e-30f);
                }
            }
            if (bits == 4)
                assert_int_equal(codes[N / 2] >> 4, 0); /* odd tail: high nibble zero */
        }
    }
    nb_be_free(be);
}

static void test_stochastic_rounding(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    enum { N = 80, TRIALS = 4000 };
    float x[N], y[N], scales[2], sum[N] = { 0 };
    uint8_t c1[N], c2[N];
    fill_heavy(x, N, 3);
    x[5] = 100.0f; /* fixes the scale of block 0 */
    /* reproducible for a seed, different across seeds */
    nb_codec_op_quant(be, c1, scales, x, N, 64, 8, true, 42);
    nb_codec_op_quant(be, c2, scales, x, N, 64, 8, true, 42);
    assert_memory_equal(c1, c2, N);
    nb_codec_op_quant(be, c2, scales, x, N, 64, 8, true, 43);
    assert_memory_not_equal(c1, c2, N);
    /* codes match the scalar definition floor(x/scale + u) */
    for (int i = 0; i < N; i++) {
        float amax = 0;
        for (int j = i < 64 ? 0 : 64; j < (i < 64 ? 64 : N); j++)
            amax = fmaxf(amax, fabsf(x[j]));
        float p = x[i] * (127.0f / amax); /* rounded before the offset is added */
        float v = floorf(p + nb_cpu_codec_sr_u(42, (uint32_t)i));
        assert_int_equal((int8_t)c1[i], (int)fminf(fmaxf(v, -127.0f), 127.0f));
    }
    /* unbiased: the mean over seeds approaches x far closer than one step */
    for (int t = 0; t < TRIALS; t++) {
        nb_codec_op_quant(be, c1, scales, x, N, 64, 4, true, (uint64_t)t * 7919);
        nb_codec_op_dequant(be, y, c1, scales, N, 64, 4);
        for (int i = 0; i < N; i++)
            sum[i] += y[i];
    }
    double worst = 0;
    for (int i = 0; i < N; i++) {
        float step = i < 64 ? scales[0] : scales[1];
        double bias = fabs(sum[i] / TRIALS - x[i]) / step;
        worst = bias > worst ? bias : worst;
    }
    /* one step is the rounding-to-nearest error scale; 4000 trials give a
     * standard error of at most 0.5/sqrt(4000) = 0.008 steps */
    if (worst > 0.05)
        fail_msg("stochastic rounding biased by %.3f steps", worst);
    nb_be_free(be);
}

static int cmp_mag(const void *a, const void *b, void *xv)
{
    const float *x = xv;
    uint32_t ia = *(const uint32_t *)a, ib = *(const uint32_t *)b;
    uint32_t ka = ubits(x[ia]) & 0x7fffffff, kb = ubits(x[ib]) & 0x7fffffff;
    if (ka != kb)
        return ka > kb ? -1 : 1;
    return ia < ib ? -1 : 1;
}
static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void test_topk_against_sort(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    enum { N = 3000 };
    float x[N], vals[N], y[N];
    uint32_t idx[N], ref[N];
    nb_rng_t g;
    nb_rng_init(&g, 9, 0, 0);
    for (int variant = 0; variant < 3; variant++) {
        for (int i = 0; i < N; i++) {
            if (variant == 0)
                x[i] = (float)nb_rng_normal(&g);
            else if (variant == 1) /* many ties, both signs */
                x[i] = (float)((int)nb_rng_below(&g, 7) - 3);
            else /* tiny and huge, with a NaN */
                x[i] = ldexpf((float)nb_rng_normal(&g), (int)nb_rng_below(&g, 200) - 100);
        }
        if (variant == 2)
            x[17] = NAN;
        size_t ks[] = { 1, 2, 10, 299, 1500, N - 1, N };
        for (size_t ki = 0; ki < NB_ARRAY_LEN(ks); ki++) {
            size_t k = ks[ki];
            for (uint32_t i = 0; i < N; i++)
                ref[i] = i;
            qsort_r(ref, N, 4, cmp_mag, x);
            qsort(ref, k, 4, cmp_u32);
            nb_codec_op_topk(be, idx, vals, x, N, k);
            for (size_t i = 0; i < k; i++) {
                if (idx[i] != ref[i])
                    fail_msg("variant %d k=%zu: idx[%zu] = %u, want %u", variant, k, i, idx[i], ref[i]);
                assert_memory_equal(&vals[i], &x[idx[i]], 4);
            }
            if (variant == 2)
                assert_int_equal(idx[0] <= 17 && k >= 1, 1);
            nb_codec_op_scatter(be, y, idx, vals, N, k);
            size_t j = 0;
            for (size_t i = 0; i < N; i++) {
                if (j < k && idx[j] == i)
                    assert_memory_equal(&y[i], &x[i], 4), j++;
                else
                    assert_true(y[i] == 0.0f && !signbit(y[i]));
            }
        }
    }
    nb_be_free(be);
}

static void test_backend_table(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    assert_true(nb_codec_ops_ok(be));
    assert_string_equal(be->iface->name, "cpu");
    nb_be_free(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backend_table),
        cmocka_unit_test(test_f16_known),
        cmocka_unit_test(test_conversions_match_scalar),
        cmocka_unit_test(test_f16_scales),
        cmocka_unit_test(test_quant_reference),
        cmocka_unit_test(test_stochastic_rounding),
        cmocka_unit_test(test_topk_against_sort),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
