/*
 * weights.h - the weights file: a model part's parameters, as nebula-train
 * and the stage daemons write them at the end of a run. (Checkpoints, which
 * add the AdamW state and the run's position to resume exactly, are
 * layout-free safetensors directories: checkpoint.h.)
 *
 * Weights file (little endian), version 2 (docs/model.md):
 *   "NBWT", u32 version, 17 x i32 header (n_layer, d_model, n_head, d_ff,
 *   vocab, max_seq, causal, norm, head, n_classes, tie_embeddings, part
 *   embed, first, last, head, ln_eps as f32 bits, gelu 0 tanh / 1 erf),
 *   u32 tensor count, u64 parameter count; per
 *   tensor: 32-byte NUL-padded name, u32 ndim, 2 x u64 shape; then all
 *   parameters as f32 in buffer order.
 * Version 3 adds 4 x i32 adapter fields after gelu (adapter_size, after
 * bits, first, last), version 4 then 2 x i32 for the low-rank split
 * (lowrank_rank, lowrank_block; docs/lowrank.md), version 5 then 1 x i32
 * cross_attn (1: a decoder whose blocks read an encoder's output;
 * docs/finetune.md), version 6 then 1 x i32 token_shift (1: the embedding
 * mixes in its neighbours' channels; job.model.token_shift). Version 1 has the first
 * 15 header fields only (eps 1e-5, tanh GELU); a model with those settings
 * is still written as version 1.
 *
 * Writers use a temporary file renamed into place: no partial file is left.
 * Readers check everything and change nothing on error; messages name the
 * file and the byte offset.
 * Thread: any thread that may use the part's backend.
 */
#ifndef NB_WEIGHTS_H
#define NB_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>
#include "kernels/model.h"

/* The newest version; a model with the default settings (eps 1e-5, tanh
 * GELU), no adapters, no low-rank split, no cross-attention and no token
 * shift is written
 * as version 1, which every earlier build reads, one with other settings as
 * version 2, one with adapters (job.adapters) as version 3, one with a
 * low-rank split (job.lowrank) as version 4, a decoder with cross-attention
 * (job.model.cross_attn) as version 5, a model with token shift
 * (job.model.token_shift) as version 6: each file keeps the oldest version
 * that holds its model, and all are read. */
#define NB_WEIGHTS_VERSION 6u

/* Writes the parameters of p to path. Errors: NB_EIO, NB_ENOMEM. */
int nb_weights_save(const char *path, nb_part_t *p, char *err, size_t errlen);

/* Loads path into p after checking magic, version, that the config and the
 * part spec equal p's (naming the first field that differs), the exact file
 * length (before any buffer is allocated), and every tensor's name and
 * shape. Errors: NB_EIO, NB_EFORMAT,
 * NB_EVERSION, NB_EINVAL (a different model or part), NB_ENOMEM. */
int nb_weights_load(const char *path, nb_part_t *p, char *err, size_t errlen);

/* Loads p's share of path (job.init; weights_part.c): every tensor of p,
 * by name, from a weights file of the same model that holds it: a
 * whole-model file (each pipeline part takes its own slice), or p's own
 * part. Checks everything nb_weights_peek checks (sizes before any
 * allocation), the model against p's (naming the first field that
 * differs), and that each of p's tensors is in the file with its shape;
 * reads only p's tensors. p changes only on success. Errors: NB_EIO,
 * NB_EFORMAT, NB_EVERSION, NB_EINVAL (another model, or a tensor the file
 * does not hold: named), NB_ENOMEM. */
int nb_weights_load_part(const char *path, nb_part_t *p, char *err, size_t errlen);

/* One tensor of a weights file, as the model layout gives it. */
typedef struct {
    char name[32];
    uint32_t ndim;
    uint64_t shape[2];         /* shape[1] = 1 for a vector */
    uint64_t numel;
    uint64_t file_offset;      /* of its first float (nb_weights_peek) */
} nb_weights_tensor_t;

/* The tensors, in buffer order, of a part `s` of model c (nb_model_layout
 * of kernels/model.h, the list nb_part_new builds, without building the
 * part): writes up to cap of them to out (may be NULL) and the parameter
 * count to *n_params (may be NULL). Returns the tensor count; NB_EINVAL
 * when c or s is not valid (nb_model_config_validate, a block range of
 * 0..n_layer); NB_ERANGE when a size overflows size_t. */
int nb_weights_layout(const nb_model_config_t *c, const nb_part_spec_t *s, nb_weights_tensor_t *out, int cap,
                      uint64_t *n_params);

/* What a weights file holds, checked against itself. */
typedef struct {
    nb_model_config_t model;
    nb_part_spec_t spec;
    int n_tensors;
    uint64_t n_params;
    uint64_t file_bytes;
    nb_weights_tensor_t *tensors; /* n_tensors, owned: nb_weights_info_free */
} nb_weights_info_t;

/* Reads a weights file's header and tensor table, for tools that inspect a
 * file without a model of their own (nebula-weights). Checks magic,
 * version, the model config and part spec, that the tensor and parameter
 * counts equal the ones that config and spec imply, and that the file's
 * length equals what the header describes, all before allocating anything
 * in proportion to the header; then every table entry against the layout.
 * The parameters are not read. Errors: NB_EIO, NB_EFORMAT, NB_EVERSION,
 * NB_ENOMEM; the message names the file, the offset or both lengths. */
int nb_weights_peek(const char *path, nb_weights_info_t *info, char *err, size_t errlen);
void nb_weights_info_free(nb_weights_info_t *info);

#endif /* NB_WEIGHTS_H */
