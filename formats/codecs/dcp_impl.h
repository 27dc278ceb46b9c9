/* What the torch DCP reader and writer share (library-internal). */
#ifndef LMS_FORMATS_CODECS_DCP_IMPL_H
#define LMS_FORMATS_CODECS_DCP_IMPL_H

#include <stdbool.h>
#include <stdint.h>

/* The module of the Metadata, TensorProperties, ChunkStorageMetadata ... dataclasses. */
#define LMS_DCP_METADATA_MODULE "torch.distributed.checkpoint.metadata"

/* Elements of a box with ndim extents sizes[]. */
static inline int64_t volume(int ndim, const int64_t *sizes)
{
    int64_t v = 1;
    for (int i = 0; i < ndim; i++)
        v *= sizes[i];
    return v;
}

/* Equal extents on the first n axes. */
static inline bool size_eq(int n, const int64_t *a, const int64_t *b)
{
    for (int i = 0; i < n; i++)
        if (a[i] != b[i])
            return false;
    return true;
}

#endif
