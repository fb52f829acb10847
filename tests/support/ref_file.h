/*
 * ref_file.h - reader of the PyTorch reference files (tests/data/ref_*.bin)
 * written by scripts/gen_reference.py. Format (little endian), version 1:
 * magic "NBRF", u32 version, u32 tensor count, then per tensor u16 name
 * length, name, u8 dtype (nb_dtype_t: 0 f32, 3 i32, 4 u8), u8 ndim (<= 4),
 * ndim x u64 dims, elements.
 *
 * Test support only; the whole file is read into host memory.
 */
#ifndef NB_REF_FILE_H
#define NB_REF_FILE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    char name[64];
    int dtype;
    int ndim;
    uint64_t shape[4];
    size_t numel;
    const void *data; /* into the file's buffer; may be unaligned: memcpy */
} nb_ref_tensor_t;

typedef struct {
    int n;
    nb_ref_tensor_t *t;
    unsigned char *buf;
} nb_ref_file_t;

/* Reads and validates path. On error returns a negative NB_E* code and puts
 * a message naming the file and the byte offset into err. */
int nb_ref_load(const char *path, nb_ref_file_t *out, char *err, size_t errlen);
/* The tensor called name, or NULL. */
const nb_ref_tensor_t *nb_ref_get(const nb_ref_file_t *f, const char *name);
/* Copies a tensor's elements out as float (f32 only) or int32 (i32 only);
 * returns the element count, or -1 on a dtype mismatch. dst holds numel. */
long nb_ref_floats(const nb_ref_tensor_t *t, float *dst);
long nb_ref_ints(const nb_ref_tensor_t *t, int32_t *dst);
void nb_ref_free(nb_ref_file_t *f);

#endif
