/*
 * mailbox.h - a bounded, blocking FIFO of messages between the network loop
 * thread and a stage's compute thread.
 *
 * The loop thread pushes received tensor frames for the compute thread; the
 * compute thread pushes encoded outputs for the loop thread to send. Bounded
 * both ways: a producer that finds the box full either blocks (compute thread,
 * which is how a slow link slows the producer) or is told to stop reading
 * (loop thread, which must never block: nb_mbox_try_push).
 *
 * Thread: every function is safe from any thread. Ownership: a pushed message
 * belongs to the box until popped; nb_mbox_free() frees what is left through
 * the free callback given at creation.
 */
#ifndef NB_MAILBOX_H
#define NB_MAILBOX_H

#include <stdbool.h>
#include <stddef.h>

typedef struct nb_mbox nb_mbox_t;
typedef void (*nb_mbox_free_cb)(void *msg);

/* A box holding at most cap messages; NULL on allocation failure. */
nb_mbox_t *nb_mbox_new(size_t cap, nb_mbox_free_cb free_cb);
/* Frees the box and, through free_cb, every message still in it. No thread
 * may be blocked on it. */
void nb_mbox_free(nb_mbox_t *b);

/* Appends msg, blocking while the box is full. Returns 0, or NB_ECLOSED if the
 * box is (or becomes) closed, in which case msg is not taken. */
int nb_mbox_push(nb_mbox_t *b, void *msg);
/* Appends msg if there is room: 0, NB_ELIMIT when full, NB_ECLOSED when closed. */
int nb_mbox_try_push(nb_mbox_t *b, void *msg);
/* Removes the oldest message, waiting at most timeout_ms (< 0: forever).
 * Returns 0 and sets *out; NB_ETIMEDOUT; or NB_ECLOSED once closed and empty. */
int nb_mbox_pop(nb_mbox_t *b, void **out, int timeout_ms);
/* Removes the oldest message without waiting: 0, or NB_ELIMIT when empty. */
int nb_mbox_try_pop(nb_mbox_t *b, void **out);
/* Wakes every waiter; later pushes fail; pops drain what is left. */
void nb_mbox_close(nb_mbox_t *b);
/* Frees every message left (free callback) and opens the box again: what a
 * recovered job does with the inboxes of an ended attempt. No thread may be
 * blocked on the box. */
void nb_mbox_reopen(nb_mbox_t *b);
size_t nb_mbox_len(nb_mbox_t *b);

#endif
