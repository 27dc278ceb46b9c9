/* A Hugging Face tokenizer rebuilt from the tokenizer.ggml.* keys of a GGUF file written by
 * another tool (library-internal; the gguf layout and the tokenizer loader use it).
 *
 * Only llama.cpp's "gpt2" model (byte-level BPE) is rebuilt, and only for the pre-tokenizer names
 * whose regexes an HF Split pre-tokenizer can state: "qwen2", "llama-bpe", "gpt-2" and "default"
 * (see gguf_tokenizer.c). Everything else is refused with LMS_EUNSUPPORTED, an inconsistent
 * vocabulary (a merge naming an unknown token, a token_type array of another length, a repeated
 * token, ...) with LMS_EFORMAT; callers that only carry the tokenizer along turn both into a
 * warning. */
#ifndef LMS_FORMATS_LAYOUTS_GGUF_TOKENIZER_H
#define LMS_FORMATS_LAYOUTS_GGUF_TOKENIZER_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "formats/codecs/gguf.h"
#include "lms/error.h"

/* True when g has a tokenizer worth rebuilding or warning about: tokenizer.ggml.model is present
 * and is not "none" (what llama.cpp and the writer use for a model without a tokenizer). */
bool lms__gguf_has_tokenizer(const struct lms_gguf *g);

/* The tokenizer.json and tokenizer_config.json of g's tokenizer.ggml.* keys. label names the
 * file in errors; model_max_length goes into the config when positive (the context length).
 * OUT: *tok and *cfg, new references (both NULL on failure). */
enum lms_status lms__gguf_tokenizer_rebuild(const struct lms_gguf *g, const char *label,
                                            int64_t model_max_length, json_t **tok,
                                            json_t **cfg, struct lms_error *err);

#endif
