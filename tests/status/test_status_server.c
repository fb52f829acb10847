/* test_status_server.c - the status socket in process: round trips of every
 * command, malformed JSON, unknown commands, a huge request line, a client
 * that never reads, a client that disconnects mid-reply, the SO_PEERCRED
 * check on stop, stale and live sockets; every test ends with a loop that
 * closes cleanly (no handle leaked). Also the metrics registry and the trace
 * ring on their own. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#include "daemon/clock.h"
#include "daemon/metrics.h"
#include "daemon/core/state.h"
#include "daemon/status/status_cmds.h"
#include "daemon/status/status_server.h"
#include "daemon/trace.h"
#include "kernels/common.h"

static char dir[48], sock_path[100];
static uv_loop_t loop;
static int stops;
static char stop_why[128];

static void on_stop(void *ud, const char *why)
{
    stops++;
    snprintf(stop_why, sizeof stop_why, "%s", why);
}

static void pump(int ms)
{
    int64_t end = nb_mono_ms() + ms;
    do {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(1000);
    } while (nb_mono_ms() < end);
}

static int client(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock_path);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    pump(5);
    return fd;
}

static void send_all(int fd, const char *s, size_t n)
{
    while (n) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EAGAIN) {
            pump(1);
            continue;
        }
        assert_true(w > 0);
        s += w;
        n -= (size_t)w;
    }
}

/* Reads one reply line while pumping the loop; returns the parsed object,
 * or NULL on EOF. Bytes after the line are kept for the next call on the
 * same fd. */
static json_t *reply(int fd)
{
    static char buf[1 << 20];
    static size_t have;
    static int last_fd = -1;
    if (fd != last_fd)
        have = 0;
    last_fd = fd;
    int64_t end = nb_mono_ms() + 3000;
    fcntl(fd, F_SETFL, O_NONBLOCK);
    while (nb_mono_ms() < end) {
        char *nl = have ? memchr(buf, '\n', have) : NULL;
        if (nl) {
            json_error_t e;
            json_t *r = json_loadb(buf, (size_t)(nl - buf), 0, &e);
            assert_non_null(r);
            size_t used = (size_t)(nl - buf) + 1;
            memmove(buf, buf + used, have - used);
            have -= used;
            return r;
        }
        uv_run(&loop, UV_RUN_NOWAIT);
        ssize_t n = recv(fd, buf + have, sizeof buf - have - 1, 0);
        if (n == 0 || (n < 0 && errno == ECONNRESET)) {
            have = 0;
            return NULL;
        }
        if (n < 0) {
            usleep(500);
            continue;
        }
        have += (size_t)n;
    }
    fail_msg("no reply within 3 s");
    return NULL;
}

static json_t *ask(int fd, const char *line)
{
    send_all(fd, line, strlen(line));
    return reply(fd);
}

static void expect_error(json_t *r, const char *substr)
{
    assert_non_null(r);
    assert_true(json_is_false(json_object_get(r, "ok")));
    const char *e = json_string_value(json_object_get(r, "error"));
    assert_non_null(e);
    if (!strstr(e, substr))
        fail_msg("error '%s' lacks '%s'", e, substr);
    json_decref(r);
}

typedef struct {
    nb_status_server_t *srv;
    nb_state_t *state;
    nb_status_ctx_t ctx;
} fixture_t;

static size_t big_size = 8192;
static json_t *cmd_big(void *ud, const json_t *req, const nb_status_caller_t *c, char *err, size_t errlen)
{
    char *s = malloc(big_size + 1);
    memset(s, 'x', big_size);
    s[big_size] = 0;
    json_t *r = json_pack("{s:s}", "blob", s);
    free(s);
    return r;
}

static void start(fixture_t *f, const nb_status_limits_t *lim)
{
    assert_int_equal(uv_loop_init(&loop), 0);
    f->state = nb_state_new("east", NB_ROLE_STAGE, 1024);
    assert_non_null(f->state);
    memset(&f->ctx, 0, sizeof f->ctx);
    f->ctx.state = f->state;
    f->ctx.stop = on_stop;
    char err[256];
    int rc = nb_status_server_start(&loop, sock_path, lim, &f->srv, err, sizeof err);
    if (rc)
        fail_msg("start: %s", err);
    assert_int_equal(nb_status_cmds_register(f->srv, &f->ctx), 0);
    assert_int_equal(nb_status_server_add(f->srv, "big", false, cmd_big, NULL), 0);
    assert_int_equal(nb_status_server_add(f->srv, "big", false, cmd_big, NULL), NB_EINVAL);
    stops = 0;
}

static int closed;
static void on_closed(void *ud) { closed++; }

static void finish(fixture_t *f)
{
    closed = 0;
    nb_status_server_close(f->srv, on_closed, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(closed, 1);
    assert_int_equal(uv_loop_close(&loop), 0); /* every handle closed and freed */
    assert_int_equal(access(sock_path, F_OK), -1); /* socket removed */
    nb_state_free(f->state);
}

static void test_roundtrip(void **st)
{
    fixture_t f;
    start(&f, NULL);
    struct stat sb;
    assert_int_equal(stat(sock_path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0660);
    char rundir[400];
    snprintf(rundir, sizeof rundir, "%s/run", dir);
    assert_int_equal(stat(rundir, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0750);

    nb_peer_info_t p = { .name = "west", .role = "stage", .address = "10.0.0.2:7001", .state = "up",
                         .rtt_ms = 42.5, .bandwidth_mbps = 95.0, .bytes_sent = 1000, .bytes_received = 2000 };
    assert_int_equal(nb_state_peer_update(f.state, &p), 0);
    nb_job_info_t j = { .active = true, .step = 7, .steps = 100, .loss = 2.5, .tokens_per_s = 1234,
                        .step_time_s = 0.5, .bubble_measured = 0.25, .bubble_predicted = 0.2, .bytes_raw = 4000,
                        .bytes_wire = 1000, .micro_batches = 4, .codec_forward = "fp16", .codec_backward = "int8",
                        .schedule = "1f1b", .layers = "0-5" };
    nb_state_job_update(f.state, &j);
    nb_state_set(f.state, NB_SVC_RUNNING, "step %d", 7);

    int fd = client();
    json_t *r = ask(fd, "{\"cmd\":\"status\",\"id\":9}\n");
    assert_true(json_is_true(json_object_get(r, "ok")));
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 9);
    assert_string_equal(json_string_value(json_object_get(r, "name")), "east");
    assert_string_equal(json_string_value(json_object_get(r, "role")), "stage");
    assert_string_equal(json_string_value(json_object_get(r, "state")), "running");
    assert_string_equal(json_string_value(json_object_get(r, "detail")), "step 7");
    json_t *peer = json_array_get(json_object_get(r, "peers"), 0);
    assert_string_equal(json_string_value(json_object_get(peer, "state")), "up");
    assert_true(json_real_value(json_object_get(peer, "rtt_ms")) == 42.5);
    json_t *job = json_object_get(r, "job");
    assert_int_equal(json_integer_value(json_object_get(job, "step")), 7);
    assert_true(json_real_value(json_object_get(job, "compression_ratio")) == 4.0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(job, "codecs"), "backward")), "int8");
    json_decref(r);

    /* malformed, not an object, unknown: error replies, the connection lives on */
    expect_error(ask(fd, "{\"cmd\":\n"), "malformed JSON");
    expect_error(ask(fd, "[1,2]\n"), "a request is a JSON object with a string \"cmd\"");
    expect_error(ask(fd, "{\"cmd\":\"reboot\"}\n"), "unknown command 'reboot'; known: status, metrics, trace, stop, big");
    expect_error(ask(fd, "{\"cmd\":\"trace\",\"steps\":-1}\n"), "\"steps\" must be a non-negative integer");

    /* metrics: Prometheus text */
    nb_metrics_t *m = nb_state_metrics(f.state);
    int id = nb_metrics_add(m, "nebula_link_bytes_total", "peer=\"west\"", NB_METRIC_COUNTER, "Bytes sent");
    assert_true(id >= 0);
    nb_metrics_inc(m, id, 4096);
    r = ask(fd, "{\"cmd\":\"metrics\"}\n");
    const char *text = json_string_value(json_object_get(r, "text"));
    assert_non_null(strstr(text, "# TYPE nebula_link_bytes_total counter\nnebula_link_bytes_total{peer=\"west\"} 4096\n"));
    assert_non_null(strstr(text, "nebula_info{name=\"east\",role=\"stage\""));
    json_decref(r);

    /* trace: events of the last N steps, one track per stage and per link */
    nb_trace_t *t = nb_state_trace(f.state);
    int ts = nb_trace_track(t, "stage east", false), tl = nb_trace_track(t, "link east->west", true);
    for (int s = 1; s <= 3; s++) {
        nb_trace_event_t e = { .step = s, .micro = 0, .track = (int16_t)ts, .kind = NB_TEV_FORWARD, .ts_us = s * 100.0, .dur_us = 10 };
        assert_int_equal(nb_trace_add(t, &e), 0);
        e.track = (int16_t)tl;
        e.kind = NB_TEV_SEND;
        e.bytes = 512;
        assert_int_equal(nb_trace_add(t, &e), 0);
    }
    r = ask(fd, "{\"cmd\":\"trace\",\"steps\":2}\n");
    json_t *evs = json_object_get(json_object_get(r, "trace"), "traceEvents");
    size_t i, nx = 0, nlink = 0;
    json_t *ev;
    json_array_foreach(evs, i, ev)
    {
        if (strcmp(json_string_value(json_object_get(ev, "ph")), "X") != 0)
            continue;
        nx++;
        assert_true(json_integer_value(json_object_get(json_object_get(ev, "args"), "step")) >= 2);
        nlink += json_integer_value(json_object_get(ev, "pid")) == 2;
    }
    assert_int_equal(nx, 4);
    assert_int_equal(nlink, 2);
    json_decref(r);

    /* stop from our own uid is allowed */
    r = ask(fd, "{\"cmd\":\"stop\"}\n");
    assert_true(json_is_true(json_object_get(r, "stopping")));
    json_decref(r);
    assert_int_equal(stops, 1);
    assert_non_null(strstr(stop_why, "stop requested on the status socket by uid"));
    /* several requests in one write, CRLF endings, blank lines */
    send_all(fd, "{\"cmd\":\"status\"}\r\n\n{\"cmd\":\"status\"}\n", 37);
    json_decref(reply(fd));
    json_decref(reply(fd));
    close(fd);
    finish(&f);
}

static void test_huge_line(void **st)
{
    fixture_t f;
    nb_status_limits_t lim = { .max_line = 1024 };
    start(&f, &lim);
    int fd = client();
    char *big = malloc(5000);
    memset(big, 'a', 5000);
    send_all(fd, big, 5000);
    free(big);
    expect_error(reply(fd), "request line longer than 1024 bytes");
    assert_null(reply(fd)); /* then closed */
    close(fd);
    pump(5);
    assert_int_equal(nb_status_server_clients(f.srv), 0);
    /* a line just under the limit is fine */
    fd = client();
    char line[1100];
    int n = snprintf(line, sizeof line, "{\"cmd\":\"status\",\"pad\":\"%0*d\"}\n", 900, 0);
    assert_true(n < 1024);
    json_t *r = ask(fd, line);
    assert_true(json_is_true(json_object_get(r, "ok")));
    json_decref(r);
    close(fd);
    finish(&f);
}

static void test_never_reading_client(void **st)
{
    fixture_t f;
    nb_status_limits_t lim = { .max_output = 256 * 1024 };
    start(&f, &lim);
    big_size = 64 * 1024;
    int lazy = socket(AF_UNIX, SOCK_STREAM, 0);
    int small = 4096;
    setsockopt(lazy, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock_path);
    assert_int_equal(connect(lazy, (struct sockaddr *)&sa, sizeof sa), 0);
    fcntl(lazy, F_SETFL, O_NONBLOCK);
    pump(5);
    int other = client();
    assert_int_equal(nb_status_server_clients(f.srv), 2);
    /* Ask for 64 KiB replies again and again and never read them. */
    for (int i = 0; i < 100 && nb_status_server_clients(f.srv) == 2; i++) {
        ssize_t w = send(lazy, "{\"cmd\":\"big\"}\n", 14, MSG_NOSIGNAL);
        (void)w;
        pump(2);
    }
    assert_int_equal(nb_status_server_clients(f.srv), 1); /* dropped */
    json_t *r = ask(other, "{\"cmd\":\"status\"}\n"); /* others still served */
    assert_true(json_is_true(json_object_get(r, "ok")));
    json_decref(r);
    close(lazy);
    close(other);
    big_size = 8192;
    finish(&f);
}

static void test_disconnect_mid_reply(void **st)
{
    fixture_t f;
    start(&f, NULL);
    big_size = 4 << 20;
    for (int k = 0; k < 3; k++) {
        int fd = client();
        send_all(fd, "{\"cmd\":\"big\"}\n{\"cmd\":\"big\"}\n", 28);
        char tmp[100];
        pump(5);
        fcntl(fd, F_SETFL, O_NONBLOCK);
        ssize_t n = recv(fd, tmp, sizeof tmp, 0); /* read a little of the reply, then hang up */
        (void)n;
        close(fd);
        pump(20);
    }
    assert_int_equal(nb_status_server_clients(f.srv), 0);
    big_size = 8192;
    int fd = client();
    json_t *r = ask(fd, "{\"cmd\":\"status\"}\n");
    assert_true(json_is_true(json_object_get(r, "ok")));
    json_decref(r);
    close(fd);
    finish(&f);
}

static void test_idle_client(void **st)
{
    fixture_t f;
    nb_status_limits_t lim = { .idle_ms = 100 };
    start(&f, &lim);
    int idle = client(), busy = client();
    for (int i = 0; i < 10; i++) { /* busy asks every 30 ms: kept */
        json_t *r = ask(busy, "{\"cmd\":\"status\"}\n");
        assert_non_null(r);
        json_decref(r);
        pump(30);
    }
    assert_int_equal(nb_status_server_clients(f.srv), 1);
    assert_null(reply(idle)); /* closed by the server */
    close(idle);
    close(busy);
    finish(&f);
}

/* A client that sends an unfinished line and then one more byte every
 * 250 ms is closed idle_ms after its last complete request, not a sweep
 * period later and not never. */
static void test_idle_deadline(void **st)
{
    fixture_t f;
    nb_status_limits_t lim = { .idle_ms = 3000 };
    start(&f, &lim);
    int64_t t0 = nb_mono_ms();
    int fd = client();
    fcntl(fd, F_SETFL, O_NONBLOCK);
    send_all(fd, "{\"cmd\"", 6);
    int64_t closed_at = 0, next_byte = t0 + 250;
    while (!closed_at && nb_mono_ms() < t0 + 20000) {
        pump(5);
        char b;
        ssize_t n = recv(fd, &b, 1, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN))
            closed_at = nb_mono_ms();
        else if (nb_mono_ms() >= next_byte) {
            if (send(fd, " ", 1, MSG_NOSIGNAL) != 1)
                closed_at = nb_mono_ms();
            next_byte += 250;
        }
    }
    if (!closed_at)
        fail_msg("a client trickling an unfinished line was not closed within 20 s (idle_ms 3000)");
    int64_t took = closed_at - t0;
    print_message("idle client closed after %lld ms (idle_ms 3000)\n", (long long)took);
    assert_true(took >= 2900);
    assert_true(took <= 3600); /* the old quarter-period sweep closed it at 3750 or later */
    assert_int_equal(nb_status_server_clients(f.srv), 0);
    close(fd);
    finish(&f);
}

/* Runs in a child as uid: opens n connections, asks status on each, and
 * writes "OK BUSY last-error" to res; then holds them until hold closes. */
static void squat(uid_t uid, int n, int res, int hold)
{
    /* Drop what was inherited (other squatters' hold pipes, the server's
     * sockets): only the exit of its parent's end may end a squatter. */
    for (int fd = 3; fd < 1024; fd++)
        if (fd != res && fd != hold)
            close(fd);
    if (setgid(uid) != 0 || setuid(uid) != 0)
        _exit(10);
    int ok = 0, busy = 0;
    char last[256] = "-";
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock_path);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
            _exit(11);
        (void)!write(fd, "{\"cmd\":\"status\"}\n", 17);
        char buf[8192];
        size_t have = 0;
        struct pollfd pf = { .fd = fd, .events = POLLIN };
        while (have < sizeof buf - 1 && !memchr(buf, '\n', have) && poll(&pf, 1, 10000) == 1) {
            ssize_t r = read(fd, buf + have, sizeof buf - 1 - have);
            if (r <= 0)
                break;
            have += (size_t)r;
        }
        buf[have] = 0;
        if (strstr(buf, "\"ok\":true"))
            ok++;
        else if (strstr(buf, "status socket busy")) {
            busy++;
            char *nl = strchr(buf, '\n');
            if (nl)
                *nl = 0;
            snprintf(last, sizeof last, "%.200s", buf);
        }
    }
    dprintf(res, "%d %d %s\n", ok, busy, last);
    char b;
    (void)!read(hold, &b, 1);
    _exit(0);
}

typedef struct {
    pid_t pid;
    int hold;
    int ok, busy;
    char last[256];
} squatter_t;

static void squatter_start(squatter_t *q, uid_t uid, int n)
{
    int res[2], hold[2];
    assert_int_equal(pipe(res), 0);
    assert_int_equal(pipe(hold), 0);
    q->pid = fork();
    assert_true(q->pid >= 0);
    if (q->pid == 0) {
        close(res[0]);
        close(hold[1]);
        squat(uid, n, res[1], hold[0]);
    }
    close(res[1]);
    close(hold[0]);
    q->hold = hold[1];
    char line[400] = "";
    size_t have = 0;
    fcntl(res[0], F_SETFL, O_NONBLOCK);
    int64_t end = nb_mono_ms() + 60000;
    while (!memchr(line, '\n', have) && nb_mono_ms() < end) {
        pump(2);
        ssize_t r = read(res[0], line + have, sizeof line - 1 - have);
        if (r == 0)
            break;
        if (r > 0)
            have += (size_t)r;
    }
    line[have] = 0;
    close(res[0]);
    q->last[0] = 0;
    if (sscanf(line, "%d %d %255[^\n]", &q->ok, &q->busy, q->last) < 2)
        fail_msg("squatter uid %u reported nothing ('%s')", (unsigned)uid, line);
}

static void squatter_end(squatter_t *q)
{
    close(q->hold);
    int status = 0;
    int64_t end = nb_mono_ms() + 30000;
    while (waitpid(q->pid, &status, WNOHANG) != q->pid)
        if (nb_mono_ms() > end)
            fail_msg("squatter %d did not exit", (int)q->pid);
        else
            pump(1);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* Members of the socket's group fill every slot they may: one uid gets 8
 * connections, eight uids together 56 of 64; root is still served, and can
 * stop the daemon. */
static void test_uid_limits(void **st)
{
    if (geteuid() != 0) {
        print_message("not root: other uids are needed to squat the socket\n");
        skip();
    }
    fixture_t f;
    start(&f, NULL);
    char rundir[400];
    snprintf(rundir, sizeof rundir, "%s/run", dir);
    chmod(dir, 0755);
    chmod(rundir, 0755);
    chmod(sock_path, 0666);
    squatter_t q[8];
    /* one uid asks for 10: 8 served, 2 told why */
    squatter_start(&q[0], 60001, 10);
    assert_int_equal(q[0].ok, 8);
    assert_int_equal(q[0].busy, 2);
    if (!strstr(q[0].last, "uid 60001 already has 8 connections (at most 8 per user)"))
        fail_msg("per-user refusal: %s", q[0].last);
    /* six more uids take 8 each: 56 held by other users */
    for (int i = 1; i < 7; i++) {
        squatter_start(&q[i], (uid_t)(60001 + i), 8);
        assert_int_equal(q[i].ok, 8);
    }
    assert_int_equal(nb_status_server_clients(f.srv), 56);
    /* the next user finds the last 8 kept for root and the daemon's user */
    squatter_start(&q[7], 60008, 8);
    assert_int_equal(q[7].ok, 0);
    assert_int_equal(q[7].busy, 8);
    if (!strstr(q[7].last, "the last 8 of 64 are kept for uid 0"))
        fail_msg("reserve refusal: %s", q[7].last);
    /* root gets all 8 kept slots */
    int fds[8];
    for (int i = 0; i < 8; i++) {
        fds[i] = client();
        json_t *r = ask(fds[i], "{\"cmd\":\"status\"}\n");
        assert_non_null(r);
        assert_true(json_is_true(json_object_get(r, "ok")));
        json_decref(r);
    }
    json_t *r = ask(fds[7], "{\"cmd\":\"stop\"}\n");
    assert_true(json_is_true(json_object_get(r, "stopping")));
    json_decref(r);
    assert_int_equal(stops, 1);
    /* beyond 64 even root is refused, with a reason */
    int extra = client();
    expect_error(reply(extra), "it serves at most 64 clients at once");
    close(extra);
    for (int i = 0; i < 8; i++) {
        close(fds[i]);
        squatter_end(&q[i]);
    }
    pump(20);
    assert_int_equal(nb_status_server_clients(f.srv), 0);
    finish(&f);
}

static void test_stop_needs_uid(void **st)
{
    if (geteuid() != 0) {
        /* Another uid is needed to be refused: without root this test
         * cannot run, and says so (test_roundtrip checks that our own uid
         * is accepted). */
        print_message("skip: not root, so no foreign uid to be refused\n");
        skip();
    }
    fixture_t f;
    start(&f, NULL);
    /* Open the socket to everyone so that the SO_PEERCRED check, not the
     * file mode, is what refuses the stranger. */
    char rundir[400];
    snprintf(rundir, sizeof rundir, "%s/run", dir);
    chmod(dir, 0755);
    chmod(rundir, 0755);
    chmod(sock_path, 0666);
    pid_t pid = fork();
    if (pid == 0) {
        if (setgid(65534) != 0 || setuid(65534) != 0)
            _exit(10);
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock_path);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
            _exit(11);
        const char *req = "{\"cmd\":\"stop\"}\n{\"cmd\":\"status\"}\n";
        if (write(fd, req, strlen(req)) != (ssize_t)strlen(req))
            _exit(12);
        char buf[4096];
        size_t have = 0;
        while (have < sizeof buf - 1) {
            ssize_t n = read(fd, buf + have, sizeof buf - 1 - have);
            if (n <= 0)
                break;
            have += (size_t)n;
            buf[have] = 0;
            char *first = strchr(buf, '\n');
            if (first && strchr(first + 1, '\n'))
                break;
        }
        buf[have] = 0;
        int ok = strstr(buf, "permission denied: 'stop' needs uid 0") && strstr(buf, "\"state\":");
        _exit(ok ? 0 : 13);
    }
    int status = 0;
    for (int i = 0; i < 3000; i++) {
        pump(1);
        if (waitpid(pid, &status, WNOHANG) == pid)
            break;
    }
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(stops, 0);
    finish(&f);
}

static void test_stale_and_live_socket(void **st)
{
    fixture_t f;
    start(&f, NULL);
    nb_status_server_t *second;
    char err[256];
    assert_int_equal(nb_status_server_start(&loop, sock_path, NULL, &second, err, sizeof err), NB_ESTATE);
    assert_non_null(strstr(err, "is in use by a running daemon"));
    assert_null(second);
    finish(&f);
    /* a socket file whose daemon died */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock_path);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    close(fd);
    start(&f, NULL);
    json_t *r = ask(client(), "{\"cmd\":\"status\"}\n");
    assert_true(json_is_true(json_object_get(r, "ok")));
    json_decref(r);
    finish(&f);
    /* not a socket: refused, left alone */
    FILE *fp = fopen(sock_path, "w");
    fclose(fp);
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(nb_status_server_start(&loop, sock_path, NULL, &second, err, sizeof err), NB_ESTATE);
    assert_non_null(strstr(err, "exists and is not a socket"));
    assert_int_equal(access(sock_path, F_OK), 0);
    unlink(sock_path);
    /* too long a path */
    char longp[200];
    memset(longp, 'p', sizeof longp - 1);
    longp[sizeof longp - 1] = 0;
    assert_int_equal(nb_status_server_start(&loop, longp, NULL, &second, err, sizeof err), NB_EINVAL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* A socket path without a directory part ("d.sock", relative to the
 * working directory): the socket is made there, not a directory of that
 * name (dirname() returns "." without editing its argument). */
static void test_bare_socket_name(void **st)
{
    (void)st;
    char cwd[512];
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(dir), 0);
    nb_status_server_t *srv;
    char err[256];
    assert_int_equal(uv_loop_init(&loop), 0);
    int rc = nb_status_server_start(&loop, "bare.sock", NULL, &srv, err, sizeof err);
    struct stat sb;
    int is_sock = stat("bare.sock", &sb) == 0 && S_ISSOCK(sb.st_mode);
    if (rc == 0)
        nb_status_server_close(srv, NULL, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    unlink("bare.sock");
    rmdir("bare.sock");
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(rc, 0);
    assert_true(is_sock);
}

static void test_metrics_registry(void **st)
{
    nb_metrics_t *m = nb_metrics_new();
    assert_int_equal(nb_metrics_add(m, "bad_name", NULL, NB_METRIC_GAUGE, ""), NB_EINVAL);
    assert_int_equal(nb_metrics_add(m, "nebula_X", NULL, NB_METRIC_GAUGE, ""), NB_EINVAL);
    assert_int_equal(nb_metrics_add(m, "nebula_a", "peer=east", NB_METRIC_GAUGE, ""), NB_EINVAL);
    assert_int_equal(nb_metrics_add(m, "nebula_a", "peer=\"e\"x", NB_METRIC_GAUGE, ""), NB_EINVAL);
    int a = nb_metrics_add(m, "nebula_rtt_seconds", "peer=\"east\"", NB_METRIC_GAUGE, "Round trip");
    int b = nb_metrics_add(m, "nebula_steps_total", NULL, NB_METRIC_COUNTER, "Steps");
    int c = nb_metrics_add(m, "nebula_rtt_seconds", "peer=\"west\"", NB_METRIC_GAUGE, "Round trip");
    assert_int_equal(nb_metrics_add(m, "nebula_rtt_seconds", "peer=\"east\"", NB_METRIC_GAUGE, "x"), a);
    assert_int_equal(nb_metrics_add(m, "nebula_rtt_seconds", "peer=\"x\"", NB_METRIC_COUNTER, "x"), NB_EINVAL);
    assert_int_equal(nb_metrics_set(m, a, 0.025), 0);
    assert_int_equal(nb_metrics_set(m, c, 0.5), 0);
    assert_int_equal(nb_metrics_inc(m, b, 3), 0);
    assert_int_equal(nb_metrics_set(m, b, 2), NB_EINVAL); /* counters never go down */
    assert_int_equal(nb_metrics_inc(m, b, -1), NB_EINVAL);
    assert_int_equal(nb_metrics_set(m, 99, 1), NB_EINVAL);
    assert_true(isnan(nb_metrics_get(m, 99)));
    char *text = nb_metrics_render(m, NULL);
    assert_string_equal(text, "# HELP nebula_rtt_seconds Round trip\n# TYPE nebula_rtt_seconds gauge\n"
                              "nebula_rtt_seconds{peer=\"east\"} 0.025000000000000001\n"
                              "nebula_rtt_seconds{peer=\"west\"} 0.5\n"
                              "# HELP nebula_steps_total Steps\n# TYPE nebula_steps_total counter\n"
                              "nebula_steps_total 3\n");
    free(text);
    for (int i = 0; i < 300; i++) {
        char l[32];
        snprintf(l, sizeof l, "i=\"%d\"", i);
        int rc = nb_metrics_add(m, "nebula_many", l, NB_METRIC_GAUGE, "");
        if (rc < 0) {
            assert_int_equal(rc, NB_ELIMIT);
            break;
        }
    }
    nb_metrics_free(m);
}

static void test_trace_ring(void **st)
{
    assert_null(nb_trace_new(0));
    nb_trace_t *t = nb_trace_new(4);
    int k = nb_trace_track(t, "stage a", false);
    assert_int_equal(nb_trace_track(t, "stage a", false), k);
    nb_trace_event_t e = { .track = (int16_t)k, .kind = NB_TEV_BACKWARD };
    for (int s = 0; s < 10; s++) {
        e.step = s;
        assert_int_equal(nb_trace_add(t, &e), 0);
    }
    assert_int_equal(nb_trace_count(t), 4); /* oldest overwritten */
    e.track = 7;
    assert_int_equal(nb_trace_add(t, &e), NB_EINVAL);
    e.track = (int16_t)k;
    e.kind = NB_TEV_KIND_COUNT;
    assert_int_equal(nb_trace_add(t, &e), NB_EINVAL);
    json_t *j = nb_trace_to_json(t, 0);
    size_t i, nx = 0;
    json_t *ev;
    json_array_foreach(json_object_get(j, "traceEvents"), i, ev)
    {
        if (strcmp(json_string_value(json_object_get(ev, "ph")), "X") == 0) {
            assert_true(json_integer_value(json_object_get(json_object_get(ev, "args"), "step")) >= 6);
            assert_string_equal(json_string_value(json_object_get(ev, "name")), "backward");
            nx++;
        }
    }
    assert_int_equal(nx, 4);
    json_decref(j);
    nb_trace_free(t);
}

static int setup(void **st)
{
    snprintf(dir, sizeof dir, "/tmp/nb-status-test-XXXXXX");
    assert_non_null(mkdtemp(dir));
    /* The server creates the socket's directory itself. */
    snprintf(sock_path, sizeof sock_path, "%.40s/run/d.sock", dir);
    return 0;
}

static int teardown(void **st)
{
    char p[400];
    snprintf(p, sizeof p, "%s/run", dir);
    unlink(sock_path);
    rmdir(p);
    rmdir(dir);
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bare_socket_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_huge_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_never_reading_client, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disconnect_mid_reply, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_client, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_uid_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_needs_uid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_and_live_socket, setup, teardown),
        cmocka_unit_test(test_metrics_registry),
        cmocka_unit_test(test_trace_ring),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
