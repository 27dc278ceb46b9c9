/* lmsurgeon: activation importance on calibration data (the scoring engine behind
 * `lmsurgeon score` and `lmsurgeon prune --data_paths`).
 *
 * One forward pass of the unpruned model over calibration rows gathers, at the engine's hook
 * points (include/lms/engine.h), the raw sums every activation score is made of:
 *
 *   channel statistic (per hook point, per channel c, over rows b of S tokens):
 *       m[b,c] = (1/S) sum_t |x[b,t,c]|,   Q[c] += sum_b m[b,c]^2   (A[c] = sqrt(Q[c]))
 *   FFN neuron j of layer l:  A at the down-projection input
 *   head h of layer l:        sqrt(sum over the head's d channels of Q) at the attention context
 *                             (ranked inside its query group by the planner)
 *   query group g of layer l: sqrt(sum of its heads' squared scores)
 *   hidden channel c:         sum over both norm outputs of every layer of A[c]
 *   Block Influence (bi):     1 - mean over token rows of cos(layer input, layer output)
 *   block-bi (n layers):      1 - mean cos(input of layer s, output of layer s+n-1), per start s
 *   ppl:                      LM loss with layer l skipped (minus the full model's loss)
 *   contiguous (n layers):    LM loss with layers s..s+n-1 skipped (minus the full loss)
 *
 * Sums are kept in double on the host (struct lms_importance_raw), so runs over disjoint rows
 * add exactly (lms_importance_merge) and scores are derived from the sums afterwards
 * (lms_importance_derive). Depth-pruned variants for ppl/contiguous are run by the same engine
 * with layers skipped: nothing is uploaded or copied again.
 *
 * Rows: the calibration rows are the windows of S tokens of the dataset's token stream, cut
 * without overlap (window k is stream positions [k S, (k+1) S)) and, unless sequential,
 * visited in the order of the window sampler (include/lms/dataset.h: documents shuffled, then
 * windows shuffled, seeded). Row r of a run is window order[r]; a run reads rows
 * [row_begin, row_end). Only whole windows of one pass over the data are used, so asking for
 * more rows than the data holds is an error, never a silent repeat. */
#ifndef LMS_SCORE_H
#define LMS_SCORE_H

#include <stdbool.h>
#include <stdint.h>

#include "lms/backend.h"
#include "lms/dataset.h"
#include "lms/error.h"
#include "lms/format.h"
#include "lms/importance.h"
#include "lms/ir.h"
#include "lms/recon.h"

/* Whole non-overlapping windows of seq_len tokens the dataset holds (rows available). */
int64_t lms_score_rows_available(const struct lms_dataset *ds, int64_t seq_len);

struct lms_score_opts {
    int64_t row_begin, row_end; /* calibration rows [row_begin, row_end) (see above) */
    int64_t seq_len;            /* S tokens per row (> 1) */
    int64_t micro_batch;        /* rows per forward pass (> 0) */
    uint64_t seed;              /* sampler seed (1234 is the command's default) */
    bool sequential;            /* rows are the windows in stream order (no shuffling) */
    unsigned axes;              /* enum lms_axis mask: what to gather (LAYERS = layer_metric) */
    enum lms_layer_metric layer_metric; /* with LMS_AXIS_LAYERS; NONE = BI */
    int64_t block_size;         /* n layers removed, for block-bi and contiguous (1..L-1) */
    lms_progress_fn progress;   /* (rows done, rows total) of all passes; NULL: none */
    void *progress_ctx;
    /* Refuse before allocating when the engine's weights + workspace + accumulators exceed
     * this many bytes; 0 = the device's available memory (host: MemAvailable). */
    uint64_t memory_limit;
    const char *data_name;      /* provenance written to imp->source (may be NULL) */
    const char *model_name;     /* the model's path, for messages (may be NULL) */
    const char *model_fingerprint; /* lms_model_fingerprint of the model when the caller has it
                                    * already (NULL: computed here; it reads every weight) */
    /* When not NULL: the gram statistics for weight reconstruction (include/lms/recon.h) are
     * gathered too, at the down-projection input and the attention context of every layer,
     * into *gram (allocated here, lms_gram_release; released on error). Their memory (8 L
     * (F^2 + C^2) bytes on the host) counts in the memory plan. */
    struct lms_gram *gram;
};

/* Default options: rows [0, 1024), S 4096, micro-batch 4, seed 1234, shuffled, axes
 * LAYERS|HIDDEN|FFN|HEADS, metric BI, block_size 0. */
void lms_score_opts_default(struct lms_score_opts *o);

/* Bytes the run would allocate (engine weights + workspace + scoring buffers) for m on be with
 * o; LMS_EINVAL when the sizes overflow. */
enum lms_status lms_score_memory_plan(const struct lms_model *m, const struct lms_backend *be,
                                      const struct lms_score_opts *o, uint64_t *bytes,
                                      struct lms_error *err);

/* Bytes the device can give a run: MemAvailable on the CPU; 0 (unknown: allocation failures
 * report) on devices without a query. */
uint64_t lms_score_memory_available(const struct lms_backend *be);

/* Runs calibration of m on be over rows of ds. Checks up front: rows available, ids inside
 * the vocabulary (checked per batch before its forward), memory plan within the limit.
 * OUT: *imp initialised for m's dims with the raw sums and the derived scores of the requested
 * axes, method "activation", source = provenance (data, rows, row length, seed, order, device,
 * data_fingerprint (lms_data_fingerprint), model_fingerprint; README "Importance file").
 * Activations that are not finite (NaN or infinity) stop the run with LMS_EFORMAT naming the
 * first layer, hook point and calibration row where they appear (a non-finite LM loss, for the
 * ppl and contiguous metrics, names the rows). On error *imp is released (empty). */
enum lms_status lms_score_run(const struct lms_model *m, struct lms_backend *be,
                              const struct lms_dataset *ds, const struct lms_score_opts *o,
                              struct lms_importance *imp, struct lms_error *err);

/* ---- calibration for pruning (importance/calibrate.c) ----------------------------------
 * What `prune --data-paths` runs before planning: the score engine over rows [0, n_samples) of
 * the data for the width axes and the depth metric the targets need, and, for the parameter-
 * budget search, LM loss of candidate shapes on the held-out rows right after them,
 * [n_samples, n_samples + eval_samples), so that no candidate is judged on the windows its
 * channels were ranked by. */

/* Observer of the calibration passes; every member may be NULL. */
struct lms_calib_progress {
    void (*begin)(void *ctx, const char *label); /* a pass starts ("calibrating", ...) */
    lms_progress_fn step;                         /* rows done / total of the pass */
    void (*end)(void *ctx, bool ok);              /* the pass finished (ok) or failed */
    void *ctx;
};

struct lms_calib_opts {
    const char *data;      /* dataset prefix or raw id file */
    const char *model;     /* the model's path, for messages and provenance (may be NULL) */
    int64_t n_samples;     /* calibration windows (rows [0, n_samples)) */
    int64_t seq_len;       /* tokens per window */
    int64_t mbs;           /* windows per forward */
    int64_t seed;          /* sampler seed */
    const char *device;    /* "cpu", "cuda:N" */
    enum lms_precision precision; /* 0 = auto */
    int64_t threads;       /* 0 = all cores */
    int64_t eval_samples;  /* held-out windows per candidate (with held_out) */
    /* what to gather (lms_prune_calib_setup in include/lms/surgery.h fills these from targets) */
    unsigned width_axes;   /* enum lms_axis mask of the width scores */
    enum lms_layer_metric metric; /* depth metric; NONE: none */
    int64_t n_drop;        /* block length of a block metric (0: unknown, scored on demand) */
    bool held_out;         /* keep eval_samples rows after the calibration rows (search) */
    bool gram;             /* gather the reconstruction statistics too (lms_calib_gram) */
    int64_t reserve_rows;  /* with held_out: rows after the held-out ones that must exist too
                            * (the ranking distillation's, lms_calib_write_rows) */
    struct lms_calib_progress progress;
};

struct lms_calib;

/* Defaults of prune: 1024 windows x 4096 tokens, 4 per forward, seed 1234, cpu, 16 held out;
 * nothing to gather. */
void lms_calib_opts_default(struct lms_calib_opts *o);
/* Opens the data and the device and runs the pass the options ask for (none when no width
 * axis and no depth metric is wanted). OUT: *out (lms_calib_free), imp (released first) with
 * the activation scores and the depth metric. With held_out, refuses data too short for the
 * held-out rows before any pass. */
enum lms_status lms_calib_run(const struct lms_model *m, const struct lms_calib_opts *o,
                              struct lms_calib **out, struct lms_importance *imp,
                              struct lms_error *err);
/* The scores to plan a cut to n_keep layers with (0: no depth cut): imp's, with a block
 * metric's scores recomputed (one more pass, kept for the next call) for blocks of
 * L - n_keep layers when imp's are for another length. OUT: *view, borrowing from imp and c
 * (never release it). */
enum lms_status lms_calib_scores_for(struct lms_calib *c, const struct lms_model *m,
                                     const struct lms_importance *imp, int64_t n_keep,
                                     struct lms_importance *view, struct lms_error *err);
/* Mean next-token LM loss of m (a pruned model of the calibrated one) on the held-out rows
 * (lms_calib_run with held_out). NAN on error. */
enum lms_status lms_calib_eval(struct lms_calib *c, const struct lms_model *m, double *loss,
                               struct lms_error *err);
/* The reconstruction statistics of the calibration pass (lms_calib_opts.gram); NULL when none
 * were gathered. Owned by c. */
const struct lms_gram *lms_calib_gram(const struct lms_calib *c);
/* The options the calibration ran with. */
const struct lms_calib_opts *lms_calib_options(const struct lms_calib *c);
/* Writes rows [begin, end) of the calibration row order (the rows after
 * n_samples + eval_samples are neither calibration nor held-out rows) back to back to path as
 * little-endian int32 ids, a raw id file lms_data_open reads when path ends in .i32. Needs a
 * run with held_out. */
enum lms_status lms_calib_write_rows(const struct lms_calib *c, int64_t begin, int64_t end,
                                     const char *path, struct lms_error *err);
/* "N windows x S tokens of DATA"; NULL when no pass ran. */
const char *lms_calib_describe(const struct lms_calib *c);
/* {"data", "num_samples", "seq_length", "micro_batch", "seed", "device", "seconds",
 *  "layer_metric" (when one ran), "held_out_samples" (with held_out)}. */
struct json_t *lms_calib_json(const struct lms_calib *c);
void lms_calib_free(struct lms_calib *c);

#endif
