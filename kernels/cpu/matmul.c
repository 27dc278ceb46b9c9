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
    int nt = cx->n_threads;
    /* Split C into nt panels of rows (or of columns when there are few rows); each thread runs
     * a single-threaded OpenBLAS GEMM on its panel, so only one thread pool (OpenMP) exists. */
    int64_t flops = mm->m * mm->n * mm->k;
    bool by_rows = mm->m >= 16 * (int64_t)nt;
    int64_t extent = by_rows ? mm->m : mm->n;
    int64_t align = by_rows ? 4 : 16;
    int n_parts = flops < (1 << 18) ? 1 : nt;
    for (int64_t b = 0; b < mm->batch; b++) {
        const float *a = mm->a + b * mm->stride_a;
        const float *bb = bmat + b * mm->stride_b;
        float *c = mm->c + b * mm->stride_c;
#pragma omp parallel for num_threads(n_parts) schedule(static) if (n_parts > 1)
        for (int part = 0; part < n_parts; part++) {
            int64_t chunk = (extent + n_parts - 1) / n_parts;
            chunk = (chunk + align - 1) / align * align;
            int64_t p0 = part * chunk, p1 = p0 + chunk < extent ? p0 + chunk : extent;
            if (p0 >= p1)
                continue;
            const float *pa = a, *pb = bb;
            float *pc = c;
            int64_t pm = mm->m, pn = mm->n;
            if (by_rows) {
                pa = mm->trans_a ? a + p0 : a + p0 * mm->lda;
                pc = c + p0 * mm->ldc;
                pm = p1 - p0;
            } else {
                pb = mm->trans_b ? bb + p0 * mm->ldb : bb + p0;
                pc = c + p0;
                pn = p1 - p0;
            }
            cblas_sgemm(CblasRowMajor, mm->trans_a ? CblasTrans : CblasNoTrans,
                        mm->trans_b ? CblasTrans : CblasNoTrans, (int)pm, (int)pn, (int)mm->k,
                        mm->alpha, pa, (int)mm->lda, pb, (int)mm->ldb, mm->beta, pc,
                        (int)mm->ldc);
            if (mm->bias)
                for (int64_t i = 0; i < pm; i++) {
                    float *row = pc + i * mm->ldc;
                    const float *bias = by_rows ? mm->bias : mm->bias + p0;
                    for (int64_t j = 0; j < pn; j++)
                        row[j] += bias[j];
                }
        }
    }
    return LMS_OK;
}
