/* lmsurgeon: checkpoint formats behind one table.
 *
 * A format knows how to recognise a path (probe), read it into the IR without copying tensor
 * bytes (read), and stream an IR model out atomically (write, via lms_outdir). Readers and
 * writers know nothing of surgery. lms_checkpoint_read picks the format by probing. */
#ifndef LMS_FORMAT_H
#define LMS_FORMAT_H

#include <stdbool.h>
#include <stdint.h>

#include "lms/error.h"
#include "lms/ir.h"

/* Progress callback: done and total in bytes of tensor data. May be NULL. */
typedef void (*lms_progress_fn)(void *ctx, uint64_t done, uint64_t total);

struct lms_write_opts {
    enum lms_dtype dtype;    /* cast float tensors to this; LMS_DTYPE_COUNT keeps each dtype */
    uint64_t max_shard_size; /* bytes of tensor data per shard; 0 = default 5 GB */
    bool force;              /* replace an existing non-empty destination */
    lms_progress_fn progress;
    void *progress_ctx;
    /* Options that only one format reads: format_opts points to that format's own struct (its
     * header names it) and format_opts_for is that format's name, so that options meant for one
     * writer never reach another (lms_checkpoint_write refuses the mismatch). NULL: the
     * format's defaults. */
    const char *format_opts_for;
    const void *format_opts;
};

struct lms_write_result {
    int n_shards;         /* files holding tensors */
    uint64_t bytes;       /* tensor data bytes written */
    int n_tensors;
    int n_aux_files;      /* tokenizer and other travelling files copied */
};

struct lms_format {
    const char *name; /* "hf" */
    const char *description;
    /* 0..100 confidence that path is in this format; never fails. */
    int (*probe)(const char *path);
    enum lms_status (*read)(const char *path, struct lms_model *out, struct lms_error *err);
    enum lms_status (*write)(const struct lms_model *m, const char *path,
                             const struct lms_write_opts *opts, struct lms_write_result *res,
                             struct lms_error *err);
};

/* Format by name ("hf"), or NULL. */
const struct lms_format *lms_format_find(const char *name);
/* The format that recognises path best, or NULL (with a message in err). */
const struct lms_format *lms_format_detect(const char *path, struct lms_error *err);
/* Detects the format of path and reads it. OUT: m is initialised (release it). */
enum lms_status lms_checkpoint_read(const char *path, struct lms_model *m,
                                    struct lms_error *err);

/* Whether f writes tensors in dtype d: every writer casts between the float types; FP8 blocks
 * (weights plus NAME_scale_inv) are a Hugging Face layout. */
bool lms_format_writes_dtype(const struct lms_format *f, enum lms_dtype d);
/* Writes m to path in format f (f->write), after checking that opts' format-specific options,
 * if any, are f's. opts may be NULL (defaults). */
enum lms_status lms_checkpoint_write(const struct lms_format *f, const struct lms_model *m,
                                     const char *path, const struct lms_write_opts *opts,
                                     struct lms_write_result *res, struct lms_error *err);

#define LMS_DEFAULT_SHARD_SIZE UINT64_C(5000000000)

#endif
