/* lmsurgeon: weight reconstruction after width pruning.
 *
 * When FFN neurons or attention heads are removed, the projection that reads them (down_proj
 * reads the FFN intermediate activations a, dim F; o_proj reads the attention context, dim
 * n_h d) loses part of its input. Instead of keeping the surviving columns as they are, the
 * kept columns are refitted by least squares so that the projection's output on calibration
 * activations matches the unpruned layer's:
 *
 *   G = sum over calibration tokens of a a^T,   y = W a (the unpruned output),
 *   W'_K = W G[:, K] (G[K, K] + lambda I)^-1,   lambda = LMS_RECON_RIDGE x mean diag G[K, K]
 *
 * solved in double by Cholesky. Where the projection has a bias (Llama's o_proj with
 * attention_bias) the input is extended by a constant 1 (G gains the column sum a and the
 * token count), so the bias absorbs the mean of the removed channels; the ridge does not
 * apply to that entry.
 *
 * The sums ("gram statistics") are gathered in the calibration pass of include/lms/score.h
 * when asked for, add across runs over disjoint rows like the importance file's raw sums, and
 * are stored in a safetensors sidecar next to the importance file (README "Weight reconstruction"):
 *
 *   __metadata__: {"format": "lmsurgeon-gram", "version": "1", "num_layers", "ffn_hidden_size",
 *                  "attention_context", "tokens", "model_fingerprint", "data_fingerprint",
 *                  "rows", "row_length"}          (every value a string, as safetensors wants)
 *   layers.L.mlp.down_proj.input_gram       F64 [F, F]
 *   layers.L.mlp.down_proj.input_sum        F64 [F]
 *   layers.L.self_attn.o_proj.input_gram    F64 [C, C]   (C = n_h d)
 *   layers.L.self_attn.o_proj.input_sum     F64 [C] */
#ifndef LMS_RECON_H
#define LMS_RECON_H

#include <stdbool.h>
#include <stdint.h>

#include "lms/error.h"
#include "lms/hash.h"
#include "lms/ir.h"

/* lambda relative to the mean diagonal of G[K, K] (see README "Weight reconstruction"). */
#define LMS_RECON_RIDGE 1e-2

enum lms_gram_kind {
    LMS_GRAM_DOWN, /* input of down_proj (F) */
    LMS_GRAM_O,    /* input of o_proj, the attention context (n_h d) */
    LMS_GRAM_KINDS
};

struct lms_st_file;

/* The gram statistics of every layer: in memory (gathered by a calibration pass) or read from a
 * sidecar one layer at a time. */
struct lms_gram {
    int64_t n_layers;
    int64_t dim[LMS_GRAM_KINDS]; /* F, n_h d */
    int64_t n_tokens;            /* tokens summed */
    int64_t n_rows, row_length;  /* calibration rows and their length (provenance) */
    char model_fp[LMS_HASH64_HEX]; /* the model the sums were gathered on */
    char data_fp[LMS_HASH64_HEX];
    double *gram[LMS_GRAM_KINDS]; /* [L][n][n] in memory; NULL when file-backed */
    double *sum[LMS_GRAM_KINDS];  /* [L][n] in memory; NULL when file-backed */
    struct lms_st_file *file;     /* the sidecar when read from one */
    char *path;                   /* its path, for messages; owned */
};

/* Zeroed in-memory sums for a model of arch a. LMS_ENOMEM when they do not fit. */
enum lms_status lms_gram_alloc(struct lms_gram *g, const struct lms_arch *a,
                               struct lms_error *err);
/* Bytes lms_gram_alloc would allocate for a (8 x L x (F^2 + F + C^2 + C)). */
uint64_t lms_gram_bytes(const struct lms_arch *a);
void lms_gram_release(struct lms_gram *g);

/* Writes g as a sidecar at path, atomically (temporary file, rename), one layer's tensors at a
 * time. Without force an existing path is refused. */
enum lms_status lms_gram_write(const struct lms_gram *g, const char *path, bool force,
                               struct lms_error *err);
/* Opens a sidecar and checks its header (format, version, every tensor present as F64 of the
 * dims its metadata states). The sums stay in the file until lms_gram_layer reads them. */
enum lms_status lms_gram_open(const char *path, struct lms_gram *g, struct lms_error *err);
/* Checks that g was gathered on the model a with fingerprint model_fp (LMS_ESHAPE naming both
 * when the dims differ, LMS_EFORMAT when the fingerprint does). */
enum lms_status lms_gram_check(const struct lms_gram *g, const struct lms_arch *a,
                               const char *model_fp, struct lms_error *err);
/* Layer l's sums of kind k into gram (n x n) and sum (n), n = g->dim[k]; values read from a
 * file are checked finite (LMS_EFORMAT naming the tensor). */
enum lms_status lms_gram_layer(const struct lms_gram *g, enum lms_gram_kind k, int64_t l,
                               double *gram, double *sum, struct lms_error *err);
/* Adds the sidecars paths[0..n) (one calibration set's disjoint parts: same dims, model and
 * data fingerprints and row length) and writes the sum to out, one layer at a time. */
enum lms_status lms_gram_merge_files(const char *const *paths, int n, const char *out,
                                     bool force, struct lms_error *err);
/* The sidecar's path for an importance file: "X.json" -> "X.gram.safetensors" (other names:
 * NAME + ".gram.safetensors"). */
void lms_gram_sidecar_path(const char *importance_path, char *dst, size_t cap);

/* The refit of one projection. w: rows x n (the unpruned weight, row-major, in double), bias:
 * rows or NULL (no bias: the plain refit); gram, sum: the layer's sums over n_tokens tokens;
 * keep[0..k): the kept input columns, ascending. OUT: w_out rows x k, bias_out rows (when bias).
 * LMS_EINVAL when G[K, K] + lambda I is not positive definite (no calibration tokens, or
 * non-finite sums). */
enum lms_status lms_recon_solve(const double *w, const double *bias, int64_t rows, int64_t n,
                                const double *gram, const double *sum, int64_t n_tokens,
                                const int64_t *keep, int64_t k, double ridge, double *w_out,
                                double *bias_out, struct lms_error *err);

#endif
