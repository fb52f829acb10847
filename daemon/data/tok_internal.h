/*
 * tok_internal.h - shared by the tokenizer's files (tok_vocab.c, tok_load.c,
 * tok_wordpiece.c, tok_bpe.c, tokenizer.c): the vocabulary hash, the merge
 * table and the tokenizer struct. Not for use outside daemon/data/tok*.
 */
#ifndef NB_TOK_INTERNAL_H
#define NB_TOK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include "daemon/data/tokenizer.h"

/* IDs above this are refused when loading: no real vocabulary comes close. */
#define NB_TOK_MAX_VOCAB (1u << 24)
#define NB_TOK_NONE UINT32_MAX

/* Token strings by ID (holes allowed: NULL) and an open-addressing hash from
 * string to ID. */
typedef struct {
    char **str;       /* [n] NUL-terminated, owned */
    uint32_t *len;    /* [n] */
    uint32_t n;       /* largest ID + 1 */
    uint32_t cap;     /* size of str/len */
    uint32_t *slot;   /* [mask + 1] ID + 1, 0 = empty */
    uint32_t mask, used;
} nb_vocab_t;

/* Adds s[0..len) with ID id. Returns 0, NB_EFORMAT when the string or the ID
 * is already there (*dup_id gets the other holder's ID, or the ID itself),
 * NB_ERANGE for an ID >= NB_TOK_MAX_VOCAB, NB_ENOMEM. */
int nb_vocab_add(nb_vocab_t *v, const char *s, size_t len, uint32_t id, uint32_t *dup_id);
/* ID of s[0..len), or NB_TOK_NONE. */
uint32_t nb_vocab_find(const nb_vocab_t *v, const char *s, size_t len);
void nb_vocab_free(nb_vocab_t *v);

/* Merge table: (left ID, right ID) -> (rank, merged ID). */
typedef struct {
    uint64_t *key;    /* left << 32 | right, UINT64_MAX = empty */
    uint32_t *rank, *merged;
    uint32_t mask, used;
} nb_merges_t;

/* Returns 0, NB_EFORMAT when the pair is already there, NB_ENOMEM. */
int nb_merges_add(nb_merges_t *m, uint32_t a, uint32_t b, uint32_t rank, uint32_t merged);
/* Rank of (a, b) and its merged ID in *merged, or NB_TOK_NONE. */
uint32_t nb_merges_find(const nb_merges_t *m, uint32_t a, uint32_t b, uint32_t *merged);
void nb_merges_free(nb_merges_t *m);

/* A token matched on the raw text before anything else ([SEP], <|endoftext|>). */
typedef struct {
    char *s;
    size_t len;
    uint32_t id;
} nb_special_t;

struct nb_tokenizer {
    int kind;
    nb_vocab_t vocab;
    nb_special_t *special;
    size_t n_special;
    unsigned char special_first[256]; /* first bytes of the specials */
    char describe[256];
    /* WordPiece */
    int clean_text, chinese, strip_accents, lowercase;
    uint32_t unk_id;
    char prefix[32];
    size_t prefix_len;
    size_t max_chars;
    /* byte-level BPE */
    nb_merges_t merges;
    int add_prefix_space;
    uint32_t byte_id[256];   /* ID of the one-character token of each byte */
    uint32_t byte_cp[256];   /* GPT-2's byte -> code point map */
    int16_t cp_byte[324];    /* its inverse (code points < 324), -1 = none */
};

/* A per-call cache of short words' IDs (direct-mapped by a hash of their
 * bytes), so that words seen before skip the merging or the piece search.
 * One caller owns it; NULL disables it. */
typedef struct nb_wcache nb_wcache_t;
nb_wcache_t *nb_wcache_new(void); /* NULL when out of memory; free() it */
/* Appends the cached IDs of s[0..n) to out: 1 on a hit, 0 on a miss,
 * NB_ENOMEM. */
int nb_wcache_get(nb_wcache_t *c, const unsigned char *s, size_t n, nb_idvec_t *out);
void nb_wcache_put(nb_wcache_t *c, const unsigned char *s, size_t n, const uint32_t *ids, size_t nids);

/* Encoders of one stretch of text between specials (valid UTF-8). */
int nb_wp_encode(const nb_tokenizer_t *t, const char *s, size_t n, nb_idvec_t *out, nb_wcache_t *cache);
/* cache: see nb_wcache_t. */
int nb_bpe_encode(const nb_tokenizer_t *t, const char *s, size_t n, nb_idvec_t *out, nb_wcache_t *cache);
/* Decoders: append the text of ids (all valid) to a growable buffer. */
typedef struct {
    char *p;
    size_t n, cap;
} nb_strbuf_t;
int nb_strbuf_put(nb_strbuf_t *b, const char *s, size_t n);
int nb_wp_decode(const nb_tokenizer_t *t, const uint32_t *ids, size_t n, nb_strbuf_t *out);
int nb_bpe_decode(const nb_tokenizer_t *t, const uint32_t *ids, size_t n, nb_strbuf_t *out);
/* Fills byte_cp / cp_byte (GPT-2's bytes_to_unicode). */
void nb_bpe_byte_map(nb_tokenizer_t *t);

/* Loaders (tok_load.c); path is the file read, for messages. */
int nb_tok_load_vocab_txt(nb_tokenizer_t *t, const char *path, char *err, size_t errlen);
int nb_tok_load_vocab_json(nb_tokenizer_t *t, const char *path, char *err, size_t errlen);
int nb_tok_load_merges_txt(nb_tokenizer_t *t, const char *path, char *err, size_t errlen);
int nb_tok_load_json(nb_tokenizer_t *t, const char *path, char *err, size_t errlen);
/* Checks and links a loaded tokenizer (byte tokens, unk, specials). */
int nb_tok_finish(nb_tokenizer_t *t, const char *path, char *err, size_t errlen);
int nb_tok_add_special(nb_tokenizer_t *t, const char *s, size_t len, uint32_t id);

#endif /* NB_TOK_INTERNAL_H */
