/*
 * nebula-tokenize - turns a text file into a byte-level token file
 * (vocabulary 256: token = byte value), the input of nebula-train.
 *
 * usage: nebula-tokenize INPUT OUTPUT
 * Exit status: 0 on success, 1 on an I/O error, 2 on bad usage.
 */
#include <stdio.h>
#include "daemon/data/tokens.h"

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: nebula-tokenize INPUT OUTPUT\n");
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
