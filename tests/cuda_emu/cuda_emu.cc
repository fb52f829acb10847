/*
 * cuda_emu.cc - the host emulation of CUDA declared in cuda_emu.h: the fiber
 * scheduler that runs a block's threads with real barriers and shuffles, the
 * runtime API over host memory, and cuBLAS's sgemm over OpenBLAS.
 *
 * Environment:
 *   NB_CUDA_EMU_ORDER=reverse  run a block's threads in reverse order between
 *                              barriers (default: thread order);
 *   NB_CUDA_EMU_DEVICES=N      the number of devices reported (default 1, at
 *                              most 16).
 */
#include "tests/cuda_emu/cuda_emu.h"

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

/* AddressSanitizer must be told when the stack changes under it (else it
 * reports false errors on the fibers' stacks). */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define ASAN_START_SWITCH(save, bottom, size) __sanitizer_start_switch_fiber((save), (bottom), (size))
#define ASAN_FINISH_SWITCH(save, bottom, size) __sanitizer_finish_switch_fiber((save), (bottom), (size))
#else
#define ASAN_START_SWITCH(save, bottom, size) ((void)(save), (void)(bottom), (void)(size))
#define ASAN_FINISH_SWITCH(save, bottom, size) ((void)(save), (void)(bottom), (void)(size))
#endif

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

/* ---- context switch ------------------------------------------------------------
 * On x86-64 a fiber switch saves the callee-saved registers on the old stack
 * and loads the new stack pointer: a few nanoseconds, where swapcontext makes
 * a system call per switch (a million-thread kernel with a few barriers took
 * seconds with it). Other architectures use ucontext. */
#if defined(__x86_64__)
extern "C" void nb_emu_switch(void **save_sp, void *new_sp);
__asm__(".pushsection .text\n"
        ".globl nb_emu_switch\n"
        ".hidden nb_emu_switch\n"
        ".type nb_emu_switch,@function\n"
        "nb_emu_switch:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size nb_emu_switch, .-nb_emu_switch\n"
        ".popsection\n");
struct emu_context {
    void *sp;
};
#else
struct emu_context {
    ucontext_t uc;
};
#endif

namespace {

/* ---- the fiber scheduler ----------------------------------------------------- */

enum fiber_state { RUNNABLE, AT_BLOCK_BARRIER, AT_WARP_BARRIER, DONE };
enum { MAX_THREADS = 1024, WARPS = MAX_THREADS / 32, STACK_BYTES = 256 << 10, GUARD = 4096 };

struct fiber {
    emu_context ctx;
    char *stack; /* mmap'd, STACK_BYTES + GUARD, guard page at the bottom */
    fiber_state state;
    unsigned wait_gen;
    uint3 tid;
    int warp, lane;
    void *asan_save; /* the fiber's fake stack while it is switched out */
};

struct block_state {
    fiber f[MAX_THREADS];
    int n, cur;
    emu_context sched;
    int live, arrived;
    unsigned gen;
    int warp_live[WARPS], warp_arrived[WARPS];
    unsigned warp_gen[WARPS];
    uint64_t slots[WARPS][32];
    void (*body)(void *);
    void *body_ctx;
    std::vector<unsigned char> dyn;
    bool reverse;
    void *sched_asan_save;         /* the scheduler's fake stack while a fiber runs */
    const void *sched_stack_bottom; /* the scheduler's stack, for switching back */
    size_t sched_stack_size;

    block_state()
        : n(0), cur(-1), live(0), arrived(0), gen(0), body(nullptr), body_ctx(nullptr),
          sched_asan_save(nullptr), sched_stack_bottom(nullptr), sched_stack_size(0)
    {
        for (auto &x : f) {
            x.stack = nullptr;
            x.asan_save = nullptr;
        }
        const char *o = getenv("NB_CUDA_EMU_ORDER");
        reverse = o && !strcmp(o, "reverse");
    }
    ~block_state()
    {
        for (auto &x : f)
            if (x.stack)
                munmap(x.stack, STACK_BYTES + GUARD);
    }
};

/* One per host thread, freed (fiber stacks unmapped) when the thread ends:
 * replicas launch from threads that come and go with every pass. */
thread_local std::unique_ptr<block_state> tls_block;

block_state &B()
{
    if (!tls_block)
        tls_block.reset(new block_state());
    return *tls_block;
}

[[noreturn]] void die(const char *what)
{
    fprintf(stderr, "nebula cuda emulation: %s\n", what);
    abort();
}

fiber &current()
{
    block_state &b = B();
    if (b.cur < 0)
        die("a device function was called outside a kernel");
    return b.f[b.cur];
}

/* Saves the running context into from and resumes to. */
inline void switch_context(emu_context *from, emu_context *to)
{
#if defined(__x86_64__)
    nb_emu_switch(&from->sp, to->sp);
#else
    if (swapcontext(&from->uc, &to->uc) != 0)
        die("swapcontext failed");
#endif
}

void yield_to_scheduler()
{
    block_state &b = B();
    fiber &f = b.f[b.cur];
    ASAN_START_SWITCH(&f.asan_save, b.sched_stack_bottom, b.sched_stack_size);
    switch_context(&f.ctx, &b.sched);
    ASAN_FINISH_SWITCH(f.asan_save, &b.sched_stack_bottom, &b.sched_stack_size);
}

void release_block_if_complete(block_state &b)
{
    if (b.arrived > 0 && b.arrived == b.live) {
        b.gen++;
        b.arrived = 0;
    }
}

void release_warp_if_complete(block_state &b, int w)
{
    if (b.warp_arrived[w] > 0 && b.warp_arrived[w] == b.warp_live[w]) {
        b.warp_gen[w]++;
        b.warp_arrived[w] = 0;
    }
}

void fiber_entry(int idx)
{
    block_state &b = B();
    ASAN_FINISH_SWITCH(nullptr, &b.sched_stack_bottom, &b.sched_stack_size);
    b.body(b.body_ctx);
    fiber &f = b.f[idx];
    f.state = DONE;
    b.live--;
    b.warp_live[f.warp]--;
    release_block_if_complete(b);
    release_warp_if_complete(b, f.warp);
    ASAN_START_SWITCH(nullptr, b.sched_stack_bottom, b.sched_stack_size); /* this stack is done */
    emu_context dead;
    switch_context(&dead, &b.sched); /* never comes back */
    die("a finished fiber was resumed");
}

bool runnable(const block_state &b, const fiber &f)
{
    switch (f.state) {
    case RUNNABLE: return true;
    case AT_BLOCK_BARRIER: return f.wait_gen != b.gen;
    case AT_WARP_BARRIER: return f.wait_gen != b.warp_gen[f.warp];
    default: return false;
    }
}

/* The first code a fiber runs: the thread body of the block's current fiber. */
void fiber_trampoline() { fiber_entry(B().cur); }

/* Gives fiber i a fresh context at fiber_trampoline (apart from run_block:
 * getcontext returns twice, which the compiler must not see in a loop). */
__attribute__((noinline)) void init_fiber(block_state &b, int i)
{
    fiber &f = b.f[i];
    if (!f.stack) {
        void *m = mmap(nullptr, STACK_BYTES + GUARD, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
        if (m == MAP_FAILED)
            die("cannot map a fiber stack");
        mprotect(m, GUARD, PROT_NONE);
        f.stack = (char *)m;
    }
    f.tid.x = (unsigned)i % blockDim.x;
    f.tid.y = ((unsigned)i / blockDim.x) % blockDim.y;
    f.tid.z = (unsigned)i / (blockDim.x * blockDim.y);
    f.warp = i / 32;
    f.lane = i % 32;
    f.state = RUNNABLE;
    b.warp_live[f.warp]++;
#if defined(__x86_64__)
    /* The frame nb_emu_switch pops: six registers, then the return address
     * fiber_trampoline, 16-byte aligned so that the trampoline starts with
     * the stack as after a call; above it a null return address. */
    void **sp = (void **)((uintptr_t)(f.stack + GUARD + STACK_BYTES) & ~(uintptr_t)15);
    *--sp = nullptr;
    *--sp = (void *)fiber_trampoline;
    for (int r = 0; r < 6; r++)
        *--sp = nullptr;
    f.ctx.sp = sp;
#else
    getcontext(&f.ctx.uc);
    f.ctx.uc.uc_stack.ss_sp = f.stack + GUARD;
    f.ctx.uc.uc_stack.ss_size = STACK_BYTES;
    f.ctx.uc.uc_link = nullptr;
    makecontext(&f.ctx.uc, (void (*)())fiber_trampoline, 0);
#endif
}

void run_block(block_state &b)
{
    int n = b.n;
    b.live = n;
    b.arrived = 0;
    for (int w = 0; w < WARPS; w++) {
        b.warp_live[w] = 0;
        b.warp_arrived[w] = 0;
    }
    for (int i = 0; i < n; i++)
        init_fiber(b, i);
    while (b.live > 0) {
        bool progressed = false;
        for (int k = 0; k < n; k++) {
            int i = b.reverse ? n - 1 - k : k;
            fiber &f = b.f[i];
            if (!runnable(b, f))
                continue;
            f.state = RUNNABLE;
            threadIdx = f.tid;
            b.cur = i;
            ASAN_START_SWITCH(&b.sched_asan_save, f.stack + GUARD, STACK_BYTES);
            switch_context(&b.sched, &f.ctx);
            ASAN_FINISH_SWITCH(b.sched_asan_save, nullptr, nullptr);
            b.cur = -1;
            progressed = true;
        }
        if (!progressed) {
            int at_block = 0, at_warp = 0;
            for (int i = 0; i < n; i++) {
                at_block += b.f[i].state == AT_BLOCK_BARRIER;
                at_warp += b.f[i].state == AT_WARP_BARRIER;
            }
            fprintf(stderr,
                    "nebula cuda emulation: barrier deadlock in block (%u,%u,%u): %d of %d threads live, "
                    "%d at __syncthreads, %d at a warp barrier (a barrier inside a branch not every thread takes)\n",
                    blockIdx.x, blockIdx.y, blockIdx.z, b.live, n, at_block, at_warp);
            abort();
        }
    }
}

/* ---- launch configuration limits ---------------------------------------------- */

std::mutex smem_mu;
std::map<const void *, int> smem_optin;
const size_t SMEM_DEFAULT = 48 << 10, SMEM_MAX = 227 << 10;

thread_local cudaError_t last_error = cudaSuccess;

/* ---- devices and memory --------------------------------------------------------- */

thread_local int cur_device = 0;
std::atomic<size_t> allocated{ 0 };
const size_t EMU_MEMORY = (size_t)16 << 30;

int device_count()
{
    static int n = [] {
        const char *e = getenv("NB_CUDA_EMU_DEVICES");
        int v = e ? atoi(e) : 1;
        return v < 1 ? 1 : v > 16 ? 16 : v;
    }();
    return n;
}

/* Device allocations carry their size in a 64-byte header, for the memory
 * accounting, and start filled with 0xff bytes (NaN as floats): a kernel
 * that reads memory nobody wrote shows it. */
const size_t HDR = 256;

void *dev_alloc(size_t bytes)
{
    if (bytes > EMU_MEMORY)
        return nullptr;
    size_t total = HDR + ((bytes + 255) & ~(size_t)255);
    void *p = aligned_alloc(256, total);
    if (!p)
        return nullptr;
    *(size_t *)p = bytes;
    memset((char *)p + HDR, 0xff, bytes);
    allocated += bytes;
    return (char *)p + HDR;
}

void dev_free(void *p)
{
    if (!p)
        return;
    char *base = (char *)p - HDR;
    allocated -= *(size_t *)base;
    free(base);
}

double now_s()
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

} // namespace

struct nb_emu_stream {
    int device;
};
struct nb_emu_event {
    double t;
};
struct nb_emu_blas {
    cudaStream_t stream;
};

namespace nb_emu {

void syncthreads()
{
    block_state &b = B();
    fiber &f = current();
    b.arrived++;
    if (b.arrived == b.live) {
        b.gen++;
        b.arrived = 0;
        /* the last to arrive goes on; the others run when scheduled */
        f.state = AT_BLOCK_BARRIER;
        f.wait_gen = b.gen - 1;
        yield_to_scheduler();
        return;
    }
    f.state = AT_BLOCK_BARRIER;
    f.wait_gen = b.gen;
    yield_to_scheduler();
}

void syncwarp()
{
    block_state &b = B();
    fiber &f = current();
    int w = f.warp;
    b.warp_arrived[w]++;
    f.state = AT_WARP_BARRIER;
    if (b.warp_arrived[w] == b.warp_live[w]) {
        b.warp_gen[w]++;
        b.warp_arrived[w] = 0;
        f.wait_gen = b.warp_gen[w] - 1;
    } else {
        f.wait_gen = b.warp_gen[w];
    }
    yield_to_scheduler();
}

uint64_t shfl_bits(uint64_t mine, int src_lane)
{
    block_state &b = B();
    int w = current().warp;
    b.slots[w][current().lane] = mine;
    syncwarp();
    uint64_t r = b.slots[w][src_lane & 31];
    syncwarp(); /* nobody overwrites a slot before every lane has read */
    return r;
}

int lane_id() { return current().lane; }

void set_reverse(bool reverse) { B().reverse = reverse; }

void *dyn_smem()
{
    block_state &b = B();
    return b.dyn.empty() ? nullptr : b.dyn.data();
}

cudaError_t func_set_smem(const void *fn, int bytes)
{
    if (bytes < 0 || (size_t)bytes > SMEM_MAX)
        return cudaErrorInvalidValue;
    std::lock_guard<std::mutex> g(smem_mu);
    smem_optin[fn] = bytes;
    return cudaSuccess;
}

void run_grid(const void *fn, dim3 grid, dim3 block, size_t smem, void (*body)(void *), void *ctx)
{
    size_t threads = (size_t)block.x * block.y * block.z;
    size_t smem_limit = SMEM_DEFAULT;
    {
        std::lock_guard<std::mutex> g(smem_mu);
        auto it = smem_optin.find(fn);
        if (it != smem_optin.end() && (size_t)it->second > smem_limit)
            smem_limit = (size_t)it->second;
    }
    if (threads == 0 || threads > MAX_THREADS || block.z > 64 || grid.x == 0 || grid.y == 0 ||
        grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535 || smem > smem_limit) {
        last_error = cudaErrorInvalidConfiguration;
        return;
    }
    block_state &b = B();
    if (b.cur >= 0)
        die("a kernel launched from inside a kernel");
    b.n = (int)threads;
    b.body = body;
    b.body_ctx = ctx;
    gridDim = grid;
    blockDim = block;
    b.dyn.assign(smem, 0xff);
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                blockIdx.x = x;
                blockIdx.y = y;
                blockIdx.z = z;
                if (smem)
                    memset(b.dyn.data(), 0xff, smem);
                run_block(b);
            }
}

} // namespace nb_emu

/* ---- runtime API ------------------------------------------------------------------- */

cudaError_t cudaGetDeviceCount(int *count)
{
    *count = device_count();
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device)
{
    if (device < 0 || device >= device_count())
        return cudaErrorInvalidDevice;
    cur_device = device;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device)
{
    *device = cur_device;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int device)
{
    if (device < 0 || device >= device_count())
        return cudaErrorInvalidDevice;
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "Nebula CUDA emulation (host)");
    p->totalGlobalMem = EMU_MEMORY;
    p->sharedMemPerBlock = SMEM_DEFAULT;
    p->sharedMemPerBlockOptin = SMEM_MAX;
    p->multiProcessorCount = 4;
    p->major = 9;
    p->minor = 0;
    p->maxThreadsPerBlock = MAX_THREADS;
    p->warpSize = 32;
    p->clockRate = 1000000;
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
    size_t used = allocated.load();
    *total_bytes = EMU_MEMORY;
    *free_bytes = used < EMU_MEMORY ? EMU_MEMORY - used : 0;
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }

cudaError_t cudaGetLastError(void)
{
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) { return last_error; }

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    }
    return "unknown error";
}

cudaError_t cudaMalloc(void **p, size_t bytes)
{
    *p = dev_alloc(bytes);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaMallocAsync(void **p, size_t bytes, cudaStream_t) { return cudaMalloc(p, bytes); }

cudaError_t cudaFree(void *p)
{
    dev_free(p);
    return cudaSuccess;
}

cudaError_t cudaFreeAsync(void *p, cudaStream_t) { return cudaFree(p); }

cudaError_t cudaMallocHost(void **p, size_t bytes)
{
    *p = aligned_alloc(256, ((bytes ? bytes : 1) + 255) & ~(size_t)255);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned) { return cudaMallocHost(p, bytes); }

cudaError_t cudaFreeHost(void *p)
{
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind k)
{
    if ((int)k < 0 || (int)k > 4 || (n && (!dst || !src)))
        return cudaErrorInvalidValue;
    if (n)
        memmove(dst, src, n);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind k, cudaStream_t)
{
    return cudaMemcpy(dst, src, n, k);
}

cudaError_t cudaMemset(void *dst, int v, size_t n)
{
    if (n && !dst)
        return cudaErrorInvalidValue;
    if (n)
        memset(dst, v, n);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *dst, int v, size_t n, cudaStream_t) { return cudaMemset(dst, v, n); }

cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, 0); }

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned)
{
    *s = new nb_emu_stream{ cur_device };
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    delete s;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) { return cudaSuccess; }

cudaError_t cudaEventCreate(cudaEvent_t *e)
{
    *e = new nb_emu_event{ 0.0 };
    return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned) { return cudaEventCreate(e); }

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t)
{
    e->t = now_s();
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b)
{
    *ms = (float)((b->t - a->t) * 1e3);
    return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t e)
{
    delete e;
    return cudaSuccess;
}

/* ---- cuBLAS ------------------------------------------------------------------------- */

cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    *h = new nb_emu_blas{ nullptr };
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetAtomicsMode(cublasHandle_t h, cublasAtomicsMode_t)
{
    return h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t)
{
    return h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

const char *cublasGetStatusString(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "the operation completed successfully";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    }
    return "unknown cuBLAS status";
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                         int m, int n, int k, const float *alpha,
                                         const float *A, int lda, long long sa,
                                         const float *Bm, int ldb, long long sb,
                                         const float *beta, float *C, int ldc, long long sc, int batch)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    int arows = ta == CUBLAS_OP_N ? m : k, brows = tb == CUBLAS_OP_N ? k : n;
    if (m < 0 || n < 0 || k < 0 || batch < 0 || lda < (arows > 1 ? arows : 1) ||
        ldb < (brows > 1 ? brows : 1) || ldc < (m > 1 ? m : 1) || ta == CUBLAS_OP_C || tb == CUBLAS_OP_C)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0)
        return CUBLAS_STATUS_SUCCESS;
    for (int i = 0; i < batch; i++)
        cblas_sgemm(CblasColMajor, ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                    tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, m, n, k, *alpha, A + (size_t)i * sa, lda,
                    Bm + (size_t)i * sb, ldb, *beta, C + (size_t)i * sc, ldc);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *Bm, int ldb,
                           const float *beta, float *C, int ldc)
{
    return cublasSgemmStridedBatched(h, ta, tb, m, n, k, alpha, A, lda, 0, Bm, ldb, 0, beta, C, ldc, 0, 1);
}

/* x rounded to keep `bits` mantissa bits (nearest, ties to even); NaN kept. */
static float round_mantissa(float x, int bits)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    int drop = 23 - bits;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        u |= 0x00400000u;
    } else {
        uint32_t half = (1u << (drop - 1)) - 1u, lsb = (u >> drop) & 1u;
        u = (u + half + lsb) & ~((1u << drop) - 1u);
    }
    memcpy(&x, &u, 4);
    return x;
}

/* The rows x cols column-major matrices of src (ld, stride s), rounded. */
static std::vector<float> rounded_copy(const float *src, int rows, int cols, int ld, long long s, int batch, int bits)
{
    std::vector<float> out((size_t)rows * cols * batch);
    for (int i = 0; i < batch; i++)
        for (int c = 0; c < cols; c++)
            for (int r = 0; r < rows; r++)
                out[((size_t)i * cols + c) * rows + r] = round_mantissa(src[i * s + (long long)c * ld + r], bits);
    return out;
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                          int m, int n, int k, const void *alpha,
                                          const void *A, cudaDataType_t at, int lda, long long sa,
                                          const void *Bv, cudaDataType_t bt, int ldb, long long sb,
                                          const void *beta, void *C, cudaDataType_t ct, int ldc, long long sc,
                                          int batch, cublasComputeType_t compute, cublasGemmAlgo_t)
{
    if (at != CUDA_R_32F || bt != CUDA_R_32F || ct != CUDA_R_32F)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    int bits = compute == CUBLAS_COMPUTE_32F ? 23 : compute == CUBLAS_COMPUTE_32F_FAST_16BF ? 7
             : compute == CUBLAS_COMPUTE_32F_FAST_TF32 ? 10 : compute == CUBLAS_COMPUTE_32F_FAST_16F ? 10 : -1;
    if (bits < 0)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    const float *a = (const float *)A, *b = (const float *)Bv;
    if (bits == 23 || m <= 0 || n <= 0 || k <= 0 || batch <= 0)
        return cublasSgemmStridedBatched(h, ta, tb, m, n, k, (const float *)alpha, a, lda, sa, b, ldb, sb,
                                         (const float *)beta, (float *)C, ldc, sc, batch);
    int arows = ta == CUBLAS_OP_N ? m : k, acols = ta == CUBLAS_OP_N ? k : m;
    int brows = tb == CUBLAS_OP_N ? k : n, bcols = tb == CUBLAS_OP_N ? n : k;
    if (lda < arows || ldb < brows)
        return CUBLAS_STATUS_INVALID_VALUE;
    std::vector<float> ra = rounded_copy(a, arows, acols, lda, sa, batch, bits);
    std::vector<float> rb = rounded_copy(b, brows, bcols, ldb, sb, batch, bits);
    return cublasSgemmStridedBatched(h, ta, tb, m, n, k, (const float *)alpha, ra.data(), arows,
                                     (long long)arows * acols, rb.data(), brows, (long long)brows * bcols,
                                     (const float *)beta, (float *)C, ldc, sc, batch);
}
