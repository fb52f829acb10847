/*
 * lowrank_init.c - job.init through a dense twin part; see lowrank_init.h.
 */
#include <stdio.h>
#include <string.h>
#include "daemon/train/lowrank_init.h"
#include "daemon/train/weights.h"

/* Whether path is a Nebula weights file of a split model (its header says
 * so, version 4): it is loaded as it is, not split again. */
static bool split_weights_file(const char *path)
{
    char magic[4] = { 0 };
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    size_t got = fread(magic, 1, 4, f);
    fclose(f);
    if (got != 4 || memcmp(magic, "NBWT", 4) != 0)
        return false;
    nb_weights_info_t info;
    char err[512];
    if (nb_weights_peek(path, &info, err, sizeof err) != 0)
        return false; /* the load below names what is wrong with it */
    bool split = info.model.lowrank_rank > 0;
    nb_weights_info_free(&info);
    return split;
}

int nb_lowrank_init_part(const char *path, nb_part_t *p, nb_hf_note_cb note, void *ud, char *err, size_t errlen)
{
    const nb_model_config_t *c = nb_part_config(p);
    if (c->lowrank_rank <= 0 || split_weights_file(path))
        return nb_hf_init_part(path, p, note, ud, err, errlen); /* a split file: the same split, or refused */
    /* the dense twin holds p's blocks and, for a part beginning at the
     * factor, the split block below them */
    nb_model_config_t dc = *c;
    dc.lowrank_block = dc.lowrank_rank = 0;
    nb_part_spec_t ds = *nb_part_spec(p);
    if (nb_part_in_width(p) != c->d_model && !ds.embed)
        ds.first = c->lowrank_block;
    if (ds.head && !ds.embed && dc.tie_embeddings &&
        (dc.head == NB_MODEL_HEAD_LM || dc.head == NB_MODEL_HEAD_MLM)) {
        snprintf(err, errlen, "job.init with job.lowrank: a tied head part without the embedding is not supported "
                 "(tie_embeddings: false)");
        return NB_EINVAL;
    }
    nb_part_t *dense = NULL;
    int rc = nb_part_new(nb_part_backend(p), &dc, &ds, 1, NULL, &dense, err, errlen);
    if (rc == 0)
        rc = nb_hf_init_part(path, dense, note, ud, err, errlen);
    if (rc == 0)
        rc = nb_part_lowrank_init(p, dense, err, errlen);
    if (rc == 0 && note) {
        char msg[160];
        snprintf(msg, sizeof msg, "h%d.fcproj.w split into U S V of rank %d (truncated SVD)", c->lowrank_block,
                 c->lowrank_rank);
        note(ud, msg);
    }
    nb_part_free(dense);
    return rc;
}
