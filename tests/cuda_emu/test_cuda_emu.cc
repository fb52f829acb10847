/* test_cuda_emu.cc - the emulated device itself (tests/cuda_emu/cuda_emu.h):
 * barriers, shared memory, warp shuffles, 2-D blocks, launch limits, a
 * deadlocked barrier, the two fiber orders, and cuBLAS's column-major sgemm
 * against a naive product. The CUDA kernels' tests trust these semantics. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
extern "C" {
#include <cmocka.h>
}
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/cuda_emu/cuda_emu.h"

#include <fcntl.h>

#define NB_DYN_SMEM_TEST(type, name) type *name = (type *)nb_emu::dyn_smem()
#define LAUNCH(k, g, b, s) nb_emu::launch(k, dim3(g), dim3(b), (s), (cudaStream_t)0)

/* out[blockIdx.x] = sum of in over the block's slice, through shared memory
 * and a tree of barriers. */
static __global__ void block_sum(float *out, const float *in)
{
    __shared__ float buf[256];
    unsigned t = threadIdx.x;
    buf[t] = in[blockIdx.x * blockDim.x + t];
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s)
            buf[t] += buf[t + s];
        __syncthreads();
    }
    if (t == 0)
        out[blockIdx.x] = buf[0];
}

static void test_barrier_reduction(void **state)
{
    (void)state;
    float in[4 * 256], out[4];
    for (int i = 0; i < 4 * 256; i++)
        in[i] = (float)(i % 7);
    for (int order = 0; order < 2; order++) {
        nb_emu::set_reverse(order == 1);
        LAUNCH(block_sum, 4, 256, 0)(out, in);
        assert_int_equal(cudaGetLastError(), cudaSuccess);
        for (int b = 0; b < 4; b++) {
            float want = 0;
            for (int i = 0; i < 256; i++)
                want += in[b * 256 + i];
            assert_true(out[b] == want);
        }
    }
    nb_emu::set_reverse(false);
}

/* Thread 0 writes, the others read without a barrier: a bug the reverse
 * order exposes (thread order lets thread 0 run first). */
static __global__ void missing_sync(int *out, int x)
{
    __shared__ int v;
    if (threadIdx.x == 0)
        v = x;
    out[threadIdx.x] = v;
    __syncthreads();
}

static void test_reverse_order_exposes_missing_barrier(void **state)
{
    (void)state;
    int out[64];
    nb_emu::set_reverse(false);
    LAUNCH(missing_sync, 1, 64, 0)(out, 42);
    for (int i = 0; i < 64; i++)
        assert_int_equal(out[i], 42);
    nb_emu::set_reverse(true);
    LAUNCH(missing_sync, 1, 64, 0)(out, 7);
    int stale = 0;
    for (int i = 1; i < 64; i++)
        stale += out[i] != 7;
    assert_true(stale > 0);
    nb_emu::set_reverse(false);
}

static __global__ void shuffles(int *x, int *d, int *u, int *s, float *sum, unsigned *ballot)
{
    int lane = threadIdx.x & 31, me = (int)threadIdx.x;
    x[me] = __shfl_xor_sync(0xffffffffu, me, 5);
    d[me] = __shfl_down_sync(0xffffffffu, me, 3);
    u[me] = __shfl_up_sync(0xffffffffu, me, 2, 16);
    s[me] = __shfl_sync(0xffffffffu, me, 7);
    float v = (float)lane;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    sum[me] = v;
    ballot[me] = __ballot_sync(0xffffffffu, lane % 3 == 0);
}

static void test_warp_shuffles(void **state)
{
    (void)state;
    int x[64], d[64], u[64], s[64];
    float sum[64];
    unsigned bal[64];
    unsigned want_bal = 0;
    for (int l = 0; l < 32; l++)
        want_bal |= (unsigned)(l % 3 == 0) << l;
    for (int order = 0; order < 2; order++) {
        nb_emu::set_reverse(order == 1);
        LAUNCH(shuffles, 1, 64, 0)(x, d, u, s, sum, bal);
        for (int i = 0; i < 64; i++) {
            int lane = i & 31, base = i - lane;
            assert_int_equal(x[i], base + (lane ^ 5));
            assert_int_equal(d[i], lane + 3 < 32 ? i + 3 : i);
            assert_int_equal(u[i], (lane & 15) >= 2 ? i - 2 : i);
            assert_int_equal(s[i], base + 7);
            assert_true(sum[i] == 496.0f); /* 0 + 1 + ... + 31 */
            assert_int_equal(bal[i], want_bal);
        }
    }
    nb_emu::set_reverse(false);
}

static __global__ void grid_2d(int *out, int width)
{
    NB_DYN_SMEM_TEST(int, scratch);
    int tid = (int)(threadIdx.y * blockDim.x + threadIdx.x);
    scratch[tid] = tid;
    __syncthreads();
    int n = (int)(blockDim.x * blockDim.y);
    int col = (int)(blockIdx.x * blockDim.x + threadIdx.x), row = (int)(blockIdx.y * blockDim.y + threadIdx.y);
    out[row * width + col] = scratch[n - 1 - tid] + 1000 * (int)blockIdx.y;
}

static void test_2d_blocks_and_dynamic_shared(void **state)
{
    (void)state;
    enum { BX = 8, BY = 4, GX = 3, GY = 2, W = BX * GX };
    static int out[W * BY * GY];
    LAUNCH(grid_2d, dim3(GX, GY), dim3(BX, BY), BX * BY * sizeof(int))(out, W);
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    for (int row = 0; row < BY * GY; row++)
        for (int col = 0; col < W; col++) {
            int tid = (row % BY) * BX + col % BX;
            assert_int_equal(out[row * W + col], BX * BY - 1 - tid + 1000 * (row / BY));
        }
}

static __global__ void touch(int *out) { out[threadIdx.x] = 1; }

static void test_launch_limits(void **state)
{
    (void)state;
    int out[1] = { 0 };
    LAUNCH(touch, 1, 1025, 0)(out);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidConfiguration);
    assert_int_equal(out[0], 0); /* nothing ran */
    LAUNCH(touch, 0, 32, 0)(out);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidConfiguration);
    LAUNCH(touch, 1, 1, 49 << 10)(out);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidConfiguration);
    assert_int_equal(cudaFuncSetAttribute(touch, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 << 10), cudaSuccess);
    LAUNCH(touch, 1, 1, 99 << 10)(out);
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    assert_int_equal(out[0], 1);
    assert_int_equal(cudaGetLastError(), cudaSuccess); /* the error was cleared */
}

static __global__ void divergent_barrier(int *out)
{
    if (threadIdx.x < 16)
        __syncthreads();
    out[threadIdx.x] = 1;
}

static void test_exited_threads_release_barrier(void **state)
{
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        static int out[32];
        /* 16 threads wait at a barrier the other 16 never reach: those
         * exit, and the barrier releases once every live thread arrived. */
        LAUNCH(divergent_barrier, 1, 32, 0)(out);
        _exit(out[0] == 1 ? 3 : 4);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    /* Exited threads do not count at a barrier (as on current GPUs), so this
     * one completes; the mixed barriers below cannot. */
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 3);
}

static __global__ void two_barriers_in_branch(int *out)
{
    if (threadIdx.x < 16) {
        __syncthreads();
    } else {
        __syncwarp();
    }
    out[threadIdx.x] = 1;
}

static void test_mixed_barriers_deadlock(void **state)
{
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        static int out[32];
        int fd = open("/dev/null", 1);
        if (fd >= 0)
            dup2(fd, 2);
        LAUNCH(two_barriers_in_branch, 1, 32, 0)(out);
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
}

static void test_sgemm_column_major(void **state)
{
    (void)state;
    enum { M = 5, N = 3, K = 4 };
    float a[K * M], b[N * K], c[M * N], want[M * N];
    for (int i = 0; i < K * M; i++)
        a[i] = (float)(i % 5) - 2.0f;
    for (int i = 0; i < N * K; i++)
        b[i] = (float)(i % 3) + 0.5f;
    for (int i = 0; i < M * N; i++)
        c[i] = 1.0f;
    /* C (M x N, ld M) = 2 A^T B + 3 C, A stored K x M column-major (ld K), B K x N (ld K) */
    for (int j = 0; j < N; j++)
        for (int i = 0; i < M; i++) {
            float s = 0;
            for (int k = 0; k < K; k++)
                s += a[i * K + k] * b[j * K + k];
            want[j * M + i] = 2.0f * s + 3.0f;
        }
    cublasHandle_t h;
    assert_int_equal(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    float alpha = 2.0f, beta = 3.0f;
    assert_int_equal(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, M, N, K, &alpha, a, K, b, K, &beta, c, M),
                     CUBLAS_STATUS_SUCCESS);
    for (int i = 0; i < M * N; i++)
        assert_true(fabsf(c[i] - want[i]) < 1e-5f);
    /* lda below the stored rows of op(A) is refused, as by cuBLAS */
    assert_int_equal(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, M, N, K, &alpha, a, K - 1, b, K, &beta, c, M),
                     CUBLAS_STATUS_INVALID_VALUE);
    cublasDestroy(h);
}

static void test_memory_accounting(void **state)
{
    (void)state;
    size_t free0, total, free1;
    cudaMemGetInfo(&free0, &total);
    void *p = NULL;
    assert_int_equal(cudaMalloc(&p, 1 << 20), cudaSuccess);
    cudaMemGetInfo(&free1, &total);
    assert_true(free0 - free1 == (1 << 20));
    /* fresh device memory is not zero: 0xff bytes, NaN as floats */
    float f;
    memcpy(&f, p, sizeof f);
    assert_true(isnan(f));
    cudaFree(p);
    cudaMemGetInfo(&free1, &total);
    assert_true(free1 == free0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_barrier_reduction),
        cmocka_unit_test(test_reverse_order_exposes_missing_barrier),
        cmocka_unit_test(test_warp_shuffles),
        cmocka_unit_test(test_2d_blocks_and_dynamic_shared),
        cmocka_unit_test(test_launch_limits),
        cmocka_unit_test(test_exited_threads_release_barrier),
        cmocka_unit_test(test_mixed_barriers_deadlock),
        cmocka_unit_test(test_sgemm_column_major),
        cmocka_unit_test(test_memory_accounting),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
