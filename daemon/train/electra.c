/*
 * electra.c - the ELECTRA generators, the discriminator and the
 * single-process job; the algorithm is in electra.h.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "daemon/clock.h"
#include "kernels/common.h"
#include "daemon/data/tokens.h"
#include "daemon/train/electra.h"
#include "daemon/train/electra_sample.h"

struct nb_electra_gen {
    nb_backend_t *be;
    nb_electra_gen_config_t cfg;
    int index, T;
    float mask_prob;
    nb_tokens_t *tokens;
    nb_part_t *part;
    nb_part_acts_t *acts;
    nb_optim_t *optim;
    int32_t *h_in, *h_tg, *h_orig, *ids, *d_in, *d_tg;
    uint8_t *replaced;
    float *h_logits;
    long n_replaced, n_masked;
};

struct nb_electra_disc {
    nb_backend_t *be;
    nb_model_config_t model;
    nb_optim_config_t optim_cfg;
    int T, n_src, total;
    float weight;
    int seqs[NB_ELECTRA_MAX_GEN];
    char names[NB_ELECTRA_MAX_GEN][NB_ELECTRA_NAME_MAX];
    nb_part_t *part;
    nb_part_acts_t *acts[NB_ELECTRA_MAX_GEN];
    nb_optim_t *optim;
    int32_t *h_tg, *d_in, *d_tg;
    float *h_logits;
};

struct nb_electra {
    nb_backend_t *be;
    nb_electra_config_t cfg;
    nb_electra_gen_t *gen[NB_ELECTRA_MAX_GEN];
    nb_electra_disc_t *disc;
    nb_electra_batch_t rx[NB_ELECTRA_MAX_GEN]; /* what the discriminator received */
    uint8_t *wire;
    size_t wire_cap;
    int step;
};

/* Clip + AdamW of one model; 1 when skipped for a non-finite norm. */
static int update(nb_backend_t *be, nb_part_t *p, nb_optim_t *o, const nb_optim_config_t *oc, uint64_t step,
                  double *grad_norm)
{
    float *g = nb_part_grads(p);
    double ss = nb_optim_sumsq(be, g, nb_part_num_grads(p));
    if (grad_norm)
        *grad_norm = sqrt(ss);
    if (!isfinite(ss))
        return 1;
    nb_optim_step(o, nb_part_params(p), g, (float)nb_optim_lr(oc, (int)step), nb_optim_clip_scale(oc, ss));
    return 0;
}

/* ---- generator ------------------------------------------------------------ */

int nb_electra_gen_new(nb_backend_t *be, const nb_electra_gen_config_t *gc, int index, int seq_len,
                       float mask_prob, nb_electra_gen_t **out, char *err, size_t errlen)
{
    *out = NULL;
    const char *why = nb_model_config_validate(&gc->model);
    if (!why && gc->model.head != NB_MODEL_HEAD_MLM)
        why = "head must be mlm (a generator is a masked language model)";
    if (!why && (seq_len <= 0 || seq_len > gc->model.max_seq))
        why = "max_seq is below job.seq_len";
    if (!why && gc->sequences <= 0)
        why = "sequences must be >= 1";
    if (!why)
        why = nb_optim_config_validate(&gc->optim);
    if (why) {
        snprintf(err, errlen, "generator '%s': %s", gc->name, why);
        return NB_EINVAL;
    }
    nb_electra_gen_t *g = calloc(1, sizeof *g);
    if (!g)
        return NB_ENOMEM;
    g->be = be;
    g->cfg = *gc;
    g->index = index;
    g->T = seq_len;
    g->mask_prob = mask_prob > 0.0f ? mask_prob : NB_TOKENS_MLM_MASK_PROB;
    char e2[1024];
    int rc = nb_tokens_open(gc->data, &g->tokens, e2, sizeof e2);
    if (rc) {
        snprintf(err, errlen, "generator '%s': %s", gc->name, e2);
        goto fail;
    }
    uint32_t v = nb_tokens_vocab(g->tokens);
    rc = NB_EINVAL;
    if (v > (uint32_t)gc->model.vocab) {
        snprintf(err, errlen, "generator '%s': %s: vocabulary %u is larger than the generator's vocab %d",
                 gc->name, gc->data, v, gc->model.vocab);
        goto fail;
    }
    if (!gc->model.mask_token && v > (uint32_t)gc->model.vocab - 1) {
        snprintf(err, errlen, "generator '%s': %s: vocabulary %u leaves no ID free for the mask token "
                 "(vocab - 1 = %d); make the generator's vocab larger", gc->name, gc->data, v, gc->model.vocab - 1);
        goto fail;
    }
    if (nb_tokens_count(g->tokens) < (uint64_t)seq_len) {
        snprintf(err, errlen, "generator '%s': %s: %llu tokens, fewer than seq_len %d", gc->name, gc->data,
                 (unsigned long long)nb_tokens_count(g->tokens), seq_len);
        goto fail;
    }
    nb_part_spec_t spec = nb_part_spec_full(&gc->model);
    if ((rc = nb_part_new(be, &gc->model, &spec, gc->seed, NULL, &g->part, e2, sizeof e2))) {
        snprintf(err, errlen, "generator '%s': %s", gc->name, e2);
        goto fail;
    }
    if ((rc = nb_part_acts_new(g->part, gc->sequences, seq_len, &g->acts)) ||
        (rc = nb_part_optim_new(g->part, &gc->optim, &g->optim))) {
        snprintf(err, errlen, "generator '%s': cannot allocate activations or optimizer", gc->name);
        goto fail;
    }
    size_t bt = (size_t)gc->sequences * (size_t)seq_len;
    g->h_in = malloc(bt * sizeof(int32_t));
    g->h_tg = malloc(bt * sizeof(int32_t));
    g->h_orig = malloc(bt * sizeof(int32_t));
    g->ids = malloc(bt * sizeof(int32_t));
    g->replaced = malloc(bt);
    g->h_logits = malloc(bt * (size_t)gc->model.vocab * sizeof(float));
    g->d_in = nb_be_alloc(be, bt * sizeof(int32_t));
    g->d_tg = nb_be_alloc(be, bt * sizeof(int32_t));
    if (!g->h_in || !g->h_tg || !g->h_orig || !g->ids || !g->replaced || !g->h_logits || !g->d_in || !g->d_tg) {
        snprintf(err, errlen, "generator '%s': out of memory for batches", gc->name);
        rc = NB_ENOMEM;
        goto fail;
    }
    *out = g;
    return 0;
fail:
    nb_electra_gen_free(g);
    return rc;
}

void nb_electra_gen_free(nb_electra_gen_t *g)
{
    if (!g)
        return;
    nb_part_acts_free(g->acts);
    nb_optim_free(g->optim);
    nb_part_free(g->part);
    nb_tokens_close(g->tokens);
    if (g->d_in)
        nb_be_dealloc(g->be, g->d_in);
    if (g->d_tg)
        nb_be_dealloc(g->be, g->d_tg);
    free(g->h_in);
    free(g->h_tg);
    free(g->h_orig);
    free(g->ids);
    free(g->replaced);
    free(g->h_logits);
    free(g);
}

int nb_electra_gen_compute(nb_electra_gen_t *g, uint64_t step, nb_electra_batch_t *out, float *loss,
                           char *err, size_t errlen)
{
    const nb_electra_gen_config_t *c = &g->cfg;
    int n = c->sequences, T = g->T;
    size_t bt = (size_t)n * (size_t)T;
    int32_t mask = nb_model_mask_token(&c->model);
    int rc = nb_tokens_sample_mlm(g->tokens, c->seed, step, 0, n, T, g->mask_prob, mask, g->h_in, g->h_tg);
    if (rc) {
        snprintf(err, errlen, "generator '%s': step %llu: cannot sample a batch", c->name, (unsigned long long)step);
        return rc;
    }
    for (size_t k = 0; k < bt; k++)
        g->h_orig[k] = g->h_tg[k] >= 0 ? g->h_tg[k] : g->h_in[k];
    nb_be_from_host(g->be, g->d_in, g->h_in, bt * sizeof(int32_t));
    nb_be_from_host(g->be, g->d_tg, g->h_tg, bt * sizeof(int32_t));
    nb_part_zero_grad(g->part);
    nb_part_input_t in = { .tokens = g->d_in, .targets = g->d_tg, .loss_scale = 1.0f };
    float l = 0.0f;
    if ((rc = nb_part_forward(g->part, g->acts, &in, &l)) || (rc = nb_part_backward(g->part, g->acts, NULL))) {
        snprintf(err, errlen, "generator '%s': step %llu: model error (%s)", c->name, (unsigned long long)step,
                 nb_strerror(rc));
        return rc;
    }
    int rows, cols;
    const float *logits = nb_part_acts_logits(g->acts, &rows, &cols);
    NB_CHECK((size_t)rows == bt && cols == c->model.vocab);
    nb_be_to_host(g->be, g->h_logits, logits, bt * (size_t)cols * sizeof(float));
    g->n_replaced = nb_electra_corrupt(g->h_logits, cols, (int)nb_tokens_vocab(g->tokens), mask, g->h_in, g->h_tg,
                                       n, T, c->seed, g->index, step, g->ids, g->replaced);
    g->n_masked = 0;
    for (size_t k = 0; k < bt; k++)
        g->n_masked += g->h_tg[k] >= 0;
    *out = (nb_electra_batch_t){ .gen = g->index, .step = step, .n = n, .T = T, .ids = g->ids,
                                 .replaced = g->replaced };
    if (loss)
        *loss = l;
    return 0;
}

int nb_electra_gen_update(nb_electra_gen_t *g, uint64_t step, double *grad_norm)
{
    return update(g->be, g->part, g->optim, &g->cfg.optim, step, grad_norm);
}

uint32_t nb_electra_gen_vocab(const nb_electra_gen_t *g) { return nb_tokens_vocab(g->tokens); }

void nb_electra_gen_counts(const nb_electra_gen_t *g, long *replaced, long *masked)
{
    *replaced = g->n_replaced;
    *masked = g->n_masked;
}

const int32_t *nb_electra_gen_originals(const nb_electra_gen_t *g) { return g->h_orig; }
nb_part_t *nb_electra_gen_part(nb_electra_gen_t *g) { return g->part; }
nb_optim_t *nb_electra_gen_optim(nb_electra_gen_t *g) { return g->optim; }

/* ---- discriminator ------------------------------------------------------- */

int nb_electra_disc_new(nb_backend_t *be, const nb_model_config_t *model, const nb_optim_config_t *optim,
                        uint64_t seed, int seq_len, float disc_weight, int n_src, const int *seqs,
                        const char *const *names, nb_electra_disc_t **out, char *err, size_t errlen)
{
    *out = NULL;
    const char *why = nb_model_config_validate(model);
    if (!why && (model->head != NB_MODEL_HEAD_TOKCLS || model->n_classes != 2))
        why = "head must be tokcls with n_classes 2 (replaced-token detection)";
    if (!why && (seq_len <= 0 || seq_len > model->max_seq))
        why = "seq_len must be in 1..max_seq";
    if (!why && (n_src < 1 || n_src > NB_ELECTRA_MAX_GEN))
        why = "needs 1 to 8 generators";
    if (!why && !(disc_weight > 0.0f && isfinite(disc_weight)))
        why = "disc_weight must be > 0";
    if (!why)
        why = nb_optim_config_validate(optim);
    if (why) {
        snprintf(err, errlen, "discriminator: %s", why);
        return NB_EINVAL;
    }
    nb_electra_disc_t *d = calloc(1, sizeof *d);
    if (!d)
        return NB_ENOMEM;
    d->be = be;
    d->model = *model;
    d->optim_cfg = *optim;
    d->T = seq_len;
    d->n_src = n_src;
    d->weight = disc_weight;
    int rc = NB_EINVAL, max_n = 0;
    for (int i = 0; i < n_src; i++) {
        if (seqs[i] <= 0) {
            snprintf(err, errlen, "discriminator: source %d sends %d sequences (>= 1 needed)", i, seqs[i]);
            goto fail;
        }
        d->seqs[i] = seqs[i];
        d->total += seqs[i];
        max_n = seqs[i] > max_n ? seqs[i] : max_n;
        snprintf(d->names[i], sizeof d->names[i], "%s", names[i]);
    }
    nb_part_spec_t spec = nb_part_spec_full(model);
    char e2[1024];
    if ((rc = nb_part_new(be, model, &spec, seed, NULL, &d->part, e2, sizeof e2))) {
        snprintf(err, errlen, "discriminator: %s", e2);
        goto fail;
    }
    for (int i = 0; i < n_src; i++)
        if ((rc = nb_part_acts_new(d->part, seqs[i], seq_len, &d->acts[i]))) {
            snprintf(err, errlen, "discriminator: cannot allocate activations");
            goto fail;
        }
    if ((rc = nb_part_optim_new(d->part, optim, &d->optim))) {
        snprintf(err, errlen, "discriminator: cannot create the optimizer (%s)", nb_strerror(rc));
        goto fail;
    }
    size_t bt = (size_t)max_n * (size_t)seq_len;
    /* one slot per token of the step: a host source must stay valid until
     * the backend syncs */
    d->h_tg = malloc((size_t)d->total * (size_t)seq_len * sizeof(int32_t));
    d->h_logits = malloc(bt * 2 * sizeof(float));
    d->d_in = nb_be_alloc(be, bt * sizeof(int32_t));
    d->d_tg = nb_be_alloc(be, bt * sizeof(int32_t));
    if (!d->h_tg || !d->h_logits || !d->d_in || !d->d_tg) {
        snprintf(err, errlen, "discriminator: out of memory for batches");
        rc = NB_ENOMEM;
        goto fail;
    }
    *out = d;
    return 0;
fail:
    nb_electra_disc_free(d);
    return rc;
}

void nb_electra_disc_free(nb_electra_disc_t *d)
{
    if (!d)
        return;
    for (int i = 0; i < d->n_src; i++)
        nb_part_acts_free(d->acts[i]);
    nb_optim_free(d->optim);
    nb_part_free(d->part);
    if (d->d_in)
        nb_be_dealloc(d->be, d->d_in);
    if (d->d_tg)
        nb_be_dealloc(d->be, d->d_tg);
    free(d->h_tg);
    free(d->h_logits);
    free(d);
}

int nb_electra_disc_compute(nb_electra_disc_t *d, uint64_t step, const nb_electra_batch_t *b, float *loss,
                            float *acc, char *err, size_t errlen)
{
    /* every batch is checked before any is used: a bad one changes nothing */
    for (int i = 0; i < d->n_src; i++)
        if (nb_electra_batch_check(&b[i], d->names[i], i, step, d->seqs[i], d->T, d->model.vocab, err, errlen))
            return NB_EINVAL;
    nb_part_zero_grad(d->part);
    float total = 0.0f;
    long right = 0;
    int32_t *tg = d->h_tg;
    for (int i = 0; i < d->n_src; i++) {
        size_t bt = (size_t)d->seqs[i] * (size_t)d->T;
        for (size_t k = 0; k < bt; k++)
            tg[k] = b[i].replaced[k];
        nb_be_from_host(d->be, d->d_in, b[i].ids, bt * sizeof(int32_t));
        nb_be_from_host(d->be, d->d_tg, tg, bt * sizeof(int32_t));
        float share = (float)d->seqs[i] / (float)d->total;
        nb_part_input_t in = { .tokens = d->d_in, .targets = d->d_tg, .loss_scale = d->weight * share };
        float l = 0.0f;
        int rc;
        if ((rc = nb_part_forward(d->part, d->acts[i], &in, &l)) ||
            (rc = nb_part_backward(d->part, d->acts[i], NULL))) {
            snprintf(err, errlen, "discriminator: step %llu, batch of generator '%s': model error (%s)",
                     (unsigned long long)step, d->names[i], nb_strerror(rc));
            return rc;
        }
        total += l * share;
        if (acc) {
            int rows, cols;
            const float *lg = nb_part_acts_logits(d->acts[i], &rows, &cols);
            NB_CHECK((size_t)rows == bt && cols == 2);
            nb_be_to_host(d->be, d->h_logits, lg, bt * 2 * sizeof(float));
            for (size_t k = 0; k < bt; k++)
                right += (d->h_logits[2 * k + 1] > d->h_logits[2 * k]) == (tg[k] == 1);
        }
        tg += bt;
    }
    *loss = total;
    if (acc)
        *acc = (float)((double)right / ((double)d->total * d->T));
    return 0;
}

int nb_electra_disc_update(nb_electra_disc_t *d, uint64_t step, double *grad_norm)
{
    return update(d->be, d->part, d->optim, &d->optim_cfg, step, grad_norm);
}

nb_part_t *nb_electra_disc_part(nb_electra_disc_t *d) { return d->part; }

/* ---- the job ------------------------------------------------------------- */

/* The wte tensor of p: its offset and size in the flat buffers. */
static const nb_param_info_t *wte_of(nb_part_t *p)
{
    int i = nb_part_find_tensor(p, "wte");
    NB_CHECK(i >= 0);
    return nb_part_tensor(p, i);
}

int nb_electra_new(nb_backend_t *be, const nb_electra_config_t *c, nb_electra_t **out, char *err, size_t errlen)
{
    *out = NULL;
    if (c->n_gen < 1 || c->n_gen > NB_ELECTRA_MAX_GEN) {
        snprintf(err, errlen, "job.electra.generators: %d generators, 1 to %d allowed", c->n_gen, NB_ELECTRA_MAX_GEN);
        return NB_EINVAL;
    }
    if (c->steps <= 0 || !(c->mask_prob >= 0.0f && c->mask_prob <= 1.0f)) {
        snprintf(err, errlen, "%s", c->steps <= 0 ? "steps must be >= 1" : "job.electra.mask_prob must be in 0..1");
        return NB_EINVAL;
    }
    for (int i = 0; i < c->n_gen; i++)
        if (c->tie_embeddings && (c->gen[i].model.d_model != c->model.d_model || c->gen[i].model.vocab != c->model.vocab)) {
            snprintf(err, errlen, "job.electra.tie_embeddings: generator '%s' has d_model %d and vocab %d, the "
                     "discriminator %d and %d; one shared token embedding needs them equal", c->gen[i].name,
                     c->gen[i].model.d_model, c->gen[i].model.vocab, c->model.d_model, c->model.vocab);
            return NB_EINVAL;
        }
    nb_electra_t *e = calloc(1, sizeof *e);
    if (!e)
        return NB_ENOMEM;
    e->be = be;
    e->cfg = *c;
    if (e->cfg.disc_weight == 0.0f)
        e->cfg.disc_weight = NB_ELECTRA_DISC_WEIGHT_DEFAULT;
    int rc = 0, seqs[NB_ELECTRA_MAX_GEN];
    const char *names[NB_ELECTRA_MAX_GEN];
    size_t max_tok = 0;
    for (int i = 0; i < c->n_gen && !rc; i++) {
        rc = nb_electra_gen_new(be, &c->gen[i], i, c->seq_len, c->mask_prob, &e->gen[i], err, errlen);
        if (rc)
            break;
        uint32_t v = nb_electra_gen_vocab(e->gen[i]);
        if (v > (uint32_t)c->model.vocab) {
            snprintf(err, errlen, "generator '%s': its token file has vocabulary %u, more than the "
                     "discriminator's vocab %d", c->gen[i].name, v, c->model.vocab);
            rc = NB_EINVAL;
            break;
        }
        seqs[i] = c->gen[i].sequences;
        names[i] = c->gen[i].name;
        size_t tok = (size_t)seqs[i] * (size_t)c->seq_len, ws = nb_electra_wire_size(seqs[i], c->seq_len, v);
        max_tok = tok > max_tok ? tok : max_tok;
        e->wire_cap = ws > e->wire_cap ? ws : e->wire_cap;
    }
    if (rc || (rc = nb_electra_disc_new(be, &c->model, &c->optim, c->seed, c->seq_len, e->cfg.disc_weight, c->n_gen,
                                        seqs, names, &e->disc, err, errlen)))
        goto fail;
    e->wire = malloc(e->wire_cap);
    rc = e->wire ? 0 : NB_ENOMEM;
    for (int i = 0; i < c->n_gen && !rc; i++) {
        e->rx[i].ids = malloc(max_tok * sizeof(int32_t));
        e->rx[i].replaced = malloc(max_tok);
        rc = e->rx[i].ids && e->rx[i].replaced ? 0 : NB_ENOMEM;
    }
    if (rc) {
        snprintf(err, errlen, "out of memory for the batches");
        goto fail;
    }
    if (c->tie_embeddings) {
        /* one embedding: the discriminator's, seeded from its seed */
        const nb_param_info_t *dw = wte_of(nb_electra_disc_part(e->disc));
        for (int i = 0; i < c->n_gen; i++) {
            nb_part_t *gp = nb_electra_gen_part(e->gen[i]);
            nb_be_copy(be, nb_part_params(gp) + wte_of(gp)->offset, nb_part_params(nb_electra_disc_part(e->disc)) +
                       dw->offset, dw->numel * sizeof(float));
        }
    }
    *out = e;
    return 0;
fail:
    nb_electra_free(e);
    return rc;
}

void nb_electra_free(nb_electra_t *e)
{
    if (!e)
        return;
    for (int i = 0; i < e->cfg.n_gen; i++) {
        nb_electra_gen_free(e->gen[i]);
        free(e->rx[i].ids);
        free(e->rx[i].replaced);
    }
    nb_electra_disc_free(e->disc);
    free(e->wire);
    free(e);
}

int nb_electra_step(nb_electra_t *e, nb_electra_step_t *out, char *err, size_t errlen)
{
    const nb_electra_config_t *c = &e->cfg;
    if (e->step >= c->steps) {
        snprintf(err, errlen, "all %d steps are done", c->steps);
        return NB_ESTATE;
    }
    double t0 = nb_mono_s();
    nb_electra_step_t st = { .step = e->step };
    uint64_t s = (uint64_t)e->step;
    int rc;
    for (int i = 0; i < c->n_gen; i++) {
        nb_electra_batch_t b;
        if ((rc = nb_electra_gen_compute(e->gen[i], s, &b, &st.gen_loss[i], err, errlen)))
            return rc;
        /* the batch goes through the link's encoding, as it would between daemons */
        long n = nb_electra_wire_encode(&b, nb_electra_gen_vocab(e->gen[i]), e->wire, e->wire_cap);
        NB_CHECK(n > 0);
        if ((rc = nb_electra_wire_decode(e->wire, (size_t)n, c->gen[i].name, i, s, c->gen[i].sequences, c->seq_len,
                                         c->model.vocab, &e->rx[i], (size_t)c->gen[i].sequences * c->seq_len, err,
                                         errlen)))
            return rc;
        st.wire_bytes += (size_t)n;
        long rep, masked;
        nb_electra_gen_counts(e->gen[i], &rep, &masked);
        st.replaced += rep;
        st.tokens += (long)c->gen[i].sequences * c->seq_len;
    }
    if ((rc = nb_electra_disc_compute(e->disc, s, e->rx, &st.disc_loss, &st.disc_acc, err, errlen)))
        return rc;
    nb_part_t *dp = nb_electra_disc_part(e->disc);
    const nb_param_info_t *dw = wte_of(dp);
    if (c->tie_embeddings)
        for (int i = 0; i < c->n_gen; i++) {
            nb_part_t *gp = nb_electra_gen_part(e->gen[i]);
            float *gg = nb_part_grads(gp) + wte_of(gp)->offset;
            nb_add(e->be, nb_part_grads(dp) + dw->offset, gg, 1.0f, dw->numel);
            nb_be_memset0(e->be, gg, dw->numel * sizeof(float));
        }
    for (int i = 0; i < c->n_gen; i++)
        st.skipped += nb_electra_gen_update(e->gen[i], s, &st.gen_norm[i]);
    st.skipped += nb_electra_disc_update(e->disc, s, &st.disc_norm);
    if (c->tie_embeddings)
        for (int i = 0; i < c->n_gen; i++) {
            nb_part_t *gp = nb_electra_gen_part(e->gen[i]);
            nb_be_copy(e->be, nb_part_params(gp) + wte_of(gp)->offset, nb_part_params(dp) + dw->offset,
                       dw->numel * sizeof(float));
        }
    nb_be_sync(e->be);
    st.seconds = nb_mono_s() - t0;
    if (out)
        *out = st;
    e->step++;
    return 0;
}

int nb_electra_steps_done(const nb_electra_t *e) { return e->step; }

const nb_electra_batch_t *nb_electra_received(const nb_electra_t *e, int i)
{
    return e->step > 0 && i >= 0 && i < e->cfg.n_gen ? &e->rx[i] : NULL;
}
nb_electra_gen_t *nb_electra_gen(nb_electra_t *e, int i) { return i >= 0 && i < e->cfg.n_gen ? e->gen[i] : NULL; }
nb_electra_disc_t *nb_electra_disc(nb_electra_t *e) { return e->disc; }
