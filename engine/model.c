/* The decoder model, written once against the backend op table (kernels/backend_impl.h) and
 * shared by inference (forward.c) and training (train.c): the check of a runnable model, RoPE
 * tables, the list of parameters in their device layout, the decoder block and its backward, the
 * pass over embedding, blocks and final norm. How the callers switch between inference, the
 * training forward and the backward is in engine/model.h.
 *
 * Numerics follow transformers' fp32 eager path (modeling_llama / qwen2 / qwen3): RMSNorm in
 * fp32, q/k norm per head (Qwen3) before rotate_half RoPE, q | k | v and output biases where the
 * architecture has them (struct lms_arch), causal grouped-query attention with softmax scale
 * d^-0.5 and an optional sliding window, SiLU-gated MLP, residual adds after attention and
 * MLP. */
#include <math.h>
#include <string.h>

#include "engine/model.h"
#include "lms/arch.h"
#include "lms/alloc.h"

/* ---- checked sizes ------------------------------------------------------------------------ */

bool lms__mul_ok(int64_t a, int64_t b, int64_t *out)
{
    return !__builtin_mul_overflow(a, b, out) && *out >= 0;
}

bool lms__reserve(size_t *cursor, int64_t n, size_t esize, size_t *off)
{
    size_t bytes, at = (*cursor + 63) & ~(size_t)63;
    if (at < *cursor || n < 0 || __builtin_mul_overflow((size_t)n, esize, &bytes) ||
        __builtin_add_overflow(at, bytes, cursor))
        return false;
    *off = at;
    return true;
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

/* ---- the model a pass can run ------------------------------------------------------------ */

enum lms_status lms__model_check(const struct lms_model *m, const char *who, const char *what,
                                 int64_t *vocab_in, int64_t *n_logits, struct lms_error *err)
{
    float inv[1024], scale;
    enum lms_status rc = lms_model_validate(m, err);
    /* The block this module runs: RMSNorm and SwiGLU. A family whose descriptor names another
     * norm or activation is refused here, by name, until its block is written. */
    const struct lms_arch_desc *d = lms_arch_desc_of(m->arch.family);
    if (!rc && (!d || d->norm != LMS_NORM_RMS || d->act != LMS_ACT_SWIGLU))
        rc = lms_error_set(err, LMS_EUNSUPPORTED, "the %s architecture's block (its norm or "
                           "activation) is not one the engine runs",
                           lms_family_name(m->arch.family));
    if (!rc)
        rc = lms_rope_inv_freq(&m->arch, inv, sizeof inv / sizeof inv[0], &scale, err);
    if (rc)
        return lms_error_wrap(err, "%s: ", who);
    const struct lms_tensor *emb = lms_model_find(m, LMS_ROLE_EMBED, -1);
    const struct lms_tensor *head =
        m->arch.tie_embeddings ? emb : lms_model_find(m, LMS_ROLE_LM_HEAD, -1);
    if (!emb || !head)
        return lms_error_set(err, LMS_EFORMAT, "%s: the %s has no %s", who, what,
                             emb ? "lm_head" : "embedding");
    *vocab_in = emb->view->shape[0];
    *n_logits = head->view->shape[0];
    return LMS_OK;
}

/* ---- parameters -------------------------------------------------------------------------- */

size_t lms__model_params(const struct lms_arch *a, struct lms__param *out)
{
    size_t n = 0;
#define PARAM(role_, layer_, field_, matrix_)                                                \
    do {                                                                                     \
        if (out)                                                                             \
            out[n] = (struct lms__param){(role_), (layer_), (field_), (matrix_)};            \
        n++;                                                                                 \
    } while (0)
    PARAM(LMS_ROLE_EMBED, -1, LMS__P_EMBED, true);
    if (!a->tie_embeddings)
        PARAM(LMS_ROLE_LM_HEAD, -1, LMS__P_LM_HEAD, true);
    PARAM(LMS_ROLE_FINAL_NORM, -1, LMS__P_FINAL_NORM, false);
    for (int64_t l = 0; l < a->n_layers; l++) {
        PARAM(LMS_ROLE_Q, l, LMS__P_QKV, true);
        PARAM(LMS_ROLE_K, l, LMS__P_PART, true);
        PARAM(LMS_ROLE_V, l, LMS__P_PART, true);
        if (a->qkv_bias) {
            PARAM(LMS_ROLE_Q_BIAS, l, LMS__P_QKV_BIAS, false);
            PARAM(LMS_ROLE_K_BIAS, l, LMS__P_PART, false);
            PARAM(LMS_ROLE_V_BIAS, l, LMS__P_PART, false);
        }
        if (a->qk_norm) {
            PARAM(LMS_ROLE_Q_NORM, l, LMS__P_Q_NORM, false);
            PARAM(LMS_ROLE_K_NORM, l, LMS__P_K_NORM, false);
        }
        PARAM(LMS_ROLE_O, l, LMS__P_O, true);
        if (a->o_bias)
            PARAM(LMS_ROLE_O_BIAS, l, LMS__P_O_BIAS, false);
        PARAM(LMS_ROLE_ATTN_NORM, l, LMS__P_ATTN_NORM, false);
        PARAM(LMS_ROLE_MLP_NORM, l, LMS__P_MLP_NORM, false);
        PARAM(LMS_ROLE_GATE, l, LMS__P_GU, true);
        PARAM(LMS_ROLE_UP, l, LMS__P_PART, true);
        PARAM(LMS_ROLE_DOWN, l, LMS__P_DOWN, true);
    }
#undef PARAM
    return n;
}

/* ---- building blocks ---------------------------------------------------------------------- */

enum lms_status lms__gemm(struct lms_backend *be, bool ta, bool tb, int64_t m, int64_t n,
                          int64_t k, const float *A, int64_t lda, const void *B,
                          enum lms_dtype bdt, int64_t ldb, float *C, int64_t ldc, float beta,
                          const float *bias, struct lms_error *err)
{
    struct lms_matmul mm = {
        .trans_a = ta, .trans_b = tb, .m = m, .n = n, .k = k, .a = A, .lda = lda, .b = B,
        .b_dtype = bdt, .ldb = ldb, .c = C, .ldc = ldc, .batch = 1, .alpha = 1.0f,
        .beta = beta, .bias = bias,
    };
    return be->ops->matmul(be, &mm, err);
}

enum lms_status lms__linear(struct lms_backend *be, float *y, int64_t ldy, const float *x,
                            int64_t ldx, const void *w, enum lms_dtype wdt, const float *bias,
                            int64_t rows, int64_t n, int64_t k, float beta,
                            struct lms_error *err)
{
    return lms__gemm(be, false, true, rows, n, k, x, ldx, w, wdt, k, y, ldy, beta, bias, err);
}

enum lms_status lms__linear_backward(struct lms_backend *be, float *dx, int64_t lddx,
                                     float dx_beta, const float *dy, int64_t lddy, const float *x,
                                     int64_t ldx, const void *w, enum lms_dtype wdt, float *dw,
                                     float *dbias, int64_t rows, int64_t n, int64_t k,
                                     struct lms_error *err)
{
    enum lms_status rc = LMS_OK;
    if (dx)
        rc = lms__gemm(be, false, false, rows, k, n, dy, lddy, w, wdt, k, dx, lddx, dx_beta,
                       NULL, err);
    if (!rc)
        rc = lms__gemm(be, true, false, n, k, rows, dy, lddy, x, LMS_DTYPE_F32, ldx, dw, k, 1.0f,
                       NULL, err);
    if (!rc && dbias)
        rc = be->ops->bias_backward(be, dbias, dy, lddy, rows, n, err);
    return rc;
}

enum lms_status lms__upload_view(struct lms_backend *be, const struct lms_view *v,
                                 enum lms_dtype dt, void *dst, void *staging,
                                 int64_t staging_elems, struct lms_error *err)
{
    int64_t n = lms_view_numel(v);
    size_t es = lms_dtype_size(dt);
    for (int64_t e0 = 0; e0 < n; e0 += staging_elems) {
        int64_t k = n - e0 < staging_elems ? n - e0 : staging_elems;
        enum lms_status rc = lms_view_read_as(v, e0, k, dt, staging, err);
        if (!rc)
            rc = lms_buf_upload(be, (char *)dst + (size_t)e0 * es, staging, (size_t)k * es, err);
        if (rc)
            return rc;
    }
    return LMS_OK;
}

enum lms_status lms__copy(struct lms_backend *be, float *dst, const float *src, int64_t n,
                          struct lms_error *err)
{
    return be->ops->cast(be, dst, LMS_DTYPE_F32, src, LMS_DTYPE_F32, n, err);
}

static enum lms_status observe(const struct lms__model_pass *ps, enum lms_hook_point p,
                               int64_t layer, const float *data, int64_t cols, float *grad,
                               struct lms_error *err)
{
    return ps->observe ? ps->observe(ps->observe_ctx, p, layer, data, cols, grad, err) : LMS_OK;
}

/* ---- the decoder block -------------------------------------------------------------------- */

/* The attention and its backward read the same description. */
static struct lms_attention attention_of(const struct lms__model_pass *ps,
                                         const struct lms__layer_acts *s)
{
    const struct lms_arch *a = ps->a;
    int64_t d = a->head_dim, nq = a->n_heads * d, nkv = a->n_groups * d;
    int64_t QKV = nq + 2 * nkv;
    return (struct lms_attention){
        .batch = ps->batch, .seq = ps->seq, .n_heads = a->n_heads, .n_groups = a->n_groups,
        .head_dim = d, .q = s->qkv, .k = s->qkv + nq, .v = s->qkv + nq + nkv, .q_stride = QKV,
        .kv_stride = QKV, .out = s->ctx, .out_stride = nq, .scale = 1.0f / sqrtf((float)d),
        .window = a->sliding_window, .lse = s->lse,
    };
}

/* x_mid = x_in + o(attn(rope(qk_norm(qkv(norm(x_in)))))) */
static enum lms_status attention_half(const struct lms__model_pass *ps, int64_t l,
                                      const struct lms__layer_weights *w,
                                      const struct lms__layer_acts *s, struct lms_error *err)
{
    const struct lms_arch *a = ps->a;
    const struct lms_backend_ops *ops = ps->be->ops;
    struct lms_backend *be = ps->be;
    int64_t N = ps->batch * ps->seq, H = a->hidden, d = a->head_dim;
    int64_t nq = a->n_heads * d, QKV = nq + 2 * a->n_groups * d;
    float eps = (float)a->norm_eps;
    /* with q/k norm the training forward keeps the projection before the norm */
    float *pre = a->qk_norm && s->qkv_pre ? s->qkv_pre : s->qkv;
    enum lms_status rc;

    rc = ops->rmsnorm(be, s->xn1, H, s->x_in, H, w->attn_norm, s->rstd1, N, 1, H, eps, err);
    if (!rc)
        rc = observe(ps, LMS_HOOK_ATTN_NORM_OUT, l, s->xn1, H, NULL, err);
    if (!rc)
        rc = lms__linear(be, pre, QKV, s->xn1, H, w->qkv, w->wdt, w->qkv_bias, N, QKV, H, 0.0f,
                         err);
    if (!rc && a->qk_norm) {
        if (pre != s->qkv) /* v is copied as it is; q and k are normalised below */
            rc = lms__copy(be, s->qkv, pre, N * QKV, err);
        if (!rc)
            rc = ops->rmsnorm(be, s->qkv, QKV, pre, QKV, w->q_norm, s->rstd_q, N, a->n_heads, d,
                              eps, err);
        if (!rc)
            rc = ops->rmsnorm(be, s->qkv + nq, QKV, pre + nq, QKV, w->k_norm, s->rstd_k, N,
                              a->n_groups, d, eps, err);
    }
    if (!rc)
        rc = ops->rope(be, s->qkv, QKV, N, a->n_heads, d, ps->pos, ps->rope_cos, ps->rope_sin,
                       ps->rope_rows, err);
    if (!rc)
        rc = ops->rope(be, s->qkv + nq, QKV, N, a->n_groups, d, ps->pos, ps->rope_cos,
                       ps->rope_sin, ps->rope_rows, err);
    if (rc)
        return rc;
    struct lms_attention at = attention_of(ps, s);
    rc = ops->attention(be, &at, err);
    if (!rc)
        rc = observe(ps, LMS_HOOK_ATTN_CONTEXT, l, s->ctx, nq, NULL, err);
    if (!rc && s->x_mid != s->x_in)
        rc = lms__copy(be, s->x_mid, s->x_in, N * H, err);
    if (!rc)
        rc = lms__linear(be, s->x_mid, H, s->ctx, nq, w->o, w->wdt, w->o_bias, N, H, nq, 1.0f,
                         err);
    return rc;
}

/* x_out = x_mid + down(swiglu(gate_up(norm(x_mid)))) */
static enum lms_status mlp_half(const struct lms__model_pass *ps, int64_t l,
                                const struct lms__layer_weights *w,
                                const struct lms__layer_acts *s, struct lms_error *err)
{
    const struct lms_arch *a = ps->a;
    struct lms_backend *be = ps->be;
    int64_t N = ps->batch * ps->seq, H = a->hidden, F = a->ffn;
    enum lms_status rc;

    rc = be->ops->rmsnorm(be, s->xn2, H, s->x_mid, H, w->mlp_norm, s->rstd2, N, 1, H,
                          (float)a->norm_eps, err);
    if (!rc)
        rc = observe(ps, LMS_HOOK_MLP_NORM_OUT, l, s->xn2, H, NULL, err);
    if (!rc)
        rc = lms__linear(be, s->gu, 2 * F, s->xn2, H, w->gu, w->wdt, NULL, N, 2 * F, H, 0.0f,
                         err);
    if (!rc)
        rc = be->ops->swiglu(be, s->act, F, s->gu, s->gu + F, 2 * F, N, F, err);
    if (!rc)
        rc = observe(ps, LMS_HOOK_DOWN_INPUT, l, s->act, F, NULL, err);
    if (!rc && s->x_out != s->x_mid)
        rc = lms__copy(be, s->x_out, s->x_mid, N * H, err);
    if (!rc)
        rc = lms__linear(be, s->x_out, H, s->act, F, w->down, w->wdt, NULL, N, H, F, 1.0f, err);
    if (!rc)
        rc = observe(ps, LMS_HOOK_LAYER_OUT, l, s->x_out, H, NULL, err);
    return rc;
}

enum lms_status lms__layer_forward(const struct lms__model_pass *ps, int64_t l,
                                   const struct lms__layer_weights *w,
                                   const struct lms__layer_acts *acts, struct lms_error *err)
{
    enum lms_status rc = attention_half(ps, l, w, acts, err);
    return rc ? rc : mlp_half(ps, l, w, acts, err);
}

enum lms_status lms__layer_backward(const struct lms__model_pass *ps, int64_t l,
                                    const struct lms__layer_weights *w,
                                    const struct lms__layer_grads *g,
                                    const struct lms__layer_acts *s,
                                    const struct lms__backward_scratch *d,
                                    struct lms_error *err)
{
    const struct lms_arch *a = ps->a;
    const struct lms_backend_ops *ops = ps->be->ops;
    struct lms_backend *be = ps->be;
    int64_t N = ps->batch * ps->seq, H = a->hidden, F = a->ffn, dh = a->head_dim;
    int64_t nq = a->n_heads * dh, nkv = a->n_groups * dh, QKV = nq + 2 * nkv;
    enum lms_dtype wdt = w->wdt;
    float *dx = d->dx, *dxn = d->dxn, *dqkv = d->dqkv, *dgu = d->dgu;
    enum lms_status rc;

    /* MLP */
    rc = lms__linear_backward(be, d->dact, F, 0.0f, dx, H, s->act, F, w->down, wdt, g->down,
                              NULL, N, H, F, err);
    if (!rc)
        rc = ops->swiglu_backward(be, dgu, dgu + F, 2 * F, d->dact, F, s->gu, s->gu + F, 2 * F,
                                  N, F, err);
    if (!rc)
        rc = lms__linear_backward(be, dxn, H, 0.0f, dgu, 2 * F, s->xn2, H, w->gu, wdt, g->gu,
                                  NULL, N, 2 * F, H, err);
    if (!rc)
        rc = observe(ps, LMS_HOOK_MLP_NORM_OUT, l, s->xn2, H, dxn, err);
    if (!rc)
        rc = ops->rmsnorm_backward(be, dx, H, true, g->mlp_norm, dxn, H, s->x_mid, H,
                                   w->mlp_norm, s->rstd2, N, 1, H, err);
    /* attention */
    if (!rc)
        rc = lms__linear_backward(be, d->dctx, nq, 0.0f, dx, H, s->ctx, nq, w->o, wdt, g->o,
                                  g->o_bias, N, H, nq, err);
    if (rc)
        return rc;
    struct lms_attention_backward ab = {
        .fwd = attention_of(ps, s), .dout = d->dctx, .dout_stride = nq, .dq = dqkv,
        .dq_stride = QKV, .dk = dqkv + nq, .dv = dqkv + nq + nkv, .dkv_stride = QKV,
    };
    rc = ops->attention_backward(be, &ab, err);
    if (!rc)
        rc = ops->rope_backward(be, dqkv, QKV, N, a->n_heads, dh, ps->pos, ps->rope_cos,
                                ps->rope_sin, ps->rope_rows, err);
    if (!rc)
        rc = ops->rope_backward(be, dqkv + nq, QKV, N, a->n_groups, dh, ps->pos, ps->rope_cos,
                                ps->rope_sin, ps->rope_rows, err);
    if (!rc && a->qk_norm) {
        const float *pre = s->qkv_pre;
        rc = ops->rmsnorm_backward(be, dqkv, QKV, false, g->q_norm, dqkv, QKV, pre, QKV,
                                   w->q_norm, s->rstd_q, N, a->n_heads, dh, err);
        if (!rc)
            rc = ops->rmsnorm_backward(be, dqkv + nq, QKV, false, g->k_norm, dqkv + nq, QKV,
                                       pre + nq, QKV, w->k_norm, s->rstd_k, N, a->n_groups, dh,
                                       err);
    }
    if (!rc)
        rc = lms__linear_backward(be, dxn, H, 0.0f, dqkv, QKV, s->xn1, H, w->qkv, wdt, g->qkv,
                                  g->qkv_bias, N, QKV, H, err);
    if (!rc)
        rc = observe(ps, LMS_HOOK_ATTN_NORM_OUT, l, s->xn1, H, dxn, err);
    if (!rc)
        rc = ops->rmsnorm_backward(be, dx, H, true, g->attn_norm, dxn, H, s->x_in, H,
                                   w->attn_norm, s->rstd1, N, 1, H, err);
    return rc;
}

/* ---- the pass ----------------------------------------------------------------------------- */

/* Layer l's activations: its slot, with the residual stream's pointers set. */
static struct lms__layer_acts layer_acts(const struct lms__model_acts *acts, int64_t l)
{
    struct lms__layer_acts s = acts->slots[acts->n_slots == 1 ? 0 : l];
    s.x_in = acts->res + l * acts->res_step;
    s.x_out = s.x_in + acts->res_step;
    if (!s.x_mid)
        s.x_mid = s.x_in;
    return s;
}

enum lms_status lms__model_forward(const struct lms__model_pass *ps, const struct lms__model *m,
                                   const struct lms__model_acts *acts, const int32_t *ids,
                                   const bool *skip, struct lms_error *err)
{
    const struct lms_arch *a = ps->a;
    struct lms_backend *be = ps->be;
    int64_t N = ps->batch * ps->seq, H = a->hidden, L = a->n_layers;
    enum lms_status rc = be->ops->embedding(be, acts->res, ids, N, m->embed, m->embed_dt,
                                            m->vocab_in, H, err);
    if (!rc)
        rc = observe(ps, LMS_HOOK_EMBED_OUT, -1, acts->res, H, NULL, err);
    for (int64_t l = 0; !rc && l < L; l++) {
        if (skip && skip[l])
            continue;
        struct lms__layer_acts s = layer_acts(acts, l);
        rc = lms__layer_forward(ps, l, &m->layers[l], &s, err);
    }
    const float *x_last = acts->res + L * acts->res_step;
    if (!rc)
        rc = be->ops->rmsnorm(be, acts->xnf, H, x_last, H, m->final_norm, acts->rstdf, N, 1, H,
                              (float)a->norm_eps, err);
    if (!rc)
        rc = observe(ps, LMS_HOOK_FINAL_NORM_OUT, -1, acts->xnf, H, NULL, err);
    return rc;
}

enum lms_status lms__model_backward(const struct lms__model_pass *ps, const struct lms__model *m,
                                    const struct lms__model_grads *g,
                                    const struct lms__model_acts *acts,
                                    const struct lms__backward_scratch *d, const int32_t *ids,
                                    bool recompute, struct lms_error *err)
{
    const struct lms_arch *a = ps->a;
    struct lms_backend *be = ps->be;
    int64_t N = ps->batch * ps->seq, H = a->hidden, L = a->n_layers;
    const float *x_last = acts->res + L * acts->res_step;
    struct lms__model_pass quiet = *ps; /* a recomputation observes nothing */
    quiet.observe = NULL;
    enum lms_status rc = observe(ps, LMS_HOOK_FINAL_NORM_OUT, -1, acts->xnf, H, d->dxn, err);
    if (!rc)
        rc = be->ops->rmsnorm_backward(be, d->dx, H, false, g->final_norm, d->dxn, H, x_last, H,
                                       m->final_norm, acts->rstdf, N, 1, H, err);
    for (int64_t l = L - 1; !rc && l >= 0; l--) {
        struct lms__layer_acts s = layer_acts(acts, l);
        if (recompute)
            rc = lms__layer_forward(&quiet, l, &m->layers[l], &s, err);
        if (!rc)
            rc = lms__layer_backward(ps, l, &m->layers[l], &g->layers[l], &s, d, err);
    }
    if (!rc)
        rc = observe(ps, LMS_HOOK_EMBED_OUT, -1, acts->res, H, d->dx, err);
    if (!rc)
        rc = be->ops->embedding_backward(be, g->embed, d->dx, ids, N, m->vocab_in, H, err);
    return rc;
}
