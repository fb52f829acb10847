/*
 * ckpt_merge.c - merges the files of a checkpoint (one per stage) into one
 * model.safetensors with its own manifest; see checkpoint.h.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "daemon/train/ckpt_internal.h"
#include "kernels/common.h"

int nb_ckpt_merge(const char *dir, const char *outdir, char *err, size_t errlen)
{
    char a[PATH_MAX], b[PATH_MAX];
    struct stat sa, sb;
    if ((realpath(dir, a) && realpath(outdir, b) && !strcmp(a, b)) ||
        (stat(dir, &sa) == 0 && stat(outdir, &sb) == 0 && sa.st_ino == sb.st_ino && sa.st_dev == sb.st_dev)) {
        snprintf(err, errlen, "%s: merging a checkpoint into its own directory", outdir);
        return NB_EINVAL;
    }
    nb_ckpt_manifest_t *m = malloc(sizeof *m), *out = calloc(1, sizeof *out);
    nb_ckpt_snap_t *snap = nb_ckpt_snap_new();
    float *buf = NULL;
    int rc = NB_ENOMEM;
    if (!m || !out || !snap) {
        snprintf(err, errlen, "%s: out of memory", dir);
        goto done;
    }
    if ((rc = nb_ckpt_manifest_read(dir, m, err, errlen)))
        goto done;
    out->meta = m->meta;
    uint64_t stages = 0;
    for (int i = 0; i < m->n_files && !rc; i++) {
        nb_st_file_t *f;
        if ((rc = nb__ckpt_open_file(dir, m, i, true, &f, err, errlen)))
            break;
        stages |= m->files[i].stages;
        for (int k = 0; k < nb_st_count(f) && !rc; k++) {
            const nb_st_tensor_t *t = nb_st_tensor(f, k);
            free(buf);
            if (!(buf = malloc((t->numel ? t->numel : 1) * sizeof *buf))) {
                snprintf(err, errlen, "%s: tensor '%s': out of memory", nb_st_path(f), t->name);
                rc = NB_ENOMEM;
                break;
            }
            if ((rc = nb__ckpt_read_tensor(f, k, buf, err, errlen)))
                break;
            rc = nb_ckpt_snap_add(snap, t->name, t->ndim, t->shape, buf);
            if (rc == NB_EINVAL)
                snprintf(err, errlen, "%s: tensor '%s' is in two files of the checkpoint (or its name is too long)",
                         nb_st_path(f), t->name);
            else if (rc)
                snprintf(err, errlen, "%s: tensor '%s': out of memory", nb_st_path(f), t->name);
            if (rc == NB_EINVAL)
                rc = NB_EFORMAT;
        }
        nb_st_close(f);
    }
    if (rc || (rc = nb_ckpt_begin(outdir, err, errlen)) ||
        (rc = nb_ckpt_write_file(outdir, "model.safetensors", &snap, 1, &out->meta, &out->files[0], err, errlen)))
        goto done;
    out->files[0].stages = stages;
    out->n_files = 1;
    rc = nb_ckpt_manifest_write(outdir, out, err, errlen);
done:
    free(buf);
    nb_ckpt_snap_free(snap);
    free(m);
    free(out);
    return rc;
}
