/*
 * cpu_backend.c - the CPU backend's table: memory, dense linear algebra
 * through OpenBLAS, and the transformer ops of kernels/cpu/cpu_ops_*.c. This
 * is the reference implementation of nb_backend_i; execution is synchronous
 * (a trivially valid stream order).
 *
 * Compiled once per ISA level like the rest of kernels/cpu/: the table is
 * nb_cpu_iface_<level>, and kernels/cpu_level.c opens the backend with the
 * level chosen at start-up.
 */
#include <string.h>
#include <cblas.h>
#include "kernels/backend.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_codec.h"
#include "kernels/cpu/cpu_vec.h"

static void *cpu_alloc(nb_backend_t *be, size_t bytes)
{
    (void)be;
    void *p = NULL;
    /* 64-byte alignment: one cache line, one AVX-512 vector. */
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded < bytes || posix_memalign(&p, 64, rounded ? rounded : 64))
        return NULL;
    return p;
}

static void cpu_dealloc(nb_backend_t *be, void *p) { (void)be; free(p); }
static void cpu_memset0(nb_backend_t *be, void *d, size_t n) { (void)be; memset(d, 0, n); }
static void cpu_copy(nb_backend_t *be, void *d, const void *s, size_t n) { (void)be; if (n) memmove(d, s, n); }
static void cpu_sync(nb_backend_t *be) { (void)be; }

void nb_cpu_matmul_f32(nb_backend_t *be, bool ta, bool tb, int m, int n, int k, float alpha,
                       const float *a, int lda, int64_t sa, const float *b, int ldb, int64_t sb,
                       float beta, float *c, int ldc, int64_t sc, int batch)
{
    (void)be;
    for (int i = 0; i < batch; i++)
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    m, n, k, alpha, a + i * sa, lda, b + i * sb, ldb, beta, c + i * sc, ldc);
}

/* x rounded to the nearest bf16 (ties to even), as a float; NaN stays NaN. */
static inline float round_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        u |= 0x00400000u; /* quiet NaN, payload kept */
    else
        u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

/* The rows x cols matrices (leading dimension ld, batch stride s) of src,
 * rounded to bf16 into a packed copy in the scratch slot. */
static const float *packed_bf16(nb_backend_t *be, int slot, const float *src, int rows, int cols, int ld,
                                int64_t s, int batch, int64_t *packed_stride)
{
    size_t per = (size_t)rows * (size_t)cols, bytes;
    NB_CHECK(nb_mul_size(per, (size_t)batch * sizeof(float), &bytes) == 0);
    float *dst = nb_cpu_scratch_slot(be, slot, bytes ? bytes : 64);
    for (int i = 0; i < batch; i++)
        for (int r = 0; r < rows; r++) {
            const float *in = src + i * s + (int64_t)r * ld;
            float *out = dst + i * per + (size_t)r * cols;
            for (int c = 0; c < cols; c++)
                out[c] = round_bf16(in[c]);
        }
    *packed_stride = (int64_t)per;
    return dst;
}

static void cpu_matmul(nb_backend_t *be, bool ta, bool tb, int m, int n, int k, float alpha,
                       const float *a, int lda, int64_t sa, const float *b, int ldb, int64_t sb,
                       float beta, float *c, int ldc, int64_t sc, int batch)
{
    if (nb_cpu_precision(be) == NB_PREC_BF16 && m > 0 && n > 0 && k > 0 && batch > 0) {
        /* op(A) is m x k: stored k x m when transposed */
        int ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
        a = packed_bf16(be, NB_CPU_SCRATCH_MM_A, a, ar, ac, lda, sa, batch, &sa);
        b = packed_bf16(be, NB_CPU_SCRATCH_MM_B, b, br, bc, ldb, sb, batch, &sb);
        lda = ac;
        ldb = bc;
    }
    nb_cpu_matmul_f32(be, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc, sc, batch);
}

static void cpu_add(nb_backend_t *be, float *y, const float *x, float alpha, size_t n)
{
    (void)be;
    nb_v16 va = nb_v_set1(alpha);
    size_t i = 0;
    for (; i + NB_VL <= n; i += NB_VL)
        nb_v_store(y + i, nb_v_load(y + i) + va * nb_v_load(x + i));
    for (; i < n; i++)
        y[i] += alpha * x[i];
}

static void cpu_scale(nb_backend_t *be, float *y, float alpha, size_t n)
{
    (void)be;
    nb_v16 va = nb_v_set1(alpha);
    size_t i = 0;
    for (; i + NB_VL <= n; i += NB_VL)
        nb_v_store(y + i, nb_v_load(y + i) * va);
    for (; i < n; i++)
        y[i] *= alpha;
}

static void cpu_free(nb_backend_t *be)
{
    nb_cpu_scratch_free(be);
    free(be);
}

extern const nb_backend_i nb_cpu_iface;
const nb_backend_i nb_cpu_iface = {
    .name = "cpu",
    .kind = NB_DEV_CPU,
    .free = cpu_free,
    .alloc = cpu_alloc,
    .dealloc = cpu_dealloc,
    .memset0 = cpu_memset0,
    .copy_h2d = cpu_copy,
    .copy_d2h = cpu_copy,
    .copy_d2d = cpu_copy,
    .sync = cpu_sync,
    .matmul = cpu_matmul,
    .set_precision = nb_cpu_set_precision,
    .add = cpu_add,
    .scale = cpu_scale,
    NB_CPU_OPS_INIT
    .codec = &nb_cpu_codec_ops,
};
