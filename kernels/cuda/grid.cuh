/* Device helpers the CUDA kernel files share: grid-stride loop indices and the deferred
 * argument-error record (kernels/cuda/lms_cuda.h explains the error words). Static, so each .cu
 * file keeps its own inlined copy and no device symbol crosses files. */
#ifndef LMS_KERNELS_CUDA_GRID_CUH
#define LMS_KERNELS_CUDA_GRID_CUH

#include <stdint.h>

/* This thread's index in a 1-D grid, and the grid's size: for grid-stride loops. */
static __device__ __forceinline__ int64_t gtid(void)
{
    return (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
}

static __device__ __forceinline__ int64_t gstride(void)
{
    return (int64_t)gridDim.x * blockDim.x;
}

/* Records an offending element as (index << 32 | value) in error word slot; atomicMin keeps the
 * first index. */
static __device__ __forceinline__ void record_error(unsigned long long *errw, int slot,
                                                    int64_t index, int32_t value)
{
    unsigned long long w = ((unsigned long long)(uint64_t)index << 32) | (uint32_t)value;
    atomicMin(errw + slot, w);
}

#endif
