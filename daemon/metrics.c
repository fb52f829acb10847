/* metrics.c - counters and gauges with Prometheus text output; see metrics.h. */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/metrics.h"
#include "kernels/common.h"

#define METRICS_MAX 256
#define METRIC_NAME_MAX 96
#define METRIC_LABELS_MAX 224
#define METRIC_HELP_MAX 200

typedef struct {
    char name[METRIC_NAME_MAX];
    char labels[METRIC_LABELS_MAX];
    char help[METRIC_HELP_MAX];
    nb_metric_kind_t kind;
    double value;
} metric_t;

struct nb_metrics {
    pthread_mutex_t lock;
    int n;
    metric_t items[METRICS_MAX];
};

nb_metrics_t *nb_metrics_new(void)
{
    nb_metrics_t *m = calloc(1, sizeof *m);
    if (m)
        pthread_mutex_init(&m->lock, NULL);
    return m;
}

void nb_metrics_free(nb_metrics_t *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->lock);
    free(m);
}

static int valid_name(const char *s)
{
    if (strncmp(s, "nebula_", 7) != 0 || !s[7] || strlen(s) >= METRIC_NAME_MAX)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
            return 0;
    return 1;
}

/* k="v"(,k="v")* with k = [a-z_][a-z0-9_]* and v without '"', '\\' or newline. */
static int valid_labels(const char *s)
{
    if (strlen(s) >= METRIC_LABELS_MAX)
        return 0;
    while (*s) {
        const char *k = s;
        while ((*s >= 'a' && *s <= 'z') || *s == '_' || (s > k && *s >= '0' && *s <= '9'))
            s++;
        if (s == k || s[0] != '=' || s[1] != '"')
            return 0;
        s += 2;
        while (*s && *s != '"' && *s != '\\' && *s != '\n')
            s++;
        if (*s != '"')
            return 0;
        s++;
        if (*s == ',')
            s++;
        else if (*s)
            return 0;
    }
    return 1;
}

int nb_metrics_add(nb_metrics_t *m, const char *name, const char *labels, nb_metric_kind_t kind,
                   const char *help)
{
    if (!labels)
        labels = "";
    if (!help)
        help = "";
    if (!m || !name || !valid_name(name) || !valid_labels(labels) ||
        (kind != NB_METRIC_COUNTER && kind != NB_METRIC_GAUGE) || strchr(help, '\n'))
        return NB_EINVAL;
    int rc;
    pthread_mutex_lock(&m->lock);
    for (int i = 0; i < m->n; i++) {
        metric_t *it = &m->items[i];
        if (strcmp(it->name, name) != 0)
            continue;
        if (it->kind != kind) {
            rc = NB_EINVAL;
            goto out;
        }
        if (strcmp(it->labels, labels) == 0) {
            rc = i;
            goto out;
        }
    }
    if (m->n >= METRICS_MAX) {
        rc = NB_ELIMIT;
        goto out;
    }
    metric_t *it = &m->items[m->n];
    snprintf(it->name, sizeof it->name, "%s", name);
    snprintf(it->labels, sizeof it->labels, "%s", labels);
    snprintf(it->help, sizeof it->help, "%s", help);
    it->kind = kind;
    it->value = 0;
    rc = m->n++;
out:
    pthread_mutex_unlock(&m->lock);
    return rc;
}

int nb_metrics_set(nb_metrics_t *m, int id, double v)
{
    if (!m || isnan(v))
        return NB_EINVAL;
    int rc = 0;
    pthread_mutex_lock(&m->lock);
    if (id < 0 || id >= m->n || (m->items[id].kind == NB_METRIC_COUNTER && v < m->items[id].value))
        rc = NB_EINVAL;
    else
        m->items[id].value = v;
    pthread_mutex_unlock(&m->lock);
    return rc;
}

int nb_metrics_inc(nb_metrics_t *m, int id, double delta)
{
    if (!m || isnan(delta))
        return NB_EINVAL;
    int rc = 0;
    pthread_mutex_lock(&m->lock);
    if (id < 0 || id >= m->n || (m->items[id].kind == NB_METRIC_COUNTER && delta < 0))
        rc = NB_EINVAL;
    else
        m->items[id].value += delta;
    pthread_mutex_unlock(&m->lock);
    return rc;
}

double nb_metrics_get(nb_metrics_t *m, int id)
{
    double v = NAN;
    if (!m)
        return v;
    pthread_mutex_lock(&m->lock);
    if (id >= 0 && id < m->n)
        v = m->items[id].value;
    pthread_mutex_unlock(&m->lock);
    return v;
}

typedef struct {
    char *buf;
    size_t len, cap;
    int oom;
} sbuf_t;

__attribute__((format(printf, 2, 3)))
static void sb_printf(sbuf_t *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->buf + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n;
        char *nb = realloc(b->buf, cap);
        if (!nb) {
            b->oom = 1;
            return;
        }
        b->buf = nb;
        b->cap = cap;
    }
}

static void fmt_value(char *out, size_t n, double v)
{
    if (isinf(v))
        snprintf(out, n, v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 1e15)
        snprintf(out, n, "%.0f", v);
    else
        snprintf(out, n, "%.17g", v);
}

char *nb_metrics_render(nb_metrics_t *m, size_t *len)
{
    sbuf_t b = { .buf = malloc(4096), .cap = 4096 };
    if (!b.buf || !m) {
        free(b.buf);
        return NULL;
    }
    b.buf[0] = 0;
    pthread_mutex_lock(&m->lock);
    char done[METRICS_MAX] = { 0 };
    for (int i = 0; i < m->n; i++) {
        if (done[i])
            continue;
        const metric_t *h = &m->items[i];
        sb_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", h->name, h->help, h->name,
                  h->kind == NB_METRIC_COUNTER ? "counter" : "gauge");
        for (int j = i; j < m->n; j++) {
            const metric_t *it = &m->items[j];
            if (strcmp(it->name, h->name) != 0)
                continue;
            done[j] = 1;
            char v[40];
            fmt_value(v, sizeof v, it->value);
            if (it->labels[0])
                sb_printf(&b, "%s{%s} %s\n", it->name, it->labels, v);
            else
                sb_printf(&b, "%s %s\n", it->name, v);
        }
    }
    pthread_mutex_unlock(&m->lock);
    if (b.oom) {
        free(b.buf);
        return NULL;
    }
    if (len)
        *len = b.len;
    return b.buf;
}
