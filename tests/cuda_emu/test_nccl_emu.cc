/* test_nccl_emu.cc - the emulated NCCL itself (tests/cuda_emu/nccl_emu.h):
 * ncclCommInitAll and its device checks, a group that issues every rank's
 * all-reduce from one thread, one thread per rank with ncclCommInitRank
 * and ungrouped calls (matched by their order on each rank), the
 * rank-order sum, in-place buffers, a call whose ranks disagree, a stream
 * of another device, and a rank that never comes (reported, not a hang).
 * The NCCL engine's tests (tests/kernels/test_cuda_allreduce.c) trust
 * these semantics. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
extern "C" {
#include <cmocka.h>
}
#include <pthread.h>
#include <stdlib.h>

#include "tests/cuda_emu/cuda_emu.h"
#include "tests/cuda_emu/nccl_emu.h"

enum { N = 1001, R = 3 };

static float *dev_buf(int r)
{
    void *p = NULL;
    assert_int_equal(cudaMalloc(&p, N * sizeof(float)), cudaSuccess);
    float *f = (float *)p;
    for (int i = 0; i < N; i++)
        f[i] = (float)(i % 13) * (r == 0 ? 0.1f : r == 1 ? 1e4f : -1e4f); /* rank order shows in the bits */
    return f;
}

static float want(int i)
{
    float acc = (float)(i % 13) * 0.1f;
    acc += (float)(i % 13) * 1e4f;
    acc += (float)(i % 13) * -1e4f;
    return acc;
}

static void test_init_all_and_group(void **state)
{
    (void)state;
    ncclComm_t comms[R];
    int twice[2] = { 1, 1 }, bad[2] = { 0, 7 };
    assert_int_equal(ncclCommInitAll(comms, 2, twice), ncclInvalidUsage);
    assert_int_equal(ncclCommInitAll(comms, 2, bad), ncclInvalidArgument);
    assert_int_equal(ncclCommInitAll(comms, R, NULL), ncclSuccess);
    int n = 0, dev = -1, rank = -1;
    assert_int_equal(ncclCommCount(comms[2], &n), ncclSuccess);
    assert_int_equal(ncclCommCuDevice(comms[2], &dev), ncclSuccess);
    assert_int_equal(ncclCommUserRank(comms[2], &rank), ncclSuccess);
    assert_true(n == R && dev == 2 && rank == 2);
    float *buf[R];
    cudaStream_t st[R];
    for (int r = 0; r < R; r++) {
        buf[r] = dev_buf(r);
        cudaSetDevice(r);
        assert_int_equal(cudaStreamCreate(&st[r]), cudaSuccess);
    }
    assert_int_equal(ncclGroupStart(), ncclSuccess);
    for (int r = 0; r < R; r++)
        assert_int_equal(ncclAllReduce(buf[r], buf[r], N, ncclFloat, ncclSum, comms[r], st[r]), ncclSuccess);
    assert_int_equal(ncclGroupEnd(), ncclSuccess);
    for (int r = 0; r < R; r++)
        for (int i = 0; i < N; i++)
            assert_true(buf[r][i] == want(i));
    /* another device's stream; an unsupported type: refused, nothing issued */
    assert_int_equal(ncclGroupStart(), ncclSuccess);
    assert_int_equal(ncclAllReduce(buf[0], buf[0], N, ncclFloat, ncclSum, comms[0], st[1]), ncclInvalidArgument);
    assert_int_equal(ncclGroupEnd(), ncclInvalidArgument);
    assert_int_equal(ncclAllReduce(buf[0], buf[0], N, ncclDouble, ncclSum, comms[0], st[0]), ncclInvalidArgument);
    /* ranks that disagree about the count */
    assert_int_equal(ncclGroupStart(), ncclSuccess);
    for (int r = 0; r < R; r++)
        ncclAllReduce(buf[r], buf[r], r == 1 ? N - 1 : N, ncclFloat, ncclSum, comms[r], st[r]);
    assert_int_equal(ncclGroupEnd(), ncclInvalidUsage);
    assert_int_equal(ncclGroupEnd(), ncclInvalidUsage); /* no group open */
    for (int r = 0; r < R; r++) {
        cudaStreamDestroy(st[r]);
        cudaFree(buf[r]);
        assert_int_equal(ncclCommDestroy(comms[r]), ncclSuccess);
    }
    cudaSetDevice(0);
}

typedef struct {
    ncclUniqueId id;
    int rank;
    float *buf;
    ncclResult_t rc;
} rank_t;

static void *rank_main(void *p)
{
    rank_t *k = (rank_t *)p;
    cudaSetDevice(k->rank);
    ncclComm_t c;
    k->rc = ncclCommInitRank(&c, R, k->id, k->rank);
    for (int rep = 0; k->rc == ncclSuccess && rep < 2; rep++) /* two calls, matched by order */
        k->rc = ncclAllReduce(k->buf, k->buf, N, ncclFloat, ncclSum, c, NULL);
    if (k->rc == ncclSuccess)
        ncclCommDestroy(c);
    return NULL;
}

static void test_rank_per_thread(void **state)
{
    (void)state;
    ncclUniqueId id;
    assert_int_equal(ncclGetUniqueId(&id), ncclSuccess);
    rank_t k[R];
    pthread_t th[R];
    for (int r = 0; r < R; r++) {
        k[r] = rank_t{ id, r, dev_buf(r), ncclSuccess };
        assert_int_equal(pthread_create(&th[r], NULL, rank_main, &k[r]), 0);
    }
    for (int r = 0; r < R; r++)
        pthread_join(th[r], NULL);
    for (int r = 0; r < R; r++) {
        assert_int_equal(k[r].rc, ncclSuccess);
        for (int i = 0; i < N; i++)
            assert_true(k[r].buf[i] == want(i) * 3.0f); /* second call: 3 equal values, exact */
        cudaFree(k[r].buf);
    }
}

static void test_missing_rank_times_out(void **state)
{
    (void)state;
    ncclUniqueId id;
    ncclGetUniqueId(&id);
    ncclComm_t c;
    /* rank 1 of 2 never joins: reported after NB_NCCL_EMU_TIMEOUT (1 s here) */
    assert_int_equal(ncclCommInitRank(&c, 2, id, 0), ncclSystemError);
    ncclCommDestroy(c);
    assert_string_equal(ncclGetErrorString(ncclSystemError),
                        "unhandled system error (run with NCCL_DEBUG=INFO for details)");
}

int main(void)
{
    setenv("NB_CUDA_EMU_DEVICES", "3", 1);
    setenv("NB_NCCL_EMU_TIMEOUT", "1", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_all_and_group),
        cmocka_unit_test(test_rank_per_thread),
        cmocka_unit_test(test_missing_rank_times_out),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
