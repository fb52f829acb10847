/* ktls.c - the kernel TLS probe; see ktls.h. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "daemon/net/ktls.h"

#ifndef TCP_ULP
#define TCP_ULP 31
#endif

static pthread_once_t once = PTHREAD_ONCE_INIT;
static bool avail;
static char why[160], state[320];

/* The kernel looks the upper-layer protocol up (loading the module when it
 * can) before it checks the socket's state: on a socket that is not
 * connected, ENOENT means no "tls" protocol, ENOTCONN means there is one. */
static void probe(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        snprintf(why, sizeof why, "cannot probe (socket: %s)", strerror(errno));
    } else {
        int rc = setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls", 3);
        int e = errno;
        close(fd);
        if (rc == 0 || e == ENOTCONN) {
            avail = true;
            snprintf(why, sizeof why, "the kernel offers the tls upper-layer protocol");
        } else if (e == ENOENT) {
            snprintf(why, sizeof why, "the kernel has no tls module (TCP_ULP \"tls\": %s)", strerror(e));
        } else {
            snprintf(why, sizeof why, "TCP_ULP \"tls\" refused: %s", strerror(e));
        }
    }
    if (avail)
        snprintf(state, sizeof state, "kernel TLS available (%s), not used: records are encrypted in user space", why);
    else
        snprintf(state, sizeof state, "kernel TLS unavailable: %s; records are encrypted in user space", why);
}

bool nb_ktls_available(const char **w)
{
    pthread_once(&once, probe);
    if (w)
        *w = why;
    return avail;
}

const char *nb_ktls_state(void)
{
    pthread_once(&once, probe);
    return state;
}
