/* From scores to kept index sets: ranking (higher first, ties to the lower index), the depth
 * selectors by per-layer or per-block scores, the data-free ones, and layer lists. */
#include <stdlib.h>
#include <string.h>

#include "lms/alloc.h"
#include "lms/surgery.h"

struct ranked {
    double score;
    int64_t index;
};

/* Higher score first; equal scores: lower original index first (deterministic). NaN ranks last. */
static int cmp_rank(const void *a, const void *b)
{
    const struct ranked *x = a, *y = b;
    bool xn = x->score != x->score, yn = y->score != y->score;
    if (xn != yn)
        return xn ? 1 : -1;
    if (!xn && x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

static int cmp_index(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

enum lms_status lms_rank_keep(const double *scores, int64_t n, int64_t k, struct lms_keep *keep,
                              struct lms_error *err)
{
    if (k < 1 || k > n)
        return lms_error_set(err, LMS_EINVAL, "cannot keep %lld of %lld", (long long)k,
                             (long long)n);
    struct ranked *r = lms_malloc((size_t)n * sizeof(*r));
    int64_t *idx = lms_malloc((size_t)k * sizeof(int64_t));
    if (!r || !idx) {
        lms_free(r);
        lms_free(idx);
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    for (int64_t i = 0; i < n; i++)
        r[i] = (struct ranked){scores[i], i};
    qsort(r, (size_t)n, sizeof(*r), cmp_rank);
    for (int64_t i = 0; i < k; i++)
        idx[i] = r[i].index;
    qsort(idx, (size_t)k, sizeof(*idx), cmp_index);
    lms_free(r);
    keep->n = k;
    keep->index = idx;
    return LMS_OK;
}

enum lms_status lms_select_layers(enum lms_layer_selection sel, int64_t n_layers, int64_t n_keep,
                                  const double *scores, struct lms_keep *keep,
                                  struct lms_error *err)
{
    if (n_keep < 1 || n_keep > n_layers)
        return lms_error_set(err, LMS_EINVAL, "cannot keep %lld of %lld layers",
                             (long long)n_keep, (long long)n_layers);
    if (sel == LMS_LAYERS_IMPORTANCE || sel == LMS_LAYERS_METRIC) {
        if (!scores)
            return lms_error_set(err, LMS_EINVAL, "layer selection by %s needs per-layer scores",
                                 sel == LMS_LAYERS_METRIC ? "a metric" : "importance");
        return lms_rank_keep(scores, n_layers, n_keep, keep, err);
    }
    if (sel != LMS_LAYERS_LAST && sel != LMS_LAYERS_CONTIGUOUS_LAST)
        return lms_error_set(err, LMS_EINVAL, "layer selection '%s' is not a per-layer selector",
                             lms_layer_selection_name(sel, LMS_LAYER_METRIC_NONE));
    int64_t *idx = lms_malloc((size_t)n_keep * sizeof(int64_t));
    if (!idx)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    int64_t n_drop = n_layers - n_keep, k = 0;
    for (int64_t l = 0; l < n_layers; l++) {
        bool dropped;
        if (sel == LMS_LAYERS_LAST)
            dropped = l >= n_keep;
        else /* contiguous block ending just before the last layer: the last layer is kept */
            dropped = n_drop > 0 && l >= n_layers - 1 - n_drop && l < n_layers - 1;
        if (!dropped)
            idx[k++] = l;
    }
    lms_assert(k == n_keep);
    keep->n = k;
    keep->index = idx;
    return LMS_OK;
}

enum lms_status lms_select_block(int64_t n_layers, int64_t n_keep, const double *block_scores,
                                 struct lms_keep *keep, int64_t *start, struct lms_error *err)
{
    if (n_keep < 1 || n_keep > n_layers)
        return lms_error_set(err, LMS_EINVAL, "cannot keep %lld of %lld layers",
                             (long long)n_keep, (long long)n_layers);
    int64_t n_drop = n_layers - n_keep, best = 0;
    /* lowest score wins, ties to the earlier block; NaN never wins over a number */
    for (int64_t s = 1; s <= n_keep; s++) {
        double x = block_scores[s], b = block_scores[best];
        if ((x == x && !(b == b)) || x < b)
            best = s;
    }
    int64_t *idx = lms_malloc((size_t)n_keep * sizeof(int64_t)), k = 0;
    if (!idx)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    for (int64_t l = 0; l < n_layers; l++)
        if (l < best || l >= best + n_drop)
            idx[k++] = l;
    keep->n = k;
    keep->index = idx;
    *start = best;
    return LMS_OK;
}

/* The selectors that are no metric; the metrics' names are importance/metric.c's. */
static const char *const selection_names[] = {
    [LMS_LAYERS_CONTIGUOUS_LAST] = "contiguous-last",
    [LMS_LAYERS_LAST] = "last",
    [LMS_LAYERS_IMPORTANCE] = "importance",
    [LMS_LAYERS_EXPLICIT] = "explicit",
    [LMS_LAYERS_AUTO] = "auto",
};

const char *lms_layer_selection_name(enum lms_layer_selection sel, enum lms_layer_metric metric)
{
    size_t n = sizeof(selection_names) / sizeof(selection_names[0]);
    if (sel == LMS_LAYERS_METRIC)
        return lms_layer_metric_name(metric);
    return (size_t)sel < n && selection_names[sel] ? selection_names[sel] : "?";
}

bool lms_layer_selection_parse(const char *name, enum lms_layer_selection *sel,
                               enum lms_layer_metric *metric)
{
    *metric = LMS_LAYER_METRIC_NONE;
    for (size_t i = 0; i < sizeof(selection_names) / sizeof(selection_names[0]); i++)
        if (selection_names[i] && !strcmp(name, selection_names[i])) {
            *sel = (enum lms_layer_selection)i;
            return true;
        }
    if (lms_layer_metric_parse(name, metric, NULL))
        return false;
    *sel = LMS_LAYERS_METRIC;
    return true;
}

bool lms_layer_selection_needs_data(enum lms_layer_selection sel, enum lms_layer_metric metric)
{
    const struct lms_layer_metric_desc *d = lms_layer_metric_desc(metric);
    return sel == LMS_LAYERS_METRIC && d && d->needs_data;
}

enum lms_status lms_parse_layer_list(const char *list, int64_t n_layers, bool *member,
                                     struct lms_error *err)
{
    const char *p = list;
    if (!*p)
        return lms_error_set(err, LMS_EINVAL, "empty layer list");
    while (*p) {
        char *end;
        long long a = strtoll(p, &end, 10), b;
        if (end == p)
            return lms_error_set(err, LMS_EINVAL, "bad layer list '%s'", list);
        b = a;
        p = end;
        if (*p == '-') {
            b = strtoll(p + 1, &end, 10);
            if (end == p + 1)
                return lms_error_set(err, LMS_EINVAL, "bad layer list '%s'", list);
            p = end;
        }
        if (a < 1 || b > n_layers || a > b)
            return lms_error_set(err, LMS_EINVAL,
                                 "layer range %lld-%lld is outside 1..%lld (layers are numbered "
                                 "from 1)",
                                 a, b, (long long)n_layers);
        for (long long l = a; l <= b; l++)
            member[l - 1] = true;
        if (*p == ',')
            p++;
        else if (*p)
            return lms_error_set(err, LMS_EINVAL, "bad layer list '%s'", list);
    }
    return LMS_OK;
}
