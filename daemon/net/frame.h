/*
 * frame.h - the Nebula frame: 8-byte prefix, protobuf header, raw payload.
 *
 *   offset 0  'N' 'B'                  magic
 *   offset 2  wire version (1)
 *   offset 3  flags (0; non-zero is refused)
 *   offset 4  header length, u32 big-endian (<= limits.max_header)
 *   offset 8  header: nebula.Frame, protobuf, `header length` bytes
 *   then      payload: Frame.payload_len raw bytes, CRC32C in the header
 *
 * The payload is never a protobuf bytes field: the receiver validates the
 * header first, then allocates exactly payload_len bytes and reads the
 * payload straight into them (see nb_frame_rx_want). docs/protocol.md has the
 * full description and the version rule.
 *
 * Thread: all functions are pure or act on the caller's object; no globals.
 */
#ifndef NB_FRAME_H
#define NB_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include "proto/nebula.pb-c.h"

#define NB_FRAME_PREFIX_LEN 8
#define NB_FRAME_WIRE_VERSION 1
/* Hello.protocol_version this build speaks; peers must send the same. */
#define NB_PROTOCOL_VERSION 2 /* 2: held-out evaluation (Plan.eval, Job.eval_*) */
#define NB_FRAME_MAX_DIMS 8
#define NB_FRAME_MAX_NAME 255
#define NB_FRAME_MAX_CODEC 128

typedef struct {
    uint32_t max_header;     /* protobuf header bytes; default 64 KiB */
    uint64_t max_payload;    /* payload bytes; default 256 MiB */
    uint64_t max_decoded;    /* declared decoded tensor bytes; default 1 GiB */
    uint32_t max_codec_meta; /* Tensor.codec_meta bytes; default 4 KiB */
} nb_frame_limits_t;

/* Fills *lim with the defaults above. */
void nb_frame_limits_default(nb_frame_limits_t *lim);

/* Size in bytes of one element of dtype, or 0 for an unknown dtype. */
size_t nb_frame_dtype_size(int dtype);

/* Checks a decoded header against lim (message type known, payload_len within
 * limits and allowed for this type, tensor shape product without overflow and
 * equal to decoded_bytes, decoded size and codec metadata within limits, raw
 * codec payload equal to the decoded size). Returns 0 or NB_EFORMAT /
 * NB_ELIMIT / NB_ERANGE with *why set to a static description. */
int nb_frame_validate(const Nebula__Frame *f, const nb_frame_limits_t *lim,
                      const char **why);

/* Encodes prefix + header for a frame carrying len payload bytes: sets
 * f->payload_len and f->payload_crc32c (computed over payload), packs.
 * On success *out is a malloc'd buffer of *out_len bytes owned by the caller
 * (free()); the payload itself is not copied. Errors: NB_ELIMIT (header larger
 * than lim->max_header or payload larger than lim->max_payload), NB_ENOMEM. */
int nb_frame_encode(Nebula__Frame *f, const void *payload, size_t len,
                    const nb_frame_limits_t *lim, uint8_t **out, size_t *out_len);

/* Incremental decoder. The caller asks where the next bytes must go
 * (nb_frame_rx_want), writes up to that many there (e.g. SSL_read straight
 * into the payload buffer), then reports how many (nb_frame_rx_advance). */
typedef struct {
    nb_frame_limits_t lim;
    int allow_payload;       /* 0: any payload_len > 0 is refused (pre-Hello) */
    int state;               /* internal */
    uint8_t prefix[NB_FRAME_PREFIX_LEN];
    size_t have;             /* bytes of the current part received */
    uint8_t *hbuf;
    uint32_t hlen;
    Nebula__Frame *hdr;
    uint8_t *payload;
    uint64_t plen;
    uint32_t crc;            /* CRC32C of the payload bytes received so far */
    const char *fault;       /* static description of the last fault */
} nb_frame_rx_t;

/* Initialises an empty decoder (payload allowed). */
void nb_frame_rx_init(nb_frame_rx_t *rx, const nb_frame_limits_t *lim);
/* Frees whatever a partial frame holds; rx may be re-initialised after. */
void nb_frame_rx_free(nb_frame_rx_t *rx);
/* Sets *buf and *len (> 0) to where the next received bytes must be written.
 * Must not be called after a fault or while a frame is ready. */
void nb_frame_rx_want(nb_frame_rx_t *rx, uint8_t **buf, size_t *len);
/* n bytes (<= the last *len) were written at the last *buf. Returns 1 when a
 * complete, validated frame with a matching CRC is ready (take it with
 * nb_frame_rx_take before anything else), 0 when more bytes are needed, or a
 * negative NB_E* code on a fault (rx->fault says which); after a fault only
 * nb_frame_rx_free may be called. Memory held never exceeds
 * max_header + max_payload, and the payload is allocated only after its
 * header passed nb_frame_validate. */
int nb_frame_rx_advance(nb_frame_rx_t *rx, size_t n);
/* Hands the ready frame to the caller: *hdr (free with
 * nebula__frame__free_unpacked(*hdr, NULL)), *payload (malloc'd, free(); NULL
 * when *len is 0). The decoder is then ready for the next frame. */
void nb_frame_rx_take(nb_frame_rx_t *rx, Nebula__Frame **hdr,
                      uint8_t **payload, size_t *len);

/* Decodes one whole frame held in memory (tests, fuzzing, tools): same checks
 * as the incremental decoder. Returns bytes consumed (> 0) with *hdr, *payload
 * as for nb_frame_rx_take, 0 when buf holds less than one frame, or a
 * negative NB_E* code with *why set. */
long nb_frame_decode(const uint8_t *buf, size_t len, const nb_frame_limits_t *lim,
                     Nebula__Frame **hdr, uint8_t **payload, size_t *plen,
                     const char **why);

#endif
