/* The depth sums of struct lms_importance_raw as a table (importance/metric.c): what each one
 * is called in the importance file, whether it runs over layers or blocks, and how a score is
 * derived from it. Reading, writing, merging and deriving iterate over it, so a metric whose
 * sums are listed here needs nothing else in those files. Internal to importance/. */
#ifndef LMS_IMPORTANCE_METRIC_H
#define LMS_IMPORTANCE_METRIC_H

#include <stdbool.h>
#include <stddef.h>

#include "lms/importance.h"

struct lms__raw_sum {
    unsigned bit;     /* enum lms_raw_sum */
    const char *key;  /* the key under "raw" in the importance file */
    const char *what; /* in messages: "layer cosines" */
    size_t offset;    /* of its double * in struct lms_importance_raw */
    bool per_block;   /* one entry per block start (L - n + 1) instead of per layer (L) */
    bool loss;        /* score = (sum - base_loss) / n_loss_tokens; else 1 - sum / n_cos_rows */
};

extern const struct lms__raw_sum lms__raw_sums[];
extern const size_t lms__n_raw_sums;

static inline double **lms__raw_sum_ptr(struct lms_importance_raw *raw,
                                        const struct lms__raw_sum *s)
{
    return (double **)((char *)raw + s->offset);
}

static inline const double *lms__raw_sum_get(const struct lms_importance_raw *raw,
                                             const struct lms__raw_sum *s)
{
    return *(double *const *)((const char *)raw + s->offset);
}

/* Entries of sum s for imp's dims and block size. */
static inline int64_t lms__raw_sum_len(const struct lms_importance *imp,
                                       const struct lms__raw_sum *s)
{
    return s->per_block ? (imp->block_size ? imp->n_layers - imp->block_size + 1 : 0)
                        : imp->n_layers;
}

#endif
