/* test_cuda_util.h - what the CUDA op tests share: opening the CUDA backend
 * (a test without one is reported skipped, with the reason printed), a
 * cmocka fixture holding the CUDA and the CPU backend, copies between
 * host and device, and the comparisons against the CPU backend. Include
 * after test_ops_util.h (cmocka, tu_alloc). */
#ifndef NB_TEST_CUDA_UTIL_H
#define NB_TEST_CUDA_UTIL_H

#include <math.h>
#include <stdio.h>
#include <string.h>
#include "kernels/backend.h"

/* The CUDA backend of device 0, or NULL with the reason printed. */
static inline nb_backend_t *cuda_open(void)
{
    const char *why = NULL;
    nb_backend_t *gpu = nb_cuda_backend_new(0, &why);
    if (!gpu)
        printf("cuda backend unavailable: %s\n", why ? why : "?");
    return gpu;
}

typedef struct {
    nb_backend_t *gpu, *cpu;
} cuda_fixture_t;

/* Group setup: the fixture, or a NULL state when there is no CUDA backend. */
static inline int cuda_setup(void **state)
{
    static cuda_fixture_t f;
    *state = NULL;
    if (!(f.gpu = cuda_open()))
        return 0;
    f.cpu = nb_cpu_backend_new();
    assert_non_null(f.cpu);
    *state = &f;
    return 0;
}

static inline int cuda_teardown(void **state)
{
    cuda_fixture_t *f = *state;
    if (f) {
        nb_be_free(f->gpu);
        nb_be_free(f->cpu);
    }
    return 0;
}

/* The fixture of a test; skips the test without a CUDA backend. */
static inline cuda_fixture_t *cuda_fx(void **state)
{
    if (!*state)
        skip();
    return *state;
}

/* A device buffer of bytes (at least 1), holding host's bytes unless host is NULL. */
static inline void *cuda_up(nb_backend_t *gpu, const void *host, size_t bytes)
{
    void *d = nb_be_alloc(gpu, bytes ? bytes : 1);
    assert_non_null(d);
    if (host && bytes)
        nb_be_from_host(gpu, d, host, bytes);
    return d;
}
/* The same for n floats. */
static inline float *cuda_up_f(nb_backend_t *gpu, const float *host, size_t n)
{
    return cuda_up(gpu, host, n * sizeof(float));
}

/* host <- bytes of dev. */
static inline void cuda_down(nb_backend_t *gpu, void *host, const void *dev, size_t bytes)
{
    if (bytes)
        nb_be_to_host(gpu, host, dev, bytes);
}
static inline void cuda_down_f(nb_backend_t *gpu, float *host, const float *dev, size_t n)
{
    cuda_down(gpu, host, dev, n * sizeof(float));
}

/* A new host copy (tu_alloc) of n floats of dev. */
static inline float *cuda_fetch(nb_backend_t *gpu, const float *dev, size_t n)
{
    float *h = tu_alloc(n);
    cuda_down_f(gpu, h, dev, n);
    return h;
}

/* Fails unless max |got - ref| / max |ref| (ref all zero: the absolute
 * error; a NaN counts as infinite) is at most tol; prints the figure. */
static inline void cuda_assert_nmax(const char *what, const float *got, const float *ref, size_t n, double tol)
{
    double err = 0, mag = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - (double)ref[i]);
        if (!(e <= err))
            err = isnan(e) ? INFINITY : e;
        if (fabs((double)ref[i]) > mag)
            mag = fabs((double)ref[i]);
    }
    double nerr = mag > 0 ? err / mag : err;
    printf("# %-30s n=%-8zu normalised max err %.3g (tol %g)\n", what, n, nerr, tol);
    if (!(nerr <= tol))
        fail_msg("%s: normalised max error %g > %g", what, nerr, tol);
}

/* Fails unless a and b are bit-identical (two runs, or device vs CPU). */
static inline void cuda_assert_same(const char *what, const float *a, const float *b, size_t n)
{
    if (memcmp(a, b, n * sizeof *a) != 0)
        fail_msg("%s: not bit-identical", what);
}

#endif /* NB_TEST_CUDA_UTIL_H */
