/* lmsurgeon CUDA backend: the C boundary between the backend (backend_cuda.c, C11) and the
 * kernels (*.cu, CUDA C++ inside).
 *
 * Every entry point is extern "C" and takes only C types: device pointers, int64_t shapes, a
 * cudaStream_t (an opaque pointer type of the CUDA runtime's C API). A launcher queues its
 * kernel(s) on the stream and returns cudaGetLastError() of the launch (cudaSuccess when queued);
 * errors raised while a kernel runs surface at the next synchronisation, which the backend
 * reports naming the op. Argument validation (shapes, ids in range) happens in backend_cuda.c,
 * before launch; the kernels trust their arguments. Shapes are those of the op slots in
 * kernels/backend_impl.h. */
#ifndef LMS_KERNELS_CUDA_LMS_CUDA_H
#define LMS_KERNELS_CUDA_LMS_CUDA_H

#include <stdint.h>

#include <cuda_runtime_api.h>

#include "kernels/cuda/launch.h"

#ifdef __cplusplus
extern "C" {
#endif

/* dtype codes of the kernels (the values of enum lms_dtype are not visible to .cu files) */
enum lms_cuda_dt {
    LMS_CUDA_F32 = 0,
    LMS_CUDA_BF16 = 1,
    LMS_CUDA_F16 = 2,
};

/* Deferred argument errors. Checks that need device data (token ids, positions, targets) are
 * made by the kernels themselves: an offending element is skipped (its output zeroed) and
 * recorded in one of LMS_CUDA_ERRW 64-bit words of device memory as
 * (index << 32 | (uint32_t)value) with atomicMin, so the word ends up holding the first
 * offending index. The backend reads the words back at the next sync or download and reports
 * them; UINT64_MAX means no error. */
enum {
    LMS_CUDA_ERRW_EMBED = 0, /* token id outside [0, V) at position index */
    LMS_CUDA_ERRW_ROPE = 1,  /* position outside [0, n_pos) at row index */
    LMS_CUDA_ERRW_CE = 2,    /* target >= c at row index */
    LMS_CUDA_ERRW = 3,
};

/* out (n, hidden) fp32 = table[ids[i]], table (vocab, hidden) in dt. */
cudaError_t lms_cuda_embedding(cudaStream_t st, float *out, const int32_t *ids, int64_t n,
                               const void *table, enum lms_cuda_dt dt, int64_t vocab,
                               int64_t hidden, unsigned long long *errw);
/* RMSNorm over c channels of n_rows * n_heads rows; one warp per row. rstd may be NULL. */
cudaError_t lms_cuda_rmsnorm(cudaStream_t st, float *out, int64_t out_stride, const float *x,
                             int64_t x_stride, const float *w, float *rstd, int64_t n_rows,
                             int64_t n_heads, int64_t c, float eps);
/* Rotary embedding in place (rotate_half); head_dim even. */
cudaError_t lms_cuda_rope(cudaStream_t st, float *x, int64_t x_stride, int64_t n_rows,
                          int64_t n_heads, int64_t head_dim, const int32_t *pos, const float *cos,
                          const float *sin, int64_t n_pos, unsigned long long *errw);
cudaError_t lms_cuda_swiglu(cudaStream_t st, float *out, int64_t out_stride, const float *gate,
                            const float *up, int64_t in_stride, int64_t n_rows, int64_t f);
/* y (n) += x (n) */
cudaError_t lms_cuda_add(cudaStream_t st, float *y, const float *x, int64_t n);
/* c (rows, n) row-major, row stride ldc, batch stride stride_c: c[b, r, j] += bias[j] */
cudaError_t lms_cuda_add_bias(cudaStream_t st, float *c, int64_t ldc, int64_t stride_c,
                              int64_t batch, int64_t rows, int64_t n, const float *bias);
/* out[r] = x[r] - logsumexp(x[r]) over c columns, rows at stride ld; out may equal x. One block
 * per row: a pass for the (max, sum) pair, a pass writing the row. */
cudaError_t lms_cuda_log_softmax(cudaStream_t st, float *out, const float *x, int64_t ld,
                                 int64_t n_rows, int64_t c);
/* loss[r] = logsumexp(logits[r]) - logits[r, target[r]] for 0 <= target[r] < c, 0 for
 * target[r] < 0; target >= c is recorded in errw[LMS_CUDA_ERRW_CE] (loss 0). */
cudaError_t lms_cuda_cross_entropy(cudaStream_t st, float *loss, const float *logits, int64_t ld,
                                   const int32_t *target, int64_t n_rows, int64_t c,
                                   unsigned long long *errw);
/* dst (n, dt) = src (n, st); F32, BF16, F16 both ways (round to nearest even). */
cudaError_t lms_cuda_cast(cudaStream_t st, void *dst, enum lms_cuda_dt dt, const void *src,
                          enum lms_cuda_dt sdt, int64_t n);
/* dst (rows, cols) in dt (BF16 or F16), packed (row stride cols) = src (rows, cols) fp32 at
 * row stride ld, for batch matrices at src + b*stride (dst + b*rows*cols): the activation
 * operand of a 16-bit GEMM, rounded to nearest even. */
cudaError_t lms_cuda_pack(cudaStream_t st, void *dst, enum lms_cuda_dt dt, const float *src,
                          int64_t ld, int64_t stride, int64_t batch, int64_t rows, int64_t cols);
/* Fallback GEMM when cuBLASLt offers no algorithm (odd leading dimensions with bf16): fp32
 * accumulation, row-major arguments exactly as struct lms_matmul (b in dt). Slow, correct. */
cudaError_t lms_cuda_gemm_ref(cudaStream_t st, int trans_a, int trans_b, int64_t m, int64_t n,
                              int64_t k, const float *a, int64_t lda, int64_t stride_a,
                              const void *b, enum lms_cuda_dt dt, int64_t ldb, int64_t stride_b,
                              float *c, int64_t ldc, int64_t stride_c, int64_t batch, float alpha,
                              float beta);
/* out (batch, c) = per row b and channel j the mean over seq tokens of |x|; x rows at stride ld
 * (row b*seq + t). Sums in double. */
cudaError_t lms_cuda_abs_mean(cudaStream_t st, float *out, const float *x, int64_t ld,
                              int64_t batch, int64_t seq, int64_t c);
/* out[r] = cos(a_r, b_r) over c channels (0 when a norm is 0), one warp per row, double sums. */
cudaError_t lms_cuda_row_cosine(cudaStream_t st, float *out, const float *a, int64_t lda,
                                const float *b, int64_t ldb, int64_t n_rows, int64_t c);
/* Causal GQA attention, the kernel and launch chosen by lms__cuda_attn_plan (launch.h).
 * Arguments as struct lms_attention. The kernel's dynamic shared-memory limit must have been
 * raised once with lms_cuda_attention_setup. scratch: device memory of
 * lms__cuda_attn_scratch_bytes bytes (256-byte aligned) for the TC kind (its bf16 copies of
 * q, k, v), unused (may be NULL) for F32. */
cudaError_t lms_cuda_attention(cudaStream_t st, enum lms_cuda_attn_kind kind,
                               const struct lms_cuda_launch *l, int64_t batch, int64_t seq,
                               int64_t n_heads, int64_t n_groups, int64_t head_dim,
                               const float *q, const float *k, const float *v, int64_t q_stride,
                               int64_t kv_stride, float *out, int64_t out_stride, float scale,
                               int64_t window, float *lse, void *scratch);
/* The TC pre-pass: q, k, v rounded to bf16 into scratch (lms__cuda_attn_scratch_bytes), per head
 * and contiguous, rows padded with zeros to lms__cuda_attn_padded_seq (shared by the forward and
 * the backward). d = 64 or 128. */
void lms_cuda_attention_pack(cudaStream_t st, int64_t batch, int64_t seq, int64_t n_heads,
                             int64_t n_groups, int64_t head_dim, const float *q, const float *k,
                             const float *v, int64_t q_stride, int64_t kv_stride, void *scratch);
/* Raises the dynamic shared-memory limit of the attention kernels (forward and backward) to
 * max_smem (bytes); called once per device at open. */
cudaError_t lms_cuda_attention_setup(size_t max_smem);
/* Fills n bf16 values at dst with uniform(-scale, scale) from a counter hash of (seed, index):
 * random weights generated on the device (bench/forward_gpu.c). */
cudaError_t lms_cuda_fill_uniform_bf16(cudaStream_t st, uint16_t *dst, int64_t n,
                                       uint64_t seed, float scale);
/* Fills n fp32 values with value. */
cudaError_t lms_cuda_fill_f32(cudaStream_t st, float *dst, int64_t n, float value);

/* Backward of lms_cuda_attention (struct lms_attention_backward): the kernels of kind (fp32, or
 * bf16 tensor cores for d = 64/128) with the launches from lms__cuda_attn_bwd_plan (launch.h);
 * lse (B, n_h, S) from the forward. dq, dk, dv written. scratch: device memory of
 * lms__cuda_attn_bwd_scratch_bytes bytes (256-byte aligned) for the TC kind, unused (may be
 * NULL) for F32. */
cudaError_t lms_cuda_attention_backward(cudaStream_t st, enum lms_cuda_attn_kind kind,
                                        const struct lms_cuda_launch *l_dkv,
                                        const struct lms_cuda_launch *l_dq, int64_t batch,
                                        int64_t seq, int64_t n_heads, int64_t n_groups,
                                        int64_t head_dim, const float *q, const float *k,
                                        const float *v, int64_t q_stride, int64_t kv_stride,
                                        const float *out, int64_t out_stride, const float *lse,
                                        const float *dout, int64_t dout_stride, float *dq,
                                        int64_t dq_stride, float *dk, float *dv,
                                        int64_t dkv_stride, float scale, int64_t window,
                                        void *scratch);
/* Raises the backward kernels' dynamic shared-memory limit (from lms_cuda_attention_setup). */
cudaError_t lms_cuda_attention_backward_setup(size_t max_smem);

struct lms_backend;
/* The stream every op of a CUDA backend is queued on (backend_cuda.c): for code that launches
 * its own kernels between ops (bench/forward_gpu.c). */
cudaStream_t lms__cuda_stream(struct lms_backend *be);

/* Fused KD / cross-entropy loss and gradient over n_rows rows of the vocabulary
 * (kernels/cuda/logit_loss.cu), the fields of struct lms_logit_loss (kernels/backend_impl.h)
 * with inv_t = 1 / temperature (1 when temperature <= 0) computed as the CPU does, top_k >= 1
 * when kd_kind is top-K, and vec set when ld is a multiple of 4 and student, teacher and grad
 * (those present) are 16-byte aligned (float4 loads and stores). Target ids >= vocab are recorded
 * in errw[LMS_CUDA_ERRW_CE] (that row's CE skipped, its loss 0). One block per row. */
struct lms_cuda_logit_loss_args {
    int64_t n_rows, vocab, ld, top_k;
    const float *student, *teacher; /* teacher NULL: no KD */
    const int32_t *target;          /* NULL: no CE */
    const uint8_t *kd_valid;        /* NULL: all rows */
    float *kd_loss, *ce_loss, *grad;
    int kd_kind;
    int vec;
    double inv_t;
    float kd_mul, kd_grad_scale, ce_grad_scale;
};
cudaError_t lms_cuda_logit_loss(cudaStream_t st, const struct lms_cuda_logit_loss_args *a,
                                unsigned long long *errw);
/* ---- training ops (kernels/cuda/train_ops.cu) ----
 * Column sums (RMSNorm dw, bias gradients) and the sum of squares are deterministic two-level
 * reductions through a double scratch buffer the backend owns: lms_cuda_colsum_plan gives the
 * number of row chunks, and the scratch needs chunks * c doubles; the sum of squares needs
 * LMS_CUDA_SUMSQ_PARTS doubles. */
#define LMS_CUDA_SUMSQ_PARTS 1024
void lms_cuda_colsum_plan(int64_t rows, int64_t c, int64_t *chunks, int64_t *rows_per_chunk);
/* dtable (vocab, hidden) += dout rows scattered to ids with fp32 atomicAdd (the order in which
 * repeated ids are summed is not deterministic); a bad id is skipped and recorded in
 * errw[LMS_CUDA_ERRW_EMBED]. */
cudaError_t lms_cuda_embedding_backward(cudaStream_t st, float *dtable, const float *dout,
                                        const int32_t *ids, int64_t n, int64_t vocab,
                                        int64_t hidden, unsigned long long *errw);
/* dx written (or added when dx_add; dx may equal dy when !dx_add), dw += column sums of
 * dy * x * rstd; part: scratch of the column sums. */
cudaError_t lms_cuda_rmsnorm_backward(cudaStream_t st, float *dx, int64_t dx_stride, int dx_add,
                                      float *dw, const float *dy, int64_t dy_stride,
                                      const float *x, int64_t x_stride, const float *w,
                                      const float *rstd, int64_t n_rows, int64_t n_heads,
                                      int64_t c, double *part);
/* The transposed rotation of lms_cuda_rope, in place; bad positions recorded like rope's. */
cudaError_t lms_cuda_rope_backward(cudaStream_t st, float *dx, int64_t dx_stride, int64_t n_rows,
                                   int64_t n_heads, int64_t head_dim, const int32_t *pos,
                                   const float *cos, const float *sin, int64_t n_pos,
                                   unsigned long long *errw);
cudaError_t lms_cuda_swiglu_backward(cudaStream_t st, float *dgate, float *dup, int64_t d_stride,
                                     const float *dout, int64_t dout_stride, const float *gate,
                                     const float *up, int64_t in_stride, int64_t n_rows,
                                     int64_t f);
/* dbias (n) += column sums of dy (n_rows, n) at row stride ld; part: scratch. */
cudaError_t lms_cuda_bias_backward(cudaStream_t st, float *dbias, const float *dy, int64_t ld,
                                   int64_t n_rows, int64_t n, double *part);
enum {
    LMS_CUDA_HIDDEN_COSINE = 0, /* the values of enum lms_hidden_kind (include/lms/train.h) */
    LMS_CUDA_HIDDEN_MSE = 1,
};
cudaError_t lms_cuda_hidden_loss(cudaStream_t st, float *loss, float *ds, const float *s,
                                 const float *t, int64_t ld, int64_t n_rows, int64_t c, int kind,
                                 float grad_scale);
/* out[0] += sum of x^2 (double partials in part, LMS_CUDA_SUMSQ_PARTS of them at most). */
cudaError_t lms_cuda_sum_squares(cudaStream_t st, float *out, const float *x, int64_t n,
                                 double *part);
/* x *= s for s != 0 (s == 0 is a memset in the backend: NaN and Inf become 0 too). */
cudaError_t lms_cuda_scale(cudaStream_t st, float *x, float s, int64_t n);

/* Multi-tensor AdamW: one launch over all tensors. Each tensor is cut into chunks of
 * LMS_CUDA_ADAMW_CHUNK elements; chunk0 is the global index of its first chunk (a prefix sum
 * over the tensors in list order, computed on the host), so block b finds its tensor by binary
 * search. Tensors with n == 0 are left out of the list. desc is device memory. */
#define LMS_CUDA_ADAMW_CHUNK 2048
#define LMS_CUDA_ADAMW_THREADS 256
struct lms_cuda_adamw_desc {
    float *w;
    const float *g;
    float *m, *v;
    uint16_t *w_bf16; /* or NULL */
    int64_t n;
    int64_t chunk0;
    float decay;      /* 1 - lr * weight_decay, computed on the host as the CPU does */
    float pad_;
};
struct lms_cuda_adamw_scalars {
    float grad_scale, beta1, beta2, eps, step_size, bc2_sqrt;
};
cudaError_t lms_cuda_adamw(cudaStream_t st, const struct lms_cuda_adamw_desc *desc, int n_desc,
                           int64_t total_chunks, const struct lms_cuda_adamw_scalars *k);

#ifdef __cplusplus
}
#endif

#endif
