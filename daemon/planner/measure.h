/*
 * measure.h - the measurements file: what the coordinator measured (or an
 * operator assumes) about each stage's compute, each link direction and each
 * codec, as JSON, read into the planner's cost model for offline planning
 * (`nebulactl plan --measurements FILE`). Format in docs/planner.md, example
 * in tests/planner/data/.
 *
 * Thread: no shared state.
 */
#ifndef NB_PLANNER_MEASURE_H
#define NB_PLANNER_MEASURE_H

#include <stddef.h>

#include "daemon/planner/cost.h"

#define NB_MEASURE_VERSION 1

/* Reads path into *out (fully replaced on success, untouched on error).
 * Returns 0; NB_EIO when the file cannot be read; NB_EFORMAT for bad JSON or
 * a missing, mistyped or out-of-range field; NB_EVERSION for an unknown
 * "nebula_measurements" version. err (may be NULL) gets one line naming the
 * file, the field path (e.g. "links[0].forward.bandwidth_mbit") and what is
 * wrong. */
int nb_measure_load(const char *path, nb_cost_t *out, char *err, size_t errlen);

/* The same from a string; name is used in error messages in place of the
 * file name. */
int nb_measure_parse(const char *json, const char *name, nb_cost_t *out, char *err,
                     size_t errlen);

#endif
