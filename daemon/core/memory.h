/*
 * memory.h - where a daemon's memory goes: the model state its runtime holds
 * (weights, gradients, optimizer state, stashed activations), the malloc
 * heap (in use, free, mapped), and the process's resident set (anonymous,
 * file-backed: shared libraries, peak). Reported by `nebulactl status`,
 * the status JSON ("memory") and the nebula_memory_* metrics
 * (docs/operations.md, "Memory").
 *
 * Also bounds the process-wide allocator at start-up (nb_mem_bound_process).
 */
#ifndef NB_MEMORY_H
#define NB_MEMORY_H

#include <stddef.h>
#include <stdint.h>

/* Model state held by a runtime, in bytes (0: none or not known yet). */
typedef struct {
    uint64_t weights, gradients, optimizer, activations;
} nb_mem_model_t;

/* The compute device of a stage daemon as its backend reports it
 * (nb_be_mem_info): the CUDA device's free and total memory
 * (cudaMemGetInfo: every process's allocations count), or the machine's
 * available and physical memory for the CPU. */
typedef struct {
    char name[24];           /* "cpu", "cuda:0"; "" = no device (not a stage) */
    uint64_t free, total;    /* bytes; 0 = not known */
} nb_mem_device_t;

/* One sample of the process. Fields read from /proc are 0 where the file
 * or line is missing; heap fields are 0 under sanitizers (no glibc heap). */
typedef struct {
    nb_mem_model_t model;
    uint64_t model_total;    /* sum of the four model parts */
    uint64_t rss, peak_rss;  /* VmRSS, VmHWM */
    uint64_t rss_anon;       /* RssAnon: heap, stacks, library .bss */
    uint64_t rss_file;       /* RssFile + RssShmem: mapped files (shared libraries) */
    uint64_t heap_in_use;    /* mallinfo2 uordblks + hblkhd: allocated blocks, all arenas */
    uint64_t heap_free;      /* mallinfo2 fordblks: free blocks kept by malloc */
    uint64_t heap_mmapped;   /* mallinfo2 hblkhd: the part of in_use in own mappings */
    uint32_t threads;        /* Threads: of /proc/self/status */
    nb_mem_device_t device;  /* as last set (nb_state_set_device_memory) */
} nb_mem_report_t;

/* Fills r from /proc/self/status and mallinfo2 (model part from *model,
 * which may be NULL). Cheap (one small file read); any thread. Returns 0,
 * or NB_EIO when /proc/self/status cannot be read (the heap part is still
 * filled). */
int nb_mem_sample(const nb_mem_model_t *model, nb_mem_report_t *r);

/* Bounds the allocator for a long-running daemon with a loop thread, a
 * compute thread and libuv workers, unless the operator set the same
 * through the environment (MALLOC_ARENA_MAX, OPENBLAS_NUM_THREADS,
 * GLIBC_TUNABLES):
 *   - at most NB_MEM_ARENA_MAX malloc arenas (glibc would allow 8 per core:
 *     every thread that allocates keeps its own heaps and their free space);
 * Call once from main before any thread starts. Writes what it did into
 * msg (for one log line; "" when nothing). */
#define NB_MEM_ARENA_MAX 2
void nb_mem_bound_process(char *msg, size_t msglen);

#endif
