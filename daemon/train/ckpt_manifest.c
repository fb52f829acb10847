/*
 * ckpt_manifest.c - manifest.json, the commit point of a checkpoint: its
 * JSON form, a parser that checks every field, and its crash-safe write;
 * see checkpoint.h and docs/checkpoints.md. 64-bit unsigned values (job_id,
 * seed) are decimal strings: JSON numbers lose them past 2^53 in many
 * readers.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "daemon/train/ckpt_internal.h"
#include "kernels/common.h"

#define MANIFEST_MAX_BYTES (1u << 20)

static json_t *u64_string(uint64_t v)
{
    char b[24];
    snprintf(b, sizeof b, "%llu", (unsigned long long)v);
    return json_string(b);
}

char *nb_ckpt_manifest_format(const nb_ckpt_manifest_t *m, size_t *len)
{
    const nb_ckpt_meta_t *mt = &m->meta;
    char digest[65], kernels[NB_CKPT_KERNELS_MAX];
    if (nb__ckpt_model_digest(&mt->model, digest))
        return NULL;
    snprintf(kernels, sizeof kernels, "%.*s", (int)strnlen(mt->kernels, sizeof mt->kernels), mt->kernels);
    json_t *o = json_object(), *files = json_array();
    char *text = NULL;
    int bad = !o || !files;
    if (!bad) {
        bad |= json_object_set_new(o, "format", json_string(NB_CKPT_FORMAT));
        bad |= json_object_set_new(o, "version", json_integer(NB_CKPT_VERSION));
        bad |= json_object_set_new(o, "job_id", u64_string(mt->job_id));
        bad |= json_object_set_new(o, "step", json_integer(mt->step));
        bad |= json_object_set_new(o, "optim_steps", json_integer(mt->optim_steps));
        bad |= json_object_set_new(o, "seed", u64_string(mt->seed));
        bad |= json_object_set_new(o, "batch", json_integer(mt->batch));
        bad |= json_object_set_new(o, "micro_batches", json_integer(mt->micro_batches));
        bad |= json_object_set_new(o, "seq_len", json_integer(mt->seq_len));
        bad |= json_object_set_new(o, "model", nb__ckpt_model_json(&mt->model));
        bad |= json_object_set_new(o, "model_sha256", json_string(digest));
        /* a kernels line that is not UTF-8 would make the manifest unreadable */
        json_t *k = json_string(kernels);
        bad |= json_object_set_new(o, "kernels", k ? k : json_string(""));
    }
    for (int i = 0; !bad && i < m->n_files; i++) {
        const nb_ckpt_file_t *f = &m->files[i];
        json_t *e = json_object(), *st = json_array();
        char name[NB_CKPT_FILE_NAME_MAX], sha[65];
        snprintf(name, sizeof name, "%.*s", (int)strnlen(f->name, sizeof f->name), f->name);
        snprintf(sha, sizeof sha, "%.*s", (int)strnlen(f->sha256, sizeof f->sha256), f->sha256);
        bad |= !e || !st;
        for (int s = 0; !bad && s < 64; s++)
            if (f->stages >> s & 1)
                bad |= json_array_append_new(st, json_integer(s));
        if (!bad) {
            json_t *jn = json_string(name);
            bad |= json_object_set_new(e, "name", jn ? jn : json_string(""));
            bad |= json_object_set_new(e, "bytes", json_integer((json_int_t)f->bytes));
            bad |= json_object_set_new(e, "sha256", json_string(sha));
            bad |= json_object_set_new(e, "stages", json_incref(st));
        }
        json_decref(st);
        bad |= json_array_append_new(files, e);
    }
    if (!bad)
        bad |= json_object_set(o, "files", files);
    if (!bad)
        text = json_dumps(o, JSON_INDENT(2));
    json_decref(files);
    json_decref(o);
    if (text && len)
        *len = strlen(text);
    return text;
}

/* ---- parsing ------------------------------------------------------------- */

static const char *get_int(json_t *o, const char *key, int64_t lo, int64_t hi, int64_t *out, char *why,
                           size_t whylen)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        snprintf(why, whylen, "\"%s\" is missing or not an integer in %lld..%lld", key, (long long)lo,
                 (long long)hi);
        return why;
    }
    *out = json_integer_value(v);
    return NULL;
}

static const char *get_u64(json_t *o, const char *key, uint64_t *out, char *why, size_t whylen)
{
    json_t *v = json_object_get(o, key);
    const char *s = json_is_string(v) ? json_string_value(v) : NULL;
    size_t n = s ? strlen(s) : 0;
    bool ok = n > 0 && n <= 20 && (n == 1 || s[0] != '0');
    for (size_t i = 0; ok && i < n; i++)
        ok = s[i] >= '0' && s[i] <= '9';
    if (ok) {
        errno = 0;
        unsigned long long x = strtoull(s, NULL, 10);
        ok = errno == 0;
        *out = x;
    }
    if (!ok) {
        snprintf(why, whylen, "\"%s\" is missing or not a decimal string of a 64-bit unsigned integer", key);
        return why;
    }
    return NULL;
}

static const char *parse_file(json_t *e, int i, nb_ckpt_file_t *f, char *why, size_t whylen)
{
    if (!json_is_object(e)) {
        snprintf(why, whylen, "files[%d] is not an object", i);
        return why;
    }
    json_t *name = json_object_get(e, "name"), *sha = json_object_get(e, "sha256"), *st = json_object_get(e, "stages");
    if (!json_is_string(name)) {
        snprintf(why, whylen, "files[%d].name is missing or not a string", i);
        return why;
    }
    const char *bad = nb__ckpt_file_name_bad(json_string_value(name));
    if (bad || strlen(json_string_value(name)) != json_string_length(name)) {
        snprintf(why, whylen, "files[%d].name \"%.80s\": %s", i, json_string_value(name),
                 bad ? bad : "a NUL byte in the name");
        return why;
    }
    snprintf(f->name, sizeof f->name, "%s", json_string_value(name));
    int64_t bytes;
    char sub[96];
    if (get_int(e, "bytes", 8, INT64_MAX, &bytes, sub, sizeof sub)) {
        snprintf(why, whylen, "files[%d] (%s): %s", i, f->name, sub);
        return why;
    }
    f->bytes = (uint64_t)bytes;
    if (!json_is_string(sha) || !nb__sha_hex_ok(json_string_value(sha))) {
        snprintf(why, whylen, "files[%d] (%s): \"sha256\" is not 64 lowercase hex digits", i, f->name);
        return why;
    }
    memcpy(f->sha256, json_string_value(sha), 65);
    if (!json_is_array(st) || json_array_size(st) == 0 || json_array_size(st) > 64) {
        snprintf(why, whylen, "files[%d] (%s): \"stages\" is not a list of 1 to 64 stage indices", i, f->name);
        return why;
    }
    f->stages = 0;
    for (size_t k = 0; k < json_array_size(st); k++) {
        json_t *x = json_array_get(st, k);
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > 63 ||
            (f->stages >> json_integer_value(x) & 1)) {
            snprintf(why, whylen, "files[%d] (%s): stages[%zu] is not a new stage index in 0..63", i, f->name, k);
            return why;
        }
        f->stages |= 1ull << json_integer_value(x);
    }
    if (json_object_size(e) != 4) {
        snprintf(why, whylen, "files[%d] (%s): keys other than name, bytes, sha256 and stages", i, f->name);
        return why;
    }
    return NULL;
}

/* The checks of nb_ckpt_manifest_parse on a parsed object; NULL or why. */
static const char *parse_root(json_t *o, nb_ckpt_manifest_t *m, int *code, char *why, size_t whylen)
{
    nb_ckpt_meta_t *mt = &m->meta;
    if (!json_is_object(o))
        return "not a JSON object";
    json_t *fmt = json_object_get(o, "format");
    if (!json_is_string(fmt) || strcmp(json_string_value(fmt), NB_CKPT_FORMAT) != 0)
        return "\"format\" is not \"" NB_CKPT_FORMAT "\"";
    int64_t v;
    if (get_int(o, "version", 0, INT32_MAX, &v, why, whylen))
        return why;
    if (v != NB_CKPT_VERSION) {
        *code = NB_EVERSION;
        snprintf(why, whylen, "version %lld, this build reads version %d", (long long)v, NB_CKPT_VERSION);
        return why;
    }
    if (get_u64(o, "job_id", &mt->job_id, why, whylen) || get_u64(o, "seed", &mt->seed, why, whylen) ||
        get_int(o, "step", 0, INT32_MAX, &mt->step, why, whylen) ||
        get_int(o, "optim_steps", 0, mt->step, &mt->optim_steps, why, whylen))
        return why;
    int64_t b, mb, sl;
    if (get_int(o, "batch", 0, INT32_MAX, &b, why, whylen) ||
        get_int(o, "micro_batches", 0, INT32_MAX, &mb, why, whylen) ||
        get_int(o, "seq_len", 0, INT32_MAX, &sl, why, whylen))
        return why;
    mt->batch = (int)b;
    mt->micro_batches = (int)mb;
    mt->seq_len = (int)sl;
    const char *bad = nb__ckpt_model_parse(json_object_get(o, "model"), &mt->model, why, whylen);
    if (bad)
        return bad;
    json_t *dg = json_object_get(o, "model_sha256");
    char want[65];
    if (nb__ckpt_model_digest(&mt->model, want)) {
        *code = NB_ENOMEM;
        return "out of memory";
    }
    if (!json_is_string(dg) || strcmp(json_string_value(dg), want) != 0) {
        snprintf(why, whylen, "\"model_sha256\" is not the SHA-256 of \"model\" (%s)", want);
        return why;
    }
    json_t *k = json_object_get(o, "kernels");
    if (!json_is_string(k) || json_string_length(k) >= NB_CKPT_KERNELS_MAX ||
        strlen(json_string_value(k)) != json_string_length(k)) {
        snprintf(why, whylen, "\"kernels\" is not a string under %d bytes", NB_CKPT_KERNELS_MAX);
        return why;
    }
    snprintf(mt->kernels, sizeof mt->kernels, "%s", json_string_value(k));
    json_t *files = json_object_get(o, "files");
    if (!json_is_array(files) || json_array_size(files) == 0 || json_array_size(files) > NB_CKPT_MAX_FILES) {
        snprintf(why, whylen, "\"files\" is not a list of 1 to %d files", NB_CKPT_MAX_FILES);
        return why;
    }
    m->n_files = (int)json_array_size(files);
    for (int i = 0; i < m->n_files; i++) {
        if ((bad = parse_file(json_array_get(files, (size_t)i), i, &m->files[i], why, whylen)))
            return bad;
        for (int j = 0; j < i; j++)
            if (!strcmp(m->files[j].name, m->files[i].name)) {
                snprintf(why, whylen, "files[%d]: \"%s\" is listed twice", i, m->files[i].name);
                return why;
            }
    }
    return NULL;
}

int nb_ckpt_manifest_parse(const char *json, size_t len, const char *name, nb_ckpt_manifest_t *m, char *err,
                           size_t errlen)
{
    memset(m, 0, sizeof *m);
    if (len > MANIFEST_MAX_BYTES) {
        snprintf(err, errlen, "%s: %zu bytes, over the limit of %u for a manifest", name, len, MANIFEST_MAX_BYTES);
        return NB_EFORMAT;
    }
    json_error_t je;
    json_t *o = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!o) {
        snprintf(err, errlen, "%s: line %d column %d: %s", name, je.line, je.column, je.text);
        return NB_EFORMAT;
    }
    int code = NB_EFORMAT;
    char why[256];
    const char *bad = parse_root(o, m, &code, why, sizeof why);
    json_decref(o);
    if (bad) {
        snprintf(err, errlen, "%s: %s", name, bad);
        memset(m, 0, sizeof *m);
        return code;
    }
    return 0;
}

int nb_ckpt_manifest_read(const char *dir, nb_ckpt_manifest_t *m, char *err, size_t errlen)
{
    char path[4096];
    memset(m, 0, sizeof *m);
    if (snprintf(path, sizeof path, "%s/%s", dir, NB_CKPT_MANIFEST) >= (int)sizeof path) {
        snprintf(err, errlen, "%s: path too long", dir);
        return NB_EIO;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "%s: %s%s", path, strerror(e),
                 e == ENOENT ? " (no manifest: not a complete checkpoint)" : "");
        return e == ENOENT || e == ENOTDIR ? NB_ENOENT : NB_EIO;
    }
    struct stat st;
    int rc = NB_EIO;
    char *buf = NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        goto out;
    }
    if ((uint64_t)st.st_size > MANIFEST_MAX_BYTES) {
        snprintf(err, errlen, "%s: %lld bytes, over the limit of %u for a manifest", path, (long long)st.st_size,
                 MANIFEST_MAX_BYTES);
        rc = NB_EFORMAT;
        goto out;
    }
    if (!(buf = malloc((size_t)st.st_size + 1))) {
        rc = NB_ENOMEM;
        snprintf(err, errlen, "%s: out of memory", path);
        goto out;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            snprintf(err, errlen, "%s: cannot read: %s", path, r < 0 ? strerror(errno) : "file shrank");
            goto out;
        }
        got += (size_t)r;
    }
    rc = nb_ckpt_manifest_parse(buf, got, path, m, err, errlen);
out:
    free(buf);
    close(fd);
    return rc;
}

int nb_ckpt_manifest_write(const char *dir, const nb_ckpt_manifest_t *m, char *err, size_t errlen)
{
    size_t len;
    char *text = nb_ckpt_manifest_format(m, &len);
    if (!text) {
        snprintf(err, errlen, "%s: out of memory for the manifest", dir);
        return NB_ENOMEM;
    }
    /* what is committed must read back: refuse a manifest its readers would */
    nb_ckpt_manifest_t *back = malloc(sizeof *back);
    int rc = back ? nb_ckpt_manifest_parse(text, len, "the manifest to write", back, err, errlen) : NB_ENOMEM;
    free(back);
    if (rc) {
        if (rc == NB_ENOMEM)
            snprintf(err, errlen, "%s: out of memory", dir);
        else
            rc = NB_EINVAL;
        free(text);
        return rc;
    }
    char path[4096];
    nb__ckpt_tmpfile_t t;
    if (snprintf(path, sizeof path, "%s/%s", dir, NB_CKPT_MANIFEST) >= (int)sizeof path) {
        snprintf(err, errlen, "%s: path too long", dir);
        free(text);
        return NB_EIO;
    }
    if ((rc = nb__ckpt_tmp_open(&t, path, err, errlen)) == 0) {
        if ((rc = nb__ckpt_tmp_write(&t, text, len, err, errlen)) == 0 &&
            (rc = nb__ckpt_tmp_write(&t, "\n", 1, err, errlen)) == 0)
            rc = nb__ckpt_tmp_commit(&t, err, errlen);
        else
            nb__ckpt_tmp_abort(&t);
    }
    free(text);
    return rc;
}
