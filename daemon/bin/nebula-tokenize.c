/*
 * nebula-tokenize - turns a text file into a byte-level token file
 * (vocabulary 256: token = byte value), the input of nebula-train.
 *
 * usage: nebula-tokenize INPUT OUTPUT | --help | --version
 * Exit status: 0 on success, 1 on an I/O error, 2 on bad usage.
 */
#include <stdio.h>
#include <string.h>
#include "daemon/data/tokens.h"
#include "daemon/service/version.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: nebula-tokenize INPUT OUTPUT\n"
               "       nebula-tokenize --help | --version\n"
               "Writes the bytes of the text file INPUT as a token file OUTPUT (vocabulary 256,\n"
               "token = byte value; format: docs/data-format.md), the input of nebula-train and\n"
               "of a pipeline job's first stage. OUTPUT is written whole or not at all.\n"
               "Exit status: 0 done, 1 I/O error, 2 usage.\n");
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
