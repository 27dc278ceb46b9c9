/* The Megatron-Core key table: which torch_dist keys under "decoder.layers." are straight copies
 * of one IR role, and which modules carry an _extra_state item. The fused keys (linear_qkv,
 * linear_fc1) are built by the two view directions, mcore_views_write.c and mcore_views_read.c. */
#include "formats/layouts/nemo_impl.h"

const char *const lms__nemo_extra_state_modules[] = {
    "self_attention.linear_qkv", "self_attention.core_attention", "self_attention.linear_proj",
    "mlp.linear_fc1",            "mlp.linear_fc2",                "self_attention.q_layernorm",
    "self_attention.k_layernorm",
};

const struct lms__nemo_layer_key lms__nemo_layer_keys[] = {
    {"self_attention.linear_qkv.layer_norm_weight", LMS_ROLE_ATTN_NORM},
    {"self_attention.q_layernorm.weight", LMS_ROLE_Q_NORM},
    {"self_attention.k_layernorm.weight", LMS_ROLE_K_NORM},
    {"self_attention.linear_proj.weight", LMS_ROLE_O},
    {"mlp.linear_fc1.layer_norm_weight", LMS_ROLE_MLP_NORM},
    {"mlp.linear_fc2.weight", LMS_ROLE_DOWN},
};
