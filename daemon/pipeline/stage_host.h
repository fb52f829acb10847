/*
 * stage_host.h - the compute side of a stage daemon: the pipeline stages one
 * daemon hosts, run through one training step at a time.
 *
 * A host owns, for each pipeline stage placed on its daemon, the model part
 * (kernels/model.h), its optimizer, a pool of per-micro-batch activations and
 * the codec streams of its cuts. nb_host_run_step() executes the daemon's
 * merged schedule (daemon/planner/sched_exec.h) for one step: it draws the
 * batches (stage 0), runs forwards and backwards, encodes what leaves the
 * daemon and decodes what arrives, through an I/O interface (nb_pipe_io_i):
 * the network runtime implements it over TLS links, tests implement it with
 * in-process mailboxes. Transfers between two stages on the same daemon stay
 * in memory and skip the codec (they cross no link).
 *
 * With several devices (nb_host_new_replicas) every hosted stage runs as one
 * replica per device (stage_replicas.h; docs/pipeline.md, "Replicas"):
 * what crosses the links, the results and the reports are unchanged.
 *
 * A step's gradients are applied only by nb_host_apply(), with the global
 * sum of squares over every stage of the pipeline (gradient clipping needs the
 * global norm), which the coordinator collects from the step reports; a
 * non-finite one skips the step on every stage.
 * NEBULA_TEST_NONFINITE_GRAD (daemon/train/grad_fault.h, tests only) poisons
 * chosen steps' gradients.
 *
 * The numbers equal the single-process trainer's (daemon/train/trainer.h) for
 * lossless codecs: same batches (sampler keyed by seed, step, micro-batch;
 * for the mlm head the masked sampler with NB_TOKENS_MLM_MASK_PROB and
 * mask token vocab-1, as nebula-train),
 * same backward order 0..m-1 on every stage, same loss scaling 1/m.
 *
 * Thread: a host is used by one thread, the daemon's compute thread, which
 * owns the backend. Errors: negative NB_E* codes with a message in err.
 */
#ifndef NB_STAGE_HOST_H
#define NB_STAGE_HOST_H

#include <stdbool.h>
#include <stdint.h>
#include "daemon/clock.h"
#include "daemon/data/tokens.h"
#include "daemon/pipeline/pipe_layout.h"
#include "daemon/pipeline/pipe_msg.h"
#include "daemon/pipeline/stage_codec.h"
#include "daemon/core/memory.h"
#include "daemon/planner/schedule.h"
#include "kernels/backend.h"
#include "kernels/codec/codec.h"
#include "kernels/model.h"
#include "kernels/optim.h"


/* One step's plan, as the coordinator sends it. */
typedef struct {
    int64_t step;                             /* 0-based */
    int m;                                    /* micro-batches */
    int micro_batch_size;                     /* B for this step; 0 keeps the current B.
                                                 A change re-sizes the buffers (the
                                                 planner may trade m against B) */
    nb_sched_spec_t sched;
    char fwd_codec[NB_PMSG_SPEC_MAX];
    char bwd_codec[NB_PMSG_SPEC_MAX];
} nb_step_plan_t;

/* Timings and bytes of one micro-batch on one hosted stage. */
typedef struct {
    int stage, mb;
    uint64_t fwd_ns, bwd_ns, encode_ns, decode_ns, wait_ns;
    uint64_t fwd_start_ns, bwd_start_ns;      /* CLOCK_MONOTONIC, for traces */
    uint64_t bytes_raw, bytes_wire;           /* what this stage sent for the mb */
    double act_err, grad_err;                 /* sampled round-trip error of what it sent; 0: none */
} nb_mb_timing_t;

/* Steps between samples of the round-trip error of a sent tensor. */
#define NB_HOST_ERR_EVERY 10

/* What one step produced on this daemon. */
typedef struct {
    int64_t step;
    double loss;              /* step loss when the head is hosted here, else NAN */
    double grad_sumsq;        /* sum over the hosted parts' gradients */
    uint64_t nonfinite_stages;/* bit s: hosted stage s's sum of squares is NaN or Inf */
    uint64_t bytes_raw, bytes_wire;
    uint64_t step_ns;
    int n_timings;
    nb_mb_timing_t *timings;  /* n_timings entries, owned by the host, valid
                                 until the next run_step */
} nb_step_result_t;

/* Transfers that leave or enter this daemon. Both functions are called on
 * the compute thread. */
typedef struct {
    /* Sends msg towards msg->to_stage; on success takes ownership of msg.
     * May block while the link's queue is full (back-pressure). Returns 0 or
     * a negative NB_E* code (the link is gone, the job is stopping). */
    int (*send)(void *ud, nb_pmsg_t *msg);
    /* The next message of kind for local stage `stage`, in arrival order,
     * waiting at most timeout_ms (< 0: forever). Returns 0 and *out (owned
     * by the caller), NB_ETIMEDOUT, or another negative code when the job is
     * stopping. */
    int (*recv)(void *ud, int stage, nb_pmsg_kind_t kind, nb_pmsg_t **out, int timeout_ms);
    void *ud;
} nb_pipe_io_i;

typedef struct nb_host nb_host_t;


/* Creates the host for daemon index `daemon` of layout l on be: the parts of
 * the stages placed there (weights seeded from l->seed, so they equal the
 * same layers of the single-process model), with the tensors l->freeze
 * matches frozen (checked by the job: nb_freeze_check), and their
 * optimizers over the trainable tensors. data is the
 * token file, required when stage 0 is hosted here (else may be NULL).
 * Errors: NB_EINVAL (layout, data), NB_ENOMEM, token file errors. */
int nb_host_new(nb_backend_t *be, const nb_pipe_layout_t *l, int daemon, const char *data,
                nb_host_t **out, char *err, size_t errlen);
/* The same with every hosted stage run as n_replicas replicas, replica r on
 * bes[r] (borrowed; docs/pipeline.md, "Replicas"): each micro-batch is
 * split along its batch dimension, the replicas' gradients are summed after
 * the step's last backward, and every replica takes the same optimizer
 * step. bes[0] plays the role of nb_host_new's be. n_replicas 1 is
 * nb_host_new. Errors: those of nb_host_new; NB_EINVAL for replicas the
 * reduction engine cannot join (CUDA without NCCL, CPU and CUDA mixed). */
int nb_host_new_replicas(nb_backend_t *const *bes, int n_replicas, const nb_pipe_layout_t *l, int daemon,
                         const char *data, nb_host_t **out, char *err, size_t errlen);
/* Replicas of each hosted stage (1 without data parallelism). */
int nb_host_replicas(const nb_host_t *h);
/* Hosted stage i's part on replica r (r = 0 is nb_host_part). Borrowed. */
nb_part_t *nb_host_replica_part(nb_host_t *h, int i, int r);
/* Gradient floats of the hosted stages that the last step reduced across
 * the replicas while its last backward ran (0 with one replica). */
size_t nb_host_overlapped(const nb_host_t *h);
/* Copies replica 0's weights and optimizer state to the other replicas:
 * call it after filling replica 0 (nb_host_part, nb_host_optim) from a
 * checkpoint or an imported model. Errors: NB_ENOMEM. */
int nb_host_sync_replicas(nb_host_t *h);
void nb_host_free(nb_host_t *h);

/* Runs one step of plan through io. timeout_ms bounds each wait for a
 * neighbour (< 0: forever). Frames for another step or micro-batch than the
 * schedule expects are refused (NB_ESTATE, named in err). On success fills
 * *res; gradients are accumulated but not applied. */
int nb_host_run_step(nb_host_t *h, const nb_step_plan_t *plan, const nb_pipe_io_i *io,
                     int timeout_ms, nb_step_result_t *res, char *err, size_t errlen);

/* Applies the step's gradients on every hosted part: clip factor from the
 * global sum of squares, learning rate of the step, one AdamW step; then
 * zeroes the gradients for the next step. A non-finite global_sumsq (the
 * coordinator's skip: pass NAN) skips the update instead, as the trainer
 * does: weights and optimizer state stay as they were. Returns whether the
 * update was applied. */
bool nb_host_apply(nb_host_t *h, int64_t step, double global_sumsq);

/* Drops whatever a step left behind when it did not complete (a fault
 * ended it): activation slots, transfers between local stages, partial
 * gradients (zeroed), and puts the codec streams back as they were at the
 * last commit (error-feedback residuals, delta bases), as the peers do.
 * Weights and optimizer state are untouched. Also used to discard a
 * complete step's gradients that will be recomputed. */
void nb_host_abort_step(nb_host_t *h);

/* Codec streams of hosted stage i: k = 0 forward send, 1 forward receive,
 * 2 backward send, 3 backward receive. Borrowed. */
nb_codec_stream_t *nb_host_stream(nb_host_t *h, int i, int k);
/* Records the streams' state as the one an aborted step returns to
 * (nb_host_apply does it at every commit; a restore from a checkpoint
 * calls it once it has set the streams). Errors: NB_ENOMEM. */
int nb_host_save_streams(nb_host_t *h);

/* The hosted stages (ascending) and their parts; borrowed. */
int nb_host_num_stages(const nb_host_t *h);
int nb_host_stage(const nb_host_t *h, int i);
nb_part_t *nb_host_part(nb_host_t *h, int i);
nb_optim_t *nb_host_optim(nb_host_t *h, int i);

/* Bytes of memory the host holds: parameters, gradients, optimizer state and
 * the activation pool at its largest (frozen tensors: parameters only). */
size_t nb_host_memory_bytes(const nb_host_t *h);
/* The same, by part (the four add up to nb_host_memory_bytes). */
void nb_host_memory_parts(const nb_host_t *h, nb_mem_model_t *out);

/* The layout, the daemon index and the backend the host was made with;
 * borrowed. */
const nb_pipe_layout_t *nb_host_layout(const nb_host_t *h);
int nb_host_daemon(const nb_host_t *h);
nb_backend_t *nb_host_backend(const nb_host_t *h);
/* Where the host's codecs run and its staging buffer (stage_codec.h), for
 * the evaluation's transfers on the same thread; borrowed. */
nb_stage_codec_t *nb_host_codec(nb_host_t *h);
/* Stage 0's held-out tokens when the layout holds out a share of the token
 * file (eval_fraction > 0): the file's tail, which training never samples
 * from. NULL otherwise (or when stage 0 is not hosted here). Borrowed. */
const nb_tokens_t *nb_host_heldout(const nb_host_t *h);


#endif
