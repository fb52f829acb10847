/*
 * test_stage_sendahead.c - receive-side back-pressure of a real stage
 * daemon: nebulad (stage "b") runs as a child process; this test plays its
 * coordinator (sends the Job, never a Plan) and its upstream neighbour "a",
 * which then sends 160 activations of 1 MiB ahead of any schedule. The
 * stage buffers what the schedule allows in flight and stops reading; its
 * resident memory stays bounded, the sender is held back by TCP, and the
 * job does not fail. Loopback only.
 */
#include "tests/net/net_harness.h"
#include <signal.h>
#include <sys/wait.h>
#include "daemon/config/config.h"
#include "daemon/pipeline/job.h"

#define N_SEND 160
#define ROWS 256
#define COLS 1024 /* 256 x 1024 fp32 = 1 MiB per tensor */

static uv_loop_t g_loop;
static char g_work[200];
static pid_t g_pid = -1;

static long rss_kib_of(pid_t pid)
{
    char p[64], line[256];
    snprintf(p, sizeof p, "/proc/%d/status", (int)pid);
    FILE *f = fopen(p, "r");
    long kib = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t l = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &l) != 0) {
        close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

static void write_file(const char *name, const char *text)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", g_work, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* ---- the fake upstream's sender ---- */
typedef struct {
    h_ep_t ep;
    uint64_t job_id;
    int queued;
} up_t;

static uint8_t g_act[ROWS * COLS * 4];

static void up_send_more(up_t *u)
{
    while (u->queued < N_SEND && u->ep.conn) {
        uint64_t shape[2] = { ROWS, COLS };
        Nebula__Frame f = NEBULA__FRAME__INIT;
        Nebula__Tensor t = NEBULA__TENSOR__INIT;
        t.job_id = u->job_id;
        t.kind = NEBULA__TENSOR_KIND__KIND_ACTIVATION;
        t.dtype = NEBULA__DTYPE__DTYPE_F32;
        t.shape = shape;
        t.n_shape = 2;
        t.codec = "raw";
        t.decoded_bytes = sizeof g_act;
        t.from_stage = 0;
        t.to_stage = 1;
        t.step = 0;
        t.micro_batch = (uint32_t)u->queued;
        f.body_case = NEBULA__FRAME__BODY_TENSOR;
        f.tensor = &t;
        int rc = nb_conn_send(u->ep.conn, &f, g_act, sizeof g_act, NULL, NULL);
        if (rc == NB_ELIMIT)
            return; /* wait for on_writable */
        assert_int_equal(rc, 0);
        u->queued++;
    }
}

static void test_send_ahead(void **state)
{
    const char *build = getenv("NB_BUILD") ? getenv("NB_BUILD") : "build";
    snprintf(g_work, sizeof g_work, "/tmp/nb-sendahead.XXXXXX");
    assert_non_null(mkdtemp(g_work));
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             ". tests/support/pipeline.sh && nb_pipe_prepare %s %s/bin && mkdir -p %s/run", g_work,
             build, g_work);
    assert_int_equal(system(cmd), 0);
    snprintf(h_dir, sizeof h_dir, "%s/certs", g_work); /* the harness's certificates */
    int pc = free_port(), pa = free_port(), pb = free_port();
    assert_true(pc > 0 && pa > 0 && pb > 0);

    char yaml[4096];
    snprintf(yaml, sizeof yaml,
             "name: coord\nrole: coordinator\nlisten: 127.0.0.1:%d\n"
             "tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}\n"
             "status_socket: run/coord.sock\n"
             "job:\n"
             "  model: {n_layer: 2, d_model: 32, n_head: 4, d_ff: 64, vocab: 256, max_seq: 16, "
             "tie_embeddings: false}\n"
             "  data: data.tok\n  batch: 4\n  seq_len: 16\n  steps: 5\n  micro_batches: 2\n"
             "  clusters:\n    - {name: a, address: 127.0.0.1:%d}\n"
             "    - {name: b, address: 127.0.0.1:%d}\n",
             pc, pa, pb);
    write_file("coord.yaml", yaml);
    snprintf(cmd, sizeof cmd,
             ". tests/support/pipeline.sh && cd %s && nb_stage_yaml b.yaml b 127.0.0.1:%d "
             "127.0.0.1:%d 0.2 2",
             g_work, pb, pc);
    assert_int_equal(system(cmd), 0);

    /* the job the coordinator would send */
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/coord.yaml", g_work);
    nb_config_t *cc = calloc(1, sizeof *cc);
    if (nb_cfg_load(path, cc, err, sizeof err) != 0)
        fail_msg("coordinator config: %s", err);
    nb_job_desc_t *jd = calloc(1, sizeof *jd);
    uint64_t job_id = 0x5e0d;
    if (nb_job_from_cfg(&cc->job, 2, job_id, jd, err, sizeof err) != 0)
        fail_msg("job: %s", err);

    /* the stage daemon */
    snprintf(path, sizeof path, "%s/b.yaml", g_work);
    char bin[512], logp[512];
    snprintf(bin, sizeof bin, "%s/bin/nebulad", build);
    snprintf(logp, sizeof logp, "%s/b.log", g_work);
    g_pid = fork();
    if (g_pid == 0) {
        FILE *lf = freopen(logp, "w", stdout);
        (void)lf;
        dup2(1, 2);
        execl(bin, bin, "--config", path, (char *)NULL);
        _exit(127);
    }
    assert_true(g_pid > 0);

    uv_loop_init(&g_loop);
    static const char *const allow_b[] = { "b" };
    h_ep_t coord = { 0 };
    nb_net_cfg_t cfg;
    h_cfg(&cfg, &coord, "coord", "coord", allow_b, 1);
    cfg.role = NEBULA__ROLE__ROLE_COORDINATOR;
    cfg.heartbeat_ms = 200;
    cfg.dead_after_ms = 20000;
    assert_int_equal(nb_net_new(&g_loop, &cfg, &h_cb, &coord, &coord.net), 0);
    assert_int_equal(nb_net_listen(coord.net, "127.0.0.1", pc, NULL), 0);
    assert_true(h_run_until(&g_loop, &coord.ready, 1, 60000)); /* the stage joined */

    nb_job_msg_store_t *store = calloc(1, sizeof *store);
    Nebula__Job jm = NEBULA__JOB__INIT;
    nb_job_to_msg(jd, 1, store, &jm);
    Nebula__Frame jf = NEBULA__FRAME__INIT;
    jf.body_case = NEBULA__FRAME__BODY_JOB;
    jf.job = &jm;
    assert_int_equal(nb_conn_send(coord.conn, &jf, NULL, 0, NULL, NULL), 0);

    /* the upstream neighbour dials once the stage admits it */
    up_t up = { .job_id = job_id };
    h_cfg(&cfg, &up.ep, "a", "a", NULL, 0);
    cfg.dead_after_ms = 20000;
    cfg.backoff_max_ms = 100;
    h_ep_new(&g_loop, &up.ep, &cfg, 0);
    nb_net_set_job(up.ep.net, job_id);
    assert_int_equal(nb_net_connect(up.ep.net, "b", "127.0.0.1", pb), 0);
    assert_true(h_run_until(&g_loop, &up.ep.ready, 1, 60000));
    h_run_ms(&g_loop, 300);
    long base = rss_kib_of(g_pid);
    assert_true(base > 0);

    /* send ahead: far more than any schedule allows, no Plan at all */
    const nb_net_stats_t *s = nb_net_stats(up.ep.net);
    long peak = base;
    uint64_t last_tx = 0;
    int still = 0;
    for (int i = 0; i < 6000 && still < 100; i++) { /* until the sender is held back 1 s */
        up_send_more(&up);
        h_run_ms(&g_loop, 10);
        long r = rss_kib_of(g_pid);
        assert_true(r > 0); /* the daemon is alive */
        if (r > peak)
            peak = r;
        still = s->payload_tx == last_tx ? still + 1 : 0;
        last_tx = s->payload_tx;
    }
    print_message("stage RSS %ld KiB at start, peak %ld KiB; the sender got %llu of %d "
                  "tensors out (1 MiB each) before it was held back\n",
                  base, peak, (unsigned long long)(s->payload_tx / sizeof g_act), N_SEND);
#ifdef __SANITIZE_ADDRESS__
    long bound = 96 * 1024; /* ASan's shadow and quarantine */
#else
    long bound = 48 * 1024; /* 4 tensors, TLS buffers, allocator slack */
#endif
    assert_true(peak - base < bound); /* without back-pressure: +160 MiB */
    assert_true(s->payload_tx < (uint64_t)N_SEND * sizeof g_act);
    assert_int_equal(up.ep.closed, 0); /* the link is up: the job did not fail */
    assert_int_equal(coord.closed, 0);

    kill(g_pid, SIGTERM);
    int st;
    waitpid(g_pid, &st, 0);
    g_pid = -1;
    h_ep_close(&g_loop, &up.ep);
    h_ep_close(&g_loop, &coord);
    h_loop_end(&g_loop);
    free(store);
    free(jd);
    free(cc);
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_work);
    assert_int_equal(system(cmd), 0);
}

static int teardown(void **state)
{
    if (g_pid > 0) {
        kill(g_pid, SIGKILL);
        waitpid(g_pid, NULL, 0);
    }
    return 0;
}

int main(void)
{
    h_log_start();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_send_ahead, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
