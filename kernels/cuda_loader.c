/*
 * cuda_loader.c - nb_cuda_backend_new: the CUDA backend (the .cu files of
 * kernels/cuda, linked with cuBLAS and the CUDA runtime) is a module of its
 * own, libnebula-cuda.so, loaded on the first request for a CUDA device.
 *
 * Why a module: cuBLAS (libcublasLt) zero-initialises about 80 MiB of static
 * state when it is loaded and maps about 60 MiB of code, so every process
 * linked with it - a coordinator, a CPU-only stage, nebulactl - held about
 * 140 MiB resident for nothing (docs/operations.md, "Memory"). Loaded on
 * demand, only a daemon that runs on a GPU pays it.
 *
 * Where the module is looked for: $NEBULA_CUDA_MODULE when it is set (also
 * how the tests load the emulated device, libnebula-cuda-emu.so, in any
 * build), and nowhere else then; else, in a build with CUDA, relative to the
 * executable: ../lib/nebula/ (installed: PREFIX/bin and
 * PREFIX/lib/nebula), ../lib/ (build/bin, build/bench), ../../lib/
 * (build/tests/DIR).
 *
 * The module also exports the NCCL all-reduce of CUDA replicas
 * (nb_cuda_allreduce_new, kernels/allreduce.h) and nb_cuda_make_current
 * (a replica's thread makes its device current), found here beside the
 * backend, so that only the module links NCCL.
 *
 * Thread: any (loaded once, under a pthread_once).
 */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "kernels/allreduce.h"
#include "kernels/backend.h"

#define MODULE "libnebula-cuda.so"

typedef nb_backend_t *(*new_fn)(int device, const char **why);
typedef nb_allreduce_t *(*allreduce_new_fn)(nb_backend_t *const *bes, int n, const char **why);

static pthread_once_t once = PTHREAD_ONCE_INIT;
static new_fn module_new;
static allreduce_new_fn module_allreduce_new; /* NULL: a module without it */
static int (*module_make_current)(nb_backend_t *be);
static char load_err[512];

static void *try_open(const char *path, char *tried, size_t cap)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        size_t n = strlen(tried);
        snprintf(tried + n, cap - n, "%s%s", n ? "; " : "", dlerror());
    }
    return h;
}

static void load(void)
{
    char tried[384] = "";
    void *h = NULL;
    const char *env = getenv("NEBULA_CUDA_MODULE");
    bool named = env && env[0];
    if (named)
        h = try_open(env, tried, sizeof tried);
    char exe[PATH_MAX];
#ifdef NB_HAVE_CUDA
    /* a module named in the environment that fails is the answer: no
     * other module is tried in its place */
    ssize_t n = h || named ? -1 : readlink("/proc/self/exe", exe, sizeof exe - 1);
#else
    ssize_t n = -1; /* no module was built next to the executable */
    if (!h && !tried[0]) {
        snprintf(load_err, sizeof load_err, "built without CUDA (nvcc not found at build time)");
        return;
    }
#endif
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash)
            *slash = 0;
        static const char *const rel[] = { "/../lib/nebula/" MODULE, "/../lib/" MODULE, "/../../lib/" MODULE };
        for (size_t i = 0; !h && i < sizeof rel / sizeof rel[0]; i++) {
            char path[PATH_MAX + 64];
            snprintf(path, sizeof path, "%s%s", exe, rel[i]);
            if (access(path, F_OK) == 0)
                h = try_open(path, tried, sizeof tried);
        }
    }
    if (!h) {
        snprintf(load_err, sizeof load_err, "cannot load the CUDA module %s%s%s", MODULE, tried[0] ? ": " : " (not found next to the executable; set NEBULA_CUDA_MODULE)", tried);
        return;
    }
    *(void **)&module_new = dlsym(h, "nb_cuda_backend_new");
    *(void **)&module_allreduce_new = dlsym(h, "nb_cuda_allreduce_new");
    *(void **)&module_make_current = dlsym(h, "nb_cuda_make_current");
    if (!module_new)
        snprintf(load_err, sizeof load_err, "%s has no nb_cuda_backend_new", MODULE);
}

nb_backend_t *nb_cuda_backend_new(int device, const char **why)
{
    pthread_once(&once, load);
    if (!module_new) {
        if (why)
            *why = load_err;
        return NULL;
    }
    return module_new(device, why);
}

nb_allreduce_t *nb_cuda_allreduce_new(nb_backend_t *const *bes, int n, const char **why)
{
    pthread_once(&once, load);
    if (!module_new || !module_allreduce_new) {
        if (why)
            *why = !module_new ? load_err : "the CUDA module has no NCCL all-reduce (nb_cuda_allreduce_new)";
        return NULL;
    }
    return module_allreduce_new(bes, n, why);
}

int nb_cuda_make_current(nb_backend_t *be)
{
    pthread_once(&once, load);
    if (!module_make_current || !be || be->iface->kind != NB_DEV_CUDA)
        return NB_EINVAL;
    return module_make_current(be);
}
