/* lmsurgeon: structured pruning surgery on the IR.
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

#include <stdbool.h>
#include <stdint.h>

#include "lms/error.h"
#include "lms/importance.h"
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
 * storage through views, with the kept-layer map recorded (out->layer_src: for each kept layer,
 * its layer in the model as read, in's own map composed with the cut) and the config as read
 * carried unchanged: the writers derive the config of the cut model from its arch and the map
 * (head_dim unchanged and explicit, per-layer lists following the kept layers). */
enum lms_status lms_prune_apply(const struct lms_model *in, const struct lms_prune_plan *plan,
                                struct lms_model *out, struct lms_error *err);

struct lms_gram; /* lms/recon.h */
/* Weight reconstruction after lms_prune_apply (include/lms/recon.h): in every kept layer whose
 * FFN neurons (down_proj) or heads (o_proj, and its bias where the model has one) the plan
 * cuts, replaces out's weight by the least-squares refit of its kept columns on g, the
 * statistics of in's layer (rows dropped by a hidden cut are dropped from the refit's output),
 * materialised in host memory in the weight's dtype. g must hold in's dims. OUT: *n_refit, the
 * projections refitted. */
enum lms_status lms_prune_reconstruct(const struct lms_model *in,
                                      const struct lms_prune_plan *plan,
                                      const struct lms_gram *g, struct lms_model *out,
                                      int64_t *n_refit, struct lms_error *err);

/* Ranks scores[0..n) (higher first, ties to the lower index) and returns the top k indices in
 * ascending order. OUT: keep (release its index with lms_free). */
enum lms_status lms_rank_keep(const double *scores, int64_t n, int64_t k, struct lms_keep *keep,
                              struct lms_error *err);

/* Depth selectors (which layers a depth cut removes). The data-free ones need no scores; the
 * others read the layer metric of an importance (include/lms/importance.h: layer_metric,
 * layers[] per layer, blocks[] per contiguous block of block_size layers; higher = keep).
 * Selecting by a calibration metric is LMS_LAYERS_METRIC with the metric beside it (one
 * enum lms_layer_metric, whose table says what each metric is). */
enum lms_layer_selection {
    LMS_LAYERS_AUTO,            /* the default (zero): see lms_prune_plan_make */
    LMS_LAYERS_CONTIGUOUS_LAST, /* drop one block ending just before the last layer */
    LMS_LAYERS_LAST,            /* drop the last layers */
    LMS_LAYERS_IMPORTANCE,      /* drop the lowest per-layer scores of an importance file */
    LMS_LAYERS_METRIC,          /* by a calibration metric (bi, block-bi, ppl, contiguous) */
    LMS_LAYERS_EXPLICIT,        /* a user list (targets.drop_layers / keep_layers) */
};
/* "contiguous-last", "last", "importance", "explicit", "auto", or for LMS_LAYERS_METRIC the
 * metric's name. */
const char *lms_layer_selection_name(enum lms_layer_selection sel, enum lms_layer_metric metric);
/* Parses a name above (a selector's or a metric's); false when unknown. OUT: *sel, and
 * *metric for a metric (NONE otherwise). */
bool lms_layer_selection_parse(const char *name, enum lms_layer_selection *sel,
                               enum lms_layer_metric *metric);
/* True for the selections that need calibration data (a metric whose row says so). */
bool lms_layer_selection_needs_data(enum lms_layer_selection sel, enum lms_layer_metric metric);

/* Fills keep with n_keep of n_layers layers chosen by a data-free selector or by per-layer
 * scores (IMPORTANCE, or METRIC with a per-layer metric: the highest-scoring layers are
 * kept). */
enum lms_status lms_select_layers(enum lms_layer_selection sel, int64_t n_layers, int64_t n_keep,
                                  const double *scores, struct lms_keep *keep,
                                  struct lms_error *err);
/* Keeps every layer but the block [s, s + n_layers - n_keep) whose block_scores[s] is lowest
 * (the least important; ties to the lower s); block_scores has n_keep + 1 entries (one per
 * start). OUT: keep, *start. */
enum lms_status lms_select_block(int64_t n_layers, int64_t n_keep, const double *block_scores,
                                 struct lms_keep *keep, int64_t *start, struct lms_error *err);

/* Parses a 1-based layer list ("24-31,33": inclusive ranges) into member[0..n_layers). */
enum lms_status lms_parse_layer_list(const char *list, int64_t n_layers, bool *member,
                                     struct lms_error *err);

/* ---- planning: one call from (model, targets, scores) to a plan ------------------------- */

/* The shape to prune to. Zero (or the current value) leaves an axis whole. */
struct lms_prune_targets {
    int64_t n_layers; /* L' (with selection) */
    int64_t ffn;      /* F' per layer */
    int64_t hidden;   /* H' */
    int64_t n_heads;  /* n_h' (the same number in every kept group) */
    int64_t n_groups; /* n_g' (whole groups with their heads) */
    const char *drop_layers, *keep_layers; /* 1-based lists; at most one, not with n_layers */
    enum lms_layer_selection selection;    /* for n_layers; 0 = LMS_LAYERS_AUTO */
    enum lms_layer_metric metric;          /* with LMS_LAYERS_METRIC */
    /* M (0 or 1: no constraint): every width a target changes is a multiple of M: F', H', the
     * query rows n_h' x head_dim and, with n_g', the key/value rows n_g' x head_dim */
    int64_t multiple_of;
};

struct json_t;

/* Checks the targets against the model (positive, not larger than the model, heads a multiple
 * of the groups and at most the heads per group the model has, the widths they change
 * multiples of t->multiple_of). LMS_EINVAL names the flag (and, for a width that is not a
 * multiple, the nearest valid values below and above). */
enum lms_status lms_prune_targets_check(const struct lms_prune_targets *t,
                                        const struct lms_arch *a, struct lms_error *err);

/* Builds the plan for t:
 *   depth: an explicit list; else n_layers chosen by t->selection: a per-layer metric needs
 *          imp's layers[] made from the same per-layer sums (bi: BI, or BLOCK_BI, which
 *          carries the per-layer BI too), a block metric imp's blocks[] of that metric with
 *          block_size = L - n_layers; importance uses whatever metric imp holds.
 *          LMS_LAYERS_AUTO: imp's metric when it has one, else importance when imp has layer
 *          scores, else contiguous-last.
 *   width: each layer keeps its own best F' neurons, the best n_g' groups and inside every kept
 *          group its best n_h'/n_g' heads; hidden channels are one global set. Scores come from
 *          imp (NULL: none); axes it lacks are scored by weight magnitude, read from m.
 * OUT: plan (initialised here; release it), *report (may be NULL): a JSON object saying which
 * scores chose what, per axis ({"layers": {"selection", "metric", "scores", "kept", "dropped"},
 * "ffn_hidden_size": {"from", "to", "scores"}, ...}). */
enum lms_status lms_prune_plan_make(const struct lms_model *m, const struct lms_prune_targets *t,
                                    const struct lms_importance *imp,
                                    struct lms_prune_plan *plan, struct json_t **report,
                                    struct lms_error *err);

struct lms_calib;
struct lms_calib_opts;

/* The layer metric a calibration for t gathers: t's metric, the default one
 * (LMS_LAYER_METRIC_DEFAULT) for LMS_LAYERS_AUTO, NONE for the other selectors. */
enum lms_layer_metric lms_prune_targets_metric(const struct lms_prune_targets *t);
/* Fills what a calibration for t gathers (o->width_axes, metric, n_drop, held_out) on a model
 * of arch a; with budget (the shape search runs) every searched width axis and the depth
 * metric for any length. The data options of o are left as they are. */
void lms_prune_calib_setup(const struct lms_arch *a, const struct lms_prune_targets *t,
                           bool budget, struct lms_calib_opts *o);
/* lms_prune_plan_make with the scores of a calibration: imp (lms_calib_run's) with a block
 * metric rescored for t's depth when needed (lms_calib_scores_for). cal NULL: imp as it is. */
enum lms_status lms_prune_plan_calibrated(const struct lms_model *m,
                                          const struct lms_prune_targets *t,
                                          const struct lms_importance *imp, struct lms_calib *cal,
                                          struct lms_prune_plan *plan, struct json_t **report,
                                          struct lms_error *err);

/* ---- parameter-budget search ----------------------------------------------------------- */

struct lms_candidate;

/* One searched axis: candidates min, min+step, ... up to max, plus max itself. 0 = default. */
struct lms_search_axis {
    int64_t min, max, step;
};

/* How lms_search_run orders the candidates it evaluated. */
enum lms_search_rank {
    LMS_RANK_LOSS = 0, /* by LM loss right after pruning (the default) */
    LMS_RANK_DISTILL,  /* the best by that loss distilled briefly, then by their loss after */
};

/* The short distillation that ranks the best candidates (LMS_RANK_DISTILL). Each of the top
 * candidates by post-prune loss is written to a temporary directory, distilled from the model
 * being pruned (teacher) for `tokens` tokens with lms_distill_run_all, and scored on the same
 * held-out rows as the post-prune loss. The recipe (lms_search_rank_recipe): logit KD (forward
 * KL, T = 1, no feature pairs, no cross-entropy), the GPT AdamW preset, rows of the
 * calibration's S tokens, one micro-batch of the calibration's mbs rows per step,
 * steps = tokens / (mbs S), lr 1e-4 after steps / 10 warm-up steps, cosine to 1e-5, seed 1234.
 * The rows are the calibration order's rows after the held-out ones, written to a raw id file
 * (lms_calib_write_rows): neither calibration nor scoring reads them. */
struct lms_search_rank_opts {
    enum lms_search_rank by;
    int64_t tokens;       /* distillation tokens per candidate (>= one step, mbs x S) */
    int64_t top;          /* candidates distilled (clamped to the table) */
    const char *teacher;  /* path of the model being pruned (what the runs read) */
    const char *tmp_dir;  /* where the temporary directory goes; NULL: $TMPDIR, else /tmp */
    /* after each step of candidate i's distillation (of k) */
    void (*on_step)(void *ctx, int64_t i, int64_t k, int64_t step, int64_t steps);
    /* after candidate i (of k) was distilled and scored (distill_loss set) */
    void (*on_distilled)(void *ctx, int64_t i, int64_t k, const struct lms_candidate *c);
    void *ctx;
};

/* The distillation options of one ranking run (paths, data and callbacks left NULL), from the
 * calibration's sequence length, micro-batch, device, threads and precision: what a user
 * reproduces with `lmsurgeon distill` (README "Parameter budget"). */
struct lms_distill_opts;
struct lms_calib_opts;
void lms_search_rank_recipe(const struct lms_search_rank_opts *ro,
                            const struct lms_calib_opts *co, struct lms_distill_opts *out);
/* Rows of the calibration order the ranking distillation reads: one more than its training
 * rows (rows of S + 1 tokens at stride S). 0 unless ro->by is LMS_RANK_DISTILL. */
int64_t lms_search_rank_rows(const struct lms_search_rank_opts *ro,
                             const struct lms_calib_opts *co);

struct lms_search_opts {
    int64_t target_params;           /* P budget: candidates with P <= target */
    struct lms_search_axis layers;   /* default: 80%..100% of L, even counts */
    struct lms_search_axis ffn;      /* default: 60%..100% of F, step F/16 as a power of 2 <= 512 */
    struct lms_search_axis hidden;   /* default: 60%..100% of H, step H/16 as a power of 2 <= 256 */
    struct lms_search_axis heads;    /* query heads; default 60%..100%, multiples of n_g */
    /* M (0 or 1: none): only shapes whose F, H and query rows n_h x head_dim are multiples of
     * M; each axis's step becomes lcm(step, unit), its bounds are rounded inwards to the unit
     * (M for F and H, M / gcd(M, head_dim) for n_h), and the rounded maximum stays a candidate */
    int64_t multiple_of;
    int64_t max_candidates;          /* K kept (largest P first); 0 = 10 */
    /* lms_search_run: called after each candidate is evaluated (loss NAN when that failed) */
    void (*on_candidate)(void *ctx, int64_t i, int64_t n, const struct lms_candidate *c);
    void *ctx;
    struct lms_search_rank_opts rank; /* zero: by post-prune loss */
};

/* A candidate shape (query groups are never searched: n_groups stays). */
struct lms_candidate {
    int64_t n_layers, ffn, hidden, n_heads, n_groups;
    int64_t n_params; /* exact: lms_arch_n_params of the pruned config */
    double loss;      /* LM loss after pruning, filled by the caller; NAN until then */
    /* LMS_RANK_DISTILL: the held-out loss after the ranking distillation (NAN when not
     * distilled), and the 1-based places by post-prune loss and by that loss (0: none) */
    double distill_loss;
    int64_t loss_rank, distill_rank;
};

/* The config a is pruned to c (dimensions only; everything else unchanged). */
void lms_candidate_arch(const struct lms_arch *a, const struct lms_candidate *c,
                        struct lms_arch *out);
/* Enumerates the grid (at most LMS_SEARCH_GRID_CAP shapes, else LMS_EINVAL asking for narrower
 * bounds), keeps the shapes with P <= target, sorts them by P descending (ties: more layers,
 * then wider FFN, hidden, heads) and returns the first max_candidates. OUT: *out (lms_free),
 * *n_out, *n_fit (how many fitted before the cut). LMS_EINVAL when none fits. */
enum lms_status lms_search_candidates(const struct lms_arch *a, const struct lms_search_opts *o,
                                      struct lms_candidate **out, int64_t *n_out, int64_t *n_fit,
                                      struct lms_error *err);
#define LMS_SEARCH_GRID_CAP 100000

/* The targets of shape c (t's other fields unchanged). */
void lms_candidate_targets(const struct lms_candidate *c, struct lms_prune_targets *t);

struct lms_search_result {
    struct lms_candidate *c; /* n candidates, best first (owned: lms_search_result_release) */
    int64_t n, n_fit;        /* rows, and shapes that fitted before the cut */
    bool ranked;             /* by LM loss on held-out rows (else by size) */
    bool distilled;          /* LMS_RANK_DISTILL ran: the distilled candidates come first, by
                              * distill_loss, then the others by loss */
    int64_t n_distilled;
};

/* The budget search: lms_search_candidates on m's config, then with a calibration (cal, with
 * held-out rows) each candidate pruned from m as t says for depth (selection, metric) with
 * lms_prune_plan_calibrated and its LM loss measured (lms_calib_eval); the table is sorted by
 * loss (ties and failures: larger first). With o->rank.by LMS_RANK_DISTILL (needs cal, with
 * reserve_rows = lms_search_rank_rows) the first o->rank.top are then distilled and scored
 * (struct lms_search_rank_opts) and move to the front in the order of that loss. Without cal
 * the candidates stay in size order. The first error stops the search; the temporary
 * directory is removed whatever happens (and registered with lms_temp_track meanwhile, for a
 * signal handler). OUT: *res (release it). */
enum lms_status lms_search_run(const struct lms_model *m, const struct lms_prune_targets *t,
                               const struct lms_search_opts *o, const struct lms_importance *imp,
                               struct lms_calib *cal, struct lms_search_result *res,
                               struct lms_error *err);
void lms_search_result_release(struct lms_search_result *res);

#endif
