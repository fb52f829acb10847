/*
 * model_config.c - validation and names of nb_model_config_t (model.h).
 */
#include <math.h>
#include <string.h>
#include "kernels/model.h"

/* Limits that keep every size computation far from int overflow. */
#define NB_MODEL_MAX_DIM (1 << 20)

const char *nb_model_config_validate(const nb_model_config_t *c)
{
    if (!c)
        return "model config is missing";
    if (c->n_layer < 0 || c->n_layer > 4096)
        return "n_layer must be in 0..4096";
    if (c->d_model <= 0 || c->d_model > NB_MODEL_MAX_DIM)
        return "d_model must be in 1..1048576";
    if (c->n_head <= 0 || c->n_head > c->d_model)
        return "n_head must be in 1..d_model";
    if (c->d_model % c->n_head != 0)
        return "d_model must be divisible by n_head";
    if (c->d_ff <= 0 || c->d_ff > NB_MODEL_MAX_DIM)
        return "d_ff must be in 1..1048576";
    if (c->vocab <= 0 || c->vocab > (1 << 24))
        return "vocab must be in 1..16777216";
    if (c->max_seq <= 0 || c->max_seq > (1 << 20))
        return "max_seq must be in 1..1048576";
    if (c->norm != NB_MODEL_NORM_PRE && c->norm != NB_MODEL_NORM_POST)
        return "norm must be pre or post";
    if (!(c->ln_eps >= 0.0f && c->ln_eps <= 1.0f))
        return "ln_eps must be in 0..1 (0: the default 1e-5)";
    if (c->gelu != NB_MODEL_GELU_TANH && c->gelu != NB_MODEL_GELU_ERF)
        return "gelu must be tanh or erf";
    if (c->mask_token < 0 || c->mask_token >= c->vocab)
        return "mask_token must be in 0..vocab-1 (0: vocab - 1)";
    if (c->adapter_size < 0 || c->adapter_size > c->d_model)
        return "adapter size must be in 1..d_model (0: no adapters)";
    if (c->adapter_size > 0) {
        if (!c->adapter_after || (c->adapter_after & ~(unsigned)(NB_ADAPTER_ATTN | NB_ADAPTER_XATTN | NB_ADAPTER_FFN)))
            return "adapters must follow attn, xattn or ffn";
        if ((c->adapter_after & NB_ADAPTER_XATTN) && !c->cross_attn)
            return "an adapter after xattn needs cross-attention blocks (cross_attn)";
        if (c->adapter_first < 0 || c->adapter_first >= c->adapter_last || c->adapter_last > c->n_layer)
            return "adapter blocks must be a non-empty range of the model's blocks";
    }
    if (c->lowrank_rank < 0)
        return "lowrank_rank must be >= 0 (0: no low-rank split)";
    if (c->lowrank_rank > 0 && (c->lowrank_block < 0 || c->lowrank_block >= c->n_layer))
        return "lowrank_block must be a block of the model (0..n_layer-1)";
    if (c->lowrank_rank > c->d_model || c->lowrank_rank > c->d_ff)
        return "lowrank_rank must be at most min(d_model, d_ff), the rank of the split layer";
    if (c->lowrank_rank > 0 && c->cross_attn)
        return "a low-rank split needs an encoder (no cross_attn)";
    if (c->lowrank_rank > 0 && c->adapter_size > 0 && c->lowrank_block >= c->adapter_first &&
        c->lowrank_block < c->adapter_last)
        return "the low-rank split block cannot have adapters";
    if (c->token_shift && c->d_model < 4)
        return "token_shift needs d_model >= 4 (it moves a quarter of the channels)";
    switch (c->head) {
    case NB_MODEL_HEAD_LM:
    case NB_MODEL_HEAD_MLM:
        break;
    case NB_MODEL_HEAD_SEQCLS:
    case NB_MODEL_HEAD_TOKCLS:
        if (c->n_classes < 2 || c->n_classes > 65536)
            return "n_classes must be in 2..65536 for seqcls and tokcls heads";
        break;
    default:
        return "head must be lm, mlm, seqcls or tokcls";
    }
    return NULL;
}

static const char *const head_names[] = { "lm", "mlm", "seqcls", "tokcls" };
static const char *const norm_names[] = { "pre", "post" };
static const char *const gelu_names[] = { "tanh", "erf" };

bool nb_model_has_adapter(const nb_model_config_t *c, int l, unsigned which)
{
    return c->adapter_size > 0 && (c->adapter_after & which) && l >= c->adapter_first && l < c->adapter_last;
}

float nb_model_ln_eps(const nb_model_config_t *c)
{
    return c->ln_eps > 0.0f ? c->ln_eps : NB_MODEL_LN_EPS_DEFAULT;
}

int nb_model_mask_token(const nb_model_config_t *c)
{
    return c->mask_token > 0 ? c->mask_token : c->vocab - 1;
}

const char *nb_gelu_name(nb_gelu_t g)
{
    return (unsigned)g < NB_ARRAY_LEN(gelu_names) ? gelu_names[g] : "?";
}

int nb_gelu_parse(const char *s, nb_gelu_t *out)
{
    for (size_t i = 0; s && i < NB_ARRAY_LEN(gelu_names); i++)
        if (strcmp(s, gelu_names[i]) == 0) {
            *out = (nb_gelu_t)i;
            return 0;
        }
    return NB_EINVAL;
}

const char *nb_head_kind_name(nb_head_kind_t h)
{
    return (unsigned)h < NB_ARRAY_LEN(head_names) ? head_names[h] : "?";
}

int nb_head_kind_parse(const char *s, nb_head_kind_t *out)
{
    for (size_t i = 0; s && i < NB_ARRAY_LEN(head_names); i++)
        if (strcmp(s, head_names[i]) == 0) {
            *out = (nb_head_kind_t)i;
            return 0;
        }
    return NB_EINVAL;
}

const char *nb_norm_name(nb_norm_t n)
{
    return (unsigned)n < NB_ARRAY_LEN(norm_names) ? norm_names[n] : "?";
}

int nb_norm_parse(const char *s, nb_norm_t *out)
{
    for (size_t i = 0; s && i < NB_ARRAY_LEN(norm_names); i++)
        if (strcmp(s, norm_names[i]) == 0) {
            *out = (nb_norm_t)i;
            return 0;
        }
    return NB_EINVAL;
}

nb_part_spec_t nb_part_spec_full(const nb_model_config_t *cfg)
{
    nb_part_spec_t s = { .embed = true, .first = 0, .last = cfg->n_layer, .head = true };
    return s;
}
