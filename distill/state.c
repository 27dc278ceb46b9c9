/* The resumable training state (include/lms/distill.h): trainer_state.json plus the fp32 master
 * weights and AdamW moments in optimizer.safetensors, written as one directory that replaces the
 * previous state atomically, so a crash or a full disk during a save leaves the last good state. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "lms/alloc.h"
#include "lms/distill.h"
#include "lms/outdir.h"
#include "lms/safetensors.h"

#define META_FILE "trainer_state.json"
#define TENSOR_FILE "optimizer.safetensors"

static int64_t numel(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    return n;
}

static enum lms_status write_tensors(const char *path, const struct lms_state_tensor *t, size_t n,
                                     struct lms_error *err)
{
    struct lms_st_out *outs = lms_calloc(n ? n : 1, sizeof *outs);
    if (!outs)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        outs[i] = (struct lms_st_out){.name = t[i].name, .dtype = LMS_DTYPE_F32,
                                      .ndim = t[i].ndim, .shape = t[i].shape, .tag = i};
    json_t *meta = json_pack("{s:s}", "format", "pt");
    struct lms_buf_str hdr = {0};
    enum lms_status rc = lms_st_header_build(outs, n, meta, &hdr, err);
    json_decref(meta);
    int fd = -1;
    if (!rc && (fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0)
        rc = lms_error_set(err, LMS_EIO, "creating '%s': %s", path, strerror(errno));
    if (!rc)
        rc = lms_write_all(fd, hdr.data, hdr.len, path, err);
    for (size_t j = 0; j < n && !rc; j++) {
        const struct lms_state_tensor *x = &t[outs[j].tag];
        rc = lms_write_all(fd, x->data, (size_t)numel(x->ndim, x->shape) * sizeof(float), path,
                           err);
    }
    if (fd >= 0 && close(fd) != 0 && !rc)
        rc = lms_error_set(err, LMS_EIO, "closing '%s': %s", path, strerror(errno));
    lms_buf_str_release(&hdr);
    lms_free(outs);
    return rc;
}

enum lms_status lms_train_state_write(const char *dir, const json_t *meta,
                                      const struct lms_state_tensor *t, size_t n, bool replace,
                                      struct lms_error *err)
{
    struct lms_outdir od;
    enum lms_status rc = lms_outdir_begin(dir, replace, &od, err);
    if (rc)
        return rc;
    char path[PATH_MAX];
    struct lms_buf_str text = {0};
    if (!(rc = lms_outdir_path(&od, TENSOR_FILE, path, sizeof path, err)))
        rc = write_tensors(path, t, n, err);
    if (!rc && !(rc = lms_json_dump(meta, LMS_JSON_INDENT2, &text, err)) &&
        !(rc = lms_buf_str_append(&text, "\n", 1, err)) &&
        !(rc = lms_outdir_path(&od, META_FILE, path, sizeof path, err)))
        rc = lms_write_file(path, text.data, text.len, err);
    lms_buf_str_release(&text);
    if ((rc = lms_outdir_finish(&od, rc, err)))
        return lms_error_wrap(err, "saving the training state '%s': ", dir);
    return LMS_OK;
}

void lms_train_state_release(struct lms_train_state *s)
{
    json_decref(s->meta);
    s->meta = NULL;
    if (s->tensors) {
        lms_st_close(s->tensors);
        lms_free(s->tensors);
    }
    s->tensors = NULL;
}

enum lms_status lms_train_state_read(const char *dir, struct lms_train_state *s,
                                     struct lms_error *err)
{
    memset(s, 0, sizeof *s);
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, META_FILE);
    enum lms_status rc = lms_json_load_file(path, 1 << 24, &s->meta, err);
    if (rc)
        return rc;
    json_t *f = json_object_get(s->meta, "format"), *v = json_object_get(s->meta, "version");
    if (!json_is_string(f) || strcmp(json_string_value(f), LMS_TRAIN_STATE_FORMAT) ||
        !json_is_integer(v) || json_integer_value(v) != LMS_TRAIN_STATE_VERSION) {
        lms_train_state_release(s);
        return lms_error_set(err, LMS_EFORMAT, "'%s': not a version %d %s file", path,
                             LMS_TRAIN_STATE_VERSION, LMS_TRAIN_STATE_FORMAT);
    }
    snprintf(path, sizeof path, "%s/%s", dir, TENSOR_FILE);
    struct lms_st_file *st = lms_calloc(1, sizeof *st);
    if (!st) {
        lms_train_state_release(s);
        return lms_error_set(err, LMS_ENOMEM, "out of memory reading '%s'", path);
    }
    if ((rc = lms_st_open(path, st, err))) {
        lms_free(st);
        lms_train_state_release(s);
        return rc;
    }
    s->tensors = st;
    return LMS_OK;
}

enum lms_status lms_train_state_get(const struct lms_train_state *s, const char *dir,
                                    const char *name, int ndim, const int64_t *shape, float *dst,
                                    struct lms_error *err)
{
    const struct lms_st_file *st = s->tensors;
    for (size_t i = 0; st && i < st->hdr.n_entries; i++) {
        const struct lms_st_entry *e = &st->hdr.entries[i];
        if (strcmp(e->name, name))
            continue;
        bool same = e->dtype == LMS_DTYPE_F32 && e->ndim == ndim;
        for (int d = 0; same && d < ndim; d++)
            same = e->shape[d] == shape[d];
        if (!same)
            return lms_error_set(err, LMS_EFORMAT, "training state '%s': tensor '%s' has another "
                                 "dtype or shape than the model's parameter", dir, name);
        memcpy(dst, (const char *)st->storage->base + st->hdr.data_start + e->begin,
               (size_t)(e->end - e->begin));
        /* the tool saves only finite weights and moments: anything else would turn every
         * later step into NaN */
        int64_t n = numel(ndim, shape);
        for (int64_t k = 0; k < n; k++)
            if (!isfinite(dst[k]))
                return lms_error_set(err, LMS_EFORMAT, "training state '%s': tensor '%s' holds "
                                     "a value that is not finite (%g at element %lld)", dir,
                                     name, (double)dst[k], (long long)k);
        return LMS_OK;
    }
    return lms_error_set(err, LMS_EFORMAT, "training state '%s': no tensor '%s'", dir, name);
}
