/* The communication layer's pure parts (include/lms/comm.h): what each launcher's environment
 * says (rank, world, local rank), that nothing counts as a launcher by accident (a Slurm batch
 * script's environment without a job step), the ZeRO-1 chunk arithmetic, and that a process
 * started without a launcher gets no communicator and every call is a no-op. The collectives
 * themselves run in the multi-process tests (tests/cli/test_distill_dp.sh). */
#include <stdlib.h>

#include "check_main.h"
#include "lms/comm.h"

static void clear_env(void)
{
    static const char *const vars[] = {
        "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID",
        "MPI_LOCALNRANKS", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_STEP_ID",
        "SLURM_STEPID"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i]);
}

START_TEST(launcher_environment)
{
    struct lms_launch l;
    clear_env();
    lms_launch_detect(&l);
    ck_assert(!l.launched);
    ck_assert_int_eq(l.rank, 0);
    ck_assert_int_eq(l.world, 1);
    ck_assert_str_eq(l.launcher, "none");

    setenv("OMPI_COMM_WORLD_RANK", "5", 1);
    setenv("OMPI_COMM_WORLD_SIZE", "16", 1);
    setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
    setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "8", 1);
    lms_launch_detect(&l);
    ck_assert(l.launched);
    ck_assert_str_eq(l.launcher, "openmpi");
    ck_assert_int_eq(l.rank, 5);
    ck_assert_int_eq(l.world, 16);
    ck_assert_int_eq(l.local_rank, 1);
    ck_assert_int_eq(l.local_world, 8);

    /* malformed or inconsistent values are not a launcher */
    setenv("OMPI_COMM_WORLD_RANK", "16", 1);
    lms_launch_detect(&l);
    ck_assert(!l.launched);
    setenv("OMPI_COMM_WORLD_RANK", "2x", 1);
    lms_launch_detect(&l);
    ck_assert(!l.launched);
    clear_env();

    setenv("PMI_RANK", "3", 1);
    setenv("PMI_SIZE", "4", 1);
    setenv("MPI_LOCALRANKID", "3", 1);
    lms_launch_detect(&l);
    ck_assert(l.launched);
    ck_assert_str_eq(l.launcher, "pmi");
    ck_assert_int_eq(l.rank, 3);
    ck_assert_int_eq(l.local_rank, 3);
    clear_env();

    /* a batch script sees SLURM_PROCID and SLURM_NTASKS without being one task of a step */
    setenv("SLURM_PROCID", "0", 1);
    setenv("SLURM_NTASKS", "32", 1);
    setenv("SLURM_LOCALID", "0", 1);
    lms_launch_detect(&l);
    ck_assert(!l.launched);
    setenv("SLURM_STEP_ID", "0", 1);
    setenv("SLURM_PROCID", "9", 1);
    setenv("SLURM_LOCALID", "1", 1);
    lms_launch_detect(&l);
    ck_assert(l.launched);
    ck_assert_str_eq(l.launcher, "slurm");
    ck_assert_int_eq(l.rank, 9);
    ck_assert_int_eq(l.world, 32);
    ck_assert_int_eq(l.local_rank, 1);
    clear_env();
}
END_TEST

START_TEST(chunks)
{
    /* world chunks of a multiple of 16 floats that cover n */
    ck_assert_int_eq(lms_comm_chunk(100, 1), 112);
    ck_assert_int_eq(lms_comm_chunk(100, 2), 64);
    ck_assert_int_eq(lms_comm_chunk(128, 2), 64);
    ck_assert_int_eq(lms_comm_chunk(129, 2), 80);
    ck_assert_int_eq(lms_comm_chunk(176576, 8), 22080);
    for (int w = 1; w <= 9; w++)
        for (int64_t n = 1; n < 300; n += 7) {
            int64_t c = lms_comm_chunk(n, w);
            ck_assert(c % 16 == 0 && c * w >= n && (c - 16) * w < n);
        }
}
END_TEST

START_TEST(no_launcher)
{
    clear_env();
    struct lms_comm *c = (struct lms_comm *)1;
    struct lms_error err;
    lms_error_clear(&err);
    ck_assert_int_eq(lms_comm_open(&c, &err), LMS_OK);
    ck_assert_ptr_null(c);
    ck_assert_int_eq(lms_comm_rank(c), 0);
    ck_assert_int_eq(lms_comm_world(c), 1);
    ck_assert_str_eq(lms_comm_backend(c), "none");
    double v[2] = {1.5, -2};
    float f[32] = {3};
    ck_assert_int_eq(lms_comm_sum(c, v, 2, &err), LMS_OK);
    ck_assert(v[0] == 1.5 && v[1] == -2);
    ck_assert_int_eq(lms_comm_reduce_scatter(c, f, 32, &err), LMS_OK);
    ck_assert_int_eq(lms_comm_all_gather(c, f, 32, &err), LMS_OK);
    ck_assert(f[0] == 3);
    lms_comm_close(c);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("comm");
    TCase *tc = tcase_create("comm");
    tcase_add_test(tc, launcher_environment);
    tcase_add_test(tc, chunks);
    tcase_add_test(tc, no_launcher);
    suite_add_tcase(s, tc);
    return s;
}
