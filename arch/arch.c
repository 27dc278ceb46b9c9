/* The family registry and what every family shares (include/lms/arch.h). */
#include <stdio.h>
#include <string.h>

#include "arch/families.h"
#include "lms/arch.h"

/* indexed by enum lms_family */
static const struct lms_arch_desc *const descs[] = {
    [LMS_FAMILY_LLAMA] = &lms__arch_llama,
    [LMS_FAMILY_MISTRAL] = &lms__arch_mistral,
    [LMS_FAMILY_QWEN2] = &lms__arch_qwen2,
    [LMS_FAMILY_QWEN3] = &lms__arch_qwen3,
    [LMS_FAMILY_PHI3] = &lms__arch_phi3,
};
#define N_DESCS (sizeof(descs) / sizeof(descs[0]))

const struct lms_arch_desc *lms_arch_desc_of(enum lms_family f)
{
    return (size_t)f < N_DESCS ? descs[f] : descs[0];
}

const struct lms_arch_desc *lms_arch_desc_at(size_t i)
{
    return i < N_DESCS ? descs[i] : NULL;
}

const char *lms_family_hf_class(enum lms_family f)
{
    return lms_arch_desc_of(f)->hf_class;
}

const struct lms_arch_desc *lms_arch_desc_by_hf_class(const char *hf_class)
{
    for (size_t i = 0; i < N_DESCS; i++)
        if (strcmp(descs[i]->hf_class, hf_class) == 0)
            return descs[i];
    return NULL;
}

const struct lms_arch_desc *lms_arch_desc_by_model_type(const char *model_type)
{
    for (size_t i = 0; i < N_DESCS; i++)
        if (strcmp(descs[i]->model_type, model_type) == 0)
            return descs[i];
    return NULL;
}

const struct lms_arch_desc *lms_arch_desc_by_nemo_class(const char *cls, const char **base)
{
    if (base)
        *base = NULL;
    for (size_t i = 0; i < N_DESCS; i++) {
        if (!cls[0] && descs[i]->nemo_unnamed)
            return descs[i];
        for (const struct lms_arch_nemo_class *c = descs[i]->nemo_classes; c && c->prefix; c++)
            if (cls[0] && strncmp(cls, c->prefix, strlen(c->prefix)) == 0) {
                if (base)
                    *base = c->base;
                return descs[i];
            }
    }
    return NULL;
}

/* q/k norms decide first (a q/k-normed model with biases is still read as the q/k-normed
 * family), then the q/k/v bias. */
const struct lms_arch_desc *lms_arch_desc_guess(bool qk_norm, bool qkv_bias)
{
    const struct lms_arch_desc *qk_only = NULL;
    for (size_t i = 0; i < N_DESCS; i++) {
        if (!descs[i]->mcore_guess || descs[i]->qk_norm != qk_norm)
            continue;
        if ((descs[i]->bias == LMS_BIAS_QKV) == qkv_bias)
            return descs[i];
        if (!qk_only)
            qk_only = descs[i];
    }
    return qk_norm && qk_only ? qk_only : lms_arch_desc_of(LMS_FAMILY_LLAMA);
}

const char *lms_arch_norm_mcore_name(enum lms_norm_kind k)
{
    (void)k;
    return "RMSNorm";
}

const char *lms_arch_norm_nemo1_name(enum lms_norm_kind k)
{
    (void)k;
    return "rmsnorm";
}

const char *lms_arch_act_hf_name(enum lms_act_kind k)
{
    (void)k;
    return "silu";
}

const char *lms_arch_act_nemo1_name(enum lms_act_kind k)
{
    (void)k;
    return "fast-swiglu";
}

const char *lms_arch_act_mcore_func(enum lms_act_kind k)
{
    (void)k;
    return "torch.nn.functional:silu";
}

bool lms_arch_act_gated(enum lms_act_kind k)
{
    return k == LMS_ACT_SWIGLU;
}

static bool format_layer_name(const char *pattern, int64_t layer, char *dst, size_t cap)
{
    int n = snprintf(dst, cap, pattern, (long long)layer);
    return n > 0 && (size_t)n < cap;
}

bool lms_arch_hf_name(const struct lms_arch_desc *d, enum lms_role r, int64_t layer,
                      const struct lms_arch_fused **fused, int *part, char *dst, size_t dst_cap)
{
    *fused = NULL;
    *part = 0;
    for (int i = 0; i < d->n_hf_fused; i++)
        for (int p = 0; p < d->hf_fused[i].n_parts; p++)
            if (d->hf_fused[i].parts[p] == r) {
                *fused = &d->hf_fused[i];
                *part = p;
                return format_layer_name(d->hf_fused[i].hf_name, layer, dst, dst_cap);
            }
    return lms_role_hf_name(r, layer, dst, dst_cap);
}

/* The layer number of a "model.layers.N." name (no sign, no leading zeros), or -1. */
static int64_t layer_of_name(const char *name)
{
    static const char prefix[] = "model.layers.";
    if (strncmp(name, prefix, sizeof(prefix) - 1) != 0)
        return -1;
    const char *p = name + sizeof(prefix) - 1;
    if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] >= '0' && p[1] <= '9'))
        return -1;
    int64_t l = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        l = l * 10 + (*p - '0');
        if (l > 4096)
            return -1;
    }
    return l;
}

static bool role_is_fused(const struct lms_arch_desc *d, enum lms_role r)
{
    for (int i = 0; i < d->n_hf_fused; i++)
        for (int p = 0; p < d->hf_fused[i].n_parts; p++)
            if (d->hf_fused[i].parts[p] == r)
                return true;
    return false;
}

bool lms_arch_hf_parse(const struct lms_arch_desc *d, const char *name, enum lms_role *role,
                       const struct lms_arch_fused **fused, int64_t *layer)
{
    *fused = NULL;
    int64_t l = layer_of_name(name);
    char buf[256];
    for (int i = 0; l >= 0 && i < d->n_hf_fused; i++)
        if (format_layer_name(d->hf_fused[i].hf_name, l, buf, sizeof buf) &&
            strcmp(buf, name) == 0) {
            *fused = &d->hf_fused[i];
            *role = LMS_ROLE_OTHER;
            *layer = l;
            return true;
        }
    /* a role this family stores fused is not read from a name of its own */
    enum lms_role r;
    int64_t rl;
    if (!lms_role_from_hf_name(name, &r, &rl) || role_is_fused(d, r))
        return false;
    *role = r;
    *layer = rl;
    return true;
}

/* The slicing table of a structured cut (K_H hidden, K_F neurons, E(.) heads or groups
 * expanded to their d rows): embed, lm_head cols K_H; norms K_H; q rows E(K_head), cols K_H;
 * k, v rows E(K_group), cols K_H; o rows K_H, cols E(K_head); gate, up rows K_F, cols K_H; down
 * rows K_H, cols K_F; biases follow their rows; q/k norms run over d and are never cut. */
static const struct {
    enum lms_arch_axis rows, cols;
} axes[LMS_ROLE_COUNT] = {
    [LMS_ROLE_EMBED] = {LMS_CUT_WHOLE, LMS_CUT_HIDDEN},
    [LMS_ROLE_LM_HEAD] = {LMS_CUT_WHOLE, LMS_CUT_HIDDEN},
    [LMS_ROLE_ATTN_NORM] = {LMS_CUT_HIDDEN, LMS_CUT_WHOLE},
    [LMS_ROLE_MLP_NORM] = {LMS_CUT_HIDDEN, LMS_CUT_WHOLE},
    [LMS_ROLE_FINAL_NORM] = {LMS_CUT_HIDDEN, LMS_CUT_WHOLE},
    [LMS_ROLE_O_BIAS] = {LMS_CUT_HIDDEN, LMS_CUT_WHOLE},
    [LMS_ROLE_Q] = {LMS_CUT_HEADS, LMS_CUT_HIDDEN},
    [LMS_ROLE_Q_BIAS] = {LMS_CUT_HEADS, LMS_CUT_WHOLE},
    [LMS_ROLE_K] = {LMS_CUT_GROUPS, LMS_CUT_HIDDEN},
    [LMS_ROLE_V] = {LMS_CUT_GROUPS, LMS_CUT_HIDDEN},
    [LMS_ROLE_K_BIAS] = {LMS_CUT_GROUPS, LMS_CUT_WHOLE},
    [LMS_ROLE_V_BIAS] = {LMS_CUT_GROUPS, LMS_CUT_WHOLE},
    [LMS_ROLE_O] = {LMS_CUT_HIDDEN, LMS_CUT_HEADS},
    [LMS_ROLE_GATE] = {LMS_CUT_FFN, LMS_CUT_HIDDEN},
    [LMS_ROLE_UP] = {LMS_CUT_FFN, LMS_CUT_HIDDEN},
    [LMS_ROLE_DOWN] = {LMS_CUT_HIDDEN, LMS_CUT_FFN},
    [LMS_ROLE_Q_NORM] = {LMS_CUT_WHOLE, LMS_CUT_WHOLE},
    [LMS_ROLE_K_NORM] = {LMS_CUT_WHOLE, LMS_CUT_WHOLE},
};

void lms_arch_role_axes(enum lms_role r, enum lms_arch_axis *rows, enum lms_arch_axis *cols)
{
    bool known = (unsigned)r < LMS_ROLE_COUNT;
    *rows = known ? axes[r].rows : LMS_CUT_WHOLE;
    *cols = known ? axes[r].cols : LMS_CUT_WHOLE;
}

const char *const lms_arch_mcore_extra_state[LMS_ARCH_MCORE_N_EXTRA_STATE] = {
    "self_attention.linear_qkv", "self_attention.core_attention", "self_attention.linear_proj",
    "mlp.linear_fc1",            "mlp.linear_fc2",                "self_attention.q_layernorm",
    "self_attention.k_layernorm",
};

const struct lms_arch_mcore_key lms_arch_mcore_layer_keys[LMS_ARCH_MCORE_N_LAYER_KEYS] = {
    {LMS_MCORE_ATTN_NORM, LMS_ROLE_ATTN_NORM}, {LMS_MCORE_Q_NORM, LMS_ROLE_Q_NORM},
    {LMS_MCORE_K_NORM, LMS_ROLE_K_NORM},       {LMS_MCORE_PROJ, LMS_ROLE_O},
    {LMS_MCORE_MLP_NORM, LMS_ROLE_MLP_NORM},   {LMS_MCORE_FC2, LMS_ROLE_DOWN},
};
