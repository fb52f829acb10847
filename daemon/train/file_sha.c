/*
 * file_sha.c - SHA-256 of a whole file through the checkpoint code's
 * stream (ckpt_internal.h); see file_sha.h.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include "daemon/train/ckpt_internal.h"
#include "daemon/train/file_sha.h"
#include "kernels/common.h"

int nb_file_sha256(const char *path, char hex[65], char *err, size_t errlen)
{
    nb__sha_t s = { 0 };
    unsigned char buf[65536];
    int rc = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        return NB_EIO;
    }
    if ((rc = nb__sha_init(&s)))
        goto out;
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        nb__sha_update(&s, buf, n);
    if (ferror(f)) {
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        rc = NB_EIO;
        goto out;
    }
    nb__sha_final_hex(&s, hex); /* frees the context */
out:
    nb__sha_free(&s);
    fclose(f);
    return rc;
}
