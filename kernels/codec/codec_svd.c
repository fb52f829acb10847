/*
 * codec_svd.c - the low-rank structure codec: a randomized truncated SVD of
 * the rows x cols matrix A (Halko, Martinsson, Tropp 2011), sent as two
 * factors L = U sqrt(S) (rows x r) and R = sqrt(S) V^T (r x cols) so that
 * A ~= L R. Splitting sqrt(S) between the factors keeps both in a similar
 * range, which matters when the wrapping value codec is fp16 or int8.
 *
 * Steps: Gaussian sketch Omega (cols x l, l = r + oversample, from the seed),
 * Y = A Omega, then `iters` power iterations with re-orthonormalisation
 * (Z = A^T Q, Y = A Z), Q = orth(Y), B = Q^T A (l x cols), exact SVD of B.
 * The GEMMs run on the backend (nb_matmul); QR and the small SVD run in
 * LAPACKE on the host (a copy for device backends, none on the CPU).
 *
 * Payload: [L scales][R scales][L codes][R codes].
 */
#include <lapacke.h>
#include <math.h>
#include <string.h>
#include "kernels/codec/codec_internal.h"
#include "kernels/rng.h"

uint32_t nb__codec_svd_rank(const nb_codec_spec_t *s, uint32_t rows, uint32_t cols)
{
    uint32_t mn = rows < cols ? rows : cols;
    double r = s->svd_rank ? (double)s->svd_rank
                           : floor(s->svd_p * (double)rows * (double)cols / ((double)rows + (double)cols));
    if (r < 1.0)
        r = 1.0;
    if (r > (double)mn)
        r = (double)mn;
    return (uint32_t)r;
}

/* Orthonormalises the columns of the row-major rows x cols matrix at dev
 * (rows >= cols) in place. host: rows * cols floats of host scratch, used
 * when the backend is not the CPU. */
static int orth(nb_backend_t *be, float *dev, int rows, int cols, float *host, float *tau)
{
    bool cpu = be->iface->kind == NB_DEV_CPU;
    float *a = cpu ? dev : host;
    size_t bytes = (size_t)rows * cols * sizeof(float);
    if (!cpu)
        nb_be_to_host(be, a, dev, bytes);
    else
        nb_be_sync(be);
    if (LAPACKE_sgeqrf(LAPACK_ROW_MAJOR, rows, cols, a, cols, tau) != 0 ||
        LAPACKE_sorgqr(LAPACK_ROW_MAJOR, rows, cols, cols, a, cols, tau) != 0)
        return NB_EINVAL;
    if (!cpu)
        nb_be_from_host(be, dev, a, bytes);
    return 0;
}

int nb__codec_svd_encode(nb_backend_t *be, const nb_codec_spec_t *s, const float *x_dev,
                         uint32_t rows, uint32_t cols, uint64_t seed, nb_codec_msg_t *m,
                         nb_codec_info_t *info, char *err, size_t errlen)
{
    const int M = (int)rows, N = (int)cols;
    const int mn = M < N ? M : N;
    if (rows > INT32_MAX || cols > INT32_MAX)
        return nb__codec_err(err, errlen, NB_ERANGE, "svd: matrix %ux%u too large", rows, cols);
    if (!nb_be_supports(be, NB_OP_SUMSQ) || !nb_be_supports(be, NB_OP_MATMUL))
        return nb__codec_err(err, errlen, NB_EINVAL, "svd: backend %s lacks sumsq or matmul", be->iface->name);
    int r = (int)nb__codec_svd_rank(s, rows, cols);
    int l = r + (int)s->svd_oversample;
    if (l > mn)
        l = mn;
    double total;
    nb_sumsq(be, &total, x_dev, (size_t)M * N);
    if (!isfinite(total))
        return nb__codec_err(err, errlen, NB_EINVAL, "svd: input has non-finite values");

    /* every buffer is at most max(M, N) * max(M, N) floats: M, N < 2^31
     * and size_t is 64-bit, so these products cannot overflow */
    size_t big = (size_t)(M > N ? M : N) * (size_t)l;
    float *om = nb_be_alloc(be, (size_t)N * l * 4), *y = nb_be_alloc(be, (size_t)M * l * 4);
    float *z = nb_be_alloc(be, (size_t)N * l * 4), *bm = nb_be_alloc(be, (size_t)l * N * 4);
    float *ub = nb_be_alloc(be, (size_t)l * l * 4);
    float *hscratch = malloc(big * 4), *tau = malloc((size_t)l * 4), *sv = malloc((size_t)l * 4);
    float *hub = malloc((size_t)l * l * 4), *hvt = malloc((size_t)l * N * 4), *hb = malloc((size_t)l * N * 4);
    float *lf = NULL, *rf = NULL;
    int rc = 0;
    if (!om || !y || !z || !bm || !ub || !hscratch || !tau || !sv || !hub || !hvt || !hb) {
        rc = nb__codec_err(err, errlen, NB_ENOMEM, "svd: out of memory for a %dx%d sketch", M, l);
        goto out;
    }

    /* Omega: generated on the host from the seed, so every backend sketches
     * with the same matrix */
    nb_rng_t g;
    nb_rng_init(&g, seed, 0x737664 /* "svd" */, ((uint64_t)rows << 32) | cols);
    {
        float *hom = hscratch; /* N * l <= big */
        for (size_t i = 0; i < (size_t)N * l; i++)
            hom[i] = (float)nb_rng_normal(&g);
        nb_be_from_host(be, om, hom, (size_t)N * l * 4);
        nb_be_sync(be);
    }
    nb_matmul(be, false, false, M, l, N, 1.0f, x_dev, N, 0, om, l, 0, 0.0f, y, l, 0, 1);
    if ((rc = orth(be, y, M, l, hscratch, tau)))
        goto lapack_fail;
    for (uint32_t it = 0; it < s->svd_iters; it++) {
        nb_matmul(be, true, false, N, l, M, 1.0f, x_dev, N, 0, y, l, 0, 0.0f, z, l, 0, 1);
        if ((rc = orth(be, z, N, l, hscratch, tau)))
            goto lapack_fail;
        nb_matmul(be, false, false, M, l, N, 1.0f, x_dev, N, 0, z, l, 0, 0.0f, y, l, 0, 1);
        if ((rc = orth(be, y, M, l, hscratch, tau)))
            goto lapack_fail;
    }
    /* B = Q^T A (l x N), exact SVD on the host */
    nb_matmul(be, true, false, l, N, M, 1.0f, y, l, 0, x_dev, N, 0, 0.0f, bm, N, 0, 1);
    nb_be_to_host(be, hb, bm, (size_t)l * N * 4);
    if (LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', l, N, hb, N, sv, hub, l, hvt, N) != 0) {
        rc = NB_EINVAL;
        goto lapack_fail;
    }
    if (s->svd_energy > 0.0 && total > 0.0) {
        double acc = 0.0;
        int re = 0;
        while (re < r && acc < s->svd_energy * total) {
            acc += (double)sv[re] * sv[re];
            re++;
        }
        r = re < 1 ? 1 : re;
    }
    /* host: ub' = Ub[:, :r] diag(sqrt s) (l x r), vt' = diag(sqrt s) Vt[:r, :] */
    for (int i = 0; i < l; i++)
        for (int j = 0; j < r; j++)
            hub[(size_t)i * r + j] = hub[(size_t)i * l + j] * sqrtf(sv[j]);
    for (int j = 0; j < r; j++)
        for (int c = 0; c < N; c++)
            hvt[(size_t)j * N + c] *= sqrtf(sv[j]);
    lf = nb_be_alloc(be, (size_t)M * r * 4);
    rf = nb_be_alloc(be, (size_t)r * N * 4);
    if (!lf || !rf) {
        rc = nb__codec_err(err, errlen, NB_ENOMEM, "svd: out of device memory for factors");
        goto out;
    }
    nb_be_from_host(be, ub, hub, (size_t)l * r * 4);
    nb_be_from_host(be, rf, hvt, (size_t)r * N * 4);
    nb_matmul(be, false, false, M, r, l, 1.0f, y, l, 0, ub, r, 0, 0.0f, lf, r, 0, 1);
    nb_be_sync(be);

    size_t lsb, lcb, rsb, rcb, total_bytes;
    if ((rc = nb__codec_val_bytes(s, (size_t)M * r, (size_t)r, &lsb, &lcb)) ||
        (rc = nb__codec_val_bytes(s, (size_t)r * N, (size_t)N, &rsb, &rcb))) {
        rc = nb__codec_err(err, errlen, rc, "svd: payload too large");
        goto out;
    }
    total_bytes = lsb + rsb + lcb + rcb; /* each < 2^40 here */
    if ((rc = nb__codec_msg_reserve(m, total_bytes))) {
        rc = nb__codec_err(err, errlen, rc, "svd: out of memory for a %zu-byte payload", total_bytes);
        goto out;
    }
    uint8_t *p = m->payload;
    if ((rc = nb__codec_val_encode(be, s, lf, (size_t)M * r, (size_t)r, p, p + lsb + rsb, seed, err, errlen)) ||
        (rc = nb__codec_val_encode(be, s, rf, (size_t)r * N, (size_t)N, p + lsb, p + lsb + rsb + lcb,
                                   seed ^ 0x9E3779B97F4A7C15ULL, err, errlen)))
        goto out;
    m->payload_len = total_bytes;
    info->k_or_rank = (uint32_t)r;
    goto out;
lapack_fail:
    rc = nb__codec_err(err, errlen, NB_EINVAL, "svd: LAPACK factorisation failed on a %dx%d matrix", M, N);
out:
    if (om) nb_be_dealloc(be, om);
    if (y) nb_be_dealloc(be, y);
    if (z) nb_be_dealloc(be, z);
    if (bm) nb_be_dealloc(be, bm);
    if (ub) nb_be_dealloc(be, ub);
    if (lf) nb_be_dealloc(be, lf);
    if (rf) nb_be_dealloc(be, rf);
    free(hscratch);
    free(tau);
    free(sv);
    free(hub);
    free(hvt);
    free(hb);
    return rc;
}

int nb__codec_svd_decode(nb_backend_t *be, const nb_codec_spec_t *s, const nb_codec_info_t *info,
                         const uint8_t *payload, float *y_dev, char *err, size_t errlen)
{
    size_t M = info->rows, N = info->cols, r = info->k_or_rank;
    size_t lsb, lcb, rsb, rcb;
    int rc;
    if ((rc = nb__codec_val_bytes(s, M * r, r, &lsb, &lcb)) ||
        (rc = nb__codec_val_bytes(s, r * N, N, &rsb, &rcb)))
        return nb__codec_err(err, errlen, rc, "svd: payload too large");
    float *lf = nb_be_alloc(be, M * r * 4), *rf = nb_be_alloc(be, r * N * 4);
    if (!lf || !rf) {
        rc = nb__codec_err(err, errlen, NB_ENOMEM, "svd: out of device memory for rank-%zu factors", r);
        goto out;
    }
    if ((rc = nb__codec_val_decode(be, s, lf, M * r, r, payload, payload + lsb + rsb, err, errlen)) ||
        (rc = nb__codec_val_decode(be, s, rf, r * N, N, payload + lsb, payload + lsb + rsb + lcb, err, errlen)))
        goto out;
    nb_matmul(be, false, false, (int)M, (int)N, (int)r, 1.0f, lf, (int)r, 0, rf, (int)N, 0,
              0.0f, y_dev, (int)N, 0, 1);
    nb_be_sync(be);
out:
    if (lf) nb_be_dealloc(be, lf);
    if (rf) nb_be_dealloc(be, rf);
    return rc;
}
