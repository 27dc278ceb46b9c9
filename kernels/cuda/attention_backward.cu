/* CUDA backward of causal grouped-query attention, flash style: the (S, S) matrices never exist;
 * per tile the scores are recomputed from q, k and the forward's log-sum-exp. Two kinds of
 * kernels, chosen by lms__cuda_attn_bwd_plan (launch.h, which also owns the geometry and the
 * shared-memory layouts; the carving below follows it):
 *
 * With s_ij = scale q_i.k_j, p_ij = exp(s_ij - lse_i), D_i = dout_i . out_i:
 *   dv_j = sum_i p_ij dout_i,  dp_ij = dout_i . v_j,  ds_ij = p_ij (dp_ij - D_i),
 *   dq_i = scale sum_j ds_ij k_j,  dk_j = scale sum_i ds_ij q_i.
 * Each kind is two kernels, so that each output element has exactly one writer (deterministic,
 * no atomics, nothing to zero beforehand):
 *   dk/dv: a block per (key tile, key/value head g, batch row) walks, for each of the
 *     r = n_h / n_g query heads of the group, the query tiles that see its keys (from the
 *     diagonal tile to the end of the window) and accumulates dk and dv;
 *   dq: a block per (query tile, head, batch row) walks the key tiles its rows see and
 *     accumulates dq.
 * D is recomputed per query tile (a warp per row, fp32 from fp32 out and dout): it costs one
 * extra read of out, against a scratch buffer and a pre-kernel.
 *
 *   F32 (attn_bwd_dkv_kernel, attn_bwd_dq_kernel): fp32 on CUDA cores, any d <= 256, tiles of
 *     T = LMS_CUDA_BWD_T; the exact reference on the device (used in the fp32 precision and for
 *     head dims the tensor-core kernels do not cover).
 *
 *   TC (attn_bwd_tc_dkv_kernel<D>, attn_bwd_tc_dq_kernel<D>, D = 64 or 128): bf16 tensor cores
 *     through WMMA (16x16x16, fp32 accumulation), tiles of 64 query rows x 64 keys, 4 warps.
 *     Q, dO, K and V tiles are converted to bf16 into shared memory (rows past S zeroed). Each
 *     warp computes a 16-row strip of S = Q K^T and dP = dO V^T into fp32 scratch, forms
 *     P = exp(scale S - lse) and dS = P (dP - D) there in fp32 (0 where masked) and writes both
 *     as bf16. dk/dv: after a block barrier, warp w owns keys 16w..16w+15 and accumulates
 *     dV += P^T dO and dK += dS^T Q (the transposes are col-major views of the row-major P and
 *     dS tiles) in WMMA accumulator fragments across all query tiles and heads of the group;
 *     dq: warp w owns query rows 16w.. and accumulates dQ += dS K in fragments, needing no
 *     barrier between its strip's products (it skips key tiles its strip cannot see). The
 *     fragments go out through the warp's fp32 staging (the S/dP scratch) times scale.
 *     Shared memory (launch.h, lms__cuda_tc_bwd_layout): 120.5 KiB at d = 128, 88.5 KiB at d = 64,
 *     so one or two blocks per SM; registers: 2 x D/16 accumulator fragments in dk/dv.
 *
 * Path to Hopper speed (not done yet; the correctness reference is this version):
 *   1. Keep S, dP, P and dS in registers: mma.sync m16n8k16 with the documented fragment
 *      layouts (FlashAttention-2's backward), where the accumulator of S = Q K^T is reused as
 *      the A operand of dV += P^T dO without a shared-memory round trip; bf16 Q/K/V/dO from the
 *      producers' epilogues instead of conversions here; cp.async double buffering of the next
 *      Q/dO tile.
 *   2. sm_90a: wgmma (warpgroup MMA, 64 x N x 16) with the tiles brought in by TMA
 *      (cp.async.bulk.tensor on mbarriers, 2 stages), dK/dV accumulators in registers of two
 *      consumer warpgroups, a producer warp (setmaxnreg), and dQ either from its own kernel as
 *      here or accumulated in fp32 with a deterministic reduction (FlashAttention-3).
 *   3. Causal load balance: a persistent grid walking the longest tiles first. */
#include <cuda_bf16.h>
#include <math.h>
#include <mma.h>
#include <stdint.h>

#include "kernels/cuda/lms_cuda.h"

using namespace nvcuda;

#define BT LMS_CUDA_BWD_T
#define LDT (BT + 1)
#define NTH LMS_CUDA_BWD_THREADS

/* Rows [i0, i0 + nq) of head h: lse and D = dout . out into sL, sD (n_rows entries, 0 past nq).
 * A warp per row; NTH threads. */
__device__ __forceinline__ void rows_lse_d(float *sL, float *sD, int n_rows, int64_t S,
                                           int64_t n_heads,
                                           int d, int64_t b, int64_t h, int64_t i0, int nq,
                                           const float *out, int64_t out_stride,
                                           const float *dout, int64_t dout_stride,
                                           const float *lse)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int a = warp; a < n_rows; a += NTH / 32) { /* uniform per warp */
        float t = 0.0f;
        if (a < nq) {
            const float *o = out + (b * S + i0 + a) * out_stride + h * d;
            const float *g = dout + (b * S + i0 + a) * dout_stride + h * d;
            for (int x = lane; x < d; x += 32)
                t += o[x] * g[x];
        }
        for (int off = 16; off > 0; off >>= 1)
            t += __shfl_xor_sync(0xffffffffu, t, off);
        if (lane == 0) {
            sD[a] = t;
            sL[a] = a < nq ? lse[(b * n_heads + h) * S + i0 + a] : 0.0f;
        }
    }
}

/* rows (T, d + 1) of sdst = rows [r0, r0 + n) of src at stride ld, column offset col; zeros past
 * n (so that tile products never read stale values). */
__device__ __forceinline__ void load_tile(float *sdst, const float *src, int64_t ld, int64_t col,
                                          int64_t r0, int n, int d)
{
    for (int idx = threadIdx.x; idx < BT * d; idx += NTH) {
        int a = idx / d, x = idx - a * d;
        sdst[a * (d + 1) + x] = a < n ? src[(r0 + a) * ld + col + x] : 0.0f;
    }
}

/* P and dS (T, LDT) of query rows i0 + a (a < nq) against keys j0 + c (c < nk) from the tiles
 * sQ, sG (dout), sK, sV (T, d + 1); 0 where the pair is invisible or out of range. Thread idx
 * owns entry (idx / T, idx % T): a warp shares its query row (broadcast reads) and spans the
 * keys (the d + 1 padding spreads them over the banks). */
__device__ __forceinline__ void tile_p_ds(float *sP, float *sS, const float *sQ, const float *sG,
                                          const float *sK, const float *sV, const float *sL,
                                          const float *sD, int d, int64_t i0, int nq, int64_t j0,
                                          int nk, float scale, int64_t W)
{
    for (int idx = threadIdx.x; idx < BT * BT; idx += NTH) {
        int a = idx / BT, c = idx - a * BT;
        int64_t i = i0 + a, j = j0 + c;
        float p = 0.0f, ds = 0.0f;
        if (a < nq && c < nk && j <= i && (W == 0 || i - j < W)) {
            const float *qr = sQ + a * (d + 1), *gr = sG + a * (d + 1);
            const float *kr = sK + c * (d + 1), *vr = sV + c * (d + 1);
            float s = 0.0f, dp = 0.0f;
            for (int x = 0; x < d; x++) {
                s += qr[x] * kr[x];
                dp += gr[x] * vr[x];
            }
            p = expf(scale * s - sL[a]);
            ds = p * (dp - sD[a]);
        }
        sP[a * LDT + c] = p;
        sS[a * LDT + c] = ds;
    }
}

__global__ void __launch_bounds__(NTH)
    attn_bwd_dkv_kernel(int64_t S, int64_t n_heads, int64_t n_groups, int d, const float *q,
                        const float *k, const float *v, int64_t q_stride, int64_t kv_stride,
                        const float *out, int64_t out_stride, const float *lse,
                        const float *dout, int64_t dout_stride, float *dk, float *dv,
                        int64_t dkv_stride, float scale, int64_t W)
{
    extern __shared__ __align__(16) float smem[];
    const int ld = d + 1;
    float *sK = smem, *sV = sK + BT * ld, *sQ = sV + BT * ld, *sG = sQ + BT * ld;
    float *sdK = sG + BT * ld, *sdV = sdK + BT * d;
    float *sP = sdV + BT * d, *sS = sP + BT * LDT, *sL = sS + BT * LDT, *sD = sL + BT;
    const int64_t b = blockIdx.z, g = blockIdx.y, j0 = (int64_t)blockIdx.x * BT;
    const int nk = (int)(S - j0 < BT ? S - j0 : BT);
    const int64_t r = n_heads / n_groups;

    load_tile(sK, k, kv_stride, g * d, b * S + j0, nk, d);
    load_tile(sV, v, kv_stride, g * d, b * S + j0, nk, d);
    for (int idx = threadIdx.x; idx < BT * d; idx += NTH)
        sdK[idx] = sdV[idx] = 0.0f;

    for (int64_t hh = 0; hh < r; hh++) {
        const int64_t h = g * r + hh;
        /* query tiles start at the diagonal one (j0 is a multiple of T) and end once even the
         * first row of a tile is past the window of the tile's last key */
        for (int64_t i0 = j0; i0 < S; i0 += BT) {
            if (W > 0 && i0 - (j0 + nk - 1) >= W)
                break; /* uniform */
            const int nq = (int)(S - i0 < BT ? S - i0 : BT);
            __syncthreads(); /* the previous tile's sQ, sG, sP, sS are no longer read */
            load_tile(sQ, q, q_stride, h * d, b * S + i0, nq, d);
            load_tile(sG, dout, dout_stride, h * d, b * S + i0, nq, d);
            rows_lse_d(sL, sD, BT, S, n_heads, d, b, h, i0, nq, out, out_stride, dout, dout_stride,
                       lse);
            __syncthreads();
            tile_p_ds(sP, sS, sQ, sG, sK, sV, sL, sD, d, i0, nq, j0, nk, scale, W);
            __syncthreads();
            /* dv[c, x] += sum_a P[a, c] dout[a, x];  dk[c, x] += sum_a dS[a, c] q[a, x] */
            for (int idx = threadIdx.x; idx < BT * d; idx += NTH) {
                int c = idx / d, x = idx - c * d;
                float av = 0.0f, ak = 0.0f;
                for (int a = 0; a < nq; a++) {
                    av += sP[a * LDT + c] * sG[a * ld + x];
                    ak += sS[a * LDT + c] * sQ[a * ld + x];
                }
                sdV[idx] += av;
                sdK[idx] += ak;
            }
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < nk * d; idx += NTH) {
        int c = idx / d, x = idx - c * d;
        int64_t row = (b * S + j0 + c) * dkv_stride + g * d + x;
        dk[row] = scale * sdK[idx];
        dv[row] = sdV[idx];
    }
}

__global__ void __launch_bounds__(NTH)
    attn_bwd_dq_kernel(int64_t S, int64_t n_heads, int64_t n_groups, int d, const float *q,
                       const float *k, const float *v, int64_t q_stride, int64_t kv_stride,
                       const float *out, int64_t out_stride, const float *lse,
                       const float *dout, int64_t dout_stride, float *dq, int64_t dq_stride,
                       float scale, int64_t W)
{
    extern __shared__ __align__(16) float smem[];
    const int ld = d + 1;
    float *sK = smem, *sV = sK + BT * ld, *sQ = sV + BT * ld, *sG = sQ + BT * ld;
    float *sdQ = sG + BT * ld;
    float *sP = sdQ + BT * d, *sS = sP + BT * LDT, *sL = sS + BT * LDT, *sD = sL + BT;
    const int64_t b = blockIdx.z, h = blockIdx.y;
    const int64_t i0 = ((int64_t)gridDim.x - 1 - blockIdx.x) * BT; /* longest rows first */
    const int nq = (int)(S - i0 < BT ? S - i0 : BT);
    const int64_t g = h / (n_heads / n_groups);

    load_tile(sQ, q, q_stride, h * d, b * S + i0, nq, d);
    load_tile(sG, dout, dout_stride, h * d, b * S + i0, nq, d);
    rows_lse_d(sL, sD, BT, S, n_heads, d, b, h, i0, nq, out, out_stride, dout, dout_stride, lse);
    for (int idx = threadIdx.x; idx < BT * d; idx += NTH)
        sdQ[idx] = 0.0f;

    const int64_t j_begin = (W > 0 && i0 - W + 1 > 0) ? i0 - W + 1 : 0;
    for (int64_t j0 = j_begin; j0 < i0 + nq; j0 += BT) {
        const int nk = (int)(S - j0 < BT ? S - j0 : BT);
        __syncthreads(); /* sK, sV, sS of the previous tile are no longer read; sQ.. are written */
        load_tile(sK, k, kv_stride, g * d, b * S + j0, nk, d);
        load_tile(sV, v, kv_stride, g * d, b * S + j0, nk, d);
        __syncthreads();
        tile_p_ds(sP, sS, sQ, sG, sK, sV, sL, sD, d, i0, nq, j0, nk, scale, W);
        __syncthreads();
        /* dq[a, x] += sum_c dS[a, c] k[c, x] */
        for (int idx = threadIdx.x; idx < BT * d; idx += NTH) {
            int a = idx / d, x = idx - a * d;
            float acc = 0.0f;
            for (int c = 0; c < nk; c++)
                acc += sS[a * LDT + c] * sK[c * ld + x];
            sdQ[idx] += acc;
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < nq * d; idx += NTH) {
        int a = idx / d, x = idx - a * d;
        dq[(b * S + i0 + a) * dq_stride + h * d + x] = scale * sdQ[idx];
    }
}

/* ---- tensor-core kernels (d = 64 or 128) ---- */

#define TT LMS_CUDA_TC_BWD_T
static_assert(TT == 16 * (NTH / 32), "one 16-row strip per warp");

/* rows (TT, ldt) bf16 of sdst = rows [r0, r0 + n) of src (fp32, stride ld, column offset col),
 * zeros past n (0 * garbage could be NaN in the tile products). */
template <int D>
__device__ __forceinline__ void load_tile_bf16(__nv_bfloat16 *sdst, int ldt, const float *src,
                                               int64_t ld, int64_t col, int64_t r0, int n)
{
    for (int idx = threadIdx.x; idx < TT * D; idx += NTH) {
        int a = idx / D, x = idx - a * D;
        float val = a < n ? src[(r0 + a) * ld + col + x] : 0.0f;
        sdst[a * ldt + x] = __float2bfloat16_rn(val);
    }
}

/* The warp's 16-row strip (rows r0w..) of A B^T over D channels, A and B (TT, ldt) bf16 tiles,
 * into dst (fp32, row stride lds): S = Q K^T and dP = dO V^T, one after the other so that only
 * TT / 16 fragments are live next to the accumulators. */
template <int D>
__device__ __forceinline__ void strip_abt(float *dst, int lds, const __nv_bfloat16 *sA,
                                          const __nv_bfloat16 *sB, int ldt, int r0w)
{
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> sf[TT / 16];
#pragma unroll
    for (int nt = 0; nt < TT / 16; nt++)
        wmma::fill_fragment(sf[nt], 0.0f);
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
        wmma::load_matrix_sync(fa, sA + r0w * ldt + kk * 16, ldt);
#pragma unroll
        for (int nt = 0; nt < TT / 16; nt++) {
            /* col-major (k = channel, n = key) view of the row-major K / V tile is its transpose */
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
            wmma::load_matrix_sync(fb, sB + (nt * 16) * ldt + kk * 16, ldt);
            wmma::mma_sync(sf[nt], fa, fb, sf[nt]);
        }
    }
#pragma unroll
    for (int nt = 0; nt < TT / 16; nt++)
        wmma::store_matrix_sync(dst + r0w * lds + nt * 16, sf[nt], lds, wmma::mem_row_major);
}

/* P and dS of the warp's strip (rows r0w.. of the tile, query i0 + a, key j0 + c) from S and dP
 * in fp32, rounded to bf16 into sP (when non-NULL) and sDS; 0 where the pair is invisible or out
 * of range (a >= nq, c >= nk). Called after a __syncwarp that publishes the warp's S and dP. */
__device__ __forceinline__ void strip_p_ds(__nv_bfloat16 *sP, __nv_bfloat16 *sDS, int ldp,
                                           const float *sS, const float *sDP, int lds,
                                           const float *sL, const float *sD, int r0w,
                                           int64_t i0, int nq, int64_t j0, int nk, float scale,
                                           int64_t W)
{
    const int lane = threadIdx.x & 31;
    for (int e = lane; e < 16 * TT; e += 32) {
        int a = r0w + e / TT, c = e % TT;
        int64_t i = i0 + a, j = j0 + c;
        float p = 0.0f, ds = 0.0f;
        if (a < nq && c < nk && j <= i && (W == 0 || i - j < W)) {
            p = expf(scale * sS[a * lds + c] - sL[a]);
            ds = p * (sDP[a * lds + c] - sD[a]);
        }
        if (sP)
            sP[a * ldp + c] = __float2bfloat16_rn(p);
        sDS[a * ldp + c] = __float2bfloat16_rn(ds);
    }
}

/* Writes the warp's D / 16 accumulator fragments (16 rows x D) times mul to rows [r0, r0 + n)
 * (n <= 16) of dst (stride ld, column offset col), staged through the warp's (16, ldo) fp32
 * scratch. */
template <int D>
__device__ __forceinline__ void store_strip(
    float *dst, int64_t ld, int64_t col, int64_t r0, int n, float mul, float *stage, int ldo,
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> (&acc)[D / 16])
{
#pragma unroll
    for (int nt = 0; nt < D / 16; nt++)
        wmma::store_matrix_sync(stage + nt * 16, acc[nt], ldo, wmma::mem_row_major);
    __syncwarp();
    const int lane = threadIdx.x & 31;
    for (int e = lane; e < n * D; e += 32) {
        int a = e / D, x = e - a * D;
        dst[(r0 + a) * ld + col + x] = mul * stage[a * ldo + x];
    }
    __syncwarp(); /* the staging is reused */
}

template <int D>
__global__ void __launch_bounds__(NTH)
    attn_bwd_tc_dkv_kernel(struct lms_cuda_tc_bwd_layout lay, int64_t S, int64_t n_heads,
                           int64_t n_groups, const float *q, const float *k, const float *v,
                           int64_t q_stride, int64_t kv_stride, const float *out,
                           int64_t out_stride, const float *lse, const float *dout,
                           int64_t dout_stride, float *dk, float *dv, int64_t dkv_stride,
                           float scale, int64_t W)
{
    extern __shared__ __align__(128) unsigned char smem_raw[];
    const int ldt = lay.ldt, lds = lay.lds, ldp = lay.ldp;
    __nv_bfloat16 *sQ = (__nv_bfloat16 *)(smem_raw + lay.off_q);
    __nv_bfloat16 *sG = (__nv_bfloat16 *)(smem_raw + lay.off_g);
    __nv_bfloat16 *sK = (__nv_bfloat16 *)(smem_raw + lay.off_k);
    __nv_bfloat16 *sV = (__nv_bfloat16 *)(smem_raw + lay.off_v);
    float *sS = (float *)(smem_raw + lay.off_s), *sDP = (float *)(smem_raw + lay.off_dp);
    __nv_bfloat16 *sP = (__nv_bfloat16 *)(smem_raw + lay.off_p);
    __nv_bfloat16 *sDS = (__nv_bfloat16 *)(smem_raw + lay.off_ds);
    float *sL = (float *)(smem_raw + lay.off_l), *sD = (float *)(smem_raw + lay.off_d);
    const int warp = threadIdx.x >> 5, r0w = 16 * warp; /* the warp's query strip, then keys */
    const int64_t b = blockIdx.z, g = blockIdx.y, j0 = (int64_t)blockIdx.x * TT;
    const int nk = (int)(S - j0 < TT ? S - j0 : TT);
    const int64_t r = n_heads / n_groups;

    load_tile_bf16<D>(sK, ldt, k, kv_stride, g * D, b * S + j0, nk);
    load_tile_bf16<D>(sV, ldt, v, kv_stride, g * D, b * S + j0, nk);
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> dkf[D / 16], dvf[D / 16];
#pragma unroll
    for (int nt = 0; nt < D / 16; nt++) {
        wmma::fill_fragment(dkf[nt], 0.0f);
        wmma::fill_fragment(dvf[nt], 0.0f);
    }

    for (int64_t hh = 0; hh < r; hh++) {
        const int64_t h = g * r + hh;
        /* query tiles from the diagonal one (j0 is a multiple of TT) until even the first row of
         * a tile is past the window of the tile's last key */
        for (int64_t i0 = j0; i0 < S; i0 += TT) {
            if (W > 0 && i0 - (j0 + nk - 1) >= W)
                break; /* uniform */
            const int nq = (int)(S - i0 < TT ? S - i0 : TT);
            __syncthreads(); /* the previous tile's sQ, sG, sP, sDS are no longer read */
            load_tile_bf16<D>(sQ, ldt, q, q_stride, h * D, b * S + i0, nq);
            load_tile_bf16<D>(sG, ldt, dout, dout_stride, h * D, b * S + i0, nq);
            rows_lse_d(sL, sD, TT, S, n_heads, D, b, h, i0, nq, out, out_stride, dout,
                       dout_stride, lse);
            __syncthreads();
            strip_abt<D>(sS, lds, sQ, sK, ldt, r0w);
            strip_abt<D>(sDP, lds, sG, sV, ldt, r0w);
            __syncwarp();
            strip_p_ds(sP, sDS, ldp, sS, sDP, lds, sL, sD, r0w, i0, nq, j0, nk, scale, W);
            __syncthreads(); /* every strip of P and dS is written */
            /* keys r0w.. of this warp: dV += P^T dO, dK += dS^T Q over the TT query rows; the
             * col-major view of the row-major (query, key) tile is its transpose */
#pragma unroll
            for (int kk = 0; kk < TT / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::col_major> pa, sa;
                wmma::load_matrix_sync(pa, sP + (kk * 16) * ldp + r0w, ldp);
                wmma::load_matrix_sync(sa, sDS + (kk * 16) * ldp + r0w, ldp);
#pragma unroll
                for (int nt = 0; nt < D / 16; nt++) {
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> gb,
                        qb;
                    wmma::load_matrix_sync(gb, sG + (kk * 16) * ldt + nt * 16, ldt);
                    wmma::load_matrix_sync(qb, sQ + (kk * 16) * ldt + nt * 16, ldt);
                    wmma::mma_sync(dvf[nt], pa, gb, dvf[nt]);
                    wmma::mma_sync(dkf[nt], sa, qb, dkf[nt]);
                }
            }
        }
    }
    __syncthreads(); /* S and dP (the staging) are no longer read by any warp */
    float *stage = (float *)(smem_raw + lay.off_s) + (size_t)warp * 16 * lay.ldo;
    const int nw = nk - r0w < 0 ? 0 : (nk - r0w < 16 ? nk - r0w : 16);
    store_strip<D>(dv, dkv_stride, g * D, b * S + j0 + r0w, nw, 1.0f, stage, lay.ldo, dvf);
    store_strip<D>(dk, dkv_stride, g * D, b * S + j0 + r0w, nw, scale, stage, lay.ldo, dkf);
}

template <int D>
__global__ void __launch_bounds__(NTH)
    attn_bwd_tc_dq_kernel(struct lms_cuda_tc_bwd_layout lay, int64_t S, int64_t n_heads,
                          int64_t n_groups, const float *q, const float *k, const float *v,
                          int64_t q_stride, int64_t kv_stride, const float *out,
                          int64_t out_stride, const float *lse, const float *dout,
                          int64_t dout_stride, float *dq, int64_t dq_stride, float scale,
                          int64_t W)
{
    extern __shared__ __align__(128) unsigned char smem_raw[];
    const int ldt = lay.ldt, lds = lay.lds, ldp = lay.ldp;
    __nv_bfloat16 *sQ = (__nv_bfloat16 *)(smem_raw + lay.off_q);
    __nv_bfloat16 *sG = (__nv_bfloat16 *)(smem_raw + lay.off_g);
    __nv_bfloat16 *sK = (__nv_bfloat16 *)(smem_raw + lay.off_k);
    __nv_bfloat16 *sV = (__nv_bfloat16 *)(smem_raw + lay.off_v);
    float *sS = (float *)(smem_raw + lay.off_s), *sDP = (float *)(smem_raw + lay.off_dp);
    __nv_bfloat16 *sDS = (__nv_bfloat16 *)(smem_raw + lay.off_ds);
    float *sL = (float *)(smem_raw + lay.off_l), *sD = (float *)(smem_raw + lay.off_d);
    const int warp = threadIdx.x >> 5, r0w = 16 * warp;
    const int64_t b = blockIdx.z, h = blockIdx.y;
    const int64_t i0 = ((int64_t)gridDim.x - 1 - blockIdx.x) * TT; /* longest rows first */
    const int nq = (int)(S - i0 < TT ? S - i0 : TT);
    const int64_t g = h / (n_heads / n_groups);
    const int64_t w_first = i0 + r0w, w_last = w_first + 15; /* the warp's query rows */

    load_tile_bf16<D>(sQ, ldt, q, q_stride, h * D, b * S + i0, nq);
    load_tile_bf16<D>(sG, ldt, dout, dout_stride, h * D, b * S + i0, nq);
    rows_lse_d(sL, sD, TT, S, n_heads, D, b, h, i0, nq, out, out_stride, dout, dout_stride, lse);
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> dqf[D / 16];
#pragma unroll
    for (int nt = 0; nt < D / 16; nt++)
        wmma::fill_fragment(dqf[nt], 0.0f);

    const int64_t j_begin = (W > 0 && i0 - W + 1 > 0) ? i0 - W + 1 : 0;
    for (int64_t j0 = j_begin; j0 < i0 + nq; j0 += TT) {
        const int nk = (int)(S - j0 < TT ? S - j0 : TT);
        __syncthreads(); /* sK, sV of the previous tile are no longer read; sQ.. are written */
        load_tile_bf16<D>(sK, ldt, k, kv_stride, g * D, b * S + j0, nk);
        load_tile_bf16<D>(sV, ldt, v, kv_stride, g * D, b * S + j0, nk);
        __syncthreads();
        /* the strip is before the tile, or the tile before every row's window: nothing visible
         * (uniform per warp; no block barrier until the next tile) */
        if (w_first >= i0 + nq || j0 > w_last || (W > 0 && j0 + TT - 1 < w_first - W + 1))
            continue;
        strip_abt<D>(sS, lds, sQ, sK, ldt, r0w);
        strip_abt<D>(sDP, lds, sG, sV, ldt, r0w);
        __syncwarp();
        strip_p_ds(nullptr, sDS, ldp, sS, sDP, lds, sL, sD, r0w, i0, nq, j0, nk, scale, W);
        __syncwarp();
        /* rows r0w.. of this warp: dQ += dS K */
#pragma unroll
        for (int kk = 0; kk < TT / 16; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> sa;
            wmma::load_matrix_sync(sa, sDS + r0w * ldp + kk * 16, ldp);
#pragma unroll
            for (int nt = 0; nt < D / 16; nt++) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> kb;
                wmma::load_matrix_sync(kb, sK + (kk * 16) * ldt + nt * 16, ldt);
                wmma::mma_sync(dqf[nt], sa, kb, dqf[nt]);
            }
        }
        __syncwarp(); /* sS, sDP, sDS of the strip are rewritten by the next tile */
    }
    __syncthreads(); /* S and dP (the staging) are no longer read by any warp */
    float *stage = (float *)(smem_raw + lay.off_s) + (size_t)warp * 16 * lay.ldo;
    const int nw = nq - r0w < 0 ? 0 : (nq - r0w < 16 ? nq - r0w : 16);
    store_strip<D>(dq, dq_stride, h * D, b * S + i0 + r0w, nw, scale, stage, lay.ldo, dqf);
}

template <typename K> static cudaError_t raise_smem(K kernel, size_t max_smem)
{
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                (int)max_smem);
}

extern "C" cudaError_t lms_cuda_attention_backward_setup(size_t max_smem)
{
    cudaError_t e = raise_smem(attn_bwd_dkv_kernel, max_smem);
    if (e == cudaSuccess)
        e = raise_smem(attn_bwd_dq_kernel, max_smem);
    if (e == cudaSuccess)
        e = raise_smem(attn_bwd_tc_dkv_kernel<64>, max_smem);
    if (e == cudaSuccess)
        e = raise_smem(attn_bwd_tc_dq_kernel<64>, max_smem);
    if (e == cudaSuccess)
        e = raise_smem(attn_bwd_tc_dkv_kernel<128>, max_smem);
    if (e == cudaSuccess)
        e = raise_smem(attn_bwd_tc_dq_kernel<128>, max_smem);
    return e;
}

template <int D>
static void launch_tc(cudaStream_t st, const struct lms_cuda_launch *l_dkv,
                      const struct lms_cuda_launch *l_dq, int64_t seq, int64_t n_heads,
                      int64_t n_groups, const float *q, const float *k, const float *v,
                      int64_t q_stride, int64_t kv_stride, const float *out, int64_t out_stride,
                      const float *lse, const float *dout, int64_t dout_stride, float *dq,
                      int64_t dq_stride, float *dk, float *dv, int64_t dkv_stride, float scale,
                      int64_t window)
{
    struct lms_cuda_tc_bwd_layout lay;
    lms__cuda_tc_bwd_layout(D, &lay);
    dim3 g1(l_dkv->grid[0], l_dkv->grid[1], l_dkv->grid[2]);
    attn_bwd_tc_dkv_kernel<D><<<g1, l_dkv->block, l_dkv->smem, st>>>(
        lay, seq, n_heads, n_groups, q, k, v, q_stride, kv_stride, out, out_stride, lse, dout,
        dout_stride, dk, dv, dkv_stride, scale, window);
    dim3 g2(l_dq->grid[0], l_dq->grid[1], l_dq->grid[2]);
    attn_bwd_tc_dq_kernel<D><<<g2, l_dq->block, l_dq->smem, st>>>(
        lay, seq, n_heads, n_groups, q, k, v, q_stride, kv_stride, out, out_stride, lse, dout,
        dout_stride, dq, dq_stride, scale, window);
}

extern "C" cudaError_t lms_cuda_attention_backward(
    cudaStream_t st, enum lms_cuda_attn_kind kind, const struct lms_cuda_launch *l_dkv,
    const struct lms_cuda_launch *l_dq, int64_t batch, int64_t seq, int64_t n_heads,
    int64_t n_groups, int64_t head_dim, const float *q, const float *k, const float *v,
    int64_t q_stride, int64_t kv_stride, const float *out, int64_t out_stride, const float *lse,
    const float *dout, int64_t dout_stride, float *dq, int64_t dq_stride, float *dk, float *dv,
    int64_t dkv_stride, float scale, int64_t window)
{
    if (batch <= 0 || seq <= 0)
        return cudaSuccess;
    if (kind == LMS_CUDA_ATTN_TC) {
        if (head_dim == 64)
            launch_tc<64>(st, l_dkv, l_dq, seq, n_heads, n_groups, q, k, v, q_stride, kv_stride,
                          out, out_stride, lse, dout, dout_stride, dq, dq_stride, dk, dv,
                          dkv_stride, scale, window);
        else if (head_dim == 128)
            launch_tc<128>(st, l_dkv, l_dq, seq, n_heads, n_groups, q, k, v, q_stride,
                           kv_stride, out, out_stride, lse, dout, dout_stride, dq, dq_stride, dk,
                           dv, dkv_stride, scale, window);
        else
            return cudaErrorInvalidValue;
        return cudaGetLastError();
    }
    dim3 g1(l_dkv->grid[0], l_dkv->grid[1], l_dkv->grid[2]);
    attn_bwd_dkv_kernel<<<g1, l_dkv->block, l_dkv->smem, st>>>(
        seq, n_heads, n_groups, (int)head_dim, q, k, v, q_stride, kv_stride, out, out_stride, lse,
        dout, dout_stride, dk, dv, dkv_stride, scale, window);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return e;
    dim3 g2(l_dq->grid[0], l_dq->grid[1], l_dq->grid[2]);
    attn_bwd_dq_kernel<<<g2, l_dq->block, l_dq->smem, st>>>(
        seq, n_heads, n_groups, (int)head_dim, q, k, v, q_stride, kv_stride, out, out_stride, lse,
        dout, dout_stride, dq, dq_stride, scale, window);
    return cudaGetLastError();
}
