/* test_tokens.c - token files: write/read round trip at both widths, every
 * kind of broken file rejected with the file and offset named, and the
 * (seed, step, micro-batch) sampler. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "daemon/data/tokens.h"
#include "kernels/common.h"

static char path[128];

static int setup(void **state)
{
    snprintf(path, sizeof path, "/tmp/nb_tokens_test_%d.tok", (int)getpid());
    return 0;
}

static int teardown(void **state)
{
    unlink(path);
    return 0;
}

static void test_round_trip(void **state)
{
    char err[512];
    uint32_t ids[1000];
    for (int i = 0; i < 1000; i++)
        ids[i] = (uint32_t)(i * 7 % 256);
    assert_int_equal(nb_tokens_write(path, ids, 1000, 256, err, sizeof err), 0);
    nb_tokens_t *t;
    assert_int_equal(nb_tokens_open(path, &t, err, sizeof err), 0);
    assert_int_equal(nb_tokens_count(t), 1000);
    assert_int_equal(nb_tokens_vocab(t), 256);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(nb_tokens_get(t, (uint64_t)i), ids[i]);
    nb_tokens_close(t);
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    assert_int_equal(ftell(f), NB_TOKENS_HEADER_BYTES + 2 * 1000); /* width 2 */
    fclose(f);
    /* a vocabulary above 65536 needs 4 bytes per token */
    ids[5] = 69999;
    assert_int_equal(nb_tokens_write(path, ids, 10, 70000, err, sizeof err), 0);
    assert_int_equal(nb_tokens_open(path, &t, err, sizeof err), 0);
    assert_int_equal(nb_tokens_get(t, 5), 69999);
    nb_tokens_close(t);
    /* writing an ID outside the vocabulary is refused */
    assert_int_equal(nb_tokens_write(path, ids, 10, 256, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "outside the vocabulary"));
}

static void write_raw(const void *buf, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, n, f), n);
    fclose(f);
}

static void expect_reject(int code, const char *needle)
{
    nb_tokens_t *t = NULL;
    char err[512] = "";
    assert_int_equal(nb_tokens_open(path, &t, err, sizeof err), code);
    assert_null(t);
    printf("  rejected: %s\n", err);
    assert_non_null(strstr(err, path));
    if (!strstr(err, needle))
        fail_msg("'%s' does not mention '%s'", err, needle);
}

static void test_rejects(void **state)
{
    char err[512];
    nb_tokens_t *t;
    assert_int_equal(nb_tokens_open("/nonexistent/x.tok", &t, err, sizeof err), NB_EIO);
    assert_non_null(strstr(err, "/nonexistent/x.tok"));
    uint32_t ids[16] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 };
    assert_int_equal(nb_tokens_write(path, ids, 16, 256, err, sizeof err), 0);
    unsigned char good[NB_TOKENS_HEADER_BYTES + 32], buf[sizeof good];
    FILE *f = fopen(path, "rb");
    assert_int_equal(fread(good, 1, sizeof good, f), sizeof good);
    fclose(f);

    write_raw(good, 10);
    expect_reject(NB_EFORMAT, "truncated header");
    write_raw(good, sizeof good - 3);
    expect_reject(NB_EFORMAT, "truncated");
    memcpy(buf, good, sizeof buf);
    buf[1] = 'X';
    write_raw(buf, sizeof buf);
    expect_reject(NB_EFORMAT, "offset 0");
    memcpy(buf, good, sizeof buf);
    buf[4] = 2;
    write_raw(buf, sizeof buf);
    expect_reject(NB_EVERSION, "version 2");
    memcpy(buf, good, sizeof buf);
    buf[8] = 3;
    write_raw(buf, sizeof buf);
    expect_reject(NB_EFORMAT, "width 3");
    memcpy(buf, good, sizeof buf);
    buf[12] = 10; /* vocab 10: token 10 at index 9 is outside */
    buf[13] = 0;
    write_raw(buf, sizeof buf);
    expect_reject(NB_ERANGE, "offset 50");
}

static void test_sampler(void **state)
{
    char err[512];
    enum { N = 500, B = 3, T = 8 };
    uint32_t ids[N];
    for (int i = 0; i < N; i++)
        ids[i] = (uint32_t)i % 250;
    assert_int_equal(nb_tokens_write(path, ids, N, 256, err, sizeof err), 0);
    nb_tokens_t *t;
    assert_int_equal(nb_tokens_open(path, &t, err, sizeof err), 0);
    int32_t in1[B * T], tg1[B * T], in2[B * T], tg2[B * T];
    assert_int_equal(nb_tokens_sample(t, 9, 4, 1, B, T, in1, tg1), 0);
    assert_int_equal(nb_tokens_sample(t, 9, 4, 1, B, T, in2, tg2), 0);
    assert_memory_equal(in1, in2, sizeof in1);
    assert_memory_equal(tg1, tg2, sizeof tg1);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < T; i++) {
            /* consecutive tokens; targets are the inputs shifted by one */
            assert_int_equal((in1[b * T + i] + 1) % 250, tg1[b * T + i]);
            if (i)
                assert_int_equal(in1[b * T + i], tg1[b * T + i - 1]);
        }
    assert_int_equal(nb_tokens_sample(t, 9, 4, 2, B, T, in2, tg2), 0);
    assert_memory_not_equal(in1, in2, sizeof in1);
    assert_int_equal(nb_tokens_sample(t, 9, 5, 1, B, T, in2, tg2), 0);
    assert_memory_not_equal(in1, in2, sizeof in1);
    assert_int_equal(nb_tokens_sample(t, 10, 4, 1, B, T, in2, tg2), 0);
    assert_memory_not_equal(in1, in2, sizeof in1);
    /* the last window is reachable, never past the end */
    int32_t big_in[N], big_tg[N];
    assert_int_equal(nb_tokens_sample(t, 1, 0, 0, 1, N - 1, big_in, big_tg), 0);
    assert_int_equal(big_tg[N - 2], (int32_t)ids[N - 1]);
    assert_int_equal(nb_tokens_sample(t, 1, 0, 0, 1, N, big_in, big_tg), NB_EINVAL);
    assert_int_equal(nb_tokens_sample(t, 1, 0, 0, 0, T, big_in, big_tg), NB_EINVAL);
    nb_tokens_close(t);
}

/* A slice is sampled as a file of its own: every window inside it, its
 * last window reachable, never past its end; out-of-range slices refused. */
static void test_slice(void **state)
{
    char err[512];
    enum { N = 500 };
    uint32_t ids[N];
    for (int i = 0; i < N; i++)
        ids[i] = (uint32_t)i % 250;
    assert_int_equal(nb_tokens_write(path, ids, N, 256, err, sizeof err), 0);
    nb_tokens_t *t, *head, *tail, *bad;
    assert_int_equal(nb_tokens_open(path, &t, err, sizeof err), 0);
    assert_int_equal(nb_tokens_slice(t, 0, 400, &head), 0);
    assert_int_equal(nb_tokens_slice(t, 400, 100, &tail), 0);
    assert_int_equal(nb_tokens_count(tail), 100);
    assert_int_equal(nb_tokens_vocab(tail), 256);
    assert_int_equal(nb_tokens_get(tail, 0), 150); /* token 400 */
    int32_t in[4 * 16], tg[4 * 16];
    for (uint32_t m = 0; m < 200; m++) {
        assert_int_equal(nb_tokens_sample(tail, 3, 0, m, 4, 16, in, tg), 0);
        for (int i = 0; i < 4 * 16; i++)
            assert_true(in[i] >= 150 && in[i] < 250 && tg[i] >= 150 && tg[i] < 250);
    }
    int32_t big_in[99], big_tg[99];
    assert_int_equal(nb_tokens_sample(tail, 1, 0, 0, 1, 99, big_in, big_tg), 0);
    assert_int_equal(big_tg[98], 249); /* token 499, the file's last */
    assert_int_equal(nb_tokens_sample(tail, 1, 0, 0, 1, 100, big_in, big_tg), NB_EINVAL);
    /* the head ends before token 400: one window of 399 + 1 is all it has */
    int32_t h_in[399], h_tg[399];
    assert_int_equal(nb_tokens_sample(head, 1, 0, 0, 1, 399, h_in, h_tg), 0);
    assert_int_equal(h_tg[398], 149); /* token 399 */
    assert_int_equal(nb_tokens_sample(head, 1, 0, 0, 1, 400, h_in, h_tg), NB_EINVAL);
    assert_int_equal(nb_tokens_slice(t, 400, 101, &bad), NB_EINVAL);
    assert_int_equal(nb_tokens_slice(t, 501, 1, &bad), NB_EINVAL);
    assert_int_equal(nb_tokens_slice(t, 0, 0, &bad), NB_EINVAL);
    assert_null(bad);
    nb_tokens_close(head);
    nb_tokens_close(tail);
    nb_tokens_close(t);
}

static void test_sampler_mlm(void **state)
{
    char err[512];
    enum { N = 300, B = 4, T = 16 };
    uint32_t ids[N];
    for (int i = 0; i < N; i++)
        ids[i] = (uint32_t)i % 200;
    assert_int_equal(nb_tokens_write(path, ids, N, 256, err, sizeof err), 0);
    nb_tokens_t *t;
    assert_int_equal(nb_tokens_open(path, &t, err, sizeof err), 0);
    int32_t in1[B * T], tg1[B * T], in2[B * T], tg2[B * T];
    assert_int_equal(nb_tokens_sample_mlm(t, 3, 7, 0, B, T, 0.25f, 256, in1, tg1), 0);
    assert_int_equal(nb_tokens_sample_mlm(t, 3, 7, 0, B, T, 0.25f, 256, in2, tg2), 0);
    assert_memory_equal(in1, in2, sizeof in1);
    assert_memory_equal(tg1, tg2, sizeof tg1);
    int masked = 0;
    for (int b = 0; b < B; b++) {
        int row = 0, first = -1;
        for (int i = 0; i < T; i++) {
            int32_t v = in1[b * T + i] == 256 ? tg1[b * T + i] : in1[b * T + i];
            if (in1[b * T + i] == 256) {
                row++;
                assert_true(tg1[b * T + i] >= 0);
            } else {
                assert_int_equal(tg1[b * T + i], -1);
            }
            if (i == 0)
                first = v;
            else
                assert_int_equal(v, (first + i) % 200); /* one window of the file */
        }
        assert_true(row >= 1);
        masked += row;
    }
    /* about a quarter of 64 positions */
    assert_true(masked >= 6 && masked <= 30);
    assert_int_equal(nb_tokens_sample_mlm(t, 3, 7, 1, B, T, 0.25f, 256, in2, tg2), 0);
    assert_memory_not_equal(in1, in2, sizeof in1);
    assert_int_equal(nb_tokens_sample_mlm(t, 3, 7, 0, B, T, 0.0f, 256, in2, tg2), NB_EINVAL);
    assert_int_equal(nb_tokens_sample_mlm(t, 3, 7, 0, B, N + 1, 0.5f, 256, in2, tg2), NB_EINVAL);
    /* a tiny share still masks one position per row */
    assert_int_equal(nb_tokens_sample_mlm(t, 3, 7, 0, 1, T, 1e-9f, 256, in2, tg2), 0);
    int one = 0;
    for (int i = 0; i < T; i++)
        one += in2[i] == 256;
    assert_int_equal(one, 1);
    nb_tokens_close(t);
}

/* The byte-level tokenizer: one token per byte, max_bytes honoured, and a
 * missing text named in the error. */
static void test_from_text(void **state)
{
    char text[160], err[256];
    snprintf(text, sizeof text, "%s.txt", path);
    FILE *f = fopen(text, "wb");
    assert_non_null(f);
    fputs("Hello, \xc3\xa9t\xc3\xa9!", f); /* UTF-8 bytes stay bytes */
    fclose(f);
    uint64_t n = 0;
    assert_int_equal(nb_tokens_from_text(text, path, 0, &n, err, sizeof err), 0);
    assert_int_equal(n, 13);
    nb_tokens_t *t;
    assert_int_equal(nb_tokens_open(path, &t, err, sizeof err), 0);
    assert_int_equal(nb_tokens_count(t), 13);
    assert_int_equal(nb_tokens_get(t, 0), 'H');
    assert_int_equal(nb_tokens_get(t, 7), 0xc3);
    nb_tokens_close(t);
    assert_int_equal(nb_tokens_from_text(text, path, 5, &n, err, sizeof err), 0);
    assert_int_equal(n, 5);
    unlink(text);
    assert_int_equal(nb_tokens_from_text(text, path, 0, &n, err, sizeof err), NB_EIO);
    assert_non_null(strstr(err, text));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rejects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sampler, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sampler_mlm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slice, setup, teardown),
        cmocka_unit_test_setup_teardown(test_from_text, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
