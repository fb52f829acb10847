/*
 * ckpt_write.c - writes one checkpoint file: the snapshots' tensors as
 * safetensors (F32, header padded to 8 bytes) with the run's metadata and
 * data_sha256, through a locked temporary file; see checkpoint.h. The data
 * digest is taken from memory first (it sits in the header, before the
 * data); the whole file's digest, for the manifest, as it is written.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "daemon/train/ckpt_internal.h"
#include "kernels/common.h"

/* The metadata pairs every file of a checkpoint carries (not data_sha256). */
static int put_meta(json_t *md, const nb_ckpt_meta_t *m)
{
    char b[8][32], digest[65], kernels[NB_CKPT_KERNELS_MAX];
    json_t *model = nb__ckpt_model_json(&m->model);
    char *model_text = model ? json_dumps(model, JSON_COMPACT) : NULL;
    json_decref(model);
    if (!model_text || nb__ckpt_model_digest(&m->model, digest)) {
        free(model_text);
        return NB_ENOMEM;
    }
    snprintf(b[0], sizeof b[0], "%d", NB_CKPT_VERSION);
    snprintf(b[1], sizeof b[1], "%llu", (unsigned long long)m->job_id);
    snprintf(b[2], sizeof b[2], "%lld", (long long)m->step);
    snprintf(b[3], sizeof b[3], "%lld", (long long)m->optim_steps);
    snprintf(b[4], sizeof b[4], "%llu", (unsigned long long)m->seed);
    snprintf(b[5], sizeof b[5], "%d", m->batch);
    snprintf(b[6], sizeof b[6], "%d", m->micro_batches);
    snprintf(b[7], sizeof b[7], "%d", m->seq_len);
    snprintf(kernels, sizeof kernels, "%.*s", (int)strnlen(m->kernels, sizeof m->kernels), m->kernels);
    const char *kv[][2] = {
        { "format", NB_CKPT_FORMAT }, { "version", b[0] }, { "job_id", b[1] }, { "step", b[2] },
        { "optim_steps", b[3] }, { "seed", b[4] }, { "batch", b[5] }, { "micro_batches", b[6] },
        { "seq_len", b[7] }, { "model", model_text }, { "model_sha256", digest }, { "kernels", kernels },
    };
    int bad = 0;
    for (size_t i = 0; i < NB_ARRAY_LEN(kv); i++) {
        json_t *s = json_string(kv[i][1]);
        bad |= json_object_set_new(md, kv[i][0], s ? s : json_string(""));
    }
    free(model_text);
    return bad ? NB_ENOMEM : 0;
}

int nb_ckpt_write_file(const char *dir, const char *name, nb_ckpt_snap_t *const *snaps, int n,
                       const nb_ckpt_meta_t *meta, nb_ckpt_file_t *out, char *err, size_t errlen)
{
    const char *bad_name = nb__ckpt_file_name_bad(name);
    if (bad_name) {
        snprintf(err, errlen, "%s: '%.80s': %s", dir, name, bad_name);
        return NB_EINVAL;
    }
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path) {
        snprintf(err, errlen, "%s: path too long", dir);
        return NB_EIO;
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: cannot create the directory: %s", dir, strerror(errno));
        return NB_EIO;
    }
    int rc = NB_ENOMEM;
    char *text = NULL;
    nb__sha_t data_sha = { 0 }, file_sha = { 0 };
    nb__ckpt_tmpfile_t tf = { .fd = -1 };
    json_t *root = json_object(), *md = json_object();
    if (!root || !md || json_object_set(root, "__metadata__", md) || put_meta(md, meta) || nb__sha_init(&data_sha))
        goto nomem;
    uint64_t at = 0;
    for (int s = 0; s < n; s++)
        for (int i = 0; i < snaps[s]->n; i++) {
            const nb__ckpt_tensor_t *t = &snaps[s]->t[i];
            if (json_object_get(root, t->name)) {
                snprintf(err, errlen, "%s: tensor '%s' is in two snapshots", path, t->name);
                rc = NB_EINVAL;
                goto out;
            }
            json_t *shape = json_array(), *offs = json_array(), *e = json_object();
            int bad = !shape || !offs || !e;
            for (int d = 0; !bad && d < t->ndim; d++)
                bad |= json_array_append_new(shape, json_integer(t->shape[d]));
            if (!bad) {
                bad |= json_array_append_new(offs, json_integer((json_int_t)at));
                bad |= json_array_append_new(offs, json_integer((json_int_t)(at + 4 * t->numel)));
                bad |= json_object_set_new(e, "dtype", json_string("F32"));
                bad |= json_object_set(e, "shape", shape);
                bad |= json_object_set(e, "data_offsets", offs);
            }
            json_decref(shape);
            json_decref(offs);
            if (bad || json_object_set_new(root, t->name, e))
                goto nomem;
            at += 4 * (uint64_t)t->numel;
            nb__sha_update(&data_sha, t->data, t->numel * sizeof(float));
        }
    char data_hex[65];
    nb__sha_final_hex(&data_sha, data_hex);
    if (json_object_set_new(md, "data_sha256", json_string(data_hex)) || !(text = json_dumps(root, JSON_COMPACT)))
        goto nomem;
    size_t tl = strlen(text);
    uint64_t hlen = (tl + 7) & ~(uint64_t)7; /* data starts 8-byte aligned */
    char pad[8] = "        ";
    if (nb__sha_init(&file_sha))
        goto nomem;
    if ((rc = nb__ckpt_tmp_open(&tf, path, err, errlen)))
        goto out;
    nb__sha_update(&file_sha, &hlen, 8);
    nb__sha_update(&file_sha, text, tl);
    nb__sha_update(&file_sha, pad, hlen - tl);
    if ((rc = nb__ckpt_tmp_write(&tf, &hlen, 8, err, errlen)) || (rc = nb__ckpt_tmp_write(&tf, text, tl, err, errlen)) ||
        (rc = nb__ckpt_tmp_write(&tf, pad, hlen - tl, err, errlen)))
        goto out;
    for (int s = 0; s < n; s++)
        for (int i = 0; i < snaps[s]->n; i++) {
            const nb__ckpt_tensor_t *t = &snaps[s]->t[i];
            /* in slices, so the digest reads what is still in cache */
            const char *p = (const char *)t->data;
            size_t left = t->numel * sizeof(float);
            while (left) {
                size_t k = left < (4u << 20) ? left : (4u << 20);
                nb__sha_update(&file_sha, p, k);
                if ((rc = nb__ckpt_tmp_write(&tf, p, k, err, errlen)))
                    goto out;
                p += k;
                left -= k;
            }
        }
    if ((rc = nb__ckpt_tmp_commit(&tf, err, errlen)))
        goto out;
    if (out) {
        snprintf(out->name, sizeof out->name, "%s", name);
        out->bytes = 8 + hlen + at;
        nb__sha_final_hex(&file_sha, out->sha256);
    }
    rc = 0;
    goto out;
nomem:
    snprintf(err, errlen, "%s: out of memory", path);
    rc = NB_ENOMEM;
out:
    nb__ckpt_tmp_abort(&tf);
    nb__sha_free(&data_sha);
    nb__sha_free(&file_sha);
    free(text);
    json_decref(md);
    json_decref(root);
    return rc;
}
