/*
 * nebulactl.c - talks to a running nebulad through its status socket, as an
 * operator would: status, metrics, trace, stop. One request line, one reply
 * line (daemon/status/status_server.h).
 *
 * Exit status: 0 ok; 1 the daemon replied with an error; 2 usage;
 * 3 cannot connect to the socket; 4 no valid reply (timeout, closed, not
 * JSON); 5 cannot write the output file.
 */
#include <errno.h>
#include <getopt.h>
#include <glob.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include "daemon/clock.h"
#include "daemon/config/config.h"
#include "daemon/planner/offline.h"
#include "daemon/planner/plan_config.h"
#include "daemon/core/version.h"

enum { EXIT_OK = 0, EXIT_REPLY = 1, EXIT_USAGE = 2, EXIT_CONNECT = 3, EXIT_PROTO = 4, EXIT_OUTPUT = 5 };

#define REPLY_MAX ((size_t)512 << 20)

typedef struct {
    const char *socket;
    bool json;
    const char *out;
    long steps; /* trace: -1 = daemon default */
    int timeout_ms;
} ctl_opts_t;

/* One row per subcommand; a new one (e.g. "plan", printed by the planner's
 * formatter) is one more row. */
typedef struct {
    const char *name;
    const char *help;
    int (*print)(const ctl_opts_t *o, json_t *reply);
} ctl_cmd_t;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: nebulactl [--socket PATH | --name NAME] [--json] [--timeout S] COMMAND\n"
            "commands:\n"
            "  status               state, peers and job of the daemon\n"
            "  metrics              Prometheus text exposition\n"
            "  trace [-o FILE] [--steps N]\n"
            "                       Chrome trace-event JSON of the last N steps\n"
            "                       (open in ui.perfetto.dev or chrome://tracing)\n"
            "  stop                 orderly stop (root or the daemon's user)\n"
            "  checkpoint           coordinator: every stage writes a checkpoint at the next\n"
            "                       step boundary (privileged; docs/pipeline.md)\n"
            "  plan [--rows N] [--bandwidth-mbit N]\n"
            "                       the coordinator's ranked plans for its current\n"
            "                       measurements (or as if every link ran at N Mbit/s)\n"
            "  plan --job FILE --measurements FILE [--bandwidth-mbit N] [--rows N]\n"
            "                       offline: plan a job config against a measurements file\n"
            "  plan-pin --m N [--schedule S] [--forward C] [--backward C] | --clear\n"
            "                       run this plan from the next step (privileged)\n"
            "options:\n"
            "  --socket PATH        the daemon's status socket\n"
            "  --name NAME          same as --socket /run/nebula/NAME.sock\n"
            "                       (default: $NEBULA_SOCKET, else the only socket in /run/nebula)\n"
            "  --json               print the daemon's JSON reply as is\n"
            "  --timeout S          seconds to wait for the reply (default 10)\n"
            "  --help, --version\n"
            "exit status: 0 ok, 1 error reply, 2 usage, 3 cannot connect, 4 no valid reply,\n"
            "             5 cannot write the output file\n");
}

/* ---- transport ------------------------------------------------------------------- */

static int connect_socket(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sa.sun_path) {
        fprintf(stderr, "nebulactl: socket path too long: %s\n", path);
        return -1;
    }
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        fprintf(stderr, "nebulactl: cannot connect to %s: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

/* Sends req and reads one reply line; returns the parsed object or NULL
 * (message printed). */
static json_t *roundtrip(int fd, json_t *req, int timeout_ms)
{
    char *line = json_dumps(req, JSON_COMPACT);
    if (!line)
        return NULL;
    size_t len = strlen(line);
    line[len] = '\n';
    size_t off = 0;
    int send_err = 0;
    while (off < len + 1) {
        ssize_t n = send(fd, line + off, len + 1 - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) {
            /* A daemon that refuses a client says why, then closes: the
             * reason may be waiting to be read. */
            send_err = errno;
            break;
        }
        if (n < 0) {
            fprintf(stderr, "nebulactl: send: %s\n", strerror(errno));
            free(line);
            return NULL;
        }
        off += (size_t)n;
    }
    free(line);
    size_t cap = 65536, have = 0;
    char *buf = malloc(cap);
    int64_t deadline = nb_mono_ms() + timeout_ms;
    while (buf) {
        char *nl = have ? memchr(buf, '\n', have) : NULL;
        if (nl) {
            json_error_t e;
            json_t *r = json_loadb(buf, (size_t)(nl - buf), 0, &e);
            if (!r || !json_is_object(r)) {
                fprintf(stderr, "nebulactl: reply is not a JSON object: %s\n", r ? "" : e.text);
                json_decref(r);
                r = NULL;
            }
            free(buf);
            return r;
        }
        int left = (int)(deadline - nb_mono_ms());
        struct pollfd p = { .fd = fd, .events = POLLIN };
        int pr = left > 0 ? poll(&p, 1, left) : 0;
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0) {
            fprintf(stderr, "nebulactl: no reply within %d ms\n", timeout_ms);
            break;
        }
        if (have == cap) {
            if (cap >= REPLY_MAX) {
                fprintf(stderr, "nebulactl: reply larger than %zu bytes\n", REPLY_MAX);
                break;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb)
                break;
            buf = nb;
            cap *= 2;
        }
        ssize_t n = recv(fd, buf + have, cap - have, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (send_err)
                fprintf(stderr, "nebulactl: send: %s\n", strerror(send_err));
            else
                fprintf(stderr, "nebulactl: the daemon closed the connection without a reply\n");
            break;
        }
        have += (size_t)n;
    }
    free(buf);
    return NULL;
}

/* ---- human formatting ---------------------------------------------------------------- */

static const char *str(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "-";
}

/* A number, or "-" when null/missing. */
static const char *num(char *buf, size_t n, json_t *o, const char *k, const char *fmt, double scale)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_number(v))
        return "-";
    snprintf(buf, n, fmt, json_number_value(v) * scale);
    return buf;
}

static const char *bytes(char *buf, size_t n, json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_number(v))
        return "-";
    double b = json_number_value(v);
    const char *u[] = { "B", "KiB", "MiB", "GiB", "TiB" };
    int i = 0;
    while (b >= 1024 && i < 4) {
        b /= 1024;
        i++;
    }
    snprintf(buf, n, i ? "%.1f %s" : "%.0f %s", b, u[i]);
    return buf;
}

static int print_status(const ctl_opts_t *o, json_t *r)
{
    char a[64], b[64], c[64], d[64];
    printf("name      %s\n", str(r, "name"));
    printf("role      %s\n", str(r, "role"));
    printf("version   %s\n", str(r, "version"));
    json_t *k = json_object_get(r, "kernels");
    printf("kernels   %s (blas %s)\n", str(k, "cpu_level"), str(k, "blas_core"));
    printf("state     %s (%s)\n", str(r, "state"), str(r, "detail"));
    printf("uptime    %s s\n", num(a, sizeof a, r, "uptime_s", "%.1f", 1));
    printf("pid       %s\n", num(a, sizeof a, r, "pid", "%.0f", 1));
    printf("listen    %s\n", str(r, "listen"));
    if (str(r, "kernel_tls")[0] && strcmp(str(r, "kernel_tls"), "-") != 0)
        printf("tls       %s\n", str(r, "kernel_tls"));
    json_t *peers = json_object_get(r, "peers");
    printf("\n%-16s %-12s %-24s %-11s %8s %10s %10s %10s %-7s\n", "PEER", "ROLE", "ADDRESS", "STATE", "RTT_MS",
           "MBIT/S", "SENT", "RECEIVED", "TLS");
    size_t i;
    json_t *p;
    json_array_foreach(peers, i, p)
    {
        printf("%-16s %-12s %-24s %-11s %8s %10s %10s %10s %-7s\n", str(p, "name"), str(p, "role"),
               str(p, "address"), str(p, "state"), num(a, sizeof a, p, "rtt_ms", "%.1f", 1),
               num(b, sizeof b, p, "bandwidth_mbps", "%.1f", 1), bytes(c, sizeof c, p, "bytes_sent"),
               bytes(d, sizeof d, p, "bytes_received"), str(p, "tls")[0] ? str(p, "tls") : "-");
    }
    if (json_array_size(peers) == 0)
        printf("(no peers)\n");
    json_t *links = json_object_get(r, "links");
    if (json_array_size(links) > 0) {
        printf("\n%-16s %-16s %8s %10s %10s\n", "LINK FROM", "TO", "RTT_MS", "MBIT/S", "BYTES");
        json_array_foreach(links, i, p)
        {
            printf("%-16s %-16s %8s %10s %10s\n", str(p, "from"), str(p, "to"),
                   num(a, sizeof a, p, "rtt_ms", "%.1f", 1), num(b, sizeof b, p, "mbps", "%.1f", 1),
                   bytes(c, sizeof c, p, "bytes"));
        }
    }
    json_t *mem = json_object_get(r, "memory");
    if (json_is_object(mem)) {
        json_t *mm = json_object_get(mem, "model"), *hp = json_object_get(mem, "heap");
        char e[64], f[64];
        printf("\nmemory    rss %s  peak %s  (anonymous %s, files %s)  threads %s\n", bytes(a, sizeof a, mem, "rss"),
               bytes(b, sizeof b, mem, "peak_rss"), bytes(c, sizeof c, mem, "rss_anon"),
               bytes(d, sizeof d, mem, "rss_file"), num(e, sizeof e, mem, "threads", "%.0f", 1));
        printf("model     %s = weights %s + gradients %s + optimizer %s + activations %s\n",
               bytes(a, sizeof a, mm, "total"), bytes(b, sizeof b, mm, "weights"), bytes(c, sizeof c, mm, "gradients"),
               bytes(d, sizeof d, mm, "optimizer"), bytes(e, sizeof e, mm, "activations"));
        printf("heap      in use %s (mapped %s)  free %s  other than model %s\n", bytes(a, sizeof a, hp, "in_use"),
               bytes(b, sizeof b, hp, "mmapped"), bytes(c, sizeof c, hp, "free"), bytes(f, sizeof f, mem, "other"));
        json_t *dv = json_object_get(mem, "device");
        if (json_is_object(dv)) /* a stage daemon: its compute device */
            printf("device    %s  free %s of %s\n", str(dv, "name"), bytes(a, sizeof a, dv, "free"),
                   bytes(b, sizeof b, dv, "total"));
    }
    json_t *j = json_object_get(r, "job");
    if (!json_is_object(j)) {
        printf("\njob       none on this daemon\n");
        return EXIT_OK;
    }
    char e[64];
    printf("\njob       step %s/%s  loss %s  tokens/s %s  step %s s\n", num(a, sizeof a, j, "step", "%.0f", 1),
           num(b, sizeof b, j, "steps", "%.0f", 1), num(c, sizeof c, j, "loss", "%.4f", 1),
           num(d, sizeof d, j, "tokens_per_s", "%.0f", 1), num(e, sizeof e, j, "step_time_s", "%.3f", 1));
    if (json_is_number(json_object_get(j, "eval_loss")))
        printf("held-out  loss %s  after step %s\n", num(a, sizeof a, j, "eval_loss", "%.4f", 1),
               num(b, sizeof b, j, "eval_step", "%.0f", 1));
    printf("bubble    measured %s  predicted %s\n", num(a, sizeof a, j, "bubble_measured", "%.1f%%", 100),
           num(b, sizeof b, j, "bubble_predicted", "%.1f%%", 100));
    printf("traffic   raw %s  wire %s  ratio %s\n", bytes(a, sizeof a, j, "bytes_raw"),
           bytes(b, sizeof b, j, "bytes_wire"), num(c, sizeof c, j, "compression_ratio", "%.2f", 1));
    const char *layers = str(j, "layers");
    json_int_t replicas = json_integer_value(json_object_get(j, "replicas"));
    if (strcmp(layers, "-") != 0 && layers[0])
        printf("part      %s\n", layers);
    if (replicas > 1)
        printf("replicas  %lld, one per device; a micro-batch is split across them\n", (long long)replicas);
    json_t *codecs = json_object_get(j, "codecs");
    printf("plan      micro-batches %s  schedule %s  codecs forward %s backward %s\n",
           json_integer_value(json_object_get(j, "micro_batches")) ? num(a, sizeof a, j, "micro_batches", "%.0f", 1)
                                                                   : "auto",
           str(j, "schedule"), str(codecs, "forward"), str(codecs, "backward"));
    return EXIT_OK;
}

static int print_metrics(const ctl_opts_t *o, json_t *r)
{
    fputs(str(r, "text"), stdout);
    return EXIT_OK;
}

static int print_trace(const ctl_opts_t *o, json_t *r)
{
    json_t *t = json_object_get(r, "trace");
    if (!json_is_object(t)) {
        fprintf(stderr, "nebulactl: reply has no trace\n");
        return EXIT_PROTO;
    }
    if (!o->out)
        return json_dumpf(t, stdout, JSON_COMPACT) == 0 && putchar('\n') != EOF ? EXIT_OK : EXIT_OUTPUT;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", o->out);
    /* Written to a temporary name and renamed: no half-written trace file. */
    if (json_dump_file(t, tmp, JSON_COMPACT) != 0 || rename(tmp, o->out) != 0) {
        fprintf(stderr, "nebulactl: cannot write %s: %s\n", o->out, strerror(errno));
        unlink(tmp);
        return EXIT_OUTPUT;
    }
    size_t n = 0, i;
    json_t *ev;
    json_array_foreach(json_object_get(t, "traceEvents"), i, ev)
        n += strcmp(str(ev, "ph"), "X") == 0;
    printf("wrote %zu events to %s\n", n, o->out);
    return EXIT_OK;
}

static int print_stop(const ctl_opts_t *o, json_t *r)
{
    printf("stopping\n");
    return EXIT_OK;
}

static int print_checkpoint(const ctl_opts_t *o, json_t *r)
{
    (void)o;
    json_int_t after = json_integer_value(json_object_get(r, "after_step"));
    json_int_t last = json_integer_value(json_object_get(r, "last_complete_step"));
    printf("checkpoint requested: taken after step %lld (the newest complete one: %s%lld)\n", (long long)after,
           last < 0 ? "none" : "step ", last < 0 ? 0LL : (long long)last);
    return EXIT_OK;
}

static const ctl_cmd_t commands[] = {
    { "status", "state, peers and job", print_status },
    { "metrics", "Prometheus text", print_metrics },
    { "trace", "Chrome trace JSON", print_trace },
    { "stop", "orderly stop", print_stop },
    { "checkpoint", "coordinated checkpoint at the next step boundary", print_checkpoint },
};

/* ---- main ------------------------------------------------------------------------ */

static const char *default_socket(char *buf, size_t n)
{
    const char *env = getenv("NEBULA_SOCKET");
    if (env && *env)
        return env;
    glob_t g;
    const char *r = NULL;
    if (glob("/run/nebula/*.sock", 0, NULL, &g) == 0) {
        if (g.gl_pathc == 1) {
            snprintf(buf, n, "%s", g.gl_pathv[0]);
            r = buf;
        }
        globfree(&g);
    }
    return r;
}

/* ---- plan, plan-pin (docs/planner.md) ------------------------------------------- */

static void print_plan_hist(json_t *r)
{
    json_t *h = json_object_get(r, "history");
    if (!json_array_size(h))
        return;
    printf("\nmeasured so far (median step time from the coordinator). \"before run\": the prediction the\n"
           "plan started with, made before any of its steps ran (out of sample; - for the profiling\n"
           "plans). \"now\": from the current model, fitted on every step so far (in sample). Both\n"
           "include the per-step overhead (commit, optimizer, control round trip; now %.4f s)\n",
           json_number_value(json_object_get(r, "overhead_s")));
    printf("%5s %-8s %-16s %-16s %6s %12s %11s %8s %11s %8s\n", "m", "schedule", "fwd codec", "bwd codec", "steps",
           "measured (s)", "before run", "error", "now", "error");
    size_t i;
    json_t *x;
    json_array_foreach(h, i, x) {
        double meas = json_number_value(json_object_get(x, "measured_step_median_s"));
        double pred = json_number_value(json_object_get(x, "predicted_with_overhead_s"));
        json_t *pb = json_object_get(x, "predicted_before_run_with_overhead_s");
        double pre = pb ? json_number_value(pb) : -1;
        char pre_s[16] = "-", pre_e[16] = "-";
        if (pre > 0 && meas > 0) {
            snprintf(pre_s, sizeof pre_s, "%.4f", pre);
            snprintf(pre_e, sizeof pre_e, "%+.1f%%", 100 * (pre / meas - 1));
        }
        printf("%5lld %-8s %-16s %-16s %6lld %12.4f %11s %8s %11.4f %+7.1f%%\n",
               (long long)json_integer_value(json_object_get(x, "m")), str(x, "schedule"), str(x, "forward"),
               str(x, "backward"), (long long)json_integer_value(json_object_get(x, "steps")), meas, pre_s, pre_e,
               pred, meas > 0 && pred > 0 ? 100 * (pred / meas - 1) : 0.0);
    }
}

/* "split     7,1 (re-partitions 1; best now 4,4, predicted 31% faster)" */
static void print_plan_split(json_t *r)
{
    json_t *sp = json_object_get(r, "split"), *rp = json_object_get(r, "repartition");
    if (!json_is_array(sp))
        return;
    printf("split     ");
    for (size_t i = 0; i < json_array_size(sp); i++)
        printf("%s%lld", i ? "," : "", (long long)json_integer_value(json_array_get(sp, i)));
    if (json_is_object(rp)) {
        json_t *best = json_object_get(rp, "best_split");
        printf(" (re-partitions %lld, each needs %.0f%% predicted gain",
               (long long)json_integer_value(json_object_get(rp, "moves")),
               100 * json_number_value(json_object_get(rp, "min_gain")));
        if (json_is_array(best)) {
            printf("; best now ");
            for (size_t i = 0; i < json_array_size(best); i++)
                printf("%s%lld", i ? "," : "", (long long)json_integer_value(json_array_get(best, i)));
            printf(", %.0f%% faster", 100 * json_number_value(json_object_get(rp, "gain")));
        }
        printf(")");
    }
    printf("\n");
}

static int print_plan(json_t *r)
{
    json_t *cur = json_object_get(r, "current");
    printf("planner   %s, %lld re-plans%s%s\n", str(r, "state"),
           (long long)json_integer_value(json_object_get(r, "replans")),
           json_object_get(r, "last_replan_reason") ? "; last: " : "",
           json_object_get(r, "last_replan_reason") ? str(r, "last_replan_reason") : "");
    printf("running   m=%lld %s fwd=%s bwd=%s (%s)\n", (long long)json_integer_value(json_object_get(cur, "m")),
           str(cur, "schedule"), str(cur, "forward"), str(cur, "backward"), str(cur, "why"));
    print_plan_split(r);
    if (json_object_get(r, "bandwidth_mbit"))
        printf("what if   every link at %g Mbit/s\n", json_number_value(json_object_get(r, "bandwidth_mbit")));
    if (json_number_value(json_object_get(r, "max_codec_error")) > 0)
        printf("budget    codecs with a round-trip error over %g are not candidates\n",
               json_number_value(json_object_get(r, "max_codec_error")));
    fputs(str(r, "table"), stdout);
    print_plan_hist(r);
    return EXIT_OK;
}

/* Handles `plan` and `plan-pin` (their options differ from the other
 * commands'). Returns an exit status, or -1 when argv is another command. */
static int plan_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "socket", required_argument, NULL, 's' }, { "name", required_argument, NULL, 'n' },
        { "json", no_argument, NULL, 'j' },         { "timeout", required_argument, NULL, 't' },
        { "job", required_argument, NULL, 'J' },    { "measurements", required_argument, NULL, 'M' },
        { "bandwidth-mbit", required_argument, NULL, 'b' }, { "rows", required_argument, NULL, 'r' },
        { "m", required_argument, NULL, 'm' },      { "schedule", required_argument, NULL, 'c' },
        { "forward", required_argument, NULL, 'f' }, { "backward", required_argument, NULL, 'k' },
        { "clear", no_argument, NULL, 'C' },        { "output", required_argument, NULL, 'o' },
        { "steps", required_argument, NULL, 'S' },  { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },      { 0 },
    };
    const char *sock = NULL, *job = NULL, *meas = NULL, *sched = NULL, *fwd = NULL, *bwd = NULL;
    char namebuf[512], globbuf[512], *end;
    double mbit = 0, tmo = 10;
    long rows = 20, m = 0;
    bool json = false, clear = false, bad = false, have_bw = false;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "s:n:jt:o:hV", opts, NULL)) != -1) {
        switch (c) {
        case 's': sock = optarg; break;
        case 'n':
            snprintf(namebuf, sizeof namebuf, "/run/nebula/%s.sock", optarg);
            sock = strchr(optarg, '/') || !*optarg ? NULL : namebuf;
            bad |= !sock;
            break;
        case 'j': json = true; break;
        case 't': tmo = strtod(optarg, &end); bad |= *end || !(tmo > 0 && tmo <= 86400); break;
        case 'J': job = optarg; break;
        case 'M': meas = optarg; break;
        case 'b': mbit = strtod(optarg, &end); have_bw = true; bad |= *end != 0; break;
        case 'r': rows = strtol(optarg, &end, 10); bad |= *end || rows < 1 || rows > 10000; break;
        case 'm': m = strtol(optarg, &end, 10); bad |= *end || m < 1 || m > 1 << 20; break;
        case 'c': sched = optarg; break;
        case 'f': fwd = optarg; break;
        case 'k': bwd = optarg; break;
        case 'C': clear = true; break;
        default: bad = true; break;
        }
    }
    opterr = 1;
    const char *name = optind == argc - 1 ? argv[optind] : "";
    bool is_plan = strcmp(name, "plan") == 0, is_pin = strcmp(name, "plan-pin") == 0;
    if (!is_plan && !is_pin) {
        optind = 0; /* let main parse from scratch */
        return -1;
    }
    if (bad || (have_bw && !(mbit > 0)) || (is_plan && (m || sched || fwd || bwd || clear)) ||
        (is_pin && (job || meas || have_bw || (!clear && !m))) || (!job != !meas)) {
        fprintf(stderr, "nebulactl: %s: bad or missing options (--bandwidth-mbit must be > 0; "
                "--job and --measurements go together; plan-pin needs --m N or --clear)\n", name);
        usage(stderr);
        return EXIT_USAGE;
    }
    if (job) { /* offline: no daemon involved */
        nb_config_t *cfg = calloc(1, sizeof *cfg);
        nb_plan_req_t req;
        char err[1024];
        int rc = cfg ? nb_cfg_load(job, cfg, err, sizeof err) : -1;
        if (rc == 0)
            rc = nb_plan_req_from_config(&cfg->job, &req, err, sizeof err);
        if (rc == 0)
            rc = nb_plan_offline(stdout, &req, meas, mbit, (int)rows, NULL, err, sizeof err);
        free(cfg);
        if (rc) {
            fprintf(stderr, "nebulactl: plan: %s\n", cfg ? err : "out of memory");
            return EXIT_REPLY;
        }
        return EXIT_OK;
    }
    if (!sock && !(sock = default_socket(globbuf, sizeof globbuf))) {
        fprintf(stderr, "nebulactl: which daemon? give --socket PATH or --name NAME\n");
        return EXIT_USAGE;
    }
    int fd = connect_socket(sock);
    if (fd < 0)
        return EXIT_CONNECT;
    json_t *req = json_pack("{s:s}", "cmd", name);
    if (is_plan) {
        json_object_set_new(req, "rows", json_integer(rows));
        if (have_bw)
            json_object_set_new(req, "bandwidth_mbit", json_real(mbit));
    } else if (clear) {
        json_object_set_new(req, "clear", json_true());
    } else {
        json_object_set_new(req, "m", json_integer(m));
        if (sched)
            json_object_set_new(req, "schedule", json_string(sched));
        if (fwd)
            json_object_set_new(req, "forward", json_string(fwd));
        if (bwd)
            json_object_set_new(req, "backward", json_string(bwd));
    }
    json_t *reply = roundtrip(fd, req, (int)(tmo * 1000));
    json_decref(req);
    close(fd);
    if (!reply)
        return EXIT_PROTO;
    int rc = EXIT_OK;
    if (!json_is_true(json_object_get(reply, "ok"))) {
        const char *e = json_string_value(json_object_get(reply, "error"));
        fprintf(stderr, "nebulactl: %s: %s\n", sock, e ? e : "error reply");
        rc = EXIT_REPLY;
    } else if (json) {
        rc = json_dumpf(reply, stdout, JSON_COMPACT) == 0 && putchar('\n') != EOF ? EXIT_OK : EXIT_OUTPUT;
    } else if (is_plan) {
        rc = print_plan(reply);
    } else {
        printf("%s\n", clear ? "pin cleared: the planner chooses from the next step"
                             : "pinned from the next step");
    }
    json_decref(reply);
    return rc;
}

int main(int argc, char **argv)
{
    int prc = plan_main(argc, argv);
    if (prc >= 0)
        return prc;
    static const struct option opts[] = {
        { "socket", required_argument, NULL, 's' }, { "name", required_argument, NULL, 'n' },
        { "json", no_argument, NULL, 'j' },         { "timeout", required_argument, NULL, 't' },
        { "output", required_argument, NULL, 'o' }, { "steps", required_argument, NULL, 'S' },
        { "help", no_argument, NULL, 'h' },         { "version", no_argument, NULL, 'V' },
        { 0 },
    };
    ctl_opts_t o = { .steps = -1, .timeout_ms = 10000 };
    char namebuf[512], globbuf[512];
    int c;
    char *end;
    while ((c = getopt_long(argc, argv, "s:n:jt:o:hV", opts, NULL)) != -1) {
        switch (c) {
        case 's': o.socket = optarg; break;
        case 'n':
            if (!*optarg || strchr(optarg, '/')) {
                fprintf(stderr, "nebulactl: bad --name '%s'\n", optarg);
                return EXIT_USAGE;
            }
            snprintf(namebuf, sizeof namebuf, "/run/nebula/%s.sock", optarg);
            o.socket = namebuf;
            break;
        case 'j': o.json = true; break;
        case 't': {
            double t = strtod(optarg, &end);
            if (*end || !(t > 0 && t <= 86400)) {
                fprintf(stderr, "nebulactl: --timeout wants seconds in (0, 86400], got '%s'\n", optarg);
                return EXIT_USAGE;
            }
            o.timeout_ms = (int)(t * 1000);
            break;
        }
        case 'o': o.out = optarg; break;
        case 'S':
            o.steps = strtol(optarg, &end, 10);
            if (*end || o.steps < 0) {
                fprintf(stderr, "nebulactl: --steps wants a non-negative integer, got '%s'\n", optarg);
                return EXIT_USAGE;
            }
            break;
        case 'h': usage(stdout); return EXIT_OK;
        case 'V': printf("nebulactl %s\n", NB_VERSION); return EXIT_OK;
        default: usage(stderr); return EXIT_USAGE;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *name = argv[optind];
    const ctl_cmd_t *cmd = NULL;
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].name, name) == 0)
            cmd = &commands[i];
    if (!cmd) {
        fprintf(stderr, "nebulactl: unknown command '%s'\n", name);
        usage(stderr);
        return EXIT_USAGE;
    }
    if ((o.out || o.steps >= 0) && strcmp(name, "trace") != 0) {
        fprintf(stderr, "nebulactl: -o and --steps apply to trace only\n");
        return EXIT_USAGE;
    }
    if (!o.socket && !(o.socket = default_socket(globbuf, sizeof globbuf))) {
        fprintf(stderr, "nebulactl: which daemon? give --socket PATH or --name NAME\n");
        return EXIT_USAGE;
    }
    int fd = connect_socket(o.socket);
    if (fd < 0)
        return EXIT_CONNECT;
    json_t *req = json_pack("{s:s}", "cmd", name);
    if (o.steps >= 0)
        json_object_set_new(req, "steps", json_integer(o.steps));
    json_t *reply = roundtrip(fd, req, o.timeout_ms);
    json_decref(req);
    close(fd);
    if (!reply)
        return EXIT_PROTO;
    int rc;
    if (!json_is_true(json_object_get(reply, "ok"))) {
        const char *e = json_string_value(json_object_get(reply, "error"));
        if (o.json)
            json_dumpf(reply, stdout, JSON_COMPACT), putchar('\n');
        fprintf(stderr, "nebulactl: %s: %s\n", o.socket, e ? e : "error reply");
        rc = EXIT_REPLY;
    } else if (o.json && !o.out) {
        rc = json_dumpf(reply, stdout, JSON_COMPACT) == 0 && putchar('\n') != EOF ? EXIT_OK : EXIT_OUTPUT;
    } else {
        rc = cmd->print(&o, reply);
    }
    json_decref(reply);
    return rc;
}
