/*
 * weights.h - files holding a model part: the weights file (what
 * nebula-train writes at the end) and the checkpoint (weights plus
 * optimizer state and the trainer's position, to resume a run exactly).
 *
 * Weights file (little endian), version 2 (docs/model.md):
 *   "NBWT", u32 version, 17 x i32 header (n_layer, d_model, n_head, d_ff,
 *   vocab, max_seq, causal, norm, head, n_classes, tie_embeddings, part
 *   embed, first, last, head, ln_eps as f32 bits, gelu 0 tanh / 1 erf),
 *   u32 tensor count, u64 parameter count; per
 *   tensor: 32-byte NUL-padded name, u32 ndim, 2 x u64 shape; then all
 *   parameters as f32 in buffer order.
 * Version 1 has the first 15 header fields only (eps 1e-5, tanh GELU); a
 * model with those settings is still written as version 1.
 * Checkpoint, version 3: "NBCK", u32 version, u64 seed, 6 x i32 (steps
 *   done, batch, micro_batches, seq_len, optimizer steps, reserved 0), the
 *   48-byte NUL-padded kernels line of the writer (nb_cpu_describe(), e.g.
 *   "avx512 blas=SkylakeX"), then the weights file's body from the 15-field
 *   header on, then the AdamW state m and v (parameter count f32 each).
 *   Version 2 has the 15-field header (written for default settings);
 *   version 1 (no kernels line, 15 fields) is still read.
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
#include "kernels/optim.h"

/* The newest versions; a model with the default settings (eps 1e-5, tanh
 * GELU) is written as weights version 1 / checkpoint version 2, which every
 * earlier build reads. Every older version is read. */
#define NB_WEIGHTS_VERSION 2u
#define NB_CHECKPOINT_VERSION 3u
#define NB_CKPT_KERNELS_BYTES 48

/* Writes the parameters of p to path. Errors: NB_EIO, NB_ENOMEM. */
int nb_weights_save(const char *path, nb_part_t *p, char *err, size_t errlen);

/* Loads path into p after checking magic, version, that the config and the
 * part spec equal p's (naming the first field that differs), the exact file
 * length (before any buffer is allocated), and every tensor's name and
 * shape. Errors: NB_EIO, NB_EFORMAT,
 * NB_EVERSION, NB_EINVAL (a different model or part), NB_ENOMEM. */
int nb_weights_load(const char *path, nb_part_t *p, char *err, size_t errlen);

/* Where a training run stands; identifies the data stream to resume. */
typedef struct {
    uint64_t seed;
    int steps_done;
    int batch, micro_batches, seq_len;
    /* The kernels that computed the run (nb_cpu_describe(), or the device
     * backend's name); "" when a version 1 file did not record them. */
    char kernels[NB_CKPT_KERNELS_BYTES];
} nb_wckpt_meta_t;

/* Writes p's parameters, o's state (o covers p's flat buffers) and meta. */
int nb_checkpoint_save(const char *path, nb_part_t *p, nb_optim_t *o, const nb_wckpt_meta_t *meta,
                       char *err, size_t errlen);

/* Loads a checkpoint into p and o. The file's seed, batch, micro_batches
 * and seq_len must equal want's (else NB_EINVAL naming the field: the data
 * stream would differ); *got receives the file's meta (steps_done is where
 * to resume; kernels may differ from want's, which the caller reports).
 * Errors as nb_weights_load. */
int nb_checkpoint_load(const char *path, nb_part_t *p, nb_optim_t *o, const nb_wckpt_meta_t *want,
                       nb_wckpt_meta_t *got, char *err, size_t errlen);

/* One tensor of a weights file, as the model layout gives it. */
typedef struct {
    char name[32];
    uint32_t ndim;
    uint64_t shape[2];         /* shape[1] = 1 for a vector */
    uint64_t numel;
    uint64_t file_offset;      /* of its first float (nb_weights_peek) */
} nb_weights_tensor_t;

/* The tensors, in buffer order, of a part `s` of model c (kernels/
 * model_part.c's layout, computed without building the part): writes up to
 * cap of them to out (may be NULL) and the parameter count to *n_params
 * (may be NULL). Returns the tensor count, or NB_ERANGE when a size
 * overflows 64 bits. c and s must be valid. */
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
