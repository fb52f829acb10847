/*
 * bench_gpu.c - the GPU figures of the CUDA backend, on device 0 (run in the
 * order 2, 3, 1: the quick parts first, so a slow training step costs only
 * its own figures when the time runs out):
 *
 *  1. GPT-2 124M shape (12 layers, d 768, 12 heads, T 1024, vocabulary
 *     50304, tied embeddings) trained on one GPU through the model API
 *     (kernels/model.h): per step zero_grad, forward with loss, backward,
 *     global gradient norm, clipping and AdamW, as nebula-train does it.
 *     bench gpu_gpt2_124m_fp32_tokens_per_s and gpu_gpt2_124m_fp32_mfu.
 *     MFU = tokens/s * FLOPs per token / peak, FLOPs per token = 6 * params
 *     + 12 * n_layer * d * T (the llm.c / PaLM formula, attention included).
 *     The peak is the device's fp32 non-tensor-core rate (H100/H200 SXM 67
 *     TFLOPS): the backend leaves cuBLAS in its pure fp32 math mode (no
 *     TF32 tensor ops), so that is the rate its matmuls can reach.
 *     NB_GPU_PEAK_TFLOPS overrides the peak (then named "given"). No bf16
 *     line: the model has no bf16 path yet, and a figure for it would be
 *     made up.
 *  2. bench gpu_attention_vs_matmul_ratio: fused attention forward +
 *     backward of one block (causal, the training batch) over the time of
 *     the block's twelve matmuls (qkv, proj, fc, fcproj: forward, input and
 *     weight gradient) with the shapes kernels/model_pass.c uses.
 *  3. bench gpu_codec_<c>_vs_memcpy for fp16, bf16, int8, int4 (blocks of
 *     64) and topk (1%): encode + decode GB/s of fp32 input over device
 *     memcpy GB/s of the same bytes, through the backend's codec primitive
 *     table (kernels/codec/codec_ops.h); with the absolute GB/s beside.
 *
 * `--tiny` (or NB_BENCH_GPU_TINY=1) runs small shapes, so that a test can
 * smoke-run it on the emulated device; its figures mean nothing.
 * Without a CUDA device it prints one "# bench_gpu skipped: why" line and
 * exits 0 (make bench on a CPU machine). Exit 1 when a part failed (error,
 * non-finite loss), 3 when the backend lacks what a part needs (that part
 * prints "# bench_gpu: <part> not run: ..."), else 0.
 * Prints "bench <name> <value> <unit>" lines (docs/benchmarks.md, "GPU").
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/clock.h"
#include "kernels/backend.h"
#include "kernels/codec/codec_ops.h"
#include "kernels/model.h"
#include "kernels/optim.h"

enum { PART_OK = 0, PART_FAILED = 1, PART_UNSUPPORTED = 3 };

typedef struct {
    bool tiny;
    /* timing: at least min_reps repetitions and min_s seconds */
    int min_reps;
    double min_s;
} opts_t;

static void fill(float *p, size_t n, uint64_t seed, float scale)
{
    uint64_t s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        p[i] = scale * (float)((double)(s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
}

/* A device buffer of n floats filled with seeded values in [-scale, scale];
 * NULL on allocation failure. */
static float *dev_random(nb_backend_t *be, size_t n, uint64_t seed, float scale)
{
    float *h = malloc(sizeof(float) * (n ? n : 1));
    float *d = nb_be_alloc(be, sizeof(float) * (n ? n : 1));
    if (!h || !d) {
        free(h);
        if (d)
            nb_be_dealloc(be, d);
        return NULL;
    }
    fill(h, n, seed, scale);
    nb_be_from_host(be, d, h, sizeof(float) * n);
    nb_be_sync(be);
    free(h);
    return d;
}

/* ---- peak FLOPS ----------------------------------------------------------- */

/* The GPU's name from nvidia-smi into name (empty when it cannot tell). */
static void gpu_name(char *name, size_t cap)
{
    name[0] = 0;
    FILE *f = popen("timeout 20 nvidia-smi --query-gpu=name --format=csv,noheader -i 0 2>/dev/null", "r");
    if (!f)
        return;
    if (fgets(name, (int)cap, f))
        name[strcspn(name, "\r\n")] = 0;
    else
        name[0] = 0;
    pclose(f);
}

/* fp32 non-tensor-core peak in TFLOPS of the named GPU (vendor data
 * sheets, dense), 0 when unknown. */
static double fp32_peak_tflops(const char *name)
{
    static const struct { const char *key; double tflops; } table[] = {
        { "H100 PCIe", 51.2 }, { "H100 NVL", 60.0 }, { "H200 NVL", 60.0 },
        { "H100", 67.0 }, { "H200", 67.0 }, { "GH200", 67.0 }, { "H800", 67.0 },
        { "A100", 19.5 }, { "A800", 19.5 }, { "L40S", 91.6 }, { "L4", 30.3 },
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strstr(name, table[i].key))
            return table[i].tflops;
    return 0.0;
}

/* ---- 1. GPT-2 124M training step ------------------------------------------- */

static int bench_gpt2(nb_backend_t *be, const opts_t *o)
{
    nb_model_config_t cfg = { .n_layer = 12, .d_model = 768, .n_head = 12, .d_ff = 4 * 768,
                              .vocab = 50304, .max_seq = 1024, .causal = true,
                              .norm = NB_MODEL_NORM_PRE, .head = NB_MODEL_HEAD_LM,
                              .tie_embeddings = true };
    int T = 1024, real_vocab = 50257;
    static const int batches[] = { 16, 8, 4 };
    int nb = 3;
    if (o->tiny) {
        cfg.n_layer = 1; cfg.d_model = 32; cfg.n_head = 2; cfg.d_ff = 4 * 32;
        cfg.vocab = 67; cfg.max_seq = 17;
        T = 17; real_vocab = 61;
    }
    const char *envb = getenv("NB_BENCH_GPU_B");
    int forced_b = envb ? atoi(envb) : 0;
    nb_part_spec_t spec = nb_part_spec_full(&cfg);
    nb_part_t *p = NULL;
    nb_part_acts_t *a = NULL;
    nb_optim_t *opt = NULL;
    int32_t *htok = NULL, *dtok = NULL, *dtgt = NULL;
    int rc = PART_FAILED, B = 0;
    char err[256];
    int e = nb_part_new(be, &cfg, &spec, 1234, NULL, &p, err, sizeof err);
    if (e) {
        printf("# bench_gpu: gpt2 not run: %s\n", err);
        return e == NB_EINVAL ? PART_UNSUPPORTED : PART_FAILED;
    }
    /* The largest batch that fits (activations of B x 1024 with the logits
     * of 50304 columns). */
    for (int i = 0; i < nb && !a; i++) {
        B = o->tiny ? 2 : forced_b > 0 ? forced_b : batches[i];
        if (nb_part_acts_new(p, B, T, &a))
            a = NULL;
        if (o->tiny || forced_b > 0)
            break;
    }
    if (!a) {
        printf("# bench_gpu: gpt2: no memory for the activations of B=%d T=%d\n", B, T);
        goto out;
    }
    nb_optim_config_t oc = nb_optim_config_default();
    oc.lr = 6e-4f; oc.lr_min = 6e-4f; oc.total_steps = 1000;
    if (nb_part_optim_new(p, &oc, &opt)) {
        printf("# bench_gpu: gpt2: cannot create the optimizer\n");
        goto out;
    }
    size_t nt = (size_t)B * T;
    htok = malloc(sizeof(int32_t) * (nt + 1));
    dtok = nb_be_alloc(be, sizeof(int32_t) * nt);
    dtgt = nb_be_alloc(be, sizeof(int32_t) * nt);
    if (!htok || !dtok || !dtgt) {
        printf("# bench_gpu: gpt2: out of memory for tokens\n");
        goto out;
    }
    /* One fixed batch: next-token targets of a seeded random sequence. */
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < nt + 1; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        htok[i] = (int32_t)(s % (uint64_t)real_vocab);
    }
    nb_be_from_host(be, dtok, htok, sizeof(int32_t) * nt);
    nb_be_from_host(be, dtgt, htok + 1, sizeof(int32_t) * nt);
    nb_be_sync(be);
    nb_part_input_t in = { .tokens = dtok, .targets = dtgt, .loss_scale = 1.0f };

    int warm = o->tiny ? 1 : 2, steps = 0, min_steps = o->tiny ? 1 : 8;
    double first_step_s = 0.0;
    double max_s = o->tiny ? 0.0 : 25.0, t0 = 0.0, elapsed = 0.0;
    float first_loss = NAN, loss = NAN;
    double t_start = nb_mono_s();
    for (int step = 0;; step++) {
        if (step == warm) {
            nb_be_sync(be);
            t0 = nb_mono_s();
        }
        nb_part_zero_grad(p);
        if ((e = nb_part_forward(p, a, &in, &loss)) || (e = nb_part_backward(p, a, NULL))) {
            printf("# bench_gpu: gpt2: step %d failed (%d)\n", step, e);
            goto out;
        }
        float *g = nb_part_grads(p);
        double ss = nb_optim_sumsq(be, g, nb_part_num_grads(p));
        nb_optim_step(opt, nb_part_params(p), g, (float)nb_optim_lr(&oc, step),
                      nb_optim_clip_scale(&oc, ss));
        if (step == 0) {
            first_loss = loss;
            nb_be_sync(be);
            first_step_s = nb_mono_s() - t_start;
            if (first_step_s > 5.0)
                warm = 1; /* a slow step: one warm-up is enough, keep the time for timed ones */
        }
        if (!isfinite(loss) || !isfinite(ss)) {
            printf("# bench_gpu: gpt2: step %d: loss %g, gradient sum of squares %g (not finite)\n",
                   step, loss, ss);
            goto out;
        }
        if (step >= warm) {
            steps++;
            nb_be_sync(be);
            elapsed = nb_mono_s() - t0;
            /* min_steps timed steps, or at least 3 and max_s seconds, or
             * at least 1 and 60 s (the run's time is limited) */
            if (steps >= min_steps || (steps >= 3 && elapsed >= max_s) || elapsed >= 60.0)
                break;
        }
    }
    double params = (double)nb_part_num_params(p);
    double flops_tok = 6.0 * params + 12.0 * cfg.n_layer * cfg.d_model * T;
    double tps = (double)nt * steps / elapsed;
    printf("# gpt2: B=%d T=%d params=%.0f, first step %.3f s, %d timed steps in %.3f s (%.1f ms/step), "
           "loss %.4f -> %.4f\n", B, T, params, first_step_s, steps, elapsed, 1e3 * elapsed / steps,
           first_loss, loss);
    printf("bench gpu_gpt2_124m_fp32_tokens_per_s %.6g tok/s\n", tps);
    char name[128];
    double peak = 0.0;
    const char *env = getenv("NB_GPU_PEAK_TFLOPS");
    gpu_name(name, sizeof name);
    if (env && env[0]) {
        peak = atof(env);
        printf("# MFU against the given peak of %g TFLOPS (NB_GPU_PEAK_TFLOPS)\n", peak);
    } else if ((peak = fp32_peak_tflops(name)) > 0.0) {
        printf("# MFU against the fp32 non-tensor-core peak of %s, %g TFLOPS (no TF32: the backend "
               "keeps cuBLAS in pure fp32 math)\n", name, peak);
    }
    if (peak > 0.0)
        printf("bench gpu_gpt2_124m_fp32_mfu %.4g %%\n", 100.0 * tps * flops_tok / (peak * 1e12));
    else
        printf("# no MFU: unknown peak of GPU '%s' (set NB_GPU_PEAK_TFLOPS)\n", name);
    rc = PART_OK;
out:
    free(htok);
    if (dtok)
        nb_be_dealloc(be, dtok);
    if (dtgt)
        nb_be_dealloc(be, dtgt);
    nb_optim_free(opt);
    nb_part_acts_free(a);
    nb_part_free(p);
    return rc;
}

/* ---- 2. attention against the block's matmuls ----------------------------- */

/* Seconds per repetition of fn, at least o->min_reps reps and o->min_s s
 * (fewer reps once 5 s have passed), after one untimed warm-up call (none
 * in --tiny). */
typedef void (*work_fn)(void *ud);
static double time_it(nb_backend_t *be, const opts_t *o, work_fn fn, void *ud)
{
    if (!o->tiny) {
        fn(ud);
        nb_be_sync(be);
    }
    double t0 = nb_mono_s(), t = 0.0;
    int reps = 0;
    do {
        fn(ud);
        reps++;
        nb_be_sync(be);
        t = nb_mono_s() - t0;
    } while ((reps < o->min_reps || t < o->min_s) && t < 5.0);
    return t / reps;
}

typedef struct {
    nb_backend_t *be;
    int B, T, C, NH;
    float *qkv, *out, *att, *dout, *dqkv;
    float *x, *w, *y, *dy, *dx, *dw; /* matmul operands, sized for the widest layer */
} attn_ctx;

static void attn_work(void *ud)
{
    attn_ctx *c = ud;
    nb_attention_fwd(c->be, c->out, c->att, c->qkv, NULL, true, c->B, c->T, c->C, c->NH);
    nb_attention_bwd(c->be, c->dqkv, c->dout, c->qkv, c->att, NULL, true, c->B, c->T, c->C, c->NH);
}

/* One linear layer x (N,IC) -> y (N,OC) forward and backward, as
 * kernels/model_pass.c calls nb_matmul. */
static void linear3(attn_ctx *c, int N, int IC, int OC)
{
    nb_matmul(c->be, false, true, N, OC, IC, 1.0f, c->x, IC, 0, c->w, IC, 0, 0.0f, c->y, OC, 0, 1);
    nb_matmul(c->be, false, false, N, IC, OC, 1.0f, c->dy, OC, 0, c->w, IC, 0, 0.0f, c->dx, IC, 0, 1);
    nb_matmul(c->be, true, false, OC, IC, N, 1.0f, c->dy, OC, 0, c->x, IC, 0, 1.0f, c->dw, IC, 0, 1);
}

static void matmul_work(void *ud)
{
    attn_ctx *c = ud;
    int N = c->B * c->T, C = c->C;
    linear3(c, N, C, 3 * C); /* qkv */
    linear3(c, N, C, C);     /* attention projection */
    linear3(c, N, C, 4 * C); /* fc */
    linear3(c, N, 4 * C, C); /* fc projection */
}

static int bench_attention(nb_backend_t *be, const opts_t *o, int B)
{
    if (!nb_be_supports(be, NB_OP_ATTENTION_FWD) || !nb_be_supports(be, NB_OP_ATTENTION_BWD) ||
        !nb_be_supports(be, NB_OP_MATMUL)) {
        printf("# bench_gpu: attention not run: the backend lacks attention_fwd/bwd or matmul\n");
        return PART_UNSUPPORTED;
    }
    attn_ctx c = { .be = be, .B = B, .T = 1024, .C = 768, .NH = 12 };
    if (o->tiny) {
        c.B = 1; c.T = 17; c.C = 32; c.NH = 2;
    }
    size_t N = (size_t)c.B * c.T, C = (size_t)c.C, F = 4 * C;
    size_t state = nb_attention_state_floats(be, c.B, c.NH, c.T, c.T);
    int rc = PART_FAILED;
    c.qkv = dev_random(be, N * 3 * C, 1, 1.0f);
    c.dout = dev_random(be, N * C, 2, 1.0f);
    c.x = dev_random(be, N * F, 3, 1.0f);
    c.w = dev_random(be, F * C, 4, 0.03f);
    c.dy = dev_random(be, N * F, 5, 1.0f);
    c.out = nb_be_alloc(be, sizeof(float) * N * C);
    c.att = state < SIZE_MAX / sizeof(float) ? nb_be_alloc(be, sizeof(float) * state) : NULL;
    c.dqkv = nb_be_alloc(be, sizeof(float) * N * 3 * C);
    c.y = nb_be_alloc(be, sizeof(float) * N * F);
    c.dx = nb_be_alloc(be, sizeof(float) * N * F);
    c.dw = nb_be_alloc(be, sizeof(float) * F * C);
    if (!c.qkv || !c.dout || !c.x || !c.w || !c.dy || !c.out || !c.att || !c.dqkv || !c.y || !c.dx || !c.dw) {
        printf("# bench_gpu: attention: out of device memory\n");
        goto out;
    }
    nb_be_memset0(be, c.dqkv, sizeof(float) * N * 3 * C);
    nb_be_memset0(be, c.dw, sizeof(float) * F * C);
    double ta = time_it(be, o, attn_work, &c);
    double tm = time_it(be, o, matmul_work, &c);
    /* matmul FLOPs of the block: 3 products of 2*N*IC*OC per layer */
    double mm_flops = 3.0 * 2.0 * (double)N * (C * 3 * C + C * C + 2 * C * F);
    printf("# attention: B=%d T=%d C=%d NH=%d causal fwd+bwd %.3f ms; the block's 12 matmuls %.3f ms (%.1f TFLOPS)\n",
           c.B, c.T, c.C, c.NH, 1e3 * ta, 1e3 * tm, mm_flops / tm * 1e-12);
    printf("bench gpu_attention_vs_matmul_ratio %.4g x\n", ta / tm);
    rc = PART_OK;
out:;
    float *bufs[] = { c.qkv, c.dout, c.x, c.w, c.dy, c.out, c.att, c.dqkv, c.y, c.dx, c.dw };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i])
            nb_be_dealloc(be, bufs[i]);
    return rc;
}

/* ---- 3. codecs against memcpy ---------------------------------------------- */

typedef struct {
    nb_backend_t *be;
    size_t n, k, block;
    const char *codec;
    float *x, *y, *scales, *vals;
    void *codes; /* n * 2 bytes: fp16/bf16 values, int8/int4 codes, or topk indices */
} codec_ctx;

static void memcpy_work(void *ud)
{
    codec_ctx *c = ud;
    nb_be_copy(c->be, c->y, c->x, sizeof(float) * c->n);
}

static void codec_work(void *ud)
{
    codec_ctx *c = ud;
    nb_backend_t *be = c->be;
    if (!strcmp(c->codec, "fp16")) {
        nb_codec_op_f32_to_f16(be, c->codes, c->scales, c->x, c->n);
        nb_codec_op_f16_to_f32(be, c->y, c->codes, c->scales, c->n);
    } else if (!strcmp(c->codec, "bf16")) {
        nb_codec_op_f32_to_bf16(be, c->codes, c->x, c->n);
        nb_codec_op_bf16_to_f32(be, c->y, c->codes, c->n);
    } else if (!strcmp(c->codec, "int8") || !strcmp(c->codec, "int4")) {
        int bits = c->codec[3] == '8' ? 8 : 4;
        nb_codec_op_quant(be, c->codes, c->scales, c->x, c->n, c->block, bits, false, 0);
        nb_codec_op_dequant(be, c->y, c->codes, c->scales, c->n, c->block, bits);
    } else {
        nb_codec_op_topk(be, c->codes, c->vals, c->x, c->n, c->k);
        nb_codec_op_scatter(be, c->y, c->codes, c->vals, c->n, c->k);
    }
}

static int bench_codecs(nb_backend_t *be, const opts_t *o)
{
    if (!nb_codec_ops_ok(be)) {
        printf("# bench_gpu: codecs not run: the backend has no codec primitives (kernels/codec/codec_ops.h)\n");
        return PART_UNSUPPORTED;
    }
    /* 2^25 floats (128 MiB): four GPT-2 activations of (8,1024,768), past
     * every cache, so launch costs do not dominate. */
    codec_ctx c = { .be = be, .n = o->tiny ? 4099 : (size_t)1 << 25, .block = 64 };
    c.k = c.n / 100;
    int rc = PART_FAILED;
    c.x = dev_random(be, c.n, 11, 2.0f);
    c.y = nb_be_alloc(be, sizeof(float) * c.n);
    c.scales = nb_be_alloc(be, sizeof(float) * (c.n / c.block + 1));
    c.vals = nb_be_alloc(be, sizeof(float) * c.k);
    c.codes = nb_be_alloc(be, sizeof(uint32_t) * c.n);
    if (!c.x || !c.y || !c.scales || !c.vals || !c.codes) {
        printf("# bench_gpu: codecs: out of device memory\n");
        goto out;
    }
    double bytes = sizeof(float) * (double)c.n;
    double tcopy = time_it(be, o, memcpy_work, &c);
    double copy_gbps = bytes / tcopy * 1e-9;
    printf("# codecs: n=%zu floats; device memcpy %.1f GB/s of fp32 copied\n", c.n, copy_gbps);
    static const char *const names[] = { "fp16", "bf16", "int8", "int4", "topk" };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        c.codec = names[i];
        double t = time_it(be, o, codec_work, &c);
        double gbps = bytes / t * 1e-9;
        printf("# codec %s: encode+decode %.4g GB/s of fp32 input\n", names[i], gbps);
        printf("bench gpu_codec_%s_vs_memcpy %.4g x\n", names[i], gbps / copy_gbps);
    }
    rc = PART_OK;
out:;
    void *bufs[] = { c.x, c.y, c.scales, c.vals, c.codes };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i])
            nb_be_dealloc(be, bufs[i]);
    return rc;
}

int main(int argc, char **argv)
{
    opts_t o = { .min_reps = 5, .min_s = 0.3 };
    const char *env = getenv("NB_BENCH_GPU_TINY");
    o.tiny = env && env[0] && strcmp(env, "0");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tiny")) {
            o.tiny = true;
        } else {
            fprintf(stderr, "usage: %s [--tiny]\n", argv[0]);
            return 2;
        }
    }
    if (o.tiny) {
        o.min_reps = 1;
        o.min_s = 0.0;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *why = NULL;
    nb_backend_t *be = nb_cuda_backend_new(0, &why);
    if (!be) {
        printf("# bench_gpu skipped: no CUDA device (%s)\n", why ? why : "unknown reason");
        return 0;
    }
    /* The quick parts first: a slow training step then costs only its own
     * figures when the run's time runs out. */
    int r[3];
    double t0 = nb_mono_s();
    r[0] = bench_attention(be, &o, 8);
    printf("# attention part: %.1f s\n", nb_mono_s() - t0);
    t0 = nb_mono_s();
    r[1] = bench_codecs(be, &o);
    printf("# codec part: %.1f s\n", nb_mono_s() - t0);
    t0 = nb_mono_s();
    r[2] = bench_gpt2(be, &o);
    printf("# gpt2 part: %.1f s\n", nb_mono_s() - t0);
    nb_be_free(be);
    int rc = PART_OK;
    for (int i = 0; i < 3; i++)
        if (r[i] == PART_FAILED)
            rc = PART_FAILED;
        else if (r[i] == PART_UNSUPPORTED && rc == PART_OK)
            rc = PART_UNSUPPORTED;
    return rc;
}
