/* CPU typed ops (version 5 slots): matmul, RMSNorm, RoPE, SwiGLU and the residual add with
 * their activation operands stored in F32 or BF16. They are the reference a bf16-storage kernel
 * of another backend is checked against, so they are defined by construction: every 16-bit
 * operand is widened exactly to fp32, the fp32 op of this backend runs on the widened copy, and
 * each output element is rounded once to its storage dtype, to nearest even (lms_cast, as
 * common/dtype.c). A BF16 result is therefore RNE(fp32 op(widened inputs)), within 2^-8
 * relative of the fp32 result (bf16 keeps 8 significant bits). F32 operands go straight to the
 * fp32 op with no copy. The fp32 copies live in a scratch buffer of the context, grown on
 * demand (ops are called from one thread at a time). */
#include "kernels/cpu/cpu.h"
#include "lms/alloc.h"
#include "lms/dtype.h"

static bool storage_ok(enum lms_dtype t)
{
    return t == LMS_DTYPE_F32 || t == LMS_DTYPE_BF16;
}

static enum lms_status bad_dtype(struct lms_error *err, const char *who, const char *arg,
                                 enum lms_dtype t, const char *expected)
{
    const char *name = lms_dtype_name(t);
    return lms_error_set(err, LMS_EUNSUPPORTED, "cpu %s: %s dtype %s (expected %s)", who, arg,
                         name ? name : "unknown", expected);
}

static enum lms_status bad_storage(struct lms_error *err, const char *who, const char *arg,
                                   enum lms_dtype t)
{
    return bad_dtype(err, who, arg, t, "F32 or BF16");
}

/* n floats of the context's widening scratch, kept for the next call. */
static enum lms_status wide_scratch(struct lms_cpu_ctx *cx, int64_t n, float **out,
                                    const char *who, struct lms_error *err)
{
    if (n < 0 || (uint64_t)n > SIZE_MAX / sizeof(float))
        return lms_error_set(err, LMS_ENOMEM, "cpu %s: %lld fp32 scratch elements is too many",
                             who, (long long)n);
    if ((size_t)n > cx->wide_cap) {
        lms_free(cx->wide);
        cx->wide_cap = 0;
        cx->wide = lms_malloc((size_t)(n ? n : 1) * sizeof(float));
        if (!cx->wide)
            return lms_error_set(err, LMS_ENOMEM, "cpu %s: out of memory for %lld fp32 elements",
                                 who, (long long)n);
        cx->wide_cap = (size_t)n;
    }
    *out = cx->wide;
    return LMS_OK;
}

/* dst (rows, cols), row stride dst_ld, in fp32 = src (rows, cols) at src_ld in st. Exact. */
static void widen_rows(struct lms_cpu_ctx *cx, float *dst, int64_t dst_ld, const void *src,
                       enum lms_dtype st, int64_t src_ld, int64_t rows, int64_t cols)
{
    size_t es = lms_dtype_size(st);
#pragma omp parallel for num_threads(cx->n_threads) schedule(static) \
    if (rows * cols > LMS_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++)
        lms_cast(dst + r * dst_ld, LMS_DTYPE_F32, (const char *)src + (size_t)(r * src_ld) * es,
                 st, (size_t)cols);
}

/* dst (rows, cols) at dst_ld in dt = src (rows, cols) at src_ld, rounded to nearest even. */
static void narrow_rows(struct lms_cpu_ctx *cx, void *dst, enum lms_dtype dt, int64_t dst_ld,
                        const float *src, int64_t src_ld, int64_t rows, int64_t cols)
{
    size_t es = lms_dtype_size(dt);
#pragma omp parallel for num_threads(cx->n_threads) schedule(static) \
    if (rows * cols > LMS_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++)
        lms_cast((char *)dst + (size_t)(r * dst_ld) * es, dt, src + r * src_ld, LMS_DTYPE_F32,
                 (size_t)cols);
}

/* One GEMM operand of (rows, cols) per batch: the fp32 operand the fp32 matmul gets. An F32
 * operand is passed as it is; another is widened into dense rows at *wide (advanced past it). */
struct operand {
    const void *p;
    enum lms_dtype dt;
    int64_t ld, stride, rows, cols;
};

static const float *widen_operand(struct lms_cpu_ctx *cx, const struct operand *o, int64_t batch,
                                  float **wide, int64_t *ld, int64_t *stride)
{
    if (o->dt == LMS_DTYPE_F32) {
        *ld = o->ld;
        *stride = o->stride;
        return o->p;
    }
    float *w = *wide;
    *ld = o->cols > 0 ? o->cols : 1;
    *stride = o->rows * o->cols;
    size_t es = lms_dtype_size(o->dt);
    for (int64_t b = 0; b < batch; b++)
        widen_rows(cx, w + b * *stride, *ld, (const char *)o->p + (size_t)(b * o->stride) * es,
                   o->dt, o->ld, o->rows, o->cols);
    *wide += batch * *stride;
    return w;
}

static int64_t operand_floats(const struct operand *o, int64_t batch)
{
    return o->dt == LMS_DTYPE_F32 ? 0 : batch * o->rows * o->cols;
}

enum lms_status lms__cpu_matmul_typed(struct lms_backend *be, const struct lms_matmul_typed *mm,
                                      struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    if (!storage_ok(mm->a_dtype))
        return bad_storage(err, "matmul", "A", mm->a_dtype);
    if (!storage_ok(mm->b_dtype) && mm->b_dtype != LMS_DTYPE_F16)
        return bad_dtype(err, "matmul", "B", mm->b_dtype, "F32, BF16 or F16");
    if (!storage_ok(mm->c_dtype))
        return bad_storage(err, "matmul", "C", mm->c_dtype);
    if (mm->m < 0 || mm->n < 0 || mm->k < 0 || mm->batch < 1)
        return lms_error_set(err, LMS_EINVAL,
                             "cpu matmul: dimensions m=%lld n=%lld k=%lld batch=%lld out of range",
                             (long long)mm->m, (long long)mm->n, (long long)mm->k,
                             (long long)mm->batch);
    struct operand a = {mm->a, mm->a_dtype, mm->lda, mm->stride_a, mm->trans_a ? mm->k : mm->m,
                        mm->trans_a ? mm->m : mm->k};
    struct operand b = {mm->b, mm->b_dtype, mm->ldb, mm->stride_b, mm->trans_b ? mm->n : mm->k,
                        mm->trans_b ? mm->k : mm->n};
    struct operand c = {mm->c, mm->c_dtype, mm->ldc, mm->stride_c, mm->m, mm->n};
    float *wide = NULL;
    int64_t need = operand_floats(&a, mm->batch) + operand_floats(&b, mm->batch) +
                   operand_floats(&c, mm->batch);
    enum lms_status rc = need ? wide_scratch(cx, need, &wide, "matmul", err) : LMS_OK;
    if (rc)
        return rc;
    struct lms_matmul f = {.trans_a = mm->trans_a, .trans_b = mm->trans_b, .m = mm->m,
                           .n = mm->n, .k = mm->k, .b_dtype = LMS_DTYPE_F32, .batch = mm->batch,
                           .alpha = mm->alpha, .beta = mm->beta, .bias = mm->bias};
    f.a = widen_operand(cx, &a, mm->batch, &wide, &f.lda, &f.stride_a);
    f.b = widen_operand(cx, &b, mm->batch, &wide, &f.ldb, &f.stride_b);
    if (c.dt == LMS_DTYPE_F32) {
        f.c = mm->c;
        f.ldc = mm->ldc;
        f.stride_c = mm->stride_c;
        return lms__cpu_matmul(be, &f, err);
    }
    /* a 16-bit C is computed in dense fp32 rows; its old value is widened only when beta != 0
     * (beta = 0 promises that C is not read) */
    int64_t ld, stride;
    float *c32 = wide;
    if (mm->beta != 0)
        widen_operand(cx, &c, mm->batch, &wide, &ld, &stride);
    f.c = c32;
    f.ldc = c.cols > 0 ? c.cols : 1;
    f.stride_c = c.rows * c.cols;
    rc = lms__cpu_matmul(be, &f, err);
    if (rc)
        return rc;
    size_t es = lms_dtype_size(c.dt);
    for (int64_t bi = 0; bi < mm->batch; bi++)
        narrow_rows(cx, (char *)mm->c + (size_t)(bi * mm->stride_c) * es, c.dt, mm->ldc,
                    c32 + bi * f.stride_c, f.ldc, c.rows, c.cols);
    return LMS_OK;
}

enum lms_status lms__cpu_rmsnorm_typed(struct lms_backend *be, void *out, int64_t out_stride,
                                       const void *x, int64_t x_stride, enum lms_dtype act,
                                       const float *w, float *rstd, int64_t n_rows,
                                       int64_t n_heads, int64_t c, float eps,
                                       struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    if (!storage_ok(act))
        return bad_storage(err, "rmsnorm", "activation", act);
    if (act == LMS_DTYPE_F32)
        return lms__cpu_rmsnorm(be, out, out_stride, x, x_stride, w, rstd, n_rows, n_heads, c,
                                eps, err);
    int64_t width = n_heads * c;
    float *t = NULL;
    enum lms_status rc = wide_scratch(cx, n_rows * width, &t, "rmsnorm", err);
    if (rc)
        return rc;
    widen_rows(cx, t, width, x, act, x_stride, n_rows, width);
    rc = lms__cpu_rmsnorm(be, t, width, t, width, w, rstd, n_rows, n_heads, c, eps, err);
    if (rc)
        return rc;
    narrow_rows(cx, out, act, out_stride, t, width, n_rows, width);
    return LMS_OK;
}

enum lms_status lms__cpu_rope_typed(struct lms_backend *be, void *x, int64_t x_stride,
                                    enum lms_dtype act, int64_t n_rows, int64_t n_heads,
                                    int64_t head_dim, const int32_t *pos, const float *cos,
                                    const float *sin, int64_t n_pos, struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    if (!storage_ok(act))
        return bad_storage(err, "rope", "activation", act);
    if (act == LMS_DTYPE_F32)
        return lms__cpu_rope(be, x, x_stride, n_rows, n_heads, head_dim, pos, cos, sin, n_pos,
                             err);
    int64_t width = n_heads * head_dim;
    float *t = NULL;
    enum lms_status rc = wide_scratch(cx, n_rows * width, &t, "rope", err);
    if (rc)
        return rc;
    widen_rows(cx, t, width, x, act, x_stride, n_rows, width);
    /* argument errors (odd head dim, position outside the table) come before x is written */
    rc = lms__cpu_rope(be, t, width, n_rows, n_heads, head_dim, pos, cos, sin, n_pos, err);
    if (rc)
        return rc;
    narrow_rows(cx, x, act, x_stride, t, width, n_rows, width);
    return LMS_OK;
}

enum lms_status lms__cpu_swiglu_typed(struct lms_backend *be, void *out, int64_t out_stride,
                                      const void *gate, const void *up, int64_t in_stride,
                                      enum lms_dtype act, int64_t n_rows, int64_t f,
                                      struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    if (!storage_ok(act))
        return bad_storage(err, "swiglu", "activation", act);
    if (act == LMS_DTYPE_F32)
        return lms__cpu_swiglu(be, out, out_stride, gate, up, in_stride, n_rows, f, err);
    /* one block of rows [gate | up | out], each f wide */
    float *t = NULL;
    enum lms_status rc = wide_scratch(cx, n_rows * 3 * f, &t, "swiglu", err);
    if (rc)
        return rc;
    int64_t ld = 3 * f;
    widen_rows(cx, t, ld, gate, act, in_stride, n_rows, f);
    widen_rows(cx, t + f, ld, up, act, in_stride, n_rows, f);
    rc = lms__cpu_swiglu(be, t + 2 * f, ld, t, t + f, ld, n_rows, f, err);
    if (rc)
        return rc;
    narrow_rows(cx, out, act, out_stride, t + 2 * f, ld, n_rows, f);
    return LMS_OK;
}

/* Elements per chunk of the typed add: two fp32 copies on the stack. */
#define ADD_CHUNK 2048

enum lms_status lms__cpu_add_typed(struct lms_backend *be, void *y, enum lms_dtype y_dtype,
                                   const void *x, enum lms_dtype x_dtype, int64_t n,
                                   struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    if (!storage_ok(y_dtype))
        return bad_storage(err, "add", "y", y_dtype);
    if (!storage_ok(x_dtype))
        return bad_storage(err, "add", "x", x_dtype);
    if (y_dtype == LMS_DTYPE_F32 && x_dtype == LMS_DTYPE_F32)
        return lms__cpu_add(be, y, x, n, err);
    size_t ys = lms_dtype_size(y_dtype), xs = lms_dtype_size(x_dtype);
    int64_t n_chunks = (n + ADD_CHUNK - 1) / ADD_CHUNK;
#pragma omp parallel for num_threads(cx->n_threads) schedule(static) if (n > LMS_CPU_PAR_MIN)
    for (int64_t i = 0; i < n_chunks; i++) {
        float yw[ADD_CHUNK], xw[ADD_CHUNK];
        int64_t b = i * ADD_CHUNK, len = n - b < ADD_CHUNK ? n - b : ADD_CHUNK;
        char *yp = (char *)y + (size_t)b * ys;
        lms_cast(yw, LMS_DTYPE_F32, yp, y_dtype, (size_t)len);
        lms_cast(xw, LMS_DTYPE_F32, (const char *)x + (size_t)b * xs, x_dtype, (size_t)len);
        for (int64_t j = 0; j < len; j++) /* the fp32 op's one addition per element */
            yw[j] += xw[j];
        lms_cast(yp, y_dtype, yw, LMS_DTYPE_F32, (size_t)len);
    }
    return LMS_OK;
}
