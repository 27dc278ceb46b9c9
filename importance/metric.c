/* The layer metrics as one table (include/lms/importance.h), and the depth sums they are made
 * of (importance/metric.h). A metric names the sums it accumulates; each sum says how its
 * score follows from it:
 *   cosine sums:  score = 1 - sum / n_cos_rows                 (Block Influence)
 *   loss sums:    score = (sum - base_loss) / n_loss_tokens    (loss increase when skipped)
 * per layer into layers[], per block start into blocks[]. */
#include "importance/metric.h"

#include <string.h>

static const struct lms_layer_metric_desc metrics[] = {
    {LMS_LAYER_METRIC_BI, "bi", "block influence, 1 - mean cos(layer input, layer output)", NULL,
     true, LMS_RAW_LAYER_COS},
    {LMS_LAYER_METRIC_BLOCK_BI, "block-bi",
     "block influence, 1 - mean cos(layer input, layer output)",
     "block influence of each contiguous block, 1 - mean cos(block input, block output)", true,
     LMS_RAW_LAYER_COS | LMS_RAW_BLOCK_COS},
    {LMS_LAYER_METRIC_PPL, "ppl", "LM loss increase with only this layer removed", NULL, true,
     LMS_RAW_LAYER_LOSS},
    {LMS_LAYER_METRIC_CONTIGUOUS, "contiguous", NULL,
     "LM loss increase with each contiguous block removed", true, LMS_RAW_BLOCK_LOSS},
};

const struct lms__raw_sum lms__raw_sums[] = {
    {LMS_RAW_LAYER_COS, "layer_cos", "layer cosines", offsetof(struct lms_importance_raw, layer_cos),
     false, false},
    {LMS_RAW_BLOCK_COS, "block_cos", "block cosines", offsetof(struct lms_importance_raw, block_cos),
     true, false},
    {LMS_RAW_LAYER_LOSS, "layer_loss", "layer losses",
     offsetof(struct lms_importance_raw, layer_loss), false, true},
    {LMS_RAW_BLOCK_LOSS, "block_loss", "block losses",
     offsetof(struct lms_importance_raw, block_loss), true, true},
};
const size_t lms__n_raw_sums = sizeof lms__raw_sums / sizeof lms__raw_sums[0];

#define N_METRICS (sizeof metrics / sizeof metrics[0])

const struct lms_layer_metric_desc *lms_layer_metric_desc(enum lms_layer_metric m)
{
    for (size_t i = 0; i < N_METRICS; i++)
        if (metrics[i].id == m)
            return &metrics[i];
    return NULL;
}

const char *lms_layer_metric_name(enum lms_layer_metric m)
{
    const struct lms_layer_metric_desc *d = lms_layer_metric_desc(m);
    return d ? d->name : m == LMS_LAYER_METRIC_NONE ? "none" : "?";
}

enum lms_status lms_layer_metric_parse(const char *s, enum lms_layer_metric *out,
                                       struct lms_error *err)
{
    for (size_t i = 0; i < N_METRICS; i++)
        if (!strcmp(s, metrics[i].name)) {
            *out = metrics[i].id;
            return LMS_OK;
        }
    return lms_error_set(err, LMS_EINVAL,
                         "unknown layer metric '%s' (bi, block-bi, ppl or contiguous)", s);
}

bool lms_layer_metric_is_block(enum lms_layer_metric m)
{
    const struct lms_layer_metric_desc *d = lms_layer_metric_desc(m);
    return d && d->per_block;
}
