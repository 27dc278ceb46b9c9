/* lmsurgeon: GGUF files, llama.cpp's single-file model format (formats/layouts/gguf.c).
 *
 * The writer names tensors and metadata as llama.cpp's converter does for the llama (Llama,
 * Mistral), phi3, qwen2 and qwen3 architectures, permutes the rows of Q and K for llama, fuses
 * q/k/v and gate/up for phi3, and writes the tokenizer as tokenizer.ggml.* when the model
 * carries a byte-level BPE tokenizer.json. The reader undoes all of it (F32, F16, BF16 as views
 * over the mapped file, Q8_0 dequantised). */
#ifndef LMS_GGUF_H_PUBLIC
#define LMS_GGUF_H_PUBLIC

#include <stdbool.h>

#include "lms/format.h"

/* The writer's own options (lms_write_opts.format_opts, format_opts_for "gguf"). */
struct lms_gguf_write_opts {
    bool q8_0; /* matrices as Q8_0 (1-D tensors stay F32); opts->dtype is then ignored */
};

/* The "gguf" format. */
extern const struct lms_format lms_format_gguf;

#endif
