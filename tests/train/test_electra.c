/* test_electra.c - multi-generator ELECTRA in one process: two runs with
 * the same seeds are bit-identical and another seed differs; a corrupted
 * batch changes exactly the masked positions whose draw differs from the
 * original, and its flags say so; the replacement draw follows the softmax
 * (checked against the probabilities computed here); the batch survives
 * its wire encoding; the discriminator's loss falls well below what the
 * share of replaced tokens alone gives, on two licence texts, and on a
 * text where only the neighbours give a replacement away; a token ID
 * beyond the discriminator's vocabulary, a batch of the wrong length or a
 * damaged encoding is refused with the generator named; tied embeddings
 * stay one tensor; the example config loads and bad electra configs are
 * refused with the key named. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "daemon/config/config.h"
#include "daemon/data/tokens.h"
#include "daemon/train/electra.h"
#include "daemon/train/electra_sample.h"
#include "daemon/train/electra_wire.h"
#include "kernels/rng.h"

#define GPL3 "/usr/share/common-licenses/GPL-3"
#define APACHE "/usr/share/common-licenses/Apache-2.0"

static char gpl_path[128], apache_path[128];

static int setup(void **state)
{
    snprintf(gpl_path, sizeof gpl_path, "/tmp/nb_electra_test_%d_gpl.tok", (int)getpid());
    snprintf(apache_path, sizeof apache_path, "/tmp/nb_electra_test_%d_apache.tok", (int)getpid());
    char err[256];
    if (nb_tokens_from_text(GPL3, gpl_path, 1 << 15, NULL, err, sizeof err) ||
        nb_tokens_from_text(APACHE, apache_path, 0, NULL, err, sizeof err))
        return -1;
    return 0;
}

static int teardown(void **state)
{
    unlink(gpl_path);
    unlink(apache_path);
    return 0;
}

static nb_model_config_t mlm_model(int d)
{
    return (nb_model_config_t){ .n_layer = 1, .d_model = d, .n_head = 2, .d_ff = 4 * d, .vocab = 257, .max_seq = 32,
                                .causal = false, .norm = NB_MODEL_NORM_PRE, .head = NB_MODEL_HEAD_MLM,
                                .tie_embeddings = true };
}

static nb_electra_config_t small_config(void)
{
    nb_electra_config_t c = {
        .model = { .n_layer = 2, .d_model = 32, .n_head = 4, .d_ff = 128, .vocab = 257, .max_seq = 32, .causal = false,
                   .norm = NB_MODEL_NORM_PRE, .head = NB_MODEL_HEAD_TOKCLS, .n_classes = 2 },
        .optim = nb_optim_config_default(),
        .seed = 7, .seq_len = 32, .steps = 30, .mask_prob = 0.15f, .disc_weight = 50.0f, .n_gen = 2,
    };
    c.optim.lr = 2e-3f;
    c.optim.lr_min = 2e-4f;
    c.optim.warmup_steps = 3;
    c.optim.weight_decay = 0.0f;
    c.optim.total_steps = c.steps;
    const char *names[2] = { "gpl", "apache" }, *paths[2] = { gpl_path, apache_path };
    for (int i = 0; i < 2; i++) {
        nb_electra_gen_config_t *g = &c.gen[i];
        snprintf(g->name, sizeof g->name, "%s", names[i]);
        snprintf(g->data, sizeof g->data, "%s", paths[i]);
        g->model = mlm_model(8 + 8 * i); /* 8 and 16 wide: a quarter and a half */
        g->optim = c.optim;
        g->seed = 100 + (uint64_t)i;
        g->sequences = 4 + 2 * i;
    }
    return c;
}

/* Runs c for `steps` steps; losses into gl (2 per step) and dl, and the
 * discriminator's weights into a malloc'd copy. */
static void run(const nb_electra_config_t *c, int steps, float *gl, float *dl, float **weights, size_t *n)
{
    nb_backend_t *be = nb_cpu_backend_new();
    nb_electra_t *e = NULL;
    char err[512] = "";
    int rc = nb_electra_new(be, c, &e, err, sizeof err);
    if (rc)
        print_error("%s\n", err);
    assert_int_equal(rc, 0);
    for (int s = 0; s < steps; s++) {
        nb_electra_step_t st;
        assert_int_equal(nb_electra_step(e, &st, err, sizeof err), 0);
        assert_int_equal(st.skipped, 0);
        gl[2 * s] = st.gen_loss[0];
        gl[2 * s + 1] = st.gen_loss[1];
        dl[s] = st.disc_loss;
    }
    if (weights) {
        nb_part_t *p = nb_electra_disc_part(nb_electra_disc(e));
        *n = nb_part_num_params(p);
        *weights = malloc(*n * sizeof(float));
        nb_be_to_host(be, *weights, nb_part_params(p), *n * sizeof(float));
    }
    nb_electra_free(e);
    nb_be_free(be);
}

static void test_deterministic(void **state)
{
    nb_electra_config_t c = small_config();
    enum { S = 4 };
    float g1[2 * S], d1[S], g2[2 * S], d2[S], g3[2 * S], d3[S];
    float *w1, *w2;
    size_t n1, n2;
    run(&c, S, g1, d1, &w1, &n1);
    run(&c, S, g2, d2, &w2, &n2);
    assert_memory_equal(g1, g2, sizeof g1);
    assert_memory_equal(d1, d2, sizeof d1);
    assert_int_equal(n1, n2);
    assert_memory_equal(w1, w2, n1 * sizeof(float));
    /* another seed of the second generator changes its stream and the
     * discriminator's losses, not the first generator's */
    c.gen[1].seed = 999;
    run(&c, S, g3, d3, NULL, NULL);
    for (int s = 0; s < S; s++)
        assert_memory_equal(&g1[2 * s], &g3[2 * s], sizeof(float));
    assert_memory_not_equal(d1, d3, sizeof d1);
    free(w1);
    free(w2);
}

static void test_corruption(void **state)
{
    nb_electra_config_t c = small_config();
    nb_backend_t *be = nb_cpu_backend_new();
    nb_electra_gen_t *g = NULL;
    char err[512];
    assert_int_equal(nb_electra_gen_new(be, &c.gen[0], 0, c.seq_len, c.mask_prob, &g, err, sizeof err), 0);
    int n = c.gen[0].sequences, T = c.seq_len;
    size_t bt = (size_t)n * T;
    int32_t *in = malloc(bt * 4), *tg = malloc(bt * 4);
    nb_tokens_t *tok;
    assert_int_equal(nb_tokens_open(gpl_path, &tok, err, sizeof err), 0);
    long total_masked = 0, total_replaced = 0;
    for (uint64_t step = 0; step < 3; step++) {
        nb_electra_batch_t b;
        float loss;
        assert_int_equal(nb_electra_gen_compute(g, step, &b, &loss, err, sizeof err), 0);
        assert_int_equal(b.n, n);
        assert_int_equal(b.T, T);
        assert_int_equal((int)b.step, (int)step);
        /* the masks are the masked sampler's with the generator's key */
        assert_int_equal(nb_tokens_sample_mlm(tok, c.gen[0].seed, step, 0, n, T, c.mask_prob, 256, in, tg), 0);
        const int32_t *orig = nb_electra_gen_originals(g);
        long masked = 0, replaced = 0;
        for (size_t k = 0; k < bt; k++) {
            int32_t o = tg[k] >= 0 ? tg[k] : in[k];
            assert_int_equal(orig[k], o);
            assert_true(b.ids[k] >= 0 && b.ids[k] < 256); /* never the mask token */
            if (tg[k] < 0) {
                assert_int_equal(b.ids[k], o); /* unmasked: untouched */
                assert_int_equal(b.replaced[k], 0);
            } else {
                masked++;
                assert_int_equal(b.replaced[k], b.ids[k] != o);
            }
            replaced += b.replaced[k];
        }
        long r2, m2;
        nb_electra_gen_counts(g, &r2, &m2);
        assert_int_equal(r2, replaced);
        assert_int_equal(m2, masked);
        total_masked += masked;
        total_replaced += replaced;
        nb_electra_gen_update(g, step, NULL);
    }
    /* about 15% masked, and an untrained generator replaces most of them */
    assert_true(total_masked > 0.08 * 3 * bt && total_masked < 0.25 * 3 * bt);
    assert_true(total_replaced > total_masked / 2);
    nb_tokens_close(tok);
    free(in);
    free(tg);
    nb_electra_gen_free(g);
    nb_be_free(be);
}

/* The draw against the softmax computed here: frequencies over keyed
 * uniforms within 5 standard errors; the skipped ID never comes; a peaked
 * distribution gives its peak; the draw depends on the key only. */
static void test_sampler(void **state)
{
    const float logits[5] = { 0.5f, -1.0f, 2.0f, 0.0f, 1.0f };
    double p[5], z = 0;
    for (int i = 0; i < 5; i++)
        if (i != 3)
            z += exp(logits[i]);
    for (int i = 0; i < 5; i++)
        p[i] = i == 3 ? 0 : exp(logits[i]) / z;
    enum { N = 20000 };
    int count[5] = { 0 };
    for (int k = 0; k < N; k++)
        count[nb_electra_draw(logits, 5, 3, nb_electra_uniform(42, 1, 9, (uint64_t)k))]++;
    assert_int_equal(count[3], 0);
    for (int i = 0; i < 5; i++) {
        double se = sqrt(p[i] * (1 - p[i]) / N) + 1e-9;
        if (fabs((double)count[i] / N - p[i]) > 5 * se)
            fail_msg("id %d drawn %.4f of the time, softmax %.4f", i, (double)count[i] / N, p[i]);
    }
    const float peak[3] = { -50.0f, 50.0f, -50.0f };
    assert_int_equal(nb_electra_draw(peak, 3, -1, 0.5), 1);
    assert_int_equal(nb_electra_draw(peak, 3, -1, 0.999999), 1);
    assert_int_equal(nb_electra_draw(peak, 3, 1, 0.2), 0);
    assert_int_equal(nb_electra_draw(peak, 3, 1, 0.9), 2);
    /* keys: the same key, the same uniform; each part of the key matters */
    double u = nb_electra_uniform(1, 2, 3, 4);
    assert_true(u == nb_electra_uniform(1, 2, 3, 4));
    assert_true(u != nb_electra_uniform(2, 2, 3, 4) && u != nb_electra_uniform(1, 3, 3, 4) &&
                u != nb_electra_uniform(1, 2, 4, 4) && u != nb_electra_uniform(1, 2, 3, 5));
}

/* nb_electra_corrupt on logits that peak at the original token at some
 * masked positions and elsewhere at others: a draw equal to the original is
 * not a replacement; unmasked positions keep their input. */
static void test_corrupt_flags(void **state)
{
    enum { n = 2, T = 8, V = 6 };
    int32_t in[n * T], tg[n * T], ids[n * T];
    uint8_t rep[n * T];
    float logits[n * T * (V + 1)];
    for (int k = 0; k < n * T; k++) {
        int32_t o = k % V;
        bool m = k % 3 == 0;
        in[k] = m ? V : o; /* the mask token is V */
        tg[k] = m ? o : -1;
        for (int j = 0; j <= V; j++)
            logits[k * (V + 1) + j] = -40.0f;
        logits[k * (V + 1) + (k % 2 ? o : (o + 1) % V)] = 40.0f;
        logits[k * (V + 1) + V] = 80.0f; /* the mask token is never drawn */
    }
    long r = nb_electra_corrupt(logits, V + 1, V, V, in, tg, n, T, 3, 0, 0, ids, rep);
    long want = 0;
    for (int k = 0; k < n * T; k++) {
        int32_t o = k % V;
        if (k % 3) {
            assert_int_equal(ids[k], o);
            assert_int_equal(rep[k], 0);
        } else {
            assert_int_equal(ids[k], k % 2 ? o : (o + 1) % V);
            assert_int_equal(rep[k], k % 2 ? 0 : 1);
            want += k % 2 ? 0 : 1;
        }
    }
    assert_int_equal(r, want);
}

static void test_wire(void **state)
{
    enum { n = 3, T = 11 };
    int32_t ids[n * T], ids2[n * T];
    uint8_t rep[n * T], rep2[n * T];
    for (int k = 0; k < n * T; k++) {
        ids[k] = (k * 37) % 256;
        rep[k] = k % 3 == 0;
    }
    nb_electra_batch_t b = { .gen = 1, .step = 5, .n = n, .T = T, .ids = ids, .replaced = rep };
    uint8_t buf[256];
    size_t want = nb_electra_wire_size(n, T, 256);
    assert_int_equal(want, NB_ELECTRA_WIRE_HEADER + n * T + (n * T + 7) / 8);
    assert_int_equal(nb_electra_wire_size(n, T, 30000), NB_ELECTRA_WIRE_HEADER + 2 * n * T + (n * T + 7) / 8);
    long len = nb_electra_wire_encode(&b, 256, buf, sizeof buf);
    assert_int_equal(len, (long)want);
    nb_electra_batch_t r = { .ids = ids2, .replaced = rep2 };
    char err[512];
    assert_int_equal(nb_electra_wire_decode(buf, (size_t)len, "apache", 1, 5, n, T, 257, &r, n * T, err, sizeof err), 0);
    assert_memory_equal(ids, ids2, sizeof ids);
    assert_memory_equal(rep, rep2, sizeof rep);
    /* truncated, another length, another step, a set pad bit: refused, named */
    assert_int_equal(nb_electra_wire_decode(buf, (size_t)len - 1, "apache", 1, 5, n, T, 257, &r, n * T, err, sizeof err),
                     NB_EFORMAT);
    assert_non_null(strstr(err, "generator 'apache'"));
    assert_int_equal(nb_electra_wire_decode(buf, (size_t)len, "apache", 1, 5, n, T + 1, 257, &r, n * T + n, err,
                                            sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "generator 'apache'"));
    assert_non_null(strstr(err, "expected 3 sequences of 12"));
    assert_int_equal(nb_electra_wire_decode(buf, (size_t)len, "apache", 1, 6, n, T, 257, &r, n * T, err, sizeof err),
                     NB_EINVAL);
    assert_non_null(strstr(err, "step 5, expected step 6"));
    buf[len - 1] |= 0x80;
    assert_int_equal(nb_electra_wire_decode(buf, (size_t)len, "apache", 1, 5, n, T, 257, &r, n * T, err, sizeof err),
                     NB_EFORMAT);
    buf[len - 1] &= 0x7f;
    /* an ID beyond the receiving vocabulary: refused, named, and the
     * receiver's batch is left as it was */
    memset(ids2, 0x07, sizeof ids2);
    memset(rep2, 0x07, sizeof rep2);
    r.gen = -1;
    assert_int_equal(nb_electra_wire_decode(buf, (size_t)len, "apache", 1, 5, n, T, 200, &r, n * T, err, sizeof err),
                     NB_EINVAL);
    assert_non_null(strstr(err, "generator 'apache'"));
    assert_non_null(strstr(err, "outside the discriminator's vocabulary (0..199)"));
    assert_non_null(strstr(err, "sequence "));
    assert_int_equal(r.gen, -1);
    for (size_t k = 0; k < sizeof ids2 / sizeof ids2[0]; k++)
        assert_int_equal(ids2[k], 0x07070707);
    for (size_t k = 0; k < sizeof rep2; k++)
        assert_int_equal(rep2[k], 0x07);
    /* a reserved header byte set */
    buf[7] = 1;
    assert_int_equal(nb_electra_wire_decode(buf, (size_t)len, "apache", 1, 5, n, T, 257, &r, n * T, err, sizeof err),
                     NB_EFORMAT);
    assert_non_null(strstr(err, "reserved header byte 7 is 1"));
    buf[7] = 0;
}

/* Bad batches reach the discriminator: refused before any compute, with the
 * generator, the sequence and the position named. */
static void test_bad_batches(void **state)
{
    nb_electra_config_t c = small_config();
    nb_backend_t *be = nb_cpu_backend_new();
    int seqs[2] = { 4, 6 };
    const char *names[2] = { "gpl", "apache" };
    nb_electra_disc_t *d = NULL;
    char err[512];
    assert_int_equal(nb_electra_disc_new(be, &c.model, &c.optim, 1, 32, 50.0f, 2, seqs, names, &d, err, sizeof err), 0);
    int32_t ids0[4 * 32] = { 0 }, ids1[6 * 32] = { 0 };
    uint8_t r0[4 * 32] = { 0 }, r1[6 * 32] = { 0 };
    r0[3] = 1;
    r1[5] = 1;
    nb_electra_batch_t b[2] = {
        { .gen = 0, .step = 0, .n = 4, .T = 32, .ids = ids0, .replaced = r0 },
        { .gen = 1, .step = 0, .n = 6, .T = 32, .ids = ids1, .replaced = r1 },
    };
    float loss, acc;
    assert_int_equal(nb_electra_disc_compute(d, 0, b, &loss, &acc, err, sizeof err), 0);
    ids1[2 * 32 + 7] = 257; /* the discriminator's vocabulary is 0..256 */
    assert_int_equal(nb_electra_disc_compute(d, 0, b, &loss, &acc, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "generator 'apache': sequence 2 position 7: token ID 257"));
    ids1[2 * 32 + 7] = -1;
    assert_int_equal(nb_electra_disc_compute(d, 0, b, &loss, &acc, err, sizeof err), NB_EINVAL);
    ids1[2 * 32 + 7] = 0;
    b[0].T = 31; /* wrong length */
    assert_int_equal(nb_electra_disc_compute(d, 0, b, &loss, &acc, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "generator 'gpl': batch of 4 sequences of 31 tokens, expected 4 sequences of 32"));
    b[0].T = 32;
    b[0].n = 5; /* wrong count */
    assert_int_equal(nb_electra_disc_compute(d, 0, b, &loss, &acc, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "generator 'gpl'"));
    nb_electra_disc_free(d);
    /* a generator whose token file holds IDs the discriminator lacks */
    c.model.vocab = 200;
    nb_electra_t *e = NULL;
    assert_int_equal(nb_electra_new(be, &c, &e, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "generator 'gpl'"));
    assert_non_null(strstr(err, "vocabulary 256"));
    assert_null(e);
    c = small_config();
    c.gen[1].model.vocab = 256; /* no ID left for the mask token */
    assert_int_equal(nb_electra_new(be, &c, &e, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "generator 'apache'"));
    c = small_config();
    c.gen[1].model.max_seq = 16; /* shorter than seq_len */
    assert_int_equal(nb_electra_new(be, &c, &e, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "generator 'apache'"));
    nb_be_free(be);
}

/* Entropy (nats) of a coin with P(heads) = p. */
static double coin_entropy(double p) { return -(p * log(p) + (1 - p) * log(1 - p)); }

static void test_disc_learns(void **state)
{
    nb_electra_config_t c = small_config();
    nb_backend_t *be = nb_cpu_backend_new();
    nb_electra_t *e = NULL;
    char err[512];
    assert_int_equal(nb_electra_new(be, &c, &e, err, sizeof err), 0);
    double first = 0, late = 0, late_rate = 0;
    int n_late = 0;
    for (int s = 0; s < c.steps; s++) {
        nb_electra_step_t st;
        assert_int_equal(nb_electra_step(e, &st, err, sizeof err), 0);
        if (s == 0)
            first = st.disc_loss;
        if (s >= c.steps - 10) {
            late += st.disc_loss;
            late_rate += (double)st.replaced / (double)st.tokens;
            n_late++;
        }
    }
    late /= n_late;
    late_rate /= n_late;
    /* ln 2 at the start; a discriminator that only learnt the share of
     * replaced tokens would sit at the coin's entropy: ask for well below */
    double prior = coin_entropy(late_rate);
    print_message("disc loss %.4f -> %.4f (last 10 steps); replaced %.3f, prior entropy %.4f\n", first, late,
                  late_rate, prior);
    assert_true(fabs(first - log(2.0)) < 0.05);
    assert_true(late < 0.6 * first);
    assert_true(late < 0.8 * prior);
    nb_electra_free(e);
    nb_be_free(be);
}

/* Replacements only the context gives away: each sequence repeats one
 * symbol, drawn from 16 (so every symbol is equally frequent), and 15% of
 * its positions are redrawn uniformly from those 16 (what a generator that
 * has learnt the text's unigram statistics emits), flagged where the draw
 * differs. A token alone says nothing about its flag (the replacements
 * follow the unigram distribution); the rest of its sequence does. A
 * discriminator whose flags are off their positions (shifted by one, as in
 * a next-token loss), whose loss reads the wrong targets or whose attention
 * does not carry the sequence stays at the entropy of the replaced share;
 * one that compares each token with the others falls far below it. (A
 * replacement that only its nearest neighbours give away is much harder
 * from a random init: docs/electra.md, "Limits of this version".) */
static void test_disc_reads_context(void **state)
{
    enum { TT = 16, N = 16, SYM = 16, STEPS = 300 };
    nb_model_config_t m = { .n_layer = 2, .d_model = 32, .n_head = 4, .d_ff = 128, .vocab = 257, .max_seq = TT,
                            .causal = false, .norm = NB_MODEL_NORM_PRE, .head = NB_MODEL_HEAD_TOKCLS,
                            .n_classes = 2 };
    nb_optim_config_t o = nb_optim_config_default();
    o.lr = 3e-3f;
    o.lr_min = 3e-4f;
    o.warmup_steps = 10;
    o.total_steps = STEPS;
    o.weight_decay = 0.0f;
    o.beta2 = 0.999f;
    nb_backend_t *be = nb_cpu_backend_new();
    nb_electra_disc_t *d = NULL;
    char err[512] = "";
    const int seqs[1] = { N };
    const char *names[1] = { "counter" };
    int rc = nb_electra_disc_new(be, &m, &o, 5, TT, 50.0f, 1, seqs, names, &d, err, sizeof err);
    if (rc)
        print_error("%s\n", err);
    assert_int_equal(rc, 0);
    int32_t ids[N * TT];
    uint8_t rep[N * TT];
    double late = 0, rate = 0;
    float first = 0;
    int n_late = 0;
    for (int s = 0; s < STEPS; s++) {
        nb_rng_t r;
        nb_rng_init(&r, 99, (uint64_t)s, 0);
        long replaced = 0;
        for (int b = 0; b < N; b++) {
            int sym = 'a' + (int)nb_rng_below(&r, SYM);
            for (int t = 0; t < TT; t++) {
                int k = b * TT + t, orig = sym;
                ids[k] = orig;
                if (nb_rng_uniform(&r) < 0.15)
                    ids[k] = 'a' + (int)nb_rng_below(&r, SYM);
                rep[k] = ids[k] != orig;
                replaced += rep[k];
            }
        }
        nb_electra_batch_t batch = { .gen = 0, .step = (uint64_t)s, .n = N, .T = TT, .ids = ids, .replaced = rep };
        float loss = 0, acc = 0;
        rc = nb_electra_disc_compute(d, (uint64_t)s, &batch, &loss, &acc, err, sizeof err);
        if (rc)
            print_error("%s\n", err);
        assert_int_equal(rc, 0);
        assert_int_equal(nb_electra_disc_update(d, (uint64_t)s, NULL), 0);
        if (s == 0)
            first = loss;
        if (s >= STEPS - 10) {
            late += loss;
            rate += (double)replaced / (N * TT);
            n_late++;
        }
    }
    late /= n_late;
    double prior = coin_entropy(rate / n_late);
    print_message("context-only replacements: disc loss %.4f -> %.4f (last 10 steps), prior entropy %.4f\n", first,
                  late, prior);
    assert_true(late < 0.5 * prior);
    nb_electra_disc_free(d);
    nb_be_free(be);
}

static void test_tied(void **state)
{
    nb_electra_config_t c = small_config();
    c.tie_embeddings = true;
    nb_backend_t *be = nb_cpu_backend_new();
    nb_electra_t *e = NULL;
    char err[512];
    assert_int_equal(nb_electra_new(be, &c, &e, err, sizeof err), NB_EINVAL); /* widths differ */
    assert_non_null(strstr(err, "tie_embeddings"));
    c.gen[0].model.d_model = c.gen[1].model.d_model = 32;
    assert_int_equal(nb_electra_new(be, &c, &e, err, sizeof err), 0);
    nb_part_t *dp = nb_electra_disc_part(nb_electra_disc(e));
    const nb_param_info_t *dw = nb_part_tensor(dp, nb_part_find_tensor(dp, "wte"));
    float *before = malloc(dw->numel * 4), *a = malloc(dw->numel * 4), *b = malloc(dw->numel * 4);
    nb_be_to_host(be, before, nb_part_params(dp) + dw->offset, dw->numel * 4);
    for (int s = 0; s < 3; s++) {
        nb_electra_step_t st;
        assert_int_equal(nb_electra_step(e, &st, err, sizeof err), 0);
    }
    nb_be_to_host(be, a, nb_part_params(dp) + dw->offset, dw->numel * 4);
    assert_memory_not_equal(before, a, dw->numel * 4);
    for (int i = 0; i < 2; i++) {
        nb_part_t *gp = nb_electra_gen_part(nb_electra_gen(e, i));
        const nb_param_info_t *gw = nb_part_tensor(gp, nb_part_find_tensor(gp, "wte"));
        nb_be_to_host(be, b, nb_part_params(gp) + gw->offset, dw->numel * 4);
        assert_memory_equal(a, b, dw->numel * 4);
    }
    free(before);
    free(a);
    free(b);
    nb_electra_free(e);
    nb_be_free(be);
}

static nb_config_t cfg;

static int load(const char *text, char *err, size_t errlen)
{
    return nb_cfg_load_string("mem.yaml", text, strlen(text), &cfg, err, errlen);
}

static void test_config(void **state)
{
    char err[1024];
    int rc = nb_cfg_load("config/electra/single-process.yaml", &cfg, err, sizeof err);
    if (rc)
        print_error("%s\n", err);
    assert_int_equal(rc, 0);
    assert_int_equal(cfg.job.electra.n_generators, 2);
    assert_string_equal(cfg.job.electra.generators[1].name, "apache");
    assert_int_equal(cfg.job.electra.generators[0].seed, cfg.job.seed + 1);
    assert_int_equal(cfg.job.electra.generators[1].model.d_ff, 64);
    assert_true(cfg.job.electra.disc_weight == 50.0);
    const char *base =
        "name: t\nrole: train\njob:\n  model: {n_layer: 1, d_model: 8, n_head: 2, vocab: 257, head: tokcls, n_classes: 2}\n"
        "  batch: %d\n  seq_len: 8\n  steps: 1\n%s"
        "  electra:\n    generators:\n      - {name: a, data: a.tok, sequences: 2, model: {n_layer: 1, d_model: 4, "
        "n_head: 2, vocab: 257, head: %s}}\n";
    char text[1024];
    snprintf(text, sizeof text, base, 2, "", "mlm");
    rc = load(text, err, sizeof err);
    if (rc)
        print_error("%s\n", err);
    assert_int_equal(rc, 0);
    snprintf(text, sizeof text, base, 3, "", "mlm");
    assert_int_not_equal(load(text, err, sizeof err), 0);
    assert_non_null(strstr(err, "job.batch: must equal the sum"));
    snprintf(text, sizeof text, base, 2, "", "lm");
    assert_int_not_equal(load(text, err, sizeof err), 0);
    assert_non_null(strstr(err, "job.electra.generators[0].model.head"));
    snprintf(text, sizeof text, base, 2, "  data: x.tok\n", "mlm");
    assert_int_not_equal(load(text, err, sizeof err), 0);
    assert_non_null(strstr(err, "job.data: not used by an electra job"));
    /* a train job without electra still needs job.data */
    assert_int_not_equal(load("name: t\nrole: train\njob:\n  model: {n_layer: 1, d_model: 8, n_head: 2, vocab: 9}\n"
                              "  batch: 2\n  seq_len: 8\n  steps: 1\n", err, sizeof err), 0);
    assert_non_null(strstr(err, "job.data: missing required key"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deterministic), cmocka_unit_test(test_corruption), cmocka_unit_test(test_sampler),
        cmocka_unit_test(test_corrupt_flags),
        cmocka_unit_test(test_wire),          cmocka_unit_test(test_bad_batches), cmocka_unit_test(test_disc_learns),
        cmocka_unit_test(test_disc_reads_context),
        cmocka_unit_test(test_tied),          cmocka_unit_test(test_config),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
