/*
 * ref_case.c - runs a PyTorch reference file (tests/data/ref_*.bin, written
 * by scripts/gen_reference.py) against the transformer: logits, loss,
 * every gradient and 10 AdamW steps, frozen tensors where the file names
 * them (see ref_case.h); and the same model cut into 2 and 3 parts, which
 * must give the whole model's loss and gradients bit for bit. Files with
 * adapters or cross-attention (decoder) blocks set those in the config; a
 * decoder's encoder output comes from the file and the gradient the blocks
 * send back to it is checked too. Test support
 * for tests/kernels/test_reference*.c; failures go through cmocka.
 */
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
#include "tests/support/ref_case.h"
#include "tests/support/ref_file.h"

#define MAX_PARTS 4

typedef struct {
    nb_ref_file_t f;
    nb_model_config_t cfg;
    int B, T;
    nb_optim_config_t oc;
    nb_backend_t *be;
    int32_t *tokens, *targets; /* device */
    uint8_t *mask;             /* device or NULL */
    int S;                     /* decoder files: encoder positions */
    float *enc;                /* decoder files: (B,S,C) device */
    uint8_t *enc_mask;         /* decoder files: (B,S) device */
    int ntargets;
} ref_case_t;

static const nb_ref_tensor_t *need(const ref_case_t *rc, const char *name)
{
    const nb_ref_tensor_t *t = nb_ref_get(&rc->f, name);
    if (!t)
        fail_msg("reference file lacks tensor '%s'", name);
    return t;
}

static const nb_ref_tensor_t *need_in(const nb_ref_file_t *f, const char *name)
{
    const nb_ref_tensor_t *t = nb_ref_get(f, name);
    if (!t)
        fail_msg("reference file lacks tensor '%s'", name);
    return t;
}

void nb_ref_read_model(const nb_ref_file_t *f, nb_model_config_t *cfg, int *B, int *T, int *S,
                       nb_optim_config_t *oc)
{
    int32_t c[13];
    const nb_ref_tensor_t *ct = need_in(f, "config");
    assert_int_equal(ct->numel, 13);
    nb_ref_ints(ct, c);
    *cfg = (nb_model_config_t){
        .n_layer = c[0], .d_model = c[1], .n_head = c[2], .d_ff = c[3], .vocab = c[4], .max_seq = c[5],
        .causal = c[6] != 0, .norm = (nb_norm_t)c[7], .head = (nb_head_kind_t)c[8], .n_classes = c[9],
        .tie_embeddings = c[10] != 0,
    };
    *B = c[11];
    *T = c[12];
    *S = 0;
    /* per-model settings: files without "variant" use the defaults */
    const nb_ref_tensor_t *t = nb_ref_get(f, "variant");
    if (t) {
        float v[2];
        assert_int_equal(t->numel, 2);
        nb_ref_floats(t, v);
        cfg->ln_eps = v[0];
        cfg->gelu = v[1] != 0.0f ? NB_MODEL_GELU_ERF : NB_MODEL_GELU_TANH;
    }
    /* adapters and decoder blocks ("adapter", "cross") */
    if ((t = nb_ref_get(f, "adapter"))) {
        int32_t v[4];
        assert_int_equal(t->numel, 4);
        nb_ref_ints(t, v);
        cfg->adapter_size = v[0];
        cfg->adapter_after = (unsigned)v[1];
        cfg->adapter_first = v[2];
        cfg->adapter_last = v[3];
    }
    if ((t = nb_ref_get(f, "cross"))) {
        assert_int_equal(t->numel, 1);
        nb_ref_ints(t, S);
        cfg->cross_attn = true;
    }
    /* low-rank split (job.lowrank): [block, rank] */
    if ((t = nb_ref_get(f, "lowrank"))) {
        int32_t l[2];
        assert_int_equal(t->numel, 2);
        nb_ref_ints(t, l);
        cfg->lowrank_block = l[0];
        cfg->lowrank_rank = l[1];
    }
    /* token shift (job.model.token_shift): [1] */
    if ((t = nb_ref_get(f, "tokshift"))) {
        int32_t v;
        assert_int_equal(t->numel, 1);
        nb_ref_ints(t, &v);
        cfg->token_shift = v != 0;
    }
    assert_null(nb_model_config_validate(cfg));
    float o[9]; /* torch's float64 optimizer sees these as doubles of the float values */
    const nb_ref_tensor_t *ot = need_in(f, "optim");
    assert_int_equal(ot->numel, 9);
    nb_ref_floats(ot, o);
    *oc = (nb_optim_config_t){ .lr = o[0], .lr_min = o[1], .warmup_steps = (int)o[2], .total_steps = (int)o[3],
                               .beta1 = o[4], .beta2 = o[5], .eps = o[6], .weight_decay = o[7],
                               .grad_clip = o[8] };
}

static void load_case(ref_case_t *rc, const char *path)
{
    char err[256];
    memset(rc, 0, sizeof *rc);
    int r = nb_ref_load(path, &rc->f, err, sizeof err);
    if (r)
        fail_msg("%s", err);
    nb_ref_read_model(&rc->f, &rc->cfg, &rc->B, &rc->T, &rc->S, &rc->oc);
    rc->be = nb_cpu_backend_new();
    assert_non_null(rc->be);
    size_t BT = (size_t)rc->B * rc->T;
    const nb_ref_tensor_t *tok = need(rc, "tokens"), *tgt = need(rc, "targets");
    assert_int_equal(tok->numel, BT);
    rc->ntargets = (int)tgt->numel;
    int32_t *host = malloc(BT * sizeof(int32_t));
    rc->tokens = nb_be_alloc(rc->be, BT * sizeof(int32_t));
    rc->targets = nb_be_alloc(rc->be, BT * sizeof(int32_t));
    nb_ref_ints(tok, host);
    nb_be_from_host(rc->be, rc->tokens, host, BT * sizeof(int32_t));
    nb_ref_ints(tgt, host);
    nb_be_from_host(rc->be, rc->targets, host, tgt->numel * sizeof(int32_t));
    nb_be_sync(rc->be);
    free(host);
    if (rc->cfg.cross_attn) {
        size_t BS = (size_t)rc->B * (size_t)rc->S;
        const nb_ref_tensor_t *et = need(rc, "enc"), *emt = need(rc, "enc_mask");
        assert_int_equal(et->numel, BS * (size_t)rc->cfg.d_model);
        assert_int_equal(emt->numel, BS);
        float *h = malloc(et->numel * sizeof(float));
        nb_ref_floats(et, h);
        rc->enc = nb_be_alloc(rc->be, et->numel * sizeof(float));
        rc->enc_mask = nb_be_alloc(rc->be, BS);
        nb_be_from_host(rc->be, rc->enc, h, et->numel * sizeof(float));
        nb_be_from_host(rc->be, rc->enc_mask, emt->data, BS);
        nb_be_sync(rc->be);
        free(h);
    }
    const nb_ref_tensor_t *m = nb_ref_get(&rc->f, "key_mask");
    if (m) {
        rc->mask = nb_be_alloc(rc->be, BT);
        nb_be_from_host(rc->be, rc->mask, m->data, BT);
        nb_be_sync(rc->be);
    }
}

static void free_case(ref_case_t *rc)
{
    nb_be_dealloc(rc->be, rc->tokens);
    nb_be_dealloc(rc->be, rc->targets);
    if (rc->mask)
        nb_be_dealloc(rc->be, rc->mask);
    if (rc->enc) {
        nb_be_dealloc(rc->be, rc->enc);
        nb_be_dealloc(rc->be, rc->enc_mask);
    }
    nb_be_free(rc->be);
    nb_ref_free(&rc->f);
}

/* Copies the reference weights into every tensor of p, by name. */
static void load_weights(ref_case_t *rc, nb_part_t *p)
{
    char name[80];
    for (int i = 0; i < nb_part_num_tensors(p); i++) {
        const nb_param_info_t *pi = nb_part_tensor(p, i);
        snprintf(name, sizeof name, "w.%s", pi->name);
        const nb_ref_tensor_t *t = need(rc, name);
        if (t->numel != pi->numel)
            fail_msg("%s: %zu elements in the file, %zu in the model", name, t->numel, pi->numel);
        float *h = malloc(t->numel * sizeof(float));
        nb_ref_floats(t, h);
        nb_be_from_host(rc->be, nb_part_params(p) + pi->offset, h, t->numel * sizeof(float));
        nb_be_sync(rc->be);
        free(h);
    }
}

/* Applies the file's "frozen" mask (one byte per tensor in buffer order;
 * ref_*_frozen.bin) to p, matching tensors by name. Returns whether the
 * file freezes any tensor. */
static bool apply_frozen(ref_case_t *rc, nb_part_t *p)
{
    const nb_ref_tensor_t *ft = nb_ref_get(&rc->f, "frozen");
    if (!ft)
        return false;
    assert_int_equal(ft->dtype, 4);
    nb_part_spec_t full = nb_part_spec_full(&rc->cfg);
    int nfull = 0;
    nb_param_info_t *all = nb_part_layout(&rc->cfg, &full, &nfull);
    assert_non_null(all);
    assert_int_equal(ft->numel, (size_t)nfull);
    const uint8_t *mask = ft->data;
    int nt = nb_part_num_tensors(p);
    bool *frozen = calloc((size_t)nt, sizeof *frozen);
    for (int i = 0; i < nt; i++)
        for (int k = 0; k < nfull; k++)
            if (!strcmp(all[k].name, nb_part_tensor(p, i)->name))
                frozen[i] = mask[k] != 0;
    assert_int_equal(nb_part_set_frozen(p, frozen), 0);
    size_t want = 0;
    for (int i = 0; i < nt; i++) {
        const nb_param_info_t *pi = nb_part_tensor(p, i);
        assert_true(pi->trainable == !frozen[i]);
        if (pi->trainable) {
            assert_int_equal(pi->grad_offset, want); /* packed in buffer order */
            want += pi->numel;
        }
    }
    assert_int_equal(nb_part_num_grads(p), want);
    free(frozen);
    free(all);
    return true;
}

/* Max abs error of n device floats against the reference tensor; fails
 * when it exceeds tol * max |ref|. */
static double compare(const char *what, nb_backend_t *be, const float *dev, const nb_ref_tensor_t *ref, double tol)
{
    assert_int_equal(ref->dtype, 0);
    float *c = malloc(ref->numel * sizeof(float)), *r = malloc(ref->numel * sizeof(float));
    nb_be_to_host(be, c, dev, ref->numel * sizeof(float));
    nb_ref_floats(ref, r);
    double maxerr = 0, maxref = 0;
    for (size_t i = 0; i < ref->numel; i++) {
        double e = fabs((double)c[i] - r[i]);
        if (!(e <= maxerr))
            maxerr = isnan(e) ? INFINITY : e;
        if (fabs(r[i]) > maxref)
            maxref = fabs(r[i]);
    }
    free(c);
    free(r);
    double rel = maxerr / (maxref > 1e-30 ? maxref : 1e-30);
    printf("  %-14s max abs err %.3e  max |ref| %.3e  rel %.2e\n", what, maxerr, maxref, rel);
    if (!(rel <= tol))
        fail_msg("%s: relative error %.3e exceeds %.1e", what, rel, tol);
    return rel;
}

/* The q and v thirds of a trained qkv bias against the reference. The k
 * third is left out: its gradient is zero in exact arithmetic (softmax
 * ignores a constant added to all of a query's scores), so each side's
 * is rounding noise of 1e-9, which AdamW's m / sqrt(v) turns into steps
 * of the full learning rate in arbitrary directions. */
static void compare_qv_bias(const char *what, nb_backend_t *be, const float *dev, const nb_ref_tensor_t *ref)
{
    size_t C = ref->numel / 3;
    assert_int_equal(ref->numel, 3 * C);
    float *c = malloc(ref->numel * sizeof(float)), *r = malloc(ref->numel * sizeof(float));
    nb_be_to_host(be, c, dev, ref->numel * sizeof(float));
    nb_ref_floats(ref, r);
    double maxerr = 0, maxref = 0;
    for (size_t i = 0; i < ref->numel; i++) {
        if (i >= C && i < 2 * C)
            continue;
        double e = fabs((double)c[i] - r[i]);
        if (!(e <= maxerr))
            maxerr = isnan(e) ? INFINITY : e;
        if (fabs(r[i]) > maxref)
            maxref = fabs(r[i]);
    }
    free(c);
    free(r);
    double rel = maxerr / (maxref > 1e-30 ? maxref : 1e-30);
    printf("  %-14s max abs err %.3e  max |ref| %.3e  rel %.2e (q and v thirds)\n", what, maxerr, maxref, rel);
    if (!(rel <= 1e-4))
        fail_msg("%s: relative error %.3e exceeds 1e-4", what, rel);
}

static void check_loss(const char *what, float c, float ref)
{
    double rel = fabs((double)c - ref) / fabs((double)ref);
    printf("  %-14s %.7f vs %.7f  rel %.2e\n", what, c, ref, rel);
    if (!(rel <= 1e-5))
        fail_msg("%s: %.7f vs reference %.7f (relative %.2e > 1e-5)", what, c, ref, rel);
}

static nb_part_input_t make_input(const ref_case_t *rc)
{
    nb_part_input_t in = { .tokens = rc->tokens, .key_mask = rc->mask, .targets = rc->targets, .loss_scale = 1.0f,
                           .enc = rc->enc, .enc_mask = rc->enc_mask };
    return in;
}

static int new_acts(const ref_case_t *rc, nb_part_t *p, nb_part_acts_t **a)
{
    return rc->cfg.cross_attn ? nb_part_acts_new_cross(p, rc->B, rc->T, rc->S, a) : nb_part_acts_new(p, rc->B, rc->T, a);
}

void nb_ref_run_case(const char *path)
{
    ref_case_t rc;
    load_case(&rc, path);
    printf("%s: %s, %s-LN, %s, L=%d C=%d NH=%d F=%d V=%d B=%d T=%d\n", path, nb_head_kind_name(rc.cfg.head),
           nb_norm_name(rc.cfg.norm), rc.cfg.causal ? "causal" : "bidirectional", rc.cfg.n_layer, rc.cfg.d_model,
           rc.cfg.n_head, rc.cfg.d_ff, rc.cfg.vocab, rc.B, rc.T);
    char err[200];
    nb_part_spec_t spec = nb_part_spec_full(&rc.cfg);
    nb_part_t *p = NULL;
    assert_int_equal(nb_part_new(rc.be, &rc.cfg, &spec, 7, NULL, &p, err, sizeof err), 0);
    load_weights(&rc, p);
    bool has_frozen = apply_frozen(&rc, p);
    nb_part_acts_t *a = NULL;
    assert_int_equal(new_acts(&rc, p, &a), 0);
    nb_part_input_t in = make_input(&rc);
    float loss = 0;
    assert_int_equal(nb_part_forward(p, a, &in, &loss), 0);
    compare("logits", rc.be, nb_part_acts_logits(a, NULL, NULL), need(&rc, "logits"), 1e-4);
    float ref_loss;
    nb_ref_floats(need(&rc, "loss"), &ref_loss);
    check_loss("loss", loss, ref_loss);
    assert_int_equal(nb_part_backward(p, a, NULL), 0);
    nb_part_finish_grads(p);
    char name[80];
    for (int i = 0; i < nb_part_num_tensors(p); i++) {
        const nb_param_info_t *pi = nb_part_tensor(p, i);
        snprintf(name, sizeof name, "g.%s", pi->name);
        if (!pi->trainable) { /* PyTorch has no gradient for it either */
            if (nb_ref_get(&rc.f, name))
                fail_msg("%s is frozen here but has a gradient in the reference", pi->name);
            continue;
        }
        compare(name, rc.be, nb_part_grads(p) + pi->grad_offset, need(&rc, name), 1e-4);
    }
    if (rc.cfg.cross_attn) /* what goes back to the encoder */
        compare("g.enc", rc.be, nb_part_acts_denc(a), need(&rc, "g.enc"), 1e-4);

    /* 10 AdamW steps on the same batch */
    nb_optim_t *o = NULL;
    assert_int_equal(nb_part_optim_new(p, &rc.oc, &o), 0);
    const nb_ref_tensor_t *lt = need(&rc, "losses");
    float ref_losses[64];
    assert_true(lt->numel <= 64);
    nb_ref_floats(lt, ref_losses);
    for (int s = 0; s < (int)lt->numel; s++) {
        nb_part_zero_grad(p);
        assert_int_equal(nb_part_forward(p, a, &in, &loss), 0);
        assert_int_equal(nb_part_backward(p, a, NULL), 0);
        nb_part_finish_grads(p);
        double ss = nb_optim_sumsq(rc.be, nb_part_grads(p), nb_part_num_grads(p));
        float scale = nb_optim_clip_scale(&rc.oc, ss);
        snprintf(name, sizeof name, "adamw loss %d", s);
        check_loss(name, loss, ref_losses[s]);
        nb_optim_step(o, nb_part_params(p), nb_part_grads(p), (float)nb_optim_lr(&rc.oc, s), scale);
    }
    if (has_frozen)
        for (int i = 0; i < nb_part_num_tensors(p); i++) {
            const nb_param_info_t *pi = nb_part_tensor(p, i);
            if (pi->trainable) {
                snprintf(name, sizeof name, "w_end.%s", pi->name);
                size_t len = strlen(pi->name);
                if (len > 6 && !strcmp(pi->name + len - 6, ".qkv.b"))
                    compare_qv_bias(name, rc.be, nb_part_params(p) + pi->offset, need(&rc, name));
                else
                    compare(name, rc.be, nb_part_params(p) + pi->offset, need(&rc, name), 1e-4);
                continue;
            }
            /* frozen: the very bits it started with */
            snprintf(name, sizeof name, "w.%s", pi->name);
            const nb_ref_tensor_t *w0 = need(&rc, name);
            float *a0 = malloc(pi->numel * sizeof(float)), *a1 = malloc(pi->numel * sizeof(float));
            nb_ref_floats(w0, a0);
            nb_be_to_host(rc.be, a1, nb_part_params(p) + pi->offset, pi->numel * sizeof(float));
            if (memcmp(a0, a1, pi->numel * sizeof(float)) != 0)
                fail_msg("frozen tensor %s changed in training", pi->name);
            printf("  %-14s frozen: bit-identical after %d steps\n", pi->name, (int)lt->numel);
            free(a0);
            free(a1);
        }
    nb_optim_free(o);
    nb_part_acts_free(a);
    nb_part_free(p);
    free_case(&rc);
}


/* Runs the model cut at cuts[0..n] (part i holds blocks [cuts[i], cuts[i+1]),
 * the embedding in part 0 and the head in part n-1) and checks the loss and
 * every gradient are bit-identical to the one-part run. */
static void run_split(ref_case_t *rc, const int *cuts, int nparts, float full_loss, const float *full_grads,
                      nb_part_t *full)
{
    nb_part_t *parts[MAX_PARTS] = { 0 };
    nb_part_acts_t *acts[MAX_PARTS] = { 0 };
    char err[200];
    for (int i = 0; i < nparts; i++) {
        nb_part_spec_t s = { .embed = i == 0, .first = cuts[i], .last = cuts[i + 1], .head = i == nparts - 1 };
        nb_part_t *tie = (s.head && !s.embed && rc->cfg.tie_embeddings) ? parts[0] : NULL;
        int r = nb_part_new(rc->be, &rc->cfg, &s, 7, tie, &parts[i], err, sizeof err);
        if (r)
            fail_msg("part %d: %s", i, err);
        load_weights(rc, parts[i]);
        apply_frozen(rc, parts[i]);
        assert_int_equal(new_acts(rc, parts[i], &acts[i]), 0);
    }
    nb_part_input_t in = make_input(rc);
    float loss = 0;
    for (int i = 0; i < nparts; i++) {
        nb_part_input_t pin = in;
        if (i > 0) {
            pin.tokens = NULL;
            pin.x = nb_part_acts_output(acts[i - 1]);
        }
        assert_int_equal(nb_part_forward(parts[i], acts[i], &pin, &loss), 0);
    }
    printf("  split");
    for (int i = 0; i <= nparts; i++)
        printf(" %d", cuts[i]);
    printf(": loss %.8f vs %.8f\n", loss, full_loss);
    assert_true(loss == full_loss);
    for (int i = nparts - 1; i >= 0; i--) {
        const float *dout = i == nparts - 1 ? NULL : nb_part_acts_dinput(acts[i + 1]);
        assert_int_equal(nb_part_backward(parts[i], acts[i], dout), 0);
    }
    nb_part_finish_grads(parts[nparts - 1]);
    size_t total = 0;
    for (int i = 0; i < nparts; i++) {
        for (int k = 0; k < nb_part_num_tensors(parts[i]); k++) {
            const nb_param_info_t *pi = nb_part_tensor(parts[i], k);
            int fk = nb_part_find_tensor(full, pi->name);
            assert_true(fk >= 0);
            const nb_param_info_t *fi = nb_part_tensor(full, fk);
            assert_int_equal(fi->numel, pi->numel);
            assert_true(fi->trainable == pi->trainable);
            if (!pi->trainable)
                continue;
            float *h = malloc(pi->numel * sizeof(float));
            nb_be_to_host(rc->be, h, nb_part_grads(parts[i]) + pi->grad_offset, pi->numel * sizeof(float));
            if (memcmp(h, full_grads + fi->grad_offset, pi->numel * sizeof(float)) != 0)
                fail_msg("gradient of %s differs between the split and the full model", pi->name);
            free(h);
            total += pi->numel;
        }
    }
    assert_int_equal(total, nb_part_num_grads(full));
    if (rc->cfg.cross_attn) {
        /* every part's blocks send their share back to the encoder: the
         * sum is the reference's gradient (summed in another order than
         * the one-part run's, so to rounding, not bit for bit) */
        const nb_ref_tensor_t *ge = need(rc, "g.enc");
        float *sum = calloc(ge->numel, sizeof(float)), *h = malloc(ge->numel * sizeof(float));
        for (int i = 0; i < nparts; i++) {
            if (!nb_part_acts_denc(acts[i]))
                continue;
            nb_be_to_host(rc->be, h, nb_part_acts_denc(acts[i]), ge->numel * sizeof(float));
            for (size_t k = 0; k < ge->numel; k++)
                sum[k] += h[k];
        }
        float *dev = nb_be_alloc(rc->be, ge->numel * sizeof(float));
        nb_be_from_host(rc->be, dev, sum, ge->numel * sizeof(float));
        nb_be_sync(rc->be);
        compare("split g.enc", rc->be, dev, ge, 1e-4);
        nb_be_dealloc(rc->be, dev);
        free(sum);
        free(h);
    }
    for (int i = nparts - 1; i >= 0; i--) {
        nb_part_acts_free(acts[i]);
        nb_part_free(parts[i]);
    }
}

void nb_ref_split_case(const char *path)
{
    ref_case_t rc;
    load_case(&rc, path);
    char err[200];
    nb_part_spec_t spec = nb_part_spec_full(&rc.cfg);
    nb_part_t *p = NULL;
    assert_int_equal(nb_part_new(rc.be, &rc.cfg, &spec, 7, NULL, &p, err, sizeof err), 0);
    load_weights(&rc, p);
    apply_frozen(&rc, p);
    nb_part_acts_t *a = NULL;
    assert_int_equal(new_acts(&rc, p, &a), 0);
    nb_part_input_t in = make_input(&rc);
    float loss;
    assert_int_equal(nb_part_forward(p, a, &in, &loss), 0);
    assert_int_equal(nb_part_backward(p, a, NULL), 0);
    nb_part_finish_grads(p);
    float *grads = malloc(nb_part_num_grads(p) * sizeof(float));
    nb_be_to_host(rc.be, grads, nb_part_grads(p), nb_part_num_grads(p) * sizeof(float));
    int L = rc.cfg.n_layer;
    assert_true(L >= 1);
    /* every 2-part cut, and 3-part cuts with an embedding-only first part
     * or a head-only last part */
    for (int k = 0; k <= L; k++) {
        int two[3] = { 0, k, L };
        run_split(&rc, two, 2, loss, grads, p);
    }
    for (int k = 1; k <= L; k++) {
        int three[4] = { 0, 0, k, L }; /* embedding alone first */
        run_split(&rc, three, 3, loss, grads, p);
        if (k < L) {
            int head_alone[4] = { 0, k, L, L };
            run_split(&rc, head_alone, 3, loss, grads, p);
        }
    }
    free(grads);
    nb_part_acts_free(a);
    nb_part_free(p);
    free_case(&rc);
}

