/*
 * bench_net_tls.c - goodput of one TLS connection carrying 4 MiB tensors on
 * loopback, as a ratio to plain TCP on loopback measured in the same run.
 *
 * TLS: two endpoints, each on its own loop thread (as in two daemons), the
 * sender keeping its send queue full through the back-pressure API; the
 * receiver gets each validated, CRC-checked payload in its own buffer.
 * TCP: two threads, blocking sockets, the same frame sizes, a fresh buffer
 * per payload. Best of 5 runs each, alternating.
 * Crypto limit: the negotiated cipher suite's AEAD sealing the same bytes in
 * full-size TLS records (16 KiB) through EVP on one core, in the same rounds
 * (what one TLS sender could reach if encryption were its only cost).
 * Prints: bench net_tls_goodput_4mib, net_tcp_goodput_4mib (MB/s),
 * net_tls_vs_tcp (ratio; target >= 0.5), tls_crypto_limit_<suite> (MB/s,
 * e.g. _aes_128_gcm_sha256)
 * and tls_goodput_vs_crypto_limit (ratio), plus where the kernel TLS probe
 * stands (daemon/net/ktls.h). NB_BENCH_KTLS=auto runs both endpoints with
 * tls.ktls auto (the sender's records sealed by the kernel where it can).
 */
#include "daemon/clock.h"
#include "tests/net/net_harness.h"
#include <ctype.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <time.h>
#include "daemon/net/ktls.h"

#define TENSOR (4u << 20)
#define COUNT 48
#define JOB 1

/* tls.ktls of both endpoints: NB_BENCH_KTLS=auto|on (default off). */
static int bench_ktls(void)
{
    const char *e = getenv("NB_BENCH_KTLS");
    return !e ? NB_KTLS_OFF : strcmp(e, "on") == 0 ? NB_KTLS_ON : strcmp(e, "auto") == 0 ? NB_KTLS_AUTO : NB_KTLS_OFF;
}

/* ---- TLS ---- */
typedef struct {
    uv_loop_t loop;
    h_ep_t ep;
    int got;       /* frames received (receiver thread) */
    int stop;
    int port;
    int listening;
    double t_end;
} rx_side_t;

static rx_side_t rxs;
static uint8_t *g_payload;

static void rx_frame(h_ep_t *e, nb_conn_t *c, Nebula__Frame *f, uint8_t *p, size_t len)
{
    nebula__frame__free_unpacked(f, NULL);
    free(p);
    if (__atomic_add_fetch(&rxs.got, 1, __ATOMIC_SEQ_CST) % COUNT == 0)
        rxs.t_end = nb_mono_s();
}

static void stop_check(uv_timer_t *t)
{
    if (__atomic_load_n(&rxs.stop, __ATOMIC_SEQ_CST)) {
        uv_timer_stop(t);
        uv_close((uv_handle_t *)t, NULL);
        nb_net_close(rxs.ep.net, NULL, NULL);
    }
}

static void *rx_thread(void *arg)
{
    static const char *const allow[] = { "a" };
    nb_net_cfg_t cfg;
    uv_loop_init(&rxs.loop);
    h_cfg(&cfg, &rxs.ep, "b", "b", allow, 1);
    cfg.ktls = bench_ktls();
    cfg.dead_after_ms = 30000;
    rxs.ep.on_frame = rx_frame;
    h_ep_new(&rxs.loop, &rxs.ep, &cfg, 1);
    nb_net_set_job(rxs.ep.net, JOB);
    rxs.port = rxs.ep.port;
    __atomic_store_n(&rxs.listening, 1, __ATOMIC_SEQ_CST);
    uv_timer_t t;
    uv_timer_init(&rxs.loop, &t);
    uv_timer_start(&t, stop_check, 5, 5);
    uv_run(&rxs.loop, UV_RUN_DEFAULT);
    uv_loop_close(&rxs.loop);
    return NULL;
}

typedef struct {
    h_ep_t ep;
    int sent, target;
    uv_loop_t loop;
} tx_side_t;

static tx_side_t txs;

static void tx_pump(void)
{
    nb_conn_t *c = nb_net_conn(txs.ep.net, "b");
    if (!c)
        return;
    while (txs.sent < txs.target) {
        uint64_t shape[2] = { 1024, 1024 };
        Nebula__Frame f = NEBULA__FRAME__INIT;
        Nebula__Tensor t = NEBULA__TENSOR__INIT;
        t.job_id = JOB;
        t.kind = NEBULA__TENSOR_KIND__KIND_ACTIVATION;
        t.dtype = NEBULA__DTYPE__DTYPE_F32;
        t.shape = shape;
        t.n_shape = 2;
        t.codec = "raw";
        t.decoded_bytes = TENSOR;
        f.body_case = NEBULA__FRAME__BODY_TENSOR;
        f.tensor = &t;
        /* the shared buffer stays alive: no free callback needed */
        int rc = nb_conn_send(c, &f, g_payload, TENSOR, NULL, NULL);
        if (rc == NB_ELIMIT)
            return;
        NB_CHECK(rc == 0);
        txs.sent++;
    }
}

static void tx_writable(nb_conn_t *c, void *ud)
{
    tx_pump();
}

static double run_tls(void)
{
    int base = __atomic_load_n(&rxs.got, __ATOMIC_SEQ_CST);
    txs.target += COUNT;
    double t0 = nb_mono_s();
    tx_pump();
    while (__atomic_load_n(&rxs.got, __ATOMIC_SEQ_CST) < base + COUNT)
        uv_run(&txs.loop, UV_RUN_ONCE);
    return (double)COUNT * TENSOR / (rxs.t_end - t0) / 1e6;
}

/* ---- the crypto limit ---- */
#define RECORD 16384 /* largest TLS plaintext record */

static const EVP_CIPHER *suite_aead(const char *suite)
{
    if (strstr(suite, "AES_128_GCM"))
        return EVP_aes_128_gcm();
    if (strstr(suite, "AES_256_GCM"))
        return EVP_aes_256_gcm();
    if (strstr(suite, "CHACHA20"))
        return EVP_chacha20_poly1305();
    return NULL;
}

/* Seals COUNT x TENSOR bytes as RECORD-byte records (fresh nonce per record,
 * 5-byte header as AAD, 16-byte tag), as a TLS 1.3 sender does; MB/s of
 * plaintext. */
static double run_crypto(const EVP_CIPHER *aead, uint8_t *out)
{
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    uint8_t key[32], iv[12] = { 0 }, tag[16], aad[5] = { 23, 3, 3, 0x40, 0x11 };
    h_fill(key, sizeof key, 9);
    NB_CHECK(x && EVP_EncryptInit_ex(x, aead, NULL, key, NULL) == 1);
    double t0 = nb_mono_s();
    uint64_t seq = 0;
    for (int i = 0; i < COUNT; i++)
        for (size_t off = 0; off < TENSOR; off += RECORD, seq++) {
            memcpy(iv + 4, &seq, 8);
            int n = 0;
            NB_CHECK(EVP_EncryptInit_ex(x, NULL, NULL, NULL, iv) == 1);
            NB_CHECK(EVP_EncryptUpdate(x, NULL, &n, aad, sizeof aad) == 1);
            NB_CHECK(EVP_EncryptUpdate(x, out, &n, g_payload + off, RECORD) == 1);
            NB_CHECK(EVP_EncryptFinal_ex(x, out + n, &n) == 1);
            NB_CHECK(EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, 16, tag) == 1);
        }
    double dt = nb_mono_s() - t0;
    EVP_CIPHER_CTX_free(x);
    return (double)COUNT * TENSOR / dt / 1e6;
}

/* ---- plain TCP ---- */
static int tcp_lfd, tcp_port;

static int read_full(int fd, void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = read(fd, p, len);
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void *tcp_rx(void *arg)
{
    int fd = accept(tcp_lfd, NULL, NULL);
    uint8_t hdr[64];
    for (int i = 0; i < COUNT; i++) {
        NB_CHECK(read_full(fd, hdr, sizeof hdr) == 0);
        uint8_t *p = malloc(TENSOR);
        NB_CHECK(p && read_full(fd, p, TENSOR) == 0);
        free(p);
    }
    *(double *)arg = nb_mono_s();
    close(fd);
    return NULL;
}

static double run_tcp(void)
{
    double t_end = 0;
    pthread_t th;
    pthread_create(&th, NULL, tcp_rx, &t_end);
    int fd = h_tcp_connect(tcp_port);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    uint8_t hdr[64] = { 'N', 'B', 1 };
    double t0 = nb_mono_s();
    for (int i = 0; i < COUNT; i++) {
        NB_CHECK(write_full(fd, hdr, sizeof hdr) == 0);
        NB_CHECK(write_full(fd, g_payload, TENSOR) == 0);
    }
    pthread_join(th, NULL);
    close(fd);
    return (double)COUNT * TENSOR / (t_end - t0) / 1e6;
}

int main(void)
{
    nb_log_init("bench", NB_LOG_WARN);
    h_certs("a b");
    g_payload = malloc(TENSOR);
    h_fill(g_payload, TENSOR, 3);

    tcp_lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    NB_CHECK(bind(tcp_lfd, (struct sockaddr *)&a, sizeof a) == 0 && listen(tcp_lfd, 4) == 0);
    socklen_t al = sizeof a;
    getsockname(tcp_lfd, (struct sockaddr *)&a, &al);
    tcp_port = ntohs(a.sin_port);

    pthread_t th;
    pthread_create(&th, NULL, rx_thread, NULL);
    while (!__atomic_load_n(&rxs.listening, __ATOMIC_SEQ_CST))
        usleep(1000);
    nb_net_cfg_t cfg;
    uv_loop_init(&txs.loop);
    h_cfg(&cfg, &txs.ep, "a", "a", NULL, 0);
    cfg.ktls = bench_ktls();
    cfg.send_queue_bytes = 16u << 20;
    cfg.dead_after_ms = 30000;
    nb_net_cb_t cb = h_cb;
    cb.on_writable = tx_writable;
    NB_CHECK(nb_net_new(&txs.loop, &cfg, &cb, &txs.ep, &txs.ep.net) == 0);
    NB_CHECK(nb_net_connect(txs.ep.net, "b", "127.0.0.1", rxs.port) == 0);
    NB_CHECK(h_run_until(&txs.loop, &txs.ep.ready, 1, 5000));

    /* the suite the two endpoints negotiated, not the one we expect */
    const char *suite = nb_conn_tls_cipher(txs.ep.conn);
    const EVP_CIPHER *aead = suite_aead(suite);
    NB_CHECK(aead != NULL); /* a TLS 1.3 suite this benchmark does not know */
    uint8_t *sealed = malloc(RECORD + 16);
    NB_CHECK(sealed != NULL);
    double best_tls = 0, best_tcp = 0, best_crypto = 0;
    for (int r = 0; r < 5; r++) {
        double v = run_tcp();
        best_tcp = v > best_tcp ? v : best_tcp;
        v = run_tls();
        best_tls = v > best_tls ? v : best_tls;
        v = run_crypto(aead, sealed);
        best_crypto = v > best_crypto ? v : best_crypto;
        fprintf(stderr, "round %d: tcp %.0f MB/s, tls %.0f MB/s, %s sealing %.0f MB/s\n", r, best_tcp, best_tls,
                suite, best_crypto);
    }
    char sname[64];
    size_t k = 0;
    for (const char *p = strncmp(suite, "TLS_", 4) == 0 ? suite + 4 : suite; *p && k + 1 < sizeof sname; p++)
        sname[k++] = (char)tolower((unsigned char)*p);
    sname[k] = 0;
    printf("# %s; tls.ktls %s (NB_BENCH_KTLS); the sender's records: %s\n", nb_ktls_state(),
           nb_ktls_mode_name((nb_ktls_mode_t)bench_ktls()), nb_conn_tls_layer(txs.ep.conn));
    printf("bench net_tcp_goodput_4mib %.0f MB/s\n", best_tcp);
    printf("bench net_tls_goodput_4mib %.0f MB/s\n", best_tls);
    printf("bench net_tls_vs_tcp %.3f ratio\n", best_tls / best_tcp);
    printf("bench tls_crypto_limit_%s %.0f MB/s\n", sname, best_crypto);
    printf("bench tls_goodput_vs_crypto_limit %.3f x\n", best_tls / best_crypto);
    free(sealed);

    nb_net_close(txs.ep.net, h_ep_done, &txs.ep);
    __atomic_store_n(&rxs.stop, 1, __ATOMIC_SEQ_CST);
    h_run_until(&txs.loop, &txs.ep.freed, 1, 5000);
    pthread_join(th, NULL);
    uv_loop_close(&txs.loop);
    close(tcp_lfd);
    free(g_payload);
    h_certs_free();
    return 0;
}
