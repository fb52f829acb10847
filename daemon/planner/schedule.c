/*
 * schedule.c - per-stage operation lists for GPipe and 1F1B (see schedule.h).
 */
#include "daemon/planner/schedule.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/common.h"

#define NB_SCHED_MAX_EXTRA 64

const char *nb_sched_kind_name(nb_sched_kind_t kind)
{
    switch (kind) {
    case NB_SCHED_GPIPE: return "gpipe";
    case NB_SCHED_1F1B: return "1f1b";
    }
    return "?";
}

int nb_sched_parse(const char *s, nb_sched_spec_t *out)
{
    if (!s || !out)
        return NB_EINVAL;
    if (strcmp(s, "gpipe") == 0) {
        *out = (nb_sched_spec_t){NB_SCHED_GPIPE, 0};
        return 0;
    }
    if (strcmp(s, "1f1b") == 0) {
        *out = (nb_sched_spec_t){NB_SCHED_1F1B, 0};
        return 0;
    }
    if (strncmp(s, "1f1b:", 5) == 0) {
        const char *d = s + 5;
        if (*d < '0' || *d > '9')
            return NB_EINVAL;
        char *end;
        errno = 0;
        long k = strtol(d, &end, 10);
        if (errno || *end || k < 0 || k > NB_SCHED_MAX_EXTRA)
            return NB_EINVAL;
        *out = (nb_sched_spec_t){NB_SCHED_1F1B, (int)k};
        return 0;
    }
    return NB_EINVAL;
}

const char *nb_sched_format(const nb_sched_spec_t *spec, char *buf, size_t len)
{
    if (spec->kind == NB_SCHED_1F1B && spec->extra > 0)
        snprintf(buf, len, "1f1b:%d", spec->extra);
    else
        snprintf(buf, len, "%s", nb_sched_kind_name(spec->kind));
    return buf;
}

const char *nb_sched_op_name(nb_sched_op_kind_t kind)
{
    switch (kind) {
    case NB_OP_RECV_ACT: return "recv-act";
    case NB_OP_FWD: return "F";
    case NB_OP_SEND_ACT: return "send-act";
    case NB_OP_RECV_GRAD: return "recv-grad";
    case NB_OP_BWD: return "B";
    case NB_OP_SEND_GRAD: return "send-grad";
    }
    return "?";
}

int nb_sched_min_queue_cap(const nb_sched_spec_t *spec)
{
    return spec->kind == NB_SCHED_1F1B ? spec->extra / 2 + 1 : 1;
}

static int args_ok(int p, int m, int stage)
{
    return p >= 1 && p <= NB_SCHED_MAX_STAGES && m >= 1 && m <= NB_SCHED_MAX_MB &&
           stage >= 0 && stage < p;
}

static int spec_ok(const nb_sched_spec_t *spec)
{
    if (!spec)
        return 0;
    if (spec->kind == NB_SCHED_GPIPE)
        return spec->extra == 0;
    if (spec->kind == NB_SCHED_1F1B)
        return spec->extra >= 0 && spec->extra <= NB_SCHED_MAX_EXTRA;
    return 0;
}

int nb_sched_count(int p, int m, int stage)
{
    if (!args_ok(p, m, stage))
        return NB_EINVAL;
    int n = 2 * m;
    if (stage > 0)
        n += 2 * m;
    if (stage < p - 1)
        n += 2 * m;
    return n;
}

int nb_sched_warmup(const nb_sched_spec_t *spec, int p, int m, int stage)
{
    if (!spec_ok(spec) || !args_ok(p, m, stage))
        return NB_EINVAL;
    if (spec->kind == NB_SCHED_GPIPE)
        return m;
    long w = (long)(p - stage - 1) * (1 + spec->extra);
    return w < m ? (int)w : m;
}

int nb_sched_peak_inflight(const nb_sched_spec_t *spec, int p, int m, int stage)
{
    int w = nb_sched_warmup(spec, p, m, stage);
    if (w < 0)
        return w;
    /* After the warm-up the first steady forward comes before the first
     * backward, so w+1 are held at once unless the warm-up used them all. */
    return w < m ? w + 1 : m;
}

/* Appends one compute op and the transfers around it. */
static int put(nb_sched_op_t *ops, int n, int p, int stage, int fwd, int mb)
{
    if (fwd) {
        if (stage > 0)
            ops[n++] = (nb_sched_op_t){NB_OP_RECV_ACT, stage, mb};
        ops[n++] = (nb_sched_op_t){NB_OP_FWD, stage, mb};
        if (stage < p - 1)
            ops[n++] = (nb_sched_op_t){NB_OP_SEND_ACT, stage, mb};
    } else {
        if (stage < p - 1)
            ops[n++] = (nb_sched_op_t){NB_OP_RECV_GRAD, stage, mb};
        ops[n++] = (nb_sched_op_t){NB_OP_BWD, stage, mb};
        if (stage > 0)
            ops[n++] = (nb_sched_op_t){NB_OP_SEND_GRAD, stage, mb};
    }
    return n;
}

int nb_sched_build_spec(const nb_sched_spec_t *spec, int p, int m, int stage,
                        nb_sched_op_t *ops, int cap)
{
    if (!spec_ok(spec) || !args_ok(p, m, stage) || (!ops && cap > 0))
        return NB_EINVAL;
    int total = nb_sched_count(p, m, stage);
    if (cap < total)
        return NB_ELIMIT;
    int w = nb_sched_warmup(spec, p, m, stage);
    int n = 0;
    int f = 0, b = 0; /* next forward, next backward */
    for (; f < w; f++)
        n = put(ops, n, p, stage, 1, f);
    /* Steady state: one forward, one backward. */
    for (; f < m; f++, b++) {
        n = put(ops, n, p, stage, 1, f);
        n = put(ops, n, p, stage, 0, b);
    }
    /* Cool-down: the backwards left, in order. */
    for (; b < m; b++)
        n = put(ops, n, p, stage, 0, b);
    NB_CHECK(n == total);
    return n;
}

int nb_sched_build(nb_sched_kind_t kind, int p, int m, int stage,
                   nb_sched_op_t *ops, int cap)
{
    nb_sched_spec_t spec = {kind, 0};
    return nb_sched_build_spec(&spec, p, m, stage, ops, cap);
}
