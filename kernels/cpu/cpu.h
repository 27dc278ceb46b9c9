/* CPU backend internals: the context, the op entry points shared between the files of
 * kernels/cpu/ and the small numeric helpers (a vectorisable expf) they have in common.
 *
 * The CPU backend computes in fp32: weights are converted to F32 once when uploaded, GEMMs go
 * through OpenBLAS (cblas), everything else is plain loops parallelised with OpenMP. */
#ifndef LMS_KERNELS_CPU_H
#define LMS_KERNELS_CPU_H

#include <stdint.h>
#include <string.h>

#include "kernels/backend_impl.h"

/* Hot loops are compiled for AVX-512, AVX2+FMA and the baseline, picked at load time (GCC
 * function multiversioning); elsewhere they are compiled once. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define LMS_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LMS_CPU_CLONES
#endif

/* Helpers of cloned hot loops must be inlined into each clone to get its instruction set. */
#define LMS_CPU_INLINE static inline __attribute__((always_inline))

struct lms_cpu_ctx {
    int n_threads;   /* OpenMP threads per op and OpenBLAS threads */
    float *scratch;  /* attention tiles: n_threads * scratch_per_thread floats; grown on demand */
    size_t scratch_per_thread; /* floats */
    float *wide;     /* typed ops (ops_typed.c): fp32 copies of 16-bit operands; grown on demand */
    size_t wide_cap; /* floats */
};

/* Work below this many elements runs on one thread (thread start-up costs more). */
#define LMS_CPU_PAR_MIN 16384

enum lms_status lms__cpu_matmul(struct lms_backend *be, const struct lms_matmul *mm,
                                struct lms_error *err);
enum lms_status lms__cpu_attention(struct lms_backend *be, const struct lms_attention *at,
                                   struct lms_error *err);
enum lms_status lms__cpu_embedding(struct lms_backend *be, float *out, const int32_t *ids,
                                   int64_t n, const void *table, enum lms_dtype table_dtype,
                                   int64_t vocab, int64_t hidden, struct lms_error *err);
enum lms_status lms__cpu_rmsnorm(struct lms_backend *be, float *out, int64_t out_stride,
                                 const float *x, int64_t x_stride, const float *w, float *rstd,
                                 int64_t n_rows, int64_t n_heads, int64_t c, float eps,
                                 struct lms_error *err);
enum lms_status lms__cpu_rope(struct lms_backend *be, float *x, int64_t x_stride,
                              int64_t n_rows, int64_t n_heads, int64_t head_dim,
                              const int32_t *pos, const float *cos, const float *sin,
                              int64_t n_pos, struct lms_error *err);
enum lms_status lms__cpu_swiglu(struct lms_backend *be, float *out, int64_t out_stride,
                                const float *gate, const float *up, int64_t in_stride,
                                int64_t n_rows, int64_t f, struct lms_error *err);
enum lms_status lms__cpu_add(struct lms_backend *be, float *y, const float *x, int64_t n,
                             struct lms_error *err);
enum lms_status lms__cpu_log_softmax(struct lms_backend *be, float *out, const float *x,
                                     int64_t ld, int64_t n_rows, int64_t c,
                                     struct lms_error *err);
enum lms_status lms__cpu_cross_entropy(struct lms_backend *be, float *loss, const float *logits,
                                       int64_t ld, const int32_t *target, int64_t n_rows,
                                       int64_t c, struct lms_error *err);
enum lms_status lms__cpu_cast(struct lms_backend *be, void *dst, enum lms_dtype dt,
                              const void *src, enum lms_dtype st, int64_t n,
                              struct lms_error *err);

enum lms_status lms__cpu_abs_mean(struct lms_backend *be, float *out, const float *x, int64_t ld,
                                  int64_t batch, int64_t seq, int64_t c, struct lms_error *err);
enum lms_status lms__cpu_row_cosine(struct lms_backend *be, float *out, const float *a,
                                    int64_t lda, const float *b, int64_t ldb, int64_t n_rows,
                                    int64_t c, struct lms_error *err);
/* training slots (attention_backward.c, train_ops.c) */
enum lms_status lms__cpu_attention_backward(struct lms_backend *be,
                                            const struct lms_attention_backward *ab,
                                            struct lms_error *err);
enum lms_status lms__cpu_embedding_backward(struct lms_backend *be, float *dtable,
                                            const float *dout, const int32_t *ids, int64_t n,
                                            int64_t vocab, int64_t hidden,
                                            struct lms_error *err);
enum lms_status lms__cpu_rmsnorm_backward(struct lms_backend *be, float *dx, int64_t dx_stride,
                                          bool dx_add, float *dw, const float *dy,
                                          int64_t dy_stride, const float *x, int64_t x_stride,
                                          const float *w, const float *rstd, int64_t n_rows,
                                          int64_t n_heads, int64_t c, struct lms_error *err);
enum lms_status lms__cpu_rope_backward(struct lms_backend *be, float *dx, int64_t dx_stride,
                                       int64_t n_rows, int64_t n_heads, int64_t head_dim,
                                       const int32_t *pos, const float *cos, const float *sin,
                                       int64_t n_pos, struct lms_error *err);
enum lms_status lms__cpu_swiglu_backward(struct lms_backend *be, float *dgate, float *dup,
                                         int64_t d_stride, const float *dout,
                                         int64_t dout_stride, const float *gate, const float *up,
                                         int64_t in_stride, int64_t n_rows, int64_t f,
                                         struct lms_error *err);
enum lms_status lms__cpu_bias_backward(struct lms_backend *be, float *dbias, const float *dy,
                                       int64_t ld, int64_t n_rows, int64_t n,
                                       struct lms_error *err);
enum lms_status lms__cpu_logit_loss(struct lms_backend *be, const struct lms_logit_loss *ll,
                                    struct lms_error *err);
enum lms_status lms__cpu_hidden_loss(struct lms_backend *be, float *loss, float *ds,
                                     const float *s, const float *t, int64_t ld, int64_t n_rows,
                                     int64_t c, int kind, float grad_scale,
                                     struct lms_error *err);
enum lms_status lms__cpu_sum_squares(struct lms_backend *be, float *out, const float *x,
                                     int64_t n, struct lms_error *err);
enum lms_status lms__cpu_adamw(struct lms_backend *be, const struct lms_adamw *tensors,
                               int64_t n_tensors, const struct lms_adamw_hyper *h,
                               struct lms_error *err);
enum lms_status lms__cpu_scale(struct lms_backend *be, float *x, float s, int64_t n,
                               struct lms_error *err);

/* typed slots (version 5, ops_typed.c): 16-bit activation storage, fp32 arithmetic */
enum lms_status lms__cpu_matmul_typed(struct lms_backend *be, const struct lms_matmul_typed *mm,
                                      struct lms_error *err);
enum lms_status lms__cpu_rmsnorm_typed(struct lms_backend *be, void *out, int64_t out_stride,
                                       const void *x, int64_t x_stride, enum lms_dtype act,
                                       const float *w, float *rstd, int64_t n_rows,
                                       int64_t n_heads, int64_t c, float eps,
                                       struct lms_error *err);
enum lms_status lms__cpu_rope_typed(struct lms_backend *be, void *x, int64_t x_stride,
                                    enum lms_dtype act, int64_t n_rows, int64_t n_heads,
                                    int64_t head_dim, const int32_t *pos, const float *cos,
                                    const float *sin, int64_t n_pos, struct lms_error *err);
enum lms_status lms__cpu_swiglu_typed(struct lms_backend *be, void *out, int64_t out_stride,
                                      const void *gate, const void *up, int64_t in_stride,
                                      enum lms_dtype act, int64_t n_rows, int64_t f,
                                      struct lms_error *err);
enum lms_status lms__cpu_add_typed(struct lms_backend *be, void *y, enum lms_dtype y_dtype,
                                   const void *x, enum lms_dtype x_dtype, int64_t n,
                                   struct lms_error *err);

/* expf for x in any range, within 2 ulp of the correctly rounded value for |x| < 87 (Cephes
 * polynomial after range reduction by ln 2); results below 2^-126 flush to about 1e-38, x above
 * 88 gives about 1.6e38, NaN gives NaN. Written without branches so loops calling it
 * vectorise. */
static inline float lms__expf(float x)
{
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float t = x * 1.44269504088896341f + magic;
    float n = t - magic;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    uint32_t ti; /* unsigned: a NaN x (kept by the clamps) makes t any bit pattern */
    memcpy(&ti, &t, sizeof ti);
    uint32_t bits = (ti - 0x4B400000u + 127u) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

/* Eight floats in one AVX register (unaligned), for kernels that spell their vector code out
 * where the compiler does not vectorise a loop on its own. */
typedef float lms__v8f __attribute__((vector_size(32), aligned(4)));
typedef uint32_t lms__v8u __attribute__((vector_size(32), aligned(4)));

/* *v = lms__expf of each of its eight lanes: the same operations lane by lane, so the same
 * results. The clamps are written as masks (a comparison of vectors gives all-ones lanes where
 * it holds). In place through a pointer: a vector returned by value would change the ABI
 * between the clones of a caller. */
LMS_CPU_INLINE void lms__expf8(lms__v8f *v)
{
    lms__v8f x = *v;
    const lms__v8f lo = (lms__v8f){0} - 87.0f, hi = (lms__v8f){0} + 88.0f;
    lms__v8u below = (lms__v8u)(x < lo), above = (lms__v8u)(x > hi);
    x = (lms__v8f)(((lms__v8u)x & ~below) | ((lms__v8u)lo & below));
    x = (lms__v8f)(((lms__v8u)x & ~above) | ((lms__v8u)hi & above));
    const float magic = 12582912.0f;
    lms__v8f t = x * 1.44269504088896341f + magic;
    lms__v8f n = t - magic;
    lms__v8f r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    lms__v8f p = (lms__v8f){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    lms__v8f y = p * r * r + r + 1.0f;
    lms__v8u bits = ((lms__v8u)t - 0x4B400000u + 127u) << 23;
    *v = y * (lms__v8f)bits;
}

#endif
