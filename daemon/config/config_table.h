/*
 * config_table.h - internal: the key table that drives the YAML loader.
 *
 * One row per key: name, type, role rules, bounds, default (as YAML text,
 * parsed by the same code as a value from the file), field offset and an
 * optional validator returning a static error string (NULL when fine).
 * Sections and lists point to the rows of their children.
 */
#ifndef NB_CONFIG_TABLE_H
#define NB_CONFIG_TABLE_H

#include <stddef.h>
#include "daemon/config/config.h"

typedef enum {
    NB__CFG_STR,     /* char[size]; non-empty */
    NB__CFG_PATH,    /* char[size]; relative to the config file's directory */
    NB__CFG_INT,     /* int (size == sizeof(int)) or int64_t */
    NB__CFG_U64,     /* uint64_t */
    NB__CFG_DOUBLE,
    NB__CFG_BOOL,
    NB__CFG_ENUM,    /* int-sized enum; names[] NULL-terminated */
    NB__CFG_ADDR,    /* nb_cfg_addr_t; min = lowest port allowed */
    NB__CFG_DEVICE,  /* nb_cfg_device_t */
    NB__CFG_BYTES,   /* uint64_t; integer or "16GiB" */
    NB__CFG_INT_AUTO,/* int64_t; integer or "auto" (stored as 0) */
    NB__CFG_LAYERS,  /* into nb_cfg_cluster_t: "A-B" or "auto" */
    NB__CFG_SECTION, /* mapping; sub = child rows */
    NB__CFG_LIST,    /* sequence; sub = one row describing an element */
} nb__cfg_type_t;

#define NB__ROLE(r) (1u << (r))
#define NB__ROLES_ALL 7u

typedef struct nb__cfg_key {
    const char *name;
    nb__cfg_type_t type;
    unsigned roles;     /* roles that may set it; 0 = all */
    unsigned required;  /* roles for which it must be present */
    double min, max;
    const char *def;    /* default as YAML text, or NULL */
    size_t off, size;   /* field offset in the parent struct, and its size */
    const char *const *names;       /* NB__CFG_ENUM */
    const struct nb__cfg_key *sub;  /* SECTION: rows ending with name NULL; LIST: one element row */
    size_t count_off;   /* LIST: offset of the int element count */
    int max_items;      /* LIST */
    const char *(*validate)(const void *field);
    const char *doc;    /* one-line meaning (docs/config.md is the long form) */
} nb__cfg_key_t;

/* The top-level rows, ending with a row whose name is NULL. */
extern const nb__cfg_key_t nb__cfg_root[];

const char *nb__cfg_type_name(nb__cfg_type_t t);

#endif
