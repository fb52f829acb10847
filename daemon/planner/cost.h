/*
 * cost.h - the planner's cost model: what one micro-batch costs on each
 * stage, on each link direction and in each codec, and what a stage holds in
 * memory. Plain structs the coordinator fills from probes, profiles and step
 * reports (or measure.h reads from a measurements file).
 *
 * Units everywhere: seconds, bytes, bytes per second. A micro-batch of size
 * n holds n sequences (samples) of the job's sequence length.
 *
 * Thread: no shared state; callers own the structs.
 */
#ifndef NB_PLANNER_COST_H
#define NB_PLANNER_COST_H

#include <stddef.h>

#define NB_COST_MAX_STAGES 64
#define NB_COST_MAX_CODECS 16
#define NB_COST_NAME_LEN 48

/* t(n) = a + b * n seconds for a micro-batch of n samples: a is the fixed
 * per-micro-batch cost (kernel launches, small-matrix inefficiency), b the
 * cost per sample. */
typedef struct {
    double a, b;
} nb_fit_t;

double nb_fit_eval(const nb_fit_t *f, double n);
/* Least-squares line through (n[i], t[i]), count >= 1. With one point, or all
 * n equal, the line has a = 0 through the mean (pure per-sample cost).
 * Returns 0, or NB_EINVAL (count < 1, a negative or non-finite value). A fit
 * with a negative intercept or slope is clamped to 0 and refitted so that
 * predictions never go negative. */
int nb_fit_least_squares(const double *n, const double *t, int count, nb_fit_t *out);
/* Refines f from one measured time at size n by an exponential moving
 * average of the ratio measured / predicted: both coefficients are scaled by
 * 1 + alpha * (ratio - 1). alpha in (0, 1]. Returns 0 or NB_EINVAL (bad alpha,
 * non-positive measurement, or a fit predicting 0 at n). */
int nb_fit_ema_update(nb_fit_t *f, double n, double measured, double alpha);

/* Compute of one stage's hardware (one cluster): per transformer block, and
 * fixed per stage (the embedding on the first stage, head and loss on the
 * last, framework overhead), each a + b*n per micro-batch. */
typedef struct {
    char name[NB_COST_NAME_LEN];
    nb_fit_t fwd_layer, bwd_layer;
    nb_fit_t fwd_fixed, bwd_fixed;
    double mem_limit; /* bytes the stage may use; 0 = unlimited */
    /* Data parallel inside the cluster (docs/planner.md, "Replicas"): the
     * fits above are for ONE device; the stage runs `replicas` copies (0 or
     * 1: one), each micro-batch of n split along the batch, so an op takes
     * fit(ceil(n/R)) + replica_overhead. After its last backward the stage
     * all-reduces its gradients across the replicas at reduce_bw bytes/s
     * (0: NB_COST_REDUCE_BW_CPU). */
    int replicas;
    double reduce_bw;        /* bytes/s, see nb_cost_allreduce */
    double replica_overhead; /* s per op when replicas > 1 (split, hand-off, gather) */
} nb_cost_stage_t;

/* Local reduction bandwidth assumed when a stage sent none (an older peer,
 * or no measurement): 2 GB/s, a conservative figure for summing fp32
 * buffers on one CPU socket. For NCCL on GPUs of one host the stage daemon
 * reports NB_COST_REDUCE_BW_NCCL instead of measuring. */
#define NB_COST_REDUCE_BW_CPU 2e9
/* NCCL all-reduce bus bandwidth assumed inside one host (NVLink-class
 * GPUs; nccl-tests report 100-200 GB/s bus bandwidth on A100/H100 NVLink
 * boxes): 100 GB/s, the low end. */
#define NB_COST_REDUCE_BW_NCCL 1e11

/* One direction of one link: latency (one way), bandwidth, and a fixed
 * per-message cost on the wire (framing, TLS record, acknowledgement). */
typedef struct {
    double latency;   /* s */
    double bandwidth; /* bytes/s */
    double overhead;  /* s per message, occupies the link */
} nb_cost_dir_t;

enum { NB_DIR_FWD = 0, NB_DIR_BWD = 1 };

/* The link between stage s and s+1: dir[NB_DIR_FWD] carries activations
 * s -> s+1, dir[NB_DIR_BWD] gradients s+1 -> s. */
typedef struct {
    nb_cost_dir_t dir[2];
} nb_cost_link_t;

/* A codec setting as the codec module names it ("fp32", "int8",
 * "fp16(svd(0.6))"): wire bytes = ratio * raw bytes; encode and decode run
 * on the compute thread at the given cost per raw byte. lossiness orders
 * codecs for tie-breaking: 0 = exact, larger = more error (the measured
 * error is nb_cost_t.codec_err). */
typedef struct {
    char spec[NB_COST_NAME_LEN];
    double ratio;
    double enc_per_byte, dec_per_byte; /* s per raw byte */
    int lossiness;
} nb_cost_codec_t;

/* The whole measured world: p stage slots (index = pipeline position, i.e.
 * the cluster hosting that stage), p-1 links, known codecs. */
typedef struct {
    int p;
    nb_cost_stage_t stage[NB_COST_MAX_STAGES];
    nb_cost_link_t link[NB_COST_MAX_STAGES]; /* link[s]: s <-> s+1 */
    int ncodecs;
    nb_cost_codec_t codec[NB_COST_MAX_CODECS];
    /* codec_err[i]: codec i's round-trip relative error
     * ||x - decode(encode(x))|| / ||x|| on a calibration tensor (0: exact or
     * not measured). The search skips a codec over the request's budget
     * (nb_plan_req_t.max_err). */
    double codec_err[NB_COST_MAX_CODECS];
} nb_cost_t;

/* The model and job shape the memory and traffic depend on. */
typedef struct {
    int n_layers;                   /* transformer blocks to split */
    double params_per_layer;        /* parameters in one block */
    double embed_params;            /* on the first stage */
    double head_params;             /* on the last stage (0 if tied) */
    double state_bytes_per_param;   /* weights + grads + optimizer, e.g. 16 */
    double act_bytes_per_sample_layer; /* stash one block keeps per sample */
    double boundary_bytes_per_sample;  /* raw fp32 tensor crossing a cut */
    /* One cut may be narrower than the others: with a low-rank split
     * (job.lowrank, docs/lowrank.md) a cut after exactly narrow_cut blocks
     * (1..n_layers) carries the rank-wide factor, narrow_bytes_per_sample,
     * instead of boundary_bytes_per_sample. 0: every cut is as wide
     * (nb_cost_cut_bytes). */
    int narrow_cut;
    double narrow_bytes_per_sample;
    int global_batch;               /* samples per step */
} nb_cost_model_t;

/* Raw fp32 bytes per sample crossing the cut that has `blocks_below`
 * blocks under it (the blocks of every stage before it): the narrow cut's
 * bytes there, boundary_bytes_per_sample anywhere else. */
double nb_cost_cut_bytes(const nb_cost_model_t *mdl, int blocks_below);

/* Fills *out for a GPT-style decoder of n_layers blocks (hidden size h,
 * `heads` attention heads, 4h MLP), sequence length seq, vocabulary vocab,
 * trained in fp32 with AdamW (16 bytes of state per parameter):
 *   params per block   12 h^2 + 13 h
 *   embedding          vocab h + seq h (token + position)
 *   head               0 when tied to the embedding, else vocab h
 *   stash per sample   4 (seq (10 h + 2 d_ff) + 2 heads seq^2) bytes per block,
 *                      d_ff = 4h: what the backward pass of a block keeps
 *                      in fp32 (LN outputs, qkv, attention output and
 *                      projection, both residuals, the MLP's two d_ff-wide
 *                      activations, the pre- and post-softmax scores)
 *   boundary           4 seq h bytes per sample
 * Returns 0 or NB_EINVAL for a non-positive size. */
int nb_cost_model_gpt(int n_layers, int h, int heads, int seq, int vocab, int tied_head,
                      int global_batch, nb_cost_model_t *out);

/* Finds a codec by spec; NULL when unknown. */
const nb_cost_codec_t *nb_cost_codec_find(const nb_cost_t *c, const char *spec);

/* Wire occupancy of one message of raw_bytes through codec on link dir:
 * overhead + ratio * raw / bandwidth. Its arrival is this plus latency. */
double nb_cost_xfer_busy(const nb_cost_dir_t *d, const nb_cost_codec_t *codec,
                         double raw_bytes);

/* Forward / backward time of one micro-batch of n samples on stage s holding
 * `layers` blocks, compute only (codec time is added by the caller). With R
 * = stage[s].replicas > 1 the micro-batch is split along the batch and the
 * largest shard, ceil(n/R) samples, sets the time: fit(ceil(n/R)) +
 * replica_overhead. */
double nb_cost_fwd(const nb_cost_t *c, int s, int layers, double n);
double nb_cost_bwd(const nb_cost_t *c, int s, int layers, double n);

/* Replicas of stage s (>= 1). */
int nb_cost_replicas(const nb_cost_t *c, int s);

/* Gradient bytes of stage s of p holding `layers` blocks (fp32: 4 bytes per
 * parameter of its blocks, plus the embedding on stage 0 and the head on
 * stage p-1). */
double nb_cost_grad_bytes(const nb_cost_model_t *mdl, int p, int s, int layers);

/* Seconds to all-reduce grad_bytes across stage s's R replicas, once per
 * step after its last backward: a ring (reduce-scatter + all-gather, as
 * NCCL does, and as a chunked in-memory reduction with one thread per
 * replica does) moves 2 (R-1)/R of the bytes through each replica:
 *   t = 2 (R - 1) / R * grad_bytes / reduce_bw
 * 0 with one replica. reduce_bw is the stage's measured local bandwidth
 * (nb_replica_reduce_bw), or NB_COST_REDUCE_BW_CPU when unknown. */
double nb_cost_allreduce(const nb_cost_t *c, int s, double grad_bytes);

/* Bytes stage s of p needs holding `layers` blocks with `inflight` stashed
 * micro-batches of n samples: state of its blocks (plus the embedding on
 * stage 0, the head on stage p-1) + inflight * n * (layers * act stash +
 * the boundary input it keeps). */
double nb_cost_stage_mem(const nb_cost_model_t *mdl, int p, int s, int layers,
                         int inflight, double n);

/* Refines stage s from a step report: the measured mean forward and
 * backward time per micro-batch of n samples with `layers` blocks (codec
 * work excluded). Both the per-block and the fixed fit of each direction are
 * scaled by the EMA of measured / predicted (nb_fit_ema_update), so the
 * split between them, which a report cannot separate, keeps its profiled
 * shape. A measurement <= 0 skips that direction. On a replicated stage the
 * measurement is the wall time of the op across its replicas: it refines
 * the per-device fits at the shard ceil(n/R), less replica_overhead.
 * Returns 0 or NB_EINVAL. */
int nb_cost_observe_stage(nb_cost_t *c, int s, int layers, double n, double fwd_s,
                          double bwd_s, double alpha);

/* Refines one link direction from an observed transfer of wire_bytes that
 * took seconds from first byte sent to last byte received: the bandwidth
 * implied by (seconds - latency - overhead) enters an EMA with weight alpha.
 * Transfers too short to say anything (under 2 ms of payload time) are
 * ignored (returns 0, no change). Returns 0 or NB_EINVAL. */
int nb_cost_observe_link(nb_cost_t *c, int boundary, int dir, double wire_bytes,
                         double seconds, double alpha);

/* Sets every link direction's bandwidth to mbit megabits per second (10^6
 * bits): the "what if the link were 20 Mbit/s" question. */
void nb_cost_set_bandwidth_mbit(nb_cost_t *c, double mbit);

#endif
