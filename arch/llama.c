/* Llama (LlamaForCausalLM): the plain block; attention_bias adds q/k/v and o biases, and
 * rope_scaling llama3 is NeMo's Llama 3.1 class. */
#include "arch/families.h"

static const struct lms_arch_nemo_class nemo_classes[] = {
    {"Llama31", "Llama31Config"}, {"Llama32", "Llama31Config"}, {"Llama3", "Llama3Config"},
    {"Llama", "LlamaConfig"},     {"CodeLlama", "LlamaConfig"}, {NULL, NULL},
};

const struct lms_arch_desc lms__arch_llama = {
    .family = LMS_FAMILY_LLAMA,
    .hf_class = "LlamaForCausalLM",
    .model_type = "llama",
    .norm = LMS_NORM_RMS,
    .act = LMS_ACT_SWIGLU,
    .bias = LMS_BIAS_FROM_CONFIG,
    .window = LMS_WINDOW_NEVER,
    .nemo_module = "nemo.collections.llm.gpt.model.llama",
    .nemo_model_cls = "LlamaModel",
    .nemo_config_cls = "LlamaConfig",
    .nemo_config_cls_llama3 = "Llama31Config",
    .nemo_classes = nemo_classes,
    .nemo_llama3_rope_prefix = "Llama31",
    .nemo_unnamed = true,
    .nemo_norm_eps = 1e-5,
    .nemo_rope_theta = 10000.0,
    .nemo_attention_bias = true,
    .bridge_provider = "llama.llama_provider.LlamaModelProvider",
    .mcore_guess = true,
    .label = "Llama",
    .gguf_arch = "llama",
    .gguf_permute_qk = true,
};
