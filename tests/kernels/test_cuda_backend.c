/* test_cuda_backend.c - the CUDA backend against the CPU backend (the
 * reference): batched matmul with transposes (fp32 and bf16), add, scale,
 * copies.
 * Tolerance: |gpu - cpu| <= 1e-4 + 1e-4 * |cpu| per element (cuBLAS may use
 * another summation order). On a machine without a CUDA device, or a build
 * without nvcc, the test is reported as skipped with the reason. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include "kernels/backend.h"

static void test_cuda_matches_cpu(void **state)
{
    (void)state;
    const char *why = NULL;
    nb_backend_t *gpu = nb_cuda_backend_new(0, &why);
    if (!gpu) {
        printf("cuda backend unavailable: %s\n", why ? why : "?");
        skip();
    }
    nb_backend_t *cpu = nb_cpu_backend_new();
    enum { M = 33, N = 47, K = 65, NB = 3 };
    static float a[NB * K * M], b[NB * N * K], e[NB * M * N], c_cpu[NB * M * N], c_gpu[NB * M * N];
    for (int i = 0; i < NB * K * M; i++) a[i] = sinf((float)i * 0.37f);
    for (int i = 0; i < NB * N * K; i++) b[i] = cosf((float)i * 0.11f);
    for (int i = 0; i < NB * M * N; i++) e[i] = 1.0f + 0.5f * sinf((float)i * 0.23f); /* in [0.5, 1.5] */
    /* C = 3 (A^T B^T + 2 E), A^T M x K from K x M, B^T K x N from N x K. The
     * add and the scale do not undo each other: a backend whose add or scale
     * did nothing would be off by at least 1 (add) or 2 |C| / 3 (scale). */
    nb_matmul(cpu, true, true, M, N, K, 0.5f, a, M, K * M, b, K, N * K, 0.0f, c_cpu, N, M * N, NB);
    nb_add(cpu, c_cpu, e, 2.0f, NB * M * N);
    nb_scale(cpu, c_cpu, 3.0f, NB * M * N);
    float *da = nb_be_alloc(gpu, sizeof a), *db = nb_be_alloc(gpu, sizeof b), *dc = nb_be_alloc(gpu, sizeof c_gpu);
    float *de = nb_be_alloc(gpu, sizeof e);
    assert_non_null(da); assert_non_null(db); assert_non_null(dc); assert_non_null(de);
    nb_be_from_host(gpu, da, a, sizeof a);
    nb_be_from_host(gpu, db, b, sizeof b);
    nb_be_from_host(gpu, de, e, sizeof e);
    nb_matmul(gpu, true, true, M, N, K, 0.5f, da, M, K * M, db, K, N * K, 0.0f, dc, N, M * N, NB);
    nb_add(gpu, dc, de, 2.0f, NB * M * N);
    nb_scale(gpu, dc, 3.0f, NB * M * N);
    nb_be_to_host(gpu, c_gpu, dc, sizeof c_gpu);
    double maxerr = 0;
    for (int i = 0; i < NB * M * N; i++) {
        double e = fabs((double)c_gpu[i] - c_cpu[i]);
        if (e > maxerr) maxerr = e;
        assert_true(e <= 1e-4 + 1e-4 * fabs(c_cpu[i]));
    }
    printf("cuda matmul, add, scale: max abs error %.3g\n", maxerr);
    /* job.precision bf16: both backends round the inputs to bf16 and
     * accumulate in fp32, so they agree to fp32 summation order */
    assert_int_equal(nb_be_set_precision(cpu, NB_PREC_BF16), 0);
    assert_int_equal(nb_be_set_precision(gpu, NB_PREC_BF16), 0);
    nb_matmul(cpu, true, true, M, N, K, 0.5f, a, M, K * M, b, K, N * K, 0.0f, c_cpu, N, M * N, NB);
    nb_matmul(gpu, true, true, M, N, K, 0.5f, da, M, K * M, db, K, N * K, 0.0f, dc, N, M * N, NB);
    nb_be_to_host(gpu, c_gpu, dc, sizeof c_gpu);
    maxerr = 0;
    for (int i = 0; i < NB * M * N; i++) {
        double e = fabs((double)c_gpu[i] - c_cpu[i]);
        if (e > maxerr) maxerr = e;
        assert_true(e <= 1e-4 + 1e-4 * fabs(c_cpu[i]));
    }
    printf("cuda bf16 matmul against the CPU's bf16 matmul: max abs error %.3g\n", maxerr);
    nb_be_dealloc(gpu, de);
    nb_be_dealloc(gpu, da); nb_be_dealloc(gpu, db); nb_be_dealloc(gpu, dc);
    assert_false(nb_be_supports(gpu, NB_OP_ATTENTION_FWD) && !nb_be_supports(gpu, NB_OP_ATTENTION_BWD));
    nb_be_free(gpu);
    nb_be_free(cpu);
}

int main(void)
{
    const struct CMUnitTest tests[] = { cmocka_unit_test(test_cuda_matches_cpu) };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
