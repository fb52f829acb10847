/*
 * stage_host.c - runs the pipeline stages of one daemon through a training
 * step; see stage_host.h for the contract and docs/pipeline.md for what
 * crosses each cut.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "daemon/clock.h"
#include "daemon/data/tokens.h"
#include "daemon/pipeline/stage_host.h"
#include "daemon/pipeline/stage_replicas.h"
#include "daemon/train/grad_fault.h"
#include "daemon/train/holdout.h"
#include "daemon/planner/sched_exec.h"
#include "kernels/codec/codec.h"

/* Delta bases kept per codec stream (AQ-SGD style "delta" specs). */
#define HOST_STREAM_STATE_BYTES (256u << 20)

/* A transfer between two stages of this daemon: it crosses no link, so it
 * skips the codec and hands the device buffer over. */
typedef struct {
    int mb;
    float *dev;
} local_xfer_t;

typedef struct {
    local_xfer_t *items;
    int head, len, cap;
} local_fifo_t;

typedef struct {
    int stage;
    nb_part_t *part;        /* replica 0's */
    nb_optim_t *optim;      /* replica 0's */
    nb_reps_t *reps;        /* the stage's replicas, one per device (stage_replicas.h) */
    nb_reps_acts_t **pool;  /* activation slots, grown to the peak in flight */
    bool *busy;
    int pool_n;
    int *slot_of_mb;        /* current step: mb -> pool index, -1 */
    float *x_in;            /* decoded input activations (B,T,C) */
    float *dout;            /* decoded output gradient (B,T,C) */
    int32_t *d_tokens, *d_targets;
    /* codec streams: [0] forward send, [1] forward receive, [2] backward
     * send, [3] backward receive */
    nb_codec_stream_t *streams[4];
    nb_codec_stream_t *saved[4]; /* the streams as they were at the last commit */
    local_fifo_t local_in[2]; /* [ACT] from stage-1, [GRAD] from stage+1 */
} hosted_t;

struct nb_host {
    nb_backend_t *be;
    nb_pipe_layout_t l;
    int daemon;
    nb_tokens_t *tokens;       /* what training samples from: the file, or its head */
    nb_tokens_t *file;         /* the file when tokens is a slice of it */
    nb_tokens_t *heldout;      /* its held-out tail (layout eval_fraction) */
    hosted_t st[NB_SCHED_MAX_STAGES];
    int n;                     /* hosted stages */
    int local_of[NB_SCHED_MAX_STAGES]; /* stage -> index in st, -1 */
    bool labels_travel;        /* stage 0 and the head on different daemons */
    int32_t **labels;          /* [mb] host (B*T) targets, this step */
    int labels_cap;
    nb_sched_op_t *ops;
    int ops_cap;
    nb_mb_timing_t *timings;
    int timings_cap;
    size_t peak_acts_bytes;
    nb_codec_msg_t enc;
    nb_grad_fault_t fault;     /* test-only NaN injection (grad_fault.h) */
};

static size_t act_elems(const nb_host_t *h)
{
    return (size_t)h->l.micro_batch_size * (size_t)h->l.seq_len * (size_t)h->l.model.d_model;
}

static size_t bt_elems(const nb_host_t *h)
{
    return (size_t)h->l.micro_batch_size * (size_t)h->l.seq_len;
}

/* Floats per position on the link from stage s to stage s + 1: d_model,
 * or the rank where a low-rank split cuts there (kernels/model.h). The
 * buffers stay act_elems() large; only these many cross. */
static int link_width(const nb_host_t *h, int s)
{
    return nb_part_spec_out_width(&h->l.model, &h->l.parts[s]);
}

const char *nb_pipe_layout_validate(const nb_pipe_layout_t *l)
{
    const char *e = nb_model_config_validate(&l->model);
    if (e)
        return e;
    if (l->model.head != NB_MODEL_HEAD_LM && l->model.head != NB_MODEL_HEAD_MLM)
        return "layout: a pipeline trains the lm and mlm heads only (batches come from a token file)";
    if (l->p < 1 || l->p > NB_SCHED_MAX_STAGES)
        return "layout: number of stages out of range";
    if (l->n_daemons < 1 || l->n_daemons > l->p)
        return "layout: number of daemons out of range";
    if (l->micro_batch_size < 1 || l->seq_len < 1 || l->seq_len > l->model.max_seq)
        return "layout: micro-batch size or sequence length out of range";
    if (!(l->eval_fraction >= 0.0 && l->eval_fraction <= 0.5))
        return "layout: held-out fraction out of range 0..0.5";
    int next = 0;
    for (int s = 0; s < l->p; s++) {
        const nb_part_spec_t *ps = &l->parts[s];
        if (ps->embed != (s == 0))
            return "layout: the embedding must be on stage 0 and only there";
        if (ps->head != (s == l->p - 1))
            return "layout: the head must be on the last stage and only there";
        if (ps->first != next || ps->last < ps->first)
            return "layout: stage layer ranges must be contiguous and in order";
        next = ps->last;
        if (l->placement[s] < 0 || l->placement[s] >= l->n_daemons)
            return "layout: placement names a daemon out of range";
    }
    if (next != l->model.n_layer)
        return "layout: stage layer ranges do not cover every block";
    for (int d = 0; d < l->n_daemons; d++) {
        bool used = false;
        for (int s = 0; s < l->p; s++)
            used |= l->placement[s] == d;
        if (!used)
            return "layout: a daemon hosts no stage";
    }
    if (l->model.tie_embeddings && l->placement[0] != l->placement[l->p - 1])
        return "layout: tie_embeddings needs the embedding and the head on one daemon "
               "(U-shape), or tie_embeddings: false";
    return NULL;
}

static void fifo_free(nb_backend_t *be, local_fifo_t *f)
{
    for (int i = 0; i < f->len; i++)
        nb_be_dealloc(be, f->items[(f->head + i) % f->cap].dev);
    free(f->items);
    memset(f, 0, sizeof *f);
}

static int fifo_push(local_fifo_t *f, int mb, float *dev)
{
    if (f->len == f->cap) {
        int ncap = f->cap ? f->cap * 2 : 8;
        local_xfer_t *n = malloc((size_t)ncap * sizeof *n);
        if (!n)
            return NB_ENOMEM;
        for (int i = 0; i < f->len; i++)
            n[i] = f->items[(f->head + i) % f->cap];
        free(f->items);
        f->items = n;
        f->cap = ncap;
        f->head = 0;
    }
    f->items[(f->head + f->len) % f->cap] = (local_xfer_t){ mb, dev };
    f->len++;
    return 0;
}

static int fifo_pop(local_fifo_t *f, local_xfer_t *out)
{
    if (f->len == 0)
        return NB_ESTATE;
    *out = f->items[f->head];
    f->head = (f->head + 1) % f->cap;
    f->len--;
    return 0;
}

void nb_host_free(nb_host_t *h)
{
    if (!h)
        return;
    /* head parts may borrow the embedding part's wte: free them first */
    for (int i = h->n - 1; i >= 0; i--) {
        hosted_t *s = &h->st[i];
        for (int j = 0; j < s->pool_n; j++)
            nb_reps_acts_free(s->pool[j]);
        free(s->pool);
        free(s->busy);
        free(s->slot_of_mb);
        if (s->x_in) nb_be_dealloc(h->be, s->x_in);
        if (s->dout) nb_be_dealloc(h->be, s->dout);
        if (s->d_tokens) nb_be_dealloc(h->be, s->d_tokens);
        if (s->d_targets) nb_be_dealloc(h->be, s->d_targets);
        for (int k = 0; k < 4; k++) {
            nb_codec_stream_free(s->streams[k]);
            nb_codec_stream_free(s->saved[k]);
        }
        fifo_free(h->be, &s->local_in[0]);
        fifo_free(h->be, &s->local_in[1]);
        nb_reps_free(s->reps);
        nb_optim_free(s->optim);
        nb_part_free(s->part);
    }
    for (int i = 0; i < h->labels_cap; i++)
        free(h->labels[i]);
    free(h->labels);
    free(h->ops);
    free(h->timings);
    nb_codec_msg_free(&h->enc);
    nb_tokens_close(h->heldout); /* slices: before the file they borrow */
    nb_tokens_close(h->tokens);
    nb_tokens_close(h->file);
    free(h);
}

int nb_host_new(nb_backend_t *be, const nb_pipe_layout_t *l, int daemon, const char *data,
                nb_host_t **out, char *err, size_t errlen)
{
    return nb_host_new_replicas(&be, 1, l, daemon, data, out, err, errlen);
}

int nb_host_new_replicas(nb_backend_t *const *bes, int n_replicas, const nb_pipe_layout_t *l, int daemon,
                         const char *data, nb_host_t **out, char *err, size_t errlen)
{
    *out = NULL;
    nb_backend_t *be = bes[0];
    const char *why = nb_pipe_layout_validate(l);
    if (why) {
        snprintf(err, errlen, "%s", why);
        return NB_EINVAL;
    }
    if (daemon < 0 || daemon >= l->n_daemons) {
        snprintf(err, errlen, "layout: daemon index %d out of range", daemon);
        return NB_EINVAL;
    }
    nb_host_t *h = calloc(1, sizeof *h);
    if (!h)
        return NB_ENOMEM;
    h->be = be;
    h->l = *l;
    h->daemon = daemon;
    h->labels_travel = l->placement[0] != l->placement[l->p - 1];
    nb_codec_msg_init(&h->enc);
    int rc = nb_grad_fault_from_env(&h->fault, err, errlen);
    if (rc)
        goto fail;
    for (int s = 0; s < l->p; s++)
        h->local_of[s] = -1;
    for (int s = 0; s < l->p; s++) {
        if (l->placement[s] != daemon)
            continue;
        hosted_t *hs = &h->st[h->n];
        hs->stage = s;
        h->local_of[s] = h->n++;
        nb_part_t *tie = NULL;
        if (l->parts[s].head && !l->parts[s].embed && l->model.tie_embeddings)
            tie = h->st[h->local_of[0]].part; /* validated: stage 0 is here */
        if ((rc = nb_part_new(be, &l->model, &l->parts[s], l->seed, tie, &hs->part, err, errlen)))
            goto fail;
        /* each stage freezes the tensors of the job's patterns it holds */
        if ((rc = nb_part_freeze(hs->part, &l->freeze)) ||
            (rc = nb_part_optim_new(hs->part, &l->optim, &hs->optim))) {
            snprintf(err, errlen, "stage %d: cannot create the gradients or the optimizer (%s)", s,
                     nb_strerror(rc));
            goto fail;
        }
        nb_reps_t *tie_reps = tie ? h->st[h->local_of[0]].reps : NULL;
        if ((rc = nb_reps_new(hs->part, hs->optim, bes, n_replicas, &l->optim, l->seed, tie_reps, &hs->reps,
                              err, errlen)))
            goto fail;
        size_t ab = act_elems(h) * sizeof(float), tb = bt_elems(h) * sizeof(int32_t);
        if (!l->parts[s].embed && !(hs->x_in = nb_be_alloc(be, ab)))
            goto oom;
        if (!l->parts[s].head && !(hs->dout = nb_be_alloc(be, ab)))
            goto oom;
        if (l->parts[s].embed && !(hs->d_tokens = nb_be_alloc(be, tb)))
            goto oom;
        if (l->parts[s].head && !(hs->d_targets = nb_be_alloc(be, tb)))
            goto oom;
        for (int k = 0; k < 4; k++)
            if (!(hs->streams[k] = nb_codec_stream_new(be, HOST_STREAM_STATE_BYTES)) ||
                !(hs->saved[k] = nb_codec_stream_new(be, HOST_STREAM_STATE_BYTES)))
                goto oom;
    }
    if (h->local_of[0] >= 0) {
        if (!data || !*data) {
            snprintf(err, errlen, "stage 0 is hosted here but no token file (data) is configured");
            rc = NB_EINVAL;
            goto fail;
        }
        if ((rc = nb_tokens_open(data, &h->tokens, err, errlen)))
            goto fail;
        bool mlm = l->model.head == NB_MODEL_HEAD_MLM;
        if (nb_tokens_vocab(h->tokens) > (uint32_t)l->model.vocab - (mlm && !l->model.mask_token ? 1u : 0u)) {
            snprintf(err, errlen, "%s: vocabulary %u is larger than model.vocab %d%s", data,
                     nb_tokens_vocab(h->tokens), l->model.vocab, mlm ? " minus the mask token" : "");
            rc = NB_EINVAL;
            goto fail;
        }
        if (l->eval_fraction > 0.0) {
            /* nebula-train's rule: the tail is held out, training never sees it */
            h->file = h->tokens;
            h->tokens = NULL;
            if ((rc = nb_holdout_split(h->file, data, l->eval_fraction, l->seq_len, &h->tokens, &h->heldout, err,
                                       errlen)))
                goto fail;
        }
    }
    *out = h;
    return 0;
oom:
    snprintf(err, errlen, "out of memory for the stage buffers");
    rc = NB_ENOMEM;
fail:
    nb_host_free(h);
    return rc;
}

int nb_host_num_stages(const nb_host_t *h) { return h->n; }
const nb_pipe_layout_t *nb_host_layout(const nb_host_t *h) { return &h->l; }
int nb_host_daemon(const nb_host_t *h) { return h->daemon; }
nb_backend_t *nb_host_backend(const nb_host_t *h) { return h->be; }
const nb_tokens_t *nb_host_heldout(const nb_host_t *h) { return h->heldout; }
int nb_host_stage(const nb_host_t *h, int i) { return h->st[i].stage; }
nb_part_t *nb_host_part(nb_host_t *h, int i) { return h->st[i].part; }

int nb_host_replicas(const nb_host_t *h) { return h->n ? nb_reps_count(h->st[0].reps) : 1; }
nb_part_t *nb_host_replica_part(nb_host_t *h, int i, int r) { return nb_reps_part(h->st[i].reps, r); }

size_t nb_host_overlapped(const nb_host_t *h)
{
    size_t n = 0;
    for (int i = 0; i < h->n; i++)
        n += nb_reps_overlapped(h->st[i].reps);
    return n;
}

int nb_host_sync_replicas(nb_host_t *h)
{
    for (int i = 0; i < h->n; i++) {
        int rc = nb_reps_sync(h->st[i].reps);
        if (rc)
            return rc;
    }
    return 0;
}

size_t nb_host_memory_bytes(const nb_host_t *h)
{
    nb_mem_model_t m;
    nb_host_memory_parts(h, &m);
    return (size_t)(m.weights + m.gradients + m.optimizer + m.activations);
}

void nb_host_memory_parts(const nb_host_t *h, nb_mem_model_t *out)
{
    memset(out, 0, sizeof *out);
    uint64_t R = (uint64_t)nb_host_replicas(h);
    for (int i = 0; i < h->n; i++) {
        /* on every replica; frozen tensors have weights but no gradient
         * and no AdamW state */
        out->weights += nb_part_num_params(h->st[i].part) * sizeof(float) * R;
        out->gradients += nb_part_grad_bytes(h->st[i].part) * R;
        out->optimizer += nb_optim_numel(h->st[i].optim) * sizeof(float) * 2 * R; /* AdamW m and v */
    }
    out->activations = h->peak_acts_bytes;
}

/* Re-sizes every per-micro-batch buffer for B sequences (between steps: no
 * activation slot is in use). */
static int resize_batch(nb_host_t *h, int B, char *err, size_t errlen)
{
    size_t elems;
    if (B < 1 || B > 65536 ||
        nb_mul_size((size_t)B * (size_t)h->l.seq_len, (size_t)h->l.model.d_model, &elems) ||
        elems > ((size_t)1 << 34)) {
        snprintf(err, errlen, "plan: micro-batch size %d out of range", B);
        return NB_EINVAL;
    }
    h->l.micro_batch_size = B;
    h->peak_acts_bytes = 0;
    size_t ab = act_elems(h) * sizeof(float), tb = bt_elems(h) * sizeof(int32_t);
    for (int i = 0; i < h->n; i++) {
        hosted_t *s = &h->st[i];
        for (int j = 0; j < s->pool_n; j++) {
            NB_CHECK(!s->busy[j]);
            nb_reps_acts_free(s->pool[j]);
        }
        s->pool_n = 0;
        float **bufs[2] = { &s->x_in, &s->dout };
        for (int k = 0; k < 2; k++)
            if (*bufs[k]) {
                nb_be_dealloc(h->be, *bufs[k]);
                if (!(*bufs[k] = nb_be_alloc(h->be, ab)))
                    goto oom;
            }
        int32_t **ibufs[2] = { &s->d_tokens, &s->d_targets };
        for (int k = 0; k < 2; k++)
            if (*ibufs[k]) {
                nb_be_dealloc(h->be, *ibufs[k]);
                if (!(*ibufs[k] = nb_be_alloc(h->be, tb)))
                    goto oom;
            }
    }
    for (int i = 0; i < h->labels_cap; i++) {
        free(h->labels[i]);
        h->labels[i] = NULL;
    }
    return 0;
oom:
    snprintf(err, errlen, "out of memory for micro-batches of %d sequences", B);
    return NB_ENOMEM;
}

/* ---- per-step helpers ---------------------------------------------------- */

static int prepare_step(nb_host_t *h, int m)
{
    if (m > h->labels_cap) {
        int32_t **n = realloc(h->labels, (size_t)m * sizeof *n);
        if (!n)
            return NB_ENOMEM;
        for (int i = h->labels_cap; i < m; i++)
            n[i] = NULL;
        h->labels = n;
        h->labels_cap = m;
    }
    for (int i = 0; i < h->n; i++) {
        hosted_t *s = &h->st[i];
        int *map = realloc(s->slot_of_mb, (size_t)m * sizeof *map);
        if (!map)
            return NB_ENOMEM;
        s->slot_of_mb = map;
        for (int j = 0; j < m; j++)
            map[j] = -1;
    }
    int need = h->n * m;
    if (need > h->timings_cap) {
        nb_mb_timing_t *t = realloc(h->timings, (size_t)need * sizeof *t);
        if (!t)
            return NB_ENOMEM;
        h->timings = t;
        h->timings_cap = need;
    }
    memset(h->timings, 0, (size_t)need * sizeof *h->timings);
    for (int i = 0; i < h->n; i++)
        for (int j = 0; j < m; j++) {
            h->timings[i * m + j].stage = h->st[i].stage;
            h->timings[i * m + j].mb = j;
        }
    return 0;
}

static nb_mb_timing_t *timing(nb_host_t *h, int stage, int mb, int m)
{
    return &h->timings[h->local_of[stage] * m + mb];
}

static int acquire_slot(nb_host_t *h, hosted_t *s, int mb, nb_reps_acts_t **out)
{
    int slot = -1;
    for (int i = 0; i < s->pool_n; i++)
        if (!s->busy[i]) {
            slot = i;
            break;
        }
    if (slot < 0) {
        nb_reps_acts_t **np = realloc(s->pool, (size_t)(s->pool_n + 1) * sizeof *np);
        if (!np)
            return NB_ENOMEM;
        s->pool = np;
        bool *nb = realloc(s->busy, (size_t)(s->pool_n + 1) * sizeof *nb);
        if (!nb)
            return NB_ENOMEM;
        s->busy = nb;
        int rc = nb_reps_acts_new(s->reps, h->l.micro_batch_size, h->l.seq_len, &s->pool[s->pool_n]);
        if (rc)
            return rc;
        h->peak_acts_bytes += nb_reps_acts_bytes(s->pool[s->pool_n]);
        s->busy[s->pool_n] = false;
        slot = s->pool_n++;
    }
    s->busy[slot] = true;
    s->slot_of_mb[mb] = slot;
    *out = s->pool[slot];
    return 0;
}

static uint64_t codec_seed(const nb_host_t *h, int64_t step, int mb, int stage, int dir)
{
    uint64_t x = h->l.seed ^ 0x9e3779b97f4a7c15ull;
    x ^= (uint64_t)step * 0xbf58476d1ce4e5b9ull;
    x ^= (uint64_t)(mb + 1) * 0x94d049bb133111ebull;
    x ^= (uint64_t)(stage * 2 + dir + 1) * 0x2545f4914f6cdd1dull;
    return x;
}

/* Encodes a (rows, cols) device tensor into a new message. */
static int encode_msg(nb_host_t *h, const nb_codec_spec_t *spec, const float *dev, int64_t rows,
                      int64_t cols, uint64_t seed, nb_codec_stream_t *st, uint64_t key,
                      nb_pmsg_t **out, char *err, size_t errlen)
{
    int64_t shape[2] = { rows, cols };
    nb_tensor_t x = nb_tensor_view(h->be, NB_F32, (void *)dev, 2, shape);
    int rc = nb_codec_encode(h->be, spec, &x, seed, st, key, &h->enc, err, errlen);
    if (rc)
        return rc;
    nb_pmsg_t *m = nb_pmsg_new();
    if (!m)
        return NB_ENOMEM;
    snprintf(m->spec, sizeof m->spec, "%s", h->enc.spec);
    memcpy(m->meta, h->enc.meta, h->enc.meta_len);
    m->meta_len = h->enc.meta_len;
    /* hand the payload over instead of copying it; the codec allocates anew */
    m->payload = h->enc.payload;
    m->payload_len = h->enc.payload_len;
    h->enc.payload = NULL;
    h->enc.payload_len = h->enc.payload_cap = 0;
    m->rows = rows;
    m->cols = cols;
    m->raw_bytes = (uint64_t)rows * (uint64_t)cols * sizeof(float);
    *out = m;
    return 0;
}

/* Round-trip relative error ||x - decode(m)|| / ||x|| of the n floats at
 * dev that m encodes (stateless codecs only: decoded without a stream);
 * -1 when it cannot be measured (no memory, a decode error). */
static double roundtrip_error(nb_host_t *h, const nb_pmsg_t *m, const float *dev, size_t n)
{
    float *y = nb_be_alloc(h->be, n * sizeof *y);
    float *hx = malloc(2 * n * sizeof *hx);
    double e = -1;
    if (y && hx) {
        int64_t shape[1] = { (int64_t)n };
        nb_tensor_t dst = nb_tensor_view(h->be, NB_F32, y, 1, shape);
        if (nb_codec_decode_into(h->be, m->spec, m->meta, m->meta_len, m->payload, m->payload_len, 0, NULL,
                                 &dst, NULL, 0) == 0) {
            nb_be_to_host(h->be, hx, dev, n * sizeof *hx);
            nb_be_to_host(h->be, hx + n, y, n * sizeof *hx);
            nb_be_sync(h->be);
            double num = 0, den = 0;
            for (size_t i = 0; i < n; i++) {
                double d = (double)hx[i] - (double)hx[n + i];
                num += d * d;
                den += (double)hx[i] * (double)hx[i];
            }
            e = den > 0 && isfinite(num) ? sqrt(num / den) : -1;
        }
    }
    if (y)
        nb_be_dealloc(h->be, y);
    free(hx);
    return e;
}

static int check_msg(const nb_pmsg_t *m, nb_pmsg_kind_t kind, int64_t step, int mb, int from,
                     char *err, size_t errlen)
{
    if (m->kind != kind || m->step != step || m->mb != mb || m->from_stage != from || m->eval) {
        snprintf(err, errlen, "expected %s of step %lld micro-batch %d from stage %d, got %s%s of "
                 "step %lld micro-batch %d from stage %d", nb_pmsg_kind_name(kind), (long long)step,
                 mb, from, m->eval ? "evaluation " : "", nb_pmsg_kind_name(m->kind), (long long)m->step, m->mb,
                 m->from_stage);
        return NB_ESTATE;
    }
    return 0;
}

static int recv_remote(nb_host_t *h, const nb_pipe_io_i *io, int stage, nb_pmsg_kind_t kind,
                       int64_t step, int mb, int from, int timeout_ms, nb_mb_timing_t *tm,
                       nb_pmsg_t **out, char *err, size_t errlen)
{
    uint64_t t0 = nb_mono_ns();
    nb_pmsg_t *m = NULL;
    int rc = io->recv(io->ud, stage, kind, &m, timeout_ms);
    tm->wait_ns += nb_mono_ns() - t0;
    if (rc) {
        snprintf(err, errlen, "stage %d: no %s for step %lld micro-batch %d from stage %d (%s)",
                 stage, nb_pmsg_kind_name(kind), (long long)step, mb, from, nb_strerror(rc));
        return rc;
    }
    if ((rc = check_msg(m, kind, step, mb, from, err, errlen))) {
        nb_pmsg_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

/* Stores the labels of mb (host copy) for the head on this daemon or the
 * next hop; takes ownership of buf. */
static void put_labels(nb_host_t *h, int mb, int32_t *buf)
{
    free(h->labels[mb]);
    h->labels[mb] = buf;
}

static int send_labels(nb_host_t *h, const nb_pipe_io_i *io, int from, int64_t step, int mb)
{
    const int32_t *lab = h->labels[mb];
    NB_CHECK(lab);
    nb_pmsg_t *m = nb_pmsg_new();
    size_t bytes = bt_elems(h) * sizeof(int32_t);
    if (!m || !(m->payload = malloc(bytes))) {
        nb_pmsg_free(m);
        return NB_ENOMEM;
    }
    memcpy(m->payload, lab, bytes);
    m->payload_len = bytes;
    m->raw_bytes = bytes;
    m->kind = NB_PMSG_LABELS;
    m->from_stage = from;
    m->to_stage = from + 1;
    m->step = step;
    m->mb = mb;
    m->rows = h->l.micro_batch_size;
    m->cols = h->l.seq_len;
    snprintf(m->spec, sizeof m->spec, "%s", NB_PMSG_LABELS_CODEC);
    int rc = io->send(io->ud, m);
    if (rc)
        nb_pmsg_free(m);
    return rc;
}

static int take_labels(nb_host_t *h, nb_pmsg_t *m, char *err, size_t errlen)
{
    size_t bytes = bt_elems(h) * sizeof(int32_t);
    if (strcmp(m->spec, NB_PMSG_LABELS_CODEC) != 0 || m->payload_len != bytes ||
        m->rows != h->l.micro_batch_size || m->cols != h->l.seq_len) {
        snprintf(err, errlen, "labels of micro-batch %d: expected %zu bytes of %s, got %zu bytes of '%s'",
                 m->mb, bytes, NB_PMSG_LABELS_CODEC, m->payload_len, m->spec);
        return NB_EFORMAT;
    }
    const int32_t *v = (const int32_t *)m->payload;
    for (size_t i = 0; i < bytes / sizeof(int32_t); i++)
        if (v[i] >= h->l.model.vocab || v[i] < -1) {
            snprintf(err, errlen, "labels of micro-batch %d: value %d at %zu outside the vocabulary",
                     m->mb, v[i], i);
            return NB_ERANGE;
        }
    put_labels(h, m->mb, (int32_t *)m->payload);
    m->payload = NULL;
    return 0;
}

/* ---- the step ---------------------------------------------------------- */

typedef struct {
    nb_host_t *h;
    const nb_step_plan_t *plan;
    const nb_pipe_io_i *io;
    nb_codec_spec_t fwd, bwd;
    int timeout_ms;
    double loss;
    uint64_t bytes_raw, bytes_wire;
    int last_bwd[NB_SCHED_MAX_STAGES]; /* per stage: the micro-batch of its step's last backward */
    char *err;
    size_t errlen;
} step_ctx_t;

static int op_recv(step_ctx_t *c, const nb_sched_op_t *op)
{
    nb_host_t *h = c->h;
    int s = op->stage, mb = op->mb, m = c->plan->m;
    hosted_t *hs = &h->st[h->local_of[s]];
    bool act = op->kind == NB_OP_RECV_ACT;
    int from = act ? s - 1 : s + 1;
    nb_mb_timing_t *tm = timing(h, s, mb, m);
    float *dst = act ? hs->x_in : hs->dout;
    int width = link_width(h, act ? from : s);
    size_t link_elems = bt_elems(h) * (size_t)width;
    if (h->local_of[from] >= 0) {
        local_xfer_t x = { -1, NULL };
        if (fifo_pop(&hs->local_in[act ? 0 : 1], &x) || x.mb != mb) {
            if (x.dev && x.mb != mb)
                nb_be_dealloc(h->be, x.dev);
            snprintf(c->err, c->errlen, "stage %d: local transfer out of order at micro-batch %d", s, mb);
            return NB_ESTATE;
        }
        nb_be_copy(h->be, dst, x.dev, link_elems * sizeof(float));
        nb_be_dealloc(h->be, x.dev);
        return 0;
    }
    nb_pmsg_t *msg = NULL;
    nb_pmsg_kind_t kind = act ? NB_PMSG_ACT : NB_PMSG_GRAD;
    int rc = recv_remote(h, c->io, s, kind, c->plan->step, mb, from, c->timeout_ms, tm, &msg,
                         c->err, c->errlen);
    if (rc)
        return rc;
    if (msg->rows != (int64_t)bt_elems(h) || msg->cols != width) {
        snprintf(c->err, c->errlen, "stage %d: %s of micro-batch %d has shape %lldx%lld, expected %zux%d",
                 s, nb_pmsg_kind_name(kind), mb, (long long)msg->rows, (long long)msg->cols,
                 bt_elems(h), width);
        nb_pmsg_free(msg);
        return NB_EFORMAT;
    }
    uint64_t t0 = nb_mono_ns();
    int64_t shape[2] = { msg->rows, msg->cols };
    nb_tensor_t view = nb_tensor_view(h->be, NB_F32, dst, 2, shape);
    rc = nb_codec_decode_into(h->be, msg->spec, msg->meta, msg->meta_len, msg->payload, msg->payload_len,
                              link_elems * sizeof(float), hs->streams[act ? 1 : 3], &view,
                              c->err, c->errlen);
    tm->decode_ns += nb_mono_ns() - t0;
    nb_pmsg_free(msg);
    if (rc)
        return rc;
    if (act && h->labels_travel) {
        if ((rc = recv_remote(h, c->io, s, NB_PMSG_LABELS, c->plan->step, mb, from, c->timeout_ms, tm,
                              &msg, c->err, c->errlen)))
            return rc;
        rc = take_labels(h, msg, c->err, c->errlen);
        nb_pmsg_free(msg);
    }
    return rc;
}

static int op_send(step_ctx_t *c, const nb_sched_op_t *op)
{
    nb_host_t *h = c->h;
    int s = op->stage, mb = op->mb, m = c->plan->m;
    hosted_t *hs = &h->st[h->local_of[s]];
    bool act = op->kind == NB_OP_SEND_ACT;
    int to = act ? s + 1 : s - 1;
    int slot = mb >= 0 && mb < m ? hs->slot_of_mb[mb] : -1;
    if (slot < 0) {
        snprintf(c->err, c->errlen, "stage %d: no %s of micro-batch %d to send (schedule out of order)", s,
                 act ? "activations" : "gradients", mb);
        return NB_ESTATE;
    }
    nb_reps_acts_t *a = hs->pool[slot];
    const float *src = act ? nb_reps_acts_output(a) : nb_reps_acts_dinput(a);
    nb_mb_timing_t *tm = timing(h, s, mb, m);
    int width = link_width(h, act ? s : to);
    size_t link_elems = bt_elems(h) * (size_t)width;
    if (h->local_of[to] >= 0) {
        float *dev = nb_be_alloc(h->be, act_elems(h) * sizeof(float));
        if (!dev)
            return NB_ENOMEM;
        nb_be_copy(h->be, dev, src, link_elems * sizeof(float));
        hosted_t *dst = &h->st[h->local_of[to]];
        int rc = fifo_push(&dst->local_in[act ? 0 : 1], mb, dev);
        if (rc)
            nb_be_dealloc(h->be, dev);
        return rc;
    }
    uint64_t t0 = nb_mono_ns();
    nb_pmsg_t *msg = NULL;
    int rc = encode_msg(h, act ? &c->fwd : &c->bwd, src, (int64_t)bt_elems(h), width,
                        codec_seed(h, c->plan->step, mb, s, act ? 0 : 1), hs->streams[act ? 0 : 2],
                        (uint64_t)mb, &msg, c->err, c->errlen);
    tm->encode_ns += nb_mono_ns() - t0;
    if (rc)
        return rc;
    /* the quality signal the planner budgets (docs/planner.md, "Codec
     * quality"): a sample of the live tensor's round-trip error */
    const nb_codec_spec_t *sp = act ? &c->fwd : &c->bwd;
    if (mb == 0 && c->plan->step % NB_HOST_ERR_EVERY == 0 && !sp->ef && !sp->delta && !nb_codec_spec_lossless(sp)) {
        double e = roundtrip_error(h, msg, src, link_elems);
        if (e > 0 && act)
            tm->act_err = e;
        else if (e > 0)
            tm->grad_err = e;
    }
    msg->kind = act ? NB_PMSG_ACT : NB_PMSG_GRAD;
    msg->from_stage = s;
    msg->to_stage = to;
    msg->step = c->plan->step;
    msg->mb = mb;
    uint64_t raw = msg->raw_bytes, wire = nb_pmsg_wire_bytes(msg);
    t0 = nb_mono_ns();
    if ((rc = c->io->send(c->io->ud, msg))) {
        nb_pmsg_free(msg);
        snprintf(c->err, c->errlen, "stage %d: cannot send %s of micro-batch %d to stage %d (%s)", s,
                 act ? "activations" : "gradients", mb, to, nb_strerror(rc));
        return rc;
    }
    tm->wait_ns += nb_mono_ns() - t0;
    tm->bytes_raw += raw;
    tm->bytes_wire += wire;
    c->bytes_raw += raw;
    c->bytes_wire += wire;
    if (act && h->labels_travel) {
        if ((rc = send_labels(h, c->io, s, c->plan->step, mb))) {
            snprintf(c->err, c->errlen, "stage %d: cannot send labels of micro-batch %d (%s)", s, mb,
                     nb_strerror(rc));
            return rc;
        }
        size_t lb = bt_elems(h) * sizeof(int32_t);
        tm->bytes_raw += lb;
        tm->bytes_wire += lb + strlen(NB_PMSG_LABELS_CODEC);
        c->bytes_raw += lb;
        c->bytes_wire += lb + strlen(NB_PMSG_LABELS_CODEC);
    }
    return 0;
}

static int op_forward(step_ctx_t *c, const nb_sched_op_t *op)
{
    nb_host_t *h = c->h;
    int s = op->stage, mb = op->mb, m = c->plan->m;
    hosted_t *hs = &h->st[h->local_of[s]];
    const nb_part_spec_t *ps = &h->l.parts[s];
    size_t bt = bt_elems(h);
    nb_part_input_t in = { .loss_scale = 1.0f / (float)m };
    nb_mb_timing_t *tm = timing(h, s, mb, m);
    if (ps->embed) {
        int32_t *inputs = malloc(bt * sizeof(int32_t)), *targets = malloc(bt * sizeof(int32_t));
        if (!inputs || !targets) {
            free(inputs);
            free(targets);
            return NB_ENOMEM;
        }
        /* the trainer's samplers (trainer.h): masked tokens for mlm */
        int rc = h->l.model.head == NB_MODEL_HEAD_MLM
                     ? nb_tokens_sample_mlm(h->tokens, h->l.seed, (uint64_t)c->plan->step, (uint32_t)mb,
                                            h->l.micro_batch_size, h->l.seq_len, NB_TOKENS_MLM_MASK_PROB,
                                            nb_model_mask_token(&h->l.model), inputs, targets)
                     : nb_tokens_sample(h->tokens, h->l.seed, (uint64_t)c->plan->step, (uint32_t)mb,
                                        h->l.micro_batch_size, h->l.seq_len, inputs, targets);
        if (rc) {
            free(inputs);
            free(targets);
            snprintf(c->err, c->errlen, "step %lld micro-batch %d: cannot sample a batch",
                     (long long)c->plan->step, mb);
            return rc;
        }
        nb_be_from_host(h->be, hs->d_tokens, inputs, bt * sizeof(int32_t));
        nb_be_sync(h->be); /* inputs is freed next */
        free(inputs);
        put_labels(h, mb, targets);
        in.tokens = hs->d_tokens;
    } else {
        in.x = hs->x_in;
    }
    if (ps->head) {
        NB_CHECK(h->labels[mb]);
        nb_be_from_host(h->be, hs->d_targets, h->labels[mb], bt * sizeof(int32_t));
        in.targets = hs->d_targets;
        if (nb_reps_count(hs->reps) > 1) /* shards normalise by the whole micro-batch */
            for (size_t i = 0; i < bt; i++)
                in.loss_count += h->labels[mb][i] >= 0;
    }
    nb_reps_acts_t *a;
    int rc = acquire_slot(h, hs, mb, &a);
    if (rc) {
        snprintf(c->err, c->errlen, "stage %d: out of memory for the activations of micro-batch %d", s, mb);
        return rc;
    }
    float loss = 0.0f;
    tm->fwd_start_ns = nb_mono_ns();
    char why[160];
    rc = nb_reps_forward(hs->reps, a, &in, &loss, why, sizeof why);
    nb_be_sync(h->be);
    tm->fwd_ns = nb_mono_ns() - tm->fwd_start_ns;
    if (rc) {
        snprintf(c->err, c->errlen, "stage %d micro-batch %d: %s", s, mb, why);
        return rc;
    }
    if (ps->head) /* in float, in micro-batch order, as nb_trainer_step: the trainer's loss to the bit */
        c->loss = (double)((float)c->loss + loss / (float)m);
    return 0;
}

static int op_backward(step_ctx_t *c, const nb_sched_op_t *op)
{
    nb_host_t *h = c->h;
    int s = op->stage, mb = op->mb;
    hosted_t *hs = &h->st[h->local_of[s]];
    int slot = hs->slot_of_mb[mb];
    NB_CHECK(slot >= 0);
    nb_mb_timing_t *tm = timing(h, s, mb, c->plan->m);
    tm->bwd_start_ns = nb_mono_ns();
    char why[160];
    int rc = nb_reps_backward(hs->reps, hs->pool[slot], h->l.parts[s].head ? NULL : hs->dout,
                              mb == c->last_bwd[s], why, sizeof why);
    nb_be_sync(h->be);
    tm->bwd_ns = nb_mono_ns() - tm->bwd_start_ns;
    if (rc) {
        snprintf(c->err, c->errlen, "stage %d micro-batch %d: %s", s, mb, why);
        return rc;
    }
    /* the slot stays busy until its input gradient has been sent */
    if (h->l.parts[s].embed) {
        hs->busy[slot] = false;
        hs->slot_of_mb[mb] = -1;
    }
    return 0;
}

static void release_after_send(nb_host_t *h, const nb_sched_op_t *op)
{
    hosted_t *hs = &h->st[h->local_of[op->stage]];
    int slot = hs->slot_of_mb[op->mb];
    if (op->kind == NB_OP_SEND_GRAD && slot >= 0) {
        hs->busy[slot] = false;
        hs->slot_of_mb[op->mb] = -1;
    }
}

int nb_host_run_step(nb_host_t *h, const nb_step_plan_t *plan, const nb_pipe_io_i *io,
                     int timeout_ms, nb_step_result_t *res, char *err, size_t errlen)
{
    uint64_t t_start = nb_mono_ns();
    const nb_pipe_layout_t *l = &h->l;
    if (plan->m < 1 || plan->m > NB_SCHED_MAX_MB) {
        snprintf(err, errlen, "plan: %d micro-batches out of range 1..%d", plan->m, NB_SCHED_MAX_MB);
        return NB_EINVAL;
    }
    step_ctx_t c = { .h = h, .plan = plan, .io = io, .timeout_ms = timeout_ms, .err = err, .errlen = errlen };
    int rc;
    if ((rc = nb_codec_spec_parse(plan->fwd_codec, &c.fwd, err, errlen)) ||
        (rc = nb_codec_spec_parse(plan->bwd_codec, &c.bwd, err, errlen)))
        return rc;
    int n = nb_sched_daemon_count(l->p, plan->m, l->placement, h->daemon);
    if (n < 0) {
        snprintf(err, errlen, "plan: no schedule for %d stages and %d micro-batches", l->p, plan->m);
        return n;
    }
    if (n > h->ops_cap) {
        nb_sched_op_t *o = realloc(h->ops, (size_t)n * sizeof *o);
        if (!o)
            return NB_ENOMEM;
        h->ops = o;
        h->ops_cap = n;
    }
    n = nb_sched_build_daemon(&plan->sched, l->p, plan->m, l->placement, h->daemon,
                              nb_sched_min_queue_cap(&plan->sched), h->ops, h->ops_cap);
    if (n < 0) {
        snprintf(err, errlen, "plan: the schedule cannot run on this placement (%s)", nb_strerror(n));
        return n;
    }
    if (plan->micro_batch_size > 0 && plan->micro_batch_size != l->micro_batch_size &&
        (rc = resize_batch(h, plan->micro_batch_size, err, errlen)))
        return rc;
    int R = nb_host_replicas(h);
    if (l->micro_batch_size < R) {
        snprintf(err, errlen, "plan: a micro-batch of %d sequences cannot be split across this daemon's %d "
                 "replicas (each needs one sequence at least; docs/pipeline.md, \"Replicas\")",
                 l->micro_batch_size, R);
        return NB_EINVAL;
    }
    if ((rc = prepare_step(h, plan->m)))
        return rc;
    for (int i = 0; i < n; i++)
        if (h->ops[i].kind == NB_OP_BWD)
            c.last_bwd[h->ops[i].stage] = h->ops[i].mb;
    for (int i = 0; i < n && rc == 0; i++) {
        const nb_sched_op_t *op = &h->ops[i];
        switch (op->kind) {
        case NB_OP_RECV_ACT:
        case NB_OP_RECV_GRAD: rc = op_recv(&c, op); break;
        case NB_OP_FWD: rc = op_forward(&c, op); break;
        case NB_OP_BWD: rc = op_backward(&c, op); break;
        case NB_OP_SEND_ACT:
        case NB_OP_SEND_GRAD:
            rc = op_send(&c, op);
            if (rc == 0)
                release_after_send(h, op);
            break;
        }
    }
    for (int i = 0; i < h->n && rc == 0; i++) { /* after the last backward: sum over the replicas */
        char why[160];
        if ((rc = nb_reps_reduce(h->st[i].reps, why, sizeof why)))
            snprintf(err, errlen, "stage %d: the all-reduce of the replicas' gradients failed: %s", h->st[i].stage,
                     why);
    }
    if (rc)
        return rc;
    double ss = 0.0;
    uint64_t nonfinite = 0;
    for (int i = 0; i < h->n; i++) {
        hosted_t *hs = &h->st[i];
        if (nb_grad_fault_hits(&h->fault, plan->step, hs->stage))
            nb_grad_fault_poison(h->be, nb_part_grads(hs->part));
        double si = nb_optim_sumsq(h->be, nb_part_grads(hs->part), nb_part_num_grads(hs->part));
        if (!isfinite(si))
            nonfinite |= 1ull << hs->stage;
        ss += si;
    }
    bool has_head = h->local_of[l->p - 1] >= 0;
    res->step = plan->step;
    res->loss = has_head ? c.loss : NAN;
    res->grad_sumsq = ss;
    res->nonfinite_stages = nonfinite;
    res->bytes_raw = c.bytes_raw;
    res->bytes_wire = c.bytes_wire;
    res->n_timings = h->n * plan->m;
    res->timings = h->timings;
    res->step_ns = nb_mono_ns() - t_start;
    return 0;
}

void nb_host_abort_step(nb_host_t *h)
{
    for (int i = 0; i < h->n; i++) {
        hosted_t *s = &h->st[i];
        for (int j = 0; j < s->pool_n; j++)
            s->busy[j] = false;
        for (int k = 0; k < 2; k++) {
            local_xfer_t x;
            while (fifo_pop(&s->local_in[k], &x) == 0)
                nb_be_dealloc(h->be, x.dev);
        }
        /* the streams go back to where the last commit left them, as
         * their peers' do: the step runs again from the same state */
        for (int k = 0; k < 4; k++)
            if (s->streams[k] && nb_codec_stream_copy(s->streams[k], s->saved[k]) != 0)
                nb_codec_stream_reset(s->streams[k]);
        nb_reps_zero_grad(s->reps);
    }
    nb_be_sync(h->be);
}

int nb_host_save_streams(nb_host_t *h)
{
    int rc = 0;
    for (int i = 0; i < h->n; i++)
        for (int k = 0; k < 4; k++) {
            hosted_t *s = &h->st[i];
            if (nb_codec_stream_empty(s->streams[k]) && nb_codec_stream_empty(s->saved[k]))
                continue;
            int r = nb_codec_stream_copy(s->saved[k], s->streams[k]);
            if (r && !rc)
                rc = r;
        }
    return rc;
}

nb_codec_stream_t *nb_host_stream(nb_host_t *h, int i, int k)
{
    return h->st[i].streams[k];
}

nb_optim_t *nb_host_optim(nb_host_t *h, int i) { return h->st[i].optim; }

bool nb_host_apply(nb_host_t *h, int64_t step, double global_sumsq)
{
    /* nb_optim_clip_scale(NaN) is 1: a non-finite norm must never reach the
     * update, or every weight it touches becomes NaN */
    bool apply = isfinite(global_sumsq);
    if (apply) {
        float scale = nb_optim_clip_scale(&h->l.optim, global_sumsq);
        float lr = (float)nb_optim_lr(&h->l.optim, (int)step);
        for (int i = 0; i < h->n; i++) /* every replica steps with the same gradients */
            nb_reps_step(h->st[i].reps, lr, scale);
    }
    for (int i = 0; i < h->n; i++)
        nb_reps_zero_grad(h->st[i].reps);
    nb_be_sync(h->be);
    /* the streams' state at this step boundary is what an aborted next
     * step returns to; out of memory here is found by the next copy */
    (void)nb_host_save_streams(h);
    return apply;
}
