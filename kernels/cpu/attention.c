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

#define RB 4  /* query rows processed together on tiles every row of them can see */

/* 8 lanes: one AVX register, so that the accumulators below stay in registers (a wider
 * vector type is split by the compiler into pieces that go through the stack). Unaligned. */
typedef lms__v8f v8;

/* Scratch floats one thread needs for r heads per group and head dim d. */
static size_t scratch_floats(int64_t r, int64_t d)
{
    return (size_t)(2 * BK * d + RB * BK + 2 * r * BQ * d + 2 * r * BQ + 16);
}

/* s[jj] = qs . K[jj] for jj in [lo, hi): kt is the K tile transposed, (d, BK). */
LMS_CPU_INLINE void scores_row(float *restrict s, const float *restrict qs,
                              const float *restrict kt, int64_t d, int64_t lo, int64_t hi)
{
    int64_t jb = lo;
    for (; jb + 16 <= hi; jb += 16) {
        v8 t0 = {0}, t1 = {0};
        for (int64_t c = 0; c < d; c++) {
            const float *kc = kt + c * BK + jb;
            t0 += qs[c] * *(const v8 *)kc;
            t1 += qs[c] * *(const v8 *)(kc + 8);
        }
        *(v8 *)(s + jb) = t0;
        *(v8 *)(s + jb + 8) = t1;
    }
    for (int64_t jj = jb; jj < hi; jj++) {
        float t = 0;
        for (int64_t c = 0; c < d; c++)
            t += qs[c] * kt[c * BK + jj];
        s[jj] = t;
    }
}

/* s (RB, nk) = qs (RB, d) . K tile^T for the first nk keys of the tile (nk a multiple of 16),
 * 16 keys at a time: RB x 2 accumulators in registers. */
LMS_CPU_INLINE void scores_rows(float *restrict s, const float *restrict qs,
                               const float *restrict kt, int64_t d, int64_t nk)
{
    for (int64_t k0 = 0; k0 < nk; k0 += 16) {
        v8 t[RB][2];
        for (int r = 0; r < RB; r++)
            t[r][0] = t[r][1] = (v8){0};
        for (int64_t c = 0; c < d; c++) {
            v8 k_lo = *(const v8 *)(kt + c * BK + k0), k_hi = *(const v8 *)(kt + c * BK + k0 + 8);
            for (int r = 0; r < RB; r++) {
                float q = qs[r * d + c];
                t[r][0] += q * k_lo;
                t[r][1] += q * k_hi;
            }
        }
        for (int r = 0; r < RB; r++) {
            *(v8 *)(s + r * BK + k0) = t[r][0];
            *(v8 *)(s + r * BK + k0 + 8) = t[r][1];
        }
    }
}

/* Online-softmax step of one row over scores s[lo, hi): updates the running max *m and sum *l,
 * rescales the accumulator a (d), turns s into probabilities. Returns nothing; a is not yet
 * updated with V (the caller does that, one row or RB rows at a time). */
LMS_CPU_INLINE void softmax_step(float *restrict s, int64_t lo, int64_t hi, float *m, float *l,
                                float *restrict a, int64_t d)
{
    float mt = -INFINITY;
#pragma omp simd reduction(max : mt)
    for (int64_t jj = lo; jj < hi; jj++)
        mt = s[jj] > mt ? s[jj] : mt;
    float m_old = *m, m_new = m_old > mt ? m_old : mt;
    float alpha = isinf(m_old) ? 0.0f : lms__expf(m_old - m_new);
    if (alpha != 1.0f)
        for (int64_t c = 0; c < d; c++)
            a[c] *= alpha;
    float sum = 0;
    int64_t jv = lo;
    for (; jv + 8 <= hi; jv += 8) { /* eight lanes spelled out: see lms__expf8 */
        lms__v8f e = *(lms__v8f *)(s + jv) - m_new;
        lms__expf8(&e);
        *(lms__v8f *)(s + jv) = e;
    }
    for (; jv < hi; jv++)
        s[jv] = lms__expf(s[jv] - m_new);
#pragma omp simd reduction(+ : sum)
    for (int64_t jj = lo; jj < hi; jj++)
        sum += s[jj];
    *l = *l * alpha + sum;
    *m = m_new;
}

/* a (d) += sum_jj p[jj] * V[jj] for jj in [lo, hi); vt (BK, d). */
LMS_CPU_INLINE void pv_row(float *restrict a, const float *restrict p, const float *restrict vt,
                          int64_t d, int64_t lo, int64_t hi)
{
    for (int64_t jj = lo; jj < hi; jj++) {
        float pj = p[jj];
        const float *vr = vt + jj * d;
#pragma omp simd
        for (int64_t c = 0; c < d; c++)
            a[c] += pj * vr[c];
    }
}

/* a_r (d) += p_r (nk) . V tile for RB rows (row r accumulator at a + r*a_stride) over the first
 * nk keys of the tile; d % 16 == 0. Channels in chunks of 16, RB x 2 accumulators in registers
 * over the keys. */
LMS_CPU_INLINE void pv_rows(float *a, int64_t a_stride, const float *restrict p,
                           const float *restrict vt, int64_t d, int64_t nk)
{
    for (int64_t c0 = 0; c0 < d; c0 += 16) {
        v8 t[RB][2];
        for (int r = 0; r < RB; r++) {
            t[r][0] = *(const v8 *)(a + r * a_stride + c0);
            t[r][1] = *(const v8 *)(a + r * a_stride + c0 + 8);
        }
        for (int64_t jj = 0; jj < nk; jj++) {
            v8 v_lo = *(const v8 *)(vt + jj * d + c0), v_hi = *(const v8 *)(vt + jj * d + c0 + 8);
            for (int r = 0; r < RB; r++) {
                float pj = p[r * BK + jj];
                t[r][0] += pj * v_lo;
                t[r][1] += pj * v_hi;
            }
        }
        for (int r = 0; r < RB; r++) {
            *(v8 *)(a + r * a_stride + c0) = t[r][0];
            *(v8 *)(a + r * a_stride + c0 + 8) = t[r][1];
        }
    }
}

/* The keys of the tile [j0, j0 + nk) that query row i sees, as [*lo, *hi) relative to j0:
 * causal (j <= i) and, with a sliding window W > 0, i - j < W. Empty when *lo >= *hi. */
static inline void visible_keys(int64_t i, int64_t j0, int64_t nk, int64_t W, int64_t *lo,
                                int64_t *hi)
{
    *hi = i + 1 - j0 < nk ? i + 1 - j0 : nk;
    *lo = W > 0 && i - W + 1 > j0 ? i - W + 1 - j0 : 0;
}

/* One task: batch row b, group g, query rows [q0, q1). ws: thread scratch. */
LMS_CPU_CLONES
static void attend_block(const struct lms_attention *at, int64_t b, int64_t g, int64_t q0,
                         int64_t q1, float *ws)
{
    const int64_t S = at->seq, d = at->head_dim, r = at->n_heads / at->n_groups;
    const int64_t nq = q1 - q0, W = at->window;
    float *kt = ws;              /* (d, BK): K tile transposed */
    float *vt = kt + d * BK;     /* (BK, d) */
    float *s = vt + BK * d;      /* (RB, BK) scores */
    float *acc = s + RB * BK;    /* (r, BQ, d) */
    float *m = acc + r * BQ * d; /* (r, BQ) running max */
    float *l = m + r * BQ;       /* (r, BQ) running sum */
    float *qs = l + r * BQ;      /* (r, BQ, d) scaled query rows, made once for all tiles */

    for (int64_t i = 0; i < r * nq; i++) {
        m[i] = -INFINITY;
        l[i] = 0;
    }
    for (int64_t i = 0; i < r * nq * d; i++)
        acc[i] = 0;
    for (int64_t hh = 0; hh < r; hh++)
        for (int64_t qi = 0; qi < nq; qi++) {
            const float *qrow = at->q + (b * S + q0 + qi) * at->q_stride + (g * r + hh) * d;
            float *qsr = qs + (hh * nq + qi) * d;
            for (int64_t c = 0; c < d; c++)
                qsr[c] = qrow[c] * at->scale;
        }

    int64_t j_begin = 0;
    if (W > 0 && q0 - W + 1 > 0)
        j_begin = q0 - W + 1;
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
            for (int64_t qi = 0; qi < nq;) {
                int64_t i = q0 + qi;
                /* RB rows at once on a whole tile when each of them sees some of its keys;
                 * the keys a row cannot see get probability 0 */
                int64_t lo[RB], hi[RB];
                bool rows = nk == BK && d % 16 == 0 && qi + RB <= nq;
                for (int rr = 0; rows && rr < RB; rr++) {
                    visible_keys(i + rr, j0, nk, W, &lo[rr], &hi[rr]);
                    rows = lo[rr] < hi[rr];
                }
                if (rows) {
                    /* On the diagonal tile the later keys are invisible to all RB rows: the
                     * products stop at the last row's last key, rounded up to 16. */
                    int64_t kend = (hi[RB - 1] + 15) / 16 * 16;
                    int64_t row = hh * nq + qi;
                    scores_rows(s, qs + row * d, kt, d, kend);
                    for (int rr = 0; rr < RB; rr++) {
                        float *sr = s + rr * BK;
                        softmax_step(sr, lo[rr], hi[rr], &m[row + rr], &l[row + rr],
                                     acc + (row + rr) * d, d);
                        for (int64_t jj = 0; jj < lo[rr]; jj++)
                            sr[jj] = 0.0f;
                        for (int64_t jj = hi[rr]; jj < kend; jj++)
                            sr[jj] = 0.0f;
                    }
                    pv_rows(acc + row * d, d, s, vt, d, kend);
                    qi += RB;
                    continue;
                }
                int64_t lo1, hi1;
                visible_keys(i, j0, nk, W, &lo1, &hi1);
                if (lo1 < hi1) {
                    int64_t row = hh * nq + qi;
                    scores_row(s, qs + row * d, kt, d, lo1, hi1);
                    softmax_step(s, lo1, hi1, &m[row], &l[row], acc + row * d, d);
                    pv_row(acc + row * d, s, vt, d, lo1, hi1);
                }
                qi++;
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
            if (at->lse)
                at->lse[(b * at->n_heads + h) * S + q0 + qi] = m[row] + logf(l[row]);
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
