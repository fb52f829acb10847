/*
 * config.h - the YAML configuration of one Nebula process (nebulad as
 * coordinator or stage, or the single-process trainer), as plain C structs.
 *
 * One file per daemon. Keys, types, bounds, defaults and validators live in
 * one table (config_table.c); the loader (config_load.c) walks the YAML tree
 * with libyaml and reports the first problem as
 *     FILE:LINE:COL: key.path: what is wrong
 * Every key is documented in docs/config.md.
 *
 * The structs hold no heap memory: copy them by value, never free them.
 * Relative paths in the file (data, checkpoint_dir, tls.*, status_socket,
 * output, ...) are resolved against the directory of the config file.
 */
#ifndef NB_CONFIG_H
#define NB_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NB_CFG_NAME_MAX 64
#define NB_CFG_PATH_MAX 1024
#define NB_CFG_ADDR_MAX 256
#define NB_CFG_SPEC_MAX 128
#define NB_CFG_MAX_CLUSTERS 16
#define NB_CFG_MAX_DEVICES 16
#define NB_CFG_MAX_CODECS 16
#define NB_CFG_MAX_GENERATORS 8
#define NB_CFG_MAX_FREEZE 32   /* patterns in job.freeze / job.trainable (NB_FREEZE_MAX) */
#define NB_CFG_PATTERN_MAX 64  /* bytes of one, NUL included (NB_FREEZE_PATTERN_MAX) */

/* Exit status of nebulad on any configuration error (sysexits EX_CONFIG). */
#define NB_CFG_EXIT_CONFIG 78

typedef enum { NB_ROLE_COORDINATOR = 0, NB_ROLE_STAGE = 1, NB_ROLE_TRAIN = 2 } nb_cfg_role_t;
typedef enum { NB_NORM_PRE = 0, NB_NORM_POST = 1 } nb_cfg_norm_t;
typedef enum { NB_GELU_TANH = 0, NB_GELU_ERF = 1 } nb_cfg_gelu_t;
typedef enum { NB_HEAD_LM = 0, NB_HEAD_MLM = 1, NB_HEAD_SEQCLS = 2, NB_HEAD_TOKCLS = 3 } nb_cfg_head_t;
typedef enum { NB_CFG_SCHED_AUTO = 0, NB_CFG_SCHED_GPIPE = 1, NB_CFG_SCHED_1F1B = 2 } nb_cfg_schedule_t;
typedef enum { NB_TOPO_CHAIN = 0, NB_TOPO_USHAPE = 1 } nb_cfg_topology_t;
/* job.precision: the values of nb_precision_t (kernels/backend.h) */
typedef enum { NB_CFG_PREC_FP32 = 0, NB_CFG_PREC_BF16 = 1 } nb_cfg_precision_t;

/* "HOST:PORT" split; host has no brackets (IPv6 is written "[::1]:7000"). */
typedef struct {
    char text[NB_CFG_ADDR_MAX]; /* as written, "" when unset */
    char host[NB_CFG_ADDR_MAX];
    int port;
} nb_cfg_addr_t;

/* A local compute device: "cpu" (index -1) or "cuda:N". */
typedef struct {
    char text[16];
    bool cuda;
    int index;
} nb_cfg_device_t;

typedef struct {
    char cert[NB_CFG_PATH_MAX];
    char key[NB_CFG_PATH_MAX];
    char ca[NB_CFG_PATH_MAX];
    int ktls; /* 0 off, 1 auto, 2 on (nb_ktls_mode_t) */
} nb_cfg_tls_t;

typedef struct {
    nb_cfg_addr_t address;
    char name[NB_CFG_NAME_MAX];
} nb_cfg_coord_t;

/* Limits of the peer transport an operator may tune (docs/operations.md,
 * "Limits"); applied by nb_rt_net_cfg. */
typedef struct {
    uint64_t max_frame_payload;  /* payload bytes of one frame, sent or received */
    uint64_t send_queue_bytes;   /* bytes queued for one connection before back-pressure */
    int max_pending_handshakes;  /* inbound connections in handshake, in all */
    int max_pending_per_address; /* of those, from one source address */
} nb_cfg_transport_t;

typedef struct {
    int n_layer, d_model, n_head, d_ff, vocab, max_seq;
    bool causal;
    nb_cfg_norm_t norm;
    nb_cfg_head_t head;
    int n_classes; /* seqcls / tokcls heads only; 0 otherwise */
    bool tie_embeddings;
    double ln_eps;      /* LayerNorm eps */
    nb_cfg_gelu_t gelu; /* GELU form */
    int mask_token;     /* mlm input ID of masked positions; 0 = vocab - 1 */
    bool cross_attn;    /* decoder blocks: cross-attention to job.encoder's output */
    bool token_shift;   /* neighbours' channels mixed into the embedding (nb_model_config_t.token_shift) */
} nb_cfg_model_t;

typedef struct {
    double lr, min_lr;
    int64_t warmup_steps;
    double weight_decay, beta1, beta2, eps;
    double grad_clip; /* 0: no clipping */
} nb_cfg_optim_t;

typedef struct {
    char forward[NB_CFG_SPEC_MAX];  /* codec spec string, e.g. "fp16(svd(0.6))" */
    char backward[NB_CFG_SPEC_MAX];
} nb_cfg_codecs_t;

typedef struct {
    char name[NB_CFG_NAME_MAX];
    nb_cfg_addr_t address;
    bool layers_auto;
    int layer_first, layer_last; /* inclusive block range; -1 when auto */
} nb_cfg_cluster_t;

typedef struct {
    bool enabled;
    double replan_threshold;  /* relative drift, e.g. 0.2 = 20 % */
    int64_t replan_steps;     /* steps the drift must last */
    double max_codec_error;   /* quality budget: round-trip relative error; 0 = none */
    int n_codecs;
    char codecs[NB_CFG_MAX_CODECS][NB_CFG_SPEC_MAX]; /* allowed codec specs */
    uint64_t stage_memory_bytes; /* memory limit per stage; 0: unlimited */
    bool repartition;            /* move layers between stages while the job runs */
    double repartition_min_gain; /* predicted step-time gain a new split needs */
} nb_cfg_planner_t;

/* Bottleneck adapters (job.adapters; docs/finetune.md). size 0 and no
 * sub-layer: none. Checked against the model by nb_model_set_adapters. */
#define NB_CFG_ADAPTER_NAME_MAX 8
typedef struct {
    int64_t size;                /* bottleneck width, 1..d_model */
    int n_after;                 /* sub-layers they follow: attn, xattn, ffn */
    char after[3][NB_CFG_ADAPTER_NAME_MAX];
    char blocks[24];             /* "all", "I" or "I-J" */
} nb_cfg_adapters_t;

/* Held-out evaluation (roles train and coordinator; docs/config.md). */
typedef struct {
    double fraction;             /* share of job.data's tail held out; 0 = none */
    char data[NB_CFG_PATH_MAX];  /* held-out token file instead; "" = none (a
                                    coordinator's: stage 0 reads its own eval_data) */
    int64_t every_steps;         /* 0: only at the end */
    int64_t batches;             /* micro-batches per evaluation */
} nb_cfg_eval_t;

typedef struct {
    int64_t every_steps;     /* 0: not by steps */
    double every_seconds;    /* 0: not by time */
    int64_t keep;            /* complete checkpoints kept */
    bool resume;             /* resume a matching checkpoint found at start */
} nb_cfg_checkpoint_t;

/* One ELECTRA generator (job.electra.generators[], role train). */
typedef struct {
    char name[NB_CFG_NAME_MAX];
    char data[NB_CFG_PATH_MAX]; /* its token file */
    int64_t sequences;          /* sequences it feeds each discriminator step */
    uint64_t seed;              /* 0: job.seed + 1 + its index */
    nb_cfg_model_t model;       /* head mlm */
    nb_cfg_optim_t optimizer;
} nb_cfg_generator_t;

/* Multi-generator ELECTRA (nebula-electra, docs/electra.md); job.model is
 * the discriminator. */
typedef struct {
    int n_generators; /* 0: no electra section */
    nb_cfg_generator_t generators[NB_CFG_MAX_GENERATORS];
    double disc_weight;
    double mask_prob;
    bool tie_embeddings; /* one token embedding for every model (one process only) */
} nb_cfg_electra_t;

/* job.lowrank: block `block`'s MLP output projection as U S V of rank
 * `rank` (0 = no split), its MLP residual dropped (docs/lowrank.md). */
typedef struct {
    int block;
    int rank;
} nb_cfg_lowrank_t;

/* job.encoder: the encoder of an encoder-decoder job (role train;
 * docs/finetune.md); job.model is then the decoder. Its freeze, trainable
 * and adapters are the encoder's own, as job.freeze, job.trainable and
 * job.adapters are the decoder's. */
typedef struct {
    bool present;                 /* the file has a job.encoder section */
    nb_cfg_model_t model;         /* no head; causal defaults to false */
    char init[NB_CFG_PATH_MAX];   /* pretrained encoder; "" = seeded */
    char output[NB_CFG_PATH_MAX]; /* final encoder weights; "" = none */
    int n_freeze;
    char freeze[NB_CFG_MAX_FREEZE][NB_CFG_PATTERN_MAX];
    int n_trainable;
    char trainable[NB_CFG_MAX_FREEZE][NB_CFG_PATTERN_MAX];
    nb_cfg_adapters_t adapters;
    char daemon[NB_CFG_NAME_MAX]; /* role coordinator: the encoder's daemon */
} nb_cfg_encoder_t;

/* job.spans: the span-restoration task of an encoder-decoder job
 * (daemon/train/spans.h): windows of job.seq_len - 2 tokens of real text,
 * one span of min_tokens..max_tokens replaced by [MASK]; the decoder
 * restores the span. */
#define NB_CFG_MAX_TEXTS 8
typedef struct {
    int n_text;
    char text[NB_CFG_MAX_TEXTS][NB_CFG_PATH_MAX]; /* UTF-8 text files */
    char tokenizer[NB_CFG_PATH_MAX];              /* a WordPiece (BERT) vocabulary */
    int min_tokens, max_tokens;                   /* span length */
    int hold;                                     /* every hold-th window of a file is held out */
    int64_t eval_windows;                         /* held-out windows scored */
} nb_cfg_spans_t;

typedef struct {
    bool present; /* the file has a job section */
    nb_cfg_model_t model;
    uint64_t seed;
    char data[NB_CFG_PATH_MAX];
    int64_t batch;          /* sequences per step (global batch) */
    int64_t seq_len;
    int64_t steps;
    int64_t micro_batches;  /* 0: auto (planner) */
    nb_cfg_schedule_t schedule;
    nb_cfg_precision_t precision; /* matmul precision (docs/cuda.md, "Precision") */
    nb_cfg_optim_t optimizer;
    nb_cfg_codecs_t codecs;
    nb_cfg_topology_t topology;
    int n_clusters;
    nb_cfg_cluster_t clusters[NB_CFG_MAX_CLUSTERS];
    nb_cfg_planner_t planner;
    int64_t log_every;
    int64_t trace_steps;
    int64_t max_skipped_steps; /* consecutive non-finite-gradient skips that stop the job */
    char output[NB_CFG_PATH_MAX]; /* final weights file; "" = none */
    char init[NB_CFG_PATH_MAX];   /* pretrained weights to start from; "" = seeded */
    int n_freeze;                 /* job.freeze: globs over tensor names */
    char freeze[NB_CFG_MAX_FREEZE][NB_CFG_PATTERN_MAX];
    int n_trainable;              /* job.trainable: exceptions to job.freeze */
    char trainable[NB_CFG_MAX_FREEZE][NB_CFG_PATTERN_MAX];
    nb_cfg_adapters_t adapters;   /* job.adapters */
    nb_cfg_eval_t eval;
    nb_cfg_checkpoint_t checkpoint;
    double recovery_timeout_s;    /* how long a fault may last before the job fails */
    int64_t max_restarts;         /* recoveries before the job fails */
    nb_cfg_electra_t electra;     /* an ELECTRA job: nebula-electra (role train) or the
                                     discriminator's daemon (role coordinator) */
    nb_cfg_lowrank_t lowrank;     /* job.lowrank: low-rank split (docs/lowrank.md) */
    nb_cfg_encoder_t encoder;     /* job.encoder: an encoder-decoder job (role train) */
    nb_cfg_spans_t spans;         /* job.spans: its task */
} nb_cfg_job_t;

typedef struct {
    char path[NB_CFG_PATH_MAX]; /* the file this was loaded from */
    char name[NB_CFG_NAME_MAX];
    nb_cfg_role_t role;
    nb_cfg_addr_t listen;
    nb_cfg_tls_t tls;
    nb_cfg_coord_t coordinator;
    int n_devices;
    nb_cfg_device_t devices[NB_CFG_MAX_DEVICES];
    char data[NB_CFG_PATH_MAX];          /* token file this daemon reads if it hosts the embedding */
    char init[NB_CFG_PATH_MAX];          /* stage: pretrained weights its parts load when the job has job.init */
    char eval_data[NB_CFG_PATH_MAX];     /* stage: held-out token file when it hosts stage 0 and the
                                            job has job.eval.data */
    bool electra_generator;              /* stage: an ELECTRA generator daemon (docs/electra.md) */
    bool encdec_encoder;                 /* stage: the encoder's daemon of an encoder-decoder job */
    char checkpoint_dir[NB_CFG_PATH_MAX];
    char status_socket[NB_CFG_PATH_MAX]; /* default /run/nebula/NAME.sock */
    char log_level[16];                  /* debug|info|warn|error */
    double heartbeat_interval_s;
    double heartbeat_timeout_s;
    double connect_timeout_s; /* 0: wait forever */
    nb_cfg_transport_t transport;
    nb_cfg_job_t job;
} nb_config_t;

/* Loads and validates the file at path into *out (fully overwritten, also on
 * error). On error returns a negative NB_E* code (NB_EIO: unreadable file;
 * NB_EFORMAT: not YAML; NB_EINVAL: a key or value is wrong) and writes one
 * line "FILE:LINE:COL: key: what is wrong" (no newline) into err.
 * err may be NULL. Thread: any; no global state. */
int nb_cfg_load(const char *path, nb_config_t *out, char *err, size_t errlen);

/* As nb_cfg_load, from a string in memory; name is used in messages and its
 * directory for relative paths. */
int nb_cfg_load_string(const char *name, const char *text, size_t len,
                       nb_config_t *out, char *err, size_t errlen);

/* Parses "HOST:PORT" or "[IPV6]:PORT" (the one address syntax of configs,
 * jobs from a coordinator and command lines) into *a, port at least
 * min_port. Returns 0, or -1 with what is wrong in msg (no newline). */
int nb_cfg_parse_addr(const char *s, nb_cfg_addr_t *a, int min_port, char *msg, size_t ml);

const char *nb_cfg_role_name(nb_cfg_role_t r);
const char *nb_cfg_schedule_name(nb_cfg_schedule_t s);
const char *nb_cfg_topology_name(nb_cfg_topology_t t);
const char *nb_cfg_norm_name(nb_cfg_norm_t n);
const char *nb_cfg_head_name(nb_cfg_head_t h);

/* Calls fn once for every key of the table, with its dotted path ("job.model.
 * n_layer"; list items as "job.clusters[].name"), type name, default text (or
 * NULL) and whether it is required. For documentation checks. */
typedef void (*nb_cfg_key_cb)(const char *path, const char *type, const char *def,
                              bool required, void *ud);
void nb_cfg_each_key(nb_cfg_key_cb fn, void *ud);

/* Levenshtein distance, capped at 255; exposed for tests. */
int nb_cfg_edit_distance(const char *a, const char *b);

#endif /* NB_CONFIG_H */
