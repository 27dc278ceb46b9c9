/* lmsurgeon: models of random weights, for benchmarks, tests and users without the weights at
 * hand (lmsurgeon init).
 *
 * A random model is an ordinary struct lms_model whose tensors are generated views (ir.h): no
 * weight exists in memory until a writer reads it, so every writer streams it with the memory of
 * its write buffer, in any format, dtype and sharding. The weights follow what Hugging Face's
 * _init_weights does for Llama, Mistral, Qwen2 and Qwen3: every Linear and Embedding weight is
 * normal(0, initializer_range), the embedding row of pad_token_id is zero, biases are zero, and
 * every RMSNorm weight (q/k norms included) is one. */
#ifndef LMS_INIT_H
#define LMS_INIT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "lms/error.h"
#include "lms/ir.h"

struct lms_init_opts {
    uint64_t seed;
    double init_range;    /* std of the weight draws (config initializer_range, 0.02 in HF) */
    enum lms_dtype dtype; /* F32, BF16 or F16: the tensors' and the checkpoint's dtype */
    int64_t pad_row;      /* embedding row that is zero (pad_token_id), or -1 */
    int n_threads;        /* threads a tensor read may use (0: all cores); values never change */
};

/* The stream key of the tensor called name (its Hugging Face name) under seed: the same seed
 * and name give the same weights in every output format. */
uint64_t lms_init_key(uint64_t seed, const char *name);

/* Builds in m (initialised here) the model of arch a with every tensor the arch has, named as in
 * Hugging Face checkpoints, as generated views. m->hf_config is left NULL for the caller. */
enum lms_status lms_model_new_random(const struct lms_arch *a, const struct lms_init_opts *o,
                                     struct lms_model *m, struct lms_error *err);

/* ---- presets (formats/layouts/presets.c) -------------------------------------------------- */

/* The i-th preset name lmsurgeon init knows ("qwen3-8b", ...), NULL past the last. */
const char *lms_preset_name(size_t i);
/* The NeMo 2 config class preset name stands for ("Qwen3Config8B"); NULL for an unknown name. */
const char *lms_preset_nemo_class(const char *name);
/* The Hugging Face config.json object of preset name: the sizes of its NeMo 2.7.3 config
 * class, with what that class leaves unset (the vocabulary of the Llama and Mistral classes,
 * the Hub model's token and position limits) from the model the name refers to. OUT: *out, one
 * reference. Unknown name: LMS_EINVAL naming it. */
enum lms_status lms_preset_hf_config(const char *name, json_t **out, struct lms_error *err);

/* ---- the byte-level stand-in tokenizer (formats/text/standin.c) ------------------------------ */

/* Tokens of the stand-in: the 256 bytes, then its special token (LMS_STANDIN_EOS). */
#define LMS_STANDIN_N_TOKENS 257
#define LMS_STANDIN_EOS "<|endoftext|>"
/* Writes tokenizer.json (a byte-level BPE over the 256 bytes, no merges, with the special
 * token as id 256, end of text and padding) and tokenizer_config.json into the existing
 * directory dir. max_length becomes model_max_length (0: none given). */
enum lms_status lms_standin_tokenizer_write(const char *dir, int64_t max_length,
                                            struct lms_error *err);

#endif
