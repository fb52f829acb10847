/*
 * cpu_level.c - detects the processor's ISA level once, honours
 * NEBULA_CPU_LEVEL, and opens the CPU backend with the matching copy of the
 * kernels (kernels/cpu/, compiled once per level; see cpu_isa_names.h).
 *
 * This file is compiled for the build's baseline only, so it runs on every
 * processor the build targets and can say why before anything faster runs.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <cblas.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include "kernels/cpu_level.h"

extern const nb_backend_i nb_cpu_iface_generic;
#if defined(__x86_64__)
extern const nb_backend_i nb_cpu_iface_avx2;
extern const nb_backend_i nb_cpu_iface_avx512;
#endif

static const char *const level_names[NB_CPU_LEVEL_COUNT] = { "generic", "avx2", "avx512" };

const char *nb_cpu_level_name(nb_cpu_level_t level)
{
    return (unsigned)level < NB_CPU_LEVEL_COUNT ? level_names[level] : "?";
}

int nb_cpu_level_parse(const char *name, nb_cpu_level_t *out)
{
    for (int l = 0; name && l < NB_CPU_LEVEL_COUNT; l++)
        if (strcmp(name, level_names[l]) == 0) {
            *out = (nb_cpu_level_t)l;
            return 0;
        }
    return NB_EINVAL;
}

static const nb_backend_i *level_iface(nb_cpu_level_t level)
{
    switch (level) {
    case NB_CPU_GENERIC: return &nb_cpu_iface_generic;
#if defined(__x86_64__)
    case NB_CPU_AVX2: return &nb_cpu_iface_avx2;
    case NB_CPU_AVX512: return &nb_cpu_iface_avx512;
#endif
    default: return NULL;
    }
}

#if defined(__x86_64__)
/* F16C from CPUID leaf 1 (ECX bit 29): clang's __builtin_cpu_supports does
 * not know the name. Its registers are the AVX ones, whose OS support the
 * avx2 check below already requires. */
static bool cpu_has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#endif

/* The processor's features, as the kernels' compiler flags need them
 * (Makefile ISAFLAGS_avx2, ISAFLAGS_avx512). __builtin_cpu_supports also
 * checks that the OS saves the wide registers (XGETBV). */
static bool cpu_has_level(nb_cpu_level_t level)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
    bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    switch (level) {
    case NB_CPU_GENERIC: return true;
    case NB_CPU_AVX2: return avx2;
    case NB_CPU_AVX512: return avx512;
    default: return false;
    }
#else
    return level == NB_CPU_GENERIC;
#endif
}

bool nb_cpu_level_usable(nb_cpu_level_t level)
{
    return level_iface(level) && cpu_has_level(level);
}

nb_cpu_level_t nb_cpu_level_best(void)
{
    nb_cpu_level_t best = NB_CPU_GENERIC;
    for (int l = 1; l < NB_CPU_LEVEL_COUNT; l++)
        if (nb_cpu_level_usable((nb_cpu_level_t)l))
            best = (nb_cpu_level_t)l;
    return best;
}

/* Instructions the baseline objects may already use, from the build's
 * ARCHFLAGS: a -march=native build carried to an older host would otherwise
 * die with SIGILL somewhere in the middle of a job. */
static const char *baseline_missing(void)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
#define NB_NEED(macro_defined, feature)                                                     \
    if ((macro_defined) && !__builtin_cpu_supports(feature))                                \
        return "this binary was built for processors with " feature                         \
               " (ARCHFLAGS, e.g. -march=native) and this one lacks it; rebuild with the "  \
               "default ARCHFLAGS";
#if defined(__SSE4_2__)
    NB_NEED(1, "sse4.2")
#endif
#if defined(__POPCNT__)
    NB_NEED(1, "popcnt")
#endif
#if defined(__AVX__)
    NB_NEED(1, "avx")
#endif
#if defined(__AVX2__)
    NB_NEED(1, "avx2")
#endif
#if defined(__FMA__)
    NB_NEED(1, "fma")
#endif
#if defined(__F16C__)
    if (!cpu_has_f16c())
        return "this binary was built for processors with f16c (ARCHFLAGS, e.g. -march=native) and this "
               "one lacks it; rebuild with the default ARCHFLAGS";
#endif
#if defined(__BMI2__)
    NB_NEED(1, "bmi2")
#endif
#if defined(__AVX512F__)
    NB_NEED(1, "avx512f")
#endif
#if defined(__AVX512BW__)
    NB_NEED(1, "avx512bw")
#endif
#if defined(__AVX512VL__)
    NB_NEED(1, "avx512vl")
#endif
#undef NB_NEED
#endif
    return NULL;
}

static struct {
    pthread_once_t once;
    int rc;
    nb_cpu_level_t level;
    const char *why;
    char msg[256];
} sel = { .once = PTHREAD_ONCE_INIT };

static void select_once(void)
{
    sel.level = nb_cpu_level_best();
    if ((sel.why = baseline_missing())) {
        sel.rc = NB_EINVAL;
        return;
    }
    const char *env = getenv(NB_CPU_LEVEL_ENV);
    if (!env || !*env)
        return;
    nb_cpu_level_t want;
    if (nb_cpu_level_parse(env, &want) != 0) {
        snprintf(sel.msg, sizeof sel.msg, NB_CPU_LEVEL_ENV "='%.64s' names no kernel level "
                 "(generic, avx2 or avx512)", env);
    } else if (!nb_cpu_level_usable(want)) {
        snprintf(sel.msg, sizeof sel.msg, NB_CPU_LEVEL_ENV "=%s, but this processor and build "
                 "run at most %s", env, nb_cpu_level_name(sel.level));
    } else {
        sel.level = want;
        return;
    }
    sel.rc = NB_EINVAL;
    sel.why = sel.msg;
}

int nb_cpu_level_select(nb_cpu_level_t *out, const char **why)
{
    pthread_once(&sel.once, select_once);
    if (sel.rc != 0) {
        if (why)
            *why = sel.why;
        return sel.rc;
    }
    *out = sel.level;
    return 0;
}

nb_backend_t *nb_cpu_backend_new_at(nb_cpu_level_t level)
{
    if (!nb_cpu_level_usable(level))
        return NULL;
    nb_backend_t *be = calloc(1, sizeof *be);
    if (!be)
        return NULL;
    be->iface = level_iface(level);
    return be;
}

nb_backend_t *nb_cpu_backend_new(void)
{
    nb_cpu_level_t level;
    if (nb_cpu_level_select(&level, NULL) != 0)
        return NULL;
    return nb_cpu_backend_new_at(level);
}

const char *nb_cpu_blas_core(void)
{
    const char *core = openblas_get_corename();
    return core && *core ? core : "unknown";
}

bool nb_cpu_blas_advice(char *buf, size_t cap)
{
    const char *set = getenv("OPENBLAS_CORETYPE");
    if (set && *set)
        return false;
    /* OpenBLAS's x86-64 core types without AVX kernels */
    static const char *const pre_avx[] = { "Prescott", "Core2", "Penryn", "Dunnington", "Nehalem",
                                           "Atom", "Athlon", "Opteron", "Opteron_SSE3", "Barcelona",
                                           "Bobcat", "Nano", "Katmai", "Coppermine", "Northwood", "Banias" };
    const char *core = nb_cpu_blas_core();
    bool old = false;
    for (size_t i = 0; i < sizeof pre_avx / sizeof pre_avx[0]; i++)
        old = old || strcasecmp(core, pre_avx[i]) == 0;
    const char *want = cpu_has_level(NB_CPU_AVX512) ? "SkylakeX" : cpu_has_level(NB_CPU_AVX2) ? "Haswell" : NULL;
    if (!old || !want)
        return false;
    snprintf(buf, cap, "OpenBLAS runs its %s kernels on this processor, which has %s; set "
             "OPENBLAS_CORETYPE=%s for much faster matrix products (docs/kernels.md)",
             core, want[0] == 'S' ? "AVX-512" : "AVX2", want);
    return true;
}

static struct {
    pthread_once_t once;
    int total;
} blas_threads = { PTHREAD_ONCE_INIT, 1 };

static void blas_threads_once(void)
{
    int n = openblas_get_num_threads();
    blas_threads.total = n > 0 ? n : 1;
}

int nb_cpu_blas_threads_total(void)
{
    pthread_once(&blas_threads.once, blas_threads_once);
    return blas_threads.total;
}

int nb_cpu_blas_share(int callers)
{
    int total = nb_cpu_blas_threads_total();
    int each = callers > 1 ? total / callers : total;
    if (each < 1)
        each = 1;
    openblas_set_num_threads(each);
    return each;
}

void nb_cpu_describe(char *buf, size_t cap)
{
    nb_cpu_level_t level;
    const char *name = nb_cpu_level_select(&level, NULL) == 0 ? nb_cpu_level_name(level) : "invalid";
    snprintf(buf, cap, "%s blas=%s", name, nb_cpu_blas_core());
}
