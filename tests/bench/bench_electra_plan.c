/* bench_electra_plan.c - PREDICTED, not measured: what the planner's model
 * of the ELECTRA topology (daemon/planner/electra_model.h; docs/planner.md,
 * "ELECTRA topology") says of the source's 8 -> 64 accelerator scaling
 * (measured there: 4.34x). No hardware runs this job; every figure below
 * follows from the assumptions stated in scenario() and in docs/planner.md.
 *
 * For each accelerator count the bench tries every split between the
 * discriminator's cluster and the G generator clusters (each generator the
 * same number of devices) and keeps the one with the shortest predicted
 * step; the speed-up is the ratio of the best predicted steps.
 *
 * Prints "bench electra_predicted_speedup_64_vs_8 <x> x" and, as comments,
 * the table of splits and what-if variants. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "daemon/planner/electra_model.h"

/* ELECTRA-Base (Clark et al. 2020): sequences of 512 WordPiece tokens
 * (vocabulary 30522: IDs of 2 bytes on the wire), discriminator 12 blocks
 * of width 768, generator 12 blocks of width 256 (a third of it), batch 256
 * sequences per discriminator step. */
#define T 512.0
#define VOCAB 30522.0
#define LAYERS 12.0
#define H_DISC 768.0
#define H_GEN 256.0
#define MASK 0.15

/* Forward FLOPs of one sequence through the blocks: 2 P T + 4 T^2 h per
 * block (P = 12 h^2 parameters: attention and MLP matrices; the T^2 term
 * is the attention scores and their use), as bench_planner's block_fit. */
static double blocks_fwd(double h)
{
    return LAYERS * (2 * 12 * h * h * T + 4 * T * T * h);
}

/* Forward, backward (twice the forward) and head of one sequence.
 * Discriminator: a dense h x h layer and a 1-logit output at every token.
 * Generator: a dense h x h layer and the tied h x V output at the masked
 * 15% only (as ELECTRA computes it), whose softmax it samples from (the
 * sampling itself is negligible). */
static double disc_flops(void)
{
    return 3 * (blocks_fwd(H_DISC) + 2 * (H_DISC * H_DISC + H_DISC) * T);
}

static double gen_flops(void)
{
    return 3 * (blocks_fwd(H_GEN) + 2 * (H_GEN * H_GEN + H_GEN * VOCAB) * MASK * T);
}

/* Gradient bytes (fp32) of the parameters: blocks, token and position
 * embeddings, head. */
static double grad_bytes(double h, int gen)
{
    double p = LAYERS * 12 * h * h + VOCAB * h + T * h + h * h + (gen ? VOCAB : h);
    return 4 * p;
}

typedef struct {
    const char *name;
    int n_gen;
    int batch_at_8, batch_at_64; /* sequences per discriminator step */
    double link_bw, link_lat;    /* bytes/s, s one way */
    int overlap_allreduce;       /* 1: the all-reduce hides under the backward (priced 0) */
    double device_flops;
} scenario_t;

/* All-reduce rate: NCCL inside one 8-accelerator host
 * (NB_COST_REDUCE_BW_NCCL, 100 GB/s); 12.5 GB/s (100 Gbit/s between hosts)
 * for a cluster of more than 8. */
static double reduce_bw(int devices)
{
    return devices <= 8 ? 1e11 : 12.5e9;
}

static void side(nb_em_compute_t *c, int devices, int seqs, double flops, double grads, const scenario_t *s)
{
    c->devices = devices;
    c->seqs = seqs;
    c->flops_per_seq = flops;
    c->device_flops = s->device_flops;
    /* 0.1 ms per block forward, 0.2 ms backward (launches, small kernels), as
     * bench_planner.c's block_fit */
    c->overhead = 3 * LAYERS * 1e-4;
    c->grad_bytes = s->overlap_allreduce ? 0 : grads;
    c->reduce_bw = reduce_bw(devices);
}

/* The best split of `devices` accelerators for scenario s; fills *best and
 * the discriminator's and each generator's device counts. Returns 0 or -1. */
static int best_split(const scenario_t *s, int devices, int batch, nb_em_result_t *best, int *d_disc, int *d_gen)
{
    int found = 0;
    for (int dg = 1; dg * s->n_gen < devices; dg++) {
        int dd = devices - dg * s->n_gen;
        nb_em_job_t j;
        memset(&j, 0, sizeof j);
        j.n_gen = s->n_gen;
        j.seq_len = (int)T;
        j.id_width = 2;
        j.window = 2; /* NB_ELECTRA_WINDOW */
        side(&j.disc, dd, batch, disc_flops(), grad_bytes(H_DISC, 0), s);
        for (int g = 0; g < s->n_gen; g++) {
            side(&j.gen[g], dg, batch / s->n_gen, gen_flops(), grad_bytes(H_GEN, 1), s);
            j.link[g] = (nb_em_link_t){s->link_lat, s->link_bw};
        }
        nb_em_result_t r;
        char err[160];
        if (nb_em_predict(&j, &r, err, sizeof err) != 0) {
            fprintf(stderr, "electra model: %s\n", err);
            return -1;
        }
        if (!found || r.step < best->step) {
            *best = r;
            *d_disc = dd;
            *d_gen = dg;
            found = 1;
        }
    }
    return found ? 0 : -1;
}

/* Prints the table of scenario s as comments when table is 1, stores what
 * bounds the step at 64 devices in *bound64, and returns the predicted
 * 64-over-8 speed-up (ratio of discriminator tokens/s), or < 0. */
static double run(const scenario_t *s, int table, const char **bound64)
{
    double tps8 = -1, tps64 = -1;
    if (table)
        printf("# %-7s %-13s %9s %9s %9s %9s %-8s %12s %8s\n", "devices", "disc+gens", "disc (s)", "gen (s)",
               "link (s)", "step (s)", "bound", "disc tok/s", "vs 8");
    for (int dev = 8; dev <= 64; dev *= 2) {
        int batch = s->batch_at_8 == s->batch_at_64 ? s->batch_at_8 : s->batch_at_8 * dev / 8;
        nb_em_result_t r;
        int dd, dg;
        if (best_split(s, dev, batch, &r, &dd, &dg) != 0)
            return -1;
        if (dev == 8)
            tps8 = r.tokens_per_s;
        if (dev == 64) {
            tps64 = r.tokens_per_s;
            *bound64 = nb_em_bound_name(r.bound);
        }
        if (table) {
            char split[32];
            snprintf(split, sizeof split, "%d+%dx%d", dd, s->n_gen, dg);
            double tg = 0, tx = 0;
            for (int g = 0; g < s->n_gen; g++)
                tg = fmax(tg, r.t_gen[g]), tx = fmax(tx, r.t_xfer[g]);
            printf("# %-7d %-13s %9.4f %9.4f %9.4f %9.4f %-8s %12.0f %7.2fx\n", dev, split, r.t_disc, tg, tx, r.step,
                   nb_em_bound_name(r.bound), r.tokens_per_s, r.tokens_per_s / tps8);
        }
    }
    return tps8 > 0 && tps64 > 0 ? tps64 / tps8 : -1;
}

int main(void)
{
    const scenario_t base = {"base", 2, 256, 256, 1.25e8, 0.03, 0, 40e12};
    printf("# PREDICTED by the planner's ELECTRA model (daemon/planner/electra_model.h), NOT measured.\n");
    printf("# ELECTRA-Base shapes: disc 12x768, gen 12x256, T 512, vocab 30522 (2-byte IDs); per sequence\n");
    printf("# disc %.3g FLOPs, gen %.3g FLOPs (forward + backward); grads disc %.0f MB, gen %.0f MB\n",
           disc_flops(), gen_flops(), grad_bytes(H_DISC, 0) / 1e6, grad_bytes(H_GEN, 1) / 1e6);
    printf("# base: 2 generator clusters, batch 256 per step (fixed), 40 TFLOP/s effective per accelerator,\n");
    printf("# links 1 Gbit/s and 30 ms one way, window 2, all-reduce 100 GB/s in a host of 8, 12.5 GB/s beyond,\n");
    printf("# not overlapped; each count takes its best split (disc devices + generators x devices each)\n");
    const char *b64 = "";
    double x = run(&base, 1, &b64);
    if (x < 0)
        return 1;
    printf("# the source measured 4.34x from 8 to 64 accelerators (ideal 8.00x)\n");
    const scenario_t whatif[] = {
        {"all-reduce hidden under the backward", 2, 256, 256, 1.25e8, 0.03, 1, 40e12},
        {"4 generator clusters", 4, 256, 256, 1.25e8, 0.03, 0, 40e12},
        {"batch grows with the devices (32 per accelerator)", 2, 256, 2048, 1.25e8, 0.03, 0, 40e12},
        {"links 10 Mbit/s, 100 ms one way", 2, 256, 256, 1.25e6, 0.1, 0, 40e12},
        {"accelerators 3x faster (120 TFLOP/s)", 2, 256, 256, 1.25e8, 0.03, 0, 120e12},
    };
    printf("# what if (PREDICTED, 64 vs 8):\n");
    for (size_t i = 0; i < sizeof whatif / sizeof whatif[0]; i++) {
        double y = run(&whatif[i], 0, &b64);
        if (y < 0)
            return 1;
        printf("#   %-52s %.2fx  (at 64: %s-bound)\n", whatif[i].name, y, b64);
    }
    printf("bench electra_predicted_speedup_64_vs_8 %.2f x\n", x);
    return 0;
}
