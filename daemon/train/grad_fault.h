/*
 * grad_fault.h - test-only fault injection: a NaN written into the gradient
 * of chosen steps, so that the non-finite gradient path (every stage skips
 * the step's update, the skip is counted, the job stops after
 * job.max_skipped_steps consecutive skips) can be tested end to end, in
 * nebula-train and in the pipeline alike. It is read from the environment
 * only; never set it outside a test.
 *
 *   NEBULA_TEST_NONFINITE_GRAD=FIRST[-LAST][@STAGE]
 *
 * poisons steps FIRST..LAST (0-based, inclusive; LAST defaults to FIRST) of
 * pipeline stage STAGE (default: every stage). The single-process trainer
 * has one part and ignores @STAGE.
 *
 * Thread: a parsed fault is read-only; poisoning uses the caller's backend.
 */
#ifndef NB_TRAIN_GRAD_FAULT_H
#define NB_TRAIN_GRAD_FAULT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "kernels/backend.h"

#define NB_GRAD_FAULT_ENV "NEBULA_TEST_NONFINITE_GRAD"

typedef struct {
    bool on;
    int64_t first, last;  /* steps, inclusive */
    int stage;            /* -1: every stage */
} nb_grad_fault_t;

/* Parses text (NULL or "" = no fault) into *f. Errors: NB_EINVAL with a
 * message naming the variable and the expected form. */
int nb_grad_fault_parse(const char *text, nb_grad_fault_t *f, char *err, size_t errlen);

/* nb_grad_fault_parse(getenv(NB_GRAD_FAULT_ENV), ...). */
int nb_grad_fault_from_env(nb_grad_fault_t *f, char *err, size_t errlen);

/* Whether step `step` of stage `stage` (-1: the trainer's one part) is to
 * be poisoned. */
bool nb_grad_fault_hits(const nb_grad_fault_t *f, int64_t step, int stage);

/* Writes a NaN into grads[0] (a device buffer of be). */
void nb_grad_fault_poison(nb_backend_t *be, float *grads);

#endif
