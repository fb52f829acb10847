/*
 * electra_wire.h - what a generator hands the discriminator in an ELECTRA
 * job (docs/electra.md): one batch of corrupted sequences, as token IDs
 * plus one bit per token saying whether the generator replaced it.
 *
 * This is all that crosses the link from a generator's cluster to the
 * discriminator's: no text, no activations, no gradients. In one process
 * (daemon/train/electra.c) the batch is handed over in memory; the
 * distributed mode sends the encoded bytes. Both go through
 * nb_electra_batch_check(), so a bad batch is refused the same way.
 *
 * Encoding (little endian, version 1):
 *   offset  size  field
 *        0     4  magic "NBEL"
 *        4     2  version (1)
 *        6     1  ID width W in bytes: 1, 2 or 4 (the smallest that holds
 *                 every ID the generator can emit: its data vocabulary)
 *        7     1  reserved, 0
 *        8     4  generator index
 *       12     8  discriminator step the batch is for
 *       20     4  n, sequences
 *       24     4  T, tokens per sequence
 *       28   n*T*W  token IDs, row-major
 *        -   ceil(n*T/8)  replaced flags, bit k of byte k/8 (LSB first) for
 *                 flattened position k; unused bits of the last byte are 0
 * Bytes per token: W + 1/8 + 28/(n*T): 1.125 + header for the byte
 * tokenizer (vocabulary 256), 2.125 for a WordPiece vocabulary <= 65536.
 *
 * Thread: no shared state; a batch belongs to its user.
 */
#ifndef NB_ELECTRA_WIRE_H
#define NB_ELECTRA_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define NB_ELECTRA_WIRE_VERSION 1u
#define NB_ELECTRA_WIRE_HEADER 28u

/* One generator's contribution to one discriminator step. ids and replaced
 * are host arrays of n*T owned by whoever filled them (the generator that
 * made the batch, or nb_electra_wire_decode's caller). */
typedef struct {
    int gen;            /* generator index, in the job's fixed order */
    uint64_t step;      /* discriminator step */
    int n, T;           /* sequences, tokens per sequence */
    int32_t *ids;       /* corrupted token IDs (n*T) */
    uint8_t *replaced;  /* 1 where ids differs from the original token, else 0 (n*T) */
} nb_electra_batch_t;

/* Checks b against what the discriminator expects from the source called
 * name: n sequences of T tokens, every ID in [0, vocab), every flag 0 or 1,
 * the generator index and step. NULL when fine; else a message naming the
 * source, the sequence and the position in err (returns err). */
const char *nb_electra_batch_check(const nb_electra_batch_t *b, const char *name, int gen, uint64_t step,
                                   int n, int T, int vocab, char *err, size_t errlen);

/* ID width (1, 2 or 4 bytes) for IDs below vocab. */
int nb_electra_wire_width(uint32_t vocab);
/* Encoded size of a batch of n*T tokens with IDs below vocab. */
size_t nb_electra_wire_size(int n, int T, uint32_t vocab);
/* Encodes b into buf (cap >= nb_electra_wire_size(b->n, b->T, vocab)).
 * Every ID must be below vocab. Returns the bytes written, or NB_EINVAL
 * (an ID out of range, cap too small). */
long nb_electra_wire_encode(const nb_electra_batch_t *b, uint32_t vocab, uint8_t *buf, size_t cap);
/* Decodes len bytes received from the source called name into b, whose
 * ids and replaced arrays hold cap_tokens entries (owned by the caller), and
 * checks them as nb_electra_batch_check does against what the discriminator
 * expects (gen, step, n, T, vocab). Errors: NB_EFORMAT (bad magic,
 * version, width, length), NB_EINVAL (another shape, step or generator, an
 * ID out of range); err names the source and what is wrong. Everything is
 * checked before b is written: a refused batch leaves b unchanged. */
int nb_electra_wire_decode(const uint8_t *buf, size_t len, const char *name, int gen, uint64_t step, int n,
                           int T, int vocab, nb_electra_batch_t *b, size_t cap_tokens, char *err,
                           size_t errlen);

#endif /* NB_ELECTRA_WIRE_H */
