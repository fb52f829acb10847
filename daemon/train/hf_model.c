/*
 * hf_model.c - config.json and the GPT-2 / BERT name maps; see hf_model.h.
 * One table turns a Nebula tensor name into its source tensors (one, or
 * three for BERT's q, k, v) and layout; loading and saving both use it, so
 * the two directions cannot drift apart.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/train/hf_model.h"
#include "daemon/train/weights.h"
#include "kernels/common.h"

const char *nb_hf_names_name(nb_hf_names_t n)
{
    return n == NB_HF_NAMES_GPT2 ? "gpt2" : n == NB_HF_NAMES_BERT ? "bert" : "nebula";
}

int nb_hf_names_parse(const char *s, nb_hf_names_t *out)
{
    static const nb_hf_names_t all[] = { NB_HF_NAMES_NEBULA, NB_HF_NAMES_GPT2, NB_HF_NAMES_BERT };
    for (int i = 0; i < 3; i++)
        if (!strcmp(s, nb_hf_names_name(all[i]))) {
            *out = all[i];
            return 0;
        }
    return NB_EINVAL;
}

/* ---- config.json -------------------------------------------------------- */

/* Integer field; NULL or why not. */
static const char *get_int(json_t *root, const char *key, int def, bool required, int *out)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (required)
            return "missing";
        *out = def;
        return NULL;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > (1 << 30))
        return "not an integer in 0..2^30";
    *out = (int)json_integer_value(v);
    return NULL;
}

static bool get_bool(json_t *root, const char *key, bool def)
{
    json_t *v = json_object_get(root, key);
    return json_is_boolean(v) ? json_is_true(v) : def;
}

static const char *get_str(json_t *root, const char *key, const char *def)
{
    json_t *v = json_object_get(root, key);
    return json_is_string(v) ? json_string_value(v) : def;
}

static double get_num(json_t *root, const char *key, double def)
{
    json_t *v = json_object_get(root, key);
    return json_is_number(v) ? json_number_value(v) : def;
}

/* Appends "; what" to the list of unsupported settings. */
static void lack(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void lack(char *buf, size_t len, const char *fmt, ...)
{
    size_t at = strlen(buf);
    if (at + 3 >= len)
        return;
    if (at)
        at += (size_t)snprintf(buf + at, len - at, "; ");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + at, len - at, fmt, ap);
    va_end(ap);
}

/* The GELU form of a Hugging Face activation name; false for an activation
 * Nebula lacks (relu, silu, gelu_fast, quick_gelu, ...). */
static bool gelu_of(const char *act, nb_gelu_t *out)
{
    if (!strcmp(act, "gelu_new") || !strcmp(act, "gelu_pytorch_tanh"))
        *out = NB_MODEL_GELU_TANH;
    else if (!strcmp(act, "gelu"))
        *out = NB_MODEL_GELU_ERF;
    else
        return false;
    return true;
}

/* Takes a LayerNorm eps into c->ln_eps, or says why not. */
static void take_eps(nb_model_config_t *c, const char *key, double eps, char *lacks, size_t len)
{
    if (!(eps > 0 && eps <= 1) || (float)eps <= 0.0f)
        lack(lacks, len, "%s %g (Nebula takes an eps in 1e-30..1)", key, eps);
    else
        c->ln_eps = (float)eps;
}

int nb_hf_config_read(const char *path, nb_model_config_t *cfg, nb_hf_names_t *names, char *err, size_t errlen)
{
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        snprintf(err, errlen, "%s:%d:%d: %s", path, je.line, je.column, je.text);
        return je.line <= 0 && strstr(je.text, "unable to open") ? NB_EIO : NB_EFORMAT;
    }
    int rc = NB_EFORMAT;
    char lacks[1024] = "";
    const char *type = get_str(root, "model_type", NULL);
    struct {
        const char *key;
        int def;
        bool required;
        int *dst;
    } f[8];
    int nf = 0, d_ff = 0;
    nb_model_config_t c = { 0 };
    if (!json_is_object(root)) {
        snprintf(err, errlen, "%s: not a JSON object", path);
        goto out;
    }
    if (!type || (strcmp(type, "gpt2") && strcmp(type, "bert"))) {
        snprintf(err, errlen, "%s: model_type %s%s%s: Nebula imports gpt2 and bert", path, type ? "'" : "",
                 type ? type : "missing", type ? "'" : "");
        rc = NB_EINVAL;
        goto out;
    }
    bool gpt2 = !strcmp(type, "gpt2");
    if (gpt2) {
        f[nf++] = (typeof(f[0])){ "n_layer", 0, true, &c.n_layer };
        f[nf++] = (typeof(f[0])){ "n_embd", 0, true, &c.d_model };
        f[nf++] = (typeof(f[0])){ "n_head", 0, true, &c.n_head };
        f[nf++] = (typeof(f[0])){ "n_positions", 0, true, &c.max_seq };
        f[nf++] = (typeof(f[0])){ "vocab_size", 0, true, &c.vocab };
        f[nf++] = (typeof(f[0])){ "n_inner", 0, false, &d_ff };
    } else {
        f[nf++] = (typeof(f[0])){ "num_hidden_layers", 0, true, &c.n_layer };
        f[nf++] = (typeof(f[0])){ "hidden_size", 0, true, &c.d_model };
        f[nf++] = (typeof(f[0])){ "num_attention_heads", 0, true, &c.n_head };
        f[nf++] = (typeof(f[0])){ "max_position_embeddings", 0, true, &c.max_seq };
        f[nf++] = (typeof(f[0])){ "vocab_size", 0, true, &c.vocab };
        f[nf++] = (typeof(f[0])){ "intermediate_size", 0, true, &d_ff };
    }
    for (int i = 0; i < nf; i++) {
        const char *why = get_int(root, f[i].key, f[i].def, f[i].required, f[i].dst);
        if (why) {
            snprintf(err, errlen, "%s: %s: %s", path, f[i].key, why);
            goto out;
        }
    }
    if (gpt2) {
        c.d_ff = d_ff ? d_ff : 4 * c.d_model;
        c.causal = true;
        c.norm = NB_MODEL_NORM_PRE;
        c.head = NB_MODEL_HEAD_LM;
        c.tie_embeddings = get_bool(root, "tie_word_embeddings", true);
        const char *act = get_str(root, "activation_function", "gelu_new");
        if (!gelu_of(act, &c.gelu))
            lack(lacks, sizeof lacks, "activation_function '%s' (Nebula has gelu_new, gelu_pytorch_tanh and gelu)",
                 act);
        take_eps(&c, "layer_norm_epsilon", get_num(root, "layer_norm_epsilon", 1e-5), lacks, sizeof lacks);
        if (!get_bool(root, "scale_attn_weights", true))
            lack(lacks, sizeof lacks, "scale_attn_weights false (Nebula scales by 1/sqrt(head size))");
        if (get_bool(root, "scale_attn_by_inverse_layer_idx", false))
            lack(lacks, sizeof lacks, "scale_attn_by_inverse_layer_idx true");
        if (get_bool(root, "add_cross_attention", false))
            lack(lacks, sizeof lacks, "add_cross_attention true");
        *names = NB_HF_NAMES_GPT2;
    } else {
        c.d_ff = d_ff;
        c.causal = false;
        c.norm = NB_MODEL_NORM_POST;
        c.head = NB_MODEL_HEAD_MLM;
        c.tie_embeddings = true;
        const char *act = get_str(root, "hidden_act", "gelu");
        const char *pos = get_str(root, "position_embedding_type", "absolute");
        if (!gelu_of(act, &c.gelu))
            lack(lacks, sizeof lacks, "hidden_act '%s' (Nebula has gelu, gelu_new and gelu_pytorch_tanh)", act);
        take_eps(&c, "layer_norm_eps", get_num(root, "layer_norm_eps", 1e-12), lacks, sizeof lacks);
        if (strcmp(pos, "absolute"))
            lack(lacks, sizeof lacks, "position_embedding_type '%s' (Nebula has absolute positions)", pos);
        if (get_bool(root, "is_decoder", false))
            lack(lacks, sizeof lacks, "is_decoder true");
        *names = NB_HF_NAMES_BERT;
    }
    if (lacks[0]) {
        snprintf(err, errlen, "%s: not supported by Nebula's model family yet: %s", path, lacks);
        rc = NB_EINVAL;
        goto out;
    }
    const char *bad = nb_model_config_validate(&c);
    if (bad) {
        snprintf(err, errlen, "%s: the model does not fit Nebula's family: %s", path, bad);
        rc = NB_EINVAL;
        goto out;
    }
    *cfg = c;
    rc = 0;
out:
    json_decref(root);
    return rc;
}

/* The optional settings after nebula.model's 11 fields, in the order the
 * writer appends them: " ln_eps=E gelu=G" (settings other than the
 * defaults), " adapters=SIZE,AFTER,FIRST,LAST" (job.adapters: size, the
 * after bits, the blocks first..last-1), " cross_attn=1" (a decoder),
 * " lowrank=BLOCK,RANK" (job.lowrank: a split block), then " token_shift=1"
 * (job.model.token_shift).
 * False on anything else (nb_model_config_validate checks the values). */
static bool parse_model_tail(const char *t, nb_model_config_t *c)
{
    char gelu[16];
    int n = 0, x, after;
    if (!strncmp(t, " ln_eps=", 8)) {
        if (sscanf(t, " ln_eps=%f gelu=%15s%n", &c->ln_eps, gelu, &n) != 2 || nb_gelu_parse(gelu, &c->gelu))
            return false;
        t += n;
    }
    if (!strncmp(t, " adapters=", 10)) {
        n = 0;
        if (sscanf(t, " adapters=%d,%d,%d,%d%n", &c->adapter_size, &after, &c->adapter_first, &c->adapter_last,
                   &n) != 4 || c->adapter_size < 1 || after < 1)
            return false;
        c->adapter_after = (unsigned)after;
        t += n;
    }
    if (!strncmp(t, " cross_attn=", 12)) {
        n = 0;
        if (sscanf(t, " cross_attn=%d%n", &x, &n) != 1 || (x != 0 && x != 1))
            return false;
        c->cross_attn = x != 0;
        t += n;
    }
    if (!strncmp(t, " lowrank=", 9)) {
        n = 0;
        if (sscanf(t, " lowrank=%d,%d%n", &c->lowrank_block, &c->lowrank_rank, &n) != 2 || c->lowrank_rank < 1 ||
            c->lowrank_block < 0)
            return false;
        t += n;
    }
    if (!strncmp(t, " token_shift=", 13)) {
        n = 0;
        if (sscanf(t, " token_shift=%d%n", &x, &n) != 1 || x != 1)
            return false;
        c->token_shift = true;
        t += n;
    }
    return *t == '\0';
}

int nb_hf_config_from_metadata(const nb_st_file_t *f, nb_model_config_t *cfg, nb_part_spec_t *spec,
                               nb_hf_names_t *names, char *err, size_t errlen)
{
    const char *m = nb_st_metadata(f, "nebula.model"), *p = nb_st_metadata(f, "nebula.part"),
               *n = nb_st_metadata(f, "nebula.names");
    if (!m && !p && !n)
        return 0;
    nb_model_config_t c = { 0 };
    nb_part_spec_t s = { 0 };
    char norm[16], head[16];
    int causal, tie, embed, hd, used = 0;
    if (!m || !p || !n ||
        sscanf(m, "n_layer=%d d_model=%d n_head=%d d_ff=%d vocab=%d max_seq=%d causal=%d norm=%15s head=%15s "
                  "n_classes=%d tie_embeddings=%d%n",
               &c.n_layer, &c.d_model, &c.n_head, &c.d_ff, &c.vocab, &c.max_seq, &causal, norm, head, &c.n_classes,
               &tie, &used) != 11 ||
        !parse_model_tail(m + used, &c) ||
        nb_norm_parse(norm, &c.norm) || nb_head_kind_parse(head, &c.head) ||
        sscanf(p, "embed=%d first=%d last=%d head=%d%n", &embed, &s.first, &s.last, &hd, &used) != 4 || p[used] ||
        nb_hf_names_parse(n, names)) {
        snprintf(err, errlen, "%s: __metadata__: broken nebula.model, nebula.part or nebula.names", nb_st_path(f));
        return NB_EFORMAT;
    }
    c.causal = causal != 0;
    c.tie_embeddings = tie != 0;
    s.embed = embed != 0;
    s.head = hd != 0;
    const char *bad = nb_model_config_validate(&c);
    if (bad || s.first < 0 || s.first > s.last || s.last > c.n_layer) {
        snprintf(err, errlen, "%s: __metadata__: nebula.model does not fit Nebula's family: %s", nb_st_path(f),
                 bad ? bad : "part blocks out of range");
        return NB_EFORMAT;
    }
    *cfg = c;
    *spec = s;
    return 1;
}

/* ---- the name maps ------------------------------------------------------ */

#define SRC_NAME 160

/* Where a Nebula tensor comes from in a checkpoint. */
typedef struct {
    int n;                    /* 1, or 3 (BERT q, k, v concatenated by rows) */
    char name[3][SRC_NAME];   /* without the optional prefix */
    bool transpose;           /* stored [in, out] (GPT-2 Conv1D) */
    bool no_prefix;           /* lm_head.weight sits outside "transformer." */
} src_t;

/* Fills s for the Nebula tensor nb; false when names has no such tensor. */
static bool map_name(nb_hf_names_t names, const char *nb, src_t *s)
{
    memset(s, 0, sizeof *s);
    s->n = 1;
    if (names == NB_HF_NAMES_NEBULA) {
        snprintf(s->name[0], SRC_NAME, "%s", nb);
        return true;
    }
    bool g = names == NB_HF_NAMES_GPT2;
    int l, used = 0;
    char rest[32];
    if (sscanf(nb, "h%d.%31s%n", &l, rest, &used) == 2 && !nb[used]) {
        static const struct {
            const char *nb, *gpt2, *bert;
            bool t;
        } blk[] = {
            { "ln1.w", "ln_1.weight", "attention.output.LayerNorm.weight", false },
            { "ln1.b", "ln_1.bias", "attention.output.LayerNorm.bias", false },
            { "qkv.w", "attn.c_attn.weight", "attention.self.%s.weight", true },
            { "qkv.b", "attn.c_attn.bias", "attention.self.%s.bias", false },
            { "proj.w", "attn.c_proj.weight", "attention.output.dense.weight", true },
            { "proj.b", "attn.c_proj.bias", "attention.output.dense.bias", false },
            { "ln2.w", "ln_2.weight", "output.LayerNorm.weight", false },
            { "ln2.b", "ln_2.bias", "output.LayerNorm.bias", false },
            { "fc.w", "mlp.c_fc.weight", "intermediate.dense.weight", true },
            { "fc.b", "mlp.c_fc.bias", "intermediate.dense.bias", false },
            { "fcproj.w", "mlp.c_proj.weight", "output.dense.weight", true },
            { "fcproj.b", "mlp.c_proj.bias", "output.dense.bias", false },
        };
        for (size_t i = 0; i < sizeof blk / sizeof blk[0]; i++) {
            if (strcmp(rest, blk[i].nb))
                continue;
            if (g) {
                snprintf(s->name[0], SRC_NAME, "h.%d.%s", l, blk[i].gpt2);
                s->transpose = blk[i].t;
            } else if (!strncmp(rest, "qkv.", 4)) {
                static const char *const qkv[3] = { "query", "key", "value" };
                s->n = 3;
                for (int k = 0; k < 3; k++) {
                    char part[64];
                    snprintf(part, sizeof part, blk[i].bert, qkv[k]);
                    snprintf(s->name[k], SRC_NAME, "encoder.layer.%d.%s", l, part);
                }
            } else {
                snprintf(s->name[0], SRC_NAME, "encoder.layer.%d.%s", l, blk[i].bert);
            }
            return true;
        }
        return false;
    }
    static const struct {
        const char *nb, *gpt2, *bert;
    } top[] = {
        { "wte", "wte.weight", "embeddings.word_embeddings.weight" },
        { "wpe", "wpe.weight", "embeddings.position_embeddings.weight" },
        { "emb_ln.w", NULL, "embeddings.LayerNorm.weight" },
        { "emb_ln.b", NULL, "embeddings.LayerNorm.bias" },
        { "lnf.w", "ln_f.weight", NULL },
        { "lnf.b", "ln_f.bias", NULL },
        { "lm.w", "lm_head.weight", NULL },
    };
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++)
        if (!strcmp(nb, top[i].nb)) {
            const char *n = g ? top[i].gpt2 : top[i].bert;
            if (!n)
                return false;
            snprintf(s->name[0], SRC_NAME, "%s", n);
            s->no_prefix = !strcmp(nb, "lm.w");
            return true;
        }
    return false; /* cls.w, cls.b: the HF classifiers sit on a pooler Nebula lacks */
}

static const char *prefix_of(nb_hf_names_t names)
{
    return names == NB_HF_NAMES_GPT2 ? "transformer." : names == NB_HF_NAMES_BERT ? "bert." : "";
}

/* Index in f of a source name, with or without the family's prefix. */
static int find_src(const nb_st_file_t *f, nb_hf_names_t names, const char *name, bool no_prefix)
{
    int i = nb_st_find(f, name);
    if (i >= 0 || no_prefix || !*prefix_of(names))
        return i;
    char full[SRC_NAME + 16];
    snprintf(full, sizeof full, "%s%s", prefix_of(names), name);
    return nb_st_find(f, full);
}

/* The file tensor name without the family's prefix. */
static const char *strip_prefix(nb_hf_names_t names, const char *name)
{
    size_t k = strlen(prefix_of(names));
    return k && !strncmp(name, prefix_of(names), k) ? name + k : name;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* Why a file tensor no tensor of the part consumed may be left out, or NULL
 * when it must not be. *quiet: no note (buffers; other parts' tensors). */
static const char *skippable(nb_hf_names_t names, const nb_model_config_t *cfg, const nb_part_spec_t *spec,
                             const char *file_name, bool *quiet)
{
    const char *n = strip_prefix(names, file_name);
    int l = -1, used = 0;
    *quiet = true;
    if (names == NB_HF_NAMES_NEBULA) {
        if (sscanf(n, "h%d.%n", &l, &used) == 1 && used)
            return l >= 0 && l < cfg->n_layer && (l < spec->first || l >= spec->last) ? "another part's block" : NULL;
        if (!spec->embed && (!strcmp(n, "wte") || !strcmp(n, "wpe") || !strncmp(n, "emb_ln.", 7)))
            return "another part's embedding";
        if (!spec->head && (!strncmp(n, "lnf.", 4) || !strcmp(n, "lm.w") || !strncmp(n, "cls.", 4)))
            return "another part's head";
        return NULL;
    }
    if (names == NB_HF_NAMES_GPT2) {
        if (sscanf(n, "h.%d.%n", &l, &used) == 1 && used && (l < 0 || l >= cfg->n_layer))
            return NULL;
        if (l >= 0 && (ends_with(n, ".attn.bias") || ends_with(n, ".attn.masked_bias")))
            return "attention mask buffer";
        if (l >= 0 && (l < spec->first || l >= spec->last))
            return "another part's block";
        if (!spec->embed && (!strcmp(n, "wte.weight") || !strcmp(n, "wpe.weight")))
            return "another part's embedding";
        if (!spec->head && (!strncmp(n, "ln_f.", 5) || !strcmp(n, "lm_head.weight")))
            return "another part's head";
        if (!strcmp(n, "lm_head.weight") && cfg->tie_embeddings) {
            *quiet = false;
            return "the head is tied to wte";
        }
    } else if (names == NB_HF_NAMES_BERT) {
        if (!strcmp(n, "embeddings.position_ids"))
            return "position index buffer";
        if (sscanf(n, "encoder.layer.%d.%n", &l, &used) == 1 && used && l >= 0 && l < cfg->n_layer &&
            (l < spec->first || l >= spec->last))
            return "another part's block";
        if (!spec->embed && !strncmp(n, "embeddings.", 11))
            return "another part's embedding";
        *quiet = false;
        if (!strncmp(n, "pooler.", 7))
            return "the pooler is not part of Nebula's family (the hidden states do not need it)";
        if (!strncmp(file_name, "cls.", 4))
            return "the MLM prediction transform is not part of Nebula's family; the mlm head is tied to wte";
    }
    return NULL;
}

/* Copies src tensor values (already in Nebula's layout where 1 source) into
 * dst of Nebula's shape. */
static void place(const nb_param_info_t *t, const src_t *s, float *const vals[3], float *dst)
{
    int64_t rows = t->shape[0], cols = t->ndim > 1 ? t->shape[1] : 1;
    if (s->n == 3) {
        size_t third = t->numel / 3;
        for (int k = 0; k < 3; k++)
            memcpy(dst + k * third, vals[k], third * sizeof(float));
    } else if (s->transpose) {
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++)
                dst[r * cols + c] = vals[0][c * rows + r];
    } else {
        memcpy(dst, vals[0], t->numel * sizeof(float));
    }
}

/* The shape source k of t has in the file. */
static int src_shape(const nb_param_info_t *t, const src_t *s, int64_t shape[2])
{
    shape[0] = t->shape[0];
    shape[1] = t->ndim > 1 ? t->shape[1] : 1;
    if (s->n == 3)
        shape[0] /= 3;
    if (s->transpose) {
        int64_t x = shape[0];
        shape[0] = shape[1];
        shape[1] = x;
    }
    return t->ndim;
}

static void fmt_shape(char *buf, size_t len, int ndim, const int64_t *shape)
{
    size_t at = (size_t)snprintf(buf, len, "[");
    for (int k = 0; k < ndim && at < len; k++)
        at += (size_t)snprintf(buf + at, len - at, "%s%lld", k ? ", " : "", (long long)shape[k]);
    if (at < len)
        snprintf(buf + at, len - at, "]");
}

static void notef(nb_hf_note_cb note, void *ud, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void notef(nb_hf_note_cb note, void *ud, const char *fmt, ...)
{
    if (!note)
        return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    note(ud, buf);
}

int nb_hf_load(nb_st_file_t *f, nb_hf_names_t names, nb_part_t *p, nb_hf_note_cb note, void *ud,
               char *err, size_t errlen)
{
    const nb_model_config_t *cfg = nb_part_config(p);
    const nb_part_spec_t *spec = nb_part_spec(p);
    const char *path = nb_st_path(f);
    size_t np = nb_part_num_params(p);
    int nf = nb_st_count(f), rc = NB_ENOMEM;
    float *host = malloc((np ? np : 1) * sizeof(float));
    bool *used = calloc((size_t)(nf ? nf : 1), sizeof(bool));
    float *vals[3] = { NULL, NULL, NULL };
    if (!host || !used) {
        snprintf(err, errlen, "%s: out of memory for %zu parameters", path, np);
        goto out;
    }
    if (names == NB_HF_NAMES_GPT2 && cfg->norm != NB_MODEL_NORM_PRE) {
        snprintf(err, errlen, "%s: GPT-2 names need a pre-LN model", path);
        rc = NB_EINVAL;
        goto out;
    }
    if (names == NB_HF_NAMES_BERT && cfg->norm != NB_MODEL_NORM_POST) {
        snprintf(err, errlen, "%s: BERT names need a post-LN model", path);
        rc = NB_EINVAL;
        goto out;
    }
    /* tensors the pretrained file has no counterpart of keep their fresh
     * init: bottleneck adapters (".ad_": up = 0, so the model starts as
     * the pretrained one). A file in Nebula's own names that holds adapter
     * tensors (nb_hf_save of an adapter model) gives them all. */
    bool file_ad = false;
    for (int j = 0; names == NB_HF_NAMES_NEBULA && j < nf && !file_ad; j++)
        file_ad = strstr(nb_st_tensor(f, j)->name, ".ad_") != NULL;
    nb_be_to_host(nb_part_backend(p), host, nb_part_params(p), np * sizeof(float));
    for (int i = 0; i < nb_part_num_tensors(p); i++) {
        const nb_param_info_t *t = nb_part_tensor(p, i);
        src_t s;
        if (!file_ad && strstr(t->name, ".ad_"))
            continue;
        if (!map_name(names, t->name, &s)) {
            snprintf(err, errlen, "%s: Nebula's tensor '%s' has no %s counterpart (the %s head is not importable)",
                     path, t->name, nb_hf_names_name(names), nb_head_kind_name(cfg->head));
            rc = NB_EINVAL;
            goto out;
        }
        int64_t want[2];
        int wnd = src_shape(t, &s, want);
        for (int k = 0; k < s.n; k++) {
            int j = find_src(f, names, s.name[k], s.no_prefix);
            if (j < 0) {
                snprintf(err, errlen, "%s: tensor '%s' (Nebula's '%s') is missing", path, s.name[k], t->name);
                rc = NB_EINVAL;
                goto out;
            }
            const nb_st_tensor_t *ft = nb_st_tensor(f, j);
            if (ft->ndim != wnd || ft->shape[0] != want[0] || (wnd > 1 && ft->shape[1] != want[1])) {
                char got[96], exp[96];
                fmt_shape(got, sizeof got, ft->ndim, ft->shape);
                fmt_shape(exp, sizeof exp, wnd, want);
                snprintf(err, errlen, "%s: tensor '%s' has shape %s, the model expects %s (Nebula's '%s')", path,
                         ft->name, got, exp, t->name);
                rc = NB_EINVAL;
                goto out;
            }
            free(vals[k]);
            if (!(vals[k] = malloc((ft->numel ? ft->numel : 1) * sizeof(float)))) {
                snprintf(err, errlen, "%s: out of memory for tensor '%s'", path, ft->name);
                rc = NB_ENOMEM;
                goto out;
            }
            if ((rc = nb_st_read_f32(f, j, vals[k], err, errlen)))
                goto out;
            used[j] = true;
        }
        place(t, &s, vals, host + t->offset);
    }
    /* BERT's token-type row 0 goes into the position table. */
    if (names == NB_HF_NAMES_BERT && spec->embed) {
        int j = find_src(f, names, "embeddings.token_type_embeddings.weight", false);
        int w = nb_part_find_tensor(p, "wpe");
        if (j >= 0) {
            const nb_st_tensor_t *ft = nb_st_tensor(f, j);
            const nb_param_info_t *pe = nb_part_tensor(p, w);
            if (ft->ndim != 2 || ft->shape[1] != cfg->d_model || ft->shape[0] < 1) {
                snprintf(err, errlen, "%s: tensor '%s' is not (types, %d)", path, ft->name, cfg->d_model);
                rc = NB_EINVAL;
                goto out;
            }
            free(vals[0]);
            if (!(vals[0] = malloc(ft->numel * sizeof(float)))) {
                rc = NB_ENOMEM;
                snprintf(err, errlen, "%s: out of memory", path);
                goto out;
            }
            if ((rc = nb_st_read_f32(f, j, vals[0], err, errlen)))
                goto out;
            for (int64_t r = 0; r < pe->shape[0]; r++)
                for (int c = 0; c < cfg->d_model; c++)
                    host[pe->offset + (size_t)r * cfg->d_model + c] += vals[0][c];
            used[j] = true;
            notef(note, ud, "%s: row 0 of '%s' added to every position embedding: exact for inputs of token type "
                            "0; the other %lld token type(s) are not supported", path, ft->name,
                     (long long)ft->shape[0] - 1);
        }
    } else if (names == NB_HF_NAMES_BERT) {
        int j = find_src(f, names, "embeddings.token_type_embeddings.weight", false);
        if (j >= 0)
            used[j] = true;
    }
    for (int j = 0; j < nf; j++) {
        if (used[j])
            continue;
        const char *name = nb_st_tensor(f, j)->name;
        bool quiet;
        const char *why = skippable(names, cfg, spec, name, &quiet);
        if (!why) {
            snprintf(err, errlen, "%s: tensor '%s' is not a tensor of this %s model (n_layer %d): refused", path,
                     name, nb_hf_names_name(names), cfg->n_layer);
            rc = NB_EINVAL;
            goto out;
        }
        if (!quiet)
            notef(note, ud, "%s: tensor '%s' skipped: %s", path, name, why);
    }
    nb_backend_t *be = nb_part_backend(p);
    nb_be_from_host(be, nb_part_params(p), host, np * sizeof(float));
    nb_be_sync(be);
    rc = 0;
out:
    for (int k = 0; k < 3; k++)
        free(vals[k]);
    free(host);
    free(used);
    return rc;
}

int nb_hf_save(const char *path, nb_part_t *p, nb_hf_names_t names, char *err, size_t errlen)
{
    const nb_model_config_t *c = nb_part_config(p);
    const nb_part_spec_t *sp = nb_part_spec(p);
    if (names == NB_HF_NAMES_GPT2 && (c->norm != NB_MODEL_NORM_PRE || !c->causal)) {
        snprintf(err, errlen, "%s: GPT-2 names need a pre-LN causal model (this one is %s-LN, %s)", path,
                 nb_norm_name(c->norm), c->causal ? "causal" : "bidirectional");
        return NB_EINVAL;
    }
    if (names == NB_HF_NAMES_BERT && (c->norm != NB_MODEL_NORM_POST || c->causal)) {
        snprintf(err, errlen, "%s: BERT names need a post-LN bidirectional model (this one is %s-LN, %s)", path,
                 nb_norm_name(c->norm), c->causal ? "causal" : "bidirectional");
        return NB_EINVAL;
    }
    int nt = nb_part_num_tensors(p), rc = NB_ENOMEM, no = 0;
    size_t np = nb_part_num_params(p);
    bool tte = names == NB_HF_NAMES_BERT && sp->embed;
    float *host = malloc((np ? np : 1) * sizeof(float)), *staged = malloc((np ? np : 1) * sizeof(float));
    float *zeros = tte ? calloc(2 * (size_t)c->d_model, sizeof(float)) : NULL;
    nb_st_out_t *out = calloc((size_t)nt * 3 + 1, sizeof *out);
    char(*nm)[SRC_NAME] = calloc((size_t)nt * 3 + 1, SRC_NAME);
    if (!host || !staged || !out || !nm || (tte && !zeros)) {
        snprintf(err, errlen, "%s: out of memory for %zu parameters", path, np);
        goto done;
    }
    if (names != NB_HF_NAMES_NEBULA && c->token_shift) {
        /* no parameters of its own, so the tensors would export, but no
         * Hugging Face model shifts its embedding: loaded there, they would
         * compute another function without a word of warning */
        snprintf(err, errlen, "%s: a model with token_shift (job.model.token_shift) has no Hugging Face "
                 "equivalent: %s names would load into a model that does not shift its embedding and computes "
                 "another function; export it with Nebula's names (--names nebula)", path, nb_hf_names_name(names));
        rc = NB_EINVAL;
        goto done;
    }
    if (names != NB_HF_NAMES_NEBULA && (c->cross_attn || c->lowrank_rank > 0 || c->adapter_size > 0)) {
        snprintf(err, errlen, "%s: a model with %s has no %s names (those names cover the original "
                 "architecture only): export it with Nebula's names (--names nebula)", path,
                 c->cross_attn ? "cross-attention blocks" : c->lowrank_rank > 0 ? "a low-rank split" : "adapters",
                 nb_hf_names_name(names));
        rc = NB_EINVAL;
        goto done;
    }
    nb_be_to_host(nb_part_backend(p), host, nb_part_params(p), np * sizeof(float));
    for (int i = 0; i < nt; i++) {
        const nb_param_info_t *t = nb_part_tensor(p, i);
        src_t s;
        if (!map_name(names, t->name, &s)) {
            snprintf(err, errlen, "%s: Nebula's tensor '%s' has no %s name (the %s head)", path, t->name,
                     nb_hf_names_name(names), nb_head_kind_name(c->head));
            rc = NB_EINVAL;
            goto done;
        }
        int64_t shape[2];
        int nd = src_shape(t, &s, shape);
        const float *src = host + t->offset;
        float *dst = staged + t->offset;
        if (s.transpose) {
            for (int64_t r = 0; r < shape[1]; r++) /* shape is the file's [in, out] */
                for (int64_t k = 0; k < shape[0]; k++)
                    dst[k * shape[1] + r] = src[r * shape[0] + k];
        } else {
            memcpy(dst, src, t->numel * sizeof(float));
        }
        for (int k = 0; k < s.n; k++) {
            snprintf(nm[no], SRC_NAME, "%s", s.name[k]);
            out[no] = (nb_st_out_t){ .name = nm[no], .ndim = nd, .shape = { shape[0], shape[1] },
                                     .data = dst + (size_t)k * (t->numel / (size_t)s.n) };
            no++;
        }
    }
    if (tte) {
        snprintf(nm[no], SRC_NAME, "embeddings.token_type_embeddings.weight");
        out[no] = (nb_st_out_t){ .name = nm[no], .ndim = 2, .shape = { 2, c->d_model }, .data = zeros };
        no++;
    }
    char model[320], part[96];
    snprintf(model, sizeof model,
             "n_layer=%d d_model=%d n_head=%d d_ff=%d vocab=%d max_seq=%d causal=%d norm=%s head=%s n_classes=%d "
             "tie_embeddings=%d",
             c->n_layer, c->d_model, c->n_head, c->d_ff, c->vocab, c->max_seq, c->causal, nb_norm_name(c->norm),
             nb_head_kind_name(c->head), c->n_classes, c->tie_embeddings);
    float eps = nb_model_ln_eps(c);
    if (eps != NB_MODEL_LN_EPS_DEFAULT || c->gelu != NB_MODEL_GELU_TANH) /* else as earlier builds wrote */
        snprintf(model + strlen(model), sizeof model - strlen(model), " ln_eps=%.9g gelu=%s", (double)eps,
                 nb_gelu_name(c->gelu));
    if (c->adapter_size > 0) /* job.adapters: the .ad_ tensors (else as earlier builds wrote) */
        snprintf(model + strlen(model), sizeof model - strlen(model), " adapters=%d,%u,%d,%d", c->adapter_size,
                 c->adapter_after, c->adapter_first, c->adapter_last);
    if (c->cross_attn) /* a decoder: its blocks' xln, xq, xkv, xproj (else as earlier builds wrote) */
        snprintf(model + strlen(model), sizeof model - strlen(model), " cross_attn=1");
    if (c->lowrank_rank > 0) /* job.lowrank: the split block's fcproj.u/s/v (else as earlier builds wrote) */
        snprintf(model + strlen(model), sizeof model - strlen(model), " lowrank=%d,%d", c->lowrank_block,
                 c->lowrank_rank);
    if (c->token_shift) /* job.model.token_shift (else as earlier builds wrote) */
        snprintf(model + strlen(model), sizeof model - strlen(model), " token_shift=1");
    snprintf(part, sizeof part, "embed=%d first=%d last=%d head=%d", sp->embed, sp->first, sp->last, sp->head);
    const char *meta[] = { "format", "pt", "nebula.model", model, "nebula.part", part,
                           "nebula.names", nb_hf_names_name(names) };
    rc = nb_st_write(path, out, no, meta, 4, err, errlen);
done:
    free(host);
    free(staged);
    free(zeros);
    free(out);
    free(nm);
    return rc;
}

int nb_hf_init_part(const char *path, nb_part_t *p, nb_hf_note_cb note, void *ud, char *err, size_t errlen)
{
    char magic[4] = { 0 };
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NB_EIO;
    }
    size_t got = fread(magic, 1, 4, fp);
    fclose(fp);
    if (got == 4 && !memcmp(magic, "NBWT", 4))
        return nb_weights_load_part(path, p, err, errlen); /* its slice of a whole-model file */
    nb_st_file_t *f;
    int rc = nb_st_open(path, &f, err, errlen);
    if (rc)
        return rc;
    nb_model_config_t fc;
    nb_part_spec_t fs;
    nb_hf_names_t names;
    rc = nb_hf_config_from_metadata(f, &fc, &fs, &names, err, errlen);
    bool from_meta = rc == 1;
    if (rc == 0) {
        char cfg_path[4096];
        const char *slash = strrchr(path, '/');
        int dl = slash ? (int)(slash - path) : 1;
        snprintf(cfg_path, sizeof cfg_path, "%.*s/config.json", dl, slash ? path : ".");
        rc = nb_hf_config_read(cfg_path, &fc, &names, err, errlen);
    }
    if (rc < 0)
        goto out;
    const nb_model_config_t *c = nb_part_config(p);
    const struct {
        const char *name;
        int file, want;
    } f8[] = {
        { "n_layer", fc.n_layer, c->n_layer }, { "d_model", fc.d_model, c->d_model },
        { "n_head", fc.n_head, c->n_head },    { "d_ff", fc.d_ff, c->d_ff },
        { "vocab", fc.vocab, c->vocab },       { "max_seq", fc.max_seq, c->max_seq },
        { "causal", fc.causal, c->causal },    { "norm", (int)fc.norm, (int)c->norm },
    };
    for (size_t i = 0; i < sizeof f8 / sizeof f8[0]; i++)
        if (f8[i].file != f8[i].want) {
            snprintf(err, errlen, "%s: %s is %d in the pretrained model, %d in this job's model", path, f8[i].name,
                     f8[i].file, f8[i].want);
            rc = NB_EINVAL;
            goto out;
        }
    if (fc.cross_attn != c->cross_attn) { /* a decoder's cross-attention tensors are in one of them only */
        snprintf(err, errlen, "%s: cross_attn is %d in the pretrained model, %d in this job's model "
                 "(job.model.cross_attn: a decoder's blocks read an encoder's output)", path, fc.cross_attn,
                 c->cross_attn);
        rc = NB_EINVAL;
        goto out;
    }
    /* token shift has no tensors: a Hugging Face model (config.json, which
     * never sets it) initialises a job with or without it alike; a file
     * written by Nebula records it in its __metadata__ (nebula.model) and
     * must agree, as a weights file must */
    if (from_meta && fc.token_shift != c->token_shift) {
        snprintf(err, errlen, "%s: token_shift is %s in the pretrained model (its nebula.model), %s in this job's "
                 "model (job.model.token_shift must match the model the file was written by)", path,
                 fc.token_shift ? "true" : "false", c->token_shift ? "true" : "false");
        rc = NB_EINVAL;
        goto out;
    }
    if (nb_model_ln_eps(&fc) != nb_model_ln_eps(c) || fc.gelu != c->gelu) {
        snprintf(err, errlen, "%s: the pretrained model has ln_eps %g and gelu %s, this job's model ln_eps %g and "
                 "gelu %s (set job.model.ln_eps and job.model.gelu)", path, (double)nb_model_ln_eps(&fc),
                 nb_gelu_name(fc.gelu), (double)nb_model_ln_eps(c), nb_gelu_name(c->gelu));
        rc = NB_EINVAL;
        goto out;
    }
    rc = nb_hf_load(f, names, p, note, ud, err, errlen);
out:
    nb_st_close(f);
    return rc;
}
