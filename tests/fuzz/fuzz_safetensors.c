/*
 * fuzz_safetensors.c - libFuzzer target for the safetensors reader: the
 * input is a whole file, opened in memory (length prefix, JSON header,
 * offsets against the data); every tensor of an accepted file is converted
 * to fp32, which must stay inside the buffer. Seed corpus of small real
 * files: tests/fuzz/corpus/safetensors/. Run: make fuzz.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/train/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    nb_st_file_t *f;
    char err[512];
    if (nb_st_open_mem(data, size, "fuzz.safetensors", &f, err, sizeof err) != 0) {
        if (f)
            abort(); /* a refusal leaves nothing behind */
        return 0;
    }
    for (int i = 0; i < nb_st_count(f); i++) {
        const nb_st_tensor_t *t = nb_st_tensor(f, i);
        if (t->end > size || t->begin > t->end)
            abort(); /* the reader only accepts ranges inside the file */
        if (nb_st_find(f, t->name) != i)
            abort(); /* names are unique */
        if (t->numel > (1u << 20))
            continue; /* keep the fuzzer's allocations small */
        float *v = malloc((t->numel ? t->numel : 1) * sizeof *v);
        if (v)
            nb_st_read_f32(f, i, v, err, sizeof err);
        free(v);
    }
    (void)nb_st_metadata(f, "format");
    nb_st_close(f);
    return 0;
}
