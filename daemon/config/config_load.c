/*
 * config_load.c - reads a YAML file with libyaml and fills nb_config_t by
 * walking the key table (config_table.c); then checks the rules that span
 * several keys (layer coverage, divisibility, role needs). The first problem
 * found is reported as "FILE:LINE:COL: key.path: what is wrong".
 */
#include <ctype.h>
#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <yaml.h>
#include "daemon/config/config.h"
#include "daemon/config/config_table.h"
#include "kernels/common.h"

#define CFG_FILE_MAX (1u << 20) /* a config file larger than 1 MiB is a mistake */
#define CFG_MARKS_MAX 512
#define CFG_KEY_PATH_MAX 160
/* Deeper than any key of the table (4 levels) with room for flow style.
 * libyaml's time grows with the square of the depth (100,000 levels: 37 s),
 * so the depth is checked on the event stream before a document is built. */
#define CFG_DEPTH_MAX 64

typedef struct {
    char path[CFG_KEY_PATH_MAX];
    int line, col;
} cfg_mark_t;

typedef struct {
    const char *file;
    char dir[NB_CFG_PATH_MAX];
    char *err;
    size_t errlen;
    bool failed;
    yaml_document_t *doc;
    nb_cfg_role_t role;
    int n_marks;
    cfg_mark_t marks[CFG_MARKS_MAX];
} cfg_ctx_t;

/* ---- errors and marks ----------------------------------------------------------- */

__attribute__((format(printf, 5, 6)))
static int fail_at(cfg_ctx_t *c, int line, int col, const char *path, const char *fmt, ...)
{
    if (c->failed)
        return -1;
    c->failed = true;
    if (!c->err || c->errlen == 0)
        return -1;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(c->err, c->errlen, "%s:%d:%d: %s: %s", c->file, line, col, path, msg);
    return -1;
}

#define fail_node(c, n, path, ...) \
    fail_at(c, (int)(n)->start_mark.line + 1, (int)(n)->start_mark.column + 1, path, __VA_ARGS__)

static void mark_put(cfg_ctx_t *c, const char *path, const yaml_node_t *n)
{
    if (c->n_marks >= CFG_MARKS_MAX)
        return;
    cfg_mark_t *m = &c->marks[c->n_marks++];
    snprintf(m->path, sizeof m->path, "%s", path);
    m->line = (int)n->start_mark.line + 1;
    m->col = (int)n->start_mark.column + 1;
}

/* Reports at the mark of path, or of the longest recorded prefix of it. */
__attribute__((format(printf, 3, 4)))
static int fail_path(cfg_ctx_t *c, const char *path, const char *fmt, ...)
{
    int line = 1, col = 1;
    size_t best = 0;
    for (int i = 0; i < c->n_marks; i++) {
        size_t l = strlen(c->marks[i].path);
        if (strncmp(path, c->marks[i].path, l) == 0 && (path[l] == 0 || path[l] == '.' || path[l] == '[') &&
            l >= best) {
            best = l;
            line = c->marks[i].line;
            col = c->marks[i].col;
        }
    }
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return fail_at(c, line, col, path, "%s", msg);
}

static const char *node_kind(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_MAPPING_NODE: return "a mapping";
    case YAML_SEQUENCE_NODE: return "a list";
    case YAML_SCALAR_NODE: return "a scalar";
    default: return "nothing";
    }
}

static void join_path(char *out, const char *prefix, const char *name)
{
    if (prefix[0])
        snprintf(out, CFG_KEY_PATH_MAX, "%s.%s", prefix, name);
    else
        snprintf(out, CFG_KEY_PATH_MAX, "%s", name);
}

/* ---- edit distance and suggestions ------------------------------------------------ */

int nb_cfg_edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63)
        return 255;
    int d[64][64];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            int sub = d[i - 1][j - 1] + (tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]));
            int del = d[i - 1][j] + 1, ins = d[i][j - 1] + 1;
            int m = sub < del ? sub : del;
            d[i][j] = m < ins ? m : ins;
        }
    return d[la][lb];
}

/* Finds a row with this exact name anywhere in the table; writes its dotted
 * section into out. Returns true when found. */
static bool find_elsewhere(const nb__cfg_key_t *keys, const char *prefix, const char *name, char *out)
{
    for (const nb__cfg_key_t *k = keys; k->name; k++) {
        char p[CFG_KEY_PATH_MAX];
        join_path(p, prefix, k->name);
        const nb__cfg_key_t *sub = NULL;
        if (k->type == NB__CFG_SECTION)
            sub = k->sub;
        else if (k->type == NB__CFG_LIST && k->sub->type == NB__CFG_SECTION) {
            sub = k->sub->sub;
            strncat(p, "[]", sizeof p - strlen(p) - 1);
        }
        if (!sub)
            continue;
        for (const nb__cfg_key_t *s = sub; s->name; s++)
            if (strcmp(s->name, name) == 0) {
                snprintf(out, CFG_KEY_PATH_MAX, "%s", p);
                return true;
            }
        if (find_elsewhere(sub, p, name, out))
            return true;
    }
    return false;
}

static int fail_unknown(cfg_ctx_t *c, const yaml_node_t *kn, const nb__cfg_key_t *keys, const char *path,
                        const char *name)
{
    const char *best = NULL;
    int bd = 1000;
    for (const nb__cfg_key_t *k = keys; k->name; k++) {
        int d = nb_cfg_edit_distance(name, k->name);
        if (d < bd) {
            bd = d;
            best = k->name;
        }
    }
    int limit = (int)strlen(name) / 3;
    if (limit < 2)
        limit = 2;
    if (best && bd <= limit)
        return fail_node(c, kn, path, "unknown key; did you mean '%s'?", best);
    char where[CFG_KEY_PATH_MAX];
    if (find_elsewhere(nb__cfg_root, "", name, where))
        return fail_node(c, kn, path, "unknown key here; '%s' belongs in section '%s'", name, where);
    return fail_node(c, kn, path, "unknown key");
}

/* ---- scalars ------------------------------------------------------------------- */

static int parse_int(const char *s, long long *out)
{
    if (!*s)
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

static int parse_double(const char *s, double *out)
{
    if (!*s)
        return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

static int parse_bytes(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || !isfinite(v) || v < 0)
        return -1;
    while (*end == ' ')
        end++;
    static const struct { const char *suf; double mul; } sufs[] = {
        { "", 1 }, { "B", 1 }, { "K", 1e3 }, { "KB", 1e3 }, { "KiB", 1024.0 }, { "M", 1e6 }, { "MB", 1e6 },
        { "MiB", 1048576.0 }, { "G", 1e9 }, { "GB", 1e9 }, { "GiB", 1073741824.0 }, { "T", 1e12 },
        { "TB", 1e12 }, { "TiB", 1099511627776.0 },
    };
    for (size_t i = 0; i < NB_ARRAY_LEN(sufs); i++)
        if (strcmp(end, sufs[i].suf) == 0) {
            *out = floor(v * sufs[i].mul);
            return 0;
        }
    return -1;
}

int nb_cfg_parse_addr(const char *s, nb_cfg_addr_t *a, int min_port, char *msg, size_t ml)
{
    memset(a, 0, sizeof *a);
    if (strlen(s) >= sizeof a->text) {
        snprintf(msg, ml, "longer than %zu characters", sizeof a->text - 1);
        return -1;
    }
    snprintf(a->text, sizeof a->text, "%s", s);
    const char *colon;
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':') {
            snprintf(msg, ml, "expected [IPV6]:PORT, got '%s'", s);
            return -1;
        }
        snprintf(a->host, sizeof a->host, "%.*s", (int)(rb - s - 1), s + 1);
        colon = rb + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || colon == s || memchr(s, ':', (size_t)(colon - s))) {
            snprintf(msg, ml, "expected HOST:PORT, got '%s'", s);
            return -1;
        }
        snprintf(a->host, sizeof a->host, "%.*s", (int)(colon - s), s);
    }
    long long port;
    if (a->host[0] == 0 || parse_int(colon + 1, &port) != 0) {
        snprintf(msg, ml, "expected HOST:PORT, got '%s'", s);
        return -1;
    }
    if (port < min_port || port > 65535) {
        snprintf(msg, ml, "port must be between %d and 65535, got %lld", min_port, port);
        return -1;
    }
    a->port = (int)port;
    return 0;
}

static void fmt_num(char *out, size_t n, double v)
{
    if (v == floor(v) && fabs(v) < 1e15)
        snprintf(out, n, "%.0f", v);
    else
        snprintf(out, n, "%g", v);
}

static int check_bounds(const nb__cfg_key_t *k, double v, const char *text, char *msg, size_t ml)
{
    if (v >= k->min && v <= k->max)
        return 0;
    char lo[32], hi[32];
    fmt_num(lo, sizeof lo, k->min);
    fmt_num(hi, sizeof hi, k->max);
    snprintf(msg, ml, "out of bounds: must be between %s and %s, got %s", lo, hi, text);
    return -1;
}

/* Parses text into field per row k. Relative paths are joined to dir (NULL:
 * leave as written). Returns 0, or -1 with a message in msg. */
static int parse_scalar(const nb__cfg_key_t *k, const char *text, void *field, const char *dir, char *msg,
                        size_t ml)
{
    switch (k->type) {
    case NB__CFG_STR:
    case NB__CFG_PATH: {
        if (!*text) {
            snprintf(msg, ml, "must not be empty");
            return -1;
        }
        char buf[2 * NB_CFG_PATH_MAX];
        if (k->type == NB__CFG_PATH && dir && text[0] != '/' && strcmp(dir, ".") != 0)
            snprintf(buf, sizeof buf, "%s/%s", dir, text);
        else
            snprintf(buf, sizeof buf, "%s", text);
        if (strlen(buf) >= k->size) {
            snprintf(msg, ml, "longer than %zu characters", k->size - 1);
            return -1;
        }
        memcpy(field, buf, strlen(buf) + 1);
        return 0;
    }
    case NB__CFG_INT:
    case NB__CFG_INT_AUTO: {
        long long v;
        if (k->type == NB__CFG_INT_AUTO && strcmp(text, "auto") == 0) {
            *(int64_t *)field = 0;
            return 0;
        }
        if (parse_int(text, &v) != 0) {
            snprintf(msg, ml, "wrong type: expected an integer%s, got '%s'",
                     k->type == NB__CFG_INT_AUTO ? " or auto" : "", text);
            return -1;
        }
        if (check_bounds(k, (double)v, text, msg, ml))
            return -1;
        if (k->size == sizeof(int))
            *(int *)field = (int)v;
        else
            *(int64_t *)field = v;
        return 0;
    }
    case NB__CFG_U64: {
        char *end;
        errno = 0;
        if (!*text || text[0] == '-' || (strtoull(text, &end, 10), errno || *end)) {
            snprintf(msg, ml, "wrong type: expected a non-negative integer, got '%s'", text);
            return -1;
        }
        *(uint64_t *)field = strtoull(text, NULL, 10);
        return 0;
    }
    case NB__CFG_DOUBLE: {
        double v;
        if (parse_double(text, &v) != 0) {
            snprintf(msg, ml, "wrong type: expected a number, got '%s'", text);
            return -1;
        }
        if (check_bounds(k, v, text, msg, ml))
            return -1;
        *(double *)field = v;
        return 0;
    }
    case NB__CFG_BYTES: {
        double v;
        if (parse_bytes(text, &v) != 0) {
            snprintf(msg, ml, "wrong type: expected a size in bytes like 4096 or 16GiB, got '%s'", text);
            return -1;
        }
        if (check_bounds(k, v, text, msg, ml))
            return -1;
        *(uint64_t *)field = (uint64_t)v;
        return 0;
    }
    case NB__CFG_BOOL: {
        static const char *const yes[] = { "true", "yes", "on" }, *const no[] = { "false", "no", "off" };
        for (int i = 0; i < 3; i++) {
            if (strcasecmp(text, yes[i]) == 0) {
                *(bool *)field = true;
                return 0;
            }
            if (strcasecmp(text, no[i]) == 0) {
                *(bool *)field = false;
                return 0;
            }
        }
        snprintf(msg, ml, "wrong type: expected true or false, got '%s'", text);
        return -1;
    }
    case NB__CFG_ENUM: {
        char list[256] = "";
        for (int i = 0; k->names[i]; i++) {
            if (strcmp(text, k->names[i]) == 0) {
                *(int *)field = i;
                return 0;
            }
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", k->names[i]);
        }
        int best = -1, bd = 3; /* suggest only close misspellings */
        for (int i = 0; k->names[i]; i++) {
            int d = nb_cfg_edit_distance(text, k->names[i]);
            if (d < bd) {
                bd = d;
                best = i;
            }
        }
        if (best >= 0)
            snprintf(msg, ml, "must be one of %s; got '%s'; did you mean '%s'?", list, text, k->names[best]);
        else
            snprintf(msg, ml, "must be one of %s; got '%s'", list, text);
        return -1;
    }
    case NB__CFG_ADDR:
        return nb_cfg_parse_addr(text, field, (int)k->min, msg, ml);
    case NB__CFG_DEVICE: {
        nb_cfg_device_t *d = field;
        memset(d, 0, sizeof *d);
        long long idx;
        if (strcmp(text, "cpu") == 0) {
            d->index = -1;
        } else if (strncmp(text, "cuda:", 5) == 0 && parse_int(text + 5, &idx) == 0 && idx >= 0 && idx < 64) {
            d->cuda = true;
            d->index = (int)idx;
        } else {
            snprintf(msg, ml, "must be cpu or cuda:N (N from 0 to 63); got '%s'", text);
            return -1;
        }
        snprintf(d->text, sizeof d->text, "%s", text);
        return 0;
    }
    case NB__CFG_LAYERS: {
        nb_cfg_cluster_t *cl = field;
        long long a, b;
        char tail;
        if (strcmp(text, "auto") == 0) {
            cl->layers_auto = true;
            cl->layer_first = cl->layer_last = -1;
            return 0;
        }
        if (sscanf(text, "%lld-%lld%c", &a, &b, &tail) != 2 || a < 0 || b < a || b > 1023) {
            snprintf(msg, ml, "expected \"A-B\" (first and last block, 0 <= A <= B) or auto; got '%s'", text);
            return -1;
        }
        cl->layers_auto = false;
        cl->layer_first = (int)a;
        cl->layer_last = (int)b;
        return 0;
    }
    case NB__CFG_SECTION:
    case NB__CFG_LIST:
        break;
    }
    NB_CHECK(!"parse_scalar on a non-scalar row");
    return -1;
}

static void apply_defaults(const nb__cfg_key_t *keys, void *base)
{
    for (const nb__cfg_key_t *k = keys; k->name; k++) {
        char *field = (char *)base + k->off;
        if (k->type == NB__CFG_SECTION)
            apply_defaults(k->sub, field);
        else if (k->def && k->type != NB__CFG_LIST) {
            char msg[256];
            int rc = parse_scalar(k, k->def, field, NULL, msg, sizeof msg);
            NB_CHECK(rc == 0); /* a default that does not parse is a bug in the table */
        }
    }
}

/* ---- tree walk ------------------------------------------------------------------- */

static int parse_section(cfg_ctx_t *c, yaml_node_t *n, const nb__cfg_key_t *keys, void *base, const char *path);

static int parse_value(cfg_ctx_t *c, const nb__cfg_key_t *k, yaml_node_t *n, void *field, void *base,
                       const char *path)
{
    mark_put(c, path, n);
    if (n->type == YAML_SCALAR_NODE && n->data.scalar.length == 0 && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE)
        return fail_node(c, n, path, "missing value");
    if (k->type == NB__CFG_SECTION) {
        apply_defaults(k->sub, field);
        return parse_section(c, n, k->sub, field, path);
    }
    if (k->type == NB__CFG_LIST) {
        if (n->type != YAML_SEQUENCE_NODE)
            return fail_node(c, n, path, "wrong type: expected a list, got %s", node_kind(n));
        long count = n->data.sequence.items.top - n->data.sequence.items.start;
        if (count > k->max_items)
            return fail_node(c, n, path, "too many items: at most %d, got %ld", k->max_items, count);
        if (count == 0)
            return fail_node(c, n, path, "must have at least one item");
        for (long i = 0; i < count; i++) {
            yaml_node_t *item = yaml_document_get_node(c->doc, n->data.sequence.items.start[i]);
            char ip[CFG_KEY_PATH_MAX];
            snprintf(ip, sizeof ip, "%s[%ld]", path, i);
            char *ef = (char *)field + (size_t)i * k->sub->size;
            memset(ef, 0, k->sub->size);
            if (parse_value(c, k->sub, item, ef, ef, ip))
                return -1;
        }
        *(int *)((char *)base + k->count_off) = (int)count;
        return 0;
    }
    if (n->type != YAML_SCALAR_NODE)
        return fail_node(c, n, path, "wrong type: expected %s %s, got %s",
                         k->type == NB__CFG_INT ? "an" : "a", nb__cfg_type_name(k->type), node_kind(n));
    const char *text = (const char *)n->data.scalar.value;
    if (n->data.scalar.length != strlen(text))
        return fail_node(c, n, path, "contains a NUL byte");
    char msg[512];
    if (parse_scalar(k, text, field, c->dir, msg, sizeof msg))
        return fail_node(c, n, path, "%s", msg);
    if (k->validate) {
        const char *v = k->validate(field);
        if (v)
            return fail_node(c, n, path, "%s", v);
    }
    return 0;
}

static int parse_section(cfg_ctx_t *c, yaml_node_t *n, const nb__cfg_key_t *keys, void *base, const char *path)
{
    if (n->type != YAML_MAPPING_NODE)
        return fail_node(c, n, path[0] ? path : "(top)", "wrong type: expected a mapping, got %s", node_kind(n));
    int nkeys = 0;
    while (keys[nkeys].name)
        nkeys++;
    NB_CHECK(nkeys <= 32);
    int seen_line[32] = { 0 };
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(c->doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(c->doc, p->value);
        if (kn->type != YAML_SCALAR_NODE)
            return fail_node(c, kn, path[0] ? path : "(top)", "keys must be plain names, got %s", node_kind(kn));
        const char *name = (const char *)kn->data.scalar.value;
        char kp[CFG_KEY_PATH_MAX];
        join_path(kp, path, name);
        int i = 0;
        while (i < nkeys && strcmp(keys[i].name, name) != 0)
            i++;
        if (i == nkeys)
            return fail_unknown(c, kn, keys, kp, name);
        const nb__cfg_key_t *k = &keys[i];
        if (seen_line[i])
            return fail_node(c, kn, kp, "duplicate key (first set on line %d)", seen_line[i]);
        seen_line[i] = (int)kn->start_mark.line + 1;
        if (k->roles && !(k->roles & NB__ROLE(c->role))) {
            char allowed[64] = "";
            for (int r = 0; r < 3; r++)
                if (k->roles & NB__ROLE(r))
                    snprintf(allowed + strlen(allowed), sizeof allowed - strlen(allowed), "%s%s",
                             allowed[0] ? ", " : "", nb_cfg_role_name((nb_cfg_role_t)r));
            return fail_node(c, kn, kp, "not allowed for role %s (only for %s)", nb_cfg_role_name(c->role), allowed);
        }
        if (parse_value(c, k, vn, (char *)base + k->off, base, kp))
            return -1;
    }
    for (int i = 0; i < nkeys; i++)
        if (!seen_line[i] && (keys[i].required & NB__ROLE(c->role))) {
            char kp[CFG_KEY_PATH_MAX];
            join_path(kp, path, keys[i].name);
            return fail_node(c, n, kp, "missing required key (role %s)", nb_cfg_role_name(c->role));
        }
    return 0;
}

/* ---- rules across keys ----------------------------------------------------------- */

/* job.electra (role train): job.model is the discriminator, each generator
 * brings its own model, data and optimizer. */
/* Whether the file gave the key at path (or anything under it). */
static bool cfg_given(const cfg_ctx_t *c, const char *path)
{
    size_t l = strlen(path);
    for (int i = 0; i < c->n_marks; i++)
        if (strncmp(c->marks[i].path, path, l) == 0 &&
            (c->marks[i].path[l] == 0 || c->marks[i].path[l] == '.' || c->marks[i].path[l] == '['))
            return true;
    return false;
}

/* Keys of a pipeline job that the daemons of an electra job do not use. */
static const struct {
    const char *path, *why;
} electra_unused[] = {
    { "job.freeze", "not used by an electra job: the discriminator and every generator train all their tensors" },
    { "job.trainable", "not used by an electra job: the discriminator and every generator train all their tensors" },
    { "job.adapters", "not used by an electra job: its models train from scratch, without adapters" },
    { "job.codecs", "not used by an electra job: the generators send token IDs (codec electra-wire), no "
                    "activations or gradients" },
    { "job.planner", "not used by an electra job: there is no pipeline to plan (one micro-batch per generator)" },
};

/* Bounds of an electra job across daemons: a generator daemon refuses an
 * ElectraJob beyond them (daemon/pipeline/electra_msg.c). */
#define NB_CFG_ELECTRA_MAX_STEPS 100000000LL
#define NB_CFG_ELECTRA_MAX_SEQ 65536

static int check_electra(cfg_ctx_t *c, nb_config_t *cfg)
{
    nb_cfg_job_t *j = &cfg->job;
    nb_cfg_electra_t *e = &j->electra;
    if (j->precision != NB_CFG_PREC_FP32 && (e->n_generators > 0 || j->encoder.present))
        return fail_path(c, "job.precision", "bf16 is for decoder and encoder pipelines and nebula-train's "
                         "single model; an electra or encoder-decoder job runs in fp32");
    if (e->n_generators == 0) {
        if (c->role == NB_ROLE_TRAIN && !j->data[0] && !j->encoder.present)
            return fail_path(c, "job.data", "missing required key (role train)");
        return 0;
    }
    if (j->data[0])
        return fail_path(c, "job.data", "not used by an electra job: each generator reads its own "
                         "job.electra.generators[].data");
    if (j->model.head != NB_HEAD_TOKCLS || j->model.n_classes != 2)
        return fail_path(c, "job.model.head", "the discriminator of an electra job needs head tokcls with "
                         "n_classes 2 (replaced-token detection)");
    if (j->micro_batches != 0)
        return fail_path(c, "job.micro_batches", "an electra job takes one micro-batch per generator; leave it auto");
    if (j->eval.fraction > 0 || j->eval.data[0])
        return fail_path(c, "job.eval", "not supported by an electra job");
    /* the daemons of an electra job: what a generator daemon accepts in an
     * ElectraJob (nb_electra_job_from_msg) bounds the whole job */
    if (c->role == NB_ROLE_COORDINATOR && j->steps > NB_CFG_ELECTRA_MAX_STEPS)
        return fail_path(c, "job.steps", "an electra job across daemons runs at most %lld steps (what a generator "
                         "daemon accepts), got %lld", (long long)NB_CFG_ELECTRA_MAX_STEPS, (long long)j->steps);
    if (c->role == NB_ROLE_COORDINATOR && j->seq_len > NB_CFG_ELECTRA_MAX_SEQ)
        return fail_path(c, "job.seq_len", "an electra job across daemons takes at most %d tokens per sequence "
                         "(what a generator daemon accepts), got %lld", NB_CFG_ELECTRA_MAX_SEQ, (long long)j->seq_len);
    int64_t total = 0;
    char p[CFG_KEY_PATH_MAX];
    for (int i = 0; i < e->n_generators; i++) {
        nb_cfg_generator_t *g = &e->generators[i];
        nb_cfg_model_t *m = &g->model;
        total += g->sequences;
        if (g->seed == 0)
            g->seed = j->seed + 1 + (uint64_t)i;
        if (m->d_ff == 0)
            m->d_ff = 4 * m->d_model;
        snprintf(p, sizeof p, "job.electra.generators[%d].model.n_head", i);
        if (m->d_model % m->n_head)
            return fail_path(c, p, "must divide d_model (%d), got %d", m->d_model, m->n_head);
        snprintf(p, sizeof p, "job.electra.generators[%d].model.head", i);
        if (m->head != NB_HEAD_MLM)
            return fail_path(c, p, "a generator is a masked language model: head must be mlm, got %s",
                             nb_cfg_head_name(m->head));
        snprintf(p, sizeof p, "job.electra.generators[%d].model.max_seq", i);
        if (m->max_seq < j->seq_len)
            return fail_path(c, p, "must be at least job.seq_len (%lld), got %d", (long long)j->seq_len, m->max_seq);
        if (c->role == NB_ROLE_COORDINATOR && m->max_seq > NB_CFG_ELECTRA_MAX_SEQ)
            return fail_path(c, p, "a generator daemon accepts at most %d, got %d", NB_CFG_ELECTRA_MAX_SEQ, m->max_seq);
        snprintf(p, sizeof p, "job.electra.generators[%d].optimizer.min_lr", i);
        if (g->optimizer.min_lr > g->optimizer.lr)
            return fail_path(c, p, "must not exceed lr (%g), got %g", g->optimizer.lr, g->optimizer.min_lr);
        snprintf(p, sizeof p, "job.electra.generators[%d].model", i);
        if (e->tie_embeddings && (m->d_model != j->model.d_model || m->vocab != j->model.vocab))
            return fail_path(c, p, "job.electra.tie_embeddings needs every generator's d_model and vocab equal to "
                             "the discriminator's (%d, %d), got %d, %d", j->model.d_model, j->model.vocab,
                             m->d_model, m->vocab);
        snprintf(p, sizeof p, "job.electra.generators[%d].name", i);
        for (int k = 0; k < i; k++)
            if (strcmp(g->name, e->generators[k].name) == 0)
                return fail_path(c, p, "duplicate generator name '%s' (also generators[%d])", g->name, k);
    }
    if (c->role == NB_ROLE_COORDINATOR && (j->n_clusters > 0 || j->init[0] || j->checkpoint.every_steps > 0 ||
                                           j->checkpoint.every_seconds > 0))
        return fail_path(c, j->n_clusters > 0 ? "job.clusters" : j->init[0] ? "job.init" : "job.checkpoint",
                         "not used by an electra job: the generators are the daemons named in "
                         "job.electra.generators[].name (docs/electra.md)");
    for (size_t k = 0; c->role == NB_ROLE_COORDINATOR && k < sizeof electra_unused / sizeof electra_unused[0]; k++)
        if (cfg_given(c, electra_unused[k].path))
            return fail_path(c, electra_unused[k].path, "%s (docs/electra.md)", electra_unused[k].why);
    if (j->batch != total)
        return fail_path(c, "job.batch", "must equal the sum of job.electra.generators[].sequences (%lld), got %lld",
                         (long long)total, (long long)j->batch);
    return 0;
}

/* Keys of an encoder-decoder job's model that only a head uses: an
 * encoder has none (its last block's output is what the decoder reads). */
static const char *const encoder_head_keys[] = { "head", "n_classes", "tie_embeddings", "mask_token" };

/* Keys of a one-model job that an encoder-decoder job does not use. */
static const struct {
    const char *path, *why;
} encdec_unused[] = {
    { "job.data", "not used by an encoder-decoder job: its (source, target) pairs come from job.spans.text" },
    { "job.eval", "not used by an encoder-decoder job: its held-out windows are every job.spans.hold-th window of "
                  "each text, scored at the end" },
    { "job.electra", "an encoder-decoder job is not an electra job: remove one of job.encoder and job.electra" },
    { "job.lowrank", "not supported in an encoder-decoder job yet" },
    { "job.clusters", "not used by an encoder-decoder job: its two daemons are job.encoder.daemon (the encoder) "
                      "and this one (the decoder; docs/finetune.md)" },
    { "job.schedule", "not used by an encoder-decoder job: its micro-batches run in lock-step (docs/finetune.md)" },
    { "job.planner", "not used by an encoder-decoder job: there is no plan to choose (docs/finetune.md)" },
    { "job.topology", "not used by an encoder-decoder job: its two halves are the encoder and the decoder" },
};

/* job.encoder and job.spans (role train): job.model is the decoder, with
 * cross-attention to the encoder's output. Also refuses cross_attn in a
 * model that has no encoder to read. */
static int check_encdec(cfg_ctx_t *c, nb_config_t *cfg)
{
    nb_cfg_job_t *j = &cfg->job;
    nb_cfg_model_t *m = &j->model, *e = &j->encoder.model;
    char p[CFG_KEY_PATH_MAX];
    j->encoder.present = cfg_given(c, "job.encoder");
    for (int i = 0; i < j->electra.n_generators; i++)
        if (j->electra.generators[i].model.cross_attn) {
            snprintf(p, sizeof p, "job.electra.generators[%d].model.cross_attn", i);
            return fail_path(c, p, "a generator reads no encoder output: remove cross_attn");
        }
    if (!j->encoder.present) {
        if (m->cross_attn)
            return fail_path(c, "job.model.cross_attn", "a decoder reads an encoder's output, and this job has none: "
                             "add job.encoder (an encoder-decoder job, role train; docs/finetune.md) or remove "
                             "cross_attn");
        if (cfg_given(c, "job.spans"))
            return fail_path(c, "job.spans", "the span task trains an encoder-decoder pair: add job.encoder "
                             "(job.model is then the decoder)");
        return 0;
    }
    for (size_t i = 0; i < NB_ARRAY_LEN(encdec_unused); i++)
        if (cfg_given(c, encdec_unused[i].path))
            return fail_path(c, encdec_unused[i].path, "%s", encdec_unused[i].why);
    if (!m->cross_attn)
        return fail_path(c, "job.model.cross_attn", "job.model is the decoder of this encoder-decoder job: it needs "
                         "cross_attn: true (its blocks read the encoder's output)");
    if (m->head != NB_HEAD_LM)
        return fail_path(c, "job.model.head", "the decoder of an encoder-decoder job generates the target tokens: "
                         "head must be lm, got %s", nb_cfg_head_name(m->head));
    if (!m->causal)
        return fail_path(c, "job.model.causal", "the decoder of an encoder-decoder job must be causal: trained with "
                         "teacher forcing, a position that sees the next input learns to copy it, and greedy "
                         "decoding would read the positions not generated yet");
    if (j->output[0] && j->encoder.output[0] && strcmp(j->output, j->encoder.output) == 0)
        return fail_path(c, "job.encoder.output", "the same file as job.output (%s): the decoder's weights would "
                         "overwrite the encoder's; give each its own file", j->output);
    if (!cfg_given(c, "job.spans"))
        return fail_path(c, "job.spans", "missing: an encoder-decoder job needs its task (job.spans: the text, the "
                         "tokenizer and the span lengths)");
    for (size_t i = 0; i < NB_ARRAY_LEN(encoder_head_keys); i++) {
        snprintf(p, sizeof p, "job.encoder.model.%s", encoder_head_keys[i]);
        if (cfg_given(c, p))
            return fail_path(c, p, "an encoder has no head: the decoder's cross-attention reads the output of its "
                             "last block; remove %s", encoder_head_keys[i]);
    }
    if (e->cross_attn)
        return fail_path(c, "job.encoder.model.cross_attn", "the encoder reads only the source tokens: its blocks "
                         "have no cross-attention; remove cross_attn");
    if (!cfg_given(c, "job.encoder.model.causal"))
        e->causal = false; /* an encoder sees the whole source */
    if (e->d_model % e->n_head)
        return fail_path(c, "job.encoder.model.n_head", "must divide d_model (%d), got %d", e->d_model, e->n_head);
    if (e->d_ff == 0)
        e->d_ff = 4 * e->d_model;
    if (e->d_model != m->d_model)
        return fail_path(c, "job.encoder.model.d_model", "%d, but the decoder's cross-attention (job.model.d_model) "
                         "reads encoder states of width %d: they must be equal (there is no projection between "
                         "them)", e->d_model, m->d_model);
    if (j->seq_len > e->max_seq)
        return fail_path(c, "job.seq_len", "the encoder reads job.seq_len positions (a window of job.seq_len - 2 "
                         "tokens between [CLS] and [SEP]): must not exceed job.encoder.model.max_seq (%d), got %lld",
                         e->max_seq, (long long)j->seq_len);
    nb_cfg_spans_t *sp = &j->spans;
    if (sp->min_tokens > sp->max_tokens)
        return fail_path(c, "job.spans.min_tokens", "must not exceed max_tokens (%d), got %d", sp->max_tokens,
                         sp->min_tokens);
    if (sp->max_tokens + 1 > m->max_seq)
        return fail_path(c, "job.spans.max_tokens", "the decoder reads max_tokens + 1 positions ([CLS] and the "
                         "span): must be below job.model.max_seq (%d), got %d", m->max_seq, sp->max_tokens);
    if (j->seq_len - 2 <= sp->max_tokens)
        return fail_path(c, "job.seq_len", "a window of job.seq_len - 2 = %lld tokens leaves no context around a span "
                         "of job.spans.max_tokens = %d: make seq_len at least %d", (long long)j->seq_len - 2,
                         sp->max_tokens, sp->max_tokens + 3);
    return 0;
}

static int check_job(cfg_ctx_t *c, nb_config_t *cfg)
{
    nb_cfg_job_t *j = &cfg->job;
    nb_cfg_model_t *m = &j->model;
    if (check_encdec(c, cfg) || check_electra(c, cfg))
        return -1;
    if (m->d_model % m->n_head)
        return fail_path(c, "job.model.n_head", "must divide d_model (%d), got %d", m->d_model, m->n_head);
    if (m->d_ff == 0)
        m->d_ff = 4 * m->d_model;
    if ((m->head == NB_HEAD_SEQCLS || m->head == NB_HEAD_TOKCLS) && m->n_classes < 2)
        return fail_path(c, "job.model.n_classes", "head %s needs n_classes >= 2, got %d",
                         nb_cfg_head_name(m->head), m->n_classes);
    /* a pipeline must equal nebula-train, which trains on a token file: no
     * class labels to draw (daemon/pipeline/job.c refuses these too) */
    bool electra = j->electra.n_generators > 0;
    if (c->role == NB_ROLE_COORDINATOR && !electra && (m->head == NB_HEAD_SEQCLS || m->head == NB_HEAD_TOKCLS))
        return fail_path(c, "job.model.head", "head %s is not supported in a pipeline (the token file holds no "
                         "class labels, and nebula-train trains lm and mlm only); use lm or mlm",
                         nb_cfg_head_name(m->head));
    /* low-rank split: the block must exist, the rank fit the layer (the
     * kernel's nb_lowrank_check says the same at job time) */
    if (j->lowrank.rank > 0 && j->lowrank.block >= m->n_layer)
        return fail_path(c, "job.lowrank.block", "the model has no block %d (blocks 0..%d of job.model.n_layer %d)",
                         j->lowrank.block, m->n_layer - 1, m->n_layer);
    if (j->lowrank.rank > m->d_model || j->lowrank.rank > m->d_ff)
        return fail_path(c, "job.lowrank.rank", "%d is larger than the split layer h%d.fcproj.w (%d x %d): at most "
                         "%d", j->lowrank.rank, j->lowrank.block, m->d_model, m->d_ff,
                         m->d_model < m->d_ff ? m->d_model : m->d_ff);
    if (j->seq_len > m->max_seq && !j->encoder.present)
        return fail_path(c, "job.seq_len", "out of bounds: must not exceed model.max_seq (%d), got %lld", m->max_seq,
                         (long long)j->seq_len);
    if (j->micro_batches > 0 && (j->micro_batches > j->batch || j->batch % j->micro_batches))
        return fail_path(c, "job.micro_batches", "must divide batch (%lld), got %lld", (long long)j->batch,
                         (long long)j->micro_batches);
    if (j->optimizer.min_lr > j->optimizer.lr)
        return fail_path(c, "job.optimizer.min_lr", "must not exceed lr (%g), got %g", j->optimizer.lr,
                         j->optimizer.min_lr);
    if (j->eval.fraction > 0 && j->eval.data[0])
        return fail_path(c, "job.eval.data", "eval.fraction and eval.data exclude each other (fraction %g): "
                         "hold out a share of the token file or another file, not both", j->eval.fraction);
    /* Nothing in a pipeline job writes job.output yet: refuse it rather
     * than leave an operator looking for a file that never comes. */
    bool encdec = j->encoder.present;
    if (c->role == NB_ROLE_COORDINATOR && !electra && !encdec && j->output[0])
        return fail_path(c, "job.output", "not written by a pipeline job: each stage daemon writes its part of the "
                         "model to its own checkpoint_dir as final-stageS.weights; remove job.output (only role "
                         "train, nebula-train, writes it)");
    if (c->role == NB_ROLE_COORDINATOR && !electra && !encdec && j->n_clusters == 0)
        return fail_path(c, "job.clusters", "missing required key (role coordinator)");
    if (j->n_clusters == 0)
        return 0;
    if (j->topology == NB_TOPO_USHAPE && j->n_clusters < 2)
        return fail_path(c, "job.topology", "ushape needs at least 2 clusters, got %d", j->n_clusters);
    if (m->tie_embeddings && j->topology == NB_TOPO_CHAIN && j->n_clusters > 1)
        return fail_path(c, "job.model.tie_embeddings", "a chain of %d clusters puts the embedding and the head on "
                         "different daemons, and tied embeddings need both on one: set tie_embeddings: false or "
                         "topology: ushape", j->n_clusters);
    for (int i = 0; i < j->n_clusters; i++)
        for (int k = 0; k < i; k++)
            if (strcmp(j->clusters[i].name, j->clusters[k].name) == 0) {
                char p[CFG_KEY_PATH_MAX];
                snprintf(p, sizeof p, "job.clusters[%d].name", i);
                return fail_path(c, p, "duplicate cluster name '%s' (also clusters[%d])", j->clusters[i].name, k);
            }
    /* Each cluster's daemon listens on its own address: two clusters on one
     * address would make a stage dial itself, and the job would never get
     * its links up. */
    for (int i = 0; i < j->n_clusters; i++)
        for (int k = 0; k < i; k++)
            if (j->clusters[i].address.host[0] &&
                strcasecmp(j->clusters[i].address.host, j->clusters[k].address.host) == 0 &&
                j->clusters[i].address.port == j->clusters[k].address.port) {
                char p[CFG_KEY_PATH_MAX];
                snprintf(p, sizeof p, "job.clusters[%d].address", i);
                return fail_path(c, p, "duplicate address '%s': clusters[%d] (%s) has it too; every cluster's "
                                 "daemon needs its own", j->clusters[i].address.text, k, j->clusters[k].name);
            }
    int n_auto = 0;
    for (int i = 0; i < j->n_clusters; i++)
        n_auto += j->clusters[i].layers_auto;
    if (n_auto == j->n_clusters) {
        if (j->n_clusters > m->n_layer)
            return fail_path(c, "job.clusters", "%d clusters but the model has only %d layers", j->n_clusters,
                             m->n_layer);
        return 0;
    }
    char p[CFG_KEY_PATH_MAX];
    if (n_auto) {
        for (int i = 0; i < j->n_clusters; i++)
            if (j->clusters[i].layers_auto) {
                snprintf(p, sizeof p, "job.clusters[%d].layers", i);
                return fail_path(c, p, "mixing auto and explicit layer ranges; give every cluster a range or none");
            }
    }
    int next = 0;
    for (int i = 0; i < j->n_clusters; i++) {
        nb_cfg_cluster_t *cl = &j->clusters[i];
        snprintf(p, sizeof p, "job.clusters[%d].layers", i);
        if (cl->layer_first != next)
            return fail_path(c, p, "layer ranges do not cover the model exactly: range %d-%d should start at block %d "
                             "(the model has %d layers, 0-%d)", cl->layer_first, cl->layer_last, next, m->n_layer,
                             m->n_layer - 1);
        if (cl->layer_last >= m->n_layer)
            return fail_path(c, p, "layer ranges do not cover the model exactly: range %d-%d ends past the last "
                             "block %d", cl->layer_first, cl->layer_last, m->n_layer - 1);
        next = cl->layer_last + 1;
    }
    if (next != m->n_layer)
        return fail_path(c, p, "layer ranges do not cover the model exactly: they end at block %d but the model has "
                         "%d layers (0-%d)", next - 1, m->n_layer, m->n_layer - 1);
    return 0;
}

static int check_all(cfg_ctx_t *c, nb_config_t *cfg)
{
    if (cfg->n_devices == 0) {
        cfg->n_devices = 1;
        snprintf(cfg->devices[0].text, sizeof cfg->devices[0].text, "cpu");
        cfg->devices[0].index = -1;
    }
    /* Each device runs one replica of the daemon's stages (docs/pipeline.md,
     * "Replicas"): CPU replicas share the host's cores and may repeat; a GPU
     * holds one replica, and one stage runs on one kind of device. */
    for (int i = 0; i < cfg->n_devices; i++) {
        char p[32];
        snprintf(p, sizeof p, "devices[%d]", i);
        if (cfg->devices[i].cuda != cfg->devices[0].cuda)
            return fail_path(c, p, "'%s' after '%s': the replicas of a stage run on one kind of device; list only "
                             "cpu or only cuda:N devices", cfg->devices[i].text, cfg->devices[0].text);
        for (int j = 0; j < i; j++)
            if (cfg->devices[i].cuda && cfg->devices[j].index == cfg->devices[i].index)
                return fail_path(c, p, "%s is listed twice (devices[%d] and devices[%d]); each replica needs a "
                                 "device of its own", cfg->devices[i].text, j, i);
    }
    if (cfg->status_socket[0] == 0)
        snprintf(cfg->status_socket, sizeof cfg->status_socket, "/run/nebula/%s.sock", cfg->name);
    if (cfg->heartbeat_timeout_s <= cfg->heartbeat_interval_s)
        return fail_path(c, "heartbeat_timeout_s", "must exceed heartbeat_interval_s (%g), got %g",
                         cfg->heartbeat_interval_s, cfg->heartbeat_timeout_s);
    if (cfg->role == NB_ROLE_STAGE) {
        if (cfg->electra_generator && !cfg->data[0])
            return fail_path(c, "data", "missing: an ELECTRA generator daemon (electra_generator: true) trains on "
                             "its own token file");
        bool job = cfg_given(c, "job");
        if (job && !cfg->encdec_encoder)
            return fail_path(c, "job", "a stage daemon gets its job from the coordinator; only the encoder's daemon "
                             "of an encoder-decoder job (encdec_encoder: true) reads its own job section");
        if (!cfg->encdec_encoder)
            return 0;
        if (!job)
            return fail_path(c, "encdec_encoder", "the encoder's daemon needs the job's section (job, with job.encoder "
                             "and job.spans, as the decoder's daemon has it; docs/finetune.md)");
        if (check_job(c, cfg))
            return -1;
        if (!cfg->job.encoder.present)
            return fail_path(c, "job.encoder", "missing: the encoder's daemon (encdec_encoder: true) runs job.encoder");
        cfg->job.present = true;
        return 0;
    }
    cfg->job.present = true;
    return check_job(c, cfg);
}

/* ---- entry points ---------------------------------------------------------------- */

/* Walks the event stream and stops at the first collection nested deeper
 * than CFG_DEPTH_MAX, which it reports at its position. Syntax errors are
 * left to the load that follows (it reports them the same way). Stops after
 * reading at most CFG_DEPTH_MAX + 1 levels, so a deep file costs no more
 * than a shallow one. */
static int check_depth(cfg_ctx_t *c, const char *text, size_t len)
{
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser))
        return NB_ENOMEM;
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    int depth = 0, rc = 0;
    for (;;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev))
            break;
        yaml_event_type_t t = ev.type;
        if (t == YAML_MAPPING_START_EVENT || t == YAML_SEQUENCE_START_EVENT) {
            if (++depth > CFG_DEPTH_MAX) {
                fail_at(c, (int)ev.start_mark.line + 1, (int)ev.start_mark.column + 1, "yaml",
                        "nesting deeper than %d levels of mappings and lists", CFG_DEPTH_MAX);
                rc = NB_ELIMIT;
            }
        } else if (t == YAML_MAPPING_END_EVENT || t == YAML_SEQUENCE_END_EVENT) {
            depth--;
        }
        yaml_event_delete(&ev);
        if (rc || t == YAML_STREAM_END_EVENT)
            break;
    }
    yaml_parser_delete(&parser);
    return rc;
}

static int load_doc(cfg_ctx_t *c, const char *text, size_t len, nb_config_t *out)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    int rc = check_depth(c, text, len);
    if (rc)
        return rc;
    rc = NB_EINVAL;
    if (!yaml_parser_initialize(&parser))
        return NB_ENOMEM;
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        fail_at(c, (int)parser.problem_mark.line + 1, (int)parser.problem_mark.column + 1, "yaml", "%s%s%s",
                parser.problem ? parser.problem : "syntax error", parser.context ? " " : "",
                parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        return NB_EFORMAT;
    }
    c->doc = &doc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) {
        fail_at(c, 1, 1, "role", "missing required key (the file is empty)");
        goto out;
    }
    mark_put(c, "", root);
    if (root->type != YAML_MAPPING_NODE) {
        fail_node(c, root, "(top)", "wrong type: expected a mapping of keys, got %s", node_kind(root));
        goto out;
    }
    /* The role decides which keys are required or allowed: read it first. */
    bool have_role = false;
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(&doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(&doc, p->value);
        if (kn->type == YAML_SCALAR_NODE && strcmp((const char *)kn->data.scalar.value, "role") == 0) {
            const nb__cfg_key_t *k = nb__cfg_root;
            while (strcmp(k->name, "role") != 0)
                k++;
            int role;
            if (parse_value(c, k, vn, &role, out, "role"))
                goto out;
            c->role = (nb_cfg_role_t)role;
            have_role = true;
        }
    }
    if (!have_role) {
        fail_node(c, root, "role", "missing required key (coordinator, stage or train)");
        goto out;
    }
    apply_defaults(nb__cfg_root, out);
    if (parse_section(c, root, nb__cfg_root, out, "") || check_all(c, out))
        goto out;
    rc = 0;
out:
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    return rc;
}

static cfg_ctx_t *ctx_new(const char *name, char *err, size_t errlen)
{
    cfg_ctx_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->file = name;
    c->err = err;
    c->errlen = errlen;
    char tmp[NB_CFG_PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", name);
    snprintf(c->dir, sizeof c->dir, "%s", dirname(tmp));
    return c;
}

int nb_cfg_load_string(const char *name, const char *text, size_t len, nb_config_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (err && errlen)
        err[0] = 0;
    cfg_ctx_t *c = ctx_new(name, err, errlen);
    if (!c)
        return NB_ENOMEM;
    snprintf(out->path, sizeof out->path, "%s", name);
    int rc = load_doc(c, text, len, out);
    free(c);
    if (rc) {
        char keep[NB_CFG_PATH_MAX];
        snprintf(keep, sizeof keep, "%s", name);
        memset(out, 0, sizeof *out);
        snprintf(out->path, sizeof out->path, "%s", keep);
    }
    return rc;
}

int nb_cfg_load(const char *path, nb_config_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        int e = f ? (S_ISDIR(st.st_mode) ? EISDIR : EINVAL) : errno;
        if (f)
            fclose(f);
        if (err && errlen)
            snprintf(err, errlen, "%s: cannot read config file: %s", path,
                     e == EINVAL ? "not a regular file" : strerror(e));
        return NB_EIO;
    }
    if ((size_t)st.st_size > CFG_FILE_MAX) {
        fclose(f);
        if (err && errlen)
            snprintf(err, errlen, "%s: config file is larger than %u bytes", path, CFG_FILE_MAX);
        return NB_ELIMIT;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        fclose(f);
        return NB_ENOMEM;
    }
    size_t n = fread(buf, 1, (size_t)st.st_size, f);
    int rerr = ferror(f);
    fclose(f);
    if (rerr) {
        free(buf);
        if (err && errlen)
            snprintf(err, errlen, "%s: cannot read config file: %s", path, strerror(EIO));
        return NB_EIO;
    }
    buf[n] = 0;
    int rc = nb_cfg_load_string(path, buf, n, out, err, errlen);
    free(buf);
    return rc;
}

/* ---- key enumeration -------------------------------------------------------------- */

static void each_key(const nb__cfg_key_t *keys, const char *prefix, nb_cfg_key_cb fn, void *ud)
{
    for (const nb__cfg_key_t *k = keys; k->name; k++) {
        char p[CFG_KEY_PATH_MAX];
        join_path(p, prefix, k->name);
        if (k->type == NB__CFG_SECTION) {
            each_key(k->sub, p, fn, ud);
        } else if (k->type == NB__CFG_LIST && k->sub->type == NB__CFG_SECTION) {
            strncat(p, "[]", sizeof p - strlen(p) - 1);
            each_key(k->sub->sub, p, fn, ud);
        } else {
            fn(p, nb__cfg_type_name(k->type), k->def, k->required != 0, ud);
        }
    }
}

void nb_cfg_each_key(nb_cfg_key_cb fn, void *ud)
{
    each_key(nb__cfg_root, "", fn, ud);
}
