/* The format table: each fixture is detected as the format it was written in by the reference
 * stack, and lms_checkpoint_write refuses format-specific options meant for another format
 * before anything is written. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check_main.h"
#include "lms/format.h"
#include "lms/ir.h"

START_TEST(detects_each_fixture)
{
    static const struct {
        const char *fixture, *format;
    } cases[] = {
        {"models/qwen3-tiny", "hf"},
        {"models/llama-tiny", "hf"},
        {"teacher", "hf"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[4096];
        struct lms_error err;
        lms_error_clear(&err);
        fixture_path(cases[i].fixture, path, sizeof path);
        const struct lms_format *f = lms_format_detect(path, &err);
        ck_assert_msg(f != NULL, "%s: %s", cases[i].fixture, err.msg);
        ck_assert_str_eq(f->name, cases[i].format);
    }
}
END_TEST

/* Options for one format given to another's writer: LMS_EINVAL naming both, and no output. */
START_TEST(format_options_go_to_their_format_only)
{
    char src[4096], tmpl[] = "/tmp/lms-test-registry-XXXXXX", out[512];
    ck_assert_ptr_nonnull(mkdtemp(tmpl));
    snprintf(out, sizeof out, "%s/out", tmpl);
    fixture_path("models/qwen3-tiny", src, sizeof src);
    struct lms_model m;
    struct lms_error err;
    lms_error_clear(&err);
    ck_assert_int_eq(lms_checkpoint_read(src, &m, &err), LMS_OK);
    static const int nemo_only_option = 1;
    struct lms_write_opts wo = {.dtype = LMS_DTYPE_COUNT, .format_opts_for = "nemo",
                                .format_opts = &nemo_only_option};
    struct lms_write_result res;
    ck_assert_int_eq(lms_checkpoint_write(lms_format_find("hf"), &m, out, &wo, &res, &err),
                     LMS_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "nemo"));
    ck_assert_ptr_nonnull(strstr(err.msg, "hf"));
    struct stat sb;
    ck_assert_int_ne(stat(out, &sb), 0);
    /* without format options (and with NULL options) the same writer writes */
    lms_error_clear(&err);
    ck_assert_msg(lms_checkpoint_write(lms_format_find("hf"), &m, out, NULL, &res, &err) ==
                  LMS_OK, "%s", err.msg);
    ck_assert_int_eq(stat(out, &sb), 0);
    lms_model_release(&m);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpl);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("registry");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, detects_each_fixture);
    tcase_add_test(tc, format_options_go_to_their_format_only);
    suite_add_tcase(s, tc);
    return s;
}
