/*
 * codec_spec.c - the codec spec language: parser, canonical printer.
 *
 *   spec  := codec
 *   codec := NAME [ '(' [ arg { ',' arg } ] ')' ]
 *   arg   := codec | NUMBER | KEY '=' (NUMBER | WORD) | FLAG
 *
 * Blanks are allowed between tokens. A value codec (fp32, fp16, bf16, int8,
 * int4) may wrap one structure codec (topk, svd); a structure codec wraps
 * nothing. Every error names the spec and the 0-based position of the fault.
 */
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include "kernels/codec/codec.h"

typedef struct {
    const char *s;
    size_t pos;
    char *err;
    size_t errlen;
} parser_t;

static int fail(parser_t *p, size_t pos, const char *fmt, ...)
{
    if (p->err && p->errlen) {
        char what[160];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(what, sizeof what, fmt, ap);
        va_end(ap);
        snprintf(p->err, p->errlen, "codec spec '%.*s': %s at position %zu",
                 NB_CODEC_SPEC_MAX, p->s, what, pos);
    }
    return NB_EINVAL;
}

static void skip_ws(parser_t *p)
{
    while (p->s[p->pos] == ' ' || p->s[p->pos] == '\t')
        p->pos++;
}

/* A lowercase identifier; returns its length (0 when none). */
static size_t word(parser_t *p, char *buf, size_t cap)
{
    size_t n = 0;
    const char *s = p->s + p->pos;
    if (!islower((unsigned char)s[0]))
        return 0;
    while (islower((unsigned char)s[n]) || isdigit((unsigned char)s[n]) || s[n] == '_')
        n++;
    if (n >= cap)
        n = cap - 1; /* caller sees a truncated, therefore unknown, name */
    memcpy(buf, s, n);
    buf[n] = '\0';
    while (islower((unsigned char)s[n]) || isdigit((unsigned char)s[n]) || s[n] == '_')
        n++;
    p->pos += n;
    return n;
}

/* A decimal number: digits [. digits] [e [+-] digits]; no sign, no hex, no inf. */
static int number(parser_t *p, double *out)
{
    const char *s = p->s + p->pos;
    size_t n = 0;
    while (isdigit((unsigned char)s[n]))
        n++;
    if (s[n] == '.') {
        n++;
        while (isdigit((unsigned char)s[n]))
            n++;
    }
    if (n == 0 || (n == 1 && s[0] == '.'))
        return fail(p, p->pos, "expected a number");
    if (s[n] == 'e' || s[n] == 'E') {
        size_t m = n + 1;
        if (s[m] == '+' || s[m] == '-')
            m++;
        if (!isdigit((unsigned char)s[m]))
            return fail(p, p->pos + m, "malformed exponent");
        while (isdigit((unsigned char)s[m]))
            m++;
        n = m;
    }
    char buf[64];
    if (n >= sizeof buf)
        return fail(p, p->pos, "number too long");
    memcpy(buf, s, n);
    buf[n] = '\0';
    *out = strtod(buf, NULL);
    p->pos += n;
    return 0;
}

static bool is_value_codec(const char *name, nb_codec_value_t *v)
{
    static const char *const names[] = { "fp32", "fp16", "bf16", "int8", "int4" };
    for (size_t i = 0; i < NB_ARRAY_LEN(names); i++)
        if (!strcmp(name, names[i])) {
            *v = (nb_codec_value_t)i;
            return true;
        }
    return false;
}

static int uint_param(parser_t *p, size_t at, const char *key, double v, double lo, double hi, uint32_t *out)
{
    if (v != floor(v) || v < lo || v > hi)
        return fail(p, at, "%s must be an integer in [%g, %g]", key, lo, hi);
    *out = (uint32_t)v;
    return 0;
}

static int codec(parser_t *p, nb_codec_spec_t *o, int depth);

/* One argument of codec `name` (a value codec when outer). */
static int argument(parser_t *p, nb_codec_spec_t *o, const char *name, bool outer, int depth,
                    int *positional)
{
    skip_ws(p);
    size_t at = p->pos;
    if (isdigit((unsigned char)p->s[p->pos]) || p->s[p->pos] == '.') {
        double v;
        int rc = number(p, &v);
        if (rc)
            return rc;
        if (outer || *positional)
            return fail(p, at, "unexpected number for %s", name);
        (*positional)++;
        if (!(v > 0.0 && v <= 1.0))
            return fail(p, at, "%s parameter must be in (0, 1]", name);
        if (o->kind == NB_CODEC_S_TOPK)
            o->topk_frac = v;
        else
            o->svd_p = v;
        return 0;
    }
    char key[32];
    if (!word(p, key, sizeof key))
        return fail(p, at, "expected a parameter or codec");
    size_t after_key = p->pos;
    skip_ws(p);
    nb_codec_value_t v;
    bool named_value = is_value_codec(key, &v);
    if (p->s[p->pos] == '(' ||
        (outer && (named_value || !strcmp(key, "topk") || !strcmp(key, "svd")))) {
        /* a nested codec */
        if (!outer)
            return fail(p, at, "%s cannot wrap another codec", name);
        if (named_value)
            return fail(p, at, "%s cannot wrap value codec %s (only topk or svd)", name, key);
        if (o->kind != NB_CODEC_S_DENSE)
            return fail(p, at, "%s wraps at most one codec", name);
        p->pos = at;
        return codec(p, o, depth + 1);
    }
    if (p->s[p->pos] == '=') {
        p->pos++;
        skip_ws(p);
        size_t vat = p->pos;
        double v = 0;
        char wv[16] = "";
        int rc;
        if (!strcmp(key, "block") && word(p, wv, sizeof wv)) {
            if (strcmp(wv, "row"))
                return fail(p, vat, "block must be a number or 'row'");
        } else if ((rc = number(p, &v)))
            return rc;
        if (outer && !strcmp(key, "block") && (o->value == NB_CODEC_V_I8 || o->value == NB_CODEC_V_I4))
            return wv[0] ? (o->block = 0, 0) : uint_param(p, vat, key, v, 1, 1 << 24, &o->block);
        if (!outer && o->kind == NB_CODEC_S_SVD) {
            if (!strcmp(key, "rank"))
                return uint_param(p, vat, key, v, 1, 1 << 24, &o->svd_rank);
            if (!strcmp(key, "iters"))
                return uint_param(p, vat, key, v, 0, 8, &o->svd_iters);
            if (!strcmp(key, "oversample"))
                return uint_param(p, vat, key, v, 0, 64, &o->svd_oversample);
            if (!strcmp(key, "energy")) {
                if (!(v > 0.0 && v <= 1.0))
                    return fail(p, vat, "energy must be in (0, 1]");
                o->svd_energy = v;
                return 0;
            }
        }
        return fail(p, at, "unknown parameter '%s' for %s", key, name);
    }
    p->pos = after_key;
    if (!strcmp(key, "ef")) {
        o->ef = true;
        return 0;
    }
    if (!strcmp(key, "delta")) {
        o->delta = true;
        return 0;
    }
    if (!strcmp(key, "sr") && outer && (o->value == NB_CODEC_V_I8 || o->value == NB_CODEC_V_I4)) {
        o->sr = true;
        return 0;
    }
    return fail(p, at, "unknown parameter '%s' for %s", key, name);
}

static int codec(parser_t *p, nb_codec_spec_t *o, int depth)
{
    skip_ws(p);
    size_t at = p->pos;
    char name[32];
    if (!word(p, name, sizeof name))
        return fail(p, at, "expected a codec name");
    bool outer;
    if (depth == 0 && is_value_codec(name, &o->value)) {
        outer = true;
    } else if (!strcmp(name, "topk")) {
        o->kind = NB_CODEC_S_TOPK;
        outer = false;
    } else if (!strcmp(name, "svd")) {
        o->kind = NB_CODEC_S_SVD;
        outer = false;
    } else {
        return fail(p, at, "unknown codec '%s' (known: fp32 fp16 bf16 int8 int4 topk svd)", name);
    }
    skip_ws(p);
    int positional = 0;
    if (p->s[p->pos] == '(') {
        p->pos++;
        skip_ws(p);
        if (p->s[p->pos] != ')') {
            for (;;) {
                int rc = argument(p, o, name, outer, depth, &positional);
                if (rc)
                    return rc;
                skip_ws(p);
                if (p->s[p->pos] == ',') {
                    p->pos++;
                    continue;
                }
                if (p->s[p->pos] == ')')
                    break;
                return fail(p, p->pos, p->s[p->pos] ? "expected ',' or ')'" : "missing ')'");
            }
        }
        p->pos++;
    }
    if (o->kind == NB_CODEC_S_TOPK && !outer && o->topk_frac == 0.0)
        return fail(p, at, "topk needs a fraction, e.g. topk(0.01)");
    if (o->kind == NB_CODEC_S_SVD && !outer) {
        if (o->svd_p == 0.0 && o->svd_rank == 0)
            return fail(p, at, "svd needs a parameter, e.g. svd(0.6) or svd(rank=16)");
        if (o->svd_p != 0.0 && o->svd_rank != 0)
            return fail(p, at, "svd takes either P or rank=, not both");
    }
    return 0;
}

int nb_codec_spec_parse(const char *text, nb_codec_spec_t *out, char *err, size_t errlen)
{
    parser_t p = { .s = text ? text : "", .pos = 0, .err = err, .errlen = errlen };
    nb_codec_spec_t o = { .value = NB_CODEC_V_F32, .block = 64, .kind = NB_CODEC_S_DENSE,
                          .svd_iters = 2, .svd_oversample = 8 };
    if (strnlen(p.s, NB_CODEC_SPEC_MAX) >= NB_CODEC_SPEC_MAX)
        return fail(&p, NB_CODEC_SPEC_MAX - 1, "longer than %d characters", NB_CODEC_SPEC_MAX - 1);
    int rc = codec(&p, &o, 0);
    if (rc)
        return rc;
    skip_ws(&p);
    if (p.s[p.pos])
        return fail(&p, p.pos, "unexpected '%c' after the codec", p.s[p.pos]);
    if (o.ef && o.delta)
        return fail(&p, 0, "ef and delta cannot be combined");
    *out = o;
    return 0;
}

static const char *value_name(nb_codec_value_t v)
{
    static const char *const names[] = { "fp32", "fp16", "bf16", "int8", "int4" };
    return (unsigned)v < NB_ARRAY_LEN(names) ? names[v] : "?";
}

int nb_codec_spec_format(const nb_codec_spec_t *s, char *buf, size_t len)
{
    char inner[96] = "", args[128] = "";
    size_t a = 0;
#define ADD(...) a += (size_t)snprintf(args + a, a < sizeof args ? sizeof args - a : 0, __VA_ARGS__)
    if (s->kind == NB_CODEC_S_TOPK) {
        snprintf(inner, sizeof inner, "topk(%.9g)", s->topk_frac);
    } else if (s->kind == NB_CODEC_S_SVD) {
        size_t i = 0;
        if (s->svd_rank)
            i += (size_t)snprintf(inner + i, sizeof inner - i, "svd(rank=%u", s->svd_rank);
        else
            i += (size_t)snprintf(inner + i, sizeof inner - i, "svd(%.9g", s->svd_p);
        if (s->svd_energy != 0.0)
            i += (size_t)snprintf(inner + i, sizeof inner - i, ",energy=%.9g", s->svd_energy);
        if (s->svd_iters != 2)
            i += (size_t)snprintf(inner + i, sizeof inner - i, ",iters=%u", s->svd_iters);
        if (s->svd_oversample != 8)
            i += (size_t)snprintf(inner + i, sizeof inner - i, ",oversample=%u", s->svd_oversample);
        snprintf(inner + i, sizeof inner - i, ")");
    }
    bool quant = s->value == NB_CODEC_V_I8 || s->value == NB_CODEC_V_I4;
    if (inner[0])
        ADD("%s", inner);
    if (quant && s->block != 64) {
        if (s->block == 0)
            ADD("%sblock=row", a ? "," : "");
        else
            ADD("%sblock=%u", a ? "," : "", s->block);
    }
    if (quant && s->sr)
        ADD("%ssr", a ? "," : "");
    if (s->ef)
        ADD("%sef", a ? "," : "");
    if (s->delta)
        ADD("%sdelta", a ? "," : "");
#undef ADD
    int n;
    if (s->value == NB_CODEC_V_F32 && inner[0] && !s->ef && !s->delta)
        n = snprintf(buf, len, "%s", inner);
    else if (a)
        n = snprintf(buf, len, "%s(%s)", value_name(s->value), args);
    else
        n = snprintf(buf, len, "%s", value_name(s->value));
    if (n < 0 || (size_t)n >= len || a >= sizeof args)
        return NB_ERANGE;
    return n;
}

bool nb_codec_spec_lossless(const nb_codec_spec_t *s)
{
    return s->value == NB_CODEC_V_F32 && s->kind == NB_CODEC_S_DENSE;
}
