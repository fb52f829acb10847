/*
 * status_cmds.h - the status socket's commands, built from the daemon's
 * state (daemon/core/state.h):
 *   status  -> {"name","role","version","pid","uptime_s","state","detail",
 *               "listen","status_socket","peers":[...],"job":{...}|null,
 *               "links":[...] (stage-to-stage links; coordinator),
 *               "memory":{...} (docs/operations.md, "Memory")}
 *   metrics -> {"format":"prometheus-text-0.0.4","text":"..."}
 *   trace   -> {"trace":{Chrome trace-event JSON}}   (request may give "steps")
 *   stop    -> {"stopping":true}, then the stop callback (privileged)
 * Later commands (e.g. "plan") register themselves with
 * nb_status_server_add next to these.
 *
 * Thread: loop thread.
 */
#ifndef NB_STATUS_CMDS_H
#define NB_STATUS_CMDS_H

#include <jansson.h>
#include "daemon/core/state.h"
#include "daemon/status/status_server.h"

/* The nebula_memory_* gauges (status_cmds.c, mem_series). */
#define NB_STATUS_MEM_SERIES 12

typedef struct {
    nb_state_t *state;           /* not owned */
    int64_t trace_steps;         /* default for "trace" without "steps"; 0 = all */
    /* Requests an orderly stop; called after the reply is queued. */
    void (*stop)(void *ud, const char *why);
    void *stop_ud;
    /* filled by nb_status_cmds_register */
    int m_uptime, m_requests, m_info;
    int m_mem[NB_STATUS_MEM_SERIES]; /* nebula_memory_* gauges, in the order of mem_series */
} nb_status_ctx_t;

/* Registers status, metrics, trace and stop on srv, and the daemon's own
 * metrics (nebula_info, nebula_uptime_seconds,
 * nebula_status_requests_total, nebula_memory_*) in the state's registry. ctx must outlive
 * srv. Returns 0 or a negative NB_E* code. */
int nb_status_cmds_register(nb_status_server_t *srv, nb_status_ctx_t *ctx);

/* The body of a status reply for a snapshot (new reference; NULL on OOM). */
json_t *nb_status_to_json(const nb_state_snapshot_t *snap);

#endif
