/* CPU reference ops other than matmul and attention: embedding lookup, RMSNorm, RoPE, SwiGLU,
 * residual add, log-softmax and cross-entropy over the vocabulary, casts. Plain loops, rows in
 * parallel with OpenMP; sums over channels in double so the CPU stays the numerical reference.
 * Argument shapes are documented at the slots in kernels/backend_impl.h. */
#include <math.h>

#include "kernels/cpu/cpu.h"
#include "lms/dtype.h"

enum lms_status lms__cpu_embedding(struct lms_backend *be, float *out, const int32_t *ids,
                                   int64_t n, const void *table, enum lms_dtype table_dtype,
                                   int64_t vocab, int64_t hidden, struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    if (table_dtype != LMS_DTYPE_F32)
        return lms_error_set(err, LMS_EUNSUPPORTED, "cpu embedding: table dtype %s (only F32)",
                             lms_dtype_name(table_dtype));
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            return lms_error_set(err, LMS_EINVAL,
                                 "token id %ld at position %lld is outside the vocabulary [0, "
                                 "%lld)",
                                 (long)ids[i], (long long)i, (long long)vocab);
    const float *t = table;
#pragma omp parallel for num_threads(cx->n_threads) schedule(static) \
    if (n * hidden > LMS_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        memcpy(out + i * hidden, t + (int64_t)ids[i] * hidden, (size_t)hidden * sizeof(float));
    return LMS_OK;
}

/* One RMSNorm row: out (c) = x (c) * rsqrt(mean(x^2) + eps) * w (c). Returns the rstd.
 * The sum of squares runs in 8 double lanes. */
LMS_CPU_CLONES
static float rmsnorm_row(float *out, const float *x, const float *w, int64_t c, float eps)
{
    double acc[8] = {0};
    int64_t c8 = c - c % 8;
    for (int64_t j = 0; j < c8; j += 8)
        for (int k = 0; k < 8; k++)
            acc[k] += (double)x[j + k] * x[j + k];
    double ss = 0;
    for (int64_t j = c8; j < c; j++)
        ss += (double)x[j] * x[j];
    for (int k = 0; k < 8; k++)
        ss += acc[k];
    float var = (float)(ss / (double)c);
    float rstd = 1.0f / sqrtf(var + eps);
    for (int64_t j = 0; j < c; j++)
        out[j] = w[j] * (x[j] * rstd);
    return rstd;
}

enum lms_status lms__cpu_rmsnorm(struct lms_backend *be, float *out, int64_t out_stride,
                                 const float *x, int64_t x_stride, const float *w, float *rstd,
                                 int64_t n_rows, int64_t n_heads, int64_t c, float eps,
                                 struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    int64_t total = n_rows * n_heads;
#pragma omp parallel for num_threads(cx->n_threads) schedule(static) \
    if (total * c > LMS_CPU_PAR_MIN)
    for (int64_t i = 0; i < total; i++) {
        int64_t r = i / n_heads, h = i % n_heads;
        float s = rmsnorm_row(out + r * out_stride + h * c, x + r * x_stride + h * c, w, c, eps);
        if (rstd)
            rstd[i] = s;
    }
    return LMS_OK;
}

LMS_CPU_CLONES
static void rope_row(float *x, int64_t n_heads, int64_t d, const float *cs, const float *sn)
{
    int64_t half = d / 2;
    for (int64_t h = 0; h < n_heads; h++) {
        float *a = x + h * d, *b = a + half;
        for (int64_t i = 0; i < half; i++) {
            float x1 = a[i], x2 = b[i];
            a[i] = x1 * cs[i] - x2 * sn[i];
            b[i] = x2 * cs[i] + x1 * sn[i];
        }
    }
}

enum lms_status lms__cpu_rope(struct lms_backend *be, float *x, int64_t x_stride,
                              int64_t n_rows, int64_t n_heads, int64_t head_dim,
                              const int32_t *pos, const float *cos, const float *sin,
                              int64_t n_pos, struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    if (head_dim % 2)
        return lms_error_set(err, LMS_EINVAL, "rope: head dim %lld is odd", (long long)head_dim);
    for (int64_t r = 0; r < n_rows; r++)
        if (pos[r] < 0 || pos[r] >= n_pos)
            return lms_error_set(err, LMS_EINVAL, "rope: position %ld outside the table [0, %lld)",
                                 (long)pos[r], (long long)n_pos);
    int64_t half = head_dim / 2;
#pragma omp parallel for num_threads(cx->n_threads) schedule(static) \
    if (n_rows * n_heads * head_dim > LMS_CPU_PAR_MIN)
    for (int64_t r = 0; r < n_rows; r++)
        rope_row(x + r * x_stride, n_heads, head_dim, cos + (int64_t)pos[r] * half,
                 sin + (int64_t)pos[r] * half);
    return LMS_OK;
}

/* silu(g) * u, eight lanes at a time: the scalar loop stays scalar (the compiler does not
 * vectorise lms__expf's clamps), and this is a tenth of a training step's time. Lane for lane the
 * same operations as the tail, so every element gets the same result whatever its position. */
LMS_CPU_CLONES
static void swiglu_row(float *out, const float *g, const float *u, int64_t f)
{
    int64_t j = 0;
    for (; j + 8 <= f; j += 8) {
        lms__v8f x = *(const lms__v8f *)(g + j), e = -x;
        lms__expf8(&e);
        *(lms__v8f *)(out + j) = x / (1.0f + e) * *(const lms__v8f *)(u + j);
    }
    for (; j < f; j++) {
        float x = g[j];
        out[j] = x / (1.0f + lms__expf(-x)) * u[j];
    }
}

enum lms_status lms__cpu_swiglu(struct lms_backend *be, float *out, int64_t out_stride,
                                const float *gate, const float *up, int64_t in_stride,
                                int64_t n_rows, int64_t f, struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
#pragma omp parallel for num_threads(cx->n_threads) schedule(static) \
    if (n_rows * f > LMS_CPU_PAR_MIN)
    for (int64_t r = 0; r < n_rows; r++)
        swiglu_row(out + r * out_stride, gate + r * in_stride, up + r * in_stride, f);
    return LMS_OK;
}

LMS_CPU_CLONES
static void add_span(float *y, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += x[i];
}

enum lms_status lms__cpu_add(struct lms_backend *be, float *y, const float *x, int64_t n,
                             struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    int64_t chunk = 4096;
    int64_t n_chunks = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(cx->n_threads) schedule(static) \
    if (n > LMS_CPU_PAR_MIN)
    for (int64_t i = 0; i < n_chunks; i++) {
        int64_t b = i * chunk, e = b + chunk < n ? b + chunk : n;
        add_span(y + b, x + b, e - b);
    }
    return LMS_OK;
}

/* log(sum(exp(x))) of one row, computed as max + log(sum(exp(x - max))). Partial sums in
 * 16 lanes so the loops vectorise without reassociating a single sum. */
LMS_CPU_CLONES
static float logsumexp_row(const float *x, int64_t c)
{
    float m[16], s[16];
    for (int k = 0; k < 16; k++) {
        m[k] = -INFINITY;
        s[k] = 0;
    }
    int64_t c16 = c - c % 16;
    for (int64_t j = 0; j < c16; j += 16)
        for (int k = 0; k < 16; k++)
            m[k] = x[j + k] > m[k] ? x[j + k] : m[k];
    float mx = -INFINITY;
    for (int64_t j = c16; j < c; j++)
        mx = x[j] > mx ? x[j] : mx;
    for (int k = 0; k < 16; k++)
        mx = m[k] > mx ? m[k] : mx;
    if (isinf(mx))
        return mx;
    for (int64_t j = 0; j < c16; j += 16)
        for (int k = 0; k < 16; k++)
            s[k] += lms__expf(x[j + k] - mx);
    double sum = 0;
    for (int64_t j = c16; j < c; j++)
        sum += lms__expf(x[j] - mx);
    for (int k = 0; k < 16; k++)
        sum += s[k];
    return mx + (float)log(sum);
}

enum lms_status lms__cpu_log_softmax(struct lms_backend *be, float *out, const float *x,
                                     int64_t ld, int64_t n_rows, int64_t c,
                                     struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
#pragma omp parallel for num_threads(cx->n_threads) schedule(static) \
    if (n_rows * c > LMS_CPU_PAR_MIN)
    for (int64_t r = 0; r < n_rows; r++) {
        float lse = logsumexp_row(x + r * ld, c);
        for (int64_t j = 0; j < c; j++)
            out[r * ld + j] = x[r * ld + j] - lse;
    }
    return LMS_OK;
}

enum lms_status lms__cpu_cross_entropy(struct lms_backend *be, float *loss, const float *logits,
                                       int64_t ld, const int32_t *target, int64_t n_rows,
                                       int64_t c, struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    for (int64_t r = 0; r < n_rows; r++)
        if (target[r] >= c)
            return lms_error_set(err, LMS_EINVAL,
                                 "cross-entropy: target %ld at row %lld is outside [0, %lld)",
                                 (long)target[r], (long long)r, (long long)c);
#pragma omp parallel for num_threads(cx->n_threads) schedule(static) \
    if (n_rows * c > LMS_CPU_PAR_MIN)
    for (int64_t r = 0; r < n_rows; r++) {
        if (target[r] < 0) {
            loss[r] = 0;
            continue;
        }
        const float *x = logits + r * ld;
        loss[r] = logsumexp_row(x, c) - x[target[r]];
    }
    return LMS_OK;
}

enum lms_status lms__cpu_cast(struct lms_backend *be, void *dst, enum lms_dtype dt,
                              const void *src, enum lms_dtype st, int64_t n,
                              struct lms_error *err)
{
    if (!lms_dtype_is_castable(dt) || !lms_dtype_is_castable(st))
        return lms_error_set(err, LMS_EUNSUPPORTED, "cast from %s to %s", lms_dtype_name(st),
                             lms_dtype_name(dt));
    lms_cast(dst, dt, src, st, (size_t)n);
    return LMS_OK;
}
