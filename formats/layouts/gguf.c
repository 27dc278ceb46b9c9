/* The "gguf" format: the IR model to and from llama.cpp's GGUF file (include/lms/gguf.h).
 *
 * Writing follows what llama.cpp's convert_hf_to_gguf.py produces for these families, so that
 * llama.cpp loads the file: its tensor names, its metadata keys, the row permutation of Q and K
 * for the llama architecture, and the tokenizer as tokenizer.ggml.*. Two lmsurgeon keys make
 * the round trip exact: lmsurgeon.hf_config holds the config.json the HF writer would write, and
 * lmsurgeon.file.NAME the bytes of each travelling file (tokenizer.json, ...). llama.cpp ignores
 * both; a GGUF without them gets a config rebuilt from the llama.cpp keys and, for a byte-level
 * BPE tokenizer, tokenizer.json and tokenizer_config.json rebuilt from tokenizer.ggml.*.
 * llama3 rope scaling is written as llama.cpp's rope_freqs.weight and read back from the carried
 * config, checked against that tensor; YaRN as llama.cpp's rope.scaling.* keys. Families whose
 * llama.cpp architecture stores several roles in one tensor (phi3's attn_qkv and ffn_up) are
 * fused on write (a concatenated view, streamed like any other) and split into row ranges on
 * read. */
#include "lms/gguf.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "formats/codecs/gguf.h"
#include "formats/layouts/gguf_tokenizer.h"
#include "lms/alloc.h"
#include "lms/arch.h"
#include "lms/hf.h"
#include "lms/json.h"
#include "lms/outdir.h"
#include "lms/scratch.h"

/* ---- llama.cpp's names (its architecture name per family is in the family's descriptor) ---- */

/* The family's GGUF mapping, NULL when it has none. */
static const struct lms_arch_desc *family_info(enum lms_family f)
{
    const struct lms_arch_desc *d = lms_arch_desc_of(f);
    return d && d->gguf_arch ? d : NULL;
}

/* llama.cpp's tensor name of each role ("blk.N." is prefixed to the per-layer ones). */
static const char *const role_names[LMS_ROLE_COUNT] = {
    [LMS_ROLE_EMBED] = "token_embd.weight",       [LMS_ROLE_ATTN_NORM] = "attn_norm.weight",
    [LMS_ROLE_Q] = "attn_q.weight",               [LMS_ROLE_K] = "attn_k.weight",
    [LMS_ROLE_V] = "attn_v.weight",               [LMS_ROLE_Q_BIAS] = "attn_q.bias",
    [LMS_ROLE_K_BIAS] = "attn_k.bias",            [LMS_ROLE_V_BIAS] = "attn_v.bias",
    [LMS_ROLE_Q_NORM] = "attn_q_norm.weight",     [LMS_ROLE_K_NORM] = "attn_k_norm.weight",
    [LMS_ROLE_O] = "attn_output.weight",          [LMS_ROLE_O_BIAS] = "attn_output.bias",
    [LMS_ROLE_MLP_NORM] = "ffn_norm.weight",      [LMS_ROLE_GATE] = "ffn_gate.weight",
    [LMS_ROLE_UP] = "ffn_up.weight",              [LMS_ROLE_DOWN] = "ffn_down.weight",
    [LMS_ROLE_FINAL_NORM] = "output_norm.weight", [LMS_ROLE_LM_HEAD] = "output.weight",
};

/* The tensor llama.cpp stores role r in for family d when it is one of several roles fused
 * (*part: its place among them), else NULL. */
static const struct lms_arch_fused *gguf_fused_of(const struct lms_arch_desc *d, enum lms_role r,
                                                  int *part)
{
    for (int f = 0; d && f < d->n_gguf_fused; f++)
        for (int p = 0; p < d->gguf_fused[f].n_parts; p++)
            if (d->gguf_fused[f].parts[p] == r) {
                *part = p;
                return &d->gguf_fused[f];
            }
    return NULL;
}

static bool fused_name(const struct lms_arch_fused *fu, int64_t layer, char *dst, size_t cap)
{
    int n = snprintf(dst, cap, fu->hf_name, (long long)layer);
    return n > 0 && (size_t)n < cap;
}

static bool gguf_name(enum lms_role r, int64_t layer, char *dst, size_t cap)
{
    if (r <= LMS_ROLE_OTHER || r >= LMS_ROLE_COUNT || !role_names[r])
        return false;
    int n = lms_role_is_per_layer(r) ? snprintf(dst, cap, "blk.%lld.%s", (long long)layer,
                                                role_names[r])
                                     : snprintf(dst, cap, "%s", role_names[r]);
    return n > 0 && (size_t)n < cap;
}

static bool role_of_gguf_name(const char *name, enum lms_role *r, int64_t *layer)
{
    const char *tail = name;
    *layer = -1;
    if (strncmp(name, "blk.", 4) == 0) {
        char *end;
        long long l = strtoll(name + 4, &end, 10);
        if (end == name + 4 || *end != '.' || l < 0 || l > INT32_MAX)
            return false;
        *layer = l;
        tail = end + 1;
    }
    for (int i = 1; i < LMS_ROLE_COUNT; i++)
        if (role_names[i] && strcmp(role_names[i], tail) == 0 &&
            lms_role_is_per_layer((enum lms_role)i) == (*layer >= 0)) {
            *r = (enum lms_role)i;
            return true;
        }
    return false;
}

static bool role_is_permuted(enum lms_role r)
{
    return r == LMS_ROLE_Q || r == LMS_ROLE_K || r == LMS_ROLE_Q_BIAS || r == LMS_ROLE_K_BIAS;
}

/* The converter's permutation for the llama architecture: within each head of d rows, the rows
 * of the first rotary half and of the second half are interleaved (row i of the first half goes
 * to 2i, row i of the second to 2i + 1). index[new] = old when to_gguf, the inverse otherwise. */
static enum lms_status permute_view(struct lms_view *src, int64_t head_dim, bool to_gguf,
                                    struct lms_view **out, struct lms_error *err)
{
    int64_t rows = src->shape[0], half = head_dim / 2;
    if (head_dim % 2 || rows % head_dim)
        return lms_error_set(err, LMS_EFORMAT, "%lld rows are not whole heads of %lld rows (an even head dimension)",
                             (long long)rows, (long long)head_dim);
    int64_t *index = lms_malloc((size_t)rows * sizeof *index);
    if (!index)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    for (int64_t h = 0; h < rows; h += head_dim)
        for (int64_t i = 0; i < half; i++)
            for (int64_t j = 0; j < 2; j++) {
                int64_t interleaved = h + 2 * i + j, split = h + j * half + i;
                if (to_gguf)
                    index[interleaved] = split;
                else
                    index[split] = interleaved;
            }
    enum lms_status rc = lms_view_new_select(src, 0, index, rows, out, err);
    lms_free(index);
    return rc;
}

/* ---- writing: metadata ----------------------------------------------------------------------- */

struct out_tensor {
    char name[96];
    struct lms_view *view; /* one reference, permuted when the architecture asks */
    uint32_t type;
    uint64_t nbytes;
};

#define STREAM_ELEMS (1 << 20) /* elements per chunk, a multiple of the Q8_0 block */

static void put_arch_u32(struct lms_gguf_writer *w, const char *arch, const char *key, int64_t v)
{
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    lms_gguf_put_u32(w, k, (uint32_t)v);
}

static void put_arch_f32(struct lms_gguf_writer *w, const char *arch, const char *key, double v)
{
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    lms_gguf_put_f32(w, k, (float)v);
}

static void put_arch_str(struct lms_gguf_writer *w, const char *arch, const char *key,
                         const char *v)
{
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    lms_gguf_put_str(w, k, v, strlen(v));
}

/* The rope block of a config.json: rope_parameters (transformers 5) or rope_scaling. */
static const json_t *config_rope_block(const json_t *config)
{
    const json_t *p = json_object_get(config, "rope_parameters");
    return json_is_object(p) ? p : json_object_get(config, "rope_scaling");
}

/* The optional YaRN values of a Hugging Face rope block and the llama.cpp keys (after
 * ARCH.rope.scaling.) its converter writes them under. */
static const struct {
    const char *hf, *hf_alias, *gguf;
} yarn_keys[] = {
    {"beta_fast", NULL, "yarn_beta_fast"},
    {"beta_slow", NULL, "yarn_beta_slow"},
    {"attention_factor", "attn_factor", "yarn_attn_factor"},
    {"extrapolation_factor", NULL, "yarn_ext_factor"},
};
#define N_YARN_KEYS (sizeof yarn_keys / sizeof yarn_keys[0])

static const json_t *yarn_value(const json_t *block, size_t i)
{
    const json_t *v = json_object_get(block, yarn_keys[i].hf);
    if (!v && yarn_keys[i].hf_alias)
        v = json_object_get(block, yarn_keys[i].hf_alias);
    return json_is_number(v) ? v : NULL;
}

/* transformers' YaRN attention factor when the config gives none: 0.1 ln(factor) + 1, the one
 * llama.cpp applies (it recomputes it from the factor whatever the file says). */
static double yarn_default_attention(double factor)
{
    return factor <= 1 ? 1.0 : 0.1 * log(factor) + 1.0;
}

/* Why llama.cpp would not run this YaRN config as transformers does, or NULL. llama.cpp takes
 * from the file only the factor and the original context for these architectures: it
 * recomputes the attention factor from the factor and keeps its own beta_fast 32 and
 * beta_slow 1 whatever the file's keys say (measured: a file whose yarn_attn_factor or betas
 * differ gives the same logits), and always rounds the correction range outwards. Without a
 * factor transformers derives one from the two context lengths; mscale / mscale_all_dim
 * change its attention factor. */
static const char *yarn_unsupported(const struct lms_arch *a, const json_t *block)
{
    const json_t *af = yarn_value(block, 2), *bf = yarn_value(block, 0), *bs = yarn_value(block, 1);
    if (a->rope.original_max_position <= 0)
        return "has no original_max_position_embeddings";
    if (block && !json_is_number(json_object_get(block, "factor")))
        return "has no factor";
    if (json_is_false(json_object_get(block, "truncate")))
        return "sets truncate false (llama.cpp always rounds the correction range)";
    if (json_object_get(block, "mscale") || json_object_get(block, "mscale_all_dim"))
        return "sets mscale / mscale_all_dim";
    if (af && (float)json_number_value(af) != (float)yarn_default_attention(a->rope.factor))
        return "sets an attention_factor other than 0.1 ln(factor) + 1 (llama.cpp recomputes it)";
    if ((bf && json_number_value(bf) != 32) || (bs && json_number_value(bs) != 1))
        return "sets beta_fast / beta_slow other than 32 / 1 (llama.cpp keeps those)";
    return NULL;
}

/* YaRN as llama.cpp's converter writes it: type, factor, original context and the optional
 * values the config sets; refused when llama.cpp would compute something else. */
static enum lms_status put_yarn(struct lms_gguf_writer *w, const struct lms_arch *a,
                                const json_t *config, const char *arch, const char *path,
                                struct lms_error *err)
{
    const json_t *block = config_rope_block(config);
    const char *why = yarn_unsupported(a, block);
    if (why)
        return lms_error_set(err, LMS_EUNSUPPORTED, "'%s': the model's yarn rope scaling %s; "
                             "llama.cpp cannot run it as transformers does", path, why);
    put_arch_str(w, arch, "rope.scaling.type", "yarn");
    put_arch_f32(w, arch, "rope.scaling.factor", a->rope.factor);
    put_arch_u32(w, arch, "rope.scaling.original_context_length", a->rope.original_max_position);
    for (size_t i = 0; i < N_YARN_KEYS; i++) {
        const json_t *v = yarn_value(block, i);
        char k[64];
        snprintf(k, sizeof k, "rope.scaling.%s", yarn_keys[i].gguf);
        if (v)
            put_arch_f32(w, arch, k, json_number_value(v));
    }
    return LMS_OK;
}

static enum lms_status put_rope(struct lms_gguf_writer *w, const struct lms_arch *a,
                                const json_t *config, const char *arch, const char *path,
                                struct lms_error *err)
{
    put_arch_f32(w, arch, "rope.freq_base", a->rope.theta);
    switch (a->rope.type) {
    case LMS_ROPE_DEFAULT:
        return LMS_OK;
    case LMS_ROPE_LINEAR:
        put_arch_str(w, arch, "rope.scaling.type", "linear");
        put_arch_f32(w, arch, "rope.scaling.factor", a->rope.factor);
        return LMS_OK;
    case LMS_ROPE_LLAMA3:
        /* llama.cpp has no keys for it: rope_freqs.weight carries the scaling (see below) */
        if (strcmp(arch, "llama") != 0)
            return lms_error_set(err, LMS_EUNSUPPORTED, "the GGUF writer handles llama3 rope "
                                 "scaling for the llama architecture only, not '%s'", arch);
        return LMS_OK;
    case LMS_ROPE_YARN:
        return put_yarn(w, a, config, arch, path, err);
    case LMS_ROPE_DYNAMIC:
        break;
    }
    return lms_error_set(err, LMS_EUNSUPPORTED, "'%s': dynamic (NTK) rope scaling has no "
                         "llama.cpp equivalent (its rope scaling is fixed when the file loads)",
                         path);
}

/* phi3's own keys, as llama.cpp's converter writes them: the rotary width, the sliding window
 * (0: none) and the config's original_max_position_embeddings. llama.cpp sizes phi3's
 * attention tensors from the hidden size, so heads x head_dim must be it (a model whose hidden
 * size was pruned alone does not fit). */
static enum lms_status put_phi3(struct lms_gguf_writer *w, const struct lms_arch *a,
                                const json_t *config, const char *arch, const char *path,
                                struct lms_error *err)
{
    if (a->n_heads * a->head_dim != a->hidden)
        return lms_error_set(err, LMS_EUNSUPPORTED, "'%s': llama.cpp's phi3 needs heads x "
                             "head_dim = hidden size (%lld x %lld is not %lld)", path,
                             (long long)a->n_heads, (long long)a->head_dim, (long long)a->hidden);
    if (a->rope.type == LMS_ROPE_YARN)
        return lms_error_set(err, LMS_EUNSUPPORTED, "'%s': a Phi-3 with yarn rope scaling is not "
                             "written (transformers' Phi-3 runs it as LongRoPE, which needs "
                             "long/short factors)", path);
    put_arch_u32(w, arch, "rope.dimension_count", a->head_dim);
    put_arch_u32(w, arch, "attention.sliding_window", a->sliding_window);
    const json_t *orig = json_object_get(config, "original_max_position_embeddings");
    if (json_is_integer(orig) && json_integer_value(orig) > 0)
        put_arch_u32(w, arch, "rope.scaling.original_context_length", json_integer_value(orig));
    return LMS_OK;
}

static enum lms_status put_hparams(struct lms_gguf_writer *w, const struct lms_model *m,
                                   const struct lms_arch *a, const char *arch, const char *path,
                                   struct lms_error *err)
{
    put_arch_u32(w, arch, "block_count", a->n_layers);
    put_arch_u32(w, arch, "context_length", a->max_position);
    put_arch_u32(w, arch, "embedding_length", a->hidden);
    put_arch_u32(w, arch, "feed_forward_length", a->ffn);
    put_arch_u32(w, arch, "attention.head_count", a->n_heads);
    put_arch_u32(w, arch, "attention.head_count_kv", a->n_groups);
    /* always written: after pruning the hidden size, d is no longer hidden / heads */
    put_arch_u32(w, arch, "attention.key_length", a->head_dim);
    put_arch_u32(w, arch, "attention.value_length", a->head_dim);
    put_arch_f32(w, arch, "attention.layer_norm_rms_epsilon", a->norm_eps);
    enum lms_status rc = put_rope(w, a, m->hf_config, arch, path, err);
    if (!rc && a->family == LMS_FAMILY_PHI3)
        rc = put_phi3(w, a, m->hf_config, arch, path, err);
    put_arch_u32(w, arch, "vocab_size", a->vocab);
    return rc;
}

/* ---- llama3 rope scaling: rope_freqs.weight -------------------------------------------------- */

#define ROPE_FREQS_NAME "rope_freqs.weight"

/* What llama.cpp multiplies each rotary wavelength by (it divides the inverse frequency
 * theta^(-2i/d) by it) to get transformers' llama3 scaling: 1 for wavelengths shorter than
 * original / high_freq_factor, factor for those longer than original / low_freq_factor, and
 * in between the reciprocal of the smoothed blend (1 - s) / factor + s, where
 * s = (original / wavelength - low) / (high - low). Computed in f32, as llama.cpp's converter. */
static enum lms_status llama3_rope_freqs(const struct lms_rope *r, int64_t head_dim, float *dst,
                                         struct lms_error *err)
{
    double factor = r->factor, lo = r->low_freq_factor, hi = r->high_freq_factor;
    double old = (double)r->original_max_position;
    if (!(factor > 0) || !(lo > 0) || !(hi > lo) || !(old > 0) || !(r->theta > 0))
        return lms_error_set(err, LMS_EINVAL, "llama3 rope scaling (factor %g, low %g, high %g, "
                             "original max position %g) is inconsistent", factor, lo, hi, old);
    float low_wl = (float)(old / lo), high_wl = (float)(old / hi);
    for (int64_t i = 0; i < head_dim / 2; i++) {
        float inv = 1.0f / powf((float)r->theta, (float)(2 * i) / (float)head_dim);
        float wl = 2.0f * (float)M_PI / inv;
        if (wl < high_wl) {
            dst[i] = 1.0f;
        } else if (wl > low_wl) {
            dst[i] = (float)factor;
        } else {
            float s = ((float)old / wl - (float)lo) / (float)(hi - lo);
            dst[i] = 1.0f / ((1.0f - s) / (float)factor + s);
        }
    }
    return LMS_OK;
}

/* The rope_freqs.weight tensor of a llama3-scaled model (head_dim / 2 f32 values, in memory:
 * it is small), planned like the model's own tensors. */
static enum lms_status plan_rope_freqs(const struct lms_arch *a, struct lms_gguf_writer *w,
                                       struct out_tensor *out, struct lms_error *err)
{
    int64_t n = a->head_dim / 2;
    struct lms_storage *host;
    enum lms_status rc = lms_storage_new_host((size_t)n * sizeof(float), &host, err);
    if (rc)
        return rc;
    rc = llama3_rope_freqs(&a->rope, a->head_dim, (float *)host->base, err);
    if (!rc)
        rc = lms_view_new_storage(host, 0, LMS_DTYPE_F32, 1, &n, &out->view, err);
    lms_storage_release(host);
    if (rc)
        return rc;
    snprintf(out->name, sizeof out->name, "%s", ROPE_FREQS_NAME);
    out->type = LMS_GGML_F32;
    uint64_t ne = (uint64_t)n;
    return lms_gguf_add_tensor(w, out->name, 1, &ne, out->type, &out->nbytes, err);
}

/* general.file_type as llama.cpp numbers it (the type of most weights). */
static uint32_t file_type(uint32_t matrix_type)
{
    switch (matrix_type) {
    case LMS_GGML_F16: return 1;
    case LMS_GGML_Q8_0: return 7;
    case LMS_GGML_BF16: return 32;
    default: return 0;
    }
}

static const char *aux_path(const struct lms_model *m, const char *name)
{
    for (size_t i = 0; i < m->n_aux_files; i++)
        if (strcmp(lms_path_basename(m->aux_files[i]), name) == 0)
            return m->aux_files[i];
    return NULL;
}

/* Exact pattern texts of the Split pre-tokenizers llama.cpp knows by name. */
static const struct {
    const char *pattern, *name;
} pretokenizers[] = {
    {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
     "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", "qwen2"},
    {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
     "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", "llama-bpe"},
};

static const char *find_split_pattern(const json_t *pt)
{
    if (!json_is_object(pt))
        return NULL;
    const char *type = json_string_value(json_object_get(pt, "type"));
    if (type && strcmp(type, "Split") == 0)
        return json_string_value(json_object_get(json_object_get(pt, "pattern"), "Regex"));
    size_t i;
    const json_t *sub;
    json_array_foreach(json_object_get(pt, "pretokenizers"), i, sub) {
        const char *p = find_split_pattern(sub);
        if (p)
            return p;
    }
    return NULL;
}

static const char *pretokenizer_name(const json_t *tok)
{
    const char *p = find_split_pattern(json_object_get(tok, "pre_tokenizer"));
    for (size_t i = 0; p && i < sizeof pretokenizers / sizeof pretokenizers[0]; i++)
        if (strcmp(p, pretokenizers[i].pattern) == 0)
            return pretokenizers[i].name;
    return "default";
}

/* Token id of a special token given in tokenizer_config.json (a string or {"content": ...}). */
static int64_t special_id(const json_t *tcfg, const char *key, const json_t *vocab,
                          const json_t *added)
{
    const json_t *v = json_object_get(tcfg, key);
    const char *s = json_is_object(v) ? json_string_value(json_object_get(v, "content"))
                                      : json_string_value(v);
    if (!s)
        return -1;
    const json_t *id = json_object_get(vocab, s);
    if (json_is_integer(id))
        return json_integer_value(id);
    size_t i;
    const json_t *t;
    json_array_foreach(added, i, t) {
        const char *c = json_string_value(json_object_get(t, "content"));
        if (c && strcmp(c, s) == 0)
            return json_integer_value(json_object_get(t, "id"));
    }
    return -1;
}

enum { TOKEN_NORMAL = 1, TOKEN_CONTROL = 3, TOKEN_USER_DEFINED = 4, TOKEN_UNUSED = 5 };

struct vocab {
    int64_t n;
    const char **s;
    size_t *len;
    int32_t *type;
    char (*pad)[24]; /* names of the ids no token claims */
};

static void vocab_release(struct vocab *v)
{
    lms_free(v->s);
    lms_free(v->len);
    lms_free(v->type);
    lms_free(v->pad);
}

static bool vocab_set(struct vocab *v, json_int_t id, const char *s, int32_t type)
{
    if (id < 0 || id >= v->n || !s)
        return false;
    v->s[id] = s;
    v->len[id] = strlen(s);
    v->type[id] = type;
    return true;
}

/* Every id below n, in llama.cpp's convention: added tokens are control (special) or user
 * defined, ids nobody claims become "[PADi]", unused. */
static enum lms_status vocab_build(const json_t *tok, int64_t n, struct vocab *v,
                                   const char *path, struct lms_error *err)
{
    const json_t *vocab = json_object_get(json_object_get(tok, "model"), "vocab");
    const json_t *added = json_object_get(tok, "added_tokens");
    int64_t max = n;
    const char *key;
    const json_t *val;
    json_object_foreach((json_t *)vocab, key, val)
        if (json_integer_value(val) + 1 > max)
            max = json_integer_value(val) + 1;
    size_t i;
    json_array_foreach(added, i, val)
        if (json_integer_value(json_object_get(val, "id")) + 1 > max)
            max = json_integer_value(json_object_get(val, "id")) + 1;
    v->n = max;
    v->s = lms_calloc((size_t)max, sizeof *v->s);
    v->len = lms_calloc((size_t)max, sizeof *v->len);
    v->type = lms_calloc((size_t)max, sizeof *v->type);
    v->pad = lms_calloc((size_t)max, sizeof *v->pad);
    if (!v->s || !v->len || !v->type || !v->pad)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    json_object_foreach((json_t *)vocab, key, val)
        if (!vocab_set(v, json_integer_value(val), key, TOKEN_NORMAL))
            return lms_error_set(err, LMS_EFORMAT, "'%s': token '%s' has a bad id", path, key);
    json_array_foreach(added, i, val) {
        bool special = json_is_true(json_object_get(val, "special"));
        if (!vocab_set(v, json_integer_value(json_object_get(val, "id")),
                       json_string_value(json_object_get(val, "content")),
                       special ? TOKEN_CONTROL : TOKEN_USER_DEFINED))
            return lms_error_set(err, LMS_EFORMAT, "'%s': added token %zu is malformed", path, i);
    }
    for (int64_t id = 0; id < max; id++)
        if (!v->s[id]) {
            snprintf(v->pad[id], sizeof v->pad[id], "[PAD%lld]", (long long)id);
            vocab_set(v, id, v->pad[id], TOKEN_UNUSED);
        }
    return LMS_OK;
}

/* The merges as "left right" strings (tokenizer.json holds strings or pairs). */
static enum lms_status put_merges(struct lms_gguf_writer *w, const json_t *merges,
                                  const char *path, struct lms_error *err)
{
    size_t n = json_array_size(merges);
    char **s = lms_calloc(n ? n : 1, sizeof *s);
    size_t *len = lms_calloc(n ? n : 1, sizeof *len);
    enum lms_status rc = s && len ? LMS_OK : lms_error_set(err, LMS_ENOMEM, "out of memory");
    for (size_t i = 0; i < n && !rc; i++) {
        const json_t *e = json_array_get(merges, i);
        const char *a = json_string_value(json_array_get(e, 0));
        const char *b = json_string_value(json_array_get(e, 1));
        if (json_is_string(e))
            s[i] = lms_strdup(json_string_value(e));
        else if (a && b && (s[i] = lms_malloc(strlen(a) + strlen(b) + 2)))
            sprintf(s[i], "%s %s", a, b);
        else if (!a || !b)
            rc = lms_error_set(err, LMS_EFORMAT, "'%s': merge %zu is malformed", path, i);
        if (!rc && !s[i])
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
        if (!rc)
            len[i] = strlen(s[i]);
    }
    if (!rc)
        lms_gguf_put_str_array(w, "tokenizer.ggml.merges", (const char *const *)s, len, n);
    for (size_t i = 0; s && i < n; i++)
        lms_free(s[i]);
    lms_free(s);
    lms_free(len);
    return rc;
}

static void put_special_ids(struct lms_gguf_writer *w, const struct lms_model *m,
                            const json_t *tok, struct lms_error *err)
{
    json_t *tcfg = NULL;
    const char *p = aux_path(m, "tokenizer_config.json");
    if (p && lms_json_load_file(p, 64u << 20, &tcfg, err))
        tcfg = NULL;
    const json_t *vocab = json_object_get(json_object_get(tok, "model"), "vocab");
    const json_t *added = json_object_get(tok, "added_tokens");
    static const struct {
        const char *cfg, *gguf, *hf;
    } ids[] = {{"bos_token", "tokenizer.ggml.bos_token_id", "bos_token_id"},
               {"eos_token", "tokenizer.ggml.eos_token_id", "eos_token_id"},
               {"pad_token", "tokenizer.ggml.padding_token_id", "pad_token_id"},
               {"unk_token", "tokenizer.ggml.unknown_token_id", NULL}};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        int64_t id = special_id(tcfg, ids[i].cfg, vocab, added);
        const json_t *hf = ids[i].hf ? json_object_get(m->hf_config, ids[i].hf) : NULL;
        if (id < 0 && json_is_integer(hf))
            id = json_integer_value(hf);
        if (id >= 0)
            lms_gguf_put_u32(w, ids[i].gguf, (uint32_t)id);
    }
    const json_t *add_bos = json_object_get(tcfg, "add_bos_token");
    if (json_is_boolean(add_bos))
        lms_gguf_put_bool(w, "tokenizer.ggml.add_bos_token", json_is_true(add_bos));
    const char *tmpl = json_string_value(json_object_get(tcfg, "chat_template"));
    if (tmpl)
        lms_gguf_put_str(w, "tokenizer.chat_template", tmpl, strlen(tmpl));
    json_decref(tcfg);
}

/* A model without a tokenizer llama.cpp can read: llama.cpp requires tokenizer.ggml.model and,
 * for "none", makes ARCH.vocab_size placeholder tokens, so the file still loads and runs on ids. */
static void put_no_tokenizer(struct lms_gguf_writer *w)
{
    lms_gguf_put_str(w, "tokenizer.ggml.model", "none", 4);
}

/* tokenizer.ggml.*: only for a byte-level BPE tokenizer.json ("gpt2" in llama.cpp's terms);
 * another tokenizer, or none, is written as "none". */
static enum lms_status put_tokenizer(struct lms_gguf_writer *w, const struct lms_model *m,
                                     struct lms_error *err)
{
    const char *path = aux_path(m, "tokenizer.json");
    if (!path) {
        put_no_tokenizer(w);
        return LMS_OK;
    }
    json_t *tok;
    enum lms_status rc = lms_json_load_file(path, 1u << 30, &tok, err);
    if (rc)
        return rc;
    const json_t *model = json_object_get(tok, "model");
    const char *type = json_string_value(json_object_get(model, "type"));
    const char *dec = json_string_value(json_object_get(json_object_get(tok, "decoder"), "type"));
    if (!type || strcmp(type, "BPE") || !dec || strcmp(dec, "ByteLevel")) {
        json_decref(tok);
        put_no_tokenizer(w);
        return LMS_OK;
    }
    lms_gguf_put_str(w, "tokenizer.ggml.model", "gpt2", 4);
    const char *pre = pretokenizer_name(tok);
    lms_gguf_put_str(w, "tokenizer.ggml.pre", pre, strlen(pre));
    struct vocab v = {0};
    /* llama.cpp takes its vocabulary size from the token list: one token per embedding row */
    int64_t rows = m->arch.padded_vocab > m->arch.vocab ? m->arch.padded_vocab : m->arch.vocab;
    rc = vocab_build(tok, rows, &v, path, err);
    if (!rc) {
        lms_gguf_put_str_array(w, "tokenizer.ggml.tokens", v.s, v.len, (uint64_t)v.n);
        lms_gguf_put_i32_array(w, "tokenizer.ggml.token_type", v.type, (uint64_t)v.n);
        rc = put_merges(w, json_object_get(model, "merges"), path, err);
    }
    if (!rc)
        put_special_ids(w, m, tok, err);
    vocab_release(&v);
    json_decref(tok);
    return rc;
}

/* lmsurgeon's own keys: the config.json of the model and the travelling files, verbatim. */
static enum lms_status put_carried(struct lms_gguf_writer *w, const struct lms_model *m,
                                   const struct lms_arch *a, struct lms_error *err)
{
    json_t *config;
    enum lms_status rc = lms_hf_config_of_model(m, a, &config, err);
    if (rc)
        return rc;
    char *text = json_dumps(config, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(config);
    if (!text)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    lms_gguf_put_str(w, "lmsurgeon.hf_config", text, strlen(text));
    free(text);
    for (size_t i = 0; i < m->n_aux_files; i++) {
        struct lms_storage *s;
        if ((rc = lms_storage_map_file(m->aux_files[i], &s, err)))
            return rc;
        char key[PATH_MAX + 32];
        snprintf(key, sizeof key, "lmsurgeon.file.%s", lms_path_basename(m->aux_files[i]));
        lms_gguf_put_str(w, key, s->base, s->size);
        lms_storage_release(s);
    }
    return LMS_OK;
}

/* ---- writing: tensors ----------------------------------------------------------------------- */

static uint32_t tensor_type(const struct lms_view *v, const struct lms_write_opts *o, bool q8)
{
    if (v->ndim < 2)
        return LMS_GGML_F32; /* norms and biases stay f32, as llama.cpp keeps them */
    if (q8)
        return v->shape[v->ndim - 1] % LMS_GGML_Q8_0_BLOCK ? LMS_GGML_F16 : LMS_GGML_Q8_0;
    enum lms_dtype dt = o->dtype != LMS_DTYPE_COUNT ? o->dtype : v->dtype;
    return dt == LMS_DTYPE_BF16 ? LMS_GGML_BF16 : dt == LMS_DTYPE_F16 ? LMS_GGML_F16 : LMS_GGML_F32;
}

static enum lms_dtype read_dtype(uint32_t type)
{
    return type == LMS_GGML_BF16 ? LMS_DTYPE_BF16 : type == LMS_GGML_F16 ? LMS_DTYPE_F16
                                                                          : LMS_DTYPE_F32;
}

/* The roles of a fused GGUF tensor joined along rows: a view, so the write streams it in
 * chunks like any other tensor. */
static enum lms_status fused_view(const struct lms_model *m, const struct lms_arch_fused *fu,
                                  int64_t layer, struct lms_view **out, struct lms_error *err)
{
    struct lms_view *parts[3];
    for (int p = 0; p < fu->n_parts; p++) {
        const struct lms_tensor *pt = lms_model_find(m, fu->parts[p], layer);
        if (!pt)
            return lms_error_set(err, LMS_EINVAL, "layer %lld has no '%s' tensor to fuse",
                                 (long long)layer, lms_role_name(fu->parts[p]));
        if (!lms_dtype_is_castable(pt->view->dtype))
            return lms_error_set(err, LMS_EUNSUPPORTED, "tensor '%s': %s cannot go into GGUF",
                                 pt->name, lms_dtype_name(pt->view->dtype));
        parts[p] = pt->view;
    }
    return lms_view_new_concat(parts, fu->n_parts, 0, out, err);
}

/* Plans tensor t; *skipped when it is written inside the fused tensor of an earlier role. */
static enum lms_status plan_one(const struct lms_model *m, const struct lms_tensor *t,
                                const struct lms_write_opts *o, bool q8, struct lms_gguf_writer *w,
                                struct out_tensor *out, bool *skipped, struct lms_error *err)
{
    int part = 0;
    const struct lms_arch_fused *fu = gguf_fused_of(family_info(m->arch.family), t->role, &part);
    *skipped = fu && part > 0;
    if (*skipped)
        return LMS_OK;
    if (fu ? !fused_name(fu, t->layer, out->name, sizeof out->name)
           : !gguf_name(t->role, t->layer, out->name, sizeof out->name))
        return lms_error_set(err, LMS_EUNSUPPORTED, "tensor '%s' has no GGUF name", t->name);
    if (!lms_dtype_is_castable(t->view->dtype))
        return lms_error_set(err, LMS_EUNSUPPORTED, "tensor '%s': %s cannot go into GGUF",
                             t->name, lms_dtype_name(t->view->dtype));
    enum lms_status rc;
    if (fu)
        rc = fused_view(m, fu, t->layer, &out->view, err);
    else if (family_info(m->arch.family)->gguf_permute_qk && role_is_permuted(t->role))
        rc = permute_view(t->view, m->arch.head_dim, true, &out->view, err);
    else
        out->view = lms_view_ref(t->view), rc = LMS_OK;
    if (rc)
        return lms_error_wrap(err, "tensor '%s': ", t->name);
    out->type = tensor_type(out->view, o, q8);
    uint64_t ne[LMS_GGUF_MAX_DIMS];
    int nd = out->view->ndim;
    if (nd < 1 || nd > LMS_GGUF_MAX_DIMS)
        return lms_error_set(err, LMS_EUNSUPPORTED, "tensor '%s' has %d dimensions", t->name, nd);
    for (int d = 0; d < nd; d++)
        ne[d] = (uint64_t)out->view->shape[nd - 1 - d];
    return lms_gguf_add_tensor(w, out->name, (uint32_t)nd, ne, out->type, &out->nbytes, err);
}

static enum lms_status stream_tensor(const struct out_tensor *t, int fd, const char *path,
                                     void *buf, float *f32, uint64_t *done, uint64_t total,
                                     const struct lms_write_opts *o, struct lms_error *err)
{
    int64_t numel = lms_view_numel(t->view);
    for (int64_t e = 0; e < numel; e += STREAM_ELEMS) {
        int64_t n = numel - e < STREAM_ELEMS ? numel - e : STREAM_ELEMS;
        size_t bytes;
        enum lms_status rc;
        if (t->type == LMS_GGML_Q8_0) {
            rc = lms_view_read_as(t->view, e, n, LMS_DTYPE_F32, f32, err);
            for (int64_t b = 0; !rc && b < n / LMS_GGML_Q8_0_BLOCK; b++)
                lms_gguf_q8_0_quantize(f32 + b * LMS_GGML_Q8_0_BLOCK, (uint8_t *)buf + b * LMS_GGML_Q8_0_BYTES);
            bytes = (size_t)(n / LMS_GGML_Q8_0_BLOCK) * LMS_GGML_Q8_0_BYTES;
        } else {
            enum lms_dtype dt = read_dtype(t->type);
            rc = lms_view_read_as(t->view, e, n, dt, buf, err);
            bytes = (size_t)n * lms_dtype_size(dt);
        }
        if (!rc)
            rc = lms_write_all(fd, buf, bytes, path, err);
        if (rc)
            return lms_error_wrap(err, "tensor '%s': ", t->name);
        if (numel > STREAM_ELEMS)
            lms_view_drop_pages(t->view);
        *done += bytes;
        if (o->progress)
            o->progress(o->progress_ctx, *done, total);
    }
    return lms_gguf_write_pad(fd, t->nbytes, path, err);
}

static enum lms_status write_file(const struct lms_model *m, struct lms_gguf_writer *w,
                                  const struct out_tensor *outs, size_t n, const char *path,
                                  const struct lms_write_opts *o, uint64_t *total,
                                  struct lms_error *err)
{
    struct lms_outfile of;
    enum lms_status rc = lms_outfile_begin(path, o->force, &of, err);
    if (rc)
        return rc;
    (void)m;
    *total = 0;
    for (size_t i = 0; i < n; i++)
        *total += outs[i].nbytes;
    void *buf = lms_malloc((size_t)STREAM_ELEMS * 4);
    float *f32 = lms_malloc((size_t)STREAM_ELEMS * 4);
    rc = buf && f32 ? lms_gguf_write_header(w, of.fd, path, err)
                    : lms_error_set(err, LMS_ENOMEM, "out of memory");
    uint64_t done = 0;
    for (size_t i = 0; i < n && !rc; i++)
        rc = stream_tensor(&outs[i], of.fd, path, buf, f32, &done, *total, o, err);
    lms_free(buf);
    lms_free(f32);
    if (rc) {
        lms_outfile_abort(&of);
        return rc;
    }
    return lms_outfile_commit(&of, err);
}

/* Global tensors first, then the layers in order, as llama.cpp's converter writes them. */
static int tensor_order(const void *pa, const void *pb)
{
    const struct lms_tensor *a = *(const struct lms_tensor *const *)pa;
    const struct lms_tensor *b = *(const struct lms_tensor *const *)pb;
    int64_t la = a->role == LMS_ROLE_EMBED ? -2 : a->layer < 0 ? INT64_MAX : a->layer;
    int64_t lb = b->role == LMS_ROLE_EMBED ? -2 : b->layer < 0 ? INT64_MAX : b->layer;
    if (la != lb)
        return la < lb ? -1 : 1;
    return (int)a->role - (int)b->role;
}

static enum lms_status gguf_write(const struct lms_model *m, const char *path,
                                  const struct lms_write_opts *o, struct lms_write_result *res,
                                  struct lms_error *err)
{
    enum lms_status rc = lms_model_validate(m, err);
    if (rc)
        return rc;
    const struct lms_gguf_write_opts *go = o->format_opts;
    bool q8 = go && go->q8_0;
    const struct lms_arch_desc *fam = family_info(m->arch.family);
    if (!fam)
        return lms_error_set(err, LMS_EUNSUPPORTED, "no GGUF architecture for this family");
    size_t n = m->n_tensors, n_out = n + (m->arch.rope.type == LMS_ROPE_LLAMA3);
    const struct lms_tensor **order = lms_calloc(n ? n : 1, sizeof *order);
    struct out_tensor *outs = lms_calloc(n_out ? n_out : 1, sizeof *outs);
    if (!order || !outs) {
        lms_free(order);
        lms_free(outs);
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++)
        order[i] = &m->tensors[i];
    qsort(order, n, sizeof *order, tensor_order);

    struct lms_gguf_writer w;
    lms_gguf_writer_init(&w);
    struct lms_arch arch = m->arch;
    if (o->dtype != LMS_DTYPE_COUNT && !q8)
        arch.dtype = o->dtype;
    lms_gguf_put_str(&w, "general.architecture", fam->gguf_arch, strlen(fam->gguf_arch));
    const char *base = lms_path_basename(path);
    const char *dot = strrchr(base, '.');
    lms_gguf_put_str(&w, "general.name", base, dot && dot != base ? (size_t)(dot - base)
                                                                  : strlen(base));
    rc = put_hparams(&w, m, &arch, fam->gguf_arch, path, err);
    size_t k = 0; /* tensors planned: a fused one takes the place of its first role */
    for (size_t i = 0; i < n && !rc; i++) {
        bool skipped;
        rc = plan_one(m, order[i], o, q8, &w, &outs[k], &skipped, err);
        k += !rc && !skipped;
    }
    if (!rc && n_out > n)
        rc = plan_rope_freqs(&arch, &w, &outs[k++], err);
    if (!rc) {
        lms_gguf_put_u32(&w, "general.file_type",
                         file_type(q8 ? LMS_GGML_Q8_0 : tensor_type(outs[0].view, o, false)));
        lms_gguf_put_u32(&w, "general.quantization_version", 2); /* as llama.cpp's converter */
        rc = put_tokenizer(&w, m, err);
    }
    if (!rc)
        rc = put_carried(&w, m, &arch, err);
    uint64_t total = 0;
    if (!rc)
        rc = write_file(m, &w, outs, k, path, o, &total, err);
    if (!rc && res)
        *res = (struct lms_write_result){.n_shards = 1, .bytes = total,
                                         .n_tensors = (int)(k - (n_out > n)),
                                         .n_aux_files = (int)m->n_aux_files};
    for (size_t i = 0; i < n_out; i++)
        lms_view_release(outs[i].view);
    lms_free(outs);
    lms_free(order);
    lms_gguf_writer_release(&w);
    return rc;
}

/* ---- reading --------------------------------------------------------------------------------- */

struct reader {
    const char *path;
    struct lms_gguf g;
    struct lms_storage *st;
    const char *arch; /* general.architecture, NUL-terminated copy */
    char arch_buf[32];
};

static enum lms_status key_error(const struct reader *r, const char *key, const char *what,
                                 struct lms_error *err)
{
    return lms_error_set(err, LMS_EFORMAT, "'%s': metadata '%s' %s", r->path, key, what);
}

/* An integer hyperparameter ARCH.key; def when absent (-1: required). */
static enum lms_status arch_int(const struct reader *r, const char *key, int64_t def,
                                int64_t *out, struct lms_error *err)
{
    char k[128];
    snprintf(k, sizeof k, "%s.%s", r->arch, key);
    const struct lms_gguf_kv *kv = lms_gguf_find(&r->g, k);
    if (!kv) {
        if (def < 0)
            return key_error(r, k, "is missing", err);
        *out = def;
        return LMS_OK;
    }
    if (!lms_gguf_type_is_int(kv->type) || kv->type == LMS_GGUF_F32)
        return key_error(r, k, "is not an integer", err);
    int64_t v = (kv->type == LMS_GGUF_I8 || kv->type == LMS_GGUF_I16 || kv->type == LMS_GGUF_I32 ||
                 kv->type == LMS_GGUF_I64) ? kv->v.i : (int64_t)kv->v.u;
    if (v <= 0 || v > (INT64_C(1) << 40))
        return key_error(r, k, "is out of range", err);
    *out = v;
    return LMS_OK;
}

static enum lms_status arch_float(const struct reader *r, const char *key, double def,
                                  double *out, struct lms_error *err)
{
    char k[128];
    snprintf(k, sizeof k, "%s.%s", r->arch, key);
    const struct lms_gguf_kv *kv = lms_gguf_find(&r->g, k);
    if (!kv) {
        *out = def;
        return LMS_OK;
    }
    if (kv->type != LMS_GGUF_F32 && kv->type != LMS_GGUF_F64)
        return key_error(r, k, "is not a float", err);
    *out = kv->v.f;
    return LMS_OK;
}

static bool gguf_name_is(const struct lms_gguf_tensor *t, const char *name)
{
    size_t n = strlen(name);
    return t->name.n == n && memcmp(t->name.p, name, n) == 0;
}

static const struct lms_gguf_tensor *find_tensor(const struct reader *r, const char *name)
{
    for (uint64_t i = 0; i < r->g.n_tensors; i++)
        if (gguf_name_is(&r->g.tensors[i], name))
            return &r->g.tensors[i];
    return NULL;
}

/* Whether a string from the file can go into a one-line message as it is. */
static bool printable(const char *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (v[i] < 0x20 || v[i] > 0x7e)
            return false;
    return n <= 32;
}

/* The family from general.architecture; llama and mistral share "llama", so the carried
 * config (if any) decides between them. */
static enum lms_status read_family(struct reader *r, const json_t *carried, struct lms_arch *a,
                                   struct lms_error *err)
{
    const struct lms_gguf_kv *kv = lms_gguf_find(&r->g, "general.architecture");
    if (!kv || kv->type != LMS_GGUF_STRING || kv->v.s.n >= sizeof r->arch_buf)
        return key_error(r, "general.architecture", "is missing or not a short string", err);
    memcpy(r->arch_buf, kv->v.s.p, kv->v.s.n);
    r->arch_buf[kv->v.s.n] = 0;
    r->arch = r->arch_buf;
    const struct lms_arch_desc *d;
    for (size_t i = 0; (d = lms_arch_desc_at(i)); i++)
        if (d->gguf_arch && strcmp(d->gguf_arch, r->arch) == 0) {
            a->family = d->family;
            const char *mt = json_string_value(json_object_get(carried, "model_type"));
            if (a->family == LMS_FAMILY_LLAMA && mt && strcmp(mt, "mistral") == 0)
                a->family = LMS_FAMILY_MISTRAL;
            return LMS_OK;
        }
    size_t n = strlen(r->arch);
    return lms_error_set(err, LMS_EUNSUPPORTED, "'%s': GGUF architecture '%.*s' is not supported "
                         "(llama, phi3, qwen2, qwen3)", r->path, printable(r->arch, n) ? (int)n : 1,
                         printable(r->arch, n) ? r->arch : "?");
}

/* ARCH.key as a string: true and *v, *n set when the key is a string. */
static bool arch_str(const struct reader *r, const char *key, const char **v, size_t *n)
{
    char k[128];
    snprintf(k, sizeof k, "%s.%s", r->arch, key);
    const struct lms_gguf_kv *kv = lms_gguf_find(&r->g, k);
    if (!kv || kv->type != LMS_GGUF_STRING)
        return false;
    *v = kv->v.s.p;
    *n = (size_t)kv->v.s.n;
    return true;
}

static bool str_is(const char *v, size_t n, const char *want)
{
    return n == strlen(want) && memcmp(v, want, n) == 0;
}

/* ARCH.rope.scaling.*: none, linear (factor) and yarn (factor, original context; its optional
 * values are read into the config, see keys_into_config). LongRoPE (phi3's 128k models) has
 * factor tensors the IR cannot hold and is refused, as is any other type. */
static enum lms_status read_rope_scaling(struct reader *r, struct lms_arch *a,
                                         struct lms_error *err)
{
    a->rope.factor = 1;
    const char *t = NULL;
    size_t n = 0;
    char k[128];
    snprintf(k, sizeof k, "%s.rope.scaling.type", r->arch);
    if (lms_gguf_find(&r->g, k) && !arch_str(r, "rope.scaling.type", &t, &n))
        return key_error(r, k, "is not a string", err);
    if (find_tensor(r, "rope_factors_long.weight") || find_tensor(r, "rope_factors_short.weight") ||
        (t && (str_is(t, n, "longrope") || str_is(t, n, "su"))))
        return lms_error_set(err, LMS_EUNSUPPORTED, "'%s': LongRoPE rope scaling "
                             "(rope_factors_long/short) is not supported", r->path);
    if (!t || str_is(t, n, "none"))
        return LMS_OK;
    if (str_is(t, n, "linear")) {
        a->rope.type = LMS_ROPE_LINEAR;
        return arch_float(r, "rope.scaling.factor", 1.0, &a->rope.factor, err);
    }
    if (!str_is(t, n, "yarn"))
        return lms_error_set(err, LMS_EUNSUPPORTED, "'%s': rope scaling '%.*s' is not supported "
                             "(linear and yarn are read)", r->path, printable(t, n) ? (int)n : 1,
                             printable(t, n) ? t : "?");
    a->rope.type = LMS_ROPE_YARN;
    enum lms_status rc = arch_float(r, "rope.scaling.factor", -1.0, &a->rope.factor, err);
    if (!rc && !(a->rope.factor >= 1 && a->rope.factor < 1e6))
        rc = lms_error_set(err, LMS_EFORMAT, "'%s': yarn rope scaling needs '%s.rope.scaling."
                           "factor' (at least 1)", r->path, r->arch);
    if (!rc)
        rc = arch_int(r, "rope.scaling.original_context_length", -1,
                      &a->rope.original_max_position, err);
    return rc;
}

/* phi3's sliding window: the carried config's when it has one, else the file's
 * ARCH.attention.sliding_window (0 or absent: none). */
static enum lms_status read_phi3(struct reader *r, const json_t *carried, struct lms_arch *a,
                                 struct lms_error *err)
{
    if (carried) {
        const json_t *sw = json_object_get(carried, "sliding_window");
        a->sliding_window = json_is_integer(sw) && json_integer_value(sw) > 0
                                ? json_integer_value(sw) : 0;
        return LMS_OK;
    }
    char k[128];
    snprintf(k, sizeof k, "%s.attention.sliding_window", r->arch);
    const struct lms_gguf_kv *kv = lms_gguf_find(&r->g, k);
    if (!kv)
        return LMS_OK;
    if (!lms_gguf_type_is_int(kv->type) || kv->type == LMS_GGUF_F32)
        return key_error(r, k, "is not an integer", err);
    bool is_signed = kv->type == LMS_GGUF_I8 || kv->type == LMS_GGUF_I16 ||
                     kv->type == LMS_GGUF_I32 || kv->type == LMS_GGUF_I64;
    if ((is_signed && kv->v.i < 0) || (!is_signed && kv->v.u > (UINT64_C(1) << 40)) ||
        (is_signed && kv->v.i > (INT64_C(1) << 40)))
        return key_error(r, k, "is out of range", err);
    a->sliding_window = is_signed ? kv->v.i : (int64_t)kv->v.u;
    return LMS_OK;
}

static enum lms_status read_arch(struct reader *r, const json_t *carried, struct lms_arch *a,
                                 struct lms_error *err)
{
    memset(a, 0, sizeof *a);
    enum lms_status rc = read_family(r, carried, a, err);
    if (!rc) rc = arch_int(r, "block_count", -1, &a->n_layers, err);
    if (!rc) rc = arch_int(r, "embedding_length", -1, &a->hidden, err);
    if (!rc) rc = arch_int(r, "feed_forward_length", -1, &a->ffn, err);
    if (!rc) rc = arch_int(r, "attention.head_count", -1, &a->n_heads, err);
    if (!rc) rc = arch_int(r, "attention.head_count_kv", a->n_heads, &a->n_groups, err);
    if (!rc) rc = arch_int(r, "context_length", 2048, &a->max_position, err);
    if (!rc && a->n_heads > 0)
        rc = arch_int(r, "attention.key_length", a->hidden / a->n_heads, &a->head_dim, err);
    if (!rc) rc = arch_float(r, "attention.layer_norm_rms_epsilon", 1e-6, &a->norm_eps, err);
    if (!rc) rc = arch_float(r, "rope.freq_base", 10000.0, &a->rope.theta, err);
    int64_t rope_dims = a->head_dim;
    if (!rc) rc = arch_int(r, "rope.dimension_count", a->head_dim, &rope_dims, err);
    if (rc)
        return rc;
    if (rope_dims != a->head_dim) /* the IR rotates every channel of a head */
        return lms_error_set(err, LMS_EUNSUPPORTED, "'%s': rope over %lld of %lld channels per "
                             "head (partial rotary) is not supported", r->path,
                             (long long)rope_dims, (long long)a->head_dim);
    rc = read_rope_scaling(r, a, err);
    if (!rc && a->family == LMS_FAMILY_PHI3)
        rc = read_phi3(r, carried, a, err);
    if (rc)
        return rc;
    const struct lms_gguf_tensor *emb = find_tensor(r, "token_embd.weight");
    if (!emb || emb->n_dims != 2)
        return lms_error_set(err, LMS_EFORMAT, "'%s': no 2-D tensor 'token_embd.weight'", r->path);
    a->padded_vocab = (int64_t)emb->ne[1];
    if (!rc) rc = arch_int(r, "vocab_size", a->padded_vocab, &a->vocab, err);
    a->tie_embeddings = !find_tensor(r, "output.weight");
    a->qkv_bias = find_tensor(r, "blk.0.attn_q.bias") != NULL;
    a->o_bias = find_tensor(r, "blk.0.attn_output.bias") != NULL;
    a->qk_norm = a->family == LMS_FAMILY_QWEN3;
    a->dtype = emb->type == LMS_GGML_BF16 ? LMS_DTYPE_BF16
             : emb->type == LMS_GGML_F16  ? LMS_DTYPE_F16 : LMS_DTYPE_F32;
    const json_t *sw = json_object_get(carried, "sliding_window");
    if (a->family == LMS_FAMILY_MISTRAL && json_is_integer(sw))
        a->sliding_window = json_integer_value(sw);
    return rc;
}

/* A view of one tensor in HF order: direct over the mapping for F32/F16/BF16, dequantised into
 * host memory for Q8_0. */
static enum lms_status tensor_view(struct reader *r, const struct lms_gguf_tensor *t,
                                   struct lms_view **out, struct lms_error *err)
{
    int64_t shape[LMS_GGUF_MAX_DIMS];
    int nd = (int)t->n_dims;
    for (int d = 0; d < nd; d++)
        shape[d] = (int64_t)t->ne[nd - 1 - d];
    uint64_t at = r->g.data_offset + t->offset;
    if (t->type == LMS_GGML_F32 || t->type == LMS_GGML_F16 || t->type == LMS_GGML_BF16)
        return lms_view_new_storage(r->st, at, read_dtype(t->type), nd, shape, out, err);
    if (t->type != LMS_GGML_Q8_0)
        return lms_error_set(err, LMS_EUNSUPPORTED, "'%s': tensor '%.*s' is %s (F32, F16, BF16 "
                             "and Q8_0 are read)", r->path, (int)t->name.n, t->name.p,
                             lms_ggml_type_name(t->type));
    uint64_t numel = t->nbytes / LMS_GGML_Q8_0_BYTES * LMS_GGML_Q8_0_BLOCK;
    struct lms_storage *host;
    enum lms_status rc = lms_storage_new_host((size_t)numel * 4, &host, err);
    if (rc)
        return rc;
    const uint8_t *src = (const uint8_t *)r->st->base + at;
    for (uint64_t b = 0; b < numel / LMS_GGML_Q8_0_BLOCK; b++)
        lms_gguf_q8_0_dequantize(src + b * LMS_GGML_Q8_0_BYTES, (float *)host->base + b * LMS_GGML_Q8_0_BLOCK);
    rc = lms_view_new_storage(host, 0, LMS_DTYPE_F32, nd, shape, out, err);
    lms_storage_release(host);
    return rc;
}

/* A 1-D tensor the writer widened to F32 (llama.cpp keeps norms and biases in f32) goes back to
 * the model's dtype when every value survives the trip, so that a BF16 or F16 checkpoint comes
 * back with the dtypes it had. */
static enum lms_status narrow_1d(struct lms_view **v, enum lms_dtype dt, struct lms_error *err)
{
    if ((*v)->ndim != 1 || (*v)->dtype != LMS_DTYPE_F32 || dt == LMS_DTYPE_F32)
        return LMS_OK;
    int64_t n = (*v)->shape[0];
    float *f = lms_malloc((size_t)n * sizeof *f + 1);
    struct lms_storage *host = NULL;
    enum lms_status rc = f ? lms_view_read(*v, 0, n, f, err)
                           : lms_error_set(err, LMS_ENOMEM, "out of memory");
    if (!rc)
        rc = lms_storage_new_host((size_t)n * 2, &host, err);
    bool exact = !rc;
    if (!rc) {
        lms_cast(host->base, dt, f, LMS_DTYPE_F32, (size_t)n);
        float back;
        for (int64_t i = 0; i < n && exact; i++) {
            lms_cast(&back, LMS_DTYPE_F32, (uint16_t *)host->base + i, dt, 1);
            exact = memcmp(&back, &f[i], sizeof back) == 0;
        }
    }
    struct lms_view *nv = NULL;
    if (exact && !(rc = lms_view_new_storage(host, 0, dt, 1, &n, &nv, err))) {
        lms_view_release(*v);
        *v = nv;
    }
    lms_storage_release(host);
    lms_free(f);
    return rc;
}

/* The family's fused tensor a GGUF name is ("blk.N.attn_qkv.weight" for phi3), NULL when none. */
static const struct lms_arch_fused *fused_of_gguf_name(const struct lms_arch_desc *d,
                                                       const char *name, int64_t *layer)
{
    if (strncmp(name, "blk.", 4) != 0)
        return NULL;
    char *end;
    long long l = strtoll(name + 4, &end, 10);
    if (end == name + 4 || *end != '.' || l < 0 || l > INT32_MAX)
        return NULL;
    for (int f = 0; d && f < d->n_gguf_fused; f++) {
        const char *tail = strchr(strchr(d->gguf_fused[f].hf_name, '.') + 1, '.') + 1;
        if (strcmp(end + 1, tail) == 0) {
            *layer = l;
            return &d->gguf_fused[f];
        }
    }
    return NULL;
}

/* A fused tensor's roles as row ranges of it, under their own names, after checking its shape
 * against the metadata (the rows of its parts, hidden columns). */
static enum lms_status add_fused_tensor(struct reader *r, struct lms_model *m,
                                        const struct lms_arch_fused *fu, int64_t layer,
                                        const struct lms_gguf_tensor *t, const char *name,
                                        struct lms_error *err)
{
    int64_t rows = 0, part_rows[3], cols = m->arch.hidden;
    for (int p = 0; p < fu->n_parts; p++) {
        int nd;
        int64_t shape[LMS_MAX_DIMS];
        lms_role_shape(fu->parts[p], &m->arch, &nd, shape);
        part_rows[p] = shape[0];
        rows += shape[0];
    }
    if (layer >= m->arch.n_layers)
        return lms_error_set(err, LMS_EFORMAT, "'%s': tensor '%s': layer %lld is outside 0..%lld",
                             r->path, name, (long long)layer, (long long)m->arch.n_layers - 1);
    if (t->n_dims != 2 || t->ne[0] != (uint64_t)cols || t->ne[1] != (uint64_t)rows)
        return lms_error_set(err, LMS_ESHAPE, "'%s': tensor '%s' is not [%lld, %lld] as the "
                             "metadata implies", r->path, name, (long long)rows, (long long)cols);
    struct lms_view *v = NULL;
    enum lms_status rc = tensor_view(r, t, &v, err);
    int64_t begin = 0;
    for (int p = 0; p < fu->n_parts && !rc; p++) {
        struct lms_view *part;
        char hf[256];
        if (!lms_role_hf_name(fu->parts[p], layer, hf, sizeof hf))
            rc = lms_error_set(err, LMS_EINVAL, "tensor name too long");
        if (!rc)
            rc = lms_view_new_range(v, 0, begin, part_rows[p], &part, err);
        if (rc)
            break;
        rc = lms_model_add(m, hf, fu->parts[p], layer, part, err);
        lms_view_release(part);
        begin += part_rows[p];
    }
    lms_view_release(v);
    return rc;
}

static enum lms_status add_tensor(struct reader *r, struct lms_model *m,
                                  const struct lms_gguf_tensor *t, struct lms_error *err)
{
    char name[256], hf[256];
    if (t->name.n >= sizeof name)
        return lms_error_set(err, LMS_EFORMAT, "'%s': a tensor name is too long", r->path);
    memcpy(name, t->name.p, t->name.n);
    name[t->name.n] = 0;
    int64_t fused_layer;
    const struct lms_arch_fused *fu =
        fused_of_gguf_name(family_info(m->arch.family), name, &fused_layer);
    if (fu)
        return add_fused_tensor(r, m, fu, fused_layer, t, name, err);
    enum lms_role role;
    int64_t layer;
    if (!role_of_gguf_name(name, &role, &layer) || !lms_role_hf_name(role, layer, hf, sizeof hf))
        return lms_error_set(err, LMS_EUNSUPPORTED, "'%s': tensor '%s' is not one lmsurgeon "
                             "models", r->path, name);
    struct lms_view *v = NULL, *hv = NULL;
    enum lms_status rc = tensor_view(r, t, &v, err);
    if (!rc && (m->arch.dtype == LMS_DTYPE_BF16 || m->arch.dtype == LMS_DTYPE_F16))
        rc = narrow_1d(&v, m->arch.dtype, err);
    if (!rc && family_info(m->arch.family)->gguf_permute_qk && role_is_permuted(role)) {
        rc = permute_view(v, m->arch.head_dim, false, &hv, err);
        if (rc)
            lms_error_wrap(err, "'%s': tensor '%s': ", r->path, name);
    } else if (!rc) {
        hv = lms_view_ref(v);
    }
    lms_view_release(v);
    if (!rc)
        rc = lms_model_add(m, hf, role, layer, hv, err);
    lms_view_release(hv);
    return rc;
}

/* The config.json carried under lmsurgeon.hf_config, or NULL. */
static enum lms_status carried_config(const struct reader *r, json_t **out, struct lms_error *err)
{
    *out = NULL;
    const struct lms_gguf_kv *kv = lms_gguf_find(&r->g, "lmsurgeon.hf_config");
    if (!kv)
        return LMS_OK;
    if (kv->type != LMS_GGUF_STRING)
        return key_error(r, "lmsurgeon.hf_config", "is not a string", err);
    enum lms_status rc = lms_json_load_buffer(r->path, kv->v.s.p, kv->v.s.n, out, err);
    if (!rc && !json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        rc = key_error(r, "lmsurgeon.hf_config", "is not a JSON object", err);
    }
    return rc;
}

/* Writes one file into the scratch directory that travels with the model (made on first use)
 * and adds it to the model's files. */
static enum lms_status scratch_file(struct lms_model *m, const char *name, const void *buf,
                                    size_t len, struct lms_error *err)
{
    enum lms_status rc = LMS_OK;
    if (!m->scratch)
        rc = lms_scratch_new("lmsurgeon-gguf-", &m->scratch, err);
    char p[PATH_MAX];
    if (!rc && snprintf(p, sizeof p, "%s/%s", m->scratch->path, name) >= (int)sizeof p)
        rc = lms_error_set(err, LMS_EINVAL, "scratch path too long");
    if (!rc)
        rc = lms_write_file(p, buf, len, err);
    if (!rc)
        rc = lms_model_add_aux_file(m, p, err);
    return rc;
}

/* The files carried under lmsurgeon.file.NAME, written into the scratch directory. */
static enum lms_status carried_files(const struct reader *r, struct lms_model *m,
                                     struct lms_error *err)
{
    static const char prefix[] = "lmsurgeon.file.";
    for (uint64_t i = 0; i < r->g.n_kv; i++) {
        const struct lms_gguf_kv *kv = &r->g.kv[i];
        size_t pl = sizeof prefix - 1;
        if (kv->key.n <= pl || memcmp(kv->key.p, prefix, pl) || kv->type != LMS_GGUF_STRING)
            continue;
        char name[128];
        size_t nl = kv->key.n - pl;
        if (nl >= sizeof name)
            continue;
        memcpy(name, kv->key.p + pl, nl);
        name[nl] = 0;
        bool known = false;
        for (int k = 0; lms_hf_aux_files[k]; k++)
            known = known || strcmp(lms_hf_aux_files[k], name) == 0;
        if (!known) /* only the names the HF layout carries: no path can come from the file */
            continue;
        enum lms_status rc = scratch_file(m, name, kv->v.s.p, (size_t)kv->v.s.n, err);
        if (rc)
            return rc;
    }
    return LMS_OK;
}

static enum lms_status scratch_json(struct lms_model *m, const char *name, const json_t *v,
                                    struct lms_error *err)
{
    struct lms_buf_str text = {0};
    enum lms_status rc = lms_json_dump(v, LMS_JSON_INDENT2, &text, err);
    if (!rc)
        rc = scratch_file(m, name, text.data, text.len, err);
    lms_buf_str_release(&text);
    return rc;
}

/* A file from another tool carries no tokenizer files: tokenizer.json and tokenizer_config.json
 * are rebuilt from tokenizer.ggml.* (gguf_tokenizer.h). A tokenizer that cannot be rebuilt
 * leaves the model without them, as before, and the reason in m->warning: the weights are
 * still read. */
static enum lms_status rebuilt_tokenizer(const struct reader *r, struct lms_model *m,
                                         struct lms_error *err)
{
    if (aux_path(m, "tokenizer.json") || aux_path(m, "tokenizer_config.json") ||
        !lms__gguf_has_tokenizer(&r->g))
        return LMS_OK;
    json_t *tok, *cfg;
    struct lms_error why;
    lms_error_clear(&why);
    enum lms_status rc = lms__gguf_tokenizer_rebuild(&r->g, r->path, m->arch.max_position, &tok,
                                                     &cfg, &why);
    if (rc == LMS_ENOMEM)
        return lms_error_set(err, rc, "%s", why.msg);
    if (rc) {
        char line[LMS_ERROR_MSG_CAP + 64];
        snprintf(line, sizeof line, "%s; no tokenizer files written", why.msg);
        return lms_model_set_warning(m, line, err);
    }
    rc = scratch_json(m, "tokenizer.json", tok, err);
    if (!rc)
        rc = scratch_json(m, "tokenizer_config.json", cfg, err);
    json_decref(tok);
    json_decref(cfg);
    return rc;
}

/* GGUF holds epsilon and rope values as f32; the carried config holds them as written. When both
 * agree to f32 precision, the carried (exact) value is kept. */
static void restore_exact_floats(const json_t *carried, struct lms_arch *a)
{
    struct lms_arch c;
    if (!carried || lms_hf_config_parse(carried, &c, NULL))
        return;
    if ((float)c.norm_eps == (float)a->norm_eps)
        a->norm_eps = c.norm_eps;
    if ((float)c.rope.theta == (float)a->rope.theta)
        a->rope.theta = c.rope.theta;
    if ((float)c.rope.factor == (float)a->rope.factor)
        a->rope.factor = c.rope.factor;
}

/* The f32 values of rope_freqs.weight, checked to be head_dim / 2 of them. */
static enum lms_status read_rope_freqs(const struct reader *r, const struct lms_gguf_tensor *t,
                                       int64_t n, float *dst, struct lms_error *err)
{
    if (t->type != LMS_GGML_F32 || t->n_dims != 1 || t->ne[0] != (uint64_t)n)
        return lms_error_set(err, LMS_EFORMAT, "'%s': tensor '%s' is not %lld f32 values (half "
                             "the head dimension)", r->path, ROPE_FREQS_NAME, (long long)n);
    memcpy(dst, (const char *)r->st->base + r->g.data_offset + t->offset, (size_t)n * sizeof *dst);
    return LMS_OK;
}

/* llama3 rope scaling: llama.cpp keeps it only as rope_freqs.weight, from which the four
 * factors cannot be recovered, so they come from the carried config (lmsurgeon.hf_config), and
 * the tensor must be what they give (to f32 rounding: llama.cpp's converter computes it with
 * torch). A file with the tensor but no such config, or the config without the tensor, is
 * refused rather than run with the wrong rotary frequencies. */
static enum lms_status read_llama3_rope(const struct reader *r, const json_t *carried,
                                        struct lms_arch *a, struct lms_error *err)
{
    const struct lms_gguf_tensor *t = find_tensor(r, ROPE_FREQS_NAME);
    struct lms_arch c;
    bool llama3 = carried && !lms_hf_config_parse(carried, &c, NULL) &&
                  c.rope.type == LMS_ROPE_LLAMA3;
    if (!t && !llama3)
        return LMS_OK;
    if (!t)
        return lms_error_set(err, LMS_EFORMAT, "'%s': lmsurgeon.hf_config has llama3 rope "
                             "scaling but the file has no '%s'", r->path, ROPE_FREQS_NAME);
    if (!llama3)
        return lms_error_set(err, LMS_EUNSUPPORTED, "'%s': '%s' without the llama3 rope_scaling "
                             "of lmsurgeon.hf_config is not supported", r->path, ROPE_FREQS_NAME);
    if (a->rope.type != LMS_ROPE_DEFAULT || a->head_dim <= 0 || a->head_dim % 2 ||
        a->head_dim > 4096)
        return lms_error_set(err, LMS_EFORMAT, "'%s': '%s' needs an even head dimension and no "
                             "other rope scaling", r->path, ROPE_FREQS_NAME);
    double theta = a->rope.theta;
    a->rope = c.rope;
    a->rope.theta = theta; /* the file's, made exact by restore_exact_floats */
    float got[2048], want[2048];
    int64_t n = a->head_dim / 2;
    enum lms_status rc = read_rope_freqs(r, t, n, got, err);
    if (!rc)
        rc = llama3_rope_freqs(&a->rope, a->head_dim, want, err);
    if (rc)
        return lms_error_wrap(err, "'%s': ", r->path);
    for (int64_t i = 0; i < n; i++)
        if (!(fabsf(got[i] - want[i]) <= 1e-5f * want[i]))
            return lms_error_set(err, LMS_EFORMAT, "'%s': '%s' does not match the llama3 "
                                 "rope_scaling of lmsurgeon.hf_config (value %lld is %g, not %g)",
                                 r->path, ROPE_FREQS_NAME, (long long)i, got[i], want[i]);
    return LMS_OK;
}

/* The f32 value of ARCH.rope.scaling.KEY: true when the file has it as a float. */
static bool yarn_file_value(const struct reader *r, const char *key, double *v)
{
    char k[128];
    snprintf(k, sizeof k, "%s.rope.scaling.%s", r->arch, key);
    const struct lms_gguf_kv *kv = lms_gguf_find(&r->g, k);
    if (!kv || (kv->type != LMS_GGUF_F32 && kv->type != LMS_GGUF_F64))
        return false;
    *v = kv->v.f;
    return true;
}

/* YaRN in a file that carries its config: both must say yarn or neither, with the same factor
 * and original context, and each optional value (beta_fast, ...) present in both or neither,
 * equal to f32 precision. */
static enum lms_status check_yarn_agrees(const struct reader *r, const json_t *carried,
                                         const struct lms_arch *a, struct lms_error *err)
{
    struct lms_arch c;
    if (!carried || lms_hf_config_parse(carried, &c, NULL) || c.rope.type == LMS_ROPE_LLAMA3)
        return LMS_OK;
    bool fy = a->rope.type == LMS_ROPE_YARN, cy = c.rope.type == LMS_ROPE_YARN;
    const char *what = NULL;
    if (fy != cy)
        what = fy ? "rope scaling type (the config has no yarn)"
                  : "rope scaling type (the file has no yarn)";
    else if (fy && (float)c.rope.factor != (float)a->rope.factor)
        what = "factor";
    else if (fy && c.rope.original_max_position != a->rope.original_max_position)
        what = "original_context_length";
    const json_t *block = config_rope_block(carried);
    for (size_t i = 0; fy && !what && i < N_YARN_KEYS; i++) {
        double fv;
        bool in_file = yarn_file_value(r, yarn_keys[i].gguf, &fv);
        const json_t *cv = yarn_value(block, i);
        if (in_file != (cv != NULL) || (cv && (float)json_number_value(cv) != (float)fv))
            what = yarn_keys[i].gguf;
    }
    if (what)
        return lms_error_set(err, LMS_EFORMAT, "'%s': the yarn rope scaling of "
                             "lmsurgeon.hf_config and the file's '%s.rope.scaling.*' keys "
                             "disagree (%s)", r->path, r->arch, what);
    return LMS_OK;
}

/* What a config rebuilt from llama.cpp's keys needs beyond the IR: YaRN's optional values
 * under their transformers names, and phi3's original_max_position_embeddings and window. */
static enum lms_status keys_into_config(const struct reader *r, const struct lms_arch *a,
                                        json_t *config, struct lms_error *err)
{
    json_t *block = json_object_get(config, "rope_scaling");
    int bad = 0;
    for (size_t i = 0; a->rope.type == LMS_ROPE_YARN && json_is_object(block) && i < N_YARN_KEYS;
         i++) {
        double v;
        if (yarn_file_value(r, yarn_keys[i].gguf, &v))
            bad |= json_object_set_new(block, yarn_keys[i].hf, json_real(v));
    }
    if (a->family == LMS_FAMILY_PHI3) {
        int64_t orig = 0;
        if (a->rope.type != LMS_ROPE_YARN &&
            arch_int(r, "rope.scaling.original_context_length", 0, &orig, NULL) == LMS_OK &&
            orig > 0)
            bad |= json_object_set_new(config, "original_max_position_embeddings",
                                       json_integer(orig));
        bad |= json_object_set_new(config, "sliding_window",
                                   a->sliding_window > 0 ? json_integer(a->sliding_window)
                                                         : json_null());
    }
    return bad ? lms_error_set(err, LMS_ENOMEM, "out of memory") : LMS_OK;
}

static enum lms_status read_model(struct reader *r, struct lms_model *m, struct lms_error *err)
{
    json_t *carried;
    enum lms_status rc = carried_config(r, &carried, err);
    if (!rc)
        rc = read_arch(r, carried, &m->arch, err);
    if (!rc)
        restore_exact_floats(carried, &m->arch);
    if (!rc)
        rc = read_llama3_rope(r, carried, &m->arch, err);
    if (!rc)
        rc = check_yarn_agrees(r, carried, &m->arch, err);
    if (!rc)
        rc = lms_hf_config_build(&m->arch, carried, &m->hf_config, err);
    if (!rc && !carried)
        rc = keys_into_config(r, &m->arch, m->hf_config, err);
    json_decref(carried);
    if (rc)
        return rc;
    rc = lms_arch_validate(&m->arch, err);
    if (rc)
        return lms_error_wrap(err, "'%s': ", r->path);
    for (uint64_t i = 0; i < r->g.n_tensors && !rc; i++)
        if (!gguf_name_is(&r->g.tensors[i], ROPE_FREQS_NAME)) /* read into the arch above */
            rc = add_tensor(r, m, &r->g.tensors[i], err);
    if (!rc)
        rc = carried_files(r, m, err);
    if (!rc)
        rc = rebuilt_tokenizer(r, m, err);
    if (!rc && lms_model_validate(m, err))
        rc = lms_error_wrap(err, "reading '%s': ", r->path);
    if (!rc && !(m->source_format = lms_strdup("gguf")))
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
    return rc;
}

static enum lms_status gguf_read(const char *path, struct lms_model *m, struct lms_error *err)
{
    lms_model_init(m);
    struct reader r = {.path = path};
    enum lms_status rc = lms_storage_map_file(path, &r.st, err);
    if (!rc)
        rc = lms_gguf_parse(r.st->base, r.st->size, path, &r.g, err);
    if (!rc)
        rc = read_model(&r, m, err);
    lms_gguf_release(&r.g);
    lms_storage_release(r.st);
    if (rc)
        lms_model_release(m);
    return rc;
}

static int gguf_probe(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    char magic[4];
    bool ok = fread(magic, 1, 4, f) == 4 && memcmp(magic, LMS_GGUF_MAGIC, 4) == 0;
    fclose(f);
    return ok ? 100 : 0;
}

const struct lms_format lms_format_gguf = {
    .name = "gguf",
    .description = "llama.cpp GGUF file (F32, F16, BF16, Q8_0)",
    .probe = gguf_probe,
    .read = gguf_read,
    .write = gguf_write,
};
