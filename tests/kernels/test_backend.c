/* test_backend.c - the backend interface: tensors, memory, matmul on the CPU
 * backend against a naive triple loop. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include "kernels/backend.h"

static void test_tensor_alloc(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    assert_non_null(be);
    int64_t shape[2] = { 3, 5 };
    nb_tensor_t *t = nb_tensor_zeros(be, NB_F32, 2, shape);
    assert_non_null(t);
    assert_int_equal(nb_tensor_numel(t), 15);
    assert_int_equal(nb_tensor_nbytes(t), 60);
    float host[15];
    nb_be_to_host(be, host, t->data, sizeof host);
    for (int i = 0; i < 15; i++)
        assert_true(host[i] == 0.0f);
    nb_tensor_free(t);
    int64_t huge[2] = { INT64_MAX / 2, 4 };
    assert_null(nb_tensor_new(be, NB_F32, 2, huge));
    int64_t neg[1] = { -1 };
    assert_null(nb_tensor_new(be, NB_F32, 1, neg));
    nb_be_free(be);
}

static void test_matmul_batched(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    enum { M = 3, N = 4, K = 5, NB = 2 };
    float a[NB][K][M], b[NB][K][N], c[NB][M][N];
    for (int z = 0; z < NB; z++)
        for (int i = 0; i < K; i++) {
            for (int j = 0; j < M; j++) a[z][i][j] = (float)(z + 1) * 0.1f * (float)(i - j);
            for (int j = 0; j < N; j++) b[z][i][j] = 0.05f * (float)(i * j + z);
        }
    /* C = A^T B with A stored K x M */
    nb_matmul(be, true, false, M, N, K, 1.0f, &a[0][0][0], M, K * M, &b[0][0][0], N, K * N,
              0.0f, &c[0][0][0], N, M * N, NB);
    for (int z = 0; z < NB; z++)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                double ref = 0;
                for (int k = 0; k < K; k++)
                    ref += (double)a[z][k][i] * b[z][k][j];
                assert_true(fabs(ref - c[z][i][j]) < 1e-5);
            }
    assert_true(nb_be_supports(be, NB_OP_MATMUL));
    nb_be_free(be);
}

/* The CPU backend is the reference: it implements every op, and the op
 * names used in reports are stable. */
/* x to bf16's 8 significant bits, nearest with ties to even, by frexp and
 * rint (the default rounding mode): independent of the backend's bit trick. */
static float bf16_ref(float x)
{
    if (x == 0.0f || !isfinite(x))
        return x;
    int e;
    double m = frexp((double)x, &e); /* x = m 2^e, 0.5 <= |m| < 1 */
    return (float)ldexp(rint(m * 256.0) / 256.0, e);
}

/* job.precision bf16 on the CPU: a matmul equals the fp32 product of its
 * inputs rounded to bf16, transposes, strides and batches included; fp32
 * mode is untouched; set_precision refuses an unknown value. */
static void test_matmul_bf16(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    enum { M = 7, N = 5, K = 9, NB = 2, LDA = 11, LDB = 10 };
    float a[NB * K * LDA], b[NB * N * LDB], ar[NB * K * LDA], br[NB * N * LDB];
    float c16[NB * M * N], c32[NB * M * N], cref[NB * M * N];
    for (int i = 0; i < NB * K * LDA; i++) {
        a[i] = sinf(0.7f * (float)i) * 3.1f + 1e-3f * (float)i;
        ar[i] = bf16_ref(a[i]);
    }
    for (int i = 0; i < NB * N * LDB; i++) {
        b[i] = cosf(0.3f * (float)i) * 0.77f;
        br[i] = bf16_ref(b[i]);
    }
    /* A^T: A stored K x M (lda LDA), B^T: B stored N x K (ldb LDB) */
    assert_int_equal(nb_be_set_precision(be, NB_PREC_BF16), 0);
    nb_matmul(be, true, true, M, N, K, 1.5f, a, LDA, K * LDA, b, LDB, N * LDB, 0.0f, c16, N, M * N, NB);
    assert_int_equal(nb_be_set_precision(be, NB_PREC_FP32), 0);
    nb_matmul(be, true, true, M, N, K, 1.5f, ar, LDA, K * LDA, br, LDB, N * LDB, 0.0f, cref, N, M * N, NB);
    nb_matmul(be, true, true, M, N, K, 1.5f, a, LDA, K * LDA, b, LDB, N * LDB, 0.0f, c32, N, M * N, NB);
    double diff = 0;
    for (int i = 0; i < NB * M * N; i++) {
        assert_true(c16[i] == cref[i]);
        diff = fmax(diff, fabs((double)c16[i] - c32[i]));
    }
    assert_true(diff > 0.0 && diff < 0.1); /* bf16 inputs differ from fp32, a little */
    assert_int_equal(nb_be_set_precision(be, (nb_precision_t)7), NB_EINVAL);
    nb_be_free(be);
}

static void test_cpu_supports_all_ops(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    for (int op = 0; op < NB_OP_COUNT; op++) {
        if (!nb_be_supports(be, (nb_op_t)op))
            fail_msg("cpu backend lacks %s", nb_op_name((nb_op_t)op));
        assert_string_not_equal(nb_op_name((nb_op_t)op), "?");
    }
    assert_false(nb_be_supports(be, NB_OP_COUNT));
    assert_string_equal(nb_op_name(NB_OP_ATTENTION_BWD), "attention_bwd");
    nb_be_free(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tensor_alloc),
        cmocka_unit_test(test_matmul_batched),
        cmocka_unit_test(test_matmul_bf16),
        cmocka_unit_test(test_cpu_supports_all_ops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
