/*
 * codec.h - compression codecs for the tensors that cross a pipeline cut
 * (forward activations, backward gradients): the public API.
 *
 * A codec is chosen by a spec string that composes (grammar and parameters in
 * docs/codecs.md): "fp32", "fp16", "bf16", "int8", "int4", "topk(F)",
 * "svd(P)", "fp16(svd(0.6))", "int8(topk(0.01),ef)", "int8(block=32,sr)".
 * A value codec (fp32/fp16/bf16/int8/int4) says how numbers are stored; it may
 * wrap one structure codec (topk or svd) whose numbers it then stores.
 *
 * Encoding turns an fp32 tensor on a backend into an nb_codec_msg_t:
 *   spec     the canonical spec string    -> the tensor frame's codec name
 *   meta     a small self-describing header (<= NB_CODEC_META_MAX bytes,
 *            little endian, layout in docs/codecs.md) -> codec metadata bytes
 *   payload  host bytes, exactly as long as the metadata says -> payload
 * Decoding validates every field against the spec, the payload length and the
 * caller's size limit before touching memory, so a hostile frame gets a
 * clear error, never an out-of-bounds access.
 *
 * The tensor is treated as a matrix: rows = product of all dimensions but the
 * last, cols = the last dimension. All computation goes through the backend
 * (its codec primitives, kernels/codec/codec_ops.h, plus nb_matmul / nb_add);
 * SVD's small QR / SVD steps run in LAPACKE on the host.
 *
 * Stateful codecs (flag "ef": error feedback, sender side; flag "delta":
 * per-key delta against the last reconstruction, both sides, AQ-SGD style)
 * need an nb_codec_stream_t that the caller owns, one per direction per link.
 *
 * Errors: negative NB_E* codes (kernels/common.h) and a one-line message in
 * the caller's err buffer (may be NULL). Thread: everything here runs on the
 * thread that owns the backend; a stream or a message is used by one thread
 * at a time. Determinism: the same input, spec, seed and stream state give
 * the same bytes.
 */
#ifndef NB_CODEC_H
#define NB_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"

#define NB_CODEC_SPEC_MAX 128  /* spec strings, NUL included */
#define NB_CODEC_META_MAX 64   /* metadata bytes: well under the frame's 4 KiB */
#define NB_CODEC_META_V1_LEN 56

typedef enum {
    NB_CODEC_V_F32 = 0,
    NB_CODEC_V_F16 = 1,
    NB_CODEC_V_BF16 = 2,
    NB_CODEC_V_I8 = 3,
    NB_CODEC_V_I4 = 4,
} nb_codec_value_t;

typedef enum {
    NB_CODEC_S_DENSE = 0,
    NB_CODEC_S_TOPK = 1,
    NB_CODEC_S_SVD = 2,
} nb_codec_struct_t;

/* A parsed spec. Plain value: copy freely. */
typedef struct nb_codec_spec {
    nb_codec_value_t value;
    uint32_t block;          /* int8/int4: elements per scale; 0 = one per row */
    bool sr;                 /* int8/int4: stochastic rounding */
    nb_codec_struct_t kind;
    double topk_frac;        /* topk: fraction of elements kept, (0, 1] */
    double svd_p;            /* svd: size of the factors / dense size, (0, 1]; 0 when rank given */
    uint32_t svd_rank;       /* svd: explicit rank (0 = from svd_p) */
    double svd_energy;       /* svd: stop at this fraction of ||A||_F^2 (0 = off) */
    uint32_t svd_iters;      /* svd: power iterations (default 2) */
    uint32_t svd_oversample; /* svd: extra sketch columns (default 8) */
    bool ef;                 /* error feedback (sender stream) */
    bool delta;              /* delta against the key's last reconstruction */
} nb_codec_spec_t;

/* Parses text into *out. Errors: NB_EINVAL with a message naming the spec and
 * the 0-based character position of the fault ("codec spec 'int8(blok=4)':
 * unknown parameter 'blok' for int8 at position 5"). */
int nb_codec_spec_parse(const char *text, nb_codec_spec_t *out, char *err, size_t errlen);
/* Writes the canonical spec string (defaults omitted) into buf; returns its
 * length, or NB_ERANGE when it does not fit in len bytes. Parsing the result
 * gives back an equal spec. */
int nb_codec_spec_format(const nb_codec_spec_t *s, char *buf, size_t len);
/* True when decode(encode(x)) == x bit for bit (fp32, no structure). */
bool nb_codec_spec_lossless(const nb_codec_spec_t *s);

/* An encoded tensor. The three fields the transport carries are spec, meta
 * and payload. Memory: the message owns payload (host memory, grown as
 * needed and reused across encodes); init before first use, free at the end. */
typedef struct nb_codec_msg {
    char spec[NB_CODEC_SPEC_MAX];
    uint8_t meta[NB_CODEC_META_MAX];
    size_t meta_len;
    uint8_t *payload;
    size_t payload_len;
    size_t payload_cap;
} nb_codec_msg_t;

void nb_codec_msg_init(nb_codec_msg_t *m);
void nb_codec_msg_free(nb_codec_msg_t *m);
/* Total bytes the three fields take: strlen(spec) + meta_len + payload_len. */
size_t nb_codec_msg_bytes(const nb_codec_msg_t *m);

/* What a metadata block says, read without the payload (nb_codec_peek), so a
 * receiver can check sizes before allocating anything. */
typedef struct nb_codec_info {
    nb_codec_value_t value;
    nb_codec_struct_t kind;
    uint32_t rows, cols;
    uint32_t block;          /* elements per scale (int8/int4) */
    uint32_t k_or_rank;      /* topk: k; svd: rank; dense: 0 */
    uint32_t index_bytes;    /* topk: bytes of the index section */
    bool sr, delta, bitmap;
    uint32_t visit;          /* delta: updates of the key's base so far (0: none) */
    uint64_t key;            /* delta: the caller's key (sample id) */
    uint64_t decoded_bytes;  /* rows * cols * 4 */
    uint64_t payload_bytes;  /* exact payload length */
} nb_codec_info_t;

/* Parses and validates spec + metadata (consistency with the spec, sizes,
 * rank <= min(rows, cols), k <= rows * cols, overflow) without the payload.
 * Errors: NB_EINVAL / NB_EFORMAT / NB_EVERSION / NB_ERANGE with a message. */
int nb_codec_peek(const char *spec, const uint8_t *meta, size_t meta_len,
                  nb_codec_info_t *info, char *err, size_t errlen);

typedef struct nb_codec_stream nb_codec_stream_t;

/* Encodes x (f32 on be, any shape with >= 1 dimension, rows * cols <
 * 2^32) into *out. seed drives stochastic rounding and the SVD sketch. st is
 * required when the spec has "ef" or "delta" (else may be NULL); key names the
 * sample for "delta" (ignored otherwise). Errors: NB_EINVAL (wrong dtype,
 * empty tensor, non-finite input for int8/int4, missing stream), NB_ENOMEM,
 * NB_ERANGE (too large). On error *out holds no valid message and a stream's
 * state is unchanged. */
int nb_codec_encode(nb_backend_t *be, const nb_codec_spec_t *spec, const nb_tensor_t *x,
                    uint64_t seed, nb_codec_stream_t *st, uint64_t key,
                    nb_codec_msg_t *out, char *err, size_t errlen);

/* Decodes (spec, meta, payload) into dst, an f32 tensor on be with exactly
 * rows * cols elements (any shape). payload is host memory. max_bytes bounds
 * the decoded size (0 = no bound beyond dst). st is required for "delta".
 * Errors: everything nb_codec_peek reports, plus NB_EFORMAT for a payload of
 * the wrong length or bad content (non-finite scales, indices out of range or
 * not ascending), NB_ELIMIT when the decoded size exceeds max_bytes, NB_EINVAL
 * when dst does not match, NB_ESTATE when a delta base is missing. dst is
 * unspecified after an error. */
int nb_codec_decode_into(nb_backend_t *be, const char *spec, const uint8_t *meta, size_t meta_len,
                         const uint8_t *payload, size_t payload_len, uint64_t max_bytes,
                         nb_codec_stream_t *st, nb_tensor_t *dst, char *err, size_t errlen);

/* Like nb_codec_decode_into but allocates the (rows, cols) f32 result on be;
 * the caller frees it with nb_tensor_free. Nothing is allocated before the
 * metadata passed validation and max_bytes. */
int nb_codec_decode(nb_backend_t *be, const char *spec, const uint8_t *meta, size_t meta_len,
                    const uint8_t *payload, size_t payload_len, uint64_t max_bytes,
                    nb_codec_stream_t *st, nb_tensor_t **out, char *err, size_t errlen);

/* ---- streams (kernels/codec/codec_stream.c) ---------------------------- */

/* A per-link, per-direction codec state on be: the error-feedback residual
 * (sender) and the delta bases by key (both sides). max_state_bytes bounds
 * the delta bases; when a new key would exceed it, the oldest key is dropped
 * (both sides drop the same keys because they see the same sequence; a
 * mismatch is detected and reported as NB_ESTATE). NULL on allocation
 * failure. Freed with nb_codec_stream_free (NULL allowed). */
nb_codec_stream_t *nb_codec_stream_new(nb_backend_t *be, size_t max_state_bytes);
void nb_codec_stream_free(nb_codec_stream_t *st);
/* Forgets all state (residual and bases). */
void nb_codec_stream_reset(nb_codec_stream_t *st);
/* Device bytes held by residual and bases. */
size_t nb_codec_stream_bytes(const nb_codec_stream_t *st);
/* Squared L2 norm of the error-feedback residual (0 when none). */
double nb_codec_stream_residual_sumsq(nb_codec_stream_t *st);

/* State copy, export and import: what a training runtime needs to put a
 * stream back where it was at a step boundary (after an aborted step, or
 * from a checkpoint). Device pointers of the stream's backend. */
/* True when st holds neither a residual nor a base (NULL: true). */
bool nb_codec_stream_empty(const nb_codec_stream_t *st);
/* Makes dst hold exactly what src holds: residual, bases with their keys,
 * visit counts and age order. Same backend. NB_ENOMEM leaves dst empty. */
int nb_codec_stream_copy(nb_codec_stream_t *dst, const nb_codec_stream_t *src);
/* The residual (*n floats; NULL and 0 when none). Borrowed. */
const float *nb_codec_stream_residual_state(const nb_codec_stream_t *st, size_t *n);
/* The delta bases, oldest first: base i with its key, visit count and
 * length (NULL past the end). Borrowed. */
size_t nb_codec_stream_num_bases(const nb_codec_stream_t *st);
const float *nb_codec_stream_base_state(const nb_codec_stream_t *st, size_t i, uint64_t *key, uint32_t *visit,
                                        size_t *n);
/* Sets the residual to n floats copied from src (device memory). */
int nb_codec_stream_set_residual(nb_codec_stream_t *st, const float *src, size_t n);
/* Adds (as the newest) or replaces key's base: n floats from src, with its
 * visit count. NB_ELIMIT: larger than the stream's state bound. */
int nb_codec_stream_add_base(nb_codec_stream_t *st, uint64_t key, uint32_t visit, const float *src, size_t n);

#endif /* NB_CODEC_H */
