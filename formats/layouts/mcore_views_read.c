/* The Megatron-Core -> Hugging Face direction of the tensor mapping: every IR tensor of a model
 * read from a torch_dist checkpoint is a view over the mapped data files. One layer of a stacked
 * key is a range of the assembled global view, q/k/v are row selections of the fused linear_qkv
 * (per query group: its query heads, then its key and value head), gate/up are the two halves of
 * linear_fc1, and padded vocabulary rows are dropped.
 *
 * Legend: L layers, H hidden, F FFN width, n_h query heads, n_g query groups, d head dim,
 * p = n_h / n_g, V vocabulary rows. */
#include <stdio.h>
#include <string.h>

#include "formats/layouts/nemo_impl.h"
#include "lms/alloc.h"
#include "lms/hf.h"

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
        snprintf(key, sizeof(key), "%s" LMS_MCORE_LAYERS "%s", rd->prefix, suffix);
        const struct lms_dcp_tensor *t = lms_dcp_find(rd->d, key);
        if (!t)
            return LMS_OK;
        if (t->ndim < 1 || t->shape[0] != rd->L)
            return lms_error_set(err, LMS_EFORMAT, "'%s' has %lld layers, expected %lld", key,
                                 t->ndim ? (long long)t->shape[0] : 0LL, (long long)rd->L);
        return layer_of(t->view, l, out, err);
    }
    snprintf(key, sizeof(key), "%s" LMS_MCORE_LAYERS "%lld.%s", rd->prefix, (long long)l, suffix);
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

/* q, k, v rows of a fused QKV view (the inverse of fuse_qkv in mcore_views_write.c), as index
 * selections. */
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
    static const char suffix[] = LMS_MCORE_EMBED;
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
    return lms_error_set(err, LMS_EFORMAT, "no '" LMS_MCORE_EMBED "' tensor");
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
    snprintf(key, sizeof(key), "%s" LMS_MCORE_LAYERS LMS_MCORE_QKV_WEIGHT, prefix);
    const struct lms_dcp_tensor *qkv = lms_dcp_find(d, key);
    if (qkv && qkv->ndim == 3) {
        rd.stacked = true;
        rd.L = qkv->shape[0];
    } else {
        for (rd.L = 0; rd.L < 100000; rd.L++) {
            snprintf(key, sizeof(key), "%s" LMS_MCORE_LAYERS "%lld." LMS_MCORE_QKV_WEIGHT,
                     prefix, (long long)rd.L);
            if (!lms_dcp_find(d, key))
                break;
        }
    }
    if (rd.L != a->n_layers)
        return lms_error_set(err, LMS_ESHAPE, "checkpoint has %lld layers, config says %lld",
                             (long long)rd.L, (long long)a->n_layers);
    struct lms_view *v;
    get_global(&rd, LMS_MCORE_EMBED, &v);
    if (v->ndim != 2 || v->shape[1] != a->hidden || v->shape[0] < a->vocab) {
        lms_view_release(v);
        return lms_error_set(err, LMS_ESHAPE, "embedding shape does not match the config");
    }
    /* padded rows beyond the vocabulary are dropped on export */
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
        for (size_t i = 0; i < LMS_ARCH_MCORE_N_LAYER_KEYS && !rc; i++) {
            rc = get_layer(&rd, lms_arch_mcore_layer_keys[i].key, l, &v, err);
            if (!rc && v)
                rc = add_role(m, lms_arch_mcore_layer_keys[i].role, l, v, err);
            if (rc || lms_arch_mcore_layer_keys[i].role != LMS_ROLE_ATTN_NORM)
                continue;
            rc = get_layer(&rd, LMS_MCORE_QKV_WEIGHT, l, &v, err);
            if (!rc && !v)
                rc = lms_error_set(err, LMS_EFORMAT, "layer %lld has no linear_qkv.weight",
                                   (long long)l);
            if (!rc) {
                rc = split_qkv(m, v, l, false, err);
                lms_view_release(v);
            }
            if (!rc)
                rc = get_layer(&rd, LMS_MCORE_QKV_BIAS, l, &v, err);
            if (!rc && v) {
                rc = split_qkv(m, v, l, true, err);
                lms_view_release(v);
            }
            if (!rc)
                rc = get_layer(&rd, LMS_MCORE_FC1_WEIGHT, l, &v, err);
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
        get_global(&rd, LMS_MCORE_FINAL_NORM, &v);
        rc = v ? add_role(m, LMS_ROLE_FINAL_NORM, -1, v, err)
               : lms_error_set(err, LMS_EFORMAT, "no " LMS_MCORE_FINAL_NORM);
    }
    if (!rc && !a->tie_embeddings) {
        get_global(&rd, LMS_MCORE_OUTPUT, &v);
        if (!v)
            return lms_error_set(err, LMS_EFORMAT, "untied model without " LMS_MCORE_OUTPUT);
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
