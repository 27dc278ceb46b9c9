/* NeMo 2 model configs where NeMo keeps them: the preset table against a dump of NeMo 2.7.3's
 * own config classes (fixtures/nemo/presets.json, tests/tools/dump_nemo_presets.py); contexts
 * NeMo 2.7.3 wrote (fixtures/nemo/contexts/: an explicit Qwen3Config, whose values are io.json
 * items, and Qwen3Config600M(), whose io.json config object is empty) read with and without
 * model.yaml; nested YAML blocks (dtypes as {_target_, _call_: false}, block lists, objects
 * built by a call) and an unknown preset class. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check_main.h"
#include "formats/layouts/nemo_impl.h"
#include "lms/json.h"
#include "lms/outdir.h"

static json_t *load_json(const char *rel)
{
    char p[1024];
    json_t *v;
    struct lms_error err;
    fixture_path(rel, p, sizeof(p));
    ck_assert_msg(lms_json_load_file(p, 1 << 24, &v, &err) == LMS_OK, "%s", err.msg);
    return v;
}

/* JSON values equal as NeMo means them (1000000 and 1000000.0 are the same number). */
static bool same(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b))
        return json_number_value(a) == json_number_value(b);
    if (json_is_array(a) && json_is_array(b)) {
        if (json_array_size(a) != json_array_size(b))
            return false;
        for (size_t i = 0; i < json_array_size(a); i++)
            if (!same(json_array_get(a, i), json_array_get(b, i)))
                return false;
        return true;
    }
    return json_equal((json_t *)a, (json_t *)b);
}

START_TEST(presets_match_nemo)
{
    json_t *golden = load_json("nemo/presets.json");
    const char *cls;
    json_t *entry;
    size_t n = 0;
    json_object_foreach(golden, cls, entry)
    {
        json_t *ours = lms__nemo_preset_fields(cls);
        ck_assert_msg(ours != NULL, "%s is not in the preset table", cls);
        const json_t *want = json_object_get(entry, "fields");
        const char *k;
        json_t *v;
        json_object_foreach(ours, k, v)
        {
            const json_t *w = json_object_get(want, k);
            ck_assert_msg(w != NULL, "%s.%s is not a field of NeMo's class", cls, k);
            ck_assert_msg(same(v, w), "%s.%s differs from NeMo's", cls, k);
        }
        ck_assert_ptr_nonnull(json_object_get(ours, "num_layers"));
        json_decref(ours);
        n++;
    }
    ck_assert_uint_ge(n, 40);
    ck_assert_ptr_null(lms__nemo_preset_fields("Qwen3Config999B"));
    json_decref(golden);
}
END_TEST

static json_t *context_fields(const char *dir, char *cls, size_t cap)
{
    json_t *f;
    struct lms_error err;
    ck_assert_msg(lms__nemo_context_fields(dir, &f, cls, cap, &err) == LMS_OK, "%s", err.msg);
    return f;
}

static int64_t geti(const json_t *f, const char *k)
{
    return json_integer_value(json_object_get(f, k));
}

START_TEST(explicit_context)
{
    char dir[1024], cls[128];
    fixture_path("nemo/contexts/explicit-qwen3-teacher-shape", dir, sizeof(dir));
    json_t *f = context_fields(dir, cls, sizeof(cls));
    ck_assert_str_eq(cls, "Qwen3Config");
    ck_assert_int_eq(geti(f, "num_layers"), 12);
    ck_assert_int_eq(geti(f, "hidden_size"), 256);
    ck_assert_int_eq(geti(f, "ffn_hidden_size"), 768);
    ck_assert_int_eq(geti(f, "num_attention_heads"), 8);
    ck_assert_int_eq(geti(f, "num_query_groups"), 2);
    ck_assert_int_eq(geti(f, "kv_channels"), 32);
    ck_assert_int_eq(geti(f, "vocab_size"), 4096);
    ck_assert_int_eq(geti(f, "seq_length"), 1024);
    ck_assert(json_is_false(json_object_get(f, "share_embeddings_and_output_weights")));
    /* a pyref in io.json; model.yaml says the same as a nested block */
    ck_assert_str_eq(json_string_value(json_object_get(f, "params_dtype")), "torch.bfloat16");
    json_decref(f);
}
END_TEST

/* Copies a fixture context into a temporary folder, without model.yaml. */
static void copy_io_json_only(const char *fixture, char *dir, size_t cap, const char *from,
                              const char *to)
{
    char src[1024], dst[1100];
    snprintf(dir, cap, "/tmp/lms-test-nemo-config-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    fixture_path(fixture, src, sizeof(src));
    strncat(src, "/io.json", sizeof(src) - strlen(src) - 1);
    FILE *in = fopen(src, "rb");
    ck_assert_ptr_nonnull(in);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof(buf) - 1, in);
    fclose(in);
    buf[n] = 0;
    char *hit = from ? strstr(buf, from) : NULL;
    if (hit) { /* same length: a renamed class */
        ck_assert_uint_eq(strlen(from), strlen(to));
        memcpy(hit, to, strlen(to));
    }
    snprintf(dst, sizeof(dst), "%s/io.json", dir);
    struct lms_error err;
    ck_assert_msg(lms_write_file(dst, buf, n, &err) == LMS_OK, "%s", err.msg);
}

static void check_qwen3_600m(const json_t *f)
{
    ck_assert_int_eq(geti(f, "num_layers"), 28);
    ck_assert_int_eq(geti(f, "hidden_size"), 1024);
    ck_assert_int_eq(geti(f, "ffn_hidden_size"), 3072);
    ck_assert_int_eq(geti(f, "num_attention_heads"), 16);
    ck_assert_int_eq(geti(f, "num_query_groups"), 8);
    ck_assert_int_eq(geti(f, "kv_channels"), 128);
    ck_assert_int_eq(geti(f, "vocab_size"), 151936);
    ck_assert_int_eq(geti(f, "max_position_embeddings"), 40960);
    ck_assert(json_is_true(json_object_get(f, "share_embeddings_and_output_weights")));
    ck_assert(json_is_true(json_object_get(f, "qk_layernorm")));
    ck_assert(json_number_value(json_object_get(f, "layernorm_epsilon")) == 1e-6);
    ck_assert(json_number_value(json_object_get(f, "rotary_base")) == 1e6);
    ck_assert_str_eq(json_string_value(json_object_get(f, "params_dtype")), "torch.float32");
}

START_TEST(preset_context)
{
    char dir[1024], cls[128];
    /* with model.yaml: its values */
    fixture_path("nemo/contexts/preset-qwen3-600m", dir, sizeof(dir));
    json_t *f = context_fields(dir, cls, sizeof(cls));
    ck_assert_str_eq(cls, "Qwen3Config600M");
    check_qwen3_600m(f);
    ck_assert_ptr_null(json_object_get(f, "attention_backend")); /* built by a call: skipped */
    ck_assert(json_is_null(json_object_get(f, "window_size")));
    json_decref(f);
    /* io.json alone: the preset table */
    copy_io_json_only("nemo/contexts/preset-qwen3-600m", dir, sizeof(dir), NULL, NULL);
    f = context_fields(dir, cls, sizeof(cls));
    check_qwen3_600m(f);
    json_decref(f);
    lms_remove_tree(dir);
}
END_TEST

START_TEST(unknown_preset)
{
    char dir[1024], cls[128];
    copy_io_json_only("nemo/contexts/preset-qwen3-600m", dir, sizeof(dir), "Qwen3Config600M",
                      "Qwen3Config900M");
    json_t *f = NULL;
    struct lms_error err;
    ck_assert_int_eq(lms__nemo_context_fields(dir, &f, cls, sizeof(cls), &err), LMS_EFORMAT);
    ck_assert_ptr_null(f);
    ck_assert_msg(strstr(err.msg, "'Qwen3Config900M'") && strstr(err.msg, "io.json") &&
                      !strchr(err.msg, '\n'),
                  "%s", err.msg);
    lms_remove_tree(dir);
}
END_TEST

START_TEST(yaml_blocks)
{
    static const char text[] =
        "_target_: nemo.collections.llm.gpt.model.mistral.MistralModel\n"
        "config:\n"
        "  _target_: nemo.collections.llm.gpt.model.mistral.MistralConfig7B\n"
        "  activation_func:\n"
        "    _call_: false\n"
        "    _target_: torch.nn.functional.silu\n"
        "  attention_backend:\n"
        "    _call_: true\n"
        "    _target_: megatron.core.transformer.enums.AttnBackend\n"
        "  num_layers: 32\n"
        "  params_dtype:\n"
        "    _call_: false\n"
        "    _target_: torch.bfloat16\n"
        "  window_size:\n"
        "  - 4096\n"
        "  - 0\n"
        "  offload_modules: []\n"
        "  mrope_section: [16, 24]\n"
        "  layernorm_epsilon: 1.0e-05\n"
        "optim:\n"
        "  params_dtype:\n"
        "    _call_: false\n"
        "    _target_: torch.float32\n"
        "  num_layers: 99\n";
    json_t *f;
    char cls[128];
    struct lms_error err;
    ck_assert_msg(lms__nemo_yaml_fields(text, sizeof(text) - 1, "config", &f, cls, sizeof(cls),
                                        &err) == LMS_OK,
                  "%s", err.msg);
    ck_assert_str_eq(cls, "MistralConfig7B");
    ck_assert_int_eq(geti(f, "num_layers"), 32);
    ck_assert_str_eq(json_string_value(json_object_get(f, "params_dtype")), "torch.bfloat16");
    ck_assert_str_eq(json_string_value(json_object_get(f, "activation_func")),
                     "torch.nn.functional.silu");
    ck_assert_ptr_null(json_object_get(f, "attention_backend"));
    const json_t *ws = json_object_get(f, "window_size");
    ck_assert(json_is_array(ws) && json_array_size(ws) == 2);
    ck_assert_int_eq(json_integer_value(json_array_get(ws, 0)), 4096);
    ck_assert_int_eq(json_array_size(json_object_get(f, "offload_modules")), 0);
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(f, "mrope_section"), 1)),
                     24);
    ck_assert(json_number_value(json_object_get(f, "layernorm_epsilon")) == 1e-5);
    json_decref(f);
}
END_TEST

/* YAML is Unicode text: invalid UTF-8 is malformed input naming the line, never "out of
 * memory" (jansson refuses such strings); a value cut where it does not fit the reader's line
 * buffer is cut between characters, so valid text stays valid. */
START_TEST(yaml_utf8)
{
    static const char bad[] = "config:\n  num_layers: 2\n  normalization: \"RMS\xffNorm\"\n";
    json_t *f = NULL;
    char cls[128];
    struct lms_error err;
    ck_assert_int_eq(lms__nemo_yaml_fields(bad, sizeof(bad) - 1, "config", &f, cls, sizeof(cls),
                                           &err),
                     LMS_EFORMAT);
    ck_assert_msg(strstr(err.msg, "line 3: not valid UTF-8 (byte 0xff"), "%s", err.msg);
    /* invalid bytes in a section the reader skips are refused as well: the file is not text */
    static const char skipped[] = "optim:\n  name: \"\xc0\xaf\"\nconfig:\n  num_layers: 2\n";
    ck_assert_int_eq(lms__nemo_yaml_fields(skipped, sizeof(skipped) - 1, "config", &f, cls,
                                           sizeof(cls), &err),
                     LMS_EFORMAT);
    ck_assert_msg(strstr(err.msg, "line 2:"), "%s", err.msg);
    /* a 2-byte character across the 1023-byte cut of a long line, and in long keys/targets */
    char text[4096];
    size_t n = (size_t)snprintf(text, sizeof text, "config:\n  note: \"");
    while (n < 8 + 1022)
        text[n++] = 'a';
    for (int i = 0; i < 50; i++) {
        text[n++] = '\xc3';
        text[n++] = '\xa9';
    }
    n += (size_t)snprintf(text + n, sizeof text - n, "\"\n  act:\n    _target_: ");
    for (int i = 0; i < 200; i++) {
        text[n++] = '\xc3';
        text[n++] = '\xa9';
    }
    n += (size_t)snprintf(text + n, sizeof text - n, "\n    _call_: false\n  num_layers: 3\n");
    ck_assert_msg(lms__nemo_yaml_fields(text, n, "config", &f, cls, sizeof(cls), &err) == LMS_OK,
                  "%s", err.msg);
    ck_assert_int_eq(geti(f, "num_layers"), 3);
    const char *target = json_string_value(json_object_get(f, "act"));
    ck_assert_ptr_nonnull(target);
    ck_assert_uint_eq(strlen(target), 254); /* 127 whole characters of the 255 bytes that fit */
    json_decref(f);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("nemo_config");
    TCase *tc = tcase_create("nemo_config");
    tcase_add_test(tc, presets_match_nemo);
    tcase_add_test(tc, explicit_context);
    tcase_add_test(tc, preset_context);
    tcase_add_test(tc, unknown_preset);
    tcase_add_test(tc, yaml_blocks);
    tcase_add_test(tc, yaml_utf8);
    suite_add_tcase(s, tc);
    return s;
}
