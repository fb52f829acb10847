/* bench_planner.c - how long the coordinator spends planning: one full
 * search for a 4-cluster, 48-block job with every schedule and 4 codecs per
 * direction, and one step simulation of an 8-stage, 64-micro-batch 1F1B
 * pipeline. Planning runs between steps, so it must stay far below a step.
 * Prints "bench <name> <value> <unit>". */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "daemon/planner/search.h"
#include "daemon/planner/sim.h"
#include "kernels/common.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(void)
{
    static nb_cost_t c;
    memset(&c, 0, sizeof c);
    c.p = 4;
    for (int s = 0; s < 4; s++) {
        double k = 1.0 + 0.5 * s; /* clusters of different speeds */
        c.stage[s].fwd_layer = (nb_fit_t){0.001 * k, 0.002 * k};
        c.stage[s].bwd_layer = (nb_fit_t){0.002 * k, 0.004 * k};
        c.stage[s].fwd_fixed = (nb_fit_t){0.002, 0.001};
        c.stage[s].bwd_fixed = (nb_fit_t){0.004, 0.002};
        c.stage[s].mem_limit = 40.0 * 1024 * 1024 * 1024;
    }
    for (int s = 0; s < 3; s++)
        for (int d = 0; d < 2; d++)
            c.link[s].dir[d] = (nb_cost_dir_t){0.03, 12.5e6, 0.002};
    c.ncodecs = 4;
    c.codec[0] = (nb_cost_codec_t){"fp32", 1.0, 0, 0, 0};
    c.codec[1] = (nb_cost_codec_t){"fp16", 0.5, 5e-11, 5e-11, 1};
    c.codec[2] = (nb_cost_codec_t){"int8", 0.26, 1.5e-10, 1e-10, 2};
    c.codec[3] = (nb_cost_codec_t){"fp16(svd(0.6))", 0.12, 2.5e-9, 4e-10, 3};
    nb_plan_req_t req;
    memset(&req, 0, sizeof req);
    req.p = 4;
    if (nb_cost_model_gpt(48, 1024, 16, 1024, 50257, 1, 256, &req.model) != 0)
        return 1;
    double best = INFINITY;
    int n = 0;
    for (int round = 0; round < 3; round++) {
        nb_plan_result_t r;
        char err[256];
        double t0 = now();
        int rc = nb_plan_search(&c, &req, &r, err, sizeof err);
        double dt = now() - t0;
        if (rc != 0) {
            fprintf(stderr, "search failed: %s\n", err);
            return 1;
        }
        n = r.n;
        if (round == 0) {
            char line[256];
            fprintf(stderr, "chosen: %s\n", nb_plan_describe(&c, &r.cand[0], line, sizeof line));
        }
        nb_plan_result_free(&r);
        best = fmin(best, dt);
    }
    printf("bench planner_search_ms %.1f ms\n", best * 1e3);
    printf("bench planner_candidates %d count\n", n);

    nb_sim_input_t in;
    memset(&in, 0, sizeof in);
    in.p = 8;
    in.m = 64;
    in.sched = (nb_sched_spec_t){NB_SCHED_1F1B, 0};
    for (int s = 0; s < 8; s++) {
        in.tf[s] = 0.01, in.tb[s] = 0.02;
        in.xf[s] = in.xb[s] = 0.005;
        in.lf[s] = in.lb[s] = 0.03;
    }
    best = INFINITY;
    for (int round = 0; round < 20; round++) {
        nb_sim_result_t r;
        double t0 = now();
        if (nb_sim_run(&in, &r, NULL, 0, NULL) != 0)
            return 1;
        best = fmin(best, now() - t0);
    }
    printf("bench planner_sim_p8_m64_us %.1f us\n", best * 1e6);
    return 0;
}
