/* lmsurgeon: importance scores, the contract between scoring and surgery.
 *
 * Scores are per axis (higher = more important): one per layer (depth), per hidden channel, per
 * FFN neuron per layer, per attention head per layer, per query group per layer. Any axis may be
 * absent. They are produced from calibration activations (the importance issue) or, as a
 * fallback, from weight magnitudes (lms_importance_magnitude), and stored as an importance file:
 *
 *   {"format": "lmsurgeon-importance", "version": 1,
 *    "method": "activation" | "weight-magnitude" | free text,
 *    "model": {"num_layers": L, "hidden_size": H, "ffn_hidden_size": F,
 *              "num_attention_heads": n_h, "num_query_groups": n_g},
 *    "source": {...free-form provenance: data, rows, row length, seed...},
 *    "layers": [L], "hidden": [H], "ffn": [[F] x L], "heads": [[n_h] x L],
 *    "query_groups": [[n_g] x L]}
 *
 * Numbers are JSON numbers (finite). Layer entries follow the model's 0-based layer order. */
#ifndef LMS_IMPORTANCE_H
#define LMS_IMPORTANCE_H

#include <jansson.h>
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

struct lms_importance {
    int64_t n_layers, hidden, ffn, n_heads, n_groups; /* dims of the model scored */
    double *layers;  /* [L] or NULL; owned */
    double *hidden_s; /* [H] or NULL; owned */
    double *ffn_s;   /* [L][F] row-major or NULL; owned */
    double *heads;   /* [L][n_h] or NULL; owned */
    double *groups;  /* [L][n_g] or NULL; owned */
    char *method;    /* owned */
    json_t *source;  /* provenance object or NULL; owned */
};

void lms_importance_init(struct lms_importance *imp, const struct lms_arch *a);
void lms_importance_release(struct lms_importance *imp);
/* Axes present, as a mask of enum lms_axis. */
unsigned lms_importance_axes(const struct lms_importance *imp);

/* Reads and validates an importance file (schema above). OUT: imp (release it). */
enum lms_status lms_importance_read(const char *path, struct lms_importance *imp,
                                    struct lms_error *err);
/* Checks that the file was made for a model of arch's dimensions. */
enum lms_status lms_importance_check(const struct lms_importance *imp, const struct lms_arch *a,
                                     const char *path, struct lms_error *err);
/* Writes imp atomically (temporary file beside path, fsync, rename). */
enum lms_status lms_importance_write(const struct lms_importance *imp, const char *path,
                                     struct lms_error *err);

/* Fills the axes in mask (hidden, FFN, heads, groups; layers have no magnitude score) from
 * weight magnitudes: the L2 norm of every row and column a channel owns. Reads the weights in
 * bounded chunks. */
enum lms_status lms_importance_magnitude(const struct lms_model *m, unsigned mask,
                                         struct lms_importance *imp, struct lms_error *err);

#endif
