/*
 * electra_rt.h - the runtimes of the ELECTRA job across daemons
 * (docs/electra.md, "Across daemons"):
 *
 *   the discriminator's daemon (role coordinator with job.electra) is the
 *   job's coordinator: it admits the generator daemons named in
 *   job.electra.generators[].name over mutually authenticated TLS, sends
 *   each its ElectraJob (which generator, how many sequences per step, from
 *   which step), receives their batches, runs a discriminator step once it
 *   holds every generator's batch of that step, and grants credit (steps a
 *   generator may send) NB_ELECTRA_WINDOW steps ahead: back-pressure;
 *
 *   a generator daemon (role stage, electra_generator: true) dials the
 *   coordinator, builds its generator on its own token file, and sends one
 *   batch per step within its credit; the batch is all that crosses.
 *
 * Both use the pipeline transport (daemon/net) and service hooks; models run
 * on a libuv work thread, one step at a time, never on the loop thread.
 *
 * Thread: the loop thread, except the models (one work item in flight).
 */
#ifndef NB_ELECTRA_RT_H
#define NB_ELECTRA_RT_H

#include "daemon/service/service.h"

typedef struct nb_electra_disc_rt nb_electra_disc_rt_t;
typedef struct nb_electra_gen_rt nb_electra_gen_rt_t;

/* Create the runtime for svc and register it as the service's runtime.
 * Call before nb_service_start; free after nb_service_run returned.
 * Errors: NB_ENOMEM. */
int nb_electra_disc_rt_attach(nb_service_t *svc, nb_electra_disc_rt_t **out);
void nb_electra_disc_rt_free(nb_electra_disc_rt_t *rt);
int nb_electra_gen_rt_attach(nb_service_t *svc, nb_electra_gen_rt_t **out);
void nb_electra_gen_rt_free(nb_electra_gen_rt_t *rt);

#endif
