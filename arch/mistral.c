/* Mistral (MistralForCausalLM): Llama's block with a sliding attention window when the config
 * sets one. */
#include "arch/families.h"

static const struct lms_arch_nemo_class nemo_classes[] = {
    {"Mistral", "MistralConfig7B"},
    {NULL, NULL},
};

const struct lms_arch_desc lms__arch_mistral = {
    .family = LMS_FAMILY_MISTRAL,
    .hf_class = "MistralForCausalLM",
    .model_type = "mistral",
    .norm = LMS_NORM_RMS,
    .act = LMS_ACT_SWIGLU,
    .bias = LMS_BIAS_FROM_CONFIG,
    .window = LMS_WINDOW_WHEN_SET,
    .nemo_module = "nemo.collections.llm.gpt.model.mistral",
    .nemo_model_cls = "MistralModel",
    .nemo_config_cls = "MistralConfig7B",
    .nemo_classes = nemo_classes,
    .nemo_norm_eps = 1e-5,
    .nemo_rope_theta = 10000.0,
    .bridge_provider = "mistral.mistral_provider.MistralModelProvider",
    .label = "Mistral",
    .gguf_arch = "llama",
    .gguf_permute_qk = true,
};
