/* test_model_freeze.c - frozen tensors of a part without the PyTorch files
 * (tests/kernels/test_reference.c holds those): the patterns (globs,
 * every refusal with its reason), the gradient layout of the trainable
 * tensors only, the memory it saves (a tied head's wte buffer included,
 * and back when wte trains again), trainable gradients bit-identical to an
 * unfrozen run's whatever is frozen (also when backward stops below the
 * lowest trainable block), and an optimizer that never touches a frozen
 * weight. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/model.h"
#include "kernels/optim.h"

static nb_model_config_t tiny(void)
{
    nb_model_config_t c = { .n_layer = 3, .d_model = 16, .n_head = 2, .d_ff = 32, .vocab = 20, .max_seq = 8,
                            .causal = true, .norm = NB_MODEL_NORM_PRE, .head = NB_MODEL_HEAD_LM,
                            .tie_embeddings = true };
    return c;
}

static nb_freeze_spec_t spec_of(const char *const *freeze, int nf, const char *const *train, int nt)
{
    nb_freeze_spec_t f;
    memset(&f, 0, sizeof f);
    f.n_freeze = nf;
    f.n_trainable = nt;
    for (int i = 0; i < nf; i++)
        snprintf(f.freeze[i], sizeof f.freeze[i], "%s", freeze[i]);
    for (int i = 0; i < nt; i++)
        snprintf(f.trainable[i], sizeof f.trainable[i], "%s", train[i]);
    return f;
}

static void test_glob(void **state)
{
    (void)state;
    assert_true(nb_freeze_glob("wte", "wte"));
    assert_false(nb_freeze_glob("wte", "wpe"));
    assert_true(nb_freeze_glob("w?e", "wpe"));
    assert_true(nb_freeze_glob("h1.*", "h1.qkv.w"));
    assert_false(nb_freeze_glob("h1.*", "h10.qkv.w"));
    assert_true(nb_freeze_glob("h1*", "h10.qkv.w"));
    assert_true(nb_freeze_glob("*", "lnf.b"));
    assert_true(nb_freeze_glob("h*.ln?.w", "h3.ln2.w"));
    assert_false(nb_freeze_glob("h*.ln?.w", "h3.ln2.b"));
    assert_true(nb_freeze_glob("*.b", "h0.fcproj.b"));
    assert_false(nb_freeze_glob("*.b", "h0.fcproj.w"));
    assert_true(nb_freeze_glob("**e", "wte"));
    assert_false(nb_freeze_glob("**w", "wte"));
    assert_false(nb_freeze_glob("", "wte"));
    /* trainable wins over freeze */
    const char *fz[] = { "*" }, *tr[] = { "lnf.*" };
    nb_freeze_spec_t f = spec_of(fz, 1, tr, 1);
    assert_true(nb_freeze_matches(&f, "h0.qkv.w"));
    assert_false(nb_freeze_matches(&f, "lnf.w"));
    nb_freeze_spec_t none = spec_of(NULL, 0, NULL, 0);
    assert_false(nb_freeze_matches(&none, "wte"));
}

static void expect_refused(const nb_freeze_spec_t *f, const char *needle)
{
    nb_model_config_t c = tiny();
    char why[512] = "";
    assert_int_equal(nb_freeze_check(&c, f, why, sizeof why), NB_EINVAL);
    printf("  refused: %s\n", why);
    if (!strstr(why, needle))
        fail_msg("'%s' does not say '%s'", why, needle);
}

/* Bad input is refused at job time with the reason. */
static void test_check_refusals(void **state)
{
    (void)state;
    nb_model_config_t c = tiny();
    char why[512];
    const char *ok[] = { "wte", "wpe", "h0.*", "h1.*" };
    nb_freeze_spec_t f = spec_of(ok, 4, NULL, 0);
    assert_int_equal(nb_freeze_check(&c, &f, why, sizeof why), 0);
    nb_freeze_spec_t none = spec_of(NULL, 0, NULL, 0);
    assert_int_equal(nb_freeze_check(&c, &none, why, sizeof why), 0);
    const char *unknown[] = { "wte", "h3.*" }; /* 3 layers: h0..h2 */
    f = spec_of(unknown, 2, NULL, 0);
    expect_refused(&f, "job.freeze[1] \"h3.*\" matches no tensor of the model");
    expect_refused(&f, "blocks h0..h2");
    const char *typo[] = { "h0.qkv.weight" };
    f = spec_of(typo, 1, NULL, 0);
    expect_refused(&f, "\"h0.qkv.weight\" matches no tensor");
    const char *cls[] = { "cls.*" }; /* an lm model has no classifier */
    f = spec_of(cls, 1, NULL, 0);
    expect_refused(&f, "cls.*");
    const char *all[] = { "*" };
    f = spec_of(all, 1, NULL, 0);
    expect_refused(&f, "freezes every one of the model's");
    const char *every[] = { "wte", "wpe", "h*", "lnf.*" };
    f = spec_of(every, 4, NULL, 0);
    expect_refused(&f, "nothing would train");
    const char *tr_bad[] = { "lm.w" }; /* tied: no lm.w */
    f = spec_of(all, 1, tr_bad, 1);
    expect_refused(&f, "job.trainable[0] \"lm.w\" matches no tensor");
    const char *tr[] = { "lnf.*" };
    f = spec_of(NULL, 0, tr, 1);
    expect_refused(&f, "job.trainable lists exceptions to job.freeze");
    const char *chars[] = { "h0.[qkv]" };
    f = spec_of(chars, 1, NULL, 0);
    expect_refused(&f, "may contain only letters");
    const char *empty[] = { "" };
    f = spec_of(empty, 1, NULL, 0);
    expect_refused(&f, "job.freeze[0] \"\" is empty");
    f = spec_of(ok, 4, NULL, 0);
    f.n_freeze = NB_FREEZE_MAX + 1;
    expect_refused(&f, "at most 32");
    /* freeze all but the head: fine */
    f = spec_of(all, 1, tr, 1);
    assert_int_equal(nb_freeze_check(&c, &f, why, sizeof why), 0);
}

typedef struct {
    int32_t *tok, *tgt;
} batch_t;

static void make_batch(batch_t *b, nb_backend_t *be, int n, int vocab)
{
    int32_t h[64];
    for (int i = 0; i < n; i++)
        h[i] = (i * 7 + 3) % vocab;
    b->tok = nb_be_alloc(be, (size_t)n * 4);
    b->tgt = nb_be_alloc(be, (size_t)n * 4);
    nb_be_from_host(be, b->tok, h, (size_t)n * 4);
    for (int i = 0; i < n; i++)
        h[i] = (i * 5 + 1) % vocab;
    nb_be_from_host(be, b->tgt, h, (size_t)n * 4);
}

/* One forward and backward of the whole model with frozen[] applied (NULL:
 * none); returns the part (its gradients finished). */
static nb_part_t *run_once(nb_backend_t *be, const nb_model_config_t *c, const bool *frozen, const batch_t *b)
{
    nb_part_spec_t s = nb_part_spec_full(c);
    nb_part_t *p;
    char err[200];
    assert_int_equal(nb_part_new(be, c, &s, 5, NULL, &p, err, sizeof err), 0);
    if (frozen)
        assert_int_equal(nb_part_set_frozen(p, frozen), 0);
    nb_part_acts_t *a;
    assert_int_equal(nb_part_acts_new(p, 2, 8, &a), 0);
    nb_part_input_t in = { .tokens = b->tok, .targets = b->tgt, .loss_scale = 1 };
    float loss;
    assert_int_equal(nb_part_forward(p, a, &in, &loss), 0);
    assert_int_equal(nb_part_backward(p, a, NULL), 0);
    nb_part_finish_grads(p);
    nb_part_acts_free(a);
    return p;
}

/* Layout, memory and gradients for several frozen sets: the trainable
 * tensors' gradients equal the unfrozen run's bit for bit. */
static void check_frozen_set(nb_backend_t *be, const nb_model_config_t *c, const char *const *pats, int n,
                             const batch_t *b)
{
    nb_part_t *ref = run_once(be, c, NULL, b);
    nb_freeze_spec_t f = spec_of(pats, n, NULL, 0);
    nb_part_spec_t s = nb_part_spec_full(c);
    nb_part_t *p;
    char err[200];
    assert_int_equal(nb_part_new(be, c, &s, 5, NULL, &p, err, sizeof err), 0);
    size_t full_bytes = nb_part_grad_bytes(p);
    assert_int_equal(nb_part_freeze(p, &f), 0);
    int nt = nb_part_num_tensors(p);
    bool *frozen = calloc((size_t)nt, sizeof *frozen);
    size_t want = 0, frozen_floats = 0;
    for (int i = 0; i < nt; i++) {
        const nb_param_info_t *t = nb_part_tensor(p, i);
        frozen[i] = nb_freeze_matches(&f, t->name);
        assert_true(t->trainable == !frozen[i]);
        if (t->trainable) {
            assert_int_equal(t->grad_offset, want);
            want += t->numel;
        } else {
            frozen_floats += t->numel;
        }
    }
    assert_int_equal(nb_part_num_grads(p), want);
    assert_int_equal(nb_part_num_grads(p) + frozen_floats, nb_part_num_params(p));
    /* the saving: the frozen floats, and a tied head's own wte buffer too */
    int wte = nb_part_find_tensor(p, "wte");
    size_t tied = c->tie_embeddings && frozen[wte] ? (size_t)c->vocab * c->d_model * 4 : 0;
    assert_int_equal(nb_part_grad_bytes(p), full_bytes - frozen_floats * 4 - tied);
    nb_part_free(p);
    nb_part_t *q = run_once(be, c, frozen, b);
    float *gr = malloc(nb_part_num_params(ref) * 4), *gq = malloc(nb_part_num_grads(q) * 4 + 4);
    nb_be_to_host(be, gr, nb_part_grads(ref), nb_part_num_params(ref) * 4);
    nb_be_to_host(be, gq, nb_part_grads(q), nb_part_num_grads(q) * 4);
    for (int i = 0; i < nt; i++) {
        const nb_param_info_t *t = nb_part_tensor(q, i);
        if (!t->trainable)
            continue;
        if (memcmp(gq + t->grad_offset, gr + t->offset, t->numel * 4) != 0)
            fail_msg("%s: its gradient differs once other tensors are frozen", t->name);
    }
    printf("  frozen %d patterns: %d of %d tensors train, %zu of %zu gradient floats\n", n,
           nb_part_num_trainable(q), nt, nb_part_num_grads(q), nb_part_num_params(q));
    free(gr);
    free(gq);
    free(frozen);
    nb_part_free(q);
    nb_part_free(ref);
}

static void test_gradients_and_memory(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    batch_t b;
    make_batch(&b, be, 16, 20);
    nb_model_config_t c = tiny();
    const char *bottom[] = { "wte", "wpe", "h0.*", "h1.*" }; /* backward stops at block 2 */
    check_frozen_set(be, &c, bottom, 4, &b);
    const char *tied_wte[] = { "wte" }; /* wpe still trains: all blocks run backward */
    check_frozen_set(be, &c, tied_wte, 1, &b);
    const char *weights[] = { "*.w" }; /* biases train; LayerNorm weights frozen */
    check_frozen_set(be, &c, weights, 1, &b);
    const char *middle[] = { "h1.*", "lnf.w" };
    check_frozen_set(be, &c, middle, 2, &b);
    c.norm = NB_MODEL_NORM_POST;
    c.tie_embeddings = false;
    c.causal = false;
    const char *post[] = { "emb_ln.*", "h0.qkv.w", "lm.w" };
    check_frozen_set(be, &c, post, 3, &b);
    const char *post_bottom[] = { "wte", "wpe", "emb_ln.*", "h0.*" };
    check_frozen_set(be, &c, post_bottom, 4, &b);
    nb_be_dealloc(be, b.tok);
    nb_be_dealloc(be, b.tgt);
    nb_be_free(be);
}

/* A tied head in its own part follows its embedding part's wte: frozen
 * after the head exists, its buffer goes; trained again, it comes back. */
static void test_tied_head_follows(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    nb_model_config_t c = tiny();
    nb_part_spec_t s0 = { .embed = true, .first = 0, .last = 2 }, s1 = { .first = 2, .last = 3, .head = true };
    nb_part_t *p0, *p1;
    char err[200];
    assert_int_equal(nb_part_new(be, &c, &s0, 5, NULL, &p0, err, sizeof err), 0);
    assert_int_equal(nb_part_new(be, &c, &s1, 5, p0, &p1, err, sizeof err), 0);
    size_t vc4 = (size_t)c.vocab * c.d_model * 4;
    size_t head_bytes = nb_part_grad_bytes(p1);
    assert_int_equal(head_bytes, nb_part_num_params(p1) * 4 + vc4);
    nb_freeze_spec_t f = spec_of((const char *[]){ "wte" }, 1, NULL, 0);
    assert_int_equal(nb_part_freeze(p0, &f), 0);
    assert_int_equal(nb_part_grad_bytes(p1), head_bytes - vc4);
    /* backward of the head with wte frozen: no gradient for it anywhere */
    batch_t b;
    make_batch(&b, be, 16, 20);
    nb_part_acts_t *a0, *a1;
    assert_int_equal(nb_part_acts_new(p0, 2, 8, &a0), 0);
    assert_int_equal(nb_part_acts_new(p1, 2, 8, &a1), 0);
    nb_part_input_t in0 = { .tokens = b.tok }, in1 = { .targets = b.tgt, .loss_scale = 1 };
    float loss;
    assert_int_equal(nb_part_forward(p0, a0, &in0, NULL), 0);
    in1.x = nb_part_acts_output(a0);
    assert_int_equal(nb_part_forward(p1, a1, &in1, &loss), 0);
    assert_int_equal(nb_part_backward(p1, a1, NULL), 0);
    assert_int_equal(nb_part_backward(p0, a0, nb_part_acts_dinput(a1)), 0);
    nb_part_finish_grads(p1);
    nb_part_finish_grads(p0);
    /* trains again: the head's buffer is back, zeroed */
    assert_int_equal(nb_part_set_frozen(p0, NULL), 0);
    assert_int_equal(nb_part_grad_bytes(p1), head_bytes);
    assert_int_equal(nb_part_num_grads(p0), nb_part_num_params(p0));
    nb_part_acts_free(a0);
    nb_part_acts_free(a1);
    nb_part_free(p1);
    nb_part_free(p0);
    nb_be_dealloc(be, b.tok);
    nb_be_dealloc(be, b.tgt);
    nb_be_free(be);
}

/* The optimizer covers the trainable tensors only: AdamW state of
 * nb_part_num_grads floats, frozen weights never change (weight decay
 * included), trainable ones do. */
static void test_optimizer_skips_frozen(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    nb_model_config_t c = tiny();
    nb_part_spec_t s = nb_part_spec_full(&c);
    nb_part_t *p;
    char err[200];
    assert_int_equal(nb_part_new(be, &c, &s, 5, NULL, &p, err, sizeof err), 0);
    nb_freeze_spec_t f = spec_of((const char *[]){ "wte", "h1.*" }, 2, NULL, 0);
    assert_int_equal(nb_part_freeze(p, &f), 0);
    nb_optim_config_t oc = nb_optim_config_default();
    oc.weight_decay = 0.5f;
    nb_optim_t *o;
    assert_int_equal(nb_part_optim_new(p, &oc, &o), 0);
    assert_int_equal(nb_optim_numel(o), nb_part_num_grads(p));
    /* segments whose gradient ranges overlap (an initialiser that left
     * grad_offset 0) are refused, not run over another tensor's state */
    nb_optim_segment_t two[2] = { { .offset = 0, .numel = 4, .grad_offset = 0 },
                                  { .offset = 4, .numel = 4, .grad_offset = 0 } };
    nb_optim_t *bad = NULL;
    assert_int_equal(nb_optim_new(be, &oc, 8, two, 2, &bad), NB_EINVAL);
    two[1].grad_offset = 4;
    assert_int_equal(nb_optim_new(be, &oc, 8, two, 2, &bad), 0);
    nb_optim_free(bad);
    size_t n = nb_part_num_params(p);
    float *before = malloc(n * 4), *after = malloc(n * 4);
    nb_be_to_host(be, before, nb_part_params(p), n * 4);
    batch_t b;
    make_batch(&b, be, 16, 20);
    nb_part_acts_t *a;
    assert_int_equal(nb_part_acts_new(p, 2, 8, &a), 0);
    for (int step = 0; step < 3; step++) {
        nb_part_zero_grad(p);
        nb_part_input_t in = { .tokens = b.tok, .targets = b.tgt, .loss_scale = 1 };
        float loss;
        assert_int_equal(nb_part_forward(p, a, &in, &loss), 0);
        assert_int_equal(nb_part_backward(p, a, NULL), 0);
        double ss = nb_optim_sumsq(be, nb_part_grads(p), nb_part_num_grads(p));
        nb_optim_step(o, nb_part_params(p), nb_part_grads(p), 1e-2f, nb_optim_clip_scale(&oc, ss));
    }
    nb_be_to_host(be, after, nb_part_params(p), n * 4);
    for (int i = 0; i < nb_part_num_tensors(p); i++) {
        const nb_param_info_t *t = nb_part_tensor(p, i);
        bool same = memcmp(before + t->offset, after + t->offset, t->numel * 4) == 0;
        if (!t->trainable && !same)
            fail_msg("frozen %s changed", t->name);
        if (t->trainable && same)
            fail_msg("trainable %s did not change", t->name);
    }
    free(before);
    free(after);
    nb_part_acts_free(a);
    nb_optim_free(o);
    nb_part_free(p);
    nb_be_dealloc(be, b.tok);
    nb_be_dealloc(be, b.tgt);
    nb_be_free(be);
}

typedef struct {
    int n;
    size_t at[16];
} ready_t;

static void on_ready(void *ud, size_t offset)
{
    ready_t *r = ud;
    if (r->n < 16)
        r->at[r->n++] = offset;
}

/* The gradient-ready callback (data-parallel replicas reduce behind it)
 * reports offsets into the gradient buffer of the trainable tensors: the
 * head's first, each block's first (last block first), 0 after the
 * embedding; blocks below where backward stops are not reported. */
static void test_grad_ready_offsets(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    nb_model_config_t c = tiny();
    c.tie_embeddings = false;
    batch_t b;
    make_batch(&b, be, 16, 20);
    const char *sets[][3] = { { "h1.*", "lnf.w", NULL }, { "wte", "wpe", "h0.*" } };
    for (int k = 0; k < 2; k++) {
        nb_part_spec_t s = nb_part_spec_full(&c);
        nb_part_t *p;
        char err[200];
        assert_int_equal(nb_part_new(be, &c, &s, 5, NULL, &p, err, sizeof err), 0);
        nb_freeze_spec_t f = spec_of(sets[k], sets[k][2] ? 3 : 2, NULL, 0);
        assert_int_equal(nb_part_freeze(p, &f), 0);
        /* expected: where the head and each block start in the gradient buffer */
        size_t start[8] = { 0 }, go = 0, head = 0;
        bool head_seen = false;
        for (int i = 0; i < nb_part_num_tensors(p); i++) {
            const nb_param_info_t *t = nb_part_tensor(p, i);
            int blk = -1;
            size_t len = strlen(t->name);
            if (len > 6 && !strcmp(t->name + len - 6, ".ln1.w") && sscanf(t->name, "h%d", &blk) == 1)
                start[blk] = go; /* a block's first tensor */
            if (!head_seen && (!strncmp(t->name, "lnf", 3) || !strncmp(t->name, "lm", 2))) {
                head = go;
                head_seen = true;
            }
            if (t->trainable)
                go += t->numel;
        }
        ready_t r = { 0 };
        nb_part_set_grad_ready(p, on_ready, &r);
        nb_part_acts_t *a;
        assert_int_equal(nb_part_acts_new(p, 2, 8, &a), 0);
        nb_part_input_t in = { .tokens = b.tok, .targets = b.tgt, .loss_scale = 1 };
        float loss;
        assert_int_equal(nb_part_forward(p, a, &in, &loss), 0);
        assert_int_equal(nb_part_backward(p, a, NULL), 0);
        int stop = k == 1 ? 1 : 0; /* wte, wpe, h0 frozen: backward stops above block 0 */
        assert_int_equal(r.n, 1 + (c.n_layer - stop) + 1);
        assert_int_equal(r.at[0], head);
        for (int l = c.n_layer - 1, j = 1; l >= stop; l--, j++)
            assert_int_equal(r.at[j], start[l]);
        assert_int_equal(r.at[r.n - 1], 0);
        for (int j = 1; j < r.n; j++)
            assert_true(r.at[j] <= r.at[j - 1] && r.at[j - 1] <= nb_part_num_grads(p));
        printf("  frozen %s...: ready at", sets[k][0]);
        for (int j = 0; j < r.n; j++)
            printf(" %zu", r.at[j]);
        printf(" of %zu gradient floats\n", nb_part_num_grads(p));
        nb_part_acts_free(a);
        nb_part_free(p);
    }
    nb_be_dealloc(be, b.tok);
    nb_be_dealloc(be, b.tgt);
    nb_be_free(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_glob),
        cmocka_unit_test(test_check_refusals),
        cmocka_unit_test(test_gradients_and_memory),
        cmocka_unit_test(test_tied_head_follows),
        cmocka_unit_test(test_optimizer_skips_frozen),
        cmocka_unit_test(test_grad_ready_offsets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
