/* bench_checkpoint.c - what a checkpoint costs, for a model part of about
 * 100 MB of state (parameters + AdamW m and v, fp32): the snapshot (the
 * copy training waits for) against a plain memcpy of the same bytes into
 * a fresh buffer, measured in the same run; the write of the snapshot (one
 * safetensors file with both SHA-256 digests, fsync, rename, directory
 * fsync, then the manifest) in MB/s; and the verified load back into the
 * part; and the snapshot refreshed in place (nb_ckpt_snapshot_refresh, what
 * periodic checkpoints do) against a memcpy into an already mapped buffer.
 * Median of 5 runs each. The files go under $NB_BUILD (default
 * build), a disk rather than a RAM file system where the tree is on one.
 * Prints "bench <name> <value> <unit>". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "daemon/clock.h"
#include "daemon/train/checkpoint.h"

#define RUNS 5

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v)
{
    qsort(v, RUNS, sizeof *v, cmp_d);
    return v[RUNS / 2];
}

int main(void)
{
    /* 2 blocks of d_model 512 and a vocabulary of 8192: 10.5 M parameters,
     * 126 MB with the moments */
    nb_model_config_t c = { .n_layer = 2, .d_model = 512, .n_head = 8, .d_ff = 2048, .vocab = 8192,
                            .max_seq = 256, .causal = true, .norm = NB_MODEL_NORM_PRE, .head = NB_MODEL_HEAD_LM,
                            .tie_embeddings = true };
    nb_backend_t *be = nb_cpu_backend_new();
    nb_part_spec_t spec = nb_part_spec_full(&c);
    nb_part_t *p;
    nb_optim_t *o;
    char err[1024];
    if (!be || nb_part_new(be, &c, &spec, 1, NULL, &p, err, sizeof err)) {
        fprintf(stderr, "bench_checkpoint: %s\n", err);
        return 1;
    }
    nb_optim_config_t oc = nb_optim_config_default();
    size_t n = nb_part_num_params(p);
    if (nb_part_optim_new(p, &oc, &o)) {
        fprintf(stderr, "bench_checkpoint: cannot create the optimizer\n");
        return 1;
    }
    nb_be_memset0(be, nb_optim_m(o), n * sizeof(float));
    nb_be_memset0(be, nb_optim_v(o), n * sizeof(float));
    size_t bytes = 3 * n * sizeof(float);
    const char *build = getenv("NB_BUILD") ? getenv("NB_BUILD") : "build";
    char root[512], dir[600];
    snprintf(root, sizeof root, "%s/bench-checkpoint", build);
    double t_mc[RUNS], t_snap[RUNS], t_write[RUNS], t_load[RUNS], t_mcw[RUNS], t_ref[RUNS];
    float *warm = malloc(bytes);
    memset(warm, 0, bytes);
    for (int r = 0; r < RUNS; r++) {
        /* the baseline: the same bytes into a fresh buffer */
        double t0 = nb_mono_s();
        float *copy = malloc(bytes);
        memcpy(copy, nb_part_params(p), n * sizeof(float));
        memcpy(copy + n, nb_optim_m(o), n * sizeof(float));
        memcpy(copy + 2 * n, nb_optim_v(o), n * sizeof(float));
        t_mc[r] = nb_mono_s() - t0;
        volatile float sink = copy[n / 2];
        (void)sink;
        free(copy);

        nb_ckpt_snap_t *s;
        t0 = nb_mono_s();
        if (nb_ckpt_snapshot(p, o, &s, err, sizeof err)) {
            fprintf(stderr, "bench_checkpoint: %s\n", err);
            return 1;
        }
        t_snap[r] = nb_mono_s() - t0;
        /* periodic checkpoints: the same snapshot refreshed, against a
         * memcpy into a buffer already mapped */
        t0 = nb_mono_s();
        memcpy(warm, nb_part_params(p), n * sizeof(float));
        memcpy(warm + n, nb_optim_m(o), n * sizeof(float));
        memcpy(warm + 2 * n, nb_optim_v(o), n * sizeof(float));
        t_mcw[r] = nb_mono_s() - t0;
        t0 = nb_mono_s();
        if (nb_ckpt_snapshot_refresh(s, p, o, err, sizeof err)) {
            fprintf(stderr, "bench_checkpoint: %s\n", err);
            return 1;
        }
        t_ref[r] = nb_mono_s() - t0;

        nb_ckpt_manifest_t *m = calloc(1, sizeof *m);
        m->meta = (nb_ckpt_meta_t){ .step = r, .optim_steps = 0, .seed = 1, .batch = 1, .micro_batches = 1,
                                    .seq_len = 1, .model = c };
        nb_ckpt_step_dir(root, r, dir, sizeof dir);
        t0 = nb_mono_s();
        if (nb_ckpt_begin(dir, err, sizeof err) ||
            nb_ckpt_write_file(dir, "stage0.safetensors", &s, 1, &m->meta, &m->files[0], err, sizeof err)) {
            fprintf(stderr, "bench_checkpoint: %s\n", err);
            return 1;
        }
        m->files[0].stages = 1;
        m->n_files = 1;
        if (nb_ckpt_manifest_write(dir, m, err, sizeof err)) {
            fprintf(stderr, "bench_checkpoint: %s\n", err);
            return 1;
        }
        t_write[r] = nb_mono_s() - t0;
        nb_ckpt_snap_free(s);

        t0 = nb_mono_s();
        if (nb_ckpt_manifest_read(dir, m, err, sizeof err) || nb_ckpt_load_part(dir, m, p, o, err, sizeof err)) {
            fprintf(stderr, "bench_checkpoint: %s\n", err);
            return 1;
        }
        t_load[r] = nb_mono_s() - t0;
        free(m);
        nb_ckpt_prune(root, 1, err, sizeof err);
    }
    double mc = median(t_mc), snap = median(t_snap), wr = median(t_write), ld = median(t_load);
    double mcw = median(t_mcw), ref = median(t_ref);
    printf("# %zu parameters, %.1f MB of state; memcpy %.1f ms, snapshot %.1f ms, write %.1f ms, load %.1f ms\n", n,
           bytes / 1e6, mc * 1e3, snap * 1e3, wr * 1e3, ld * 1e3);
    printf("bench checkpoint_state_mb %.1f MB\n", bytes / 1e6);
    printf("bench checkpoint_snapshot_ms %.1f ms\n", snap * 1e3);
    printf("bench checkpoint_snapshot_vs_memcpy %.2f x\n", snap / mc);
    printf("bench checkpoint_snapshot_reuse_ms %.1f ms\n", ref * 1e3);
    printf("bench checkpoint_snapshot_reuse_vs_memcpy %.2f x\n", ref / mcw);
    printf("bench checkpoint_write_mb_per_s %.0f MB/s\n", bytes / 1e6 / wr);
    printf("bench checkpoint_load_mb_per_s %.0f MB/s\n", bytes / 1e6 / ld);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0)
        fprintf(stderr, "bench_checkpoint: cannot remove %s\n", root);
    free(warm);
    nb_optim_free(o);
    nb_part_free(p);
    nb_be_free(be);
    return 0;
}
