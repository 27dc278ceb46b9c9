/* HF checkpoints: every fixture reads, writes and reads back bit for bit with its config intact;
 * resharding with the reference's shard size reproduces the reference's files byte for byte
 * (they were written by transformers 5.17 save_pretrained); config.json parsing of both rope
 * styles and the supported families. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check_main.h"
#include "lms/alloc.h"
#include "lms/format.h"
#include "lms/hf.h"
#include "lms/json.h"
#include "lms/outdir.h"

static const char *fixture_dirs[] = {
    "models/qwen3-tiny", "models/llama-tiny",      "models/qwen2-tiny",
    "models/qwen3-tiny-bf16-sharded", "models/qwen3-tiny-distill-reference/student", "teacher",
    "models/phi3-tiny",
};

static char *temp_dir(void)
{
    static char tmpl[64];
    snprintf(tmpl, sizeof(tmpl), "/tmp/lms-test-hf-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpl));
    return tmpl;
}

static void read_ok(const char *path, struct lms_model *m)
{
    struct lms_error err;
    ck_assert_msg(lms_checkpoint_read(path, m, &err) == LMS_OK, "%s", err.msg);
}

static void write_ok(const struct lms_model *m, const char *path, struct lms_write_opts *o)
{
    struct lms_error err;
    struct lms_write_result res;
    ck_assert_msg(lms_format_hf.write(m, path, o, &res, &err) == LMS_OK, "%s", err.msg);
}

static void *read_all(const struct lms_view *v)
{
    void *buf = lms_malloc(lms_view_nbytes(v));
    ck_assert_int_eq(lms_view_read(v, 0, lms_view_numel(v), buf, NULL), LMS_OK);
    return buf;
}

/* Same tensor names, dtypes, shapes and bytes. */
static void assert_same_tensors(const struct lms_model *a, const struct lms_model *b)
{
    ck_assert_uint_eq(a->n_tensors, b->n_tensors);
    for (size_t i = 0; i < a->n_tensors; i++) {
        const struct lms_tensor *t = &a->tensors[i];
        const struct lms_tensor *u = lms_model_find_name(b, t->name);
        ck_assert_msg(u != NULL, "tensor '%s' missing after round trip", t->name);
        ck_assert_int_eq(t->view->dtype, u->view->dtype);
        ck_assert_int_eq(t->view->ndim, u->view->ndim);
        for (int k = 0; k < t->view->ndim; k++)
            ck_assert_int_eq(t->view->shape[k], u->view->shape[k]);
        void *x = read_all(t->view), *y = read_all(u->view);
        ck_assert_msg(memcmp(x, y, lms_view_nbytes(t->view)) == 0, "tensor '%s' differs", t->name);
        lms_free(x);
        lms_free(y);
    }
}

START_TEST(every_fixture_round_trips)
{
    char path[1024], out[1200];
    const char *dir = fixture_path(fixture_dirs[_i], path, sizeof(path));
    struct lms_model a, b;
    read_ok(dir, &a);
    snprintf(out, sizeof(out), "%s/out", temp_dir());
    struct lms_write_opts o = {.dtype = LMS_DTYPE_COUNT};
    write_ok(&a, out, &o);
    read_ok(out, &b);
    assert_same_tensors(&a, &b);
    ck_assert(json_equal(a.hf_config, b.hf_config));
    ck_assert_int_eq(a.arch.n_layers, b.arch.n_layers);
    ck_assert_int_eq(a.arch.head_dim, b.arch.head_dim);
    ck_assert(a.arch.rope.theta == b.arch.rope.theta && a.arch.norm_eps == b.arch.norm_eps);
    ck_assert_uint_eq(a.n_aux_files, b.n_aux_files);
    lms_model_release(&a);
    lms_model_release(&b);
    lms_remove_tree(out);
}
END_TEST

static void assert_same_file(const char *x, const char *y)
{
    struct lms_storage *a, *b;
    ck_assert_int_eq(lms_storage_map_file(x, &a, NULL), LMS_OK);
    ck_assert_int_eq(lms_storage_map_file(y, &b, NULL), LMS_OK);
    ck_assert_msg(a->size == b->size && memcmp(a->base, b->base, a->size) == 0, "%s != %s", x, y);
    lms_storage_release(a);
    lms_storage_release(b);
}

/* Resharding to the reference's max_shard_size gives byte-identical shards, index and config. */
static void check_reproduces(const char *rel, uint64_t max, const char *const *files)
{
    char path[1024], out[1200], x[1400], y[1400];
    const char *dir = fixture_path(rel, path, sizeof(path));
    struct lms_model m;
    read_ok(dir, &m);
    snprintf(out, sizeof(out), "%s/out", temp_dir());
    struct lms_write_opts o = {.dtype = LMS_DTYPE_COUNT, .max_shard_size = max};
    write_ok(&m, out, &o);
    for (int i = 0; files[i]; i++) {
        snprintf(x, sizeof(x), "%s/%s", dir, files[i]);
        snprintf(y, sizeof(y), "%s/%s", out, files[i]);
        assert_same_file(x, y);
    }
    lms_model_release(&m);
    lms_remove_tree(out);
}

START_TEST(reshard_reproduces_reference_bytes)
{
    static const char *const teacher[] = {
        "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors", "model.safetensors.index.json", "config.json",
        "tokenizer.json", NULL};
    check_reproduces("teacher", 9000000, teacher);
    static const char *const sharded[] = {
        "model-00001-of-00005.safetensors", "model-00002-of-00005.safetensors",
        "model-00003-of-00005.safetensors", "model-00004-of-00005.safetensors",
        "model-00005-of-00005.safetensors", "model.safetensors.index.json", "config.json", NULL};
    check_reproduces("models/qwen3-tiny-bf16-sharded", 150000, sharded);
    static const char *const single[] = {"model.safetensors", "config.json", NULL};
    check_reproduces("models/llama-tiny", 0, single);
    check_reproduces("models/qwen2-tiny", 0, single);
    /* Phi-3's fused qkv_proj and gate_up_proj are split into views and joined again */
    check_reproduces("models/phi3-tiny", 0, single);
}
END_TEST

/* f32 -> bf16 -> f32 of the fp32 fixture equals the bf16 fixture made by PyTorch's cast. */
START_TEST(cast_matches_reference_bf16)
{
    char p1[1024], p2[1024], out[1200];
    struct lms_model f32, ref, cast;
    read_ok(fixture_path("models/qwen3-tiny", p1, sizeof(p1)), &f32);
    read_ok(fixture_path("models/qwen3-tiny-bf16-sharded", p2, sizeof(p2)), &ref);
    snprintf(out, sizeof(out), "%s/out", temp_dir());
    struct lms_write_opts o = {.dtype = LMS_DTYPE_BF16};
    write_ok(&f32, out, &o);
    read_ok(out, &cast);
    assert_same_tensors(&ref, &cast);
    ck_assert_int_eq(cast.arch.dtype, LMS_DTYPE_BF16);
    lms_model_release(&f32);
    lms_model_release(&ref);
    lms_model_release(&cast);
    lms_remove_tree(out);
}
END_TEST

static enum lms_status parse_config(const char *text, struct lms_arch *a, struct lms_error *err)
{
    json_t *c;
    ck_assert_int_eq(lms_json_load_buffer("test", text, strlen(text), &c, NULL), LMS_OK);
    enum lms_status rc = lms_hf_config_parse(c, a, err);
    json_decref(c);
    return rc;
}

/* Phi-3: read like Llama (no biases, the window when set); what the engine cannot run is
 * refused with a one-line error naming it: longrope scaling, a partial rotary factor, biases. */
START_TEST(phi3_config)
{
    struct lms_arch a;
    struct lms_error err;
#define PHI3_BASE                                                                              \
    "{\"architectures\":[\"Phi3ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128," \
    "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100"
    ck_assert_int_eq(parse_config(PHI3_BASE ",\"sliding_window\":2047,\"rope_parameters\":{"
                                            "\"rope_type\":\"default\",\"rope_theta\":10000.0,"
                                            "\"partial_rotary_factor\":1.0}}",
                                  &a, &err),
                     LMS_OK);
    ck_assert_int_eq(a.family, LMS_FAMILY_PHI3);
    ck_assert(!a.qkv_bias && !a.o_bias && !a.qk_norm && a.sliding_window == 2047);
    ck_assert_int_eq(parse_config(PHI3_BASE ",\"rope_scaling\":{\"type\":\"longrope\","
                                            "\"short_factor\":[1],\"long_factor\":[1]}}",
                                  &a, &err),
                     LMS_EUNSUPPORTED);
    ck_assert_str_eq(err.msg, "unsupported rope type 'longrope'");
    ck_assert_int_eq(parse_config(PHI3_BASE ",\"rope_parameters\":{\"rope_type\":\"default\","
                                            "\"rope_theta\":10000.0,"
                                            "\"partial_rotary_factor\":0.5}}",
                                  &a, &err),
                     LMS_EUNSUPPORTED);
    ck_assert_str_eq(err.msg, "unsupported 'partial_rotary_factor' 0.5 (only 1)");
    ck_assert_int_eq(parse_config(PHI3_BASE ",\"partial_rotary_factor\":0.75}", &a, &err),
                     LMS_EUNSUPPORTED);
    ck_assert_int_eq(parse_config(PHI3_BASE ",\"attention_bias\":true}", &a, &err),
                     LMS_EUNSUPPORTED);
    ck_assert_str_eq(err.msg, "unsupported 'attention_bias': true");
#undef PHI3_BASE
}
END_TEST

/* A Phi-3 folder whose config disagrees with its fused tensors: the read fails with one error
 * naming the file and the fused tensor, and its shape against the config's. */
static void phi3_with_config_edit(const char *key, json_int_t value, const char *want)
{
    char src[1024], p[1200], q[1400];
    fixture_path("models/phi3-tiny", src, sizeof src);
    const char *dir = temp_dir();
    snprintf(p, sizeof p, "%s/config.json", src);
    json_t *c;
    ck_assert_int_eq(lms_json_load_file(p, 1 << 20, &c, NULL), LMS_OK);
    json_object_set_new(c, key, json_integer(value));
    snprintf(q, sizeof q, "%s/config.json", dir);
    ck_assert_int_eq(json_dump_file(c, q, 0), 0);
    json_decref(c);
    snprintf(p, sizeof p, "%s/model.safetensors", src);
    snprintf(q, sizeof q, "%s/model.safetensors", dir);
    ck_assert_int_eq(lms_copy_file(p, q, NULL), LMS_OK);
    struct lms_model m;
    struct lms_error err;
    ck_assert_int_eq(lms_checkpoint_read(dir, &m, &err), LMS_ESHAPE);
    ck_assert_msg(strstr(err.msg, want) && strstr(err.msg, "model.safetensors"), "%s", err.msg);
    lms_remove_tree(dir);
}

START_TEST(phi3_fused_shape_mismatch)
{
    /* one KV head instead of two: [q; k; v] has 32 + 8 + 8 rows, the file 64 */
    phi3_with_config_edit("num_key_value_heads", 1,
                          "tensor 'model.layers.0.self_attn.qkv_proj.weight' has shape [64, 32], "
                          "the config implies [48, 32]");
    /* FFN 48 instead of 64: [gate; up] has 96 rows, the file 128 */
    phi3_with_config_edit("intermediate_size", 48,
                          "tensor 'model.layers.0.mlp.gate_up_proj.weight' has shape [128, 32], "
                          "the config implies [96, 32]");
}
END_TEST

START_TEST(config_styles_and_families)
{
    struct lms_arch a;
    struct lms_error err;
    /* transformers 4 style: top-level rope_theta, llama3 rope_scaling, no head_dim */
    ck_assert_int_eq(parse_config("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":4096,"
                                  "\"intermediate_size\":14336,\"num_hidden_layers\":32,"
                                  "\"num_attention_heads\":32,\"num_key_value_heads\":8,"
                                  "\"vocab_size\":128256,\"rms_norm_eps\":1e-05,"
                                  "\"rope_theta\":500000.0,\"rope_scaling\":{\"factor\":8.0,"
                                  "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
                                  "\"original_max_position_embeddings\":8192,"
                                  "\"rope_type\":\"llama3\"},\"torch_dtype\":\"bfloat16\"}",
                                  &a, &err),
                     LMS_OK);
    ck_assert_int_eq(a.head_dim, 128);
    ck_assert_int_eq(a.rope.type, LMS_ROPE_LLAMA3);
    ck_assert(a.rope.theta == 500000.0 && a.rope.factor == 8.0);
    ck_assert_int_eq(a.rope.original_max_position, 8192);
    ck_assert_int_eq(a.dtype, LMS_DTYPE_BF16);
    ck_assert(!a.tie_embeddings && !a.qkv_bias && !a.qk_norm);
    /* Mistral: sliding window honoured; Qwen2: qkv bias implied */
    ck_assert_int_eq(parse_config("{\"model_type\":\"mistral\",\"hidden_size\":64,"
                                  "\"intermediate_size\":128,\"num_hidden_layers\":2,"
                                  "\"num_attention_heads\":4,\"vocab_size\":100,"
                                  "\"sliding_window\":4096}",
                                  &a, &err),
                     LMS_OK);
    ck_assert_int_eq(a.family, LMS_FAMILY_MISTRAL);
    ck_assert_int_eq(a.sliding_window, 4096);
    ck_assert_int_eq(a.n_groups, 4);
    ck_assert_int_eq(parse_config("{\"architectures\":[\"Qwen2ForCausalLM\"],\"hidden_size\":64,"
                                  "\"intermediate_size\":128,\"num_hidden_layers\":2,"
                                  "\"num_attention_heads\":4,\"num_key_value_heads\":2,"
                                  "\"vocab_size\":100,\"use_sliding_window\":false,"
                                  "\"sliding_window\":4096}",
                                  &a, &err),
                     LMS_OK);
    ck_assert(a.qkv_bias && !a.o_bias && a.sliding_window == 0);
    /* failures name the key */
    ck_assert_int_eq(parse_config("{\"architectures\":[\"GPT2LMHeadModel\"]}", &a, &err),
                     LMS_EUNSUPPORTED);
    ck_assert_str_eq(err.msg, "unsupported architecture 'GPT2LMHeadModel'");
    ck_assert_int_eq(parse_config("{\"model_type\":\"qwen3\",\"hidden_size\":64}", &a, &err),
                     LMS_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "intermediate_size"));
    ck_assert_int_eq(parse_config("{\"model_type\":\"qwen3\",\"hidden_size\":64,"
                                  "\"intermediate_size\":128,\"num_hidden_layers\":2,"
                                  "\"num_attention_heads\":6,\"num_key_value_heads\":4,"
                                  "\"vocab_size\":100}",
                                  &a, &err),
                     LMS_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "multiple"));
}
END_TEST

/* The writer keeps the rope style of its input and rewrites dimensions. */
START_TEST(config_build_keeps_style)
{
    const char *t4 = "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,"
                     "\"intermediate_size\":128,\"num_hidden_layers\":2,"
                     "\"num_attention_heads\":4,\"vocab_size\":100,\"rope_theta\":10000.0,"
                     "\"custom_key\":{\"nested\":[1,2.5]}}";
    json_t *c, *out;
    struct lms_arch a;
    ck_assert_int_eq(lms_json_load_buffer("t", t4, strlen(t4), &c, NULL), LMS_OK);
    ck_assert_int_eq(lms_hf_config_parse(c, &a, NULL), LMS_OK);
    a.ffn = 96;
    a.n_layers = 1;
    ck_assert_int_eq(lms_hf_config_build(&a, c, &out, NULL), LMS_OK);
    ck_assert_ptr_null(json_object_get(out, "rope_parameters"));
    ck_assert(json_real_value(json_object_get(out, "rope_theta")) == 10000.0);
    ck_assert_int_eq(json_integer_value(json_object_get(out, "intermediate_size")), 96);
    ck_assert_int_eq(json_integer_value(json_object_get(out, "num_hidden_layers")), 1);
    ck_assert_ptr_null(json_object_get(out, "head_dim")); /* implied by hidden / heads */
    ck_assert(json_equal(json_object_get(out, "custom_key"), json_object_get(c, "custom_key")));
    json_decref(out);
    a.hidden = 48; /* hidden pruned: head_dim no longer implied, so written explicitly */
    ck_assert_int_eq(lms_hf_config_build(&a, c, &out, NULL), LMS_OK);
    ck_assert_int_eq(json_integer_value(json_object_get(out, "head_dim")), 16);
    json_decref(out);
    json_decref(c);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("hf");
    TCase *tc = tcase_create("hf");
    tcase_add_loop_test(tc, every_fixture_round_trips, 0,
                        (int)(sizeof(fixture_dirs) / sizeof(fixture_dirs[0])));
    tcase_add_test(tc, reshard_reproduces_reference_bytes);
    tcase_add_test(tc, cast_matches_reference_bf16);
    tcase_add_test(tc, config_styles_and_families);
    tcase_add_test(tc, phi3_config);
    tcase_add_test(tc, phi3_fused_shape_mismatch);
    tcase_add_test(tc, config_build_keeps_style);
    suite_add_tcase(s, tc);
    return s;
}
