/* test_checkpoint.c - layout-free checkpoints (daemon/train/checkpoint.h):
 * a round trip is bit-exact (parameters, AdamW moments, step count,
 * extras); a checkpoint written with one layer split restores into others
 * (1 part into 2 and 3 and back, different cuts), bit for bit; damaged or
 * foreign checkpoints are refused with the file, the tensor and the reason
 * named and the part left exactly as it was; the manifest parser checks
 * every field; list and prune keep what they must. Frozen tensors
 * (job.freeze) have no AdamW state in a checkpoint; it restores bit for
 * bit into any split that freezes the same tensors, and a restore that
 * would change which tensors train is refused with the reason. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include "daemon/train/checkpoint.h"
#include "daemon/train/ckpt_internal.h"

#define MAXP 3

static char work[128];
static nb_backend_t *be;

static const nb_model_config_t model = {
    .n_layer = 3, .d_model = 16, .n_head = 2, .d_ff = 32, .vocab = 64, .max_seq = 8,
    .causal = true, .norm = NB_MODEL_NORM_PRE, .head = NB_MODEL_HEAD_LM, .tie_embeddings = true,
};

static int setup(void **state)
{
    snprintf(work, sizeof work, "/tmp/nb_ckpt_test_%d", (int)getpid());
    be = nb_cpu_backend_new();
    return mkdir(work, 0755) == 0 && be ? 0 : -1;
}

static int teardown(void **state)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", work);
    nb_be_free(be);
    return system(cmd) == 0 ? 0 : -1;
}

/* A model cut at blocks cuts[0..np] (cuts[0] = 0, cuts[np] = n_layer). */
typedef struct {
    int np;
    nb_part_t *p[MAXP];
    nb_optim_t *o[MAXP];
} split_t;

/* fz: the tensors each part freezes (NULL: none). */
static void split_new_fz(split_t *s, const nb_model_config_t *c, const int *cuts, int np, uint64_t seed,
                         const nb_freeze_spec_t *fz)
{
    char err[256];
    s->np = np;
    nb_optim_config_t oc = nb_optim_config_default();
    for (int i = 0; i < np; i++) {
        nb_part_spec_t sp = { .embed = i == 0, .first = cuts[i], .last = cuts[i + 1], .head = i == np - 1 };
        nb_part_t *tie = sp.head && !sp.embed && c->tie_embeddings ? s->p[0] : NULL;
        if (nb_part_new(be, c, &sp, seed + (uint64_t)i, tie, &s->p[i], err, sizeof err))
            fail_msg("%s", err);
        if (fz)
            assert_int_equal(nb_part_freeze(s->p[i], fz), 0);
        assert_int_equal(nb_part_optim_new(s->p[i], &oc, &s->o[i]), 0);
    }
}

static void split_new(split_t *s, const nb_model_config_t *c, const int *cuts, int np, uint64_t seed)
{
    split_new_fz(s, c, cuts, np, seed, NULL);
}

static void split_free(split_t *s)
{
    for (int i = s->np - 1; i >= 0; i--) {
        nb_optim_free(s->o[i]);
        nb_part_free(s->p[i]);
    }
}

/* Distinct values everywhere (parameters, m, v), from seed. */
static void fill(split_t *s, uint32_t seed)
{
    for (int i = 0; i < s->np; i++) {
        size_t np = nb_part_num_params(s->p[i]), ng = nb_part_num_grads(s->p[i]);
        float *h = malloc(np * sizeof *h);
        float *dst[3] = { nb_part_params(s->p[i]), nb_optim_m(s->o[i]), nb_optim_v(s->o[i]) };
        for (int c = 0; c < 3; c++) {
            size_t n = c ? ng : np;
            for (size_t k = 0; k < n; k++) {
                seed = seed * 1664525u + 1013904223u;
                h[k] = (float)(int32_t)seed * 1e-9f;
                if (c == 2) /* second moments are not negative */
                    h[k] = fabsf(h[k]) * 1e-3f;
            }
            nb_be_from_host(be, dst[c], h, n * sizeof *h);
        }
        free(h);
        nb_optim_set_steps(s->o[i], 7);
    }
}

/* Tensor `name` of kind c (0 parameters, 1 m, 2 v) from whichever part
 * holds it; false also for the moments of a frozen tensor (it has none). */
static bool get_tensor(split_t *s, const char *name, int c, float *out, size_t *numel)
{
    for (int i = 0; i < s->np; i++) {
        int k = nb_part_find_tensor(s->p[i], name);
        if (k < 0)
            continue;
        const nb_param_info_t *t = nb_part_tensor(s->p[i], k);
        if (c && !t->trainable)
            return false;
        const float *src[3] = { nb_part_params(s->p[i]), nb_optim_m(s->o[i]), nb_optim_v(s->o[i]) };
        nb_be_to_host(be, out, src[c] + (c ? t->grad_offset : t->offset), t->numel * sizeof(float));
        *numel = t->numel;
        return true;
    }
    return false;
}

/* Every tensor of b, in each of the three kinds, equals a's bit for bit. */
static void assert_same(split_t *a, split_t *b)
{
    static float x[1 << 16], y[1 << 16];
    int count = 0;
    for (int i = 0; i < b->np; i++)
        for (int k = 0; k < nb_part_num_tensors(b->p[i]); k++) {
            const char *name = nb_part_tensor(b->p[i], k)->name;
            bool frozen = !nb_part_tensor(b->p[i], k)->trainable;
            for (int c = 0; c < (frozen ? 1 : 3); c++) {
                size_t na, nb;
                assert_true(get_tensor(a, name, c, x, &na));
                assert_true(get_tensor(b, name, c, y, &nb));
                assert_int_equal(na, nb);
                if (memcmp(x, y, na * sizeof(float)) != 0)
                    fail_msg("tensor %s kind %d differs", name, c);
                count++;
            }
        }
    for (int i = 0; i < b->np; i++)
        assert_int_equal(nb_optim_steps(b->o[i]), nb_optim_steps(a->o[0]));
    assert_true(count > 0);
}

static nb_ckpt_meta_t meta_of(const nb_model_config_t *c, int64_t step)
{
    nb_ckpt_meta_t m = { .job_id = 42, .step = step, .optim_steps = 7, .seed = 0xfedcba9876543210ull,
                         .batch = 8, .micro_batches = 2, .seq_len = 8, .model = *c };
    snprintf(m.kernels, sizeof m.kernels, "test");
    return m;
}

/* Writes s as a checkpoint in dir: one file per part ("stageI.safetensors",
 * stage bit I), plus an extra tensor in the first file. */
static void write_ckpt(split_t *s, const char *dir, int64_t step)
{
    char err[512];
    nb_ckpt_manifest_t *m = calloc(1, sizeof *m);
    m->meta = meta_of(nb_part_config(s->p[0]), step);
    for (int i = 0; i < s->np; i++) {
        nb_ckpt_snap_t *snap;
        assert_int_equal(nb_ckpt_snapshot(s->p[i], s->o[i], &snap, err, sizeof err), 0);
        if (i == 0) {
            int64_t shape[2] = { 2, 3 };
            float extra[6] = { 1, -2, 3.5f, 0, 1e-30f, 6 };
            assert_int_equal(nb_ckpt_snap_add(snap, "codec.fwd.cut0.residual", 2, shape, extra), 0);
            assert_int_equal(nb_ckpt_snap_add(snap, "codec.fwd.cut0.residual", 2, shape, extra), NB_EINVAL);
        }
        char name[32];
        snprintf(name, sizeof name, "stage%d.safetensors", i);
        if (nb_ckpt_write_file(dir, name, &snap, 1, &m->meta, &m->files[i], err, sizeof err))
            fail_msg("%s", err);
        m->files[i].stages = 1ull << i;
        nb_ckpt_snap_free(snap);
    }
    m->n_files = s->np;
    if (nb_ckpt_manifest_write(dir, m, err, sizeof err))
        fail_msg("%s", err);
    free(m);
}

static int load(split_t *s, const char *dir, char *err, size_t errlen)
{
    nb_ckpt_manifest_t *m = malloc(sizeof *m);
    int rc = nb_ckpt_manifest_read(dir, m, err, errlen);
    for (int i = 0; i < s->np && !rc; i++)
        rc = nb_ckpt_load_part(dir, m, s->p[i], s->o[i], err, errlen);
    free(m);
    return rc;
}

static void test_round_trip(void **state)
{
    int cuts[] = { 0, 3 };
    split_t a, b;
    split_new(&a, &model, cuts, 1, 1);
    split_new(&b, &model, cuts, 1, 2);
    fill(&a, 11);
    char dir[256], err[512];
    snprintf(dir, sizeof dir, "%s/rt", work);
    write_ckpt(&a, dir, 9);
    nb_ckpt_manifest_t m;
    assert_int_equal(nb_ckpt_manifest_read(dir, &m, err, sizeof err), 0);
    assert_int_equal(m.meta.step, 9);
    assert_int_equal(m.meta.optim_steps, 7);
    assert_true(m.meta.seed == 0xfedcba9876543210ull);
    assert_true(m.meta.job_id == 42);
    assert_int_equal(m.n_files, 1);
    assert_true(m.files[0].stages == 1);
    assert_int_equal(nb_ckpt_verify(dir, &m, err, sizeof err), 0);
    uint64_t nv = 0;
    assert_int_equal(nb_ckpt_verify_values(dir, &m, &nv, err, sizeof err), 0);
    assert_int_equal(nv, 3 * nb_part_num_params(a.p[0]) + 6);
    if (load(&b, dir, err, sizeof err))
        fail_msg("%s", err);
    assert_same(&a, &b);
    float extra[6], want[6] = { 1, -2, 3.5f, 0, 1e-30f, 6 };
    assert_int_equal(nb_ckpt_read_extra(dir, &m, "codec.fwd.cut0.residual", extra, 6, err, sizeof err), 0);
    assert_memory_equal(extra, want, sizeof want);
    assert_int_equal(nb_ckpt_read_extra(dir, &m, "codec.fwd.cut0.residual", extra, 5, err, sizeof err), NB_EINVAL);
    assert_int_equal(nb_ckpt_read_extra(dir, &m, "nothere", extra, 6, err, sizeof err), NB_ENOENT);
    assert_non_null(strstr(err, "nothere"));
    /* the file opens as plain safetensors with global names */
    char path[320];
    snprintf(path, sizeof path, "%s/stage0.safetensors", dir);
    nb_st_file_t *f;
    assert_int_equal(nb_st_open(path, &f, err, sizeof err), 0);
    assert_true(nb_st_find(f, "wte") >= 0);
    assert_true(nb_st_find(f, "h2.qkv.w") >= 0);
    assert_true(nb_st_find(f, "adamw.m.h1.fc.w") >= 0);
    assert_true(nb_st_find(f, "adamw.v.wpe") >= 0);
    assert_string_equal(nb_st_metadata(f, "format"), NB_CKPT_FORMAT);
    assert_string_equal(nb_st_metadata(f, "step"), "9");
    assert_string_equal(nb_st_metadata(f, "optim_steps"), "7");
    assert_non_null(nb_st_metadata(f, "data_sha256"));
    assert_int_equal(nb_st_data_offset(f) % 8, 0);
    nb_st_close(f);
    /* no temporary file is left */
    snprintf(path, sizeof path, "%s/stage0.safetensors.tmp", dir);
    assert_int_not_equal(access(path, F_OK), 0);
    /* weights only: o NULL */
    split_t c;
    split_new(&c, &model, cuts, 1, 3);
    assert_int_equal(nb_ckpt_load_part(dir, &m, c.p[0], NULL, err, sizeof err), 0);
    size_t n = nb_part_num_params(a.p[0]);
    float *x = malloc(n * 4), *y = malloc(n * 4);
    nb_be_to_host(be, x, nb_part_params(a.p[0]), n * 4);
    nb_be_to_host(be, y, nb_part_params(c.p[0]), n * 4);
    assert_memory_equal(x, y, n * 4);
    free(x);
    free(y);
    split_free(&c);
    split_free(&a);
    split_free(&b);
}

/* Every split restores from every other, bit for bit. */
static void test_resplit(void **state)
{
    static const int splits[][MAXP + 1] = { { 0, 3 }, { 0, 1, 3 }, { 0, 2, 3 }, { 0, 1, 2, 3 } };
    static const int nps[] = { 1, 2, 2, 3 };
    for (int from = 0; from < 4; from++) {
        split_t a;
        split_new(&a, &model, splits[from], nps[from], 10);
        fill(&a, 100 + (uint32_t)from);
        char dir[256], err[512];
        snprintf(dir, sizeof dir, "%s/split%d", work, from);
        write_ckpt(&a, dir, 9);
        for (int to = 0; to < 4; to++) {
            split_t b;
            split_new(&b, &model, splits[to], nps[to], 20);
            if (load(&b, dir, err, sizeof err))
                fail_msg("%d parts -> %d parts: %s", nps[from], nps[to], err);
            assert_same(&a, &b);
            printf("  %d part(s) (cut %d) -> %d part(s) (cut %d): bit-exact\n", nps[from], splits[from][1],
                   nps[to], splits[to][1]);
            split_free(&b);
        }
        split_free(&a);
    }
}

/* A snapshot refreshed from a part that has changed writes the new state,
 * bit for bit, without the old extras; another part is refused. */
static void test_snapshot_refresh(void **state)
{
    int cuts[] = { 0, 3 }, cuts2[] = { 0, 2, 3 };
    split_t a, b, c;
    split_new(&a, &model, cuts, 1, 1);
    split_new(&b, &model, cuts, 1, 2);
    split_new(&c, &model, cuts2, 2, 3);
    fill(&a, 1);
    char err[512], dir[256];
    nb_ckpt_snap_t *s;
    assert_int_equal(nb_ckpt_snapshot(a.p[0], a.o[0], &s, err, sizeof err), 0);
    int64_t shape[1] = { 2 };
    float x[2] = { 1, 2 };
    assert_int_equal(nb_ckpt_snap_add(s, "extra", 1, shape, x), 0);
    fill(&a, 2); /* the part moves on */
    assert_int_equal(nb_ckpt_snapshot_refresh(s, c.p[0], c.o[0], err, sizeof err), NB_EINVAL);
    assert_int_equal(nb_ckpt_snapshot_refresh(s, a.p[0], NULL, err, sizeof err), NB_EINVAL);
    assert_int_equal(nb_ckpt_snapshot_refresh(s, a.p[0], a.o[0], err, sizeof err), 0);
    assert_int_equal(nb_ckpt_snap_add(s, "extra", 1, shape, x), 0); /* the old one is gone */
    nb_ckpt_manifest_t m = { .meta = meta_of(&model, 9), .n_files = 1 };
    snprintf(dir, sizeof dir, "%s/refresh", work);
    assert_int_equal(nb_ckpt_begin(dir, err, sizeof err), 0);
    assert_int_equal(nb_ckpt_write_file(dir, "s.safetensors", &s, 1, &m.meta, &m.files[0], err, sizeof err), 0);
    m.files[0].stages = 1;
    assert_int_equal(nb_ckpt_manifest_write(dir, &m, err, sizeof err), 0);
    nb_ckpt_snap_free(s);
    if (load(&b, dir, err, sizeof err))
        fail_msg("%s", err);
    assert_same(&a, &b);
    split_free(&a);
    split_free(&b);
    split_free(&c);
}

/* A checkpoint of three stages merged into one file restores into other
 * splits bit for bit, extras included; the merged manifest holds the
 * union of the stages. */
static void test_merge(void **state)
{
    int cuts3[] = { 0, 1, 2, 3 }, cuts2[] = { 0, 2, 3 };
    split_t a, b;
    split_new(&a, &model, cuts3, 3, 1);
    fill(&a, 31);
    char dir[256], out[256], err[512];
    snprintf(dir, sizeof dir, "%s/m3", work);
    snprintf(out, sizeof out, "%s/m1", work);
    write_ckpt(&a, dir, 9);
    assert_int_equal(nb_ckpt_merge(dir, dir, err, sizeof err), NB_EINVAL);
    assert_int_equal(nb_ckpt_merge(dir, out, err, sizeof err), 0);
    nb_ckpt_manifest_t m;
    assert_int_equal(nb_ckpt_manifest_read(out, &m, err, sizeof err), 0);
    assert_int_equal(m.n_files, 1);
    assert_string_equal(m.files[0].name, "model.safetensors");
    assert_true(m.files[0].stages == 7);
    assert_int_equal(m.meta.step, 9);
    split_new(&b, &model, cuts2, 2, 2);
    if (load(&b, out, err, sizeof err))
        fail_msg("%s", err);
    assert_same(&a, &b);
    float extra[6];
    assert_int_equal(nb_ckpt_read_extra(out, &m, "codec.fwd.cut0.residual", extra, 6, err, sizeof err), 0);
    assert_true(extra[2] == 3.5f);
    split_free(&a);
    split_free(&b);
}

/* ---- refusals ----------------------------------------------------------------- */

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(*len + 1);
    assert_int_equal(fread(b, 1, *len, f), *len);
    fclose(f);
    return b;
}

static void spit(const char *path, const void *b, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, len, f), len);
    fclose(f);
}

/* Sets the manifest's length and digest of file i to what is on disk now,
 * so that only the checks inside the file are left to catch a change. */
static void reseal(const char *dir, int i)
{
    char err[512], path[320], hex[65];
    nb_ckpt_manifest_t m;
    assert_int_equal(nb_ckpt_manifest_read(dir, &m, err, sizeof err), 0);
    snprintf(path, sizeof path, "%s/%s", dir, m.files[i].name);
    size_t len;
    unsigned char *b = slurp(path, &len);
    nb__sha_t s;
    assert_int_equal(nb__sha_init(&s), 0);
    nb__sha_update(&s, b, len);
    nb__sha_final_hex(&s, hex);
    free(b);
    m.files[i].bytes = len;
    memcpy(m.files[i].sha256, hex, 65);
    assert_int_equal(nb_ckpt_manifest_write(dir, &m, err, sizeof err), 0);
}

/* Host copies of every buffer of s, to check nothing changed. */
typedef struct {
    float *v[MAXP][3];
    int steps[MAXP];
} saved_t;

static void save_state(split_t *s, saved_t *sv)
{
    for (int i = 0; i < s->np; i++) {
        const float *src[3] = { nb_part_params(s->p[i]), nb_optim_m(s->o[i]), nb_optim_v(s->o[i]) };
        for (int c = 0; c < 3; c++) {
            size_t n = c ? nb_part_num_grads(s->p[i]) : nb_part_num_params(s->p[i]);
            sv->v[i][c] = malloc(n * 4 + 4);
            nb_be_to_host(be, sv->v[i][c], src[c], n * 4);
        }
        sv->steps[i] = nb_optim_steps(s->o[i]);
    }
}

/* Part i of s against what save_state copied. */
static void assert_part_unchanged(split_t *s, saved_t *sv, int i)
{
    size_t np = nb_part_num_params(s->p[i]);
    const float *src[3] = { nb_part_params(s->p[i]), nb_optim_m(s->o[i]), nb_optim_v(s->o[i]) };
    float *now = malloc(np * 4);
    for (int c = 0; c < 3; c++) {
        size_t n = c ? nb_part_num_grads(s->p[i]) : np;
        nb_be_to_host(be, now, src[c], n * 4);
        if (memcmp(now, sv->v[i][c], n * 4) != 0)
            fail_msg("part %d buffer %d changed by a refused load", i, c);
    }
    free(now);
    assert_int_equal(nb_optim_steps(s->o[i]), sv->steps[i]);
}

static void assert_unchanged(split_t *s, saved_t *sv)
{
    for (int i = 0; i < s->np; i++)
        assert_part_unchanged(s, sv, i);
}

static void free_state(split_t *s, saved_t *sv)
{
    for (int i = 0; i < s->np; i++)
        for (int c = 0; c < 3; c++)
            free(sv->v[i][c]);
}

/* Loads dir into a fresh 2-part split and expects code, with every needle
 * in the message and the parts unchanged. */
static void expect_refused(const char *dir, int code, const char *n1, const char *n2)
{
    int cuts[] = { 0, 1, 3 };
    split_t b;
    split_new(&b, &model, cuts, 2, 77);
    fill(&b, 5);
    saved_t sv;
    save_state(&b, &sv);
    /* each part on its own: one that is refused is left exactly as it was
     * (a part whose tensors are all in sound files may load) */
    char err[1024] = "", first[1024] = "";
    int rc = 0, refused = 0;
    nb_ckpt_manifest_t *m = malloc(sizeof *m);
    int mrc = nb_ckpt_manifest_read(dir, m, err, sizeof err);
    if (mrc) {
        rc = mrc;
        snprintf(first, sizeof first, "%s", err);
        assert_unchanged(&b, &sv);
    }
    for (int i = 0; i < b.np && !mrc; i++) {
        int r = nb_ckpt_load_part(dir, m, b.p[i], b.o[i], err, sizeof err);
        if (r) {
            assert_part_unchanged(&b, &sv, i);
            refused++;
            if (!rc) {
                rc = r;
                snprintf(first, sizeof first, "%s", err);
            }
        }
    }
    free(m);
    printf("  refused (%s, %d of %d parts): %s\n", nb_strerror(rc), refused, b.np, first);
    assert_int_equal(rc, code);
    if (n1 && !strstr(first, n1))
        fail_msg("'%s' does not name '%s'", first, n1);
    if (n2 && !strstr(first, n2))
        fail_msg("'%s' does not name '%s'", first, n2);
    free_state(&b, &sv);
    split_free(&b);
}

/* A fresh good checkpoint of a 2-part split in dir. */
static void fresh(const char *dir)
{
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    int cuts[] = { 0, 2, 3 };
    split_t a;
    split_new(&a, &model, cuts, 2, 1);
    fill(&a, 3);
    write_ckpt(&a, dir, 8);
    split_free(&a);
}

static void test_refuse_damage(void **state)
{
    char dir[256], path[320], err[512];
    snprintf(dir, sizeof dir, "%s/bad", work);
    snprintf(path, sizeof path, "%s/stage1.safetensors", dir);
    size_t len;
    /* a one-bit flip anywhere in the data: the manifest's digest catches it;
     * with the manifest resealed, data_sha256 does */
    fresh(dir);
    unsigned char *good = slurp(path, &len);
    nb_st_file_t *f;
    assert_int_equal(nb_st_open(path, &f, err, sizeof err), 0);
    size_t data_off = (size_t)nb_st_data_offset(f);
    nb_st_close(f);
    size_t where[] = { data_off, data_off + (len - data_off) / 3, data_off + (len - data_off) / 2, len - 1 };
    for (size_t k = 0; k < NB_ARRAY_LEN(where); k++) {
        unsigned char *b = malloc(len);
        memcpy(b, good, len);
        b[where[k]] ^= (unsigned char)(1u << (k % 8));
        spit(path, b, len);
        expect_refused(dir, NB_EFORMAT, "stage1.safetensors", "SHA-256");
        reseal(dir, 1);
        expect_refused(dir, NB_EFORMAT, "stage1.safetensors", "data_sha256");
        spit(path, good, len);
        reseal(dir, 1);
        free(b);
    }
    /* a flipped byte in the header (with the manifest resealed): the
     * header's own checks and the metadata catch it */
    unsigned char *b = malloc(len);
    memcpy(b, good, len);
    b[8] ^= 0x20; /* the '{' */
    spit(path, b, len);
    expect_refused(dir, NB_EFORMAT, "stage1.safetensors", "SHA-256");
    reseal(dir, 1);
    expect_refused(dir, NB_EFORMAT, "stage1.safetensors", "'{'");
    memcpy(b, good, len);
    char *d = memmem(b, data_off, "\"data_sha256\":\"", 15);
    assert_non_null(d);
    d[15] = d[15] == 'a' ? 'b' : 'a';
    spit(path, b, len);
    reseal(dir, 1);
    expect_refused(dir, NB_EFORMAT, "stage1.safetensors", "data_sha256");
    memcpy(b, good, len);
    d = memmem(b, data_off, "\"step\":\"8\"", 10);
    assert_non_null(d);
    d[8] = '9';
    spit(path, b, len);
    reseal(dir, 1);
    expect_refused(dir, NB_EFORMAT, "stage1.safetensors", "__metadata__ step is 9");
    free(b);
    spit(path, good, len);
    reseal(dir, 1);
    expect_refused(dir, 0, NULL, NULL); /* the good file again: it loads */
    /* truncated: named as such; resealed, the header no longer covers it */
    assert_int_equal(truncate(path, (off_t)len - 4), 0);
    expect_refused(dir, NB_EFORMAT, "stage1.safetensors", "truncated");
    reseal(dir, 1);
    expect_refused(dir, NB_EFORMAT, "stage1.safetensors", "past the end");
    /* missing: a part that needs a tensor of it is refused, naming the
     * tensor and the file; a part that needs none of it loads (a stage's
     * directory may hold only its own files), and verify refuses */
    unlink(path);
    expect_refused(dir, NB_ENOENT, "stage1.safetensors, which the manifest lists, is missing", "tensor 'h2.");
    {
        int cuts[] = { 0, 2, 3 };
        split_t own;
        split_new(&own, &model, cuts, 2, 1);
        nb_ckpt_manifest_t mm;
        assert_int_equal(nb_ckpt_manifest_read(dir, &mm, err, sizeof err), 0);
        assert_int_equal(nb_ckpt_load_part(dir, &mm, own.p[0], own.o[0], err, sizeof err), 0);
        assert_int_equal(nb_ckpt_verify(dir, &mm, err, sizeof err), NB_ENOENT);
        assert_non_null(strstr(err, "stage1.safetensors"));
        split_free(&own);
    }
    free(good);

    /* the manifest's digest of a file does not match it */
    fresh(dir);
    nb_ckpt_manifest_t m;
    assert_int_equal(nb_ckpt_manifest_read(dir, &m, err, sizeof err), 0);
    m.files[0].sha256[10] = m.files[0].sha256[10] == '0' ? '1' : '0';
    assert_int_equal(nb_ckpt_manifest_write(dir, &m, err, sizeof err), 0);
    expect_refused(dir, NB_EFORMAT, "stage0.safetensors", "the manifest lists");
    /* nb_ckpt_verify says the same */
    assert_int_equal(nb_ckpt_verify(dir, &m, err, sizeof err), NB_EFORMAT);
    assert_non_null(strstr(err, "stage0.safetensors"));
}

/* Values a consistent file may not hold: NaN, 1e38 (digests all match). */
static void test_refuse_values(void **state)
{
    char dir[256];
    snprintf(dir, sizeof dir, "%s/vals", work);
    static const struct { int part, kind; const char *tensor; float v; const char *why; } cases[] = {
        { 0, 0, "h0.qkv.w", NAN, "not finite" },
        { 1, 0, "lnf.w", 1e38f, "beyond" },
        { 1, 2, "h2.fc.b", -INFINITY, "not finite" },
        { 0, 1, "wte", -1e38f, "beyond" },
        { 0, 2, "h1.proj.w", -1e-3f, "never negative" },
    };
    for (size_t k = 0; k < NB_ARRAY_LEN(cases); k++) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        assert_int_equal(system(cmd), 0);
        int cuts[] = { 0, 2, 3 };
        split_t a;
        split_new(&a, &model, cuts, 2, 1);
        fill(&a, 3);
        nb_part_t *p = a.p[cases[k].part];
        int ti = nb_part_find_tensor(p, cases[k].tensor);
        assert_true(ti >= 0);
        const nb_param_info_t *t = nb_part_tensor(p, ti);
        float *buf[3] = { nb_part_params(p), nb_optim_m(a.o[cases[k].part]), nb_optim_v(a.o[cases[k].part]) };
        nb_be_from_host(be, buf[cases[k].kind] + t->offset + t->numel / 2, &cases[k].v, sizeof(float));
        write_ckpt(&a, dir, 8);
        split_free(&a);
        nb_ckpt_manifest_t m;
        char err[512];
        assert_int_equal(nb_ckpt_manifest_read(dir, &m, err, sizeof err), 0);
        assert_int_equal(nb_ckpt_verify(dir, &m, err, sizeof err), 0); /* the digests are fine */
        assert_int_equal(nb_ckpt_verify_values(dir, &m, NULL, err, sizeof err), NB_EFORMAT);
        assert_non_null(strstr(err, cases[k].tensor));
        char file[32];
        snprintf(file, sizeof file, "stage%d.safetensors", cases[k].part);
        expect_refused(dir, NB_EFORMAT, file, cases[k].why);
        char tensor[64];
        snprintf(tensor, sizeof tensor, "'%s%s'", cases[k].kind == 0 ? "" : cases[k].kind == 1 ? "adamw.m." : "adamw.v.",
                 cases[k].tensor);
        expect_refused(dir, NB_EFORMAT, tensor, cases[k].why);
    }
}

static void test_refuse_other_model(void **state)
{
    char dir[256], err[512];
    snprintf(dir, sizeof dir, "%s/other", work);
    fresh(dir);
    nb_model_config_t c = model;
    c.d_ff = 48;
    int cuts[] = { 0, 3 };
    split_t b;
    split_new(&b, &c, cuts, 1, 1);
    saved_t sv;
    save_state(&b, &sv);
    assert_int_equal(load(&b, dir, err, sizeof err), NB_EINVAL);
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "model.d_ff is 32 in the checkpoint, 48 in this model"));
    assert_unchanged(&b, &sv);
    free_state(&b, &sv);
    split_free(&b);
    c = model;
    c.tie_embeddings = false;
    split_new(&b, &c, cuts, 1, 1);
    assert_int_equal(load(&b, dir, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "model.tie_embeddings"));
    split_free(&b);
    /* a part whose tensors differ in shape from the file's is refused, by tensor */
    nb_ckpt_manifest_t m;
    assert_int_equal(nb_ckpt_manifest_read(dir, &m, err, sizeof err), 0);
    assert_int_equal(nb_ckpt_manifest_write(dir, &m, err, sizeof err), 0);
}

/* A manifest is refused, naming the field, whatever is wrong in it. */
static void test_manifest_parse(void **state)
{
    nb_ckpt_manifest_t m = { .meta = meta_of(&model, 12), .n_files = 2 };
    for (int i = 0; i < 2; i++) {
        snprintf(m.files[i].name, sizeof m.files[i].name, "stage%d.safetensors", i);
        m.files[i].bytes = 1000 + (uint64_t)i;
        memset(m.files[i].sha256, 'a' + i, 64);
        m.files[i].sha256[64] = 0;
        m.files[i].stages = i ? 6 : 1;
    }
    size_t len;
    char *text = nb_ckpt_manifest_format(&m, &len), err[512];
    assert_non_null(text);
    nb_ckpt_manifest_t back;
    assert_int_equal(nb_ckpt_manifest_parse(text, len, "t", &back, err, sizeof err), 0);
    assert_memory_equal(&back, &m, sizeof m);
    static const struct { const char *from, *to; int code; const char *needle; } cases[] = {
        { "\"stage0.safetensors\"", "\"../x\"", NB_EFORMAT, "files[0].name \"../x\"" },
        { "\"stage0.safetensors\"", "\"a/b\"", NB_EFORMAT, "files[0].name" },
        { "\"stage0.safetensors\"", "\"..\"", NB_EFORMAT, "files[0].name" },
        { "\"stage0.safetensors\"", "\"x.tmp\"", NB_EFORMAT, "files[0].name" },
        { "\"stage0.safetensors\"", "\"manifest.json\"", NB_EFORMAT, "files[0].name" },
        { "\"stage0.safetensors\"", "\"stage1.safetensors\"", NB_EFORMAT, "listed twice" },
        { "\"version\": 1", "\"version\": 2", NB_EVERSION, "version 2" },
        { "\"nebula-checkpoint\"", "\"nebula-x\"", NB_EFORMAT, "format" },
        { "\"step\": 12", "\"step\": -1", NB_EFORMAT, "\"step\"" },
        { "\"optim_steps\": 7", "\"optim_steps\": 13", NB_EFORMAT, "\"optim_steps\"" },
        { "\"seed\": \"", "\"seed\": \"x", NB_EFORMAT, "\"seed\"" },
        { "\"job_id\": \"42\"", "\"job_id\": 42", NB_EFORMAT, "\"job_id\"" },
        { "\"d_ff\": 32", "\"d_ff\": 33", NB_EFORMAT, "model_sha256" },
        { "\"n_head\": 2", "\"n_head\": 3", NB_EFORMAT, "n_head" },
        { "\"norm\": \"pre\"", "\"norm\": \"mid\"", NB_EFORMAT, "model.norm" },
        { "\"sha256\": \"aaaa", "\"sha256\": \"Aaaa", NB_EFORMAT, "sha256" },
        { "\"bytes\": 1000", "\"bytes\": 1000.5", NB_EFORMAT, "bytes" },
        { "\"stages\": [\n        1,\n        2\n      ]", "\"stages\": [1, 1]", NB_EFORMAT, "stages[1]" },
        { "\"stages\": [\n        0\n      ]", "\"stages\": [64]", NB_EFORMAT, "stages[0]" },
        { "\"stages\": [\n        0\n      ]", "\"stages\": []", NB_EFORMAT, "stages" },
        { "{", "[", NB_EFORMAT, "t:" },
        { "\"kernels\": \"test\"", "\"kernels\": 5", NB_EFORMAT, "kernels" },
    };
    for (size_t k = 0; k < NB_ARRAY_LEN(cases); k++) {
        char *at = strstr(text, cases[k].from);
        if (!at)
            fail_msg("case %zu: '%s' not in the manifest:\n%s", k, cases[k].from, text);
        size_t fl = strlen(cases[k].from), tl = strlen(cases[k].to);
        char *mod = malloc(len + tl + 1);
        memcpy(mod, text, (size_t)(at - text));
        memcpy(mod + (at - text), cases[k].to, tl);
        strcpy(mod + (at - text) + tl, at + fl);
        int rc = nb_ckpt_manifest_parse(mod, strlen(mod), "t", &back, err, sizeof err);
        printf("  refused (%s): %s\n", nb_strerror(rc), err);
        assert_int_equal(rc, cases[k].code);
        if (!strstr(err, cases[k].needle))
            fail_msg("'%s' does not name '%s'", err, cases[k].needle);
        free(mod);
    }
    /* the writer refuses what the reader would */
    snprintf(m.files[0].name, sizeof m.files[0].name, "../x");
    char dir[256];
    snprintf(dir, sizeof dir, "%s/badname", work);
    mkdir(dir, 0755);
    assert_int_equal(nb_ckpt_manifest_write(dir, &m, err, sizeof err), NB_EINVAL);
    char path[320];
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    assert_int_not_equal(access(path, F_OK), 0);
    /* a manifest naming ../x on disk: the loader refuses it too */
    char *bad = strdup(text);
    char *at = strstr(bad, "\"stage0.safetensors\"");
    memcpy(at, "\"../x\"", 6);
    memmove(at + 6, at + 20, strlen(at + 20) + 1);
    spit(path, bad, strlen(bad));
    free(bad);
    nb_ckpt_manifest_t mm;
    assert_int_equal(nb_ckpt_manifest_read(dir, &mm, err, sizeof err), NB_EFORMAT);
    assert_non_null(strstr(err, "../x"));
    assert_non_null(strstr(err, path));
    expect_refused(dir, NB_EFORMAT, "../x", "files[0].name");
    /* a file name is checked when written, too */
    nb_ckpt_snap_t *s = nb_ckpt_snap_new();
    nb_ckpt_file_t fe;
    assert_int_equal(nb_ckpt_write_file(dir, "../x", &s, 1, &m.meta, &fe, err, sizeof err), NB_EINVAL);
    nb_ckpt_snap_free(s);
    /* garbage of every length never crashes and is refused */
    for (size_t l = 0; l < len; l += 7)
        assert_int_not_equal(nb_ckpt_manifest_parse(text, l, "t", &back, err, sizeof err), 0);
    free(text);
}

/* The manifest of a one-file checkpoint of model c at step 12. */
static nb_ckpt_manifest_t one_file_manifest(const nb_model_config_t *c)
{
    nb_ckpt_manifest_t m = { .meta = meta_of(c, 12), .n_files = 1 };
    snprintf(m.files[0].name, sizeof m.files[0].name, "model.safetensors");
    m.files[0].bytes = 1000;
    memset(m.files[0].sha256, 'a', 64);
    m.files[0].stages = 1;
    return m;
}

/* A model setting written only when set: the manifest of c holds "key"
 * and parses back into *back (the caller checks the values); each of the
 * n_bad values put in the place of key's value (a scalar, or an array to
 * its ']') is refused naming model.<key>; the manifest of
 * the test's default model has no such key (its JSON and digest are those
 * of before). */
static void check_model_key(const nb_model_config_t *c, const char *key, const char *const *bad, size_t n_bad,
                            nb_ckpt_manifest_t *back)
{
    nb_ckpt_manifest_t m = one_file_manifest(c);
    size_t len;
    char *text = nb_ckpt_manifest_format(&m, &len), err[512], pair[64], needle[64];
    assert_non_null(text);
    snprintf(pair, sizeof pair, "\"%s\": ", key);
    char *at = strstr(text, pair);
    if (!at)
        fail_msg("the manifest lacks '%s':\n%s", pair, text);
    assert_int_equal(nb_ckpt_manifest_parse(text, len, "t", back, err, sizeof err), 0);
    const char *value = at + strlen(pair);
    const char *end = value + strcspn(value, *value == '[' ? "]" : ",\n}");
    if (*value == '[') {
        assert_int_equal(*end, ']');
        end++;
    }
    snprintf(needle, sizeof needle, "model.%s", key);
    for (size_t k = 0; k < n_bad; k++) {
        nb_ckpt_manifest_t refused;
        char mod[4096];
        snprintf(mod, sizeof mod, "%.*s\"%s\": %s%s", (int)(at - text), text, key, bad[k], end);
        assert_int_equal(nb_ckpt_manifest_parse(mod, strlen(mod), "t", &refused, err, sizeof err), NB_EFORMAT);
        printf("  refused: %s\n", err);
        assert_non_null(strstr(err, needle));
    }
    free(text);
    nb_ckpt_manifest_t d = one_file_manifest(&model);
    text = nb_ckpt_manifest_format(&d, &len);
    assert_non_null(text);
    snprintf(pair, sizeof pair, "\"%s\"", key);
    assert_null(strstr(text, pair));
    free(text);
}

/* The low-rank split in the manifest's model: "lowrank": [block, rank]
 * round-trips; a model without a split has no such key; a malformed value
 * is refused naming it. */
static void test_manifest_lowrank(void **state)
{
    (void)state;
    nb_model_config_t lr = model;
    lr.lowrank_block = 2;
    lr.lowrank_rank = 5;
    static const char *const bad[] = { "[2, 0]", "[2]", "[-1, 5]", "\"x\"" };
    nb_ckpt_manifest_t back;
    check_model_key(&lr, "lowrank", bad, NB_ARRAY_LEN(bad), &back);
    assert_int_equal(back.meta.model.lowrank_block, 2);
    assert_int_equal(back.meta.model.lowrank_rank, 5);
}

/* Token shift in the manifest's model: "token_shift": true round-trips; a
 * model without it has no such key; any other value is refused naming it. */
static void test_manifest_token_shift(void **state)
{
    (void)state;
    nb_model_config_t ts = model;
    ts.token_shift = true;
    static const char *const bad[] = { "false", "1", "\"true\"", "null" };
    nb_ckpt_manifest_t back;
    check_model_key(&ts, "token_shift", bad, NB_ARRAY_LEN(bad), &back);
    assert_true(back.meta.model.token_shift);
}

/* ---- the root ----------------------------------------------------------------- */

static void make_step(const char *root, int64_t step, bool complete)
{
    char dir[320];
    nb_ckpt_step_dir(root, step, dir, sizeof dir);
    if (complete) {
        int cuts[] = { 0, 3 };
        split_t a;
        split_new(&a, &model, cuts, 1, 1);
        write_ckpt(&a, dir, step);
        split_free(&a);
    } else {
        mkdir(dir, 0755);
        char path[400];
        snprintf(path, sizeof path, "%s/stage0.safetensors", dir);
        spit(path, "partial", 7);
    }
}

static bool exists(const char *root, const char *rel)
{
    char path[400];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    return access(path, F_OK) == 0;
}

static void test_list_prune(void **state)
{
    char root[256], err[512], dir[320];
    snprintf(root, sizeof root, "%s/root", work);
    int64_t steps[8];
    assert_int_equal(nb_ckpt_list(root, steps, 8), 0); /* no root yet */
    assert_int_equal(nb_ckpt_prune(root, 3, err, sizeof err), 0);
    assert_int_equal(nb_ckpt_find(root, dir, sizeof dir, err, sizeof err), NB_ENOENT);
    mkdir(root, 0755);
    assert_int_equal(nb_ckpt_find(root, dir, sizeof dir, err, sizeof err), NB_ENOENT);
    printf("  %s\n", err);
    make_step(root, 10, true);
    make_step(root, 20, true);
    make_step(root, 25, false); /* older than the newest complete: a dead attempt */
    make_step(root, 30, true);
    make_step(root, 40, true);
    make_step(root, 50, false); /* newer: may be in the making */
    /* a manifest in the wrong directory does not make it complete */
    make_step(root, 60, false);
    char src[400], dst[400];
    snprintf(src, sizeof src, "%s/step-00000040/manifest.json", root);
    snprintf(dst, sizeof dst, "%s/step-00000060/manifest.json", root);
    size_t len;
    unsigned char *mf = slurp(src, &len);
    spit(dst, mf, len);
    free(mf);
    /* temporary files: stale ones (no writer) and one a live writer holds */
    spit(strcat(strcpy(src, root), "/step-00000050/stage0.safetensors.tmp"), "x", 1);
    spit(strcat(strcpy(src, root), "/step-00000040/manifest.json.tmp"), "x", 1);
    spit(strcat(strcpy(src, root), "/step-00000050/stage1.safetensors.tmp"), "y", 1);
    int live = open(src, O_RDONLY);
    assert_true(live >= 0);
    assert_int_equal(flock(live, LOCK_EX), 0);
    spit(strcat(strcpy(src, root), "/notes.txt"), "keep", 4); /* not ours: kept */
    assert_int_equal(nb_ckpt_list(root, steps, 8), 4);
    assert_true(steps[0] == 40 && steps[1] == 30 && steps[2] == 20 && steps[3] == 10);
    assert_int_equal(nb_ckpt_list(root, steps, 2), 2);
    assert_int_equal(nb_ckpt_find(root, dir, sizeof dir, err, sizeof err), 0);
    assert_non_null(strstr(dir, "step-00000040"));
    nb_ckpt_step_dir(root, 20, src, sizeof src);
    assert_int_equal(nb_ckpt_find(src, dir, sizeof dir, err, sizeof err), 0);
    assert_string_equal(dir, src);

    assert_int_equal(nb_ckpt_prune(root, 2, err, sizeof err), 3); /* 10, 20, 25 */
    assert_false(exists(root, "step-00000010"));
    assert_false(exists(root, "step-00000020"));
    assert_false(exists(root, "step-00000025"));
    assert_true(exists(root, "step-00000030/manifest.json"));
    assert_true(exists(root, "step-00000040/stage0.safetensors"));
    assert_false(exists(root, "step-00000040/manifest.json.tmp"));
    assert_true(exists(root, "step-00000050/stage0.safetensors"));
    assert_false(exists(root, "step-00000050/stage0.safetensors.tmp"));
    assert_true(exists(root, "step-00000050/stage1.safetensors.tmp")); /* its writer lives */
    assert_true(exists(root, "step-00000060"));
    assert_true(exists(root, "notes.txt"));
    assert_int_equal(nb_ckpt_list(root, steps, 8), 2);
    close(live); /* the writer dies: its file is stale now */
    assert_int_equal(nb_ckpt_prune(root, 2, err, sizeof err), 0);
    assert_false(exists(root, "step-00000050/stage1.safetensors.tmp"));
    assert_int_equal(nb_ckpt_prune(root, 0, err, sizeof err), 1); /* keep < 1 keeps 1 */
    assert_int_equal(nb_ckpt_list(root, steps, 8), 1);
    assert_true(steps[0] == 40);
    /* a newer complete checkpoint makes the older incomplete ones dead */
    make_step(root, 70, true);
    assert_int_equal(nb_ckpt_prune(root, 3, err, sizeof err), 2); /* 50, 60 */
    assert_int_equal(nb_ckpt_list(root, steps, 8), 2);
    assert_true(steps[0] == 70 && steps[1] == 40);
}

/* A writer that finds another's temporary file waits for its lock, and a
 * write over an existing checkpoint file replaces it whole. */
/* Frozen tensors: no AdamW state in the files; a round trip into every
 * split freezing the same tensors is bit-exact (a snapshot refreshed
 * too); weights alone load anywhere; a restore that would change which
 * tensors train is refused, naming the tensor, with the part unchanged. */
static void test_frozen(void **state)
{
    nb_freeze_spec_t fz;
    memset(&fz, 0, sizeof fz);
    fz.n_freeze = 2;
    snprintf(fz.freeze[0], sizeof fz.freeze[0], "wte");
    snprintf(fz.freeze[1], sizeof fz.freeze[1], "h1.*");
    static const int splits[][MAXP + 1] = { { 0, 3 }, { 0, 1, 3 }, { 0, 2, 3 }, { 0, 1, 2, 3 } };
    static const int nps[] = { 1, 2, 2, 3 };
    split_t a;
    split_new_fz(&a, &model, splits[1], 2, 10, &fz);
    fill(&a, 55);
    char dir[256], err[1024], path[320];
    snprintf(dir, sizeof dir, "%s/frozen", work);
    write_ckpt(&a, dir, 9);
    nb_ckpt_manifest_t m;
    assert_int_equal(nb_ckpt_manifest_read(dir, &m, err, sizeof err), 0);
    uint64_t nv = 0, want = 6;
    for (int i = 0; i < a.np; i++)
        want += nb_part_num_params(a.p[i]) + 2 * nb_part_num_grads(a.p[i]);
    assert_int_equal(nb_ckpt_verify_values(dir, &m, &nv, err, sizeof err), 0);
    assert_int_equal(nv, want);
    snprintf(path, sizeof path, "%s/stage0.safetensors", dir);
    nb_st_file_t *f;
    assert_int_equal(nb_st_open(path, &f, err, sizeof err), 0);
    assert_true(nb_st_find(f, "wte") >= 0);
    assert_true(nb_st_find(f, "adamw.m.wte") < 0);
    assert_true(nb_st_find(f, "adamw.v.wte") < 0);
    assert_true(nb_st_find(f, "adamw.m.wpe") >= 0);
    nb_st_close(f);
    snprintf(path, sizeof path, "%s/stage1.safetensors", dir);
    assert_int_equal(nb_st_open(path, &f, err, sizeof err), 0);
    assert_true(nb_st_find(f, "h1.qkv.w") >= 0);
    assert_true(nb_st_find(f, "adamw.v.h1.qkv.w") < 0);
    assert_true(nb_st_find(f, "adamw.v.h2.qkv.w") >= 0);
    nb_st_close(f);
    for (int to = 0; to < 4; to++) {
        split_t b;
        split_new_fz(&b, &model, splits[to], nps[to], 20, &fz);
        if (load(&b, dir, err, sizeof err))
            fail_msg("frozen -> %d parts: %s", nps[to], err);
        assert_same(&a, &b);
        printf("  frozen wte, h1.*: 2 parts -> %d part(s) (cut %d): bit-exact\n", nps[to], splits[to][1]);
        split_free(&b);
    }
    /* a snapshot refreshed from the frozen part, and one of another
     * trainable set refused */
    nb_ckpt_snap_t *s;
    assert_int_equal(nb_ckpt_snapshot(a.p[0], a.o[0], &s, err, sizeof err), 0);
    fill(&a, 56);
    assert_int_equal(nb_ckpt_snapshot_refresh(s, a.p[0], a.o[0], err, sizeof err), 0);
    assert_int_equal(nb_ckpt_snap_bytes(s),
                     (nb_part_num_params(a.p[0]) + 2 * nb_part_num_grads(a.p[0])) * sizeof(float));
    split_t u;
    split_new(&u, &model, splits[1], 2, 30);
    assert_int_equal(nb_ckpt_snapshot_refresh(s, u.p[0], u.o[0], err, sizeof err), NB_EINVAL);
    printf("  refresh refused: %s\n", err);
    nb_ckpt_snap_free(s);
    /* weights alone restore into a part that trains everything */
    assert_int_equal(nb_ckpt_load_part(dir, &m, u.p[0], NULL, err, sizeof err), 0);
    split_free(&u);
    /* resuming with wte training: its moments are not there */
    split_t b;
    split_new(&b, &model, splits[1], 2, 40);
    fill(&b, 7);
    saved_t sv;
    save_state(&b, &sv);
    assert_int_equal(nb_ckpt_load_part(dir, &m, b.p[0], b.o[0], err, sizeof err), NB_EINVAL);
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "tensor 'wte' trains in this run but has no AdamW state in the checkpoint"));
    assert_non_null(strstr(err, "job.freeze"));
    assert_unchanged(&b, &sv);
    free_state(&b, &sv);
    split_free(&b);
    /* resuming a checkpoint that trained everything with wte frozen */
    snprintf(dir, sizeof dir, "%s/unfrozen", work);
    split_t full;
    split_new(&full, &model, splits[1], 2, 50);
    fill(&full, 9);
    write_ckpt(&full, dir, 9);
    assert_int_equal(nb_ckpt_manifest_read(dir, &m, err, sizeof err), 0);
    split_new_fz(&b, &model, splits[1], 2, 60, &fz);
    fill(&b, 8);
    save_state(&b, &sv);
    assert_int_equal(nb_ckpt_load_part(dir, &m, b.p[0], b.o[0], err, sizeof err), NB_EINVAL);
    printf("  refused: %s\n", err);
    assert_non_null(strstr(err, "tensor 'wte' is frozen in this run (job.freeze) but trained in the run that wrote"));
    assert_unchanged(&b, &sv);
    free_state(&b, &sv);
    split_free(&b);
    split_free(&full);
    split_free(&a);
}

static void test_write_replaces(void **state)
{
    char dir[256], err[512], path[320];
    snprintf(dir, sizeof dir, "%s/replace", work);
    fresh(dir);
    snprintf(path, sizeof path, "%s/stage0.safetensors.tmp", dir);
    spit(path, "stale stale stale", 17); /* a killed writer's */
    fresh(dir);
    assert_int_not_equal(access(path, F_OK), 0);
    nb_ckpt_manifest_t m;
    assert_int_equal(nb_ckpt_manifest_read(dir, &m, err, sizeof err), 0);
    assert_int_equal(nb_ckpt_verify(dir, &m, err, sizeof err), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_resplit),
        cmocka_unit_test(test_merge),
        cmocka_unit_test(test_snapshot_refresh),
        cmocka_unit_test(test_refuse_damage),
        cmocka_unit_test(test_refuse_values),
        cmocka_unit_test(test_refuse_other_model),
        cmocka_unit_test(test_manifest_parse),
        cmocka_unit_test(test_manifest_lowrank),
        cmocka_unit_test(test_manifest_token_shift),
        cmocka_unit_test(test_list_prune),
        cmocka_unit_test(test_write_replaces),
        cmocka_unit_test(test_frozen),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
