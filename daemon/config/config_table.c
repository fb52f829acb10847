/*
 * config_table.c - every configuration key in one place: type, role rules,
 * bounds, default, field and validator. Adding a key = adding a row here and
 * a line in docs/config.md (a test checks that the two agree).
 */
#include <ctype.h>
#include <string.h>
#include "daemon/config/config_table.h"
#include "daemon/log.h"

#define C NB__ROLE(NB_ROLE_COORDINATOR)
#define S NB__ROLE(NB_ROLE_STAGE)
#define T NB__ROLE(NB_ROLE_TRAIN)

#define FLD(type, f) .off = offsetof(type, f), .size = sizeof(((type *)0)->f)

/* ---- validators: return NULL when fine, else a static message ---------- */

static const char *v_name(const void *p)
{
    const char *s = p;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '-' && *s != '_' && *s != '.')
            return "may contain only letters, digits, '-', '_' and '.'";
    return NULL;
}

static const char *v_log_level(const void *p)
{
    nb_log_level_t l;
    return nb_log_level_parse(p, &l) == 0 ? NULL : "must be one of debug, info, warn, error";
}

static const char *v_codec(const void *p)
{
    /* Syntax is checked by the codec module at start-up; here only the
     * characters a spec may contain and balanced parentheses. */
    int depth = 0;
    for (const char *s = p; *s; s++) {
        if (*s == '(')
            depth++;
        else if (*s == ')') {
            if (--depth < 0)
                return "unbalanced parentheses in codec spec";
        } else if (!isalnum((unsigned char)*s) && !strchr(".,_+= ", *s))
            /* '=' for parameters such as int8(block=32) or svd(rank=8) */
            return "codec spec may contain only letters, digits, '.', ',', '_', '+', '=', ' ' and parentheses";
    }
    return depth == 0 ? NULL : "unbalanced parentheses in codec spec";
}

static const char *v_pattern(const void *p)
{
    /* the pattern's match against the model is checked by the job
     * (nb_freeze_check); here only its characters */
    for (const char *s = p; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("._-*?", *s))
            return "a tensor-name pattern may contain only letters, digits, '.', '_', '-', '*' and '?'";
    return NULL;
}

/* ---- enums ---------------------------------------------------------------- */

static const char *const role_names[] = { "coordinator", "stage", "train", NULL };
static const char *const norm_names[] = { "pre", "post", NULL };
static const char *const gelu_names[] = { "tanh", "erf", NULL };
static const char *const head_names[] = { "lm", "mlm", "seqcls", "tokcls", NULL };
static const char *const sched_names[] = { "auto", "gpipe", "1f1b", NULL };
static const char *const topo_names[] = { "chain", "ushape", NULL };
static const char *const precision_names[] = { "fp32", "bf16", NULL };
static const char *const ktls_names[] = { "off", "auto", "on", NULL };

const char *nb_cfg_role_name(nb_cfg_role_t r) { return (unsigned)r < 3 ? role_names[r] : "?"; }
const char *nb_cfg_norm_name(nb_cfg_norm_t n) { return (unsigned)n < 2 ? norm_names[n] : "?"; }
const char *nb_cfg_head_name(nb_cfg_head_t h) { return (unsigned)h < 4 ? head_names[h] : "?"; }
const char *nb_cfg_schedule_name(nb_cfg_schedule_t s) { return (unsigned)s < 3 ? sched_names[s] : "?"; }
const char *nb_cfg_topology_name(nb_cfg_topology_t t) { return (unsigned)t < 2 ? topo_names[t] : "?"; }

/* ---- rows ----------------------------------------------------------------- */

static const nb__cfg_key_t tls_keys[] = {
    { .name = "cert", .type = NB__CFG_PATH, .required = C | S, FLD(nb_cfg_tls_t, cert), .doc = "PEM certificate of this daemon" },
    { .name = "key", .type = NB__CFG_PATH, .required = C | S, FLD(nb_cfg_tls_t, key), .doc = "PEM private key of this daemon" },
    { .name = "ca", .type = NB__CFG_PATH, .required = C | S, FLD(nb_cfg_tls_t, ca), .doc = "PEM CA bundle that signs every peer" },
    { .name = "ktls", .type = NB__CFG_ENUM, .def = "off", .names = ktls_names, FLD(nb_cfg_tls_t, ktls), .doc = "kernel TLS for what this daemon sends: off, auto (where the kernel offers it) or on (required)" },
    { 0 },
};

/* Defaults equal the transport's own (nb_net_cfg_default, nb_frame_limits_default). */
static const nb__cfg_key_t transport_keys[] = {
    { .name = "max_frame_payload", .type = NB__CFG_BYTES, .min = 1048576, .max = 1073741824, .def = "256MiB", FLD(nb_cfg_transport_t, max_frame_payload), .doc = "largest frame payload sent or accepted; a larger frame closes the connection" },
    { .name = "send_queue_bytes", .type = NB__CFG_BYTES, .min = 1048576, .max = 17179869184.0, .def = "64MiB", FLD(nb_cfg_transport_t, send_queue_bytes), .doc = "bytes queued for one connection before the sender waits" },
    { .name = "max_pending_handshakes", .type = NB__CFG_INT, .min = 1, .max = 65536, .def = "256", FLD(nb_cfg_transport_t, max_pending_handshakes), .doc = "inbound connections still in handshake; more are closed at once" },
    { .name = "max_pending_per_address", .type = NB__CFG_INT, .min = 1, .max = 65536, .def = "8", FLD(nb_cfg_transport_t, max_pending_per_address), .doc = "of those, from one source address" },
    { 0 },
};

static const nb__cfg_key_t coord_keys[] = {
    { .name = "address", .type = NB__CFG_ADDR, .required = S, .min = 1, FLD(nb_cfg_coord_t, address), .doc = "HOST:PORT of the coordinator" },
    { .name = "name", .type = NB__CFG_STR, .required = S, FLD(nb_cfg_coord_t, name), .validate = v_name, .doc = "name the coordinator's certificate must carry" },
    { 0 },
};

static const nb__cfg_key_t device_elem = {
    .name = "devices[]", .type = NB__CFG_DEVICE, .size = sizeof(nb_cfg_device_t), .doc = "cpu or cuda:N",
};

static const nb__cfg_key_t model_keys[] = {
    { .name = "n_layer", .type = NB__CFG_INT, .required = C | T, .min = 1, .max = 1024, FLD(nb_cfg_model_t, n_layer), .doc = "transformer blocks" },
    { .name = "d_model", .type = NB__CFG_INT, .required = C | T, .min = 1, .max = 65536, FLD(nb_cfg_model_t, d_model), .doc = "hidden size" },
    { .name = "n_head", .type = NB__CFG_INT, .required = C | T, .min = 1, .max = 1024, FLD(nb_cfg_model_t, n_head), .doc = "attention heads; divides d_model" },
    { .name = "d_ff", .type = NB__CFG_INT, .min = 0, .max = 262144, .def = "0", FLD(nb_cfg_model_t, d_ff), .doc = "feed-forward size; 0 = 4 * d_model" },
    { .name = "vocab", .type = NB__CFG_INT, .required = C | T, .min = 2, .max = 16777216, FLD(nb_cfg_model_t, vocab), .doc = "vocabulary size" },
    { .name = "max_seq", .type = NB__CFG_INT, .min = 1, .max = 1048576, .def = "1024", FLD(nb_cfg_model_t, max_seq), .doc = "positions in the position embedding" },
    { .name = "causal", .type = NB__CFG_BOOL, .def = "true", FLD(nb_cfg_model_t, causal), .doc = "causal attention mask" },
    { .name = "norm", .type = NB__CFG_ENUM, .def = "pre", .names = norm_names, FLD(nb_cfg_model_t, norm), .doc = "layer norm placement" },
    { .name = "head", .type = NB__CFG_ENUM, .def = "lm", .names = head_names, FLD(nb_cfg_model_t, head), .doc = "output head" },
    { .name = "n_classes", .type = NB__CFG_INT, .min = 0, .max = 65536, .def = "0", FLD(nb_cfg_model_t, n_classes), .doc = "classes of a seqcls/tokcls head" },
    { .name = "tie_embeddings", .type = NB__CFG_BOOL, .def = "true", FLD(nb_cfg_model_t, tie_embeddings), .doc = "lm head shares the token embedding" },
    { .name = "ln_eps", .type = NB__CFG_DOUBLE, .min = 1e-30, .max = 1, .def = "1e-5", FLD(nb_cfg_model_t, ln_eps), .doc = "LayerNorm eps (BERT: 1e-12)" },
    { .name = "gelu", .type = NB__CFG_ENUM, .def = "tanh", .names = gelu_names, FLD(nb_cfg_model_t, gelu), .doc = "GELU form: tanh (GPT-2) or erf (BERT)" },
    { .name = "mask_token", .type = NB__CFG_INT, .min = 0, .max = 16777215, .def = "0", FLD(nb_cfg_model_t, mask_token), .doc = "mlm: input ID of masked positions; 0 = vocab - 1 (BERT: 103, [MASK])" },
    { .name = "cross_attn", .type = NB__CFG_BOOL, .def = "false", FLD(nb_cfg_model_t, cross_attn), .doc = "decoder blocks: cross-attention to the output of job.encoder" },
    { .name = "token_shift", .type = NB__CFG_BOOL, .def = "false", FLD(nb_cfg_model_t, token_shift), .doc = "before block 0 a quarter of the embedding channels come from the previous token (and, bidirectional, a quarter from the next); no parameters" },
    { 0 },
};

static const nb__cfg_key_t optim_keys[] = {
    { .name = "lr", .type = NB__CFG_DOUBLE, .min = 0, .max = 10, .def = "3e-4", FLD(nb_cfg_optim_t, lr), .doc = "peak learning rate" },
    { .name = "min_lr", .type = NB__CFG_DOUBLE, .min = 0, .max = 10, .def = "0", FLD(nb_cfg_optim_t, min_lr), .doc = "learning rate at the end of the cosine decay" },
    { .name = "warmup_steps", .type = NB__CFG_INT, .min = 0, .max = 1e12, .def = "0", FLD(nb_cfg_optim_t, warmup_steps), .doc = "linear warm-up steps" },
    { .name = "weight_decay", .type = NB__CFG_DOUBLE, .min = 0, .max = 10, .def = "0", FLD(nb_cfg_optim_t, weight_decay), .doc = "AdamW decoupled weight decay" },
    { .name = "beta1", .type = NB__CFG_DOUBLE, .min = 0, .max = 0.999999, .def = "0.9", FLD(nb_cfg_optim_t, beta1), .doc = "AdamW beta1" },
    { .name = "beta2", .type = NB__CFG_DOUBLE, .min = 0, .max = 0.999999999, .def = "0.999", FLD(nb_cfg_optim_t, beta2), .doc = "AdamW beta2" },
    { .name = "eps", .type = NB__CFG_DOUBLE, .min = 1e-30, .max = 1, .def = "1e-8", FLD(nb_cfg_optim_t, eps), .doc = "AdamW epsilon" },
    { .name = "grad_clip", .type = NB__CFG_DOUBLE, .min = 0, .max = 1e6, .def = "1.0", FLD(nb_cfg_optim_t, grad_clip), .doc = "global gradient norm clip; 0 = off" },
    { 0 },
};

static const nb__cfg_key_t codec_keys[] = {
    { .name = "forward", .type = NB__CFG_STR, .def = "fp32", FLD(nb_cfg_codecs_t, forward), .validate = v_codec, .doc = "codec for activations" },
    { .name = "backward", .type = NB__CFG_STR, .def = "fp32", FLD(nb_cfg_codecs_t, backward), .validate = v_codec, .doc = "codec for gradients" },
    { 0 },
};

static const nb__cfg_key_t cluster_keys[] = {
    { .name = "name", .type = NB__CFG_STR, .required = C | S | T, FLD(nb_cfg_cluster_t, name), .validate = v_name, .doc = "the stage daemon's name" },
    { .name = "address", .type = NB__CFG_ADDR, .required = C | S | T, .min = 1, FLD(nb_cfg_cluster_t, address), .doc = "HOST:PORT the stage listens on" },
    { .name = "layers", .type = NB__CFG_LAYERS, .def = "auto", .size = sizeof(nb_cfg_cluster_t), .doc = "\"A-B\" (blocks A..B inclusive) or auto" },
    { 0 },
};

static const nb__cfg_key_t cluster_elem = {
    .name = "clusters[]", .type = NB__CFG_SECTION, .size = sizeof(nb_cfg_cluster_t), .sub = cluster_keys,
};

static const nb__cfg_key_t codec_elem = {
    .name = "codecs[]", .type = NB__CFG_STR, .size = NB_CFG_SPEC_MAX, .validate = v_codec,
};

static const nb__cfg_key_t freeze_elem = {
    .name = "freeze[]", .type = NB__CFG_STR, .size = NB_CFG_PATTERN_MAX, .validate = v_pattern,
};

static const nb__cfg_key_t trainable_elem = {
    .name = "trainable[]", .type = NB__CFG_STR, .size = NB_CFG_PATTERN_MAX, .validate = v_pattern,
};

static const nb__cfg_key_t adapter_after_elem = {
    .name = "after[]", .type = NB__CFG_STR, .size = NB_CFG_ADAPTER_NAME_MAX, .validate = v_name,
};

/* job.adapters: the sub-layer names and blocks are checked against the
 * model by the job (nb_model_set_adapters) */
static const nb__cfg_key_t adapter_keys[] = {
    { .name = "size", .type = NB__CFG_INT, .min = 0, .max = 1048576, .def = "0", FLD(nb_cfg_adapters_t, size), .doc = "bottleneck width of each adapter, 1..d_model; 0 = no adapters" },
    { .name = "after", .type = NB__CFG_LIST, .sub = &adapter_after_elem, .off = offsetof(nb_cfg_adapters_t, after),
      .count_off = offsetof(nb_cfg_adapters_t, n_after), .max_items = 3, .doc = "sub-layers an adapter follows: attn, xattn (decoder blocks), ffn" },
    { .name = "blocks", .type = NB__CFG_STR, .def = "all", FLD(nb_cfg_adapters_t, blocks), .doc = "blocks with adapters: all, I or I-J" },
    { 0 },
};

static const nb__cfg_key_t planner_keys[] = {
    { .name = "enabled", .type = NB__CFG_BOOL, .def = "true", FLD(nb_cfg_planner_t, enabled), .doc = "let the planner choose m, schedule, codecs and split" },
    { .name = "replan_threshold", .type = NB__CFG_DOUBLE, .min = 0, .max = 10, .def = "0.2", FLD(nb_cfg_planner_t, replan_threshold), .doc = "relative drift of a measurement that triggers a re-plan" },
    { .name = "max_codec_error", .type = NB__CFG_DOUBLE, .min = 0, .max = 10, .def = "0.25", FLD(nb_cfg_planner_t, max_codec_error), .doc = "largest round-trip relative error of a codec the planner may choose; 0 = no budget" },
    { .name = "replan_steps", .type = NB__CFG_INT, .min = 1, .max = 1e6, .def = "5", FLD(nb_cfg_planner_t, replan_steps), .doc = "steps the drift must last" },
    { .name = "codecs", .type = NB__CFG_LIST, .sub = &codec_elem, .off = offsetof(nb_cfg_planner_t, codecs),
      .count_off = offsetof(nb_cfg_planner_t, n_codecs), .max_items = NB_CFG_MAX_CODECS, .doc = "codec specs the planner may choose" },
    { .name = "stage_memory", .type = NB__CFG_BYTES, .min = 0, .max = 1e18, .def = "0", FLD(nb_cfg_planner_t, stage_memory_bytes), .doc = "memory limit per stage; 0 = unlimited" },
    { .name = "repartition", .type = NB__CFG_BOOL, .def = "false", FLD(nb_cfg_planner_t, repartition), .doc = "move layers between stages while the job runs when measured speeds call for another split (needs job.checkpoint and one checkpoint_dir shared by every stage)" },
    { .name = "repartition_min_gain", .type = NB__CFG_DOUBLE, .min = 0.01, .max = 0.9, .def = "0.1", FLD(nb_cfg_planner_t, repartition_min_gain), .doc = "predicted step-time gain a new layer split needs before the layers move" },
    { 0 },
};

static const nb__cfg_key_t eval_keys[] = {
    { .name = "fraction", .type = NB__CFG_DOUBLE, .min = 0, .max = 0.5, .def = "0", FLD(nb_cfg_eval_t, fraction), .doc = "share of the token file's tail held out for validation; 0 = none" },
    { .name = "data", .type = NB__CFG_PATH, FLD(nb_cfg_eval_t, data), .doc = "held-out token file (instead of fraction); a pipeline's stage 0 reads its own eval_data" },
    { .name = "every_steps", .type = NB__CFG_INT, .min = 0, .max = 1e9, .def = "0", FLD(nb_cfg_eval_t, every_steps), .doc = "validation loss every N steps; 0 = at the end only" },
    { .name = "batches", .type = NB__CFG_INT, .min = 1, .max = 1e6, .def = "8", FLD(nb_cfg_eval_t, batches), .doc = "micro-batches per evaluation" },
    { 0 },
};

static const nb__cfg_key_t checkpoint_keys[] = {
    { .name = "every_steps", .type = NB__CFG_INT, .min = 0, .max = 1e12, .def = "0", FLD(nb_cfg_checkpoint_t, every_steps), .doc = "take a checkpoint every N steps; 0 = not by steps" },
    { .name = "every_seconds", .type = NB__CFG_DOUBLE, .min = 0, .max = 1e9, .def = "0", FLD(nb_cfg_checkpoint_t, every_seconds), .doc = "take a checkpoint when this long has passed since the last; 0 = not by time" },
    { .name = "keep", .type = NB__CFG_INT, .min = 1, .max = 1e6, .def = "3", FLD(nb_cfg_checkpoint_t, keep), .doc = "complete checkpoints kept (older ones are removed)" },
    { .name = "resume", .type = NB__CFG_BOOL, .def = "true", FLD(nb_cfg_checkpoint_t, resume), .doc = "at start, resume from the newest checkpoint of this run in checkpoint_dir" },
    { 0 },
};

static const nb__cfg_key_t generator_keys[] = {
    { .name = "name", .type = NB__CFG_STR, .required = T, FLD(nb_cfg_generator_t, name), .validate = v_name, .doc = "the generator's name (in logs and errors)" },
    { .name = "data", .type = NB__CFG_PATH, .roles = T, .required = T, FLD(nb_cfg_generator_t, data), .doc = "its token file (role train; a generator daemon reads its own data)" },
    { .name = "sequences", .type = NB__CFG_INT, .required = T, .min = 1, .max = 65536, FLD(nb_cfg_generator_t, sequences), .doc = "sequences it feeds each discriminator step" },
    { .name = "seed", .type = NB__CFG_U64, .min = 0, .max = 1.8e19, .def = "0", FLD(nb_cfg_generator_t, seed), .doc = "seed of its init, data, mask and replacement streams; 0 = job.seed + 1 + index" },
    { .name = "model", .type = NB__CFG_SECTION, .required = T, .sub = model_keys, FLD(nb_cfg_generator_t, model), .doc = "its model shape (head mlm)" },
    { .name = "optimizer", .type = NB__CFG_SECTION, .sub = optim_keys, FLD(nb_cfg_generator_t, optimizer), .doc = "its AdamW settings" },
    { 0 },
};

static const nb__cfg_key_t generator_elem = {
    .name = "generators[]", .type = NB__CFG_SECTION, .size = sizeof(nb_cfg_generator_t), .sub = generator_keys,
};

static const nb__cfg_key_t electra_keys[] = {
    { .name = "generators", .type = NB__CFG_LIST, .required = T, .sub = &generator_elem, .off = offsetof(nb_cfg_electra_t, generators),
      .count_off = offsetof(nb_cfg_electra_t, n_generators), .max_items = NB_CFG_MAX_GENERATORS, .doc = "the generators, in the order their batches join a discriminator step" },
    { .name = "disc_weight", .type = NB__CFG_DOUBLE, .min = 1e-6, .max = 1e6, .def = "50", FLD(nb_cfg_electra_t, disc_weight), .doc = "weight of the discriminator's loss" },
    { .name = "mask_prob", .type = NB__CFG_DOUBLE, .min = 1e-6, .max = 1, .def = "0.15", FLD(nb_cfg_electra_t, mask_prob), .doc = "share of masked positions" },
    { .name = "tie_embeddings", .type = NB__CFG_BOOL, .def = "false", FLD(nb_cfg_electra_t, tie_embeddings), .doc = "one token embedding for all models (one process only; equal d_model and vocab)" },
    { 0 },
};

static const nb__cfg_key_t lowrank_keys[] = {
    { .name = "block", .type = NB__CFG_INT, .min = 0, .max = 4095, .def = "0", FLD(nb_cfg_lowrank_t, block), .doc = "the block whose MLP output projection is split (0 = the lowest)" },
    { .name = "rank", .type = NB__CFG_INT, .min = 0, .max = 1048576, .def = "0", FLD(nb_cfg_lowrank_t, rank), .doc = "rank r of U S V, at most min(d_model, d_ff); 0 = no split" },
    { 0 },
};

/* job.encoder: the encoder of an encoder-decoder job; the cross-key rules
 * (no head, d_model equal to the decoder's) are in config_load.c */
static const nb__cfg_key_t encoder_keys[] = {
    { .name = "model", .type = NB__CFG_SECTION, .required = T, .sub = model_keys, FLD(nb_cfg_encoder_t, model), .doc = "the encoder's shape (no head; causal defaults to false)" },
    { .name = "init", .type = NB__CFG_PATH, FLD(nb_cfg_encoder_t, init), .doc = "pretrained encoder weights (weights file or safetensors)" },
    { .name = "output", .type = NB__CFG_PATH, FLD(nb_cfg_encoder_t, output), .doc = "final encoder weights file" },
    { .name = "freeze", .type = NB__CFG_LIST, .sub = &freeze_elem, .off = offsetof(nb_cfg_encoder_t, freeze),
      .count_off = offsetof(nb_cfg_encoder_t, n_freeze), .max_items = NB_CFG_MAX_FREEZE, .doc = "encoder tensors that do not train" },
    { .name = "trainable", .type = NB__CFG_LIST, .sub = &trainable_elem, .off = offsetof(nb_cfg_encoder_t, trainable),
      .count_off = offsetof(nb_cfg_encoder_t, n_trainable), .max_items = NB_CFG_MAX_FREEZE, .doc = "exceptions to job.encoder.freeze" },
    { .name = "adapters", .type = NB__CFG_SECTION, .sub = adapter_keys, FLD(nb_cfg_encoder_t, adapters), .doc = "bottleneck adapters inside the encoder's blocks" },
    { .name = "daemon", .type = NB__CFG_STR, .roles = C | S, .required = C, FLD(nb_cfg_encoder_t, daemon), .validate = v_name, .doc = "across two daemons: the certificate name of the encoder's daemon" },
    { 0 },
};

static const nb__cfg_key_t spans_text_elem = {
    .name = "text[]", .type = NB__CFG_PATH, .size = NB_CFG_PATH_MAX,
};

static const nb__cfg_key_t spans_keys[] = {
    { .name = "text", .type = NB__CFG_LIST, .required = C | S | T, .sub = &spans_text_elem, .off = offsetof(nb_cfg_spans_t, text),
      .count_off = offsetof(nb_cfg_spans_t, n_text), .max_items = NB_CFG_MAX_TEXTS, .doc = "UTF-8 text files the windows come from" },
    { .name = "tokenizer", .type = NB__CFG_PATH, .required = C | S | T, FLD(nb_cfg_spans_t, tokenizer), .doc = "WordPiece vocabulary (vocab.txt or its directory) of both models" },
    { .name = "min_tokens", .type = NB__CFG_INT, .min = 1, .max = 1024, .def = "1", FLD(nb_cfg_spans_t, min_tokens), .doc = "shortest span removed" },
    { .name = "max_tokens", .type = NB__CFG_INT, .min = 1, .max = 1024, .def = "4", FLD(nb_cfg_spans_t, max_tokens), .doc = "longest span removed; the decoder reads max_tokens + 1 positions" },
    { .name = "hold", .type = NB__CFG_INT, .min = 2, .max = 1000, .def = "10", FLD(nb_cfg_spans_t, hold), .doc = "every hold-th window of each file is held out" },
    { .name = "eval_windows", .type = NB__CFG_INT, .min = 1, .max = 1e6, .def = "256", FLD(nb_cfg_spans_t, eval_windows), .doc = "held-out windows scored at the end" },
    { 0 },
};

static const nb__cfg_key_t job_keys[] = {
    { .name = "model", .type = NB__CFG_SECTION, .required = C | T, .sub = model_keys, FLD(nb_cfg_job_t, model), .doc = "model shape" },
    { .name = "seed", .type = NB__CFG_U64, .min = 0, .max = 1.8e19, .def = "1337", FLD(nb_cfg_job_t, seed), .doc = "seed of every RNG stream" },
    { .name = "data", .type = NB__CFG_PATH, FLD(nb_cfg_job_t, data), .doc = "token file (role train: required unless job.electra)" },
    { .name = "batch", .type = NB__CFG_INT, .required = C | T, .min = 1, .max = 1048576, FLD(nb_cfg_job_t, batch), .doc = "sequences per step (global batch)" },
    { .name = "seq_len", .type = NB__CFG_INT, .required = C | T, .min = 1, .max = 1048576, FLD(nb_cfg_job_t, seq_len), .doc = "tokens per sequence" },
    { .name = "steps", .type = NB__CFG_INT, .required = C | T, .min = 1, .max = 1e12, FLD(nb_cfg_job_t, steps), .doc = "optimizer steps" },
    { .name = "micro_batches", .type = NB__CFG_INT_AUTO, .min = 1, .max = 65536, .def = "auto", FLD(nb_cfg_job_t, micro_batches), .doc = "micro-batches per step, or auto" },
    { .name = "schedule", .type = NB__CFG_ENUM, .def = "auto", .names = sched_names, FLD(nb_cfg_job_t, schedule), .doc = "pipeline schedule" },
    { .name = "precision", .type = NB__CFG_ENUM, .def = "fp32", .names = precision_names, FLD(nb_cfg_job_t, precision), .doc = "matmul precision: fp32, or bf16 (inputs rounded to bf16, fp32 accumulation; weights and optimizer state stay fp32)" },
    { .name = "optimizer", .type = NB__CFG_SECTION, .sub = optim_keys, FLD(nb_cfg_job_t, optimizer), .doc = "AdamW settings" },
    { .name = "codecs", .type = NB__CFG_SECTION, .sub = codec_keys, FLD(nb_cfg_job_t, codecs), .doc = "codec per direction" },
    { .name = "topology", .type = NB__CFG_ENUM, .def = "chain", .names = topo_names, FLD(nb_cfg_job_t, topology), .doc = "chain or ushape" },
    { .name = "clusters", .type = NB__CFG_LIST, .sub = &cluster_elem, .off = offsetof(nb_cfg_job_t, clusters),
      .count_off = offsetof(nb_cfg_job_t, n_clusters), .max_items = NB_CFG_MAX_CLUSTERS, .doc = "ordered pipeline stages" },
    { .name = "planner", .type = NB__CFG_SECTION, .sub = planner_keys, FLD(nb_cfg_job_t, planner), .doc = "planner settings" },
    { .name = "log_every", .type = NB__CFG_INT, .min = 1, .max = 1e9, .def = "1", FLD(nb_cfg_job_t, log_every), .doc = "progress line every N steps" },
    { .name = "trace_steps", .type = NB__CFG_INT, .min = 0, .max = 1000, .def = "4", FLD(nb_cfg_job_t, trace_steps), .doc = "steps kept in the trace ring" },
    { .name = "max_skipped_steps", .type = NB__CFG_INT, .min = 1, .max = 1e6, .def = "10", FLD(nb_cfg_job_t, max_skipped_steps), .doc = "consecutive steps skipped for a non-finite gradient norm that stop the job" },
    { .name = "output", .type = NB__CFG_PATH, FLD(nb_cfg_job_t, output), .doc = "final weights file" },
    { .name = "init", .type = NB__CFG_PATH, .roles = C | T, FLD(nb_cfg_job_t, init), .doc = "pretrained weights to start from (weights file or safetensors)" },
    { .name = "freeze", .type = NB__CFG_LIST, .sub = &freeze_elem, .off = offsetof(nb_cfg_job_t, freeze),
      .count_off = offsetof(nb_cfg_job_t, n_freeze), .max_items = NB_CFG_MAX_FREEZE, .doc = "tensors that do not train: globs over the model's tensor names (wte, h0.*)" },
    { .name = "trainable", .type = NB__CFG_LIST, .sub = &trainable_elem, .off = offsetof(nb_cfg_job_t, trainable),
      .count_off = offsetof(nb_cfg_job_t, n_trainable), .max_items = NB_CFG_MAX_FREEZE, .doc = "exceptions to job.freeze: tensors that train although a freeze pattern matches them" },
    { .name = "adapters", .type = NB__CFG_SECTION, .sub = adapter_keys, FLD(nb_cfg_job_t, adapters), .doc = "bottleneck adapters inside the blocks (fine-tuning)" },
    { .name = "lowrank", .type = NB__CFG_SECTION, .sub = lowrank_keys, FLD(nb_cfg_job_t, lowrank), .doc = "low-rank split of one block (docs/lowrank.md)" },
    { .name = "eval", .type = NB__CFG_SECTION, .roles = C | T, .sub = eval_keys, FLD(nb_cfg_job_t, eval), .doc = "held-out evaluation" },
    { .name = "checkpoint", .type = NB__CFG_SECTION, .roles = C, .sub = checkpoint_keys, FLD(nb_cfg_job_t, checkpoint), .doc = "coordinated checkpoints" },
    { .name = "recovery_timeout_s", .type = NB__CFG_DOUBLE, .roles = C, .min = 1, .max = 1e7, .def = "600", FLD(nb_cfg_job_t, recovery_timeout_s), .doc = "how long the daemons may take to come back after a fault before the job fails" },
    { .name = "max_restarts", .type = NB__CFG_INT, .roles = C, .min = 0, .max = 1e9, .def = "1000", FLD(nb_cfg_job_t, max_restarts), .doc = "recoveries after which the job fails" },
    { .name = "encoder", .type = NB__CFG_SECTION, .roles = C | S | T, .sub = encoder_keys, FLD(nb_cfg_job_t, encoder), .doc = "the encoder of an encoder-decoder job; job.model is the decoder (docs/finetune.md)" },
    { .name = "spans", .type = NB__CFG_SECTION, .roles = C | S | T, .sub = spans_keys, FLD(nb_cfg_job_t, spans), .doc = "span restoration: the task of an encoder-decoder job" },
    { .name = "electra", .type = NB__CFG_SECTION, .roles = C | T, .sub = electra_keys, FLD(nb_cfg_job_t, electra), .doc = "multi-generator ELECTRA (nebula-electra, or a coordinator that is the discriminator's daemon); job.model is the discriminator" },
    { 0 },
};

const nb__cfg_key_t nb__cfg_root[] = {
    { .name = "name", .type = NB__CFG_STR, .required = C | S | T, FLD(nb_config_t, name), .validate = v_name, .doc = "daemon (cluster) name" },
    { .name = "role", .type = NB__CFG_ENUM, .required = C | S | T, .names = role_names, FLD(nb_config_t, role), .doc = "coordinator, stage or train" },
    { .name = "listen", .type = NB__CFG_ADDR, .roles = C | S, .required = C | S, .min = 0, FLD(nb_config_t, listen), .doc = "HOST:PORT to listen on for peers" },
    { .name = "tls", .type = NB__CFG_SECTION, .roles = C | S, .required = C | S, .sub = tls_keys, FLD(nb_config_t, tls), .doc = "TLS files" },
    { .name = "coordinator", .type = NB__CFG_SECTION, .roles = S, .required = S, .sub = coord_keys, FLD(nb_config_t, coordinator), .doc = "where the coordinator is" },
    { .name = "devices", .type = NB__CFG_LIST, .sub = &device_elem, .off = offsetof(nb_config_t, devices),
      .count_off = offsetof(nb_config_t, n_devices), .max_items = NB_CFG_MAX_DEVICES, .doc = "local compute devices; default [cpu]" },
    { .name = "data", .type = NB__CFG_PATH, .roles = S, FLD(nb_config_t, data), .doc = "token file read here when this stage hosts the embedding" },
    { .name = "init", .type = NB__CFG_PATH, .roles = S, FLD(nb_config_t, init), .doc = "pretrained weights this stage's parts load when the job sets job.init" },
    { .name = "electra_generator", .type = NB__CFG_BOOL, .roles = S, .def = "false", FLD(nb_config_t, electra_generator), .doc = "this stage daemon is an ELECTRA generator: it trains the generator of job.electra.generators[] named like it, on its own data" },
    { .name = "encdec_encoder", .type = NB__CFG_BOOL, .roles = S, .def = "false", FLD(nb_config_t, encdec_encoder), .doc = "this stage daemon runs the encoder of the encoder-decoder job in its own job section (docs/finetune.md)" },
    { .name = "eval_data", .type = NB__CFG_PATH, .roles = S, FLD(nb_config_t, eval_data), .doc = "held-out token file read here when this stage hosts the embedding and the job sets job.eval.data" },
    { .name = "checkpoint_dir", .type = NB__CFG_PATH, FLD(nb_config_t, checkpoint_dir), .doc = "directory for checkpoints" },
    { .name = "status_socket", .type = NB__CFG_PATH, FLD(nb_config_t, status_socket), .doc = "unix socket path; default /run/nebula/NAME.sock" },
    { .name = "log_level", .type = NB__CFG_STR, .def = "info", FLD(nb_config_t, log_level), .validate = v_log_level, .doc = "debug, info, warn or error" },
    { .name = "heartbeat_interval_s", .type = NB__CFG_DOUBLE, .min = 0.05, .max = 3600, .def = "1", FLD(nb_config_t, heartbeat_interval_s), .doc = "seconds between heartbeats" },
    { .name = "heartbeat_timeout_s", .type = NB__CFG_DOUBLE, .min = 0.1, .max = 86400, .def = "10", FLD(nb_config_t, heartbeat_timeout_s), .doc = "silence after which a peer is dead" },
    { .name = "connect_timeout_s", .type = NB__CFG_DOUBLE, .min = 0, .max = 86400, .def = "60", FLD(nb_config_t, connect_timeout_s), .doc = "give up connecting after this; 0 = wait forever" },
    { .name = "transport", .type = NB__CFG_SECTION, .roles = C | S, .sub = transport_keys, FLD(nb_config_t, transport), .doc = "limits of the peer transport" },
    { .name = "job", .type = NB__CFG_SECTION, .roles = C | S | T, .required = C | T, .sub = job_keys, FLD(nb_config_t, job), .doc = "the training job" },
    { 0 },
};

const char *nb__cfg_type_name(nb__cfg_type_t t)
{
    switch (t) {
    case NB__CFG_STR: return "string";
    case NB__CFG_PATH: return "path";
    case NB__CFG_INT: return "integer";
    case NB__CFG_U64: return "integer";
    case NB__CFG_DOUBLE: return "number";
    case NB__CFG_BOOL: return "boolean";
    case NB__CFG_ENUM: return "enum";
    case NB__CFG_ADDR: return "address";
    case NB__CFG_DEVICE: return "device";
    case NB__CFG_BYTES: return "bytes";
    case NB__CFG_INT_AUTO: return "integer or auto";
    case NB__CFG_LAYERS: return "layers";
    case NB__CFG_SECTION: return "mapping";
    case NB__CFG_LIST: return "list";
    }
    return "?";
}
