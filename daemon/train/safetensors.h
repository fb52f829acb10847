/*
 * safetensors.h - the Hugging Face safetensors format: read (validated
 * before anything is allocated from the file's numbers) and write.
 *
 * Layout: u64 little-endian N; N bytes of JSON (an object: tensor name ->
 * {"dtype", "shape", "data_offsets": [begin, end]}, plus an optional
 * "__metadata__" object of string -> string), padded with spaces; then the
 * data buffer, which the tensors' byte ranges (relative to its start) cover
 * exactly: sorted by begin, each starts where the previous ends, the last
 * ends at the end of the file, with no gap and no overlap.
 *
 * The reader refuses, naming the file, the tensor and the reason: a header
 * length over NB_ST_MAX_HEADER or past the end of the file, JSON that is not
 * an object, a duplicate name, an unknown dtype, a shape that is not a list
 * of at most NB_ST_MAX_DIMS non-negative integers, a byte range that does
 * not equal elements x dtype size, is out of range, overlaps or leaves a
 * gap. Values convert to fp32 from F32, F16 and BF16; other dtypes are
 * listed (their ranges are checked) but not converted.
 * The writer writes F32 tensors and a __metadata__ object, with the header
 * padded so the data starts 8-byte aligned, to a temporary file renamed into
 * place. docs/import-export.md.
 * Thread: an nb_st_file_t is used by one thread at a time.
 */
#ifndef NB_SAFETENSORS_H
#define NB_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define NB_ST_MAX_HEADER (100u << 20) /* bytes of JSON (100 MiB) */
#define NB_ST_MAX_DIMS 8

typedef enum {
    NB_ST_F32, NB_ST_F16, NB_ST_BF16, NB_ST_F64, NB_ST_I64, NB_ST_I32, NB_ST_I16, NB_ST_I8,
    NB_ST_U8, NB_ST_U16, NB_ST_U32, NB_ST_U64, NB_ST_BOOL, NB_ST_F8_E4M3, NB_ST_F8_E5M2,
} nb_st_dtype_t;

/* "F32", ... */
const char *nb_st_dtype_name(nb_st_dtype_t d);

typedef struct {
    char *name;
    nb_st_dtype_t dtype;
    int ndim;
    int64_t shape[NB_ST_MAX_DIMS];
    uint64_t numel;
    uint64_t begin, end; /* bytes, relative to the data buffer */
} nb_st_tensor_t;

typedef struct nb_st_file nb_st_file_t;

/* Opens path and validates its header (the data is read on demand).
 * Errors: NB_EIO (cannot open or read), NB_EFORMAT (message names the file,
 * the tensor and the reason), NB_ENOMEM. On error *out is NULL. */
int nb_st_open(const char *path, nb_st_file_t **out, char *err, size_t errlen);
/* The same over a whole file held in memory (buf must outlive the result);
 * name is used in messages. */
int nb_st_open_mem(const void *buf, size_t len, const char *name, nb_st_file_t **out, char *err, size_t errlen);
void nb_st_close(nb_st_file_t *f);

const char *nb_st_path(const nb_st_file_t *f);
/* Tensors in header order; borrowed while f lives. */
int nb_st_count(const nb_st_file_t *f);
const nb_st_tensor_t *nb_st_tensor(const nb_st_file_t *f, int i);
/* Byte offset of the data buffer in the file (8 + header length): a
 * tensor's bytes are at nb_st_data_offset(f) + begin. */
uint64_t nb_st_data_offset(const nb_st_file_t *f);
/* Index of the tensor called name, or -1. */
int nb_st_find(const nb_st_file_t *f, const char *name);
/* The __metadata__ value for key, or NULL. Borrowed while f lives. */
const char *nb_st_metadata(const nb_st_file_t *f, const char *key);

/* Reads tensor i converted to fp32 into dst (numel floats). Errors:
 * NB_EINVAL (a dtype that does not convert: named), NB_EIO (short read),
 * NB_EFORMAT (a value that is not finite, with the element index). */
int nb_st_read_f32(nb_st_file_t *f, int i, float *dst, char *err, size_t errlen);

/* One tensor to write: F32, row-major. */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[NB_ST_MAX_DIMS];
    const float *data;
} nb_st_out_t;

/* Writes n tensors and the metadata pairs meta[0..2*n_meta) (key, value,
 * key, value ...) to path through a temporary file. Errors: NB_EINVAL (a
 * duplicate or empty name, a bad shape), NB_EIO, NB_ENOMEM. */
int nb_st_write(const char *path, const nb_st_out_t *t, int n, const char *const *meta, int n_meta,
                char *err, size_t errlen);

/* fp16 / bf16 bits to fp32 (exact). */
float nb_st_f16_to_f32(uint16_t h);
float nb_st_bf16_to_f32(uint16_t h);

#endif /* NB_SAFETENSORS_H */
