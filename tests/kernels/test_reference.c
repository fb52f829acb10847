/* test_reference.c - the transformer against PyTorch: logits, loss, every
 * parameter gradient and 10 AdamW steps (clipping, LR schedule) of the
 * models in tests/data/ref_*.bin (written by scripts/gen_reference.py);
 * the same model cut into 2 and 3 parts gives bit-identical loss and
 * gradients; the reference reader rejects broken files. NB_REF_SKIP, a
 * cmocka name pattern, skips cases (tests/kernels/cpu-emulated.test.sh
 * leaves the split cases out under an emulator: they repeat the same
 * kernels). The runner is
 * tests/support/ref_case.c (tolerances there); the frozen-tensor files are
 * test_reference_frozen.c's.
 *
 * Tolerances: logits and gradients: max |c - ref| <= 1e-4 * max |ref| per
 * tensor; losses: |c - ref| <= 1e-5 * |ref|. The max abs error of every
 * tensor is printed. Run from the repository root (make test does). */
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "kernels/common.h"
#include "tests/support/ref_case.h"
#include "tests/support/ref_file.h"

static void test_gpt(void **state) { nb_ref_run_case("tests/data/ref_gpt.bin"); }
static void test_bert(void **state) { nb_ref_run_case("tests/data/ref_bert.bin"); }
static void test_seqcls(void **state) { nb_ref_run_case("tests/data/ref_seqcls.bin"); }
static void test_tokcls(void **state) { nb_ref_run_case("tests/data/ref_tokcls.bin"); }
/* erf GELU with BERT's eps 1e-12; erf GELU with eps 0.05 (pre-LN, lm) */
static void test_bert_erf(void **state) { nb_ref_run_case("tests/data/ref_bert_erf.bin"); }
static void test_gpt_erf(void **state) { nb_ref_run_case("tests/data/ref_gpt_erf.bin"); }

/* token shift: causal pre-LN lm; post-LN mlm with padding; pre-LN tokcls, C/4 rounded */
static void test_gpt_tokshift(void **state) { nb_ref_run_case("tests/data/ref_gpt_tokshift.bin"); }
static void test_bert_tokshift(void **state) { nb_ref_run_case("tests/data/ref_bert_tokshift.bin"); }
static void test_tokcls_tokshift(void **state) { nb_ref_run_case("tests/data/ref_tokcls_tokshift.bin"); }

static void test_split_gpt(void **state) { nb_ref_split_case("tests/data/ref_gpt.bin"); }
static void test_split_bert(void **state) { nb_ref_split_case("tests/data/ref_bert.bin"); }
static void test_split_seqcls(void **state) { nb_ref_split_case("tests/data/ref_seqcls.bin"); }
static void test_split_tokcls(void **state) { nb_ref_split_case("tests/data/ref_tokcls.bin"); }
static void test_split_bert_erf(void **state) { nb_ref_split_case("tests/data/ref_bert_erf.bin"); }
static void test_split_bert_tokshift(void **state) { nb_ref_split_case("tests/data/ref_bert_tokshift.bin"); }

/* Writes len bytes of buf to a temporary file and returns its path. */
static const char *write_tmp(const void *buf, size_t len)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/nb_ref_test_%d.bin", (int)getpid());
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    fclose(f);
    return path;
}

static void expect_reject(const void *buf, size_t len, int code, const char *needle)
{
    nb_ref_file_t f;
    char err[256] = "";
    const char *path = write_tmp(buf, len);
    assert_int_equal(nb_ref_load(path, &f, err, sizeof err), code);
    printf("  rejected: %s\n", err);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, needle));
    unlink(path);
}

static void test_reader_rejects(void **state)
{
    nb_ref_file_t f;
    char err[256];
    assert_int_equal(nb_ref_load("tests/data/no_such_file.bin", &f, err, sizeof err), NB_EIO);
    assert_non_null(strstr(err, "no_such_file.bin"));
    assert_int_equal(nb_ref_load("tests/data/ref_gpt.bin", &f, err, sizeof err), 0);
    FILE *fp = fopen("tests/data/ref_gpt.bin", "rb");
    assert_non_null(fp);
    static unsigned char buf[1 << 20];
    size_t len = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    nb_ref_free(&f);
    expect_reject(buf, len - 3, NB_EFORMAT, "truncated data");
    expect_reject(buf, 6, NB_EFORMAT, "offset 4");
    unsigned char bad[16];
    memcpy(bad, buf, 16);
    bad[0] = 'X';
    expect_reject(bad, 16, NB_EFORMAT, "offset 0");
    memcpy(bad, buf, 16);
    bad[4] = 9;
    expect_reject(bad, 16, NB_EVERSION, "version 9");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpt),
        cmocka_unit_test(test_bert),
        cmocka_unit_test(test_seqcls),
        cmocka_unit_test(test_tokcls),
        cmocka_unit_test(test_bert_erf),
        cmocka_unit_test(test_gpt_erf),
        cmocka_unit_test(test_gpt_tokshift),
        cmocka_unit_test(test_bert_tokshift),
        cmocka_unit_test(test_tokcls_tokshift),
        cmocka_unit_test(test_split_gpt),
        cmocka_unit_test(test_split_bert),
        cmocka_unit_test(test_split_seqcls),
        cmocka_unit_test(test_split_tokcls),
        cmocka_unit_test(test_split_bert_erf),
        cmocka_unit_test(test_split_bert_tokshift),
        cmocka_unit_test(test_reader_rejects),
    };
    const char *skip = getenv("NB_REF_SKIP");
    if (skip && *skip)
        cmocka_set_skip_filter(skip);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
