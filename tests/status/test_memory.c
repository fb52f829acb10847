/*
 * test_memory.c - the memory breakdown a daemon reports (daemon/service/
 * memory.h): the model parts add up, the resident set splits into anonymous
 * and file-backed memory, the heap holds the model state, and the status JSON
 * carries the same figures.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/core/memory.h"
#include "daemon/core/state.h"
#include "daemon/status/status_cmds.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define NB_TEST_SANITIZER 1 /* their allocators replace glibc's: mallinfo2 says nothing */
#else
#define NB_TEST_SANITIZER 0
#endif

static uint64_t jint(json_t *o, const char *a, const char *b)
{
    json_t *v = json_object_get(o, a);
    if (b)
        v = json_object_get(v, b);
    assert_true(json_is_integer(v));
    return (uint64_t)json_integer_value(v);
}

static void test_breakdown_consistent(void **st)
{
    (void)st;
    const size_t mib = 1u << 20;
    /* a model state of 48 MiB, in the heap and touched, as a stage holds it */
    unsigned char *w = malloc(8 * mib), *g = malloc(8 * mib), *o = malloc(16 * mib), *a = malloc(16 * mib);
    assert_non_null(w && g && o && a ? w : NULL);
    memset(w, 1, 8 * mib);
    memset(g, 2, 8 * mib);
    memset(o, 3, 16 * mib);
    memset(a, 4, 16 * mib);
    nb_state_t *s = nb_state_new("m", NB_ROLE_STAGE, 16);
    assert_non_null(s);
    nb_mem_model_t mm = { .weights = 8 * mib, .gradients = 8 * mib, .optimizer = 16 * mib, .activations = 16 * mib };
    nb_state_set_model_memory(s, &mm);
    nb_state_snapshot_t *snap = malloc(sizeof *snap);
    assert_non_null(snap);
    nb_state_snapshot(s, snap);
    const nb_mem_report_t *r = &snap->memory;
    assert_int_equal(r->model_total, 48 * mib);
    assert_true(r->rss >= r->model_total);
    assert_true(r->rss_anon >= r->model_total);
    assert_true(r->peak_rss >= r->rss);
    /* VmRSS = RssAnon + RssFile + RssShmem (per-CPU counters: allow 1 MiB) */
    uint64_t parts = r->rss_anon + r->rss_file;
    assert_true(parts <= r->rss + mib && parts + mib >= r->rss);
    assert_true(r->threads >= 1);
    if (!NB_TEST_SANITIZER) {
        assert_true(r->heap_in_use >= r->model_total);
        assert_true(r->heap_mmapped <= r->heap_in_use);
    }

    json_t *j = nb_status_to_json(snap);
    assert_non_null(j);
    json_t *m = json_object_get(j, "memory");
    assert_true(json_is_object(m));
    assert_int_equal(jint(m, "model", "weights"), 8 * mib);
    assert_int_equal(jint(m, "model", "gradients"), 8 * mib);
    assert_int_equal(jint(m, "model", "optimizer"), 16 * mib);
    assert_int_equal(jint(m, "model", "activations"), 16 * mib);
    assert_int_equal(jint(m, "model", "total"), 48 * mib);
    assert_int_equal(jint(m, "rss", NULL), r->rss);
    assert_int_equal(jint(m, "other", NULL), r->rss - r->model_total);
    assert_int_equal(jint(m, "heap", "in_use"), r->heap_in_use);
    assert_int_equal(jint(m, "heap", "free"), r->heap_free);
    assert_int_equal(jint(m, "rss_file", NULL), r->rss_file);
    assert_true(json_is_array(json_object_get(j, "links")));
    json_decref(j);
    free(snap);
    nb_state_free(s);
    free(w);
    free(g);
    free(o);
    free(a);
}

/* The coordinator's link rows: inserted once per (from, to), replaced after. */
static void test_link_rows(void **st)
{
    (void)st;
    nb_state_t *s = nb_state_new("c", NB_ROLE_COORDINATOR, 16);
    nb_link_info_t l = { .from = "a", .to = "b", .rtt_ms = 1.5, .probe_mbps = -1, .passive_mbps = 80, .bytes = 7 };
    assert_int_equal(nb_state_link_update(s, &l), 0);
    l.bytes = 9;
    assert_int_equal(nb_state_link_update(s, &l), 0);
    nb_link_info_t got;
    assert_int_equal(nb_state_link_get(s, "a", "b", &got), 0);
    assert_int_equal(got.bytes, 9);
    assert_int_not_equal(nb_state_link_get(s, "b", "a", &got), 0);
    nb_state_snapshot_t *snap = malloc(sizeof *snap);
    nb_state_snapshot(s, snap);
    assert_int_equal(snap->n_links, 1);
    json_t *j = nb_status_to_json(snap);
    json_t *row = json_array_get(json_object_get(j, "links"), 0);
    assert_string_equal(json_string_value(json_object_get(row, "from")), "a");
    assert_true(json_is_null(json_object_get(row, "probe_mbps")));
    assert_true(json_real_value(json_object_get(row, "mbps")) == 80.0);
    json_decref(j);
    free(snap);
    nb_state_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_breakdown_consistent),
        cmocka_unit_test(test_link_rows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
