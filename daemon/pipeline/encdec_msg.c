/*
 * encdec_msg.c - the encoder-decoder job's config conversion, digest and
 * the checks on a tensor across the cut (encdec_msg.h).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "daemon/clock.h"
#include "daemon/log.h"
#include "daemon/pipeline/encdec_msg.h"
#include "kernels/codec/codec.h"
#include "kernels/common.h"
#include "daemon/train/cfg_model.h"
#include "daemon/train/file_sha.h"

int nb_encdec_cfg_convert(const nb_config_t *cfg, nb_encdec_config_t *ec, const char **texts, char *err,
                          size_t errlen)
{
    const nb_cfg_job_t *j = &cfg->job;
    memset(ec, 0, sizeof *ec);
    ec->enc = (nb_encdec_side_t){ .model = nb_cfg_to_model(&j->encoder.model), .key = "job.encoder" };
    ec->dec = (nb_encdec_side_t){ .model = nb_cfg_to_model(&j->model), .key = "job" };
    if (nb_cfg_set_adapters(cfg, &j->encoder.adapters, "job.encoder", &ec->enc.model, err, errlen) ||
        nb_cfg_set_adapters(cfg, &j->adapters, "job", &ec->dec.model, err, errlen))
        return -1;
    nb_cfg_to_freeze(&ec->enc.freeze, j->encoder.n_freeze, j->encoder.freeze, j->encoder.n_trainable, j->encoder.trainable);
    nb_cfg_to_freeze(&ec->dec.freeze, j->n_freeze, j->freeze, j->n_trainable, j->trainable);
    snprintf(ec->enc.init, sizeof ec->enc.init, "%s", j->encoder.init);
    snprintf(ec->dec.init, sizeof ec->dec.init, "%s", j->init);
    const nb_cfg_optim_t *o = &j->optimizer;
    ec->optim = (nb_optim_config_t){
        .lr = (float)o->lr, .lr_min = (float)o->min_lr, .warmup_steps = (int)o->warmup_steps,
        .total_steps = (int)j->steps, .beta1 = (float)o->beta1, .beta2 = (float)o->beta2,
        .eps = (float)o->eps, .weight_decay = (float)o->weight_decay, .grad_clip = (float)o->grad_clip,
    };
    ec->seed = j->seed;
    ec->batch = (int)j->batch;
    ec->micro_batches = j->micro_batches > 0 ? (int)j->micro_batches : 1;
    ec->steps = (int)j->steps;
    ec->max_skipped_steps = (int)j->max_skipped_steps;
    for (int i = 0; i < j->spans.n_text; i++)
        texts[i] = j->spans.text[i];
    ec->task = (nb_spans_config_t){ .texts = texts, .n_texts = j->spans.n_text, .tokenizer = j->spans.tokenizer,
                                    .src_len = (int)j->seq_len, .min_tokens = j->spans.min_tokens,
                                    .max_tokens = j->spans.max_tokens, .hold = j->spans.hold };
    ec->eval_pairs = (int)j->spans.eval_windows;
    return 0;
}

/* FNV-1a 64 over the bytes of a canonical text. */
static uint64_t fnv(uint64_t h, const char *s)
{
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static uint64_t model_text(uint64_t h, const nb_model_config_t *m, const nb_freeze_spec_t *f)
{
    char b[512];
    snprintf(b, sizeof b, "m %d %d %d %d %d %d %d %d %d %d %d %a %d %d %d %d %d %d %d|", m->n_layer, m->d_model,
             m->n_head, m->d_ff, m->vocab, m->max_seq, m->causal, (int)m->norm, (int)m->head, m->n_classes,
             m->tie_embeddings, (double)m->ln_eps, (int)m->gelu, m->mask_token, m->cross_attn, m->adapter_size,
             m->adapter_after, m->adapter_first, m->adapter_last);
    h = fnv(h, b);
    if (m->token_shift) /* only when set: the digest of a model without it stays as before */
        h = fnv(h, "s|");
    for (int i = 0; i < f->n_freeze; i++)
        h = fnv(fnv(h, "f "), f->freeze[i]);
    for (int i = 0; i < f->n_trainable; i++)
        h = fnv(fnv(h, "t "), f->trainable[i]);
    return h;
}

int nb_encdec_codecs(const nb_config_t *cfg, nb_codec_spec_t *fwd, nb_codec_spec_t *bwd,
                     char fwd_text[NB_ENCDEC_CODEC_TEXT], char bwd_text[NB_ENCDEC_CODEC_TEXT], char *err,
                     size_t errlen)
{
    const char *key[2] = { "job.codecs.forward", "job.codecs.backward" };
    const char *text[2] = { cfg->job.codecs.forward, cfg->job.codecs.backward };
    nb_codec_spec_t *spec[2] = { fwd, bwd };
    char *canon[2] = { fwd_text, bwd_text };
    for (int d = 0; d < 2; d++) {
        char why[512];
        if (nb_codec_spec_parse(text[d], spec[d], why, sizeof why)) {
            snprintf(err, errlen, "%s: %s: %s", cfg->path, key[d], why);
            return NB_EINVAL;
        }
        if (spec[d]->ef || spec[d]->delta) {
            snprintf(err, errlen, "%s: %s: '%s' keeps state between steps (error feedback or delta), which the "
                     "encoder-decoder job across daemons does not carry; choose a stateless codec",
                     cfg->path, key[d], text[d]);
            return NB_EINVAL;
        }
        if (nb_codec_spec_format(spec[d], canon[d], NB_ENCDEC_CODEC_TEXT) < 0) {
            snprintf(err, errlen, "%s: %s: '%s' is too long", cfg->path, key[d], text[d]);
            return NB_EINVAL;
        }
    }
    return 0;
}

void nb_encdec_cfg_digest(const nb_encdec_config_t *ec, const char *fwd_codec, const char *bwd_codec, char out[17])
{
    uint64_t h = 14695981039346656037ull;
    h = model_text(h, &ec->enc.model, &ec->enc.freeze);
    h = model_text(h, &ec->dec.model, &ec->dec.freeze);
    const nb_optim_config_t *o = &ec->optim;
    const nb_spans_config_t *t = &ec->task;
    char b[512];
    snprintf(b, sizeof b, "o %a %a %d %d %a %a %a %a %a|j %llu %d %d %d %d|t %d %d %d %d %d|c %s %s",
             (double)o->lr, (double)o->lr_min, o->warmup_steps, o->total_steps, (double)o->beta1, (double)o->beta2,
             (double)o->eps, (double)o->weight_decay, (double)o->grad_clip, (unsigned long long)ec->seed, ec->batch,
             ec->micro_batches, ec->steps, ec->max_skipped_steps, t->n_texts, t->src_len, t->min_tokens,
             t->max_tokens, t->hold, fwd_codec, bwd_codec);
    h = fnv(h, b);
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}

/* ---- the inputs' digest ------------------------------------------------------ */

/* The files nb_tokenizer_load reads for path, in its order of choice
 * (daemon/data/tok_load.c): keep the two in step. */
static int tokenizer_files(const char *path, char files[3][NB_CFG_PATH_MAX + 32])
{
    struct stat st;
    if (stat(path, &st) != 0)
        return 0;
    if (S_ISREG(st.st_mode)) {
        snprintf(files[0], sizeof files[0], "%s", path);
        return 1;
    }
    const char *one[1] = { "tokenizer.json" };
    const char *wp[2] = { "vocab.txt", "tokenizer_config.json" };
    const char *bpe[2] = { "vocab.json", "merges.txt" };
    struct { const char **names; int n, need; } choice[3] = { { one, 1, 1 }, { wp, 2, 1 }, { bpe, 2, 2 } };
    for (int c = 0; c < 3; c++) {
        int n = 0;
        for (int i = 0; i < choice[c].n; i++) {
            snprintf(files[n], sizeof files[n], "%s/%s", path, choice[c].names[i]);
            if (stat(files[n], &st) == 0 && S_ISREG(st.st_mode))
                n++;
            else if (i < choice[c].need)
                break;
        }
        if (n >= choice[c].need)
            return n;
    }
    return 0;
}

int nb_encdec_inputs_hash(const nb_encdec_config_t *ec, nb_encdec_inputs_t *in, char *err, size_t errlen)
{
    const nb_spans_config_t *t = &ec->task;
    char why[NB_CFG_PATH_MAX + 256];
    int rc;
    memset(in, 0, sizeof *in);
    in->n_texts = t->n_texts < NB_CFG_MAX_TEXTS ? t->n_texts : NB_CFG_MAX_TEXTS;
    uint64_t h = 14695981039346656037ull;
    for (int i = 0; i < in->n_texts; i++) {
        if ((rc = nb_file_sha256(t->texts[i], in->text[i], why, sizeof why))) {
            snprintf(err, errlen, "job.spans.text: %s", why);
            return rc;
        }
        h = fnv(fnv(h, "t "), in->text[i]);
    }
    snprintf(in->texts16, sizeof in->texts16, "%016llx", (unsigned long long)h);
    h = 14695981039346656037ull;
    in->n_tok = t->tokenizer ? tokenizer_files(t->tokenizer, in->tok_file) : 0;
    for (int i = 0; i < in->n_tok; i++) {
        if ((rc = nb_file_sha256(in->tok_file[i], in->tok[i], why, sizeof why))) {
            snprintf(err, errlen, "job.spans.tokenizer: %s", why);
            return rc;
        }
        /* the file's name, not its directory: which file, not where */
        const char *base = strrchr(in->tok_file[i], '/');
        h = fnv(fnv(fnv(h, base ? base + 1 : in->tok_file[i]), " "), in->tok[i]);
    }
    snprintf(in->tok16, sizeof in->tok16, "%016llx", (unsigned long long)h);
    return 0;
}

void nb_encdec_job_digest(const char settings[17], const nb_encdec_inputs_t *in, char out[NB_ENCDEC_DIGEST_LEN])
{
    snprintf(out, NB_ENCDEC_DIGEST_LEN, "%.16s-%.16s-%.16s", settings, in->texts16, in->tok16);
}

void nb_encdec_digest_diff(const char *mine, const char *theirs, char *out, size_t outlen)
{
    static const char *what[3] = { "the settings", "the texts' contents (job.spans.text)",
                                   "the tokenizer's files (job.spans.tokenizer)" };
    bool differ[3] = { false, false, false };
    bool form = strlen(theirs) == NB_ENCDEC_DIGEST_LEN - 1 && theirs[16] == '-' && theirs[33] == '-';
    for (int i = 0; i < 3; i++)
        differ[i] = form ? strncmp(mine + 17 * i, theirs + 17 * i, 16) != 0 : i == 0;
    out[0] = '\0';
    size_t k = 0;
    int n = 0, total = differ[0] + differ[1] + differ[2];
    for (int i = 0; i < 3; i++) {
        if (!differ[i])
            continue;
        n++;
        const char *sep = n == 1 ? "" : n == total ? " and " : ", ";
        int w = snprintf(out + k, outlen - k, "%s%s", sep, what[i]);
        if (w < 0 || (size_t)w >= outlen - k)
            return;
        k += (size_t)w;
    }
}

void nb_encdec_inputs_describe(const nb_encdec_config_t *ec, const nb_encdec_inputs_t *in, char *out,
                               size_t outlen)
{
    size_t k = 0;
    int w = snprintf(out, outlen, "job inputs, SHA-256 (first 16 hex digits):");
    for (int i = 0; i < in->n_texts && w >= 0 && (size_t)w < outlen - k; i++) {
        k += (size_t)w;
        w = snprintf(out + k, outlen - k, " text %s %.16s;", ec->task.texts[i], in->text[i]);
    }
    for (int i = 0; i < in->n_tok && w >= 0 && (size_t)w < outlen - k; i++) {
        k += (size_t)w;
        w = snprintf(out + k, outlen - k, " tokenizer %s %.16s;", in->tok_file[i], in->tok[i]);
    }
}

int nb_encdec_job_digest_at_start(const nb_encdec_config_t *ec, const char *fwd_codec, const char *bwd_codec,
                                  char out[NB_ENCDEC_DIGEST_LEN], char *err, size_t errlen)
{
    char settings[17], line[2048];
    nb_encdec_cfg_digest(ec, fwd_codec, bwd_codec, settings);
    nb_encdec_inputs_t in;
    int rc = nb_encdec_inputs_hash(ec, &in, err, errlen);
    if (rc)
        return rc;
    nb_encdec_job_digest(settings, &in, out);
    nb_encdec_inputs_describe(ec, &in, line, sizeof line);
    nb_log_info(NULL, "%s", line);
    return 0;
}

int nb_encdec_rx_check(const nb_encdec_rx_t *x, const char *sender, const Nebula__Tensor *t, size_t len, char *err,
                       size_t errlen)
{
    const char *what = x->kind == NEBULA__TENSOR_KIND__KIND_ACTIVATION ? "encoder output" : "encoder gradient";
    if (strcmp(sender, x->peer) != 0) {
        snprintf(err, errlen, "refused a tensor from %s: only %s sends the %s", sender, x->peer, what);
        return NB_EINVAL;
    }
    if ((int)t->kind != x->kind || t->job_id != x->job_id || t->step != x->step || t->micro_batch != x->micro) {
        snprintf(err, errlen, "refused a tensor from %s: kind %d, job %llu, step %llu, micro-batch %u; expected the %s "
                 "(kind %d) of job %llu, step %llu, micro-batch %u", sender, (int)t->kind,
                 (unsigned long long)t->job_id, (unsigned long long)t->step + 1, t->micro_batch, what, x->kind,
                 (unsigned long long)x->job_id, (unsigned long long)x->step + 1, x->micro);
        return NB_EFORMAT;
    }
    if (!t->codec || strcmp(t->codec, x->codec) != 0) {
        snprintf(err, errlen, "refused the %s from %s: codec '%.64s', the job's is '%s'", what, sender,
                 t->codec ? t->codec : "", x->codec);
        return NB_EFORMAT;
    }
    if (t->n_shape != 2 || t->shape[0] != x->rows || t->shape[1] != x->cols) {
        snprintf(err, errlen, "refused the %s from %s: shape %s%llu x %llu, expected %llu x %llu (B*S, C)", what,
                 sender, t->n_shape != 2 ? "of rank != 2, " : "", t->n_shape > 0 ? (unsigned long long)t->shape[0] : 0,
                 t->n_shape > 1 ? (unsigned long long)t->shape[1] : 0, (unsigned long long)x->rows,
                 (unsigned long long)x->cols);
        return NB_EFORMAT;
    }
    nb_codec_info_t info;
    char why[256];
    size_t ml = t->codec_meta.len;
    int rc = nb_codec_peek(t->codec, t->codec_meta.data, ml, &info, why, sizeof why);
    if (rc == 0 && (info.rows * (uint64_t)info.cols != x->rows * x->cols || info.payload_bytes != len)) {
        snprintf(why, sizeof why, "its metadata says %u x %u values and %llu payload bytes, the frame has %zu",
                 info.rows, info.cols, (unsigned long long)info.payload_bytes, len);
        rc = NB_EFORMAT;
    }
    if (rc) {
        snprintf(err, errlen, "refused the %s from %s: %s", what, sender, why);
        return NB_EFORMAT;
    }
    return 0;
}

static void free_payload(void *p, void *ud)
{
    (void)ud;
    free(p);
}

int nb_encdec_send(nb_conn_t *c, uint64_t job_id, uint64_t step, uint32_t micro, int kind, uint64_t rows,
                   uint64_t cols, nb_codec_msg_t *m)
{
    Nebula__Tensor t;
    nebula__tensor__init(&t);
    uint64_t shape[2] = { rows, cols };
    t.job_id = job_id;
    t.step = step;
    t.micro_batch = micro;
    t.kind = (Nebula__TensorKind)kind;
    t.dtype = NEBULA__DTYPE__DTYPE_F32;
    t.n_shape = 2;
    t.shape = shape;
    t.codec = m->spec;
    t.codec_meta.data = m->meta;
    t.codec_meta.len = m->meta_len;
    t.decoded_bytes = rows * cols * sizeof(float);
    Nebula__Frame f;
    nebula__frame__init(&f);
    f.body_case = NEBULA__FRAME__BODY_TENSOR;
    f.tensor = &t;
    int rc = nb_conn_send(c, &f, m->payload, m->payload_len, free_payload, NULL);
    if (rc == 0) { /* the transport owns the payload now; the codec allocates anew */
        m->payload = NULL;
        m->payload_len = m->payload_cap = 0;
    }
    return rc;
}

double nb_encdec_step_deadline_s(const nb_config_t *cfg)
{
    /* as stage_compute.c's wait for a neighbour's tensor */
    return 4.0 * (cfg->heartbeat_timeout_s > 0 ? cfg->heartbeat_timeout_s : 10.0);
}

void nb_encdec_wait_set(nb_encdec_wait_t *w, double limit, const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->what, sizeof w->what, fmt, ap);
    va_end(ap);
    w->since = nb_mono_s();
    w->limit = limit;
    w->key = key;
}

void nb_encdec_wait_clear(nb_encdec_wait_t *w)
{
    w->what[0] = '\0';
}

bool nb_encdec_wait_expired(const nb_encdec_wait_t *w, double now, const char *peer_what, const char *peer,
                            char *why, size_t whylen)
{
    if (!w->what[0] || now - w->since <= w->limit)
        return false;
    snprintf(why, whylen, "%s %s sent no %s within %g s (%s): its connection lives but its part of the job does "
             "not go on; an encoder-decoder job across daemons has no recovery yet", peer_what, peer, w->what,
             w->limit, w->key);
    return true;
}
