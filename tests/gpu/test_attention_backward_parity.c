/* CUDA attention backward and the forward's log-sum-exp against the CPU reference backend, on the
 * same random inputs, laid out as the trainer lays them out: q, k and v are slices of one fused
 * qkv row (q_stride = kv_stride = (n_h + 2 n_g) d) and dq, dk, dv slices of one fused gradient
 * row; out and dout rows are wider than the heads. Sizes cover one token, tails past the 32-row
 * tiles, GQA ratios 1 to 4, odd head dims (8, 24, 40, 96) and 64/128, a sliding window.
 *
 * Tolerances, max |got - want| <= tol * max(1, max |want|):
 *   lse (FP32 backend) 2e-5: the same online max/sum as the CPU, only the order of the fp32
 *     additions differs (a few ulps of a value of size log S);
 *   lse (AUTO backend, tensor-core forward, d = 64/128) 1e-4 on bf16-rounded inputs: the
 *     scores are then exact products accumulated in fp32; exp2 with the scale folded into
 *     log2 e adds a few ulps more;
 *   dq, dk, dv 2e-5: each is a sum over up to S products of recomputed probabilities, with
 *     D = dout . out summed in fp32 here and in double on the CPU; both sides are fp32 with a
 *     different order of additions, each about 4e-7 (relative to the largest gradient) from a
 *     double-precision evaluation on these cases, so 2e-5 leaves a wide margin while an
 *     indexing or masking error (an O(1) difference) cannot pass.
 *   dq, dk, dv on the AUTO backend (bf16 tensor-core kernels, d = 64/128) 2e-2 on bf16-rounded
 *     q, k, v: S and dP are then exact products summed in fp32, but dO is rounded to bf16 on the
 *     device (8 significant bits, relative error up to 2^-9 ~ 2e-3) and so are P (for dV) and
 *     dS (for dK, dQ); every product of the final sums carries up to ~4e-3 of its own size,
 *     with random signs. dS = P (dP - D) also inherits dO's rounding through dP, at the size of
 *     dP rather than of dS: where dP - D cancels (one token: dq = dk = 0 exactly) the error
 *     stays at ~1e-3 absolute, hence the floor of 1 (|dP| is of order 1 with these inputs).
 *     A model of the kernels' rounding (bf16 operands, fp32 sums) against double precision on
 *     these shapes gave at most 5e-3 absolute with gradients of size 0.2 to 5, so 2e-2 leaves a
 *     4x margin while a wrong tile, mask or transpose (an error the size of the gradient, 0.2
 *     and up) cannot pass.
 * Every CUDA output is poisoned with NaN first, so an element not written fails. Needs a GPU:
 * check_main.c skips (77) where no CUDA device opens. */
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

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
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

static float *nan_buf(int64_t n)
{
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        p[i] = NAN;
    return p;
}

/* ---- device mirrors ---- */

struct dbuf {
    struct lms_backend *be;
    struct lms_buf b;
};

/* Device copy of n floats at host (NULL: poisoned with 0xff bytes, NaN as floats). */
static float *dev_copy(struct lms_backend *be, struct dbuf *d, const float *host, int64_t n)
{
    struct lms_error err;
    size_t bytes = (size_t)(n > 0 ? n : 1) * sizeof(float);
    d->be = be;
    ck_assert_msg(lms_buf_alloc(be, bytes, &d->b, &err) == LMS_OK, "%s", err.msg);
    void *tmp = NULL;
    if (!host) {
        tmp = malloc(bytes);
        memset(tmp, 0xff, bytes);
    }
    ck_assert_msg(lms_buf_upload(be, d->b.ptr, host ? (const void *)host : tmp, bytes, &err) ==
                      LMS_OK,
                  "%s", err.msg);
    free(tmp);
    return d->b.ptr;
}

static float *dev_get(struct dbuf *d, int64_t n)
{
    struct lms_error err;
    size_t bytes = (size_t)(n > 0 ? n : 1) * sizeof(float);
    float *h = malloc(bytes);
    ck_assert_msg(lms_buf_download(d->be, h, bytes, d->b.ptr, bytes, &err) == LMS_OK, "%s",
                  err.msg);
    return h;
}

static void dev_free(struct dbuf *d)
{
    lms_buf_free(d->be, &d->b);
}

/* Columns [c0, c0 + w) of rows (n_rows, ld) of got and want: max |got - want| <= tol *
 * max(1, max |want|), no NaN. */
static void check_cols(const char *what, const float *got, const float *want, int64_t n_rows,
                       int64_t ld, int64_t c0, int64_t w, double tol)
{
    double mx = 1, worst = 0;
    int64_t at = c0;
    for (int64_t r = 0; r < n_rows; r++)
        for (int64_t c = c0; c < c0 + w; c++)
            mx = fmax(mx, fabs((double)want[r * ld + c]));
    for (int64_t r = 0; r < n_rows; r++)
        for (int64_t c = c0; c < c0 + w; c++) {
            int64_t i = r * ld + c;
            double e = fabs((double)got[i] - (double)want[i]);
            if (!(e <= worst)) { /* NaN lands here */
                worst = e;
                at = i;
            }
        }
    ck_assert_msg(worst <= tol * mx,
                  "%s: row %lld column %lld: got %.9g want %.9g (tol %g x %g)", what,
                  (long long)(at / ld), (long long)(at % ld), (double)got[at], (double)want[at],
                  tol, mx);
}

/* ---- one case ---- */

static void bwd_case(int64_t B, int64_t S, int64_t nh, int64_t ng, int64_t d, int64_t W)
{
    struct lms_error err;
    char what[200];
    snprintf(what, sizeof what, "B=%lld S=%lld heads=%lld groups=%lld d=%lld window=%lld",
             (long long)B, (long long)S, (long long)nh, (long long)ng, (long long)d,
             (long long)W);
    const int64_t N = B * S, qs = (nh + 2 * ng) * d, os = nh * d + 3, gs = nh * d + 5;
    const int64_t n_lse = B * nh * S;
    float *qkv = rand_buf(N * qs, 1.0f), *dout = rand_buf(N * gs, 1.0f);
    float *out = nan_buf(N * os), *lse = nan_buf(n_lse), *dqkv = nan_buf(N * qs);

    /* CPU reference: forward with lse, then the backward from its out and lse */
    struct lms_attention at = {B, S, nh, ng, d, qkv, qkv + nh * d, qkv + (nh + ng) * d, qs, qs,
                               out, os, 1.0f / sqrtf((float)d), W, lse};
    ck_assert_msg(cpu->ops->attention(cpu, &at, &err) == LMS_OK, "%s", err.msg);
    struct lms_attention_backward ab = {at, dout, gs, dqkv, qs, dqkv + nh * d,
                                        dqkv + (nh + ng) * d, qs};
    ck_assert_msg(cpu->ops->attention_backward(cpu, &ab, &err) == LMS_OK, "%s", err.msg);

    /* CUDA forward (FP32): out and lse */
    struct dbuf b_qkv, b_out, b_lse;
    float *g_qkv = dev_copy(gpu, &b_qkv, qkv, N * qs);
    struct lms_attention ga = at;
    ga.q = g_qkv;
    ga.k = g_qkv + nh * d;
    ga.v = g_qkv + (nh + ng) * d;
    ga.out = dev_copy(gpu, &b_out, NULL, N * os);
    ga.lse = dev_copy(gpu, &b_lse, NULL, n_lse);
    ck_assert_msg(gpu->ops->attention(gpu, &ga, &err) == LMS_OK, "%s: %s", what, err.msg);
    float *got_lse = dev_get(&b_lse, n_lse), *got_out = dev_get(&b_out, N * os);
    char msg[260];
    snprintf(msg, sizeof msg, "forward lse fp32 %s", what);
    check_cols(msg, got_lse, lse, 1, n_lse, 0, n_lse, 2e-5);
    snprintf(msg, sizeof msg, "forward out fp32 %s", what);
    check_cols(msg, got_out, out, N, os, 0, nh * d, 2e-5);
    free(got_lse);
    free(got_out);

    /* CUDA backward from the CPU's out and lse (the same inputs as the reference) */
    struct dbuf b_out2, b_lse2, b_dout, b_dqkv;
    struct lms_attention_backward gb = ab;
    gb.fwd = ga;
    gb.fwd.out = dev_copy(gpu, &b_out2, out, N * os);
    gb.fwd.lse = dev_copy(gpu, &b_lse2, lse, n_lse);
    gb.dout = dev_copy(gpu, &b_dout, dout, N * gs);
    float *g_dqkv = dev_copy(gpu, &b_dqkv, NULL, N * qs);
    gb.dq = g_dqkv;
    gb.dk = g_dqkv + nh * d;
    gb.dv = g_dqkv + (nh + ng) * d;
    ck_assert_msg(gpu->ops->attention_backward(gpu, &gb, &err) == LMS_OK, "%s: %s", what,
                  err.msg);
    float *got = dev_get(&b_dqkv, N * qs);
    snprintf(msg, sizeof msg, "dq %s", what);
    check_cols(msg, got, dqkv, N, qs, 0, nh * d, 2e-5);
    snprintf(msg, sizeof msg, "dk %s", what);
    check_cols(msg, got, dqkv, N, qs, nh * d, ng * d, 2e-5);
    snprintf(msg, sizeof msg, "dv %s", what);
    check_cols(msg, got, dqkv, N, qs, (nh + ng) * d, ng * d, 2e-5);
    free(got);

    /* AUTO backend: the tensor-core forward's lse on bf16-rounded inputs (d = 64 and 128) */
    if (d == 64 || d == 128) {
        for (int64_t i = 0; i < N * qs; i++)
            qkv[i] = lms_bf16_to_f32(lms_f32_to_bf16(qkv[i]));
        ck_assert_msg(cpu->ops->attention(cpu, &at, &err) == LMS_OK, "%s", err.msg);
        struct dbuf c_qkv, c_out, c_lse;
        float *h_qkv = dev_copy(gpu16, &c_qkv, qkv, N * qs);
        struct lms_attention ha = at;
        ha.q = h_qkv;
        ha.k = h_qkv + nh * d;
        ha.v = h_qkv + (nh + ng) * d;
        ha.out = dev_copy(gpu16, &c_out, NULL, N * os);
        ha.lse = dev_copy(gpu16, &c_lse, NULL, n_lse);
        ck_assert_msg(gpu16->ops->attention(gpu16, &ha, &err) == LMS_OK, "%s: %s", what,
                      err.msg);
        float *l16 = dev_get(&c_lse, n_lse);
        snprintf(msg, sizeof msg, "forward lse auto %s", what);
        check_cols(msg, l16, lse, 1, n_lse, 0, n_lse, 1e-4);
        free(l16);
        dev_free(&c_qkv);
        dev_free(&c_out);
        dev_free(&c_lse);
    }

    dev_free(&b_qkv);
    dev_free(&b_out);
    dev_free(&b_lse);
    dev_free(&b_out2);
    dev_free(&b_lse2);
    dev_free(&b_dout);
    dev_free(&b_dqkv);
    free(qkv);
    free(dout);
    free(out);
    free(lse);
    free(dqkv);
}

/* The AUTO backend's backward (bf16 tensor cores for d = 64/128) against the CPU on
 * bf16-rounded q, k, v, from the CPU forward's out and lse. */
static void bwd16_case(int64_t B, int64_t S, int64_t nh, int64_t ng, int64_t d, int64_t W)
{
    struct lms_error err;
    char what[200], msg[260];
    snprintf(what, sizeof what, "auto B=%lld S=%lld heads=%lld groups=%lld d=%lld window=%lld",
             (long long)B, (long long)S, (long long)nh, (long long)ng, (long long)d,
             (long long)W);
    const int64_t N = B * S, qs = (nh + 2 * ng) * d, os = nh * d + 3, gs = nh * d + 5;
    const int64_t n_lse = B * nh * S;
    float *qkv = rand_buf(N * qs, 1.0f), *dout = rand_buf(N * gs, 1.0f);
    float *out = nan_buf(N * os), *lse = nan_buf(n_lse), *dqkv = nan_buf(N * qs);
    for (int64_t i = 0; i < N * qs; i++)
        qkv[i] = lms_bf16_to_f32(lms_f32_to_bf16(qkv[i]));

    struct lms_attention at = {B, S, nh, ng, d, qkv, qkv + nh * d, qkv + (nh + ng) * d, qs, qs,
                               out, os, 1.0f / sqrtf((float)d), W, lse};
    ck_assert_msg(cpu->ops->attention(cpu, &at, &err) == LMS_OK, "%s", err.msg);
    struct lms_attention_backward ab = {at, dout, gs, dqkv, qs, dqkv + nh * d,
                                        dqkv + (nh + ng) * d, qs};
    ck_assert_msg(cpu->ops->attention_backward(cpu, &ab, &err) == LMS_OK, "%s", err.msg);

    struct dbuf b_qkv, b_out, b_lse, b_dout, b_dqkv;
    float *g_qkv = dev_copy(gpu16, &b_qkv, qkv, N * qs);
    struct lms_attention_backward gb = ab;
    gb.fwd.q = g_qkv;
    gb.fwd.k = g_qkv + nh * d;
    gb.fwd.v = g_qkv + (nh + ng) * d;
    gb.fwd.out = dev_copy(gpu16, &b_out, out, N * os);
    gb.fwd.lse = dev_copy(gpu16, &b_lse, lse, n_lse);
    gb.dout = dev_copy(gpu16, &b_dout, dout, N * gs);
    float *g_dqkv = dev_copy(gpu16, &b_dqkv, NULL, N * qs);
    gb.dq = g_dqkv;
    gb.dk = g_dqkv + nh * d;
    gb.dv = g_dqkv + (nh + ng) * d;
    ck_assert_msg(gpu16->ops->attention_backward(gpu16, &gb, &err) == LMS_OK, "%s: %s", what,
                  err.msg);
    float *got = dev_get(&b_dqkv, N * qs);
    snprintf(msg, sizeof msg, "dq %s", what);
    check_cols(msg, got, dqkv, N, qs, 0, nh * d, 2e-2);
    snprintf(msg, sizeof msg, "dk %s", what);
    check_cols(msg, got, dqkv, N, qs, nh * d, ng * d, 2e-2);
    snprintf(msg, sizeof msg, "dv %s", what);
    check_cols(msg, got, dqkv, N, qs, (nh + ng) * d, ng * d, 2e-2);
    free(got);

    dev_free(&b_qkv);
    dev_free(&b_out);
    dev_free(&b_lse);
    dev_free(&b_dout);
    dev_free(&b_dqkv);
    free(qkv);
    free(dout);
    free(out);
    free(lse);
    free(dqkv);
}

START_TEST(attention_backward_parity_tensor_cores)
{
    bwd16_case(1, 1, 2, 2, 64, 0);
    bwd16_case(1, 130, 4, 2, 64, 0);
    bwd16_case(2, 200, 8, 2, 128, 0);
    bwd16_case(1, 257, 4, 1, 128, 31);
    bwd16_case(1, 300, 6, 3, 64, 100); /* a window wider than one tile */
    bwd16_case(1, 1000, 4, 2, 128, 0);  /* many tiles: the double-buffered pipelines */
    bwd16_case(2, 513, 8, 2, 64, 100);  /* one row past a tile, window over tile edges */
    bwd16_case(1, 96, 8, 8, 40, 0);    /* d outside 64/128: the fp32 kernels on AUTO */
}
END_TEST

START_TEST(attention_backward_parity)
{
    bwd_case(1, 1, 1, 1, 8, 0);
    bwd_case(2, 37, 4, 2, 24, 0);
    bwd_case(1, 130, 6, 2, 64, 0);
    bwd_case(2, 200, 8, 8, 40, 17);
    bwd_case(1, 257, 4, 1, 128, 0);
    bwd_case(1, 64, 2, 2, 96, 0);
    bwd_case(1, 300, 32, 8, 128, 0);
    bwd_case(1, 100, 4, 2, 256, 33); /* the largest head dim: shared memory near the limit */
}
END_TEST

START_TEST(attention_backward_needs_lse)
{
    struct lms_error err;
    float x = 0;
    struct lms_attention at = {1, 1, 1, 1, 8, &x, &x, &x, 8, 8, &x, 8, 1.0f, 0, NULL};
    struct lms_attention_backward ab = {at, &x, 8, &x, 8, &x, &x, 8};
    ck_assert_int_eq(gpu->ops->attention_backward(gpu, &ab, &err), LMS_EINVAL);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("attention_backward_parity");
    TCase *tc = tcase_create("cuda_vs_cpu");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, attention_backward_parity);
    tcase_add_test(tc, attention_backward_parity_tensor_cores);
    tcase_add_test(tc, attention_backward_needs_lse);
    suite_add_tcase(s, tc);
    return s;
}
