/* test_reference_lowrank.c - the low-rank split (job.lowrank; model.h,
 * kernels/model_lowrank.c) against PyTorch: tests/data/ref_*_lowrank.bin,
 * written by scripts/gen_reference.py. Logits, loss and every gradient
 * (U, S, V of the split block included, its MLP residual dropped), 10
 * AdamW steps; every split equals the whole model bit for bit, the cut
 * inside the split block (the factor z (B,T,r) crossing) among them.
 * Also: the truncated SVD that initialises U, S, V (nb_lowrank_svd) and
 * the widths a cut part reports. Tolerances: tests/support/ref_case.h. */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <setjmp.h>
#include <cmocka.h>
#include "kernels/model.h"
#include "kernels/rng.h"
#include "tests/support/ref_case.h"

/* the top block of a BERT-style classifier (post-LN); block 0 of a GPT
 * (pre-LN) with a frozen S */
static void test_seqcls_lowrank(void **state) { nb_ref_run_case("tests/data/ref_seqcls_lowrank.bin"); }
static void test_gpt_lowrank(void **state) { nb_ref_run_case("tests/data/ref_gpt_lowrank.bin"); }
static void test_split_seqcls_lowrank(void **state) { nb_ref_split_case("tests/data/ref_seqcls_lowrank.bin"); }
static void test_split_gpt_lowrank(void **state) { nb_ref_split_case("tests/data/ref_gpt_lowrank.bin"); }

/* u s v of full rank gives w back; of rank r, the error is the energy of
 * the dropped singular values (Eckart-Young), and s is decreasing. */
static void test_svd(void **state)
{
    enum { M = 12, N = 20 };
    float w[M * N], u[M * M], s[M * M], v[M * N];
    nb_rng_t r;
    nb_rng_init(&r, 5, 0, 0);
    for (int i = 0; i < M * N; i++)
        w[i] = (float)nb_rng_normal(&r);
    assert_int_equal(nb_lowrank_svd(w, M, N, M, u, s, v), 0);
    double worst = 0, total = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0;
            for (int k = 0; k < M; k++)
                acc += (double)u[i * M + k] * s[k * M + k] * v[k * N + j];
            worst = fmax(worst, fabs(acc - w[i * N + j]));
            total += (double)w[i * N + j] * w[i * N + j];
        }
    printf("  full-rank reconstruction max error %.3g\n", worst);
    assert_true(worst < 1e-4);
    for (int k = 1; k < M; k++)
        assert_true(s[k * M + k] <= s[(k - 1) * M + (k - 1)]);
    /* rank 3: squared error = sum of the dropped sigma^2 */
    float u3[M * 3], s3[9], v3[3 * N];
    assert_int_equal(nb_lowrank_svd(w, M, N, 3, u3, s3, v3), 0);
    double err2 = 0, dropped = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0;
            for (int k = 0; k < 3; k++)
                acc += (double)u3[i * 3 + k] * s3[k * 3 + k] * v3[k * N + j];
            err2 += (acc - w[i * N + j]) * (acc - w[i * N + j]);
        }
    for (int k = 3; k < M; k++)
        dropped += (double)s[k * M + k] * s[k * M + k];
    assert_true(fabs(err2 - dropped) <= 1e-4 * total);
    assert_int_equal(nb_lowrank_svd(w, M, N, M + 1, u, s, v), NB_EINVAL);
    assert_int_equal(nb_lowrank_svd(w, M, N, 0, u, s, v), NB_EINVAL);
}

/* Only the cut between V and S carries r values per position. */
static void test_widths(void **state)
{
    nb_model_config_t c = { .n_layer = 4, .d_model = 16, .n_head = 2, .d_ff = 32, .vocab = 32, .max_seq = 8,
                            .norm = NB_MODEL_NORM_POST, .head = NB_MODEL_HEAD_SEQCLS, .n_classes = 2,
                            .lowrank_block = 2, .lowrank_rank = 3 };
    assert_null(nb_model_config_validate(&c));
    nb_part_spec_t lower = { .embed = true, .first = 0, .last = 3 }, upper = { .first = 3, .last = 4, .head = true };
    nb_part_spec_t below = { .embed = true, .first = 0, .last = 2 }, above = { .first = 2, .last = 4, .head = true };
    assert_int_equal(nb_part_spec_out_width(&c, &lower), 3);
    assert_int_equal(nb_part_spec_in_width(&c, &upper), 3);
    assert_int_equal(nb_part_spec_out_width(&c, &below), 16);
    assert_int_equal(nb_part_spec_in_width(&c, &above), 16);
    /* the split block runs neither adapters nor cross-attention: refused */
    nb_model_config_t bad = c;
    bad.adapter_size = 4;
    bad.adapter_after = NB_ADAPTER_FFN;
    bad.adapter_first = 2;
    bad.adapter_last = 4;
    assert_string_equal(nb_model_config_validate(&bad), "the low-rank split block cannot have adapters");
    bad.adapter_first = 3; /* adapters beside the split block are fine */
    assert_null(nb_model_config_validate(&bad));
    bad = c;
    bad.cross_attn = true;
    assert_string_equal(nb_model_config_validate(&bad), "a low-rank split needs an encoder (no cross_attn)");
    c.lowrank_rank = 0;
    assert_int_equal(nb_part_spec_out_width(&c, &lower), 16);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seqcls_lowrank),
        cmocka_unit_test(test_gpt_lowrank),
        cmocka_unit_test(test_split_seqcls_lowrank),
        cmocka_unit_test(test_split_gpt_lowrank),
        cmocka_unit_test(test_svd),
        cmocka_unit_test(test_widths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
