/* test_ops_layernorm.c - LayerNorm on the CPU backend: forward against a
 * double-precision reference (PyTorch semantics: biased variance, eps 1e-5),
 * finite-difference check of dx, dw, db, and accumulation of all three. */
#include "tests/kernels/test_ops_util.h"

enum { N = 6, C = 37 }; /* C not a multiple of the vector width: tails run */

typedef struct {
    nb_backend_t *be;
    float *x, *w, *b, *out, *mean, *rstd, *r;
} ln_t;

static double ln_loss(void *p)
{
    ln_t *s = p;
    nb_layernorm_fwd(s->be, s->out, s->mean, s->rstd, s->x, s->w, s->b, 1e-5f, N, C);
    return tu_dot(s->out, s->r, N * C);
}

/* Forward with the given eps against the double reference. Row 1 has a
 * large offset (variance must not cancel); row 2, when tiny, has a spread of
 * 1e-3, so its variance (~1e-7) is where eps 1e-5 and 1e-12 differ by 5x. */
static void check_forward(float eps, bool tiny)
{
    nb_backend_t *be = nb_cpu_backend_new();
    tu_rng_t rng = { 3 };
    float *x = tu_alloc(N * C), *w = tu_alloc(C), *b = tu_alloc(C), *out = tu_alloc(N * C);
    float mean[N], rstd[N];
    tu_fill(&rng, x, N * C, 2.0f);
    for (int i = 0; i < C; i++)
        x[C + i] += 100.0f; /* a row with a large offset: variance must not cancel */
    if (tiny)
        for (int i = 0; i < C; i++)
            x[2 * C + i] *= 1e-3f;
    tu_fill(&rng, w, C, 1.0f);
    tu_fill(&rng, b, C, 1.0f);
    nb_layernorm_fwd(be, out, mean, rstd, x, w, b, eps, N, C);
    double ref[N * C], rm[N], rr[N];
    for (int i = 0; i < N; i++) {
        double m = 0, v = 0;
        for (int c = 0; c < C; c++) m += x[i * C + c];
        m /= C;
        for (int c = 0; c < C; c++) v += (x[i * C + c] - m) * (x[i * C + c] - m);
        v /= C;
        rm[i] = m;
        rr[i] = 1.0 / sqrt(v + (double)eps);
        for (int c = 0; c < C; c++)
            ref[i * C + c] = (x[i * C + c] - m) * rr[i] * w[c] + b[c];
    }
    tu_assert_close("layernorm_fwd out", out, ref, N * C, 1e-5, 1e-4);
    tu_assert_close("layernorm_fwd mean", mean, rm, N, 1e-5, 1e-6);
    tu_assert_close("layernorm_fwd rstd", rstd, rr, N, 1e-5, 1e-4);
    free(x); free(w); free(b); free(out);
    nb_be_free(be);
}

static void test_layernorm_forward(void **state)
{
    (void)state;
    check_forward(1e-5f, false);
}

/* The eps is the caller's: BERT's 1e-12 on a row whose variance is near
 * eps 1e-5 (an op that kept 1e-5 gives rstd off by ~2x there), and a large
 * eps. */
static void test_layernorm_eps(void **state)
{
    (void)state;
    check_forward(1e-12f, true);
    check_forward(1e-5f, true);
    check_forward(0.5f, false);
}

static void test_layernorm_backward(void **state)
{
    (void)state;
    tu_rng_t rng = { 4 };
    ln_t s = { nb_cpu_backend_new(), tu_alloc(N * C), tu_alloc(C), tu_alloc(C), tu_alloc(N * C),
               tu_alloc(N), tu_alloc(N), tu_alloc(N * C) };
    tu_fill(&rng, s.x, N * C, 2.0f);
    tu_fill(&rng, s.w, C, 1.0f);
    tu_fill(&rng, s.b, C, 1.0f);
    tu_fill(&rng, s.r, N * C, 1.0f);
    float *dx = tu_alloc(N * C), *dw = tu_alloc(C), *db = tu_alloc(C);
    ln_loss(&s);
    nb_layernorm_bwd(s.be, dx, dw, db, s.r, s.x, s.w, s.mean, s.rstd, N, C);
    tu_fd_check("layernorm_bwd dx (fd)", s.x, N * C, dx, ln_loss, &s, 1e-2f, 2e-3, 1e-2);
    tu_fd_check("layernorm_bwd dw (fd)", s.w, C, dw, ln_loss, &s, 1e-2f, 2e-3, 1e-2);
    tu_fd_check("layernorm_bwd db (fd)", s.b, C, db, ln_loss, &s, 1e-2f, 2e-3, 1e-2);

    /* accumulate: a second call adds the same again */
    float *dx2 = tu_alloc(N * C), *dw2 = tu_alloc(C), *db2 = tu_alloc(C);
    memcpy(dx2, dx, sizeof(float) * N * C);
    memcpy(dw2, dw, sizeof(float) * C);
    memcpy(db2, db, sizeof(float) * C);
    ln_loss(&s);
    nb_layernorm_bwd(s.be, dx2, dw2, db2, s.r, s.x, s.w, s.mean, s.rstd, N, C);
    for (int i = 0; i < N * C; i++) dx[i] *= 2;
    for (int i = 0; i < C; i++) { dw[i] *= 2; db[i] *= 2; }
    tu_assert_close_f("layernorm_bwd dx accumulates", dx2, dx, N * C, 1e-6, 1e-6);
    tu_assert_close_f("layernorm_bwd dw accumulates", dw2, dw, C, 1e-6, 1e-6);
    tu_assert_close_f("layernorm_bwd db accumulates", db2, db, C, 1e-6, 1e-6);

    /* frozen parameters: dw, db may be NULL, dx unchanged by that */
    float *dx3 = tu_alloc(N * C);
    nb_layernorm_bwd(s.be, dx3, NULL, NULL, s.r, s.x, s.w, s.mean, s.rstd, N, C);
    for (int i = 0; i < N * C; i++) dx[i] *= 0.5f;
    tu_assert_close_f("layernorm_bwd dx without dw/db", dx3, dx, N * C, 0, 0);
    free(s.x); free(s.w); free(s.b); free(s.out); free(s.mean); free(s.rstd); free(s.r);
    free(dx); free(dw); free(db); free(dx2); free(dw2); free(db2); free(dx3);
    nb_be_free(s.be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layernorm_forward),
        cmocka_unit_test(test_layernorm_eps),
        cmocka_unit_test(test_layernorm_backward),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
