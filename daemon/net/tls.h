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

#endif
