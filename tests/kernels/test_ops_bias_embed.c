/* test_ops_bias_embed.c - bias add/grad and token+position embedding on the
 * CPU backend: forward against naive loops, backward exact (these ops are
 * linear, so the gradient is a sum that can be written out), accumulation. */
#include "tests/kernels/test_ops_util.h"

static void test_bias(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    enum { R = 7, Cc = 37 };
    tu_rng_t rng = { 11 };
    float *y = tu_alloc(R * Cc), *y0 = tu_alloc(R * Cc), *bias = tu_alloc(Cc);
    tu_fill(&rng, y, R * Cc, 1.0f);
    tu_fill(&rng, bias, Cc, 1.0f);
    memcpy(y0, y, sizeof(float) * R * Cc);
    nb_bias_add(be, y, bias, R, Cc);
    double ref[R * Cc];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < Cc; c++)
            ref[r * Cc + c] = (double)y0[r * Cc + c] + bias[c];
    tu_assert_close("bias_add", y, ref, R * Cc, 1e-6, 1e-6);

    /* bias_grad accumulates: called twice from zero gives twice the sums */
    float *db = tu_alloc(Cc);
    nb_bias_grad(be, db, y0, R, Cc);
    nb_bias_grad(be, db, y0, R, Cc);
    double rdb[Cc];
    for (int c = 0; c < Cc; c++) {
        rdb[c] = 0;
        for (int r = 0; r < R; r++)
            rdb[c] += 2.0 * y0[r * Cc + c];
    }
    tu_assert_close("bias_grad x2", db, rdb, Cc, 1e-5, 1e-5);
    free(y); free(y0); free(bias); free(db);
    nb_be_free(be);
}

static void embed_case(bool with_wpe)
{
    nb_backend_t *be = nb_cpu_backend_new();
    enum { B = 2, T = 5, C = 19, V = 6 };
    tu_rng_t rng = { 5 };
    int32_t tok[B * T] = { 0, 3, 3, 5, 1, 2, 3, 0, 0, 4 }; /* repeats on purpose */
    float *wte = tu_alloc(V * C), *wpe = tu_alloc(T * C), *out = tu_alloc(B * T * C);
    tu_fill(&rng, wte, V * C, 1.0f);
    tu_fill(&rng, wpe, T * C, 1.0f);
    nb_embed_fwd(be, out, tok, wte, with_wpe ? wpe : NULL, B, T, C);
    double ref[B * T * C];
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int c = 0; c < C; c++)
                ref[(b * T + t) * C + c] = (double)wte[tok[b * T + t] * C + c] +
                                           (with_wpe ? wpe[t * C + c] : 0.0);
    tu_assert_close(with_wpe ? "embed_fwd wte+wpe" : "embed_fwd wte only", out, ref, B * T * C, 1e-6, 1e-6);

    float *dout = tu_alloc(B * T * C), *dwte = tu_alloc(V * C), *dwpe = tu_alloc(T * C);
    tu_fill(&rng, dout, B * T * C, 1.0f);
    for (int rep = 0; rep < 2; rep++)
        nb_embed_bwd(be, dwte, with_wpe ? dwpe : NULL, dout, tok, B, T, C);
    double rwte[V * C] = { 0 }, rwpe[T * C] = { 0 };
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int c = 0; c < C; c++) {
                rwte[tok[b * T + t] * C + c] += 2.0 * dout[(b * T + t) * C + c];
                if (with_wpe)
                    rwpe[t * C + c] += 2.0 * dout[(b * T + t) * C + c];
            }
    tu_assert_close("embed_bwd dwte x2", dwte, rwte, V * C, 1e-5, 1e-5);
    tu_assert_close("embed_bwd dwpe x2", dwpe, rwpe, T * C, 1e-5, 1e-5);
    free(wte); free(wpe); free(out); free(dout); free(dwte); free(dwpe);
    nb_be_free(be);
}

static void test_embed_with_positions(void **state) { (void)state; embed_case(true); }
static void test_embed_without_positions(void **state) { (void)state; embed_case(false); }

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bias),
        cmocka_unit_test(test_embed_with_positions),
        cmocka_unit_test(test_embed_without_positions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
