/* lmsurgeon: byte-level BPE tokenizer compatible with Hugging Face tokenizer.json.
 *
 * Covers the Qwen2/Qwen2.5/Qwen3, Llama-3.x and GPT-2 families: added-token split, NFC (Unicode
 * 9.0), the Split pre-tokenizer patterns of those families (recognised by their exact text; no
 * general regex engine), ByteLevel mapping, BPE with merge ranks and ignore_merges,
 * TemplateProcessing post-processor, ByteLevel decode. Ids are identical to the reference
 * `tokenizers` library. Anything outside the supported subset is refused at load time with an error
 * naming the field.
 *
 * A loaded tokenizer is immutable and may be shared by threads; each thread encodes through its
 * own struct lms_tokenizer_ctx (scratch buffers and a word cache). */
#ifndef LMS_TOKENIZER_H
#define LMS_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lms/error.h"

struct lms_tokenizer;     /* opaque, immutable after load */
struct lms_tokenizer_ctx; /* per-thread encoding state */

/* Growable id array filled by lms_tokenizer_encode (appends). */
struct lms_ids {
    int32_t *data; /* owned, lms_malloc'd */
    size_t len;    /* ids */
    size_t cap;    /* capacity in ids */
};
void lms_ids_release(struct lms_ids *ids); /* frees data, zeroes the struct */

/* Loads a tokenizer. path is a tokenizer.json file or a directory holding tokenizer.json (and
 * optionally tokenizer_config.json, read for eos/bos/pad token names), or a GGUF file: the
 * tokenizer files it carries (lmsurgeon.file.*), else the tokenizer rebuilt from its
 * tokenizer.ggml.* keys (byte-level BPE only; any other is LMS_EUNSUPPORTED). OUT: *out, free with
 * lms_tokenizer_free. Errors: LMS_EIO (unreadable), LMS_EFORMAT (bad JSON, bad merges,
 * inconsistent vocab), LMS_EUNSUPPORTED (model type, normalizer, pre-tokenizer, pattern,
 * post-processor or decoder outside the supported subset), each naming the field. */
enum lms_status lms_tokenizer_load(const char *path, struct lms_tokenizer **out,
                                   struct lms_error *err);
/* Same from the text of a tokenizer.json (label names it in messages) and, optionally, the text
 * of a tokenizer_config.json (config may be NULL). */
enum lms_status lms_tokenizer_load_buffer(const char *label, const char *json, size_t json_len,
                                          const char *config, size_t config_len,
                                          struct lms_tokenizer **out, struct lms_error *err);
void lms_tokenizer_free(struct lms_tokenizer *tk); /* NULL does nothing */

/* Full vocabulary length including added tokens (what HF len(tokenizer) returns): the
 * largest id + 1. */
int64_t lms_tokenizer_vocab_size(const struct lms_tokenizer *tk);
/* Ids of tokenizer_config.json's eos_token / bos_token / pad_token; -1 when absent. */
int32_t lms_tokenizer_eos_id(const struct lms_tokenizer *tk);
int32_t lms_tokenizer_bos_id(const struct lms_tokenizer *tk);
int32_t lms_tokenizer_pad_id(const struct lms_tokenizer *tk);
/* Id of a token string (vocab key or added-token content); -1 if unknown. */
int32_t lms_tokenizer_token_to_id(const struct lms_tokenizer *tk, const char *token,
                                  size_t token_len);

/* Per-thread state. OUT: *out. The tokenizer must outlive it. */
enum lms_status lms_tokenizer_ctx_new(const struct lms_tokenizer *tk,
                                      struct lms_tokenizer_ctx **out, struct lms_error *err);
void lms_tokenizer_ctx_free(struct lms_tokenizer_ctx *ctx); /* NULL does nothing */

enum {
    LMS_TOK_ADD_SPECIAL = 1 << 0, /* apply the post-processor (Llama-3 BOS), as HF's default */
};

/* Encodes text[0..text_len) (UTF-8) and appends the ids to out. flags: LMS_TOK_*.
 * LMS_EFORMAT for invalid UTF-8 (the message gives the byte offset), LMS_ENOMEM. */
enum lms_status lms_tokenizer_encode(struct lms_tokenizer_ctx *ctx, const char *text,
                                     size_t text_len, unsigned flags, struct lms_ids *out,
                                     struct lms_error *err);

/* Decodes ids into *out (NUL-terminated, lms_malloc'd; caller lms_frees) of length
 * *out_len. Invalid UTF-8 in the byte stream becomes U+FFFD as in the reference; special added
 * tokens are dropped when skip_special. LMS_EFORMAT for an id the tokenizer does not have: ids
 * are data (read from the user or a dataset), like the text encode takes. */
enum lms_status lms_tokenizer_decode(const struct lms_tokenizer *tk, const int32_t *ids,
                                     size_t n_ids, bool skip_special, char **out,
                                     size_t *out_len, struct lms_error *err);

#endif
