/* Qwen3 (Qwen3ForCausalLM): per-head RMSNorm on q and k, an explicit head_dim (NeMo's class
 * defaults to 128); a sliding window only with use_sliding_window. */
#include "arch/families.h"

static const struct lms_arch_nemo_class nemo_classes[] = {
    {"Qwen3", "Qwen3Config"},
    {NULL, NULL},
};

const struct lms_arch_desc lms__arch_qwen3 = {
    .family = LMS_FAMILY_QWEN3,
    .hf_class = "Qwen3ForCausalLM",
    .model_type = "qwen3",
    .norm = LMS_NORM_RMS,
    .act = LMS_ACT_SWIGLU,
    .qk_norm = true,
    .bias = LMS_BIAS_FROM_CONFIG,
    .window = LMS_WINDOW_FLAG,
    .nemo_module = "nemo.collections.llm.gpt.model.qwen3",
    .nemo_model_cls = "Qwen3Model",
    .nemo_config_cls = "Qwen3Config",
    .nemo_classes = nemo_classes,
    .nemo_head_dim = 128,
    .nemo_norm_eps = 1e-6,
    .nemo_rope_theta = 1000000.0,
    .bridge_provider = "qwen.qwen_provider.Qwen3ModelProvider",
    .mcore_guess = true,
    .label = "Qwen3",
    .gguf_arch = "qwen3",
};
