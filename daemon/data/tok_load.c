/*
 * tok_load.c - reading tokenizer files: BERT's vocab.txt (with
 * tokenizer_config.json beside it), GPT-2's vocab.json and merges.txt, and
 * Hugging Face tokenizer.json (WordPiece or BPE model). Every refusal names
 * the file, the line or entry, and the reason.
 */
#include <errno.h>
#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/common.h"
#include "daemon/data/tok_internal.h"
#include "daemon/data/unicode.h"

/* Files larger than this are refused: GPT-2's vocab.json is 1 MB. */
#define TOK_MAX_FILE (256u << 20)
#define TOK_MAX_WORD_CHARS 10000u

static int read_all(const char *path, char **buf, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NB_EIO;
    }
    size_t cap = 1 << 16, n = 0;
    char *p = malloc(cap + 1);
    int rc = 0;
    while (p) {
        size_t k = fread(p + n, 1, cap - n, f);
        n += k;
        if (n < cap)
            break;
        if (cap >= TOK_MAX_FILE) {
            snprintf(err, errlen, "%s: larger than %u MiB", path, TOK_MAX_FILE >> 20);
            rc = NB_ELIMIT;
            break;
        }
        cap *= 2;
        char *q = realloc(p, cap + 1);
        if (!q)
            free(p);
        p = q;
    }
    if (!p) {
        fclose(f);
        snprintf(err, errlen, "%s: out of memory", path);
        return NB_ENOMEM;
    }
    if (!rc && ferror(f)) {
        snprintf(err, errlen, "%s: read error", path);
        rc = NB_EIO;
    }
    fclose(f);
    if (rc) {
        free(p);
        return rc;
    }
    p[n] = 0;
    *buf = p, *len = n;
    return 0;
}

/* Parses the JSON file at path (at most TOK_MAX_FILE bytes). NULL with err
 * set (file, line, column, reason) on failure; *rc gets the code. */
static json_t *load_json(const char *path, size_t flags, int *rc, char *err, size_t errlen)
{
    char *buf;
    size_t len;
    if ((*rc = read_all(path, &buf, &len, err, errlen)))
        return NULL;
    json_error_t je;
    json_t *j = json_loadb(buf, len, flags, &je);
    free(buf);
    if (!j) {
        snprintf(err, errlen, "%s: line %d, column %d: %s", path, je.line, je.column, je.text);
        *rc = NB_EFORMAT;
    }
    return j;
}

/* Shows a token in a message: at most 40 bytes, control bytes escaped. */
static const char *show(const char *s, size_t n, char out[200])
{
    size_t o = 0;
    for (size_t i = 0; i < n && i < 40 && o < 190; i++) {
        unsigned char c = (unsigned char)s[i];
        o += (size_t)(c < 0x20 || c == 0x7F ? snprintf(out + o, 200 - o, "\\x%02x", c)
                                            : snprintf(out + o, 200 - o, "%c", c));
    }
    if (n > 40)
        snprintf(out + o, 200 - o, "...");
    return out;
}

static int vocab_put(nb_tokenizer_t *t, const char *path, const char *where, const char *s, size_t n,
                     uint32_t id, char *err, size_t errlen)
{
    uint32_t dup = 0;
    char b[200];
    int rc = nb_vocab_add(&t->vocab, s, n, id, &dup);
    if (rc == NB_EFORMAT) {
        if (dup == id && t->vocab.str[id] && (t->vocab.len[id] != n || memcmp(t->vocab.str[id], s, n)))
        {
            char b2[200];
            snprintf(err, errlen, "%s: %s: ID %u is given twice ('%s' and '%s')", path, where, id, show(s, n, b),
                     show(t->vocab.str[id], t->vocab.len[id], b2));
        }
        else
            snprintf(err, errlen, "%s: %s: token '%s' is given twice (ID %u and ID %u)", path, where,
                     show(s, n, b), dup, id);
    } else if (rc == NB_ERANGE) {
        snprintf(err, errlen, "%s: %s: ID %u is above the limit of %u", path, where, id, NB_TOK_MAX_VOCAB - 1);
    } else if (rc) {
        snprintf(err, errlen, "%s: out of memory", path);
    }
    return rc;
}

/* tokenizer_config.json beside vocab.txt: do_lower_case, strip_accents,
 * tokenize_chinese_chars, unk_token. Absent: BERT uncased defaults. */
static int read_bert_config(nb_tokenizer_t *t, const char *vocab_path, const char **unk, char *unkbuf,
                            char *err, size_t errlen)
{
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s", vocab_path);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dirname(dir));
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    fclose(f);
    int rc;
    json_t *j = load_json(path, 0, &rc, err, errlen);
    if (!j)
        return rc;
    if (!json_is_object(j)) {
        snprintf(err, errlen, "%s: not a JSON object", path);
        json_decref(j);
        return NB_EFORMAT;
    }
    json_t *v;
    if ((v = json_object_get(j, "do_lower_case")) && json_is_boolean(v))
        t->lowercase = json_is_true(v);
    t->strip_accents = t->lowercase;
    if ((v = json_object_get(j, "strip_accents")) && json_is_boolean(v))
        t->strip_accents = json_is_true(v);
    if ((v = json_object_get(j, "tokenize_chinese_chars")) && json_is_boolean(v))
        t->chinese = json_is_true(v);
    if ((v = json_object_get(j, "unk_token")) && json_is_string(v)) {
        snprintf(unkbuf, 64, "%s", json_string_value(v));
        *unk = unkbuf;
    }
    json_decref(j);
    return 0;
}

static void wordpiece_defaults(nb_tokenizer_t *t)
{
    t->kind = NB_TOK_WORDPIECE;
    t->clean_text = t->chinese = t->lowercase = t->strip_accents = 1;
    memcpy(t->prefix, "##", 3);
    t->prefix_len = 2;
    t->max_chars = 100;
}

int nb_tok_load_vocab_txt(nb_tokenizer_t *t, const char *path, char *err, size_t errlen)
{
    wordpiece_defaults(t);
    const char *unk = "[UNK]";
    char unkbuf[64];
    int rc = read_bert_config(t, path, &unk, unkbuf, err, errlen);
    if (rc)
        return rc;
    char *buf;
    size_t len;
    if ((rc = read_all(path, &buf, &len, err, errlen)))
        return rc;
    size_t line = 0, bad;
    for (size_t i = 0; i < len && !rc;) {
        char *nl = memchr(buf + i, '\n', len - i);
        size_t e = nl ? (size_t)(nl - buf) : len, n = e - i;
        line++;
        if (n > 0 && buf[i + n - 1] == '\r')
            n--;
        char where[64];
        snprintf(where, sizeof where, "line %zu", line);
        if (n == 0) {
            snprintf(err, errlen, "%s: line %zu: empty line (every line must hold one token)", path, line);
            rc = NB_EFORMAT;
        } else if (nb_utf8_check((const unsigned char *)buf + i, n, &bad) != 0) {
            snprintf(err, errlen, "%s: line %zu: byte %zu (0x%02x) is not UTF-8", path, line, bad + 1,
                     (unsigned char)buf[i + bad]);
            rc = NB_EFORMAT;
        } else {
            for (size_t k = 0; k < n && !rc; k++) {
                unsigned char c = (unsigned char)buf[i + k];
                if (c <= 0x20 || c == 0x7F) {
                    snprintf(err, errlen, "%s: line %zu: byte %zu is %s inside a token", path, line, k + 1,
                             c == ' ' ? "a space" : "a control character");
                    rc = NB_EFORMAT;
                }
            }
            if (!rc)
                rc = vocab_put(t, path, where, buf + i, n, (uint32_t)(line - 1), err, errlen);
        }
        i = e + 1;
    }
    free(buf);
    if (rc)
        return rc;
    if (line == 0) {
        snprintf(err, errlen, "%s: empty vocabulary", path);
        return NB_EFORMAT;
    }
    t->unk_id = nb_vocab_find(&t->vocab, unk, strlen(unk));
    static const char *const bert_special[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
    for (size_t k = 0; k < NB_ARRAY_LEN(bert_special) && !rc; k++) {
        uint32_t id = nb_vocab_find(&t->vocab, bert_special[k], strlen(bert_special[k]));
        if (id != NB_TOK_NONE)
            rc = nb_tok_add_special(t, bert_special[k], strlen(bert_special[k]), id);
    }
    if (rc == 0 && strcmp(unk, "[UNK]") && t->unk_id != NB_TOK_NONE)
        rc = nb_tok_add_special(t, unk, strlen(unk), t->unk_id);
    return rc;
}

/* Fills the vocabulary from a JSON object {token: id}. */
static int vocab_from_json(nb_tokenizer_t *t, const char *path, const char *what, json_t *obj, char *err,
                           size_t errlen)
{
    if (!json_is_object(obj) || json_object_size(obj) == 0) {
        snprintf(err, errlen, "%s: %s is not a non-empty object of token: ID", path, what);
        return NB_EFORMAT;
    }
    const char *key;
    json_t *v;
    char b[200];
    json_object_foreach(obj, key, v) {
        size_t n = strlen(key);
        char where[300];
        snprintf(where, sizeof where, "%s[\"%s\"]", what, show(key, n, b));
        if (!json_is_integer(v) || json_integer_value(v) < 0) {
            snprintf(err, errlen, "%s: %s: the ID is not an integer >= 0", path, where);
            return NB_EFORMAT;
        }
        json_int_t id = json_integer_value(v);
        if (id >= NB_TOK_MAX_VOCAB) {
            snprintf(err, errlen, "%s: %s: ID %lld is above the limit of %u", path, where, (long long)id,
                     NB_TOK_MAX_VOCAB - 1);
            return NB_ERANGE;
        }
        int rc = vocab_put(t, path, where, key, n, (uint32_t)id, err, errlen);
        if (rc)
            return rc;
    }
    return 0;
}

int nb_tok_load_vocab_json(nb_tokenizer_t *t, const char *path, char *err, size_t errlen)
{
    int rc;
    json_t *j = load_json(path, JSON_REJECT_DUPLICATES, &rc, err, errlen);
    if (!j)
        return rc;
    rc = vocab_from_json(t, path, "entry", j, err, errlen);
    json_decref(j);
    return rc;
}

/* One merge "A B" of rank `rank`: both tokens and their join must be known. */
static int add_merge(nb_tokenizer_t *t, const char *path, const char *where, const char *a, size_t na,
                     const char *bb, size_t nb, uint32_t rank, char *err, size_t errlen)
{
    char s1[200], s2[200];
    uint32_t ia = nb_vocab_find(&t->vocab, a, na), ib = nb_vocab_find(&t->vocab, bb, nb);
    if (ia == NB_TOK_NONE || ib == NB_TOK_NONE) {
        snprintf(err, errlen, "%s: %s: token '%s' is not in the vocabulary", path, where,
                 ia == NB_TOK_NONE ? show(a, na, s1) : show(bb, nb, s1));
        return NB_EFORMAT;
    }
    char *m = malloc(na + nb + 1);
    if (!m)
        return NB_ENOMEM;
    memcpy(m, a, na);
    memcpy(m + na, bb, nb);
    uint32_t im = nb_vocab_find(&t->vocab, m, na + nb);
    if (im == NB_TOK_NONE) {
        snprintf(err, errlen, "%s: %s: the merged token '%s' is not in the vocabulary", path, where,
                 show(m, na + nb, s1));
        free(m);
        return NB_EFORMAT;
    }
    free(m);
    int rc = nb_merges_add(&t->merges, ia, ib, rank, im);
    if (rc == NB_EFORMAT)
        snprintf(err, errlen, "%s: %s: the pair '%s' '%s' is given twice", path, where, show(a, na, s1),
                 show(bb, nb, s2));
    else if (rc)
        snprintf(err, errlen, "%s: out of memory", path);
    return rc;
}

int nb_tok_load_merges_txt(nb_tokenizer_t *t, const char *path, char *err, size_t errlen)
{
    char *buf;
    size_t len, line = 0, bad;
    int rc = read_all(path, &buf, &len, err, errlen);
    if (rc)
        return rc;
    uint32_t rank = 0;
    for (size_t i = 0; i < len && !rc;) {
        char *nl = memchr(buf + i, '\n', len - i);
        size_t e = nl ? (size_t)(nl - buf) : len, n = e - i;
        line++;
        if (n > 0 && buf[i + n - 1] == '\r')
            n--;
        const char *s = buf + i;
        i = e + 1;
        if (line == 1 && n >= 8 && !memcmp(s, "#version", 8))
            continue;
        char where[64];
        snprintf(where, sizeof where, "line %zu", line);
        const char *sp = memchr(s, ' ', n);
        if (nb_utf8_check((const unsigned char *)s, n, &bad) != 0) {
            snprintf(err, errlen, "%s: line %zu: byte %zu is not UTF-8", path, line, bad + 1);
            rc = NB_EFORMAT;
        } else if (!sp || sp == s || sp == s + n - 1 || memchr(sp + 1, ' ', (size_t)(s + n - sp - 1))) {
            snprintf(err, errlen, "%s: line %zu: expected two tokens separated by one space", path, line);
            rc = NB_EFORMAT;
        } else {
            rc = add_merge(t, path, where, s, (size_t)(sp - s), sp + 1, (size_t)(s + n - sp - 1), rank++, err,
                           errlen);
        }
    }
    free(buf);
    return rc;
}

static int get_bool(json_t *o, const char *k, int def)
{
    json_t *v = json_object_get(o, k);
    return v && json_is_boolean(v) ? json_is_true(v) : def;
}

static int load_json_wordpiece(nb_tokenizer_t *t, const char *path, json_t *root, json_t *model, char *err,
                               size_t errlen)
{
    wordpiece_defaults(t);
    json_t *norm = json_object_get(root, "normalizer"), *pre = json_object_get(root, "pre_tokenizer");
    const char *nt = json_string_value(json_object_get(norm, "type"));
    const char *pt = json_string_value(json_object_get(pre, "type"));
    if (!nt || strcmp(nt, "BertNormalizer")) {
        snprintf(err, errlen, "%s: normalizer %s is not supported (only BertNormalizer)", path, nt ? nt : "null");
        return NB_EINVAL;
    }
    if (!pt || strcmp(pt, "BertPreTokenizer")) {
        snprintf(err, errlen, "%s: pre_tokenizer %s is not supported with WordPiece (only BertPreTokenizer)",
                 path, pt ? pt : "null");
        return NB_EINVAL;
    }
    t->clean_text = get_bool(norm, "clean_text", 1);
    t->chinese = get_bool(norm, "handle_chinese_chars", 1);
    t->lowercase = get_bool(norm, "lowercase", 1);
    t->strip_accents = get_bool(norm, "strip_accents", t->lowercase);
    json_t *v = json_object_get(model, "continuing_subword_prefix");
    if (v && json_is_string(v)) {
        if (json_string_length(v) >= sizeof t->prefix) {
            snprintf(err, errlen, "%s: model.continuing_subword_prefix is longer than %zu bytes", path,
                     sizeof t->prefix - 1);
            return NB_EINVAL;
        }
        t->prefix_len = json_string_length(v);
        memcpy(t->prefix, json_string_value(v), t->prefix_len + 1);
    }
    v = json_object_get(model, "max_input_chars_per_word");
    if (v && json_is_integer(v)) {
        if (json_integer_value(v) < 1 || json_integer_value(v) > TOK_MAX_WORD_CHARS) {
            snprintf(err, errlen, "%s: model.max_input_chars_per_word %lld is outside [1, %u]", path,
                     (long long)json_integer_value(v), TOK_MAX_WORD_CHARS);
            return NB_EINVAL;
        }
        t->max_chars = (size_t)json_integer_value(v);
    }
    int rc = vocab_from_json(t, path, "model.vocab", json_object_get(model, "vocab"), err, errlen);
    if (rc)
        return rc;
    const char *unk = json_string_value(json_object_get(model, "unk_token"));
    t->unk_id = nb_vocab_find(&t->vocab, unk ? unk : "[UNK]", strlen(unk ? unk : "[UNK]"));
    return 0;
}

static int load_json_bpe(nb_tokenizer_t *t, const char *path, json_t *root, json_t *model, char *err,
                         size_t errlen)
{
    t->kind = NB_TOK_BPE;
    json_t *norm = json_object_get(root, "normalizer"), *pre = json_object_get(root, "pre_tokenizer");
    const char *pt = json_string_value(json_object_get(pre, "type"));
    if (norm && !json_is_null(norm)) {
        snprintf(err, errlen, "%s: a normalizer with a BPE model is not supported (byte-level BPE has none)", path);
        return NB_EINVAL;
    }
    if (!pt || strcmp(pt, "ByteLevel") || !get_bool(pre, "use_regex", 1)) {
        snprintf(err, errlen, "%s: pre_tokenizer %s is not supported with BPE (only ByteLevel with use_regex)",
                 path, pt ? pt : "null");
        return NB_EINVAL;
    }
    t->add_prefix_space = get_bool(pre, "add_prefix_space", 0);
    static const char *const must_be_empty[] = {"continuing_subword_prefix", "end_of_word_suffix", "dropout"};
    for (size_t k = 0; k < NB_ARRAY_LEN(must_be_empty); k++) {
        json_t *v = json_object_get(model, must_be_empty[k]);
        if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0)) {
            snprintf(err, errlen, "%s: model.%s is set: not supported", path, must_be_empty[k]);
            return NB_EINVAL;
        }
    }
    if (get_bool(model, "byte_fallback", 0)) {
        snprintf(err, errlen, "%s: model.byte_fallback is set: not supported", path);
        return NB_EINVAL;
    }
    int rc = vocab_from_json(t, path, "model.vocab", json_object_get(model, "vocab"), err, errlen);
    if (rc)
        return rc;
    json_t *merges = json_object_get(model, "merges");
    if (!json_is_array(merges)) {
        snprintf(err, errlen, "%s: model.merges is not an array", path);
        return NB_EFORMAT;
    }
    size_t i;
    json_t *m;
    json_array_foreach(merges, i, m) {
        char where[64];
        snprintf(where, sizeof where, "model.merges[%zu]", i);
        const char *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        if (json_is_string(m)) { /* "A B" (tokenizers before 0.20) */
            a = json_string_value(m);
            const char *sp = strchr(a, ' ');
            if (sp && sp != a && sp[1] && !strchr(sp + 1, ' '))
                na = (size_t)(sp - a), b = sp + 1, nb = strlen(b);
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) { /* ["A", "B"] */
            a = json_string_value(json_array_get(m, 0)), na = json_string_length(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1)), nb = json_string_length(json_array_get(m, 1));
        }
        if (!b || !na || !nb) {
            snprintf(err, errlen, "%s: %s: expected \"A B\" or [\"A\", \"B\"]", path, where);
            return NB_EFORMAT;
        }
        if ((rc = add_merge(t, path, where, a, na, b, nb, (uint32_t)i, err, errlen)))
            return rc;
    }
    return 0;
}

int nb_tok_load_json(nb_tokenizer_t *t, const char *path, char *err, size_t errlen)
{
    int rc;
    json_t *root = load_json(path, JSON_REJECT_DUPLICATES, &rc, err, errlen);
    if (!root)
        return rc;
    json_t *model = json_object_get(root, "model");
    const char *type = json_string_value(json_object_get(model, "type"));
    if (type && !strcmp(type, "WordPiece")) {
        rc = load_json_wordpiece(t, path, root, model, err, errlen);
    } else if (type && !strcmp(type, "BPE")) {
        rc = load_json_bpe(t, path, root, model, err, errlen);
    } else {
        snprintf(err, errlen, "%s: model.type %s is not supported (WordPiece or BPE)", path, type ? type : "missing");
        rc = NB_EINVAL;
    }
    json_t *added = json_object_get(root, "added_tokens"), *a;
    size_t i;
    json_array_foreach(added, i, a) {
        if (rc)
            break;
        json_t *id = json_object_get(a, "id"), *content = json_object_get(a, "content");
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= NB_TOK_MAX_VOCAB ||
            !json_is_string(content) || json_string_length(content) == 0) {
            snprintf(err, errlen, "%s: added_tokens[%zu]: needs an integer id below %u and a non-empty content",
                     path, i, NB_TOK_MAX_VOCAB);
            rc = NB_EFORMAT;
            break;
        }
        uint32_t v = (uint32_t)json_integer_value(id);
        const char *s = json_string_value(content);
        size_t n = json_string_length(content);
        uint32_t have = nb_vocab_find(&t->vocab, s, n);
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%zu]", i);
        if (have == NB_TOK_NONE)
            rc = vocab_put(t, path, where, s, n, v, err, errlen);
        else if (have != v) {
            snprintf(err, errlen, "%s: %s: ID %u, but the vocabulary gives it ID %u", path, where, v, have);
            rc = NB_EFORMAT;
        }
        if (!rc)
            rc = nb_tok_add_special(t, s, n, v);
    }
    json_decref(root);
    return rc;
}

int nb_tok_finish(nb_tokenizer_t *t, const char *path, char *err, size_t errlen)
{
    if (t->kind == NB_TOK_WORDPIECE) {
        if (t->unk_id == NB_TOK_NONE) {
            snprintf(err, errlen, "%s: the vocabulary has no unknown-word token ([UNK])", path);
            return NB_EFORMAT;
        }
        snprintf(t->describe, sizeof t->describe,
                 "WordPiece, %u tokens (%s), lower case %s, strip accents %s, CJK split %s, clean text %s",
                 t->vocab.n, path, t->lowercase ? "on" : "off", t->strip_accents ? "on" : "off",
                 t->chinese ? "on" : "off", t->clean_text ? "on" : "off");
        return 0;
    }
    nb_bpe_byte_map(t);
    for (int b = 0; b < 256; b++) {
        unsigned char u[4];
        int n = nb_utf8_encode(t->byte_cp[b], u);
        t->byte_id[b] = nb_vocab_find(&t->vocab, (const char *)u, (size_t)n);
        if (t->byte_id[b] == NB_TOK_NONE) {
            snprintf(err, errlen, "%s: the vocabulary lacks the token of byte 0x%02x ('%.*s'): not byte-level BPE",
                     path, b, n, (const char *)u);
            return NB_EFORMAT;
        }
    }
    snprintf(t->describe, sizeof t->describe, "byte-level BPE, %u tokens, %u merges (%s)%s", t->vocab.n,
             t->merges.used, path, t->add_prefix_space ? ", prefix space" : "");
    return 0;
}
