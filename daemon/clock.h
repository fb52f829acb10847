/* clock.h - the monotonic clock every layer above kernels/ reads: steady
 * across wall-clock changes, for deadlines, timeouts and step timing. */
#ifndef NB_CLOCK_H
#define NB_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Nanoseconds on CLOCK_MONOTONIC (an arbitrary origin: use differences). */
static inline uint64_t nb_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The same in seconds. */
static inline double nb_mono_s(void)
{
    return (double)nb_mono_ns() * 1e-9;
}

/* The same in whole milliseconds. */
static inline int64_t nb_mono_ms(void)
{
    return (int64_t)(nb_mono_ns() / 1000000);
}

#endif
