/*
 * checkpoint.h - layout-free training checkpoints: a directory of
 * safetensors files whose tensors carry their global names (docs/model.md),
 * plus a manifest written last. The same format serves nebula-train (one
 * file holding the whole model) and a pipeline (one file per stage, written
 * by the daemon hosting it); any checkpoint restores into any layer split,
 * because a part takes each of its tensors by name from whichever file of
 * the manifest holds it. docs/checkpoints.md.
 *
 * A checkpoint directory (<root>/step-<8-digit steps done>/):
 *   <file>.safetensors   tensors: every parameter under its global name
 *                        ("wte", "h3.qkv.w"), the AdamW moments of
 *                        each trainable one (none for a frozen tensor,
 *                        kernels/model.h) as "adamw.m.<name>" and
 *                        "adamw.v.<name>", and any
 *                        extra state a writer adds (codec streams); all
 *                        F32. __metadata__: format "nebula-checkpoint",
 *                        version, job_id, step, optim_steps, seed, batch,
 *                        micro_batches, seq_len, the model config and its
 *                        digest, the kernels line, and data_sha256
 *                        (SHA-256 of the data section, checked on load).
 *   manifest.json        the commit point: format, version, job id, step,
 *                        optim_steps, seed, batch, micro_batches, seq_len,
 *                        model config and digest, kernels, and per file its
 *                        name, bytes, SHA-256 and the stages it holds.
 * A directory without a valid manifest is not a checkpoint.
 *
 * Writes are crash-safe: a temporary file in the same directory (held
 * under flock while written), fsync, rename, fsync of the directory. Loads verify before they change anything:
 * the file digests against the manifest, every tensor's shape against the
 * part, every value finite and below NB_CKPT_MAX_ABS; on any error the part
 * and optimizer are left exactly as they were. Messages name the file, the
 * tensor and the reason.
 * Thread: functions are re-entrant; a snapshot is used by one thread at a
 * time (it may be handed from the thread that made it to a writer thread).
 */
#ifndef NB_CHECKPOINT_H
#define NB_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "kernels/model.h"
#include "kernels/optim.h"

#define NB_CKPT_FORMAT "nebula-checkpoint"
#define NB_CKPT_VERSION 1
#define NB_CKPT_MANIFEST "manifest.json"
#define NB_CKPT_MAX_FILES 64        /* files listed in one manifest */
#define NB_CKPT_FILE_NAME_MAX 64    /* bytes of a file name, NUL included */
#define NB_CKPT_KERNELS_MAX 48
#define NB_CKPT_MAX_ABS 1e30f       /* a stored value this large is corruption */

/* What a checkpoint is of: the run it continues. */
typedef struct {
    uint64_t job_id;          /* 0 for nebula-train */
    int64_t step;             /* steps done (committed) */
    int64_t optim_steps;      /* AdamW updates applied (step minus skipped steps) */
    uint64_t seed;
    int batch, micro_batches, seq_len;
    nb_model_config_t model;
    char kernels[NB_CKPT_KERNELS_MAX]; /* nb_cpu_describe() of the writer; "" unknown */
} nb_ckpt_meta_t;

/* One file of a checkpoint, as its manifest lists it. */
typedef struct {
    char name[NB_CKPT_FILE_NAME_MAX]; /* a plain file name, no '/' */
    uint64_t bytes;
    char sha256[65];                  /* lowercase hex */
    uint64_t stages;                  /* bit s: holds pipeline stage s (1 for nebula-train) */
} nb_ckpt_file_t;

typedef struct {
    nb_ckpt_meta_t meta;
    int n_files;
    nb_ckpt_file_t files[NB_CKPT_MAX_FILES];
} nb_ckpt_manifest_t;

/* ---- writing ------------------------------------------------------------- */

/* A copy, in host memory, of one part's state at a step boundary: its
 * parameters and AdamW moments, plus extra named tensors. Taking it is a
 * memory copy; writing it can then happen on another thread while training
 * goes on. */
typedef struct nb_ckpt_snap nb_ckpt_snap_t;

/* Copies p's parameters and o's moments (o covers p's gradient buffer:
 * nb_part_optim_new) into a new snapshot, with the backend's device-to-host
 * copy (one host allocation of the parameters plus 2 x the trainable
 * ones; a frozen tensor has no moments). o may be NULL: the parameters alone
 * (a weights-only snapshot, which nb_ckpt_load_part with o NULL restores).
 * Errors: NB_ENOMEM, NB_EINVAL (o does not match p). */
int nb_ckpt_snapshot(nb_part_t *p, nb_optim_t *o, nb_ckpt_snap_t **out, char *err, size_t errlen);
/* Copies p's parameters and o's moments again into s, a snapshot
 * nb_ckpt_snapshot made of the same part with the same frozen tensors
 * (and with an optimizer iff o is given), reusing its memory: periodic checkpoints then copy into pages
 * already mapped, without an allocation. Extras of s are dropped (add the
 * new step's). The caller must own s (no writer may be using it).
 * Errors: NB_EINVAL (another part or layout), s unchanged. */
int nb_ckpt_snapshot_refresh(nb_ckpt_snap_t *s, nb_part_t *p, nb_optim_t *o, char *err, size_t errlen);
/* An empty snapshot, for extra tensors only (e.g. nebula-weights merge,
 * which copies tensors by name). NULL on NB_ENOMEM. */
nb_ckpt_snap_t *nb_ckpt_snap_new(void);
/* Bytes of tensor data the snapshot holds (what a file of it adds). */
size_t nb_ckpt_snap_bytes(const nb_ckpt_snap_t *s);
/* Adds a copy of an extra F32 tensor (e.g. "codec.fwd.cut0.residual") that
 * nb_ckpt_load_part ignores and nb_ckpt_read_extra returns. Names are at
 * most 127 bytes, ndim at most 8. Errors: NB_EINVAL (a duplicate or
 * over-long name), NB_ENOMEM. */
int nb_ckpt_snap_add(nb_ckpt_snap_t *s, const char *name, int ndim, const int64_t *shape, const float *data);
void nb_ckpt_snap_free(nb_ckpt_snap_t *s);

/* Prepares dir to receive a checkpoint: creates it and its parents when
 * missing, and removes a manifest already in it (fsyncing the directory),
 * so that files replaced in a directory that held a complete checkpoint
 * (a rerun of the same step) never sit beside a manifest that does not
 * describe them. Call once per checkpoint, before any nb_ckpt_write_file,
 * by the writer of the manifest. Errors: NB_EIO (named). */
int nb_ckpt_begin(const char *dir, char *err, size_t errlen);

/* Writes the snapshots (the parts one file holds, e.g. the stages of one
 * daemon) as dir/name crash-safely, with meta in its __metadata__; creates
 * dir (one level) when missing. Fills *out (name, bytes, sha256; stages is
 * the caller's). Errors: NB_EIO (message names the path and errno),
 * NB_EINVAL (duplicate tensor names across snaps, a bad name),
 * NB_ENOMEM. The temporary file (name + ".tmp") is held under flock(2)
 * while it is written, which is how nb_ckpt_prune tells it from one a
 * killed writer left. The caller's snapshots are not changed. */
int nb_ckpt_write_file(const char *dir, const char *name, nb_ckpt_snap_t *const *snaps, int n,
                       const nb_ckpt_meta_t *meta, nb_ckpt_file_t *out, char *err, size_t errlen);

/* Writes dir/manifest.json crash-safely: the checkpoint exists from here
 * on. Errors: NB_EIO, NB_EINVAL (a manifest that would not parse back). */
int nb_ckpt_manifest_write(const char *dir, const nb_ckpt_manifest_t *m, char *err, size_t errlen);

/* The manifest as JSON text (malloc'd, NUL-terminated; *len without the
 * NUL), e.g. to send to a daemon that must write or check it. NULL on
 * NB_ENOMEM. */
char *nb_ckpt_manifest_format(const nb_ckpt_manifest_t *m, size_t *len);

/* ---- reading ------------------------------------------------------------- */

/* Parses manifest JSON (at most 1 MiB); name is used in messages. Checks
 * format, version, every field's type and range, file names (no '/', no
 * "..", unique), digests (64 hex digits), and the model config. Errors:
 * NB_EFORMAT (naming the field), NB_EVERSION, NB_ENOMEM. */
int nb_ckpt_manifest_parse(const char *json, size_t len, const char *name, nb_ckpt_manifest_t *m, char *err,
                           size_t errlen);
/* Reads and parses dir/manifest.json. NB_ENOENT when there is none (the
 * directory is not a checkpoint); else as nb_ckpt_manifest_parse, NB_EIO. */
int nb_ckpt_manifest_read(const char *dir, nb_ckpt_manifest_t *m, char *err, size_t errlen);

/* Checks every file of m in dir: present, its length, its SHA-256, its
 * header, data_sha256 and metadata (step, model) against m. Values are not
 * checked here (nb_ckpt_load_part does). Errors: NB_ENOENT (a missing file,
 * named), NB_EFORMAT (a digest or header that does not match), NB_EIO. */
int nb_ckpt_verify(const char *dir, const nb_ckpt_manifest_t *m, char *err, size_t errlen);

/* Checks every value of every tensor of every file (after nb_ckpt_verify's
 * checks of each file): F32, finite, |x| <= NB_CKPT_MAX_ABS, no negative
 * second moment. *n_values (may be NULL) receives how many were checked.
 * Memory: the largest tensor. Errors as nb_ckpt_verify, and NB_EFORMAT
 * naming the file, the tensor and the element. */
int nb_ckpt_verify_values(const char *dir, const nb_ckpt_manifest_t *m, uint64_t *n_values, char *err,
                          size_t errlen);

/* Loads part p and its optimizer o from the checkpoint in dir described by
 * m, taking each tensor by its global name from whichever file of m holds
 * it, so any layer split restores from any other. The headers of the
 * files present are read to find the tensors; only the files holding
 * tensors p needs are verified (in full, as nb_ckpt_verify) and read. A
 * file of m missing from dir is fine as long as p needs none of its
 * tensors (a stage's directory may hold only its own files). Checks that
 * m's model equals p's config (naming the first differing field), every
 * shape, and that every value is finite and |x| <= NB_CKPT_MAX_ABS (and no
 * second moment, adamw.v.*, is negative). With o, the moments of p's
 * trainable tensors are taken and a frozen tensor must have none: a
 * tensor that trains in p but has no moments in the checkpoint, or is
 * frozen in p but has them, is NB_EINVAL naming it (which tensors train
 * belongs to the run). Sets o's step count to m->meta.optim_steps. o may
 * be NULL: the parameters alone, frozen or not. Values are staged in host
 * memory (p's parameters plus 2 x its trainable ones; 1 x with o NULL):
 * nothing in p or o changes unless all of it loads. Errors: NB_EINVAL
 * (another model, another frozen set), NB_ENOENT (a tensor no file
 * present holds, naming the tensor and a missing file that may),
 * NB_EFORMAT, NB_EIO, NB_ENOMEM. */
int nb_ckpt_load_part(const char *dir, const nb_ckpt_manifest_t *m, nb_part_t *p, nb_optim_t *o, char *err,
                      size_t errlen);

/* The number of values of extra tensor `name` as m's files hold it (the
 * files' headers are validated against their sizes when opened, so the
 * figure is bounded by what is on disk): what a caller checks a size it read
 * elsewhere against before allocating. NB_ENOENT when no file of m holds
 * it. */
int nb_ckpt_extra_numel(const char *dir, const nb_ckpt_manifest_t *m, const char *name, size_t *numel, char *err,
                        size_t errlen);

/* Reads extra tensor `name` (written with nb_ckpt_snap_add) into dst of
 * numel floats. NB_ENOENT when no file of m holds it; NB_EINVAL on another
 * size. */
int nb_ckpt_read_extra(const char *dir, const nb_ckpt_manifest_t *m, const char *name, float *dst, size_t numel,
                       char *err, size_t errlen);

/* ---- the checkpoint root -------------------------------------------------- */

/* root/step-%08lld into buf. */
void nb_ckpt_step_dir(const char *root, int64_t step, char *buf, size_t len);

/* The steps of the complete checkpoints under root (a directory with a
 * manifest that parses), newest first, at most cap. Returns the count
 * (0 when root does not exist) or NB_EIO. */
int nb_ckpt_list(const char *root, int64_t *steps, int cap);

/* Resolves what a user names to resume from: path itself when it holds a
 * manifest (a step directory), else the newest complete checkpoint under
 * path (a root). Writes the step directory to dir. Errors: NB_ENOENT (not
 * a directory, or a root with no complete checkpoint: in err), NB_EIO. */
int nb_ckpt_find(const char *path, char *dir, size_t len, char *err, size_t errlen);

/* One step directory under a root, as nb_ckpt_scan sees it. */
typedef struct {
    int64_t step;
    bool complete;      /* a manifest that parses, for this step */
    int n_files;        /* regular files in it (manifest, temporary files included) */
    uint64_t bytes;     /* their total size */
    int64_t mtime;      /* newest modification time of them or the directory (Unix s) */
} nb_ckpt_entry_t;

/* Every step directory under root, complete or not, newest first, at most
 * cap (for tools: nebula-weights checkpoints). Returns the count (0 when
 * root does not exist), NB_EIO or NB_ENOMEM. */
int nb_ckpt_scan(const char *root, nb_ckpt_entry_t *out, int cap);

/* Copies every tensor of the checkpoint in dir (after nb_ckpt_verify and
 * every value checked) into one file, outdir/model.safetensors, with a
 * manifest of the same meta whose one file holds the union of the
 * stages: a checkpoint any layer split restores from, and the simplest to
 * open elsewhere. outdir is created (nb_ckpt_begin); it must not be dir.
 * Memory: the whole checkpoint. Errors: as nb_ckpt_verify_values, NB_EINVAL
 * (outdir is dir), NB_EIO, NB_ENOMEM. */
int nb_ckpt_merge(const char *dir, const char *outdir, char *err, size_t errlen);

/* Keeps the newest `keep` complete checkpoints under root and removes
 * older ones, and every incomplete step directory older than the newest
 * complete one; removes stale temporary files everywhere under root
 * (those no writer holds locked: their writer was killed). Never removes a
 * step directory newer than the newest complete one (a checkpoint may be
 * in the making), only its stale temporary files. keep < 1 counts as 1.
 * A directory is removed manifest first, so an interrupted removal leaves
 * an incomplete directory, never a complete-looking one. Returns the
 * number of directories removed or NB_EIO (named in err). */
int nb_ckpt_prune(const char *root, int keep, char *err, size_t errlen);

#endif /* NB_CHECKPOINT_H */
