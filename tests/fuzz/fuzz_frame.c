/*
 * fuzz_frame.c - libFuzzer target for the frame decoder: the 8-byte prefix,
 * the protobuf header (protobuf-c unpack) and nb_frame_validate, through
 * both the one-shot and the incremental decoder fed in odd-sized pieces.
 * Seed corpus of real frames: tests/fuzz/corpus/frame/. Run: make fuzz.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/net/frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    nb_frame_limits_t lim;
    nb_frame_limits_default(&lim);
    lim.max_payload = 1u << 20; /* keep the fuzzer's allocations small */
    Nebula__Frame *f;
    uint8_t *p;
    size_t plen;
    const char *why;
    long r = nb_frame_decode(data, size, &lim, &f, &p, &plen, &why);
    if (r > 0) {
        if (nb_frame_validate(f, &lim, &why) != 0)
            abort(); /* the decoder only returns validated frames */
        if (plen != f->payload_len)
            abort();
        nebula__frame__free_unpacked(f, NULL);
        free(p);
    }
    /* incremental, in pieces whose sizes come from the input itself */
    nb_frame_rx_t rx;
    nb_frame_rx_init(&rx, &lim);
    size_t off = 0, step = size ? (size_t)data[0] % 13 + 1 : 1;
    while (off < size) {
        uint8_t *dst;
        size_t want;
        nb_frame_rx_want(&rx, &dst, &want);
        size_t n = want < step ? want : step;
        if (n > size - off)
            n = size - off;
        memcpy(dst, data + off, n);
        off += n;
        int rc = nb_frame_rx_advance(&rx, n);
        if (rc < 0)
            break;
        if (rc == 1) {
            nb_frame_rx_take(&rx, &f, &p, &plen);
            nebula__frame__free_unpacked(f, NULL);
            free(p);
        }
    }
    nb_frame_rx_free(&rx);
    return 0;
}
