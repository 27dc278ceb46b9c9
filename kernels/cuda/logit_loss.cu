/* Fused logit losses (struct lms_logit_loss in kernels/backend_impl.h): KD (forward KL, reverse
 * KL, top-K forward KL), cross-entropy and their gradient, one block per row, without storing
 * any probability tensor. The CPU reference (kernels/cpu/train_ops.c) defines the results; this
 * file follows its formulas with fp32 exponentials, double arguments and double accumulators.
 *
 * Per row (s student, t teacher, T temperature, s' = s/T, t' = t/T):
 *   top-K only: a radix select on the teacher's float bit pattern (4 passes of 8 bits over t)
 *     finds the K-th largest value; entries above it are in the set, and of the entries equal to
 *     it the lowest indices are taken (the CPU's order: larger value first, then lower index).
 *   pass 1 reads s and t once, each thread keeping online accumulators (running max m, rescaled
 *     sum z of exp(x - m), rescaled weighted sum a) that are merged across the block:
 *       T: over t' with a = sum exp(t' - m_t) (t' - s')
 *       S: over s' with a = sum exp(s' - m_s) (s' - t')
 *       C: over s at T = 1 (cross-entropy), shared with S when T = 1.
 *     With lse_t = m_t + log z_t, lse_s = m_s + log z_s, p = exp(t' - lse_t), q = exp(s' - lse_s)
 *     and sum p = sum q = 1:
 *       KL(p || q) = sum p (t' - lse_t - s' + lse_s) = a_T / z_T - lse_t + lse_s
 *       KL(q || p) = sum q (s' - lse_s - t' + lse_t) = a_S / z_S - lse_s + lse_t
 *     (for top-K the sums run over the set only, which renormalises both sides over it).
 *   pass 2 (grad != NULL) writes each element once, reading s first, so grad may equal s.
 * Target ids >= vocab are recorded in errw[LMS_CUDA_ERRW_CE] and the row's CE is skipped. */
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/grid.cuh"
#include "kernels/cuda/lms_cuda.h"

#define LL_THREADS 512
#define LL_WARPS (LL_THREADS / 32)

enum { KD_FORWARD = 0, KD_REVERSE = 1, KD_TOP_K = 2 }; /* enum lms_kd_kind */

/* Online (max, sum of exp(x - max), sum of exp(x - max) * d) accumulator. */
struct acc {
    double m, z, a;
};

__device__ __forceinline__ void acc_init(struct acc &c)
{
    c.m = -INFINITY;
    c.z = 0.0;
    c.a = 0.0;
}

/* adds exp(x) with weight d = x - y to c */
__device__ __forceinline__ void acc_add(struct acc &c, double x, double y)
{
    if (x == -INFINITY)
        return;
    if (x > c.m) {
        double f = c.m == -INFINITY ? 0.0 : exp(c.m - x);
        c.z = c.z * f + 1.0;
        c.a = c.a * f + (x - y);
        c.m = x;
    } else {
        double w = (double)expf((float)(x - c.m));
        c.z += w;
        c.a += w * (x - y);
    }
}

__device__ __forceinline__ struct acc acc_merge(struct acc a, struct acc b)
{
    double m = fmax(a.m, b.m);
    if (m == -INFINITY)
        return a;
    double fa = a.m == -INFINITY ? 0.0 : exp(a.m - m), fb = b.m == -INFINITY ? 0.0 : exp(b.m - m);
    struct acc r;
    r.m = m;
    r.z = a.z * fa + b.z * fb;
    r.a = a.a * fa + b.a * fb;
    return r;
}

__device__ __forceinline__ struct acc acc_shfl(struct acc c, int o)
{
    struct acc r;
    r.m = __shfl_xor_sync(0xffffffffu, c.m, o);
    r.z = __shfl_xor_sync(0xffffffffu, c.z, o);
    r.a = __shfl_xor_sync(0xffffffffu, c.a, o);
    return r;
}

/* Merges c over the block; the result is valid in thread 0. part: LL_WARPS slots. */
__device__ struct acc acc_block(struct acc c, struct acc *part)
{
    for (int o = 16; o > 0; o >>= 1)
        c = acc_merge(c, acc_shfl(c, o));
    int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    if (lane == 0)
        part[warp] = c;
    __syncthreads();
    struct acc all = part[0];
    if (threadIdx.x == 0)
        for (int w = 1; w < LL_WARPS; w++)
            all = acc_merge(all, part[w]);
    __syncthreads(); /* part is reused by the next reduction */
    return all;
}

/* Order-preserving unsigned key of a float (larger float, larger key); -0 counts as +0 so that
 * the two compare equal as they do in C. */
__device__ __forceinline__ uint32_t fkey(float x)
{
    uint32_t u = x == 0.0f ? 0u : __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* Calls f(j, s[j], t[j]) for this thread's share of the row (t may be NULL: 0 passed); float4
 * loads when vec (row pointers 16-byte aligned). */
template <typename F>
__device__ __forceinline__ void row_each(const float *s, const float *t, int64_t v, bool vec, F f)
{
    int64_t head = 0;
    if (vec) {
        int64_t n4 = v / 4;
        const float4 *s4 = (const float4 *)s, *t4 = (const float4 *)t;
        for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
            float4 a = s4[i], b = t ? t4[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            f(4 * i, a.x, b.x);
            f(4 * i + 1, a.y, b.y);
            f(4 * i + 2, a.z, b.z);
            f(4 * i + 3, a.w, b.w);
        }
        head = n4 * 4;
    }
    for (int64_t j = head + threadIdx.x; j < v; j += blockDim.x)
        f(j, s[j], t ? t[j] : 0.0f);
}

/* Same for one row x only. */
template <typename F>
__device__ __forceinline__ void row_each1(const float *x, int64_t v, bool vec, F f)
{
    int64_t head = 0;
    if (vec) {
        int64_t n4 = v / 4;
        const float4 *x4 = (const float4 *)x;
        for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
            float4 a = x4[i];
            f(4 * i, a.x);
            f(4 * i + 1, a.y);
            f(4 * i + 2, a.z);
            f(4 * i + 3, a.w);
        }
        head = n4 * 4;
    }
    for (int64_t j = head + threadIdx.x; j < v; j += blockDim.x)
        f(j, x[j]);
}

struct row_state {
    double lse_t, lse_s, lse_1, kl; /* kl: unscaled KD divergence of the row */
    uint32_t kth;                   /* top-K: key of the K-th largest teacher value */
    int64_t cut;                    /* top-K: entries equal to kth are in the set up to index cut */
};

/* Top-K set of teacher row t (k <= v): st->kth and st->cut. All threads. */
__device__ void select_top_k(const float *t, int64_t v, int64_t k, bool vec,
                             struct row_state *st, unsigned *hist, unsigned *wcount)
{
    uint32_t prefix = 0, mask = 0;
    unsigned long long need = (unsigned long long)k; /* rank still to find below prefix */
    __shared__ unsigned long long s_need, s_eq;
    __shared__ uint32_t s_prefix;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x)
            hist[i] = 0;
        __syncthreads();
        row_each1(t, v, vec, [&](int64_t, float x) {
            uint32_t key = fkey(x);
            if ((key & mask) == prefix)
                atomicAdd(hist + ((key >> shift) & 255u), 1u);
        });
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned long long above = 0;
            int b = 255;
            for (; b > 0; b--) {
                if (above + hist[b] >= need)
                    break;
                above += hist[b];
            }
            s_prefix = prefix | ((uint32_t)b << shift);
            s_need = need - above;
            s_eq = hist[b];
        }
        __syncthreads();
        prefix = s_prefix;
        need = s_need;
        mask |= 255u << shift;
        __syncthreads(); /* s_* and hist are rewritten by the next pass */
    }
    /* prefix is the K-th largest key; need of the s_eq entries equal to it are in the set */
    unsigned long long n_eq = s_eq;
    if (threadIdx.x == 0) {
        st->kth = prefix;
        st->cut = v;
    }
    if (need >= n_eq) {
        __syncthreads();
        return;
    }
    /* ties straddle the boundary: find the index of the need-th equal entry in index order */
    __shared__ int64_t s_cut;
    int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    unsigned long long seen = 0;
    if (threadIdx.x == 0)
        s_cut = v - 1; /* not reached: the need-th equal entry exists */
    for (int64_t base = 0; base < v; base += blockDim.x) {
        int64_t j = base + threadIdx.x;
        bool eq = j < v && fkey(t[j]) == prefix;
        unsigned bal = __ballot_sync(0xffffffffu, eq);
        if (lane == 0)
            wcount[warp] = __popc(bal);
        __syncthreads();
        unsigned long long before = 0, total = 0;
        for (int w = 0; w < LL_WARPS; w++) {
            if (w < warp)
                before += wcount[w];
            total += wcount[w];
        }
        before += __popc(bal & ((1u << lane) - 1u));
        if (eq && seen + before + 1 == need)
            s_cut = j;
        seen += total;
        __syncthreads(); /* wcount is rewritten next chunk; s_cut visible */
        if (seen >= need)
            break; /* uniform: every thread has the same seen */
    }
    if (threadIdx.x == 0)
        st->cut = s_cut;
    __syncthreads();
}

__global__ void __launch_bounds__(LL_THREADS)
    logit_loss_kernel(struct lms_cuda_logit_loss_args a, unsigned long long *errw)
{
    __shared__ struct acc part[LL_WARPS];
    __shared__ unsigned hist[256], wcount[LL_WARPS];
    __shared__ struct row_state st;
    const int64_t V = a.vocab;
    const double inv_t = a.inv_t;
    const bool topk_kind = a.kd_kind == KD_TOP_K, reverse = a.kd_kind == KD_REVERSE;
    const float kg = a.kd_grad_scale * a.kd_mul, cg = a.ce_grad_scale;
    for (int64_t r = blockIdx.x; r < a.n_rows; r += gridDim.x) {
        const float *s = a.student + r * a.ld;
        const float *t = a.teacher ? a.teacher + r * a.ld : NULL;
        float *g = a.grad ? a.grad + r * a.ld : NULL;
        const bool kd = t && (!a.kd_valid || a.kd_valid[r]);
        const int32_t tgt = a.target ? a.target[r] : -1;
        const bool ce = tgt >= 0 && tgt < V;
        if (tgt >= V && threadIdx.x == 0)
            record_error(errw, LMS_CUDA_ERRW_CE, r, tgt);
        const bool topk = kd && topk_kind;
        if (topk)
            select_top_k(t, V, a.top_k < V ? a.top_k : V, a.vec, &st, hist, wcount);
        const uint32_t kth = topk ? st.kth : 0;
        const int64_t cut = topk ? st.cut : 0;
        auto member = [&](int64_t j, float tv) {
            uint32_t key = fkey(tv);
            return key > kth || (key == kth && j <= cut);
        };
        const bool c_own = ce && !(kd && !topk && inv_t == 1.0); /* else C = S */

        /* pass 1 */
        struct acc A_t, A_s, A_1;
        acc_init(A_t);
        acc_init(A_s);
        acc_init(A_1);
        if (kd || ce)
            row_each(s, kd ? t : NULL, V, a.vec, [&](int64_t j, float sv, float tv) {
                if (kd && (!topk || member(j, tv))) {
                    double sp = (double)sv * inv_t, tp = (double)tv * inv_t;
                    acc_add(A_t, tp, sp);
                    acc_add(A_s, sp, tp);
                }
                if (c_own)
                    acc_add(A_1, (double)sv, 0.0);
            });
        A_t = acc_block(A_t, part);
        A_s = acc_block(A_s, part);
        A_1 = acc_block(A_1, part);
        if (threadIdx.x == 0) {
            double kl = 0, lse_t = 0, lse_s = 0, lse_1 = 0;
            if (kd) {
                lse_t = A_t.m + log(A_t.z);
                lse_s = A_s.m + log(A_s.z);
                kl = reverse && !topk ? A_s.a / A_s.z - lse_s + lse_t
                                      : A_t.a / A_t.z - lse_t + lse_s;
            }
            if (ce)
                lse_1 = c_own ? A_1.m + log(A_1.z) : lse_s;
            st.lse_t = lse_t;
            st.lse_s = lse_s;
            st.lse_1 = lse_1;
            st.kl = kl;
            if (a.kd_loss)
                a.kd_loss[r] = (float)((double)a.kd_mul * kl);
            if (a.ce_loss)
                a.ce_loss[r] = ce ? (float)(lse_1 - (double)s[tgt]) : 0.0f; /* s before g */
        }
        __syncthreads();

        /* pass 2: the gradient */
        if (g) {
            const double lse_t = st.lse_t, lse_s = st.lse_s, lse_1 = st.lse_1, kl = st.kl;
            auto grad_at = [&](int64_t j, float sv, float tv) -> float {
                double gj = 0;
                double q = 0;
                double sp = (double)sv * inv_t, tp = (double)tv * inv_t;
                if (kd && !topk) {
                    double lp = tp - lse_t, lq = sp - lse_s;
                    q = (double)expf((float)lq);
                    if (reverse)
                        gj = (double)kg * q * (lq - lp - kl) * inv_t;
                    else
                        gj = (double)kg * (q - (double)expf((float)lp)) * inv_t;
                }
                if (ce) {
                    double pc = c_own ? (double)expf((float)((double)sv - lse_1)) : q;
                    gj += (double)cg * (pc - (j == tgt ? 1.0 : 0.0));
                }
                float out = (float)gj;
                if (topk && member(j, tv)) {
                    double lp = tp - lse_t, lq = sp - lse_s;
                    out += (float)((double)kg * ((double)expf((float)lq) -
                                                 (double)expf((float)lp)) * inv_t);
                }
                return out;
            };
            int64_t head = 0;
            if (a.vec) {
                int64_t n4 = V / 4;
                const float4 *s4 = (const float4 *)s, *t4 = (const float4 *)t;
                float4 *g4 = (float4 *)g;
                for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
                    float4 x = s4[i], y = kd ? t4[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                    float4 o;
                    o.x = grad_at(4 * i, x.x, y.x);
                    o.y = grad_at(4 * i + 1, x.y, y.y);
                    o.z = grad_at(4 * i + 2, x.z, y.z);
                    o.w = grad_at(4 * i + 3, x.w, y.w);
                    g4[i] = o;
                }
                head = n4 * 4;
            }
            for (int64_t j = head + threadIdx.x; j < V; j += blockDim.x)
                g[j] = grad_at(j, s[j], kd ? t[j] : 0.0f);
        }
        __syncthreads(); /* st and the row are done before the next row */
    }
}

extern "C" cudaError_t lms_cuda_logit_loss(cudaStream_t st,
                                           const struct lms_cuda_logit_loss_args *a,
                                           unsigned long long *errw)
{
    if (a->n_rows <= 0)
        return cudaSuccess;
    unsigned blocks = a->n_rows > 65535 ? 65535u : (unsigned)a->n_rows;
    logit_loss_kernel<<<blocks, LL_THREADS, 0, st>>>(*a, errw);
    return cudaGetLastError();
}
