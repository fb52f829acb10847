/*
 * codec_fixture.h - a tiny GPT cut in the middle, for the codec tests: part 0
 * holds the embedding and the first half of the blocks, part 1 the rest and
 * the LM head. It trains on byte tokens of a real text (the GPL-3 text every
 * Debian machine has, or a built-in paragraph when that file is missing),
 * applying a forward codec to the activations and a backward codec to the
 * gradients at the cut, exactly as two pipeline stages would. The codec
 * tests capture realistic activations and gradients from it, and the
 * training-quality test compares the loss each codec reaches.
 *
 * Header-only (static functions) so each test binary carries its own copy.
 */
#ifndef NB_TEST_CODEC_FIXTURE_H
#define NB_TEST_CODEC_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/backend.h"
#include "kernels/codec/codec.h"
#include "kernels/model.h"
#include "kernels/optim.h"
#include "kernels/rng.h"

static const char nb_fx_fallback_text[] =
    "Nebula trains one transformer across several clusters that are joined by slow links. "
    "Only the activations at the cut and their gradients cross the link, so what crosses "
    "it sets the step time. Codecs shrink those tensors: half precision, integers with "
    "scales, the largest values with their positions, or a low-rank factorisation. ";

typedef struct {
    nb_backend_t *be;
    nb_model_config_t cfg;
    nb_optim_config_t oc;
    nb_part_t *p[2];
    nb_part_acts_t *a[2];
    nb_optim_t *o[2];
    int B, T;
    uint8_t *text;
    size_t text_len;
    int32_t *tok_h, *tgt_h;
    int32_t *tok_d, *tgt_d;
    nb_tensor_t *cut_x, *cut_g; /* decoded tensors at the cut, (B*T, C) */
    nb_codec_msg_t msg;
    uint64_t bytes_fwd, bytes_bwd; /* encoded bytes (spec + meta + payload) so far */
} nb_fx_t;

static void nb_fx_load_text(nb_fx_t *f)
{
    FILE *fp = fopen("/usr/share/common-licenses/GPL-3", "rb");
    if (fp) {
        f->text = malloc(1 << 16);
        f->text_len = f->text ? fread(f->text, 1, 1 << 16, fp) : 0;
        fclose(fp);
        if (f->text_len > 4096)
            return;
        free(f->text);
    }
    f->text_len = 8 * (sizeof nb_fx_fallback_text - 1);
    f->text = malloc(f->text_len);
    NB_CHECK(f->text);
    for (int i = 0; i < 8; i++)
        memcpy(f->text + i * (sizeof nb_fx_fallback_text - 1), nb_fx_fallback_text, sizeof nb_fx_fallback_text - 1);
}

/* A GPT of n_layer blocks (cut after n_layer/2), width C, on B x T tokens;
 * total_steps sizes the learning-rate schedule. Aborts on failure (tests). */
static void nb_fx_init(nb_fx_t *f, int n_layer, int C, int B, int T, int total_steps, uint64_t seed)
{
    memset(f, 0, sizeof *f);
    f->be = nb_cpu_backend_new();
    NB_CHECK(f->be);
    f->B = B;
    f->T = T;
    f->cfg = (nb_model_config_t){ .n_layer = n_layer, .d_model = C, .n_head = 4, .d_ff = 4 * C,
                                  .vocab = 256, .max_seq = T, .causal = true, .norm = NB_MODEL_NORM_PRE,
                                  .head = NB_MODEL_HEAD_LM, .tie_embeddings = true };
    f->oc = nb_optim_config_default();
    f->oc.lr = 1e-3f;
    f->oc.lr_min = 1e-4f;
    f->oc.warmup_steps = 10;
    f->oc.total_steps = total_steps;
    f->oc.weight_decay = 0.0f;
    char err[200];
    for (int i = 0; i < 2; i++) {
        nb_part_spec_t s = { .embed = i == 0, .first = i ? n_layer / 2 : 0,
                             .last = i ? n_layer : n_layer / 2, .head = i == 1 };
        if (nb_part_new(f->be, &f->cfg, &s, seed, i ? f->p[0] : NULL, &f->p[i], err, sizeof err)) {
            fprintf(stderr, "fixture part %d: %s\n", i, err);
            abort();
        }
        NB_CHECK(nb_part_acts_new(f->p[i], B, T, &f->a[i]) == 0);
        NB_CHECK(nb_part_optim_new(f->p[i], &f->oc, &f->o[i]) == 0);
    }
    nb_fx_load_text(f);
    size_t n = (size_t)B * T;
    f->tok_h = malloc(n * 4);
    f->tgt_h = malloc(n * 4);
    f->tok_d = nb_be_alloc(f->be, n * 4);
    f->tgt_d = nb_be_alloc(f->be, n * 4);
    int64_t shape[2] = { (int64_t)n, C };
    f->cut_x = nb_tensor_new(f->be, NB_F32, 2, shape);
    f->cut_g = nb_tensor_new(f->be, NB_F32, 2, shape);
    NB_CHECK(f->tok_h && f->tgt_h && f->tok_d && f->tgt_d && f->cut_x && f->cut_g);
    nb_codec_msg_init(&f->msg);
}

static void nb_fx_free(nb_fx_t *f)
{
    for (int i = 1; i >= 0; i--) {
        nb_optim_free(f->o[i]);
        nb_part_acts_free(f->a[i]);
    }
    nb_part_free(f->p[1]);
    nb_part_free(f->p[0]);
    nb_tensor_free(f->cut_x);
    nb_tensor_free(f->cut_g);
    nb_be_dealloc(f->be, f->tok_d);
    nb_be_dealloc(f->be, f->tgt_d);
    free(f->tok_h);
    free(f->tgt_h);
    free(f->text);
    nb_codec_msg_free(&f->msg);
    nb_be_free(f->be);
}

/* Batch of step: B windows of T+1 bytes at positions drawn from (seed, step). */
static void nb_fx_batch(nb_fx_t *f, uint64_t seed, int step)
{
    nb_rng_t g;
    nb_rng_init(&g, seed, 0xba7c, (uint64_t)step);
    for (int b = 0; b < f->B; b++) {
        size_t s = (size_t)nb_rng_below(&g, f->text_len - (size_t)f->T - 1);
        for (int t = 0; t < f->T; t++) {
            f->tok_h[b * f->T + t] = f->text[s + t];
            f->tgt_h[b * f->T + t] = f->text[s + t + 1];
        }
    }
    nb_be_from_host(f->be, f->tok_d, f->tok_h, (size_t)f->B * f->T * 4);
    nb_be_from_host(f->be, f->tgt_d, f->tgt_h, (size_t)f->B * f->T * 4);
}

/* Sends src through codec spec into dst (both (B*T, C) on the backend);
 * returns 0 or aborts with the codec's message. NULL spec: plain copy. */
static void nb_fx_cross(nb_fx_t *f, const nb_codec_spec_t *spec, const float *src, nb_tensor_t *dst,
                        uint64_t seed, nb_codec_stream_t *tx, nb_codec_stream_t *rx, uint64_t key,
                        uint64_t *bytes)
{
    size_t n = (size_t)f->B * f->T * f->cfg.d_model;
    if (!spec) {
        nb_be_copy(f->be, dst->data, src, n * 4);
        *bytes += n * 4;
        return;
    }
    char err[256];
    nb_tensor_t x = nb_tensor_view(f->be, NB_F32, (void *)src, 2, dst->shape);
    if (nb_codec_encode(f->be, spec, &x, seed, tx, key, &f->msg, err, sizeof err) ||
        nb_codec_decode_into(f->be, f->msg.spec, f->msg.meta, f->msg.meta_len, f->msg.payload,
                             f->msg.payload_len, 0, rx, dst, err, sizeof err)) {
        fprintf(stderr, "fixture codec: %s\n", err);
        abort();
    }
    *bytes += nb_codec_msg_bytes(&f->msg);
}

/* One training step (forward, cut, backward, clip, AdamW) with codecs fwd /
 * bwd at the cut (NULL: uncompressed). Streams may be NULL unless the specs
 * need them. Returns the loss. After it, cut_x holds the activations the
 * second part saw and cut_g the gradient the first part got. */
static float nb_fx_step(nb_fx_t *f, int step, uint64_t seed, const nb_codec_spec_t *fwd,
                        const nb_codec_spec_t *bwd, nb_codec_stream_t *ftx, nb_codec_stream_t *frx,
                        nb_codec_stream_t *btx, nb_codec_stream_t *brx, bool train)
{
    nb_fx_batch(f, seed, step);
    float loss = 0;
    nb_part_input_t in0 = { .tokens = f->tok_d };
    NB_CHECK(nb_part_forward(f->p[0], f->a[0], &in0, NULL) == 0);
    nb_fx_cross(f, fwd, nb_part_acts_output(f->a[0]), f->cut_x, seed * 2 + (uint64_t)step, ftx, frx,
                (uint64_t)step, &f->bytes_fwd);
    nb_part_input_t in1 = { .x = f->cut_x->data, .targets = f->tgt_d, .loss_scale = 1.0f };
    NB_CHECK(nb_part_forward(f->p[1], f->a[1], &in1, &loss) == 0);
    if (!train)
        return loss;
    NB_CHECK(nb_part_backward(f->p[1], f->a[1], NULL) == 0);
    nb_fx_cross(f, bwd, nb_part_acts_dinput(f->a[1]), f->cut_g, seed * 2 + 1 + (uint64_t)step, btx, brx,
                (uint64_t)step, &f->bytes_bwd);
    NB_CHECK(nb_part_backward(f->p[0], f->a[0], f->cut_g->data) == 0);
    double ss = 0;
    for (int i = 0; i < 2; i++)
        ss += nb_optim_sumsq(f->be, nb_part_grads(f->p[i]), nb_part_num_grads(f->p[i]));
    float scale = nb_optim_clip_scale(&f->oc, ss);
    float lr = (float)nb_optim_lr(&f->oc, step);
    for (int i = 0; i < 2; i++) {
        nb_optim_step(f->o[i], nb_part_params(f->p[i]), nb_part_grads(f->p[i]), lr, scale);
        nb_part_zero_grad(f->p[i]);
    }
    return loss;
}

#endif
