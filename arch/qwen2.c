/* Qwen2 (Qwen2ForCausalLM, also Qwen2.5): q/k/v biases always, no o bias; a sliding window only
 * with use_sliding_window. */
#include "arch/families.h"

static const struct lms_arch_nemo_class nemo_classes[] = {
    {"Qwen2", "Qwen2Config"}, /* Qwen25Config... too */
    {NULL, NULL},
};

const struct lms_arch_desc lms__arch_qwen2 = {
    .family = LMS_FAMILY_QWEN2,
    .hf_class = "Qwen2ForCausalLM",
    .model_type = "qwen2",
    .norm = LMS_NORM_RMS,
    .act = LMS_ACT_SWIGLU,
    .bias = LMS_BIAS_QKV,
    .window = LMS_WINDOW_FLAG,
    .nemo_module = "nemo.collections.llm.gpt.model.qwen2",
    .nemo_model_cls = "Qwen2Model",
    .nemo_config_cls = "Qwen2Config",
    .nemo_classes = nemo_classes,
    .nemo_norm_eps = 1e-5,
    .nemo_rope_theta = 10000.0,
    .bridge_provider = "qwen.qwen_provider.Qwen2ModelProvider",
    .mcore_guess = true,
    .label = "Qwen2",
    .gguf_arch = "qwen2",
};
