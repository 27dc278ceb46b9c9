/* The model IR: architecture config, roles and the tensor list (include/lms/ir.h). */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lms/alloc.h"
#include "lms/ir.h"
#include "lms/scratch.h"

/* The short names (model_type) that the fingerprint hashes and messages show; the rest of what
 * a family is lives in its descriptor (arch/). */
static const char *const family_names[] = {
    [LMS_FAMILY_LLAMA] = "llama",
    [LMS_FAMILY_MISTRAL] = "mistral",
    [LMS_FAMILY_QWEN2] = "qwen2",
    [LMS_FAMILY_QWEN3] = "qwen3",
    [LMS_FAMILY_PHI3] = "phi3",
};

const char *lms_family_name(enum lms_family f)
{
    return (size_t)f < sizeof(family_names) / sizeof(family_names[0]) ? family_names[f] : "?";
}

/* Upper bounds far above any real model, so that absurd configs fail before allocation. */
#define MAX_DIM (INT64_C(1) << 24)
#define MAX_LAYERS 4096

enum lms_status lms_arch_validate(const struct lms_arch *a, struct lms_error *err)
{
    const struct {
        const char *name;
        int64_t value, max;
    } dims[] = {
        {"num_hidden_layers", a->n_layers, MAX_LAYERS},
        {"hidden_size", a->hidden, MAX_DIM},
        {"intermediate_size", a->ffn, MAX_DIM * 4},
        {"num_attention_heads", a->n_heads, 65536},
        {"num_key_value_heads", a->n_groups, 65536},
        {"head_dim", a->head_dim, 65536},
        {"vocab_size", a->vocab, INT64_C(1) << 26},
    };
    for (size_t i = 0; i < sizeof(dims) / sizeof(dims[0]); i++)
        if (dims[i].value < 1 || dims[i].value > dims[i].max)
            return lms_error_set(err, LMS_EFORMAT, "%s is %" PRId64 " (expected 1..%" PRId64 ")",
                                 dims[i].name, dims[i].value, dims[i].max);
    if (a->n_heads % a->n_groups)
        return lms_error_set(err, LMS_EFORMAT,
                             "num_attention_heads %" PRId64
                             " is not a multiple of num_key_value_heads %" PRId64,
                             a->n_heads, a->n_groups);
    if (a->head_dim % 2)
        return lms_error_set(err, LMS_EFORMAT, "head_dim %" PRId64 " is odd (RoPE needs pairs)",
                             a->head_dim);
    if (a->padded_vocab < a->vocab || a->padded_vocab > a->vocab + 65536)
        return lms_error_set(err, LMS_EFORMAT,
                             "padded vocabulary %" PRId64 " does not fit vocab_size %" PRId64,
                             a->padded_vocab, a->vocab);
    if (!(a->norm_eps > 0 && a->norm_eps < 1))
        return lms_error_set(err, LMS_EFORMAT, "rms_norm_eps %g is not in (0, 1)", a->norm_eps);
    if (!(a->rope.theta > 0))
        return lms_error_set(err, LMS_EFORMAT, "rope_theta %g is not positive", a->rope.theta);
    if (!(a->rope.factor > 0))
        return lms_error_set(err, LMS_EFORMAT, "rope scaling factor %g is not positive",
                             a->rope.factor);
    return LMS_OK;
}

int64_t lms_arch_n_params(const struct lms_arch *a)
{
    int64_t H = a->hidden, d = a->head_dim, q = a->n_heads * d, kv = a->n_groups * d;
    int64_t per_layer = 2 * H + q * H + 2 * kv * H + H * q + 3 * a->ffn * H;
    if (a->qkv_bias)
        per_layer += q + 2 * kv;
    if (a->o_bias)
        per_layer += H;
    if (a->qk_norm)
        per_layer += 2 * d;
    int64_t n = a->n_layers * per_layer + a->padded_vocab * H + H;
    if (!a->tie_embeddings)
        n += a->padded_vocab * H;
    return n;
}

static const struct {
    const char *name;  /* short name for messages and importance files */
    const char *hf;    /* HF name pattern; %lld is the layer */
    bool per_layer;
} roles[LMS_ROLE_COUNT] = {
    [LMS_ROLE_OTHER] = {"other", NULL, false},
    [LMS_ROLE_EMBED] = {"embed", "model.embed_tokens.weight", false},
    [LMS_ROLE_ATTN_NORM] = {"attn_norm", "model.layers.%lld.input_layernorm.weight", true},
    [LMS_ROLE_Q] = {"q", "model.layers.%lld.self_attn.q_proj.weight", true},
    [LMS_ROLE_K] = {"k", "model.layers.%lld.self_attn.k_proj.weight", true},
    [LMS_ROLE_V] = {"v", "model.layers.%lld.self_attn.v_proj.weight", true},
    [LMS_ROLE_Q_BIAS] = {"q_bias", "model.layers.%lld.self_attn.q_proj.bias", true},
    [LMS_ROLE_K_BIAS] = {"k_bias", "model.layers.%lld.self_attn.k_proj.bias", true},
    [LMS_ROLE_V_BIAS] = {"v_bias", "model.layers.%lld.self_attn.v_proj.bias", true},
    [LMS_ROLE_Q_NORM] = {"q_norm", "model.layers.%lld.self_attn.q_norm.weight", true},
    [LMS_ROLE_K_NORM] = {"k_norm", "model.layers.%lld.self_attn.k_norm.weight", true},
    [LMS_ROLE_O] = {"o", "model.layers.%lld.self_attn.o_proj.weight", true},
    [LMS_ROLE_O_BIAS] = {"o_bias", "model.layers.%lld.self_attn.o_proj.bias", true},
    [LMS_ROLE_MLP_NORM] = {"mlp_norm", "model.layers.%lld.post_attention_layernorm.weight", true},
    [LMS_ROLE_GATE] = {"gate", "model.layers.%lld.mlp.gate_proj.weight", true},
    [LMS_ROLE_UP] = {"up", "model.layers.%lld.mlp.up_proj.weight", true},
    [LMS_ROLE_DOWN] = {"down", "model.layers.%lld.mlp.down_proj.weight", true},
    [LMS_ROLE_FINAL_NORM] = {"final_norm", "model.norm.weight", false},
    [LMS_ROLE_LM_HEAD] = {"lm_head", "lm_head.weight", false},
};

const char *lms_role_name(enum lms_role r)
{
    return (unsigned)r < LMS_ROLE_COUNT ? roles[r].name : "?";
}

bool lms_role_is_per_layer(enum lms_role r)
{
    return (unsigned)r < LMS_ROLE_COUNT && roles[r].per_layer;
}

bool lms_role_hf_name(enum lms_role r, int64_t layer, char *dst, size_t dst_cap)
{
    if ((unsigned)r >= LMS_ROLE_COUNT || !roles[r].hf)
        return false;
    int n;
    if (roles[r].per_layer)
        n = snprintf(dst, dst_cap, roles[r].hf, (long long)layer);
    else
        n = snprintf(dst, dst_cap, "%s", roles[r].hf);
    return n > 0 && (size_t)n < dst_cap;
}

bool lms_role_from_hf_name(const char *name, enum lms_role *role, int64_t *layer)
{
    static const char prefix[] = "model.layers.";
    if (strncmp(name, prefix, sizeof(prefix) - 1) == 0) {
        const char *p = name + sizeof(prefix) - 1;
        if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] >= '0' && p[1] <= '9'))
            return false;
        long long l = 0;
        while (*p >= '0' && *p <= '9') {
            l = l * 10 + (*p - '0');
            if (l > MAX_LAYERS)
                return false;
            p++;
        }
        char buf[256];
        for (int r = 0; r < LMS_ROLE_COUNT; r++) {
            if (!roles[r].per_layer || !lms_role_hf_name((enum lms_role)r, l, buf, sizeof(buf)))
                continue;
            if (strcmp(buf, name) == 0) {
                *role = (enum lms_role)r;
                *layer = l;
                return true;
            }
        }
        return false;
    }
    for (int r = 0; r < LMS_ROLE_COUNT; r++) {
        if (roles[r].per_layer || !roles[r].hf)
            continue;
        if (strcmp(roles[r].hf, name) == 0) {
            *role = (enum lms_role)r;
            *layer = -1;
            return true;
        }
    }
    return false;
}

bool lms_role_shape(enum lms_role r, const struct lms_arch *a, int *ndim, int64_t *shape)
{
    int64_t H = a->hidden, d = a->head_dim, q = a->n_heads * d, kv = a->n_groups * d;
    int64_t V = a->padded_vocab, F = a->ffn;
    switch (r) {
    case LMS_ROLE_EMBED:
    case LMS_ROLE_LM_HEAD:
        *ndim = 2, shape[0] = V, shape[1] = H;
        return true;
    case LMS_ROLE_ATTN_NORM:
    case LMS_ROLE_MLP_NORM:
    case LMS_ROLE_FINAL_NORM:
    case LMS_ROLE_O_BIAS:
        *ndim = 1, shape[0] = H;
        return true;
    case LMS_ROLE_Q:
        *ndim = 2, shape[0] = q, shape[1] = H;
        return true;
    case LMS_ROLE_K:
    case LMS_ROLE_V:
        *ndim = 2, shape[0] = kv, shape[1] = H;
        return true;
    case LMS_ROLE_Q_BIAS:
        *ndim = 1, shape[0] = q;
        return true;
    case LMS_ROLE_K_BIAS:
    case LMS_ROLE_V_BIAS:
        *ndim = 1, shape[0] = kv;
        return true;
    case LMS_ROLE_Q_NORM:
    case LMS_ROLE_K_NORM:
        *ndim = 1, shape[0] = d;
        return true;
    case LMS_ROLE_O:
        *ndim = 2, shape[0] = H, shape[1] = q;
        return true;
    case LMS_ROLE_GATE:
    case LMS_ROLE_UP:
        *ndim = 2, shape[0] = F, shape[1] = H;
        return true;
    case LMS_ROLE_DOWN:
        *ndim = 2, shape[0] = H, shape[1] = F;
        return true;
    default:
        return false;
    }
}

bool lms_role_expected(enum lms_role r, const struct lms_arch *a)
{
    switch (r) {
    case LMS_ROLE_OTHER:
        return false;
    case LMS_ROLE_Q_BIAS:
    case LMS_ROLE_K_BIAS:
    case LMS_ROLE_V_BIAS:
        return a->qkv_bias;
    case LMS_ROLE_O_BIAS:
        return a->o_bias;
    case LMS_ROLE_Q_NORM:
    case LMS_ROLE_K_NORM:
        return a->qk_norm;
    case LMS_ROLE_LM_HEAD:
        return !a->tie_embeddings;
    default:
        return true;
    }
}

void lms_model_init(struct lms_model *m)
{
    memset(m, 0, sizeof(*m));
}

void lms_model_release(struct lms_model *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_tensors; i++) {
        lms_free(m->tensors[i].name);
        lms_view_release(m->tensors[i].view);
    }
    lms_free(m->tensors);
    for (size_t i = 0; i < m->n_aux_files; i++)
        lms_free(m->aux_files[i]);
    lms_free(m->aux_files);
    if (m->hf_config)
        json_decref(m->hf_config);
    lms_free(m->source_format);
    lms_scratch_release(m->scratch);
    lms_free(m->layer_src);
    lms_free(m->warning);
    memset(m, 0, sizeof(*m));
}

enum lms_status lms_model_add(struct lms_model *m, const char *name, enum lms_role role,
                              int64_t layer, struct lms_view *view, struct lms_error *err)
{
    if (m->n_tensors == m->cap_tensors) {
        size_t cap = m->cap_tensors ? 2 * m->cap_tensors : 64;
        struct lms_tensor *t = lms_realloc(m->tensors, cap * sizeof(*t));
        if (!t)
            return lms_error_set(err, LMS_ENOMEM, "out of memory");
        m->tensors = t;
        m->cap_tensors = cap;
    }
    char *copy = lms_strdup(name);
    if (!copy)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    m->tensors[m->n_tensors++] = (struct lms_tensor){
        .name = copy, .role = role, .layer = layer, .view = lms_view_ref(view)};
    return LMS_OK;
}

enum lms_status lms_model_add_aux_file(struct lms_model *m, const char *path,
                                       struct lms_error *err)
{
    char **files = lms_realloc(m->aux_files, (m->n_aux_files + 1) * sizeof(*files));
    if (!files)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    m->aux_files = files;
    files[m->n_aux_files] = lms_strdup(path);
    if (!files[m->n_aux_files])
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    m->n_aux_files++;
    return LMS_OK;
}

enum lms_status lms_model_set_warning(struct lms_model *m, const char *line,
                                      struct lms_error *err)
{
    char *copy = lms_strdup(line);
    if (!copy)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    lms_free(m->warning);
    m->warning = copy;
    return LMS_OK;
}

enum lms_status lms_model_clone(const struct lms_model *src, struct lms_model *dst,
                                struct lms_error *err)
{
    lms_model_init(dst);
    dst->arch = src->arch;
    enum lms_status rc = LMS_OK;
    for (size_t i = 0; i < src->n_tensors && !rc; i++) {
        const struct lms_tensor *t = &src->tensors[i];
        rc = lms_model_add(dst, t->name, t->role, t->layer, t->view, err);
    }
    for (size_t i = 0; i < src->n_aux_files && !rc; i++)
        rc = lms_model_add_aux_file(dst, src->aux_files[i], err);
    if (!rc && src->hf_config) {
        dst->hf_config = json_deep_copy(src->hf_config);
        if (!dst->hf_config)
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    dst->scratch = lms_scratch_ref(src->scratch);
    if (!rc && src->layer_src) {
        size_t bytes = (size_t)src->arch.n_layers * sizeof(*src->layer_src);
        dst->layer_src = lms_malloc(bytes ? bytes : 1);
        if (dst->layer_src) {
            memcpy(dst->layer_src, src->layer_src, bytes);
            dst->n_layers_src = src->n_layers_src;
        } else {
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
        }
    }
    if (!rc && src->source_format) {
        dst->source_format = lms_strdup(src->source_format);
        if (!dst->source_format)
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    if (!rc && src->warning)
        rc = lms_model_set_warning(dst, src->warning, err);
    if (rc)
        lms_model_release(dst);
    return rc;
}

struct lms_tensor *lms_model_find(const struct lms_model *m, enum lms_role role, int64_t layer)
{
    for (size_t i = 0; i < m->n_tensors; i++)
        if (m->tensors[i].role == role && m->tensors[i].layer == layer)
            return &m->tensors[i];
    return NULL;
}

struct lms_tensor *lms_model_find_name(const struct lms_model *m, const char *name)
{
    for (size_t i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0)
            return &m->tensors[i];
    return NULL;
}

static void format_shape(char *dst, size_t cap, int ndim, const int64_t *shape)
{
    size_t used = (size_t)snprintf(dst, cap, "[");
    for (int i = 0; i < ndim && used < cap; i++)
        used += (size_t)snprintf(dst + used, cap - used, "%s%lld", i ? ", " : "",
                                 (long long)shape[i]);
    if (used < cap)
        snprintf(dst + used, cap - used, "]");
}

enum lms_status lms_model_validate(const struct lms_model *m, struct lms_error *err)
{
    const struct lms_arch *a = &m->arch;
    enum lms_status rc = lms_arch_validate(a, err);
    if (rc)
        return rc;
    for (size_t i = 0; i < m->n_tensors; i++) {
        const struct lms_tensor *t = &m->tensors[i];
        if (t->role == LMS_ROLE_OTHER)
            continue;
        if (!lms_role_expected(t->role, a))
            return lms_error_set(err, LMS_EFORMAT, "tensor '%s' is not expected by the config",
                                 t->name);
        if (lms_role_is_per_layer(t->role) && (t->layer < 0 || t->layer >= a->n_layers))
            return lms_error_set(err, LMS_EFORMAT,
                                 "tensor '%s': layer %lld is outside 0..%lld", t->name,
                                 (long long)t->layer, (long long)a->n_layers - 1);
        int ndim;
        int64_t shape[LMS_MAX_DIMS];
        lms_role_shape(t->role, a, &ndim, shape);
        bool same = ndim == t->view->ndim;
        for (int k = 0; same && k < ndim; k++)
            same = shape[k] == t->view->shape[k];
        if (!same) {
            char have[160], want[160];
            format_shape(have, sizeof(have), t->view->ndim, t->view->shape);
            format_shape(want, sizeof(want), ndim, shape);
            return lms_error_set(err, LMS_ESHAPE, "tensor '%s' has shape %s, the config implies %s",
                                 t->name, have, want);
        }
        for (size_t j = 0; j < i; j++)
            if (m->tensors[j].role == t->role && m->tensors[j].layer == t->layer)
                return lms_error_set(err, LMS_EFORMAT, "tensors '%s' and '%s' have the same role",
                                     m->tensors[j].name, t->name);
    }
    for (int r = 1; r < LMS_ROLE_COUNT; r++) {
        if (!lms_role_expected((enum lms_role)r, a))
            continue;
        int64_t n_layers = lms_role_is_per_layer((enum lms_role)r) ? a->n_layers : 1;
        for (int64_t l = 0; l < n_layers; l++) {
            int64_t layer = lms_role_is_per_layer((enum lms_role)r) ? l : -1;
            if (!lms_model_find(m, (enum lms_role)r, layer)) {
                char name[256];
                lms_role_hf_name((enum lms_role)r, layer, name, sizeof(name));
                return lms_error_set(err, LMS_EFORMAT, "tensor '%s' is missing", name);
            }
        }
    }
    return LMS_OK;
}

int64_t lms_model_n_params(const struct lms_model *m)
{
    int64_t n = 0;
    for (size_t i = 0; i < m->n_tensors; i++)
        n += lms_view_numel(m->tensors[i].view);
    return n;
}

uint64_t lms_model_nbytes(const struct lms_model *m)
{
    uint64_t n = 0;
    for (size_t i = 0; i < m->n_tensors; i++)
        n += lms_view_nbytes(m->tensors[i].view);
    return n;
}
