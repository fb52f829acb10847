/*
 * weights_peek.c - what a weights file claims, checked before anything is
 * allocated in proportion to it: the model header against the tensor layout
 * it implies, and both against the file's length. See weights.h.
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

/* Appends one tensor (when out has room) and counts it. */
static void put(nb_weights_tensor_t *out, int cap, int *n, uint64_t *params, bool *ok, const char *name,
                uint32_t ndim, uint64_t d0, uint64_t d1)
{
    uint64_t numel;
    if (!mul_u64(d0, ndim == 2 ? d1 : 1, &numel) || !add_u64(*params, numel, params))
        *ok = false;
    if (out && *n < cap) {
        nb_weights_tensor_t *t = &out[*n];
        memset(t, 0, sizeof *t);
        snprintf(t->name, sizeof t->name, "%s", name);
        t->ndim = ndim;
        t->shape[0] = d0;
        t->shape[1] = ndim == 2 ? d1 : 1;
        t->numel = numel;
    }
    (*n)++;
}

int nb_weights_layout(const nb_model_config_t *c, const nb_part_spec_t *s, nb_weights_tensor_t *out, int cap,
                      uint64_t *n_params)
{
    int n = 0;
    uint64_t params = 0, C = (uint64_t)c->d_model, F = (uint64_t)c->d_ff, V = (uint64_t)c->vocab;
    bool ok = true;
    if (s->embed) {
        put(out, cap, &n, &params, &ok, "wte", 2, V, C);
        put(out, cap, &n, &params, &ok, "wpe", 2, (uint64_t)c->max_seq, C);
        if (c->norm == NB_MODEL_NORM_POST) {
            put(out, cap, &n, &params, &ok, "emb_ln.w", 1, C, 0);
            put(out, cap, &n, &params, &ok, "emb_ln.b", 1, C, 0);
        }
    }
    static const char *const bn[12] = { "ln1.w", "ln1.b", "qkv.w", "qkv.b", "proj.w", "proj.b",
                                        "ln2.w", "ln2.b", "fc.w", "fc.b", "fcproj.w", "fcproj.b" };
    const uint64_t rows[12] = { C, C, 3 * C, 3 * C, C, C, C, C, F, F, C, C };
    const uint64_t cols[12] = { 0, 0, C, 0, C, 0, 0, 0, C, 0, F, 0 };
    /* a decoder's cross-attention, then adapters: docs/model.md, in the
     * order of kernels/model_xattn.c and model_adapter.c */
    static const char *const xn[8] = { "xln.w", "xln.b", "xq.w", "xq.b", "xkv.w", "xkv.b", "xproj.w", "xproj.b" };
    const uint64_t xrows[8] = { C, C, C, C, 2 * C, 2 * C, C, C };
    const uint64_t xcols[8] = { 0, 0, C, 0, C, 0, C, 0 };
    static const char *const adn[3] = { "attn", "xattn", "ffn" };
    uint64_t A = c->adapter_size > 0 ? (uint64_t)c->adapter_size : 0;
    /* the low-rank split (kernels/model_lowrank.c): block k's fcproj.w is
     * V (R,F), S (R,R), U (C,R); fcproj.b and, post-LN, ln2 follow them. A
     * part ending at the factor holds V alone of those; the part beginning
     * at it holds the rest first, before its own blocks. */
    static const char *const lrn[6] = { "fcproj.v", "fcproj.s", "fcproj.u", "fcproj.b", "ln2.w", "ln2.b" };
    uint64_t R = c->lowrank_rank > 0 ? (uint64_t)c->lowrank_rank : 0;
    const uint64_t lrrows[6] = { R, R, C, C, C, C }, lrcols[6] = { F, R, R, 0, 0, 0 };
    int k = R ? c->lowrank_block : -1;
    bool post = c->norm == NB_MODEL_NORM_POST;
    bool lower = R && s->first <= k && k < s->last && s->last == k + 1 && !s->head;
    bool upper = R && s->first == k + 1 && !s->embed;
    int lr_end = post ? 6 : 4;
    if (upper)
        for (int t = 1; t < lr_end; t++) {
            char name[NAME_BYTES];
            snprintf(name, sizeof name, "h%d.%s", k, lrn[t]);
            put(out, cap, &n, &params, &ok, name, lrcols[t] ? 2 : 1, lrrows[t], lrcols[t]);
        }
    for (int l = s->first; l < s->last; l++) {
        char name[NAME_BYTES];
        for (int t = 0; t < 12; t++) {
            /* fcproj.w/.b (t 10, 11) and post-LN ln2 (t 6, 7) of the split
             * block are its low-rank tensors, below */
            if (l == k && (t >= 10 || (post && (t == 6 || t == 7))))
                continue;
            snprintf(name, sizeof name, "h%d.%s", l, bn[t]);
            put(out, cap, &n, &params, &ok, name, cols[t] ? 2 : 1, rows[t], cols[t]);
        }
        for (int t = 0; c->cross_attn && t < 8; t++) {
            snprintf(name, sizeof name, "h%d.%s", l, xn[t]);
            put(out, cap, &n, &params, &ok, name, xcols[t] ? 2 : 1, xrows[t], xcols[t]);
        }
        for (int k = 0; k < 3; k++) {
            if (!nb_model_has_adapter(c, l, 1u << k))
                continue;
            snprintf(name, sizeof name, "h%d.ad_%s.down.w", l, adn[k]);
            put(out, cap, &n, &params, &ok, name, 2, A, C);
            snprintf(name, sizeof name, "h%d.ad_%s.down.b", l, adn[k]);
            put(out, cap, &n, &params, &ok, name, 1, A, 0);
            snprintf(name, sizeof name, "h%d.ad_%s.up.w", l, adn[k]);
            put(out, cap, &n, &params, &ok, name, 2, C, A);
            snprintf(name, sizeof name, "h%d.ad_%s.up.b", l, adn[k]);
            put(out, cap, &n, &params, &ok, name, 1, C, 0);
        }
        for (int t = 0; l == k && t < (lower ? 1 : lr_end); t++) {
            snprintf(name, sizeof name, "h%d.%s", l, lrn[t]);
            put(out, cap, &n, &params, &ok, name, lrcols[t] ? 2 : 1, lrrows[t], lrcols[t]);
        }
    }
    if (s->head) {
        bool vocab_head = c->head == NB_MODEL_HEAD_LM || c->head == NB_MODEL_HEAD_MLM;
        if (c->norm == NB_MODEL_NORM_PRE) {
            put(out, cap, &n, &params, &ok, "lnf.w", 1, C, 0);
            put(out, cap, &n, &params, &ok, "lnf.b", 1, C, 0);
        }
        if (vocab_head && !c->tie_embeddings)
            put(out, cap, &n, &params, &ok, "lm.w", 2, V, C);
        if (!vocab_head) {
            put(out, cap, &n, &params, &ok, "cls.w", 2, (uint64_t)c->n_classes, C);
            put(out, cap, &n, &params, &ok, "cls.b", 1, (uint64_t)c->n_classes, 0);
        }
    }
    if (!ok)
        return NB_ERANGE;
    if (n_params)
        *n_params = params;
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
