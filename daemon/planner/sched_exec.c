/*
 * sched_exec.c - logical-time execution of stage op lists: completeness and
 * deadlock check, and the per-daemon merge (see sched_exec.h).
 */
#include "daemon/planner/sched_exec.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/common.h"

enum { F_FWD = 1, F_BWD = 2, F_ACT_IN = 4, F_GRAD_IN = 8, F_ACT_OUT = 16, F_GRAD_OUT = 32 };

typedef struct {
    int *buf; /* m slots */
    int head, len;
} chan_t;

typedef struct {
    const nb_sched_op_t *ops;
    int n, pos;
    int worker;
} cursor_t;

typedef struct {
    int p, m, cap;
    unsigned char *flags; /* [s * m + mb] */
    chan_t *act;          /* act[s]: s -> s+1 */
    chan_t *grad;         /* grad[s]: s+1 -> s */
    int *inflight;
    nb_sched_exec_stats_t *stats;
    char *err;
    size_t errlen;
} eng_t;

static void seterr(eng_t *e, const char *fmt, ...)
{
    if (!e->err || e->errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->err, e->errlen, fmt, ap);
    va_end(ap);
}

static int chan_full(const eng_t *e, const chan_t *c) { return c->len >= e->cap; }

static void chan_push(eng_t *e, chan_t *c, int mb)
{
    NB_CHECK(c->len < e->m);
    c->buf[(c->head + c->len) % e->m] = mb;
    c->len++;
}

static int chan_pop(eng_t *e, chan_t *c)
{
    int mb = c->buf[c->head];
    c->head = (c->head + 1) % e->m;
    c->len--;
    return mb;
}

/* 1: op can run now; 0: must wait; <0: the list is wrong. */
static int ready(eng_t *e, const nb_sched_op_t *op)
{
    int s = op->stage, mb = op->mb, p = e->p;
    if (s < 0 || s >= p || mb < 0 || mb >= e->m) {
        seterr(e, "op %s has stage %d / micro-batch %d out of range",
               nb_sched_op_name(op->kind), s, mb);
        return NB_EFORMAT;
    }
    unsigned char f = e->flags[s * e->m + mb];
    const char *name = nb_sched_op_name(op->kind);
#define BAD(...) do { seterr(e, __VA_ARGS__); return NB_EFORMAT; } while (0)
    switch (op->kind) {
    case NB_OP_RECV_ACT: {
        if (s == 0) BAD("stage 0 has no activations to receive (mb %d)", mb);
        if (f & F_ACT_IN) BAD("stage %d receives activations of mb %d twice", s, mb);
        chan_t *c = &e->act[s - 1];
        if (c->len == 0) return 0;
        if (c->buf[c->head] != mb)
            BAD("stage %d expects activations of mb %d but mb %d arrives first", s, mb,
                c->buf[c->head]);
        return 1;
    }
    case NB_OP_FWD:
        if (f & F_FWD) BAD("stage %d runs F(%d) twice", s, mb);
        if (s > 0 && !(f & F_ACT_IN)) BAD("stage %d runs F(%d) before receiving it", s, mb);
        return 1;
    case NB_OP_SEND_ACT:
        if (s == p - 1) BAD("last stage %d cannot send activations", s);
        if (f & F_ACT_OUT) BAD("stage %d sends activations of mb %d twice", s, mb);
        if (!(f & F_FWD)) BAD("stage %d sends activations of mb %d before F", s, mb);
        return !chan_full(e, &e->act[s]);
    case NB_OP_RECV_GRAD: {
        if (s == p - 1) BAD("last stage %d has no gradient to receive", s);
        if (f & F_GRAD_IN) BAD("stage %d receives the gradient of mb %d twice", s, mb);
        chan_t *c = &e->grad[s];
        if (c->len == 0) return 0;
        if (c->buf[c->head] != mb)
            BAD("stage %d expects the gradient of mb %d but mb %d arrives first", s, mb,
                c->buf[c->head]);
        return 1;
    }
    case NB_OP_BWD:
        if (f & F_BWD) BAD("stage %d runs B(%d) twice", s, mb);
        if (!(f & F_FWD)) BAD("stage %d runs B(%d) before F(%d)", s, mb, mb);
        if (s < p - 1 && !(f & F_GRAD_IN))
            BAD("stage %d runs B(%d) before receiving its gradient", s, mb);
        return 1;
    case NB_OP_SEND_GRAD:
        if (s == 0) BAD("stage 0 has no input gradient to send (mb %d)", mb);
        if (f & F_GRAD_OUT) BAD("stage %d sends the gradient of mb %d twice", s, mb);
        if (!(f & F_BWD)) BAD("stage %d sends the gradient of mb %d before B", s, mb);
        return !chan_full(e, &e->grad[s - 1]);
    }
#undef BAD
    seterr(e, "unknown op kind %d (%s)", (int)op->kind, name);
    return NB_EFORMAT;
}

static void run(eng_t *e, const nb_sched_op_t *op)
{
    int s = op->stage, mb = op->mb;
    unsigned char *f = &e->flags[s * e->m + mb];
    switch (op->kind) {
    case NB_OP_RECV_ACT: NB_CHECK(chan_pop(e, &e->act[s - 1]) == mb); *f |= F_ACT_IN; break;
    case NB_OP_FWD:
        *f |= F_FWD;
        if (++e->inflight[s] > e->stats->peak_inflight[s])
            e->stats->peak_inflight[s] = e->inflight[s];
        break;
    case NB_OP_SEND_ACT: chan_push(e, &e->act[s], mb); *f |= F_ACT_OUT; break;
    case NB_OP_RECV_GRAD: NB_CHECK(chan_pop(e, &e->grad[s]) == mb); *f |= F_GRAD_IN; break;
    case NB_OP_BWD: *f |= F_BWD; e->inflight[s]--; break;
    case NB_OP_SEND_GRAD: chan_push(e, &e->grad[s - 1], mb); *f |= F_GRAD_OUT; break;
    }
}

/* Preference among ready heads of one worker: transfers, then B, then F. */
static int rank(const nb_sched_op_t *op)
{
    switch (op->kind) {
    case NB_OP_FWD: return 2;
    case NB_OP_BWD: return 1;
    default: return 0;
    }
}

/* Runs the cursors; workers 0..nworkers-1 take one op per round each. When
 * rec is given, the ops worker rec_worker runs are appended to it. */
static int engine(eng_t *e, cursor_t *cur, int ncur, int nworkers, int rec_worker,
                  nb_sched_op_t *rec, int *nrec)
{
    long remaining = 0;
    for (int i = 0; i < ncur; i++)
        remaining += cur[i].n - cur[i].pos;
    while (remaining > 0) {
        int progress = 0;
        for (int w = 0; w < nworkers; w++) {
            int best = -1;
            for (int i = 0; i < ncur; i++) {
                if (cur[i].worker != w || cur[i].pos >= cur[i].n)
                    continue;
                const nb_sched_op_t *op = &cur[i].ops[cur[i].pos];
                int r = ready(e, op);
                if (r < 0)
                    return r;
                if (r && (best < 0 || rank(op) < rank(&cur[best].ops[cur[best].pos])))
                    best = i;
            }
            if (best < 0)
                continue;
            const nb_sched_op_t *op = &cur[best].ops[cur[best].pos++];
            run(e, op);
            if (rec && w == rec_worker)
                rec[(*nrec)++] = *op;
            remaining--;
            progress = 1;
        }
        e->stats->rounds++;
        if (!progress) {
            char buf[512];
            size_t off = 0;
            buf[0] = 0;
            for (int i = 0; i < ncur && off < sizeof buf - 64; i++) {
                if (cur[i].pos >= cur[i].n)
                    continue;
                const nb_sched_op_t *op = &cur[i].ops[cur[i].pos];
                off += (size_t)snprintf(buf + off, sizeof buf - off, " [list %d: stage %d %s(%d)]",
                                        i, op->stage, nb_sched_op_name(op->kind), op->mb);
            }
            seterr(e, "deadlock after %ld rounds; blocked:%s", e->stats->rounds, buf);
            return NB_ESTATE;
        }
    }
    for (int s = 0; s < e->p; s++) {
        for (int mb = 0; mb < e->m; mb++) {
            unsigned char want = F_FWD | F_BWD;
            if (s > 0)
                want |= F_ACT_IN | F_GRAD_OUT;
            if (s < e->p - 1)
                want |= F_ACT_OUT | F_GRAD_IN;
            unsigned char got = e->flags[s * e->m + mb];
            if ((got & want) != want) {
                seterr(e, "stage %d micro-batch %d: ops missing (have 0x%x, need 0x%x)", s, mb,
                       got, want);
                return NB_EFORMAT;
            }
        }
    }
    return 0;
}

static int eng_init(eng_t *e, int p, int m, int queue_cap, nb_sched_exec_stats_t *stats,
                    char *err, size_t errlen)
{
    memset(e, 0, sizeof *e);
    e->p = p;
    e->m = m;
    e->cap = (queue_cap <= 0 || queue_cap > m) ? m : queue_cap;
    e->stats = stats;
    e->err = err;
    e->errlen = errlen;
    memset(stats, 0, sizeof *stats);
    e->flags = calloc((size_t)p * (size_t)m, 1);
    e->act = calloc((size_t)p, sizeof(chan_t));
    e->grad = calloc((size_t)p, sizeof(chan_t));
    e->inflight = calloc((size_t)p, sizeof(int));
    if (!e->flags || !e->act || !e->grad || !e->inflight)
        return NB_ENOMEM;
    for (int s = 0; s < p; s++) {
        e->act[s].buf = calloc((size_t)m, sizeof(int));
        e->grad[s].buf = calloc((size_t)m, sizeof(int));
        if (!e->act[s].buf || !e->grad[s].buf)
            return NB_ENOMEM;
    }
    return 0;
}

static void eng_free(eng_t *e)
{
    for (int s = 0; s < e->p; s++) {
        if (e->act)
            free(e->act[s].buf);
        if (e->grad)
            free(e->grad[s].buf);
    }
    free(e->act);
    free(e->grad);
    free(e->flags);
    free(e->inflight);
}

int nb_sched_exec_check(int p, int m, const nb_sched_op_t *const *lists, const int *lens,
                        int nlists, int queue_cap, nb_sched_exec_stats_t *stats, char *err,
                        size_t errlen)
{
    if (p < 1 || p > NB_SCHED_MAX_STAGES || m < 1 || m > NB_SCHED_MAX_MB || nlists < 1 ||
        !lists || !lens)
        return NB_EINVAL;
    nb_sched_exec_stats_t local;
    eng_t e;
    int rc = eng_init(&e, p, m, queue_cap, stats ? stats : &local, err, errlen);
    cursor_t *cur = calloc((size_t)nlists, sizeof *cur);
    if (rc == 0 && !cur)
        rc = NB_ENOMEM;
    if (rc == 0) {
        for (int i = 0; i < nlists; i++)
            cur[i] = (cursor_t){lists[i], lens[i], 0, i};
        rc = engine(&e, cur, nlists, nlists, -1, NULL, NULL);
    }
    free(cur);
    eng_free(&e);
    return rc;
}

/* Builds all p stage lists into one allocation; *lists[s] points into it. */
static int build_all(const nb_sched_spec_t *spec, int p, int m, nb_sched_op_t **mem,
                     nb_sched_op_t **lists, int *lens)
{
    long total = 0;
    for (int s = 0; s < p; s++) {
        int n = nb_sched_count(p, m, s);
        if (n < 0)
            return n;
        total += n;
    }
    *mem = malloc((size_t)total * sizeof(nb_sched_op_t));
    if (!*mem)
        return NB_ENOMEM;
    long off = 0;
    for (int s = 0; s < p; s++) {
        int n = nb_sched_build_spec(spec, p, m, s, *mem + off, (int)(total - off));
        if (n < 0) {
            free(*mem);
            *mem = NULL;
            return n;
        }
        lists[s] = *mem + off;
        lens[s] = n;
        off += n;
    }
    return 0;
}

int nb_sched_verify(const nb_sched_spec_t *spec, int p, int m, int queue_cap,
                    nb_sched_exec_stats_t *stats, char *err, size_t errlen)
{
    if (p < 1 || p > NB_SCHED_MAX_STAGES)
        return NB_EINVAL;
    nb_sched_op_t *mem = NULL, *lists[NB_SCHED_MAX_STAGES];
    int lens[NB_SCHED_MAX_STAGES];
    int rc = build_all(spec, p, m, &mem, lists, lens);
    if (rc < 0)
        return rc;
    rc = nb_sched_exec_check(p, m, (const nb_sched_op_t *const *)lists, lens, p, queue_cap,
                             stats, err, errlen);
    free(mem);
    return rc;
}

int nb_sched_daemon_count(int p, int m, const int *placement, int daemon)
{
    if (!placement || p < 1 || p > NB_SCHED_MAX_STAGES)
        return NB_EINVAL;
    int n = 0;
    for (int s = 0; s < p; s++) {
        if (placement[s] != daemon)
            continue;
        int c = nb_sched_count(p, m, s);
        if (c < 0)
            return c;
        n += c;
    }
    return n;
}

int nb_sched_build_daemon(const nb_sched_spec_t *spec, int p, int m, const int *placement,
                          int daemon, int queue_cap, nb_sched_op_t *ops, int cap)
{
    int need = nb_sched_daemon_count(p, m, placement, daemon);
    if (need < 0)
        return need;
    if (need == 0)
        return NB_EINVAL; /* the daemon hosts no stage */
    if (cap < need || !ops)
        return NB_ELIMIT;
    int nworkers = 0;
    for (int s = 0; s < p; s++) {
        if (placement[s] < 0)
            return NB_EINVAL;
        if (placement[s] + 1 > nworkers)
            nworkers = placement[s] + 1;
    }
    nb_sched_op_t *mem = NULL, *lists[NB_SCHED_MAX_STAGES];
    int lens[NB_SCHED_MAX_STAGES];
    int rc = build_all(spec, p, m, &mem, lists, lens);
    if (rc < 0)
        return rc;
    nb_sched_exec_stats_t st;
    eng_t e;
    cursor_t cur[NB_SCHED_MAX_STAGES];
    rc = eng_init(&e, p, m, queue_cap, &st, NULL, 0);
    int n = 0;
    if (rc == 0) {
        /* Later stages first among equals: the backward wave starts there. */
        for (int s = 0; s < p; s++)
            cur[s] = (cursor_t){lists[p - 1 - s], lens[p - 1 - s], 0, placement[p - 1 - s]};
        rc = engine(&e, cur, p, nworkers, daemon, ops, &n);
    }
    eng_free(&e);
    free(mem);
    if (rc < 0)
        return rc;
    NB_CHECK(n == need);
    return n;
}
