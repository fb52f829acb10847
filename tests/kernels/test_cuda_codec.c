/* test_cuda_codec.c - the CUDA backend's codec primitives and the whole codec
 * layer on it, against the CPU backend (the specification). Tolerance: none.
 * Every encoded byte (fp16 and its scales, bf16, int8 / int4 codes and
 * scales with and without stochastic rounding, top-k indices and values,
 * whole messages: spec, metadata and payload) must equal the CPU's bytes,
 * and each side decodes the other's bytes to the same floats bit for bit.
 * That is what lets a stage on a GPU and a stage on a CPU talk. Inputs have
 * odd sizes (1, 4095, 4097, 10001, ...), odd int4 tails, blocks of zeros,
 * NaN and inf, denormals, huge values and many magnitude ties. Runs twice
 * on the device: the results must repeat bit for bit. The SVD codec goes
 * through cuBLAS, so its bytes may differ from the CPU's: it is checked by
 * cross decoding within a stated tolerance instead.
 * Without a CUDA device (or module) the test is reported as skipped. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/backend.h"
#include "kernels/codec/codec.h"
#include "kernels/codec/codec_ops.h"

static nb_backend_t *gpu, *cpu;

/* Every test starts with this: no device, nothing to compare. */
#define NEED_GPU()      \
    do {                \
        (void)state;    \
        if (!gpu)       \
            skip();     \
    } while (0)

static float fbits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

typedef struct { uint64_t s; } rng_t;
static uint32_t rnd32(rng_t *r)
{
    r->s ^= r->s << 13;
    r->s ^= r->s >> 7;
    r->s ^= r->s << 17;
    return (uint32_t)(r->s >> 32);
}
static float rndu(rng_t *r) { return (float)((double)rnd32(r) / 4294967296.0 * 2.0 - 1.0); }

static void *xalloc(size_t bytes)
{
    void *p = calloc(bytes ? bytes : 1, 1);
    assert_non_null(p);
    return p;
}

/* Device buffer of bytes. */
static void *dalloc(size_t bytes)
{
    void *d = nb_be_alloc(gpu, bytes ? bytes : 1);
    assert_non_null(d);
    return d;
}
/* Device copy of host bytes. */
static void *up(const void *h, size_t bytes)
{
    void *d = dalloc(bytes);
    if (bytes)
        nb_be_from_host(gpu, d, h, bytes);
    nb_be_sync(gpu);
    return d;
}
static void down(void *h, const void *d, size_t bytes)
{
    if (bytes)
        nb_be_to_host(gpu, h, d, bytes);
}

static void same_bytes(const char *what, const void *got, const void *want, size_t bytes)
{
    if (!memcmp(got, want, bytes))
        return;
    const uint8_t *g = got, *w = want;
    size_t i = 0;
    while (g[i] == w[i])
        i++;
    fail_msg("%s: byte %zu of %zu differs: gpu 0x%02x, cpu 0x%02x", what, i, bytes, g[i], w[i]);
}

/* Test input: per chunk of `chunk` elements one kind of content, so that
 * fp16 and quantisation blocks see zeros, NaN, inf, denormals, huge values,
 * ties and ordinary data. */
static void fill(float *x, size_t n, size_t chunk, uint64_t seed)
{
    rng_t r = { seed * 0x9E3779B97F4A7C15ULL + 1 };
    for (size_t c0 = 0, ci = 0; c0 < n; c0 += chunk, ci++) {
        size_t len = n - c0 < chunk ? n - c0 : chunk;
        float *p = x + c0;
        int kind = (int)(ci % 9);
        for (size_t i = 0; i < len; i++) {
            float u = rndu(&r);
            switch (kind) {
            case 0: p[i] = u; break;                                   /* ordinary */
            case 1: p[i] = 0.0f; break;                                /* all zero */
            case 2: p[i] = u * 1e-6f; break;                           /* small gradients */
            case 3: p[i] = fbits(rnd32(&r) & 0x807fffffU); break;      /* denormals and zeros */
            case 4: p[i] = u * 3e38f; break;                           /* huge: scale underflows */
            case 5: p[i] = (float)((int)(u * 4.0f)) * 0.5f; break;     /* ties, -0 and +0 */
            case 6: p[i] = u * 100.0f; break;
            case 7: p[i] = u * 7e4f; break;                            /* above fp16's range */
            default: p[i] = fbits(rnd32(&r)); break;                   /* any bit pattern, NaN included */
            }
        }
        if (kind == 6 && len > 2) {
            p[len / 2] = INFINITY;
            p[len - 1] = -0.0f;
        }
        if (kind == 0 && len > 3)
            p[len / 3] = fbits(0x7fa00001U); /* a signalling NaN */
    }
}

/* ---- conversions ------------------------------------------------------------ */

static void check_f16(size_t n, uint64_t seed, size_t chunk)
{
    size_t nb = n / NB_CODEC_F16_BLOCK + (n % NB_CODEC_F16_BLOCK != 0);
    float *x = xalloc(n * 4), *sc_c = xalloc(nb * 4), *sc_g = xalloc(nb * 4);
    uint16_t *h_c = xalloc(n * 2), *h_g = xalloc(n * 2);
    float *y_c = xalloc(n * 4), *y_g = xalloc(n * 4), *y_x = xalloc(n * 4);
    fill(x, n, chunk, seed);
    nb_codec_op_f32_to_f16(cpu, h_c, sc_c, x, n);
    float *dx = up(x, n * 4), *dsc = dalloc(nb * 4), *dy = dalloc(n * 4);
    uint16_t *dh = dalloc(n * 2);
    for (int rep = 0; rep < 2; rep++) {
        nb_codec_op_f32_to_f16(gpu, dh, dsc, dx, n);
        down(h_g, dh, n * 2);
        down(sc_g, dsc, nb * 4);
        same_bytes("f32_to_f16 codes", h_g, h_c, n * 2);
        same_bytes("f32_to_f16 scales", sc_g, sc_c, nb * 4);
    }
    /* each side decodes the other's bytes (identical, but decoded apart) */
    nb_codec_op_f16_to_f32(cpu, y_c, h_c, sc_c, n);
    nb_codec_op_f16_to_f32(cpu, y_x, h_g, sc_g, n);
    same_bytes("f16_to_f32 cpu of gpu bytes", y_x, y_c, n * 4);
    float *dsc_c = up(sc_c, nb * 4);
    uint16_t *dh_c = up(h_c, n * 2);
    nb_codec_op_f16_to_f32(gpu, dy, dh_c, dsc_c, n);
    down(y_g, dy, n * 4);
    same_bytes("f16_to_f32 gpu of cpu bytes", y_g, y_c, n * 4);
    nb_be_dealloc(gpu, dx); nb_be_dealloc(gpu, dsc); nb_be_dealloc(gpu, dy); nb_be_dealloc(gpu, dh);
    nb_be_dealloc(gpu, dsc_c); nb_be_dealloc(gpu, dh_c);
    free(x); free(sc_c); free(sc_g); free(h_c); free(h_g); free(y_c); free(y_g); free(y_x);
}

static void test_f16(void **state)
{
    NEED_GPU();
    static const size_t ns[] = { 1, 2, 4095, 4096, 4097, 10001, 9 * 4096 + 7 };
    for (size_t i = 0; i < NB_ARRAY_LEN(ns); i++) {
        check_f16(ns[i], i, NB_CODEC_F16_BLOCK); /* one kind per fp16 block */
        check_f16(ns[i], i + 100, 777);          /* kinds mixed inside blocks */
    }
}

/* fp16 decode of every half pattern (NaN, signalling NaN, denormals, inf)
 * under assorted scales, not only the power-of-two ones the encoder makes. */
static void test_f16_decode_all(void **state)
{
    NEED_GPU();
    const size_t n = 65536 + 3 * NB_CODEC_F16_BLOCK, nb = n / NB_CODEC_F16_BLOCK + 1;
    uint16_t *h = xalloc(n * 2);
    float *sc = xalloc(nb * 4), *y_c = xalloc(n * 4), *y_g = xalloc(n * 4);
    for (size_t i = 0; i < n; i++)
        h[i] = (uint16_t)(i * 40503u);
    static const float scs[] = { 1.0f, 0.3f, 0x1p-100f, 0x1p100f, 0.0f, 3e38f };
    for (size_t b = 0; b < nb; b++)
        sc[b] = scs[b % NB_ARRAY_LEN(scs)];
    nb_codec_op_f16_to_f32(cpu, y_c, h, sc, n);
    uint16_t *dh = up(h, n * 2);
    float *dsc = up(sc, nb * 4), *dy = dalloc(n * 4);
    nb_codec_op_f16_to_f32(gpu, dy, dh, dsc, n);
    down(y_g, dy, n * 4);
    same_bytes("f16_to_f32 of every half", y_g, y_c, n * 4);
    nb_be_dealloc(gpu, dh); nb_be_dealloc(gpu, dsc); nb_be_dealloc(gpu, dy);
    free(h); free(sc); free(y_c); free(y_g);
}

static void test_bf16(void **state)
{
    NEED_GPU();
    static const size_t ns[] = { 1, 4097, 100003 };
    for (size_t t = 0; t < NB_ARRAY_LEN(ns); t++) {
        size_t n = ns[t];
        float *x = xalloc(n * 4), *y_c = xalloc(n * 4), *y_g = xalloc(n * 4);
        uint16_t *h_c = xalloc(n * 2), *h_g = xalloc(n * 2);
        fill(x, n, 1000, t);
        for (size_t i = 0; i < n; i += 3) /* a stride through all bit patterns */
            x[i] = fbits((uint32_t)(i * 42953u + 12345u));
        nb_codec_op_f32_to_bf16(cpu, h_c, x, n);
        float *dx = up(x, n * 4), *dy = dalloc(n * 4);
        uint16_t *dh = dalloc(n * 2);
        nb_codec_op_f32_to_bf16(gpu, dh, dx, n);
        down(h_g, dh, n * 2);
        same_bytes("f32_to_bf16", h_g, h_c, n * 2);
        nb_codec_op_bf16_to_f32(cpu, y_c, h_c, n);
        uint16_t *dh_c = up(h_c, n * 2);
        nb_codec_op_bf16_to_f32(gpu, dy, dh_c, n);
        down(y_g, dy, n * 4);
        same_bytes("bf16_to_f32 gpu of cpu bytes", y_g, y_c, n * 4);
        nb_be_dealloc(gpu, dx); nb_be_dealloc(gpu, dy); nb_be_dealloc(gpu, dh); nb_be_dealloc(gpu, dh_c);
        free(x); free(y_c); free(y_g); free(h_c); free(h_g);
    }
}

/* ---- quantisation ----------------------------------------------------------- */

static void check_quant(size_t n, size_t block, int bits, bool sr, uint64_t seed, size_t chunk)
{
    size_t nb = n / block + (n % block != 0), cb = bits == 8 ? n : n / 2 + (n & 1);
    float *x = xalloc(n * 4), *sc_c = xalloc(nb * 4), *sc_g = xalloc(nb * 4);
    uint8_t *q_c = xalloc(cb), *q_g = xalloc(cb);
    float *y_c = xalloc(n * 4), *y_g = xalloc(n * 4);
    char what[96];
    snprintf(what, sizeof what, "quant n=%zu block=%zu bits=%d sr=%d seed=%llx", n, block, bits, sr,
             (unsigned long long)seed);
    fill(x, n, chunk, seed ^ n);
    memset(q_c, 0xa5, cb); /* the odd int4 tail's high nibble must be written */
    nb_codec_op_quant(cpu, q_c, sc_c, x, n, block, bits, sr, seed);
    float *dx = up(x, n * 4), *dsc = dalloc(nb * 4), *dy = dalloc(n * 4);
    memset(q_g, 0x5a, cb);
    uint8_t *dq = up(q_g, cb);
    for (int rep = 0; rep < 2; rep++) {
        nb_codec_op_quant(gpu, dq, dsc, dx, n, block, bits, sr, seed);
        down(q_g, dq, cb);
        down(sc_g, dsc, nb * 4);
        if (memcmp(q_g, q_c, cb) || memcmp(sc_g, sc_c, nb * 4))
            printf("# %s\n", what);
        same_bytes("quant codes", q_g, q_c, cb);
        same_bytes("quant scales", sc_g, sc_c, nb * 4);
    }
    nb_codec_op_dequant(cpu, y_c, q_c, sc_c, n, block, bits);
    uint8_t *dq_c = up(q_c, cb);
    float *dsc_c = up(sc_c, nb * 4);
    nb_codec_op_dequant(gpu, dy, dq_c, dsc_c, n, block, bits);
    down(y_g, dy, n * 4);
    if (memcmp(y_g, y_c, n * 4))
        printf("# %s\n", what);
    same_bytes("dequant gpu of cpu bytes", y_g, y_c, n * 4);
    nb_be_dealloc(gpu, dx); nb_be_dealloc(gpu, dsc); nb_be_dealloc(gpu, dy); nb_be_dealloc(gpu, dq);
    nb_be_dealloc(gpu, dq_c); nb_be_dealloc(gpu, dsc_c);
    free(x); free(sc_c); free(sc_g); free(q_c); free(q_g); free(y_c); free(y_g);
}

static void test_quant(void **state)
{
    NEED_GPU();
    static const size_t ns[] = { 1, 2, 3, 4095, 4097, 10001 };
    static const size_t blocks[] = { 1, 3, 32, 64, 1000, 1025, 4096 };
    static const uint64_t seeds[] = { 0, 0x0123456789abcdefULL };
    for (size_t a = 0; a < NB_ARRAY_LEN(ns); a++)
        for (size_t b = 0; b < NB_ARRAY_LEN(blocks); b++)
            for (int bits = 8; bits >= 4; bits -= 4)
                for (int sr = 0; sr < 2; sr++) {
                    size_t n = ns[a], blk = blocks[b];
                    if (n > 4097 && blk < 32)
                        continue; /* tiny blocks: the short sizes cover them */
                    check_quant(n, blk, bits, sr, seeds[(a + b + (size_t)sr) % 2], blk < 64 ? 100 : blk);
                }
    /* one block for everything (block = row of a 1-row matrix) */
    check_quant(10001, 10001, 4, true, 7, 10001);
    check_quant(10001, 10001, 8, false, 7, 10001);
}

/* dequant of arbitrary code bytes under scales the encoder never makes
 * (0, inf, NaN): the NaN each product gives must be the CPU's. */
static void test_dequant_odd_scales(void **state)
{
    NEED_GPU();
    const size_t n = 4099, block = 37, nb = n / block + 1;
    uint8_t *q = xalloc(n);
    float *sc = xalloc(nb * 4), *y_c = xalloc(n * 4), *y_g = xalloc(n * 4);
    rng_t r = { 99 };
    for (size_t i = 0; i < n; i++)
        q[i] = (uint8_t)rnd32(&r);
    static const uint32_t scs[] = { 0x3c010204, 0, 0x7f800000, 0x7fc00000, 0xffa00001, 0x00000003 };
    for (size_t b = 0; b < nb; b++)
        memcpy(sc + b, &scs[b % NB_ARRAY_LEN(scs)], 4);
    uint8_t *dq = up(q, n);
    float *dsc = up(sc, nb * 4), *dy = dalloc(n * 4);
    for (int bits = 8; bits >= 4; bits -= 4) {
        nb_codec_op_dequant(cpu, y_c, q, sc, n, block, bits);
        nb_codec_op_dequant(gpu, dy, dq, dsc, n, block, bits);
        down(y_g, dy, n * 4);
        same_bytes(bits == 8 ? "dequant int8 odd scales" : "dequant int4 odd scales", y_g, y_c, n * 4);
    }
    nb_be_dealloc(gpu, dq); nb_be_dealloc(gpu, dsc); nb_be_dealloc(gpu, dy);
    free(q); free(sc); free(y_c); free(y_g);
}

/* ---- top-k and scatter ------------------------------------------------------ */

static void check_topk(const float *x, size_t n, size_t k, const char *what)
{
    uint32_t *i_c = xalloc(k * 4), *i_g = xalloc(k * 4);
    float *v_c = xalloc(k * 4), *v_g = xalloc(k * 4), *y_c = xalloc(n * 4), *y_g = xalloc(n * 4);
    nb_codec_op_topk(cpu, i_c, v_c, x, n, k);
    float *dx = up(x, n * 4), *dv = dalloc(k * 4), *dy = dalloc(n * 4);
    uint32_t *di = dalloc(k * 4);
    for (int rep = 0; rep < 2; rep++) {
        nb_codec_op_topk(gpu, di, dv, dx, n, k);
        down(i_g, di, k * 4);
        down(v_g, dv, k * 4);
        if (memcmp(i_g, i_c, k * 4) || memcmp(v_g, v_c, k * 4))
            printf("# topk %s n=%zu k=%zu\n", what, n, k);
        same_bytes("topk indices", i_g, i_c, k * 4);
        same_bytes("topk values", v_g, v_c, k * 4);
    }
    /* scatter of the CPU's selection on both sides; pre-fill y with garbage */
    nb_codec_op_scatter(cpu, y_c, i_c, v_c, n, k);
    memset(y_g, 0x7f, n * 4);
    nb_be_from_host(gpu, dy, y_g, n * 4);
    uint32_t *di_c = up(i_c, k * 4);
    float *dv_c = up(v_c, k * 4);
    nb_codec_op_scatter(gpu, dy, di_c, dv_c, n, k);
    down(y_g, dy, n * 4);
    same_bytes("scatter", y_g, y_c, n * 4);
    nb_be_dealloc(gpu, dx); nb_be_dealloc(gpu, dv); nb_be_dealloc(gpu, dy); nb_be_dealloc(gpu, di);
    nb_be_dealloc(gpu, di_c); nb_be_dealloc(gpu, dv_c);
    free(i_c); free(i_g); free(v_c); free(v_g); free(y_c); free(y_g);
}

static void test_topk(void **state)
{
    NEED_GPU();
    static const size_t ns[] = { 1, 2, 5, 4095, 4097, 10001, 70001 };
    for (size_t a = 0; a < NB_ARRAY_LEN(ns); a++) {
        size_t n = ns[a];
        float *x = xalloc(n * 4);
        rng_t r = { n + 5 };
        /* mixed content: NaN, inf, ties, zeros, denormals */
        fill(x, n, 333, n);
        size_t ks[] = { 1, n / 3 + 1, n > 1 ? n - 1 : 1, n, n / 100 + 1 };
        for (size_t b = 0; b < NB_ARRAY_LEN(ks); b++)
            check_topk(x, n, ks[b], "mixed");
        /* heavy ties: few magnitudes, both signs, -0 and +0 */
        for (size_t i = 0; i < n; i++)
            x[i] = (float)((int)(rndu(&r) * 3.0f));
        for (size_t b = 0; b < NB_ARRAY_LEN(ks); b++)
            check_topk(x, n, ks[b], "ties");
        /* NaNs with different payloads and signs, counted largest */
        for (size_t i = 0; i < n; i++)
            x[i] = i % 7 == 3 ? fbits(0x7fc00000U | (rnd32(&r) & 0x803fffffU)) : rndu(&r);
        for (size_t b = 0; b < NB_ARRAY_LEN(ks); b++)
            check_topk(x, n, ks[b], "nan");
        /* all equal: the first k win */
        for (size_t i = 0; i < n; i++)
            x[i] = (i & 1) ? -2.5f : 2.5f;
        check_topk(x, n, ks[1], "equal");
        free(x);
    }
}

/* ---- the codec layer on the device ------------------------------------------ */

static nb_tensor_t *tensor_of(nb_backend_t *be, const float *h, int64_t rows, int64_t cols)
{
    int64_t shape[2] = { rows, cols };
    nb_tensor_t *t = nb_tensor_new(be, NB_F32, 2, shape);
    assert_non_null(t);
    nb_be_from_host(be, t->data, h, (size_t)(rows * cols) * 4);
    nb_be_sync(be);
    return t;
}

/* Decodes msg on be into host floats (n); st: the receiver's stream (delta). */
static void decode_on(nb_backend_t *be, const nb_codec_msg_t *m, nb_codec_stream_t *st, float *out, size_t n,
                      int64_t rows, int64_t cols)
{
    char err[256] = "";
    int64_t shape[2] = { rows, cols };
    nb_tensor_t *t = nb_tensor_new(be, NB_F32, 2, shape);
    assert_non_null(t);
    int rc = nb_codec_decode_into(be, m->spec, m->meta, m->meta_len, m->payload, m->payload_len, 0, st, t,
                                  err, sizeof err);
    if (rc)
        fail_msg("decode '%s' on %s: %s", m->spec, be->iface->name, err);
    nb_be_to_host(be, out, t->data, n * 4);
    nb_tensor_free(t);
}

/* Input for the layer test: finite values of mixed magnitude with ties and
 * zeros; NaN and inf where the codec carries them (dense fp, no state); for
 * svd a rank-3 matrix plus small noise, so that the leading singular
 * subspace, and with it the factors, are well determined. */
static void layer_input(float *x, int64_t rows, int64_t cols, const nb_codec_spec_t *spec, uint64_t seed)
{
    size_t n = (size_t)(rows * cols);
    rng_t r = { seed + 11 };
    if (spec->kind == NB_CODEC_S_SVD) {
        float *u = xalloc((size_t)rows * 3 * 4), *v = xalloc((size_t)cols * 3 * 4);
        for (int64_t i = 0; i < rows * 3; i++)
            u[i] = rndu(&r);
        for (int64_t i = 0; i < cols * 3; i++)
            v[i] = rndu(&r);
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < cols; j++)
                x[i * cols + j] = 10.0f * u[i * 3] * v[j * 3] + 5.0f * u[i * 3 + 1] * v[j * 3 + 1] +
                                  2.5f * u[i * 3 + 2] * v[j * 3 + 2] + 1e-3f * rndu(&r);
        free(u);
        free(v);
        return;
    }
    for (size_t i = 0; i < n; i++)
        x[i] = i % 13 == 0 ? 0.0f : i % 17 == 0 ? 0.25f : rndu(&r) * (i % 5 == 0 ? 30.0f : 1e-3f);
    bool quant = spec->value == NB_CODEC_V_I8 || spec->value == NB_CODEC_V_I4;
    if (!quant && !spec->ef && !spec->delta) {
        x[n / 2] = INFINITY;
        x[n / 3] = NAN;
    }
}

static void check_layer(const char *text, int64_t rows, int64_t cols, uint64_t seed)
{
    size_t n = (size_t)(rows * cols);
    char err[256] = "";
    nb_codec_spec_t spec;
    if (nb_codec_spec_parse(text, &spec, err, sizeof err))
        fail_msg("spec '%s': %s", text, err);
    bool svd = spec.kind == NB_CODEC_S_SVD, stateful = spec.ef || spec.delta;
    if (svd && !nb_be_supports(gpu, NB_OP_SUMSQ)) { /* svd measures ||A||^2 with sumsq */
        printf("# %-22s not checked: the cuda backend has no sumsq\n", text);
        return;
    }
    float *x = xalloc(n * 4);
    layer_input(x, rows, cols, &spec, seed);
    nb_tensor_t *xc = tensor_of(cpu, x, rows, cols), *xg = tensor_of(gpu, x, rows, cols);
    /* sender streams on each side; receiver streams for the four decodes */
    nb_codec_stream_t *sc = NULL, *sg = NULL, *rx[4] = { NULL, NULL, NULL, NULL };
    if (stateful) {
        sc = nb_codec_stream_new(cpu, 1 << 24);
        sg = nb_codec_stream_new(gpu, 1 << 24);
        assert_non_null(sc);
        assert_non_null(sg);
        for (int i = 0; i < 4; i++) {
            rx[i] = nb_codec_stream_new(i & 1 ? gpu : cpu, 1 << 24);
            assert_non_null(rx[i]);
        }
    }
    nb_codec_msg_t mc, mg;
    nb_codec_msg_init(&mc);
    nb_codec_msg_init(&mg);
    float *y_cc = xalloc(n * 4), *y_cg = xalloc(n * 4), *y_gc = xalloc(n * 4), *y_gg = xalloc(n * 4);
    for (int step = 0; step < (stateful ? 3 : 1); step++) {
        if (step) /* the tensor changes between steps, as a gradient does */
            for (size_t i = 0; i < n; i += 7)
                x[i] *= -0.5f;
        if (step) {
            nb_be_from_host(cpu, xc->data, x, n * 4);
            nb_be_from_host(gpu, xg->data, x, n * 4);
            nb_be_sync(gpu);
        }
        int rc = nb_codec_encode(cpu, &spec, xc, seed + (uint64_t)step, sc, 42, &mc, err, sizeof err);
        if (rc)
            fail_msg("encode '%s' on cpu: %s", text, err);
        rc = nb_codec_encode(gpu, &spec, xg, seed + (uint64_t)step, sg, 42, &mg, err, sizeof err);
        if (rc)
            fail_msg("encode '%s' on cuda: %s", text, err);
        assert_string_equal(mg.spec, mc.spec);
        if (!svd) {
            assert_int_equal(mg.meta_len, mc.meta_len);
            same_bytes(text, mg.meta, mc.meta, mc.meta_len);
            assert_int_equal(mg.payload_len, mc.payload_len);
            same_bytes(text, mg.payload, mc.payload, mc.payload_len);
        }
        /* decode: the CPU's message on both sides, the GPU's on both sides */
        decode_on(cpu, &mc, rx[0], y_cc, n, rows, cols);
        decode_on(gpu, &mc, rx[1], y_cg, n, rows, cols);
        decode_on(cpu, &mg, rx[2], y_gc, n, rows, cols);
        decode_on(gpu, &mg, rx[3], y_gg, n, rows, cols);
        if (!svd) {
            same_bytes("gpu decode of cpu message", y_cg, y_cc, n * 4);
            same_bytes("cpu decode of gpu message", y_gc, y_cc, n * 4);
            same_bytes("gpu decode of gpu message", y_gg, y_cc, n * 4);
        } else {
            /* cuBLAS and OpenBLAS sum in different orders: compare the
             * reconstructions relative to the input's norm */
            double nx = 0, e1 = 0, e2 = 0, e3 = 0;
            for (size_t i = 0; i < n; i++) {
                nx += (double)x[i] * x[i];
                e1 += ((double)y_cg[i] - y_cc[i]) * ((double)y_cg[i] - y_cc[i]);
                e2 += ((double)y_gc[i] - y_gg[i]) * ((double)y_gc[i] - y_gg[i]);
                e3 += ((double)y_gg[i] - y_cc[i]) * ((double)y_gg[i] - y_cc[i]);
            }
            printf("# %-22s %lldx%lld rel err: decode gpu vs cpu %.2g / %.2g, encode gpu vs cpu %.2g\n", text,
                   (long long)rows, (long long)cols, sqrt(e1 / nx), sqrt(e2 / nx), sqrt(e3 / nx));
            assert_true(sqrt(e1 / nx) < 1e-5 && sqrt(e2 / nx) < 1e-5);
            assert_true(sqrt(e3 / nx) < 2e-2);
        }
    }
    nb_codec_msg_free(&mc);
    nb_codec_msg_free(&mg);
    nb_codec_stream_free(sc);
    nb_codec_stream_free(sg);
    for (int i = 0; i < 4; i++)
        nb_codec_stream_free(rx[i]);
    nb_tensor_free(xc);
    nb_tensor_free(xg);
    free(x); free(y_cc); free(y_cg); free(y_gc); free(y_gg);
}

static void test_layer(void **state)
{
    NEED_GPU();
    static const char *specs[] = {
        "fp32", "fp16", "bf16", "int8", "int4", "int8(block=32,sr)", "int4(block=7,sr)", "int8(block=row)",
        "int4(block=row,sr)", "topk(0.01)", "int8(topk(0.05))", "fp16(topk(0.1))", "bf16(topk(0.3))",
        "int4(topk(0.2),block=5,sr)", "topk(1)", "int8(topk(0.01),ef)", "fp16(delta)", "int8(block=33,ef)",
        "svd(0.5)", "fp16(svd(0.6))", "int8(svd(rank=4))",
    };
    for (size_t i = 0; i < NB_ARRAY_LEN(specs); i++) {
        check_layer(specs[i], 37, 101, i);
        check_layer(specs[i], 3, 4097, i + 50);
    }
}

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16),
        cmocka_unit_test(test_f16_decode_all),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_quant),
        cmocka_unit_test(test_dequant_odd_scales),
        cmocka_unit_test(test_topk),
        cmocka_unit_test(test_layer),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
