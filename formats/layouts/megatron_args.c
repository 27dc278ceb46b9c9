/* The model config of a plain Megatron-LM save: Megatron-LM's save_checkpoint stores its command
 * line arguments (an argparse.Namespace) as "args" in the common state (common.pt of the
 * iteration directory) and writes no other config file. The pickle is read as data (formats/
 * pickle.c: allow-listed globals become symbols, nothing is called), and the Namespace's
 * attributes are mapped to the NeMo/Megatron config field names the rest of the reader uses.
 * Megatron-LM has no model-family name: Qwen3 is recognised by its q/k layer norms, Qwen2 by its
 * QKV bias, anything else is read as Llama; the sizes must all come from args. */
#include <string.h>

#include "formats/codecs/pickle.h"
#include "formats/codecs/zip.h"
#include "lms/storage.h"

#include "formats/layouts/nemo_impl.h"

/* Attribute value of the Namespace state (a dict), or NULL. */
static const struct lms_pkl *arg(const struct lms_pkl *state, const char *name)
{
    const struct lms_pkl *v = lms_pkl_dict_get(state, name);
    return v && v->kind != LMS_PKL_NONE ? v : NULL;
}

static bool arg_true(const struct lms_pkl *state, const char *name)
{
    const struct lms_pkl *v = arg(state, name);
    return v && ((v->kind == LMS_PKL_BOOL && v->u.b) || (v->kind == LMS_PKL_INT && v->u.i));
}

/* Copies an integer attribute (must be a positive int when present). */
static enum lms_status copy_int(const struct lms_pkl *state, const char *name, json_t *f,
                                const char *field, struct lms_error *err)
{
    const struct lms_pkl *v = arg(state, name);
    if (!v)
        return LMS_OK;
    if (v->kind != LMS_PKL_INT || v->u.i <= 0)
        return lms_error_set(err, LMS_EFORMAT, "args.%s is not a positive integer", name);
    json_object_set_new(f, field, json_integer(v->u.i));
    return LMS_OK;
}

static enum lms_status copy_float(const struct lms_pkl *state, const char *name, json_t *f,
                                  const char *field, struct lms_error *err)
{
    const struct lms_pkl *v = arg(state, name);
    if (!v)
        return LMS_OK;
    if (v->kind != LMS_PKL_FLOAT && v->kind != LMS_PKL_INT)
        return lms_error_set(err, LMS_EFORMAT, "args.%s is not a number", name);
    json_object_set_new(f, field,
                        json_real(v->kind == LMS_PKL_FLOAT ? v->u.f : (double)v->u.i));
    return LMS_OK;
}

/* The Namespace attributes -> config fields. */
static enum lms_status map_args(const struct lms_pkl *st, json_t *f, char *cls, size_t cls_cap,
                                struct lms_error *err)
{
    static const struct {
        const char *arg, *field;
    } ints[] = {
        {"num_layers", "num_layers"},
        {"hidden_size", "hidden_size"},
        {"ffn_hidden_size", "ffn_hidden_size"},
        {"num_attention_heads", "num_attention_heads"},
        {"kv_channels", "kv_channels"},
        {"max_position_embeddings", "max_position_embeddings"},
        {"seq_length", "seq_length"},
    };
    enum lms_status rc = LMS_OK;
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]) && !rc; i++)
        rc = copy_int(st, ints[i].arg, f, ints[i].field, err);
    static const char *const required[] = {"num_layers", "hidden_size", "num_attention_heads"};
    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]) && !rc; i++)
        if (!json_object_get(f, required[i]))
            rc = lms_error_set(err, LMS_EFORMAT, "args.%s is missing", required[i]);
    if (!rc && arg_true(st, "group_query_attention"))
        rc = copy_int(st, "num_query_groups", f, "num_query_groups", err);
    if (!rc && !json_object_get(f, "num_query_groups")) /* no GQA: one group per head */
        json_object_set(f, "num_query_groups", json_object_get(f, "num_attention_heads"));
    if (!rc)
        rc = copy_float(st, "norm_epsilon", f, "layernorm_epsilon", err);
    if (!rc)
        rc = copy_float(st, "rotary_base", f, "rotary_base", err);
    /* the embedding's row count: the tokenizer's size rounded up by Megatron-LM */
    if (!rc)
        rc = copy_int(st, "padded_vocab_size", f, "vocab_size", err);
    if (!rc && arg_true(st, "use_rope_scaling")) {
        json_object_set_new(f, "scale_factor", json_real(8.0));
        rc = copy_float(st, "rope_scaling_factor", f, "scale_factor", err);
    }
    if (rc)
        return rc;
    /* the family follows from what the args show; its norm and activation must match them */
    bool qk = arg_true(st, "qk_layernorm"), qkv_bias = arg_true(st, "add_qkv_bias");
    const struct lms_arch_desc *desc = lms_arch_desc_guess(qk, qkv_bias);
    const char *norm_name = lms_arch_norm_mcore_name(desc->norm);
    const struct lms_pkl *norm = arg(st, "normalization");
    if (norm && (norm->kind != LMS_PKL_STR || strcmp(norm->u.s.data, norm_name) != 0))
        return lms_error_set(err, LMS_EUNSUPPORTED, "args.normalization is not %s", norm_name);
    if (lms_arch_act_gated(desc->act) && !arg_true(st, "swiglu"))
        return lms_error_set(err, LMS_EUNSUPPORTED,
                             "args.swiglu is not set (only SwiGLU models are supported)");
    json_object_set_new(f, "qk_layernorm", json_boolean(qk));
    json_object_set_new(f, "add_qkv_bias", json_boolean(qkv_bias));
    json_object_set_new(f, "share_embeddings_and_output_weights",
                        json_boolean(!arg_true(st, "untie_embeddings_and_output_weights")));
    enum lms_dtype dt;
    const char *tn = NULL;
    if (lms_pkl_torch_dtype(arg(st, "params_dtype"), &dt))
        tn = lms_dtype_torch_name(dt);
    else if (arg_true(st, "bf16"))
        tn = "bfloat16";
    else if (arg_true(st, "fp16"))
        tn = "float16";
    char dtn[64];
    snprintf(dtn, sizeof(dtn), "torch.%s", tn ? tn : "float32");
    json_object_set_new(f, "params_dtype", json_string(dtn));
    /* not a NeMo class name: only the family's conventions fill what args lack, never sizes */
    snprintf(cls, cls_cap, "%s (Megatron-LM args)", desc->label);
    return LMS_OK;
}

enum lms_status lms__megatron_args_fields(const char *common_pt, json_t **out, char *cls,
                                          size_t cls_cap, struct lms_error *err)
{
    *out = NULL;
    struct lms_storage *s;
    enum lms_status rc = lms_storage_map_file(common_pt, &s, err);
    if (rc)
        return rc;
    struct lms_zip z = {0};
    struct lms_pkl_doc doc = {0};
    json_t *f = NULL;
    rc = lms_zip_parse(s->base, s->size, &z, err);
    const struct lms_zip_entry *pk = rc ? NULL : lms_zip_find(&z, "data.pkl");
    if (!rc && !pk)
        rc = lms_error_set(err, LMS_EFORMAT, "no data.pkl record");
    if (!rc)
        rc = lms_zip_check_crc(s->base, pk, err);
    if (!rc)
        rc = lms_pkl_parse((const unsigned char *)s->base + pk->data_off, (size_t)pk->size, &doc,
                           err);
    const struct lms_pkl *args = rc ? NULL : lms_pkl_dict_get(doc.root, "args");
    if (!rc && args) {
        if (!lms_pkl_is_obj(args, "argparse", "Namespace") || !args->u.obj.state ||
            args->u.obj.state->kind != LMS_PKL_DICT)
            rc = lms_error_set(err, LMS_EFORMAT,
                               "'args' is not an argparse.Namespace with attributes");
        else if (!(f = json_object()))
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
        else
            rc = map_args(args->u.obj.state, f, cls, cls_cap, err);
    }
    if (rc) {
        json_decref(f);
        f = NULL;
        lms_error_wrap(err, "'%s': ", common_pt);
    }
    lms_pkl_doc_release(&doc);
    lms_zip_release(&z);
    lms_storage_release(s);
    *out = f;
    return rc;
}
