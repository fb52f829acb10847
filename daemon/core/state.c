/* state.c - the daemon's reportable state behind one mutex; see state.h. */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "daemon/core/state.h"
#include "kernels/common.h"

struct nb_state {
    pthread_mutex_t lock;
    nb_state_snapshot_t s;
    double started_mono;
    nb_metrics_t *metrics;
    nb_trace_t *trace;
    nb_mem_model_t model_mem;
    nb_mem_device_t device_mem;
};

static double now_s(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static const char *const state_names[] = { "starting", "waiting", "connecting", "running",
                                           "done",     "stopping", "failed" };

const char *nb_svc_state_name(nb_svc_state_t st)
{
    return (unsigned)st < NB_ARRAY_LEN(state_names) ? state_names[st] : "?";
}

nb_state_t *nb_state_new(const char *name, nb_cfg_role_t role, size_t trace_capacity)
{
    nb_state_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->metrics = nb_metrics_new();
    s->trace = nb_trace_new(trace_capacity);
    if (!s->metrics || !s->trace) {
        nb_metrics_free(s->metrics);
        nb_trace_free(s->trace);
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    snprintf(s->s.name, sizeof s->s.name, "%s", name);
    s->s.role = role;
    s->s.state = NB_SVC_STARTING;
    s->s.started_at = now_s(CLOCK_REALTIME);
    s->started_mono = now_s(CLOCK_MONOTONIC);
    s->s.pid = (int)getpid();
    s->s.job.loss = NAN;
    s->s.job.bubble_measured = s->s.job.bubble_predicted = -1;
    return s;
}

void nb_state_free(nb_state_t *s)
{
    if (!s)
        return;
    nb_metrics_free(s->metrics);
    nb_trace_free(s->trace);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

void nb_state_set(nb_state_t *s, nb_svc_state_t st, const char *fmt, ...)
{
    pthread_mutex_lock(&s->lock);
    s->s.state = st;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->s.detail, sizeof s->s.detail, fmt, ap);
    va_end(ap);
    pthread_mutex_unlock(&s->lock);
}

nb_svc_state_t nb_state_get(nb_state_t *s)
{
    pthread_mutex_lock(&s->lock);
    nb_svc_state_t st = s->s.state;
    pthread_mutex_unlock(&s->lock);
    return st;
}

void nb_state_set_listen(nb_state_t *s, const char *bound, const char *sock)
{
    pthread_mutex_lock(&s->lock);
    snprintf(s->s.listen, sizeof s->s.listen, "%s", bound ? bound : "");
    snprintf(s->s.status_socket, sizeof s->s.status_socket, "%s", sock ? sock : "");
    pthread_mutex_unlock(&s->lock);
}

int nb_state_peer_update(nb_state_t *s, const nb_peer_info_t *p)
{
    int rc = 0;
    pthread_mutex_lock(&s->lock);
    int i = 0;
    while (i < s->s.n_peers && strcmp(s->s.peers[i].name, p->name) != 0)
        i++;
    if (i == s->s.n_peers) {
        if (i >= NB_STATE_PEERS_MAX)
            rc = NB_ELIMIT;
        else
            s->s.n_peers++;
    }
    if (rc == 0)
        s->s.peers[i] = *p;
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int nb_state_peer_remove(nb_state_t *s, const char *name)
{
    int rc = NB_EINVAL;
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < s->s.n_peers; i++)
        if (strcmp(s->s.peers[i].name, name) == 0) {
            memmove(&s->s.peers[i], &s->s.peers[i + 1], (size_t)(s->s.n_peers - i - 1) * sizeof s->s.peers[0]);
            s->s.n_peers--;
            rc = 0;
            break;
        }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void nb_state_job_update(nb_state_t *s, const nb_job_info_t *j)
{
    pthread_mutex_lock(&s->lock);
    s->s.job = *j;
    pthread_mutex_unlock(&s->lock);
}

void nb_state_job_eval(nb_state_t *s, double loss, int64_t step)
{
    pthread_mutex_lock(&s->lock);
    s->s.job.eval_loss = loss;
    s->s.job.eval_step = step;
    pthread_mutex_unlock(&s->lock);
}

void nb_state_snapshot(nb_state_t *s, nb_state_snapshot_t *out)
{
    pthread_mutex_lock(&s->lock);
    *out = s->s;
    out->uptime_s = now_s(CLOCK_MONOTONIC) - s->started_mono;
    nb_mem_model_t mm = s->model_mem;
    nb_mem_device_t dm = s->device_mem;
    pthread_mutex_unlock(&s->lock);
    nb_mem_sample(&mm, &out->memory);
    out->memory.device = dm;
}

static int link_index(nb_state_t *s, const char *from, const char *to)
{
    for (int i = 0; i < s->s.n_links; i++)
        if (strcmp(s->s.links[i].from, from) == 0 && strcmp(s->s.links[i].to, to) == 0)
            return i;
    return -1;
}

int nb_state_link_update(nb_state_t *s, const nb_link_info_t *l)
{
    int rc = 0;
    pthread_mutex_lock(&s->lock);
    int i = link_index(s, l->from, l->to);
    if (i < 0) {
        if (s->s.n_links >= NB_STATE_LINKS_MAX)
            rc = NB_ELIMIT;
        else
            i = s->s.n_links++;
    }
    if (rc == 0)
        s->s.links[i] = *l;
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int nb_state_link_get(nb_state_t *s, const char *from, const char *to, nb_link_info_t *out)
{
    pthread_mutex_lock(&s->lock);
    int i = link_index(s, from, to);
    if (i >= 0)
        *out = s->s.links[i];
    pthread_mutex_unlock(&s->lock);
    return i >= 0 ? 0 : NB_EINVAL;
}

void nb_state_set_kernel_tls(nb_state_t *s, const char *line)
{
    pthread_mutex_lock(&s->lock);
    snprintf(s->s.kernel_tls, sizeof s->s.kernel_tls, "%s", line ? line : "");
    pthread_mutex_unlock(&s->lock);
}

void nb_state_set_model_memory(nb_state_t *s, const nb_mem_model_t *m)
{
    pthread_mutex_lock(&s->lock);
    s->model_mem = *m;
    pthread_mutex_unlock(&s->lock);
}

void nb_state_set_device_memory(nb_state_t *s, const nb_mem_device_t *d)
{
    pthread_mutex_lock(&s->lock);
    s->device_mem = *d;
    pthread_mutex_unlock(&s->lock);
}

uint64_t nb_state_model_total(nb_state_t *s)
{
    pthread_mutex_lock(&s->lock);
    const nb_mem_model_t *m = &s->model_mem;
    uint64_t t = m->weights + m->gradients + m->optimizer + m->activations;
    pthread_mutex_unlock(&s->lock);
    return t;
}

void nb_state_device_memory(nb_state_t *s, nb_mem_device_t *out)
{
    pthread_mutex_lock(&s->lock);
    *out = s->device_mem;
    pthread_mutex_unlock(&s->lock);
}

nb_metrics_t *nb_state_metrics(nb_state_t *s) { return s->metrics; }
nb_trace_t *nb_state_trace(nb_state_t *s) { return s->trace; }
