/*
 * weights.c - save and load the parameters of a model part; see weights.h.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "daemon/train/weights.h"

#define NAME_BYTES 32
#define HDR_FIELDS 15 /* 11 config + 4 spec */

static const char *const field_names[HDR_FIELDS] = {
    "n_layer", "d_model", "n_head", "d_ff", "vocab", "max_seq", "causal", "norm", "head",
    "n_classes", "tie_embeddings", "part.embed", "part.first", "part.last", "part.head",
};

static void header_fields(const nb_part_t *p, int32_t f[HDR_FIELDS])
{
    const nb_model_config_t *c = nb_part_config(p);
    const nb_part_spec_t *s = nb_part_spec(p);
    bool cls = c->head == NB_MODEL_HEAD_SEQCLS || c->head == NB_MODEL_HEAD_TOKCLS;
    int32_t v[HDR_FIELDS] = { c->n_layer, c->d_model, c->n_head, c->d_ff, c->vocab, c->max_seq, c->causal,
                              (int32_t)c->norm, (int32_t)c->head, cls ? c->n_classes : 0,
                              !cls && c->tie_embeddings, s->embed, s->first, s->last, s->head };
    memcpy(f, v, sizeof v);
}

int nb_weights_save(const char *path, nb_part_t *p, char *err, size_t errlen)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        snprintf(err, errlen, "%s: path too long", path);
        return NB_EIO;
    }
    size_t n = nb_part_num_params(p);
    float *host = malloc((n ? n : 1) * sizeof(float));
    if (!host) {
        snprintf(err, errlen, "%s: out of memory for %zu parameters", path, n);
        return NB_ENOMEM;
    }
    nb_be_to_host(nb_part_backend(p), host, nb_part_params(p), n * sizeof(float));
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        free(host);
        return NB_EIO;
    }
    uint32_t version = NB_WEIGHTS_VERSION, nt = (uint32_t)nb_part_num_tensors(p);
    uint64_t np = n;
    int32_t hf[HDR_FIELDS];
    header_fields(p, hf);
    bool ok = fwrite("NBWT", 1, 4, f) == 4 && fwrite(&version, 4, 1, f) == 1 &&
              fwrite(hf, sizeof hf, 1, f) == 1 && fwrite(&nt, 4, 1, f) == 1 && fwrite(&np, 8, 1, f) == 1;
    for (uint32_t i = 0; ok && i < nt; i++) {
        const nb_param_info_t *t = nb_part_tensor(p, (int)i);
        char name[NAME_BYTES] = { 0 };
        snprintf(name, sizeof name, "%s", t->name);
        uint32_t nd = (uint32_t)t->ndim;
        uint64_t shape[2] = { (uint64_t)t->shape[0], (uint64_t)t->shape[1] };
        ok = fwrite(name, 1, NAME_BYTES, f) == NAME_BYTES && fwrite(&nd, 4, 1, f) == 1 &&
             fwrite(shape, 8, 2, f) == 2;
    }
    if (ok && n)
        ok = fwrite(host, sizeof(float), n, f) == n;
    free(host);
    if (fclose(f) != 0)
        ok = false;
    if (!ok || rename(tmp, path) != 0) {
        snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
        unlink(tmp);
        return NB_EIO;
    }
    return 0;
}

int nb_weights_load(const char *path, nb_part_t *p, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NB_EIO;
    }
    int rc = NB_EFORMAT;
    float *host = NULL;
    long off = 0;
    char magic[4];
    uint32_t version, nt;
    uint64_t np;
    int32_t hf[HDR_FIELDS], want[HDR_FIELDS];
#define READ(dst, size) (fread((dst), 1, (size), f) == (size) ? (off += (long)(size), true) : false)
    if (!READ(magic, 4) || memcmp(magic, "NBWT", 4) != 0) {
        snprintf(err, errlen, "%s: offset 0: not a weights file (magic is not NBWT)", path);
        goto out;
    }
    if (!READ(&version, 4)) {
        snprintf(err, errlen, "%s: offset %ld: truncated header", path, off);
        goto out;
    }
    if (version != NB_WEIGHTS_VERSION) {
        snprintf(err, errlen, "%s: offset 4: version %u, this build reads version %u", path, version,
                 NB_WEIGHTS_VERSION);
        rc = NB_EVERSION;
        goto out;
    }
    if (!READ(hf, sizeof hf)) {
        snprintf(err, errlen, "%s: offset %ld: truncated header", path, off);
        goto out;
    }
    header_fields(p, want);
    for (int i = 0; i < HDR_FIELDS; i++)
        if (hf[i] != want[i]) {
            snprintf(err, errlen, "%s: offset %d: %s is %d in the file, %d in this model", path,
                     8 + 4 * i, field_names[i], hf[i], want[i]);
            rc = NB_EINVAL;
            goto out;
        }
    if (!READ(&nt, 4) || !READ(&np, 8)) {
        snprintf(err, errlen, "%s: offset %ld: truncated header", path, off);
        goto out;
    }
    if (nt != (uint32_t)nb_part_num_tensors(p) || np != nb_part_num_params(p)) {
        snprintf(err, errlen, "%s: offset %ld: %u tensors / %llu parameters in the file, %d / %zu in this model",
                 path, off - 12, nt, (unsigned long long)np, nb_part_num_tensors(p), nb_part_num_params(p));
        rc = NB_EINVAL;
        goto out;
    }
    for (uint32_t i = 0; i < nt; i++) {
        const nb_param_info_t *t = nb_part_tensor(p, (int)i);
        long at = off;
        char name[NAME_BYTES];
        uint32_t nd;
        uint64_t shape[2];
        if (!READ(name, NAME_BYTES) || !READ(&nd, 4) || !READ(shape, 16)) {
            snprintf(err, errlen, "%s: offset %ld: truncated tensor table", path, off);
            goto out;
        }
        name[NAME_BYTES - 1] = '\0';
        if (strcmp(name, t->name) != 0 || nd != (uint32_t)t->ndim || shape[0] != (uint64_t)t->shape[0] ||
            shape[1] != (uint64_t)t->shape[1]) {
            snprintf(err, errlen, "%s: offset %ld: tensor %u is '%s' %llux%llu, this model expects '%s' %lldx%lld",
                     path, at, i, name, (unsigned long long)shape[0], (unsigned long long)shape[1], t->name,
                     (long long)t->shape[0], (long long)t->shape[1]);
            goto out;
        }
    }
    size_t n = nb_part_num_params(p);
    host = malloc((n ? n : 1) * sizeof(float));
    if (!host) {
        rc = NB_ENOMEM;
        snprintf(err, errlen, "%s: out of memory for %zu parameters", path, n);
        goto out;
    }
    size_t got = fread(host, sizeof(float), n, f);
    if (got != n) {
        snprintf(err, errlen, "%s: offset %ld: truncated parameters (%zu of %zu floats)", path,
                 off + (long)(got * sizeof(float)), got, n);
        goto out;
    }
    off += (long)(n * sizeof(float));
    if (fgetc(f) != EOF) {
        snprintf(err, errlen, "%s: offset %ld: trailing bytes after the parameters", path, off);
        goto out;
    }
#undef READ
    nb_be_from_host(nb_part_backend(p), nb_part_params(p), host, n * sizeof(float));
    nb_be_sync(nb_part_backend(p));
    rc = 0;
out:
    free(host);
    fclose(f);
    return rc;
}
