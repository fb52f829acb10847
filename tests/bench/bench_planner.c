/* bench_planner.c - how long the coordinator spends planning: one full
 * search for a 4-cluster, 48-block job with every schedule and 4 codecs per
 * direction, and one step simulation of an 8-stage, 64-micro-batch 1F1B
 * pipeline. Planning runs between steps, so it must stay far below a step.
 * Then, SIMULATED with the planner's cost model (no hardware runs it): the
 * predicted speed-up of an ELECTRA-like job from 8 to 64 accelerators, two
 * clusters in a pipeline and data parallel inside each (the source's 8 -> 64
 * case, which measured 4.34x); the assumptions are in dp_scaling() and
 * docs/planner.md, "Replicas". `bench_planner --dp` prints only that part.
 * Prints "bench <name> <value> <unit>". */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "daemon/clock.h"
#include "daemon/planner/search.h"
#include "daemon/planner/sim.h"
#include "kernels/common.h"

/* One device's time per block for a micro-batch of n sequences of a
 * transformer block of width h at seq 512: forward 2 P seq + 4 seq^2 h
 * FLOPs per sequence (P = 12 h^2 parameters), backward twice that, at an
 * effective 40 TFLOP/s (a V100-class accelerator in mixed precision at
 * about a third of its peak), plus 0.1 ms per block and micro-batch (kernel
 * launches, small matrices) times the same factor. */
static nb_fit_t block_fit(double h, double mult)
{
    double seq = 512, P = 12 * h * h;
    double flops = 2 * P * seq + 4 * seq * seq * h;
    return (nb_fit_t){1e-4 * mult, mult * flops / 40e12};
}

/* SIMULATED data-parallel scaling (docs/planner.md, "Replicas"), shaped
 * like the source's multi-generator ELECTRA: a generator cluster (stage 0:
 * 12 blocks of width 256, ELECTRA-base's generator) sends token IDs (4
 * bytes per token, seq 512) to a discriminator cluster (stage 1: 12 blocks
 * of width 768, 12 heads, vocabulary 30522, tied embeddings) over a
 * 1 Gbit/s WAN link (30 ms one way, 0.5 ms per message); global batch 256,
 * fixed. The planner's pipeline model sends a gradient of the same small
 * size back and makes the generator's backward wait for it, which the real
 * job does not (its traffic is one way): a pessimistic approximation. Each
 * cluster has devices/2 accelerators, one replica each; all-reduce at
 * NB_COST_REDUCE_BW_NCCL (100 GB/s) while a cluster fits in one 8-GPU host,
 * 12.5 GB/s (100 Gbit/s between hosts) beyond, after the last backward (no
 * overlap with it); 0.2 ms per op to split and gather a micro-batch. The
 * stages are stated as blocks of the discriminator's size (the generator's
 * 12 narrow blocks as 2 of them, by parameters, for the all-reduce) with
 * their own compute fits. The planner chooses m and the schedule per device
 * count. Returns the 64-device speed-up over 8, or < 0. */
static double dp_scaling(void)
{
    static nb_cost_t c;
    memset(&c, 0, sizeof c);
    c.p = 2;
    /* the generator's 12 narrow blocks in 2 block slots: 6 each */
    nb_fit_t gf = block_fit(256, 6), gb = block_fit(256, 12);
    c.stage[0].fwd_layer = gf;
    c.stage[0].bwd_layer = gb;
    c.stage[1].fwd_layer = block_fit(768, 1);
    c.stage[1].bwd_layer = block_fit(768, 2);
    for (int s = 0; s < 2; s++)
        c.stage[s].replica_overhead = 2e-4;
    for (int d = 0; d < 2; d++)
        c.link[0].dir[d] = (nb_cost_dir_t){0.03, 1.25e8, 5e-4};
    c.ncodecs = 1;
    c.codec[0] = (nb_cost_codec_t){"fp32", 1.0, 0, 0, 0};
    nb_plan_req_t req;
    memset(&req, 0, sizeof req);
    req.p = 2;
    if (nb_cost_model_gpt(14, 768, 12, 512, 30522, 1, 256, &req.model) != 0)
        return -1;
    req.model.boundary_bytes_per_sample = 4.0 * 512; /* token IDs, not activations */
    req.fixed_layers[0] = 2;
    req.fixed_layers[1] = 12;
    printf("# SIMULATED (planner cost model, not measured): ELECTRA-like job, generator and discriminator\n");
    printf("# clusters of devices/2 accelerators each, token IDs over a 1 Gbit/s WAN link\n");
    printf("# %7s %9s %-24s %10s %9s %9s\n", "devices", "replicas", "chosen plan", "step (s)", "allreduce",
           "speed-up");
    double t8 = -1, t64 = -1;
    for (int dev = 8; dev <= 64; dev *= 2) {
        int r = dev / 2;
        for (int s = 0; s < 2; s++) {
            c.stage[s].replicas = r;
            c.stage[s].reduce_bw = r <= 8 ? NB_COST_REDUCE_BW_NCCL : 12.5e9;
        }
        nb_plan_result_t res;
        char err[256];
        if (nb_plan_search(&c, &req, &res, err, sizeof err) != 0) {
            fprintf(stderr, "dp search failed: %s\n", err);
            return -1;
        }
        const nb_plan_cand_t *b = &res.cand[0];
        char sb[24], plan[64];
        snprintf(plan, sizeof plan, "m=%d %s", b->m, nb_sched_format(&b->sched, sb, sizeof sb));
        if (dev == 8)
            t8 = b->step_time;
        if (dev == 64)
            t64 = b->step_time;
        printf("# %7d %9d %-24s %10.4f %8.1f%% %8.2fx\n", dev, r, plan, b->step_time, 100 * b->allreduce_share,
               t8 / b->step_time);
        nb_plan_result_free(&res);
    }
    printf("# (ideal: 8.00x) the source measured 4.34x from 8 to 64 accelerators\n");
    return t8 > 0 && t64 > 0 ? t8 / t64 : -1;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--dp") == 0) {
        double x = dp_scaling();
        if (x < 0)
            return 1;
        printf("bench planner_dp_speedup_64_vs_8 %.2f ratio\n", x);
        return 0;
    }
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
        double t0 = nb_mono_s();
        int rc = nb_plan_search(&c, &req, &r, err, sizeof err);
        double dt = nb_mono_s() - t0;
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
        double t0 = nb_mono_s();
        if (nb_sim_run(&in, &r, NULL, 0, NULL) != 0)
            return 1;
        best = fmin(best, nb_mono_s() - t0);
    }
    printf("bench planner_sim_p8_m64_us %.1f us\n", best * 1e6);
    double x = dp_scaling();
    if (x < 0)
        return 1;
    printf("bench planner_dp_speedup_64_vs_8 %.2f ratio\n", x);
    return 0;
}
