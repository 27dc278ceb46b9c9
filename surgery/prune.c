/* Applying a prune plan: views and config, no arithmetic on weights
 * (include/lms/surgery.h).
 *
 * Which kept set selects each role's rows and columns is the slicing table of lms/arch.h
 * (lms_arch_role_axes): hidden channels, FFN neurons, or the d rows of each kept head or group.
 * Column selections are applied first, directly over the stored rows, so that materialising
 * gathers each output row in one pass. */
#include <string.h>

#include <jansson.h>

#include "lms/alloc.h"
#include "lms/arch.h"
#include "lms/surgery.h"

void lms_prune_plan_init(struct lms_prune_plan *p, int64_t n_layers)
{
    memset(p, 0, sizeof(*p));
    p->n_layers_in = n_layers;
}

static void free_per_layer(struct lms_keep *k, int64_t n)
{
    if (!k)
        return;
    for (int64_t i = 0; i < n; i++)
        lms_free(k[i].index);
    lms_free(k);
}

void lms_prune_plan_release(struct lms_prune_plan *p)
{
    lms_free(p->layers.index);
    lms_free(p->hidden.index);
    free_per_layer(p->ffn, p->n_layers_in);
    free_per_layer(p->groups, p->n_layers_in);
    free_per_layer(p->heads, p->n_layers_in);
    memset(p, 0, sizeof(*p));
}

/* A keep list must be non-empty, strictly ascending and inside [0, limit). */
static enum lms_status check_keep(const struct lms_keep *k, int64_t limit, const char *what,
                                  struct lms_error *err)
{
    if (k->n < 1)
        return lms_error_set(err, LMS_EINVAL, "%s: nothing kept", what);
    if (k->n > limit)
        return lms_error_set(err, LMS_EINVAL, "%s: %lld kept but only %lld exist", what,
                             (long long)k->n, (long long)limit);
    for (int64_t i = 0; i < k->n; i++) {
        if (k->index[i] < 0 || k->index[i] >= limit)
            return lms_error_set(err, LMS_EINVAL, "%s: index %lld is outside 0..%lld", what,
                                 (long long)k->index[i], (long long)limit - 1);
        if (i && k->index[i] <= k->index[i - 1])
            return lms_error_set(err, LMS_EINVAL, "%s: indices are not strictly ascending", what);
    }
    return LMS_OK;
}

/* Expands unit indices (heads or groups) into their d rows each. */
static int64_t *expand(const struct lms_keep *k, int64_t d)
{
    int64_t *rows = lms_malloc((size_t)(k->n * d) * sizeof(int64_t));
    if (!rows)
        return NULL;
    for (int64_t i = 0; i < k->n; i++)
        for (int64_t e = 0; e < d; e++)
            rows[i * d + e] = k->index[i] * d + e;
    return rows;
}

/* The per-layer index sets actually used for one kept layer. */
struct layer_sel {
    const struct lms_keep *ffn;    /* NULL: all */
    struct lms_keep heads;         /* always filled (all heads when not pruned); owned */
    struct lms_keep groups;        /* always filled; owned */
};

/* Derives the kept heads and groups of layer l, checking r' heads in every kept group. */
static enum lms_status layer_heads(const struct lms_prune_plan *p, const struct lms_arch *a,
                                   int64_t l, int64_t *r_keep, struct layer_sel *s,
                                   struct lms_error *err)
{
    int64_t r = a->n_heads / a->n_groups;
    char what[96];
    memset(&s->heads, 0, sizeof(s->heads));
    memset(&s->groups, 0, sizeof(s->groups));
    const struct lms_keep *g = p->groups ? &p->groups[l] : NULL;
    const struct lms_keep *h = p->heads ? &p->heads[l] : NULL;
    if (g) {
        snprintf(what, sizeof(what), "layer %lld query groups", (long long)l);
        enum lms_status rc = check_keep(g, a->n_groups, what, err);
        if (rc)
            return rc;
    }
    if (h) {
        snprintf(what, sizeof(what), "layer %lld heads", (long long)l);
        enum lms_status rc = check_keep(h, a->n_heads, what, err);
        if (rc)
            return rc;
    }
    int64_t ng = g ? g->n : a->n_groups;
    s->groups.n = ng;
    s->groups.index = lms_malloc((size_t)ng * sizeof(int64_t));
    if (!s->groups.index)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    for (int64_t i = 0; i < ng; i++)
        s->groups.index[i] = g ? g->index[i] : i;
    if (!h) { /* every head of every kept group */
        s->heads.n = ng * r;
        s->heads.index = lms_malloc((size_t)(ng * r) * sizeof(int64_t));
        if (!s->heads.index)
            return lms_error_set(err, LMS_ENOMEM, "out of memory");
        for (int64_t i = 0; i < ng; i++)
            for (int64_t j = 0; j < r; j++)
                s->heads.index[i * r + j] = s->groups.index[i] * r + j;
        *r_keep = r;
        return LMS_OK;
    }
    /* every head must belong to a kept group, and every kept group keep the same count */
    if (h->n % ng)
        return lms_error_set(err, LMS_EINVAL,
                             "layer %lld: %lld heads cannot be spread evenly over %lld query groups",
                             (long long)l, (long long)h->n, (long long)ng);
    int64_t rk = h->n / ng;
    for (int64_t gi = 0; gi < ng; gi++) {
        int64_t grp = s->groups.index[gi], count = 0;
        for (int64_t i = 0; i < h->n; i++)
            count += h->index[i] / r == grp;
        if (count != rk)
            return lms_error_set(err, LMS_EINVAL,
                                 "layer %lld: query group %lld keeps %lld heads, expected %lld",
                                 (long long)l, (long long)grp, (long long)count, (long long)rk);
    }
    s->heads.n = h->n;
    s->heads.index = lms_malloc((size_t)h->n * sizeof(int64_t));
    if (!s->heads.index)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    memcpy(s->heads.index, h->index, (size_t)h->n * sizeof(int64_t));
    *r_keep = rk;
    return LMS_OK;
}

/* Selects idx along axis of *v (replacing *v); idx NULL keeps the axis. */
static enum lms_status narrow(struct lms_view **v, int axis, const int64_t *idx, int64_t n,
                              struct lms_error *err)
{
    if (!idx)
        return LMS_OK;
    struct lms_view *s;
    enum lms_status rc = lms_view_new_select(*v, axis, idx, n, &s, err);
    if (rc)
        return rc;
    lms_view_release(*v);
    *v = s;
    return LMS_OK;
}

/* Index arrays for one tensor's rows and columns (NULL = keep all). */
struct cut {
    const int64_t *rows;
    int64_t n_rows;
    const int64_t *cols;
    int64_t n_cols;
};

/* The kept indices of one axis for the tensor at hand (index NULL = keep all). */
struct axis_keep {
    const int64_t *index;
    int64_t n;
};

static enum lms_status sliced_view(struct lms_view *src, struct cut c, struct lms_view **out,
                                   struct lms_error *err)
{
    struct lms_view *v = lms_view_ref(src);
    enum lms_status rc = LMS_OK;
    if (src->ndim == 2)
        rc = narrow(&v, 1, c.cols, c.n_cols, err); /* columns first: see the file comment */
    if (!rc)
        rc = narrow(&v, 0, c.rows, c.n_rows, err);
    if (rc) {
        lms_view_release(v);
        return rc;
    }
    *out = v;
    return LMS_OK;
}

/* Records in out which layer of the model as read each kept layer is (in's own map composed
 * with the cut, so that a cut of a cut still points into the carried config) and carries the
 * config as read: surgery edits the IR only; writers derive the config keys that follow from a
 * cut (layer_types, head_dim) from the arch and this map. */
static enum lms_status record_cut(const struct lms_model *in, const int64_t *new_index,
                                  struct lms_model *out, struct lms_error *err)
{
    out->layer_src = lms_malloc((size_t)out->arch.n_layers * sizeof(int64_t));
    if (!out->layer_src)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    for (int64_t l = 0; l < in->arch.n_layers; l++)
        if (new_index[l] >= 0)
            out->layer_src[new_index[l]] = in->layer_src ? in->layer_src[l] : l;
    out->n_layers_src = in->layer_src ? in->n_layers_src : in->arch.n_layers;
    if (in->hf_config && !(out->hf_config = json_deep_copy(in->hf_config)))
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    return LMS_OK;
}

enum lms_status lms_prune_apply(const struct lms_model *in, const struct lms_prune_plan *p,
                                struct lms_model *out, struct lms_error *err)
{
    const struct lms_arch *a = &in->arch;
    enum lms_status rc;
    if (p->n_layers_in != a->n_layers)
        return lms_error_set(err, LMS_EINVAL, "plan is for %lld layers, the model has %lld",
                             (long long)p->n_layers_in, (long long)a->n_layers);
    if (p->layers.index && (rc = check_keep(&p->layers, a->n_layers, "layers", err)))
        return rc;
    if (p->hidden.index && (rc = check_keep(&p->hidden, a->hidden, "hidden channels", err)))
        return rc;
    int64_t L2 = p->layers.index ? p->layers.n : a->n_layers;
    int64_t d = a->head_dim;
    struct layer_sel *sel = lms_calloc((size_t)a->n_layers, sizeof(*sel));
    int64_t *new_index = lms_malloc((size_t)a->n_layers * sizeof(int64_t));
    if (!sel || !new_index) {
        lms_free(sel);
        lms_free(new_index);
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    for (int64_t l = 0; l < a->n_layers; l++)
        new_index[l] = p->layers.index ? -1 : l;
    for (int64_t i = 0; p->layers.index && i < p->layers.n; i++)
        new_index[p->layers.index[i]] = i;

    /* per kept layer: check homogeneity (same F', n_g', r' everywhere: the IR has one shape per
     * role for all layers) */
    int64_t F2 = -1, r2 = -1, g2 = -1;
    rc = LMS_OK;
    for (int64_t l = 0; l < a->n_layers && !rc; l++) {
        if (new_index[l] < 0)
            continue;
        char what[64];
        if (p->ffn) {
            snprintf(what, sizeof(what), "layer %lld FFN neurons", (long long)l);
            rc = check_keep(&p->ffn[l], a->ffn, what, err);
            if (rc)
                break;
            sel[l].ffn = &p->ffn[l];
        }
        int64_t rk = 0;
        rc = layer_heads(p, a, l, &rk, &sel[l], err);
        if (rc)
            break;
        int64_t f = sel[l].ffn ? sel[l].ffn->n : a->ffn;
        if ((F2 >= 0 && f != F2) || (r2 >= 0 && rk != r2) || (g2 >= 0 && sel[l].groups.n != g2))
            rc = lms_error_set(err, LMS_EINVAL,
                               "layer %lld keeps a different width than earlier layers "
                               "(pruning is homogeneous)",
                               (long long)l);
        F2 = f, r2 = rk, g2 = sel[l].groups.n;
    }
    if (rc)
        goto out_sel;

    lms_model_init(out);
    out->arch = *a;
    out->arch.n_layers = L2;
    out->arch.hidden = p->hidden.index ? p->hidden.n : a->hidden;
    out->arch.ffn = F2;
    out->arch.n_groups = g2;
    out->arch.n_heads = r2 * g2;
    rc = record_cut(in, new_index, out, err);
    for (size_t i = 0; i < in->n_aux_files && !rc; i++)
        rc = lms_model_add_aux_file(out, in->aux_files[i], err);
    if (!rc && in->source_format && !(out->source_format = lms_strdup(in->source_format)))
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
    if (rc)
        goto out_model;

    const int64_t *KH = p->hidden.index;
    int64_t nH = p->hidden.n;
    for (size_t i = 0; i < in->n_tensors && !rc; i++) {
        const struct lms_tensor *t = &in->tensors[i];
        if (t->role == LMS_ROLE_OTHER) {
            rc = lms_error_set(err, LMS_EUNSUPPORTED,
                               "tensor '%s' is not part of the modelled architecture; cannot prune",
                               t->name);
            break;
        }
        int64_t l = t->layer;
        if (l >= 0 && new_index[l] < 0)
            continue; /* dropped layer */
        const struct layer_sel *s = l >= 0 ? &sel[l] : NULL;
        int64_t *head_rows = NULL, *group_rows = NULL;
        if (s) {
            head_rows = expand(&s->heads, d);
            group_rows = expand(&s->groups, d);
            if (!head_rows || !group_rows) {
                lms_free(head_rows);
                lms_free(group_rows);
                rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
                break;
            }
        }
        bool heads_cut = s && s->heads.n != a->n_heads;
        bool groups_cut = s && s->groups.n != a->n_groups;
        struct axis_keep keeps[LMS_CUT_COUNT] = {
            [LMS_CUT_WHOLE] = {NULL, 0},
            [LMS_CUT_HIDDEN] = {KH, nH},
            [LMS_CUT_FFN] = {s && s->ffn ? s->ffn->index : NULL, s && s->ffn ? s->ffn->n : 0},
            [LMS_CUT_HEADS] = {heads_cut ? head_rows : NULL, s ? s->heads.n * d : 0},
            [LMS_CUT_GROUPS] = {groups_cut ? group_rows : NULL, s ? s->groups.n * d : 0},
        };
        enum lms_arch_axis row_axis, col_axis;
        lms_arch_role_axes(t->role, &row_axis, &col_axis);
        struct axis_keep rk = keeps[row_axis], ck = keeps[col_axis];
        struct cut c = {rk.index, rk.n, ck.index, ck.n};
        struct lms_view *v;
        rc = sliced_view(t->view, c, &v, err);
        if (!rc) {
            char name[256];
            int64_t nl = l >= 0 ? new_index[l] : -1;
            if (!lms_role_hf_name(t->role, nl, name, sizeof(name)))
                snprintf(name, sizeof(name), "%s", t->name);
            rc = lms_model_add(out, name, t->role, nl, v, err);
            lms_view_release(v);
        }
        lms_free(head_rows);
        lms_free(group_rows);
    }
out_model:
    if (rc)
        lms_model_release(out);
out_sel:
    for (int64_t l = 0; l < a->n_layers; l++) {
        lms_free(sel[l].heads.index);
        lms_free(sel[l].groups.index);
    }
    lms_free(sel);
    lms_free(new_index);
    return rc;
}
