/*
 * metrics.h - a small registry of named counters and gauges, rendered in the
 * Prometheus text exposition format (version 0.0.4) for `nebulactl metrics`.
 *
 * Names follow Prometheus conventions: `nebula_` prefix, base units in the
 * name (`_bytes`, `_seconds`), counters end in `_total`. One name may have
 * several series that differ by labels (`peer="east"`).
 *
 * Thread: every function may be called from any thread (one mutex); the loop
 * renders while the compute thread updates.
 */
#ifndef NB_METRICS_H
#define NB_METRICS_H

#include <stddef.h>

typedef enum { NB_METRIC_COUNTER = 0, NB_METRIC_GAUGE = 1 } nb_metric_kind_t;

typedef struct nb_metrics nb_metrics_t;

/* Returns a new empty registry or NULL when out of memory. Free with
 * nb_metrics_free. */
nb_metrics_t *nb_metrics_new(void);
void nb_metrics_free(nb_metrics_t *m);

/* Registers one series and returns its id (>= 0), or NB_EINVAL for a name not
 * matching nebula_[a-z0-9_]+, a labels string that is not `k="v",...`, a kind
 * or help differing from an earlier series of the same name, or a duplicate;
 * NB_ELIMIT when the registry is full (256 series); NB_ENOMEM.
 * labels may be NULL or "". help is copied. Registering the same name and
 * labels again with the same kind returns the existing id. */
int nb_metrics_add(nb_metrics_t *m, const char *name, const char *labels, nb_metric_kind_t kind,
                   const char *help);

/* Gauge: set. Counter: set must not decrease it (NB_EINVAL). Invalid ids
 * give NB_EINVAL. */
int nb_metrics_set(nb_metrics_t *m, int id, double v);
/* Adds delta (>= 0 for counters). */
int nb_metrics_inc(nb_metrics_t *m, int id, double delta);
/* Current value, or NAN for an invalid id. */
double nb_metrics_get(nb_metrics_t *m, int id);

/* Renders every series, grouped by name with one # HELP and # TYPE line each,
 * into a NUL-terminated malloc'd string (caller frees); NULL when out of
 * memory. *len (if not NULL) receives its length. */
char *nb_metrics_render(nb_metrics_t *m, size_t *len);

#endif
