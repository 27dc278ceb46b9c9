/* lmsurgeon: the paths a command reads and writes must not overlap.
 *
 * A command lists every path it reads and every path it writes (an output directory, a file
 * beside it, a log), and lms_paths_check refuses the run before anything is written when a
 * written path is, contains or lies inside another path of the list. Paths are compared after
 * resolving symbolic links (realpath; a path that does not exist yet by its deepest existing
 * parent, the rest as written). A directory that is read also counts through every symbolic link
 * below it: in the Hugging Face cache a snapshot's files are links into blobs/, so replacing
 * blobs/ would break the snapshot although the two directories are apart. */
#ifndef LMS_PATHS_H
#define LMS_PATHS_H

#include <stddef.h>

#include "lms/error.h"

enum lms_path_use {
    LMS_PATH_READ,      /* a file or a directory the command reads */
    LMS_PATH_READ_DATA, /* a dataset prefix: PREFIX (a raw id file), PREFIX.bin and PREFIX.idx */
    LMS_PATH_WRITE,     /* a file or a directory the command creates or replaces */
};

struct lms_path_role {
    const char *path; /* as given; NULL: the entry is skipped */
    const char *what; /* how messages name it ("the input", "the teacher", "--dump-rows");
                       * NULL for the command's one output */
    enum lms_path_use use;
};

/* LMS_EINVAL, naming both paths, when a written path overlaps another path of roles. Paths
 * that are read but do not exist are skipped (reading them fails later, with its own message). */
enum lms_status lms_paths_check(const struct lms_path_role *roles, size_t n,
                                struct lms_error *err);

#endif
