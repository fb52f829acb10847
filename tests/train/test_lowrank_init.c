/* test_lowrank_init.c - job.init into a low-rank split model (job.lowrank;
 * daemon/train/lowrank_init.h): from one dense whole-model weights file,
 * the whole split model and each half of a pipeline cut between V and S
 * take every shared tensor bit for bit and U, S, V from the truncated SVD
 * of fcproj.w: at full rank U S V gives W back, the two halves hold the
 * same factors as the whole model, and their forward (the factor handed
 * from one to the other) equals the whole model's to the bit. */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "daemon/train/lowrank_init.h"
#include "daemon/train/weights.h"

static char dir[256], path[300];
static nb_backend_t *be;
static nb_part_t *dense;

static nb_model_config_t model(int block, int rank)
{
    return (nb_model_config_t){ .n_layer = 3, .d_model = 16, .n_head = 2, .d_ff = 32, .vocab = 64, .max_seq = 8,
                                .norm = NB_MODEL_NORM_POST, .head = NB_MODEL_HEAD_MLM, .ln_eps = 1e-12f,
                                .gelu = NB_MODEL_GELU_ERF, .lowrank_block = block, .lowrank_rank = rank };
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "%s/nb_lowrank_init_XXXXXX", P_tmpdir);
    if (!mkdtemp(dir) || !(be = nb_cpu_backend_new()))
        return -1;
    snprintf(path, sizeof path, "%s/dense.weights", dir);
    nb_model_config_t c = model(0, 0);
    nb_part_spec_t full = nb_part_spec_full(&c);
    char err[256];
    return nb_part_new(be, &c, &full, 5, NULL, &dense, err, sizeof err) ||
           nb_weights_save(path, dense, err, sizeof err);
}

static int teardown(void **state)
{
    (void)state;
    nb_part_free(dense);
    nb_be_free(be);
    unlink(path);
    return rmdir(dir);
}

static float *tensor(nb_part_t *p, const char *name, size_t *n)
{
    int i = nb_part_find_tensor(p, name);
    assert_true(i >= 0);
    const nb_param_info_t *t = nb_part_tensor(p, i);
    float *h = malloc(t->numel * sizeof *h);
    nb_be_to_host(be, h, nb_part_params(p) + t->offset, t->numel * sizeof *h);
    *n = t->numel;
    return h;
}

static nb_part_t *loaded(int block, int rank, nb_part_spec_t spec)
{
    nb_model_config_t c = model(block, rank);
    nb_part_t *p = NULL;
    char err[256];
    assert_int_equal(nb_part_new(be, &c, &spec, 99, NULL, &p, err, sizeof err), 0);
    if (nb_lowrank_init_part(path, p, NULL, NULL, err, sizeof err))
        fail_msg("%s", err);
    return p;
}

/* Full rank: U S V is W; every other tensor is the dense model's. */
static void test_full_rank_is_w(void **state)
{
    (void)state;
    nb_model_config_t c = model(1, 16);
    nb_part_t *p = loaded(1, 16, nb_part_spec_full(&c));
    size_t nw, nu, ns, nv;
    float *w = tensor(dense, "h1.fcproj.w", &nw), *u = tensor(p, "h1.fcproj.u", &nu),
          *s = tensor(p, "h1.fcproj.s", &ns), *v = tensor(p, "h1.fcproj.v", &nv);
    double worst = 0, big = 0;
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 32; j++) {
            double acc = 0;
            for (int k = 0; k < 16; k++)
                acc += (double)u[i * 16 + k] * s[k * 16 + k] * v[k * 32 + j];
            worst = fmax(worst, fabs(acc - w[i * 32 + j]));
            big = fmax(big, fabs(w[i * 32 + j]));
        }
    printf("  U S V vs W: max error %.3g of max |W| %.3g\n", worst, big);
    assert_true(worst <= 1e-5 * big);
    for (int i = 0; i < nb_part_num_tensors(p); i++) {
        const char *name = nb_part_tensor(p, i)->name;
        if (strstr(name, "h1.fcproj.") && strcmp(name, "h1.fcproj.b") != 0)
            continue;
        size_t na, nb;
        float *a = tensor(p, name, &na), *b = tensor(dense, name, &nb);
        assert_int_equal(na, nb);
        if (memcmp(a, b, na * sizeof *a) != 0)
            fail_msg("%s differs from the dense model's", name);
        free(a);
        free(b);
    }
    free(w);
    free(u);
    free(s);
    free(v);
    nb_part_free(p);
}

/* Rank 4, cut between V and S of block 1: each half loads on its own and
 * the pair computes what the whole model does. */
static void test_halves_equal_whole(void **state)
{
    (void)state;
    nb_model_config_t c = model(1, 4);
    nb_part_t *whole = loaded(1, 4, nb_part_spec_full(&c));
    nb_part_t *lo = loaded(1, 4, (nb_part_spec_t){ .embed = true, .first = 0, .last = 2 });
    nb_part_t *hi = loaded(1, 4, (nb_part_spec_t){ .first = 2, .last = 3, .head = true });
    assert_int_equal(nb_part_out_width(lo), 4);
    assert_int_equal(nb_part_in_width(hi), 4);
    const char *shared[] = { "h1.fcproj.v", "h1.fcproj.s", "h1.fcproj.u" };
    nb_part_t *owner[] = { lo, hi, hi };
    for (int i = 0; i < 3; i++) {
        size_t na, nb;
        float *a = tensor(owner[i], shared[i], &na), *b = tensor(whole, shared[i], &nb);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, na * sizeof *a);
        free(a);
        free(b);
    }
    enum { B = 2, T = 8 };
    int32_t tok[B * T], tgt[B * T];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (i * 7 + 3) % 63;
        tgt[i] = i % 3 ? -1 : (i * 5) % 64;
    }
    int32_t *dtok = nb_be_alloc(be, sizeof tok), *dtgt = nb_be_alloc(be, sizeof tgt);
    nb_be_from_host(be, dtok, tok, sizeof tok);
    nb_be_from_host(be, dtgt, tgt, sizeof tgt);
    nb_part_acts_t *aw, *al, *ah;
    assert_int_equal(nb_part_acts_new(whole, B, T, &aw), 0);
    assert_int_equal(nb_part_acts_new(lo, B, T, &al), 0);
    assert_int_equal(nb_part_acts_new(hi, B, T, &ah), 0);
    float lw, lh;
    nb_part_input_t in = { .tokens = dtok, .targets = dtgt, .loss_scale = 1.0f };
    assert_int_equal(nb_part_forward(whole, aw, &in, &lw), 0);
    nb_part_input_t lin = { .tokens = dtok };
    assert_int_equal(nb_part_forward(lo, al, &lin, NULL), 0);
    nb_part_input_t hin = { .x = nb_part_acts_output(al), .targets = dtgt, .loss_scale = 1.0f };
    assert_int_equal(nb_part_forward(hi, ah, &hin, &lh), 0);
    printf("  loss: whole %.8f, halves %.8f\n", lw, lh);
    assert_true(lw == lh);
    nb_part_acts_free(aw);
    nb_part_acts_free(al);
    nb_part_acts_free(ah);
    nb_be_dealloc(be, dtok);
    nb_be_dealloc(be, dtgt);
    nb_part_free(whole);
    nb_part_free(lo);
    nb_part_free(hi);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_rank_is_w),
        cmocka_unit_test(test_halves_equal_whole),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
