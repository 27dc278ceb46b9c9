/* lmsurgeon: structured pruning surgery on the IR (pruning-and-distillation.md §3.7, §5).
 *
 * A prune plan is data: for each axis, the kept indices in ascending original order (per layer
 * for FFN neurons, heads and query groups; global for hidden channels; a layer list for depth).
 * lms_prune_apply composes views over the input's tensors and rewrites the config: no weight is
 * read or copied, and the input is never modified. Writers then stream the pruned tensors.
 *
 * Plans are built from importance scores (higher = more important; ties broken by the lower
 * original index) with lms_rank_keep, or given explicitly (layer lists). */
#ifndef LMS_SURGERY_H
#define LMS_SURGERY_H

#include <stdint.h>

#include "lms/error.h"
#include "lms/ir.h"

/* Kept indices of one axis for one layer (or global): n entries, ascending. */
struct lms_keep {
    int64_t n;
    int64_t *index; /* owned */
};

struct lms_prune_plan {
    /* depth: kept original layer indices, ascending; layers.index == NULL keeps every layer */
    struct lms_keep layers;
    /* width: NULL arrays / index keep the axis whole. Per-layer arrays have one entry per
     * ORIGINAL layer (entries of dropped layers are ignored). */
    struct lms_keep hidden;  /* H' channels, global */
    struct lms_keep *ffn;    /* F' neurons per layer */
    struct lms_keep *groups; /* n_g' query groups per layer (whole groups with their heads) */
    struct lms_keep *heads;  /* r' heads per kept group, as absolute head indices, per layer */
    int64_t n_layers_in;     /* L of the model the plan was made for */
};

void lms_prune_plan_init(struct lms_prune_plan *p, int64_t n_layers);
void lms_prune_plan_release(struct lms_prune_plan *p);

/* Checks the plan against the model (index ranges, ascending order, same count in every layer,
 * r' heads in every kept group) and applies it. OUT: out is a new model sharing the input's
 * storage through views, with the config rewritten (head_dim unchanged and explicit). */
enum lms_status lms_prune_apply(const struct lms_model *in, const struct lms_prune_plan *plan,
                                struct lms_model *out, struct lms_error *err);

/* Ranks scores[0..n) (higher first, ties to the lower index) and returns the top k indices in
 * ascending order. OUT: keep (release its index with lms_free). */
enum lms_status lms_rank_keep(const double *scores, int64_t n, int64_t k, struct lms_keep *keep,
                              struct lms_error *err);

/* Depth selectors that need no calibration data (§3.6, Minitron practice paper). */
enum lms_layer_selection {
    LMS_LAYERS_CONTIGUOUS_LAST, /* drop one block ending just before the last layer */
    LMS_LAYERS_LAST,            /* drop the last layers */
    LMS_LAYERS_IMPORTANCE,      /* drop the lowest-scoring layers individually */
};
/* Fills keep with n_keep of n_layers layers chosen by sel (scores only for IMPORTANCE). */
enum lms_status lms_select_layers(enum lms_layer_selection sel, int64_t n_layers, int64_t n_keep,
                                  const double *scores, struct lms_keep *keep,
                                  struct lms_error *err);

#endif
