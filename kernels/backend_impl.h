/* lmsurgeon: the backend op table, for implementers and for the library code that runs models.
 *
 * A backend is a versioned table of slots (struct lms_backend_ops) plus a context. The CPU
 * backend (kernels/cpu/) fills every slot and is the numerical reference; the CUDA backend
 * (kernels/cuda/, behind the C boundary kernels/cuda/lms_cuda.h) fills the same slots. Model
 * code (the engine in engine/, which importance/ and distill/ drive) calls the slots and never asks which backend
 * it runs on. Slots are only ever appended: a new op gets a new slot at the end and bumps
 * LMS_BACKEND_OPS_VERSION; a backend that does not implement an optional slot leaves it NULL and
 * callers check the slot before use (e.g. the activation-statistics hooks of importance scoring,
 * and the backward ops and KD loss of distillation go at the end).
 *
 * Conventions for every op:
 *   - pointers are device addresses inside lms_buf allocations of the same backend;
 *   - activations are row-major in the backend's activation dtype (lms__backend_activation_dtype:
 *     fp32 on every backend today); the slots of versions 1-4 take them as float, the typed
 *     slots of version 5 take a dtype argument; the dtype class of every operand of every op is
 *     data (struct lms_op_contract below, kernels/contract.c); a "row stride" is in elements;
 *   - ids, positions and targets are int32;
 *   - ops may run asynchronously; errors of an op are returned by it or by the next sync;
 *   - shapes are listed per argument, N = number of token rows (B*S). */
#ifndef LMS_BACKEND_IMPL_H
#define LMS_BACKEND_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lms/backend.h"
#include "lms/dtype.h"
#include "lms/error.h"

#define LMS_BACKEND_OPS_VERSION 5

enum {
    LMS_CAP_BF16_WEIGHTS = 1u << 0, /* matmul/embedding accept bf16 weights directly */
    LMS_CAP_ASYNC = 1u << 1,        /* ops are queued; downloads synchronise */
};

/* C[b] = alpha * op(A[b]) . op(B[b]) + beta * C[b] + bias, for b < batch, all row-major.
 * op(A) is (m, k): A is (m, k) with row stride lda, or (k, m) when trans_a.
 * op(B) is (k, n): B is (k, n) with row stride ldb, or (n, k) when trans_b (the [out, in]
 * weight layout: y = x W^T is trans_b with B = W).
 * A and C are fp32; B is fp32 or the backend's weight dtype (lms__backend_weight_dtype). */
struct lms_matmul {
    bool trans_a, trans_b;
    int64_t m, n, k;
    const float *a;        /* (m, k) or (k, m) per batch */
    int64_t lda, stride_a; /* row stride; elements between batches */
    const void *b;         /* (k, n) or (n, k) per batch, dtype b_dtype */
    enum lms_dtype b_dtype;
    int64_t ldb, stride_b;
    float *c;              /* (m, n) per batch */
    int64_t ldc, stride_c;
    int64_t batch;         /* >= 1 */
    float alpha, beta;     /* beta = 0: C is not read (may hold NaN) */
    const float *bias;     /* (n) added to every row of C, or NULL */
};

/* Causal grouped-query attention, never materialising (S, S). Query head h uses key/value
 * head h / (n_h / n_g) (contiguous heads per group).
 * Row (b, t) of q is at q + (b*S + t) * q_stride; head h at column h*d. Same for k, v, out.
 * Key j is visible to query i when j <= i and (window == 0 or i - j < window). */
struct lms_attention {
    int64_t batch, seq;    /* B, S */
    int64_t n_heads;       /* n_h */
    int64_t n_groups;      /* n_g, divides n_h */
    int64_t head_dim;      /* d */
    const float *q;        /* (B*S, q_stride), heads at [0, n_h*d) */
    const float *k;        /* (B*S, kv_stride), heads at [0, n_g*d) */
    const float *v;        /* (B*S, kv_stride) */
    int64_t q_stride, kv_stride;
    float *out;            /* (B*S, out_stride), heads at [0, n_h*d); may not alias q/k/v */
    int64_t out_stride;
    float scale;           /* softmax scale, usually 1/sqrt(d) */
    int64_t window;        /* sliding window in tokens; 0 = none */
    float *lse;            /* (B, n_h, S) log-sum-exp of each row's scaled scores, written when
                            * not NULL (for the backward; a backend that fills the
                            * attention_backward slot must honour it) */
};

/* ---- argument structs of the training slots ---- */

/* Backward of struct lms_attention, flash style: per (query block, key tile) the scores are
 * recomputed from q, k and the saved lse; (S, S) is never formed. Shapes and strides as in the
 * forward; the gradients are written (not accumulated): dq like q, dk and dv like k and v
 * (n_g heads; the r = n_h / n_g query heads of a group sum into their key/value head). */
struct lms_attention_backward {
    struct lms_attention fwd; /* q, k, v, out and lse of the forward (lse required) */
    const float *dout;        /* (B*S, dout_stride), heads at [0, n_h*d) */
    int64_t dout_stride;
    float *dq;                /* (B*S, dq_stride) */
    int64_t dq_stride;
    float *dk, *dv;           /* (B*S, dkv_stride) each */
    int64_t dkv_stride;
};

/* Logit losses over one chunk of R token rows, in one pass over the vocabulary per row (online
 * max / log-sum-exp; the probability tensors are never stored). Per row r with student logits
 * s, teacher logits t and temperature T:
 *   kd_loss[r] = kd_mul * KL(p || q) (forward), KL(q || p) (reverse), or the forward KL over the
 *                teacher's top-K entries renormalised on both sides; p = softmax(t/T),
 *                q = softmax(s/T); 0 when kd_valid[r] == 0;
 *   ce_loss[r] = logsumexp(s) - s[target[r]], 0 for target[r] < 0.
 * grad (may equal student) gets kd_grad_scale * d kd_loss[r]/ds + ce_grad_scale * d ce/ds
 * (the forward-KL gradient is kd_mul (q - p) / T); NULL: losses only. */
struct lms_logit_loss {
    int64_t n_rows, vocab;
    const float *student;      /* (R, V) row stride ld */
    const float *teacher;      /* (R, V) row stride ld, or NULL (no KD) */
    int64_t ld;
    const int32_t *target;     /* (R) or NULL (no CE) */
    const uint8_t *kd_valid;   /* (R) or NULL (all rows) */
    int kd_kind;               /* enum lms_kd_kind (include/lms/train.h) */
    int64_t top_k;
    float temperature;
    float kd_mul;              /* T^2 or 1 */
    float *kd_loss, *ce_loss;  /* (R) each, or NULL */
    float *grad;               /* (R, V) row stride ld, or NULL */
    float kd_grad_scale, ce_grad_scale;
};

/* One tensor's AdamW update (decoupled weight decay, bias-corrected moments):
 *   g' = g * grad_scale; m = b1 m + (1-b1) g'; v = b2 v + (1-b2) g'^2;
 *   w -= lr * weight_decay * w; w -= lr * (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps) */
struct lms_adamw {
    float *w;
    const float *g;
    float *m, *v;
    int64_t n;
    float weight_decay;
    uint16_t *w_bf16; /* when not NULL: the updated w rounded to bf16 (nearest even) is written
                       * here too (the bf16 working copy of a master weight) */
};
struct lms_adamw_hyper {
    float lr, beta1, beta2, eps;
    float grad_scale;  /* clipping factor */
    int64_t step;      /* >= 1 */
};

/* ---- version 5: typed activation storage ----
 * The typed slots compute in fp32 and accumulate in fp32 (or better) whatever the storage: each
 * operand in F32 or BF16 is widened exactly, and each stored output is rounded once, to nearest
 * even (lms_f32_to_bf16), from the value the fp32 op computes on the widened operands. */

/* struct lms_matmul with a dtype per operand: a, b and c each F32 or BF16 (b also the
 * backend's weight dtype). C = alpha * op(A) . op(B) + beta * C + bias in fp32, C rounded once
 * when BF16; C is read (as its dtype) only when beta != 0. bias stays fp32. */
struct lms_matmul_typed {
    bool trans_a, trans_b;
    int64_t m, n, k;
    const void *a;
    enum lms_dtype a_dtype;
    int64_t lda, stride_a;
    const void *b;
    enum lms_dtype b_dtype;
    int64_t ldb, stride_b;
    void *c;
    enum lms_dtype c_dtype;
    int64_t ldc, stride_c;
    int64_t batch;
    float alpha, beta;
    const float *bias;
};

/* ---- the dtype contract of the op table ----
 * Each operand of each op belongs to one dtype class; lms__slot_dtype resolves a class to the
 * dtype a backend stores it in. Classes that are always fp32 hold what needs fp32's 24-bit
 * significand: statistics and scales (RMSNorm's rstd, the RoPE tables, norm weights, biases),
 * softmax/log-sum-exp, logits and losses, master weights, their gradients and the AdamW
 * moments. */
enum lms_slot_class {
    LMS_SLOT_ACT,    /* activation storage: lms__backend_activation_dtype (F32 or BF16) */
    LMS_SLOT_WEIGHT, /* a weight matrix in the backend's weight_dtype of the checkpoint */
    LMS_SLOT_F32,    /* always F32 */
    LMS_SLOT_BF16,   /* always BF16 (the working copy AdamW writes) */
    LMS_SLOT_I32,    /* token ids, positions, targets */
    LMS_SLOT_U8,     /* per-row flags */
    LMS_SLOT_CALL,   /* named by the call's own dtype argument (cast, typed matmul operands) */
};

enum lms_slot_dir { LMS_SLOT_IN, LMS_SLOT_OUT, LMS_SLOT_INOUT };

struct lms_op_slot {
    const char *name; /* the argument's name at the slot ("x", "rstd", "lse") */
    enum lms_slot_class cls;
    enum lms_slot_dir dir;
};

#define LMS_OP_MAX_SLOTS 12
/* One op of the table (both its float slot and, for ops of version 5, its typed slot). */
struct lms_op_contract {
    const char *op;      /* the slot's name in struct lms_backend_ops ("rmsnorm") */
    const char *typed;   /* its typed slot ("rmsnorm_typed"), or NULL */
    int n_slots;
    struct lms_op_slot slots[LMS_OP_MAX_SLOTS];
};

/* The contract of every op with device operands, in table order; *n gets the count. */
const struct lms_op_contract *lms__op_contracts(size_t *n);
/* The contract of op (its slot name or its typed slot's name); NULL when there is none. */
const struct lms_op_contract *lms__op_contract(const char *op);
/* The dtype a backend stores class cls in (ckpt: the checkpoint dtype, for LMS_SLOT_WEIGHT);
 * LMS_DTYPE_COUNT for LMS_SLOT_CALL, which has no dtype of its own. */
enum lms_dtype lms__slot_dtype(const struct lms_backend *be, enum lms_slot_class cls,
                               enum lms_dtype ckpt);
/* The dtype class's name ("activation", "weight", "f32", ...). */
const char *lms__slot_class_name(enum lms_slot_class cls);

struct lms_backend_ops {
    int version;      /* LMS_BACKEND_OPS_VERSION the table was built against */
    const char *kind; /* "cpu", "cuda" */
    unsigned caps;    /* LMS_CAP_* */

    /* ---- context and memory (all required) ---- */
    /* Creates the device context in be->impl (be->dev and be->n_threads are set by the
     * registry). LMS_EDEVICE when the device is not usable. */
    enum lms_status (*open)(struct lms_backend *be, const struct lms_backend_opts *opts,
                            struct lms_error *err);
    void (*close)(struct lms_backend *be);
    enum lms_status (*alloc)(struct lms_backend *be, size_t size, struct lms_buf *out,
                             struct lms_error *err);
    void (*free)(struct lms_backend *be, struct lms_buf *buf);
    enum lms_status (*upload)(struct lms_backend *be, void *dst, const void *src, size_t n,
                              struct lms_error *err);
    enum lms_status (*download)(struct lms_backend *be, void *dst, const void *src, size_t n,
                                struct lms_error *err);
    enum lms_status (*sync)(struct lms_backend *be, struct lms_error *err);
    /* The dtype weights of checkpoint dtype ckpt are stored in on this device (the CPU
     * converts everything to F32 once; CUDA keeps BF16/F16). */
    enum lms_dtype (*weight_dtype)(const struct lms_backend *be, enum lms_dtype ckpt);

    /* ---- forward ops ---- */
    enum lms_status (*matmul)(struct lms_backend *be, const struct lms_matmul *mm,
                              struct lms_error *err);
    /* out (N, H) = table[ids[i]] as fp32; table (V, H) in table_dtype; ids (N) checked < V
     * (LMS_EINVAL names the first bad id). */
    enum lms_status (*embedding)(struct lms_backend *be, float *out, const int32_t *ids,
                                 int64_t n, const void *table, enum lms_dtype table_dtype,
                                 int64_t vocab, int64_t hidden, struct lms_error *err);
    /* RMSNorm over C channels of n_rows * n_heads rows (HF: x * rsqrt(mean(x^2) + eps) * w).
     * Row (r, h) of x is at x + r*x_stride + h*C, of out at out + r*out_stride + h*C; out may
     * equal x. w (C). rstd (n_rows * n_heads) written when not NULL (for backward). */
    enum lms_status (*rmsnorm)(struct lms_backend *be, float *out, int64_t out_stride,
                               const float *x, int64_t x_stride, const float *w, float *rstd,
                               int64_t n_rows, int64_t n_heads, int64_t c, float eps,
                               struct lms_error *err);
    /* Rotary embedding in place, HF rotate_half layout: for i < d/2 and p = pos[r],
     *   x[i]       = x[i] * cos[p, i] - x[i + d/2] * sin[p, i]
     *   x[i + d/2] = x[i + d/2] * cos[p, i] + x[i] * sin[p, i]
     * Head h of row r at x + r*x_stride + h*d. pos (n_rows), each < n_pos; cos, sin (n_pos, d/2)
     * from lms_rope_table (include/lms/engine.h), already scaled. */
    enum lms_status (*rope)(struct lms_backend *be, float *x, int64_t x_stride, int64_t n_rows,
                            int64_t n_heads, int64_t head_dim, const int32_t *pos,
                            const float *cos, const float *sin, int64_t n_pos,
                            struct lms_error *err);
    enum lms_status (*attention)(struct lms_backend *be, const struct lms_attention *at,
                                 struct lms_error *err);
    /* out[r, f] = silu(gate[r, f]) * up[r, f]; gate/up rows at stride in_stride, out rows at
     * out_stride; f < F. */
    enum lms_status (*swiglu)(struct lms_backend *be, float *out, int64_t out_stride,
                              const float *gate, const float *up, int64_t in_stride,
                              int64_t n_rows, int64_t f, struct lms_error *err);
    /* y (n) += x (n). */
    enum lms_status (*add)(struct lms_backend *be, float *y, const float *x, int64_t n,
                           struct lms_error *err);
    /* out (n_rows, c) = log_softmax(x (n_rows, c)) along c; row strides ld; out may equal x. */
    enum lms_status (*log_softmax)(struct lms_backend *be, float *out, const float *x,
                                   int64_t ld, int64_t n_rows, int64_t c, struct lms_error *err);
    /* loss[r] = logsumexp(logits[r]) - logits[r, target[r]] for target[r] >= 0, 0 for
     * target[r] < 0 (ignored). logits (n_rows, c) with row stride ld; target, loss (n_rows).
     * A target >= c is LMS_EINVAL. */
    enum lms_status (*cross_entropy)(struct lms_backend *be, float *loss, const float *logits,
                                     int64_t ld, const int32_t *target, int64_t n_rows,
                                     int64_t c, struct lms_error *err);
    /* dst (n, dt) = src (n, st); F32/F16/BF16 both ways. */
    enum lms_status (*cast)(struct lms_backend *be, void *dst, enum lms_dtype dt,
                            const void *src, enum lms_dtype st, int64_t n,
                            struct lms_error *err);

    /* ---- version 2: activation statistics for importance scoring ---- */
    /* Sequence mean of magnitudes per row and channel, one pass over x:
     *   out[b * c + j] = (1/seq) * sum_{t < seq} |x[(b*seq + t) * ld + j]|,  b < batch, j < c.
     * Sums in fp32 or better. x (batch*seq, ld), out (batch, c). */
    enum lms_status (*abs_mean)(struct lms_backend *be, float *out, const float *x, int64_t ld,
                                int64_t batch, int64_t seq, int64_t c, struct lms_error *err);
    /* Cosine similarity per row: out[r] = <a_r, b_r> / (|a_r| |b_r|), 0 when a norm is 0.
     * a (n_rows, lda), b (n_rows, ldb), c channels, out (n_rows); dot and norms in fp32 or
     * better. */
    enum lms_status (*row_cosine)(struct lms_backend *be, float *out, const float *a,
                                  int64_t lda, const float *b, int64_t ldb, int64_t n_rows,
                                  int64_t c, struct lms_error *err);

    /* ==== training slots (version 3). Optional: NULL where a backend has no training support;
     * the trainer (engine/train.c) checks them when it is created. Gradients named d<x> have
     * the shape of <x>. "+=" marks outputs that are accumulated, others are overwritten. The
     * matmul backward is the matmul slot with transposes. ==== */
    /* dtable (V, H) += rows of dout (n, H) scattered to ids (n); ids checked < V. The order in
     * which repeated ids are summed is unspecified (CUDA uses atomics): not bit-reproducible. */
    enum lms_status (*embedding_backward)(struct lms_backend *be, float *dtable,
                                          const float *dout, const int32_t *ids, int64_t n,
                                          int64_t vocab, int64_t hidden, struct lms_error *err);
    /* Backward of rmsnorm with the same row layout: from dy, x, w and the forward's rstd,
     * dx = rstd * (w*dy - x * rstd^2 * mean(w*dy*x)) (written, or added when dx_add), and
     * dw (C) += sum over rows of dy * x * rstd. dx may equal dy when !dx_add. */
    enum lms_status (*rmsnorm_backward)(struct lms_backend *be, float *dx, int64_t dx_stride,
                                        bool dx_add, float *dw, const float *dy,
                                        int64_t dy_stride, const float *x, int64_t x_stride,
                                        const float *w, const float *rstd, int64_t n_rows,
                                        int64_t n_heads, int64_t c, struct lms_error *err);
    /* Backward of rope in place on the gradient (the transposed rotation); arguments as rope. */
    enum lms_status (*rope_backward)(struct lms_backend *be, float *dx, int64_t dx_stride,
                                     int64_t n_rows, int64_t n_heads, int64_t head_dim,
                                     const int32_t *pos, const float *cos, const float *sin,
                                     int64_t n_pos, struct lms_error *err);
    enum lms_status (*attention_backward)(struct lms_backend *be,
                                          const struct lms_attention_backward *ab,
                                          struct lms_error *err);
    /* Backward of swiglu: dgate, dup (rows at d_stride) from dout (rows at dout_stride) and the
     * forward's gate, up (rows at in_stride). Written. */
    enum lms_status (*swiglu_backward)(struct lms_backend *be, float *dgate, float *dup,
                                       int64_t d_stride, const float *dout, int64_t dout_stride,
                                       const float *gate, const float *up, int64_t in_stride,
                                       int64_t n_rows, int64_t f, struct lms_error *err);
    /* dbias (n) += column sums of dy (n_rows, n), row stride ld. */
    enum lms_status (*bias_backward)(struct lms_backend *be, float *dbias, const float *dy,
                                     int64_t ld, int64_t n_rows, int64_t n,
                                     struct lms_error *err);
    enum lms_status (*logit_loss)(struct lms_backend *be, const struct lms_logit_loss *ll,
                                  struct lms_error *err);
    /* Intermediate loss per row between student rows s and teacher rows t (n_rows, c),
     * kind 0 = 1 - cos(s, t), 1 = mean over c of (s - t)^2: loss[r] written; ds (may be NULL)
     * += grad_scale * d loss[r] / ds. Rows at stride ld. */
    enum lms_status (*hidden_loss)(struct lms_backend *be, float *loss, float *ds,
                                   const float *s, const float *t, int64_t ld, int64_t n_rows,
                                   int64_t c, int kind, float grad_scale,
                                   struct lms_error *err);
    /* *out (one float on the device) += sum of x[i]^2 over n elements. */
    enum lms_status (*sum_squares)(struct lms_backend *be, float *out, const float *x,
                                   int64_t n, struct lms_error *err);
    /* The AdamW update of n_tensors tensors (host array of device pointers). */
    enum lms_status (*adamw)(struct lms_backend *be, const struct lms_adamw *tensors,
                             int64_t n_tensors, const struct lms_adamw_hyper *h,
                             struct lms_error *err);
    /* x (n) *= s (scales gradients and zeroes them with s = 0: NaN-free, x is overwritten). */
    enum lms_status (*scale)(struct lms_backend *be, float *x, float s, int64_t n,
                             struct lms_error *err);
    /* ==== end of training slots ==== */

    /* ---- version 4 ---- */
    /* The device's free and total memory in bytes, for memory plans. Optional: NULL where the
     * backend shares host memory (the CPU; callers then ask the operating system). */
    enum lms_status (*mem_info)(struct lms_backend *be, uint64_t *free_bytes,
                                uint64_t *total_bytes, struct lms_error *err);

    /* ---- version 5: activation storage dtype and typed slots (all optional) ---- */
    /* The dtype activations are stored in between ops and for the backward (F32 or BF16).
     * NULL means F32. */
    enum lms_dtype (*activation_dtype)(const struct lms_backend *be);
    /* The ops a bf16-storage path needs, with the activation operands in dtype act (F32 or
     * BF16; the others as the float slot of the same name): same arguments, shapes and
     * aliasing rules as matmul, rmsnorm, rope, swiglu and add above. add takes a dtype per
     * operand so that an fp32 residual stream can take bf16 branch outputs. The fp32<->bf16
     * cast of a buffer is the cast slot. */
    enum lms_status (*matmul_typed)(struct lms_backend *be, const struct lms_matmul_typed *mm,
                                    struct lms_error *err);
    enum lms_status (*rmsnorm_typed)(struct lms_backend *be, void *out, int64_t out_stride,
                                     const void *x, int64_t x_stride, enum lms_dtype act,
                                     const float *w, float *rstd, int64_t n_rows,
                                     int64_t n_heads, int64_t c, float eps,
                                     struct lms_error *err);
    enum lms_status (*rope_typed)(struct lms_backend *be, void *x, int64_t x_stride,
                                  enum lms_dtype act, int64_t n_rows, int64_t n_heads,
                                  int64_t head_dim, const int32_t *pos, const float *cos,
                                  const float *sin, int64_t n_pos, struct lms_error *err);
    enum lms_status (*swiglu_typed)(struct lms_backend *be, void *out, int64_t out_stride,
                                    const void *gate, const void *up, int64_t in_stride,
                                    enum lms_dtype act, int64_t n_rows, int64_t f,
                                    struct lms_error *err);
    enum lms_status (*add_typed)(struct lms_backend *be, void *y, enum lms_dtype y_dtype,
                                 const void *x, enum lms_dtype x_dtype, int64_t n,
                                 struct lms_error *err);

    /* ---- appended slots go below (version 6+) ---- */
};

/* The handle behind include/lms/backend.h. */
struct lms_backend {
    const struct lms_backend_ops *ops; /* never NULL */
    struct lms_device dev;
    int n_threads;                     /* CPU threads in use; 1 on devices */
    char name[32];                     /* "cpu", "cuda:0" */
    void *impl;                        /* backend-private context */
};

/* The CPU backend, always built in. */
const struct lms_backend_ops *lms__backend_cpu_ops(void);
/* The CUDA backend's table: defined in liblmsurgeon-cuda.so, which kernels/backend.c loads with
 * dlopen when a CUDA device is opened (bench/forward_gpu links it directly). */
const struct lms_backend_ops *lms__backend_cuda_ops(void);

struct lms_arch;
/* The RoPE cos and sin tables of positions 0..n_pos-1 (lms_rope_table), computed on the host
 * and uploaded to the device addresses cos_dev and sin_dev (n_pos x head_dim/2 floats each):
 * the engine's and the trainer's, built the same way. who names the owner in errors. */
enum lms_status lms__rope_table_upload(struct lms_backend *be, const struct lms_arch *a,
                                       int64_t n_pos, bool inv_freq_bf16, void *cos_dev,
                                       void *sin_dev, const char *who, struct lms_error *err);

static inline enum lms_dtype lms__backend_weight_dtype(const struct lms_backend *be,
                                                       enum lms_dtype ckpt)
{
    return be->ops->weight_dtype(be, ckpt);
}

/* The dtype of LMS_SLOT_ACT operands on this backend (F32 where the table predates version 5 or
 * leaves the slot NULL). */
static inline enum lms_dtype lms__backend_activation_dtype(const struct lms_backend *be)
{
    if (be->ops->version < 5 || !be->ops->activation_dtype)
        return LMS_DTYPE_F32;
    return be->ops->activation_dtype(be);
}

#endif
