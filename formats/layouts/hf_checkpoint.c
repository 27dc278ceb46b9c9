/* Hugging Face checkpoint directories: read into the IR, stream the IR out (include/lms/hf.h).
 *
 * Reading maps every shard and builds one storage view per tensor: no tensor byte is copied.
 * Writing plans shards in state-dict order, renders each shard's canonical header, then streams
 * the tensors: plain same-dtype tensors are copied file to file by the kernel
 * (copy_file_range), everything else (casts, sliced or fused views) through one bounded buffer. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lms/alloc.h"
#include "lms/arch.h"
#include "lms/hf.h"
#include "lms/json.h"
#include "lms/outdir.h"
#include "lms/safetensors.h"

#include "formats/layouts/paths.h"

#define INDEX_NAME "model.safetensors.index.json"
#define SINGLE_NAME "model.safetensors"
#define CONFIG_MAX_BYTES (16u << 20)
#define INDEX_MAX_BYTES (256u << 20)
#define STREAM_CHUNK (8u << 20) /* bytes of the write buffer */

const char *const lms_hf_aux_files[] = {
    "tokenizer.json",       "tokenizer_config.json", "special_tokens_map.json",
    "generation_config.json", "chat_template.jinja", "chat_template.json",
    "vocab.json",           "merges.txt",            "tokenizer.model",
    "added_tokens.json",    NULL,
};

static int hf_probe(const char *path)
{
    char p[PATH_MAX];
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return 0;
    bool config = join(p, sizeof(p), path, "config.json") && is_file(p);
    bool weights = (join(p, sizeof(p), path, INDEX_NAME) && is_file(p)) ||
                   (join(p, sizeof(p), path, SINGLE_NAME) && is_file(p));
    if (config && weights)
        return 90;
    /* only one of the two: still ours, the read explains what is missing */
    return config ? 20 : weights ? 10 : 0;
}

/* ---- reading ---------------------------------------------------------------------------- */

/* Adds the parts of a tensor that holds several roles (rows joined in the family's order) as
 * row ranges of it, under the roles' own names. */
static enum lms_status add_fused_parts(struct lms_model *m, const struct lms_arch_fused *fu,
                                       int64_t layer, const char *name, struct lms_view *v,
                                       struct lms_error *err)
{
    int64_t rows = 0, cols = -1;
    int64_t part_rows[3];
    for (int p = 0; p < fu->n_parts; p++) {
        int ndim;
        int64_t shape[LMS_MAX_DIMS];
        lms_role_shape(fu->parts[p], &m->arch, &ndim, shape);
        part_rows[p] = shape[0];
        rows += shape[0];
        cols = shape[1];
    }
    if (v->ndim != 2)
        return lms_error_set(err, LMS_ESHAPE, "tensor '%s' has %d dimensions, expected 2", name,
                             v->ndim);
    if (v->shape[0] != rows || v->shape[1] != cols)
        return lms_error_set(err, LMS_ESHAPE,
                             "tensor '%s' has shape [%lld, %lld], the config implies [%lld, %lld]",
                             name, (long long)v->shape[0], (long long)v->shape[1],
                             (long long)rows, (long long)cols);
    if (layer >= m->arch.n_layers)
        return lms_error_set(err, LMS_EFORMAT, "tensor '%s': layer %lld is outside 0..%lld", name,
                             (long long)layer, (long long)m->arch.n_layers - 1);
    enum lms_status rc = LMS_OK;
    int64_t begin = 0;
    for (int p = 0; p < fu->n_parts && !rc; p++) {
        struct lms_view *part;
        char part_name[256];
        rc = lms_view_new_range(v, 0, begin, part_rows[p], &part, err);
        if (rc)
            break;
        lms_role_hf_name(fu->parts[p], layer, part_name, sizeof part_name);
        rc = lms_model_add(m, part_name, fu->parts[p], layer, part, err);
        lms_view_release(part);
        begin += part_rows[p];
    }
    return rc;
}

/* Adds every tensor of one opened shard to the model, checking it against the index. */
static enum lms_status add_shard_tensors(struct lms_model *m, const struct lms_st_file *f,
                                         const char *shard, const json_t *weight_map,
                                         struct lms_error *err)
{
    const char *shard_path = f->storage->path;
    const struct lms_arch_desc *desc = lms_arch_desc_of(m->arch.family);
    for (size_t i = 0; i < f->hdr.n_entries; i++) {
        const struct lms_st_entry *e = &f->hdr.entries[i];
        if (weight_map) {
            const json_t *where = json_object_get(weight_map, e->name);
            if (!where)
                return lms_error_set(err, LMS_EFORMAT,
                                     "reading '%s': holds tensor '%s', which the index does not list",
                                     shard_path, e->name);
            if (strcmp(json_string_value(where), shard) != 0)
                return lms_error_set(err, LMS_EFORMAT,
                                     "reading '%s': holds tensor '%s', which the index places in '%s'",
                                     shard_path, e->name, json_string_value(where));
        }
        /* no duplicate check needed: a shard's own names are unique (the parser rejects
         * duplicates) and the index places each name in exactly one shard */
        enum lms_role role = LMS_ROLE_OTHER;
        const struct lms_arch_fused *fused = NULL;
        int64_t layer = -1;
        if (!lms_arch_hf_parse(desc, e->name, &role, &fused, &layer)) {
            role = LMS_ROLE_OTHER;
            layer = -1;
        }
        struct lms_view *v;
        enum lms_status rc = lms_st_entry_view(f, i, &v, err);
        if (rc)
            return lms_error_wrap(err, "reading '%s': tensor '%s': ", shard_path, e->name);
        if (fused && v->dtype == LMS_DTYPE_F8_E4M3) {
            rc = lms_error_set(err, LMS_EUNSUPPORTED,
                               "reading '%s': tensor '%s': FP8 weights stored fused are not read",
                               shard_path, e->name);
        } else if (fused) {
            rc = add_fused_parts(m, fused, layer, e->name, v, err);
            if (rc)
                lms_error_wrap(err, "reading '%s': ", shard_path);
        } else {
            rc = lms_model_add(m, e->name, role, layer, v, err);
        }
        lms_view_release(v);
        if (rc)
            return rc;
    }
    return LMS_OK;
}

/* Opens one shard named by the index (a plain file name inside dir). */
static enum lms_status read_shard(struct lms_model *m, const char *dir, const char *index_path,
                                  const char *shard, const json_t *weight_map, size_t *n_read,
                                  struct lms_error *err)
{
    if (!*shard || strchr(shard, '/') || strcmp(shard, "..") == 0 || strcmp(shard, ".") == 0)
        return lms_error_set(err, LMS_EFORMAT, "reading '%s': invalid shard file name '%s'",
                             index_path, shard);
    char p[PATH_MAX];
    if (!join(p, sizeof(p), dir, shard))
        return lms_error_set(err, LMS_EINVAL, "path of shard '%s' is too long", shard);
    if (!is_file(p))
        return lms_error_set(err, LMS_EFORMAT, "reading '%s': shard '%s' does not exist",
                             index_path, shard);
    struct lms_st_file f;
    enum lms_status rc = lms_st_open(p, &f, err);
    if (rc)
        return rc;
    rc = add_shard_tensors(m, &f, shard, weight_map, err);
    *n_read += f.hdr.n_entries;
    lms_st_close(&f);
    return rc;
}

static enum lms_status read_sharded(struct lms_model *m, const char *dir, const char *index_path,
                                    struct lms_error *err)
{
    json_t *index;
    enum lms_status rc = lms_json_load_file(index_path, INDEX_MAX_BYTES, &index, err);
    if (rc)
        return rc;
    const json_t *wm = json_object_get(index, "weight_map");
    if (!json_is_object(index) || !json_is_object(wm)) {
        json_decref(index);
        return lms_error_set(err, LMS_EFORMAT, "reading '%s': 'weight_map' is missing or not an object",
                             index_path);
    }
    /* distinct shard names, in first-seen order */
    json_t *shards = json_object();
    const char *name;
    json_t *where;
    json_object_foreach((json_t *)wm, name, where)
    {
        if (!json_is_string(where)) {
            rc = lms_error_set(err, LMS_EFORMAT, "reading '%s': weight_map entry '%s' is not a string",
                               index_path, name);
            goto out;
        }
        json_object_set_new(shards, json_string_value(where), json_true());
    }
    json_t *unused;
    size_t n_read = 0; /* tensors in the shards (a fused one becomes several in the model) */
    json_object_foreach(shards, name, unused)
    {
        rc = read_shard(m, dir, index_path, name, wm, &n_read, err);
        if (rc)
            goto out;
    }
    /* every index entry must exist in its shard: since every shard tensor was found in the
     * index, equal counts prove it; look for the missing one only on failure */
    if (n_read == json_object_size(wm))
        goto out;
    const struct lms_arch_desc *desc = lms_arch_desc_of(m->arch.family);
    json_object_foreach((json_t *)wm, name, where)
    {
        enum lms_role role;
        const struct lms_arch_fused *fused = NULL;
        int64_t layer;
        bool is_fused = lms_arch_hf_parse(desc, name, &role, &fused, &layer) && fused;
        if (!is_fused && !lms_model_find_name(m, name)) {
            rc = lms_error_set(err, LMS_EFORMAT,
                               "reading '%s': lists tensor '%s', which shard '%s' does not hold",
                               index_path, name, json_string_value(where));
            goto out;
        }
    }
out:
    json_decref(shards);
    json_decref(index);
    return rc;
}

/* ---- fine-grained FP8 input ------------------------------------------------------------ */

#define SCALE_SUFFIX "_scale_inv"

/* The file a tensor was read from, for messages. */
static const char *file_of(const struct lms_tensor *t, const char *dir)
{
    const struct lms_view *v = t->view;
    if (v->kind == LMS_VIEW_STORAGE && v->u.st.storage->path)
        return v->u.st.storage->path;
    return dir;
}

static bool has_scale_suffix(const char *name)
{
    size_t n = strlen(name), k = strlen(SCALE_SUFFIX);
    return n > k && strcmp(name + n - k, SCALE_SUFFIX) == 0;
}

/* Whether config.json declares FP8 blocks; refuses a block size other than 128 x 128. */
static enum lms_status fp8_declared(const json_t *config, const char *config_path, bool *fp8,
                                    struct lms_error *err)
{
    const json_t *q = json_object_get(config, "quantization_config");
    const json_t *method = json_object_get(q, "quant_method");
    *fp8 = json_is_string(method) && strcmp(json_string_value(method), "fp8") == 0;
    if (!*fp8)
        return LMS_OK;
    const json_t *bs = json_object_get(q, "weight_block_size");
    if (bs && !(json_is_array(bs) && json_array_size(bs) == 2 &&
                json_integer_value(json_array_get(bs, 0)) == LMS_FP8_BLOCK &&
                json_integer_value(json_array_get(bs, 1)) == LMS_FP8_BLOCK))
        return lms_error_set(err, LMS_EUNSUPPORTED,
                             "reading '%s': FP8 'weight_block_size' must be [128, 128]",
                             config_path);
    return LMS_OK;
}

/* Reads and checks the block scales of FP8 weight w from tensor sc. OUT: *out (lms_free it). */
static enum lms_status load_scales(const struct lms_tensor *w, const struct lms_tensor *sc,
                                   const char *dir, float **out, struct lms_error *err)
{
    const char *file = file_of(sc, dir);
    const struct lms_view *v = w->view, *s = sc->view;
    if (v->ndim != 2)
        return lms_error_set(err, LMS_EFORMAT, "reading '%s': FP8 tensor '%s' is %d-D, not 2-D",
                             file_of(w, dir), w->name, v->ndim);
    int64_t br = (v->shape[0] + LMS_FP8_BLOCK - 1) / LMS_FP8_BLOCK;
    int64_t bc = (v->shape[1] + LMS_FP8_BLOCK - 1) / LMS_FP8_BLOCK;
    if (s->ndim != 2 || s->shape[0] != br || s->shape[1] != bc || !lms_dtype_is_castable(s->dtype))
        return lms_error_set(err, LMS_EFORMAT,
                             "reading '%s': scale tensor '%s' must be a float [%lld, %lld] (one "
                             "per 128 x 128 block of '%s')", file, sc->name, (long long)br,
                             (long long)bc, w->name);
    float *scales = lms_malloc((size_t)(br * bc) * sizeof(float) + 1);
    if (!scales)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    enum lms_status rc = lms_view_read_as(s, 0, br * bc, LMS_DTYPE_F32, scales, err);
    for (int64_t i = 0; i < br * bc && !rc; i++)
        if (!isfinite(scales[i]) || scales[i] < 0)
            rc = lms_error_set(err, LMS_EFORMAT,
                               "reading '%s': scale tensor '%s' holds %g at block %lld (scales "
                               "must be finite and >= 0)", file, sc->name, (double)scales[i],
                               (long long)i);
    if (rc) {
        lms_free(scales);
        return rc;
    }
    *out = scales;
    return LMS_OK;
}

/* Replaces every F8_E4M3 weight by its dequantised F32 view and removes the scale tensors:
 * each weight needs its NAME_scale_inv, each scale tensor its weight. */
static enum lms_status apply_fp8_scales(struct lms_model *m, const char *dir,
                                        struct lms_error *err)
{
    char name[600];
    for (size_t i = 0; i < m->n_tensors; i++) {
        struct lms_tensor *t = &m->tensors[i];
        if (has_scale_suffix(t->name)) {
            size_t base = strlen(t->name) - strlen(SCALE_SUFFIX);
            snprintf(name, sizeof name, "%.*s", (int)base, t->name);
            const struct lms_tensor *w = lms_model_find_name(m, name);
            if (!w || w->view->dtype != LMS_DTYPE_F8_E4M3)
                return lms_error_set(err, LMS_EFORMAT,
                                     "reading '%s': scale tensor '%s' has no F8_E4M3 weight '%s'",
                                     file_of(t, dir), t->name, name);
            continue;
        }
        if (t->view->dtype != LMS_DTYPE_F8_E4M3)
            continue;
        snprintf(name, sizeof name, "%s" SCALE_SUFFIX, t->name);
        const struct lms_tensor *sc = lms_model_find_name(m, name);
        if (!sc)
            return lms_error_set(err, LMS_EFORMAT, "reading '%s': FP8 tensor '%s' has no '%s'",
                                 file_of(t, dir), t->name, name);
        float *scales = NULL;
        enum lms_status rc = load_scales(t, sc, dir, &scales, err);
        if (rc)
            return rc;
        struct lms_view *dq;
        rc = lms_view_new_fp8_blocks(t->view, scales, &dq, err);
        lms_free(scales);
        if (rc)
            return rc;
        lms_view_release(t->view);
        t->view = dq;
    }
    size_t k = 0; /* drop the scales, now folded into the views */
    for (size_t i = 0; i < m->n_tensors; i++) {
        if (has_scale_suffix(m->tensors[i].name)) {
            lms_free(m->tensors[i].name);
            lms_view_release(m->tensors[i].view);
        } else {
            m->tensors[k++] = m->tensors[i];
        }
    }
    m->n_tensors = k;
    return LMS_OK;
}

static enum lms_status hf_read(const char *path, struct lms_model *m, struct lms_error *err)
{
    lms_model_init(m);
    char p[PATH_MAX];
    enum lms_status rc;
    if (!join(p, sizeof(p), path, "config.json"))
        return lms_error_set(err, LMS_EINVAL, "path '%s' is too long", path);
    if (!is_file(p))
        return lms_error_set(err, LMS_EFORMAT,
                             "reading '%s': no config.json (a Hugging Face checkpoint needs one)",
                             path);
    rc = lms_json_load_file(p, CONFIG_MAX_BYTES, &m->hf_config, err);
    if (rc)
        goto fail;
    rc = lms_hf_config_parse(m->hf_config, &m->arch, err);
    if (rc) {
        lms_error_wrap(err, "reading '%s': ", p);
        goto fail;
    }
    bool fp8;
    rc = fp8_declared(m->hf_config, p, &fp8, err);
    if (rc)
        goto fail;
    char index_path[PATH_MAX];
    join(index_path, sizeof(index_path), path, INDEX_NAME);
    join(p, sizeof(p), path, SINGLE_NAME);
    if (is_file(index_path)) {
        rc = read_sharded(m, path, index_path, err);
    } else if (is_file(p)) {
        struct lms_st_file f;
        rc = lms_st_open(p, &f, err);
        if (!rc) {
            rc = add_shard_tensors(m, &f, SINGLE_NAME, NULL, err);
            lms_st_close(&f);
        }
    } else {
        rc = lms_error_set(err, LMS_EFORMAT, "reading '%s': no %s or %s", path, SINGLE_NAME,
                           INDEX_NAME);
    }
    if (!rc && fp8)
        rc = apply_fp8_scales(m, path, err);
    if (rc)
        goto fail;
    for (int i = 0; lms_hf_aux_files[i]; i++) {
        if (join(p, sizeof(p), path, lms_hf_aux_files[i]) && is_file(p)) {
            rc = lms_model_add_aux_file(m, p, err);
            if (rc)
                goto fail;
        }
    }
    rc = lms_model_validate(m, err);
    if (rc) {
        lms_error_wrap(err, "reading '%s': ", path);
        goto fail;
    }
    m->source_format = lms_strdup("hf");
    if (!m->source_format) {
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
        goto fail;
    }
    return LMS_OK;
fail:
    lms_model_release(m);
    return rc;
}

/* ---- writing ---------------------------------------------------------------------------- */

/* How a tensor's bytes are produced from its view. */
enum out_encoding {
    OUT_PLAIN,      /* the view's elements, cast to dtype */
    OUT_FP8_CODES,  /* E4M3 codes of the view under its 128 x 128 block scales */
    OUT_FP8_SCALES, /* those block scales (F32), one per block: the NAME_scale_inv tensor */
};

/* One tensor to write: its HF name, the view to stream, and the dtype and shape it is written
 * in (the shape differs from the view's only for block scales). */
struct out_tensor {
    char *name;
    struct lms_view *view; /* one reference */
    enum out_encoding enc;
    enum lms_dtype dtype;
    int ndim;
    int64_t shape[LMS_MAX_DIMS];
    uint64_t nbytes;
    int shard;             /* 0-based */
    /* FP8: the codes pass leaves the block scales it computed (*keep_scales, the scales entry's
     * kept_scales, owned there) so that the scales tensor, written after it, is not computed
     * from the weight a second time */
    float **keep_scales;
    float *kept_scales;
};

/* Position of a role inside a layer in PyTorch state-dict order (module definition order). */
static int role_rank(enum lms_role r)
{
    static const enum lms_role order[] = {
        LMS_ROLE_EMBED,  LMS_ROLE_Q,      LMS_ROLE_Q_BIAS,   LMS_ROLE_K,        LMS_ROLE_K_BIAS,
        LMS_ROLE_V,      LMS_ROLE_V_BIAS, LMS_ROLE_O,        LMS_ROLE_O_BIAS,   LMS_ROLE_Q_NORM,
        LMS_ROLE_K_NORM, LMS_ROLE_GATE,   LMS_ROLE_UP,       LMS_ROLE_DOWN,     LMS_ROLE_ATTN_NORM,
        LMS_ROLE_MLP_NORM, LMS_ROLE_FINAL_NORM, LMS_ROLE_LM_HEAD, LMS_ROLE_OTHER,
    };
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
        if (order[i] == r)
            return (int)i;
    return 99;
}

struct order_key {
    const struct lms_tensor *t;
    size_t input_pos;
};

static int cmp_state_dict(const void *a, const void *b)
{
    const struct order_key *x = a, *y = b;
    /* group: 0 embedding, 1 layers, 2 final norm / head, 3 unmodelled tensors */
    int gx = x->t->role == LMS_ROLE_EMBED ? 0 : x->t->role == LMS_ROLE_OTHER ? 3
                                              : x->t->layer >= 0                ? 1
                                                                                 : 2;
    int gy = y->t->role == LMS_ROLE_EMBED ? 0 : y->t->role == LMS_ROLE_OTHER ? 3
                                              : y->t->layer >= 0                ? 1
                                                                                 : 2;
    if (gx != gy)
        return gx - gy;
    if (gx == 3)
        return x->input_pos < y->input_pos ? -1 : 1;
    if (x->t->layer != y->t->layer)
        return x->t->layer < y->t->layer ? -1 : 1;
    return role_rank(x->t->role) - role_rank(y->t->role);
}

static void free_outs(struct out_tensor *outs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        lms_free(outs[i].name);
        lms_free(outs[i].kept_scales);
        lms_view_release(outs[i].view);
    }
    lms_free(outs);
}

/* The view written for tensor t: itself, or, for the first part of a tensor the family stores
 * fused, the parts of that layer joined along rows. */
static enum lms_status written_view(const struct lms_model *m, const struct lms_tensor *t,
                                    const struct lms_arch_fused *fused, struct lms_view **out,
                                    struct lms_error *err)
{
    if (!fused) {
        *out = lms_view_ref(t->view);
        return LMS_OK;
    }
    struct lms_view *parts[3];
    for (int p = 0; p < fused->n_parts; p++) {
        const struct lms_tensor *pt = lms_model_find(m, fused->parts[p], t->layer);
        if (!pt)
            return lms_error_set(err, LMS_EINVAL, "layer %lld has no '%s' tensor to fuse",
                                 (long long)t->layer, lms_role_name(fused->parts[p]));
        parts[p] = pt->view;
    }
    return lms_view_new_concat(parts, fused->n_parts, 0, out, err);
}

/* The FP8 output quantises the linear layers' 2-D weights; the rest is written in bf16. */
static bool fp8_quantised_role(enum lms_role r)
{
    return r == LMS_ROLE_Q || r == LMS_ROLE_K || r == LMS_ROLE_V || r == LMS_ROLE_O ||
           r == LMS_ROLE_GATE || r == LMS_ROLE_UP || r == LMS_ROLE_DOWN;
}

static int64_t ceil_blocks(int64_t n)
{
    return (n + LMS_FP8_BLOCK - 1) / LMS_FP8_BLOCK;
}

static uint64_t out_bytes(const struct out_tensor *ot)
{
    int64_t numel = 1;
    for (int d = 0; d < ot->ndim; d++)
        numel *= ot->shape[d];
    if (lms_dtype_bits(ot->dtype) % 8)
        return lms_view_nbytes(ot->view);
    return (uint64_t)numel * lms_dtype_size(ot->dtype);
}

/* Picks how a planned tensor is written (dtype and encoding); for an FP8 weight, also plans the
 * block-scale tensor that follows it (*scales, named NAME_scale_inv). */
static enum lms_status plan_encoding(struct out_tensor *ot, enum lms_role role,
                                     const struct lms_write_opts *o, struct out_tensor *scales,
                                     bool *has_scales, struct lms_error *err)
{
    enum lms_dtype src = ot->view->dtype;
    ot->ndim = ot->view->ndim;
    memcpy(ot->shape, ot->view->shape, sizeof ot->shape);
    ot->enc = OUT_PLAIN;
    ot->dtype = o->dtype != LMS_DTYPE_COUNT && lms_dtype_is_castable(src) ? o->dtype : src;
    *has_scales = false;
    if (o->dtype == LMS_DTYPE_F8_E4M3 && lms_dtype_is_castable(src)) {
        ot->dtype = LMS_DTYPE_BF16;
        if (fp8_quantised_role(role) && ot->ndim == 2) {
            ot->dtype = LMS_DTYPE_F8_E4M3;
            ot->enc = OUT_FP8_CODES;
            size_t len = strlen(ot->name);
            *scales = (struct out_tensor){.view = lms_view_ref(ot->view),
                                          .enc = OUT_FP8_SCALES,
                                          .dtype = LMS_DTYPE_F32,
                                          .ndim = 2,
                                          .shape = {ceil_blocks(ot->shape[0]),
                                                    ceil_blocks(ot->shape[1])}};
            scales->name = lms_malloc(len + sizeof "_scale_inv");
            if (!scales->name)
                return lms_error_set(err, LMS_ENOMEM, "out of memory");
            memcpy(scales->name, ot->name, len);
            memcpy(scales->name + len, "_scale_inv", sizeof "_scale_inv");
            scales->nbytes = out_bytes(scales);
            ot->keep_scales = &scales->kept_scales;
            *has_scales = true;
        }
    }
    ot->nbytes = out_bytes(ot);
    return LMS_OK;
}

/* Builds the list of tensors to write, in state-dict order, with names, output dtypes and the
 * vocabulary padding rows dropped; roles the family stores fused are written as one tensor at
 * the place of their first part. OUT: *n_out entries. */
static enum lms_status plan_tensors(const struct lms_model *m, const struct lms_write_opts *o,
                                    struct out_tensor **outs_out, size_t *n_out,
                                    struct lms_error *err)
{
    size_t n = m->n_tensors;
    struct order_key *keys = lms_malloc((n ? n : 1) * sizeof(*keys));
    struct out_tensor *outs = lms_calloc(2 * n + 1, sizeof(*outs)); /* room for FP8 scales */
    if (!keys || !outs) {
        lms_free(keys);
        lms_free(outs);
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++)
        keys[i] = (struct order_key){&m->tensors[i], i};
    qsort(keys, n, sizeof(*keys), cmp_state_dict);
    const struct lms_arch_desc *desc = lms_arch_desc_of(m->arch.family);
    enum lms_status rc = LMS_OK;
    size_t k = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        const struct lms_tensor *t = keys[i].t;
        char name[512];
        const struct lms_arch_fused *fused = NULL;
        int part = 0;
        if (t->role == LMS_ROLE_OTHER)
            snprintf(name, sizeof(name), "%s", t->name);
        else
            lms_arch_hf_name(desc, t->role, t->layer, &fused, &part, name, sizeof(name));
        if (part > 0)
            continue; /* written with the first part */
        struct out_tensor *ot = &outs[k++];
        ot->name = lms_strdup(name);
        if (!ot->name) {
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
            break;
        }
        bool vocab_rows = t->role == LMS_ROLE_EMBED || t->role == LMS_ROLE_LM_HEAD;
        if (vocab_rows && m->arch.padded_vocab > m->arch.vocab)
            rc = lms_view_new_range(t->view, 0, 0, m->arch.vocab, &ot->view, err);
        else
            rc = written_view(m, t, fused, &ot->view, err);
        if (rc)
            break;
        bool has_scales;
        rc = plan_encoding(ot, t->role, o, &outs[k], &has_scales, err);
        k += has_scales;
    }
    lms_free(keys);
    if (rc) {
        free_outs(outs, 2 * n + 1);
        return rc;
    }
    *outs_out = outs;
    *n_out = k;
    return LMS_OK;
}

/* Assigns shards: a new shard starts when the next tensor would push the current one past the
 * limit; a tensor larger than the limit gets a shard of its own. */
static int plan_shards(struct out_tensor *outs, size_t n, uint64_t max)
{
    int shard = 0;
    uint64_t used = 0;
    for (size_t i = 0; i < n; i++) {
        if (used > 0 && used + outs[i].nbytes > max) {
            shard++;
            used = 0;
        }
        outs[i].shard = shard;
        used += outs[i].nbytes;
    }
    return n ? shard + 1 : 1;
}

/* Streaming state shared by the shards of one write. */
struct stream {
    char *buf;             /* STREAM_CHUNK bytes */
    int src_fd;            /* open source file for copy_file_range, or -1 */
    const struct lms_storage *src_storage;
    uint64_t done, total;  /* bytes, for progress */
    const struct lms_write_opts *opts;
};

static void report(struct stream *s, uint64_t n)
{
    s->done += n;
    if (s->opts->progress)
        s->opts->progress(s->opts->progress_ctx, s->done, s->total);
}

/* Errors of copy_file_range that mean it cannot copy between these two files (another
 * filesystem, an old kernel, a file type it does not handle), as opposed to a failed write. */
static bool copy_unsupported(int e)
{
    if (e == ENOTSUP) /* the same value as EOPNOTSUPP on Linux */
        return true;
    return e == EXDEV || e == ENOSYS || e == EINVAL || e == EOPNOTSUPP || e == EBADF;
}

/* Kernel-side copy of a direct view's bytes; falls back to writing from the mapping. */
static enum lms_status copy_direct(struct stream *s, const struct lms_view *v, int fd,
                                   const char *path, struct lms_error *err)
{
    const struct lms_storage *st = v->u.st.storage;
    uint64_t len = lms_view_nbytes(v);
    loff_t off = (loff_t)v->u.st.offset;
    if (st->kind == LMS_STORAGE_FILE_MAP && st->path) {
        if (s->src_storage != st) {
            if (s->src_fd >= 0)
                close(s->src_fd);
            s->src_fd = open(st->path, O_RDONLY | O_CLOEXEC);
            s->src_storage = st;
        }
        while (s->src_fd >= 0 && len > 0) {
            size_t step = len < (64u << 20) ? (size_t)len : (64u << 20);
            ssize_t w = copy_file_range(s->src_fd, &off, fd, NULL, step, 0);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0 && !copy_unsupported(errno))
                return lms_error_set(err, LMS_EIO, "writing '%s': %s", path, strerror(errno));
            if (w <= 0)
                break; /* not possible between these files: write the rest from the mapping */
            len -= (uint64_t)w;
            report(s, (uint64_t)w);
        }
    }
    const char *base = (const char *)st->base;
    while (len > 0) {
        size_t step = len < STREAM_CHUNK ? (size_t)len : STREAM_CHUNK;
        enum lms_status rc = lms_write_all(fd, base + off, step, path, err);
        if (rc)
            return rc;
        off += (loff_t)step;
        len -= step;
        report(s, step);
    }
    return LMS_OK;
}

/* Writes an FP8 weight's codes or its block scales, one band of LMS_FP8_BLOCK rows at a time
 * (memory: one band in f32 and the weight's scale grid, one float per 128 x 128 block). The
 * codes pass leaves its grid for the scales tensor; a scales tensor without one (none so far)
 * computes it from the same rows the same way, so the two always agree. */
static enum lms_status copy_fp8(struct stream *s, const struct out_tensor *o, int fd,
                                const char *path, struct lms_error *err)
{
    const struct lms_view *v = o->view;
    int64_t rows = v->shape[0], cols = v->shape[1], nb = ceil_blocks(cols);
    size_t grid_bytes = (size_t)(ceil_blocks(rows) * nb) * sizeof(float);
    if (o->enc == OUT_FP8_SCALES && o->kept_scales) {
        enum lms_status rc = lms_write_all(fd, o->kept_scales, grid_bytes, path, err);
        if (!rc)
            report(s, grid_bytes);
        return rc;
    }
    size_t band = (size_t)LMS_FP8_BLOCK * (size_t)cols;
    float *w = lms_malloc(band * sizeof(float) + 1);
    float *grid = lms_malloc(grid_bytes + 1);
    uint8_t *codes = lms_malloc(band + 1);
    enum lms_status rc = LMS_OK;
    if (!w || !grid || !codes)
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
    for (int64_t r0 = 0; r0 < rows && !rc; r0 += LMS_FP8_BLOCK) {
        int64_t nr = rows - r0 < LMS_FP8_BLOCK ? rows - r0 : LMS_FP8_BLOCK;
        rc = lms_view_read_as(v, r0 * cols, nr * cols, LMS_DTYPE_F32, w, err);
        if (rc) {
            lms_error_wrap(err, "tensor '%s': ", o->name);
            break;
        }
        float *scales = grid + (r0 / LMS_FP8_BLOCK) * nb;
        if (!lms_fp8_band_scales(w, nr, cols, scales)) {
            /* name the weight (both of its tensors fail alike) and, when it has one, its file */
            int len = (int)strlen(o->name) -
                      (o->enc == OUT_FP8_SCALES ? (int)strlen("_scale_inv") : 0);
            const char *file = v->kind == LMS_VIEW_STORAGE ? v->u.st.storage->path : NULL;
            rc = lms_error_set(err, LMS_EFORMAT,
                               "%s%s%stensor '%.*s': rows %lld..%lld hold a NaN or an infinity, "
                               "which FP8 blocks cannot scale", file ? "reading '" : "",
                               file ? file : "", file ? "': " : "", len, o->name, (long long)r0,
                               (long long)(r0 + nr - 1));
            break;
        }
        size_t n;
        if (o->enc == OUT_FP8_SCALES) {
            n = (size_t)nb * sizeof(float);
            rc = lms_write_all(fd, scales, n, path, err);
        } else {
            lms_fp8_band_encode(w, nr, cols, scales, codes);
            n = (size_t)(nr * cols);
            rc = lms_write_all(fd, codes, n, path, err);
        }
        if (!rc)
            report(s, n);
    }
    if (!rc && o->keep_scales) {
        lms_free(*o->keep_scales);
        *o->keep_scales = grid;
        grid = NULL;
    }
    lms_free(w);
    lms_free(grid);
    lms_free(codes);
    return rc;
}

/* Materialises a view chunk by chunk (gathering and casting) and writes it. */
static enum lms_status copy_chunked(struct stream *s, const struct out_tensor *o, int fd,
                                    const char *path, struct lms_error *err)
{
    size_t es = lms_dtype_size(o->dtype);
    if (es == 0) /* sub-byte types are only ever written whole from direct views */
        return lms_error_set(err, LMS_EUNSUPPORTED, "tensor '%s': cannot rewrite %s data", o->name,
                             lms_dtype_name(o->dtype));
    int64_t per_chunk = (int64_t)(STREAM_CHUNK / es);
    int64_t numel = lms_view_numel(o->view);
    for (int64_t e = 0; e < numel; e += per_chunk) {
        int64_t n = numel - e < per_chunk ? numel - e : per_chunk;
        enum lms_status rc = lms_view_read_as(o->view, e, n, o->dtype, s->buf, err);
        if (!rc)
            rc = lms_write_all(fd, s->buf, (size_t)n * es, path, err);
        if (rc)
            return lms_error_wrap(err, "tensor '%s': ", o->name);
        if (numel > per_chunk)
            lms_view_drop_pages(o->view); /* keep the resident set at one chunk's worth */
        report(s, (uint64_t)n * es);
    }
    return LMS_OK;
}

static void shard_name(char *dst, size_t cap, int shard, int n_shards)
{
    if (n_shards == 1)
        snprintf(dst, cap, SINGLE_NAME);
    else
        snprintf(dst, cap, "model-%05d-of-%05d.safetensors", shard + 1, n_shards);
}

static enum lms_status write_shard(struct stream *s, const struct lms_outdir *od,
                                   struct out_tensor *outs, size_t n, int shard, int n_shards,
                                   struct lms_error *err)
{
    size_t count = 0;
    for (size_t i = 0; i < n; i++)
        count += outs[i].shard == shard;
    struct lms_st_out *hdr_outs = lms_calloc(count ? count : 1, sizeof(*hdr_outs));
    const struct out_tensor **by_pos = lms_calloc(count ? count : 1, sizeof(*by_pos));
    if (!hdr_outs || !by_pos) {
        lms_free(hdr_outs);
        lms_free(by_pos);
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (outs[i].shard == shard)
            hdr_outs[k++] = (struct lms_st_out){.name = outs[i].name,
                                                .dtype = outs[i].dtype,
                                                .ndim = outs[i].ndim,
                                                .shape = outs[i].shape,
                                                .tag = i};
    json_t *meta = json_pack("{s:s}", "format", "pt");
    struct lms_buf_str hdr = {0};
    char name[64], path[PATH_MAX];
    int fd = -1;
    enum lms_status rc = lms_st_header_build(hdr_outs, count, meta, &hdr, err);
    json_decref(meta);
    if (rc)
        goto out;
    /* header order is canonical; the tag leads back to each entry's source tensor */
    for (size_t j = 0; j < count; j++)
        by_pos[j] = &outs[hdr_outs[j].tag];
    shard_name(name, sizeof(name), shard, n_shards);
    rc = lms_outdir_path(od, name, path, sizeof(path), err);
    if (rc)
        goto out;
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = lms_error_set(err, LMS_EIO, "creating '%s': %s", path, strerror(errno));
        goto out;
    }
    rc = lms_write_all(fd, hdr.data, hdr.len, path, err);
    for (size_t j = 0; j < count && !rc; j++) {
        const struct out_tensor *o = by_pos[j];
        if (o->enc != OUT_PLAIN)
            rc = copy_fp8(s, o, fd, path, err);
        else if (lms_view_is_direct(o->view) && o->view->dtype == o->dtype)
            rc = copy_direct(s, o->view, fd, path, err);
        else
            rc = copy_chunked(s, o, fd, path, err);
        lms_view_drop_pages(o->view);
    }
    /* no fsync here: lms_outdir_commit fsyncs every file before the rename, and leaving the
     * write-back to the kernel until then measured faster than starting it per shard */
out:
    if (fd >= 0 && close(fd) != 0 && !rc)
        rc = lms_error_set(err, LMS_EIO, "closing '%s': %s", path, strerror(errno));
    lms_buf_str_release(&hdr);
    lms_free(hdr_outs);
    lms_free(by_pos);
    return rc;
}

static enum lms_status write_json(const struct lms_outdir *od, const char *name, const json_t *v,
                                  struct lms_error *err)
{
    struct lms_buf_str text = {0};
    char path[PATH_MAX];
    /* json.dumps(obj, indent=2, sort_keys=True) + "\n", as transformers writes both files */
    enum lms_status rc =
        lms_json_dump(v, LMS_JSON_INDENT2 | LMS_JSON_ASCII | LMS_JSON_SORT_KEYS, &text, err);
    if (!rc)
        rc = lms_buf_str_append(&text, "\n", 1, err);
    if (!rc)
        rc = lms_outdir_path(od, name, path, sizeof(path), err);
    if (!rc)
        rc = lms_write_file(path, text.data, text.len, err);
    lms_buf_str_release(&text);
    return rc;
}

static enum lms_status write_index(const struct lms_outdir *od, const struct out_tensor *outs,
                                   size_t n, int n_shards, const struct lms_model *m,
                                   struct lms_error *err)
{
    uint64_t total = 0;
    json_t *wm = json_object();
    for (size_t i = 0; i < n; i++) {
        char name[64];
        shard_name(name, sizeof(name), outs[i].shard, n_shards);
        json_object_set_new(wm, outs[i].name, json_string(name));
        total += outs[i].nbytes;
    }
    int64_t params = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t numel = 1;
        for (int d = 0; d < outs[i].ndim; d++)
            numel *= outs[i].shape[d];
        params += numel;
    }
    (void)m;
    json_t *index = json_pack("{s:{s:I,s:I},s:o}", "metadata", "total_parameters",
                              (json_int_t)params, "total_size", (json_int_t)total, "weight_map", wm);
    if (!index)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    enum lms_status rc = write_json(od, INDEX_NAME, index, err);
    json_decref(index);
    return rc;
}

/* The FP8 output declares its block quantisation as transformers' FineGrainedFP8Config writes
 * it; any other output drops a quantization_config carried from an FP8 input, whose weights are
 * now written dequantised. */
static enum lms_status set_quantization_config(json_t *config, bool fp8, struct lms_error *err)
{
    if (!fp8) {
        json_object_del(config, "quantization_config");
        return LMS_OK;
    }
    json_t *q = json_pack("{s:s,s:s,s:s,s:[i,i]}", "quant_method", "fp8", "fmt", "e4m3",
                          "activation_scheme", "dynamic", "weight_block_size", LMS_FP8_BLOCK,
                          LMS_FP8_BLOCK);
    if (!q || json_object_set_new(config, "quantization_config", q) != 0)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    return LMS_OK;
}

static enum lms_status hf_write(const struct lms_model *m, const char *path,
                                const struct lms_write_opts *o, struct lms_write_result *res,
                                struct lms_error *err)
{
    struct lms_write_result r = {0};
    enum lms_status rc = lms_model_validate(m, err);
    if (rc)
        return rc;
    struct out_tensor *outs = NULL;
    size_t n = 0, n_planned;
    rc = plan_tensors(m, o, &outs, &n, err);
    if (rc)
        return rc;
    n_planned = 2 * m->n_tensors + 1;
    int n_shards = plan_shards(outs, n, o->max_shard_size ? o->max_shard_size : LMS_DEFAULT_SHARD_SIZE);
    struct lms_outdir od;
    rc = lms_outdir_begin(path, o->force, &od, err);
    if (rc) {
        free_outs(outs, n_planned);
        return rc;
    }
    struct stream s = {.src_fd = -1, .opts = o};
    for (size_t i = 0; i < n; i++)
        s.total += outs[i].nbytes;
    s.buf = lms_malloc(STREAM_CHUNK);
    if (!s.buf)
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
    for (int sh = 0; sh < n_shards && !rc; sh++)
        rc = write_shard(&s, &od, outs, n, sh, n_shards, err);
    if (!rc && n_shards > 1)
        rc = write_index(&od, outs, n, n_shards, m, err);
    if (!rc) {
        struct lms_arch arch = m->arch;
        if (o->dtype != LMS_DTYPE_COUNT)
            arch.dtype = o->dtype == LMS_DTYPE_F8_E4M3 ? LMS_DTYPE_BF16 : o->dtype;
        json_t *config;
        rc = lms_hf_config_of_model(m, &arch, &config, err);
        if (!rc)
            rc = set_quantization_config(config, o->dtype == LMS_DTYPE_F8_E4M3, err);
        if (!rc) {
            rc = write_json(&od, "config.json", config, err);
            json_decref(config);
        }
    }
    for (size_t i = 0; i < m->n_aux_files && !rc; i++) {
        char dst[PATH_MAX];
        rc = lms_outdir_path(&od, lms_path_basename(m->aux_files[i]), dst, sizeof(dst), err);
        if (!rc)
            rc = lms_copy_file(m->aux_files[i], dst, err);
        r.n_aux_files++;
    }
    if (s.src_fd >= 0)
        close(s.src_fd);
    lms_free(s.buf);
    rc = lms_outdir_finish(&od, rc, err);
    if (!rc && res) {
        r.n_shards = n_shards;
        r.bytes = s.total;
        r.n_tensors = (int)n;
        *res = r;
    }
    free_outs(outs, n_planned);
    return rc;
}

const struct lms_format lms_format_hf = {
    .name = "hf",
    .description = "Hugging Face safetensors checkpoint directory",
    .probe = hf_probe,
    .read = hf_read,
    .write = hf_write,
};
