/* mailbox.c - bounded blocking FIFO; see mailbox.h. A ring of pointers under
 * one mutex with two condition variables. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include "daemon/pipeline/mailbox.h"
#include "kernels/common.h"

struct nb_mbox {
    pthread_mutex_t lock;
    pthread_cond_t not_empty, not_full;
    void **ring;
    size_t cap, head, len;
    bool closed;
    nb_mbox_free_cb free_cb;
};

nb_mbox_t *nb_mbox_new(size_t cap, nb_mbox_free_cb free_cb)
{
    if (cap == 0)
        return NULL;
    nb_mbox_t *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->ring = calloc(cap, sizeof *b->ring);
    if (!b->ring) {
        free(b);
        return NULL;
    }
    b->cap = cap;
    b->free_cb = free_cb;
    pthread_mutex_init(&b->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->not_empty, &ca);
    pthread_cond_init(&b->not_full, &ca);
    pthread_condattr_destroy(&ca);
    return b;
}

void nb_mbox_free(nb_mbox_t *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->len; i++) {
        void *m = b->ring[(b->head + i) % b->cap];
        if (b->free_cb)
            b->free_cb(m);
    }
    pthread_mutex_destroy(&b->lock);
    pthread_cond_destroy(&b->not_empty);
    pthread_cond_destroy(&b->not_full);
    free(b->ring);
    free(b);
}

static void put_locked(nb_mbox_t *b, void *msg)
{
    b->ring[(b->head + b->len) % b->cap] = msg;
    b->len++;
    pthread_cond_signal(&b->not_empty);
}

int nb_mbox_push(nb_mbox_t *b, void *msg)
{
    pthread_mutex_lock(&b->lock);
    while (!b->closed && b->len == b->cap)
        pthread_cond_wait(&b->not_full, &b->lock);
    if (b->closed) {
        pthread_mutex_unlock(&b->lock);
        return NB_ECLOSED;
    }
    put_locked(b, msg);
    pthread_mutex_unlock(&b->lock);
    return 0;
}

int nb_mbox_try_push(nb_mbox_t *b, void *msg)
{
    int rc = 0;
    pthread_mutex_lock(&b->lock);
    if (b->closed)
        rc = NB_ECLOSED;
    else if (b->len == b->cap)
        rc = NB_ELIMIT;
    else
        put_locked(b, msg);
    pthread_mutex_unlock(&b->lock);
    return rc;
}

static void *take_locked(nb_mbox_t *b)
{
    void *m = b->ring[b->head];
    b->head = (b->head + 1) % b->cap;
    b->len--;
    pthread_cond_signal(&b->not_full);
    return m;
}

int nb_mbox_pop(nb_mbox_t *b, void **out, int timeout_ms)
{
    struct timespec deadline;
    if (timeout_ms >= 0) {
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        deadline.tv_sec += timeout_ms / 1000;
        deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&b->lock);
    while (b->len == 0 && !b->closed) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&b->not_empty, &b->lock);
        } else if (pthread_cond_timedwait(&b->not_empty, &b->lock, &deadline) == ETIMEDOUT) {
            if (b->len == 0 && !b->closed) {
                pthread_mutex_unlock(&b->lock);
                return NB_ETIMEDOUT;
            }
        }
    }
    if (b->len == 0) {
        pthread_mutex_unlock(&b->lock);
        return NB_ECLOSED;
    }
    *out = take_locked(b);
    pthread_mutex_unlock(&b->lock);
    return 0;
}

int nb_mbox_try_pop(nb_mbox_t *b, void **out)
{
    int rc = NB_ELIMIT;
    pthread_mutex_lock(&b->lock);
    if (b->len > 0) {
        *out = take_locked(b);
        rc = 0;
    }
    pthread_mutex_unlock(&b->lock);
    return rc;
}

void nb_mbox_close(nb_mbox_t *b)
{
    pthread_mutex_lock(&b->lock);
    b->closed = true;
    pthread_cond_broadcast(&b->not_empty);
    pthread_cond_broadcast(&b->not_full);
    pthread_mutex_unlock(&b->lock);
}

void nb_mbox_reopen(nb_mbox_t *b)
{
    pthread_mutex_lock(&b->lock);
    while (b->len) {
        void *m = b->ring[b->head];
        b->head = (b->head + 1) % b->cap;
        b->len--;
        if (b->free_cb)
            b->free_cb(m);
    }
    b->closed = false;
    pthread_cond_broadcast(&b->not_full);
    pthread_mutex_unlock(&b->lock);
}

size_t nb_mbox_len(nb_mbox_t *b)
{
    pthread_mutex_lock(&b->lock);
    size_t n = b->len;
    pthread_mutex_unlock(&b->lock);
    return n;
}
