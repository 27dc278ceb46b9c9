/* libFuzzer target: loading a tokenizer.json (lms_tokenizer_load_buffer). The input is the
 * tokenizer.json text, optionally followed by two NUL bytes and a tokenizer_config.json text. An
 * accepted tokenizer encodes a fixed text, decodes every id near both ends of its vocabulary and
 * answers the lookups. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "lms/alloc.h"
#include "lms/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void use_tokenizer(const struct lms_tokenizer *tk)
{
    struct lms_error err;
    struct lms_tokenizer_ctx *ctx;
    struct lms_ids ids = {0};
    static const char text[] = "Hello, world! It's 2024-01-01.\n\n  \t\xc3\xa9t\xc3\xa9 \xe4\xb8\xad"
                               "\xe6\x96\x87 \xf0\x9f\x98\x80 <|endoftext|>";
    if (lms_tokenizer_ctx_new(tk, &ctx, &err) == LMS_OK) {
        lms_tokenizer_encode(ctx, text, sizeof(text) - 1, LMS_TOK_ADD_SPECIAL, &ids, &err);
        lms_tokenizer_encode(ctx, text, sizeof(text) - 1, 0, &ids, &err);
        lms_tokenizer_ctx_free(ctx);
    }
    int64_t vocab = lms_tokenizer_vocab_size(tk);
    int32_t probe[80];
    size_t n = 0;
    for (int64_t i = 0; i < 40 && i < vocab; i++)
        probe[n++] = (int32_t)i;
    for (int64_t i = vocab - 1; i >= 40 && i >= vocab - 40; i--)
        probe[n++] = (int32_t)i;
    for (int pass = 0; pass < 2; pass++) {
        char *out = NULL;
        size_t out_len;
        if (lms_tokenizer_decode(tk, probe, n, pass == 1, &out, &out_len, &err) == LMS_OK)
            lms_free(out);
        out = NULL;
        if (ids.len &&
            lms_tokenizer_decode(tk, ids.data, ids.len, pass == 1, &out, &out_len, &err) == LMS_OK)
            lms_free(out);
    }
    /* token lookups on prefixes of the sample text, some ending inside a UTF-8 sequence */
    for (size_t k = 0; k < sizeof(text); k += 5)
        lms_tokenizer_token_to_id(tk, text, k);
    lms_tokenizer_eos_id(tk);
    lms_tokenizer_bos_id(tk);
    lms_tokenizer_pad_id(tk);
    lms_ids_release(&ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *json = (const char *)data, *config = NULL;
    size_t json_len = size, config_len = 0;
    for (size_t i = 0; i + 1 < size; i++)
        if (data[i] == 0 && data[i + 1] == 0) {
            json_len = i;
            config = json + i + 2;
            config_len = size - i - 2;
            break;
        }
    struct lms_error err;
    struct lms_tokenizer *tk;
    if (lms_tokenizer_load_buffer("tokenizer.json", json, json_len, config, config_len, &tk,
                                  &err) == LMS_OK) {
        use_tokenizer(tk);
        lms_tokenizer_free(tk);
    }
    return 0;
}
