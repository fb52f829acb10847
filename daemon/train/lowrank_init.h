/*
 * lowrank_init.h - job.init for a model with a low-rank split (job.lowrank,
 * docs/lowrank.md): the pretrained file holds the dense model, so the
 * split block's U, S, V come from the truncated SVD of its fcproj.w.
 *
 * Thread: the caller's (the part's backend thread).
 */
#ifndef NB_LOWRANK_INIT_H
#define NB_LOWRANK_INIT_H

#include <stddef.h>
#include "daemon/train/hf_model.h"
#include "kernels/model.h"

/* Fills p's parameters from the pretrained file at path, as
 * nb_hf_init_part does. Without a split (lowrank_rank 0) that is all.
 * With one, the file holds the dense model (lowrank_rank 0, same shape):
 * the tensors p shares with it are read from it, hk.fcproj.u/.s/.v are the
 * truncated SVD of its hk.fcproj.w (nb_part_lowrank_init: the same factors
 * in every process, so each stage of a pipeline computes its own half).
 * A Nebula weights file of a split model (a split run's job.output or a
 * stage's final weights) is loaded as it is: it must have p's split, else
 * it is refused naming lowrank_rank or lowrank_block.
 * Errors: as nb_hf_init_part; NB_EINVAL also for a tied head part without
 * the embedding (its dense twin would need the embedding part). */
int nb_lowrank_init_part(const char *path, nb_part_t *p, nb_hf_note_cb note, void *ud, char *err, size_t errlen);

#endif /* NB_LOWRANK_INIT_H */
