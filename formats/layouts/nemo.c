/* NeMo 2 checkpoint directories and Megatron-Bridge / Megatron-LM iteration directories over
 * the torch_dist checkpoint (checkpoint-formats.md §1, §4, §5): the Megatron key table, the
 * HF <-> Megatron tensor transforms as IR views, the model config (io.json / model.yaml /
 * run_config.yaml) and the two formats of the registry, "nemo" and "megatron".
 *
 * Legend: L layers, H hidden, F FFN width, n_h query heads, n_g query groups, d head dim,
 * p = n_h / n_g, V vocabulary rows.
 *
 * Reading builds every IR tensor as a view over the mapped .distcp files: one layer of a stacked
 * key is a range of the assembled global view, q/k/v are row selections of the fused QKV matrix
 * (§4.2), gate/up are the two halves of fc1. Writing does the inverse with concatenations, so
 * the fused tensors are produced chunk by chunk while streaming. Besides the Megatron files we
 * store the Hugging Face config.json the model came with as context/hf_config.json (NeMo) or
 * iter_N/hf_config.json (Megatron) so that HF -> NeMo -> HF is exact; without it the config is
 * rebuilt from io.json or run_config.yaml. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "lms/alloc.h"
#include "formats/codecs/dcp.h"
#include "lms/format.h"
#include "lms/hf.h"
#include "lms/json.h"
#include "lms/nemo.h"
#include "lms/outdir.h"

#include "formats/layouts/nemo_impl.h"

#define JSON_MAX_BYTES (64u << 20)

/* ---- paths -------------------------------------------------------------------------------- */

static bool join(char *dst, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(dst, cap, "%s/%s", dir, name);
    return n > 0 && (size_t)n < cap;
}

static bool is_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static bool is_dir(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static bool has(const char *dir, const char *name)
{
    char p[PATH_MAX];
    return join(p, sizeof(p), dir, name) && (is_file(p) || is_dir(p));
}

/* ---- the key table (§4.1) ------------------------------------------------------------------ */

static const char *const extra_state_modules[] = {
    "self_attention.linear_qkv", "self_attention.core_attention", "self_attention.linear_proj",
    "mlp.linear_fc1",            "mlp.linear_fc2",                "self_attention.q_layernorm",
    "self_attention.k_layernorm",
};

/* Per-layer keys that are straight copies of one role (after "decoder.layers."). */
static const struct {
    const char *key;
    enum lms_role role;
} layer_keys[] = {
    {"self_attention.linear_qkv.layer_norm_weight", LMS_ROLE_ATTN_NORM},
    {"self_attention.q_layernorm.weight", LMS_ROLE_Q_NORM},
    {"self_attention.k_layernorm.weight", LMS_ROLE_K_NORM},
    {"self_attention.linear_proj.weight", LMS_ROLE_O},
    {"mlp.linear_fc1.layer_norm_weight", LMS_ROLE_MLP_NORM},
    {"mlp.linear_fc2.weight", LMS_ROLE_DOWN},
};

/* ---- writing: model -> DCP tensors --------------------------------------------------------- */

struct plan {
    struct lms_dcp_w_tensor *t; /* owned array */
    size_t n_t, cap_t;
    char **keys;                /* owned strings, one per t */
    struct lms_view **views;    /* views created for chunks; one reference each */
    size_t n_views, cap_views;
    struct lms_dcp_w_bytes *b;  /* owned array */
    char **bkeys;
    size_t n_b, cap_b;
    unsigned char *extra;       /* the extra-state payload shared by every bytes item */
    size_t extra_len;
    enum lms_dtype dtype;       /* LMS_DTYPE_COUNT: keep each tensor's */
};

static void plan_release(struct plan *p)
{
    for (size_t i = 0; i < p->n_t; i++) {
        lms_free(p->t[i].chunks);
        lms_free(p->keys[i]);
    }
    for (size_t i = 0; i < p->n_views; i++)
        lms_view_release(p->views[i]);
    for (size_t i = 0; i < p->n_b; i++)
        lms_free(p->bkeys[i]);
    lms_free(p->t);
    lms_free(p->keys);
    lms_free(p->views);
    lms_free(p->b);
    lms_free(p->bkeys);
    lms_free(p->extra);
    memset(p, 0, sizeof(*p));
}

static enum lms_status grow(void **arr, size_t *cap, size_t n, size_t es, struct lms_error *err)
{
    if (n < *cap)
        return LMS_OK;
    size_t c = *cap ? *cap * 2 : 16;
    void *a = lms_realloc(*arr, c * es);
    if (!a)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    *arr = a;
    *cap = c;
    return LMS_OK;
}

/* Keeps a reference to v in the plan (released with it). */
static enum lms_status own_view(struct plan *p, struct lms_view *v, struct lms_error *err)
{
    enum lms_status rc = grow((void **)&p->views, &p->cap_views, p->n_views, sizeof(*p->views),
                              err);
    if (rc) {
        lms_view_release(v);
        return rc;
    }
    p->views[p->n_views++] = v;
    return LMS_OK;
}

/* A new key with room for n_chunks chunks. */
static enum lms_status new_key(struct plan *p, const char *prefix, const char *key, int ndim,
                               const int64_t *shape, enum lms_dtype dt, size_t n_chunks,
                               struct lms_dcp_w_tensor **out, struct lms_error *err)
{
    enum lms_status rc = grow((void **)&p->t, &p->cap_t, p->n_t, sizeof(*p->t), err);
    if (!rc) {
        char **k = lms_realloc(p->keys, p->cap_t * sizeof(*k));
        if (!k)
            return lms_error_set(err, LMS_ENOMEM, "out of memory");
        p->keys = k;
    }
    if (rc)
        return rc;
    size_t pl = strlen(prefix), kl = strlen(key);
    char *name = lms_malloc(pl + kl + 1);
    struct lms_dcp_w_chunk *ch = lms_calloc(n_chunks ? n_chunks : 1, sizeof(*ch));
    if (!name || !ch) {
        lms_free(name);
        lms_free(ch);
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    memcpy(name, prefix, pl);
    memcpy(name + pl, key, kl + 1);
    struct lms_dcp_w_tensor *t = &p->t[p->n_t];
    memset(t, 0, sizeof(*t));
    p->keys[p->n_t] = name;
    p->n_t++;
    t->key = name;
    t->dtype = p->dtype != LMS_DTYPE_COUNT && lms_dtype_is_castable(dt) ? p->dtype : dt;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof(int64_t));
    t->chunks = ch;
    *out = t;
    return LMS_OK;
}

/* Adds chunk view v (a new reference the plan takes over) at offsets. */
static enum lms_status add_chunk(struct plan *p, struct lms_dcp_w_tensor *t,
                                 const int64_t *offsets, struct lms_view *v,
                                 struct lms_error *err)
{
    enum lms_status rc = own_view(p, v, err);
    if (rc)
        return rc;
    struct lms_dcp_w_chunk *c = &t->chunks[t->n_chunks++];
    memcpy(c->offsets, offsets, (size_t)t->ndim * sizeof(int64_t));
    c->view = v;
    return LMS_OK;
}

/* v with a leading axis of 1 prepended (a new reference). */
static enum lms_status unsqueeze(struct lms_view *v, struct lms_view **out,
                                 struct lms_error *err)
{
    int64_t shape[LMS_MAX_DIMS];
    if (v->ndim + 1 > LMS_MAX_DIMS)
        return lms_error_set(err, LMS_EUNSUPPORTED, "too many dims");
    shape[0] = 1;
    memcpy(shape + 1, v->shape, (size_t)v->ndim * sizeof(int64_t));
    return lms_view_new_reshape(v, v->ndim + 1, shape, out, err);
}

static struct lms_view *need(const struct lms_model *m, enum lms_role r, int64_t l)
{
    struct lms_tensor *t = lms_model_find(m, r, l);
    return t ? t->view : NULL;
}

/* A stacked key [L, ...] from one role, one chunk per layer. */
static enum lms_status plan_stacked(struct plan *p, const struct lms_model *m, const char *prefix,
                                    const char *key, enum lms_role role, struct lms_error *err)
{
    int64_t L = m->arch.n_layers;
    struct lms_view *v0 = need(m, role, 0);
    if (!v0)
        return lms_error_set(err, LMS_EFORMAT, "no '%s' tensor for layer 0", lms_role_name(role));
    int64_t shape[LMS_MAX_DIMS] = {L};
    memcpy(shape + 1, v0->shape, (size_t)v0->ndim * sizeof(int64_t));
    struct lms_dcp_w_tensor *t;
    enum lms_status rc = new_key(p, prefix, key, v0->ndim + 1, shape, v0->dtype, (size_t)L, &t,
                                 err);
    for (int64_t l = 0; l < L && !rc; l++) {
        struct lms_view *v = need(m, role, l), *u;
        if (!v)
            return lms_error_set(err, LMS_EFORMAT, "no '%s' tensor for layer %lld",
                                 lms_role_name(role), (long long)l);
        rc = unsqueeze(v, &u, err);
        int64_t off[LMS_MAX_DIMS] = {l};
        if (!rc)
            rc = add_chunk(p, t, off, u, err);
    }
    return rc;
}

/* The fused QKV rows of §4.2 for one layer: per group g, p query heads, key g, value g. */
static enum lms_status fuse_qkv(struct lms_view *q, struct lms_view *k, struct lms_view *v,
                                int64_t n_g, int64_t d, struct lms_view **out,
                                struct lms_error *err)
{
    int64_t p = q->shape[0] / (n_g * d);
    size_t n = (size_t)(3 * n_g);
    struct lms_view **parts = lms_calloc(n, sizeof(*parts));
    if (!parts)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    enum lms_status rc = LMS_OK;
    for (int64_t g = 0; g < n_g && !rc; g++) {
        rc = lms_view_new_range(q, 0, g * p * d, p * d, &parts[3 * g], err);
        if (!rc)
            rc = lms_view_new_range(k, 0, g * d, d, &parts[3 * g + 1], err);
        if (!rc)
            rc = lms_view_new_range(v, 0, g * d, d, &parts[3 * g + 2], err);
    }
    if (!rc)
        rc = lms_view_new_concat(parts, (int)n, 0, out, err);
    for (size_t i = 0; i < n; i++)
        lms_view_release(parts[i]);
    lms_free(parts);
    return rc;
}

static enum lms_status plan_qkv(struct plan *p, const struct lms_model *m, const char *prefix,
                                bool bias, struct lms_error *err)
{
    const struct lms_arch *a = &m->arch;
    enum lms_role rq = bias ? LMS_ROLE_Q_BIAS : LMS_ROLE_Q, rk = bias ? LMS_ROLE_K_BIAS : LMS_ROLE_K,
                  rv = bias ? LMS_ROLE_V_BIAS : LMS_ROLE_V;
    struct lms_view *q0 = need(m, rq, 0);
    if (!q0)
        return lms_error_set(err, LMS_EFORMAT, "no q tensor for layer 0");
    int64_t rows = (a->n_heads + 2 * a->n_groups) * a->head_dim;
    int64_t shape[3] = {a->n_layers, rows, bias ? 0 : q0->shape[1]};
    struct lms_dcp_w_tensor *t;
    enum lms_status rc =
        new_key(p, prefix,
                bias ? "decoder.layers.self_attention.linear_qkv.bias"
                     : "decoder.layers.self_attention.linear_qkv.weight",
                bias ? 2 : 3, shape, q0->dtype, (size_t)a->n_layers, &t, err);
    for (int64_t l = 0; l < a->n_layers && !rc; l++) {
        struct lms_view *q = need(m, rq, l), *k = need(m, rk, l), *v = need(m, rv, l);
        if (!q || !k || !v)
            return lms_error_set(err, LMS_EFORMAT, "layer %lld lacks q, k or v", (long long)l);
        struct lms_view *f, *u;
        rc = fuse_qkv(q, k, v, a->n_groups, a->head_dim, &f, err);
        if (rc)
            break;
        rc = unsqueeze(f, &u, err);
        lms_view_release(f);
        int64_t off[3] = {l, 0, 0};
        if (!rc)
            rc = add_chunk(p, t, off, u, err);
    }
    return rc;
}

/* fc1 = [gate; up], two chunks per layer at rows 0 and F, as Megatron saves it (§2.6). */
static enum lms_status plan_fc1(struct plan *p, const struct lms_model *m, const char *prefix,
                                struct lms_error *err)
{
    const struct lms_arch *a = &m->arch;
    int64_t shape[3] = {a->n_layers, 2 * a->ffn, a->hidden};
    struct lms_view *g0 = need(m, LMS_ROLE_GATE, 0);
    if (!g0)
        return lms_error_set(err, LMS_EFORMAT, "no gate tensor for layer 0");
    struct lms_dcp_w_tensor *t;
    enum lms_status rc = new_key(p, prefix, "decoder.layers.mlp.linear_fc1.weight", 3, shape,
                                 g0->dtype, (size_t)(2 * a->n_layers), &t, err);
    for (int64_t l = 0; l < a->n_layers && !rc; l++)
        for (int h = 0; h < 2 && !rc; h++) {
            struct lms_view *v = need(m, h ? LMS_ROLE_UP : LMS_ROLE_GATE, l), *u;
            if (!v)
                return lms_error_set(err, LMS_EFORMAT, "layer %lld lacks gate or up",
                                     (long long)l);
            rc = unsqueeze(v, &u, err);
            int64_t off[3] = {l, h ? a->ffn : 0, 0};
            if (!rc)
                rc = add_chunk(p, t, off, u, err);
        }
    return rc;
}

static enum lms_status plan_global(struct plan *p, const struct lms_model *m, const char *prefix,
                                   const char *key, enum lms_role role, struct lms_error *err)
{
    struct lms_view *v = need(m, role, -1);
    if (!v)
        return lms_error_set(err, LMS_EFORMAT, "no '%s' tensor", lms_role_name(role));
    struct lms_dcp_w_tensor *t;
    enum lms_status rc = new_key(p, prefix, key, v->ndim, v->shape, v->dtype, 1, &t, err);
    int64_t off[LMS_MAX_DIMS] = {0};
    if (!rc)
        rc = add_chunk(p, t, off, lms_view_ref(v), err);
    return rc;
}

static enum lms_status add_bytes(struct plan *p, const char *name, struct lms_error *err)
{
    enum lms_status rc = grow((void **)&p->b, &p->cap_b, p->n_b, sizeof(*p->b), err);
    if (rc)
        return rc;
    char **k = lms_realloc(p->bkeys, p->cap_b * sizeof(*k));
    if (!k)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    p->bkeys = k;
    char *s = lms_strdup(name);
    if (!s)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    p->bkeys[p->n_b] = s;
    p->b[p->n_b].key = s;
    p->b[p->n_b].data = p->extra;
    p->b[p->n_b].len = p->extra_len;
    p->n_b++;
    return LMS_OK;
}

/* The _extra_state superset of §2.7, with the layer count in every stacked key. */
static enum lms_status plan_extra_state(struct plan *p, const struct lms_model *m,
                                        const char *prefix, struct lms_error *err)
{
    enum lms_status rc = lms_dcp_extra_state_payload(&p->extra, &p->extra_len, err);
    char name[512];
    size_t n_mod = sizeof(extra_state_modules) / sizeof(extra_state_modules[0]);
    if (!m->arch.qk_norm)
        n_mod -= 2;
    for (size_t i = 0; i < n_mod && !rc; i++)
        for (int64_t l = 0; l < m->arch.n_layers && !rc; l++) {
            snprintf(name, sizeof(name), "%sdecoder.layers.%s._extra_state/shard_%lld_%lld",
                     prefix, extra_state_modules[i], (long long)l, (long long)m->arch.n_layers);
            rc = add_bytes(p, name, err);
        }
    if (!rc) {
        snprintf(name, sizeof(name), "%sdecoder.final_layernorm._extra_state/shard_0_1", prefix);
        rc = add_bytes(p, name, err);
    }
    return rc;
}

static enum lms_status plan_model(struct plan *p, const struct lms_model *m, const char *prefix,
                                  struct lms_error *err)
{
    const struct lms_arch *a = &m->arch;
    if (a->o_bias)
        return lms_error_set(err, LMS_EUNSUPPORTED,
                             "attention output bias has no Megatron equivalent in this layout");
    for (size_t i = 0; i < m->n_tensors; i++)
        if (m->tensors[i].role == LMS_ROLE_OTHER)
            return lms_error_set(err, LMS_EUNSUPPORTED,
                                 "tensor '%s' has no Megatron key", m->tensors[i].name);
    enum lms_status rc = plan_global(p, m, prefix, "embedding.word_embeddings.weight",
                                     LMS_ROLE_EMBED, err);
    for (size_t i = 0; i < sizeof(layer_keys) / sizeof(layer_keys[0]) && !rc; i++) {
        if (!a->qk_norm &&
            (layer_keys[i].role == LMS_ROLE_Q_NORM || layer_keys[i].role == LMS_ROLE_K_NORM))
            continue;
        char key[256];
        snprintf(key, sizeof(key), "decoder.layers.%s", layer_keys[i].key);
        rc = plan_stacked(p, m, prefix, key, layer_keys[i].role, err);
        if (!rc && layer_keys[i].role == LMS_ROLE_ATTN_NORM) {
            rc = plan_qkv(p, m, prefix, false, err);
            if (!rc && a->qkv_bias)
                rc = plan_qkv(p, m, prefix, true, err);
        }
        if (!rc && layer_keys[i].role == LMS_ROLE_MLP_NORM)
            rc = plan_fc1(p, m, prefix, err);
    }
    if (!rc)
        rc = plan_global(p, m, prefix, "decoder.final_layernorm.weight", LMS_ROLE_FINAL_NORM,
                         err);
    if (!rc && !a->tie_embeddings)
        rc = plan_global(p, m, prefix, "output_layer.weight", LMS_ROLE_LM_HEAD, err);
    if (!rc)
        rc = plan_extra_state(p, m, prefix, err);
    return rc;
}

/* common.pt dicts (§2.3 recommended writer output). */
static enum lms_status common_pickle(bool bridge, struct lms_pkl_writer *w,
                                     struct lms_error *err)
{
    lms_pkl_w_proto2(w);
    lms_pkl_w_op(w, LMS_PKL_OP_EMPTY_DICT);
    lms_pkl_w_op(w, LMS_PKL_OP_MARK);
    if (bridge) {
        lms_pkl_w_str(w, "checkpoint_version");
        lms_pkl_w_float(w, 3.0);
        lms_pkl_w_str(w, "iteration");
        lms_pkl_w_int(w, 0);
    }
    lms_pkl_w_str(w, "content_metadata");
    lms_pkl_w_op(w, LMS_PKL_OP_EMPTY_DICT);
    if (bridge) {
        lms_pkl_w_op(w, LMS_PKL_OP_MARK);
        lms_pkl_w_str(w, "singleton_local_shards");
        lms_pkl_w_bool(w, false);
        lms_pkl_w_str(w, "chained_optim_avoid_prefix");
        lms_pkl_w_bool(w, true);
        lms_pkl_w_op(w, LMS_PKL_OP_SETITEMS);
    }
    lms_pkl_w_op(w, LMS_PKL_OP_SETITEMS);
    return lms_pkl_w_finish(w, err);
}

struct progress_fwd {
    const struct lms_write_opts *o;
};

static void progress_cb(void *ctx, uint64_t done, uint64_t total)
{
    const struct progress_fwd *f = ctx;
    if (f->o->progress)
        f->o->progress(f->o->progress_ctx, done, total);
}

/* Writes the torch_dist checkpoint of m: into the existing directory dir, or, when dir is NULL,
 * the data file into fd at base with the small files returned in *files. */
static enum lms_status write_weights_any(const struct lms_model *m, const char *dir, int fd,
                                         const char *path, uint64_t base,
                                         struct lms_dcp_w_files *files, const char *prefix,
                                         bool bridge, const struct lms_write_opts *o,
                                         struct lms_write_result *r, struct lms_error *err)
{
    struct plan p = {.dtype = o->dtype};
    struct lms_pkl_writer cw;
    lms_pkl_w_init(&cw);
    enum lms_status rc = plan_model(&p, m, prefix, err);
    if (!rc)
        rc = common_pickle(bridge, &cw, err);
    struct progress_fwd fwd = {o};
    struct lms_dcp_w_stats st = {0};
    if (!rc && dir)
        rc = lms_dcp_write(dir, p.t, p.n_t, p.b, p.n_b, cw.data, cw.len, progress_cb, &fwd, &st,
                           err);
    else if (!rc) {
        rc = lms_dcp_write_data(fd, path, base, p.t, p.n_t, p.b, p.n_b, cw.data, cw.len,
                                progress_cb, &fwd, files, err);
        if (!rc)
            st = files->stats;
    }
    if (!rc) {
        r->bytes = st.tensor_bytes;
        r->n_shards = 1;
        r->n_tensors = (int)p.n_t;
    }
    lms_pkl_w_release(&cw);
    plan_release(&p);
    return rc;
}

static enum lms_status write_weights(const struct lms_model *m, const char *dir,
                                     const char *prefix, bool bridge,
                                     const struct lms_write_opts *o, struct lms_write_result *r,
                                     struct lms_error *err)
{
    return write_weights_any(m, dir, -1, NULL, 0, NULL, prefix, bridge, o, r, err);
}

enum lms_status lms__nemo_write_weights_fd(const struct lms_model *m, int fd, const char *path,
                                           uint64_t base, const char *prefix,
                                           const struct lms_write_opts *o,
                                           struct lms_dcp_w_files *files,
                                           struct lms_write_result *r, struct lms_error *err)
{
    return write_weights_any(m, NULL, fd, path, base, files, prefix, false, o, r, err);
}

/* ---- reading: DCP -> model ---------------------------------------------------------------- */

/* Layer l of a stacked global view, without the leading axis. Uses the chunk directly when the
 * assembled view is a concatenation of one-layer slabs. */
static enum lms_status layer_of(struct lms_view *g, int64_t l, struct lms_view **out,
                                struct lms_error *err)
{
    struct lms_view *slab = NULL;
    enum lms_status rc;
    if (g->kind == LMS_VIEW_CONCAT && g->u.cat.axis == 0) {
        int64_t start = 0;
        for (int i = 0; i < g->u.cat.n_parts; i++) {
            struct lms_view *part = g->u.cat.parts[i];
            if (l < start + part->shape[0]) {
                if (part->shape[0] == 1)
                    slab = lms_view_ref(part);
                else if ((rc = lms_view_new_range(part, 0, l - start, 1, &slab, err)))
                    return rc;
                break;
            }
            start += part->shape[0];
        }
    }
    if (!slab && (rc = lms_view_new_range(g, 0, l, 1, &slab, err)))
        return rc;
    rc = lms_view_new_reshape(slab, g->ndim - 1, g->shape + 1, out, err);
    lms_view_release(slab);
    return rc;
}

struct reader {
    const struct lms_dcp *d;
    const char *prefix;
    bool stacked;
    int64_t L;
};

/* The view of per-layer key suffix (after "decoder.layers.") for layer l, or NULL (absent). */
static enum lms_status get_layer(const struct reader *rd, const char *suffix, int64_t l,
                                 struct lms_view **out, struct lms_error *err)
{
    char key[512];
    *out = NULL;
    if (rd->stacked) {
        snprintf(key, sizeof(key), "%sdecoder.layers.%s", rd->prefix, suffix);
        const struct lms_dcp_tensor *t = lms_dcp_find(rd->d, key);
        if (!t)
            return LMS_OK;
        if (t->ndim < 1 || t->shape[0] != rd->L)
            return lms_error_set(err, LMS_EFORMAT, "'%s' has %lld layers, expected %lld", key,
                                 t->ndim ? (long long)t->shape[0] : 0LL, (long long)rd->L);
        return layer_of(t->view, l, out, err);
    }
    snprintf(key, sizeof(key), "%sdecoder.layers.%lld.%s", rd->prefix, (long long)l, suffix);
    const struct lms_dcp_tensor *t = lms_dcp_find(rd->d, key);
    if (t)
        *out = lms_view_ref(t->view);
    return LMS_OK;
}

static enum lms_status get_global(const struct reader *rd, const char *name,
                                  struct lms_view **out)
{
    char key[512];
    snprintf(key, sizeof(key), "%s%s", rd->prefix, name);
    const struct lms_dcp_tensor *t = lms_dcp_find(rd->d, key);
    *out = t ? lms_view_ref(t->view) : NULL;
    return LMS_OK;
}

static enum lms_status add_role(struct lms_model *m, enum lms_role role, int64_t l,
                                struct lms_view *v, struct lms_error *err)
{
    char name[256];
    if (!lms_role_hf_name(role, l, name, sizeof(name)))
        return lms_error_set(err, LMS_EINVAL, "role without a name");
    enum lms_status rc = lms_model_add(m, name, role, l, v, err);
    lms_view_release(v);
    return rc;
}

/* q, k, v rows of a fused QKV view (§4.2 inverse), as index selections. */
static enum lms_status split_qkv(struct lms_model *m, struct lms_view *f, int64_t l, bool bias,
                                 struct lms_error *err)
{
    const struct lms_arch *a = &m->arch;
    int64_t d = a->head_dim, n_g = a->n_groups, p = a->n_heads / a->n_groups;
    if (f->shape[0] != (p + 2) * n_g * d)
        return lms_error_set(err, LMS_ESHAPE, "layer %lld: fused qkv has %lld rows, expected %lld",
                             (long long)l, (long long)f->shape[0], (long long)((p + 2) * n_g * d));
    int64_t *idx = lms_malloc((size_t)(p * n_g * d) * sizeof(int64_t));
    if (!idx)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    enum lms_status rc = LMS_OK;
    for (int part = 0; part < 3 && !rc; part++) {
        int64_t n = 0;
        for (int64_t g = 0; g < n_g; g++) {
            int64_t blk = g * (p + 2) * d;
            if (part == 0)
                for (int64_t e = 0; e < p * d; e++)
                    idx[n++] = blk + e;
            else
                for (int64_t e = 0; e < d; e++)
                    idx[n++] = blk + (p + part - 1) * d + e;
        }
        struct lms_view *v;
        rc = lms_view_new_select(f, 0, idx, n, &v, err);
        static const enum lms_role w[3] = {LMS_ROLE_Q, LMS_ROLE_K, LMS_ROLE_V};
        static const enum lms_role b[3] = {LMS_ROLE_Q_BIAS, LMS_ROLE_K_BIAS, LMS_ROLE_V_BIAS};
        if (!rc)
            rc = add_role(m, bias ? b[part] : w[part], l, v, err);
    }
    lms_free(idx);
    return rc;
}

/* Finds the key prefix ("module.", "model.", "") from the embedding key. */
static enum lms_status find_prefix(const struct lms_dcp *d, char *dst, size_t dst_cap,
                                   struct lms_error *err)
{
    static const char suffix[] = "embedding.word_embeddings.weight";
    size_t sl = sizeof(suffix) - 1;
    for (size_t i = 0; i < d->n_tensors; i++) {
        const char *k = d->tensors[i].key;
        size_t kl = strlen(k);
        if (kl >= sl && strcmp(k + kl - sl, suffix) == 0 && kl - sl < dst_cap &&
            (kl == sl || k[kl - sl - 1] == '.')) {
            memcpy(dst, k, kl - sl);
            dst[kl - sl] = 0;
            return LMS_OK;
        }
    }
    return lms_error_set(err, LMS_EFORMAT, "no 'embedding.word_embeddings.weight' tensor");
}

/* Fills m's tensors from the checkpoint; m->arch must already hold the config. The structural
 * dims (L, H, F, n_h d, n_g d, padded V) are checked against the tensor shapes. */
static enum lms_status model_from_dcp(const struct lms_dcp *d, struct lms_model *m,
                                      struct lms_error *err)
{
    char prefix[128];
    enum lms_status rc = find_prefix(d, prefix, sizeof(prefix), err);
    if (rc)
        return rc;
    struct lms_arch *a = &m->arch;
    struct reader rd = {.d = d, .prefix = prefix};
    char key[512];
    snprintf(key, sizeof(key), "%sdecoder.layers.self_attention.linear_qkv.weight", prefix);
    const struct lms_dcp_tensor *qkv = lms_dcp_find(d, key);
    if (qkv && qkv->ndim == 3) {
        rd.stacked = true;
        rd.L = qkv->shape[0];
    } else {
        for (rd.L = 0; rd.L < 100000; rd.L++) {
            snprintf(key, sizeof(key), "%sdecoder.layers.%lld.self_attention.linear_qkv.weight",
                     prefix, (long long)rd.L);
            if (!lms_dcp_find(d, key))
                break;
        }
    }
    if (rd.L != a->n_layers)
        return lms_error_set(err, LMS_ESHAPE, "checkpoint has %lld layers, config says %lld",
                             (long long)rd.L, (long long)a->n_layers);
    struct lms_view *v;
    get_global(&rd, "embedding.word_embeddings.weight", &v);
    if (v->ndim != 2 || v->shape[1] != a->hidden || v->shape[0] < a->vocab) {
        lms_view_release(v);
        return lms_error_set(err, LMS_ESHAPE, "embedding shape does not match the config");
    }
    /* §4.3: padded rows beyond the vocabulary are dropped on export */
    if (v->shape[0] > a->vocab) {
        struct lms_view *t;
        rc = lms_view_new_range(v, 0, 0, a->vocab, &t, err);
        lms_view_release(v);
        if (rc)
            return rc;
        v = t;
    }
    a->padded_vocab = a->vocab;
    rc = add_role(m, LMS_ROLE_EMBED, -1, v, err);
    for (int64_t l = 0; l < rd.L && !rc; l++) {
        for (size_t i = 0; i < sizeof(layer_keys) / sizeof(layer_keys[0]) && !rc; i++) {
            rc = get_layer(&rd, layer_keys[i].key, l, &v, err);
            if (!rc && v)
                rc = add_role(m, layer_keys[i].role, l, v, err);
            if (rc || layer_keys[i].role != LMS_ROLE_ATTN_NORM)
                continue;
            rc = get_layer(&rd, "self_attention.linear_qkv.weight", l, &v, err);
            if (!rc && !v)
                rc = lms_error_set(err, LMS_EFORMAT, "layer %lld has no linear_qkv.weight",
                                   (long long)l);
            if (!rc) {
                rc = split_qkv(m, v, l, false, err);
                lms_view_release(v);
            }
            if (!rc)
                rc = get_layer(&rd, "self_attention.linear_qkv.bias", l, &v, err);
            if (!rc && v) {
                rc = split_qkv(m, v, l, true, err);
                lms_view_release(v);
            }
            if (!rc)
                rc = get_layer(&rd, "mlp.linear_fc1.weight", l, &v, err);
            if (!rc && !v)
                rc = lms_error_set(err, LMS_EFORMAT, "layer %lld has no linear_fc1.weight",
                                   (long long)l);
            if (rc)
                continue;
            if (v->ndim != 2 || v->shape[0] != 2 * a->ffn) {
                lms_view_release(v);
                rc = lms_error_set(err, LMS_ESHAPE, "layer %lld: fc1 is not [2F, H]",
                                   (long long)l);
                continue;
            }
            struct lms_view *g, *u;
            rc = lms_view_new_range(v, 0, 0, a->ffn, &g, err);
            if (!rc) {
                rc = add_role(m, LMS_ROLE_GATE, l, g, err);
                if (!rc)
                    rc = lms_view_new_range(v, 0, a->ffn, a->ffn, &u, err);
                if (!rc)
                    rc = add_role(m, LMS_ROLE_UP, l, u, err);
            }
            lms_view_release(v);
        }
    }
    if (!rc) {
        get_global(&rd, "decoder.final_layernorm.weight", &v);
        rc = v ? add_role(m, LMS_ROLE_FINAL_NORM, -1, v, err)
               : lms_error_set(err, LMS_EFORMAT, "no decoder.final_layernorm.weight");
    }
    if (!rc && !a->tie_embeddings) {
        get_global(&rd, "output_layer.weight", &v);
        if (!v)
            return lms_error_set(err, LMS_EFORMAT, "untied model without output_layer.weight");
        if (v->ndim == 2 && v->shape[0] > a->vocab) {
            struct lms_view *t;
            rc = lms_view_new_range(v, 0, 0, a->vocab, &t, err);
            lms_view_release(v);
            if (rc)
                return rc;
            v = t;
        }
        rc = add_role(m, LMS_ROLE_LM_HEAD, -1, v, err);
    }
    if (!rc)
        rc = lms_model_validate(m, err);
    return rc;
}

/* ---- NeMo config: io.json (fiddle), model.yaml --------------------------------------------- */

static const struct {
    enum lms_family family;
    const char *module;      /* nemo.collections.llm.gpt.model.<x> */
    const char *model_cls;
    const char *config_cls;
} nemo_classes[] = {
    {LMS_FAMILY_LLAMA, "nemo.collections.llm.gpt.model.llama", "LlamaModel", "LlamaConfig"},
    {LMS_FAMILY_MISTRAL, "nemo.collections.llm.gpt.model.mistral", "MistralModel",
     "MistralConfig7B"},
    {LMS_FAMILY_QWEN2, "nemo.collections.llm.gpt.model.qwen2", "Qwen2Model", "Qwen2Config"},
    {LMS_FAMILY_QWEN3, "nemo.collections.llm.gpt.model.qwen3", "Qwen3Model", "Qwen3Config"},
};

/* Largest power of two <= 128 dividing v (the Llama importer's choice, §4.3). */
static int64_t vocab_divisor(int64_t v)
{
    int64_t k = 128;
    while (k > 1 && v % k)
        k /= 2;
    return k;
}

/* The model-config fields written to io.json / model.yaml / run_config.yaml, as JSON values. A
 * pyref is written as {"__pyref__": "module:name"}. */
static json_t *config_fields(const struct lms_arch *a)
{
    json_t *c = json_object();
    json_object_set_new(c, "num_layers", json_integer(a->n_layers));
    json_object_set_new(c, "hidden_size", json_integer(a->hidden));
    json_object_set_new(c, "ffn_hidden_size", json_integer(a->ffn));
    json_object_set_new(c, "num_attention_heads", json_integer(a->n_heads));
    json_object_set_new(c, "num_query_groups", json_integer(a->n_groups));
    json_object_set_new(c, "kv_channels", json_integer(a->head_dim));
    json_object_set_new(c, "normalization", json_string("RMSNorm"));
    json_object_set_new(c, "layernorm_epsilon", json_real(a->norm_eps));
    json_object_set_new(c, "gated_linear_unit", json_true());
    json_object_set_new(c, "activation_func",
                        json_pack("{s:s}", "__pyref__", "torch.nn.functional:silu"));
    json_object_set_new(c, "add_bias_linear", json_false());
    json_object_set_new(c, "add_qkv_bias", json_boolean(a->qkv_bias));
    json_object_set_new(c, "qk_layernorm", json_boolean(a->qk_norm));
    json_object_set_new(c, "position_embedding_type", json_string("rope"));
    json_object_set_new(c, "rotary_base", json_real(a->rope.theta));
    json_object_set_new(c, "rotary_percent", json_real(1.0));
    json_object_set_new(c, "seq_length", json_integer(a->max_position));
    json_object_set_new(c, "max_position_embeddings", json_integer(a->max_position));
    json_object_set_new(c, "share_embeddings_and_output_weights",
                        json_boolean(a->tie_embeddings));
    json_object_set_new(c, "vocab_size", json_integer(a->vocab));
    json_object_set_new(c, "make_vocab_size_divisible_by", json_integer(vocab_divisor(a->vocab)));
    if (a->rope.type == LMS_ROPE_LLAMA3) {
        json_object_set_new(c, "scale_factor", json_real(a->rope.factor));
        json_object_set_new(c, "low_freq_factor", json_real(a->rope.low_freq_factor));
        json_object_set_new(c, "high_freq_factor", json_real(a->rope.high_freq_factor));
        json_object_set_new(c, "old_context_len", json_integer(a->rope.original_max_position));
    } else if (a->rope.type == LMS_ROPE_LINEAR) {
        json_object_set_new(c, "seq_len_interpolation_factor", json_real(a->rope.factor));
    }
    if (a->sliding_window > 0)
        json_object_set_new(c, "window_size", json_pack("[I,i]", a->sliding_window, 0));
    const char *tn = lms_dtype_torch_name(a->dtype);
    char ref[64];
    snprintf(ref, sizeof(ref), "torch:%s", tn ? tn : "bfloat16");
    json_object_set_new(c, "params_dtype", json_pack("{s:s}", "__pyref__", ref));
    json_object_set_new(c, "bf16", json_boolean(a->dtype == LMS_DTYPE_BF16));
    json_object_set_new(c, "fp16", json_boolean(a->dtype == LMS_DTYPE_F16));
    return c;
}

/* ---- io.json: the fiddle serialization NeMo's io_dump writes ------------------------------ */

struct fiddle {
    json_t *objects;   /* name -> object node (borrowed from the root) */
    json_t *refcounts; /* name -> 1 (borrowed from the root) */
    int n_tuple, n_dict, n_meta;
};

static json_t *pyref(const char *module, const char *name)
{
    return json_pack("{s:s,s:s,s:s}", "type", "pyref", "module", module, "name", name);
}

static json_t *ref(const char *key)
{
    return json_pack("{s:s,s:s}", "type", "ref", "key", key);
}

static json_t *leaf(json_t *value, const char *path)
{
    return json_pack("{s:s,s:o,s:[s]}", "type", "leaf", "value", value, "paths", path);
}

/* An empty builtins.tuple, written inline (not as a named object), as fiddle does. */
static json_t *empty_tuple(void)
{
    return json_pack("{s:o,s:[],s:n}", "type", pyref("builtins", "tuple"), "items", "metadata");
}

static void add_named(struct fiddle *f, const char *name, json_t *node)
{
    json_object_set_new(f->objects, name, node);
    json_object_set_new(f->refcounts, name, json_integer(1));
}

/* A new empty builtins.dict object (its metadata: the empty tuple of its keys); OUT: name. */
static void add_empty_dict(struct fiddle *f, const char *path, char *name, size_t cap)
{
    snprintf(name, cap, "dict_%d", ++f->n_dict);
    json_t *d = json_pack("{s:o,s:[],s:o}", "type", pyref("builtins", "dict"), "items",
                          "metadata", empty_tuple());
    if (path)
        json_object_set_new(d, "paths", json_pack("[s]", path));
    add_named(f, name, d);
}

/* "Qwen3Config600M" -> "qwen3_config600_m" (fiddle's object names: snake case plus "_<n>"). */
static void snake_case(const char *cls, char *dst, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; cls[i] && o + 2 < cap; i++) {
        char c = cls[i];
        if (c >= 'A' && c <= 'Z') {
            char prev = i ? cls[i - 1] : 0;
            if ((prev >= 'a' && prev <= 'z') || (prev >= '0' && prev <= '9'))
                dst[o++] = '_';
            c = (char)(c - 'A' + 'a');
        }
        dst[o++] = c;
    }
    dst[o] = 0;
}

/* A fiddle Config of module.cls with the given ["Attr(name='x')", node] items (consumed): the
 * argument-name tuple, the two empty dicts and the BuildableTraverserMetadata it refers to, then
 * the Config object itself, named "<snake_case(cls)>_1". OUT: name. */
static void add_config(struct fiddle *f, const char *module, const char *cls, json_t *items,
                       const char *path, char *name, size_t cap)
{
    json_t *names;
    size_t n = json_array_size(items);
    if (n == 0) {
        names = empty_tuple();
    } else {
        json_t *tuple_items = json_array();
        for (size_t i = 0; i < n; i++) {
            const char *attr = json_string_value(json_array_get(json_array_get(items, i), 0));
            char idx[48], argname[128];
            snprintf(idx, sizeof(idx), "Index(index=%zu)", i);
            /* "Attr(name='x')" -> x */
            snprintf(argname, sizeof(argname), "%.*s", (int)strlen(attr) - 13, attr + 11);
            json_array_append_new(tuple_items, json_pack("[s,s]", idx, argname));
        }
        char tname[32];
        snprintf(tname, sizeof(tname), "tuple_%d", ++f->n_tuple);
        add_named(f, tname,
                  json_pack("{s:o,s:o,s:n}", "type", pyref("builtins", "tuple"), "items",
                            tuple_items, "metadata"));
        names = ref(tname);
    }
    char tags[32], hist[32], meta[64];
    add_empty_dict(f, NULL, tags, sizeof(tags));
    add_empty_dict(f, NULL, hist, sizeof(hist));
    snprintf(meta, sizeof(meta), "buildable_traverser_metadata_%d", ++f->n_meta);
    add_named(f, meta,
              json_pack("{s:o,s:[[s,o],[s,o],[s,o],[s,o]],s:o}", "type",
                        pyref("fiddle._src.config", "BuildableTraverserMetadata"), "items",
                        "Attr(name='fn_or_cls')", pyref(module, cls),
                        "Attr(name='argument_names')", names, "Attr(name='argument_tags')",
                        ref(tags), "Attr(name='argument_history')", ref(hist), "metadata",
                        pyref("fiddle._src.config", "BuildableTraverserMetadata")));
    char snake[128];
    snake_case(cls, snake, sizeof(snake));
    snprintf(name, cap, "%s_1", snake);
    add_named(f, name,
              json_pack("{s:o,s:o,s:o,s:[s]}", "type", pyref("fiddle._src.config", "Config"),
                        "items", items, "metadata", ref(meta), "paths", path));
}

/* The NeMo model and config classes of an arch. */
static void nemo_class_of(const struct lms_arch *a, const char **module, const char **model_cls,
                          const char **config_cls)
{
    size_t k = 0;
    while (k + 1 < sizeof(nemo_classes) / sizeof(nemo_classes[0]) &&
           nemo_classes[k].family != a->family)
        k++;
    *module = nemo_classes[k].module;
    *model_cls = nemo_classes[k].model_cls;
    *config_cls = a->family == LMS_FAMILY_LLAMA && a->rope.type == LMS_ROPE_LLAMA3
                      ? "Llama31Config"
                      : nemo_classes[k].config_cls;
}

/* io.json for m: what NeMo's trainer writes into context/ when it saves, TrainerContext(
 * model=<Model>(config=<Config>(...), tokenizer=AutoTokenizer('nemo_tokenizer')),
 * trainer=Trainer(accelerator='auto', strategy=MegatronStrategy(), devices=1), extra={}).
 * Without tokenizer files the model gets no tokenizer argument (NeMo then takes none). */
static json_t *build_io_json(const struct lms_arch *a, bool with_tokenizer)
{
    const char *module, *model_cls, *config_cls;
    nemo_class_of(a, &module, &model_cls, &config_cls);
    struct fiddle f = {.objects = json_object(), .refcounts = json_object()};
    json_t *root = json_pack("{s:o,s:O,s:O,s:s}", "root", ref("trainer_context_1"), "objects",
                             f.objects, "refcounts", f.refcounts, "version", "0.0.1");
    json_decref(f.objects);
    json_decref(f.refcounts);
    json_t *fields = config_fields(a);
    json_t *items = json_array();
    const char *key;
    json_t *val;
    json_object_foreach(fields, key, val)
    {
        char attr[128], path[256];
        snprintf(attr, sizeof(attr), "Attr(name='%s')", key);
        snprintf(path, sizeof(path), "<root>.model.config.%s", key);
        const char *pr = json_string_value(json_object_get(val, "__pyref__"));
        json_t *node;
        if (pr) {
            const char *colon = strchr(pr, ':');
            char mod[128];
            snprintf(mod, sizeof(mod), "%.*s", (int)(colon - pr), pr);
            node = pyref(mod, colon + 1);
            json_object_set_new(node, "paths", json_pack("[s]", path));
        } else {
            node = leaf(json_incref(val), path);
        }
        json_array_append_new(items, json_pack("[s,o]", attr, node));
    }
    json_decref(fields);
    char cfg[128], tok[128], model[128], strategy[128], trainer[128], extra[32], tc[128];
    add_config(&f, module, config_cls, items, "<root>.model.config", cfg, sizeof(cfg));
    json_t *model_items = json_pack("[[s,o]]", "Attr(name='config')", ref(cfg));
    if (with_tokenizer) {
        add_config(&f, "nemo.collections.common.tokenizers.huggingface.auto_tokenizer",
                   "AutoTokenizer",
                   json_pack("[[s,o]]", "Attr(name='pretrained_model_name')",
                             leaf(json_string("nemo_tokenizer"),
                                  "<root>.model.tokenizer.pretrained_model_name")),
                   "<root>.model.tokenizer", tok, sizeof(tok));
        json_array_append_new(model_items, json_pack("[s,o]", "Attr(name='tokenizer')", ref(tok)));
    }
    add_config(&f, module, model_cls, model_items, "<root>.model", model, sizeof(model));
    add_config(&f, "nemo.lightning.pytorch.strategies.megatron_strategy", "MegatronStrategy",
               json_array(), "<root>.trainer.strategy", strategy, sizeof(strategy));
    add_config(&f, "nemo.lightning.pytorch.trainer", "Trainer",
               json_pack("[[s,o],[s,o],[s,o]]", "Attr(name='accelerator')",
                         leaf(json_string("auto"), "<root>.trainer.accelerator"),
                         "Attr(name='strategy')", ref(strategy), "Attr(name='devices')",
                         leaf(json_integer(1), "<root>.trainer.devices")),
               "<root>.trainer", trainer, sizeof(trainer));
    add_empty_dict(&f, "<root>.extra", extra, sizeof(extra));
    add_config(&f, "nemo.lightning.io.pl", "TrainerContext",
               json_pack("[[s,o],[s,o],[s,o]]", "Attr(name='model')", ref(model),
                         "Attr(name='trainer')", ref(trainer), "Attr(name='extra')", ref(extra)),
               "<root>", tc, sizeof(tc));
    return root;
}

/* model.yaml / run_config.yaml text: "<indent>key: value" lines for the config fields. */
static enum lms_status yaml_fields(const struct lms_arch *a, const char *indent,
                                   struct lms_buf_str *out, struct lms_error *err)
{
    json_t *fields = config_fields(a);
    const char *key;
    json_t *val;
    enum lms_status rc = LMS_OK;
    json_object_foreach(fields, key, val)
    {
        const char *pr = json_string_value(json_object_get(val, "__pyref__"));
        if (pr) {
            char dotted[160];
            snprintf(dotted, sizeof(dotted), "%s", pr);
            char *c = strchr(dotted, ':');
            if (c)
                *c = '.';
            rc = lms_buf_str_printf(out, err, "%s%s:\n%s  _target_: %s\n%s  _call_: false\n",
                                    indent, key, indent, dotted, indent);
        } else if (json_is_array(val)) {
            rc = lms_buf_str_printf(out, err, "%s%s: [%lld, %lld]\n", indent, key,
                                    (long long)json_integer_value(json_array_get(val, 0)),
                                    (long long)json_integer_value(json_array_get(val, 1)));
        } else {
            struct lms_buf_str s = {0};
            rc = lms_json_dump(val, LMS_JSON_COMPACT, &s, err);
            const char *e = json_is_real(val) && s.data ? strchr(s.data, 'e') : NULL;
            if (!rc && e && !memchr(s.data, '.', (size_t)(e - s.data))) /* YAML 1.1 float */
                rc = lms_buf_str_printf(out, err, "%s%s: %.*s.0%s\n", indent, key,
                                        (int)(e - s.data), s.data, e);
            else if (!rc)
                rc = lms_buf_str_printf(out, err, "%s%s: %s\n", indent, key,
                                        json_is_true(val)    ? "true"
                                        : json_is_false(val) ? "false"
                                                             : s.data);
            lms_buf_str_release(&s);
        }
        if (rc)
            break;
    }
    json_decref(fields);
    return rc;
}

/* Collects the model-config fields of an io.json: the Attr items of the object whose paths
 * contain "<root>.model.config" (leaf values; pyrefs as "module.name" strings), and the config
 * class name. OUT: *fields (one reference). */
static enum lms_status io_json_fields(const json_t *io, json_t **fields, char *cls,
                                      size_t cls_cap, struct lms_error *err)
{
    const json_t *objects = json_object_get(io, "objects");
    if (!json_is_object(objects))
        return lms_error_set(err, LMS_EFORMAT, "no 'objects' map");
    const char *name;
    const json_t *obj;
    const json_t *cfg = NULL;
    json_object_foreach((json_t *)objects, name, obj)
    {
        const json_t *paths = json_object_get(obj, "paths");
        for (size_t i = 0; i < json_array_size(paths) && !cfg; i++) {
            const char *p = json_string_value(json_array_get(paths, i));
            if (p && strcmp(p, "<root>.model.config") == 0)
                cfg = obj;
        }
        if (cfg)
            break;
    }
    if (!cfg)
        return lms_error_set(err, LMS_EFORMAT, "no object at '<root>.model.config'");
    cls[0] = 0;
    const json_t *meta = json_object_get(cfg, "metadata");
    const char *mkey = json_string_value(json_object_get(meta, "key"));
    const json_t *mobj = mkey ? json_object_get(objects, mkey) : NULL;
    const json_t *mitems = json_object_get(mobj, "items");
    for (size_t i = 0; i < json_array_size(mitems); i++) {
        const json_t *it = json_array_get(mitems, i);
        const char *an = json_string_value(json_array_get(it, 0));
        const json_t *node = json_array_get(it, 1);
        if (an && strcmp(an, "Attr(name='fn_or_cls')") == 0)
            snprintf(cls, cls_cap, "%s", json_string_value(json_object_get(node, "name"))
                                             ? json_string_value(json_object_get(node, "name"))
                                             : "");
    }
    json_t *out = json_object();
    const json_t *items = json_object_get(cfg, "items");
    for (size_t i = 0; i < json_array_size(items); i++) {
        const json_t *it = json_array_get(items, i);
        const char *an = json_string_value(json_array_get(it, 0));
        const json_t *node = json_array_get(it, 1);
        size_t al = an ? strlen(an) : 0;
        if (al < 14 || strncmp(an, "Attr(name='", 11) != 0 || strcmp(an + al - 2, "')") != 0)
            continue;
        char field[128];
        snprintf(field, sizeof(field), "%.*s", (int)(al - 13), an + 11);
        const char *type = json_string_value(json_object_get(node, "type"));
        if (type && strcmp(type, "leaf") == 0) {
            json_object_set(out, field, json_object_get(node, "value"));
        } else if (type && strcmp(type, "pyref") == 0) {
            char s[256];
            snprintf(s, sizeof(s), "%s.%s", json_string_value(json_object_get(node, "module")),
                     json_string_value(json_object_get(node, "name")));
            json_object_set_new(out, field, json_string(s));
        }
    }
    *fields = out;
    return LMS_OK;
}

/* The base config class of the family a NeMo class or Bridge provider name belongs to. */
static const char *family_base_class(const char *cls)
{
    static const struct {
        const char *prefix, *base;
    } bases[] = {
        {"Qwen3", "Qwen3Config"},     {"Qwen2", "Qwen2Config"},     {"Llama31", "Llama31Config"},
        {"Llama32", "Llama31Config"}, {"Llama3", "Llama3Config"},   {"Llama", "LlamaConfig"},
        {"CodeLlama", "LlamaConfig"}, {"Mistral", "MistralConfig7B"},
    };
    for (size_t i = 0; i < sizeof(bases) / sizeof(bases[0]); i++)
        if (strncmp(cls, bases[i].prefix, strlen(bases[i].prefix)) == 0)
            return bases[i].base;
    return NULL;
}

enum lms_status lms__nemo_class_defaults(json_t *f, const char *cls, const char *from,
                                         struct lms_error *err)
{
    json_t *d = lms__nemo_preset_fields(cls);
    if (!d) {
        static const char *const sizes[] = {"num_layers", "hidden_size", "num_attention_heads"};
        for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
            if (json_integer_value(json_object_get(f, sizes[i])) <= 0)
                return lms_error_set(err, LMS_EFORMAT,
                                     "'%s': model config class '%s' is not a preset this tool "
                                     "knows, and %s is not given (no %s)",
                                     from, cls[0] ? cls : "(none)", sizes[i],
                                     strstr(from, "run_config") ? "value in run_config.yaml"
                                                                : "value in io.json or model.yaml");
        /* a class NeMo does not define (a Bridge provider, a user's subclass): only the family's
         * conventions (norm epsilon, RoPE base, head size, biases), never its sizes */
        const char *base = family_base_class(cls);
        d = base ? lms__nemo_preset_fields(base) : NULL;
        static const char *const own_sizes[] = {
            "num_layers",       "hidden_size", "ffn_hidden_size",
            "num_query_groups", "vocab_size",  "share_embeddings_and_output_weights",
            "seq_length",       "max_position_embeddings",
        };
        for (size_t i = 0; d && i < sizeof(own_sizes) / sizeof(own_sizes[0]); i++)
            json_object_del(d, own_sizes[i]);
    }
    if (d && json_object_update_missing(f, d) != 0) {
        json_decref(d);
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    json_decref(d);
    return LMS_OK;
}

/* Megatron/NeMo config fields -> a Hugging Face config.json object, so that one parser (the HF
 * one) turns every source into an arch. Absent fields take the class defaults of §4.4. */
enum lms_status lms__nemo_hf_from_fields(const json_t *f, const char *cls,
                                         const struct lms_dcp *d, json_t **out,
                                         struct lms_error *err)
{
    enum lms_family fam;
    if (strncmp(cls, "Qwen3", 5) == 0)
        fam = LMS_FAMILY_QWEN3;
    else if (strncmp(cls, "Qwen2", 5) == 0)
        fam = LMS_FAMILY_QWEN2;
    else if (strncmp(cls, "Mistral", 7) == 0)
        fam = LMS_FAMILY_MISTRAL;
    else if (strncmp(cls, "Llama", 5) == 0 || strncmp(cls, "CodeLlama", 9) == 0 || cls[0] == 0)
        fam = LMS_FAMILY_LLAMA;
    else
        return lms_error_set(err, LMS_EUNSUPPORTED, "unsupported model config class '%s'", cls);
#define GETI(k) json_integer_value(json_object_get(f, k))
    int64_t nh = GETI("num_attention_heads");
    if (nh <= 0)
        return lms_error_set(err, LMS_EFORMAT, "model config lacks num_attention_heads");
    int64_t H = GETI("hidden_size"), ng = GETI("num_query_groups") ? GETI("num_query_groups") : nh;
    if (H < 0 || H > (INT64_C(1) << 40)) /* before 4 * H below; the HF parser bounds it later */
        return lms_error_set(err, LMS_EFORMAT, "model config: hidden_size %lld is out of range",
                             (long long)H);
    int64_t hd = GETI("kv_channels");
    if (!hd)
        hd = fam == LMS_FAMILY_QWEN3 ? 128 : (H / nh);
    json_t *c = json_object();
    json_object_set_new(c, "architectures",
                        json_pack("[s]", lms_family_hf_class(fam)));
    json_object_set_new(c, "model_type", json_string(lms_family_name(fam)));
    json_object_set_new(c, "hidden_size", json_integer(H));
    json_object_set_new(c, "intermediate_size",
                        json_integer(GETI("ffn_hidden_size") ? GETI("ffn_hidden_size") : 4 * H));
    json_object_set_new(c, "num_hidden_layers", json_integer(GETI("num_layers")));
    json_object_set_new(c, "num_attention_heads", json_integer(nh));
    json_object_set_new(c, "num_key_value_heads", json_integer(ng));
    json_object_set_new(c, "head_dim", json_integer(hd));
    const json_t *eps = json_object_get(f, "layernorm_epsilon");
    json_object_set_new(c, "rms_norm_eps",
                        json_real(json_is_number(eps) ? json_number_value(eps)
                                  : fam == LMS_FAMILY_QWEN3 ? 1e-6 : 1e-5));
    const json_t *rb = json_object_get(f, "rotary_base");
    json_object_set_new(c, "rope_theta", json_real(json_is_number(rb) ? json_number_value(rb)
                                                   : fam == LMS_FAMILY_QWEN3 ? 1000000.0
                                                                             : 10000.0));
    int64_t maxpos = GETI("max_position_embeddings") ? GETI("max_position_embeddings")
                                                     : GETI("seq_length");
    json_object_set_new(c, "max_position_embeddings", json_integer(maxpos ? maxpos : 4096));
    /* tie: the output layer decides (a tied checkpoint has none) */
    char key[512] = "";
    for (size_t i = 0; i < d->n_tensors; i++) {
        const char *k = d->tensors[i].key;
        size_t kl = strlen(k);
        if (kl >= 19 && strcmp(k + kl - 19, "output_layer.weight") == 0)
            snprintf(key, sizeof(key), "%s", k);
    }
    json_object_set_new(c, "tie_word_embeddings", json_boolean(key[0] == 0));
    int64_t V = GETI("vocab_size");
    if (V <= 0) {
        for (size_t i = 0; i < d->n_tensors; i++) {
            const char *k = d->tensors[i].key;
            size_t kl = strlen(k);
            if (kl >= 32 && strcmp(k + kl - 32, "embedding.word_embeddings.weight") == 0)
                V = d->tensors[i].shape[0];
        }
    }
    json_object_set_new(c, "vocab_size", json_integer(V));
    const json_t *sf = json_object_get(f, "scale_factor");
    if (json_is_number(sf) || strcmp(cls, "Llama31Config") == 0 ||
        strncmp(cls, "Llama31", 7) == 0) {
        json_t *rs = json_object();
        json_object_set_new(rs, "rope_type", json_string("llama3"));
        json_object_set_new(rs, "factor", json_real(json_is_number(sf) ? json_number_value(sf)
                                                                         : 8.0));
        const json_t *lf = json_object_get(f, "low_freq_factor"),
                     *hf = json_object_get(f, "high_freq_factor");
        json_object_set_new(rs, "low_freq_factor",
                            json_real(json_is_number(lf) ? json_number_value(lf) : 1.0));
        json_object_set_new(rs, "high_freq_factor",
                            json_real(json_is_number(hf) ? json_number_value(hf) : 4.0));
        json_object_set_new(rs, "original_max_position_embeddings",
                            json_integer(GETI("old_context_len") ? GETI("old_context_len")
                                                                 : 8192));
        json_object_set_new(c, "rope_scaling", rs);
    }
    const json_t *ws = json_object_get(f, "window_size"); /* [left, right]: Mistral's window */
    if (json_is_array(ws) && json_integer_value(json_array_get(ws, 0)) > 0)
        json_object_set_new(c, "sliding_window",
                            json_integer(json_integer_value(json_array_get(ws, 0))));
    const char *pd = json_string_value(json_object_get(f, "params_dtype"));
    json_object_set_new(c, "torch_dtype",
                        json_string(pd && strncmp(pd, "torch.", 6) == 0 ? pd + 6 : "bfloat16"));
    if (fam == LMS_FAMILY_LLAMA)
        json_object_set_new(c, "attention_bias",
                            json_boolean(json_is_true(json_object_get(f, "add_qkv_bias"))));
#undef GETI
    *out = c;
    return LMS_OK;
}

/* ---- aux files ---------------------------------------------------------------------------- */

/* Adds the known HF side files found in dir to m, in lms_hf_aux_files order. */
static enum lms_status add_aux_from(struct lms_model *m, const char *dir, struct lms_error *err)
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

static enum lms_status write_json_file(const char *path, const json_t *v, unsigned style,
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
    enum lms_status rc = lms_hf_config_build(a, m->hf_config, &c, err);
    if (rc)
        return rc;
    rc = write_json_file(path, c, LMS_JSON_INDENT2, err);
    json_decref(c);
    return rc;
}

/* The files every NeMo/Megatron output carries beside the weights: our hf_config.json (exact
 * HF round trips) in config_dir and the tokenizer/generation files in tokenizer_dir. */
static enum lms_status write_sidecars(const struct lms_model *m, const struct lms_arch *a,
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

static enum lms_status make_dir(const char *path, struct lms_error *err)
{
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return lms_error_set(err, LMS_EIO, "creating '%s': %s", path, strerror(errno));
    return LMS_OK;
}

enum lms_status lms__nemo_model_read(const struct lms_dcp *d, json_t *hf, const char *fmt_name,
                                     struct lms_model *m, struct lms_error *err)
{
    m->hf_config = hf;
    enum lms_status rc = lms_hf_config_parse(hf, &m->arch, err);
    if (rc)
        return lms_error_wrap(err, "model config: ");
    rc = model_from_dcp(d, m, err);
    if (!rc) {
        m->source_format = lms_strdup(fmt_name);
        if (!m->source_format)
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    return rc;
}

/* Shared reading tail: arch from an HF config object (consumed), then tensors. */
static enum lms_status finish_read(const char *weights, json_t *hf, const char *fmt_name,
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

static enum lms_status load_hf_config_if(const char *path, json_t **out, struct lms_error *err)
{
    *out = NULL;
    if (!is_file(path))
        return LMS_OK;
    return lms_json_load_file(path, JSON_MAX_BYTES, out, err);
}

/* ---- the "nemo" format -------------------------------------------------------------------- */

static int nemo_probe(const char *path)
{
    if (has(path, "context/io.json") && has(path, "weights"))
        return 95;
    if (has(path, "context") && has(path, "weights/metadata.json"))
        return 80;
    return 0;
}

enum lms_status lms__nemo_context_fields(const char *context, json_t **out, char *cls,
                                        size_t cls_cap, struct lms_error *err)
{
    char p[PATH_MAX], ycls[128];
    json_t *io, *fields = NULL;
    *out = NULL;
    if (!join(p, sizeof(p), context, "io.json"))
        return lms_error_set(err, LMS_EINVAL, "path too long");
    enum lms_status rc = lms_json_load_file(p, JSON_MAX_BYTES, &io, err);
    if (rc)
        return rc;
    rc = io_json_fields(io, &fields, cls, cls_cap, err);
    json_decref(io);
    if (rc)
        return lms_error_wrap(err, "'%s': ", p);
    join(p, sizeof(p), context, "model.yaml");
    if (is_file(p)) {
        struct lms_storage *y;
        json_t *yf = NULL;
        rc = lms_storage_map_file(p, &y, err);
        if (!rc) {
            rc = lms__nemo_yaml_fields(y->base, y->size, "config", &yf, ycls, sizeof(ycls), err);
            lms_storage_release(y);
        }
        if (!rc && json_object_update_missing(fields, yf) != 0)
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
        json_decref(yf);
        if (!rc && !cls[0])
            snprintf(cls, cls_cap, "%s", ycls);
    } else {
        join(p, sizeof(p), context, "io.json");
    }
    if (!rc)
        rc = lms__nemo_class_defaults(fields, cls, p, err);
    if (rc)
        json_decref(fields);
    else
        *out = fields;
    return rc;
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

static enum lms_status nemo_read(const char *path, const struct lms_read_opts *opts,
                                 struct lms_model *m, struct lms_error *err)
{
    (void)opts;
    lms_model_init(m);
    char p[PATH_MAX], weights[PATH_MAX];
    json_t *hf = NULL;
    if (!join(p, sizeof(p), path, "context/io.json") || !is_file(p))
        return lms_error_set(err, LMS_EFORMAT, "'%s': no context/io.json (not a NeMo 2 "
                             "checkpoint, or an incomplete one)", path);
    if (!join(weights, sizeof(weights), path, "weights") || !is_dir(weights))
        snprintf(weights, sizeof(weights), "%s", path); /* early NeMo 2: weights at the top */
    join(p, sizeof(p), path, "context/hf_config.json");
    enum lms_status rc = load_hf_config_if(p, &hf, err);
    if (rc)
        return rc;
    if (!hf) {
        rc = nemo_context_hf(path, weights, &hf, err);
        if (rc)
            return rc;
    }
    rc = finish_read(weights, hf, "nemo", m, err);
    if (!rc && join(p, sizeof(p), path, "context/nemo_tokenizer"))
        rc = add_aux_from(m, p, err);
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
    struct lms_arch a = m->arch;
    if (o->dtype != LMS_DTYPE_COUNT)
        a.dtype = o->dtype;
    enum lms_status rc = lms_model_validate(m, err);
    if (rc)
        return rc;
    struct lms_outdir od;
    rc = lms_outdir_begin(path, o->force, &od, err);
    if (rc)
        return rc;
    char p[PATH_MAX];
    const char *dirs[] = {"context", "context/nemo_tokenizer", "weights"};
    for (size_t i = 0; i < 3 && !rc; i++) {
        rc = lms_outdir_path(&od, dirs[i], p, sizeof(p), err);
        if (!rc)
            rc = make_dir(p, err);
    }
    if (!rc)
        rc = lms_outdir_path(&od, "weights", p, sizeof(p), err);
    if (!rc)
        rc = write_weights(m, p, "module.", false, o, &r, err);
    if (!rc) {
        json_t *io = build_io_json(&a, has_tokenizer(m));
        rc = lms_outdir_path(&od, "context/io.json", p, sizeof(p), err);
        if (!rc)
            rc = write_json_file(p, io, LMS_JSON_INDENT2, err);
        json_decref(io);
    }
    if (!rc) {
        struct lms_buf_str y = {0};
        const char *module, *model_cls, *config_cls;
        nemo_class_of(&a, &module, &model_cls, &config_cls);
        rc = lms_buf_str_printf(&y, err, "_target_: %s.%s\nconfig:\n  _target_: %s.%s\n", module,
                                model_cls, module, config_cls);
        if (!rc)
            rc = yaml_fields(&a, "  ", &y, err);
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
        rc = write_sidecars(m, &a, &od, "context", "context/nemo_tokenizer", &r, err);
    if (rc) {
        lms_outdir_abort(&od);
        return rc;
    }
    rc = lms_outdir_commit(&od, err);
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

/* ---- the "megatron" format (Megatron-Bridge / Megatron-LM iter_N) ------------------------- */

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

/* Scalar YAML value text -> JSON (true/false/null, integers, floats, quoted or plain strings,
 * and flow lists of those: "[4096, 0]"). */
static json_t *yaml_scalar(const char *v)
{
    size_t n = strlen(v);
    if (n >= 2 && v[0] == '[' && v[n - 1] == ']') {
        json_t *a = json_array();
        char item[256];
        for (size_t at = 1; a && at < n - 1;) {
            size_t e = at;
            while (e < n - 1 && v[e] != ',')
                e++;
            size_t s0 = at, s1 = e;
            while (s0 < s1 && v[s0] == ' ')
                s0++;
            while (s1 > s0 && v[s1 - 1] == ' ')
                s1--;
            if (s1 > s0) {
                snprintf(item, sizeof(item), "%.*s", (int)(s1 - s0), v + s0);
                json_array_append_new(a, yaml_scalar(item));
            }
            at = e + 1;
        }
        return a;
    }
    if (n >= 2 && (v[0] == '\'' || v[0] == '"') && v[n - 1] == v[0])
        return json_stringn(v + 1, n - 2);
    if (strcmp(v, "true") == 0 || strcmp(v, "True") == 0)
        return json_true();
    if (strcmp(v, "false") == 0 || strcmp(v, "False") == 0)
        return json_false();
    if (strcmp(v, "null") == 0 || strcmp(v, "~") == 0 || n == 0)
        return json_null();
    char *end;
    errno = 0;
    long long i = strtoll(v, &end, 10);
    if (end != v && !*end && !errno)
        return json_integer(i);
    double dv = strtod(v, &end);
    return end != v && !*end ? json_real(dv) : json_string(v);
}

/* A "key:" line opening a nested block: what the block turns out to hold. */
struct yaml_pending {
    char key[128];      /* "" when no block is open */
    char target[256];   /* its "_target_" */
    bool call;          /* "_call_: true": an object built by a call, not a symbol */
    json_t *list;       /* its "- item" lines */
};

/* Closes the open block: a list of scalars becomes an array; a "{_target_: x, _call_: false}"
 * block (how NeMo and Bridge write dtypes and functions, e.g. params_dtype: torch.float32)
 * becomes the string "x"; any other block is skipped. */
static enum lms_status yaml_flush(struct yaml_pending *pb, json_t *o, struct lms_error *err)
{
    int rc = 0;
    if (pb->key[0] && pb->list)
        rc = json_object_set(o, pb->key, pb->list);
    else if (pb->key[0] && pb->target[0] && !pb->call)
        rc = json_object_set_new(o, pb->key, json_string(pb->target));
    json_decref(pb->list);
    memset(pb, 0, sizeof(*pb));
    return rc ? lms_error_set(err, LMS_ENOMEM, "out of memory") : LMS_OK;
}

enum lms_status lms__nemo_yaml_fields(const char *text, size_t len, const char *section,
                                      json_t **out, char *cls, size_t cls_cap,
                                      struct lms_error *err)
{
    json_t *o = json_object();
    if (!o)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    size_t indent = section ? 2 : 0;
    bool in_section = !section;
    struct yaml_pending pb = {0};
    enum lms_status rc = LMS_OK;
    cls[0] = 0;
    char line[1024];
    for (size_t at = 0; at < len && !rc;) {
        const char *nl = memchr(text + at, '\n', len - at);
        size_t ll = nl ? (size_t)(nl - (text + at)) : len - at;
        snprintf(line, sizeof(line), "%.*s", (int)(ll < sizeof(line) ? ll : sizeof(line) - 1),
                 text + at);
        at += ll + 1;
        line[strcspn(line, "\r")] = 0;
        size_t sp = strspn(line, " ");
        if (!line[sp] || line[sp] == '#')
            continue;
        if (section && sp == 0) {
            rc = yaml_flush(&pb, o, err);
            char want[128];
            snprintf(want, sizeof(want), "%s:", section);
            in_section = strcmp(line, want) == 0;
            continue;
        }
        if (!in_section || sp < indent)
            continue;
        if (pb.key[0] && sp == indent && line[sp] == '-') { /* "- item" of the open key */
            if (!pb.list)
                pb.list = json_array();
            const char *v = line + sp + 1;
            v += strspn(v, " ");
            json_array_append_new(pb.list, yaml_scalar(v));
            continue;
        }
        char *colon = strchr(line + sp, ':');
        if (!colon || (colon[1] != ' ' && colon[1] != 0))
            continue;
        *colon = 0;
        const char *k = line + sp, *v = colon[1] ? colon + 2 : colon + 1;
        v += strspn(v, " ");
        if (sp > indent) { /* inside the open block: only its own _target_/_call_ matter */
            if (pb.key[0] && sp == indent + 2 && strcmp(k, "_target_") == 0)
                snprintf(pb.target, sizeof(pb.target), "%s", v);
            else if (pb.key[0] && sp == indent + 2 && strcmp(k, "_call_") == 0)
                pb.call = strcmp(v, "true") == 0 || strcmp(v, "True") == 0;
            continue;
        }
        rc = yaml_flush(&pb, o, err);
        if (rc)
            break;
        if (!*v) { /* a nested block or a block list follows */
            snprintf(pb.key, sizeof(pb.key), "%s", k);
            continue;
        }
        if (strcmp(k, "_target_") == 0) {
            const char *dot = strrchr(v, '.');
            snprintf(cls, cls_cap, "%s", dot ? dot + 1 : v);
            continue;
        }
        json_t *val = yaml_scalar(v);
        if (!val || json_object_set_new(o, k, val) != 0)
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    if (!rc)
        rc = yaml_flush(&pb, o, err);
    json_decref(pb.list);
    if (rc) {
        json_decref(o);
        return rc;
    }
    *out = o;
    return LMS_OK;
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
    return rc;
}

static enum lms_status megatron_read(const char *path, const struct lms_read_opts *opts,
                                     struct lms_model *m, struct lms_error *err)
{
    (void)opts;
    lms_model_init(m);
    char dir[PATH_MAX], p[PATH_MAX];
    enum lms_status rc = iter_dir(path, dir, sizeof(dir), err);
    if (rc)
        return rc;
    json_t *hf = NULL;
    join(p, sizeof(p), dir, "hf_config.json");
    rc = load_hf_config_if(p, &hf, err);
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
    rc = finish_read(dir, hf, "megatron", m, err);
    if (!rc && join(p, sizeof(p), dir, "tokenizer"))
        rc = add_aux_from(m, p, err);
    if (rc)
        lms_model_release(m);
    return rc;
}

/* train_state.pt / latest_train_state.pt (§5.1): torch.save of a dict of 0-d tensors, the
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
    struct lms_arch a = m->arch;
    if (o->dtype != LMS_DTYPE_COUNT)
        a.dtype = o->dtype;
    enum lms_status rc = lms_model_validate(m, err);
    if (rc)
        return rc;
    struct lms_outdir od;
    rc = lms_outdir_begin(path, o->force, &od, err);
    if (rc)
        return rc;
    char p[PATH_MAX];
    const char *dirs[] = {"iter_0000000", "iter_0000000/tokenizer"};
    for (size_t i = 0; i < 2 && !rc; i++) {
        rc = lms_outdir_path(&od, dirs[i], p, sizeof(p), err);
        if (!rc)
            rc = make_dir(p, err);
    }
    if (!rc)
        rc = lms_outdir_path(&od, "iter_0000000", p, sizeof(p), err);
    if (!rc)
        rc = write_weights(m, p, "", true, o, &r, err);
    if (!rc) {
        /* §5.1 [unconfirmed minimal content]: the model fields Bridge's provider takes */
        struct lms_buf_str y = {0};
        size_t k = 0;
        while (nemo_classes[k].family != a.family)
            k++;
        static const char *const prov[] = {
            "llama.llama_provider.LlamaModelProvider",
            "mistral.mistral_provider.MistralModelProvider",
            "qwen.qwen_provider.Qwen2ModelProvider",
            "qwen.qwen_provider.Qwen3ModelProvider",
        };
        rc = lms_buf_str_printf(&y, err, "model:\n  _target_: megatron.bridge.models.%s\n",
                                prov[a.family]);
        if (!rc)
            rc = yaml_fields(&a, "  ", &y, err);
        /* the parallel layout and checkpoint options the Bridge loader reads (§5.1) */
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
        rc = write_sidecars(m, &a, &od, "iter_0000000", "iter_0000000/tokenizer", &r, err);
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
    if (rc) {
        lms_outdir_abort(&od);
        return rc;
    }
    rc = lms_outdir_commit(&od, err);
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
