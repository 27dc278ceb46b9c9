/* The activation dtype contract (kernels/contract.c) and the CPU typed ops with bf16 storage
 * (kernels/cpu/ops_typed.c), against the CPU's fp32 ops on the same inputs rounded to bf16.
 *
 * Tolerance. bf16 keeps 8 significant bits (7 stored, 1 implicit), so rounding a finite fp32
 * value v to nearest even changes it by at most half a unit in the 8th bit:
 *     |RNE_bf16(v) - v| <= 2^-8 |v|            (v a normal number; below 2^-126 the bound is
 *                                               the absolute 2^-134, half the subnormal step).
 * An op that stores bf16 rounds its fp32 result once, so each output is within 2^-8 relative of
 * the fp32 op on the same (bf16-rounded) inputs. The CPU reference is exactly that rounding of
 * its own fp32 op, which the elementwise ops check bit for bit; the matmul, whose fp32 result
 * may be summed in another order, gets the fp32 dot-product bound on top: k 2^-24 sum |a b|
 * (plus |beta c| and |bias| terms) for each of the two fp32 computations compared. Casts are
 * exact where they must be: bf16 -> fp32 -> bf16 is the identity on every pattern but NaN,
 * fp32 -> bf16 rounds to nearest with ties to even, keeps infinities and signed zeros, and
 * gives NaN for NaN. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check_main.h"
#include "kernels/backend_impl.h"
#include "lms/dtype.h"
#include "lms/engine.h"

#define BF16_REL 0x1p-8  /* RNE to 8 significant bits */
#define BF16_ABS 0x1p-134 /* half the bf16 subnormal step */
#define F32_EPS 0x1p-24  /* unit roundoff of fp32 */

#define CPU_FIXTURE_SEED 0x2545F4914F6CDD1Dull
#include "cpu_backend_fixture.h"

/* n random values (scale x [-1, 1)), rounded to bf16: *f gets them as fp32, *h as bf16. */
static void rand_bf16(int64_t n, float scale, float **f, uint16_t **h)
{
    *f = malloc((size_t)(n ? n : 1) * sizeof(float));
    *h = malloc((size_t)(n ? n : 1) * sizeof(uint16_t));
    for (int64_t i = 0; i < n; i++) {
        (*h)[i] = lms_f32_to_bf16(frand() * scale);
        (*f)[i] = lms_bf16_to_f32((*h)[i]);
    }
}

static float *rand_f32(int64_t n, float scale)
{
    float *p = malloc((size_t)(n ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        p[i] = frand() * scale;
    return p;
}

/* Round to nearest even by arithmetic, independent of common/dtype.c's bit trick: the two bf16
 * neighbours of v (its top 16 bits and the next pattern), whichever is nearer; on a tie the one
 * whose last bit is 0. Finite v whose rounding stays finite. */
static uint16_t rne_reference(float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
    double dlo = fabs((double)lms_bf16_to_f32(lo) - v);
    double dhi = (hi & 0x7F80) == 0x7F80 ? INFINITY : fabs((double)lms_bf16_to_f32(hi) - v);
    if (dlo < dhi)
        return lo;
    if (dhi < dlo)
        return hi;
    return (lo & 1) ? hi : lo;
}

/* bf16 got[i] against the fp32 op's want[i]: bit-identical to RNE(want) when exact, and
 * |got - want| <= 2^-8 |want| + 2^-134 + slack[i] (slack NULL: 0). */
static void check_bf16(const char *what, const uint16_t *got, int64_t got_ld, const float *want,
                       int64_t want_ld, int64_t rows, int64_t cols, const double *slack,
                       bool exact)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++) {
            uint16_t g = got[r * got_ld + j];
            float w = want[r * want_ld + j];
            double s = slack ? slack[r * cols + j] : 0;
            double e = fabs((double)lms_bf16_to_f32(g) - w);
            ck_assert_msg(e <= BF16_REL * fabs(w) + BF16_ABS + s,
                          "%s: (%lld, %lld): got %.9g want %.9g (error %g > bound %g)", what,
                          (long long)r, (long long)j, lms_bf16_to_f32(g), w, e,
                          BF16_REL * fabs(w) + BF16_ABS + s);
            if (exact)
                ck_assert_msg(g == lms_f32_to_bf16(w), "%s: (%lld, %lld): %04x is not RNE(%.9g)",
                              what, (long long)r, (long long)j, g, w);
        }
}

/* ---- the contract ---- */

/* The slot names of struct lms_backend_ops that take device operands (the table as written in
 * kernels/backend_impl.h): each must have a contract. */
static const char *const table_ops[] = {
    "matmul", "embedding", "rmsnorm", "rope", "attention", "swiglu", "add", "log_softmax",
    "cross_entropy", "cast", "abs_mean", "row_cosine", "embedding_backward", "rmsnorm_backward",
    "rope_backward", "attention_backward", "swiglu_backward", "bias_backward", "logit_loss",
    "hidden_loss", "sum_squares", "adamw", "scale", "matmul_typed", "rmsnorm_typed",
    "rope_typed", "swiglu_typed", "add_typed",
};

static enum lms_slot_class class_of(const char *op, const char *slot)
{
    const struct lms_op_contract *c = lms__op_contract(op);
    ck_assert_msg(c != NULL, "no contract for %s", op);
    for (int i = 0; i < c->n_slots; i++)
        if (!strcmp(c->slots[i].name, slot))
            return c->slots[i].cls;
    ck_abort_msg("%s has no slot %s", op, slot);
    return LMS_SLOT_CALL;
}

START_TEST(contract_covers_the_table)
{
    for (size_t i = 0; i < sizeof table_ops / sizeof table_ops[0]; i++)
        ck_assert_msg(lms__op_contract(table_ops[i]) != NULL, "no contract for %s", table_ops[i]);
    ck_assert_ptr_null(lms__op_contract("no_such_op"));
    ck_assert_ptr_eq(lms__op_contract("rmsnorm_typed"), lms__op_contract("rmsnorm"));
    size_t n;
    const struct lms_op_contract *all = lms__op_contracts(&n);
    for (size_t i = 0; i < n; i++) {
        ck_assert_msg(all[i].n_slots > 0 && all[i].n_slots <= LMS_OP_MAX_SLOTS, "%s", all[i].op);
        for (size_t j = 0; j < i; j++)
            ck_assert_msg(strcmp(all[i].op, all[j].op), "%s listed twice", all[i].op);
        for (int s = 0; s < all[i].n_slots; s++)
            ck_assert_ptr_nonnull(lms__slot_class_name(all[i].slots[s].cls));
    }
}
END_TEST

/* What must stay fp32 (statistics, softmax/log-sum-exp, logits, losses, master weights,
 * moments) and what is activation storage, as the contract promises. */
START_TEST(contract_classes)
{
    ck_assert_int_eq(class_of("rmsnorm", "x"), LMS_SLOT_ACT);
    ck_assert_int_eq(class_of("rmsnorm", "out"), LMS_SLOT_ACT);
    ck_assert_int_eq(class_of("rmsnorm", "rstd"), LMS_SLOT_F32);
    ck_assert_int_eq(class_of("rmsnorm", "w"), LMS_SLOT_F32);
    ck_assert_int_eq(class_of("rope", "x"), LMS_SLOT_ACT);
    ck_assert_int_eq(class_of("rope", "cos"), LMS_SLOT_F32);
    ck_assert_int_eq(class_of("swiglu", "gate"), LMS_SLOT_ACT);
    ck_assert_int_eq(class_of("add", "y"), LMS_SLOT_ACT);
    ck_assert_int_eq(class_of("attention", "q"), LMS_SLOT_ACT);
    ck_assert_int_eq(class_of("attention", "lse"), LMS_SLOT_F32);
    ck_assert_int_eq(class_of("attention_backward", "lse"), LMS_SLOT_F32);
    ck_assert_int_eq(class_of("embedding", "table"), LMS_SLOT_WEIGHT);
    ck_assert_int_eq(class_of("embedding", "ids"), LMS_SLOT_I32);
    ck_assert_int_eq(class_of("log_softmax", "x"), LMS_SLOT_F32);
    ck_assert_int_eq(class_of("cross_entropy", "logits"), LMS_SLOT_F32);
    ck_assert_int_eq(class_of("cross_entropy", "loss"), LMS_SLOT_F32);
    const char *ll[] = {"student", "teacher", "kd_loss", "ce_loss", "grad"};
    for (size_t i = 0; i < 5; i++)
        ck_assert_int_eq(class_of("logit_loss", ll[i]), LMS_SLOT_F32);
    ck_assert_int_eq(class_of("hidden_loss", "loss"), LMS_SLOT_F32);
    const char *aw[] = {"w", "g", "m", "v"};
    for (size_t i = 0; i < 4; i++)
        ck_assert_int_eq(class_of("adamw", aw[i]), LMS_SLOT_F32);
    ck_assert_int_eq(class_of("adamw", "w_bf16"), LMS_SLOT_BF16);
    ck_assert_int_eq(class_of("rmsnorm_backward", "dw"), LMS_SLOT_F32);
    ck_assert_int_eq(class_of("rmsnorm_backward", "dx"), LMS_SLOT_ACT);
    ck_assert_int_eq(class_of("matmul", "a"), LMS_SLOT_CALL);
    ck_assert_int_eq(class_of("matmul", "bias"), LMS_SLOT_F32);
}
END_TEST

/* Every backend stores fp32 activations today; the CPU upcasts weights too. */
START_TEST(cpu_resolves_fp32)
{
    ck_assert_int_eq(lms_backend_activation_dtype(be), LMS_DTYPE_F32);
    ck_assert_int_eq(lms__slot_dtype(be, LMS_SLOT_ACT, LMS_DTYPE_BF16), LMS_DTYPE_F32);
    ck_assert_int_eq(lms__slot_dtype(be, LMS_SLOT_WEIGHT, LMS_DTYPE_BF16), LMS_DTYPE_F32);
    ck_assert_int_eq(lms__slot_dtype(be, LMS_SLOT_F32, LMS_DTYPE_BF16), LMS_DTYPE_F32);
    ck_assert_int_eq(lms__slot_dtype(be, LMS_SLOT_BF16, LMS_DTYPE_F32), LMS_DTYPE_BF16);
    ck_assert_int_eq(lms__slot_dtype(be, LMS_SLOT_I32, LMS_DTYPE_F32), LMS_DTYPE_I32);
    ck_assert_int_eq(lms__slot_dtype(be, LMS_SLOT_CALL, LMS_DTYPE_F32), LMS_DTYPE_COUNT);
}
END_TEST

static enum lms_dtype bf16_activations(const struct lms_backend *b)
{
    return LMS_DTYPE_BF16;
}

static enum lms_dtype keep_ckpt(const struct lms_backend *b, enum lms_dtype ckpt)
{
    return ckpt;
}

/* A table that declares bf16 activations gets ACT = BF16 and its fp32 slots stay F32; a table
 * built before version 5 (or leaving the slot NULL) reports F32. */
START_TEST(activation_dtype_is_the_backends)
{
    struct lms_backend_ops ops = {.version = LMS_BACKEND_OPS_VERSION, .kind = "test",
                                  .weight_dtype = keep_ckpt, .activation_dtype = bf16_activations};
    struct lms_backend fake = {.ops = &ops};
    ck_assert_int_eq(lms_backend_activation_dtype(&fake), LMS_DTYPE_BF16);
    ck_assert_int_eq(lms__slot_dtype(&fake, class_of("rmsnorm", "x"), LMS_DTYPE_F16),
                     LMS_DTYPE_BF16);
    ck_assert_int_eq(lms__slot_dtype(&fake, class_of("rmsnorm", "rstd"), LMS_DTYPE_F16),
                     LMS_DTYPE_F32);
    ck_assert_int_eq(lms__slot_dtype(&fake, class_of("embedding", "table"), LMS_DTYPE_F16),
                     LMS_DTYPE_F16);
    ops.version = 4;
    ck_assert_int_eq(lms_backend_activation_dtype(&fake), LMS_DTYPE_F32);
    ops.version = LMS_BACKEND_OPS_VERSION;
    ops.activation_dtype = NULL;
    ck_assert_int_eq(lms_backend_activation_dtype(&fake), LMS_DTYPE_F32);
}
END_TEST

/* ---- casts of a buffer (the cast slot) ---- */

static void cast(void *dst, enum lms_dtype dt, const void *src, enum lms_dtype st, int64_t n)
{
    struct lms_error err;
    ck_assert_msg(be->ops->cast(be, dst, dt, src, st, n, &err) == LMS_OK, "%s", err.msg);
}

START_TEST(cast_round_trip_exhaustive)
{
    uint16_t *h = malloc(65536 * sizeof *h), *back = malloc(65536 * sizeof *back);
    float *f = malloc(65536 * sizeof *f);
    for (uint32_t i = 0; i < 65536; i++)
        h[i] = (uint16_t)i;
    cast(f, LMS_DTYPE_F32, h, LMS_DTYPE_BF16, 65536);
    cast(back, LMS_DTYPE_BF16, f, LMS_DTYPE_F32, 65536);
    for (uint32_t i = 0; i < 65536; i++) {
        uint32_t u;
        memcpy(&u, &f[i], 4);
        ck_assert_msg(u == i << 16, "bf16 %04x widened to %08x", i, u); /* exact widening */
        bool nan = (i & 0x7F80) == 0x7F80 && (i & 0x7F);
        if (nan)
            ck_assert_msg(isnan(lms_bf16_to_f32(back[i])), "NaN %04x came back as %04x", i,
                          back[i]);
        else
            ck_assert_msg(back[i] == i, "%04x came back as %04x", i, back[i]);
    }
    free(h);
    free(back);
    free(f);
}
END_TEST

START_TEST(cast_rounds_to_nearest_even)
{
    /* ties: 1 + 2^-8 is halfway between 1 (even) and 1 + 2^-7 (odd); 1 + 3 2^-8 halfway
     * between 1 + 2^-7 (odd) and 1 + 2^-6 (even) */
    float in[] = {1.0f + 0x1p-8f,  1.0f + 3 * 0x1p-8f, -(1.0f + 0x1p-8f), 1.0f + 0x1p-8f + 0x1p-23f,
                  INFINITY,        -INFINITY,          0.0f,              -0.0f,
                  NAN,             -NAN,               FLT_MAX,           0x1p-140f,
                  0x1.01p-133f,    65535.0f,           0x1.FEp127f};
    uint16_t want[] = {0x3F80, 0x3F82, 0xBF80, 0x3F81, 0x7F80, 0xFF80, 0x0000, 0x8000,
                       0,      0,      0x7F80, 0x0000, 0x0001, 0x4780, 0x7F7F};
    size_t n = sizeof in / sizeof in[0];
    uint16_t got[sizeof in / sizeof in[0]];
    cast(got, LMS_DTYPE_BF16, in, LMS_DTYPE_F32, (int64_t)n);
    for (size_t i = 0; i < n; i++) {
        if (isnan(in[i]))
            ck_assert_msg(isnan(lms_bf16_to_f32(got[i])), "NaN %zu became %04x", i, got[i]);
        else
            ck_assert_msg(got[i] == want[i], "%zu: %a became %04x, want %04x", i, in[i], got[i],
                          want[i]);
    }
    /* random finite values, against the arithmetic reference */
    enum { N = 200000 };
    float *f = malloc(N * sizeof *f);
    uint16_t *h = malloc(N * sizeof *h);
    for (int i = 0; i < N; i++) {
        uint32_t u = (uint32_t)(rng_state >> 17);
        frand();
        if (((u >> 23) & 0xFF) >= 254) /* keep the value and its rounding finite */
            u &= ~(1u << 30);
        memcpy(&f[i], &u, 4);
    }
    cast(h, LMS_DTYPE_BF16, f, LMS_DTYPE_F32, N);
    for (int i = 0; i < N; i++)
        ck_assert_msg(h[i] == rne_reference(f[i]), "%a became %04x, want %04x", f[i], h[i],
                      rne_reference(f[i]));
    free(f);
    free(h);
}
END_TEST

/* ---- typed ops against the fp32 ops ---- */

struct mm_case {
    bool ta, tb;
    int64_t m, n, k, batch, pad;
    float alpha, beta;
    bool bias;
    enum lms_dtype b_dtype, c_dtype;
};

static void run_matmul_case(const struct mm_case *t)
{
    struct lms_error err;
    int64_t ar = t->ta ? t->k : t->m, ac = t->ta ? t->m : t->k;
    int64_t br = t->tb ? t->n : t->k, bc = t->tb ? t->k : t->n;
    int64_t lda = ac + t->pad, ldb = bc + t->pad, ldc = t->n + t->pad;
    int64_t sa = ar * lda + 3, sb = br * ldb + 5, sc = t->m * ldc + 7;
    int64_t na = sa * t->batch, nb = sb * t->batch, nc = sc * t->batch;
    float *af, *bf, *cf;
    uint16_t *ah, *bh, *ch;
    rand_bf16(na, 1.0f, &af, &ah);
    rand_bf16(nb, 0.5f, &bf, &bh);
    rand_bf16(nc, 2.0f, &cf, &ch);
    float *bias = t->bias ? rand_f32(t->n, 0.3f) : NULL;
    /* the fp32 op on the bf16-rounded operands */
    float *want = malloc((size_t)nc * sizeof *want);
    memcpy(want, cf, (size_t)nc * sizeof *want);
    struct lms_matmul f = {t->ta, t->tb, t->m, t->n, t->k, af, lda, sa, bf, LMS_DTYPE_F32,
                           ldb, sb, want, ldc, sc, t->batch, t->alpha, t->beta, bias};
    ck_assert_msg(be->ops->matmul(be, &f, &err) == LMS_OK, "%s", err.msg);
    /* the typed op: A in bf16, B and C as the case says */
    void *c_store = t->c_dtype == LMS_DTYPE_BF16 ? (void *)ch : (void *)cf;
    uint16_t *c_before = malloc((size_t)nc * sizeof *c_before);
    memcpy(c_before, ch, (size_t)nc * sizeof *c_before);
    float *cf_before = malloc((size_t)nc * sizeof *cf_before);
    memcpy(cf_before, cf, (size_t)nc * sizeof *cf_before);
    struct lms_matmul_typed mt = {
        .trans_a = t->ta, .trans_b = t->tb, .m = t->m, .n = t->n, .k = t->k, .a = ah,
        .a_dtype = LMS_DTYPE_BF16, .lda = lda, .stride_a = sa,
        .b = t->b_dtype == LMS_DTYPE_BF16 ? (const void *)bh : (const void *)bf,
        .b_dtype = t->b_dtype, .ldb = ldb, .stride_b = sb, .c = c_store, .c_dtype = t->c_dtype,
        .ldc = ldc, .stride_c = sc, .batch = t->batch, .alpha = t->alpha, .beta = t->beta,
        .bias = bias};
    ck_assert_msg(be->ops->matmul_typed(be, &mt, &err) == LMS_OK, "%s", err.msg);
    /* fp32 slack: both sides within k 2^-24 of the exact sum of their terms' magnitudes */
    double *slack = malloc((size_t)(t->m * t->n) * sizeof *slack);
    for (int64_t b = 0; b < t->batch; b++) {
        for (int64_t i = 0; i < t->m; i++)
            for (int64_t j = 0; j < t->n; j++) {
                double mag = 0;
                for (int64_t p = 0; p < t->k; p++) {
                    double x = af[b * sa + (t->ta ? p * lda + i : i * lda + p)];
                    double y = bf[b * sb + (t->tb ? j * ldb + p : p * ldb + j)];
                    mag += fabs(x * y);
                }
                mag = fabs(t->alpha) * mag + fabs(t->beta * cf_before[b * sc + i * ldc + j]) +
                      (bias ? fabs(bias[j]) : 0);
                slack[i * t->n + j] = 2 * (double)(t->k + 2) * F32_EPS * mag;
            }
        const float *w = want + b * sc;
        if (t->c_dtype == LMS_DTYPE_BF16) {
            check_bf16("matmul", ch + b * sc, ldc, w, ldc, t->m, t->n, slack, false);
        } else { /* F32 C: no rounding to bf16 at all, only the fp32 slack */
            for (int64_t i = 0; i < t->m; i++)
                for (int64_t j = 0; j < t->n; j++)
                    ck_assert_msg(fabs((double)cf[b * sc + i * ldc + j] - w[i * ldc + j]) <=
                                      slack[i * t->n + j],
                                  "matmul f32 C (%lld, %lld)", (long long)i, (long long)j);
        }
    }
    /* nothing outside the (m, n) blocks of C was written */
    for (int64_t b = 0; b < t->batch; b++)
        for (int64_t e = 0; e < sc; e++) {
            int64_t i = e / ldc, j = e % ldc;
            if (i < t->m && j < t->n)
                continue;
            if (t->c_dtype == LMS_DTYPE_BF16)
                ck_assert_msg(ch[b * sc + e] == c_before[b * sc + e], "gap %lld written",
                              (long long)e);
            else
                ck_assert(memcmp(&cf[b * sc + e], &cf_before[b * sc + e], 4) == 0);
        }
    free(af), free(bf), free(cf), free(ah), free(bh), free(ch), free(bias), free(want);
    free(c_before), free(cf_before), free(slack);
}

START_TEST(matmul_bf16)
{
    const enum lms_dtype B = LMS_DTYPE_BF16, F = LMS_DTYPE_F32;
    const struct mm_case cases[] = {
        /* the forward's y = x W^T with a bias, bf16 activations and bf16 weights */
        {false, true, 37, 29, 64, 1, 0, 1.0f, 0.0f, true, B, B},
        {false, true, 5, 300, 257, 1, 3, 1.0f, 0.0f, false, F, B},
        /* accumulate into bf16 C (beta 1), batched, every transpose */
        {false, false, 17, 13, 19, 3, 2, 1.0f, 1.0f, false, B, B},
        {true, false, 17, 13, 19, 2, 1, 0.5f, 1.0f, true, B, B},
        {true, true, 9, 33, 40, 2, 0, 1.0f, 0.5f, false, F, B},
        /* the weight gradient dW = dY^T X: two bf16 activations into an fp32 C */
        {true, false, 24, 31, 50, 1, 1, 1.0f, 1.0f, false, B, F},
        /* the LM head: bf16 activations, fp32 logits */
        {false, true, 7, 500, 48, 1, 0, 1.0f, 0.0f, false, B, F},
        {false, true, 1, 1, 1, 1, 0, 1.0f, 0.0f, false, B, B},
        /* large enough that the fp32 matmul splits it over threads */
        {false, true, 96, 160, 128, 1, 0, 1.0f, 0.0f, true, B, B},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_matmul_case(&cases[i]);
}
END_TEST

START_TEST(matmul_typed_errors)
{
    struct lms_error err;
    float a = 1, b = 1, c = 0;
    struct lms_matmul_typed mt = {.m = 1, .n = 1, .k = 1, .a = &a, .a_dtype = LMS_DTYPE_F16,
                                  .lda = 1, .b = &b, .b_dtype = LMS_DTYPE_F32, .ldb = 1, .c = &c,
                                  .c_dtype = LMS_DTYPE_F32, .ldc = 1, .batch = 1, .alpha = 1};
    ck_assert_int_eq(be->ops->matmul_typed(be, &mt, &err), LMS_EUNSUPPORTED);
    ck_assert_msg(strstr(err.msg, "F16"), "%s", err.msg);
    mt.a_dtype = LMS_DTYPE_F32;
    mt.c_dtype = LMS_DTYPE_I32;
    ck_assert_int_eq(be->ops->matmul_typed(be, &mt, &err), LMS_EUNSUPPORTED);
    /* all F32: the fp32 op itself */
    mt.c_dtype = LMS_DTYPE_F32;
    a = 3, b = 5;
    ck_assert_int_eq(be->ops->matmul_typed(be, &mt, &err), LMS_OK);
    ck_assert(c == 15.0f);
    /* B may be a 16-bit weight dtype, F16 included; not an integer type */
    uint16_t b16 = 0x3E00; /* 1.5 in f16 */
    mt.b = &b16;
    mt.b_dtype = LMS_DTYPE_F16;
    ck_assert_int_eq(be->ops->matmul_typed(be, &mt, &err), LMS_OK);
    ck_assert(c == 4.5f);
    mt.b_dtype = LMS_DTYPE_I16;
    ck_assert_int_eq(be->ops->matmul_typed(be, &mt, &err), LMS_EUNSUPPORTED);
    ck_assert_msg(strstr(err.msg, "I16") && strstr(err.msg, "F16"), "%s", err.msg);
}
END_TEST

START_TEST(rmsnorm_bf16)
{
    struct lms_error err;
    const int64_t shapes[][3] = {{1, 1, 1}, {7, 1, 96}, {5, 4, 33}, {33, 2, 128}};
    for (size_t s = 0; s < 4; s++) {
        int64_t rows = shapes[s][0], heads = shapes[s][1], c = shapes[s][2];
        int64_t width = heads * c, ld = width + 5;
        float *xf, *w = rand_f32(c, 1.5f);
        uint16_t *xh;
        rand_bf16(rows * ld, 3.0f, &xf, &xh);
        float *want = malloc((size_t)(rows * ld) * sizeof *want);
        float *rstd_want = malloc((size_t)(rows * heads) * sizeof(float));
        float *rstd = malloc((size_t)(rows * heads) * sizeof(float));
        ck_assert_int_eq(be->ops->rmsnorm(be, want, ld, xf, ld, w, rstd_want, rows, heads, c,
                                          1e-5f, &err), LMS_OK);
        /* out of place into a strided buffer whose gaps must survive, then in place */
        uint16_t *out = malloc((size_t)(rows * ld) * sizeof *out);
        for (int64_t i = 0; i < rows * ld; i++)
            out[i] = 0xABCD;
        ck_assert_int_eq(be->ops->rmsnorm_typed(be, out, ld, xh, ld, LMS_DTYPE_BF16, w, rstd,
                                                rows, heads, c, 1e-5f, &err), LMS_OK);
        check_bf16("rmsnorm", out, ld, want, ld, rows, width, NULL, true);
        ck_assert_mem_eq(rstd, rstd_want, (size_t)(rows * heads) * sizeof(float));
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = width; j < ld; j++)
                ck_assert_uint_eq(out[r * ld + j], 0xABCD);
        ck_assert_int_eq(be->ops->rmsnorm_typed(be, xh, ld, xh, ld, LMS_DTYPE_BF16, w, NULL,
                                                rows, heads, c, 1e-5f, &err), LMS_OK);
        check_bf16("rmsnorm in place", xh, ld, want, ld, rows, width, NULL, true);
        free(xf), free(xh), free(w), free(want), free(rstd_want), free(rstd), free(out);
    }
}
END_TEST

/* A RoPE table as the engine builds it (positions 0..n_pos-1). */
static void rope_table(int64_t n_pos, int64_t d, float **cs, float **sn)
{
    int64_t half = d / 2;
    *cs = malloc((size_t)(n_pos * half) * sizeof(float));
    *sn = malloc((size_t)(n_pos * half) * sizeof(float));
    for (int64_t p = 0; p < n_pos; p++)
        for (int64_t i = 0; i < half; i++) {
            double ang = p * pow(10000.0, -2.0 * (double)i / (double)d);
            (*cs)[p * half + i] = (float)cos(ang);
            (*sn)[p * half + i] = (float)sin(ang);
        }
}

START_TEST(rope_bf16)
{
    struct lms_error err;
    const int64_t rows = 19, heads = 3, d = 64, n_pos = 40, ld = heads * d + 8;
    float *cs, *sn;
    rope_table(n_pos, d, &cs, &sn);
    int32_t pos[19];
    for (int64_t r = 0; r < rows; r++)
        pos[r] = (int32_t)((r * 7) % n_pos);
    float *xf;
    uint16_t *xh;
    rand_bf16(rows * ld, 4.0f, &xf, &xh);
    uint16_t *before = malloc((size_t)(rows * ld) * sizeof *before);
    memcpy(before, xh, (size_t)(rows * ld) * sizeof *before);
    ck_assert_int_eq(be->ops->rope(be, xf, ld, rows, heads, d, pos, cs, sn, n_pos, &err), LMS_OK);
    ck_assert_int_eq(be->ops->rope_typed(be, xh, ld, LMS_DTYPE_BF16, rows, heads, d, pos, cs, sn,
                                         n_pos, &err), LMS_OK);
    check_bf16("rope", xh, ld, xf, ld, rows, heads * d, NULL, true);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = heads * d; j < ld; j++)
            ck_assert_uint_eq(xh[r * ld + j], before[r * ld + j]);
    /* a position outside the table: an error, and x left as it was */
    memcpy(xh, before, (size_t)(rows * ld) * sizeof *before);
    pos[rows - 1] = (int32_t)n_pos;
    ck_assert_int_eq(be->ops->rope_typed(be, xh, ld, LMS_DTYPE_BF16, rows, heads, d, pos, cs, sn,
                                         n_pos, &err), LMS_EINVAL);
    ck_assert_mem_eq(xh, before, (size_t)(rows * ld) * sizeof *before);
    ck_assert_int_eq(be->ops->rope_typed(be, xh, ld, LMS_DTYPE_F16, rows, heads, d, pos, cs, sn,
                                         n_pos, &err), LMS_EUNSUPPORTED);
    free(cs), free(sn), free(xf), free(xh), free(before);
}
END_TEST

START_TEST(swiglu_bf16)
{
    struct lms_error err;
    /* the fused gate|up layout: gate at column 0, up at column f, rows 2f apart */
    const int64_t rows = 23, f = 45, in_ld = 2 * f, out_ld = f + 3;
    float *gu_f;
    uint16_t *gu_h;
    rand_bf16(rows * in_ld, 6.0f, &gu_f, &gu_h);
    float *want = malloc((size_t)(rows * out_ld) * sizeof *want);
    uint16_t *out = malloc((size_t)(rows * out_ld) * sizeof *out);
    ck_assert_int_eq(be->ops->swiglu(be, want, out_ld, gu_f, gu_f + f, in_ld, rows, f, &err),
                     LMS_OK);
    ck_assert_int_eq(be->ops->swiglu_typed(be, out, out_ld, gu_h, gu_h + f, in_ld,
                                           LMS_DTYPE_BF16, rows, f, &err), LMS_OK);
    check_bf16("swiglu", out, out_ld, want, out_ld, rows, f, NULL, true);
    free(gu_f), free(gu_h), free(want), free(out);
}
END_TEST

START_TEST(add_bf16)
{
    struct lms_error err;
    /* more than the parallel threshold and not a multiple of a chunk */
    const int64_t n = 40000 + 37;
    float *yf, *xf;
    uint16_t *yh, *xh;
    rand_bf16(n, 8.0f, &yf, &yh);
    rand_bf16(n, 1.0f, &xf, &xh);
    float *want = malloc((size_t)n * sizeof *want);
    memcpy(want, yf, (size_t)n * sizeof *want);
    ck_assert_int_eq(be->ops->add(be, want, xf, n, &err), LMS_OK);
    /* bf16 += bf16 */
    uint16_t *y = malloc((size_t)n * sizeof *y);
    memcpy(y, yh, (size_t)n * sizeof *y);
    ck_assert_int_eq(be->ops->add_typed(be, y, LMS_DTYPE_BF16, xh, LMS_DTYPE_BF16, n, &err),
                     LMS_OK);
    check_bf16("add bf16+bf16", y, n, want, n, 1, n, NULL, true);
    /* bf16 += f32 */
    memcpy(y, yh, (size_t)n * sizeof *y);
    ck_assert_int_eq(be->ops->add_typed(be, y, LMS_DTYPE_BF16, xf, LMS_DTYPE_F32, n, &err),
                     LMS_OK);
    check_bf16("add bf16+f32", y, n, want, n, 1, n, NULL, true);
    /* an fp32 residual stream takes a bf16 branch output exactly: no rounding at all */
    float *y32 = malloc((size_t)n * sizeof *y32);
    memcpy(y32, yf, (size_t)n * sizeof *y32);
    ck_assert_int_eq(be->ops->add_typed(be, y32, LMS_DTYPE_F32, xh, LMS_DTYPE_BF16, n, &err),
                     LMS_OK);
    ck_assert_mem_eq(y32, want, (size_t)n * sizeof *y32);
    ck_assert_int_eq(be->ops->add_typed(be, y32, LMS_DTYPE_F16, xh, LMS_DTYPE_BF16, n, &err),
                     LMS_EUNSUPPORTED);
    free(yf), free(xf), free(yh), free(xh), free(want), free(y), free(y32);
}
END_TEST

/* Non-finite values pass through the typed ops as through the fp32 ones: an infinite input
 * gives the fp32 op's infinity or NaN, rounded (Inf stays Inf, NaN stays NaN). */
START_TEST(specials_pass_through)
{
    struct lms_error err;
    uint16_t y[4] = {0x7F80 /* +inf */, 0x3F80 /* 1 */, 0x7FC0 /* NaN */, 0x7F7F /* max */};
    uint16_t x[4] = {0x3F80, 0xFF80 /* -inf */, 0x3F80, 0x7F7F};
    ck_assert_int_eq(be->ops->add_typed(be, y, LMS_DTYPE_BF16, x, LMS_DTYPE_BF16, 4, &err),
                     LMS_OK);
    ck_assert_uint_eq(y[0], 0x7F80);
    ck_assert_uint_eq(y[1], 0xFF80);
    ck_assert(isnan(lms_bf16_to_f32(y[2])));
    ck_assert_uint_eq(y[3], 0x7F80); /* max + max overflows to inf, as RNE of the fp32 sum */
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("bf16_storage");
    TCase *tc = tcase_create("contract");
    tcase_add_test(tc, contract_covers_the_table);
    tcase_add_test(tc, contract_classes);
    tcase_add_test(tc, activation_dtype_is_the_backends);
    suite_add_tcase(s, tc);
    tc = tcase_create("ops");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, cpu_resolves_fp32);
    tcase_add_test(tc, cast_round_trip_exhaustive);
    tcase_add_test(tc, cast_rounds_to_nearest_even);
    tcase_add_test(tc, matmul_bf16);
    tcase_add_test(tc, matmul_typed_errors);
    tcase_add_test(tc, rmsnorm_bf16);
    tcase_add_test(tc, rope_bf16);
    tcase_add_test(tc, swiglu_bf16);
    tcase_add_test(tc, add_bf16);
    tcase_add_test(tc, specials_pass_through);
    suite_add_tcase(s, tc);
    return s;
}
