/* crc32c.c - CRC32C, hardware or table; see crc32c.h. */
#include <pthread.h>
#include <string.h>
#include "daemon/net/crc32c.h"

#if defined(__SSE4_2__) && defined(__x86_64__)
#include <nmmintrin.h>

#define POLY 0x82F63B78u

/* a * b modulo the CRC polynomial, reflected bit order (as in zlib's
 * crc32_combine): used to move a CRC register across n bytes. */
static uint32_t multmodp(uint32_t a, uint32_t b)
{
    uint32_t m = 1u << 31, p = 0;
    for (;;) {
        if (a & m) {
            p ^= b;
            if ((a & (m - 1)) == 0)
                break;
        }
        m >>= 1;
        b = b & 1 ? (b >> 1) ^ POLY : b >> 1;
    }
    return p;
}

static uint32_t x2n_table[32];
static pthread_once_t x2n_once = PTHREAD_ONCE_INIT;

static void x2n_init(void)
{
    uint32_t p = 1u << 30; /* x^1 */
    x2n_table[0] = p;
    for (int n = 1; n < 32; n++)
        x2n_table[n] = p = multmodp(p, p);
}

/* x^(8 * n) modulo the polynomial. */
static uint32_t x8nmodp(size_t n)
{
    uint32_t p = 1u << 31; /* x^0 */
    unsigned k = 3;
    while (n) {
        if (n & 1)
            p = multmodp(x2n_table[k & 31], p);
        n >>= 1;
        k++;
    }
    return p;
}

static uint64_t crc_run(uint64_t c, const unsigned char *p, size_t len)
{
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        len -= 8;
    }
    while (len--)
        c = _mm_crc32_u8((uint32_t)c, *p++);
    return c;
}

uint32_t nb_crc32c(uint32_t crc, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    uint64_t c = ~crc;
    /* Large buffers: three independent streams hide the instruction's
     * 3-cycle latency; the registers are linear, so the streams are joined
     * by shifting the earlier ones across the later blocks' lengths. */
    if (len >= 3 * 8192) {
        pthread_once(&x2n_once, x2n_init);
        size_t blk = (len / 3) & ~(size_t)7;
        const unsigned char *p1 = p + blk, *p2 = p + 2 * blk;
        uint64_t c1 = 0, c2 = 0;
        for (size_t i = 0; i < blk; i += 8) {
            uint64_t v0, v1, v2;
            memcpy(&v0, p + i, 8);
            memcpy(&v1, p1 + i, 8);
            memcpy(&v2, p2 + i, 8);
            c = _mm_crc32_u64(c, v0);
            c1 = _mm_crc32_u64(c1, v1);
            c2 = _mm_crc32_u64(c2, v2);
        }
        uint32_t k = x8nmodp(blk);
        c = multmodp(k, (uint32_t)c) ^ (uint32_t)c1;
        c = multmodp(k, (uint32_t)c) ^ (uint32_t)c2;
        p += 3 * blk;
        len -= 3 * blk;
    }
    c = crc_run(c, p, len);
    return ~(uint32_t)c;
}

#else

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[i] = c;
    }
}

uint32_t nb_crc32c(uint32_t crc, const void *buf, size_t len)
{
    pthread_once(&crc_once, crc_init);
    const unsigned char *p = buf;
    uint32_t c = ~crc;
    while (len--)
        c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
    return ~c;
}

#endif
