/* lmsurgeon: writing a checkpoint directory (or one file) atomically.
 *
 * Every writer works inside a temporary directory created beside the destination
 * (".NAME.lms-tmp-XXXXXX"), and only lms_outdir_commit renames the finished directory into
 * place, after fsyncing every file in it. A crash or an error before the commit leaves the
 * destination exactly as it was (a stale temporary directory may remain beside it and is safe
 * to delete); the temporary is registered (lms/tempfiles.h) so that an interrupt removes it.
 *
 * What the commit may replace is decided by force, as given to begin:
 * - without force, only what begin accepted: nothing (the rename is RENAME_NOREPLACE), or the
 *   empty directory that was there then and still is. Anything that appeared at the destination
 *   during the run is left alone: the commit fails with LMS_EEXIST and the finished output is
 *   kept beside it under "NAME.lms-kept-XXXXXX", which the message names;
 * - with force, whatever is at the destination at the moment of the commit (last writer wins):
 *   it is swapped with the finished directory in one atomic renameat2(RENAME_EXCHANGE) and then
 *   removed (two renames on filesystems without it). */
#ifndef LMS_OUTDIR_H
#define LMS_OUTDIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lms/error.h"

struct lms_outdir {
    char *dest; /* final path; owned */
    char *tmp;  /* temporary directory beside dest; owned */
    bool force; /* replace whatever is at the destination at the commit */
    bool replace_empty; /* without force: an empty directory was at dest at begin */
};

/* Checks the destination (refuses an existing non-empty one unless force) and creates the
 * temporary directory, registered for removal on an interrupt. OUT: od is filled; release it with lms_outdir_abort or _commit. */
enum lms_status lms_outdir_begin(const char *dest, bool force, struct lms_outdir *od,
                                 struct lms_error *err);
/* Path of name inside the temporary directory, written to dst. */
enum lms_status lms_outdir_path(const struct lms_outdir *od, const char *name, char *dst,
                                size_t dst_cap, struct lms_error *err);
/* fsyncs every file in the temporary directory and the directory itself, renames it into place
 * (see above for what it may replace) and frees od. Writers therefore need not fsync each file (one pass at the end lets the kernel
 * schedule the write-back of all files together). */
enum lms_status lms_outdir_commit(struct lms_outdir *od, struct lms_error *err);
/* Removes the temporary directory and everything in it, frees od. Safe after a failed begin. */
void lms_outdir_abort(struct lms_outdir *od);
/* A writer's last step: rc is the status of the writing; aborts and returns rc when it failed,
 * else commits. */
enum lms_status lms_outdir_finish(struct lms_outdir *od, enum lms_status rc,
                                  struct lms_error *err);

/* One output file written the same way: a temporary file beside dest (".NAME.lms-tmp-XXXXXX",
 * open for writing in fd), renamed into place by the commit under the rules above. */
struct lms_outfile {
    char *dest; /* owned */
    char *tmp;  /* owned */
    int fd;     /* the temporary file, open for writing; -1 once closed */
    bool force;
};

/* Refuses a directory at dest, and an existing file unless force; creates the temporary file
 * (mode 0666 & ~umask), registered for removal on an interrupt. */
enum lms_status lms_outfile_begin(const char *dest, bool force, struct lms_outfile *of,
                                  struct lms_error *err);
/* fsyncs and closes the file, renames it into place and frees of; on failure nothing of it is
 * left but, after LMS_EEXIST, the finished file beside dest that the message names. */
enum lms_status lms_outfile_commit(struct lms_outfile *of, struct lms_error *err);
/* Closes and removes the temporary file, frees of. Safe after a failed begin. */
void lms_outfile_abort(struct lms_outfile *of);

/* Writes all of buf to fd, retrying short writes; errors name path. */
enum lms_status lms_write_all(int fd, const void *buf, size_t len, const char *path,
                              struct lms_error *err);
/* Writes all of buf to fd at file offset at (pwrite), retrying short writes. */
enum lms_status lms_pwrite_all(int fd, const void *buf, size_t len, uint64_t at,
                               const char *path, struct lms_error *err);
/* Copies a file byte for byte to dst_path (created, fsync'd). */
enum lms_status lms_copy_file(const char *src_path, const char *dst_path,
                              struct lms_error *err);
/* Writes a whole small file (created, fsync'd). */
enum lms_status lms_write_file(const char *path, const void *buf, size_t len,
                               struct lms_error *err);
/* Removes a directory tree (best effort). */
void lms_remove_tree(const char *path);
/* Final path component of path (pointer into path). */
const char *lms_path_basename(const char *path);

#endif
