/*
 * test_stage_fenced.c - the stage runtime never dereferences device memory
 * on the host: a 2-stage pipeline (stage hosts on two threads, mailboxes
 * for links) where one daemon runs on the fenced backend
 * (tests/support/fenced_backend.h: the CPU backend's ops behind pointers
 * that fault when the host touches them) trains 4 steps with a held-out
 * evaluation, with stateful lossy codecs (int8 activations against delta
 * bases, top-k fp16 gradients with error feedback: the codec streams live
 * on the codecs' backend), and gives the all-CPU pipeline's losses, held-out losses
 * and weights bit for bit. What a GPU stage does differently from a CPU
 * stage is exercised: every host access goes through nb_be_to_host /
 * nb_be_from_host, and a backend without codec primitives (the fenced one
 * has none) encodes and decodes through the stage's staging buffer on the
 * host (daemon/pipeline/stage_codec.h). After the run the fenced daemon's
 * parts are snapshotted (checkpoints), saved as final weights and loaded
 * back (job.init). Run once with the fenced stage
 * first (embedding, labels leave it) and once with it last (the head and
 * the loss).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include "tests/pipeline/pipe_fixture.h"
#include "daemon/train/checkpoint.h"
#include "daemon/train/weights.h"
#include "tests/support/fenced_backend.h"

#define FENCE_BYTES ((size_t)512 << 20)

static char data_path[256];
static int fenced_daemon; /* which daemon runs on the fenced backend */

static nb_backend_t *new_backend(int d, int q)
{
    (void)q;
    return d == fenced_daemon ? nb_fenced_backend_new(FENCE_BYTES) : nb_cpu_backend_new();
}

static int setup(void **state)
{
    (void)state;
    snprintf(data_path, sizeof data_path, "/tmp/nb-stage-fenced-%d.tok", (int)getpid());
    return pf_write_tokens(data_path) ? -1 : 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(data_path);
    return 0;
}

/* After the run, on the fenced daemon: what a stage does with its part at a
 * checkpoint, at the end and at job.init: a snapshot of weights and
 * optimizer moments, the final weights file, and loading it back. */
static void save_and_load(void *ud, pf_worker_t *w, int n_daemons)
{
    (void)ud;
    assert_true(fenced_daemon < n_daemons);
    nb_host_t *h = w[fenced_daemon].host;
    char path[300], err[256];
    snprintf(path, sizeof path, "%s.weights", data_path);
    for (int i = 0; i < nb_host_num_stages(h); i++) {
        nb_ckpt_snap_t *snap = NULL;
        assert_int_equal(nb_ckpt_snapshot(nb_host_part(h, i), nb_host_optim(h, i), &snap, err, sizeof err), 0);
        assert_int_equal(nb_ckpt_snapshot_refresh(snap, nb_host_part(h, i), nb_host_optim(h, i), err, sizeof err), 0);
        nb_ckpt_snap_free(snap);
        assert_int_equal(nb_weights_save(path, nb_host_part(h, i), err, sizeof err), 0);
        assert_int_equal(nb_weights_load(path, nb_host_part(h, i), err, sizeof err), 0);
        assert_int_equal(nb_weights_load_part(path, nb_host_part(h, i), err, sizeof err), 0);
    }
    unlink(path);
}

static pf_job_t job(void)
{
    pf_job_t j = pf_job_default(data_path);
    j.model.n_layer = 2;
    j.steps = 4;
    j.optim.total_steps = 4;
    j.m = 2;
    j.eval_fraction = 0.1;
    j.eval_batches = 2;
    j.eval_every = 2;
    return j;
}

static void check(int fenced)
{
    pf_job_t j = job();
    nb_pipe_layout_t l;
    int placement[2] = { 0, 1 };
    pf_layout(&j, 2, placement, 2, &l);
    pf_result_t ref, got;
    assert_int_equal(pf_run_pipeline(&j, &l, "1f1b", "int8(delta)", "fp16(topk(0.25),ef)", &ref), 0);
    fenced_daemon = fenced;
    j.new_backend = new_backend;
    nb_fenced_trap(); /* after cmocka's handler of this test, which it calls */
    assert_int_equal(pf_run_pipeline_with(&j, &l, "1f1b", "int8(delta)", "fp16(topk(0.25),ef)", NULL, save_and_load,
                                          NULL, &got), 0);
    for (int s = 0; s < j.steps; s++) {
        printf("  fenced daemon %d step %d loss %.9g (cpu %.9g) held-out %.9g (cpu %.9g)\n", fenced, s + 1,
               got.loss[s], ref.loss[s], got.eval_loss[s], ref.eval_loss[s]);
        assert_memory_equal(&got.loss[s], &ref.loss[s], sizeof(double));
        assert_memory_equal(&got.eval_loss[s], &ref.eval_loss[s], sizeof(double));
    }
    assert_int_equal(got.n_evals, 2);
    assert_int_equal(got.n_evals, ref.n_evals);
    assert_int_equal(got.ntensors, ref.ntensors);
    for (int k = 0; k < ref.ntensors; k++) {
        assert_string_equal(got.names[k], ref.names[k]);
        assert_int_equal(got.numel[k], ref.numel[k]);
        assert_memory_equal(got.values[k], ref.values[k], got.numel[k] * sizeof(float));
    }
    pf_result_free(&ref);
    pf_result_free(&got);
}

static void test_fenced_first(void **state)
{
    (void)state;
    check(0);
}

static void test_fenced_head(void **state)
{
    (void)state;
    check(1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fenced_first),
        cmocka_unit_test(test_fenced_head),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
