/*
 * nebula-netprobe.c - measures one Nebula link the way the coordinator does:
 * a TLS connection between two named endpoints, then RTT and bulk bandwidth
 * in both directions with the transport's probes.
 *
 *   nebula-netprobe --listen HOST:PORT --name B --peer A --cert B.pem --key B.key --ca ca.pem
 *   nebula-netprobe --connect HOST:PORT --name A --peer B --cert A.pem --key A.key --ca ca.pem
 *                   [--bytes N] [--rounds R] [--delay-ms D]
 *
 * The listening side prints "listening on HOST:PORT" (the bound port, also
 * for port 0) and serves until killed (or --once: until its peer leaves).
 * The connecting side prints lines "rtt_ms X", "tx_mbit X", "rx_mbit X"
 * (bandwidth in 10^6 bit/s, the median of R rounds) and exits 0, or exits 1
 * with a message. --delay-ms is the transport's latency emulation (tests and
 * benchmarks only).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/common.h"
#include "daemon/config/config.h"
#include "daemon/log.h"
#include "daemon/net/net.h"
#include "daemon/net/probe.h"
#include "daemon/core/version.h"

typedef struct {
    uv_loop_t *loop;
    nb_net_t *net;
    int client, once, rounds, round, phase, failed;
    uint64_t bytes;
    double rtt, tx[32], rx[32];
    uv_timer_t give_up;
} app_t;

static app_t app;

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void finish(int failed)
{
    static int finished;
    if (finished)
        return;
    finished = 1;
    app.failed = failed;
    uv_timer_stop(&app.give_up);
    uv_close((uv_handle_t *)&app.give_up, NULL);
    nb_net_close(app.net, NULL, NULL);
}

static void next_step(nb_conn_t *c);

static void on_bw(nb_conn_t *c, int st, double bps, void *ud)
{
    if (st) {
        fprintf(stderr, "nebula-netprobe: bandwidth probe failed: %s\n", nb_strerror(st));
        finish(1);
        return;
    }
    if (app.phase == 1)
        app.tx[app.round] = bps * 8 / 1e6;
    else
        app.rx[app.round] = bps * 8 / 1e6;
    next_step(c);
}

static void on_rtt(nb_conn_t *c, int st, double ms, void *ud)
{
    if (st) {
        fprintf(stderr, "nebula-netprobe: ping failed: %s\n", nb_strerror(st));
        finish(1);
        return;
    }
    app.rtt = ms;
    next_step(c);
}

/* rtt, then rounds of (send, receive) */
static void next_step(nb_conn_t *c)
{
    int rc;
    if (app.phase == 0 || app.phase == 2) {
        if (app.phase == 2)
            app.round++;
        if (app.round == app.rounds) {
            qsort(app.tx, (size_t)app.rounds, sizeof(double), cmp_d);
            qsort(app.rx, (size_t)app.rounds, sizeof(double), cmp_d);
            printf("rtt_ms %.3f\ntx_mbit %.2f\nrx_mbit %.2f\n", app.rtt, app.tx[app.rounds / 2],
                   app.rx[app.rounds / 2]);
            fflush(stdout);
            finish(0);
            return;
        }
        app.phase = 1;
        rc = nb_probe_bw_send(c, app.bytes, on_bw, NULL);
    } else {
        app.phase = 2;
        rc = nb_probe_bw_recv(c, app.bytes, on_bw, NULL);
    }
    if (rc) {
        fprintf(stderr, "nebula-netprobe: cannot start probe: %s\n", nb_strerror(rc));
        finish(1);
    }
}

static void on_ready(nb_conn_t *c, void *ud)
{
    if (!app.client)
        return;
    if (nb_probe_rtt(c, on_rtt, NULL) != 0)
        finish(1);
}

static void on_closed(nb_conn_t *c, int err, void *ud)
{
    if (app.once && !app.client)
        finish(0);
}

static void on_give_up(uv_timer_t *t)
{
    fprintf(stderr, "nebula-netprobe: no result in time\n");
    finish(1);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: nebula-netprobe --listen HOST:PORT --name N --peer P --cert F --key F --ca F [--once]\n"
            "       nebula-netprobe --connect HOST:PORT --name N --peer P --cert F --key F --ca F\n"
            "                       [--bytes N] [--rounds 1..32] [--delay-ms D] [--timeout S]\n"
            "       nebula-netprobe --help | --version\n"
            "Measures one link as the coordinator does: a mutually authenticated TLS connection\n"
            "between daemon names N (this side, CN of --cert) and P (the peer), then the round-trip\n"
            "time and bulk bandwidth both ways. The listener serves until killed (--once: until its\n"
            "peer leaves); the connecting side prints 'rtt_ms X', 'tx_mbit X', 'rx_mbit X' (median\n"
            "of --rounds rounds of --bytes bytes, default 3 x 16 MiB) and exits.\n"
            "--delay-ms adds emulated latency (tests only); --timeout gives up after S seconds.\n"
            "Exit status: 0 measured, 1 failed (refused, timed out), 2 usage.\n");
}

int main(int argc, char **argv)
{
    static struct option opts[] = {
        { "listen", 1, 0, 'l' }, { "connect", 1, 0, 'c' }, { "name", 1, 0, 'n' },
        { "peer", 1, 0, 'p' },   { "cert", 1, 0, 'C' },    { "key", 1, 0, 'K' },
        { "ca", 1, 0, 'A' },     { "bytes", 1, 0, 'b' },   { "rounds", 1, 0, 'r' },
        { "delay-ms", 1, 0, 'd' }, { "once", 0, 0, 'o' },  { "timeout", 1, 0, 't' },
        { "help", 0, 0, 'h' },   { "version", 0, 0, 'V' },
        { 0, 0, 0, 0 }
    };
    char *listen = NULL, *connect = NULL, *name = NULL, *peer = NULL;
    nb_net_cfg_t cfg;
    nb_net_cfg_default(&cfg);
    app.bytes = 16u << 20;
    app.rounds = 3;
    int timeout_s = 120, o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'l': listen = optarg; break;
        case 'c': connect = optarg; break;
        case 'n': name = optarg; break;
        case 'p': peer = optarg; break;
        case 'C': cfg.tls.cert_file = optarg; break;
        case 'K': cfg.tls.key_file = optarg; break;
        case 'A': cfg.tls.ca_file = optarg; break;
        case 'b': app.bytes = strtoull(optarg, NULL, 0); break;
        case 'r': app.rounds = atoi(optarg); break;
        case 'd': cfg.emu_send_delay_ms = (uint32_t)atoi(optarg); break;
        case 'o': app.once = 1; break;
        case 't': timeout_s = atoi(optarg); break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("nebula-netprobe %s\n", NB_VERSION); return 0;
        default: usage(stderr); return 2;
        }
    }
    if ((!listen == !connect) || !name || !peer || !cfg.tls.cert_file || !cfg.tls.key_file ||
        !cfg.tls.ca_file || app.rounds < 1 || app.rounds > 32) {
        usage(stderr);
        return 2;
    }
    nb_log_init("nebula-netprobe", NB_LOG_WARN);
    const char *allowed[1] = { peer };
    cfg.name = name;
    cfg.role = NEBULA__ROLE__ROLE_TOOL;
    cfg.allowed_peers = allowed;
    cfg.n_allowed_peers = listen ? 1 : 0;
    cfg.dead_after_ms = 30000; /* a saturated slow link may delay pongs */
    app.client = connect != NULL;
    app.loop = uv_default_loop();
    nb_net_cb_t cb = { on_ready, NULL, NULL, on_closed };
    int rc = nb_net_new(app.loop, &cfg, &cb, NULL, &app.net);
    nb_cfg_addr_t addr;
    char why[160];
    if (rc == 0 && nb_cfg_parse_addr(listen ? listen : connect, &addr, listen ? 0 : 1, why, sizeof why) != 0) {
        fprintf(stderr, "nebula-netprobe: %s: %s (0 lets --listen pick a port)\n", listen ? "--listen" : "--connect", why);
        return 2;
    }
    int bound = 0;
    if (rc == 0)
        rc = listen ? nb_net_listen(app.net, addr.host, addr.port, &bound)
                    : nb_net_connect(app.net, peer, addr.host, addr.port);
    if (rc == 0 && listen) {
        /* port 0 binds any free port: say which */
        printf("listening on %s:%d\n", addr.host, bound);
        fflush(stdout);
    }
    if (rc) {
        fprintf(stderr, "nebula-netprobe: %s\n", nb_strerror(rc));
        return 1;
    }
    uv_timer_init(app.loop, &app.give_up);
    if (app.client)
        uv_timer_start(&app.give_up, on_give_up, (uint64_t)timeout_s * 1000, 0);
    else
        uv_unref((uv_handle_t *)&app.give_up);
    uv_run(app.loop, UV_RUN_DEFAULT);
    uv_loop_close(app.loop);
    return app.failed;
}
