/*
 * nebula-weights.c - inspects and compares weights files (docs/model.md):
 *
 *   nebula-weights show FILE          (a weights file, or a safetensors file)
 *   nebula-weights compare [--tol X] REF FILE...
 *   nebula-weights export [--names gpt2|bert|nebula] IN OUT.safetensors
 *   nebula-weights import DIR_OR_FILE OUT.weights
 *   nebula-weights checkpoints ROOT   (list step directories)
 *   nebula-weights verify CKPT        (digests and every value)
 *   nebula-weights merge CKPT OUTDIR  (one file, any split restores it)
 *   nebula-weights dump CKPT TENSOR   (a checkpoint tensor's values)
 *
 * compare matches every tensor of the FILEs (e.g. the final weights of each
 * pipeline stage) by name against REF (e.g. the single-process trainer's
 * output), prints the largest difference of each tensor relative to its
 * largest magnitude, and fails unless every tensor of REF is covered and
 * every difference is <= tol (default 1e-5).
 * Files are read without building a model: the header's sizes are checked
 * against the file's length first (nb_weights_peek), then tensors are read
 * in chunks, so a short file claiming a large model costs nothing.
 * CKPT is a checkpoint directory (docs/checkpoints.md) or a root holding
 * step directories (its newest complete checkpoint). checkpoints lists the
 * step directories of a root: step, complete or not, files, bytes, age.
 * verify checks the manifest, each file's length and SHA-256, its header,
 * data_sha256 and metadata, and every value (finite, |x| <= 1e30): exit 0
 * and a summary, or 1 and the reason (file, tensor). merge writes every
 * tensor into OUTDIR/model.safetensors with its manifest. dump prints one
 * tensor's values, one per line (%.9g: the exact float).
 * export writes a weights file, or a checkpoint's weights, as safetensors
 * (F32) with Hugging Face
 * GPT-2 or BERT names (the default for pre-LN / post-LN models), or
 * Nebula's own. import reads DIR/config.json + DIR/model.safetensors, or a
 * safetensors FILE (its Nebula __metadata__, else the config.json beside
 * it), and writes a weights file; notes (skipped tensors) go to stderr.
 * Both build the model on the CPU backend. docs/import-export.md.
 * Exit status: 0 equal within tol / converted / verified, 1 different or
 * (verify) refused, 2 usage, unreadable or refused file.
 */
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include "kernels/cpu_level.h"
#include "daemon/data/tokenizer.h"
#include "daemon/train/checkpoint.h"
#include "daemon/train/hf_model.h"
#include "daemon/train/safetensors.h"
#include "daemon/train/weights.h"

/* One opened weights file: its checked header and table, and the stream. */
typedef struct {
    const char *path;
    nb_weights_info_t info;
    FILE *f;
} wfile_t;

/* Opens and checks path (nb_weights_peek: the header's sizes against the
 * file's length before anything else), printing why not. */
static int wfile_open(wfile_t *w, const char *path)
{
    char err[512];
    memset(w, 0, sizeof *w);
    w->path = path;
    if (nb_weights_peek(path, &w->info, err, sizeof err)) {
        fprintf(stderr, "nebula-weights: %s\n", err);
        return -1;
    }
    if (!(w->f = fopen(path, "rb"))) {
        fprintf(stderr, "nebula-weights: %s: cannot open\n", path);
        nb_weights_info_free(&w->info);
        return -1;
    }
    return 0;
}

static void wfile_close(wfile_t *w)
{
    if (w->f)
        fclose(w->f);
    nb_weights_info_free(&w->info);
}

/* Reads `count` floats of tensor t from element `at` on into buf. */
static int read_floats(wfile_t *w, const nb_weights_tensor_t *t, uint64_t at, float *buf, size_t count)
{
    if (fseeko(w->f, (off_t)(t->file_offset + at * 4), SEEK_SET) != 0 || fread(buf, 4, count, w->f) != count) {
        fprintf(stderr, "nebula-weights: %s: cannot read tensor %s\n", w->path, t->name);
        return -1;
    }
    return 0;
}

/* Tensors are read in chunks: memory stays small whatever the file holds. */
#define CHUNK 65536

/* Lists a safetensors file's tensors (dtype, shape, byte range) and
 * metadata, after the reader's checks. */
static int show_safetensors(const char *path)
{
    nb_st_file_t *f;
    char err[512];
    if (nb_st_open(path, &f, err, sizeof err)) {
        fprintf(stderr, "nebula-weights: %s\n", err);
        return 2;
    }
    uint64_t elems = 0;
    for (int i = 0; i < nb_st_count(f); i++)
        elems += nb_st_tensor(f, i)->numel;
    printf("%s: safetensors, %d tensors, %llu elements\n", path, nb_st_count(f), (unsigned long long)elems);
    static const char *const keys[] = { "format", "nebula.model", "nebula.part", "nebula.names" };
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
        if (nb_st_metadata(f, keys[k]))
            printf("  metadata %s: %s\n", keys[k], nb_st_metadata(f, keys[k]));
    for (int i = 0; i < nb_st_count(f); i++) {
        const nb_st_tensor_t *t = nb_st_tensor(f, i);
        char shape[128] = "[";
        for (int d = 0; d < t->ndim; d++)
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%lld", d ? ", " : "",
                     (long long)t->shape[d]);
        snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "]");
        printf("  %-48s %-5s %-16s bytes %llu..%llu\n", t->name, nb_st_dtype_name(t->dtype), shape,
               (unsigned long long)t->begin, (unsigned long long)t->end);
    }
    nb_st_close(f);
    return 0;
}

static int show(const char *path)
{
    char magic[4] = { 0 };
    FILE *mf = fopen(path, "rb");
    if (mf) {
        size_t got = fread(magic, 1, 4, mf);
        fclose(mf);
        if (got == 4 && memcmp(magic, "NBWT", 4) != 0)
            return show_safetensors(path);
    }
    wfile_t w;
    if (wfile_open(&w, path))
        return 2;
    const nb_part_spec_t *s = &w.info.spec;
    printf("%s: %s blocks %d-%d%s, %llu parameters\n", path, s->embed ? "embedding +" : "", s->first, s->last - 1,
           s->head ? " + head" : "", (unsigned long long)w.info.n_params);
    printf("  model %s-LN, %s head, ln_eps %g, gelu %s\n", nb_norm_name(w.info.model.norm),
           nb_head_kind_name(w.info.model.head), (double)nb_model_ln_eps(&w.info.model),
           nb_gelu_name(w.info.model.gelu));
    const nb_model_config_t *m = &w.info.model;
    if (m->lowrank_rank > 0) /* job.lowrank: the cut after the factor carries r values per position */
        printf("  low-rank split: block %d, rank %d (h%d.fcproj.w as U S V; a cut at the factor carries %d of %d)\n",
               m->lowrank_block, m->lowrank_rank, m->lowrank_block, m->lowrank_rank, m->d_model);
    if (m->cross_attn) /* job.model.cross_attn: a decoder of an encoder-decoder job */
        printf("  cross-attention: every block reads an encoder's output (h*.xln, h*.xq, h*.xkv, h*.xproj)\n");
    if (m->token_shift) /* job.model.token_shift: no tensors of its own */
        printf("  token shift: a quarter of the embedding channels from the previous token%s (no parameters)\n",
               m->causal ? "" : ", a quarter from the next");
    static float buf[CHUNK];
    int status = 0;
    for (int i = 0; i < w.info.n_tensors && !status; i++) {
        const nb_weights_tensor_t *t = &w.info.tensors[i];
        double ss = 0;
        for (uint64_t at = 0; at < t->numel && !status; at += CHUNK) {
            size_t k = t->numel - at < CHUNK ? (size_t)(t->numel - at) : CHUNK;
            if (read_floats(&w, t, at, buf, k)) {
                status = 2;
                break;
            }
            for (size_t e = 0; e < k; e++)
                ss += (double)buf[e] * buf[e];
        }
        printf("  %-16s %6llu x %-6llu rms %.6g\n", t->name, (unsigned long long)t->shape[0],
               (unsigned long long)t->shape[1], sqrt(ss / (double)(t->numel ? t->numel : 1)));
    }
    wfile_close(&w);
    return status;
}

static const nb_weights_tensor_t *find_tensor(const wfile_t *w, const char *name)
{
    for (int i = 0; i < w->info.n_tensors; i++)
        if (strcmp(w->info.tensors[i].name, name) == 0)
            return &w->info.tensors[i];
    return NULL;
}

static int compare(double tol, const char *ref_path, int n, char **paths)
{
    wfile_t ref, files[64];
    if (n > 64)
        n = 64;
    if (wfile_open(&ref, ref_path))
        return 2;
    for (int i = 0; i < n; i++)
        if (wfile_open(&files[i], paths[i])) {
            while (i-- > 0)
                wfile_close(&files[i]);
            wfile_close(&ref);
            return 2;
        }
    static float a[CHUNK], b[CHUNK];
    int status = 0;
    double worst = 0;
    for (int t = 0; t < ref.info.n_tensors && status != 2; t++) {
        const nb_weights_tensor_t *ri = &ref.info.tensors[t], *pi = NULL;
        int found = -1;
        for (int i = 0; i < n && found < 0; i++)
            if ((pi = find_tensor(&files[i], ri->name)))
                found = i;
        if (found < 0) {
            printf("  %-16s missing from every file\n", ri->name);
            status = 1;
            continue;
        }
        if (pi->numel != ri->numel) {
            printf("  %-16s shape differs\n", ri->name);
            status = 1;
            continue;
        }
        double maxabs = 1e-12, maxd = 0;
        for (uint64_t at = 0; at < ri->numel; at += CHUNK) {
            size_t k = ri->numel - at < CHUNK ? (size_t)(ri->numel - at) : CHUNK;
            if (read_floats(&ref, ri, at, a, k) || read_floats(&files[found], pi, at, b, k)) {
                status = 2;
                break;
            }
            for (size_t e = 0; e < k; e++) {
                maxabs = fmax(maxabs, fabs(a[e]));
                double d = fabs((double)a[e] - b[e]);
                if (!(d <= maxd))
                    maxd = d;
            }
        }
        if (status == 2)
            break;
        double rel = maxd / maxabs;
        printf("  %-16s max abs diff %.3g, relative %.3g%s\n", ri->name, maxd, rel, rel <= tol ? "" : "  > tol");
        if (!(rel <= tol))
            status = 1;
        if (!(rel <= worst))
            worst = rel;
    }
    if (status != 2)
        printf("%s: largest relative difference %.3g (tolerance %.3g): %s\n", ref_path, worst, tol,
               status ? "DIFFERENT" : "equal");
    for (int i = 0; i < n; i++)
        wfile_close(&files[i]);
    wfile_close(&ref);
    return status;
}

/* Resolves path (a step directory or a root) and reads its manifest,
 * printing why not. */
static int ckpt_open(const char *path, char *dir, size_t len, nb_ckpt_manifest_t *m)
{
    char err[1024];
    if (nb_ckpt_find(path, dir, len, err, sizeof err) || nb_ckpt_manifest_read(dir, m, err, sizeof err)) {
        fprintf(stderr, "nebula-weights: %s\n", err);
        return -1;
    }
    return 0;
}

/* The whole model of a checkpoint (weights only), on be. */
static nb_part_t *load_ckpt(nb_backend_t *be, const char *path)
{
    static nb_ckpt_manifest_t m;
    char dir[4096], err[1024];
    if (ckpt_open(path, dir, sizeof dir, &m))
        return NULL;
    nb_part_spec_t spec = nb_part_spec_full(&m.meta.model);
    nb_part_t *p = NULL;
    if (nb_part_new(be, &m.meta.model, &spec, 0, NULL, &p, err, sizeof err) ||
        nb_ckpt_load_part(dir, &m, p, NULL, err, sizeof err)) {
        fprintf(stderr, "nebula-weights: %s\n", err);
        nb_part_free(p);
        return NULL;
    }
    return p;
}

static int checkpoints(const char *root)
{
    nb_ckpt_entry_t e[256];
    int n = nb_ckpt_scan(root, e, 256);
    if (n < 0) {
        fprintf(stderr, "nebula-weights: %s: cannot list: %s\n", root, nb_strerror(n));
        return 2;
    }
    struct stat st;
    if (n == 0 && stat(root, &st) != 0) {
        fprintf(stderr, "nebula-weights: %s: no such directory\n", root);
        return 2;
    }
    time_t now = time(NULL);
    printf("%s: %d step director%s (newest first)\n", root, n, n == 1 ? "y" : "ies");
    for (int i = 0; i < n; i++) {
        char dir[4096];
        nb_ckpt_step_dir(root, e[i].step, dir, sizeof dir);
        long long age = (long long)(now - e[i].mtime);
        printf("  step %8lld  %-10s  files %2d  bytes %12llu  age %lld s  %s\n", (long long)e[i].step,
               e[i].complete ? "complete" : "incomplete", e[i].n_files, (unsigned long long)e[i].bytes,
               age < 0 ? 0 : age, dir);
    }
    return 0;
}

static int verify(const char *path)
{
    static nb_ckpt_manifest_t m;
    char dir[4096], err[1024];
    if (ckpt_open(path, dir, sizeof dir, &m)) {
        printf("%s: BAD\n", path);
        return 1;
    }
    uint64_t values = 0, bytes = 0;
    if (nb_ckpt_verify_values(dir, &m, &values, err, sizeof err)) {
        fprintf(stderr, "nebula-weights: %s\n", err);
        printf("%s: BAD\n", dir);
        return 1;
    }
    for (int i = 0; i < m.n_files; i++)
        bytes += m.files[i].bytes;
    printf("%s: ok: step %lld (%lld AdamW updates), %d file%s, %llu bytes, %llu values checked, model %d layers "
           "d_model %d, kernels %s\n", dir, (long long)m.meta.step, (long long)m.meta.optim_steps, m.n_files,
           m.n_files == 1 ? "" : "s", (unsigned long long)bytes, (unsigned long long)values, m.meta.model.n_layer,
           m.meta.model.d_model, m.meta.kernels[0] ? m.meta.kernels : "(not recorded)");
    return 0;
}

static int merge(const char *path, const char *outdir)
{
    static nb_ckpt_manifest_t m;
    char dir[4096], err[1024];
    if (ckpt_open(path, dir, sizeof dir, &m))
        return 2;
    if (nb_ckpt_merge(dir, outdir, err, sizeof err)) {
        fprintf(stderr, "nebula-weights: %s\n", err);
        return 2;
    }
    printf("%s: %d file%s of %s merged into %s/model.safetensors\n", outdir, m.n_files, m.n_files == 1 ? "" : "s",
           dir, outdir);
    return 0;
}

static int dump(const char *path, const char *name)
{
    static nb_ckpt_manifest_t m;
    char dir[4096], err[1024];
    if (ckpt_open(path, dir, sizeof dir, &m))
        return 2;
    int status = 2;
    for (int i = 0; i < m.n_files && status == 2; i++) {
        nb_st_file_t *f;
        char fp[4200];
        snprintf(fp, sizeof fp, "%s/%s", dir, m.files[i].name);
        if (nb_st_open(fp, &f, err, sizeof err)) {
            fprintf(stderr, "nebula-weights: %s\n", err);
            return 2;
        }
        int k = nb_st_find(f, name);
        if (k >= 0) {
            const nb_st_tensor_t *t = nb_st_tensor(f, k);
            float *v = malloc((t->numel ? t->numel : 1) * sizeof *v);
            if (!v || nb_ckpt_read_extra(dir, &m, name, v, t->numel, err, sizeof err)) {
                fprintf(stderr, "nebula-weights: %s\n", v ? err : "out of memory");
            } else {
                printf("# %s %s [", name, m.files[i].name);
                for (int d = 0; d < t->ndim; d++)
                    printf("%s%lld", d ? ", " : "", (long long)t->shape[d]);
                printf("]\n");
                for (uint64_t e = 0; e < t->numel; e++)
                    printf("%.9g\n", v[e]);
                status = 0;
            }
            free(v);
            if (status)
                status = 1;
        }
        nb_st_close(f);
    }
    if (status == 2)
        fprintf(stderr, "nebula-weights: %s: no tensor '%s'\n", dir, name);
    return status;
}

/* Loads a weights file into a new part on be (for export); a head without
 * the embedding but with tied weights gets an embedding part to borrow wte
 * from (*tie_owner, freed by the caller). */
static nb_part_t *load(nb_backend_t *be, const char *path, nb_part_t **tie_owner)
{
    nb_weights_info_t info;
    char err[512];
    *tie_owner = NULL;
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
        return load_ckpt(be, path);
    if (nb_weights_peek(path, &info, err, sizeof err)) {
        fprintf(stderr, "nebula-weights: %s\n", err);
        return NULL;
    }
    nb_model_config_t cfg = info.model;
    nb_part_spec_t spec = info.spec;
    nb_weights_info_free(&info);
    nb_part_t *tie = NULL, *p = NULL;
    if (spec.head && !spec.embed && cfg.tie_embeddings) {
        nb_part_spec_t es = { .embed = true, .first = 0, .last = 0, .head = false };
        if (nb_part_new(be, &cfg, &es, 0, NULL, &tie, err, sizeof err)) {
            fprintf(stderr, "nebula-weights: %s: %s\n", path, err);
            return NULL;
        }
    }
    if (nb_part_new(be, &cfg, &spec, 0, tie, &p, err, sizeof err) || nb_weights_load(path, p, err, sizeof err)) {
        fprintf(stderr, "nebula-weights: %s: %s\n", path, err);
        nb_part_free(p);
        nb_part_free(tie);
        return NULL;
    }
    *tie_owner = tie;
    return p;
}

static int export_file(const char *names_arg, const char *in, const char *out)
{
    nb_backend_t *be = nb_cpu_backend_new();
    nb_part_t *tie, *p = load(be, in, &tie);
    int status = 2;
    char err[512];
    if (!p)
        goto done;
    nb_hf_names_t names = nb_part_config(p)->norm == NB_MODEL_NORM_PRE ? NB_HF_NAMES_GPT2 : NB_HF_NAMES_BERT;
    if (names_arg && nb_hf_names_parse(names_arg, &names)) {
        fprintf(stderr, "nebula-weights: --names %s: expected gpt2, bert or nebula\n", names_arg);
        goto done;
    }
    if (nb_hf_save(out, p, names, err, sizeof err)) {
        fprintf(stderr, "nebula-weights: %s\n", err);
        goto done;
    }
    printf("%s: %d tensors, %zu parameters, %s names\n", out, nb_part_num_tensors(p), nb_part_num_params(p),
           nb_hf_names_name(names));
    status = 0;
done:
    nb_part_free(p);
    nb_part_free(tie);
    nb_be_free(be);
    return status;
}

static void print_note(void *ud, const char *note)
{
    fprintf(stderr, "nebula-weights: note: %s\n", note);
}

/* A BERT checkpoint's mask token is its tokenizer's [MASK] (103 in BERT's
 * vocabulary), not vocab - 1, the default of job.model.mask_token: say so
 * when the directory holds a WordPiece tokenizer. */
static void note_mask_token(const char *dir, const nb_model_config_t *cfg)
{
    nb_tokenizer_t *t;
    char err[512];
    if (cfg->head != NB_MODEL_HEAD_MLM || nb_tokenizer_load(dir, &t, err, sizeof err))
        return;
    nb_idvec_t v = { 0 };
    if (nb_tokenizer_kind(t) == NB_TOK_WORDPIECE && !nb_tokenizer_encode(t, "[MASK]", 6, &v, err, sizeof err) &&
        v.n == 1 && (int)v.ids[0] != nb_model_mask_token(cfg))
        fprintf(stderr, "nebula-weights: note: the tokenizer's [MASK] is %u: for mlm training set "
                "job.model.mask_token: %u (the default is vocab - 1 = %d)\n", v.ids[0], v.ids[0], cfg->vocab - 1);
    free(v.ids);
    nb_tokenizer_free(t);
}

static int import_file(const char *in, const char *out)
{
    char st_path[4096], cfg_path[4096], err[1024];
    struct stat sb;
    bool dir = stat(in, &sb) == 0 && S_ISDIR(sb.st_mode);
    if (dir) {
        snprintf(st_path, sizeof st_path, "%s/model.safetensors", in);
        snprintf(cfg_path, sizeof cfg_path, "%s/config.json", in);
    } else {
        char copy[4096];
        snprintf(st_path, sizeof st_path, "%s", in);
        snprintf(copy, sizeof copy, "%s", in);
        snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dirname(copy));
    }
    nb_st_file_t *f = NULL;
    nb_backend_t *be = nb_cpu_backend_new();
    nb_part_t *p = NULL, *tie = NULL;
    nb_model_config_t cfg;
    nb_part_spec_t spec;
    nb_hf_names_t names;
    int status = 2, rc;
    if (nb_st_open(st_path, &f, err, sizeof err)) {
        fprintf(stderr, "nebula-weights: %s\n", err);
        goto done;
    }
    rc = dir ? 0 : nb_hf_config_from_metadata(f, &cfg, &spec, &names, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "nebula-weights: %s\n", err);
        goto done;
    }
    if (rc == 0) {
        if (nb_hf_config_read(cfg_path, &cfg, &names, err, sizeof err)) {
            fprintf(stderr, "nebula-weights: %s\n", err);
            goto done;
        }
        spec = nb_part_spec_full(&cfg);
    }
    if (spec.head && !spec.embed && cfg.tie_embeddings) {
        nb_part_spec_t es = { .embed = true, .first = 0, .last = 0, .head = false };
        if (nb_part_new(be, &cfg, &es, 0, NULL, &tie, err, sizeof err)) {
            fprintf(stderr, "nebula-weights: %s: %s\n", st_path, err);
            goto done;
        }
    }
    if (nb_part_new(be, &cfg, &spec, 0, tie, &p, err, sizeof err)) {
        fprintf(stderr, "nebula-weights: %s: %s\n", st_path, err);
        goto done;
    }
    if (nb_hf_load(f, names, p, print_note, NULL, err, sizeof err) || nb_weights_save(out, p, err, sizeof err)) {
        fprintf(stderr, "nebula-weights: %s\n", err);
        goto done;
    }
    printf("%s: %d tensors, %zu parameters from %s (%s names, %s-LN, %d layers, ln_eps %g, gelu %s)\n", out,
           nb_part_num_tensors(p), nb_part_num_params(p), st_path, nb_hf_names_name(names), nb_norm_name(cfg.norm),
           cfg.n_layer, (double)nb_model_ln_eps(&cfg), nb_gelu_name(cfg.gelu));
    if (dir)
        note_mask_token(in, &cfg);
    status = 0;
done:
    nb_part_free(p);
    nb_part_free(tie);
    nb_be_free(be);
    nb_st_close(f);
    return status;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: nebula-weights show FILE\n"
               "       nebula-weights compare [--tol X] REF FILE...\n"
               "       nebula-weights export [--names gpt2|bert|nebula] IN.weights OUT.safetensors\n"
               "       nebula-weights import DIR_OR_FILE OUT.weights\n"
               "       nebula-weights checkpoints ROOT\n"
               "       nebula-weights verify CKPT\n"
               "       nebula-weights merge CKPT OUTDIR\n"
               "       nebula-weights dump CKPT TENSOR\n"
               "IN of export: a weights file, or a checkpoint (a step directory or a root).\n");
        return 0;
    }
    nb_cpu_level_t level;
    const char *why_level = NULL;
    if (nb_cpu_level_select(&level, &why_level) != 0) {
        fprintf(stderr, "nebula-weights: %s\n", why_level);
        return 2;
    }
    if (argc == 3 && !strcmp(argv[1], "show"))
        return show(argv[2]);
    if (argc >= 4 && !strcmp(argv[1], "compare")) {
        double tol = 1e-5;
        int i = 2;
        if (!strcmp(argv[i], "--tol") && argc >= 6) {
            tol = atof(argv[i + 1]);
            i += 2;
        }
        return compare(tol, argv[i], argc - i - 1, argv + i + 1);
    }
    if (argc == 4 && !strcmp(argv[1], "export"))
        return export_file(NULL, argv[2], argv[3]);
    if (argc == 6 && !strcmp(argv[1], "export") && !strcmp(argv[2], "--names"))
        return export_file(argv[3], argv[4], argv[5]);
    if (argc == 4 && !strcmp(argv[1], "import"))
        return import_file(argv[2], argv[3]);
    if (argc == 3 && !strcmp(argv[1], "checkpoints"))
        return checkpoints(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "verify"))
        return verify(argv[2]);
    if (argc == 4 && !strcmp(argv[1], "merge"))
        return merge(argv[2], argv[3]);
    if (argc == 4 && !strcmp(argv[1], "dump"))
        return dump(argv[2], argv[3]);
    fprintf(stderr, "usage: nebula-weights show FILE | compare [--tol X] REF FILE... | "
                    "export [--names gpt2|bert|nebula] IN OUT.safetensors | import DIR_OR_FILE OUT.weights | "
                    "checkpoints ROOT | verify CKPT | merge CKPT OUTDIR | dump CKPT TENSOR\n");
    return 2;
}
