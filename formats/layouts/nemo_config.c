/* The model-config translation of NeMo 2 and Megatron: the config fields of an arch as NeMo's
 * io.json (the fiddle serialization of its TrainerContext) and as model.yaml / run_config.yaml
 * lines, and the way back: the fields of io.json, model.yaml or run_config.yaml, completed with
 * the defaults of their config class, as a Hugging Face config.json object. */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "formats/layouts/nemo_impl.h"
#include "formats/layouts/paths.h"
#include "lms/alloc.h"
#include "lms/arch.h"
#include "lms/hf.h"
#include "lms/json.h"

/* Whether key (of length len) ends with suffix. */
static bool ends_with(const char *key, size_t len, const char *suffix)
{
    size_t n = strlen(suffix);
    return len >= n && strcmp(key + len - n, suffix) == 0;
}

/* Largest power of two <= 128 dividing v (what NeMo's Llama importer picks as
 * make_vocab_size_divisible_by, so no padding rows are added). */
static int64_t vocab_divisor(int64_t v)
{
    int64_t k = 128;
    while (k > 1 && v % k)
        k /= 2;
    return k;
}

/* The model-config fields written to io.json / model.yaml / run_config.yaml, as JSON values. A
 * pyref is written as {"__pyref__": "module:name"}. */
static json_t *config_fields(const struct lms_arch *a)
{
    const struct lms_arch_desc *desc = lms_arch_desc_of(a->family);
    json_t *c = json_object();
    json_object_set_new(c, "num_layers", json_integer(a->n_layers));
    json_object_set_new(c, "hidden_size", json_integer(a->hidden));
    json_object_set_new(c, "ffn_hidden_size", json_integer(a->ffn));
    json_object_set_new(c, "num_attention_heads", json_integer(a->n_heads));
    json_object_set_new(c, "num_query_groups", json_integer(a->n_groups));
    json_object_set_new(c, "kv_channels", json_integer(a->head_dim));
    json_object_set_new(c, "normalization", json_string(lms_arch_norm_mcore_name(desc->norm)));
    json_object_set_new(c, "layernorm_epsilon", json_real(a->norm_eps));
    json_object_set_new(c, "gated_linear_unit", json_boolean(lms_arch_act_gated(desc->act)));
    json_object_set_new(c, "activation_func",
                        json_pack("{s:s}", "__pyref__", lms_arch_act_mcore_func(desc->act)));
    json_object_set_new(c, "add_bias_linear", json_false());
    json_object_set_new(c, "add_qkv_bias", json_boolean(a->qkv_bias));
    json_object_set_new(c, "qk_layernorm", json_boolean(a->qk_norm));
    json_object_set_new(c, "position_embedding_type", json_string("rope"));
    json_object_set_new(c, "rotary_base", json_real(a->rope.theta));
    json_object_set_new(c, "rotary_percent", json_real(1.0));
    json_object_set_new(c, "seq_length", json_integer(a->max_position));
    json_object_set_new(c, "max_position_embeddings", json_integer(a->max_position));
    json_object_set_new(c, "share_embeddings_and_output_weights",
                        json_boolean(a->tie_embeddings));
    json_object_set_new(c, "vocab_size", json_integer(a->vocab));
    json_object_set_new(c, "make_vocab_size_divisible_by", json_integer(vocab_divisor(a->vocab)));
    if (a->rope.type == LMS_ROPE_LLAMA3) {
        json_object_set_new(c, "scale_factor", json_real(a->rope.factor));
        json_object_set_new(c, "low_freq_factor", json_real(a->rope.low_freq_factor));
        json_object_set_new(c, "high_freq_factor", json_real(a->rope.high_freq_factor));
        json_object_set_new(c, "old_context_len", json_integer(a->rope.original_max_position));
    } else if (a->rope.type == LMS_ROPE_LINEAR) {
        json_object_set_new(c, "seq_len_interpolation_factor", json_real(a->rope.factor));
    }
    if (a->sliding_window > 0)
        json_object_set_new(c, "window_size", json_pack("[I,i]", a->sliding_window, 0));
    const char *tn = lms_dtype_torch_name(a->dtype);
    char ref[64];
    snprintf(ref, sizeof(ref), "torch:%s", tn ? tn : "bfloat16");
    json_object_set_new(c, "params_dtype", json_pack("{s:s}", "__pyref__", ref));
    json_object_set_new(c, "bf16", json_boolean(a->dtype == LMS_DTYPE_BF16));
    json_object_set_new(c, "fp16", json_boolean(a->dtype == LMS_DTYPE_F16));
    return c;
}

/* ---- io.json: the fiddle serialization NeMo's io_dump writes ------------------------------ */

struct fiddle {
    json_t *objects;   /* name -> object node (borrowed from the root) */
    json_t *refcounts; /* name -> 1 (borrowed from the root) */
    int n_tuple, n_dict, n_meta;
};

static json_t *pyref(const char *module, const char *name)
{
    return json_pack("{s:s,s:s,s:s}", "type", "pyref", "module", module, "name", name);
}

static json_t *ref(const char *key)
{
    return json_pack("{s:s,s:s}", "type", "ref", "key", key);
}

static json_t *leaf(json_t *value, const char *path)
{
    return json_pack("{s:s,s:o,s:[s]}", "type", "leaf", "value", value, "paths", path);
}

/* An empty builtins.tuple, written inline (not as a named object), as fiddle does. */
static json_t *empty_tuple(void)
{
    return json_pack("{s:o,s:[],s:n}", "type", pyref("builtins", "tuple"), "items", "metadata");
}

static void add_named(struct fiddle *f, const char *name, json_t *node)
{
    json_object_set_new(f->objects, name, node);
    json_object_set_new(f->refcounts, name, json_integer(1));
}

/* A new empty builtins.dict object (its metadata: the empty tuple of its keys); OUT: name. */
static void add_empty_dict(struct fiddle *f, const char *path, char *name, size_t cap)
{
    snprintf(name, cap, "dict_%d", ++f->n_dict);
    json_t *d = json_pack("{s:o,s:[],s:o}", "type", pyref("builtins", "dict"), "items",
                          "metadata", empty_tuple());
    if (path)
        json_object_set_new(d, "paths", json_pack("[s]", path));
    add_named(f, name, d);
}

/* "Qwen3Config600M" -> "qwen3_config600_m" (fiddle's object names: snake case plus "_<n>"). */
static void snake_case(const char *cls, char *dst, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; cls[i] && o + 2 < cap; i++) {
        char c = cls[i];
        if (c >= 'A' && c <= 'Z') {
            char prev = i ? cls[i - 1] : 0;
            if ((prev >= 'a' && prev <= 'z') || (prev >= '0' && prev <= '9'))
                dst[o++] = '_';
            c = (char)(c - 'A' + 'a');
        }
        dst[o++] = c;
    }
    dst[o] = 0;
}

/* A fiddle Config of module.cls with the given ["Attr(name='x')", node] items (consumed): the
 * argument-name tuple, the two empty dicts and the BuildableTraverserMetadata it refers to, then
 * the Config object itself, named "<snake_case(cls)>_1". OUT: name. */
static void add_config(struct fiddle *f, const char *module, const char *cls, json_t *items,
                       const char *path, char *name, size_t cap)
{
    json_t *names;
    size_t n = json_array_size(items);
    if (n == 0) {
        names = empty_tuple();
    } else {
        json_t *tuple_items = json_array();
        for (size_t i = 0; i < n; i++) {
            const char *attr = json_string_value(json_array_get(json_array_get(items, i), 0));
            char idx[48], argname[128];
            snprintf(idx, sizeof(idx), "Index(index=%zu)", i);
            /* "Attr(name='x')" -> x */
            snprintf(argname, sizeof(argname), "%.*s", (int)strlen(attr) - 13, attr + 11);
            json_array_append_new(tuple_items, json_pack("[s,s]", idx, argname));
        }
        char tname[32];
        snprintf(tname, sizeof(tname), "tuple_%d", ++f->n_tuple);
        add_named(f, tname,
                  json_pack("{s:o,s:o,s:n}", "type", pyref("builtins", "tuple"), "items",
                            tuple_items, "metadata"));
        names = ref(tname);
    }
    char tags[32], hist[32], meta[64];
    add_empty_dict(f, NULL, tags, sizeof(tags));
    add_empty_dict(f, NULL, hist, sizeof(hist));
    snprintf(meta, sizeof(meta), "buildable_traverser_metadata_%d", ++f->n_meta);
    add_named(f, meta,
              json_pack("{s:o,s:[[s,o],[s,o],[s,o],[s,o]],s:o}", "type",
                        pyref("fiddle._src.config", "BuildableTraverserMetadata"), "items",
                        "Attr(name='fn_or_cls')", pyref(module, cls),
                        "Attr(name='argument_names')", names, "Attr(name='argument_tags')",
                        ref(tags), "Attr(name='argument_history')", ref(hist), "metadata",
                        pyref("fiddle._src.config", "BuildableTraverserMetadata")));
    char snake[128];
    snake_case(cls, snake, sizeof(snake));
    snprintf(name, cap, "%s_1", snake);
    add_named(f, name,
              json_pack("{s:o,s:o,s:o,s:[s]}", "type", pyref("fiddle._src.config", "Config"),
                        "items", items, "metadata", ref(meta), "paths", path));
}

/* The NeMo model and config classes of an arch. */
void lms__nemo_class_of(const struct lms_arch *a, const char **module, const char **model_cls,
                        const char **config_cls)
{
    const struct lms_arch_desc *desc = lms_arch_desc_of(a->family);
    *module = desc->nemo_module;
    *model_cls = desc->nemo_model_cls;
    *config_cls = desc->nemo_config_cls_llama3 && a->rope.type == LMS_ROPE_LLAMA3
                      ? desc->nemo_config_cls_llama3
                      : desc->nemo_config_cls;
}

/* io.json for m: what NeMo's trainer writes into context/ when it saves, TrainerContext(
 * model=<Model>(config=<Config>(...), tokenizer=AutoTokenizer('nemo_tokenizer')),
 * trainer=Trainer(accelerator='auto', strategy=MegatronStrategy(), devices=1), extra={}).
 * Without tokenizer files the model gets no tokenizer argument (NeMo then takes none). */
json_t *lms__nemo_io_json(const struct lms_arch *a, bool with_tokenizer)
{
    const char *module, *model_cls, *config_cls;
    lms__nemo_class_of(a, &module, &model_cls, &config_cls);
    struct fiddle f = {.objects = json_object(), .refcounts = json_object()};
    json_t *root = json_pack("{s:o,s:O,s:O,s:s}", "root", ref("trainer_context_1"), "objects",
                             f.objects, "refcounts", f.refcounts, "version", "0.0.1");
    json_decref(f.objects);
    json_decref(f.refcounts);
    json_t *fields = config_fields(a);
    json_t *items = json_array();
    const char *key;
    json_t *val;
    json_object_foreach(fields, key, val)
    {
        char attr[128], path[256];
        snprintf(attr, sizeof(attr), "Attr(name='%s')", key);
        snprintf(path, sizeof(path), "<root>.model.config.%s", key);
        const char *pr = json_string_value(json_object_get(val, "__pyref__"));
        json_t *node;
        if (pr) {
            const char *colon = strchr(pr, ':');
            char mod[128];
            snprintf(mod, sizeof(mod), "%.*s", (int)(colon - pr), pr);
            node = pyref(mod, colon + 1);
            json_object_set_new(node, "paths", json_pack("[s]", path));
        } else {
            node = leaf(json_incref(val), path);
        }
        json_array_append_new(items, json_pack("[s,o]", attr, node));
    }
    json_decref(fields);
    char cfg[128], tok[128], model[128], strategy[128], trainer[128], extra[32], tc[128];
    add_config(&f, module, config_cls, items, "<root>.model.config", cfg, sizeof(cfg));
    json_t *model_items = json_pack("[[s,o]]", "Attr(name='config')", ref(cfg));
    if (with_tokenizer) {
        add_config(&f, "nemo.collections.common.tokenizers.huggingface.auto_tokenizer",
                   "AutoTokenizer",
                   json_pack("[[s,o]]", "Attr(name='pretrained_model_name')",
                             leaf(json_string("nemo_tokenizer"),
                                  "<root>.model.tokenizer.pretrained_model_name")),
                   "<root>.model.tokenizer", tok, sizeof(tok));
        json_array_append_new(model_items, json_pack("[s,o]", "Attr(name='tokenizer')", ref(tok)));
    }
    add_config(&f, module, model_cls, model_items, "<root>.model", model, sizeof(model));
    add_config(&f, "nemo.lightning.pytorch.strategies.megatron_strategy", "MegatronStrategy",
               json_array(), "<root>.trainer.strategy", strategy, sizeof(strategy));
    add_config(&f, "nemo.lightning.pytorch.trainer", "Trainer",
               json_pack("[[s,o],[s,o],[s,o]]", "Attr(name='accelerator')",
                         leaf(json_string("auto"), "<root>.trainer.accelerator"),
                         "Attr(name='strategy')", ref(strategy), "Attr(name='devices')",
                         leaf(json_integer(1), "<root>.trainer.devices")),
               "<root>.trainer", trainer, sizeof(trainer));
    add_empty_dict(&f, "<root>.extra", extra, sizeof(extra));
    add_config(&f, "nemo.lightning.io.pl", "TrainerContext",
               json_pack("[[s,o],[s,o],[s,o]]", "Attr(name='model')", ref(model),
                         "Attr(name='trainer')", ref(trainer), "Attr(name='extra')", ref(extra)),
               "<root>", tc, sizeof(tc));
    return root;
}

/* model.yaml / run_config.yaml text: "<indent>key: value" lines for the config fields. */
enum lms_status lms__nemo_yaml_config(const struct lms_arch *a, const char *indent,
                                      struct lms_buf_str *out, struct lms_error *err)
{
    json_t *fields = config_fields(a);
    const char *key;
    json_t *val;
    enum lms_status rc = LMS_OK;
    json_object_foreach(fields, key, val)
    {
        const char *pr = json_string_value(json_object_get(val, "__pyref__"));
        if (pr) {
            char dotted[160];
            snprintf(dotted, sizeof(dotted), "%s", pr);
            char *c = strchr(dotted, ':');
            if (c)
                *c = '.';
            rc = lms_buf_str_printf(out, err, "%s%s:\n%s  _target_: %s\n%s  _call_: false\n",
                                    indent, key, indent, dotted, indent);
        } else if (json_is_array(val)) {
            rc = lms_buf_str_printf(out, err, "%s%s: [%lld, %lld]\n", indent, key,
                                    (long long)json_integer_value(json_array_get(val, 0)),
                                    (long long)json_integer_value(json_array_get(val, 1)));
        } else {
            struct lms_buf_str s = {0};
            rc = lms_json_dump(val, LMS_JSON_COMPACT, &s, err);
            const char *e = json_is_real(val) && s.data ? strchr(s.data, 'e') : NULL;
            if (!rc && e && !memchr(s.data, '.', (size_t)(e - s.data))) /* YAML 1.1 float */
                rc = lms_buf_str_printf(out, err, "%s%s: %.*s.0%s\n", indent, key,
                                        (int)(e - s.data), s.data, e);
            else if (!rc)
                rc = lms_buf_str_printf(out, err, "%s%s: %s\n", indent, key,
                                        json_is_true(val)    ? "true"
                                        : json_is_false(val) ? "false"
                                                             : s.data);
            lms_buf_str_release(&s);
        }
        if (rc)
            break;
    }
    json_decref(fields);
    return rc;
}

/* Collects the model-config fields of an io.json: the Attr items of the object whose paths
 * contain "<root>.model.config" (leaf values; pyrefs as "module.name" strings), and the config
 * class name. OUT: *fields (one reference). */
static enum lms_status io_json_fields(const json_t *io, json_t **fields, char *cls,
                                      size_t cls_cap, struct lms_error *err)
{
    const json_t *objects = json_object_get(io, "objects");
    if (!json_is_object(objects))
        return lms_error_set(err, LMS_EFORMAT, "no 'objects' map");
    const char *name;
    const json_t *obj;
    const json_t *cfg = NULL;
    json_object_foreach((json_t *)objects, name, obj)
    {
        const json_t *paths = json_object_get(obj, "paths");
        for (size_t i = 0; i < json_array_size(paths) && !cfg; i++) {
            const char *p = json_string_value(json_array_get(paths, i));
            if (p && strcmp(p, "<root>.model.config") == 0)
                cfg = obj;
        }
        if (cfg)
            break;
    }
    if (!cfg)
        return lms_error_set(err, LMS_EFORMAT, "no object at '<root>.model.config'");
    cls[0] = 0;
    const json_t *meta = json_object_get(cfg, "metadata");
    const char *mkey = json_string_value(json_object_get(meta, "key"));
    const json_t *mobj = mkey ? json_object_get(objects, mkey) : NULL;
    const json_t *mitems = json_object_get(mobj, "items");
    for (size_t i = 0; i < json_array_size(mitems); i++) {
        const json_t *it = json_array_get(mitems, i);
        const char *an = json_string_value(json_array_get(it, 0));
        const json_t *node = json_array_get(it, 1);
        if (an && strcmp(an, "Attr(name='fn_or_cls')") == 0)
            snprintf(cls, cls_cap, "%s", json_string_value(json_object_get(node, "name"))
                                             ? json_string_value(json_object_get(node, "name"))
                                             : "");
    }
    json_t *out = json_object();
    const json_t *items = json_object_get(cfg, "items");
    for (size_t i = 0; i < json_array_size(items); i++) {
        const json_t *it = json_array_get(items, i);
        const char *an = json_string_value(json_array_get(it, 0));
        const json_t *node = json_array_get(it, 1);
        size_t al = an ? strlen(an) : 0;
        if (al < 14 || strncmp(an, "Attr(name='", 11) != 0 || strcmp(an + al - 2, "')") != 0)
            continue;
        char field[128];
        snprintf(field, sizeof(field), "%.*s", (int)(al - 13), an + 11);
        const char *type = json_string_value(json_object_get(node, "type"));
        if (type && strcmp(type, "leaf") == 0) {
            json_object_set(out, field, json_object_get(node, "value"));
        } else if (type && strcmp(type, "pyref") == 0) {
            char s[256];
            snprintf(s, sizeof(s), "%s.%s", json_string_value(json_object_get(node, "module")),
                     json_string_value(json_object_get(node, "name")));
            json_object_set_new(out, field, json_string(s));
        }
    }
    *fields = out;
    return LMS_OK;
}

enum lms_status lms__nemo_class_defaults(json_t *f, const char *cls, const char *from,
                                         struct lms_error *err)
{
    json_t *d = lms__nemo_preset_fields(cls);
    if (!d) {
        static const char *const sizes[] = {"num_layers", "hidden_size", "num_attention_heads"};
        for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
            if (json_integer_value(json_object_get(f, sizes[i])) <= 0)
                return lms_error_set(err, LMS_EFORMAT,
                                     "'%s': model config class '%s' is not a preset this tool "
                                     "knows, and %s is not given (no %s)",
                                     from, cls[0] ? cls : "(none)", sizes[i],
                                     strstr(from, "run_config") ? "value in run_config.yaml"
                                                                : "value in io.json or model.yaml");
        /* a class NeMo does not define (a Bridge provider, a user's subclass): only the family's
         * conventions (norm epsilon, RoPE base, head size, biases), never its sizes */
        const char *base = NULL;
        lms_arch_desc_by_nemo_class(cls, &base);
        d = base ? lms__nemo_preset_fields(base) : NULL;
        static const char *const own_sizes[] = {
            "num_layers",       "hidden_size", "ffn_hidden_size",
            "num_query_groups", "vocab_size",  "share_embeddings_and_output_weights",
            "seq_length",       "max_position_embeddings",
        };
        for (size_t i = 0; d && i < sizeof(own_sizes) / sizeof(own_sizes[0]); i++)
            json_object_del(d, own_sizes[i]);
    }
    if (d && json_object_update_missing(f, d) != 0) {
        json_decref(d);
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    json_decref(d);
    return LMS_OK;
}

/* Megatron/NeMo config fields -> a Hugging Face config.json object, so that one parser (the HF
 * one) turns every source into an arch. Absent fields take the defaults of the config class. */
enum lms_status lms__nemo_hf_from_fields(const json_t *f, const char *cls,
                                         const struct lms_dcp *d, json_t **out,
                                         struct lms_error *err)
{
    const struct lms_arch_desc *desc = lms_arch_desc_by_nemo_class(cls, NULL);
    if (!desc)
        return lms_error_set(err, LMS_EUNSUPPORTED, "unsupported model config class '%s'", cls);
#define GETI(k) json_integer_value(json_object_get(f, k))
    int64_t nh = GETI("num_attention_heads");
    if (nh <= 0)
        return lms_error_set(err, LMS_EFORMAT, "model config lacks num_attention_heads");
    int64_t H = GETI("hidden_size"), ng = GETI("num_query_groups") ? GETI("num_query_groups") : nh;
    if (H < 0 || H > (INT64_C(1) << 40)) /* before 4 * H below; the HF parser bounds it later */
        return lms_error_set(err, LMS_EFORMAT, "model config: hidden_size %lld is out of range",
                             (long long)H);
    int64_t hd = GETI("kv_channels");
    if (!hd)
        hd = desc->nemo_head_dim ? desc->nemo_head_dim : (H / nh);
    json_t *c = json_object();
    json_object_set_new(c, "architectures", json_pack("[s]", desc->hf_class));
    json_object_set_new(c, "model_type", json_string(desc->model_type));
    json_object_set_new(c, "hidden_size", json_integer(H));
    json_object_set_new(c, "intermediate_size",
                        json_integer(GETI("ffn_hidden_size") ? GETI("ffn_hidden_size") : 4 * H));
    json_object_set_new(c, "num_hidden_layers", json_integer(GETI("num_layers")));
    json_object_set_new(c, "num_attention_heads", json_integer(nh));
    json_object_set_new(c, "num_key_value_heads", json_integer(ng));
    json_object_set_new(c, "head_dim", json_integer(hd));
    const json_t *eps = json_object_get(f, "layernorm_epsilon");
    json_object_set_new(c, "rms_norm_eps",
                        json_real(json_is_number(eps) ? json_number_value(eps)
                                                      : desc->nemo_norm_eps));
    const json_t *rb = json_object_get(f, "rotary_base");
    json_object_set_new(c, "rope_theta", json_real(json_is_number(rb) ? json_number_value(rb)
                                                                       : desc->nemo_rope_theta));
    int64_t maxpos = GETI("max_position_embeddings") ? GETI("max_position_embeddings")
                                                     : GETI("seq_length");
    json_object_set_new(c, "max_position_embeddings", json_integer(maxpos ? maxpos : 4096));
    /* tie: the output layer decides (a tied checkpoint has none) */
    char key[512] = "";
    for (size_t i = 0; i < d->n_tensors; i++) {
        const char *k = d->tensors[i].key;
        size_t kl = strlen(k);
        if (ends_with(k, kl, LMS_MCORE_OUTPUT))
            snprintf(key, sizeof(key), "%s", k);
    }
    json_object_set_new(c, "tie_word_embeddings", json_boolean(key[0] == 0));
    int64_t V = GETI("vocab_size");
    if (V <= 0) {
        for (size_t i = 0; i < d->n_tensors; i++) {
            const char *k = d->tensors[i].key;
            size_t kl = strlen(k);
            if (ends_with(k, kl, LMS_MCORE_EMBED))
                V = d->tensors[i].shape[0];
        }
    }
    json_object_set_new(c, "vocab_size", json_integer(V));
    const json_t *sf = json_object_get(f, "scale_factor");
    const char *l3 = desc->nemo_llama3_rope_prefix;
    if (json_is_number(sf) || (l3 && strncmp(cls, l3, strlen(l3)) == 0)) {
        json_t *rs = json_object();
        json_object_set_new(rs, "rope_type", json_string("llama3"));
        json_object_set_new(rs, "factor", json_real(json_is_number(sf) ? json_number_value(sf)
                                                                         : 8.0));
        const json_t *lf = json_object_get(f, "low_freq_factor"),
                     *hf = json_object_get(f, "high_freq_factor");
        json_object_set_new(rs, "low_freq_factor",
                            json_real(json_is_number(lf) ? json_number_value(lf) : 1.0));
        json_object_set_new(rs, "high_freq_factor",
                            json_real(json_is_number(hf) ? json_number_value(hf) : 4.0));
        json_object_set_new(rs, "original_max_position_embeddings",
                            json_integer(GETI("old_context_len") ? GETI("old_context_len")
                                                                 : 8192));
        json_object_set_new(c, "rope_scaling", rs);
    }
    const json_t *ws = json_object_get(f, "window_size"); /* [left, right]: Mistral's window */
    if (json_is_array(ws) && json_integer_value(json_array_get(ws, 0)) > 0)
        json_object_set_new(c, "sliding_window",
                            json_integer(json_integer_value(json_array_get(ws, 0))));
    const char *pd = json_string_value(json_object_get(f, "params_dtype"));
    json_object_set_new(c, "torch_dtype",
                        json_string(pd && strncmp(pd, "torch.", 6) == 0 ? pd + 6 : "bfloat16"));
    if (desc->nemo_attention_bias)
        json_object_set_new(c, "attention_bias",
                            json_boolean(json_is_true(json_object_get(f, "add_qkv_bias"))));
#undef GETI
    *out = c;
    return LMS_OK;
}

enum lms_status lms__nemo_context_fields(const char *context, json_t **out, char *cls,
                                        size_t cls_cap, struct lms_error *err)
{
    char p[PATH_MAX], ycls[128];
    json_t *io, *fields = NULL;
    *out = NULL;
    if (!join(p, sizeof(p), context, "io.json"))
        return lms_error_set(err, LMS_EINVAL, "path too long");
    enum lms_status rc = lms_json_load_file(p, LMS_NEMO_JSON_MAX_BYTES, &io, err);
    if (rc)
        return rc;
    rc = io_json_fields(io, &fields, cls, cls_cap, err);
    json_decref(io);
    if (rc)
        return lms_error_wrap(err, "'%s': ", p);
    join(p, sizeof(p), context, "model.yaml");
    if (is_file(p)) {
        struct lms_storage *y;
        json_t *yf = NULL;
        rc = lms_storage_map_file(p, &y, err);
        if (!rc) {
            rc = lms__nemo_yaml_fields(y->base, y->size, "config", &yf, ycls, sizeof(ycls), err);
            lms_storage_release(y);
            if (rc)
                lms_error_wrap(err, "'%s': ", p);
        }
        if (!rc && json_object_update_missing(fields, yf) != 0)
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
        json_decref(yf);
        if (!rc && !cls[0])
            snprintf(cls, cls_cap, "%s", ycls);
    } else {
        join(p, sizeof(p), context, "io.json");
    }
    if (!rc)
        rc = lms__nemo_class_defaults(fields, cls, p, err);
    if (rc)
        json_decref(fields);
    else
        *out = fields;
    return rc;
}
