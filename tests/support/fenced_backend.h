/*
 * fenced_backend.h - a test backend whose device memory the host cannot
 * touch: the CPU backend's ops behind pointers that fault when dereferenced.
 *
 * The model code (kernels/model_*.c, kernels/optim.c) must treat tensor,
 * parameter, gradient and activation pointers as device pointers: read
 * them with nb_be_to_host, write them with nb_be_from_host, change them
 * with backend ops. On the CPU backend a host dereference works by
 * accident, and so it does on the emulated CUDA device (host memory too);
 * on a GPU it crashes or reads garbage. This backend makes it fail on any
 * machine: nb_be_alloc hands out addresses inside a PROT_NONE reservation,
 * and every op and copy translates them to the real memory (a mapping of
 * the same size elsewhere) before it calls the CPU backend. A host read or
 * write through a pointer it handed out is a SIGSEGV, which the handler
 * nb_fenced_trap() installs reports as "host access to device memory"
 * before it passes the signal on to the handler it replaced (cmocka's
 * marks the test failed); without one the process exits with status 1.
 *
 * Same ops, same inputs, same 64-byte alignment: results are the CPU
 * backend's bit for bit. Memory is a bump allocator over the reservation
 * (freed blocks are not reused; tests are small). Codecs are not
 * offered (codec NULL).
 *
 * Test support only; one thread.
 */
#ifndef NB_TEST_FENCED_BACKEND_H
#define NB_TEST_FENCED_BACKEND_H

#include <stddef.h>
#include "kernels/backend.h"

/* A fenced backend with room for `bytes` of device memory (rounded up to
 * pages; address space only until used), or NULL (mmap failed). Free with
 * nb_be_free. */
nb_backend_t *nb_fenced_backend_new(size_t bytes);
/* Installs the SIGSEGV handler that names a fault inside a fenced
 * reservation as a host access to device memory, then calls the handler
 * installed before (cmocka installs its own for each test: call this
 * inside the test), or exits with status 1 when there was none. */
void nb_fenced_trap(void);
/* The host address behind device pointer p of be (for the test's own
 * checks of the translation); NULL for NULL. */
void *nb_fenced_real(nb_backend_t *be, const void *p);

#endif
