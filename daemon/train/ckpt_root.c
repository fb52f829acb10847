/*
 * ckpt_root.c - the checkpoint root: step directories, which of them are
 * complete (a manifest that parses, for the step the name gives), keeping
 * the newest K, and removing what killed writers left behind; see
 * checkpoint.h.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include "daemon/train/ckpt_internal.h"
#include "kernels/common.h"

void nb_ckpt_step_dir(const char *root, int64_t step, char *buf, size_t len)
{
    snprintf(buf, len, "%s/step-%08lld", root, (long long)step);
}

/* The step a directory entry's name stands for, or -1 (only the names
 * nb_ckpt_step_dir makes count). */
static int64_t step_of(const char *name)
{
    if (strncmp(name, "step-", 5) != 0)
        return -1;
    const char *d = name + 5;
    size_t n = strlen(d);
    if (n < 8 || n > 18)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (d[i] < '0' || d[i] > '9')
            return -1;
    long long v = strtoll(d, NULL, 10);
    char canon[32];
    snprintf(canon, sizeof canon, "step-%08lld", v);
    return strcmp(canon, name) == 0 ? v : -1;
}

typedef struct {
    int64_t step;
    bool complete;
} entry_t;

static int cmp_desc(const void *a, const void *b)
{
    int64_t x = ((const entry_t *)a)->step, y = ((const entry_t *)b)->step;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* The step directories under root, newest first (*out malloc'd). Returns
 * the count, 0 when root does not exist, or NB_EIO / NB_ENOMEM. */
static int scan(const char *root, entry_t **out, char *err, size_t errlen)
{
    *out = NULL;
    DIR *d = opendir(root);
    if (!d) {
        if (errno == ENOENT)
            return 0;
        snprintf(err, errlen, "%s: cannot list: %s", root, strerror(errno));
        return NB_EIO;
    }
    int n = 0, cap = 0;
    entry_t *e = NULL;
    struct dirent *de;
    nb_ckpt_manifest_t *m = malloc(sizeof *m);
    if (!m) {
        closedir(d);
        snprintf(err, errlen, "%s: out of memory", root);
        return NB_ENOMEM;
    }
    while ((de = readdir(d))) {
        int64_t step = step_of(de->d_name);
        if (step < 0)
            continue;
        char path[4096], why[512];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", root, de->d_name);
        if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode))
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            entry_t *ne = realloc(e, (size_t)cap * sizeof *ne);
            if (!ne) {
                free(e);
                free(m);
                closedir(d);
                snprintf(err, errlen, "%s: out of memory", root);
                return NB_ENOMEM;
            }
            e = ne;
        }
        e[n].step = step;
        e[n].complete = nb_ckpt_manifest_read(path, m, why, sizeof why) == 0 && m->meta.step == step;
        n++;
    }
    free(m);
    closedir(d);
    if (n)
        qsort(e, (size_t)n, sizeof *e, cmp_desc);
    *out = e;
    return n;
}

int nb_ckpt_list(const char *root, int64_t *steps, int cap)
{
    entry_t *e;
    char err[64];
    int n = scan(root, &e, err, sizeof err), k = 0;
    if (n < 0)
        return NB_EIO;
    for (int i = 0; i < n && k < cap; i++)
        if (e[i].complete)
            steps[k++] = e[i].step;
    free(e);
    return k;
}

/* Removes path and what it holds (a step directory: files, and at most a
 * few levels of directories a writer may have added). */
static int rm_tree(const char *path, int depth, char *err, size_t errlen)
{
    DIR *d = opendir(path);
    if (!d) {
        snprintf(err, errlen, "%s: cannot list: %s", path, strerror(errno));
        return NB_EIO;
    }
    /* the manifest first: a removal cut short leaves an incomplete
     * directory, never a complete-looking one with files missing */
    char sub[4096];
    snprintf(sub, sizeof sub, "%s/%s", path, NB_CKPT_MANIFEST);
    if (unlink(sub) != 0 && errno != ENOENT) {
        snprintf(err, errlen, "%s: cannot remove: %s", sub, strerror(errno));
        closedir(d);
        return NB_EIO;
    }
    nb__ckpt_fsync_dir(path);
    struct dirent *de;
    int rc = 0;
    while (!rc && (de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        snprintf(sub, sizeof sub, "%s/%s", path, de->d_name);
        struct stat st;
        if (lstat(sub, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            if (depth >= 4) {
                snprintf(err, errlen, "%s: too deep to remove", sub);
                rc = NB_EIO;
            } else {
                rc = rm_tree(sub, depth + 1, err, errlen);
            }
        } else if (unlink(sub) != 0 && errno != ENOENT) {
            snprintf(err, errlen, "%s: cannot remove: %s", sub, strerror(errno));
            rc = NB_EIO;
        }
    }
    closedir(d);
    if (!rc && rmdir(path) != 0) {
        snprintf(err, errlen, "%s: cannot remove: %s", path, strerror(errno));
        rc = NB_EIO;
    }
    return rc;
}

/* Removes the temporary files in dir that no writer holds locked (their
 * writer was killed). Returns how many, or NB_EIO. */
static int rm_stale_tmp(const char *dir, char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 0 : (snprintf(err, errlen, "%s: cannot list: %s", dir, strerror(errno)), NB_EIO);
    struct dirent *de;
    int n = 0, rc = 0;
    size_t sl = strlen(NB__CKPT_TMP_SUFFIX);
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l <= sl || strcmp(de->d_name + l - sl, NB__CKPT_TMP_SUFFIX) != 0)
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
        if (fd < 0)
            continue;
        struct stat st;
        /* a writer holds its temporary file locked until it is renamed */
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && flock(fd, LOCK_EX | LOCK_NB) == 0) {
            struct stat now;
            if (stat(path, &now) == 0 && now.st_ino == st.st_ino && now.st_dev == st.st_dev) {
                if (unlink(path) != 0) {
                    snprintf(err, errlen, "%s: cannot remove: %s", path, strerror(errno));
                    rc = NB_EIO;
                } else {
                    n++;
                }
            }
        }
        close(fd);
    }
    closedir(d);
    return rc ? rc : n;
}

int nb_ckpt_prune(const char *root, int keep, char *err, size_t errlen)
{
    if (keep < 1)
        keep = 1;
    entry_t *e;
    int n = scan(root, &e, err, errlen);
    if (n < 0)
        return n == NB_ENOMEM ? NB_ENOMEM : NB_EIO;
    int64_t newest = -1;
    for (int i = 0; i < n && newest < 0; i++)
        if (e[i].complete)
            newest = e[i].step;
    int removed = 0, kept = 0, rc = 0;
    char path[4096];
    for (int i = 0; i < n && !rc; i++) {
        nb_ckpt_step_dir(root, e[i].step, path, sizeof path);
        bool drop;
        if (e[i].complete)
            drop = ++kept > keep;
        else
            drop = newest >= 0 && e[i].step < newest; /* newer ones may be in the making */
        if (drop) {
            if ((rc = rm_tree(path, 0, err, errlen)) == 0)
                removed++;
        } else if ((rc = rm_stale_tmp(path, err, errlen)) > 0) {
            rc = 0;
        }
    }
    if (!rc && n >= 0) {
        if ((rc = rm_stale_tmp(root, err, errlen)) > 0)
            rc = 0;
        if (removed)
            nb__ckpt_fsync_dir(root);
    }
    free(e);
    return rc ? NB_EIO : removed;
}

int nb_ckpt_find(const char *path, char *dir, size_t len, char *err, size_t errlen)
{
    char mpath[4096];
    struct stat st;
    snprintf(mpath, sizeof mpath, "%s/%s", path, NB_CKPT_MANIFEST);
    if (stat(mpath, &st) == 0) {
        snprintf(dir, len, "%s", path);
        return 0;
    }
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s: %s", path, stat(path, &st) != 0 ? strerror(errno) : "not a directory");
        return NB_ENOENT;
    }
    int64_t step;
    int n = nb_ckpt_list(path, &step, 1);
    if (n < 0) {
        snprintf(err, errlen, "%s: cannot list the checkpoints", path);
        return NB_EIO;
    }
    if (n == 0) {
        snprintf(err, errlen, "%s: neither a checkpoint (no %s) nor a root holding a complete one", path,
                 NB_CKPT_MANIFEST);
        return NB_ENOENT;
    }
    nb_ckpt_step_dir(path, step, dir, len);
    return 0;
}

int nb_ckpt_begin(const char *dir, char *err, size_t errlen)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path) {
        snprintf(err, errlen, "%s: path too long", dir);
        return NB_EIO;
    }
    /* mkdir -p */
    for (char *p = path + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(path, 0755) != 0 && errno != EEXIST) {
                snprintf(err, errlen, "%s: cannot create the directory: %s", path, strerror(errno));
                return NB_EIO;
            }
            *p = c;
            if (!c)
                break;
        }
    }
    snprintf(path, sizeof path, "%s/%s", dir, NB_CKPT_MANIFEST);
    if (unlink(path) == 0) {
        if (nb__ckpt_fsync_dir(dir) != 0) {
            snprintf(err, errlen, "%s: fsync failed: %s", dir, strerror(errno));
            return NB_EIO;
        }
    } else if (errno != ENOENT) {
        snprintf(err, errlen, "%s: cannot remove: %s", path, strerror(errno));
        return NB_EIO;
    }
    return 0;
}

/* Files, bytes and the newest mtime of the regular files in dir. */
static void dir_stats(const char *dir, nb_ckpt_entry_t *e)
{
    struct stat st;
    if (stat(dir, &st) == 0)
        e->mtime = (int64_t)st.st_mtime;
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        char path[4096 + 256 + 2];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        e->n_files++;
        e->bytes += (uint64_t)st.st_size;
        if ((int64_t)st.st_mtime > e->mtime)
            e->mtime = (int64_t)st.st_mtime;
    }
    closedir(d);
}

int nb_ckpt_scan(const char *root, nb_ckpt_entry_t *out, int cap)
{
    entry_t *e;
    char err[64], dir[4096];
    int n = scan(root, &e, err, sizeof err), k = 0;
    if (n < 0)
        return n;
    for (int i = 0; i < n && k < cap; i++, k++) {
        memset(&out[k], 0, sizeof out[k]);
        out[k].step = e[i].step;
        out[k].complete = e[i].complete;
        nb_ckpt_step_dir(root, e[i].step, dir, sizeof dir);
        dir_stats(dir, &out[k]);
    }
    free(e);
    return k;
}
