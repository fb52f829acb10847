/*
 * hf_model.h - Hugging Face models in and out of Nebula's model family:
 * config.json to nb_model_config_t, and the tensor names and layouts of
 * GPT-2 and BERT checkpoints (safetensors) to and from a part's tensors.
 * docs/import-export.md has the maps and the limits.
 *
 * GPT-2: Conv1D weights are stored [in, out] and transposed to Nebula's
 * (out, in); the attention mask buffers (attn.bias, attn.masked_bias) are
 * skipped; a "transformer." prefix is accepted.
 * BERT: query, key and value are concatenated into qkv; row 0 of the
 * token-type table is added to every row of the position table (exact for
 * inputs whose token types are all 0, the only kind the family takes); the
 * pooler and the MLM transform are skipped with a note; a "bert." prefix is
 * accepted.
 * LayerNorm eps and the GELU form (erf for "gelu", tanh for "gelu_new") are
 * model settings; what the family cannot represent (other activations,
 * relative positions, decoders, ...) is refused, all of it named at once.
 * Thread: any thread that may use the part's backend.
 */
#ifndef NB_HF_MODEL_H
#define NB_HF_MODEL_H

#include <stddef.h>
#include "daemon/train/safetensors.h"
#include "kernels/model.h"

typedef enum {
    NB_HF_NAMES_NEBULA = 0, /* Nebula's own names and layouts ("h3.qkv.w") */
    NB_HF_NAMES_GPT2 = 1,   /* "h.3.attn.c_attn.weight", Conv1D [in, out] */
    NB_HF_NAMES_BERT = 2,   /* "encoder.layer.3.attention.self.query.weight" */
} nb_hf_names_t;

/* "nebula", "gpt2", "bert", and the parser (0 or NB_EINVAL). */
const char *nb_hf_names_name(nb_hf_names_t n);
int nb_hf_names_parse(const char *s, nb_hf_names_t *out);

/* Reads a Hugging Face config.json (model_type "gpt2" or "bert") into cfg
 * (GPT-2: causal, pre-LN, lm head, tied per tie_word_embeddings; BERT:
 * bidirectional, post-LN, mlm head tied to the word embeddings) and the
 * naming scheme. Errors: NB_EIO, NB_EFORMAT (not JSON, a missing or mistyped
 * field: named), NB_EINVAL (settings the family lacks, each named with the
 * value; or a config nb_model_config_validate refuses). */
int nb_hf_config_read(const char *path, nb_model_config_t *cfg, nb_hf_names_t *names, char *err, size_t errlen);

/* The model, part and naming a Nebula export recorded in the file's
 * __metadata__ ("nebula.model", "nebula.part", "nebula.names").
 * Returns 1 when present and valid, 0 when absent, NB_EFORMAT when broken. */
int nb_hf_config_from_metadata(const nb_st_file_t *f, nb_model_config_t *cfg, nb_part_spec_t *spec,
                               nb_hf_names_t *names, char *err, size_t errlen);

/* Called with each note of an import (a tensor skipped, a table folded). */
typedef void (*nb_hf_note_cb)(void *ud, const char *note);

/* Fills every parameter of p from f, whose tensors are named per names.
 * Checks that each tensor the part needs is present with the right shape
 * and a dtype that converts (F32, F16, BF16) and that every tensor of the
 * file belongs to the model (those of other parts are ignored; known
 * buffers and unsupported extras are skipped with a note). p is changed
 * only on success. Errors: NB_EINVAL (a missing, misshapen or unknown
 * tensor: file and tensor named), NB_EFORMAT, NB_EIO, NB_ENOMEM. */
int nb_hf_load(nb_st_file_t *f, nb_hf_names_t names, nb_part_t *p, nb_hf_note_cb note, void *ud,
               char *err, size_t errlen);

/* Writes p's parameters to path as F32 safetensors named per names, with
 * the model, part and names in __metadata__ ("format": "pt" too). GPT-2
 * names need a pre-LN causal lm model, BERT names a post-LN bidirectional
 * one (written with a zero token-type table of 2 rows, so that token type 0
 * reproduces the model); a model with token_shift needs Nebula's names
 * (no Hugging Face model shifts its embedding). Errors: NB_EINVAL (a model
 * the names cannot express), NB_EIO, NB_ENOMEM. */
int nb_hf_save(const char *path, nb_part_t *p, nb_hf_names_t names, char *err, size_t errlen);

/* Fills p's parameters from a pretrained model file (job.init): a Nebula
 * weights file of p's model holding p's tensors (nb_weights_load_part: a
 * whole-model file, or p's own part), or a
 * safetensors file whose model and names come from its Nebula __metadata__,
 * else from the config.json in its directory. Only p's slice is read, so
 * each pipeline part can load its own tensors from one whole-model file.
 * The file's model must equal p's in n_layer, d_model, n_head, d_ff,
 * vocab, max_seq, causal and norm (the first differing field is named),
 * and in ln_eps and gelu; in token_shift only when the file's Nebula
 * __metadata__ names the model (a config.json never sets it, and the
 * tensors are the same with or without it);
 * the head's tensors follow the name map. Errors as nb_hf_load, plus
 * NB_EINVAL for another model. */
int nb_hf_init_part(const char *path, nb_part_t *p, nb_hf_note_cb note, void *ud, char *err, size_t errlen);

#endif /* NB_HF_MODEL_H */
