/*
 * stage_slots.c - the stage host's memory per micro-batch: the pool of
 * activation slots (grown to the peak in flight, a slot busy from a
 * micro-batch's forward until its input gradient has left), and the
 * per-step tables sized for the step's micro-batches and batch size.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/pipeline/stage_host_internal.h"

/* Re-sizes every per-micro-batch buffer for B sequences (between steps: no
 * activation slot is in use). */
int nb__host_resize_batch(nb_host_t *h, int B, char *err, size_t errlen)
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
    size_t ab = nb__host_act_elems(h) * sizeof(float), tb = nb__host_bt_elems(h) * sizeof(int32_t);
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

int nb__host_prepare_step(nb_host_t *h, int m)
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

int nb__host_acquire_slot(nb_host_t *h, hosted_t *s, int mb, nb_reps_acts_t **out)
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

void nb__host_release_slot(hosted_t *s, int mb)
{
    int slot = s->slot_of_mb[mb];
    if (slot >= 0) {
        s->busy[slot] = false;
        s->slot_of_mb[mb] = -1;
    }
}
