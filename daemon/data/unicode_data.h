/*
 * unicode_data.h - the generated Unicode tables (unicode_data.c, written by
 * scripts/gen_unicode_tables.py from Python's unicodedata). Read them through
 * unicode.h; this header only declares the arrays.
 */
#ifndef NB_UNICODE_DATA_H
#define NB_UNICODE_DATA_H

#include <stdint.h>

/* General categories, in the order of nb_ucat_names. */
enum nb_ucat {
    NB_UCAT_Cn, NB_UCAT_Lu, NB_UCAT_Ll, NB_UCAT_Lt, NB_UCAT_Lm, NB_UCAT_Lo,
    NB_UCAT_Mn, NB_UCAT_Mc, NB_UCAT_Me, NB_UCAT_Nd, NB_UCAT_Nl, NB_UCAT_No,
    NB_UCAT_Pc, NB_UCAT_Pd, NB_UCAT_Ps, NB_UCAT_Pe, NB_UCAT_Pi, NB_UCAT_Pf, NB_UCAT_Po,
    NB_UCAT_Sm, NB_UCAT_Sc, NB_UCAT_Sk, NB_UCAT_So,
    NB_UCAT_Zs, NB_UCAT_Zl, NB_UCAT_Zp, NB_UCAT_Cc, NB_UCAT_Cf, NB_UCAT_Cs, NB_UCAT_Co,
    NB_UCAT_COUNT
};

extern const char nb_unicode_version[];
extern const char *const nb_ucat_names[NB_UCAT_COUNT];
extern const uint32_t nb_ucat_runs_n;
extern const uint32_t nb_ucat_runs[];
extern const uint32_t nb_nfd_n;
extern const uint32_t nb_nfd_index[][2];
extern const uint32_t nb_nfd_pool[];
extern const uint32_t nb_lower_n;
extern const uint32_t nb_lower_index[][4];

#endif /* NB_UNICODE_DATA_H */
