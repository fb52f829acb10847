/*
 * nebula-tokenize - turns a text file into a byte-level token file
 * (vocabulary 256: token = byte value), the input of nebula-train.
 *
 * usage: nebula-tokenize INPUT OUTPUT
 * Exit status: 0 on success, 1 on an I/O error, 2 on bad usage.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/data/tokens.h"

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: nebula-tokenize INPUT OUTPUT\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        fprintf(stderr, "nebula-tokenize: %s: cannot open: %s\n", argv[1], strerror(errno));
        return 1;
    }
    size_t cap = 1 << 16, n = 0;
    uint32_t *ids = malloc(cap * sizeof *ids);
    int ch;
    while (ids && (ch = fgetc(f)) != EOF) {
        if (n == cap) {
            cap *= 2;
            uint32_t *grown = realloc(ids, cap * sizeof *ids);
            if (!grown) {
                free(ids);
                ids = NULL;
                break;
            }
            ids = grown;
        }
        ids[n++] = (uint32_t)ch;
    }
    bool read_error = ferror(f);
    fclose(f);
    if (!ids || read_error) {
        fprintf(stderr, "nebula-tokenize: %s: %s\n", argv[1], ids ? "read error" : "out of memory");
        free(ids);
        return 1;
    }
    char err[512];
    int rc = nb_tokens_write(argv[2], ids, n, 256, err, sizeof err);
    free(ids);
    if (rc) {
        fprintf(stderr, "nebula-tokenize: %s\n", err);
        return 1;
    }
    printf("nebula-tokenize: %s: %zu tokens (vocabulary 256) -> %s\n", argv[1], n, argv[2]);
    return 0;
}
