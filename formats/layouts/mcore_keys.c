/* The Megatron-Core key table: which torch_dist keys under "decoder.layers." are straight copies
 * of one IR role, and which modules carry an _extra_state item. The global and fused key names
 * (LMS_MCORE_* in nemo_impl.h) are spelled once too; the two view directions, mcore_views_write.c
 * and mcore_views_read.c, build and split the fused tensors from them. */
#include "formats/layouts/nemo_impl.h"

const char *const lms__nemo_extra_state_modules[] = {
    "self_attention.linear_qkv", "self_attention.core_attention", "self_attention.linear_proj",
    "mlp.linear_fc1",            "mlp.linear_fc2",                "self_attention.q_layernorm",
    "self_attention.k_layernorm",
};

const struct lms__nemo_layer_key lms__nemo_layer_keys[] = {
    {LMS_MCORE_ATTN_NORM, LMS_ROLE_ATTN_NORM},
    {LMS_MCORE_Q_NORM, LMS_ROLE_Q_NORM},
    {LMS_MCORE_K_NORM, LMS_ROLE_K_NORM},
    {LMS_MCORE_PROJ, LMS_ROLE_O},
    {LMS_MCORE_MLP_NORM, LMS_ROLE_MLP_NORM},
    {LMS_MCORE_FC2, LMS_ROLE_DOWN},
};
