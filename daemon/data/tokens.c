/*
 * tokens.c - token file reader/writer and batch sampler; see tokens.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "kernels/common.h"
#include "kernels/rng.h"
#include "daemon/data/tokens.h"

/* Keeps data streams apart from the init streams keyed by the same seed. */
#define NB_DATA_STREAM 0x6461746173747265ULL

struct nb_tokens {
    void *map;
    size_t map_len;
    const unsigned char *ids;
    uint32_t width, vocab;
    uint64_t count;
};

static uint32_t rd32(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t rd64(const unsigned char *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }
static void wr32(unsigned char *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i)); }
static void wr64(unsigned char *p, uint64_t v) { wr32(p, (uint32_t)v); wr32(p + 4, (uint32_t)(v >> 32)); }

uint32_t nb_tokens_get(const nb_tokens_t *t, uint64_t i)
{
    const unsigned char *p = t->ids + i * t->width;
    return t->width == 2 ? (uint32_t)p[0] | (uint32_t)p[1] << 8 : rd32(p);
}

int nb_tokens_open(const char *path, nb_tokens_t **out, char *err, size_t errlen)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NB_EIO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return NB_EIO;
    }
    size_t len = (size_t)st.st_size;
    if (len < NB_TOKENS_HEADER_BYTES) {
        snprintf(err, errlen, "%s: offset %zu: truncated header (%u bytes needed)", path, len,
                 NB_TOKENS_HEADER_BYTES);
        close(fd);
        return NB_EFORMAT;
    }
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        snprintf(err, errlen, "%s: cannot map: %s", path, strerror(errno));
        return NB_EIO;
    }
    const unsigned char *h = map;
    int rc = NB_EFORMAT;
    nb_tokens_t *t = NULL;
    if (memcmp(h, "NBTK", 4) != 0) {
        snprintf(err, errlen, "%s: offset 0: not a token file (magic is not NBTK)", path);
        goto fail;
    }
    uint32_t version = rd32(h + 4), width = rd32(h + 8), vocab = rd32(h + 12);
    uint64_t count = rd64(h + 16);
    if (version != NB_TOKENS_VERSION) {
        snprintf(err, errlen, "%s: offset 4: version %u, this build reads version %u", path, version,
                 NB_TOKENS_VERSION);
        rc = NB_EVERSION;
        goto fail;
    }
    if (width != 2 && width != 4) {
        snprintf(err, errlen, "%s: offset 8: token width %u, must be 2 or 4", path, width);
        goto fail;
    }
    if (vocab == 0 || (width == 2 && vocab > 65536)) {
        snprintf(err, errlen, "%s: offset 12: vocabulary size %u does not fit width %u", path, vocab, width);
        goto fail;
    }
    if (count > (len - NB_TOKENS_HEADER_BYTES) / width ||
        count * width != len - NB_TOKENS_HEADER_BYTES) {
        snprintf(err, errlen, "%s: offset %zu: header says %llu tokens of %u bytes, the file holds %zu data bytes%s",
                 path, len, (unsigned long long)count, width, len - NB_TOKENS_HEADER_BYTES,
                 count * width > len - NB_TOKENS_HEADER_BYTES ? " (truncated)" : "");
        goto fail;
    }
    t = calloc(1, sizeof *t);
    if (!t) {
        rc = NB_ENOMEM;
        snprintf(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    t->map = map;
    t->map_len = len;
    t->ids = h + NB_TOKENS_HEADER_BYTES;
    t->width = width;
    t->vocab = vocab;
    t->count = count;
    for (uint64_t i = 0; i < count; i++) {
        uint32_t id = nb_tokens_get(t, i);
        if (id >= vocab) {
            snprintf(err, errlen, "%s: offset %llu: token %llu is %u, outside the vocabulary of %u", path,
                     (unsigned long long)(NB_TOKENS_HEADER_BYTES + i * width), (unsigned long long)i, id, vocab);
            rc = NB_ERANGE;
            free(t);
            goto fail;
        }
    }
    *out = t;
    return 0;
fail:
    munmap(map, len);
    return rc;
}

int nb_tokens_slice(const nb_tokens_t *src, uint64_t first, uint64_t n, nb_tokens_t **out)
{
    *out = NULL;
    if (n == 0 || first > src->count || n > src->count - first)
        return NB_EINVAL;
    nb_tokens_t *t = calloc(1, sizeof *t);
    if (!t)
        return NB_ENOMEM;
    *t = *src;
    t->map = NULL; /* borrowed: close does not unmap */
    t->map_len = 0;
    t->ids = src->ids + first * src->width;
    t->count = n;
    *out = t;
    return 0;
}

void nb_tokens_close(nb_tokens_t *t)
{
    if (!t)
        return;
    if (t->map)
        munmap(t->map, t->map_len);
    free(t);
}

uint64_t nb_tokens_count(const nb_tokens_t *t) { return t->count; }
uint32_t nb_tokens_vocab(const nb_tokens_t *t) { return t->vocab; }

int nb_tokens_write(const char *path, const uint32_t *ids, uint64_t n, uint32_t vocab, char *err, size_t errlen)
{
    if (vocab == 0) {
        snprintf(err, errlen, "%s: vocabulary size must be > 0", path);
        return NB_EINVAL;
    }
    for (uint64_t i = 0; i < n; i++)
        if (ids[i] >= vocab) {
            snprintf(err, errlen, "%s: token %llu is %u, outside the vocabulary of %u", path,
                     (unsigned long long)i, ids[i], vocab);
            return NB_EINVAL;
        }
    uint32_t width = vocab <= 65536 ? 2 : 4;
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        snprintf(err, errlen, "%s: path too long", path);
        return NB_EINVAL;
    }
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        return NB_EIO;
    }
    unsigned char h[NB_TOKENS_HEADER_BYTES] = { 'N', 'B', 'T', 'K' };
    wr32(h + 4, NB_TOKENS_VERSION);
    wr32(h + 8, width);
    wr32(h + 12, vocab);
    wr64(h + 16, n);
    bool ok = fwrite(h, 1, sizeof h, f) == sizeof h;
    unsigned char buf[8192];
    size_t fill = 0;
    for (uint64_t i = 0; ok && i < n; i++) {
        if (width == 2) {
            buf[fill] = (unsigned char)ids[i];
            buf[fill + 1] = (unsigned char)(ids[i] >> 8);
        } else {
            wr32(buf + fill, ids[i]);
        }
        fill += width;
        if (fill == sizeof buf) {
            ok = fwrite(buf, 1, fill, f) == fill;
            fill = 0;
        }
    }
    if (ok && fill)
        ok = fwrite(buf, 1, fill, f) == fill;
    if (fclose(f) != 0)
        ok = false;
    if (!ok || rename(tmp, path) != 0) {
        snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
        unlink(tmp);
        return NB_EIO;
    }
    return 0;
}

int nb_tokens_sample(const nb_tokens_t *t, uint64_t seed, uint64_t step, uint32_t micro,
                     int B, int T, int32_t *inputs, int32_t *targets)
{
    if (B <= 0 || T <= 0 || t->count < (uint64_t)T + 1)
        return NB_EINVAL;
    nb_rng_t r;
    nb_rng_init(&r, seed ^ NB_DATA_STREAM, step, micro);
    uint64_t starts = t->count - (uint64_t)T; /* s in [0, count - T - 1] */
    for (int b = 0; b < B; b++) {
        uint64_t s = nb_rng_below(&r, starts);
        for (int i = 0; i < T; i++) {
            inputs[(size_t)b * T + i] = (int32_t)nb_tokens_get(t, s + i);
            targets[(size_t)b * T + i] = (int32_t)nb_tokens_get(t, s + i + 1);
        }
    }
    return 0;
}

int nb_tokens_sample_mlm(const nb_tokens_t *t, uint64_t seed, uint64_t step, uint32_t micro,
                         int B, int T, float mask_prob, int32_t mask_token,
                         int32_t *inputs, int32_t *targets)
{
    if (B <= 0 || T <= 0 || t->count < (uint64_t)T || !(mask_prob > 0.0f && mask_prob <= 1.0f))
        return NB_EINVAL;
    nb_rng_t r;
    nb_rng_init(&r, seed ^ NB_DATA_STREAM, step, micro);
    uint64_t starts = t->count - (uint64_t)T + 1; /* s in [0, count - T] */
    for (int b = 0; b < B; b++) {
        uint64_t s = nb_rng_below(&r, starts);
        int32_t *in = inputs + (size_t)b * T, *tg = targets + (size_t)b * T;
        int masked = 0;
        for (int i = 0; i < T; i++) {
            int32_t id = (int32_t)nb_tokens_get(t, s + i);
            bool m = nb_rng_uniform(&r) < mask_prob;
            in[i] = m ? mask_token : id;
            tg[i] = m ? id : -1;
            masked += m;
        }
        if (!masked) {
            int i = (int)nb_rng_below(&r, (uint64_t)T);
            tg[i] = in[i];
            in[i] = mask_token;
        }
    }
    return 0;
}

int nb_tokens_from_text(const char *text_path, const char *out_path, uint64_t max_bytes,
                        uint64_t *count, char *err, size_t errlen)
{
    FILE *f = fopen(text_path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", text_path, strerror(errno));
        return NB_EIO;
    }
    size_t cap = 1 << 16, n = 0;
    uint32_t *ids = malloc(cap * sizeof *ids);
    int ch;
    while (ids && (max_bytes == 0 || n < max_bytes) && (ch = fgetc(f)) != EOF) {
        if (n == cap) {
            uint32_t *grown = cap <= SIZE_MAX / 2 / sizeof *ids ? realloc(ids, 2 * cap * sizeof *ids) : NULL;
            if (!grown) {
                free(ids);
                ids = NULL;
                break;
            }
            ids = grown;
            cap *= 2;
        }
        ids[n++] = (uint32_t)ch;
    }
    bool read_error = ferror(f);
    fclose(f);
    if (!ids || read_error) {
        snprintf(err, errlen, "%s: %s", text_path, ids ? "read error" : "out of memory");
        free(ids);
        return ids ? NB_EIO : NB_ENOMEM;
    }
    int rc = nb_tokens_write(out_path, ids, n, 256, err, errlen);
    free(ids);
    if (rc == 0 && count)
        *count = n;
    return rc;
}
