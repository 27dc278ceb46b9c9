/* libFuzzer target: the tokenizer's encode and decode on arbitrary bytes, with fixed valid
 * tokenizers (the fixture Qwen2-style tokenizer, and the same vocabulary with the Llama-3 and
 * GPT-2 pre-tokenizers, from tests/fuzz/tokenizers/, whose path the build passes in). The input
 * is encoded as text (invalid UTF-8 must give an error, never a crash), the ids are decoded back
 * (for valid UTF-8 without a normalizer, decode(encode(x)) must equal x), and the input read as
 * little-endian ids is decoded too. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lms/alloc.h"
#include "lms/tokenizer.h"

#ifndef LMS_FUZZ_TOKENIZERS
#error "the build passes LMS_FUZZ_TOKENIZERS, the folder of the fixed tokenizers"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const names[] = {"qwen2.json", "llama3.json", "gpt2.json"};
enum { N_TK = sizeof(names) / sizeof(names[0]) };
static struct lms_tokenizer *tks[N_TK];
static struct lms_tokenizer_ctx *ctxs[N_TK];
static bool lossless[N_TK]; /* no normalizer: decode(encode(x)) == x for valid UTF-8 */

static void load_all(void)
{
    for (int i = 0; i < N_TK; i++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", LMS_FUZZ_TOKENIZERS, names[i]);
        struct lms_error err;
        if (lms_tokenizer_load(path, &tks[i], &err) != LMS_OK ||
            lms_tokenizer_ctx_new(tks[i], &ctxs[i], &err) != LMS_OK) {
            fprintf(stderr, "fuzz_tokenize_encode: %s\n", err.msg);
            abort();
        }
        lossless[i] = i > 0;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!tks[0])
        load_all();
    struct lms_error err;
    int which = size ? data[0] % N_TK : 0;
    const char *text = (const char *)data + (size ? 1 : 0);
    size_t len = size ? size - 1 : 0;
    struct lms_tokenizer *tk = tks[which];
    struct lms_ids ids = {0};
    enum lms_status st = lms_tokenizer_encode(ctxs[which], text, len, 0, &ids, &err);
    if (st == LMS_OK) {
        char *out = NULL;
        size_t out_len = 0;
        if (lms_tokenizer_decode(tk, ids.data, ids.len, false, &out, &out_len, &err) != LMS_OK)
            abort(); /* ids the tokenizer made must decode */
        if (lossless[which] && (out_len != len || memcmp(out, text, len) != 0)) {
            fprintf(stderr, "fuzz_tokenize_encode: %s does not round-trip\n", names[which]);
            abort();
        }
        lms_free(out);
        ids.len = 0;
        lms_tokenizer_encode(ctxs[which], text, len, LMS_TOK_ADD_SPECIAL, &ids, &err);
    }
    lms_ids_release(&ids);
    /* the input as ids, some out of range */
    size_t n = len / 4;
    if (n) {
        int32_t *raw = lms_malloc(n * sizeof(int32_t));
        if (raw) {
            memcpy(raw, text, n * sizeof(int32_t));
            int64_t vocab = lms_tokenizer_vocab_size(tk);
            for (size_t i = 0; i < n; i++)
                if (raw[i] >= 0 && (raw[i] & 1))
                    raw[i] = (int32_t)(raw[i] % (vocab > 0 ? vocab : 1));
            char *out = NULL;
            size_t out_len;
            if (lms_tokenizer_decode(tk, raw, n, (len & 1) != 0, &out, &out_len, &err) == LMS_OK)
                lms_free(out);
            lms_free(raw);
        }
    }
    return 0;
}
