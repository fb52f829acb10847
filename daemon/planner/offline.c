/*
 * offline.c - measurements file + job shape -> ranked plan table (see
 * offline.h).
 */
#include "daemon/planner/offline.h"

#include <stdlib.h>
#include <string.h>

#include "daemon/planner/measure.h"
#include "kernels/common.h"

int nb_plan_offline(FILE *out, const nb_plan_req_t *req, const char *measurements_path,
                    double bandwidth_mbit, int max_rows, nb_plan_cand_t *chosen, char *err,
                    size_t errlen)
{
    if (!(bandwidth_mbit >= 0)) {
        if (err && errlen)
            snprintf(err, errlen, "bandwidth-mbit: must be > 0 (is %g)", bandwidth_mbit);
        return NB_EINVAL;
    }
    nb_cost_t *cost = calloc(1, sizeof *cost);
    nb_plan_req_t *r = malloc(sizeof *r);
    if (!cost || !r) {
        free(cost);
        free(r);
        return NB_ENOMEM;
    }
    *r = *req;
    int rc = nb_measure_load(measurements_path, cost, err, errlen);
    if (rc < 0)
        goto done;
    if (bandwidth_mbit > 0)
        nb_cost_set_bandwidth_mbit(cost, bandwidth_mbit);
    if (r->p == 0)
        r->p = cost->p;
    nb_plan_result_t res;
    rc = nb_plan_search(cost, r, &res, err, errlen);
    if (rc < 0 && rc != NB_ELIMIT)
        goto done;
    fprintf(out, "plan: %d stages, %d blocks, global batch %d, %d candidates (%d fit in memory)\n",
            cost->p, r->model.n_layers, r->model.global_batch, res.n, res.nfeasible);
    for (int s = 0; s < cost->p; s++) {
        fprintf(out, "  stage %d %-16s memory limit ", s, cost->stage[s].name);
        if (cost->stage[s].mem_limit > 0)
            fprintf(out, "%.2f GiB", cost->stage[s].mem_limit / (1024.0 * 1024.0 * 1024.0));
        else
            fprintf(out, "none");
        if (nb_cost_replicas(cost, s) > 1)
            fprintf(out, ", %d replicas (all-reduce at %.1f GB/s)", nb_cost_replicas(cost, s),
                    (cost->stage[s].reduce_bw > 0 ? cost->stage[s].reduce_bw : NB_COST_REDUCE_BW_CPU) / 1e9);
        fputc('\n', out);
    }
    for (int s = 0; s + 1 < cost->p; s++) {
        const nb_cost_link_t *l = &cost->link[s];
        fprintf(out, "  link %d-%d forward %.1f Mbit/s %.1f ms, backward %.1f Mbit/s %.1f ms%s\n",
                s, s + 1, l->dir[0].bandwidth * 8e-6, l->dir[0].latency * 1e3,
                l->dir[1].bandwidth * 8e-6, l->dir[1].latency * 1e3,
                bandwidth_mbit > 0 ? " (bandwidth overridden)" : "");
    }
    if (rc == 0) {
        char line[512];
        fprintf(out, "chosen: %s\n", nb_plan_describe(cost, &res.cand[0], line, sizeof line));
        if (chosen)
            *chosen = res.cand[0];
    } else {
        fprintf(out, "no plan fits: %s\n", err ? err : "memory limits");
    }
    if (nb_plan_print(out, cost, &res, max_rows) != 0 && rc == 0) {
        rc = NB_EIO;
        if (err && errlen)
            snprintf(err, errlen, "writing the plan table failed");
    }
    nb_plan_result_free(&res);
done:
    free(cost);
    free(r);
    return rc;
}
