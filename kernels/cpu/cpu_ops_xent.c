/*
 * cpu_ops_xent.c - softmax cross-entropy, loss and logit gradient in one
 * pass over each row, on the CPU backend.
 * Shapes: logits, dlogits (N,V); targets, losses (N).
 * Numerically stable: log-sum-exp around the row maximum. A target < 0 marks
 * an ignored row (loss 0, gradient row 0); a target >= V is a broken
 * invariant (the caller validates labels when a batch is loaded).
 * dlogits may be logits itself (in place): each element is read before its
 * gradient is written.
 */
#include <math.h>
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_vec.h"

void nb_cpu_xent_fwd_bwd(nb_backend_t *be, float *losses, float *dlogits,
                         const float *logits, const int32_t *targets,
                         float dloss_scale, int N, int V)
{
    NB_CHECK(N >= 0 && V > 0);
    for (int i = 0; i < N; i++) {
        const float *x = logits + (size_t)i * V;
        float *d = dlogits ? dlogits + (size_t)i * V : NULL;
        int32_t tgt = targets[i];
        NB_CHECK(tgt < V);
        if (tgt < 0) {
            losses[i] = 0.0f;
            if (d)
                for (int j = 0; j < V; j++)
                    d[j] = 0.0f;
            continue;
        }
        float xt = x[tgt]; /* read before d (which may be x) is written */
        nb_v16 vmax = nb_v_set1(-INFINITY);
        int j = 0;
        for (; j + NB_VL <= V; j += NB_VL)
            vmax = nb_v_max(vmax, nb_v_load(x + j));
        float mx = nb_v_hmax(vmax);
        for (; j < V; j++)
            mx = x[j] > mx ? x[j] : mx;
        nb_v16 vm = nb_v_set1(mx), acc = nb_v_set1(0.0f);
        /* exp once per element; kept in the gradient row when there is one */
        j = 0;
        for (; j + NB_VL <= V; j += NB_VL) {
            nb_v16 e = nb_v_exp(nb_v_load(x + j) - vm);
            if (d)
                nb_v_store(d + j, e);
            acc += e;
        }
        if (j < V) {
            size_t r = (size_t)(V - j);
            nb_v16 e = nb_v_exp(nb_v_load_part(x + j, r, -INFINITY) - vm);
            if (d)
                nb_v_store_part(d + j, e, r);
            acc += e;
        }
        float sum = nb_v_hsum(acc);
        losses[i] = (mx + logf(sum)) - xt;
        if (d) {
            nb_v16 vs = nb_v_set1(dloss_scale / sum);
            j = 0;
            for (; j + NB_VL <= V; j += NB_VL)
                nb_v_store(d + j, nb_v_load(d + j) * vs);
            for (; j < V; j++)
                d[j] *= dloss_scale / sum;
            d[tgt] -= dloss_scale;
        }
    }
}
