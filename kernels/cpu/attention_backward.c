/* CPU backward of causal grouped-query attention, flash style: the (S, S) matrices are never
 * formed. Scores of one (query block, key tile) pair are recomputed from q, k and the forward's
 * log-sum-exp, so memory per task is a few BQ x BK tiles whatever S is.
 *
 * With s_ij = scale q_i.k_j, p_ij = exp(s_ij - lse_i) and D_i = dout_i . out_i:
 *   dv_j = sum_i p_ij dout_i,  dp_ij = dout_i . v_j,  ds_ij = p_ij (dp_ij - D_i),
 *   dq_i = scale sum_j ds_ij k_j,  dk_j = scale sum_i ds_ij q_i.
 * Two passes avoid write conflicts without atomics: tasks (b, h, query block) own dq rows;
 * tasks (b, g, key block) own dk and dv rows and sum over the r query heads of their group.
 * Tile products go through single-threaded OpenBLAS on thread-private tiles. */
#include <cblas.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels/cpu/cpu.h"
#include "lms/alloc.h"

#define TQ 64 /* query rows per tile */
#define TK 64 /* keys per tile */

/* Probabilities p (nq, TK) and ds (nq, TK) of the tile: query rows [i0, i0+nq) of head h
 * against keys [j0, j0+nk), from s = scale q k^T (already in p), the lse and D of each row,
 * and dp = dout v^T (already in ds). Invisible pairs get 0. */
LMS_CPU_CLONES
static void tile_probs(float *restrict p, float *restrict ds, int64_t i0, int64_t nq, int64_t j0, int64_t nk,
                       const float *lse, const float *D, int64_t window)
{
    for (int64_t a = 0; a < nq; a++) {
        float l = lse[a], dd = D[a];
        float *restrict pr = p + a * TK, *restrict dr = ds + a * TK;
        /* visible columns: j0 + c <= i and (window == 0 or i - (j0 + c) < window) */
        int64_t i = i0 + a, hi = i - j0 + 1 < nk ? i - j0 + 1 : nk, lo = 0;
        if (window > 0 && i - window + 1 - j0 > 0)
            lo = i - window + 1 - j0;
        if (hi < 0)
            hi = 0;
        if (lo > hi)
            lo = hi;
        for (int64_t c = 0; c < lo; c++)
            pr[c] = dr[c] = 0.0f;
        int64_t v = lo;
        for (; v + 8 <= hi; v += 8) { /* eight lanes spelled out: see lms__expf8 */
            lms__v8f pv = *(lms__v8f *)(pr + v) - l;
            lms__expf8(&pv);
            *(lms__v8f *)(pr + v) = pv;
            *(lms__v8f *)(dr + v) = pv * (*(lms__v8f *)(dr + v) - dd);
        }
        for (; v < hi; v++) {
            float pv = lms__expf(pr[v] - l);
            pr[v] = pv;
            dr[v] = pv * (dr[v] - dd);
        }
        for (int64_t c = hi; c < nk; c++)
            pr[c] = dr[c] = 0.0f;
    }
}

/* Does the tile hold any visible pair? */
static bool tile_any(int64_t i0, int64_t nq, int64_t j0, int64_t nk, int64_t window)
{
    int64_t i1 = i0 + nq - 1, j1 = j0 + nk - 1;
    if (j0 > i1)
        return false;
    /* the pair nearest the diagonal inside the window: largest j <= i */
    if (window > 0 && i0 - j1 >= window)
        return false;
    return true;
}

enum lms_status lms__cpu_attention_backward(struct lms_backend *be,
                                            const struct lms_attention_backward *ab,
                                            struct lms_error *err)
{
    struct lms_cpu_ctx *cx = be->impl;
    const struct lms_attention *at = &ab->fwd;
    if (at->n_groups <= 0 || at->n_heads <= 0 || at->n_heads % at->n_groups ||
        at->head_dim <= 0 || at->batch < 0 || at->seq < 0 || at->window < 0 || !at->lse)
        return lms_error_set(err, LMS_EINVAL,
                             "attention backward: bad shape (heads %lld, groups %lld, head dim "
                             "%lld) or no saved log-sum-exp",
                             (long long)at->n_heads, (long long)at->n_groups,
                             (long long)at->head_dim);
    const int64_t B = at->batch, S = at->seq, nh = at->n_heads, ng = at->n_groups;
    const int64_t d = at->head_dim, r = nh / ng, W = at->window;
    if (B == 0 || S == 0)
        return LMS_OK;
    const float scale = at->scale;
    int nt = cx->n_threads;
    /* D (B, n_h, S) and per-thread tiles: p, ds (TQ, TK) */
    size_t n_d = (size_t)(B * nh * S), per = (size_t)(2 * TQ * TK);
    float *D = lms_malloc((n_d + per * (size_t)nt) * sizeof(float));
    if (!D)
        return lms_error_set(err, LMS_ENOMEM, "attention backward: out of memory");
    float *tiles = D + n_d;

#pragma omp parallel for num_threads(nt) schedule(static) if (B * S * nh * d > LMS_CPU_PAR_MIN)
    for (int64_t row = 0; row < B * S; row++)
        for (int64_t h = 0; h < nh; h++) {
            const float *o = at->out + row * at->out_stride + h * d;
            const float *g = ab->dout + row * ab->dout_stride + h * d;
            double acc = 0;
            for (int64_t c = 0; c < d; c++)
                acc += (double)o[c] * g[c];
            D[((row / S) * nh + h) * S + row % S] = (float)acc;
        }

    const int64_t n_qb = (S + TQ - 1) / TQ, n_kb = (S + TK - 1) / TK;
    const int64_t ldq = at->q_stride, ldk = at->kv_stride, ldo = ab->dout_stride;

    /* pass 1: dq, tasks (b, h, query block) */
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (B * nh * n_qb > 1)
    for (int64_t t = 0; t < B * nh * n_qb; t++) {
        int64_t qb = n_qb - 1 - t / (B * nh), bh = t % (B * nh), b = bh / nh, h = bh % nh;
        int64_t g = h / r;
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *p = tiles + (size_t)tid * per, *ds = p + TQ * TK;
        int64_t i0 = qb * TQ, nq = S - i0 < TQ ? S - i0 : TQ;
        const float *q = at->q + (b * S + i0) * ldq + h * d;
        const float *dout = ab->dout + (b * S + i0) * ldo + h * d;
        float *dq = ab->dq + (b * S + i0) * ab->dq_stride + h * d;
        const float *lse = at->lse + (b * nh + h) * S + i0, *Dr = D + (b * nh + h) * S + i0;
        for (int64_t a = 0; a < nq; a++)
            memset(dq + a * ab->dq_stride, 0, (size_t)d * sizeof(float));
        for (int64_t j0 = 0; j0 < i0 + nq; j0 += TK) {
            int64_t nk = S - j0 < TK ? S - j0 : TK;
            if (!tile_any(i0, nq, j0, nk, W))
                continue;
            const float *k = at->k + (b * S + j0) * ldk + g * d;
            const float *v = at->v + (b * S + j0) * ldk + g * d;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)nk, (int)d, scale,
                        q, (int)ldq, k, (int)ldk, 0.0f, p, TK);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)nk, (int)d, 1.0f,
                        dout, (int)ldo, v, (int)ldk, 0.0f, ds, TK);
            tile_probs(p, ds, i0, nq, j0, nk, lse, Dr, W);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, (int)d, (int)nk,
                        scale, ds, TK, k, (int)ldk, 1.0f, dq, (int)ab->dq_stride);
        }
    }

    /* pass 2: dk and dv, tasks (b, g, key block) */
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (B * ng * n_kb > 1)
    for (int64_t t = 0; t < B * ng * n_kb; t++) {
        int64_t kb = t / (B * ng), bg = t % (B * ng), b = bg / ng, g = bg % ng;
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *p = tiles + (size_t)tid * per, *ds = p + TQ * TK;
        int64_t j0 = kb * TK, nk = S - j0 < TK ? S - j0 : TK;
        const float *k = at->k + (b * S + j0) * ldk + g * d;
        const float *v = at->v + (b * S + j0) * ldk + g * d;
        float *dk = ab->dk + (b * S + j0) * ab->dkv_stride + g * d;
        float *dv = ab->dv + (b * S + j0) * ab->dkv_stride + g * d;
        for (int64_t c = 0; c < nk; c++) {
            memset(dk + c * ab->dkv_stride, 0, (size_t)d * sizeof(float));
            memset(dv + c * ab->dkv_stride, 0, (size_t)d * sizeof(float));
        }
        for (int64_t hh = 0; hh < r; hh++) {
            int64_t h = g * r + hh;
            for (int64_t i0 = j0 / TQ * TQ; i0 < S; i0 += TQ) {
                int64_t nq = S - i0 < TQ ? S - i0 : TQ;
                if (!tile_any(i0, nq, j0, nk, W)) {
                    if (W > 0 && i0 > j0)
                        break; /* every later query block is past the window */
                    continue;
                }
                const float *q = at->q + (b * S + i0) * ldq + h * d;
                const float *dout = ab->dout + (b * S + i0) * ldo + h * d;
                const float *lse = at->lse + (b * nh + h) * S + i0;
                const float *Dr = D + (b * nh + h) * S + i0;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)nk, (int)d,
                            scale, q, (int)ldq, k, (int)ldk, 0.0f, p, TK);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)nk, (int)d,
                            1.0f, dout, (int)ldo, v, (int)ldk, 0.0f, ds, TK);
                tile_probs(p, ds, i0, nq, j0, nk, lse, Dr, W);
                /* dv (nk, d) += p^T dout; dk (nk, d) += scale ds^T q */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nk, (int)d, (int)nq,
                            1.0f, p, TK, dout, (int)ldo, 1.0f, dv, (int)ab->dkv_stride);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nk, (int)d, (int)nq,
                            scale, ds, TK, q, (int)ldq, 1.0f, dk, (int)ab->dkv_stride);
            }
        }
    }
    lms_free(D);
    return LMS_OK;
}
