/*
 * stage_xfer.c - what crosses a cut of the stage host: activations forward
 * and gradients backward, encoded with the step's codec when the
 * neighbouring stage is on another daemon (with a sampled round-trip
 * error, the planner's quality signal), handed over in memory when it is
 * on this one, and the labels that follow activations when the head is on
 * another daemon.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/clock.h"
#include "daemon/pipeline/stage_host_internal.h"

void nb__fifo_free(nb_backend_t *be, local_fifo_t *f)
{
    for (int i = 0; i < f->len; i++)
        nb_be_dealloc(be, f->items[(f->head + i) % f->cap].dev);
    free(f->items);
    memset(f, 0, sizeof *f);
}

int nb__fifo_push(local_fifo_t *f, int mb, float *dev)
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

int nb__fifo_pop(local_fifo_t *f, local_xfer_t *out)
{
    if (f->len == 0)
        return NB_ESTATE;
    *out = f->items[f->head];
    f->head = (f->head + 1) % f->cap;
    f->len--;
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
    int rc = nb_stage_codec_encode(&h->codec, spec, dev, rows, cols, seed, st, key, &h->enc, err, errlen);
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
        if (nb_stage_codec_decode(&h->codec, m->spec, m->meta, m->meta_len, m->payload, m->payload_len, 0, NULL,
                                  y, (int64_t)n, 1, NULL, 0) == 0) {
            nb_be_to_host(h->be, hx, dev, n * sizeof *hx);
            nb_be_to_host(h->be, hx + n, y, n * sizeof *hx);
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
void nb__host_put_labels(nb_host_t *h, int mb, int32_t *buf)
{
    free(h->labels[mb]);
    h->labels[mb] = buf;
}

static int send_labels(nb_host_t *h, const nb_pipe_io_i *io, int from, int64_t step, int mb)
{
    const int32_t *lab = h->labels[mb];
    NB_CHECK(lab);
    nb_pmsg_t *m = nb_pmsg_new();
    size_t bytes = nb__host_bt_elems(h) * sizeof(int32_t);
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
    size_t bytes = nb__host_bt_elems(h) * sizeof(int32_t);
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
    nb__host_put_labels(h, m->mb, (int32_t *)m->payload);
    m->payload = NULL;
    return 0;
}

int nb__host_op_recv(step_ctx_t *c, const nb_sched_op_t *op)
{
    nb_host_t *h = c->h;
    int s = op->stage, mb = op->mb, m = c->plan->m;
    hosted_t *hs = &h->st[h->local_of[s]];
    bool act = op->kind == NB_OP_RECV_ACT;
    int from = act ? s - 1 : s + 1;
    nb_mb_timing_t *tm = nb__host_timing(h, s, mb, m);
    float *dst = act ? hs->x_in : hs->dout;
    int width = nb__host_link_width(h, act ? from : s);
    size_t link_elems = nb__host_bt_elems(h) * (size_t)width;
    if (h->local_of[from] >= 0) {
        local_xfer_t x = { -1, NULL };
        if (nb__fifo_pop(&hs->local_in[act ? 0 : 1], &x) || x.mb != mb) {
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
    if (msg->rows != (int64_t)nb__host_bt_elems(h) || msg->cols != width) {
        snprintf(c->err, c->errlen, "stage %d: %s of micro-batch %d has shape %lldx%lld, expected %zux%d",
                 s, nb_pmsg_kind_name(kind), mb, (long long)msg->rows, (long long)msg->cols,
                 nb__host_bt_elems(h), width);
        nb_pmsg_free(msg);
        return NB_EFORMAT;
    }
    uint64_t t0 = nb_mono_ns();
    rc = nb_stage_codec_decode(&h->codec, msg->spec, msg->meta, msg->meta_len, msg->payload, msg->payload_len,
                               link_elems * sizeof(float), hs->streams[act ? 1 : 3], dst, msg->rows, msg->cols,
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

int nb__host_op_send(step_ctx_t *c, const nb_sched_op_t *op)
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
    nb_mb_timing_t *tm = nb__host_timing(h, s, mb, m);
    int width = nb__host_link_width(h, act ? s : to);
    size_t link_elems = nb__host_bt_elems(h) * (size_t)width;
    if (h->local_of[to] >= 0) {
        float *dev = nb_be_alloc(h->be, nb__host_act_elems(h) * sizeof(float));
        if (!dev)
            return NB_ENOMEM;
        nb_be_copy(h->be, dev, src, link_elems * sizeof(float));
        hosted_t *dst = &h->st[h->local_of[to]];
        int rc = nb__fifo_push(&dst->local_in[act ? 0 : 1], mb, dev);
        if (rc)
            nb_be_dealloc(h->be, dev);
        return rc;
    }
    uint64_t t0 = nb_mono_ns();
    nb_pmsg_t *msg = NULL;
    int rc = encode_msg(h, act ? &c->fwd : &c->bwd, src, (int64_t)nb__host_bt_elems(h), width,
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
        size_t lb = nb__host_bt_elems(h) * sizeof(int32_t);
        tm->bytes_raw += lb;
        tm->bytes_wire += lb + strlen(NB_PMSG_LABELS_CODEC);
        c->bytes_raw += lb;
        c->bytes_wire += lb + strlen(NB_PMSG_LABELS_CODEC);
    }
    return 0;
}
