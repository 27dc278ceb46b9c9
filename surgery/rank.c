/* Ranking the budget search's best candidates after a short distillation (include/lms/surgery.h,
 * LMS_RANK_DISTILL). The order of pruned models right after pruning is not the order after
 * training, so the best few by post-prune loss are each distilled from the model being pruned
 * for a fixed token budget and scored again on the held-out rows.
 *
 * Everything a run writes (the rows it trains on, each pruned candidate, each distilled
 * student) lives in one temporary directory, registered for the signal handler and removed
 * before returning, whatever happened. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lms/alloc.h"
#include "lms/distill_run.h"
#include "lms/format.h"
#include "lms/outdir.h"
#include "lms/score.h"
#include "lms/surgery.h"
#include "lms/tempfiles.h"
#include "surgery/rank.h"

#define RANK_LR 1e-4
#define RANK_MIN_LR 1e-5
#define RANK_PATH_MAX 4096

/* Rows per step: one micro-batch of the calibration's size. */
static int64_t rank_steps(const struct lms_search_rank_opts *ro, const struct lms_calib_opts *co)
{
    int64_t per_step = co->mbs * co->seq_len;
    return per_step > 0 ? ro->tokens / per_step : 0;
}

int64_t lms_search_rank_rows(const struct lms_search_rank_opts *ro,
                             const struct lms_calib_opts *co)
{
    if (ro->by != LMS_RANK_DISTILL)
        return 0;
    /* rows of S + 1 tokens at stride S over R windows of S tokens: R - 1 of them fit */
    return rank_steps(ro, co) * co->mbs + 1;
}

void lms_search_rank_recipe(const struct lms_search_rank_opts *ro,
                            const struct lms_calib_opts *co, struct lms_distill_opts *out)
{
    lms_distill_opts_default(out);
    int64_t steps = rank_steps(ro, co);
    struct lms_device dev = {.kind = LMS_DEVICE_CPU};
    struct lms_error ignored;
    if (co->device && lms_device_parse(co->device, &dev, &ignored))
        dev = (struct lms_device){.kind = LMS_DEVICE_CPU}; /* the calibration opened it */
    out->split = "1"; /* the rows file is all training data */
    out->seq = co->seq_len;
    out->mbs = out->gbs = co->mbs;
    out->max_steps = steps;
    out->warmup = steps / 10;
    out->lr = RANK_LR;
    out->min_lr = RANK_MIN_LR;
    lms_optim_preset_apply(LMS_OPTIM_GPT, &out->adam);
    out->loss.features = LMS_FEATURES_NONE;
    out->val_batches = 0;
    out->log_interval = steps > 0 ? steps : 1;
    out->save_state = LMS_DISTILL_SAVE_STATE_NEVER;
    out->device = dev;
    out->threads = (int)co->threads;
    out->precision = co->precision;
}

/* Lower post-distillation loss first; then the post-prune order. */
static int cmp_distilled(const void *x, const void *y)
{
    const struct lms_candidate *a = x, *b = y;
    bool an = !isfinite(a->distill_loss), bn = !isfinite(b->distill_loss);
    if (an != bn)
        return an ? 1 : -1;
    if (!an && a->distill_loss != b->distill_loss)
        return a->distill_loss < b->distill_loss ? -1 : 1;
    return (a->loss_rank > b->loss_rank) - (a->loss_rank < b->loss_rank);
}

void lms__search_rank_order(struct lms_candidate *c, int64_t k)
{
    qsort(c, (size_t)k, sizeof *c, cmp_distilled);
    for (int64_t i = 0; i < k; i++)
        c[i].distill_rank = i + 1;
}

/* One run's temporary directory and what goes in it. */
struct rank_dir {
    char root[RANK_PATH_MAX];
    char rows[RANK_PATH_MAX];
};

static enum lms_status rank_dir_make(const struct lms_search_rank_opts *ro, struct rank_dir *d,
                                     struct lms_error *err)
{
    const char *base = ro->tmp_dir ? ro->tmp_dir : getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    int n = snprintf(d->root, sizeof d->root, "%s/lms-rank-XXXXXX", base);
    if (n < 0 || (size_t)n >= sizeof d->root)
        return lms_error_set(err, LMS_EINVAL, "temporary directory '%s' is too long a path",
                             base);
    if (!mkdtemp(d->root))
        return lms_error_set(err, LMS_EIO, "creating a temporary directory in '%s': %s", base,
                             strerror(errno));
    lms_temp_track(d->root);
    snprintf(d->rows, sizeof d->rows, "%s/rows.i32", d->root);
    return LMS_OK;
}

static void rank_dir_remove(struct rank_dir *d)
{
    lms_remove_tree(d->root);
    lms_temp_forget(d->root);
}

struct step_watch {
    const struct lms_search_rank_opts *ro;
    int64_t i, k;
};

static void on_stepped(void *ctx, const struct lms_distill_run *r)
{
    struct step_watch *w = ctx;
    if (w->ro->on_step)
        w->ro->on_step(w->ro->ctx, w->i, w->k, r->step, r->o.max_steps);
}

/* Prunes m to c, writes it to path (Hugging Face layout, the input's dtypes). */
static enum lms_status write_candidate(const struct lms_model *m,
                                       const struct lms_prune_targets *t,
                                       const struct lms_importance *imp, struct lms_calib *cal,
                                       const struct lms_candidate *c, const char *path,
                                       struct lms_error *err)
{
    struct lms_prune_targets ct = *t;
    lms_candidate_targets(c, &ct);
    ct.drop_layers = ct.keep_layers = NULL;
    struct lms_prune_plan plan;
    struct lms_model pm;
    enum lms_status rc = lms_prune_plan_calibrated(m, &ct, imp, cal, &plan, NULL, err);
    if (!rc && !(rc = lms_prune_apply(m, &plan, &pm, err))) {
        struct lms_write_opts wo = {.dtype = LMS_DTYPE_COUNT};
        struct lms_write_result res;
        rc = lms_checkpoint_write(lms_format_find("hf"), &pm, path, &wo, &res, err);
        lms_model_release(&pm);
    }
    lms_prune_plan_release(&plan);
    return rc;
}

/* Candidate i: pruned into the directory, distilled, read back and scored. */
static enum lms_status distill_one(const struct lms_model *m, const struct lms_prune_targets *t,
                                   const struct lms_importance *imp, struct lms_calib *cal,
                                   const struct lms_search_rank_opts *ro, const struct rank_dir *d,
                                   int64_t i, int64_t k, struct lms_candidate *c,
                                   struct lms_error *err)
{
    char student[RANK_PATH_MAX], out[RANK_PATH_MAX], state[RANK_PATH_MAX];
    snprintf(student, sizeof student, "%s/candidate-%lld", d->root, (long long)i + 1);
    snprintf(out, sizeof out, "%s/distilled-%lld", d->root, (long long)i + 1);
    snprintf(state, sizeof state, "%s/distilled-%lld.state", d->root, (long long)i + 1);
    enum lms_status rc = write_candidate(m, t, imp, cal, c, student, err);
    struct lms_blend_source src = {.path = (char *)d->rows, .weight = 1};
    struct step_watch w = {.ro = ro, .i = i, .k = k};
    struct lms_distill_opts o;
    lms_search_rank_recipe(ro, lms_calib_options(cal), &o);
    o.student = student;
    o.teacher = ro->teacher;
    o.src = &src;
    o.n_src = 1;
    o.out = out;
    o.state_dir = state;
    o.ev = (struct lms_distill_events){.ctx = &w, .stepped = on_stepped};
    if (!rc)
        rc = lms_distill_run_all(&o, err);
    struct lms_model dm;
    if (!rc && !(rc = lms_checkpoint_read(out, &dm, err))) {
        rc = lms_calib_eval(cal, &dm, &c->distill_loss, err);
        lms_model_release(&dm);
    }
    if (rc)
        lms_error_wrap(err, "ranking candidate %lld by distillation", (long long)c->loss_rank);
    lms_remove_tree(student); /* keeps the directory at one candidate's size */
    lms_remove_tree(out);
    lms_remove_tree(state);
    return rc;
}

enum lms_status lms__search_rank_distill(const struct lms_model *m,
                                         const struct lms_prune_targets *t,
                                         const struct lms_importance *imp,
                                         struct lms_calib *cal,
                                         const struct lms_search_rank_opts *ro,
                                         struct lms_search_result *res, struct lms_error *err)
{
    const struct lms_calib_opts *co = lms_calib_options(cal);
    if (!ro->teacher)
        return lms_error_set(err, LMS_EINVAL, "ranking by distillation needs the teacher's path");
    if (rank_steps(ro, co) < 1)
        return lms_error_set(err, LMS_EINVAL, "--rank-tokens %lld is less than one step of "
                             "%lld x %lld tokens", (long long)ro->tokens, (long long)co->mbs,
                             (long long)co->seq_len);
    int64_t k = ro->top < res->n ? ro->top : res->n;
    struct rank_dir d;
    enum lms_status rc = rank_dir_make(ro, &d, err);
    if (rc)
        return rc;
    int64_t first = co->n_samples + co->eval_samples;
    rc = lms_calib_write_rows(cal, first, first + lms_search_rank_rows(ro, co), d.rows, err);
    for (int64_t i = 0; !rc && i < k; i++) {
        rc = distill_one(m, t, imp, cal, ro, &d, i, k, &res->c[i], err);
        if (!rc && ro->on_distilled)
            ro->on_distilled(ro->ctx, i, k, &res->c[i]);
    }
    rank_dir_remove(&d);
    if (rc)
        return rc;
    lms__search_rank_order(res->c, k);
    res->distilled = true;
    res->n_distilled = k;
    return LMS_OK;
}
