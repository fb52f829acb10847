/* log.c - line-oriented logging to stderr or the journal; see log.h. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "daemon/log.h"

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char log_name[64] = "nebula";
static nb_log_level_t log_level = NB_LOG_INFO;
static int log_journal = -1; /* -1: not yet detected */
static nb_log_sink_cb log_sink;
static void *log_sink_ud;

static const char *const level_names[] = { "DEBUG", "INFO", "WARN", "ERROR" };
/* syslog priorities: debug 7, info 6, warning 4, err 3 */
static const int level_prio[] = { 7, 6, 4, 3 };

static int detect_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    if (!js)
        return 0;
    unsigned long dev, ino;
    if (sscanf(js, "%lu:%lu", &dev, &ino) != 2)
        return 0;
    struct stat st;
    if (fstat(STDERR_FILENO, &st) != 0)
        return 0;
    return (unsigned long)st.st_dev == dev && (unsigned long)st.st_ino == ino;
}

void nb_log_init(const char *daemon_name, nb_log_level_t level)
{
    pthread_mutex_lock(&log_lock);
    if (daemon_name)
        snprintf(log_name, sizeof log_name, "%s", daemon_name);
    log_level = level;
    log_journal = detect_journal();
    pthread_mutex_unlock(&log_lock);
}

void nb_log_set_level(nb_log_level_t level)
{
    pthread_mutex_lock(&log_lock);
    log_level = level;
    pthread_mutex_unlock(&log_lock);
}

nb_log_level_t nb_log_get_level(void)
{
    pthread_mutex_lock(&log_lock);
    nb_log_level_t l = log_level;
    pthread_mutex_unlock(&log_lock);
    return l;
}

int nb_log_level_parse(const char *s, nb_log_level_t *out)
{
    static const struct { const char *name; nb_log_level_t level; } names[] = {
        { "debug", NB_LOG_DEBUG }, { "info", NB_LOG_INFO }, { "warn", NB_LOG_WARN },
        { "warning", NB_LOG_WARN }, { "error", NB_LOG_ERROR },
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(s, names[i].name) == 0) {
            *out = names[i].level;
            return 0;
        }
    return -1;
}

const char *nb_log_level_name(nb_log_level_t level)
{
    return (unsigned)level <= NB_LOG_ERROR ? level_names[level] : "?";
}

void nb_log_set_sink(nb_log_sink_cb sink, void *ud)
{
    pthread_mutex_lock(&log_lock);
    log_sink = sink;
    log_sink_ud = ud;
    pthread_mutex_unlock(&log_lock);
}

void nb_vlog(nb_log_level_t level, const char *peer, const char *fmt, va_list ap)
{
    if ((unsigned)level > NB_LOG_ERROR)
        level = NB_LOG_ERROR;
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);

    pthread_mutex_lock(&log_lock);
    if (level < log_level) {
        pthread_mutex_unlock(&log_lock);
        return;
    }
    if (log_journal < 0)
        log_journal = detect_journal();
    char line[1400];
    if (log_sink) {
        snprintf(line, sizeof line, "%s %s: %s", level_names[level], peer ? peer : "-", msg);
        log_sink(level, line, log_sink_ud);
        pthread_mutex_unlock(&log_lock);
        return;
    }
    int n;
    if (log_journal) {
        n = snprintf(line, sizeof line, "<%d>%s %s %s: %s\n", level_prio[level],
                     level_names[level], log_name, peer ? peer : "-", msg);
    } else {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %s %s: %s\n",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, level_names[level], log_name,
                     peer ? peer : "-", msg);
    }
    if (n >= (int)sizeof line) { /* truncated: keep the newline */
        n = sizeof line - 1;
        line[n - 1] = '\n';
    }
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
    pthread_mutex_unlock(&log_lock);
}

void nb_log(nb_log_level_t level, const char *peer, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    nb_vlog(level, peer, fmt, ap);
    va_end(ap);
}
