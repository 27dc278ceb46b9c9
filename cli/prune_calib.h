/* prune's calibration: runs the model over the data once (the score engine) and hands the
 * plan its activation scores and depth metrics, and evaluates candidate shapes by LM loss on
 * held-out windows for the parameter-budget search. */
#ifndef LMS_CLI_PRUNE_CALIB_H
#define LMS_CLI_PRUNE_CALIB_H

#include <stdbool.h>
#include <stdint.h>

#include "lms/backend.h"
#include "lms/error.h"
#include "lms/importance.h"
#include "lms/ir.h"
#include "lms/surgery.h"

struct prune_calib_opts {
    const char *data;      /* dataset prefix or raw id file; NULL = no calibration */
    int64_t n_samples;     /* calibration windows */
    int64_t seq_len;       /* tokens per window */
    int64_t mbs;           /* windows per forward */
    int64_t seed;
    const char *device;
    enum lms_precision precision; /* 0 = auto */
    int64_t threads;
    int64_t eval_samples;  /* held-out windows per candidate (budget search) */
    /* set by prune from the targets */
    int64_t n_drop;        /* layers the depth target removes (0: none) */
    enum lms_layer_selection selection;
    bool budget;           /* the budget search runs: depth metrics for several block lengths */
    unsigned width_axes;   /* enum lms_axis mask of the width scores the targets need */
    bool json, quiet;
    const char *model;     /* the model's path, as a warning names it */
};

struct prune_calib;

void prune_calib_defaults(struct prune_calib_opts *o);
/* Calibrates m on o->data: fills imp's width axes with activation scores and keeps the depth
 * metrics. OUT: *out (prune_calib_free). */
enum lms_status prune_calib_run(const struct lms_model *m, const struct prune_calib_opts *o,
                                struct prune_calib **out, struct lms_importance *imp,
                                struct lms_error *err);
/* The scores to plan a depth target of n_keep layers with (0: none): imp's, with the layer
 * metric of a block selector recomputed for blocks of L - n_keep layers when imp's are for
 * another length (the budget search). OUT: *view, borrowing from imp and c (never release it). */
enum lms_status prune_calib_scores_for(struct prune_calib *c, const struct lms_model *m,
                                       const struct lms_importance *imp, int64_t n_keep,
                                       struct lms_importance *view, struct lms_error *err);
/* LM loss of a (pruned) model on the held-out windows. */
enum lms_status prune_calib_eval(struct prune_calib *c, const struct lms_model *m, double *loss,
                                 struct lms_error *err);
/* "N windows x S tokens of DATA"; NULL when the targets needed no calibration pass */
const char *prune_calib_describe(const struct prune_calib *c);
struct json_t *prune_calib_json(const struct prune_calib *c);
void prune_calib_free(struct prune_calib *c);

#endif
