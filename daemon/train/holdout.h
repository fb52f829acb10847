/*
 * holdout.h - the held-out split of a token file (job.eval.fraction): one
 * rule shared by nebula-train (trainer.c) and stage 0 of a pipeline
 * (stage_host.c), so that both train on the same tokens and evaluate on the
 * same held-out ones.
 *
 * With fraction f the last ceil(f * count) tokens are held out and training
 * samples only from the tokens before them; each side needs seq_len + 1
 * tokens (the sampler's window), so no training window crosses the cut.
 *
 * Thread: pure (slices borrow the file's mapping, read-only).
 */
#ifndef NB_HOLDOUT_H
#define NB_HOLDOUT_H

#include <stddef.h>
#include "daemon/data/tokens.h"

/* Splits file (opened from path, named in messages) by fraction (0 < f <=
 * 0.5): *train gets a view of the head, *held of the tail. Both borrow
 * file's mapping: close them before file. Errors: NB_EINVAL (a side holds
 * fewer than seq_len + 1 tokens; err names the file, the counts and the
 * fraction), NB_ENOMEM. On error neither view exists. */
int nb_holdout_split(const nb_tokens_t *file, const char *path, double fraction, int seq_len,
                     nb_tokens_t **train, nb_tokens_t **held, char *err, size_t errlen);

#endif /* NB_HOLDOUT_H */
