/*
 * cpu_codec_topk.c - the CPU backend's top-k selection by magnitude and its
 * inverse scatter (codec primitives, see kernels/codec/codec_ops.h).
 *
 * Selection is a radix select on the bit pattern of |x| (for non-negative
 * floats the bits order like the values; NaN patterns sort above inf), in
 * three passes of 11, 11 and 10 bits with small histograms on the stack, then
 * one pass that emits indices in ascending order: O(n), no allocation, no
 * data-dependent recursion, and ties resolved towards the lower index.
 */
#include <string.h>
#include "kernels/cpu/cpu_codec.h"

static inline uint32_t mag_key(const float *x, size_t i)
{
    uint32_t u;
    memcpy(&u, x + i, 4);
    return u & 0x7fffffffU;
}

void nb_cpu_codec_topk(nb_backend_t *be, uint32_t *idx, float *vals, const float *x,
                       size_t n, size_t k)
{
    (void)be;
    NB_CHECK(k >= 1 && k <= n && n <= UINT32_MAX);
    /* Find the key T of the k-th largest magnitude, digit by digit from the
     * top: prefix holds the digits fixed so far, need how many elements with
     * that prefix are still to be taken from the top. */
    static const int shifts[3] = { 21, 10, 0 };
    static const int widths[3] = { 11, 11, 10 };
    uint32_t prefix = 0, prefix_mask = 0;
    size_t need = k;
    for (int p = 0; p < 3; p++) {
        uint32_t hist[2048];
        uint32_t nb = 1U << widths[p];
        memset(hist, 0, nb * sizeof hist[0]);
        for (size_t i = 0; i < n; i++) {
            uint32_t key = mag_key(x, i);
            if ((key & prefix_mask) == prefix)
                hist[(key >> shifts[p]) & (nb - 1)]++;
        }
        uint32_t d = nb;
        while (d > 0) {
            d--;
            if (hist[d] >= need)
                break;
            need -= hist[d];
        }
        prefix |= d << shifts[p];
        prefix_mask |= (nb - 1) << shifts[p];
    }
    /* Keys above T are all taken; `need` elements equal to T, lowest first. */
    size_t out = 0;
    for (size_t i = 0; i < n && out < k; i++) {
        uint32_t key = mag_key(x, i);
        if (key > prefix || (key == prefix && need > 0)) {
            if (key == prefix)
                need--;
            idx[out] = (uint32_t)i;
            memcpy(vals + out, x + i, 4);
            out++;
        }
    }
    NB_CHECK(out == k);
}

void nb_cpu_codec_scatter(nb_backend_t *be, float *y, const uint32_t *idx, const float *vals,
                          size_t n, size_t k)
{
    (void)be;
    memset(y, 0, n * sizeof(float));
    for (size_t i = 0; i < k; i++) {
        NB_CHECK(idx[i] < n);
        memcpy(y + idx[i], vals + i, 4);
    }
}
