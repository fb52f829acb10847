/*
 * cpu_scratch.c - the CPU backend's state in be->ctx: growable scratch
 * buffers for ops that need temporary memory (attention backward, the bf16
 * rounding of matmul inputs) and the matmul precision. Growing only, so
 * steady-state training allocates nothing per step.
 */
#include <stdlib.h>
#include "kernels/cpu/cpu_ops.h"

typedef struct {
    float *buf[NB_CPU_SCRATCH_SLOTS];
    size_t cap[NB_CPU_SCRATCH_SLOTS];
    nb_precision_t precision;
} cpu_state_t;

static cpu_state_t *state_of(nb_backend_t *be)
{
    cpu_state_t *s = be->ctx;
    if (!s) {
        s = calloc(1, sizeof *s);
        NB_CHECK(s != NULL);
        be->ctx = s;
    }
    return s;
}

float *nb_cpu_scratch_slot(nb_backend_t *be, int slot, size_t bytes)
{
    NB_CHECK(slot >= 0 && slot < NB_CPU_SCRATCH_SLOTS);
    cpu_state_t *s = state_of(be);
    if (bytes > s->cap[slot]) {
        size_t rounded = (bytes + 63) & ~(size_t)63;
        NB_CHECK(rounded >= bytes);
        void *p = NULL;
        NB_CHECK(posix_memalign(&p, 64, rounded) == 0);
        free(s->buf[slot]);
        s->buf[slot] = p;
        s->cap[slot] = rounded;
    }
    return s->buf[slot];
}

float *nb_cpu_scratch(nb_backend_t *be, size_t bytes) { return nb_cpu_scratch_slot(be, NB_CPU_SCRATCH_OPS, bytes); }

nb_precision_t nb_cpu_precision(nb_backend_t *be) { return be->ctx ? ((cpu_state_t *)be->ctx)->precision : NB_PREC_FP32; }

int nb_cpu_set_precision(nb_backend_t *be, nb_precision_t p)
{
    if (p != NB_PREC_FP32 && p != NB_PREC_BF16)
        return NB_EINVAL;
    state_of(be)->precision = p;
    return 0;
}

void nb_cpu_scratch_free(nb_backend_t *be)
{
    cpu_state_t *s = be->ctx;
    if (s) {
        for (int i = 0; i < NB_CPU_SCRATCH_SLOTS; i++)
            free(s->buf[i]);
        free(s);
        be->ctx = NULL;
    }
}
