/* test_codec_spec.c - the codec spec language: every documented form parses
 * to the right fields and prints back canonically; malformed specs are
 * rejected with the spec and the position of the fault in the message. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>
#include "kernels/codec/codec.h"

static void roundtrip(const char *in, const char *canon)
{
    nb_codec_spec_t s, s2;
    char err[256] = "", buf[NB_CODEC_SPEC_MAX];
    int rc = nb_codec_spec_parse(in, &s, err, sizeof err);
    if (rc)
        fail_msg("'%s' rejected: %s", in, err);
    assert_true(nb_codec_spec_format(&s, buf, sizeof buf) > 0);
    if (strcmp(buf, canon))
        fail_msg("'%s' printed as '%s', want '%s'", in, buf, canon);
    assert_int_equal(nb_codec_spec_parse(buf, &s2, err, sizeof err), 0);
    assert_memory_equal(&s, &s2, sizeof s);
}

static void test_accepts(void **state)
{
    (void)state;
    roundtrip("fp32", "fp32");
    roundtrip("fp16", "fp16");
    roundtrip(" bf16 ", "bf16");
    roundtrip("int8", "int8");
    roundtrip("int4()", "int4");
    roundtrip("int8(block=64)", "int8");
    roundtrip("int8(block=32, sr)", "int8(block=32,sr)");
    roundtrip("int4(block=row)", "int4(block=row)");
    roundtrip("topk(0.01)", "topk(0.01)");
    roundtrip("topk(0.01,ef)", "fp32(topk(0.01),ef)");
    roundtrip("svd(0.6)", "svd(0.6)");
    roundtrip("svd(rank=16)", "svd(rank=16)");
    roundtrip("svd(0.2,energy=0.95,iters=1,oversample=4)", "svd(0.2,energy=0.95,iters=1,oversample=4)");
    roundtrip("fp16(svd(0.6))", "fp16(svd(0.6))");
    roundtrip("int8(topk(0.05),ef)", "int8(topk(0.05),ef)");
    roundtrip("int8(topk(5e-2), block=16, sr, ef)", "int8(topk(0.05),block=16,sr,ef)");
    roundtrip("fp16(delta)", "fp16(delta)");
    roundtrip("int8(delta)", "int8(delta)");

    nb_codec_spec_t s;
    assert_int_equal(nb_codec_spec_parse("fp16(svd(0.6))", &s, NULL, 0), 0);
    assert_int_equal(s.value, NB_CODEC_V_F16);
    assert_int_equal(s.kind, NB_CODEC_S_SVD);
    assert_true(s.svd_p == 0.6);
    assert_int_equal(nb_codec_spec_parse("int8(topk(0.01),block=32,sr)", &s, NULL, 0), 0);
    assert_int_equal(s.value, NB_CODEC_V_I8);
    assert_int_equal(s.kind, NB_CODEC_S_TOPK);
    assert_int_equal(s.block, 32);
    assert_true(s.sr);
    assert_true(s.topk_frac == 0.01);
    assert_true(nb_codec_spec_lossless(&(nb_codec_spec_t){ .value = NB_CODEC_V_F32 }));
    assert_int_equal(nb_codec_spec_parse("fp32", &s, NULL, 0), 0);
    assert_true(nb_codec_spec_lossless(&s));
    assert_int_equal(nb_codec_spec_parse("fp16", &s, NULL, 0), 0);
    assert_false(nb_codec_spec_lossless(&s));
}

/* spec must be rejected with NB_EINVAL, the message naming the spec, the
 * position and containing what. */
static void reject(const char *spec, size_t pos, const char *what)
{
    nb_codec_spec_t s;
    char err[256] = "", want[64];
    int rc = nb_codec_spec_parse(spec, &s, err, sizeof err);
    if (rc != NB_EINVAL)
        fail_msg("'%s' accepted (rc %d)", spec, rc);
    snprintf(want, sizeof want, "at position %zu", pos);
    if (!strstr(err, want) || !strstr(err, what) || !strstr(err, "codec spec '"))
        fail_msg("'%s': message '%s' lacks '%s' / '%s'", spec, err, want, what);
}

static void test_rejects(void **state)
{
    (void)state;
    reject("", 0, "expected a codec name");
    reject("fp64", 0, "unknown codec 'fp64'");
    reject("int8(blok=64)", 5, "unknown parameter 'blok' for int8");
    reject("int8(block=0)", 11, "block must be an integer");
    reject("int8(block=2.5)", 11, "block must be an integer");
    reject("int8(block=rows)", 11, "block must be a number or 'row'");
    reject("topk", 0, "topk needs a fraction");
    reject("topk(0)", 5, "(0, 1]");
    reject("topk(1.5)", 5, "(0, 1]");
    reject("topk(0.1,0.2)", 9, "unexpected number");
    reject("svd()", 0, "svd needs a parameter");
    reject("svd(0.5,rank=4)", 0, "either P or rank");
    reject("svd(topk(0.1))", 4, "svd cannot wrap");
    reject("fp16(int8)", 5, "cannot wrap value codec int8");
    reject("int8(fp16(svd(0.5)))", 5, "cannot wrap value codec fp16");
    reject("int8(topk(0.1),svd(0.5))", 15, "at most one codec");
    reject("fp16(sr)", 5, "unknown parameter 'sr' for fp16");
    reject("fp16(block=8)", 5, "unknown parameter 'block' for fp16");
    reject("int8(sr", 7, "missing ')'");
    reject("int8(sr;", 7, "expected ',' or ')'");
    reject("int8)", 4, "unexpected ')'");
    reject("int8(svd(0.5,iters=9))", 19, "iters must be");
    reject("svd(0.5,energy=2)", 15, "energy must be");
    reject("topk(1e)", 7, "malformed exponent");
    reject("topk(-0.1)", 5, "expected a parameter or codec");
    reject("int8(ef,delta)", 0, "ef and delta");
    reject("FP16", 0, "expected a codec name");
    char longspec[200];
    memset(longspec, ' ', sizeof longspec);
    memcpy(longspec, "fp16", 4);
    longspec[199] = '\0';
    reject(longspec, NB_CODEC_SPEC_MAX - 1, "longer than");
    /* NULL error buffer is allowed */
    nb_codec_spec_t s;
    assert_int_equal(nb_codec_spec_parse("nope", &s, NULL, 0), NB_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accepts),
        cmocka_unit_test(test_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
