/* lmsurgeon: the architecture families, one descriptor each (arch/).
 *
 * Everything that tells one family from another lives in its descriptor: the optional roles it
 * has (biases, q/k norms, a sliding window), its norm and activation, the Hugging Face class and
 * model_type, the Hugging Face names of its tensors (some stored fused, several roles in one
 * tensor), and how NeMo and Megatron name it (config classes, Bridge provider, the defaults of
 * its config class). The layouts and surgery read the descriptor; adding a family is adding a
 * descriptor (and the enum entry in lms/ir.h). Every family maps onto Megatron-Core's GPT model,
 * whose key names (the same for every family) are here too. */
#ifndef LMS_ARCH_H
#define LMS_ARCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lms/ir.h"

enum lms_norm_kind {
    LMS_NORM_RMS, /* RMSNorm with a weight, no bias */
};

enum lms_act_kind {
    LMS_ACT_SWIGLU, /* down(silu(gate x) * up x) */
};

/* When the attention projections carry biases. */
enum lms_bias_rule {
    LMS_BIAS_FROM_CONFIG, /* config.json's attention_bias: q/k/v and o biases (Llama) */
    LMS_BIAS_QKV,         /* q/k/v biases always, no o bias (Qwen2) */
    LMS_BIAS_NONE,        /* none; attention_bias true is refused */
};

/* When config.json's sliding_window applies. */
enum lms_window_rule {
    LMS_WINDOW_NEVER,    /* not read */
    LMS_WINDOW_WHEN_SET, /* whenever it is set (Mistral) */
    LMS_WINDOW_FLAG,     /* only with use_sliding_window true (Qwen) */
};

/* Roles a Hugging Face checkpoint stores as one tensor: the parts' rows joined in this order. */
struct lms_arch_fused {
    const char *hf_name; /* per-layer pattern, %lld the layer */
    enum lms_role parts[3];
    int n_parts;
};

/* A NeMo 2 config class name prefix of a family and the base class whose defaults fill what a
 * class the tool does not know leaves out. */
struct lms_arch_nemo_class {
    const char *prefix;
    const char *base;
};

/* What a surgery cut selects along one tensor axis. */
enum lms_arch_axis {
    LMS_CUT_WHOLE,  /* nothing: kept whole */
    LMS_CUT_HIDDEN, /* the kept hidden channels */
    LMS_CUT_FFN,    /* the kept FFN neurons of the layer */
    LMS_CUT_HEADS,  /* the d rows of each kept query head */
    LMS_CUT_GROUPS, /* the d rows of each kept query group */
    LMS_CUT_COUNT
};

struct lms_arch_desc {
    enum lms_family family;
    const char *hf_class;   /* architectures[0] */
    const char *model_type; /* model_type */
    enum lms_norm_kind norm;
    enum lms_act_kind act;
    bool qk_norm;           /* per-head RMSNorm on q and k */
    enum lms_bias_rule bias;
    enum lms_window_rule window;
    /* Hugging Face tensors holding several roles; the other roles keep the IR's names */
    const struct lms_arch_fused *hf_fused;
    int n_hf_fused;
    /* NeMo 2: nemo.collections.llm.gpt.model.<module>, the model and config classes written */
    const char *nemo_module;
    const char *nemo_model_cls;
    const char *nemo_config_cls;
    const char *nemo_config_cls_llama3; /* the class for llama3 RoPE scaling, or NULL */
    /* config classes read as this family, first matching prefix wins; NULL-terminated */
    const struct lms_arch_nemo_class *nemo_classes;
    const char *nemo_llama3_rope_prefix; /* classes whose RoPE is llama3-scaled, or NULL */
    bool nemo_unnamed;     /* a NeMo checkpoint naming no class is this family */
    /* defaults of the family's config class where a NeMo/Megatron config omits a field */
    int64_t nemo_head_dim; /* 0: hidden / heads */
    double nemo_norm_eps;
    double nemo_rope_theta;
    bool nemo_attention_bias; /* config.json gets attention_bias from add_qkv_bias */
    /* Megatron-Bridge's provider class (after megatron.bridge.models.) */
    const char *bridge_provider;
    /* Megatron-LM saves and NeMo 1 files name no family: one of the families with
     * mcore_guess set is chosen by its q/k norm and q/k/v bias */
    bool mcore_guess;
    const char *label; /* the family in labels of configs that name no class ("Qwen3") */
    /* GGUF (llama.cpp): general.architecture, NULL when the family has no GGUF mapping; and
     * whether llama.cpp's converter interleaves the two rotary halves of each q and k head */
    const char *gguf_arch;
    bool gguf_permute_qk;
    /* tensors llama.cpp stores fused for this family (hf_name holds the GGUF name here,
     * "blk.%lld.attn_qkv.weight"); the other roles keep their one-role GGUF names */
    const struct lms_arch_fused *gguf_fused;
    int n_gguf_fused;
};

/* The descriptor of f (never NULL for a valid enum value). */
const struct lms_arch_desc *lms_arch_desc_of(enum lms_family f);
/* The i-th family's descriptor, NULL past the last. */
const struct lms_arch_desc *lms_arch_desc_at(size_t i);
/* By architectures[0] or by model_type; NULL when no family has it. */
const struct lms_arch_desc *lms_arch_desc_by_hf_class(const char *hf_class);
const struct lms_arch_desc *lms_arch_desc_by_model_type(const char *model_type);
/* The family of a NeMo 2 config class or Bridge provider name ("" = none named); NULL when
 * none. base gets the class whose defaults complete it (NULL when none). */
const struct lms_arch_desc *lms_arch_desc_by_nemo_class(const char *cls, const char **base);
/* The family a checkpoint that names none is read as, from what its tensors show. */
const struct lms_arch_desc *lms_arch_desc_guess(bool qk_norm, bool qkv_bias);

const char *lms_family_hf_class(enum lms_family f); /* "Qwen3ForCausalLM" */

/* The norm and activation as the formats spell them. */
const char *lms_arch_norm_mcore_name(enum lms_norm_kind k); /* "RMSNorm" */
const char *lms_arch_norm_nemo1_name(enum lms_norm_kind k); /* "rmsnorm" */
const char *lms_arch_act_hf_name(enum lms_act_kind k);      /* "silu" */
const char *lms_arch_act_nemo1_name(enum lms_act_kind k);   /* "fast-swiglu" */
const char *lms_arch_act_mcore_func(enum lms_act_kind k);   /* "torch.nn.functional:silu" */
bool lms_arch_act_gated(enum lms_act_kind k);               /* gated_linear_unit / swiglu */

/* The Hugging Face tensor of a role in family d: its name, and when the role is stored fused
 * the fused tensor (*fused, else NULL) and the part it is (*part). False when the name does not
 * fit dst_cap or the role has no name. */
bool lms_arch_hf_name(const struct lms_arch_desc *d, enum lms_role r, int64_t layer,
                      const struct lms_arch_fused **fused, int *part, char *dst, size_t dst_cap);
/* Parses a Hugging Face tensor name of family d: a role (fused NULL) or a fused tensor (*fused
 * set, *role LMS_ROLE_OTHER); false when it is neither. */
bool lms_arch_hf_parse(const struct lms_arch_desc *d, const char *name, enum lms_role *role,
                       const struct lms_arch_fused **fused, int64_t *layer);

/* What selects the rows (dim 0) and columns (dim 1) of a role's tensor when surgery cuts the
 * model (both LMS_CUT_WHOLE for LMS_ROLE_OTHER). */
void lms_arch_role_axes(enum lms_role r, enum lms_arch_axis *rows, enum lms_arch_axis *cols);

/* Megatron-Core's GPT model key names (after the checkpoint's key prefix, "module." for NeMo 2):
 * the global tensors, the per-layer root, and the fused per-layer keys (after
 * LMS_MCORE_LAYERS) that the layouts split and build. */
#define LMS_MCORE_EMBED "embedding.word_embeddings.weight"
#define LMS_MCORE_FINAL_NORM "decoder.final_layernorm.weight"
#define LMS_MCORE_OUTPUT "output_layer.weight"
#define LMS_MCORE_LAYERS "decoder.layers."
#define LMS_MCORE_QKV_WEIGHT "self_attention.linear_qkv.weight"
#define LMS_MCORE_QKV_BIAS "self_attention.linear_qkv.bias"
#define LMS_MCORE_FC1_WEIGHT "mlp.linear_fc1.weight"
#define LMS_MCORE_ATTN_NORM "self_attention.linear_qkv.layer_norm_weight"
#define LMS_MCORE_Q_NORM "self_attention.q_layernorm.weight"
#define LMS_MCORE_K_NORM "self_attention.k_layernorm.weight"
#define LMS_MCORE_PROJ "self_attention.linear_proj.weight"
#define LMS_MCORE_MLP_NORM "mlp.linear_fc1.layer_norm_weight"
#define LMS_MCORE_FC2 "mlp.linear_fc2.weight"

/* Megatron-Core's GPT model: the per-layer keys (after "decoder.layers.") that are a straight
 * copy of one role, and the modules whose _extra_state item every layer carries. */
struct lms_arch_mcore_key {
    const char *key;
    enum lms_role role;
};
#define LMS_ARCH_MCORE_N_LAYER_KEYS 6
extern const struct lms_arch_mcore_key lms_arch_mcore_layer_keys[LMS_ARCH_MCORE_N_LAYER_KEYS];
#define LMS_ARCH_MCORE_N_EXTRA_STATE 7
extern const char *const lms_arch_mcore_extra_state[LMS_ARCH_MCORE_N_EXTRA_STATE];

#endif
