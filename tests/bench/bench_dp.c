/* bench_dp.c - one stage daemon hosting a whole small GPT (two stages,
 * 1F1B) with 1 CPU replica and with 2, the same BLAS threads in total
 * (OPENBLAS_NUM_THREADS, default one per core: 1 replica gets all of them,
 * 2 replicas half each). A correctness and overhead check, not a speed-up
 * claim. The two runs alternate step by step (12 timed steps each after a
 * warm-up), so that the load of a shared machine falls on both alike.
 * Prints
 *   bench dp_cpu_2replica_max_rel_loss_diff <v> ratio  largest relative
 *       difference of a step's loss, 2 replicas against 1
 *   bench dp_cpu_2replica_step_ratio <v> ratio  median step time (run +
 *       optimizer) with 2 replicas / with 1
 * and fails when the losses differ by more than 1e-6. Run from the
 * repository root. */
#include <stdio.h>
#include <stdlib.h>
#include "daemon/clock.h"
#include "kernels/cpu_level.h"
#include "tests/pipeline/pipe_fixture.h"

enum { STEPS = 13 }; /* the first is a warm-up, not timed */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

typedef struct {
    int R;
    nb_backend_t *bes[2];
    nb_host_t *h;
    double loss[STEPS], time_s[STEPS];
} run_t;

/* One step of run r: the BLAS threads shared among its replicas first (the
 * two runs alternate step by step, so that a change of the machine's load
 * falls on both alike). */
static int step(run_t *r, const nb_step_plan_t *plan)
{
    char err[512];
    nb_pipe_io_i io = { pf_send, pf_recv, NULL }; /* both stages are local: no link */
    nb_step_result_t res;
    nb_cpu_blas_share(r->R);
    uint64_t t0 = nb_mono_ns();
    int rc = nb_host_run_step(r->h, plan, &io, 10000, &res, err, sizeof err);
    if (rc) {
        fprintf(stderr, "bench_dp: %d replica(s), step %lld: %s\n", r->R, (long long)plan->step, err);
        return rc;
    }
    nb_host_apply(r->h, plan->step, res.grad_sumsq);
    r->time_s[plan->step] = (double)(nb_mono_ns() - t0) / 1e9;
    r->loss[plan->step] = res.loss;
    return 0;
}

int main(void)
{
    char data[256];
    snprintf(data, sizeof data, "/tmp/nb-bench-dp-%d.tok", (int)getpid());
    if (pf_write_tokens(data)) {
        fprintf(stderr, "bench_dp: cannot write %s\n", data);
        return 1;
    }
    pf_job_t j = pf_job_default(data);
    j.model = (nb_model_config_t){ .n_layer = 4, .d_model = 256, .n_head = 8, .d_ff = 1024, .vocab = 256,
                                   .max_seq = 64, .causal = true, .norm = NB_MODEL_NORM_PRE,
                                   .head = NB_MODEL_HEAD_LM };
    j.B = 8;
    j.T = 64;
    j.m = 2;
    int place[2] = { 0, 0 };
    nb_pipe_layout_t l;
    pf_layout(&j, 2, place, 1, &l);
    int threads = nb_cpu_blas_threads_total();
    run_t runs[2] = { { .R = 1 }, { .R = 2 } };
    int rc = 0;
    for (int k = 0; k < 2 && rc == 0; k++) {
        char err[512];
        for (int q = 0; q < runs[k].R; q++)
            runs[k].bes[q] = nb_cpu_backend_new();
        if ((rc = nb_host_new_replicas(runs[k].bes, runs[k].R, &l, 0, data, &runs[k].h, err, sizeof err)))
            fprintf(stderr, "bench_dp: %s\n", err);
    }
    nb_step_plan_t plan;
    memset(&plan, 0, sizeof plan);
    plan.m = j.m;
    nb_sched_parse("1f1b", &plan.sched);
    snprintf(plan.fwd_codec, sizeof plan.fwd_codec, "fp32");
    snprintf(plan.bwd_codec, sizeof plan.bwd_codec, "fp32");
    for (int s = 0; s < STEPS && rc == 0; s++) {
        plan.step = s;
        for (int k = 0; k < 2 && rc == 0; k++)
            rc = step(&runs[k], &plan);
    }
    for (int k = 0; k < 2; k++) {
        nb_host_free(runs[k].h);
        for (int q = 0; q < 2; q++)
            if (runs[k].bes[q])
                nb_be_free(runs[k].bes[q]);
    }
    unlink(data);
    if (rc)
        return 1;
    double *loss1 = runs[0].loss, *loss2 = runs[1].loss;
    double t1 = median(runs[0].time_s + 1, STEPS - 1), t2 = median(runs[1].time_s + 1, STEPS - 1);
    double worst = 0.0;
    for (int s = 0; s < STEPS; s++) {
        double d = fabs(loss1[s] - loss2[s]) / fabs(loss1[s]);
        if (!(d <= worst))
            worst = d;
    }
    printf("# model 4 x 256 (d_ff 1024), micro-batch 8 x 64 tokens, m %d, %d BLAS threads in total; median "
           "step %.3f s with 1 replica, %.3f s with 2; last loss %.6f / %.6f\n",
           j.m, threads, t1, t2, loss1[STEPS - 1], loss2[STEPS - 1]);
    printf("bench dp_cpu_2replica_max_rel_loss_diff %.3g ratio\n", worst);
    printf("bench dp_cpu_2replica_step_ratio %.3f ratio\n", t2 / t1);
    return worst <= 1e-6 ? 0 : 1;
}
