/* The "megatron" format: Megatron-Bridge / Megatron-LM iteration directories.
 *
 *   <save>/latest_checkpointed_iteration.txt ("0")
 *   <save>/iter_0000000/  torch_dist (unprefixed keys), run_config.yaml, hf_config.json,
 *                         tokenizer/
 *
 * iter_N/hf_config.json is this tool's own artifact; saves without it take the config from
 * run_config.yaml (Megatron-Bridge) or the args in common.pt (Megatron-LM). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/codecs/torch_save.h"
#include "formats/layouts/nemo_impl.h"
#include "formats/layouts/paths.h"
#include "lms/alloc.h"
#include "lms/hf.h"
#include "lms/json.h"
#include "lms/nemo.h"
#include "lms/outdir.h"

/* The iteration directory of a save dir (via latest_checkpointed_iteration.txt), or path itself
 * when it is an iteration directory. */
static enum lms_status iter_dir(const char *path, char *dst, size_t dst_cap,
                                struct lms_error *err)
{
    char p[PATH_MAX];
    if (has(path, "metadata.json")) {
        snprintf(dst, dst_cap, "%s", path);
        return LMS_OK;
    }
    if (!join(p, sizeof(p), path, "latest_checkpointed_iteration.txt") || !is_file(p))
        return lms_error_set(err, LMS_EFORMAT, "'%s': neither metadata.json nor "
                             "latest_checkpointed_iteration.txt", path);
    FILE *f = fopen(p, "r");
    char line[64] = "";
    if (!f || !fgets(line, sizeof(line), f)) {
        if (f)
            fclose(f);
        return lms_error_set(err, LMS_EIO, "reading '%s'", p);
    }
    fclose(f);
    line[strcspn(line, "\r\n ")] = 0;
    if (strcmp(line, "release") == 0) {
        if (!join(dst, dst_cap, path, "release"))
            return lms_error_set(err, LMS_EINVAL, "path too long");
        return LMS_OK;
    }
    char *end;
    errno = 0;
    long long it = strtoll(line, &end, 10);
    if (errno || end == line || *end || it < 0)
        return lms_error_set(err, LMS_EFORMAT, "'%s': iteration '%s' is not a number", p, line);
    if ((size_t)snprintf(dst, dst_cap, "%s/iter_%07lld", path, it) >= dst_cap)
        return lms_error_set(err, LMS_EINVAL, "path too long");
    if (!is_dir(dst))
        return lms_error_set(err, LMS_EFORMAT, "'%s': no directory for iteration %lld", path, it);
    return LMS_OK;
}

static int megatron_probe(const char *path)
{
    if (has(path, "latest_checkpointed_iteration.txt"))
        return 85;
    if (has(path, "metadata.json") && has(path, ".metadata") && !has(path, "context"))
        return 75;
    return 0;
}

/* Flat "  key: value" fields under the top-level "model:" of run_config.yaml; the family is in
 * the provider class name (e.g. Qwen3ModelProvider). */
static enum lms_status run_config_fields(const char *path, json_t **out, char *cls,
                                         size_t cls_cap, struct lms_error *err)
{
    struct lms_storage *s;
    enum lms_status rc = lms_storage_map_file(path, &s, err);
    if (rc)
        return lms_error_set(err, LMS_EFORMAT, "'%s': cannot read", path);
    rc = lms__nemo_yaml_fields(s->base, s->size, "model", out, cls, cls_cap, err);
    lms_storage_release(s);
    return rc ? lms_error_wrap(err, "'%s': ", path) : LMS_OK;
}

static enum lms_status megatron_read(const char *path, struct lms_model *m, struct lms_error *err)
{
    lms_model_init(m);
    char dir[PATH_MAX], p[PATH_MAX];
    enum lms_status rc = iter_dir(path, dir, sizeof(dir), err);
    if (rc)
        return rc;
    json_t *hf = NULL;
    join(p, sizeof(p), dir, "hf_config.json");
    rc = lms__nemo_load_hf_config_if(p, &hf, err);
    if (rc)
        return rc;
    if (!hf) {
        json_t *fields = NULL;
        char cls[128];
        if (join(p, sizeof(p), dir, "run_config.yaml") && is_file(p)) {
            rc = run_config_fields(p, &fields, cls, sizeof(cls), err);
        } else { /* a plain Megatron-LM save: its command-line args in the common state */
            join(p, sizeof(p), dir, "common.pt");
            rc = is_file(p) ? lms__megatron_args_fields(p, &fields, cls, sizeof(cls), err)
                            : LMS_OK;
            if (!rc && !fields)
                return lms_error_set(err, LMS_EUNSUPPORTED,
                                     "'%s': no hf_config.json, run_config.yaml or Megatron-LM "
                                     "args in common.pt to take the model config from", dir);
        }
        if (!rc)
            rc = lms__nemo_class_defaults(fields, cls, p, err);
        if (rc) {
            json_decref(fields);
            return rc;
        }
        struct lms_dcp d;
        rc = lms_dcp_open(dir, &d, err);
        if (!rc && (rc = lms__nemo_hf_from_fields(fields, cls, &d, &hf, err)))
            lms_error_wrap(err, "'%s': ", p); /* name the config file at fault */
        lms_dcp_release(&d);
        json_decref(fields);
        if (rc)
            return rc;
    }
    rc = lms__nemo_finish_read(dir, hf, "megatron", m, err);
    if (!rc && join(p, sizeof(p), dir, "tokenizer"))
        rc = lms__nemo_add_aux_from(m, p, err);
    if (rc)
        lms_model_release(m);
    return rc;
}

/* train_state.pt / latest_train_state.pt: torch.save of a dict of 0-d tensors, the
 * TrainState of iteration 0. variable_seq_lengths is read by some Bridge versions and ignored by
 * the others, so it is written too. */
static enum lms_status write_train_state(const char *path, struct lms_error *err)
{
    static const struct {
        const char *key;
        enum lms_dtype dt;
    } fields[] = {
        {"step", LMS_DTYPE_I64},
        {"consumed_train_samples", LMS_DTYPE_I64},
        {"skipped_train_samples", LMS_DTYPE_I64},
        {"consumed_valid_samples", LMS_DTYPE_I64},
        {"variable_seq_lengths", LMS_DTYPE_BOOL},
        {"floating_point_operations_so_far", LMS_DTYPE_F64},
        {"do_train", LMS_DTYPE_BOOL},
        {"do_valid", LMS_DTYPE_BOOL},
        {"do_test", LMS_DTYPE_BOOL},
    };
    enum { N = sizeof(fields) / sizeof(fields[0]) };
    struct lms_view *views[N] = {0};
    struct lms_storage *zero = NULL;
    struct lms_pkl_writer pw;
    struct lms_zip_writer zw;
    unsigned char scratch[1 << 16];
    lms_pkl_w_init(&pw);
    lms_zip_w_begin(&zw, -1, path, 0, "archive");
    enum lms_status rc = lms_storage_new_host(8, &zero, err); /* every value is 0 / 0.0 / False */
    lms_pkl_w_proto2(&pw);
    lms_pkl_w_op(&pw, LMS_PKL_OP_EMPTY_DICT);
    lms_pkl_w_op(&pw, LMS_PKL_OP_MARK);
    for (int i = 0; i < N && !rc; i++) {
        char key[8];
        snprintf(key, sizeof(key), "%d", i);
        lms_pkl_w_str(&pw, fields[i].key);
        lms_pkl_w_tensor(&pw, fields[i].dt, key, 0, NULL);
        rc = lms_view_new_storage(zero, 0, fields[i].dt, 0, NULL, &views[i], err);
    }
    lms_pkl_w_op(&pw, LMS_PKL_OP_SETITEMS);
    if (!rc)
        rc = lms_pkl_w_finish(&pw, err);
    if (!rc)
        rc = lms_torch_save_write(&zw, pw.data, pw.len, views, N, LMS_DTYPE_COUNT, scratch,
                                  sizeof(scratch), err);
    uint64_t len = 0;
    if (!rc)
        rc = lms_zip_w_finish(&zw, &len, err);
    if (!rc)
        rc = lms_write_file(path, zw.mem, (size_t)len, err);
    lms_free(zw.mem);
    lms_zip_w_release(&zw);
    for (int i = 0; i < N; i++)
        lms_view_release(views[i]);
    lms_storage_release(zero);
    lms_pkl_w_release(&pw);
    return rc;
}

static enum lms_status megatron_write(const struct lms_model *m, const char *path,
                                      const struct lms_write_opts *o,
                                      struct lms_write_result *res, struct lms_error *err)
{
    struct lms_write_result r = {0};
    struct lms_arch a;
    struct lms_outdir od;
    static const char *const dirs[] = {"iter_0000000", "iter_0000000/tokenizer"};
    enum lms_status rc = lms__nemo_begin_dir(m, path, o, dirs, 2, 0, "", true, &a, &od, &r,
                                             err);
    if (rc)
        return rc;
    char p[PATH_MAX];
    {
        /* the model fields Bridge's provider takes */
        struct lms_buf_str y = {0};
        rc = lms_buf_str_printf(&y, err, "model:\n  _target_: megatron.bridge.models.%s\n",
                                lms_arch_desc_of(a.family)->bridge_provider);
        if (!rc)
            rc = lms__nemo_yaml_config(&a, "  ", &y, err);
        /* the parallel layout and checkpoint options the Bridge loader reads */
        if (!rc)
            rc = lms_buf_str_printf(&y, err,
                                    "  tensor_model_parallel_size: 1\n"
                                    "  pipeline_model_parallel_size: 1\n"
                                    "  virtual_pipeline_model_parallel_size: null\n"
                                    "  context_parallel_size: 1\n"
                                    "  expert_model_parallel_size: 1\n"
                                    "  sequence_parallel: false\n"
                                    "checkpoint:\n"
                                    "  _target_: megatron.bridge.training.config.CheckpointConfig\n"
                                    "  ckpt_format: torch_dist\n"
                                    "  fully_parallel_save: true\n"
                                    "  save_optim: false\n"
                                    "  save_rng: false\n"
                                    "  load_optim: false\n"
                                    "  load_rng: false\n");
        if (!rc)
            rc = lms_outdir_path(&od, "iter_0000000/run_config.yaml", p, sizeof(p), err);
        if (!rc)
            rc = lms_write_file(p, y.data, y.len, err);
        lms_buf_str_release(&y);
    }
    if (!rc)
        rc = lms__nemo_write_sidecars(m, &a, &od, "iter_0000000", "iter_0000000/tokenizer", &r,
                                      err);
    if (!rc)
        rc = lms_outdir_path(&od, "iter_0000000/train_state.pt", p, sizeof(p), err);
    if (!rc)
        rc = write_train_state(p, err);
    if (!rc)
        rc = lms_outdir_path(&od, "latest_train_state.pt", p, sizeof(p), err);
    if (!rc)
        rc = write_train_state(p, err);
    if (!rc)
        rc = lms_outdir_path(&od, "latest_checkpointed_iteration.txt", p, sizeof(p), err);
    if (!rc)
        rc = lms_write_file(p, "0", 1, err);
    rc = lms_outdir_finish(&od, rc, err);
    if (!rc && res)
        *res = r;
    return rc;
}

const struct lms_format lms_format_megatron = {
    .name = "megatron",
    .description = "Megatron-Bridge / Megatron-LM iter_N directory (torch_dist)",
    .probe = megatron_probe,
    .read = megatron_read,
    .write = megatron_write,
};
