/*
 * licence_snippets.h - a real text-classification task for benches: which
 * licence under /usr/share/common-licenses a snippet of bytes comes from.
 * Each licence file is cut in chunks of `chunk` bytes; every `hold`-th chunk
 * (index % hold == hold - 1) is held out and the other chunks, joined, are
 * the training text, so held-out snippets come from separate regions spread
 * over the whole file (its terms and its appendix alike). Training snippets
 * start anywhere in the training text, keyed by the caller; held-out
 * snippets are spread evenly over the held-out chunks.
 *
 * Test support only (tests/bench). Thread: read-only after open.
 */
#ifndef NB_TEST_LICENCE_SNIPPETS_H
#define NB_TEST_LICENCE_SNIPPETS_H

#include <stdint.h>
#include <stddef.h>

#define NB_LIC_DIR "/usr/share/common-licenses"
#define NB_LIC_MAX 16

typedef struct nb_lic nb_lic_t;

/* Reads the k files names[0..k) of NB_LIC_DIR (k <= NB_LIC_MAX), cut as
 * above for snippets of len bytes (chunk >= len). Returns 0, 77 (a file
 * is missing: the bench skips; why says which) or -1 (why). */
int nb_lic_open(const char *const *names, int k, size_t len, size_t chunk, int hold, nb_lic_t **out, char *why,
                size_t whylen);
void nb_lic_free(nb_lic_t *l);
/* Training snippet of class cls keyed by key (same key, same snippet):
 * len bytes into out. */
void nb_lic_train(const nb_lic_t *l, int cls, uint64_t key, char *out);
/* Held-out snippet j of n of class cls, spread evenly over the class's
 * held-out chunks: len bytes into out. */
void nb_lic_heldout(const nb_lic_t *l, int cls, int j, int n, char *out);
/* Held-out chunks of class cls. */
int nb_lic_held_chunks(const nb_lic_t *l, int cls);

#endif
