/* The model forward, written once against the backend op table (kernels/backend_impl.h).
 *
 * Legend: B batch rows, S tokens per row, N = B*S, L layers, H hidden, F FFN width, n_h query
 * heads, n_g key/value heads, d head dim, V logits width, QKV = (n_h + 2 n_g) d.
 *
 * Weights are uploaded once into one device allocation, in the backend's weight dtype: q, k, v
 * fused into one (QKV, H) matrix per layer and gate, up into one (2F, H) matrix, so each
 * projection is one GEMM; norms and biases stay fp32. Activations live in one workspace sized by
 * lms_fwd_plan_make; a forward call allocates nothing. Numerics follow transformers' fp32 eager
 * path (modeling_llama / qwen2 / qwen3): RMSNorm in fp32, rotate_half RoPE, softmax scale
 * d^-0.5, SiLU-gated MLP, logits in fp32. */
#include <math.h>
#include <string.h>

#include "kernels/backend_impl.h"
#include "lms/alloc.h"
#include "lms/engine.h"

#define STAGING_ELEMS ((int64_t)1 << 22) /* weight upload chunk: 4 Mi elements */
#define LOGITS_AUTO_BYTES ((int64_t)64 << 20)

struct layer_w {
    void *qkv;        /* (QKV, H) weight dtype */
    float *qkv_bias;  /* (QKV) or NULL */
    float *q_norm;    /* (d) or NULL */
    float *k_norm;    /* (d) or NULL */
    void *o;          /* (H, n_h d) */
    float *o_bias;    /* (H) or NULL */
    float *attn_norm; /* (H) */
    float *mlp_norm;  /* (H) */
    void *gu;         /* (2F, H): gate rows then up rows */
    void *down;       /* (H, F) */
};

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
    struct layer_w *layers; /* L entries */
    int32_t *host_pos;      /* (N) positions, host staging */
};

/* ---- checked sizes ------------------------------------------------------------------------ */

static bool mul_ok(int64_t a, int64_t b, int64_t *out)
{
    return !__builtin_mul_overflow(a, b, out) && *out >= 0;
}

/* Reserves n elements of esize bytes at *cursor (64-byte aligned); false on overflow. */
static bool reserve(size_t *cursor, int64_t n, size_t esize, size_t *off)
{
    size_t bytes, at = (*cursor + 63) & ~(size_t)63;
    if (at < *cursor || n < 0 || __builtin_mul_overflow((size_t)n, esize, &bytes) ||
        __builtin_add_overflow(at, bytes, cursor))
        return false;
    *off = at;
    return true;
}

enum lms_status lms_fwd_plan_make(const struct lms_arch *a, int64_t logits_cols,
                                  const struct lms_engine_opts *opts, struct lms_fwd_plan *p,
                                  struct lms_error *err)
{
    memset(p, 0, sizeof *p);
    int64_t N, t;
    if (opts->max_batch <= 0 || opts->max_seq <= 0 || opts->logits_rows < 0 || logits_cols <= 0)
        return lms_error_set(err, LMS_EINVAL, "engine: batch %lld x sequence %lld is not positive",
                             (long long)opts->max_batch, (long long)opts->max_seq);
    if (!mul_ok(opts->max_batch, opts->max_seq, &N) || N > INT32_MAX)
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
    bool ok = mul_ok(N, a->hidden, &t) && reserve(&cur, t, 4, &p->off_x) &&
              reserve(&cur, t, 4, &p->off_xn) && mul_ok(N, p->qkv_cols, &t) &&
              reserve(&cur, t, 4, &p->off_qkv) &&
              mul_ok(N, a->n_heads * a->head_dim, &t) && reserve(&cur, t, 4, &p->off_ctx) &&
              mul_ok(N, 2 * a->ffn, &t) && reserve(&cur, t, 4, &p->off_gu) &&
              mul_ok(N, a->ffn, &t) && reserve(&cur, t, 4, &p->off_act) &&
              mul_ok(R, logits_cols, &t) && reserve(&cur, t, 4, &p->off_logits) &&
              reserve(&cur, R, 4, &p->off_loss) && reserve(&cur, N, 4, &p->off_ids) &&
              reserve(&cur, N, 4, &p->off_pos) && reserve(&cur, N, 4, &p->off_tgt) &&
              mul_ok(opts->max_seq, a->head_dim / 2, &t) && reserve(&cur, t, 4, &p->off_cos) &&
              reserve(&cur, t, 4, &p->off_sin);
    if (!ok)
        return lms_error_set(err, LMS_EINVAL,
                             "engine: workspace for batch %lld x sequence %lld overflows",
                             (long long)opts->max_batch, (long long)opts->max_seq);
    p->bytes = (cur + 63) & ~(size_t)63;
    return LMS_OK;
}

/* ---- RoPE ------------------------------------------------------------------------------------ */

/* transformers modeling_rope_utils: _compute_default_rope_parameters, linear scaling and
 * _compute_llama3_parameters, all in fp32. */
enum lms_status lms_rope_inv_freq(const struct lms_arch *a, float *dst, size_t dst_cap,
                                  float *attn_scale, struct lms_error *err)
{
    const struct lms_rope *r = &a->rope;
    int64_t d = a->head_dim, half = d / 2;
    if (d <= 0 || d % 2)
        return lms_error_set(err, LMS_EINVAL, "rope: head dim %lld is not even", (long long)d);
    if ((size_t)half > dst_cap)
        return lms_error_set(err, LMS_EINVAL, "rope: %lld frequencies do not fit in %zu",
                             (long long)half, dst_cap);
    switch (r->type) {
    case LMS_ROPE_DEFAULT:
    case LMS_ROPE_LINEAR:
    case LMS_ROPE_LLAMA3:
        break;
    case LMS_ROPE_YARN:
        return lms_error_set(err, LMS_EUNSUPPORTED,
                             "rope type 'yarn' is not supported by the engine yet");
    case LMS_ROPE_DYNAMIC:
        return lms_error_set(err, LMS_EUNSUPPORTED,
                             "rope type 'dynamic' is not supported by the engine yet");
    default:
        return lms_error_set(err, LMS_EUNSUPPORTED, "rope type %d is not supported",
                             (int)r->type);
    }
    if (!(r->theta > 0))
        return lms_error_set(err, LMS_EINVAL, "rope: theta %g is not positive", r->theta);
    float base = (float)r->theta;
    for (int64_t i = 0; i < half; i++) {
        float e = (float)(2 * i) / (float)d;
        dst[i] = 1.0f / powf(base, e);
    }
    if (r->type == LMS_ROPE_LINEAR) {
        if (!(r->factor > 0))
            return lms_error_set(err, LMS_EINVAL, "rope: linear factor %g is not positive",
                                 r->factor);
        for (int64_t i = 0; i < half; i++)
            dst[i] = dst[i] / (float)r->factor;
    } else if (r->type == LMS_ROPE_LLAMA3) {
        double factor = r->factor, lo = r->low_freq_factor, hi = r->high_freq_factor;
        double old = (double)r->original_max_position;
        if (!(factor > 0) || !(lo > 0) || !(hi > lo) || !(old > 0))
            return lms_error_set(err, LMS_EINVAL,
                                 "rope: llama3 factors (factor %g, low %g, high %g, original "
                                 "max position %g) are inconsistent",
                                 factor, lo, hi, old);
        float low_wl = (float)(old / lo), high_wl = (float)(old / hi);
        for (int64_t i = 0; i < half; i++) {
            float f = dst[i];
            float wl = 2.0f * (float)M_PI / f;
            float scaled = wl > low_wl ? f / (float)factor : f;
            float smooth = ((float)old / wl - (float)lo) / (float)(hi - lo);
            float smoothed = (1.0f - smooth) * scaled / (float)factor + smooth * scaled;
            bool medium = !(wl < high_wl) && !(wl > low_wl);
            dst[i] = medium ? smoothed : scaled;
        }
    }
    *attn_scale = 1.0f;
    return LMS_OK;
}

enum lms_status lms_rope_table(const struct lms_arch *a, int64_t n_pos, bool inv_freq_bf16,
                               float *cos_t, float *sin_t, struct lms_error *err)
{
    float inv[1024], scale;
    enum lms_status rc = lms_rope_inv_freq(a, inv, sizeof inv / sizeof inv[0], &scale, err);
    if (rc)
        return rc;
    int64_t half = a->head_dim / 2;
    if (inv_freq_bf16)
        for (int64_t i = 0; i < half; i++)
            inv[i] = lms_bf16_to_f32(lms_f32_to_bf16(inv[i]));
    for (int64_t p = 0; p < n_pos; p++)
        for (int64_t i = 0; i < half; i++) {
            float ang = (float)p * inv[i];
            cos_t[p * half + i] = (float)cos((double)ang) * scale;
            sin_t[p * half + i] = (float)sin((double)ang) * scale;
        }
    return LMS_OK;
}

enum lms_status lms__rope_table_upload(struct lms_backend *be, const struct lms_arch *a,
                                       int64_t n_pos, bool inv_freq_bf16, void *cos_dev,
                                       void *sin_dev, const char *who, struct lms_error *err)
{
    int64_t tab = n_pos * (a->head_dim / 2);
    float *host = lms_malloc((size_t)tab * 2 * sizeof(float));
    if (!host)
        return lms_error_set(err, LMS_ENOMEM, "%s: out of memory for the rope table", who);
    enum lms_status rc = lms_rope_table(a, n_pos, inv_freq_bf16, host, host + tab, err);
    if (!rc)
        rc = lms_buf_upload(be, cos_dev, host, (size_t)tab * sizeof(float), err);
    if (!rc)
        rc = lms_buf_upload(be, sin_dev, host + tab, (size_t)tab * sizeof(float), err);
    lms_free(host);
    return rc;
}

/* ---- weights --------------------------------------------------------------------------------- */

static const struct lms_view *find_view(const struct lms_model *m, enum lms_role role,
                                        int64_t layer)
{
    const struct lms_tensor *t = lms_model_find(m, role, layer);
    return t ? t->view : NULL;
}

/* Streams view v into device address dst as dtype dt, through staging (STAGING_ELEMS of
 * the largest element size). */
static enum lms_status upload_view(struct lms_engine *e, const struct lms_view *v,
                                   enum lms_dtype dt, char *dst, void *staging,
                                   struct lms_error *err)
{
    int64_t n = lms_view_numel(v);
    size_t es = lms_dtype_size(dt);
    for (int64_t e0 = 0; e0 < n; e0 += STAGING_ELEMS) {
        int64_t k = n - e0 < STAGING_ELEMS ? n - e0 : STAGING_ELEMS;
        enum lms_status rc = lms_view_read_as(v, e0, k, dt, staging, err);
        if (!rc)
            rc = lms_buf_upload(e->be, dst + (size_t)e0 * es, staging, (size_t)k * es, err);
        if (rc)
            return rc;
    }
    return LMS_OK;
}

/* One weight to upload: the view, where it goes (byte offset in the weights buffer), its dtype
 * on the device, and the pointer slot to set once the buffer exists. */
struct upload {
    const struct lms_view *v;
    enum lms_dtype dt;
    size_t off;
    void **slot; /* set to base + off for the first part of a slot; NULL for later parts */
};

/* Lists every weight (first pass: counting with list == NULL). */
static size_t list_uploads(struct lms_engine *e, struct upload *list, size_t *cursor, bool *ok)
{
    const struct lms_model *m = e->m;
    const struct lms_arch *a = &e->a;
    size_t n = 0;
#define ADD(view, dtype, slotp)                                                              \
    do {                                                                                     \
        const struct lms_view *v_ = (view);                                                  \
        size_t off_ = 0;                                                                     \
        if (!reserve(cursor, lms_view_numel(v_), lms_dtype_size(dtype), &off_))              \
            *ok = false;                                                                     \
        if (list)                                                                            \
            list[n] = (struct upload){v_, (dtype), off_, (void **)(slotp)};                  \
        n++;                                                                                 \
    } while (0)
    /* fused parts must be contiguous: reserve() aligns to 64 bytes, so parts of one fused
     * matrix are placed with an unaligned cursor step instead */
#define ADD_PART(view, dtype)                                                                \
    do {                                                                                     \
        const struct lms_view *v_ = (view);                                                  \
        size_t off_ = *cursor, bytes_;                                                       \
        if (__builtin_mul_overflow((size_t)lms_view_numel(v_), lms_dtype_size(dtype), &bytes_) || \
            __builtin_add_overflow(*cursor, bytes_, cursor))                                 \
            *ok = false;                                                                     \
        if (list)                                                                            \
            list[n] = (struct upload){v_, (dtype), off_, NULL};                              \
        n++;                                                                                 \
    } while (0)
    enum lms_dtype w = e->wdt, f32 = LMS_DTYPE_F32;
    ADD(find_view(m, LMS_ROLE_EMBED, -1), w, &e->embed);
    if (!a->tie_embeddings)
        ADD(find_view(m, LMS_ROLE_LM_HEAD, -1), w, &e->lm_head);
    ADD(find_view(m, LMS_ROLE_FINAL_NORM, -1), f32, &e->final_norm);
    for (int64_t l = 0; l < a->n_layers; l++) {
        struct layer_w *lw = list ? &e->layers[l] : NULL;
        ADD(find_view(m, LMS_ROLE_Q, l), w, lw ? &lw->qkv : NULL);
        ADD_PART(find_view(m, LMS_ROLE_K, l), w);
        ADD_PART(find_view(m, LMS_ROLE_V, l), w);
        if (a->qkv_bias) {
            ADD(find_view(m, LMS_ROLE_Q_BIAS, l), f32, lw ? &lw->qkv_bias : NULL);
            ADD_PART(find_view(m, LMS_ROLE_K_BIAS, l), f32);
            ADD_PART(find_view(m, LMS_ROLE_V_BIAS, l), f32);
        }
        if (a->qk_norm) {
            ADD(find_view(m, LMS_ROLE_Q_NORM, l), f32, lw ? &lw->q_norm : NULL);
            ADD(find_view(m, LMS_ROLE_K_NORM, l), f32, lw ? &lw->k_norm : NULL);
        }
        ADD(find_view(m, LMS_ROLE_O, l), w, lw ? &lw->o : NULL);
        if (a->o_bias)
            ADD(find_view(m, LMS_ROLE_O_BIAS, l), f32, lw ? &lw->o_bias : NULL);
        ADD(find_view(m, LMS_ROLE_ATTN_NORM, l), f32, lw ? &lw->attn_norm : NULL);
        ADD(find_view(m, LMS_ROLE_MLP_NORM, l), f32, lw ? &lw->mlp_norm : NULL);
        ADD(find_view(m, LMS_ROLE_GATE, l), w, lw ? &lw->gu : NULL);
        ADD_PART(find_view(m, LMS_ROLE_UP, l), w);
        ADD(find_view(m, LMS_ROLE_DOWN, l), w, lw ? &lw->down : NULL);
    }
#undef ADD
#undef ADD_PART
    return n;
}

static enum lms_status upload_weights(struct lms_engine *e, struct lms_error *err)
{
    enum lms_status rc;
    size_t cursor = 0;
    bool ok = true;
    size_t n = list_uploads(e, NULL, &cursor, &ok);
    if (!ok)
        return lms_error_set(err, LMS_EINVAL, "engine: weight sizes overflow");
    struct upload *list = lms_calloc(n, sizeof *list);
    void *staging = lms_malloc((size_t)STAGING_ELEMS * 4);
    if (!list || !staging) {
        rc = lms_error_set(err, LMS_ENOMEM, "engine: out of memory listing weights");
        goto out;
    }
    cursor = 0;
    list_uploads(e, list, &cursor, &ok);
    e->weight_bytes = (cursor + 63) & ~(size_t)63;
    rc = lms_buf_alloc(e->be, e->weight_bytes, &e->weights, err);
    if (rc) {
        lms_error_wrap(err, "uploading %zu bytes of weights: ", e->weight_bytes);
        goto out;
    }
    char *base = e->weights.ptr;
    for (size_t i = 0; i < n; i++) {
        if (list[i].slot)
            *list[i].slot = base + list[i].off;
        rc = upload_view(e, list[i].v, list[i].dt, base + list[i].off, staging, err);
        if (rc)
            goto out;
    }
    if (e->a.tie_embeddings)
        e->lm_head = e->embed;
out:
    lms_free(staging);
    lms_free(list);
    return rc;
}

/* ---- engine ---------------------------------------------------------------------------------- */

enum lms_status lms_engine_new(const struct lms_model *m, struct lms_backend *be,
                               const struct lms_engine_opts *opts, struct lms_engine **out,
                               struct lms_error *err)
{
    enum lms_status rc;
    float inv[1024], scale;
    *out = NULL;
    rc = lms_model_validate(m, err);
    if (rc)
        return lms_error_wrap(err, "engine: ");
    rc = lms_rope_inv_freq(&m->arch, inv, sizeof inv / sizeof inv[0], &scale, err);
    if (rc)
        return lms_error_wrap(err, "engine: ");
    const struct lms_view *emb = find_view(m, LMS_ROLE_EMBED, -1);
    const struct lms_view *head =
        m->arch.tie_embeddings ? emb : find_view(m, LMS_ROLE_LM_HEAD, -1);
    if (!emb || !head)
        return lms_error_set(err, LMS_EFORMAT, "engine: the model has no %s",
                             emb ? "lm_head" : "embedding");

    struct lms_engine *e = lms_calloc(1, sizeof *e);
    if (!e)
        return lms_error_set(err, LMS_ENOMEM, "engine: out of memory");
    e->m = m;
    e->be = be;
    e->a = m->arch;
    e->opts = *opts;
    e->wdt = lms__backend_weight_dtype(be, m->arch.dtype);
    e->vocab_in = emb->shape[0];
    e->n_logits = head->shape[0];
    rc = lms_fwd_plan_make(&e->a, e->n_logits, opts, &e->plan, err);
    if (rc)
        goto fail;
    e->layers = lms_calloc((size_t)e->a.n_layers, sizeof *e->layers);
    e->host_pos = lms_malloc((size_t)e->plan.max_tokens * sizeof(int32_t));
    if (!e->layers || !e->host_pos) {
        rc = lms_error_set(err, LMS_ENOMEM, "engine: out of memory");
        goto fail;
    }
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

/* y (rows, n) = x (rows, k) . W^T with W (n, k) in the weight dtype; beta 1 accumulates into y
 * (the residual adds), bias may be NULL. x rows at stride ldx, y rows at stride ldy. */
static enum lms_status linear(struct lms_engine *e, float *y, int64_t ldy, const float *x,
                              int64_t ldx, const void *w, const float *bias, int64_t rows,
                              int64_t n, int64_t k, float beta, struct lms_error *err)
{
    struct lms_matmul mm = {
        .trans_a = false, .trans_b = true, .m = rows, .n = n, .k = k,
        .a = x, .lda = ldx, .b = w, .b_dtype = e->wdt, .ldb = k,
        .c = y, .ldc = ldy, .batch = 1, .alpha = 1.0f, .beta = beta, .bias = bias,
    };
    return e->be->ops->matmul(e->be, &mm, err);
}

static enum lms_status hook(struct lms_engine *e, struct lms_forward *f,
                            enum lms_hook_point p, int64_t layer, const float *data,
                            int64_t cols, struct lms_error *err)
{
    if (!f->hook || !(f->hook_mask & (1u << p)))
        return LMS_OK;
    struct lms_activation act = {p, layer, f->batch, f->seq, cols, data};
    return f->hook(f->hook_ctx, e->be, &act, err);
}

static enum lms_status run_layer(struct lms_engine *e, struct lms_forward *f, int64_t l,
                                 struct lms_error *err)
{
    const struct lms_arch *a = &e->a;
    const struct lms_fwd_plan *p = &e->plan;
    const struct lms_backend_ops *ops = e->be->ops;
    struct lms_backend *be = e->be;
    const struct layer_w *w = &e->layers[l];
    char *ws = e->ws.ptr;
    float *x = (float *)(ws + p->off_x), *xn = (float *)(ws + p->off_xn);
    float *qkv = (float *)(ws + p->off_qkv), *ctx = (float *)(ws + p->off_ctx);
    float *gu = (float *)(ws + p->off_gu), *act = (float *)(ws + p->off_act);
    const int32_t *pos = (const int32_t *)(ws + p->off_pos);
    const float *cs = (const float *)(ws + p->off_cos), *sn = (const float *)(ws + p->off_sin);
    int64_t N = f->batch * f->seq, H = a->hidden, F = a->ffn, d = a->head_dim;
    int64_t QKV = p->qkv_cols, nq = a->n_heads * d, nkv = a->n_groups * d;
    float eps = (float)a->norm_eps;
    enum lms_status rc;

    rc = ops->rmsnorm(be, xn, H, x, H, w->attn_norm, NULL, N, 1, H, eps, err);
    if (!rc)
        rc = hook(e, f, LMS_HOOK_ATTN_NORM_OUT, l, xn, H, err);
    if (!rc)
        rc = linear(e, qkv, QKV, xn, H, w->qkv, w->qkv_bias, N, QKV, H, 0.0f, err);
    if (!rc && a->qk_norm) {
        rc = ops->rmsnorm(be, qkv, QKV, qkv, QKV, w->q_norm, NULL, N, a->n_heads, d, eps, err);
        if (!rc)
            rc = ops->rmsnorm(be, qkv + nq, QKV, qkv + nq, QKV, w->k_norm, NULL, N, a->n_groups,
                              d, eps, err);
    }
    if (!rc)
        rc = ops->rope(be, qkv, QKV, N, a->n_heads, d, pos, cs, sn, e->opts.max_seq, err);
    if (!rc)
        rc = ops->rope(be, qkv + nq, QKV, N, a->n_groups, d, pos, cs, sn, e->opts.max_seq, err);
    if (rc)
        return rc;
    struct lms_attention at = {
        .batch = f->batch, .seq = f->seq, .n_heads = a->n_heads, .n_groups = a->n_groups,
        .head_dim = d, .q = qkv, .k = qkv + nq, .v = qkv + nq + nkv, .q_stride = QKV,
        .kv_stride = QKV, .out = ctx, .out_stride = nq, .scale = 1.0f / sqrtf((float)d),
        .window = a->sliding_window,
    };
    rc = ops->attention(be, &at, err);
    if (!rc)
        rc = hook(e, f, LMS_HOOK_ATTN_CONTEXT, l, ctx, nq, err);
    if (!rc)
        rc = linear(e, x, H, ctx, nq, w->o, w->o_bias, N, H, nq, 1.0f, err);
    if (!rc)
        rc = ops->rmsnorm(be, xn, H, x, H, w->mlp_norm, NULL, N, 1, H, eps, err);
    if (!rc)
        rc = hook(e, f, LMS_HOOK_MLP_NORM_OUT, l, xn, H, err);
    if (!rc)
        rc = linear(e, gu, 2 * F, xn, H, w->gu, NULL, N, 2 * F, H, 0.0f, err);
    if (!rc)
        rc = ops->swiglu(be, act, F, gu, gu + F, 2 * F, N, F, err);
    if (!rc)
        rc = hook(e, f, LMS_HOOK_DOWN_INPUT, l, act, F, err);
    if (!rc)
        rc = linear(e, x, H, act, F, w->down, NULL, N, H, F, 1.0f, err);
    if (!rc)
        rc = hook(e, f, LMS_HOOK_LAYER_OUT, l, x, H, err);
    return rc;
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
                        NULL, nb, V, H, 0.0f, err);
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
        rc = linear(e, logits, V, xn + r0 * H, H, e->lm_head, NULL, nr, V, H, 0.0f, err);
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
    int64_t N = f->batch * f->seq, V = e->n_logits, H = e->a.hidden;
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
    float *x = (float *)(ws + p->off_x), *xn = (float *)(ws + p->off_xn);
    if (!rc)
        rc = be->ops->embedding(be, x, (const int32_t *)(ws + p->off_ids), N, e->embed, e->wdt,
                                e->vocab_in, H, err);
    if (!rc)
        rc = hook(e, f, LMS_HOOK_EMBED_OUT, -1, x, H, err);
    for (int64_t l = 0; !rc && l < e->a.n_layers; l++)
        if (!f->skip_layers || !f->skip_layers[l])
            rc = run_layer(e, f, l, err);
    if (!rc)
        rc = be->ops->rmsnorm(be, xn, H, x, H, e->final_norm, NULL, N, 1, H,
                              (float)e->a.norm_eps, err);
    if (!rc)
        rc = hook(e, f, LMS_HOOK_FINAL_NORM_OUT, -1, xn, H, err);
    if (!rc && (f->logits || f->targets))
        rc = run_head(e, f, err);
    if (!rc)
        rc = lms_backend_sync(be, err);
    return rc;
}
