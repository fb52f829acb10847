/*
 * test_net_abuse.c - a peer that holds a valid key and misuses it: a second
 * Hello under the name of a live, heartbeating connection is refused (the
 * real one is not replaced, nothing is closed); a storm of bulk probe
 * requests from a peer that never reads costs bounded memory, keeps the
 * loop responsive and is refused past one transfer at a time; and a reader
 * that pauses gets no frame until it resumes, then every frame, including
 * those already buffered when it paused.
 */
#include "tests/net/net_harness.h"
#include <malloc.h>
#ifdef __SANITIZE_ADDRESS__
size_t __sanitizer_get_current_allocated_bytes(void); /* from the ASan runtime */
#endif

static uv_loop_t g_loop;
static h_ep_t g_b;

static void start_server(void)
{
    static const char *const allow[] = { "a", "c" };
    nb_net_cfg_t cfg;
    memset(&g_b, 0, sizeof g_b);
    uv_loop_init(&g_loop);
    h_cfg(&cfg, &g_b, "b", "b", allow, 2);
    cfg.dead_after_ms = 3000;
    h_ep_new(&g_loop, &g_b, &cfg, 1);
    nb_net_set_job(g_b.net, 7);
}

static void stop_server(void)
{
    h_ep_close(&g_loop, &g_b);
    h_loop_end(&g_loop);
}

static void connect_a(h_ep_t *a)
{
    nb_net_cfg_t cfg;
    memset(a, 0, sizeof *a);
    h_cfg(&cfg, a, "a", "a", NULL, 0);
    cfg.dead_after_ms = 3000;
    h_ep_new(&g_loop, a, &cfg, 0);
    nb_net_set_job(a->net, 7);
    assert_int_equal(nb_net_connect(a->net, "b", "127.0.0.1", g_b.port), 0);
    assert_true(h_run_until(&g_loop, &a->ready, 1, 20000));
    assert_true(h_run_until(&g_loop, &g_b.ready, 1, 20000));
}

static int send_tensor(nb_conn_t *c, size_t len)
{
    static uint8_t pay[1u << 16];
    uint64_t shape[1] = { len };
    Nebula__Frame f = NEBULA__FRAME__INIT;
    Nebula__Tensor t = NEBULA__TENSOR__INIT;
    t.job_id = 7;
    t.kind = NEBULA__TENSOR_KIND__KIND_TOKEN_IDS;
    t.dtype = NEBULA__DTYPE__DTYPE_U8;
    t.shape = shape;
    t.n_shape = 1;
    t.codec = "raw";
    t.decoded_bytes = len;
    f.body_case = NEBULA__FRAME__BODY_TENSOR;
    f.tensor = &t;
    return nb_conn_send(c, &f, pay, len, NULL, NULL);
}

/* ---- a raw client in a thread: Hello as `name`, then `extra` bytes,
 * then it stays (never reading) for hold_ms ---- */
typedef struct {
    const char *name;
    uint8_t *extra;
    size_t extra_len;
    int hold_ms;
    int hello_sent, done;
} raw_t;

static void *raw_thread(void *arg)
{
    raw_t *r = arg;
    char cert[512], key[512];
    h_path(cert, sizeof cert, r->name, "pem");
    h_path(key, sizeof key, r->name, "key");
    int fd;
    SSL *ssl = h_raw_tls(g_b.port, cert, key, 0, &fd);
    if (ssl) {
        size_t hl;
        uint8_t *hello = h_hello_bytes(r->name, &hl);
        SSL_write(ssl, hello, (int)hl);
        free(hello);
        __atomic_store_n(&r->hello_sent, 1, __ATOMIC_SEQ_CST);
        size_t off = 0;
        while (off < r->extra_len) {
            int k = SSL_write(ssl, r->extra + off, (int)(r->extra_len - off));
            if (k <= 0)
                break;
            off += (size_t)k;
        }
        usleep((useconds_t)r->hold_ms * 1000);
        SSL_free(ssl);
        close(fd);
    }
    __atomic_store_n(&r->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static void run_until_atomic(const int *flag, int ms)
{
    uint64_t end = uv_now(&g_loop) + (uint64_t)ms;
    while (!__atomic_load_n(flag, __ATOMIC_SEQ_CST) && uv_now(&g_loop) < end)
        h_run_ms(&g_loop, 5);
    assert_true(__atomic_load_n(flag, __ATOMIC_SEQ_CST));
}

/* A Hello under the name of a live, heartbeating connection: refused,
 * counted and logged; the real connection is the same object afterwards and
 * nothing was closed on either side. */
static void test_rogue_hello(void **state)
{
    start_server();
    h_ep_t a;
    connect_a(&a);
    nb_conn_t *real = nb_net_conn(g_b.net, "a");
    assert_non_null(real);
    h_run_ms(&g_loop, 300); /* a few heartbeats */
    h_log_clear();
    raw_t r = { .name = "a", .hold_ms = 0 };
    pthread_t th;
    pthread_create(&th, NULL, raw_thread, &r);
    const nb_net_stats_t *s = nb_net_stats(g_b.net);
    assert_true(h_run_until_u64(&g_loop, &s->dup_refused, 1, 20000));
    run_until_atomic(&r.done, 20000);
    pthread_join(th, NULL);
    assert_true(h_log_has("refused a second connection as 'a'"));
    h_run_ms(&g_loop, 1000); /* several heartbeats later */
    assert_ptr_equal(nb_net_conn(g_b.net, "a"), real);
    assert_int_equal(g_b.closed, 0);
    assert_int_equal(a.closed, 0);
    assert_int_equal(send_tensor(a.conn, 100), 0);
    assert_true(h_run_until(&g_loop, &g_b.frames, 1, 20000));
    h_ep_close(&g_loop, &a);
    stop_server();
}

/* ---- probe storm ---- */
static long heap_kib(void)
{
#ifdef __SANITIZE_ADDRESS__
    return (long)(__sanitizer_get_current_allocated_bytes() / 1024);
#else
    return (long)(mallinfo2().uordblks / 1024);
#endif
}

typedef struct {
    uint64_t last, max_gap;
} gap_t;

static void on_gap_timer(uv_timer_t *t)
{
    gap_t *g = t->data;
    uint64_t now = uv_now(t->loop);
    if (g->last && now - g->last > g->max_gap)
        g->max_gap = now - g->last;
    g->last = now;
}

/* n probe frames of one kind (ids 1..n; pings carry t_ns 1, bulk requests
 * total_bytes) in one buffer, as a hostile peer writes them in one go. */
static uint8_t *probe_frames(Nebula__Probe__Kind kind, int n, uint64_t total_bytes, size_t *len_out)
{
    nb_frame_limits_t lim;
    nb_frame_limits_default(&lim);
    size_t cap = 64 * (size_t)n, len = 0;
    uint8_t *buf = malloc(cap);
    assert_non_null(buf);
    for (int i = 0; i < n; i++) {
        Nebula__Frame f = NEBULA__FRAME__INIT;
        Nebula__Probe pr = NEBULA__PROBE__INIT;
        pr.kind = kind;
        pr.id = (uint64_t)i + 1;
        pr.t_ns = kind == NEBULA__PROBE__KIND__PROBE_PING ? 1 : 0;
        pr.total_bytes = total_bytes;
        f.body_case = NEBULA__FRAME__BODY_PROBE;
        f.probe = &pr;
        uint8_t *b;
        size_t bl;
        assert_int_equal(nb_frame_encode(&f, NULL, 0, &lim, &b, &bl), 0);
        assert_true(len + bl <= cap);
        memcpy(buf + len, b, bl);
        len += bl;
        free(b);
    }
    *len_out = len;
    return buf;
}

static void on_storm_timer_closed(uv_handle_t *h) { *(int *)h->data = 1; }

typedef struct {
    long heap_peak;   /* KiB above the heap before the storm */
    uint64_t max_gap; /* ms, the longest the loop's 5 ms timer waited */
} storm_t;

/* A raw peer "c" writes buf and holds the connection hold_ms while the loop
 * turns; each_turn (may be NULL) runs between turns. Measures heap growth and
 * the longest loop gap. */
static storm_t run_storm(uint8_t *buf, size_t len, int hold_ms, void (*each_turn)(void *), void *ud)
{
    long heap0 = heap_kib();
    gap_t g = { 0 };
    uv_timer_t gt;
    uv_timer_init(&g_loop, &gt);
    gt.data = &g;
    uv_timer_start(&gt, on_gap_timer, 5, 5);
    raw_t r = { .name = "c", .extra = buf, .extra_len = len, .hold_ms = hold_ms };
    pthread_t th;
    pthread_create(&th, NULL, raw_thread, &r);
    storm_t st = { 0, 0 };
    while (!__atomic_load_n(&r.done, __ATOMIC_SEQ_CST)) {
        g.last = 0; /* gaps inside the loop only, not the test's own work */
        h_run_ms(&g_loop, 20);
        long h = heap_kib() - heap0;
        if (h > st.heap_peak)
            st.heap_peak = h;
        if (each_turn)
            each_turn(ud);
    }
    pthread_join(th, NULL);
    st.max_gap = g.max_gap;
    /* gt lives on this stack: finish its close before returning */
    int closed = 0;
    gt.data = &closed;
    uv_close((uv_handle_t *)&gt, on_storm_timer_closed);
    while (!closed)
        uv_run(&g_loop, UV_RUN_ONCE);
    return st;
}

/* The real peer keeps exchanging during a storm. */
static void keep_sending(void *ud)
{
    h_ep_t *a = ud;
    if (a->conn && nb_conn_queued_bytes(a->conn) == 0)
        assert_int_equal(send_tensor(a->conn, 1000), 0);
}

#define N_REQ 512

/* 512 requests of 64 MiB (the most a daemon serves) from a peer that never
 * reads: one transfer is served, fed to the send queue a few chunks at a
 * time; the rest are refused and counted; the heap stays within a few MiB,
 * the loop keeps its 5 ms timer running, and the other peer's link is
 * unharmed. */
static void test_probe_storm(void **state)
{
    start_server();
    h_ep_t a;
    connect_a(&a);
    /* the storm: N_REQ bulk requests in one write */
    size_t len;
    uint8_t *buf = probe_frames(NEBULA__PROBE__KIND__PROBE_BULK_REQUEST, N_REQ, 64u << 20, &len);
    storm_t st = run_storm(buf, len, 2000, keep_sending, &a);
    const nb_net_stats_t *s = nb_net_stats(g_b.net);
    print_message("probe storm: %llu refused, heap growth peak %ld KiB, longest loop gap %llu ms, "
                  "%d frames from the real peer\n",
                  (unsigned long long)s->probe_refused, st.heap_peak, (unsigned long long)st.max_gap,
                  g_b.frames);
    assert_true(st.heap_peak < 12 * 1024); /* 4 MiB of ciphertext in flight, TLS buffers */
    assert_true(st.max_gap < 1000); /* generous for ASan on a busy machine */
    assert_int_equal(s->probe_refused, N_REQ - 1);
    assert_true(h_log_has("refused bulk probe request"));
    assert_true(g_b.frames > 0);
    assert_int_equal(s->dead_peers, 0);
    assert_non_null(nb_net_conn(g_b.net, "a"));
    free(buf);
    h_ep_close(&g_loop, &a);
    stop_server();
}

#define N_PING 100000

/* 100,000 pings in one stream from a peer that never reads: at most one
 * pong waits in the queue, so the heap does not grow with the pings and the
 * loop stays responsive. */
static void test_ping_flood(void **state)
{
    start_server();
    size_t len;
    uint8_t *buf = probe_frames(NEBULA__PROBE__KIND__PROBE_PING, N_PING, 0, &len);
    storm_t st = run_storm(buf, len, 1500, NULL, NULL);
    const nb_net_stats_t *s = nb_net_stats(g_b.net);
    print_message("ping flood: %llu frames in, heap growth peak %ld KiB, longest loop gap %llu ms\n",
                  (unsigned long long)s->frames_rx, st.heap_peak, (unsigned long long)st.max_gap);
    assert_true(s->frames_rx >= N_PING);
    assert_true(st.heap_peak < 2 * 1024);
    assert_true(st.max_gap < 1000);
    free(buf);
    stop_server();
}

/* Requests above probe_max_bytes are refused, the connection stays. */
static void test_probe_size_limit(void **state)
{
    start_server();
    h_ep_t a;
    connect_a(&a);
    /* our own API refuses too */
    assert_int_equal(nb_probe_bw_send(a.conn, (64u << 20) + 1, NULL, NULL), NB_ERANGE);
    nb_frame_limits_t lim;
    nb_frame_limits_default(&lim);
    Nebula__Frame f = NEBULA__FRAME__INIT;
    Nebula__Probe pr = NEBULA__PROBE__INIT;
    pr.kind = NEBULA__PROBE__KIND__PROBE_BULK_REQUEST;
    pr.id = 1;
    pr.total_bytes = 1ull << 30;
    f.body_case = NEBULA__FRAME__BODY_PROBE;
    f.probe = &pr;
    uint8_t *b;
    size_t bl;
    assert_int_equal(nb_frame_encode(&f, NULL, 0, &lim, &b, &bl), 0);
    raw_t r = { .name = "c", .extra = b, .extra_len = bl, .hold_ms = 300 };
    pthread_t th;
    pthread_create(&th, NULL, raw_thread, &r);
    const nb_net_stats_t *s = nb_net_stats(g_b.net);
    assert_true(h_run_until_u64(&g_loop, &s->probe_refused, 1, 20000));
    run_until_atomic(&r.done, 20000);
    pthread_join(th, NULL);
    assert_true(h_log_has("of 1073741824 bytes (at most 67108864)"));
    free(b);
    h_ep_close(&g_loop, &a);
    stop_server();
}

static void bw_cb(nb_conn_t *c, int status, double bps, void *ud)
{
    *(int *)ud = status == NB_ELIMIT ? 1 : -1;
}

/* Asking a peer for more than its limit: refused, and the asking side's
 * callback learns it at once (NB_ELIMIT) instead of waiting forever. */
static void test_probe_request_refused(void **state)
{
    start_server();
    h_ep_t a;
    nb_net_cfg_t cfg;
    memset(&a, 0, sizeof a);
    h_cfg(&cfg, &a, "a", "a", NULL, 0);
    cfg.probe_max_bytes = 128u << 20; /* more than the server serves */
    h_ep_new(&g_loop, &a, &cfg, 0);
    assert_int_equal(nb_net_connect(a.net, "b", "127.0.0.1", g_b.port), 0);
    assert_true(h_run_until(&g_loop, &a.ready, 1, 20000));
    int got = 0;
    assert_int_equal(nb_probe_bw_recv(a.conn, 100u << 20, bw_cb, &got), 0);
    assert_true(h_run_until(&g_loop, &got, 1, 20000));
    assert_int_equal(nb_net_stats(g_b.net)->probe_refused, 1);
    h_ep_close(&g_loop, &a);
    stop_server();
}

/* ---- pausing the reader ---- */
typedef struct {
    int pause_at;
    nb_conn_t *paused;
} pause_t;

static void pausing_frame(h_ep_t *e, nb_conn_t *c, Nebula__Frame *f, uint8_t *p, size_t len)
{
    pause_t *ps = e->user;
    if (e->frames == ps->pause_at) {
        nb_conn_pause_read(c);
        ps->paused = c;
    }
    nebula__frame__free_unpacked(f, NULL);
    free(p);
}

/* 200 small frames arrive together; the reader pauses after the 3rd: no
 * further frame is delivered while paused (even those already decrypted in
 * the same read), and after resuming all 200 arrive without the sender
 * sending anything more. */
static void test_pause_read(void **state)
{
    start_server();
    pause_t ps = { .pause_at = 3 };
    g_b.user = &ps;
    g_b.on_frame = pausing_frame;
    h_ep_t a;
    connect_a(&a);
    for (int i = 0; i < 200; i++)
        assert_int_equal(send_tensor(a.conn, 100), 0);
    assert_true(h_run_until(&g_loop, &g_b.frames, 3, 20000));
    h_run_ms(&g_loop, 500);
    assert_int_equal(g_b.frames, 3);
    assert_non_null(ps.paused);
    nb_conn_resume_read(ps.paused);
    assert_true(h_run_until(&g_loop, &g_b.frames, 200, 20000));
    assert_int_equal(g_b.closed, 0);
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
        cmocka_unit_test(test_rogue_hello),
        cmocka_unit_test(test_probe_storm),
        cmocka_unit_test(test_ping_flood),
        cmocka_unit_test(test_probe_size_limit),
        cmocka_unit_test(test_probe_request_refused),
        cmocka_unit_test(test_pause_read),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
