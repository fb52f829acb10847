/* test_split_train.c - the trainer's recipe run the way a pipeline runs it:
 * the model cut into parts, each with its own optimizer over its own flat
 * buffers, batches drawn by (seed, step, micro-batch), GPipe order (every
 * forward of the step, then every backward, each part in micro-batch order),
 * clipping from the sum of the parts' sums of squares. Losses and final
 * weights equal the single-process trainer bit for bit, untied and tied
 * (the head in the embedding's process, U-shape; nb_part_finish_grads()
 * makes the order of wte's gradient terms irrelevant). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "daemon/data/tokens.h"
#include "daemon/train/trainer.h"

#define GPL3 "/usr/share/common-licenses/GPL-3"
#define STEPS 6
#define M 3
#define MAXP 3

static char tok_path[128];

static int setup(void **state)
{
    snprintf(tok_path, sizeof tok_path, "/tmp/nb_split_train_%d.tok", (int)getpid());
    char err[256];
    return nb_tokens_from_text(GPL3, tok_path, 1 << 15, NULL, err, sizeof err);
}

static int teardown(void **state)
{
    unlink(tok_path);
    return 0;
}

static nb_train_config_t config(bool tied)
{
    nb_train_config_t c = {
        .model = { .n_layer = 3, .d_model = 32, .n_head = 4, .d_ff = 64, .vocab = 256, .max_seq = 16,
                   .causal = true, .norm = NB_MODEL_NORM_PRE, .head = NB_MODEL_HEAD_LM, .tie_embeddings = tied },
        .optim = nb_optim_config_default(),
        .seed = 99, .batch = 6, .micro_batches = M, .seq_len = 16, .steps = STEPS,
    };
    c.optim.lr = 3e-3f;
    c.optim.lr_min = 3e-4f;
    c.optim.warmup_steps = 2;
    c.optim.total_steps = STEPS;
    c.optim.grad_clip = 0.5f; /* active: the global norm matters */
    snprintf(c.data, sizeof c.data, "%s", tok_path);
    return c;
}

static void run_split(const nb_train_config_t *c, const int *cuts, int np, float *losses,
                      nb_part_t **full_out, nb_backend_t *be)
{
    char err[256];
    nb_part_t *parts[MAXP];
    nb_optim_t *opt[MAXP];
    nb_part_acts_t *acts[MAXP][M];
    for (int i = 0; i < np; i++) {
        nb_part_spec_t s = { .embed = i == 0, .first = cuts[i], .last = cuts[i + 1], .head = i == np - 1 };
        nb_part_t *tie = s.head && !s.embed && c->model.tie_embeddings ? parts[0] : NULL;
        if (nb_part_new(be, &c->model, &s, c->seed, tie, &parts[i], err, sizeof err))
            fail_msg("%s", err);
        assert_int_equal(nb_part_optim_new(parts[i], &c->optim, &opt[i]), 0);
        for (int j = 0; j < M; j++)
            assert_int_equal(nb_part_acts_new(parts[i], c->batch / M, c->seq_len, &acts[i][j]), 0);
    }
    nb_tokens_t *tk;
    assert_int_equal(nb_tokens_open(tok_path, &tk, err, sizeof err), 0);
    int B = c->batch / M, T = c->seq_len;
    int32_t hin[64], htg[64];
    int32_t *din[M], *dtg[M];
    for (int j = 0; j < M; j++) {
        din[j] = nb_be_alloc(be, (size_t)B * T * 4);
        dtg[j] = nb_be_alloc(be, (size_t)B * T * 4);
    }
    for (int s = 0; s < c->steps; s++) {
        for (int i = 0; i < np; i++)
            nb_part_zero_grad(parts[i]);
        float loss = 0;
        for (int j = 0; j < M; j++) { /* all forwards */
            assert_int_equal(nb_tokens_sample(tk, c->seed, (uint64_t)s, (uint32_t)j, B, T, hin, htg), 0);
            nb_be_from_host(be, din[j], hin, (size_t)B * T * 4);
            nb_be_from_host(be, dtg[j], htg, (size_t)B * T * 4);
            for (int i = 0; i < np; i++) {
                nb_part_input_t in = { .loss_scale = 1.0f / M };
                if (i == 0)
                    in.tokens = din[j];
                else
                    in.x = nb_part_acts_output(acts[i - 1][j]);
                if (i == np - 1)
                    in.targets = dtg[j];
                float lj = 0;
                assert_int_equal(nb_part_forward(parts[i], acts[i][j], &in, &lj), 0);
                if (i == np - 1)
                    loss += lj / M;
            }
        }
        for (int i = np - 1; i >= 0; i--) /* all backwards, last stage first */
            for (int j = 0; j < M; j++) {
                const float *dout = i == np - 1 ? NULL : nb_part_acts_dinput(acts[i + 1][j]);
                assert_int_equal(nb_part_backward(parts[i], acts[i][j], dout), 0);
            }
        /* no explicit nb_part_finish_grads(): nb_part_grads() below does it */
        losses[s] = loss;
        double ss = 0;
        for (int i = 0; i < np; i++)
            ss += nb_optim_sumsq(be, nb_part_grads(parts[i]), nb_part_num_grads(parts[i]));
        float scale = nb_optim_clip_scale(&c->optim, ss);
        float lr = (float)nb_optim_lr(&c->optim, s);
        for (int i = 0; i < np; i++)
            nb_optim_step(opt[i], nb_part_params(parts[i]), nb_part_grads(parts[i]), lr, scale);
    }
    /* gather the weights into one full part for comparison */
    nb_part_spec_t fs = nb_part_spec_full(&c->model);
    assert_int_equal(nb_part_new(be, &c->model, &fs, c->seed, NULL, full_out, err, sizeof err), 0);
    for (int i = 0; i < np; i++)
        for (int k = 0; k < nb_part_num_tensors(parts[i]); k++) {
            const nb_param_info_t *t = nb_part_tensor(parts[i], k);
            const nb_param_info_t *f = nb_part_tensor(*full_out, nb_part_find_tensor(*full_out, t->name));
            nb_be_copy(be, nb_part_params(*full_out) + f->offset, nb_part_params(parts[i]) + t->offset,
                       t->numel * sizeof(float));
        }
    for (int j = 0; j < M; j++) {
        nb_be_dealloc(be, din[j]);
        nb_be_dealloc(be, dtg[j]);
    }
    nb_tokens_close(tk);
    for (int i = np - 1; i >= 0; i--) {
        for (int j = 0; j < M; j++)
            nb_part_acts_free(acts[i][j]);
        nb_optim_free(opt[i]);
        nb_part_free(parts[i]);
    }
}

static void compare_with_trainer(bool tied, const int *cuts, int np)
{
    nb_backend_t *be = nb_cpu_backend_new();
    nb_train_config_t c = config(tied);
    char err[256];
    nb_trainer_t *tr;
    if (nb_trainer_new(be, &c, &tr, err, sizeof err))
        fail_msg("%s", err);
    float ref[STEPS], got[STEPS];
    for (int s = 0; s < STEPS; s++) {
        nb_train_step_t st;
        assert_int_equal(nb_trainer_step(tr, &st, err, sizeof err), 0);
        ref[s] = st.loss;
    }
    nb_part_t *full;
    run_split(&c, cuts, np, got, &full, be);
    nb_part_t *tp = nb_trainer_part(tr);
    size_t n = nb_part_num_params(tp);
    assert_int_equal(n, nb_part_num_params(full));
    float *a = malloc(n * 4), *b = malloc(n * 4);
    nb_be_to_host(be, a, nb_part_params(tp), n * 4);
    nb_be_to_host(be, b, nb_part_params(full), n * 4);
    double maxw = 0, maxl = 0;
    for (size_t i = 0; i < n; i++)
        maxw = fmax(maxw, fabs((double)a[i] - b[i]) / fmax(fabs((double)a[i]), 1e-3));
    for (int s = 0; s < STEPS; s++)
        maxl = fmax(maxl, fabs((double)ref[s] - got[s]) / fabs((double)ref[s]));
    printf("  %s, %d parts: loss %.6f -> %.6f; max rel diff: losses %.2e, weights %.2e\n",
           tied ? "tied" : "untied", np, ref[0], ref[STEPS - 1], maxl, maxw);
    assert_true(ref[STEPS - 1] < ref[0]);
    assert_memory_equal(ref, got, sizeof ref);
    assert_memory_equal(a, b, n * 4);
    free(a);
    free(b);
    nb_part_free(full);
    nb_trainer_free(tr);
    nb_be_free(be);
}

static void test_untied_two_parts(void **state)
{
    static const int cuts[] = { 0, 1, 3 };
    compare_with_trainer(false, cuts, 2);
}

static void test_untied_three_parts(void **state)
{
    static const int cuts[] = { 0, 1, 2, 3 };
    compare_with_trainer(false, cuts, 3);
}

static void test_tied_ushape(void **state)
{
    static const int cuts[] = { 0, 2, 3 };
    compare_with_trainer(true, cuts, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_untied_two_parts),
        cmocka_unit_test(test_untied_three_parts),
        cmocka_unit_test(test_tied_ushape),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
