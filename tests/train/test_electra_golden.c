/* test_electra_golden.c - three steps of multi-generator ELECTRA
 * (nb_electra_step: two generators, one discriminator) against the PyTorch
 * replica of scripts/gen_electra_golden.py (tests/data/ref_electra.bin),
 * which writes out the masked sampler, the keyed replacement draw and the
 * step from their descriptions. Both start from the file's weights and
 * token files.
 * Checked: the corrupted IDs and replaced flags the discriminator receives
 * at every step, exactly; the generators' and the discriminator's losses
 * at every step within 1e-5 relative (float32 against float64); every
 * final weight of every model within 1e-4 of the tensor's largest value
 * (but the key bias, whose gradient is zero: see each_tensor).
 * The largest error of each check is printed. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "daemon/data/tokens.h"
#include "daemon/train/electra.h"
#include "tests/support/ref_file.h"

#define REF "tests/data/ref_electra.bin"

static nb_ref_file_t ref;

static const nb_ref_tensor_t *need(const char *name)
{
    const nb_ref_tensor_t *t = nb_ref_get(&ref, name);
    if (!t)
        fail_msg("%s: no tensor %s", REF, name);
    return t;
}

static void ints(const char *name, int32_t *dst, long n)
{
    assert_int_equal(nb_ref_ints(need(name), dst), n);
}

static void floats(const char *name, float *dst, long n)
{
    assert_int_equal(nb_ref_floats(need(name), dst), n);
}

static nb_optim_config_t optim_of(const char *name)
{
    float o[9];
    floats(name, o, 9);
    return (nb_optim_config_t){ .lr = o[0], .lr_min = o[1], .warmup_steps = (int)o[2], .total_steps = (int)o[3],
                                .beta1 = o[4], .beta2 = o[5], .eps = o[6], .weight_decay = o[7], .grad_clip = o[8] };
}

static nb_model_config_t model_of(const char *name, int vocab, int T, nb_head_kind_t head)
{
    int32_t m[4];
    ints(name, m, 4);
    return (nb_model_config_t){ .n_layer = m[0], .d_model = m[1], .n_head = m[2], .d_ff = m[3], .vocab = vocab,
                                .max_seq = T, .causal = false, .norm = NB_MODEL_NORM_PRE, .head = head,
                                .n_classes = head == NB_MODEL_HEAD_TOKCLS ? 2 : 0,
                                .tie_embeddings = head == NB_MODEL_HEAD_MLM };
}

/* Sets (load) or compares (tol > 0) every tensor of p with prefix.NAME. */
static void each_tensor(nb_backend_t *be, nb_part_t *p, const char *prefix, double tol)
{
    for (int i = 0; i < nb_part_num_tensors(p); i++) {
        const nb_param_info_t *pi = nb_part_tensor(p, i);
        char name[96];
        snprintf(name, sizeof name, "%s.%s", prefix, pi->name);
        float *want = malloc(pi->numel * sizeof(float)), *have = malloc(pi->numel * sizeof(float));
        floats(name, want, (long)pi->numel);
        if (tol <= 0) {
            nb_be_from_host(be, nb_part_params(p) + pi->offset, want, pi->numel * sizeof(float));
        } else {
            nb_be_to_host(be, have, nb_part_params(p) + pi->offset, pi->numel * sizeof(float));
            double maxerr = 0, maxref = 0;
            /* the key third of qkv.b has a zero gradient in exact
             * arithmetic (softmax ignores a shift shared by all keys), so
             * AdamW turns rounding noise (1e-9) into steps of +-lr on
             * either side: left out */
            size_t C = (size_t)nb_part_config(p)->d_model;
            bool kbias = strstr(pi->name, "qkv.b") != NULL;
            for (size_t k = 0; k < pi->numel; k++) {
                if (kbias && k >= C && k < 2 * C)
                    continue;
                maxerr = fmax(maxerr, fabs((double)have[k] - want[k]));
                maxref = fmax(maxref, fabs((double)want[k]));
            }
            double rel = maxerr / (maxref > 1e-30 ? maxref : 1e-30);
            print_message("%-16s max |err| %.3e (relative %.3e)\n", name, maxerr, rel);
            if (!(rel <= tol))
                fail_msg("%s: relative error %.3e exceeds %.1e", name, rel, tol);
        }
        free(want);
        free(have);
    }
}

static void close_loss(const char *what, float c, float r)
{
    double rel = fabs((double)c - r) / fmax(fabs((double)r), 1e-30);
    print_message("%-16s %.7f vs %.7f (relative %.2e)\n", what, c, r, rel);
    if (!(rel <= 1e-5))
        fail_msg("%s: %.7f vs reference %.7f (relative %.2e > 1e-5)", what, c, r, rel);
}

static void test_golden(void **state)
{
    char err[512];
    int rc = nb_ref_load(REF, &ref, err, sizeof err);
    if (rc)
        fail_msg("%s", err);
    int32_t conf[8];
    ints("config", conf, 8);
    int steps = conf[0], T = conf[1], vdata = conf[2], G = conf[3];
    assert_int_equal(G, 2);
    float sc[2];
    floats("scalars", sc, 2);
    static nb_electra_config_t c;
    c.model = model_of("dmodel", vdata + 1, T, NB_MODEL_HEAD_TOKCLS);
    c.optim = optim_of("doptim");
    c.seed = 1;
    c.seq_len = T;
    c.steps = steps;
    c.mask_prob = sc[0];
    c.disc_weight = sc[1];
    c.n_gen = G;
    char paths[2][128];
    for (int g = 0; g < G; g++) {
        nb_electra_gen_config_t *gc = &c.gen[g];
        char name[32];
        snprintf(gc->name, sizeof gc->name, "g%d", g);
        snprintf(name, sizeof name, "gmodel%d", g);
        gc->model = model_of(name, vdata + 1, T, NB_MODEL_HEAD_MLM);
        gc->optim = optim_of("goptim");
        gc->seed = (uint64_t)conf[6 + g];
        gc->sequences = conf[4 + g];
        snprintf(name, sizeof name, "tok%d", g);
        const nb_ref_tensor_t *t = need(name);
        int32_t *ids = malloc(t->numel * 4);
        uint32_t *u = malloc(t->numel * 4);
        ints(name, ids, (long)t->numel);
        for (size_t k = 0; k < t->numel; k++)
            u[k] = (uint32_t)ids[k];
        snprintf(paths[g], sizeof paths[g], "/tmp/nb_electra_golden_%d_%d.tok", (int)getpid(), g);
        assert_int_equal(nb_tokens_write(paths[g], u, t->numel, (uint32_t)vdata, err, sizeof err), 0);
        snprintf(gc->data, sizeof gc->data, "%s", paths[g]);
        free(ids);
        free(u);
    }
    nb_backend_t *be = nb_cpu_backend_new();
    nb_electra_t *e = NULL;
    rc = nb_electra_new(be, &c, &e, err, sizeof err);
    if (rc)
        fail_msg("%s", err);
    for (int g = 0; g < G; g++) {
        char pre[32];
        snprintf(pre, sizeof pre, "w%d", g);
        each_tensor(be, nb_electra_gen_part(nb_electra_gen(e, g)), pre, 0);
    }
    each_tensor(be, nb_electra_disc_part(nb_electra_disc(e)), "wd", 0);
    for (int s = 0; s < steps; s++) {
        nb_electra_step_t st;
        rc = nb_electra_step(e, &st, err, sizeof err);
        if (rc)
            fail_msg("%s", err);
        char name[32];
        float gl[2], dl;
        snprintf(name, sizeof name, "s%d.gen_loss", s);
        floats(name, gl, 2);
        snprintf(name, sizeof name, "s%d.disc_loss", s);
        floats(name, &dl, 1);
        for (int g = 0; g < G; g++) {
            const nb_electra_batch_t *b = nb_electra_received(e, g);
            long n = (long)b->n * b->T;
            int32_t *want = malloc((size_t)n * 4);
            snprintf(name, sizeof name, "s%d.ids%d", s, g);
            ints(name, want, n);
            for (long k = 0; k < n; k++)
                if (b->ids[k] != want[k])
                    fail_msg("step %d generator %d position %ld: corrupted ID %d, reference %d", s, g, k, b->ids[k],
                             want[k]);
            snprintf(name, sizeof name, "s%d.rep%d", s, g);
            const nb_ref_tensor_t *rt = need(name);
            assert_int_equal((long)rt->numel, n);
            const uint8_t *rep = rt->data;
            for (long k = 0; k < n; k++)
                if (b->replaced[k] != rep[k])
                    fail_msg("step %d generator %d position %ld: replaced %u, reference %u", s, g, k, b->replaced[k],
                             rep[k]);
            free(want);
            snprintf(name, sizeof name, "step %d gen %d", s, g);
            close_loss(name, st.gen_loss[g], gl[g]);
        }
        snprintf(name, sizeof name, "step %d disc", s);
        close_loss(name, st.disc_loss, dl);
    }
    each_tensor(be, nb_electra_disc_part(nb_electra_disc(e)), "fd", 1e-4);
    for (int g = 0; g < G; g++) {
        char pre[32];
        snprintf(pre, sizeof pre, "f%d", g);
        each_tensor(be, nb_electra_gen_part(nb_electra_gen(e, g)), pre, 1e-4);
        unlink(paths[g]);
    }
    nb_electra_free(e);
    nb_be_free(be);
    nb_ref_free(&ref);
}

int main(void)
{
    const struct CMUnitTest tests[] = { cmocka_unit_test(test_golden) };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
