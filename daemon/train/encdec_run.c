/*
 * encdec_run.c - nebula-train's loop for an encoder-decoder job
 * (encdec_run.h): what it prints is what docs/finetune.md shows.
 */
#include <stdbool.h>
#include <stdio.h>
#include "daemon/config/config.h"
#include "daemon/log.h"
#include "daemon/train/encdec_run.h"
#include "daemon/train/weights.h"
#include "kernels/common.h"

static void log_note(void *ud, const char *note)
{
    (void)ud;
    nb_log_info(NULL, "%s", note);
}

/* One model's line: its shape, and what it trains. */
static void describe(const char *what, const nb_model_config_t *m, nb_part_t *p, const char *init)
{
    int nt = nb_part_num_tensors(p), ntr = nb_part_num_trainable(p);
    size_t np = nb_part_num_params(p), ng = nb_part_num_grads(p);
    printf("nebula-train: %s: %s-LN%s, %d layers, d_model %d, %d heads, vocab %d, %zu parameters%s%s; "
           "training %d of %d tensors, %zu parameters (%.2f%%), gradients and optimizer %.2f MiB\n",
           what, nb_norm_name(m->norm), m->cross_attn ? " with cross-attention" : "", m->n_layer, m->d_model,
           m->n_head, m->vocab, np, init[0] ? " from " : "", init, ntr, nt, ng, 100.0 * (double)ng / (double)np,
           (double)ng * 3 * sizeof(float) / (1024.0 * 1024.0));
}

static int save(const char *path, nb_part_t *p, const char *what)
{
    char err[1024];
    if (!path[0])
        return 0;
    if (nb_weights_save(path, p, err, sizeof err)) {
        nb_log_error(NULL, "%s", err);
        return -1;
    }
    printf("nebula-train: %s weights written to %s\n", what, path);
    return 0;
}

int nb_encdec_run(nb_backend_t *be, const nb_encdec_config_t *c, const nb_encdec_run_t *r)
{
    char err[2048];
    nb_encdec_t *t = NULL;
    int rc = nb_encdec_new(be, c, log_note, NULL, &t, err, sizeof err);
    if (rc) {
        nb_log_error(NULL, "%s: %s", r->config_path, err);
        return rc == NB_ENOMEM || rc == NB_EIO ? 1 : NB_CFG_EXIT_CONFIG;
    }
    const nb_spans_t *task = nb_encdec_task(t);
    printf("nebula-train: encoder-decoder job: span restoration on %d texts (%s), %llu training tokens, %d held-out "
           "windows of %d tokens, spans of %d..%d tokens; batch %d (%d micro-batches), %d steps, backend %s\n",
           c->task.n_texts, nb_tokenizer_describe(nb_spans_tokenizer(task)),
           (unsigned long long)nb_spans_train_tokens(task), nb_spans_heldout_windows(task), c->task.src_len - 2,
           c->task.min_tokens, c->task.max_tokens, c->batch, c->micro_batches, c->steps, be->iface->name);
    describe("encoder", &c->enc.model, nb_encdec_encoder(t), c->enc.init);
    describe("decoder", &c->dec.model, nb_encdec_decoder(t), c->dec.init);
    fflush(stdout);
    int end = r->eval_only ? 0 : r->stop_after && r->stop_after < c->steps ? r->stop_after : c->steps;
    int every = r->log_every > 0 ? r->log_every : 1;
    float first_loss = 0, last_loss = 0;
    double total_s = 0;
    int skipped = 0;
    rc = 0;
    for (int s = 0; s < end && !*r->stop; s++) {
        nb_train_step_t st;
        rc = nb_encdec_step(t, &st, err, sizeof err);
        if (rc == 0 || rc == NB_ELIMIT) {
            if (st.skipped)
                nb_log_warn(NULL, "step %d: non-finite gradient norm (%g): update skipped (%d consecutive)", s + 1,
                            st.grad_norm, st.skipped_run);
            skipped = st.skipped_total;
        }
        if (rc) {
            nb_log_error(NULL, "%s", err);
            break;
        }
        if (s == 0)
            first_loss = st.loss;
        last_loss = st.loss;
        total_s += st.seconds;
        if ((s + 1) % every == 0 || s + 1 == end || s == 0) {
            printf("step %5d/%d  loss %.4f  lr %.2e  grad_norm %.3f  pairs/s %.0f\n", s + 1, c->steps, st.loss,
                   st.lr, st.grad_norm, c->batch / (st.seconds > 0 ? st.seconds : 1e-9));
            fflush(stdout);
        }
    }
    int done = nb_encdec_steps_done(t);
    if (rc == 0 && r->eval_only)
        printf("nebula-train: eval only: no step trained; scoring the encoder of %s and the decoder of %s\n",
               c->enc.init[0] ? c->enc.init : "its seed", c->dec.init[0] ? c->dec.init : "its seed");
    else if (rc == 0) {
        printf("nebula-train: %s after %d steps: loss %.4f -> %.4f in %.1f s\n",
               *r->stop ? "interrupted" : done == c->steps ? "done" : "stopped", done, first_loss, last_loss,
               total_s);
        if (skipped)
            printf("nebula-train: %d steps skipped for a non-finite gradient norm\n", skipped);
    }
    if (rc == 0) {
        nb_encdec_score_t sc;
        if ((rc = nb_encdec_eval(t, &sc, err, sizeof err)) != 0)
            nb_log_error(NULL, "%s", err);
        else
            printf("nebula-train: held-out: %d pairs, loss %.4f, exact match %.4f, token F1 %.4f\n", sc.pairs,
                   sc.loss, sc.exact, sc.f1);
    }
    bool outputs = (r->enc_output && *r->enc_output) || (r->dec_output && *r->dec_output);
    if (rc == 0 && !r->eval_only && done == c->steps &&
        (save(r->enc_output, nb_encdec_encoder(t), "encoder") || save(r->dec_output, nb_encdec_decoder(t), "decoder")))
        rc = NB_EIO;
    else if (rc == 0 && outputs && (r->eval_only || done < c->steps))
        printf("nebula-train: weights not written (%d of %d steps done)\n", done, c->steps);
    fflush(stdout);
    nb_encdec_free(t);
    return rc ? 1 : 0;
}
