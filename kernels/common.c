/* common.c - error names shared by every layer. */
#include "common.h"

const char *nb_strerror(int err)
{
    switch (err) {
    case NB_OK: return "ok";
    case NB_ENOMEM: return "out of memory or size overflow";
    case NB_EINVAL: return "invalid argument";
    case NB_EIO: return "I/O error";
    case NB_EFORMAT: return "bad format";
    case NB_EVERSION: return "unsupported version";
    case NB_ERANGE: return "value out of range";
    case NB_ECRC: return "checksum mismatch";
    case NB_ELIMIT: return "limit exceeded";
    case NB_ESTATE: return "invalid state";
    case NB_ETIMEDOUT: return "timed out";
    case NB_ECLOSED: return "connection closed";
    case NB_EAUTH: return "authentication failed";
    case NB_ENOENT: return "not found";
    default: return "unknown error";
    }
}
