/* test_codec_bad.c - hostile or broken encoded tensors: rank larger than the
 * matrix, scale count mismatch, truncated or padded payload, decoded size
 * larger than declared or than the caller's limit, bad indices, non-finite
 * scales, wrong magic / version / spec, and random corruption of metadata
 * and payload of every codec. Each gets a clear error (code and message),
 * never a crash or an out-of-bounds access (this test runs under ASan). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>
#include "kernels/codec/codec.h"
#include "kernels/rng.h"

static nb_backend_t *be;
static nb_tensor_t *x;   /* 48 x 40 */
static nb_tensor_t *dst; /* same size */

static int setup(void **state)
{
    (void)state;
    be = nb_cpu_backend_new();
    int64_t shape[2] = { 48, 40 };
    x = nb_tensor_new(be, NB_F32, 2, shape);
    dst = nb_tensor_new(be, NB_F32, 2, shape);
    nb_rng_t g;
    nb_rng_init(&g, 1, 2, 3);
    for (int i = 0; i < 48 * 40; i++)
        ((float *)x->data)[i] = (float)nb_rng_normal(&g);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    nb_tensor_free(x);
    nb_tensor_free(dst);
    nb_be_free(be);
    return 0;
}

static void encode(const char *spec, nb_codec_msg_t *m)
{
    nb_codec_spec_t s;
    char err[256];
    nb_codec_msg_init(m);
    assert_int_equal(nb_codec_spec_parse(spec, &s, err, sizeof err), 0);
    if (nb_codec_encode(be, &s, x, 9, NULL, 0, m, err, sizeof err))
        fail_msg("%s: %s", spec, err);
}

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }

/* Decoding must fail with rc and a message containing what; both the
 * allocating and the into-variant are tried. */
static void expect(const char *spec, const uint8_t *meta, size_t meta_len, const uint8_t *payload,
                   size_t payload_len, uint64_t limit, int rc, const char *what)
{
    char err[256] = "";
    int got = nb_codec_decode_into(be, spec, meta, meta_len, payload, payload_len, limit, NULL, dst, err,
                                   sizeof err);
    if (got != rc || !strstr(err, what))
        fail_msg("decode_into: rc %d (%s), want %d containing '%s'", got, err, rc, what);
    nb_tensor_t *t = (nb_tensor_t *)0x1;
    err[0] = '\0';
    got = nb_codec_decode(be, spec, meta, meta_len, payload, payload_len, limit, NULL, &t, err, sizeof err);
    if (got != rc || !strstr(err, what) || t != NULL)
        fail_msg("decode: rc %d (%s), want %d containing '%s'", got, err, rc, what);
}

static void test_rank_larger_than_matrix(void **state)
{
    (void)state;
    nb_codec_msg_t m;
    encode("svd(rank=4)", &m);
    uint8_t meta[NB_CODEC_META_MAX];
    memcpy(meta, m.meta, m.meta_len);
    put32(meta + 20, 41); /* min(48, 40) = 40 */
    expect(m.spec, meta, m.meta_len, m.payload, m.payload_len, 0, NB_ERANGE, "rank 41 for a 48x40 matrix");
    put32(meta + 20, 0);
    expect(m.spec, meta, m.meta_len, m.payload, m.payload_len, 0, NB_ERANGE, "rank 0");
    /* a larger, consistent rank still needs the payload to match */
    put32(meta + 20, 5);
    expect(m.spec, meta, m.meta_len, m.payload, m.payload_len, 0, NB_EFORMAT, "its sizes give");
    nb_codec_msg_free(&m);
}

static void test_scale_count_mismatch(void **state)
{
    (void)state;
    nb_codec_msg_t m;
    encode("int8(block=64)", &m);
    uint8_t meta[NB_CODEC_META_MAX];
    memcpy(meta, m.meta, m.meta_len);
    /* metadata says block 32 (twice the scales) but the spec says 64 */
    put32(meta + 16, 32);
    expect(m.spec, meta, m.meta_len, m.payload, m.payload_len, 0, NB_EFORMAT, "block 32");
    /* spec and metadata agree on 32: the payload has half the scales */
    expect("int8(block=32)", meta, m.meta_len, m.payload, m.payload_len, 0, NB_EFORMAT,
           "declares a 2040-byte payload, its sizes give 2160");
    /* and with the payload length field fixed too, the payload is short */
    put64(meta + 48, 2160);
    expect("int8(block=32)", meta, m.meta_len, m.payload, m.payload_len, 0, NB_EFORMAT,
           "payload is 2040 bytes, codec metadata says 2160");
    nb_codec_msg_free(&m);
}

static void test_truncated_payload(void **state)
{
    (void)state;
    const char *specs[] = { "fp32", "fp16", "bf16", "int8", "int4", "topk(0.1)", "int8(topk(0.3))",
                            "svd(0.5)", "fp16(svd(rank=3))" };
    for (size_t i = 0; i < NB_ARRAY_LEN(specs); i++) {
        nb_codec_msg_t m;
        encode(specs[i], &m);
        expect(m.spec, m.meta, m.meta_len, m.payload, m.payload_len - 1, 0, NB_EFORMAT, "payload is");
        expect(m.spec, m.meta, m.meta_len, m.payload, 0, 0, NB_EFORMAT, "payload is 0 bytes");
        expect(m.spec, m.meta, m.meta_len, NULL, 0, 0, NB_EFORMAT, "payload is 0 bytes");
        /* the truncated metadata too */
        expect(m.spec, m.meta, m.meta_len - 1, m.payload, m.payload_len, 0, NB_EFORMAT, "bytes, version 1 has 56");
        expect(m.spec, m.meta, 3, m.payload, m.payload_len, 0, NB_EFORMAT, "bad magic");
        expect(m.spec, NULL, 0, m.payload, m.payload_len, 0, NB_EFORMAT, "bad magic");
        /* and the intact message decodes */
        char err[256];
        assert_int_equal(nb_codec_decode_into(be, m.spec, m.meta, m.meta_len, m.payload, m.payload_len, 0, NULL,
                                              dst, err, sizeof err), 0);
        nb_codec_msg_free(&m);
    }
}

static void test_decoded_size(void **state)
{
    (void)state;
    nb_codec_msg_t m;
    encode("fp16", &m);
    uint8_t meta[NB_CODEC_META_MAX];
    memcpy(meta, m.meta, m.meta_len);
    /* declared decoded size disagrees with rows x cols */
    put64(meta + 40, 48 * 40 * 4 + 4);
    expect(m.spec, meta, m.meta_len, m.payload, m.payload_len, 0, NB_EFORMAT,
           "declares 7684 decoded bytes, but 48x40 floats are 7680");
    /* rows grown to match a larger size: a bomb the limit stops before any
     * allocation; with a consistent payload length it still fails on length */
    memcpy(meta, m.meta, m.meta_len);
    put32(meta + 8, 1u << 20);
    put64(meta + 40, (uint64_t)(1u << 20) * 40 * 4);
    put64(meta + 48, 4 * ((1u << 20) * 40 / 4096) + (uint64_t)(1u << 20) * 40 * 2);
    expect(m.spec, meta, m.meta_len, m.payload, m.payload_len, 1 << 20, NB_ELIMIT, "exceeds the limit of 1048576");
    expect(m.spec, meta, m.meta_len, m.payload, m.payload_len, 0, NB_EFORMAT, "payload is 3844 bytes");
    /* rows x cols beyond 2^32 elements */
    put32(meta + 8, 1u << 31);
    put32(meta + 12, 1u << 31);
    expect(m.spec, meta, m.meta_len, m.payload, m.payload_len, 0, NB_ERANGE, "bad matrix size");
    put32(meta + 8, 0);
    expect(m.spec, meta, m.meta_len, m.payload, m.payload_len, 0, NB_ERANGE, "bad matrix size");
    /* the caller's limit below the honest size */
    expect(m.spec, m.meta, m.meta_len, m.payload, m.payload_len, 7679, NB_ELIMIT, "decoded size 7680 bytes");
    /* a destination of the wrong size */
    int64_t small_shape[2] = { 47, 40 };
    nb_tensor_t *small = nb_tensor_new(be, NB_F32, 2, small_shape);
    char err[256];
    assert_int_equal(nb_codec_decode_into(be, m.spec, m.meta, m.meta_len, m.payload, m.payload_len, 0, NULL,
                                          small, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "48x40"));
    nb_tensor_free(small);
    nb_codec_msg_free(&m);
}

static void test_header_fields(void **state)
{
    (void)state;
    nb_codec_msg_t m;
    encode("int8", &m);
    uint8_t meta[NB_CODEC_META_MAX];
    memcpy(meta, m.meta, m.meta_len);
    meta[4] = 2;
    expect(m.spec, meta, m.meta_len, m.payload, m.payload_len, 0, NB_EVERSION, "version 2");
    memcpy(meta, m.meta, m.meta_len);
    meta[0] = 'X';
    expect(m.spec, meta, m.meta_len, m.payload, m.payload_len, 0, NB_EFORMAT, "bad magic");
    memcpy(meta, m.meta, m.meta_len);
    meta[7] |= 0x80;
    expect(m.spec, meta, m.meta_len, m.payload, m.payload_len, 0, NB_EFORMAT, "unknown flags");
    /* spec and metadata disagree */
    expect("int4", m.meta, m.meta_len, m.payload, m.payload_len, 0, NB_EFORMAT, "does not match spec 'int4'");
    expect("int8(sr)", m.meta, m.meta_len, m.payload, m.payload_len, 0, NB_EFORMAT, "flags");
    expect("int8(delta)", m.meta, m.meta_len, m.payload, m.payload_len, 0, NB_EFORMAT, "flags");
    expect("int9", m.meta, m.meta_len, m.payload, m.payload_len, 0, NB_EINVAL, "unknown codec 'int9'");
    expect(NULL, m.meta, m.meta_len, m.payload, m.payload_len, 0, NB_EINVAL, "expected a codec name");
    /* delta fields without delta mode */
    memcpy(meta, m.meta, m.meta_len);
    put32(meta + 28, 3);
    expect(m.spec, meta, m.meta_len, m.payload, m.payload_len, 0, NB_EFORMAT, "delta fields");
    /* a NaN or negative scale in the payload */
    uint8_t *pay = malloc(m.payload_len);
    memcpy(pay, m.payload, m.payload_len);
    float bad = NAN;
    memcpy(pay + 4 * 3, &bad, 4);
    expect(m.spec, m.meta, m.meta_len, pay, m.payload_len, 0, NB_EFORMAT, "scale 3 is nan");
    bad = -1.0f;
    memcpy(pay + 4 * 3, &bad, 4);
    expect(m.spec, m.meta, m.meta_len, pay, m.payload_len, 0, NB_EFORMAT, "scale 3 is -1");
    free(pay);
    nb_codec_msg_free(&m);
    /* fp16 carries its scale first: infinity is refused */
    encode("fp16", &m);
    pay = malloc(m.payload_len);
    memcpy(pay, m.payload, m.payload_len);
    bad = INFINITY;
    memcpy(pay, &bad, 4);
    expect(m.spec, m.meta, m.meta_len, pay, m.payload_len, 0, NB_EFORMAT, "scale 0 is inf");
    free(pay);
    nb_codec_msg_free(&m);
}

static void test_topk_indices(void **state)
{
    (void)state;
    char err[256];
    /* varint coding (k small): corrupt gaps */
    nb_codec_msg_t m;
    encode("topk(0.01)", &m); /* k = 20 of 1920: varint */
    nb_codec_info_t in;
    assert_int_equal(nb_codec_peek(m.spec, m.meta, m.meta_len, &in, err, sizeof err), 0);
    assert_false(in.bitmap);
    assert_int_equal(in.k_or_rank, 20);
    size_t ioff = m.payload_len - in.index_bytes;
    uint8_t *pay = malloc(m.payload_len + 8);
    memcpy(pay, m.payload, m.payload_len);
    pay[ioff + 1] = 0; /* second gap 0: a repeated index */
    expect(m.spec, m.meta, m.meta_len, pay, m.payload_len, 0, NB_EFORMAT, "repeats the previous one");
    memcpy(pay, m.payload, m.payload_len);
    pay[ioff] = 0xff;      /* first gap: continuation ... */
    pay[ioff + 1] = 0x7f;  /* ... to 16383 > 1920 */
    expect(m.spec, m.meta, m.meta_len, pay, m.payload_len, 0, NB_EFORMAT, "beyond 1920 elements");
    memcpy(pay, m.payload, m.payload_len);
    memset(pay + ioff, 0x80, in.index_bytes); /* never-ending varint */
    expect(m.spec, m.meta, m.meta_len, pay, m.payload_len, 0, NB_EFORMAT, "longer than 5 bytes");
    memcpy(pay, m.payload, m.payload_len);
    pay[m.payload_len - 1] |= 0x80; /* the last index runs past the section */
    expect(m.spec, m.meta, m.meta_len, pay, m.payload_len, 0, NB_EFORMAT, "ends inside index 19");
    /* k larger than the elements */
    uint8_t meta[NB_CODEC_META_MAX];
    memcpy(meta, m.meta, m.meta_len);
    put32(meta + 20, 1921);
    expect(m.spec, meta, m.meta_len, m.payload, m.payload_len, 0, NB_ERANGE, "k=1921 for 1920 elements");
    free(pay);
    nb_codec_msg_free(&m);

    /* bitmap coding (k large) */
    encode("topk(0.5)", &m);
    assert_int_equal(nb_codec_peek(m.spec, m.meta, m.meta_len, &in, err, sizeof err), 0);
    assert_true(in.bitmap);
    assert_int_equal(in.index_bytes, 240);
    ioff = m.payload_len - in.index_bytes;
    pay = malloc(m.payload_len);
    memcpy(pay, m.payload, m.payload_len);
    for (size_t i = 0; i < in.index_bytes; i++) /* one bit too many */
        if (pay[ioff + i] != 0xff) {
            for (int b = 0; b < 8; b++)
                if (!(pay[ioff + i] & (1 << b))) {
                    pay[ioff + i] |= (uint8_t)(1 << b);
                    break;
                }
            break;
        }
    expect(m.spec, m.meta, m.meta_len, pay, m.payload_len, 0, NB_EFORMAT, "more than k=960");
    memcpy(pay, m.payload, m.payload_len);
    for (size_t i = 0; i < in.index_bytes; i++) /* one bit too few */
        if (pay[ioff + i]) {
            pay[ioff + i] &= (uint8_t)(pay[ioff + i] - 1);
            break;
        }
    expect(m.spec, m.meta, m.meta_len, pay, m.payload_len, 0, NB_EFORMAT, "holds 959 indices");
    free(pay);
    nb_codec_msg_free(&m);

    /* a bitmap bit beyond n: 45 x 3 = 135 elements, 17 bitmap bytes */
    int64_t shape[2] = { 45, 3 };
    nb_tensor_t *odd = nb_tensor_new(be, NB_F32, 2, shape), *out = nb_tensor_new(be, NB_F32, 2, shape);
    for (int i = 0; i < 135; i++)
        ((float *)odd->data)[i] = (float)(i % 7) - 3.0f;
    nb_codec_spec_t s;
    assert_int_equal(nb_codec_spec_parse("topk(0.9)", &s, NULL, 0), 0);
    nb_codec_msg_init(&m);
    assert_int_equal(nb_codec_encode(be, &s, odd, 0, NULL, 0, &m, err, sizeof err), 0);
    assert_int_equal(nb_codec_peek(m.spec, m.meta, m.meta_len, &in, err, sizeof err), 0);
    assert_true(in.bitmap);
    assert_int_equal(in.index_bytes, 17);
    pay = malloc(m.payload_len);
    memcpy(pay, m.payload, m.payload_len);
    pay[m.payload_len - 1] |= 0x80; /* bit 135 */
    assert_int_equal(nb_codec_decode_into(be, m.spec, m.meta, m.meta_len, pay, m.payload_len, 0, NULL, out, err,
                                          sizeof err), NB_EFORMAT);
    assert_non_null(strstr(err, "marks index 135 of 135"));
    free(pay);
    nb_codec_msg_free(&m);
    nb_tensor_free(odd);
    nb_tensor_free(out);
}

/* Random corruption of every codec's metadata and payload: any result is
 * acceptable except a crash, a sanitizer report or a success that lies
 * about the size. */
static void test_random_corruption(void **state)
{
    (void)state;
    const char *specs[] = { "fp32", "fp16", "bf16", "int8(block=7)", "int4(block=row)", "topk(0.02)",
                            "topk(0.6)", "int4(topk(0.2))", "svd(rank=3)", "int8(svd(0.3))", "fp16(svd(0.2))" };
    nb_rng_t g;
    nb_rng_init(&g, 99, 0, 0);
    int rejected = 0, total = 0;
    for (size_t i = 0; i < NB_ARRAY_LEN(specs); i++) {
        nb_codec_msg_t m;
        encode(specs[i], &m);
        uint8_t meta[NB_CODEC_META_MAX];
        uint8_t *pay = malloc(m.payload_len);
        for (int t = 0; t < 300; t++) {
            memcpy(meta, m.meta, m.meta_len);
            memcpy(pay, m.payload, m.payload_len);
            int flips = 1 + (int)nb_rng_below(&g, 4);
            for (int f = 0; f < flips; f++) {
                if (nb_rng_below(&g, 2))
                    meta[nb_rng_below(&g, m.meta_len)] ^= (uint8_t)(1u << nb_rng_below(&g, 8));
                else
                    pay[nb_rng_below(&g, m.payload_len)] ^= (uint8_t)(1u << nb_rng_below(&g, 8));
            }
            size_t plen = m.payload_len - (nb_rng_below(&g, 4) == 0 ? nb_rng_below(&g, m.payload_len) : 0);
            char err[256] = "";
            nb_tensor_t *out = NULL;
            int rc = nb_codec_decode(be, m.spec, meta, m.meta_len, pay, plen, 1 << 20, NULL, &out, err, sizeof err);
            total++;
            if (rc) {
                assert_true(rc < 0);
                assert_true(strlen(err) > 0);
                assert_null(out);
                rejected++;
            } else {
                nb_codec_info_t in;
                assert_int_equal(nb_codec_peek(m.spec, meta, m.meta_len, &in, NULL, 0), 0);
                assert_int_equal(nb_tensor_nbytes(out), in.decoded_bytes);
                assert_true(in.decoded_bytes <= (1 << 20));
                nb_tensor_free(out);
            }
        }
        free(pay);
        nb_codec_msg_free(&m);
    }
    printf("  corruption: %d of %d corrupted messages rejected\n", rejected, total);
    assert_true(rejected > total / 4);
}

static void test_bad_encode_input(void **state)
{
    (void)state;
    nb_codec_spec_t s;
    nb_codec_msg_t m;
    char err[256];
    nb_codec_msg_init(&m);
    assert_int_equal(nb_codec_spec_parse("int8", &s, NULL, 0), 0);
    nb_tensor_t *t = nb_tensor_new(be, NB_F32, 2, x->shape);
    nb_be_copy(be, t->data, x->data, nb_tensor_nbytes(x));
    ((float *)t->data)[100] = INFINITY;
    assert_int_equal(nb_codec_encode(be, &s, t, 0, NULL, 0, &m, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "non-finite values (block 1)"));
    assert_int_equal(nb_codec_spec_parse("svd(0.5)", &s, NULL, 0), 0);
    ((float *)t->data)[100] = NAN;
    assert_int_equal(nb_codec_encode(be, &s, t, 0, NULL, 0, &m, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "non-finite"));
    /* wrong dtype */
    nb_tensor_t v = nb_tensor_view(be, NB_I32, t->data, 2, t->shape);
    assert_int_equal(nb_codec_encode(be, &s, &v, 0, NULL, 0, &m, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "f32 tensor"));
    nb_tensor_free(t);
    nb_codec_msg_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rank_larger_than_matrix),
        cmocka_unit_test(test_scale_count_mismatch),
        cmocka_unit_test(test_truncated_payload),
        cmocka_unit_test(test_decoded_size),
        cmocka_unit_test(test_header_fields),
        cmocka_unit_test(test_topk_indices),
        cmocka_unit_test(test_random_corruption),
        cmocka_unit_test(test_bad_encode_input),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
