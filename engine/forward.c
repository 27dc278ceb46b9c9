/* The inference engine: weight upload, the workspace plan and the LM head with cross-entropy,
 * around the model defined once in engine/model.c (the same decoder block the trainer runs).
 *
 * Legend: B batch rows, S tokens per row, N = B*S, L layers, H hidden, F FFN width, n_h query
 * heads, n_g key/value heads, d head dim, V logits width, QKV = (n_h + 2 n_g) d.
 *
 * Weights are uploaded once into one device allocation, in the backend's weight dtype: q, k, v
 * fused into one (QKV, H) matrix per layer and gate, up into one (2F, H) matrix, so each
 * projection is one GEMM; norms and biases stay fp32. Activations live in one workspace sized by
 * lms_fwd_plan_make: one residual buffer the layers update in place and one slot of layer
 * activations, without what a backward would need (no rstd, no log-sum-exp, no pre-norm q | k);
 * a forward call allocates nothing. Logits are fp32. */
#include <math.h>
#include <string.h>

#include "engine/model.h"
#include "lms/alloc.h"
#include "lms/engine.h"

#define STAGING_ELEMS ((int64_t)1 << 22) /* weight upload chunk: 4 Mi elements */
#define LOGITS_AUTO_BYTES ((int64_t)64 << 20)


struct lms_engine {
    const struct lms_model *m;
    struct lms_backend *be;
    struct lms_arch a;
    struct lms_engine_opts opts;
    struct lms_fwd_plan plan;
    enum lms_dtype wdt;     /* weight dtype on the device */
    int64_t vocab_in;       /* rows of the embedding */
    int64_t n_logits;       /* V: rows of the LM head */
    struct lms_buf weights; /* every weight, carved below */
    size_t weight_bytes;
    struct lms_buf ws;      /* workspace (plan) */
    void *embed;            /* (V_in, H) */
    void *lm_head;          /* (V, H); == embed when tied */
    float *final_norm;      /* (H) */
    struct lms__layer_weights *layers; /* L entries */
    int32_t *host_pos;      /* (N) positions, host staging */
};

enum lms_status lms_fwd_plan_make(const struct lms_arch *a, int64_t logits_cols,
                                  const struct lms_engine_opts *opts, struct lms_fwd_plan *p,
                                  struct lms_error *err)
{
    memset(p, 0, sizeof *p);
    int64_t N, t;
    if (opts->max_batch <= 0 || opts->max_seq <= 0 || opts->logits_rows < 0 || logits_cols <= 0)
        return lms_error_set(err, LMS_EINVAL, "engine: batch %lld x sequence %lld is not positive",
                             (long long)opts->max_batch, (long long)opts->max_seq);
    if (!lms__mul_ok(opts->max_batch, opts->max_seq, &N) || N > INT32_MAX)
        return lms_error_set(err, LMS_EINVAL, "engine: batch %lld x sequence %lld is too large",
                             (long long)opts->max_batch, (long long)opts->max_seq);
    p->max_tokens = N;
    p->qkv_cols = (a->n_heads + 2 * a->n_groups) * a->head_dim;
    p->logits_cols = logits_cols;
    int64_t R = opts->logits_rows;
    if (R == 0) {
        R = LOGITS_AUTO_BYTES / (logits_cols * 4);
        if (R < 1)
            R = 1;
    }
    if (R > N)
        R = N;
    p->logits_rows = R;
    size_t cur = 0;
    bool ok = lms__mul_ok(N, a->hidden, &t) && lms__reserve(&cur, t, 4, &p->off_x) &&
              lms__reserve(&cur, t, 4, &p->off_xn) && lms__mul_ok(N, p->qkv_cols, &t) &&
              lms__reserve(&cur, t, 4, &p->off_qkv) &&
              lms__mul_ok(N, a->n_heads * a->head_dim, &t) &&
              lms__reserve(&cur, t, 4, &p->off_ctx) && lms__mul_ok(N, 2 * a->ffn, &t) &&
              lms__reserve(&cur, t, 4, &p->off_gu) && lms__mul_ok(N, a->ffn, &t) &&
              lms__reserve(&cur, t, 4, &p->off_act) && lms__mul_ok(R, logits_cols, &t) &&
              lms__reserve(&cur, t, 4, &p->off_logits) && lms__reserve(&cur, R, 4, &p->off_loss) &&
              lms__reserve(&cur, N, 4, &p->off_ids) && lms__reserve(&cur, N, 4, &p->off_pos) &&
              lms__reserve(&cur, N, 4, &p->off_tgt) &&
              lms__mul_ok(opts->max_seq, a->head_dim / 2, &t) &&
              lms__reserve(&cur, t, 4, &p->off_cos) && lms__reserve(&cur, t, 4, &p->off_sin);
    if (!ok)
        return lms_error_set(err, LMS_EINVAL,
                             "engine: workspace for batch %lld x sequence %lld overflows",
                             (long long)opts->max_batch, (long long)opts->max_seq);
    p->bytes = (cur + 63) & ~(size_t)63;
    return LMS_OK;
}

/* ---- weights --------------------------------------------------------------------------------- */

static const struct lms_view *find_view(const struct lms_model *m, enum lms_role role,
                                        int64_t layer)
{
    const struct lms_tensor *t = lms_model_find(m, role, layer);
    return t ? t->view : NULL;
}

/* One weight to upload: the view, where it goes (byte offset in the weights buffer), its dtype
 * on the device, and the field it sets once the buffer exists. */
struct upload {
    const struct lms_view *v;
    enum lms_dtype dt;
    size_t off;
    struct lms__param p;
};

/* Points the field p names at dev (nothing for a later part of a fused matrix). */
static void set_field(struct lms_engine *e, const struct lms__param *p, void *dev)
{
    struct lms__layer_weights *w = p->layer >= 0 ? &e->layers[p->layer] : NULL;
    switch (p->field) {
    case LMS__P_EMBED: e->embed = dev; break;
    case LMS__P_LM_HEAD: e->lm_head = dev; break;
    case LMS__P_FINAL_NORM: e->final_norm = dev; break;
    case LMS__P_QKV: w->qkv = dev; break;
    case LMS__P_QKV_BIAS: w->qkv_bias = dev; break;
    case LMS__P_Q_NORM: w->q_norm = dev; break;
    case LMS__P_K_NORM: w->k_norm = dev; break;
    case LMS__P_O: w->o = dev; break;
    case LMS__P_O_BIAS: w->o_bias = dev; break;
    case LMS__P_ATTN_NORM: w->attn_norm = dev; break;
    case LMS__P_MLP_NORM: w->mlp_norm = dev; break;
    case LMS__P_GU: w->gu = dev; break;
    case LMS__P_DOWN: w->down = dev; break;
    case LMS__P_PART: break;
    }
}

/* Places the model's tensors (lms__model_params) in the weights buffer: matrices in the weight
 * dtype, norms and biases in fp32. A tensor starts 64-byte aligned; the parts of a fused matrix
 * follow each other without padding. */
static bool place_uploads(struct lms_engine *e, const struct lms__param *params, size_t n,
                          struct upload *list, size_t *cursor)
{
    for (size_t i = 0; i < n; i++) {
        const struct lms__param *p = &params[i];
        const struct lms_view *v = find_view(e->m, p->role, p->layer);
        enum lms_dtype dt = p->matrix ? e->wdt : LMS_DTYPE_F32;
        size_t off = *cursor, bytes;
        if (p->field != LMS__P_PART) {
            if (!lms__reserve(cursor, lms_view_numel(v), lms_dtype_size(dt), &off))
                return false;
        } else if (__builtin_mul_overflow((size_t)lms_view_numel(v), lms_dtype_size(dt),
                                          &bytes) ||
                   __builtin_add_overflow(*cursor, bytes, cursor)) {
            return false;
        }
        list[i] = (struct upload){v, dt, off, *p};
    }
    return true;
}

static enum lms_status upload_weights(struct lms_engine *e, struct lms_error *err)
{
    enum lms_status rc;
    size_t cursor = 0, n = lms__model_params(&e->a, NULL);
    struct lms__param *params = lms_calloc(n, sizeof *params);
    struct upload *list = lms_calloc(n, sizeof *list);
    void *staging = lms_malloc((size_t)STAGING_ELEMS * 4);
    if (!params || !list || !staging) {
        rc = lms_error_set(err, LMS_ENOMEM, "engine: out of memory listing weights");
        goto out;
    }
    lms__model_params(&e->a, params);
    if (!place_uploads(e, params, n, list, &cursor)) {
        rc = lms_error_set(err, LMS_EINVAL, "engine: weight sizes overflow");
        goto out;
    }
    e->weight_bytes = (cursor + 63) & ~(size_t)63;
    rc = lms_buf_alloc(e->be, e->weight_bytes, &e->weights, err);
    if (rc) {
        lms_error_wrap(err, "uploading %zu bytes of weights: ", e->weight_bytes);
        goto out;
    }
    char *base = e->weights.ptr;
    for (size_t i = 0; i < n; i++) {
        set_field(e, &list[i].p, base + list[i].off);
        rc = lms__upload_view(e->be, list[i].v, list[i].dt, base + list[i].off, staging,
                               STAGING_ELEMS, err);
        if (rc)
            goto out;
    }
    if (e->a.tie_embeddings)
        e->lm_head = e->embed;
out:
    lms_free(staging);
    lms_free(list);
    lms_free(params);
    return rc;
}

/* ---- engine ---------------------------------------------------------------------------------- */

enum lms_status lms_engine_new(const struct lms_model *m, struct lms_backend *be,
                               const struct lms_engine_opts *opts, struct lms_engine **out,
                               struct lms_error *err)
{
    int64_t vocab_in, n_logits;
    *out = NULL;
    enum lms_status rc = lms__model_check(m, "engine", "model", &vocab_in, &n_logits, err);
    if (rc)
        return rc;
    struct lms_engine *e = lms_calloc(1, sizeof *e);
    if (!e)
        return lms_error_set(err, LMS_ENOMEM, "engine: out of memory");
    e->m = m;
    e->be = be;
    e->a = m->arch;
    e->opts = *opts;
    e->wdt = lms__backend_weight_dtype(be, m->arch.dtype);
    e->vocab_in = vocab_in;
    e->n_logits = n_logits;
    rc = lms_fwd_plan_make(&e->a, e->n_logits, opts, &e->plan, err);
    if (rc)
        goto fail;
    e->layers = lms_calloc((size_t)e->a.n_layers, sizeof *e->layers);
    e->host_pos = lms_malloc((size_t)e->plan.max_tokens * sizeof(int32_t));
    if (!e->layers || !e->host_pos) {
        rc = lms_error_set(err, LMS_ENOMEM, "engine: out of memory");
        goto fail;
    }
    for (int64_t l = 0; l < e->a.n_layers; l++)
        e->layers[l].wdt = e->wdt;
    rc = upload_weights(e, err);
    if (rc)
        goto fail;
    rc = lms_buf_alloc(be, e->plan.bytes, &e->ws, err);
    if (rc) {
        lms_error_wrap(err, "engine: workspace of %zu bytes: ", e->plan.bytes);
        goto fail;
    }
    /* RoPE table for positions 0..max_seq-1, computed on the host once. */
    char *ws = e->ws.ptr;
    rc = lms__rope_table_upload(be, &e->a, opts->max_seq, opts->rope_bf16, ws + e->plan.off_cos,
                                ws + e->plan.off_sin, "engine", err);
    if (rc)
        goto fail;
    *out = e;
    return LMS_OK;
fail:
    lms_engine_free(e);
    return rc;
}

void lms_engine_free(struct lms_engine *e)
{
    if (!e)
        return;
    lms_buf_free(e->be, &e->ws);
    lms_buf_free(e->be, &e->weights);
    lms_free(e->layers);
    lms_free(e->host_pos);
    lms_free(e);
}

const struct lms_fwd_plan *lms_engine_plan(const struct lms_engine *e)
{
    return &e->plan;
}

int64_t lms_engine_logits_cols(const struct lms_engine *e)
{
    return e->n_logits;
}

size_t lms_engine_weight_bytes(const struct lms_engine *e)
{
    return e->weight_bytes;
}

const struct lms_arch *lms_engine_arch(const struct lms_engine *e)
{
    return &e->a;
}

const void *lms_engine_lm_head(const struct lms_engine *e, enum lms_dtype *dtype)
{
    *dtype = e->wdt;
    return e->lm_head;
}

/* ---- forward --------------------------------------------------------------------------------- */

/* y (rows, n) = x (rows, k) . W^T with W (n, k) in the weight dtype: the LM head. */
static enum lms_status linear(struct lms_engine *e, float *y, int64_t ldy, const float *x,
                              int64_t ldx, const void *w, int64_t rows, int64_t n, int64_t k,
                              struct lms_error *err)
{
    return lms__linear(e->be, y, ldy, x, ldx, w, e->wdt, NULL, rows, n, k, 0.0f, err);
}

/* The model's observer: the caller's hook at the points its mask selects. */
struct hook_ctx {
    struct lms_backend *be;
    struct lms_forward *f;
};

static enum lms_status hook(void *ctx, enum lms_hook_point p, int64_t layer, const float *data,
                            int64_t cols, float *grad, struct lms_error *err)
{
    const struct hook_ctx *hc = ctx;
    struct lms_forward *f = hc->f;
    (void)grad; /* inference runs no backward */
    if (!f->hook || !(f->hook_mask & (1u << p)))
        return LMS_OK;
    struct lms_activation act = {p, layer, f->batch, f->seq, cols, data};
    return f->hook(f->hook_ctx, hc->be, &act, err);
}

/* Embedding, every layer not skipped, final norm: the model of engine/model.c on this engine's
 * weights and workspace, in place, saving nothing for a backward. */
static enum lms_status run_model(struct lms_engine *e, struct lms_forward *f,
                                 struct lms_error *err)
{
    const struct lms_fwd_plan *p = &e->plan;
    char *ws = e->ws.ptr;
    float *xn = (float *)(ws + p->off_xn);
    struct hook_ctx hc = {e->be, f};
    struct lms__model_pass ps = {
        .be = e->be, .a = &e->a, .batch = f->batch, .seq = f->seq,
        .pos = (const int32_t *)(ws + p->off_pos), .rope_cos = (const float *)(ws + p->off_cos),
        .rope_sin = (const float *)(ws + p->off_sin), .rope_rows = e->opts.max_seq,
        .observe = hook, .observe_ctx = &hc,
    };
    struct lms__model m = {
        .a = &e->a, .embed = e->embed, .embed_dt = e->wdt, .vocab_in = e->vocab_in,
        .final_norm = e->final_norm, .layers = e->layers,
    };
    struct lms__layer_acts slot = {
        .xn1 = xn, .xn2 = xn, .qkv = (float *)(ws + p->off_qkv),
        .ctx = (float *)(ws + p->off_ctx), .gu = (float *)(ws + p->off_gu),
        .act = (float *)(ws + p->off_act),
    };
    struct lms__model_acts acts = {
        .res = (float *)(ws + p->off_x), .res_step = 0, .slots = &slot, .n_slots = 1,
        .xnf = xn,
    };
    return lms__model_forward(&ps, &m, &acts, (const int32_t *)(ws + p->off_ids),
                              f->skip_layers, err);
}

/* LM head and cross-entropy in chunks of plan.logits_rows token rows. */
static enum lms_status run_head(struct lms_engine *e, struct lms_forward *f,
                                struct lms_error *err)
{
    const struct lms_fwd_plan *p = &e->plan;
    struct lms_backend *be = e->be;
    char *ws = e->ws.ptr;
    const float *xn = (const float *)(ws + p->off_xn);
    float *logits = (float *)(ws + p->off_logits), *loss = (float *)(ws + p->off_loss);
    const int32_t *tgt = (const int32_t *)(ws + p->off_tgt);
    int64_t H = e->a.hidden, V = e->n_logits, N = f->batch * f->seq, R = p->logits_rows;
    enum lms_status rc = LMS_OK;
    float host_loss[256];

    if (f->last_only) {
        /* rows S-1, 2S-1, ...: a strided A operand; B <= R is not guaranteed, so chunk too */
        for (int64_t b0 = 0; b0 < f->batch; b0 += R) {
            int64_t nb = f->batch - b0 < R ? f->batch - b0 : R;
            rc = linear(e, logits, V, xn + ((b0 + 1) * f->seq - 1) * H, f->seq * H, e->lm_head,
                        nb, V, H, err);
            if (!rc && f->logits)
                rc = lms_buf_download(be, f->logits + b0 * V,
                                      (f->logits_cap - (size_t)(b0 * V)) * sizeof(float), logits,
                                      (size_t)(nb * V) * sizeof(float), err);
            if (rc)
                return rc;
        }
        return LMS_OK;
    }
    for (int64_t r0 = 0; r0 < N; r0 += R) {
        int64_t nr = N - r0 < R ? N - r0 : R;
        rc = linear(e, logits, V, xn + r0 * H, H, e->lm_head, nr, V, H, err);
        if (rc)
            return rc;
        if (f->targets) {
            rc = be->ops->cross_entropy(be, loss, logits, V, tgt + r0, nr, V, err);
            for (int64_t i = 0; !rc && i < nr; i += 256) {
                int64_t k = nr - i < 256 ? nr - i : 256;
                rc = lms_buf_download(be, host_loss, sizeof host_loss, loss + i,
                                      (size_t)k * sizeof(float), err);
                for (int64_t j = 0; !rc && j < k; j++)
                    if (f->targets[r0 + i + j] >= 0) {
                        f->loss_sum += host_loss[j];
                        f->n_scored++;
                    }
            }
            if (rc)
                return rc;
        }
        if (f->logits) {
            rc = lms_buf_download(be, f->logits + r0 * V,
                                  (f->logits_cap - (size_t)(r0 * V)) * sizeof(float), logits,
                                  (size_t)(nr * V) * sizeof(float), err);
            if (rc)
                return rc;
        }
    }
    return LMS_OK;
}

enum lms_status lms_engine_forward(struct lms_engine *e, struct lms_forward *f,
                                   struct lms_error *err)
{
    const struct lms_fwd_plan *p = &e->plan;
    struct lms_backend *be = e->be;
    char *ws = e->ws.ptr;
    enum lms_status rc;
    f->loss_sum = 0;
    f->n_scored = 0;
    if (f->batch <= 0 || f->seq <= 0 || f->batch > e->opts.max_batch ||
        f->seq > e->opts.max_seq)
        return lms_error_set(err, LMS_EINVAL,
                             "forward: batch %lld x sequence %lld outside the planned %lld x %lld",
                             (long long)f->batch, (long long)f->seq,
                             (long long)e->opts.max_batch, (long long)e->opts.max_seq);
    int64_t N = f->batch * f->seq, V = e->n_logits;
    if (f->last_only && f->targets)
        return lms_error_set(err, LMS_EINVAL, "forward: targets need logits of every position");
    int64_t want = f->last_only ? f->batch * V : N * V;
    if (f->logits && f->logits_cap < (size_t)want)
        return lms_error_set(err, LMS_EINVAL, "forward: logits buffer holds %zu of %lld floats",
                             f->logits_cap, (long long)want);
    for (int64_t i = 0; i < N; i++) {
        if (f->ids[i] < 0 || f->ids[i] >= e->vocab_in)
            return lms_error_set(err, LMS_EINVAL,
                                 "forward: token id %ld at position %lld is outside the "
                                 "vocabulary [0, %lld)",
                                 (long)f->ids[i], (long long)i, (long long)e->vocab_in);
        if (f->targets && f->targets[i] >= V)
            return lms_error_set(err, LMS_EINVAL,
                                 "forward: target %ld at position %lld is outside [0, %lld)",
                                 (long)f->targets[i], (long long)i, (long long)V);
        e->host_pos[i] = (int32_t)(i % f->seq);
    }
    size_t nb = (size_t)N * sizeof(int32_t);
    rc = lms_buf_upload(be, ws + p->off_ids, f->ids, nb, err);
    if (!rc)
        rc = lms_buf_upload(be, ws + p->off_pos, e->host_pos, nb, err);
    if (!rc && f->targets)
        rc = lms_buf_upload(be, ws + p->off_tgt, f->targets, nb, err);
    if (!rc)
        rc = run_model(e, f, err);
    if (!rc && (f->logits || f->targets))
        rc = run_head(e, f, err);
    if (!rc)
        rc = lms_backend_sync(be, err);
    return rc;
}
