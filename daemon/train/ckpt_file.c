/*
 * ckpt_file.c - crash-safe creation of checkpoint files: a locked
 * temporary file in the same directory, fsync, rename, fsync of the
 * directory; see ckpt_internal.h. The lock lets nb_ckpt_prune remove the
 * temporary files of killed writers and only those.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include "daemon/train/ckpt_internal.h"
#include "kernels/common.h"

int nb__ckpt_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    /* some file systems cannot fsync a directory; the rename is then as
     * durable as they make it */
    if (rc != 0 && (errno == EINVAL || errno == EROFS))
        rc = 0;
    close(fd);
    return rc;
}

int nb__ckpt_tmp_open(nb__ckpt_tmpfile_t *t, const char *path, char *err, size_t errlen)
{
    t->fd = -1;
    if (snprintf(t->path, sizeof t->path, "%s", path) >= (int)sizeof t->path ||
        snprintf(t->tmp, sizeof t->tmp, "%s" NB__CKPT_TMP_SUFFIX, path) >= (int)sizeof t->tmp) {
        snprintf(err, errlen, "%s: path too long", path);
        return NB_EIO;
    }
    /* nb_ckpt_prune may remove a temporary file between our open and our
     * lock (it takes the lock of a file nobody holds); after locking, the
     * name must still be ours, else start again */
    for (int tries = 0; tries < 100; tries++) {
        /* no O_TRUNC: a live writer's file is truncated only once we hold its lock */
        int fd = open(t->tmp, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) {
            snprintf(err, errlen, "%s: cannot create: %s", t->tmp, strerror(errno));
            return NB_EIO;
        }
        if (flock(fd, LOCK_EX) != 0) {
            snprintf(err, errlen, "%s: cannot lock: %s", t->tmp, strerror(errno));
            close(fd);
            return NB_EIO;
        }
        struct stat a, b;
        if (fstat(fd, &a) == 0 && stat(t->tmp, &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev) {
            /* another writer may have written it while we waited for the lock */
            if (ftruncate(fd, 0) != 0 || lseek(fd, 0, SEEK_SET) != 0) {
                snprintf(err, errlen, "%s: cannot truncate: %s", t->tmp, strerror(errno));
                close(fd);
                return NB_EIO;
            }
            t->fd = fd;
            return 0;
        }
        close(fd);
    }
    snprintf(err, errlen, "%s: the temporary file keeps being replaced", t->tmp);
    return NB_EIO;
}

int nb__ckpt_tmp_write(nb__ckpt_tmpfile_t *t, const void *p, size_t n, char *err, size_t errlen)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(t->fd, c, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            snprintf(err, errlen, "%s: write failed: %s", t->tmp, w < 0 ? strerror(errno) : "no progress");
            return NB_EIO;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

void nb__ckpt_tmp_abort(nb__ckpt_tmpfile_t *t)
{
    if (t->fd >= 0) {
        unlink(t->tmp); /* still under our lock: it is our file */
        close(t->fd);
        t->fd = -1;
    }
}

int nb__ckpt_tmp_commit(nb__ckpt_tmpfile_t *t, char *err, size_t errlen)
{
    if (fsync(t->fd) != 0) {
        snprintf(err, errlen, "%s: fsync failed: %s", t->tmp, strerror(errno));
        nb__ckpt_tmp_abort(t);
        return NB_EIO;
    }
    if (rename(t->tmp, t->path) != 0) {
        snprintf(err, errlen, "%s: cannot rename to %s: %s", t->tmp, t->path, strerror(errno));
        nb__ckpt_tmp_abort(t);
        return NB_EIO;
    }
    /* the lock goes with the descriptor; the name is already the final one */
    close(t->fd);
    t->fd = -1;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", t->path);
    if (nb__ckpt_fsync_dir(dirname(dir)) != 0) {
        snprintf(err, errlen, "%s: fsync of its directory failed: %s", t->path, strerror(errno));
        return NB_EIO;
    }
    return 0;
}
