/* CUDA kernels other than attention: embedding, RMSNorm, RoPE, SwiGLU, residual and bias adds,
 * log-softmax and cross-entropy over the vocabulary, casts, the bf16 packing of GEMM operands, a
 * fallback GEMM and device-side random fills. Shapes: kernels/cuda/lms_cuda.h and the op slots
 * in kernels/backend_impl.h. All indices are 64-bit; element-wise kernels loop grid-stride over
 * grids capped by lms__cuda_ew_blocks. Numerics follow the CPU reference (kernels/cpu/ops.c):
 * same formulas and operation order, fp32, except that the GPU sums in fp32 tree order. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/grid.cuh"
#include "kernels/cuda/lms_cuda.h"

#define EW LMS_CUDA_EW_THREADS

__device__ __forceinline__ float load_as_f32(const void *p, int dt, int64_t i)
{
    if (dt == LMS_CUDA_BF16)
        return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    if (dt == LMS_CUDA_F16)
        return __half2float(((const __half *)p)[i]);
    return ((const float *)p)[i];
}

/* ---- embedding ---- */

__global__ void embedding_kernel(float *out, const int32_t *ids, int64_t n, const void *table,
                                 int dt, int64_t vocab, int64_t hidden,
                                 unsigned long long *errw)
{
    int64_t total = n * hidden;
    for (int64_t i = gtid(); i < total; i += gstride()) {
        int64_t r = i / hidden, j = i - r * hidden;
        int32_t id = ids[r];
        if (id < 0 || id >= vocab) {
            if (j == 0)
                record_error(errw, LMS_CUDA_ERRW_EMBED, r, id);
            out[i] = 0.0f;
            continue;
        }
        out[i] = load_as_f32(table, dt, (int64_t)id * hidden + j);
    }
}

extern "C" cudaError_t lms_cuda_embedding(cudaStream_t st, float *out, const int32_t *ids,
                                          int64_t n, const void *table, enum lms_cuda_dt dt,
                                          int64_t vocab, int64_t hidden,
                                          unsigned long long *errw)
{
    if (n <= 0 || hidden <= 0)
        return cudaSuccess;
    embedding_kernel<<<lms__cuda_ew_blocks(n * hidden), EW, 0, st>>>(out, ids, n, table,
                                                                       (int)dt, vocab, hidden,
                                                                       errw);
    return cudaGetLastError();
}

/* ---- RMSNorm: one warp per row, 8 rows per block ---- */

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__global__ void rmsnorm_kernel(float *out, int64_t out_stride, const float *x, int64_t x_stride,
                               const float *w, float *rstd, int64_t n_rows, int64_t n_heads,
                               int64_t c, float eps)
{
    int lane = threadIdx.x & 31;
    int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    int64_t total = n_rows * n_heads;
    for (int64_t i = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; i < total;
         i += warps) {
        int64_t r = i / n_heads, h = i - r * n_heads;
        const float *xr = x + r * x_stride + h * c;
        float *orow = out + r * out_stride + h * c;
        float ss = 0.0f;
        for (int64_t j = lane; j < c; j += 32) {
            float v = xr[j];
            ss += v * v;
        }
        ss = warp_sum(ss);
        float var = ss / (float)c;
        float s = 1.0f / sqrtf(var + eps);
        for (int64_t j = lane; j < c; j += 32)
            orow[j] = w[j] * (xr[j] * s);
        if (rstd && lane == 0)
            rstd[i] = s;
    }
}

extern "C" cudaError_t lms_cuda_rmsnorm(cudaStream_t st, float *out, int64_t out_stride,
                                        const float *x, int64_t x_stride, const float *w,
                                        float *rstd, int64_t n_rows, int64_t n_heads, int64_t c,
                                        float eps)
{
    int64_t total = n_rows * n_heads;
    if (total <= 0 || c <= 0)
        return cudaSuccess;
    int64_t blocks = (total + 7) / 8;
    if (blocks > (int64_t)LMS_CUDA_EW_MAX_BLOCKS)
        blocks = LMS_CUDA_EW_MAX_BLOCKS;
    rmsnorm_kernel<<<(unsigned)blocks, 256, 0, st>>>(out, out_stride, x, x_stride, w, rstd,
                                                      n_rows, n_heads, c, eps);
    return cudaGetLastError();
}

/* ---- RoPE: one thread per (row, head, i < d/2) pair ---- */

__global__ void rope_kernel(float *x, int64_t x_stride, int64_t n_rows, int64_t n_heads,
                            int64_t d, const int32_t *pos, const float *cs, const float *sn,
                            int64_t n_pos, unsigned long long *errw)
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
        float x1 = a[i], x2 = a[i + half];
        a[i] = x1 * c - x2 * s;
        a[i + half] = x2 * c + x1 * s;
    }
}

extern "C" cudaError_t lms_cuda_rope(cudaStream_t st, float *x, int64_t x_stride, int64_t n_rows,
                                     int64_t n_heads, int64_t head_dim, const int32_t *pos,
                                     const float *cos, const float *sin, int64_t n_pos,
                                     unsigned long long *errw)
{
    int64_t total = n_rows * n_heads * (head_dim / 2);
    if (total <= 0)
        return cudaSuccess;
    rope_kernel<<<lms__cuda_ew_blocks(total), EW, 0, st>>>(x, x_stride, n_rows, n_heads,
                                                            head_dim, pos, cos, sin, n_pos, errw);
    return cudaGetLastError();
}

/* ---- SwiGLU, adds ---- */

__global__ void swiglu_kernel(float *out, int64_t out_stride, const float *gate, const float *up,
                              int64_t in_stride, int64_t n_rows, int64_t f)
{
    int64_t total = n_rows * f;
    for (int64_t t = gtid(); t < total; t += gstride()) {
        int64_t r = t / f, j = t - r * f;
        float g = gate[r * in_stride + j];
        out[r * out_stride + j] = g / (1.0f + expf(-g)) * up[r * in_stride + j];
    }
}

extern "C" cudaError_t lms_cuda_swiglu(cudaStream_t st, float *out, int64_t out_stride,
                                       const float *gate, const float *up, int64_t in_stride,
                                       int64_t n_rows, int64_t f)
{
    if (n_rows <= 0 || f <= 0)
        return cudaSuccess;
    swiglu_kernel<<<lms__cuda_ew_blocks(n_rows * f), EW, 0, st>>>(out, out_stride, gate, up,
                                                                    in_stride, n_rows, f);
    return cudaGetLastError();
}

__global__ void add_kernel(float *y, const float *x, int64_t n)
{
    for (int64_t i = gtid(); i < n; i += gstride())
        y[i] += x[i];
}

extern "C" cudaError_t lms_cuda_add(cudaStream_t st, float *y, const float *x, int64_t n)
{
    if (n <= 0)
        return cudaSuccess;
    add_kernel<<<lms__cuda_ew_blocks(n), EW, 0, st>>>(y, x, n);
    return cudaGetLastError();
}

__global__ void add_bias_kernel(float *c, int64_t ldc, int64_t stride_c, int64_t batch,
                                int64_t rows, int64_t n, const float *bias)
{
    int64_t total = batch * rows * n;
    for (int64_t t = gtid(); t < total; t += gstride()) {
        int64_t j = t % n, br = t / n;
        int64_t r = br % rows, b = br / rows;
        c[b * stride_c + r * ldc + j] += bias[j];
    }
}

extern "C" cudaError_t lms_cuda_add_bias(cudaStream_t st, float *c, int64_t ldc,
                                         int64_t stride_c, int64_t batch, int64_t rows, int64_t n,
                                         const float *bias)
{
    int64_t total = batch * rows * n;
    if (total <= 0)
        return cudaSuccess;
    add_bias_kernel<<<lms__cuda_ew_blocks(total), EW, 0, st>>>(c, ldc, stride_c, batch, rows, n,
                                                                bias);
    return cudaGetLastError();
}

/* ---- log-softmax and cross-entropy: one block of 256 threads per row ----
 * Each thread keeps an online (max, sum of exp(x - max)) pair over its strided columns; the
 * pairs are merged across the warp with shuffles, then across the 8 warps in shared memory. */

#define ROW_THREADS 256

struct ms {
    float m, s;
};

__device__ __forceinline__ struct ms ms_merge(struct ms a, struct ms b)
{
    float m = fmaxf(a.m, b.m);
    if (m == -INFINITY)
        return a;
    struct ms r;
    r.m = m;
    r.s = (a.m == -INFINITY ? 0.0f : a.s * expf(a.m - m)) +
          (b.m == -INFINITY ? 0.0f : b.s * expf(b.m - m));
    return r;
}

/* logsumexp of row x (c columns), valid in every thread of the block. */
__device__ float block_logsumexp(const float *x, int64_t c)
{
    __shared__ struct ms part[ROW_THREADS / 32];
    struct ms acc = {-INFINITY, 0.0f};
    for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
        float v = x[j];
        if (v == -INFINITY)
            continue;
        if (v > acc.m) {
            acc.s = (acc.m == -INFINITY ? 0.0f : acc.s * expf(acc.m - v)) + 1.0f;
            acc.m = v;
        } else {
            acc.s += expf(v - acc.m);
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        struct ms other;
        other.m = __shfl_xor_sync(0xffffffffu, acc.m, o);
        other.s = __shfl_xor_sync(0xffffffffu, acc.s, o);
        acc = ms_merge(acc, other);
    }
    int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    if (lane == 0)
        part[warp] = acc;
    __syncthreads();
    struct ms all = part[0];
    for (int w = 1; w < (int)(blockDim.x / 32); w++)
        all = ms_merge(all, part[w]);
    __syncthreads(); /* part is reused by the next row */
    if (all.m == -INFINITY || all.m == INFINITY)
        return all.m;
    return all.m + logf(all.s);
}

__global__ void __launch_bounds__(ROW_THREADS)
    log_softmax_kernel(float *out, const float *x, int64_t ld, int64_t n_rows, int64_t c)
{
    for (int64_t r = blockIdx.x; r < n_rows; r += gridDim.x) {
        float lse = block_logsumexp(x + r * ld, c);
        for (int64_t j = threadIdx.x; j < c; j += blockDim.x)
            out[r * ld + j] = x[r * ld + j] - lse;
        __syncthreads(); /* out may equal x: finish the row before the next row's reads */
    }
}

extern "C" cudaError_t lms_cuda_log_softmax(cudaStream_t st, float *out, const float *x,
                                            int64_t ld, int64_t n_rows, int64_t c)
{
    if (n_rows <= 0 || c <= 0)
        return cudaSuccess;
    unsigned blocks = n_rows > 65535 ? 65535u : (unsigned)n_rows;
    log_softmax_kernel<<<blocks, ROW_THREADS, 0, st>>>(out, x, ld, n_rows, c);
    return cudaGetLastError();
}

__global__ void __launch_bounds__(ROW_THREADS)
    cross_entropy_kernel(float *loss, const float *logits, int64_t ld, const int32_t *target,
                         int64_t n_rows, int64_t c, unsigned long long *errw)
{
    for (int64_t r = blockIdx.x; r < n_rows; r += gridDim.x) {
        int32_t t = target[r]; /* uniform across the block */
        if (t < 0 || t >= c) {
            if (threadIdx.x == 0) {
                loss[r] = 0.0f;
                if (t >= c)
                    record_error(errw, LMS_CUDA_ERRW_CE, r, t);
            }
            continue;
        }
        const float *x = logits + r * ld;
        float lse = block_logsumexp(x, c);
        if (threadIdx.x == 0)
            loss[r] = lse - x[t];
    }
}

extern "C" cudaError_t lms_cuda_cross_entropy(cudaStream_t st, float *loss, const float *logits,
                                              int64_t ld, const int32_t *target, int64_t n_rows,
                                              int64_t c, unsigned long long *errw)
{
    if (n_rows <= 0)
        return cudaSuccess;
    unsigned blocks = n_rows > 65535 ? 65535u : (unsigned)n_rows;
    cross_entropy_kernel<<<blocks, ROW_THREADS, 0, st>>>(loss, logits, ld, target, n_rows, c,
                                                         errw);
    return cudaGetLastError();
}

/* ---- casts and packing ---- */

__global__ void cast_kernel(void *dst, int dt, const void *src, int sdt, int64_t n)
{
    for (int64_t i = gtid(); i < n; i += gstride()) {
        float v = load_as_f32(src, sdt, i);
        if (dt == LMS_CUDA_BF16)
            ((__nv_bfloat16 *)dst)[i] = __float2bfloat16_rn(v);
        else if (dt == LMS_CUDA_F16)
            ((__half *)dst)[i] = __float2half_rn(v);
        else
            ((float *)dst)[i] = v;
    }
}

extern "C" cudaError_t lms_cuda_cast(cudaStream_t st, void *dst, enum lms_cuda_dt dt,
                                     const void *src, enum lms_cuda_dt sdt, int64_t n)
{
    if (n <= 0)
        return cudaSuccess;
    cast_kernel<<<lms__cuda_ew_blocks(n), EW, 0, st>>>(dst, (int)dt, src, (int)sdt, n);
    return cudaGetLastError();
}

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v)
{
    return __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ __half from_f32<__half>(float v)
{
    return __float2half_rn(v);
}

template <typename T>
__global__ void pack_kernel(T *dst, const float *src, int64_t ld, int64_t stride, int64_t batch,
                            int64_t rows, int64_t cols)
{
    int64_t total = batch * rows * cols;
    for (int64_t t = gtid(); t < total; t += gstride()) {
        int64_t c = t % cols, br = t / cols;
        int64_t r = br % rows, b = br / rows;
        dst[t] = from_f32<T>(src[b * stride + r * ld + c]);
    }
}

/* 4 columns per thread: src rows and base 16-byte aligned, dst 8-byte aligned, cols % 4 == 0. */
template <typename T>
__global__ void pack_vec4_kernel(T *dst, const float4 *src, int64_t ld4, int64_t stride4,
                                 int64_t batch, int64_t rows, int64_t cols4)
{
    int64_t total = batch * rows * cols4;
    for (int64_t t = gtid(); t < total; t += gstride()) {
        int64_t c = t % cols4, br = t / cols4;
        int64_t r = br % rows, b = br / rows;
        float4 v = src[b * stride4 + r * ld4 + c];
        T o[4] = {from_f32<T>(v.x), from_f32<T>(v.y), from_f32<T>(v.z), from_f32<T>(v.w)};
        *(uint2 *)(dst + 4 * t) = *(const uint2 *)o;
    }
}

template <typename T>
static cudaError_t pack_as(cudaStream_t st, T *dst, const float *src, int64_t ld, int64_t stride,
                           int64_t batch, int64_t rows, int64_t cols)
{
    int64_t total = batch * rows * cols;
    bool vec = cols % 4 == 0 && ld % 4 == 0 && (batch == 1 || stride % 4 == 0) &&
               ((uintptr_t)src & 15) == 0 && ((uintptr_t)dst & 7) == 0;
    if (vec)
        pack_vec4_kernel<T><<<lms__cuda_ew_blocks(total / 4), EW, 0, st>>>(
            dst, (const float4 *)src, ld / 4, stride / 4, batch, rows, cols / 4);
    else
        pack_kernel<T><<<lms__cuda_ew_blocks(total), EW, 0, st>>>(dst, src, ld, stride, batch,
                                                                   rows, cols);
    return cudaGetLastError();
}

extern "C" cudaError_t lms_cuda_pack(cudaStream_t st, void *dst, enum lms_cuda_dt dt,
                                     const float *src, int64_t ld, int64_t stride, int64_t batch,
                                     int64_t rows, int64_t cols)
{
    if (batch * rows * cols <= 0)
        return cudaSuccess;
    if (dt == LMS_CUDA_BF16)
        return pack_as(st, (__nv_bfloat16 *)dst, src, ld, stride, batch, rows, cols);
    if (dt == LMS_CUDA_F16)
        return pack_as(st, (__half *)dst, src, ld, stride, batch, rows, cols);
    return cudaErrorInvalidValue;
}

/* ---- fallback GEMM: 16 x 16 output tiles, K in steps of 16 through shared memory ---- */

#define GT 16

__global__ void gemm_ref_kernel(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                                const float *a, int64_t lda, int64_t stride_a, const void *b,
                                int dt, int64_t ldb, int64_t stride_b, float *c, int64_t ldc,
                                int64_t stride_c, float alpha, float beta)
{
    __shared__ float sa[GT][GT + 1], sb[GT][GT + 1];
    int64_t bt = blockIdx.z;
    int tx = threadIdx.x, ty = threadIdx.y;
    int64_t i = (int64_t)blockIdx.y * GT + ty, j = (int64_t)blockIdx.x * GT + tx;
    const float *ab = a + bt * stride_a;
    int64_t boff = bt * stride_b;
    float acc = 0.0f;
    for (int64_t p0 = 0; p0 < k; p0 += GT) {
        int64_t pa = p0 + tx, pb = p0 + ty;
        /* sa[ty][tx] = op(A)(i, p0 + tx); sb[ty][tx] = op(B)(p0 + ty, j) */
        sa[ty][tx] = (i < m && pa < k) ? (trans_a ? ab[pa * lda + i] : ab[i * lda + pa]) : 0.0f;
        sb[ty][tx] = (pb < k && j < n)
                         ? load_as_f32(b, dt, boff + (trans_b ? j * ldb + pb : pb * ldb + j))
                         : 0.0f;
        __syncthreads();
        for (int q = 0; q < GT; q++)
            acc += sa[ty][q] * sb[q][tx];
        __syncthreads();
    }
    if (i < m && j < n) {
        float *cp = c + bt * stride_c + i * ldc + j;
        *cp = beta == 0.0f ? alpha * acc : alpha * acc + beta * *cp;
    }
}

extern "C" cudaError_t lms_cuda_gemm_ref(cudaStream_t st, int trans_a, int trans_b, int64_t m,
                                         int64_t n, int64_t k, const float *a, int64_t lda,
                                         int64_t stride_a, const void *b, enum lms_cuda_dt dt,
                                         int64_t ldb, int64_t stride_b, float *c, int64_t ldc,
                                         int64_t stride_c, int64_t batch, float alpha, float beta)
{
    if (m <= 0 || n <= 0 || batch <= 0)
        return cudaSuccess;
    if ((m + GT - 1) / GT > 65535 || batch > 65535 || (n + GT - 1) / GT > 0x7fffffff)
        return cudaErrorInvalidConfiguration;
    dim3 grid((unsigned)((n + GT - 1) / GT), (unsigned)((m + GT - 1) / GT), (unsigned)batch);
    dim3 block(GT, GT);
    gemm_ref_kernel<<<grid, block, 0, st>>>(trans_a, trans_b, m, n, k, a, lda, stride_a, b,
                                            (int)dt, ldb, stride_b, c, ldc, stride_c, alpha,
                                            beta);
    return cudaGetLastError();
}

/* ---- random fills (bench) ---- */

__device__ __forceinline__ uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

__global__ void fill_uniform_bf16_kernel(__nv_bfloat16 *dst, int64_t n, uint64_t seed,
                                         float scale)
{
    for (int64_t i = gtid(); i < n; i += gstride()) {
        uint64_t h = splitmix64(seed ^ splitmix64((uint64_t)i));
        float u = (float)(h >> 40) * (1.0f / 16777216.0f); /* [0, 1) */
        dst[i] = __float2bfloat16_rn((2.0f * u - 1.0f) * scale);
    }
}

extern "C" cudaError_t lms_cuda_fill_uniform_bf16(cudaStream_t st, uint16_t *dst, int64_t n,
                                                  uint64_t seed, float scale)
{
    if (n <= 0)
        return cudaSuccess;
    fill_uniform_bf16_kernel<<<lms__cuda_ew_blocks(n), EW, 0, st>>>((__nv_bfloat16 *)dst, n,
                                                                     seed, scale);
    return cudaGetLastError();
}

__global__ void fill_f32_kernel(float *dst, int64_t n, float value)
{
    for (int64_t i = gtid(); i < n; i += gstride())
        dst[i] = value;
}

extern "C" cudaError_t lms_cuda_fill_f32(cudaStream_t st, float *dst, int64_t n, float value)
{
    if (n <= 0)
        return cudaSuccess;
    fill_f32_kernel<<<lms__cuda_ew_blocks(n), EW, 0, st>>>(dst, n, value);
    return cudaGetLastError();
}

/* ---- activation statistics for importance scoring ---- */

/* One block per (batch row, 32-channel tile): threadIdx.x walks the channels (coalesced loads),
 * threadIdx.y splits the tokens; partial sums in double meet in shared memory. */
#define STATS_TY 8
__global__ void abs_mean_kernel(float *out, const float *x, int64_t ld, int64_t seq, int64_t c,
                                int64_t tiles)
{
    __shared__ double part[STATS_TY][32];
    int64_t b = blockIdx.x / tiles, j = (blockIdx.x % tiles) * 32 + threadIdx.x;
    double acc = 0.0;
    if (j < c) {
        const float *xb = x + b * seq * ld + j;
        for (int64_t t = threadIdx.y; t < seq; t += STATS_TY)
            acc += fabsf(xb[t * ld]);
    }
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && j < c) {
        double s = 0.0;
        for (int k = 0; k < STATS_TY; k++)
            s += part[k][threadIdx.x];
        out[b * c + j] = (float)(s / (double)seq);
    }
}

extern "C" cudaError_t lms_cuda_abs_mean(cudaStream_t st, float *out, const float *x, int64_t ld,
                                         int64_t batch, int64_t seq, int64_t c)
{
    if (batch <= 0 || seq <= 0 || c <= 0)
        return cudaSuccess;
    int64_t tiles = (c + 31) / 32;
    dim3 block(32, STATS_TY);
    abs_mean_kernel<<<(unsigned)(batch * tiles), block, 0, st>>>(out, x, ld, seq, c, tiles);
    return cudaGetLastError();
}

__device__ __forceinline__ double warp_sum_d(double v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* One warp per row: dot product and both squared norms in double. */
__global__ void row_cosine_kernel(float *out, const float *a, int64_t lda, const float *b,
                                  int64_t ldb, int64_t n_rows, int64_t c)
{
    int lane = threadIdx.x & 31;
    int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    for (int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < n_rows;
         r += warps) {
        const float *ar = a + r * lda, *br = b + r * ldb;
        double ab = 0.0, aa = 0.0, bb = 0.0;
        for (int64_t j = lane; j < c; j += 32) {
            double x = ar[j], y = br[j];
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
        ab = warp_sum_d(ab);
        aa = warp_sum_d(aa);
        bb = warp_sum_d(bb);
        if (lane == 0)
            out[r] = aa > 0.0 && bb > 0.0 ? (float)(ab / (sqrt(aa) * sqrt(bb))) : 0.0f;
    }
}

extern "C" cudaError_t lms_cuda_row_cosine(cudaStream_t st, float *out, const float *a,
                                           int64_t lda, const float *b, int64_t ldb,
                                           int64_t n_rows, int64_t c)
{
    if (n_rows <= 0 || c <= 0)
        return cudaSuccess;
    int64_t blocks = (n_rows + 7) / 8;
    if (blocks > (int64_t)LMS_CUDA_EW_MAX_BLOCKS)
        blocks = LMS_CUDA_EW_MAX_BLOCKS;
    row_cosine_kernel<<<(unsigned)blocks, 256, 0, st>>>(out, a, lda, b, ldb, n_rows, c);
    return cudaGetLastError();
}
