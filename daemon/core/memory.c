/* memory.c - memory breakdown of the process and allocator bounds; see memory.h. */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/core/memory.h"
#include "kernels/common.h"

/* "Key:   123 kB" -> bytes; 0 when the line does not start with key. */
static int kb_field(const char *line, const char *key, uint64_t *out)
{
    size_t kl = strlen(key);
    if (strncmp(line, key, kl) != 0 || line[kl] != ':')
        return 0;
    unsigned long long v = 0;
    if (sscanf(line + kl + 1, " %llu", &v) != 1)
        return 0;
    *out = strstr(line, "kB") ? (uint64_t)v * 1024u : (uint64_t)v;
    return 1;
}

int nb_mem_sample(const nb_mem_model_t *model, nb_mem_report_t *r)
{
    memset(r, 0, sizeof *r);
    if (model) {
        r->model = *model;
        r->model_total = model->weights + model->gradients + model->optimizer + model->activations;
    }
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 33)
    struct mallinfo2 mi = mallinfo2();
    r->heap_in_use = (uint64_t)mi.uordblks + (uint64_t)mi.hblkhd;
    r->heap_free = (uint64_t)mi.fordblks;
    r->heap_mmapped = (uint64_t)mi.hblkhd;
#endif
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return NB_EIO;
    char line[256];
    uint64_t file = 0, shmem = 0, threads = 0;
    while (fgets(line, sizeof line, f)) {
        if (kb_field(line, "VmRSS", &r->rss) || kb_field(line, "VmHWM", &r->peak_rss) ||
            kb_field(line, "RssAnon", &r->rss_anon) || kb_field(line, "RssFile", &file) ||
            kb_field(line, "RssShmem", &shmem))
            continue;
        kb_field(line, "Threads", &threads);
    }
    fclose(f);
    r->rss_file = file + shmem;
    r->threads = (uint32_t)threads;
    return 0;
}

void nb_mem_bound_process(char *msg, size_t msglen)
{
    msg[0] = 0;
    const char *tun = getenv("GLIBC_TUNABLES");
    if (getenv("MALLOC_ARENA_MAX") || (tun && strstr(tun, "arena_max")))
        return;
#if defined(__GLIBC__)
    if (mallopt(M_ARENA_MAX, NB_MEM_ARENA_MAX) == 1)
        snprintf(msg, msglen, "malloc arenas limited to %d (MALLOC_ARENA_MAX overrides)", NB_MEM_ARENA_MAX);
#endif
}
