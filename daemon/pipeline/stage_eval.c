/*
 * stage_eval.c - the forward-only held-out evaluation of one daemon's
 * stages; see stage_eval.h for the contract and docs/pipeline.md,
 * "Held-out evaluation".
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/clock.h"
#include "daemon/pipeline/stage_eval.h"
#include "daemon/train/trainer.h"
#include "kernels/codec/codec.h"

/* State bound of an evaluation's codec stream (delta bases), as training's. */
#define EVAL_STREAM_STATE_BYTES (256u << 20)

/* One hosted stage's evaluation buffers. */
typedef struct {
    int stage;
    nb_part_t *part;
    nb_part_acts_t *acts;      /* one: nothing is kept for a backward */
    float *x_in;               /* decoded input activations (remote input) */
    int32_t *d_tokens;         /* stage 0 */
    int32_t *d_targets;        /* the head */
    nb_codec_stream_t *send;   /* the next stage is on another daemon */
    nb_codec_stream_t *recv;   /* the previous stage is on another daemon */
} ev_stage_t;

struct nb_eval {
    nb_host_t *host;
    nb_backend_t *be;
    const nb_pipe_layout_t *l;
    int daemon;
    nb_tokens_t *file;         /* eval_data, when given */
    const nb_tokens_t *tokens; /* what stage 0 samples from */
    ev_stage_t st[NB_SCHED_MAX_STAGES];
    int n;
    bool labels_travel;        /* stage 0 and the head on different daemons */
    int B;                     /* batch size the buffers are sized for; 0: none */
    int32_t *h_inputs;
    int32_t *labels[NB_EVAL_WINDOW]; /* host (B*T) targets of batch j % window */
    nb_codec_msg_t enc;
};

static void free_buffers(nb_eval_t *ev)
{
    for (int i = 0; i < ev->n; i++) {
        ev_stage_t *s = &ev->st[i];
        nb_part_acts_free(s->acts);
        s->acts = NULL;
        if (s->x_in) nb_be_dealloc(ev->be, s->x_in);
        if (s->d_tokens) nb_be_dealloc(ev->be, s->d_tokens);
        if (s->d_targets) nb_be_dealloc(ev->be, s->d_targets);
        s->x_in = NULL;
        s->d_tokens = s->d_targets = NULL;
    }
    free(ev->h_inputs);
    ev->h_inputs = NULL;
    for (int k = 0; k < NB_EVAL_WINDOW; k++) {
        free(ev->labels[k]);
        ev->labels[k] = NULL;
    }
    ev->B = 0;
}

void nb_eval_free(nb_eval_t *ev)
{
    if (!ev)
        return;
    free_buffers(ev);
    for (int i = 0; i < ev->n; i++) {
        nb_codec_stream_free(ev->st[i].send);
        nb_codec_stream_free(ev->st[i].recv);
    }
    nb_codec_msg_free(&ev->enc);
    nb_tokens_close(ev->file);
    free(ev);
}

const nb_tokens_t *nb_eval_tokens(const nb_eval_t *ev) { return ev->tokens; }

int nb_eval_new(nb_host_t *host, const char *eval_data, nb_eval_t **out, char *err, size_t errlen)
{
    *out = NULL;
    nb_eval_t *ev = calloc(1, sizeof *ev);
    if (!ev)
        return NB_ENOMEM;
    ev->host = host;
    ev->be = nb_host_backend(host);
    ev->l = nb_host_layout(host);
    ev->daemon = nb_host_daemon(host);
    nb_codec_msg_init(&ev->enc);
    const nb_pipe_layout_t *l = ev->l;
    ev->labels_travel = l->placement[0] != l->placement[l->p - 1];
    int rc = 0;
    ev->n = nb_host_num_stages(host);
    for (int i = 0; i < ev->n; i++) {
        ev_stage_t *s = &ev->st[i];
        s->stage = nb_host_stage(host, i);
        s->part = nb_host_part(host, i);
        if ((s->stage + 1 < l->p && l->placement[s->stage + 1] != ev->daemon &&
             !(s->send = nb_codec_stream_new(nb_stage_codec_backend(nb_host_codec(host)), EVAL_STREAM_STATE_BYTES))) ||
            (s->stage > 0 && l->placement[s->stage - 1] != ev->daemon &&
             !(s->recv = nb_codec_stream_new(nb_stage_codec_backend(nb_host_codec(host)), EVAL_STREAM_STATE_BYTES)))) {
            snprintf(err, errlen, "out of memory for the evaluation's codec streams");
            rc = NB_ENOMEM;
            goto fail;
        }
    }
    if (l->placement[0] == ev->daemon) {
        bool mlm = l->model.head == NB_MODEL_HEAD_MLM;
        uint64_t need = (uint64_t)l->seq_len + 1;
        if (eval_data && *eval_data) {
            if ((rc = nb_tokens_open(eval_data, &ev->file, err, errlen)))
                goto fail;
            if (nb_tokens_vocab(ev->file) > (uint32_t)l->model.vocab - (mlm && !l->model.mask_token ? 1u : 0u)) {
                snprintf(err, errlen, "%s: vocabulary %u is larger than model.vocab %d%s", eval_data,
                         nb_tokens_vocab(ev->file), l->model.vocab, mlm ? " minus the mask token" : "");
                rc = NB_EINVAL;
                goto fail;
            }
            if (nb_tokens_count(ev->file) < need) {
                snprintf(err, errlen, "%s: %llu tokens, fewer than seq_len + 1 = %d", eval_data,
                         (unsigned long long)nb_tokens_count(ev->file), l->seq_len + 1);
                rc = NB_EINVAL;
                goto fail;
            }
            ev->tokens = ev->file;
        } else if (!(ev->tokens = nb_host_heldout(host))) {
            snprintf(err, errlen, "stage 0 is hosted here but there are no held-out tokens to evaluate on "
                     "(job.eval.fraction, or job.eval.data with this daemon's eval_data)");
            rc = NB_EINVAL;
            goto fail;
        }
    }
    *out = ev;
    return 0;
fail:
    nb_eval_free(ev);
    return rc;
}

/* Sizes every buffer for batches of B sequences. */
static int ensure_buffers(nb_eval_t *ev, int B, char *err, size_t errlen)
{
    if (ev->B == B)
        return 0;
    free_buffers(ev);
    const nb_pipe_layout_t *l = ev->l;
    size_t bt = (size_t)B * (size_t)l->seq_len, ab = bt * (size_t)l->model.d_model * sizeof(float);
    for (int i = 0; i < ev->n; i++) {
        ev_stage_t *s = &ev->st[i];
        const nb_part_spec_t *ps = &l->parts[s->stage];
        if (nb_part_acts_new(s->part, B, l->seq_len, &s->acts) ||
            (s->recv && !(s->x_in = nb_be_alloc(ev->be, ab))) ||
            (ps->embed && !(s->d_tokens = nb_be_alloc(ev->be, bt * sizeof(int32_t)))) ||
            (ps->head && !(s->d_targets = nb_be_alloc(ev->be, bt * sizeof(int32_t)))))
            goto oom;
    }
    if (!(ev->h_inputs = malloc(bt * sizeof(int32_t))))
        goto oom;
    for (int k = 0; k < NB_EVAL_WINDOW; k++)
        if (!(ev->labels[k] = malloc(bt * sizeof(int32_t))))
            goto oom;
    ev->B = B;
    return 0;
oom:
    free_buffers(ev);
    snprintf(err, errlen, "out of memory for evaluation batches of %d x %d tokens", B, l->seq_len);
    return NB_ENOMEM;
}

/* ---- one evaluation ------------------------------------------------------ */

typedef struct {
    nb_eval_t *ev;
    const nb_eval_plan_t *plan;
    const nb_pipe_io_i *io;
    nb_codec_spec_t fwd;
    int timeout_ms;
    double sum;                 /* the head's losses, in batch order */
    uint64_t bytes_raw, bytes_wire;
    char *err;
    size_t errlen;
} ev_ctx_t;

static size_t bt_elems(const nb_eval_t *ev) { return (size_t)ev->B * (size_t)ev->l->seq_len; }

/* Keeps an evaluation's codec randomness apart from every training step's. */
static uint64_t eval_seed(const nb_eval_t *ev, int64_t step, int j, int stage)
{
    uint64_t x = ev->l->seed ^ 0x6576616c75617465ull; /* "evaluate" */
    x ^= (uint64_t)step * 0xbf58476d1ce4e5b9ull;
    x ^= (uint64_t)(j + 1) * 0x94d049bb133111ebull;
    x ^= (uint64_t)(stage + 1) * 0x2545f4914f6cdd1dull;
    return x;
}

/* The next tensor of kind for stage `stage`: must be batch j of this
 * evaluation from stage `from`. */
static int recv_eval(ev_ctx_t *c, int stage, nb_pmsg_kind_t kind, int j, int from, nb_pmsg_t **out)
{
    nb_pmsg_t *m = NULL;
    int rc = c->io->recv(c->io->ud, stage, kind, &m, c->timeout_ms);
    if (rc) {
        snprintf(c->err, c->errlen, "stage %d: no evaluation %s for step %lld batch %d from stage %d (%s)", stage,
                 nb_pmsg_kind_name(kind), (long long)c->plan->step, j, from, nb_strerror(rc));
        return rc;
    }
    if (!m->eval || m->kind != kind || m->step != c->plan->step || m->mb != j || m->from_stage != from) {
        snprintf(c->err, c->errlen, "stage %d: expected evaluation %s of step %lld batch %d from stage %d, got "
                 "%s%s of step %lld micro-batch %d from stage %d", stage, nb_pmsg_kind_name(kind),
                 (long long)c->plan->step, j, from, m->eval ? "evaluation " : "training ", nb_pmsg_kind_name(m->kind),
                 (long long)m->step, m->mb, m->from_stage);
        nb_pmsg_free(m);
        return NB_ESTATE;
    }
    *out = m;
    return 0;
}

static int send_msg(ev_ctx_t *c, nb_pmsg_t *m, nb_pmsg_kind_t kind, int from, int j)
{
    m->kind = kind;
    m->eval = true;
    m->from_stage = from;
    m->to_stage = from + 1;
    m->step = c->plan->step;
    m->mb = j;
    uint64_t raw = m->raw_bytes, wire = nb_pmsg_wire_bytes(m);
    int rc = c->io->send(c->io->ud, m);
    if (rc) {
        nb_pmsg_free(m);
        snprintf(c->err, c->errlen, "stage %d: cannot send the evaluation %s of batch %d to stage %d (%s)", from,
                 nb_pmsg_kind_name(kind), j, from + 1, nb_strerror(rc));
        return rc;
    }
    c->bytes_raw += raw;
    c->bytes_wire += wire;
    return 0;
}

/* Input of the first stage of a run for batch j: a drawn batch (stage 0),
 * or the activations (and labels) from the previous stage's daemon. */
static int take_input(ev_ctx_t *c, ev_stage_t *s, int j, nb_part_input_t *in)
{
    nb_eval_t *ev = c->ev;
    const nb_pipe_layout_t *l = ev->l;
    size_t bt = bt_elems(ev);
    int32_t *labels = ev->labels[j % NB_EVAL_WINDOW];
    int rc;
    if (s->stage == 0) {
        /* nb_trainer_eval's batches (trainer.h) */
        rc = l->model.head == NB_MODEL_HEAD_MLM
                 ? nb_tokens_sample_mlm(ev->tokens, l->seed, NB_TRAIN_EVAL_STEP_KEY, (uint32_t)j, ev->B, l->seq_len,
                                        NB_TOKENS_MLM_MASK_PROB, nb_model_mask_token(&l->model), ev->h_inputs, labels)
                 : nb_tokens_sample(ev->tokens, l->seed, NB_TRAIN_EVAL_STEP_KEY, (uint32_t)j, ev->B, l->seq_len,
                                    ev->h_inputs, labels);
        if (rc) {
            snprintf(c->err, c->errlen, "eval batch %d: cannot sample a batch", j);
            return rc;
        }
        nb_be_from_host(ev->be, s->d_tokens, ev->h_inputs, bt * sizeof(int32_t));
        in->tokens = s->d_tokens;
        return 0;
    }
    nb_pmsg_t *m = NULL;
    if ((rc = recv_eval(c, s->stage, NB_PMSG_ACT, j, s->stage - 1, &m)))
        return rc;
    int width = nb_part_in_width(s->part); /* d_model, or r past a low-rank cut */
    if (m->rows != (int64_t)bt || m->cols != width) {
        snprintf(c->err, c->errlen, "stage %d: evaluation activations of batch %d have shape %lldx%lld, expected "
                 "%zux%d", s->stage, j, (long long)m->rows, (long long)m->cols, bt, width);
        nb_pmsg_free(m);
        return NB_EFORMAT;
    }
    rc = nb_stage_codec_decode(nb_host_codec(ev->host), m->spec, m->meta, m->meta_len, m->payload, m->payload_len,
                               bt * (size_t)width * sizeof(float), s->recv, s->x_in, m->rows, m->cols, c->err,
                               c->errlen);
    nb_pmsg_free(m);
    if (rc)
        return rc;
    in->x = s->x_in;
    if (!ev->labels_travel)
        return 0;
    if ((rc = recv_eval(c, s->stage, NB_PMSG_LABELS, j, s->stage - 1, &m)))
        return rc;
    size_t bytes = bt * sizeof(int32_t);
    if (strcmp(m->spec, NB_PMSG_LABELS_CODEC) != 0 || m->payload_len != bytes || m->rows != ev->B ||
        m->cols != l->seq_len) {
        snprintf(c->err, c->errlen, "evaluation labels of batch %d: expected %zu bytes of %s, got %zu bytes of '%s'",
                 j, bytes, NB_PMSG_LABELS_CODEC, m->payload_len, m->spec);
        nb_pmsg_free(m);
        return NB_EFORMAT;
    }
    const int32_t *v = (const int32_t *)m->payload;
    for (size_t i = 0; i < bt; i++)
        if (v[i] >= l->model.vocab || v[i] < -1) {
            snprintf(c->err, c->errlen, "evaluation labels of batch %d: value %d at %zu outside the vocabulary", j,
                     v[i], i);
            nb_pmsg_free(m);
            return NB_ERANGE;
        }
    memcpy(labels, v, bytes);
    nb_pmsg_free(m);
    return 0;
}

/* Output of the last stage of a run for batch j: its activations (and the
 * labels) to the next stage's daemon, through the evaluation's stream. */
static int give_output(ev_ctx_t *c, ev_stage_t *s, int j)
{
    nb_eval_t *ev = c->ev;
    const nb_pipe_layout_t *l = ev->l;
    size_t bt = bt_elems(ev);
    int64_t shape[2] = { (int64_t)bt, nb_part_out_width(s->part) };
    int rc = nb_stage_codec_encode(nb_host_codec(ev->host), &c->fwd, nb_part_acts_output(s->acts), shape[0], shape[1],
                                   eval_seed(ev, c->plan->step, j, s->stage), s->send, (uint64_t)j, &ev->enc, c->err,
                                   c->errlen);
    if (rc)
        return rc;
    nb_pmsg_t *m = nb_pmsg_new();
    if (!m)
        return NB_ENOMEM;
    snprintf(m->spec, sizeof m->spec, "%s", ev->enc.spec);
    memcpy(m->meta, ev->enc.meta, ev->enc.meta_len);
    m->meta_len = ev->enc.meta_len;
    m->payload = ev->enc.payload; /* handed over: the codec allocates anew */
    m->payload_len = ev->enc.payload_len;
    ev->enc.payload = NULL;
    ev->enc.payload_len = ev->enc.payload_cap = 0;
    m->rows = shape[0];
    m->cols = shape[1];
    m->raw_bytes = (uint64_t)bt * (uint64_t)shape[1] * sizeof(float);
    if ((rc = send_msg(c, m, NB_PMSG_ACT, s->stage, j)) || !ev->labels_travel)
        return rc;
    size_t bytes = bt * sizeof(int32_t);
    if (!(m = nb_pmsg_new()) || !(m->payload = malloc(bytes))) {
        nb_pmsg_free(m);
        return NB_ENOMEM;
    }
    memcpy(m->payload, ev->labels[j % NB_EVAL_WINDOW], bytes);
    m->payload_len = m->raw_bytes = bytes;
    m->rows = ev->B;
    m->cols = l->seq_len;
    snprintf(m->spec, sizeof m->spec, "%s", NB_PMSG_LABELS_CODEC);
    return send_msg(c, m, NB_PMSG_LABELS, s->stage, j);
}

/* Batch j through the hosted stages st[a .. b-1] (consecutive stages). */
static int run_batch(ev_ctx_t *c, int a, int b, int j)
{
    nb_eval_t *ev = c->ev;
    const nb_pipe_layout_t *l = ev->l;
    nb_part_input_t in = { .loss_scale = 1.0f };
    int rc = take_input(c, &ev->st[a], j, &in);
    for (int i = a; rc == 0 && i < b; i++) {
        ev_stage_t *s = &ev->st[i];
        if (i > a)
            in = (nb_part_input_t){ .x = nb_part_acts_output(ev->st[i - 1].acts), .loss_scale = 1.0f };
        bool head = l->parts[s->stage].head;
        if (head) {
            nb_be_from_host(ev->be, s->d_targets, ev->labels[j % NB_EVAL_WINDOW], bt_elems(ev) * sizeof(int32_t));
            in.targets = s->d_targets;
        }
        float li = 0.0f;
        rc = nb_part_forward(s->part, s->acts, &in, &li);
        nb_be_sync(ev->be); /* the host buffers are refilled next */
        if (rc)
            snprintf(c->err, c->errlen, "stage %d eval batch %d: forward failed (%s)", s->stage, j, nb_strerror(rc));
        else if (head) /* in double, in batch order, as nb_trainer_eval */
            c->sum += li;
    }
    if (rc == 0 && !l->parts[ev->st[b - 1].stage].head)
        rc = give_output(c, &ev->st[b - 1], j);
    return rc;
}

int nb_eval_run(nb_eval_t *ev, const nb_eval_plan_t *plan, const nb_pipe_io_i *io, int timeout_ms,
                nb_eval_result_t *res, char *err, size_t errlen)
{
    uint64_t t0 = nb_mono_ns();
    const nb_pipe_layout_t *l = ev->l;
    size_t elems;
    if (plan->batches < 1 || plan->batches > NB_EVAL_MAX_BATCHES) {
        snprintf(err, errlen, "eval plan: %d batches out of range 1..%d", plan->batches, NB_EVAL_MAX_BATCHES);
        return NB_EINVAL;
    }
    if (plan->micro_batch_size < 1 || plan->micro_batch_size > 65536 ||
        nb_mul_size((size_t)plan->micro_batch_size * (size_t)l->seq_len, (size_t)l->model.d_model, &elems) ||
        elems > ((size_t)1 << 34)) {
        snprintf(err, errlen, "eval plan: batch size %d out of range", plan->micro_batch_size);
        return NB_EINVAL;
    }
    ev_ctx_t c = { .ev = ev, .plan = plan, .io = io, .timeout_ms = timeout_ms, .err = err, .errlen = errlen };
    int rc = nb_codec_spec_parse(plan->fwd_codec, &c.fwd, err, errlen);
    if (rc || (rc = ensure_buffers(ev, plan->micro_batch_size, err, errlen)))
        return rc;
    /* every evaluation starts its streams afresh, as its peers do */
    for (int i = 0; i < ev->n; i++) {
        nb_codec_stream_reset(ev->st[i].send);
        nb_codec_stream_reset(ev->st[i].recv);
    }
    for (int j0 = 0; j0 < plan->batches && rc == 0; j0 += NB_EVAL_WINDOW) {
        int j1 = j0 + NB_EVAL_WINDOW < plan->batches ? j0 + NB_EVAL_WINDOW : plan->batches;
        for (int a = 0, b; a < ev->n && rc == 0; a = b) {
            for (b = a + 1; b < ev->n && ev->st[b].stage == ev->st[b - 1].stage + 1; b++)
                ;
            for (int j = j0; j < j1 && rc == 0; j++)
                rc = run_batch(&c, a, b, j);
        }
    }
    if (rc)
        return rc;
    bool has_head = l->placement[l->p - 1] == ev->daemon;
    res->step = plan->step;
    res->loss = has_head ? c.sum / plan->batches : NAN;
    res->bytes_raw = c.bytes_raw;
    res->bytes_wire = c.bytes_wire;
    res->ns = nb_mono_ns() - t0;
    return 0;
}
