/* test_ops_xent.c - softmax cross-entropy on the CPU backend: losses and
 * gradient against a double-precision reference, ignored targets, numerical
 * stability with huge logits, finite differences, overwrite semantics of
 * dlogits, and a NULL dlogits (loss only). */
#include "tests/kernels/test_ops_util.h"

enum { N = 5, V = 41 }; /* V not a multiple of the vector width */

static void xent_ref(double *loss, double *grad, const float *x, const int32_t *tg, double scale)
{
    for (int i = 0; i < N; i++) {
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < V; j++) mx = fmax(mx, x[i * V + j]);
        for (int j = 0; j < V; j++) sum += exp(x[i * V + j] - mx);
        if (tg[i] < 0) {
            loss[i] = 0;
            for (int j = 0; j < V; j++) grad[i * V + j] = 0;
            continue;
        }
        loss[i] = mx + log(sum) - x[i * V + tg[i]];
        for (int j = 0; j < V; j++)
            grad[i * V + j] = scale * (exp(x[i * V + j] - mx) / sum - (j == tg[i]));
    }
}

typedef struct { nb_backend_t *be; float *x, *loss; const int32_t *tg; float scale; } xe_t;

static double xent_loss(void *p)
{
    xe_t *s = p;
    nb_xent_fwd_bwd(s->be, s->loss, NULL, s->x, s->tg, 1.0f, N, V);
    double l = 0;
    for (int i = 0; i < N; i++) l += s->loss[i];
    return s->scale * l;
}

static void test_xent(void **state)
{
    (void)state;
    nb_backend_t *be = nb_cpu_backend_new();
    tu_rng_t rng = { 31 };
    float *x = tu_alloc(N * V), *d = tu_alloc(N * V), loss[N];
    const int32_t tg[N] = { 3, -1, 40, 0, -100 };
    tu_fill(&rng, x, N * V, 3.0f);
    for (int j = 0; j < V; j++)
        x[3 * V + j] += 1000.0f; /* a row that overflows a naive exp */
    x[3 * V + 7] = 1020.0f;
    for (int i = 0; i < N * V; i++)
        d[i] = 123.0f; /* dlogits is overwritten, ignored rows included */
    float scale = 1.0f / 3.0f; /* 1 / counted rows */
    nb_xent_fwd_bwd(be, loss, d, x, tg, scale, N, V);
    double rl[N], rg[N * V];
    xent_ref(rl, rg, x, tg, scale);
    tu_assert_close("xent losses", loss, rl, N, 1e-5, 1e-5);
    tu_assert_close("xent dlogits", d, rg, N * V, 1e-6, 1e-4);
    assert_true(loss[1] == 0.0f && loss[4] == 0.0f);
    for (int j = 0; j < V; j++)
        assert_true(d[V + j] == 0.0f && d[4 * V + j] == 0.0f);

    /* overwrite, not accumulate: a second call gives the same */
    float *d2 = tu_alloc(N * V);
    memcpy(d2, d, sizeof(float) * N * V);
    nb_xent_fwd_bwd(be, loss, d2, x, tg, scale, N, V);
    tu_assert_close_f("xent dlogits overwritten", d2, d, N * V, 0, 0);

    /* in place: dlogits == logits gives the same losses and gradient */
    float *xi = tu_alloc(N * V), li[N];
    memcpy(xi, x, sizeof(float) * N * V);
    nb_xent_fwd_bwd(be, li, xi, xi, tg, scale, N, V);
    tu_assert_close_f("xent in place losses", li, loss, N, 0, 0);
    tu_assert_close_f("xent in place dlogits", xi, d, N * V, 0, 0);
    free(xi);

    /* a NaN logit makes that row's loss NaN: divergence stays visible */
    float keep = x[2 * V + 5];
    x[2 * V + 5] = NAN;
    nb_xent_fwd_bwd(be, loss, d, x, tg, scale, N, V);
    assert_true(isnan(loss[2]));
    assert_false(isnan(loss[0]));
    x[2 * V + 5] = keep;

    /* finite differences on moderate logits */
    for (int j = 0; j < V; j++) x[3 * V + j] -= 1000.0f;
    nb_xent_fwd_bwd(be, loss, d, x, tg, scale, N, V);
    xe_t s = { be, x, loss, tg, scale };
    tu_fd_check("xent dlogits (fd)", x, N * V, d, xent_loss, &s, 1e-2f, 1e-4, 1e-2);
    free(x); free(d); free(d2);
    nb_be_free(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_xent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
