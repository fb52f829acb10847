/*
 * stage_replicas.h - one pipeline stage run as R identical replicas, one
 * per configured device of the daemon (data parallel inside a cluster;
 * docs/pipeline.md, "Replicas").
 *
 * The set looks like one part to the stage host: a forward takes the whole
 * micro-batch (B,T) and splits it along the batch dimension (replica r takes
 * the contiguous sequences nb_reps_shard() gives it: the first B mod R
 * replicas one more), each replica runs its shard on its own thread and
 * backend, and the outputs (forward activations, input gradients) are
 * gathered into one (B,T,C) tensor, so exactly one tensor per micro-batch
 * leaves the stage, as with one replica. A head's loss and gradient are
 * normalised by the whole micro-batch's counted targets
 * (nb_part_input_t.loss_count), not by the shard's. After a step's last
 * backward nb_reps_reduce() sums the gradients across the replicas with the
 * reduction engine (replica_reduce.h); every replica then takes the same
 * optimizer step, so the replicas stay bit-identical.
 *
 * With R = 1 every call is the plain part call with the same arguments: the
 * numbers are those of a stage without replicas, to the bit.
 *
 * Ownership: replica 0's part and optimizer belong to the caller (the stage
 * host keeps them, so checkpoints and weight files read replica 0); the set
 * owns replicas 1..R-1 and borrows every backend.
 * Thread: a set is driven by one thread (the compute thread); during a
 * forward, backward or step it runs replicas 1..R-1 on threads of its own,
 * joined before the call returns. Errors: negative NB_E* codes.
 */
#ifndef NB_STAGE_REPLICAS_H
#define NB_STAGE_REPLICAS_H

#include <stdbool.h>
#include <stddef.h>
#include "kernels/backend.h"
#include "kernels/model.h"
#include "kernels/optim.h"

/* Most replicas of one stage (the config allows as many devices). */
#define NB_REPS_MAX 16

typedef struct nb_reps nb_reps_t;
typedef struct nb_reps_acts nb_reps_acts_t;

/* Sequences [*first, *first + *count) of a micro-batch of B that replica r
 * of R runs: B / R each, the first B mod R replicas one more. */
void nb_reps_shard(int B, int R, int r, int *first, int *count);

/* Builds the set around part0 and optim0 (replica 0, on bes[0]): replicas
 * 1..R-1 on bes[1..R-1] get a copy of part0's weights and optim0's state.
 * tie: for a head part with tied embeddings, the set of the embedding part
 * (replica r's head ties to replica r's embedding); else NULL.
 * R > 1 needs CPU backends (the engine's reason otherwise) and shares the
 * BLAS threads among the replicas (kernels/cpu_level.h). Errors: NB_EINVAL
 * (with the reason in err), NB_ENOMEM. */
int nb_reps_new(nb_part_t *part0, nb_optim_t *optim0, nb_backend_t *const *bes, int R,
                const nb_optim_config_t *oc, uint64_t seed, nb_reps_t *tie, nb_reps_t **out,
                char *err, size_t errlen);
/* Frees replicas 1..R-1 (not part0, optim0); NULL is a no-op. Free every
 * acts of the set first. */
void nb_reps_free(nb_reps_t *s);

int nb_reps_count(const nb_reps_t *s);
/* Replica r's part and optimizer (r = 0: the caller's). Borrowed. */
nb_part_t *nb_reps_part(nb_reps_t *s, int r);
nb_optim_t *nb_reps_optim(nb_reps_t *s, int r);

/* Activations of one in-flight micro-batch of (B,T) over all replicas.
 * Errors: NB_EINVAL (B < R: a replica would get no sequence; sizes),
 * NB_ENOMEM. */
int nb_reps_acts_new(nb_reps_t *s, int B, int T, nb_reps_acts_t **out);
void nb_reps_acts_free(nb_reps_acts_t *a);
size_t nb_reps_acts_bytes(const nb_reps_acts_t *a);

/* Forward of the whole micro-batch: in's pointers are (B,...) tensors in
 * replica 0's memory; in->loss_count must be the micro-batch's counted
 * targets when R > 1 and the part has the head. *loss: the micro-batch's
 * loss (the replicas' shares summed in replica order). On an error, err
 * names the replica. */
int nb_reps_forward(nb_reps_t *s, nb_reps_acts_t *a, const nb_part_input_t *in, float *loss,
                    char *err, size_t errlen);
/* Backward of the last forward on a: dout (B,T,C) in replica 0's memory,
 * NULL for head parts. Accumulates each replica's gradients. last: this is
 * the step's last backward of the stage; its gradients are then all-reduced
 * bucket by bucket (the head, each block from the last, the embedding) as
 * soon as every replica has finished that bucket, while the replicas go on
 * with the blocks below (nb_part_set_grad_ready). A backward after the
 * last one of a step is refused (NB_ESTATE) until nb_reps_reduce() or
 * nb_reps_zero_grad(). */
int nb_reps_backward(nb_reps_t *s, nb_reps_acts_t *a, const float *dout, bool last, char *err, size_t errlen);
/* Floats of the gradient buffer reduced during the last backward of the
 * last step (the rest waited for nb_reps_reduce()); for tests and traces. */
size_t nb_reps_overlapped(const nb_reps_t *s);
/* The gathered output activations / input gradient (B,T,C), in replica 0's
 * memory. */
const float *nb_reps_acts_output(const nb_reps_acts_t *a);
const float *nb_reps_acts_dinput(const nb_reps_acts_t *a);

/* Sums the step's gradients over the replicas (fixed order, every replica
 * gets the sum): what the last backward has not reduced on the way. Call
 * once after the step's last backward, before reading replica 0's
 * gradients. A no-op for R = 1. */
int nb_reps_reduce(nb_reps_t *s, char *err, size_t errlen);
/* One optimizer step on every replica with the same gradients. */
void nb_reps_step(nb_reps_t *s, float lr, float grad_scale);
/* Zeroes every replica's gradients. */
void nb_reps_zero_grad(nb_reps_t *s);
/* Copies replica 0's weights and optimizer state to the others (after a
 * checkpoint restore or a weight import filled replica 0). Errors:
 * NB_ENOMEM. */
int nb_reps_sync(nb_reps_t *s);

#endif
