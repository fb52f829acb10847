/*
 * test_ktls.c - kernel TLS for the sending direction (tls.ktls).
 *
 * The keys: after a TLS 1.3 handshake between two sessions in memory, the
 * key, IV and sequence number nb_tls_tx_keys gives are exactly those the
 * peer decrypts with: records sealed here as the kernel seals them (AEAD of
 * the plaintext and its content type, nonce = IV xor sequence number, the
 * record header as additional data) are read by the peer's OpenSSL, in
 * order, both directions. This runs on any kernel.
 *
 * The switch: two endpoints with tls.ktls auto exchange tensors. Where the
 * kernel offers kernel TLS the connections switch ("ktls-tx") and the data
 * arrives intact; where it does not, the probe is forced to say it does, the
 * kernel refuses, and the connections fall back to OpenSSL ("user") with the
 * data intact (auto) or are closed (on).
 */
#include "tests/net/net_harness.h"
#include <openssl/evp.h>
#include "daemon/net/ktls.h"

/* ---- the keys, checked against OpenSSL ---- */
static nb_tls_t *new_session(int is_server, const char *me, const char *peer)
{
    char cert[512], key[512], ca[512], err[256];
    h_path(cert, sizeof cert, me, "pem");
    h_path(key, sizeof key, me, "key");
    h_path(ca, sizeof ca, "ca", "pem");
    nb_tls_files_t f = { cert, key, ca };
    const char *names[] = { peer };
    nb_tls_t *t = NULL;
    assert_int_equal(nb_tls_new(&f, is_server, names, 1, &t, err, sizeof err), 0);
    return t;
}

/* Lends what from has to send to to (the buffer, returned, must live until
 * to's nb_tls_feed_done). */
static uint8_t *shuttle(nb_tls_t *from, nb_tls_t *to)
{
    size_t n;
    uint8_t *b = nb_tls_take_out(from, &n);
    if (n)
        assert_int_equal(nb_tls_feed(to, b, n), 0);
    return b;
}

static void handshake(nb_tls_t *c, nb_tls_t *s)
{
    int dc = 0, ds = 0;
    for (int i = 0; i < 20 && !(dc == 1 && ds == 1); i++) {
        if (dc != 1)
            dc = nb_tls_handshake(c);
        assert_true(dc >= 0);
        uint8_t *b = shuttle(c, s);
        if (ds != 1)
            ds = nb_tls_handshake(s);
        assert_true(ds >= 0);
        assert_int_equal(nb_tls_feed_done(s), 0);
        free(b);
        b = shuttle(s, c);
        if (dc != 1)
            dc = nb_tls_handshake(c);
        assert_true(dc >= 0);
        assert_int_equal(nb_tls_feed_done(c), 0);
        free(b);
    }
    assert_int_equal(dc, 1);
    assert_int_equal(ds, 1);
}

/* One TLS 1.3 application-data record as the kernel builds it. */
static size_t seal(const nb_tls_tx_keys_t *k, uint64_t seq, const char *text, uint8_t *out)
{
    size_t n = strlen(text), clen = n + 1 + 16;
    uint8_t nonce[12], inner[256];
    memcpy(nonce, k->iv, 12);
    for (int i = 0; i < 8; i++)
        nonce[4 + i] ^= (uint8_t)(seq >> (56 - 8 * i));
    memcpy(inner, text, n);
    inner[n] = 23; /* content type: application data */
    out[0] = 23;
    out[1] = 3;
    out[2] = 3;
    out[3] = (uint8_t)(clen >> 8);
    out[4] = (uint8_t)clen;
    const EVP_CIPHER *c = k->cipher == NB_TLS_AES_128_GCM   ? EVP_aes_128_gcm()
                          : k->cipher == NB_TLS_AES_256_GCM ? EVP_aes_256_gcm()
                                                            : EVP_chacha20_poly1305();
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    int len = 0;
    assert_int_equal(EVP_EncryptInit_ex(x, c, NULL, k->key, nonce), 1);
    assert_int_equal(EVP_EncryptUpdate(x, NULL, &len, out, 5), 1);
    assert_int_equal(EVP_EncryptUpdate(x, out + 5, &len, inner, (int)n + 1), 1);
    assert_int_equal(EVP_EncryptFinal_ex(x, out + 5 + len, &len), 1);
    assert_int_equal(EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, 16, out + 5 + n + 1), 1);
    EVP_CIPHER_CTX_free(x);
    return 5 + clen;
}

static void expect_read(nb_tls_t *t, const uint8_t *rec, size_t len, const char *want)
{
    char buf[256];
    assert_int_equal(nb_tls_feed(t, rec, len), 0);
    long got = nb_tls_read(t, buf, sizeof buf);
    assert_int_equal(nb_tls_feed_done(t), 0);
    assert_int_equal(got, (long)strlen(want));
    assert_memory_equal(buf, want, strlen(want));
}

static void test_keys_match_openssl(void **st)
{
    (void)st;
    nb_tls_t *c = new_session(0, "a", "b"), *s = new_session(1, "b", "a");
    nb_tls_keep_tx_secret(c);
    nb_tls_keep_tx_secret(s);
    handshake(c, s);
    nb_tls_tx_keys_t kc, ks;
    assert_int_equal(nb_tls_tx_keys(c, &kc), 0);
    assert_int_equal(nb_tls_tx_keys(s, &ks), 0);
    assert_int_equal(kc.cipher, NB_TLS_AES_128_GCM); /* the suite the transport prefers */
    assert_int_equal(kc.key_len, 16);
    assert_int_equal(kc.seq, 0);
    assert_memory_not_equal(kc.key, ks.key, 16); /* each direction its own key */
    uint8_t rec[512];
    size_t n = seal(&kc, 0, "hello from the kernel", rec);
    expect_read(s, rec, n, "hello from the kernel");
    n = seal(&kc, 1, "second record", rec);
    expect_read(s, rec, n, "second record");
    n = seal(&ks, 0, "and back", rec);
    expect_read(c, rec, n, "and back");
    /* a record under the wrong sequence number is refused */
    n = seal(&kc, 7, "replayed", rec);
    char buf[64];
    assert_int_equal(nb_tls_feed(s, rec, n), 0);
    assert_true(nb_tls_read(s, buf, sizeof buf) < 0);
    nb_tls_free(c);
    nb_tls_free(s);

    /* no keys: secret not kept, asked twice, or data already written by OpenSSL */
    c = new_session(0, "a", "b");
    s = new_session(1, "b", "a");
    nb_tls_keep_tx_secret(s);
    handshake(c, s);
    assert_int_equal(nb_tls_tx_keys(c, &kc), NB_ESTATE);
    assert_int_equal(nb_tls_write(s, "x", 1), 0);
    assert_int_equal(nb_tls_tx_keys(s, &ks), NB_ESTATE);
    nb_tls_free(c);
    nb_tls_free(s);
}

/* ---- the switch in the transport ---- */
#define N_MSG 24
static int got_ok, got_bad;

static void rx_frame(h_ep_t *e, nb_conn_t *c, Nebula__Frame *f, uint8_t *p, size_t len)
{
    int i = (int)f->tensor->micro_batch;
    uint8_t *want = malloc(len ? len : 1);
    h_fill(want, len, (uint64_t)i);
    if (len == (size_t)(1 + i) * 40000 && memcmp(want, p, len) == 0)
        got_ok++;
    else
        got_bad++;
    free(want);
    nebula__frame__free_unpacked(f, NULL);
    free(p);
}

static void free_payload(void *p, void *ud)
{
    (void)ud;
    free(p);
}

static void send_tensor(nb_conn_t *c, int i)
{
    size_t bytes = (size_t)(1 + i) * 40000;
    uint8_t *p = malloc(bytes);
    h_fill(p, bytes, (uint64_t)i);
    uint64_t shape[1] = { bytes / 4 };
    Nebula__Frame f = NEBULA__FRAME__INIT;
    Nebula__Tensor t = NEBULA__TENSOR__INIT;
    t.job_id = 1;
    t.micro_batch = (uint32_t)i;
    t.kind = NEBULA__TENSOR_KIND__KIND_ACTIVATION;
    t.dtype = NEBULA__DTYPE__DTYPE_F32;
    t.n_shape = 1;
    t.shape = shape;
    t.codec = "raw";
    t.decoded_bytes = bytes;
    f.body_case = NEBULA__FRAME__BODY_TENSOR;
    f.tensor = &t;
    assert_int_equal(nb_conn_send(c, &f, p, bytes, free_payload, NULL), 0);
}

static void run_pair(int mode_a, int expect_up)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    h_ep_t a = { 0 }, b = { 0 };
    nb_net_cfg_t ca, cb;
    const char *allow_a[] = { "a" };
    h_cfg(&ca, &a, "a", "a", NULL, 0);
    h_cfg(&cb, &b, "b", "b", allow_a, 1);
    ca.ktls = mode_a;
    cb.ktls = NB_KTLS_AUTO;
    a.on_frame = b.on_frame = rx_frame;
    h_ep_new(&loop, &b, &cb, 1);
    h_ep_new(&loop, &a, &ca, 0);
    nb_net_set_job(a.net, 1);
    nb_net_set_job(b.net, 1);
    assert_int_equal(nb_net_connect(a.net, "b", "127.0.0.1", b.port), 0);
    if (!expect_up) {
        /* tls.ktls on, refused: a closes each attempt before Hello */
        assert_true(h_run_until_u64(&loop, &nb_net_stats(a.net)->closed, 2, 20000));
        assert_int_equal(a.ready, 0);
        assert_int_equal(nb_net_stats(a.net)->ktls_tx, 0);
    } else {
        assert_true(h_run_until(&loop, &a.ready, 1, 20000));
        assert_true(h_run_until(&loop, &b.ready, 1, 20000));
        got_ok = got_bad = 0;
        for (int i = 0; i < N_MSG; i++) {
            send_tensor(a.conn, i);
            send_tensor(b.conn, i);
        }
        assert_true(h_run_until(&loop, &got_ok, 2 * N_MSG, 30000));
        assert_int_equal(got_bad, 0);
    }
    h_ep_close(&loop, &a);
    h_ep_close(&loop, &b);
    h_loop_end(&loop);
}

static void test_switch_or_fallback(void **st)
{
    (void)st;
    const char *why;
    bool real = nb_ktls_available(&why);
    print_message("kernel TLS here: %s (%s)\n", real ? "available" : "unavailable", why);
    if (!real)
        nb_ktls_force_probe(true); /* the kernel will refuse: the fallback runs */
    uv_loop_t loop;
    uv_loop_init(&loop);
    h_ep_t a = { 0 }, b = { 0 };
    nb_net_cfg_t ca, cb;
    const char *allow_a[] = { "a" };
    h_cfg(&ca, &a, "a", "a", NULL, 0);
    h_cfg(&cb, &b, "b", "b", allow_a, 1);
    ca.ktls = cb.ktls = NB_KTLS_AUTO;
    a.on_frame = b.on_frame = rx_frame;
    h_ep_new(&loop, &b, &cb, 1);
    h_ep_new(&loop, &a, &ca, 0);
    nb_net_set_job(a.net, 1);
    nb_net_set_job(b.net, 1);
    assert_int_equal(nb_net_connect(a.net, "b", "127.0.0.1", b.port), 0);
    assert_true(h_run_until(&loop, &a.ready, 1, 20000));
    assert_true(h_run_until(&loop, &b.ready, 1, 20000));
    const char *layer = real ? "ktls-tx" : "user";
    assert_string_equal(nb_conn_tls_layer(a.conn), layer);
    assert_string_equal(nb_conn_tls_layer(b.conn), layer);
    const nb_net_stats_t *sa = nb_net_stats(a.net), *sb = nb_net_stats(b.net);
    assert_int_equal(sa->ktls_tx, real ? 1 : 0);
    assert_int_equal(sa->ktls_fallbacks, real ? 0 : 1);
    assert_int_equal(sb->ktls_fallbacks, real ? 0 : 1);
    got_ok = got_bad = 0;
    for (int i = 0; i < N_MSG; i++) {
        send_tensor(a.conn, i);
        send_tensor(b.conn, i);
    }
    assert_true(h_run_until(&loop, &got_ok, 2 * N_MSG, 30000));
    assert_int_equal(got_bad, 0);
    /* orderly close: close_notify (sealed by the kernel when it encrypts) */
    nb_conn_close(a.conn);
    assert_true(h_run_until(&loop, &b.closed, 1, 20000));
    assert_true(h_run_until(&loop, &a.closed, 1, 20000));
    h_ep_close(&loop, &a);
    h_ep_close(&loop, &b);
    h_loop_end(&loop);
}

static void test_on_refused_closes(void **st)
{
    (void)st;
    /* only where the kernel refuses can "on" be seen failing */
    nb_ktls_force_probe(true);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int kernel_refuses = setsockopt(fd, IPPROTO_TCP, 31 /* TCP_ULP */, "tls", 3) != 0 && errno == ENOENT;
    close(fd);
    if (!kernel_refuses)
        skip(); /* this kernel would accept: "on" cannot be refused here */
    run_pair(NB_KTLS_ON, 0);
}

static int setup(void **state)
{
    h_log_start();
    h_certs("a b");
    return 0;
}

static int teardown(void **state)
{
    h_certs_free();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys_match_openssl),
        cmocka_unit_test(test_switch_or_fallback),
        cmocka_unit_test(test_on_refused_closes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
