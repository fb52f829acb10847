/* pipe_layout.c - checks a pipeline layout; see pipe_layout.h. */
#include "daemon/pipeline/pipe_layout.h"

const char *nb_pipe_layout_validate(const nb_pipe_layout_t *l)
{
    const char *e = nb_model_config_validate(&l->model);
    if (e)
        return e;
    if (l->model.head != NB_MODEL_HEAD_LM && l->model.head != NB_MODEL_HEAD_MLM)
        return "layout: a pipeline trains the lm and mlm heads only (batches come from a token file)";
    if (l->p < 1 || l->p > NB_SCHED_MAX_STAGES)
        return "layout: number of stages out of range";
    if (l->n_daemons < 1 || l->n_daemons > l->p)
        return "layout: number of daemons out of range";
    if (l->micro_batch_size < 1 || l->seq_len < 1 || l->seq_len > l->model.max_seq)
        return "layout: micro-batch size or sequence length out of range";
    if (!(l->eval_fraction >= 0.0 && l->eval_fraction <= 0.5))
        return "layout: held-out fraction out of range 0..0.5";
    int next = 0;
    for (int s = 0; s < l->p; s++) {
        const nb_part_spec_t *ps = &l->parts[s];
        if (ps->embed != (s == 0))
            return "layout: the embedding must be on stage 0 and only there";
        if (ps->head != (s == l->p - 1))
            return "layout: the head must be on the last stage and only there";
        if (ps->first != next || ps->last < ps->first)
            return "layout: stage layer ranges must be contiguous and in order";
        next = ps->last;
        if (l->placement[s] < 0 || l->placement[s] >= l->n_daemons)
            return "layout: placement names a daemon out of range";
    }
    if (next != l->model.n_layer)
        return "layout: stage layer ranges do not cover every block";
    for (int d = 0; d < l->n_daemons; d++) {
        bool used = false;
        for (int s = 0; s < l->p; s++)
            used |= l->placement[s] == d;
        if (!used)
            return "layout: a daemon hosts no stage";
    }
    if (l->model.tie_embeddings && l->placement[0] != l->placement[l->p - 1])
        return "layout: tie_embeddings needs the embedding and the head on one daemon "
               "(U-shape), or tie_embeddings: false";
    return NULL;
}
