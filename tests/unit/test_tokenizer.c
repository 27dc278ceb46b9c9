/* Tokenizer against golden files made by the reference `tokenizers` library: every case of
 * fixtures/tokenizer/encode_cases.jsonl encodes to its ids and decodes to its text, and the
 * held-out corpus fixtures/corpus/val.jsonl encodes to fixtures/corpus/val.ids.u16 (each
 * document followed by <|endoftext|>). Plus NFC conformance examples (Unicode 9.0) and malformed
 * tokenizer.json files rejected with the field named. */
#include <jansson.h>
#include <string.h>

#include "check_main.h"
#include "lms/alloc.h"
#include "lms/tokenizer.h"

static struct lms_tokenizer *load_fixture(void)
{
    char p[4096];
    struct lms_tokenizer *tk = NULL;
    struct lms_error err = {0};
    ck_assert_msg(lms_tokenizer_load(fixture_path("tokenizer", p, sizeof(p)), &tk, &err) == LMS_OK,
                  "%s", err.msg);
    return tk;
}

START_TEST(encode_cases)
{
    struct lms_tokenizer *tk = load_fixture();
    struct lms_tokenizer_ctx *ctx;
    ck_assert_int_eq(lms_tokenizer_ctx_new(tk, &ctx, NULL), LMS_OK);
    char p[4096];
    FILE *f = fopen(fixture_path("tokenizer/encode_cases.jsonl", p, sizeof(p)), "r");
    ck_assert_ptr_nonnull(f);
    char *line = NULL;
    size_t cap = 0;
    int n_cases = 0;
    while (getline(&line, &cap, f) > 0) {
        json_t *c = json_loads(line, JSON_ALLOW_NUL, NULL);
        ck_assert_ptr_nonnull(c);
        json_t *text = json_object_get(c, "text"), *ids = json_object_get(c, "ids");
        struct lms_ids got = {0};
        struct lms_error err = {0};
        ck_assert_int_eq(lms_tokenizer_encode(ctx, json_string_value(text),
                                              json_string_length(text), LMS_TOK_ADD_SPECIAL,
                                              &got, &err), LMS_OK);
        ck_assert_uint_eq(got.len, json_array_size(ids));
        for (size_t i = 0; i < got.len; i++)
            ck_assert_int_eq(got.data[i], json_integer_value(json_array_get(ids, i)));
        char *dec;
        size_t dec_len;
        json_t *want = json_object_get(c, "decoded");
        ck_assert_int_eq(lms_tokenizer_decode(tk, got.data, got.len, false, &dec, &dec_len, &err),
                         LMS_OK);
        ck_assert_uint_eq(dec_len, json_string_length(want));
        ck_assert(memcmp(dec, json_string_value(want), dec_len) == 0);
        lms_free(dec);
        lms_ids_release(&got);
        json_decref(c);
        n_cases++;
    }
    free(line);
    fclose(f);
    ck_assert_int_ge(n_cases, 30);
    lms_tokenizer_ctx_free(ctx);
    lms_tokenizer_free(tk);
}
END_TEST

START_TEST(val_corpus)
{
    struct lms_tokenizer *tk = load_fixture();
    struct lms_tokenizer_ctx *ctx;
    ck_assert_int_eq(lms_tokenizer_ctx_new(tk, &ctx, NULL), LMS_OK);
    ck_assert_int_eq(lms_tokenizer_eos_id(tk), 0);
    char p[4096];
    FILE *f = fopen(fixture_path("corpus/val.ids.u16", p, sizeof(p)), "rb");
    ck_assert_ptr_nonnull(f);
    static uint16_t ref[1 << 21];
    size_t n_ref = fread(ref, 2, sizeof(ref) / 2, f);
    fclose(f);
    ck_assert_uint_eq(n_ref, 937301);
    f = fopen(fixture_path("corpus/val.jsonl", p, sizeof(p)), "r");
    ck_assert_ptr_nonnull(f);
    char *line = NULL;
    size_t cap = 0, pos = 0;
    struct lms_ids got = {0};
    while (getline(&line, &cap, f) > 0) {
        json_t *c = json_loads(line, JSON_ALLOW_NUL, NULL);
        json_t *text = json_object_get(c, "text");
        got.len = 0;
        ck_assert_int_eq(lms_tokenizer_encode(ctx, json_string_value(text),
                                              json_string_length(text), 0, &got, NULL), LMS_OK);
        for (size_t i = 0; i < got.len; i++, pos++)
            ck_assert_msg(pos < n_ref && got.data[i] == ref[pos], "id %zu differs", pos);
        ck_assert_int_eq(ref[pos++], 0);
        json_decref(c);
    }
    ck_assert_uint_eq(pos, n_ref);
    free(line);
    fclose(f);
    lms_ids_release(&got);
    lms_tokenizer_ctx_free(ctx);
    lms_tokenizer_free(tk);
}
END_TEST

/* Replaces the fixture's pre_tokenizer/model fields with a small JSON and expects an error whose
 * message names the field. */
static void expect_reject(const char *json, enum lms_status want, const char *field)
{
    struct lms_tokenizer *tk = NULL;
    struct lms_error err = {0};
    enum lms_status st = lms_tokenizer_load_buffer("bad.json", json, strlen(json), NULL, 0, &tk,
                                                   &err);
    ck_assert_msg(st == want, "status %d for %s (%s)", st, field, err.msg);
    ck_assert_msg(strstr(err.msg, field) != NULL, "'%s' not named in: %s", field, err.msg);
    ck_assert_ptr_null(tk);
}

#define BL "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}"
#define MODEL(extra) "{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2}" extra "}"

START_TEST(malformed)
{
    expect_reject("{\"pre_tokenizer\":" BL ",\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}",
                  LMS_EUNSUPPORTED, "model.type");
    expect_reject("{\"pre_tokenizer\":{\"type\":\"Whitespace\"},\"model\":" MODEL(",\"merges\":[]")
                  "}", LMS_EUNSUPPORTED, "pre_tokenizer.type");
    expect_reject("{\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\","
                  "\"pattern\":{\"Regex\":\"\\\\w+\"},\"behavior\":\"Isolated\"}," BL "]},"
                  "\"model\":" MODEL(",\"merges\":[]") "}",
                  LMS_EUNSUPPORTED, "pre_tokenizer.pretokenizers[0].pattern.Regex");
    expect_reject("{\"pre_tokenizer\":" BL ",\"model\":" MODEL(",\"merges\":[\"a b\",\"a x\"]") "}",
                  LMS_EFORMAT, "model.merges[1]");
    expect_reject("{\"pre_tokenizer\":" BL ",\"model\":" MODEL(",\"merges\":[\"a b c\"]") "}",
                  LMS_EFORMAT, "model.merges[0]");
    expect_reject("{\"normalizer\":{\"type\":\"NFKC\"},\"pre_tokenizer\":" BL ",\"model\":"
                  MODEL(",\"merges\":[]") "}", LMS_EUNSUPPORTED, "normalizer.type");
    expect_reject("{\"pre_tokenizer\":" BL ",\"model\":" MODEL("") "}", LMS_EFORMAT,
                  "model.merges");
    expect_reject("{\"pre_tokenizer\":" BL ",\"model\":" MODEL(",\"merges\":[]")
                  ",\"decoder\":{\"type\":\"WordPiece\"}}", LMS_EUNSUPPORTED, "decoder.type");
    expect_reject("[1,2", LMS_EFORMAT, "bad.json");
}
END_TEST

/* BPE applies the lowest-ranked merge first: merges [b c, a b] on abc give a|bc; [a a, aa a]
 * give aaa and aa|aa. */
START_TEST(bpe_rules)
{
    static const char json[] =
        "{\"pre_tokenizer\":" BL ",\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"c\":2,"
        "\"bc\":3,\"ab\":4,\"aa\":5,\"aaa\":6},\"merges\":[\"b c\",\"a b\",\"a a\",\"aa a\"]}}";
    struct lms_tokenizer *tk;
    struct lms_tokenizer_ctx *ctx;
    struct lms_error err = {0};
    ck_assert_msg(lms_tokenizer_load_buffer("t", json, strlen(json), NULL, 0, &tk, &err) ==
                  LMS_OK, "%s", err.msg);
    ck_assert_int_eq(lms_tokenizer_ctx_new(tk, &ctx, NULL), LMS_OK);
    struct {
        const char *text;
        int n;
        int32_t ids[4];
    } cases[] = {{"abc", 2, {0, 3}}, {"aaa", 1, {6}}, {"aaaa", 2, {5, 5}}};
    for (size_t k = 0; k < 3; k++) {
        struct lms_ids got = {0};
        ck_assert_int_eq(lms_tokenizer_encode(ctx, cases[k].text, strlen(cases[k].text), 0, &got,
                                              NULL), LMS_OK);
        ck_assert_int_eq((int)got.len, cases[k].n);
        for (int i = 0; i < cases[k].n; i++)
            ck_assert_int_eq(got.data[i], cases[k].ids[i]);
        lms_ids_release(&got);
    }
    struct lms_ids got = {0};
    ck_assert_int_eq(lms_tokenizer_encode(ctx, "a\xff", 2, 0, &got, &err), LMS_EFORMAT);
    lms_ids_release(&got);
    lms_tokenizer_ctx_free(ctx);
    lms_tokenizer_free(tk);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("golden");
    tcase_add_test(tc, encode_cases);
    tcase_add_test(tc, val_corpus);
    tcase_add_test(tc, malformed);
    tcase_add_test(tc, bpe_rules);
    suite_add_tcase(s, tc);
    return s;
}
