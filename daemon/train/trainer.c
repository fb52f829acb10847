/*
 * trainer.c - the single-process trainer; the step is described in
 * trainer.h.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <math.h>
#include "daemon/clock.h"
#include "daemon/data/tokens.h"
#include "daemon/train/grad_fault.h"
#include "daemon/train/holdout.h"
#include "daemon/train/trainer.h"
#include "daemon/train/checkpoint.h"
#include "kernels/cpu_level.h"

struct nb_trainer {
    nb_backend_t *be;
    nb_train_config_t cfg;
    nb_tokens_t *tokens;         /* what training samples from: the file, or its head */
    nb_tokens_t *file;           /* the file when tokens is a slice of it */
    nb_tokens_t *eval;           /* held-out tokens: a slice of file, or eval_file */
    nb_tokens_t *eval_file;      /* job.eval.data */
    nb_part_t *part;
    nb_part_acts_t *acts;
    nb_optim_t *optim;
    int B;                       /* micro-batch size */
    int32_t *h_inputs, *h_targets;
    int32_t *d_inputs, *d_targets;
    int step;
    int skipped_run, skipped_total; /* steps skipped for a non-finite norm */
    nb_grad_fault_t fault;       /* test-only NaN injection (grad_fault.h) */
    char resumed_kernels[NB_CKPT_KERNELS_MAX]; /* the checkpoint's, after a resume */
};

static const char *check_config(const nb_train_config_t *c)
{
    if (c->model.head != NB_MODEL_HEAD_LM && c->model.head != NB_MODEL_HEAD_MLM)
        return "model.head must be lm or mlm for the trainer (it trains on a token file)";
    if (c->mask_prob < 0.0f || c->mask_prob > 1.0f)
        return "mask_prob must be in 0..1";
    if (c->batch <= 0)
        return "batch must be >= 1";
    if (c->micro_batches <= 0 || c->batch % c->micro_batches != 0)
        return "micro_batches must be >= 1 and divide batch";
    if (c->seq_len <= 0 || c->seq_len > c->model.max_seq)
        return "seq_len must be in 1..model.max_seq";
    if (c->steps <= 0)
        return "steps must be >= 1";
    if (c->max_skipped_steps < 0)
        return "max_skipped_steps must be >= 0 (0 = the default)";
    if (!(c->eval_fraction >= 0.0 && c->eval_fraction <= 0.5))
        return "eval.fraction must be in 0..0.5";
    if (c->eval_fraction > 0.0 && c->eval_data[0])
        return "eval.fraction and eval.data exclude each other: hold out a share of data or another file";
    if (c->eval_batches < 0)
        return "eval.batches must be >= 0 (0 = the default)";
    return NULL;
}

int nb_trainer_new(nb_backend_t *be, const nb_train_config_t *c, nb_trainer_t **out, char *err, size_t errlen)
{
    *out = NULL;
    const char *why = nb_model_config_validate(&c->model);
    if (why) {
        snprintf(err, errlen, "model: %s", why);
        return NB_EINVAL;
    }
    if ((why = check_config(c)) || (why = nb_optim_config_validate(&c->optim))) {
        snprintf(err, errlen, "%s", why);
        return NB_EINVAL;
    }
    if (nb_freeze_check(&c->model, &c->freeze, err, errlen))
        return NB_EINVAL;
    nb_trainer_t *t = calloc(1, sizeof *t);
    if (!t)
        return NB_ENOMEM;
    t->be = be;
    t->cfg = *c;
    t->B = c->batch / c->micro_batches;
    if (t->cfg.max_skipped_steps == 0)
        t->cfg.max_skipped_steps = NB_TRAIN_MAX_SKIPPED_DEFAULT;
    int rc = nb_grad_fault_from_env(&t->fault, err, errlen);
    if (rc || (rc = nb_tokens_open(c->data, &t->tokens, err, errlen)))
        goto fail;
    bool mlm = c->model.head == NB_MODEL_HEAD_MLM;
    if (nb_tokens_vocab(t->tokens) > (uint32_t)c->model.vocab - (mlm && !c->model.mask_token ? 1u : 0u)) {
        snprintf(err, errlen, "%s: vocabulary %u is larger than model.vocab %d%s", c->data,
                 nb_tokens_vocab(t->tokens), c->model.vocab, mlm ? " minus the mask token" : "");
        rc = NB_EINVAL;
        goto fail;
    }
    if (t->cfg.eval_batches == 0)
        t->cfg.eval_batches = NB_TRAIN_EVAL_BATCHES_DEFAULT;
    uint64_t need = (uint64_t)c->seq_len + 1;
    if (c->eval_fraction > 0.0) {
        /* the rule stage 0 of a pipeline applies too (holdout.h) */
        t->file = t->tokens;
        t->tokens = NULL;
        if ((rc = nb_holdout_split(t->file, c->data, c->eval_fraction, c->seq_len, &t->tokens, &t->eval, err,
                                   errlen)))
            goto fail;
    } else if (c->eval_data[0]) {
        if ((rc = nb_tokens_open(c->eval_data, &t->eval_file, err, errlen)))
            goto fail;
        if (nb_tokens_vocab(t->eval_file) > (uint32_t)c->model.vocab - (mlm && !c->model.mask_token ? 1u : 0u)) {
            snprintf(err, errlen, "%s: vocabulary %u is larger than model.vocab %d%s", c->eval_data,
                     nb_tokens_vocab(t->eval_file), c->model.vocab, mlm ? " minus the mask token" : "");
            rc = NB_EINVAL;
            goto fail;
        }
        if (nb_tokens_count(t->eval_file) < need) {
            snprintf(err, errlen, "%s: %llu tokens, fewer than seq_len + 1 = %d", c->eval_data,
                     (unsigned long long)nb_tokens_count(t->eval_file), c->seq_len + 1);
            rc = NB_EINVAL;
            goto fail;
        }
        t->eval = t->eval_file;
    }
    if (nb_tokens_count(t->tokens) < (uint64_t)c->seq_len + 1) {
        snprintf(err, errlen, "%s: %llu tokens, fewer than seq_len + 1 = %d", c->data,
                 (unsigned long long)nb_tokens_count(t->tokens), c->seq_len + 1);
        rc = NB_EINVAL;
        goto fail;
    }
    if (nb_be_set_precision(be, c->precision)) {
        snprintf(err, errlen, "job.precision bf16: the %s backend has no bf16 matmuls", be->iface->name);
        rc = NB_EINVAL;
        goto fail;
    }
    nb_part_spec_t spec = nb_part_spec_full(&c->model);
    if ((rc = nb_part_new(be, &c->model, &spec, c->seed, NULL, &t->part, err, errlen)))
        goto fail;
    if ((rc = nb_part_acts_new(t->part, t->B, c->seq_len, &t->acts))) {
        snprintf(err, errlen, "cannot allocate activations for %d x %d tokens", t->B, c->seq_len);
        goto fail;
    }
    if ((rc = nb_part_freeze(t->part, &c->freeze))) {
        snprintf(err, errlen, "out of memory for the gradients");
        goto fail;
    }
    if ((rc = nb_part_optim_new(t->part, &c->optim, &t->optim))) {
        snprintf(err, errlen, "cannot create the optimizer (%s)", nb_strerror(rc));
        goto fail;
    }
    size_t bt = (size_t)t->B * (size_t)c->seq_len;
    t->h_inputs = malloc(bt * sizeof(int32_t));
    t->h_targets = malloc(bt * sizeof(int32_t));
    t->d_inputs = nb_be_alloc(be, bt * sizeof(int32_t));
    t->d_targets = nb_be_alloc(be, bt * sizeof(int32_t));
    if (!t->h_inputs || !t->h_targets || !t->d_inputs || !t->d_targets) {
        snprintf(err, errlen, "out of memory for batches");
        rc = NB_ENOMEM;
        goto fail;
    }
    *out = t;
    return 0;
fail:
    nb_trainer_free(t);
    return rc;
}

void nb_trainer_free(nb_trainer_t *t)
{
    if (!t)
        return;
    nb_part_acts_free(t->acts);
    nb_optim_free(t->optim);
    nb_part_free(t->part);
    if (t->eval != t->eval_file)
        nb_tokens_close(t->eval); /* a slice: before the file it borrows */
    nb_tokens_close(t->eval_file);
    nb_tokens_close(t->tokens);
    nb_tokens_close(t->file);
    if (t->d_inputs)
        nb_be_dealloc(t->be, t->d_inputs);
    if (t->d_targets)
        nb_be_dealloc(t->be, t->d_targets);
    free(t->h_inputs);
    free(t->h_targets);
    free(t);
}

int nb_trainer_step(nb_trainer_t *t, nb_train_step_t *out, char *err, size_t errlen)
{
    const nb_train_config_t *c = &t->cfg;
    if (t->step >= c->steps) {
        snprintf(err, errlen, "all %d steps are done", c->steps);
        return NB_ESTATE;
    }
    double t0 = nb_mono_s();
    int m = c->micro_batches, T = c->seq_len;
    size_t bt = (size_t)t->B * (size_t)T;
    nb_part_zero_grad(t->part);
    float loss = 0.0f;
    for (int i = 0; i < m; i++) {
        int rc;
        if (c->model.head == NB_MODEL_HEAD_MLM)
            rc = nb_tokens_sample_mlm(t->tokens, c->seed, (uint64_t)t->step, (uint32_t)i, t->B, T,
                                      c->mask_prob > 0.0f ? c->mask_prob : NB_TOKENS_MLM_MASK_PROB,
                                      nb_model_mask_token(&c->model),
                                      t->h_inputs, t->h_targets);
        else
            rc = nb_tokens_sample(t->tokens, c->seed, (uint64_t)t->step, (uint32_t)i, t->B, T,
                                  t->h_inputs, t->h_targets);
        if (rc) {
            snprintf(err, errlen, "step %d micro-batch %d: cannot sample a batch", t->step, i);
            return rc;
        }
        nb_be_from_host(t->be, t->d_inputs, t->h_inputs, bt * sizeof(int32_t));
        nb_be_from_host(t->be, t->d_targets, t->h_targets, bt * sizeof(int32_t));
        nb_part_input_t in = { .tokens = t->d_inputs, .targets = t->d_targets, .loss_scale = 1.0f / (float)m };
        float li = 0.0f;
        if ((rc = nb_part_forward(t->part, t->acts, &in, &li)) ||
            (rc = nb_part_backward(t->part, t->acts, NULL))) {
            snprintf(err, errlen, "step %d micro-batch %d: model error (%s)", t->step, i, nb_strerror(rc));
            return rc;
        }
        loss += li / (float)m;
    }
    nb_part_finish_grads(t->part);
    if (nb_grad_fault_hits(&t->fault, t->step, -1))
        nb_grad_fault_poison(t->be, nb_part_grads(t->part));
    /* the global norm of the trainable tensors: frozen ones have no gradient */
    double ss = nb_optim_sumsq(t->be, nb_part_grads(t->part), nb_part_num_grads(t->part));
    float lr = (float)nb_optim_lr(&c->optim, t->step);
    /* nb_optim_clip_scale(NaN) is 1: a non-finite norm must never reach the
     * update, or every weight it touches becomes NaN */
    bool skip = !isfinite(ss);
    if (skip) {
        t->skipped_run++;
        t->skipped_total++;
    } else {
        t->skipped_run = 0;
        nb_optim_step(t->optim, nb_part_params(t->part), nb_part_grads(t->part), lr,
                      nb_optim_clip_scale(&c->optim, ss));
    }
    nb_be_sync(t->be);
    if (out) {
        out->step = t->step;
        out->loss = loss;
        out->lr = lr;
        out->grad_norm = sqrt(ss);
        out->seconds = nb_mono_s() - t0;
        out->skipped = skip;
        out->skipped_run = t->skipped_run;
        out->skipped_total = t->skipped_total;
    }
    t->step++;
    if (skip && t->skipped_run >= t->cfg.max_skipped_steps) {
        snprintf(err, errlen, "step %d: %d consecutive steps skipped for a non-finite gradient norm "
                 "(job.max_skipped_steps = %d): stopping", t->step, t->skipped_run, t->cfg.max_skipped_steps);
        return NB_ELIMIT;
    }
    return 0;
}

int nb_trainer_steps_done(const nb_trainer_t *t) { return t->step; }

void nb_trainer_split(const nb_trainer_t *t, uint64_t *train_tokens, uint64_t *eval_tokens)
{
    *train_tokens = nb_tokens_count(t->tokens);
    *eval_tokens = t->eval ? nb_tokens_count(t->eval) : 0;
}

int nb_trainer_eval(nb_trainer_t *t, double *loss, char *err, size_t errlen)
{
    const nb_train_config_t *c = &t->cfg;
    if (!t->eval) {
        snprintf(err, errlen, "no held-out data (job.eval.fraction or job.eval.data)");
        return NB_ESTATE;
    }
    size_t bt = (size_t)t->B * (size_t)c->seq_len;
    double sum = 0.0;
    for (int j = 0; j < c->eval_batches; j++) {
        int rc;
        if (c->model.head == NB_MODEL_HEAD_MLM)
            rc = nb_tokens_sample_mlm(t->eval, c->seed, NB_TRAIN_EVAL_STEP_KEY, (uint32_t)j, t->B, c->seq_len,
                                      c->mask_prob > 0.0f ? c->mask_prob : NB_TOKENS_MLM_MASK_PROB,
                                      nb_model_mask_token(&c->model), t->h_inputs, t->h_targets);
        else
            rc = nb_tokens_sample(t->eval, c->seed, NB_TRAIN_EVAL_STEP_KEY, (uint32_t)j, t->B, c->seq_len,
                                  t->h_inputs, t->h_targets);
        if (rc) {
            snprintf(err, errlen, "eval batch %d: cannot sample a batch", j);
            return rc;
        }
        nb_be_from_host(t->be, t->d_inputs, t->h_inputs, bt * sizeof(int32_t));
        nb_be_from_host(t->be, t->d_targets, t->h_targets, bt * sizeof(int32_t));
        nb_part_input_t in = { .tokens = t->d_inputs, .targets = t->d_targets, .loss_scale = 1.0f };
        float li = 0.0f;
        if ((rc = nb_part_forward(t->part, t->acts, &in, &li))) {
            snprintf(err, errlen, "eval batch %d: model error (%s)", j, nb_strerror(rc));
            return rc;
        }
        sum += li;
    }
    *loss = sum / c->eval_batches;
    return 0;
}

void nb_trainer_ckpt_meta(const nb_trainer_t *t, nb_ckpt_meta_t *out)
{
    memset(out, 0, sizeof *out);
    out->step = t->step;
    out->optim_steps = nb_optim_steps(t->optim);
    out->seed = t->cfg.seed;
    out->batch = t->cfg.batch;
    out->micro_batches = t->cfg.micro_batches;
    out->seq_len = t->cfg.seq_len;
    out->model = t->cfg.model;
    nb_trainer_kernels(t, out->kernels, sizeof out->kernels);
}

void nb_trainer_kernels(const nb_trainer_t *t, char *buf, size_t cap)
{
    if (t->be->iface->kind == NB_DEV_CPU)
        nb_cpu_describe(buf, cap);
    else
        snprintf(buf, cap, "%s", t->be->iface->name);
}

const char *nb_trainer_resumed_kernels(const nb_trainer_t *t) { return t->resumed_kernels; }

int nb_trainer_save(nb_trainer_t *t, const char *dir, char *err, size_t errlen)
{
    nb_ckpt_manifest_t *m = calloc(1, sizeof *m);
    nb_ckpt_snap_t *snap = NULL;
    if (!m) {
        snprintf(err, errlen, "%s: out of memory", dir);
        return NB_ENOMEM;
    }
    nb_trainer_ckpt_meta(t, &m->meta);
    int rc = nb_ckpt_begin(dir, err, errlen);
    if (!rc)
        rc = nb_ckpt_snapshot(t->part, t->optim, &snap, err, errlen);
    if (!rc)
        rc = nb_ckpt_write_file(dir, "model.safetensors", &snap, 1, &m->meta, &m->files[0], err, errlen);
    if (!rc) {
        m->files[0].stages = 1;
        m->n_files = 1;
        rc = nb_ckpt_manifest_write(dir, m, err, errlen);
    }
    nb_ckpt_snap_free(snap);
    free(m);
    return rc;
}

int nb_trainer_resume(nb_trainer_t *t, const char *dir, char *err, size_t errlen)
{
    nb_ckpt_manifest_t *m = malloc(sizeof *m);
    if (!m) {
        snprintf(err, errlen, "%s: out of memory", dir);
        return NB_ENOMEM;
    }
    int rc = nb_ckpt_manifest_read(dir, m, err, errlen);
    if (rc)
        goto out;
    const nb_ckpt_meta_t *g = &m->meta;
    /* the data stream is keyed by (seed, step, micro-batch) and shaped by
     * batch and seq_len: another value resumes another run */
    rc = NB_EINVAL;
    if (g->seed != t->cfg.seed) {
        snprintf(err, errlen, "%s: seed is %llu in the checkpoint, %llu in this run", dir,
                 (unsigned long long)g->seed, (unsigned long long)t->cfg.seed);
        goto out;
    }
    static const char *const names[] = { "batch", "micro_batches", "seq_len" };
    const int have[] = { g->batch, g->micro_batches, g->seq_len };
    const int want[] = { t->cfg.batch, t->cfg.micro_batches, t->cfg.seq_len };
    for (int i = 0; i < 3; i++)
        if (have[i] != want[i]) {
            snprintf(err, errlen, "%s: %s is %d in the checkpoint, %d in this run", dir, names[i], have[i], want[i]);
            goto out;
        }
    if (g->step > t->cfg.steps) {
        snprintf(err, errlen, "%s: %lld steps done, more than the %d configured", dir, (long long)g->step,
                 t->cfg.steps);
        goto out;
    }
    if ((rc = nb_ckpt_load_part(dir, m, t->part, t->optim, err, errlen)))
        goto out;
    t->step = (int)g->step;
    snprintf(t->resumed_kernels, sizeof t->resumed_kernels, "%s", g->kernels);
out:
    free(m);
    return rc;
}

nb_part_t *nb_trainer_part(nb_trainer_t *t) { return t->part; }
nb_optim_t *nb_trainer_optim(nb_trainer_t *t) { return t->optim; }
