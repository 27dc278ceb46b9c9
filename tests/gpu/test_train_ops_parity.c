/* The CUDA training ops against the CPU reference backend on the same random inputs: embedding,
 * RMSNorm (one and three heads per token), RoPE, SwiGLU and bias backward, the hidden-state
 * losses, sum of squares, scale and the multi-tensor AdamW (with and without the bf16 copy of the
 * weights), at odd sizes (1, 3, 7, 33, 257 rows; 1, 3, 96, 129, 1000 channels; tensors of 1, 17,
 * 1000, 65537, 3 elements), strided rows and accumulating outputs pre-filled with random values.
 * CUDA outputs that are written (not accumulated) are poisoned with NaN first, so an element the
 * kernel skipped fails.
 *
 * Tolerances, as max |got - want| <= tol * max(1, max |want|):
 *   - reductions (RMSNorm dx and dw, bias, hidden losses, sum of squares) run in double on both
 *     backends, in different orders, then round to fp32 once: 1e-6 (a few fp32 ulps); RMSNorm dx
 *     and the cosine gradient are differences of such terms: 1e-5;
 *   - embedding backward sums repeated ids with fp32 atomics in any order: 1e-5;
 *   - RoPE and SwiGLU are element-wise, but nvcc fuses multiply-adds and the CPU's exp is its
 *     own 2-ulp polynomial: 1e-6 and 1e-5;
 *   - AdamW follows the CPU's operation order with every fp32 operation rounded on its own, so it
 *     agrees to the last ulp or so: 1e-6 relative per element over three steps; the bf16 copy must
 *     be exactly the rounding of the CUDA fp32 result, and within one bf16 ulp of the CPU's.
 * The cuda_vs_cpu case injects no errors (compute-sanitizer runs it); the deferred errors of bad
 * token ids and positions are in cuda_errors. Needs a GPU: check_main.c skips it without one. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check_main.h"
#include "kernels/backend_impl.h"
#include "lms/dtype.h"

static struct lms_backend *cpu, *gpu; /* CPU, CUDA FP32 */

static void setup(void)
{
    struct lms_error err;
    struct lms_backend_opts o = {.n_threads = 2};
    ck_assert_msg(lms_backend_open_name("cpu", &o, &cpu, &err) == LMS_OK, "%s", err.msg);
    o.precision = LMS_PRECISION_FP32;
    ck_assert_msg(lms_backend_open_name("cuda", &o, &gpu, &err) == LMS_OK, "%s", err.msg);
}

static void teardown(void)
{
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

static float *dup_buf(const float *x, int64_t n)
{
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    memcpy(p, x, (size_t)n * sizeof(float));
    return p;
}

/* ---- device mirrors ---- */

struct dbuf {
    struct lms_backend *be;
    struct lms_buf b;
};

/* Device copy of n bytes at host (NULL: poisoned with 0xff bytes, NaN as floats). */
static void *dev_copy(struct dbuf *d, const void *host, size_t n)
{
    struct lms_error err;
    d->be = gpu;
    ck_assert_msg(lms_buf_alloc(gpu, n ? n : 4, &d->b, &err) == LMS_OK, "%s", err.msg);
    void *tmp = NULL;
    if (!host) {
        tmp = malloc(n ? n : 4);
        memset(tmp, 0xff, n ? n : 4);
        host = tmp;
    }
    if (n)
        ck_assert_msg(lms_buf_upload(gpu, d->b.ptr, host, n, &err) == LMS_OK, "%s", err.msg);
    free(tmp);
    return d->b.ptr;
}

static void *dev_get_bytes(struct dbuf *d, size_t n)
{
    struct lms_error err;
    void *h = malloc(n ? n : 4);
    ck_assert_msg(lms_buf_download(gpu, h, n, d->b.ptr, n, &err) == LMS_OK, "%s", err.msg);
    return h;
}

static float *dev_get(struct dbuf *d, int64_t n_floats)
{
    return dev_get_bytes(d, (size_t)n_floats * sizeof(float));
}

static void dev_free(struct dbuf *d)
{
    lms_buf_free(d->be, &d->b);
}

/* max |got - want| <= tol * max(1, max |want|) over rows x cols elements at row stride ld (the
 * gaps between rows are not compared); NaN fails. */
static void check_rows(const char *what, const float *got, const float *want, int64_t rows,
                       int64_t cols, int64_t ld, double tol)
{
    double mx = 1, worst = 0;
    int64_t at = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++)
            mx = fmax(mx, fabs((double)want[r * ld + j]));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++) {
            int64_t i = r * ld + j;
            double e = fabs((double)got[i] - (double)want[i]);
            if (!(e <= worst)) { /* NaN lands here */
                worst = e;
                at = i;
            }
        }
    ck_assert_msg(worst <= tol * mx,
                  "%s: element %lld (%lld x %lld, ld %lld): got %.9g want %.9g (tol %g x %g)",
                  what, (long long)at, (long long)rows, (long long)cols, (long long)ld,
                  (double)got[at], (double)want[at], tol, mx);
}

static void check_close(const char *what, const float *got, const float *want, int64_t n,
                        double tol)
{
    check_rows(what, got, want, 1, n, n, tol);
}

/* ---- embedding ---- */

START_TEST(embedding_backward_parity)
{
    struct lms_error err;
    static const int64_t hs[] = {1, 3, 129}, ns[] = {1, 7, 257};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++) {
            int64_t V = 50, H = hs[a], n = ns[b];
            float *table = rand_buf(V * H, 1.0f), *dout = rand_buf(n * H, 1.0f);
            int32_t *ids = malloc((size_t)n * sizeof *ids);
            for (int64_t i = 0; i < n; i++) { /* repeats: 257 ids over 50 rows */
                int32_t id = (int32_t)((frand() + 1.0f) * 0.5f * (float)V);
                ids[i] = id < V ? id : (int32_t)V - 1;
            }
            struct dbuf dt, dd, di;
            float *gt = dev_copy(&dt, table, (size_t)(V * H) * 4);
            float *gd = dev_copy(&dd, dout, (size_t)(n * H) * 4);
            int32_t *gi = dev_copy(&di, ids, (size_t)n * sizeof *ids);
            ck_assert_int_eq(
                cpu->ops->embedding_backward(cpu, table, dout, ids, n, V, H, &err), LMS_OK);
            ck_assert_msg(gpu->ops->embedding_backward(gpu, gt, gd, gi, n, V, H, &err) == LMS_OK,
                          "%s", err.msg);
            float *got = dev_get(&dt, V * H);
            check_close("embedding backward", got, table, V * H, 1e-5);
            free(got);
            dev_free(&dt);
            dev_free(&dd);
            dev_free(&di);
            free(table);
            free(dout);
            free(ids);
        }
}
END_TEST

/* ---- RMSNorm ---- */

static void rmsnorm_case(int64_t R, int64_t nh, int64_t c)
{
    struct lms_error err;
    int64_t xs = nh * c + 3, ys = nh * c + 1, dxs = nh * c + 2;
    float *x = rand_buf(R * xs, 2.0f), *w = rand_buf(c, 1.0f), *dy = rand_buf(R * ys, 1.0f);
    float *y = malloc((size_t)(R * xs) * 4), *rstd = malloc((size_t)(R * nh) * 4);
    ck_assert_int_eq(cpu->ops->rmsnorm(cpu, y, xs, x, xs, w, rstd, R, nh, c, 1e-6f, &err),
                     LMS_OK);
    struct dbuf bx, bw, by, br, bdx, bdw;
    float *gx = dev_copy(&bx, x, (size_t)(R * xs) * 4), *gw = dev_copy(&bw, w, (size_t)c * 4);
    float *gy = dev_copy(&by, dy, (size_t)(R * ys) * 4);
    float *gr = dev_copy(&br, rstd, (size_t)(R * nh) * 4);
    for (int mode = 0; mode < 3; mode++) { /* 0: dx written, 1: dx added, 2: dx = dy */
        bool add = mode == 1;
        float *dw = rand_buf(c, 1.0f), *dx = add ? rand_buf(R * dxs, 1.0f) : NULL;
        float *dyc = dup_buf(dy, R * ys);
        float *gdx;
        float *gdw = dev_copy(&bdw, dw, (size_t)c * 4);
        if (mode == 2) {
            gdx = dev_copy(&bdx, dy, (size_t)(R * ys) * 4);
            ck_assert_int_eq(cpu->ops->rmsnorm_backward(cpu, dyc, ys, false, dw, dyc, ys, x, xs,
                                                        w, rstd, R, nh, c, &err),
                             LMS_OK);
            ck_assert_msg(gpu->ops->rmsnorm_backward(gpu, gdx, ys, false, gdw, gdx, ys, gx, xs,
                                                     gw, gr, R, nh, c, &err) == LMS_OK,
                          "%s", err.msg);
            float *got = dev_get(&bdx, R * ys);
            check_rows("rmsnorm backward dx in place", got, dyc, R, nh * c, ys, 1e-5);
            free(got);
        } else {
            if (!dx)
                dx = malloc((size_t)(R * dxs) * 4);
            gdx = dev_copy(&bdx, add ? dx : NULL, (size_t)(R * dxs) * 4);
            ck_assert_int_eq(cpu->ops->rmsnorm_backward(cpu, dx, dxs, add, dw, dy, ys, x, xs, w,
                                                        rstd, R, nh, c, &err),
                             LMS_OK);
            ck_assert_msg(gpu->ops->rmsnorm_backward(gpu, gdx, dxs, add, gdw, gy, ys, gx, xs,
                                                     gw, gr, R, nh, c, &err) == LMS_OK,
                          "%s", err.msg);
            float *got = dev_get(&bdx, R * dxs);
            check_rows(add ? "rmsnorm backward dx added" : "rmsnorm backward dx", got, dx, R,
                       nh * c, dxs, 1e-5);
            free(got);
        }
        float *gotw = dev_get(&bdw, c);
        check_close("rmsnorm backward dw", gotw, dw, c, 1e-6);
        free(gotw);
        dev_free(&bdx);
        dev_free(&bdw);
        free(dw);
        free(dx);
        free(dyc);
    }
    dev_free(&bx);
    dev_free(&bw);
    dev_free(&by);
    dev_free(&br);
    free(x);
    free(w);
    free(dy);
    free(y);
    free(rstd);
}

START_TEST(rmsnorm_backward_parity)
{
    static const int64_t shapes[][3] = {{1, 1, 1},   {7, 1, 96},   {33, 3, 129}, {7, 3, 3},
                                        {257, 1, 1000}, {257, 3, 33}, {1, 1, 1000}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++)
        rmsnorm_case(shapes[k][0], shapes[k][1], shapes[k][2]);
}
END_TEST

/* ---- RoPE ---- */

START_TEST(rope_backward_parity)
{
    struct lms_error err;
    static const int64_t dims[] = {2, 6, 128}, rows_of[] = {1, 7, 33};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++) {
            int64_t d = dims[a], R = rows_of[b], nh = 3, stride = nh * d + 5, npos = 50;
            float *x = rand_buf(R * stride, 2.0f), *cs = rand_buf(npos * d / 2, 1.0f);
            float *sn = rand_buf(npos * d / 2, 1.0f);
            int32_t *pos = malloc((size_t)R * sizeof *pos);
            for (int64_t i = 0; i < R; i++)
                pos[i] = (int32_t)((i * 13 + a) % npos);
            struct dbuf bx, bp, bc, bs;
            float *gx = dev_copy(&bx, x, (size_t)(R * stride) * 4);
            int32_t *gp = dev_copy(&bp, pos, (size_t)R * sizeof *pos);
            float *gc = dev_copy(&bc, cs, (size_t)(npos * d / 2) * 4);
            float *gs = dev_copy(&bs, sn, (size_t)(npos * d / 2) * 4);
            ck_assert_int_eq(
                cpu->ops->rope_backward(cpu, x, stride, R, nh, d, pos, cs, sn, npos, &err),
                LMS_OK);
            ck_assert_msg(gpu->ops->rope_backward(gpu, gx, stride, R, nh, d, gp, gc, gs, npos,
                                                  &err) == LMS_OK,
                          "%s", err.msg);
            float *got = dev_get(&bx, R * stride);
            check_close("rope backward", got, x, R * stride, 1e-6); /* gaps untouched on both */
            free(got);
            dev_free(&bx);
            dev_free(&bp);
            dev_free(&bc);
            dev_free(&bs);
            free(x);
            free(cs);
            free(sn);
            free(pos);
        }
}
END_TEST

/* ---- SwiGLU and bias ---- */

START_TEST(swiglu_bias_backward_parity)
{
    struct lms_error err;
    static const int64_t rows_of[] = {1, 7, 33, 257}, fs[] = {1, 3, 96, 129, 1000};
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 5; b++) {
            int64_t R = rows_of[a], F = fs[b], in_s = 2 * F + 1, ds = F + 2, os = F + 3;
            float *gate = rand_buf(R * in_s, 4.0f), *dout = rand_buf(R * os, 1.0f);
            float *up = gate + F;
            float *dg = malloc((size_t)(R * ds) * 4), *du = malloc((size_t)(R * ds) * 4);
            ck_assert_int_eq(cpu->ops->swiglu_backward(cpu, dg, du, ds, dout, os, gate, up, in_s,
                                                       R, F, &err),
                             LMS_OK);
            struct dbuf bg, bo, bdg, bdu, bb;
            float *ggate = dev_copy(&bg, gate, (size_t)(R * in_s) * 4);
            float *gout = dev_copy(&bo, dout, (size_t)(R * os) * 4);
            float *gdg = dev_copy(&bdg, NULL, (size_t)(R * ds) * 4);
            float *gdu = dev_copy(&bdu, NULL, (size_t)(R * ds) * 4);
            ck_assert_msg(gpu->ops->swiglu_backward(gpu, gdg, gdu, ds, gout, os, ggate,
                                                    ggate + F, in_s, R, F, &err) == LMS_OK,
                          "%s", err.msg);
            float *got = dev_get(&bdg, R * ds);
            check_rows("swiglu backward dgate", got, dg, R, F, ds, 1e-5);
            free(got);
            got = dev_get(&bdu, R * ds);
            check_rows("swiglu backward dup", got, du, R, F, ds, 1e-5);
            free(got);

            /* bias: column sums of dout (R, F) at row stride os, added to random values */
            float *db = rand_buf(F, 1.0f);
            float *gdb = dev_copy(&bb, db, (size_t)F * 4);
            ck_assert_int_eq(cpu->ops->bias_backward(cpu, db, dout, os, R, F, &err), LMS_OK);
            ck_assert_msg(gpu->ops->bias_backward(gpu, gdb, gout, os, R, F, &err) == LMS_OK,
                          "%s", err.msg);
            got = dev_get(&bb, F);
            check_close("bias backward", got, db, F, 1e-6);
            free(got);
            dev_free(&bg);
            dev_free(&bo);
            dev_free(&bdg);
            dev_free(&bdu);
            dev_free(&bb);
            free(gate);
            free(dout);
            free(dg);
            free(du);
            free(db);
        }
}
END_TEST

/* ---- hidden-state losses ---- */

START_TEST(hidden_loss_parity)
{
    struct lms_error err;
    static const int64_t rows_of[] = {1, 7, 33}, cs[] = {1, 3, 129, 1000};
    for (int kind = 0; kind < 2; kind++)
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 4; b++)
                for (int with_grad = 0; with_grad < 2; with_grad++) {
                    int64_t R = rows_of[a], C = cs[b], ld = C + 2;
                    float *s = rand_buf(R * ld, 1.0f), *t = rand_buf(R * ld, 2.0f);
                    /* a zero student row: the cosine's norm clamp (losses only: its gradient
                     * is ~1e8 and would swamp the tolerance of the other rows) */
                    if (R > 1 && !with_grad)
                        for (int64_t j = 0; j < C; j++)
                            s[ld + j] = 0.0f;
                    float *ds = with_grad ? rand_buf(R * ld, 1.0f) : NULL;
                    float *loss = malloc((size_t)R * 4);
                    struct dbuf bs, bt, bd, bl;
                    float *gs = dev_copy(&bs, s, (size_t)(R * ld) * 4);
                    float *gt = dev_copy(&bt, t, (size_t)(R * ld) * 4);
                    float *gd = with_grad ? dev_copy(&bd, ds, (size_t)(R * ld) * 4) : NULL;
                    float *gl = dev_copy(&bl, NULL, (size_t)R * 4);
                    ck_assert_int_eq(cpu->ops->hidden_loss(cpu, loss, ds, s, t, ld, R, C, kind,
                                                           0.37f, &err),
                                     LMS_OK);
                    ck_assert_msg(gpu->ops->hidden_loss(gpu, gl, gd, gs, gt, ld, R, C, kind,
                                                        0.37f, &err) == LMS_OK,
                                  "%s", err.msg);
                    float *got = dev_get(&bl, R);
                    check_close(kind ? "hidden loss mse" : "hidden loss cosine", got, loss, R,
                                1e-6);
                    free(got);
                    if (with_grad) {
                        got = dev_get(&bd, R * ld);
                        check_rows(kind ? "hidden loss mse grad" : "hidden loss cosine grad",
                                   got, ds, R, C, ld, 1e-5);
                        free(got);
                        dev_free(&bd);
                    }
                    dev_free(&bs);
                    dev_free(&bt);
                    dev_free(&bl);
                    free(s);
                    free(t);
                    free(ds);
                    free(loss);
                }
}
END_TEST

/* ---- sum of squares and scale ---- */

START_TEST(sum_squares_scale_parity)
{
    struct lms_error err;
    static const int64_t ns[] = {1, 17, 1000, 65537, 3000001};
    for (int k = 0; k < 5; k++) {
        int64_t n = ns[k];
        float *x = rand_buf(n, 1.5f);
        float acc = 1.5f;
        ck_assert_int_eq(cpu->ops->sum_squares(cpu, &acc, x, n, &err), LMS_OK);
        ck_assert_int_eq(cpu->ops->sum_squares(cpu, &acc, x, n, &err), LMS_OK);
        struct dbuf bx, bo;
        float one = 1.5f;
        float *gx = dev_copy(&bx, x, (size_t)n * 4), *go = dev_copy(&bo, &one, 4);
        ck_assert_msg(gpu->ops->sum_squares(gpu, go, gx, n, &err) == LMS_OK, "%s", err.msg);
        ck_assert_msg(gpu->ops->sum_squares(gpu, go, gx, n, &err) == LMS_OK, "%s", err.msg);
        float *got = dev_get(&bo, 1);
        ck_assert_msg(fabs((double)got[0] - acc) <= 1e-6 * fabs((double)acc),
                      "sum of squares of %lld: got %.9g want %.9g", (long long)n, (double)got[0],
                      (double)acc);
        /* deterministic: the same sum again, bit for bit */
        ck_assert(lms_buf_upload(gpu, go, &one, 4, &err) == LMS_OK);
        ck_assert(gpu->ops->sum_squares(gpu, go, gx, n, &err) == LMS_OK);
        ck_assert(gpu->ops->sum_squares(gpu, go, gx, n, &err) == LMS_OK);
        float *again = dev_get(&bo, 1);
        ck_assert(memcmp(again, got, 4) == 0);
        free(again);
        free(got);

        /* scale by -0.37: one rounding per element on both sides, so exact */
        ck_assert_int_eq(cpu->ops->scale(cpu, x, -0.37f, n, &err), LMS_OK);
        ck_assert_msg(gpu->ops->scale(gpu, gx, -0.37f, n, &err) == LMS_OK, "%s", err.msg);
        got = dev_get(&bx, n);
        check_close("scale", got, x, n, 0);
        free(got);
        /* scale by 0 zeroes NaN and Inf too */
        x[0] = NAN;
        if (n > 2) {
            x[1] = INFINITY;
            x[2] = -INFINITY;
        }
        ck_assert(lms_buf_upload(gpu, gx, x, (size_t)n * 4, &err) == LMS_OK);
        ck_assert_msg(gpu->ops->scale(gpu, gx, 0.0f, n, &err) == LMS_OK, "%s", err.msg);
        uint32_t *bits = dev_get_bytes(&bx, (size_t)n * 4);
        for (int64_t i = 0; i < n; i++)
            ck_assert_msg(bits[i] == 0, "scale by 0: element %lld is 0x%08x", (long long)i,
                          bits[i]);
        free(bits);
        dev_free(&bx);
        dev_free(&bo);
        free(x);
    }
}
END_TEST

/* ---- AdamW ---- */

struct aw_set {
    int64_t n;
    float *w, *g, *m, *v; /* host (CPU backend) */
    uint16_t *wb;         /* host bf16 copy or NULL */
    struct dbuf bw, bg, bm, bv, bb;
    bool bf16;
};

static void aw_make(struct aw_set *s, int64_t n, bool bf16)
{
    memset(s, 0, sizeof *s);
    s->n = n;
    s->bf16 = bf16;
    if (n == 0)
        return;
    s->w = rand_buf(n, 1.0f);
    s->g = rand_buf(n, 0.3f);
    s->m = calloc((size_t)n, 4);
    s->v = calloc((size_t)n, 4);
    dev_copy(&s->bw, s->w, (size_t)n * 4);
    dev_copy(&s->bg, s->g, (size_t)n * 4);
    dev_copy(&s->bm, s->m, (size_t)n * 4);
    dev_copy(&s->bv, s->v, (size_t)n * 4);
    if (bf16) {
        s->wb = malloc((size_t)n * 2);
        dev_copy(&s->bb, NULL, (size_t)n * 2);
    }
}

static void aw_free(struct aw_set *s)
{
    if (s->n == 0)
        return;
    dev_free(&s->bw);
    dev_free(&s->bg);
    dev_free(&s->bm);
    dev_free(&s->bv);
    if (s->bf16)
        dev_free(&s->bb);
    free(s->w);
    free(s->g);
    free(s->m);
    free(s->v);
    free(s->wb);
}

static void aw_check(struct aw_set *s, const char *what)
{
    if (s->n == 0)
        return;
    float *w = dev_get(&s->bw, s->n), *m = dev_get(&s->bm, s->n), *v = dev_get(&s->bv, s->n);
    check_close(what, w, s->w, s->n, 1e-6);
    check_close(what, m, s->m, s->n, 1e-6);
    check_close(what, v, s->v, s->n, 1e-6);
    if (s->bf16) {
        uint16_t *b = dev_get_bytes(&s->bb, (size_t)s->n * 2);
        for (int64_t i = 0; i < s->n; i++) {
            ck_assert_msg(b[i] == lms_f32_to_bf16(w[i]),
                          "%s: bf16 copy [%lld] 0x%04x is not the rounding of %.9g", what,
                          (long long)i, b[i], (double)w[i]);
            double cb = lms_bf16_to_f32(s->wb[i]), gb = lms_bf16_to_f32(b[i]);
            ck_assert_msg(fabs(cb - gb) <= fabs(cb) * 0x1p-7,
                          "%s: bf16 copy [%lld]: %.9g vs the CPU's %.9g", what, (long long)i, gb,
                          cb);
        }
        free(b);
    }
    free(w);
    free(m);
    free(v);
}

static void aw_list(struct aw_set *sets, int n_sets, const float *decay, bool device,
                    struct lms_adamw *out)
{
    for (int k = 0; k < n_sets; k++) {
        struct aw_set *s = &sets[k];
        if (s->n == 0) {
            out[k] = (struct lms_adamw){NULL, NULL, NULL, NULL, 0, decay[k], NULL};
        } else if (device) {
            out[k] = (struct lms_adamw){s->bw.b.ptr, s->bg.b.ptr, s->bm.b.ptr, s->bv.b.ptr, s->n,
                                        decay[k], s->bf16 ? s->bb.b.ptr : NULL};
        } else {
            out[k] = (struct lms_adamw){s->w, s->g, s->m, s->v, s->n, decay[k], s->wb};
        }
    }
}

START_TEST(adamw_parity)
{
    struct lms_error err;
    /* five tensors (bf16 copies on the 2nd, 4th and 5th), one empty tensor in the list */
    enum { NS = 6 };
    static const int64_t ns[NS] = {1, 17, 0, 1000, 65537, 3};
    static const bool bf[NS] = {false, true, false, false, true, true};
    struct aw_set sets[NS];
    for (int k = 0; k < NS; k++)
        aw_make(&sets[k], ns[k], bf[k]);
    for (int pass = 0; pass < 2; pass++) {
        float decay[NS];
        for (int k = 0; k < NS; k++)
            decay[k] = (k + pass) % 2 ? 0.1f : 0.0f;
        for (int64_t step = 1 + pass * 3; step <= 3 + pass * 3; step++) {
            struct lms_adamw_hyper h = {1e-3f, 0.9f, 0.95f, 1e-8f, 0.8f, step};
            struct lms_adamw hl[NS], dl[NS];
            aw_list(sets, NS, decay, false, hl);
            aw_list(sets, NS, decay, true, dl);
            /* new gradients each step, the same on both */
            for (int k = 0; k < NS; k++)
                if (sets[k].n) {
                    for (int64_t i = 0; i < sets[k].n; i++)
                        sets[k].g[i] = frand() * 0.3f;
                    ck_assert(lms_buf_upload(gpu, sets[k].bg.b.ptr, sets[k].g,
                                             (size_t)sets[k].n * 4, &err) == LMS_OK);
                }
            ck_assert_int_eq(cpu->ops->adamw(cpu, hl, NS, &h, &err), LMS_OK);
            ck_assert_msg(gpu->ops->adamw(gpu, dl, NS, &h, &err) == LMS_OK, "%s", err.msg);
            /* the host list may go right away: the backend copied it */
            memset(dl, 0xee, sizeof dl);
        }
        for (int k = 0; k < NS; k++)
            aw_check(&sets[k], pass ? "adamw (second pass)" : "adamw");
    }
    for (int k = 0; k < NS; k++)
        aw_free(&sets[k]);

    /* a longer list than the first one (the descriptor buffers grow), two steps back to back
     * without a sync in between */
    enum { NL = 150 };
    struct aw_set *many = calloc(NL, sizeof *many);
    float *decay = malloc(NL * sizeof *decay);
    struct lms_adamw *hl = malloc(NL * sizeof *hl), *dl = malloc(NL * sizeof *dl);
    for (int k = 0; k < NL; k++) {
        aw_make(&many[k], 1 + (k * 37) % 3001, k % 3 == 0);
        decay[k] = k % 2 ? 0.1f : 0.0f;
    }
    for (int64_t step = 1; step <= 2; step++) {
        struct lms_adamw_hyper h = {2e-3f, 0.9f, 0.999f, 1e-8f, 1.0f, step};
        aw_list(many, NL, decay, false, hl);
        aw_list(many, NL, decay, true, dl);
        ck_assert_int_eq(cpu->ops->adamw(cpu, hl, NL, &h, &err), LMS_OK);
        ck_assert_msg(gpu->ops->adamw(gpu, dl, NL, &h, &err) == LMS_OK, "%s", err.msg);
        memset(dl, 0xee, NL * sizeof *dl);
    }
    for (int k = 0; k < NL; k++) {
        aw_check(&many[k], "adamw (150 tensors)");
        aw_free(&many[k]);
    }
    free(many);
    free(decay);
    free(hl);
    free(dl);
    struct lms_adamw_hyper h0 = {1, 0.9f, 0.9f, 0, 1, 0};
    ck_assert_int_eq(gpu->ops->adamw(gpu, NULL, 0, &h0, &err), LMS_EINVAL);
}
END_TEST

/* ---- deferred argument errors (not under compute-sanitizer's case) ---- */

START_TEST(deferred_errors)
{
    struct lms_error err;
    int64_t V = 11, H = 5, n = 9;
    int32_t ids[9] = {0, 3, 10, 2, 11, 1, -1, 4, 5};
    float *dout = rand_buf(n * H, 1.0f);
    struct dbuf bt, bd, bi;
    float *gt = dev_copy(&bt, NULL, (size_t)(V * H) * 4);
    float *gd = dev_copy(&bd, dout, (size_t)(n * H) * 4);
    int32_t *gi = dev_copy(&bi, ids, sizeof ids);
    ck_assert_int_eq(gpu->ops->embedding_backward(gpu, gt, gd, gi, n, V, H, &err), LMS_OK);
    ck_assert_int_eq(lms_backend_sync(gpu, &err), LMS_EINVAL);
    ck_assert_msg(strstr(err.msg, "token id 11 at position 4"), "%s", err.msg);
    ck_assert_int_eq(lms_backend_sync(gpu, &err), LMS_OK); /* reported once */
    dev_free(&bt);
    dev_free(&bd);
    dev_free(&bi);
    free(dout);

    int64_t R = 4, d = 8, npos = 6;
    int32_t pos[4] = {0, 5, 6, 1};
    float *x = rand_buf(R * d, 1.0f), *cs = rand_buf(npos * d / 2, 1.0f);
    struct dbuf bx, bp, bc;
    float *gx = dev_copy(&bx, x, (size_t)(R * d) * 4);
    int32_t *gp = dev_copy(&bp, pos, sizeof pos);
    float *gc = dev_copy(&bc, cs, (size_t)(npos * d / 2) * 4);
    ck_assert_int_eq(gpu->ops->rope_backward(gpu, gx, d, R, 1, d, gp, gc, gc, npos, &err),
                     LMS_OK);
    ck_assert_int_eq(lms_backend_sync(gpu, &err), LMS_EINVAL);
    ck_assert_msg(strstr(err.msg, "position 6"), "%s", err.msg);
    ck_assert_int_eq(gpu->ops->rope_backward(gpu, gx, d, R, 1, 7, gp, gc, gc, npos, &err),
                     LMS_EINVAL);
    ck_assert_int_eq(gpu->ops->hidden_loss(gpu, gx, NULL, gx, gx, d, R, d, 5, 1.0f, &err),
                     LMS_EINVAL);
    dev_free(&bx);
    dev_free(&bp);
    dev_free(&bc);
    free(x);
    free(cs);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("train_ops_parity");
    TCase *tc = tcase_create("cuda_vs_cpu");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, embedding_backward_parity);
    tcase_add_test(tc, rmsnorm_backward_parity);
    tcase_add_test(tc, rope_backward_parity);
    tcase_add_test(tc, swiglu_bias_backward_parity);
    tcase_add_test(tc, hidden_loss_parity);
    tcase_add_test(tc, sum_squares_scale_parity);
    tcase_add_test(tc, adamw_parity);
    suite_add_tcase(s, tc);
    TCase *te = tcase_create("cuda_errors");
    tcase_add_checked_fixture(te, setup, teardown);
    tcase_set_timeout(te, 120);
    tcase_add_test(te, deferred_errors);
    suite_add_tcase(s, te);
    return s;
}
