/* ktls.c - the kernel TLS probe; see ktls.h. */
#include <errno.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include "daemon/net/ktls.h"
#include "kernels/common.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

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
    snprintf(state, sizeof state, "kernel TLS %s: %s", avail ? "available" : "unavailable", why);
}

void nb_ktls_force_probe(bool available)
{
    pthread_once(&once, probe);
    avail = available;
    snprintf(why, sizeof why, "forced %s by a test", available ? "available" : "unavailable");
    snprintf(state, sizeof state, "kernel TLS %s: %s", avail ? "available" : "unavailable", why);
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

const char *nb_ktls_mode_name(nb_ktls_mode_t m)
{
    switch (m) {
    case NB_KTLS_OFF: return "off";
    case NB_KTLS_AUTO: return "auto";
    case NB_KTLS_ON: return "on";
    }
    return "?";
}

static void be64(uint8_t *out, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        out[i] = (uint8_t)v;
}

int nb_ktls_enable_tx(int fd, const nb_tls_tx_keys_t *k, char *why, size_t whylen)
{
    union {
        struct tls12_crypto_info_aes_gcm_128 g128;
        struct tls12_crypto_info_aes_gcm_256 g256;
        struct tls12_crypto_info_chacha20_poly1305 cc;
    } ci;
    memset(&ci, 0, sizeof ci);
    size_t len;
    switch (k->cipher) {
    case NB_TLS_AES_128_GCM:
        ci.g128.info.version = TLS_1_3_VERSION;
        ci.g128.info.cipher_type = TLS_CIPHER_AES_GCM_128;
        memcpy(ci.g128.key, k->key, 16);
        memcpy(ci.g128.salt, k->iv, 4);
        memcpy(ci.g128.iv, k->iv + 4, 8);
        be64(ci.g128.rec_seq, k->seq);
        len = sizeof ci.g128;
        break;
    case NB_TLS_AES_256_GCM:
        ci.g256.info.version = TLS_1_3_VERSION;
        ci.g256.info.cipher_type = TLS_CIPHER_AES_GCM_256;
        memcpy(ci.g256.key, k->key, 32);
        memcpy(ci.g256.salt, k->iv, 4);
        memcpy(ci.g256.iv, k->iv + 4, 8);
        be64(ci.g256.rec_seq, k->seq);
        len = sizeof ci.g256;
        break;
    case NB_TLS_CHACHA20_POLY1305:
        ci.cc.info.version = TLS_1_3_VERSION;
        ci.cc.info.cipher_type = TLS_CIPHER_CHACHA20_POLY1305;
        memcpy(ci.cc.key, k->key, 32);
        memcpy(ci.cc.iv, k->iv, 12);
        be64(ci.cc.rec_seq, k->seq);
        len = sizeof ci.cc;
        break;
    default:
        snprintf(why, whylen, "cipher suite not supported by kernel TLS here");
        return NB_EINVAL;
    }
    int rc = 0;
    if (setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls", 3) != 0) {
        snprintf(why, whylen, "TCP_ULP \"tls\": %s", strerror(errno));
        rc = NB_EIO;
    } else if (setsockopt(fd, SOL_TLS, TLS_TX, &ci, (socklen_t)len) != 0) {
        /* the socket now has the tls protocol but no keys: the kernel sends
         * what it is given as it is, so the caller must not fall back on it */
        snprintf(why, whylen, "TLS_TX: %s", strerror(errno));
        rc = NB_ECLOSED;
    }
    OPENSSL_cleanse(&ci, sizeof ci);
    return rc;
}

int nb_ktls_send_alert(int fd, uint8_t level, uint8_t desc)
{
    uint8_t body[2] = { level, desc };
    char cbuf[CMSG_SPACE(sizeof(uint8_t))];
    memset(cbuf, 0, sizeof cbuf);
    struct iovec iov = { body, sizeof body };
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf };
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_TLS;
    c->cmsg_type = TLS_SET_RECORD_TYPE;
    c->cmsg_len = CMSG_LEN(sizeof(uint8_t));
    *CMSG_DATA(c) = 21; /* alert */
    ssize_t n = sendmsg(fd, &m, MSG_DONTWAIT);
    return n == (ssize_t)sizeof body ? 0 : NB_EIO;
}
