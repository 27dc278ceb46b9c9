/* lmsurgeon: refcounted byte storage that tensors point into.
 *
 * A storage is a read-only mapping of a whole file or a block of host memory. Tensors hold one
 * reference each plus a byte offset, so a model read from disk costs address space, not memory,
 * and surgery can share the input's storages with its output. */
#ifndef LMS_STORAGE_H
#define LMS_STORAGE_H

#include <stddef.h>
#include <stdint.h>

#include "lms/error.h"

enum lms_storage_kind {
    LMS_STORAGE_FILE_MAP, /* read-only mmap of a file, unmapped on the last release */
    LMS_STORAGE_HOST,     /* heap block owned by the storage */
};

struct lms_storage {
    enum lms_storage_kind kind;
    int refs;    /* references held by tensors and callers */
    char *path;  /* file the bytes come from, NULL for host memory; owned */
    void *base;  /* first byte; NULL when size is 0 */
    size_t size; /* bytes */
};

/* Maps the whole file at path read-only. OUT: *out holds one reference. */
enum lms_status lms_storage_map_file(const char *path, struct lms_storage **out,
                                     struct lms_error *err);
/* Allocates size zeroed host bytes. OUT: *out holds one reference. */
enum lms_status lms_storage_new_host(size_t size, struct lms_storage **out,
                                     struct lms_error *err);
/* Takes another reference; returns s. NULL is allowed. */
struct lms_storage *lms_storage_ref(struct lms_storage *s);
/* Drops a reference; the last one unmaps or frees. NULL is allowed. */
void lms_storage_release(struct lms_storage *s);

#endif
