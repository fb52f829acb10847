/* job.c - the pipeline job: configuration -> layout -> Job message and back;
 * see job.h. */
#include <stdio.h>
#include <string.h>
#include "daemon/pipeline/job.h"

_Static_assert(NB_CFG_MAX_FREEZE == NB_FREEZE_MAX && NB_CFG_PATTERN_MAX == NB_FREEZE_PATTERN_MAX,
               "job.freeze in the config and in the model agree");

/* Copies the configuration's freeze lists. */
static void freeze_from_cfg(const nb_cfg_job_t *job, nb_freeze_spec_t *f)
{
    memset(f, 0, sizeof *f);
    f->n_freeze = job->n_freeze;
    f->n_trainable = job->n_trainable;
    for (int i = 0; i < job->n_freeze; i++)
        snprintf(f->freeze[i], sizeof f->freeze[i], "%s", job->freeze[i]);
    for (int i = 0; i < job->n_trainable; i++)
        snprintf(f->trainable[i], sizeof f->trainable[i], "%s", job->trainable[i]);
}

int nb_job_model_from_cfg(const nb_cfg_model_t *in, nb_model_config_t *out)
{
    memset(out, 0, sizeof *out);
    out->n_layer = in->n_layer;
    out->d_model = in->d_model;
    out->n_head = in->n_head;
    out->d_ff = in->d_ff;
    out->vocab = in->vocab;
    out->max_seq = in->max_seq;
    out->causal = in->causal;
    out->norm = in->norm == NB_NORM_POST ? NB_MODEL_NORM_POST : NB_MODEL_NORM_PRE;
    switch (in->head) {
    case NB_HEAD_LM: out->head = NB_MODEL_HEAD_LM; break;
    case NB_HEAD_MLM: out->head = NB_MODEL_HEAD_MLM; break;
    case NB_HEAD_SEQCLS: out->head = NB_MODEL_HEAD_SEQCLS; break;
    case NB_HEAD_TOKCLS: out->head = NB_MODEL_HEAD_TOKCLS; break;
    default: return NB_EINVAL;
    }
    out->n_classes = in->n_classes;
    out->tie_embeddings = in->tie_embeddings;
    out->ln_eps = (float)in->ln_eps;
    out->gelu = in->gelu == NB_GELU_ERF ? NB_MODEL_GELU_ERF : NB_MODEL_GELU_TANH;
    out->mask_token = in->mask_token;
    out->token_shift = in->token_shift;
    return nb_model_config_validate(out) ? NB_EINVAL : 0;
}

nb_optim_config_t nb_job_optim_from_cfg(const nb_cfg_optim_t *in, int64_t steps)
{
    nb_optim_config_t o = nb_optim_config_default();
    o.lr = (float)in->lr;
    o.lr_min = (float)in->min_lr;
    o.warmup_steps = (int)in->warmup_steps;
    o.total_steps = (int)(steps > 0 ? steps : 1);
    o.beta1 = (float)in->beta1;
    o.beta2 = (float)in->beta2;
    o.eps = (float)in->eps;
    o.weight_decay = (float)in->weight_decay;
    o.grad_clip = (float)in->grad_clip;
    return o;
}

void nb_job_model_digest(const nb_model_config_t *m, char out[17])
{
    char text[320];
    int n = snprintf(text, sizeof text, "n_layer=%d;d_model=%d;n_head=%d;d_ff=%d;vocab=%d;max_seq=%d;"
                     "causal=%d;norm=%d;head=%d;n_classes=%d;tie=%d", m->n_layer, m->d_model, m->n_head,
                     m->d_ff, m->vocab, m->max_seq, (int)m->causal, (int)m->norm, (int)m->head,
                     m->n_classes, (int)m->tie_embeddings);
    /* settings beyond the defaults enter the digest (the defaults keep the
     * digest of a model that does not name them) */
    float eps = nb_model_ln_eps(m);
    if (eps != NB_MODEL_LN_EPS_DEFAULT || m->gelu != NB_MODEL_GELU_TANH)
        n += snprintf(text + n, sizeof text - (size_t)n, ";ln_eps=%a;gelu=%d", (double)eps, (int)m->gelu);
    if (nb_model_mask_token(m) != m->vocab - 1)
        n += snprintf(text + n, sizeof text - (size_t)n, ";mask=%d", nb_model_mask_token(m));
    if (m->adapter_size > 0) /* adapters (job.adapters) */
        n += snprintf(text + n, sizeof text - (size_t)n, ";adapters=%d,%u,%d,%d", m->adapter_size,
                      m->adapter_after, m->adapter_first, m->adapter_last);
    if (m->lowrank_rank > 0) /* job.lowrank: another model */
        n += snprintf(text + n, sizeof text - (size_t)n, ";lowrank=%d,%d", m->lowrank_block, m->lowrank_rank);
    if (m->token_shift) /* job.model.token_shift: another function of the same tensors */
        n += snprintf(text + n, sizeof text - (size_t)n, ";token_shift=1");
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a 64 */
    for (int i = 0; i < n; i++) {
        h ^= (uint8_t)text[i];
        h *= 0x100000001b3ull;
    }
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}

/* Splits `blocks` over n slots as evenly as possible, earlier slots first. */
static void split_even(int blocks, int n, int *first, int *last)
{
    int next = 0;
    for (int i = 0; i < n; i++) {
        int k = blocks / n + (i < blocks % n ? 1 : 0);
        first[i] = next;
        last[i] = next + k;
        next += k;
    }
}

const char *nb_job_head_unsupported(nb_head_kind_t head)
{
    switch (head) {
    case NB_MODEL_HEAD_LM:
    case NB_MODEL_HEAD_MLM: return NULL;
    case NB_MODEL_HEAD_SEQCLS:
        return "head seqcls is not supported in a pipeline: stage 0 draws its batches from a token file, "
               "which holds no class labels, and nebula-train (the reference the pipeline must equal) "
               "trains lm and mlm only; use head lm or mlm";
    case NB_MODEL_HEAD_TOKCLS:
        return "head tokcls is not supported in a pipeline: stage 0 draws its batches from a token file, "
               "which holds no class labels, and nebula-train (the reference the pipeline must equal) "
               "trains lm and mlm only; use head lm or mlm";
    }
    return "unknown head";
}

int nb_job_lowrank_from_cfg(const nb_cfg_job_t *job, nb_model_config_t *model, char *err, size_t errlen)
{
    model->lowrank_block = job->lowrank.rank > 0 ? job->lowrank.block : 0;
    model->lowrank_rank = job->lowrank.rank;
    return nb_lowrank_check(model, err, errlen);
}

int nb_job_from_cfg(const nb_cfg_job_t *job, int m, uint64_t job_id, nb_job_desc_t *out,
                    char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    nb_pipe_layout_t *l = &out->layout;
    int n = job->n_clusters;
    if (n < 1 || n >= NB_SCHED_MAX_STAGES) {
        snprintf(err, errlen, "job.clusters: %d clusters; need 1..%d", n, NB_SCHED_MAX_STAGES - 1);
        return NB_EINVAL;
    }
    if (nb_job_model_from_cfg(&job->model, &l->model)) {
        snprintf(err, errlen, "job.model: %s", nb_model_config_validate(&l->model) ?: "unknown head");
        return NB_EINVAL;
    }
    const char *after[3];
    for (int i = 0; i < job->adapters.n_after && i < 3; i++)
        after[i] = job->adapters.after[i];
    if (nb_model_set_adapters(&l->model, (int)job->adapters.size, after, job->adapters.n_after,
                              job->adapters.blocks, err, errlen))
        return NB_EINVAL;
    if (nb_job_lowrank_from_cfg(job, &l->model, err, errlen))
        return NB_EINVAL;
    const char *head_why = nb_job_head_unsupported(l->model.head);
    if (head_why) {
        snprintf(err, errlen, "job.model.head: %s", head_why);
        return NB_EINVAL;
    }
    if (m < 1 || job->batch % m != 0) {
        snprintf(err, errlen, "job.micro_batches: %d does not divide job.batch %lld", m, (long long)job->batch);
        return NB_EINVAL;
    }
    bool ushape = job->topology == NB_TOPO_USHAPE;
    if (ushape && n < 2) {
        snprintf(err, errlen, "job.topology: ushape needs at least 2 clusters");
        return NB_EINVAL;
    }
    int first[NB_SCHED_MAX_STAGES], last[NB_SCHED_MAX_STAGES];
    if (job->clusters[0].layers_auto) {
        split_even(l->model.n_layer, n, first, last);
    } else {
        for (int i = 0; i < n; i++) {
            first[i] = job->clusters[i].layer_first;
            last[i] = job->clusters[i].layer_last + 1;
        }
    }
    l->job_id = job_id;
    l->p = ushape ? n + 1 : n;
    l->n_daemons = n;
    l->seed = job->seed;
    l->micro_batch_size = (int)(job->batch / m);
    l->seq_len = (int)job->seq_len;
    l->optim = nb_job_optim_from_cfg(&job->optimizer, job->steps);
    l->eval_fraction = job->eval.fraction;
    l->precision = job->precision == NB_CFG_PREC_BF16 ? NB_PREC_BF16 : NB_PREC_FP32;
    out->eval_file = job->eval.data[0] != '\0';
    freeze_from_cfg(job, &l->freeze);
    if (nb_freeze_check(&l->model, &l->freeze, err, errlen))
        return NB_EINVAL;
    for (int i = 0; i < n; i++) {
        l->parts[i] = (nb_part_spec_t){ .embed = i == 0, .first = first[i], .last = last[i],
                                        .head = !ushape && i == n - 1 };
        l->placement[i] = i;
        snprintf(out->names[i], sizeof out->names[i], "%s", job->clusters[i].name);
        snprintf(out->addresses[i], sizeof out->addresses[i], "%s", job->clusters[i].address.text);
    }
    if (ushape) {
        int b = l->model.n_layer;
        l->parts[n] = (nb_part_spec_t){ .embed = false, .first = b, .last = b, .head = true };
        l->placement[n] = 0;
    }
    out->n_daemons = n;
    out->steps = job->steps;
    nb_job_model_digest(&l->model, out->digest);
    const char *why = nb_pipe_layout_validate(l);
    if (why) {
        snprintf(err, errlen, "job: %s", why);
        return NB_EINVAL;
    }
    return 0;
}

void nb_job_to_msg(const nb_job_desc_t *d, int daemon, nb_job_msg_store_t *st, Nebula__Job *msg)
{
    const nb_pipe_layout_t *l = &d->layout;
    nebula__job__init(msg);
    nebula__model_config__init(&st->model);
    st->model.n_layer = (uint32_t)l->model.n_layer;
    st->model.d_model = (uint32_t)l->model.d_model;
    st->model.n_head = (uint32_t)l->model.n_head;
    st->model.d_ff = (uint32_t)l->model.d_ff;
    st->model.vocab = (uint32_t)l->model.vocab;
    st->model.max_seq = (uint32_t)l->model.max_seq;
    st->model.causal = l->model.causal;
    st->model.norm = (uint32_t)l->model.norm;
    st->model.head = (uint32_t)l->model.head;
    st->model.n_classes = (uint32_t)l->model.n_classes;
    st->model.tie_embeddings = l->model.tie_embeddings;
    st->model.ln_eps = nb_model_ln_eps(&l->model);
    st->model.gelu = (uint32_t)l->model.gelu;
    st->model.mask_token = (uint32_t)l->model.mask_token;
    st->model.adapter_size = (uint32_t)l->model.adapter_size;
    st->model.adapter_after = l->model.adapter_after;
    st->model.adapter_first = (uint32_t)l->model.adapter_first;
    st->model.adapter_last = (uint32_t)l->model.adapter_last;
    st->model.lowrank_block = (uint32_t)l->model.lowrank_block;
    st->model.lowrank_rank = (uint32_t)l->model.lowrank_rank;
    st->model.token_shift = l->model.token_shift;
    nebula__optim_config__init(&st->optim);
    st->optim.lr = l->optim.lr;
    st->optim.lr_min = l->optim.lr_min;
    st->optim.warmup_steps = (uint32_t)l->optim.warmup_steps;
    st->optim.total_steps = (uint32_t)l->optim.total_steps;
    st->optim.beta1 = l->optim.beta1;
    st->optim.beta2 = l->optim.beta2;
    st->optim.eps = l->optim.eps;
    st->optim.weight_decay = l->optim.weight_decay;
    st->optim.grad_clip = l->optim.grad_clip;
    for (int s = 0; s < l->p; s++) {
        nebula__stage_part__init(&st->parts[s]);
        st->parts[s].stage = (uint32_t)s;
        st->parts[s].embed = l->parts[s].embed;
        st->parts[s].first_layer = (uint32_t)l->parts[s].first;
        st->parts[s].end_layer = (uint32_t)l->parts[s].last;
        st->parts[s].head = l->parts[s].head;
        st->parts[s].daemon = (uint32_t)l->placement[s];
        st->part_ptrs[s] = &st->parts[s];
    }
    for (int i = 0; i < d->n_daemons; i++) {
        nebula__daemon_info__init(&st->daemons[i]);
        st->daemons[i].name = (char *)d->names[i];
        st->daemons[i].address = (char *)d->addresses[i];
        st->daemon_ptrs[i] = &st->daemons[i];
    }
    msg->job_id = l->job_id;
    msg->model = &st->model;
    msg->optim = &st->optim;
    msg->seed = l->seed;
    msg->micro_batch_size = (uint32_t)l->micro_batch_size;
    msg->seq_len = (uint32_t)l->seq_len;
    msg->steps = (uint64_t)d->steps;
    msg->n_stages = (size_t)l->p;
    msg->stages = st->part_ptrs;
    msg->n_daemons = (size_t)d->n_daemons;
    msg->daemons = st->daemon_ptrs;
    msg->your_daemon = (uint32_t)daemon;
    msg->model_digest = (char *)d->digest;
    msg->eval_fraction = l->eval_fraction;
    msg->precision = l->precision == NB_PREC_BF16 ? NEBULA__JOB__PRECISION__PRECISION_BF16
                                                  : NEBULA__JOB__PRECISION__PRECISION_FP32;
    msg->eval_file = d->eval_file;
    for (int i = 0; i < l->freeze.n_freeze; i++)
        st->freeze_ptrs[i] = (char *)l->freeze.freeze[i];
    for (int i = 0; i < l->freeze.n_trainable; i++)
        st->trainable_ptrs[i] = (char *)l->freeze.trainable[i];
    msg->n_freeze = (size_t)l->freeze.n_freeze;
    msg->freeze = st->freeze_ptrs;
    msg->n_trainable = (size_t)l->freeze.n_trainable;
    msg->trainable = st->trainable_ptrs;
}

#define BAD(code, ...)                                                                             \
    do {                                                                                           \
        snprintf(err, errlen, __VA_ARGS__);                                                        \
        return code;                                                                               \
    } while (0)

int nb_job_from_msg(const Nebula__Job *msg, nb_job_desc_t *out, int *your_daemon, char *err,
                    size_t errlen)
{
    memset(out, 0, sizeof *out);
    nb_pipe_layout_t *l = &out->layout;
    if (!msg->model || !msg->optim)
        BAD(NB_EFORMAT, "job: model or optimizer missing");
    const Nebula__ModelConfig *m = msg->model;
    /* bounds before any arithmetic: every value fits an int comfortably */
    if (m->n_layer > 4096 || m->d_model > 65536 || m->n_head > 4096 || m->d_ff > 262144 ||
        m->vocab > (1u << 24) || m->max_seq > 65536 || m->norm > 1 || m->head > 3 || m->n_classes > 65536 ||
        m->gelu > 1 || m->mask_token > (1u << 24) || m->adapter_size > 65536 || m->adapter_after > 7 ||
        m->adapter_first > 4096 || m->adapter_last > 4096 || m->lowrank_block > 4096 || m->lowrank_rank > 65536)
        BAD(NB_EFORMAT, "job: model config out of range");
    l->model = (nb_model_config_t){ .n_layer = (int)m->n_layer, .d_model = (int)m->d_model,
                                    .n_head = (int)m->n_head, .d_ff = (int)m->d_ff,
                                    .vocab = (int)m->vocab, .max_seq = (int)m->max_seq,
                                    .causal = m->causal, .norm = (nb_norm_t)m->norm,
                                    .head = (nb_head_kind_t)m->head, .n_classes = (int)m->n_classes,
                                    .tie_embeddings = m->tie_embeddings, .ln_eps = m->ln_eps,
                                    .gelu = (nb_gelu_t)m->gelu, .mask_token = (int)m->mask_token,
                                    .adapter_size = (int)m->adapter_size, .adapter_after = m->adapter_after,
                                    .adapter_first = (int)m->adapter_first, .adapter_last = (int)m->adapter_last,
                                    .lowrank_block = (int)m->lowrank_block, .lowrank_rank = (int)m->lowrank_rank,
                                    .token_shift = m->token_shift };
    char lwhy[200]; /* the split first: its reason names job.lowrank */
    if (nb_lowrank_check(&l->model, lwhy, sizeof lwhy))
        BAD(NB_EINVAL, "job: %s", lwhy);
    const char *why = nb_model_config_validate(&l->model);
    if (why)
        BAD(NB_EINVAL, "job: %s", why);
    if ((why = nb_job_head_unsupported(l->model.head)))
        BAD(NB_EINVAL, "job: %s", why);
    nb_job_model_digest(&l->model, out->digest);
    if (!msg->model_digest || strcmp(msg->model_digest, out->digest) != 0)
        BAD(NB_EINVAL, "job: model digest %s does not match the model config (%s): "
            "coordinator and stage disagree on the model", msg->model_digest ? msg->model_digest : "(none)",
            out->digest);
    const Nebula__OptimConfig *o = msg->optim;
    l->optim = nb_optim_config_default();
    l->optim.lr = o->lr;
    l->optim.lr_min = o->lr_min;
    l->optim.warmup_steps = (int)(o->warmup_steps > 100000000 ? 100000000 : o->warmup_steps);
    l->optim.total_steps = (int)(o->total_steps > 100000000 ? 100000000 : o->total_steps);
    l->optim.beta1 = o->beta1;
    l->optim.beta2 = o->beta2;
    l->optim.eps = o->eps;
    l->optim.weight_decay = o->weight_decay;
    l->optim.grad_clip = o->grad_clip;
    if ((why = nb_optim_config_validate(&l->optim)))
        BAD(NB_EINVAL, "job: optimizer: %s", why);
    if (msg->n_stages < 1 || msg->n_stages > NB_SCHED_MAX_STAGES)
        BAD(NB_EFORMAT, "job: %zu stages out of range", msg->n_stages);
    if (msg->n_daemons < 1 || msg->n_daemons > msg->n_stages)
        BAD(NB_EFORMAT, "job: %zu daemons for %zu stages", msg->n_daemons, msg->n_stages);
    if (msg->micro_batch_size < 1 || msg->micro_batch_size > 65536 || msg->seq_len < 1 ||
        msg->seq_len > 65536 || msg->steps > 1000000000ull)
        BAD(NB_EFORMAT, "job: micro-batch size, sequence length or steps out of range");
    l->p = (int)msg->n_stages;
    l->n_daemons = (int)msg->n_daemons;
    l->job_id = msg->job_id;
    l->seed = msg->seed;
    l->micro_batch_size = (int)msg->micro_batch_size;
    l->seq_len = (int)msg->seq_len;
    if (!(msg->eval_fraction >= 0.0 && msg->eval_fraction <= 0.5) || (msg->eval_fraction > 0.0 && msg->eval_file))
        BAD(NB_EFORMAT, "job: held-out fraction %g%s", msg->eval_fraction,
            msg->eval_file ? " together with a held-out file" : " out of range 0..0.5");
    l->eval_fraction = msg->eval_fraction;
    out->eval_file = msg->eval_file;
    if (msg->precision != NEBULA__JOB__PRECISION__PRECISION_FP32 &&
        msg->precision != NEBULA__JOB__PRECISION__PRECISION_BF16)
        BAD(NB_EFORMAT, "job: unknown precision %d", (int)msg->precision);
    l->precision = msg->precision == NEBULA__JOB__PRECISION__PRECISION_BF16 ? NB_PREC_BF16 : NB_PREC_FP32;
    for (size_t s = 0; s < msg->n_stages; s++) {
        const Nebula__StagePart *sp = msg->stages[s];
        if (sp->stage != s || sp->end_layer < sp->first_layer || sp->end_layer > m->n_layer ||
            sp->daemon >= msg->n_daemons)
            BAD(NB_EFORMAT, "job: stage entry %zu is malformed", s);
        l->parts[s] = (nb_part_spec_t){ .embed = sp->embed, .first = (int)sp->first_layer,
                                        .last = (int)sp->end_layer, .head = sp->head };
        l->placement[s] = (int)sp->daemon;
    }
    for (size_t i = 0; i < msg->n_daemons; i++) {
        const Nebula__DaemonInfo *di = msg->daemons[i];
        if (!di->name || !di->address || !*di->name || strlen(di->name) >= NB_CFG_NAME_MAX ||
            strlen(di->address) >= NB_CFG_ADDR_MAX)
            BAD(NB_EFORMAT, "job: daemon entry %zu is malformed", i);
        snprintf(out->names[i], sizeof out->names[i], "%s", di->name);
        snprintf(out->addresses[i], sizeof out->addresses[i], "%s", di->address);
    }
    if (msg->your_daemon >= msg->n_daemons)
        BAD(NB_EFORMAT, "job: your_daemon %u out of range", msg->your_daemon);
    if (msg->n_freeze > NB_FREEZE_MAX || msg->n_trainable > NB_FREEZE_MAX)
        BAD(NB_EFORMAT, "job: %zu freeze and %zu trainable patterns; at most %d each", msg->n_freeze,
            msg->n_trainable, NB_FREEZE_MAX);
    for (int k = 0; k < 2; k++) {
        size_t n = k ? msg->n_trainable : msg->n_freeze;
        char **src = k ? msg->trainable : msg->freeze;
        for (size_t i = 0; i < n; i++) {
            if (!src[i] || strlen(src[i]) >= NB_FREEZE_PATTERN_MAX)
                BAD(NB_EFORMAT, "job: %s pattern %zu is missing or longer than %d bytes", k ? "trainable" : "freeze",
                    i, NB_FREEZE_PATTERN_MAX - 1);
            snprintf(k ? l->freeze.trainable[i] : l->freeze.freeze[i], NB_FREEZE_PATTERN_MAX, "%s", src[i]);
        }
    }
    l->freeze.n_freeze = (int)msg->n_freeze;
    l->freeze.n_trainable = (int)msg->n_trainable;
    char fwhy[384];
    if (nb_freeze_check(&l->model, &l->freeze, fwhy, sizeof fwhy))
        BAD(NB_EINVAL, "job: %s", fwhy);
    if ((why = nb_pipe_layout_validate(l)))
        BAD(NB_EINVAL, "job: %s", why);
    out->n_daemons = l->n_daemons;
    out->steps = (int64_t)msg->steps;
    *your_daemon = (int)msg->your_daemon;
    return 0;
}
