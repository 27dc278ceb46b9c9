/* CPU matmul: row-major strided-batched SGEMM through OpenBLAS (cblas), bias added after.
 * Shapes as in struct lms_matmul (kernels/backend_impl.h). */
#include <cblas.h>
#include <limits.h>

#include "kernels/cpu/cpu.h"

static bool fits_int(int64_t v)
{
    return v >= 0 && v <= INT_MAX;
}

enum lms_status lms__cpu_matmul(struct lms_backend *be, const struct lms_matmul *mm,
                                struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    if (mm->b_dtype != LMS_DTYPE_F32)
        return lms_error_set(err, LMS_EUNSUPPORTED, "cpu matmul: B dtype %s (only F32)",
                             lms_dtype_name(mm->b_dtype));
    if (!fits_int(mm->m) || !fits_int(mm->n) || !fits_int(mm->k) || !fits_int(mm->lda) ||
        !fits_int(mm->ldb) || !fits_int(mm->ldc) || mm->batch < 1)
        return lms_error_set(err, LMS_EINVAL,
                             "cpu matmul: dimensions m=%lld n=%lld k=%lld batch=%lld out of range",
                             (long long)mm->m, (long long)mm->n, (long long)mm->k,
                             (long long)mm->batch);
    if (mm->m == 0 || mm->n == 0)
        return LMS_OK;
    const float *bmat = mm->b;
    for (int64_t b = 0; b < mm->batch; b++) {
        const float *a = mm->a + b * mm->stride_a;
        const float *bb = bmat + b * mm->stride_b;
        float *c = mm->c + b * mm->stride_c;
        cblas_sgemm(CblasRowMajor, mm->trans_a ? CblasTrans : CblasNoTrans,
                    mm->trans_b ? CblasTrans : CblasNoTrans, (int)mm->m, (int)mm->n, (int)mm->k,
                    mm->alpha, a, (int)mm->lda, bb, (int)mm->ldb, mm->beta, c, (int)mm->ldc);
        if (mm->bias) {
            const float *bias = mm->bias;
            int64_t m = mm->m, n = mm->n, ldc = mm->ldc;
#pragma omp parallel for num_threads(cx->n_threads) schedule(static) if (m * n > LMS_CPU_PAR_MIN)
            for (int64_t i = 0; i < m; i++) {
                float *row = c + i * ldc;
                for (int64_t j = 0; j < n; j++)
                    row[j] += bias[j];
            }
        }
    }
    return LMS_OK;
}
