/* trace.c - fixed-size ring of trace events, Chrome trace-event JSON output;
 * see trace.h. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/trace.h"
#include "kernels/common.h"

#define TRACE_TRACKS_MAX 64
#define TRACE_CAP_MAX ((size_t)1 << 22)

struct nb_trace {
    pthread_mutex_t lock;
    nb_trace_event_t *ring;
    size_t cap, head, count; /* head: next slot to write */
    int n_tracks;
    char tracks[TRACE_TRACKS_MAX][64];
    bool track_link[TRACE_TRACKS_MAX];
};

static const char *const kind_names[NB_TEV_KIND_COUNT] = {
    "forward", "backward", "encode", "decode", "send", "receive", "optimizer",
};

const char *nb_trace_kind_name(nb_trace_kind_t k)
{
    return (unsigned)k < NB_TEV_KIND_COUNT ? kind_names[k] : "?";
}

nb_trace_t *nb_trace_new(size_t capacity)
{
    if (capacity == 0 || capacity > TRACE_CAP_MAX)
        return NULL;
    nb_trace_t *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->ring = calloc(capacity, sizeof *t->ring);
    if (!t->ring) {
        free(t);
        return NULL;
    }
    t->cap = capacity;
    pthread_mutex_init(&t->lock, NULL);
    return t;
}

void nb_trace_free(nb_trace_t *t)
{
    if (!t)
        return;
    pthread_mutex_destroy(&t->lock);
    free(t->ring);
    free(t);
}

int nb_trace_track(nb_trace_t *t, const char *name, bool is_link)
{
    if (!t || !name || !*name || strlen(name) >= sizeof t->tracks[0])
        return NB_EINVAL;
    int rc;
    pthread_mutex_lock(&t->lock);
    for (rc = 0; rc < t->n_tracks; rc++)
        if (strcmp(t->tracks[rc], name) == 0)
            goto out;
    if (t->n_tracks >= TRACE_TRACKS_MAX) {
        rc = NB_ELIMIT;
        goto out;
    }
    rc = t->n_tracks++;
    snprintf(t->tracks[rc], sizeof t->tracks[rc], "%s", name);
    t->track_link[rc] = is_link;
out:
    pthread_mutex_unlock(&t->lock);
    return rc;
}

int nb_trace_add(nb_trace_t *t, const nb_trace_event_t *ev)
{
    if (!t || !ev || ev->kind >= NB_TEV_KIND_COUNT)
        return NB_EINVAL;
    int rc = 0;
    pthread_mutex_lock(&t->lock);
    if (ev->track < 0 || ev->track >= t->n_tracks) {
        rc = NB_EINVAL;
    } else {
        t->ring[t->head] = *ev;
        t->head = (t->head + 1) % t->cap;
        if (t->count < t->cap)
            t->count++;
    }
    pthread_mutex_unlock(&t->lock);
    return rc;
}

size_t nb_trace_count(nb_trace_t *t)
{
    pthread_mutex_lock(&t->lock);
    size_t n = t->count;
    pthread_mutex_unlock(&t->lock);
    return n;
}

static int meta(json_t *arr, const char *what, int pid, int tid, const char *name)
{
    json_t *e = json_pack("{s:s, s:s, s:i, s:i, s:{s:s}}", "name", what, "ph", "M", "pid", pid, "tid", tid, "args",
                          "name", name);
    return e ? json_array_append_new(arr, e) : -1;
}

static int meta_sort(json_t *arr, int pid, int tid, int index)
{
    json_t *e = json_pack("{s:s, s:s, s:i, s:i, s:{s:i}}", "name", "thread_sort_index", "ph", "M", "pid", pid,
                          "tid", tid, "args", "sort_index", index);
    return e ? json_array_append_new(arr, e) : -1;
}

/* Orders names as a person would: digit runs by value ("stage 2" before
 * "stage 10"), the rest bytewise. */
static int natural_cmp(const char *a, const char *b)
{
    while (*a && *b) {
        if (*a >= '0' && *a <= '9' && *b >= '0' && *b <= '9') {
            char *ea, *eb;
            unsigned long long x = strtoull(a, &ea, 10), y = strtoull(b, &eb, 10);
            if (x != y)
                return x < y ? -1 : 1;
            a = ea;
            b = eb;
            continue;
        }
        if (*a != *b)
            return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
        a++;
        b++;
    }
    return *a ? 1 : *b ? -1 : 0;
}

/* Tracks are numbered in the order they were first used (on the
 * coordinator, whichever stage reported first); viewers list them by
 * thread_sort_index, so "stage 0" shows above "stage 1". */
static int track_rank(const nb_trace_t *t, int k)
{
    int rank = 0;
    for (int j = 0; j < t->n_tracks; j++)
        if (j != k && t->track_link[j] == t->track_link[k]) {
            int c = natural_cmp(t->tracks[j], t->tracks[k]);
            rank += c < 0 || (c == 0 && j < k);
        }
    return rank;
}

/* Payload bytes mean something for transfers and codecs only. */
static bool kind_has_bytes(uint8_t kind)
{
    return kind == NB_TEV_ENCODE || kind == NB_TEV_DECODE || kind == NB_TEV_SEND || kind == NB_TEV_RECV;
}

json_t *nb_trace_to_json(nb_trace_t *t, int64_t steps)
{
    json_t *arr = json_array();
    if (!arr)
        return NULL;
    pthread_mutex_lock(&t->lock);
    size_t first = (t->head + t->cap - t->count) % t->cap;
    int64_t max_step = INT64_MIN;
    for (size_t i = 0; i < t->count; i++) {
        const nb_trace_event_t *e = &t->ring[(first + i) % t->cap];
        if (e->step > max_step)
            max_step = e->step;
    }
    int64_t min_step = steps > 0 && max_step != INT64_MIN ? max_step - steps + 1 : INT64_MIN;
    bool any_link = false;
    for (int k = 0; k < t->n_tracks; k++)
        any_link = any_link || t->track_link[k];
    int bad = meta(arr, "process_name", 1, 0, "stages") || (any_link && meta(arr, "process_name", 2, 0, "links"));
    for (int k = 0; k < t->n_tracks && !bad; k++) {
        int pid = t->track_link[k] ? 2 : 1;
        bad = meta(arr, "thread_name", pid, k, t->tracks[k]) || meta_sort(arr, pid, k, track_rank(t, k));
    }
    for (size_t i = 0; i < t->count && !bad; i++) {
        const nb_trace_event_t *e = &t->ring[(first + i) % t->cap];
        if (e->step < min_step)
            continue;
        json_t *j = json_pack("{s:s, s:s, s:s, s:f, s:f, s:i, s:i, s:{s:I, s:i}}", "name", kind_names[e->kind],
                              "cat", t->track_link[e->track] ? "link" : "stage", "ph", "X", "ts", e->ts_us, "dur",
                              e->dur_us, "pid", t->track_link[e->track] ? 2 : 1, "tid", (int)e->track, "args",
                              "step", (json_int_t)e->step, "micro", (int)e->micro);
        if (j && kind_has_bytes(e->kind))
            json_object_set_new(json_object_get(j, "args"), "bytes", json_integer((json_int_t)e->bytes));
        bad = !j || json_array_append_new(arr, j);
    }
    pthread_mutex_unlock(&t->lock);
    json_t *root = bad ? NULL : json_pack("{s:o, s:s}", "traceEvents", arr, "displayTimeUnit", "ms");
    if (!root && bad)
        json_decref(arr);
    return root;
}
