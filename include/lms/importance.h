/* lmsurgeon: importance scores, the contract between scoring and surgery.
 *
 * Scores are per axis (higher = more important): one per layer (depth), per hidden channel, per
 * FFN neuron per layer, per attention head per layer, per query group per layer, and for block
 * layer metrics one per contiguous block of n layers. Any axis may be absent. They are produced
 * from calibration activations (include/lms/score.h) or, as a fallback, from weight magnitudes
 * (lms_importance_magnitude), and stored as an importance file (README: "Importance file"):
 *
 *   {"format": "lmsurgeon-importance", "version": 2,
 *    "method": "activation" | "weight-magnitude" | free text,
 *    "model": {"num_layers": L, "hidden_size": H, "ffn_hidden_size": F,
 *              "num_attention_heads": n_h, "num_query_groups": n_g},
 *    "source": {...provenance: data, fingerprints, rows, row length, order, seed (README);
 *               a merged file's lists every run in "parts"...},
 *    "layer_metric": "bi" | "block-bi" | "ppl" | "contiguous", "block_size": n,
 *    "layers": [L], "blocks": [L-n+1], "hidden": [H], "ffn": [[F] x L], "heads": [[n_h] x L],
 *    "query_groups": [[n_g] x L],
 *    "raw": {...the additive sums of struct lms_importance_raw...}}
 *
 * Version 1 files (no raw, no blocks, no layer_metric) still read. Numbers are JSON numbers
 * (finite: the writer refuses NaN and infinity, naming the field). Layer entries follow the
 * model's 0-based layer order. */
#ifndef LMS_IMPORTANCE_H
#define LMS_IMPORTANCE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "lms/error.h"
#include "lms/ir.h"

enum lms_axis {
    LMS_AXIS_LAYERS = 1 << 0,
    LMS_AXIS_HIDDEN = 1 << 1,
    LMS_AXIS_FFN = 1 << 2,
    LMS_AXIS_HEADS = 1 << 3,
    LMS_AXIS_GROUPS = 1 << 4,
};

/* How layer (depth) scores were made. Each metric is one row of a descriptor table
 * (lms_layer_metric_desc, importance/metric.c): adding a metric means adding a row there (and
 * its gathering in importance/score.c). */
enum lms_layer_metric {
    LMS_LAYER_METRIC_NONE = 0,   /* not from calibration (or unknown): layers[] only */
    LMS_LAYER_METRIC_BI,         /* Block Influence per layer: layers[] */
    LMS_LAYER_METRIC_BLOCK_BI,   /* Block Influence of each block of n: blocks[], + layers[] BI */
    LMS_LAYER_METRIC_PPL,        /* LM loss increase with one layer skipped: layers[] */
    LMS_LAYER_METRIC_CONTIGUOUS, /* LM loss increase with a block of n skipped: blocks[] */
};
/* The metric a calibrating prune ranks layers by when none is asked for (see README for the
 * measurements behind the choice), and the one lms_score_run gathers for NONE. */
#define LMS_LAYER_METRIC_DEFAULT LMS_LAYER_METRIC_BI

/* The additive depth sums of struct lms_importance_raw, as bits (a metric's `sums`). */
enum lms_raw_sum {
    LMS_RAW_LAYER_COS = 1 << 0,  /* layer_cos over n_cos_rows */
    LMS_RAW_BLOCK_COS = 1 << 1,  /* block_cos over n_cos_rows */
    LMS_RAW_LAYER_LOSS = 1 << 2, /* layer_loss, base_loss over n_loss_tokens */
    LMS_RAW_BLOCK_LOSS = 1 << 3, /* block_loss, base_loss over n_loss_tokens */
};

/* One row of the metric table. */
struct lms_layer_metric_desc {
    enum lms_layer_metric id;
    const char *name;        /* spelling on the command line and in files: "bi", ... */
    const char *per_layer;   /* what layers[] means, in words (NULL: the metric fills none) */
    const char *per_block;   /* what blocks[] means, in words (NULL: not a block metric) */
    bool needs_data;         /* computed on calibration data (every metric today) */
    unsigned sums;           /* enum lms_raw_sum: the mergeable raw sums it accumulates; the
                              * scores follow from them (lms_importance_derive, README) */
};
/* The row of m; NULL for NONE or a value outside the table. */
const struct lms_layer_metric_desc *lms_layer_metric_desc(enum lms_layer_metric m);
/* "bi", "block-bi", "ppl", "contiguous" ("none" for NONE). */
const char *lms_layer_metric_name(enum lms_layer_metric m);
/* Parses a name above; LMS_EINVAL naming the spelling otherwise. */
enum lms_status lms_layer_metric_parse(const char *s, enum lms_layer_metric *out,
                                       struct lms_error *err);
/* Whether m scores contiguous blocks of block_size layers (blocks[]) rather than layers. */
bool lms_layer_metric_is_block(enum lms_layer_metric m);

/* Additive calibration sums (double): two runs over disjoint rows add field by field. All
 * arrays NULL when absent; owned. */
struct lms_importance_raw {
    bool present;         /* the file / run carried raw sums (version 2 activation scores) */
    int64_t n_rows;       /* calibration rows (windows) summed */
    int64_t seq_len;      /* S of every row (runs with different S do not merge) */
    double *hidden_sq;    /* [L][2][H]: Q at the pre-attention and pre-MLP norm outputs */
    double *ffn_sq;       /* [L][F]: Q at the down-projection input */
    double *head_sq;      /* [L][n_h]: sum of Q over each head's d context channels */
    double *layer_cos;    /* [L]: sum over token rows of cos(layer input, layer output) */
    double *block_cos;    /* [L-n+1]: sum of cos(input of s, output of s+n-1) */
    int64_t n_cos_rows;   /* token rows summed into the cosine sums */
    double *layer_loss;   /* [L]: loss sum (nats) over scored tokens with layer l skipped */
    double *block_loss;   /* [L-n+1]: loss sum with layers s..s+n-1 skipped */
    double base_loss;     /* loss sum of the full model over the same tokens */
    int64_t n_loss_tokens; /* scored tokens of each loss sum */
};

struct lms_importance {
    int64_t n_layers, hidden, ffn, n_heads, n_groups; /* dims of the model scored */
    enum lms_layer_metric layer_metric;               /* what layers[] / blocks[] mean */
    int64_t block_size; /* n of blocks[] (block metrics); 0 otherwise */
    double *blocks;     /* [L-n+1] score of block s..s+n-1 (higher = keep it), or NULL; owned */
    struct lms_importance_raw raw;
    double *layers;  /* [L] or NULL; owned */
    double *hidden_s; /* [H] or NULL; owned */
    double *ffn_s;   /* [L][F] row-major or NULL; owned */
    double *heads;   /* [L][n_h] or NULL; owned */
    double *groups;  /* [L][n_g] or NULL; owned */
    char *method;    /* owned */
    json_t *source;  /* provenance object or NULL; owned */
    /* The reconstruction statistics' sidecar (include/lms/recon.h), as the file names it under
     * "reconstruction": {"statistics": NAME}, NAME relative to the importance file's folder;
     * NULL when the file has none. owned */
    char *gram_file;
};

void lms_importance_init(struct lms_importance *imp, const struct lms_arch *a);
void lms_importance_release(struct lms_importance *imp);
/* Axes present, as a mask of enum lms_axis. */
unsigned lms_importance_axes(const struct lms_importance *imp);

/* Reads and validates an importance file (schema above). OUT: imp (release it). */
/* The path of imp's reconstruction sidecar for an importance file read from path (the name it
 * records, taken relative to path's folder), written to dst; false when it names none or the
 * path does not fit. */
bool lms_importance_gram_path(const struct lms_importance *imp, const char *path, char *dst,
                              size_t cap);
enum lms_status lms_importance_read(const char *path, struct lms_importance *imp,
                                    struct lms_error *err);
/* Checks that the file was made for a model of arch's dimensions. */
enum lms_status lms_importance_check(const struct lms_importance *imp, const struct lms_arch *a,
                                     const char *path, struct lms_error *err);
/* Whether b's raw sums can be added into a's: both have raw sums of the same dims, layer
 * metric, block size and row length, and every part of a's provenance and every part of b's
 * (source, or source.parts of a merged file) are disjoint rows of one calibration set: the same
 * data and model fingerprints, order, seed and row length, row ranges neither equal nor
 * overlapping; and no sum overflows. LMS_EFORMAT for missing provenance (older or edited
 * files) or an overflow, LMS_ESHAPE for a mismatch, naming the field. */
enum lms_status lms_importance_mergeable(const struct lms_importance *a,
                                         const struct lms_importance *b, struct lms_error *err);
/* Adds b's raw sums into a after lms_importance_mergeable, then re-derives a's scores. a's
 * source becomes {"rows": total, "row_length", "data", "data_fingerprint", "parts": [every
 * run's source, by first row]}. A refused merge leaves a untouched. */
enum lms_status lms_importance_merge(struct lms_importance *a, const struct lms_importance *b,
                                     struct lms_error *err);
/* Recomputes the scores (layers, blocks, hidden, ffn, heads, groups) from imp->raw for the
 * axes whose sums are present. groups are derived only when want_groups. */
enum lms_status lms_importance_derive(struct lms_importance *imp, bool want_groups,
                                      struct lms_error *err);
/* Writes imp atomically (temporary file beside path, fsync, rename: lms_outfile). Without force
 * an existing path is refused, and so is one that appears before the rename (LMS_EEXIST). */
enum lms_status lms_importance_write(const struct lms_importance *imp, const char *path,
                                     bool force, struct lms_error *err);

/* Fills the axes in mask (hidden, FFN, heads, groups; layers have no magnitude score) from
 * weight magnitudes: the L2 norm of every row and column a channel owns. Reads the weights in
 * bounded chunks. */
enum lms_status lms_importance_magnitude(const struct lms_model *m, unsigned mask,
                                         struct lms_importance *imp, struct lms_error *err);

#endif
