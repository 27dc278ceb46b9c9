/* CPU backward of causal grouped-query attention, flash style: the (S, S) matrices are never
 * formed. Scores of one (query block, key tile) pair are recomputed from q, k and the forward's
 * log-sum-exp, so memory per task is a few BQ x BK tiles whatever S is.
 *
 * With s_ij = scale q_i.k_j, p_ij = exp(s_ij - lse_i) and D_i = dout_i . out_i:
 *   dv_j = sum_i p_ij dout_i,  dp_ij = dout_i . v_j,  ds_ij = p_ij (dp_ij - D_i),
 *   dq_i = scale sum_j ds_ij k_j,  dk_j = scale sum_i ds_ij q_i.
 * Two passes avoid write conflicts without atomics: tasks (b, h, query block) own dq rows;
 * tasks (b, g, key block) own dk and dv rows and sum over the r query heads of their group.
 * Tile products run on thread-private tiles: when the head dim is a multiple of 8, through
 * tile_gemm below (a 64 x 64 x 32 product is too small for OpenBLAS, whose packing and calls
 * cost as much as the arithmetic); otherwise through single-threaded OpenBLAS. */
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

/* c[i][0..nc) = alpha sum_k a_ik b[k][0..nc), or += with acc, for rows i < nr and k < nk, where
 * a_ik = a[i * ars + k * ais] (so a may be read transposed) and nc is a multiple of 8. Two rows
 * by 32 columns at a time: eight accumulators in registers, each b vector loaded once per two
 * rows. Sums run over k in order, in float, as a GEMM's do. */
LMS_CPU_CLONES
static void tile_gemm(float *restrict c, int64_t ldc, const float *restrict a, int64_t ars,
                      int64_t ais, const float *restrict b, int64_t ldb, int64_t nr, int64_t nk,
                      int64_t nc, float alpha, bool acc)
{
    int64_t i = 0;
    for (; i + 2 <= nr; i += 2) {
        const float *a0 = a + i * ars, *a1 = a0 + ars;
        float *c0 = c + i * ldc, *c1 = c0 + ldc;
        int64_t j = 0;
        for (; j + 32 <= nc; j += 32) {
            lms__v8f s00 = {0}, s01 = {0}, s02 = {0}, s03 = {0};
            lms__v8f s10 = {0}, s11 = {0}, s12 = {0}, s13 = {0};
            for (int64_t k = 0; k < nk; k++) {
                const float *bk = b + k * ldb + j;
                lms__v8f b0 = *(const lms__v8f *)bk, b1 = *(const lms__v8f *)(bk + 8);
                lms__v8f b2 = *(const lms__v8f *)(bk + 16), b3 = *(const lms__v8f *)(bk + 24);
                float x0 = a0[k * ais], x1 = a1[k * ais];
                s00 += x0 * b0, s01 += x0 * b1, s02 += x0 * b2, s03 += x0 * b3;
                s10 += x1 * b0, s11 += x1 * b1, s12 += x1 * b2, s13 += x1 * b3;
            }
            lms__v8f *d0 = (lms__v8f *)(c0 + j), *d1 = (lms__v8f *)(c1 + j);
            if (acc) {
                d0[0] += alpha * s00, d0[1] += alpha * s01, d0[2] += alpha * s02;
                d0[3] += alpha * s03, d1[0] += alpha * s10, d1[1] += alpha * s11;
                d1[2] += alpha * s12, d1[3] += alpha * s13;
            } else {
                d0[0] = alpha * s00, d0[1] = alpha * s01, d0[2] = alpha * s02;
                d0[3] = alpha * s03, d1[0] = alpha * s10, d1[1] = alpha * s11;
                d1[2] = alpha * s12, d1[3] = alpha * s13;
            }
        }
        for (; j < nc; j += 8) {
            lms__v8f s0 = {0}, s1 = {0};
            for (int64_t k = 0; k < nk; k++) {
                lms__v8f bk = *(const lms__v8f *)(b + k * ldb + j);
                s0 += a0[k * ais] * bk, s1 += a1[k * ais] * bk;
            }
            lms__v8f *d0 = (lms__v8f *)(c0 + j), *d1 = (lms__v8f *)(c1 + j);
            *d0 = acc ? *d0 + alpha * s0 : alpha * s0;
            *d1 = acc ? *d1 + alpha * s1 : alpha * s1;
        }
    }
    for (; i < nr; i++) {
        const float *a0 = a + i * ars;
        for (int64_t j = 0; j < nc; j += 8) {
            lms__v8f s0 = {0};
            for (int64_t k = 0; k < nk; k++)
                s0 += a0[k * ais] * *(const lms__v8f *)(b + k * ldb + j);
            lms__v8f *d0 = (lms__v8f *)(c + i * ldc + j);
            *d0 = acc ? *d0 + alpha * s0 : alpha * s0;
        }
    }
}

/* K and V rows [j0, j0 + nk) of one group, and, on the tile_gemm path, both transposed into
 * (d, TK) with the columns from nk up to nkp (nk rounded up to 8) zero. */
struct kv_tile {
    const float *k, *v;
    int64_t ld, nk, nkp;
    float *kt, *vt; /* NULL: the OpenBLAS path */
};

static void kv_tile_load(struct kv_tile *t, const float *k, const float *v, int64_t ld,
                         int64_t nk, int64_t d)
{
    t->k = k, t->v = v, t->ld = ld, t->nk = nk, t->nkp = (nk + 7) / 8 * 8;
    if (!t->kt)
        return;
    for (int64_t c = 0; c < d; c++) {
        float *kc = t->kt + c * TK, *vc = t->vt + c * TK;
        for (int64_t j = 0; j < nk; j++) {
            kc[j] = k[j * ld + c];
            vc[j] = v[j * ld + c];
        }
        for (int64_t j = nk; j < t->nkp; j++)
            kc[j] = vc[j] = 0.0f;
    }
}

/* p (nq, ncols) = scale q K^T and ds (nq, ncols) = dout V^T for nq query rows (strides ldq,
 * ldo) against the first ncols <= nk keys of the tile; the vector path rounds ncols up to 8 */
static void tile_scores(float *p, float *ds, const struct kv_tile *t, const float *q, int64_t ldq,
                        const float *dout, int64_t ldo, int64_t nq, int64_t ncols, int64_t d,
                        float scale)
{
    if (t->kt) {
        int64_t nc = (ncols + 7) / 8 * 8;
        tile_gemm(p, TK, q, ldq, 1, t->kt, TK, nq, d, nc, scale, false);
        tile_gemm(ds, TK, dout, ldo, 1, t->vt, TK, nq, d, nc, 1.0f, false);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)ncols, (int)d, scale, q,
                (int)ldq, t->k, (int)t->ld, 0.0f, p, TK);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)ncols, (int)d, 1.0f, dout,
                (int)ldo, t->v, (int)t->ld, 0.0f, ds, TK);
}

/* c (nr, d) += alpha x b, where x is the (nq, TK) tile t itself (nr = nq, inner nk) or, with
 * transposed, its transpose (nr = nk, inner nq); b (inner, d) has row stride ldb */
static void tile_accumulate(float *c, int64_t ldc, const float *t, bool transposed,
                            const float *b, int64_t ldb, int64_t nq, int64_t nk, int64_t d,
                            float alpha, bool vector_path)
{
    int64_t nr = transposed ? nk : nq, inner = transposed ? nq : nk;
    if (vector_path) {
        tile_gemm(c, ldc, t, transposed ? 1 : TK, transposed ? TK : 1, b, ldb, nr, inner, d,
                  alpha, true);
        return;
    }
    cblas_sgemm(CblasRowMajor, transposed ? CblasTrans : CblasNoTrans, CblasNoTrans, (int)nr,
                (int)d, (int)inner, alpha, t, TK, b, (int)ldb, 1.0f, c, (int)ldc);
}

/* On a diagonal tile (query block = key block) query row a sees keys up to a only, so the
 * tile is worked in strips of SUB query rows (scores, probabilities, dq) or SUB key rows (dk,
 * dv) that stop at the diagonal, skipping the products of the invisible half. The terms
 * skipped are exact zeros at the end (dq) or start (dk, dv) of each sum, so the results are
 * the same as for the whole tile. Other tiles are one strip. */
#define SUB 16
_Static_assert(TQ == TK, "a diagonal tile is the one whose query block starts at its key block");

/* The keys [0, n) that the strip of query rows [a0, a0 + na) of a tile can see at most. */
static int64_t strip_keys(bool diagonal, int64_t a0, int64_t na, int64_t nk)
{
    return diagonal && a0 + na < nk ? a0 + na : nk;
}

/* p and ds of query rows [0, nq) against keys [0, nk) of the tile: scores, then probabilities,
 * strip by strip. Scores stop at the keys a strip sees; tile_probs zeroes the rest. */
static void tile_forward(float *p, float *ds, const struct kv_tile *t, bool diagonal,
                         const float *q, int64_t ldq, const float *dout, int64_t ldo, int64_t i0,
                         int64_t nq, int64_t j0, int64_t d, float scale, const float *lse,
                         const float *D, int64_t window)
{
    int64_t sub = diagonal ? SUB : nq;
    for (int64_t a0 = 0; a0 < nq; a0 += sub) {
        int64_t na = nq - a0 < sub ? nq - a0 : sub;
        tile_scores(p + a0 * TK, ds + a0 * TK, t, q + a0 * ldq, ldq, dout + a0 * ldo, ldo, na,
                    strip_keys(diagonal, a0, na, t->nk), d, scale);
        tile_probs(p + a0 * TK, ds + a0 * TK, i0 + a0, na, j0, t->nk, lse + a0, D + a0, window);
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
    /* D (B, n_h, S) and per-thread tiles: p, ds (TQ, TK), and K, V transposed (d, TK) */
    const bool vector_path = d % 8 == 0;
    size_t n_d = (size_t)(B * nh * S), per = (size_t)(2 * TQ * TK + 2 * d * TK);
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
        struct kv_tile kv = {.kt = vector_path ? ds + TQ * TK : NULL};
        kv.vt = vector_path ? kv.kt + d * TK : NULL;
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
            kv_tile_load(&kv, k, at->v + (b * S + j0) * ldk + g * d, ldk, nk, d);
            bool diagonal = j0 == i0;
            tile_forward(p, ds, &kv, diagonal, q, ldq, dout, ldo, i0, nq, j0, d, scale, lse, Dr,
                         W);
            /* dq (nq, d) += scale ds k, strip by strip */
            int64_t sub = diagonal ? SUB : nq;
            for (int64_t a0 = 0; a0 < nq; a0 += sub) {
                int64_t na = nq - a0 < sub ? nq - a0 : sub;
                tile_accumulate(dq + a0 * ab->dq_stride, ab->dq_stride, ds + a0 * TK, false, k,
                                ldk, na, strip_keys(diagonal, a0, na, nk), d, scale,
                                vector_path);
            }
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
        struct kv_tile kv = {.kt = vector_path ? ds + TQ * TK : NULL};
        kv.vt = vector_path ? kv.kt + d * TK : NULL;
        kv_tile_load(&kv, at->k + (b * S + j0) * ldk + g * d, at->v + (b * S + j0) * ldk + g * d,
                     ldk, nk, d);
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
                bool diagonal = i0 == j0;
                tile_forward(p, ds, &kv, diagonal, q, ldq, dout, ldo, i0, nq, j0, d, scale, lse,
                             Dr, W);
                /* dv (nk, d) += p^T dout; dk (nk, d) += scale ds^T q, strip by strip of keys:
                 * on the diagonal, key c is seen by query rows c.. only */
                int64_t sub = diagonal ? SUB : nk;
                for (int64_t c0 = 0; c0 < nk; c0 += sub) {
                    int64_t nc = nk - c0 < sub ? nk - c0 : sub, a0 = diagonal ? c0 : 0;
                    if (a0 >= nq)
                        break;
                    size_t at_tile = (size_t)(a0 * TK + c0);
                    tile_accumulate(dv + c0 * ab->dkv_stride, ab->dkv_stride, p + at_tile, true,
                                    dout + a0 * ldo, ldo, nq - a0, nc, d, 1.0f, vector_path);
                    tile_accumulate(dk + c0 * ab->dkv_stride, ab->dkv_stride, ds + at_tile, true,
                                    q + a0 * ldq, ldq, nq - a0, nc, d, scale, vector_path);
                }
            }
        }
    }
    lms_free(D);
    return LMS_OK;
}
