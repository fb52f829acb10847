/*
 * ckpt_internal.h - what the checkpoint files (ckpt_*.c) share and nothing
 * else includes (but file_sha.c, which lends others the SHA-256): SHA-256
 * over a stream, the model config as canonical JSON, file-name rules, and
 * crash-safe file creation. checkpoint.h is the public contract.
 */
#ifndef NB_CKPT_INTERNAL_H
#define NB_CKPT_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "daemon/train/checkpoint.h"
#include "daemon/train/safetensors.h"

/* ---- SHA-256 (OpenSSL EVP) ------------------------------------------------ */

typedef struct {
    void *ctx; /* EVP_MD_CTX */
} nb__sha_t;

/* 0, or NB_ENOMEM. */
int nb__sha_init(nb__sha_t *s);
void nb__sha_update(nb__sha_t *s, const void *p, size_t n);
/* Writes 64 lowercase hex digits and a NUL to hex, and frees the context. */
void nb__sha_final_hex(nb__sha_t *s, char hex[65]);
/* Frees a context that was not finalised (NULL ctx is fine). */
void nb__sha_free(nb__sha_t *s);
/* Whether s is 64 lowercase hex digits. */
bool nb__sha_hex_ok(const char *s);

/* ---- the model config --------------------------------------------------------- */

/* The config with fields that do not apply zeroed (n_classes without a
 * classification head, tie_embeddings with one), as weights files compare
 * it: two configs that build the same model compare equal. */
nb_model_config_t nb__ckpt_model_norm(const nb_model_config_t *c);
/* The normalised config as a JSON object with its fields in a fixed order
 * (n_layer, d_model, n_head, d_ff, vocab, max_seq, causal, norm, head,
 * n_classes, tie_embeddings); NULL on NB_ENOMEM. */
json_t *nb__ckpt_model_json(const nb_model_config_t *c);
/* SHA-256 of the compact text of nb__ckpt_model_json (hex). 0 or NB_ENOMEM. */
int nb__ckpt_model_digest(const nb_model_config_t *c, char hex[65]);
/* Parses a model object (every field required, no other key, a config
 * nb_model_config_validate accepts). NULL, or why not (in why). */
const char *nb__ckpt_model_parse(json_t *v, nb_model_config_t *c, char *why, size_t whylen);
/* NULL when a and b build the same model, else "model.<field> is <a> in
 * <a_what>, <b> in <b_what>" in buf. */
const char *nb__ckpt_model_diff(const nb_model_config_t *a, const char *a_what, const nb_model_config_t *b,
                                const char *b_what, char *buf, size_t len);

/* ---- snapshots ------------------------------------------------------------------ */

#define NB__CKPT_NAME_MAX 128 /* bytes of a tensor name, NUL included */

typedef struct {
    char name[NB__CKPT_NAME_MAX];
    int ndim;
    int64_t shape[8];
    size_t numel;
    const float *data; /* into the snapshot's state buffer, or own */
    float *own;        /* an extra's copy, freed with the snapshot */
} nb__ckpt_tensor_t;

struct nb_ckpt_snap {
    int n, cap;
    nb__ckpt_tensor_t *t;
    float *state;      /* parameters, then m and v of the trainable tensors
                          (n_params + 2 x n_grads floats), one allocation */
    size_t n_params, n_grads;
    int copies;        /* 1 (parameters) or 3 (with m and v); 0: no part */
    int n_part;        /* the part's entries: s->t[0 .. n_part): every
                          parameter, then with m and v the adamw.m.* and
                          adamw.v.* of the trainable ones */
};

/* ---- reading -------------------------------------------------------------------- */


/* Opens file i of m in dir: present (NB_ENOENT, named), a regular file of
 * the manifest's length, and when verify is set its SHA-256, then the
 * header (safetensors checks), then with verify the metadata against m and
 * data_sha256 against the data. *out is NULL on error. */
int nb__ckpt_open_file(const char *dir, const nb_ckpt_manifest_t *m, int i, bool verify, nb_st_file_t **out,
                       char *err, size_t errlen);
/* Completes the checks of a file opened without verify. */
int nb__ckpt_verify_file(const char *dir, const nb_ckpt_manifest_t *m, int i, char *err, size_t errlen);
/* Reads tensor k of f (F32 only) into dst, refusing a value that is not
 * finite or is larger than NB_CKPT_MAX_ABS; the message names the file,
 * the tensor and the element. */
int nb__ckpt_read_tensor(nb_st_file_t *f, int k, float *dst, char *err, size_t errlen);

/* ---- names and paths ------------------------------------------------------------ */

/* NULL when name can be a file of a checkpoint (a plain name under
 * NB_CKPT_FILE_NAME_MAX bytes: no '/', '\\' or control character, not
 * starting with '.', not ending in ".tmp", not the manifest's), else why. */
const char *nb__ckpt_file_name_bad(const char *name);

/* ---- crash-safe files ---------------------------------------------------------------- */

/* The temporary file beside a path ("<path>.tmp"). */
#define NB__CKPT_TMP_SUFFIX ".tmp"

/* A file being written crash-safely: created as <path>.tmp in the same
 * directory and held under an exclusive flock(2) for as long as it is
 * being written, so that nb_ckpt_prune can tell a live writer's temporary
 * file (locked) from one a killed writer left behind (not locked). */
typedef struct {
    int fd;
    char path[4096];
    char tmp[4096];
} nb__ckpt_tmpfile_t;

/* Creates (or truncates) path's temporary file and locks it. NB_EIO with
 * the path and errno in err. */
int nb__ckpt_tmp_open(nb__ckpt_tmpfile_t *t, const char *path, char *err, size_t errlen);
/* Writes n bytes at the current end. NB_EIO with the path and errno. */
int nb__ckpt_tmp_write(nb__ckpt_tmpfile_t *t, const void *p, size_t n, char *err, size_t errlen);
/* fsync, rename into place, fsync of the directory, close. On error the
 * temporary file is removed. NB_EIO with the path and errno. */
int nb__ckpt_tmp_commit(nb__ckpt_tmpfile_t *t, char *err, size_t errlen);
/* Removes the temporary file and closes it (after an error). */
void nb__ckpt_tmp_abort(nb__ckpt_tmpfile_t *t);
/* fsync of the directory holding path (or of path when it is one). */
int nb__ckpt_fsync_dir(const char *dir);

#endif /* NB_CKPT_INTERNAL_H */
