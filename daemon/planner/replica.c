/*
 * replica.c - a stage's replica count and local reduction bandwidth for the
 * planner (see replica.h).
 */
#include "daemon/clock.h"
#include "daemon/planner/replica.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "daemon/config/config.h"
#include "daemon/planner/cost.h"
#include "kernels/common.h"

_Static_assert(NB_REPLICA_MAX == NB_CFG_MAX_DEVICES, "one replica per configurable device");

double nb_replica_reduce_bw(size_t bytes, int rounds)
{
    size_t n = bytes / sizeof(float);
    if (n < 1024 || rounds < 1)
        return 0;
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    double best = INFINITY;
    if (a && b) {
        for (size_t i = 0; i < n; i++)
            a[i] = 1.0f, b[i] = 1e-7f * (float)(i & 1023);
        for (int r = 0; r <= rounds; r++) { /* round 0 warms up (page faults) */
            double t0 = nb_mono_s();
            for (size_t i = 0; i < n; i++)
                a[i] += b[i];
            double dt = nb_mono_s() - t0;
            /* keep the sums alive */
            __asm__ volatile("" : : "r"(a) : "memory");
            if (r > 0 && dt < best)
                best = dt;
        }
    }
    free(a);
    free(b);
    return isfinite(best) && best > 0 ? (double)(n * sizeof(float)) / best : 0;
}

/* The machine's figure, measured once per process (a property of the
 * machine, not of a daemon instance). */
static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;
static double cpu_bw;

static void measure_cpu(void)
{
    cpu_bw = nb_replica_reduce_bw(NB_REPLICA_PROBE_BYTES, 3);
}

double nb_replica_local_bw(int n_devices, bool cuda)
{
    if (n_devices < 2)
        return 0;
    if (cuda)
        return NB_COST_REDUCE_BW_NCCL;
    pthread_once(&cpu_once, measure_cpu);
    return cpu_bw;
}

int nb_replica_check(unsigned replicas, double bytes_per_s, int max_replicas, char *err,
                     size_t errlen)
{
    if (replicas == 0)
        replicas = 1;
    if ((int)replicas > max_replicas || replicas > 1u << 20) {
        if (err && errlen)
            snprintf(err, errlen, "replicas %u out of range 1..%d", replicas, max_replicas);
        return NB_EINVAL;
    }
    /* 0: not measured; else an in-memory or NCCL reduction runs at MB/s at
     * the very least (a smaller figure would price every plan at infinity) */
    if (!isfinite(bytes_per_s) || bytes_per_s < 0 || (bytes_per_s > 0 && bytes_per_s < 1e6) ||
        bytes_per_s > 1e15) {
        if (err && errlen)
            snprintf(err, errlen, "reduce bandwidth %g bytes/s is not 0 (unknown) or a finite value in 1e6..1e15",
                     bytes_per_s);
        return NB_EINVAL;
    }
    return (int)replicas;
}
