/*
 * unicode.c - UTF-8 and Unicode property lookups over the generated tables;
 * see unicode.h.
 */
#include "daemon/data/unicode.h"

int nb_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int len;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2, v = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3, v = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n < (size_t)len)
        return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        v = v << 6 | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    *cp = v;
    return len;
}

int nb_utf8_check(const unsigned char *s, size_t n, size_t *bad_off)
{
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        int k = nb_utf8_decode(s + i, n - i, &cp);
        if (k == 0) {
            *bad_off = i;
            return -1;
        }
        i += (size_t)k;
    }
    return 0;
}

int nb_utf8_encode(uint32_t cp, unsigned char *out)
{
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | cp >> 6);
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | cp >> 12);
        out[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | cp >> 18);
    out[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* The run found last, per thread: text keeps to one script for a while. */
static __thread uint32_t run_lo = 1, run_hi = 0;
static __thread enum nb_ucat run_cat;

enum nb_ucat nb_ucat(uint32_t cp)
{
    if (cp > 0x10FFFF)
        return NB_UCAT_Cn;
    if (cp >= run_lo && cp < run_hi)
        return run_cat;
    /* last run whose start is <= cp */
    uint32_t lo = 0, hi = nb_ucat_runs_n;
    while (hi - lo > 1) {
        uint32_t mid = (lo + hi) / 2;
        if ((nb_ucat_runs[mid] >> 5) <= cp)
            lo = mid;
        else
            hi = mid;
    }
    run_lo = nb_ucat_runs[lo] >> 5;
    run_hi = lo + 1 < nb_ucat_runs_n ? nb_ucat_runs[lo + 1] >> 5 : 0x110000;
    run_cat = (enum nb_ucat)(nb_ucat_runs[lo] & 31);
    return run_cat;
}

int nb_uni_is_space(uint32_t cp)
{
    /* White_Space (PropList.txt): stable since Unicode 6.3. */
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* Index of cp in a sorted table of n rows of `width` u32s keyed by the first,
 * or -1. */
static long find_row(const uint32_t *tab, uint32_t n, int width, uint32_t cp)
{
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        uint32_t k = tab[(size_t)mid * (size_t)width];
        if (k == cp)
            return (long)mid;
        if (k < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

int nb_uni_nfd(uint32_t cp, uint32_t out[4])
{
    enum { S0 = 0xAC00, L0 = 0x1100, V0 = 0x1161, T0 = 0x11A7, VN = 21, TN = 28, SN = 11172 };
    if (cp >= S0 && cp < S0 + SN) {
        uint32_t s = cp - S0;
        out[0] = L0 + s / (VN * TN);
        out[1] = V0 + s % (VN * TN) / TN;
        if (s % TN == 0)
            return 2;
        out[2] = T0 + s % TN;
        return 3;
    }
    if (cp < 0xC0) {
        out[0] = cp;
        return 1;
    }
    long r = find_row(&nb_nfd_index[0][0], nb_nfd_n, 2, cp);
    if (r < 0) {
        out[0] = cp;
        return 1;
    }
    uint32_t off = nb_nfd_index[r][1] >> 3, len = nb_nfd_index[r][1] & 7;
    for (uint32_t i = 0; i < len; i++)
        out[i] = nb_nfd_pool[off + i];
    return (int)len;
}

int nb_uni_lower(uint32_t cp, uint32_t out[3])
{
    if (cp < 0x80) {
        out[0] = cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
        return 1;
    }
    long r = find_row(&nb_lower_index[0][0], nb_lower_n, 4, cp);
    if (r < 0) {
        out[0] = cp;
        return 1;
    }
    int n = 0;
    for (int i = 0; i < 3 && nb_lower_index[r][1 + i]; i++)
        out[n++] = nb_lower_index[r][1 + i];
    return n;
}
