/* CPU backend ops against straightforward scalar versions written here in double precision
 * (the textbook formulas: materialised softmax attention, two-pass RMSNorm, ...), over odd sizes:
 * sequence 1, sequences that are not a multiple of any block, head dims 32/64/128, GQA ratios
 * 1/2/4/8, sliding windows. Also --device parsing and the registry's errors. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check_main.h"
#include "common/alloc_hook.h"
#include "kernels/backend_impl.h"
#include "kernels/cpu/cpu.h"
#include "lms/alloc.h"
#include "lms/engine.h"

#define CPU_FIXTURE_SEED 88172645463325252ull
#include "cpu_backend_fixture.h"

static float *rand_buf(int64_t n, float scale)
{
    float *p = malloc((size_t)(n ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        p[i] = frand() * scale;
    return p;
}

/* max |got - want| <= tol * max(1, max |want|) */
static void check_close(const char *what, const float *got, const double *want, int64_t n,
                        double tol)
{
    double mx = 1, worst = 0;
    int64_t at = 0;
    for (int64_t i = 0; i < n; i++)
        mx = fmax(mx, fabs(want[i]));
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]);
        if (!(e <= worst)) {
            worst = e;
            at = i;
        }
    }
    ck_assert_msg(worst <= tol * mx, "%s: element %lld: got %.9g want %.9g (max |want| %g)",
                  what, (long long)at, got[at], want[at], mx);
}

/* ---- device parsing and registry ---- */

START_TEST(device_parse)
{
    struct lms_device d;
    struct lms_error err;
    ck_assert_int_eq(lms_device_parse("cpu", &d, &err), LMS_OK);
    ck_assert_int_eq(d.kind, LMS_DEVICE_CPU);
    ck_assert_int_eq(lms_device_parse("cuda", &d, &err), LMS_OK);
    ck_assert(d.kind == LMS_DEVICE_CUDA && d.index == 0);
    ck_assert_int_eq(lms_device_parse("cuda:3", &d, &err), LMS_OK);
    ck_assert(d.kind == LMS_DEVICE_CUDA && d.index == 3);
    const char *bad[] = {"", "gpu", "CPU", "cuda:", "cuda:x", "cuda:1x", "cuda:1024", "cuda0",
                         "cuda:99999999999", "cpu:0"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(lms_device_parse(bad[i], &d, &err) == LMS_EINVAL, "'%s' accepted", bad[i]);
        ck_assert_msg(strstr(err.msg, bad[i]) != NULL, "message '%s' does not name '%s'",
                      err.msg, bad[i]);
    }
    char name[16];
    d.kind = LMS_DEVICE_CUDA;
    d.index = 2;
    lms_device_format(&d, name, sizeof name);
    ck_assert_str_eq(name, "cuda:2");
}
END_TEST

START_TEST(cuda_not_compiled)
{
    struct lms_backend *b = NULL;
    struct lms_error err;
    if (lms_backend_compiled(LMS_DEVICE_CUDA))
        return; /* covered by the GPU suite */
    ck_assert_int_eq(lms_backend_open_name("cuda:1", NULL, &b, &err), LMS_EDEVICE);
    ck_assert_ptr_null(b);
    ck_assert_msg(strstr(err.msg, "cuda:1") && strstr(err.msg, "CUDA"), "%s", err.msg);
}
END_TEST

START_TEST(buffers)
{
    struct lms_buf b;
    struct lms_error err;
    ck_assert_int_eq(lms_buf_alloc(be, 1000, &b, &err), LMS_OK);
    ck_assert_int_eq((uintptr_t)b.ptr % 64, 0);
    char src[1000], dst[1000];
    for (int i = 0; i < 1000; i++)
        src[i] = (char)i;
    ck_assert_int_eq(lms_buf_upload(be, b.ptr, src, 1000, &err), LMS_OK);
    ck_assert_int_eq(lms_buf_download(be, dst, 999, b.ptr, 1000, &err), LMS_EINVAL);
    ck_assert_int_eq(lms_buf_download(be, dst, 1000, b.ptr, 1000, &err), LMS_OK);
    ck_assert_mem_eq(src, dst, 1000);
    lms_buf_free(be, &b);
    ck_assert_ptr_null(b.ptr);
    lms_buf_free(be, &b);
    lms__alloc_fail_after(0);
    ck_assert_int_eq(lms_buf_alloc(be, 1000, &b, &err), LMS_ENOMEM);
    lms__alloc_fail_after(-1);
}
END_TEST

/* ---- numerics ---- */

START_TEST(expf_accuracy)
{
    double worst = 0;
    for (float x = -87.0f; x < 88.0f; x += 0.0123f) {
        double want = exp((double)x), got = lms__expf(x);
        worst = fmax(worst, fabs(got - want) / want);
    }
    ck_assert_msg(worst < 3.0e-7, "worst relative error %g", worst);
    ck_assert(lms__expf(-1000.0f) < 1e-37f && lms__expf(-1000.0f) >= 0);
    ck_assert(lms__expf(0.0f) == 1.0f);
}
END_TEST

static void matmul_case(bool ta, bool tb, int64_t m, int64_t n, int64_t k, int64_t batch,
                        float beta, bool bias)
{
    int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
    int64_t ra = ta ? k : m, rb = tb ? n : k;
    int64_t sa = ra * lda + 5, sb = rb * ldb + 7, sc = m * ldc + 1;
    float *a = rand_buf(sa * batch, 1), *b = rand_buf(sb * batch, 1), *c = rand_buf(sc * batch, 1);
    float *bi = rand_buf(n, 1);
    double *want = malloc(sizeof(double) * (size_t)(sc * batch));
    for (int64_t i = 0; i < sc * batch; i++)
        want[i] = c[i];
    for (int64_t z = 0; z < batch; z++)
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) {
                double s = 0;
                for (int64_t p = 0; p < k; p++) {
                    double av = ta ? a[z * sa + p * lda + i] : a[z * sa + i * lda + p];
                    double bv = tb ? b[z * sb + j * ldb + p] : b[z * sb + p * ldb + j];
                    s += av * bv;
                }
                double *w = &want[z * sc + i * ldc + j];
                *w = 0.5 * s + (beta != 0 ? beta * *w : 0) + (bias ? bi[j] : 0);
            }
    struct lms_matmul mm = {.trans_a = ta, .trans_b = tb, .m = m, .n = n, .k = k,
                            .a = a, .lda = lda, .stride_a = sa, .b = b,
                            .b_dtype = LMS_DTYPE_F32, .ldb = ldb, .stride_b = sb,
                            .c = c, .ldc = ldc, .stride_c = sc, .batch = batch,
                            .alpha = 0.5f, .beta = beta, .bias = bias ? bi : NULL};
    struct lms_error err;
    ck_assert_msg(be->ops->matmul(be, &mm, &err) == LMS_OK, "%s", err.msg);
    /* compare only the C entries inside (m, n) of each batch; padding must be untouched */
    for (int64_t z = 0; z < batch; z++)
        for (int64_t i = 0; i < m; i++)
            check_close("matmul", c + z * sc + i * ldc, want + z * sc + i * ldc, n, 1e-5);
    for (int64_t z = 0; z < batch; z++)
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = n; j < ldc && z * sc + i * ldc + j < sc * batch; j++)
                ck_assert(c[z * sc + i * ldc + j] == (float)want[z * sc + i * ldc + j]);
    free(a);
    free(b);
    free(c);
    free(bi);
    free(want);
}

START_TEST(matmul)
{
    int64_t dims[][3] = {{1, 1, 1}, {1, 33, 17}, {7, 5, 3}, {65, 31, 129}, {100, 3, 257}};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        for (int t = 0; t < 4; t++) {
            matmul_case(t & 1, t & 2, dims[i][0], dims[i][1], dims[i][2], 1, 0.0f, false);
            matmul_case(t & 1, t & 2, dims[i][0], dims[i][1], dims[i][2], 3, 1.0f, true);
            matmul_case(t & 1, t & 2, dims[i][0], dims[i][1], dims[i][2], 2, 0.25f, false);
        }
    struct lms_matmul mm = {.m = 1, .n = 1, .k = 1, .batch = 1, .b_dtype = LMS_DTYPE_BF16};
    struct lms_error err;
    ck_assert_int_eq(be->ops->matmul(be, &mm, &err), LMS_EUNSUPPORTED);
}
END_TEST

START_TEST(rmsnorm)
{
    struct lms_error err;
    int64_t cases[][3] = {{1, 1, 64}, {5, 1, 33}, {7, 4, 32}, {3, 8, 128}, {300, 1, 256}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int64_t rows = cases[ci][0], heads = cases[ci][1], c = cases[ci][2];
        int64_t xs = heads * c + 5, os = heads * c + 3;
        float *x = rand_buf(rows * xs, 3), *w = rand_buf(c, 1), *out = rand_buf(rows * os, 1);
        float *rstd = rand_buf(rows * heads, 1);
        double *want = malloc(sizeof(double) * (size_t)(rows * os));
        double *want_r = malloc(sizeof(double) * (size_t)(rows * heads));
        for (int64_t i = 0; i < rows * os; i++)
            want[i] = out[i];
        for (int64_t r = 0; r < rows; r++)
            for (int64_t h = 0; h < heads; h++) {
                const float *xr = x + r * xs + h * c;
                double ss = 0;
                for (int64_t j = 0; j < c; j++)
                    ss += (double)xr[j] * xr[j];
                double rs = 1 / sqrt(ss / c + 1e-6);
                want_r[r * heads + h] = rs;
                for (int64_t j = 0; j < c; j++)
                    want[r * os + h * c + j] = w[j] * xr[j] * rs;
            }
        ck_assert_int_eq(be->ops->rmsnorm(be, out, os, x, xs, w, rstd, rows, heads, c, 1e-6f,
                                          &err),
                         LMS_OK);
        check_close("rmsnorm", out, want, rows * os, 2e-6);
        check_close("rstd", rstd, want_r, rows * heads, 2e-6);
        /* in place */
        ck_assert_int_eq(be->ops->rmsnorm(be, x, xs, x, xs, w, NULL, rows, heads, c, 1e-6f,
                                          &err),
                         LMS_OK);
        for (int64_t r = 0; r < rows; r++)
            check_close("rmsnorm in place", x + r * xs, want + r * os, heads * c, 2e-6);
        free(x);
        free(w);
        free(out);
        free(rstd);
        free(want);
        free(want_r);
    }
}
END_TEST

/* transformers' formulas for the three rope types, in double. */
static double ref_inv_freq(const struct lms_arch *a, int64_t i)
{
    const struct lms_rope *r = &a->rope;
    double f = 1.0 / pow(r->theta, (double)(2 * i) / (double)a->head_dim);
    if (r->type == LMS_ROPE_LINEAR)
        return f / r->factor;
    if (r->type != LMS_ROPE_LLAMA3)
        return f;
    double old = (double)r->original_max_position;
    double low_wl = old / r->low_freq_factor, high_wl = old / r->high_freq_factor;
    double wl = 2 * M_PI / f;
    if (wl < high_wl)
        return f;
    if (wl > low_wl)
        return f / r->factor;
    double s = (old / wl - r->low_freq_factor) / (r->high_freq_factor - r->low_freq_factor);
    return (1 - s) * f / r->factor + s * f;
}

START_TEST(rope_freqs)
{
    struct lms_arch a = {.head_dim = 128, .rope = {.type = LMS_ROPE_DEFAULT, .theta = 500000}};
    float inv[64], scale;
    struct lms_error err;
    enum lms_rope_type types[] = {LMS_ROPE_DEFAULT, LMS_ROPE_LINEAR, LMS_ROPE_LLAMA3};
    for (int t = 0; t < 3; t++) {
        a.rope.type = types[t];
        a.rope.factor = t == 1 ? 4.0 : 8.0;
        a.rope.low_freq_factor = 1;
        a.rope.high_freq_factor = 4;
        a.rope.original_max_position = 8192;
        ck_assert_int_eq(lms_rope_inv_freq(&a, inv, 64, &scale, &err), LMS_OK);
        ck_assert(scale == 1.0f);
        for (int64_t i = 0; i < 64; i++) {
            double want = ref_inv_freq(&a, i);
            ck_assert_msg(fabs(inv[i] - want) <= 1e-6 * want, "type %d freq %lld: %g vs %g", t,
                          (long long)i, inv[i], want);
        }
    }
    a.rope.type = LMS_ROPE_YARN;
    ck_assert_int_eq(lms_rope_inv_freq(&a, inv, 64, &scale, &err), LMS_EUNSUPPORTED);
    ck_assert_msg(strstr(err.msg, "yarn"), "%s", err.msg);
    a.rope.type = LMS_ROPE_DYNAMIC;
    ck_assert_int_eq(lms_rope_inv_freq(&a, inv, 64, &scale, &err), LMS_EUNSUPPORTED);
}
END_TEST

START_TEST(rope)
{
    struct lms_error err;
    int64_t dims[] = {32, 64, 128, 8};
    for (int di = 0; di < 4; di++) {
        int64_t d = dims[di], half = d / 2, rows = 37, heads = 3, stride = heads * d + 9;
        int64_t n_pos = 50;
        struct lms_arch a = {.head_dim = d, .rope = {.type = LMS_ROPE_DEFAULT, .theta = 1e6}};
        float *cs = malloc(sizeof(float) * (size_t)(n_pos * half));
        float *sn = malloc(sizeof(float) * (size_t)(n_pos * half));
        ck_assert_int_eq(lms_rope_table(&a, n_pos, false, cs, sn, &err), LMS_OK);
        int32_t pos[37];
        for (int r = 0; r < rows; r++)
            pos[r] = (r * 7) % (int)n_pos;
        float *x = rand_buf(rows * stride, 2);
        double *want = malloc(sizeof(double) * (size_t)(rows * stride));
        for (int64_t i = 0; i < rows * stride; i++)
            want[i] = x[i];
        for (int64_t r = 0; r < rows; r++)
            for (int64_t h = 0; h < heads; h++)
                for (int64_t i = 0; i < half; i++) {
                    double ang = pos[r] * ref_inv_freq(&a, i);
                    double x1 = x[r * stride + h * d + i], x2 = x[r * stride + h * d + i + half];
                    want[r * stride + h * d + i] = x1 * cos(ang) - x2 * sin(ang);
                    want[r * stride + h * d + i + half] = x2 * cos(ang) + x1 * sin(ang);
                }
        ck_assert_int_eq(be->ops->rope(be, x, stride, rows, heads, d, pos, cs, sn, n_pos, &err),
                         LMS_OK);
        check_close("rope", x, want, rows * stride, 2e-5);
        pos[3] = (int32_t)n_pos;
        ck_assert_int_eq(be->ops->rope(be, x, stride, rows, heads, d, pos, cs, sn, n_pos, &err),
                         LMS_EINVAL);
        free(cs);
        free(sn);
        free(x);
        free(want);
    }
}
END_TEST

/* Textbook attention: materialised scores, softmax, weighted sum; double precision. */
static void ref_attention(const struct lms_attention *at, double *out)
{
    int64_t S = at->seq, d = at->head_dim, r = at->n_heads / at->n_groups;
    double *p = malloc(sizeof(double) * (size_t)S);
    for (int64_t b = 0; b < at->batch; b++)
        for (int64_t h = 0; h < at->n_heads; h++)
            for (int64_t i = 0; i < S; i++) {
                const float *q = at->q + (b * S + i) * at->q_stride + h * d;
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < S; j++) {
                    bool vis = j <= i && (at->window == 0 || i - j < at->window);
                    if (!vis) {
                        p[j] = -INFINITY;
                        continue;
                    }
                    const float *k = at->k + (b * S + j) * at->kv_stride + (h / r) * d;
                    double s = 0;
                    for (int64_t c = 0; c < d; c++)
                        s += (double)q[c] * k[c];
                    p[j] = s * at->scale;
                    mx = fmax(mx, p[j]);
                }
                for (int64_t j = 0; j < S; j++) {
                    p[j] = isinf(p[j]) ? 0 : exp(p[j] - mx);
                    sum += p[j];
                }
                double *o = out + (b * S + i) * at->out_stride + h * d;
                for (int64_t c = 0; c < d; c++) {
                    double acc = 0;
                    for (int64_t j = 0; j <= i; j++)
                        if (p[j] != 0)
                            acc += p[j] * at->v[(b * S + j) * at->kv_stride + (h / r) * d + c];
                    o[c] = acc / sum;
                }
            }
    free(p);
}

static void attention_case(int64_t batch, int64_t seq, int64_t n_heads, int64_t n_groups,
                           int64_t d, int64_t window)
{
    int64_t qs = n_heads * d + 4, kvs = n_groups * d + 12, os = n_heads * d + 1;
    int64_t n = batch * seq;
    float *q = rand_buf(n * qs, 2), *k = rand_buf(n * kvs, 2), *v = rand_buf(n * kvs, 1);
    float *out = rand_buf(n * os, 1);
    double *want = malloc(sizeof(double) * (size_t)(n * os));
    for (int64_t i = 0; i < n * os; i++)
        want[i] = out[i];
    struct lms_attention at = {.batch = batch, .seq = seq, .n_heads = n_heads,
                               .n_groups = n_groups, .head_dim = d, .q = q, .k = k, .v = v,
                               .q_stride = qs, .kv_stride = kvs, .out = out, .out_stride = os,
                               .scale = 1.0f / sqrtf((float)d), .window = window};
    ref_attention(&at, want);
    struct lms_error err;
    ck_assert_msg(be->ops->attention(be, &at, &err) == LMS_OK, "%s", err.msg);
    char what[128];
    snprintf(what, sizeof what, "attention B=%lld S=%lld n_h=%lld n_g=%lld d=%lld window=%lld",
             (long long)batch, (long long)seq, (long long)n_heads, (long long)n_groups,
             (long long)d, (long long)window);
    check_close(what, out, want, n * os, 2e-6);
    free(q);
    free(k);
    free(v);
    free(out);
    free(want);
}

START_TEST(attention)
{
    int64_t seqs[] = {1, 2, 63, 64, 65, 131};
    int64_t dims[] = {32, 64, 128};
    int64_t ratios[] = {1, 2, 4, 8};
    for (int si = 0; si < 6; si++)
        for (int di = 0; di < 3; di++)
            for (int ri = 0; ri < 4; ri++) {
                int64_t n_g = ri % 2 ? 1 : 2;
                attention_case(2, seqs[si], n_g * ratios[ri], n_g, dims[di], 0);
            }
    attention_case(1, 200, 4, 2, 32, 5);
    attention_case(2, 150, 8, 2, 64, 70);
    attention_case(1, 70, 2, 1, 32, 64);
    attention_case(3, 17, 6, 3, 8, 0);
}
END_TEST

START_TEST(swiglu_add)
{
    struct lms_error err;
    int64_t rows = 13, f = 77, is = 2 * f + 3, os = f + 5;
    float *in = rand_buf(rows * is, 8), *out = rand_buf(rows * os, 1);
    double *want = malloc(sizeof(double) * (size_t)(rows * os));
    for (int64_t i = 0; i < rows * os; i++)
        want[i] = out[i];
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < f; j++) {
            double g = in[r * is + j], u = in[r * is + f + j];
            want[r * os + j] = g / (1 + exp(-g)) * u;
        }
    ck_assert_int_eq(be->ops->swiglu(be, out, os, in, in + f, is, rows, f, &err), LMS_OK);
    check_close("swiglu", out, want, rows * os, 1e-6);

    int64_t n = 100003;
    float *y = rand_buf(n, 1), *x = rand_buf(n, 1);
    double *wy = malloc(sizeof(double) * (size_t)n);
    for (int64_t i = 0; i < n; i++)
        wy[i] = (double)y[i] + x[i];
    ck_assert_int_eq(be->ops->add(be, y, x, n, &err), LMS_OK);
    check_close("add", y, wy, n, 1e-7);
    free(in);
    free(out);
    free(want);
    free(y);
    free(x);
    free(wy);
}
END_TEST

START_TEST(softmax_ce)
{
    struct lms_error err;
    int64_t cs[] = {1, 5, 512, 4097};
    for (int ci = 0; ci < 4; ci++) {
        int64_t rows = 9, c = cs[ci], ld = c + 3;
        float *x = rand_buf(rows * ld, 20), *out = rand_buf(rows * ld, 1);
        double *want = malloc(sizeof(double) * (size_t)(rows * ld));
        double *wl = malloc(sizeof(double) * (size_t)rows);
        int32_t tgt[9];
        for (int64_t r = 0; r < rows; r++) {
            double mx = -INFINITY, s = 0;
            for (int64_t j = 0; j < c; j++)
                mx = fmax(mx, x[r * ld + j]);
            for (int64_t j = 0; j < c; j++)
                s += exp(x[r * ld + j] - mx);
            double lse = mx + log(s);
            for (int64_t j = 0; j < ld; j++)
                want[r * ld + j] = j < c ? x[r * ld + j] - lse : out[r * ld + j];
            tgt[r] = r % 4 == 3 ? -1 : (int32_t)((r * 131) % c);
            wl[r] = tgt[r] < 0 ? 0 : lse - x[r * ld + tgt[r]];
        }
        float loss[9];
        ck_assert_int_eq(be->ops->cross_entropy(be, loss, x, ld, tgt, rows, c, &err), LMS_OK);
        check_close("cross_entropy", loss, wl, rows, 1e-6);
        ck_assert_int_eq(be->ops->log_softmax(be, out, x, ld, rows, c, &err), LMS_OK);
        check_close("log_softmax", out, want, rows * ld, 1e-6);
        tgt[2] = (int32_t)c;
        ck_assert_int_eq(be->ops->cross_entropy(be, loss, x, ld, tgt, rows, c, &err),
                         LMS_EINVAL);
        free(x);
        free(out);
        free(want);
        free(wl);
    }
}
END_TEST

/* Activation statistics: per-row sequence mean of |x| (strided rows, sizes that are not a
 * multiple of the CPU's channel chunk) and the cosine per row (zero rows give 0). */
START_TEST(activation_stats)
{
    struct lms_error err;
    static const int64_t shapes[][3] = {{1, 1, 1}, {2, 7, 300}, {3, 33, 513}, {1, 64, 256}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        int64_t B = shapes[k][0], S = shapes[k][1], C = shapes[k][2], ld = C + 5;
        float *x = rand_buf(B * S * ld, 3.0f), *out = rand_buf(B * C, 1.0f);
        double *want = malloc((size_t)(B * C) * sizeof(double));
        for (int64_t b = 0; b < B; b++)
            for (int64_t c = 0; c < C; c++) {
                double s = 0;
                for (int64_t t = 0; t < S; t++)
                    s += fabs((double)x[(b * S + t) * ld + c]);
                want[b * C + c] = s / (double)S;
            }
        ck_assert_int_eq(be->ops->abs_mean(be, out, x, ld, B, S, C, &err), LMS_OK);
        check_close("abs_mean", out, want, B * C, 1e-6);
        free(x);
        free(out);
        free(want);
    }
    int64_t n = 37, C = 259;
    float *a = rand_buf(n * (C + 3), 1.0f), *b = rand_buf(n * C, 2.0f), *cs = rand_buf(n, 1.0f);
    double *want = malloc((size_t)n * sizeof(double));
    for (int64_t c = 0; c < C; c++)
        a[5 * (C + 3) + c] = 0; /* a zero row */
    for (int64_t r = 0; r < 3; r++) /* b_r = 2 a_r: cosine 1; a_r vs -a_r: -1 */
        for (int64_t c = 0; c < C; c++)
            b[r * C + c] = (r == 2 ? -2.0f : 2.0f) * a[r * (C + 3) + c];
    for (int64_t r = 0; r < n; r++) {
        double ab = 0, aa = 0, bb = 0;
        for (int64_t c = 0; c < C; c++) {
            double u = a[r * (C + 3) + c], v = b[r * C + c];
            ab += u * v;
            aa += u * u;
            bb += v * v;
        }
        want[r] = aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : 0;
    }
    ck_assert(fabs(want[0] - 1) < 1e-12 && fabs(want[2] + 1) < 1e-12 && want[5] == 0);
    ck_assert_int_eq(be->ops->row_cosine(be, cs, a, C + 3, b, C, n, C, &err), LMS_OK);
    check_close("row_cosine", cs, want, n, 1e-6);
    free(a);
    free(b);
    free(cs);
    free(want);
}
END_TEST

START_TEST(embedding_cast)
{
    struct lms_error err;
    int64_t V = 50, H = 33, n = 21;
    float *table = rand_buf(V * H, 1), *out = rand_buf(n * H, 1);
    int32_t ids[21];
    double *want = malloc(sizeof(double) * (size_t)(n * H));
    for (int64_t i = 0; i < n; i++) {
        ids[i] = (int32_t)((i * 17) % V);
        for (int64_t j = 0; j < H; j++)
            want[i * H + j] = table[ids[i] * H + j];
    }
    ck_assert_int_eq(be->ops->embedding(be, out, ids, n, table, LMS_DTYPE_F32, V, H, &err),
                     LMS_OK);
    check_close("embedding", out, want, n * H, 0);
    ids[4] = (int32_t)V;
    ck_assert_int_eq(be->ops->embedding(be, out, ids, n, table, LMS_DTYPE_F32, V, H, &err),
                     LMS_EINVAL);
    ck_assert_msg(strstr(err.msg, "50"), "%s", err.msg);

    uint16_t h[5];
    float back[5], src[5] = {1.0f, -2.5f, 3.14159f, 1e-3f, 65504.0f};
    ck_assert_int_eq(be->ops->cast(be, h, LMS_DTYPE_BF16, src, LMS_DTYPE_F32, 5, &err), LMS_OK);
    for (int i = 0; i < 5; i++)
        ck_assert_uint_eq(h[i], lms_f32_to_bf16(src[i]));
    ck_assert_int_eq(be->ops->cast(be, back, LMS_DTYPE_F32, h, LMS_DTYPE_BF16, 5, &err), LMS_OK);
    for (int i = 0; i < 5; i++)
        ck_assert(back[i] == lms_bf16_to_f32(h[i]));
    ck_assert_int_eq(be->ops->cast(be, h, LMS_DTYPE_I32, src, LMS_DTYPE_F32, 5, &err),
                     LMS_EUNSUPPORTED);
    free(table);
    free(out);
    free(want);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("backend_cpu");
    TCase *tc = tcase_create("registry");
    tcase_add_test(tc, device_parse);
    tcase_add_test(tc, cuda_not_compiled);
    suite_add_tcase(s, tc);
    tc = tcase_create("ops");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, buffers);
    tcase_add_test(tc, expf_accuracy);
    tcase_add_test(tc, matmul);
    tcase_add_test(tc, rmsnorm);
    tcase_add_test(tc, rope_freqs);
    tcase_add_test(tc, rope);
    tcase_add_test(tc, attention);
    tcase_add_test(tc, swiglu_add);
    tcase_add_test(tc, softmax_ce);
    tcase_add_test(tc, embedding_cast);
    tcase_add_test(tc, activation_stats);
    suite_add_tcase(s, tc);
    return s;
}
