/* test_cuda_ops_xent.c - the CUDA backend's fused softmax cross-entropy
 * against the CPU backend (the specification), on random logits of odd
 * sizes (a vocabulary shorter than a warp, one not a multiple of the block,
 * GPT-2's padded 50304) with some ignored targets (< 0) and a masked (-inf)
 * logit.
 * Checked: losses and dlogits; dlogits overwritten (pre-filled with garbage);
 * ignored rows give loss 0 and a zero gradient row; a NULL dlogits (losses
 * only, the same losses); dlogits == logits (in place, the same bits as a
 * separate buffer); N == 0; bit equality of two runs.
 * Tolerances (normalised max error, max |gpu - cpu| / max |cpu|): losses
 * 1e-5, dlogits 1e-5 (another summation order and expf); and each dlogit
 * within 1e-4 relative (plus 1e-6 * dloss_scale absolute), so that the
 * small probabilities of a large vocabulary are checked too.
 * Without a CUDA device or module the test is reported as skipped. */
#include "tests/kernels/test_ops_util.h"
#include "tests/kernels/test_cuda_util.h"

static void check_xent(nb_backend_t *gpu, nb_backend_t *cpu, int N, int V, uint64_t seed)
{
    printf("# xent N=%d V=%d\n", N, V);
    tu_rng_t r = { seed };
    size_t nv = (size_t)N * V;
    float *x = tu_alloc(nv), *garbage = tu_alloc(nv);
    int32_t *tg = calloc((size_t)N, sizeof *tg);
    assert_non_null(tg);
    tu_fill(&r, x, nv, 4.0f);
    tu_fill(&r, garbage, nv, 100.0f);
    int counted = 0;
    for (int i = 0; i < N; i++) {
        tg[i] = (int32_t)((tu_uniform(&r) + 1.0f) * 0.5f * V) % V;
        if (i % 4 == 1)
            tg[i] = -1; /* ignored */
        counted += tg[i] >= 0;
    }
    if (V > 1 && N > 2)
        x[(size_t)2 * V + (tg[2] == 0 ? 1 : 0)] = -INFINITY; /* a masked logit */
    float scale = counted ? 1.0f / (float)counted : 1.0f;

    float *loss = tu_alloc(N), *dl = tu_alloc(nv);
    nb_xent_fwd_bwd(cpu, loss, dl, x, tg, scale, N, V);

    float *gx = cuda_up(gpu, x, nv * 4), *gd = cuda_up(gpu, garbage, nv * 4), *gl = cuda_up(gpu, NULL, N * 4);
    int32_t *gt = cuda_up(gpu, tg, (size_t)N * sizeof *tg);
    nb_xent_fwd_bwd(gpu, gl, gd, gx, gt, scale, N, V);
    float *l1 = cuda_fetch(gpu, gl, N), *d1 = cuda_fetch(gpu, gd, nv);
    cuda_assert_nmax("xent losses", l1, loss, N, 1e-5);
    cuda_assert_nmax("xent dlogits", d1, dl, nv, 1e-5);
    /* each probability, however small, not only the largest entries */
    tu_assert_close_f("xent dlogits elementwise", d1, dl, nv, 1e-6 * scale, 1e-4);
    for (int i = 0; i < N; i++) {
        if (tg[i] >= 0)
            continue;
        assert_true(l1[i] == 0.0f);
        for (int j = 0; j < V; j++)
            assert_true(d1[(size_t)i * V + j] == 0.0f);
    }
    /* twice, from garbage again: bit-identical */
    nb_be_from_host(gpu, gd, garbage, nv * 4);
    nb_be_memset0(gpu, gl, N * 4);
    nb_xent_fwd_bwd(gpu, gl, gd, gx, gt, scale, N, V);
    float *l2 = cuda_fetch(gpu, gl, N), *d2 = cuda_fetch(gpu, gd, nv);
    cuda_assert_same("xent losses, second run", l1, l2, N);
    cuda_assert_same("xent dlogits, second run", d1, d2, nv);
    /* losses only */
    nb_be_memset0(gpu, gl, N * 4);
    nb_xent_fwd_bwd(gpu, gl, NULL, gx, gt, scale, N, V);
    free(l2);
    l2 = cuda_fetch(gpu, gl, N);
    cuda_assert_same("xent losses, dlogits NULL", l1, l2, N);
    /* in place: the gradient replaces the logits */
    nb_be_memset0(gpu, gl, N * 4);
    nb_xent_fwd_bwd(gpu, gl, gx, gx, gt, scale, N, V);
    free(l2);
    free(d2);
    l2 = cuda_fetch(gpu, gl, N);
    d2 = cuda_fetch(gpu, gx, nv);
    cuda_assert_same("xent losses, in place", l1, l2, N);
    cuda_assert_same("xent dlogits, in place", d1, d2, nv);

    nb_be_dealloc(gpu, gx);
    nb_be_dealloc(gpu, gd);
    nb_be_dealloc(gpu, gl);
    nb_be_dealloc(gpu, gt);
    float *hp[] = { x, garbage, loss, dl, l1, d1, l2, d2 };
    for (size_t i = 0; i < sizeof hp / sizeof *hp; i++)
        free(hp[i]);
    free(tg);
}

static void test_xent(void **state)
{
    (void)state;
    nb_backend_t *gpu = cuda_open();
    if (!gpu)
        skip();
    nb_backend_t *cpu = nb_cpu_backend_new();
    check_xent(gpu, cpu, 37, 101, 1);   /* B*T = 37, V = 101 */
    check_xent(gpu, cpu, 5, 5003, 2);   /* several warps, a partial last stride */
    check_xent(gpu, cpu, 3, 50304, 3);  /* GPT-2's padded vocabulary: 1024 threads */
    check_xent(gpu, cpu, 4, 1, 4);      /* a single class: loss 0, gradient 0 */
    nb_be_free(gpu);
    nb_be_free(cpu);
}

/* N == 0 touches nothing */
static void test_xent_empty(void **state)
{
    (void)state;
    nb_backend_t *gpu = cuda_open();
    if (!gpu)
        skip();
    float h[4] = { 1, 2, 3, 4 }, back[4];
    float *g = cuda_up(gpu, h, sizeof h);
    nb_xent_fwd_bwd(gpu, g, g, g, (const int32_t *)g, 1.0f, 0, 4);
    nb_be_to_host(gpu, back, g, sizeof back);
    assert_memory_equal(h, back, sizeof h);
    nb_be_dealloc(gpu, g);
    nb_be_free(gpu);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_xent),
        cmocka_unit_test(test_xent_empty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
