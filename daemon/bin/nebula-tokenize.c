/*
 * nebula-tokenize - turns text into a token file (docs/data-format.md), the
 * input of nebula-train: byte-level (vocabulary 256: token = byte value), or
 * with a Hugging Face tokenizer (WordPiece or byte-level BPE,
 * docs/tokenizers.md); and turns a token file back into text.
 *
 * usage: nebula-tokenize INPUT OUTPUT
 *        nebula-tokenize --tokenizer DIR TEXT OUTPUT
 *        nebula-tokenize --decode --tokenizer DIR TOKENS TEXT
 *        nebula-tokenize --help | --version
 * Exit status: 0 on success, 1 on an I/O error or bad input, 2 on bad usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "daemon/clock.h"
#include "daemon/data/tokenizer.h"
#include "daemon/data/tokens.h"
#include "daemon/core/version.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: nebula-tokenize INPUT OUTPUT\n"
               "       nebula-tokenize --tokenizer DIR TEXT OUTPUT\n"
               "       nebula-tokenize --decode --tokenizer DIR TOKENS TEXT\n"
               "       nebula-tokenize --help | --version\n"
               "Writes the bytes of the text file INPUT as a token file OUTPUT (vocabulary 256,\n"
               "token = byte value; format: docs/data-format.md), the input of nebula-train and\n"
               "of a pipeline job's first stage. OUTPUT is written whole or not at all.\n"
               "\n"
               "--tokenizer DIR  tokenizes TEXT (UTF-8; other bytes are refused with their\n"
               "                 offset) with a Hugging Face tokenizer: DIR is a tokenizer.json\n"
               "                 file or a directory holding tokenizer.json, vocab.txt (BERT\n"
               "                 WordPiece, with tokenizer_config.json) or vocab.json and\n"
               "                 merges.txt (GPT-2 byte-level BPE). The IDs are those of the\n"
               "                 `tokenizers` package without special tokens added; the token\n"
               "                 file's vocabulary is the tokenizer's (docs/tokenizers.md).\n"
               "--decode         turns the token file TOKENS back into the text file TEXT with\n"
               "                 the tokenizer of --tokenizer DIR.\n"
               "Exit status: 0 done, 1 I/O error or bad input, 2 usage.\n");
}

/* Maps path read-only (an empty file gives len 0). */
static int map_file(const char *path, const char **p, size_t *len, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    *len = (size_t)st.st_size;
    *p = "";
    if (*len) {
        void *m = mmap(NULL, *len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            snprintf(err, errlen, "%s: cannot map: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
        *p = m;
    }
    close(fd);
    return 0;
}

static int encode(const char *dir, const char *in, const char *out)
{
    char err[1024];
    nb_tokenizer_t *t;
    if (nb_tokenizer_load(dir, &t, err, sizeof err) != 0) {
        fprintf(stderr, "nebula-tokenize: %s\n", err);
        return 1;
    }
    const char *text;
    size_t len;
    int rc = 1;
    nb_idvec_t ids = {0};
    if (map_file(in, &text, &len, err, sizeof err) != 0) {
        fprintf(stderr, "nebula-tokenize: %s\n", err);
        goto out;
    }
    double t0 = nb_mono_s();
    if (nb_tokenizer_encode(t, text, len, &ids, err, sizeof err) != 0) {
        fprintf(stderr, "nebula-tokenize: %s: %s\n", in, err);
        goto unmap;
    }
    double secs = nb_mono_s() - t0;
    if (nb_tokens_write(out, ids.ids, ids.n, nb_tokenizer_vocab(t), err, sizeof err) != 0) {
        fprintf(stderr, "nebula-tokenize: %s\n", err);
        goto unmap;
    }
    printf("nebula-tokenize: %s: %zu bytes -> %zu tokens (vocabulary %u; %.1f MB/s) -> %s\n"
           "nebula-tokenize: tokenizer: %s\n",
           in, len, ids.n, nb_tokenizer_vocab(t), secs > 0 ? (double)len / secs / 1e6 : 0.0, out,
           nb_tokenizer_describe(t));
    rc = 0;
unmap:
    if (len)
        munmap((void *)text, len);
out:
    free(ids.ids);
    nb_tokenizer_free(t);
    return rc;
}

static int write_text(const char *path, const char *s, size_t n, char *err, size_t errlen)
{
    char tmp[512];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        snprintf(err, errlen, "%s: path too long", path);
        return -1;
    }
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        snprintf(err, errlen, "%.400s: cannot create: %s", tmp, strerror(errno));
        return -1;
    }
    int ok = fwrite(s, 1, n, f) == n;
    ok &= fclose(f) == 0;
    if (!ok || rename(tmp, path) != 0) {
        snprintf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

static int decode(const char *dir, const char *in, const char *out)
{
    char err[1024];
    nb_tokenizer_t *t;
    if (nb_tokenizer_load(dir, &t, err, sizeof err) != 0) {
        fprintf(stderr, "nebula-tokenize: %s\n", err);
        return 1;
    }
    nb_tokens_t *tk;
    if (nb_tokens_open(in, &tk, err, sizeof err) != 0) {
        fprintf(stderr, "nebula-tokenize: %s\n", err);
        nb_tokenizer_free(t);
        return 1;
    }
    int rc = 1;
    uint64_t n = nb_tokens_count(tk);
    uint32_t width = nb_tokens_vocab(tk) <= 65536 ? 2 : 4;
    char *text = NULL;
    size_t len = 0;
    uint32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids) {
        fprintf(stderr, "nebula-tokenize: %s: out of memory for %llu tokens\n", in, (unsigned long long)n);
        goto out;
    }
    for (uint64_t i = 0; i < n; i++) {
        ids[i] = nb_tokens_get(tk, i);
        if (ids[i] >= nb_tokenizer_vocab(t)) {
            fprintf(stderr, "nebula-tokenize: %s: offset %llu: token %llu is %u, beyond the tokenizer's "
                            "vocabulary of %u (%s)\n",
                    in, (unsigned long long)(NB_TOKENS_HEADER_BYTES + i * width), (unsigned long long)i, ids[i],
                    nb_tokenizer_vocab(t), dir);
            goto out;
        }
    }
    if (nb_tokenizer_decode(t, ids, n, &text, &len, err, sizeof err) != 0) {
        fprintf(stderr, "nebula-tokenize: %s: %s\n", in, err);
        goto out;
    }
    if (write_text(out, text, len, err, sizeof err) != 0) {
        fprintf(stderr, "nebula-tokenize: %s\n", err);
        goto out;
    }
    printf("nebula-tokenize: %s: %llu tokens -> %zu bytes of text -> %s\n", in, (unsigned long long)n, len, out);
    rc = 0;
out:
    free(ids);
    free(text);
    nb_tokens_close(tk);
    nb_tokenizer_free(t);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        usage(stdout);
        return 0;
    }
    if (argc == 2 && !strcmp(argv[1], "--version")) {
        printf("nebula-tokenize %s\n", NB_VERSION);
        return 0;
    }
    if (argc == 5 && !strcmp(argv[1], "--tokenizer") && argv[3][0] != '-' && argv[4][0] != '-')
        return encode(argv[2], argv[3], argv[4]);
    if (argc == 6 && ((!strcmp(argv[1], "--decode") && !strcmp(argv[2], "--tokenizer")) ||
                      (!strcmp(argv[1], "--tokenizer") && !strcmp(argv[3], "--decode")))) {
        const char *dir = !strcmp(argv[1], "--decode") ? argv[3] : argv[2];
        if (argv[4][0] != '-' && argv[5][0] != '-')
            return decode(dir, argv[4], argv[5]);
    }
    if (argc != 3 || argv[1][0] == '-' || argv[2][0] == '-') {
        usage(stderr);
        return 2;
    }
    char err[512];
    uint64_t n = 0;
    if (nb_tokens_from_text(argv[1], argv[2], 0, &n, err, sizeof err) != 0) {
        fprintf(stderr, "nebula-tokenize: %s\n", err);
        return 1;
    }
    printf("nebula-tokenize: %s: %llu tokens (vocabulary 256) -> %s\n", argv[1], (unsigned long long)n, argv[2]);
    return 0;
}
