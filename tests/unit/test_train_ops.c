/* Every training slot of the CPU backend against double-precision central differences of a
 * double-precision reference of the forward op, at odd sizes: sequences of 1, 7, 33 and 70 tokens
 * (crossing the attention backward's 64-row tiles), GQA ratios 1, 3 and 4, head dims 4, 6 and
 * 10, sliding windows, padded row strides, biases, repeated ids. The op's fp32 gradient must be
 * within 2e-4 x max |gradient| of the difference quotient of
 *   f = sum(forward(x) * dy)   (dy random, fixed),
 * which is dL/dx for any loss whose gradient at the output is dy. The losses are checked the
 * same way with f = the loss itself, and their values against the double reference; AdamW
 * against torch's formula evaluated in double. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check_main.h"
#include "kernels/backend_impl.h"
#include "lms/train.h"

static struct lms_backend *be;

static void setup(void)
{
    struct lms_error err;
    struct lms_backend_opts bo = {.n_threads = 2};
    ck_assert_msg(lms_backend_open_name("cpu", &bo, &be, &err) == LMS_OK, "%s", err.msg);
}

static void teardown(void)
{
    lms_backend_free(be);
    be = NULL;
}

static uint64_t rng = 0x243F6A8885A308D3ull;
static double urand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}

static float *rnd(int64_t n, double scale)
{
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        p[i] = (float)((urand() * 2 - 1) * scale);
    return p;
}

static double *to_d(const float *x, int64_t n)
{
    double *d = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    for (int64_t i = 0; i < n; i++)
        d[i] = x[i];
    return d;
}

/* A double-precision objective of a parameter vector p (n), for central differences. */
typedef double (*objective_fn)(void *ctx, const double *p);

/* Checks got (n floats, or only the indices in [0, n) stepping by stride) against central
 * differences of f at p (which is modified and restored). */
static void check_fd(const char *what, objective_fn f, void *ctx, double *p, const float *got,
                     int64_t n, int64_t stride)
{
    double *fd = calloc((size_t)n, sizeof(double));
    double mx = 0;
    for (int64_t i = 0; i < n; i += stride) {
        double x0 = p[i], h = 1e-6 * fmax(1.0, fabs(x0));
        p[i] = x0 + h;
        double a = f(ctx, p);
        p[i] = x0 - h;
        double b = f(ctx, p);
        p[i] = x0;
        fd[i] = (a - b) / (2 * h);
        mx = fmax(mx, fabs(fd[i]));
    }
    for (int64_t i = 0; i < n; i += stride)
        ck_assert_msg(fabs(got[i] - fd[i]) <= 2e-4 * mx + 1e-9,
                      "%s: element %lld is %.8g, central difference %.8g (max %.3g)", what,
                      (long long)i, got[i], fd[i], mx);
    free(fd);
}

/* ---- RMSNorm ---------------------------------------------------------------------------- */

struct norm_case {
    int64_t rows, heads, c, xs, ys;
    double eps;
    double *x, *w;
    const float *dy;
};

static double norm_f(void *ctx, const double *unused)
{
    struct norm_case *k = ctx;
    double f = 0;
    for (int64_t r = 0; r < k->rows; r++)
        for (int64_t h = 0; h < k->heads; h++) {
            const double *x = k->x + r * k->xs + h * k->c;
            double ss = 0;
            for (int64_t j = 0; j < k->c; j++)
                ss += x[j] * x[j];
            double rs = 1.0 / sqrt(ss / (double)k->c + k->eps);
            for (int64_t j = 0; j < k->c; j++)
                f += k->w[j] * x[j] * rs * k->dy[r * k->ys + h * k->c + j];
        }
    return f;
}

static void rmsnorm_case(int64_t rows, int64_t heads, int64_t c, int64_t fd_stride)
{
    struct lms_error err;
    struct norm_case k = {rows, heads, c, heads * c + 3, heads * c + 1, 1e-6, NULL, NULL, NULL};
    int64_t nx = rows * k.xs, ny = rows * k.ys;
    float *x = rnd(nx, 2.0), *w = rnd(c, 1.5), *dy = rnd(ny, 1.0), *y = rnd(ny, 1.0);
    float *rstd = malloc((size_t)(rows * heads) * 4);
    float *dx = malloc((size_t)nx * 4), *dw = rnd(c, 0.5), *dw0 = malloc((size_t)c * 4);
    memcpy(dw0, dw, (size_t)c * 4);
    k.x = to_d(x, nx);
    k.w = to_d(w, c);
    k.dy = dy;
    ck_assert_int_eq(be->ops->rmsnorm(be, y, k.ys, x, k.xs, w, rstd, rows, heads, c, 1e-6f, &err),
                     LMS_OK);
    for (int64_t i = 0; i < nx; i++)
        dx[i] = 0.25f;
    ck_assert_int_eq(be->ops->rmsnorm_backward(be, dx, k.xs, true, dw, dy, k.ys, x, k.xs, w, rstd,
                                               rows, heads, c, &err),
                     LMS_OK);
    /* dx_add: 0.25 was there before; padding columns untouched */
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = heads * c; j < k.xs; j++)
            ck_assert(dx[r * k.xs + j] == 0.25f);
    for (int64_t i = 0; i < nx; i++)
        dx[i] -= 0.25f;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = heads * c; j < k.xs; j++)
            dx[r * k.xs + j] = 0;
    for (int64_t j = 0; j < c; j++)
        dw[j] -= dw0[j];
    check_fd("rmsnorm dx", norm_f, &k, k.x, dx, nx, fd_stride);
    check_fd("rmsnorm dw", norm_f, &k, k.w, dw, c, 1);
    /* in place: dx written over dy (same stride) */
    {
        float *g = malloc((size_t)ny * 4), *g2 = malloc((size_t)ny * 4);
        memcpy(g, dy, (size_t)ny * 4);
        float *dwa = calloc((size_t)c, 4);
        ck_assert_int_eq(be->ops->rmsnorm_backward(be, g2, k.ys, false, dwa, dy, k.ys, x, k.xs,
                                                   w, rstd, rows, heads, c, &err),
                         LMS_OK);
        ck_assert_int_eq(be->ops->rmsnorm_backward(be, g, k.ys, false, dwa, g, k.ys, x, k.xs, w,
                                                   rstd, rows, heads, c, &err),
                         LMS_OK);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = 0; j < heads * c; j++)
                ck_assert(g[r * k.ys + j] == g2[r * k.ys + j]);
        free(g);
        free(g2);
        free(dwa);
    }
    free(x);
    free(w);
    free(dy);
    free(y);
    free(rstd);
    free(dx);
    free(dw);
    free(dw0);
    free(k.x);
    free(k.w);
}

START_TEST(rmsnorm_backward)
{
    rmsnorm_case(1, 1, 64, 1);
    rmsnorm_case(7, 1, 13, 1);
    rmsnorm_case(5, 3, 10, 1); /* per-head q/k norm layout */
    rmsnorm_case(33, 2, 6, 1);
    rmsnorm_case(600, 1, 40, 97); /* large enough to run on both threads */
}
END_TEST

/* ---- RoPE ------------------------------------------------------------------------------- */

struct rope_case {
    int64_t rows, heads, d, xs, n_pos;
    const int32_t *pos;
    const float *cs, *sn, *dy;
};

static double rope_f(void *ctx, const double *x)
{
    struct rope_case *k = ctx;
    int64_t half = k->d / 2;
    double f = 0;
    for (int64_t r = 0; r < k->rows; r++)
        for (int64_t h = 0; h < k->heads; h++) {
            const double *a = x + r * k->xs + h * k->d;
            const float *g = k->dy + r * k->xs + h * k->d;
            const float *c = k->cs + k->pos[r] * half, *s = k->sn + k->pos[r] * half;
            for (int64_t i = 0; i < half; i++) {
                f += (a[i] * c[i] - a[i + half] * s[i]) * g[i];
                f += (a[i + half] * c[i] + a[i] * s[i]) * g[i + half];
            }
        }
    return f;
}

START_TEST(rope_backward)
{
    struct lms_error err;
    struct rope_case k = {7, 3, 10, 3 * 10 + 5, 9, NULL, NULL, NULL, NULL};
    int64_t half = k.d / 2, nx = k.rows * k.xs;
    int32_t pos[7] = {0, 8, 3, 3, 1, 7, 5};
    float *ang = rnd(k.n_pos * half, 3.0), *cs = malloc((size_t)(k.n_pos * half) * 4);
    float *sn = malloc((size_t)(k.n_pos * half) * 4);
    for (int64_t i = 0; i < k.n_pos * half; i++) {
        cs[i] = cosf(ang[i]);
        sn[i] = sinf(ang[i]);
    }
    float *x = rnd(nx, 1.0), *dy = rnd(nx, 1.0), *g = malloc((size_t)nx * 4);
    memcpy(g, dy, (size_t)nx * 4);
    k.pos = pos;
    k.cs = cs;
    k.sn = sn;
    k.dy = dy;
    ck_assert_int_eq(be->ops->rope_backward(be, g, k.xs, k.rows, k.heads, k.d, pos, cs, sn,
                                            k.n_pos, &err),
                     LMS_OK);
    for (int64_t r = 0; r < k.rows; r++)
        for (int64_t j = k.heads * k.d; j < k.xs; j++)
            g[r * k.xs + j] = 0;
    double *xd = to_d(x, nx);
    check_fd("rope", rope_f, &k, xd, g, nx, 1);
    pos[2] = 9;
    ck_assert_int_eq(be->ops->rope_backward(be, g, k.xs, k.rows, k.heads, k.d, pos, cs, sn,
                                            k.n_pos, &err),
                     LMS_EINVAL);
    free(ang);
    free(cs);
    free(sn);
    free(x);
    free(dy);
    free(g);
    free(xd);
}
END_TEST

/* ---- SwiGLU ----------------------------------------------------------------------------- */

struct swiglu_case {
    int64_t rows, f, in_s, out_s;
    const float *dy;
};

static double swiglu_f(void *ctx, const double *gu)
{
    struct swiglu_case *k = ctx;
    double f = 0;
    for (int64_t r = 0; r < k->rows; r++)
        for (int64_t j = 0; j < k->f; j++) {
            double g = gu[r * k->in_s + j], u = gu[r * k->in_s + k->f + j];
            f += g / (1 + exp(-g)) * u * k->dy[r * k->out_s + j];
        }
    return f;
}

START_TEST(swiglu_backward)
{
    struct lms_error err;
    struct swiglu_case k = {7, 13, 2 * 13 + 2, 15, NULL};
    int64_t n = k.rows * k.in_s;
    float *gu = rnd(n, 4.0), *dy = rnd(k.rows * k.out_s, 1.0), *dgu = calloc((size_t)n, 4);
    k.dy = dy;
    ck_assert_int_eq(be->ops->swiglu_backward(be, dgu, dgu + k.f, k.in_s, dy, k.out_s, gu,
                                              gu + k.f, k.in_s, k.rows, k.f, &err),
                     LMS_OK);
    double *gd = to_d(gu, n);
    check_fd("swiglu", swiglu_f, &k, gd, dgu, n, 1);
    free(gu);
    free(dy);
    free(dgu);
    free(gd);
}
END_TEST

/* ---- embedding and bias ----------------------------------------------------------------- */

START_TEST(embedding_and_bias_backward)
{
    struct lms_error err;
    int64_t V = 11, H = 5, n = 9;
    int32_t ids[9] = {3, 0, 3, 10, 7, 3, 0, 1, 10};
    float *dt = rnd(V * H, 1.0), *dy = rnd(n * H, 1.0);
    double *want = to_d(dt, V * H);
    for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < H; c++)
            want[ids[i] * H + c] += dy[i * H + c];
    ck_assert_int_eq(be->ops->embedding_backward(be, dt, dy, ids, n, V, H, &err), LMS_OK);
    for (int64_t i = 0; i < V * H; i++)
        ck_assert_msg(fabs(dt[i] - want[i]) <= 1e-6, "embedding %lld", (long long)i);
    ids[4] = 11;
    ck_assert_int_eq(be->ops->embedding_backward(be, dt, dy, ids, n, V, H, &err), LMS_EINVAL);
    free(dt);
    free(dy);
    free(want);

    /* column sums across the 64-column blocks, with a padded row stride */
    int64_t rows = 33, cols = 70, ld = 73;
    float *y = rnd(rows * ld, 1.0), *db = rnd(cols, 1.0);
    double *wb = to_d(db, cols);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            wb[c] += y[r * ld + c];
    ck_assert_int_eq(be->ops->bias_backward(be, db, y, ld, rows, cols, &err), LMS_OK);
    for (int64_t c = 0; c < cols; c++)
        ck_assert_msg(fabs(db[c] - wb[c]) <= 1e-5, "bias %lld", (long long)c);
    free(y);
    free(db);
    free(wb);
}
END_TEST

/* ---- attention -------------------------------------------------------------------------- */

struct attn_case {
    int64_t B, S, nh, ng, d, W, qs, os;
    const float *dy;
};

/* Reference causal GQA attention in double over the fused rows qkv (B*S, qs). out (B*S, os) and
 * lse (B, nh, S) when not NULL; returns sum(out * dy). */
static double attn_ref(const struct attn_case *k, const double *qkv, double *out, double *lse)
{
    int64_t r = k->nh / k->ng, d = k->d;
    double scale = (double)(1.0f / sqrtf((float)d)), f = 0; /* the op's fp32 scale */
    double *s = malloc((size_t)k->S * sizeof(double));
    for (int64_t b = 0; b < k->B; b++)
        for (int64_t h = 0; h < k->nh; h++)
            for (int64_t i = 0; i < k->S; i++) {
                const double *q = qkv + (b * k->S + i) * k->qs + h * d;
                double m = -INFINITY;
                for (int64_t j = 0; j <= i; j++) {
                    s[j] = -INFINITY;
                    if (k->W && i - j >= k->W)
                        continue;
                    const double *kk = qkv + (b * k->S + j) * k->qs + (k->nh + h / r) * d;
                    double dot = 0;
                    for (int64_t c = 0; c < d; c++)
                        dot += q[c] * kk[c];
                    s[j] = dot * scale;
                    m = fmax(m, s[j]);
                }
                double z = 0;
                for (int64_t j = 0; j <= i; j++)
                    z += isinf(s[j]) ? 0 : exp(s[j] - m);
                if (lse)
                    lse[(b * k->nh + h) * k->S + i] = m + log(z);
                for (int64_t c = 0; c < d; c++) {
                    double o = 0;
                    for (int64_t j = 0; j <= i; j++)
                        if (!isinf(s[j]))
                            o += exp(s[j] - m) / z *
                                 qkv[(b * k->S + j) * k->qs + (k->nh + k->ng + h / r) * d + c];
                    if (out)
                        out[(b * k->S + i) * k->os + h * d + c] = o;
                    f += o * k->dy[(b * k->S + i) * k->os + h * d + c];
                }
            }
    free(s);
    return f;
}

static double attn_f(void *ctx, const double *qkv)
{
    return attn_ref(ctx, qkv, NULL, NULL);
}

static void attention_case(int64_t B, int64_t S, int64_t nh, int64_t ng, int64_t d, int64_t W,
                           int64_t stride)
{
    struct lms_error err;
    struct attn_case k = {B, S, nh, ng, d, W, (nh + 2 * ng) * d + 2, nh * d + 1, NULL};
    int64_t N = B * S, n = N * k.qs;
    float *qkv = rnd(n, 1.5), *dy = rnd(N * k.os, 1.0), *out = malloc((size_t)(N * k.os) * 4);
    float *lse = malloc((size_t)(B * nh * S) * 4), *dqkv = calloc((size_t)n, 4);
    k.dy = dy;
    struct lms_attention at = {
        .batch = B, .seq = S, .n_heads = nh, .n_groups = ng, .head_dim = d, .q = qkv,
        .k = qkv + nh * d, .v = qkv + (nh + ng) * d, .q_stride = k.qs, .kv_stride = k.qs,
        .out = out, .out_stride = k.os, .scale = 1.0f / sqrtf((float)d), .window = W,
        .lse = lse,
    };
    ck_assert_int_eq(be->ops->attention(be, &at, &err), LMS_OK);
    /* the saved log-sum-exp against the reference */
    double *qd = to_d(qkv, n), *lse_ref = malloc((size_t)(B * nh * S) * sizeof(double));
    attn_ref(&k, qd, NULL, lse_ref);
    for (int64_t i = 0; i < B * nh * S; i++)
        ck_assert_msg(fabs(lse[i] - lse_ref[i]) <= 1e-5 * fmax(1, fabs(lse_ref[i])),
                      "lse %lld: %.7g, reference %.7g", (long long)i, lse[i], lse_ref[i]);
    struct lms_attention_backward ab = {
        .fwd = at, .dout = dy, .dout_stride = k.os, .dq = dqkv, .dq_stride = k.qs,
        .dk = dqkv + nh * d, .dv = dqkv + (nh + ng) * d, .dkv_stride = k.qs,
    };
    ck_assert_int_eq(be->ops->attention_backward(be, &ab, &err), LMS_OK);
    char what[128];
    snprintf(what, sizeof what, "attention B=%lld S=%lld nh=%lld ng=%lld d=%lld W=%lld",
             (long long)B, (long long)S, (long long)nh, (long long)ng, (long long)d,
             (long long)W);
    check_fd(what, attn_f, &k, qd, dqkv, n, stride);
    free(qkv);
    free(dy);
    free(out);
    free(lse);
    free(dqkv);
    free(qd);
    free(lse_ref);
}

START_TEST(attention_backward)
{
    attention_case(1, 1, 2, 1, 6, 0, 1);
    attention_case(2, 7, 6, 2, 10, 0, 1);   /* GQA 3 */
    attention_case(1, 33, 4, 4, 6, 5, 1);   /* MHA, sliding window */
    attention_case(1, 70, 4, 1, 4, 0, 7);   /* GQA 4 across the 64-row tiles */
    attention_case(1, 70, 2, 2, 4, 66, 5);  /* a window wider than a tile */
    /* head dims that are multiples of 8 take the vector tile products: 8 and 40 (32 + 8
     * columns), key tiles of 6, 7 and 20 keys (padded to 8 and 24), odd query row counts */
    attention_case(1, 70, 4, 2, 8, 0, 1);
    attention_case(2, 33, 2, 1, 8, 5, 3);
    attention_case(1, 20, 2, 1, 40, 0, 1);
    attention_case(1, 71, 3, 3, 16, 0, 1);
}
END_TEST

START_TEST(attention_backward_needs_lse)
{
    struct lms_error err;
    float x[64] = {0};
    struct lms_attention_backward ab = {
        .fwd = {.batch = 1, .seq = 1, .n_heads = 1, .n_groups = 1, .head_dim = 2, .q = x,
                .k = x, .v = x, .q_stride = 6, .kv_stride = 6, .out = x, .out_stride = 2,
                .scale = 1},
        .dout = x, .dout_stride = 2, .dq = x + 8, .dq_stride = 6, .dk = x + 16, .dv = x + 24,
        .dkv_stride = 6,
    };
    ck_assert_int_eq(be->ops->attention_backward(be, &ab, &err), LMS_EINVAL);
}
END_TEST

/* ---- logit losses ----------------------------------------------------------------------- */

struct loss_case {
    int64_t R, V, K;
    int kind;
    double T, kd_mul, kd_gs, ce_gs;
    const double *t;
    const int32_t *tgt;
    const uint8_t *valid;
    double *kd_rows, *ce_rows; /* written by loss_f */
};

static double lse_d(const double *x, const int64_t *idx, int64_t n, double inv_t)
{
    double m = -INFINITY, z = 0;
    for (int64_t a = 0; a < n; a++)
        m = fmax(m, x[idx ? idx[a] : a] * inv_t);
    for (int64_t a = 0; a < n; a++)
        z += exp(x[idx ? idx[a] : a] * inv_t - m);
    return m + log(z);
}

static double loss_f(void *ctx, const double *s)
{
    struct loss_case *k = ctx;
    double f = 0, inv_t = 1.0 / k->T;
    int64_t *idx = malloc((size_t)k->V * sizeof *idx);
    for (int64_t r = 0; r < k->R; r++) {
        const double *sr = s + r * k->V, *tr = k->t + r * k->V;
        double kd = 0, ce = 0;
        if (!k->valid || k->valid[r]) {
            int64_t n = k->V;
            if (k->kind == LMS_KD_TOP_K) {
                /* the K largest teacher entries (selection sort; ties by index) */
                for (int64_t j = 0; j < k->V; j++)
                    idx[j] = j;
                for (int64_t a = 0; a < k->K; a++)
                    for (int64_t b = a + 1; b < k->V; b++)
                        if (tr[idx[b]] > tr[idx[a]]) {
                            int64_t tmp = idx[a];
                            idx[a] = idx[b];
                            idx[b] = tmp;
                        }
                n = k->K;
            } else {
                for (int64_t j = 0; j < k->V; j++)
                    idx[j] = j;
            }
            double lt = lse_d(tr, idx, n, inv_t), ls = lse_d(sr, idx, n, inv_t);
            for (int64_t a = 0; a < n; a++) {
                double lp = tr[idx[a]] * inv_t - lt, lq = sr[idx[a]] * inv_t - ls;
                kd += k->kind == LMS_KD_REVERSE_KL ? exp(lq) * (lq - lp) : exp(lp) * (lp - lq);
            }
            kd *= k->kd_mul;
        }
        if (k->tgt && k->tgt[r] >= 0)
            ce = lse_d(sr, NULL, k->V, 1.0) - sr[k->tgt[r]];
        if (k->kd_rows)
            k->kd_rows[r] = kd;
        if (k->ce_rows)
            k->ce_rows[r] = ce;
        f += k->kd_gs * kd + k->ce_gs * ce;
    }
    free(idx);
    return f;
}

static void logit_loss_case(int kind, int64_t R, int64_t V, double T, bool t2, bool alias,
                            int64_t fd_stride)
{
    struct lms_error err;
    int64_t ld = V + 3, n = R * ld;
    float *s = rnd(n, 4.0), *t = rnd(n, 4.0), *g = calloc((size_t)n, 4);
    int32_t *tgt = malloc((size_t)R * 4);
    uint8_t *valid = malloc((size_t)R);
    for (int64_t r = 0; r < R; r++) {
        tgt[r] = r % 4 == 3 ? -1 : (int32_t)((r * 7919) % V);
        valid[r] = r % 5 != 2;
    }
    float kdl[64], cel[64];
    struct lms_logit_loss ll = {
        .n_rows = R, .vocab = V, .student = s, .teacher = t, .ld = ld, .target = tgt,
        .kd_valid = valid, .kd_kind = kind, .top_k = 7, .temperature = (float)T,
        .kd_mul = t2 ? (float)(T * T) : 1.0f, .kd_loss = kdl, .ce_loss = cel,
        .grad = alias ? s : g, .kd_grad_scale = 0.3f, .ce_grad_scale = 0.9f,
    };
    /* the reference works on unpadded rows */
    double *sd = malloc((size_t)(R * V) * sizeof(double)), *td = malloc((size_t)(R * V) * 8);
    for (int64_t r = 0; r < R; r++)
        for (int64_t j = 0; j < V; j++) {
            sd[r * V + j] = s[r * ld + j];
            td[r * V + j] = t[r * ld + j];
        }
    ck_assert_int_eq(be->ops->logit_loss(be, &ll, &err), LMS_OK);
    double kd_rows[64], ce_rows[64];
    struct loss_case k = {R, V, 7, kind, T, ll.kd_mul, 0.3, 0.9, td, tgt, valid, kd_rows, ce_rows};
    loss_f(&k, sd);
    for (int64_t r = 0; r < R; r++) {
        ck_assert_msg(fabs(kdl[r] - kd_rows[r]) <= 1e-5 * fmax(1e-3, fabs(kd_rows[r])),
                      "kind %d row %lld: kd %.8g, reference %.8g", kind, (long long)r, kdl[r],
                      kd_rows[r]);
        ck_assert_msg(fabs(cel[r] - ce_rows[r]) <= 1e-5 * fmax(1, fabs(ce_rows[r])),
                      "kind %d row %lld: ce %.8g, reference %.8g", kind, (long long)r, cel[r],
                      ce_rows[r]);
    }
    k.kd_rows = k.ce_rows = NULL;
    float *gp = alias ? s : g, *gu = malloc((size_t)(R * V) * 4);
    for (int64_t r = 0; r < R; r++)
        memcpy(gu + r * V, gp + r * ld, (size_t)V * 4);
    char what[64];
    snprintf(what, sizeof what, "logit loss kind %d T %.2g%s", kind, T, alias ? " in place" : "");
    check_fd(what, loss_f, &k, sd, gu, R * V, fd_stride);
    free(s);
    free(t);
    free(g);
    free(tgt);
    free(valid);
    free(sd);
    free(td);
    free(gu);
}

START_TEST(logit_losses)
{
    logit_loss_case(LMS_KD_FORWARD_KL, 1, 37, 1.0, false, false, 1);
    logit_loss_case(LMS_KD_FORWARD_KL, 9, 37, 1.7, true, true, 1);
    logit_loss_case(LMS_KD_REVERSE_KL, 9, 41, 2.0, true, false, 1);
    logit_loss_case(LMS_KD_REVERSE_KL, 5, 23, 0.5, false, true, 1);
    logit_loss_case(LMS_KD_TOP_K, 9, 37, 1.3, true, false, 1);
    logit_loss_case(LMS_KD_TOP_K, 4, 50, 1.0, false, true, 1);
    /* rows on both threads */
    logit_loss_case(LMS_KD_FORWARD_KL, 9, 2001, 1.0, false, true, 31);
    logit_loss_case(LMS_KD_TOP_K, 9, 2001, 1.0, true, false, 31);
}
END_TEST

/* ---- hidden losses ---------------------------------------------------------------------- */

struct hid_case {
    int64_t rows, c, ld;
    int kind;
    double gs;
    const double *t;
};

static double hid_f(void *ctx, const double *s)
{
    struct hid_case *k = ctx;
    double f = 0;
    for (int64_t r = 0; r < k->rows; r++) {
        const double *a = s + r * k->ld, *b = k->t + r * k->ld;
        double dot = 0, aa = 0, bb = 0, se = 0;
        for (int64_t j = 0; j < k->c; j++) {
            dot += a[j] * b[j];
            aa += a[j] * a[j];
            bb += b[j] * b[j];
            se += (a[j] - b[j]) * (a[j] - b[j]);
        }
        f += k->gs * (k->kind == LMS_HIDDEN_MSE ? se / (double)k->c
                                                : 1 - dot / (sqrt(aa) * sqrt(bb)));
    }
    return f;
}

START_TEST(hidden_losses)
{
    struct lms_error err;
    for (int kind = 0; kind < 2; kind++) {
        struct hid_case k = {7, 13, 15, kind, 0.37, NULL};
        int64_t n = k.rows * k.ld;
        float *s = rnd(n, 1.0), *t = rnd(n, 1.0), *ds = calloc((size_t)n, 4), loss[7];
        ck_assert_int_eq(be->ops->hidden_loss(be, loss, ds, s, t, k.ld, k.rows, k.c, kind,
                                              (float)k.gs, &err),
                         LMS_OK);
        double *sd = to_d(s, n), *td = to_d(t, n);
        k.t = td;
        double sum = 0;
        for (int64_t r = 0; r < k.rows; r++)
            sum += loss[r];
        ck_assert_msg(fabs(sum * k.gs - hid_f(&k, sd)) <= 1e-5, "hidden loss %d value", kind);
        check_fd(kind ? "mse" : "cosine", hid_f, &k, sd, ds, n, 1);
        free(s);
        free(t);
        free(ds);
        free(sd);
        free(td);
    }
    float l;
    ck_assert_int_eq(be->ops->hidden_loss(be, &l, NULL, &l, &l, 1, 1, 1, 7, 1, &err), LMS_EINVAL);
}
END_TEST

/* ---- optimiser -------------------------------------------------------------------------- */

START_TEST(adamw_sum_squares_scale)
{
    struct lms_error err;
    int64_t n = 1001;
    float *w = rnd(n, 1.0), *g = rnd(n, 0.1), *m = calloc((size_t)n, 4), *v = calloc((size_t)n, 4);
    float *w2 = rnd(5, 1.0), *g2 = rnd(5, 1.0), m2[5] = {0}, v2[5] = {0};
    double *wd = to_d(w, n), *md = calloc((size_t)n, 8), *vd = calloc((size_t)n, 8);
    double lr = 3e-3, b1 = 0.9, b2 = 0.95, eps = 1e-8, wdc = 0.1, gs = 0.5;
    for (int64_t step = 1; step <= 3; step++) {
        struct lms_adamw t[2] = {{w, g, m, v, n, (float)wdc, NULL},
                                 {w2, g2, m2, v2, 5, 0.0f, NULL}};
        struct lms_adamw_hyper h = {(float)lr, (float)b1, (float)b2, (float)eps, (float)gs, step};
        ck_assert_int_eq(be->ops->adamw(be, t, 2, &h, &err), LMS_OK);
        for (int64_t i = 0; i < n; i++) {
            double gg = g[i] * gs;
            wd[i] *= 1 - lr * wdc;
            md[i] = b1 * md[i] + (1 - b1) * gg;
            vd[i] = b2 * vd[i] + (1 - b2) * gg * gg;
            double mh = md[i] / (1 - pow(b1, step)), vh = vd[i] / (1 - pow(b2, step));
            wd[i] -= lr * mh / (sqrt(vh) + eps);
        }
        for (int64_t i = 0; i < n; i++)
            ck_assert_msg(fabs(w[i] - wd[i]) <= 2e-6, "adamw step %lld [%lld]: %.9g vs %.9g",
                          (long long)step, (long long)i, w[i], wd[i]);
    }
    struct lms_adamw_hyper h0 = {1, 0.9f, 0.9f, 0, 1, 0};
    ck_assert_int_eq(be->ops->adamw(be, NULL, 0, &h0, &err), LMS_EINVAL);

    float acc = 1.5f;
    double want = 1.5;
    for (int64_t i = 0; i < n; i++)
        want += (double)g[i] * g[i];
    ck_assert_int_eq(be->ops->sum_squares(be, &acc, g, n, &err), LMS_OK);
    ck_assert(fabs(acc - want) <= 1e-5 * want);
    float nan_buf[3] = {NAN, 1, 2};
    ck_assert_int_eq(be->ops->scale(be, nan_buf, 0.0f, 3, &err), LMS_OK);
    ck_assert(nan_buf[0] == 0 && nan_buf[1] == 0);
    float x[2] = {2, 3};
    ck_assert_int_eq(be->ops->scale(be, x, -0.5f, 2, &err), LMS_OK);
    ck_assert(x[0] == -1 && x[1] == -1.5f);
    free(w);
    free(g);
    free(m);
    free(v);
    free(w2);
    free(g2);
    free(wd);
    free(md);
    free(vd);
}
END_TEST

/* Top-K ties: the teacher's K-th value is shared by several entries (-0 and +0 among them, equal
 * as floats); the entries of lower index are taken. Pins the set the CUDA kernel must match:
 * with no CE, only the set gets a gradient, and the loss is the KL over the renormalised set. */
START_TEST(logit_loss_top_k_ties)
{
    struct lms_error err;
    const float t[6] = {-0.0f, 3.0f, +0.0f, 0.0f, -1.0f, 3.0f};
    const float s[6] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f};
    float g[6], kd;
    struct lms_logit_loss ll = {
        .n_rows = 1, .vocab = 6, .student = s, .teacher = t, .ld = 6,
        .kd_kind = LMS_KD_TOP_K, .top_k = 3, .temperature = 1.0f, .kd_mul = 1.0f,
        .kd_loss = &kd, .grad = g, .kd_grad_scale = 1.0f, .ce_grad_scale = 1.0f,
    };
    ck_assert_int_eq(be->ops->logit_loss(be, &ll, &err), LMS_OK);
    static const int set[3] = {1, 5, 0};
    double zt = 0, zs = 0, kl = 0;
    for (int a = 0; a < 3; a++) {
        zt += exp(t[set[a]]);
        zs += exp(s[set[a]]);
    }
    for (int a = 0; a < 3; a++) {
        double lp = t[set[a]] - log(zt), lq = s[set[a]] - log(zs);
        kl += exp(lp) * (lp - lq);
        ck_assert_msg(fabs(g[set[a]] - (exp(lq) - exp(lp))) < 1e-6, "entry %d: %g", set[a],
                      (double)g[set[a]]);
    }
    ck_assert_msg(fabs(kd - kl) < 1e-6, "kd %g, want %g", (double)kd, kl);
    ck_assert(g[2] == 0.0f && g[3] == 0.0f && g[4] == 0.0f);
}
END_TEST

/* bf16 of x rounded to nearest, ties to even, found from the two bf16 neighbours of x (the
 * truncation toward zero and the next one away from zero) rather than by bit tricks; NaN as one
 * canonical quiet NaN. */
static uint16_t bf16_nearest(float x)
{
    if (isnan(x))
        return 0x7FC0;
    uint32_t u;
    memcpy(&u, &x, 4);
    uint32_t lo = u & 0xFFFF0000u, hi = lo + 0x10000u;
    float flo, fhi;
    memcpy(&flo, &lo, 4);
    memcpy(&fhi, &hi, 4); /* past the largest finite value this is inf */
    if ((lo & 0x7F800000u) == 0x7F800000u) /* x is +-inf */
        return (uint16_t)(lo >> 16);
    if (isinf(fhi)) {
        /* past the largest bf16 value: x rounds to inf from the midpoint between it and 2^128
         * on (that value is odd, so the tie goes to inf) */
        double big = fabs((double)flo), mid = big + (ldexp(1.0, 128) - big) / 2;
        return (uint16_t)((fabs((double)x) >= mid ? hi : lo) >> 16);
    }
    double dlo = fabs((double)x - flo), dhi = fabs((double)fhi - x);
    if (dlo < dhi)
        return (uint16_t)(lo >> 16);
    if (dhi < dlo)
        return (uint16_t)(hi >> 16);
    return (uint16_t)(((lo >> 16) & 1u) ? hi >> 16 : lo >> 16);
}

/* The bf16 working copy written next to the fp32 master weights: identical fp32 results to a
 * run without it, and each bf16 value the nearest-even rounding of the updated weight. */
START_TEST(adamw_bf16_copy)
{
    struct lms_error err;
    int64_t n = 20001; /* several 8192-element spans and a tail */
    float *w = rnd(n, 1.0), *g = rnd(n, 0.1), *m = calloc((size_t)n, 4), *v = calloc((size_t)n, 4);
    float *w_ref = malloc((size_t)n * 4), *m_ref = calloc((size_t)n, 4);
    float *v_ref = calloc((size_t)n, 4);
    uint16_t *wb = malloc((size_t)n * 2);
    memcpy(w_ref, w, (size_t)n * 4);
    for (int64_t step = 1; step <= 3; step++) {
        struct lms_adamw_hyper h = {3e-3f, 0.9f, 0.95f, 1e-8f, 0.7f, step};
        struct lms_adamw a = {w, g, m, v, n, 0.1f, wb};
        struct lms_adamw b = {w_ref, g, m_ref, v_ref, n, 0.1f, NULL};
        memset(wb, 0xAB, (size_t)n * 2);
        ck_assert_int_eq(be->ops->adamw(be, &a, 1, &h, &err), LMS_OK);
        ck_assert_int_eq(be->ops->adamw(be, &b, 1, &h, &err), LMS_OK);
        ck_assert(memcmp(w, w_ref, (size_t)n * 4) == 0);
        ck_assert(memcmp(m, m_ref, (size_t)n * 4) == 0 && memcmp(v, v_ref, (size_t)n * 4) == 0);
        for (int64_t i = 0; i < n; i++)
            ck_assert_msg(wb[i] == bf16_nearest(w[i]),
                          "step %lld [%lld]: %a -> 0x%04x, want 0x%04x", (long long)step,
                          (long long)i, (double)w[i], wb[i], bf16_nearest(w[i]));
    }
    /* exact ties, signs, huge values and inf: lr = 0 and zero gradients leave w unchanged */
    static const uint32_t bits[] = {0x3F808000u, 0x3F818000u, 0xBF808000u, 0x3F80C000u,
                                    0x7F7FFFFFu, 0x7F7F8000u, 0x7F7F7FFFu, 0xFF800000u,
                                    0x00000001u, 0x80000000u, 0x3F807FFFu};
    enum { NB = sizeof bits / sizeof bits[0] };
    float tw[NB], tg[NB] = {0}, tm[NB] = {0}, tv[NB] = {0};
    uint16_t tb[NB];
    memcpy(tw, bits, sizeof tw);
    struct lms_adamw a = {tw, tg, tm, tv, NB, 0.0f, tb};
    struct lms_adamw_hyper h = {0.0f, 0.9f, 0.95f, 1e-8f, 1.0f, 1};
    ck_assert_int_eq(be->ops->adamw(be, &a, 1, &h, &err), LMS_OK);
    ck_assert(memcmp(tw, bits, sizeof tw) == 0);
    static const uint16_t want[NB] = {0x3F80, 0x3F82, 0xBF80, 0x3F81, 0x7F80,
                                      0x7F80, 0x7F7F, 0xFF80, 0x0000, 0x8000, 0x3F80};
    for (int i = 0; i < NB; i++) {
        ck_assert_msg(tb[i] == want[i], "%a -> 0x%04x, want 0x%04x", (double)tw[i], tb[i],
                      want[i]);
        ck_assert_int_eq(tb[i], bf16_nearest(tw[i]));
    }
    free(w);
    free(g);
    free(m);
    free(v);
    free(w_ref);
    free(m_ref);
    free(v_ref);
    free(wb);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("train_ops");
    TCase *tc = tcase_create("train_ops");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, rmsnorm_backward);
    tcase_add_test(tc, rope_backward);
    tcase_add_test(tc, swiglu_backward);
    tcase_add_test(tc, embedding_and_bias_backward);
    tcase_add_test(tc, attention_backward);
    tcase_add_test(tc, attention_backward_needs_lse);
    tcase_add_test(tc, logit_losses);
    tcase_add_test(tc, logit_loss_top_k_ties);
    tcase_add_test(tc, hidden_losses);
    tcase_add_test(tc, adamw_sum_squares_scale);
    tcase_add_test(tc, adamw_bf16_copy);
    suite_add_tcase(s, tc);
    return s;
}
