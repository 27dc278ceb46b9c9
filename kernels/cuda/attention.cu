/* CUDA causal grouped-query attention, flash style: the (S, S) score matrix never exists.
 * Two kernels, chosen by lms__cuda_attn_plan (launch.h, which also owns their shared-memory
 * layouts):
 *
 *   attn_f32_kernel: fp32 on CUDA cores, any head dim up to 256 (the exact path, used when the
 *     backend runs in fp32 precision and for head dims the tensor-core kernel does not cover).
 *     A block = 4 warps = 16 query rows of one head; K/V tiles of 32 keys in shared memory; a
 *     warp scores one row against the tile with one key per lane, updates the row's online
 *     softmax (running max m, sum l, output accumulator in registers, lane c owning channels
 *     c, c+32, ...) and accumulates P V by broadcasting each probability with a shuffle.
 *
 *   attn_tc_kernel<D>: bf16 tensor cores through WMMA (16x16x16, fp32 accumulation), D = 64 or
 *     128. A block = 4 warps = 64 query rows of one head; per K/V tile of 64 keys (converted to
 *     bf16 in shared memory): S = Q K^T (WMMA, per warp 16 x 64) is stored to the warp's shared
 *     scratch, the online softmax runs with two lanes per query row (exp2 with the scale folded
 *     into log2 e), P goes back as bf16, P V (WMMA) lands in the same scratch and is folded
 *     into the output rows each lane keeps in registers (its row, half of the channels).
 *
 * Both write, when given a non-NULL lse, each row's log-sum-exp of its scaled scores (natural
 * log, the CPU's units) for the backward (attention_backward.cu): max + log(sum) of the online
 * softmax.
 *
 * Path to Hopper speed (not done yet; the correctness reference is this version):
 *   1. K/V sharing across the n_h / n_g heads of a group (one block per group and query tile),
 *      and bf16 Q/K/V produced by the QKV GEMM epilogue instead of converted here.
 *   2. Keep S and O in registers: mma.sync m16n8k16 with the documented fragment layouts
 *      (FlashAttention-2), removing the shared-memory round trips of the WMMA version.
 *   3. sm_90a: wgmma (warpgroup MMA, 64 x N x 16) with Q/K/V tiles brought in by TMA
 *      (cp.async.bulk.tensor on an mbarrier, 2-3 stages), producer/consumer warpgroups with
 *      setmaxnreg, softmax of one tile overlapped with the GEMMs of the next (FlashAttention-3).
 *   4. Causal load balance: a persistent grid walking query tiles longest first. */
#include <cuda_bf16.h>
#include <math.h>
#include <mma.h>
#include <stdint.h>

#include "kernels/cuda/lms_cuda.h"

using namespace nvcuda;

#define NW LMS_CUDA_ATTN_WARPS

/* ---- fp32 kernel ---- */

#define F32_RPW (LMS_CUDA_F32_BQ / NW) /* query rows per warp */
#define F32_CPL (LMS_CUDA_ATTN_F32_MAX_D / 32) /* channels per lane */

__global__ void __launch_bounds__(32 * NW)
    attn_f32_kernel(int64_t S, int64_t n_heads, int64_t n_groups, int64_t d, const float *q,
                    const float *k, const float *v, int64_t q_stride, int64_t kv_stride,
                    float *out, int64_t out_stride, float scale, int64_t W, float *lse)
{
    extern __shared__ __align__(128) unsigned char smem_raw[];
    const int BK = LMS_CUDA_F32_BK, BQ = LMS_CUDA_F32_BQ;
    float *sK = (float *)smem_raw;   /* (BK, d + 1) */
    float *sV = sK + BK * (d + 1);   /* (BK, d) */
    float *sQ = sV + BK * d;         /* (BQ, d), scaled */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int64_t b = blockIdx.z, h = blockIdx.y;
    const int64_t qb = (int64_t)gridDim.x - 1 - blockIdx.x; /* longest rows first */
    const int64_t q0 = qb * BQ, q1 = q0 + BQ < S ? q0 + BQ : S;
    const int64_t g = h / (n_heads / n_groups);

    for (int64_t idx = tid; idx < (int64_t)BQ * d; idx += blockDim.x) {
        int64_t r = idx / d, c = idx - r * d;
        float val = 0.0f;
        if (q0 + r < S)
            val = q[(b * S + q0 + r) * q_stride + h * d + c] * scale;
        sQ[idx] = val;
    }
    float m[F32_RPW], l[F32_RPW], acc[F32_RPW][F32_CPL];
#pragma unroll
    for (int rr = 0; rr < F32_RPW; rr++) {
        m[rr] = -INFINITY;
        l[rr] = 0.0f;
#pragma unroll
        for (int e = 0; e < F32_CPL; e++)
            acc[rr][e] = 0.0f;
    }
    int64_t j_begin = (W > 0 && q0 - W + 1 > 0) ? q0 - W + 1 : 0;
    for (int64_t j0 = j_begin; j0 < q1; j0 += BK) {
        int64_t nk = q1 - j0 < BK ? q1 - j0 : BK;
        __syncthreads(); /* the previous tile is no longer read (and sQ is written) */
        for (int64_t idx = tid; idx < nk * d; idx += blockDim.x) {
            int64_t jj = idx / d, c = idx - jj * d;
            int64_t row = (b * S + j0 + jj) * kv_stride + g * d + c;
            sK[jj * (d + 1) + c] = k[row];
            sV[jj * d + c] = v[row];
        }
        __syncthreads();
#pragma unroll
        for (int rr = 0; rr < F32_RPW; rr++) {
            int64_t i = q0 + warp * F32_RPW + rr;
            if (i >= q1)
                continue; /* uniform across the warp */
            int64_t j = j0 + lane;
            bool vis = lane < nk && j <= i && (W == 0 || i - j < W);
            float s = -INFINITY;
            if (vis) {
                const float *qr = sQ + (i - q0) * d, *kr = sK + lane * (d + 1);
                float t = 0.0f;
                for (int64_t c = 0; c < d; c++)
                    t += qr[c] * kr[c];
                s = t;
            }
            float mt = s;
            for (int o = 16; o > 0; o >>= 1)
                mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, o));
            float m_new = fmaxf(m[rr], mt);
            if (m_new == -INFINITY)
                continue; /* nothing visible yet: uniform */
            float alpha = expf(m[rr] - m_new); /* 0 when m was -inf */
            float p = vis ? expf(s - m_new) : 0.0f;
            float ps = p;
            for (int o = 16; o > 0; o >>= 1)
                ps += __shfl_xor_sync(0xffffffffu, ps, o);
            l[rr] = l[rr] * alpha + ps;
            m[rr] = m_new;
#pragma unroll
            for (int e = 0; e < F32_CPL; e++)
                acc[rr][e] *= alpha;
            for (int jj = 0; jj < (int)nk; jj++) {
                float pj = __shfl_sync(0xffffffffu, p, jj);
                const float *vr = sV + jj * d;
#pragma unroll
                for (int e = 0; e < F32_CPL; e++) {
                    int64_t c = lane + 32 * e;
                    if (c < d)
                        acc[rr][e] += pj * vr[c];
                }
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < F32_RPW; rr++) {
        int64_t i = q0 + warp * F32_RPW + rr;
        if (i >= q1)
            continue;
        float inv = 1.0f / l[rr];
        float *o = out + (b * S + i) * out_stride + h * d;
        if (lse && lane == 0) /* m is in units of the scaled scores (sQ holds scale * q) */
            lse[(b * n_heads + h) * S + i] = m[rr] + logf(l[rr]);
#pragma unroll
        for (int e = 0; e < F32_CPL; e++) {
            int64_t c = lane + 32 * e;
            if (c < d)
                o[c] = acc[rr][e] * inv;
        }
    }
}

/* ---- tensor-core kernel ---- */

template <int D>
__global__ void __launch_bounds__(32 * NW)
    attn_tc_kernel(struct lms_cuda_tc_layout lay, int64_t S, int64_t n_heads, int64_t n_groups,
                   const float *q, const float *k, const float *v, int64_t q_stride,
                   int64_t kv_stride, float *out, int64_t out_stride, float scale, int64_t W,
                   float *lse)
{
    extern __shared__ __align__(128) unsigned char smem_raw[];
    constexpr int BQ = LMS_CUDA_TC_BQ, BK = LMS_CUDA_TC_BK, HALF = D / 2, CPL = BK / 2;
    static_assert(BQ == 16 * NW, "one 16-row strip per warp");
    static_assert(D % 16 == 0 && BK % 16 == 0, "WMMA tiles");
    const int ldq = lay.ldq, lds = lay.lds, ldp = lay.ldp;
    __nv_bfloat16 *sQ = (__nv_bfloat16 *)(smem_raw + lay.off_q);
    __nv_bfloat16 *sK = (__nv_bfloat16 *)(smem_raw + lay.off_k);
    __nv_bfloat16 *sV = (__nv_bfloat16 *)(smem_raw + lay.off_v);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    float *sS = (float *)(smem_raw + lay.off_s) + (size_t)warp * 16 * lds;
    __nv_bfloat16 *sP = (__nv_bfloat16 *)(smem_raw + lay.off_p) + (size_t)warp * 16 * ldp;
    const int64_t b = blockIdx.z, h = blockIdx.y;
    const int64_t qb = (int64_t)gridDim.x - 1 - blockIdx.x;
    const int64_t q0 = qb * BQ, q1 = q0 + BQ < S ? q0 + BQ : S;
    const int64_t g = h / (n_heads / n_groups);
    const float sc = scale * 1.4426950408889634f; /* exp(x) = exp2(x log2 e) */

    for (int idx = tid; idx < BQ * D; idx += blockDim.x) {
        int r = idx / D, c = idx - r * D;
        float val = 0.0f;
        if (q0 + r < S)
            val = q[(b * S + q0 + r) * q_stride + h * D + c];
        sQ[r * ldq + c] = __float2bfloat16_rn(val);
    }

    const int lr = lane >> 1, hf = lane & 1; /* this lane's row in the warp strip, its half */
    const int64_t i = q0 + warp * 16 + lr;  /* its query row */
    const int64_t w_first = q0 + warp * 16, w_last = w_first + 15;
    float m = -INFINITY, l = 0.0f, o[HALF];
#pragma unroll
    for (int e = 0; e < HALF; e++)
        o[e] = 0.0f;

    int64_t j_begin = (W > 0 && q0 - W + 1 > 0) ? q0 - W + 1 : 0;
    for (int64_t j0 = j_begin; j0 < q1; j0 += BK) {
        __syncthreads(); /* everyone is done with the previous K/V tile (and sQ is written) */
        for (int idx = tid; idx < BK * D; idx += blockDim.x) {
            int jj = idx / D, c = idx - jj * D;
            int64_t j = j0 + jj;
            float kv = 0.0f, vv = 0.0f; /* zero rows past S: 0 * garbage could be NaN */
            if (j < S) {
                int64_t row = (b * S + j) * kv_stride + g * D + c;
                kv = k[row];
                vv = v[row];
            }
            sK[jj * ldq + c] = __float2bfloat16_rn(kv);
            sV[jj * ldq + c] = __float2bfloat16_rn(vv);
        }
        __syncthreads();
        /* the whole strip is before the tile, or the tile before every row's window: skip */
        if (j0 > w_last || (W > 0 && j0 + BK - 1 < w_first - W + 1))
            continue;

        /* S (16, BK) = Q_strip (16, D) . K_tile^T */
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> sf[BK / 16];
#pragma unroll
        for (int nt = 0; nt < BK / 16; nt++)
            wmma::fill_fragment(sf[nt], 0.0f);
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> qa;
            wmma::load_matrix_sync(qa, sQ + (warp * 16) * ldq + kk * 16, ldq);
#pragma unroll
            for (int nt = 0; nt < BK / 16; nt++) {
                /* col-major (k = channel, n = key) view of the row-major K tile is K^T */
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> kb;
                wmma::load_matrix_sync(kb, sK + (nt * 16) * ldq + kk * 16, ldq);
                wmma::mma_sync(sf[nt], qa, kb, sf[nt]);
            }
        }
#pragma unroll
        for (int nt = 0; nt < BK / 16; nt++)
            wmma::store_matrix_sync(sS + nt * 16, sf[nt], lds, wmma::mem_row_major);
        __syncwarp();

        /* online softmax: lane (lr, hf) owns columns [hf*CPL, hf*CPL + CPL) of row lr */
        float sv[CPL];
        float mt = -INFINITY;
#pragma unroll
        for (int e = 0; e < CPL; e++) {
            int jj = hf * CPL + e;
            int64_t j = j0 + jj;
            bool vis = j <= i && j < S && (W == 0 || i - j < W);
            sv[e] = vis ? sS[lr * lds + jj] * sc : -INFINITY;
            mt = fmaxf(mt, sv[e]);
        }
        mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
        float m_new = fmaxf(m, mt);
        float alpha = 1.0f, rs = 0.0f;
        if (m_new != -INFINITY) {
            alpha = exp2f(m - m_new); /* 0 when m was -inf */
#pragma unroll
            for (int e = 0; e < CPL; e++) {
                sv[e] = exp2f(sv[e] - m_new); /* exp2(-inf) = 0 for hidden keys */
                rs += sv[e];
            }
            m = m_new;
        } else {
#pragma unroll
            for (int e = 0; e < CPL; e++)
                sv[e] = 0.0f;
        }
        rs += __shfl_xor_sync(0xffffffffu, rs, 1);
        l = l * alpha + rs;
#pragma unroll
        for (int e = 0; e < CPL; e++)
            sP[lr * ldp + hf * CPL + e] = __float2bfloat16_rn(sv[e]);
        __syncwarp(); /* P written; S fully read before the PV results overwrite sS */

        /* PV (16, D) = P (16, BK) . V_tile (BK, D), into sS */
#pragma unroll
        for (int nt = 0; nt < D / 16; nt++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> pv;
            wmma::fill_fragment(pv, 0.0f);
#pragma unroll
            for (int kk = 0; kk < BK / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> pa;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> vb;
                wmma::load_matrix_sync(pa, sP + kk * 16, ldp);
                wmma::load_matrix_sync(vb, sV + (kk * 16) * ldq + nt * 16, ldq);
                wmma::mma_sync(pv, pa, vb, pv);
            }
            wmma::store_matrix_sync(sS + nt * 16, pv, lds, wmma::mem_row_major);
        }
        __syncwarp();
#pragma unroll
        for (int e = 0; e < HALF; e++)
            o[e] = o[e] * alpha + sS[lr * lds + hf * HALF + e];
        __syncwarp(); /* sS is rewritten by the next tile */
    }
    if (i < S) {
        float inv = 1.0f / l;
        if (lse && hf == 0) /* m is in log2 units (scores times scale * log2 e) */
            lse[(b * n_heads + h) * S + i] = m * 0.6931471805599453f + logf(l);
        float *orow = out + (b * S + i) * out_stride + h * D + hf * HALF;
#pragma unroll
        for (int e = 0; e < HALF; e++)
            orow[e] = o[e] * inv;
    }
}

extern "C" cudaError_t lms_cuda_attention_setup(size_t max_smem)
{
    cudaError_t e = cudaFuncSetAttribute(attn_f32_kernel,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)max_smem);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(attn_tc_kernel<64>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)max_smem);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(attn_tc_kernel<128>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)max_smem);
    if (e == cudaSuccess)
        e = lms_cuda_attention_backward_setup(max_smem);
    return e;
}

extern "C" cudaError_t lms_cuda_attention(cudaStream_t st, enum lms_cuda_attn_kind kind,
                                          const struct lms_cuda_launch *l, int64_t batch,
                                          int64_t seq, int64_t n_heads, int64_t n_groups,
                                          int64_t head_dim, const float *q, const float *k,
                                          const float *v, int64_t q_stride, int64_t kv_stride,
                                          float *out, int64_t out_stride, float scale,
                                          int64_t window, float *lse)
{
    if (batch <= 0 || seq <= 0)
        return cudaSuccess;
    dim3 grid(l->grid[0], l->grid[1], l->grid[2]);
    if (kind == LMS_CUDA_ATTN_TC) {
        struct lms_cuda_tc_layout lay;
        lms__cuda_tc_layout((int)head_dim, &lay);
        if (head_dim == 128)
            attn_tc_kernel<128><<<grid, l->block, l->smem, st>>>(
                lay, seq, n_heads, n_groups, q, k, v, q_stride, kv_stride, out, out_stride,
                scale, window, lse);
        else if (head_dim == 64)
            attn_tc_kernel<64><<<grid, l->block, l->smem, st>>>(
                lay, seq, n_heads, n_groups, q, k, v, q_stride, kv_stride, out, out_stride,
                scale, window, lse);
        else
            return cudaErrorInvalidValue;
    } else {
        attn_f32_kernel<<<grid, l->block, l->smem, st>>>(seq, n_heads, n_groups, head_dim, q, k,
                                                         v, q_stride, kv_stride, out, out_stride,
                                                         scale, window, lse);
    }
    return cudaGetLastError();
}
