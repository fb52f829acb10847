/*
 * cpu_ops.h - CPU implementations of the transformer ops of nb_backend_i.
 * Internal to the CPU backend; callers use the wrappers in kernels/backend.h.
 * NB_CPU_OPS_INIT lists the designated initialisers that cpu_backend.c puts in
 * its table, so adding an op touches this header and its .c file only.
 */
#ifndef NB_CPU_OPS_H
#define NB_CPU_OPS_H

#include "kernels/backend.h"

#define NB_CPU_OPS_INIT /* filled as ops land */

#endif
