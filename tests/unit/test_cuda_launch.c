/* Host-side arithmetic of the CUDA backend (kernels/cuda/launch.c), checked without a GPU: the
 * attention kernels' shared-memory sizes (cp.async / ldmatrix rows of the forward and the
 * backward: 16-byte multiples, conflict-free pitch; within the H100/H200 opt-in limit of
 * 227 KiB), kernel choice and grids, the bf16 scratch of the forward and backward, element-wise
 * grid sizes, the alignment told to cuBLASLt, and the mapping of a row-major struct lms_matmul
 * onto cuBLASLt's column-major operands, executed here by a textbook column-major GEMM with
 * cuBLAS semantics and compared with the row-major product computed directly, for every
 * transpose combination with padded leading dimensions and batches. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check_main.h"
#include "kernels/cuda/launch.h"

#define H200_OPTIN_SMEM 232448 /* cudaDeviceProp.sharedMemPerBlockOptin on H100/H200 */

START_TEST(tc_layout_rules)
{
    /* Q tile + two K and two V tiles of bf16 rows padded by 8 elements: the row pitch stays a
     * multiple of 16 bytes (cp.async and ldmatrix rows) and is an odd multiple of 16 bytes, so
     * ldmatrix's 8 row addresses (consecutive rows, same column) fall in 8 distinct 16-byte bank
     * groups */
    static const int dims[] = {64, 128};
    for (int t = 0; t < 2; t++) {
        int d = dims[t];
        size_t pitch = (size_t)(d + LMS_CUDA_TC_PAD) * 2;
        ck_assert_uint_eq(pitch % 16, 0);
        ck_assert_uint_eq((pitch / 16) % 2, 1);
        ck_assert_uint_eq(lms__cuda_tc_attn_smem(d),
                          (size_t)(LMS_CUDA_TC_BQ + 4 * LMS_CUDA_TC_BK) * pitch);
        ck_assert_uint_le(lms__cuda_tc_attn_smem(d), H200_OPTIN_SMEM);
    }
    ck_assert_uint_eq(lms__cuda_tc_attn_smem(128), 320 * 136 * 2);
    ck_assert_uint_eq(lms__cuda_tc_attn_smem(64), 320 * 72 * 2);
    /* the scratch: sequences padded to whole tiles, Q then K and V per head */
    ck_assert_int_eq(lms__cuda_attn_padded_seq(1), 64);
    ck_assert_int_eq(lms__cuda_attn_padded_seq(64), 64);
    ck_assert_int_eq(lms__cuda_attn_padded_seq(65), 128);
    ck_assert_uint_eq(lms__cuda_attn_scratch_bytes(2, 4096, 32, 8, 128),
                      (size_t)2 * 48 * 4096 * 128 * 2);
    ck_assert_uint_eq(lms__cuda_attn_scratch_bytes(1, 130, 4, 4, 64), (size_t)12 * 192 * 64 * 2);
    ck_assert_uint_le(lms__cuda_f32_attn_smem(LMS_CUDA_ATTN_F32_MAX_D), H200_OPTIN_SMEM);
    ck_assert_uint_eq(lms__cuda_f32_attn_smem(32), (32 * 33 + 32 * 32 + 16 * 32) * 4);
}
END_TEST

START_TEST(attention_plans)
{
    enum lms_cuda_attn_kind k;
    struct lms_cuda_launch l;
    const char *why = NULL;
    ck_assert(lms__cuda_attn_plan(8, 4096, 32, 128, true, H200_OPTIN_SMEM, &k, &l, &why));
    ck_assert_int_eq(k, LMS_CUDA_ATTN_TC);
    ck_assert_uint_eq(l.grid[0], 4096 / LMS_CUDA_TC_BQ);
    ck_assert_uint_eq(l.grid[1], 32);
    ck_assert_uint_eq(l.grid[2], 8);
    ck_assert_uint_eq(l.block, 32 * LMS_CUDA_ATTN_WARPS);
    ck_assert(lms__cuda_attn_plan(1, 65, 4, 64, true, H200_OPTIN_SMEM, &k, &l, &why));
    ck_assert_int_eq(k, LMS_CUDA_ATTN_TC);
    ck_assert_uint_eq(l.grid[0], 2);
    /* fp32 requested, or a head dim the tensor-core kernel lacks */
    ck_assert(lms__cuda_attn_plan(1, 65, 4, 128, false, H200_OPTIN_SMEM, &k, &l, &why));
    ck_assert_int_eq(k, LMS_CUDA_ATTN_F32);
    ck_assert_uint_eq(l.grid[0], 5);
    ck_assert(lms__cuda_attn_plan(2, 1, 4, 80, true, H200_OPTIN_SMEM, &k, &l, &why));
    ck_assert_int_eq(k, LMS_CUDA_ATTN_F32);
    ck_assert_uint_eq(l.grid[0], 1);
    ck_assert_uint_eq(l.smem, lms__cuda_f32_attn_smem(80));
    ck_assert(lms__cuda_attn_plan(1, 1, 1, 256, true, H200_OPTIN_SMEM, &k, &l, &why));
    /* refusals */
    ck_assert(!lms__cuda_attn_plan(1, 8, 4, 257, false, H200_OPTIN_SMEM, &k, &l, &why));
    ck_assert_ptr_nonnull(strstr(why, "head dim"));
    ck_assert(!lms__cuda_attn_plan(70000, 8, 4, 64, false, H200_OPTIN_SMEM, &k, &l, &why));
    ck_assert(!lms__cuda_attn_plan(1, 8, 4, 128, true, 48 * 1024, &k, &l, &why));
    ck_assert_ptr_nonnull(strstr(why, "shared memory"));
    /* d = 64 fits the default 48 KiB; d = 128 needs the opt-in */
    ck_assert(lms__cuda_attn_plan(1, 8, 4, 64, true, 48 * 1024, &k, &l, &why));
    ck_assert_int_eq(k, LMS_CUDA_ATTN_TC);
    ck_assert_uint_eq(l.smem, lms__cuda_tc_attn_smem(64));
}
END_TEST

START_TEST(attention_backward_plans)
{
    struct lms_cuda_launch dkv, dq;
    enum lms_cuda_attn_kind k;
    const char *why = NULL;
    /* the carving of attention_backward.cu: Q, dO, K, V (T, d + 1), accumulators (T, d),
     * P and dS (T, T + 1), lse and D (T) */
    ck_assert_uint_eq(lms__cuda_attn_bwd_smem(8, true),
                      (4 * 32 * 9 + 2 * 32 * 8 + 2 * 32 * 33 + 2 * 32) * 4);
    ck_assert_uint_eq(lms__cuda_attn_bwd_smem(8, false),
                      (4 * 32 * 9 + 32 * 8 + 2 * 32 * 33 + 2 * 32) * 4);
    ck_assert_uint_le(lms__cuda_attn_bwd_smem(LMS_CUDA_ATTN_F32_MAX_D, true), H200_OPTIN_SMEM);
    ck_assert(lms__cuda_attn_bwd_plan(2, 300, 32, 8, 128, false, H200_OPTIN_SMEM,
                                      &k, &dkv, &dq, &why));
    ck_assert_uint_eq(dkv.grid[0], 10);
    ck_assert_uint_eq(dkv.grid[1], 8);
    ck_assert_uint_eq(dq.grid[1], 32);
    ck_assert_uint_eq(dkv.grid[2], 2);
    ck_assert_uint_eq(dq.grid[2], 2);
    ck_assert_uint_eq(dq.block, LMS_CUDA_BWD_THREADS);
    ck_assert(lms__cuda_attn_bwd_plan(1, 1, 1, 1, 256, false, H200_OPTIN_SMEM,
                                      &k, &dkv, &dq, &why));
    ck_assert_uint_eq(dq.grid[0], 1);
    ck_assert(!lms__cuda_attn_bwd_plan(1, 8, 4, 2, 257, false, H200_OPTIN_SMEM,
                                       &k, &dkv, &dq, &why));
    ck_assert_ptr_nonnull(strstr(why, "head dim"));
    ck_assert(!lms__cuda_attn_bwd_plan(1, 8, 70000, 1, 64, false, H200_OPTIN_SMEM,
                                       &k, &dkv, &dq, &why));
    ck_assert(!lms__cuda_attn_bwd_plan(1, 8, 4, 2, 256, false, 48 * 1024, &k, &dkv, &dq, &why));
    ck_assert_ptr_nonnull(strstr(why, "shared memory"));
    ck_assert_int_eq(k, LMS_CUDA_ATTN_F32);
}
END_TEST

START_TEST(attention_backward_tc_plans)
{
    struct lms_cuda_launch dkv, dq;
    enum lms_cuda_attn_kind k;
    const char *why = NULL;
    /* six bf16 tiles of 64 rows of d + 8 (K, V and two Q, two dO for dk/dv; Q, dO and two K,
     * two V for dq) and two (lse, D) pairs of 64 fp32 */
    ck_assert_uint_eq(lms__cuda_tc_bwd_smem(128), 6 * 64 * 136 * 2 + 4 * 64 * 4);
    ck_assert_uint_eq(lms__cuda_tc_bwd_smem(64), 6 * 64 * 72 * 2 + 4 * 64 * 4);
    /* the forward's bf16 Q, K, V, then dO bf16 and lse, D fp32, rows padded to 64: S = 300 -> 320 */
    ck_assert_uint_eq(lms__cuda_attn_bwd_scratch_bytes(2, 300, 32, 8, 128),
                      (size_t)2 * (32 + 2 * 8) * 320 * 128 * 2 + (size_t)2 * 32 * 320 * 128 * 2 +
                          (size_t)2 * 2 * 32 * 320 * 4);
    ck_assert_uint_eq(lms__cuda_attn_bwd_scratch_bytes(1, 1, 2, 1, 64),
                      (size_t)(2 + 2) * 64 * 64 * 2 + (size_t)2 * 64 * 64 * 2 + (size_t)2 * 2 * 64 * 4);

    ck_assert(lms__cuda_attn_bwd_plan(2, 300, 32, 8, 128, true, H200_OPTIN_SMEM, &k, &dkv, &dq,
                                      &why));
    ck_assert_int_eq(k, LMS_CUDA_ATTN_TC);
    ck_assert_uint_eq(dkv.smem, lms__cuda_tc_bwd_smem(128));
    ck_assert_uint_eq(dq.smem, lms__cuda_tc_bwd_smem(128));
    ck_assert_uint_le(dkv.smem, H200_OPTIN_SMEM);
    ck_assert_uint_eq(dkv.grid[0], 5); /* 300 / 64 rounded up */
    ck_assert_uint_eq(dq.grid[0], 5);
    ck_assert_uint_eq(dkv.grid[1], 8);
    ck_assert_uint_eq(dq.grid[1], 32);
    ck_assert_uint_eq(dkv.grid[2], 2);
    ck_assert_uint_eq(dkv.block, 32 * 4);
    ck_assert(lms__cuda_attn_bwd_plan(1, 1, 2, 2, 64, true, H200_OPTIN_SMEM, &k, &dkv, &dq, &why));
    ck_assert_int_eq(k, LMS_CUDA_ATTN_TC);
    ck_assert_uint_eq(dq.grid[0], 1);
    /* other head dims, or the exact precision, keep the fp32 kernels */
    ck_assert(lms__cuda_attn_bwd_plan(1, 65, 4, 2, 96, true, H200_OPTIN_SMEM, &k, &dkv, &dq,
                                      &why));
    ck_assert_int_eq(k, LMS_CUDA_ATTN_F32);
    ck_assert_uint_eq(dkv.grid[0], 3);
    ck_assert(lms__cuda_attn_bwd_plan(1, 65, 4, 2, 128, false, H200_OPTIN_SMEM, &k, &dkv, &dq,
                                      &why));
    ck_assert_int_eq(k, LMS_CUDA_ATTN_F32);
    /* the TC layout needs the opt-in shared memory */
    ck_assert(!lms__cuda_attn_bwd_plan(1, 8, 4, 2, 128, true, 48 * 1024, &k, &dkv, &dq, &why));
    ck_assert_ptr_nonnull(strstr(why, "shared memory"));
}
END_TEST

START_TEST(elementwise_grid)
{
    ck_assert_uint_eq(lms__cuda_ew_blocks(0), 1);
    ck_assert_uint_eq(lms__cuda_ew_blocks(1), 1);
    ck_assert_uint_eq(lms__cuda_ew_blocks(LMS_CUDA_EW_THREADS), 1);
    ck_assert_uint_eq(lms__cuda_ew_blocks(LMS_CUDA_EW_THREADS + 1), 2);
    ck_assert_uint_eq(lms__cuda_ew_blocks((int64_t)1 << 40), LMS_CUDA_EW_MAX_BLOCKS);
}
END_TEST

START_TEST(align_for_cublaslt)
{
    ck_assert_uint_eq(lms__cuda_align_of((void *)0x1000, 4096, 2), 256);
    ck_assert_uint_eq(lms__cuda_align_of((void *)0x1004, 4096, 2), 4);
    ck_assert_uint_eq(lms__cuda_align_of((void *)0x1000, 29, 2), 2);
    ck_assert_uint_eq(lms__cuda_align_of((void *)0x1000, 37, 4), 4);
    ck_assert_uint_eq(lms__cuda_align_of((void *)0x1010, 4096, 4), 16);
}
END_TEST

/* cuBLAS semantics: D (M, N) = alpha op(A) op(B) + beta C, column-major, per batch. */
static void colmajor_gemm(const struct lms_cuda_gemm_map *g, const float *a, const float *b,
                          float *c, int64_t batch, float alpha, float beta)
{
    for (int64_t bt = 0; bt < batch; bt++)
        for (int64_t i = 0; i < g->m; i++)
            for (int64_t j = 0; j < g->n; j++) {
                double acc = 0;
                for (int64_t p = 0; p < g->k; p++) {
                    const float *ab = a + bt * g->a.batch_stride, *bb = b + bt * g->b.batch_stride;
                    /* op(A)(i, p): A stored (rows, cols) column-major */
                    double av = g->a.trans ? ab[p + i * g->a.ld] : ab[i + p * g->a.ld];
                    double bv = g->b.trans ? bb[j + p * g->b.ld] : bb[p + j * g->b.ld];
                    acc += av * bv;
                }
                float *cp = c + bt * g->c.batch_stride + i + j * g->c.ld;
                *cp = (float)(alpha * acc + beta * *cp);
            }
}

START_TEST(gemm_mapping)
{
    const int64_t m = 5, n = 7, k = 3, batch = 2;
    for (int t = 0; t < 4; t++) {
        bool ta = t & 1, tb = t & 2;
        int64_t lda = (ta ? m : k) + 2, ldb = (tb ? k : n) + 1, ldc = n + 3;
        int64_t sa = (ta ? k : m) * lda + 1, sb = (tb ? n : k) * ldb + 2, sc = m * ldc + 4;
        float *a = malloc((size_t)(sa * batch) * 4), *b = malloc((size_t)(sb * batch) * 4);
        float *c = malloc((size_t)(sc * batch) * 4), *want = malloc((size_t)(sc * batch) * 4);
        for (int64_t i = 0; i < sa * batch; i++)
            a[i] = (float)((i * 37) % 11) - 5;
        for (int64_t i = 0; i < sb * batch; i++)
            b[i] = (float)((i * 13) % 7) - 3;
        for (int64_t i = 0; i < sc * batch; i++)
            c[i] = want[i] = (float)(i % 5);
        /* row-major reference: C = 2 op(A) op(B) + 0.5 C */
        for (int64_t bt = 0; bt < batch; bt++)
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < n; j++) {
                    double acc = 0;
                    for (int64_t p = 0; p < k; p++) {
                        double av = ta ? a[bt * sa + p * lda + i] : a[bt * sa + i * lda + p];
                        double bv = tb ? b[bt * sb + j * ldb + p] : b[bt * sb + p * ldb + j];
                        acc += av * bv;
                    }
                    float *w = want + bt * sc + i * ldc + j;
                    *w = (float)(2 * acc + 0.5 * *w);
                }
        struct lms_cuda_gemm_map g;
        lms__cuda_gemm_map(ta, tb, m, n, k, lda, sa, ldb, sb, ldc, sc, &g);
        ck_assert_int_eq(g.m, n);
        ck_assert_int_eq(g.n, m);
        /* stored shapes fit their leading dimensions (cuBLASLt requires ld >= rows) */
        ck_assert_int_ge(g.a.ld, g.a.rows);
        ck_assert_int_ge(g.b.ld, g.b.rows);
        ck_assert_int_ge(g.c.ld, g.c.rows);
        /* cuBLAS A = our B, B = our A */
        colmajor_gemm(&g, b, a, c, batch, 2.0f, 0.5f);
        for (int64_t i = 0; i < sc * batch; i++)
            ck_assert_msg(c[i] == want[i], "trans %d/%d: element %lld: %g vs %g", ta, tb,
                          (long long)i, (double)c[i], (double)want[i]);
        free(a);
        free(b);
        free(c);
        free(want);
    }
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("cuda_launch");
    TCase *tc = tcase_create("host");
    tcase_add_test(tc, tc_layout_rules);
    tcase_add_test(tc, attention_plans);
    tcase_add_test(tc, attention_backward_plans);
    tcase_add_test(tc, attention_backward_tc_plans);
    tcase_add_test(tc, elementwise_grid);
    tcase_add_test(tc, align_for_cublaslt);
    tcase_add_test(tc, gemm_mapping);
    suite_add_tcase(s, tc);
    return s;
}
