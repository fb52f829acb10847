/*
 * trace.h - a ring buffer of per-micro-batch events (forward, backward,
 * encode, decode, send, receive, optimizer) rendered as Chrome trace-event
 * JSON, which Perfetto (ui.perfetto.dev) and chrome://tracing open.
 *
 * Each event sits on a track: one track per stage (compute, codec, optimizer)
 * and one per link direction (send/receive), registered by name. When the
 * ring is full the oldest events are overwritten: memory is fixed at creation.
 *
 * Thread: every function may be called from any thread (one mutex).
 */
#ifndef NB_TRACE_H
#define NB_TRACE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    NB_TEV_FORWARD = 0,
    NB_TEV_BACKWARD,
    NB_TEV_ENCODE,
    NB_TEV_DECODE,
    NB_TEV_SEND,
    NB_TEV_RECV,
    NB_TEV_OPTIMIZER,
    NB_TEV_KIND_COUNT,
} nb_trace_kind_t;

typedef struct {
    int64_t step;
    int32_t micro;   /* micro-batch, -1 for per-step events (optimizer) */
    int16_t track;   /* from nb_trace_track */
    uint8_t kind;    /* nb_trace_kind_t */
    double ts_us;    /* start, microseconds on one monotonic clock */
    double dur_us;
    uint64_t bytes;  /* payload bytes for send/receive/encode; 0 otherwise */
} nb_trace_event_t;

typedef struct nb_trace nb_trace_t;

/* A ring of capacity events (1 .. 1<<22), or NULL (bad capacity, no memory).
 * Free with nb_trace_free. */
nb_trace_t *nb_trace_new(size_t capacity);
void nb_trace_free(nb_trace_t *t);

/* Registers a track ("stage east", "link east->west") and returns its id, or
 * the existing id for the same name; NB_ELIMIT past 64 tracks; NB_EINVAL for
 * an empty or over-long (63) name. is_link puts it in the "links" group. */
int nb_trace_track(nb_trace_t *t, const char *name, bool is_link);

/* Appends one event (copied); returns NB_EINVAL for an unknown track or kind. */
int nb_trace_add(nb_trace_t *t, const nb_trace_event_t *ev);

/* Number of events held now. */
size_t nb_trace_count(nb_trace_t *t);

/* Builds {"traceEvents":[...],"displayTimeUnit":"ms"} with the events of the
 * last `steps` steps present (0: all), as complete ("X") events with args
 * {step, micro} (and bytes for encode, decode, send and receive), plus name
 * and sort-order metadata for every track (tracks listed in natural name
 * order: "stage 0" before "stage 1" before "stage 10"); the "links" process
 * only when a link track exists. Returns a new reference (caller
 * json_decref's) or NULL when out of memory. */
json_t *nb_trace_to_json(nb_trace_t *t, int64_t steps);

const char *nb_trace_kind_name(nb_trace_kind_t k);

#endif
