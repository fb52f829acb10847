/*
 * test_net_exchange.c - two endpoints on loopback over mutually
 * authenticated TLS 1.3: 1,000 random tensors of random shapes and dtypes
 * echoed back bit-exact under a small send queue (back-pressure), RTT and
 * bandwidth probes, a restarting peer reconnected to, orderly close.
 */
#include "tests/net/net_harness.h"

#define N_TENSORS 1000
#define JOB 42

typedef struct {
    uv_loop_t *loop;
    h_ep_t a, b;            /* a dials b; b echoes every tensor */
    int next;               /* next tensor index a sends */
    int echoed;             /* tensors back at a, all verified */
    int bad;
    int elimit;             /* NB_ELIMIT seen by the producer */
    size_t bytes;
    int limit;              /* tensors to send; 0: N_TENSORS */
} xchg_t;

static int g_big; /* every tensor 1 MiB of f32 */

static const int dtypes[] = { NEBULA__DTYPE__DTYPE_F32, NEBULA__DTYPE__DTYPE_F16,
                              NEBULA__DTYPE__DTYPE_BF16, NEBULA__DTYPE__DTYPE_I8,
                              NEBULA__DTYPE__DTYPE_U8, NEBULA__DTYPE__DTYPE_I32,
                              NEBULA__DTYPE__DTYPE_I64 };

/* The i-th tensor: shape, dtype and bytes all derived from i. */
static void tensor_desc(int i, int *dtype, size_t *ndim, uint64_t *shape, size_t *bytes)
{
    if (g_big) {
        *dtype = NEBULA__DTYPE__DTYPE_F32;
        *ndim = 2;
        shape[0] = 512;
        shape[1] = 512;
        *bytes = 1u << 20;
        return;
    }
    uint64_t s = (uint64_t)i * 7919 + 17;
    h_rng(&s);
    *dtype = dtypes[h_rng(&s) % NB_ARRAY_LEN(dtypes)];
    *ndim = 1 + h_rng(&s) % 4;
    uint64_t n = 1;
    for (size_t d = 0; d < *ndim; d++) {
        uint64_t cap = 32768 / n;
        shape[d] = 1 + h_rng(&s) % (cap < 64 ? cap : 64);
        n *= shape[d];
    }
    *bytes = (size_t)n * nb_frame_dtype_size(*dtype);
}

static void free_payload(void *p, void *ud)
{
    free(p);
}

static void pump_a(xchg_t *x);

static void a_writable(nb_conn_t *c, void *ud)
{
    h_on_writable(c, ud);
    pump_a(((h_ep_t *)ud)->user);
}

static void pump_a(xchg_t *x)
{
    nb_conn_t *c = nb_net_conn(x->a.net, "b");
    if (!c)
        return;
    while (x->next < (x->limit ? x->limit : N_TENSORS)) {
        int i = x->next, dtype;
        size_t ndim, bytes;
        uint64_t shape[8];
        tensor_desc(i, &dtype, &ndim, shape, &bytes);
        uint8_t *p = malloc(bytes);
        assert_non_null(p);
        h_fill(p, bytes, (uint64_t)i);
        Nebula__Frame f = NEBULA__FRAME__INIT;
        Nebula__Tensor t = NEBULA__TENSOR__INIT;
        t.job_id = JOB;
        t.step = 3;
        t.micro_batch = (uint32_t)i;
        t.kind = NEBULA__TENSOR_KIND__KIND_ACTIVATION;
        t.dtype = dtype;
        t.n_shape = ndim;
        t.shape = shape;
        t.codec = "raw";
        t.decoded_bytes = bytes;
        f.body_case = NEBULA__FRAME__BODY_TENSOR;
        f.tensor = &t;
        int rc = nb_conn_send(c, &f, p, bytes, free_payload, NULL);
        if (rc == NB_ELIMIT) {
            free(p); /* still ours: retry from on_writable */
            x->elimit++;
            return;
        }
        assert_int_equal(rc, 0);
        x->bytes += bytes;
        x->next++;
    }
}

static void a_ready(nb_conn_t *c, void *ud)
{
    h_on_ready(c, ud);
    pump_a(((h_ep_t *)ud)->user);
}

static void a_frame(h_ep_t *e, nb_conn_t *c, Nebula__Frame *f, uint8_t *p, size_t len)
{
    xchg_t *x = e->user;
    const Nebula__Tensor *t = f->tensor;
    int i = (int)t->micro_batch, dtype;
    size_t ndim, bytes;
    uint64_t shape[8];
    tensor_desc(i, &dtype, &ndim, shape, &bytes);
    int ok = f->body_case == NEBULA__FRAME__BODY_TENSOR && i == x->echoed &&
             (int)t->dtype == dtype && t->n_shape == ndim && len == bytes && t->step == 3 &&
             strcmp(t->codec, "raw") == 0;
    for (size_t d = 0; ok && d < ndim; d++)
        ok = t->shape[d] == shape[d];
    if (ok) {
        uint8_t *want = malloc(bytes ? bytes : 1);
        h_fill(want, bytes, (uint64_t)i);
        ok = memcmp(want, p, bytes) == 0;
        free(want);
    }
    if (!ok)
        x->bad++;
    x->echoed++;
    nebula__frame__free_unpacked(f, NULL);
    free(p);
}

/* b sends every tensor back unchanged; the payload buffer it received is
 * handed to the transport and freed by it. */
static void b_frame(h_ep_t *e, nb_conn_t *c, Nebula__Frame *f, uint8_t *p, size_t len)
{
    int rc = nb_conn_send(c, f, p, len, free_payload, NULL);
    if (rc == NB_ELIMIT) {
        /* b's queue is large: this would be a test failure */
        free(p);
        fail_msg("echo side hit its queue limit");
    }
    assert_int_equal(rc, 0);
    nebula__frame__free_unpacked(f, NULL);
}

static uint32_t g_emu_delay_ms;
static int g_pause_b;

static void b_ready(nb_conn_t *c, void *ud)
{
    h_on_ready(c, ud);
    if (g_pause_b)
        nb_conn_pause_read(c);
}

static void setup_pair(xchg_t *x, size_t a_queue)
{
    static const char *const allow_a[] = { "a" };
    nb_net_cfg_t cfg;
    x->loop = malloc(sizeof *x->loop);
    uv_loop_init(x->loop);
    h_cfg(&cfg, &x->b, "b", "b", allow_a, 1);
    x->b.on_frame = b_frame;
    x->b.user = x;
    cfg.send_queue_bytes = 256u << 20;
    nb_net_cb_t bcb = h_cb;
    bcb.on_ready = b_ready;
    assert_int_equal(nb_net_new(x->loop, &cfg, &bcb, &x->b, &x->b.net), 0);
    assert_int_equal(nb_net_listen(x->b.net, "127.0.0.1", 0, &x->b.port), 0);
    nb_net_set_job(x->b.net, JOB);
    h_cfg(&cfg, &x->a, "a", "a", NULL, 0);
    cfg.send_queue_bytes = a_queue;
    cfg.emu_send_delay_ms = g_emu_delay_ms;
    x->a.on_frame = a_frame;
    x->a.user = x;
    nb_net_cb_t cb = h_cb;
    cb.on_ready = a_ready;
    cb.on_writable = a_writable;
    assert_int_equal(nb_net_new(x->loop, &cfg, &cb, &x->a, &x->a.net), 0);
    nb_net_set_job(x->a.net, JOB);
    assert_int_equal(nb_net_connect(x->a.net, "b", "127.0.0.1", x->b.port), 0);
}

static void teardown_pair(xchg_t *x)
{
    h_ep_close(x->loop, &x->a);
    h_ep_close(x->loop, &x->b);
    h_loop_end(x->loop);
    free(x->loop);
}

static void test_thousand_tensors(void **state)
{
    xchg_t x = { 0 };
    setup_pair(&x, 1u << 20);
    assert_true(h_run_until(x.loop, &x.echoed, N_TENSORS, 60000));
    assert_int_equal(x.bad, 0);
    assert_int_equal(x.next, N_TENSORS);
    /* The 1 MiB queue must have pushed back on the producer. */
    assert_true(x.elimit > 0);
    assert_true(x.a.writable > 0);
    const nb_net_stats_t *sa = nb_net_stats(x.a.net), *sb = nb_net_stats(x.b.net);
    assert_int_equal(sa->frame_faults, 0);
    assert_int_equal(sb->frame_faults, 0);
    assert_true(sb->payload_rx == x.bytes);
    assert_true(sa->payload_rx == x.bytes);
    assert_true(h_log_has("TLSv1.3"));
    /* passive estimates from the real transfers */
    nb_link_t l;
    nb_probe_link(nb_net_conn(x.a.net, "b"), &l);
    assert_true(l.rx_bps_ewma > 0);
    assert_true(l.bytes_rx == x.bytes && l.bytes_tx == x.bytes);
    assert_true(l.rtt_ewma_ms > 0); /* heartbeats are pings */
    print_message("%d tensors, %zu bytes each way, %d back-pressure stops\n", N_TENSORS, x.bytes,
                  x.elimit);
    teardown_pair(&x);
}

/* ---- probes ---- */
static double g_rtt, g_bw_tx, g_bw_rx;
static int g_probes;

static void on_rtt(nb_conn_t *c, int st, double ms, void *ud)
{
    assert_int_equal(st, 0);
    g_rtt = ms;
    g_probes++;
}

static void on_bw(nb_conn_t *c, int st, double bps, void *ud)
{
    assert_int_equal(st, 0);
    *(double *)ud = bps;
    g_probes++;
}

static void test_probes(void **state)
{
    xchg_t x = { 0 };
    x.next = N_TENSORS; /* a sends no tensors */
    setup_pair(&x, 64u << 20);
    assert_true(h_run_until(x.loop, &x.a.ready, 1, 5000));
    nb_conn_t *c = nb_net_conn(x.a.net, "b");
    assert_non_null(c);
    g_probes = 0;
    assert_int_equal(nb_probe_rtt(c, on_rtt, NULL), 0);
    assert_int_equal(nb_probe_rtt(c, on_rtt, NULL), NB_ESTATE); /* one at a time */
    assert_true(h_run_until(x.loop, &g_probes, 1, 5000));
    assert_true(g_rtt > 0 && g_rtt < 1000);
    assert_int_equal(nb_probe_bw_send(c, 1000, on_bw, &g_bw_tx), NB_ERANGE);
    assert_int_equal(nb_probe_bw_send(c, 8u << 20, on_bw, &g_bw_tx), 0);
    assert_true(h_run_until(x.loop, &g_probes, 2, 20000));
    assert_int_equal(nb_probe_bw_recv(c, 8u << 20, on_bw, &g_bw_rx), 0);
    assert_true(h_run_until(x.loop, &g_probes, 3, 20000));
    assert_true(g_bw_tx > 1e6 && g_bw_rx > 1e6);
    nb_link_t l;
    nb_probe_link(c, &l);
    assert_true(l.rtt_ms > 0 && l.tx_bw_probe == g_bw_tx && l.rx_bw_probe == g_bw_rx);
    print_message("rtt %.3f ms, bw a->b %.0f MB/s, b->a %.0f MB/s\n", g_rtt, g_bw_tx / 1e6,
                  g_bw_rx / 1e6);
    teardown_pair(&x);
}

/* Latency emulation (tests only): a's frames are held 80 ms, so a ping
 * from a takes at least that long and one from b too (its pong is a's). */
static void test_emulated_latency(void **state)
{
    xchg_t x = { 0 };
    x.next = N_TENSORS;
    g_emu_delay_ms = 80;
    setup_pair(&x, 64u << 20);
    g_emu_delay_ms = 0;
    assert_true(h_run_until(x.loop, &x.a.ready, 1, 5000));
    assert_true(h_log_has("latency emulation"));
    g_probes = 0;
    assert_int_equal(nb_probe_rtt(nb_net_conn(x.a.net, "b"), on_rtt, NULL), 0);
    assert_true(h_run_until(x.loop, &g_probes, 1, 5000));
    assert_true(g_rtt >= 79.0 && g_rtt < 400.0);
    assert_int_equal(nb_probe_rtt(nb_net_conn(x.b.net, "a"), on_rtt, NULL), 0);
    assert_true(h_run_until(x.loop, &g_probes, 2, 5000));
    assert_true(g_rtt >= 79.0 && g_rtt < 400.0);
    teardown_pair(&x);
}

/* Receive-side back-pressure: while b does not read, a's queue fills and
 * a's producer is stopped; nobody is declared dead; after resuming, every
 * tensor arrives intact. */
static void test_pause_read(void **state)
{
    xchg_t x = { .limit = 120 }; /* 120 MiB: more than any socket buffers hold */
    g_pause_b = 1;
    g_big = 1;
    setup_pair(&x, 1u << 20);
    assert_true(h_run_until(x.loop, &x.b.ready, 1, 5000));
    g_pause_b = 0;
    h_run_ms(x.loop, 2000); /* longer than dead_after_ms */
    const nb_net_stats_t *sb = nb_net_stats(x.b.net), *sa = nb_net_stats(x.a.net);
    uint64_t got = sb->frames_rx;
    print_message("while b was paused: a queued %d MiB, b got %d app frames, rx %llu frames\n", x.next, x.b.frames,
                  (unsigned long long)sb->frames_rx);
    assert_true(x.elimit > 0);          /* the producer was stopped */
    assert_true(x.next < x.limit);      /* and is still stopped */
    assert_true(x.echoed < x.limit);
    assert_int_equal(sa->dead_peers + sb->dead_peers, 0);
    h_run_ms(x.loop, 100);
    assert_true(sb->frames_rx == got);  /* b really reads nothing */
    nb_conn_resume_read(x.b.conn);
    assert_true(h_run_until(x.loop, &x.echoed, x.limit, 60000));
    assert_int_equal(x.bad, 0);
    g_big = 0;
    teardown_pair(&x);
}

/* ---- restart ---- */
static void test_peer_restart(void **state)
{
    xchg_t x = { 0 };
    x.next = N_TENSORS;
    setup_pair(&x, 64u << 20);
    assert_true(h_run_until(x.loop, &x.a.ready, 1, 5000));
    int port = x.b.port;
    /* b goes away: a sees the close and keeps redialling. */
    h_ep_close(x.loop, &x.b);
    assert_true(h_run_until(x.loop, &x.a.closed, 1, 5000));
    h_run_ms(x.loop, 300);
    const nb_net_stats_t *sa = nb_net_stats(x.a.net);
    uint64_t attempts = sa->connect_attempts;
    assert_true(attempts >= 2);
    /* b comes back on the same port. */
    static const char *const allow_a[] = { "a" };
    nb_net_cfg_t cfg;
    memset(&x.b, 0, sizeof x.b);
    h_cfg(&cfg, &x.b, "b", "b", allow_a, 1);
    x.b.on_frame = b_frame;
    x.b.user = &x;
    assert_int_equal(nb_net_new(x.loop, &cfg, &h_cb, &x.b, &x.b.net), 0);
    assert_int_equal(nb_net_listen(x.b.net, "127.0.0.1", port, NULL), 0);
    nb_net_set_job(x.b.net, JOB);
    assert_true(h_run_until(x.loop, &x.a.ready, 2, 5000));
    assert_non_null(nb_net_conn(x.a.net, "b"));
    /* and it carries tensors again */
    x.next = N_TENSORS - 5;
    x.echoed = N_TENSORS - 5;
    pump_a(&x);
    assert_true(h_run_until(x.loop, &x.echoed, N_TENSORS, 5000));
    assert_int_equal(x.bad, 0);
    teardown_pair(&x);
}

/* Exponential backoff with jitter: with nothing listening, a peer is
 * redialled at 10-20, 20-40, 40-80, 80-160 ms, then every 100-200 ms. */
static void test_backoff(void **state)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    /* a port that was just free: bind, read it, close */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    close(fd);
    h_ep_t a = { 0 };
    nb_net_cfg_t cfg;
    h_cfg(&cfg, &a, "a", "a", NULL, 0);
    h_ep_new(&loop, &a, &cfg, 0);
    assert_int_equal(nb_net_connect(a.net, "b", "127.0.0.1", ntohs(sa.sin_port)), 0);
    assert_int_equal(nb_net_connect(a.net, "", "127.0.0.1", 1), NB_EINVAL);
    assert_int_equal(nb_net_connect(a.net, "b", "bad host!", 1), NB_EINVAL);
    assert_int_equal(nb_net_connect(a.net, "b", "localhost", 0), NB_EINVAL);
    h_run_ms(&loop, 1000);
    uint64_t n = nb_net_stats(a.net)->connect_attempts;
    print_message("%llu connect attempts in 1 s\n", (unsigned long long)n);
    assert_true(n >= 5 && n <= 15);
    h_ep_close(&loop, &a);
    h_loop_end(&loop);
}

/* A DNS name is resolved at each dial ("localhost" comes from the hosts
 * file, so no query leaves the machine); closing while a lookup may be in
 * flight is safe. */
static void test_dns_name(void **state)
{
    static const char *const allow_a[] = { "a" };
    uv_loop_t loop;
    uv_loop_init(&loop);
    h_ep_t a = { 0 }, b = { 0 };
    nb_net_cfg_t cfg;
    h_cfg(&cfg, &b, "b", "b", allow_a, 1);
    h_ep_new(&loop, &b, &cfg, 1);
    h_cfg(&cfg, &a, "a", "a", NULL, 0);
    h_ep_new(&loop, &a, &cfg, 0);
    assert_int_equal(nb_net_connect(a.net, "b", "localhost", b.port), 0);
    assert_true(h_run_until(&loop, &a.ready, 1, 5000));
    /* redial through the resolver after a drop, then close mid-lookup */
    nb_conn_close(nb_net_conn(b.net, "a"));
    assert_true(h_run_until(&loop, &a.closed, 1, 5000));
    assert_true(h_run_until(&loop, &a.ready, 2, 5000));
    nb_conn_close(nb_net_conn(a.net, "b"));
    h_run_ms(&loop, 5);
    h_ep_close(&loop, &a);
    h_ep_close(&loop, &b);
    h_loop_end(&loop);
}

/* ---- orderly close and the queue limit contract ---- */
static void test_orderly_close(void **state)
{
    xchg_t x = { 0 };
    x.next = N_TENSORS;
    setup_pair(&x, 64u << 20);
    assert_true(h_run_until(x.loop, &x.b.ready, 1, 5000));
    nb_conn_t *c = nb_net_conn(x.b.net, "a");
    assert_non_null(c);
    assert_string_equal(nb_conn_peer_name(c), "a");
    nb_conn_close(c);
    Nebula__Frame f = NEBULA__FRAME__INIT;
    f.body_case = NEBULA__FRAME__BODY_SHUTDOWN;
    Nebula__Shutdown sd = NEBULA__SHUTDOWN__INIT;
    f.shutdown = &sd;
    assert_int_equal(nb_conn_send(c, &f, NULL, 0, NULL, NULL), NB_ESTATE);
    assert_true(h_run_until(x.loop, &x.b.closed, 1, 5000));
    assert_true(h_log_has("peer closed the connection"));
    /* a reconnects by itself */
    assert_true(h_run_until(x.loop, &x.a.ready, 2, 5000));
    teardown_pair(&x);
}

/* A connection closed at once, before its first heartbeat, still drains:
 * its frame (held 300 ms by the latency emulation) reaches the peer before
 * the orderly close. The drain deadline used to count from the last ping,
 * which a connection that young has not sent, and the next tick cut it. */
static void send_then_close(nb_conn_t *c, void *ud)
{
    h_on_ready(c, ud);
    Nebula__Frame f = NEBULA__FRAME__INIT;
    Nebula__Shutdown sd = NEBULA__SHUTDOWN__INIT;
    sd.reason = "refused";
    f.body_case = NEBULA__FRAME__BODY_SHUTDOWN;
    f.shutdown = &sd;
    assert_int_equal(nb_conn_send(c, &f, NULL, 0, NULL, NULL), 0);
    nb_conn_close(c);
}

static void test_close_before_first_heartbeat(void **state)
{
    (void)state;
    static const char *const allow_a[] = { "a" };
    uv_loop_t loop;
    uv_loop_init(&loop);
    h_ep_t a = { 0 }, b = { 0 };
    nb_net_cfg_t cfg;
    h_cfg(&cfg, &b, "b", "b", allow_a, 1);
    cfg.emu_send_delay_ms = 300; /* several ticks (heartbeat_ms / 4 = 50 ms) */
    nb_net_cb_t bcb = h_cb;
    bcb.on_ready = send_then_close;
    assert_int_equal(nb_net_new(&loop, &cfg, &bcb, &b, &b.net), 0);
    assert_int_equal(nb_net_listen(b.net, "127.0.0.1", 0, &b.port), 0);
    h_cfg(&cfg, &a, "a", "a", NULL, 0);
    h_ep_new(&loop, &a, &cfg, 0);
    assert_int_equal(nb_net_connect(a.net, "b", "127.0.0.1", b.port), 0);
    assert_true(h_run_until(&loop, &b.ready, 1, 5000));
    assert_true(h_run_until(&loop, &a.frames, 1, 5000));
    assert_true(h_log_has("peer closed the connection"));
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
        cmocka_unit_test(test_thousand_tensors),
        cmocka_unit_test(test_probes),
        cmocka_unit_test(test_emulated_latency),
        cmocka_unit_test(test_pause_read),
        cmocka_unit_test(test_peer_restart),
        cmocka_unit_test(test_orderly_close),
        cmocka_unit_test(test_close_before_first_heartbeat),
        cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_dns_name),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
