/* The importance file: JSON read/validate/write (include/lms/importance.h). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "importance/metric.h"
#include "lms/alloc.h"
#include "lms/importance.h"
#include "lms/json.h"
#include "lms/outdir.h"

#define IMPORTANCE_MAX_BYTES (1u << 30)

void lms_importance_init(struct lms_importance *imp, const struct lms_arch *a)
{
    memset(imp, 0, sizeof(*imp));
    if (a) {
        imp->n_layers = a->n_layers;
        imp->hidden = a->hidden;
        imp->ffn = a->ffn;
        imp->n_heads = a->n_heads;
        imp->n_groups = a->n_groups;
    }
}

void lms_importance_release(struct lms_importance *imp)
{
    lms_free(imp->layers);
    lms_free(imp->hidden_s);
    lms_free(imp->ffn_s);
    lms_free(imp->heads);
    lms_free(imp->groups);
    lms_free(imp->blocks);
    lms_free(imp->raw.hidden_sq);
    lms_free(imp->raw.ffn_sq);
    lms_free(imp->raw.head_sq);
    for (size_t i = 0; i < lms__n_raw_sums; i++)
        lms_free(*lms__raw_sum_ptr(&imp->raw, &lms__raw_sums[i]));
    lms_free(imp->method);
    lms_free(imp->gram_file);
    if (imp->source)
        json_decref(imp->source);
    memset(imp, 0, sizeof(*imp));
}

unsigned lms_importance_axes(const struct lms_importance *imp)
{
    return (imp->layers ? LMS_AXIS_LAYERS : 0) | (imp->hidden_s ? LMS_AXIS_HIDDEN : 0) |
           (imp->ffn_s ? LMS_AXIS_FFN : 0) | (imp->heads ? LMS_AXIS_HEADS : 0) |
           (imp->groups ? LMS_AXIS_GROUPS : 0);
}

static enum lms_status read_dim(const json_t *model, const char *key, int64_t *out,
                                struct lms_error *err)
{
    const json_t *v = json_object_get(model, key);
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > (1 << 26))
        return lms_error_set(err, LMS_EFORMAT, "'model.%s' is missing or not a positive integer",
                             key);
    *out = json_integer_value(v);
    return LMS_OK;
}

/* Reads n finite numbers from a JSON array into dst. */
static enum lms_status read_vec(const json_t *a, int64_t n, double *dst, const char *what,
                                struct lms_error *err)
{
    if (!json_is_array(a) || (int64_t)json_array_size(a) != n)
        return lms_error_set(err, LMS_EFORMAT, "'%s' must be an array of %lld numbers", what,
                             (long long)n);
    for (int64_t i = 0; i < n; i++) {
        const json_t *v = json_array_get(a, (size_t)i);
        if (!json_is_number(v) || !isfinite(json_number_value(v)))
            return lms_error_set(err, LMS_EFORMAT, "'%s' entry %lld is not a finite number", what,
                                 (long long)i);
        dst[i] = json_number_value(v);
    }
    return LMS_OK;
}

/* Reads an axis: one vector (rows == 0) or rows vectors of n. Absent key: *dst stays NULL. */
static enum lms_status read_axis(const json_t *root, const char *key, int64_t rows, int64_t n,
                                 double **dst, struct lms_error *err)
{
    const json_t *a = json_object_get(root, key);
    if (!a || json_is_null(a))
        return LMS_OK;
    int64_t total = (rows ? rows : 1) * n;
    *dst = lms_malloc((size_t)total * sizeof(double));
    if (!*dst)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    if (!rows)
        return read_vec(a, n, *dst, key, err);
    if (!json_is_array(a) || (int64_t)json_array_size(a) != rows)
        return lms_error_set(err, LMS_EFORMAT, "'%s' must hold one array per layer (%lld)", key,
                             (long long)rows);
    for (int64_t l = 0; l < rows; l++) {
        char what[64];
        snprintf(what, sizeof(what), "%s[%lld]", key, (long long)l);
        enum lms_status rc = read_vec(json_array_get(a, (size_t)l), n, *dst + l * n, what, err);
        if (rc)
            return rc;
    }
    return LMS_OK;
}

/* "layer_metric", "block_size" and "blocks" (version 2). */
static enum lms_status read_layer_metric(const json_t *root, struct lms_importance *imp,
                                         struct lms_error *err)
{
    const json_t *m = json_object_get(root, "layer_metric");
    const json_t *n = json_object_get(root, "block_size");
    if (m && !json_is_null(m)) {
        if (!json_is_string(m))
            return lms_error_set(err, LMS_EFORMAT, "'layer_metric' is not a string");
        if (lms_layer_metric_parse(json_string_value(m), &imp->layer_metric, NULL))
            return lms_error_set(err, LMS_EFORMAT,
                                 "'layer_metric' is not bi, block-bi, ppl or contiguous");
    }
    if (n && !json_is_null(n)) {
        if (!json_is_integer(n) || json_integer_value(n) < 1 ||
            json_integer_value(n) >= imp->n_layers)
            return lms_error_set(err, LMS_EFORMAT,
                                 "'block_size' must be an integer from 1 to %lld",
                                 (long long)(imp->n_layers - 1));
        imp->block_size = json_integer_value(n);
    }
    bool block_metric = lms_layer_metric_is_block(imp->layer_metric);
    if (block_metric != (imp->block_size > 0))
        return lms_error_set(err, LMS_EFORMAT, "'block_size' %s with layer metric '%s'",
                             block_metric ? "is required" : "does not belong",
                             lms_layer_metric_name(imp->layer_metric));
    if (!imp->block_size) {
        if (json_object_get(root, "blocks"))
            return lms_error_set(err, LMS_EFORMAT, "'blocks' without 'block_size'");
        return LMS_OK;
    }
    return read_axis(root, "blocks", 0, imp->n_layers - imp->block_size + 1, &imp->blocks, err);
}

static enum lms_status read_count(const json_t *o, const char *key, int64_t *out,
                                  struct lms_error *err)
{
    const json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return lms_error_set(err, LMS_EFORMAT, "'raw.%s' is missing or not a count", key);
    *out = json_integer_value(v);
    return LMS_OK;
}

/* Sums of squares must be >= 0 (their square roots are the scores). */
static enum lms_status check_nonneg(const double *v, int64_t n, const char *key,
                                    struct lms_error *err)
{
    for (int64_t i = 0; v && i < n; i++)
        if (v[i] < 0)
            return lms_error_set(err, LMS_EFORMAT, "'raw.%s' entry %lld is negative", key,
                                 (long long)i);
    return LMS_OK;
}

/* The additive calibration sums (version 2, optional). */
static enum lms_status read_raw(const json_t *root, struct lms_importance *imp,
                                struct lms_error *err)
{
    const json_t *r = json_object_get(root, "raw");
    if (!r || json_is_null(r))
        return LMS_OK;
    if (!json_is_object(r))
        return lms_error_set(err, LMS_EFORMAT, "'raw' is not an object");
    struct lms_importance_raw *x = &imp->raw;
    int64_t L = imp->n_layers, n_starts = imp->block_size ? L - imp->block_size + 1 : 0;
    x->present = true;
    enum lms_status rc = read_count(r, "rows", &x->n_rows, err);
    if (!rc)
        rc = read_count(r, "row_length", &x->seq_len, err);
    if (!rc)
        rc = read_count(r, "cos_rows", &x->n_cos_rows, err);
    if (!rc)
        rc = read_count(r, "loss_tokens", &x->n_loss_tokens, err);
    const json_t *bl = json_object_get(r, "base_loss");
    if (!rc && (!json_is_number(bl) || !isfinite(json_number_value(bl))))
        rc = lms_error_set(err, LMS_EFORMAT, "'raw.base_loss' is missing or not a number");
    if (!rc)
        x->base_loss = json_number_value(bl);
    if (!rc)
        rc = read_axis(r, "hidden_sq", 2 * L, imp->hidden, &x->hidden_sq, err);
    if (!rc)
        rc = read_axis(r, "ffn_sq", L, imp->ffn, &x->ffn_sq, err);
    if (!rc)
        rc = read_axis(r, "head_sq", L, imp->n_heads, &x->head_sq, err);
    /* the depth sums: per-layer ones first, then the per-block ones (importance/metric.c) */
    bool cos = false, loss = false, stray_block = false;
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; !rc && i < lms__n_raw_sums; i++) {
            const struct lms__raw_sum *d = &lms__raw_sums[i];
            if (d->per_block != (pass == 1))
                continue;
            if (d->per_block && !n_starts) {
                stray_block |= json_object_get(r, d->key) != NULL;
                continue;
            }
            rc = read_axis(r, d->key, 0, lms__raw_sum_len(imp, d), lms__raw_sum_ptr(x, d), err);
            if (lms__raw_sum_get(x, d))
                *(d->loss ? &loss : &cos) = true;
        }
    if (!rc && stray_block)
        rc = lms_error_set(err, LMS_EFORMAT, "'raw' has block sums without 'block_size'");
    if (!rc)
        rc = check_nonneg(x->hidden_sq, 2 * L * imp->hidden, "hidden_sq", err);
    if (!rc)
        rc = check_nonneg(x->ffn_sq, L * imp->ffn, "ffn_sq", err);
    if (!rc)
        rc = check_nonneg(x->head_sq, L * imp->n_heads, "head_sq", err);
    if (!rc && cos && x->n_cos_rows == 0)
        rc = lms_error_set(err, LMS_EFORMAT, "'raw.cos_rows' is 0 but cosine sums are present");
    if (!rc && loss && x->n_loss_tokens == 0)
        rc = lms_error_set(err, LMS_EFORMAT,
                           "'raw.loss_tokens' is 0 but loss sums are present");
    if (!rc && (x->n_rows == 0 || x->seq_len < 2))
        rc = lms_error_set(err, LMS_EFORMAT, "'raw.rows' or 'raw.row_length' is too small");
    if (!rc && imp->n_heads % imp->n_groups)
        rc = lms_error_set(err, LMS_EFORMAT, "'model.num_attention_heads' is not a multiple of "
                           "'model.num_query_groups'");
    return rc;
}

/* "reconstruction": {"statistics": NAME}: a plain file name (no folder: the sidecar lives beside
 * the importance file, so a file that names another place is refused rather than followed). */
static enum lms_status read_gram_file(const json_t *root, struct lms_importance *imp,
                                      struct lms_error *err)
{
    const json_t *r = json_object_get(root, "reconstruction");
    if (!r)
        return LMS_OK;
    const char *name = json_string_value(json_object_get(r, "statistics"));
    if (!json_is_object(r) || !name || !*name || strchr(name, '/') || !strcmp(name, ".") ||
        !strcmp(name, ".."))
        return lms_error_set(err, LMS_EFORMAT, "'reconstruction.statistics' is not a file name");
    imp->gram_file = lms_strdup(name);
    return imp->gram_file ? LMS_OK : lms_error_set(err, LMS_ENOMEM, "out of memory");
}

bool lms_importance_gram_path(const struct lms_importance *imp, const char *path, char *dst,
                              size_t cap)
{
    if (!imp->gram_file)
        return false;
    const char *slash = strrchr(path, '/');
    int dir = slash ? (int)(slash - path) + 1 : 0;
    int n = snprintf(dst, cap, "%.*s%s", dir, path, imp->gram_file);
    return n > 0 && (size_t)n < cap;
}

enum lms_status lms_importance_read(const char *path, struct lms_importance *imp,
                                    struct lms_error *err)
{
    lms_importance_init(imp, NULL);
    json_t *root;
    enum lms_status rc = lms_json_load_file(path, IMPORTANCE_MAX_BYTES, &root, err);
    if (rc)
        return rc;
    const json_t *fmt = json_object_get(root, "format");
    const json_t *ver = json_object_get(root, "version");
    const json_t *model = json_object_get(root, "model");
    if (!json_is_object(root) || !json_is_string(fmt) ||
        strcmp(json_string_value(fmt), "lmsurgeon-importance") != 0) {
        rc = lms_error_set(err, LMS_EFORMAT, "'format' is not \"lmsurgeon-importance\"");
    } else if (!json_is_integer(ver) || json_integer_value(ver) < 1 ||
               json_integer_value(ver) > 2) {
        rc = lms_error_set(err, LMS_EUNSUPPORTED, "unsupported 'version' (expected 1 or 2)");
    } else if (!json_is_object(model)) {
        rc = lms_error_set(err, LMS_EFORMAT, "'model' is missing or not an object");
    }
    if (!rc)
        rc = read_dim(model, "num_layers", &imp->n_layers, err);
    if (!rc)
        rc = read_dim(model, "hidden_size", &imp->hidden, err);
    if (!rc)
        rc = read_dim(model, "ffn_hidden_size", &imp->ffn, err);
    if (!rc)
        rc = read_dim(model, "num_attention_heads", &imp->n_heads, err);
    if (!rc)
        rc = read_dim(model, "num_query_groups", &imp->n_groups, err);
    if (!rc)
        rc = read_axis(root, "layers", 0, imp->n_layers, &imp->layers, err);
    if (!rc)
        rc = read_axis(root, "hidden", 0, imp->hidden, &imp->hidden_s, err);
    if (!rc)
        rc = read_axis(root, "ffn", imp->n_layers, imp->ffn, &imp->ffn_s, err);
    if (!rc)
        rc = read_axis(root, "heads", imp->n_layers, imp->n_heads, &imp->heads, err);
    if (!rc)
        rc = read_axis(root, "query_groups", imp->n_layers, imp->n_groups, &imp->groups, err);
    if (!rc)
        rc = read_layer_metric(root, imp, err);
    if (!rc)
        rc = read_raw(root, imp, err);
    const json_t *method = json_object_get(root, "method");
    if (!rc) {
        imp->method = lms_strdup(json_is_string(method) ? json_string_value(method) : "unknown");
        if (!imp->method)
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    const json_t *source = json_object_get(root, "source");
    if (!rc && source)
        imp->source = json_incref((json_t *)source);
    if (!rc)
        rc = read_gram_file(root, imp, err);
    json_decref(root);
    if (rc) {
        lms_error_wrap(err, "reading '%s': ", path);
        lms_importance_release(imp);
    }
    return rc;
}

enum lms_status lms_importance_check(const struct lms_importance *imp, const struct lms_arch *a,
                                     const char *path, struct lms_error *err)
{
    if (imp->n_layers != a->n_layers || imp->hidden != a->hidden || imp->ffn != a->ffn ||
        imp->n_heads != a->n_heads || imp->n_groups != a->n_groups)
        return lms_error_set(err, LMS_ESHAPE,
                             "'%s' scores a model of L=%lld H=%lld F=%lld n_h=%lld n_g=%lld, not "
                             "this one (L=%lld H=%lld F=%lld n_h=%lld n_g=%lld)",
                             path, (long long)imp->n_layers, (long long)imp->hidden,
                             (long long)imp->ffn, (long long)imp->n_heads,
                             (long long)imp->n_groups, (long long)a->n_layers,
                             (long long)a->hidden, (long long)a->ffn, (long long)a->n_heads,
                             (long long)a->n_groups);
    return LMS_OK;
}

/* obj[key] = value (stolen; NULL: out of memory). */
static enum lms_status put(json_t *obj, const char *key, json_t *value, struct lms_error *err)
{
    if (!value || json_object_set_new(obj, key, value))
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    return LMS_OK;
}

/* A JSON array of the n numbers at v. An entry that is not finite is an error naming what and
 * the entry: json_real refuses NaN and infinity, and its NULL must never become a dropped entry
 * (a short array in a file that reads back wrong or not at all). OUT: *out. */
static enum lms_status vec_json(const double *v, int64_t n, const char *what, json_t **out,
                                struct lms_error *err)
{
    *out = NULL;
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return lms_error_set(err, LMS_EFORMAT, "'%s' entry %lld is not finite (%g)", what,
                                 (long long)i, v[i]);
    json_t *a = json_array();
    for (int64_t i = 0; a && i < n; i++)
        if (json_array_append_new(a, json_real(v[i]))) {
            json_decref(a);
            a = NULL;
        }
    if (!a)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    *out = a;
    return LMS_OK;
}

/* obj[key] = the n numbers at v (vec_json). */
static enum lms_status put_vec(json_t *obj, const char *key, const double *v, int64_t n,
                               const char *what, struct lms_error *err)
{
    json_t *a;
    enum lms_status rc = vec_json(v, n, what, &a, err);
    return rc ? rc : put(obj, key, a, err);
}

/* obj[key] = rows arrays of n numbers (row l named "what[l]" in errors). */
static enum lms_status put_mat(json_t *obj, const char *key, const double *v, int64_t rows,
                               int64_t n, const char *what, struct lms_error *err)
{
    json_t *a = json_array();
    enum lms_status rc = a ? LMS_OK : lms_error_set(err, LMS_ENOMEM, "out of memory");
    for (int64_t l = 0; !rc && l < rows; l++) {
        char row[64];
        snprintf(row, sizeof row, "%s[%lld]", what, (long long)l);
        json_t *r;
        rc = vec_json(v + l * n, n, row, &r, err);
        if (!rc && json_array_append_new(a, r))
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    if (rc) {
        json_decref(a);
        return rc;
    }
    return put(obj, key, a, err);
}

/* root["raw"] = imp's additive sums. */
static enum lms_status put_raw(json_t *root, const struct lms_importance *imp,
                               struct lms_error *err)
{
    const struct lms_importance_raw *x = &imp->raw;
    int64_t L = imp->n_layers;
    if (!isfinite(x->base_loss))
        return lms_error_set(err, LMS_EFORMAT, "'raw.base_loss' is not finite (%g)",
                             x->base_loss);
    json_t *r = json_pack("{s:I,s:I,s:I,s:I,s:f}", "rows", (json_int_t)x->n_rows, "row_length",
                          (json_int_t)x->seq_len, "cos_rows", (json_int_t)x->n_cos_rows,
                          "loss_tokens", (json_int_t)x->n_loss_tokens, "base_loss", x->base_loss);
    enum lms_status rc = r ? LMS_OK : lms_error_set(err, LMS_ENOMEM, "out of memory");
    if (!rc && x->hidden_sq)
        rc = put_mat(r, "hidden_sq", x->hidden_sq, 2 * L, imp->hidden, "raw.hidden_sq", err);
    if (!rc && x->ffn_sq)
        rc = put_mat(r, "ffn_sq", x->ffn_sq, L, imp->ffn, "raw.ffn_sq", err);
    if (!rc && x->head_sq)
        rc = put_mat(r, "head_sq", x->head_sq, L, imp->n_heads, "raw.head_sq", err);
    for (size_t i = 0; !rc && i < lms__n_raw_sums; i++) {
        const struct lms__raw_sum *d = &lms__raw_sums[i];
        char label[32];
        snprintf(label, sizeof label, "raw.%s", d->key);
        if (lms__raw_sum_get(x, d))
            rc = put_vec(r, d->key, lms__raw_sum_get(x, d), lms__raw_sum_len(imp, d), label, err);
    }
    if (rc) {
        json_decref(r);
        return rc;
    }
    return put(root, "raw", r, err);
}

/* The whole file as JSON; every number checked finite. OUT: *out. */
static enum lms_status importance_json(const struct lms_importance *imp, json_t **out,
                                       struct lms_error *err)
{
    *out = NULL;
    json_t *root = json_pack(
        "{s:s,s:i,s:s,s:{s:I,s:I,s:I,s:I,s:I}}", "format", "lmsurgeon-importance", "version", 2,
        "method", imp->method ? imp->method : "unknown", "model", "num_layers",
        (json_int_t)imp->n_layers, "hidden_size", (json_int_t)imp->hidden, "ffn_hidden_size",
        (json_int_t)imp->ffn, "num_attention_heads", (json_int_t)imp->n_heads, "num_query_groups",
        (json_int_t)imp->n_groups);
    if (!root)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    enum lms_status rc = LMS_OK;
    if (imp->source && json_object_set(root, "source", imp->source))
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
    int64_t L = imp->n_layers, n_starts = imp->block_size ? L - imp->block_size + 1 : 0;
    if (!rc && imp->layer_metric != LMS_LAYER_METRIC_NONE)
        rc = put(root, "layer_metric", json_string(lms_layer_metric_name(imp->layer_metric)),
                 err);
    if (!rc && imp->block_size)
        rc = put(root, "block_size", json_integer((json_int_t)imp->block_size), err);
    if (!rc && imp->layers)
        rc = put_vec(root, "layers", imp->layers, L, "layers", err);
    if (!rc && imp->blocks)
        rc = put_vec(root, "blocks", imp->blocks, n_starts, "blocks", err);
    if (!rc && imp->hidden_s)
        rc = put_vec(root, "hidden", imp->hidden_s, imp->hidden, "hidden", err);
    if (!rc && imp->ffn_s)
        rc = put_mat(root, "ffn", imp->ffn_s, L, imp->ffn, "ffn", err);
    if (!rc && imp->heads)
        rc = put_mat(root, "heads", imp->heads, L, imp->n_heads, "heads", err);
    if (!rc && imp->groups)
        rc = put_mat(root, "query_groups", imp->groups, L, imp->n_groups, "query_groups", err);
    if (!rc && imp->raw.present)
        rc = put_raw(root, imp, err);
    if (!rc && imp->gram_file)
        rc = put(root, "reconstruction", json_pack("{s:s}", "statistics", imp->gram_file), err);
    if (rc)
        json_decref(root);
    else
        *out = root;
    return rc;
}

enum lms_status lms_importance_write(const struct lms_importance *imp, const char *path,
                                     bool force, struct lms_error *err)
{
    json_t *root;
    enum lms_status rc = importance_json(imp, &root, err);
    if (rc)
        return lms_error_wrap(err, "writing '%s': ", path);
    struct lms_buf_str text = {0};
    rc = lms_json_dump(root, LMS_JSON_COMPACT, &text, err);
    json_decref(root);
    if (!rc)
        rc = lms_buf_str_append(&text, "\n", 1, err);
    struct lms_outfile of;
    if (!rc && !(rc = lms_outfile_begin(path, force, &of, err))) {
        if ((rc = lms_write_all(of.fd, text.data, text.len, of.tmp, err)))
            lms_outfile_abort(&of);
        else
            rc = lms_outfile_commit(&of, err);
    }
    lms_buf_str_release(&text);
    return rc;
}
