/*
 * test_net_refuse.c - the TLS refusal matrix: plain TCP, a certificate from
 * an unknown CA, an expired and a not-yet-valid certificate, the wrong name
 * (both directions) and TLS 1.2 are each refused before any protobuf is
 * parsed, with their own counter and log line; a rotated certificate file
 * takes effect for the next connection without a restart.
 */
#include "tests/net/net_harness.h"

static uv_loop_t g_loop;
static h_ep_t g_b; /* the server, admits "a" only */

static void start_server(void)
{
    static const char *const allow_a[] = { "a" };
    nb_net_cfg_t cfg;
    memset(&g_b, 0, sizeof g_b);
    uv_loop_init(&g_loop);
    h_cfg(&cfg, &g_b, "b", "b", allow_a, 1);
    h_ep_new(&g_loop, &g_b, &cfg, 1);
}

static void stop_server(void)
{
    h_ep_close(&g_loop, &g_b);
    h_loop_end(&g_loop);
}

/* Client endpoint "a" presenting certname/certdir, trusting the main CA,
 * dialling b expecting `expect`; runs until b (or a, when on_client) counts
 * the refusal. */
static void refused_by(const char *certname, const char *expect, nb_tls_refusal_t r,
                       int on_client)
{
    h_ep_t a = { 0 };
    nb_net_cfg_t cfg;
    h_cfg(&cfg, &a, "a", certname, NULL, 0);
    h_path(a.ca, sizeof a.ca, "ca", "pem");
    h_ep_new(&g_loop, &a, &cfg, 0);
    assert_int_equal(nb_net_connect(a.net, expect, "127.0.0.1", g_b.port), 0);
    const nb_net_stats_t *s = nb_net_stats(on_client ? a.net : g_b.net);
    uint64_t before = s->tls_refused[r];
    assert_true(h_run_until_u64(&g_loop, &s->tls_refused[r], before + 1, 5000));
    assert_int_equal(g_b.ready, 0); /* nothing got through */
    assert_int_equal(nb_net_stats(g_b.net)->frames_rx, 0);
    h_ep_close(&g_loop, &a);
    char line[128];
    snprintf(line, sizeof line, ": %s: ", nb_tls_refusal_name(r));
    assert_true(h_log_has(line));
}

static void test_good_baseline(void **state)
{
    start_server();
    h_ep_t a = { 0 };
    nb_net_cfg_t cfg;
    h_cfg(&cfg, &a, "a", "a", NULL, 0);
    h_ep_new(&g_loop, &a, &cfg, 0);
    assert_int_equal(nb_net_connect(a.net, "b", "127.0.0.1", g_b.port), 0);
    assert_true(h_run_until(&g_loop, &g_b.ready, 1, 5000));
    assert_true(h_run_until(&g_loop, &a.ready, 1, 5000));
    h_ep_close(&g_loop, &a);
    stop_server();
}

static void test_unknown_ca(void **state)
{
    start_server();
    refused_by("other/a", "b", NB_TLS_REFUSE_UNKNOWN_CA, 0);
    stop_server();
}

static void test_expired(void **state)
{
    h_cert_custom("a-expired", "a", -20 * 86400L, -86400L);
    start_server();
    refused_by("a-expired", "b", NB_TLS_REFUSE_EXPIRED, 0);
    stop_server();
}

static void test_not_yet_valid(void **state)
{
    h_cert_custom("a-future", "a", 86400L, 20 * 86400L);
    start_server();
    refused_by("a-future", "b", NB_TLS_REFUSE_NOT_YET_VALID, 0);
    stop_server();
}

static void test_wrong_name_server_side(void **state)
{
    /* "c" has a valid certificate from our CA but b does not admit it */
    start_server();
    refused_by("c", "b", NB_TLS_REFUSE_WRONG_NAME, 0);
    stop_server();
}

static void test_wrong_name_client_side(void **state)
{
    /* a expects to reach "c" but the server is "b" */
    start_server();
    refused_by("a", "c", NB_TLS_REFUSE_WRONG_NAME, 1);
    stop_server();
}

typedef struct {
    int port;
    int mode; /* 0 plain TCP, 1 TLS 1.2 */
    int result;
    char cert[512], key[512];
} raw_t;

static void *raw_client(void *arg)
{
    raw_t *r = arg;
    if (r->mode == 0) {
        int fd = h_tcp_connect(r->port);
        size_t len;
        uint8_t *b = h_hello_bytes("a", &len);
        r->result = (int)write(fd, b, len);
        free(b);
        char buf[256];
        while (read(fd, buf, sizeof buf) > 0)
            ;
        close(fd);
    } else {
        int fd;
        SSL *ssl = h_raw_tls(r->port, r->cert, r->key, TLS1_2_VERSION, &fd);
        r->result = ssl != NULL;
        if (ssl) {
            SSL_free(ssl);
            close(fd);
        }
    }
    return NULL;
}

static void raw_refused(int mode, nb_tls_refusal_t reason)
{
    start_server();
    raw_t r = { .port = g_b.port, .mode = mode, .result = -1 };
    h_path(r.cert, sizeof r.cert, "a", "pem");
    h_path(r.key, sizeof r.key, "a", "key");
    pthread_t th;
    pthread_create(&th, NULL, raw_client, &r);
    const nb_net_stats_t *s = nb_net_stats(g_b.net);
    assert_true(h_run_until_u64(&g_loop, &s->tls_refused[reason], 1, 5000));
    h_run_ms(&g_loop, 50);
    pthread_join(th, NULL);
    if (mode == 1)
        assert_int_equal(r.result, 0); /* the TLS 1.2 handshake failed */
    assert_int_equal(s->frames_rx, 0);
    assert_int_equal(s->frame_faults, 0); /* no protobuf was parsed */
    char line[128];
    snprintf(line, sizeof line, ": %s: ", nb_tls_refusal_name(reason));
    assert_true(h_log_has(line));
    stop_server();
}

static void test_plain_tcp(void **state)
{
    raw_refused(0, NB_TLS_REFUSE_NOT_TLS);
}

static void test_tls12(void **state)
{
    raw_refused(1, NB_TLS_REFUSE_VERSION);
}

/* Certificates are read per connection: replacing b's files with an expired
 * certificate makes the next connection fail at a; restoring them fixes it,
 * with the same endpoint objects throughout. */
static void test_rotation(void **state)
{
    char cmd[2048];
    start_server();
    h_ep_t a = { 0 };
    nb_net_cfg_t cfg;
    h_cfg(&cfg, &a, "a", "a", NULL, 0);
    h_ep_new(&g_loop, &a, &cfg, 0);
    assert_int_equal(nb_net_connect(a.net, "b", "127.0.0.1", g_b.port), 0);
    assert_true(h_run_until(&g_loop, &a.ready, 1, 5000));
    h_cert_custom("b-old", "b", -20 * 86400L, -86400L);
    snprintf(cmd, sizeof cmd, "cd %s && cp b.pem b.pem.good && cp b.key b.key.good && "
             "cp b-old.pem b.pem && cp b-old.key b.key", h_dir);
    assert_int_equal(system(cmd), 0);
    nb_conn_close(a.conn); /* force a new connection */
    const nb_net_stats_t *s = nb_net_stats(a.net);
    assert_true(h_run_until_u64(&g_loop, &s->tls_refused[NB_TLS_REFUSE_EXPIRED], 1, 5000));
    snprintf(cmd, sizeof cmd, "cd %s && cp b.pem.good b.pem && cp b.key.good b.key", h_dir);
    assert_int_equal(system(cmd), 0);
    assert_true(h_run_until(&g_loop, &a.ready, 2, 5000));
    h_ep_close(&g_loop, &a);
    stop_server();
}

/* Settings that would weaken the checks are refused up front. */
static void test_bad_settings(void **state)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    h_ep_t e = { 0 };
    nb_net_cfg_t cfg;
    nb_net_t *n = NULL;
    static const char *const empty[] = { "" };
    h_cfg(&cfg, &e, "b", "b", empty, 1);
    assert_int_equal(nb_net_new(&loop, &cfg, NULL, NULL, &n), NB_EINVAL); /* empty peer name */
    h_cfg(&cfg, &e, "", "b", NULL, 0);
    assert_int_equal(nb_net_new(&loop, &cfg, NULL, NULL, &n), NB_EINVAL); /* no own name */
    h_cfg(&cfg, &e, "b", "b", NULL, 0);
    cfg.tls.ca_file = NULL;
    assert_int_equal(nb_net_new(&loop, &cfg, NULL, NULL, &n), NB_EINVAL); /* no CA */
    assert_null(n);
    uv_loop_close(&loop);
    /* a missing key file is a logged setup error per connection, not a crash */
    start_server();
    h_ep_t a = { 0 };
    h_cfg(&cfg, &a, "a", "a", NULL, 0);
    snprintf(a.key, sizeof a.key, "%s/missing.key", h_dir);
    h_ep_new(&g_loop, &a, &cfg, 0);
    assert_int_equal(nb_net_connect(a.net, "b", "127.0.0.1", g_b.port), 0);
    h_run_ms(&g_loop, 200);
    assert_true(h_log_has("cannot set up TLS: cannot load key"));
    assert_int_equal(a.ready, 0);
    h_ep_close(&g_loop, &a);
    stop_server();
}

static int setup(void **state)
{
    h_log_start();
    h_certs("a b c");
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
        cmocka_unit_test(test_good_baseline),
        cmocka_unit_test(test_plain_tcp),
        cmocka_unit_test(test_unknown_ca),
        cmocka_unit_test(test_expired),
        cmocka_unit_test(test_not_yet_valid),
        cmocka_unit_test(test_wrong_name_server_side),
        cmocka_unit_test(test_wrong_name_client_side),
        cmocka_unit_test(test_tls12),
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_bad_settings),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
