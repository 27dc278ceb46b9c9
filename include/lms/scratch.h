/* lmsurgeon: reference-counted temporary directories. */
#ifndef LMS_SCRATCH_H
#define LMS_SCRATCH_H

#include "lms/error.h"

/* A temporary directory holding side files a reader extracted from an archive (a .nemo
 * tarball's tokenizer files), shared by the models that list files in it and removed with its
 * contents when the last of them is released. */
struct lms_scratch {
    int refs;   /* models holding it */
    char *path; /* the directory; owned */
};

/* Creates a directory "<$TMPDIR or /tmp>/<prefix>XXXXXX". OUT: *out holds one reference. */
enum lms_status lms_scratch_new(const char *prefix, struct lms_scratch **out,
                                struct lms_error *err);
struct lms_scratch *lms_scratch_ref(struct lms_scratch *s); /* NULL allowed */
void lms_scratch_release(struct lms_scratch *s);            /* NULL allowed; last removes it */

#endif
