/*
 * stage_eval.h - held-out evaluation across the pipeline: the forward-only
 * pass of one daemon's stages over the held-out batches, with the weights
 * as they stand (docs/pipeline.md, "Held-out evaluation").
 *
 * It computes what nb_trainer_eval computes (daemon/train/trainer.h): stage
 * 0 draws eval batch j (j = 0 .. n-1) from the held-out tokens with the
 * sampler's key (seed, NB_TRAIN_EVAL_STEP_KEY, j) (the masked sampler for
 * mlm), the activations flow forward through every stage, and the head adds
 * each batch's loss, in double and in batch order, then divides by n: with
 * a lossless codec the trainer's number to the bit.
 *
 * What it never touches: the weights, the gradients, the optimizer, the
 * training sampler and the host's codec streams. An evaluation has its own
 * codec streams on both ends of each cut, empty at its start (so a stateful
 * forward codec, "ef" or "delta", starts afresh every evaluation and the
 * training streams go on as if there had been none), its own activation
 * buffers (one per hosted stage: nothing is kept for a backward) and its own
 * labels. Its tensors carry the eval flag (nb_pmsg_t.eval) and the step
 * number of the weights (steps done); a training step refuses them.
 *
 * Order: the batches go in windows of NB_EVAL_WINDOW. Within a window a
 * daemon runs each maximal run of consecutive stages it hosts, in stage
 * order, over the window's batches; so at most a window's batches are in
 * flight between two runs of one daemon (the U-shape's stage 0 and head),
 * which no link's queue can refuse: no deadlock, whatever the placement.
 *
 * Thread: the daemon's compute thread (it owns the backend). Errors:
 * negative NB_E* codes with a message in err.
 */
#ifndef NB_STAGE_EVAL_H
#define NB_STAGE_EVAL_H

#include <stdint.h>
#include "daemon/pipeline/stage_host.h"

/* Batches in flight between two runs of stages on one daemon. */
#define NB_EVAL_WINDOW 2
/* Most eval batches one evaluation may draw (job.eval.batches). */
#define NB_EVAL_MAX_BATCHES 1000000

/* One evaluation, as the coordinator's eval Plan says it. */
typedef struct {
    int64_t step;                  /* steps done: which weights are evaluated */
    int batches;                   /* n held-out batches, 1..NB_EVAL_MAX_BATCHES */
    int micro_batch_size;          /* B of each batch (nebula-train's batch / micro_batches) */
    char fwd_codec[NB_PMSG_SPEC_MAX];
} nb_eval_plan_t;

/* What an evaluation produced on this daemon. */
typedef struct {
    int64_t step;
    double loss;                   /* mean held-out loss when the head is hosted here, else NAN */
    uint64_t bytes_raw, bytes_wire;/* what this daemon sent */
    uint64_t ns;                   /* wall time */
} nb_eval_result_t;

typedef struct nb_eval nb_eval_t;

/* Creates the evaluation state of host (borrowed: free the eval first).
 * When host holds stage 0 the held-out tokens are the file eval_data when
 * it is given (checked against the model's vocabulary and seq_len + 1), else
 * the host's held-out tail (nb_host_heldout); neither is NB_EINVAL. Other
 * daemons pass NULL. Errors: NB_EINVAL, NB_ENOMEM, token file errors. */
int nb_eval_new(nb_host_t *host, const char *eval_data, nb_eval_t **out, char *err, size_t errlen);
void nb_eval_free(nb_eval_t *ev);

/* Held-out tokens stage 0 evaluates on (NULL on other daemons). */
const nb_tokens_t *nb_eval_tokens(const nb_eval_t *ev);

/* Runs one evaluation through io (the same interface as a training step;
 * timeout_ms bounds each wait for a neighbour, < 0: forever). A tensor for
 * another step, batch or kind than expected, or one without the eval flag,
 * is refused (NB_ESTATE, named in err). On success fills *res. After an
 * error nothing of the host has changed; the next evaluation starts afresh. */
int nb_eval_run(nb_eval_t *ev, const nb_eval_plan_t *plan, const nb_pipe_io_i *io, int timeout_ms,
                nb_eval_result_t *res, char *err, size_t errlen);

#endif
