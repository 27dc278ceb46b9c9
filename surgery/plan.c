/* Prune planning: from the targets (a shape), the importance scores and the depth metrics to a
 * prune plan, and a report of which scores chose what. Every command that prunes (prune, the
 * parameter-budget search) plans through lms_prune_plan_make; lms_prune_plan_calibrated adds
 * the depth rescoring a calibration may need. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "lms/alloc.h"
#include "lms/importance.h"
#include "lms/score.h"
#include "lms/surgery.h"
#include "surgery/multiple.h"

/* A target `value` of `flag` that is not a multiple of unit: the error, with the nearest
 * multiples of unit in 1..max below and above it. what says which rows broke the rule. */
static enum lms_status not_a_multiple(const char *flag, int64_t value, int64_t unit, int64_t max,
                                      int64_t m, const char *what, struct lms_error *err)
{
    int64_t below = value / unit * unit, above = below + unit;
    char nearest[96];
    if (below >= 1 && above <= max)
        snprintf(nearest, sizeof nearest, "nearest valid %lld or %lld", (long long)below,
                 (long long)above);
    else if (below >= 1 || above <= max)
        snprintf(nearest, sizeof nearest, "nearest valid %lld",
                 (long long)(below >= 1 ? below : above));
    else
        snprintf(nearest, sizeof nearest, "no valid value up to %lld", (long long)max);
    return lms_error_set(err, LMS_EINVAL, "%s %lld: %s not a multiple of --multiple-of %lld (%s)",
                         flag, (long long)value, what, (long long)m, nearest);
}

/* The --multiple-of rule (surgery/multiple.h) on the widths the targets change: F', H', the
 * query rows nh x d and, with a group target, the key/value rows ng x d. */
static enum lms_status check_multiples(const struct lms_prune_targets *t,
                                       const struct lms_arch *a, int64_t ng, int64_t nh,
                                       struct lms_error *err)
{
    int64_t m = t->multiple_of, d = a->head_dim;
    if (m <= 1)
        return LMS_OK;
    char what[96];
    if (t->ffn && t->ffn != a->ffn && t->ffn % m)
        return not_a_multiple("--target-ffn-hidden-size", t->ffn, m, a->ffn, m, "the width is",
                              err);
    if (t->hidden && t->hidden != a->hidden && t->hidden % m)
        return not_a_multiple("--target-hidden-size", t->hidden, m, a->hidden, m,
                              "the width is", err);
    int64_t hu = lms__heads_unit(m, d);
    if (t->n_groups && t->n_groups != a->n_groups && ng * d % m) {
        snprintf(what, sizeof what, "the key/value rows %lld x %lld = %lld are", (long long)ng,
                 (long long)d, (long long)(ng * d));
        return not_a_multiple("--target-num-query-groups", ng, hu, a->n_groups, m, what, err);
    }
    /* without a head target the heads follow the groups (r ng' x d, a multiple by now) */
    if (nh != a->n_heads && nh * d % m) {
        snprintf(what, sizeof what, "the query rows %lld x %lld = %lld are", (long long)nh,
                 (long long)d, (long long)(nh * d));
        /* valid head counts are multiples of the groups too, at most r per group */
        return not_a_multiple("--target-num-attention-heads", nh, lms__lcm(hu, ng),
                              ng * (a->n_heads / a->n_groups), m, what, err);
    }
    return LMS_OK;
}

enum lms_status lms_prune_targets_check(const struct lms_prune_targets *t,
                                        const struct lms_arch *a, struct lms_error *err)
{
    const struct {
        const char *flag;
        int64_t target, current;
    } ax[] = {
        {"--target-num-layers", t->n_layers, a->n_layers},
        {"--target-ffn-hidden-size", t->ffn, a->ffn},
        {"--target-hidden-size", t->hidden, a->hidden},
        {"--target-num-attention-heads", t->n_heads, a->n_heads},
        {"--target-num-query-groups", t->n_groups, a->n_groups},
    };
    for (size_t i = 0; i < sizeof(ax) / sizeof(ax[0]); i++) {
        if (ax[i].target < 0)
            return lms_error_set(err, LMS_EINVAL, "%s must be at least 1", ax[i].flag);
        if (ax[i].target > ax[i].current)
            return lms_error_set(err, LMS_EINVAL, "%s %lld is larger than the current %lld",
                                 ax[i].flag, (long long)ax[i].target, (long long)ax[i].current);
    }
    int64_t ng = t->n_groups ? t->n_groups : a->n_groups;
    int64_t r = a->n_heads / a->n_groups;
    int64_t nh = t->n_heads ? t->n_heads : r * ng;
    if (nh % ng)
        return lms_error_set(err, LMS_EINVAL,
                             "--target-num-attention-heads %lld is not a multiple of the %lld query "
                             "groups (every group keeps the same number of heads)",
                             (long long)nh, (long long)ng);
    if (nh / ng > r)
        return lms_error_set(err, LMS_EINVAL,
                             "%lld heads over %lld query groups is more than the %lld heads per "
                             "group the model has",
                             (long long)nh, (long long)ng, (long long)r);
    if (t->multiple_of < 0 || t->multiple_of > LMS_MULTIPLE_OF_MAX)
        return lms_error_set(err, LMS_EINVAL, "--multiple-of %lld is not in 1..%lld",
                             (long long)t->multiple_of, (long long)LMS_MULTIPLE_OF_MAX);
    enum lms_status rc = check_multiples(t, a, ng, nh, err);
    if (rc)
        return rc;
    int n_ways = !!t->drop_layers + !!t->keep_layers + !!t->n_layers;
    if (n_ways > 1)
        return lms_error_set(err, LMS_EINVAL,
                             "use only one of --drop-layers, --keep-layers, --target-num-layers");
    if (t->selection == LMS_LAYERS_EXPLICIT && !t->drop_layers && !t->keep_layers)
        return lms_error_set(err, LMS_EINVAL,
                             "--layer-selection explicit needs --drop-layers or --keep-layers");
    return LMS_OK;
}

static json_t *json_doubles(const double *x, int64_t n)
{
    json_t *a = json_array();
    for (int64_t i = 0; i < n; i++)
        json_array_append_new(a, isfinite(x[i]) ? json_real(x[i]) : json_null());
    return a;
}

static json_t *json_indices(const int64_t *x, int64_t n)
{
    json_t *a = json_array();
    for (int64_t i = 0; i < n; i++)
        json_array_append_new(a, json_integer(x[i]));
    return a;
}

/* The per-layer sums a metric's layers[] come from (importance/metric.c). */
static unsigned layer_sums(enum lms_layer_metric m)
{
    const struct lms_layer_metric_desc *d = lms_layer_metric_desc(m);
    return d ? d->sums & (LMS_RAW_LAYER_COS | LMS_RAW_LAYER_LOSS) : 0;
}

/* The per-layer scores a selector ranks by (NULL: imp does not hold them); *words says what
 * they are (NULL for the data-free selectors). */
static const double *layer_scores(enum lms_layer_selection sel, enum lms_layer_metric metric,
                                  const struct lms_importance *imp, const char **words)
{
    *words = NULL;
    if (sel == LMS_LAYERS_IMPORTANCE) {
        *words = "layer scores of the importance file";
        return imp ? imp->layers : NULL;
    }
    const struct lms_layer_metric_desc *d = lms_layer_metric_desc(metric);
    if (sel != LMS_LAYERS_METRIC || !d)
        return NULL;
    *words = d->per_layer;
    /* layers[] of another metric made from the same sums rank the same (block-bi carries bi) */
    bool same = imp && layer_sums(imp->layer_metric) && layer_sums(imp->layer_metric) ==
                                                            layer_sums(metric);
    return same ? imp->layers : NULL;
}

/* Which selector (and metric) LMS_LAYERS_AUTO or IMPORTANCE means for the scores at hand. */
static void resolve(const struct lms_prune_targets *t, const struct lms_importance *imp,
                    enum lms_layer_selection *sel, enum lms_layer_metric *metric)
{
    *sel = t->selection;
    *metric = t->metric;
    if (*sel != LMS_LAYERS_AUTO && *sel != LMS_LAYERS_IMPORTANCE)
        return;
    if (imp && imp->layer_metric != LMS_LAYER_METRIC_NONE) {
        *sel = LMS_LAYERS_METRIC;
        *metric = imp->layer_metric;
    } else if (imp && imp->layers) {
        *sel = LMS_LAYERS_IMPORTANCE;
    } else {
        *sel = *sel == LMS_LAYERS_AUTO ? LMS_LAYERS_CONTIGUOUS_LAST : LMS_LAYERS_IMPORTANCE;
    }
}

static enum lms_status plan_explicit(const struct lms_prune_targets *t, int64_t L,
                                     struct lms_keep *keep, struct lms_error *err)
{
    bool *member = lms_calloc((size_t)L, sizeof(bool));
    if (!member)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    bool drop = t->drop_layers != NULL;
    enum lms_status rc = lms_parse_layer_list(drop ? t->drop_layers : t->keep_layers, L, member,
                                              err);
    int64_t n = 0;
    for (int64_t l = 0; l < L; l++)
        n += drop ? !member[l] : member[l];
    if (!rc && n == 0)
        rc = lms_error_set(err, LMS_EINVAL, "the layer list drops every layer");
    if (!rc && !(keep->index = lms_malloc((size_t)n * sizeof(int64_t))))
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
    if (!rc) {
        keep->n = 0;
        for (int64_t l = 0; l < L; l++)
            if (drop ? !member[l] : member[l])
                keep->index[keep->n++] = l;
    }
    lms_free(member);
    return rc;
}

/* Depth part of the plan; rep gets the "layers" entry of the report. */
static enum lms_status plan_depth(const struct lms_prune_targets *t, int64_t L,
                                  const struct lms_importance *imp, struct lms_keep *keep,
                                  json_t *rep, struct lms_error *err)
{
    enum lms_status rc;
    json_t *o = json_object();
    json_object_set_new(rep, "layers", o);
    if (t->drop_layers || t->keep_layers) {
        json_object_set_new(o, "selection", json_string("explicit"));
        rc = plan_explicit(t, L, keep, err);
    } else if (!t->n_layers || t->n_layers == L) {
        json_object_set_new(o, "selection", json_string("none"));
        return LMS_OK;
    } else {
        int64_t n_drop = L - t->n_layers;
        enum lms_layer_selection sel;
        enum lms_layer_metric lm;
        resolve(t, imp, &sel, &lm);
        const char *name = lms_layer_selection_name(sel, lm);
        json_object_set_new(o, "selection", json_string(name));
        if (t->selection == LMS_LAYERS_AUTO)
            json_object_set_new(o, "chosen_by", json_string("default"));
        const char *metric = NULL;
        if (sel == LMS_LAYERS_METRIC && lms_layer_metric_is_block(lm)) {
            bool held = imp && imp->layer_metric == lm && imp->blocks;
            const double *s = held && imp->block_size == n_drop ? imp->blocks : NULL;
            metric = lms_layer_metric_desc(lm)->per_block;
            if (!s && held)
                return lms_error_set(err, LMS_EINVAL,
                                     "the scores hold '%s' for blocks of %lld layers; removing "
                                     "%lld layers needs them for blocks of %lld",
                                     name, (long long)imp->block_size, (long long)n_drop,
                                     (long long)n_drop);
            if (!s)
                return lms_error_set(err, LMS_EINVAL,
                                     "layer selection '%s' needs calibration data (its metric "
                                     "for blocks of %lld layers)",
                                     name, (long long)n_drop);
            int64_t start;
            rc = lms_select_block(L, t->n_layers, s, keep, &start, err);
            json_object_set_new(o, "metric", json_string(metric));
            json_object_set_new(o, "block_length", json_integer(n_drop));
            json_object_set_new(o, "block_scores", json_doubles(s, L - n_drop + 1));
            json_object_set_new(o, "dropped_block_start", json_integer(start));
        } else {
            const double *s = layer_scores(sel, lm, imp, &metric);
            if (!s && sel == LMS_LAYERS_IMPORTANCE)
                return lms_error_set(err, LMS_EINVAL,
                                     "--layer-selection importance needs an --importance file "
                                     "with layer scores");
            if (!s && sel == LMS_LAYERS_METRIC)
                return lms_error_set(err, LMS_EINVAL,
                                     "layer selection '%s' needs calibration data (its per-layer "
                                     "metric)",
                                     name);
            rc = lms_select_layers(sel, L, t->n_layers, s, keep, err);
            if (metric) {
                json_object_set_new(o, "metric", json_string(metric));
                json_object_set_new(o, "scores", json_doubles(s, L));
            }
        }
        if (metric && imp && imp->source)
            json_object_set_new(o, "source", json_incref(imp->source));
    }
    if (rc)
        return rc;
    json_object_set_new(o, "kept", json_indices(keep->index, keep->n));
    json_t *dropped = json_array();
    for (int64_t l = 0, k = 0; l < L; l++) {
        if (k < keep->n && keep->index[k] == l)
            k++;
        else
            json_array_append_new(dropped, json_integer(l));
    }
    json_object_set_new(o, "dropped", dropped);
    return LMS_OK;
}

static struct lms_keep *per_layer(int64_t L)
{
    return lms_calloc((size_t)L, sizeof(struct lms_keep));
}

/* Width part of the plan from complete scores (every needed axis present in s). */
static enum lms_status plan_width(const struct lms_prune_targets *t, const struct lms_arch *ar,
                                  const struct lms_importance *s, struct lms_prune_plan *plan,
                                  struct lms_error *err)
{
    int64_t L = ar->n_layers;
    enum lms_status rc = LMS_OK;
    if (t->hidden && t->hidden < ar->hidden)
        rc = lms_rank_keep(s->hidden_s, ar->hidden, t->hidden, &plan->hidden, err);
    if (!rc && t->ffn && t->ffn < ar->ffn) {
        if (!(plan->ffn = per_layer(L)))
            return lms_error_set(err, LMS_ENOMEM, "out of memory");
        for (int64_t l = 0; l < L && !rc; l++)
            rc = lms_rank_keep(s->ffn_s + l * ar->ffn, ar->ffn, t->ffn, &plan->ffn[l], err);
    }
    int64_t ng = t->n_groups ? t->n_groups : ar->n_groups;
    int64_t r = ar->n_heads / ar->n_groups;
    if (!rc && ng < ar->n_groups) {
        if (!(plan->groups = per_layer(L)))
            return lms_error_set(err, LMS_ENOMEM, "out of memory");
        for (int64_t l = 0; l < L && !rc; l++)
            rc = lms_rank_keep(s->groups + l * ar->n_groups, ar->n_groups, ng, &plan->groups[l],
                               err);
    }
    int64_t rk = t->n_heads ? t->n_heads / ng : r;
    if (!rc && rk < r) {
        /* heads are ranked inside their group: every kept group keeps its best rk heads */
        if (!(plan->heads = per_layer(L)))
            return lms_error_set(err, LMS_ENOMEM, "out of memory");
        for (int64_t l = 0; l < L && !rc; l++) {
            struct lms_keep *h = &plan->heads[l];
            if (!(h->index = lms_malloc((size_t)(ng * rk) * sizeof(int64_t))))
                return lms_error_set(err, LMS_ENOMEM, "out of memory");
            h->n = 0;
            for (int64_t gi = 0; gi < ng && !rc; gi++) {
                int64_t g = plan->groups ? plan->groups[l].index[gi] : gi;
                struct lms_keep in_group;
                rc = lms_rank_keep(s->heads + l * ar->n_heads + g * r, r, rk, &in_group, err);
                for (int64_t j = 0; !rc && j < rk; j++)
                    h->index[h->n++] = g * r + in_group.index[j];
                if (!rc)
                    lms_free(in_group.index);
            }
        }
    }
    return rc;
}

/* Axes the width targets need scores for. */
static unsigned width_axes(const struct lms_prune_targets *t, const struct lms_arch *a)
{
    int64_t ng = t->n_groups ? t->n_groups : a->n_groups;
    int64_t rk = t->n_heads ? t->n_heads / ng : a->n_heads / a->n_groups;
    return (t->hidden && t->hidden < a->hidden ? LMS_AXIS_HIDDEN : 0) |
           (t->ffn && t->ffn < a->ffn ? LMS_AXIS_FFN : 0) |
           (rk < a->n_heads / a->n_groups ? LMS_AXIS_HEADS : 0) |
           (ng < a->n_groups ? LMS_AXIS_GROUPS : 0);
}

static void report_width(json_t *rep, const char *key, int64_t from, int64_t to, unsigned axis,
                         unsigned need, const struct lms_importance *imp)
{
    json_t *o = json_pack("{s:I,s:I}", "from", (json_int_t)from, "to", (json_int_t)to);
    if (need & axis) {
        bool given = imp && (lms_importance_axes(imp) & axis);
        json_object_set_new(o, "scores", json_string(given ? (imp->method ? imp->method : "given")
                                                           : "weight-magnitude"));
    }
    json_object_set_new(rep, key, o);
}

enum lms_status lms_prune_plan_make(const struct lms_model *m, const struct lms_prune_targets *t,
                                    const struct lms_importance *imp,
                                    struct lms_prune_plan *plan, struct json_t **report,
                                    struct lms_error *err)
{
    const struct lms_arch *a = &m->arch;
    lms_prune_plan_init(plan, a->n_layers);
    if (report)
        *report = NULL;
    enum lms_status rc = lms_prune_targets_check(t, a, err);
    if (rc)
        return rc;
    json_t *rep = json_object();
    rc = plan_depth(t, a->n_layers, imp, &plan->layers, rep, err);

    /* width: the given scores, with the missing axes filled by weight magnitude */
    unsigned need = width_axes(t, a);
    unsigned missing = need & ~(imp ? lms_importance_axes(imp) : 0u);
    struct lms_importance mag, merged;
    lms_importance_init(&mag, a);
    if (!rc && missing)
        rc = lms_importance_magnitude(m, missing, &mag, err);
    if (!rc) {
        merged = mag; /* borrowed arrays only: not released */
        if (imp && imp->hidden_s)
            merged.hidden_s = imp->hidden_s;
        if (imp && imp->ffn_s)
            merged.ffn_s = imp->ffn_s;
        if (imp && imp->heads)
            merged.heads = imp->heads;
        if (imp && imp->groups)
            merged.groups = imp->groups;
        rc = plan_width(t, a, &merged, plan, err);
    }
    lms_importance_release(&mag);
    int64_t ng = t->n_groups ? t->n_groups : a->n_groups;
    int64_t nh = t->n_heads ? t->n_heads : (a->n_heads / a->n_groups) * ng;
    report_width(rep, "hidden_size", a->hidden, t->hidden ? t->hidden : a->hidden,
                 LMS_AXIS_HIDDEN, need, imp);
    report_width(rep, "ffn_hidden_size", a->ffn, t->ffn ? t->ffn : a->ffn, LMS_AXIS_FFN, need,
                 imp);
    report_width(rep, "num_attention_heads", a->n_heads, nh, LMS_AXIS_HEADS, need, imp);
    report_width(rep, "num_query_groups", a->n_groups, ng, LMS_AXIS_GROUPS, need, imp);
    if (rc) {
        json_decref(rep);
        lms_prune_plan_release(plan);
        lms_prune_plan_init(plan, a->n_layers);
        return rc;
    }
    if (report)
        *report = rep;
    else
        json_decref(rep);
    return LMS_OK;
}

/* ---- planning with a calibration ------------------------------------------------------- */

enum lms_layer_metric lms_prune_targets_metric(const struct lms_prune_targets *t)
{
    if (t->selection == LMS_LAYERS_AUTO)
        return LMS_LAYER_METRIC_DEFAULT;
    return t->selection == LMS_LAYERS_METRIC ? t->metric : LMS_LAYER_METRIC_NONE;
}

void lms_prune_calib_setup(const struct lms_arch *a, const struct lms_prune_targets *t,
                           bool budget, struct lms_calib_opts *o)
{
    /* the depth target decides which block length a block metric needs; the search scores
     * blocks per candidate depth */
    o->n_drop = t->n_layers ? a->n_layers - t->n_layers : 0;
    o->metric = o->n_drop > 0 || budget ? lms_prune_targets_metric(t) : LMS_LAYER_METRIC_NONE;
    o->held_out = budget;
    o->width_axes = (budget || t->hidden ? LMS_AXIS_HIDDEN : 0) |
                    (budget || t->ffn ? LMS_AXIS_FFN : 0) |
                    (budget || t->n_heads || t->n_groups ? LMS_AXIS_HEADS : 0) |
                    (t->n_groups ? LMS_AXIS_GROUPS : 0);
}

enum lms_status lms_prune_plan_calibrated(const struct lms_model *m,
                                          const struct lms_prune_targets *t,
                                          const struct lms_importance *imp, struct lms_calib *cal,
                                          struct lms_prune_plan *plan, struct json_t **report,
                                          struct lms_error *err)
{
    lms_prune_plan_init(plan, m->arch.n_layers);
    if (report)
        *report = NULL;
    struct lms_importance view;
    if (imp)
        view = *imp;
    enum lms_status rc = cal && imp ? lms_calib_scores_for(cal, m, imp, t->n_layers, &view, err)
                                    : LMS_OK;
    if (rc)
        return rc;
    return lms_prune_plan_make(m, t, imp ? &view : NULL, plan, report, err);
}
