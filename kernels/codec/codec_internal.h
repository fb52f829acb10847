/*
 * codec_internal.h - what the files of kernels/codec/ share and nobody else
 * uses: device staging of host payload bytes, value arrays (how numbers are
 * stored), the structure codecs (topk, svd) and the message buffer.
 *
 * Payload layout rule, so every float section is 4-byte aligned in a payload
 * that starts aligned: all scale sections first, then all code sections, then
 * index bytes (docs/codecs.md gives each codec's layout).
 */
#ifndef NB_CODEC_INTERNAL_H
#define NB_CODEC_INTERNAL_H

#include "kernels/codec/codec.h"
#include "kernels/codec/codec_ops.h"

/* Formats a message into err (when not NULL); returns rc for chaining. */
int nb__codec_err(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* codec_mem.c: a device view of host bytes. On a CPU backend the view is the
 * host pointer itself (no copy, *tmp = NULL); elsewhere a temporary device
 * buffer (*tmp) is allocated and filled (in) or copied back by
 * nb__codec_dev_out_done (out). Errors: NB_ENOMEM. */
int nb__codec_dev_in(nb_backend_t *be, const void *host, size_t n, const void **dev, void **tmp);
int nb__codec_dev_out(nb_backend_t *be, void *host, size_t n, void **dev, void **tmp);
void nb__codec_dev_out_done(nb_backend_t *be, void *host, size_t n, void *tmp);
void nb__codec_dev_release(nb_backend_t *be, void *tmp);

/* Grows m->payload to at least n bytes (64-byte aligned host memory). */
int nb__codec_msg_reserve(nb_codec_msg_t *m, size_t n);

/* codec_values.c: an array of n floats stored as s->value (s->block, s->sr;
 * block 0 = one scale per row of row_len elements). */
int nb__codec_val_bytes(const nb_codec_spec_t *s, size_t n, size_t row_len,
                        size_t *scale_bytes, size_t *code_bytes);
/* x_dev (n floats on be) -> scales / codes (host bytes of the sizes above).
 * Errors: NB_EINVAL for non-finite input to int8 / int4. */
int nb__codec_val_encode(nb_backend_t *be, const nb_codec_spec_t *s, const float *x_dev,
                         size_t n, size_t row_len, uint8_t *scales, uint8_t *codes,
                         uint64_t seed, char *err, size_t errlen);
/* scales / codes (host) -> y_dev. Errors: NB_EFORMAT for a negative or
 * non-finite scale, NB_ENOMEM. */
int nb__codec_val_decode(nb_backend_t *be, const nb_codec_spec_t *s, float *y_dev, size_t n,
                         size_t row_len, const uint8_t *scales, const uint8_t *codes,
                         char *err, size_t errlen);

/* codec_topk.c */
/* k for a fraction of n elements: ceil(frac * n) clamped to [1, n]. */
size_t nb__codec_topk_k(double frac, size_t n);
/* Encodes x_dev (n floats) into m->payload from offset 0, sets m->payload_len
 * and info->k_or_rank, index_bytes, bitmap. */
int nb__codec_topk_encode(nb_backend_t *be, const nb_codec_spec_t *s, const float *x_dev,
                          size_t n, uint64_t seed, nb_codec_msg_t *m, nb_codec_info_t *info,
                          char *err, size_t errlen);
int nb__codec_topk_decode(nb_backend_t *be, const nb_codec_spec_t *s, const nb_codec_info_t *info,
                          const uint8_t *payload, float *y_dev, char *err, size_t errlen);

/* codec_svd.c */
/* The rank svd(P) asks for on a rows x cols matrix (docs/codecs.md). */
uint32_t nb__codec_svd_rank(const nb_codec_spec_t *s, uint32_t rows, uint32_t cols);
int nb__codec_svd_encode(nb_backend_t *be, const nb_codec_spec_t *s, const float *x_dev,
                         uint32_t rows, uint32_t cols, uint64_t seed, nb_codec_msg_t *m,
                         nb_codec_info_t *info, char *err, size_t errlen);
int nb__codec_svd_decode(nb_backend_t *be, const nb_codec_spec_t *s, const nb_codec_info_t *info,
                         const uint8_t *payload, float *y_dev, char *err, size_t errlen);

/* codec_stream.c: the codec layer's view of a stream. */
/* A device work buffer of n floats owned by the stream (slot 0 or 1). */
float *nb__codec_stream_work(nb_codec_stream_t *st, int slot, size_t n);
/* The error-feedback residual for n elements (zeroed when new or when n
 * changed); NULL on allocation failure. */
float *nb__codec_stream_residual(nb_codec_stream_t *st, size_t n);
/* The delta base of key: *visit = 0 and NULL when none, else its base
 * (n floats; NB_ESTATE through *rc when n differs). */
float *nb__codec_stream_base(nb_codec_stream_t *st, uint64_t key, size_t n, uint32_t *visit);
/* Sets key's base to recon (n floats, device), creating the entry (dropping
 * the oldest keys to stay within the limit) or bumping its visit count
 * (fresh: the sender started over, visit count back to 1).
 * Errors: NB_ENOMEM, NB_ELIMIT (one base larger than the whole limit). */
int nb__codec_stream_set_base(nb_codec_stream_t *st, uint64_t key, const float *recon, size_t n,
                              bool fresh);

#endif
