/*
 * coord_rt.h - the coordinator daemon's runtime: holds the job, waits for
 * every stage daemon to connect, assigns the stages (Job), and drives the
 * steps: Plan -> (stages run the step on their own) -> Report from every
 * daemon -> Commit with the global gradient norm, and the next Plan. It never
 * relays tensors and is never consulted between micro-batches.
 *
 * Progress goes to the log (one line per log_every steps: step, loss,
 * tokens/s, bubble, MB on the wire, compression ratio), to the status socket
 * (job section, metrics) and to the trace ring (one track per stage, built
 * from the stages' reports).
 *
 * Thread: everything runs on the loop thread.
 */
#ifndef NB_COORD_RT_H
#define NB_COORD_RT_H

#include "daemon/service/service.h"

typedef struct nb_coord_rt nb_coord_rt_t;

/* Creates the runtime for svc (role coordinator) and registers it as the
 * service's runtime. Call before nb_service_start; free after
 * nb_service_run returned. Errors: NB_ENOMEM. */
int nb_coord_rt_attach(nb_service_t *svc, nb_coord_rt_t **out);
void nb_coord_rt_free(nb_coord_rt_t *rt);

#endif
