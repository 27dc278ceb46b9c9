/* The tokenizer rebuilt from tokenizer.ggml.* (formats/layouts/gguf_tokenizer.h): a small
 * byte-level vocabulary written with the GGUF codec gives the tokenizer.json and
 * tokenizer_config.json written out by hand below (HF's layout for Qwen2- and Llama 3-style
 * tokenizers), and each inconsistency in the keys is its own one-line error. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check_main.h"
#include "formats/codecs/gguf.h"
#include "formats/layouts/gguf_tokenizer.h"

#define QWEN2_SPLIT                                                                           \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"   \
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

/* What the keys hold; a test edits a copy before building the file. */
struct spec {
    const char *model, *pre;
    const char *tokens[12];
    size_t n_tokens;
    int32_t types[12];
    size_t n_types;
    const char *merges[8];
    size_t n_merges;
    int64_t bos, eos, pad; /* -1: key absent */
    int add_bos;           /* -1: key absent */
    const char *chat_template;
};

/* <|eot|> control, <tool> user defined, [PAD8] an unused filler; "Ġ" is the byte-level space. */
static struct spec base(void)
{
    return (struct spec){
        .model = "gpt2",
        .pre = "qwen2",
        .tokens = {"<|eot|>", "a", "b", "\xc4\xa0", "ab", "\xc4\xa0" "a", "\xc4\xa0" "ab",
                   "<tool>", "[PAD8]"},
        .n_tokens = 9,
        .types = {3, 1, 1, 1, 1, 1, 1, 4, 5},
        .n_types = 9,
        .merges = {"a b", "\xc4\xa0 a", "\xc4\xa0" "a b"},
        .n_merges = 3,
        .bos = -1,
        .eos = 0,
        .pad = 0,
        .add_bos = -1,
        .chat_template = "{{ messages }}",
    };
}

/* Writes s as the metadata of a GGUF with no tensors and parses it back; buf keeps the bytes the
 * parsed strings point into. */
static void build(const struct spec *s, struct lms_gguf *g, uint8_t **buf)
{
    struct lms_gguf_writer w;
    lms_gguf_writer_init(&w);
    lms_gguf_put_str(&w, "general.architecture", "qwen2", 5);
    if (s->model)
        lms_gguf_put_str(&w, "tokenizer.ggml.model", s->model, strlen(s->model));
    if (s->pre)
        lms_gguf_put_str(&w, "tokenizer.ggml.pre", s->pre, strlen(s->pre));
    size_t lens[12];
    for (size_t i = 0; i < s->n_tokens; i++)
        lens[i] = strlen(s->tokens[i]);
    if (s->n_tokens)
        lms_gguf_put_str_array(&w, "tokenizer.ggml.tokens", s->tokens, lens, s->n_tokens);
    if (s->n_types)
        lms_gguf_put_i32_array(&w, "tokenizer.ggml.token_type", s->types, s->n_types);
    for (size_t i = 0; i < s->n_merges; i++)
        lens[i] = strlen(s->merges[i]);
    lms_gguf_put_str_array(&w, "tokenizer.ggml.merges", s->merges, lens, s->n_merges);
    if (s->bos >= 0)
        lms_gguf_put_u32(&w, "tokenizer.ggml.bos_token_id", (uint32_t)s->bos);
    if (s->eos >= 0)
        lms_gguf_put_u32(&w, "tokenizer.ggml.eos_token_id", (uint32_t)s->eos);
    if (s->pad >= 0)
        lms_gguf_put_u32(&w, "tokenizer.ggml.padding_token_id", (uint32_t)s->pad);
    if (s->add_bos >= 0)
        lms_gguf_put_bool(&w, "tokenizer.ggml.add_bos_token", s->add_bos);
    if (s->chat_template)
        lms_gguf_put_str(&w, "tokenizer.chat_template", s->chat_template,
                         strlen(s->chat_template));
    char path[] = "/tmp/lms-test-gguftok-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    struct lms_error err;
    ck_assert_int_eq(lms_gguf_write_header(&w, fd, path, &err), LMS_OK);
    off_t len = lseek(fd, 0, SEEK_END);
    *buf = malloc((size_t)len);
    ck_assert_ptr_nonnull(*buf);
    ck_assert_int_eq(pread(fd, *buf, (size_t)len, 0), len);
    close(fd);
    unlink(path);
    lms_gguf_writer_release(&w);
    ck_assert_int_eq(lms_gguf_parse(*buf, (size_t)len, "t.gguf", g, &err), LMS_OK);
}

static enum lms_status rebuild(const struct spec *s, json_t **tok, json_t **cfg,
                               struct lms_error *err)
{
    struct lms_gguf g;
    uint8_t *buf;
    build(s, &g, &buf);
    lms_error_clear(err);
    enum lms_status rc = lms__gguf_tokenizer_rebuild(&g, "t.gguf", 64, tok, cfg, err);
    lms_gguf_release(&g);
    free(buf);
    return rc;
}

static json_t *parse(const char *text)
{
    json_error_t e;
    json_t *v = json_loads(text, 0, &e);
    ck_assert_msg(v != NULL, "golden JSON: %s at %d", e.text, e.line);
    return v;
}

static void assert_json_eq(const json_t *got, const char *want_text)
{
    json_t *want = parse(want_text);
    char *g = json_dumps(got, JSON_SORT_KEYS), *w = json_dumps(want, JSON_SORT_KEYS);
    ck_assert_msg(json_equal(got, want), "got\n%s\nwant\n%s", g, w);
    free(g);
    free(w);
    json_decref(want);
}

static const char added_golden[] =
    "[{\"id\": 0, \"content\": \"<|eot|>\", \"single_word\": false, \"lstrip\": false,"
    "  \"rstrip\": false, \"normalized\": false, \"special\": true},"
    " {\"id\": 7, \"content\": \"<tool>\", \"single_word\": false, \"lstrip\": false,"
    "  \"rstrip\": false, \"normalized\": false, \"special\": false}]";

START_TEST(qwen2_vocab_golden)
{
    struct spec s = base();
    json_t *tok, *cfg;
    struct lms_error err;
    ck_assert_int_eq(rebuild(&s, &tok, &cfg, &err), LMS_OK);
    char text[4096];
    snprintf(text, sizeof text,
             "{\"version\": \"1.0\", \"truncation\": null, \"padding\": null,"
             " \"added_tokens\": %s,"
             " \"normalizer\": {\"type\": \"NFC\"},"
             " \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": ["
             "   {\"type\": \"Split\", \"pattern\": {\"Regex\": null}, \"behavior\": \"Isolated\","
             "    \"invert\": false},"
             "   {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": false,"
             "    \"use_regex\": false}]},"
             " \"post_processor\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false,"
             "   \"trim_offsets\": false, \"use_regex\": false},"
             " \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true,"
             "   \"trim_offsets\": true, \"use_regex\": true},"
             " \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null,"
             "   \"continuing_subword_prefix\": null, \"end_of_word_suffix\": null,"
             "   \"fuse_unk\": false, \"byte_fallback\": false, \"ignore_merges\": false,"
             "   \"vocab\": {\"<|eot|>\": 0, \"a\": 1, \"b\": 2, \"\\u0120\": 3, \"ab\": 4,"
             "     \"\\u0120a\": 5, \"\\u0120ab\": 6, \"<tool>\": 7},"
             "   \"merges\": [[\"a\", \"b\"], [\"\\u0120\", \"a\"], [\"\\u0120a\", \"b\"]]}}",
             added_golden);
    /* the pattern, set as a string rather than spelled with JSON's escapes */
    json_t *want = parse(text);
    json_t *split = json_array_get(
        json_object_get(json_object_get(want, "pre_tokenizer"), "pretokenizers"), 0);
    json_object_set_new(json_object_get(split, "pattern"), "Regex", json_string(QWEN2_SPLIT));
    char *wt = json_dumps(want, 0);
    assert_json_eq(tok, wt);
    free(wt);
    json_decref(want);
    assert_json_eq(cfg,
                   "{\"tokenizer_class\": \"PreTrainedTokenizerFast\", \"bos_token\": null,"
                   " \"eos_token\": \"<|eot|>\", \"pad_token\": \"<|eot|>\", \"unk_token\": null,"
                   " \"model_max_length\": 64, \"clean_up_tokenization_spaces\": false,"
                   " \"added_tokens_decoder\": {"
                   "   \"0\": {\"content\": \"<|eot|>\", \"single_word\": false, \"lstrip\": false,"
                   "         \"rstrip\": false, \"normalized\": false, \"special\": true},"
                   "   \"7\": {\"content\": \"<tool>\", \"single_word\": false, \"lstrip\": false,"
                   "         \"rstrip\": false, \"normalized\": false, \"special\": false}},"
                   " \"chat_template\": \"{{ messages }}\"}");
    json_decref(tok);
    json_decref(cfg);
}
END_TEST

/* Llama 3's layout: no normalizer, its own split, ignore_merges, and the bos token the file says
 * llama.cpp adds as a TemplateProcessing after the ByteLevel post-processor. */
START_TEST(llama_bpe_with_bos_golden)
{
    struct spec s = base();
    s.pre = "llama-bpe";
    s.bos = 7;
    s.add_bos = 1;
    json_t *tok, *cfg;
    struct lms_error err;
    ck_assert_int_eq(rebuild(&s, &tok, &cfg, &err), LMS_OK);
    ck_assert(json_is_null(json_object_get(tok, "normalizer")));
    ck_assert(json_is_true(json_object_get(json_object_get(tok, "model"), "ignore_merges")));
    const json_t *split = json_array_get(
        json_object_get(json_object_get(tok, "pre_tokenizer"), "pretokenizers"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(split, "pattern"),
                                                       "Regex")),
                     "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                     "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+");
    assert_json_eq(json_object_get(tok, "post_processor"),
                   "{\"type\": \"Sequence\", \"processors\": ["
                   " {\"type\": \"ByteLevel\", \"add_prefix_space\": false,"
                   "  \"trim_offsets\": false, \"use_regex\": false},"
                   " {\"type\": \"TemplateProcessing\","
                   "  \"single\": [{\"SpecialToken\": {\"id\": \"<tool>\", \"type_id\": 0}},"
                   "              {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}],"
                   "  \"pair\": [{\"SpecialToken\": {\"id\": \"<tool>\", \"type_id\": 0}},"
                   "            {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}},"
                   "            {\"SpecialToken\": {\"id\": \"<tool>\", \"type_id\": 1}},"
                   "            {\"Sequence\": {\"id\": \"B\", \"type_id\": 1}}],"
                   "  \"special_tokens\": {\"<tool>\": {\"id\": \"<tool>\", \"ids\": [7],"
                   "                                  \"tokens\": [\"<tool>\"]}}}]}");
    ck_assert_str_eq(json_string_value(json_object_get(cfg, "bos_token")), "<tool>");
    ck_assert(json_is_true(json_object_get(cfg, "add_bos_token")));
    json_decref(tok);
    json_decref(cfg);
}
END_TEST

/* llama.cpp's fallback chain for "default" (and for a file without a pre name): four Splits. */
START_TEST(default_pre_is_four_splits)
{
    struct spec s = base();
    s.pre = NULL;
    json_t *tok, *cfg;
    struct lms_error err;
    ck_assert_int_eq(rebuild(&s, &tok, &cfg, &err), LMS_OK);
    const json_t *seq = json_object_get(json_object_get(tok, "pre_tokenizer"), "pretokenizers");
    ck_assert_uint_eq(json_array_size(seq), 5);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(json_array_get(seq, 3),
                                                                       "pattern"), "Regex")),
                     "[0-9][0-9][0-9]");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(seq, 4), "type")),
                     "ByteLevel");
    json_decref(tok);
    json_decref(cfg);
}
END_TEST

static void expect(const struct spec *s, enum lms_status want, const char *needle)
{
    json_t *tok = (json_t *)1, *cfg = (json_t *)1;
    struct lms_error err;
    ck_assert_int_eq(rebuild(s, &tok, &cfg, &err), want);
    ck_assert_ptr_null(tok);
    ck_assert_ptr_null(cfg);
    ck_assert_msg(strstr(err.msg, needle) && strstr(err.msg, "'t.gguf'") && !strchr(err.msg, '\n'),
                  "message '%s' lacks '%s'", err.msg, needle);
}

START_TEST(refuses_other_models_and_pre_tokenizers)
{
    struct spec s = base();
    s.model = "llama";
    expect(&s, LMS_EUNSUPPORTED, "tokenizer.ggml.model 'llama' is not rebuilt");
    s = base();
    s.pre = "deepseek-llm";
    expect(&s, LMS_EUNSUPPORTED, "pre-tokenizer 'deepseek-llm' is not rebuilt");
}
END_TEST

START_TEST(refuses_inconsistent_vocabularies)
{
    struct spec s = base();
    s.merges[1] = "\xc4\xa0 c";
    expect(&s, LMS_EFORMAT, "merge 1 ('\xc4\xa0 c') names a token that is not in the vocabulary");
    s = base();
    s.merges[0] = "b a"; /* both known, "ba" is not */
    expect(&s, LMS_EFORMAT, "merge 0 ('b a') names a token");
    s = base();
    s.merges[2] = "ab";
    expect(&s, LMS_EFORMAT, "merge 2 is not two tokens separated by a space");
    s = base();
    s.n_types = 8;
    expect(&s, LMS_EFORMAT, "tokenizer.ggml.token_type has 8 entries for 9 tokens");
    s = base();
    s.tokens[4] = "a";
    expect(&s, LMS_EFORMAT, "token 4 repeats token 1");
    s = base();
    s.tokens[2] = "\xff";
    expect(&s, LMS_EFORMAT, "token 2 is not valid UTF-8");
    s = base();
    s.eos = 9;
    expect(&s, LMS_EFORMAT, "tokenizer.ggml.eos_token_id is not the id of one of the 9 tokens");
    s = base();
    s.add_bos = 1;
    expect(&s, LMS_EFORMAT, "add_bos_token without a tokenizer.ggml.bos_token_id");
    s = base();
    s.n_tokens = 0;
    s.n_types = 0;
    expect(&s, LMS_EFORMAT, "no tokenizer.ggml.tokens");
    s = base();
    s.chat_template = "\xc3";
    expect(&s, LMS_EFORMAT, "tokenizer.chat_template is not valid UTF-8");
}
END_TEST

START_TEST(none_is_no_tokenizer)
{
    struct spec s = base();
    struct lms_gguf g;
    uint8_t *buf;
    build(&s, &g, &buf);
    ck_assert(lms__gguf_has_tokenizer(&g));
    lms_gguf_release(&g);
    free(buf);
    s.model = "none";
    build(&s, &g, &buf);
    ck_assert(!lms__gguf_has_tokenizer(&g));
    lms_gguf_release(&g);
    free(buf);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("gguf_tokenizer");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, qwen2_vocab_golden);
    tcase_add_test(tc, llama_bpe_with_bos_golden);
    tcase_add_test(tc, default_pre_is_four_splits);
    tcase_add_test(tc, refuses_other_models_and_pre_tokenizers);
    tcase_add_test(tc, refuses_inconsistent_vocabularies);
    tcase_add_test(tc, none_is_no_tokenizer);
    suite_add_tcase(s, tc);
    return s;
}
