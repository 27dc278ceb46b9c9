/* Gram statistics for weight reconstruction (include/lms/recon.h): the in-memory sums a
 * calibration pass fills, and the safetensors sidecar they are stored in, written and merged
 * one layer at a time so that neither needs more than one layer's matrices in memory. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lms/alloc.h"
#include "lms/outdir.h"
#include "lms/recon.h"
#include "lms/safetensors.h"

#define GRAM_FORMAT "lmsurgeon-gram"
#define GRAM_VERSION "1"

static const char *const kind_prefix[LMS_GRAM_KINDS] = {"mlp.down_proj", "self_attn.o_proj"};

static void tensor_name(enum lms_gram_kind k, int64_t l, bool gram, char *dst, size_t cap)
{
    snprintf(dst, cap, "layers.%lld.%s.%s", (long long)l, kind_prefix[k],
             gram ? "input_gram" : "input_sum");
}

static void dims_of(const struct lms_arch *a, int64_t dim[LMS_GRAM_KINDS])
{
    dim[LMS_GRAM_DOWN] = a->ffn;
    dim[LMS_GRAM_O] = a->n_heads * a->head_dim;
}

uint64_t lms_gram_bytes(const struct lms_arch *a)
{
    int64_t dim[LMS_GRAM_KINDS];
    dims_of(a, dim);
    uint64_t per_layer = 0;
    for (int k = 0; k < LMS_GRAM_KINDS; k++)
        per_layer += (uint64_t)dim[k] * (uint64_t)(dim[k] + 1);
    return 8 * (uint64_t)a->n_layers * per_layer;
}

enum lms_status lms_gram_alloc(struct lms_gram *g, const struct lms_arch *a,
                               struct lms_error *err)
{
    memset(g, 0, sizeof *g);
    g->n_layers = a->n_layers;
    dims_of(a, g->dim);
    for (int k = 0; k < LMS_GRAM_KINDS; k++) {
        size_t n = (size_t)g->dim[k];
        g->gram[k] = lms_calloc((size_t)g->n_layers * n * n, sizeof(double));
        g->sum[k] = lms_calloc((size_t)g->n_layers * n, sizeof(double));
        if (!g->gram[k] || !g->sum[k]) {
            lms_gram_release(g);
            return lms_error_set(err, LMS_ENOMEM,
                                 "out of memory for the reconstruction statistics (%.2f GB)",
                                 (double)lms_gram_bytes(a) / 1e9);
        }
    }
    return LMS_OK;
}

void lms_gram_release(struct lms_gram *g)
{
    for (int k = 0; k < LMS_GRAM_KINDS; k++) {
        lms_free(g->gram[k]);
        lms_free(g->sum[k]);
    }
    if (g->file) {
        lms_st_close(g->file);
        lms_free(g->file);
    }
    lms_free(g->path);
    memset(g, 0, sizeof *g);
}

void lms_gram_sidecar_path(const char *importance_path, char *dst, size_t cap)
{
    size_t n = strlen(importance_path);
    if (n > 5 && strcmp(importance_path + n - 5, ".json") == 0)
        n -= 5;
    snprintf(dst, cap, "%.*s.gram.safetensors", (int)n, importance_path);
}

/* ---- writing --------------------------------------------------------------------------- */

static json_t *metadata(const struct lms_gram *g)
{
    char num[6][32];
    const int64_t v[6] = {g->n_layers, g->dim[LMS_GRAM_DOWN], g->dim[LMS_GRAM_O], g->n_tokens,
                          g->n_rows, g->row_length};
    for (int i = 0; i < 6; i++)
        snprintf(num[i], sizeof num[i], "%lld", (long long)v[i]);
    return json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s}", "format", GRAM_FORMAT,
                     "version", GRAM_VERSION, "num_layers", num[0], "ffn_hidden_size", num[1],
                     "attention_context", num[2], "tokens", num[3], "rows", num[4],
                     "row_length", num[5], "model_fingerprint", g->model_fp,
                     "data_fingerprint", g->data_fp);
}

/* One layer's tensors of one kind, as a writer fills them. */
typedef enum lms_status (*layer_fill_fn)(void *ctx, enum lms_gram_kind k, int64_t l,
                                         double *gram, double *sum, struct lms_error *err);

/* The header for g's dims, and the file offset of every tensor: off[(l * KINDS + k) * 2 + 0]
 * for the gram, + 1 for the sum. */
static enum lms_status build_header(const struct lms_gram *g, struct lms_buf_str *hdr,
                                    uint64_t *off, struct lms_error *err)
{
    size_t n = (size_t)g->n_layers * LMS_GRAM_KINDS * 2;
    struct lms_st_out *outs = lms_calloc(n, sizeof *outs);
    char (*names)[96] = lms_calloc(n, sizeof *names);
    int64_t(*shapes)[2] = lms_calloc(n, sizeof *shapes);
    json_t *meta = metadata(g);
    enum lms_status rc = !outs || !names || !shapes || !meta
                             ? lms_error_set(err, LMS_ENOMEM, "out of memory")
                             : LMS_OK;
    for (size_t i = 0; !rc && i < n; i++) {
        int64_t l = (int64_t)(i / (LMS_GRAM_KINDS * 2));
        enum lms_gram_kind k = (enum lms_gram_kind)(i / 2 % LMS_GRAM_KINDS);
        bool is_gram = i % 2 == 0;
        tensor_name(k, l, is_gram, names[i], sizeof names[i]);
        shapes[i][0] = shapes[i][1] = g->dim[k];
        outs[i] = (struct lms_st_out){.name = names[i], .dtype = LMS_DTYPE_F64,
                                      .ndim = is_gram ? 2 : 1, .shape = shapes[i], .tag = i};
    }
    if (!rc)
        rc = lms_st_header_build(outs, n, meta, hdr, err);
    for (size_t i = 0; !rc && i < n; i++)
        off[outs[i].tag] = hdr->len + outs[i].begin;
    json_decref(meta);
    lms_free(outs);
    lms_free(names);
    lms_free(shapes);
    return rc;
}

/* Writes a sidecar of g's dims whose layers fill() provides one at a time. */
static enum lms_status write_sidecar(const struct lms_gram *g, layer_fill_fn fill, void *ctx,
                                     const char *path, bool force, struct lms_error *err)
{
    size_t n_off = (size_t)g->n_layers * LMS_GRAM_KINDS * 2;
    uint64_t *off = lms_calloc(n_off, sizeof *off);
    int64_t big = g->dim[0] > g->dim[1] ? g->dim[0] : g->dim[1];
    double *gram = lms_malloc((size_t)(big * big) * sizeof(double));
    double *sum = lms_malloc((size_t)big * sizeof(double));
    struct lms_buf_str hdr = {0};
    enum lms_status rc = !off || !gram || !sum
                             ? lms_error_set(err, LMS_ENOMEM, "out of memory")
                             : build_header(g, &hdr, off, err);
    struct lms_outfile of;
    if (!rc)
        rc = lms_outfile_begin(path, force, &of, err);
    if (rc) {
        lms_free(off), lms_free(gram), lms_free(sum), lms_buf_str_release(&hdr);
        return rc;
    }
    rc = lms_write_all(of.fd, hdr.data, hdr.len, of.tmp, err);
    for (int64_t l = 0; !rc && l < g->n_layers; l++)
        for (int k = 0; !rc && k < LMS_GRAM_KINDS; k++) {
            size_t i = (size_t)(l * LMS_GRAM_KINDS + k) * 2;
            size_t d = (size_t)g->dim[k];
            rc = fill(ctx, (enum lms_gram_kind)k, l, gram, sum, err);
            if (!rc)
                rc = lms_pwrite_all(of.fd, gram, d * d * sizeof(double), off[i], of.tmp, err);
            if (!rc)
                rc = lms_pwrite_all(of.fd, sum, d * sizeof(double), off[i + 1], of.tmp, err);
        }
    if (rc)
        lms_outfile_abort(&of);
    else
        rc = lms_outfile_commit(&of, err);
    lms_free(off), lms_free(gram), lms_free(sum), lms_buf_str_release(&hdr);
    return rc;
}

static enum lms_status fill_from_memory(void *ctx, enum lms_gram_kind k, int64_t l,
                                        double *gram, double *sum, struct lms_error *err)
{
    return lms_gram_layer(ctx, k, l, gram, sum, err);
}

enum lms_status lms_gram_write(const struct lms_gram *g, const char *path, bool force,
                               struct lms_error *err)
{
    enum lms_status rc = write_sidecar(g, fill_from_memory, (void *)g, path, force, err);
    return rc ? lms_error_wrap(err, "writing '%s': ", path) : LMS_OK;
}

/* ---- reading --------------------------------------------------------------------------- */

static enum lms_status meta_int(const json_t *meta, const char *key, int64_t lo, int64_t *out,
                                struct lms_error *err)
{
    const char *s = json_string_value(json_object_get(meta, key));
    char *end = NULL;
    long long v = s ? strtoll(s, &end, 10) : 0;
    if (!s || !*s || *end || v < lo || v > (INT64_C(1) << 40))
        return lms_error_set(err, LMS_EFORMAT, "metadata '%s' is missing or not an integer >= %lld",
                             key, (long long)lo);
    *out = v;
    return LMS_OK;
}

static enum lms_status meta_fp(const json_t *meta, const char *key, char *dst,
                               struct lms_error *err)
{
    const char *s = json_string_value(json_object_get(meta, key));
    if (!s || strlen(s) != LMS_HASH64_HEX - 1)
        return lms_error_set(err, LMS_EFORMAT, "metadata '%s' is missing or not 16 hex digits",
                             key);
    memcpy(dst, s, LMS_HASH64_HEX);
    return LMS_OK;
}

static const struct lms_st_entry *find_entry(const struct lms_st_file *f, const char *name,
                                             size_t *index)
{
    for (size_t i = 0; i < f->hdr.n_entries; i++)
        if (strcmp(f->hdr.entries[i].name, name) == 0) {
            *index = i;
            return &f->hdr.entries[i];
        }
    return NULL;
}

/* Every tensor the dims call for is there, F64, of its shape. */
static enum lms_status check_tensors(const struct lms_gram *g, struct lms_error *err)
{
    for (int64_t l = 0; l < g->n_layers; l++)
        for (int k = 0; k < LMS_GRAM_KINDS; k++)
            for (int is_gram = 0; is_gram < 2; is_gram++) {
                char name[96];
                size_t i;
                tensor_name((enum lms_gram_kind)k, l, is_gram, name, sizeof name);
                const struct lms_st_entry *e = find_entry(g->file, name, &i);
                int64_t d = g->dim[k];
                if (!e)
                    return lms_error_set(err, LMS_EFORMAT, "tensor '%s' is missing", name);
                if (e->dtype != LMS_DTYPE_F64 || e->ndim != 1 + is_gram || e->shape[0] != d ||
                    (is_gram && e->shape[1] != d))
                    return lms_error_set(err, LMS_EFORMAT,
                                         "tensor '%s' is not F64 of shape [%lld%s]", name,
                                         (long long)d, is_gram ? ", same" : "");
            }
    return LMS_OK;
}

enum lms_status lms_gram_open(const char *path, struct lms_gram *g, struct lms_error *err)
{
    memset(g, 0, sizeof *g);
    g->file = lms_calloc(1, sizeof *g->file);
    g->path = lms_strdup(path);
    if (!g->file || !g->path) {
        lms_gram_release(g);
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    enum lms_status rc = lms_st_open(path, g->file, err);
    if (rc) {
        lms_free(g->file);
        g->file = NULL;
        lms_gram_release(g);
        return rc;
    }
    const json_t *meta = g->file->hdr.metadata;
    const char *fmt = json_string_value(json_object_get(meta, "format"));
    const char *ver = json_string_value(json_object_get(meta, "version"));
    if (!fmt || strcmp(fmt, GRAM_FORMAT) != 0)
        rc = lms_error_set(err, LMS_EFORMAT, "metadata 'format' is not \"" GRAM_FORMAT "\"");
    else if (!ver || strcmp(ver, GRAM_VERSION) != 0)
        rc = lms_error_set(err, LMS_EUNSUPPORTED, "unsupported metadata 'version' (expected "
                           "\"" GRAM_VERSION "\")");
    if (!rc)
        rc = meta_int(meta, "num_layers", 1, &g->n_layers, err);
    if (!rc)
        rc = meta_int(meta, "ffn_hidden_size", 1, &g->dim[LMS_GRAM_DOWN], err);
    if (!rc)
        rc = meta_int(meta, "attention_context", 1, &g->dim[LMS_GRAM_O], err);
    if (!rc)
        rc = meta_int(meta, "tokens", 1, &g->n_tokens, err);
    if (!rc)
        rc = meta_int(meta, "rows", 0, &g->n_rows, err);
    if (!rc)
        rc = meta_int(meta, "row_length", 0, &g->row_length, err);
    if (!rc)
        rc = meta_fp(meta, "model_fingerprint", g->model_fp, err);
    if (!rc)
        rc = meta_fp(meta, "data_fingerprint", g->data_fp, err);
    if (!rc)
        rc = check_tensors(g, err);
    if (rc) {
        lms_error_wrap(err, "reading '%s': ", path);
        lms_gram_release(g);
    }
    return rc;
}

enum lms_status lms_gram_check(const struct lms_gram *g, const struct lms_arch *a,
                               const char *model_fp, struct lms_error *err)
{
    int64_t dim[LMS_GRAM_KINDS];
    dims_of(a, dim);
    const char *name = g->path ? g->path : "the reconstruction statistics";
    if (g->n_layers != a->n_layers || g->dim[0] != dim[0] || g->dim[1] != dim[1])
        return lms_error_set(err, LMS_ESHAPE,
                             "'%s' holds statistics of a model of L=%lld F=%lld n_h*d=%lld, not "
                             "this one (L=%lld F=%lld n_h*d=%lld)",
                             name, (long long)g->n_layers, (long long)g->dim[0],
                             (long long)g->dim[1], (long long)a->n_layers, (long long)dim[0],
                             (long long)dim[1]);
    if (model_fp && strcmp(g->model_fp, model_fp) != 0)
        return lms_error_set(err, LMS_EFORMAT,
                             "'%s' was gathered on another model (fingerprint %s, this model's "
                             "is %s)",
                             name, g->model_fp, model_fp);
    return LMS_OK;
}

static enum lms_status read_tensor(const struct lms_gram *g, const char *name, int64_t n,
                                   double *dst, struct lms_error *err)
{
    size_t i;
    if (!find_entry(g->file, name, &i))
        return lms_error_set(err, LMS_EFORMAT, "reading '%s': tensor '%s' is missing", g->path,
                             name);
    struct lms_view *v;
    enum lms_status rc = lms_st_entry_view(g->file, i, &v, err);
    if (!rc) {
        rc = lms_view_read(v, 0, n, dst, err);
        lms_view_drop_pages(v);
        lms_view_release(v);
    }
    for (int64_t j = 0; !rc && j < n; j++)
        if (!isfinite(dst[j]))
            rc = lms_error_set(err, LMS_EFORMAT,
                               "reading '%s': tensor '%s' holds a non-finite value at %lld",
                               g->path, name, (long long)j);
    return rc;
}

enum lms_status lms_gram_layer(const struct lms_gram *g, enum lms_gram_kind k, int64_t l,
                               double *gram, double *sum, struct lms_error *err)
{
    int64_t d = g->dim[k];
    if (l < 0 || l >= g->n_layers)
        return lms_error_set(err, LMS_EINVAL, "layer %lld is outside the statistics",
                             (long long)l);
    if (!g->file) {
        memcpy(gram, g->gram[k] + l * d * d, (size_t)(d * d) * sizeof(double));
        memcpy(sum, g->sum[k] + l * d, (size_t)d * sizeof(double));
        return LMS_OK;
    }
    char name[96];
    tensor_name(k, l, true, name, sizeof name);
    enum lms_status rc = read_tensor(g, name, d * d, gram, err);
    tensor_name(k, l, false, name, sizeof name);
    return rc ? rc : read_tensor(g, name, d, sum, err);
}

/* ---- merging --------------------------------------------------------------------------- */

struct merge {
    struct lms_gram *parts;
    int n;
    double *tmp_gram, *tmp_sum;
};

static enum lms_status fill_sum_of_parts(void *ctx, enum lms_gram_kind k, int64_t l,
                                         double *gram, double *sum, struct lms_error *err)
{
    struct merge *m = ctx;
    int64_t d = m->parts[0].dim[k];
    enum lms_status rc = lms_gram_layer(&m->parts[0], k, l, gram, sum, err);
    for (int p = 1; !rc && p < m->n; p++) {
        rc = lms_gram_layer(&m->parts[p], k, l, m->tmp_gram, m->tmp_sum, err);
        for (int64_t i = 0; !rc && i < d * d; i++)
            gram[i] += m->tmp_gram[i];
        for (int64_t i = 0; !rc && i < d; i++)
            sum[i] += m->tmp_sum[i];
    }
    return rc;
}

/* Parts of one calibration set: same dims, model, data and row length. */
static enum lms_status check_parts(const struct lms_gram *a, const struct lms_gram *b,
                                   struct lms_error *err)
{
    const char *what = a->n_layers != b->n_layers || a->dim[0] != b->dim[0] ||
                               a->dim[1] != b->dim[1]
                           ? "dimensions"
                       : strcmp(a->model_fp, b->model_fp) ? "model_fingerprint"
                       : strcmp(a->data_fp, b->data_fp)   ? "data_fingerprint"
                       : a->row_length != b->row_length   ? "row_length"
                                                          : NULL;
    if (!what)
        return LMS_OK;
    return lms_error_set(err, LMS_ESHAPE, "'%s' and '%s' differ in %s: not parts of one "
                         "calibration set", a->path, b->path, what);
}

enum lms_status lms_gram_merge_files(const char *const *paths, int n, const char *out,
                                     bool force, struct lms_error *err)
{
    struct merge m = {.parts = lms_calloc((size_t)(n > 0 ? n : 1), sizeof *m.parts), .n = n};
    if (!m.parts)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    enum lms_status rc = n < 1 ? lms_error_set(err, LMS_EINVAL, "nothing to merge") : LMS_OK;
    int opened = 0;
    for (; !rc && opened < n; opened++) {
        rc = lms_gram_open(paths[opened], &m.parts[opened], err);
        if (rc)
            break;
        if (opened)
            rc = check_parts(&m.parts[0], &m.parts[opened], err);
    }
    struct lms_gram total = {0};
    if (!rc) {
        total = m.parts[0];
        total.file = NULL, total.path = NULL;
        for (int p = 1; p < n; p++) {
            total.n_tokens += m.parts[p].n_tokens;
            total.n_rows += m.parts[p].n_rows;
        }
        int64_t big = total.dim[0] > total.dim[1] ? total.dim[0] : total.dim[1];
        m.tmp_gram = lms_malloc((size_t)(big * big) * sizeof(double));
        m.tmp_sum = lms_malloc((size_t)big * sizeof(double));
        rc = !m.tmp_gram || !m.tmp_sum ? lms_error_set(err, LMS_ENOMEM, "out of memory")
                                       : write_sidecar(&total, fill_sum_of_parts, &m, out, force,
                                                       err);
        if (rc)
            lms_error_wrap(err, "writing '%s': ", out);
    }
    for (int p = 0; p < n; p++)
        lms_gram_release(&m.parts[p]);
    lms_free(m.parts);
    lms_free(m.tmp_gram);
    lms_free(m.tmp_sum);
    return rc;
}
