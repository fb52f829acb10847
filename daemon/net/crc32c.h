/*
 * crc32c.h - CRC32C (Castagnoli, reflected polynomial 0x82F63B78), the
 * checksum every frame payload carries (see docs/protocol.md).
 *
 * Uses the SSE4.2 crc32 instruction when the build targets it, a table
 * otherwise; both give the same result (tests/net/test_net_frame.c checks the
 * standard vector "123456789" -> 0xE3069283).
 */
#ifndef NB_CRC32C_H
#define NB_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Extends crc (0 to start) over len bytes of buf and returns the new value.
 * Pure function; any thread. */
uint32_t nb_crc32c(uint32_t crc, const void *buf, size_t len);

#endif
