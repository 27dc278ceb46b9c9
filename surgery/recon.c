/* Weight reconstruction after width pruning (include/lms/recon.h): the least-squares refit of
 * the kept input columns of down_proj and o_proj, and its application to a pruned model.
 *
 * The refit minimises, over the calibration tokens, || W a + b - W'_K a_K - b' ||^2 (b, b'
 * only where the projection has a bias). Its normal equations are W'_K G[K, K] = W G[:, K]
 * with G the (bias-extended) gram matrix, solved in double through the Cholesky factor of
 * G[K, K] + lambda I: the matrix is symmetric and, with the ridge, positive definite, and
 * Cholesky is half the work of an LU and numerically stable for it. */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "lms/alloc.h"
#include "lms/dtype.h"
#include "lms/recon.h"
#include "lms/storage.h"
#include "lms/surgery.h"

#define CHOL_BLOCK 64

/* Unblocked Cholesky of the n x n lower triangle at a (row stride ld), in place. */
static bool chol_small(double *a, int64_t n, int64_t ld)
{
    for (int64_t j = 0; j < n; j++) {
        double d = a[j * ld + j];
        for (int64_t p = 0; p < j; p++)
            d -= a[j * ld + p] * a[j * ld + p];
        if (!(d > 0) || !isfinite(d))
            return false;
        d = sqrt(d);
        a[j * ld + j] = d;
        for (int64_t i = j + 1; i < n; i++) {
            double s = a[i * ld + j];
            for (int64_t p = 0; p < j; p++)
                s -= a[i * ld + p] * a[j * ld + p];
            a[i * ld + j] = s / d;
        }
    }
    return true;
}

/* Blocked (left-looking) Cholesky A = L L^T of the n x n row-major matrix a, lower triangle in
 * place; BLAS does the bulk of the work. False when A is not positive definite. */
static bool cholesky(double *a, int64_t n)
{
    for (int64_t j = 0; j < n; j += CHOL_BLOCK) {
        int64_t jb = n - j < CHOL_BLOCK ? n - j : CHOL_BLOCK, rest = n - j - jb;
        double *ajj = a + j * n + j;
        if (j)
            cblas_dsyrk(CblasRowMajor, CblasLower, CblasNoTrans, (int)jb, (int)j, -1.0,
                        a + j * n, (int)n, 1.0, ajj, (int)n);
        if (!chol_small(ajj, jb, n))
            return false;
        if (!rest)
            continue;
        double *below = a + (j + jb) * n + j;
        if (j)
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rest, (int)jb, (int)j,
                        -1.0, a + (j + jb) * n, (int)n, a + j * n, (int)n, 1.0, below, (int)n);
        cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, (int)rest,
                    (int)jb, 1.0, ajj, (int)n, below, (int)n);
    }
    return true;
}

/* Entry (i, j) of the gram matrix extended by the constant input at index n. */
static double gram_at(const double *gram, const double *sum, int64_t n, int64_t n_tokens,
                      int64_t i, int64_t j)
{
    if (i < n && j < n)
        return gram[i * n + j];
    if (i < n)
        return sum[i];
    if (j < n)
        return sum[j];
    return (double)n_tokens;
}

enum lms_status lms_recon_solve(const double *w, const double *bias, int64_t rows, int64_t n,
                                const double *gram, const double *sum, int64_t n_tokens,
                                const int64_t *keep, int64_t k, double ridge, double *w_out,
                                double *bias_out, struct lms_error *err)
{
    int64_t m = n + (bias != NULL), kk = k + (bias != NULL); /* extended input and kept set */
    if (rows < 1 || k < 1 || k > n || n_tokens < 1 || rows > INT32_MAX || m > INT32_MAX)
        return lms_error_set(err, LMS_EINVAL, "refit: %lld x %lld weight, %lld of %lld columns "
                             "kept, %lld tokens", (long long)rows, (long long)n, (long long)k,
                             (long long)n, (long long)n_tokens);
    double *gk = lms_malloc((size_t)(m * kk) * sizeof(double));  /* G[:, K] */
    double *mk = lms_malloc((size_t)(kk * kk) * sizeof(double)); /* G[K, K] + lambda I */
    double *wx = bias ? lms_malloc((size_t)(rows * m) * sizeof(double)) : NULL;
    double *x = lms_malloc((size_t)(rows * kk) * sizeof(double));
    enum lms_status rc = LMS_OK;
    if (!gk || !mk || !x || (bias && !wx)) {
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory for the refit");
        goto out;
    }
    for (int64_t i = 0; i < m; i++)
        for (int64_t c = 0; c < kk; c++)
            gk[i * kk + c] = gram_at(gram, sum, n, n_tokens, i, c < k ? keep[c] : n);
    double diag = 0;
    for (int64_t c = 0; c < k; c++)
        diag += gram[keep[c] * n + keep[c]];
    double lambda = ridge * diag / (double)k;
    for (int64_t r = 0; r < kk; r++)
        memcpy(mk + r * kk, gk + (r < k ? keep[r] : n) * kk, (size_t)kk * sizeof(double));
    for (int64_t c = 0; c < k; c++) /* the constant input is not shrunk */
        mk[c * kk + c] += lambda;
    if (!cholesky(mk, kk)) {
        rc = lms_error_set(err, LMS_EINVAL, "refit: the kept channels' gram matrix is not "
                           "positive definite (no calibration signal in them?)");
        goto out;
    }
    const double *wm = w;
    if (bias) {
        for (int64_t r = 0; r < rows; r++) {
            memcpy(wx + r * m, w + r * n, (size_t)n * sizeof(double));
            wx[r * m + n] = bias[r];
        }
        wm = wx;
    }
    /* X = W G[:, K], then X (L L^T)^-1 by two triangular solves from the right */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)kk, (int)m, 1.0, wm,
                (int)m, gk, (int)kk, 0.0, x, (int)kk);
    cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, (int)rows,
                (int)kk, 1.0, mk, (int)kk, x, (int)kk);
    cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, (int)rows,
                (int)kk, 1.0, mk, (int)kk, x, (int)kk);
    for (int64_t r = 0; r < rows; r++) {
        memcpy(w_out + r * k, x + r * kk, (size_t)k * sizeof(double));
        if (bias)
            bias_out[r] = x[r * kk + k];
    }
    for (int64_t i = 0; i < rows * k; i++)
        if (!isfinite(w_out[i])) {
            rc = lms_error_set(err, LMS_EINVAL, "refit: the solution is not finite");
            break;
        }
out:
    lms_free(gk);
    lms_free(mk);
    lms_free(wx);
    lms_free(x);
    return rc;
}

/* ---- applying it to a pruned model ------------------------------------------------------ */

/* The input columns layer l of the plan keeps in the projection of kind k (NULL: all of them,
 * nothing to refit). OUT: *cols (lms_free), *n. */
static enum lms_status kept_columns(const struct lms_prune_plan *p, const struct lms_arch *a,
                                    enum lms_gram_kind k, int64_t l, int64_t **cols, int64_t *n,
                                    struct lms_error *err)
{
    *cols = NULL;
    *n = 0;
    if (k == LMS_GRAM_DOWN) {
        if (!p->ffn || p->ffn[l].n == a->ffn)
            return LMS_OK;
        *n = p->ffn[l].n;
        *cols = lms_malloc((size_t)*n * sizeof(int64_t));
        if (!*cols)
            return lms_error_set(err, LMS_ENOMEM, "out of memory");
        memcpy(*cols, p->ffn[l].index, (size_t)*n * sizeof(int64_t));
        return LMS_OK;
    }
    /* heads: an explicit list, or every head of the kept groups (heads of a group are
     * contiguous) */
    int64_t r = a->n_heads / a->n_groups, d = a->head_dim, nh;
    const int64_t *heads = p->heads ? p->heads[l].index : NULL;
    const struct lms_keep *g = p->groups ? &p->groups[l] : NULL;
    nh = heads ? p->heads[l].n : g ? g->n * r : a->n_heads;
    if (nh == a->n_heads)
        return LMS_OK;
    *n = nh * d;
    *cols = lms_malloc((size_t)*n * sizeof(int64_t));
    if (!*cols)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    for (int64_t i = 0; i < nh; i++) {
        int64_t h = heads ? heads[i] : g->index[i / r] * r + i % r;
        for (int64_t e = 0; e < d; e++)
            (*cols)[i * d + e] = h * d + e;
    }
    return LMS_OK;
}

/* Reads the rows of v kept by the hidden cut (all when hidden is NULL) as double. */
static enum lms_status read_rows(struct lms_view *v, const struct lms_keep *hidden, double *dst,
                                 struct lms_error *err)
{
    struct lms_view *sel = lms_view_ref(v);
    enum lms_status rc = LMS_OK;
    if (hidden && hidden->index) {
        lms_view_release(sel);
        rc = lms_view_new_select(v, 0, hidden->index, hidden->n, &sel, err);
    }
    if (!rc) {
        rc = lms_view_read_as(sel, 0, lms_view_numel(sel), LMS_DTYPE_F64, dst, err);
        lms_view_release(sel);
    }
    return rc;
}

/* Replaces t's view by host memory holding values (n doubles, shape of the old view) in the
 * old view's dtype, rounded to nearest even. */
static enum lms_status replace_view(struct lms_tensor *t, const double *values,
                                    struct lms_error *err)
{
    struct lms_view *old = t->view;
    enum lms_dtype dt = lms_dtype_is_castable(old->dtype) ? old->dtype : LMS_DTYPE_F32;
    size_t n = (size_t)lms_view_numel(old);
    struct lms_storage *st;
    enum lms_status rc = lms_storage_new_host(n * lms_dtype_size(dt), &st, err);
    if (rc)
        return rc;
    lms_cast(st->base, dt, values, LMS_DTYPE_F64, n);
    struct lms_view *v;
    rc = lms_view_new_storage(st, 0, dt, old->ndim, old->shape, &v, err);
    lms_storage_release(st);
    if (rc)
        return rc;
    t->view = v;
    lms_view_release(old);
    return LMS_OK;
}

struct refit_buffers {
    double *gram, *sum, *w, *w_out, *bias, *bias_out;
};

/* Refits one projection of out's layer nl (in's layer l) and replaces its weight (and bias). */
static enum lms_status refit_layer(const struct lms_model *in, const struct lms_prune_plan *p,
                                   const struct lms_gram *g, enum lms_gram_kind k, int64_t l,
                                   int64_t nl, struct lms_model *out, struct refit_buffers *b,
                                   bool *done, struct lms_error *err)
{
    enum lms_role wrole = k == LMS_GRAM_DOWN ? LMS_ROLE_DOWN : LMS_ROLE_O;
    enum lms_role brole = k == LMS_GRAM_DOWN ? LMS_ROLE_COUNT : LMS_ROLE_O_BIAS;
    int64_t *cols, nk;
    enum lms_status rc = kept_columns(p, &in->arch, k, l, &cols, &nk, err);
    if (rc || !cols)
        return rc;
    const struct lms_tensor *w_in = lms_model_find(in, wrole, l);
    struct lms_tensor *w_out = lms_model_find(out, wrole, nl);
    const struct lms_tensor *b_in = brole != LMS_ROLE_COUNT ? lms_model_find(in, brole, l) : NULL;
    struct lms_tensor *b_out = b_in ? lms_model_find(out, brole, nl) : NULL;
    int64_t n = g->dim[k], rows = w_out ? w_out->view->shape[0] : 0;
    if (!w_in || !w_out || w_in->view->ndim != 2 || w_in->view->shape[1] != n ||
        w_out->view->shape[1] != nk || (b_in && !b_out)) {
        lms_free(cols);
        return lms_error_set(err, LMS_EINVAL, "layer %lld: no %s projection of the expected "
                             "shape to refit", (long long)l, k == LMS_GRAM_DOWN ? "down" : "o");
    }
    rc = lms_gram_layer(g, k, l, b->gram, b->sum, err);
    if (!rc)
        rc = read_rows(w_in->view, &p->hidden, b->w, err);
    if (!rc && b_in)
        rc = read_rows(b_in->view, &p->hidden, b->bias, err);
    if (!rc)
        rc = lms_recon_solve(b->w, b_in ? b->bias : NULL, rows, n, b->gram, b->sum, g->n_tokens,
                             cols, nk, LMS_RECON_RIDGE, b->w_out, b->bias_out, err);
    if (!rc)
        rc = replace_view(w_out, b->w_out, err);
    if (!rc && b_in)
        rc = replace_view(b_out, b->bias_out, err);
    if (rc)
        lms_error_wrap(err, "layer %lld %s: ", (long long)l,
                       k == LMS_GRAM_DOWN ? "down_proj" : "o_proj");
    *done = !rc;
    lms_free(cols);
    return rc;
}

enum lms_status lms_prune_reconstruct(const struct lms_model *in, const struct lms_prune_plan *p,
                                      const struct lms_gram *g, struct lms_model *out,
                                      int64_t *n_refit, struct lms_error *err)
{
    *n_refit = 0;
    enum lms_status rc = lms_gram_check(g, &in->arch, NULL, err);
    if (rc)
        return rc;
    int64_t big = g->dim[0] > g->dim[1] ? g->dim[0] : g->dim[1];
    int64_t H = in->arch.hidden;
    struct refit_buffers b = {
        .gram = lms_malloc((size_t)(big * big) * sizeof(double)),
        .sum = lms_malloc((size_t)big * sizeof(double)),
        .w = lms_malloc((size_t)(H * big) * sizeof(double)),
        .w_out = lms_malloc((size_t)(H * big) * sizeof(double)),
        .bias = lms_malloc((size_t)H * sizeof(double)),
        .bias_out = lms_malloc((size_t)H * sizeof(double))};
    if (!b.gram || !b.sum || !b.w || !b.w_out || !b.bias || !b.bias_out)
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory for the refit");
    for (int64_t nl = 0; !rc && nl < out->arch.n_layers; nl++) {
        int64_t l = p->layers.index ? p->layers.index[nl] : nl;
        for (int k = 0; !rc && k < LMS_GRAM_KINDS; k++) {
            bool done = false;
            rc = refit_layer(in, p, g, (enum lms_gram_kind)k, l, nl, out, &b, &done, err);
            *n_refit += done;
        }
    }
    lms_free(b.gram), lms_free(b.sum), lms_free(b.w), lms_free(b.w_out), lms_free(b.bias),
        lms_free(b.bias_out);
    return rc;
}
