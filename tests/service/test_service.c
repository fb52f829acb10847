/* test_service.c - the service lifecycle in process, with a fake systemd:
 * NOTIFY_SOCKET points at our datagram socket and WATCHDOG_USEC asks for
 * pings. Checks READY=1 (after the sockets are bound) with a STATUS= line,
 * WATCHDOG=1 from the loop at half the interval, STOPPING=1, a clean loop at
 * the end, a runtime's hooks being called, and a failed start (port in use)
 * closing everything and returning exit status 1. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>
#include "daemon/clock.h"
#include "daemon/config/config.h"
#include "daemon/service/service.h"
#include "kernels/common.h"

static char dir[40], notify_path[64];
static int notify_fd;

static void open_notify(void)
{
    snprintf(dir, sizeof dir, "/tmp/nb-svc-test-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(notify_path, sizeof notify_path, "%s/notify", dir);
    notify_fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", notify_path);
    assert_int_equal(bind(notify_fd, (struct sockaddr *)&sa, sizeof sa), 0);
    fcntl(notify_fd, F_SETFL, O_NONBLOCK);
    setenv("NOTIFY_SOCKET", notify_path, 1);
}

/* All datagrams received so far, joined with '|'. */
static void drain(char *out, size_t n)
{
    out[0] = 0;
    char buf[1024];
    ssize_t r;
    while ((r = recv(notify_fd, buf, sizeof buf - 1, 0)) > 0) {
        buf[r] = 0;
        snprintf(out + strlen(out), n - strlen(out), "%s|", buf);
    }
}

static int count(const char *hay, const char *needle)
{
    int c = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p++)
        c++;
    return c;
}

static void load_stage(nb_config_t *cfg, const char *listen)
{
    char text[512], err[512];
    snprintf(text, sizeof text,
             "name: s1\nrole: stage\nlisten: '%s'\ntls: {cert: a, key: b, ca: c}\n"
             "coordinator: {address: '127.0.0.1:9', name: c}\nstatus_socket: %s/run/s1.sock\n",
             listen, dir);
    int rc = nb_cfg_load_string("mem.yaml", text, strlen(text), cfg, err, sizeof err);
    if (rc)
        fail_msg("%s", err);
}

static void stop_cb(uv_timer_t *t)
{
    nb_service_stop(t->data, "test over");
    uv_close((uv_handle_t *)t, NULL);
}

static void test_notify_and_watchdog(void **st)
{
    open_notify();
    setenv("WATCHDOG_USEC", "100000", 1); /* 100 ms: pings every 50 ms */
    unsetenv("WATCHDOG_PID");
    static nb_config_t cfg;
    load_stage(&cfg, "127.0.0.1:0");
    uv_loop_t loop;
    uv_loop_init(&loop);
    nb_service_t *svc;
    assert_int_equal(nb_service_new(&cfg, &loop, &svc), 0);
    char err[256];
    assert_int_equal(nb_service_start(svc, err, sizeof err), 0);
    char msgs[8192];
    drain(msgs, sizeof msgs);
    assert_non_null(strstr(msgs, "READY=1\nSTATUS=waiting: listening on 127.0.0.1:"));
    assert_int_equal(access(cfg.status_socket, F_OK), 0); /* bound before READY */
    assert_int_equal(nb_state_get(nb_service_state(svc)), NB_SVC_WAITING);
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    t.data = svc;
    uv_timer_start(&t, stop_cb, 280, 0);
    assert_int_equal(nb_service_run(svc), 0);
    drain(msgs, sizeof msgs);
    int pings = count(msgs, "WATCHDOG=1");
    if (pings < 3 || pings > 7)
        fail_msg("expected about 5 watchdog pings in 280 ms, got %d: %s", pings, msgs);
    assert_non_null(strstr(msgs, "STOPPING=1"));
    assert_non_null(strstr(msgs, "STATUS=stopping: test over"));
    assert_int_equal(access(cfg.status_socket, F_OK), -1);
    nb_service_free(svc);
    assert_int_equal(uv_loop_close(&loop), 0);
    unsetenv("WATCHDOG_USEC");
}

static int hook_start, hook_stop;
static int rt_start(nb_service_t *svc, void *ud)
{
    hook_start++;
    nb_service_set_state(svc, NB_SVC_CONNECTING, "dialing %s", (const char *)ud);
    return 0;
}
static void rt_stop(nb_service_t *svc, void *ud) { hook_stop++; }

static void test_runtime_hooks_and_failed_start(void **st)
{
    open_notify();
    /* Occupy a port so that the second service cannot bind it. */
    uv_loop_t loop;
    uv_loop_init(&loop);
    uv_tcp_t busy;
    uv_tcp_init(&loop, &busy);
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    assert_int_equal(uv_tcp_bind(&busy, (struct sockaddr *)&sa, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&busy, 1, NULL), 0);
    int len = sizeof sa;
    uv_tcp_getsockname(&busy, (struct sockaddr *)&sa, &len);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", ntohs(sa.sin_port));

    static nb_config_t cfg;
    load_stage(&cfg, addr);
    nb_service_t *svc;
    assert_int_equal(nb_service_new(&cfg, &loop, &svc), 0);
    char err[256];
    int rc = nb_service_start(svc, err, sizeof err);
    assert_int_equal(rc, NB_EIO);
    assert_non_null(strstr(err, "address already in use"));
    uv_close((uv_handle_t *)&busy, NULL);
    assert_int_equal(nb_service_run(svc), 1);
    char msgs[4096];
    drain(msgs, sizeof msgs);
    assert_null(strstr(msgs, "READY=1")); /* never claimed ready */
    assert_int_equal(access(cfg.status_socket, F_OK), -1);
    nb_service_free(svc);
    assert_int_equal(uv_loop_close(&loop), 0);

    /* With a runtime: its start sets the state, its stop runs on stop. */
    static const nb_runtime_i rt = { .start = rt_start, .stop = rt_stop };
    load_stage(&cfg, "127.0.0.1:0");
    uv_loop_init(&loop);
    assert_int_equal(nb_service_new(&cfg, &loop, &svc), 0);
    nb_service_set_runtime(svc, &rt, "the coordinator");
    assert_int_equal(nb_service_start(svc, err, sizeof err), 0);
    drain(msgs, sizeof msgs);
    assert_non_null(strstr(msgs, "READY=1\nSTATUS=connecting: dialing the coordinator"));
    assert_int_equal(hook_start, 1);
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    t.data = svc;
    uv_timer_start(&t, stop_cb, 10, 0);
    assert_int_equal(nb_service_run(svc), 0);
    assert_int_equal(hook_stop, 1);
    nb_service_free(svc);
    assert_int_equal(uv_loop_close(&loop), 0);

    /* A runtime that sends READY itself (a stage once its peers are
     * authenticated); per-step STATUS= lines change the detail only. */
    static const nb_runtime_i late = { .start = rt_start, .stop = rt_stop, .defers_ready = true };
    uv_loop_init(&loop);
    assert_int_equal(nb_service_new(&cfg, &loop, &svc), 0);
    nb_service_set_runtime(svc, &late, "peers");
    assert_int_equal(nb_service_start(svc, err, sizeof err), 0);
    drain(msgs, sizeof msgs);
    assert_null(strstr(msgs, "READY=1"));
    nb_service_set_state(svc, NB_SVC_RUNNING, "peers authenticated");
    nb_service_ready(svc);
    nb_service_ready(svc);
    nb_service_status_line(svc, "step %d/%d loss %.2f", 3, 10, 2.5);
    drain(msgs, sizeof msgs);
    assert_int_equal(count(msgs, "READY=1"), 1);
    assert_non_null(strstr(msgs, "READY=1\nSTATUS=running: peers authenticated"));
    assert_non_null(strstr(msgs, "STATUS=running: step 3/10 loss 2.50"));
    assert_int_equal(nb_state_get(nb_service_state(svc)), NB_SVC_RUNNING);
    uv_timer_init(&loop, &t);
    t.data = svc;
    uv_timer_start(&t, stop_cb, 10, 0);
    assert_int_equal(nb_service_run(svc), 0);
    nb_service_free(svc);
    assert_int_equal(uv_loop_close(&loop), 0);

    /* role train is not a daemon */
    static nb_config_t tcfg;
    const char *train = "name: t\nrole: train\njob:\n  model: {n_layer: 1, d_model: 8, n_head: 1, vocab: 4}\n"
                        "  data: x\n  batch: 1\n  seq_len: 4\n  steps: 1\n";
    assert_int_equal(nb_cfg_load_string("t.yaml", train, strlen(train), &tcfg, err, sizeof err), 0);
    assert_int_equal(nb_service_new(&tcfg, &loop, &svc), NB_EINVAL);
}

/* Waits up to ms for a notify datagram containing what. */
static bool await_notify(const char *what, int ms)
{
    int64_t end = nb_mono_ms() + ms;
    char buf[1024];
    while (nb_mono_ms() < end) {
        struct pollfd pf = { .fd = notify_fd, .events = POLLIN };
        if (poll(&pf, 1, 50) != 1)
            continue;
        ssize_t r = recv(notify_fd, buf, sizeof buf - 1, 0);
        if (r <= 0)
            continue;
        buf[r] = 0;
        if (strstr(buf, what))
            return true;
    }
    return false;
}

static char fifo_path[80], sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static bool saw_reloading, status_answered, fifo_released, saw_ready;

/* The operator's side: SIGHUP, then the status socket while the reload's
 * read is blocked (the file is a FIFO nobody writes yet), then release it. */
static void *reload_client(void *arg)
{
    (void)arg;
    kill(getpid(), SIGHUP);
    saw_reloading = await_notify("RELOADING=1", 10000);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    memcpy(sa.sun_path, sock_path, sizeof sa.sun_path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        write(fd, "{\"cmd\":\"status\"}\n", 17) == 17) {
        struct pollfd pf = { .fd = fd, .events = POLLIN };
        char buf[4096];
        ssize_t r = poll(&pf, 1, 5000) == 1 ? read(fd, buf, sizeof buf - 1) : -1;
        if (r > 0) {
            buf[r] = 0;
            status_answered = strstr(buf, "\"ok\":true") != NULL;
        }
    }
    close(fd);
    for (int64_t end = nb_mono_ms() + 10000; !fifo_released && nb_mono_ms() < end;) {
        int w = open(fifo_path, O_WRONLY | O_NONBLOCK);
        if (w >= 0) {
            close(w);
            fifo_released = true;
        } else {
            usleep(1000);
        }
    }
    saw_ready = await_notify("READY=1", 10000);
    kill(getpid(), SIGTERM);
    return NULL;
}

/* SIGHUP reads and parses the file off the loop thread: while the read is
 * blocked the status socket still answers; then the unreadable file is
 * reported and the running configuration kept. */
static void test_reload_off_loop(void **st)
{
    open_notify();
    unsetenv("WATCHDOG_USEC");
    static nb_config_t cfg;
    load_stage(&cfg, "127.0.0.1:0");
    snprintf(fifo_path, sizeof fifo_path, "%s/stage.yaml", dir);
    assert_int_equal(mkfifo(fifo_path, 0600), 0);
    snprintf(cfg.path, sizeof cfg.path, "%s", fifo_path);
    snprintf(sock_path, sizeof sock_path, "%.100s", cfg.status_socket);
    uv_loop_t loop;
    uv_loop_init(&loop);
    nb_service_t *svc;
    assert_int_equal(nb_service_new(&cfg, &loop, &svc), 0);
    char err[256];
    assert_int_equal(nb_service_start(svc, err, sizeof err), 0);
    char msgs[4096];
    drain(msgs, sizeof msgs);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, reload_client, NULL), 0);
    assert_int_equal(nb_service_run(svc), 0);
    pthread_join(th, NULL);
    assert_true(saw_reloading);
    assert_true(fifo_released);
    if (!status_answered)
        fail_msg("the status socket did not answer within 5 s while a reload was reading its file");
    assert_true(saw_ready);
    nb_service_free(svc);
    assert_int_equal(uv_loop_close(&loop), 0);
    unlink(fifo_path);
}

static int teardown(void **st)
{
    char p[200];
    close(notify_fd);
    unlink(notify_path);
    snprintf(p, sizeof p, "%s/run", dir);
    rmdir(p);
    rmdir(dir);
    unsetenv("NOTIFY_SOCKET");
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_notify_and_watchdog, teardown),
        cmocka_unit_test_teardown(test_runtime_hooks_and_failed_start, teardown),
        cmocka_unit_test_teardown(test_reload_off_loop, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
