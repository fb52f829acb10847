/*
 * status_server.h - the daemon's status socket: a unix-domain stream socket
 * speaking newline-delimited JSON, one request object per line
 * ({"cmd":"status"}), one reply object per line ({"ok":true,...} or
 * {"ok":false,"error":"..."}). Commands are registered by name, so new ones
 * (e.g. "plan" from the planner) plug in without touching this file.
 *
 * Robustness: a line longer than max_line gets an error reply and the client
 * is closed; malformed JSON or an unknown command gets an error reply and the
 * connection stays open; a client whose unsent replies exceed max_output
 * (it does not read) is dropped; a client that disconnects mid-reply is
 * closed quietly. None of these affects other clients.
 *
 * Admission: uid 0 and the daemon's own uid are limited only by max_clients;
 * any other uid gets at most max_per_uid connections, and all other uids
 * together at most max_clients - reserved, so root can always run status and
 * stop. A refused client gets one error line, then the connection is closed;
 * refusals are logged at most once per 10 s (with a count of the rest).
 *
 * Privileged commands (stop) are refused unless the caller's SO_PEERCRED uid
 * is 0 or the daemon's effective uid.
 *
 * Thread: loop thread only. Ownership: the server owns its handles and frees
 * them in their close callbacks (nb_status_server_close).
 */
#ifndef NB_STATUS_SERVER_H
#define NB_STATUS_SERVER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

typedef struct nb_status_server nb_status_server_t;

typedef struct {
    uid_t uid;
    gid_t gid;
    pid_t pid;
} nb_status_caller_t;

/* A command handler. Returns a new JSON object (the reply; the server adds
 * "ok": true) or NULL after writing a message into err (reply "ok": false).
 * Runs on the loop thread; must not block. */
typedef json_t *(*nb_status_cmd_cb)(void *ud, const json_t *req, const nb_status_caller_t *caller, char *err,
                                    size_t errlen);

typedef struct {
    size_t max_line;    /* bytes of one request line; default 65536 */
    size_t max_output;  /* unsent reply bytes per client; default 64 MiB */
    int max_clients;    /* default 64 */
    int max_per_uid;    /* per uid other than 0 and the daemon's; default 8 */
    int reserved;       /* of max_clients, kept for uid 0 and the daemon's
                         * uid; default 8 (at most max_clients - 1) */
    uint64_t idle_ms;   /* a client with no complete request and no reply
                         * progress for this long is closed (bytes of an
                         * unfinished line do not count); default 60000 */
} nb_status_limits_t;

/* Creates the socket at path (its directory is created with mode 0750 when
 * missing; the socket gets mode 0660; a stale socket left by a dead daemon
 * is replaced; a live one is an error) and starts listening on loop.
 * lim may be NULL for the defaults. On error returns a negative NB_E* code,
 * writes a reason into err and creates nothing. */
int nb_status_server_start(uv_loop_t *loop, const char *path, const nb_status_limits_t *lim,
                           nb_status_server_t **out, char *err, size_t errlen);

/* Registers a command (name copied; at most 32 commands). privileged: only
 * callers with uid 0 or the daemon's uid may run it. Returns 0, NB_EINVAL
 * (duplicate or bad name) or NB_ELIMIT. */
int nb_status_server_add(nb_status_server_t *s, const char *name, bool privileged, nb_status_cmd_cb cb, void *ud);

/* Number of connected clients (for tests and metrics). */
int nb_status_server_clients(const nb_status_server_t *s);

/* Closes the listener and every client, removes the socket file, and frees
 * the server once every handle is closed; then calls done(ud) if not NULL.
 * The server must not be used after this call. */
void nb_status_server_close(nb_status_server_t *s, void (*done)(void *ud), void *ud);

#endif
