/* CPU causal grouped-query attention, flash style: the (S, S) score matrix is never formed.
 *
 * Work is split into tasks (b, g, query block of BQ rows). A task walks the key tiles of BK
 * keys up to its last query row; each tile of K (transposed) and V is copied once into thread
 * scratch and used by all r = n_h / n_g query heads of the group. Every query row keeps an
 * online softmax (running max m, running sum l, unnormalised output acc) so memory per task is
 * O(r * BQ * d) whatever S is. Shapes: struct lms_attention in kernels/backend_impl.h. */
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels/cpu/cpu.h"
#include "lms/alloc.h"

#define BQ 64 /* query rows per task */
#define BK 64 /* keys per tile */

/* Scratch floats one thread needs for r heads per group and head dim d. */
static size_t scratch_floats(int64_t r, int64_t d)
{
    return (size_t)(2 * BK * d + BK + r * BQ * d + 2 * r * BQ + d + 16);
}

/* One task: batch row b, group g, query rows [q0, q1). ws: thread scratch. */
LMS_CPU_CLONES
static void attend_block(const struct lms_attention *at, int64_t b, int64_t g, int64_t q0,
                         int64_t q1, float *ws)
{
    const int64_t S = at->seq, d = at->head_dim, r = at->n_heads / at->n_groups;
    const int64_t nq = q1 - q0;
    float *kt = ws;             /* (d, BK): K tile transposed */
    float *vt = kt + d * BK;    /* (BK, d) */
    float *s = vt + BK * d;     /* (BK) scores of one row */
    float *acc = s + BK;        /* (r, BQ, d) */
    float *m = acc + r * BQ * d; /* (r, BQ) running max */
    float *l = m + r * BQ;       /* (r, BQ) running sum */
    float *qs = l + r * BQ;      /* (d) scaled query row */

    for (int64_t i = 0; i < r * nq; i++) {
        m[i] = -INFINITY;
        l[i] = 0;
    }
    for (int64_t i = 0; i < r * nq * d; i++)
        acc[i] = 0;

    int64_t j_begin = 0;
    if (at->window > 0 && q0 - at->window + 1 > 0)
        j_begin = q0 - at->window + 1;
    for (int64_t j0 = j_begin; j0 < q1; j0 += BK) {
        int64_t j1 = j0 + BK < q1 ? j0 + BK : q1;
        int64_t nk = j1 - j0;
        for (int64_t jj = 0; jj < nk; jj++) {
            const float *krow = at->k + (b * S + j0 + jj) * at->kv_stride + g * d;
            const float *vrow = at->v + (b * S + j0 + jj) * at->kv_stride + g * d;
            for (int64_t c = 0; c < d; c++)
                kt[c * BK + jj] = krow[c];
            memcpy(vt + jj * d, vrow, (size_t)d * sizeof(float));
        }
        for (int64_t hh = 0; hh < r; hh++) {
            int64_t h = g * r + hh;
            for (int64_t qi = 0; qi < nq; qi++) {
                int64_t i = q0 + qi;
                /* visible keys of row i inside this tile: [lo, hi) relative to j0 */
                int64_t hi = i + 1 - j0;
                if (hi <= 0)
                    continue;
                if (hi > nk)
                    hi = nk;
                int64_t lo = 0;
                if (at->window > 0 && i - at->window + 1 > j0)
                    lo = i - at->window + 1 - j0;
                if (lo >= hi)
                    continue;
                const float *qrow = at->q + (b * S + i) * at->q_stride + h * d;
                for (int64_t c = 0; c < d; c++)
                    qs[c] = qrow[c] * at->scale;
                for (int64_t jj = lo; jj < hi; jj++)
                    s[jj] = 0;
                for (int64_t c = 0; c < d; c++) {
                    float qc = qs[c];
                    const float *kc = kt + c * BK;
                    for (int64_t jj = lo; jj < hi; jj++)
                        s[jj] += qc * kc[jj];
                }
                float mt = -INFINITY;
                for (int64_t jj = lo; jj < hi; jj++)
                    mt = s[jj] > mt ? s[jj] : mt;
                int64_t row = hh * nq + qi;
                float m_old = m[row];
                float m_new = m_old > mt ? m_old : mt;
                float alpha = isinf(m_old) ? 0.0f : lms__expf(m_old - m_new);
                float *a = acc + row * d;
                if (alpha != 1.0f)
                    for (int64_t c = 0; c < d; c++)
                        a[c] *= alpha;
                float sum = 0;
                for (int64_t jj = lo; jj < hi; jj++) {
                    s[jj] = lms__expf(s[jj] - m_new);
                    sum += s[jj];
                }
                l[row] = l[row] * alpha + sum;
                m[row] = m_new;
                for (int64_t jj = lo; jj < hi; jj++) {
                    float p = s[jj];
                    const float *vr = vt + jj * d;
                    for (int64_t c = 0; c < d; c++)
                        a[c] += p * vr[c];
                }
            }
        }
    }
    for (int64_t hh = 0; hh < r; hh++) {
        int64_t h = g * r + hh;
        for (int64_t qi = 0; qi < nq; qi++) {
            int64_t row = hh * nq + qi;
            float inv = 1.0f / l[row];
            float *o = at->out + (b * S + q0 + qi) * at->out_stride + h * d;
            const float *a = acc + row * d;
            for (int64_t c = 0; c < d; c++)
                o[c] = a[c] * inv;
        }
    }
}

enum lms_status lms__cpu_attention(struct lms_backend *be, const struct lms_attention *at,
                                   struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    if (at->n_groups <= 0 || at->n_heads <= 0 || at->n_heads % at->n_groups || at->head_dim <= 0 ||
        at->batch < 0 || at->seq < 0 || at->window < 0)
        return lms_error_set(err, LMS_EINVAL,
                             "attention: bad shape (heads %lld, groups %lld, head dim %lld)",
                             (long long)at->n_heads, (long long)at->n_groups,
                             (long long)at->head_dim);
    int64_t r = at->n_heads / at->n_groups;
    size_t need = scratch_floats(r, at->head_dim);
    if (cx->scratch_per_thread < need) {
        float *p = lms_malloc(need * sizeof(float) * (size_t)cx->n_threads);
        if (!p)
            return lms_error_set(err, LMS_ENOMEM, "attention: out of memory for %zu-byte scratch",
                                 need * sizeof(float) * (size_t)cx->n_threads);
        lms_free(cx->scratch);
        cx->scratch = p;
        cx->scratch_per_thread = need;
    }
    int64_t n_qb = (at->seq + BQ - 1) / BQ;
    int64_t n_tasks = at->batch * at->n_groups * n_qb;
    size_t per = cx->scratch_per_thread;
    float *scratch = cx->scratch;
    /* Largest tasks (last query blocks) first, for load balance. */
#pragma omp parallel for num_threads(cx->n_threads) schedule(dynamic, 1) if (n_tasks > 1)
    for (int64_t t = 0; t < n_tasks; t++) {
        int64_t qb = n_qb - 1 - t / (at->batch * at->n_groups);
        int64_t bg = t % (at->batch * at->n_groups);
        int64_t b = bg / at->n_groups, g = bg % at->n_groups;
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        int64_t q0 = qb * BQ, q1 = q0 + BQ < at->seq ? q0 + BQ : at->seq;
        attend_block(at, b, g, q0, q1, scratch + (size_t)tid * per);
    }
    return LMS_OK;
}
