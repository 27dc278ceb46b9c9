/* safetensors: every validation rule of the reference reader on crafted headers, and the
 * canonical writer reproducing, byte for byte, headers written by the reference writer (the
 * fixture files were written by safetensors 0.8.0 via transformers). */
#include <stdint.h>
#include <string.h>

#include "check_main.h"
#include "common/alloc_hook.h"
#include "lms/alloc.h"
#include "lms/safetensors.h"

/* Builds [u64 len][json][data_len zero bytes] in buf; returns the total size. */
static size_t make_file(unsigned char *buf, size_t cap, const char *json, size_t data_len)
{
    size_t n = strlen(json);
    ck_assert(8 + n + data_len <= cap);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, json, n);
    memset(buf + 8 + n, 0, data_len);
    return 8 + n + data_len;
}

static enum lms_status parse(const char *json, size_t data_len, struct lms_error *err)
{
    static unsigned char buf[1 << 16];
    size_t len = make_file(buf, sizeof(buf), json, data_len);
    struct lms_st_header h;
    enum lms_status rc = lms_st_parse(buf, len, len, &h, err);
    if (!rc)
        lms_st_header_release(&h);
    return rc;
}

static void expect_error(const char *json, size_t data_len, const char *needle)
{
    struct lms_error err;
    lms_error_clear(&err);
    ck_assert_int_eq(parse(json, data_len, &err), LMS_EFORMAT);
    ck_assert_msg(strstr(err.msg, needle), "'%s' not in '%s'", needle, err.msg);
    ck_assert_ptr_null(strchr(err.msg, '\n'));
}

START_TEST(accepts_valid_layouts)
{
    ck_assert_int_eq(parse("{}", 0, NULL), LMS_OK);
    ck_assert_int_eq(parse("  {\"__metadata__\":{\"format\":\"pt\"}}\n\t ", 0, NULL), LMS_OK);
    /* scalar, zero-element tensors sharing an offset, key order irrelevant */
    ck_assert_int_eq(parse("{\"b\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
                           "\"z\":{\"dtype\":\"F16\",\"shape\":[0,3],\"data_offsets\":[4,4]},"
                           "\"y\":{\"dtype\":\"F16\",\"shape\":[0],\"data_offsets\":[4,4]},"
                           "\"a\":{\"dtype\":\"F4\",\"shape\":[2,3],\"data_offsets\":[4,7]}}",
                           7, NULL),
                     LMS_OK);
}
END_TEST

START_TEST(rejects_each_rule)
{
    struct lms_error err;
    unsigned char small[4] = {0};
    struct lms_st_header h;
    ck_assert_int_eq(lms_st_parse(small, 4, 4, &h, &err), LMS_EFORMAT); /* rule 1 */
    ck_assert_ptr_nonnull(strstr(err.msg, "shorter than"));
    unsigned char big[8] = {0x01, 0xE1, 0xF5, 0x05, 0, 0, 0, 0}; /* 100,000,001 */
    ck_assert_int_eq(lms_st_parse(big, 8, 8, &h, &err), LMS_EFORMAT); /* rule 2 */
    ck_assert_ptr_nonnull(strstr(err.msg, "limit"));
    unsigned char past[8] = {0x10, 0, 0, 0, 0, 0, 0, 0};
    ck_assert_int_eq(lms_st_parse(past, 8, 8, &h, &err), LMS_EFORMAT); /* rule 3 */
    ck_assert_ptr_nonnull(strstr(err.msg, "past the end"));
    expect_error("{\"\xc3\x28\":1}", 0, "UTF-8");                          /* rule 4 */
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", 4, "JSON");
    expect_error("[1,2]", 0, "not a JSON object");
    expect_error("{\"a\":[]}", 0, "not an object");
    expect_error("{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                 "unknown dtype");
    expect_error("{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                 "unknown dtype");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
                 "non-negative");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
                 "non-negative integer");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "2 entries");
    expect_error("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "missing 'dtype'");
    expect_error("{\"__metadata__\":{\"format\":1}}", 0, "not a string");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                 "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                 8, "duplicate");                                           /* rule 6 */
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "gap");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                 8, "overlap");                                             /* rule 7 */
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, "");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                 "shape x dtype");                                          /* rule 8 */
    expect_error("{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", 2,
                 "whole bytes");
    expect_error("{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}",
                 8, "too large");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 5,
                 "trailing bytes");                                         /* rule 9 */
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
                 "truncated");
}
END_TEST

/* The canonical header of every fixture file equals the bytes the reference writer produced. */
static void check_header_matches(const char *rel)
{
    char path[1024];
    struct lms_st_file f;
    struct lms_error err;
    ck_assert_msg(lms_st_open(fixture_path(rel, path, sizeof(path)), &f, &err) == LMS_OK, "%s",
                  err.msg);
    struct lms_st_out *outs = lms_calloc(f.hdr.n_entries, sizeof(*outs));
    for (size_t i = 0; i < f.hdr.n_entries; i++)
        outs[i] = (struct lms_st_out){.name = f.hdr.entries[i].name,
                                      .dtype = f.hdr.entries[i].dtype,
                                      .ndim = f.hdr.entries[i].ndim,
                                      .shape = f.hdr.entries[i].shape};
    struct lms_buf_str b = {0};
    ck_assert_int_eq(lms_st_header_build(outs, f.hdr.n_entries, f.hdr.metadata, &b, &err), LMS_OK);
    ck_assert_uint_eq(b.len, f.hdr.data_start);
    ck_assert_msg(memcmp(b.data, f.storage->base, b.len) == 0, "header of %s differs", rel);
    lms_buf_str_release(&b);
    lms_free(outs);
    lms_st_close(&f);
}

START_TEST(canonical_header_matches_reference_writer)
{
    check_header_matches("models/qwen3-tiny/model.safetensors");
    check_header_matches("models/llama-tiny/model.safetensors");
    check_header_matches("models/qwen2-tiny/model.safetensors");
    check_header_matches("models/qwen3-tiny-bf16-sharded/model-00003-of-00005.safetensors");
    check_header_matches("teacher/model-00001-of-00003.safetensors");
}
END_TEST

START_TEST(open_reports_the_file)
{
    struct lms_st_file f;
    struct lms_error err;
    char path[1024];
    ck_assert_int_eq(lms_st_open(fixture_path("models/qwen3-tiny/config.json", path, sizeof(path)),
                                 &f, &err),
                     LMS_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "config.json"));
    ck_assert_int_eq(lms_st_open("/nonexistent/x.safetensors", &f, &err), LMS_EIO);
}
END_TEST

START_TEST(parse_survives_allocation_failures)
{
    const char *json = "{\"__metadata__\":{\"format\":\"pt\"},"
                       "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    for (long k = 0; k < 12; k++) {
        lms__alloc_fail_after(k);
        enum lms_status rc = parse(json, 4, NULL);
        lms__alloc_fail_after(-1);
        ck_assert(rc == LMS_OK || rc == LMS_ENOMEM);
    }
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("safetensors");
    tcase_add_test(tc, accepts_valid_layouts);
    tcase_add_test(tc, rejects_each_rule);
    tcase_add_test(tc, canonical_header_matches_reference_writer);
    tcase_add_test(tc, open_reports_the_file);
    tcase_add_test(tc, parse_survives_allocation_failures);
    suite_add_tcase(s, tc);
    return s;
}
