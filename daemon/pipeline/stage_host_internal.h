/*
 * stage_host_internal.h - what the files of the stage host share: the
 * host's and each hosted stage's state, the step being run, and the slot
 * pool (stage_slots.c) and transfer (stage_xfer.c) functions the step
 * (stage_step.c) and the host's lifecycle (stage_host.c) use. Not for use
 * outside daemon/pipeline/stage_*.c; the contract is stage_host.h.
 */
#ifndef NB_STAGE_HOST_INTERNAL_H
#define NB_STAGE_HOST_INTERNAL_H

#include "daemon/pipeline/stage_codec.h"
#include "daemon/pipeline/stage_host.h"
#include "daemon/pipeline/stage_replicas.h"
#include "daemon/train/grad_fault.h"
#include "kernels/codec/codec.h"

/* Delta bases kept per codec stream (AQ-SGD style "delta" specs). */
#define HOST_STREAM_STATE_BYTES (256u << 20)

/* A transfer between two stages of this daemon: it crosses no link, so it
 * skips the codec and hands the device buffer over. */
typedef struct {
    int mb;
    float *dev;
} local_xfer_t;

typedef struct {
    local_xfer_t *items;
    int head, len, cap;
} local_fifo_t;

typedef struct {
    int stage;
    nb_part_t *part;        /* replica 0's */
    nb_optim_t *optim;      /* replica 0's */
    nb_reps_t *reps;        /* the stage's replicas, one per device (stage_replicas.h) */
    nb_reps_acts_t **pool;  /* activation slots, grown to the peak in flight */
    bool *busy;
    int pool_n;
    int *slot_of_mb;        /* current step: mb -> pool index, -1 */
    float *x_in;            /* decoded input activations (B,T,C) */
    float *dout;            /* decoded output gradient (B,T,C) */
    int32_t *d_tokens, *d_targets;
    /* codec streams: [0] forward send, [1] forward receive, [2] backward
     * send, [3] backward receive */
    nb_codec_stream_t *streams[4];
    nb_codec_stream_t *saved[4]; /* the streams as they were at the last commit */
    local_fifo_t local_in[2]; /* [ACT] from stage-1, [GRAD] from stage+1 */
} hosted_t;

struct nb_host {
    nb_backend_t *be;
    nb_pipe_layout_t l;
    int daemon;
    nb_tokens_t *tokens;       /* what training samples from: the file, or its head */
    nb_tokens_t *file;         /* the file when tokens is a slice of it */
    nb_tokens_t *heldout;      /* its held-out tail (layout eval_fraction) */
    hosted_t st[NB_SCHED_MAX_STAGES];
    int n;                     /* hosted stages */
    int local_of[NB_SCHED_MAX_STAGES]; /* stage -> index in st, -1 */
    bool labels_travel;        /* stage 0 and the head on different daemons */
    int32_t **labels;          /* [mb] host (B*T) targets, this step */
    int labels_cap;
    nb_sched_op_t *ops;
    int ops_cap;
    nb_mb_timing_t *timings;
    int timings_cap;
    size_t peak_acts_bytes;
    nb_codec_msg_t enc;
    nb_stage_codec_t codec;    /* where the codecs run (stage_codec.h) */
    nb_grad_fault_t fault;     /* test-only NaN injection (grad_fault.h) */
};

static inline size_t nb__host_act_elems(const nb_host_t *h)
{
    return (size_t)h->l.micro_batch_size * (size_t)h->l.seq_len * (size_t)h->l.model.d_model;
}

static inline size_t nb__host_bt_elems(const nb_host_t *h)
{
    return (size_t)h->l.micro_batch_size * (size_t)h->l.seq_len;
}

/* Floats per position on the link from stage s to stage s + 1: d_model,
 * or the rank where a low-rank split cuts there (kernels/model.h). The
 * buffers stay nb__host_act_elems() large; only these many cross. */
static inline int nb__host_link_width(const nb_host_t *h, int s)
{
    return nb_part_spec_out_width(&h->l.model, &h->l.parts[s]);
}

/* The timings of micro-batch mb of hosted stage `stage` this step (m
 * micro-batches). */
static inline nb_mb_timing_t *nb__host_timing(nb_host_t *h, int stage, int mb, int m)
{
    return &h->timings[h->local_of[stage] * m + mb];
}

/* One step being run (stage_step.c), as the ops see it. */
typedef struct {
    nb_host_t *h;
    const nb_step_plan_t *plan;
    const nb_pipe_io_i *io;
    nb_codec_spec_t fwd, bwd;
    int timeout_ms;
    double loss;
    uint64_t bytes_raw, bytes_wire;
    int last_bwd[NB_SCHED_MAX_STAGES]; /* per stage: the micro-batch of its step's last backward */
    char *err;
    size_t errlen;
} step_ctx_t;

/* ---- stage_slots.c: activation slots and per-step buffers --------------- */

/* Re-sizes every per-micro-batch buffer for B sequences (between steps: no
 * activation slot is in use). */
int nb__host_resize_batch(nb_host_t *h, int B, char *err, size_t errlen);
/* Sizes the per-step tables (labels, slot map, timings) for m micro-batches
 * and clears them. */
int nb__host_prepare_step(nb_host_t *h, int m);
/* A free activation slot of stage s for micro-batch mb (the pool grows to
 * the peak in flight); the slot is busy until nb__host_release_slot. */
int nb__host_acquire_slot(nb_host_t *h, hosted_t *s, int mb, nb_reps_acts_t **out);
/* Frees micro-batch mb's slot of s, if it holds one. */
void nb__host_release_slot(hosted_t *s, int mb);

/* ---- stage_xfer.c: what crosses a cut ----------------------------------- */

/* Local transfers between two stages of this daemon (no codec). */
void nb__fifo_free(nb_backend_t *be, local_fifo_t *f);
int nb__fifo_push(local_fifo_t *f, int mb, float *dev);
int nb__fifo_pop(local_fifo_t *f, local_xfer_t *out);
/* Keeps micro-batch mb's labels (host copy) for the head here or the next
 * hop; takes ownership of buf. */
void nb__host_put_labels(nb_host_t *h, int mb, int32_t *buf);
/* The receive and send ops: from a local stage through the FIFO, from
 * another daemon through the codec and io (labels follow activations when
 * the head is elsewhere). 0 or a negative NB_E* code with c->err set. */
int nb__host_op_recv(step_ctx_t *c, const nb_sched_op_t *op);
int nb__host_op_send(step_ctx_t *c, const nb_sched_op_t *op);

#endif
