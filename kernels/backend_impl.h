/* lmsurgeon: the backend op table, for implementers and for the library code that runs models.
 *
 * A backend is a versioned table of slots (struct lms_backend_ops) plus a context. The CPU
 * backend (kernels/cpu/) fills every slot and is the numerical reference; the CUDA backend
 * (kernels/cuda/, behind the C boundary kernels/cuda/lms_cuda.h) fills the same slots. Model
 * code (kernels/forward.c, importance/, distill/) calls the slots and never asks which backend
 * it runs on. Slots are only ever appended: a new op gets a new slot at the end and bumps
 * LMS_BACKEND_OPS_VERSION; a backend that does not implement an optional slot leaves it NULL and
 * callers check the slot before use (e.g. the activation-statistics hooks of importance scoring,
 * pruning-and-distillation.md §2.1, and the backward ops and KD loss of §6 go at the end).
 *
 * Conventions for every op:
 *   - pointers are device addresses inside lms_buf allocations of the same backend;
 *   - activations are fp32, row-major; a "row stride" is in elements;
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

#define LMS_BACKEND_OPS_VERSION 2

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
 * head h / (n_h / n_g) (contiguous heads per group, pruning-and-distillation.md §1).
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
};

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

    /* ---- appended slots go below (version 3+): backward ops, KL loss, AdamW ---- */
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

static inline enum lms_dtype lms__backend_weight_dtype(const struct lms_backend *be,
                                                       enum lms_dtype ckpt)
{
    return be->ops->weight_dtype(be, ckpt);
}

#endif
