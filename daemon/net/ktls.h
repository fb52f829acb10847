/*
 * ktls.h - whether this kernel offers kernel TLS (the "tls" upper-layer
 * protocol of TCP, CONFIG_TLS), probed once per process, for the log and
 * the status.
 *
 * The transport runs TLS through memory BIOs (the libuv loop owns the
 * socket), and OpenSSL's own kTLS switch (SSL_OP_ENABLE_KTLS) engages only
 * on socket BIOs. So with tls.ktls auto or on the transport hands the keys
 * of its sending direction to the kernel itself after the handshake
 * (nb_tls_tx_keys, nb_ktls_enable_tx) and then writes frames in the clear
 * to the socket; receiving stays in OpenSSL (docs/operations.md, "TLS
 * record layer").
 *
 * Thread: any (the result is computed once, under a pthread_once).
 */
#ifndef NB_KTLS_H
#define NB_KTLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "daemon/net/tls.h"

/* Configuration key tls.ktls. */
typedef enum { NB_KTLS_OFF = 0, NB_KTLS_AUTO = 1, NB_KTLS_ON = 2 } nb_ktls_mode_t;
const char *nb_ktls_mode_name(nb_ktls_mode_t m);

/* True when setsockopt(TCP_ULP, "tls") is known to the kernel. why (never
 * NULL) says what the probe saw, e.g. "the kernel has no tls module
 * (TCP_ULP \"tls\": No such file or directory)". */
bool nb_ktls_available(const char **why);

/* One line for logs and status: "kernel TLS unavailable: the kernel has no
 * tls module (...)" or "kernel TLS available: ...". */
const char *nb_ktls_state(void);

/* Tests only: overrides the probe's answer for this process, so that the
 * transport's switch and its fallback run on a kernel without kernel TLS
 * (the kernel then refuses TCP_ULP and the fallback path is taken). */
void nb_ktls_force_probe(bool available);

/* Hands the sending direction of the TLS session on connected TCP socket fd
 * to the kernel: from then on plain bytes written to fd leave it as TLS
 * records under k (the transport writes frames, not ciphertext). Returns 0;
 * NB_EIO with the reason in why when the kernel refused the tls protocol
 * (the socket is unchanged: the caller may go on encrypting itself);
 * NB_ECLOSED when it took the protocol but refused the keys (the socket is
 * unusable: close it); NB_EINVAL for a suite it is not given here. */
int nb_ktls_enable_tx(int fd, const nb_tls_tx_keys_t *k, char *why, size_t whylen);

/* Sends a TLS alert record (level, description: 1, 0 = close_notify)
 * through a kernel-TLS socket, without blocking. 0 or NB_EIO. */
int nb_ktls_send_alert(int fd, uint8_t level, uint8_t desc);

#endif
