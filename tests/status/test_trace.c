/*
 * test_trace.c - the Chrome trace rendering of the trace ring: tracks listed
 * in natural order whatever order they were first used in (the coordinator
 * sees stage 1 report first), the "links" process only when a link track
 * exists, and payload bytes only on events that move payload.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>
#include "daemon/trace.h"

/* The metadata event `what` for (pid, tid), or NULL. */
static json_t *find_meta(json_t *evs, const char *what, int pid, int tid)
{
    size_t i;
    json_t *e;
    json_array_foreach(evs, i, e)
    {
        if (strcmp(json_string_value(json_object_get(e, "ph")), "M") == 0 &&
            strcmp(json_string_value(json_object_get(e, "name")), what) == 0 &&
            json_integer_value(json_object_get(e, "pid")) == pid && json_integer_value(json_object_get(e, "tid")) == tid)
            return e;
    }
    return NULL;
}

static int sort_index(json_t *evs, int pid, int tid)
{
    json_t *m = find_meta(evs, "thread_sort_index", pid, tid);
    assert_non_null(m);
    return (int)json_integer_value(json_object_get(json_object_get(m, "args"), "sort_index"));
}

static void test_stage_tracks_in_order_no_empty_links(void **state)
{
    (void)state;
    nb_trace_t *t = nb_trace_new(64);
    /* first use order: stage 1, stage 10, stage 0, stage 2 */
    int s1 = nb_trace_track(t, "stage 1", false), s10 = nb_trace_track(t, "stage 10", false);
    int s0 = nb_trace_track(t, "stage 0", false), s2 = nb_trace_track(t, "stage 2", false);
    int ids[4] = { s1, s10, s0, s2 };
    for (int i = 0; i < 4; i++) {
        nb_trace_event_t e = { .step = 1, .micro = 0, .track = (int16_t)ids[i], .kind = NB_TEV_FORWARD,
                               .ts_us = 10.0 * i, .dur_us = 5, .bytes = 0 };
        assert_int_equal(nb_trace_add(t, &e), 0);
    }
    json_t *j = nb_trace_to_json(t, 0);
    assert_non_null(j);
    json_t *evs = json_object_get(j, "traceEvents");
    assert_int_equal(sort_index(evs, 1, s0), 0);
    assert_int_equal(sort_index(evs, 1, s1), 1);
    assert_int_equal(sort_index(evs, 1, s2), 2);
    assert_int_equal(sort_index(evs, 1, s10), 3);
    assert_string_equal(json_string_value(json_object_get(json_object_get(find_meta(evs, "thread_name", 1, s1), "args"),
                                                          "name")), "stage 1");
    assert_non_null(find_meta(evs, "process_name", 1, 0));
    assert_null(find_meta(evs, "process_name", 2, 0)); /* no link track: no empty "links" */
    /* compute events carry no bytes */
    size_t i;
    json_t *e;
    int compute = 0;
    json_array_foreach(evs, i, e)
    {
        if (strcmp(json_string_value(json_object_get(e, "ph")), "X") == 0) {
            assert_null(json_object_get(json_object_get(e, "args"), "bytes"));
            compute++;
        }
    }
    assert_int_equal(compute, 4);
    json_decref(j);
    nb_trace_free(t);
}

static void test_link_events_carry_bytes(void **state)
{
    (void)state;
    nb_trace_t *t = nb_trace_new(16);
    int l = nb_trace_track(t, "link a->b", true);
    nb_trace_event_t e = { .step = 3, .micro = 1, .track = (int16_t)l, .kind = NB_TEV_SEND, .ts_us = 1,
                           .dur_us = 2, .bytes = 123456 };
    assert_int_equal(nb_trace_add(t, &e), 0);
    json_t *j = nb_trace_to_json(t, 0);
    json_t *evs = json_object_get(j, "traceEvents");
    assert_non_null(find_meta(evs, "process_name", 2, 0));
    size_t i;
    json_t *x, *send = NULL;
    json_array_foreach(evs, i, x)
    {
        if (strcmp(json_string_value(json_object_get(x, "ph")), "X") == 0)
            send = x;
    }
    assert_non_null(send);
    assert_int_equal(json_integer_value(json_object_get(send, "pid")), 2);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(send, "args"), "bytes")), 123456);
    json_decref(j);
    nb_trace_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stage_tracks_in_order_no_empty_links),
        cmocka_unit_test(test_link_events_carry_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
