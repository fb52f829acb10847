/*
 * fenced_backend.c - the CPU backend behind device pointers the host cannot
 * dereference (fenced_backend.h): a PROT_NONE reservation gives out the
 * addresses, a readable mapping of the same size holds the data, and each
 * entry of the table translates its pointer arguments before it calls the
 * CPU backend's.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "tests/support/fenced_backend.h"

typedef struct {
    nb_backend_t *cpu;  /* the real ops */
    char *fence;        /* PROT_NONE: the addresses nb_be_alloc gives out */
    char *real;         /* the memory behind them, same offsets */
    size_t size;        /* bytes of each mapping */
    size_t used;        /* bump pointer */
} fenced_t;

#define MAX_FENCES 16
static struct {
    char *base;
    size_t size;
} fences[MAX_FENCES];

static fenced_t *ctx(nb_backend_t *be) { return be->ctx; }

/* The real address of device pointer p (NULL stays NULL); aborts on a
 * pointer this backend did not give out. */
static void *tr(nb_backend_t *be, const void *p)
{
    fenced_t *f = ctx(be);
    if (!p)
        return NULL;
    const char *c = p;
    if (c < f->fence || c >= f->fence + f->size) {
        fprintf(stderr, "fenced backend: %p is not device memory of this backend\n", p);
        abort();
    }
    return f->real + (c - f->fence);
}
#define T(p) tr(be, (p))
#define CPU (ctx(be)->cpu)
#define OPS (ctx(be)->cpu->iface)

void *nb_fenced_real(nb_backend_t *be, const void *p) { return tr(be, p); }

static void fb_free(nb_backend_t *be)
{
    fenced_t *f = ctx(be);
    for (int i = 0; i < MAX_FENCES; i++)
        if (fences[i].base == f->fence)
            fences[i].base = NULL;
    munmap(f->fence, f->size);
    munmap(f->real, f->size);
    nb_be_free(f->cpu);
    free(f);
    free(be);
}

static void *fb_alloc(nb_backend_t *be, size_t bytes)
{
    fenced_t *f = ctx(be);
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded < bytes || rounded == 0)
        rounded = 64;
    if (rounded > f->size - f->used)
        return NULL;
    void *p = f->fence + f->used;
    f->used += rounded;
    return p;
}

static void fb_dealloc(nb_backend_t *be, void *p) { (void)tr(be, p); }
static void fb_memset0(nb_backend_t *be, void *d, size_t n) { OPS->memset0(CPU, T(d), n); }
static void fb_h2d(nb_backend_t *be, void *d, const void *s, size_t n) { OPS->copy_h2d(CPU, T(d), s, n); }
static void fb_d2h(nb_backend_t *be, void *d, const void *s, size_t n) { OPS->copy_d2h(CPU, d, T(s), n); }
static void fb_d2d(nb_backend_t *be, void *d, const void *s, size_t n) { OPS->copy_d2d(CPU, T(d), T(s), n); }
static void fb_sync(nb_backend_t *be) { OPS->sync(CPU); }

static void fb_matmul(nb_backend_t *be, bool ta, bool tb, int m, int n, int k, float alpha,
                      const float *a, int lda, int64_t sa, const float *b, int ldb, int64_t sb,
                      float beta, float *c, int ldc, int64_t sc, int batch)
{
    OPS->matmul(CPU, ta, tb, m, n, k, alpha, T(a), lda, sa, T(b), ldb, sb, beta, T(c), ldc, sc, batch);
}
static int fb_set_precision(nb_backend_t *be, nb_precision_t p) { return nb_be_set_precision(CPU, p); }
static void fb_add(nb_backend_t *be, float *y, const float *x, float alpha, size_t n)
{ OPS->add(CPU, T(y), T(x), alpha, n); }
static void fb_scale(nb_backend_t *be, float *y, float alpha, size_t n) { OPS->scale(CPU, T(y), alpha, n); }
static void fb_bias_add(nb_backend_t *be, float *y, const float *b, int rows, int cols)
{ OPS->bias_add(CPU, T(y), T(b), rows, cols); }
static void fb_bias_grad(nb_backend_t *be, float *db, const float *dy, int rows, int cols)
{ OPS->bias_grad(CPU, T(db), T(dy), rows, cols); }
static void fb_embed_fwd(nb_backend_t *be, float *out, const int32_t *tok, const float *wte, const float *wpe,
                         int B, int Tn, int C)
{ OPS->embed_fwd(CPU, T(out), T(tok), T(wte), T(wpe), B, Tn, C); }
static void fb_embed_bwd(nb_backend_t *be, float *dwte, float *dwpe, const float *dout, const int32_t *tok,
                         int B, int Tn, int C)
{ OPS->embed_bwd(CPU, T(dwte), T(dwpe), T(dout), T(tok), B, Tn, C); }
static void fb_token_shift(nb_backend_t *be, float *out, const float *x, const uint8_t *mask, bool causal,
                           bool backward, int B, int Tn, int C)
{ OPS->token_shift(CPU, T(out), T(x), T(mask), causal, backward, B, Tn, C); }
static void fb_ln_fwd(nb_backend_t *be, float *out, float *mean, float *rstd, const float *x, const float *w,
                      const float *b, float eps, int N, int C)
{ OPS->layernorm_fwd(CPU, T(out), T(mean), T(rstd), T(x), T(w), T(b), eps, N, C); }
static void fb_ln_bwd(nb_backend_t *be, float *dx, float *dw, float *db, const float *dout, const float *x,
                      const float *w, const float *mean, const float *rstd, int N, int C)
{ OPS->layernorm_bwd(CPU, T(dx), T(dw), T(db), T(dout), T(x), T(w), T(mean), T(rstd), N, C); }
static void fb_gelu_fwd(nb_backend_t *be, float *out, const float *x, size_t n) { OPS->gelu_fwd(CPU, T(out), T(x), n); }
static void fb_gelu_bwd(nb_backend_t *be, float *dx, const float *x, const float *dout, size_t n)
{ OPS->gelu_bwd(CPU, T(dx), T(x), T(dout), n); }
static void fb_gelu_erf_fwd(nb_backend_t *be, float *out, const float *x, size_t n)
{ OPS->gelu_erf_fwd(CPU, T(out), T(x), n); }
static void fb_gelu_erf_bwd(nb_backend_t *be, float *dx, const float *x, const float *dout, size_t n)
{ OPS->gelu_erf_bwd(CPU, T(dx), T(x), T(dout), n); }
static void fb_attn_fwd(nb_backend_t *be, float *out, float *att, const float *qkv, const uint8_t *mask,
                        bool causal, int B, int Tn, int C, int NH)
{ OPS->attention_fwd(CPU, T(out), T(att), T(qkv), T(mask), causal, B, Tn, C, NH); }
static void fb_attn_bwd(nb_backend_t *be, float *dqkv, const float *dout, const float *qkv, const float *att,
                        const uint8_t *mask, bool causal, int B, int Tn, int C, int NH)
{ OPS->attention_bwd(CPU, T(dqkv), T(dout), T(qkv), T(att), T(mask), causal, B, Tn, C, NH); }
static void fb_xattn_fwd(nb_backend_t *be, float *out, float *att, const float *q, const float *kv,
                         const uint8_t *mask, int B, int Tn, int S, int C, int NH)
{ OPS->xattn_fwd(CPU, T(out), T(att), T(q), T(kv), T(mask), B, Tn, S, C, NH); }
static void fb_xattn_bwd(nb_backend_t *be, float *dq, float *dkv, const float *dout, const float *q,
                         const float *kv, const float *att, const uint8_t *mask, int B, int Tn, int S, int C, int NH)
{ OPS->xattn_bwd(CPU, T(dq), T(dkv), T(dout), T(q), T(kv), T(att), T(mask), B, Tn, S, C, NH); }
static void fb_xent(nb_backend_t *be, float *losses, float *dlogits, const float *logits, const int32_t *targets,
                    float scale, int N, int V)
{ OPS->xent_fwd_bwd(CPU, T(losses), T(dlogits), T(logits), T(targets), scale, N, V); }
static void fb_sumsq(nb_backend_t *be, double *out_host, const float *x, size_t n)
{ OPS->sumsq(CPU, out_host, T(x), n); }
static void fb_adamw(nb_backend_t *be, float *p, const float *g, float *m, float *v, size_t n, float lr, float b1,
                     float b2, float eps, float wd, float gscale, int step)
{ OPS->adamw(CPU, T(p), T(g), T(m), T(v), n, lr, b1, b2, eps, wd, gscale, step); }

static const nb_backend_i fenced_iface = {
    .name = "fenced-cpu",
    .kind = NB_DEV_CUDA, /* what the model code must assume: not host memory */
    .free = fb_free,
    .alloc = fb_alloc,
    .dealloc = fb_dealloc,
    .memset0 = fb_memset0,
    .copy_h2d = fb_h2d,
    .copy_d2h = fb_d2h,
    .copy_d2d = fb_d2d,
    .sync = fb_sync,
    .matmul = fb_matmul,
    .set_precision = fb_set_precision,
    .add = fb_add,
    .scale = fb_scale,
    .bias_add = fb_bias_add,
    .bias_grad = fb_bias_grad,
    .embed_fwd = fb_embed_fwd,
    .embed_bwd = fb_embed_bwd,
    .token_shift = fb_token_shift,
    .layernorm_fwd = fb_ln_fwd,
    .layernorm_bwd = fb_ln_bwd,
    .gelu_fwd = fb_gelu_fwd,
    .gelu_bwd = fb_gelu_bwd,
    .gelu_erf_fwd = fb_gelu_erf_fwd,
    .gelu_erf_bwd = fb_gelu_erf_bwd,
    .attention_fwd = fb_attn_fwd,
    .attention_bwd = fb_attn_bwd,
    .xattn_fwd = fb_xattn_fwd,
    .xattn_bwd = fb_xattn_bwd,
    .attention_state_floats = NULL, /* the CPU backend's: B*NH*T*S */
    .xent_fwd_bwd = fb_xent,
    .sumsq = fb_sumsq,
    .adamw = fb_adamw,
    .codec = NULL,
};

nb_backend_t *nb_fenced_backend_new(size_t bytes)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t size = (bytes + (size_t)page - 1) & ~((size_t)page - 1);
    int slot = -1;
    for (int i = 0; i < MAX_FENCES && slot < 0; i++)
        if (!fences[i].base)
            slot = i;
    if (slot < 0 || size == 0)
        return NULL;
    nb_backend_t *be = calloc(1, sizeof *be);
    fenced_t *f = calloc(1, sizeof *f);
    if (!be || !f)
        goto err;
    f->size = size;
    f->fence = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    f->real = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (f->fence == MAP_FAILED || f->real == MAP_FAILED)
        goto err;
    f->cpu = nb_cpu_backend_new();
    if (!f->cpu)
        goto err;
    fences[slot].base = f->fence;
    fences[slot].size = size;
    be->iface = &fenced_iface;
    be->ctx = f;
    return be;
err:
    if (f) {
        if (f->fence && f->fence != MAP_FAILED)
            munmap(f->fence, size);
        if (f->real && f->real != MAP_FAILED)
            munmap(f->real, size);
        free(f);
    }
    free(be);
    return NULL;
}

static struct sigaction prev_segv; /* the handler nb_fenced_trap replaced */

/* The handler before ours: cmocka's reports a failed test and goes on. */
static void chain(int sig, siginfo_t *si, void *uc)
{
    if (prev_segv.sa_flags & SA_SIGINFO) {
        prev_segv.sa_sigaction(sig, si, uc);
        return;
    }
    if (prev_segv.sa_handler != SIG_DFL && prev_segv.sa_handler != SIG_IGN) {
        prev_segv.sa_handler(sig);
        return;
    }
    signal(sig, SIG_DFL); /* none: a crash, the status says so */
    raise(sig);
}

static void on_segv(int sig, siginfo_t *si, void *uc)
{
    const char *a = si->si_addr;
    for (int i = 0; i < MAX_FENCES; i++)
        if (fences[i].base && a >= fences[i].base && a < fences[i].base + fences[i].size) {
            static const char msg[] = "host access to device memory: a pointer of the fenced backend was "
                                      "dereferenced on the host\n";
            ssize_t w = write(2, msg, sizeof msg - 1);
            (void)w;
            if (!(prev_segv.sa_flags & SA_SIGINFO) &&
                (prev_segv.sa_handler == SIG_DFL || prev_segv.sa_handler == SIG_IGN))
                _exit(1);
            break;
        }
    chain(sig, si, uc);
}

void nb_fenced_trap(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    struct sigaction old;
    sigaction(SIGSEGV, &sa, &old);
    if (old.sa_sigaction != on_segv || !(old.sa_flags & SA_SIGINFO))
        prev_segv = old; /* installed twice: keep the first one's predecessor */
}
