/* What the "nemo" and "megatron" layouts share beside the weights: our hf_config.json (so that
 * HF -> NeMo/Megatron -> HF is exact), the tokenizer and generation files that travel with the
 * model, and the reading tail (torch_dist weights plus an HF config object -> model). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "formats/layouts/nemo_impl.h"
#include "formats/layouts/paths.h"
#include "lms/alloc.h"
#include "lms/hf.h"
#include "lms/json.h"
#include "lms/outdir.h"

/* Adds the known HF side files found in dir to m, in lms_hf_aux_files order. */
enum lms_status lms__nemo_add_aux_from(struct lms_model *m, const char *dir, struct lms_error *err)
{
    char p[PATH_MAX];
    for (int i = 0; lms_hf_aux_files[i]; i++)
        if (join(p, sizeof(p), dir, lms_hf_aux_files[i]) && is_file(p)) {
            enum lms_status rc = lms_model_add_aux_file(m, p, err);
            if (rc)
                return rc;
        }
    return LMS_OK;
}

static enum lms_status copy_aux_to(const struct lms_model *m, const char *dir,
                                   struct lms_write_result *r, struct lms_error *err)
{
    for (size_t i = 0; i < m->n_aux_files; i++) {
        char dst[PATH_MAX];
        if (!join(dst, sizeof(dst), dir, lms_path_basename(m->aux_files[i])))
            return lms_error_set(err, LMS_EINVAL, "path too long");
        enum lms_status rc = lms_copy_file(m->aux_files[i], dst, err);
        if (rc)
            return rc;
        r->n_aux_files++;
    }
    return LMS_OK;
}

enum lms_status lms__nemo_write_json_file(const char *path, const json_t *v, unsigned style,
                                          struct lms_error *err)
{
    struct lms_buf_str s = {0};
    enum lms_status rc = lms_json_dump(v, style, &s, err);
    if (!rc)
        rc = lms_buf_str_append(&s, "\n", 1, err);
    if (!rc)
        rc = lms_write_file(path, s.data, s.len, err);
    lms_buf_str_release(&s);
    return rc;
}

/* The HF config.json describing arch (built on m->hf_config), written to path. */
static enum lms_status write_hf_config(const struct lms_model *m, const struct lms_arch *a,
                                       const char *path, struct lms_error *err)
{
    json_t *c;
    enum lms_status rc = lms_hf_config_of_model(m, a, &c, err);
    if (rc)
        return rc;
    rc = lms__nemo_write_json_file(path, c, LMS_JSON_INDENT2, err);
    json_decref(c);
    return rc;
}

/* The files every NeMo/Megatron output carries beside the weights: our hf_config.json (exact
 * HF round trips) in config_dir and the tokenizer/generation files in tokenizer_dir. */
enum lms_status lms__nemo_written_arch(const struct lms_model *m, const struct lms_write_opts *o,
                                       struct lms_arch *a, struct lms_error *err)
{
    *a = m->arch;
    if (o->dtype != LMS_DTYPE_COUNT)
        a->dtype = o->dtype;
    return lms_model_validate(m, err);
}

enum lms_status lms__nemo_write_sidecars(const struct lms_model *m, const struct lms_arch *a,
                                         const struct lms_outdir *od, const char *config_dir,
                                         const char *tokenizer_dir, struct lms_write_result *r,
                                         struct lms_error *err)
{
    char name[256], p[PATH_MAX];
    snprintf(name, sizeof(name), "%s/hf_config.json", config_dir);
    enum lms_status rc = lms_outdir_path(od, name, p, sizeof(p), err);
    if (!rc)
        rc = write_hf_config(m, a, p, err);
    if (!rc)
        rc = lms_outdir_path(od, tokenizer_dir, p, sizeof(p), err);
    if (!rc)
        rc = copy_aux_to(m, p, r, err);
    return rc;
}

enum lms_status lms__nemo_make_dir(const char *path, struct lms_error *err)
{
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return lms_error_set(err, LMS_EIO, "creating '%s': %s", path, strerror(errno));
    return LMS_OK;
}

enum lms_status lms__nemo_begin_dir(const struct lms_model *m, const char *path,
                                    const struct lms_write_opts *o, const char *const *dirs,
                                    size_t n_dirs, size_t weights_dir, const char *prefix,
                                    bool stacked, struct lms_arch *a, struct lms_outdir *od,
                                    struct lms_write_result *r, struct lms_error *err)
{
    enum lms_status rc = lms__nemo_written_arch(m, o, a, err);
    if (rc || (rc = lms_outdir_begin(path, o->force, od, err)))
        return rc;
    char p[PATH_MAX];
    for (size_t i = 0; i < n_dirs && !rc; i++) {
        rc = lms_outdir_path(od, dirs[i], p, sizeof(p), err);
        if (!rc)
            rc = lms__nemo_make_dir(p, err);
    }
    if (!rc)
        rc = lms_outdir_path(od, dirs[weights_dir], p, sizeof(p), err);
    if (!rc)
        rc = lms__nemo_write_weights(m, p, prefix, stacked, o, r, err);
    if (rc)
        return lms_outdir_finish(od, rc, err);
    return LMS_OK;
}

/* Shared reading tail: arch from an HF config object (consumed), then tensors. */
enum lms_status lms__nemo_finish_read(const char *weights, json_t *hf, const char *fmt_name,
                                      struct lms_model *m, struct lms_error *err)
{
    struct lms_dcp d;
    enum lms_status rc = lms_dcp_open(weights, &d, err);
    if (rc)
        m->hf_config = hf; /* released with m */
    else
        rc = lms__nemo_model_read(&d, hf, fmt_name, m, err);
    if (rc && err && strncmp(err->msg, "'", 1) != 0 && strncmp(err->msg, "model config", 12) != 0)
        lms_error_wrap(err, "'%s': ", weights);
    lms_dcp_release(&d);
    return rc;
}

enum lms_status lms__nemo_load_hf_config_if(const char *path, json_t **out, struct lms_error *err)
{
    *out = NULL;
    if (!is_file(path))
        return LMS_OK;
    return lms_json_load_file(path, LMS_NEMO_JSON_MAX_BYTES, out, err);
}
