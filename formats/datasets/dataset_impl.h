/* Internal view of a parsed .idx (formats/datasets/indexed_dataset.c), shared with the data loader and
 * the fuzz/unit tests. The arrays point into the mapped file and are unaligned: read them with
 * memcpy. */
#ifndef LMS_FORMATS_DATASET_IMPL_H
#define LMS_FORMATS_DATASET_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "lms/dataset.h"

struct lms__idx {
    enum lms_index_dtype code;    /* token dtype code */
    size_t itemsize;              /* bytes per id */
    int64_t n_seq;                /* S */
    int64_t n_doc_idx;            /* D = documents + 1 */
    const unsigned char *lengths;  /* int32[S], unaligned */
    const unsigned char *pointers; /* int64[S], unaligned, byte offsets into .bin */
    const unsigned char *doc_idx;  /* int64[D], unaligned */
    size_t trailing;              /* bytes after the doc index (multimodal modes), ignored */
    int64_t n_tokens;             /* .bin size / itemsize */
};

/* Pure parser: validates an .idx image of idx_len bytes against a .bin of bin_len bytes,
 * checking every invariant listed in include/lms/dataset.h. Messages do not name the file; the
 * caller prefixes it. */
enum lms_status lms__idx_parse(const void *idx, size_t idx_len, uint64_t bin_len,
                               struct lms__idx *out, struct lms_error *err);

/* Where an open dataset came from, for the caches derived from it (the sampler's index): the
 * path it was opened with (PREFIX, or the raw id file) and the size and modification time (ns)
 * of its .idx and .bin at the open (0, 0 for the .idx of a raw file). */
struct lms__dataset_origin {
    const char *path;   /* borrowed from the dataset */
    uint64_t stamp[4];  /* idx size, idx mtime ns, bin size, bin mtime ns */
};
void lms__dataset_origin(const struct lms_dataset *ds, struct lms__dataset_origin *out);

#endif
