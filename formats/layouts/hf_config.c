/* config.json <-> struct lms_arch (include/lms/hf.h). */
#include <math.h>
#include <string.h>

#include "lms/alloc.h"
#include "lms/arch.h"
#include "lms/hf.h"

/* The family named by architectures[0], else by model_type. */
static enum lms_status family_of(const json_t *c, const struct lms_arch_desc **out,
                                 struct lms_error *err)
{
    const json_t *archs = json_object_get(c, "architectures");
    const json_t *mt = json_object_get(c, "model_type");
    const char *name = NULL;
    if (json_is_array(archs) && json_array_size(archs) > 0 &&
        json_is_string(json_array_get(archs, 0))) {
        name = json_string_value(json_array_get(archs, 0));
        *out = lms_arch_desc_by_hf_class(name);
    } else if (json_is_string(mt)) {
        name = json_string_value(mt);
        *out = lms_arch_desc_by_model_type(name);
    } else {
        return lms_error_set(err, LMS_EFORMAT, "neither 'architectures' nor 'model_type' is set");
    }
    if (!*out)
        return lms_error_set(err, LMS_EUNSUPPORTED, "unsupported architecture '%s'", name);
    return LMS_OK;
}

/* Integer field; missing or null gives def (or an error when required). */
static enum lms_status get_int(const json_t *c, const char *key, bool required, int64_t def,
                               int64_t *out, struct lms_error *err)
{
    const json_t *v = json_object_get(c, key);
    if (!v || json_is_null(v)) {
        if (required)
            return lms_error_set(err, LMS_EFORMAT, "'%s' is missing", key);
        *out = def;
        return LMS_OK;
    }
    if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
        fabs(json_real_value(v)) < 9e15) {
        *out = (int64_t)json_real_value(v);
        return LMS_OK;
    }
    if (!json_is_integer(v))
        return lms_error_set(err, LMS_EFORMAT, "'%s' is not an integer", key);
    *out = json_integer_value(v);
    return LMS_OK;
}

static enum lms_status get_num(const json_t *c, const char *key, double def, double *out,
                               struct lms_error *err)
{
    const json_t *v = json_object_get(c, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return LMS_OK;
    }
    if (!json_is_number(v))
        return lms_error_set(err, LMS_EFORMAT, "'%s' is not a number", key);
    *out = json_number_value(v);
    return LMS_OK;
}

static enum lms_status get_bool(const json_t *c, const char *key, bool def, bool *out,
                                struct lms_error *err)
{
    const json_t *v = json_object_get(c, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return LMS_OK;
    }
    if (!json_is_boolean(v))
        return lms_error_set(err, LMS_EFORMAT, "'%s' is not a boolean", key);
    *out = json_is_true(v);
    return LMS_OK;
}

/* The rope block: transformers 5 writes rope_parameters {rope_theta, rope_type, ...};
 * transformers 4 writes rope_theta at the top level and an optional rope_scaling block. */
static enum lms_status parse_rope(const json_t *c, struct lms_rope *r, struct lms_error *err)
{
    memset(r, 0, sizeof(*r));
    r->factor = 1;
    r->low_freq_factor = 1;
    r->high_freq_factor = 4;
    const json_t *params = json_object_get(c, "rope_parameters");
    const json_t *scaling = json_object_get(c, "rope_scaling");
    enum lms_status rc;
    if (json_is_object(params)) {
        rc = get_num(params, "rope_theta", 10000.0, &r->theta, err);
        if (!rc && json_object_get(c, "rope_theta"))
            rc = get_num(c, "rope_theta", r->theta, &r->theta, err);
        scaling = params;
    } else {
        rc = get_num(c, "rope_theta", 10000.0, &r->theta, err);
        if (!rc && scaling && !json_is_null(scaling) && !json_is_object(scaling))
            rc = lms_error_set(err, LMS_EFORMAT, "'rope_scaling' is not an object");
    }
    if (rc)
        return rc;
    if (!json_is_object(scaling))
        return LMS_OK;
    const json_t *type = json_object_get(scaling, "rope_type");
    if (!type)
        type = json_object_get(scaling, "type");
    const char *t = json_is_string(type) ? json_string_value(type) : "default";
    if (strcmp(t, "default") == 0)
        r->type = LMS_ROPE_DEFAULT;
    else if (strcmp(t, "linear") == 0)
        r->type = LMS_ROPE_LINEAR;
    else if (strcmp(t, "llama3") == 0)
        r->type = LMS_ROPE_LLAMA3;
    else if (strcmp(t, "yarn") == 0)
        r->type = LMS_ROPE_YARN;
    else if (strcmp(t, "dynamic") == 0)
        r->type = LMS_ROPE_DYNAMIC;
    else
        return lms_error_set(err, LMS_EUNSUPPORTED, "unsupported rope type '%s'", t);
    rc = get_num(scaling, "factor", 1.0, &r->factor, err);
    if (!rc)
        rc = get_num(scaling, "low_freq_factor", 1.0, &r->low_freq_factor, err);
    if (!rc)
        rc = get_num(scaling, "high_freq_factor", 4.0, &r->high_freq_factor, err);
    if (!rc)
        rc = get_int(scaling, "original_max_position_embeddings", false, 0,
                     &r->original_max_position, err);
    return rc;
}

/* The engine rotates every channel of a head: a partial_rotary_factor (top level, or in
 * rope_parameters / rope_scaling) other than 1 is refused. */
static enum lms_status check_full_rotary(const json_t *c, struct lms_error *err)
{
    const json_t *where[] = {c, json_object_get(c, "rope_parameters"),
                             json_object_get(c, "rope_scaling")};
    for (size_t i = 0; i < sizeof(where) / sizeof(where[0]); i++) {
        double f = 1;
        enum lms_status rc = json_is_object(where[i])
                                 ? get_num(where[i], "partial_rotary_factor", 1.0, &f, err)
                                 : LMS_OK;
        if (rc)
            return rc;
        if (f != 1)
            return lms_error_set(err, LMS_EUNSUPPORTED,
                                 "unsupported 'partial_rotary_factor' %g (only 1)", f);
    }
    return LMS_OK;
}

enum lms_status lms_hf_config_parse(const json_t *c, struct lms_arch *a, struct lms_error *err)
{
    memset(a, 0, sizeof(*a));
    if (!json_is_object(c))
        return lms_error_set(err, LMS_EFORMAT, "config is not a JSON object");
    const struct lms_arch_desc *desc;
    enum lms_status rc = family_of(c, &desc, err);
    if (rc)
        return rc;
    a->family = desc->family;
    const char *act_name = lms_arch_act_hf_name(desc->act);
    const json_t *act = json_object_get(c, "hidden_act");
    if (act && !(json_is_string(act) && strcmp(json_string_value(act), act_name) == 0))
        return lms_error_set(err, LMS_EUNSUPPORTED, "unsupported 'hidden_act' (only %s)", act_name);
    bool mlp_bias = false;
    rc = get_bool(c, "mlp_bias", false, &mlp_bias, err);
    if (!rc && mlp_bias)
        return lms_error_set(err, LMS_EUNSUPPORTED, "unsupported 'mlp_bias': true");
    if (!rc)
        rc = get_int(c, "hidden_size", true, 0, &a->hidden, err);
    if (!rc)
        rc = get_int(c, "intermediate_size", true, 0, &a->ffn, err);
    if (!rc)
        rc = get_int(c, "num_hidden_layers", true, 0, &a->n_layers, err);
    if (!rc)
        rc = get_int(c, "num_attention_heads", true, 0, &a->n_heads, err);
    if (!rc)
        rc = get_int(c, "num_key_value_heads", false, a->n_heads, &a->n_groups, err);
    if (!rc)
        rc = get_int(c, "vocab_size", true, 0, &a->vocab, err);
    if (rc)
        return rc;
    if (a->n_heads < 1)
        return lms_error_set(err, LMS_EFORMAT, "'num_attention_heads' is %lld",
                             (long long)a->n_heads);
    rc = get_int(c, "head_dim", false, a->hidden / a->n_heads, &a->head_dim, err);
    if (!rc)
        rc = get_int(c, "max_position_embeddings", false, 0, &a->max_position, err);
    if (!rc && a->max_position < 0)
        rc = lms_error_set(err, LMS_EFORMAT, "max_position_embeddings is %lld (expected >= 0)",
                           (long long)a->max_position);
    if (!rc)
        rc = get_num(c, "rms_norm_eps", 1e-6, &a->norm_eps, err);
    if (!rc)
        rc = get_bool(c, "tie_word_embeddings", false, &a->tie_embeddings, err);
    bool attention_bias = false;
    if (!rc)
        rc = get_bool(c, "attention_bias", false, &attention_bias, err);
    if (rc)
        return rc;
    a->padded_vocab = a->vocab;
    if (attention_bias && desc->bias == LMS_BIAS_NONE)
        return lms_error_set(err, LMS_EUNSUPPORTED, "unsupported 'attention_bias': true");
    a->qkv_bias = attention_bias || desc->bias == LMS_BIAS_QKV;
    a->o_bias = attention_bias && desc->bias == LMS_BIAS_FROM_CONFIG;
    a->qk_norm = desc->qk_norm;
    /* the sliding window applies as the family's rule says (when set, or with a flag) */
    bool use_sw = desc->window == LMS_WINDOW_WHEN_SET;
    if (desc->window == LMS_WINDOW_FLAG)
        rc = get_bool(c, "use_sliding_window", false, &use_sw, err);
    if (!rc && use_sw)
        rc = get_int(c, "sliding_window", false, 0, &a->sliding_window, err);
    if (!rc && a->sliding_window < 0)
        rc = lms_error_set(err, LMS_EFORMAT, "sliding_window is %lld (expected >= 0)",
                           (long long)a->sliding_window);
    if (!rc)
        rc = parse_rope(c, &a->rope, err);
    if (!rc)
        rc = check_full_rotary(c, err);
    if (rc)
        return rc;
    a->dtype = LMS_DTYPE_F32;
    const json_t *dt = json_object_get(c, "dtype");
    if (!json_is_string(dt))
        dt = json_object_get(c, "torch_dtype");
    if (json_is_string(dt) && !lms_dtype_from_torch_name(json_string_value(dt), &a->dtype))
        return lms_error_set(err, LMS_EFORMAT, "unknown dtype '%s'", json_string_value(dt));
    return lms_arch_validate(a, err);
}

static int set_int(json_t *c, const char *key, int64_t v)
{
    return json_object_set_new(c, key, json_integer(v));
}

/* Rewrites layer_types (transformers 5 lists one entry per layer) to the n layers of the model.
 * A list that already has n entries is kept. A list with one entry per layer of the model a cut
 * was taken from (layer_src, n_src) keeps the entries of the kept layers. Otherwise the list can
 * only be resized when every entry is the same. */
static enum lms_status fix_layer_types(json_t *c, int64_t n, const int64_t *layer_src,
                                       int64_t n_src, struct lms_error *err)
{
    json_t *lt = json_object_get(c, "layer_types");
    if (!json_is_array(lt) || (int64_t)json_array_size(lt) == n)
        return LMS_OK;
    json_t *fresh = json_array();
    if (!fresh)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    if (layer_src && (int64_t)json_array_size(lt) == n_src) {
        for (int64_t i = 0; i < n; i++)
            if (layer_src[i] < 0 || layer_src[i] >= n_src ||
                json_array_append(fresh, json_array_get(lt, (size_t)layer_src[i]))) {
                json_decref(fresh);
                return lms_error_set(err, LMS_EINVAL, "layer %lld has no source layer",
                                     (long long)i);
            }
        json_object_set_new(c, "layer_types", fresh);
        return LMS_OK;
    }
    json_t *first = json_array_get(lt, 0);
    for (size_t i = 1; i < json_array_size(lt); i++)
        if (!json_equal(first, json_array_get(lt, i))) {
            json_decref(fresh);
            return lms_error_set(err, LMS_EUNSUPPORTED,
                                 "'layer_types' mixes layer kinds; cannot resize it to %lld layers",
                                 (long long)n);
        }
    for (int64_t i = 0; i < n; i++)
        json_array_append_new(fresh, first ? json_incref(first) : json_string("full_attention"));
    json_object_set_new(c, "layer_types", fresh);
    return LMS_OK;
}

static json_t *rope_type_string(enum lms_rope_type t)
{
    static const char *names[] = {"default", "linear", "llama3", "yarn", "dynamic"};
    return json_string(names[t]);
}

/* The one place that derives config.json from the IR: the modelled keys from arch, the keys
 * that depend on what surgery did from the kept-layer map. */
static enum lms_status build(const struct lms_arch *a, const json_t *base, const int64_t *layer_src,
                             int64_t n_src, json_t **out, struct lms_error *err)
{
    json_t *c = base ? json_deep_copy(base) : json_object();
    if (!c)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    const struct lms_arch_desc *desc = lms_arch_desc_of(a->family);
    json_t *archs = json_array();
    json_array_append_new(archs, json_string(desc->hf_class));
    json_object_set_new(c, "architectures", archs);
    json_object_set_new(c, "model_type", json_string(desc->model_type));
    set_int(c, "hidden_size", a->hidden);
    set_int(c, "intermediate_size", a->ffn);
    set_int(c, "num_hidden_layers", a->n_layers);
    set_int(c, "num_attention_heads", a->n_heads);
    set_int(c, "num_key_value_heads", a->n_groups);
    /* head_dim is written when the input had it, when it is not hidden / heads (Qwen3, and any
     * model whose hidden size or heads were pruned), and for every cut model (layer_src set),
     * whose head size no reader should have to infer from the pruned widths */
    if (json_object_get(c, "head_dim") || a->head_dim * a->n_heads != a->hidden || layer_src)
        set_int(c, "head_dim", a->head_dim);
    set_int(c, "vocab_size", a->vocab); /* the writer drops padding rows */
    if (!json_is_number(json_object_get(c, "rms_norm_eps")) ||
        json_number_value(json_object_get(c, "rms_norm_eps")) != a->norm_eps)
        json_object_set_new(c, "rms_norm_eps", json_real(a->norm_eps));
    if (a->max_position > 0)
        set_int(c, "max_position_embeddings", a->max_position);
    json_object_set_new(c, "tie_word_embeddings", json_boolean(a->tie_embeddings));
    /* attention_bias says what it said where the family reads it (q/k/v and o together) */
    bool from_config = desc->bias == LMS_BIAS_FROM_CONFIG;
    if (json_object_get(c, "attention_bias") || (from_config && a->o_bias))
        json_object_set_new(c, "attention_bias", json_boolean(from_config ? a->o_bias : false));
    const char *dtkey = json_object_get(c, "dtype") ? "dtype" : "torch_dtype";
    const char *dtname = lms_dtype_torch_name(a->dtype);
    if (dtname)
        json_object_set_new(c, dtkey, json_string(dtname));
    /* rope, in the style of the input */
    json_t *params = json_object_get(c, "rope_parameters");
    if (json_is_object(params)) {
        double theta = json_number_value(json_object_get(params, "rope_theta"));
        if (theta != a->rope.theta)
            json_object_set_new(params, "rope_theta", json_real(a->rope.theta));
        if (!json_object_get(params, "rope_type"))
            json_object_set_new(params, "rope_type", rope_type_string(a->rope.type));
    } else {
        double theta = json_number_value(json_object_get(c, "rope_theta"));
        if (theta != a->rope.theta)
            json_object_set_new(c, "rope_theta", json_real(a->rope.theta));
        if (!json_object_get(c, "rope_scaling") && a->rope.type != LMS_ROPE_DEFAULT) {
            json_t *s = json_pack("{s:o,s:f}", "rope_type", rope_type_string(a->rope.type),
                                  "factor", a->rope.factor);
            if (a->rope.type == LMS_ROPE_LLAMA3) {
                json_object_set_new(s, "low_freq_factor", json_real(a->rope.low_freq_factor));
                json_object_set_new(s, "high_freq_factor", json_real(a->rope.high_freq_factor));
            }
            /* transformers needs it for both (YaRN's correction range starts from it) */
            if (a->rope.type == LMS_ROPE_LLAMA3 ||
                (a->rope.type == LMS_ROPE_YARN && a->rope.original_max_position > 0))
                set_int(s, "original_max_position_embeddings", a->rope.original_max_position);
            json_object_set_new(c, "rope_scaling", s);
        }
    }
    enum lms_status rc = fix_layer_types(c, a->n_layers, layer_src, n_src, err);
    if (rc) {
        json_decref(c);
        return rc;
    }
    *out = c;
    return LMS_OK;
}

enum lms_status lms_hf_config_build(const struct lms_arch *a, const json_t *base, json_t **out,
                                    struct lms_error *err)
{
    return build(a, base, NULL, 0, out, err);
}

enum lms_status lms_hf_config_of_model(const struct lms_model *m, const struct lms_arch *a,
                                       json_t **out, struct lms_error *err)
{
    return build(a, m->hf_config, m->layer_src, m->n_layers_src, out, err);
}
