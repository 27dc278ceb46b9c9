/* Weight-magnitude importance: the fallback when no calibration scores are given. A channel's
 * score is the L2 norm of every weight row and column it owns (include/lms/importance.h):
 *   hidden channel c: column c of embed, q, k, v, gate, up, lm_head; row c of o, down
 *   FFN neuron j:     row j of gate and up, column j of down
 *   head h:           rows h*d..h*d+d-1 of q, the same columns of o
 *   query group g:    L2 norm of the scores of its heads (a group is kept or removed as a
 *                     whole, so it weighs what its heads weigh together) */
#include <math.h>
#include <string.h>

#include "lms/alloc.h"
#include "lms/importance.h"

#define CHUNK_ELEMS (1 << 20)

/* Adds the squares of a 2-d view's values into acc[row] (axis 0) or acc[col] (axis 1). */
static enum lms_status add_squares(const struct lms_view *v, int axis, double *acc, float *buf,
                                   struct lms_error *err)
{
    int64_t rows = v->shape[0], cols = v->ndim > 1 ? v->shape[1] : 1;
    int64_t rows_per = CHUNK_ELEMS / cols > 0 ? CHUNK_ELEMS / cols : 1;
    for (int64_t r0 = 0; r0 < rows; r0 += rows_per) {
        int64_t nr = rows - r0 < rows_per ? rows - r0 : rows_per;
        if (cols > CHUNK_ELEMS)
            return lms_error_set(err, LMS_EUNSUPPORTED, "rows of %lld elements are too long",
                                 (long long)cols);
        enum lms_status rc = lms_view_read_as(v, r0 * cols, nr * cols, LMS_DTYPE_F32, buf, err);
        if (rc)
            return rc;
        if (rows > rows_per)
            lms_view_drop_pages(v); /* bound the resident set to one chunk of a large tensor */
        for (int64_t r = 0; r < nr; r++) {
            const float *row = buf + r * cols;
            if (axis == 0) {
                double s = 0;
                for (int64_t c = 0; c < cols; c++)
                    s += (double)row[c] * row[c];
                acc[r0 + r] += s;
            } else {
                for (int64_t c = 0; c < cols; c++)
                    acc[c] += (double)row[c] * row[c];
            }
        }
    }
    return LMS_OK;
}

static enum lms_status add_role(const struct lms_model *m, enum lms_role role, int64_t layer,
                                int axis, double *acc, float *buf, struct lms_error *err)
{
    const struct lms_tensor *t = lms_model_find(m, role, layer);
    if (!t)
        return LMS_OK; /* optional tensors (lm_head when tied) */
    enum lms_status rc = add_squares(t->view, axis, acc, buf, err);
    lms_view_drop_pages(t->view);
    if (rc)
        lms_error_wrap(err, "tensor '%s': ", t->name);
    return rc;
}

static double *zeros(int64_t n)
{
    return lms_calloc((size_t)n, sizeof(double));
}

enum lms_status lms_importance_magnitude(const struct lms_model *m, unsigned mask,
                                         struct lms_importance *imp, struct lms_error *err)
{
    const struct lms_arch *a = &m->arch;
    int64_t L = a->n_layers, H = a->hidden, F = a->ffn, d = a->head_dim;
    int64_t nh = a->n_heads, ng = a->n_groups, r = nh / ng;
    if (mask & LMS_AXIS_GROUPS)
        mask |= LMS_AXIS_HEADS;
    float *buf = lms_malloc(CHUNK_ELEMS * sizeof(float));
    double *rows = zeros(nh * d > F ? nh * d : F);
    if (!buf || !rows) {
        lms_free(buf);
        lms_free(rows);
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    enum lms_status rc = LMS_OK;
    if ((mask & LMS_AXIS_HIDDEN) && !imp->hidden_s) {
        double *h = imp->hidden_s = zeros(H);
        if (!h)
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
        if (!rc)
            rc = add_role(m, LMS_ROLE_EMBED, -1, 1, h, buf, err);
        if (!rc)
            rc = add_role(m, LMS_ROLE_LM_HEAD, -1, 1, h, buf, err);
        static const enum lms_role col_roles[] = {LMS_ROLE_Q, LMS_ROLE_K, LMS_ROLE_V,
                                                  LMS_ROLE_GATE, LMS_ROLE_UP};
        for (int64_t l = 0; l < L && !rc; l++) {
            for (size_t k = 0; k < 5 && !rc; k++)
                rc = add_role(m, col_roles[k], l, 1, h, buf, err);
            if (!rc)
                rc = add_role(m, LMS_ROLE_O, l, 0, h, buf, err);
            if (!rc)
                rc = add_role(m, LMS_ROLE_DOWN, l, 0, h, buf, err);
        }
        for (int64_t c = 0; c < H && !rc; c++)
            h[c] = sqrt(h[c]);
    }
    if (!rc && (mask & LMS_AXIS_FFN) && !imp->ffn_s) {
        if (!(imp->ffn_s = zeros(L * F)))
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
        for (int64_t l = 0; l < L && !rc; l++) {
            double *f = imp->ffn_s + l * F;
            rc = add_role(m, LMS_ROLE_GATE, l, 0, f, buf, err);
            if (!rc)
                rc = add_role(m, LMS_ROLE_UP, l, 0, f, buf, err);
            if (!rc)
                rc = add_role(m, LMS_ROLE_DOWN, l, 1, f, buf, err);
            for (int64_t j = 0; j < F; j++)
                f[j] = sqrt(f[j]);
        }
    }
    if (!rc && (mask & LMS_AXIS_HEADS) && !imp->heads) {
        if (!(imp->heads = zeros(L * nh)))
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
        for (int64_t l = 0; l < L && !rc; l++) {
            memset(rows, 0, (size_t)(nh * d) * sizeof(double));
            rc = add_role(m, LMS_ROLE_Q, l, 0, rows, buf, err);
            if (!rc)
                rc = add_role(m, LMS_ROLE_O, l, 1, rows, buf, err);
            for (int64_t h = 0; h < nh; h++) {
                double s = 0;
                for (int64_t e = 0; e < d; e++)
                    s += rows[h * d + e];
                imp->heads[l * nh + h] = sqrt(s);
            }
        }
    }
    if (!rc && (mask & LMS_AXIS_GROUPS) && !imp->groups) {
        if (!(imp->groups = zeros(L * ng)))
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
        for (int64_t l = 0; l < L && !rc; l++)
            for (int64_t g = 0; g < ng; g++) {
                double s = 0;
                for (int64_t j = 0; j < r; j++) {
                    double hs = imp->heads[l * nh + g * r + j];
                    s += hs * hs;
                }
                imp->groups[l * ng + g] = sqrt(s);
            }
    }
    if (!rc && !imp->method && !(imp->method = lms_strdup("weight-magnitude")))
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
    lms_free(buf);
    lms_free(rows);
    return rc;
}
