/* The table of checkpoint formats and detection by probing (include/lms/format.h). */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "lms/format.h"
#include "lms/gguf.h"
#include "lms/hf.h"
#include "lms/nemo.h"

static const struct lms_format *const formats[] = {
    &lms_format_hf,
    &lms_format_nemo,
    &lms_format_megatron,
    &lms_format_nemo1,
    &lms_format_gguf,
};

#define N_FORMATS (sizeof(formats) / sizeof(formats[0]))

const struct lms_format *lms_format_find(const char *name)
{
    for (size_t i = 0; i < N_FORMATS; i++)
        if (strcmp(formats[i]->name, name) == 0)
            return formats[i];
    return NULL;
}

const struct lms_format *lms_format_detect(const char *path, struct lms_error *err)
{
    struct stat sb;
    if (stat(path, &sb) != 0) {
        lms_error_set(err, LMS_EIO, "'%s' does not exist", path);
        return NULL;
    }
    const struct lms_format *best = NULL;
    int best_score = 0;
    for (size_t i = 0; i < N_FORMATS; i++) {
        int score = formats[i]->probe(path);
        if (score > best_score) {
            best = formats[i];
            best_score = score;
        }
    }
    if (!best)
        lms_error_set(err, LMS_EFORMAT, "'%s' is not a checkpoint in any known format", path);
    return best;
}

enum lms_status lms_checkpoint_read(const char *path, struct lms_model *m, struct lms_error *err)
{
    lms_model_init(m);
    const struct lms_format *f = lms_format_detect(path, err);
    if (!f)
        return err ? err->status : LMS_EFORMAT;
    return f->read(path, m, err);
}

bool lms_format_writes_dtype(const struct lms_format *f, enum lms_dtype d)
{
    return lms_dtype_is_castable(d) || (d == LMS_DTYPE_F8_E4M3 && strcmp(f->name, "hf") == 0);
}

enum lms_status lms_checkpoint_write(const struct lms_format *f, const struct lms_model *m,
                                     const char *path, const struct lms_write_opts *opts,
                                     struct lms_write_result *res, struct lms_error *err)
{
    static const struct lms_write_opts defaults = {.dtype = LMS_DTYPE_COUNT};
    if (!opts)
        opts = &defaults;
    if (opts->format_opts && (!opts->format_opts_for || strcmp(opts->format_opts_for, f->name)))
        return lms_error_set(err, LMS_EINVAL, "'%s': options for the %s format given to the %s "
                             "writer", path, opts->format_opts_for ? opts->format_opts_for
                                                                    : "(unnamed)", f->name);
    if (opts->dtype != LMS_DTYPE_COUNT && !lms_format_writes_dtype(f, opts->dtype))
        return lms_error_set(err, LMS_EINVAL, "'%s': the %s writer cannot write dtype %s", path,
                             f->name, lms_dtype_name(opts->dtype));
    return f->write(m, path, opts, res, err);
}
