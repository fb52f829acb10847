/*
 * status_server.c - unix socket, line framing, bounded buffers and command
 * dispatch of the status socket; see status_server.h. The commands
 * themselves live in status_cmds.c.
 */
#include <errno.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include "daemon/log.h"
#include "daemon/status/status_server.h"
#include "kernels/common.h"

#define STATUS_CMDS_MAX 32

typedef struct {
    char name[32];
    bool privileged;
    nb_status_cmd_cb cb;
    void *ud;
} status_cmd_t;

typedef struct status_client {
    uv_pipe_t pipe; /* first: the handle's address is the client's */
    nb_status_server_t *srv;
    struct status_client *next;
    nb_status_caller_t caller;
    char peer[32]; /* "uid=N pid=M" for log lines */
    char *in;
    size_t in_len;
    uint64_t last_active; /* uv_now of the last complete request line or write
                           * completion; bytes of an unfinished line do not
                           * count, so a trickle cannot hold a slot forever */
    bool closing;
} status_client_t;

struct nb_status_server {
    uv_pipe_t listener;
    uv_timer_t sweep; /* one-shot, armed for the earliest idle deadline */
    uv_loop_t *loop;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    nb_status_limits_t lim;
    int n_cmds;
    status_cmd_t cmds[STATUS_CMDS_MAX];
    status_client_t *clients;
    int n_clients;
    int open_handles; /* listener + sweep timer + clients; freed at 0 after close */
    bool refusal_logged;     /* a refusal was logged at refusal_window */
    uint64_t refusal_window; /* uv_now of the last logged refusal */
    int refusals_quiet;      /* refusals since then, not logged */
    bool closing;
    void (*done)(void *);
    void *done_ud;
};

typedef struct {
    uv_write_t req;
    char *buf;
} status_write_t;

static void server_maybe_free(nb_status_server_t *s)
{
    if (!s->closing || s->open_handles > 0)
        return;
    void (*done)(void *) = s->done;
    void *ud = s->done_ud;
    free(s);
    if (done)
        done(ud);
}

static void client_closed_cb(uv_handle_t *h)
{
    status_client_t *c = h->data;
    nb_status_server_t *s = c->srv;
    free(c->in);
    free(c);
    s->open_handles--;
    server_maybe_free(s);
}

static void client_close(status_client_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    nb_status_server_t *s = c->srv;
    for (status_client_t **pp = &s->clients; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    s->n_clients--;
    uv_close((uv_handle_t *)&c->pipe, client_closed_cb);
}

static void write_cb(uv_write_t *req, int status)
{
    status_write_t *w = (status_write_t *)req;
    status_client_t *c = req->handle->data;
    free(w->buf);
    free(w);
    c->last_active = uv_now(c->srv->loop);
    if (status < 0 && status != UV_ECANCELED) {
        /* The client went away mid-reply (EPIPE, ECONNRESET): close quietly. */
        nb_log_debug(c->peer, "status client gone while writing: %s", uv_strerror(status));
        client_close(c);
    }
}

/* Queues one reply line; drops the client when its unsent output would
 * exceed the bound. Takes the reference to reply. */
static void client_send(status_client_t *c, json_t *reply)
{
    if (c->closing) {
        json_decref(reply);
        return;
    }
    char *text = json_dumps(reply, JSON_COMPACT);
    json_decref(reply);
    if (!text) {
        nb_log_error(c->peer, "status reply could not be encoded; closing the client");
        client_close(c);
        return;
    }
    size_t len = strlen(text);
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe) + len + 1 > c->srv->lim.max_output) {
        nb_log_warn(c->peer, "status client does not read its replies (over %zu bytes queued); dropped",
                    c->srv->lim.max_output);
        free(text);
        client_close(c);
        return;
    }
    status_write_t *w = malloc(sizeof *w);
    char *line = w ? realloc(text, len + 2) : NULL;
    if (!line) {
        free(w);
        free(text);
        client_close(c);
        return;
    }
    line[len] = '\n';
    line[len + 1] = 0;
    w->buf = line;
    uv_buf_t b = uv_buf_init(line, (unsigned)(len + 1));
    int rc = uv_write(&w->req, (uv_stream_t *)&c->pipe, &b, 1, write_cb);
    if (rc < 0) {
        /* The callback will not be called: free here. */
        free(line);
        free(w);
        client_close(c);
    }
}

static json_t *error_reply(const char *msg)
{
    return json_pack("{s:b, s:s}", "ok", 0, "error", msg);
}

static void handle_line(status_client_t *c, const char *line, size_t len)
{
    nb_status_server_t *s = c->srv;
    json_error_t jerr;
    json_t *req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    char msg[512];
    if (!req) {
        snprintf(msg, sizeof msg, "malformed JSON at column %d: %s", jerr.column, jerr.text);
        client_send(c, error_reply(msg));
        return;
    }
    json_t *id = json_object_get(req, "id");
    const char *name = json_is_object(req) ? json_string_value(json_object_get(req, "cmd")) : NULL;
    json_t *reply = NULL;
    if (!name) {
        reply = error_reply("a request is a JSON object with a string \"cmd\", e.g. {\"cmd\":\"status\"}");
        goto out;
    }
    const status_cmd_t *cmd = NULL;
    for (int i = 0; i < s->n_cmds; i++)
        if (strcmp(s->cmds[i].name, name) == 0)
            cmd = &s->cmds[i];
    if (!cmd) {
        int n = snprintf(msg, sizeof msg, "unknown command '%.64s'; known:", name);
        for (int i = 0; i < s->n_cmds && n > 0 && (size_t)n < sizeof msg; i++)
            n += snprintf(msg + n, sizeof msg - (size_t)n, "%s %s", i ? "," : "", s->cmds[i].name);
        reply = error_reply(msg);
        goto out;
    }
    if (cmd->privileged && c->caller.uid != 0 && c->caller.uid != geteuid()) {
        snprintf(msg, sizeof msg, "permission denied: '%s' needs uid 0 or %u, caller has uid %u", cmd->name,
                 (unsigned)geteuid(), (unsigned)c->caller.uid);
        nb_log_warn(c->peer, "%s", msg);
        reply = error_reply(msg);
        goto out;
    }
    msg[0] = 0;
    reply = cmd->cb(cmd->ud, req, &c->caller, msg, sizeof msg);
    if (!reply)
        reply = error_reply(msg[0] ? msg : "command failed");
    else if (!json_object_get(reply, "ok"))
        json_object_set_new(reply, "ok", json_true());
out:
    if (reply && id)
        json_object_set(reply, "id", id);
    json_decref(req);
    if (!reply) {
        client_close(c);
        return;
    }
    client_send(c, reply);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    status_client_t *c = h->data;
    size_t room = c->srv->lim.max_line - c->in_len;
    *buf = uv_buf_init(c->in + c->in_len, (unsigned)room);
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    status_client_t *c = st->data;
    if (nread < 0) {
        if (nread != UV_EOF)
            nb_log_debug(c->peer, "status client read error: %s", uv_strerror((int)nread));
        client_close(c);
        return;
    }
    c->in_len += (size_t)nread;
    size_t start = 0;
    for (size_t i = 0; i < c->in_len && !c->closing; i++) {
        if (c->in[i] != '\n')
            continue;
        size_t len = i - start;
        if (len > 0 && c->in[start + len - 1] == '\r')
            len--;
        if (len > 0)
            handle_line(c, c->in + start, len);
        c->last_active = uv_now(c->srv->loop);
        start = i + 1;
    }
    if (c->closing)
        return;
    memmove(c->in, c->in + start, c->in_len - start);
    c->in_len -= start;
    if (c->in_len >= c->srv->lim.max_line) {
        char msg[128];
        snprintf(msg, sizeof msg, "request line longer than %zu bytes; closing", c->srv->lim.max_line);
        nb_log_warn(c->peer, "status client sent a line longer than %zu bytes; closed", c->srv->lim.max_line);
        uv_read_stop(st);
        client_send(c, error_reply(msg));
        client_close(c);
    }
}

#define REFUSAL_LOG_MS 10000

/* One log line per 10 s for refused clients, so that a client reconnecting
 * in a loop cannot fill the journal; the next line counts the quiet ones. */
static void log_refusal(nb_status_server_t *s, const status_client_t *c, const char *why)
{
    uint64_t now = uv_now(s->loop);
    if (s->refusal_logged && now - s->refusal_window < REFUSAL_LOG_MS) {
        s->refusals_quiet++;
        return;
    }
    if (s->refusals_quiet)
        nb_log_warn(NULL, "status socket: %d more clients refused in the last %llu s", s->refusals_quiet,
                    (unsigned long long)((now - s->refusal_window + 999) / 1000));
    s->refusal_logged = true;
    s->refusal_window = now;
    s->refusals_quiet = 0;
    nb_log_warn(c->peer, "%s; refused", why);
}

static bool uid_owns_daemon(uid_t uid)
{
    return uid == 0 || uid == geteuid();
}

/* Whether the client just accepted (already counted in s->clients) may
 * stay; if not, writes why into why. uid 0 and the daemon's own uid are
 * bounded only by max_clients. Every other uid gets at most max_per_uid
 * connections, and all of them together at most max_clients - reserved, so
 * that no member of the socket's group (nor several together) can lock root
 * out of status and stop. */
static bool client_admit(const nb_status_server_t *s, const status_client_t *c, char *why, size_t len)
{
    uid_t uid = c->caller.uid;
    int same = 0, others = 0;
    for (const status_client_t *o = s->clients; o; o = o->next) {
        same += o->caller.uid == uid;
        others += !uid_owns_daemon(o->caller.uid);
    }
    if (s->n_clients > s->lim.max_clients) {
        snprintf(why, len, "status socket busy: it serves at most %d clients at once", s->lim.max_clients);
        return false;
    }
    if (uid_owns_daemon(uid))
        return true;
    if (same > s->lim.max_per_uid) {
        snprintf(why, len, "status socket busy: uid %u already has %d connections (at most %d per user)",
                 (unsigned)uid, same - 1, s->lim.max_per_uid);
        return false;
    }
    if (others > s->lim.max_clients - s->lim.reserved) {
        snprintf(why, len,
                 "status socket busy: %d connections from other users (the last %d of %d are kept for uid 0 "
                 "and uid %u)",
                 others - 1, s->lim.reserved, s->lim.max_clients, (unsigned)geteuid());
        return false;
    }
    return true;
}

static void sweep_arm(nb_status_server_t *s);

static void connection_cb(uv_stream_t *server, int status)
{
    nb_status_server_t *s = server->data;
    if (status < 0) {
        nb_log_warn(NULL, "status socket accept failed: %s", uv_strerror(status));
        return;
    }
    status_client_t *c = calloc(1, sizeof *c);
    char *in = c ? malloc(s->lim.max_line) : NULL;
    if (!in || uv_pipe_init(s->loop, &c->pipe, 0) != 0) {
        /* Without a handle we cannot accept; the pending connection stays
         * queued in the kernel until memory returns. */
        nb_log_error(NULL, "status socket: out of memory for a client");
        free(in);
        free(c);
        return;
    }
    c->srv = s;
    c->in = in;
    c->last_active = uv_now(s->loop);
    c->pipe.data = c;
    c->next = s->clients;
    s->clients = c;
    s->n_clients++;
    s->open_handles++;
    snprintf(c->peer, sizeof c->peer, "status");
    if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0) {
        client_close(c);
        return;
    }
    uv_os_fd_t fd;
    struct ucred cred;
    socklen_t cl = sizeof cred;
    if (uv_fileno((uv_handle_t *)&c->pipe, &fd) != 0 || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0) {
        nb_log_warn(NULL, "status client without peer credentials; closed");
        client_close(c);
        return;
    }
    c->caller.uid = cred.uid;
    c->caller.gid = cred.gid;
    c->caller.pid = cred.pid;
    snprintf(c->peer, sizeof c->peer, "uid=%u pid=%d", (unsigned)cred.uid, (int)cred.pid);
    char why[192];
    if (!client_admit(s, c, why, sizeof why)) {
        log_refusal(s, c, why);
        /* Say why before closing (a small write goes out at once), so the
         * caller prints the reason rather than a broken pipe. */
        client_send(c, error_reply(why));
        client_close(c);
        return;
    }
    if (uv_read_start((uv_stream_t *)&c->pipe, alloc_cb, read_cb) != 0) {
        client_close(c);
        return;
    }
    if (!uv_is_active((uv_handle_t *)&s->sweep))
        sweep_arm(s); /* else armed for an earlier deadline than this client's */
}

/* Removes a socket file left by a daemon that died; refuses to touch a live
 * socket or anything that is not a socket. */
static int clear_stale(const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : (snprintf(err, errlen, "%s: %s", path, strerror(errno)), NB_EIO);
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "%s exists and is not a socket", path);
        return NB_ESTATE;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return NB_EIO;
    }
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    close(fd);
    if (rc == 0) {
        snprintf(err, errlen, "%s is in use by a running daemon", path);
        return NB_ESTATE;
    }
    if (unlink(path) != 0) {
        snprintf(err, errlen, "cannot remove stale socket %s: %s", path, strerror(errno));
        return NB_EIO;
    }
    nb_log_info(NULL, "removed stale status socket %s", path);
    return 0;
}

static void own_handle_closed_cb(uv_handle_t *h);

static void sweep_cb(uv_timer_t *t);

/* Arms the sweep timer for the earliest idle deadline of any client (or
 * stops it when there is none), so that an idle client is closed when its
 * idle_ms are up, not up to a sweep period later. Activity only moves
 * deadlines later: a timer that fires early finds nothing and re-arms. */
static void sweep_arm(nb_status_server_t *s)
{
    if (s->closing)
        return;
    uint64_t now = uv_now(s->loop), next = UINT64_MAX;
    for (const status_client_t *c = s->clients; c; c = c->next)
        if (c->last_active + s->lim.idle_ms < next)
            next = c->last_active + s->lim.idle_ms;
    if (next == UINT64_MAX)
        uv_timer_stop(&s->sweep);
    else
        uv_timer_start(&s->sweep, sweep_cb, next > now ? next - now : 0, 0);
}

static void sweep_cb(uv_timer_t *t)
{
    nb_status_server_t *s = t->data;
    uint64_t now = uv_now(s->loop);
    status_client_t *c = s->clients;
    while (c) {
        status_client_t *next = c->next; /* client_close unlinks c */
        if (now - c->last_active >= s->lim.idle_ms) {
            nb_log_info(c->peer, "status client idle for %llu ms; closed", (unsigned long long)(now - c->last_active));
            client_close(c);
        }
        c = next;
    }
    sweep_arm(s);
}

int nb_status_server_start(uv_loop_t *loop, const char *path, const nb_status_limits_t *lim,
                           nb_status_server_t **out, char *err, size_t errlen)
{
    char dummy[8];
    if (!err) {
        err = dummy;
        errlen = sizeof dummy;
    }
    *out = NULL;
    nb_status_server_t *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NB_ENOMEM;
    }
    if (strlen(path) >= sizeof s->path) {
        snprintf(err, errlen, "status socket path is longer than %zu bytes: %s", sizeof s->path - 1, path);
        free(s);
        return NB_EINVAL;
    }
    snprintf(s->path, sizeof s->path, "%s", path);
    s->loop = loop;
    s->lim.max_line = lim && lim->max_line ? lim->max_line : 65536;
    s->lim.max_output = lim && lim->max_output ? lim->max_output : (64u << 20);
    s->lim.max_clients = lim && lim->max_clients ? lim->max_clients : 64;
    s->lim.idle_ms = lim && lim->idle_ms ? lim->idle_ms : 60000;
    s->lim.max_per_uid = lim && lim->max_per_uid > 0 ? lim->max_per_uid : 8;
    s->lim.reserved = lim && lim->reserved > 0 ? lim->reserved : 8;
    if (s->lim.reserved >= s->lim.max_clients)
        s->lim.reserved = s->lim.max_clients - 1; /* other users keep at least one */

    char buf[sizeof s->path];
    snprintf(buf, sizeof buf, "%s", path);
    const char *dir = dirname(buf); /* may return a static "." rather than edit buf */
    if (mkdir(dir, 0750) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create directory %s: %s", dir, strerror(errno));
        free(s);
        return NB_EIO;
    }
    int rc = clear_stale(path, err, errlen);
    if (rc) {
        free(s);
        return rc;
    }
    if ((rc = uv_pipe_init(loop, &s->listener, 0)) != 0) {
        snprintf(err, errlen, "uv_pipe_init: %s", uv_strerror(rc));
        free(s);
        return NB_EIO;
    }
    s->listener.data = s;
    s->open_handles = 1;
    /* The socket must never exist with wider permissions than 0660. */
    mode_t old = umask(0117);
    rc = uv_pipe_bind(&s->listener, path);
    umask(old);
    if (rc == 0 && chmod(path, 0660) != 0)
        rc = uv_translate_sys_error(errno);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, 16, connection_cb);
    if (rc != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", path, uv_strerror(rc));
        unlink(path);
        /* s is freed in the listener's close callback. */
        s->closing = true;
        uv_close((uv_handle_t *)&s->listener, own_handle_closed_cb);
        return NB_EIO;
    }
    uv_timer_init(loop, &s->sweep);
    s->sweep.data = s;
    s->open_handles++;
    uv_unref((uv_handle_t *)&s->sweep); /* never keeps the loop alive alone */
    *out = s;
    return 0;
}

int nb_status_server_add(nb_status_server_t *s, const char *name, bool privileged, nb_status_cmd_cb cb, void *ud)
{
    if (!name || !*name || strlen(name) >= sizeof s->cmds[0].name || !cb)
        return NB_EINVAL;
    for (int i = 0; i < s->n_cmds; i++)
        if (strcmp(s->cmds[i].name, name) == 0)
            return NB_EINVAL;
    if (s->n_cmds >= STATUS_CMDS_MAX)
        return NB_ELIMIT;
    status_cmd_t *c = &s->cmds[s->n_cmds++];
    snprintf(c->name, sizeof c->name, "%s", name);
    c->privileged = privileged;
    c->cb = cb;
    c->ud = ud;
    return 0;
}

int nb_status_server_clients(const nb_status_server_t *s)
{
    return s->n_clients;
}

static void own_handle_closed_cb(uv_handle_t *h)
{
    nb_status_server_t *s = h->data;
    s->open_handles--;
    server_maybe_free(s);
}

void nb_status_server_close(nb_status_server_t *s, void (*done)(void *ud), void *ud)
{
    NB_CHECK(!s->closing);
    s->closing = true;
    s->done = done;
    s->done_ud = ud;
    if (s->path[0])
        unlink(s->path);
    while (s->clients)
        client_close(s->clients);
    uv_close((uv_handle_t *)&s->sweep, own_handle_closed_cb);
    uv_close((uv_handle_t *)&s->listener, own_handle_closed_cb);
}
