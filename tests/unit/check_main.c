/* Shared main() for the Check unit test executables: each test file defines suite().
 * When LMS_TEST_DEVICE names a device (the gpu suite runs device-parametrised tests with
 * LMS_TEST_DEVICE=cuda), the executable is skipped (exit 77, meson's skip code) unless that device
 * opens: a machine without a GPU skips the GPU tests instead of failing them. */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check_main.h"
#include "lms/backend.h"
#include "lms/dtype.h"
#include "lms/ir.h"
#include "lms/safetensors.h"

/* Whether dev opens, tried in a child process: CUDA must not be initialised in a process that
 * forks afterwards (Check runs each test in a forked child). Prints the reason when it does not. */
static bool device_opens(const char *dev)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        struct lms_error err;
        struct lms_backend *be;
        if (lms_backend_open_name(dev, NULL, &be, &err)) {
            printf("skipped: %s\n", err.msg);
            fflush(stdout);
            _exit(77);
        }
        lms_backend_free(be);
        _exit(0);
    }
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) != pid)
        return false;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

int main(int argc, char **argv)
{
    (void)argc;
    lms_blas_select_core(argv);
    const char *dev = getenv("LMS_TEST_DEVICE");
    if (dev && strcmp(dev, "cpu") && !device_opens(dev))
        return 77;
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

void *read_ref(const struct lms_st_file *f, const char *name, bool ids, int64_t *n)
{
    struct lms_error err;
    for (size_t i = 0; i < f->hdr.n_entries; i++) {
        if (strcmp(f->hdr.entries[i].name, name))
            continue;
        struct lms_view *v;
        ck_assert_msg(lms_st_entry_view(f, i, &v, &err) == LMS_OK, "%s", err.msg);
        *n = lms_view_numel(v);
        void *out;
        if (ids) {
            int64_t *tmp = malloc((size_t)*n * 8);
            int32_t *o = malloc((size_t)*n * 4);
            ck_assert_int_eq(lms_view_read(v, 0, *n, tmp, &err), LMS_OK);
            for (int64_t k = 0; k < *n; k++)
                o[k] = (int32_t)tmp[k];
            free(tmp);
            out = o;
        } else {
            out = malloc((size_t)*n * 4);
            ck_assert_msg(lms_view_read_as(v, 0, *n, LMS_DTYPE_F32, out, &err) == LMS_OK, "%s",
                          err.msg);
        }
        lms_view_release(v);
        return out;
    }
    return NULL;
}
