/*
 * weights_part.c - a part's share of a weights file (job.init): every
 * tensor of the part, taken by name from a file of the same model that
 * holds it (a whole-model file, or the part's own), so that each pipeline
 * stage loads only its slice of one model file. See weights.h.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/train/weights.h"

/* The first model field in which the file differs from p (in the weights
 * header's order; the adapter fields only when the file has adapters; the
 * low-rank split, cross-attention and token shift always), written to err; false when
 * none does. */
static bool model_differs(const char *path, const nb_model_config_t *f, const nb_model_config_t *c, char *err,
                          size_t errlen)
{
    bool fc = f->head == NB_MODEL_HEAD_SEQCLS || f->head == NB_MODEL_HEAD_TOKCLS;
    bool cc = c->head == NB_MODEL_HEAD_SEQCLS || c->head == NB_MODEL_HEAD_TOKCLS;
    const struct {
        const char *name;
        int file, want;
    } v[] = {
        { "n_layer", f->n_layer, c->n_layer }, { "d_model", f->d_model, c->d_model },
        { "n_head", f->n_head, c->n_head },    { "d_ff", f->d_ff, c->d_ff },
        { "vocab", f->vocab, c->vocab },       { "max_seq", f->max_seq, c->max_seq },
        { "causal", f->causal, c->causal },    { "norm", (int)f->norm, (int)c->norm },
        { "head", (int)f->head, (int)c->head },
        { "n_classes", fc ? f->n_classes : 0, cc ? c->n_classes : 0 },
        { "tie_embeddings", !fc && f->tie_embeddings, !cc && c->tie_embeddings },
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        if (v[i].file != v[i].want) {
            snprintf(err, errlen, "%s: %s is %d in the file, %d in this model", path, v[i].name, v[i].file, v[i].want);
            return true;
        }
    if (nb_model_ln_eps(f) != nb_model_ln_eps(c)) {
        snprintf(err, errlen, "%s: ln_eps is %g in the file, %g in this model", path, (double)nb_model_ln_eps(f),
                 (double)nb_model_ln_eps(c));
        return true;
    }
    if (f->gelu != c->gelu) {
        snprintf(err, errlen, "%s: gelu is %s in the file, %s in this model", path, nb_gelu_name(f->gelu),
                 nb_gelu_name(c->gelu));
        return true;
    }
    /* a file with adapters only into a model with the same adapters (its
     * trained adapters would otherwise be dropped or misplaced); a file
     * without adapters may load into a model with them (docs/finetune.md) */
    if (f->adapter_size > 0) {
        bool cad = c->adapter_size > 0;
        const struct {
            const char *name;
            int file, want;
        } a[] = {
            { "adapter_size", f->adapter_size, cad ? c->adapter_size : 0 },
            { "adapter_after", (int)f->adapter_after, cad ? (int)c->adapter_after : 0 },
            { "adapter_first", f->adapter_first, cad ? c->adapter_first : 0 },
            { "adapter_last", f->adapter_last, cad ? c->adapter_last : 0 },
        };
        for (size_t i = 0; i < sizeof a / sizeof a[0]; i++)
            if (a[i].file != a[i].want) {
                snprintf(err, errlen, "%s: %s is %d in the file, %d in this model (job.adapters must match the "
                         "adapters the file was trained with)", path, a[i].name, a[i].file, a[i].want);
                return true;
            }
    }
    /* the low-rank split is another model (U S V where the dense one has
     * fcproj.w): only the same split (job.lowrank) */
    int fr = f->lowrank_rank > 0 ? f->lowrank_rank : 0, cr = c->lowrank_rank > 0 ? c->lowrank_rank : 0;
    int fb = fr ? f->lowrank_block : 0, cb = cr ? c->lowrank_block : 0;
    if (fr != cr || fb != cb) {
        snprintf(err, errlen, "%s: %s is %d in the file, %d in this model (job.lowrank must match the split the "
                 "file was written with)", path, fr != cr ? "lowrank_rank" : "lowrank_block", fr != cr ? fr : fb,
                 fr != cr ? cr : cb);
        return true;
    }
    /* a decoder's blocks hold cross-attention tensors that a model without
     * it has not, and the other way round (encdec.c seeds them when it
     * starts a decoder from a model without cross-attention) */
    if (f->cross_attn != c->cross_attn) {
        snprintf(err, errlen, "%s: cross_attn is %d in the file, %d in this model (job.model.cross_attn: a decoder's "
                 "blocks read an encoder's output)", path, f->cross_attn, c->cross_attn);
        return true;
    }
    /* token shift has no tensors of its own, but the file's tensors were
     * trained to compute another function: only the same setting */
    if (f->token_shift != c->token_shift) {
        snprintf(err, errlen, "%s: token_shift is %s in the file, %s in this model (job.model.token_shift must "
                 "match the model the file was written by)", path, f->token_shift ? "true" : "false",
                 c->token_shift ? "true" : "false");
        return true;
    }
    return false;
}

int nb_weights_load_part(const char *path, nb_part_t *p, char *err, size_t errlen)
{
    nb_weights_info_t info;
    memset(&info, 0, sizeof info);
    int rc = nb_weights_peek(path, &info, err, errlen); /* sizes checked before anything is allocated */
    if (rc)
        return rc;
    float *host = NULL;
    FILE *f = NULL;
    rc = NB_EINVAL;
    if (model_differs(path, &info.model, nb_part_config(p), err, errlen))
        goto out;
    /* every tensor first, so that nothing is read for a file that lacks one */
    int nt = nb_part_num_tensors(p);
    for (int i = 0; i < nt; i++) {
        const nb_param_info_t *t = nb_part_tensor(p, i);
        const nb_weights_tensor_t *w = NULL;
        for (int k = 0; k < info.n_tensors && !w; k++)
            if (strcmp(info.tensors[k].name, t->name) == 0)
                w = &info.tensors[k];
        if (!w && info.model.adapter_size == 0 && strstr(t->name, ".ad_"))
            continue; /* a model without adapters: this adapter keeps its fresh init (the identity) */
        if (!w) {
            snprintf(err, errlen, "%s: holds no tensor '%s' (the file is the part embed=%d blocks %d..%d head=%d of "
                     "the model; this part needs blocks %d..%d%s%s)", path, t->name, info.spec.embed,
                     info.spec.first, info.spec.last - 1, info.spec.head, nb_part_spec(p)->first,
                     nb_part_spec(p)->last - 1, nb_part_spec(p)->embed ? ", the embedding" : "",
                     nb_part_spec(p)->head ? ", the head" : "");
            goto out;
        }
        if (w->ndim != (uint32_t)t->ndim || w->numel != t->numel || w->shape[0] != (uint64_t)t->shape[0]) {
            snprintf(err, errlen, "%s: tensor '%s' is %llux%llu in the file, %lldx%lld in this model", path, t->name,
                     (unsigned long long)w->shape[0], (unsigned long long)w->shape[1], (long long)t->shape[0],
                     (long long)(t->ndim == 2 ? t->shape[1] : 1));
            goto out;
        }
    }
    size_t n = nb_part_num_params(p);
    if (!(host = malloc((n ? n : 1) * sizeof(float)))) {
        snprintf(err, errlen, "%s: out of memory for %zu parameters", path, n);
        rc = NB_ENOMEM;
        goto out;
    }
    nb_be_to_host(nb_part_backend(p), host, nb_part_params(p), n * sizeof(float)); /* what is not in the file */
    if (!(f = fopen(path, "rb"))) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        rc = NB_EIO;
        goto out;
    }
    for (int i = 0; i < nt; i++) {
        const nb_param_info_t *t = nb_part_tensor(p, i);
        const nb_weights_tensor_t *w = NULL;
        for (int k = 0; k < info.n_tensors && !w; k++)
            if (strcmp(info.tensors[k].name, t->name) == 0)
                w = &info.tensors[k];
        if (!w)
            continue; /* a fresh adapter (checked above) */
        if (fseeko(f, (off_t)w->file_offset, SEEK_SET) != 0 ||
            fread(host + t->offset, sizeof(float), t->numel, f) != t->numel) {
            snprintf(err, errlen, "%s: offset %llu: cannot read tensor '%s' (%zu floats)", path,
                     (unsigned long long)w->file_offset, t->name, t->numel);
            rc = NB_EIO;
            goto out;
        }
    }
    nb_backend_t *be = nb_part_backend(p);
    nb_be_from_host(be, nb_part_params(p), host, n * sizeof(float));
    nb_be_sync(be);
    rc = 0;
out:
    if (f)
        fclose(f);
    free(host);
    nb_weights_info_free(&info);
    return rc;
}
