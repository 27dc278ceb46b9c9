/* tokenizer.json and tokenizer_config.json rebuilt from a GGUF's tokenizer.ggml.* keys
 * (gguf_tokenizer.h), the inverse of what the gguf writer and llama.cpp's converter do for a
 * byte-level BPE tokenizer:
 *   tokenizer.ggml.tokens (id order)   -> model.vocab (unused "[PADi]" fillers left out)
 *   tokenizer.ggml.token_type          -> added_tokens: control (3) special, user defined (4) not
 *   tokenizer.ggml.merges ("a b")      -> model.merges ([a, b]), each checked against the vocab
 *   tokenizer.ggml.pre                 -> the Split regexes llama.cpp runs for that name
 *   bos / eos / padding / unknown ids,
 *   add_bos_token / add_eos_token,
 *   tokenizer.chat_template            -> tokenizer_config.json (and a TemplateProcessing
 *                                         post-processor when a bos or eos is added) */
#include "formats/layouts/gguf_tokenizer.h"

#include <stdio.h>
#include <string.h>

#include "lms/alloc.h"

enum { TOKEN_CONTROL = 3, TOKEN_USER_DEFINED = 4, TOKEN_UNUSED = 5 };

/* ---- the pre-tokenizers -------------------------------------------------------------------- */

/* The regexes behind each pre-tokenizer name, as HF states them. llama.cpp splits the text with
 * each regex in turn, keeping both the matches and the text between them, which is what a
 * Sequence of Split pre-tokenizers with behaviour Isolated does. Qwen2's and Llama 3's are the
 * patterns of their tokenizer.json (llama.cpp runs the same patterns with the case-insensitive
 * group spelled out); "gpt-2" is GPT-2's byte-level pattern; "default" is the chain llama.cpp
 * falls back to for a file without (or with this) name. Qwen2's tokenizer also normalises to
 * NFC, Llama 3's merges whole words found in the vocabulary first (ignore_merges). */
#define MAX_SPLITS 4
static const struct pretokenizer {
    const char *name;
    const char *normalizer; /* HF normalizer type, or NULL */
    bool ignore_merges;
    const char *split[MAX_SPLITS];
} pretokenizers[] = {
    {"qwen2", "NFC", false,
     {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
      "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}},
    {"llama-bpe", NULL, true,
     {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
      "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}},
    {"gpt-2", NULL, false,
     {"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"}},
    {"default", NULL, false,
     {"[\\p{P}\\$\\+<=>\\^~\\|]+",
      "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
      "\\p{N}+", "[0-9][0-9][0-9]"}},
};

static const struct pretokenizer *find_pretokenizer(const char *name)
{
    for (size_t i = 0; i < sizeof pretokenizers / sizeof pretokenizers[0]; i++)
        if (strcmp(pretokenizers[i].name, name) == 0)
            return &pretokenizers[i];
    return NULL;
}

/* ByteLevel without its own regex: the Splits before it have cut the words. */
static json_t *byte_level(bool add_prefix_space, bool trim_offsets, bool use_regex)
{
    return json_pack("{s:s,s:b,s:b,s:b}", "type", "ByteLevel", "add_prefix_space",
                     add_prefix_space, "trim_offsets", trim_offsets, "use_regex", use_regex);
}

static json_t *pre_tokenizer_json(const struct pretokenizer *p)
{
    json_t *seq = json_array();
    for (int i = 0; seq && i < MAX_SPLITS && p->split[i]; i++)
        if (json_array_append_new(seq, json_pack("{s:s,s:{s:s},s:s,s:b}", "type", "Split",
                                                 "pattern", "Regex", p->split[i], "behavior",
                                                 "Isolated", "invert", false)))
            return json_decref(seq), NULL;
    if (!seq || json_array_append_new(seq, byte_level(false, false, false)))
        return json_decref(seq), NULL;
    return json_pack("{s:s,s:o}", "type", "Sequence", "pretokenizers", seq);
}

/* ---- reading the keys ---------------------------------------------------------------------- */

/* The value of an integer key as a signed integer; false when absent or not an integer. */
static bool key_int(const struct lms_gguf *g, const char *key, int64_t *out)
{
    const struct lms_gguf_kv *kv = lms_gguf_find(g, key);
    if (!kv || !lms_gguf_type_is_int(kv->type))
        return false;
    bool is_signed = kv->type == LMS_GGUF_I8 || kv->type == LMS_GGUF_I16 ||
                     kv->type == LMS_GGUF_I32 || kv->type == LMS_GGUF_I64;
    if (!is_signed && kv->v.u > INT64_MAX)
        return false;
    *out = is_signed ? kv->v.i : (int64_t)kv->v.u;
    return true;
}

/* A string key as a NUL-terminated copy in *out (NULL when absent); LMS_EFORMAT when the key is
 * there but is not a string. */
static enum lms_status key_str(const struct lms_gguf *g, const char *key, const char *label,
                               char **out, struct lms_error *err)
{
    *out = NULL;
    const struct lms_gguf_kv *kv = lms_gguf_find(g, key);
    if (!kv)
        return LMS_OK;
    if (kv->type != LMS_GGUF_STRING)
        return lms_error_set(err, LMS_EFORMAT, "'%s': %s is not a string", label, key);
    if (!(*out = lms_strndup(kv->v.s.p, (size_t)kv->v.s.n)))
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    return LMS_OK;
}

/* A string-array key, or an error naming it. */
static enum lms_status str_array(const struct lms_gguf *g, const char *key, const char *label,
                                 const struct lms_gguf_kv **out, struct lms_error *err)
{
    *out = lms_gguf_find(g, key);
    if (!*out)
        return lms_error_set(err, LMS_EFORMAT, "'%s': no %s", label, key);
    if ((*out)->type != LMS_GGUF_ARRAY || (*out)->v.arr.type != LMS_GGUF_STRING)
        return lms_error_set(err, LMS_EFORMAT, "'%s': %s is not an array of strings", label, key);
    return LMS_OK;
}

bool lms__gguf_has_tokenizer(const struct lms_gguf *g)
{
    const struct lms_gguf_kv *kv = lms_gguf_find(g, "tokenizer.ggml.model");
    return kv && !(kv->type == LMS_GGUF_STRING && kv->v.s.n == 4 && !memcmp(kv->v.s.p, "none", 4));
}

/* ---- the vocabulary ------------------------------------------------------------------------ */

struct vocab {
    uint64_t n;
    char **text;   /* NUL-terminated token texts, id order */
    int32_t *type; /* llama.cpp token types (1 normal when the file has none) */
};

static void vocab_release(struct vocab *v)
{
    for (uint64_t i = 0; v->text && i < v->n; i++)
        lms_free(v->text[i]);
    lms_free(v->text);
    lms_free(v->type);
}

static enum lms_status read_types(const struct lms_gguf *g, const char *label, struct vocab *v,
                                  struct lms_error *err)
{
    const struct lms_gguf_kv *kv = lms_gguf_find(g, "tokenizer.ggml.token_type");
    for (uint64_t i = 0; i < v->n; i++)
        v->type[i] = 1;
    if (!kv)
        return LMS_OK;
    if (kv->type != LMS_GGUF_ARRAY || !lms_gguf_type_is_int(kv->v.arr.type))
        return lms_error_set(err, LMS_EFORMAT, "'%s': tokenizer.ggml.token_type is not an "
                             "array of integers", label);
    if (kv->v.arr.n != v->n)
        return lms_error_set(err, LMS_EFORMAT, "'%s': tokenizer.ggml.token_type has %llu "
                             "entries for %llu tokens", label, (unsigned long long)kv->v.arr.n,
                             (unsigned long long)v->n);
    for (uint64_t i = 0; i < v->n; i++)
        v->type[i] = (int32_t)lms_gguf_arr_int(kv, i);
    return LMS_OK;
}

static enum lms_status read_vocab(const struct lms_gguf *g, const char *label, struct vocab *v,
                                  struct lms_error *err)
{
    const struct lms_gguf_kv *kv;
    enum lms_status rc = str_array(g, "tokenizer.ggml.tokens", label, &kv, err);
    if (rc)
        return rc;
    v->n = kv->v.arr.n;
    if (v->n == 0 || v->n > INT32_MAX)
        return lms_error_set(err, LMS_EFORMAT, "'%s': tokenizer.ggml.tokens has %llu tokens",
                             label, (unsigned long long)v->n);
    v->text = lms_calloc((size_t)v->n, sizeof *v->text);
    v->type = lms_calloc((size_t)v->n, sizeof *v->type);
    if (!v->text || !v->type)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    const uint8_t *cur = kv->v.arr.data;
    for (uint64_t i = 0; i < v->n; i++) {
        struct lms_gguf_str s = lms_gguf_next_str(&cur);
        if (memchr(s.p, 0, (size_t)s.n))
            return lms_error_set(err, LMS_EFORMAT, "'%s': token %llu holds a NUL byte", label,
                                 (unsigned long long)i);
        if (!(v->text[i] = lms_strndup(s.p, (size_t)s.n)))
            return lms_error_set(err, LMS_ENOMEM, "out of memory");
        json_t *probe = json_string(v->text[i]); /* NULL for bytes that are not UTF-8 */
        if (!probe)
            return lms_error_set(err, LMS_EFORMAT, "'%s': token %llu is not valid UTF-8",
                                 label, (unsigned long long)i);
        json_decref(probe);
    }
    return read_types(g, label, v, err);
}

/* model.vocab: text -> id for every token but the unused fillers; a text may name one id. */
static enum lms_status vocab_json(const struct vocab *v, const char *label, json_t **out,
                                  struct lms_error *err)
{
    json_t *o = *out = json_object();
    if (!o)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    for (uint64_t i = 0; i < v->n; i++) {
        if (v->type[i] == TOKEN_UNUSED)
            continue;
        const json_t *had = json_object_get(o, v->text[i]);
        if (had)
            return lms_error_set(err, LMS_EFORMAT, "'%s': token %llu repeats token %lld",
                                 label, (unsigned long long)i,
                                 (long long)json_integer_value(had));
        json_t *id = json_integer((json_int_t)i);
        if (!id)
            return lms_error_set(err, LMS_ENOMEM, "out of memory");
        if (json_object_set_new(o, v->text[i], id))
            return lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    return LMS_OK;
}

/* model.merges as [left, right] pairs; each side and their concatenation must be tokens (the HF
 * BPE model refuses anything else). */
static enum lms_status merges_json(const struct lms_gguf *g, const json_t *vocab,
                                   const char *label, json_t **out, struct lms_error *err)
{
    const struct lms_gguf_kv *kv;
    enum lms_status rc = str_array(g, "tokenizer.ggml.merges", label, &kv, err);
    if (rc)
        return rc;
    json_t *arr = *out = json_array();
    if (!arr)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    const uint8_t *cur = kv->v.arr.data;
    for (uint64_t i = 0; i < kv->v.arr.n && !rc; i++) {
        struct lms_gguf_str s = lms_gguf_next_str(&cur);
        char *m = lms_strndup(s.p, (size_t)s.n);
        if (!m)
            return lms_error_set(err, LMS_ENOMEM, "out of memory");
        char *space = strlen(m) == s.n ? strchr(m, ' ') : NULL;
        if (!space) {
            rc = lms_error_set(err, LMS_EFORMAT, "'%s': merge %llu is not two tokens separated "
                               "by a space", label, (unsigned long long)i);
        } else {
            *space = 0;
            const char *left = m, *right = space + 1;
            char *joined = lms_malloc(s.n);
            if (!joined) {
                rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
            } else {
                snprintf(joined, s.n, "%s%s", left, right);
                if (!json_object_get(vocab, left) || !json_object_get(vocab, right) ||
                    !json_object_get(vocab, joined))
                    rc = lms_error_set(err, LMS_EFORMAT, "'%s': merge %llu ('%s %s') names a "
                                       "token that is not in the vocabulary", label,
                                       (unsigned long long)i, left, right);
                else if (json_array_append_new(arr, json_pack("[s,s]", left, right)))
                    rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
            }
            lms_free(joined);
        }
        lms_free(m);
    }
    return rc;
}

/* added_tokens: llama.cpp's control tokens are HF's special added tokens, its user-defined ones
 * the plain added tokens; both are matched on the raw text, before the model. */
static json_t *added_tokens_json(const struct vocab *v)
{
    json_t *arr = json_array();
    for (uint64_t i = 0; arr && i < v->n; i++) {
        if (v->type[i] != TOKEN_CONTROL && v->type[i] != TOKEN_USER_DEFINED)
            continue;
        json_t *t = json_pack("{s:I,s:s,s:b,s:b,s:b,s:b,s:b}", "id", (json_int_t)i, "content",
                              v->text[i], "single_word", false, "lstrip", false, "rstrip", false,
                              "normalized", false, "special", v->type[i] == TOKEN_CONTROL);
        if (json_array_append_new(arr, t))
            return json_decref(arr), NULL;
    }
    return arr;
}

/* ---- special tokens and the post-processor ------------------------------------------------- */

struct specials {
    int64_t bos, eos, pad, unk; /* -1: none */
    int add_bos, add_eos;       /* -1: the file does not say */
};

static int key_bool(const struct lms_gguf *g, const char *key)
{
    const struct lms_gguf_kv *kv = lms_gguf_find(g, key);
    return kv && kv->type == LMS_GGUF_BOOL ? (int)kv->v.u : -1;
}

static enum lms_status special_id(const struct lms_gguf *g, const char *key,
                                  const struct vocab *v, const char *label, int64_t *id,
                                  struct lms_error *err)
{
    *id = -1;
    if (!lms_gguf_find(g, key))
        return LMS_OK;
    if (!key_int(g, key, id) || *id < 0 || (uint64_t)*id >= v->n)
        return lms_error_set(err, LMS_EFORMAT, "'%s': %s is not the id of one of the %llu "
                             "tokens", label, key, (unsigned long long)v->n);
    return LMS_OK;
}

static enum lms_status read_specials(const struct lms_gguf *g, const struct vocab *v,
                                     const char *label, struct specials *s,
                                     struct lms_error *err)
{
    enum lms_status rc = special_id(g, "tokenizer.ggml.bos_token_id", v, label, &s->bos, err);
    if (!rc)
        rc = special_id(g, "tokenizer.ggml.eos_token_id", v, label, &s->eos, err);
    if (!rc)
        rc = special_id(g, "tokenizer.ggml.padding_token_id", v, label, &s->pad, err);
    if (!rc)
        rc = special_id(g, "tokenizer.ggml.unknown_token_id", v, label, &s->unk, err);
    s->add_bos = key_bool(g, "tokenizer.ggml.add_bos_token");
    s->add_eos = key_bool(g, "tokenizer.ggml.add_eos_token");
    if (!rc && s->add_bos == 1 && s->bos < 0)
        rc = lms_error_set(err, LMS_EFORMAT, "'%s': tokenizer.ggml.add_bos_token without a "
                           "tokenizer.ggml.bos_token_id", label);
    if (!rc && s->add_eos == 1 && s->eos < 0)
        rc = lms_error_set(err, LMS_EFORMAT, "'%s': tokenizer.ggml.add_eos_token without a "
                           "tokenizer.ggml.eos_token_id", label);
    return rc;
}

/* Appends {"SpecialToken": ...} or {"Sequence": ...} pieces of a TemplateProcessing. */
static int piece(json_t *arr, const char *kind, const char *id, int type_id)
{
    return json_array_append_new(arr, json_pack("{s:{s:s,s:i}}", kind, "id", id, "type_id",
                                                type_id));
}

static json_t *template_pieces(const struct vocab *v, const struct specials *s, bool pair)
{
    json_t *arr = json_array();
    int bad = !arr;
    for (int seg = 0; !bad && seg < (pair ? 2 : 1); seg++) {
        if (s->add_bos == 1)
            bad |= piece(arr, "SpecialToken", v->text[s->bos], seg);
        bad |= piece(arr, "Sequence", seg ? "B" : "A", seg);
        if (s->add_eos == 1)
            bad |= piece(arr, "SpecialToken", v->text[s->eos], seg);
    }
    return bad ? json_decref(arr), NULL : arr;
}

static int add_special_entry(json_t *o, const struct vocab *v, int64_t id)
{
    return json_object_set_new(o, v->text[id], json_pack("{s:s,s:[I],s:[s]}", "id", v->text[id],
                                                         "ids", (json_int_t)id, "tokens",
                                                         v->text[id]));
}

/* ByteLevel (offsets only, as Qwen2's), followed by a TemplateProcessing that adds the bos and
 * eos tokens when the file says llama.cpp adds them (as Llama 3's). */
static json_t *post_processor_json(const struct vocab *v, const struct specials *s)
{
    json_t *bl = byte_level(false, false, false);
    if (s->add_bos != 1 && s->add_eos != 1)
        return bl;
    json_t *specials = json_object();
    int bad = !specials;
    if (!bad && s->add_bos == 1)
        bad |= add_special_entry(specials, v, s->bos);
    if (!bad && s->add_eos == 1)
        bad |= add_special_entry(specials, v, s->eos);
    json_t *tmpl = bad ? NULL : json_pack("{s:s,s:o,s:o,s:o}", "type", "TemplateProcessing",
                                          "single", template_pieces(v, s, false), "pair",
                                          template_pieces(v, s, true), "special_tokens",
                                          specials);
    if (bad)
        json_decref(specials);
    if (!bl || !tmpl) {
        json_decref(bl);
        json_decref(tmpl);
        return NULL;
    }
    return json_pack("{s:s,s:[o,o]}", "type", "Sequence", "processors", bl, tmpl);
}

/* ---- the two files ------------------------------------------------------------------------- */

static json_t *tokenizer_json(const struct pretokenizer *p, const struct vocab *v,
                              const struct specials *s, json_t *vocab, json_t *merges)
{
    json_t *model = json_pack("{s:s,s:n,s:n,s:n,s:n,s:b,s:b,s:b,s:O,s:O}", "type", "BPE",
                              "dropout", "unk_token", "continuing_subword_prefix",
                              "end_of_word_suffix", "fuse_unk", false, "byte_fallback", false,
                              "ignore_merges", p->ignore_merges, "vocab", vocab, "merges",
                              merges);
    if (model && s->unk >= 0 &&
        json_object_set_new(model, "unk_token", json_string(v->text[s->unk])))
        return json_decref(model), NULL;
    json_t *normalizer = p->normalizer ? json_pack("{s:s}", "type", p->normalizer) : json_null();
    return json_pack("{s:s,s:n,s:n,s:o,s:o,s:o,s:o,s:o,s:o}", "version", "1.0", "truncation",
                     "padding", "added_tokens", added_tokens_json(v), "normalizer", normalizer,
                     "pre_tokenizer", pre_tokenizer_json(p), "post_processor",
                     post_processor_json(v, s), "decoder", byte_level(true, true, true),
                     "model", model);
}

/* "bos_token": text, or null as transformers writes an unset one. */
static int set_token(json_t *cfg, const char *key, const struct vocab *v, int64_t id)
{
    return json_object_set_new(cfg, key, id >= 0 ? json_string(v->text[id]) : json_null());
}

static json_t *added_tokens_decoder(const json_t *added)
{
    json_t *o = json_object();
    size_t i;
    const json_t *t;
    json_array_foreach(added, i, t) {
        char id[24];
        snprintf(id, sizeof id, "%lld", (long long)json_integer_value(json_object_get(t, "id")));
        json_t *e = json_deep_copy(t);
        if (!o || !e || json_object_del(e, "id") || json_object_set_new(o, id, e))
            return json_decref(o), NULL;
    }
    return o;
}

static enum lms_status config_json(const struct lms_gguf *g, const char *label,
                                   const struct vocab *v, const struct specials *s,
                                   const json_t *tok, int64_t max_len, json_t **out,
                                   struct lms_error *err)
{
    char *tmpl;
    enum lms_status rc = key_str(g, "tokenizer.chat_template", label, &tmpl, err);
    if (rc)
        return rc;
    json_t *cfg = *out = json_pack("{s:s}", "tokenizer_class", "PreTrainedTokenizerFast");
    int bad = !cfg;
    bad = bad || set_token(cfg, "bos_token", v, s->bos) || set_token(cfg, "eos_token", v, s->eos) ||
          set_token(cfg, "pad_token", v, s->pad) || set_token(cfg, "unk_token", v, s->unk);
    if (!bad && s->add_bos >= 0)
        bad = json_object_set_new(cfg, "add_bos_token", json_boolean(s->add_bos));
    if (!bad && s->add_eos >= 0)
        bad = json_object_set_new(cfg, "add_eos_token", json_boolean(s->add_eos));
    if (!bad && max_len > 0)
        bad = json_object_set_new(cfg, "model_max_length", json_integer((json_int_t)max_len));
    /* llama.cpp's byte-level decoding keeps the spaces around punctuation */
    bad = bad || json_object_set_new(cfg, "clean_up_tokenization_spaces", json_false());
    bad = bad || json_object_set_new(cfg, "added_tokens_decoder",
                                     added_tokens_decoder(json_object_get(tok, "added_tokens")));
    if (!bad && tmpl && json_object_set_new(cfg, "chat_template", json_string(tmpl)))
        rc = lms_error_set(err, LMS_EFORMAT, "'%s': tokenizer.chat_template is not valid UTF-8",
                           label);
    else if (bad)
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
    lms_free(tmpl);
    return rc;
}

/* Checks the model and pre-tokenizer names; *p is the pre-tokenizer to state. */
static enum lms_status pick_pretokenizer(const struct lms_gguf *g, const char *label,
                                         const struct pretokenizer **p, struct lms_error *err)
{
    char *model, *pre = NULL;
    enum lms_status rc = key_str(g, "tokenizer.ggml.model", label, &model, err);
    if (!rc && !model)
        rc = lms_error_set(err, LMS_EFORMAT, "'%s': no tokenizer.ggml.model", label);
    if (!rc && strcmp(model, "gpt2") != 0)
        rc = lms_error_set(err, LMS_EUNSUPPORTED, "'%s': tokenizer.ggml.model '%s' is not "
                           "rebuilt (only 'gpt2', byte-level BPE)", label, model);
    if (!rc)
        rc = key_str(g, "tokenizer.ggml.pre", label, &pre, err);
    /* llama.cpp runs its default pre-tokenizer for a file that names none */
    if (!rc && !(*p = find_pretokenizer(pre ? pre : "default")))
        rc = lms_error_set(err, LMS_EUNSUPPORTED, "'%s': pre-tokenizer '%s' is not rebuilt "
                           "(qwen2, llama-bpe, gpt-2, default)", label, pre);
    lms_free(model);
    lms_free(pre);
    return rc;
}

enum lms_status lms__gguf_tokenizer_rebuild(const struct lms_gguf *g, const char *label,
                                            int64_t model_max_length, json_t **tok,
                                            json_t **cfg, struct lms_error *err)
{
    *tok = *cfg = NULL;
    const struct pretokenizer *p = NULL;
    struct vocab v = {0};
    struct specials s = {0};
    json_t *vocab = NULL, *merges = NULL;
    enum lms_status rc = pick_pretokenizer(g, label, &p, err);
    if (!rc)
        rc = read_vocab(g, label, &v, err);
    if (!rc)
        rc = vocab_json(&v, label, &vocab, err);
    if (!rc)
        rc = merges_json(g, vocab, label, &merges, err);
    if (!rc)
        rc = read_specials(g, &v, label, &s, err);
    if (!rc && !(*tok = tokenizer_json(p, &v, &s, vocab, merges)))
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
    if (!rc)
        rc = config_json(g, label, &v, &s, *tok, model_max_length, cfg, err);
    json_decref(vocab);
    json_decref(merges);
    vocab_release(&v);
    if (rc) {
        json_decref(*tok);
        json_decref(*cfg);
        *tok = *cfg = NULL;
    }
    return rc;
}
