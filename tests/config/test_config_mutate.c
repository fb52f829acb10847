/* test_config_mutate.c - bad input never crashes the loader: thousands of
 * deterministic mutations of the example files (byte changes, truncations,
 * duplicated and swapped lines), deep nesting, huge values, binary junk.
 * Each load either succeeds or returns an error whose message starts with
 * the file name; under ASan/UBSan this also checks memory safety. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/config/config.h"

static nb_config_t cfg;
static char err[1024];
static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)rng;
}

static void check_load(const char *text, size_t len)
{
    int rc = nb_cfg_load_string("m.yaml", text, len, &cfg, err, sizeof err);
    if (rc == 0)
        return;
    if (strncmp(err, "m.yaml:", 7) != 0)
        fail_msg("error without location: rc %d '%s'", rc, err);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static char buf[1 << 16];
    *len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[*len] = 0;
    return buf;
}

static void test_mutations(void **st)
{
    static const char *const files[] = { "config/demo/coordinator.yaml", "config/2-cluster/east.yaml",
                                         "config/3-cluster/coordinator.yaml", "config/train/tiny-gpt.yaml" };
    static const char alphabet[] = ":-[]{},\"'#&*!|>%@ \n\t0123456789.eE+xyz~";
    char *m = malloc(1 << 17);
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        size_t len;
        const char *orig = slurp(files[f], &len);
        check_load(orig, len);
        for (int i = 0; i < 600; i++) {
            memcpy(m, orig, len + 1);
            size_t n = len;
            int kind = (int)(next() % 4);
            if (kind == 0) { /* a few byte changes */
                for (int k = 1 + (int)(next() % 4); k > 0; k--)
                    m[next() % n] = alphabet[next() % (sizeof alphabet - 1)];
            } else if (kind == 1) { /* truncation */
                n = next() % n;
                m[n] = 0;
            } else if (kind == 2) { /* duplicate a span elsewhere */
                size_t a = next() % n, l = next() % 64, at = next() % n;
                if (a + l > n)
                    l = n - a;
                memmove(m + at + l, m + at, n - at + 1);
                memcpy(m + at, orig + a, l);
                n += l;
            } else { /* binary junk */
                m[next() % n] = (char)(next() & 0xff);
                m[next() % n] = 0; /* an embedded NUL */
            }
            check_load(m, n);
        }
    }
    free(m);
}

static void test_pathological(void **st)
{
    char *m = malloc(1 << 20);
    /* deep nesting */
    size_t n = 0;
    n += (size_t)sprintf(m, "name: x\nrole: train\njob: ");
    for (int i = 0; i < 20000; i++)
        m[n++] = '[';
    m[n] = 0;
    check_load(m, n);
    n = (size_t)sprintf(m, "name: x\nrole: train\njob:\n  model: ");
    for (int i = 0; i < 5000; i++)
        n += (size_t)sprintf(m + n, "{a: ");
    check_load(m, n);
    /* a huge value for a fixed-size field */
    n = (size_t)sprintf(m, "role: train\nname: ");
    memset(m + n, 'a', 200000);
    n += 200000;
    m[n] = 0;
    check_load(m, n);
    assert_non_null(strstr(err, "name: longer than 63 characters"));
    /* many keys, anchors and aliases */
    n = (size_t)sprintf(m, "role: train\nname: &a x\nlog_level: *a\n");
    check_load(m, n);
    assert_non_null(strstr(err, "log_level: must be one of debug, info, warn, error"));
    n = (size_t)sprintf(m, "role: stage\nname: s\ndevices: [");
    for (int i = 0; i < 1000; i++)
        n += (size_t)sprintf(m + n, "cpu, ");
    n += (size_t)sprintf(m + n, "cpu]\n");
    check_load(m, n);
    assert_non_null(strstr(err, "devices: too many items: at most 16, got 1001"));
    /* a document stream: only the first document is read */
    n = (size_t)sprintf(m, "---\nrole: [\n---\nrole: train\n");
    check_load(m, n);
    free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mutations),
        cmocka_unit_test(test_pathological),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
