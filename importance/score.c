/* Activation importance on calibration data (include/lms/score.h).
 *
 * One engine forward per micro-batch with hooks on the norm outputs, the attention context, the
 * down-projection input and the layer outputs. Each hook runs one backend op into a device
 * buffer laid out per micro-batch; the buffers are downloaded once after the forward and added
 * into double sums on the host, so the device never accumulates across micro-batches and the
 * sums of two runs over disjoint rows add exactly.
 *
 * Layer inputs for Block Influence are kept in a ring of device copies of the residual stream:
 * the input of layer l is the output of layer l-1 (the embedding output for layer 0); block-BI
 * of n layers needs the inputs of the last n layers, so the ring has max(n, 1) slots.
 *
 * The evaluation selectors (ppl, contiguous) run the same engine again with layers skipped
 * (lms_forward.skip_layers), on the weights already uploaded.
 *
 * Non-finite activations (NaN or infinity: a weight that holds one, or arithmetic that
 * overflows) would poison every sum they touch. The mean |x| of the embedding output and of
 * every layer output is gathered alongside the statistics (one small op per layer), and each
 * micro-batch's statistics are checked in forward order before they are added, so the error
 * names the first layer, hook point and row where a non-finite value appears. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kernels/backend_impl.h"
#include "lms/alloc.h"
#include "lms/engine.h"
#include "lms/hash.h"
#include "lms/recon.h"
#include "lms/score.h"


void lms_score_opts_default(struct lms_score_opts *o)
{
    memset(o, 0, sizeof *o);
    o->row_begin = 0;
    o->row_end = 1024;
    o->seq_len = 4096;
    o->micro_batch = 4;
    o->seed = 1234;
    o->axes = LMS_AXIS_LAYERS | LMS_AXIS_HIDDEN | LMS_AXIS_FFN | LMS_AXIS_HEADS;
    o->layer_metric = LMS_LAYER_METRIC_DEFAULT;
}

int64_t lms_score_rows_available(const struct lms_dataset *ds, int64_t seq_len)
{
    return seq_len > 0 ? lms_dataset_n_tokens(ds) / seq_len : 0;
}

/* Layout of the per-micro-batch device buffers, in floats. */
struct layout {
    int64_t B, S, N, L, H, F, C; /* C = n_h d */
    bool hidden, ffn, heads, bi, block, loss;
    bool gram;                   /* reconstruction statistics (o->gram) */
    int64_t gram_dim;            /* max(F, C): the side of the gram scratch */
    bool layer_loss;             /* the loss variants skip one layer each (else one block) */
    int64_t n_block;             /* n layers per block; blocks L - n + 1 */
    int64_t n_starts;
    int64_t off_hidden, off_ffn, off_ctx, off_resid, stats_floats; /* stats buffer */
    int64_t off_cos, off_bcos, cos_floats;               /* cosine buffer */
    int64_t ring_slots;
};

/* The metric's row (NONE asks for the default one). */
static const struct lms_layer_metric_desc *metric_of(const struct lms_score_opts *o)
{
    return lms_layer_metric_desc(o->layer_metric == LMS_LAYER_METRIC_NONE
                                     ? LMS_LAYER_METRIC_DEFAULT
                                     : o->layer_metric);
}

static enum lms_status plan_layout(const struct lms_arch *a, const struct lms_score_opts *o,
                                   struct layout *y, struct lms_error *err)
{
    memset(y, 0, sizeof *y);
    y->B = o->micro_batch;
    y->S = o->seq_len;
    y->L = a->n_layers;
    y->H = a->hidden;
    y->F = a->ffn;
    y->C = a->n_heads * a->head_dim;
    if (y->B < 1 || y->S < 2 || y->B > (1 << 20) || y->S > (1 << 24) ||
        __builtin_mul_overflow(y->B, y->S, &y->N) || y->N > INT32_MAX)
        return lms_error_set(err, LMS_EINVAL,
                             "score: micro-batch %lld x sequence length %lld is out of range",
                             (long long)y->B, (long long)y->S);
    y->hidden = o->axes & LMS_AXIS_HIDDEN;
    y->ffn = o->axes & LMS_AXIS_FFN;
    y->heads = o->axes & (LMS_AXIS_HEADS | LMS_AXIS_GROUPS);
    y->gram = o->gram != NULL;
    y->gram_dim = y->gram ? (y->F > y->C ? y->F : y->C) : 0;
    const struct lms_layer_metric_desc *lm = metric_of(o);
    if (!lm)
        return lms_error_set(err, LMS_EINVAL, "score: unknown layer metric %d",
                             (int)o->layer_metric);
    /* what the metric's sums need gathered (importance/metric.c) */
    unsigned sums = o->axes & LMS_AXIS_LAYERS ? lm->sums : 0;
    y->bi = sums & (LMS_RAW_LAYER_COS | LMS_RAW_BLOCK_COS);
    y->block = sums & LMS_RAW_BLOCK_COS;
    y->loss = sums & (LMS_RAW_LAYER_LOSS | LMS_RAW_BLOCK_LOSS);
    y->layer_loss = sums & LMS_RAW_LAYER_LOSS;
    if (sums && lm->per_block) {
        if (o->block_size < 1 || o->block_size >= y->L)
            return lms_error_set(err, LMS_EINVAL,
                                 "score: layer metric '%s' needs a block of 1 to %lld layers "
                                 "(the number of layers removed), got %lld",
                                 lm->name, (long long)(y->L - 1), (long long)o->block_size);
        y->n_block = o->block_size;
        y->n_starts = y->L - y->n_block + 1;
    }
    if ((sums & LMS_RAW_LAYER_LOSS) && y->L < 2)
        return lms_error_set(err, LMS_EINVAL, "score: '%s' needs at least 2 layers", lm->name);
    int64_t cur = 0;
    y->off_hidden = cur;
    if (y->hidden)
        cur += y->L * 2 * y->B * y->H;
    y->off_ffn = cur;
    if (y->ffn)
        cur += y->L * y->B * y->F;
    y->off_ctx = cur;
    if (y->heads)
        cur += y->L * y->B * y->C;
    y->off_resid = cur; /* always: the finiteness check; slot 0 embedding, l + 1 layer l */
    cur += (y->L + 1) * y->B * y->H;
    y->stats_floats = cur;
    cur = 0;
    y->off_cos = cur;
    if (y->bi)
        cur += y->L * y->N;
    y->off_bcos = cur;
    if (y->block)
        cur += y->n_starts * y->N;
    y->cos_floats = cur;
    y->ring_slots = y->bi ? (y->n_block > 1 ? y->n_block : 1) : 0;
    return LMS_OK;
}

enum lms_status lms_score_memory_plan(const struct lms_model *m, const struct lms_backend *be,
                                      const struct lms_score_opts *o, uint64_t *bytes,
                                      struct lms_error *err)
{
    struct layout y;
    enum lms_status rc = plan_layout(&m->arch, o, &y, err);
    if (rc)
        return rc;
    const struct lms_tensor *head =
        lms_model_find(m, m->arch.tie_embeddings ? LMS_ROLE_EMBED : LMS_ROLE_LM_HEAD, -1);
    if (!head)
        return lms_error_set(err, LMS_EFORMAT, "score: the model has no LM head");
    struct lms_engine_opts eo = {.max_batch = y.B, .max_seq = y.S};
    struct lms_fwd_plan plan;
    rc = lms_fwd_plan_make(&m->arch, head->view->shape[0], &eo, &plan, err);
    if (rc)
        return rc;
    uint64_t total = plan.bytes, w = 0;
    for (size_t i = 0; i < m->n_tensors; i++) {
        enum lms_dtype dt = lms__backend_weight_dtype(be, m->arch.dtype);
        uint64_t n = (uint64_t)lms_view_numel(m->tensors[i].view);
        if (m->tensors[i].view->ndim < 2)
            dt = LMS_DTYPE_F32;
        w += n * lms_dtype_size(dt);
    }
    total += w;
    total += (uint64_t)(y.stats_floats + y.cos_floats + y.ring_slots * y.N * y.H) * 4;
    /* the host copies of the per-micro-batch buffers */
    total += (uint64_t)(y.stats_floats + y.cos_floats) * 4;
    /* reconstruction: one gram and one column sum per micro-batch on the device and their host
     * copy, a row of ones, and the double sums of every layer */
    if (y.gram)
        total += (uint64_t)(y.gram_dim * (y.gram_dim + 1)) * 8 + (uint64_t)y.N * 4 +
                 lms_gram_bytes(&m->arch);
    *bytes = total;
    return LMS_OK;
}

/* MemAvailable of /proc/meminfo in bytes; 0 when unknown. */
static uint64_t host_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return 0;
    char line[256];
    uint64_t kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %" SCNu64 " kB", &kb) == 1)
            break;
    fclose(f);
    return kb * 1024;
}

uint64_t lms_score_memory_available(const struct lms_backend *be)
{
    return be->dev.kind == LMS_DEVICE_CPU ? host_available() : 0;
}

/* ---- the run ------------------------------------------------------------------------------- */

struct run {
    const struct lms_model *m;
    const struct lms_score_opts *o;
    const struct lms_arch *a;
    struct lms_backend *be;
    struct layout y;
    int64_t batch;            /* rows of the current micro-batch */
    int64_t row0;             /* its first calibration row */
    struct lms_buf stats, cos, ring;
    float *h_stats, *h_cos;   /* host copies */
    struct lms_buf g_dev, ones; /* one micro-batch's gram and column sum; a row of N ones */
    float *h_gram;            /* its host copy */
    struct lms_importance_raw *raw;
};

static float *ring_slot(struct run *r, int64_t layer)
{
    return (float *)r->ring.ptr + (layer % r->y.ring_slots) * r->y.N * r->y.H;
}

/* Adds one micro-batch's a^T a and column sums of the activation (n tokens x d) into layer l's
 * double sums of kind k: one GEMM on the device (per micro-batch in fp32, as the other
 * statistics), downloaded and added on the host, so runs over disjoint rows add exactly. */
static enum lms_status add_gram(struct run *r, enum lms_gram_kind k, const struct lms_activation *act,
                                struct lms_error *err)
{
    struct lms_backend *be = r->be;
    int64_t d = act->cols, n = act->batch * act->seq;
    float *g = r->g_dev.ptr, *s = g + d * d;
    struct lms_matmul gram = {.trans_a = true, .m = d, .n = d, .k = n, .a = act->data, .lda = d,
                              .b = act->data, .b_dtype = LMS_DTYPE_F32, .ldb = d, .c = g,
                              .ldc = d, .batch = 1, .alpha = 1};
    struct lms_matmul colsum = {.m = 1, .n = d, .k = n, .a = r->ones.ptr, .lda = n,
                                .b = act->data, .b_dtype = LMS_DTYPE_F32, .ldb = d, .c = s,
                                .ldc = d, .batch = 1, .alpha = 1};
    enum lms_status rc = be->ops->matmul(be, &gram, err);
    if (!rc)
        rc = be->ops->matmul(be, &colsum, err);
    if (!rc)
        rc = lms_buf_download(be, r->h_gram, (size_t)(d * (d + 1)) * 4, g,
                              (size_t)(d * (d + 1)) * 4, err);
    if (rc)
        return rc;
    double *dg = r->o->gram->gram[k] + act->layer * d * d, *ds = r->o->gram->sum[k] + act->layer * d;
    for (int64_t i = 0; i < d * d; i++)
        dg[i] += r->h_gram[i];
    for (int64_t i = 0; i < d; i++)
        ds[i] += r->h_gram[d * d + i];
    return LMS_OK;
}

static enum lms_status on_hook(void *ctx, struct lms_backend *be, const struct lms_activation *act,
                               struct lms_error *err)
{
    struct run *r = ctx;
    const struct layout *y = &r->y;
    const struct lms_backend_ops *ops = be->ops;
    float *stats = r->stats.ptr, *cos = r->cos.ptr;
    int64_t l = act->layer, B = act->batch, S = act->seq, n = B * S;
    switch (act->point) {
    case LMS_HOOK_ATTN_NORM_OUT:
    case LMS_HOOK_MLP_NORM_OUT: {
        int k = act->point == LMS_HOOK_MLP_NORM_OUT;
        return ops->abs_mean(be, stats + y->off_hidden + (l * 2 + k) * y->B * y->H, act->data,
                             act->cols, B, S, act->cols, err);
    }
    case LMS_HOOK_DOWN_INPUT: {
        enum lms_status rc = y->ffn ? ops->abs_mean(be, stats + y->off_ffn + l * y->B * y->F,
                                                    act->data, act->cols, B, S, act->cols, err)
                                    : LMS_OK;
        return !rc && y->gram ? add_gram(r, LMS_GRAM_DOWN, act, err) : rc;
    }
    case LMS_HOOK_ATTN_CONTEXT: {
        enum lms_status rc = y->heads ? ops->abs_mean(be, stats + y->off_ctx + l * y->B * y->C,
                                                      act->data, act->cols, B, S, act->cols, err)
                                      : LMS_OK;
        return !rc && y->gram ? add_gram(r, LMS_GRAM_O, act, err) : rc;
    }
    case LMS_HOOK_EMBED_OUT: {
        enum lms_status rc = ops->abs_mean(be, stats + y->off_resid, act->data, y->H, B, S,
                                           y->H, err);
        if (!rc && y->bi)
            rc = ops->cast(be, ring_slot(r, 0), LMS_DTYPE_F32, act->data, LMS_DTYPE_F32,
                           n * y->H, err);
        return rc;
    }
    case LMS_HOOK_LAYER_OUT: {
        enum lms_status rc = ops->abs_mean(be, stats + y->off_resid + (l + 1) * y->B * y->H,
                                           act->data, y->H, B, S, y->H, err);
        if (rc || !y->bi)
            return rc;
        rc = ops->row_cosine(be, cos + y->off_cos + l * y->N, ring_slot(r, l), y->H, act->data,
                             y->H, n, y->H, err);
        int64_t s = l - y->n_block + 1;
        if (!rc && y->block && s >= 0)
            rc = ops->row_cosine(be, cos + y->off_bcos + s * y->N, ring_slot(r, s), y->H,
                                 act->data, y->H, n, y->H, err);
        if (!rc && l + 1 < y->L)
            rc = ops->cast(be, ring_slot(r, l + 1), LMS_DTYPE_F32, act->data, LMS_DTYPE_F32,
                           n * y->H, err);
        return rc;
    }
    default:
        return LMS_OK;
    }
}

/* First row b < nb whose n values at base + b * stride hold a NaN or an infinity; -1: none. */
static int64_t nonfinite_row(const float *base, int64_t stride, int64_t n, int64_t nb)
{
    for (int64_t b = 0; b < nb; b++)
        for (int64_t c = 0; c < n; c++)
            if (!isfinite(base[b * stride + c]))
                return b;
    return -1;
}

/* "model.layers.2" for layer 2 of m: the name of one of its tensors up to the layer number;
 * the embedding's name for layer -1. False when no tensor name shows it (stacked layouts). */
static bool layer_name(const struct lms_model *m, int64_t layer, char *dst, size_t cap)
{
    char num[32];
    snprintf(num, sizeof num, ".%lld.", (long long)layer);
    for (size_t i = 0; i < m->n_tensors; i++) {
        const struct lms_tensor *t = &m->tensors[i];
        if (layer < 0 ? t->role != LMS_ROLE_EMBED : t->layer != layer)
            continue;
        const char *at = layer < 0 ? NULL : strstr(t->name, num);
        if (layer >= 0 && !at)
            continue;
        int len = at ? (int)(at - t->name) + (int)strlen(num) - 1 : (int)strlen(t->name);
        snprintf(dst, cap, "%.*s", len, t->name);
        return true;
    }
    return false;
}

static enum lms_status nonfinite_error(const struct run *r, int64_t layer, const char *point,
                                       int64_t b, struct lms_error *err)
{
    char name[160], where[200];
    bool named = layer_name(r->m, layer, name, sizeof name);
    int n = layer < 0 ? snprintf(where, sizeof where, "the embedding")
                      : snprintf(where, sizeof where, "layer %lld", (long long)layer);
    if (named && n > 0 && (size_t)n < sizeof where)
        snprintf(where + n, sizeof where - (size_t)n, " (%s)", name);
    const char *model = r->o->model_name;
    return lms_error_set(err, LMS_EFORMAT,
                         "%s%s%s%s: non-finite activations (NaN or infinity) at the %s on "
                         "calibration row %lld: the weights hold a non-finite value or the "
                         "arithmetic overflows",
                         model ? "'" : "", model ? model : "", model ? "': " : "", where, point,
                         (long long)(r->row0 + b));
}

/* Checks the micro-batch's statistics in forward order (the embedding, then per layer its
 * attention norm output, attention context, MLP norm output, down-projection input, output
 * and cosines), so the error names where non-finite values first appear. */
static enum lms_status check_finite(const struct run *r, struct lms_error *err)
{
    const struct layout *y = &r->y;
    const float *hs = r->h_stats, *hc = r->h_cos;
    int64_t nb = r->batch, b;
    if ((b = nonfinite_row(hs + y->off_resid, y->H, y->H, nb)) >= 0)
        return nonfinite_error(r, -1, "embedding output", b, err);
    for (int64_t l = 0; l < y->L; l++) {
        if (y->hidden &&
            (b = nonfinite_row(hs + y->off_hidden + l * 2 * y->B * y->H, y->H, y->H, nb)) >= 0)
            return nonfinite_error(r, l, "attention norm output", b, err);
        if (y->heads && (b = nonfinite_row(hs + y->off_ctx + l * y->B * y->C, y->C, y->C, nb)) >= 0)
            return nonfinite_error(r, l, "attention context", b, err);
        if (y->hidden && (b = nonfinite_row(hs + y->off_hidden + (l * 2 + 1) * y->B * y->H, y->H,
                                            y->H, nb)) >= 0)
            return nonfinite_error(r, l, "MLP norm output", b, err);
        if (y->ffn && (b = nonfinite_row(hs + y->off_ffn + l * y->B * y->F, y->F, y->F, nb)) >= 0)
            return nonfinite_error(r, l, "down-projection input", b, err);
        if ((b = nonfinite_row(hs + y->off_resid + (l + 1) * y->B * y->H, y->H, y->H, nb)) >= 0)
            return nonfinite_error(r, l, "layer output", b, err);
        if (y->bi && (b = nonfinite_row(hc + y->off_cos + l * y->N, y->S, y->S, nb)) >= 0)
            return nonfinite_error(r, l, "cosine of the layer input and output", b, err);
        int64_t s = l - y->n_block + 1;
        if (y->block && s >= 0 &&
            (b = nonfinite_row(hc + y->off_bcos + s * y->N, y->S, y->S, nb)) >= 0)
            return nonfinite_error(r, l, "cosine of the block input and output", b, err);
    }
    return LMS_OK;
}

/* A loss sum of the micro-batch that is not finite: the final norm or the LM head (or, with
 * layers skipped, the shortened model) produced NaN or infinity. */
static enum lms_status check_loss(const struct run *r, double loss, const char *variant,
                                  struct lms_error *err)
{
    if (isfinite(loss))
        return LMS_OK;
    const char *model = r->o->model_name;
    return lms_error_set(err, LMS_EFORMAT,
                         "%s%s%snon-finite LM loss (NaN or infinity)%s on calibration rows "
                         "[%lld, %lld): the weights hold a non-finite value or the arithmetic "
                         "overflows",
                         model ? "'" : "", model ? model : "", model ? "': " : "", variant,
                         (long long)r->row0, (long long)(r->row0 + r->batch));
}

/* Adds the current micro-batch's statistics into the double sums (after check_finite). */
static enum lms_status accumulate(struct run *r, struct lms_error *err)
{
    const struct layout *y = &r->y;
    struct lms_importance_raw *raw = r->raw;
    int64_t B = r->batch, N = B * y->S;
    enum lms_status rc = LMS_OK;
    if (y->stats_floats)
        rc = lms_buf_download(r->be, r->h_stats, (size_t)y->stats_floats * 4, r->stats.ptr,
                              (size_t)y->stats_floats * 4, err);
    if (!rc && y->cos_floats)
        rc = lms_buf_download(r->be, r->h_cos, (size_t)y->cos_floats * 4, r->cos.ptr,
                              (size_t)y->cos_floats * 4, err);
    if (!rc)
        rc = check_finite(r, err);
    if (rc)
        return rc;
    const float *hs = r->h_stats;
    if (y->hidden)
        for (int64_t lk = 0; lk < y->L * 2; lk++)
            for (int64_t b = 0; b < B; b++) {
                const float *m = hs + y->off_hidden + (lk * y->B + b) * y->H;
                double *q = raw->hidden_sq + lk * y->H;
                for (int64_t c = 0; c < y->H; c++)
                    q[c] += (double)m[c] * m[c];
            }
    if (y->ffn)
        for (int64_t l = 0; l < y->L; l++)
            for (int64_t b = 0; b < B; b++) {
                const float *m = hs + y->off_ffn + (l * y->B + b) * y->F;
                double *q = raw->ffn_sq + l * y->F;
                for (int64_t c = 0; c < y->F; c++)
                    q[c] += (double)m[c] * m[c];
            }
    if (y->heads) {
        int64_t nh = r->a->n_heads, d = r->a->head_dim;
        for (int64_t l = 0; l < y->L; l++)
            for (int64_t b = 0; b < B; b++) {
                const float *m = hs + y->off_ctx + (l * y->B + b) * y->C;
                for (int64_t h = 0; h < nh; h++) {
                    double s = 0;
                    for (int64_t c = h * d; c < (h + 1) * d; c++)
                        s += (double)m[c] * m[c];
                    raw->head_sq[l * nh + h] += s;
                }
            }
    }
    if (y->bi) {
        for (int64_t l = 0; l < y->L; l++) {
            double s = 0;
            for (int64_t i = 0; i < N; i++)
                s += r->h_cos[y->off_cos + l * y->N + i];
            raw->layer_cos[l] += s;
        }
        for (int64_t st = 0; y->block && st < y->n_starts; st++) {
            double s = 0;
            for (int64_t i = 0; i < N; i++)
                s += r->h_cos[y->off_bcos + st * y->N + i];
            raw->block_cos[st] += s;
        }
        raw->n_cos_rows += N;
    }
    return LMS_OK;
}

/* The reconstruction statistics' sums and scratch: the double sums on the host, one
 * micro-batch's gram and column sum on the device with their host copy, and a row of ones
 * (the left operand of the column sum). */
static enum lms_status gram_setup(struct run *r, struct lms_error *err)
{
    const struct layout *y = &r->y;
    size_t side = (size_t)y->gram_dim;
    enum lms_status rc = lms_gram_alloc(r->o->gram, r->a, err);
    if (!rc)
        rc = lms_buf_alloc(r->be, side * (side + 1) * 4, &r->g_dev, err);
    if (!rc)
        rc = lms_buf_alloc(r->be, (size_t)y->N * 4, &r->ones, err);
    float *ones = rc ? NULL : lms_malloc((size_t)y->N * 4);
    r->h_gram = rc ? NULL : lms_malloc(side * (side + 1) * 4);
    if (!rc && (!ones || !r->h_gram))
        rc = lms_error_set(err, LMS_ENOMEM, "score: out of memory for the reconstruction sums");
    for (int64_t i = 0; !rc && i < y->N; i++)
        ones[i] = 1.0f;
    if (!rc)
        rc = lms_buf_upload(r->be, r->ones.ptr, ones, (size_t)y->N * 4, err);
    lms_free(ones);
    return rc;
}

static void gram_provenance(struct lms_gram *g, int64_t n_rows, int64_t seq_len,
                            const char *data_fp, const char *model_fp)
{
    g->n_rows = n_rows;
    g->row_length = seq_len;
    g->n_tokens = n_rows * seq_len;
    snprintf(g->data_fp, sizeof g->data_fp, "%s", data_fp);
    snprintf(g->model_fp, sizeof g->model_fp, "%s", model_fp);
}

static double *zeros(int64_t n, bool *ok)
{
    double *p = lms_calloc((size_t)(n > 0 ? n : 1), sizeof(double));
    if (!p)
        *ok = false;
    return p;
}

static json_t *provenance(const struct lms_score_opts *o, const struct lms_backend *be,
                          enum lms_layer_metric lm, const char *data_fp, const char *model_fp)
{
    json_t *s = json_pack("{s:s,s:I,s:I,s:I,s:I,s:s,s:I,s:s}", "data",
                          o->data_name ? o->data_name : "", "rows",
                          (json_int_t)(o->row_end - o->row_begin), "row_begin",
                          (json_int_t)o->row_begin, "row_end", (json_int_t)o->row_end,
                          "row_length", (json_int_t)o->seq_len, "order",
                          o->sequential ? "sequential" : "shuffled", "micro_batch_size",
                          (json_int_t)o->micro_batch, "device", lms_backend_name(be));
    if (s && !o->sequential) {
        json_object_set_new(s, "seed", json_integer((json_int_t)o->seed));
        json_object_set_new(s, "sampler", json_string(LMS_SAMPLER_ORDER));
    }
    if (s && (o->axes & LMS_AXIS_LAYERS))
        json_object_set_new(s, "layer_metric", json_string(lms_layer_metric_name(lm)));
    if (s && (json_object_set_new(s, "data_fingerprint", json_string(data_fp)) ||
              json_object_set_new(s, "model_fingerprint", json_string(model_fp)))) {
        json_decref(s);
        return NULL;
    }
    return s;
}

enum lms_status lms_score_run(const struct lms_model *m, struct lms_backend *be,
                              const struct lms_dataset *ds, const struct lms_score_opts *o,
                              struct lms_importance *imp, struct lms_error *err)
{
    const struct lms_arch *a = &m->arch;
    struct run r = {.m = m, .o = o, .a = a, .be = be};
    struct lms_engine *e = NULL;
    struct lms_sampler *smp = NULL;
    int32_t *ids = NULL, *tgt = NULL;
    bool *skip = NULL;
    enum lms_status rc;
    lms_importance_init(imp, a);

    if (!be->ops->abs_mean || !be->ops->row_cosine)
        return lms_error_set(err, LMS_EUNSUPPORTED,
                             "score: backend '%s' has no activation-statistics ops",
                             lms_backend_name(be));
    rc = plan_layout(a, o, &r.y, err);
    if (rc)
        return rc;
    const struct layout *y = &r.y;
    enum lms_layer_metric lm = metric_of(o)->id;
    int64_t avail = lms_score_rows_available(ds, y->S);
    if (o->row_begin < 0 || o->row_end <= o->row_begin)
        return lms_error_set(err, LMS_EINVAL, "score: rows [%lld, %lld) are empty",
                             (long long)o->row_begin, (long long)o->row_end);
    if (o->row_end > avail)
        return lms_error_set(err, LMS_EINVAL,
                             "score: the data holds %lld tokens = %lld rows of %lld tokens; rows "
                             "[%lld, %lld) requested",
                             (long long)lms_dataset_n_tokens(ds), (long long)avail,
                             (long long)y->S, (long long)o->row_begin, (long long)o->row_end);
    uint64_t need, limit = o->memory_limit;
    rc = lms_score_memory_plan(m, be, o, &need, err);
    if (rc)
        return rc;
    if (!limit)
        limit = lms_score_memory_available(be);
    if (limit && need > limit)
        return lms_error_set(err, LMS_ENOMEM,
                             "score: micro-batch %lld x sequence length %lld needs %.2f GB "
                             "(weights, activations and statistics) but %.2f GB are available",
                             (long long)y->B, (long long)y->S, (double)need / 1e9,
                             (double)limit / 1e9);

    rc = lms_sampler_new_calibration(ds, y->S, o->seed, !o->sequential, &smp, err);
    if (rc)
        return rc;
    int64_t n_rows = o->row_end - o->row_begin;
    ids = lms_malloc((size_t)(y->N) * sizeof(int32_t));
    tgt = lms_malloc((size_t)(y->N) * sizeof(int32_t));
    skip = lms_calloc((size_t)y->L, sizeof(bool));
    if (!ids || !tgt || !skip) {
        rc = lms_error_set(err, LMS_ENOMEM, "score: out of memory");
        goto out;
    }
    /* Every id is checked before any compute, so bad data fails in seconds, not hours. */
    const struct lms_tensor *emb = lms_model_find(m, LMS_ROLE_EMBED, -1);
    int64_t vocab = emb ? emb->view->shape[0] : a->vocab;
    for (int64_t row = o->row_begin; row < o->row_end; row++) {
        rc = lms_sampler_window(smp, row, ids, (size_t)y->N, err);
        if (rc)
            goto out;
        for (int64_t t = 0; t < y->S; t++)
            if (ids[t] < 0 || ids[t] >= vocab) {
                rc = lms_error_set(err, LMS_EFORMAT,
                                   "dataset '%s': row %lld: token id %ld at position %lld is "
                                   "outside the model's vocabulary [0, %lld)",
                                   o->data_name ? o->data_name : "(calibration data)",
                                   (long long)row, (long)ids[t], (long long)t, (long long)vocab);
                goto out;
            }
    }

    char data_fp[LMS_HASH64_HEX], model_fp[LMS_HASH64_HEX];
    rc = lms_dataset_fingerprint(ds, data_fp, err);
    if (!rc && o->model_fingerprint)
        snprintf(model_fp, sizeof model_fp, "%s", o->model_fingerprint);
    else if (!rc)
        rc = lms_model_fingerprint(m, model_fp, err);
    if (rc)
        goto out;

    struct lms_engine_opts eo = {.max_batch = y->B, .max_seq = y->S};
    rc = lms_engine_new(m, be, &eo, &e, err);
    if (rc)
        goto out;
    if (y->stats_floats)
        rc = lms_buf_alloc(be, (size_t)y->stats_floats * 4, &r.stats, err);
    if (!rc && y->cos_floats)
        rc = lms_buf_alloc(be, (size_t)y->cos_floats * 4, &r.cos, err);
    if (!rc && y->ring_slots)
        rc = lms_buf_alloc(be, (size_t)(y->ring_slots * y->N * y->H) * 4, &r.ring, err);
    if (!rc && y->gram)
        rc = gram_setup(&r, err);
    if (rc)
        goto out;
    r.h_stats = lms_malloc((size_t)(y->stats_floats + 1) * 4);
    r.h_cos = lms_malloc((size_t)(y->cos_floats + 1) * 4);
    bool ok = r.h_stats && r.h_cos;
    struct lms_importance_raw *raw = &imp->raw;
    raw->present = true;
    raw->seq_len = y->S;
    if (y->hidden)
        raw->hidden_sq = zeros(y->L * 2 * y->H, &ok);
    if (y->ffn)
        raw->ffn_sq = zeros(y->L * y->F, &ok);
    if (y->heads)
        raw->head_sq = zeros(y->L * a->n_heads, &ok);
    if (y->bi)
        raw->layer_cos = zeros(y->L, &ok);
    if (y->block)
        raw->block_cos = zeros(y->n_starts, &ok);
    if (y->loss && y->layer_loss)
        raw->layer_loss = zeros(y->L, &ok);
    if (y->loss && !y->layer_loss)
        raw->block_loss = zeros(y->n_starts, &ok);
    if (!ok) {
        rc = lms_error_set(err, LMS_ENOMEM, "score: out of memory for the sums");
        goto out;
    }
    r.raw = raw;
    imp->block_size = y->n_block; /* 0 unless a block metric was gathered */
    if (o->axes & LMS_AXIS_LAYERS)
        imp->layer_metric = lm;

    int64_t variants = y->loss ? (y->layer_loss ? y->L : y->n_starts) : 0;
    uint64_t total = (uint64_t)(n_rows * (1 + variants)), done = 0;
    unsigned mask = 1u << LMS_HOOK_EMBED_OUT | 1u << LMS_HOOK_LAYER_OUT; /* always: check_finite */
    if (y->hidden)
        mask |= 1u << LMS_HOOK_ATTN_NORM_OUT | 1u << LMS_HOOK_MLP_NORM_OUT;
    if (y->ffn)
        mask |= 1u << LMS_HOOK_DOWN_INPUT;
    if (y->heads || y->gram)
        mask |= 1u << LMS_HOOK_ATTN_CONTEXT;
    if (y->gram)
        mask |= 1u << LMS_HOOK_DOWN_INPUT;
    for (int64_t r0 = o->row_begin; r0 < o->row_end; r0 += y->B) {
        int64_t nb = o->row_end - r0 < y->B ? o->row_end - r0 : y->B;
        for (int64_t b = 0; b < nb; b++) {
            rc = lms_sampler_window(smp, r0 + b, ids + b * y->S, (size_t)y->S, err);
            if (rc)
                goto out;
        }
        for (int64_t i = 0; i < nb * y->S; i++)
            tgt[i] = i % y->S == y->S - 1 ? -1 : ids[i + 1];
        r.batch = nb;
        r.row0 = r0;
        struct lms_forward f = {.ids = ids, .batch = nb, .seq = y->S, .hook = on_hook,
                                .hook_ctx = &r, .hook_mask = mask,
                                .targets = y->loss ? tgt : NULL};
        rc = lms_engine_forward(e, &f, err);
        if (!rc)
            rc = accumulate(&r, err);
        if (!rc && y->loss)
            rc = check_loss(&r, f.loss_sum, "", err);
        if (rc)
            goto out;
        if (y->loss) {
            raw->base_loss += f.loss_sum;
            raw->n_loss_tokens += f.n_scored;
        }
        done += (uint64_t)nb;
        if (o->progress)
            o->progress(o->progress_ctx, done, total);
        for (int64_t v = 0; v < variants; v++) {
            int64_t first = v, count = y->layer_loss ? 1 : y->n_block;
            for (int64_t l = 0; l < y->L; l++)
                skip[l] = l >= first && l < first + count;
            struct lms_forward g = {.ids = ids, .batch = nb, .seq = y->S, .targets = tgt,
                                    .skip_layers = skip};
            rc = lms_engine_forward(e, &g, err);
            if (!rc) {
                char variant[96];
                if (count == 1)
                    snprintf(variant, sizeof variant, " with layer %lld skipped",
                             (long long)first);
                else
                    snprintf(variant, sizeof variant, " with layers %lld-%lld skipped",
                             (long long)first, (long long)(first + count - 1));
                rc = check_loss(&r, g.loss_sum, variant, err);
            }
            if (rc)
                goto out;
            (y->layer_loss ? raw->layer_loss : raw->block_loss)[v] += g.loss_sum;
            done += (uint64_t)nb;
            if (o->progress)
                o->progress(o->progress_ctx, done, total);
        }
    }
    raw->n_rows = n_rows;
    if (y->gram)
        gram_provenance(o->gram, n_rows, y->S, data_fp, model_fp);
    imp->method = lms_strdup("activation");
    imp->source = provenance(o, be, lm, data_fp, model_fp);
    if (!imp->method || !imp->source) {
        rc = lms_error_set(err, LMS_ENOMEM, "score: out of memory");
        goto out;
    }
    rc = lms_importance_derive(imp, o->axes & LMS_AXIS_GROUPS, err);
out:
    lms_buf_free(be, &r.stats);
    lms_buf_free(be, &r.cos);
    lms_buf_free(be, &r.ring);
    lms_buf_free(be, &r.g_dev);
    lms_buf_free(be, &r.ones);
    lms_free(r.h_gram);
    if (rc && o->gram)
        lms_gram_release(o->gram);
    lms_free(r.h_stats);
    lms_free(r.h_cos);
    lms_engine_free(e);
    lms_sampler_free(smp);
    lms_free(ids);
    lms_free(tgt);
    lms_free(skip);
    if (rc)
        lms_importance_release(imp);
    return rc;
}
