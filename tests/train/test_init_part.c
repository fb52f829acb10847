/* test_init_part.c - job.init from a Nebula weights file: each pipeline
 * part takes its own tensors from one whole-model file (nb_hf_init_part),
 * as it does from a safetensors file: every part of a 3-stage chain and of
 * the tied U-shape (a head-only part borrowing the embedding) ends with
 * exactly the whole model's values. A file of another model is refused
 * naming the field; a part file that lacks the tensors asked for is
 * refused naming the tensor; a truncated file is refused; the part is
 * unchanged by every refusal. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "daemon/train/hf_model.h"
#include "daemon/train/weights.h"

static char dir[256];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "%s/nb_init_part_XXXXXX", P_tmpdir);
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static nb_model_config_t model(bool tie)
{
    return (nb_model_config_t){ .n_layer = 4, .d_model = 16, .n_head = 2, .d_ff = 32, .vocab = 64,
                                .max_seq = 8, .causal = true, .norm = NB_MODEL_NORM_PRE,
                                .head = NB_MODEL_HEAD_LM, .tie_embeddings = tie };
}

/* Every tensor of p equals the tensor of the same name in whole. */
static void assert_part_from(nb_part_t *p, nb_part_t *whole)
{
    nb_backend_t *be = nb_part_backend(p);
    for (int i = 0; i < nb_part_num_tensors(p); i++) {
        const nb_param_info_t *t = nb_part_tensor(p, i);
        int k = nb_part_find_tensor(whole, t->name);
        assert_true(k >= 0);
        const nb_param_info_t *w = nb_part_tensor(whole, k);
        assert_int_equal(w->numel, t->numel);
        float *a = malloc(t->numel * 4), *b = malloc(t->numel * 4);
        nb_be_to_host(be, a, nb_part_params(p) + t->offset, t->numel * 4);
        nb_be_to_host(be, b, nb_part_params(whole) + w->offset, t->numel * 4);
        if (memcmp(a, b, t->numel * 4) != 0)
            fail_msg("tensor %s differs from the whole model's", t->name);
        free(a);
        free(b);
    }
}

static void note(void *ud, const char *text)
{
    (void)ud;
    print_message("  note: %s\n", text);
}

static int init(const char *path, nb_part_t *p, char *err, size_t errlen)
{
    int rc = nb_hf_init_part(path, p, note, NULL, err, errlen);
    if (rc)
        print_message("  refused: %s\n", err);
    return rc;
}

static void test_parts_from_whole_weights(void **state)
{
    (void)state;
    char path[300], err[512];
    nb_backend_t *be = nb_cpu_backend_new();
    for (int tie = 0; tie < 2; tie++) {
        nb_model_config_t c = model(tie);
        nb_part_spec_t full = nb_part_spec_full(&c);
        nb_part_t *whole;
        assert_int_equal(nb_part_new(be, &c, &full, 5, NULL, &whole, err, sizeof err), 0);
        snprintf(path, sizeof path, "%s/whole-%d.weights", dir, tie);
        assert_int_equal(nb_weights_save(path, whole, err, sizeof err), 0);
        /* the chain (untied) or the U-shape (tied: the head-only part borrows wte) */
        nb_part_spec_t specs[3] = { { .embed = true, .first = 0, .last = 2 }, { .first = 2, .last = 3 },
                                    { .first = 3, .last = 4, .head = true } };
        if (tie) {
            specs[0] = (nb_part_spec_t){ .embed = true, .first = 0, .last = 2 };
            specs[1] = (nb_part_spec_t){ .first = 2, .last = 4 };
            specs[2] = (nb_part_spec_t){ .first = 4, .last = 4, .head = true };
        }
        nb_part_t *parts[3] = { 0 };
        for (int s = 0; s < 3; s++) {
            nb_part_t *tied = tie && specs[s].head ? parts[0] : NULL;
            assert_int_equal(nb_part_new(be, &c, &specs[s], 9, tied, &parts[s], err, sizeof err), 0);
            if (init(path, parts[s], err, sizeof err))
                fail_msg("%s part %d: %s", tie ? "tied" : "untied", s, err);
            assert_part_from(parts[s], whole);
        }
        /* a part's own file still loads (and a whole model from the whole file) */
        char own[300];
        snprintf(own, sizeof own, "%s/stage1-%d.weights", dir, tie);
        assert_int_equal(nb_weights_save(own, parts[1], err, sizeof err), 0);
        assert_int_equal(nb_part_init_params(parts[1], 3), 0);
        assert_int_equal(init(own, parts[1], err, sizeof err), 0);
        assert_part_from(parts[1], whole);
        nb_part_t *again;
        assert_int_equal(nb_part_new(be, &c, &full, 11, NULL, &again, err, sizeof err), 0);
        assert_int_equal(init(path, again, err, sizeof err), 0);
        assert_part_from(again, whole);
        nb_part_free(again);
        /* stage 0 cannot take its share from stage 1's file: the tensor is named */
        assert_int_equal(nb_part_init_params(parts[0], 3), 0);
        assert_int_equal(init(own, parts[0], err, sizeof err), NB_EINVAL);
        assert_non_null(strstr(err, own));
        assert_non_null(strstr(err, "'wte'"));
        for (int s = 2; s >= 0; s--)
            nb_part_free(parts[s]);
        nb_part_free(whole);
    }
    nb_be_free(be);
}

static void test_refusals(void **state)
{
    (void)state;
    char path[300], other[300], cut[300], err[512];
    nb_backend_t *be = nb_cpu_backend_new();
    nb_model_config_t c = model(false), d = c;
    d.d_ff = 48;
    nb_part_spec_t full = nb_part_spec_full(&c), mid = { .first = 1, .last = 3 };
    nb_part_t *whole, *p;
    assert_int_equal(nb_part_new(be, &c, &full, 5, NULL, &whole, err, sizeof err), 0);
    snprintf(path, sizeof path, "%s/whole.weights", dir);
    assert_int_equal(nb_weights_save(path, whole, err, sizeof err), 0);
    nb_part_t *wd;
    nb_part_spec_t fd = nb_part_spec_full(&d);
    assert_int_equal(nb_part_new(be, &d, &fd, 5, NULL, &wd, err, sizeof err), 0);
    snprintf(other, sizeof other, "%s/other.weights", dir);
    assert_int_equal(nb_weights_save(other, wd, err, sizeof err), 0);
    nb_part_free(wd);
    assert_int_equal(nb_part_new(be, &c, &mid, 9, NULL, &p, err, sizeof err), 0);
    size_t n = nb_part_num_params(p);
    float *before = malloc(n * 4), *after = malloc(n * 4);
    nb_be_to_host(be, before, nb_part_params(p), n * 4);
    /* another model: the first differing field named */
    assert_int_equal(init(other, p, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "d_ff is 48 in the file, 32 in this model"));
    /* truncated: refused before anything is read */
    snprintf(cut, sizeof cut, "%s/cut.weights", dir);
    FILE *in = fopen(path, "rb"), *out = fopen(cut, "wb");
    char buf[4096];
    size_t got, total = 0;
    while ((got = fread(buf, 1, sizeof buf, in)) > 0)
        total += fwrite(buf, 1, got, out);
    fclose(in);
    fclose(out);
    assert_int_equal(truncate(cut, (off_t)(total - 5)), 0);
    assert_int_not_equal(init(cut, p, err, sizeof err), 0);
    assert_non_null(strstr(err, cut));
    nb_be_to_host(be, after, nb_part_params(p), n * 4);
    assert_memory_equal(before, after, n * 4);
    /* and the same part then loads its slice */
    assert_int_equal(init(path, p, err, sizeof err), 0);
    assert_part_from(p, whole);
    free(before);
    free(after);
    nb_part_free(p);
    nb_part_free(whole);
    nb_be_free(be);
}

/* A file trained with adapters loads only into a model with the same
 * adapters: a model without them (or with others) is refused naming the
 * field, so trained adapter tensors are never silently dropped; the same
 * adapters load every tensor; a file without adapters still loads into a
 * model with them (the adapters keep their fresh init). A safetensors file
 * of the adapter model in Nebula's names gives every tensor, adapters too. */
static void test_adapter_fields(void **state)
{
    (void)state;
    char path[300], plain[300], err[512];
    nb_backend_t *be = nb_cpu_backend_new();
    nb_model_config_t a = model(false), none = a, other = a;
    a.adapter_size = 4;
    a.adapter_after = NB_ADAPTER_FFN;
    a.adapter_first = 0;
    a.adapter_last = 4;
    other = a;
    other.adapter_last = 3;
    nb_part_spec_t full = nb_part_spec_full(&a), mid = { .first = 1, .last = 3 };
    nb_part_t *whole, *p;
    assert_int_equal(nb_part_new(be, &a, &full, 5, NULL, &whole, err, sizeof err), 0);
    snprintf(path, sizeof path, "%s/adapters.weights", dir);
    assert_int_equal(nb_weights_save(path, whole, err, sizeof err), 0);
    assert_int_equal(nb_part_new(be, &none, &mid, 9, NULL, &p, err, sizeof err), 0);
    assert_int_equal(init(path, p, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "adapter_size is 4 in the file, 0 in this model"));
    nb_part_free(p);
    assert_int_equal(nb_part_new(be, &other, &mid, 9, NULL, &p, err, sizeof err), 0);
    assert_int_equal(init(path, p, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "adapter_last is 4 in the file, 3 in this model"));
    nb_part_free(p);
    assert_int_equal(nb_part_new(be, &a, &mid, 9, NULL, &p, err, sizeof err), 0);
    assert_int_equal(init(path, p, err, sizeof err), 0);
    assert_part_from(p, whole);
    /* a file without adapters into the adapter model: allowed */
    nb_part_t *pw;
    nb_part_spec_t fn = nb_part_spec_full(&none);
    assert_int_equal(nb_part_new(be, &none, &fn, 5, NULL, &pw, err, sizeof err), 0);
    snprintf(plain, sizeof plain, "%s/plain.weights", dir);
    assert_int_equal(nb_weights_save(plain, pw, err, sizeof err), 0);
    assert_int_equal(init(plain, p, err, sizeof err), 0);
    nb_part_free(pw);
    nb_part_free(p);
    /* the same adapter model saved as safetensors in Nebula's names: every
     * tensor, adapters included, loads into a part of the same model */
    char st[300];
    snprintf(st, sizeof st, "%s/adapters.safetensors", dir);
    assert_int_equal(nb_hf_save(st, whole, NB_HF_NAMES_NEBULA, err, sizeof err), 0);
    for (int k = 0; k < 2; k++) {
        nb_part_spec_t sp = k ? mid : full;
        assert_int_equal(nb_part_new(be, &a, &sp, 9, NULL, &p, err, sizeof err), 0);
        if (init(st, p, err, sizeof err))
            fail_msg("nebula-named safetensors with adapters: %s", err);
        assert_part_from(p, whole);
        nb_part_free(p);
    }
    nb_part_free(whole);
    nb_be_free(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parts_from_whole_weights),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_adapter_fields),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
