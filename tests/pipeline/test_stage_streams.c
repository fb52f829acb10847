/*
 * test_stage_streams.c - a stage's codec streams come back from its
 * checkpoint (daemon/pipeline/stage_streams.c), and a checkpoint whose
 * stream header or key table claims other sizes than the tensors it holds is
 * refused, naming the tensor, before anything is allocated for the claim.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sys/stat.h>
#include "daemon/pipeline/stage_rt_internal.h"
#include "kernels/codec/codec.h"
#include "tests/pipeline/pipe_fixture.h"

static char work[128], data_path[200];

/* The fwd.recv stream of stage 1 in a 2-stage chain of 4 blocks crosses
 * the boundary before block 2. */
#define STREAM "codec.cut2.fwd.recv"

typedef struct {
    nb_backend_t *be;
    nb_host_t *h;
} host_t;

static void host_open(host_t *x)
{
    pf_job_t j = pf_job_default(data_path);
    int place[2] = { 0, 1 };
    nb_pipe_layout_t l;
    pf_layout(&j, 2, place, 2, &l);
    char err[256];
    x->be = nb_cpu_backend_new();
    x->h = NULL;
    if (nb_host_new(x->be, &l, 1, NULL, &x->h, err, sizeof err))
        fail_msg("%s", err);
}

static void host_close(host_t *x)
{
    nb_host_free(x->h);
    nb_be_free(x->be);
}

/* One extra tensor of the stream: its suffix and values. */
typedef struct {
    const char *what;
    const float *v;
    size_t n;
} extra_t;

/* Writes a checkpoint in work/name holding the stream's extras as given and
 * reads its manifest into m. */
static void write_stream_ckpt(const char *name, const extra_t *ex, int n_ex, char *dir, size_t dirlen,
                              nb_ckpt_manifest_t *m)
{
    char err[512];
    snprintf(dir, dirlen, "%s/%s", work, name);
    nb_ckpt_snap_t *s = nb_ckpt_snap_new();
    assert_non_null(s);
    for (int i = 0; i < n_ex; i++) {
        char full[128];
        snprintf(full, sizeof full, STREAM ".%s", ex[i].what);
        int64_t shape[1] = { (int64_t)ex[i].n };
        assert_int_equal(nb_ckpt_snap_add(s, full, 1, shape, ex[i].v), 0);
    }
    memset(m, 0, sizeof *m);
    pf_job_t j = pf_job_default(data_path);
    m->meta.step = 3;
    m->meta.model = j.model;
    m->n_files = 1;
    assert_int_equal(nb_ckpt_begin(dir, err, sizeof err), 0);
    if (nb_ckpt_write_file(dir, "stage1.safetensors", &s, 1, &m->meta, &m->files[0], err, sizeof err))
        fail_msg("%s", err);
    m->files[0].stages = 2;
    assert_int_equal(nb_ckpt_manifest_write(dir, m, err, sizeof err), 0);
    nb_ckpt_snap_free(s);
}

/* A residual of 5 values restores as written. */
static void test_residual_restores(void **state)
{
    (void)state;
    host_t x;
    host_open(&x);
    const float head[8] = { 1, 5, 0, 0, 0, 0, 0, 0 };
    const float resid[5] = { 0.5f, -1, 2, 0, 3.25f };
    char dir[300], err[512];
    nb_ckpt_manifest_t m;
    const extra_t ex[] = { { "head", head, 8 }, { "resid", resid, 5 } };
    write_stream_ckpt("ok", ex, 2, dir, sizeof dir, &m);
    if (nb__stage_streams_restore(x.h, 0, x.be, dir, &m, err, sizeof err))
        fail_msg("%s", err);
    size_t n = 0;
    const float *got = nb_codec_stream_residual_state(nb_host_stream(x.h, 0, 1), &n);
    assert_non_null(got);
    assert_int_equal(n, 5);
    float host[5];
    nb_be_to_host(x.be, host, got, sizeof host);
    assert_memory_equal(host, resid, sizeof host);
    host_close(&x);
}

/* A header claiming 2^32 - 1 residual values over a 5-value tensor. */
static void test_residual_size_lie(void **state)
{
    (void)state;
    host_t x;
    host_open(&x);
    const float head[8] = { 1, 65535, 65535, 0, 0, 0, 0, 0 };
    const float resid[5] = { 0 };
    char dir[300], err[512];
    nb_ckpt_manifest_t m;
    const extra_t ex[] = { { "head", head, 8 }, { "resid", resid, 5 } };
    write_stream_ckpt("resid-lie", ex, 2, dir, sizeof dir, &m);
    assert_int_equal(nb__stage_streams_restore(x.h, 0, x.be, dir, &m, err, sizeof err), NB_EFORMAT);
    assert_non_null(strstr(err, STREAM ".resid holds 5 values, its stream header says 4294967295"));
    assert_true(nb_codec_stream_empty(nb_host_stream(x.h, 0, 1)));
    host_close(&x);
}

/* A header claiming 65535 delta bases over a key table of one. */
static void test_key_table_size_lie(void **state)
{
    (void)state;
    host_t x;
    host_open(&x);
    const float head[8] = { 0, 0, 0, 65535, 0, 0, 0, 0 };
    const float keys[8] = { 1, 0, 0, 0, 1, 0, 4, 0 };
    char dir[300], err[512];
    nb_ckpt_manifest_t m;
    const extra_t ex[] = { { "head", head, 8 }, { "keys", keys, 8 } };
    write_stream_ckpt("keys-lie", ex, 2, dir, sizeof dir, &m);
    assert_int_equal(nb__stage_streams_restore(x.h, 0, x.be, dir, &m, err, sizeof err), NB_EFORMAT);
    assert_non_null(strstr(err, STREAM ".keys holds 8 values, its stream header says 524280"));
    host_close(&x);
}

/* A key table naming a base of 2^32 - 1 values over a 4-value tensor. */
static void test_base_size_lie(void **state)
{
    (void)state;
    host_t x;
    host_open(&x);
    const float head[8] = { 0, 0, 0, 1, 0, 0, 0, 0 };
    const float keys[8] = { 1, 0, 0, 0, 1, 0, 65535, 65535 };
    const float base[4] = { 1, 2, 3, 4 };
    char dir[300], err[512];
    nb_ckpt_manifest_t m;
    const extra_t ex[] = { { "head", head, 8 }, { "keys", keys, 8 }, { "base0", base, 4 } };
    write_stream_ckpt("base-lie", ex, 3, dir, sizeof dir, &m);
    assert_int_equal(nb__stage_streams_restore(x.h, 0, x.be, dir, &m, err, sizeof err), NB_EFORMAT);
    assert_non_null(strstr(err, STREAM ".base0 holds 4 values, its stream header says 4294967295"));
    assert_true(nb_codec_stream_empty(nb_host_stream(x.h, 0, 1)));
    host_close(&x);
}

int main(void)
{
    snprintf(work, sizeof work, "/tmp/nb-test-streams.%d", (int)getpid());
    mkdir(work, 0700);
    snprintf(data_path, sizeof data_path, "%s/tokens.bin", work);
    if (pf_write_tokens(data_path))
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_residual_restores),
        cmocka_unit_test(test_residual_size_lie),
        cmocka_unit_test(test_key_table_size_lie),
        cmocka_unit_test(test_base_size_lie),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", work);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", work);
    return rc;
}
