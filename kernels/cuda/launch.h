/* CUDA backend: launch geometry and GEMM operand mapping, as plain C.
 *
 * Everything here is host arithmetic with no CUDA dependency, compiled into every build (with or
 * without nvcc) so that tests/unit/test_cuda_launch.c checks it on machines without a GPU: the
 * shared-memory layout of the attention kernels (the .cu files include this header and carve
 * their shared memory with these offsets), the grids they are launched with, and the mapping of
 * a row-major struct lms_matmul onto cuBLASLt's column-major call.
 *
 * Legend: B batch rows, S tokens per row, n_h query heads, n_g key/value heads, d head dim. */
#ifndef LMS_KERNELS_CUDA_LAUNCH_H
#define LMS_KERNELS_CUDA_LAUNCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- attention ------------------------------------------------------------------------------
 * Two kernels (kernels/cuda/attention.cu):
 *   F32: CUDA cores, fp32 throughout, any d <= LMS_CUDA_ATTN_F32_MAX_D. A block of
 *        LMS_CUDA_ATTN_WARPS warps owns LMS_CUDA_F32_BQ query rows of one head (each warp
 *        LMS_CUDA_F32_BQ / warps rows); K/V tiles of LMS_CUDA_F32_BK keys (one per lane) are
 *        staged in shared memory; online softmax per row.
 *   TC:  tensor cores (mma.sync m16n8k16 bf16, fp32 accumulation; FlashAttention-2 style),
 *        d = 64 or 128. A pre-pass rounds q, k, v to bf16 into a scratch buffer of
 *        lms__cuda_attn_scratch_bytes bytes, per head and contiguous, the sequence padded with
 *        zero rows to a multiple of the tile. A block owns LMS_CUDA_TC_BQ query rows of one head,
 *        16 per warp; K/V tiles of LMS_CUDA_TC_BK keys are double-buffered in shared memory
 *        (cp.async); scores, probabilities and the output stay in registers. */
#define LMS_CUDA_ATTN_WARPS 4
#define LMS_CUDA_F32_BQ 16
#define LMS_CUDA_F32_BK 32
#define LMS_CUDA_ATTN_F32_MAX_D 256
#define LMS_CUDA_TC_BQ 64
#define LMS_CUDA_TC_BK 64
#define LMS_CUDA_TC_PAD 8 /* bf16 row padding of the shared tiles: ldmatrix without conflicts */

/* Dynamic shared memory of the TC kernel for head dim d: the Q tile (BQ rows) and two K and
 * two V tiles (BK rows), bf16 rows of d + LMS_CUDA_TC_PAD, in that order. */
size_t lms__cuda_tc_attn_smem(int d);
/* The sequence length rounded up to the TC tile (rows of the bf16 scratch per head). */
int64_t lms__cuda_attn_padded_seq(int64_t seq);
/* Bytes of the TC kernel's bf16 scratch: Q (B, n_h, Sp, d), K and V (B, n_g, Sp, d) each. */
size_t lms__cuda_attn_scratch_bytes(int64_t batch, int64_t seq, int64_t n_heads,
                                    int64_t n_groups, int64_t head_dim);
/* Dynamic shared memory of the F32 kernel: K tile (BK, d+1) (padded against bank conflicts),
 * V tile (BK, d), scaled Q rows (BQ, d), all fp32. */
size_t lms__cuda_f32_attn_smem(int d);

enum lms_cuda_attn_kind {
    LMS_CUDA_ATTN_F32,
    LMS_CUDA_ATTN_TC,
};

struct lms_cuda_launch {
    unsigned grid[3]; /* x, y, z */
    unsigned block;   /* threads */
    size_t smem;      /* dynamic shared memory bytes */
};

/* Picks the attention kernel and its launch: TC when tensor_cores is requested and d is 64 or
 * 128, else F32 (d <= 256). Grid: x = query blocks of the sequence, y = n_h, z = B.
 * Returns false (and leaves *why set to a static reason) when the shape cannot be launched:
 * d too large, n_h or B over the grid limits (65535), smem over max_smem bytes. */
bool lms__cuda_attn_plan(int64_t batch, int64_t seq, int64_t n_heads, int64_t head_dim,
                         bool tensor_cores, size_t max_smem, enum lms_cuda_attn_kind *kind,
                         struct lms_cuda_launch *l, const char **why);

/* ---- attention backward -------------------------------------------------------------------
 * fp32 on CUDA cores (kernels/cuda/attention_backward.cu), flash style: tiles of
 * LMS_CUDA_BWD_T query rows x LMS_CUDA_BWD_T keys, scores recomputed from q, k and the forward's
 * log-sum-exp. Two kernels, so that every output element has one writer (no atomics):
 *   DKV: a block per (key tile, key/value head, batch row) walks the query tiles that see its keys
 *        over the r = n_h / n_g query heads of the group, dk and dv accumulated in shared memory;
 *   DQ:  a block per (query tile, query head, batch row) walks the key tiles its rows see, dq
 *        accumulated in shared memory.
 * Shared memory (fp32): Q, dO, K and V tiles (T, d + 1) (padded against bank conflicts), the
 * accumulators (T, d) (two for DKV, one for DQ), P and dS (T, T + 1), lse and D (T). */
#define LMS_CUDA_BWD_T 32
#define LMS_CUDA_BWD_THREADS 128
size_t lms__cuda_attn_bwd_smem(int d, bool dkv);

/* Tensor-core variant (TC, d = 64 or 128, outside the exact precision), FlashAttention-2 style
 * on mma.sync m16n8k16 (bf16, fp32 accumulation): the forward's bf16 pre-pack of q, k, v plus
 * dout (bf16), lse (log2 units) and D = dout . out (fp32) per (b, h, row) in a scratch of
 * lms__cuda_attn_bwd_scratch_bytes bytes, rows padded to LMS_CUDA_TC_BWD_T; tiles of
 * LMS_CUDA_TC_BWD_T query rows x LMS_CUDA_TC_BWD_T keys, 4 warps of 16 rows (DQ: query rows,
 * DKV: keys); S, dP, P, dS and the dQ / dK / dV accumulators stay in registers.
 * Shared memory (lms__cuda_tc_bwd_smem), bf16 rows of d + LMS_CUDA_TC_PAD:
 *   DKV: K, V tiles, then two Q and two dO tiles, then two (lse, D) pairs of T fp32 each;
 *   DQ:  Q, dO tiles, then two K and two V tiles (the same size, less the lse/D pairs). */
#define LMS_CUDA_TC_BWD_T 64
size_t lms__cuda_tc_bwd_smem(int d);
/* Bytes of the TC scratch: the forward's lms__cuda_attn_scratch_bytes (Q, K, V bf16), then dO
 * (B, n_h, Sp, d) bf16, lse and D (B, n_h, Sp) fp32 each. */
size_t lms__cuda_attn_bwd_scratch_bytes(int64_t batch, int64_t seq, int64_t n_heads,
                                        int64_t n_groups, int64_t head_dim);

/* Launches of the two backward kernels: TC when tensor_cores is requested and d is 64 or 128,
 * else F32; grid x = sequence tiles, y = n_g (DKV) or n_h (DQ), z = B. False with *why set when
 * d is out of (0, 256], a grid dimension is over its limit or the shared memory over max_smem
 * bytes. */
bool lms__cuda_attn_bwd_plan(int64_t batch, int64_t seq, int64_t n_heads, int64_t n_groups,
                             int64_t head_dim, bool tensor_cores, size_t max_smem,
                             enum lms_cuda_attn_kind *kind, struct lms_cuda_launch *dkv,
                             struct lms_cuda_launch *dq, const char **why);

/* One thread per element (or per 4 elements): blocks of 256 threads, grid x capped so that
 * kernels loop grid-stride over the rest. */
#define LMS_CUDA_EW_THREADS 256
#define LMS_CUDA_EW_MAX_BLOCKS 65536u
unsigned lms__cuda_ew_blocks(int64_t n);

/* ---- GEMM mapping ----------------------------------------------------------------------------
 * Row-major C (m, n) = op(A) op(B) is column-major C^T (n, m) = op(B)^T op(A)^T, so the cuBLASLt
 * call takes our B as its first operand and our A as its second:
 *   cuBLAS "A" = our B: stored (n rows, k cols) column-major with ld ldb when !trans_b (transa N),
 *                       stored (k rows, n cols) when trans_b (transa T);
 *   cuBLAS "B" = our A: stored (k rows, m cols) when !trans_a (transb N),
 *                       stored (m rows, k cols) when trans_a (transb T);
 *   cuBLAS "C"/"D":     (n rows, m cols), ld ldc. */
struct lms_cuda_gemm_operand {
    int64_t rows, cols, ld; /* column-major layout of the stored matrix */
    int64_t batch_stride;   /* elements between batches */
    bool trans;             /* CUBLAS_OP_T */
};
struct lms_cuda_gemm_map {
    int64_t m, n, k;                      /* cuBLAS M = our n, N = our m, K = k */
    struct lms_cuda_gemm_operand a, b, c; /* cuBLAS A (our B), B (our A), C = D (our C) */
};
/* Fills map for the row-major product of the argument names (see struct lms_matmul in
 * kernels/backend_impl.h). */
void lms__cuda_gemm_map(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, int64_t lda,
                        int64_t stride_a, int64_t ldb, int64_t stride_b, int64_t ldc,
                        int64_t stride_c, struct lms_cuda_gemm_map *map);
/* Largest power of two (<= 256) dividing the address p and the row pitch ld * esize: the
 * alignment cuBLASLt's heuristic must be told about (its default assumes 256). */
unsigned lms__cuda_align_of(const void *p, int64_t ld, size_t esize);

#ifdef __cplusplus
}
#endif

#endif
