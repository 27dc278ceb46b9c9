/* CPU training ops: backward of embedding, RMSNorm, RoPE, SwiGLU and biases; the logit losses
 * (KD and cross-entropy with their gradient, over the vocabulary in passes of one row, never
 * storing probabilities); the intermediate hidden-state losses; sum of squares, AdamW and scale.
 * Reductions over channels and rows run in double so the CPU stays the numerical reference (the
 * logit losses' exponentials run in float, on 8 lanes, with their sums carried into double).
 * Argument shapes are documented at the slots in kernels/backend_impl.h. */
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels/cpu/cpu.h"
#include "lms/alloc.h"
#include "lms/dtype.h"
#include "lms/train.h"

static int thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* ---- embedding, norms, rope, swiglu, bias --------------------------------------------------- */

enum lms_status lms__cpu_embedding_backward(struct lms_backend *be, float *dtable,
                                            const float *dout, const int32_t *ids, int64_t n,
                                            int64_t vocab, int64_t hidden,
                                            struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            return lms_error_set(err, LMS_EINVAL,
                                 "embedding backward: token id %ld at position %lld is outside "
                                 "[0, %lld)",
                                 (long)ids[i], (long long)i, (long long)vocab);
    /* threads own column ranges, so repeated ids never race */
    int64_t chunk = 64, n_chunks = (hidden + chunk - 1) / chunk;
#pragma omp parallel for num_threads(cx->n_threads) schedule(static) \
    if (n * hidden > LMS_CPU_PAR_MIN)
    for (int64_t ck = 0; ck < n_chunks; ck++) {
        int64_t c0 = ck * chunk, c1 = c0 + chunk < hidden ? c0 + chunk : hidden;
        for (int64_t i = 0; i < n; i++) {
            float *dst = dtable + (int64_t)ids[i] * hidden;
            const float *src = dout + i * hidden;
            for (int64_t c = c0; c < c1; c++)
                dst[c] += src[c];
        }
    }
    return LMS_OK;
}

/* One row of the RMSNorm backward, in double: with s = rstd, y = s x w,
 *   dx_j = s w_j g_j - x_j s^3 (sum_i w_i g_i x_i) / c   (into st),   dw_j += g_j x_j s  (into pw).
 * The dot product runs as four interleaved partial sums, so the compiler can keep them in one
 * vector register instead of waiting on one chain of dependent additions. */
LMS_CPU_CLONES
static void rmsnorm_backward_row(float *st, double *pw, const float *xr, const float *gr,
                                 const float *w, double s, int64_t c)
{
    double d0 = 0, d1 = 0, d2 = 0, d3 = 0;
    int64_t j = 0;
    for (; j + 4 <= c; j += 4) {
        d0 += (double)w[j] * gr[j] * xr[j];
        d1 += (double)w[j + 1] * gr[j + 1] * xr[j + 1];
        d2 += (double)w[j + 2] * gr[j + 2] * xr[j + 2];
        d3 += (double)w[j + 3] * gr[j + 3] * xr[j + 3];
    }
    for (; j < c; j++)
        d0 += (double)w[j] * gr[j] * xr[j];
    double dot = (d0 + d1) + (d2 + d3);
    for (j = 0; j < c; j++)
        pw[j] += (double)gr[j] * xr[j] * s;
    double k = s * s * s * dot / (double)c;
    for (j = 0; j < c; j++)
        st[j] = (float)(s * w[j] * gr[j] - xr[j] * k);
}

enum lms_status lms__cpu_rmsnorm_backward(struct lms_backend *be, float *dx, int64_t dx_stride,
                                          bool dx_add, float *dw, const float *dy,
                                          int64_t dy_stride, const float *x, int64_t x_stride,
                                          const float *w, const float *rstd, int64_t n_rows,
                                          int64_t n_heads, int64_t c, struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    int64_t total = n_rows * n_heads;
    int nt = total * c > LMS_CPU_PAR_MIN ? cx->n_threads : 1;
    /* per-thread dw partials in double, plus one row of dx staging (dx may alias dy) */
    double *part = lms_calloc((size_t)nt * (size_t)c, sizeof(double));
    float *stage = lms_malloc((size_t)nt * (size_t)c * sizeof(float));
    if (!part || !stage) {
        lms_free(part);
        lms_free(stage);
        return lms_error_set(err, LMS_ENOMEM, "rmsnorm backward: out of memory");
    }
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int tid = thread_id();
        double *pw = part + (size_t)tid * (size_t)c;
        float *st = stage + (size_t)tid * (size_t)c;
#pragma omp for schedule(static)
        for (int64_t i = 0; i < total; i++) {
            int64_t rr = i / n_heads, h = i % n_heads;
            const float *xr = x + rr * x_stride + h * c, *gr = dy + rr * dy_stride + h * c;
            float *dr = dx + rr * dx_stride + h * c;
            rmsnorm_backward_row(st, pw, xr, gr, w, rstd[i], c);
            for (int64_t j = 0; j < c; j++)
                dr[j] = dx_add ? dr[j] + st[j] : st[j];
        }
    }
    for (int64_t j = 0; j < c; j++) {
        double acc = 0;
        for (int t = 0; t < nt; t++)
            acc += part[(size_t)t * (size_t)c + (size_t)j];
        dw[j] += (float)acc;
    }
    lms_free(part);
    lms_free(stage);
    return LMS_OK;
}

enum lms_status lms__cpu_rope_backward(struct lms_backend *be, float *dx, int64_t dx_stride,
                                       int64_t n_rows, int64_t n_heads, int64_t head_dim,
                                       const int32_t *pos, const float *cos, const float *sin,
                                       int64_t n_pos, struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    if (head_dim % 2)
        return lms_error_set(err, LMS_EINVAL, "rope backward: head dim %lld is odd",
                             (long long)head_dim);
    for (int64_t r = 0; r < n_rows; r++)
        if (pos[r] < 0 || pos[r] >= n_pos)
            return lms_error_set(err, LMS_EINVAL,
                                 "rope backward: position %ld outside the table [0, %lld)",
                                 (long)pos[r], (long long)n_pos);
    int64_t half = head_dim / 2;
#pragma omp parallel for num_threads(cx->n_threads) schedule(static) \
    if (n_rows * n_heads * head_dim > LMS_CPU_PAR_MIN)
    for (int64_t r = 0; r < n_rows; r++) {
        const float *cs = cos + (int64_t)pos[r] * half, *sn = sin + (int64_t)pos[r] * half;
        for (int64_t h = 0; h < n_heads; h++) {
            float *a = dx + r * dx_stride + h * head_dim, *b = a + half;
            for (int64_t i = 0; i < half; i++) {
                float ga = a[i], gb = b[i];
                a[i] = ga * cs[i] + gb * sn[i];
                b[i] = gb * cs[i] - ga * sn[i];
            }
        }
    }
    return LMS_OK;
}

/* One row of the SwiGLU backward: with s = sigmoid(x), d silu(x)/dx = s (1 + x (1 - s)). Eight
 * lanes at a time as in the forward (kernels/cpu/ops.c), the same operations in the tail. All
 * three inputs are read before either output is written, so the outputs may overwrite them. */
LMS_CPU_CLONES
static void swiglu_backward_row(float *dg, float *du, const float *go, const float *g,
                                const float *u, int64_t f)
{
    int64_t j = 0;
    for (; j + 8 <= f; j += 8) {
        lms__v8f x = *(const lms__v8f *)(g + j), uj = *(const lms__v8f *)(u + j);
        lms__v8f o = *(const lms__v8f *)(go + j), e = -x;
        lms__expf8(&e);
        lms__v8f sig = 1.0f / (1.0f + e);
        lms__v8f silu = x * sig;
        *(lms__v8f *)(dg + j) = o * uj * sig * (1.0f + x * (1.0f - sig));
        *(lms__v8f *)(du + j) = o * silu;
    }
    for (; j < f; j++) {
        float x = g[j], uj = u[j], o = go[j];
        float sig = 1.0f / (1.0f + lms__expf(-x));
        float silu = x * sig;
        dg[j] = o * uj * sig * (1.0f + x * (1.0f - sig));
        du[j] = o * silu;
    }
}

enum lms_status lms__cpu_swiglu_backward(struct lms_backend *be, float *dgate, float *dup,
                                         int64_t d_stride, const float *dout,
                                         int64_t dout_stride, const float *gate, const float *up,
                                         int64_t in_stride, int64_t n_rows, int64_t f,
                                         struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
#pragma omp parallel for num_threads(cx->n_threads) schedule(static) \
    if (n_rows * f > LMS_CPU_PAR_MIN)
    for (int64_t r = 0; r < n_rows; r++)
        swiglu_backward_row(dgate + r * d_stride, dup + r * d_stride, dout + r * dout_stride,
                            gate + r * in_stride, up + r * in_stride, f);
    return LMS_OK;
}

enum lms_status lms__cpu_bias_backward(struct lms_backend *be, float *dbias, const float *dy,
                                       int64_t ld, int64_t n_rows, int64_t n,
                                       struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    int64_t chunk = 64, n_chunks = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(cx->n_threads) schedule(static) \
    if (n_rows * n > LMS_CPU_PAR_MIN)
    for (int64_t ck = 0; ck < n_chunks; ck++) {
        int64_t c0 = ck * chunk, c1 = c0 + chunk < n ? c0 + chunk : n;
        double acc[64] = {0};
        for (int64_t r = 0; r < n_rows; r++)
            for (int64_t c = c0; c < c1; c++)
                acc[c - c0] += dy[r * ld + c];
        for (int64_t c = c0; c < c1; c++)
            dbias[c] += (float)acc[c - c0];
    }
    return LMS_OK;
}

/* ---- logit losses --------------------------------------------------------------------------- */

/* The logit losses touch every vocabulary entry of every row several times, with one or two
 * exponentials each: the common passes run on eight float lanes (lms__expf8, relative error
 * about 1e-7), and their sums go into double every block of 64 entries so that long rows do not
 * lose digits. Top-K and reverse KL keep the plain double loops. */
#define LOSS_BLOCK 64

/* by pointer: a vector argument passed by value would change the ABI between the clones */
LMS_CPU_INLINE float lane_sum(const lms__v8f *p)
{
    lms__v8f v = *p;
    return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

/* max of x[0..v); NaN entries are passed over, as by the comparison in the tail */
LMS_CPU_CLONES
static float row_max(const float *x, int64_t v)
{
    float m = -INFINITY;
    int64_t j = 0;
    if (v >= 8) {
        lms__v8f mv = (lms__v8f){0} - INFINITY;
        for (; j + 8 <= v; j += 8) {
            lms__v8f xv = *(const lms__v8f *)(x + j);
            lms__v8u gt = (lms__v8u)(xv > mv);
            mv = (lms__v8f)(((lms__v8u)xv & gt) | ((lms__v8u)mv & ~gt));
        }
        for (int l = 0; l < 8; l++)
            m = mv[l] > m ? mv[l] : m;
    }
    for (; j < v; j++)
        m = x[j] > m ? x[j] : m;
    return m;
}

/* log sum exp(x * inv_t - m) + m, given m = max(x) * inv_t */
LMS_CPU_CLONES
static double row_lse(const float *x, int64_t v, float inv_t, double m)
{
    const float mf = (float)m;
    double sum = 0;
    int64_t j = 0;
    while (j + 8 <= v) {
        lms__v8f acc = {0};
        for (int64_t end = j + LOSS_BLOCK; j + 8 <= v && j < end; j += 8) {
            lms__v8f e = *(const lms__v8f *)(x + j) * inv_t - mf;
            lms__expf8(&e);
            acc += e;
        }
        sum += lane_sum(&acc);
    }
    for (; j < v; j++)
        sum += lms__expf(x[j] * inv_t - mf);
    return m + log(sum);
}

/* The gradient pass of forward KL and/or cross-entropy over one row:
 *   g_j = kg (q_j - p_j) / T + cg q1_j,   q = softmax(s / T), p = softmax(t / T), q1 = softmax(s)
 * (the one-hot part of the cross-entropy gradient is the caller's), returning
 * sum_j p_j (log p_j - log q_j), the forward KL of the row. kd or ce may be off; q1 is q when
 * T = 1. g may be s itself: each block is read before it is written. */
struct grad_row {
    float inv_t, lse_s, lse_t, lse_s1, kg, cg;
    bool kd, ce, ce_is_q;
};

LMS_CPU_CLONES
static double forward_grad_row(const struct grad_row *k, float *g, const float *s, const float *t,
                               int64_t v)
{
    double kl = 0;
    int64_t j = 0;
    const float kgt = k->kg * k->inv_t;
    while (j + 8 <= v) {
        lms__v8f acc = {0};
        for (int64_t end = j + LOSS_BLOCK; j + 8 <= v && j < end; j += 8) {
            lms__v8f sv = *(const lms__v8f *)(s + j), gj = {0}, q = {0};
            if (k->kd) {
                lms__v8f lq = sv * k->inv_t - k->lse_s;
                lms__v8f lp = *(const lms__v8f *)(t + j) * k->inv_t - k->lse_t;
                lms__v8f p = lp;
                q = lq;
                lms__expf8(&q);
                lms__expf8(&p);
                acc += p * (lp - lq);
                gj = kgt * (q - p);
            }
            if (k->ce) {
                lms__v8f q1 = q;
                if (!k->ce_is_q) {
                    q1 = sv - k->lse_s1;
                    lms__expf8(&q1);
                }
                gj += k->cg * q1;
            }
            *(lms__v8f *)(g + j) = gj;
        }
        kl += lane_sum(&acc);
    }
    for (; j < v; j++) {
        float sv = s[j], gj = 0, q = 0;
        if (k->kd) {
            float lq = sv * k->inv_t - k->lse_s, lp = t[j] * k->inv_t - k->lse_t;
            float p = lms__expf(lp);
            q = lms__expf(lq);
            kl += p * (lp - lq);
            gj = kgt * (q - p);
        }
        if (k->ce)
            gj += k->cg * (k->ce_is_q ? q : lms__expf(sv - k->lse_s1));
        g[j] = gj;
    }
    return kl;
}

/* Is entry a ranked below entry b (smaller value; on ties, the larger index)? */
static inline bool ranks_below(const float *x, int64_t a, int64_t b)
{
    return x[a] < x[b] || (x[a] == x[b] && a > b);
}

/* Indices of the k largest entries of x (v) into idx (k), in no particular order: a min-heap of
 * the best k seen, O(v log k). */
static void top_k(const float *x, int64_t v, int64_t k, int64_t *idx)
{
    int64_t n = 0;
    for (int64_t j = 0; j < v; j++) {
        int64_t at;
        if (n < k) {
            at = n++;
            while (at > 0 && ranks_below(x, j, idx[(at - 1) / 2])) {
                idx[at] = idx[(at - 1) / 2];
                at = (at - 1) / 2;
            }
            idx[at] = j;
            continue;
        }
        if (!ranks_below(x, idx[0], j))
            continue;
        at = 0; /* replace the root and sift down */
        for (;;) {
            int64_t c = 2 * at + 1;
            if (c >= n)
                break;
            if (c + 1 < n && ranks_below(x, idx[c + 1], idx[c]))
                c++;
            if (!ranks_below(x, idx[c], j))
                break;
            idx[at] = idx[c];
            at = c;
        }
        idx[at] = j;
    }
}

/* One row of struct lms_logit_loss. tk_idx (k) and tk_s (k) scratch for top-K. */
static void logit_loss_row(const struct lms_logit_loss *ll, int64_t r, int64_t *tk_idx,
                           float *tk_s)
{
    const int64_t V = ll->vocab;
    const float *s = ll->student + r * ll->ld;
    const float *t = ll->teacher ? ll->teacher + r * ll->ld : NULL;
    float *g = ll->grad ? ll->grad + r * ll->ld : NULL;
    const double inv_t = 1.0 / (ll->temperature > 0 ? ll->temperature : 1.0f);
    bool kd = t && (!ll->kd_valid || ll->kd_valid[r]);
    int32_t tgt = ll->target ? ll->target[r] : -1;
    bool ce = tgt >= 0;
    double kd_val = 0, ce_val = 0;
    double lse_s1 = 0; /* logsumexp(s) at T = 1 for CE */
    double ms_raw = ce || kd ? row_max(s, V) : 0;
    if (ce)
        lse_s1 = row_lse(s, V, 1.0f, ms_raw);
    double lse_s = 0, lse_t = 0, kl_rev = 0;
    float kg = ll->kd_grad_scale * ll->kd_mul, cg = ll->ce_grad_scale;

    if (kd && ll->kd_kind == LMS_KD_TOP_K) {
        int64_t K = ll->top_k < V ? ll->top_k : V;
        top_k(t, V, K, tk_idx);
        double mt = -INFINITY, ms = -INFINITY;
        for (int64_t a = 0; a < K; a++) {
            tk_s[a] = s[tk_idx[a]];
            mt = fmax(mt, t[tk_idx[a]] * inv_t);
            ms = fmax(ms, tk_s[a] * inv_t);
        }
        double zt = 0, zs = 0;
        for (int64_t a = 0; a < K; a++) {
            zt += exp(t[tk_idx[a]] * inv_t - mt);
            zs += exp(tk_s[a] * inv_t - ms);
        }
        lse_t = mt + log(zt);
        lse_s = ms + log(zs);
        for (int64_t a = 0; a < K; a++) {
            double lp = t[tk_idx[a]] * inv_t - lse_t, lq = tk_s[a] * inv_t - lse_s;
            kd_val += exp(lp) * (lp - lq);
        }
        ce_val = ce ? lse_s1 - s[tgt] : 0; /* before g, which may overwrite s */
        if (g) {
            /* gradient outside the K entries is the CE part only */
            for (int64_t j = 0; j < V; j++) {
                double gj = 0;
                if (ce)
                    gj = cg * (exp(s[j] - lse_s1) - (j == tgt ? 1.0 : 0.0));
                g[j] = (float)gj;
            }
            for (int64_t a = 0; a < K; a++) {
                double lp = t[tk_idx[a]] * inv_t - lse_t, lq = tk_s[a] * inv_t - lse_s;
                g[tk_idx[a]] += (float)(kg * (exp(lq) - exp(lp)) * inv_t);
            }
        }
        if (ll->kd_loss)
            ll->kd_loss[r] = (float)(ll->kd_mul * kd_val);
        if (ll->ce_loss)
            ll->ce_loss[r] = (float)ce_val;
        return;
    }
    bool reverse = ll->kd_kind == LMS_KD_REVERSE_KL;
    bool fused = g != NULL && !reverse; /* forward KL summed in the gradient pass */
    if (kd) {
        lse_s = inv_t == 1.0 && ce ? lse_s1 : row_lse(s, V, (float)inv_t, ms_raw * inv_t);
        lse_t = row_lse(t, V, (float)inv_t, row_max(t, V) * inv_t);
        /* KL from per-element terms (no cancellation between the log-sum-exps) */
        for (int64_t j = 0; !fused && j < V; j++) {
            double lp = t[j] * inv_t - lse_t, lq = s[j] * inv_t - lse_s;
            kd_val += reverse ? exp(lq) * (lq - lp) : exp(lp) * (lp - lq);
        }
        kl_rev = kd_val;
    }
    if (ce)
        ce_val = lse_s1 - s[tgt];
    /* at T = 1 the CE softmax is q: one exp per element fewer */
    bool ce_is_q = kd && inv_t == 1.0;
    if (g && !reverse && (kd || ce)) {
        struct grad_row k = {(float)inv_t, (float)lse_s, (float)lse_t, (float)lse_s1,
                             kg, cg, kd, ce, ce_is_q};
        double kl = forward_grad_row(&k, g, s, t, V);
        if (kd)
            kd_val = kl;
        if (ce)
            g[tgt] -= cg;
    } else if (g && (kd || ce)) {
        for (int64_t j = 0; j < V; j++) {
            double gj = 0, q = 0;
            if (kd) {
                double lp = t[j] * inv_t - lse_t, lq = s[j] * inv_t - lse_s;
                q = exp(lq);
                if (reverse) {
                    gj = kg * q * (lq - lp - kl_rev) * inv_t;
                } else {
                    double p = exp(lp);
                    kd_val += p * (lp - lq);
                    gj = kg * (q - p) * inv_t;
                }
            }
            if (ce)
                gj += cg * ((ce_is_q ? q : exp(s[j] - lse_s1)) - (j == tgt ? 1.0 : 0.0));
            g[j] = (float)gj;
        }
    } else if (g) {
        memset(g, 0, (size_t)V * sizeof(float));
    }
    if (ll->kd_loss)
        ll->kd_loss[r] = (float)(ll->kd_mul * kd_val);
    if (ll->ce_loss)
        ll->ce_loss[r] = (float)ce_val;
}

enum lms_status lms__cpu_logit_loss(struct lms_backend *be, const struct lms_logit_loss *ll,
                                    struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    const int64_t R = ll->n_rows, V = ll->vocab;
    if (ll->target)
        for (int64_t r = 0; r < R; r++)
            if (ll->target[r] >= V)
                return lms_error_set(err, LMS_EINVAL,
                                     "logit loss: target %ld at row %lld is outside [0, %lld)",
                                     (long)ll->target[r], (long long)r, (long long)V);
    bool topk = ll->teacher && ll->kd_kind == LMS_KD_TOP_K;
    if (topk && ll->top_k < 1)
        return lms_error_set(err, LMS_EINVAL, "logit loss: top-K with K = %lld",
                             (long long)ll->top_k);
    int nt = R * V > LMS_CPU_PAR_MIN ? cx->n_threads : 1;
    int64_t K = topk ? (ll->top_k < V ? ll->top_k : V) : 0;
    size_t per = (size_t)K;
    int64_t *iscratch = NULL;
    float *fscratch = NULL;
    if (topk) {
        iscratch = lms_malloc((size_t)nt * per * sizeof(int64_t));
        fscratch = lms_malloc((size_t)nt * (size_t)K * sizeof(float));
        if (!iscratch || !fscratch) {
            lms_free(iscratch);
            lms_free(fscratch);
            return lms_error_set(err, LMS_ENOMEM, "logit loss: out of memory for top-K");
        }
    }
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t r = 0; r < R; r++) {
        int tid = thread_id();
        int64_t *is = topk ? iscratch + (size_t)tid * per : NULL;
        logit_loss_row(ll, r, is, topk ? fscratch + (size_t)tid * (size_t)K : NULL);
    }
    lms_free(iscratch);
    lms_free(fscratch);
    return LMS_OK;
}

/* ---- hidden-state losses -------------------------------------------------------------------- */

enum lms_status lms__cpu_hidden_loss(struct lms_backend *be, float *loss, float *ds,
                                     const float *s, const float *t, int64_t ld, int64_t n_rows,
                                     int64_t c, int kind, float grad_scale,
                                     struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    if (kind != LMS_HIDDEN_COSINE && kind != LMS_HIDDEN_MSE)
        return lms_error_set(err, LMS_EINVAL, "hidden loss: kind %d", kind);
#pragma omp parallel for num_threads(cx->n_threads) schedule(static) \
    if (n_rows * c > LMS_CPU_PAR_MIN)
    for (int64_t r = 0; r < n_rows; r++) {
        const float *sr = s + r * ld, *tr = t + r * ld;
        float *gr = ds ? ds + r * ld : NULL;
        if (kind == LMS_HIDDEN_MSE) {
            double acc = 0;
            for (int64_t j = 0; j < c; j++) {
                double e = (double)sr[j] - tr[j];
                acc += e * e;
                if (gr)
                    gr[j] += (float)(grad_scale * 2.0 * e / (double)c);
            }
            loss[r] = (float)(acc / (double)c);
            continue;
        }
        /* 1 - cos, each norm clamped at 1e-8 as torch's cosine_similarity does */
        double dot = 0, ss = 0, tt = 0;
        for (int64_t j = 0; j < c; j++) {
            dot += (double)sr[j] * tr[j];
            ss += (double)sr[j] * sr[j];
            tt += (double)tr[j] * tr[j];
        }
        double ns = fmax(sqrt(ss), 1e-8), nt = fmax(sqrt(tt), 1e-8);
        double cosv = dot / (ns * nt);
        loss[r] = (float)(1.0 - cosv);
        if (gr)
            for (int64_t j = 0; j < c; j++)
                gr[j] += (float)(-grad_scale * (tr[j] / (ns * nt) - cosv * sr[j] / (ns * ns)));
    }
    return LMS_OK;
}

/* ---- optimiser ------------------------------------------------------------------------------ */

/* Partial sums over fixed chunks, added in chunk order: the result does not depend on thread
 * timing, so a resumed run reproduces an uninterrupted one bit for bit. */
enum lms_status lms__cpu_sum_squares(struct lms_backend *be, float *out, const float *x,
                                     int64_t n, struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    const int64_t chunk = 16384;
    int64_t n_chunks = (n + chunk - 1) / chunk;
    double stack[64], *part = n_chunks <= 64 ? stack : lms_malloc((size_t)n_chunks * 8);
    if (!part)
        return lms_error_set(err, LMS_ENOMEM, "sum of squares: out of memory");
#pragma omp parallel for num_threads(cx->n_threads) schedule(static) if (n_chunks > 1)
    for (int64_t c = 0; c < n_chunks; c++) {
        int64_t i1 = (c + 1) * chunk < n ? (c + 1) * chunk : n;
        double acc = 0;
        for (int64_t i = c * chunk; i < i1; i++)
            acc += (double)x[i] * x[i];
        part[c] = acc;
    }
    double acc = 0;
    for (int64_t c = 0; c < n_chunks; c++)
        acc += part[c];
    if (part != stack)
        lms_free(part);
    *out += (float)acc;
    return LMS_OK;
}

/* One span of an AdamW update; restrict pointers so the loop vectorises. */
LMS_CPU_CLONES
static void adamw_span(float *restrict w, const float *restrict g, float *restrict m,
                       float *restrict v, int64_t n, float decay, float gs, float b1, float b2,
                       float eps, float step_size, float bc2_sqrt, uint16_t *restrict w_bf16)
{
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i] * gs;
        float mi = m[i] + (1.0f - b1) * (gi - m[i]);
        float vi = v[i] * b2 + (1.0f - b2) * gi * gi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        m[i] = mi;
        v[i] = vi;
        w[i] = w[i] * decay - step_size * (mi / denom);
    }
    if (w_bf16) /* a second pass over the span while it is still in cache */
        for (int64_t i = 0; i < n; i++)
            w_bf16[i] = lms_f32_to_bf16(w[i]);
}

/* The arithmetic of torch.optim.AdamW's single-tensor path, in fp32. */
enum lms_status lms__cpu_adamw(struct lms_backend *be, const struct lms_adamw *tensors,
                               int64_t n_tensors, const struct lms_adamw_hyper *h,
                               struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    if (h->step < 1)
        return lms_error_set(err, LMS_EINVAL, "adamw: step %lld (counted from 1)",
                             (long long)h->step);
    double bc1 = 1.0 - pow(h->beta1, (double)h->step);
    double bc2 = 1.0 - pow(h->beta2, (double)h->step);
    float step_size = (float)(h->lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    const int64_t chunk = 8192;
    for (int64_t k = 0; k < n_tensors; k++) {
        const struct lms_adamw *t = &tensors[k];
        float decay = 1.0f - h->lr * t->weight_decay;
        int64_t n_chunks = (t->n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(cx->n_threads) schedule(static) \
    if (t->n > LMS_CPU_PAR_MIN)
        for (int64_t c = 0; c < n_chunks; c++) {
            int64_t i0 = c * chunk, n = t->n - i0 < chunk ? t->n - i0 : chunk;
            adamw_span(t->w + i0, t->g + i0, t->m + i0, t->v + i0, n, decay, h->grad_scale,
                       h->beta1, h->beta2, h->eps, step_size, bc2_sqrt,
                       t->w_bf16 ? t->w_bf16 + i0 : NULL);
        }
    }
    return LMS_OK;
}

enum lms_status lms__cpu_scale(struct lms_backend *be, float *x, float s, int64_t n,
                               struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    if (s == 0.0f) {
        memset(x, 0, (size_t)n * sizeof(float));
        return LMS_OK;
    }
#pragma omp parallel for num_threads(cx->n_threads) schedule(static) if (n > LMS_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        x[i] *= s;
    return LMS_OK;
}
