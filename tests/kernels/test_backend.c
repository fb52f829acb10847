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
        cmocka_unit_test(test_cpu_supports_all_ops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
