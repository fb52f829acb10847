/*
 * cpu_level.h - which copy of the CPU kernels runs: the ISA level, chosen once
 * at start-up from what the processor supports, and lowered on request.
 *
 * The hot kernels of kernels/cpu/ are built once per level (generic, avx2,
 * avx512 on x86-64; generic elsewhere). Every level gives bit-identical
 * results (docs/kernels.md, "ISA levels"); a higher level only runs faster.
 * Operators and tests force a lower level with the environment variable
 * NEBULA_CPU_LEVEL=generic|avx2|avx512.
 *
 * Thread: every function may be called from any thread; the process-wide
 * choice is made once (the first call wins) and never changes.
 */
#ifndef NB_CPU_LEVEL_H
#define NB_CPU_LEVEL_H

#include <stdbool.h>
#include "kernels/backend.h"

#define NB_CPU_LEVEL_ENV "NEBULA_CPU_LEVEL"

typedef enum {
    NB_CPU_GENERIC = 0, /* the build's baseline (x86-64-v2 by default): portable C */
    NB_CPU_AVX2 = 1,    /* AVX2 + FMA + F16C */
    NB_CPU_AVX512 = 2,  /* AVX-512 F, BW, VL and DQ */
    NB_CPU_LEVEL_COUNT
} nb_cpu_level_t;

/* "generic", "avx2" or "avx512"; "?" for a value out of range. */
const char *nb_cpu_level_name(nb_cpu_level_t level);
/* Parses a level name into *out: 0, or NB_EINVAL for an unknown name. */
int nb_cpu_level_parse(const char *name, nb_cpu_level_t *out);
/* True when this binary holds the kernels of level (x86-64 builds hold all
 * three, others only generic) and this processor can run them. */
bool nb_cpu_level_usable(nb_cpu_level_t level);
/* The highest usable level. */
nb_cpu_level_t nb_cpu_level_best(void);

/* The process's level: nb_cpu_level_best(), or the lower one that
 * NEBULA_CPU_LEVEL names. Returns 0 with *out set, or NB_EINVAL with *why
 * (a static string naming the variable, its value and what is allowed) when
 * the variable names no level or one this processor cannot run. Also refuses,
 * with the reason, a binary whose baseline objects were compiled for
 * instructions this processor lacks (an ARCHFLAGS=-march=native build moved
 * to another host). Binaries call it first thing and exit on an error. */
int nb_cpu_level_select(nb_cpu_level_t *out, const char **why);

/* A CPU backend running the kernels of level; NULL when the level is not
 * usable here or allocation fails. Freed with nb_be_free(). Tests and
 * benchmarks use it to run every level in one process. */
nb_backend_t *nb_cpu_backend_new_at(nb_cpu_level_t level);

/* The core type OpenBLAS chose for its kernels ("Haswell", "SkylakeX", ...;
 * OPENBLAS_CORETYPE pins it). Different core types round sgemm differently. */
const char *nb_cpu_blas_core(void);

/* Advice for the operator when OpenBLAS runs kernels far below what the
 * processor has: OpenBLAS picks its core type from a table of processor
 * models, and a model newer than the library (for example a 2023 Xeon under
 * Debian 12's OpenBLAS 0.3.21) falls back to its SSE3 "Prescott" kernels.
 * Writes one line naming the core type to set with OPENBLAS_CORETYPE and
 * returns true; false (buf untouched) when OPENBLAS_CORETYPE is set or the
 * choice fits the processor. */
bool nb_cpu_blas_advice(char *buf, size_t cap);

/* OpenBLAS's thread count when the process first asked (OPENBLAS_NUM_THREADS,
 * or one per core): the budget that callers running matrix products at the
 * same time share. */
int nb_cpu_blas_threads_total(void);
/* Shares that budget among `callers` threads that call BLAS at the same
 * time (the CPU replicas of a stage): sets OpenBLAS's process-wide thread
 * count to max(1, total / callers) and returns it; callers <= 1 gives the
 * whole budget back. The thread count changes sgemm's rounding. */
int nb_cpu_blas_share(int callers);

/* One line naming the kernels in use, for --version, logs, status and
 * checkpoints: "<level> blas=<core>", e.g. "avx512 blas=SkylakeX". Writes at
 * most cap bytes, always terminated; an invalid NEBULA_CPU_LEVEL shows as
 * "invalid". */
void nb_cpu_describe(char *buf, size_t cap);

#endif /* NB_CPU_LEVEL_H */
