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
 * F32 recomputes D per query tile (a warp per row, fp32 from fp32 out and dout): one extra read
 * of out, against a scratch buffer and a pre-kernel; TC computes it once in its pre-pass.
 *
 *   F32 (attn_bwd_dkv_kernel, attn_bwd_dq_kernel): fp32 on CUDA cores, any d <= 256, tiles of
 *     T = LMS_CUDA_BWD_T; the exact reference on the device (used in the fp32 precision and for
 *     head dims the tensor-core kernels do not cover).
 *
 *   TC (attn_bwd_mma_dkv_kernel<D>, attn_bwd_mma_dq_kernel<D>, D = 64 or 128, outside the
 *     exact precision): bf16 tensor cores through mma.sync m16n8k16 (fp32 accumulation),
 *     FlashAttention-2 style, with the forward's device helpers (mma_sync.cuh). Pre-pass: the
 *     forward's pack rounds q, k, v to bf16 into the scratch (per head, contiguous, rows padded
 *     with zeros to Sp = S rounded up to 64), and attn_bwd_prep_kernel adds dout in bf16 the same
 *     way plus, per (b, h, row), lse in log2 units (+inf on padded rows: their P is 0) and
 *     D = dout . out in fp32 from the fp32 inputs. Tiles of 64 query rows x 64 keys, 4 warps of
 *     16 rows; tiles come in by 16-byte cp.async into bf16 rows padded by 16 bytes (ldmatrix
 *     without bank conflicts).
 *     dk/dv: a block per (key tile, kv head, batch row), warp w owning keys 16w..16w+15; K and V
 *     stay in shared memory, and the (Q, dO, lse, D) tiles of every (query head of the group,
 *     query tile from the diagonal to the window's end) pair are double-buffered. Per pair:
 *     S^T = K Q^T and dP^T = V dO^T in accumulators (the keys are the A rows, the row-major Q
 *     and dO tiles read by plain ldmatrix are B fragments), P^T = exp2(S^T scale log2 e - lse)
 *     and dS^T = P^T (dP^T - D) on the registers (masked only on diagonal, window-edge and
 *     last tiles), then both rounded to bf16 straight into A fragments (the accumulators of
 *     n-tiles 2j and 2j + 1 are the A fragment of query slice j) for dV += P^T dO and
 *     dK += dS^T Q (dO, Q through ldmatrix.trans). dK, dV (16 x D per warp) stay in registers
 *     across all pairs; dK is scaled once at the end.
 *     dq: a block per (query tile, head, batch row), warp w owning rows 16w..; Q and dO tiles
 *     loaded once, the visible K, V tiles double-buffered; S = Q K^T, dP = dO V^T, P and dS in
 *     registers as above, dQ += dS K (K through ldmatrix.trans) in registers, scaled at the end.
 *     Shared memory (launch.h, lms__cuda_tc_bwd_smem): six bf16 tiles (64, D + 8) and 1 KiB of
 *     lse / D: 103 KiB at D = 128, 55 KiB at D = 64. Registers (sm_90, no spills): dk/dv 255 at
 *     D = 128 (dK, dV, S, dP: 192 accumulators), dq 226.
 *
 * Path to Hopper speed (not done yet; the correctness reference is this version):
 *   1. sm_90a: wgmma (warpgroup MMA, 64 x N x 16) with the tiles brought in by TMA
 *      (cp.async.bulk.tensor on mbarriers, 2 stages), dK/dV accumulators in registers of two
 *      consumer warpgroups, a producer warp (setmaxnreg), and dQ either from its own kernel as
 *      here or accumulated in fp32 with a deterministic reduction (FlashAttention-3).
 *   2. bf16 Q/K/V/dO from the producers' epilogues instead of the pre-pass here; 128-key tiles
 *      (8 warps) to halve the Q/dO traffic per key.
 *   3. Causal load balance: a persistent grid walking the longest tiles first. */
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/lms_cuda.h"
#include "kernels/cuda/mma_sync.cuh"

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

/* ---- tensor-core kernels (d = 64 or 128; FlashAttention-2 style, mma.sync) ---- */

#define TT LMS_CUDA_TC_BWD_T
static_assert(TT == LMS_CUDA_TC_BQ && TT == 16 * LMS_CUDA_ATTN_WARPS,
              "the forward's padded scratch rows; one 16-row strip per warp");
#define LOG2E 1.4426950408889634f

/* Pre-pass after the forward's pack of q, k, v: dout rounded to bf16 into (B, n_h, Sp, d) like
 * q, and per (b, h, row) lse in log2 units (+inf on padded rows, so their P is 0) and
 * D = dout . out in fp32 from the fp32 inputs (0 on padded rows). A warp per row. */
__global__ void attn_bwd_prep_kernel(int64_t B, int64_t S, int64_t Sp, int64_t n_heads, int64_t d,
                                     const float *out, int64_t out_stride, const float *dout,
                                     int64_t dout_stride, const float *lse,
                                     __nv_bfloat16 *gb16, float *lse2, float *dd)
{
    const int lane = threadIdx.x & 31;
    const int64_t rows = B * n_heads * Sp;
    const int64_t nwarps = (int64_t)gridDim.x * blockDim.x / 32;
    for (int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; row < rows;
         row += nwarps) { /* uniform per warp */
        const int64_t t = row % Sp, bh = row / Sp, b = bh / n_heads, h = bh % n_heads;
        float sum = 0.0f;
        for (int64_t c = lane; c < d; c += 32) {
            float gv = 0.0f;
            if (t < S) {
                gv = dout[(b * S + t) * dout_stride + h * d + c];
                sum += gv * out[(b * S + t) * out_stride + h * d + c];
            }
            gb16[row * d + c] = __float2bfloat16_rn(gv);
        }
        for (int o = 16; o > 0; o >>= 1)
            sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (lane == 0) {
            lse2[row] = t < S ? lse[(b * n_heads + h) * S + t] * LOG2E : INFINITY;
            dd[row] = sum;
        }
    }
}

/* dk, dv: a block per (key tile of TT keys, kv head grp, batch row b), warp w owning keys
 * j0 + 16w .. j0 + 16w + 15 (its A rows); K and V tiles stay in shared memory, the (Q, dO, lse,
 * D) tiles of the (query head, query tile) pairs that see the keys are double-buffered
 * (cp.async). Per pair, in mma accumulators: S^T (16 x TT) = K Q^T and dP^T = V dO^T (Q, dO
 * rows read by plain ldmatrix are the B fragments), P^T = exp2(S^T scale log2 e - lse2) and
 * dS^T = P^T (dP^T - D), masked on the diagonal, window-edge and last tiles; then P^T and dS^T
 * are rounded to bf16 straight into A fragments (n-tiles 2j, 2j + 1 = query slice j) for
 * dV += P^T dO and dK += dS^T Q (dO, Q through ldmatrix.trans). */
template <int D>
__global__ void __launch_bounds__(32 * LMS_CUDA_ATTN_WARPS)
    attn_bwd_mma_dkv_kernel(int64_t S, int64_t Sp, int64_t n_heads, int64_t n_groups,
                            const __nv_bfloat16 *__restrict__ qb16,
                            const __nv_bfloat16 *__restrict__ kb16,
                            const __nv_bfloat16 *__restrict__ vb16,
                            const __nv_bfloat16 *__restrict__ gb16,
                            const float *__restrict__ lse2, const float *__restrict__ dd,
                            float *dk, float *dv, int64_t dkv_stride, float scale, int64_t W)
{
    extern __shared__ __align__(128) unsigned char smem_raw[];
    constexpr int LD = D + LMS_CUDA_TC_PAD, NT = TT / 8, DT = D / 8;
    __nv_bfloat16 *sK = (__nv_bfloat16 *)smem_raw; /* (TT, LD) */
    __nv_bfloat16 *sV = sK + TT * LD;              /* (TT, LD) */
    __nv_bfloat16 *sQ = sV + TT * LD;              /* 2 x (TT, LD) */
    __nv_bfloat16 *sG = sQ + 2 * TT * LD;          /* 2 x (TT, LD) */
    float *sL = (float *)(sG + 2 * TT * LD);       /* 2 x TT */
    float *sD = sL + 2 * TT;                       /* 2 x TT */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;
    const int64_t b = blockIdx.z, grp = blockIdx.y, kt = blockIdx.x; /* longest first */
    const int64_t j0 = kt * TT, r = n_heads / n_groups, nqt = Sp / TT;
    const float sc = scale * LOG2E;
    /* query tiles from the diagonal one until the first row of a tile is past the window of
     * the tile's last key (i - (j0 + TT - 1) < W) */
    int64_t qt_end = nqt - 1;
    if (W > 0 && (j0 + TT - 2 + W) / TT < qt_end)
        qt_end = (j0 + TT - 2 + W) / TT;
    const int64_t nq = qt_end - kt + 1, n_iter = r * nq;

    const int64_t kvrow = (b * n_groups + grp) * Sp + j0;
    load_tile_async<D, TT>(sK, kb16 + kvrow * D, tid);
    load_tile_async<D, TT>(sV, vb16 + kvrow * D, tid);
    /* iteration it: query head grp * r + it / nq, query tile kt + it % nq */
    auto issue = [&](int64_t it, int buf) {
        const int64_t h = grp * r + it / nq, qt = kt + it % nq;
        const int64_t row = (b * n_heads + h) * Sp + qt * TT;
        load_tile_async<D, TT>(sQ + buf * TT * LD, qb16 + row * D, tid);
        load_tile_async<D, TT>(sG + buf * TT * LD, gb16 + row * D, tid);
        if (tid < TT / 4)
            cp_async16(sL + buf * TT + tid * 4, lse2 + row + tid * 4);
        else if (tid < TT / 2)
            cp_async16(sD + buf * TT + (tid - TT / 4) * 4, dd + row + (tid - TT / 4) * 4);
    };
    issue(0, 0);
    cp_async_commit();

    float dka[DT][4], dva[DT][4];
#pragma unroll
    for (int n = 0; n < DT; n++) {
        dka[n][0] = dka[n][1] = dka[n][2] = dka[n][3] = 0.0f;
        dva[n][0] = dva[n][1] = dva[n][2] = dva[n][3] = 0.0f;
    }
    const int64_t jr0 = j0 + warp * 16 + g, jr1 = jr0 + 8; /* this lane's keys */
    /* A fragments of the warp's 16 rows (K, V); B fragments of a 16-row pair of n-tiles (Q,
     * dO plain); B fragments over 16 query rows (Q, dO transposed) */
    const int ar = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, ac = (lane >> 4) * 8;
    const int br = (lane & 7) + (lane >> 4) * 8, bc = ((lane >> 3) & 1) * 8;
    const int tr = (lane & 7) + ((lane >> 3) & 1) * 8, tc = (lane >> 4) * 8;

    for (int64_t it = 0; it < n_iter; it++) {
        const int buf = (int)(it & 1);
        if (it + 1 < n_iter) {
            issue(it + 1, buf ^ 1);
            cp_async_commit();
            cp_async_wait<1>(); /* this iteration's group (and K, V) has landed */
        } else {
            cp_async_wait<0>();
        }
        __syncthreads(); /* every thread's chunks are visible */
        const __nv_bfloat16 *cQ = sQ + buf * TT * LD, *cG = sG + buf * TT * LD;
        const float *cL = sL + buf * TT, *cD = sD + buf * TT;
        const int64_t i0 = (kt + it % nq) * TT;

        float s[NT][4], dp[NT][4];
#pragma unroll
        for (int n = 0; n < NT; n++) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
            dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.0f;
        }
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t ka[4], va[4];
            ldsm_x4(ka, sK + ar * LD + kk * 16 + ac);
            ldsm_x4(va, sV + ar * LD + kk * 16 + ac);
#pragma unroll
            for (int np = 0; np < NT / 2; np++) {
                uint32_t qf[4], gf[4];
                ldsm_x4(qf, cQ + (np * 16 + br) * LD + kk * 16 + bc);
                mma_bf16(s[2 * np], ka, qf[0], qf[1]);
                mma_bf16(s[2 * np + 1], ka, qf[2], qf[3]);
                ldsm_x4(gf, cG + (np * 16 + br) * LD + kk * 16 + bc);
                mma_bf16(dp[2 * np], va, gf[0], gf[1]);
                mma_bf16(dp[2 * np + 1], va, gf[2], gf[3]);
            }
        }
        /* every (key, query) pair of the block is visible, and no query row is padding */
        const bool full = i0 >= j0 + TT - 1 && (W == 0 || i0 + TT - 1 - j0 < W) && i0 + TT <= S;
#pragma unroll
        for (int n = 0; n < NT; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int col = n * 8 + 2 * t4 + (e & 1);
                float x = s[n][e] * sc - cL[col];
                if (!full) {
                    const int64_t i = i0 + col, j = e < 2 ? jr0 : jr1;
                    if (j > i || i >= S || (W > 0 && i - j >= W))
                        x = -INFINITY;
                }
                const float p = exp2f(x);
                s[n][e] = p;
                dp[n][e] = p * (dp[n][e] - cD[col]);
            }
        }
#pragma unroll
        for (int j = 0; j < TT / 16; j++) {
            uint32_t pa[4], da[4];
            pa[0] = pack_bf16x2(s[2 * j][0], s[2 * j][1]);
            pa[1] = pack_bf16x2(s[2 * j][2], s[2 * j][3]);
            pa[2] = pack_bf16x2(s[2 * j + 1][0], s[2 * j + 1][1]);
            pa[3] = pack_bf16x2(s[2 * j + 1][2], s[2 * j + 1][3]);
            da[0] = pack_bf16x2(dp[2 * j][0], dp[2 * j][1]);
            da[1] = pack_bf16x2(dp[2 * j][2], dp[2 * j][3]);
            da[2] = pack_bf16x2(dp[2 * j + 1][0], dp[2 * j + 1][1]);
            da[3] = pack_bf16x2(dp[2 * j + 1][2], dp[2 * j + 1][3]);
#pragma unroll
            for (int c2 = 0; c2 < D / 16; c2++) {
                uint32_t gf[4], qf[4];
                ldsm_x4_t(gf, cG + (j * 16 + tr) * LD + c2 * 16 + tc);
                mma_bf16(dva[2 * c2], pa, gf[0], gf[1]);
                mma_bf16(dva[2 * c2 + 1], pa, gf[2], gf[3]);
                ldsm_x4_t(qf, cQ + (j * 16 + tr) * LD + c2 * 16 + tc);
                mma_bf16(dka[2 * c2], da, qf[0], qf[1]);
                mma_bf16(dka[2 * c2 + 1], da, qf[2], qf[3]);
            }
        }
        __syncthreads(); /* everyone is done with this buffer before it is refilled */
    }

    if (jr0 < S) {
        float *vr = dv + (b * S + jr0) * dkv_stride + grp * D + 2 * t4;
        float *kr = dk + (b * S + jr0) * dkv_stride + grp * D + 2 * t4;
#pragma unroll
        for (int n = 0; n < DT; n++) {
            vr[n * 8] = dva[n][0];
            vr[n * 8 + 1] = dva[n][1];
            kr[n * 8] = dka[n][0] * scale;
            kr[n * 8 + 1] = dka[n][1] * scale;
        }
    }
    if (jr1 < S) {
        float *vr = dv + (b * S + jr1) * dkv_stride + grp * D + 2 * t4;
        float *kr = dk + (b * S + jr1) * dkv_stride + grp * D + 2 * t4;
#pragma unroll
        for (int n = 0; n < DT; n++) {
            vr[n * 8] = dva[n][2];
            vr[n * 8 + 1] = dva[n][3];
            kr[n * 8] = dka[n][2] * scale;
            kr[n * 8 + 1] = dka[n][3] * scale;
        }
    }
}

/* dq: a block per (query tile, head h, batch row b), warp w owning rows i0 + 16w ..; Q and dO
 * tiles loaded once, K and V tiles of the visible key tiles double-buffered (cp.async). Per key
 * tile: S = Q K^T and dP = dO V^T in accumulators, P = exp2(S scale log2 e - lse2) and
 * dS = P (dP - D) masked on the diagonal and window-edge tiles, dS rounded to bf16 into A
 * fragments for dQ += dS K (K through ldmatrix.trans). */
template <int D>
__global__ void __launch_bounds__(32 * LMS_CUDA_ATTN_WARPS)
    attn_bwd_mma_dq_kernel(int64_t S, int64_t Sp, int64_t n_heads, int64_t n_groups,
                           const __nv_bfloat16 *__restrict__ qb16,
                           const __nv_bfloat16 *__restrict__ kb16,
                           const __nv_bfloat16 *__restrict__ vb16,
                           const __nv_bfloat16 *__restrict__ gb16,
                           const float *__restrict__ lse2, const float *__restrict__ dd,
                           float *dq, int64_t dq_stride, float scale, int64_t W)
{
    extern __shared__ __align__(128) unsigned char smem_raw[];
    constexpr int LD = D + LMS_CUDA_TC_PAD, NT = TT / 8, DT = D / 8;
    __nv_bfloat16 *sQ = (__nv_bfloat16 *)smem_raw; /* (TT, LD) */
    __nv_bfloat16 *sG = sQ + TT * LD;              /* (TT, LD) */
    __nv_bfloat16 *sK = sG + TT * LD;              /* 2 x (TT, LD) */
    __nv_bfloat16 *sV = sK + 2 * TT * LD;          /* 2 x (TT, LD) */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;
    const int64_t b = blockIdx.z, h = blockIdx.y;
    const int64_t qt = (int64_t)gridDim.x - 1 - blockIdx.x; /* longest rows first */
    const int64_t i0 = qt * TT, grp = h / (n_heads / n_groups);
    const float sc = scale * LOG2E;
    const int64_t qrow = (b * n_heads + h) * Sp + i0;
    const __nv_bfloat16 *gK = kb16 + (b * n_groups + grp) * Sp * D;
    const __nv_bfloat16 *gV = vb16 + (b * n_groups + grp) * Sp * D;
    int64_t kt0 = 0;
    if (W > 0 && i0 - W + 1 > 0)
        kt0 = (i0 - W + 1) / TT;
    const int64_t kt1 = qt; /* inclusive */

    load_tile_async<D, TT>(sQ, qb16 + qrow * D, tid);
    load_tile_async<D, TT>(sG, gb16 + qrow * D, tid);
    load_tile_async<D, TT>(sK, gK + kt0 * TT * D, tid);
    load_tile_async<D, TT>(sV, gV + kt0 * TT * D, tid);
    cp_async_commit();

    const int64_t ir0 = i0 + warp * 16 + g, ir1 = ir0 + 8; /* this lane's rows (< Sp) */
    const float l0 = lse2[qrow + warp * 16 + g], l1 = lse2[qrow + warp * 16 + g + 8];
    const float d0 = dd[qrow + warp * 16 + g], d1 = dd[qrow + warp * 16 + g + 8];
    const int ar = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, ac = (lane >> 4) * 8;
    const int br = (lane & 7) + (lane >> 4) * 8, bc = ((lane >> 3) & 1) * 8;
    const int tr = (lane & 7) + ((lane >> 3) & 1) * 8, tc = (lane >> 4) * 8;
    float dqa[DT][4];
#pragma unroll
    for (int n = 0; n < DT; n++)
        dqa[n][0] = dqa[n][1] = dqa[n][2] = dqa[n][3] = 0.0f;

    for (int64_t kt = kt0; kt <= kt1; kt++) {
        const int buf = (int)((kt - kt0) & 1);
        if (kt < kt1) {
            const int nb = buf ^ 1;
            load_tile_async<D, TT>(sK + nb * TT * LD, gK + (kt + 1) * TT * D, tid);
            load_tile_async<D, TT>(sV + nb * TT * LD, gV + (kt + 1) * TT * D, tid);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const __nv_bfloat16 *cK = sK + buf * TT * LD, *cV = sV + buf * TT * LD;
        const int64_t j0 = kt * TT;

        float s[NT][4], dp[NT][4];
#pragma unroll
        for (int n = 0; n < NT; n++) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
            dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.0f;
        }
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t qa[4], ga[4];
            ldsm_x4(qa, sQ + ar * LD + kk * 16 + ac);
            ldsm_x4(ga, sG + ar * LD + kk * 16 + ac);
#pragma unroll
            for (int np = 0; np < NT / 2; np++) {
                uint32_t kf[4], vf[4];
                ldsm_x4(kf, cK + (np * 16 + br) * LD + kk * 16 + bc);
                mma_bf16(s[2 * np], qa, kf[0], kf[1]);
                mma_bf16(s[2 * np + 1], qa, kf[2], kf[3]);
                ldsm_x4(vf, cV + (np * 16 + br) * LD + kk * 16 + bc);
                mma_bf16(dp[2 * np], ga, vf[0], vf[1]);
                mma_bf16(dp[2 * np + 1], ga, vf[2], vf[3]);
            }
        }
        const bool full = j0 + TT - 1 <= i0 && (W == 0 || i0 + TT - 1 - j0 < W);
#pragma unroll
        for (int n = 0; n < NT; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const bool lo = e < 2;
                float x = s[n][e] * sc - (lo ? l0 : l1);
                if (!full) {
                    const int64_t i = lo ? ir0 : ir1, j = j0 + n * 8 + 2 * t4 + (e & 1);
                    if (j > i || (W > 0 && i - j >= W))
                        x = -INFINITY;
                }
                const float p = exp2f(x);
                dp[n][e] = p * (dp[n][e] - (lo ? d0 : d1));
            }
        }
#pragma unroll
        for (int j = 0; j < TT / 16; j++) {
            uint32_t da[4];
            da[0] = pack_bf16x2(dp[2 * j][0], dp[2 * j][1]);
            da[1] = pack_bf16x2(dp[2 * j][2], dp[2 * j][3]);
            da[2] = pack_bf16x2(dp[2 * j + 1][0], dp[2 * j + 1][1]);
            da[3] = pack_bf16x2(dp[2 * j + 1][2], dp[2 * j + 1][3]);
#pragma unroll
            for (int c2 = 0; c2 < D / 16; c2++) {
                uint32_t kf[4];
                ldsm_x4_t(kf, cK + (j * 16 + tr) * LD + c2 * 16 + tc);
                mma_bf16(dqa[2 * c2], da, kf[0], kf[1]);
                mma_bf16(dqa[2 * c2 + 1], da, kf[2], kf[3]);
            }
        }
        __syncthreads(); /* everyone is done with this buffer before it is refilled */
    }

    if (ir0 < S) {
        float *o = dq + (b * S + ir0) * dq_stride + h * D + 2 * t4;
#pragma unroll
        for (int n = 0; n < DT; n++) {
            o[n * 8] = dqa[n][0] * scale;
            o[n * 8 + 1] = dqa[n][1] * scale;
        }
    }
    if (ir1 < S) {
        float *o = dq + (b * S + ir1) * dq_stride + h * D + 2 * t4;
#pragma unroll
        for (int n = 0; n < DT; n++) {
            o[n * 8] = dqa[n][2] * scale;
            o[n * 8 + 1] = dqa[n][3] * scale;
        }
    }
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
        e = raise_smem(attn_bwd_mma_dkv_kernel<64>, max_smem);
    if (e == cudaSuccess)
        e = raise_smem(attn_bwd_mma_dq_kernel<64>, max_smem);
    if (e == cudaSuccess)
        e = raise_smem(attn_bwd_mma_dkv_kernel<128>, max_smem);
    if (e == cudaSuccess)
        e = raise_smem(attn_bwd_mma_dq_kernel<128>, max_smem);
    return e;
}

template <int D>
static void launch_mma(cudaStream_t st, const struct lms_cuda_launch *l_dkv,
                       const struct lms_cuda_launch *l_dq, int64_t batch, int64_t seq,
                       int64_t n_heads, int64_t n_groups, const float *q, const float *k,
                       const float *v, int64_t q_stride, int64_t kv_stride, const float *out,
                       int64_t out_stride, const float *lse, const float *dout,
                       int64_t dout_stride, float *dq, int64_t dq_stride, float *dk, float *dv,
                       int64_t dkv_stride, float scale, int64_t window, void *scratch)
{
    const int64_t sp = lms__cuda_attn_padded_seq(seq), rows = batch * n_heads * sp;
    __nv_bfloat16 *qb = (__nv_bfloat16 *)scratch;
    __nv_bfloat16 *kb = qb + rows * D;
    __nv_bfloat16 *vb = kb + batch * n_groups * sp * D;
    __nv_bfloat16 *gb = vb + batch * n_groups * sp * D;
    float *lse2 = (float *)(gb + rows * D);
    float *dd = lse2 + rows;
    lms_cuda_attention_pack(st, batch, seq, n_heads, n_groups, D, q, k, v, q_stride, kv_stride,
                            scratch);
    attn_bwd_prep_kernel<<<lms__cuda_ew_blocks(rows * 32), LMS_CUDA_EW_THREADS, 0, st>>>(
        batch, seq, sp, n_heads, D, out, out_stride, dout, dout_stride, lse, gb, lse2, dd);
    dim3 g1(l_dkv->grid[0], l_dkv->grid[1], l_dkv->grid[2]);
    attn_bwd_mma_dkv_kernel<D><<<g1, l_dkv->block, l_dkv->smem, st>>>(
        seq, sp, n_heads, n_groups, qb, kb, vb, gb, lse2, dd, dk, dv, dkv_stride, scale, window);
    dim3 g2(l_dq->grid[0], l_dq->grid[1], l_dq->grid[2]);
    attn_bwd_mma_dq_kernel<D><<<g2, l_dq->block, l_dq->smem, st>>>(
        seq, sp, n_heads, n_groups, qb, kb, vb, gb, lse2, dd, dq, dq_stride, scale, window);
}

extern "C" cudaError_t lms_cuda_attention_backward(
    cudaStream_t st, enum lms_cuda_attn_kind kind, const struct lms_cuda_launch *l_dkv,
    const struct lms_cuda_launch *l_dq, int64_t batch, int64_t seq, int64_t n_heads,
    int64_t n_groups, int64_t head_dim, const float *q, const float *k, const float *v,
    int64_t q_stride, int64_t kv_stride, const float *out, int64_t out_stride, const float *lse,
    const float *dout, int64_t dout_stride, float *dq, int64_t dq_stride, float *dk, float *dv,
    int64_t dkv_stride, float scale, int64_t window, void *scratch)
{
    if (batch <= 0 || seq <= 0)
        return cudaSuccess;
    if (kind == LMS_CUDA_ATTN_TC) {
        if (head_dim == 64)
            launch_mma<64>(st, l_dkv, l_dq, batch, seq, n_heads, n_groups, q, k, v, q_stride,
                           kv_stride, out, out_stride, lse, dout, dout_stride, dq, dq_stride, dk,
                           dv, dkv_stride, scale, window, scratch);
        else if (head_dim == 128)
            launch_mma<128>(st, l_dkv, l_dq, batch, seq, n_heads, n_groups, q, k, v, q_stride,
                            kv_stride, out, out_stride, lse, dout, dout_stride, dq, dq_stride, dk,
                            dv, dkv_stride, scale, window, scratch);
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
