/* cfg_model.c - a job section's model, adapters and freeze lists in the
 * model family's terms; see cfg_model.h. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include "daemon/train/cfg_model.h"

/* The model family's config of a job's model section. */
nb_model_config_t nb_cfg_to_model(const nb_cfg_model_t *m)
{
    return (nb_model_config_t){
        .n_layer = m->n_layer, .d_model = m->d_model, .n_head = m->n_head, .d_ff = m->d_ff,
        .vocab = m->vocab, .max_seq = m->max_seq, .causal = m->causal,
        .norm = m->norm == NB_NORM_POST ? NB_MODEL_NORM_POST : NB_MODEL_NORM_PRE,
        .head = (nb_head_kind_t)m->head, .n_classes = m->n_classes, .tie_embeddings = m->tie_embeddings,
        .ln_eps = (float)m->ln_eps, .gelu = m->gelu == NB_GELU_ERF ? NB_MODEL_GELU_ERF : NB_MODEL_GELU_TANH,
        .mask_token = m->mask_token, .cross_attn = m->cross_attn, .token_shift = m->token_shift,
    };
}

/* job.adapters (key "job") or job.encoder.adapters: refused with the
 * reason when they do not fit the model. */
int nb_cfg_set_adapters(const nb_config_t *cfg, const nb_cfg_adapters_t *ad, const char *key, nb_model_config_t *m,
                        char *err, size_t errlen)
{
    const char *after[3];
    for (int i = 0; i < ad->n_after && i < 3; i++)
        after[i] = ad->after[i];
    char why[256];
    if (nb_model_set_adapters(m, (int)ad->size, after, ad->n_after, ad->blocks, why, sizeof why)) {
        bool enc = strcmp(key, "job") != 0 && strncmp(why, "job.", 4) == 0;
        snprintf(err, errlen, "%s: %s%s", cfg->path, enc ? "job.encoder." : "", enc ? why + 4 : why);
        return -1;
    }
    return 0;
}

void nb_cfg_to_freeze(nb_freeze_spec_t *f, int n_freeze, const char (*freeze)[NB_CFG_PATTERN_MAX], int n_trainable,
                      const char (*trainable)[NB_CFG_PATTERN_MAX])
{
    _Static_assert(NB_CFG_MAX_FREEZE == NB_FREEZE_MAX && NB_CFG_PATTERN_MAX == NB_FREEZE_PATTERN_MAX,
                   "job.freeze in the config and in the model agree");
    memset(f, 0, sizeof *f);
    f->n_freeze = n_freeze;
    f->n_trainable = n_trainable;
    for (int i = 0; i < n_freeze; i++)
        snprintf(f->freeze[i], sizeof f->freeze[i], "%s", freeze[i]);
    for (int i = 0; i < n_trainable; i++)
        snprintf(f->trainable[i], sizeof f->trainable[i], "%s", trainable[i]);
}
