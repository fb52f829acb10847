/* test_model_fenced.c - the model code never dereferences device memory on
 * the host: every model feature (pre- and post-LN, the four heads, tied and
 * untied embeddings, erf GELU, key masks, the token shift, adapters after each sub-layer,
 * decoder blocks with cross-attention, the low-rank split and a pipeline
 * cut at its factor, frozen tensors with backward stopping early, a tied
 * head in another part, seeded init, low-rank init from a dense part)
 * trains two AdamW steps with clipping on the fenced backend
 * (tests/support/fenced_backend.h: CPU ops behind pointers that fault on a
 * host access) and on the CPU backend, split into parts the way a pipeline
 * cuts it. A host access of the model code to a tensor, parameter,
 * gradient, optimizer state or activation is a SIGSEGV the trap reports as
 * "host access to device memory" (exit 1); and every loss, logit,
 * gradient, input gradient and weight must be the CPU backend's bit for
 * bit (same ops on the same values: copying instead of dereferencing
 * changes no bit). One case checks that the fence itself faults. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "kernels/model.h"
#include "kernels/optim.h"
#include "tests/support/fenced_backend.h"

#define MAXP 4
#define FENCE_BYTES ((size_t)256 << 20)

/* What a run produced, read back through nb_be_to_host: compared bit for
 * bit between the backends. */
typedef struct {
    float *v;
    size_t n, cap;
} rec_t;

static void rec_put(rec_t *r, const float *h, size_t n)
{
    if (r->n + n > r->cap) {
        r->cap = (r->n + n) * 2;
        r->v = realloc(r->v, r->cap * sizeof(float));
        assert_non_null(r->v);
    }
    memcpy(r->v + r->n, h, n * sizeof(float));
    r->n += n;
}

static void rec_dev(rec_t *r, nb_backend_t *be, const float *dev, size_t n)
{
    float *h = malloc((n ? n : 1) * sizeof(float));
    assert_non_null(h);
    nb_be_to_host(be, h, dev, n * sizeof(float));
    rec_put(r, h, n);
    free(h);
}

typedef struct {
    const char *name;
    nb_model_config_t cfg;
    int B, T, S;
    bool mask;          /* key mask with padding */
    int cuts[MAXP + 1]; /* part i holds blocks [cuts[i], cuts[i+1]) */
    int nparts;
    const char *freeze; /* patterns to freeze, comma separated, or NULL */
    bool lowrank_init;  /* initialise from a dense part (nb_part_lowrank_init) */
} scenario_t;

static uint32_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (uint32_t)(*s >> 20);
}

static void *upload(nb_backend_t *be, const void *h, size_t bytes)
{
    void *d = nb_be_alloc(be, bytes);
    assert_non_null(d);
    nb_be_from_host(be, d, h, bytes);
    return d;
}

/* Runs scenario sc on be: parts, two steps of forward, backward, clipping
 * and AdamW; records everything into r. */
static void run(const scenario_t *sc, nb_backend_t *be, rec_t *r)
{
    const nb_model_config_t *c = &sc->cfg;
    int B = sc->B, T = sc->T, S = sc->S ? sc->S : T, N = B * T, C = c->d_model;
    uint64_t s = 0x9e3779b97f4a7c15ull;
    /* inputs, on the host, then uploaded */
    int32_t *tok = malloc((size_t)N * sizeof *tok), *tgt = malloc((size_t)N * sizeof *tgt);
    uint8_t *mask = malloc((size_t)N), *emask = malloc((size_t)B * S);
    float *enc = malloc((size_t)B * S * C * sizeof *enc);
    for (int i = 0; i < N; i++) {
        tok[i] = (int32_t)(rnd(&s) % (uint32_t)c->vocab);
        mask[i] = !sc->mask || i % T < T - 1 - (i / T) % 3; /* 0..2 padded positions per row */
        int ncls = c->head == NB_MODEL_HEAD_LM || c->head == NB_MODEL_HEAD_MLM ? c->vocab : c->n_classes;
        tgt[i] = (int32_t)(rnd(&s) % (uint32_t)ncls);
        if (c->head == NB_MODEL_HEAD_MLM && i % 3)
            tgt[i] = -1;
    }
    for (int i = 0; i < B * S; i++)
        emask[i] = i % S != S - 1 || i / S == 0;
    for (int i = 0; i < B * S * C; i++)
        enc[i] = (float)rnd(&s) / (float)(1u << 12) - 0.5f;
    int32_t *d_tok = upload(be, tok, (size_t)N * sizeof *tok);
    int32_t *d_tgt = upload(be, tgt, (size_t)N * sizeof *tgt);
    uint8_t *d_mask = sc->mask ? upload(be, mask, (size_t)N) : NULL;
    float *d_enc = c->cross_attn ? upload(be, enc, (size_t)B * S * C * sizeof *enc) : NULL;
    uint8_t *d_emask = c->cross_attn ? upload(be, emask, (size_t)B * S) : NULL;
    nb_be_sync(be);

    nb_part_t *p[MAXP] = { 0 };
    nb_part_acts_t *a[MAXP] = { 0 };
    nb_optim_t *o[MAXP] = { 0 };
    char err[200] = "";
    nb_optim_config_t oc = nb_optim_config_default();
    oc.lr = 1e-2f;
    oc.grad_clip = 0.5f; /* the tiny model's norm is larger: clipping scales */
    oc.total_steps = 2;
    for (int i = 0; i < sc->nparts; i++) {
        nb_part_spec_t ps = { .embed = i == 0, .first = sc->cuts[i], .last = sc->cuts[i + 1],
                              .head = i == sc->nparts - 1 };
        nb_part_t *tie = ps.head && !ps.embed && c->tie_embeddings ? p[0] : NULL;
        if (nb_part_new(be, c, &ps, 11, tie, &p[i], err, sizeof err))
            fail_msg("%s: part %d: %s", sc->name, i, err);
        if (sc->lowrank_init) {
            nb_model_config_t dc = *c;
            dc.lowrank_rank = 0;
            nb_part_t *dense = NULL;
            if (nb_part_new(be, &dc, &(nb_part_spec_t){ .embed = ps.embed, .first = ps.first,
                                                        .last = ps.last, .head = ps.head },
                            5, NULL, &dense, err, sizeof err))
                fail_msg("%s: dense part %d: %s", sc->name, i, err);
            if (nb_part_lowrank_init(p[i], dense, err, sizeof err))
                fail_msg("%s: low-rank init of part %d: %s", sc->name, i, err);
            nb_part_free(dense);
        }
        if (sc->freeze) {
            nb_freeze_spec_t f = { 0 };
            for (const char *q = sc->freeze; *q && f.n_freeze < NB_FREEZE_MAX; f.n_freeze++) {
                size_t len = strcspn(q, ",");
                snprintf(f.freeze[f.n_freeze], sizeof f.freeze[0], "%.*s", (int)len, q);
                q += len + (q[len] == ',');
            }
            assert_int_equal(nb_part_freeze(p[i], &f), 0);
        }
        assert_int_equal(c->cross_attn ? nb_part_acts_new_cross(p[i], B, T, S, &a[i]) : nb_part_acts_new(p[i], B, T, &a[i]), 0);
        assert_int_equal(nb_part_optim_new(p[i], &oc, &o[i]), 0);
        rec_dev(r, be, nb_part_params(p[i]), nb_part_num_params(p[i]));
    }
    for (int step = 0; step < 2; step++) {
        float loss = 0;
        for (int i = 0; i < sc->nparts; i++) {
            nb_part_zero_grad(p[i]);
            nb_part_input_t in = { .key_mask = d_mask, .loss_scale = 1.0f, .enc = d_enc, .enc_mask = d_emask };
            if (i == 0)
                in.tokens = d_tok;
            else
                in.x = nb_part_acts_output(a[i - 1]);
            if (i == sc->nparts - 1)
                in.targets = d_tgt;
            int rc = nb_part_forward(p[i], a[i], &in, &loss);
            if (rc)
                fail_msg("%s: forward of part %d: %d", sc->name, i, rc);
            if (i < sc->nparts - 1)
                rec_dev(r, be, nb_part_acts_output(a[i]), (size_t)N * nb_part_out_width(p[i]));
        }
        rec_put(r, &loss, 1);
        int rows, cols;
        const float *lg = nb_part_acts_logits(a[sc->nparts - 1], &rows, &cols);
        rec_dev(r, be, lg, (size_t)rows * cols);
        for (int i = sc->nparts - 1; i >= 0; i--) {
            const float *dout = i == sc->nparts - 1 ? NULL : nb_part_acts_dinput(a[i + 1]);
            assert_int_equal(nb_part_backward(p[i], a[i], dout), 0);
            if (i > 0)
                rec_dev(r, be, nb_part_acts_dinput(a[i]), (size_t)N * nb_part_in_width(p[i]));
            if (nb_part_acts_denc(a[i]))
                rec_dev(r, be, nb_part_acts_denc(a[i]), (size_t)B * S * C);
        }
        double ss = 0;
        for (int i = 0; i < sc->nparts; i++) {
            nb_part_finish_grads(p[i]);
            ss += nb_optim_sumsq(be, nb_part_grads(p[i]), nb_part_num_grads(p[i]));
        }
        float scale = nb_optim_clip_scale(&oc, ss);
        float fss = (float)ss;
        rec_put(r, &fss, 1);
        for (int i = 0; i < sc->nparts; i++) {
            rec_dev(r, be, nb_part_grads(p[i]), nb_part_num_grads(p[i]));
            nb_optim_step(o[i], nb_part_params(p[i]), nb_part_grads(p[i]), (float)nb_optim_lr(&oc, step), scale);
            rec_dev(r, be, nb_part_params(p[i]), nb_part_num_params(p[i]));
            rec_dev(r, be, nb_optim_m(o[i]), nb_optim_numel(o[i]));
            rec_dev(r, be, nb_optim_v(o[i]), nb_optim_numel(o[i]));
        }
    }
    for (int i = sc->nparts - 1; i >= 0; i--) {
        nb_optim_free(o[i]);
        nb_part_acts_free(a[i]);
        nb_part_free(p[i]);
    }
    nb_be_dealloc(be, d_tok);
    nb_be_dealloc(be, d_tgt);
    if (d_mask)
        nb_be_dealloc(be, d_mask);
    if (d_enc) {
        nb_be_dealloc(be, d_enc);
        nb_be_dealloc(be, d_emask);
    }
    free(tok);
    free(tgt);
    free(mask);
    free(emask);
    free(enc);
}

static void check(const scenario_t *sc)
{
    nb_backend_t *cpu = nb_cpu_backend_new(), *fb = nb_fenced_backend_new(FENCE_BYTES);
    assert_non_null(cpu);
    assert_non_null(fb);
    rec_t rc = { 0 }, rf = { 0 };
    nb_fenced_trap(); /* after cmocka's handler of this test, which it calls */
    run(sc, cpu, &rc);
    run(sc, fb, &rf);
    printf("  %-22s %zu values, bit-identical: %s\n", sc->name, rc.n,
           rc.n == rf.n && !memcmp(rc.v, rf.v, rc.n * sizeof(float)) ? "yes" : "NO");
    assert_int_equal(rc.n, rf.n);
    for (size_t i = 0; i < rc.n; i++)
        if (memcmp(&rc.v[i], &rf.v[i], sizeof(float)))
            fail_msg("%s: value %zu: cpu %.9g, fenced %.9g", sc->name, i, rc.v[i], rf.v[i]);
    free(rc.v);
    free(rf.v);
    nb_be_free(fb);
    nb_be_free(cpu);
}

static nb_model_config_t gpt(void)
{
    return (nb_model_config_t){ .n_layer = 3, .d_model = 16, .n_head = 2, .d_ff = 24, .vocab = 29, .max_seq = 9,
                                .causal = true, .norm = NB_MODEL_NORM_PRE, .head = NB_MODEL_HEAD_LM,
                                .tie_embeddings = true };
}

static nb_model_config_t bert(nb_head_kind_t head)
{
    return (nb_model_config_t){ .n_layer = 3, .d_model = 16, .n_head = 4, .d_ff = 24, .vocab = 29, .max_seq = 9,
                                .causal = false, .norm = NB_MODEL_NORM_POST, .head = head, .n_classes = 3,
                                .gelu = NB_MODEL_GELU_ERF, .ln_eps = 1e-12f };
}

static void test_gpt(void **state)
{
    (void)state;
    scenario_t sc = { "gpt one part", gpt(), 3, 7, 0, true, { 0, 3 }, 1, NULL, false };
    check(&sc);
    scenario_t split = { "gpt tied across 3 parts", gpt(), 3, 7, 0, false, { 0, 1, 2, 3 }, 3, NULL, false };
    check(&split);
    scenario_t head_alone = { "gpt head alone", gpt(), 2, 9, 0, false, { 0, 3, 3 }, 2, NULL, false };
    check(&head_alone);
    nb_model_config_t ts = gpt();
    ts.token_shift = true;
    scenario_t shift = { "gpt token shift, embedding alone", ts, 3, 7, 0, true, { 0, 0, 3 }, 2, NULL, false };
    check(&shift);
}

static void test_bert_heads(void **state)
{
    (void)state;
    nb_head_kind_t heads[] = { NB_MODEL_HEAD_MLM, NB_MODEL_HEAD_SEQCLS, NB_MODEL_HEAD_TOKCLS };
    const char *names[] = { "bert mlm", "bert seqcls", "bert tokcls" };
    for (int h = 0; h < 3; h++) {
        scenario_t sc = { names[h], bert(heads[h]), 3, 7, 0, true, { 0, 2, 3 }, 2, NULL, false };
        check(&sc);
    }
    nb_model_config_t ts = bert(NB_MODEL_HEAD_TOKCLS);
    ts.token_shift = true;
    scenario_t shift = { "bert tokcls token shift", ts, 3, 7, 0, true, { 0, 2, 3 }, 2, NULL, false };
    check(&shift);
}

static void test_adapters_decoder(void **state)
{
    (void)state;
    nb_model_config_t c = gpt();
    c.cross_attn = true;
    c.tie_embeddings = false;
    c.adapter_size = 4;
    c.adapter_after = NB_ADAPTER_ATTN | NB_ADAPTER_XATTN | NB_ADAPTER_FFN;
    c.adapter_first = 1;
    c.adapter_last = 3;
    scenario_t sc = { "decoder pre-LN adapters", c, 2, 6, 5, true, { 0, 2, 3 }, 2, NULL, false };
    check(&sc);
    nb_model_config_t d = bert(NB_MODEL_HEAD_LM);
    d.cross_attn = true;
    d.causal = true;
    d.adapter_size = 3;
    d.adapter_after = NB_ADAPTER_XATTN;
    d.adapter_first = 0;
    d.adapter_last = 2;
    scenario_t post = { "decoder post-LN frozen", d, 2, 6, 7, false, { 0, 3 }, 1, "h0.*", false };
    check(&post);
}

static void test_frozen(void **state)
{
    (void)state;
    /* wte frozen: the tied head has no wte gradient buffer either */
    scenario_t wte = { "gpt wte frozen, tied", gpt(), 3, 7, 0, false, { 0, 2, 3 }, 2, "wte", false };
    check(&wte);
    /* the embedding and h0, h1 frozen: backward stops above them */
    nb_model_config_t c = gpt();
    c.tie_embeddings = false;
    scenario_t low = { "gpt bottom frozen", c, 3, 7, 0, false, { 0, 3 }, 1, "w?e,h0.*,h1.*", false };
    check(&low);
    /* only the head trains, in a part of its own */
    scenario_t head = { "bert head only", bert(NB_MODEL_HEAD_TOKCLS), 3, 7, 0, true, { 0, 3, 3 }, 2,
                        "w*,emb_ln.*,h*", false };
    check(&head);
}

static void test_lowrank(void **state)
{
    (void)state;
    nb_model_config_t c = gpt();
    c.lowrank_block = 1;
    c.lowrank_rank = 5;
    scenario_t whole = { "gpt low-rank whole", c, 3, 7, 0, false, { 0, 3 }, 1, NULL, true };
    check(&whole);
    /* cut at the factor: part 0 ends at z (N,r), part 1 begins with S U b */
    scenario_t cut = { "gpt low-rank cut", c, 3, 7, 0, false, { 0, 2, 3 }, 2, NULL, false };
    check(&cut);
    nb_model_config_t b = bert(NB_MODEL_HEAD_SEQCLS);
    b.lowrank_block = 0;
    b.lowrank_rank = 4;
    scenario_t post = { "bert low-rank cut", b, 3, 7, 0, true, { 0, 1, 3 }, 2, NULL, false };
    check(&post);
}

/* The fence faults: a host read of fenced device memory ends the process
 * with the trap's message and status 1. */
static void test_fence_faults(void **state)
{
    (void)state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 2);
        signal(SIGSEGV, SIG_DFL); /* not cmocka's: the trap exits */
        nb_backend_t *fb = nb_fenced_backend_new(1 << 20);
        float *d = nb_be_alloc(fb, 16);
        nb_be_memset0(fb, d, 16);
        nb_fenced_trap();
        volatile float x = d[1]; /* the mistake the fence catches */
        (void)x;
        _exit(0);
    }
    close(fds[1]);
    char msg[256] = "";
    size_t got = 0;
    ssize_t k;
    while (got < sizeof msg - 1 && (k = read(fds[0], msg + got, sizeof msg - 1 - got)) > 0)
        got += (size_t)k;
    close(fds[0]);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 1);
    assert_non_null(strstr(msg, "host access to device memory"));
    printf("  a host read of fenced memory: exit 1, \"%.*s\"\n", (int)strcspn(msg, "\n"), msg);
    /* and the translation the ops use reaches the real bytes */
    nb_backend_t *fb = nb_fenced_backend_new(1 << 20);
    float *d = nb_be_alloc(fb, 3 * sizeof(float));
    const float v[3] = { 1.5f, -2.0f, 3.25f };
    nb_be_from_host(fb, d, v, sizeof v);
    nb_add(fb, d, d, 1.0f, 3);
    float back[3];
    nb_be_to_host(fb, back, d, sizeof back);
    assert_true(back[0] == 3.0f && back[1] == -4.0f && back[2] == 6.5f);
    assert_true(((float *)nb_fenced_real(fb, d))[2] == 6.5f);
    nb_be_free(fb);
}

/* A backend without an op the passes use is refused when the part is
 * made, naming the op, not with an abort in the middle of a step (add:
 * a tied head's wte share and the adapters' residual). */
static void test_missing_op_refused(void **state)
{
    (void)state;
    nb_backend_t *fb = nb_fenced_backend_new(1 << 20);
    assert_non_null(fb);
    const nb_backend_i *full = fb->iface;
    nb_backend_i lame = *full;
    lame.add = NULL;
    fb->iface = &lame;
    nb_model_config_t c = gpt();
    nb_part_spec_t s = nb_part_spec_full(&c);
    nb_part_t *p = NULL;
    char err[200] = "";
    assert_int_equal(nb_part_new(fb, &c, &s, 1, NULL, &p, err, sizeof err), NB_EINVAL);
    assert_null(p);
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "does not support add"));
    fb->iface = full;
    nb_be_free(fb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fence_faults),
        cmocka_unit_test(test_missing_op_refused),
        cmocka_unit_test(test_gpt),
        cmocka_unit_test(test_bert_heads),
        cmocka_unit_test(test_adapters_decoder),
        cmocka_unit_test(test_frozen),
        cmocka_unit_test(test_lowrank),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
