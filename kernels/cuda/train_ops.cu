/* CUDA training kernels: backward of embedding, RMSNorm, RoPE, SwiGLU and biases; the hidden-state
 * losses; sum of squares, scale and a multi-tensor AdamW. Shapes: kernels/cuda/lms_cuda.h and
 * the training slots in kernels/backend_impl.h; the CPU reference is kernels/cpu/train_ops.c.
 *
 * Numerics: per-row and per-column reductions run in double like the CPU's and are deterministic
 * (fixed grids, fixed tree orders, partials summed in chunk order), so results depend only on the
 * shape, never on scheduling. The one exception is embedding_backward, whose repeated token ids
 * are summed with fp32 atomicAdd in an unspecified order. AdamW uses explicitly rounded fp32
 * intrinsics (no fused multiply-add contraction) in the CPU's order of operations, so it matches
 * the CPU bit for bit where both round identically. All kernels and helpers are static: each .cu
 * file is its own device translation unit. */
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/grid.cuh"
#include "kernels/cuda/lms_cuda.h"

#define EW LMS_CUDA_EW_THREADS

static __device__ __forceinline__ double t_warp_sum_d(double v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Row-per-warp launches: 8 warps per block, grid capped (kernels loop over the rest). */
static unsigned warp_row_blocks(int64_t rows)
{
    int64_t blocks = (rows + 7) / 8;
    if (blocks > (int64_t)LMS_CUDA_EW_MAX_BLOCKS)
        blocks = LMS_CUDA_EW_MAX_BLOCKS;
    return blocks < 1 ? 1u : (unsigned)blocks;
}

/* ---- embedding backward: one thread per (id, channel), fp32 atomicAdd ---- */

static __global__ void embedding_backward_kernel(float *dtable, const float *dout,
                                                 const int32_t *ids, int64_t n, int64_t vocab,
                                                 int64_t hidden, unsigned long long *errw)
{
    int64_t total = n * hidden;
    for (int64_t i = gtid(); i < total; i += gstride()) {
        int64_t r = i / hidden, j = i - r * hidden;
        int32_t id = ids[r];
        if (id < 0 || id >= vocab) {
            if (j == 0)
                record_error(errw, LMS_CUDA_ERRW_EMBED, r, id);
            continue;
        }
        atomicAdd(dtable + (int64_t)id * hidden + j, dout[i]);
    }
}

extern "C" cudaError_t lms_cuda_embedding_backward(cudaStream_t st, float *dtable,
                                                   const float *dout, const int32_t *ids,
                                                   int64_t n, int64_t vocab, int64_t hidden,
                                                   unsigned long long *errw)
{
    if (n <= 0 || hidden <= 0)
        return cudaSuccess;
    embedding_backward_kernel<<<lms__cuda_ew_blocks(n * hidden), EW, 0, st>>>(
        dtable, dout, ids, n, vocab, hidden, errw);
    return cudaGetLastError();
}

/* ---- column sums (dw of RMSNorm, bias gradients) ----
 * Row i of the (rows = n_rows * n_heads, c) operand is at r * stride + h * c with r = i / n_heads,
 * h = i % n_heads. Block (x, y) of 32 x 8 threads sums columns [32x, 32x + 32) over row chunk y:
 * thread (tx, ty) takes rows ty, ty + 8, ... of the chunk in double, the 8 partials are added in
 * shared memory in a fixed order and written to part[y * c + col]. colsum_finish then adds the
 * chunks in order: deterministic for a given shape. */

#define CS_TX 32
#define CS_TY 8

static __global__ void __launch_bounds__(CS_TX *CS_TY)
    colsum_partial_kernel(double *part, const float *dy, int64_t dy_stride, const float *x,
                          int64_t x_stride, const float *rstd, int64_t n_rows, int64_t n_heads,
                          int64_t c, int64_t rows_per_chunk)
{
    __shared__ double red[CS_TY][CS_TX + 1];
    int tx = threadIdx.x, ty = threadIdx.y;
    int64_t col = (int64_t)blockIdx.x * CS_TX + tx;
    int64_t total = n_rows * n_heads;
    int64_t i0 = (int64_t)blockIdx.y * rows_per_chunk;
    int64_t i1 = i0 + rows_per_chunk < total ? i0 + rows_per_chunk : total;
    double acc = 0.0;
    if (col < c) {
        for (int64_t i = i0 + ty; i < i1; i += CS_TY) {
            int64_t r = i / n_heads, h = i - r * n_heads;
            double g = dy[r * dy_stride + h * c + col];
            if (x)
                acc += g * x[r * x_stride + h * c + col] * (double)rstd[i];
            else
                acc += g;
        }
    }
    red[ty][tx] = acc;
    __syncthreads();
    if (ty == 0 && col < c) {
        double s = red[0][tx];
        for (int k = 1; k < CS_TY; k++)
            s += red[k][tx];
        part[blockIdx.y * c + col] = s;
    }
}

static __global__ void colsum_finish_kernel(float *dst, const double *part, int64_t chunks,
                                            int64_t c)
{
    for (int64_t j = gtid(); j < c; j += gstride()) {
        double s = 0.0;
        for (int64_t k = 0; k < chunks; k++)
            s += part[k * c + j];
        dst[j] += (float)s;
    }
}

extern "C" void lms_cuda_colsum_plan(int64_t rows, int64_t c, int64_t *chunks,
                                     int64_t *rows_per_chunk)
{
    /* about 2048 blocks in all, at least 64 rows per chunk (8 per thread) */
    int64_t tiles = (c + CS_TX - 1) / CS_TX;
    int64_t want = (2048 + tiles - 1) / tiles;
    int64_t most = (rows + 63) / 64;
    if (want > most)
        want = most;
    if (want < 1)
        want = 1;
    int64_t rpc = (rows + want - 1) / want;
    if (rpc < 1)
        rpc = 1;
    *rows_per_chunk = rpc;
    *chunks = rows > 0 ? (rows + rpc - 1) / rpc : 1;
}

static cudaError_t colsum(cudaStream_t st, float *dst, double *part, const float *dy,
                          int64_t dy_stride, const float *x, int64_t x_stride, const float *rstd,
                          int64_t n_rows, int64_t n_heads, int64_t c)
{
    int64_t chunks, rpc;
    lms_cuda_colsum_plan(n_rows * n_heads, c, &chunks, &rpc);
    dim3 grid((unsigned)((c + CS_TX - 1) / CS_TX), (unsigned)chunks);
    colsum_partial_kernel<<<grid, dim3(CS_TX, CS_TY), 0, st>>>(part, dy, dy_stride, x, x_stride,
                                                               rstd, n_rows, n_heads, c, rpc);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return e;
    colsum_finish_kernel<<<lms__cuda_ew_blocks(c), EW, 0, st>>>(dst, part, chunks, c);
    return cudaGetLastError();
}

/* ---- RMSNorm backward: dx one warp per row (double dot), dw by column sums ---- */

static __global__ void rmsnorm_backward_kernel(float *dx, int64_t dx_stride, int dx_add,
                                               const float *dy, int64_t dy_stride, const float *x,
                                               int64_t x_stride, const float *w,
                                               const float *rstd, int64_t n_rows,
                                               int64_t n_heads, int64_t c)
{
    int lane = threadIdx.x & 31;
    int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    int64_t total = n_rows * n_heads;
    for (int64_t i = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; i < total;
         i += warps) {
        int64_t r = i / n_heads, h = i - r * n_heads;
        const float *xr = x + r * x_stride + h * c, *gr = dy + r * dy_stride + h * c;
        float *dr = dx + r * dx_stride + h * c;
        double s = rstd[i], dot = 0.0;
        for (int64_t j = lane; j < c; j += 32)
            dot += (double)w[j] * gr[j] * xr[j];
        /* every lane has read its dy before any writes dx (dx may equal dy): the shuffles of
         * the sum order the reads before the writes of the same lane, and each lane writes
         * only the columns it read */
        dot = t_warp_sum_d(dot);
        double k = s * s * s * dot / (double)c;
        for (int64_t j = lane; j < c; j += 32) {
            float v = (float)(s * w[j] * gr[j] - xr[j] * k);
            dr[j] = dx_add ? dr[j] + v : v;
        }
    }
}

extern "C" cudaError_t lms_cuda_rmsnorm_backward(cudaStream_t st, float *dx, int64_t dx_stride,
                                                 int dx_add, float *dw, const float *dy,
                                                 int64_t dy_stride, const float *x,
                                                 int64_t x_stride, const float *w,
                                                 const float *rstd, int64_t n_rows,
                                                 int64_t n_heads, int64_t c, double *part)
{
    int64_t total = n_rows * n_heads;
    if (total <= 0 || c <= 0)
        return cudaSuccess;
    /* dw first: it reads dy, which dx may overwrite */
    cudaError_t e = colsum(st, dw, part, dy, dy_stride, x, x_stride, rstd, n_rows, n_heads, c);
    if (e != cudaSuccess)
        return e;
    rmsnorm_backward_kernel<<<warp_row_blocks(total), 256, 0, st>>>(
        dx, dx_stride, dx_add, dy, dy_stride, x, x_stride, w, rstd, n_rows, n_heads, c);
    return cudaGetLastError();
}

extern "C" cudaError_t lms_cuda_bias_backward(cudaStream_t st, float *dbias, const float *dy,
                                              int64_t ld, int64_t n_rows, int64_t n,
                                              double *part)
{
    if (n_rows <= 0 || n <= 0)
        return cudaSuccess;
    return colsum(st, dbias, part, dy, ld, NULL, 0, NULL, n_rows, 1, n);
}

/* ---- RoPE backward: the transposed rotation, one thread per (row, head, i < d/2) ---- */

static __global__ void rope_backward_kernel(float *x, int64_t x_stride, int64_t n_rows,
                                            int64_t n_heads, int64_t d, const int32_t *pos,
                                            const float *cs, const float *sn, int64_t n_pos,
                                            unsigned long long *errw)
{
    int64_t half = d / 2, total = n_rows * n_heads * half;
    for (int64_t t = gtid(); t < total; t += gstride()) {
        int64_t i = t % half, rh = t / half;
        int64_t h = rh % n_heads, r = rh / n_heads;
        int32_t p = pos[r];
        if (p < 0 || p >= n_pos) {
            if (h == 0 && i == 0)
                record_error(errw, LMS_CUDA_ERRW_ROPE, r, p);
            continue;
        }
        float *a = x + r * x_stride + h * d;
        float c = cs[(int64_t)p * half + i], s = sn[(int64_t)p * half + i];
        float ga = a[i], gb = a[i + half];
        a[i] = ga * c + gb * s;
        a[i + half] = gb * c - ga * s;
    }
}

extern "C" cudaError_t lms_cuda_rope_backward(cudaStream_t st, float *dx, int64_t dx_stride,
                                              int64_t n_rows, int64_t n_heads, int64_t head_dim,
                                              const int32_t *pos, const float *cos,
                                              const float *sin, int64_t n_pos,
                                              unsigned long long *errw)
{
    int64_t total = n_rows * n_heads * (head_dim / 2);
    if (total <= 0)
        return cudaSuccess;
    rope_backward_kernel<<<lms__cuda_ew_blocks(total), EW, 0, st>>>(
        dx, dx_stride, n_rows, n_heads, head_dim, pos, cos, sin, n_pos, errw);
    return cudaGetLastError();
}

/* ---- SwiGLU backward ---- */

static __global__ void swiglu_backward_kernel(float *dgate, float *dup, int64_t d_stride,
                                              const float *dout, int64_t dout_stride,
                                              const float *gate, const float *up,
                                              int64_t in_stride, int64_t n_rows, int64_t f)
{
    int64_t total = n_rows * f;
    for (int64_t t = gtid(); t < total; t += gstride()) {
        int64_t r = t / f, j = t - r * f;
        float x = gate[r * in_stride + j], u = up[r * in_stride + j];
        float o = dout[r * dout_stride + j];
        float sig = 1.0f / (1.0f + expf(-x));
        float silu = x * sig;
        dgate[r * d_stride + j] = o * u * sig * (1.0f + x * (1.0f - sig));
        dup[r * d_stride + j] = o * silu;
    }
}

extern "C" cudaError_t lms_cuda_swiglu_backward(cudaStream_t st, float *dgate, float *dup,
                                                int64_t d_stride, const float *dout,
                                                int64_t dout_stride, const float *gate,
                                                const float *up, int64_t in_stride,
                                                int64_t n_rows, int64_t f)
{
    if (n_rows <= 0 || f <= 0)
        return cudaSuccess;
    swiglu_backward_kernel<<<lms__cuda_ew_blocks(n_rows * f), EW, 0, st>>>(
        dgate, dup, d_stride, dout, dout_stride, gate, up, in_stride, n_rows, f);
    return cudaGetLastError();
}

/* ---- hidden-state losses: one warp per row, double sums ---- */

static __global__ void hidden_loss_kernel(float *loss, float *ds, const float *s,
                                          const float *t, int64_t ld, int64_t n_rows, int64_t c,
                                          int kind, float grad_scale)
{
    int lane = threadIdx.x & 31;
    int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    for (int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < n_rows;
         r += warps) {
        const float *sr = s + r * ld, *tr = t + r * ld;
        float *gr = ds ? ds + r * ld : NULL;
        if (kind == LMS_CUDA_HIDDEN_MSE) {
            double acc = 0.0;
            for (int64_t j = lane; j < c; j += 32) {
                double e = (double)sr[j] - tr[j];
                acc += e * e;
                if (gr)
                    gr[j] += (float)(grad_scale * 2.0 * e / (double)c);
            }
            acc = t_warp_sum_d(acc);
            if (lane == 0)
                loss[r] = (float)(acc / (double)c);
            continue;
        }
        /* 1 - cos, each norm clamped at 1e-8 */
        double dot = 0.0, ss = 0.0, tt = 0.0;
        for (int64_t j = lane; j < c; j += 32) {
            double a = sr[j], b = tr[j];
            dot += a * b;
            ss += a * a;
            tt += b * b;
        }
        dot = t_warp_sum_d(dot);
        ss = t_warp_sum_d(ss);
        tt = t_warp_sum_d(tt);
        double ns = fmax(sqrt(ss), 1e-8), nt = fmax(sqrt(tt), 1e-8);
        double cosv = dot / (ns * nt);
        if (lane == 0)
            loss[r] = (float)(1.0 - cosv);
        if (gr)
            for (int64_t j = lane; j < c; j += 32)
                gr[j] += (float)(-grad_scale * (tr[j] / (ns * nt) - cosv * sr[j] / (ns * ns)));
    }
}

extern "C" cudaError_t lms_cuda_hidden_loss(cudaStream_t st, float *loss, float *ds,
                                            const float *s, const float *t, int64_t ld,
                                            int64_t n_rows, int64_t c, int kind,
                                            float grad_scale)
{
    if (n_rows <= 0)
        return cudaSuccess;
    hidden_loss_kernel<<<warp_row_blocks(n_rows), 256, 0, st>>>(loss, ds, s, t, ld, n_rows, c,
                                                                  kind, grad_scale);
    return cudaGetLastError();
}

/* ---- sum of squares: fixed grid of block partials in double, then one block adds them ---- */

#define SQ_THREADS 256

static __device__ double block_sum_d(double v, double *sh)
{
    v = t_warp_sum_d(v);
    int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    if (lane == 0)
        sh[warp] = v;
    __syncthreads();
    double s = 0.0;
    if (threadIdx.x == 0)
        for (int w = 0; w < (int)(blockDim.x / 32); w++)
            s += sh[w];
    return s; /* valid in thread 0 */
}

static __global__ void __launch_bounds__(SQ_THREADS)
    sum_squares_partial_kernel(double *part, const float *x, int64_t n)
{
    __shared__ double sh[SQ_THREADS / 32];
    double acc = 0.0;
    for (int64_t i = gtid(); i < n; i += gstride()) {
        double v = x[i];
        acc += v * v;
    }
    double s = block_sum_d(acc, sh);
    if (threadIdx.x == 0)
        part[blockIdx.x] = s;
}

static __global__ void __launch_bounds__(SQ_THREADS)
    sum_squares_finish_kernel(float *out, const double *part, int n_part)
{
    __shared__ double sh[SQ_THREADS / 32];
    double acc = 0.0;
    for (int i = threadIdx.x; i < n_part; i += blockDim.x)
        acc += part[i];
    double s = block_sum_d(acc, sh);
    if (threadIdx.x == 0)
        out[0] += (float)s;
}

extern "C" cudaError_t lms_cuda_sum_squares(cudaStream_t st, float *out, const float *x,
                                            int64_t n, double *part)
{
    if (n <= 0)
        return cudaSuccess;
    int64_t blocks = (n + SQ_THREADS * 8 - 1) / (SQ_THREADS * 8);
    if (blocks > LMS_CUDA_SUMSQ_PARTS)
        blocks = LMS_CUDA_SUMSQ_PARTS;
    sum_squares_partial_kernel<<<(unsigned)blocks, SQ_THREADS, 0, st>>>(part, x, n);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return e;
    sum_squares_finish_kernel<<<1, SQ_THREADS, 0, st>>>(out, part, (int)blocks);
    return cudaGetLastError();
}

/* ---- scale (s != 0; the backend zeroes with a memset for s == 0) ---- */

static __global__ void scale_kernel(float *x, float s, int64_t n)
{
    for (int64_t i = gtid(); i < n; i += gstride())
        x[i] *= s;
}

extern "C" cudaError_t lms_cuda_scale(cudaStream_t st, float *x, float s, int64_t n)
{
    if (n <= 0)
        return cudaSuccess;
    scale_kernel<<<lms__cuda_ew_blocks(n), EW, 0, st>>>(x, s, n);
    return cudaGetLastError();
}

/* ---- multi-tensor AdamW ----
 * Block b handles global chunk b (and b + gridDim.x, ...): its tensor is the last descriptor
 * whose chunk0 <= b (binary search; descriptors of empty tensors are never uploaded, so chunk0
 * is strictly increasing). Arithmetic: the CPU's adamw_span, operation by operation, each one
 * rounded on its own (__f*_rn keep nvcc from contracting them into FMAs). */

static __global__ void __launch_bounds__(LMS_CUDA_ADAMW_THREADS)
    adamw_kernel(const struct lms_cuda_adamw_desc *desc, int n_desc, int64_t total_chunks,
                 struct lms_cuda_adamw_scalars k)
{
    for (int64_t ck = blockIdx.x; ck < total_chunks; ck += gridDim.x) {
        int lo = 0, hi = n_desc - 1;
        while (lo < hi) {
            int mid = (lo + hi + 1) / 2;
            if (desc[mid].chunk0 <= ck)
                lo = mid;
            else
                hi = mid - 1;
        }
        const struct lms_cuda_adamw_desc d = desc[lo];
        int64_t i0 = (ck - d.chunk0) * LMS_CUDA_ADAMW_CHUNK;
        int64_t i1 = i0 + LMS_CUDA_ADAMW_CHUNK < d.n ? i0 + LMS_CUDA_ADAMW_CHUNK : d.n;
        const float one_b1 = __fsub_rn(1.0f, k.beta1), one_b2 = __fsub_rn(1.0f, k.beta2);
        for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
            float gi = __fmul_rn(d.g[i], k.grad_scale);
            float m = d.m[i], v = d.v[i];
            float mi = __fadd_rn(m, __fmul_rn(one_b1, __fsub_rn(gi, m)));
            float vi = __fadd_rn(__fmul_rn(v, k.beta2), __fmul_rn(__fmul_rn(one_b2, gi), gi));
            float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), k.bc2_sqrt), k.eps);
            float w = __fsub_rn(__fmul_rn(d.w[i], d.decay),
                                __fmul_rn(k.step_size, __fdiv_rn(mi, denom)));
            d.m[i] = mi;
            d.v[i] = vi;
            d.w[i] = w;
            if (d.w_bf16) {
                /* NaN as the CPU's conversion: one canonical quiet NaN */
                d.w_bf16[i] = isnan(w) ? (uint16_t)0x7FC0
                                       : (uint16_t)__bfloat16_as_ushort(__float2bfloat16_rn(w));
            }
        }
    }
}

extern "C" cudaError_t lms_cuda_adamw(cudaStream_t st, const struct lms_cuda_adamw_desc *desc,
                                      int n_desc, int64_t total_chunks,
                                      const struct lms_cuda_adamw_scalars *k)
{
    if (n_desc <= 0 || total_chunks <= 0)
        return cudaSuccess;
    int64_t blocks = total_chunks;
    if (blocks > (int64_t)LMS_CUDA_EW_MAX_BLOCKS)
        blocks = LMS_CUDA_EW_MAX_BLOCKS;
    adamw_kernel<<<(unsigned)blocks, LMS_CUDA_ADAMW_THREADS, 0, st>>>(desc, n_desc,
                                                                       total_chunks, *k);
    return cudaGetLastError();
}
