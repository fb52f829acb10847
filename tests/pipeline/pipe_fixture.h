/*
 * pipe_fixture.h - runs a pipeline of stage hosts in one process, one thread
 * per daemon, joined by bounded in-process mailboxes instead of TLS links;
 * and the single-process trainer on the same job, for comparison.
 * Header-only helpers for the pipeline tests.
 */
#ifndef NB_TEST_PIPE_FIXTURE_H
#define NB_TEST_PIPE_FIXTURE_H

#include <math.h>
#include <stdbool.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "daemon/data/tokens.h"
#include "daemon/pipeline/mailbox.h"
#include "daemon/pipeline/stage_eval.h"
#include "daemon/pipeline/stage_host.h"
#include "daemon/pipeline/stage_replicas.h"
#include "daemon/train/trainer.h"

#define PF_MAX_STEPS 64

/* Deterministic English-like text as byte tokens: a real text file is not
 * needed to test equality, only identical batches on both sides. */
static inline int pf_write_tokens(const char *path)
{
    static const char *words[] = { "the ", "model ", "is ", "trained ", "across ", "clouds ",
                                   "with ", "a ", "pipeline ", "of ", "stages, ", "and ",
                                   "gradients ", "flow ", "back. " };
    enum { N = 20000 };
    uint32_t *ids = malloc(N * sizeof *ids);
    uint64_t x = 12345;
    size_t n = 0;
    while (n < N) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        const char *w = words[(x >> 33) % (sizeof words / sizeof words[0])];
        for (; *w && n < N; w++)
            ids[n++] = (uint8_t)*w;
    }
    char err[256];
    int rc = nb_tokens_write(path, ids, N, 256, err, sizeof err);
    free(ids);
    return rc;
}

typedef struct {
    nb_model_config_t model;
    nb_optim_config_t optim;
    uint64_t seed;
    int B, T, m, steps;
    int plan_B;            /* micro-batch size the plans carry; 0 keeps the layout's */
    char data[256];
    /* held-out evaluation (0 batches: none): every eval_every steps (0: at
     * the end only) and after the last step, as nebula-train */
    double eval_fraction;
    char eval_data[256];
    int eval_batches, eval_every;
    nb_freeze_spec_t freeze; /* frozen tensors (job.freeze); zero: none */
    nb_precision_t precision; /* job.precision; zero: fp32 */
} pf_job_t;

/* Does the run evaluate after step s (0-based)? nebula-train's rule. */
static inline bool pf_eval_due(const pf_job_t *j, int s)
{
    return j->eval_batches > 0 && ((j->eval_every && (s + 1) % j->eval_every == 0) || s + 1 == j->steps);
}

static inline pf_job_t pf_job_default(const char *data)
{
    pf_job_t j;
    memset(&j, 0, sizeof j);
    j.model = (nb_model_config_t){ .n_layer = 4, .d_model = 32, .n_head = 4, .d_ff = 128,
                                   .vocab = 256, .max_seq = 16, .causal = true,
                                   .norm = NB_MODEL_NORM_PRE, .head = NB_MODEL_HEAD_LM,
                                   .tie_embeddings = false };
    j.optim = nb_optim_config_default();
    j.optim.lr = 3e-3f;
    j.optim.lr_min = 3e-4f;
    j.optim.warmup_steps = 3;
    j.optim.total_steps = 20;
    j.optim.grad_clip = 1.0f;
    j.seed = 7;
    j.B = 2;
    j.T = 16;
    j.m = 3;
    j.steps = 20;
    snprintf(j.data, sizeof j.data, "%s", data);
    return j;
}

/* Results of one run: per-step losses and every parameter by name. */
typedef struct {
    int steps;
    double loss[PF_MAX_STEPS];
    double eval_loss[PF_MAX_STEPS];   /* after step s, where pf_eval_due; else 0 */
    int n_evals;
    int ntensors;
    char names[256][32];
    float *values[256];
    size_t numel[256];
    uint64_t bytes_raw, bytes_wire;
} pf_result_t;

static inline void pf_result_free(pf_result_t *r)
{
    for (int i = 0; i < r->ntensors; i++)
        free(r->values[i]);
    memset(r, 0, sizeof *r);
}

static inline void pf_collect_part(pf_result_t *r, nb_part_t *p)
{
    nb_backend_t *be = nb_part_backend(p);
    const float *params = nb_part_params(p);
    for (int i = 0; i < nb_part_num_tensors(p); i++) {
        const nb_param_info_t *pi = nb_part_tensor(p, i);
        int k = r->ntensors++;
        snprintf(r->names[k], sizeof r->names[k], "%s", pi->name);
        r->numel[k] = pi->numel;
        r->values[k] = malloc(pi->numel * sizeof(float));
        nb_be_to_host(be, r->values[k], params + pi->offset, pi->numel * sizeof(float));
    }
}

static inline int pf_run_trainer(const pf_job_t *j, pf_result_t *r)
{
    memset(r, 0, sizeof *r);
    nb_train_config_t c;
    memset(&c, 0, sizeof c);
    c.model = j->model;
    c.optim = j->optim;
    c.seed = j->seed;
    c.batch = j->B * j->m;
    c.micro_batches = j->m;
    c.seq_len = j->T;
    c.steps = j->steps;
    c.freeze = j->freeze;
    c.precision = j->precision;
    snprintf(c.data, sizeof c.data, "%s", j->data);
    c.eval_fraction = j->eval_fraction;
    snprintf(c.eval_data, sizeof c.eval_data, "%s", j->eval_data);
    c.eval_batches = j->eval_batches;
    nb_backend_t *be = nb_cpu_backend_new();
    nb_trainer_t *t;
    char err[512];
    int rc = nb_trainer_new(be, &c, &t, err, sizeof err);
    if (rc) {
        fprintf(stderr, "trainer: %s\n", err);
        nb_be_free(be);
        return rc;
    }
    for (int s = 0; s < j->steps; s++) {
        nb_train_step_t st;
        if ((rc = nb_trainer_step(t, &st, err, sizeof err))) {
            fprintf(stderr, "trainer step %d: %s\n", s, err);
            break;
        }
        r->loss[s] = st.loss;
        if (pf_eval_due(j, s)) {
            if ((rc = nb_trainer_eval(t, &r->eval_loss[s], err, sizeof err))) {
                fprintf(stderr, "trainer eval after step %d: %s\n", s + 1, err);
                break;
            }
            r->n_evals++;
        }
    }
    r->steps = j->steps;
    pf_collect_part(r, nb_trainer_part(t));
    nb_trainer_free(t);
    nb_be_free(be);
    return rc;
}

/* ---- in-process links ---- */

typedef struct {
    nb_mbox_t *box[NB_SCHED_MAX_STAGES][NB_PMSG_KINDS];
} pf_links_t;

static inline int pf_send(void *ud, nb_pmsg_t *m)
{
    pf_links_t *L = ud;
    return nb_mbox_push(L->box[m->to_stage][m->kind], m);
}

static inline int pf_recv(void *ud, int stage, nb_pmsg_kind_t kind, nb_pmsg_t **out, int timeout_ms)
{
    pf_links_t *L = ud;
    void *m;
    int rc = nb_mbox_pop(L->box[stage][kind], &m, timeout_ms);
    if (rc == 0)
        *out = m;
    return rc;
}

static inline void pf_free_msg(void *m) { nb_pmsg_free(m); }

typedef struct {
    const pf_job_t *job;
    const nb_pipe_layout_t *layout;
    const char *sched;
    const char *fwd_codec, *bwd_codec;
    pf_links_t *links;
    pthread_barrier_t *barrier;
    double *sumsq;          /* [n_daemons] */
    int daemon;
    nb_host_t *host;
    nb_eval_t *eval;       /* when the job evaluates */
    nb_backend_t *be;
    int rc;
    char err[512];
    double loss[PF_MAX_STEPS];
    double eval_loss[PF_MAX_STEPS];
    int n_evals;
    uint64_t bytes_raw, bytes_wire;
} pf_worker_t;

static inline void *pf_worker_main(void *arg)
{
    pf_worker_t *w = arg;
    const pf_job_t *j = w->job;
    nb_pipe_io_i io = { pf_send, pf_recv, w->links };
    nb_step_plan_t plan;
    memset(&plan, 0, sizeof plan);
    plan.m = j->m;
    plan.micro_batch_size = j->plan_B;
    nb_sched_parse(w->sched, &plan.sched);
    snprintf(plan.fwd_codec, sizeof plan.fwd_codec, "%s", w->fwd_codec);
    snprintf(plan.bwd_codec, sizeof plan.bwd_codec, "%s", w->bwd_codec);
    for (int s = 0; s < j->steps; s++) {
        plan.step = s;
        nb_step_result_t res;
        int rc = w->rc ? w->rc : nb_host_run_step(w->host, &plan, &io, 10000, &res, w->err, sizeof w->err);
        if (rc && !w->rc) {
            w->rc = rc;
            /* wake the other workers: their peer is gone */
            for (int a = 0; a < w->layout->p; a++)
                for (int k = 0; k < NB_PMSG_KINDS; k++)
                    nb_mbox_close(w->links->box[a][k]);
        }
        w->sumsq[w->daemon] = rc ? 0.0 : res.grad_sumsq;
        if (!rc) {
            w->loss[s] = res.loss;
            w->bytes_raw += res.bytes_raw;
            w->bytes_wire += res.bytes_wire;
        }
        pthread_barrier_wait(w->barrier);
        double total = 0.0;
        for (int d = 0; d < w->layout->n_daemons; d++)
            total += w->sumsq[d];
        pthread_barrier_wait(w->barrier);
        if (!w->rc)
            nb_host_apply(w->host, s, total);
        if (!w->rc && w->eval && pf_eval_due(j, s)) {
            /* forward only, with the weights after step s; no barrier: the
             * next step's tensors queue behind the evaluation's */
            nb_eval_plan_t ep = { .step = s + 1, .batches = j->eval_batches, .micro_batch_size = j->B };
            snprintf(ep.fwd_codec, sizeof ep.fwd_codec, "%s", w->fwd_codec);
            nb_eval_result_t er;
            int rc = nb_eval_run(w->eval, &ep, &io, 10000, &er, w->err, sizeof w->err);
            if (rc) {
                w->rc = rc;
                for (int a = 0; a < w->layout->p; a++)
                    for (int k = 0; k < NB_PMSG_KINDS; k++)
                        nb_mbox_close(w->links->box[a][k]);
            } else {
                w->eval_loss[s] = er.loss;
                w->n_evals++;
            }
        }
    }
    return NULL;
}

/* Layout helper: p stages, blocks split as evenly as possible (earlier
 * stages take the remainder), placement given. */
static inline void pf_layout(const pf_job_t *j, int p, const int *placement, int n_daemons,
                             nb_pipe_layout_t *l)
{
    memset(l, 0, sizeof *l);
    l->job_id = 1;
    l->model = j->model;
    l->p = p;
    l->n_daemons = n_daemons;
    l->seed = j->seed;
    l->micro_batch_size = j->B;
    l->seq_len = j->T;
    l->optim = j->optim;
    l->eval_fraction = j->eval_fraction;
    l->freeze = j->freeze;
    l->precision = j->precision;
    int first = 0;
    for (int s = 0; s < p; s++) {
        int n = j->model.n_layer / p + (s < j->model.n_layer % p ? 1 : 0);
        l->parts[s] = (nb_part_spec_t){ .embed = s == 0, .first = first, .last = first + n, .head = s == p - 1 };
        first += n;
        l->placement[s] = placement[s];
    }
}

/* Called after a run, while the workers' hosts still exist (to look at
 * replicas, say); w holds one worker per daemon. */
typedef void (*pf_inspect_fn)(void *ud, pf_worker_t *w, int n_daemons);

/* Runs the job as a pipeline, daemon d with reps[d] CPU replicas (reps
 * NULL: one each); returns 0 and fills r, or an error code with the first
 * worker's message printed. inspect (may be NULL) sees the workers after a
 * run that started. */
static inline int pf_run_pipeline_with(const pf_job_t *j, const nb_pipe_layout_t *l, const char *sched,
                                       const char *fwd_codec, const char *bwd_codec, const int *reps,
                                       pf_inspect_fn inspect, void *ud, pf_result_t *r)
{
    memset(r, 0, sizeof *r);
    pf_links_t links;
    memset(&links, 0, sizeof links);
    /* capacity 2: at least nb_sched_min_queue_cap for plain gpipe/1f1b and
     * 1f1b:2; the sender blocks beyond it, as on a full TLS send queue */
    for (int s = 0; s < l->p; s++)
        for (int k = 0; k < NB_PMSG_KINDS; k++)
            links.box[s][k] = nb_mbox_new(2, pf_free_msg);
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned)l->n_daemons);
    double sumsq[NB_SCHED_MAX_STAGES] = { 0 };
    pf_worker_t w[NB_SCHED_MAX_STAGES];
    nb_backend_t *bes[NB_SCHED_MAX_STAGES][NB_REPS_MAX];
    int nrep[NB_SCHED_MAX_STAGES];
    memset(w, 0, sizeof w);
    memset(bes, 0, sizeof bes);
    int rc = 0;
    for (int d = 0; d < l->n_daemons; d++) {
        w[d] = (pf_worker_t){ .job = j, .layout = l, .sched = sched, .fwd_codec = fwd_codec,
                              .bwd_codec = bwd_codec, .links = &links, .barrier = &bar,
                              .sumsq = sumsq, .daemon = d };
        nrep[d] = reps ? reps[d] : 1;
        for (int q = 0; q < nrep[d]; q++)
            bes[d][q] = nb_cpu_backend_new();
        w[d].be = bes[d][0];
        int hrc = nb_host_new_replicas(bes[d], nrep[d], l, d, j->data, &w[d].host, w[d].err, sizeof w[d].err);
        if (hrc == 0 && j->eval_batches > 0)
            hrc = nb_eval_new(w[d].host, j->eval_data[0] ? j->eval_data : NULL, &w[d].eval, w[d].err,
                              sizeof w[d].err);
        if (hrc) {
            fprintf(stderr, "host %d: %s\n", d, w[d].err);
            rc = hrc;
        }
    }
    if (rc == 0) {
        pthread_t th[NB_SCHED_MAX_STAGES];
        for (int d = 0; d < l->n_daemons; d++)
            pthread_create(&th[d], NULL, pf_worker_main, &w[d]);
        for (int d = 0; d < l->n_daemons; d++)
            pthread_join(th[d], NULL);
        for (int d = 0; d < l->n_daemons; d++)
            if (w[d].rc) {
                fprintf(stderr, "daemon %d: %s (%s)\n", d, w[d].err, nb_strerror(w[d].rc));
                if (!rc)
                    rc = w[d].rc;
            }
        int head_daemon = l->placement[l->p - 1];
        r->steps = j->steps;
        for (int s = 0; s < j->steps; s++) {
            r->loss[s] = w[head_daemon].loss[s];
            r->eval_loss[s] = w[head_daemon].eval_loss[s];
        }
        r->n_evals = w[head_daemon].n_evals;
        for (int d = 0; d < l->n_daemons; d++) {
            for (int i = 0; i < nb_host_num_stages(w[d].host); i++)
                pf_collect_part(r, nb_host_part(w[d].host, i));
            r->bytes_raw += w[d].bytes_raw;
            r->bytes_wire += w[d].bytes_wire;
        }
        if (inspect)
            inspect(ud, w, l->n_daemons);
    }
    for (int d = 0; d < l->n_daemons; d++) {
        nb_eval_free(w[d].eval); /* borrows the host */
        nb_host_free(w[d].host);
        for (int q = 0; q < nrep[d]; q++)
            nb_be_free(bes[d][q]);
    }
    for (int s = 0; s < l->p; s++)
        for (int k = 0; k < NB_PMSG_KINDS; k++)
            nb_mbox_free(links.box[s][k]);
    pthread_barrier_destroy(&bar);
    return rc;
}

/* Runs the job as a pipeline, one replica per daemon. */
static inline int pf_run_pipeline(const pf_job_t *j, const nb_pipe_layout_t *l, const char *sched,
                                  const char *fwd_codec, const char *bwd_codec, pf_result_t *r)
{
    return pf_run_pipeline_with(j, l, sched, fwd_codec, bwd_codec, NULL, NULL, NULL, r);
}

/* Largest relative difference of the per-step losses. */
static inline double pf_loss_rel_diff(const pf_result_t *a, const pf_result_t *b)
{
    double worst = 0.0;
    for (int s = 0; s < a->steps; s++) {
        double d = fabs(a->loss[s] - b->loss[s]) / fmax(fabs(a->loss[s]), 1e-12);
        if (!(d <= worst))
            worst = d; /* NaN propagates as a failure */
    }
    return worst;
}

/* Largest difference of any parameter, relative to the largest magnitude of
 * its tensor; a tensor missing from b counts as infinitely different. With
 * skip_key_bias_C > 0 (d_model) the key third of every qkv bias is left
 * out (test_stage_replicas.c says why). */
static inline double pf_weight_rel_diff_skip(const pf_result_t *a, const pf_result_t *b, int skip_key_bias_C,
                                             char *worst_name)
{
    double worst = 0.0;
    for (int i = 0; i < a->ntensors; i++) {
        int k = -1;
        for (int q = 0; q < b->ntensors; q++)
            if (strcmp(a->names[i], b->names[q]) == 0)
                k = q;
        if (k < 0 || b->numel[k] != a->numel[i]) {
            if (worst_name)
                snprintf(worst_name, 32, "%s (missing)", a->names[i]);
            return INFINITY;
        }
        size_t n = strlen(a->names[i]);
        bool qkv_b = skip_key_bias_C > 0 && n > 6 && strcmp(a->names[i] + n - 6, ".qkv.b") == 0;
        size_t C = (size_t)skip_key_bias_C;
        double maxabs = 1e-12, maxd = 0.0;
        for (size_t e = 0; e < a->numel[i]; e++) {
            if (qkv_b && e >= C && e < 2 * C)
                continue;
            maxabs = fmax(maxabs, fabs(a->values[i][e]));
            double d = fabs((double)a->values[i][e] - b->values[k][e]);
            if (!(d <= maxd))
                maxd = d;
        }
        double rel = maxd / maxabs;
        if (!(rel <= worst)) {
            worst = rel;
            if (worst_name)
                snprintf(worst_name, 32, "%s", a->names[i]);
        }
    }
    return worst;
}

static inline double pf_weight_rel_diff(const pf_result_t *a, const pf_result_t *b, char *worst_name)
{
    return pf_weight_rel_diff_skip(a, b, 0, worst_name);
}

#endif
