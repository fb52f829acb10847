/*
 * ref_case.h - one PyTorch reference file checked against the transformer
 * (test support for tests/kernels/test_reference*.c).
 *
 * Tolerances: logits and gradients: max |c - ref| <= 1e-4 * max |ref| per
 * tensor; losses: |c - ref| <= 1e-5 * |ref|; weights after the AdamW steps
 * (files with frozen tensors): max |c - ref| <= 1e-4 * max |ref| (qkv
 * biases: the q and v thirds: the k third's gradient is zero in exact
 * arithmetic and AdamW turns rounding into full steps); most tensors end
 * within 1e-6, the largest error (5e-5, a qkv.w element) is AdamW dividing
 * a near-zero gradient's rounding by its near-zero sqrt(v). Files with a
 * "frozen" tensor also need every frozen weight bit-identical after the
 * steps. The max abs error of every tensor is printed. Paths are relative
 * to the repository root.
 */
#ifndef NB_TEST_REF_CASE_H
#define NB_TEST_REF_CASE_H

#include "kernels/model.h"
#include "kernels/optim.h"
#include "tests/support/ref_file.h"

/* The model config, batch shape and optimizer settings of a loaded
 * reference file: "config" and "optim", and the optional "variant",
 * "adapter", "cross", "lowrank" and "tokshift" tensors (the layout of
 * scripts/gen_reference.py). S is the encoder length of a decoder file, 0
 * otherwise. A missing or malformed tensor, or a config the model refuses,
 * fails the test (cmocka). */
void nb_ref_read_model(const nb_ref_file_t *f, nb_model_config_t *cfg, int *B, int *T, int *S,
                       nb_optim_config_t *oc);

/* Logits, loss, every trainable gradient, 10 AdamW steps' losses (and,
 * with frozen tensors, the final weights) of the file at path. */
void nb_ref_run_case(const char *path);
/* Every 2-part cut, and 3-part cuts with an embedding-only first part or a
 * head-only last part: loss and gradients equal the one-part run's bit for
 * bit (each part freezing what it holds of the file's frozen tensors). */
void nb_ref_split_case(const char *path);

#endif
