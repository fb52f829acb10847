/*
 * lowrank_init.c - job.init through a dense twin part; see lowrank_init.h.
 */
#include <stdio.h>
#include "daemon/train/lowrank_init.h"

int nb_lowrank_init_part(const char *path, nb_part_t *p, nb_hf_note_cb note, void *ud, char *err, size_t errlen)
{
    const nb_model_config_t *c = nb_part_config(p);
    if (c->lowrank_rank <= 0)
        return nb_hf_init_part(path, p, note, ud, err, errlen);
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
