/* The decoder model, defined once (engine/model.c) for the inference engine (forward.c) and the
 * trainer (train.c). Private to engine/.
 *
 * One pass over the model is embedding -> n_layers decoder blocks -> final RMSNorm; the caller
 * runs the head (chunked logits and cross-entropy for inference, the distillation losses for
 * training). The same block code serves three uses, switched by what the caller hands it, as
 * llm.c's gpt2_forward is switched by its targets:
 *
 *   - inference: one residual buffer updated in place, one normalisation buffer, the rstd / lse
 *     fields of struct lms__layer_acts NULL: nothing for a backward is written or kept, and the
 *     workspace is lms_fwd_plan_make's;
 *   - training forward: a residual buffer per layer boundary and a slot of saved activations per
 *     layer (or one slot, recomputed before each layer's backward), laid out by the trainer's
 *     plan;
 *   - backward: lms__model_backward / lms__layer_backward, reading the same layer descriptor
 *     and the activations the training forward saved.
 *
 * Legend as in include/lms/engine.h: N = batch * seq token rows, H hidden, F FFN width, d head
 * dim, QKV = (n_h + 2 n_g) d. Every pointer is a device address of the pass's backend. */
#ifndef LMS_ENGINE_MODEL_H
#define LMS_ENGINE_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/backend_impl.h"
#include "lms/engine.h"
#include "lms/ir.h"

/* ---- checked sizes, for both memory planners ---- */

/* *out = a * b; false on overflow or a negative product. */
bool lms__mul_ok(int64_t a, int64_t b, int64_t *out);
/* Reserves n elements of esize bytes at *cursor, 64-byte aligned, offset in *off; false on
 * overflow. */
bool lms__reserve(size_t *cursor, int64_t n, size_t esize, size_t *off);

/* Checks that m can run: a valid IR model, RoPE this engine computes, an embedding and an LM
 * head (or tied embeddings); their rows in *vocab_in and *n_logits. Errors start with
 * "WHO: " and call the model WHAT ("engine", "model"; "trainer", "student"). */
enum lms_status lms__model_check(const struct lms_model *m, const char *who, const char *what,
                                 int64_t *vocab_in, int64_t *n_logits, struct lms_error *err);

/* ---- weights ---- */

/* One decoder layer's weights as the block reads them. The projections are GEMM operands in
 * wdt (the inference engine: the backend's weight dtype; the trainer: its fp32 master weights or
 * their bf16 working copy); q | k | v are one (QKV, H) matrix and gate | up one (2F, H) matrix.
 * Norm weights and biases are fp32; those the architecture lacks are NULL. */
struct lms__layer_weights {
    enum lms_dtype wdt;
    const void *qkv, *o, *gu, *down;
    const float *qkv_bias, *q_norm, *k_norm, *o_bias, *attn_norm, *mlp_norm;
};

/* The gradients of one layer's parameters (fp32, the weights' shapes), added to by the
 * backward; NULL where the weight is absent. */
struct lms__layer_grads {
    float *qkv, *qkv_bias, *q_norm, *k_norm, *o, *o_bias, *attn_norm, *mlp_norm, *gu, *down;
};

/* The whole model's weights: the embedding table (vocab_in, H) in embed_dt, the final norm, and
 * arch->n_layers layer descriptors. */
struct lms__model {
    const struct lms_arch *a;
    const void *embed;
    enum lms_dtype embed_dt;
    int64_t vocab_in;
    const float *final_norm;
    const struct lms__layer_weights *layers;
};

struct lms__model_grads {
    float *embed, *final_norm;
    const struct lms__layer_grads *layers;
};

/* Where one tensor of the model goes: a field of struct lms__model or lms__layer_weights, or
 * LMS__P_PART, the next part of the fused matrix the previous tensor started (k and v after q,
 * their biases after q's, up after gate), placed right behind it. */
enum lms__param_field {
    LMS__P_EMBED,
    LMS__P_LM_HEAD,
    LMS__P_FINAL_NORM,
    LMS__P_QKV,
    LMS__P_QKV_BIAS,
    LMS__P_Q_NORM,
    LMS__P_K_NORM,
    LMS__P_O,
    LMS__P_O_BIAS,
    LMS__P_ATTN_NORM,
    LMS__P_MLP_NORM,
    LMS__P_GU,
    LMS__P_DOWN,
    LMS__P_PART,
};

/* One tensor of the model. matrix: a GEMM operand or embedding table (kept in the weight dtype
 * by the inference engine), else an fp32 norm weight or bias. */
struct lms__param {
    enum lms_role role;
    int64_t layer; /* -1 for the embedding, LM head and final norm */
    enum lms__param_field field;
    bool matrix;
};

/* The model's tensors in the order both the inference engine and the trainer lay them out (the
 * LM head only when it is not tied; biases and q/k norms as the architecture says). Fills out
 * when not NULL; returns the count. */
size_t lms__model_params(const struct lms_arch *a, struct lms__param *out);

/* ---- activations ---- */

/* Where one layer writes. x_in, x_mid, x_out are the residual stream entering the layer, after
 * its attention and leaving it: equal pointers add in place (inference), distinct ones keep
 * each for the backward. xn1 / xn2 are the outputs of the attention and MLP norms (may be one
 * buffer). The fields below "saved" are written only when not NULL. */
struct lms__layer_acts {
    float *x_in, *x_mid, *x_out;
    float *xn1, *xn2;
    float *qkv;  /* (N, QKV) q | k | v after q/k norm and RoPE: the attention's input */
    float *ctx;  /* (N, n_h d) attention output */
    float *gu;   /* (N, 2F) gate | up */
    float *act;  /* (N, F) SwiGLU output */
    /* saved */
    float *qkv_pre;                /* (N, QKV) before the q/k norm; NULL: normalised in place */
    float *rstd1, *rstd2;          /* (N) of the attention and MLP norms */
    float *rstd_q, *rstd_k;        /* (N, n_h), (N, n_g) of the q / k norms */
    float *lse;                    /* (B, n_h, S) attention log-sum-exp */
};

/* The activations of a whole pass. Layer l reads res + l * res_step and writes
 * res + (l + 1) * res_step: res_step 0 keeps one buffer updated in place (inference). Layer l
 * uses slots[l], or slots[0] for every layer when n_slots is 1; the slot's x_in / x_out are
 * set from res, and a NULL x_mid means in place. xnf is the final norm's output, rstdf its
 * rstd (saved when not NULL). */
struct lms__model_acts {
    float *res;
    int64_t res_step;
    const struct lms__layer_acts *slots;
    int64_t n_slots;
    float *xnf, *rstdf;
};

/* Scratch of the backward: dx (N, H) the gradient of the residual stream, dxn (N, H) of a norm
 * output, dctx (N, n_h d), dqkv (N, QKV), dgu (N, 2F), dact (N, F). */
struct lms__backward_scratch {
    float *dx, *dxn, *dctx, *dqkv, *dgu, *dact;
};

/* ---- one pass ---- */

/* Called at each hook point with data (N, cols). In the forward grad is NULL; in the backward it
 * is called again at EMBED_OUT, ATTN_NORM_OUT, MLP_NORM_OUT and FINAL_NORM_OUT with grad, the
 * gradient of the loss with respect to data, to which the observer may add its own loss's. */
typedef enum lms_status (*lms__observe_fn)(void *ctx, enum lms_hook_point p, int64_t layer,
                                           const float *data, int64_t cols, float *grad,
                                           struct lms_error *err);

/* What every layer of one pass shares. pos (N) are the positions, rope_cos / rope_sin the
 * (rope_rows, d/2) tables. observe may be NULL (a recomputation). */
struct lms__model_pass {
    struct lms_backend *be;
    const struct lms_arch *a;
    int64_t batch, seq;
    const int32_t *pos;
    const float *rope_cos, *rope_sin;
    int64_t rope_rows;
    lms__observe_fn observe;
    void *observe_ctx;
};

/* Embedding of ids (N, device), every layer not marked in skip (NULL: none), final norm. */
enum lms_status lms__model_forward(const struct lms__model_pass *ps, const struct lms__model *m,
                                   const struct lms__model_acts *acts, const int32_t *ids,
                                   const bool *skip, struct lms_error *err);

/* Backward of lms__model_forward (no skip), after it ran with the same acts: d->dxn holds the
 * gradient of the final norm's output on entry; the gradients of every parameter are added into
 * g. With recompute, each layer's slot is refilled by its forward (observers off) just before
 * its backward. */
enum lms_status lms__model_backward(const struct lms__model_pass *ps, const struct lms__model *m,
                                    const struct lms__model_grads *g,
                                    const struct lms__model_acts *acts,
                                    const struct lms__backward_scratch *d, const int32_t *ids,
                                    bool recompute, struct lms_error *err);

/* One decoder block (acts' x_in .. x_out all set). */
enum lms_status lms__layer_forward(const struct lms__model_pass *ps, int64_t l,
                                   const struct lms__layer_weights *w,
                                   const struct lms__layer_acts *acts, struct lms_error *err);

/* Backward of one block: d->dx holds the gradient of x_out on entry and that of x_in on return;
 * parameter gradients are added into g. */
enum lms_status lms__layer_backward(const struct lms__model_pass *ps, int64_t l,
                                    const struct lms__layer_weights *w,
                                    const struct lms__layer_grads *g,
                                    const struct lms__layer_acts *acts,
                                    const struct lms__backward_scratch *d,
                                    struct lms_error *err);

/* ---- building blocks ---- */

/* y (rows, n) = x (rows, k) W^T + beta y (+ bias), W (n, k) in wdt; x, y at row strides ldx,
 * ldy. */
enum lms_status lms__linear(struct lms_backend *be, float *y, int64_t ldy, const float *x,
                            int64_t ldx, const void *w, enum lms_dtype wdt, const float *bias,
                            int64_t rows, int64_t n, int64_t k, float beta,
                            struct lms_error *err);

/* Backward of lms__linear: dx (rows, k) = dy W (beta 0 writes, 1 adds; skipped when dx is
 * NULL); dw (n, k) += dy^T x; dbias (n) += column sums of dy when dbias is not NULL. */
enum lms_status lms__linear_backward(struct lms_backend *be, float *dx, int64_t lddx,
                                     float dx_beta, const float *dy, int64_t lddy, const float *x,
                                     int64_t ldx, const void *w, enum lms_dtype wdt, float *dw,
                                     float *dbias, int64_t rows, int64_t n, int64_t k,
                                     struct lms_error *err);

/* C (m, n) = op(A) op(B) + beta C, A and C fp32 row-major, B in bdt. */
enum lms_status lms__gemm(struct lms_backend *be, bool ta, bool tb, int64_t m, int64_t n,
                          int64_t k, const float *A, int64_t lda, const void *B,
                          enum lms_dtype bdt, int64_t ldb, float *C, int64_t ldc, float beta,
                          const float *bias, struct lms_error *err);

/* Streams view v into device address dst as dtype dt through the host buffer staging, which
 * holds staging_elems elements of dt. */
enum lms_status lms__upload_view(struct lms_backend *be, const struct lms_view *v,
                                 enum lms_dtype dt, void *dst, void *staging,
                                 int64_t staging_elems, struct lms_error *err);

/* dst = src, n fp32 elements on the device. */
enum lms_status lms__copy(struct lms_backend *be, float *dst, const float *src, int64_t n,
                          struct lms_error *err);

#endif
