/*
 * file_sha.h - SHA-256 of a whole file (the checkpoint code's SHA-256,
 * ckpt_sha.c), for digests of inputs that two daemons must share byte for
 * byte: the texts and tokenizer of an encoder-decoder job
 * (daemon/pipeline/encdec_msg.h).
 *
 * Thread: any; no shared state.
 */
#ifndef NB_FILE_SHA_H
#define NB_FILE_SHA_H

#include <stddef.h>

/* Writes the SHA-256 of the bytes of the file at path as 64 lowercase hex
 * digits and a NUL into hex. 0, or NB_EIO (err: "PATH: cannot read: why")
 * or NB_ENOMEM. */
int nb_file_sha256(const char *path, char hex[65], char *err, size_t errlen);

#endif
