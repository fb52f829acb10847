/*
 * fuzz_tokenizer.c - libFuzzer target for the tokenizers: the first byte
 * picks what the rest is.
 *   0: text, encoded with the WordPiece and the byte-level BPE tokenizers of
 *      tests/data/tokenizers (byte-level BPE must decode it back exactly;
 *      text that is not UTF-8 must be refused);
 *   1: a vocab.txt; 2: a vocab.json, a NUL, a merges.txt; 3: a tokenizer.json
 *      - loaded, and when accepted, used to encode and decode a short text.
 * Seed corpus: tests/fuzz/corpus/tokenizer/. Run from the repository root:
 * make fuzz.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "daemon/data/tokenizer.h"
#include "daemon/data/unicode.h"

static nb_tokenizer_t *wp, *bpe;
static char dir[64];

static void put(const char *name, const uint8_t *p, size_t n)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f)
        abort();
    if (n && fwrite(p, 1, n, f) != n)
        abort();
    fclose(f);
}

static void clear(void)
{
    static const char *const names[] = {"vocab.txt", "vocab.json", "merges.txt", "tokenizer.json"};
    char path[128];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
}

static void use(nb_tokenizer_t *t, const char *text, size_t n, int must_round_trip)
{
    char err[512];
    nb_idvec_t v = {0};
    size_t bad;
    int rc = nb_tokenizer_encode(t, text, n, &v, err, sizeof err);
    int utf8 = nb_utf8_check((const unsigned char *)text, n, &bad) == 0;
    if ((rc == 0) != utf8)
        abort(); /* refused exactly when not UTF-8 */
    if (rc == 0) {
        for (size_t i = 0; i < v.n; i++)
            if (v.ids[i] >= nb_tokenizer_vocab(t))
                abort();
        char *out;
        size_t len;
        if (nb_tokenizer_decode(t, v.ids, v.n, &out, &len, err, sizeof err) != 0)
            abort();
        if (must_round_trip && (len != n || memcmp(out, text, n)))
            abort();
        free(out);
    }
    free(v.ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[1024];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/nb_fuzz_tok_%d", (int)getpid());
        mkdir(dir, 0700);
        if (nb_tokenizer_load("tests/data/tokenizers/minilm", &wp, err, sizeof err) ||
            nb_tokenizer_load("tests/data/tokenizers/bpe", &bpe, err, sizeof err)) {
            fprintf(stderr, "%s (run from the repository root)\n", err);
            abort();
        }
    }
    if (size < 1)
        return 0;
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    nb_tokenizer_t *t = NULL;
    clear();
    switch (data[0] % 4) {
    case 0:
        use(wp, (const char *)p, n, 0);
        use(bpe, (const char *)p, n, 1);
        return 0;
    case 1:
        put("vocab.txt", p, n);
        break;
    case 2: {
        const uint8_t *z = memchr(p, 0, n);
        size_t a = z ? (size_t)(z - p) : n;
        put("vocab.json", p, a);
        put("merges.txt", z ? z + 1 : p, z ? n - a - 1 : 0);
        break;
    }
    default:
        put("tokenizer.json", p, n);
        break;
    }
    err[0] = 0;
    if (nb_tokenizer_load(dir, &t, err, sizeof err) == 0) {
        static const char text[] = "Hello, world! It's 21\xc2\xb0" "C [SEP] <|endoftext|> \xe4\xb8\xad  x";
        use(t, text, sizeof text - 1, nb_tokenizer_kind(t) == NB_TOK_BPE);
        nb_tokenizer_free(t);
    } else if (!err[0]) {
        abort(); /* every refusal says why */
    }
    return 0;
}
