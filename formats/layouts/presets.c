/* The model presets of lmsurgeon init (include/lms/init.h): user-facing names for the NeMo 2.7.3
 * model-config classes this tool already knows (nemo_presets.c), turned into a Hugging Face
 * config.json by the same translation a NeMo checkpoint's config takes (nemo_config.c).
 *
 * A NeMo class fixes the architecture: layers, widths, heads, groups, head size, norm epsilon,
 * RoPE base and Llama 3.1 scaling, tying, biases, the Mistral window. What it leaves unset is
 * filled here from the Hugging Face model the name refers to: the vocabulary of the Llama,
 * Code Llama and Mistral classes (NeMo takes it from the tokenizer). Everything else stays the
 * class's, tying included: NeMo's Qwen2.5 0.5B and 1.5B classes do not tie the embeddings
 * although those Hub models do. max_position_embeddings is the class's (or its seq_length). */
#include <string.h>

#include "formats/layouts/nemo_impl.h"
#include "lms/init.h"

static const struct {
    const char *name;
    const char *cls;
    int64_t vocab; /* 0: the class's */
} presets[] = {
    {"qwen3-0.6b", "Qwen3Config600M", 0},
    {"qwen3-1.7b", "Qwen3Config1P7B", 0},
    {"qwen3-4b", "Qwen3Config4B", 0},
    {"qwen3-8b", "Qwen3Config8B", 0},
    {"qwen3-14b", "Qwen3Config14B", 0},
    {"qwen3-32b", "Qwen3Config32B", 0},
    {"qwen2.5-0.5b", "Qwen25Config500M", 0},
    {"qwen2.5-1.5b", "Qwen25Config1P5B", 0},
    {"qwen2.5-3b", "Qwen25Config3B", 0},
    {"qwen2.5-7b", "Qwen25Config7B", 0},
    {"qwen2.5-14b", "Qwen25Config14B", 0},
    {"qwen2.5-32b", "Qwen25Config32B", 0},
    {"qwen2.5-72b", "Qwen25Config72B", 0},
    {"qwen2-0.5b", "Qwen2Config500M", 0},
    {"qwen2-1.5b", "Qwen2Config1P5B", 0},
    {"qwen2-7b", "Qwen2Config7B", 0},
    {"qwen2-72b", "Qwen2Config72B", 0},
    {"llama-2-7b", "Llama2Config7B", 32000},
    {"llama-2-13b", "Llama2Config13B", 32000},
    {"llama-2-70b", "Llama2Config70B", 32000},
    {"llama-3-8b", "Llama3Config8B", 128256},
    {"llama-3-70b", "Llama3Config70B", 128256},
    {"llama-3.1-8b", "Llama31Config8B", 128256},
    {"llama-3.1-70b", "Llama31Config70B", 128256},
    {"llama-3.1-405b", "Llama31Config405B", 128256},
    {"llama-3.2-1b", "Llama32Config1B", 128256},
    {"llama-3.2-3b", "Llama32Config3B", 128256},
    {"codellama-7b", "CodeLlamaConfig7B", 32016},
    {"codellama-13b", "CodeLlamaConfig13B", 32016},
    {"codellama-34b", "CodeLlamaConfig34B", 32000},
    {"mistral-7b", "MistralConfig7B", 32000},
    {"mistral-nemo-12b", "MistralNeMoConfig12B", 131072},
    {"mistral-small-24b", "MistralSmall3Config24B", 131072},
    {"mistral-large-123b", "MistralNeMoConfig123B", 32768},
};
#define N_PRESETS (sizeof(presets) / sizeof(presets[0]))

static int preset_index(const char *name)
{
    for (size_t i = 0; i < N_PRESETS; i++)
        if (strcmp(presets[i].name, name) == 0)
            return (int)i;
    return -1;
}

const char *lms_preset_name(size_t i)
{
    return i < N_PRESETS ? presets[i].name : NULL;
}

const char *lms_preset_nemo_class(const char *name)
{
    int i = preset_index(name);
    return i < 0 ? NULL : presets[i].cls;
}

enum lms_status lms_preset_hf_config(const char *name, json_t **out, struct lms_error *err)
{
    int i = preset_index(name);
    if (i < 0)
        return lms_error_set(err, LMS_EINVAL, "unknown preset '%s'", name);
    json_t *f = lms__nemo_preset_fields(presets[i].cls);
    if (!f)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    if (presets[i].vocab && json_object_set_new(f, "vocab_size", json_integer(presets[i].vocab))) {
        json_decref(f);
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    /* the translation reads tying and a missing vocabulary from the weights; a preset has
     * none, so both come from the class and the table above */
    struct lms_dcp none;
    memset(&none, 0, sizeof none);
    json_t *c = NULL;
    enum lms_status rc = lms__nemo_hf_from_fields(f, presets[i].cls, &none, &c, err);
    if (!rc) {
        bool tie = json_is_true(json_object_get(f, "share_embeddings_and_output_weights"));
        if (json_object_set_new(c, "tie_word_embeddings", json_boolean(tie)) ||
            json_object_set_new(c, "hidden_act", json_string("silu")) ||
            json_object_set_new(c, "initializer_range", json_real(0.02)))
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    json_decref(f);
    if (rc) {
        json_decref(c);
        return lms_error_wrap(err, "preset '%s': ", name);
    }
    *out = c;
    return LMS_OK;
}
