/* test_reference_frozen.c - frozen tensors (job.freeze) against PyTorch
 * with requires_grad=False on them: tests/data/ref_*_frozen.bin, written by
 * scripts/gen_reference.py. The gradient buffer holds the trainable
 * tensors only and each gradient equals the reference; 10 AdamW steps give
 * the reference losses and trainable weights; every frozen weight ends
 * bit-identical to where it started; every split equals the whole model
 * bit for bit. Tolerances: tests/support/ref_case.h. A binary of its own,
 * apart from test_reference, so that the emulated-processor test
 * (cpu-emulated.test.sh, which runs test_reference under qemu) does not
 * pay for it: these cases add no kernel of their own. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include "tests/support/ref_case.h"

/* frozen tensors (job.freeze): tied wte + block 0 (wpe trains); the
 * embedding and block 0 (backward stops at block 1); scattered
 * weights, LayerNorm halves, the embedding LayerNorm and lm.w of a BERT;
 * everything but the classifier */
static void test_gpt_frozen(void **state) { nb_ref_run_case("tests/data/ref_gpt_frozen.bin"); }
static void test_gpt_bottom_frozen(void **state) { nb_ref_run_case("tests/data/ref_gpt_bottom_frozen.bin"); }
static void test_bert_frozen(void **state) { nb_ref_run_case("tests/data/ref_bert_frozen.bin"); }
static void test_seqcls_frozen(void **state) { nb_ref_run_case("tests/data/ref_seqcls_frozen.bin"); }

/* frozen tensors in every split: each part freezes what it holds (a tied
 * head in its own part follows the embedding part's frozen wte) */
static void test_split_gpt_frozen(void **state) { nb_ref_split_case("tests/data/ref_gpt_frozen.bin"); }
static void test_split_gpt_bottom_frozen(void **state) { nb_ref_split_case("tests/data/ref_gpt_bottom_frozen.bin"); }
static void test_split_bert_frozen(void **state) { nb_ref_split_case("tests/data/ref_bert_frozen.bin"); }
static void test_split_seqcls_frozen(void **state) { nb_ref_split_case("tests/data/ref_seqcls_frozen.bin"); }

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpt_frozen),
        cmocka_unit_test(test_gpt_bottom_frozen),
        cmocka_unit_test(test_bert_frozen),
        cmocka_unit_test(test_seqcls_frozen),
        cmocka_unit_test(test_split_gpt_frozen),
        cmocka_unit_test(test_split_gpt_bottom_frozen),
        cmocka_unit_test(test_split_bert_frozen),
        cmocka_unit_test(test_split_seqcls_frozen),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
