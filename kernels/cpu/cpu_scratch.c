/*
 * cpu_scratch.c - one growable scratch buffer per CPU backend, kept in
 * be->ctx, for ops that need temporary memory (attention backward). Growing
 * only, so steady-state training allocates nothing per step.
 */
#include <stdlib.h>
#include "kernels/cpu/cpu_ops.h"

typedef struct {
    float *buf;
    size_t cap;
} cpu_scratch_t;

float *nb_cpu_scratch(nb_backend_t *be, size_t bytes)
{
    cpu_scratch_t *s = be->ctx;
    if (!s) {
        s = calloc(1, sizeof *s);
        NB_CHECK(s != NULL);
        be->ctx = s;
    }
    if (bytes > s->cap) {
        size_t rounded = (bytes + 63) & ~(size_t)63;
        NB_CHECK(rounded >= bytes);
        void *p = NULL;
        NB_CHECK(posix_memalign(&p, 64, rounded) == 0);
        free(s->buf);
        s->buf = p;
        s->cap = rounded;
    }
    return s->buf;
}

void nb_cpu_scratch_free(nb_backend_t *be)
{
    cpu_scratch_t *s = be->ctx;
    if (s) {
        free(s->buf);
        free(s);
        be->ctx = NULL;
    }
}
