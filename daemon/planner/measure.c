/*
 * measure.c - JSON measurements file -> nb_cost_t (see measure.h).
 */
#include "daemon/planner/measure.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/planner/replica.h"
#include "kernels/common.h"

typedef struct {
    const char *name;
    char *err;
    size_t errlen;
} ctx_t;

static int fail(ctx_t *c, int rc, const char *fmt, ...)
{
    if (c->err && c->errlen) {
        int off = snprintf(c->err, c->errlen, "%s: ", c->name);
        if (off < 0 || (size_t)off >= c->errlen)
            return rc;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err + off, c->errlen - (size_t)off, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* Rejects keys outside allowed (NULL-terminated) so that a misspelt
 * optional field is an error, not a silent default. "comment" is always
 * allowed. */
static int known_keys(ctx_t *c, json_t *obj, const char *path, const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        (void)v;
        int ok = strcmp(key, "comment") == 0;
        for (const char *const *a = allowed; !ok && *a; a++)
            ok = strcmp(key, *a) == 0;
        if (!ok)
            return fail(c, NB_EFORMAT, "%s%s%s: unknown field", path, path[0] ? "." : "", key);
    }
    return 0;
}

/* A number >= lo at obj[key]; required unless def is not NAN. */
static int num(ctx_t *c, json_t *obj, const char *path, const char *key, double lo, double def,
               double *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        if (!isnan(def)) {
            *out = def;
            return 0;
        }
        return fail(c, NB_EFORMAT, "%s.%s: missing", path, key);
    }
    if (!json_is_number(v))
        return fail(c, NB_EFORMAT, "%s.%s: expected a number", path, key);
    double d = json_number_value(v);
    if (!isfinite(d) || d < lo)
        return fail(c, NB_EFORMAT, "%s.%s: %g is out of range (must be >= %g)", path, key, d, lo);
    *out = d;
    return 0;
}

/* A fit: {"a": s, "b": s per sample} or {"sizes": [...], "times": [...]}. */
static int fit(ctx_t *c, json_t *obj, const char *path, const char *key, int required,
               nb_fit_t *out)
{
    char sub[128];
    snprintf(sub, sizeof sub, "%s.%s", path, key);
    json_t *f = json_object_get(obj, key);
    if (!f) {
        if (required)
            return fail(c, NB_EFORMAT, "%s: missing", sub);
        *out = (nb_fit_t){0, 0};
        return 0;
    }
    if (!json_is_object(f))
        return fail(c, NB_EFORMAT, "%s: expected an object {\"a\", \"b\"} or {\"sizes\", \"times\"}",
                    sub);
    static const char *const fit_keys[] = {"a", "b", "sizes", "times", NULL};
    int krc = known_keys(c, f, sub, fit_keys);
    if (krc)
        return krc;
    json_t *sizes = json_object_get(f, "sizes"), *times = json_object_get(f, "times");
    if (sizes || times) {
        if (!json_is_array(sizes) || !json_is_array(times) || json_array_size(sizes) == 0 ||
            json_array_size(sizes) != json_array_size(times) || json_array_size(sizes) > 64)
            return fail(c, NB_EFORMAT,
                        "%s: sizes and times must be arrays of the same length (1..64)", sub);
        double n[64], t[64];
        int k = (int)json_array_size(sizes);
        for (int i = 0; i < k; i++) {
            json_t *a = json_array_get(sizes, (size_t)i), *b = json_array_get(times, (size_t)i);
            if (!json_is_number(a) || !json_is_number(b))
                return fail(c, NB_EFORMAT, "%s: sizes[%d] / times[%d] must be numbers", sub, i,
                            i);
            n[i] = json_number_value(a);
            t[i] = json_number_value(b);
        }
        if (nb_fit_least_squares(n, t, k, out) != 0)
            return fail(c, NB_EFORMAT, "%s: sizes and times must be finite and >= 0", sub);
        return 0;
    }
    int rc = num(c, f, sub, "a", 0, NAN, &out->a);
    if (rc == 0)
        rc = num(c, f, sub, "b", 0, NAN, &out->b);
    return rc;
}

static int parse_dir(ctx_t *c, json_t *link, const char *path, const char *key,
                     nb_cost_dir_t *out)
{
    char sub[128];
    snprintf(sub, sizeof sub, "%s.%s", path, key);
    json_t *d = json_object_get(link, key);
    if (!json_is_object(d))
        return fail(c, NB_EFORMAT, "%s: missing or not an object", sub);
    static const char *const dir_keys[] = {"latency_ms", "bandwidth_mbit", "overhead_ms", NULL};
    double lat, bw, ovh;
    int rc = known_keys(c, d, sub, dir_keys);
    if (rc == 0)
        rc = num(c, d, sub, "latency_ms", 0, NAN, &lat);
    if (rc == 0)
        rc = num(c, d, sub, "bandwidth_mbit", 1e-6, NAN, &bw);
    if (rc == 0)
        rc = num(c, d, sub, "overhead_ms", 0, 0.0, &ovh);
    if (rc)
        return rc;
    out->latency = lat / 1000;
    out->bandwidth = bw * 1e6 / 8;
    out->overhead = ovh / 1000;
    return 0;
}

static int copy_name(ctx_t *c, json_t *obj, const char *path, const char *key, int required,
                     char *dst, size_t len)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        if (required)
            return fail(c, NB_EFORMAT, "%s.%s: missing", path, key);
        dst[0] = 0;
        return 0;
    }
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) >= len)
        return fail(c, NB_EFORMAT, "%s.%s: expected a string of 1..%zu characters", path, key,
                    len - 1);
    memcpy(dst, json_string_value(v), json_string_length(v) + 1);
    return 0;
}

static int parse_root(ctx_t *c, json_t *root, nb_cost_t *cost)
{
    if (!json_is_object(root))
        return fail(c, NB_EFORMAT, "top level: expected an object");
    static const char *const root_keys[] = {"nebula_measurements", "stages", "links", "codecs",
                                            NULL};
    static const char *const stage_keys[] = {"name", "memory_limit_gib", "forward_layer_s",
                                             "backward_layer_s", "forward_fixed_s",
                                             "backward_fixed_s", "replicas", "reduce_gbyte_s",
                                             "replica_overhead_ms", NULL};
    static const char *const link_keys[] = {"between", "forward", "backward", NULL};
    static const char *const codec_keys[] = {"spec", "ratio", "encode_ns_per_byte",
                                             "decode_ns_per_byte", "lossiness", "error", NULL};
    json_t *ver = json_object_get(root, "nebula_measurements");
    if (!json_is_integer(ver))
        return fail(c, NB_EFORMAT, "nebula_measurements: missing or not an integer version");
    if (json_integer_value(ver) != NB_MEASURE_VERSION)
        return fail(c, NB_EVERSION, "nebula_measurements: version %lld not supported (want %d)",
                    (long long)json_integer_value(ver), NB_MEASURE_VERSION);
    int krc = known_keys(c, root, "", root_keys);
    if (krc)
        return krc;
    json_t *stages = json_object_get(root, "stages");
    if (!json_is_array(stages) || json_array_size(stages) < 1 ||
        json_array_size(stages) > NB_COST_MAX_STAGES)
        return fail(c, NB_EFORMAT, "stages: expected an array of 1..%d stages",
                    NB_COST_MAX_STAGES);
    int p = (int)json_array_size(stages);
    cost->p = p;
    for (int s = 0; s < p; s++) {
        char path[64];
        snprintf(path, sizeof path, "stages[%d]", s);
        json_t *st = json_array_get(stages, (size_t)s);
        if (!json_is_object(st))
            return fail(c, NB_EFORMAT, "%s: expected an object", path);
        nb_cost_stage_t *o = &cost->stage[s];
        double gib;
        int rc = known_keys(c, st, path, stage_keys);
        if (rc == 0)
            rc = copy_name(c, st, path, "name", 0, o->name, sizeof o->name);
        if (rc == 0)
            rc = fit(c, st, path, "forward_layer_s", 1, &o->fwd_layer);
        if (rc == 0)
            rc = fit(c, st, path, "backward_layer_s", 1, &o->bwd_layer);
        if (rc == 0)
            rc = fit(c, st, path, "forward_fixed_s", 0, &o->fwd_fixed);
        if (rc == 0)
            rc = fit(c, st, path, "backward_fixed_s", 0, &o->bwd_fixed);
        if (rc == 0)
            rc = num(c, st, path, "memory_limit_gib", 0, 0.0, &gib);
        double reps = 1, rbw = 0, rovh = 0;
        if (rc == 0)
            rc = num(c, st, path, "replicas", 1, 1, &reps);
        if (rc == 0 && (reps > NB_REPLICA_MAX || reps != floor(reps)))
            rc = fail(c, NB_EFORMAT, "%s.replicas: %g is out of range (a whole number 1..%d)", path,
                      reps, NB_REPLICA_MAX);
        if (rc == 0)
            rc = num(c, st, path, "reduce_gbyte_s", 1e-6, 0, &rbw);
        if (rc == 0)
            rc = num(c, st, path, "replica_overhead_ms", 0, 0, &rovh);
        if (rc)
            return rc;
        o->replicas = (int)reps;
        o->reduce_bw = rbw * 1e9;
        o->replica_overhead = rovh * 1e-3;
        if (!o->name[0])
            snprintf(o->name, sizeof o->name, "stage%d", s);
        o->mem_limit = gib * 1024.0 * 1024.0 * 1024.0;
    }
    json_t *links = json_object_get(root, "links");
    if (!json_is_array(links) || (int)json_array_size(links) != p - 1)
        return fail(c, NB_EFORMAT, "links: expected an array of %d links (one per boundary)",
                    p - 1);
    for (int i = 0; i < p - 1; i++) {
        char path[64];
        snprintf(path, sizeof path, "links[%d]", i);
        json_t *l = json_array_get(links, (size_t)i);
        if (!json_is_object(l))
            return fail(c, NB_EFORMAT, "%s: expected an object", path);
        int krc = known_keys(c, l, path, link_keys);
        if (krc)
            return krc;
        json_t *btw = json_object_get(l, "between");
        if (!json_is_array(btw) || json_array_size(btw) != 2 ||
            !json_is_integer(json_array_get(btw, 0)) || !json_is_integer(json_array_get(btw, 1)))
            return fail(c, NB_EFORMAT, "%s.between: expected [stage, stage+1]", path);
        long long a = json_integer_value(json_array_get(btw, 0));
        long long b = json_integer_value(json_array_get(btw, 1));
        if (a < 0 || a >= p - 1 || b != a + 1)
            return fail(c, NB_EFORMAT, "%s.between: [%lld, %lld] is not a boundary s, s+1 of %d "
                        "stages", path, a, b, p);
        nb_cost_link_t *o = &cost->link[a];
        int rc = parse_dir(c, l, path, "forward", &o->dir[NB_DIR_FWD]);
        if (rc == 0)
            rc = parse_dir(c, l, path, "backward", &o->dir[NB_DIR_BWD]);
        if (rc)
            return rc;
    }
    for (int s = 0; s < p - 1; s++)
        if (!(cost->link[s].dir[0].bandwidth > 0))
            return fail(c, NB_EFORMAT, "links: boundary %d-%d is missing", s, s + 1);
    json_t *codecs = json_object_get(root, "codecs");
    if (!json_is_array(codecs) || json_array_size(codecs) < 1 ||
        json_array_size(codecs) > NB_COST_MAX_CODECS)
        return fail(c, NB_EFORMAT, "codecs: expected an array of 1..%d codecs",
                    NB_COST_MAX_CODECS);
    cost->ncodecs = (int)json_array_size(codecs);
    for (int i = 0; i < cost->ncodecs; i++) {
        char path[64];
        snprintf(path, sizeof path, "codecs[%d]", i);
        json_t *cd = json_array_get(codecs, (size_t)i);
        if (!json_is_object(cd))
            return fail(c, NB_EFORMAT, "%s: expected an object", path);
        nb_cost_codec_t *o = &cost->codec[i];
        double enc, dec, loss;
        int rc = known_keys(c, cd, path, codec_keys);
        if (rc == 0)
            rc = copy_name(c, cd, path, "spec", 1, o->spec, sizeof o->spec);
        if (rc == 0)
            rc = num(c, cd, path, "ratio", 1e-9, NAN, &o->ratio);
        if (rc == 0)
            rc = num(c, cd, path, "encode_ns_per_byte", 0, 0.0, &enc);
        if (rc == 0)
            rc = num(c, cd, path, "decode_ns_per_byte", 0, 0.0, &dec);
        if (rc == 0)
            rc = num(c, cd, path, "lossiness", 0, 0.0, &loss);
        if (rc == 0) /* round-trip relative error; absent: 0 (no budget applies) */
            rc = num(c, cd, path, "error", 0, 0.0, &cost->codec_err[i]);
        if (rc)
            return rc;
        if (o->ratio > 1)
            return fail(c, NB_EFORMAT, "%s.ratio: %g is out of range (wire/raw must be <= 1)",
                        path, o->ratio);
        for (int j = 0; j < i; j++)
            if (strcmp(cost->codec[j].spec, o->spec) == 0)
                return fail(c, NB_EFORMAT, "%s.spec: '%s' appears twice", path, o->spec);
        o->enc_per_byte = enc * 1e-9;
        o->dec_per_byte = dec * 1e-9;
        o->lossiness = (int)loss;
    }
    return 0;
}

int nb_measure_parse(const char *json, const char *name, nb_cost_t *out, char *err,
                     size_t errlen)
{
    ctx_t c = {name ? name : "measurements", err, errlen};
    json_error_t je;
    json_t *root = json_loads(json, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return fail(&c, NB_EFORMAT, "line %d column %d: %s", je.line, je.column, je.text);
    nb_cost_t *tmp = calloc(1, sizeof *tmp);
    int rc = tmp ? parse_root(&c, root, tmp) : NB_ENOMEM;
    if (rc == 0)
        *out = *tmp;
    free(tmp);
    json_decref(root);
    return rc;
}

int nb_measure_load(const char *path, nb_cost_t *out, char *err, size_t errlen)
{
    ctx_t c = {path, err, errlen};
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail(&c, NB_EIO, "cannot open: %s", strerror(errno));
    /* Measurement files are small; 16 MiB is far beyond any real one. */
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    int rc = 0;
    while (buf) {
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (len < cap)
            break;
        if (cap >= (16u << 20)) {
            rc = fail(&c, NB_EFORMAT, "larger than 16 MiB");
            break;
        }
        char *nb = realloc(buf, cap * 2 + 1);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    int rerr = ferror(f);
    fclose(f);
    if (!buf)
        return NB_ENOMEM;
    if (rc == 0 && rerr)
        rc = fail(&c, NB_EIO, "read error");
    if (rc == 0) {
        buf[len] = 0;
        if (strlen(buf) != len)
            rc = fail(&c, NB_EFORMAT, "contains a NUL byte");
        else
            rc = nb_measure_parse(buf, path, out, err, errlen);
    }
    free(buf);
    return rc;
}
