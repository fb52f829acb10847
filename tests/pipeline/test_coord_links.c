/*
 * test_coord_links.c - the coordinator's LINKS table from the stages'
 * measurements: probe and passive figures land on the right rows, byte
 * counts follow the sender's count, and what a stage must not send (an
 * unknown peer, itself, NaN, negative figures) leaves the table as it was.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/pipeline/coord_links.h"

static const char names[3][NB_CFG_NAME_MAX] = { "a", "b", "c" };

static void lm(Nebula__LinkMeasurement *m, uint32_t peer, double rtt, double tx_bps, double rx_bps,
               uint64_t tx, uint64_t rx)
{
    nebula__link_measurement__init(m);
    m->peer = peer;
    m->rtt_ms = rtt;
    m->tx_bytes_per_s = tx_bps;
    m->rx_bytes_per_s = rx_bps;
    m->tx_bytes = tx;
    m->rx_bytes = rx;
}

static void test_rows(void **st)
{
    (void)st;
    nb_state_t *s = nb_state_new("coord", NB_ROLE_COORDINATOR, 16);
    Nebula__LinkMeasurement m[4];
    Nebula__LinkMeasurement *p[4] = { &m[0], &m[1], &m[2], &m[3] };
    /* a's LINKS_READY: probed a -> b at 12.5 MB/s (100 Mbit/s), rtt 2 ms */
    lm(&m[0], 1, 2.0, 12.5e6, 0, 0, 0);
    nb_coord_links_update(s, names, 3, 0, p, 1, true);
    nb_link_info_t l;
    assert_int_equal(nb_state_link_get(s, "a", "b", &l), 0);
    assert_true(fabs(l.probe_mbps - 100.0) < 1e-9 && l.rtt_ms == 2.0 && l.passive_mbps < 0 && l.bytes == 0);
    /* b's report: it received 1000 bytes from a at 5 MB/s; sent 400 to a */
    lm(&m[0], 0, 3.0, 99e6 /* ignored: not a probe report */, 5e6, 400, 1000);
    nb_coord_links_update(s, names, 3, 1, p, 1, false);
    assert_int_equal(nb_state_link_get(s, "a", "b", &l), 0);
    assert_true(fabs(l.passive_mbps - 40.0) < 1e-9 && fabs(l.probe_mbps - 100.0) < 1e-9 && l.bytes == 1000);
    assert_int_equal(nb_state_link_get(s, "b", "a", &l), 0);
    assert_true(l.bytes == 400 && l.rtt_ms == 3.0 && l.probe_mbps < 0);
    /* a's report: its own count of a -> b wins */
    lm(&m[0], 1, 2.5, 0, 0, 1200, 400);
    nb_coord_links_update(s, names, 3, 0, p, 1, false);
    assert_int_equal(nb_state_link_get(s, "a", "b", &l), 0);
    assert_true(l.bytes == 1200 && l.rtt_ms == 2.5);
    /* hostile entries: unknown peer, itself, NaN and negative figures, bad sender */
    lm(&m[0], 7, 1, 1, 1, 1, 1);
    lm(&m[1], 0, 1, 1, 1, 1, 1);
    lm(&m[2], 1, NAN, -5, INFINITY, 0, 0);
    p[3] = NULL;
    nb_coord_links_update(s, names, 3, 0, p, 4, true);
    nb_coord_links_update(s, names, 3, 9, p, 4, true);
    nb_coord_links_update(s, names, 3, -1, p, 4, true);
    assert_int_equal(nb_state_link_get(s, "a", "b", &l), 0);
    assert_true(l.bytes == 1200 && l.rtt_ms == 2.5 && fabs(l.probe_mbps - 100.0) < 1e-9 &&
                fabs(l.passive_mbps - 40.0) < 1e-9);
    nb_state_snapshot_t *snap = malloc(sizeof *snap);
    nb_state_snapshot(s, snap);
    assert_int_equal(snap->n_links, 2);
    free(snap);
    nb_state_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = { cmocka_unit_test(test_rows) };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
