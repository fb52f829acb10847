/* grad_fault.c - test-only NaN injection into gradients; see grad_fault.h. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "daemon/train/grad_fault.h"

static bool parse_i64(const char *s, char **end, int64_t *out)
{
    if (*s < '0' || *s > '9')
        return false;
    errno = 0;
    long long v = strtoll(s, end, 10);
    if (errno || v < 0 || v > 1000000000000ll)
        return false;
    *out = v;
    return true;
}

int nb_grad_fault_parse(const char *text, nb_grad_fault_t *f, char *err, size_t errlen)
{
    *f = (nb_grad_fault_t){ .on = false, .stage = -1 };
    if (!text || !*text)
        return 0;
    char *p;
    int64_t first, last, stage = -1;
    if (!parse_i64(text, &p, &first))
        goto bad;
    last = first;
    if (*p == '-' && !parse_i64(p + 1, &p, &last))
        goto bad;
    if (*p == '@' && (!parse_i64(p + 1, &p, &stage) || stage > 1000000))
        goto bad;
    if (*p || last < first)
        goto bad;
    *f = (nb_grad_fault_t){ .on = true, .first = first, .last = last, .stage = (int)stage };
    return 0;
bad:
    snprintf(err, errlen, "%s (test-only fault injection): expected FIRST[-LAST][@STAGE] with "
             "FIRST <= LAST, got '%s'", NB_GRAD_FAULT_ENV, text);
    return NB_EINVAL;
}

int nb_grad_fault_from_env(nb_grad_fault_t *f, char *err, size_t errlen)
{
    return nb_grad_fault_parse(getenv(NB_GRAD_FAULT_ENV), f, err, errlen);
}

bool nb_grad_fault_hits(const nb_grad_fault_t *f, int64_t step, int stage)
{
    return f->on && step >= f->first && step <= f->last && (f->stage < 0 || stage < 0 || f->stage == stage);
}

void nb_grad_fault_poison(nb_backend_t *be, float *grads)
{
    float nan = NAN;
    nb_be_from_host(be, grads, &nan, sizeof nan);
    nb_be_sync(be);
}
