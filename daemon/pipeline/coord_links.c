/* coord_links.c - the coordinator's LINKS table from the stages' reports; see coord_links.h. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "daemon/pipeline/coord_links.h"

static bool known(double v) { return isfinite(v) && v > 0; }

/* The row from -> to, or a new one with every figure unknown. */
static void row_get(nb_state_t *st, const char *from, const char *to, nb_link_info_t *l)
{
    if (nb_state_link_get(st, from, to, l) == 0)
        return;
    memset(l, 0, sizeof *l);
    snprintf(l->from, sizeof l->from, "%s", from);
    snprintf(l->to, sizeof l->to, "%s", to);
    l->rtt_ms = l->probe_mbps = l->passive_mbps = -1;
}

void nb_coord_links_update(nb_state_t *st, const char (*names)[NB_CFG_NAME_MAX], int n, int from,
                           Nebula__LinkMeasurement *const *links, size_t n_links, bool probes)
{
    if (from < 0 || from >= n)
        return;
    for (size_t i = 0; i < n_links; i++) {
        const Nebula__LinkMeasurement *m = links[i];
        if (!m || m->peer >= (uint32_t)n || (int)m->peer == from)
            continue;
        const char *a = names[from], *b = names[m->peer];
        nb_link_info_t out, in;
        row_get(st, a, b, &out);
        if (known(m->rtt_ms))
            out.rtt_ms = m->rtt_ms;
        if (probes && known(m->tx_bytes_per_s))
            out.probe_mbps = m->tx_bytes_per_s * 8e-6;
        if (m->tx_bytes > 0)
            out.bytes = m->tx_bytes; /* a's own count: authoritative */
        nb_state_link_update(st, &out);

        row_get(st, b, a, &in);
        if (known(m->rx_bytes_per_s))
            in.passive_mbps = m->rx_bytes_per_s * 8e-6;
        if (in.rtt_ms < 0 && known(m->rtt_ms))
            in.rtt_ms = m->rtt_ms; /* the same round trip, until b reports its own */
        if (in.bytes < m->rx_bytes)
            in.bytes = m->rx_bytes;
        nb_state_link_update(st, &in);
    }
}
