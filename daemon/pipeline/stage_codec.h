/*
 * stage_codec.h - where a stage's codecs run, and the staging between the
 * device and the bytes that cross a link.
 *
 * A stage encodes what leaves its daemon and decodes what arrives with the
 * codec layer (kernels/codec/codec.h). On a backend with the codec
 * primitives (the CPU, and a CUDA module that provides them) the codecs run
 * on the compute backend itself, so only the compressed bytes come to the
 * host. On a backend without them the stage copies the tensor through one
 * page-locked staging buffer (nb_be_host_alloc) and runs the codecs on a
 * CPU backend of its own: the bytes on the wire are the same either way
 * (the codecs' bits are the CPU backend's), only the copy is larger.
 *
 * The codec streams (error-feedback residuals, delta bases) of a stage live
 * on nb_stage_codec_backend(): create them there.
 *
 * Thread: the stage's compute thread (the backend's).
 */
#ifndef NB_STAGE_CODEC_H
#define NB_STAGE_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "kernels/backend.h"
#include "kernels/codec/codec.h"

typedef struct {
    nb_backend_t *be;   /* the compute backend, borrowed */
    nb_backend_t *cbe;  /* where the codecs run: be, or own */
    nb_backend_t *own;  /* a CPU backend when be has no codec primitives */
    void *staging;      /* host staging (pinned on CUDA), staging_bytes large */
    size_t staging_bytes;
} nb_stage_codec_t;

/* Binds c to be: the codecs run on be when it has every codec primitive,
 * else on a new CPU backend. Errors: NB_ENOMEM. */
int nb_stage_codec_init(nb_stage_codec_t *c, nb_backend_t *be);
/* Frees the staging buffer and the own backend (after every stream made
 * on it is freed). c may be zeroed. */
void nb_stage_codec_free(nb_stage_codec_t *c);
/* The backend the codecs and their streams run on. */
static inline nb_backend_t *nb_stage_codec_backend(const nb_stage_codec_t *c) { return c->cbe; }
/* True when the codecs run on the compute backend (no staging copy of the
 * full tensor). */
static inline bool nb_stage_codec_on_device(const nb_stage_codec_t *c) { return c->cbe == c->be; }

/* Encodes the (rows, cols) f32 tensor at dev (on be) with spec into *out,
 * as nb_codec_encode (st on nb_stage_codec_backend, or NULL). Errors:
 * those of nb_codec_encode; NB_ENOMEM for the staging buffer. */
int nb_stage_codec_encode(nb_stage_codec_t *c, const nb_codec_spec_t *spec, const float *dev, int64_t rows,
                          int64_t cols, uint64_t seed, nb_codec_stream_t *st, uint64_t key, nb_codec_msg_t *out,
                          char *err, size_t errlen);
/* Decodes a message into the (rows, cols) f32 tensor at dev (on be), as
 * nb_codec_decode_into; dev is complete on return (no pending copy).
 * Errors: those of nb_codec_decode_into; NB_ENOMEM for the staging
 * buffer. */
int nb_stage_codec_decode(nb_stage_codec_t *c, const char *spec, const uint8_t *meta, size_t meta_len,
                          const uint8_t *payload, size_t payload_len, uint64_t max_bytes, nb_codec_stream_t *st,
                          float *dev, int64_t rows, int64_t cols, char *err, size_t errlen);

#endif
