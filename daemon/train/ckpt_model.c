/*
 * ckpt_model.c - the model config as checkpoints record it: canonical JSON,
 * its digest, its parser and the comparison that names the first field
 * that differs; see ckpt_internal.h.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/train/ckpt_internal.h"
#include "kernels/common.h"

static bool is_cls(nb_head_kind_t h)
{
    return h == NB_MODEL_HEAD_SEQCLS || h == NB_MODEL_HEAD_TOKCLS;
}

nb_model_config_t nb__ckpt_model_norm(const nb_model_config_t *c)
{
    nb_model_config_t n = *c;
    n.ln_eps = nb_model_ln_eps(c);
    n.mask_token = 0; /* a training setting, not the model's weights */
    if (n.adapter_size <= 0) { /* no adapters: the other three mean nothing */
        n.adapter_size = 0;
        n.adapter_after = 0;
        n.adapter_first = n.adapter_last = 0;
    }
    if (n.lowrank_rank <= 0) /* no split: its block means nothing */
        n.lowrank_rank = n.lowrank_block = 0;
    if (!is_cls(n.head))
        n.n_classes = 0;
    else
        n.tie_embeddings = false;
    return n;
}

json_t *nb__ckpt_model_json(const nb_model_config_t *c0)
{
    nb_model_config_t c = nb__ckpt_model_norm(c0);
    json_t *o = json_object();
    if (!o)
        return NULL;
    int bad = 0;
    bad |= json_object_set_new(o, "n_layer", json_integer(c.n_layer));
    bad |= json_object_set_new(o, "d_model", json_integer(c.d_model));
    bad |= json_object_set_new(o, "n_head", json_integer(c.n_head));
    bad |= json_object_set_new(o, "d_ff", json_integer(c.d_ff));
    bad |= json_object_set_new(o, "vocab", json_integer(c.vocab));
    bad |= json_object_set_new(o, "max_seq", json_integer(c.max_seq));
    bad |= json_object_set_new(o, "causal", json_boolean(c.causal));
    bad |= json_object_set_new(o, "norm", json_string(nb_norm_name(c.norm)));
    bad |= json_object_set_new(o, "head", json_string(nb_head_kind_name(c.head)));
    bad |= json_object_set_new(o, "n_classes", json_integer(c.n_classes));
    bad |= json_object_set_new(o, "tie_embeddings", json_boolean(c.tie_embeddings));
    /* the model settings only when not the defaults: a default model keeps
     * the JSON (and digest) earlier builds wrote */
    if (c.ln_eps != NB_MODEL_LN_EPS_DEFAULT || c.gelu != NB_MODEL_GELU_TANH) {
        bad |= json_object_set_new(o, "ln_eps", json_real((double)c.ln_eps));
        bad |= json_object_set_new(o, "gelu", json_string(nb_gelu_name(c.gelu)));
    }
    /* adapters (job.adapters) only when there are some: [size, after bits,
     * first, last) */
    if (c.adapter_size > 0) {
        json_t *a = json_array();
        bad |= !a || json_array_append_new(a, json_integer(c.adapter_size)) ||
               json_array_append_new(a, json_integer((json_int_t)c.adapter_after)) ||
               json_array_append_new(a, json_integer(c.adapter_first)) ||
               json_array_append_new(a, json_integer(c.adapter_last));
        bad |= json_object_set_new(o, "adapters", a);
    }
    /* the low-rank split (job.lowrank) only when there is one: [block,
     * rank]; a model without it keeps the JSON (and digest) of before */
    if (c.lowrank_rank > 0) {
        json_t *a = json_array();
        bad |= !a || json_array_append_new(a, json_integer(c.lowrank_block)) ||
               json_array_append_new(a, json_integer(c.lowrank_rank));
        bad |= json_object_set_new(o, "lowrank", a);
    }
    /* token shift (job.model.token_shift) only when set: a model without it
     * keeps the JSON (and digest) of before */
    if (c.token_shift)
        bad |= json_object_set_new(o, "token_shift", json_true());
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int nb__ckpt_model_digest(const nb_model_config_t *c, char hex[65])
{
    json_t *o = nb__ckpt_model_json(c);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    nb__sha_t s;
    if (!text || nb__sha_init(&s)) {
        free(text);
        return NB_ENOMEM;
    }
    nb__sha_update(&s, text, strlen(text));
    nb__sha_final_hex(&s, hex);
    free(text);
    return 0;
}

static const char *const int_keys[] = { "n_layer", "d_model", "n_head", "d_ff", "vocab", "max_seq", "n_classes" };

const char *nb__ckpt_model_parse(json_t *v, nb_model_config_t *c, char *why, size_t whylen)
{
    if (!json_is_object(v))
        return "model is not an object";
    memset(c, 0, sizeof *c);
    int *ints[] = { &c->n_layer, &c->d_model, &c->n_head, &c->d_ff, &c->vocab, &c->max_seq, &c->n_classes };
    for (size_t i = 0; i < NB_ARRAY_LEN(int_keys); i++) {
        json_t *x = json_object_get(v, int_keys[i]);
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > (1 << 30)) {
            snprintf(why, whylen, "model.%s is not an integer in 0..%d", int_keys[i], 1 << 30);
            return why;
        }
        *ints[i] = (int)json_integer_value(x);
    }
    json_t *causal = json_object_get(v, "causal"), *tie = json_object_get(v, "tie_embeddings");
    if (!json_is_boolean(causal))
        return "model.causal is not true or false";
    if (!json_is_boolean(tie))
        return "model.tie_embeddings is not true or false";
    c->causal = json_is_true(causal);
    c->tie_embeddings = json_is_true(tie);
    json_t *norm = json_object_get(v, "norm"), *head = json_object_get(v, "head");
    if (!json_is_string(norm) || nb_norm_parse(json_string_value(norm), &c->norm))
        return "model.norm is not \"pre\" or \"post\"";
    if (!json_is_string(head) || nb_head_kind_parse(json_string_value(head), &c->head))
        return "model.head is not \"lm\", \"mlm\", \"seqcls\" or \"tokcls\"";
    json_t *eps = json_object_get(v, "ln_eps"), *gelu = json_object_get(v, "gelu");
    size_t extra = 0;
    if (eps || gelu) {
        if (!json_is_number(eps) || !json_is_string(gelu) || nb_gelu_parse(json_string_value(gelu), &c->gelu))
            return "model.ln_eps is not a number or model.gelu is not \"tanh\" or \"erf\"";
        c->ln_eps = (float)json_number_value(eps);
        extra = 2;
    }
    json_t *ad = json_object_get(v, "adapters");
    if (ad) {
        int av[4];
        for (size_t i = 0; i < 4; i++) {
            json_t *x = json_array_get(ad, i);
            if (!json_is_array(ad) || json_array_size(ad) != 4 || !json_is_integer(x) ||
                json_integer_value(x) < 0 || json_integer_value(x) > (1 << 20))
                return "model.adapters is not [size, after, first, last]";
            av[i] = (int)json_integer_value(x);
        }
        c->adapter_size = av[0];
        c->adapter_after = (unsigned)av[1];
        c->adapter_first = av[2];
        c->adapter_last = av[3];
        extra++;
    }
    json_t *lr = json_object_get(v, "lowrank");
    if (lr) {
        int lv[2];
        for (size_t i = 0; i < 2; i++) {
            json_t *x = json_array_get(lr, i);
            if (!json_is_array(lr) || json_array_size(lr) != 2 || !json_is_integer(x) ||
                json_integer_value(x) < 0 || json_integer_value(x) > (1 << 20))
                return "model.lowrank is not [block, rank]";
            lv[i] = (int)json_integer_value(x);
        }
        if (lv[1] < 1)
            return "model.lowrank is not [block, rank] with a rank of at least 1 (no split: no lowrank key)";
        c->lowrank_block = lv[0];
        c->lowrank_rank = lv[1];
        extra++;
    }
    json_t *ts = json_object_get(v, "token_shift");
    if (ts) {
        if (!json_is_true(ts))
            return "model.token_shift is not true (a model without token shift has no token_shift key)";
        c->token_shift = true;
        extra++;
    }
    if (json_object_size(v) != NB_ARRAY_LEN(int_keys) + 4 + extra)
        return "model has keys this build does not know";
    const char *bad = nb_model_config_validate(c);
    if (bad) {
        snprintf(why, whylen, "model: %s", bad);
        return why;
    }
    return NULL;
}

const char *nb__ckpt_model_diff(const nb_model_config_t *a0, const char *a_what, const nb_model_config_t *b0,
                                const char *b_what, char *buf, size_t len)
{
    nb_model_config_t a = nb__ckpt_model_norm(a0), b = nb__ckpt_model_norm(b0);
    const int av[] = { a.n_layer, a.d_model, a.n_head, a.d_ff, a.vocab, a.max_seq, a.n_classes };
    const int bv[] = { b.n_layer, b.d_model, b.n_head, b.d_ff, b.vocab, b.max_seq, b.n_classes };
    for (size_t i = 0; i < NB_ARRAY_LEN(int_keys); i++)
        if (av[i] != bv[i]) {
            snprintf(buf, len, "model.%s is %d in %s, %d in %s", int_keys[i], av[i], a_what, bv[i], b_what);
            return buf;
        }
    if (a.causal != b.causal) {
        snprintf(buf, len, "model.causal is %s in %s, %s in %s", a.causal ? "true" : "false", a_what,
                 b.causal ? "true" : "false", b_what);
        return buf;
    }
    if (a.norm != b.norm) {
        snprintf(buf, len, "model.norm is %s in %s, %s in %s", nb_norm_name(a.norm), a_what, nb_norm_name(b.norm),
                 b_what);
        return buf;
    }
    if (a.head != b.head) {
        snprintf(buf, len, "model.head is %s in %s, %s in %s", nb_head_kind_name(a.head), a_what,
                 nb_head_kind_name(b.head), b_what);
        return buf;
    }
    if (a.ln_eps != b.ln_eps) {
        snprintf(buf, len, "model.ln_eps is %g in %s, %g in %s", (double)a.ln_eps, a_what, (double)b.ln_eps,
                 b_what);
        return buf;
    }
    if (a.gelu != b.gelu) {
        snprintf(buf, len, "model.gelu is %s in %s, %s in %s", nb_gelu_name(a.gelu), a_what, nb_gelu_name(b.gelu),
                 b_what);
        return buf;
    }
    if (a.token_shift != b.token_shift) {
        snprintf(buf, len, "model.token_shift is %s in %s, %s in %s", a.token_shift ? "true" : "false", a_what,
                 b.token_shift ? "true" : "false", b_what);
        return buf;
    }
    if (a.tie_embeddings != b.tie_embeddings) {
        snprintf(buf, len, "model.tie_embeddings is %s in %s, %s in %s", a.tie_embeddings ? "true" : "false",
                 a_what, b.tie_embeddings ? "true" : "false", b_what);
        return buf;
    }
    if (a.adapter_size != b.adapter_size || a.adapter_after != b.adapter_after ||
        a.adapter_first != b.adapter_first || a.adapter_last != b.adapter_last) {
        snprintf(buf, len, "model.adapters (job.adapters: size, after bits, blocks [first, last)) are [%d, %u, %d, "
                 "%d] in %s, [%d, %u, %d, %d] in %s", a.adapter_size, a.adapter_after, a.adapter_first,
                 a.adapter_last, a_what, b.adapter_size, b.adapter_after, b.adapter_first, b.adapter_last, b_what);
        return buf;
    }
    if (a.lowrank_rank != b.lowrank_rank || a.lowrank_block != b.lowrank_block) {
        snprintf(buf, len, "model.lowrank (job.lowrank: block, rank; rank 0 no split) is [%d, %d] in %s, [%d, %d] "
                 "in %s", a.lowrank_block, a.lowrank_rank, a_what, b.lowrank_block, b.lowrank_rank, b_what);
        return buf;
    }
    return NULL;
}

const char *nb__ckpt_file_name_bad(const char *name)
{
    size_t n = strnlen(name, NB_CKPT_FILE_NAME_MAX);
    if (n == 0)
        return "an empty file name";
    if (n >= NB_CKPT_FILE_NAME_MAX)
        return "a file name of 64 bytes or more";
    if (name[0] == '.')
        return "a file name starting with '.' (\".\", \"..\" or hidden)";
    for (size_t i = 0; i < n; i++)
        if (name[i] == '/' || name[i] == '\\' || (unsigned char)name[i] < 0x20 || name[i] == 0x7f)
            return "a file name with '/', '\\' or a control character (a plain name in the checkpoint "
                   "directory is required)";
    if (n >= 4 && !strcmp(name + n - 4, NB__CKPT_TMP_SUFFIX))
        return "a file name ending in .tmp (reserved for files being written)";
    if (!strcmp(name, NB_CKPT_MANIFEST))
        return "the manifest's own name";
    return NULL;
}
