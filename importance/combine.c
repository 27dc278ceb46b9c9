/* Scores from raw calibration sums and the kept-layer choice of every layer metric
 * (include/lms/importance.h; merging sums is importance/merge.c).
 *
 *   hidden[c]  = sum over layers l and both norms k of sqrt(hidden_sq[l][k][c])
 *   ffn[l][j]  = sqrt(ffn_sq[l][j])
 *   heads[l][h] = sqrt(head_sq[l][h])      (L2 over the head's channels of sqrt(Q))
 *   groups[l][g] = sqrt(sum of head_sq over the group's contiguous heads)
 *   layers[l]  = 1 - layer_cos[l] / n_cos_rows                      (bi, block-bi)
 *              = (layer_loss[l] - base_loss) / n_loss_tokens          (ppl)
 *   blocks[s]  = 1 - block_cos[s] / n_cos_rows                       (block-bi)
 *              = (block_loss[s] - base_loss) / n_loss_tokens          (contiguous)
 * Block Influence is the mean over every token row of the run, so it does not depend on how
 * the rows were cut into micro-batches or runs. */
#include <math.h>
#include <string.h>

#include "lms/alloc.h"
#include "lms/importance.h"

static const char *const metric_names[] = {"none", "bi", "block-bi", "ppl", "contiguous"};

const char *lms_layer_metric_name(enum lms_layer_metric m)
{
    return (unsigned)m < sizeof metric_names / sizeof metric_names[0] ? metric_names[m] : "?";
}

enum lms_status lms_layer_metric_parse(const char *s, enum lms_layer_metric *out,
                                       struct lms_error *err)
{
    for (int i = 1; i < (int)(sizeof metric_names / sizeof metric_names[0]); i++)
        if (!strcmp(s, metric_names[i])) {
            *out = (enum lms_layer_metric)i;
            return LMS_OK;
        }
    return lms_error_set(err, LMS_EINVAL,
                         "unknown layer metric '%s' (bi, block-bi, ppl or contiguous)", s);
}

/* Makes *dst an array of n doubles (kept if already there). */
static bool ensure(double **dst, int64_t n)
{
    if (!*dst)
        *dst = lms_calloc((size_t)(n > 0 ? n : 1), sizeof(double));
    return *dst != NULL;
}

enum lms_status lms_importance_derive(struct lms_importance *imp, bool want_groups,
                                      struct lms_error *err)
{
    const struct lms_importance_raw *raw = &imp->raw;
    int64_t L = imp->n_layers, H = imp->hidden, F = imp->ffn, nh = imp->n_heads;
    int64_t ng = imp->n_groups, n_starts = imp->block_size ? L - imp->block_size + 1 : 0;
    if (!raw->present)
        return LMS_OK;
    bool ok = true;
    if (raw->hidden_sq && (ok = ensure(&imp->hidden_s, H))) {
        for (int64_t c = 0; c < H; c++)
            imp->hidden_s[c] = 0;
        for (int64_t lk = 0; lk < 2 * L; lk++)
            for (int64_t c = 0; c < H; c++)
                imp->hidden_s[c] += sqrt(raw->hidden_sq[lk * H + c]);
    }
    if (ok && raw->ffn_sq && (ok = ensure(&imp->ffn_s, L * F)))
        for (int64_t i = 0; i < L * F; i++)
            imp->ffn_s[i] = sqrt(raw->ffn_sq[i]);
    if (ok && raw->head_sq && (ok = ensure(&imp->heads, L * nh)))
        for (int64_t i = 0; i < L * nh; i++)
            imp->heads[i] = sqrt(raw->head_sq[i]);
    if (ok && raw->head_sq && want_groups && (ok = ensure(&imp->groups, L * ng))) {
        int64_t r = nh / ng;
        for (int64_t l = 0; l < L; l++)
            for (int64_t g = 0; g < ng; g++) {
                double s = 0;
                for (int64_t h = g * r; h < (g + 1) * r; h++)
                    s += raw->head_sq[l * nh + h];
                imp->groups[l * ng + g] = sqrt(s);
            }
    }
    double nc = raw->n_cos_rows > 0 ? (double)raw->n_cos_rows : 1;
    double nl = raw->n_loss_tokens > 0 ? (double)raw->n_loss_tokens : 1;
    if (ok && raw->layer_cos && (ok = ensure(&imp->layers, L)))
        for (int64_t l = 0; l < L; l++)
            imp->layers[l] = 1.0 - raw->layer_cos[l] / nc;
    if (ok && raw->layer_loss && (ok = ensure(&imp->layers, L)))
        for (int64_t l = 0; l < L; l++)
            imp->layers[l] = (raw->layer_loss[l] - raw->base_loss) / nl;
    if (ok && raw->block_cos && (ok = ensure(&imp->blocks, n_starts)))
        for (int64_t s = 0; s < n_starts; s++)
            imp->blocks[s] = 1.0 - raw->block_cos[s] / nc;
    if (ok && raw->block_loss && (ok = ensure(&imp->blocks, n_starts)))
        for (int64_t s = 0; s < n_starts; s++)
            imp->blocks[s] = (raw->block_loss[s] - raw->base_loss) / nl;
    if (!ok)
        return lms_error_set(err, LMS_ENOMEM, "out of memory deriving scores");
    return LMS_OK;
}

enum lms_status lms_importance_keep_layers(const struct lms_importance *imp, int64_t n_keep,
                                           bool *keep_mask, struct lms_error *err)
{
    int64_t L = imp->n_layers, n_drop = L - n_keep;
    if (n_keep < 1 || n_keep > L)
        return lms_error_set(err, LMS_EINVAL, "cannot keep %lld of %lld layers",
                             (long long)n_keep, (long long)L);
    for (int64_t l = 0; l < L; l++)
        keep_mask[l] = true;
    if (n_drop == 0)
        return LMS_OK;
    bool block = imp->layer_metric == LMS_LAYER_METRIC_BLOCK_BI ||
                 imp->layer_metric == LMS_LAYER_METRIC_CONTIGUOUS;
    if (block) {
        if (!imp->blocks || imp->block_size != n_drop)
            return lms_error_set(err, LMS_EINVAL,
                                 "the importance file scores blocks of %lld layers ('%s'), not "
                                 "the %lld being removed",
                                 (long long)imp->block_size,
                                 lms_layer_metric_name(imp->layer_metric), (long long)n_drop);
        int64_t best = 0;
        for (int64_t s = 1; s < L - n_drop + 1; s++)
            if (imp->blocks[s] < imp->blocks[best])
                best = s;
        for (int64_t l = best; l < best + n_drop; l++)
            keep_mask[l] = false;
        return LMS_OK;
    }
    if (!imp->layers)
        return lms_error_set(err, LMS_EINVAL, "the importance file has no layer scores");
    /* drop the n_drop lowest; ties: the higher index goes first (lower index kept) */
    for (int64_t k = 0; k < n_drop; k++) {
        int64_t worst = -1;
        for (int64_t l = 0; l < L; l++)
            if (keep_mask[l] && (worst < 0 || imp->layers[l] <= imp->layers[worst]))
                worst = l;
        keep_mask[worst] = false;
    }
    return LMS_OK;
}
