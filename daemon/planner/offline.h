/*
 * offline.h - planning without a running job: a measurements file plus the
 * job's shape in, the ranked candidate table out. This is what
 * `nebulactl plan --job FILE --measurements FILE [--bandwidth-mbit N]` runs
 * once the job config is mapped onto nb_plan_req_t.
 *
 * Thread: no shared state.
 */
#ifndef NB_PLANNER_OFFLINE_H
#define NB_PLANNER_OFFLINE_H

#include <stdio.h>

#include "daemon/planner/search.h"

/* Loads measurements_path, optionally sets every link direction to
 * bandwidth_mbit (> 0; 0 keeps the measured values), ranks every candidate
 * for req and prints a header (stages, links, the choice and why) and the
 * table (at most max_rows rows, <= 0: all) to out. req->p may be 0 to take
 * the stage count from the file. If chosen is not NULL it receives the
 * chosen candidate.
 * Returns 0; the errors of nb_measure_load; the errors of nb_plan_search
 * (NB_ELIMIT still prints the table, marking every row OOM); NB_EINVAL for a
 * negative bandwidth. err (may be NULL) gets one line. */
int nb_plan_offline(FILE *out, const nb_plan_req_t *req, const char *measurements_path,
                    double bandwidth_mbit, int max_rows, nb_plan_cand_t *chosen, char *err,
                    size_t errlen);

#endif
