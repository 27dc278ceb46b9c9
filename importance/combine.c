/* Scores from raw calibration sums
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
 * the rows were cut into micro-batches or runs. The depth scores follow the sums table of
 * importance/metric.c. */
#include <math.h>
#include <string.h>

#include "lms/alloc.h"
#include "importance/metric.h"
#include "lms/importance.h"

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
    /* depth scores: each raw sum present gives layers[] or blocks[] (importance/metric.c) */
    double nc = raw->n_cos_rows > 0 ? (double)raw->n_cos_rows : 1;
    double nl = raw->n_loss_tokens > 0 ? (double)raw->n_loss_tokens : 1;
    for (size_t i = 0; ok && i < lms__n_raw_sums; i++) {
        const struct lms__raw_sum *d = &lms__raw_sums[i];
        const double *x = lms__raw_sum_get(raw, d);
        int64_t n = d->per_block ? n_starts : L;
        double **dst = d->per_block ? &imp->blocks : &imp->layers;
        if (!x || !(ok = ensure(dst, n)))
            continue;
        for (int64_t k = 0; k < n; k++)
            (*dst)[k] = d->loss ? (x[k] - raw->base_loss) / nl : 1.0 - x[k] / nc;
    }
    if (!ok)
        return lms_error_set(err, LMS_ENOMEM, "out of memory deriving scores");
    return LMS_OK;
}
