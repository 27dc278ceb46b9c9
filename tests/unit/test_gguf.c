/* GGUF container: the parser on files assembled byte by byte here (following the format's
 * description, not our writer), every malformed input giving its one-line LMS_EFORMAT error,
 * and the header writer reproducing the hand-assembled bytes exactly. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check_main.h"
#include "formats/codecs/gguf.h"

/* ---- a byte builder ------------------------------------------------------------------------ */

struct bytes {
    uint8_t p[4096];
    size_t n;
};

static void le(struct bytes *b, uint64_t v, int n)
{
    ck_assert(b->n + (size_t)n <= sizeof b->p);
    for (int i = 0; i < n; i++)
        b->p[b->n++] = (uint8_t)(v >> (8 * i));
}

static void str(struct bytes *b, const char *s)
{
    le(b, strlen(s), 8);
    ck_assert(b->n + strlen(s) <= sizeof b->p);
    memcpy(b->p + b->n, s, strlen(s));
    b->n += strlen(s);
}

static void pad(struct bytes *b, size_t align)
{
    while (b->n % align)
        b->p[b->n++] = 0;
}

static void header(struct bytes *b, uint64_t n_tensors, uint64_t n_kv)
{
    b->n = 0;
    memcpy(b->p, "GGUF", 4);
    b->n = 4;
    le(b, 3, 4);
    le(b, n_tensors, 8);
    le(b, n_kv, 8);
}

static void tensor_info(struct bytes *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                        uint32_t type, uint64_t offset)
{
    str(b, name);
    le(b, n_dims, 4);
    for (uint32_t i = 0; i < n_dims; i++)
        le(b, ne[i], 8);
    le(b, type, 4);
    le(b, offset, 8);
}

/* The golden file: 3 pairs (a string, a u32, a string array), an F32 [2, 3] tensor (ne {3, 2})
 * and a Q8_0 tensor of one block, default alignment 32. */
static void golden(struct bytes *b)
{
    header(b, 2, 3);
    str(b, "general.architecture");
    le(b, LMS_GGUF_STRING, 4);
    str(b, "llama");
    str(b, "llama.block_count");
    le(b, LMS_GGUF_U32, 4);
    le(b, 12, 4);
    str(b, "tokenizer.ggml.tokens");
    le(b, LMS_GGUF_ARRAY, 4);
    le(b, LMS_GGUF_STRING, 4);
    le(b, 2, 8);
    str(b, "a");
    str(b, "bc");
    tensor_info(b, "w", 2, (const uint64_t[]){3, 2}, LMS_GGML_F32, 0);
    tensor_info(b, "q", 1, (const uint64_t[]){32}, LMS_GGML_Q8_0, 32);
    pad(b, 32);
    for (int i = 0; i < 6; i++)
        le(b, 0x3f800000u, 4); /* 1.0f */
    pad(b, 32);
    for (int i = 0; i < 34; i++)
        le(b, (uint64_t)i, 1);
}

static enum lms_status parse(const struct bytes *b, struct lms_gguf *g, struct lms_error *err)
{
    /* a heap copy of exactly n bytes, so that ASan sees any read past the end */
    uint8_t *copy = malloc(b->n ? b->n : 1);
    ck_assert_ptr_nonnull(copy);
    memcpy(copy, b->p, b->n);
    enum lms_status rc = lms_gguf_parse(copy, b->n, "t.gguf", g, err);
    if (rc)
        lms_gguf_release(g);
    free(copy);
    return rc;
}

static void expect_error(const struct bytes *b, const char *needle)
{
    struct lms_error err;
    struct lms_gguf g;
    lms_error_clear(&err);
    ck_assert_int_eq(parse(b, &g, &err), LMS_EFORMAT);
    ck_assert_msg(strstr(err.msg, needle), "'%s' not in '%s'", needle, err.msg);
    ck_assert_msg(strstr(err.msg, "'t.gguf'"), "no file name in '%s'", err.msg);
    ck_assert_ptr_null(strchr(err.msg, '\n'));
}

START_TEST(parses_golden)
{
    struct bytes b;
    golden(&b);
    uint8_t *copy = malloc(b.n);
    memcpy(copy, b.p, b.n);
    struct lms_gguf g;
    struct lms_error err;
    ck_assert_int_eq(lms_gguf_parse(copy, b.n, "t.gguf", &g, &err), LMS_OK);
    ck_assert_uint_eq(g.version, 3);
    ck_assert_uint_eq(g.n_kv, 3);
    ck_assert_uint_eq(g.alignment, 32);
    const struct lms_gguf_kv *arch = lms_gguf_find(&g, "general.architecture");
    ck_assert_ptr_nonnull(arch);
    ck_assert_uint_eq(arch->type, LMS_GGUF_STRING);
    ck_assert_uint_eq(arch->v.s.n, 5);
    ck_assert(memcmp(arch->v.s.p, "llama", 5) == 0);
    ck_assert_uint_eq(lms_gguf_find(&g, "llama.block_count")->v.u, 12);
    const struct lms_gguf_kv *toks = lms_gguf_find(&g, "tokenizer.ggml.tokens");
    ck_assert_uint_eq(toks->v.arr.n, 2);
    const uint8_t *cur = toks->v.arr.data;
    struct lms_gguf_str s0 = lms_gguf_next_str(&cur), s1 = lms_gguf_next_str(&cur);
    ck_assert(s0.n == 1 && s0.p[0] == 'a' && s1.n == 2 && memcmp(s1.p, "bc", 2) == 0);
    ck_assert_ptr_null(lms_gguf_find(&g, "missing"));
    ck_assert_uint_eq(g.n_tensors, 2);
    ck_assert_uint_eq(g.data_offset % 32, 0);
    ck_assert_uint_eq(g.data_offset + 32 + 34, b.n);
    ck_assert_uint_eq(g.tensors[0].nbytes, 24);
    ck_assert_uint_eq(g.tensors[0].ne[0], 3);
    ck_assert_uint_eq(g.tensors[0].ne[1], 2);
    ck_assert_uint_eq(g.tensors[1].nbytes, 34);
    ck_assert_uint_eq(g.tensors[1].offset, 32);
    float one;
    memcpy(&one, copy + g.data_offset, 4);
    ck_assert(one == 1.0f);
    lms_gguf_release(&g);
    free(copy);
}
END_TEST

START_TEST(every_truncation_is_an_error)
{
    struct bytes b, t;
    golden(&b);
    for (size_t n = 0; n < b.n; n++) {
        t = b;
        t.n = n;
        struct lms_error err;
        struct lms_gguf g;
        ck_assert_int_eq(parse(&t, &g, &err), LMS_EFORMAT);
        ck_assert_ptr_null(strchr(err.msg, '\n'));
    }
}
END_TEST

START_TEST(rejects_bad_magic_and_version)
{
    struct bytes b;
    golden(&b);
    b.p[0] = 'X';
    expect_error(&b, "not a GGUF file");
    golden(&b);
    b.p[4] = 1;
    expect_error(&b, "GGUF version 1");
}
END_TEST

START_TEST(rejects_absurd_counts)
{
    struct bytes b;
    header(&b, 0, UINT64_C(1) << 60);
    expect_error(&b, "metadata pairs do not fit");
    header(&b, UINT64_C(1) << 60, 0);
    expect_error(&b, "tensors do not fit");
    header(&b, 0, 1);
    str(&b, "k");
    le(&b, LMS_GGUF_ARRAY, 4);
    le(&b, LMS_GGUF_U32, 4);
    le(&b, UINT64_C(1) << 61, 8);
    expect_error(&b, "does not fit in the file");
}
END_TEST

START_TEST(rejects_lying_lengths)
{
    struct bytes b;
    header(&b, 0, 1);
    le(&b, UINT64_C(0xffffffffffff), 8); /* key length far past the end */
    le(&b, 0, 8);
    expect_error(&b, "past the end of the file");
    header(&b, 0, 1);
    str(&b, "k");
    le(&b, LMS_GGUF_STRING, 4);
    le(&b, 100, 8);
    str(&b, "short");
    expect_error(&b, "claims 100 bytes");
    header(&b, 0, 1);
    str(&b, "k");
    le(&b, LMS_GGUF_ARRAY, 4);
    le(&b, LMS_GGUF_STRING, 4);
    le(&b, 3, 8);
    str(&b, "a");
    str(&b, "b");
    expect_error(&b, "array of 3 elements does not fit");
    header(&b, 0, 1);
    str(&b, "k");
    le(&b, LMS_GGUF_ARRAY, 4);
    le(&b, LMS_GGUF_STRING, 4);
    le(&b, 2, 8);
    str(&b, "a");
    le(&b, 1000, 8); /* the second string's length lies */
    le(&b, 0, 8);
    expect_error(&b, "claims 1000 bytes");
}
END_TEST

START_TEST(rejects_bad_values)
{
    struct bytes b;
    header(&b, 0, 1);
    str(&b, "k");
    le(&b, 13, 4);
    expect_error(&b, "unknown value type 13");
    header(&b, 0, 1);
    str(&b, "k");
    le(&b, LMS_GGUF_ARRAY, 4);
    le(&b, LMS_GGUF_ARRAY, 4);
    le(&b, 0, 8);
    expect_error(&b, "nested");
    header(&b, 0, 1);
    str(&b, "k");
    le(&b, LMS_GGUF_BOOL, 4);
    le(&b, 2, 1);
    expect_error(&b, "boolean value 2");
    header(&b, 0, 2);
    for (int i = 0; i < 2; i++) {
        str(&b, "k");
        le(&b, LMS_GGUF_U8, 4);
        le(&b, 1, 1);
    }
    expect_error(&b, "appears 2 times");
}
END_TEST

START_TEST(rejects_bad_alignment)
{
    struct bytes b;
    header(&b, 0, 1);
    str(&b, "general.alignment");
    le(&b, LMS_GGUF_U32, 4);
    le(&b, 48, 4);
    expect_error(&b, "48 is not a power of two");
    header(&b, 0, 1);
    str(&b, "general.alignment");
    le(&b, LMS_GGUF_U64, 4);
    le(&b, 64, 8);
    expect_error(&b, "u32 expected");
    /* a tensor offset that is not a multiple of the alignment */
    header(&b, 1, 0);
    tensor_info(&b, "w", 1, (const uint64_t[]){4}, LMS_GGML_F32, 16);
    pad(&b, 32);
    for (int i = 0; i < 64; i++)
        le(&b, 0, 1);
    expect_error(&b, "offset 16 is not a multiple of the alignment");
}
END_TEST

START_TEST(rejects_bad_tensors)
{
    struct bytes b;
    header(&b, 1, 0);
    tensor_info(&b, "w", 1, (const uint64_t[]){4}, 99, 0);
    expect_error(&b, "unknown tensor type 99");
    header(&b, 1, 0);
    tensor_info(&b, "w", 5, (const uint64_t[]){1, 1, 1, 1, 1}, LMS_GGML_F32, 0);
    expect_error(&b, "5 dimensions");
    header(&b, 1, 0);
    tensor_info(&b, "w", 1, (const uint64_t[]){31}, LMS_GGML_Q8_0, 0);
    expect_error(&b, "whole blocks of 32");
    header(&b, 1, 0);
    tensor_info(&b, "w", 2, (const uint64_t[]){UINT64_C(1) << 40, UINT64_C(1) << 40},
                LMS_GGML_F32, 0);
    expect_error(&b, "absurdly large");
    header(&b, 1, 0);
    tensor_info(&b, "w", 1, (const uint64_t[]){1000}, LMS_GGML_F32, 0);
    pad(&b, 32);
    le(&b, 0, 8);
    expect_error(&b, "runs past the end of the file");
    header(&b, 2, 0);
    tensor_info(&b, "w", 1, (const uint64_t[]){1}, LMS_GGML_F32, 0);
    tensor_info(&b, "w", 1, (const uint64_t[]){1}, LMS_GGML_F32, 32);
    expect_error(&b, "appears 2 times");
}
END_TEST

/* The writer's header for the golden content equals the hand-assembled bytes. */
START_TEST(writer_reproduces_golden)
{
    struct bytes b;
    golden(&b);
    struct lms_gguf_writer w;
    lms_gguf_writer_init(&w);
    lms_gguf_put_str(&w, "general.architecture", "llama", 5);
    lms_gguf_put_u32(&w, "llama.block_count", 12);
    const char *toks[] = {"a", "bc"};
    const size_t lens[] = {1, 2};
    lms_gguf_put_str_array(&w, "tokenizer.ggml.tokens", toks, lens, 2);
    uint64_t nb;
    struct lms_error err;
    ck_assert_int_eq(lms_gguf_add_tensor(&w, "w", 2, (const uint64_t[]){3, 2}, LMS_GGML_F32, &nb,
                                         &err), LMS_OK);
    ck_assert_uint_eq(nb, 24);
    ck_assert_int_eq(lms_gguf_add_tensor(&w, "q", 1, (const uint64_t[]){32}, LMS_GGML_Q8_0, &nb,
                                         &err), LMS_OK);
    ck_assert_uint_eq(nb, 34);
    ck_assert_int_eq(lms_gguf_add_tensor(&w, "x", 1, (const uint64_t[]){31}, LMS_GGML_Q8_0, &nb,
                                         &err), LMS_EINVAL);
    char path[] = "/tmp/lms-test-gguf-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(lms_gguf_write_header(&w, fd, path, &err), LMS_OK);
    off_t len = lseek(fd, 0, SEEK_END);
    uint8_t got[4096];
    ck_assert_int_eq(pread(fd, got, (size_t)len, 0), len);
    close(fd);
    unlink(path);
    size_t header_len = b.n - 32 - 34; /* the golden file without its data */
    ck_assert_uint_eq((uint64_t)len, header_len);
    ck_assert(memcmp(got, b.p, header_len) == 0);
    lms_gguf_writer_release(&w);
}
END_TEST

/* The Q8_0 rule worked out by hand: max|x| = 127 gives d = 1 (fp16 0x3C00), halves round away
 * from zero, and an all-zero block has scale 0 and zero codes. */
START_TEST(q8_0_golden)
{
    float x[32] = {127.0f, 63.5f, -63.5f, 0.5f, -0.5f, 0.49f, -126.6f, 1.5f};
    uint8_t q[34];
    lms_gguf_q8_0_quantize(x, q);
    const int8_t want[8] = {127, 64, -64, 1, -1, 0, -127, 2};
    ck_assert_uint_eq(q[0] | (q[1] << 8), 0x3C00);
    for (int i = 0; i < 8; i++)
        ck_assert_int_eq((int8_t)q[2 + i], want[i]);
    for (int i = 8; i < 32; i++)
        ck_assert_int_eq(q[2 + i], 0);
    float back[32];
    lms_gguf_q8_0_dequantize(q, back);
    ck_assert(back[1] == 64.0f && back[2] == -64.0f && back[6] == -127.0f);
    /* max 254 -> d = 2: 3.0 / 2 = 1.5 rounds to 2, -1.0 / 2 = -0.5 rounds to -1 */
    float y[32] = {254.0f, 3.0f, -1.0f};
    lms_gguf_q8_0_quantize(y, q);
    ck_assert_uint_eq(q[0] | (q[1] << 8), 0x4000);
    ck_assert_int_eq((int8_t)q[3], 2);
    ck_assert_int_eq((int8_t)q[4], -1);
    float z[32] = {0};
    lms_gguf_q8_0_quantize(z, q);
    for (int i = 0; i < 34; i++)
        ck_assert_int_eq(q[i], 0);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("gguf");
    TCase *tc = tcase_create("gguf");
    tcase_add_test(tc, parses_golden);
    tcase_add_test(tc, every_truncation_is_an_error);
    tcase_add_test(tc, rejects_bad_magic_and_version);
    tcase_add_test(tc, rejects_absurd_counts);
    tcase_add_test(tc, rejects_lying_lengths);
    tcase_add_test(tc, rejects_bad_values);
    tcase_add_test(tc, rejects_bad_alignment);
    tcase_add_test(tc, rejects_bad_tensors);
    tcase_add_test(tc, writer_reproduces_golden);
    tcase_add_test(tc, q8_0_golden);
    suite_add_tcase(s, tc);
    return s;
}
