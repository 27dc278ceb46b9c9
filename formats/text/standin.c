/* The byte-level stand-in tokenizer of lmsurgeon init (include/lms/init.h): for a model made
 * without its tokenizer, a tokenizer.json that every byte-level reader accepts (this tool's and
 * Hugging Face `tokenizers`) and that encodes any text: a BPE whose vocabulary is the 256
 * ByteLevel symbols, id b for byte b, with no merges, so a text encodes to its UTF-8 bytes; plus
 * one special token, id 256, for end of text and padding. */
#include <limits.h>
#include <stdio.h>

#include "lms/init.h"
#include "lms/json.h"
#include "lms/outdir.h"

/* The printable character ByteLevel shows for byte b, as UTF-8 into s (3 bytes and a NUL): the
 * printable Latin-1 bytes stand for themselves, the others (controls, space, 0x7f-0xa0, the
 * soft hyphen) for U+0100 upwards in byte order. */
static void byte_symbol(int b, char *s)
{
    bool printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
    unsigned cp;
    if (printable) {
        cp = (unsigned)b;
    } else {
        unsigned k = 0; /* index among the non-printable bytes below b */
        for (int x = 0; x < b; x++)
            k += !((x >= 0x21 && x <= 0x7e) || (x >= 0xa1 && x <= 0xac) || (x >= 0xae));
        cp = 256 + k;
    }
    if (cp < 0x80) {
        s[0] = (char)cp, s[1] = 0;
    } else {
        s[0] = (char)(0xc0 | (cp >> 6)), s[1] = (char)(0x80 | (cp & 0x3f)), s[2] = 0;
    }
}

static json_t *byte_level(bool prefix_space, bool trim_offsets, bool use_regex)
{
    return json_pack("{s:s,s:b,s:b,s:b}", "type", "ByteLevel", "add_prefix_space", prefix_space,
                     "trim_offsets", trim_offsets, "use_regex", use_regex);
}

/* The special token's entry: in tokenizer.json's added_tokens (with_id) or in
 * tokenizer_config.json's added_tokens_decoder (keyed by the id). */
static json_t *special_token(bool with_id)
{
    json_t *t = json_object();
    if (t && with_id && json_object_set_new(t, "id", json_integer(LMS_STANDIN_N_TOKENS - 1))) {
        json_decref(t);
        return NULL;
    }
    json_t *rest = json_pack("{s:s,s:b,s:b,s:b,s:b,s:b}", "content", LMS_STANDIN_EOS,
                             "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0,
                             "special", 1);
    if (!t || !rest || json_object_update(t, rest)) {
        json_decref(t);
        t = NULL;
    }
    json_decref(rest);
    return t;
}

static json_t *tokenizer_json(void)
{
    json_t *vocab = json_object();
    for (int b = 0; vocab && b < 256; b++) {
        char sym[4];
        byte_symbol(b, sym);
        if (json_object_set_new(vocab, sym, json_integer(b))) {
            json_decref(vocab);
            vocab = NULL;
        }
    }
    json_t *added = special_token(true);
    return json_pack(
        "{s:s,s:n,s:n,s:[o],s:n,s:o,s:o,s:o,s:{s:s,s:n,s:n,s:n,s:n,s:b,s:b,s:b,s:o,s:[]}}",
        "version", "1.0", "truncation", "padding", "added_tokens", added, "normalizer",
        "pre_tokenizer", byte_level(false, true, true), "post_processor",
        byte_level(true, false, true), "decoder", byte_level(true, true, true), "model", "type",
        "BPE", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
        "fuse_unk", 0, "byte_fallback", 0, "ignore_merges", 0, "vocab", vocab, "merges");
}

static json_t *tokenizer_config(int64_t max_length)
{
    char id[16];
    snprintf(id, sizeof id, "%d", LMS_STANDIN_N_TOKENS - 1);
    json_t *c = json_pack("{s:s,s:n,s:s,s:s,s:n,s:b,s:b,s:{s:o}}", "tokenizer_class",
                          "PreTrainedTokenizerFast", "bos_token", "eos_token", LMS_STANDIN_EOS,
                          "pad_token", LMS_STANDIN_EOS, "unk_token", "add_prefix_space", 0,
                          "clean_up_tokenization_spaces", 0, "added_tokens_decoder", id,
                          special_token(false));
    if (c && max_length > 0)
        json_object_set_new(c, "model_max_length", json_integer(max_length));
    return c;
}

static enum lms_status write_json(const char *dir, const char *name, json_t *v,
                                  struct lms_error *err)
{
    char path[PATH_MAX];
    if (!v)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path) {
        json_decref(v);
        return lms_error_set(err, LMS_EINVAL, "path too long: '%s'", dir);
    }
    struct lms_buf_str s = {0};
    enum lms_status rc = lms_json_dump(v, LMS_JSON_INDENT2, &s, err);
    if (!rc)
        rc = lms_buf_str_append(&s, "\n", 1, err);
    if (!rc)
        rc = lms_write_file(path, s.data, s.len, err);
    lms_buf_str_release(&s);
    json_decref(v);
    return rc;
}

enum lms_status lms_standin_tokenizer_write(const char *dir, int64_t max_length,
                                            struct lms_error *err)
{
    enum lms_status rc = write_json(dir, "tokenizer.json", tokenizer_json(), err);
    if (!rc)
        rc = write_json(dir, "tokenizer_config.json", tokenizer_config(max_length), err);
    return rc;
}
