/* Reference-counted temporary directories (include/lms/scratch.h). */
#include "lms/scratch.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lms/alloc.h"
#include "lms/outdir.h"
#include "lms/tempfiles.h"

enum lms_status lms_scratch_new(const char *prefix, struct lms_scratch **out,
                                struct lms_error *err)
{
    const char *tmp = getenv("TMPDIR");
    char path[4096];
    if (!tmp || !*tmp)
        tmp = "/tmp";
    if ((size_t)snprintf(path, sizeof(path), "%s/%sXXXXXX", tmp, prefix) >= sizeof(path))
        return lms_error_set(err, LMS_EINVAL, "temporary directory path too long");
    struct lms_scratch *s = lms_calloc(1, sizeof(*s));
    if (!s)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    if (!mkdtemp(path)) {
        lms_free(s);
        return lms_error_set(err, LMS_EIO, "creating a temporary directory in '%s': %s", tmp,
                             strerror(errno));
    }
    s->path = lms_strdup(path);
    if (!s->path) {
        rmdir(path);
        lms_free(s);
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    s->refs = 1;
    lms_temp_track(s->path); /* an interrupt removes it too */
    *out = s;
    return LMS_OK;
}

struct lms_scratch *lms_scratch_ref(struct lms_scratch *s)
{
    if (s)
        s->refs++;
    return s;
}

void lms_scratch_release(struct lms_scratch *s)
{
    if (!s || --s->refs > 0)
        return;
    lms_remove_tree(s->path);
    lms_temp_forget(s->path);
    lms_free(s->path);
    lms_free(s);
}
