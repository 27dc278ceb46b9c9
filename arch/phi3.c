/* Phi-3 (Phi3ForCausalLM): Llama's block (RMSNorm, SwiGLU, RoPE, no biases) whose Hugging Face
 * checkpoint stores q/k/v as one qkv_proj ([q; k; v] rows) and gate/up as one gate_up_proj
 * ([gate; up] rows); the sliding window applies whenever the config sets one. NeMo's classes
 * are Phi3Config / Phi3ConfigMini (module phi3mini, the GPT model); Megatron-Bridge gets the
 * generic GPT provider. llama.cpp calls it "phi3". */
#include "arch/families.h"

static const struct lms_arch_fused hf_fused[] = {
    {"model.layers.%lld.self_attn.qkv_proj.weight", {LMS_ROLE_Q, LMS_ROLE_K, LMS_ROLE_V}, 3},
    {"model.layers.%lld.mlp.gate_up_proj.weight", {LMS_ROLE_GATE, LMS_ROLE_UP}, 2},
};

/* llama.cpp's phi3 keeps the same fusions: attn_qkv ([q; k; v]) and ffn_up ([gate; up], the
 * half its SwiGLU gates first) */
static const struct lms_arch_fused gguf_fused[] = {
    {"blk.%lld.attn_qkv.weight", {LMS_ROLE_Q, LMS_ROLE_K, LMS_ROLE_V}, 3},
    {"blk.%lld.ffn_up.weight", {LMS_ROLE_GATE, LMS_ROLE_UP}, 2},
};

static const struct lms_arch_nemo_class nemo_classes[] = {
    {"Phi3", NULL}, /* NeMo's Phi-3 classes set no structural defaults this tool relies on */
    {NULL, NULL},
};

const struct lms_arch_desc lms__arch_phi3 = {
    .family = LMS_FAMILY_PHI3,
    .hf_class = "Phi3ForCausalLM",
    .model_type = "phi3",
    .norm = LMS_NORM_RMS,
    .act = LMS_ACT_SWIGLU,
    .bias = LMS_BIAS_NONE,
    .window = LMS_WINDOW_WHEN_SET,
    .hf_fused = hf_fused,
    .n_hf_fused = 2,
    .nemo_module = "nemo.collections.llm.gpt.model.phi3mini",
    .nemo_model_cls = "Phi3Model",
    .nemo_config_cls = "Phi3Config",
    .nemo_classes = nemo_classes,
    .nemo_norm_eps = 1e-5,
    .nemo_rope_theta = 10000.0,
    .bridge_provider = "gpt_provider.GPTModelProvider",
    .label = "Phi3",
    .gguf_arch = "phi3", /* rotary halves as Hugging Face has them: no q/k permutation */
    .gguf_fused = gguf_fused,
    .n_gguf_fused = 2,
};
