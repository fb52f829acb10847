/*
 * test_net_flood.c - strangers without a certificate who open connection
 * after connection: at most max_pending_per_addr handshakes from one source
 * address; a flood from many addresses still leaves room for a configured
 * peer's address (the real peer connects while the flood holds every other
 * slot); refusals are logged at most 10 per window, the rest summed up in
 * one line; after a flood the daemon's resident memory returns to where it
 * was. Every source address is on loopback (127.0.0.0/8).
 */
#include "tests/net/net_harness.h"
#include <fcntl.h>
#include <malloc.h>

static uv_loop_t g_loop;
static h_ep_t g_b;

static void start_server(uint32_t max_pending, uint32_t per_addr, uint32_t log_ms,
                         const char *reserve)
{
    static const char *const allow_a[] = { "a" };
    nb_net_cfg_t cfg;
    memset(&g_b, 0, sizeof g_b);
    uv_loop_init(&g_loop);
    h_cfg(&cfg, &g_b, "b", "b", allow_a, 1);
    cfg.handshake_timeout_ms = 20000; /* the flood's connections stay until closed */
    cfg.max_pending = max_pending;
    cfg.max_pending_per_addr = per_addr;
    cfg.refusal_log_ms = log_ms;
    h_ep_new(&g_loop, &g_b, &cfg, 1);
    if (reserve)
        assert_int_equal(nb_net_reserve_addr(g_b.net, reserve), 0);
    nb_net_set_job(g_b.net, 7);
}

static void stop_server(void)
{
    h_ep_close(&g_loop, &g_b);
    h_loop_end(&g_loop);
}

static int count_lines(const char *needle)
{
    pthread_mutex_lock(&h_loglock);
    int n = 0;
    for (const char *p = h_logbuf; (p = strstr(p, needle)); p++)
        n++;
    pthread_mutex_unlock(&h_loglock);
    return n;
}

/* ---- a flooder thread: opens n connections from `addrs` source addresses
 * (127.0.0.first ...), holding up to `hold` of them open, oldest closed
 * first; then holds the last ones until released. ---- */
typedef struct {
    int n, addrs, first, hold;
    int opened, release, done;
    int fds[1024];
} flood_t;

static void *flood_thread(void *arg)
{
    flood_t *f = arg;
    int ring = f->hold < 1024 ? f->hold : 1024;
    for (int i = 0; i < ring; i++)
        f->fds[i] = -1;
    for (int i = 0; i < f->n; i++) {
        int k = i % ring;
        if (f->fds[k] >= 0)
            close(f->fds[k]);
        char src[32];
        snprintf(src, sizeof src, "127.0.%d.%d", (f->first + i % f->addrs) / 250,
                 (f->first + i % f->addrs) % 250 + 2);
        f->fds[k] = h_tcp_connect_from(g_b.port, src);
    }
    __atomic_store_n(&f->opened, 1, __ATOMIC_SEQ_CST);
    while (!__atomic_load_n(&f->release, __ATOMIC_SEQ_CST))
        usleep(5000);
    for (int i = 0; i < ring; i++)
        if (f->fds[i] >= 0)
            close(f->fds[i]);
    __atomic_store_n(&f->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static void run_until_atomic(const int *flag, int ms)
{
    uint64_t end = uv_now(&g_loop) + (uint64_t)ms;
    while (!__atomic_load_n(flag, __ATOMIC_SEQ_CST) && uv_now(&g_loop) < end)
        h_run_ms(&g_loop, 5);
    assert_true(__atomic_load_n(flag, __ATOMIC_SEQ_CST));
}

/* One address may hold max_pending_per_addr handshakes; more are refused at
 * once, counted and logged; another address is not affected. */
static void test_per_address(void **state)
{
    start_server(256, 8, 10000, NULL);
    h_log_clear();
    flood_t f = { .n = 20, .addrs = 1, .first = 0, .hold = 20 };
    pthread_t th;
    pthread_create(&th, NULL, flood_thread, &f);
    run_until_atomic(&f.opened, 20000);
    const nb_net_stats_t *s = nb_net_stats(g_b.net);
    assert_true(h_run_until_u64(&g_loop, &s->pending_refused_addr, 12, 20000));
    h_run_ms(&g_loop, 50);
    assert_int_equal(s->pending_refused_addr, 12);
    assert_int_equal(s->pending_refused, 0);
    assert_true(h_log_has("handshakes from this address already under way"));
    /* a real peer from another address is admitted meanwhile */
    h_ep_t a = { 0 };
    nb_net_cfg_t cfg;
    h_cfg(&cfg, &a, "a", "a", NULL, 0);
    h_ep_new(&g_loop, &a, &cfg, 0);
    assert_int_equal(nb_net_connect(a.net, "b", "127.0.0.1", g_b.port), 0);
    assert_true(h_run_until(&g_loop, &a.ready, 1, 20000));
    __atomic_store_n(&f.release, 1, __ATOMIC_SEQ_CST);
    pthread_join(th, NULL);
    h_ep_close(&g_loop, &a);
    stop_server();
}

/* A flood from 200 addresses takes every slot it may; the configured
 * peer's address (reserved) still gets its handshake through while the
 * flood holds them. Refusal lines: at most 10 per window, then one line
 * "N more refused in the last ... s". */
static void test_reserved_room_and_log_limit(void **state)
{
    start_server(32, 4, 500, "127.0.0.1");
    h_log_clear();
    flood_t f = { .n = 600, .addrs = 200, .first = 10, .hold = 600 };
    pthread_t th;
    pthread_create(&th, NULL, flood_thread, &f);
    run_until_atomic(&f.opened, 60000);
    const nb_net_stats_t *s = nb_net_stats(g_b.net);
    /* 32 slots, 4 kept for the reserved address: 28 for the flood */
    assert_true(h_run_until_u64(&g_loop, &s->pending_refused, 600 - 28, 30000));
    h_run_ms(&g_loop, 50);
    assert_int_equal(s->pending_refused, 600 - 28);
    h_ep_t a = { 0 };
    nb_net_cfg_t cfg;
    h_cfg(&cfg, &a, "a", "a", NULL, 0);
    h_ep_new(&g_loop, &a, &cfg, 0);
    assert_int_equal(nb_net_connect(a.net, "b", "127.0.0.1", g_b.port), 0);
    assert_true(h_run_until(&g_loop, &a.ready, 1, 20000));
    assert_non_null(nb_net_conn(g_b.net, "a"));
    /* the log: a burst of lines, then the sum at the end of the window */
    assert_true(h_run_until_u64(&g_loop, &s->log_suppressed, 1, 1000));
    uint64_t want = s->log_suppressed;
    char line[96];
    snprintf(line, sizeof line, "%llu more refused in the last 0.5 s", (unsigned long long)want);
    int seen = 0;
    for (int i = 0; i < 400 && !seen; i++) {
        h_run_ms(&g_loop, 10);
        seen = h_log_has("more refused in the last 0.5 s");
    }
    assert_true(seen);
    int written = count_lines("refused connection from");
    print_message("refused %llu, lines written %d, summed up %llu\n",
                  (unsigned long long)s->pending_refused, written,
                  (unsigned long long)s->log_suppressed);
    assert_true(written <= 10 * 4); /* 10 per 0.5 s window; the flood took < 2 s */
    assert_true(written + (int)s->log_suppressed >= 600 - 28);
    __atomic_store_n(&f.release, 1, __ATOMIC_SEQ_CST);
    pthread_join(th, NULL);
    h_ep_close(&g_loop, &a);
    stop_server();
}

/* ---- memory after a flood ---- */
static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &size, &res) != 2)
            res = 0;
        fclose(f);
    }
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

static long flood_once(int n)
{
    const nb_net_stats_t *s = nb_net_stats(g_b.net);
    uint64_t trims = s->mem_trims;
    flood_t *f = calloc(1, sizeof *f);
    *f = (flood_t){ .n = n, .addrs = 100, .first = 10, .hold = 256 };
    pthread_t th;
    pthread_create(&th, NULL, flood_thread, f);
    run_until_atomic(&f->opened, 120000);
    long peak = rss_kib();
    __atomic_store_n(&f->release, 1, __ATOMIC_SEQ_CST);
    pthread_join(th, NULL);
    free(f);
    h_run_ms(&g_loop, 20);
    trims = s->mem_trims; /* a quiet spell inside the flood may have trimmed already */
    /* the flood is over when a whole log window passes without a refusal */
    assert_true(h_run_until_u64(&g_loop, &s->mem_trims, trims + 1, 60000));
    return peak;
}

static void test_memory_after_flood(void **state)
{
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    skip(); /* the sanitizers' allocators keep freed memory (quarantine, shadow): RSS says nothing */
#endif
    start_server(256, 8, 300, NULL);
    /* warm up the TLS library with one real peer, then take the baseline */
    h_ep_t a = { 0 };
    nb_net_cfg_t cfg;
    h_cfg(&cfg, &a, "a", "a", NULL, 0);
    h_ep_new(&g_loop, &a, &cfg, 0);
    assert_int_equal(nb_net_connect(a.net, "b", "127.0.0.1", g_b.port), 0);
    assert_true(h_run_until(&g_loop, &a.ready, 1, 20000));
    h_ep_close(&g_loop, &a);
    h_run_ms(&g_loop, 100);
    long base = rss_kib();
    long peak = 0;
    for (int k = 0; k < 2; k++) { /* twice: what one flood leaves behind would add up */
        long p = flood_once(3000);
        if (p > peak)
            peak = p;
    }
    long after = rss_kib();
    struct mallinfo2 mi = mallinfo2();

    print_message("heap: arena %zu KiB, in use %zu KiB, free %zu KiB, mmap %zu KiB\n",
                  mi.arena / 1024, mi.uordblks / 1024, mi.fordblks / 1024, mi.hblkhd / 1024);
    print_message("RSS before %ld KiB, peak during floods %ld KiB, after %ld KiB\n", base, peak,
                  after);
    assert_true(after - base < 4096);
    stop_server();
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
        cmocka_unit_test(test_per_address),
        cmocka_unit_test(test_reserved_room_and_log_limit),
        cmocka_unit_test(test_memory_after_flood),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
