/*
 * unicode.h - the little of Unicode the tokenizers need: strict UTF-8
 * decoding and encoding, general categories, canonical decomposition (NFD)
 * and per-code-point lower case. Tables come from unicode_data.c (generated;
 * its Unicode version is nb_unicode_version). Pure functions, any thread.
 */
#ifndef NB_UNICODE_H
#define NB_UNICODE_H

#include <stddef.h>
#include <stdint.h>
#include "daemon/data/unicode_data.h"

/* Decodes one code point of s[0..n) (n >= 1) into *cp. Returns its length
 * (1..4), or 0 when the bytes are not UTF-8: a stray continuation byte, a
 * truncated sequence, an overlong form, a surrogate or a value above
 * U+10FFFF. */
int nb_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);

/* Checks that s[0..n) is UTF-8. Returns 0, or -1 with *bad_off set to the
 * offset of the first byte that is not. */
int nb_utf8_check(const unsigned char *s, size_t n, size_t *bad_off);

/* Writes cp (<= U+10FFFF, not a surrogate) as UTF-8 to out (4 bytes of room);
 * returns the length. */
int nb_utf8_encode(uint32_t cp, unsigned char *out);

/* General category of cp (NB_UCAT_Cn above U+10FFFF). */
enum nb_ucat nb_ucat(uint32_t cp);

/* Unicode White_Space property. */
int nb_uni_is_space(uint32_t cp);

/* Canonical decomposition of cp, fully expanded (Hangul syllables by
 * formula): writes up to 4 code points to out and returns their count
 * (1 with out[0] = cp when cp has none). No canonical reordering. */
int nb_uni_nfd(uint32_t cp, uint32_t out[4]);

/* Full lower case of cp taken alone (no Final_Sigma context: U+03A3 gives
 * U+03C3 everywhere): writes 1..3 code points to out, returns the count. */
int nb_uni_lower(uint32_t cp, uint32_t out[3]);

#endif /* NB_UNICODE_H */
