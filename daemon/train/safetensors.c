/*
 * safetensors.c - safetensors reader and writer; see safetensors.h. The
 * header is checked as a whole (every number against the file's length)
 * before the caller allocates anything for a tensor.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "daemon/train/safetensors.h"
#include "kernels/common.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors.c assumes a little-endian host");

struct nb_st_file {
    char *path;
    int fd;               /* -1 for a file in memory */
    const uint8_t *mem;   /* the whole file, when in memory */
    uint64_t data_off;    /* 8 + header length */
    uint64_t data_len;    /* bytes of the data buffer */
    int n;
    nb_st_tensor_t *t;
    json_t *meta;         /* the __metadata__ object, or NULL */
};

static const struct {
    const char *name;
    unsigned size;
} dtypes[] = {
    [NB_ST_F32] = { "F32", 4 },   [NB_ST_F16] = { "F16", 2 },   [NB_ST_BF16] = { "BF16", 2 },
    [NB_ST_F64] = { "F64", 8 },   [NB_ST_I64] = { "I64", 8 },   [NB_ST_I32] = { "I32", 4 },
    [NB_ST_I16] = { "I16", 2 },   [NB_ST_I8] = { "I8", 1 },     [NB_ST_U8] = { "U8", 1 },
    [NB_ST_U16] = { "U16", 2 },   [NB_ST_U32] = { "U32", 4 },   [NB_ST_U64] = { "U64", 8 },
    [NB_ST_BOOL] = { "BOOL", 1 }, [NB_ST_F8_E4M3] = { "F8_E4M3", 1 }, [NB_ST_F8_E5M2] = { "F8_E5M2", 1 },
};
#define N_DTYPES ((int)(sizeof dtypes / sizeof dtypes[0]))

const char *nb_st_dtype_name(nb_st_dtype_t d)
{
    return (int)d >= 0 && (int)d < N_DTYPES ? dtypes[d].name : "?";
}

float nb_st_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); /* inf, nan */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: normalise */
        int e = -1;
        do {
            e++;
            man <<= 1;
        } while (!(man & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float nb_st_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

void nb_st_close(nb_st_file_t *f)
{
    if (!f)
        return;
    for (int i = 0; i < f->n; i++)
        free(f->t[i].name);
    free(f->t);
    if (f->meta)
        json_decref(f->meta);
    if (f->fd >= 0)
        close(f->fd);
    free(f->path);
    free(f);
}

const char *nb_st_path(const nb_st_file_t *f) { return f->path; }
int nb_st_count(const nb_st_file_t *f) { return f->n; }
const nb_st_tensor_t *nb_st_tensor(const nb_st_file_t *f, int i) { return &f->t[i]; }
uint64_t nb_st_data_offset(const nb_st_file_t *f) { return f->data_off; }

int nb_st_find(const nb_st_file_t *f, const char *name)
{
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->t[i].name, name))
            return i;
    return -1;
}

const char *nb_st_metadata(const nb_st_file_t *f, const char *key)
{
    json_t *v = f->meta ? json_object_get(f->meta, key) : NULL;
    return v ? json_string_value(v) : NULL;
}

static int cmp_range(const void *a, const void *b)
{
    const nb_st_tensor_t *x = *(nb_st_tensor_t *const *)a, *y = *(nb_st_tensor_t *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Parses one tensor entry into t (name already set). NULL, or why not. */
static const char *parse_entry(json_t *v, nb_st_tensor_t *t, uint64_t data_len, char *why, size_t whylen)
{
    if (!json_is_object(v))
        return "the entry is not an object";
    json_t *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape"), *off = json_object_get(v, "data_offsets");
    if (!json_is_string(dt))
        return "no \"dtype\" string";
    if (!json_is_array(sh))
        return "no \"shape\" list";
    if (!json_is_array(off) || json_array_size(off) != 2)
        return "\"data_offsets\" is not a list of two numbers";
    if (json_object_size(v) != 3)
        return "keys other than dtype, shape and data_offsets";
    int d = -1;
    for (int k = 0; k < N_DTYPES; k++)
        if (!strcmp(json_string_value(dt), dtypes[k].name))
            d = k;
    if (d < 0) {
        snprintf(why, whylen, "unknown dtype \"%.32s\"", json_string_value(dt));
        return why;
    }
    t->dtype = (nb_st_dtype_t)d;
    if (json_array_size(sh) > NB_ST_MAX_DIMS) {
        snprintf(why, whylen, "%zu dimensions (at most %d)", json_array_size(sh), NB_ST_MAX_DIMS);
        return why;
    }
    t->ndim = (int)json_array_size(sh);
    uint64_t numel = 1;
    for (int k = 0; k < t->ndim; k++) {
        json_t *x = json_array_get(sh, (size_t)k);
        if (!json_is_integer(x) || json_integer_value(x) < 0)
            return "a dimension of the shape is not a non-negative integer";
        t->shape[k] = json_integer_value(x);
        if (__builtin_mul_overflow(numel, (uint64_t)t->shape[k], &numel))
            return "the shape's element count overflows";
    }
    t->numel = numel;
    json_t *b = json_array_get(off, 0), *e = json_array_get(off, 1);
    if (!json_is_integer(b) || !json_is_integer(e) || json_integer_value(b) < 0 || json_integer_value(e) < 0)
        return "\"data_offsets\" are not non-negative integers";
    t->begin = (uint64_t)json_integer_value(b);
    t->end = (uint64_t)json_integer_value(e);
    if (t->end < t->begin) {
        snprintf(why, whylen, "data_offsets [%llu, %llu] end before they begin", (unsigned long long)t->begin,
                 (unsigned long long)t->end);
        return why;
    }
    if (t->end > data_len) {
        snprintf(why, whylen, "data_offsets [%llu, %llu] reach past the end of the data (%llu bytes)",
                 (unsigned long long)t->begin, (unsigned long long)t->end, (unsigned long long)data_len);
        return why;
    }
    uint64_t bytes;
    if (__builtin_mul_overflow(numel, (uint64_t)dtypes[d].size, &bytes) || bytes != t->end - t->begin) {
        snprintf(why, whylen, "%llu elements of %s need %llu bytes, data_offsets [%llu, %llu] hold %llu",
                 (unsigned long long)numel, dtypes[d].name,
                 (unsigned long long)(numel * dtypes[d].size), (unsigned long long)t->begin,
                 (unsigned long long)t->end, (unsigned long long)(t->end - t->begin));
        return why;
    }
    return NULL;
}

/* Validates the header json (hlen bytes) of a file of file_len bytes and
 * fills f's tensor table. */
static int parse_header(nb_st_file_t *f, const char *json, size_t hlen, uint64_t file_len, char *err, size_t errlen)
{
    f->data_off = 8 + (uint64_t)hlen;
    f->data_len = file_len - f->data_off;
    if (hlen == 0 || json[0] != '{') {
        snprintf(err, errlen, "%s: the header does not start with '{': not a safetensors file", f->path);
        return NB_EFORMAT;
    }
    json_error_t je;
    json_t *root = json_loadb(json, hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        /* jansson names a duplicate key in its text ("duplicate object key") */
        snprintf(err, errlen, "%s: header byte %d: %s%s", f->path, je.position, je.text,
                 strstr(je.text, "duplicate") ? " (a tensor name appears twice)" : "");
        return NB_EFORMAT;
    }
    int rc = NB_EFORMAT;
    nb_st_tensor_t **order = NULL;
    if (!json_is_object(root)) {
        snprintf(err, errlen, "%s: the header is not a JSON object", f->path);
        goto out;
    }
    size_t cap = json_object_size(root);
    f->t = calloc(cap ? cap : 1, sizeof *f->t);
    order = calloc(cap ? cap : 1, sizeof *order);
    if (!f->t || !order) {
        snprintf(err, errlen, "%s: out of memory for %zu tensor entries", f->path, cap);
        rc = NB_ENOMEM;
        goto out;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "__metadata__")) {
            if (!json_is_object(v)) {
                snprintf(err, errlen, "%s: __metadata__ is not an object", f->path);
                goto out;
            }
            const char *mk;
            json_t *mv;
            json_object_foreach(v, mk, mv) {
                if (!json_is_string(mv)) {
                    snprintf(err, errlen, "%s: __metadata__ '%.64s' is not a string", f->path, mk);
                    goto out;
                }
            }
            f->meta = json_incref(v);
            continue;
        }
        nb_st_tensor_t *t = &f->t[f->n];
        if (!*key) {
            snprintf(err, errlen, "%s: a tensor has an empty name", f->path);
            goto out;
        }
        if (!(t->name = strdup(key))) {
            rc = NB_ENOMEM;
            snprintf(err, errlen, "%s: out of memory", f->path);
            goto out;
        }
        f->n++;
        char why[200];
        const char *bad = parse_entry(v, t, f->data_len, why, sizeof why);
        if (bad) {
            snprintf(err, errlen, "%s: tensor '%.128s': %s", f->path, key, bad);
            goto out;
        }
        order[f->n - 1] = t;
    }
    qsort(order, (size_t)f->n, sizeof *order, cmp_range);
    uint64_t at = 0;
    for (int i = 0; i < f->n; i++) {
        const nb_st_tensor_t *t = order[i];
        if (t->begin < at) {
            snprintf(err, errlen, "%s: tensor '%.128s': data_offsets [%llu, %llu] overlap tensor '%.128s' [%llu, %llu]",
                     f->path, t->name, (unsigned long long)t->begin, (unsigned long long)t->end, order[i - 1]->name,
                     (unsigned long long)order[i - 1]->begin, (unsigned long long)order[i - 1]->end);
            goto out;
        }
        if (t->begin > at) {
            snprintf(err, errlen, "%s: tensor '%.128s': data_offsets [%llu, %llu] leave a gap after byte %llu",
                     f->path, t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                     (unsigned long long)at);
            goto out;
        }
        at = t->end;
    }
    if (at != f->data_len) {
        snprintf(err, errlen, "%s: the tensors cover %llu bytes of data, the file holds %llu after the header",
                 f->path, (unsigned long long)at, (unsigned long long)f->data_len);
        goto out;
    }
    rc = 0;
out:
    free(order);
    json_decref(root);
    return rc;
}

static nb_st_file_t *file_new(const char *path)
{
    nb_st_file_t *f = calloc(1, sizeof *f);
    if (f && !(f->path = strdup(path))) {
        free(f);
        return NULL;
    }
    if (f)
        f->fd = -1;
    return f;
}

/* Checks the 8-byte length against the limit and the file's length. */
static int check_len(const char *path, uint64_t hlen, uint64_t file_len, char *err, size_t errlen)
{
    if (hlen > NB_ST_MAX_HEADER) {
        snprintf(err, errlen, "%s: header length %llu is over the limit of %u bytes", path,
                 (unsigned long long)hlen, NB_ST_MAX_HEADER);
        return NB_EFORMAT;
    }
    if (hlen > file_len - 8) {
        snprintf(err, errlen, "%s: header length %llu reaches past the end of the file (%llu bytes): truncated or not a safetensors file",
                 path, (unsigned long long)hlen, (unsigned long long)file_len);
        return NB_EFORMAT;
    }
    return 0;
}

int nb_st_open_mem(const void *buf, size_t len, const char *name, nb_st_file_t **out, char *err, size_t errlen)
{
    *out = NULL;
    nb_st_file_t *f = file_new(name);
    if (!f) {
        snprintf(err, errlen, "%s: out of memory", name);
        return NB_ENOMEM;
    }
    f->mem = buf;
    uint64_t hlen = 0;
    int rc;
    if (len < 8) {
        snprintf(err, errlen, "%s: %zu bytes: too short for the 8-byte header length", name, len);
        rc = NB_EFORMAT;
    } else {
        memcpy(&hlen, buf, 8);
        rc = check_len(name, hlen, len, err, errlen);
    }
    if (!rc)
        rc = parse_header(f, (const char *)buf + 8, (size_t)hlen, len, err, errlen);
    if (rc) {
        nb_st_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int nb_st_open(const char *path, nb_st_file_t **out, char *err, size_t errlen)
{
    *out = NULL;
    nb_st_file_t *f = file_new(path);
    if (!f) {
        snprintf(err, errlen, "%s: out of memory", path);
        return NB_ENOMEM;
    }
    int rc = NB_EIO;
    char *json = NULL;
    struct stat st;
    uint64_t hlen;
    if ((f->fd = open(path, O_RDONLY | O_CLOEXEC)) < 0 || fstat(f->fd, &st) != 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        goto out;
    }
    if (st.st_size < 8 || pread(f->fd, &hlen, 8, 0) != 8) {
        snprintf(err, errlen, "%s: %lld bytes: too short for the 8-byte header length", path, (long long)st.st_size);
        rc = NB_EFORMAT;
        goto out;
    }
    if ((rc = check_len(path, hlen, (uint64_t)st.st_size, err, errlen)))
        goto out;
    if (!(json = malloc(hlen ? hlen : 1))) {
        snprintf(err, errlen, "%s: out of memory for a %llu-byte header", path, (unsigned long long)hlen);
        rc = NB_ENOMEM;
        goto out;
    }
    if (pread(f->fd, json, hlen, 8) != (ssize_t)hlen) {
        snprintf(err, errlen, "%s: cannot read the header: %s", path, strerror(errno));
        rc = NB_EIO;
        goto out;
    }
    rc = parse_header(f, json, hlen, (uint64_t)st.st_size, err, errlen);
out:
    free(json);
    if (rc) {
        nb_st_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int nb_st_read_f32(nb_st_file_t *f, int i, float *dst, char *err, size_t errlen)
{
    const nb_st_tensor_t *t = &f->t[i];
    unsigned size = dtypes[t->dtype].size;
    if (t->dtype != NB_ST_F32 && t->dtype != NB_ST_F16 && t->dtype != NB_ST_BF16) {
        snprintf(err, errlen, "%s: tensor '%s': dtype %s does not convert to fp32 (F32, F16 and BF16 do)", f->path,
                 t->name, dtypes[t->dtype].name);
        return NB_EINVAL;
    }
    /* Read in chunks into the tail of dst (F32 in place; 16-bit values are
     * widened front to back from a staging buffer). */
    const size_t chunk = 1u << 16;
    uint16_t *stage = size == 2 ? malloc(chunk * 2) : NULL;
    if (size == 2 && !stage) {
        snprintf(err, errlen, "%s: out of memory", f->path);
        return NB_ENOMEM;
    }
    int rc = 0;
    for (uint64_t e = 0; e < t->numel && !rc; e += chunk) {
        size_t k = t->numel - e < chunk ? (size_t)(t->numel - e) : chunk;
        void *to = size == 4 ? (void *)(dst + e) : (void *)stage;
        uint64_t at = f->data_off + t->begin + e * size;
        if (f->mem) {
            memcpy(to, f->mem + at, k * size);
        } else {
            size_t want = k * size, got = 0;
            while (got < want) {
                ssize_t r = pread(f->fd, (char *)to + got, want - got, (off_t)(at + got));
                if (r <= 0) {
                    snprintf(err, errlen, "%s: tensor '%s': cannot read at byte %llu: %s", f->path, t->name,
                             (unsigned long long)(at + got), r < 0 ? strerror(errno) : "file shrank");
                    rc = NB_EIO;
                    break;
                }
                got += (size_t)r;
            }
            if (rc)
                break;
        }
        if (size == 2)
            for (size_t j = 0; j < k; j++)
                dst[e + j] = t->dtype == NB_ST_F16 ? nb_st_f16_to_f32(stage[j]) : nb_st_bf16_to_f32(stage[j]);
        for (size_t j = 0; j < k; j++)
            if (!isfinite(dst[e + j])) {
                snprintf(err, errlen, "%s: tensor '%s': element %llu is not finite (%g)", f->path, t->name,
                         (unsigned long long)(e + j), dst[e + j]);
                rc = NB_EFORMAT;
                break;
            }
    }
    free(stage);
    return rc;
}

/* ---- writing ------------------------------------------------------------ */

int nb_st_write(const char *path, const nb_st_out_t *t, int n, const char *const *meta, int n_meta,
                char *err, size_t errlen)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        snprintf(err, errlen, "%s: path too long", path);
        return NB_EIO;
    }
    int rc = NB_ENOMEM;
    char *text = NULL;
    FILE *fp = NULL;
    json_t *root = json_object(), *md = json_object();
    if (!root || !md || json_object_set(root, "__metadata__", md))
        goto nomem;
    for (int i = 0; i < n_meta; i++)
        if (json_object_set_new(md, meta[2 * i], json_string(meta[2 * i + 1])))
            goto nomem;
    uint64_t at = 0;
    for (int i = 0; i < n; i++) {
        if (!t[i].name || !*t[i].name || !strcmp(t[i].name, "__metadata__") || json_object_get(root, t[i].name)) {
            snprintf(err, errlen, "%s: tensor %d: empty, reserved or duplicate name '%s'", path, i,
                     t[i].name ? t[i].name : "");
            rc = NB_EINVAL;
            goto out;
        }
        if (t[i].ndim < 0 || t[i].ndim > NB_ST_MAX_DIMS) {
            snprintf(err, errlen, "%s: tensor '%s': %d dimensions", path, t[i].name, t[i].ndim);
            rc = NB_EINVAL;
            goto out;
        }
        uint64_t numel = 1;
        json_t *shape = json_array(), *offs = json_array(), *e = json_object();
        if (!shape || !offs || !e) {
            json_decref(shape);
            json_decref(offs);
            json_decref(e);
            goto nomem;
        }
        for (int k = 0; k < t[i].ndim; k++) {
            numel *= (uint64_t)t[i].shape[k];
            json_array_append_new(shape, json_integer(t[i].shape[k]));
        }
        json_array_append_new(offs, json_integer((json_int_t)at));
        json_array_append_new(offs, json_integer((json_int_t)(at + 4 * numel)));
        at += 4 * numel;
        json_object_set_new(e, "dtype", json_string("F32"));
        json_object_set_new(e, "shape", shape);
        json_object_set_new(e, "data_offsets", offs);
        if (json_object_set_new(root, t[i].name, e))
            goto nomem;
    }
    if (!(text = json_dumps(root, JSON_COMPACT)))
        goto nomem;
    size_t tl = strlen(text);
    uint64_t hlen = (tl + 7) & ~(uint64_t)7; /* data starts 8-byte aligned */
    if (!(fp = fopen(tmp, "wb"))) {
        snprintf(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        rc = NB_EIO;
        goto out;
    }
    bool ok = fwrite(&hlen, 8, 1, fp) == 1 && fwrite(text, 1, tl, fp) == tl;
    for (uint64_t k = tl; ok && k < hlen; k++)
        ok = fputc(' ', fp) != EOF;
    for (int i = 0; ok && i < n; i++) {
        size_t numel = 1;
        for (int k = 0; k < t[i].ndim; k++)
            numel *= (size_t)t[i].shape[k];
        ok = fwrite(t[i].data, 4, numel, fp) == numel;
    }
    if (fclose(fp) != 0)
        ok = false;
    fp = NULL;
    if (!ok || rename(tmp, path) != 0) {
        snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
        unlink(tmp);
        rc = NB_EIO;
        goto out;
    }
    rc = 0;
    goto out;
nomem:
    snprintf(err, errlen, "%s: out of memory", path);
    rc = NB_ENOMEM;
out:
    free(text);
    json_decref(md);
    json_decref(root);
    return rc;
}
