/* lmsurgeon: Megatron-Core "torch_dist" distributed checkpoints.
 *
 *   metadata.json   {"sharded_backend": "torch_dist", "sharded_backend_version": 1,
 *                    "common_backend": "torch", "common_backend_version": 1}
 *   common.pt       torch.save of a dict of plain values
 *   .metadata       pickled torch.distributed.checkpoint Metadata: key -> global size, dtype and
 *                   chunks (offsets, sizes); (key, chunk offsets) -> (file, byte offset, length)
 *   __R_K.distcp    concatenated items: each tensor chunk is a whole torch.save zip, each bytes
 *                   item raw bytes
 *
 * lms_dcp_metadata_parse is the pure parser of .metadata (fuzzable): it checks that every chunk
 * lies inside its tensor, that the chunks tile the tensor exactly (no gap, no overlap) and that
 * every chunk has a storage entry. lms_dcp_open maps the data files and turns every tensor into
 * one lazy view over the mapped chunks (concatenations along the cut axes; no copy), whatever
 * the tiling the saving ranks used. lms_dcp_write writes one rank's worth of chunks. */
#ifndef LMS_DCP_H
#define LMS_DCP_H

#include <stdbool.h>
#include <stdint.h>

#include "formats/codecs/pickle.h"
#include "lms/error.h"
#include "lms/ir.h"

struct lms_dcp_chunk {
    int64_t offsets[LMS_MAX_DIMS]; /* position in the global tensor */
    int64_t sizes[LMS_MAX_DIMS];   /* extent on each axis */
    const char *file;              /* relative_path of the item; points into the parse arena */
    uint64_t offset;               /* byte range of the item in that file */
    uint64_t length;
};

struct lms_dcp_tensor {
    char *key;                     /* DCP fqn; owned */
    enum lms_dtype dtype;
    int ndim;
    int64_t shape[LMS_MAX_DIMS];   /* global shape */
    struct lms_dcp_chunk *chunks;  /* owned */
    size_t n_chunks;
    struct lms_view *view;         /* whole tensor, set by lms_dcp_open; one reference */
};

struct lms_dcp_bytes {
    char *key;                     /* "<key>/shard_<offsets>_<shape>"; owned */
    const char *file;              /* points into the parse arena */
    uint64_t offset, length;
};

struct lms_dcp {
    struct lms_dcp_tensor *tensors; /* in .metadata order; owned */
    size_t n_tensors;
    struct lms_dcp_bytes *bytes;    /* owned */
    size_t n_bytes;
    struct lms_pkl_doc doc;         /* the parsed .metadata (file names live here) */
    struct lms_storage **files;     /* mapped data files (lms_dcp_open); owned references */
    char **file_names;              /* owned */
    uint64_t *file_base;            /* byte offset of each file in its storage (archive member) */
    uint64_t *file_len;             /* bytes of each file */
    size_t n_files;
};

/* Where the checkpoint's files live: the files of a directory, or members of an uncompressed
 * archive that is mapped whole (a .nemo tarball stores every member contiguously), so tensors
 * become views over the archive mapping without extracting anything. */
struct lms_dcp_member {
    const char *name; /* path inside the archive without a leading "./"; borrowed */
    uint64_t offset;  /* first data byte in the archive */
    uint64_t size;    /* bytes */
};

struct lms_dcp_source {
    const char *dir;                      /* directory; with archive: member folder ("" = root) */
    struct lms_storage *archive;          /* NULL: a directory; else the mapped archive, borrowed */
    const struct lms_dcp_member *members; /* archive members (any order); borrowed */
    size_t n_members;
};

/* Parses a .metadata pickle. OUT: d (release it, also on failure). */
enum lms_status lms_dcp_metadata_parse(const void *src, size_t src_len, struct lms_dcp *d,
                                       struct lms_error *err);
/* Reads metadata.json (the backend must be torch_dist), .metadata and maps the data files of the
 * checkpoint directory dir; every tensor gets its view. Errors start with the file at fault.
 * OUT: d (release it, also on failure). */
enum lms_status lms_dcp_open(const char *dir, struct lms_dcp *d, struct lms_error *err);
/* As lms_dcp_open, from a directory or archive members (views then hold references to the
 * archive storage). */
enum lms_status lms_dcp_open_source(const struct lms_dcp_source *src, struct lms_dcp *d,
                                    struct lms_error *err);
/* The archive member dir/name of src, or NULL. */
const struct lms_dcp_member *lms_dcp_source_find(const struct lms_dcp_source *src,
                                                 const char *name);
void lms_dcp_release(struct lms_dcp *d);
const struct lms_dcp_tensor *lms_dcp_find(const struct lms_dcp *d, const char *key);

/* ---- writer ------------------------------------------------------------------------------ */

struct lms_dcp_w_chunk {
    int64_t offsets[LMS_MAX_DIMS];
    struct lms_view *view;         /* chunk contents; its shape gives the sizes; borrowed */
};

struct lms_dcp_w_tensor {
    const char *key;               /* borrowed */
    enum lms_dtype dtype;          /* written dtype (views are converted to it) */
    int ndim;
    int64_t shape[LMS_MAX_DIMS];   /* global shape */
    struct lms_dcp_w_chunk *chunks; /* borrowed */
    size_t n_chunks;
};

struct lms_dcp_w_bytes {
    const char *key;               /* borrowed */
    const void *data;              /* borrowed */
    size_t len;
};

struct lms_dcp_w_stats {
    uint64_t tensor_bytes;         /* raw tensor bytes written */
    size_t n_chunks;
};

/* Writes metadata.json, common.pt (the pickled dict common_pkl, a whole protocol-2 pickle),
 * .metadata and __0_0.distcp into the existing directory dir. Each file is fsync'd. progress
 * may be NULL. */
enum lms_status lms_dcp_write(const char *dir, const struct lms_dcp_w_tensor *tensors,
                              size_t n_tensors, const struct lms_dcp_w_bytes *bytes,
                              size_t n_bytes, const void *common_pkl, size_t common_len,
                              void (*progress)(void *ctx, uint64_t done, uint64_t total),
                              void *progress_ctx, struct lms_dcp_w_stats *stats,
                              struct lms_error *err);

/* metadata.json of a torch_dist checkpoint, as Megatron writes it. */
#define LMS_DCP_METADATA_JSON                                                                   \
    "{\"sharded_backend\": \"torch_dist\", \"sharded_backend_version\": 1, "                     \
    "\"common_backend\": \"torch\", \"common_backend_version\": 1}"

/* The small files of a checkpoint whose data file was written by lms_dcp_write_data. */
struct lms_dcp_w_files {
    unsigned char *metadata; /* .metadata pickle; lms_malloc'd */
    size_t metadata_len;
    unsigned char *common;   /* common.pt (torch.save zip); lms_malloc'd */
    size_t common_len;
    uint64_t data_len;       /* bytes of the data file written */
    struct lms_dcp_w_stats stats;
};

/* Writes the data file (__0_0.distcp) at file offset base of fd (a seekable file, e.g. an
 * archive member being written) and builds .metadata and common.pt in memory; nothing is
 * fsync'd. Pages of the source views are dropped after each chunk. OUT: files (release it). */
enum lms_status lms_dcp_write_data(int fd, const char *path, uint64_t base,
                                   const struct lms_dcp_w_tensor *tensors, size_t n_tensors,
                                   const struct lms_dcp_w_bytes *bytes, size_t n_bytes,
                                   const void *common_pkl, size_t common_len,
                                   void (*progress)(void *ctx, uint64_t done, uint64_t total),
                                   void *progress_ctx, struct lms_dcp_w_files *files,
                                   struct lms_error *err);
void lms_dcp_w_files_release(struct lms_dcp_w_files *files);

/* torch.save([uint8 tensor 80 02 4E 2E]): the recommended _extra_state payload, built
 * in memory. OUT: *dst (lms_free it), *dst_len. */
enum lms_status lms_dcp_extra_state_payload(unsigned char **dst, size_t *dst_len,
                                            struct lms_error *err);

#endif
