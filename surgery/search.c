/* Parameter-budget search: the homogeneous shapes (layers, FFN, hidden, query heads) on a grid
 * that fit a parameter budget, largest first. Parameters are counted exactly from the pruned
 * config (lms_arch_n_params, the same arithmetic the IR's tensors give), so a candidate's count
 * is the count of the checkpoint prune writes for it. lms_search_run then ranks them by LM loss
 * after pruning, on held-out rows of a calibration (include/lms/score.h), and optionally the
 * best few again after a short distillation (surgery/rank.c). */
#include <math.h>
#include <stdlib.h>

#include "lms/alloc.h"
#include "lms/score.h"
#include "lms/surgery.h"
#include "surgery/multiple.h"
#include "surgery/rank.h"

void lms_candidate_arch(const struct lms_arch *a, const struct lms_candidate *c,
                        struct lms_arch *out)
{
    *out = *a;
    out->n_layers = c->n_layers;
    out->ffn = c->ffn;
    out->hidden = c->hidden;
    out->n_heads = c->n_heads;
    out->n_groups = c->n_groups;
}

/* Largest power of two <= x / 16, at most cap, at least 1. */
static int64_t default_step(int64_t x, int64_t cap)
{
    int64_t s = 1;
    while (s * 2 <= x / 16 && s * 2 <= cap)
        s *= 2;
    return s;
}

/* One axis's rule: values are multiples of unit (query heads: of the groups); with
 * --multiple-of, also of mult (1 without), which the step and the bounds are rounded to. */
struct axis_rule {
    const char *name;
    double min_fraction; /* default minimum, of the current value */
    int64_t def_step, unit, mult;
    int64_t multiple_of; /* the M that gave mult, for the message */
};

/* Values of one axis: multiples of step in [min, max], plus max (the current value, or the
 * user's maximum) itself. With r->mult > 1 the step becomes lcm(step, mult) and the bounds are
 * rounded inwards to multiples of mult (the maximum to the largest value valid for unit too),
 * so the values are the unconstrained ones that are multiples of mult, plus the rounded
 * maximum. Fills v (capacity cap) and returns the count. */
static int64_t axis_values(const struct axis_rule *r, struct lms_search_axis ax, int64_t current,
                           int64_t *v, int64_t cap, struct lms_error *err, enum lms_status *rc)
{
    int64_t lo = ax.min ? ax.min : (int64_t)ceil(r->min_fraction * (double)current);
    int64_t hi = ax.max ? ax.max : current;
    int64_t step = ax.step ? ax.step : r->def_step;
    if (lo < 1 || hi > current || lo > hi || step < 1) {
        *rc = lms_error_set(err, LMS_EINVAL,
                            "search range of %s %lld:%lld (step %lld) is not inside 1..%lld",
                            r->name, (long long)lo, (long long)hi, (long long)step,
                            (long long)current);
        return 0;
    }
    /* a step beyond the maximum gives the maximum alone, as hi does: keeps the sums in range */
    if (step > hi)
        step = hi;
    int64_t m = r->mult;
    /* the top: the largest valid value (of unit too) under a constraint, else max itself */
    int64_t top_unit = m > 1 ? lms__lcm(m, r->unit) : 1;
    int64_t mlo = (lo + m - 1) / m * m, mhi = hi / top_unit * top_unit, mstep = lms__lcm(step, m);
    int64_t n = 0;
    for (int64_t x = ((mlo + mstep - 1) / mstep) * mstep; x < mhi && n < cap; x += mstep)
        if (x % r->unit == 0)
            v[n++] = x;
    if (n < cap && mhi >= mlo && mhi % r->unit == 0)
        v[n++] = mhi;
    if (n == 0 && m > 1)
        *rc = lms_error_set(err, LMS_EINVAL,
                            "no shape in the search ranges fits --multiple-of %lld: %s %lld:%lld "
                            "holds no multiple of %lld%s",
                            (long long)r->multiple_of, r->name, (long long)lo, (long long)hi,
                            (long long)lms__lcm(m, r->unit),
                            r->unit > 1 ? " (the head counts n with n x head_dim a multiple of "
                                          "--multiple-of and n a multiple of the query groups)"
                                        : "");
    else if (n == 0)
        *rc = lms_error_set(err, LMS_EINVAL, "search range of %s %lld:%lld has no value that is a "
                                             "multiple of %lld",
                            r->name, (long long)lo, (long long)hi, (long long)r->unit);
    return n;
}

static int cmp_candidate(const void *x, const void *y)
{
    const struct lms_candidate *a = x, *b = y;
    if (a->n_params != b->n_params)
        return a->n_params > b->n_params ? -1 : 1;
    if (a->n_layers != b->n_layers)
        return a->n_layers > b->n_layers ? -1 : 1;
    if (a->ffn != b->ffn)
        return a->ffn > b->ffn ? -1 : 1;
    if (a->hidden != b->hidden)
        return a->hidden > b->hidden ? -1 : 1;
    return (a->n_heads < b->n_heads) - (a->n_heads > b->n_heads);
}

#define AXIS_CAP 4096

enum lms_status lms_search_candidates(const struct lms_arch *a, const struct lms_search_opts *o,
                                      struct lms_candidate **out, int64_t *n_out, int64_t *n_fit,
                                      struct lms_error *err)
{
    *out = NULL;
    *n_out = *n_fit = 0;
    if (o->target_params < 1)
        return lms_error_set(err, LMS_EINVAL, "the parameter budget must be positive");
    if (o->multiple_of < 0 || o->multiple_of > LMS_MULTIPLE_OF_MAX)
        return lms_error_set(err, LMS_EINVAL, "--multiple-of %lld is not in 1..%lld",
                             (long long)o->multiple_of, (long long)LMS_MULTIPLE_OF_MAX);
    enum lms_status rc = LMS_OK;
    int64_t *vl = lms_malloc(4 * AXIS_CAP * sizeof(int64_t));
    if (!vl)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    int64_t *vf = vl + AXIS_CAP, *vh = vf + AXIS_CAP, *va = vh + AXIS_CAP;
    /* depth: even layer counts (as the reference recipes use); width: 40% at most by default */
    int64_t mult = o->multiple_of > 1 ? o->multiple_of : 1;
    const struct axis_rule rl = {"layers", 0.8, 2, 1, 1, 1},
                           rf = {"ffn_hidden_size", 0.6, default_step(a->ffn, 512), 1, mult, mult},
                           rh = {"hidden_size", 0.6, default_step(a->hidden, 256), 1, mult, mult},
                           ra = {"num_attention_heads", 0.6, a->n_groups, a->n_groups,
                                 lms__heads_unit(mult, a->head_dim), mult};
    int64_t nl = axis_values(&rl, o->layers, a->n_layers, vl, AXIS_CAP, err, &rc);
    int64_t nf = rc ? 0 : axis_values(&rf, o->ffn, a->ffn, vf, AXIS_CAP, err, &rc);
    int64_t nh = rc ? 0 : axis_values(&rh, o->hidden, a->hidden, vh, AXIS_CAP, err, &rc);
    int64_t na = rc ? 0 : axis_values(&ra, o->heads, a->n_heads, va, AXIS_CAP, err, &rc);
    if (rc) {
        lms_free(vl);
        return rc;
    }
    double grid = (double)nl * (double)nf * (double)nh * (double)na;
    if (grid > LMS_SEARCH_GRID_CAP) {
        lms_free(vl);
        return lms_error_set(err, LMS_EINVAL,
                             "the search grid has %.0f shapes (%lld layer counts x %lld FFN x "
                             "%lld hidden x %lld head counts), more than %d: narrow the ranges "
                             "or coarsen the steps",
                             grid, (long long)nl, (long long)nf, (long long)nh, (long long)na,
                             LMS_SEARCH_GRID_CAP);
    }
    struct lms_candidate *c = lms_malloc((size_t)grid * sizeof(*c) + 1);
    if (!c) {
        lms_free(vl);
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    int64_t n = 0;
    for (int64_t i = 0; i < nl; i++)
        for (int64_t j = 0; j < nf; j++)
            for (int64_t k = 0; k < nh; k++)
                for (int64_t h = 0; h < na; h++) {
                    struct lms_candidate x = {.n_layers = vl[i], .ffn = vf[j], .hidden = vh[k],
                                              .n_heads = va[h], .n_groups = a->n_groups,
                                              .loss = NAN, .distill_loss = NAN};
                    struct lms_arch pa;
                    lms_candidate_arch(a, &x, &pa);
                    x.n_params = lms_arch_n_params(&pa);
                    if (x.n_params <= o->target_params)
                        c[n++] = x;
                }
    lms_free(vl);
    if (n == 0) {
        lms_free(c);
        if (mult > 1)
            return lms_error_set(err, LMS_EINVAL,
                                 "no shape in the search ranges fits %lld parameters with every "
                                 "width a multiple of %lld (widen the ranges with the --search-* "
                                 "options, or lower --multiple-of)",
                                 (long long)o->target_params, (long long)mult);
        return lms_error_set(err, LMS_EINVAL,
                             "no shape in the search ranges fits %lld parameters (widen the "
                             "ranges with the --search-* options)",
                             (long long)o->target_params);
    }
    qsort(c, (size_t)n, sizeof(*c), cmp_candidate);
    int64_t k = o->max_candidates > 0 ? o->max_candidates : 10;
    *n_fit = n;
    *n_out = n < k ? n : k;
    *out = c;
    return LMS_OK;
}

void lms_candidate_targets(const struct lms_candidate *c, struct lms_prune_targets *t)
{
    t->n_layers = c->n_layers;
    t->ffn = c->ffn;
    t->hidden = c->hidden;
    t->n_heads = c->n_heads;
    t->n_groups = c->n_groups;
}

/* Lower loss first; a candidate without a loss last; equal losses: the larger first. */
static int cmp_loss(const void *x, const void *y)
{
    const struct lms_candidate *a = x, *b = y;
    bool an = !isfinite(a->loss), bn = !isfinite(b->loss);
    if (an != bn)
        return an ? 1 : -1;
    if (!an && a->loss != b->loss)
        return a->loss < b->loss ? -1 : 1;
    return (a->n_params < b->n_params) - (a->n_params > b->n_params);
}

/* Prunes m to candidate c (depth as t says) and measures its held-out loss into c->loss. */
static enum lms_status evaluate(const struct lms_model *m, const struct lms_prune_targets *t,
                                const struct lms_importance *imp, struct lms_calib *cal,
                                struct lms_candidate *c, struct lms_error *err)
{
    struct lms_prune_targets ct = *t;
    lms_candidate_targets(c, &ct);
    struct lms_prune_plan plan;
    struct lms_model pm;
    enum lms_status rc = lms_prune_plan_calibrated(m, &ct, imp, cal, &plan, NULL, err);
    if (!rc && !(rc = lms_prune_apply(m, &plan, &pm, err))) {
        lms_assert(lms_model_n_params(&pm) == c->n_params);
        rc = lms_calib_eval(cal, &pm, &c->loss, err);
        lms_model_release(&pm);
    }
    lms_prune_plan_release(&plan);
    return rc;
}

enum lms_status lms_search_run(const struct lms_model *m, const struct lms_prune_targets *t,
                               const struct lms_search_opts *o, const struct lms_importance *imp,
                               struct lms_calib *cal, struct lms_search_result *res,
                               struct lms_error *err)
{
    *res = (struct lms_search_result){0};
    if (o->rank.by == LMS_RANK_DISTILL && !cal)
        return lms_error_set(err, LMS_EINVAL, "ranking by distillation needs calibration data "
                             "with held-out rows");
    struct lms_candidate *c;
    int64_t n, n_fit;
    enum lms_status rc = lms_search_candidates(&m->arch, o, &c, &n, &n_fit, err);
    if (rc)
        return rc;
    bool ranked = cal != NULL;
    for (int64_t i = 0; ranked && i < n && !rc; i++) {
        rc = evaluate(m, t, imp, cal, &c[i], err);
        if (o->on_candidate)
            o->on_candidate(o->ctx, i, n, &c[i]);
    }
    if (rc) {
        lms_free(c);
        return rc;
    }
    if (ranked)
        qsort(c, (size_t)n, sizeof(*c), cmp_loss);
    for (int64_t i = 0; ranked && i < n; i++)
        c[i].loss_rank = i + 1;
    *res = (struct lms_search_result){.c = c, .n = n, .n_fit = n_fit, .ranked = ranked};
    if (ranked && o->rank.by == LMS_RANK_DISTILL &&
        (rc = lms__search_rank_distill(m, t, imp, cal, &o->rank, res, err)))
        lms_search_result_release(res);
    return rc;
}

void lms_search_result_release(struct lms_search_result *res)
{
    lms_free(res->c);
    *res = (struct lms_search_result){0};
}
