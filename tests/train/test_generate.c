/* test_generate.c - generation (daemon/train/generate.h): greedy decoding
 * equals the argmax of PyTorch's logits (tests/data/ref_gpt.bin and
 * ref_gpt_erf.bin: for every prompt prefix of the golden batch, the one
 * token greedy adds is the argmax of the golden logits at the prefix's last
 * position, which a causal model computes from the prefix alone); the same
 * seed gives the same tokens and another seed others; top-k 1 is greedy;
 * top-k never leaves the k largest; the draws follow the tempered softmax;
 * models that cannot generate are refused. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/train/generate.h"
#include "tests/support/ref_file.h"

/* The golden model of path as a whole part with its weights. */
static nb_part_t *golden_model(nb_backend_t *be, const char *path, nb_ref_file_t *f)
{
    char err[256];
    if (nb_ref_load(path, f, err, sizeof err))
        fail_msg("%s", err);
    int32_t c[13];
    nb_ref_ints(nb_ref_get(f, "config"), c);
    nb_model_config_t m = { .n_layer = c[0], .d_model = c[1], .n_head = c[2], .d_ff = c[3], .vocab = c[4],
                            .max_seq = c[5], .causal = c[6] != 0, .norm = (nb_norm_t)c[7],
                            .head = (nb_head_kind_t)c[8], .n_classes = c[9], .tie_embeddings = c[10] != 0 };
    const nb_ref_tensor_t *vt = nb_ref_get(f, "variant");
    if (vt) {
        float v[2];
        nb_ref_floats(vt, v);
        m.ln_eps = v[0];
        m.gelu = v[1] != 0.0f ? NB_MODEL_GELU_ERF : NB_MODEL_GELU_TANH;
    }
    nb_part_spec_t spec = nb_part_spec_full(&m);
    nb_part_t *p;
    if (nb_part_new(be, &m, &spec, 1, NULL, &p, err, sizeof err))
        fail_msg("%s", err);
    for (int i = 0; i < nb_part_num_tensors(p); i++) {
        const nb_param_info_t *pi = nb_part_tensor(p, i);
        char name[80];
        snprintf(name, sizeof name, "w.%s", pi->name);
        const nb_ref_tensor_t *t = nb_ref_get(f, name);
        assert_non_null(t);
        assert_int_equal(t->numel, pi->numel);
        float *h = malloc(t->numel * sizeof *h);
        nb_ref_floats(t, h);
        nb_be_from_host(be, nb_part_params(p) + pi->offset, h, t->numel * sizeof *h);
        nb_be_sync(be);
        free(h);
    }
    return p;
}

static void greedy_is_golden_argmax(const char *path)
{
    nb_backend_t *be = nb_cpu_backend_new();
    nb_ref_file_t f;
    nb_part_t *p = golden_model(be, path, &f);
    const nb_ref_tensor_t *tt = nb_ref_get(&f, "tokens"), *lt = nb_ref_get(&f, "logits");
    int B = (int)tt->shape[0], T = (int)tt->shape[1], V = nb_part_config(p)->vocab;
    int32_t *tok = malloc(tt->numel * sizeof *tok);
    float *logits = malloc(lt->numel * sizeof *logits);
    nb_ref_ints(tt, tok);
    nb_ref_floats(lt, logits);
    nb_gen_config_t gc = { .max_new = 1, .temperature = 0.0f, .seed = 1 };
    int checked = 0, skipped = 0;
    char err[256];
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *row = logits + ((size_t)b * T + t) * V;
            int best = 0, second = -1;
            for (int v = 1; v < V; v++)
                if (row[v] > row[best]) {
                    second = best;
                    best = v;
                } else if (second < 0 || row[v] > row[second]) {
                    second = v;
                }
            if (row[best] - row[second] < 1e-4f) { /* a near tie: float32 may pick either */
                skipped++;
                continue;
            }
            int32_t ids[64];
            size_t n = (size_t)t + 1;
            memcpy(ids, tok + (size_t)b * T, n * sizeof *ids);
            if (nb_gen_run(p, ids, &n, sizeof ids / sizeof ids[0], &gc, err, sizeof err))
                fail_msg("%s", err);
            assert_int_equal(n, (size_t)t + 2);
            if (ids[t + 1] != best)
                fail_msg("%s: sequence %d, prefix %d: greedy gives %d, PyTorch's argmax is %d", path, b, t + 1,
                         ids[t + 1], best);
            checked++;
        }
    print_message("  %s: %d prefixes, greedy = PyTorch's argmax (%d near ties skipped)\n", path, checked, skipped);
    assert_true(checked >= B * T * 9 / 10);
    free(tok);
    free(logits);
    nb_part_free(p);
    nb_ref_free(&f);
    nb_be_free(be);
}

static void test_greedy_gpt(void **state) { greedy_is_golden_argmax("tests/data/ref_gpt.bin"); }
static void test_greedy_gpt_erf(void **state) { greedy_is_golden_argmax("tests/data/ref_gpt_erf.bin"); }

static void generate(nb_part_t *p, const nb_gen_config_t *gc, int32_t *ids, size_t *n)
{
    char err[256];
    ids[0] = 3;
    ids[1] = 14;
    ids[2] = 15;
    *n = 3;
    if (nb_gen_run(p, ids, n, 64, gc, err, sizeof err))
        fail_msg("%s", err);
}

/* Same seed, same tokens; other seed, other tokens; top-k 1 = greedy; the
 * context slides past max_seq (16) without error. */
static void test_seeded_sampling(void **state)
{
    nb_backend_t *be = nb_cpu_backend_new();
    nb_ref_file_t f;
    nb_part_t *p = golden_model(be, "tests/data/ref_gpt.bin", &f);
    int32_t a[64], b[64], c[64], g[64], k1[64];
    size_t na, nb, nc, ng, nk;
    nb_gen_config_t gc = { .max_new = 30, .temperature = 1.0f, .top_k = 0, .seed = 42 };
    generate(p, &gc, a, &na);
    generate(p, &gc, b, &nb);
    assert_int_equal(na, 33);
    assert_memory_equal(a, b, na * sizeof *a);
    gc.seed = 43;
    generate(p, &gc, c, &nc);
    assert_memory_not_equal(a, c, na * sizeof *a);
    nb_gen_config_t greedy = { .max_new = 30, .temperature = 0.0f, .seed = 42 };
    generate(p, &greedy, g, &ng);
    nb_gen_config_t topk1 = { .max_new = 30, .temperature = 1.0f, .top_k = 1, .seed = 7 };
    generate(p, &topk1, k1, &nk);
    assert_memory_equal(g, k1, ng * sizeof *g);
    nb_part_free(p);
    nb_ref_free(&f);
    nb_be_free(be);
}

/* The draws follow softmax(logits / T) and top-k keeps the k largest. */
static void test_pick_distribution(void **state)
{
    float logits[4] = { 0.0f, logf(3.0f), -1.0f, -30.0f };
    nb_gen_config_t gc = { .temperature = 1.0f, .seed = 5 };
    int count[4] = { 0 };
    const int n = 20000;
    for (int i = 0; i < n; i++)
        count[nb_gen_pick(logits, 4, &gc, (uint64_t)i)]++;
    double z = 1.0 + 3.0 + exp(-1.0) + exp(-30.0);
    print_message("  draws %d %d %d %d of %d (expected %.0f %.0f %.0f 0)\n", count[0], count[1], count[2],
                  count[3], n, n / z, 3 * n / z, n * exp(-1.0) / z);
    assert_true(fabs(count[0] - n / z) < 0.05 * n / z * 3);
    assert_true(fabs(count[1] - 3 * n / z) < 0.03 * 3 * n / z);
    assert_true(count[3] == 0);
    /* top-k 2: only IDs 0 and 1 */
    gc.top_k = 2;
    memset(count, 0, sizeof count);
    for (int i = 0; i < n; i++)
        count[nb_gen_pick(logits, 4, &gc, (uint64_t)i)]++;
    assert_int_equal(count[2] + count[3], 0);
    assert_true(fabs(count[1] - 0.75 * n) < 0.02 * n);
    /* a high temperature flattens, a low one sharpens */
    gc.top_k = 0;
    gc.temperature = 0.01f;
    for (int i = 0; i < 100; i++)
        assert_int_equal(nb_gen_pick(logits, 4, &gc, (uint64_t)i), 1);
}

static void test_refusals(void **state)
{
    nb_backend_t *be = nb_cpu_backend_new();
    char err[256];
    nb_ref_file_t f;
    nb_part_t *p = golden_model(be, "tests/data/ref_bert.bin", &f);
    int32_t ids[8] = { 1 };
    size_t n = 1;
    nb_gen_config_t gc = { .max_new = 2 };
    assert_int_equal(nb_gen_run(p, ids, &n, 8, &gc, err, sizeof err), NB_EINVAL);
    print_message("  refused: %s\n", err);
    assert_non_null(strstr(err, "causal"));
    nb_part_free(p);
    nb_ref_free(&f);
    p = golden_model(be, "tests/data/ref_gpt.bin", &f);
    n = 0;
    assert_int_equal(nb_gen_run(p, ids, &n, 8, &gc, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "empty"));
    ids[0] = 64;
    n = 1;
    assert_int_equal(nb_gen_run(p, ids, &n, 8, &gc, err, sizeof err), NB_EINVAL);
    print_message("  refused: %s\n", err);
    assert_non_null(strstr(err, "outside the vocabulary"));
    nb_part_free(p);
    nb_ref_free(&f);
    nb_be_free(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_gpt),
        cmocka_unit_test(test_greedy_gpt_erf),
        cmocka_unit_test(test_seeded_sampling),
        cmocka_unit_test(test_pick_distribution),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
