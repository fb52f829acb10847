/*
 * coord_links.h - the coordinator's LINKS table: every stage-to-stage data
 * link with its round trip, measured rate and bytes, built from what the
 * stage daemons report (JobStatus LINKS_READY with the probes, then the
 * passive estimates and byte counts in every Report). The coordinator
 * carries no tensors, so its own connection counters say nothing about the
 * data links; this table is what `nebulactl status` shows for them.
 *
 * Thread: the coordinator's loop thread (the rows live in the state, which
 * has its own lock).
 */
#ifndef NB_COORD_LINKS_H
#define NB_COORD_LINKS_H

#include <stdbool.h>
#include <stddef.h>
#include "daemon/config/config.h"
#include "daemon/core/state.h"
#include "proto/nebula.pb-c.h"

/* Folds the link measurements daemon `from` sent (probes: from LINKS_READY,
 * whose tx_bytes_per_s is the bulk probe; else from a Report) into the rows
 * "from -> peer" (round trip, probe rate, bytes sent) and "peer -> from"
 * (passive rate from tensor frames; bytes until peer reports its own).
 * names holds the job's n daemon names. Entries for an unknown peer or for
 * from itself are skipped, and a figure that is not finite or not positive
 * counts as unknown: nothing a stage sends can break the table. */
void nb_coord_links_update(nb_state_t *st, const char (*names)[NB_CFG_NAME_MAX], int n, int from,
                           Nebula__LinkMeasurement *const *links, size_t n_links, bool probes);

#endif
