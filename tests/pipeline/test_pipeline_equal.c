/*
 * test_pipeline_equal.c - the key property of the pipeline runtime: with the
 * lossless codec, a pipeline of stage hosts produces the same per-step losses
 * and the same final weights as the single-process trainer, for 2- and
 * 3-stage chains and the U-shape, GPipe and 1F1B, m in {1, 3, 8}, over 20
 * steps, for the lm head and (every topology and schedule, m=3) the mlm
 * head, bit for bit: no difference at all is allowed. (The one sum taken in
 * another order, the global gradient norm's per-stage sums of squares, is in
 * double; its rounding is far below what changes the float clip scale.)
 * Lossy codecs (fp16, int8) end within 1% of the fp32 loss.
 * With frozen tensors (job.freeze) each stage freezes what it holds: the
 * pipeline still equals the trainer bit for bit, every frozen weight ends
 * as it was seeded, and the stages' memory shows no gradient or optimizer
 * state for them; so do adapters trained alone (job.adapters).
 *
 * Runs in one process (threads and bounded mailboxes); the daemon test runs
 * the same job over TLS.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include "tests/pipeline/pipe_fixture.h"

static char data_path[256];
static char eval_path[256]; /* a held-out file of its own (job.eval.data) */
static int write_eval_tokens(const char *path);
static pf_result_t ref_by_m[9];

static int setup(void **state)
{
    (void)state;
    snprintf(data_path, sizeof data_path, "/tmp/nb-pipe-eq-%d.tok", (int)getpid());
    snprintf(eval_path, sizeof eval_path, "/tmp/nb-pipe-eq-eval-%d.tok", (int)getpid());
    if (pf_write_tokens(data_path) || write_eval_tokens(eval_path))
        return -1;
    int ms[] = { 1, 3, 8 };
    for (size_t i = 0; i < 3; i++) {
        pf_job_t j = pf_job_default(data_path);
        j.m = ms[i];
        if (pf_run_trainer(&j, &ref_by_m[ms[i]]))
            return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < 9; i++)
        pf_result_free(&ref_by_m[i]);
    unlink(data_path);
    unlink(eval_path);
    return 0;
}

/* Equal to the bit: every per-step loss and every weight (differences are
 * relative, and NaN counts as a difference). */
static void assert_bit_equal(double loss_diff, double weight_diff, const char *worst_tensor)
{
    if (!(loss_diff == 0.0 && weight_diff == 0.0))
        fail_msg("not bit for bit: loss rel diff %.3g, weights rel diff %.3g (worst: %s)", loss_diff, weight_diff,
                 worst_tensor && worst_tensor[0] ? worst_tensor : "-");
}

typedef struct {
    const char *name;
    int p, n_daemons;
    int placement[4];
} topo_t;

static const topo_t topologies[] = {
    { "chain-2", 2, 2, { 0, 1 } },
    { "chain-3", 3, 3, { 0, 1, 2 } },
    { "ushape-3", 3, 2, { 0, 1, 0 } },
};

static void check_equal(const topo_t *t, const char *sched, int m)
{
    pf_job_t j = pf_job_default(data_path);
    j.m = m;
    nb_pipe_layout_t l;
    pf_layout(&j, t->p, t->placement, t->n_daemons, &l);
    pf_result_t r;
    assert_int_equal(pf_run_pipeline(&j, &l, sched, "fp32", "fp32", &r), 0);
    char worst[32] = "";
    double dl = pf_loss_rel_diff(&r, &ref_by_m[m]);
    double dw = pf_weight_rel_diff(&ref_by_m[m], &r, worst);
    printf("%-9s %-5s m=%d: loss rel diff %.3g, weights rel diff %.3g (%s), final loss %.5f vs %.5f\n",
           t->name, sched, m, dl, dw, worst, r.loss[j.steps - 1], ref_by_m[m].loss[j.steps - 1]);
    assert_bit_equal(dl, dw, worst);
    assert_int_equal(r.ntensors, ref_by_m[m].ntensors);
    pf_result_free(&r);
}

static void test_equal_all(void **state)
{
    (void)state;
    const char *scheds[] = { "gpipe", "1f1b" };
    int ms[] = { 1, 3, 8 };
    for (size_t t = 0; t < sizeof topologies / sizeof topologies[0]; t++)
        for (int s = 0; s < 2; s++)
            for (int k = 0; k < 3; k++)
                check_equal(&topologies[t], scheds[s], ms[k]);
}

/* The U-shape may tie the head to the embedding: both live on daemon 0. The
 * head adds its share of wte's gradient at the end of the step (the model's
 * nb_part_grads), so the summation order equals the trainer's although the
 * head's and the embedding's backwards interleave differently. */
static void test_ushape_tied_equal(void **state)
{
    (void)state;
    pf_job_t j = pf_job_default(data_path);
    j.model.tie_embeddings = true;
    pf_result_t ref, r;
    assert_int_equal(pf_run_trainer(&j, &ref), 0);
    nb_pipe_layout_t l;
    pf_layout(&j, 3, topologies[2].placement, 2, &l);
    assert_int_equal(pf_run_pipeline(&j, &l, "1f1b", "fp32", "fp32", &r), 0);
    char worst[32] = "";
    double dl = pf_loss_rel_diff(&r, &ref), dw = pf_weight_rel_diff(&ref, &r, worst);
    printf("ushape tied 1f1b m=3: loss rel diff %.3g, weights rel diff %.3g (%s)\n", dl, dw, worst);
    assert_bit_equal(dl, dw, worst);
    pf_result_free(&ref);
    pf_result_free(&r);
}

static void assert_evals_bit_equal(const char *what, const pf_job_t *j, const pf_result_t *r, const pf_result_t *ref);

/* The low-rank split (job.lowrank): block 1 split with rank 4 puts the
 * chain's cut between V and S (stages exchange (B*T, 4) instead of
 * (B*T, 32): the bytes sent say so); block 2 keeps the cut outside the
 * split block. Every topology equals the single-process trainer bit for
 * bit, training and held-out evaluation alike, and so do two replicas
 * per daemon. */
static void test_lowrank_equal(void **state)
{
    (void)state;
    int blocks[] = { 1, 2 };
    for (int b = 0; b < 2; b++) {
        pf_job_t j = pf_job_default(data_path);
        j.model.lowrank_block = blocks[b];
        j.model.lowrank_rank = 4;
        j.m = 3;
        j.eval_fraction = 0.1;
        j.eval_batches = 2;
        j.eval_every = 10;
        pf_result_t ref;
        assert_int_equal(pf_run_trainer(&j, &ref), 0);
        for (size_t t = 0; t < sizeof topologies / sizeof topologies[0]; t++) {
            nb_pipe_layout_t l;
            pf_layout(&j, topologies[t].p, topologies[t].placement, topologies[t].n_daemons, &l);
            pf_result_t r;
            assert_int_equal(pf_run_pipeline(&j, &l, "1f1b", "fp32", "fp32", &r), 0);
            char worst[32] = "";
            double dl = pf_loss_rel_diff(&r, &ref), dw = pf_weight_rel_diff(&ref, &r, worst);
            printf("lowrank block %d r 4 %-9s 1f1b m=3: loss rel diff %.3g, weights rel diff %.3g (%s), "
                   "final loss %.5f\n", blocks[b], topologies[t].name, dl, dw, worst, r.loss[j.steps - 1]);
            assert_bit_equal(dl, dw, worst);
            assert_evals_bit_equal("lowrank", &j, &r, &ref);
            assert_int_equal(r.ntensors, ref.ntensors);
            if (blocks[b] == 1 && t == 0) { /* chain-2: the cut carries r floats per position, not C */
                pf_job_t jd = pf_job_default(data_path);
                jd.m = 3;
                pf_result_t rd;
                nb_pipe_layout_t ld;
                pf_layout(&jd, topologies[t].p, topologies[t].placement, topologies[t].n_daemons, &ld);
                assert_int_equal(pf_run_pipeline(&jd, &ld, "1f1b", "fp32", "fp32", &rd), 0);
                uint64_t saved = (uint64_t)j.steps * (uint64_t)j.m * (uint64_t)j.B * (uint64_t)j.T * 2u *
                                 (uint64_t)(j.model.d_model - j.model.lowrank_rank) * sizeof(float);
                printf("  bytes on the wire: %llu dense, %llu split (%llu fewer)\n", (unsigned long long)rd.bytes_raw,
                       (unsigned long long)r.bytes_raw, (unsigned long long)(rd.bytes_raw - r.bytes_raw));
                assert_true(rd.bytes_raw - r.bytes_raw == saved);
                pf_result_free(&rd);
                /* two replicas per daemon, each with its shard of the
                 * factor: the replica rule (test_stage_replicas.c: the
                 * split batch sums in another order), not bit for bit */
                int reps[2] = { 2, 2 };
                pf_result_t rr;
                assert_int_equal(pf_run_pipeline_with(&j, &l, "1f1b", "fp32", "fp32", reps, NULL, NULL, &rr), 0);
                dl = pf_loss_rel_diff(&rr, &ref);
                dw = pf_weight_rel_diff_skip(&ref, &rr, j.model.d_model, worst);
                printf("  2 replicas per daemon: loss rel diff %.3g, weights rel diff %.3g (%s; key biases apart)\n",
                       dl, dw, worst);
                assert_true(dl <= 1e-6 && dw <= 1e-4);
                pf_result_free(&rr);
            }
            pf_result_free(&r);
        }
        pf_result_free(&ref);
    }
}

/* The mlm head: stage 0 draws masked batches exactly as nebula-train does
 * (mask token vocab-1, labels -1 where unmasked), for every topology and
 * schedule. */
static void test_mlm_equal(void **state)
{
    (void)state;
    pf_job_t j = pf_job_default(data_path);
    j.model.head = NB_MODEL_HEAD_MLM;
    j.model.causal = false;
    j.model.vocab = 257; /* byte tokens + the mask token */
    pf_result_t ref;
    assert_int_equal(pf_run_trainer(&j, &ref), 0);
    const char *scheds[] = { "gpipe", "1f1b" };
    for (size_t t = 0; t < sizeof topologies / sizeof topologies[0]; t++)
        for (int k = 0; k < 2; k++) {
            nb_pipe_layout_t l;
            pf_layout(&j, topologies[t].p, topologies[t].placement, topologies[t].n_daemons, &l);
            pf_result_t r;
            assert_int_equal(pf_run_pipeline(&j, &l, scheds[k], "fp32", "fp32", &r), 0);
            char worst[32] = "";
            double dl = pf_loss_rel_diff(&r, &ref), dw = pf_weight_rel_diff(&ref, &r, worst);
            printf("mlm %-9s %-5s m=%d: loss rel diff %.3g, weights rel diff %.3g (%s), final loss %.5f vs %.5f\n",
                   topologies[t].name, scheds[k], j.m, dl, dw, worst, r.loss[j.steps - 1], ref.loss[j.steps - 1]);
            assert_bit_equal(dl, dw, worst);
            pf_result_free(&r);
        }
    pf_result_free(&ref);
}

/* BERT's model settings (erf GELU, LayerNorm eps 1e-12) and a mask token of
 * its own (as BERT's [MASK] is not vocab - 1) reach every stage: the
 * pipeline equals the trainer bit for bit, and each setting changes the
 * run. */
static void test_bert_settings_equal(void **state)
{
    (void)state;
    pf_job_t j = pf_job_default(data_path);
    j.model.head = NB_MODEL_HEAD_MLM;
    j.model.causal = false;
    j.model.norm = NB_MODEL_NORM_POST;
    j.model.vocab = 257;
    pf_result_t plain, ref;
    assert_int_equal(pf_run_trainer(&j, &plain), 0);
    j.model.gelu = NB_MODEL_GELU_ERF;
    j.model.ln_eps = 1e-12f;
    assert_int_equal(pf_run_trainer(&j, &ref), 0);
    assert_true(ref.loss[j.steps - 1] != plain.loss[j.steps - 1]);
    pf_result_free(&plain);
    assert_int_equal(pf_run_trainer(&j, &plain), 0); /* plain: BERT's settings, mask vocab - 1 */
    j.model.mask_token = 100;
    pf_result_free(&ref);
    assert_int_equal(pf_run_trainer(&j, &ref), 0);
    assert_true(ref.loss[0] != plain.loss[0]);
    for (size_t t = 0; t < sizeof topologies / sizeof topologies[0]; t++) {
        nb_pipe_layout_t l;
        pf_layout(&j, topologies[t].p, topologies[t].placement, topologies[t].n_daemons, &l);
        pf_result_t r;
        assert_int_equal(pf_run_pipeline(&j, &l, "1f1b", "fp32", "fp32", &r), 0);
        char worst[32] = "";
        double dl = pf_loss_rel_diff(&r, &ref), dw = pf_weight_rel_diff(&ref, &r, worst);
        printf("bert erf/1e-12 mask 100 %-9s 1f1b: loss rel diff %.3g, weights rel diff %.3g (%s), final loss %.5f "
               "(mask vocab-1: %.5f)\n", topologies[t].name, dl, dw, worst, r.loss[j.steps - 1], plain.loss[j.steps - 1]);
        assert_bit_equal(dl, dw, worst);
        pf_result_free(&r);
    }
    pf_result_free(&plain);
    pf_result_free(&ref);
}

/* A NaN in one stage's gradient (test-only hook, daemon/train/grad_fault.h)
 * makes the global norm non-finite: every stage skips the step, as the
 * trainer does, so the weights stay finite and equal the trainer's. */
static void test_nonfinite_gradient_skipped_everywhere(void **state)
{
    (void)state;
    pf_job_t j = pf_job_default(data_path);
    setenv("NEBULA_TEST_NONFINITE_GRAD", "5-6@1", 1);
    pf_result_t ref, r;
    assert_int_equal(pf_run_trainer(&j, &ref), 0);
    for (size_t t = 0; t < sizeof topologies / sizeof topologies[0]; t++) {
        nb_pipe_layout_t l;
        pf_layout(&j, topologies[t].p, topologies[t].placement, topologies[t].n_daemons, &l);
        assert_int_equal(pf_run_pipeline(&j, &l, "1f1b", "fp32", "fp32", &r), 0);
        char worst[32] = "";
        double dw = pf_weight_rel_diff(&ref, &r, worst);
        printf("NaN gradient at steps 6-7 of stage 1, %s: weights rel diff %.3g (%s)\n", topologies[t].name, dw,
               worst);
        assert_bit_equal(0.0, dw, worst); /* (its losses include the skipped steps' NaN) */
        for (int i = 0; i < r.ntensors; i++)
            for (size_t e = 0; e < r.numel[i]; e++)
                assert_true(isfinite(r.values[i][e]));
        pf_result_free(&r);
    }
    unsetenv("NEBULA_TEST_NONFINITE_GRAD");
    /* the skips happened: the run differs from one without them */
    double dw = pf_weight_rel_diff(&ref, &ref_by_m[j.m], NULL);
    printf("skipped run vs clean run: weights rel diff %.3g\n", dw);
    assert_true(dw > 1e-3);
    pf_result_free(&ref);
}

/* seqcls and tokcls have no labels in a token file and no nebula-train
 * reference: a layout with either head is refused, naming the reason. */
static void test_classifier_heads_refused(void **state)
{
    (void)state;
    nb_head_kind_t heads[] = { NB_MODEL_HEAD_SEQCLS, NB_MODEL_HEAD_TOKCLS };
    for (int i = 0; i < 2; i++) {
        pf_job_t j = pf_job_default(data_path);
        j.model.head = heads[i];
        j.model.n_classes = 4;
        nb_pipe_layout_t l;
        pf_layout(&j, 2, topologies[0].placement, 2, &l);
        const char *why = nb_pipe_layout_validate(&l);
        assert_non_null(why);
        assert_non_null(strstr(why, "lm and mlm"));
        nb_backend_t *be = nb_cpu_backend_new();
        nb_host_t *h = NULL;
        char err[256];
        assert_int_equal(nb_host_new(be, &l, 0, data_path, &h, err, sizeof err), NB_EINVAL);
        assert_null(h);
        nb_be_free(be);
    }
}

/* A chain cannot tie the head to an embedding on another daemon. */
static void test_chain_tied_refused(void **state)
{
    (void)state;
    pf_job_t j = pf_job_default(data_path);
    j.model.tie_embeddings = true;
    nb_pipe_layout_t l;
    pf_layout(&j, 2, topologies[0].placement, 2, &l);
    const char *why = nb_pipe_layout_validate(&l);
    assert_non_null(why);
    assert_non_null(strstr(why, "tie_embeddings"));
}

/* A plan may trade m against B (the planner does): hosts built for B=2 run
 * plans with m=2, B=3 and equal the trainer configured that way. */
static void test_plan_changes_micro_batch_size(void **state)
{
    (void)state;
    pf_job_t built = pf_job_default(data_path); /* B=2, m=3 */
    nb_pipe_layout_t l;
    pf_layout(&built, 3, topologies[1].placement, 3, &l);
    pf_job_t j = built;
    j.m = 2;
    j.B = 3;
    j.plan_B = 3;
    pf_result_t ref, r;
    assert_int_equal(pf_run_trainer(&j, &ref), 0);
    assert_int_equal(pf_run_pipeline(&j, &l, "1f1b", "fp32", "fp32", &r), 0);
    char worst[32] = "";
    double dl = pf_loss_rel_diff(&r, &ref), dw = pf_weight_rel_diff(&ref, &r, worst);
    printf("plan B=3 m=2 on hosts built for B=2: loss rel diff %.3g, weights rel diff %.3g\n", dl, dw);
    assert_bit_equal(dl, dw, worst);
    pf_result_free(&ref);
    pf_result_free(&r);
}

/* job.precision bf16: every stage rounds its matmul inputs to bf16, so the
 * pipeline still equals the bf16 trainer bit for bit (a stage that ignored
 * the job's precision would not), while bf16 differs from fp32 and ends
 * within 2% of its loss. */
static void test_bf16_equal(void **state)
{
    (void)state;
    pf_job_t j = pf_job_default(data_path);
    j.precision = NB_PREC_BF16;
    pf_result_t ref, r;
    assert_int_equal(pf_run_trainer(&j, &ref), 0);
    nb_pipe_layout_t l;
    pf_layout(&j, 2, topologies[0].placement, 2, &l);
    assert_int_equal(pf_run_pipeline(&j, &l, "1f1b", "fp32", "fp32", &r), 0);
    char worst[32] = "";
    double dl = pf_loss_rel_diff(&r, &ref), dw = pf_weight_rel_diff(&ref, &r, worst);
    double d32 = pf_loss_rel_diff(&ref, &ref_by_m[3]);
    double last = ref.loss[j.steps - 1], last32 = ref_by_m[3].loss[j.steps - 1];
    printf("bf16 chain-2 1f1b m=3: loss rel diff %.3g, weights rel diff %.3g (%s); bf16 vs fp32 loss rel diff "
           "%.3g, final %.5f vs %.5f\n", dl, dw, worst, d32, last, last32);
    assert_bit_equal(dl, dw, worst);
    assert_true(d32 > 0.0);
    assert_true(fabs(last - last32) < 0.02 * last32);
    pf_result_free(&ref);
    pf_result_free(&r);
}

static void test_lossy_codecs_close(void **state)
{
    (void)state;
    pf_job_t j = pf_job_default(data_path);
    j.m = 3;
    nb_pipe_layout_t l;
    pf_layout(&j, 2, topologies[0].placement, 2, &l);
    const char *codecs[][2] = { { "fp16", "fp16" }, { "int8", "int8" }, { "bf16", "int8" } };
    double ref_loss = ref_by_m[3].loss[j.steps - 1];
    for (size_t i = 0; i < 3; i++) {
        pf_result_t r;
        assert_int_equal(pf_run_pipeline(&j, &l, "1f1b", codecs[i][0], codecs[i][1], &r), 0);
        double gap = fabs(r.loss[j.steps - 1] - ref_loss) / ref_loss;
        printf("codec fwd %s bwd %s: final loss %.5f vs fp32 %.5f (gap %.3f%%), wire/raw %.3f\n",
               codecs[i][0], codecs[i][1], r.loss[j.steps - 1], ref_loss, gap * 100,
               (double)r.bytes_wire / (double)r.bytes_raw);
        assert_true(gap <= 0.01);
        assert_true(r.bytes_wire < r.bytes_raw);
        pf_result_free(&r);
    }
}

/* A held-out token file of its own (job.eval.data): other text than data_path. */
static int write_eval_tokens(const char *path)
{
    enum { N = 3000 };
    uint32_t ids[N];
    uint64_t x = 99;
    for (int i = 0; i < N; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = "etaoin shrdlu"[(x >> 33) % 13];
    }
    char err[256];
    return nb_tokens_write(path, ids, N, 256, err, sizeof err);
}

static void assert_evals_bit_equal(const char *what, const pf_job_t *j, const pf_result_t *r, const pf_result_t *ref)
{
    assert_int_equal(r->n_evals, ref->n_evals);
    for (int s = 0; s < j->steps; s++) {
        if (!pf_eval_due(j, s))
            continue;
        printf("  %s: eval after step %d: %.9g vs nebula-train %.9g\n", what, s + 1, r->eval_loss[s],
               ref->eval_loss[s]);
        if (!(r->eval_loss[s] == ref->eval_loss[s] && isfinite(r->eval_loss[s])))
            fail_msg("%s: held-out loss after step %d is %.17g, nebula-train's %.17g", what, s + 1, r->eval_loss[s],
                     ref->eval_loss[s]);
    }
}

/* Held-out evaluation across the pipeline (stage_eval.h) computes
 * nb_trainer_eval's loss to the bit, after the same steps, for every
 * topology (chains pass the labels along, the U-shape, tied here, keeps
 * them), for lm and mlm, for a held-out tail (job.eval.fraction: training
 * then samples only the head, on both sides) and for a held-out file
 * (job.eval.data); and the training around it still equals the trainer's. */
static void test_eval_equal(void **state)
{
    (void)state;
    for (int variant = 0; variant < 3; variant++) {
        pf_job_t j = pf_job_default(data_path);
        j.eval_batches = 3;
        j.eval_every = 7; /* after steps 7, 14 and the last, 20 */
        const char *what = "lm fraction 0.1";
        j.eval_fraction = 0.1;
        if (variant == 1) {
            what = "mlm fraction 0.1";
            j.model.head = NB_MODEL_HEAD_MLM;
            j.model.causal = false;
            j.model.vocab = 257;
        } else if (variant == 2) {
            what = "lm eval.data";
            j.eval_fraction = 0;
            snprintf(j.eval_data, sizeof j.eval_data, "%s", eval_path);
        }
        pf_result_t ref;
        assert_int_equal(pf_run_trainer(&j, &ref), 0);
        assert_int_equal(ref.n_evals, 3);
        assert_true(ref.eval_loss[6] != ref.eval_loss[19]); /* training moved the weights */
        for (size_t t = 0; t < sizeof topologies / sizeof topologies[0]; t++) {
            pf_job_t jt = j;
            jt.model.tie_embeddings = topologies[t].placement[0] == topologies[t].placement[topologies[t].p - 1];
            pf_result_t rt, r;
            if (jt.model.tie_embeddings)
                assert_int_equal(pf_run_trainer(&jt, &rt), 0);
            nb_pipe_layout_t l;
            pf_layout(&jt, topologies[t].p, topologies[t].placement, topologies[t].n_daemons, &l);
            assert_int_equal(pf_run_pipeline(&jt, &l, t == 1 ? "gpipe" : "1f1b", "fp32", "fp32", &r), 0);
            const pf_result_t *want = jt.model.tie_embeddings ? &rt : &ref;
            char label[64], worst[32] = "";
            snprintf(label, sizeof label, "%s %s%s", what, topologies[t].name, jt.model.tie_embeddings ? " tied" : "");
            assert_evals_bit_equal(label, &jt, &r, want);
            double dl = pf_loss_rel_diff(&r, want), dw = pf_weight_rel_diff(want, &r, worst);
            printf("  %s: training loss rel diff %.3g, weights rel diff %.3g\n", label, dl, dw);
            assert_bit_equal(dl, dw, worst);
            pf_result_free(&r);
            if (jt.model.tie_embeddings)
                pf_result_free(&rt);
        }
        if (variant == 0) {
            /* the held-out tail is not trained on: the run differs from one on the whole file */
            assert_true(ref.loss[j.steps - 1] != ref_by_m[3].loss[j.steps - 1]);
        }
        pf_result_free(&ref);
    }
}

/* An evaluation touches no training state: with stateful lossy codecs
 * (delta bases on the activations, error feedback on the gradients, whose
 * streams an evaluation must not advance) a run that evaluates every 3
 * steps trains exactly as one that never evaluates, and the lossy held-out
 * loss stays close to the lossless one. */
static void test_eval_leaves_training_alone(void **state)
{
    (void)state;
    pf_job_t j = pf_job_default(data_path);
    j.eval_fraction = 0.1;
    nb_pipe_layout_t l;
    pf_layout(&j, 3, topologies[1].placement, 3, &l);
    const char *fwd = "int8(delta)", *bwd = "fp16(topk(0.25),ef)";
    pf_result_t plain, with, ref;
    assert_int_equal(pf_run_pipeline(&j, &l, "1f1b", fwd, bwd, &plain), 0);
    assert_int_equal(plain.n_evals, 0);
    j.eval_batches = 2;
    j.eval_every = 3;
    assert_int_equal(pf_run_pipeline(&j, &l, "1f1b", fwd, bwd, &with), 0);
    assert_int_equal(with.n_evals, 7);
    char worst[32] = "";
    double dl = pf_loss_rel_diff(&with, &plain), dw = pf_weight_rel_diff(&plain, &with, worst);
    printf("codecs %s / %s, evaluating every 3 steps vs never: training loss rel diff %.3g, weights rel diff %.3g\n",
           fwd, bwd, dl, dw);
    assert_bit_equal(dl, dw, worst);
    assert_int_equal(pf_run_pipeline(&j, &l, "1f1b", "fp32", "fp32", &ref), 0);
    double gap = fabs(with.eval_loss[j.steps - 1] - ref.eval_loss[j.steps - 1]) / ref.eval_loss[j.steps - 1];
    printf("final held-out loss with %s: %.5f, lossless %.5f (gap %.3f%%)\n", fwd, with.eval_loss[j.steps - 1],
           ref.eval_loss[j.steps - 1], gap * 100);
    assert_true(gap <= 0.02);
    pf_result_free(&plain);
    pf_result_free(&with);
    pf_result_free(&ref);
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

/* Every frozen tensor of r holds its seeded weights bit for bit; every
 * other one moved. */
static void assert_frozen_kept(const pf_job_t *j, const pf_result_t *r)
{
    nb_backend_t *be = nb_cpu_backend_new();
    nb_part_spec_t s = nb_part_spec_full(&j->model);
    nb_part_t *p;
    char err[256];
    assert_int_equal(nb_part_new(be, &j->model, &s, j->seed, NULL, &p, err, sizeof err), 0);
    pf_result_t seeded;
    memset(&seeded, 0, sizeof seeded);
    pf_collect_part(&seeded, p);
    int frozen = 0;
    for (int i = 0; i < r->ntensors; i++) {
        int k = -1;
        for (int q = 0; q < seeded.ntensors; q++)
            if (!strcmp(seeded.names[q], r->names[i]))
                k = q;
        assert_true(k >= 0);
        bool same = memcmp(seeded.values[k], r->values[i], r->numel[i] * sizeof(float)) == 0;
        bool is_frozen = nb_freeze_matches(&j->freeze, r->names[i]);
        if (is_frozen != same)
            fail_msg("%s is %s but %s in training", r->names[i], is_frozen ? "frozen" : "trainable",
                     same ? "did not change" : "changed");
        frozen += is_frozen;
    }
    printf("  %d frozen tensors bit-identical to their seeded weights, %d trained\n", frozen, r->ntensors - frozen);
    assert_true(frozen > 0);
    pf_result_free(&seeded);
    nb_part_free(p);
    nb_be_free(be);
}

/* Frozen tensors: the bottom of the model (the embedding, block 0) and a
 * weight higher up, in a 3-stage chain (stage 0 holds only frozen tensors
 * of block 0 and the embedding below its trainable block 1), and a tied
 * wte in the U-shape (the head on daemon 0 follows the embedding's frozen
 * wte). Each equals the trainer with the same job.freeze bit for bit, and
 * the frozen weights end as they were seeded. */
static void test_frozen_equal(void **state)
{
    (void)state;
    const char *bottom[] = { "wte", "wpe", "h0.*", "h2.fc.w" };
    pf_job_t j = pf_job_default(data_path);
    j.freeze = freeze_of(bottom, 4);
    pf_result_t ref;
    assert_int_equal(pf_run_trainer(&j, &ref), 0);
    assert_frozen_kept(&j, &ref);
    const char *scheds[] = { "gpipe", "1f1b" };
    for (size_t t = 0; t < 2; t++)
        for (int k = 0; k < 2; k++) {
            nb_pipe_layout_t l;
            pf_layout(&j, topologies[t].p, topologies[t].placement, topologies[t].n_daemons, &l);
            pf_result_t r;
            assert_int_equal(pf_run_pipeline(&j, &l, scheds[k], "fp32", "fp32", &r), 0);
            char worst[32] = "";
            double dl = pf_loss_rel_diff(&r, &ref), dw = pf_weight_rel_diff(&ref, &r, worst);
            printf("frozen %-9s %-5s m=%d: loss rel diff %.3g, weights rel diff %.3g (%s), final loss %.5f vs %.5f\n",
                   topologies[t].name, scheds[k], j.m, dl, dw, worst, r.loss[j.steps - 1], ref.loss[j.steps - 1]);
            assert_bit_equal(dl, dw, worst);
            assert_frozen_kept(&j, &r);
            pf_result_free(&r);
        }
    /* the loss still falls: the unfrozen tensors train */
    assert_true(ref.loss[j.steps - 1] < ref.loss[0]);
    pf_result_free(&ref);

    const char *wte[] = { "wte", "h1.attn*", "h1.qkv.*" };
    j = pf_job_default(data_path);
    j.model.tie_embeddings = true;
    j.freeze = freeze_of(wte, 3);
    nb_model_config_t mc = j.model;
    char why[512];
    /* "h1.attn*" names no tensor: refused, as the job would be */
    assert_int_equal(nb_freeze_check(&mc, &j.freeze, why, sizeof why), NB_EINVAL);
    printf("  refused: %s\n", why);
    assert_non_null(strstr(why, "job.freeze[1] \"h1.attn*\" matches no tensor"));
    pf_result_t bad;
    assert_int_equal(pf_run_trainer(&j, &bad), NB_EINVAL);
    j.freeze = freeze_of((const char *[]){ "wte", "h1.qkv.*" }, 2);
    assert_int_equal(pf_run_trainer(&j, &ref), 0);
    nb_pipe_layout_t l;
    pf_layout(&j, 3, topologies[2].placement, 2, &l);
    pf_result_t r;
    assert_int_equal(pf_run_pipeline(&j, &l, "1f1b", "fp32", "fp32", &r), 0);
    char worst[32] = "";
    double dl = pf_loss_rel_diff(&r, &ref), dw = pf_weight_rel_diff(&ref, &r, worst);
    printf("frozen ushape tied 1f1b m=3: loss rel diff %.3g, weights rel diff %.3g (%s)\n", dl, dw, worst);
    assert_bit_equal(dl, dw, worst);
    assert_frozen_kept(&j, &r);
    pf_result_free(&ref);
    pf_result_free(&r);
}

/* Bottleneck adapters (job.adapters) trained alone on a frozen model: a
 * 3-stage chain (adapters in every stage's blocks) equals the trainer bit
 * for bit, and every tensor but the adapters ends as it was seeded. */
static void test_adapters_equal(void **state)
{
    (void)state;
    pf_job_t j = pf_job_default(data_path);
    const char *after[] = { "attn", "ffn" };
    char why[256];
    assert_int_equal(nb_model_set_adapters(&j.model, 4, after, 2, "all", why, sizeof why), 0);
    j.freeze = freeze_of((const char *[]){ "*" }, 1);
    j.freeze.n_trainable = 1;
    snprintf(j.freeze.trainable[0], sizeof j.freeze.trainable[0], "*.ad_*");
    pf_result_t ref;
    assert_int_equal(pf_run_trainer(&j, &ref), 0);
    assert_frozen_kept(&j, &ref);
    nb_pipe_layout_t l;
    pf_layout(&j, topologies[1].p, topologies[1].placement, topologies[1].n_daemons, &l);
    pf_result_t r;
    assert_int_equal(pf_run_pipeline(&j, &l, "1f1b", "fp32", "fp32", &r), 0);
    char worst[32] = "";
    double dl = pf_loss_rel_diff(&r, &ref), dw = pf_weight_rel_diff(&ref, &r, worst);
    printf("adapters chain-3 1f1b m=%d: loss rel diff %.3g, weights rel diff %.3g (%s), final loss %.5f vs %.5f\n",
           j.m, dl, dw, worst, r.loss[j.steps - 1], ref.loss[j.steps - 1]);
    assert_bit_equal(dl, dw, worst);
    assert_frozen_kept(&j, &r);
    assert_true(ref.loss[j.steps - 1] < ref.loss[0]);
    pf_result_free(&ref);
    pf_result_free(&r);
}

/* A stage's memory breakdown counts gradients and AdamW state of its
 * trainable tensors only. */
static void test_frozen_memory(void **state)
{
    (void)state;
    pf_job_t j = pf_job_default(data_path);
    nb_pipe_layout_t l;
    pf_layout(&j, 2, topologies[0].placement, 2, &l);
    nb_backend_t *be = nb_cpu_backend_new();
    nb_host_t *h;
    char err[512];
    assert_int_equal(nb_host_new(be, &l, 0, data_path, &h, err, sizeof err), 0);
    nb_mem_model_t full;
    nb_host_memory_parts(h, &full);
    nb_host_free(h);
    l.freeze = freeze_of((const char *[]){ "wte", "h0.*" }, 2);
    assert_int_equal(nb_host_new(be, &l, 0, data_path, &h, err, sizeof err), 0);
    nb_mem_model_t m;
    nb_host_memory_parts(h, &m);
    nb_part_t *p = nb_host_part(h, 0);
    uint64_t frozen = 0;
    for (int i = 0; i < nb_part_num_tensors(p); i++)
        if (!nb_part_tensor(p, i)->trainable)
            frozen += nb_part_tensor(p, i)->numel * sizeof(float);
    printf("stage 0: weights %llu, gradients %llu -> %llu, optimizer %llu -> %llu bytes (frozen %llu)\n",
           (unsigned long long)m.weights, (unsigned long long)full.gradients, (unsigned long long)m.gradients,
           (unsigned long long)full.optimizer, (unsigned long long)m.optimizer, (unsigned long long)frozen);
    assert_true(frozen > 0);
    assert_int_equal(m.weights, full.weights);
    assert_int_equal(m.gradients, full.gradients - frozen);
    assert_int_equal(m.optimizer, full.optimizer - 2 * frozen);
    assert_int_equal(nb_host_memory_bytes(h), m.weights + m.gradients + m.optimizer + m.activations);
    nb_host_free(h);
    nb_be_free(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_equal_all),
        cmocka_unit_test(test_ushape_tied_equal),
        cmocka_unit_test(test_lowrank_equal),
        cmocka_unit_test(test_chain_tied_refused),
        cmocka_unit_test(test_mlm_equal),
        cmocka_unit_test(test_adapters_equal),
        cmocka_unit_test(test_bert_settings_equal),
        cmocka_unit_test(test_classifier_heads_refused),
        cmocka_unit_test(test_nonfinite_gradient_skipped_everywhere),
        cmocka_unit_test(test_plan_changes_micro_batch_size),
        cmocka_unit_test(test_lossy_codecs_close),
        cmocka_unit_test(test_bf16_equal),
        cmocka_unit_test(test_eval_equal),
        cmocka_unit_test(test_eval_leaves_training_alone),
        cmocka_unit_test(test_frozen_equal),
        cmocka_unit_test(test_frozen_memory),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
