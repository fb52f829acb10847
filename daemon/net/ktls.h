/*
 * ktls.h - whether this kernel offers kernel TLS (the "tls" upper-layer
 * protocol of TCP, CONFIG_TLS), probed once per process, for the log and
 * the status.
 *
 * The transport encrypts TLS records in user space (OpenSSL through memory
 * BIOs, so the libuv loop owns the socket): OpenSSL's own kTLS switch
 * (SSL_OP_ENABLE_KTLS) engages only on socket BIOs, so kernel TLS would need
 * the traffic keys handed to the kernel by the transport itself
 * (docs/operations.md, "TLS record layer"). This probe says whether a kernel
 * could take them.
 *
 * Thread: any (the result is computed once, under a pthread_once).
 */
#ifndef NB_KTLS_H
#define NB_KTLS_H

#include <stdbool.h>

/* True when setsockopt(TCP_ULP, "tls") is known to the kernel. why (never
 * NULL) says what the probe saw, e.g. "the kernel has no tls module
 * (TCP_ULP \"tls\": No such file or directory)". */
bool nb_ktls_available(const char **why);

/* One line for logs and status: "kernel TLS unavailable: ...; records are
 * encrypted in user space" or "kernel TLS available, not used: ...". */
const char *nb_ktls_state(void);

#endif
