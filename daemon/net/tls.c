/* tls.c - OpenSSL session over memory BIOs; see tls.h. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include "kernels/common.h"
#include "daemon/net/tls.h"

struct nb_tls {
    SSL_CTX *ctx;
    SSL *ssl;
    BIO *bio;  /* ours, both directions: see the BIO methods below */
    /* network -> ssl: first the bytes kept from an earlier feed, then the
     * caller's buffer, borrowed until nb_tls_feed_done */
    uint8_t *keep;
    size_t keep_len, keep_off, keep_cap;
    const uint8_t *in;
    size_t in_len;
    /* ssl -> network: ciphertext appended here, handed out whole */
    uint8_t *out;
    size_t out_len, out_cap;
    int oom;
    int is_server;
    int seen_first_byte;
    int done;
    nb_tls_refusal_t refusal;
    char detail[256];
    /* our sending traffic secret, kept from the key log for kernel TLS
     * (nb_tls_keep_tx_secret); wiped in nb_tls_tx_keys and nb_tls_free */
    int keep_secret, app_written;
    uint8_t tx_secret[EVP_MAX_MD_SIZE];
    size_t tx_secret_len;
};

static const char *const refusal_names[NB_TLS_REFUSE_COUNT] = {
    "ok", "not_tls", "version", "unknown_ca", "expired", "not_yet_valid",
    "wrong_name", "no_cert", "bad_cert", "peer_alert", "handshake",
};

const char *nb_tls_refusal_name(nb_tls_refusal_t r)
{
    return (unsigned)r < NB_TLS_REFUSE_COUNT ? refusal_names[r] : "?";
}

/* A source/sink BIO instead of a pair of memory BIOs: OpenSSL reads
 * ciphertext straight from the socket buffer and writes it straight into the
 * buffer handed to uv_write, saving one copy in each direction. */
static int out_reserve(nb_tls_t *t, size_t need)
{
    if (need <= t->out_cap)
        return 0;
    size_t cap = t->out_cap ? t->out_cap : 4096;
    while (cap < need)
        cap *= 2;
    uint8_t *o = realloc(t->out, cap);
    if (!o) {
        t->oom = 1;
        return -1;
    }
    t->out = o;
    t->out_cap = cap;
    return 0;
}

static int bio_write(BIO *b, const char *data, int len)
{
    nb_tls_t *t = BIO_get_data(b);
    if (out_reserve(t, t->out_len + (size_t)len) < 0)
        return -1;
    memcpy(t->out + t->out_len, data, (size_t)len);
    t->out_len += (size_t)len;
    return len;
}

static int bio_read(BIO *b, char *data, int len)
{
    nb_tls_t *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    size_t n = 0, want = (size_t)len;
    if (t->keep_off < t->keep_len) {
        n = t->keep_len - t->keep_off < want ? t->keep_len - t->keep_off : want;
        memcpy(data, t->keep + t->keep_off, n);
        t->keep_off += n;
    }
    if (n < want && t->in_len) {
        size_t k = t->in_len < want - n ? t->in_len : want - n;
        memcpy(data + n, t->in, k);
        t->in += k;
        t->in_len -= k;
        n += k;
    }
    if (n == 0) {
        BIO_set_retry_read(b);
        return -1;
    }
    return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    nb_tls_t *t = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING:
        return (long)(t->keep_len - t->keep_off + t->in_len);
    case BIO_CTRL_WPENDING:
        return (long)t->out_len;
    default:
        return 0;
    }
}

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static void bio_init_method(void)
{
    bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "nebula-net");
    NB_CHECK(bio_method);
    BIO_meth_set_write(bio_method, bio_write);
    BIO_meth_set_read(bio_method, bio_read);
    BIO_meth_set_ctrl(bio_method, bio_ctrl);
}

static void ssl_errstr(char *buf, size_t len)
{
    unsigned long e = ERR_peek_last_error();
    if (e)
        ERR_error_string_n(e, buf, len);
    else
        snprintf(buf, len, "no OpenSSL error");
}

/* "what path: reason": the system's reason when the file cannot be opened
 * (errno), else OpenSSL's (not PEM, wrong type, ...). */
static void file_error(char *err, size_t errlen, const char *what, const char *path)
{
    char why[256];
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(why, sizeof why, "%s", strerror(errno));
    } else {
        fclose(f);
        /* the first error is the cause ("no start line"); later ones
         * only say which call gave up ("PEM lib") */
        unsigned long e = ERR_peek_error();
        const char *r = e ? ERR_reason_error_string(e) : NULL;
        if (r)
            snprintf(why, sizeof why, "OpenSSL: %s", r);
        else if (e)
            ERR_error_string_n(e, why, sizeof why);
        else
            snprintf(why, sizeof why, "not a PEM file OpenSSL can read");
    }
    snprintf(err, errlen, "cannot load %s %s: %s", what, path, why);
}

/* Loads certificate chain, key and CA into ctx and checks that the key
 * matches the certificate. Returns 0, or NB_EIO / NB_EAUTH with the file
 * and the reason in err. */
static int load_files(SSL_CTX *ctx, const nb_tls_files_t *files, char *err, size_t errlen)
{
    if (SSL_CTX_use_certificate_chain_file(ctx, files->cert_file) != 1) {
        file_error(err, errlen, "certificate", files->cert_file);
        return NB_EIO;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, files->key_file, SSL_FILETYPE_PEM) != 1) {
        if (ERR_GET_REASON(ERR_peek_error()) == X509_R_KEY_VALUES_MISMATCH) {
            snprintf(err, errlen, "key %s does not match certificate %s", files->key_file, files->cert_file);
            return NB_EAUTH;
        }
        file_error(err, errlen, "key", files->key_file);
        return NB_EIO;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "key %s does not match certificate %s", files->key_file, files->cert_file);
        return NB_EAUTH;
    }
    if (SSL_CTX_load_verify_locations(ctx, files->ca_file, NULL) != 1) {
        file_error(err, errlen, "CA file", files->ca_file);
        return NB_EIO;
    }
    return 0;
}

int nb_tls_check_files(const nb_tls_files_t *files, char *err, size_t errlen)
{
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());
    if (!ctx) {
        ssl_errstr(err, errlen);
        return NB_ENOMEM;
    }
    int rc = load_files(ctx, files, err, errlen);
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return rc;
}

/* ---- contexts: built from the three files, shared while they are unchanged ---- */

static int hexval(int ch)
{
    return ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* OpenSSL hands every secret of a TLS 1.3 handshake to the key log as
 * "LABEL CLIENT_RANDOM SECRET" (hex). A session that may hand its sending
 * direction to the kernel keeps its first application traffic secret; no
 * secret is ever written anywhere. */
static void keylog_cb(const SSL *ssl, const char *line)
{
    nb_tls_t *t = SSL_get_app_data(ssl);
    if (!t || !t->keep_secret)
        return;
    const char *want = t->is_server ? "SERVER_TRAFFIC_SECRET_0 " : "CLIENT_TRAFFIC_SECRET_0 ";
    if (strncmp(line, want, strlen(want)) != 0)
        return;
    const char *hex = strchr(line + strlen(want), ' ');
    if (!hex)
        return;
    hex++;
    size_t n = strlen(hex) / 2;
    if (n == 0 || n > sizeof t->tx_secret)
        return;
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            OPENSSL_cleanse(t->tx_secret, sizeof t->tx_secret);
            return;
        }
        t->tx_secret[i] = (uint8_t)(hi << 4 | lo);
    }
    t->tx_secret_len = n;
}

/* A context with the certificate, key and CA loaded; NULL with *rc and a
 * message in err on failure. */
static SSL_CTX *ctx_build(const nb_tls_files_t *files, int is_server, char *err, size_t errlen,
                          int *rc_out)
{
    int rc = NB_EAUTH;
    SSL_CTX *ctx = SSL_CTX_new(is_server ? TLS_server_method() : TLS_client_method());
    if (!ctx)
        goto fail;
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, 0);
    /* AES-128-GCM first: hardware accelerated and the cheapest per byte. */
    SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                                     "TLS_CHACHA20_POLY1305_SHA256");
    /* No tickets: every connection verifies the peer certificate afresh. */
    SSL_CTX_set_num_tickets(ctx, 0);
    /* Read whole bursts of records from our BIO at once. */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_default_read_buffer_len(ctx, 64u << 10);
    if (is_server)
        SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if ((rc = load_files(ctx, files, err, errlen)) != 0)
        goto fail_msg;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    SSL_CTX_set_keylog_callback(ctx, keylog_cb);
    return ctx;
fail:
    ssl_errstr(err, errlen);
fail_msg:
    ERR_clear_error();
    SSL_CTX_free(ctx);
    *rc_out = rc;
    return NULL;
}

/* The files are re-read for every connection only when they changed
 * (certificate rotation needs no restart), not for each of a flood of
 * connections: loading and checking a key costs the loop milliseconds. */
#define CTX_CACHE 8
typedef struct {
    char cert[512], key[512], ca[512];
    int is_server;
    struct stat st[3];
    SSL_CTX *ctx;
} ctx_entry_t;
static ctx_entry_t ctx_cache[CTX_CACHE];
static unsigned ctx_next;
static pthread_mutex_t ctx_lock = PTHREAD_MUTEX_INITIALIZER;

static int same_stat(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

static SSL_CTX *ctx_get(const nb_tls_files_t *files, int is_server, char *err, size_t errlen,
                        int *rc)
{
    const char *path[3] = { files->cert_file, files->key_file, files->ca_file };
    struct stat st[3];
    int cacheable = 1;
    for (int i = 0; i < 3; i++)
        if (strlen(path[i]) >= sizeof ctx_cache[0].cert || stat(path[i], &st[i]) != 0)
            cacheable = 0;
    if (cacheable) {
        pthread_mutex_lock(&ctx_lock);
        for (int e = 0; e < CTX_CACHE; e++) {
            ctx_entry_t *c = &ctx_cache[e];
            if (c->ctx && c->is_server == is_server && strcmp(c->cert, path[0]) == 0 &&
                strcmp(c->key, path[1]) == 0 && strcmp(c->ca, path[2]) == 0 &&
                same_stat(&c->st[0], &st[0]) && same_stat(&c->st[1], &st[1]) &&
                same_stat(&c->st[2], &st[2])) {
                SSL_CTX *ctx = c->ctx;
                SSL_CTX_up_ref(ctx);
                pthread_mutex_unlock(&ctx_lock);
                return ctx;
            }
        }
        pthread_mutex_unlock(&ctx_lock);
    }
    SSL_CTX *ctx = ctx_build(files, is_server, err, errlen, rc);
    if (!ctx || !cacheable)
        return ctx;
    pthread_mutex_lock(&ctx_lock);
    ctx_entry_t *c = NULL;
    for (int e = 0; e < CTX_CACHE && !c; e++) /* the same files, older: replace */
        if (ctx_cache[e].ctx && ctx_cache[e].is_server == is_server &&
            strcmp(ctx_cache[e].cert, path[0]) == 0 && strcmp(ctx_cache[e].key, path[1]) == 0 &&
            strcmp(ctx_cache[e].ca, path[2]) == 0)
            c = &ctx_cache[e];
    if (!c)
        c = &ctx_cache[ctx_next++ % CTX_CACHE];
    if (c->ctx)
        SSL_CTX_free(c->ctx);
    snprintf(c->cert, sizeof c->cert, "%s", path[0]);
    snprintf(c->key, sizeof c->key, "%s", path[1]);
    snprintf(c->ca, sizeof c->ca, "%s", path[2]);
    c->is_server = is_server;
    memcpy(c->st, st, sizeof st);
    SSL_CTX_up_ref(ctx);
    c->ctx = ctx;
    pthread_mutex_unlock(&ctx_lock);
    return ctx;
}

int nb_tls_new(const nb_tls_files_t *files, int is_server,
               const char *const *names, size_t n_names, nb_tls_t **out,
               char *err, size_t errlen)
{
    NB_CHECK(n_names >= 1 && names);
    for (size_t i = 0; i < n_names; i++)
        NB_CHECK(names[i] && names[i][0]); /* empty would disable the name check */
    NB_CHECK(is_server || n_names == 1);
    ERR_clear_error();
    nb_tls_t *t = calloc(1, sizeof *t);
    if (!t)
        return NB_ENOMEM;
    t->is_server = is_server;
    int rc = NB_EAUTH;
    t->ctx = ctx_get(files, is_server, err, errlen, &rc);
    if (!t->ctx) {
        nb_tls_free(t);
        return rc;
    }
    t->ssl = SSL_new(t->ctx);
    if (!t->ssl)
        goto err;
    SSL_set_app_data(t->ssl, t);
    SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (SSL_set1_host(t->ssl, names[0]) != 1)
        goto err;
    for (size_t i = 1; i < n_names; i++)
        if (SSL_add1_host(t->ssl, names[i]) != 1)
            goto err;
    if (!is_server)
        SSL_set_tlsext_host_name(t->ssl, names[0]);
    pthread_once(&bio_once, bio_init_method);
    t->bio = BIO_new(bio_method);
    if (!t->bio)
        goto err;
    BIO_set_data(t->bio, t);
    BIO_set_init(t->bio, 1);
    SSL_set_bio(t->ssl, t->bio, t->bio); /* same BIO both ways: takes one reference */
    if (is_server)
        SSL_set_accept_state(t->ssl);
    else
        SSL_set_connect_state(t->ssl);
    *out = t;
    return 0;
err:
    ssl_errstr(err, errlen);
    ERR_clear_error();
    nb_tls_free(t);
    return rc;
}

void nb_tls_free(nb_tls_t *t)
{
    if (!t)
        return;
    if (t->ssl)
        SSL_free(t->ssl); /* frees the BIO */
    free(t->keep);
    free(t->out);
    if (t->ctx)
        SSL_CTX_free(t->ctx);
    OPENSSL_cleanse(t->tx_secret, sizeof t->tx_secret);
    free(t);
}

int nb_tls_feed(nb_tls_t *t, const void *buf, size_t len)
{
    if (!len)
        return 0;
    if (!t->seen_first_byte) {
        t->seen_first_byte = 1;
        /* A TLS stream starts with a handshake record (22); an alert (21) can
         * only come from a server. Anything else is plain TCP or garbage. */
        unsigned char b = *(const unsigned char *)buf;
        if (b != 22 && !(b == 21 && !t->is_server)) {
            t->refusal = NB_TLS_REFUSE_NOT_TLS;
            snprintf(t->detail, sizeof t->detail,
                     "first byte 0x%02x is not a TLS handshake record", b);
            return NB_EAUTH;
        }
    }
    NB_CHECK(t->in_len == 0); /* nb_tls_feed_done was called */
    t->in = buf;
    t->in_len = len;
    return 0;
}

int nb_tls_feed_done(nb_tls_t *t)
{
    if (t->keep_off == t->keep_len)
        t->keep_off = t->keep_len = 0;
    if (!t->in_len)
        return 0;
    /* Keep what OpenSSL did not read yet; the caller reuses its buffer. */
    size_t live = t->keep_len - t->keep_off;
    size_t need = live + t->in_len;
    if (need > t->keep_cap) {
        uint8_t *k = malloc(need);
        if (!k)
            return NB_ENOMEM;
        if (live) /* keep is NULL before the first use */
            memcpy(k, t->keep + t->keep_off, live);
        free(t->keep);
        t->keep = k;
        t->keep_cap = need;
    } else {
        memmove(t->keep, t->keep + t->keep_off, live);
    }
    memcpy(t->keep + live, t->in, t->in_len);
    t->keep_off = 0;
    t->keep_len = need;
    t->in_len = 0;
    return 0;
}

static nb_tls_refusal_t classify_verify(long v)
{
    switch (v) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
        return NB_TLS_REFUSE_EXPIRED;
    case X509_V_ERR_CERT_NOT_YET_VALID:
        return NB_TLS_REFUSE_NOT_YET_VALID;
    case X509_V_ERR_HOSTNAME_MISMATCH:
        return NB_TLS_REFUSE_WRONG_NAME;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
        return NB_TLS_REFUSE_UNKNOWN_CA;
    default:
        return NB_TLS_REFUSE_BAD_CERT;
    }
}

static int fail_handshake(nb_tls_t *t)
{
    long v = SSL_get_verify_result(t->ssl);
    unsigned long e = ERR_peek_last_error();
    int reason = ERR_GET_REASON(e);
    char es[160];
    ssl_errstr(es, sizeof es);
    if (v != X509_V_OK && reason == SSL_R_CERTIFICATE_VERIFY_FAILED) {
        t->refusal = classify_verify(v);
        snprintf(t->detail, sizeof t->detail, "certificate verify failed: %s",
                 X509_verify_cert_error_string(v));
    } else {
        switch (reason) {
        case SSL_R_UNSUPPORTED_PROTOCOL:
        case SSL_R_NO_PROTOCOLS_AVAILABLE:
        case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
        case SSL_R_WRONG_VERSION_NUMBER:
        case SSL_R_UNSUPPORTED_SSL_VERSION:
            t->refusal = NB_TLS_REFUSE_VERSION;
            break;
        case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
        case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
            t->refusal = NB_TLS_REFUSE_NO_CERT;
            break;
        default:
            /* Alerts received from the peer have reasons >= 1000. */
            t->refusal = reason >= SSL_AD_REASON_OFFSET ? NB_TLS_REFUSE_PEER_ALERT
                                                        : NB_TLS_REFUSE_OTHER;
        }
        snprintf(t->detail, sizeof t->detail, "%s", es);
    }
    ERR_clear_error();
    return NB_EAUTH;
}

int nb_tls_handshake(nb_tls_t *t)
{
    if (t->done)
        return 1;
    ERR_clear_error();
    int r = SSL_do_handshake(t->ssl);
    if (r == 1) {
        t->done = 1;
        return 1;
    }
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    return fail_handshake(t);
}

long nb_tls_read(nb_tls_t *t, void *buf, size_t len)
{
    if (len > INT32_MAX)
        len = INT32_MAX;
    ERR_clear_error();
    int r = SSL_read(t->ssl, buf, (int)len);
    if (r > 0)
        return r;
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    if (e == SSL_ERROR_ZERO_RETURN)
        return NB_ECLOSED;
    if (e == SSL_ERROR_SSL) {
        /* In TLS 1.3 a client learns that the server refused its
         * certificate only here, as an alert after its own Finished. */
        int reason = ERR_GET_REASON(ERR_peek_last_error());
        if (reason >= SSL_AD_REASON_OFFSET) {
            t->refusal = NB_TLS_REFUSE_PEER_ALERT;
            ssl_errstr(t->detail, sizeof t->detail);
            ERR_clear_error();
            return NB_EAUTH;
        }
    }
    ssl_errstr(t->detail, sizeof t->detail);
    ERR_clear_error();
    return NB_EIO;
}

int nb_tls_write(nb_tls_t *t, const void *buf, size_t len)
{
    t->app_written = 1;
    const char *p = buf;
    /* Room for the records at once: growing while OpenSSL writes would copy
     * the ciphertext again on every doubling. */
    if (out_reserve(t, t->out_len + len + (len / 16384 + 1) * 64) < 0)
        return NB_ENOMEM;
    while (len) {
        int n = len > (1u << 30) ? (1 << 30) : (int)len;
        ERR_clear_error();
        int r = SSL_write(t->ssl, p, n);
        if (r <= 0) {
            ssl_errstr(t->detail, sizeof t->detail);
            ERR_clear_error();
            return t->oom ? NB_ENOMEM : NB_EIO;
        }
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

size_t nb_tls_pending_out(const nb_tls_t *t)
{
    return t->out_len;
}

uint8_t *nb_tls_take_out(nb_tls_t *t, size_t *len)
{
    uint8_t *o = t->out;
    *len = t->out_len;
    t->out = NULL;
    t->out_len = t->out_cap = 0;
    return o;
}

void nb_tls_shutdown(nb_tls_t *t)
{
    ERR_clear_error();
    if (t->done)
        SSL_shutdown(t->ssl);
    ERR_clear_error();
}

const char *nb_tls_peer_name(const nb_tls_t *t)
{
    return t->done ? SSL_get0_peername(t->ssl) : NULL;
}

nb_tls_refusal_t nb_tls_refusal(const nb_tls_t *t, const char **detail)
{
    if (detail)
        *detail = t->detail;
    return t->refusal;
}

const char *nb_tls_version(const nb_tls_t *t)
{
    return SSL_get_version(t->ssl);
}

const char *nb_tls_cipher(const nb_tls_t *t)
{
    return SSL_get_cipher_name(t->ssl);
}

/* ---- kernel TLS: the sending direction's keys ---- */

void nb_tls_keep_tx_secret(nb_tls_t *t)
{
    t->keep_secret = 1;
}

/* HKDF-Expand-Label(secret, label, "", len) of RFC 8446 7.1. */
static int expand_label(const EVP_MD *md, const uint8_t *secret, size_t slen, const char *label, uint8_t *out,
                        size_t len)
{
    uint8_t info[2 + 1 + 6 + 16 + 1];
    size_t ll = strlen(label), n = 0;
    if (ll > 16)
        return NB_EINVAL;
    info[n++] = (uint8_t)(len >> 8);
    info[n++] = (uint8_t)len;
    info[n++] = (uint8_t)(6 + ll);
    memcpy(info + n, "tls13 ", 6);
    n += 6;
    memcpy(info + n, label, ll);
    n += ll;
    info[n++] = 0; /* empty context */
    EVP_PKEY_CTX *k = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
    size_t got = len;
    int ok = k && EVP_PKEY_derive_init(k) > 0 && EVP_PKEY_CTX_set_hkdf_mode(k, EVP_PKEY_HKDEF_MODE_EXPAND_ONLY) > 0 &&
             EVP_PKEY_CTX_set_hkdf_md(k, md) > 0 && EVP_PKEY_CTX_set1_hkdf_key(k, secret, (int)slen) > 0 &&
             EVP_PKEY_CTX_add1_hkdf_info(k, info, (int)n) > 0 && EVP_PKEY_derive(k, out, &got) > 0 && got == len;
    EVP_PKEY_CTX_free(k);
    ERR_clear_error();
    return ok ? 0 : NB_EIO;
}

int nb_tls_tx_keys(nb_tls_t *t, nb_tls_tx_keys_t *k)
{
    memset(k, 0, sizeof *k);
    int rc = NB_ESTATE;
    if (!t->done || !t->keep_secret || t->app_written || !t->tx_secret_len)
        goto out;
    const SSL_CIPHER *c = SSL_get_current_cipher(t->ssl);
    uint32_t id = c ? SSL_CIPHER_get_id(c) & 0xffff : 0;
    const EVP_MD *md = EVP_sha256();
    switch (id) {
    case 0x1301: k->cipher = NB_TLS_AES_128_GCM; k->key_len = 16; break;
    case 0x1302: k->cipher = NB_TLS_AES_256_GCM; k->key_len = 32; md = EVP_sha384(); break;
    case 0x1303: k->cipher = NB_TLS_CHACHA20_POLY1305; k->key_len = 32; break;
    default: rc = NB_EINVAL; goto out;
    }
    if ((rc = expand_label(md, t->tx_secret, t->tx_secret_len, "key", k->key, k->key_len)) != 0 ||
        (rc = expand_label(md, t->tx_secret, t->tx_secret_len, "iv", k->iv, sizeof k->iv)) != 0)
        goto out;
    k->seq = 0; /* nothing was sent under these keys yet (app_written, no tickets) */
out:
    OPENSSL_cleanse(t->tx_secret, sizeof t->tx_secret);
    t->tx_secret_len = 0;
    t->keep_secret = 0;
    if (rc)
        OPENSSL_cleanse(k, sizeof *k);
    return rc;
}
