/*
 * test_stage_replicas.c - a stage run as several CPU replicas (data parallel
 * inside a daemon) trains like one replica: the same per-step losses and
 * weights within 1e-6 relative, for the lm and mlm heads, even and uneven
 * batch splits, tied embeddings and a pipeline of two daemons; the replicas
 * stay bit-identical after every step; the batch split and the fixed-order
 * reduction are what docs/pipeline.md says, and the reduction overlapped
 * with the last backward gives the bits of one after it; an aborted step
 * run again and a restore into replica 0 leave the replicas identical; a micro-batch smaller than the
 * replica count and a replica's failure are refused with a message naming
 * them.
 *
 * Not bit-exact against one replica: splitting the batch changes the order
 * in which a weight's gradient terms are summed (per shard, then across the
 * shards), which rounds differently in float.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include "daemon/pipeline/replica_reduce.h"
#include "daemon/pipeline/stage_replicas.h"
#include "tests/pipeline/pipe_fixture.h"

static char data_path[256];

static int setup(void **state)
{
    (void)state;
    snprintf(data_path, sizeof data_path, "/tmp/nb-stage-replicas-%d.tok", (int)getpid());
    return pf_write_tokens(data_path) ? -1 : 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(data_path);
    return 0;
}

static void test_shard_split(void **state)
{
    (void)state;
    int f, n;
    nb_reps_shard(5, 2, 0, &f, &n);
    assert_true(f == 0 && n == 3); /* the first B mod R replicas take one more */
    nb_reps_shard(5, 2, 1, &f, &n);
    assert_true(f == 3 && n == 2);
    int want[3][2] = { { 0, 3 }, { 3, 2 }, { 5, 2 } };
    for (int r = 0; r < 3; r++) {
        nb_reps_shard(7, 3, r, &f, &n);
        assert_int_equal(f, want[r][0]);
        assert_int_equal(n, want[r][1]);
    }
    nb_reps_shard(4, 4, 3, &f, &n);
    assert_true(f == 3 && n == 1);
}

static void test_reduce_fixed_order(void **state)
{
    (void)state;
    /* (1e8 + 1) + -1e8 = 0 in float, 1e8 + (1 + -1e8) = 0 too, but
     * (1e8 + -1e8) + 1 = 1: the order is replica 0, 1, 2 */
    float a[3] = { 1e8f, 1.0f, 3.0f }, b[3] = { 1.0f, 2.0f, 4.0f }, c[3] = { -1e8f, 3.0f, 5.0f };
    float *bufs[3] = { a, b, c };
    nb_backend_t *be[3] = { nb_cpu_backend_new(), nb_cpu_backend_new(), nb_cpu_backend_new() };
    const char *why = NULL;
    nb_reduce_t *e = nb_reduce_new(be, 3, &why);
    assert_non_null(e);
    char err[128];
    assert_int_equal(nb_reduce_allreduce(e, bufs, 3, err, sizeof err), 0);
    float want0 = (1e8f + 1.0f) + -1e8f;
    for (int r = 0; r < 3; r++) {
        assert_true(memcmp(&bufs[r][0], &want0, sizeof want0) == 0);
        assert_true(bufs[r][1] == 6.0f && bufs[r][2] == 12.0f);
    }
    nb_reduce_free(e);
    for (int r = 0; r < 3; r++)
        nb_be_free(be[r]);
}

/* ---- a pipeline whose daemons run replicas ---- */

typedef struct {
    double loss_rel, weight_rel, weight_rel_all;
    bool identical;
} dp_cmp_t;

typedef struct {
    const int *reps;
    bool identical;
} dp_check_t;

/* After a run: each daemon has its replica count, reduced during the last
 * backward (not all after it), and every replica of every stage holds
 * replica 0's bits. */
static void check_replicas(void *ud, pf_worker_t *w, int n_daemons)
{
    dp_check_t *c = ud;
    for (int d = 0; d < n_daemons; d++) {
        int reps = c->reps[d];
        assert_int_equal(nb_host_replicas(w[d].host), reps);
        assert_true(reps > 1 ? nb_host_overlapped(w[d].host) > 0 : nb_host_overlapped(w[d].host) == 0);
        for (int i = 0; i < nb_host_num_stages(w[d].host); i++) {
            nb_part_t *p0 = nb_host_part(w[d].host, i);
            assert_ptr_equal(nb_host_replica_part(w[d].host, i, 0), p0);
            size_t bytes = nb_part_num_params(p0) * sizeof(float);
            for (int q = 1; q < reps; q++)
                if (memcmp(nb_part_params(nb_host_replica_part(w[d].host, i, q)), nb_part_params(p0), bytes))
                    c->identical = false;
        }
    }
}

/* Runs j with fp32 codecs, daemon d with reps[d] CPU replicas; fills r and
 * *identical (every replica of every stage holds the same bits as replica
 * 0 at the end). */
static int run_dp(const pf_job_t *j, const nb_pipe_layout_t *l, const char *sched, const int *reps,
                  pf_result_t *r, bool *identical)
{
    dp_check_t c = { reps, true };
    int rc = pf_run_pipeline_with(j, l, sched, "fp32", "fp32", reps, check_replicas, &c, r);
    *identical = c.identical;
    return rc;
}

/* Weights are compared without the key third of every qkv bias
 * (pf_weight_rel_diff_skip): a key bias has a zero gradient in exact
 * arithmetic (softmax does not change when every score of a row moves by
 * the same amount), so what float computes for it is rounding noise, which
 * AdamW's g / sqrt(v) turns into steps of the learning rate's size whatever
 * its magnitude. Two summation orders give two noises, hence two different
 * key biases: no tolerance on them says anything about the replicas. */

/* The job with reps replicas on each daemon against one replica on each. */
static dp_cmp_t compare(const pf_job_t *j, int p, const int *placement, int n_daemons, const char *sched,
                        const int *reps)
{
    nb_pipe_layout_t l;
    pf_layout(j, p, placement, n_daemons, &l);
    int ones[NB_SCHED_MAX_STAGES];
    for (int d = 0; d < n_daemons; d++)
        ones[d] = 1;
    pf_result_t one, many;
    bool same1, same;
    assert_int_equal(run_dp(j, &l, sched, ones, &one, &same1), 0);
    assert_int_equal(run_dp(j, &l, sched, reps, &many, &same), 0);
    char worst[32] = "";
    char worst_all[32] = "";
    dp_cmp_t c = { pf_loss_rel_diff(&one, &many), pf_weight_rel_diff_skip(&one, &many, j->model.d_model, worst),
                   pf_weight_rel_diff(&one, &many, worst_all), same };
    printf("  %d stage(s) on %d daemon(s), %s, B %d: loss rel diff %.3g, weight rel diff %.3g (%s; %.3g with the "
           "key biases, %s), replicas %s\n", p, n_daemons, sched, j->B, c.loss_rel, c.weight_rel, worst,
           c.weight_rel_all, worst_all, same ? "bit-identical" : "DIFFER");
    for (int s = 0; s < j->steps; s++)
        assert_true(isfinite(many.loss[s]));
    pf_result_free(&one);
    pf_result_free(&many);
    return c;
}

/* The losses within 1e-6 relative (the bar). The weights cannot
 * be held to 1e-6: AdamW divides each gradient by its own running size, so
 * an element whose gradient is tiny (attention keys: see weight_rel_diff)
 * moves by about the learning rate whichever way rounding tips it. After 6
 * steps at lr 3e-3 the measured differences are 2e-6 to 1.2e-5 of each
 * tensor's largest weight, 8e-5 at most with the key biases; the bounds below leave
 * a margin of 8 to 25 for other BLAS kernels. A missing reduction, a
 * per-shard loss normalisation or diverged replicas move them by 1e-2 and
 * more. */
static void expect_equal(dp_cmp_t c)
{
    assert_true(c.loss_rel <= 1e-6);
    assert_true(c.weight_rel <= 1e-4);
    assert_true(c.weight_rel_all <= 2e-3);
    assert_true(c.identical);
}

static void test_lm_two_daemons(void **state)
{
    (void)state;
    pf_job_t j = pf_job_default(data_path);
    j.steps = 6;
    j.B = 4; /* 2 + 2 */
    int place[2] = { 0, 1 }, reps[2] = { 2, 2 };
    expect_equal(compare(&j, 2, place, 2, "1f1b", reps));
    j.B = 3; /* uneven: 2 + 1; only the head's daemon split */
    int reps_b[2] = { 1, 2 };
    expect_equal(compare(&j, 2, place, 2, "gpipe", reps_b));
}

static void test_mlm_tied_one_daemon(void **state)
{
    (void)state;
    pf_job_t j = pf_job_default(data_path);
    j.steps = 6;
    j.B = 5; /* 2 + 2 + 1 over 3 replicas */
    j.model.head = NB_MODEL_HEAD_MLM;
    j.model.vocab = 257; /* byte tokens + the mask token */
    j.model.causal = false;
    j.model.tie_embeddings = true;
    int place[2] = { 0, 0 }, reps[1] = { 3 };
    expect_equal(compare(&j, 2, place, 1, "1f1b", reps));
}

static nb_freeze_spec_t freeze_of(const char *const *pats, int n)
{
    nb_freeze_spec_t f;
    memset(&f, 0, sizeof f);
    f.n_freeze = n;
    for (int i = 0; i < n; i++)
        snprintf(f.freeze[i], sizeof f.freeze[i], "%s", pats[i]);
    return f;
}

/* Frozen tensors (job.freeze) on every replica: the reduction covers the
 * trainable tensors' gradient buffer (its buckets at their gradient
 * offsets), and the run equals one replica as without freezing; a frozen
 * tied wte needs no wait for the head's share. */
static void test_frozen_replicas(void **state)
{
    (void)state;
    pf_job_t j = pf_job_default(data_path);
    j.steps = 6;
    j.B = 4;
    j.freeze = freeze_of((const char *[]){ "wte", "wpe", "h0.*", "h2.fc.w" }, 4);
    int place[2] = { 0, 1 }, reps[2] = { 2, 2 };
    expect_equal(compare(&j, 2, place, 2, "1f1b", reps));
    j = pf_job_default(data_path);
    j.steps = 6;
    j.B = 5;
    j.model.tie_embeddings = true;
    j.freeze = freeze_of((const char *[]){ "wte", "h1.qkv.*" }, 2);
    int place1[2] = { 0, 0 }, reps1[1] = { 3 };
    expect_equal(compare(&j, 2, place1, 1, "1f1b", reps1));
}

static void test_refusals(void **state)
{
    (void)state;
    pf_job_t j = pf_job_default(data_path);
    j.B = 2;
    j.steps = 1;
    int place[2] = { 0, 1 };
    nb_pipe_layout_t l;
    pf_layout(&j, 2, place, 2, &l);
    /* B < R: refused before anything runs, naming both */
    nb_backend_t *bes[3] = { nb_cpu_backend_new(), nb_cpu_backend_new(), nb_cpu_backend_new() };
    nb_host_t *h = NULL;
    char err[256];
    assert_int_equal(nb_host_new_replicas(bes, 3, &l, 1, NULL, &h, err, sizeof err), 0);
    nb_step_plan_t plan;
    memset(&plan, 0, sizeof plan);
    plan.m = 1;
    nb_sched_parse("gpipe", &plan.sched);
    snprintf(plan.fwd_codec, sizeof plan.fwd_codec, "fp32");
    snprintf(plan.bwd_codec, sizeof plan.bwd_codec, "fp32");
    nb_pipe_io_i io = { pf_send, pf_recv, NULL };
    nb_step_result_t res;
    assert_int_equal(nb_host_run_step(h, &plan, &io, 100, &res, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "micro-batch of 2 sequences cannot be split across this daemon's 3 replicas"));
    nb_host_free(h);

    /* a replica that fails fails the pass, named */
    nb_part_spec_t spec = { .embed = true, .first = 0, .last = 1, .head = false };
    nb_part_t *p0;
    assert_int_equal(nb_part_new(bes[0], &j.model, &spec, 1, NULL, &p0, err, sizeof err), 0);
    nb_optim_segment_t seg = { .offset = 0, .numel = nb_part_num_params(p0), .decay = false, .grad_offset = 0 };
    nb_optim_t *o0;
    assert_int_equal(nb_optim_new(bes[0], &j.optim, nb_part_num_params(p0), &seg, 1, &o0), 0);
    nb_reps_t *s;
    assert_int_equal(nb_reps_new(p0, o0, bes, 2, &j.optim, 1, NULL, &s, err, sizeof err), 0);
    nb_reps_acts_t *a;
    assert_int_equal(nb_reps_acts_new(s, 1, 4, &a), NB_EINVAL); /* B < R */
    assert_int_equal(nb_reps_acts_new(s, 2, 4, &a), 0);
    int32_t tokens[8] = { 1, 2, 3, 4, 5, 6, 999, 8 }; /* replica 1's shard holds a token outside the vocabulary */
    nb_part_input_t in = { .tokens = tokens };
    assert_int_equal(nb_reps_forward(s, a, &in, NULL, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "forward failed on replica 1 of 2"));
    nb_reps_acts_free(a);
    nb_reps_free(s);
    nb_optim_free(o0);
    nb_part_free(p0);
    for (int r = 0; r < 3; r++)
        nb_be_free(bes[r]);
}

/* The last backward reduces its gradients bucket by bucket as they become
 * final, with the same bits as a reduction after it; a backward after the
 * last one is refused until the reduction. */
static void overlapped_reduce(const nb_freeze_spec_t *fz)
{
    pf_job_t j = pf_job_default(data_path);
    nb_backend_t *bes[2] = { nb_cpu_backend_new(), nb_cpu_backend_new() };
    nb_part_spec_t spec = { .embed = false, .first = 0, .last = 3, .head = false };
    char err[256];
    nb_part_t *p0;
    assert_int_equal(nb_part_new(bes[0], &j.model, &spec, 3, NULL, &p0, err, sizeof err), 0);
    if (fz) /* frozen tensors: the buckets are ranges of the trainable tensors' gradients */
        assert_int_equal(nb_part_freeze(p0, fz), 0);
    size_t n = nb_part_num_grads(p0);
    nb_optim_t *o0;
    assert_int_equal(nb_part_optim_new(p0, &j.optim, &o0), 0);
    nb_reps_t *s;
    assert_int_equal(nb_reps_new(p0, o0, bes, 2, &j.optim, 3, NULL, &s, err, sizeof err), 0);
    nb_reps_acts_t *a;
    int B = 3, T = 8, C = j.model.d_model;
    assert_int_equal(nb_reps_acts_new(s, B, T, &a), 0);
    size_t nx = (size_t)B * T * C;
    float *x = malloc(nx * sizeof *x), *dout = malloc(nx * sizeof *dout);
    for (size_t i = 0; i < nx; i++) {
        x[i] = (float)sin(0.37 * (double)i);
        dout[i] = (float)cos(0.11 * (double)i) * 1e-2f;
    }
    nb_part_input_t in = { .x = x };
    float *after = malloc(n * sizeof *after);
    for (int pass = 0; pass < 2; pass++) {
        bool last = pass == 1;
        nb_reps_zero_grad(s);
        assert_int_equal(nb_reps_forward(s, a, &in, NULL, err, sizeof err), 0);
        assert_int_equal(nb_reps_backward(s, a, dout, last, err, sizeof err), 0);
        assert_int_equal(nb_reps_overlapped(s), last ? n : 0);
        if (last) { /* its buckets are reduced: another backward would add to them */
            assert_int_equal(nb_reps_forward(s, a, &in, NULL, err, sizeof err), 0);
            assert_int_equal(nb_reps_backward(s, a, dout, false, err, sizeof err), NB_ESTATE);
            assert_non_null(strstr(err, "after the step's last"));
            /* a fault before the reduction: the abort zeroes the gradients
             * and the step's backward runs again */
            nb_reps_zero_grad(s);
            assert_int_equal(nb_reps_forward(s, a, &in, NULL, err, sizeof err), 0);
            assert_int_equal(nb_reps_backward(s, a, dout, true, err, sizeof err), 0);
        }
        assert_int_equal(nb_reps_reduce(s, err, sizeof err), 0);
        const float *g0 = nb_part_grads(nb_reps_part(s, 0)), *g1 = nb_part_grads(nb_reps_part(s, 1));
        assert_memory_equal(g0, g1, n * sizeof(float));
        if (!last)
            memcpy(after, g0, n * sizeof(float));
        else
            assert_memory_equal(after, g0, n * sizeof(float)); /* same bits as after the backward */
    }
    free(after);
    free(x);
    free(dout);
    nb_reps_acts_free(a);
    nb_reps_free(s);
    nb_optim_free(o0);
    nb_part_free(p0);
    nb_be_free(bes[0]);
    nb_be_free(bes[1]);
}

static void test_overlapped_reduce(void **state)
{
    (void)state;
    overlapped_reduce(NULL);
    nb_freeze_spec_t fz = freeze_of((const char *[]){ "h0.qkv.w", "h1.*", "h2.ln2.b" }, 3);
    overlapped_reduce(&fz);
}

/* A step aborted half-way (a fault) and run again gives the bits of a step
 * run once, on every replica; filling replica 0 (a checkpoint restore, an
 * import) and syncing makes the replicas identical again. */
static void test_abort_and_sync(void **state)
{
    (void)state;
    pf_job_t j = pf_job_default(data_path);
    j.B = 3;
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
    nb_backend_t *bes[2][2];
    nb_host_t *h[2];
    char err[256];
    for (int k = 0; k < 2; k++) {
        bes[k][0] = nb_cpu_backend_new();
        bes[k][1] = nb_cpu_backend_new();
        assert_int_equal(nb_host_new_replicas(bes[k], 2, &l, 0, data_path, &h[k], err, sizeof err), 0);
    }
    for (int s = 0; s < 3; s++) {
        plan.step = s;
        for (int k = 0; k < 2; k++) {
            nb_step_result_t res;
            assert_int_equal(nb_host_run_step(h[k], &plan, &io, 1000, &res, err, sizeof err), 0);
            if (k == 1 && s == 1) { /* a fault after the step's gradients were reduced: run it again */
                nb_host_abort_step(h[k]);
                assert_int_equal(nb_host_run_step(h[k], &plan, &io, 1000, &res, err, sizeof err), 0);
            }
            nb_host_apply(h[k], s, res.grad_sumsq);
        }
    }
    for (int i = 0; i < nb_host_num_stages(h[0]); i++) {
        size_t bytes = nb_part_num_params(nb_host_part(h[0], i)) * sizeof(float);
        for (int r = 0; r < 2; r++)
            assert_memory_equal(nb_part_params(nb_host_replica_part(h[0], i, r)),
                                nb_part_params(nb_host_replica_part(h[1], i, r)), bytes);
    }
    /* replica 0 filled from elsewhere, then synced */
    nb_part_t *p0 = nb_host_part(h[0], 1), *p1 = nb_host_replica_part(h[0], 1, 1);
    nb_part_params(p0)[0] += 1.0f;
    nb_optim_m(nb_host_optim(h[0], 1))[0] += 1.0f;
    assert_true(memcmp(nb_part_params(p0), nb_part_params(p1), sizeof(float)) != 0);
    assert_int_equal(nb_host_sync_replicas(h[0]), 0);
    assert_memory_equal(nb_part_params(p0), nb_part_params(p1), nb_part_num_params(p0) * sizeof(float));
    /* and they step alike from there: the optimizer state came along */
    plan.step = 3;
    nb_step_result_t res;
    assert_int_equal(nb_host_run_step(h[0], &plan, &io, 1000, &res, err, sizeof err), 0);
    nb_host_apply(h[0], 3, res.grad_sumsq);
    assert_memory_equal(nb_part_params(p0), nb_part_params(p1), nb_part_num_params(p0) * sizeof(float));
    for (int k = 0; k < 2; k++) {
        nb_host_free(h[k]);
        nb_be_free(bes[k][0]);
        nb_be_free(bes[k][1]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shard_split),
        cmocka_unit_test(test_reduce_fixed_order),
        cmocka_unit_test(test_lm_two_daemons),
        cmocka_unit_test(test_mlm_tied_one_daemon),
        cmocka_unit_test(test_overlapped_reduce),
        cmocka_unit_test(test_abort_and_sync),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_frozen_replicas),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
