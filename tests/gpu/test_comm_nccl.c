/* The NCCL backend of the communication layer on one GPU (comm/comm_nccl.c): a
 * one-rank communicator without MPI (LMS_COMM_SELF=1) attached to the CUDA backend loads
 * libnccl.so.2, makes its unique id, joins, and runs the in-place reduce-scatter and all-gather
 * on device buffers. With one rank both leave the chunk as it was; the floats just past it are
 * guards, which a wrong datatype or count (the declarations are written from NCCL's
 * documentation, not its header) would overwrite. The multi-rank logic is the MPI path's,
 * tested on the CPU (tests/cli/test_distill_dp.sh). Needs libnccl.so.2 on the loader's path
 * (scripts/gpu-check finds the one of the Python environment). */
#include <stdlib.h>
#include <string.h>

#include "check_main.h"
#include "lms/backend.h"
#include "lms/comm.h"

START_TEST(nccl_one_rank)
{
    static const char *const launch_vars[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"};
    for (size_t i = 0; i < sizeof launch_vars / sizeof launch_vars[0]; i++)
        unsetenv(launch_vars[i]);
    setenv("LMS_COMM_SELF", "1", 1);
    struct lms_error err;
    lms_error_clear(&err);
    struct lms_backend *be = NULL;
    struct lms_comm *c = NULL;
    ck_assert_msg(lms_backend_open_name("cuda", NULL, &be, &err) == LMS_OK, "%s", err.msg);
    ck_assert_msg(lms_comm_open(&c, &err) == LMS_OK && c, "%s", err.msg);
    ck_assert_str_eq(lms_comm_backend(c), "self");
    ck_assert_msg(lms_comm_attach_device(c, lms_backend_name(be), &err) == LMS_OK, "%s", err.msg);
    ck_assert_str_eq(lms_comm_backend(c), "nccl");
    ck_assert_int_eq(lms_comm_world(c), 1);

    enum { CHUNK = 4096, GUARD = 4096 };
    float *host = malloc((CHUNK + GUARD) * sizeof(float));
    float *back = malloc((CHUNK + GUARD) * sizeof(float));
    ck_assert(host && back);
    for (int i = 0; i < CHUNK + GUARD; i++)
        host[i] = i < CHUNK ? 0.25f * (float)(i % 977) - 3.0f : -12345.0f;
    struct lms_buf b;
    ck_assert_msg(lms_buf_alloc(be, (CHUNK + GUARD) * sizeof(float), &b, &err) == LMS_OK, "%s",
                  err.msg);
    ck_assert(lms_buf_upload(be, b.ptr, host, (CHUNK + GUARD) * sizeof(float), &err) == LMS_OK);
    ck_assert(lms_backend_sync(be, &err) == LMS_OK);
    for (int round = 0; round < 3; round++) {
        ck_assert_msg(lms_comm_reduce_scatter(c, b.ptr, CHUNK, &err) == LMS_OK, "%s", err.msg);
        ck_assert_msg(lms_comm_all_gather(c, b.ptr, CHUNK, &err) == LMS_OK, "%s", err.msg);
    }
    ck_assert(lms_buf_download(be, back, (CHUNK + GUARD) * sizeof(float), b.ptr,
                               (CHUNK + GUARD) * sizeof(float), &err) == LMS_OK);
    ck_assert_msg(memcmp(host, back, (CHUNK + GUARD) * sizeof(float)) == 0,
                  "the chunk or the guard after it changed");
    lms_buf_free(be, &b);
    free(host);
    free(back);
    lms_comm_close(c);
    lms_backend_free(be);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("comm_nccl");
    TCase *tc = tcase_create("nccl");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, nccl_one_rank);
    suite_add_tcase(s, tc);
    return s;
}
