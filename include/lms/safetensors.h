/* lmsurgeon: safetensors files.
 *
 *   offset 0      u64 N, little-endian: header length
 *   offset 8      N bytes of UTF-8 JSON: {"__metadata__": {str: str}, name: {"dtype", "shape",
 *                 "data_offsets": [begin, end)}, ...}, padded with spaces
 *   offset 8 + N  the data buffer: tensors packed back to back, no gaps, nothing after the last
 *
 * lms_st_parse is a pure parser (bytes in memory to header struct; no I/O, fuzzable) applying
 * every validation rule of the reference reader, in its order. lms_st_open maps a file and
 * parses it. lms_st_header_build produces the canonical header (byte-identical to the reference
 * writer) for a list of tensors. */
#ifndef LMS_SAFETENSORS_H
#define LMS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "lms/dtype.h"
#include "lms/error.h"
#include "lms/ir.h"
#include "lms/json.h"
#include "lms/storage.h"

#define LMS_ST_MAX_HEADER 100000000u /* the reference reader refuses larger headers */

struct lms_st_entry {
    char *name;                  /* owned */
    enum lms_dtype dtype;
    int ndim;
    int64_t shape[LMS_MAX_DIMS];
    uint64_t begin, end;         /* data_offsets, relative to the data buffer */
};

struct lms_st_header {
    struct lms_st_entry *entries; /* in header (key) order; owned */
    size_t n_entries;
    json_t *metadata;             /* __metadata__ object (string values) or NULL; owned */
    uint64_t header_len;          /* N */
    uint64_t data_start;          /* 8 + N */
    int n_ignored_fields;         /* unknown fields inside tensor entries (ignored) */
};

/* Parses and validates the header of a safetensors file whose first head_len bytes are at head
 * (head_len may be the whole file) and whose total size is file_size. Errors name the tensor and
 * the rule, without the file name (the caller prefixes it). OUT: hdr (release it). */
enum lms_status lms_st_parse(const void *head, size_t head_len, uint64_t file_size,
                             struct lms_st_header *hdr, struct lms_error *err);
void lms_st_header_release(struct lms_st_header *hdr);

struct lms_st_file {
    struct lms_storage *storage; /* the whole file, mapped; one reference */
    struct lms_st_header hdr;
};

/* Maps and parses path; errors start with "reading 'PATH': ". OUT: f (release it). */
enum lms_status lms_st_open(const char *path, struct lms_st_file *f, struct lms_error *err);
void lms_st_close(struct lms_st_file *f);
/* A view of entry i (one reference for the caller). */
enum lms_status lms_st_entry_view(const struct lms_st_file *f, size_t i, struct lms_view **out,
                                  struct lms_error *err);

/* A tensor to be written: name, dtype and shape; offsets are assigned by the builder. */
struct lms_st_out {
    const char *name;
    enum lms_dtype dtype;
    int ndim;
    const int64_t *shape;
    uint64_t begin, end; /* OUT: data_offsets */
    size_t tag;          /* the caller's, carried through the sort (e.g. its own index) */
};

/* Sorts outs into canonical order (dtype rank descending, then name), assigns offsets and
 * renders the padded header (with metadata, a string->string object or NULL) into hdr_out,
 * including the 8-byte length prefix. */
enum lms_status lms_st_header_build(struct lms_st_out *outs, size_t n, const json_t *metadata,
                                    struct lms_buf_str *hdr_out, struct lms_error *err);

#endif
