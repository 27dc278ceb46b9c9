/* Device helpers of the tensor-core attention kernels (attention.cu, attention_backward.cu):
 * cp.async, ldmatrix and mma.sync m16n8k16 (bf16 in, fp32 accumulation) through inline PTX, with
 * the fragment layouts they use spelled out. Included by .cu files only. */
#ifndef LMS_KERNELS_CUDA_MMA_SYNC_CUH
#define LMS_KERNELS_CUDA_MMA_SYNC_CUH

#include <cuda_bf16.h>
#include <stdint.h>

#include "kernels/cuda/launch.h"

/* 32-bit shared-memory address of a generic pointer into shared memory (ldmatrix, cp.async) */
__device__ __forceinline__ uint32_t smem_u32(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* 16 bytes global -> shared, asynchronous (both 16-byte aligned). */
__device__ __forceinline__ void cp_async16(void *dst, const void *src)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::);
}
/* waits until at most N of this thread's committed groups are still in flight */
template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* ldmatrix .x4: four 8x8 b16 matrices; lanes 8i..8i+7 give the addresses of the 8 rows (16
 * bytes each) of matrix i, and register r[i] of lane L receives matrix i's elements
 * (row L/4, columns 2(L%4) and 2(L%4)+1), the lower column in the lower half. */
__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const void *row_addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(row_addr)));
}
/* ldmatrix .x4.trans: the same addressing, but register r[i] of lane L receives the transposed
 * elements: (rows 2(L%4) and 2(L%4)+1, column L/4) of matrix i, the lower row in the lower half. */
__device__ __forceinline__ void ldsm_x4_t(uint32_t r[4], const void *row_addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(row_addr)));
}

/* c (16x8, fp32) += a (16x16, bf16, row) . b (16x8, bf16, col). With g = lane/4, t = lane%4:
 *   a[0] = A(g, 2t..2t+1)    a[1] = A(g+8, 2t..2t+1)
 *   a[2] = A(g, 2t+8..2t+9)  a[3] = A(g+8, 2t+8..2t+9)
 *   b[0] = B(2t..2t+1, g)    b[1] = B(2t+8..2t+9, g)
 *   c[0..1] = C(g, 2t..2t+1) c[2..3] = C(g+8, 2t..2t+1)
 * (pairs packed lower index in the lower 16 bits). */
__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi)
{
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi); /* .x = lo (lower half) */
    return *(uint32_t *)&h;
}

/* Copies a (ROWS, D) bf16 tile of contiguous rows to shared memory rows of
 * stride LD, in 16-byte chunks spread over the block. */
template <int D, int ROWS>
__device__ __forceinline__ void load_tile_async(__nv_bfloat16 *dst, const __nv_bfloat16 *src,
                                                int tid)
{
    constexpr int CPR = D / 8, LD = D + LMS_CUDA_TC_PAD;
    static_assert((ROWS * CPR) % (32 * LMS_CUDA_ATTN_WARPS) == 0, "whole chunks per thread");
#pragma unroll
    for (int it = 0; it < ROWS * CPR / (32 * LMS_CUDA_ATTN_WARPS); it++) {
        int idx = tid + it * 32 * LMS_CUDA_ATTN_WARPS, r = idx / CPR, c = (idx - r * CPR) * 8;
        cp_async16(dst + r * LD + c, src + (int64_t)r * D + c);
    }
}

#endif
