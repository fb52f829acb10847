/*
 * weights.c - weights files of a model part; see weights.h. (Checkpoints,
 * with the optimizer state and the run's position, are checkpoint.h's.)
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "daemon/train/weights.h"

#define NAME_BYTES 32
#define HDR_FIELDS 25    /* 11 config + 4 spec + ln_eps (f32 bits) + gelu + 4 adapter + 2 low-rank + cross_attn + token_shift */
#define HDR_FIELDS_V5 24 /* weights version 5 */
#define HDR_FIELDS_V4 23 /* weights version 4 */
#define HDR_FIELDS_V3 21 /* weights version 3 */
#define HDR_FIELDS_V2 17 /* weights version 2 */
#define HDR_FIELDS_V1 15 /* weights version 1 */
#define FIELD_LN_EPS 15
#define FIELD_GELU 16
#define FIELD_LOWRANK 21 /* lowrank_rank, lowrank_block: the rank first, so a dense file is named by it */
#define FIELD_XATTN 23   /* cross_attn: 1 for a decoder whose blocks read an encoder's output */
#define FIELD_SHIFT 24   /* token_shift: 1 for a model that mixes its neighbours' channels into the embedding */

static const char *const field_names[HDR_FIELDS] = {
    "n_layer", "d_model", "n_head", "d_ff", "vocab", "max_seq", "causal", "norm", "head",
    "n_classes", "tie_embeddings", "part.embed", "part.first", "part.last", "part.head", "ln_eps", "gelu",
    "adapter_size", "adapter_after", "adapter_first", "adapter_last", "lowrank_rank", "lowrank_block",
    "cross_attn", "token_shift",
};

/* Header fields of a file of a version. */
static int fields_of(uint32_t version)
{
    return version >= 6 ? HDR_FIELDS : version == 5 ? HDR_FIELDS_V5 : version == 4 ? HDR_FIELDS_V4 : version == 3 ? HDR_FIELDS_V3 : version == 2 ? HDR_FIELDS_V2 : HDR_FIELDS_V1;
}

static int32_t f32_bits(float x)
{
    int32_t b;
    memcpy(&b, &x, 4);
    return b;
}

static float bits_f32(int32_t b)
{
    float x;
    memcpy(&x, &b, 4);
    return x;
}

/* The header fields of p; returns how many the file carries: 15 when the
 * model has the default settings (eps 1e-5, tanh GELU), no adapters, no
 * low-rank split and no cross-attention, so such files keep the version
 * every earlier build reads, 17 with other settings, 21 with adapters, 23
 * with a low-rank split, 24 with cross-attention (a decoder), 25 with token
 * shift. Every field is set either way (no adapters: four zeros; no split:
 * two; no cross-attention: one; no token shift: one). */
static int header_fields(const nb_part_t *p, int32_t f[HDR_FIELDS])
{
    const nb_model_config_t *c = nb_part_config(p);
    const nb_part_spec_t *s = nb_part_spec(p);
    bool cls = c->head == NB_MODEL_HEAD_SEQCLS || c->head == NB_MODEL_HEAD_TOKCLS;
    float eps = nb_model_ln_eps(c);
    int32_t v[HDR_FIELDS] = { c->n_layer, c->d_model, c->n_head, c->d_ff, c->vocab, c->max_seq, c->causal,
                              (int32_t)c->norm, (int32_t)c->head, cls ? c->n_classes : 0,
                              !cls && c->tie_embeddings, s->embed, s->first, s->last, s->head,
                              f32_bits(eps), (int32_t)c->gelu };
    memcpy(f, v, sizeof v);
    bool ad = c->adapter_size > 0;
    f[17] = ad ? c->adapter_size : 0;
    f[18] = ad ? (int32_t)c->adapter_after : 0;
    f[19] = ad ? c->adapter_first : 0;
    f[20] = ad ? c->adapter_last : 0;
    bool lr = c->lowrank_rank > 0;
    f[FIELD_LOWRANK] = lr ? c->lowrank_rank : 0;
    f[FIELD_LOWRANK + 1] = lr ? c->lowrank_block : 0;
    f[FIELD_XATTN] = c->cross_attn ? 1 : 0;
    f[FIELD_SHIFT] = c->token_shift ? 1 : 0;
    if (c->token_shift)
        return HDR_FIELDS;
    if (c->cross_attn)
        return HDR_FIELDS_V5;
    if (lr)
        return HDR_FIELDS_V4;
    if (ad)
        return HDR_FIELDS_V3;
    return eps == NB_MODEL_LN_EPS_DEFAULT && c->gelu == NB_MODEL_GELU_TANH ? HDR_FIELDS_V1 : HDR_FIELDS_V2;
}

/* ---- writing ------------------------------------------------------------ */

typedef struct {
    FILE *f;
    bool ok;
} writer_t;

static void put(writer_t *w, const void *src, size_t n)
{
    if (w->ok && n && fwrite(src, 1, n, w->f) != n)
        w->ok = false;
}

/* Copies n device floats to a new host buffer, or NULL. */
static float *to_host(nb_backend_t *be, const float *dev, size_t n)
{
    float *h = malloc((n ? n : 1) * sizeof(float));
    if (h && n)
        nb_be_to_host(be, h, dev, n * sizeof(float));
    return h;
}

int nb_weights_save(const char *path, nb_part_t *p, char *err, size_t errlen)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        snprintf(err, errlen, "%s: path too long", path);
        return NB_EIO;
    }
    nb_backend_t *be = nb_part_backend(p);
    size_t n = nb_part_num_params(p);
    float *params = to_host(be, nb_part_params(p), n);
    if (!params) {
        snprintf(err, errlen, "%s: out of memory for %zu parameters", path, n);
        return NB_ENOMEM;
    }
    writer_t w = { fopen(tmp, "wb"), true };
    if (!w.f) {
        snprintf(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        free(params);
        return NB_EIO;
    }
    int32_t hf[HDR_FIELDS];
    int nf = header_fields(p, hf);
    uint32_t version = nf == HDR_FIELDS ? 6 : nf == HDR_FIELDS_V5 ? 5 : nf == HDR_FIELDS_V4 ? 4 : nf == HDR_FIELDS_V3 ? 3 : nf == HDR_FIELDS_V2 ? 2 : 1;
    put(&w, "NBWT", 4);
    put(&w, &version, 4);
    uint32_t nt = (uint32_t)nb_part_num_tensors(p);
    uint64_t np = n;
    put(&w, hf, (size_t)nf * 4);
    put(&w, &nt, 4);
    put(&w, &np, 8);
    for (uint32_t i = 0; i < nt; i++) {
        const nb_param_info_t *t = nb_part_tensor(p, (int)i);
        char name[NAME_BYTES] = { 0 };
        snprintf(name, sizeof name, "%s", t->name);
        uint32_t nd = (uint32_t)t->ndim;
        uint64_t shape[2] = { (uint64_t)t->shape[0], (uint64_t)t->shape[1] };
        put(&w, name, NAME_BYTES);
        put(&w, &nd, 4);
        put(&w, shape, 16);
    }
    put(&w, params, n * sizeof(float));
    free(params);
    if (fclose(w.f) != 0)
        w.ok = false;
    if (!w.ok || rename(tmp, path) != 0) {
        snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
        unlink(tmp);
        return NB_EIO;
    }
    return 0;
}

/* ---- reading ------------------------------------------------------------ */

typedef struct {
    FILE *f;
    long off;
} reader_t;

static bool get(reader_t *r, void *dst, size_t n)
{
    size_t got = fread(dst, 1, n, r->f);
    r->off += (long)got;
    return got == n;
}

/* Reads n floats into a new host buffer; NULL with *rc set on error. */
static float *get_floats(reader_t *r, size_t n, const char *what, const char *path, int *rc,
                         char *err, size_t errlen)
{
    float *h = malloc((n ? n : 1) * sizeof(float));
    if (!h) {
        *rc = NB_ENOMEM;
        snprintf(err, errlen, "%s: out of memory for %zu floats", path, n);
        return NULL;
    }
    if (!get(r, h, n * sizeof(float))) {
        *rc = NB_EFORMAT;
        snprintf(err, errlen, "%s: offset %ld: truncated %s (%zu floats expected)", path, r->off, what, n);
        free(h);
        return NULL;
    }
    return h;
}

int nb_weights_load(const char *path, nb_part_t *p, char *err, size_t errlen)
{
    reader_t r = { fopen(path, "rb"), 0 };
    if (!r.f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NB_EIO;
    }
    int rc = NB_EFORMAT;
    float *params = NULL;
    char magic[4];
    uint32_t version, nt;
    uint64_t np;
    int32_t hf[HDR_FIELDS], hw[HDR_FIELDS];
    if (!get(&r, magic, 4) || memcmp(magic, "NBWT", 4) != 0) {
        snprintf(err, errlen, "%s: offset 0: not a weights file (magic is not NBWT)", path);
        goto out;
    }
    if (!get(&r, &version, 4)) {
        snprintf(err, errlen, "%s: offset %ld: truncated header", path, r.off);
        goto out;
    }
    if (version < 1 || version > NB_WEIGHTS_VERSION) {
        snprintf(err, errlen, "%s: offset 4: version %u, this build reads version %u", path, version,
                 NB_WEIGHTS_VERSION);
        rc = NB_EVERSION;
        goto out;
    }
    long hdr_at = r.off;
    /* the model settings follow the 15 fields from version 2 on; version 1
     * files mean eps 1e-5 and the tanh GELU */
    int nf = fields_of(version);
    hf[FIELD_LN_EPS] = f32_bits(NB_MODEL_LN_EPS_DEFAULT);
    hf[FIELD_GELU] = NB_MODEL_GELU_TANH;
    for (int i = HDR_FIELDS_V2; i < HDR_FIELDS; i++)
        hf[i] = 0; /* before version 3: no adapters; before 4: no low-rank split; before 5: no cross-attention;
                    * before 6: no token shift */
    if (!get(&r, hf, (size_t)nf * 4)) {
        snprintf(err, errlen, "%s: offset %ld: truncated header", path, r.off);
        goto out;
    }
    header_fields(p, hw);
    for (int i = 0; i < HDR_FIELDS; i++)
        if (hf[i] != hw[i]) {
            if (i == FIELD_LN_EPS)
                snprintf(err, errlen, "%s: offset %ld: ln_eps is %g in the file%s, %g in this model", path,
                         hdr_at + 4 * i, (double)bits_f32(hf[i]), nf > i ? "" : " (by its version)",
                         (double)bits_f32(hw[i]));
            else if (i == FIELD_GELU)
                snprintf(err, errlen, "%s: offset %ld: gelu is %s in the file%s, %s in this model", path,
                         hdr_at + 4 * i, nb_gelu_name((nb_gelu_t)hf[i]), nf > i ? "" : " (by its version)",
                         nb_gelu_name((nb_gelu_t)hw[i]));
            else if (i == FIELD_SHIFT)
                snprintf(err, errlen, "%s: offset %ld: token_shift is %s in the file%s, %s in this model "
                         "(job.model.token_shift: the same tensors compute another function)", path,
                         hdr_at + 4 * i, hf[i] ? "true" : "false", nf > i ? "" : " (by its version)",
                         hw[i] ? "true" : "false");
            else if (i > FIELD_GELU)
                snprintf(err, errlen, "%s: offset %ld: %s is %d in the file%s, %d in this model (%s)", path,
                         hdr_at + 4 * i, field_names[i], hf[i], nf > i ? "" : " (by its version)", hw[i],
                         i == FIELD_XATTN ? "job.model.cross_attn: a decoder's blocks read an encoder's output"
                         : i >= FIELD_LOWRANK ? "job.lowrank" : "job.adapters");
            else
                snprintf(err, errlen, "%s: offset %ld: %s is %d in the file, %d in this model", path,
                         hdr_at + 4 * i, field_names[i], hf[i], hw[i]);
            rc = NB_EINVAL;
            goto out;
        }
    if (!get(&r, &nt, 4) || !get(&r, &np, 8)) {
        snprintf(err, errlen, "%s: offset %ld: truncated header", path, r.off);
        goto out;
    }
    if (nt != (uint32_t)nb_part_num_tensors(p) || np != nb_part_num_params(p)) {
        snprintf(err, errlen, "%s: offset %ld: %u tensors / %llu parameters in the file, %d / %zu in this model",
                 path, r.off - 12, nt, (unsigned long long)np, nb_part_num_tensors(p), nb_part_num_params(p));
        rc = NB_EINVAL;
        goto out;
    }
    /* the length before any buffer: a truncated or padded file is refused
     * without allocating the parameters it claims */
    uint64_t want_bytes = (uint64_t)r.off + (uint64_t)nt * (NAME_BYTES + 4 + 16) + np * 4u;
    struct stat st;
    if (fstat(fileno(r.f), &st) != 0 || (uint64_t)st.st_size != want_bytes) {
        snprintf(err, errlen, "%s: the file is %lld bytes, but its header describes %llu bytes (%u tensors, %llu "
                 "parameters): truncated or padded", path, (long long)st.st_size, (unsigned long long)want_bytes,
                 nt, (unsigned long long)np);
        goto out;
    }
    for (uint32_t i = 0; i < nt; i++) {
        const nb_param_info_t *t = nb_part_tensor(p, (int)i);
        long at = r.off;
        char name[NAME_BYTES];
        uint32_t nd;
        uint64_t shape[2];
        if (!get(&r, name, NAME_BYTES) || !get(&r, &nd, 4) || !get(&r, shape, 16)) {
            snprintf(err, errlen, "%s: offset %ld: truncated tensor table", path, r.off);
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
    if (!(params = get_floats(&r, n, "parameters", path, &rc, err, errlen)))
        goto out;
    if (fgetc(r.f) != EOF) {
        rc = NB_EFORMAT;
        snprintf(err, errlen, "%s: offset %ld: trailing bytes after the parameters", path, r.off);
        goto out;
    }
    nb_backend_t *be = nb_part_backend(p);
    nb_be_from_host(be, nb_part_params(p), params, n * sizeof(float));
    nb_be_sync(be);
    rc = 0;
out:
    free(params);
    fclose(r.f);
    return rc;
}
