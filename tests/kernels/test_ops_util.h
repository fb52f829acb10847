/*
 * test_ops_util.h - helpers shared by the op tests: a seeded generator,
 * closeness checks that print the largest error, and a central
 * finite-difference gradient check. Header only; included by test_ops_*.c.
 */
#ifndef NB_TEST_OPS_UTIL_H
#define NB_TEST_OPS_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/backend.h"

typedef struct { uint64_t s; } tu_rng_t;

static inline float tu_uniform(tu_rng_t *r) /* in [-1, 1) */
{
    r->s ^= r->s << 13;
    r->s ^= r->s >> 7;
    r->s ^= r->s << 17;
    return (float)((double)(r->s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static inline void tu_fill(tu_rng_t *r, float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = scale * tu_uniform(r);
}

static inline float *tu_alloc(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof *p);
    assert_non_null(p);
    return p;
}

/* Asserts |got - ref| <= atol + rtol*|ref| elementwise; prints the largest
 * absolute error either way so a failing run shows how far off it was. */
static inline void tu_assert_close(const char *what, const float *got, const double *ref,
                                   size_t n, double atol, double rtol)
{
    double worst = 0;
    size_t bad = n;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - ref[i]);
        if (!(e <= worst))
            worst = isnan(e) ? INFINITY : e;
        if (!(e <= atol + rtol * fabs(ref[i])) && bad == n)
            bad = i;
    }
    printf("# %-34s n=%-6zu max abs err %.3g\n", what, n, worst);
    if (bad != n)
        fail_msg("%s: element %zu is %.8g, expected %.8g (atol %g rtol %g)", what, bad,
                 (double)got[bad], ref[bad], atol, rtol);
}

static inline void tu_assert_close_f(const char *what, const float *got, const float *ref,
                                     size_t n, double atol, double rtol)
{
    double *r = malloc((n ? n : 1) * sizeof *r);
    assert_non_null(r);
    for (size_t i = 0; i < n; i++)
        r[i] = ref[i];
    tu_assert_close(what, got, r, n, atol, rtol);
    free(r);
}

/* sum_i out[i] * w[i] in double: the scalar whose gradient w.r.t. out is w. */
static inline double tu_dot(const float *out, const float *w, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)out[i] * w[i];
    return s;
}

/* Central differences of loss() w.r.t. each x[i] (x is perturbed in place
 * and restored), compared with analytic[i]. */
typedef double (*tu_loss_fn)(void *ctx);
static inline void tu_fd_check(const char *what, float *x, size_t n, const float *analytic,
                               tu_loss_fn loss, void *ctx, float h, double atol, double rtol)
{
    double *num = malloc((n ? n : 1) * sizeof *num);
    assert_non_null(num);
    for (size_t i = 0; i < n; i++) {
        float x0 = x[i];
        x[i] = x0 + h;
        double lp = loss(ctx);
        x[i] = x0 - h;
        double lm = loss(ctx);
        x[i] = x0;
        /* the step actually taken, after float rounding of x0 +- h */
        double step = (double)(x0 + h) - (double)(x0 - h);
        num[i] = (lp - lm) / step;
    }
    tu_assert_close(what, analytic, num, n, atol, rtol);
    free(num);
}

#endif
