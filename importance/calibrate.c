/* Calibration for pruning (include/lms/score.h): the score engine on the user's data for what
 * the targets need, block metrics rescored per depth on demand, and LM loss of candidate
 * shapes on held-out windows.
 *
 * Rows: calibration reads rows [0, N) of the score engine's row order; the held-out rows are
 * the next [N, N + E), so that no candidate is judged on the windows its channels were ranked
 * by. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "lms/alloc.h"
#include "lms/backend.h"
#include "lms/dataset.h"
#include "lms/engine.h"
#include "lms/score.h"

#define MAX_BLOCK_RUNS 64

struct lms_calib {
    struct lms_calib_opts o;
    struct lms_dataset *ds;
    struct lms_backend *be;
    struct lms_sampler *smp;      /* held-out rows */
    enum lms_layer_metric metric; /* of the calibration pass; NONE when no depth metric ran */
    double seconds;
    /* a block metric recomputed for other block lengths (the budget search's depths) */
    struct lms_importance blocks[MAX_BLOCK_RUNS];
    struct lms_gram gram;         /* with o.gram: the reconstruction statistics */
    int n_blocks;
    char describe[600];
};

void lms_calib_opts_default(struct lms_calib_opts *o)
{
    *o = (struct lms_calib_opts){.n_samples = 1024, .seq_len = 4096, .mbs = 4, .seed = 1234,
                                 .device = "cpu", .eval_samples = 16};
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* One score pass, reported to the observer as one labelled pass. */
static enum lms_status score(struct lms_calib *c, const struct lms_model *m, unsigned axes,
                             enum lms_layer_metric metric, int64_t block, bool gather_gram,
                             const char *label, struct lms_importance *imp,
                             struct lms_error *err)
{
    const struct lms_calib_progress *p = &c->o.progress;
    struct lms_score_opts so;
    lms_score_opts_default(&so);
    so.row_begin = 0;
    so.row_end = c->o.n_samples;
    so.seq_len = c->o.seq_len;
    so.micro_batch = c->o.mbs;
    so.seed = (uint64_t)c->o.seed;
    so.axes = axes | (metric != LMS_LAYER_METRIC_NONE ? LMS_AXIS_LAYERS : 0);
    so.layer_metric = metric;
    so.block_size = block;
    so.data_name = c->o.data;
    so.model_name = c->o.model;
    so.gram = gather_gram ? &c->gram : NULL;
    so.progress = p->step;
    so.progress_ctx = p->ctx;
    if (p->begin)
        p->begin(p->ctx, label);
    double t0 = now();
    enum lms_status rc = lms_score_run(m, c->be, c->ds, &so, imp, err);
    if (p->end)
        p->end(p->ctx, rc == LMS_OK);
    c->seconds += now() - t0;
    return rc;
}

/* Refuses data too short for the calibration rows plus the held-out rows. */
static enum lms_status check_held_out(const struct lms_calib *c, struct lms_error *err)
{
    const struct lms_calib_opts *o = &c->o;
    int64_t avail = lms_score_rows_available(c->ds, o->seq_len);
    if (o->n_samples + o->eval_samples + o->reserve_rows <= avail)
        return LMS_OK;
    if (o->reserve_rows)
        return lms_error_set(err, LMS_EINVAL,
                             "dataset '%s' holds %lld windows of %lld tokens: the budget search "
                             "needs %lld for calibration, %lld more held out and %lld more for "
                             "the ranking distillation (--num-train-samples, --eval-samples, "
                             "--rank-tokens)",
                             o->data, (long long)avail, (long long)o->seq_len,
                             (long long)o->n_samples, (long long)o->eval_samples,
                             (long long)o->reserve_rows);
    return lms_error_set(err, LMS_EINVAL,
                         "dataset '%s' holds %lld windows of %lld tokens: the budget search "
                         "needs %lld for calibration and %lld more held out "
                         "(--num-train-samples, --eval-samples)",
                         o->data, (long long)avail, (long long)o->seq_len,
                         (long long)o->n_samples, (long long)o->eval_samples);
}

enum lms_status lms_calib_run(const struct lms_model *m, const struct lms_calib_opts *o,
                              struct lms_calib **out, struct lms_importance *imp,
                              struct lms_error *err)
{
    *out = NULL;
    struct lms_calib *c = lms_calloc(1, sizeof(*c));
    if (!c)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    c->o = *o;
    snprintf(c->describe, sizeof c->describe, "%lld windows x %lld tokens of '%s'",
             (long long)o->n_samples, (long long)o->seq_len, o->data);
    struct lms_backend_opts bo = {.n_threads = (int)o->threads, .precision = o->precision};
    enum lms_status rc = lms_data_open(o->data, &c->ds, err);
    if (!rc && o->held_out)
        rc = check_held_out(c, err);
    if (!rc)
        rc = lms_backend_open_name(o->device, &bo, &c->be, err);
    /* a block metric needs its block length; without one (the budget search) the blocks are
     * scored per candidate depth by lms_calib_scores_for */
    c->metric = o->metric;
    int64_t block = 0;
    if (lms_layer_metric_is_block(c->metric)) {
        if (o->n_drop > 0)
            block = o->n_drop;
        else
            c->metric = LMS_LAYER_METRIC_NONE;
    }
    /* only what the targets need: no width axis and no depth metric runs nothing */
    if (!rc && (o->width_axes || c->metric != LMS_LAYER_METRIC_NONE || o->gram)) {
        lms_importance_release(imp);
        rc = score(c, m, o->width_axes, c->metric, block, o->gram, "calibrating", imp, err);
    } else if (!rc) {
        c->describe[0] = '\0';
    }
    if (!rc && o->held_out)
        rc = lms_sampler_new_calibration(c->ds, o->seq_len, (uint64_t)o->seed, true, &c->smp,
                                         err);
    if (rc) {
        lms_calib_free(c);
        return rc;
    }
    *out = c;
    return LMS_OK;
}

enum lms_status lms_calib_scores_for(struct lms_calib *c, const struct lms_model *m,
                                     const struct lms_importance *imp, int64_t n_keep,
                                     struct lms_importance *view, struct lms_error *err)
{
    *view = *imp;
    enum lms_layer_metric want = c->o.metric;
    int64_t n_drop = n_keep ? m->arch.n_layers - n_keep : 0;
    if (!lms_layer_metric_is_block(want) || n_drop <= 0 ||
        (imp->layer_metric == want && imp->block_size == n_drop))
        return LMS_OK;
    int i = 0;
    while (i < c->n_blocks && c->blocks[i].block_size != n_drop)
        i++;
    if (i == c->n_blocks) {
        if (c->n_blocks == MAX_BLOCK_RUNS)
            return lms_error_set(err, LMS_EINVAL, "more than %d depth targets to score",
                                 MAX_BLOCK_RUNS);
        char label[64];
        snprintf(label, sizeof label, "scoring blocks of %lld", (long long)n_drop);
        enum lms_status rc = score(c, m, 0, want, n_drop, false, label, &c->blocks[i], err);
        if (rc)
            return rc;
        c->n_blocks++;
    }
    const struct lms_importance *b = &c->blocks[i];
    view->layer_metric = b->layer_metric;
    view->layers = b->layers;
    view->blocks = b->blocks;
    view->block_size = b->block_size;
    return LMS_OK;
}

enum lms_status lms_calib_eval(struct lms_calib *c, const struct lms_model *m, double *loss,
                               struct lms_error *err)
{
    *loss = NAN;
    if (!c->smp)
        return lms_error_set(err, LMS_EINVAL, "calibration ran without held-out rows");
    int64_t B = c->o.mbs, S = c->o.seq_len, n = c->o.eval_samples;
    struct lms_engine *e = NULL;
    struct lms_engine_opts eo = {.max_batch = B, .max_seq = S};
    int32_t *ids = lms_malloc((size_t)(B * S) * sizeof(int32_t));
    int32_t *tgt = lms_malloc((size_t)(B * S) * sizeof(int32_t));
    enum lms_status rc = !ids || !tgt ? lms_error_set(err, LMS_ENOMEM, "out of memory")
                                      : lms_engine_new(m, c->be, &eo, &e, err);
    double sum = 0;
    int64_t scored = 0;
    for (int64_t r0 = 0; !rc && r0 < n; r0 += B) {
        int64_t nb = n - r0 < B ? n - r0 : B;
        for (int64_t i = 0; !rc && i < nb; i++)
            rc = lms_sampler_window(c->smp, c->o.n_samples + r0 + i, ids + i * S, (size_t)S,
                                    err);
        for (int64_t i = 0; i < nb * S; i++)
            tgt[i] = i % S == S - 1 ? -1 : ids[i + 1];
        struct lms_forward f = {.ids = ids, .batch = nb, .seq = S, .targets = tgt};
        if (!rc)
            rc = lms_engine_forward(e, &f, err);
        sum += f.loss_sum;
        scored += f.n_scored;
    }
    *loss = !rc && scored ? sum / (double)scored : NAN;
    lms_engine_free(e);
    lms_free(ids);
    lms_free(tgt);
    return rc;
}

const struct lms_gram *lms_calib_gram(const struct lms_calib *c)
{
    return c && c->o.gram && c->gram.n_layers ? &c->gram : NULL;
}

const struct lms_calib_opts *lms_calib_options(const struct lms_calib *c)
{
    return &c->o;
}

enum lms_status lms_calib_write_rows(const struct lms_calib *c, int64_t begin, int64_t end,
                                     const char *path, struct lms_error *err)
{
    if (!c->smp)
        return lms_error_set(err, LMS_EINVAL, "calibration ran without held-out rows");
    if (begin < 0 || end < begin || end > lms_sampler_n_windows(c->smp))
        return lms_error_set(err, LMS_EINVAL, "rows %lld..%lld are outside the %lld windows of "
                             "'%s'", (long long)begin, (long long)end,
                             (long long)lms_sampler_n_windows(c->smp), c->o.data);
    int64_t S = c->o.seq_len;
    int32_t *ids = lms_malloc((size_t)S * sizeof(int32_t));
    if (!ids)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    FILE *f = fopen(path, "wb");
    enum lms_status rc = f ? LMS_OK
                           : lms_error_set(err, LMS_EIO, "creating '%s': %s", path,
                                           strerror(errno));
    for (int64_t k = begin; !rc && k < end; k++) {
        rc = lms_sampler_window(c->smp, k, ids, (size_t)S, err);
        /* ids are little-endian int32 on disk, as the raw .i32 reader takes them */
        uint8_t le[4 * 256];
        for (int64_t i0 = 0; !rc && i0 < S; i0 += 256) {
            int64_t n = S - i0 < 256 ? S - i0 : 256;
            for (int64_t i = 0; i < n; i++) {
                uint32_t v = (uint32_t)ids[i0 + i];
                le[4 * i] = (uint8_t)v;
                le[4 * i + 1] = (uint8_t)(v >> 8);
                le[4 * i + 2] = (uint8_t)(v >> 16);
                le[4 * i + 3] = (uint8_t)(v >> 24);
            }
            if (fwrite(le, 4, (size_t)n, f) != (size_t)n)
                rc = lms_error_set(err, LMS_EIO, "writing '%s': %s", path, strerror(errno));
        }
    }
    if (f && fclose(f) != 0 && !rc)
        rc = lms_error_set(err, LMS_EIO, "closing '%s': %s", path, strerror(errno));
    lms_free(ids);
    return rc;
}

const char *lms_calib_describe(const struct lms_calib *c)
{
    return c->describe[0] ? c->describe : NULL;
}

json_t *lms_calib_json(const struct lms_calib *c)
{
    json_t *o = json_pack("{s:s,s:I,s:I,s:I,s:I,s:s,s:f}", "data", c->o.data, "num_samples",
                          (json_int_t)c->o.n_samples, "seq_length", (json_int_t)c->o.seq_len,
                          "micro_batch", (json_int_t)c->o.mbs, "seed", (json_int_t)c->o.seed,
                          "device", lms_backend_name(c->be), "seconds", c->seconds);
    if (c->metric != LMS_LAYER_METRIC_NONE)
        json_object_set_new(o, "layer_metric", json_string(lms_layer_metric_name(c->metric)));
    if (c->o.held_out)
        json_object_set_new(o, "held_out_samples", json_integer(c->o.eval_samples));
    return o;
}

void lms_calib_free(struct lms_calib *c)
{
    if (!c)
        return;
    for (int i = 0; i < c->n_blocks; i++)
        lms_importance_release(&c->blocks[i]);
    lms_gram_release(&c->gram);
    lms_sampler_free(c->smp);
    lms_backend_free(c->be);
    lms_dataset_free(c->ds);
    lms_free(c);
}
