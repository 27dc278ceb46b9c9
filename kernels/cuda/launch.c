/* CUDA backend launch geometry and GEMM operand mapping: host arithmetic only, built into every
 * configuration (see launch.h) so that the unit tests check it without a GPU. */
#include "kernels/cuda/launch.h"

size_t lms__cuda_tc_attn_smem(int d)
{
    return (size_t)(LMS_CUDA_TC_BQ + 4 * LMS_CUDA_TC_BK) * (size_t)(d + LMS_CUDA_TC_PAD) * 2;
}

int64_t lms__cuda_attn_padded_seq(int64_t seq)
{
    return (seq + LMS_CUDA_TC_BQ - 1) / LMS_CUDA_TC_BQ * LMS_CUDA_TC_BQ;
}

size_t lms__cuda_attn_scratch_bytes(int64_t batch, int64_t seq, int64_t n_heads,
                                    int64_t n_groups, int64_t head_dim)
{
    return (size_t)batch * (size_t)(n_heads + 2 * n_groups) *
           (size_t)lms__cuda_attn_padded_seq(seq) * (size_t)head_dim * 2;
}

size_t lms__cuda_f32_attn_smem(int d)
{
    return ((size_t)LMS_CUDA_F32_BK * (size_t)(d + 1) + (size_t)LMS_CUDA_F32_BK * (size_t)d +
            (size_t)LMS_CUDA_F32_BQ * (size_t)d) *
           sizeof(float);
}

bool lms__cuda_attn_plan(int64_t batch, int64_t seq, int64_t n_heads, int64_t head_dim,
                         bool tensor_cores, size_t max_smem, enum lms_cuda_attn_kind *kind,
                         struct lms_cuda_launch *l, const char **why)
{
    if (batch > 65535 || n_heads > 65535) {
        *why = "batch or head count over the grid limit of 65535";
        return false;
    }
    if (head_dim <= 0 || head_dim > LMS_CUDA_ATTN_F32_MAX_D) {
        *why = "head dim over 256";
        return false;
    }
    int64_t bq;
    if (tensor_cores && (head_dim == 64 || head_dim == 128)) {
        *kind = LMS_CUDA_ATTN_TC;
        l->smem = lms__cuda_tc_attn_smem((int)head_dim);
        bq = LMS_CUDA_TC_BQ;
    } else {
        *kind = LMS_CUDA_ATTN_F32;
        l->smem = lms__cuda_f32_attn_smem((int)head_dim);
        bq = LMS_CUDA_F32_BQ;
    }
    if (l->smem > max_smem) {
        *why = "shared memory over the device limit";
        return false;
    }
    int64_t nqb = (seq + bq - 1) / bq;
    if (nqb > 0x7fffffff) {
        *why = "sequence over the grid limit";
        return false;
    }
    l->grid[0] = (unsigned)(nqb > 0 ? nqb : 1);
    l->grid[1] = (unsigned)n_heads;
    l->grid[2] = (unsigned)batch;
    l->block = 32 * LMS_CUDA_ATTN_WARPS;
    return true;
}

size_t lms__cuda_attn_bwd_smem(int d, bool dkv)
{
    size_t t = LMS_CUDA_BWD_T, dd = (size_t)d;
    return (4 * t * (dd + 1) + (dkv ? 2 : 1) * t * dd + 2 * t * (t + 1) + 2 * t) * sizeof(float);
}

size_t lms__cuda_tc_bwd_smem(int d)
{
    size_t t = LMS_CUDA_TC_BWD_T;
    return 6 * t * (size_t)(d + LMS_CUDA_TC_PAD) * 2 + 4 * t * sizeof(float);
}

size_t lms__cuda_attn_bwd_scratch_bytes(int64_t batch, int64_t seq, int64_t n_heads,
                                        int64_t n_groups, int64_t head_dim)
{
    size_t rows = (size_t)batch * (size_t)n_heads * (size_t)lms__cuda_attn_padded_seq(seq);
    return lms__cuda_attn_scratch_bytes(batch, seq, n_heads, n_groups, head_dim) +
           rows * (size_t)head_dim * 2 + 2 * rows * sizeof(float);
}

bool lms__cuda_attn_bwd_plan(int64_t batch, int64_t seq, int64_t n_heads, int64_t n_groups,
                             int64_t head_dim, bool tensor_cores, size_t max_smem,
                             enum lms_cuda_attn_kind *kind, struct lms_cuda_launch *dkv,
                             struct lms_cuda_launch *dq, const char **why)
{
    if (batch > 65535 || n_heads > 65535 || n_groups > 65535) {
        *why = "batch or head count over the grid limit of 65535";
        return false;
    }
    if (head_dim <= 0 || head_dim > LMS_CUDA_ATTN_F32_MAX_D) {
        *why = "head dim over 256";
        return false;
    }
    int64_t tile;
    if (tensor_cores && (head_dim == 64 || head_dim == 128)) {
        *kind = LMS_CUDA_ATTN_TC;
        dkv->smem = dq->smem = lms__cuda_tc_bwd_smem((int)head_dim);
        tile = LMS_CUDA_TC_BWD_T;
    } else {
        *kind = LMS_CUDA_ATTN_F32;
        dkv->smem = lms__cuda_attn_bwd_smem((int)head_dim, true);
        dq->smem = lms__cuda_attn_bwd_smem((int)head_dim, false);
        tile = LMS_CUDA_BWD_T;
    }
    if (dkv->smem > max_smem || dq->smem > max_smem) {
        *why = "shared memory over the device limit";
        return false;
    }
    int64_t nt = (seq + tile - 1) / tile;
    if (nt > 0x7fffffff) {
        *why = "sequence over the grid limit";
        return false;
    }
    dkv->grid[0] = dq->grid[0] = (unsigned)(nt > 0 ? nt : 1);
    dkv->grid[1] = (unsigned)(n_groups > 0 ? n_groups : 1);
    dq->grid[1] = (unsigned)(n_heads > 0 ? n_heads : 1);
    dkv->grid[2] = dq->grid[2] = (unsigned)(batch > 0 ? batch : 1);
    dkv->block = dq->block = LMS_CUDA_BWD_THREADS;
    return true;
}

unsigned lms__cuda_ew_blocks(int64_t n)
{
    if (n <= 0)
        return 1;
    int64_t b = (n + LMS_CUDA_EW_THREADS - 1) / LMS_CUDA_EW_THREADS;
    return b > (int64_t)LMS_CUDA_EW_MAX_BLOCKS ? LMS_CUDA_EW_MAX_BLOCKS : (unsigned)b;
}

void lms__cuda_gemm_map(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, int64_t lda,
                        int64_t stride_a, int64_t ldb, int64_t stride_b, int64_t ldc,
                        int64_t stride_c, struct lms_cuda_gemm_map *map)
{
    map->m = n;
    map->n = m;
    map->k = k;
    map->a.trans = trans_b;
    map->a.rows = trans_b ? k : n;
    map->a.cols = trans_b ? n : k;
    map->a.ld = ldb;
    map->a.batch_stride = stride_b;
    map->b.trans = trans_a;
    map->b.rows = trans_a ? m : k;
    map->b.cols = trans_a ? k : m;
    map->b.ld = lda;
    map->b.batch_stride = stride_a;
    map->c.trans = false;
    map->c.rows = n;
    map->c.cols = m;
    map->c.ld = ldc;
    map->c.batch_stride = stride_c;
}

unsigned lms__cuda_align_of(const void *p, int64_t ld, size_t esize)
{
    uint64_t v = (uint64_t)(uintptr_t)p | ((uint64_t)ld * esize) | 256u;
    return (unsigned)(v & (~v + 1)); /* lowest set bit */
}
