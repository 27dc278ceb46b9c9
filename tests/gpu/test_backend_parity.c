/* CUDA backend against the CPU reference backend, op by op, on the same random inputs, over odd
 * sizes (1, primes, sizes just past a tile, strides wider than rows, batched GEMMs, biases,
 * beta 0/1, every transpose combination, head dims 8..128 and 80, GQA ratios 1/2/4, sliding
 * windows, vocabulary-sized rows), in both CUDA precisions: FP32 (same arithmetic as the CPU,
 * tolerance of fp32 reassociation) and AUTO (bf16 GEMM operands and tensor-core attention,
 * judged by ||got - want|| / ||want|| against the CPU run on the same bf16-rounded operands
 * where the rounding is part of the contract, or a bf16-sized bound otherwise). Every CUDA
 * output is poisoned with NaN first, so an element the kernel did not write fails. Also the
 * deferred argument errors (bad token id, position, target) that the CUDA backend reports at
 * the next sync. Needs a GPU: the gpu suite runs it with LMS_TEST_DEVICE=cuda and check_main.c
 * skips it where no CUDA device opens. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check_main.h"
#include "kernels/backend_impl.h"
#include "lms/dtype.h"

static struct lms_backend *cpu, *gpu, *gpu16; /* CPU, CUDA FP32, CUDA AUTO */

static void setup(void)
{
    struct lms_error err;
    struct lms_backend_opts o = {.n_threads = 2};
    ck_assert_msg(lms_backend_open_name("cpu", &o, &cpu, &err) == LMS_OK, "%s", err.msg);
    o.precision = LMS_PRECISION_FP32;
    ck_assert_msg(lms_backend_open_name("cuda", &o, &gpu, &err) == LMS_OK, "%s", err.msg);
    o.precision = LMS_PRECISION_AUTO;
    ck_assert_msg(lms_backend_open_name("cuda", &o, &gpu16, &err) == LMS_OK, "%s", err.msg);
}

static void teardown(void)
{
    lms_backend_free(gpu16);
    lms_backend_free(gpu);
    lms_backend_free(cpu);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float frand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

static float *rand_buf(int64_t n, float scale)
{
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        p[i] = frand() * scale;
    return p;
}

static float round_bf16(float x)
{
    return lms_bf16_to_f32(lms_f32_to_bf16(x));
}

/* ---- device mirrors ---- */

struct dbuf {
    struct lms_backend *be;
    struct lms_buf b;
};

/* Device copy of n bytes at host (NULL: poisoned with 0xff bytes, NaN as floats). */
static void *dev_copy(struct lms_backend *be, struct dbuf *d, const void *host, size_t n)
{
    struct lms_error err;
    d->be = be;
    ck_assert_msg(lms_buf_alloc(be, n ? n : 4, &d->b, &err) == LMS_OK, "%s", err.msg);
    void *tmp = NULL;
    if (!host) {
        tmp = malloc(n ? n : 4);
        memset(tmp, 0xff, n ? n : 4);
        host = tmp;
    }
    if (n)
        ck_assert_msg(lms_buf_upload(be, d->b.ptr, host, n, &err) == LMS_OK, "%s", err.msg);
    free(tmp);
    return d->b.ptr;
}

static float *dev_get(struct dbuf *d, size_t n_floats)
{
    struct lms_error err;
    float *h = malloc((n_floats ? n_floats : 1) * sizeof(float));
    ck_assert_msg(lms_buf_download(d->be, h, n_floats * 4, d->b.ptr, n_floats * 4, &err) ==
                      LMS_OK,
                  "%s", err.msg);
    return h;
}

static void dev_free(struct dbuf *d)
{
    lms_buf_free(d->be, &d->b);
}

/* Compares got (CUDA) with want (CPU) over the elements where mask is NULL or true:
 * max |got - want| <= tol * max(1, max |want|) and no NaN. */
static void check_close(const char *what, const float *got, const float *want, int64_t n,
                        double tol)
{
    double mx = 1, worst = 0;
    int64_t at = 0;
    for (int64_t i = 0; i < n; i++)
        mx = fmax(mx, fabs((double)want[i]));
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - (double)want[i]);
        if (!(e <= worst)) { /* NaN lands here */
            worst = e;
            at = i;
        }
    }
    ck_assert_msg(worst <= tol * mx, "%s: element %lld of %lld: got %.9g want %.9g (tol %g x %g)",
                  what, (long long)at, (long long)n, (double)got[at], (double)want[at], tol, mx);
}

/* ||got - want|| / ||want|| <= tol (the bf16 measure of the device METHOD notes), no NaN */
static void check_rel_norm(const char *what, const float *got, const float *want, int64_t n,
                           double tol)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        ck_assert_msg(isfinite(got[i]), "%s: element %lld is %g", what, (long long)i,
                      (double)got[i]);
        double e = (double)got[i] - (double)want[i];
        num += e * e;
        den += (double)want[i] * want[i];
    }
    double r = den > 0 ? sqrt(num / den) : sqrt(num);
    ck_assert_msg(r <= tol, "%s: relative error %.3g over %lld elements (tol %g)", what, r,
                  (long long)n, tol);
}

/* ---- matmul ---- */

/* One GEMM case: row-major op(A) (m, k), op(B) (k, n), padded leading dimensions, batches. */
/* mode 0: fp32 in the exact precision; 1: bf16 weights (B) in AUTO, the activation operand
 * rounded to bf16; 2: fp32 B in AUTO, both operands rounded to bf16 (weight-gradient GEMMs). */
static void gemm_case(bool ta, bool tb, int64_t m, int64_t n, int64_t k, int64_t batch,
                      bool bias, float beta, int mode)
{
    bool bf16 = mode != 0;
    struct lms_error err;
    char what[160];
    snprintf(what, sizeof what, "matmul %s ta=%d tb=%d m=%lld n=%lld k=%lld batch=%lld bias=%d "
             "beta=%g", mode == 2 ? "fp32-as-bf16" : bf16 ? "bf16" : "fp32", ta, tb, (long long)m, (long long)n,
             (long long)k, (long long)batch, bias, (double)beta);
    int64_t ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
    int64_t lda = ac + (m % 3), ldb = bc + (mode == 1 ? 0 : (n % 2)), ldc = n + 1;
    int64_t sa = ar * lda + 5, sb = br * ldb + 3, sc = m * ldc + 7;
    float *a = rand_buf(sa * batch, 1.0f), *b = rand_buf(sb * batch, 1.0f);
    float *c0 = rand_buf(sc * batch, 1.0f), *bv = rand_buf(n, 1.0f);
    float *want = malloc((size_t)(sc * batch) * 4);
    memcpy(want, c0, (size_t)(sc * batch) * 4);
    float *a_ref = malloc((size_t)(sa * batch) * 4);
    for (int64_t i = 0; i < sa * batch; i++)
        a_ref[i] = bf16 ? round_bf16(a[i]) : a[i];
    uint16_t *b16 = malloc((size_t)(sb * batch) * 2);
    for (int64_t i = 0; i < sb * batch; i++) {
        b16[i] = lms_f32_to_bf16(b[i]);
        if (bf16)
            b[i] = lms_bf16_to_f32(b16[i]);
    }
    struct lms_matmul mm = {ta, tb, m, n, k, a_ref, lda, sa, b, LMS_DTYPE_F32, ldb, sb, want,
                            ldc, sc, batch, 1.0f, beta, bias ? bv : NULL};
    ck_assert_msg(cpu->ops->matmul(cpu, &mm, &err) == LMS_OK, "%s", err.msg);

    struct lms_backend *be = bf16 ? gpu16 : gpu;
    struct dbuf da, db, dc, dbias;
    mm.a = dev_copy(be, &da, a, (size_t)(sa * batch) * 4);
    mm.b = mode == 1 ? dev_copy(be, &db, b16, (size_t)(sb * batch) * 2)
                     : dev_copy(be, &db, b, (size_t)(sb * batch) * 4);
    mm.b_dtype = mode == 1 ? LMS_DTYPE_BF16 : LMS_DTYPE_F32;
    /* beta 0: C may hold NaN and must not be read */
    mm.c = dev_copy(be, &dc, beta == 0.0f ? NULL : c0, (size_t)(sc * batch) * 4);
    mm.bias = bias ? dev_copy(be, &dbias, bv, (size_t)n * 4) : NULL;
    ck_assert_msg(be->ops->matmul(be, &mm, &err) == LMS_OK, "%s: %s", what, err.msg);
    float *got = dev_get(&dc, (size_t)(sc * batch));
    /* compare the C elements only (the padding is not written) */
    for (int64_t bt = 0; bt < batch; bt++)
        for (int64_t i = 0; i < m; i++)
            check_close(what, got + bt * sc + i * ldc, want + bt * sc + i * ldc, n,
                        bf16 ? 1e-4 * sqrt((double)k) : 2e-6 * sqrt((double)k + 1));
    free(got);
    dev_free(&da);
    dev_free(&db);
    dev_free(&dc);
    if (bias)
        dev_free(&dbias);
    free(a);
    free(a_ref);
    free(b);
    free(b16);
    free(c0);
    free(bv);
    free(want);
}

START_TEST(matmul_parity)
{
    static const int64_t shapes[][3] = {{1, 1, 1},   {1, 7, 5},    {37, 53, 29},
                                        {64, 128, 96}, {129, 65, 257}, {8, 520, 64}};
    for (int bf = 0; bf < 3; bf++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int t = 0; t < 4; t++)
                gemm_case(t & 1, t & 2, shapes[s][0], shapes[s][1], shapes[s][2],
                          s % 2 ? 3 : 1, s % 3 == 1, (s + (size_t)t) % 2 ? 1.0f : 0.0f, bf);
    /* the forward's shapes: y = x W^T, K multiple of 8 (tensor-core path) */
    gemm_case(false, true, 300, 384, 256, 1, false, 0.0f, 1);
    gemm_case(false, true, 300, 256, 768, 1, false, 1.0f, 1);
    gemm_case(false, true, 300, 384, 256, 1, true, 0.0f, 0);
    /* the trainer's weight gradient dW (n, k) += dy^T x, both fp32 operands, beta 1 */
    gemm_case(true, false, 384, 256, 300, 1, false, 1.0f, 2);
}
END_TEST

/* ---- attention ---- */

static void attn_case(int64_t B, int64_t S, int64_t nh, int64_t ng, int64_t d, int64_t W,
                      bool bf16)
{
    struct lms_error err;
    char what[160];
    snprintf(what, sizeof what, "attention %s B=%lld S=%lld heads=%lld groups=%lld d=%lld "
             "window=%lld", bf16 ? "auto" : "fp32", (long long)B, (long long)S, (long long)nh,
             (long long)ng, (long long)d, (long long)W);
    int64_t qs = (nh + 2 * ng) * d + 4, os = nh * d + 3, N = B * S;
    float *qkv = rand_buf(N * qs, 2.0f);
    if (bf16)
        for (int64_t i = 0; i < N * qs; i++)
            qkv[i] = round_bf16(qkv[i]);
    float *want = malloc((size_t)(N * os) * 4), *want_lse = malloc((size_t)(N * nh) * 4);
    for (int64_t i = 0; i < N * os; i++)
        want[i] = 0;
    struct lms_attention at = {B, S, nh, ng, d, qkv, qkv + nh * d, qkv + (nh + ng) * d, qs, qs,
                               want, os, 1.0f / sqrtf((float)d), W, want_lse};
    ck_assert_msg(cpu->ops->attention(cpu, &at, &err) == LMS_OK, "%s", err.msg);
    struct lms_backend *be = bf16 ? gpu16 : gpu;
    struct dbuf dq, dout, dlse;
    float *dqkv = dev_copy(be, &dq, qkv, (size_t)(N * qs) * 4);
    at.q = dqkv;
    at.k = dqkv + nh * d;
    at.v = dqkv + (nh + ng) * d;
    at.out = dev_copy(be, &dout, NULL, (size_t)(N * os) * 4);
    at.lse = dev_copy(be, &dlse, NULL, (size_t)(N * nh) * 4);
    ck_assert_msg(be->ops->attention(be, &at, &err) == LMS_OK, "%s: %s", what, err.msg);
    float *got = dev_get(&dout, (size_t)(N * os));
    float *g = malloc((size_t)(N * nh * d) * 4), *w = malloc((size_t)(N * nh * d) * 4);
    for (int64_t r = 0; r < N; r++) {
        memcpy(g + r * nh * d, got + r * os, (size_t)(nh * d) * 4);
        memcpy(w + r * nh * d, want + r * os, (size_t)(nh * d) * 4);
    }
    if (bf16 && (d == 64 || d == 128))
        check_rel_norm(what, g, w, N * nh * d, 1.5e-2); /* P is rounded to bf16 */
    else
        check_close(what, g, w, N * nh * d, 2e-5);
    /* lse: the same scores on both sides (inputs already bf16 for the tensor cores), only the
     * order of the fp32 sums differs */
    float *got_lse = dev_get(&dlse, (size_t)(N * nh));
    snprintf(what + strlen(what), sizeof what - strlen(what), " lse");
    check_close(what, got_lse, want_lse, N * nh, 1e-4);
    free(got_lse);
    dev_free(&dlse);
    free(want_lse);
    free(g);
    free(w);
    free(got);
    dev_free(&dq);
    dev_free(&dout);
    free(qkv);
    free(want);
}

START_TEST(attention_parity)
{
    for (int bf = 0; bf < 2; bf++) {
        attn_case(1, 1, 2, 1, 64, 0, bf);
        attn_case(2, 17, 4, 2, 32, 0, bf);
        attn_case(1, 65, 8, 2, 128, 0, bf);
        attn_case(2, 200, 4, 1, 64, 0, bf);
        attn_case(1, 130, 4, 4, 128, 0, bf);
        attn_case(1, 129, 2, 1, 64, 70, bf);
        attn_case(1, 300, 4, 2, 128, 5, bf);
        attn_case(2, 33, 8, 2, 8, 0, bf);
        attn_case(1, 77, 2, 2, 80, 0, bf);
        attn_case(1, 40, 2, 1, 256, 0, bf);
    }
    attn_case(2, 1024, 8, 2, 128, 0, true);
    /* the tensor-core kernel's edges: many key tiles, a window over several tiles, B = 2 with
     * n_g = n_h, sequences one past a tile */
    attn_case(1, 1000, 4, 2, 128, 0, true);
    attn_case(2, 513, 8, 8, 64, 100, true);
    attn_case(1, 257, 8, 2, 64, 64, true);
    attn_case(2, 64, 4, 1, 128, 0, true);
}
END_TEST

/* ---- row ops ---- */

START_TEST(rmsnorm_rope_swiglu_add)
{
    struct lms_error err;
    struct dbuf d1, d2, d3, d4, d5;
    /* rmsnorm: 7 rows x 3 heads of 37 channels, strided, plus an in-place run */
    int64_t R = 7, nh = 3, c = 37, xs = nh * c + 5, os = nh * c + 2;
    float *x = rand_buf(R * xs, 3.0f), *w = rand_buf(c, 1.0f), *out = rand_buf(R * os, 1.0f);
    float rstd[21];
    ck_assert(cpu->ops->rmsnorm(cpu, out, os, x, xs, w, rstd, R, nh, c, 1e-6f, &err) == LMS_OK);
    float *dx = dev_copy(gpu, &d1, x, (size_t)(R * xs) * 4);
    float *dw = dev_copy(gpu, &d2, w, (size_t)c * 4);
    float *dout = dev_copy(gpu, &d3, out, (size_t)(R * os) * 4);
    float *drstd = dev_copy(gpu, &d4, NULL, sizeof rstd);
    ck_assert_msg(gpu->ops->rmsnorm(gpu, dout, os, dx, xs, dw, drstd, R, nh, c, 1e-6f, &err) ==
                      LMS_OK,
                  "%s", err.msg);
    float *g = dev_get(&d3, (size_t)(R * os)), *gr = dev_get(&d4, 21);
    check_close("rmsnorm", g, out, R * os, 2e-6);
    check_close("rmsnorm rstd", gr, rstd, 21, 2e-6);
    free(g);
    free(gr);
    ck_assert(cpu->ops->rmsnorm(cpu, x, xs, x, xs, w, NULL, R, nh, c, 1e-6f, &err) == LMS_OK);
    ck_assert(gpu->ops->rmsnorm(gpu, dx, xs, dx, xs, dw, NULL, R, nh, c, 1e-6f, &err) == LMS_OK);
    g = dev_get(&d1, (size_t)(R * xs));
    check_close("rmsnorm in place", g, x, R * xs, 2e-6);
    free(g);
    dev_free(&d1);
    dev_free(&d2);
    dev_free(&d3);
    dev_free(&d4);
    free(x);
    free(w);
    free(out);

    /* rope over head dims 6, 32, 128 */
    static const int64_t dims[] = {6, 32, 128};
    for (int t = 0; t < 3; t++) {
        int64_t d = dims[t], rows = 13, heads = 3, stride = heads * d + 4, npos = 50;
        float *xr = rand_buf(rows * stride, 2.0f), *cs = rand_buf(npos * d / 2, 1.0f);
        float *sn = rand_buf(npos * d / 2, 1.0f);
        int32_t pos[13];
        for (int i = 0; i < 13; i++)
            pos[i] = (i * 7 + t) % (int32_t)npos;
        float *dxr = dev_copy(gpu, &d1, xr, (size_t)(rows * stride) * 4);
        int32_t *dpos = dev_copy(gpu, &d2, pos, sizeof pos);
        float *dcs = dev_copy(gpu, &d3, cs, (size_t)(npos * d / 2) * 4);
        float *dsn = dev_copy(gpu, &d4, sn, (size_t)(npos * d / 2) * 4);
        ck_assert(cpu->ops->rope(cpu, xr, stride, rows, heads, d, pos, cs, sn, npos, &err) ==
                  LMS_OK);
        ck_assert_msg(gpu->ops->rope(gpu, dxr, stride, rows, heads, d, dpos, dcs, dsn, npos,
                                     &err) == LMS_OK,
                      "%s", err.msg);
        g = dev_get(&d1, (size_t)(rows * stride));
        check_close("rope", g, xr, rows * stride, 1e-6);
        free(g);
        /* a position outside the table is reported at the next sync */
        pos[5] = (int32_t)npos;
        ck_assert(lms_buf_upload(gpu, dpos, pos, sizeof pos, &err) == LMS_OK);
        ck_assert(gpu->ops->rope(gpu, dxr, stride, rows, heads, d, dpos, dcs, dsn, npos, &err) ==
                  LMS_OK);
        ck_assert_int_eq(lms_backend_sync(gpu, &err), LMS_EINVAL);
        ck_assert_msg(strstr(err.msg, "position 50"), "%s", err.msg);
        ck_assert_int_eq(lms_backend_sync(gpu, &err), LMS_OK); /* reported once */
        dev_free(&d1);
        dev_free(&d2);
        dev_free(&d3);
        dev_free(&d4);
        free(xr);
        free(cs);
        free(sn);
    }

    /* swiglu and add, odd sizes */
    int64_t rows = 5, f = 1001, ins = 2 * f + 3, outs = f + 1;
    float *gu = rand_buf(rows * ins, 4.0f), *act = rand_buf(rows * outs, 1.0f);
    float *dgu = dev_copy(gpu, &d1, gu, (size_t)(rows * ins) * 4);
    float *dact = dev_copy(gpu, &d2, act, (size_t)(rows * outs) * 4);
    ck_assert(cpu->ops->swiglu(cpu, act, outs, gu, gu + f, ins, rows, f, &err) == LMS_OK);
    ck_assert(gpu->ops->swiglu(gpu, dact, outs, dgu, dgu + f, ins, rows, f, &err) == LMS_OK);
    g = dev_get(&d2, (size_t)(rows * outs));
    check_close("swiglu", g, act, rows * outs, 1e-6);
    free(g);
    int64_t n = 100003;
    float *y = rand_buf(n, 1.0f), *xa = rand_buf(n, 1.0f);
    float *dy = dev_copy(gpu, &d3, y, (size_t)n * 4), *dxa = dev_copy(gpu, &d4, xa, (size_t)n * 4);
    ck_assert(cpu->ops->add(cpu, y, xa, n, &err) == LMS_OK);
    ck_assert(gpu->ops->add(gpu, dy, dxa, n, &err) == LMS_OK);
    g = dev_get(&d3, (size_t)n);
    check_close("add", g, y, n, 0);
    free(g);
    (void)d5;
    dev_free(&d1);
    dev_free(&d2);
    dev_free(&d3);
    dev_free(&d4);
    free(gu);
    free(act);
    free(y);
    free(xa);
}
END_TEST

START_TEST(embedding_and_cast)
{
    struct lms_error err;
    struct dbuf d1, d2, d3;
    int64_t V = 97, H = 37, n = 23;
    float *table = rand_buf(V * H, 1.0f);
    uint16_t *t16 = malloc((size_t)(V * H) * 2);
    for (int64_t i = 0; i < V * H; i++) {
        t16[i] = lms_f32_to_bf16(table[i]);
        table[i] = lms_bf16_to_f32(t16[i]);
    }
    int32_t ids[23];
    for (int i = 0; i < 23; i++)
        ids[i] = (i * 31 + 3) % (int32_t)V;
    float *want = malloc((size_t)(n * H) * 4);
    ck_assert(cpu->ops->embedding(cpu, want, ids, n, table, LMS_DTYPE_F32, V, H, &err) == LMS_OK);
    int32_t *dids = dev_copy(gpu16, &d1, ids, sizeof ids);
    void *dt = dev_copy(gpu16, &d2, t16, (size_t)(V * H) * 2);
    float *dout = dev_copy(gpu16, &d3, NULL, (size_t)(n * H) * 4);
    ck_assert_msg(gpu16->ops->embedding(gpu16, dout, dids, n, dt, LMS_DTYPE_BF16, V, H, &err) ==
                      LMS_OK,
                  "%s", err.msg);
    float *g = dev_get(&d3, (size_t)(n * H));
    check_close("embedding bf16", g, want, n * H, 0);
    free(g);
    ids[7] = (int32_t)V;
    ids[9] = -1;
    ck_assert(lms_buf_upload(gpu16, dids, ids, sizeof ids, &err) == LMS_OK);
    ck_assert(gpu16->ops->embedding(gpu16, dout, dids, n, dt, LMS_DTYPE_BF16, V, H, &err) ==
              LMS_OK);
    ck_assert_int_eq(lms_backend_sync(gpu16, &err), LMS_EINVAL);
    ck_assert_msg(strstr(err.msg, "token id 97 at position 7"), "%s", err.msg);
    dev_free(&d1);
    dev_free(&d2);
    dev_free(&d3);

    /* casts between F32, BF16, F16, bit-exact against the host conversions */
    static const enum lms_dtype dts[] = {LMS_DTYPE_F32, LMS_DTYPE_BF16, LMS_DTYPE_F16};
    int64_t m = 1001;
    float *src = rand_buf(m, 70000.0f);
    src[0] = 0.0f;
    src[1] = -0.0f;
    src[2] = 1e-40f;
    for (int si = 0; si < 3; si++)
        for (int di = 0; di < 3; di++) {
            size_t ss = lms_dtype_size(dts[si]), ds = lms_dtype_size(dts[di]);
            void *hs = malloc((size_t)m * ss), *hw = malloc((size_t)m * ds);
            void *hg = malloc((size_t)m * ds);
            lms_cast(hs, dts[si], src, LMS_DTYPE_F32, (size_t)m);
            lms_cast(hw, dts[di], hs, dts[si], (size_t)m);
            void *dsrc = dev_copy(gpu, &d1, hs, (size_t)m * ss);
            void *ddst = dev_copy(gpu, &d2, NULL, (size_t)m * ds);
            ck_assert_msg(gpu->ops->cast(gpu, ddst, dts[di], dsrc, dts[si], m, &err) == LMS_OK,
                          "%s", err.msg);
            ck_assert(lms_buf_download(gpu, hg, (size_t)m * ds, ddst, (size_t)m * ds, &err) ==
                      LMS_OK);
            ck_assert_msg(!memcmp(hg, hw, (size_t)m * ds), "cast %s -> %s differs",
                          lms_dtype_name(dts[si]), lms_dtype_name(dts[di]));
            dev_free(&d1);
            dev_free(&d2);
            free(hs);
            free(hw);
            free(hg);
        }
    free(src);
    free(table);
    free(t16);
    free(want);
}
END_TEST

START_TEST(softmax_and_cross_entropy)
{
    struct lms_error err;
    struct dbuf d1, d2, d3;
    static const int64_t widths[] = {1, 37, 4096, 151936};
    for (int t = 0; t < 4; t++) {
        int64_t c = widths[t], R = t == 3 ? 3 : 9, ld = c + 3;
        float *x = rand_buf(R * ld, 12.0f);
        int32_t tgt[9];
        for (int i = 0; i < (int)R; i++)
            tgt[i] = i == 1 ? -1 : (int32_t)((i * 7919) % c);
        float loss[9], *ls = malloc((size_t)(R * ld) * 4);
        memcpy(ls, x, (size_t)(R * ld) * 4);
        float *dx = dev_copy(gpu, &d1, x, (size_t)(R * ld) * 4);
        int32_t *dt = dev_copy(gpu, &d2, tgt, sizeof tgt);
        float *dl = dev_copy(gpu, &d3, NULL, sizeof loss);
        ck_assert(cpu->ops->cross_entropy(cpu, loss, x, ld, tgt, R, c, &err) == LMS_OK);
        ck_assert_msg(gpu->ops->cross_entropy(gpu, dl, dx, ld, dt, R, c, &err) == LMS_OK, "%s",
                      err.msg);
        float *g = dev_get(&d3, (size_t)R);
        check_close("cross-entropy", g, loss, R, 2e-6);
        free(g);
        ck_assert(cpu->ops->log_softmax(cpu, ls, ls, ld, R, c, &err) == LMS_OK);
        ck_assert(gpu->ops->log_softmax(gpu, dx, dx, ld, R, c, &err) == LMS_OK);
        g = dev_get(&d1, (size_t)(R * ld));
        for (int64_t r = 0; r < R; r++)
            check_close("log-softmax", g + r * ld, ls + r * ld, c, 2e-6);
        free(g);
        /* a target past the row is reported at the next sync */
        tgt[R - 1] = (int32_t)c;
        ck_assert(lms_buf_upload(gpu, dt, tgt, sizeof tgt, &err) == LMS_OK);
        ck_assert(gpu->ops->cross_entropy(gpu, dl, dx, ld, dt, R, c, &err) == LMS_OK);
        ck_assert_int_eq(lms_backend_sync(gpu, &err), LMS_EINVAL);
        ck_assert_msg(strstr(err.msg, "target"), "%s", err.msg);
        dev_free(&d1);
        dev_free(&d2);
        dev_free(&d3);
        free(x);
        free(ls);
    }
}
END_TEST

START_TEST(device_errors)
{
    struct lms_error err;
    struct lms_backend *b;
    ck_assert_int_eq(lms_backend_open_name("cuda:1023", NULL, &b, &err), LMS_EDEVICE);
    ck_assert_msg(strstr(err.msg, "cuda:1023") && strstr(err.msg, "present"), "%s", err.msg);
    struct lms_buf buf;
    ck_assert_int_eq(lms_buf_alloc(gpu, (size_t)1 << 50, &buf, &err), LMS_ENOMEM);
    ck_assert_msg(strstr(err.msg, "cuda:0"), "%s", err.msg);
    /* the backend still works after a failed allocation */
    ck_assert_int_eq(lms_buf_alloc(gpu, 1024, &buf, &err), LMS_OK);
    ck_assert_int_eq(lms_backend_sync(gpu, &err), LMS_OK);
    lms_buf_free(gpu, &buf);
    /* FP32 upcasts 16-bit weights; AUTO keeps them */
    ck_assert_int_eq(gpu->ops->weight_dtype(gpu, LMS_DTYPE_BF16), LMS_DTYPE_F32);
    ck_assert_int_eq(gpu16->ops->weight_dtype(gpu16, LMS_DTYPE_BF16), LMS_DTYPE_BF16);
    ck_assert_int_eq(gpu16->ops->weight_dtype(gpu16, LMS_DTYPE_F32), LMS_DTYPE_F32);
}
END_TEST

/* ---- activation statistics ---- */

/* abs_mean and row_cosine: the CUDA sums run in double like the CPU's, so both agree to fp32
 * rounding; shapes past the 32-channel tile, strided rows, long sequences, zero rows. */
START_TEST(activation_stats_parity)
{
    struct lms_error err;
    static const int64_t shapes[][3] = {{1, 1, 1}, {2, 7, 33}, {3, 517, 300}, {4, 4096, 64},
                                        {1, 64, 12288}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        int64_t B = shapes[k][0], S = shapes[k][1], C = shapes[k][2], ld = C + 3;
        float *x = rand_buf(B * S * ld, 4.0f), *want = malloc((size_t)(B * C) * 4);
        ck_assert_int_eq(cpu->ops->abs_mean(cpu, want, x, ld, B, S, C, &err), LMS_OK);
        struct dbuf dx, dout;
        void *gx = dev_copy(gpu, &dx, x, (size_t)(B * S * ld) * 4);
        float *gout = dev_copy(gpu, &dout, NULL, (size_t)(B * C) * 4);
        ck_assert_msg(gpu->ops->abs_mean(gpu, gout, gx, ld, B, S, C, &err) == LMS_OK, "%s",
                      err.msg);
        float *got = dev_get(&dout, (size_t)(B * C));
        check_close("abs_mean", got, want, B * C, 1e-6);
        free(got);
        dev_free(&dx);
        dev_free(&dout);
        free(x);
        free(want);
    }
    static const int64_t cshapes[][2] = {{1, 1}, {37, 259}, {4096, 256}, {16, 4096}};
    for (size_t k = 0; k < sizeof cshapes / sizeof cshapes[0]; k++) {
        int64_t n = cshapes[k][0], C = cshapes[k][1];
        float *a = rand_buf(n * (C + 1), 1.0f), *b = rand_buf(n * C, 3.0f);
        float *want = malloc((size_t)n * 4);
        for (int64_t c = 0; c < C; c++)
            a[c] = 0; /* row 0 of a is zero: cosine 0 */
        ck_assert_int_eq(cpu->ops->row_cosine(cpu, want, a, C + 1, b, C, n, C, &err), LMS_OK);
        struct dbuf da, db, dout;
        void *ga = dev_copy(gpu, &da, a, (size_t)(n * (C + 1)) * 4);
        void *gb = dev_copy(gpu, &db, b, (size_t)(n * C) * 4);
        float *gout = dev_copy(gpu, &dout, NULL, (size_t)n * 4);
        ck_assert_msg(gpu->ops->row_cosine(gpu, gout, ga, C + 1, gb, C, n, C, &err) == LMS_OK,
                      "%s", err.msg);
        float *got = dev_get(&dout, (size_t)n);
        check_close("row_cosine", got, want, n, 1e-6);
        ck_assert(got[0] == 0.0f);
        free(got);
        dev_free(&da);
        dev_free(&db);
        dev_free(&dout);
        free(a);
        free(b);
        free(want);
    }
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("backend_parity");
    TCase *tc = tcase_create("cuda_vs_cpu");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, matmul_parity);
    tcase_add_test(tc, attention_parity);
    tcase_add_test(tc, rmsnorm_rope_swiglu_add);
    tcase_add_test(tc, embedding_and_cast);
    tcase_add_test(tc, softmax_and_cross_entropy);
    tcase_add_test(tc, activation_stats_parity);
    suite_add_tcase(s, tc);
    /* deliberate failures (an allocation larger than the device): apart from the parity case,
     * which compute-sanitizer runs and would report the failing API calls of */
    TCase *te = tcase_create("cuda_errors");
    tcase_add_checked_fixture(te, setup, teardown);
    tcase_set_timeout(te, 240);
    tcase_add_test(te, device_errors);
    suite_add_tcase(s, te);
    return s;
}
