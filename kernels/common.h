/*
 * common.h - assertions and small helpers shared by every layer of Nebula.
 *
 * Two tiers of error (see docs/architecture.md): runtime errors caused by a
 * peer, a file or a config return a negative NB_E* code up to where they can be
 * reported; a broken invariant hits NB_CHECK, which is never compiled out and
 * aborts with file and line.
 */
#ifndef NB_COMMON_H
#define NB_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <stddef.h>

#define NB_CHECK(cond)                                                         \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "nebula: invariant failed at %s:%d: %s\n",         \
                    __FILE__, __LINE__, #cond);                                \
            abort();                                                           \
        }                                                                      \
    } while (0)

/* Runtime error codes: always negative, 0 is success. */
enum {
    NB_OK = 0,
    NB_ENOMEM = -1,   /* allocation failed or a size overflowed */
    NB_EINVAL = -2,   /* bad argument or malformed input */
    NB_EIO = -3,      /* file or socket I/O failed */
    NB_EFORMAT = -4,  /* a file or frame is not in the expected format */
    NB_EVERSION = -5, /* unsupported version */
    NB_ERANGE = -6,   /* a value out of its allowed range */
    NB_ECRC = -7,     /* checksum mismatch */
    NB_ELIMIT = -8,   /* a configured limit was exceeded */
    NB_ESTATE = -9,   /* operation not valid in the current state */
    NB_ETIMEDOUT = -10,
    NB_ECLOSED = -11,
    NB_EAUTH = -12,   /* authentication / certificate failure */
    NB_ENOENT = -13,  /* a named file or entry does not exist */
};

/* Human-readable name of an NB_E* code. */
const char *nb_strerror(int err);

#define NB_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Overflow-checked size arithmetic: return 0 on success, -1 on overflow. */
static inline int nb_mul_size(size_t a, size_t b, size_t *out)
{
    return __builtin_mul_overflow(a, b, out) ? -1 : 0;
}
static inline int nb_add_size(size_t a, size_t b, size_t *out)
{
    return __builtin_add_overflow(a, b, out) ? -1 : 0;
}

#endif /* NB_COMMON_H */
