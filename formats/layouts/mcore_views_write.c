/* The Hugging Face -> Megatron-Core direction of the tensor mapping: every tensor of a model
 * becomes a chunk of a torch_dist key, as IR views. Per-layer tensors are stacked along a leading
 * layer axis, q/k/v are fused into linear_qkv (per query group: its query heads, then its key and
 * value head), gate and up into linear_fc1, and every module gets its _extra_state bytes item.
 * The fused tensors are concatenations of views, so they are produced chunk by chunk while the
 * data file streams out (lms_dcp_write).
 *
 * Legend: L layers, H hidden, F FFN width, n_h query heads, n_g query groups, d head dim,
 * p = n_h / n_g, V vocabulary rows. */
#include <stdio.h>
#include <string.h>

#include "formats/layouts/nemo_impl.h"
#include "lms/alloc.h"
#include "lms/format.h"

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

/* The fused QKV rows of one layer as Megatron lays them out: per group g, p query heads, then
 * key head g, then value head g. */
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
                bias ? LMS_MCORE_LAYERS LMS_MCORE_QKV_BIAS
                     : LMS_MCORE_LAYERS LMS_MCORE_QKV_WEIGHT,
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

/* fc1 = [gate; up], two chunks per layer at rows 0 and F, as Megatron saves it. */
static enum lms_status plan_fc1(struct plan *p, const struct lms_model *m, const char *prefix,
                                struct lms_error *err)
{
    const struct lms_arch *a = &m->arch;
    int64_t shape[3] = {a->n_layers, 2 * a->ffn, a->hidden};
    struct lms_view *g0 = need(m, LMS_ROLE_GATE, 0);
    if (!g0)
        return lms_error_set(err, LMS_EFORMAT, "no gate tensor for layer 0");
    struct lms_dcp_w_tensor *t;
    enum lms_status rc = new_key(p, prefix, LMS_MCORE_LAYERS LMS_MCORE_FC1_WEIGHT, 3, shape,
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

/* The _extra_state bytes items of every module Megatron-Core gives one (a superset of what any
 * one version writes; loaders ignore the extra ones), with the layer count in every stacked key. */
static enum lms_status plan_extra_state(struct plan *p, const struct lms_model *m,
                                        const char *prefix, struct lms_error *err)
{
    enum lms_status rc = lms_dcp_extra_state_payload(&p->extra, &p->extra_len, err);
    char name[512];
    size_t n_mod = LMS_ARCH_MCORE_N_EXTRA_STATE;
    if (!m->arch.qk_norm)
        n_mod -= 2;
    for (size_t i = 0; i < n_mod && !rc; i++)
        for (int64_t l = 0; l < m->arch.n_layers && !rc; l++) {
            snprintf(name, sizeof(name), "%s" LMS_MCORE_LAYERS "%s._extra_state/shard_%lld_%lld",
                     prefix, lms_arch_mcore_extra_state[i], (long long)l,
                     (long long)m->arch.n_layers);
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
    enum lms_status rc = plan_global(p, m, prefix, LMS_MCORE_EMBED,
                                     LMS_ROLE_EMBED, err);
    for (size_t i = 0; i < LMS_ARCH_MCORE_N_LAYER_KEYS && !rc; i++) {
        if (!a->qk_norm &&
            (lms_arch_mcore_layer_keys[i].role == LMS_ROLE_Q_NORM ||
             lms_arch_mcore_layer_keys[i].role == LMS_ROLE_K_NORM))
            continue;
        char key[256];
        snprintf(key, sizeof(key), LMS_MCORE_LAYERS "%s", lms_arch_mcore_layer_keys[i].key);
        rc = plan_stacked(p, m, prefix, key, lms_arch_mcore_layer_keys[i].role, err);
        if (!rc && lms_arch_mcore_layer_keys[i].role == LMS_ROLE_ATTN_NORM) {
            rc = plan_qkv(p, m, prefix, false, err);
            if (!rc && a->qkv_bias)
                rc = plan_qkv(p, m, prefix, true, err);
        }
        if (!rc && lms_arch_mcore_layer_keys[i].role == LMS_ROLE_MLP_NORM)
            rc = plan_fc1(p, m, prefix, err);
    }
    if (!rc)
        rc = plan_global(p, m, prefix, LMS_MCORE_FINAL_NORM, LMS_ROLE_FINAL_NORM,
                         err);
    if (!rc && !a->tie_embeddings)
        rc = plan_global(p, m, prefix, LMS_MCORE_OUTPUT, LMS_ROLE_LM_HEAD, err);
    if (!rc)
        rc = plan_extra_state(p, m, prefix, err);
    return rc;
}

/* common.pt: the small dict of plain values Megatron saves beside the tensors. */
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

enum lms_status lms__nemo_write_weights(const struct lms_model *m, const char *dir,
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
