/*
 * electra_msg.c - configuration, ElectraJob message and batch admission of
 * the ELECTRA job across daemons; see electra_msg.h.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "kernels/common.h"
#include "daemon/pipeline/electra_msg.h"

static nb_model_config_t model_of(const nb_cfg_model_t *m)
{
    return (nb_model_config_t){
        .n_layer = m->n_layer, .d_model = m->d_model, .n_head = m->n_head, .d_ff = m->d_ff,
        .vocab = m->vocab, .max_seq = m->max_seq, .causal = m->causal,
        .norm = m->norm == NB_NORM_POST ? NB_MODEL_NORM_POST : NB_MODEL_NORM_PRE,
        .head = (nb_head_kind_t)m->head, .n_classes = m->n_classes, .tie_embeddings = m->tie_embeddings,
        .ln_eps = (float)m->ln_eps, .gelu = m->gelu == NB_GELU_ERF ? NB_MODEL_GELU_ERF : NB_MODEL_GELU_TANH,
        .mask_token = m->mask_token, .token_shift = m->token_shift,
    };
}

static nb_optim_config_t optim_of(const nb_cfg_optim_t *o, int steps)
{
    return (nb_optim_config_t){
        .lr = (float)o->lr, .lr_min = (float)o->min_lr, .warmup_steps = (int)o->warmup_steps,
        .total_steps = steps, .beta1 = (float)o->beta1, .beta2 = (float)o->beta2,
        .eps = (float)o->eps, .weight_decay = (float)o->weight_decay, .grad_clip = (float)o->grad_clip,
    };
}

int nb_electra_cfg_convert(const nb_config_t *cfg, int steps, nb_electra_config_t *ec, char *err, size_t errlen)
{
    const nb_cfg_job_t *j = &cfg->job;
    memset(ec, 0, sizeof *ec);
    if (!j->present || j->electra.n_generators == 0) {
        snprintf(err, errlen, "%s: no job.electra section: not an electra job", cfg->path);
        return -1;
    }
    ec->model = model_of(&j->model);
    ec->optim = optim_of(&j->optimizer, steps);
    ec->seed = j->seed;
    ec->seq_len = (int)j->seq_len;
    ec->steps = steps;
    ec->mask_prob = (float)j->electra.mask_prob;
    ec->disc_weight = (float)j->electra.disc_weight;
    ec->tie_embeddings = j->electra.tie_embeddings;
    ec->n_gen = j->electra.n_generators;
    for (int i = 0; i < ec->n_gen; i++) {
        const nb_cfg_generator_t *g = &j->electra.generators[i];
        nb_electra_gen_config_t *o = &ec->gen[i];
        snprintf(o->name, sizeof o->name, "%s", g->name);
        snprintf(o->data, sizeof o->data, "%s", g->data);
        o->model = model_of(&g->model);
        o->optim = optim_of(&g->optimizer, steps);
        o->seed = g->seed;
        o->sequences = (int)g->sequences;
    }
    return 0;
}

void nb_electra_job_to_msg(const nb_electra_config_t *ec, int g, uint64_t job_id, uint64_t resume_step,
                           uint64_t credit, nb_electra_msg_store_t *st)
{
    const nb_electra_gen_config_t *gc = &ec->gen[g];
    const nb_model_config_t *m = &gc->model;
    const nb_optim_config_t *o = &gc->optim;
    nebula__model_config__init(&st->model);
    st->model.n_layer = (uint32_t)m->n_layer;
    st->model.d_model = (uint32_t)m->d_model;
    st->model.n_head = (uint32_t)m->n_head;
    st->model.d_ff = (uint32_t)m->d_ff;
    st->model.vocab = (uint32_t)m->vocab;
    st->model.max_seq = (uint32_t)m->max_seq;
    st->model.causal = m->causal;
    st->model.norm = (uint32_t)m->norm;
    st->model.head = (uint32_t)m->head;
    st->model.n_classes = (uint32_t)m->n_classes;
    st->model.tie_embeddings = m->tie_embeddings;
    st->model.ln_eps = m->ln_eps; /* as configured, 0 included: the generator builds what the reference builds */
    st->model.gelu = (uint32_t)m->gelu;
    st->model.mask_token = (uint32_t)m->mask_token;
    st->model.token_shift = m->token_shift;
    nebula__optim_config__init(&st->optim);
    st->optim.lr = o->lr;
    st->optim.lr_min = o->lr_min;
    st->optim.warmup_steps = (uint32_t)o->warmup_steps;
    st->optim.total_steps = (uint32_t)o->total_steps;
    st->optim.beta1 = o->beta1;
    st->optim.beta2 = o->beta2;
    st->optim.eps = o->eps;
    st->optim.weight_decay = o->weight_decay;
    st->optim.grad_clip = o->grad_clip;
    Nebula__ElectraJob *e = &st->job;
    nebula__electra_job__init(e);
    e->index = (uint32_t)g;
    e->name = (char *)gc->name;
    e->model = &st->model;
    e->optim = &st->optim;
    e->seed = gc->seed;
    e->sequences = (uint32_t)gc->sequences;
    e->seq_len = (uint32_t)ec->seq_len;
    e->steps = (uint64_t)ec->steps;
    e->mask_prob = ec->mask_prob;
    e->disc_vocab = (uint32_t)ec->model.vocab;
    e->resume_step = resume_step;
    e->credit = credit;
    e->job_id = job_id;
}

#define BAD(code, ...)                                                                             \
    do {                                                                                           \
        snprintf(err, errlen, __VA_ARGS__);                                                        \
        return code;                                                                               \
    } while (0)

/* 1 when v is outside lo..hi; writes which field, its value and the range. */
static int out_of_range(const char *field, uint64_t v, uint64_t lo, uint64_t hi, char *err, size_t errlen)
{
    if (v >= lo && v <= hi)
        return 0;
    snprintf(err, errlen, "electra job: %s is %llu, allowed %llu..%llu", field, (unsigned long long)v,
             (unsigned long long)lo, (unsigned long long)hi);
    return 1;
}

#define RANGE(field, v, lo, hi)                                                                    \
    do {                                                                                           \
        if (out_of_range(field, (uint64_t)(v), (uint64_t)(lo), (uint64_t)(hi), err, errlen))       \
            return NB_EFORMAT;                                                                     \
    } while (0)

/* acc += a * b * c, saturating at UINT64_MAX (which is then above any cap). */
static void mac3(uint64_t *acc, uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t ab, abc;
    if (__builtin_mul_overflow(a, b, &ab) || __builtin_mul_overflow(ab, c, &abc) ||
        __builtin_add_overflow(*acc, abc, acc))
        *acc = UINT64_MAX;
}

uint64_t nb_electra_gen_bytes(const nb_model_config_t *m, int sequences, int seq_len, uint64_t *state,
                              uint64_t *acts, uint64_t *logits)
{
    uint64_t d = (uint64_t)m->d_model, f = (uint64_t)m->d_ff, L = (uint64_t)m->n_layer, V = (uint64_t)m->vocab;
    uint64_t n = (uint64_t)sequences, T = (uint64_t)seq_len;
    uint64_t p = 0; /* parameters: embeddings, an untied head, blocks */
    mac3(&p, V, d, 2);
    mac3(&p, (uint64_t)m->max_seq, d, 1);
    mac3(&p, L, d, 4 * d + 2 * f + 9);
    mac3(&p, L, f, 1);
    uint64_t nT = 0, nTT = 0, st = 0, ac = 0, lg = 0; /* floats */
    mac3(&nT, n, T, 1);
    mac3(&nTT, nT, T, 1);
    mac3(&st, p, 4, 1); /* weights, gradients, AdamW m and v */
    mac3(&ac, nT, L, 10 * d + 2 * f);
    mac3(&ac, nTT, L, 2 * (uint64_t)m->n_head); /* attention scores and probabilities */
    mac3(&lg, nT, V, 2);                         /* logits and their gradient */
    uint64_t total = 0;
    mac3(&total, st, 4, 1);
    mac3(&total, ac, 4, 1);
    mac3(&total, lg, 4, 1);
    if (state)
        *state = st > UINT64_MAX / 4 ? UINT64_MAX : st * 4;
    if (acts)
        *acts = ac > UINT64_MAX / 4 ? UINT64_MAX : ac * 4;
    if (logits)
        *logits = lg > UINT64_MAX / 4 ? UINT64_MAX : lg * 4;
    return total;
}

int nb_electra_job_from_msg(const Nebula__ElectraJob *e, const char *my_name, const char *data,
                            nb_electra_gen_config_t *gc, nb_electra_job_info_t *info, char *err, size_t errlen)
{
    memset(gc, 0, sizeof *gc);
    memset(info, 0, sizeof *info);
    if (!e->model || !e->optim || !e->name)
        BAD(NB_EFORMAT, "electra job: model, optimizer or name missing");
    if (strcmp(e->name, my_name) != 0)
        BAD(NB_EINVAL, "electra job: names generator '%s', this daemon is '%s'", e->name, my_name);
    const Nebula__ModelConfig *m = e->model;
    RANGE("model.n_layer", m->n_layer, 0, 4096);
    RANGE("model.d_model", m->d_model, 0, 65536);
    RANGE("model.n_head", m->n_head, 0, 4096);
    RANGE("model.d_ff", m->d_ff, 0, 262144);
    RANGE("model.vocab", m->vocab, 0, 1u << 24);
    RANGE("model.max_seq", m->max_seq, 0, 65536);
    RANGE("model.norm", m->norm, 0, 1);
    RANGE("model.head", m->head, 0, 3);
    RANGE("model.n_classes", m->n_classes, 0, 65536);
    RANGE("model.gelu", m->gelu, 0, 1);
    RANGE("model.mask_token", m->mask_token, 0, 1u << 24);
    if (!isfinite(m->ln_eps) || m->ln_eps < 0)
        BAD(NB_EFORMAT, "electra job: model.ln_eps is %g, allowed a finite value >= 0", (double)m->ln_eps);
    RANGE("index", e->index, 0, NB_ELECTRA_MAX_GEN - 1);
    RANGE("sequences", e->sequences, 1, 65536);
    RANGE("seq_len", e->seq_len, 1, 65536);
    RANGE("steps", e->steps, 1, 100000000u);
    if (!(e->mask_prob > 0.0f && e->mask_prob <= 1.0f))
        BAD(NB_EFORMAT, "electra job: mask_prob is %g, allowed (0, 1]", (double)e->mask_prob);
    RANGE("disc_vocab", e->disc_vocab, 1, 1u << 24);
    RANGE("job_id", e->job_id, 1, UINT64_MAX);
    RANGE("resume_step", e->resume_step, 0, e->steps);
    snprintf(gc->name, sizeof gc->name, "%s", e->name);
    snprintf(gc->data, sizeof gc->data, "%s", data);
    gc->model = (nb_model_config_t){ .n_layer = (int)m->n_layer, .d_model = (int)m->d_model, .n_head = (int)m->n_head,
                                     .d_ff = (int)m->d_ff, .vocab = (int)m->vocab, .max_seq = (int)m->max_seq,
                                     .causal = m->causal, .norm = (nb_norm_t)m->norm, .head = (nb_head_kind_t)m->head,
                                     .n_classes = (int)m->n_classes, .tie_embeddings = m->tie_embeddings,
                                     .ln_eps = m->ln_eps, .gelu = (nb_gelu_t)m->gelu, .mask_token = (int)m->mask_token,
                                     .token_shift = m->token_shift };
    const Nebula__OptimConfig *o = e->optim;
    RANGE("optim.warmup_steps", o->warmup_steps, 0, 100000000u);
    RANGE("optim.total_steps", o->total_steps, 0, 100000000u);
    gc->optim = (nb_optim_config_t){ .lr = o->lr, .lr_min = o->lr_min, .warmup_steps = (int)o->warmup_steps,
                                     .total_steps = (int)o->total_steps, .beta1 = o->beta1, .beta2 = o->beta2,
                                     .eps = o->eps, .weight_decay = o->weight_decay, .grad_clip = o->grad_clip };
    gc->seed = e->seed;
    gc->sequences = (int)e->sequences;
    const char *why = nb_model_config_validate(&gc->model);
    if (!why)
        why = nb_optim_config_validate(&gc->optim);
    if (why)
        BAD(NB_EINVAL, "electra job: generator '%s': %s", gc->name, why);
    uint64_t st, ac, lg;
    uint64_t need = nb_electra_gen_bytes(&gc->model, gc->sequences, (int)e->seq_len, &st, &ac, &lg);
    if (need > NB_ELECTRA_GEN_MEM_MAX)
        BAD(NB_ELIMIT, "electra job: generator '%s' would need about %.1f GiB (model state %.1f GiB, activations "
            "%.1f GiB, logits %.1f GiB for %d sequences x %u tokens x vocab %d), more than the %llu GiB a generator "
            "daemon allocates: refused", gc->name, (double)need / (1 << 30), (double)st / (1 << 30),
            (double)ac / (1 << 30), (double)lg / (1 << 30), gc->sequences, e->seq_len, gc->model.vocab,
            (unsigned long long)(NB_ELECTRA_GEN_MEM_MAX >> 30));
    *info = (nb_electra_job_info_t){ .job_id = e->job_id, .index = (int)e->index, .seq_len = (int)e->seq_len,
                                     .steps = (int)e->steps, .mask_prob = e->mask_prob, .disc_vocab = e->disc_vocab,
                                     .resume_step = e->resume_step, .credit = e->credit };
    return 0;
}

static bool model_same(const nb_model_config_t *a, const nb_model_config_t *b)
{
    return a->n_layer == b->n_layer && a->d_model == b->d_model && a->n_head == b->n_head && a->d_ff == b->d_ff &&
           a->vocab == b->vocab && a->max_seq == b->max_seq && a->causal == b->causal && a->norm == b->norm &&
           a->head == b->head && a->n_classes == b->n_classes && a->tie_embeddings == b->tie_embeddings &&
           a->ln_eps == b->ln_eps && a->gelu == b->gelu && a->mask_token == b->mask_token &&
           a->adapter_size == b->adapter_size && a->adapter_after == b->adapter_after &&
           a->adapter_first == b->adapter_first && a->adapter_last == b->adapter_last &&
           a->cross_attn == b->cross_attn && a->lowrank_block == b->lowrank_block &&
           a->lowrank_rank == b->lowrank_rank && a->token_shift == b->token_shift;
}

static bool optim_same(const nb_optim_config_t *a, const nb_optim_config_t *b)
{
    return a->lr == b->lr && a->lr_min == b->lr_min && a->warmup_steps == b->warmup_steps &&
           a->total_steps == b->total_steps && a->beta1 == b->beta1 && a->beta2 == b->beta2 && a->eps == b->eps &&
           a->weight_decay == b->weight_decay && a->grad_clip == b->grad_clip;
}

bool nb_electra_job_same(const nb_electra_gen_config_t *a, const nb_electra_job_info_t *ai,
                         const nb_electra_gen_config_t *b, const nb_electra_job_info_t *bi)
{
    return strcmp(a->name, b->name) == 0 && strcmp(a->data, b->data) == 0 && model_same(&a->model, &b->model) &&
           optim_same(&a->optim, &b->optim) && a->seed == b->seed && a->sequences == b->sequences &&
           ai->index == bi->index && ai->seq_len == bi->seq_len && ai->steps == bi->steps &&
           ai->mask_prob == bi->mask_prob && ai->disc_vocab == bi->disc_vocab;
}

const char *nb_electra_loss_text(double loss, char *buf, size_t len)
{
    if (isfinite(loss))
        snprintf(buf, len, "%.4f", loss);
    else
        snprintf(buf, len, "n/a");
    return buf;
}

uint64_t nb_electra_credit_after_job(uint64_t cur_job, uint64_t cur_credit, const nb_electra_job_info_t *in)
{
    if (in->job_id == cur_job && cur_credit > in->credit)
        return cur_credit;
    return in->credit;
}

int nb_electra_rx_accept(const nb_electra_rx_t *x, const char *sender, const Nebula__Tensor *t,
                         const uint8_t *payload, size_t len, nb_electra_batch_t *b, size_t cap_tokens, char *err,
                         size_t errlen)
{
    int g = -1;
    for (int i = 0; i < x->n_gen; i++)
        if (strcmp(x->names[i], sender) == 0)
            g = i;
    if (g < 0)
        BAD(NB_EINVAL, "batch from '%s', which is not a generator of this job: refused", sender);
    if (t->kind != NEBULA__TENSOR_KIND__KIND_TOKEN_IDS || t->dtype != NEBULA__DTYPE__DTYPE_U8 || !t->codec ||
        strcmp(t->codec, NB_ELECTRA_CODEC) != 0)
        BAD(NB_EFORMAT, "generator '%s': tensor of kind %d, dtype %d, codec '%s' is not an ELECTRA batch (token "
            "IDs, u8, %s): refused", sender, (int)t->kind, (int)t->dtype, t->codec ? t->codec : "", NB_ELECTRA_CODEC);
    if (t->job_id != x->job_id)
        BAD(NB_EINVAL, "generator '%s': batch of job %llu, this job is %llu: refused", sender,
            (unsigned long long)t->job_id, (unsigned long long)x->job_id);
    if (t->from_stage != (uint32_t)g)
        BAD(NB_EINVAL, "generator '%s': batch claims to come from generator %u, '%s' is generator %d: refused",
            sender, t->from_stage, sender, g);
    if (t->step != x->next[g])
        BAD(NB_EINVAL, "generator '%s': batch for step %llu, step %llu expected next from it: refused", sender,
            (unsigned long long)t->step, (unsigned long long)x->next[g]);
    if (t->step >= x->credit)
        BAD(NB_ELIMIT, "generator '%s': batch for step %llu beyond its credit (steps below %llu): refused", sender,
            (unsigned long long)t->step, (unsigned long long)x->credit);
    int rc = nb_electra_wire_decode(payload, len, sender, g, t->step, x->seqs[g], x->seq_len, x->vocab, b, cap_tokens,
                                    err, errlen);
    return rc ? rc : g;
}
