/*
 * test_transport_cfg.c - the transport limits an operator sets in the
 * daemon's YAML (`transport:`): out-of-range values are refused naming the
 * key, no section leaves the transport's defaults unchanged, and set values
 * reach the transport and act there (a frame above max_frame_payload closes
 * the connection that carried it; a queue at send_queue_bytes pushes back).
 */
#include "tests/net/net_harness.h"
#include "daemon/config/config.h"
#include "daemon/pipeline/rt_common.h"

static const char *stage_head = "name: b\nrole: stage\nlisten: 127.0.0.1:0\n"
                                "tls: {cert: b.pem, key: b.key, ca: ca.pem}\n"
                                "coordinator: {address: 127.0.0.1:1, name: coord}\n";

static int load(const char *extra, nb_config_t *cfg, char *err, size_t errlen)
{
    char text[1024];
    snprintf(text, sizeof text, "%s%s", stage_head, extra);
    return nb_cfg_load_string("dir/s.yaml", text, strlen(text), cfg, err, errlen);
}

static void expect_refused(const char *extra, const char *want)
{
    static nb_config_t cfg;
    char err[512] = "";
    assert_int_not_equal(load(extra, &cfg, err, sizeof err), 0);
    if (!strstr(err, want))
        fail_msg("'%s': error '%s' lacks '%s'", extra, err, want);
}

static void test_bad_values_refused(void **st)
{
    (void)st;
    expect_refused("transport: {max_frame_payload: 4KiB}\n", "transport.max_frame_payload: out of bounds");
    expect_refused("transport: {max_frame_payload: 2GiB}\n", "transport.max_frame_payload: out of bounds");
    expect_refused("transport: {max_frame_payload: lots}\n", "transport.max_frame_payload: wrong type");
    expect_refused("transport: {send_queue_bytes: 1000}\n", "transport.send_queue_bytes: out of bounds");
    expect_refused("transport: {send_queue_bytes: 32GiB}\n", "transport.send_queue_bytes: out of bounds");
    expect_refused("transport: {max_pending_handshakes: 0}\n", "transport.max_pending_handshakes: out of bounds");
    expect_refused("transport: {max_pending_handshakes: 100000}\n",
                   "transport.max_pending_handshakes: out of bounds");
    expect_refused("transport: {max_pending_per_address: -1}\n", "transport.max_pending_per_address: out of bounds");
    expect_refused("transport: {max_pending_per_adress: 4}\n", "did you mean 'max_pending_per_address'");
    expect_refused("heartbeat_interval_s: 0.01\n", "heartbeat_interval_s: out of bounds");
}

static void test_defaults_unchanged(void **st)
{
    (void)st;
    static nb_config_t cfg;
    char err[512];
    assert_int_equal(load("", &cfg, err, sizeof err), 0);
    nb_net_cfg_t got, def;
    nb_rt_net_cfg(&cfg, NEBULA__ROLE__ROLE_STAGE, &got);
    nb_net_cfg_default(&def);
    nb_frame_limits_t lim;
    nb_frame_limits_default(&lim);
    /* what the transport uses when a field is zero (nb_net_new) */
    assert_int_equal(got.limits.max_payload, lim.max_payload);
    assert_int_equal(got.limits.max_payload, 256u << 20);
    assert_int_equal(got.limits.max_header, lim.max_header);
    assert_int_equal(got.send_queue_bytes, 64u << 20);
    assert_int_equal(got.max_pending, 256);
    assert_int_equal(got.max_pending_per_addr, 8);
    assert_int_equal(got.heartbeat_ms, 1000);
}

/* ---- set values act in the transport ---- */
static int sent;

static void free_payload(void *p, void *ud)
{
    (void)ud;
    free(p);
}

static void send_one(nb_conn_t *c, size_t bytes, int *rc_out)
{
    uint8_t *p = calloc(1, bytes);
    assert_non_null(p);
    uint64_t shape[1] = { bytes / 4 };
    Nebula__Frame f = NEBULA__FRAME__INIT;
    Nebula__Tensor t = NEBULA__TENSOR__INIT;
    t.job_id = 1;
    t.kind = NEBULA__TENSOR_KIND__KIND_ACTIVATION;
    t.dtype = NEBULA__DTYPE__DTYPE_F32;
    t.n_shape = 1;
    t.shape = shape;
    t.codec = "raw";
    t.decoded_bytes = bytes;
    f.body_case = NEBULA__FRAME__BODY_TENSOR;
    f.tensor = &t;
    *rc_out = nb_conn_send(c, &f, p, bytes, free_payload, NULL);
    if (*rc_out)
        free(p);
    else
        sent++;
}

static void test_set_values_take_effect(void **st)
{
    (void)st;
    static nb_config_t cfg;
    char err[512];
    assert_int_equal(load("transport: {max_frame_payload: 1MiB, send_queue_bytes: 2MiB, max_pending_handshakes: 40,"
                          " max_pending_per_address: 3}\nheartbeat_interval_s: 0.25\n",
                          &cfg, err, sizeof err),
                     0);
    nb_net_cfg_t rc_cfg;
    nb_rt_net_cfg(&cfg, NEBULA__ROLE__ROLE_STAGE, &rc_cfg);
    assert_int_equal(rc_cfg.limits.max_payload, 1u << 20);
    assert_int_equal(rc_cfg.send_queue_bytes, 2u << 20);
    assert_int_equal(rc_cfg.max_pending, 40);
    assert_int_equal(rc_cfg.max_pending_per_addr, 3);
    assert_int_equal(rc_cfg.heartbeat_ms, 250);

    /* b runs with the configured limits; a with the defaults */
    uv_loop_t loop;
    uv_loop_init(&loop);
    h_ep_t a = { 0 }, b = { 0 };
    nb_net_cfg_t ca, cb;
    const char *allow_a[] = { "a" };
    h_cfg(&ca, &a, "a", "a", NULL, 0);
    h_cfg(&cb, &b, "b", "b", allow_a, 1);
    cb.limits = rc_cfg.limits;
    cb.send_queue_bytes = rc_cfg.send_queue_bytes;
    cb.max_pending = rc_cfg.max_pending;
    cb.max_pending_per_addr = rc_cfg.max_pending_per_addr;
    h_ep_new(&loop, &b, &cb, 1);
    h_ep_new(&loop, &a, &ca, 0);
    nb_net_set_job(b.net, 1);
    nb_net_set_job(a.net, 1);
    assert_int_equal(nb_net_connect(a.net, "b", "127.0.0.1", b.port), 0);
    assert_true(h_run_until(&loop, &a.ready, 1, 20000));
    assert_true(h_run_until(&loop, &b.ready, 1, 20000));

    /* b's own sends: a frame above its max_frame_payload is refused at once */
    int rc;
    send_one(b.conn, (1u << 20) + 4, &rc);
    assert_int_equal(rc, NB_ERANGE); /* never NB_ELIMIT: that would be retried forever */
    /* b's queue pushes back once it holds send_queue_bytes (2 MiB) */
    for (int i = 0; i < 3 && (send_one(b.conn, 1u << 20, &rc), rc == 0); i++)
        ;
    assert_int_equal(rc, NB_ELIMIT);
    assert_int_equal(sent, 2);

    /* a frame of exactly max_frame_payload arrives; one above it closes the
     * connection on b's side as a frame fault */
    send_one(a.conn, 1u << 20, &rc);
    assert_int_equal(rc, 0);
    assert_true(h_run_until(&loop, &b.frames, 1, 20000));
    send_one(a.conn, (1u << 20) + 4, &rc);
    assert_int_equal(rc, 0);
    assert_true(h_run_until(&loop, &b.closed, 1, 20000));
    assert_int_equal(b.frames, 1);
    assert_true(nb_net_stats(b.net)->frame_faults >= 1);

    h_ep_close(&loop, &a);
    h_ep_close(&loop, &b);
    h_loop_end(&loop);
}

static int setup(void **state)
{
    h_log_start();
    h_certs("a b");
    return 0;
}

static int teardown(void **state)
{
    h_certs_free();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_values_refused),
        cmocka_unit_test(test_defaults_unchanged),
        cmocka_unit_test(test_set_values_take_effect),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
