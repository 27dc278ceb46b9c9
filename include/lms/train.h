/* lmsurgeon: the training engine. A trainable student on a compute backend: fp32 master weights,
 * gradients, AdamW moments, the model backward written once against the backend op table, and
 * the distillation losses. The teacher runs forward-only through the existing engine
 * (include/lms/engine.h) and never holds gradients.
 *
 * Legend as in include/lms/engine.h: B batch rows, S tokens per row, N = B*S, L layers, H hidden,
 * F FFN width, n_h query heads, n_g key/value heads, d head dim, V logits width.
 *
 * One optimiser step with gradient accumulation is
 *
 *   lms_trainer_zero_grads(tr);
 *   for each micro-batch: lms_trainer_micro_step(tr, &batch, &loss, 1.0 / n_micro, &parts);
 *   lms_trainer_adamw(tr, &adamw, &grad_norm);
 *
 * and lms_trainer_export writes the current weights back into an IR model for the writers.
 * Everything the trainer touches on the device is planned before the first step
 * (lms_train_plan_make, also usable without a backend for a dry run) and allocated once. */
#ifndef LMS_TRAIN_H
#define LMS_TRAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lms/backend.h"
#include "lms/comm.h"
#include "lms/engine.h"
#include "lms/error.h"
#include "lms/ir.h"

/* ---- losses ----------------------------------------------------------------------------- */

enum lms_kd_kind {
    LMS_KD_FORWARD_KL = 0, /* KL(teacher || student) over the whole vocabulary (default) */
    LMS_KD_REVERSE_KL,     /* KL(student || teacher) */
    LMS_KD_TOP_K,          /* forward KL over the teacher's top-K entries, both sides
                            * renormalised over those K entries */
};

enum lms_hidden_loss_kind {
    LMS_HIDDEN_COSINE = 0, /* per token 1 - cos(W h_s + b, h_t) */
    LMS_HIDDEN_MSE,        /* per token mean over channels of (W h_s + b - h_t)^2 */
};

/* One intermediate-loss pair: a normalisation output of the student against one of the teacher.
 * point is LMS_HOOK_ATTN_NORM_OUT, LMS_HOOK_MLP_NORM_OUT or LMS_HOOK_FINAL_NORM_OUT (layer
 * ignored for the last), or LMS_HOOK_EMBED_OUT (the embedding output, layer ignored). */
struct lms_hidden_pair {
    enum lms_hook_point student_point;
    int64_t student_layer;
    enum lms_hook_point teacher_point;
    int64_t teacher_layer;
};

/* How the loss parts combine. Losses are means over valid token positions of the micro-batch:
 *   L_logits: the KD loss (kind, temperature T; times T^2 when t2_scale);
 *   L_ce:     cross-entropy on the targets (positions with target < 0 are not scored);
 *   L_int:    the mean over pairs of the hidden loss, each a mean over all B*S positions
 *             (only with a teacher engine).
 * LMS_COMBINE_WEIGHTED: L = kd_weight L_logits + ce_weight L_ce + hidden_weight L_int.
 * LMS_COMBINE_SCALED (the Minitron rule; ratios use values with gradients stopped):
 *   L_int' = L_int (L_logits / L_int);
 *   CE off (ce_weight == 0): L = L_logits + L_int';
 *   CE on: L_kd = (L_logits + L_int') (L_ce / (L_logits + L_int')),
 *          L = ce_weight L_ce + kd_weight L_kd (L_kd has L_ce's value, whatever ce_weight). */
enum lms_loss_combine {
    LMS_COMBINE_WEIGHTED = 0,
    LMS_COMBINE_SCALED,
};

struct lms_loss_opts {
    enum lms_kd_kind kd;        /* default forward KL */
    double kd_weight;           /* weight of L_logits (WEIGHTED); kd_loss_scale (SCALED) */
    double temperature;         /* T > 0; 0 means 1 */
    bool t2_scale;              /* multiply the KD loss (and its gradient) by T^2 */
    int64_t top_k;              /* K for LMS_KD_TOP_K (1 <= K <= V) */
    double ce_weight;           /* weight of L_ce (both rules); 0 = no cross-entropy */
    double hidden_weight;       /* WEIGHTED: weight of L_int */
    enum lms_hidden_loss_kind hidden_kind;
    const struct lms_hidden_pair *pairs; /* NULL / 0: no intermediate loss */
    size_t n_pairs;
    enum lms_loss_combine combine;
};

/* The default distillation loss: forward KL, T = 1, weight 1, nothing else. */
void lms_loss_opts_default(struct lms_loss_opts *lo);

/* The parts of the loss of one micro-step (means over valid positions, before weighting), and
 * the total that was differentiated. */
struct lms_loss_parts {
    double total;     /* the combined loss L */
    double kd;        /* L_logits (including T^2 when t2_scale); 0 when not computed */
    double ce;        /* L_ce; computed (for reporting) whenever targets are given */
    double hidden;    /* L_int; 0 without pairs */
    int64_t n_kd;     /* positions in the KD mean */
    int64_t n_ce;     /* positions with a target */
};

/* ---- trainer ---------------------------------------------------------------------------- */

struct lms_train_opts {
    int64_t max_batch;     /* B: most rows per micro-batch (> 0) */
    int64_t max_seq;       /* S: most tokens per row (> 0) */
    int64_t logits_rows;   /* token rows per logits / loss chunk; 0 = automatic (<= 64 MiB,
                            * or <= 1 GiB with bf16_working) */
    bool recompute;        /* keep only each layer's input and recompute the layer's other
                            * activations during the backward (less memory, ~1/3 more compute) */
    bool rope_bf16;        /* as lms_engine_opts.rope_bf16 */
    int64_t teacher_hidden; /* H of the teacher engine micro-steps will use (0 = the student's
                             * H): sizes the capture of the teacher's final-norm output. When it
                             * differs from H and max_hidden_pairs > 0, a learned
                             * (H_teacher, H) map with a bias joins the trainable parameters */
    size_t max_hidden_pairs; /* most intermediate-loss pairs a step will use (activation space
                              * for teacher and student norm outputs); 0: none */
    bool bf16_working;     /* plan a bf16 working copy of the weights, which the GEMMs read
                            * (lms_trainer_new sets it from the backend: on where the backend
                            * computes in bf16, as CUDA outside its fp32 precision) */
    /* Data parallelism, ZeRO stage 1 (see "data parallelism" below). comm NULL: one process,
     * as always. shards: ranks the optimiser state is split over, for the plan alone (a dry run
     * has no communicator); 0 = lms_comm_world(comm). */
    struct lms_comm *comm;
    int shards;
};

/* Device memory of a trainer, in bytes, for printing a plan and refusing what cannot fit. */
struct lms_train_plan {
    int64_t n_params;          /* trainable elements (including the hidden map) */
    size_t weights;            /* fp32 master weights */
    size_t working;            /* bf16 working copy of the weights (0 without) */
    size_t grads;              /* fp32 gradients */
    size_t moments;            /* AdamW m and v, fp32 (this rank's shard of them) */
    size_t activations;        /* saved forward activations and backward scratch */
    size_t logits;             /* student and teacher logits chunks and their gradient */
    size_t hidden;             /* intermediate-loss captures */
    size_t total;              /* sum of the above (the trainer's own allocations) */
    int64_t logits_rows;       /* rows per logits chunk chosen */
};

/* Plans the trainer's memory for a student of arch a with V logits rows (no backend needed).
 * LMS_EINVAL on a non-positive dimension or overflow. OUT: *plan. */
enum lms_status lms_train_plan_make(const struct lms_arch *a, int64_t logits_cols,
                                    const struct lms_train_opts *opts,
                                    struct lms_train_plan *plan, struct lms_error *err);

struct lms_trainer; /* opaque */

/* Validates the student, plans and allocates everything, and uploads its weights as the fp32
 * master copy (moments zero, gradients zero). student and be must outlive the trainer; the
 * trainer keeps no reference to the student's storages after this call. OUT: *out. */
enum lms_status lms_trainer_new(const struct lms_model *student, struct lms_backend *be,
                                const struct lms_train_opts *opts, struct lms_trainer **out,
                                struct lms_error *err);
void lms_trainer_free(struct lms_trainer *tr); /* NULL does nothing */
const struct lms_train_plan *lms_trainer_plan(const struct lms_trainer *tr);
int64_t lms_trainer_logits_cols(const struct lms_trainer *tr); /* V of the student */

/* One trainable tensor. Pointers are device addresses (host addresses on the CPU backend); read
 * or write them with lms_buf_download / lms_buf_upload. Weights of one fused projection (q | k
 * | v, gate | up, and their biases) lie back to back, but each is its own entry. */
struct lms_train_param {
    const char *name;     /* checkpoint name (the student's own, or "distill.hidden_map.*") */
    enum lms_role role;   /* LMS_ROLE_OTHER for the hidden map */
    int64_t layer;        /* -1 for global tensors */
    int ndim;             /* 1 or 2 */
    int64_t shape[2];
    int64_t numel;
    float *w;             /* fp32 master weight */
    float *g;             /* fp32 gradient (accumulated by micro-steps) */
    float *m, *v;         /* AdamW first and second moments; NULL with a communicator (the
                           * moments are sharded: lms_trainer_gather_moment) */
    bool decay;           /* weight decay applies by the usual grouping: false for biases and
                           * 1-D norm weights */
};

size_t lms_trainer_n_params(const struct lms_trainer *tr);
const struct lms_train_param *lms_trainer_param(const struct lms_trainer *tr, size_t i);

/* Tells the trainer that master weights were written directly through lms_train_param.w (a
 * resumed state, an all-gather of shards, weights generated on the device): it refreshes what it
 * derives from them (the bf16 working copy). */
enum lms_status lms_trainer_weights_updated(struct lms_trainer *tr, struct lms_error *err);

/* Sets every gradient to zero. */
enum lms_status lms_trainer_zero_grads(struct lms_trainer *tr, struct lms_error *err);

/* One micro-batch. Host inputs. */
struct lms_train_batch {
    const int32_t *ids;       /* (B, S) token ids */
    int64_t batch, seq;       /* B <= max_batch, S <= max_seq */
    const int32_t *targets;   /* (B, S) next-token targets, < 0 not scored; NULL: no CE */
    const uint8_t *kd_mask;   /* (B, S) 1 = position counts in the KD mean; NULL: all */
    /* The teacher: at most one of these (teacher_logits for tests and precomputed logits).
     * Without a teacher no KD is computed: micro-steps then accept only the weighted
     * combination with kd_weight 0 (cross-entropy alone, e.g. correcting a teacher), and eval
     * reports the cross-entropy alone (validation loss). */
    const float *teacher_logits;   /* host (B, S, V) */
    struct lms_engine *teacher;    /* forward-only engine on the same backend, same V */
};

/* Runs forward and backward of the student on b, adding grad_scale * dL/dparam to every
 * gradient (grad_scale = 1 / micro-batches for accumulation). The teacher (if an engine) runs
 * forward with no gradients. OUT: *parts (may be NULL). */
enum lms_status lms_trainer_micro_step(struct lms_trainer *tr, const struct lms_train_batch *b,
                                       const struct lms_loss_opts *lo, double grad_scale,
                                       struct lms_loss_parts *parts, struct lms_error *err);

/* Forward only (validation): the loss parts of b, no gradient touched. */
enum lms_status lms_trainer_eval(struct lms_trainer *tr, const struct lms_train_batch *b,
                                 const struct lms_loss_opts *lo, struct lms_loss_parts *parts,
                                 struct lms_error *err);


struct lms_adamw_opts {
    double lr;
    double beta1, beta2, eps;
    double weight_decay;   /* decoupled: w -= lr * weight_decay * w */
    bool decay_all;        /* apply weight decay to every tensor, ignoring param.decay */
    double clip_norm;      /* > 0: scale gradients by min(1, clip_norm / (norm + 1e-6)) */
    int64_t step;          /* 1-based step number, for bias correction */
};

/* Presets: lms_adamw_defaults = betas 0.9/0.999, eps 1e-8, wd 0.01, clip 1.0 (NeMo's defaults);
 * lms_adamw_megatron = betas 0.9/0.95, eps 1e-5, wd 0.1, clip 1.0. lr and step are left 0. */
void lms_adamw_defaults(struct lms_adamw_opts *o);
void lms_adamw_megatron(struct lms_adamw_opts *o);

/* One AdamW update of every parameter from its gradient (gradients are left as they are).
 * A gradient norm that is not finite (NaN / Inf) is LMS_ENONFINITE, *grad_norm holds it and
 * nothing is updated (the caller may skip the step: the gradients are still there to zero).
 * OUT: *grad_norm (may be NULL): the global norm before clipping. */
enum lms_status lms_trainer_adamw(struct lms_trainer *tr, const struct lms_adamw_opts *o,
                                  double *grad_norm, struct lms_error *err);

/* ---- data parallelism (ZeRO stage 1) ----------------------------------------------------
 * With opts.comm every rank holds the whole fp32 weights and gradients, laid out in one buffer
 * of world x chunk floats, and the AdamW moments of its own chunk only. Each rank runs its own
 * micro-batches (grad_scale = 1 / micro-batches of the whole global batch), then
 * lms_trainer_adamw, called by every rank, reduce-scatters the gradients (fp32 sums), takes the
 * clipping norm over all chunks (sum of squares per rank, summed over ranks in double), updates
 * its chunk of the weights and moments, and all-gathers the weights. With one rank the result
 * is bit for bit that of a run without a communicator. */

/* All ranks (a collective): assembles the whole first (which 0) or second (which 1) AdamW
 * moment in the gradient buffer, so that afterwards parameter i's moment is at params[i].g
 * (the gradients are overwritten: call between steps). Without a communicator it copies the
 * moment there. */
enum lms_status lms_trainer_gather_moment(struct lms_trainer *tr, int which,
                                          struct lms_error *err);

/* This rank's part of parameter i's moment which (0 first, 1 second) from host, the whole
 * tensor (numel floats): the elements of the tensor that lie in this rank's chunk (all of them
 * without a communicator). A state saved by any number of ranks loads on any other number. */
enum lms_status lms_trainer_load_moment(struct lms_trainer *tr, size_t i, int which,
                                        const float *host, struct lms_error *err);

/* Writes the current master weights into out (initialised here): the student's config,
 * metadata and tensor names, each tensor in host memory storage, in dtype dt (F32, BF16 or F16;
 * others are LMS_EINVAL). The hidden map is not part of the model. */
enum lms_status lms_trainer_export(struct lms_trainer *tr, enum lms_dtype dt,
                                   struct lms_model *out, struct lms_error *err);

#endif
