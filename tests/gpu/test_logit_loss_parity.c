/* CUDA logit_loss (fused KD + cross-entropy loss and gradient) against the CPU reference backend
 * on the same random inputs: every KD kind (forward KL, reverse KL, top-K forward KL), with and
 * without CE targets (some ignored), with and without the kd_valid mask (some rows off), without
 * a teacher, temperatures 1 and 2.5 (kd_mul T^2), gradient NULL / separate / in place over the
 * student, vocabularies 1, 7, 1000, 4099 and 151,936, 1 / 3 / 17 rows, row strides that take the
 * float4 path and ones that do not, top-K with K = 1, 5, 64 (K past the vocabulary included) and
 * teacher rows full of ties (values on a 0.5 grid, +0 and -0 among them) so that the tie rule
 * (lower index first) decides the set. Every CUDA output is poisoned with NaN first, so an
 * element the kernel did not write fails.
 *
 * Tolerances. The CPU sums in double with double exponentials; the kernel takes fp32
 * exponentials of double arguments and sums in double, so each probability carries about one
 * fp32 ulp (1.2e-7 relative) and the per-row log-sum-exps about as much absolute. The GPU's
 * KL comes from the online identity a/z - lse_t + lse_s (one cancellation between O(10) terms:
 * a few 1e-7 absolute before the kd_mul factor), the CPU's from per-element terms. Hence
 *   losses:    |got - want| <= 1e-5 |want| + 1e-6 (1 + kd_mul)
 *   gradients: |got - want| <= 1e-5 |want| + 1e-6 (1 + |kd_grad_scale kd_mul| / T + |ce_scale|)
 * (fp32 rounding of the outputs is 6e-8 relative; the floors cover KL = 0 exactly, e.g. K = 1).
 * Deferred errors (a target past the vocabulary) and argument errors are in tcase cuda_errors,
 * outside the tcase that compute-sanitizer runs. Needs a GPU: skipped (77) without one. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check_main.h"
#include "kernels/backend_impl.h"
#include "lms/train.h"

static struct lms_backend *cpu, *gpu;

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

/* ---- device mirrors ---- */

struct dbuf {
    struct lms_buf b;
    bool live;
};

/* Device copy of n bytes at host (NULL: poisoned with 0xff bytes, NaN as floats). */
static void *dev_copy(struct dbuf *d, const void *host, size_t n)
{
    struct lms_error err;
    ck_assert_msg(lms_buf_alloc(gpu, n ? n : 4, &d->b, &err) == LMS_OK, "%s", err.msg);
    d->live = true;
    void *tmp = NULL;
    if (!host) {
        tmp = malloc(n ? n : 4);
        memset(tmp, 0xff, n ? n : 4);
        host = tmp;
        n = n ? n : 4;
    }
    ck_assert_msg(lms_buf_upload(gpu, d->b.ptr, host, n, &err) == LMS_OK, "%s", err.msg);
    free(tmp);
    return d->b.ptr;
}

static float *dev_get(const void *dptr, size_t n_floats)
{
    struct lms_error err;
    float *h = malloc((n_floats ? n_floats : 1) * sizeof(float));
    ck_assert_msg(lms_buf_download(gpu, h, n_floats * 4, dptr, n_floats * 4, &err) == LMS_OK,
                  "%s", err.msg);
    return h;
}

static void dev_free(struct dbuf *d)
{
    if (d->live)
        lms_buf_free(gpu, &d->b);
    d->live = false;
}

static void check_vals(const char *what, const float *got, const float *want, int64_t n,
                       int64_t stride, int64_t cols, double rel, double abs_tol)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < cols; j++) {
            double g = got[i * stride + j], w = want[i * stride + j];
            double e = fabs(g - w);
            ck_assert_msg(e <= rel * fabs(w) + abs_tol,
                          "%s: row %lld col %lld: got %.9g want %.9g (|d| %.3g, tol %.3g)", what,
                          (long long)i, (long long)j, g, w, e, rel * fabs(w) + abs_tol);
        }
}

enum grad_mode { GRAD_NONE, GRAD_SEPARATE, GRAD_IN_PLACE };

struct lcase {
    int kind;        /* enum lms_kd_kind; -1: no teacher */
    int64_t rows, vocab, top_k;
    float temperature;
    bool ce, valid, ties, vec_ld, kd_loss_null;
    enum grad_mode grad;
};

static void run_case(const struct lcase *c)
{
    struct lms_error err;
    const int64_t R = c->rows, V = c->vocab;
    /* a multiple of 4 takes the float4 path; V + 1 (or + 2) an odd stride that cannot */
    int64_t ld = c->vec_ld ? (V + 4) / 4 * 4 : V + ((V + 1) % 4 == 0 ? 2 : 1);
    int64_t n = R * ld;
    float *s = malloc((size_t)n * 4), *t = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) {
        s[i] = 4.0f * frand();
        t[i] = 0.7f * s[i] + 2.5f * frand();
        if (c->ties)
            t[i] = roundf(t[i] * 2.0f) * 0.5f; /* a 0.5 grid: many equal values, +0 and -0 */
    }
    int32_t *tgt = malloc((size_t)R * 4);
    uint8_t *valid = malloc((size_t)R);
    for (int64_t r = 0; r < R; r++) {
        tgt[r] = r % 3 == 1 ? -1 : (int32_t)((r * 7919 + 13) % V);
        valid[r] = r % 4 != 2;
    }
    const bool teacher = c->kind >= 0;
    const float T = c->temperature, kd_mul = T != 1.0f ? T * T : 1.0f;
    struct lms_logit_loss ll = {
        .n_rows = R, .vocab = V, .ld = ld, .kd_kind = teacher ? c->kind : LMS_KD_FORWARD_KL,
        .top_k = c->top_k, .temperature = T, .kd_mul = kd_mul,
        .kd_grad_scale = 0.5f, .ce_grad_scale = 0.7f,
    };
    /* CPU reference: separate gradient buffer always (in place is the same arithmetic there) */
    float *kdl = malloc((size_t)R * 4), *cel = malloc((size_t)R * 4);
    float *gc = calloc((size_t)n, 4);
    struct lms_logit_loss lc = ll;
    lc.student = s;
    lc.teacher = teacher ? t : NULL;
    lc.target = c->ce ? tgt : NULL;
    lc.kd_valid = c->valid ? valid : NULL;
    lc.kd_loss = kdl;
    lc.ce_loss = cel;
    lc.grad = c->grad != GRAD_NONE ? gc : NULL;
    ck_assert_msg(cpu->ops->logit_loss(cpu, &lc, &err) == LMS_OK, "%s", err.msg);

    struct dbuf ds = {0}, dt = {0}, dtg = {0}, dv = {0}, dk = {0}, dc = {0}, dg = {0};
    struct lms_logit_loss lg = ll;
    lg.student = dev_copy(&ds, s, (size_t)n * 4);
    lg.teacher = teacher ? dev_copy(&dt, t, (size_t)n * 4) : NULL;
    lg.target = c->ce ? dev_copy(&dtg, tgt, (size_t)R * 4) : NULL;
    lg.kd_valid = c->valid ? dev_copy(&dv, valid, (size_t)R) : NULL;
    lg.kd_loss = c->kd_loss_null ? NULL : dev_copy(&dk, NULL, (size_t)R * 4);
    lg.ce_loss = dev_copy(&dc, NULL, (size_t)R * 4);
    if (c->grad == GRAD_SEPARATE)
        lg.grad = dev_copy(&dg, NULL, (size_t)n * 4);
    else if (c->grad == GRAD_IN_PLACE)
        lg.grad = (float *)lg.student;
    ck_assert_msg(gpu->ops->logit_loss(gpu, &lg, &err) == LMS_OK, "%s", err.msg);

    char what[160];
    snprintf(what, sizeof what,
             "kind %d R %lld V %lld ld %lld K %lld T %g ce %d valid %d ties %d grad %d", c->kind,
             (long long)R, (long long)V, (long long)ld, (long long)c->top_k, (double)T, c->ce,
             c->valid, c->ties, (int)c->grad);
    char msg[200];
    if (lg.kd_loss) {
        float *got = dev_get(lg.kd_loss, (size_t)R);
        snprintf(msg, sizeof msg, "%s: kd loss", what);
        check_vals(msg, got, kdl, R, 1, 1, 1e-5, 1e-6 * (1.0 + kd_mul));
        free(got);
    }
    float *got = dev_get(lg.ce_loss, (size_t)R);
    snprintf(msg, sizeof msg, "%s: ce loss", what);
    check_vals(msg, got, cel, R, 1, 1, 1e-5, 1e-6);
    free(got);
    if (lg.grad) {
        float *gg = dev_get(lg.grad, (size_t)n);
        snprintf(msg, sizeof msg, "%s: gradient", what);
        double abs_tol = 1e-6 * (1.0 + fabs(0.5 * kd_mul) / T + 0.7);
        check_vals(msg, gg, gc, R, ld, V, 1e-5, abs_tol);
        if (c->grad == GRAD_IN_PLACE) /* the padding between rows is untouched */
            for (int64_t r = 0; r < R; r++)
                for (int64_t j = V; j < ld && r * ld + j < n; j++)
                    ck_assert_msg(gg[r * ld + j] == s[r * ld + j], "%s: padding written", what);
        free(gg);
    }
    struct dbuf *all[] = {&ds, &dt, &dtg, &dv, &dk, &dc, &dg};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        dev_free(all[i]);
    free(s);
    free(t);
    free(tgt);
    free(valid);
    free(kdl);
    free(cel);
    free(gc);
}

/* Every kind x CE on/off x mask on/off x T 1 / 2.5 x gradient NULL / separate / in place, at
 * small and odd vocabularies; rows, K, ties and the stride kind vary with the case number. */
START_TEST(small_vocabularies)
{
    static const int64_t vocabs[] = {1, 7, 1000, 4099};
    static const int64_t rows[] = {1, 3, 17};
    static const int64_t ks[] = {1, 5, 64};
    static const float temps[] = {1.0f, 2.5f};
    int id = 0;
    for (int vi = 0; vi < 4; vi++)
        for (int kind = -1; kind <= LMS_KD_TOP_K; kind++)
            for (int ce = 0; ce < 2; ce++)
                for (int valid = 0; valid < 2; valid++)
                    for (int ti = 0; ti < 2; ti++)
                        for (int gm = 0; gm < 3; gm++, id++) {
                            if (kind < 0 && (valid || ti)) /* no teacher: mask and T unused */
                                continue;
                            struct lcase c = {
                                .kind = kind,
                                .rows = rows[id % 3],
                                .vocab = vocabs[vi],
                                .top_k = ks[(id / 3) % 3],
                                .temperature = temps[ti],
                                .ce = ce,
                                .valid = valid,
                                .ties = kind == LMS_KD_TOP_K && (id / 2) % 2 == 0,
                                .vec_ld = id % 2 == 0,
                                .kd_loss_null = id % 7 == 3,
                                .grad = (enum grad_mode)gm,
                            };
                            run_case(&c);
                        }
}
END_TEST

/* Qwen3's vocabulary, a few rows: the long-row loops, float4 and scalar strides. */
START_TEST(full_vocabulary)
{
    int id = 0;
    for (int kind = LMS_KD_FORWARD_KL; kind <= LMS_KD_TOP_K; kind++)
        for (int ti = 0; ti < 2; ti++, id++) {
            struct lcase c = {
                .kind = kind,
                .rows = 3,
                .vocab = 151936,
                .top_k = ti ? 64 : 5,
                .temperature = ti ? 2.5f : 1.0f,
                .ce = true,
                .valid = id % 2 == 1,
                .ties = kind == LMS_KD_TOP_K && ti == 1,
                .vec_ld = id % 2 == 0,
                .grad = ti ? GRAD_IN_PLACE : GRAD_SEPARATE,
            };
            run_case(&c);
        }
    struct lcase c = {.kind = LMS_KD_TOP_K, .rows = 2, .vocab = 151936, .top_k = 1024,
                      .temperature = 1.0f, .ce = true, .ties = true, .vec_ld = true,
                      .grad = GRAD_SEPARATE};
    run_case(&c);
}
END_TEST

/* A target past the vocabulary is reported at the next sync, as cross-entropy reports it; the
 * other rows are still computed. Bad arguments fail before launch. */
START_TEST(cuda_errors)
{
    struct lms_error err;
    const int64_t R = 3, V = 37;
    float s[3 * 37], t[3 * 37], kdl[3], cel[3];
    for (int i = 0; i < 3 * 37; i++) {
        s[i] = 3.0f * frand();
        t[i] = 3.0f * frand();
    }
    int32_t tgt[3] = {4, (int32_t)V, -1};
    struct dbuf ds = {0}, dt = {0}, dtg = {0}, dk = {0}, dc = {0};
    struct lms_logit_loss ll = {
        .n_rows = R, .vocab = V, .ld = V, .kd_kind = LMS_KD_FORWARD_KL, .temperature = 1.0f,
        .kd_mul = 1.0f, .kd_grad_scale = 1.0f, .ce_grad_scale = 1.0f,
    };
    ll.student = dev_copy(&ds, s, sizeof s);
    ll.teacher = dev_copy(&dt, t, sizeof t);
    ll.target = dev_copy(&dtg, tgt, sizeof tgt);
    ll.kd_loss = dev_copy(&dk, NULL, sizeof kdl);
    ll.ce_loss = dev_copy(&dc, NULL, sizeof cel);
    ck_assert_int_eq(gpu->ops->logit_loss(gpu, &ll, &err), LMS_OK);
    ck_assert_int_eq(lms_backend_sync(gpu, &err), LMS_EINVAL);
    ck_assert_msg(strstr(err.msg, "target 37 at row 1"), "%s", err.msg);
    float *ce = dev_get(ll.ce_loss, 3), *kd = dev_get(ll.kd_loss, 3);
    ck_assert(ce[1] == 0.0f && isfinite(ce[0]) && ce[0] > 0 && ce[2] == 0.0f);
    for (int r = 0; r < 3; r++)
        ck_assert(isfinite(kd[r]) && kd[r] > 0);
    free(ce);
    free(kd);
    /* the error words were reset: a clean call syncs fine */
    tgt[1] = 0;
    ck_assert(lms_buf_upload(gpu, (void *)ll.target, tgt, sizeof tgt, &err) == LMS_OK);
    ck_assert_int_eq(gpu->ops->logit_loss(gpu, &ll, &err), LMS_OK);
    ck_assert_int_eq(lms_backend_sync(gpu, &err), LMS_OK);
    /* argument errors, before launch */
    struct lms_logit_loss bad = ll;
    bad.kd_kind = LMS_KD_TOP_K;
    bad.top_k = 0;
    ck_assert_int_eq(gpu->ops->logit_loss(gpu, &bad, &err), LMS_EINVAL);
    ck_assert_msg(strstr(err.msg, "top-K"), "%s", err.msg);
    bad = ll;
    bad.ld = V - 1;
    ck_assert_int_eq(gpu->ops->logit_loss(gpu, &bad, &err), LMS_EINVAL);
    bad = ll;
    bad.vocab = 0;
    ck_assert_int_eq(gpu->ops->logit_loss(gpu, &bad, &err), LMS_EINVAL);
    dev_free(&ds);
    dev_free(&dt);
    dev_free(&dtg);
    dev_free(&dk);
    dev_free(&dc);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("logit_loss_parity");
    TCase *tc = tcase_create("cuda_vs_cpu");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, small_vocabularies);
    tcase_add_test(tc, full_vocabulary);
    suite_add_tcase(s, tc);
    TCase *te = tcase_create("cuda_errors");
    tcase_add_checked_fixture(te, setup, teardown);
    tcase_set_timeout(te, 120);
    tcase_add_test(te, cuda_errors);
    suite_add_tcase(s, te);
    return s;
}
