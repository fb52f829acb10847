/*
 * weights_peek.c - what a weights file claims, checked before anything is
 * allocated in proportion to it: the model header against the tensor layout
 * it implies, and both against the file's length. See weights.h. The
 * layout is kernels' nb_model_layout (the list nb_part_new builds), never
 * a copy of it here.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "daemon/train/weights.h"

#define NAME_BYTES 32
#define HDR_FIELDS 25    /* version 6 (token shift); version 5 has the first 24, 4 23, 3 21, 2 17, 1 15 */
#define HDR_FIELDS_V5 24
#define HDR_FIELDS_V4 23
#define HDR_FIELDS_V3 21
#define HDR_FIELDS_V2 17
#define HDR_FIELDS_V1 15
#define TABLE_ENTRY_BYTES (NAME_BYTES + 4 + 16)
#define HEADER_BYTES(nf) (4 + 4 + 4 * (nf) + 4 + 8)

static bool add_u64(uint64_t a, uint64_t b, uint64_t *out) { return !__builtin_add_overflow(a, b, out); }
static bool mul_u64(uint64_t a, uint64_t b, uint64_t *out) { return !__builtin_mul_overflow(a, b, out); }

/* What nb_model_layout's callback fills: up to cap entries of out. */
struct table {
    nb_weights_tensor_t *out;
    int cap, n;
    uint64_t params;
};

static int put(void *ud, const nb_layout_tensor_t *l)
{
    struct table *tb = ud;
    if (tb->out && tb->n < tb->cap) {
        nb_weights_tensor_t *t = &tb->out[tb->n];
        memset(t, 0, sizeof *t);
        snprintf(t->name, sizeof t->name, "%s", l->name);
        t->ndim = (uint32_t)l->ndim;
        t->shape[0] = (uint64_t)l->shape[0];
        t->shape[1] = (uint64_t)l->shape[1];
        t->numel = l->numel;
    }
    tb->n++;
    tb->params = l->offset + l->numel;
    return 0;
}

int nb_weights_layout(const nb_model_config_t *c, const nb_part_spec_t *s, nb_weights_tensor_t *out, int cap,
                      uint64_t *n_params)
{
    struct table tb = { .out = out, .cap = cap };
    int n = nb_model_layout(c, s, put, &tb);
    if (n < 0)
        return n;
    if (n_params)
        *n_params = tb.params;
    return n;
}

void nb_weights_info_free(nb_weights_info_t *info)
{
    free(info->tensors);
    info->tensors = NULL;
}

int nb_weights_peek(const char *path, nb_weights_info_t *info, char *err, size_t errlen)
{
    memset(info, 0, sizeof *info);
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NB_EIO;
    }
    int rc = NB_EFORMAT;
    struct stat st;
    char magic[4];
    uint32_t version, nt;
    uint64_t np, want_np, want_bytes;
    int32_t h[HDR_FIELDS];
    int nf = HDR_FIELDS_V1;
    float eps = NB_MODEL_LN_EPS_DEFAULT;
    h[HDR_FIELDS_V2 - 1] = NB_MODEL_GELU_TANH;
    for (int i = HDR_FIELDS_V2; i < HDR_FIELDS; i++)
        h[i] = 0; /* before version 3: no adapters; before 4: no low-rank split; before 5: no cross-attention;
                   * before 6: no token shift */
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        rc = NB_EIO;
        goto out;
    }
    info->file_bytes = (uint64_t)st.st_size;
    if (fread(magic, 1, 4, f) != 4 || memcmp(magic, "NBWT", 4) != 0) {
        snprintf(err, errlen, "%s: offset 0: not a weights file (magic is not NBWT)", path);
        goto out;
    }
    if (fread(&version, 4, 1, f) != 1) {
        snprintf(err, errlen, "%s: truncated header (%llu bytes)", path, (unsigned long long)info->file_bytes);
        goto out;
    }
    if (version < 1 || version > NB_WEIGHTS_VERSION) {
        snprintf(err, errlen, "%s: offset 4: version %u, this build reads version %u", path, version,
                 NB_WEIGHTS_VERSION);
        rc = NB_EVERSION;
        goto out;
    }
    if (version >= 2)
        /* the model settings (then adapters, the low-rank split,
         * cross-attention and token shift) follow the 15 fields */
        nf = version >= 6   ? HDR_FIELDS
             : version == 5 ? HDR_FIELDS_V5
             : version == 4 ? HDR_FIELDS_V4
             : version == 3 ? HDR_FIELDS_V3
                            : HDR_FIELDS_V2;
    if (fread(h, 4, (size_t)nf, f) != (size_t)nf || fread(&nt, 4, 1, f) != 1 || fread(&np, 8, 1, f) != 1) {
        snprintf(err, errlen, "%s: truncated header (%llu bytes, the header alone is %d)", path,
                 (unsigned long long)info->file_bytes, HEADER_BYTES(nf));
        goto out;
    }
    if (nf >= HDR_FIELDS_V2)
        memcpy(&eps, &h[HDR_FIELDS_V1], 4);
    nb_model_config_t *c = &info->model;
    *c = (nb_model_config_t){ .n_layer = h[0], .d_model = h[1], .n_head = h[2], .d_ff = h[3], .vocab = h[4],
                              .max_seq = h[5], .causal = h[6] != 0, .norm = (nb_norm_t)h[7],
                              .head = (nb_head_kind_t)h[8], .n_classes = h[9], .tie_embeddings = h[10] != 0,
                              .ln_eps = eps, .gelu = (nb_gelu_t)h[HDR_FIELDS_V2 - 1],
                              .adapter_size = h[17], .adapter_after = (unsigned)h[18], .adapter_first = h[19],
                              .adapter_last = h[20], .lowrank_rank = h[21], .lowrank_block = h[22],
                              .cross_attn = h[23] != 0, .token_shift = h[24] != 0 };
    if (h[23] != 0 && h[23] != 1) {
        snprintf(err, errlen, "%s: offset %d: cross_attn is %d, must be 0 or 1", path, 8 + 4 * 23, h[23]);
        goto out;
    }
    if (h[24] != 0 && h[24] != 1) {
        snprintf(err, errlen, "%s: offset %d: token_shift is %d, must be 0 or 1", path, 8 + 4 * 24, h[24]);
        goto out;
    }
    info->spec = (nb_part_spec_t){ .embed = h[11] != 0, .first = h[12], .last = h[13], .head = h[14] != 0 };
    const char *why = nb_model_config_validate(c);
    if (why) {
        snprintf(err, errlen, "%s: offset 8: bad model config: %s", path, why);
        goto out;
    }
    if (info->spec.first < 0 || info->spec.first > info->spec.last || info->spec.last > c->n_layer) {
        snprintf(err, errlen, "%s: offset 56: part blocks %d..%d are not within the model's %d", path,
                 info->spec.first, info->spec.last, c->n_layer);
        goto out;
    }
    int n = nb_weights_layout(c, &info->spec, NULL, 0, &want_np);
    if (n < 0 || !mul_u64(want_np, 4, &want_bytes) ||
        !add_u64(want_bytes, HEADER_BYTES(nf) + (uint64_t)n * TABLE_ENTRY_BYTES, &want_bytes)) {
        snprintf(err, errlen, "%s: offset 8: the model config's parameter count overflows", path);
        goto out;
    }
    if (nt != (uint32_t)n || np != want_np) {
        snprintf(err, errlen, "%s: offset %d: %u tensors / %llu parameters in the header, the model it describes "
                 "has %d / %llu", path, HEADER_BYTES(nf) - 12, nt, (unsigned long long)np, n,
                 (unsigned long long)want_np);
        goto out;
    }
    /* the sizes before any allocation: a short file cannot make us build a
     * large model */
    if (info->file_bytes != want_bytes) {
        snprintf(err, errlen, "%s: the file is %llu bytes, but its header describes %llu bytes (%u tensors, "
                 "%llu parameters): truncated, padded or not this model", path,
                 (unsigned long long)info->file_bytes, (unsigned long long)want_bytes, nt, (unsigned long long)np);
        goto out;
    }
    if (!(info->tensors = calloc((size_t)(n ? n : 1), sizeof *info->tensors))) {
        snprintf(err, errlen, "%s: out of memory for %d tensor entries", path, n);
        rc = NB_ENOMEM;
        goto out;
    }
    nb_weights_layout(c, &info->spec, info->tensors, n, NULL);
    uint64_t off = HEADER_BYTES(nf) + (uint64_t)n * TABLE_ENTRY_BYTES;
    for (int i = 0; i < n; i++) {
        nb_weights_tensor_t *t = &info->tensors[i];
        long at = ftell(f);
        char name[NAME_BYTES];
        uint32_t nd;
        uint64_t shape[2];
        if (fread(name, 1, NAME_BYTES, f) != NAME_BYTES || fread(&nd, 4, 1, f) != 1 || fread(shape, 8, 2, f) != 2) {
            snprintf(err, errlen, "%s: offset %ld: truncated tensor table", path, at);
            goto out;
        }
        name[NAME_BYTES - 1] = '\0';
        if (strcmp(name, t->name) != 0 || nd != t->ndim || shape[0] != t->shape[0] || shape[1] != t->shape[1]) {
            snprintf(err, errlen, "%s: offset %ld: tensor %d is '%s' %llux%llu, the model expects '%s' %llux%llu",
                     path, at, i, name, (unsigned long long)shape[0], (unsigned long long)shape[1], t->name,
                     (unsigned long long)t->shape[0], (unsigned long long)t->shape[1]);
            goto out;
        }
        t->file_offset = off;
        off += t->numel * 4;
    }
    info->n_tensors = n;
    info->n_params = np;
    rc = 0;
out:
    if (rc)
        nb_weights_info_free(info);
    fclose(f);
    return rc;
}
