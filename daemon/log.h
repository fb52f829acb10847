/*
 * log.h - one line per event: time, level, daemon name, peer (or "-"), message.
 *
 * When stderr is connected to the systemd journal (JOURNAL_STREAM matches
 * stderr's device and inode) each line starts with a "<N>" syslog priority
 * prefix and no timestamp (the journal adds its own); otherwise lines are
 * plain: "2026-11-28T15:04:05.123Z INFO  name peer: message".
 *
 * Thread: every function may be called from any thread; each line is written
 * with a single write(2) so lines from threads never interleave.
 * Tests can capture lines with nb_log_set_sink().
 */
#ifndef NB_LOG_H
#define NB_LOG_H

#include <stdarg.h>

typedef enum {
    NB_LOG_DEBUG = 0,
    NB_LOG_INFO = 1,
    NB_LOG_WARN = 2,
    NB_LOG_ERROR = 3,
} nb_log_level_t;

/* Sets the daemon name shown on every line (copied) and the minimum level.
 * May be called again (e.g. on SIGHUP) to change either. */
void nb_log_init(const char *daemon_name, nb_log_level_t level);
void nb_log_set_level(nb_log_level_t level);
nb_log_level_t nb_log_get_level(void);

/* Parses "debug", "info", "warn"/"warning", "error"; returns 0 or -1. */
int nb_log_level_parse(const char *s, nb_log_level_t *out);
const char *nb_log_level_name(nb_log_level_t level);

/* Logs one event. peer names the remote side (a peer daemon, a client) or is
 * NULL. The message must not end in a newline. */
void nb_log(nb_log_level_t level, const char *peer, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void nb_vlog(nb_log_level_t level, const char *peer, const char *fmt, va_list ap);

/* Test hook: when sink is not NULL every formatted line (without prefix or
 * newline: "LEVEL peer: message") is passed to it instead of stderr. */
typedef void (*nb_log_sink_cb)(nb_log_level_t level, const char *line, void *ud);
void nb_log_set_sink(nb_log_sink_cb sink, void *ud);

#define nb_log_debug(peer, ...) nb_log(NB_LOG_DEBUG, peer, __VA_ARGS__)
#define nb_log_info(peer, ...) nb_log(NB_LOG_INFO, peer, __VA_ARGS__)
#define nb_log_warn(peer, ...) nb_log(NB_LOG_WARN, peer, __VA_ARGS__)
#define nb_log_error(peer, ...) nb_log(NB_LOG_ERROR, peer, __VA_ARGS__)

#endif
