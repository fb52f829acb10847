/*
 * generate.c - greedy and sampled generation from a causal lm part; see
 * generate.h.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/train/generate.h"
#include "kernels/rng.h"

typedef struct {
    float logit;
    int32_t id;
} cand_t;

/* Larger logit first; ties: lower ID first (a total order, so the same
 * logits always give the same ranking). */
static int cand_cmp(const void *a, const void *b)
{
    const cand_t *x = a, *y = b;
    if (x->logit != y->logit)
        return x->logit > y->logit ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

int32_t nb_gen_pick(const float *logits, int V, const nb_gen_config_t *c, uint64_t index)
{
    if (c->temperature <= 0.0f || c->top_k == 1) {
        int32_t best = 0;
        for (int v = 1; v < V; v++)
            if (logits[v] > logits[best])
                best = v;
        return best;
    }
    cand_t *cand = malloc((size_t)V * sizeof *cand);
    if (!cand)
        return -1;
    for (int v = 0; v < V; v++)
        cand[v] = (cand_t){ logits[v], v };
    qsort(cand, (size_t)V, sizeof *cand, cand_cmp);
    int k = c->top_k > 0 && c->top_k < V ? c->top_k : V;
    /* softmax in double over the k candidates, largest first */
    double sum = 0.0, t = (double)c->temperature;
    double *w = malloc((size_t)k * sizeof *w);
    if (!w) {
        free(cand);
        return -1;
    }
    for (int i = 0; i < k; i++)
        sum += w[i] = exp(((double)cand[i].logit - (double)cand[0].logit) / t);
    nb_rng_t r;
    nb_rng_init(&r, c->seed, index, 0x67656e /* "gen" */);
    double u = (double)(nb_rng_u64(&r) >> 11) * 0x1p-53 * sum, acc = 0.0;
    int32_t pick = cand[k - 1].id;
    for (int i = 0; i < k; i++) {
        acc += w[i];
        if (u < acc) {
            pick = cand[i].id;
            break;
        }
    }
    free(w);
    free(cand);
    return pick;
}

int nb_gen_run(nb_part_t *p, int32_t *ids, size_t *n, size_t cap, const nb_gen_config_t *c, char *err,
               size_t errlen)
{
    const nb_model_config_t *m = nb_part_config(p);
    const nb_part_spec_t *s = nb_part_spec(p);
    if (!s->embed || s->first != 0 || s->last != m->n_layer || !s->head || m->head != NB_MODEL_HEAD_LM ||
        !m->causal) {
        snprintf(err, errlen, "generation needs a whole causal model with the lm head (this is a %s%s model%s)",
                 m->causal ? "causal " : "bidirectional ", nb_head_kind_name(m->head),
                 s->embed && s->head && s->first == 0 && s->last == m->n_layer ? "" : ", or only a part of one");
        return NB_EINVAL;
    }
    if (m->cross_attn) { /* its blocks read an encoder's output, which generation has not */
        snprintf(err, errlen, "generation needs a model without cross-attention (this is the decoder of an "
                 "encoder-decoder job, cross_attn: its blocks read an encoder's output; docs/finetune.md)");
        return NB_EINVAL;
    }
    if (*n == 0) {
        snprintf(err, errlen, "the prompt is empty: give at least one token");
        return NB_EINVAL;
    }
    if (c->max_new < 0 || *n + (size_t)c->max_new > cap)
        return NB_EINVAL;
    for (size_t i = 0; i < *n; i++)
        if (ids[i] < 0 || ids[i] >= m->vocab) {
            snprintf(err, errlen, "prompt token %zu is %d, outside the vocabulary 0..%d", i, ids[i], m->vocab - 1);
            return NB_EINVAL;
        }
    nb_backend_t *be = nb_part_backend(p);
    int V = m->vocab, W = m->max_seq;
    int32_t *dtok = nb_be_alloc(be, (size_t)W * sizeof *dtok);
    float *row = malloc((size_t)V * sizeof *row);
    int rc = NB_ENOMEM;
    if (!dtok || !row)
        goto out;
    for (int g = 0; g < c->max_new; g++) {
        /* the latest max_seq tokens are the context */
        size_t start = *n > (size_t)W ? *n - (size_t)W : 0;
        int T = (int)(*n - start);
        nb_part_acts_t *a;
        if ((rc = nb_part_acts_new(p, 1, T, &a)))
            goto out;
        nb_be_from_host(be, dtok, ids + start, (size_t)T * sizeof *dtok);
        nb_part_input_t in = { .tokens = dtok, .loss_scale = 1.0f };
        rc = nb_part_forward(p, a, &in, NULL);
        if (rc == 0) {
            int rows, cols;
            const float *logits = nb_part_acts_logits(a, &rows, &cols);
            nb_be_to_host(be, row, logits + (size_t)(T - 1) * (size_t)V, (size_t)V * sizeof *row);
        }
        nb_part_acts_free(a);
        if (rc) {
            snprintf(err, errlen, "forward failed at token %d (%d)", g, rc);
            goto out;
        }
        int32_t t = nb_gen_pick(row, V, c, (uint64_t)g);
        if (t < 0) {
            rc = NB_ENOMEM;
            goto out;
        }
        ids[(*n)++] = t;
    }
    rc = 0;
out:
    if (dtok)
        nb_be_dealloc(be, dtok);
    free(row);
    return rc;
}
