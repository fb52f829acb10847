/* test_cuda_allreduce.c - the NCCL all-reduce of CUDA replicas
 * (kernels/allreduce.h, kernels/cuda/cuda_nccl.cu) and the reduction engine
 * the replicas get for CUDA backends (daemon/pipeline/replica_reduce.h).
 *
 * On two devices (the emulated device with NB_CUDA_EMU_DEVICES=2, which this
 * test sets; a real machine with two GPUs) each rank's buffer is reduced in
 * buckets taken from the end, as the replicas' backward hands them over, of
 * odd sizes; every rank must then hold the rank-order sum of the inputs to
 * the bit (two ranks: one addition per element, which NCCL's order cannot
 * change), the same bits on every rank and on a second run. On one GPU the
 * engine is the degenerate single rank (the buffer unchanged), through the
 * same code. Without a CUDA module or device the test is skipped with the
 * reason. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/pipeline/replica_reduce.h"
#include "kernels/allreduce.h"
#include "kernels/backend.h"

enum { NMAX = 2, N = 23459 };
/* Buckets, from the end of the buffer: a head, blocks, an empty one, an
 * embedding; their sum is N. */
static const size_t buckets[] = { 4097, 1, 37, 12345, 0, 1000, 33, 5946 };

static nb_backend_t *bes[NMAX];
static int n_dev;

static bool emulated(void)
{
    const char *m = getenv("NEBULA_CUDA_MODULE");
    return m && strstr(m, "cuda-emu");
}

/* Opens up to NMAX devices; false (and prints why) when none. */
static bool open_devices(void)
{
    const char *why = NULL;
    n_dev = 0;
    for (int d = 0; d < NMAX; d++) {
        if (!(bes[d] = nb_cuda_backend_new(d, &why)))
            break;
        n_dev++;
    }
    if (n_dev == 0)
        printf("cuda backend unavailable: %s\n", why ? why : "?");
    else if (n_dev == 1)
        printf("one CUDA device: the degenerate single rank\n");
    return n_dev > 0;
}

static void close_devices(void)
{
    for (int d = 0; d < n_dev; d++)
        nb_be_free(bes[d]);
    n_dev = 0;
}

static float input(int r, size_t i)
{
    /* values of every magnitude and sign, so a sum in another order or a
     * missing rank shows in the bits */
    unsigned h = (unsigned)(i * 2654435761u) ^ (unsigned)(r * 40503u + 17u);
    return ((float)(h % 20011u) - 10005.0f) * (r ? 1e-3f : 0.37f) / (float)(1u + (h >> 28));
}

/* Fills each rank's device buffer with its inputs. */
static void fill(float **dbuf, float *host)
{
    for (int r = 0; r < n_dev; r++) {
        for (size_t i = 0; i < N; i++)
            host[i] = input(r, i);
        nb_be_from_host(bes[r], dbuf[r], host, N * sizeof(float));
        nb_be_sync(bes[r]);
    }
}

/* The CPU engine's answer: the rank-order sum. */
static void expected(float *want)
{
    float *in[NMAX];
    for (int r = 0; r < n_dev; r++) {
        in[r] = malloc(N * sizeof(float));
        assert_non_null(in[r]);
        for (size_t i = 0; i < N; i++)
            in[r][i] = input(r, i);
    }
    nb_reduce_sum_range(in, n_dev, 0, N);
    memcpy(want, in[0], N * sizeof(float));
    for (int r = 0; r < n_dev; r++)
        free(in[r]);
}

/* Reduces dbuf bucket by bucket from the end with e; returns rank 0's
 * result in out after checking every rank holds the same bits. */
static void reduce_buckets(nb_reduce_t *e, float **dbuf, float *out)
{
    size_t hi = N;
    char err[256] = "";
    for (size_t b = 0; b < sizeof buckets / sizeof buckets[0]; b++) {
        size_t lo = hi - buckets[b];
        float *bufs[NMAX];
        for (int r = 0; r < n_dev; r++)
            bufs[r] = dbuf[r] + lo;
        int rc = nb_reduce_allreduce(e, bufs, hi - lo, err, sizeof err);
        if (rc)
            printf("all-reduce: %s\n", err);
        assert_int_equal(rc, 0);
        hi = lo;
    }
    assert_int_equal(hi, 0);
    float *other = malloc(N * sizeof(float));
    assert_non_null(other);
    nb_be_to_host(bes[0], out, dbuf[0], N * sizeof(float));
    for (int r = 1; r < n_dev; r++) {
        nb_be_to_host(bes[r], other, dbuf[r], N * sizeof(float));
        assert_memory_equal(other, out, N * sizeof(float));
    }
    free(other);
}

static void test_sum_in_buckets(void **state)
{
    (void)state;
    if (!open_devices())
        skip();
    if (emulated())
        assert_int_equal(n_dev, 2);
    const char *why = NULL;
    nb_reduce_t *e = nb_reduce_new(bes, n_dev, &why);
    if (!e)
        printf("engine: %s\n", why);
    assert_non_null(e);
    assert_string_equal(e->iface->name, "nccl");
    float *dbuf[NMAX];
    for (int r = 0; r < n_dev; r++)
        assert_non_null(dbuf[r] = nb_be_alloc(bes[r], N * sizeof(float)));
    float *host = malloc(N * sizeof(float)), *want = malloc(N * sizeof(float));
    float *got = malloc(N * sizeof(float)), *again = malloc(N * sizeof(float));
    assert_true(host && want && got && again);
    expected(want);

    fill(dbuf, host);
    reduce_buckets(e, dbuf, got);
    size_t bad = 0;
    for (size_t i = 0; i < N; i++)
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0 && bad++ < 3)
            printf("element %zu: %.9g, want %.9g\n", i, got[i], want[i]);
    assert_int_equal(bad, 0);

    /* run to run: the same bits */
    fill(dbuf, host);
    reduce_buckets(e, dbuf, again);
    assert_memory_equal(again, got, N * sizeof(float));

    /* nothing to reduce is nothing done */
    char err[64];
    assert_int_equal(nb_reduce_allreduce(e, dbuf, 0, err, sizeof err), 0);
    printf("nccl all-reduce: %d ranks, %zu buckets of %d floats: the rank-order sum to the bit\n", n_dev,
           sizeof buckets / sizeof buckets[0], N);

    for (int r = 0; r < n_dev; r++)
        nb_be_dealloc(bes[r], dbuf[r]);
    free(host);
    free(want);
    free(got);
    free(again);
    nb_reduce_free(e);
    close_devices();
}

/* Two threads reduce disjoint buckets at once, as two replicas' threads do
 * when each completes a bucket (stage_replicas.c): the engine serialises
 * them and both sums are right. */
typedef struct {
    nb_reduce_t *e;
    float *bufs[NMAX];
    size_t n;
    int rc;
} job_t;

static void *reduce_thread(void *p)
{
    job_t *j = p;
    char err[256];
    for (int k = 0; k < 20 && j->rc == 0; k++) /* reduced 20 times: the inputs times 2^20 */
        j->rc = nb_reduce_allreduce(j->e, j->bufs, j->n, err, sizeof err);
    return NULL;
}

static void test_concurrent_buckets(void **state)
{
    (void)state;
    if (!open_devices())
        skip();
    const char *why = NULL;
    nb_reduce_t *e = nb_reduce_new(bes, n_dev, &why);
    assert_non_null(e);
    float *dbuf[NMAX];
    float *host = malloc(N * sizeof(float)), *got = malloc(N * sizeof(float));
    assert_true(host && got);
    for (int r = 0; r < n_dev; r++) {
        assert_non_null(dbuf[r] = nb_be_alloc(bes[r], N * sizeof(float)));
        for (size_t i = 0; i < N; i++)
            host[i] = (float)((i % 7) + 1); /* small integers: the sums are exact */
        nb_be_from_host(bes[r], dbuf[r], host, N * sizeof(float));
        nb_be_sync(bes[r]);
    }
    size_t split = 9001;
    job_t jobs[2] = { { .e = e, .n = split }, { .e = e, .n = N - split } };
    for (int r = 0; r < n_dev; r++) {
        jobs[0].bufs[r] = dbuf[r];
        jobs[1].bufs[r] = dbuf[r] + split;
    }
    pthread_t th[2];
    for (int t = 0; t < 2; t++)
        assert_int_equal(pthread_create(&th[t], NULL, reduce_thread, &jobs[t]), 0);
    for (int t = 0; t < 2; t++)
        pthread_join(th[t], NULL);
    assert_int_equal(jobs[0].rc, 0);
    assert_int_equal(jobs[1].rc, 0);
    double scale = 1.0;
    for (int k = 0; k < 20; k++)
        scale *= n_dev;
    for (int r = 0; r < n_dev; r++) {
        nb_be_to_host(bes[r], got, dbuf[r], N * sizeof(float));
        for (size_t i = 0; i < N; i++)
            assert_true((double)got[i] == (double)((i % 7) + 1) * scale);
        nb_be_dealloc(bes[r], dbuf[r]);
    }
    free(host);
    free(got);
    nb_reduce_free(e);
    close_devices();
}

/* A failed NCCL call (a lost device or peer; the emulated NCCL fails every
 * call while NB_NCCL_EMU_FAIL=1) fails the sum with NCCL's message, and the
 * engine stays failed: NCCL's state is unknown after it. Part of
 * test_refusals: a failure cannot be injected into the real NCCL. */
static void check_failure(void)
{
    assert_true(open_devices());
    const char *why = NULL;
    nb_reduce_t *e = nb_reduce_new(bes, n_dev, &why);
    assert_non_null(e);
    float *dbuf[NMAX];
    for (int r = 0; r < n_dev; r++) {
        assert_non_null(dbuf[r] = nb_be_alloc(bes[r], 64 * sizeof(float)));
        nb_be_memset0(bes[r], dbuf[r], 64 * sizeof(float));
    }
    char err[256] = "";
    assert_int_equal(nb_reduce_allreduce(e, dbuf, 64, err, sizeof err), 0);
    setenv("NB_NCCL_EMU_FAIL", "1", 1);
    assert_int_equal(nb_reduce_allreduce(e, dbuf, 64, err, sizeof err), NB_EIO);
    unsetenv("NB_NCCL_EMU_FAIL");
    printf("failed: %s\n", err);
    assert_non_null(strstr(err, "of 64 floats across 2 CUDA devices: unhandled system error"));
    assert_int_equal(nb_reduce_allreduce(e, dbuf, 64, err, sizeof err), NB_EIO);
    assert_non_null(strstr(err, "an earlier call failed"));
    for (int r = 0; r < n_dev; r++)
        nb_be_dealloc(bes[r], dbuf[r]);
    nb_reduce_free(e);
    close_devices();
}

/* What the engine refuses: a device twice, CPU and CUDA mixed; and, on the
 * emulated device, what a failed call does. */
static void test_refusals(void **state)
{
    (void)state;
    nb_backend_t *cpu = nb_cpu_backend_new();
    assert_non_null(cpu);
    const char *why = NULL;
    /* without a module the loader says why, and nothing crashes */
    nb_allreduce_t *a = nb_cuda_allreduce_new(&cpu, 1, &why);
    assert_null(a);
    assert_non_null(why);
    if (!open_devices()) {
        nb_be_free(cpu);
        skip();
    }
    nb_backend_t *twice[2] = { bes[0], bes[0] };
    why = NULL;
    assert_null(nb_reduce_new(twice, 2, &why));
    printf("device twice: %s\n", why);
    assert_non_null(strstr(why, "both on CUDA device 0"));
    nb_backend_t *mixed[2] = { bes[0], cpu };
    why = NULL;
    assert_null(nb_reduce_new(mixed, 2, &why));
    printf("mixed: %s\n", why);
    assert_non_null(strstr(why, "one kind of device"));
    why = NULL;
    assert_null(nb_cuda_allreduce_new(mixed, 2, &why));
    assert_non_null(strstr(why, "replica 1 is not on a CUDA device"));
    close_devices();
    nb_be_free(cpu);
    if (emulated())
        check_failure();
    else
        printf("a failed NCCL call is injected on the emulated device only\n");
}

int main(void)
{
    /* the emulated device: two GPUs (read once, at its first use) */
    setenv("NB_CUDA_EMU_DEVICES", "2", 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sum_in_buckets),
        cmocka_unit_test(test_concurrent_buckets),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
