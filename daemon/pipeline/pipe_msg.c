/* pipe_msg.c - allocation and naming of pipeline messages; see pipe_msg.h. */
#include <stdlib.h>
#include <string.h>
#include "daemon/pipeline/pipe_msg.h"

nb_pmsg_t *nb_pmsg_new(void)
{
    return calloc(1, sizeof(nb_pmsg_t));
}

void nb_pmsg_free(nb_pmsg_t *m)
{
    if (!m)
        return;
    free(m->payload);
    free(m);
}

size_t nb_pmsg_wire_bytes(const nb_pmsg_t *m)
{
    return strlen(m->spec) + m->meta_len + m->payload_len;
}

const char *nb_pmsg_kind_name(nb_pmsg_kind_t k)
{
    switch (k) {
    case NB_PMSG_ACT: return "activation";
    case NB_PMSG_GRAD: return "gradient";
    case NB_PMSG_LABELS: return "labels";
    default: return "?";
    }
}
