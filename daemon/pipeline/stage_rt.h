/*
 * stage_rt.h - the stage daemon's runtime: joins the coordinator, receives
 * its job, opens the data-plane TLS links to its pipeline neighbours and runs
 * the stage host (stage_host.h) step by step on a compute thread.
 *
 * Threads: the libuv loop thread owns every socket (transport, daemon/net);
 * the compute thread owns the backend and the host. They meet in bounded
 * mailboxes (daemon/pipeline/mailbox.h) plus one uv_async_t:
 *   loop -> compute   control (Job, Plan, Commit) and one inbox per hosted
 *                     stage and tensor kind;
 *   compute -> loop   an outbox of tensors and reports; a full outbox blocks
 *                     the compute thread, which is how a slow link slows the
 *                     producer. The loop never blocks: an inbox that holds
 *                     what the plan allows in flight pauses reading from the
 *                     peer that filled it until the compute thread takes.
 * Protocol and ordering: docs/pipeline.md.
 */
#ifndef NB_STAGE_RT_H
#define NB_STAGE_RT_H

#include "daemon/service/service.h"

typedef struct nb_stage_rt nb_stage_rt_t;

/* Creates the runtime for svc (role stage) and registers it as the service's
 * runtime. Call before nb_service_start; free after nb_service_run returned.
 * Errors: NB_ENOMEM. */
int nb_stage_rt_attach(nb_service_t *svc, nb_stage_rt_t **out);
void nb_stage_rt_free(nb_stage_rt_t *rt);

#endif
