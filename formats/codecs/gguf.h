/* lmsurgeon: the GGUF container (llama.cpp's single-file model format), versions 2 and 3.
 *
 *   "GGUF" | u32 version | u64 n_tensors | u64 n_kv
 *   n_kv x   (string key | u32 value type | value)
 *   n_tensors x (string name | u32 n_dims | u64 ne[n_dims] | u32 ggml type | u64 offset)
 *   padding to the alignment (general.alignment, u32, default 32)
 *   tensor data: each tensor at data start + offset, offset a multiple of the alignment
 *
 * Everything is little-endian; a string is a u64 byte count and the bytes (no NUL); an array
 * value is u32 element type | u64 count | elements. ne[0] is the innermost (fastest) dimension,
 * so a row-major [out, in] weight has ne = {in, out}.
 *
 * lms_gguf_parse is a pure parser over bytes in memory (fuzzable): every count, length and
 * offset is checked against the buffer before it is used, and nothing is allocated before the
 * bytes that would justify it are known to be there. Keys, string values and arrays point into
 * the buffer. The writer builds the header in memory (metadata and tensor infos, small) and the
 * caller then streams each tensor's data in the order added. */
#ifndef LMS_GGUF_H
#define LMS_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lms/error.h"

#define LMS_GGUF_MAGIC "GGUF"
#define LMS_GGUF_VERSION 3
#define LMS_GGUF_DEFAULT_ALIGNMENT 32
#define LMS_GGUF_MAX_DIMS 4

enum lms_gguf_vtype {
    LMS_GGUF_U8 = 0,
    LMS_GGUF_I8 = 1,
    LMS_GGUF_U16 = 2,
    LMS_GGUF_I16 = 3,
    LMS_GGUF_U32 = 4,
    LMS_GGUF_I32 = 5,
    LMS_GGUF_F32 = 6,
    LMS_GGUF_BOOL = 7,
    LMS_GGUF_STRING = 8,
    LMS_GGUF_ARRAY = 9,
    LMS_GGUF_U64 = 10,
    LMS_GGUF_I64 = 11,
    LMS_GGUF_F64 = 12,
};

/* The ggml tensor types lmsurgeon reads and writes (the parser knows the sizes of more). */
enum lms_ggml_type {
    LMS_GGML_F32 = 0,
    LMS_GGML_F16 = 1,
    LMS_GGML_Q8_0 = 8,
    LMS_GGML_BF16 = 30,
};

#define LMS_GGML_Q8_0_BLOCK 32 /* elements per Q8_0 block: fp16 scale + 32 int8 = 34 bytes */
#define LMS_GGML_Q8_0_BYTES 34

/* One Q8_0 block: 32 floats to 34 bytes (ggml's reference rule, see gguf.c), and back. */
void lms_gguf_q8_0_quantize(const float *x, uint8_t *out);
void lms_gguf_q8_0_dequantize(const uint8_t *in, float *x);

/* Elements per block and bytes per block of a ggml type; false for a type the parser does not
 * know. */
bool lms_ggml_type_size(uint32_t type, uint32_t *block_elems, uint32_t *block_bytes);
const char *lms_ggml_type_name(uint32_t type); /* "Q8_0"; NULL if unknown */

struct lms_gguf_str {
    const char *p; /* into the buffer, not NUL-terminated */
    uint64_t n;
};

struct lms_gguf_kv {
    struct lms_gguf_str key;
    uint32_t type; /* enum lms_gguf_vtype */
    union {
        uint64_t u;  /* U8..U64, BOOL (0/1) */
        int64_t i;   /* I8..I64 */
        double f;    /* F32, F64 */
        struct lms_gguf_str s;
        struct {
            uint32_t type;      /* element type (never ARRAY: nested arrays are refused) */
            uint64_t n;         /* elements */
            const uint8_t *data; /* first element */
            uint64_t bytes;     /* bytes of all elements */
        } arr;
    } v;
};

struct lms_gguf_tensor {
    struct lms_gguf_str name;
    uint32_t n_dims;
    uint64_t ne[LMS_GGUF_MAX_DIMS]; /* unused dims are 1 */
    uint32_t type;                  /* ggml type */
    uint64_t offset;                /* from the data start */
    uint64_t nbytes;
};

struct lms_gguf {
    uint32_t version;
    uint64_t n_kv;
    struct lms_gguf_kv *kv; /* owned array */
    uint64_t n_tensors;
    struct lms_gguf_tensor *tensors; /* owned array */
    uint64_t alignment;
    uint64_t data_offset; /* of the first tensor byte from the buffer start */
};

/* Parses buf[0..size). label names the file in errors ("'m.gguf': truncated at byte 24 reading
 * the tensor count"). Every failure is LMS_EFORMAT (LMS_ENOMEM for memory). OUT: g is filled
 * (release it with lms_gguf_release, also after a failure). */
enum lms_status lms_gguf_parse(const void *buf, size_t size, const char *label,
                               struct lms_gguf *g, struct lms_error *err);
void lms_gguf_release(struct lms_gguf *g);
/* The pair with key key, or NULL. */
/* Whether a value type is one of the integer types (the eight of u8..i32, u64 and i64). */
static inline bool lms_gguf_type_is_int(uint32_t t)
{
    return t <= LMS_GGUF_I32 || t == LMS_GGUF_U64 || t == LMS_GGUF_I64;
}

const struct lms_gguf_kv *lms_gguf_find(const struct lms_gguf *g, const char *key);
/* Reads the next string of a string array at *cursor (arr.data at first) and advances it; only
 * on arrays the parser validated. */
struct lms_gguf_str lms_gguf_next_str(const uint8_t **cursor);
/* Element i of a numeric array as an integer or a double (the array's type must be numeric). */
int64_t lms_gguf_arr_int(const struct lms_gguf_kv *kv, uint64_t i);

/* ---- writing ------------------------------------------------------------------------------ */

struct lms_gguf_buf {
    uint8_t *p;
    size_t n, cap;
    bool oom; /* an append failed; checked once at the end */
};

struct lms_gguf_writer {
    struct lms_gguf_buf kv; /* encoded pairs */
    uint64_t n_kv;
    struct lms_gguf_buf ti; /* encoded tensor infos */
    uint64_t n_tensors;
    uint64_t data_bytes; /* data section so far, each tensor padded to the alignment */
};

void lms_gguf_writer_init(struct lms_gguf_writer *w);
void lms_gguf_writer_release(struct lms_gguf_writer *w);
void lms_gguf_put_u32(struct lms_gguf_writer *w, const char *key, uint32_t v);
void lms_gguf_put_i32(struct lms_gguf_writer *w, const char *key, int32_t v);
void lms_gguf_put_f32(struct lms_gguf_writer *w, const char *key, float v);
void lms_gguf_put_bool(struct lms_gguf_writer *w, const char *key, bool v);
void lms_gguf_put_str(struct lms_gguf_writer *w, const char *key, const char *s, size_t n);
/* A string array of n strings (lens[i] bytes each). */
void lms_gguf_put_str_array(struct lms_gguf_writer *w, const char *key, const char *const *s,
                            const size_t *lens, uint64_t n);
void lms_gguf_put_i32_array(struct lms_gguf_writer *w, const char *key, const int32_t *v,
                            uint64_t n);
/* Adds a tensor info (ne innermost first); its data will follow the previous tensor's, padded to
 * the default alignment. LMS_EINVAL if the type is unknown or ne[0] is not whole blocks. */
enum lms_status lms_gguf_add_tensor(struct lms_gguf_writer *w, const char *name, uint32_t n_dims,
                                    const uint64_t *ne, uint32_t type, uint64_t *nbytes,
                                    struct lms_error *err);
/* Writes the header, metadata, tensor infos and the padding before the data to fd. */
enum lms_status lms_gguf_write_header(struct lms_gguf_writer *w, int fd, const char *path,
                                      struct lms_error *err);
/* Writes the zero bytes that pad a tensor of nbytes to the alignment. */
enum lms_status lms_gguf_write_pad(int fd, uint64_t nbytes, const char *path,
                                   struct lms_error *err);

#endif
