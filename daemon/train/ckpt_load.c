/*
 * ckpt_load.c - restores a part (and its AdamW state) from a checkpoint of
 * any layer split: each tensor is taken by its global name from whichever
 * file holds it; every file used is verified in full, every value staged
 * in host memory and checked, and only then copied into the part's
 * buffers. See checkpoint.h.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/train/ckpt_internal.h"
#include "kernels/common.h"

typedef struct {
    int n;
    nb_st_file_t *f[NB_CKPT_MAX_FILES]; /* NULL: missing from the directory */
    bool used[NB_CKPT_MAX_FILES];
    const char *missing;                /* the first file missing, or NULL */
    int n_missing;
} files_t;

static void files_close(files_t *fs)
{
    for (int i = 0; i < fs->n; i++)
        nb_st_close(fs->f[i]);
    fs->n = 0;
}

/* Opens the header of every file of m present in dir (cheap: the data is
 * not read). A missing file is noted, not an error: a stage's directory
 * may hold only the files of its own part; it is an error only when a
 * tensor the part needs is in no file present (locate). */
static int files_open(const char *dir, const nb_ckpt_manifest_t *m, files_t *fs, char *err, size_t errlen)
{
    memset(fs, 0, sizeof *fs);
    for (int i = 0; i < m->n_files; i++) {
        int rc = nb__ckpt_open_file(dir, m, i, false, &fs->f[i], err, errlen);
        fs->n++;
        if (rc == NB_ENOENT) {
            if (!fs->missing)
                fs->missing = m->files[i].name;
            fs->n_missing++;
        } else if (rc) {
            files_close(fs);
            return rc;
        }
    }
    return 0;
}

/* Finds tensor name in the files: 0 with *fi, *ti set; NB_ENOENT when no
 * file holds it (naming a missing file that may), NB_EFORMAT when two do. */
static int locate(const char *dir, files_t *fs, const char *name, int *fi, int *ti, char *err, size_t errlen)
{
    *fi = -1;
    for (int i = 0; i < fs->n; i++) {
        int k = fs->f[i] ? nb_st_find(fs->f[i], name) : -1;
        if (k < 0)
            continue;
        if (*fi >= 0) {
            snprintf(err, errlen, "%s: tensor '%s' is in two files, %s and %s", dir, name, nb_st_path(fs->f[*fi]),
                     nb_st_path(fs->f[i]));
            return NB_EFORMAT;
        }
        *fi = i;
        *ti = k;
    }
    if (*fi < 0) {
        if (fs->missing)
            snprintf(err, errlen, "%s: tensor '%s' is in no file present, and %s/%s%s, which the manifest lists, "
                     "is missing", dir, name, dir, fs->missing, fs->n_missing > 1 ? " (and others)" : "");
        else
            snprintf(err, errlen, "%s: tensor '%s' is in no file of the checkpoint", dir, name);
        return NB_ENOENT;
    }
    return 0;
}

/* The file tensor's shape against the part's. */
static bool same_shape(const nb_st_tensor_t *t, const nb_param_info_t *pi)
{
    if (t->ndim != pi->ndim)
        return false;
    for (int d = 0; d < pi->ndim; d++)
        if (t->shape[d] != pi->shape[d])
            return false;
    return true;
}

int nb_ckpt_load_part(const char *dir, const nb_ckpt_manifest_t *m, nb_part_t *p, nb_optim_t *o, char *err,
                      size_t errlen)
{
    char why[256];
    if (nb__ckpt_model_diff(&m->meta.model, "the checkpoint", nb_part_config(p), "this model", why, sizeof why)) {
        snprintf(err, errlen, "%s: another model: %s", dir, why);
        return NB_EINVAL;
    }
    size_t n = nb_part_num_params(p), g = nb_part_num_grads(p);
    if (o && nb_optim_numel(o) != g) {
        snprintf(err, errlen, "%s: the optimizer covers %zu floats, the part's trainable tensors %zu", dir,
                 nb_optim_numel(o), g);
        return NB_EINVAL;
    }
    if (o && m->meta.optim_steps > INT32_MAX) {
        snprintf(err, errlen, "%s: optim_steps %lld is out of range", dir, (long long)m->meta.optim_steps);
        return NB_EFORMAT;
    }
    files_t fs;
    int rc = files_open(dir, m, &fs, err, errlen);
    if (rc)
        return rc;
    int nt = nb_part_num_tensors(p), copies = o ? 3 : 1;
    static const char *const prefix[3] = { "", "adamw.m.", "adamw.v." };
    size_t floats = n + (o ? 2 * g : 0);
    int *where = malloc((size_t)nt * (size_t)copies * 2 * sizeof(int));
    float *stage = malloc((floats ? floats : 1) * sizeof(float));
    if (!where || !stage) {
        snprintf(err, errlen, "%s: out of memory for %zu parameters%s", dir, n, o ? " and their AdamW state" : "");
        rc = NB_ENOMEM;
        goto out;
    }
    /* where every tensor is and that it fits, before reading anything; a
     * frozen tensor has no moments, and which tensors train must be what
     * it was in the run that wrote the checkpoint */
    for (int c = 0; c < copies; c++)
        for (int i = 0; i < nt; i++) {
            const nb_param_info_t *pi = nb_part_tensor(p, i);
            char name[NB__CKPT_NAME_MAX];
            snprintf(name, sizeof name, "%s%s", prefix[c], pi->name);
            int *w = &where[2 * (c * nt + i)];
            if (c && !pi->trainable) {
                int pf = where[2 * i]; /* a part's moments are in its parameters' file */
                if (nb_st_find(fs.f[pf], name) >= 0) {
                    snprintf(err, errlen, "%s: tensor '%s' is frozen in this run (job.freeze) but trained in the "
                             "run that wrote the checkpoint (it holds '%s'): resume with that run's job.freeze "
                             "and job.trainable, or start a new run from its weights (job.init)",
                             nb_st_path(fs.f[pf]), pi->name, name);
                    rc = NB_EINVAL;
                    goto out;
                }
                w[0] = -1;
                continue;
            }
            if ((rc = locate(dir, &fs, name, &w[0], &w[1], err, errlen))) {
                if (c && rc == NB_ENOENT && !fs.missing) {
                    snprintf(err, errlen, "%s: tensor '%s' trains in this run but has no AdamW state in the "
                             "checkpoint (no '%s'): it was frozen in the run that wrote it; resume with that "
                             "run's job.freeze and job.trainable, or start a new run from its weights (job.init)",
                             dir, pi->name, name);
                    rc = NB_EINVAL;
                }
                goto out;
            }
            const nb_st_tensor_t *t = nb_st_tensor(fs.f[w[0]], w[1]);
            if (!same_shape(t, pi)) {
                char got[96] = "", need[96] = "";
                for (int d = 0; d < t->ndim; d++)
                    snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? " x " : "",
                             (long long)t->shape[d]);
                for (int d = 0; d < pi->ndim; d++)
                    snprintf(need + strlen(need), sizeof need - strlen(need), "%s%lld", d ? " x " : "",
                             (long long)pi->shape[d]);
                snprintf(err, errlen, "%s: tensor '%s': shape [%s], this part needs [%s]", nb_st_path(fs.f[w[0]]),
                         name, got, need);
                rc = NB_EFORMAT;
                goto out;
            }
            fs.used[w[0]] = true;
        }
    /* every file used, in full, before any of its values is trusted */
    for (int i = 0; i < fs.n; i++)
        if (fs.used[i] && (rc = nb__ckpt_verify_file(dir, m, i, err, errlen)))
            goto out;
    for (int c = 0; c < copies; c++)
        for (int i = 0; i < nt; i++) {
            const nb_param_info_t *pi = nb_part_tensor(p, i);
            int *w = &where[2 * (c * nt + i)];
            if (w[0] < 0)
                continue;
            float *dst = c == 0 ? stage + pi->offset : stage + n + (size_t)(c - 1) * g + pi->grad_offset;
            if ((rc = nb__ckpt_read_tensor(fs.f[w[0]], w[1], dst, err, errlen)))
                goto out;
        }
    nb_backend_t *be = nb_part_backend(p);
    nb_be_from_host(be, nb_part_params(p), stage, n * sizeof(float));
    if (o) {
        nb_be_from_host(be, nb_optim_m(o), stage + n, g * sizeof(float));
        nb_be_from_host(be, nb_optim_v(o), stage + n + g, g * sizeof(float));
        nb_optim_set_steps(o, (int)m->meta.optim_steps);
    }
    nb_be_sync(be);
    rc = 0;
out:
    files_close(&fs);
    free(where);
    free(stage);
    return rc;
}

int nb_ckpt_extra_numel(const char *dir, const nb_ckpt_manifest_t *m, const char *name, size_t *numel, char *err,
                        size_t errlen)
{
    files_t fs;
    int rc = files_open(dir, m, &fs, err, errlen), fi, ti;
    if (rc)
        return rc;
    if ((rc = locate(dir, &fs, name, &fi, &ti, err, errlen)) == 0)
        *numel = (size_t)nb_st_tensor(fs.f[fi], ti)->numel;
    files_close(&fs);
    return rc;
}

int nb_ckpt_read_extra(const char *dir, const nb_ckpt_manifest_t *m, const char *name, float *dst, size_t numel,
                       char *err, size_t errlen)
{
    files_t fs;
    int rc = files_open(dir, m, &fs, err, errlen), fi, ti;
    float *stage = NULL;
    if (rc)
        return rc;
    if ((rc = locate(dir, &fs, name, &fi, &ti, err, errlen)))
        goto out;
    const nb_st_tensor_t *t = nb_st_tensor(fs.f[fi], ti);
    if (t->numel != numel) {
        snprintf(err, errlen, "%s: tensor '%s': %llu values, the caller expects %zu", nb_st_path(fs.f[fi]), name,
                 (unsigned long long)t->numel, numel);
        rc = NB_EINVAL;
        goto out;
    }
    if ((rc = nb__ckpt_verify_file(dir, m, fi, err, errlen)))
        goto out;
    if (!(stage = malloc((numel ? numel : 1) * sizeof(float)))) {
        snprintf(err, errlen, "%s: tensor '%s': out of memory", dir, name);
        rc = NB_ENOMEM;
        goto out;
    }
    if ((rc = nb__ckpt_read_tensor(fs.f[fi], ti, stage, err, errlen)))
        goto out;
    memcpy(dst, stage, numel * sizeof(float));
out:
    free(stage);
    files_close(&fs);
    return rc;
}
