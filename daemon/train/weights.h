/*
 * weights.h - files holding a model part: the weights file (what
 * nebula-train writes at the end) and the checkpoint (weights plus
 * optimizer state and the trainer's position, to resume a run exactly).
 *
 * Weights file (little endian), version 1 (docs/model.md):
 *   "NBWT", u32 version, 15 x i32 header (n_layer, d_model, n_head, d_ff,
 *   vocab, max_seq, causal, norm, head, n_classes, tie_embeddings, part
 *   embed, first, last, head), u32 tensor count, u64 parameter count; per
 *   tensor: 32-byte NUL-padded name, u32 ndim, 2 x u64 shape; then all
 *   parameters as f32 in buffer order.
 * Checkpoint, version 2: "NBCK", u32 version, u64 seed, 6 x i32 (steps
 *   done, batch, micro_batches, seq_len, optimizer steps, reserved 0), the
 *   48-byte NUL-padded kernels line of the writer (nb_cpu_describe(), e.g.
 *   "avx512 blas=SkylakeX"), then the weights file's body from the 15-field
 *   header on, then the AdamW state m and v (parameter count f32 each).
 *   Version 1 (no kernels line) is still read.
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

#define NB_WEIGHTS_VERSION 1u
#define NB_CHECKPOINT_VERSION 2u
#define NB_CKPT_KERNELS_BYTES 48

/* Writes the parameters of p to path. Errors: NB_EIO, NB_ENOMEM. */
int nb_weights_save(const char *path, nb_part_t *p, char *err, size_t errlen);

/* Loads path into p after checking magic, version, that the config and the
 * part spec equal p's (naming the first field that differs), every tensor's
 * name and shape, and the exact file length. Errors: NB_EIO, NB_EFORMAT,
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
} nb_ckpt_meta_t;

/* Writes p's parameters, o's state (o covers p's flat buffers) and meta. */
int nb_checkpoint_save(const char *path, nb_part_t *p, nb_optim_t *o, const nb_ckpt_meta_t *meta,
                       char *err, size_t errlen);

/* Loads a checkpoint into p and o. The file's seed, batch, micro_batches
 * and seq_len must equal want's (else NB_EINVAL naming the field: the data
 * stream would differ); *got receives the file's meta (steps_done is where
 * to resume; kernels may differ from want's, which the caller reports).
 * Errors as nb_weights_load. */
int nb_checkpoint_load(const char *path, nb_part_t *p, nb_optim_t *o, const nb_ckpt_meta_t *want,
                       nb_ckpt_meta_t *got, char *err, size_t errlen);

#endif /* NB_WEIGHTS_H */
