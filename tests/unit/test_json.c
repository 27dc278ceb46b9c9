/* JSON emission: the text must equal what Python's json.dumps writes (values taken from
 * CPython 3.11: repr of floats, ensure_ascii escapes, indent=2 separators). */
#include <string.h>

#include "check_main.h"
#include "common/alloc_hook.h"
#include "lms/alloc.h"
#include "lms/json.h"

START_TEST(python_float_repr)
{
    const struct {
        double v;
        const char *want;
    } cases[] = {
        {1e-06, "1e-06"},       {1e-05, "1e-05"},           {0.0001, "0.0001"},
        {0.02, "0.02"},         {1000000.0, "1000000.0"},   {500000.0, "500000.0"},
        {0.0, "0.0"},           {-0.0, "-0.0"},             {1e16, "1e+16"},
        {1e15, "1000000000000000.0"}, {0.1, "0.1"},         {1.0 / 3, "0.3333333333333333"},
        {123.456, "123.456"},   {6.103515625e-05, "6.103515625e-05"}, {1.5e300, "1.5e+300"},
        {2.5, "2.5"},           {-8.0, "-8.0"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char buf[64];
        lms_json_format_double(cases[i].v, buf, sizeof(buf));
        ck_assert_str_eq(buf, cases[i].want);
    }
}
END_TEST

START_TEST(python_dumps_indent_ascii)
{
    json_t *v = NULL;
    const char *src = "{\"b\": [1, 2.5, {}], \"a\": \"\xc3\xa9\xf0\x9f\x98\x80\\n\\u0001\x7f\", "
                      "\"c\": {\"x\": null, \"y\": true}, \"d\": []}";
    ck_assert_int_eq(lms_json_load_buffer("test", src, strlen(src), &v, NULL), LMS_OK);
    struct lms_buf_str b = {0};
    ck_assert_int_eq(lms_json_dump(v, LMS_JSON_INDENT2 | LMS_JSON_ASCII | LMS_JSON_SORT_KEYS, &b, NULL),
                     LMS_OK);
    /* json.dumps(obj, indent=2, sort_keys=True) */
    ck_assert_str_eq(b.data, "{\n  \"a\": \"\\u00e9\\ud83d\\ude00\\n\\u0001\\u007f\",\n"
                             "  \"b\": [\n    1,\n    2.5,\n    {}\n  ],\n"
                             "  \"c\": {\n    \"x\": null,\n    \"y\": true\n  },\n  \"d\": []\n}");
    lms_buf_str_release(&b);
    ck_assert_int_eq(lms_json_dump(v, LMS_JSON_COMPACT, &b, NULL), LMS_OK);
    /* json.dumps(obj, separators=(',', ':'), ensure_ascii=False): insertion order kept */
    ck_assert_str_eq(b.data, "{\"b\":[1,2.5,{}],\"a\":\"\xc3\xa9\xf0\x9f\x98\x80\\n\\u0001\x7f\","
                             "\"c\":{\"x\":null,\"y\":true},\"d\":[]}");
    lms_buf_str_release(&b);
    json_decref(v);
}
END_TEST

START_TEST(rejects_duplicates_and_bad_utf8)
{
    json_t *v = NULL;
    struct lms_error err;
    const char *dup = "{\"a\": 1, \"a\": 2}";
    ck_assert_int_eq(lms_json_load_buffer("dup", dup, strlen(dup), &v, &err), LMS_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "duplicate"));
    const char bad[] = "{\"a\": \"\xff\"}";
    ck_assert_int_eq(lms_json_load_buffer("bad", bad, sizeof(bad) - 1, &v, &err), LMS_EFORMAT);
}
END_TEST

/* jansson allocates through lms_malloc: failing its k-th allocation makes parsing report
 * LMS_ENOMEM (never a format error), without leaks (ASan build), until k covers them all. */
START_TEST(parse_survives_allocation_failures)
{
    static const char src[] = "{\"a\": [1, 2.5, \"x\"], \"b\": {\"c\": null, \"d\": true}}";
    struct lms_error err;
    json_t *v = NULL;
    lms__alloc_fail_after(0);
    enum lms_status rc = lms_json_load_buffer("oom", src, strlen(src), &v, &err);
    lms__alloc_fail_after(-1);
    ck_assert_int_eq(rc, LMS_ENOMEM);
    ck_assert_ptr_null(v);
    for (long k = 1;; k++) {
        lms__alloc_fail_after(k);
        rc = lms_json_load_buffer("oom", src, strlen(src), &v, &err);
        lms__alloc_fail_after(-1);
        if (rc == LMS_OK)
            break;
        ck_assert_msg(rc == LMS_ENOMEM, "k=%ld: %s", k, err.msg);
    }
    ck_assert(json_is_object(v));
    json_decref(v);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("json");
    TCase *tc = tcase_create("json");
    tcase_add_test(tc, python_float_repr);
    tcase_add_test(tc, python_dumps_indent_ascii);
    tcase_add_test(tc, rejects_duplicates_and_bad_utf8);
    tcase_add_test(tc, parse_survives_allocation_failures);
    suite_add_tcase(s, tc);
    return s;
}
