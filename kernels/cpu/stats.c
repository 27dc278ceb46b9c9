/* CPU activation statistics for importance scoring: the per-row sequence mean of magnitudes of
 * every channel, and the cosine between two rows. Sums run in double so the CPU stays the
 * numerical reference. Shapes are documented at the slots in kernels/backend_impl.h. */
#include <math.h>

#include "kernels/cpu/cpu.h"

/* Channels per task: a task walks the seq rows of one batch row over a slice of channels, so
 * its accumulators stay in L1 while the rows stream by. */
#define STATS_CHUNK 256

LMS_CPU_CLONES
static void abs_mean_chunk(float *out, const float *x, int64_t ld, int64_t seq, int64_t n)
{
    double acc[STATS_CHUNK];
    for (int64_t j = 0; j < n; j++)
        acc[j] = 0;
    for (int64_t t = 0; t < seq; t++) {
        const float *row = x + t * ld;
        for (int64_t j = 0; j < n; j++)
            acc[j] += fabsf(row[j]);
    }
    double inv = 1.0 / (double)seq;
    for (int64_t j = 0; j < n; j++)
        out[j] = (float)(acc[j] * inv);
}

enum lms_status lms__cpu_abs_mean(struct lms_backend *be, float *out, const float *x, int64_t ld,
                                  int64_t batch, int64_t seq, int64_t c, struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    int64_t chunks = (c + STATS_CHUNK - 1) / STATS_CHUNK, tasks = batch * chunks;
    if (batch <= 0 || seq <= 0 || c <= 0 || ld < c)
        return lms_error_set(err, LMS_EINVAL, "abs_mean: shape %lld x %lld x %lld (ld %lld)",
                             (long long)batch, (long long)seq, (long long)c, (long long)ld);
#pragma omp parallel for num_threads(cx->n_threads) schedule(static) \
    if (batch * seq * c > LMS_CPU_PAR_MIN)
    for (int64_t i = 0; i < tasks; i++) {
        int64_t b = i / chunks, j0 = (i % chunks) * STATS_CHUNK;
        int64_t n = c - j0 < STATS_CHUNK ? c - j0 : STATS_CHUNK;
        abs_mean_chunk(out + b * c + j0, x + b * seq * ld + j0, ld, seq, n);
    }
    return LMS_OK;
}

LMS_CPU_CLONES
static float cosine_row(const float *a, const float *b, int64_t c)
{
    double ab[8] = {0}, aa[8] = {0}, bb[8] = {0};
    int64_t c8 = c - c % 8;
    for (int64_t j = 0; j < c8; j += 8)
        for (int k = 0; k < 8; k++) {
            double x = a[j + k], y = b[j + k];
            ab[k] += x * y;
            aa[k] += x * x;
            bb[k] += y * y;
        }
    for (int64_t j = c8; j < c; j++) {
        double x = a[j], y = b[j];
        ab[0] += x * y;
        aa[0] += x * x;
        bb[0] += y * y;
    }
    double sab = 0, saa = 0, sbb = 0;
    for (int k = 0; k < 8; k++) {
        sab += ab[k];
        saa += aa[k];
        sbb += bb[k];
    }
    return saa > 0 && sbb > 0 ? (float)(sab / (sqrt(saa) * sqrt(sbb))) : 0.0f;
}

enum lms_status lms__cpu_row_cosine(struct lms_backend *be, float *out, const float *a,
                                    int64_t lda, const float *b, int64_t ldb, int64_t n_rows,
                                    int64_t c, struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    if (n_rows < 0 || c <= 0 || lda < c || ldb < c)
        return lms_error_set(err, LMS_EINVAL, "row_cosine: shape %lld x %lld (ld %lld, %lld)",
                             (long long)n_rows, (long long)c, (long long)lda, (long long)ldb);
#pragma omp parallel for num_threads(cx->n_threads) schedule(static) \
    if (n_rows * c > LMS_CPU_PAR_MIN)
    for (int64_t r = 0; r < n_rows; r++)
        out[r] = cosine_row(a + r * lda, b + r * ldb, c);
    return LMS_OK;
}
