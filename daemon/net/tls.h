/*
 * tls.h - one TLS 1.3 session with mutual authentication, driven through
 * memory BIOs so the caller (conn.c, on the libuv loop) owns the socket.
 *
 * Ciphertext from the network goes in with nb_tls_feed (borrowed, no copy,
 * until nb_tls_feed_done); ciphertext to send comes out whole with
 * nb_tls_take_out (a malloc'd buffer, handed to uv_write as it is). No call
 * ever blocks or touches a socket.
 *
 * Every session builds its own SSL_CTX from the files, so a rotated
 * certificate, key or CA file takes effect for the next connection without a
 * restart. Both sides present a certificate from the deployment CA and check
 * the peer's name (SAN DNS, or CN) against the configured expected names with
 * SSL_set1_host / SSL_add1_host; an empty expected name is a programming
 * error (NB_CHECK), because it would silently disable the check.
 *
 * Thread: a session belongs to one thread (the loop thread).
 */
#ifndef NB_TLS_H
#define NB_TLS_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *cert_file; /* PEM chain presented to the peer */
    const char *key_file;  /* PEM private key of cert_file */
    const char *ca_file;   /* PEM CA certificates the peer must chain to */
} nb_tls_files_t;

/* Why a handshake was refused; each has a counter in nb_net_stats_t. */
typedef enum {
    NB_TLS_OK = 0,
    NB_TLS_REFUSE_NOT_TLS,       /* first bytes are not a TLS handshake (plain TCP) */
    NB_TLS_REFUSE_VERSION,       /* TLS below 1.3 offered or demanded */
    NB_TLS_REFUSE_UNKNOWN_CA,    /* peer certificate does not chain to our CA */
    NB_TLS_REFUSE_EXPIRED,       /* peer certificate expired */
    NB_TLS_REFUSE_NOT_YET_VALID, /* peer certificate not valid yet */
    NB_TLS_REFUSE_WRONG_NAME,    /* peer certificate name is not the expected one */
    NB_TLS_REFUSE_NO_CERT,       /* peer presented no certificate */
    NB_TLS_REFUSE_BAD_CERT,      /* other certificate verification failure */
    NB_TLS_REFUSE_PEER_ALERT,    /* the peer refused us (sent a fatal alert) */
    NB_TLS_REFUSE_OTHER,         /* any other handshake failure */
    NB_TLS_REFUSE_COUNT
} nb_tls_refusal_t;

/* Short stable name of a refusal, used in log lines and counters
 * ("not_tls", "version", "unknown_ca", "expired", ...). */
const char *nb_tls_refusal_name(nb_tls_refusal_t r);

typedef struct nb_tls nb_tls_t;

/* Creates a session from the three files: they are read again whenever one
 * of them changed (device, inode, size, mtime or ctime), else the context
 * built from them last is shared. is_server selects the role.
 * names: the peer names accepted (client: exactly the one server name it
 * dials; server: every client name it admits); n_names >= 1 and each name
 * non-empty (NB_CHECK). On success *out is owned by the caller
 * (nb_tls_free). Errors: NB_EIO / NB_EAUTH with a message in err (files
 * unreadable, key not matching the certificate), NB_ENOMEM. */
int nb_tls_new(const nb_tls_files_t *files, int is_server,
               const char *const *names, size_t n_names, nb_tls_t **out,
               char *err, size_t errlen);
void nb_tls_free(nb_tls_t *t);

/* Loads the three files as nb_tls_new would (certificate chain, key, the
 * key matching the certificate, CA) and throws them away: for
 * `nebulad --check-config` and start-up. Returns 0, or NB_EIO / NB_EAUTH /
 * NB_ENOMEM with "cannot load certificate PATH: No such file or directory"
 * (the system's reason, or OpenSSL's) in err. Any thread. */
int nb_tls_check_files(const nb_tls_files_t *files, char *err, size_t errlen);

/* Lends len ciphertext bytes received from the network to the session;
 * buf must stay valid until nb_tls_feed_done, which must be called before
 * the next feed (after nb_tls_handshake / nb_tls_read consumed what they
 * could). Returns 0 or a negative NB_E* code. The first byte of a stream
 * that is not a TLS handshake record is refused here
 * (NB_TLS_REFUSE_NOT_TLS, NB_EAUTH). */
int nb_tls_feed(nb_tls_t *t, const void *buf, size_t len);
/* Copies whatever of the lent bytes the session has not read yet into its
 * own buffer. Returns 0 or NB_ENOMEM. */
int nb_tls_feed_done(nb_tls_t *t);

/* Advances the handshake. Returns 1 when complete (peer verified), 0 when it
 * needs more input (send what nb_tls_take_out gives first), or NB_EAUTH with
 * the reason in nb_tls_refusal(). */
int nb_tls_handshake(nb_tls_t *t);

/* Decrypts up to len plaintext bytes into buf (which may be the final
 * destination of a payload). Returns the byte count, 0 when more ciphertext
 * is needed, NB_ECLOSED when the peer closed the session, or NB_EIO. */
long nb_tls_read(nb_tls_t *t, void *buf, size_t len);

/* Encrypts len plaintext bytes; all are consumed. Returns 0, NB_ENOMEM (no
 * room for the ciphertext) or NB_EIO. */
int nb_tls_write(nb_tls_t *t, const void *buf, size_t len);

/* Ciphertext waiting to be sent, and taking all of it out: the returned
 * malloc'd buffer (NULL when *len is 0) belongs to the caller (free()). */
size_t nb_tls_pending_out(const nb_tls_t *t);
uint8_t *nb_tls_take_out(nb_tls_t *t, size_t *len);

/* Queues a close_notify alert (then send nb_tls_take_out's bytes). */
void nb_tls_shutdown(nb_tls_t *t);

/* The verified peer name (one of names), or NULL before the handshake. */
const char *nb_tls_peer_name(const nb_tls_t *t);
/* The refusal reason of a failed handshake and a static-or-session detail
 * string (valid until nb_tls_free). */
nb_tls_refusal_t nb_tls_refusal(const nb_tls_t *t, const char **detail);
/* Negotiated protocol and cipher, e.g. "TLSv1.3", "TLS_AES_128_GCM_SHA256". */
const char *nb_tls_version(const nb_tls_t *t);
const char *nb_tls_cipher(const nb_tls_t *t);

/* ---- kernel TLS (daemon/net/ktls.h) ---- */

typedef enum { NB_TLS_AES_128_GCM = 1, NB_TLS_AES_256_GCM, NB_TLS_CHACHA20_POLY1305 } nb_tls_aead_t;

/* The keys of this side's sending direction, as the kernel takes them. */
typedef struct {
    nb_tls_aead_t cipher;
    uint8_t key[32];
    size_t key_len;   /* 16 or 32 */
    uint8_t iv[12];   /* the per-record nonce is iv XOR the sequence number */
    uint64_t seq;     /* sequence number of the next record */
} nb_tls_tx_keys_t;

/* Asks the session to keep its first application traffic secret of the
 * sending direction when the handshake makes it (call before the
 * handshake). */
void nb_tls_keep_tx_secret(nb_tls_t *t);

/* After the handshake, before any nb_tls_write: the sending direction's
 * key, IV and next sequence number, derived from the kept secret (RFC 8446
 * 7.3). From then on the caller encrypts (the kernel does) and must not call
 * nb_tls_write or send nb_tls_take_out's bytes. The secret is wiped either
 * way. Errors: NB_ESTATE (no kept secret, handshake not done, or data
 * already written), NB_EINVAL (a suite the kernel path does not know),
 * NB_EIO. *k is zeroed on error; the caller wipes it (OPENSSL_cleanse) after
 * use. */
int nb_tls_tx_keys(nb_tls_t *t, nb_tls_tx_keys_t *k);

#endif
