/*
 * net_harness.h - shared helpers for the transport tests (included by each
 * tests/net/test_*.c; static functions only): certificates made at test time
 * in a temporary directory, endpoints on one loop, log capture, a loop
 * runner with a deadline, and a blocking raw TLS client for hostile input.
 */
#ifndef NB_NET_HARNESS_H
#define NB_NET_HARNESS_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include "kernels/common.h"
#include "daemon/log.h"
#include "daemon/net/frame.h"
#include "daemon/net/net.h"
#include "daemon/net/probe.h"

/* ---- log capture ---- */
#define H_LOG_MAX (256u << 10)
static char h_logbuf[H_LOG_MAX];
static size_t h_loglen;
static pthread_mutex_t h_loglock = PTHREAD_MUTEX_INITIALIZER;

static __attribute__((unused)) void h_sink(nb_log_level_t lvl, const char *line, void *ud)
{
    pthread_mutex_lock(&h_loglock);
    size_t n = strlen(line);
    if (h_loglen + n + 2 > H_LOG_MAX)
        h_loglen = 0; /* keep the newest lines */
    memcpy(h_logbuf + h_loglen, line, n);
    h_loglen += n;
    h_logbuf[h_loglen++] = '\n';
    h_logbuf[h_loglen] = 0;
    pthread_mutex_unlock(&h_loglock);
    if (getenv("NB_TEST_VERBOSE"))
        fprintf(stderr, "%s\n", line);
}

static __attribute__((unused)) void h_log_start(void)
{
    nb_log_init("test", NB_LOG_DEBUG);
    h_loglen = 0;
    h_logbuf[0] = 0;
    nb_log_set_sink(h_sink, NULL);
}

static __attribute__((unused)) int h_log_has(const char *needle)
{
    pthread_mutex_lock(&h_loglock);
    int r = strstr(h_logbuf, needle) != NULL;
    pthread_mutex_unlock(&h_loglock);
    return r;
}

static __attribute__((unused)) void h_log_clear(void)
{
    pthread_mutex_lock(&h_loglock);
    h_loglen = 0;
    h_logbuf[0] = 0;
    pthread_mutex_unlock(&h_loglock);
}

/* ---- certificates ---- */
static char h_dir[256];

static __attribute__((unused)) void h_path(char *out, size_t len, const char *name, const char *ext)
{
    snprintf(out, len, "%s/%s.%s", h_dir, name, ext);
}

/* Makes h_dir with a CA and certificates for names (space separated) through
 * scripts/gen-certs.sh; a second CA ("other") with certificates that chain to
 * it lives in h_dir/other. */
static __attribute__((unused)) void h_certs(const char *names)
{
    snprintf(h_dir, sizeof h_dir, "/tmp/nbnet.XXXXXX");
    assert_non_null(mkdtemp(h_dir));
    char cmd[1024];
    const char *src = getenv("NB_SRCDIR") ? getenv("NB_SRCDIR") : ".";
    snprintf(cmd, sizeof cmd, "%s/scripts/gen-certs.sh %s %s && %s/scripts/gen-certs.sh %s/other %s",
             src, h_dir, names, src, h_dir, names);
    assert_int_equal(system(cmd), 0);
}

static __attribute__((unused)) void h_certs_free(void)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf %s", h_dir);
    assert_int_equal(system(cmd), 0);
}

/* Writes h_dir/<file>.pem and .key: a certificate for `name` signed by the
 * main CA, valid from now+nb_s to now+na_s (seconds; negative = past). */
static __attribute__((unused)) void h_cert_custom(const char *file, const char *name, long nb_s, long na_s)
{
    char p[512];
    h_path(p, sizeof p, "ca", "pem");
    FILE *f = fopen(p, "r");
    assert_non_null(f);
    X509 *ca = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    h_path(p, sizeof p, "ca", "key");
    f = fopen(p, "r");
    assert_non_null(f);
    EVP_PKEY *cakey = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(ca);
    assert_non_null(cakey);
    EVP_PKEY *key = EVP_EC_gen("P-256");
    assert_non_null(key);
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), (long)random());
    X509_gmtime_adj(X509_getm_notBefore(x), nb_s);
    X509_gmtime_adj(X509_getm_notAfter(x), na_s);
    X509_set_pubkey(x, key);
    X509_NAME *nm = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)name, -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(ca));
    char san[300];
    snprintf(san, sizeof san, "DNS:%s", name);
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, ca, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
    assert_non_null(ext);
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    assert_true(X509_sign(x, cakey, EVP_sha256()) > 0);
    h_path(p, sizeof p, file, "pem");
    f = fopen(p, "w");
    PEM_write_X509(f, x);
    fclose(f);
    h_path(p, sizeof p, file, "key");
    f = fopen(p, "w");
    PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    X509_free(x);
    X509_free(ca);
    EVP_PKEY_free(key);
    EVP_PKEY_free(cakey);
}

/* ---- endpoints ---- */
typedef struct h_ep {
    nb_net_t *net;
    char cert[512], key[512], ca[512];
    int port;
    int ready, closed, writable, frames;
    nb_conn_t *conn;         /* last ready connection */
    void (*on_frame)(struct h_ep *e, nb_conn_t *c, Nebula__Frame *f, uint8_t *p, size_t len);
    void *user;
    int freed;
} h_ep_t;

static __attribute__((unused)) void h_on_ready(nb_conn_t *c, void *ud)
{
    h_ep_t *e = ud;
    e->ready++;
    e->conn = c;
}

static __attribute__((unused)) void h_on_closed(nb_conn_t *c, int err, void *ud)
{
    h_ep_t *e = ud;
    e->closed++;
    if (e->conn == c)
        e->conn = NULL;
}

static __attribute__((unused)) void h_on_writable(nb_conn_t *c, void *ud)
{
    ((h_ep_t *)ud)->writable++;
}

static __attribute__((unused)) void h_on_frame(nb_conn_t *c, Nebula__Frame *f, uint8_t *p, size_t len, void *ud)
{
    h_ep_t *e = ud;
    e->frames++;
    if (e->on_frame) {
        e->on_frame(e, c, f, p, len);
        return;
    }
    nebula__frame__free_unpacked(f, NULL);
    free(p);
}

static const nb_net_cb_t h_cb = { h_on_ready, h_on_frame, h_on_writable, h_on_closed };

/* Default test settings: short timeouts so failures show quickly. */
static __attribute__((unused)) void h_cfg(nb_net_cfg_t *cfg, h_ep_t *e, const char *name, const char *certname,
                  const char *const *allowed, size_t n_allowed)
{
    nb_net_cfg_default(cfg);
    cfg->name = name;
    cfg->role = NEBULA__ROLE__ROLE_STAGE;
    h_path(e->cert, sizeof e->cert, certname, "pem");
    h_path(e->key, sizeof e->key, certname, "key");
    h_path(e->ca, sizeof e->ca, "ca", "pem");
    cfg->tls.cert_file = e->cert;
    cfg->tls.key_file = e->key;
    cfg->tls.ca_file = e->ca;
    cfg->allowed_peers = allowed;
    cfg->n_allowed_peers = n_allowed;
    cfg->handshake_timeout_ms = 2000;
    cfg->heartbeat_ms = 200;
    cfg->dead_after_ms = 1500;
    cfg->backoff_min_ms = 20;
    cfg->backoff_max_ms = 200;
}

static __attribute__((unused)) void h_ep_new(uv_loop_t *loop, h_ep_t *e, const nb_net_cfg_t *cfg, int listen)
{
    assert_int_equal(nb_net_new(loop, cfg, &h_cb, e, &e->net), 0);
    if (listen)
        assert_int_equal(nb_net_listen(e->net, "127.0.0.1", 0, &e->port), 0);
}

static __attribute__((unused)) void h_ep_done(void *ud)
{
    ((h_ep_t *)ud)->freed = 1;
}

static __attribute__((unused)) void h_noop_timer(uv_timer_t *t) { (void)t; }

/* Runs the loop until *flag >= want or ms pass; returns 1 if reached. */
static __attribute__((unused)) int h_run_until(uv_loop_t *loop, const int *flag, int want, int ms)
{
    uint64_t end = uv_now(loop) + (uint64_t)ms;
    uv_timer_t t; /* keeps the loop alive and wakes it */
    uv_timer_init(loop, &t);
    uv_timer_start(&t, h_noop_timer, 10, 10);
    while (__atomic_load_n(flag, __ATOMIC_ACQUIRE) < want && uv_now(loop) < end)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return *flag >= want;
}

static __attribute__((unused)) void h_run_ms(uv_loop_t *loop, int ms)
{
    uv_timer_t t;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, h_noop_timer, (uint64_t)ms, 0);
    uv_run(loop, UV_RUN_ONCE);
    while (uv_is_active((uv_handle_t *)&t))
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

static __attribute__((unused)) void h_ep_close(uv_loop_t *loop, h_ep_t *e)
{
    nb_net_close(e->net, h_ep_done, e);
    assert_true(h_run_until(loop, &e->freed, 1, 5000));
}

/* Ends a test: every handle must be closed (leak check on handles). */
static __attribute__((unused)) void h_loop_end(uv_loop_t *loop)
{
    uv_run(loop, UV_RUN_NOWAIT);
    assert_int_equal(uv_loop_close(loop), 0);
}

/* ---- random tensors ---- */
static __attribute__((unused)) uint64_t h_rng(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static __attribute__((unused)) void h_fill(uint8_t *p, size_t len, uint64_t seed)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v = h_rng(&s);
        memcpy(p + i, &v, 8);
    }
    for (; i < len; i++)
        p[i] = (uint8_t)h_rng(&s);
}

/* ---- blocking raw clients (run in a thread) ---- */
static __attribute__((unused)) int h_tcp_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Like h_tcp_connect, from the loopback address src (e.g. "127.0.0.7"):
 * each address of 127/8 is a different source for the per-address limit. */
static __attribute__((unused)) int h_tcp_connect_from(int port, const char *src)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in b = { .sin_family = AF_INET };
    inet_pton(AF_INET, src, &b.sin_addr);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&b, sizeof b) != 0 ||
        connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

#endif

/* Runs the loop until *counter >= want or ms pass; returns 1 if reached. */
static __attribute__((unused)) int h_run_until_u64(uv_loop_t *loop, const uint64_t *counter,
                                                   uint64_t want, int ms)
{
    uint64_t end = uv_now(loop) + (uint64_t)ms;
    uv_timer_t t;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, h_noop_timer, 10, 10);
    while (*counter < want && uv_now(loop) < end)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return *counter >= want;
}

/* Bytes of a valid Hello frame from `name` (for raw clients). */
static __attribute__((unused)) uint8_t *h_hello_bytes(const char *name, size_t *len)
{
    Nebula__Frame f = NEBULA__FRAME__INIT;
    Nebula__Hello h = NEBULA__HELLO__INIT;
    h.protocol_version = NB_PROTOCOL_VERSION;
    h.daemon_name = (char *)name;
    f.body_case = NEBULA__FRAME__BODY_HELLO;
    f.hello = &h;
    nb_frame_limits_t lim;
    nb_frame_limits_default(&lim);
    uint8_t *b;
    assert_int_equal(nb_frame_encode(&f, NULL, 0, &lim, &b, len), 0);
    return b;
}

/* A blocking TLS client on its own socket (hostile-input tests): returns
 * the SSL or NULL when the handshake failed. max_version 0: any. */
static __attribute__((unused)) SSL *h_raw_tls(int port, const char *cert, const char *key,
                                              int max_version, int *fd_out)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (max_version)
        SSL_CTX_set_max_proto_version(ctx, max_version);
    SSL_CTX_use_certificate_chain_file(ctx, cert);
    SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    int fd = h_tcp_connect(port);
    SSL *ssl = SSL_new(ctx);
    SSL_CTX_free(ctx); /* the SSL keeps its reference */
    SSL_set_fd(ssl, fd);
    *fd_out = fd;
    if (fd < 0 || SSL_connect(ssl) != 1) {
        SSL_free(ssl);
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    return ssl;
}
