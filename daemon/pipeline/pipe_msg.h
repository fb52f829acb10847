/*
 * pipe_msg.h - one tensor crossing a pipeline cut, as the stage runtime sees
 * it: which stages, which step and micro-batch, what kind, and the encoded
 * bytes (codec spec, codec metadata, payload) exactly as the transport's
 * tensor frame carries them (docs/protocol.md).
 *
 * What crosses each cut (docs/pipeline.md):
 *   ACT     stage s -> s+1   forward activations (B,T,C), forward codec
 *   GRAD    stage s+1 -> s   gradient of those activations, backward codec
 *   LABELS  stage s -> s+1   the targets (B,T) int32, raw, relayed towards the
 *                            head; never sent when stage 0 and the head share
 *                            a daemon (U-shape): labels then stay local
 *
 * Ownership: a message owns its payload (malloc'd host memory). Whoever holds
 * the message frees it with nb_pmsg_free().
 */
#ifndef NB_PIPE_MSG_H
#define NB_PIPE_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    NB_PMSG_ACT = 0,
    NB_PMSG_GRAD = 1,
    NB_PMSG_LABELS = 2,
    NB_PMSG_KINDS
} nb_pmsg_kind_t;

/* The codec name a LABELS message carries: raw little-endian int32. */
#define NB_PMSG_LABELS_CODEC "raw"
#define NB_PMSG_SPEC_MAX 128
#define NB_PMSG_META_MAX 64

typedef struct nb_pmsg {
    nb_pmsg_kind_t kind;
    int from_stage, to_stage;
    int64_t step;
    int mb;
    int64_t rows, cols;            /* the tensor as a matrix (ACT/GRAD: B*T x C; LABELS: B x T) */
    char spec[NB_PMSG_SPEC_MAX];   /* codec spec (or NB_PMSG_LABELS_CODEC) */
    uint8_t meta[NB_PMSG_META_MAX];
    size_t meta_len;
    uint8_t *payload;
    size_t payload_len;
    uint64_t raw_bytes;            /* size before the codec */
    bool eval;                     /* of a held-out evaluation (step = steps done),
                                      not of a training step */
} nb_pmsg_t;

/* A zeroed message; NULL when out of memory. */
nb_pmsg_t *nb_pmsg_new(void);
/* Frees the message and its payload; NULL is a no-op. */
void nb_pmsg_free(nb_pmsg_t *m);
/* Bytes the message takes on the wire (spec + meta + payload). */
size_t nb_pmsg_wire_bytes(const nb_pmsg_t *m);
const char *nb_pmsg_kind_name(nb_pmsg_kind_t k);

#endif
