/* test_codec_stream_state.c - a codec stream's state can be copied, exported
 * and imported exactly: after nb_codec_stream_copy, or after rebuilding a
 * stream from what nb_codec_stream_residual_state / _base_state give out,
 * the next encodes produce the same bytes as the original stream's (error
 * feedback and delta bases both), which is what recovery and checkpoints
 * of the pipeline rely on. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/backend.h"
#include "kernels/codec/codec.h"

static nb_backend_t *be;

static nb_tensor_t *tensor(int step)
{
    int64_t shape[2] = { 16, 24 };
    nb_tensor_t *t = nb_tensor_new(be, NB_F32, 2, shape);
    float *d = t->data;
    uint32_t x = 0x9e3779b9u * (uint32_t)(step + 1);
    for (int i = 0; i < 16 * 24; i++) {
        x = x * 1664525u + 1013904223u;
        d[i] = (float)((int)(x >> 9) % 2001 - 1000) / 250.0f;
    }
    return t;
}

/* Encodes step's tensor with spec under key into m (bytes compared). */
static void encode(const char *spec, nb_codec_stream_t *st, int step, uint64_t key, nb_codec_msg_t *m)
{
    nb_codec_spec_t s;
    char err[256];
    assert_int_equal(nb_codec_spec_parse(spec, &s, err, sizeof err), 0);
    nb_tensor_t *x = tensor(step);
    assert_int_equal(nb_codec_encode(be, &s, x, 77 + (uint64_t)step, st, key, m, err, sizeof err), 0);
    nb_tensor_free(x);
}

static void same_next_encodes(const char *spec, nb_codec_stream_t *a, nb_codec_stream_t *b, int from)
{
    nb_codec_msg_t ma, mb;
    nb_codec_msg_init(&ma);
    nb_codec_msg_init(&mb);
    for (int step = from; step < from + 3; step++) {
        encode(spec, a, step, (uint64_t)step % 2 + 5, &ma);
        encode(spec, b, step, (uint64_t)step % 2 + 5, &mb);
        assert_int_equal(ma.payload_len, mb.payload_len);
        assert_memory_equal(ma.payload, mb.payload, ma.payload_len);
        assert_memory_equal(ma.meta, mb.meta, ma.meta_len);
    }
    nb_codec_msg_free(&ma);
    nb_codec_msg_free(&mb);
}

/* A stream with state: four encodes (keys 5 and 6 alternate). */
static nb_codec_stream_t *warmed(const char *spec)
{
    nb_codec_stream_t *st = nb_codec_stream_new(be, 1 << 20);
    nb_codec_msg_t m;
    nb_codec_msg_init(&m);
    for (int step = 0; step < 4; step++)
        encode(spec, st, step, (uint64_t)step % 2 + 5, &m);
    nb_codec_msg_free(&m);
    assert_false(nb_codec_stream_empty(st));
    return st;
}

static void test_copy(void **state)
{
    (void)state;
    static const char *const specs[] = { "int8(ef)", "fp16(topk(0.25),ef)", "int8(delta)" };
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
        nb_codec_stream_t *a = warmed(specs[i]);
        nb_codec_stream_t *b = nb_codec_stream_new(be, 1 << 20);
        assert_true(nb_codec_stream_empty(b));
        assert_int_equal(nb_codec_stream_copy(b, a), 0);
        assert_int_equal(nb_codec_stream_bytes(b), nb_codec_stream_bytes(a));
        same_next_encodes(specs[i], a, b, 4);
        /* an empty stream encodes differently: the comparison can fail */
        nb_codec_stream_t *c = nb_codec_stream_new(be, 1 << 20);
        nb_codec_stream_t *d = warmed(specs[i]);
        nb_codec_msg_t mc, md;
        nb_codec_msg_init(&mc);
        nb_codec_msg_init(&md);
        encode(specs[i], c, 4, 5, &mc);
        encode(specs[i], d, 4, 5, &md);
        assert_true(mc.payload_len != md.payload_len || memcmp(mc.payload, md.payload, mc.payload_len) != 0 ||
                    memcmp(mc.meta, md.meta, mc.meta_len) != 0);
        nb_codec_msg_free(&mc);
        nb_codec_msg_free(&md);
        nb_codec_stream_free(a);
        nb_codec_stream_free(b);
        nb_codec_stream_free(c);
        nb_codec_stream_free(d);
    }
}

static void test_export_import(void **state)
{
    (void)state;
    static const char *const specs[] = { "int8(ef)", "int8(delta)" };
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
        nb_codec_stream_t *a = warmed(specs[i]);
        nb_codec_stream_t *b = nb_codec_stream_new(be, 1 << 20);
        size_t rn;
        const float *r = nb_codec_stream_residual_state(a, &rn);
        if (r)
            assert_int_equal(nb_codec_stream_set_residual(b, r, rn), 0);
        size_t nb = nb_codec_stream_num_bases(a);
        for (size_t k = 0; k < nb; k++) {
            uint64_t key;
            uint32_t visit;
            size_t n;
            const float *base = nb_codec_stream_base_state(a, k, &key, &visit, &n);
            assert_non_null(base);
            assert_int_equal(nb_codec_stream_add_base(b, key, visit, base, n), 0);
        }
        assert_null(nb_codec_stream_base_state(a, nb, &(uint64_t){ 0 }, &(uint32_t){ 0 }, &rn));
        same_next_encodes(specs[i], a, b, 4);
        nb_codec_stream_free(a);
        nb_codec_stream_free(b);
    }
}

int main(void)
{
    be = nb_cpu_backend_new();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_copy),
        cmocka_unit_test(test_export_import),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    nb_be_free(be);
    return rc;
}
