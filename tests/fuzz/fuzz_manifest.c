/*
 * fuzz_manifest.c - libFuzzer target for the checkpoint manifest parser
 * (nb_ckpt_manifest_parse): any input is refused or accepted without a
 * crash; an accepted manifest has only file names a checkpoint directory
 * may hold, formats back to JSON that parses to the same manifest. Seed
 * corpus: tests/fuzz/corpus/manifest/. Run: make fuzz.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/train/checkpoint.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static nb_ckpt_manifest_t m, back;
    char err[512];
    if (nb_ckpt_manifest_parse((const char *)data, size, "fuzz.json", &m, err, sizeof err) != 0) {
        if (!memchr(err, '\0', sizeof err))
            abort(); /* the message is a string */
        return 0;
    }
    if (m.n_files < 1 || m.n_files > NB_CKPT_MAX_FILES)
        abort();
    for (int i = 0; i < m.n_files; i++) {
        const char *n = m.files[i].name;
        if (!n[0] || n[0] == '.' || strchr(n, '/') || strlen(n) >= NB_CKPT_FILE_NAME_MAX)
            abort(); /* never a path out of the checkpoint directory */
        for (int j = 0; j < i; j++)
            if (!strcmp(n, m.files[j].name))
                abort();
    }
    size_t len;
    char *text = nb_ckpt_manifest_format(&m, &len);
    if (!text)
        return 0;
    if (nb_ckpt_manifest_parse(text, len, "fuzz.json", &back, err, sizeof err) != 0 ||
        memcmp(&m.files, &back.files, sizeof m.files) != 0 || m.n_files != back.n_files ||
        m.meta.step != back.meta.step || m.meta.seed != back.meta.seed)
        abort(); /* what was accepted formats back to itself */
    free(text);
    return 0;
}
