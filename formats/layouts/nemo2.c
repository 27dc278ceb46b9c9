/* The "nemo" format: NeMo 2 checkpoint directories.
 *
 *   <ckpt>/context/{io.json, model.yaml, hf_config.json, nemo_tokenizer/}
 *   <ckpt>/weights/  torch_dist, keys prefixed "module."
 *
 * context/hf_config.json is this tool's own artifact (the Hugging Face config.json of the model);
 * checkpoints without it, written by NeMo, take the config from io.json and model.yaml. */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "formats/layouts/nemo_impl.h"
#include "formats/layouts/paths.h"
#include "lms/alloc.h"
#include "lms/hf.h"
#include "lms/json.h"
#include "lms/nemo.h"
#include "lms/outdir.h"

static int nemo_probe(const char *path)
{
    if (has(path, "context/io.json") && has(path, "weights"))
        return 95;
    if (has(path, "context") && has(path, "weights/metadata.json"))
        return 80;
    return 0;
}

/* The model config of a NeMo 2 checkpoint without our hf_config.json, as an HF config object.
 * OUT: *hf. */
static enum lms_status nemo_context_hf(const char *path, const char *weights, json_t **hf,
                                       struct lms_error *err)
{
    char ctx[PATH_MAX], cls[128];
    json_t *fields;
    if (!join(ctx, sizeof(ctx), path, "context"))
        return lms_error_set(err, LMS_EINVAL, "path too long");
    enum lms_status rc = lms__nemo_context_fields(ctx, &fields, cls, sizeof(cls), err);
    if (rc)
        return rc;
    struct lms_dcp d;
    rc = lms_dcp_open(weights, &d, err);
    if (!rc && (rc = lms__nemo_hf_from_fields(fields, cls, &d, hf, err)))
        lms_error_wrap(err, "'%s/io.json': ", ctx); /* name the config at fault */
    lms_dcp_release(&d);
    json_decref(fields);
    return rc;
}

static enum lms_status nemo_read(const char *path, struct lms_model *m, struct lms_error *err)
{
    lms_model_init(m);
    char p[PATH_MAX], weights[PATH_MAX];
    json_t *hf = NULL;
    if (!join(p, sizeof(p), path, "context/io.json") || !is_file(p))
        return lms_error_set(err, LMS_EFORMAT, "'%s': no context/io.json (not a NeMo 2 "
                             "checkpoint, or an incomplete one)", path);
    if (!join(weights, sizeof(weights), path, "weights") || !is_dir(weights))
        snprintf(weights, sizeof(weights), "%s", path); /* early NeMo 2: weights at the top */
    join(p, sizeof(p), path, "context/hf_config.json");
    enum lms_status rc = lms__nemo_load_hf_config_if(p, &hf, err);
    if (rc)
        return rc;
    if (!hf) {
        rc = nemo_context_hf(path, weights, &hf, err);
        if (rc)
            return rc;
    }
    rc = lms__nemo_finish_read(weights, hf, "nemo", m, err);
    if (!rc && join(p, sizeof(p), path, "context/nemo_tokenizer"))
        rc = lms__nemo_add_aux_from(m, p, err);
    if (rc)
        lms_model_release(m);
    return rc;
}

/* True when m carries tokenizer files (NeMo's AutoTokenizer can load the folder). */
static bool has_tokenizer(const struct lms_model *m)
{
    static const char *const names[] = {"tokenizer.json", "tokenizer_config.json",
                                        "tokenizer.model", "vocab.json"};
    for (size_t i = 0; i < m->n_aux_files; i++)
        for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++)
            if (strcmp(lms_path_basename(m->aux_files[i]), names[k]) == 0)
                return true;
    return false;
}

static enum lms_status nemo_write(const struct lms_model *m, const char *path,
                                  const struct lms_write_opts *o, struct lms_write_result *res,
                                  struct lms_error *err)
{
    struct lms_write_result r = {0};
    struct lms_arch a;
    struct lms_outdir od;
    static const char *const dirs[] = {"context", "context/nemo_tokenizer", "weights"};
    enum lms_status rc = lms__nemo_begin_dir(m, path, o, dirs, 3, 2, "module.", false, &a, &od,
                                             &r, err);
    if (rc)
        return rc;
    char p[PATH_MAX];
    {
        json_t *io = lms__nemo_io_json(&a, has_tokenizer(m));
        rc = lms_outdir_path(&od, "context/io.json", p, sizeof(p), err);
        if (!rc)
            rc = lms__nemo_write_json_file(p, io, LMS_JSON_INDENT2, err);
        json_decref(io);
    }
    if (!rc) {
        struct lms_buf_str y = {0};
        const char *module, *model_cls, *config_cls;
        lms__nemo_class_of(&a, &module, &model_cls, &config_cls);
        rc = lms_buf_str_printf(&y, err, "_target_: %s.%s\nconfig:\n  _target_: %s.%s\n", module,
                                model_cls, module, config_cls);
        if (!rc)
            rc = lms__nemo_yaml_config(&a, "  ", &y, err);
        if (!rc && has_tokenizer(m))
            rc = lms_buf_str_printf(&y, err, "tokenizer:\n  _target_: nemo.collections.common."
                                    "tokenizers.huggingface.auto_tokenizer.AutoTokenizer\n"
                                    "  pretrained_model_name: nemo_tokenizer\n");
        if (!rc)
            rc = lms_outdir_path(&od, "context/model.yaml", p, sizeof(p), err);
        if (!rc)
            rc = lms_write_file(p, y.data, y.len, err);
        lms_buf_str_release(&y);
    }
    if (!rc)
        rc = lms__nemo_write_sidecars(m, &a, &od, "context", "context/nemo_tokenizer", &r, err);
    rc = lms_outdir_finish(&od, rc, err);
    if (!rc && res)
        *res = r;
    return rc;
}

const struct lms_format lms_format_nemo = {
    .name = "nemo",
    .description = "NeMo 2 checkpoint directory (context/ + weights/ torch_dist)",
    .probe = nemo_probe,
    .read = nemo_read,
    .write = nemo_write,
};
