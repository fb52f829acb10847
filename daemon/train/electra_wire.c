/*
 * electra_wire.c - checks, encodes and decodes the batch a generator sends
 * the discriminator; see electra_wire.h.
 */
#include <stdio.h>
#include <string.h>
#include "kernels/common.h"
#include "daemon/train/electra_wire.h"

const char *nb_electra_batch_check(const nb_electra_batch_t *b, const char *name, int gen, uint64_t step,
                                   int n, int T, int vocab, char *err, size_t errlen)
{
    if (b->gen != gen) {
        snprintf(err, errlen, "generator '%s': batch names generator %d, expected %d", name, b->gen, gen);
        return err;
    }
    if (b->step != step) {
        snprintf(err, errlen, "generator '%s': batch is for step %llu, expected step %llu", name,
                 (unsigned long long)b->step, (unsigned long long)step);
        return err;
    }
    if (b->n != n || b->T != T) {
        snprintf(err, errlen, "generator '%s': batch of %d sequences of %d tokens, expected %d sequences of %d "
                 "(job.electra.generators[%d].sequences, job.seq_len)", name, b->n, b->T, n, T, gen);
        return err;
    }
    for (long k = 0; k < (long)n * T; k++) {
        if (b->ids[k] < 0 || b->ids[k] >= vocab) {
            snprintf(err, errlen, "generator '%s': sequence %ld position %ld: token ID %d outside the "
                     "discriminator's vocabulary (0..%d)", name, k / T, k % T, (int)b->ids[k], vocab - 1);
            return err;
        }
        if (b->replaced[k] > 1) {
            snprintf(err, errlen, "generator '%s': sequence %ld position %ld: replaced flag %u is not 0 or 1",
                     name, k / T, k % T, b->replaced[k]);
            return err;
        }
    }
    return NULL;
}

int nb_electra_wire_width(uint32_t vocab) { return vocab <= 256u ? 1 : vocab <= 65536u ? 2 : 4; }

size_t nb_electra_wire_size(int n, int T, uint32_t vocab)
{
    size_t tok = (size_t)n * (size_t)T;
    return NB_ELECTRA_WIRE_HEADER + tok * (size_t)nb_electra_wire_width(vocab) + (tok + 7) / 8;
}

static void put(uint8_t *p, uint64_t v, int w)
{
    for (int i = 0; i < w; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get(const uint8_t *p, int w)
{
    uint64_t v = 0;
    for (int i = 0; i < w; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

long nb_electra_wire_encode(const nb_electra_batch_t *b, uint32_t vocab, uint8_t *buf, size_t cap)
{
    size_t tok = (size_t)b->n * (size_t)b->T, need = nb_electra_wire_size(b->n, b->T, vocab);
    int w = nb_electra_wire_width(vocab);
    if (b->n <= 0 || b->T <= 0 || cap < need)
        return NB_EINVAL;
    memcpy(buf, "NBEL", 4);
    put(buf + 4, NB_ELECTRA_WIRE_VERSION, 2);
    buf[6] = (uint8_t)w;
    buf[7] = 0;
    put(buf + 8, (uint32_t)b->gen, 4);
    put(buf + 12, b->step, 8);
    put(buf + 20, (uint32_t)b->n, 4);
    put(buf + 24, (uint32_t)b->T, 4);
    uint8_t *ids = buf + NB_ELECTRA_WIRE_HEADER, *bits = ids + tok * (size_t)w;
    memset(bits, 0, (tok + 7) / 8);
    for (size_t k = 0; k < tok; k++) {
        if (b->ids[k] < 0 || (uint32_t)b->ids[k] >= vocab || b->replaced[k] > 1)
            return NB_EINVAL;
        put(ids + k * (size_t)w, (uint32_t)b->ids[k], w);
        bits[k / 8] |= (uint8_t)(b->replaced[k] << (k % 8));
    }
    return (long)need;
}

int nb_electra_wire_decode(const uint8_t *buf, size_t len, const char *name, int gen, uint64_t step, int n,
                           int T, int vocab, nb_electra_batch_t *b, size_t cap_tokens, char *err,
                           size_t errlen)
{
    if (len < NB_ELECTRA_WIRE_HEADER || memcmp(buf, "NBEL", 4) != 0) {
        snprintf(err, errlen, "generator '%s': %zu bytes are not an ELECTRA batch (magic or header)", name, len);
        return NB_EFORMAT;
    }
    unsigned version = (unsigned)get(buf + 4, 2), w = buf[6];
    if (version != NB_ELECTRA_WIRE_VERSION) {
        snprintf(err, errlen, "generator '%s': batch version %u, this build reads version %u", name, version,
                 NB_ELECTRA_WIRE_VERSION);
        return NB_EFORMAT;
    }
    if (w != 1 && w != 2 && w != 4) {
        snprintf(err, errlen, "generator '%s': ID width %u (must be 1, 2 or 4)", name, w);
        return NB_EFORMAT;
    }
    if (buf[7]) {
        snprintf(err, errlen, "generator '%s': reserved header byte 7 is %u, must be 0", name, buf[7]);
        return NB_EFORMAT;
    }
    uint64_t bn = get(buf + 20, 4), bt = get(buf + 24, 4);
    if (bn != (uint64_t)n || bt != (uint64_t)T) {
        snprintf(err, errlen, "generator '%s': batch of %llu sequences of %llu tokens, expected %d sequences of %d "
                 "(job.electra.generators[%d].sequences, job.seq_len)", name, (unsigned long long)bn,
                 (unsigned long long)bt, n, T, gen);
        return NB_EINVAL;
    }
    size_t tok = (size_t)n * (size_t)T;
    size_t need = NB_ELECTRA_WIRE_HEADER + tok * w + (tok + 7) / 8;
    if (len != need) {
        snprintf(err, errlen, "generator '%s': batch of %zu bytes, %zu expected for %d x %d tokens of %u bytes",
                 name, len, need, n, T, w);
        return NB_EFORMAT;
    }
    if (cap_tokens < tok) {
        snprintf(err, errlen, "generator '%s': %zu tokens do not fit the %zu the receiver holds", name, tok,
                 cap_tokens);
        return NB_EINVAL;
    }
    const uint8_t *ids = buf + NB_ELECTRA_WIRE_HEADER, *bits = ids + tok * w;
    if (tok % 8 && bits[tok / 8] >> (tok % 8)) {
        snprintf(err, errlen, "generator '%s': unused bits of the replaced flags are set", name);
        return NB_EFORMAT;
    }
    /* everything is checked before b changes: a refused batch leaves it as it was */
    uint64_t bgen = get(buf + 8, 4), bstep = get(buf + 12, 8);
    if (bgen != (uint64_t)gen) {
        snprintf(err, errlen, "generator '%s': batch names generator %llu, expected %d", name,
                 (unsigned long long)bgen, gen);
        return NB_EINVAL;
    }
    if (bstep != step) {
        snprintf(err, errlen, "generator '%s': batch is for step %llu, expected step %llu", name,
                 (unsigned long long)bstep, (unsigned long long)step);
        return NB_EINVAL;
    }
    for (size_t k = 0; k < tok; k++) {
        uint64_t id = get(ids + k * w, (int)w);
        if (vocab <= 0 || id >= (uint64_t)vocab) {
            snprintf(err, errlen, "generator '%s': sequence %zu position %zu: token ID %llu outside the "
                     "discriminator's vocabulary (0..%d)", name, k / (size_t)T, k % (size_t)T,
                     (unsigned long long)id, vocab - 1);
            return NB_EINVAL;
        }
    }
    b->gen = gen;
    b->step = step;
    b->n = n;
    b->T = T;
    for (size_t k = 0; k < tok; k++) {
        b->ids[k] = (int32_t)get(ids + k * w, (int)w);
        b->replaced[k] = (bits[k / 8] >> (k % 8)) & 1;
    }
    return 0;
}
