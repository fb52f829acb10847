/* bench_electra.c - is multi-generator ELECTRA pre-training worth having,
 * and what does untying the token embeddings cost?
 *
 * Data: K licence texts of every Debian machine, byte tokens. Each text is
 * cut in 1 KiB chunks; every fourth chunk is held out (held-out snippets
 * only; no model ever sees them in training), the others, joined, are the
 * text for pre-training and fine-tuning. Interleaved: the held-out text is
 * spread over each licence (the GPL family's appendices are nearly the
 * same text, so held-out tails would test those alone).
 *
 * Pre-training (daemon/train/electra.h): one generator per text (1 layer,
 * a quarter of the discriminator's width, its own text, seed and AdamW),
 * one discriminator (2 layers, d_model 64, token shift) on replaced-token
 * detection, PRE (1500) steps of 256-token sequences.
 *
 * Downstream: which licence is a 256-byte snippet from. The discriminator's
 * body (every tensor but the head: embeddings, positions, every block, the
 * final LayerNorm; asserted) starts a sequence classifier (seqcls head, K
 * classes), fine-tuned FT steps on POOL labelled snippets per class from
 * the training text (few labels: what pre-training is for); the same model
 * from its seeded init is fine-tuned the same steps on the same batches
 * ("scratch"). Accuracy on held-out snippets from the held-out chunks.
 * SEEDS (8) seeds (each keys the classifier's init and which snippets are
 * labelled and batched): mean, spread and the paired gain. A second
 * downstream head, "vote" (NB_ELECTRA_HEADS=vote or both): the body
 * fine-tuned with a token-classification head whose every token carries
 * the snippet's class, the snippet classified by the sum of its tokens'
 * log-probabilities (the seqcls head reads the first token alone).
 * NB_ELECTRA_FREEZE=1 trains the head alone (a probe of the features).
 *
 * Embeddings (NB_ELECTRA_TIED=1; two more pre-trainings): the same
 * pre-training with generators as wide as the discriminator (a shared
 * embedding needs one width), tied and untied: the discriminator's mean
 * loss over the last 20 steps and the downstream accuracy of each.
 *
 * Prints bench lines: electra_downstream_acc_pretrained,
 * electra_downstream_acc_scratch (means over the seeds), their _sd,
 * electra_downstream_acc_gain(_sd), electra_downstream_seeds_won,
 * electra_pretrain_disc_loss, electra_pretrain_disc_prior (the entropy of
 * the replaced share: a discriminator that learned nothing),
 * electra_encoded_bytes_per_token; the vote head's as
 * electra_downstream_vote_*; NB_ELECTRA_TIED=1 adds
 * electra_disc_loss_tied, electra_disc_loss_untied,
 * electra_downstream_acc_tied, electra_downstream_acc_untied_wide.
 * NB_ELECTRA_BENCH_QUICK=1 runs a tenth of the steps (a smoke run);
 * NB_ELECTRA_PRE, NB_ELECTRA_PRE_SEQS (sequences per generator and step),
 * NB_ELECTRA_PRE_LR, NB_ELECTRA_GEN_LR (pre-training), NB_ELECTRA_FT,
 * NB_ELECTRA_FT_BATCH, NB_ELECTRA_FT_POOL, NB_ELECTRA_FT_LR (fine-tuning)
 * and NB_ELECTRA_SEEDS override the defaults; NB_ELECTRA_CACHE=FILE keeps
 * the pre-trained weights between runs; NB_ELECTRA_D_MODEL (64) sets the
 * discriminator's width (the generators' is a quarter of it, the tied
 * comparison's all of it). NB_ELECTRA_PRE_SHORT=N adds N
 * steps on sequences of NB_ELECTRA_SHORT_T (64) tokens before the
 * full-length ones (BERT's schedule). The discriminator, and so both arms
 * of the downstream check, has the token shift (job.model.token_shift:
 * each token sees its neighbours from step one; the generators are plain);
 * NB_ELECTRA_TOKEN_SHIFT=0 runs the plain family, which sits on a saddle
 * at this scale (docs/benchmarks.md).
 *
 * NB_ELECTRA_PROBE=1 runs, instead of all that, the probe of why the
 * discriminator stays at the prior (docs/benchmarks.md): the bound a
 * bigram-aware detector reaches on the text (electra_probe_bigram_bound)
 * and the discriminator's model trained alone on three tasks
 * (electra_probe_unigram_replaced_T256/_T64, electra_probe_prev_byte_bit_
 * T256/_T64, electra_probe_case_neighbours_T16).
 */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "daemon/clock.h"
#include "kernels/common.h"
#include "kernels/rng.h"
#include "daemon/data/tokens.h"
#include "daemon/train/electra.h"

#define K 4
#define T 256
static const char *const texts[K] = { "GPL-2", "GPL-3", "LGPL-2.1", "Apache-2.0" };
static int PRE = 1500, FT = 120;
static float FT_LR = 1e-3f, PRE_LR = 1e-3f, GEN_LR = 2e-3f;
static int POOL = 8, FREEZE = 0, PRE_SEQS = 2, FT_BATCH = 16, SEEDS = 8;
static int D_MODEL = 64; /* the discriminator's width; generators a quarter of it */
static int PRE_SHORT = 0, SHORT_T = 64; /* the short-sequence phase of pre-training (0: none) */
static const char *HEADS = "seqcls"; /* labelled snippets per class */
static bool TOKEN_SHIFT = true; /* the discriminator's family: job.model.token_shift */
enum { EVAL_PER_CLASS = 48 };

/* Each text is cut in chunks of CHUNK bytes; every HOLD-th chunk (index
 * % HOLD == HOLD - 1) is held out, the others, joined, are the training
 * text. Interleaved, so the held-out text is spread over the whole licence
 * (its terms and its appendix alike). */
enum { CHUNK = 1024, HOLD = 4 };
static nb_tokens_t *full[K];
static uint32_t *train_ids[K];
static uint64_t n_train[K];
static uint64_t held_first[K][64];
static int n_held[K];
static char pre_path[K][128];

static int prepare(void)
{
    char err[512], path[128];
    for (int i = 0; i < K; i++) {
        char src[128];
        snprintf(src, sizeof src, "/usr/share/common-licenses/%s", texts[i]);
        snprintf(path, sizeof path, "/tmp/nb_bench_electra_%d_%d.tok", (int)getpid(), i);
        if (access(src, R_OK) != 0) {
            printf("%s missing\n", src);
            return 77;
        }
        if (nb_tokens_from_text(src, path, 0, NULL, err, sizeof err) || nb_tokens_open(path, &full[i], err, sizeof err)) {
            printf("%s\n", err);
            return 1;
        }
        unlink(path);
        uint64_t n = nb_tokens_count(full[i]);
        uint32_t *ids = train_ids[i] = malloc(n * sizeof *ids);
        n_train[i] = 0;
        n_held[i] = 0;
        for (uint64_t c0 = 0; c0 < n; c0 += CHUNK) {
            uint64_t end = c0 + CHUNK < n ? c0 + CHUNK : n;
            if ((c0 / CHUNK) % HOLD == HOLD - 1 && end - c0 == CHUNK && n_held[i] < 64)
                held_first[i][n_held[i]++] = c0;
            else
                for (uint64_t k = c0; k < end; k++)
                    ids[n_train[i]++] = nb_tokens_get(full[i], k);
        }
        snprintf(pre_path[i], sizeof pre_path[i], "/tmp/nb_bench_electra_%d_pre%d.tok", (int)getpid(), i);
        int rc = nb_tokens_write(pre_path[i], ids, n_train[i], 256, err, sizeof err);
        if (rc) {
            printf("%s\n", err);
            return 1;
        }
    }
    return 0;
}

static nb_model_config_t disc_model(nb_head_kind_t head, int n_classes)
{
    return (nb_model_config_t){ .n_layer = 2, .d_model = D_MODEL, .n_head = 4, .d_ff = 4 * D_MODEL, .vocab = 257,
                                .max_seq = T, .causal = false, .norm = NB_MODEL_NORM_PRE, .head = head, .n_classes = n_classes,
                                .token_shift = TOKEN_SHIFT };
}

static nb_optim_config_t optim(float lr, int steps)
{
    nb_optim_config_t o = nb_optim_config_default();
    o.lr = lr;
    o.lr_min = lr / 10;
    o.warmup_steps = steps / 10;
    o.total_steps = steps;
    o.weight_decay = 0.01f;
    o.beta2 = 0.999f;
    return o;
}

static void job_config(nb_electra_config_t *c, int gen_width, bool tied, int len, int seqs, int steps)
{
    memset(c, 0, sizeof *c);
    c->model = disc_model(NB_MODEL_HEAD_TOKCLS, 2);
    c->optim = optim(PRE_LR, steps);
    c->seed = 11;
    c->seq_len = len;
    c->steps = steps;
    c->mask_prob = 0.15f;
    c->disc_weight = 50.0f;
    c->tie_embeddings = tied;
    c->n_gen = K;
    for (int i = 0; i < K; i++) {
        nb_electra_gen_config_t *g = &c->gen[i];
        snprintf(g->name, sizeof g->name, "%s", texts[i]);
        snprintf(g->data, sizeof g->data, "%s", pre_path[i]);
        g->model = (nb_model_config_t){ .n_layer = 1, .d_model = gen_width, .n_head = 2, .d_ff = 4 * gen_width,
                                        .vocab = 257, .max_seq = T, .causal = false, .norm = NB_MODEL_NORM_PRE,
                                        .head = NB_MODEL_HEAD_MLM, .tie_embeddings = true };
        g->optim = optim(GEN_LR, steps);
        g->seed = 100 + (uint64_t)i;
        g->sequences = seqs;
    }
}

/* dst's parameters = src's (the same model config, so the same layout). */
static void copy_params(nb_backend_t *be, nb_part_t *dst, nb_part_t *src)
{
    NB_CHECK(nb_part_num_params(dst) == nb_part_num_params(src));
    nb_be_copy(be, nb_part_params(dst), nb_part_params(src), nb_part_num_params(src) * sizeof(float));
}

/* Runs job e to its end; from step `from` on, the last 20 steps' loss,
 * replaced and token counts are summed into *sum, *rep, *rtok (*n of them);
 * wire bytes and tokens of every step into *bytes, *toks. */
static int run_job(nb_electra_t *e, const char *phase, int steps, int gen_width, bool tied, double *sum, double *rep,
                   double *rtok, int *n, double *bytes, double *toks)
{
    double win = 0, wacc = 0;
    int nwin = 0;
    char err[512];
    for (int s = 0; s < steps; s++) {
        nb_electra_step_t st;
        if (nb_electra_step(e, &st, err, sizeof err)) {
            printf("%s\n", err);
            return 1;
        }
        win += st.disc_loss, wacc += st.disc_acc, nwin++;
        if ((s + 1) % 50 == 0 || s == steps - 1) {
            printf("[%.0f s] pretrain width %d %s %s step %d: gen loss %.3f, disc loss %.4f acc %.3f (mean of %d)\n",
                   nb_mono_s(), gen_width, tied ? "tied" : "untied", phase, s + 1, st.gen_loss[0], win / nwin,
                   wacc / nwin, nwin);
            fflush(stdout);
            win = wacc = 0, nwin = 0;
        }
        if (sum && s >= steps - 20) {
            *sum += st.disc_loss;
            *rep += (double)st.replaced;
            *rtok += (double)st.tokens;
            (*n)++;
        }
        *bytes += (double)st.wire_bytes;
        *toks += (double)st.tokens;
    }
    return 0;
}

/* Pre-trains: PRE_SHORT steps on sequences of SHORT_T tokens (as many
 * tokens per step: T / SHORT_T times the sequences), then PRE steps of T
 * tokens starting from those weights (every model; the optimizers and the
 * learning-rate schedule start over), as BERT does (mostly short
 * sequences, then full ones). The discriminator's parameters (host copy)
 * into *w, its mean loss over the last 20 steps into *loss, the loss of a
 * discriminator that knows only the replaced share of those steps (its
 * binary entropy: the prior) into *prior, wire bytes per token of the
 * full-length phase into *wire. */
static int pretrain(nb_backend_t *be, int gen_width, bool tied, float **w, double *loss, double *prior, double *wire)
{
    static nb_electra_config_t c;
    nb_electra_t *e = NULL, *e0 = NULL;
    char err[512];
    double sum = 0, bytes = 0, toks = 0, rep = 0, rtok = 0, b0 = 0, t0 = 0;
    int n = 0, rc = 1;
    if (PRE_SHORT > 0) {
        job_config(&c, gen_width, tied, SHORT_T, PRE_SEQS * (T / SHORT_T), PRE_SHORT);
        if (nb_electra_new(be, &c, &e0, err, sizeof err)) {
            printf("%s\n", err);
            return 1;
        }
        if (run_job(e0, "short", PRE_SHORT, gen_width, tied, NULL, NULL, NULL, NULL, &b0, &t0))
            goto out;
    }
    job_config(&c, gen_width, tied, T, PRE_SEQS, PRE);
    if (nb_electra_new(be, &c, &e, err, sizeof err)) {
        printf("%s\n", err);
        goto out;
    }
    if (e0) {
        for (int i = 0; i < K; i++)
            copy_params(be, nb_electra_gen_part(nb_electra_gen(e, i)), nb_electra_gen_part(nb_electra_gen(e0, i)));
        copy_params(be, nb_electra_disc_part(nb_electra_disc(e)), nb_electra_disc_part(nb_electra_disc(e0)));
        nb_electra_free(e0);
        e0 = NULL;
    }
    if (run_job(e, "full", PRE, gen_width, tied, &sum, &rep, &rtok, &n, &bytes, &toks))
        goto out;
    *loss = sum / n;
    double q = rep / rtok;
    *prior = -(q * log(q) + (1 - q) * log(1 - q));
    *wire = bytes / toks;
    nb_part_t *p = nb_electra_disc_part(nb_electra_disc(e));
    size_t np = nb_part_num_params(p);
    *w = malloc(np * sizeof(float));
    nb_be_to_host(be, *w, nb_part_params(p), np * sizeof(float));
    rc = 0;
out:
    nb_electra_free(e0);
    nb_electra_free(e);
    return rc;
}

/* Fills B snippets and their classes. Training (eval = false): batch b of
 * step `step` takes labelled snippet j of class b % K, j keyed by (step, b)
 * among POOL per class, whose starts are keyed by (class, j) in the
 * class's training text: few labels, much unlabelled text, the setting
 * pre-training is for. eval = true: snippet b / K of class b % K, spread
 * evenly over the class's held-out chunks. */
static void snippets(uint64_t seed, int step, int B, bool eval, int32_t *ids, int32_t *labels)
{
    for (int b = 0; b < B; b++) {
        int cls = b % K;
        uint64_t start;
        if (eval) { /* snippet j = b / K: chunk j % n_held, offset j / n_held of the per-chunk share */
            int j = b / K, per = (B / K + n_held[cls] - 1) / n_held[cls];
            uint64_t room = CHUNK - T;
            start = held_first[cls][j % n_held[cls]] + room * (uint64_t)(j / n_held[cls]) / (uint64_t)(per > 1 ? per - 1 : 1);
            for (int t = 0; t < T; t++)
                ids[(size_t)b * T + t] = (int32_t)nb_tokens_get(full[cls], start + (uint64_t)t);
            labels[b] = cls;
            continue;
        } else {
            nb_rng_t r;
            nb_rng_init(&r, 77 + 1000 * seed, (uint64_t)step, (uint64_t)b);
            uint64_t j = nb_rng_below(&r, (uint64_t)POOL);
            nb_rng_init(&r, 78 + 1000 * seed, (uint64_t)cls, j);
            start = nb_rng_below(&r, n_train[cls] - T + 1);
        }
        for (int t = 0; t < T; t++)
            ids[(size_t)b * T + t] = (int32_t)train_ids[cls][start + (uint64_t)t];
        labels[b] = cls;
    }
}

/* Fine-tunes a seqcls model started from the body of w (NULL: its seeded
 * init) and returns its held-out accuracy. */
static double finetune(nb_backend_t *be, const float *w, bool vote, uint64_t seed)
{
    nb_model_config_t mc = disc_model(vote ? NB_MODEL_HEAD_TOKCLS : NB_MODEL_HEAD_SEQCLS, K);
    nb_part_spec_t spec = nb_part_spec_full(&mc);
    nb_part_t *p = NULL;
    char err[256];
    NB_CHECK(nb_part_new(be, &mc, &spec, 11 + 1000 * seed, NULL, &p, err, sizeof err) == 0);
    if (w) { /* the discriminator's tensors precede its head in the same layout */
        nb_model_config_t dc = disc_model(NB_MODEL_HEAD_TOKCLS, 2);
        nb_part_spec_t ds = nb_part_spec_full(&dc);
        nb_part_t *d = NULL;
        NB_CHECK(nb_part_new(be, &dc, &ds, 11, NULL, &d, err, sizeof err) == 0);
        int carried = 0, heads = 0;
        for (int i = 0; i < nb_part_num_tensors(p); i++) {
            const nb_param_info_t *pi = nb_part_tensor(p, i);
            int j = nb_part_find_tensor(d, pi->name);
            if (strncmp(pi->name, "cls.", 4) == 0) {
                heads++;
                continue;
            }
            NB_CHECK(j >= 0);
            const nb_param_info_t *di = nb_part_tensor(d, j);
            NB_CHECK(di->numel == pi->numel);
            nb_be_from_host(be, nb_part_params(p) + pi->offset, w + di->offset, pi->numel * sizeof(float));
            carried++;
        }
        /* every tensor but the head's two (re-initialised from the seed):
         * embeddings, positions, every block, the final LayerNorm */
        NB_CHECK(heads == 2 && carried == nb_part_num_tensors(p) - 2);
        nb_part_free(d);
    }
    if (FREEZE) { /* a probe: only the head trains */
        bool fr[256];
        NB_CHECK(nb_part_num_tensors(p) <= 256);
        for (int i = 0; i < nb_part_num_tensors(p); i++)
            fr[i] = strncmp(nb_part_tensor(p, i)->name, "cls.", 4) != 0;
        NB_CHECK(nb_part_set_frozen(p, fr) == 0);
    }
    nb_part_acts_t *a = NULL;
    int EB = K * EVAL_PER_CLASS;
    NB_CHECK(nb_part_acts_new(p, EB, T, &a) == 0);
    nb_part_acts_t *ta = NULL;
    NB_CHECK(nb_part_acts_new(p, FT_BATCH, T, &ta) == 0);
    nb_optim_config_t oc = optim(FT_LR, FT);
    nb_optim_t *o = NULL;
    NB_CHECK(nb_part_optim_new(p, &oc, &o) == 0);
    int32_t *ids = malloc((size_t)EB * T * 4), *lab = malloc((size_t)EB * 4), *tl = malloc((size_t)EB * T * 4);
    int32_t *d_ids = nb_be_alloc(be, (size_t)EB * T * 4), *d_lab = nb_be_alloc(be, (size_t)EB * T * 4);
    for (int s = 0; s < FT; s++) {
        snippets(seed, s, FT_BATCH, false, ids, lab);
        nb_be_from_host(be, d_ids, ids, (size_t)FT_BATCH * T * 4);
        if (vote) { /* every token carries its snippet's class */
            for (int k = 0; k < FT_BATCH * T; k++)
                tl[k] = lab[k / T];
            nb_be_from_host(be, d_lab, tl, (size_t)FT_BATCH * T * 4);
        } else {
            nb_be_from_host(be, d_lab, lab, (size_t)FT_BATCH * 4);
        }
        nb_part_zero_grad(p);
        nb_part_input_t in = { .tokens = d_ids, .targets = d_lab, .loss_scale = 1.0f };
        float l;
        NB_CHECK(nb_part_forward(p, ta, &in, &l) == 0 && nb_part_backward(p, ta, NULL) == 0);
        double ss = nb_optim_sumsq(be, nb_part_grads(p), nb_part_num_grads(p));
        nb_optim_step(o, nb_part_params(p), nb_part_grads(p), (float)nb_optim_lr(&oc, s), nb_optim_clip_scale(&oc, ss));
        if (s % 50 == 0 || s == FT - 1)
            printf("finetune %s%s step %d: loss %.4f\n", w ? "pretrained" : "scratch", vote ? " (vote)" : "", s + 1, l);
    }
    snippets(seed, 0, EB, true, ids, lab);
    nb_be_from_host(be, d_ids, ids, (size_t)EB * T * 4);
    nb_part_input_t in = { .tokens = d_ids };
    NB_CHECK(nb_part_forward(p, a, &in, NULL) == 0);
    int rows, cols;
    const float *lg = nb_part_acts_logits(a, &rows, &cols);
    float *h = malloc((size_t)rows * cols * sizeof(float));
    nb_be_to_host(be, h, lg, (size_t)rows * cols * sizeof(float));
    int right = 0;
    int per = vote ? T : 1; /* vote: a snippet's class maximises the sum of its tokens' log-probabilities */
    for (int b = 0; b < rows / per; b++) {
        double score[K] = { 0 };
        for (int t = 0; t < per; t++) {
            const float *r = h + ((size_t)b * per + t) * cols;
            double mx = r[0], z = 0;
            for (int k = 1; k < cols; k++)
                mx = fmax(mx, r[k]);
            for (int k = 0; k < cols; k++)
                z += exp(r[k] - mx);
            for (int k = 0; k < cols; k++)
                score[k] += r[k] - mx - log(z);
        }
        int best = 0;
        for (int k = 1; k < cols; k++)
            if (score[k] > score[best])
                best = k;
        right += best == lab[b];
    }
    rows /= per;
    free(tl);
    free(h);
    free(ids);
    free(lab);
    nb_be_dealloc(be, d_ids);
    nb_be_dealloc(be, d_lab);
    nb_optim_free(o);
    nb_part_acts_free(a);
    nb_part_acts_free(ta);
    nb_part_free(p);
    return (double)right / rows;
}

/* ---- NB_ELECTRA_PROBE=1: why the discriminator stays at the prior ------ */

static double coin_entropy(double q) { return -(q * log(q) + (1 - q) * log(1 - q)); }

/* The loss of a detector that knows the training text's bigram statistics
 * exactly (add-one counts over the pre-training text, so a little
 * optimistic) and reads both neighbours, against replacements drawn from
 * the text's unigram distribution at 15% of the positions: how far below
 * the prior a discriminator that learns "which bytes follow which" can get.
 * *prior gets the entropy of the replaced share. */
static double bigram_bound(double *prior)
{
    static double big[256][256];
    double uni[256] = { 0 }, cum[257] = { 0 }, tot = 0;
    for (int a = 0; a < 256; a++)
        for (int b = 0; b < 256; b++)
            big[a][b] = 1;
    for (int i = 0; i < K; i++)
        for (uint64_t k = 0; k < n_train[i]; k++) {
            uni[train_ids[i][k]]++, tot++;
            if (k + 1 < n_train[i])
                big[train_ids[i][k]][train_ids[i][k + 1]]++;
        }
    for (int a = 0; a < 256; a++) {
        double r = 0;
        for (int b = 0; b < 256; b++)
            r += big[a][b];
        for (int b = 0; b < 256; b++)
            big[a][b] /= r;
        uni[a] /= tot;
        cum[a + 1] = cum[a] + uni[a];
    }
    double mix[256] = { 0 }, same = 0; /* mix: the next byte after a unigram draw */
    for (int a = 0; a < 256; a++) {
        same += uni[a] * uni[a];
        for (int b = 0; b < 256; b++)
            mix[b] += uni[a] * big[a][b];
    }
    double q = 0.15 * (1 - same), lo = log(q / (1 - q)), loss = 0, flags = 0, n = 0;
    nb_rng_t r;
    nb_rng_init(&r, 4242, 0, 0);
    for (int i = 0; i < K; i++) {
        uint64_t m = n_train[i];
        int32_t *y = malloc(m * sizeof *y);
        uint8_t *f = malloc(m);
        for (uint64_t k = 0; k < m; k++) {
            y[k] = (int32_t)train_ids[i][k], f[k] = 0;
            if (nb_rng_uniform(&r) < 0.15) {
                double u = nb_rng_uniform(&r);
                int c = 0;
                while (c < 255 && cum[c + 1] <= u)
                    c++;
                f[k] = c != y[k], y[k] = c;
            }
        }
        for (uint64_t k = 1; k + 1 < m; k++) { /* log-odds that y[k] was replaced */
            double l = lo + log(uni[y[k]]) - log(big[y[k - 1]][y[k]]) + log(mix[y[k + 1]]) -
                       log(big[y[k]][y[k + 1]]);
            double pr = 1 / (1 + exp(-l));
            loss -= f[k] ? log(pr) : log(1 - pr);
            flags += f[k], n++;
        }
        free(y);
        free(f);
    }
    *prior = coin_entropy(flags / n);
    return loss / n;
}

/* Trains the discriminator's model alone (tokcls, 2 classes) for `steps`
 * steps of 2,048 tokens in sequences of len on one of three tasks and
 * returns its mean loss over the last 50 steps (*prior: the entropy of the flag
 * share over them). task 0: the training text, 15% of the positions redrawn
 * from its unigram distribution, flagged where the draw differs (replaced-
 * token detection against a generator at the unigram level, without the
 * generator). task 1: random bytes, flag = the lowest bit of the byte
 * before (the neighbour alone gives the answer). task 2: letters of
 * alternating case ('a'..'h', 'A'..'H', each at random) from a random first
 * case, 15% redrawn uniformly from the 16 (a generator at the unigram
 * level): a replacement of the wrong case shows by its neighbours only, and
 * neither the token alone nor a neighbour alone tells anything about the
 * flag (the task of the first, as pure as it gets). */
static double disc_alone(nb_backend_t *be, int task, int len, int steps, double *prior)
{
    nb_model_config_t mc = disc_model(NB_MODEL_HEAD_TOKCLS, 2);
    nb_part_spec_t spec = nb_part_spec_full(&mc);
    nb_part_t *p = NULL;
    char err[256];
    int B = 2048 / len;
    NB_CHECK(nb_part_new(be, &mc, &spec, 11, NULL, &p, err, sizeof err) == 0);
    nb_part_acts_t *a = NULL;
    NB_CHECK(nb_part_acts_new(p, B, len, &a) == 0);
    nb_optim_config_t oc = optim(PRE_LR, steps);
    nb_optim_t *o = NULL;
    NB_CHECK(nb_part_optim_new(p, &oc, &o) == 0);
    double cum[257] = { 0 }, tot = 0;
    for (int i = 0; i < K; i++)
        for (uint64_t k = 0; k < n_train[i]; k++)
            cum[train_ids[i][k] + 1]++, tot++;
    for (int c = 0; c < 256; c++)
        cum[c + 1] = cum[c] + cum[c + 1] / tot;
    int32_t *ids = malloc((size_t)B * len * 4), *tg = malloc((size_t)B * len * 4);
    int32_t *d_ids = nb_be_alloc(be, (size_t)B * len * 4), *d_tg = nb_be_alloc(be, (size_t)B * len * 4);
    double sum = 0, flags = 0;
    int win = steps < 50 ? steps : 50; /* the last 50 steps, or all */
    for (int s = 0; s < steps; s++) {
        nb_rng_t r;
        nb_rng_init(&r, 4243, (uint64_t)s, 0);
        long nf = 0;
        for (int b = 0; b < B; b++) {
            int cls = (int)nb_rng_below(&r, K), c0 = task == 2 ? (int)nb_rng_below(&r, 2) : 0;
            uint64_t st = nb_rng_below(&r, n_train[cls] - (uint64_t)len + 1);
            for (int t = 0; t < len; t++) {
                int k = b * len + t, id = (int)train_ids[cls][st + (uint64_t)t], f = 0;
                if (task == 2) {
                    id = ((c0 + t) % 2 ? 'A' : 'a') + (int)nb_rng_below(&r, 8);
                    if (nb_rng_uniform(&r) < 0.15) {
                        int c = (nb_rng_below(&r, 2) ? 'A' : 'a') + (int)nb_rng_below(&r, 8);
                        f = c != id, id = c;
                    }
                } else if (task == 1) {
                    id = (int)nb_rng_below(&r, 256);
                    f = t > 0 ? ids[k - 1] & 1 : 0;
                } else if (nb_rng_uniform(&r) < 0.15) {
                    double u = nb_rng_uniform(&r);
                    int c = 0;
                    while (c < 255 && cum[c + 1] <= u)
                        c++;
                    f = c != id, id = c;
                }
                ids[k] = id, tg[k] = f, nf += f;
            }
        }
        nb_be_from_host(be, d_ids, ids, (size_t)B * len * 4);
        nb_be_from_host(be, d_tg, tg, (size_t)B * len * 4);
        nb_part_zero_grad(p);
        nb_part_input_t in = { .tokens = d_ids, .targets = d_tg, .loss_scale = 50.0f };
        float l;
        NB_CHECK(nb_part_forward(p, a, &in, &l) == 0 && nb_part_backward(p, a, NULL) == 0);
        double ss = nb_optim_sumsq(be, nb_part_grads(p), nb_part_num_grads(p));
        nb_optim_step(o, nb_part_params(p), nb_part_grads(p), (float)nb_optim_lr(&oc, s), nb_optim_clip_scale(&oc, ss));
        if (s >= steps - win)
            sum += l, flags += (double)nf / ((double)B * len);
    }
    *prior = coin_entropy(flags / win);
    free(ids);
    free(tg);
    nb_be_dealloc(be, d_ids);
    nb_be_dealloc(be, d_tg);
    nb_optim_free(o);
    nb_part_acts_free(a);
    nb_part_free(p);
    return sum / win;
}

static void probe(nb_backend_t *be)
{
    double prior, b = bigram_bound(&prior);
    printf("bench electra_probe_bigram_bound %.4f nats (prior %.4f)\n", b, prior);
    static const char *const task[3] = { "unigram_replaced", "prev_byte_bit", "case_neighbours" };
    static const int lens[3] = { T, 64, 16 };
    for (int k = 0; k < 3; k++)
        for (int j = 0; j < 3; j++) {
            if ((k == 2) != (j == 2)) /* the case task on short sequences only */
                continue;
            double l = disc_alone(be, k, lens[j], PRE, &prior);
            printf("bench electra_probe_%s_T%d %.4f nats (prior %.4f, %d steps)\n", task[k], lens[j], l, prior, PRE);
            fflush(stdout);
        }
}

int main(void)
{
    if (getenv("NB_ELECTRA_PRE"))
        PRE = atoi(getenv("NB_ELECTRA_PRE"));
    if (getenv("NB_ELECTRA_FT"))
        FT = atoi(getenv("NB_ELECTRA_FT"));
    if (getenv("NB_ELECTRA_FT_POOL"))
        POOL = atoi(getenv("NB_ELECTRA_FT_POOL"));
    if (POOL < 1) {
        printf("NB_ELECTRA_FT_POOL >= 1 needed\n");
        return 2;
    }
    if (getenv("NB_ELECTRA_SEEDS"))
        SEEDS = atoi(getenv("NB_ELECTRA_SEEDS"));
    if (getenv("NB_ELECTRA_HEADS"))
        HEADS = getenv("NB_ELECTRA_HEADS");
    if (getenv("NB_ELECTRA_FREEZE"))
        FREEZE = atoi(getenv("NB_ELECTRA_FREEZE"));
    if (SEEDS < 1 || (strcmp(HEADS, "seqcls") && strcmp(HEADS, "vote") && strcmp(HEADS, "both"))) {
        printf("NB_ELECTRA_SEEDS >= 1 and NB_ELECTRA_HEADS seqcls, vote or both needed\n");
        return 2;
    }
    if (getenv("NB_ELECTRA_D_MODEL"))
        D_MODEL = atoi(getenv("NB_ELECTRA_D_MODEL"));
    if (D_MODEL < 16 || D_MODEL % 16) {
        printf("NB_ELECTRA_D_MODEL: a multiple of 16 needed (4 heads; generators a quarter as wide, 2 heads)\n");
        return 2;
    }
    if (getenv("NB_ELECTRA_PRE_SHORT"))
        PRE_SHORT = atoi(getenv("NB_ELECTRA_PRE_SHORT"));
    if (getenv("NB_ELECTRA_SHORT_T"))
        SHORT_T = atoi(getenv("NB_ELECTRA_SHORT_T"));
    if (PRE_SHORT < 0 || SHORT_T < 1 || SHORT_T > T || T % SHORT_T) {
        printf("NB_ELECTRA_PRE_SHORT >= 0 and NB_ELECTRA_SHORT_T a divisor of %d needed\n", T);
        return 2;
    }
    if (getenv("NB_ELECTRA_TOKEN_SHIFT"))
        TOKEN_SHIFT = strcmp(getenv("NB_ELECTRA_TOKEN_SHIFT"), "0") != 0;
    if (getenv("NB_ELECTRA_PRE_SEQS"))
        PRE_SEQS = atoi(getenv("NB_ELECTRA_PRE_SEQS"));
    if (getenv("NB_ELECTRA_FT_BATCH"))
        FT_BATCH = atoi(getenv("NB_ELECTRA_FT_BATCH"));
    if (getenv("NB_ELECTRA_PRE_LR"))
        PRE_LR = (float)atof(getenv("NB_ELECTRA_PRE_LR"));
    if (getenv("NB_ELECTRA_GEN_LR"))
        GEN_LR = (float)atof(getenv("NB_ELECTRA_GEN_LR"));
    if (getenv("NB_ELECTRA_FT_LR"))
        FT_LR = (float)atof(getenv("NB_ELECTRA_FT_LR"));
    if (PRE < 20 || FT < 10 || !(FT_LR > 0) || !(GEN_LR > 0) || !(PRE_LR > 0) || PRE_SEQS < 1 || FT_BATCH < K ||
        FT_BATCH > K * EVAL_PER_CLASS) {
        printf("NB_ELECTRA_PRE >= 20, NB_ELECTRA_FT >= 10, NB_ELECTRA_FT_LR, _PRE_LR and _GEN_LR > 0, "
               "NB_ELECTRA_PRE_SEQS >= 1 and NB_ELECTRA_FT_BATCH in %d..%d needed\n", K, K * EVAL_PER_CLASS);
        return 2;
    }
    if (getenv("NB_ELECTRA_BENCH_QUICK")) {
        PRE /= 10;
        PRE_SHORT /= 10;
        FT /= 10;
    }
    int rc = prepare();
    if (rc)
        return rc;
    nb_backend_t *be = nb_cpu_backend_new();
    float *w = NULL, *wt = NULL, *wu = NULL;
    double loss = NAN, prior = NAN, wire, lt, lu, pt, pu, wire2;
    if (getenv("NB_ELECTRA_PROBE") && !strcmp(getenv("NB_ELECTRA_PROBE"), "1")) {
        probe(be);
        goto out;
    }
    /* NB_ELECTRA_CACHE=FILE: the pre-trained weights from FILE when it
     * exists (a raw float dump of an earlier run with the same settings),
     * else written there: fine-tuning variants without pre-training again */
    const char *cache = getenv("NB_ELECTRA_CACHE");
    FILE *cf = cache ? fopen(cache, "rb") : NULL;
    if (cf) {
        size_t np = 0;
        if (fread(&np, sizeof np, 1, cf) != 1 || np == 0 || np > (1u << 28) || !(w = malloc(np * sizeof(float))) ||
            fread(w, sizeof(float), np, cf) != np || fread(&wire, sizeof wire, 1, cf) != 1) {
            printf("%s: not a weights cache of this benchmark\n", cache);
            return 1;
        }
        fclose(cf);
    } else {
        if ((rc = pretrain(be, D_MODEL / 4, false, &w, &loss, &prior, &wire)))
            return rc;
        if (cache && (cf = fopen(cache, "wb"))) {
            nb_model_config_t dc = disc_model(NB_MODEL_HEAD_TOKCLS, 2);
            nb_part_spec_t ds = nb_part_spec_full(&dc);
            nb_part_t *d = NULL;
            char e2[256];
            NB_CHECK(nb_part_new(be, &dc, &ds, 11, NULL, &d, e2, sizeof e2) == 0);
            size_t np = nb_part_num_params(d);
            nb_part_free(d);
            fwrite(&np, sizeof np, 1, cf);
            fwrite(w, sizeof(float), np, cf);
            fwrite(&wire, sizeof wire, 1, cf);
            fclose(cf);
        }
    }
    /* seeds: each keys the classifier's init (scratch: the whole model;
     * pre-trained: its head) and which labelled snippets and batches it
     * gets; both arms of a seed see the same batches */
    for (int vote = 0; vote < 2; vote++) {
        if ((vote && !strcmp(HEADS, "seqcls")) || (!vote && !strcmp(HEADS, "vote")))
            continue;
        double sp = 0, ss = 0, sp2 = 0, ss2 = 0, dd = 0, dd2 = 0;
        int wins = 0;
        for (int sd = 0; sd < SEEDS; sd++) {
            double t0 = nb_mono_s();
            double a1 = finetune(be, w, vote, (uint64_t)sd), a2 = finetune(be, NULL, vote, (uint64_t)sd);
            printf("seed %d %s%s: pretrained %.3f scratch %.3f (%.0f s)\n", sd, vote ? "vote" : "seqcls",
                   FREEZE ? " (body frozen)" : "", a1, a2, nb_mono_s() - t0);
            fflush(stdout);
            sp += a1, sp2 += a1 * a1, ss += a2, ss2 += a2 * a2, dd += a1 - a2, dd2 += (a1 - a2) * (a1 - a2);
            wins += a1 > a2;
        }
        double n = SEEDS, mp = sp / n, ms = ss / n, md = dd / n;
        /* sample standard deviations over the seeds */
        double sdp = SEEDS > 1 ? sqrt(fmax(0, (sp2 - n * mp * mp) / (n - 1))) : 0;
        double sds = SEEDS > 1 ? sqrt(fmax(0, (ss2 - n * ms * ms) / (n - 1))) : 0;
        double sdd = SEEDS > 1 ? sqrt(fmax(0, (dd2 - n * md * md) / (n - 1))) : 0;
        const char *v = vote ? "_vote" : "";
        printf("bench electra_downstream%s_acc_pretrained %.3f fraction\n", v, mp);
        printf("bench electra_downstream%s_acc_scratch %.3f fraction\n", v, ms);
        printf("bench electra_downstream%s_acc_gain %.3f fraction\n", v, md);
        if (SEEDS > 1) {
            printf("bench electra_downstream%s_acc_pretrained_sd %.3f fraction\n", v, sdp);
            printf("bench electra_downstream%s_acc_scratch_sd %.3f fraction\n", v, sds);
            printf("bench electra_downstream%s_acc_gain_sd %.3f fraction\n", v, sdd);
        }
        printf("bench electra_downstream%s_seeds_won %d seeds\n", v, wins);
    }
    if (!isnan(loss)) {
        printf("bench electra_pretrain_disc_loss %.4f nats\n", loss);
        printf("bench electra_pretrain_disc_prior %.4f nats\n", prior);
    }
    printf("bench electra_encoded_bytes_per_token %.3f bytes\n", wire);
    fflush(stdout);
    const char *tied = getenv("NB_ELECTRA_TIED");
    if (!tied || strcmp(tied, "1"))
        goto out;
    if ((rc = pretrain(be, D_MODEL, true, &wt, &lt, &pt, &wire2)) ||
        (rc = pretrain(be, D_MODEL, false, &wu, &lu, &pu, &wire2)))
        return rc;
    printf("bench electra_disc_loss_tied %.4f nats\n", lt);
    printf("bench electra_disc_loss_untied %.4f nats\n", lu);
    printf("bench electra_downstream_acc_tied %.3f fraction\n", finetune(be, wt, false, 0));
    printf("bench electra_downstream_acc_untied_wide %.3f fraction\n", finetune(be, wu, false, 0));
out:
    for (int i = 0; i < K; i++) {
        unlink(pre_path[i]);
        nb_tokens_close(full[i]);
        free(train_ids[i]);
    }
    free(w);
    free(wt);
    free(wu);
    nb_be_free(be);
    return 0;
}
