/*
 * ckpt_verify.c - checks a checkpoint's files against their manifest:
 * presence, length, SHA-256 of the whole file, the safetensors header,
 * data_sha256 of the data section and the run's metadata; and the values
 * of every tensor (finite, |x| <= NB_CKPT_MAX_ABS). See checkpoint.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "daemon/train/ckpt_internal.h"
#include "kernels/common.h"

#define CHUNK (4u << 20)

/* Streams path (bytes long) through two digests: the whole file, and the
 * data section after the 8-byte length and the header it gives. */
static int digest_file(const char *path, uint64_t bytes, char file_hex[65], char data_hex[65], char *err,
                       size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NB_EIO;
    }
    nb__sha_t fs = { 0 }, ds = { 0 };
    unsigned char *buf = malloc(CHUNK);
    int rc = NB_ENOMEM;
    if (!buf || nb__sha_init(&fs) || nb__sha_init(&ds)) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto out;
    }
    uint64_t at = 0, data_off = UINT64_MAX;
    while (at < bytes) {
        size_t want = bytes - at < CHUNK ? (size_t)(bytes - at) : CHUNK;
        ssize_t r = pread(fd, buf, want, (off_t)at);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            snprintf(err, errlen, "%s: cannot read at byte %llu: %s", path, (unsigned long long)at,
                     r < 0 ? strerror(errno) : "the file shrank");
            rc = NB_EIO;
            goto out;
        }
        if (at == 0 && r >= 8) {
            uint64_t hlen;
            memcpy(&hlen, buf, 8);
            if (hlen <= bytes - 8)
                data_off = 8 + hlen;
        }
        nb__sha_update(&fs, buf, (size_t)r);
        if (data_off != UINT64_MAX && at + (uint64_t)r > data_off) {
            uint64_t from = data_off > at ? data_off - at : 0;
            nb__sha_update(&ds, buf + from, (size_t)((uint64_t)r - from));
        }
        at += (uint64_t)r;
    }
    nb__sha_final_hex(&fs, file_hex);
    nb__sha_final_hex(&ds, data_hex);
    rc = 0;
out:
    nb__sha_free(&fs);
    nb__sha_free(&ds);
    free(buf);
    close(fd);
    return rc;
}

/* The metadata of f against m (and data_hex when given). */
static int check_meta(nb_st_file_t *f, const nb_ckpt_manifest_t *m, const char *data_hex, char *err, size_t errlen)
{
    const nb_ckpt_meta_t *mt = &m->meta;
    char want[8][72];
    snprintf(want[0], sizeof want[0], "%s", NB_CKPT_FORMAT);
    snprintf(want[1], sizeof want[1], "%d", NB_CKPT_VERSION);
    snprintf(want[2], sizeof want[2], "%lld", (long long)mt->step);
    snprintf(want[3], sizeof want[3], "%lld", (long long)mt->optim_steps);
    snprintf(want[4], sizeof want[4], "%llu", (unsigned long long)mt->seed);
    snprintf(want[5], sizeof want[5], "%llu", (unsigned long long)mt->job_id);
    if (nb__ckpt_model_digest(&mt->model, want[6])) {
        snprintf(err, errlen, "%s: out of memory", nb_st_path(f));
        return NB_ENOMEM;
    }
    snprintf(want[7], sizeof want[7], "%s", data_hex ? data_hex : "");
    static const char *const keys[] = { "format", "version", "step", "optim_steps", "seed", "job_id",
                                        "model_sha256", "data_sha256" };
    for (int k = 0; k < (data_hex ? 8 : 7); k++) {
        const char *got = nb_st_metadata(f, keys[k]);
        if (!got || strcmp(got, want[k]) != 0) {
            if (k == 7)
                snprintf(err, errlen, "%s: the data section's SHA-256 is %s, its __metadata__ data_sha256 says "
                         "%.64s: the data is corrupt", nb_st_path(f), want[k], got ? got : "(missing)");
            else
                snprintf(err, errlen, "%s: __metadata__ %s is %.80s, the manifest says %s: the file belongs to "
                         "another checkpoint", nb_st_path(f), keys[k], got ? got : "(missing)", want[k]);
            return NB_EFORMAT;
        }
    }
    return 0;
}

static int file_path(const char *dir, const nb_ckpt_manifest_t *m, int i, char *path, size_t len, char *err,
                     size_t errlen)
{
    const char *bad = nb__ckpt_file_name_bad(m->files[i].name);
    if (bad) {
        snprintf(err, errlen, "%s: manifest file %d '%.64s': %s", dir, i, m->files[i].name, bad);
        return NB_EFORMAT;
    }
    if (snprintf(path, len, "%s/%s", dir, m->files[i].name) >= (int)len) {
        snprintf(err, errlen, "%s: path too long", dir);
        return NB_EIO;
    }
    return 0;
}

static int verify_open(const char *dir, const nb_ckpt_manifest_t *m, int i, bool verify, nb_st_file_t **out,
                       char *err, size_t errlen)
{
    char path[4096], file_hex[65], data_hex[65];
    const nb_ckpt_file_t *fe = &m->files[i];
    int rc;
    if (out)
        *out = NULL;
    if ((rc = file_path(dir, m, i, path, sizeof path, err, errlen)))
        return rc;
    struct stat st;
    if (stat(path, &st) != 0) {
        int e = errno;
        snprintf(err, errlen, "%s: %s (the manifest lists it)", path, strerror(e));
        return e == ENOENT ? NB_ENOENT : NB_EIO;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        return NB_EFORMAT;
    }
    if ((uint64_t)st.st_size != fe->bytes) {
        snprintf(err, errlen, "%s: %lld bytes, the manifest lists %llu: the file is %s", path, (long long)st.st_size,
                 (unsigned long long)fe->bytes, (uint64_t)st.st_size < fe->bytes ? "truncated" : "not the one written");
        return NB_EFORMAT;
    }
    if (verify) {
        if ((rc = digest_file(path, fe->bytes, file_hex, data_hex, err, errlen)))
            return rc;
        if (strcmp(file_hex, fe->sha256) != 0) {
            snprintf(err, errlen, "%s: SHA-256 %s, the manifest lists %.64s: the file is corrupt", path, file_hex,
                     fe->sha256);
            return NB_EFORMAT;
        }
    }
    nb_st_file_t *f;
    if ((rc = nb_st_open(path, &f, err, errlen))) {
        /* a header that does not parse: say so, unless the file is simply
         * not the one the manifest describes (the better reason) */
        if (!verify && rc == NB_EFORMAT && digest_file(path, fe->bytes, file_hex, data_hex, err, errlen) == 0 &&
            strcmp(file_hex, fe->sha256) != 0)
            snprintf(err, errlen, "%s: SHA-256 %s, the manifest lists %.64s: the file is corrupt", path, file_hex,
                     fe->sha256);
        else if (!verify && rc == NB_EFORMAT)
            nb_st_open(path, &f, err, errlen); /* the header's own reason again */
        return rc;
    }
    if (verify && (rc = check_meta(f, m, data_hex, err, errlen))) {
        nb_st_close(f);
        return rc;
    }
    if (out)
        *out = f;
    else
        nb_st_close(f);
    return 0;
}

int nb__ckpt_open_file(const char *dir, const nb_ckpt_manifest_t *m, int i, bool verify, nb_st_file_t **out,
                       char *err, size_t errlen)
{
    return verify_open(dir, m, i, verify, out, err, errlen);
}

int nb__ckpt_verify_file(const char *dir, const nb_ckpt_manifest_t *m, int i, char *err, size_t errlen)
{
    return verify_open(dir, m, i, true, NULL, err, errlen);
}

int nb_ckpt_verify(const char *dir, const nb_ckpt_manifest_t *m, char *err, size_t errlen)
{
    for (int i = 0; i < m->n_files; i++) {
        int rc = verify_open(dir, m, i, true, NULL, err, errlen);
        if (rc)
            return rc;
    }
    return 0;
}

int nb__ckpt_read_tensor(nb_st_file_t *f, int k, float *dst, char *err, size_t errlen)
{
    const nb_st_tensor_t *t = nb_st_tensor(f, k);
    if (t->dtype != NB_ST_F32) {
        snprintf(err, errlen, "%s: tensor '%s': dtype %s, a checkpoint holds F32", nb_st_path(f), t->name,
                 nb_st_dtype_name(t->dtype));
        return NB_EFORMAT;
    }
    int rc = nb_st_read_f32(f, k, dst, err, errlen);
    if (rc)
        return rc;
    /* AdamW divides by sqrt(v): a negative second moment is corruption
     * that would turn every update of its tensor into NaN */
    bool second = !strncmp(t->name, "adamw.v.", 8);
    for (uint64_t e = 0; e < t->numel; e++) {
        if (second && dst[e] < 0.0f) {
            snprintf(err, errlen, "%s: tensor '%s': element %llu is %g, a second moment is never negative: the "
                     "file is corrupt", nb_st_path(f), t->name, (unsigned long long)e, dst[e]);
            return NB_EFORMAT;
        }
        if (!(fabsf(dst[e]) <= NB_CKPT_MAX_ABS)) {
            snprintf(err, errlen, "%s: tensor '%s': element %llu is %g, beyond the %g no trained value reaches: "
                     "the file is corrupt", nb_st_path(f), t->name, (unsigned long long)e, dst[e],
                     (double)NB_CKPT_MAX_ABS);
            return NB_EFORMAT;
        }
    }
    return 0;
}

int nb_ckpt_verify_values(const char *dir, const nb_ckpt_manifest_t *m, uint64_t *n_values, char *err,
                          size_t errlen)
{
    uint64_t count = 0;
    float *buf = NULL;
    size_t cap = 0;
    int rc = 0;
    for (int i = 0; i < m->n_files && !rc; i++) {
        nb_st_file_t *f;
        if ((rc = verify_open(dir, m, i, true, &f, err, errlen)))
            break;
        for (int k = 0; k < nb_st_count(f) && !rc; k++) {
            const nb_st_tensor_t *t = nb_st_tensor(f, k);
            if (t->numel > cap) {
                float *nb = realloc(buf, t->numel * sizeof *nb);
                if (!nb) {
                    snprintf(err, errlen, "%s: tensor '%s': out of memory for %llu values", nb_st_path(f),
                             t->name, (unsigned long long)t->numel);
                    rc = NB_ENOMEM;
                    break;
                }
                buf = nb;
                cap = t->numel;
            }
            if (!(rc = nb__ckpt_read_tensor(f, k, buf, err, errlen)))
                count += t->numel;
        }
        nb_st_close(f);
    }
    free(buf);
    if (n_values)
        *n_values = count;
    return rc;
}
