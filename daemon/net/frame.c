/* frame.c - frame encoding, validation and the incremental decoder; see frame.h. */
#include <stdlib.h>
#include <string.h>
#include "kernels/common.h"
#include "daemon/net/crc32c.h"
#include "daemon/net/frame.h"

enum { RX_PREFIX = 0, RX_HEADER, RX_PAYLOAD, RX_READY, RX_FAULT };

void nb_frame_limits_default(nb_frame_limits_t *lim)
{
    lim->max_header = 64u << 10;
    lim->max_payload = 256ull << 20;
    lim->max_decoded = 1ull << 30;
    lim->max_codec_meta = 4096;
}

size_t nb_frame_dtype_size(int dtype)
{
    switch (dtype) {
    case NEBULA__DTYPE__DTYPE_F32: return 4;
    case NEBULA__DTYPE__DTYPE_F16: return 2;
    case NEBULA__DTYPE__DTYPE_BF16: return 2;
    case NEBULA__DTYPE__DTYPE_I8: return 1;
    case NEBULA__DTYPE__DTYPE_U8: return 1;
    case NEBULA__DTYPE__DTYPE_I32: return 4;
    case NEBULA__DTYPE__DTYPE_I64: return 8;
    default: return 0;
    }
}

#define FAIL(code, msg) do { *why = (msg); return (code); } while (0)

static int validate_tensor(const Nebula__Frame *f, const nb_frame_limits_t *lim,
                           const char **why)
{
    const Nebula__Tensor *t = f->tensor;
    if (t->n_shape > NB_FRAME_MAX_DIMS)
        FAIL(NB_ELIMIT, "tensor has too many dimensions");
    size_t es = nb_frame_dtype_size(t->dtype);
    if (es == 0)
        FAIL(NB_EFORMAT, "tensor has an unknown dtype");
    if (t->kind <= NEBULA__TENSOR_KIND__KIND_UNSPECIFIED || t->kind > NEBULA__TENSOR_KIND__KIND_LABELS)
        FAIL(NB_EFORMAT, "tensor has an unknown kind");
    uint64_t n = 1;
    for (size_t i = 0; i < t->n_shape; i++)
        if (__builtin_mul_overflow(n, t->shape[i], &n))
            FAIL(NB_ERANGE, "tensor shape product overflows");
    uint64_t bytes;
    if (__builtin_mul_overflow(n, (uint64_t)es, &bytes))
        FAIL(NB_ERANGE, "tensor shape product overflows");
    if (bytes > lim->max_decoded)
        FAIL(NB_ELIMIT, "tensor decoded size over the limit");
    if (bytes != t->decoded_bytes)
        FAIL(NB_ERANGE, "tensor shape does not match its declared decoded size");
    if (!t->codec || !t->codec[0] || strlen(t->codec) > NB_FRAME_MAX_CODEC)
        FAIL(NB_EFORMAT, "tensor codec name empty or too long");
    if (t->codec_meta.len > lim->max_codec_meta)
        FAIL(NB_ELIMIT, "tensor codec metadata over the limit");
    if (strcmp(t->codec, "raw") == 0 && f->payload_len != bytes)
        FAIL(NB_ERANGE, "raw tensor payload size does not match its shape");
    return 0;
}

int nb_frame_validate(const Nebula__Frame *f, const nb_frame_limits_t *lim,
                      const char **why)
{
    *why = "ok";
    if (f->payload_len > lim->max_payload)
        FAIL(NB_ELIMIT, "payload over the limit");
    int payload_ok = 0;
    switch (f->body_case) {
    case NEBULA__FRAME__BODY_HELLO:
        if (!f->hello->daemon_name || strlen(f->hello->daemon_name) > NB_FRAME_MAX_NAME)
            FAIL(NB_EFORMAT, "hello daemon name too long");
        break;
    case NEBULA__FRAME__BODY_TENSOR: {
        int rc = validate_tensor(f, lim, why);
        if (rc)
            return rc;
        payload_ok = 1;
        break;
    }
    case NEBULA__FRAME__BODY_PROBE:
        if (f->probe->kind < NEBULA__PROBE__KIND__PROBE_PING ||
            f->probe->kind > NEBULA__PROBE__KIND__PROBE_BULK_REQUEST)
            FAIL(NB_EFORMAT, "unknown probe kind");
        payload_ok = f->probe->kind == NEBULA__PROBE__KIND__PROBE_BULK;
        break;
    case NEBULA__FRAME__BODY_PLAN:
    case NEBULA__FRAME__BODY_REPORT:
    case NEBULA__FRAME__BODY_CHECKPOINT:
    case NEBULA__FRAME__BODY_ERROR:
    case NEBULA__FRAME__BODY_SHUTDOWN:
    case NEBULA__FRAME__BODY_HEARTBEAT:
    case NEBULA__FRAME__BODY_JOB:
    case NEBULA__FRAME__BODY_COMMIT:
    case NEBULA__FRAME__BODY_JOB_STATUS:
    case NEBULA__FRAME__BODY_ABORT:
    case NEBULA__FRAME__BODY_ELECTRA_CREDIT:
        break;
    default:
        FAIL(NB_EFORMAT, "unknown message type");
    }
    if (!payload_ok && f->payload_len != 0)
        FAIL(NB_EFORMAT, "payload on a message type that carries none");
    return 0;
}

int nb_frame_encode(Nebula__Frame *f, const void *payload, size_t len,
                    const nb_frame_limits_t *lim, uint8_t **out, size_t *out_len)
{
    if (len > lim->max_payload)
        return NB_ELIMIT;
    f->payload_len = len;
    f->payload_crc32c = len ? nb_crc32c(0, payload, len) : 0;
    size_t hlen = nebula__frame__get_packed_size(f);
    if (hlen > lim->max_header)
        return NB_ELIMIT;
    uint8_t *b = malloc(NB_FRAME_PREFIX_LEN + hlen);
    if (!b)
        return NB_ENOMEM;
    b[0] = 'N';
    b[1] = 'B';
    b[2] = NB_FRAME_WIRE_VERSION;
    b[3] = 0;
    b[4] = (uint8_t)(hlen >> 24);
    b[5] = (uint8_t)(hlen >> 16);
    b[6] = (uint8_t)(hlen >> 8);
    b[7] = (uint8_t)hlen;
    size_t packed = nebula__frame__pack(f, b + NB_FRAME_PREFIX_LEN);
    NB_CHECK(packed == hlen);
    *out = b;
    *out_len = NB_FRAME_PREFIX_LEN + hlen;
    return 0;
}

void nb_frame_rx_init(nb_frame_rx_t *rx, const nb_frame_limits_t *lim)
{
    memset(rx, 0, sizeof *rx);
    rx->lim = *lim;
    rx->allow_payload = 1;
    rx->state = RX_PREFIX;
    rx->fault = "none";
}

static void rx_reset(nb_frame_rx_t *rx)
{
    free(rx->hbuf);
    rx->hbuf = NULL;
    if (rx->hdr)
        nebula__frame__free_unpacked(rx->hdr, NULL);
    rx->hdr = NULL;
    free(rx->payload);
    rx->payload = NULL;
    rx->have = 0;
    rx->hlen = 0;
    rx->plen = 0;
    rx->state = RX_PREFIX;
}

void nb_frame_rx_free(nb_frame_rx_t *rx)
{
    rx_reset(rx);
}

void nb_frame_rx_want(nb_frame_rx_t *rx, uint8_t **buf, size_t *len)
{
    switch (rx->state) {
    case RX_PREFIX:
        *buf = rx->prefix + rx->have;
        *len = NB_FRAME_PREFIX_LEN - rx->have;
        return;
    case RX_HEADER:
        *buf = rx->hbuf + rx->have;
        *len = rx->hlen - rx->have;
        return;
    case RX_PAYLOAD:
        *buf = rx->payload + rx->have;
        *len = (size_t)(rx->plen - rx->have);
        return;
    default:
        NB_CHECK(!"nb_frame_rx_want in a ready or faulted state");
    }
}

static int rx_fault(nb_frame_rx_t *rx, int code, const char *why)
{
    rx->fault = why;
    rx->state = RX_FAULT;
    return code;
}

int nb_frame_rx_advance(nb_frame_rx_t *rx, size_t n)
{
    NB_CHECK(rx->state == RX_PREFIX || rx->state == RX_HEADER || rx->state == RX_PAYLOAD);
    rx->have += n;
    switch (rx->state) {
    case RX_PREFIX: {
        if (rx->have < NB_FRAME_PREFIX_LEN)
            return 0;
        const uint8_t *p = rx->prefix;
        if (p[0] != 'N' || p[1] != 'B')
            return rx_fault(rx, NB_EFORMAT, "bad frame magic (not a Nebula frame)");
        if (p[2] != NB_FRAME_WIRE_VERSION)
            return rx_fault(rx, NB_EVERSION, "unsupported frame wire version");
        if (p[3] != 0)
            return rx_fault(rx, NB_EFORMAT, "unknown frame flags");
        uint32_t hlen = (uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 | (uint32_t)p[6] << 8 | p[7];
        if (hlen == 0)
            return rx_fault(rx, NB_EFORMAT, "empty frame header");
        if (hlen > rx->lim.max_header)
            return rx_fault(rx, NB_ELIMIT, "frame header length over the limit");
        rx->hbuf = malloc(hlen);
        if (!rx->hbuf)
            return rx_fault(rx, NB_ENOMEM, "out of memory for a frame header");
        rx->hlen = hlen;
        rx->have = 0;
        rx->state = RX_HEADER;
        return 0;
    }
    case RX_HEADER: {
        if (rx->have < rx->hlen)
            return 0;
        rx->hdr = nebula__frame__unpack(NULL, rx->hlen, rx->hbuf);
        free(rx->hbuf);
        rx->hbuf = NULL;
        if (!rx->hdr)
            return rx_fault(rx, NB_EFORMAT, "frame header is not a valid protobuf Frame");
        const char *why;
        int rc = nb_frame_validate(rx->hdr, &rx->lim, &why);
        if (rc)
            return rx_fault(rx, rc, why);
        if (!rx->allow_payload && rx->hdr->payload_len)
            return rx_fault(rx, NB_ESTATE, "payload before the hello exchange");
        rx->plen = rx->hdr->payload_len;
        rx->have = 0;
        if (rx->plen == 0) {
            rx->state = RX_READY;
            return 1;
        }
        /* Only now, with the header validated, is the payload allocated. */
        rx->payload = malloc((size_t)rx->plen);
        if (!rx->payload)
            return rx_fault(rx, NB_ENOMEM, "out of memory for a payload");
        rx->crc = 0;
        rx->state = RX_PAYLOAD;
        return 0;
    }
    case RX_PAYLOAD:
        /* The CRC runs over each piece as it arrives, so a large payload
         * never costs one long pass on the loop thread. */
        rx->crc = nb_crc32c(rx->crc, rx->payload + (rx->have - n), n);
        if (rx->have < rx->plen)
            return 0;
        if (rx->crc != rx->hdr->payload_crc32c)
            return rx_fault(rx, NB_ECRC, "payload CRC32C mismatch");
        rx->state = RX_READY;
        return 1;
    }
    return 0;
}

void nb_frame_rx_take(nb_frame_rx_t *rx, Nebula__Frame **hdr, uint8_t **payload, size_t *len)
{
    NB_CHECK(rx->state == RX_READY);
    *hdr = rx->hdr;
    *payload = rx->payload;
    *len = (size_t)rx->plen;
    rx->hdr = NULL;
    rx->payload = NULL;
    rx_reset(rx);
}

long nb_frame_decode(const uint8_t *buf, size_t len, const nb_frame_limits_t *lim,
                     Nebula__Frame **hdr, uint8_t **payload, size_t *plen,
                     const char **why)
{
    nb_frame_rx_t rx;
    nb_frame_rx_init(&rx, lim);
    size_t off = 0;
    *why = "ok";
    while (off < len) {
        uint8_t *dst;
        size_t want;
        nb_frame_rx_want(&rx, &dst, &want);
        size_t n = want < len - off ? want : len - off;
        memcpy(dst, buf + off, n);
        off += n;
        int rc = nb_frame_rx_advance(&rx, n);
        if (rc < 0) {
            *why = rx.fault;
            nb_frame_rx_free(&rx);
            return rc;
        }
        if (rc == 1) {
            nb_frame_rx_take(&rx, hdr, payload, plen);
            return (long)off;
        }
    }
    nb_frame_rx_free(&rx);
    return 0;
}
