/*
 * weights.h - the weights file of one model part: what nebula-train writes
 * at the end and what checkpoints build on.
 *
 * Format (little endian), version 1 (docs/model.md):
 *   "NBWT", u32 version, 11 x i32 model config (n_layer, d_model, n_head,
 *   d_ff, vocab, max_seq, causal, norm, head, n_classes, tie_embeddings),
 *   4 x i32 part spec (embed, first, last, head), u32 tensor count,
 *   u64 parameter count; per tensor: 32-byte NUL-padded name, u32 ndim,
 *   2 x u64 shape; then all parameters as f32 in buffer order.
 *
 * Thread: any thread that may use the part's backend.
 */
#ifndef NB_WEIGHTS_H
#define NB_WEIGHTS_H

#include <stddef.h>
#include "kernels/model.h"

#define NB_WEIGHTS_VERSION 1u

/* Writes the parameters of p to path (temporary file renamed into place, so
 * no partial file is left). Errors: NB_EIO, NB_ENOMEM; err says why. */
int nb_weights_save(const char *path, nb_part_t *p, char *err, size_t errlen);

/* Loads path into p after checking magic, version, that the config and the
 * part spec equal p's (naming the first field that differs), every tensor's
 * name and shape, and the exact file length. On error p is unchanged and err
 * names the file and byte offset. Errors: NB_EIO, NB_EFORMAT, NB_EVERSION,
 * NB_EINVAL (a different model or part), NB_ENOMEM. */
int nb_weights_load(const char *path, nb_part_t *p, char *err, size_t errlen);

#endif /* NB_WEIGHTS_H */
