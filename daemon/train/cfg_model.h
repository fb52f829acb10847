/*
 * cfg_model.h - a job section of the configuration (daemon/config) turned
 * into the model family's settings (kernels/model.h): the model, its
 * adapters and its frozen tensors. Shared by nebula-train and the
 * encoder-decoder daemons, so both build the same models from one file.
 */
#ifndef NB_CFG_MODEL_H
#define NB_CFG_MODEL_H

#include "daemon/config/config.h"
#include "kernels/model.h"

/* The model family's config of a job's model section (adapters not set). */
nb_model_config_t nb_cfg_to_model(const nb_cfg_model_t *m);

/* Sets ad (job.adapters when key is "job", job.encoder.adapters
 * otherwise) on m; -1 with "<path>: <key>...: why" in err when they do not
 * fit the model, else 0. */
int nb_cfg_set_adapters(const nb_config_t *cfg, const nb_cfg_adapters_t *ad, const char *key, nb_model_config_t *m,
                        char *err, size_t errlen);

/* Copies a job's freeze and trainable lists into f. */
void nb_cfg_to_freeze(nb_freeze_spec_t *f, int n_freeze, const char (*freeze)[NB_CFG_PATTERN_MAX], int n_trainable,
                      const char (*trainable)[NB_CFG_PATTERN_MAX]);

#endif
