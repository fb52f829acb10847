/* bench_dp.c - one stage daemon hosting a whole small GPT (two stages,
 * 1F1B) with 1 CPU replica and with 2, the same BLAS threads in total
 * (OPENBLAS_NUM_THREADS, default one per core: 1 replica gets all of them,
 * 2 replicas half each). A correctness and overhead check, not a speed-up
 * claim. Prints
 *   bench dp_cpu_2replica_max_rel_loss_diff <v> ratio  largest relative
 *       difference of a step's loss, 2 replicas against 1
 *   bench dp_cpu_2replica_step_ratio <v> ratio  median step time (run +
 *       optimizer) with 2 replicas / with 1
 * and fails when the losses differ by more than 1e-6. Run from the
 * repository root. */
#include <stdio.h>
#include <stdlib.h>
#include "kernels/cpu_level.h"
#include "tests/pipeline/pipe_fixture.h"

enum { STEPS = 9 }; /* the first is a warm-up, not timed */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Runs the job on one daemon with R replicas; losses and median step time. */
static int run(const pf_job_t *j, const nb_pipe_layout_t *l, int R, double *loss, double *median_s)
{
    nb_backend_t *bes[2] = { nb_cpu_backend_new(), R > 1 ? nb_cpu_backend_new() : NULL };
    nb_host_t *h = NULL;
    char err[512];
    int rc = nb_host_new_replicas(bes, R, l, 0, j->data, &h, err, sizeof err);
    if (rc) {
        fprintf(stderr, "bench_dp: %s\n", err);
        goto out;
    }
    nb_step_plan_t plan;
    memset(&plan, 0, sizeof plan);
    plan.m = j->m;
    nb_sched_parse("1f1b", &plan.sched);
    snprintf(plan.fwd_codec, sizeof plan.fwd_codec, "fp32");
    snprintf(plan.bwd_codec, sizeof plan.bwd_codec, "fp32");
    nb_pipe_io_i io = { pf_send, pf_recv, NULL }; /* both stages are local: no link */
    double times[STEPS];
    for (int s = 0; s < STEPS && rc == 0; s++) {
        plan.step = s;
        nb_step_result_t res;
        uint64_t t0 = nb_host_now_ns();
        if ((rc = nb_host_run_step(h, &plan, &io, 10000, &res, err, sizeof err))) {
            fprintf(stderr, "bench_dp: step %d: %s\n", s, err);
            break;
        }
        nb_host_apply(h, s, res.grad_sumsq);
        times[s] = (double)(nb_host_now_ns() - t0) / 1e9;
        loss[s] = res.loss;
    }
    if (rc == 0) {
        qsort(times + 1, STEPS - 1, sizeof *times, cmp_double);
        *median_s = times[1 + (STEPS - 1) / 2];
    }
out:
    nb_host_free(h);
    nb_be_free(bes[0]);
    if (bes[1])
        nb_be_free(bes[1]);
    return rc;
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
    double loss1[STEPS], loss2[STEPS], t1 = 0, t2 = 0;
    int threads = nb_cpu_blas_threads_total();
    int rc = run(&j, &l, 1, loss1, &t1);
    if (rc == 0)
        rc = run(&j, &l, 2, loss2, &t2);
    unlink(data);
    if (rc)
        return 1;
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
