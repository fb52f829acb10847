/* test_cuda_replicas.c - a stage run as two replicas on two CUDA devices
 * (the NCCL engine, docs/pipeline.md "Replicas") trains like one replica on
 * one device: two stages hosted on one daemon, micro-batches of 3 sequences
 * (split 2 + 1), 1F1B, two steps of a two-block model, lm untied and mlm with tied embeddings
 * (the head's share of wte reduced after the last backward); the step
 * losses within 1e-5 relative,
 * the final weights within 1e-3 of each tensor's largest value (the split
 * changes the order of the gradient sums: not bit-exact, as on the CPU),
 * and the two replicas bit-identical after every step; a device lost
 * mid-step (the emulated NCCL fails) fails the step with NCCL's reason.
 *
 * On the emulated device (NB_CUDA_EMU_DEVICES=2, which this test sets) and
 * on a machine with two GPUs; skipped with the reason with fewer devices or
 * without a CUDA module. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include "kernels/backend.h"
#include "tests/pipeline/pipe_fixture.h"

static char data_path[256];

static int setup(void **state)
{
    (void)state;
    snprintf(data_path, sizeof data_path, "/tmp/nb-cuda-replicas-%d.tok", (int)getpid());
    return pf_write_tokens(data_path) ? -1 : 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(data_path);
    return 0;
}

enum { STEPS = 2 };

/* Part i's parameters on replica r, on the host (malloc'd). */
static float *params_of(nb_host_t *h, int i, int r, size_t *n)
{
    nb_part_t *p = nb_host_replica_part(h, i, r);
    *n = nb_part_num_params(p);
    float *out = malloc(*n * sizeof(float));
    assert_non_null(out);
    nb_be_to_host(nb_part_backend(p), out, nb_part_params(p), *n * sizeof(float));
    return out;
}

/* Runs STEPS steps of the two-stage job on a host over bes[0..R-1]; losses
 * in loss[]. Checks the replicas bit-identical after each step. */
static nb_host_t *train(nb_backend_t **bes, int R, bool mlm_tied, double *loss)
{
    pf_job_t j = pf_job_default(data_path);
    j.B = 3;
    j.model.n_layer = 2; /* one block per stage: the emulation is slow */
    if (mlm_tied) {
        j.model.head = NB_MODEL_HEAD_MLM;
        j.model.vocab = 257; /* byte tokens + the mask token */
        j.model.causal = false;
        j.model.tie_embeddings = true;
    }
    int place[2] = { 0, 0 };
    nb_pipe_layout_t l;
    pf_layout(&j, 2, place, 1, &l);
    nb_step_plan_t plan;
    memset(&plan, 0, sizeof plan);
    plan.m = 2;
    nb_sched_parse("1f1b", &plan.sched);
    snprintf(plan.fwd_codec, sizeof plan.fwd_codec, "fp32");
    snprintf(plan.bwd_codec, sizeof plan.bwd_codec, "fp32");
    nb_pipe_io_i io = { pf_send, pf_recv, NULL }; /* both stages local */
    nb_host_t *h;
    char err[256] = "";
    int rc = nb_host_new_replicas(bes, R, &l, 0, data_path, &h, err, sizeof err);
    if (rc)
        printf("host: %s\n", err);
    assert_int_equal(rc, 0);
    assert_int_equal(nb_host_replicas(h), R);
    for (int s = 0; s < STEPS; s++) {
        plan.step = s;
        nb_step_result_t res;
        rc = nb_host_run_step(h, &plan, &io, 60000, &res, err, sizeof err);
        if (rc)
            printf("step %d: %s\n", s, err);
        assert_int_equal(rc, 0);
        loss[s] = res.loss;
        assert_true(nb_host_apply(h, s, res.grad_sumsq));
        for (int i = 0; i < nb_host_num_stages(h); i++)
            for (int r = 1; r < R; r++) {
                size_t n0, n1;
                float *w0 = params_of(h, i, 0, &n0), *w1 = params_of(h, i, r, &n1);
                assert_int_equal(n0, n1);
                assert_memory_equal(w0, w1, n0 * sizeof(float));
                free(w0);
                free(w1);
            }
    }
    const char *m = getenv("NEBULA_CUDA_MODULE");
    if (R > 1 && !mlm_tied && m && strstr(m, "cuda-emu")) {
        /* a device lost mid-step (the emulated NCCL fails its calls): the
         * step fails with NCCL's reason */
        plan.step = STEPS;
        nb_step_result_t res;
        setenv("NB_NCCL_EMU_FAIL", "1", 1);
        rc = nb_host_run_step(h, &plan, &io, 60000, &res, err, sizeof err);
        unsetenv("NB_NCCL_EMU_FAIL");
        printf("lost device: %s\n", err);
        assert_int_not_equal(rc, 0);
        assert_non_null(strstr(err, "across 2 CUDA devices: unhandled system error"));
    }
    return h;
}

static void two_devices_match_one(bool mlm_tied)
{
    const char *why = NULL;
    nb_backend_t *bes[2] = { nb_cuda_backend_new(0, &why), NULL };
    if (bes[0])
        bes[1] = nb_cuda_backend_new(1, &why);
    if (!bes[1]) {
        printf("two CUDA devices unavailable: %s\n", why ? why : "?");
        if (bes[0])
            nb_be_free(bes[0]);
        skip();
    }
    if (!nb_be_supports(bes[0], NB_OP_ATTENTION_BWD) || !nb_be_supports(bes[0], NB_OP_LAYERNORM_BWD) ||
        !nb_be_supports(bes[0], NB_OP_XENT_FWD_BWD)) {
        printf("the CUDA backend lacks the model's ops\n");
        fail();
    }
    double one[STEPS], two[STEPS];
    nb_host_t *h1 = train(bes, 1, mlm_tied, one);
    nb_host_t *h2 = train(bes, 2, mlm_tied, two);
    double worst_loss = 0, worst_w = 0;
    for (int s = 0; s < STEPS; s++) {
        double d = fabs(one[s] - two[s]) / fabs(one[s]);
        printf("step %d: loss %.7f (1 device) %.7f (2 devices), rel diff %.2g\n", s, one[s], two[s], d);
        worst_loss = fmax(worst_loss, d);
        assert_true(isfinite(one[s]) && d <= 1e-5);
    }
    for (int i = 0; i < nb_host_num_stages(h1); i++) {
        size_t n1, n2;
        float *w1 = params_of(h1, i, 0, &n1), *w2 = params_of(h2, i, 0, &n2);
        assert_int_equal(n1, n2);
        double big = 0, diff = 0;
        for (size_t k = 0; k < n1; k++) {
            big = fmax(big, fabs(w1[k]));
            diff = fmax(diff, fabs((double)w1[k] - w2[k]));
        }
        worst_w = fmax(worst_w, diff / big);
        assert_true(diff <= 1e-3 * big);
        free(w1);
        free(w2);
    }
    printf("%s: 2 CUDA replicas (NCCL) against 1: loss rel diff %.2g, weight diff %.2g of the largest, "
           "replicas bit-identical\n", mlm_tied ? "mlm tied" : "lm", worst_loss, worst_w);
    nb_host_free(h2);
    nb_host_free(h1);
    nb_be_free(bes[1]);
    nb_be_free(bes[0]);
}

static void test_lm(void **state)
{
    (void)state;
    two_devices_match_one(false);
}

static void test_mlm_tied(void **state)
{
    (void)state;
    two_devices_match_one(true);
}

int main(void)
{
    setenv("NB_CUDA_EMU_DEVICES", "2", 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lm),
        cmocka_unit_test(test_mlm_tied),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
