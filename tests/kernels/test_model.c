/* test_model.c - transformer parts without the PyTorch files: config
 * validation, parameter layout, init that is independent of the partition,
 * tied-embedding rules, bad inputs, gradient accumulation and several
 * micro-batches in flight. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>
#include "kernels/model.h"
#include "kernels/optim.h"
#include "kernels/rng.h"

static nb_model_config_t tiny(void)
{
    nb_model_config_t c = { .n_layer = 3, .d_model = 16, .n_head = 2, .d_ff = 32, .vocab = 20, .max_seq = 8,
                            .causal = true, .norm = NB_MODEL_NORM_PRE, .head = NB_MODEL_HEAD_LM,
                            .tie_embeddings = true };
    return c;
}

static void expect_invalid(nb_model_config_t c, const char *field)
{
    const char *why = nb_model_config_validate(&c);
    assert_non_null(why);
    if (!strstr(why, field))
        fail_msg("message '%s' does not name '%s'", why, field);
}

static void test_config_validate(void **state)
{
    nb_model_config_t c = tiny();
    assert_null(nb_model_config_validate(&c));
    c.d_model = 15;
    expect_invalid(c, "divisible by n_head");
    c = tiny(); c.d_model = 0; expect_invalid(c, "d_model");
    c = tiny(); c.n_head = 0; expect_invalid(c, "n_head");
    c = tiny(); c.d_ff = 0; expect_invalid(c, "d_ff");
    c = tiny(); c.vocab = 0; expect_invalid(c, "vocab");
    c = tiny(); c.max_seq = 0; expect_invalid(c, "max_seq");
    c = tiny(); c.n_layer = -1; expect_invalid(c, "n_layer");
    c = tiny(); c.head = NB_MODEL_HEAD_SEQCLS; c.n_classes = 1; expect_invalid(c, "n_classes");
    c = tiny(); c.head = (nb_head_kind_t)9; expect_invalid(c, "head");
    nb_head_kind_t h;
    assert_int_equal(nb_head_kind_parse("tokcls", &h), 0);
    assert_int_equal(h, NB_MODEL_HEAD_TOKCLS);
    assert_int_equal(nb_head_kind_parse("bogus", &h), NB_EINVAL);
    nb_norm_t n;
    assert_int_equal(nb_norm_parse("post", &n), 0);
    assert_int_equal(n, NB_MODEL_NORM_POST);
}

static void test_layout(void **state)
{
    nb_backend_t *be = nb_cpu_backend_new();
    nb_model_config_t c = tiny();
    nb_part_spec_t s = nb_part_spec_full(&c);
    nb_part_t *p;
    char err[200];
    assert_int_equal(nb_part_new(be, &c, &s, 1, NULL, &p, err, sizeof err), 0);
    /* wte, wpe, 12 per block, lnf.w, lnf.b (tied: no lm.w) */
    assert_int_equal(nb_part_num_tensors(p), 2 + 12 * 3 + 2);
    size_t off = 0;
    for (int i = 0; i < nb_part_num_tensors(p); i++) {
        const nb_param_info_t *t = nb_part_tensor(p, i);
        assert_int_equal(t->offset, off);
        assert_int_equal(t->decay, t->ndim == 2);
        off += t->numel;
    }
    assert_int_equal(off, nb_part_num_params(p));
    int q = nb_part_find_tensor(p, "h2.qkv.w");
    assert_true(q >= 0);
    assert_int_equal(nb_part_tensor(p, q)->shape[0], 48);
    assert_int_equal(nb_part_tensor(p, q)->shape[1], 16);
    assert_int_equal(nb_part_find_tensor(p, "lm.w"), -1);
    /* LayerNorm weights start at 1, biases at 0, gradients at 0 */
    float h[48 * 16];
    nb_be_to_host(be, h, nb_part_params(p) + nb_part_tensor(p, nb_part_find_tensor(p, "h1.ln2.w"))->offset, 16 * 4);
    for (int i = 0; i < 16; i++)
        assert_true(h[i] == 1.0f);
    nb_be_to_host(be, h, nb_part_grads(p), 16 * 4);
    for (int i = 0; i < 16; i++)
        assert_true(h[i] == 0.0f);
    nb_part_free(p);
    c.tie_embeddings = false;
    c.norm = NB_MODEL_NORM_POST;
    assert_int_equal(nb_part_new(be, &c, &s, 1, NULL, &p, err, sizeof err), 0);
    assert_true(nb_part_find_tensor(p, "lm.w") >= 0);
    assert_true(nb_part_find_tensor(p, "emb_ln.w") >= 0);
    assert_int_equal(nb_part_find_tensor(p, "lnf.w"), -1);
    nb_part_free(p);
    nb_be_free(be);
}

/* The weights of any part equal the same tensors of the full model. */
static void test_init_independent_of_partition(void **state)
{
    nb_backend_t *be = nb_cpu_backend_new();
    nb_model_config_t c = tiny();
    c.tie_embeddings = false;
    nb_part_spec_t full = nb_part_spec_full(&c);
    nb_part_spec_t mid = { .embed = false, .first = 1, .last = 2, .head = false };
    nb_part_spec_t tail = { .embed = false, .first = 2, .last = 3, .head = true };
    nb_part_t *pf, *pm, *pt, *other;
    char err[200];
    assert_int_equal(nb_part_new(be, &c, &full, 42, NULL, &pf, err, sizeof err), 0);
    assert_int_equal(nb_part_new(be, &c, &mid, 42, NULL, &pm, err, sizeof err), 0);
    assert_int_equal(nb_part_new(be, &c, &tail, 42, NULL, &pt, err, sizeof err), 0);
    assert_int_equal(nb_part_new(be, &c, &full, 43, NULL, &other, err, sizeof err), 0);
    nb_part_t *parts[2] = { pm, pt };
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < nb_part_num_tensors(parts[k]); i++) {
            const nb_param_info_t *t = nb_part_tensor(parts[k], i);
            const nb_param_info_t *f = nb_part_tensor(pf, nb_part_find_tensor(pf, t->name));
            assert_int_equal(t->numel, f->numel);
            float *a = malloc(t->numel * 4), *b = malloc(t->numel * 4);
            nb_be_to_host(be, a, nb_part_params(parts[k]) + t->offset, t->numel * 4);
            nb_be_to_host(be, b, nb_part_params(pf) + f->offset, t->numel * 4);
            if (memcmp(a, b, t->numel * 4) != 0)
                fail_msg("%s differs between the part and the full model", t->name);
            free(a);
            free(b);
        }
    /* another seed gives other weights; the std of a weight matrix is ~0.02 */
    const nb_param_info_t *w = nb_part_tensor(pf, nb_part_find_tensor(pf, "h0.fc.w"));
    float *a = malloc(w->numel * 4), *b = malloc(w->numel * 4);
    nb_be_to_host(be, a, nb_part_params(pf) + w->offset, w->numel * 4);
    nb_be_to_host(be, b, nb_part_params(other) + w->offset, w->numel * 4);
    assert_true(memcmp(a, b, w->numel * 4) != 0);
    double ss = 0;
    for (size_t i = 0; i < w->numel; i++)
        ss += (double)a[i] * a[i];
    double sd = sqrt(ss / (double)w->numel);
    assert_true(sd > 0.015 && sd < 0.025);
    free(a);
    free(b);
    nb_part_free(pf);
    nb_part_free(pm);
    nb_part_free(pt);
    nb_part_free(other);
    nb_be_free(be);
}

static void test_tie_rules(void **state)
{
    nb_backend_t *be = nb_cpu_backend_new();
    nb_model_config_t c = tiny();
    nb_part_spec_t emb = { .embed = true, .first = 0, .last = 1, .head = false };
    nb_part_spec_t head = { .embed = false, .first = 1, .last = 3, .head = true };
    nb_part_t *pe = NULL, *ph = NULL;
    char err[200] = "";
    assert_int_equal(nb_part_new(be, &c, &head, 1, NULL, &ph, err, sizeof err), NB_EINVAL);
    assert_null(ph);
    assert_non_null(strstr(err, "tie_embeddings"));
    assert_int_equal(nb_part_new(be, &c, &emb, 1, NULL, &pe, err, sizeof err), 0);
    assert_int_equal(nb_part_new(be, &c, &head, 1, pe, &ph, err, sizeof err), 0);
    nb_part_t *second = NULL;
    assert_int_equal(nb_part_new(be, &c, &head, 1, pe, &second, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "already tied"));
    nb_part_free(ph); /* unregisters: the embedding part may take another head */
    nb_part_finish_grads(pe);
    assert_int_equal(nb_part_new(be, &c, &head, 1, pe, &ph, err, sizeof err), 0);
    nb_part_free(ph);
    /* tie_with on a part that needs none */
    assert_int_equal(nb_part_new(be, &c, &emb, 1, pe, &ph, err, sizeof err), NB_EINVAL);
    c.tie_embeddings = false;
    assert_int_equal(nb_part_new(be, &c, &head, 1, NULL, &ph, err, sizeof err), 0);
    nb_part_free(ph);
    nb_part_spec_t bad = { .embed = false, .first = 2, .last = 5, .head = false };
    assert_int_equal(nb_part_new(be, &c, &bad, 1, NULL, &ph, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "[2, 5)"));
    nb_part_spec_t empty = { .embed = false, .first = 1, .last = 1, .head = false };
    assert_int_equal(nb_part_new(be, &c, &empty, 1, NULL, &ph, err, sizeof err), NB_EINVAL);
    c.d_model = 15;
    assert_int_equal(nb_part_new(be, &c, &emb, 1, NULL, &ph, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "n_head"));
    nb_part_free(pe);
    nb_be_free(be);
}

typedef struct {
    nb_backend_t *be;
    int32_t *tok, *tgt;
    int B, T;
} batch_t;

static void make_batch(batch_t *b, nb_backend_t *be, int B, int T, int V, uint64_t key)
{
    b->be = be;
    b->B = B;
    b->T = T;
    int32_t h[2][64];
    nb_rng_t r;
    nb_rng_init(&r, 5, key, 0);
    for (int i = 0; i < B * T; i++) {
        h[0][i] = (int32_t)nb_rng_below(&r, (uint64_t)V);
        h[1][i] = (int32_t)nb_rng_below(&r, (uint64_t)V);
    }
    b->tok = nb_be_alloc(be, (size_t)B * T * 4);
    b->tgt = nb_be_alloc(be, (size_t)B * T * 4);
    nb_be_from_host(be, b->tok, h[0], (size_t)B * T * 4);
    nb_be_from_host(be, b->tgt, h[1], (size_t)B * T * 4);
    nb_be_sync(be);
}

static void free_batch(batch_t *b)
{
    nb_be_dealloc(b->be, b->tok);
    nb_be_dealloc(b->be, b->tgt);
}

static void test_bad_inputs(void **state)
{
    nb_backend_t *be = nb_cpu_backend_new();
    nb_model_config_t c = tiny();
    nb_part_spec_t s = nb_part_spec_full(&c);
    nb_part_t *p;
    nb_part_acts_t *a = NULL;
    char err[200];
    assert_int_equal(nb_part_new(be, &c, &s, 1, NULL, &p, err, sizeof err), 0);
    assert_int_equal(nb_part_acts_new(p, 2, 9, &a), NB_EINVAL); /* T > max_seq */
    assert_int_equal(nb_part_acts_new(p, 0, 4, &a), NB_EINVAL);
    assert_int_equal(nb_part_acts_new(p, 1 << 24, 8, &a), NB_EINVAL); /* int overflow of B*T*V */
    assert_int_equal(nb_part_acts_new(p, 2, 4, &a), 0);
    assert_int_equal(nb_part_acts_size(p, 2, 4), nb_part_acts_bytes(a));
    assert_true(nb_part_acts_size(p, 4, 4) > nb_part_acts_bytes(a));
    assert_int_equal(nb_part_acts_size(p, 2, 9), 0);
    batch_t b;
    make_batch(&b, be, 2, 4, c.vocab, 1);
    float loss;
    assert_int_equal(nb_part_backward(p, a, NULL), NB_ESTATE); /* no forward yet */
    nb_part_input_t in = { .tokens = NULL, .targets = b.tgt, .loss_scale = 1 };
    assert_int_equal(nb_part_forward(p, a, &in, &loss), NB_EINVAL); /* no tokens */
    int32_t bad[8] = { 0, 1, 2, 20, 4, 5, 6, 7 };
    nb_be_from_host(be, b.tok, bad, sizeof bad);
    in.tokens = b.tok;
    assert_int_equal(nb_part_forward(p, a, &in, &loss), NB_EINVAL); /* token 20 >= vocab */
    bad[3] = -1;
    nb_be_from_host(be, b.tok, bad, sizeof bad);
    assert_int_equal(nb_part_forward(p, a, &in, &loss), NB_EINVAL); /* negative token */
    bad[3] = 3;
    nb_be_from_host(be, b.tok, bad, sizeof bad);
    nb_be_from_host(be, b.tgt, bad, sizeof bad);
    int32_t tg[8] = { 0, 1, 2, 3, 4, 5, 6, 25 };
    nb_be_from_host(be, b.tgt, tg, sizeof tg);
    assert_int_equal(nb_part_forward(p, a, &in, &loss), NB_EINVAL); /* target >= vocab */
    for (int i = 0; i < 8; i++)
        tg[i] = -1;
    nb_be_from_host(be, b.tgt, tg, sizeof tg);
    assert_int_equal(nb_part_forward(p, a, &in, &loss), NB_EINVAL); /* nothing counted */
    assert_int_equal(nb_part_backward(p, a, NULL), NB_ESTATE);
    tg[0] = 3;
    nb_be_from_host(be, b.tgt, tg, sizeof tg);
    assert_int_equal(nb_part_forward(p, a, &in, &loss), 0);
    assert_true(isfinite(loss) && loss > 0);
    float junk[1];
    assert_int_equal(nb_part_backward(p, a, junk), NB_EINVAL); /* head part takes no dout */
    assert_int_equal(nb_part_backward(p, a, NULL), 0);
    assert_int_equal(nb_part_backward(p, a, NULL), NB_ESTATE); /* once per forward */
    /* forward without targets: logits only, no backward */
    in.targets = NULL;
    assert_int_equal(nb_part_forward(p, a, &in, NULL), 0);
    assert_int_equal(nb_part_backward(p, a, NULL), NB_ESTATE);
    free_batch(&b);
    nb_part_acts_free(a);
    nb_part_free(p);
    nb_be_free(be);
}

static float *grads_copy(nb_part_t *p)
{
    nb_part_finish_grads(p);
    size_t n = nb_part_num_params(p);
    float *g = malloc(n * 4);
    nb_be_to_host(nb_part_backend(p), g, nb_part_grads(p), n * 4);
    return g;
}

static void assert_close(const float *a, const float *b, size_t n, double tol)
{
    double maxerr = 0, maxref = 0;
    for (size_t i = 0; i < n; i++) {
        maxerr = fmax(maxerr, fabs((double)a[i] - b[i]));
        maxref = fmax(maxref, fabs((double)b[i]));
    }
    if (!(maxerr <= tol * maxref))
        fail_msg("max error %.3e (max |ref| %.3e)", maxerr, maxref);
}

/* Two micro-batches in flight (forward 0, forward 1, backward 1, backward 0,
 * as a pipeline does) accumulate the same gradients as one after the other;
 * two halves of a loss scale accumulate to the whole; zero_grad clears. */
static void test_accumulation_and_in_flight(void **state)
{
    nb_backend_t *be = nb_cpu_backend_new();
    nb_model_config_t c = tiny();
    c.norm = NB_MODEL_NORM_POST;
    c.causal = false;
    nb_part_spec_t s = nb_part_spec_full(&c);
    nb_part_t *p;
    nb_part_acts_t *a0, *a1;
    char err[200];
    assert_int_equal(nb_part_new(be, &c, &s, 3, NULL, &p, err, sizeof err), 0);
    assert_int_equal(nb_part_acts_new(p, 2, 8, &a0), 0);
    assert_int_equal(nb_part_acts_new(p, 2, 8, &a1), 0);
    batch_t b0, b1;
    make_batch(&b0, be, 2, 8, c.vocab, 10);
    make_batch(&b1, be, 2, 8, c.vocab, 11);
    nb_part_input_t i0 = { .tokens = b0.tok, .targets = b0.tgt, .loss_scale = 0.5f };
    nb_part_input_t i1 = { .tokens = b1.tok, .targets = b1.tgt, .loss_scale = 0.5f };
    float l0, l1, m0, m1;
    assert_int_equal(nb_part_forward(p, a0, &i0, &l0), 0);
    assert_int_equal(nb_part_backward(p, a0, NULL), 0);
    assert_int_equal(nb_part_forward(p, a0, &i1, &l1), 0);
    assert_int_equal(nb_part_backward(p, a0, NULL), 0);
    float *seq = grads_copy(p);
    nb_part_zero_grad(p);
    float *zero = grads_copy(p);
    for (size_t i = 0; i < nb_part_num_params(p); i++)
        assert_true(zero[i] == 0.0f);
    assert_int_equal(nb_part_forward(p, a0, &i0, &m0), 0);
    assert_int_equal(nb_part_forward(p, a1, &i1, &m1), 0);
    assert_int_equal(nb_part_backward(p, a1, NULL), 0);
    assert_int_equal(nb_part_backward(p, a0, NULL), 0);
    assert_true(l0 == m0 && l1 == m1);
    float *flight = grads_copy(p);
    assert_close(flight, seq, nb_part_num_params(p), 1e-6);
    /* scale 0.5 twice on the same batch == scale 1 once */
    nb_part_zero_grad(p);
    i0.loss_scale = 1.0f;
    assert_int_equal(nb_part_forward(p, a0, &i0, &l0), 0);
    assert_int_equal(nb_part_backward(p, a0, NULL), 0);
    float *whole = grads_copy(p);
    nb_part_zero_grad(p);
    i0.loss_scale = 0.5f;
    for (int k = 0; k < 2; k++) {
        assert_int_equal(nb_part_forward(p, a0, &i0, &l0), 0);
        assert_int_equal(nb_part_backward(p, a0, NULL), 0);
    }
    float *halves = grads_copy(p);
    assert_close(halves, whole, nb_part_num_params(p), 1e-6);
    double nrm = 0;
    for (size_t i = 0; i < nb_part_num_params(p); i++)
        nrm += (double)whole[i] * whole[i];
    assert_true(nrm > 0);
    free(seq); free(zero); free(flight); free(whole); free(halves);
    free_batch(&b0);
    free_batch(&b1);
    nb_part_acts_free(a0);
    nb_part_acts_free(a1);
    nb_part_free(p);
    nb_be_free(be);
}

/* A backend missing an op the model needs is refused up front, by name. */
static void test_backend_without_ops(void **state)
{
    nb_backend_t *cpu = nb_cpu_backend_new();
    nb_backend_i partial = *cpu->iface;
    partial.attention_bwd = NULL;
    partial.adamw = NULL;
    nb_backend_t fake = { .iface = &partial, .ctx = cpu->ctx };
    nb_model_config_t c = tiny();
    nb_part_spec_t s = nb_part_spec_full(&c);
    nb_part_t *p = NULL;
    char err[200] = "";
    assert_int_equal(nb_part_new(&fake, &c, &s, 1, NULL, &p, err, sizeof err), NB_EINVAL);
    assert_null(p);
    assert_non_null(strstr(err, nb_op_name(NB_OP_ATTENTION_BWD)));
    nb_optim_config_t oc = nb_optim_config_default();
    nb_optim_segment_t seg = { .offset = 0, .numel = 4, .decay = true, .grad_offset = 0 };
    nb_optim_t *o = NULL;
    assert_int_equal(nb_optim_new(&fake, &oc, 4, &seg, 1, &o), NB_EINVAL);
    assert_int_equal(nb_optim_new(cpu, &oc, 4, &seg, 1, &o), 0);
    nb_optim_free(o);
    nb_be_free(cpu);
}

/* The schedule: linear warmup, cosine to the floor, floor after the end. */
static void test_lr_schedule(void **state)
{
    nb_optim_config_t c = nb_optim_config_default();
    c.lr = 1.0f;
    c.lr_min = 0.1f;
    c.warmup_steps = 4;
    c.total_steps = 14;
    assert_true(fabs(nb_optim_lr(&c, 0) - 0.25) < 1e-12);
    assert_true(fabs(nb_optim_lr(&c, 3) - 1.0) < 1e-12);
    assert_true(fabs(nb_optim_lr(&c, 4) - 1.0) < 1e-12);
    assert_true(fabs(nb_optim_lr(&c, 9) - 0.55) < 1e-7);
    assert_true(fabs(nb_optim_lr(&c, 14) - 0.1) < 1e-7);
    assert_true(fabs(nb_optim_lr(&c, 100) - 0.1) < 1e-7);
    for (int s = 4; s < 14; s++)
        assert_true(nb_optim_lr(&c, s + 1) <= nb_optim_lr(&c, s));
    c.grad_clip = 1.0f;
    assert_true(nb_optim_clip_scale(&c, 0.25) == 1.0f);
    assert_true(fabsf(nb_optim_clip_scale(&c, 16.0) - 0.25f) < 1e-6f);
    c.grad_clip = 0.0f;
    assert_true(nb_optim_clip_scale(&c, 16.0) == 1.0f);
    c.lr_min = 2.0f;
    assert_non_null(nb_optim_config_validate(&c));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_validate),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_init_independent_of_partition),
        cmocka_unit_test(test_tie_rules),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_accumulation_and_in_flight),
        cmocka_unit_test(test_backend_without_ops),
        cmocka_unit_test(test_lr_schedule),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
