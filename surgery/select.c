/* From scores to kept index sets: ranking (§3.7) and the data-free depth selectors (§3.6). */
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
    if (sel == LMS_LAYERS_IMPORTANCE)
        return lms_rank_keep(scores, n_layers, n_keep, keep, err);
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
