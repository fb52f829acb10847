/*
 * encdec.c - the single-process encoder-decoder trainer (encdec.h): two
 * parts, the span task, one optimizer step over both trainable sets, and
 * the held-out score by greedy decoding.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/clock.h"
#include "daemon/train/encdec.h"
#include "daemon/train/hf_model.h"
#include "kernels/common.h"

struct nb_encdec {
    nb_backend_t *be;
    nb_encdec_config_t cfg;
    nb_spans_t *task;
    nb_part_t *enc, *dec;
    nb_part_acts_t *ea, *da;
    nb_optim_t *eo, *dopt;
    int B, S, T, V;
    int step, skipped_run, skipped_total;
    nb_spans_batch_t hb;          /* host pairs of one micro-batch */
    int32_t *d_src, *d_din, *d_tgt;
    uint8_t *d_mask;
    float *d_cut;                 /* (B,S,C) a tensor received across the cut */
    double t0;                    /* when the step began */
    float *h_row;                 /* one row of logits (eval) */
    int32_t *pred;                /* (B,T) greedy predictions (eval) */
    int *pred_len;                /* (B) */
    bool *pred_done;              /* (B) */
};

/* why names a key of job (job.freeze, job.adapters, ...): for the encoder
 * it is job.encoder's. */
static void keyed(char *err, size_t errlen, const char *key, const char *why)
{
    if (strcmp(key, "job") != 0 && strncmp(why, "job.", 4) == 0)
        snprintf(err, errlen, "%s.%s", key, why + 4);
    else
        snprintf(err, errlen, "%s", why);
}

/* A side's model against the task; its freeze patterns (a side may be
 * wholly frozen: the other one trains). */
static int check_side(const nb_encdec_side_t *s, bool decoder, const nb_spans_t *task, int len, char *err,
                      size_t errlen)
{
    const char *why = nb_model_config_validate(&s->model);
    if (why) {
        snprintf(err, errlen, "%s.model: %s", s->key, why);
        return NB_EINVAL;
    }
    if (s->model.cross_attn != decoder) {
        snprintf(err, errlen, "%s.model.cross_attn: %s", s->key,
                 decoder ? "the decoder needs cross-attention blocks" : "the encoder has no cross-attention");
        return NB_EINVAL;
    }
    if (decoder && s->model.head != NB_MODEL_HEAD_LM) {
        snprintf(err, errlen, "%s.model.head: the decoder needs head lm", s->key);
        return NB_EINVAL;
    }
    if (decoder && !s->model.causal) {
        snprintf(err, errlen, "%s.model.causal: the decoder must be causal (teacher forcing, greedy decoding)",
                 s->key);
        return NB_EINVAL;
    }
    if (s->model.vocab < nb_spans_vocab(task)) {
        snprintf(err, errlen, "%s.model.vocab %d is smaller than the vocabulary of job.spans.tokenizer (%d tokens)",
                 s->key, s->model.vocab, nb_spans_vocab(task));
        return NB_EINVAL;
    }
    if (len > s->model.max_seq) {
        snprintf(err, errlen, "%s.model.max_seq %d: the %s reads %d positions", s->key, s->model.max_seq,
                 decoder ? "decoder" : "encoder", len);
        return NB_EINVAL;
    }
    /* nb_freeze_check refuses a model with nothing to train; here one
     * side may be wholly frozen: check the patterns with "wte" kept
     * trainable, and count what trains once the part is made */
    nb_freeze_spec_t f = s->freeze;
    if (f.n_freeze > 0 && f.n_trainable < NB_FREEZE_MAX)
        snprintf(f.trainable[f.n_trainable++], sizeof f.trainable[0], "wte");
    char w[512];
    if (nb_freeze_check(&s->model, &f, w, sizeof w)) {
        keyed(err, errlen, s->key, w);
        return NB_EINVAL;
    }
    return 0;
}

/* A note of one side's init, named by its key ("job.encoder.init: ..."). */
typedef struct {
    nb_encdec_note_cb note;
    void *ud;
    const char *key;
} side_note_t;

static void side_note(void *ud, const char *note)
{
    side_note_t *n = ud;
    char msg[1600];
    snprintf(msg, sizeof msg, "%s.init: %.1500s", n->key, note);
    n->note(n->ud, msg);
}

/* Fills the decoder part p from s->init written for the same model
 * without cross-attention and adapters: every tensor of that model by name
 * (nb_part_lowrank_init with no split only copies), the cross-attention
 * blocks' and adapters' tensors keeping their seeded init. 0 or a
 * negative code with the reason in e. */
static int init_without_xattn(nb_encdec_t *t, const nb_encdec_side_t *s, nb_part_t *p, nb_encdec_note_cb note,
                              void *ud, char *e, size_t elen)
{
    nb_model_config_t plain = s->model;
    plain.cross_attn = false;
    plain.adapter_size = 0;
    plain.adapter_after = 0;
    plain.adapter_first = plain.adapter_last = 0;
    nb_part_spec_t spec = nb_part_spec_full(&plain);
    nb_part_t *src = NULL;
    int rc = nb_part_new(t->be, &plain, &spec, t->cfg.seed, NULL, &src, e, elen);
    if (!rc)
        rc = nb_hf_init_part(s->init, src, note, ud, e, elen);
    if (!rc)
        rc = nb_part_lowrank_init(p, src, e, elen);
    nb_part_free(src);
    if (!rc && note) {
        char msg[1400];
        snprintf(msg, sizeof msg, "%.1100s holds a model without cross-attention: its tensors loaded, the decoder's "
                 "cross-attention%s tensors keep their seeded init", s->init, s->model.adapter_size ? " and adapter" : "");
        note(ud, msg);
    }
    return rc;
}

/* Creates one side's part, its init, its frozen tensors and optimizer. */
static int make_side(nb_encdec_t *t, const nb_encdec_side_t *s, bool decoder, nb_encdec_note_cb note, void *ud,
                     char *err, size_t errlen)
{
    nb_part_spec_t spec = nb_part_spec_full(&s->model);
    spec.head = decoder;
    nb_part_t **p = decoder ? &t->dec : &t->enc;
    char e[1024];
    side_note_t sn = { .note = note, .ud = ud, .key = s->key };
    if (note) {
        note = side_note;
        ud = &sn;
    }
    int rc = nb_part_new(t->be, &s->model, &spec, t->cfg.seed + (decoder ? 0 : 1), NULL, p, e, sizeof e);
    if (rc) {
        snprintf(err, errlen, "%s.model: %s", s->key, e);
        return rc;
    }
    if (s->init[0] && (rc = nb_hf_init_part(s->init, *p, note, ud, e, sizeof e))) {
        /* a decoder pre-trained without cross-attention (an ordinary GPT
         * run of nebula-train): its tensors, the new ones seeded. Tried
         * only when the file's model lacks cross-attention; its own error
         * (an ln_eps of another value, a failed allocation) is then the
         * reason */
        if (!decoder || rc != NB_EINVAL || !strstr(e, "cross_attn is 0") ||
            (rc = init_without_xattn(t, s, *p, note, ud, e, sizeof e)) != 0) {
            snprintf(err, errlen, "%s.init: %s", s->key, e);
            return rc;
        }
    }
    if ((rc = nb_part_freeze(*p, &s->freeze))) {
        snprintf(err, errlen, "%s: out of memory for the gradients", s->key);
        return rc;
    }
    rc = decoder ? nb_part_acts_new_cross(*p, t->B, t->T, t->S, &t->da) : nb_part_acts_new(*p, t->B, t->S, &t->ea);
    if (rc) {
        snprintf(err, errlen, "%s: cannot allocate activations for %d x %d positions", s->key, t->B,
                 decoder ? t->T : t->S);
        return rc;
    }
    if (nb_part_num_trainable(*p) > 0 &&
        (rc = nb_part_optim_new(*p, &t->cfg.optim, decoder ? &t->dopt : &t->eo))) {
        snprintf(err, errlen, "%s: cannot create the optimizer (%s)", s->key, nb_strerror(rc));
        return rc;
    }
    return 0;
}

int nb_encdec_new(nb_backend_t *be, const nb_encdec_config_t *c, nb_encdec_note_cb note, void *ud,
                  nb_encdec_t **out, char *err, size_t errlen)
{
    *out = NULL;
    const char *why = nb_optim_config_validate(&c->optim);
    if (why || c->batch < 1 || c->micro_batches < 1 || c->batch % c->micro_batches || c->steps < 1 ||
        c->eval_pairs < 1) {
        snprintf(err, errlen, "%s", why ? why : "job: batch, micro_batches, steps or job.spans.eval_windows out of range");
        return NB_EINVAL;
    }
    nb_encdec_t *t = calloc(1, sizeof *t);
    if (!t)
        return NB_ENOMEM;
    t->be = be;
    t->cfg = *c;
    if (t->cfg.max_skipped_steps == 0)
        t->cfg.max_skipped_steps = NB_TRAIN_MAX_SKIPPED_DEFAULT;
    t->B = c->batch / c->micro_batches;
    t->S = c->task.src_len;
    int rc = nb_spans_open(&c->task, &t->task, err, errlen);
    if (rc)
        goto fail;
    t->T = nb_spans_dec_len(t->task);
    t->V = c->dec.model.vocab;
    if ((rc = check_side(&c->enc, false, t->task, t->S, err, errlen)) ||
        (rc = check_side(&c->dec, true, t->task, t->T, err, errlen)))
        goto fail;
    if (c->enc.model.d_model != c->dec.model.d_model) {
        snprintf(err, errlen, "job.encoder.model.d_model %d differs from the decoder's job.model.d_model %d",
                 c->enc.model.d_model, c->dec.model.d_model);
        rc = NB_EINVAL;
        goto fail;
    }
    if ((c->half != NB_ENCDEC_DECODER && (rc = make_side(t, &c->enc, false, note, ud, err, errlen))) ||
        (c->half != NB_ENCDEC_ENCODER && (rc = make_side(t, &c->dec, true, note, ud, err, errlen))))
        goto fail;
    if (c->half == NB_ENCDEC_BOTH && !t->eo && !t->dopt) {
        snprintf(err, errlen, "job.freeze and job.encoder.freeze freeze every tensor of both models: nothing would "
                 "train (list the tensors to train in job.trainable or job.encoder.trainable)");
        rc = NB_EINVAL;
        goto fail;
    }
    size_t bs = (size_t)t->B * t->S, bt = (size_t)t->B * t->T;
    if ((rc = nb_spans_batch_alloc(t->task, t->B, &t->hb)))
        goto oom;
    t->d_src = nb_be_alloc(be, bs * sizeof(int32_t));
    t->d_mask = nb_be_alloc(be, bs);
    t->d_din = nb_be_alloc(be, bt * sizeof(int32_t));
    t->d_tgt = nb_be_alloc(be, bt * sizeof(int32_t));
    t->h_row = malloc((size_t)t->V * sizeof(float));
    t->pred = malloc(bt * sizeof *t->pred);
    t->pred_len = malloc((size_t)t->B * sizeof *t->pred_len);
    t->pred_done = malloc((size_t)t->B * sizeof *t->pred_done);
    t->d_cut = nb_be_alloc(be, bs * (size_t)c->enc.model.d_model * sizeof(float));
    if (!t->d_cut || !t->d_src || !t->d_mask || !t->d_din || !t->d_tgt || !t->h_row || !t->pred || !t->pred_len || !t->pred_done)
        goto oom;
    *out = t;
    return 0;
oom:
    snprintf(err, errlen, "out of memory for batches");
    rc = NB_ENOMEM;
fail:
    nb_encdec_free(t);
    return rc;
}

void nb_encdec_free(nb_encdec_t *t)
{
    if (!t)
        return;
    if (t->d_src)
        nb_be_dealloc(t->be, t->d_src);
    if (t->d_mask)
        nb_be_dealloc(t->be, t->d_mask);
    if (t->d_din)
        nb_be_dealloc(t->be, t->d_din);
    if (t->d_tgt)
        nb_be_dealloc(t->be, t->d_tgt);
    if (t->d_cut)
        nb_be_dealloc(t->be, t->d_cut);
    free(t->h_row);
    free(t->pred);
    free(t->pred_len);
    free(t->pred_done);
    nb_spans_batch_free(&t->hb);
    nb_optim_free(t->eo);
    nb_optim_free(t->dopt);
    nb_part_acts_free(t->ea);
    nb_part_acts_free(t->da);
    nb_part_free(t->enc);
    nb_part_free(t->dec);
    nb_spans_free(t->task);
    free(t);
}

/* Copies the host pairs of t->hb to the device. */
static void upload(nb_encdec_t *t)
{
    size_t bs = (size_t)t->B * t->S, bt = (size_t)t->B * t->T;
    nb_be_from_host(t->be, t->d_src, t->hb.src, bs * sizeof(int32_t));
    nb_be_from_host(t->be, t->d_mask, t->hb.src_mask, bs);
    nb_be_from_host(t->be, t->d_din, t->hb.dec_in, bt * sizeof(int32_t));
    nb_be_from_host(t->be, t->d_tgt, t->hb.dec_tgt, bt * sizeof(int32_t));
}

/* The encoder's forward on the source in d_src. */
static int enc_forward(nb_encdec_t *t)
{
    nb_part_input_t ein = { .tokens = t->d_src, .key_mask = t->d_mask };
    return nb_part_forward(t->enc, t->ea, &ein, NULL);
}

/* The decoder's forward on d_din and the encoder's output enc (with the
 * loss of d_tgt when targets is true). */
static int dec_forward_on(nb_encdec_t *t, const float *enc, bool targets, float loss_scale, float *loss)
{
    nb_part_input_t din = { .tokens = t->d_din, .targets = targets ? t->d_tgt : NULL, .loss_scale = loss_scale,
                            .enc = enc, .enc_mask = t->d_mask };
    return nb_part_forward(t->dec, t->da, &din, loss);
}

/* The same on the encoder's last output. */
static int dec_forward(nb_encdec_t *t, bool targets, float loss_scale, float *loss)
{
    return dec_forward_on(t, nb_part_acts_output(t->ea), targets, loss_scale, loss);
}

int nb_encdec_step(nb_encdec_t *t, nb_train_step_t *out, char *err, size_t errlen)
{
    const nb_encdec_config_t *c = &t->cfg;
    if (c->half != NB_ENCDEC_BOTH) {
        snprintf(err, errlen, "this trainer holds one half of the job: run the step in halves");
        return NB_ESTATE;
    }
    int rc = nb_encdec_begin(t, err, errlen);
    if (rc)
        return rc;
    int m = c->micro_batches;
    float loss = 0.0f;
    for (int i = 0; i < m; i++) {
        nb_spans_train(t->task, c->seed, (uint64_t)t->step, (uint32_t)i, &t->hb);
        upload(t);
        float li = 0.0f;
        if ((rc = enc_forward(t)) || (rc = dec_forward(t, true, 1.0f / (float)m, &li)) || (rc = nb_part_backward(t->dec, t->da, NULL)) ||
            (t->eo && (rc = nb_part_backward(t->enc, t->ea, nb_part_acts_denc(t->da))))) {
            snprintf(err, errlen, "step %d micro-batch %d: model error (%s)", t->step, i, nb_strerror(rc));
            return rc;
        }
        loss += li / (float)m;
    }
    /* one global norm over both trainable sets, the encoder's first */
    return nb_encdec_commit(t, nb_encdec_sumsq(t, 0.0), loss, out, err, errlen);
}

double nb_encdec_sumsq(nb_encdec_t *t, double before)
{
    double ss = before;
    if (t->eo)
        ss += nb_optim_sumsq(t->be, nb_part_grads(t->enc), nb_part_num_grads(t->enc));
    if (t->dopt)
        ss += nb_optim_sumsq(t->be, nb_part_grads(t->dec), nb_part_num_grads(t->dec));
    return ss;
}

int nb_encdec_commit(nb_encdec_t *t, double ss, float loss, nb_train_step_t *out, char *err, size_t errlen)
{
    const nb_encdec_config_t *c = &t->cfg;
    if (t->step >= c->steps) {
        snprintf(err, errlen, "all %d steps are done", c->steps);
        return NB_ESTATE;
    }
    float lr = (float)nb_optim_lr(&c->optim, t->step);
    bool skip = !isfinite(ss);
    if (skip) {
        t->skipped_run++;
        t->skipped_total++;
    } else {
        t->skipped_run = 0;
        float scale = nb_optim_clip_scale(&c->optim, ss);
        if (t->eo)
            nb_optim_step(t->eo, nb_part_params(t->enc), nb_part_grads(t->enc), lr, scale);
        if (t->dopt)
            nb_optim_step(t->dopt, nb_part_params(t->dec), nb_part_grads(t->dec), lr, scale);
    }
    nb_be_sync(t->be);
    if (out)
        *out = (nb_train_step_t){ .step = t->step, .loss = loss, .lr = lr, .grad_norm = sqrt(ss),
                                  .seconds = nb_mono_s() - t->t0, .skipped = skip, .skipped_run = t->skipped_run,
                                  .skipped_total = t->skipped_total };
    t->step++;
    if (skip && t->skipped_run >= c->max_skipped_steps) {
        snprintf(err, errlen, "step %d: %d consecutive steps skipped for a non-finite gradient norm "
                 "(job.max_skipped_steps = %d): stopping", t->step, t->skipped_run, c->max_skipped_steps);
        return NB_ELIMIT;
    }
    return 0;
}

/* ---- the cut (encdec.h) ---------------------------------------------------- */

void nb_encdec_cut_shape(const nb_encdec_t *t, int *B, int *S, int *C)
{
    *B = t->B;
    *S = t->S;
    *C = t->cfg.enc.model.d_model;
}

float *nb_encdec_cut_buf(nb_encdec_t *t) { return t->d_cut; }

int nb_encdec_begin(nb_encdec_t *t, char *err, size_t errlen)
{
    if (t->step >= t->cfg.steps) {
        snprintf(err, errlen, "all %d steps are done", t->cfg.steps);
        return NB_ESTATE;
    }
    t->t0 = nb_mono_s();
    if (t->enc)
        nb_part_zero_grad(t->enc);
    if (t->dec)
        nb_part_zero_grad(t->dec);
    return 0;
}

/* Draws pair (step, micro) and uploads it; NB_ESTATE without the model
 * the call needs, NB_EINVAL for micro out of range. */
static int draw(nb_encdec_t *t, int micro, bool encoder, char *err, size_t errlen)
{
    if (!(encoder ? t->enc : t->dec)) {
        snprintf(err, errlen, "the %s runs on the other half of the job", encoder ? "encoder" : "decoder");
        return NB_ESTATE;
    }
    if (micro < 0 || micro >= t->cfg.micro_batches || t->step >= t->cfg.steps) {
        snprintf(err, errlen, "step %d micro-batch %d: out of range (%d steps, %d micro-batches)", t->step, micro,
                 t->cfg.steps, t->cfg.micro_batches);
        return NB_EINVAL;
    }
    nb_spans_train(t->task, t->cfg.seed, (uint64_t)t->step, (uint32_t)micro, &t->hb);
    upload(t);
    return 0;
}

int nb_encdec_enc_forward(nb_encdec_t *t, int micro, const float **enc, char *err, size_t errlen)
{
    int rc = draw(t, micro, true, err, errlen);
    if (rc)
        return rc;
    if ((rc = enc_forward(t))) {
        snprintf(err, errlen, "step %d micro-batch %d: encoder error (%s)", t->step, micro, nb_strerror(rc));
        return rc;
    }
    *enc = nb_part_acts_output(t->ea);
    return 0;
}

int nb_encdec_dec_micro(nb_encdec_t *t, int micro, const float *enc, const float **denc, float *loss, char *err,
                        size_t errlen)
{
    int rc = draw(t, micro, false, err, errlen);
    if (rc)
        return rc;
    *loss = 0.0f;
    if ((rc = dec_forward_on(t, enc, true, 1.0f / (float)t->cfg.micro_batches, loss)) ||
        (rc = nb_part_backward(t->dec, t->da, NULL))) {
        snprintf(err, errlen, "step %d micro-batch %d: decoder error (%s)", t->step, micro, nb_strerror(rc));
        return rc;
    }
    *denc = nb_part_acts_denc(t->da);
    return 0;
}

int nb_encdec_enc_backward(nb_encdec_t *t, const float *denc, char *err, size_t errlen)
{
    if (!t->enc) {
        snprintf(err, errlen, "the encoder runs on the other half of the job");
        return NB_ESTATE;
    }
    int rc = t->eo ? nb_part_backward(t->enc, t->ea, denc) : 0;
    if (rc)
        snprintf(err, errlen, "step %d: encoder backward error (%s)", t->step, nb_strerror(rc));
    return rc;
}

/* Greedy decoding of the pairs in t->hb, after the encoder's forward on
 * them: scores added to *exact, *f1 for the first `rows` rows. Position
 * pos of the causal decoder sees inputs 0..pos only, so the inputs after
 * it may hold anything ([PAD] here). */
static int greedy(nb_encdec_t *t, int rows, double *exact, double *f1)
{
    int B = t->B, T = t->T;
    int32_t eos = nb_spans_eos(t->task), pad = nb_spans_pad(t->task);
    int32_t *pred = t->pred;
    int *len = t->pred_len;
    bool *done = t->pred_done;
    for (int b = 0; b < B; b++) {
        len[b] = 0;
        done[b] = b >= rows;
        for (int i = 1; i < T; i++)
            t->hb.dec_in[(size_t)b * T + i] = pad;
    }
    for (int pos = 0; pos < T; pos++) {
        nb_be_from_host(t->be, t->d_din, t->hb.dec_in, (size_t)B * T * sizeof(int32_t));
        int rc = dec_forward(t, false, 1.0f, NULL);
        if (rc)
            return rc;
        int nrows = 0, cols = 0;
        const float *logits = nb_part_acts_logits(t->da, &nrows, &cols);
        for (int b = 0; b < rows; b++) {
            if (done[b])
                continue;
            nb_be_to_host(t->be, t->h_row, logits + ((size_t)b * T + pos) * cols, (size_t)cols * sizeof(float));
            int best = 0;
            for (int v = 1; v < cols; v++)
                if (t->h_row[v] > t->h_row[best])
                    best = v;
            if (best == eos) {
                done[b] = true;
                continue;
            }
            pred[(size_t)b * T + len[b]++] = best;
            if (pos + 1 < T)
                t->hb.dec_in[(size_t)b * T + pos + 1] = best;
        }
    }
    for (int b = 0; b < rows; b++) {
        double em, f;
        nb_spans_score(pred + (size_t)b * T, len[b], t->hb.dec_tgt + (size_t)b * T, t->hb.span_len[b], &em, &f);
        *exact += em;
        *f1 += f;
    }
    return 0;
}

int nb_encdec_eval(nb_encdec_t *t, nb_encdec_score_t *out, char *err, size_t errlen)
{
    int n = t->cfg.eval_pairs;
    double loss = 0, tokens = 0, exact = 0, f1 = 0;
    if (t->cfg.half != NB_ENCDEC_BOTH) {
        snprintf(err, errlen, "the held-out score needs both models in one process");
        return NB_ESTATE;
    }
    for (int first = 0; first < n; first += t->B) {
        nb_spans_heldout(t->task, t->cfg.seed, first, n, &t->hb);
        /* the last batch's rows past n repeat pair n - 1: out of the loss,
         * and each batch weighs by its target tokens (a mean per token) */
        int rows = n - first < t->B ? n - first : t->B, ntok = 0;
        for (size_t i = 0; i < (size_t)t->B * t->T; i++) {
            if ((int)(i / (size_t)t->T) >= rows)
                t->hb.dec_tgt[i] = -1;
            ntok += t->hb.dec_tgt[i] >= 0;
        }
        upload(t);
        float l = 0.0f;
        int rc = enc_forward(t);
        if (!rc)
            rc = dec_forward(t, true, 1.0f, &l);
        if (!rc)
            rc = greedy(t, rows, &exact, &f1);
        if (rc) {
            snprintf(err, errlen, "held-out pairs %d..: model error (%s)", first, nb_strerror(rc));
            return rc;
        }
        loss += (double)l * ntok;
        tokens += ntok;
    }
    *out = (nb_encdec_score_t){ .loss = tokens > 0 ? loss / tokens : 0, .exact = exact / n, .f1 = f1 / n,
                                .pairs = n };
    return 0;
}

int nb_encdec_steps_done(const nb_encdec_t *t) { return t->step; }
nb_part_t *nb_encdec_encoder(nb_encdec_t *t) { return t->enc; }
nb_part_t *nb_encdec_decoder(nb_encdec_t *t) { return t->dec; }
nb_optim_t *nb_encdec_optim(nb_encdec_t *t, bool encoder) { return encoder ? t->eo : t->dopt; }
const nb_spans_t *nb_encdec_task(const nb_encdec_t *t) { return t->task; }
