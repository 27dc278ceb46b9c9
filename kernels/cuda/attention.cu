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
 *   attn_mma_kernel<D>: bf16 tensor cores through mma.sync m16n8k16 (fp32 accumulation),
 *     FlashAttention-2 style, D = 64 or 128. attn_pack_kernel first rounds q, k, v to bf16 into
 *     a scratch buffer, per head and contiguous, each sequence padded with zero rows to a whole
 *     tile (so tiles load unchecked with 16-byte cp.async, and padded keys score 0, never NaN).
 *     A block = 4 warps = 64 query rows of one head, 16 per warp; the Q strip is loaded once
 *     into A fragments (ldmatrix); K/V tiles of 64 keys are double-buffered in shared memory
 *     (cp.async, rows padded by 16 bytes so that ldmatrix's 8 row addresses hit distinct banks)
 *     and only the tiles a row can see are visited (causal, window). Per tile the scores
 *     S = Q K^T stay in mma accumulators; the mask applies only on the diagonal and window-edge
 *     tiles; the online softmax runs on the accumulator registers (a quad of lanes shares a
 *     row: max and sum reduce over two shuffles); P is rounded to bf16 straight into A
 *     fragments and O += P V accumulates in registers (V through ldmatrix.trans).
 *
 * Both write, when given a non-NULL lse, each row's log-sum-exp of its scaled scores (natural
 * log, the CPU's units) for the backward (attention_backward.cu): max + log(sum) of the online
 * softmax.
 *
 * Path to Hopper speed (not done yet; the correctness reference is this version):
 *   1. sm_90a: wgmma (warpgroup MMA, 64 x N x 16) with Q/K/V tiles brought in by TMA
 *      (cp.async.bulk.tensor on an mbarrier, 2-3 stages), producer/consumer warpgroups with
 *      setmaxnreg, softmax of one tile overlapped with the GEMMs of the next (FlashAttention-3).
 *   2. bf16 Q/K/V produced by the QKV GEMM epilogue (and RoPE) instead of the pre-pass here,
 *      and K/V shared across the n_h / n_g heads of a group (one block per group and tile).
 *   3. 128-row query tiles (8 warps) to halve the K/V traffic per query row.
 *   4. Causal load balance: a persistent grid walking query tiles longest first. */
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/lms_cuda.h"
#include "kernels/cuda/mma_sync.cuh"

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

/* ---- tensor-core kernel (FlashAttention-2 style, mma.sync) ---- */

/* Pre-pass: q, k and v (fp32 rows of the fused buffer) rounded to bf16 into the scratch, laid
 * out per head and contiguous: Q (B, n_h, Sp, D), then K and V (B, n_g, Sp, D) each, Sp = S
 * rounded up to the tile, rows t >= S zero (the kernel then loads whole tiles unchecked and the
 * padded keys score 0, never NaN). One thread per 8 channels: one 16-byte store. */
__global__ void attn_pack_kernel(int64_t B, int64_t S, int64_t Sp, int64_t n_heads,
                                 int64_t n_groups, int64_t d, const float *q, const float *k,
                                 const float *v, int64_t q_stride, int64_t kv_stride,
                                 __nv_bfloat16 *dst)
{
    const int64_t c8n = d / 8, nhh = n_heads + 2 * n_groups;
    const int64_t total = B * nhh * Sp * c8n;
    for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (int64_t)gridDim.x * blockDim.x) {
        int64_t c8 = idx % c8n, rest = idx / c8n;
        int64_t t = rest % Sp;
        rest /= Sp;
        int64_t hh = rest % nhh, b = rest / nhh;
        const float *src;
        int64_t stride, out_row; /* out_row: the destination row index in units of d */
        if (hh < n_heads) {
            src = q + hh * d;
            stride = q_stride;
            out_row = (b * n_heads + hh) * Sp + t;
        } else if (hh < n_heads + n_groups) {
            src = k + (hh - n_heads) * d;
            stride = kv_stride;
            out_row = B * n_heads * Sp + (b * n_groups + hh - n_heads) * Sp + t;
        } else {
            src = v + (hh - n_heads - n_groups) * d;
            stride = kv_stride;
            out_row = B * (n_heads + n_groups) * Sp + (b * n_groups + hh - n_heads - n_groups) *
                                                          Sp + t;
        }
        uint4 pk = make_uint4(0u, 0u, 0u, 0u);
        if (t < S) {
            const float *s = src + (b * S + t) * stride + c8 * 8;
            __nv_bfloat162 h0 = __floats2bfloat162_rn(s[0], s[1]);
            __nv_bfloat162 h1 = __floats2bfloat162_rn(s[2], s[3]);
            __nv_bfloat162 h2 = __floats2bfloat162_rn(s[4], s[5]);
            __nv_bfloat162 h3 = __floats2bfloat162_rn(s[6], s[7]);
            pk.x = *(uint32_t *)&h0;
            pk.y = *(uint32_t *)&h1;
            pk.z = *(uint32_t *)&h2;
            pk.w = *(uint32_t *)&h3;
        }
        *(uint4 *)(dst + out_row * d + c8 * 8) = pk;
    }
}

/* A block = NW warps = BQ query rows of one head (16 per warp); K/V tiles of BK keys,
 * double-buffered in shared memory (cp.async), from the bf16 scratch of attn_pack_kernel.
 * Per warp and key tile: S (16 x BK) = Q K^T in mma accumulators, the online softmax on those
 * registers (each lane owns rows g and g+8 of its warp's strip; the 4 lanes of a quad share a
 * row, so row max and sum reduce over lane bits 0 and 1), P rounded to bf16 straight into A
 * fragments (the C fragments of n-tiles 2j and 2j+1 are the A fragment of key slice j), and
 * O (16 x D) += P V in accumulators. m is kept in log2 units: scores times scale * log2 e. */
template <int D>
__global__ void __launch_bounds__(32 * NW)
    attn_mma_kernel(int64_t S, int64_t Sp, int64_t n_heads, int64_t n_groups,
                    const __nv_bfloat16 *__restrict__ qb16, const __nv_bfloat16 *__restrict__ kb16,
                    const __nv_bfloat16 *__restrict__ vb16, float *out, int64_t out_stride,
                    float scale, int64_t W, float *lse)
{
    extern __shared__ __align__(128) unsigned char smem_raw[];
    constexpr int BQ = LMS_CUDA_TC_BQ, BK = LMS_CUDA_TC_BK, LD = D + LMS_CUDA_TC_PAD;
    constexpr int NT = BK / 8;  /* n8 tiles of S */
    constexpr int DT = D / 8;   /* n8 tiles of O */
    static_assert(BQ == 16 * NW && BQ == BK, "one 16-row strip per warp; square tiles");
    static_assert(D % 16 == 0 && BK % 16 == 0, "mma tiles");
    __nv_bfloat16 *sQ = (__nv_bfloat16 *)smem_raw;    /* (BQ, LD) */
    __nv_bfloat16 *sK = sQ + BQ * LD;                  /* 2 x (BK, LD) */
    __nv_bfloat16 *sV = sK + 2 * BK * LD;              /* 2 x (BK, LD) */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;
    const int64_t b = blockIdx.z, h = blockIdx.y;
    const int64_t qt = (int64_t)gridDim.x - 1 - blockIdx.x; /* longest rows first */
    const int64_t q0 = qt * BQ;
    const int64_t grp = h / (n_heads / n_groups);
    const float sc = scale * 1.4426950408889634f; /* exp(x) = exp2(x log2 e) */
    const __nv_bfloat16 *gQ = qb16 + ((b * n_heads + h) * Sp + q0) * D;
    const __nv_bfloat16 *gK = kb16 + (b * n_groups + grp) * Sp * D;
    const __nv_bfloat16 *gV = vb16 + (b * n_groups + grp) * Sp * D;

    /* key tiles: from the one holding the first row's first visible key to the diagonal */
    int64_t kt0 = 0;
    if (W > 0 && q0 - W + 1 > 0)
        kt0 = (q0 - W + 1) / BK;
    const int64_t kt1 = qt; /* inclusive (BQ == BK) */

    load_tile_async<D, BQ>(sQ, gQ, tid);
    load_tile_async<D, BK>(sK, gK + kt0 * BK * D, tid);
    load_tile_async<D, BK>(sV, gV + kt0 * BK * D, tid);
    cp_async_commit();

    /* rows of this lane: r0 = strip row g, r1 = g + 8 */
    const int64_t i0 = q0 + warp * 16 + g, i1 = i0 + 8;
    uint32_t qa[D / 16][4];
    float o[DT][4];
#pragma unroll
    for (int n = 0; n < DT; n++)
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f; /* l: this lane's part */

    for (int64_t kt = kt0; kt <= kt1; kt++) {
        const int buf = (int)((kt - kt0) & 1);
        if (kt < kt1) { /* prefetch the next tile into the other buffer */
            const int nb = buf ^ 1;
            load_tile_async<D, BK>(sK + nb * BK * LD, gK + (kt + 1) * BK * D, tid);
            load_tile_async<D, BK>(sV + nb * BK * LD, gV + (kt + 1) * BK * D, tid);
            cp_async_commit();
            cp_async_wait<1>(); /* this tile's group (and Q) has landed */
        } else {
            cp_async_wait<0>();
        }
        __syncthreads(); /* every thread's chunks of this tile are visible */
        if (kt == kt0) {
            /* Q strip into A fragments: matrices (rows 0-7 | 8-15) x (cols k..k+7 | k+8..k+15) */
            const int qr = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, qc = (lane >> 4) * 8;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++)
                ldsm_x4(qa[kk], sQ + qr * LD + kk * 16 + qc);
        }
        const __nv_bfloat16 *cK = sK + buf * BK * LD, *cV = sV + buf * BK * LD;
        const int64_t j0 = kt * BK;

        /* S = Q K^T: B(k = channel, n = key) = K[key][channel], so the row-major K tile read by
         * plain ldmatrix gives B fragments; the x4 covers key tiles 2np (matrices 0, 1) and
         * 2np + 1 (matrices 2, 3), channels k..k+7 and k+8..k+15 */
        float s[NT][4];
#pragma unroll
        for (int n = 0; n < NT; n++)
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
        {
            const int kr = (lane & 7) + (lane >> 4) * 8, kc = ((lane >> 3) & 1) * 8;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
                for (int np = 0; np < NT / 2; np++) {
                    uint32_t kb[4];
                    ldsm_x4(kb, cK + (np * 16 + kr) * LD + kk * 16 + kc);
                    mma_bf16(s[2 * np], qa[kk], kb[0], kb[1]);
                    mma_bf16(s[2 * np + 1], qa[kk], kb[2], kb[3]);
                }
            }
        }

        /* scale; mask where the tile is not wholly visible to every row of the block (the
         * diagonal tile, keys past S only occur there, and the window's edge) */
        const bool full = j0 + BK - 1 <= q0 && (W == 0 || (q0 + BQ - 1) - j0 < W);
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int n = 0; n < NT; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float x = s[n][e] * sc;
                if (!full) {
                    int64_t i = e < 2 ? i0 : i1, j = j0 + n * 8 + 2 * t4 + (e & 1);
                    if (j > i || (W > 0 && i - j >= W))
                        x = -INFINITY;
                }
                s[n][e] = x;
            }
            mx0 = fmaxf(mx0, fmaxf(s[n][0], s[n][1]));
            mx1 = fmaxf(mx1, fmaxf(s[n][2], s[n][3]));
        }
        /* the 4 lanes of a quad (lane bits 0, 1) hold the rest of the row */
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        /* a row with nothing visible yet keeps max -inf: subtract 0 so exp2 gives 0, not NaN */
        const float mu0 = mn0 == -INFINITY ? 0.0f : mn0, mu1 = mn1 == -INFINITY ? 0.0f : mn1;
        const float al0 = exp2f(m0 - mu0), al1 = exp2f(m1 - mu1); /* 0 when m was -inf */
        m0 = mn0;
        m1 = mn1;
        float rs0 = 0.0f, rs1 = 0.0f;
#pragma unroll
        for (int n = 0; n < NT; n++) {
            s[n][0] = exp2f(s[n][0] - mu0);
            s[n][1] = exp2f(s[n][1] - mu0);
            s[n][2] = exp2f(s[n][2] - mu1);
            s[n][3] = exp2f(s[n][3] - mu1);
            rs0 += s[n][0] + s[n][1];
            rs1 += s[n][2] + s[n][3];
        }
        l0 = l0 * al0 + rs0;
        l1 = l1 * al1 + rs1;
#pragma unroll
        for (int n = 0; n < DT; n++) {
            o[n][0] *= al0;
            o[n][1] *= al0;
            o[n][2] *= al1;
            o[n][3] *= al1;
        }

        /* O += P V: key slice j's A fragment is made of S n-tiles 2j (a[0], a[1]) and 2j + 1
         * (a[2], a[3]); B(k = key, n = channel) = V[key][channel] needs the transposed load:
         * matrices 0, 1 = keys j*16 + 0-7, 8-15 of channel tile 2dp, matrices 2, 3 the same
         * keys of channel tile 2dp + 1 */
        {
            const int vr = (lane & 7) + ((lane >> 3) & 1) * 8, vc = (lane >> 4) * 8;
#pragma unroll
            for (int j = 0; j < BK / 16; j++) {
                uint32_t pa[4];
                pa[0] = pack_bf16x2(s[2 * j][0], s[2 * j][1]);
                pa[1] = pack_bf16x2(s[2 * j][2], s[2 * j][3]);
                pa[2] = pack_bf16x2(s[2 * j + 1][0], s[2 * j + 1][1]);
                pa[3] = pack_bf16x2(s[2 * j + 1][2], s[2 * j + 1][3]);
#pragma unroll
                for (int dp = 0; dp < D / 16; dp++) {
                    uint32_t vb[4];
                    ldsm_x4_t(vb, cV + (j * 16 + vr) * LD + dp * 16 + vc);
                    mma_bf16(o[2 * dp], pa, vb[0], vb[1]);
                    mma_bf16(o[2 * dp + 1], pa, vb[2], vb[3]);
                }
            }
        }
        __syncthreads(); /* everyone is done with this buffer before it is refilled */
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    /* every row below S sees its own key, so l > 0 there; padded rows are not written */
    const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    if (i0 < S) {
        float *orow = out + (b * S + i0) * out_stride + h * D + 2 * t4;
#pragma unroll
        for (int n = 0; n < DT; n++) {
            orow[n * 8] = o[n][0] * inv0;
            orow[n * 8 + 1] = o[n][1] * inv0;
        }
        if (lse && t4 == 0) /* m in log2 units: back to natural log */
            lse[(b * n_heads + h) * S + i0] = m0 * 0.6931471805599453f + logf(l0);
    }
    if (i1 < S) {
        float *orow = out + (b * S + i1) * out_stride + h * D + 2 * t4;
#pragma unroll
        for (int n = 0; n < DT; n++) {
            orow[n * 8] = o[n][2] * inv1;
            orow[n * 8 + 1] = o[n][3] * inv1;
        }
        if (lse && t4 == 0)
            lse[(b * n_heads + h) * S + i1] = m1 * 0.6931471805599453f + logf(l1);
    }
}

extern "C" void lms_cuda_attention_pack(cudaStream_t st, int64_t batch, int64_t seq,
                                        int64_t n_heads, int64_t n_groups, int64_t head_dim,
                                        const float *q, const float *k, const float *v,
                                        int64_t q_stride, int64_t kv_stride, void *scratch)
{
    const int64_t sp = lms__cuda_attn_padded_seq(seq);
    attn_pack_kernel<<<lms__cuda_ew_blocks(batch * (n_heads + 2 * n_groups) * sp *
                                            (head_dim / 8)),
                       LMS_CUDA_EW_THREADS, 0, st>>>(batch, seq, sp, n_heads, n_groups, head_dim,
                                                     q, k, v, q_stride, kv_stride,
                                                     (__nv_bfloat16 *)scratch);
}

extern "C" cudaError_t lms_cuda_attention_setup(size_t max_smem)
{
    cudaError_t e = cudaFuncSetAttribute(attn_f32_kernel,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)max_smem);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(attn_mma_kernel<64>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)max_smem);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(attn_mma_kernel<128>,
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
                                          int64_t window, float *lse, void *scratch)
{
    if (batch <= 0 || seq <= 0)
        return cudaSuccess;
    dim3 grid(l->grid[0], l->grid[1], l->grid[2]);
    if (kind == LMS_CUDA_ATTN_TC) {
        if (head_dim != 64 && head_dim != 128)
            return cudaErrorInvalidValue;
        const int64_t sp = lms__cuda_attn_padded_seq(seq);
        __nv_bfloat16 *qb = (__nv_bfloat16 *)scratch;
        __nv_bfloat16 *kb = qb + batch * n_heads * sp * head_dim;
        __nv_bfloat16 *vb = kb + batch * n_groups * sp * head_dim;
        lms_cuda_attention_pack(st, batch, seq, n_heads, n_groups, head_dim, q, k, v, q_stride,
                                kv_stride, scratch);
        if (head_dim == 128)
            attn_mma_kernel<128><<<grid, l->block, l->smem, st>>>(
                seq, sp, n_heads, n_groups, qb, kb, vb, out, out_stride, scale, window, lse);
        else
            attn_mma_kernel<64><<<grid, l->block, l->smem, st>>>(
                seq, sp, n_heads, n_groups, qb, kb, vb, out, out_stride, scale, window, lse);
    } else {
        attn_f32_kernel<<<grid, l->block, l->smem, st>>>(seq, n_heads, n_groups, head_dim, q, k,
                                                         v, q_stride, kv_stride, out, out_stride,
                                                         scale, window, lse);
    }
    return cudaGetLastError();
}
