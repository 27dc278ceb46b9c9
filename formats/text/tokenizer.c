/* Byte-level BPE tokenizer compatible with Hugging Face tokenizer.json (include/lms/tokenizer.h).
 *
 * Pipeline per input: added-token split on the raw text -> NFC of each piece (Unicode 9.0) -> split
 * on normalized added tokens -> pre-tokenizer steps (the Split patterns of the supported families
 * and ByteLevel's GPT-2 pattern, each implemented as a hand-written code point walker) -> BPE of
 * each pre-token over its bytes (the ByteLevel alphabet is only needed to read the vocabulary and
 * for ignore_merges lookups) -> post-processor template.
 *
 * BPE follows the reference's Word::merge_all: a min-heap of (rank, position) over adjacent
 * pairs, stale entries skipped, so ties go to the leftmost pair. Results per word are cached in
 * the per-thread context. */
#include "lms/tokenizer.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "formats/codecs/gguf.h"
#include "formats/layouts/gguf_tokenizer.h"
#include "formats/text/unicode.h"
#include "lms/alloc.h"
#include "lms/json.h"
#include "lms/storage.h"

#define MAX_JSON_BYTES ((size_t)1 << 30)

/* ---- hashing --------------------------------------------------------------------------- */

static uint64_t hash_bytes(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ n;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = (h ^ v) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 32;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, s, n);
    h = (h ^ v) * 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 29;
    return h;
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDull;
    x ^= x >> 33;
    x *= 0xC4CEB9FE1A85EC53ull;
    x ^= x >> 33;
    return x;
}

/* ---- the tokenizer ---------------------------------------------------------------------- */

enum pattern { PAT_QWEN, PAT_LLAMA3, PAT_GPT2 };

struct pre_step {
    enum pattern pat;       /* split pattern of this step */
    bool prefix_space;      /* ByteLevel add_prefix_space applies before this step */
    bool split;             /* false: ByteLevel with use_regex false (no split) */
};

struct added_token {
    char *content;          /* owned */
    size_t len;             /* bytes */
    int32_t id;             /* assigned id */
    bool special, lstrip, rstrip, single_word, normalized;
};

struct token_str {
    const char *s;          /* into the tokenizer's string arena or added content; NULL = none */
    uint32_t len;           /* bytes */
    int32_t added;          /* index into added[] or -1 */
};

struct merge_slot {
    uint64_t key;           /* left id << 32 | right id; UINT64_MAX = empty */
    int32_t rank;           /* index in merges after skipping */
    int32_t id;             /* id of the merged token */
};

struct lms_tokenizer {
    char *arena;                 /* vocab keys back to back; owned */
    struct token_str *tokens;    /* [n_tokens] id -> string */
    int64_t n_tokens;            /* largest id + 1 */
    int64_t n_vocab;             /* entries of model.vocab */
    int32_t *vocab_slots;        /* open addressing, ids; -1 empty */
    size_t vocab_mask;
    struct merge_slot *merges;   /* open addressing */
    size_t merge_mask;
    int32_t byte_id[256];        /* id of the single ByteLevel char for each byte, -1 if none */
    uint16_t byte_char[256];     /* ByteLevel code point of each byte */
    int byte_of_char[0x144];     /* inverse for code points < 0x144; -1 otherwise */
    bool ignore_merges;
    bool nfc;
    struct pre_step steps[4];
    int n_steps;
    struct added_token *added;
    size_t n_added;
    bool any_added_raw, any_added_norm;
    bool added_first[256];       /* first byte of some non-normalized added token */
    int32_t *tmpl_prefix, *tmpl_suffix; /* post-processor single template ids */
    size_t n_prefix, n_suffix;
    int32_t eos_id, bos_id, pad_id;
    uint8_t ascii_cls[128];      /* pre-tokenizer class bits of ASCII code points */
};

static void build_byte_alphabet(struct lms_tokenizer *tk)
{
    /* printable bytes map to themselves, the other 68 in order to U+0100.. */
    int next = 0x100;
    for (int i = 0; i < 0x144; i++)
        tk->byte_of_char[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        tk->byte_char[b] = (uint16_t)(keep ? b : next++);
        tk->byte_of_char[tk->byte_char[b]] = b;
    }
}

/* Pre-tokenizer classes of a code point: the LMS_UC_* bits plus NL (CR, LF) and SP. */
enum { C_L = LMS_UC_L, C_N = LMS_UC_N, C_WS = LMS_UC_WS, C_NL = 16, C_SP = 32 };
#define IS_OTHER(x) (!((x) & (C_L | C_N | C_WS)))

static int32_t vocab_find(const struct lms_tokenizer *tk, const char *s, size_t n)
{
    size_t i = hash_bytes(s, n) & tk->vocab_mask;
    for (;;) {
        int32_t id = tk->vocab_slots[i];
        if (id < 0)
            return -1;
        const struct token_str *t = &tk->tokens[id];
        if (t->len == n && memcmp(t->s, s, n) == 0)
            return id;
        i = (i + 1) & tk->vocab_mask;
    }
}

static const struct merge_slot *merge_find(const struct lms_tokenizer *tk, int32_t a,
                                           int32_t b)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = hash_u64(key) & tk->merge_mask;
    for (;;) {
        const struct merge_slot *m = &tk->merges[i];
        if (m->key == key)
            return m;
        if (m->key == UINT64_MAX)
            return NULL;
        i = (i + 1) & tk->merge_mask;
    }
}

void lms_tokenizer_free(struct lms_tokenizer *tk)
{
    if (!tk)
        return;
    for (size_t i = 0; i < tk->n_added; i++)
        lms_free(tk->added[i].content);
    lms_free(tk->added);
    lms_free(tk->arena);
    lms_free(tk->tokens);
    lms_free(tk->vocab_slots);
    lms_free(tk->merges);
    lms_free(tk->tmpl_prefix);
    lms_free(tk->tmpl_suffix);
    lms_free(tk);
}

/* ---- loading ------------------------------------------------------------------------------ */

static const char *const pattern_text[3] = {
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
};

static bool get_bool(json_t *o, const char *key, bool dflt)
{
    json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static enum lms_status parse_pre_one(struct lms_tokenizer *tk, json_t *p, const char *where,
                                     bool *saw_bytelevel, struct lms_error *err)
{
    const char *type = json_string_value(json_object_get(p, "type"));
    if (!type)
        return lms_error_set(err, LMS_EFORMAT, "%s.type: missing or not a string", where);
    if (*saw_bytelevel)
        return lms_error_set(err, LMS_EUNSUPPORTED, "%s: pre-tokenizer '%s' after ByteLevel is "
                             "not supported", where, type);
    if (tk->n_steps == 3)
        return lms_error_set(err, LMS_EUNSUPPORTED, "%s: too many pre-tokenizer steps", where);
    if (strcmp(type, "Split") == 0) {
        json_t *pat = json_object_get(p, "pattern");
        const char *behavior = json_string_value(json_object_get(p, "behavior"));
        if (json_object_get(pat, "String"))
            return lms_error_set(err, LMS_EUNSUPPORTED, "%s.pattern: literal String patterns "
                                 "are not supported", where);
        const char *re = json_string_value(json_object_get(pat, "Regex"));
        if (!re)
            return lms_error_set(err, LMS_EFORMAT, "%s.pattern.Regex: missing or not a string",
                                 where);
        if (!behavior || strcmp(behavior, "Isolated") != 0)
            return lms_error_set(err, LMS_EUNSUPPORTED, "%s.behavior: '%s' is not supported "
                                 "(only Isolated)", where, behavior ? behavior : "(missing)");
        if (get_bool(p, "invert", false))
            return lms_error_set(err, LMS_EUNSUPPORTED, "%s.invert: true is not supported",
                                 where);
        int k;
        for (k = 0; k < 3; k++)
            if (strcmp(re, pattern_text[k]) == 0)
                break;
        if (k == 3)
            return lms_error_set(err, LMS_EUNSUPPORTED, "%s.pattern.Regex: unsupported pattern "
                                 "'%.80s' (only the Qwen2, Llama-3 and GPT-2 patterns are "
                                 "implemented)", where, re);
        tk->steps[tk->n_steps++] = (struct pre_step){(enum pattern)k, false, true};
        return LMS_OK;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        *saw_bytelevel = true;
        bool prefix = get_bool(p, "add_prefix_space", false);
        bool use_regex = get_bool(p, "use_regex", true);
        if (prefix || use_regex)
            tk->steps[tk->n_steps++] = (struct pre_step){PAT_GPT2, prefix, use_regex};
        return LMS_OK;
    }
    return lms_error_set(err, LMS_EUNSUPPORTED, "%s.type: unsupported pre-tokenizer '%s'",
                         where, type);
}

static enum lms_status parse_pre_tokenizer(struct lms_tokenizer *tk, json_t *p,
                                           struct lms_error *err)
{
    bool saw = false;
    if (!json_is_object(p))
        return lms_error_set(err, LMS_EUNSUPPORTED, "pre_tokenizer: missing (a byte-level BPE "
                             "tokenizer needs ByteLevel)");
    const char *type = json_string_value(json_object_get(p, "type"));
    enum lms_status st;
    if (type && strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(p, "pretokenizers");
        if (!json_is_array(list))
            return lms_error_set(err, LMS_EFORMAT, "pre_tokenizer.pretokenizers: not an array");
        for (size_t i = 0; i < json_array_size(list); i++) {
            char where[64];
            snprintf(where, sizeof(where), "pre_tokenizer.pretokenizers[%zu]", i);
            st = parse_pre_one(tk, json_array_get(list, i), where, &saw, err);
            if (st)
                return st;
        }
    } else {
        st = parse_pre_one(tk, p, "pre_tokenizer", &saw, err);
        if (st)
            return st;
    }
    if (!saw)
        return lms_error_set(err, LMS_EUNSUPPORTED, "pre_tokenizer: no ByteLevel step (only "
                             "byte-level BPE is supported)");
    return LMS_OK;
}

static enum lms_status merges_insert(struct lms_tokenizer *tk, int32_t a, int32_t b,
                                     int32_t rank, int32_t id)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = hash_u64(key) & tk->merge_mask;
    while (tk->merges[i].key != UINT64_MAX && tk->merges[i].key != key)
        i = (i + 1) & tk->merge_mask;
    tk->merges[i] = (struct merge_slot){key, rank, id}; /* a later duplicate wins */
    return LMS_OK;
}

static enum lms_status parse_model(struct lms_tokenizer *tk, json_t *model, json_t *added,
                                   struct lms_error *err)
{
    if (!json_is_object(model))
        return lms_error_set(err, LMS_EFORMAT, "model: missing or not an object");
    const char *type = json_string_value(json_object_get(model, "type"));
    if (!type || strcmp(type, "BPE") != 0)
        return lms_error_set(err, LMS_EUNSUPPORTED, "model.type: unsupported model type '%s' "
                             "(only BPE)", type ? type : "(missing)");
    json_t *v;
    if ((v = json_object_get(model, "dropout")) && !json_is_null(v))
        return lms_error_set(err, LMS_EUNSUPPORTED, "model.dropout: only null is supported");
    if (get_bool(model, "byte_fallback", false))
        return lms_error_set(err, LMS_EUNSUPPORTED, "model.byte_fallback: true is not supported");
    static const char *const affix[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int k = 0; k < 2; k++) {
        v = json_object_get(model, affix[k]);
        if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
            return lms_error_set(err, LMS_EUNSUPPORTED, "model.%s: only null or \"\" is "
                                 "supported", affix[k]);
    }
    tk->ignore_merges = get_bool(model, "ignore_merges", false);
    json_t *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges");
    if (!json_is_object(vocab))
        return lms_error_set(err, LMS_EFORMAT, "model.vocab: missing or not an object");
    if (!json_is_array(merges))
        return lms_error_set(err, LMS_EFORMAT, "model.merges: missing or not an array");

    /* vocab: ids, arena, id -> string */
    size_t n_vocab = json_object_size(vocab), arena_len = 0;
    int64_t max_id = -1;
    const char *key;
    json_object_foreach(vocab, key, v)
    {
        json_int_t id = json_integer_value(v);
        if (!json_is_integer(v) || id < 0 || id >= INT32_MAX / 2)
            return lms_error_set(err, LMS_EFORMAT, "model.vocab['%.60s']: id is not an integer "
                                 "in [0, 2^30)", key);
        if (id > max_id)
            max_id = id;
        arena_len += strlen(key) + 1;
    }
    /* added tokens: assigned ids */
    size_t n_added = json_is_array(added) ? json_array_size(added) : 0;
    if (added && !json_is_array(added))
        return lms_error_set(err, LMS_EFORMAT, "added_tokens: not an array");
    /* the id -> token table has max_id + 1 entries: ids may leave gaps, but not so many that a
     * small file asks for gigabytes (real vocabularies number their tokens 0..n-1) */
    int64_t n_entries = (int64_t)(n_vocab + n_added);
    if (max_id >= 2 * n_entries + 65536)
        return lms_error_set(err, LMS_EFORMAT, "model.vocab: id %lld for %lld tokens; ids this "
                             "sparse are not supported (at most 2 x tokens + 65536)",
                             (long long)max_id, (long long)n_entries);
    tk->n_vocab = (int64_t)n_vocab;
    tk->added = lms_calloc(n_added ? n_added : 1, sizeof(*tk->added));
    tk->arena = lms_malloc(arena_len ? arena_len : 1);
    size_t slots = 16;
    while (slots < 2 * (n_vocab + n_added))
        slots <<= 1;
    tk->vocab_slots = lms_malloc(slots * sizeof(int32_t));
    tk->vocab_mask = slots - 1;
    if (!tk->added || !tk->arena || !tk->vocab_slots)
        return lms_error_set(err, LMS_ENOMEM, "loading vocabulary: out of memory");
    memset(tk->vocab_slots, 0xFF, slots * sizeof(int32_t));
    int64_t cap_tokens = max_id + 1 + (int64_t)n_added;
    tk->tokens = lms_calloc((size_t)(cap_tokens ? cap_tokens : 1), sizeof(*tk->tokens));
    if (!tk->tokens)
        return lms_error_set(err, LMS_ENOMEM, "loading vocabulary: out of memory");
    size_t off = 0;
    json_object_foreach(vocab, key, v)
    {
        size_t len = strlen(key);
        int32_t id = (int32_t)json_integer_value(v);
        memcpy(tk->arena + off, key, len + 1);
        if (tk->tokens[id].s)
            return lms_error_set(err, LMS_EFORMAT, "model.vocab['%.60s']: id %d is used twice",
                                 key, id);
        tk->tokens[id] = (struct token_str){tk->arena + off, (uint32_t)len, -1};
        off += len + 1;
        size_t i = hash_bytes(key, len) & tk->vocab_mask;
        while (tk->vocab_slots[i] >= 0)
            i = (i + 1) & tk->vocab_mask;
        tk->vocab_slots[i] = id;
    }
    tk->n_tokens = max_id + 1;
    int64_t next_id = (int64_t)n_vocab > max_id + 1 ? (int64_t)n_vocab : max_id + 1;
    for (size_t k = 0; k < n_added; k++) {
        json_t *a = json_array_get(added, k);
        const char *content = json_string_value(json_object_get(a, "content"));
        if (!content || !*content)
            return lms_error_set(err, LMS_EFORMAT, "added_tokens[%zu].content: missing, empty "
                                 "or not a string", k);
        size_t len = strlen(content);
        struct added_token *t = &tk->added[tk->n_added];
        int32_t id = vocab_find(tk, content, len);
        if (id < 0) {
            for (size_t j = 0; j < tk->n_added; j++)
                if (tk->added[j].len == len && memcmp(tk->added[j].content, content, len) == 0)
                    id = tk->added[j].id;
        }
        if (id >= 0 && tk->tokens[id].added >= 0)
            continue; /* duplicate of an earlier added token */
        if (id < 0)
            id = (int32_t)next_id++;
        t->content = lms_strdup(content);
        if (!t->content)
            return lms_error_set(err, LMS_ENOMEM, "loading added tokens: out of memory");
        t->len = len;
        t->id = id;
        t->special = get_bool(a, "special", false);
        t->lstrip = get_bool(a, "lstrip", false);
        t->rstrip = get_bool(a, "rstrip", false);
        t->single_word = get_bool(a, "single_word", false);
        t->normalized = get_bool(a, "normalized", !t->special);
        tk->tokens[id] = (struct token_str){t->content, (uint32_t)len, (int32_t)tk->n_added};
        if (id + 1 > tk->n_tokens)
            tk->n_tokens = id + 1;
        if (t->normalized && tk->nfc) {
            tk->any_added_norm = true;
        } else {
            t->normalized = false;
            tk->any_added_raw = true;
            tk->added_first[(unsigned char)content[0]] = true;
        }
        tk->n_added++;
    }
    /* byte alphabet ids */
    for (int b = 0; b < 256; b++) {
        unsigned char u[4];
        size_t n = lms__utf8_encode(tk->byte_char[b], u);
        tk->byte_id[b] = vocab_find(tk, (const char *)u, n);
    }
    /* merges: "A B" strings or ["A", "B"] pairs; rank = index after skipping */
    size_t n_merges = json_array_size(merges);
    slots = 16;
    while (slots < 2 * n_merges)
        slots <<= 1;
    tk->merges = lms_malloc(slots * sizeof(*tk->merges));
    if (!tk->merges)
        return lms_error_set(err, LMS_ENOMEM, "loading merges: out of memory");
    for (size_t i = 0; i < slots; i++)
        tk->merges[i].key = UINT64_MAX;
    tk->merge_mask = slots - 1;
    char *buf = NULL;
    size_t buf_cap = 0;
    int32_t rank = 0;
    enum lms_status st = LMS_OK;
    for (size_t k = 0; k < n_merges; k++) {
        json_t *m = json_array_get(merges, k);
        const char *a, *b;
        size_t la, lb;
        if (json_is_string(m)) {
            const char *s = json_string_value(m);
            if (strncmp(s, "#version", 8) == 0)
                continue;
            const char *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                st = lms_error_set(err, LMS_EFORMAT, "model.merges[%zu]: '%.60s' is not two "
                                   "tokens separated by one space", k, s);
                break;
            }
            a = s;
            la = (size_t)(sp - s);
            b = sp + 1;
            lb = strlen(b);
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            la = strlen(a);
            lb = strlen(b);
        } else {
            st = lms_error_set(err, LMS_EFORMAT, "model.merges[%zu]: neither a \"A B\" string "
                               "nor a pair of strings", k);
            break;
        }
        int32_t ia = vocab_find(tk, a, la), ib = vocab_find(tk, b, lb);
        if (la + lb + 1 > buf_cap) {
            buf_cap = 2 * (la + lb + 1);
            char *p = lms_realloc(buf, buf_cap);
            if (!p) {
                st = lms_error_set(err, LMS_ENOMEM, "loading merges: out of memory");
                break;
            }
            buf = p;
        }
        memcpy(buf, a, la);
        memcpy(buf + la, b, lb);
        int32_t ic = vocab_find(tk, buf, la + lb);
        if (ia < 0 || ib < 0 || ic < 0) {
            st = lms_error_set(err, LMS_EFORMAT, "model.merges[%zu]: '%.*s' + '%.*s': %s is "
                               "not in model.vocab", k, (int)(la > 40 ? 40 : la), a,
                               (int)(lb > 40 ? 40 : lb), b,
                               ia < 0 ? "the first part" : ib < 0 ? "the second part"
                                                                  : "the merged token");
            break;
        }
        merges_insert(tk, ia, ib, rank++, ic);
    }
    lms_free(buf);
    return st;
}

static enum lms_status parse_template(struct lms_tokenizer *tk, json_t *p, const char *where,
                                      struct lms_error *err)
{
    json_t *single = json_object_get(p, "single");
    json_t *specials = json_object_get(p, "special_tokens");
    if (!json_is_array(single))
        return lms_error_set(err, LMS_EFORMAT, "%s.single: missing or not an array", where);
    bool seen_a = false;
    for (size_t i = 0; i < json_array_size(single); i++) {
        json_t *item = json_array_get(single, i);
        json_t *sp = json_object_get(item, "SpecialToken");
        json_t *sq = json_object_get(item, "Sequence");
        if (sq) {
            if (seen_a)
                return lms_error_set(err, LMS_EUNSUPPORTED, "%s.single[%zu]: sequence A twice",
                                     where, i);
            seen_a = true;
            continue;
        }
        const char *name = json_string_value(json_object_get(sp, "id"));
        json_t *ids = json_object_get(json_object_get(specials, name ? name : ""), "ids");
        if (!name || !json_is_array(ids))
            return lms_error_set(err, LMS_EFORMAT, "%s.single[%zu]: special token '%s' not in "
                                 "special_tokens", where, i, name ? name : "(missing)");
        for (size_t j = 0; j < json_array_size(ids); j++) {
            json_int_t id = json_integer_value(json_array_get(ids, j));
            if (!json_is_integer(json_array_get(ids, j)) || id < 0 || id >= tk->n_tokens)
                return lms_error_set(err, LMS_EFORMAT, "%s.special_tokens['%s'].ids[%zu]: not "
                                     "a known id", where, name, j);
            int32_t **arr = seen_a ? &tk->tmpl_suffix : &tk->tmpl_prefix;
            size_t *n = seen_a ? &tk->n_suffix : &tk->n_prefix;
            int32_t *q = lms_realloc(*arr, (*n + 1) * sizeof(int32_t));
            if (!q)
                return lms_error_set(err, LMS_ENOMEM, "loading post_processor: out of memory");
            q[(*n)++] = (int32_t)id;
            *arr = q;
        }
    }
    return LMS_OK;
}

static enum lms_status parse_post(struct lms_tokenizer *tk, json_t *p, const char *where,
                                  struct lms_error *err)
{
    if (!p || json_is_null(p))
        return LMS_OK;
    const char *type = json_string_value(json_object_get(p, "type"));
    if (!type)
        return lms_error_set(err, LMS_EFORMAT, "%s.type: missing", where);
    if (strcmp(type, "ByteLevel") == 0)
        return LMS_OK;
    if (strcmp(type, "TemplateProcessing") == 0)
        return parse_template(tk, p, where, err);
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(p, "processors");
        if (!json_is_array(list))
            return lms_error_set(err, LMS_EFORMAT, "%s.processors: not an array", where);
        for (size_t i = 0; i < json_array_size(list); i++) {
            char w[96];
            snprintf(w, sizeof(w), "%s.processors[%zu]", where, i);
            enum lms_status st = parse_post(tk, json_array_get(list, i), w, err);
            if (st)
                return st;
        }
        return LMS_OK;
    }
    return lms_error_set(err, LMS_EUNSUPPORTED, "%s.type: unsupported post-processor '%s'",
                         where, type);
}

static int32_t config_token_id(struct lms_tokenizer *tk, json_t *cfg, const char *key)
{
    json_t *v = json_object_get(cfg, key);
    if (json_is_object(v))
        v = json_object_get(v, "content");
    const char *s = json_string_value(v);
    return s ? lms_tokenizer_token_to_id(tk, s, strlen(s)) : -1;
}

static enum lms_status load_json(const char *label, json_t *root, json_t *cfg,
                                 struct lms_tokenizer **out, struct lms_error *err)
{
    struct lms_tokenizer *tk = lms_calloc(1, sizeof(*tk));
    if (!tk)
        return lms_error_set(err, LMS_ENOMEM, "loading tokenizer: out of memory");
    enum lms_status st;
    build_byte_alphabet(tk);
    for (uint32_t c = 0; c < 128; c++) {
        uint8_t f = (uint8_t)(lms__uc_flags(c) & (C_L | C_N | C_WS));
        if (c == '\n' || c == '\r')
            f |= C_NL;
        if (c == ' ')
            f |= C_SP;
        tk->ascii_cls[c] = f;
    }
    tk->eos_id = tk->bos_id = tk->pad_id = -1;
    if (!json_is_object(root)) {
        st = lms_error_set(err, LMS_EFORMAT, "top level is not an object");
        goto fail;
    }
    json_t *norm = json_object_get(root, "normalizer");
    if (norm && !json_is_null(norm)) {
        const char *type = json_string_value(json_object_get(norm, "type"));
        if (!type || strcmp(type, "NFC") != 0) {
            st = lms_error_set(err, LMS_EUNSUPPORTED, "normalizer.type: unsupported normalizer "
                               "'%s' (only NFC or null)", type ? type : "(missing)");
            goto fail;
        }
        tk->nfc = true;
    }
    st = parse_pre_tokenizer(tk, json_object_get(root, "pre_tokenizer"), err);
    if (st)
        goto fail;
    st = parse_model(tk, json_object_get(root, "model"), json_object_get(root, "added_tokens"),
                     err);
    if (st)
        goto fail;
    st = parse_post(tk, json_object_get(root, "post_processor"), "post_processor", err);
    if (st)
        goto fail;
    json_t *dec = json_object_get(root, "decoder");
    if (dec && !json_is_null(dec)) {
        const char *type = json_string_value(json_object_get(dec, "type"));
        if (!type || strcmp(type, "ByteLevel") != 0) {
            st = lms_error_set(err, LMS_EUNSUPPORTED, "decoder.type: unsupported decoder '%s' "
                               "(only ByteLevel)", type ? type : "(missing)");
            goto fail;
        }
    }
    if (cfg) {
        tk->eos_id = config_token_id(tk, cfg, "eos_token");
        tk->bos_id = config_token_id(tk, cfg, "bos_token");
        tk->pad_id = config_token_id(tk, cfg, "pad_token");
    }
    *out = tk;
    return LMS_OK;
fail:
    lms_error_wrap(err, "tokenizer '%s': ", label);
    lms_tokenizer_free(tk);
    return st;
}

enum lms_status lms_tokenizer_load_buffer(const char *label, const char *json, size_t json_len,
                                          const char *config, size_t config_len,
                                          struct lms_tokenizer **out, struct lms_error *err)
{
    json_t *root = NULL, *cfg = NULL;
    enum lms_status st = lms_json_load_buffer(label, json, json_len, &root, err);
    if (st)
        return st;
    if (config) {
        st = lms_json_load_buffer("tokenizer_config.json", config, config_len, &cfg, err);
        if (st)
            goto out;
    }
    st = load_json(label, root, cfg, out, err);
out:
    json_decref(root);
    json_decref(cfg);
    return st;
}

static bool is_gguf_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    char magic[4];
    bool yes = f && fread(magic, 1, 4, f) == 4 && memcmp(magic, LMS_GGUF_MAGIC, 4) == 0;
    if (f)
        fclose(f);
    return yes;
}

/* The tokenizer of a GGUF file: the tokenizer.json it carries under lmsurgeon.file.* (written by
 * lmsurgeon), else the one rebuilt from its tokenizer.ggml.* keys. */
static enum lms_status load_parsed_gguf(const char *path, const struct lms_gguf *g,
                                        struct lms_tokenizer **out, struct lms_error *err)
{
    const struct lms_gguf_kv *tj = lms_gguf_find(g, "lmsurgeon.file.tokenizer.json");
    const struct lms_gguf_kv *tc = lms_gguf_find(g, "lmsurgeon.file.tokenizer_config.json");
    if (tj && tj->type == LMS_GGUF_STRING) {
        bool cfg = tc && tc->type == LMS_GGUF_STRING;
        return lms_tokenizer_load_buffer(path, tj->v.s.p, (size_t)tj->v.s.n,
                                         cfg ? tc->v.s.p : NULL, cfg ? (size_t)tc->v.s.n : 0,
                                         out, err);
    }
    json_t *root, *config;
    enum lms_status st = lms__gguf_tokenizer_rebuild(g, path, 0, &root, &config, err);
    if (st)
        return st;
    st = load_json(path, root, config, out, err);
    json_decref(root);
    json_decref(config);
    return st;
}

static enum lms_status load_gguf(const char *path, struct lms_tokenizer **out,
                                 struct lms_error *err)
{
    struct lms_storage *st;
    enum lms_status rc = lms_storage_map_file(path, &st, err);
    if (rc)
        return rc;
    struct lms_gguf g;
    rc = lms_gguf_parse(st->base, st->size, path, &g, err);
    if (!rc)
        rc = load_parsed_gguf(path, &g, out, err);
    lms_gguf_release(&g);
    lms_storage_release(st);
    return rc;
}

enum lms_status lms_tokenizer_load(const char *path, struct lms_tokenizer **out,
                                   struct lms_error *err)
{
    char tpath[4096], cpath[4096];
    struct stat sb;
    if (stat(path, &sb) != 0)
        return lms_error_set(err, LMS_EIO, "tokenizer '%s': no such file or directory", path);
    if (S_ISDIR(sb.st_mode)) {
        snprintf(tpath, sizeof(tpath), "%s/tokenizer.json", path);
        snprintf(cpath, sizeof(cpath), "%s/tokenizer_config.json", path);
    } else if (is_gguf_file(path)) {
        return load_gguf(path, out, err);
    } else {
        snprintf(tpath, sizeof(tpath), "%s", path);
        const char *slash = strrchr(path, '/');
        int dir_len = slash ? (int)(slash - path) : 0;
        snprintf(cpath, sizeof(cpath), "%.*s%stokenizer_config.json", dir_len, path,
                 slash ? "/" : "");
    }
    json_t *root = NULL, *cfg = NULL;
    enum lms_status st = lms_json_load_file(tpath, MAX_JSON_BYTES, &root, err);
    if (st)
        return st;
    if (stat(cpath, &sb) == 0) {
        st = lms_json_load_file(cpath, 64u << 20, &cfg, err);
        if (st)
            goto out;
    }
    st = load_json(tpath, root, cfg, out, err);
out:
    json_decref(root);
    json_decref(cfg);
    return st;
}

int64_t lms_tokenizer_vocab_size(const struct lms_tokenizer *tk)
{
    return tk->n_tokens;
}

int32_t lms_tokenizer_eos_id(const struct lms_tokenizer *tk)
{
    return tk->eos_id;
}

int32_t lms_tokenizer_bos_id(const struct lms_tokenizer *tk)
{
    return tk->bos_id;
}

int32_t lms_tokenizer_pad_id(const struct lms_tokenizer *tk)
{
    return tk->pad_id;
}

int32_t lms_tokenizer_token_to_id(const struct lms_tokenizer *tk, const char *token,
                                  size_t token_len)
{
    for (size_t i = 0; i < tk->n_added; i++)
        if (tk->added[i].len == token_len && memcmp(tk->added[i].content, token, token_len) == 0)
            return tk->added[i].id;
    return vocab_find(tk, token, token_len);
}

void lms_ids_release(struct lms_ids *ids)
{
    lms_free(ids->data);
    memset(ids, 0, sizeof(*ids));
}

/* ---- encoding context ------------------------------------------------------------------- */

#define CACHE_SLOTS (1u << 16)
#define CACHE_MAX_WORD 48
#define CACHE_ARENA (4u << 20)

struct cache_slot {
    uint64_t hash;      /* 0 = empty */
    uint32_t off;       /* into cache_arena: word bytes then ids (int32, aligned) */
    uint16_t word_len;  /* bytes */
    uint16_t n_ids;
};

struct heap_item {
    int32_t rank;
    int32_t pos;
    int32_t id;         /* merged id */
};

struct lms_tokenizer_ctx {
    const struct lms_tokenizer *tk;
    uint32_t *cps;          /* code points of the piece being pre-tokenized */
    uint32_t *offs;         /* byte offset of each code point (+1 entry) */
    uint8_t *cls;           /* class bits of each code point */
    size_t cp_cap, offs_cap, cls_cap;
    unsigned char *norm;    /* NFC output */
    size_t norm_len, norm_cap;
    unsigned char *pbuf;    /* prefix-space copies */
    size_t pbuf_cap;
    int32_t *sym;           /* BPE symbols */
    int32_t *prev, *next;
    size_t sym_cap, prev_cap, next_cap;
    struct heap_item *heap;
    size_t heap_cap;
    char *mapped;           /* ByteLevel-mapped word for ignore_merges lookups */
    size_t mapped_cap;
    struct cache_slot *cache;
    unsigned char *cache_arena;
    uint32_t cache_used;    /* bytes of cache_arena in use */
    uint32_t cache_count;   /* occupied slots */
};

enum lms_status lms_tokenizer_ctx_new(const struct lms_tokenizer *tk,
                                      struct lms_tokenizer_ctx **out, struct lms_error *err)
{
    struct lms_tokenizer_ctx *c = lms_calloc(1, sizeof(*c));
    if (!c)
        return lms_error_set(err, LMS_ENOMEM, "tokenizer context: out of memory");
    c->tk = tk;
    c->cache = lms_calloc(CACHE_SLOTS, sizeof(*c->cache));
    c->cache_arena = lms_malloc(CACHE_ARENA);
    if (!c->cache || !c->cache_arena) {
        lms_tokenizer_ctx_free(c);
        return lms_error_set(err, LMS_ENOMEM, "tokenizer context: out of memory");
    }
    *out = c;
    return LMS_OK;
}

void lms_tokenizer_ctx_free(struct lms_tokenizer_ctx *c)
{
    if (!c)
        return;
    lms_free(c->cps);
    lms_free(c->offs);
    lms_free(c->cls);
    lms_free(c->norm);
    lms_free(c->pbuf);
    lms_free(c->sym);
    lms_free(c->prev);
    lms_free(c->next);
    lms_free(c->heap);
    lms_free(c->mapped);
    lms_free(c->cache);
    lms_free(c->cache_arena);
    lms_free(c);
}

static bool grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return true;
    size_t n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    void *q = lms_realloc(*p, n * elem);
    if (!q)
        return false;
    *p = q;
    *cap = n;
    return true;
}

static bool ids_push(struct lms_ids *out, int32_t id)
{
    if (out->len == out->cap && !grow((void **)&out->data, &out->cap, out->len + 1, 4))
        return false;
    out->data[out->len++] = id;
    return true;
}

/* ---- BPE ------------------------------------------------------------------------------- */

static bool heap_less(const struct heap_item *a, const struct heap_item *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(struct heap_item *h, size_t *n, struct heap_item it)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&it, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = it;
}

static struct heap_item heap_pop(struct heap_item *h, size_t *n)
{
    struct heap_item top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const struct heap_item *best = &last;
        if (l < *n && heap_less(&h[l], best))
            m = l, best = &h[l];
        if (r < *n && heap_less(&h[r], best))
            m = r, best = &h[r];
        if (m == i)
            break;
        h[i] = h[m];
        i = m;
    }
    if (*n)
        h[i] = last;
    return top;
}

/* BPE of one pre-token's bytes; appends ids to out. */
static enum lms_status bpe_word(struct lms_tokenizer_ctx *c, const unsigned char *w, size_t n,
                                struct lms_ids *out, struct lms_error *err)
{
    const struct lms_tokenizer *tk = c->tk;
    if (n == 1 && tk->byte_id[w[0]] >= 0 && !tk->ignore_merges) {
        if (!ids_push(out, tk->byte_id[w[0]]))
            goto oom;
        return LMS_OK;
    }
    if (tk->ignore_merges) {
        if (!grow((void **)&c->mapped, &c->mapped_cap, 2 * n + 1, 1))
            goto oom;
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            m += lms__utf8_encode(tk->byte_char[w[i]], (unsigned char *)c->mapped + m);
        int32_t id = vocab_find(tk, c->mapped, m);
        if (id >= 0) {
            if (!ids_push(out, id))
                goto oom;
            return LMS_OK;
        }
    }
    if (!grow((void **)&c->sym, &c->sym_cap, n, sizeof(int32_t)))
        goto oom;
    if (!grow((void **)&c->prev, &c->prev_cap, n, sizeof(int32_t)) ||
        !grow((void **)&c->next, &c->next_cap, n, sizeof(int32_t)))
        goto oom;
    int32_t ns = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = tk->byte_id[w[i]];
        if (id >= 0)
            c->sym[ns++] = id; /* a byte missing from the vocab is dropped (unk_token null) */
    }
    for (int32_t i = 0; i < ns; i++) {
        c->prev[i] = i - 1;
        c->next[i] = i + 1 < ns ? i + 1 : -1;
    }
    if (!grow((void **)&c->heap, &c->heap_cap, (size_t)ns + 1, sizeof(struct heap_item)))
        goto oom;
    size_t hn = 0;
    for (int32_t i = 0; i + 1 < ns; i++) {
        const struct merge_slot *m = merge_find(tk, c->sym[i], c->sym[i + 1]);
        if (m)
            heap_push(c->heap, &hn, (struct heap_item){m->rank, i, m->id});
    }
    while (hn) {
        struct heap_item top = heap_pop(c->heap, &hn);
        int32_t p = top.pos;
        if (c->sym[p] < 0)
            continue; /* merged away */
        int32_t q = c->next[p];
        if (q < 0)
            continue;
        const struct merge_slot *m = merge_find(tk, c->sym[p], c->sym[q]);
        if (!m || m->id != top.id)
            continue; /* stale */
        c->sym[p] = top.id;
        c->sym[q] = -1;
        c->next[p] = c->next[q];
        if (c->next[q] >= 0)
            c->prev[c->next[q]] = p;
        /* at most two new pairs; the heap has room: each pop frees one slot */
        if (c->prev[p] >= 0) {
            m = merge_find(tk, c->sym[c->prev[p]], c->sym[p]);
            if (m)
                heap_push(c->heap, &hn, (struct heap_item){m->rank, c->prev[p], m->id});
        }
        if (c->next[p] >= 0) {
            m = merge_find(tk, c->sym[p], c->sym[c->next[p]]);
            if (m) {
                if (!grow((void **)&c->heap, &c->heap_cap, hn + 1, sizeof(struct heap_item)))
                    goto oom;
                heap_push(c->heap, &hn, (struct heap_item){m->rank, p, m->id});
            }
        }
    }
    for (int32_t i = ns ? 0 : -1; i >= 0; i = c->next[i])
        if (!ids_push(out, c->sym[i]))
            goto oom;
    return LMS_OK;
oom:
    return lms_error_set(err, LMS_ENOMEM, "encoding: out of memory");
}

static enum lms_status emit_word(struct lms_tokenizer_ctx *c, const unsigned char *w, size_t n,
                                 struct lms_ids *out, struct lms_error *err)
{
    if (n == 0)
        return LMS_OK;
    if (n > CACHE_MAX_WORD)
        return bpe_word(c, w, n, out, err);
    uint64_t h = hash_bytes(w, n) | 1;
    size_t i = h & (CACHE_SLOTS - 1);
    for (;;) {
        struct cache_slot *s = &c->cache[i];
        if (!s->hash)
            break;
        if (s->hash == h && s->word_len == n && memcmp(c->cache_arena + s->off, w, n) == 0) {
            const unsigned char *ids = c->cache_arena + s->off + ((n + 3) & ~(size_t)3);
            if (out->cap - out->len < s->n_ids &&
                !grow((void **)&out->data, &out->cap, out->len + s->n_ids, 4))
                return lms_error_set(err, LMS_ENOMEM, "encoding: out of memory");
            memcpy(out->data + out->len, ids, (size_t)s->n_ids * 4);
            out->len += s->n_ids;
            return LMS_OK;
        }
        i = (i + 1) & (CACHE_SLOTS - 1);
    }
    size_t before = out->len;
    enum lms_status st = bpe_word(c, w, n, out, err);
    if (st)
        return st;
    size_t n_ids = out->len - before;
    size_t need = ((n + 3) & ~(size_t)3) + 4 * n_ids;
    if (c->cache_count >= CACHE_SLOTS / 2 || c->cache_used + need > CACHE_ARENA) {
        memset(c->cache, 0, CACHE_SLOTS * sizeof(*c->cache));
        c->cache_count = 0;
        c->cache_used = 0;
        i = h & (CACHE_SLOTS - 1);
    }
    struct cache_slot *s = &c->cache[i];
    s->hash = h;
    s->off = c->cache_used;
    s->word_len = (uint16_t)n;
    s->n_ids = (uint16_t)n_ids;
    memcpy(c->cache_arena + s->off, w, n);
    memcpy(c->cache_arena + s->off + ((n + 3) & ~(size_t)3), out->data + before, 4 * n_ids);
    c->cache_used += (uint32_t)need;
    c->cache_count++;
    return LMS_OK;
}

/* ---- pre-tokenizer walkers ------------------------------------------------------ */


static uint32_t fold(uint32_t cp)
{
    if (cp >= 'A' && cp <= 'Z')
        return cp + 32;
    if (cp == 0x17F)
        return 's';
    return cp;
}

/* Length in code points of a contraction at i (apostrophe at i), 0 if none. */
static size_t contraction(const uint32_t *cp, size_t i, size_t n, bool icase)
{
    if (cp[i] != '\'' || i + 1 >= n)
        return 0;
    uint32_t a = icase ? fold(cp[i + 1]) : cp[i + 1];
    uint32_t b = i + 2 < n ? (icase ? fold(cp[i + 2]) : cp[i + 2]) : 0;
    if (a == 's' || a == 't')
        return 2;
    if ((a == 'r' || a == 'v') && b == 'e')
        return 3;
    if (a == 'm')
        return 2;
    if (a == 'l' && b == 'l')
        return 3;
    if (a == 'd')
        return 2;
    return 0;
}

/* End (code point index, exclusive) of the pre-token starting at i. */
static size_t next_token(enum pattern pat, const uint32_t *cp, const uint8_t *cl, size_t i,
                         size_t n)
{
    size_t j, k;
    uint8_t c = cl[i];
    if (pat != PAT_GPT2) {
        if ((k = contraction(cp, i, n, true)))
            return i + k;
        /* [^\r\n\p{L}\p{N}]?\p{L}+ */
        j = i;
        if (!(c & C_L) && !(c & (C_NL | C_N)) && i + 1 < n && (cl[i + 1] & C_L))
            j = i + 1;
        if (cl[j] & C_L) {
            while (j < n && (cl[j] & C_L))
                j++;
            return j;
        }
        if (c & C_N) {
            if (pat == PAT_QWEN)
                return i + 1;
            for (j = i; j < n && j < i + 3 && (cl[j] & C_N); j++)
                ;
            return j;
        }
        /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
        j = (c & C_SP) && i + 1 < n && IS_OTHER(cl[i + 1]) ? i + 1 : i;
        if (IS_OTHER(cl[j])) {
            while (j < n && IS_OTHER(cl[j]))
                j++;
            while (j < n && (cl[j] & C_NL))
                j++;
            return j;
        }
        /* whitespace run r = [i, e) */
        size_t e = i;
        while (e < n && (cl[e] & C_WS))
            e++;
        for (k = e; k > i; k--) /* \s*[\r\n]+ */
            if (cl[k - 1] & C_NL)
                return k;
    } else {
        if ((k = contraction(cp, i, n, false)))
            return i + k;
        static const uint8_t want[3] = {C_L, C_N, 0};
        for (int a = 0; a < 3; a++) {
            j = (c & C_SP) && i + 1 < n ? i + 1 : i;
            bool ok_j = a < 2 ? (cl[j] & want[a]) != 0 : IS_OTHER(cl[j]);
            if (!ok_j && j != i) {
                j = i;
                ok_j = a < 2 ? (cl[j] & want[a]) != 0 : IS_OTHER(cl[j]);
            }
            if (ok_j) {
                if (a < 2)
                    while (j < n && (cl[j] & want[a]))
                        j++;
                else
                    while (j < n && IS_OTHER(cl[j]))
                        j++;
                return j;
            }
        }
    }
    size_t e = i;
    while (e < n && (cl[e] & C_WS))
        e++;
    if (e == n)
        return e; /* \s+(?!\S) up to the end */
    if (e - i >= 2)
        return e - 1;
    return e; /* \s+ */
}

static enum lms_status pretokenize(struct lms_tokenizer_ctx *c, int step,
                                   const unsigned char *s, size_t n, struct lms_ids *out,
                                   struct lms_error *err);

static enum lms_status split_step(struct lms_tokenizer_ctx *c, int step, const unsigned char *s,
                                  size_t n, struct lms_ids *out, struct lms_error *err)
{
    const struct pre_step *ps = &c->tk->steps[step];
    /* decode the piece; nested steps reuse the arrays after this level is done with them,
     * so copy the token boundaries out first */
    if (!grow((void **)&c->cps, &c->cp_cap, n + 1, sizeof(uint32_t)))
        goto oom;
    if (!grow((void **)&c->offs, &c->offs_cap, n + 1, sizeof(uint32_t)) ||
        !grow((void **)&c->cls, &c->cls_cap, n + 1, 1))
        goto oom;
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k;
        uint8_t f;
        if (s[i] < 0x80) {
            cp = s[i];
            k = 1;
            f = c->tk->ascii_cls[cp];
        } else {
            k = lms__utf8_decode(s + i, n - i, &cp);
            if (!k)
                return lms_error_set(err, LMS_EFORMAT, "invalid UTF-8 inside a piece");
            f = (uint8_t)(lms__uc_flags(cp) & (C_L | C_N | C_WS));
        }
        c->cps[m] = cp;
        c->cls[m] = f;
        c->offs[m] = (uint32_t)i;
        m++;
        i += k;
    }
    c->offs[m] = (uint32_t)n;
    if (step + 1 == c->tk->n_steps) {
        /* last step: emit words directly (arrays stay valid, BPE does not touch them) */
        for (size_t i = 0; i < m;) {
            size_t e = next_token(ps->pat, c->cps, c->cls, i, m);
            enum lms_status st = emit_word(c, s + c->offs[i], c->offs[e] - c->offs[i], out, err);
            if (st)
                return st;
            i = e;
        }
        return LMS_OK;
    }
    /* inner step: collect boundaries first (byte offsets), then recurse */
    uint32_t *cuts = lms_malloc((m + 1) * sizeof(uint32_t));
    if (!cuts)
        goto oom;
    size_t nc = 0;
    for (size_t i = 0; i < m;) {
        cuts[nc++] = c->offs[i];
        i = next_token(ps->pat, c->cps, c->cls, i, m);
    }
    cuts[nc] = (uint32_t)n;
    enum lms_status st = LMS_OK;
    for (size_t k = 0; k < nc && !st; k++)
        st = pretokenize(c, step + 1, s + cuts[k], cuts[k + 1] - cuts[k], out, err);
    lms_free(cuts);
    return st;
oom:
    return lms_error_set(err, LMS_ENOMEM, "encoding: out of memory");
}

static enum lms_status pretokenize(struct lms_tokenizer_ctx *c, int step,
                                   const unsigned char *s, size_t n, struct lms_ids *out,
                                   struct lms_error *err)
{
    if (n == 0)
        return LMS_OK;
    if (step == c->tk->n_steps)
        return emit_word(c, s, n, out, err);
    const struct pre_step *ps = &c->tk->steps[step];
    if (ps->prefix_space && s[0] != ' ') {
        /* ByteLevel add_prefix_space: prepend a space to this piece, then split it */
        unsigned char *copy = lms_malloc(n + 1);
        if (!copy)
            return lms_error_set(err, LMS_ENOMEM, "encoding: out of memory");
        copy[0] = ' ';
        memcpy(copy + 1, s, n);
        enum lms_status st = ps->split ? split_step(c, step, copy, n + 1, out, err)
                                       : pretokenize(c, step + 1, copy, n + 1, out, err);
        lms_free(copy);
        return st;
    }
    if (!ps->split)
        return pretokenize(c, step + 1, s, n, out, err);
    return split_step(c, step, s, n, out, err);
}

/* ---- added tokens and the whole pipeline -------------------------------------------------- */

static bool is_ws_at(const unsigned char *s, size_t n, size_t i, size_t *len)
{
    uint32_t cp;
    size_t k = lms__utf8_decode(s + i, n - i, &cp);
    *len = k;
    return k && (lms__uc_flags(cp) & LMS_UC_WS);
}

/* Leftmost-longest match of an added token of class norm at or after *pos in s[0..n). On
 * success sets [*mb, *me) (after lstrip/rstrip) and *id. */
static bool find_added(const struct lms_tokenizer *tk, bool norm, const unsigned char *s,
                       size_t n, size_t from, size_t floor, size_t *mb, size_t *me, int32_t *id)
{
    for (size_t i = from; i < n; i++) {
        if (!norm && !tk->added_first[s[i]])
            continue;
        const struct added_token *best = NULL;
        for (size_t k = 0; k < tk->n_added; k++) {
            const struct added_token *t = &tk->added[k];
            if (t->normalized != norm || t->len > n - i || (best && t->len <= best->len))
                continue;
            if (memcmp(s + i, t->content, t->len) == 0)
                best = t;
        }
        if (!best)
            continue;
        size_t b = i, e = i + best->len;
        if (best->single_word) {
            /* word character approximated by L, N and '_' (marks are not tracked) */
            bool ok = true;
            if (b > 0) {
                size_t p = b - 1;
                while (p > 0 && (s[p] & 0xC0) == 0x80)
                    p--;
                uint32_t cp;
                if (lms__utf8_decode(s + p, n - p, &cp) &&
                    ((lms__uc_flags(cp) & (LMS_UC_L | LMS_UC_N)) || cp == '_'))
                    ok = false;
            }
            uint32_t cp;
            if (e < n && lms__utf8_decode(s + e, n - e, &cp) &&
                ((lms__uc_flags(cp) & (LMS_UC_L | LMS_UC_N)) || cp == '_'))
                ok = false;
            if (!ok) {
                i = e - 1;
                continue;
            }
        }
        if (best->lstrip) {
            while (b > floor) {
                size_t p = b - 1, k;
                while (p > floor && (s[p] & 0xC0) == 0x80)
                    p--;
                if (!is_ws_at(s, n, p, &k) || p + k != b)
                    break;
                b = p;
            }
        }
        if (best->rstrip) {
            size_t k;
            while (e < n && is_ws_at(s, n, e, &k))
                e += k;
        }
        *mb = b;
        *me = e;
        *id = best->id;
        return true;
    }
    return false;
}

static enum lms_status encode_normalized(struct lms_tokenizer_ctx *c, const unsigned char *s,
                                         size_t n, struct lms_ids *out, struct lms_error *err)
{
    const struct lms_tokenizer *tk = c->tk;
    if (!tk->any_added_norm)
        return pretokenize(c, 0, s, n, out, err);
    size_t pos = 0, mb, me;
    int32_t id;
    while (pos < n && find_added(tk, true, s, n, pos, pos, &mb, &me, &id)) {
        enum lms_status st = pretokenize(c, 0, s + pos, mb - pos, out, err);
        if (st)
            return st;
        if (!ids_push(out, id))
            return lms_error_set(err, LMS_ENOMEM, "encoding: out of memory");
        pos = me;
    }
    return pretokenize(c, 0, s + pos, n - pos, out, err);
}

static enum lms_status encode_piece(struct lms_tokenizer_ctx *c, const unsigned char *s,
                                    size_t n, struct lms_ids *out, struct lms_error *err)
{
    if (n == 0)
        return LMS_OK;
    if (!c->tk->nfc || lms__nfc_quick(s, n))
        return encode_normalized(c, s, n, out, err);
    c->norm_len = 0;
    enum lms_status st = lms__nfc(s, n, &c->norm, &c->norm_len, &c->norm_cap, err);
    if (st)
        return st;
    /* encode_normalized may reuse c->norm only through a nested NFC, which cannot happen */
    unsigned char *copy = c->norm;
    size_t len = c->norm_len;
    c->norm = NULL;
    c->norm_cap = 0;
    st = encode_normalized(c, copy, len, out, err);
    if (!c->norm) {
        c->norm = copy;
        c->norm_cap = len;
    } else {
        lms_free(copy);
    }
    return st;
}

enum lms_status lms_tokenizer_encode(struct lms_tokenizer_ctx *c, const char *text,
                                     size_t text_len, unsigned flags, struct lms_ids *out,
                                     struct lms_error *err)
{
    const struct lms_tokenizer *tk = c->tk;
    const unsigned char *s = (const unsigned char *)text;
    size_t bad = lms__utf8_check(s, text_len);
    if (bad != text_len)
        return lms_error_set(err, LMS_EFORMAT, "invalid UTF-8 at byte %zu", bad);
    enum lms_status st;
    if (flags & LMS_TOK_ADD_SPECIAL)
        for (size_t i = 0; i < tk->n_prefix; i++)
            if (!ids_push(out, tk->tmpl_prefix[i]))
                goto oom;
    size_t pos = 0;
    if (tk->any_added_raw) {
        size_t mb, me;
        int32_t id;
        while (pos < text_len && find_added(tk, false, s, text_len, pos, pos, &mb, &me, &id)) {
            st = encode_piece(c, s + pos, mb - pos, out, err);
            if (st)
                return st;
            if (!ids_push(out, id))
                goto oom;
            pos = me;
        }
    }
    st = encode_piece(c, s + pos, text_len - pos, out, err);
    if (st)
        return st;
    if (flags & LMS_TOK_ADD_SPECIAL)
        for (size_t i = 0; i < tk->n_suffix; i++)
            if (!ids_push(out, tk->tmpl_suffix[i]))
                goto oom;
    return LMS_OK;
oom:
    return lms_error_set(err, LMS_ENOMEM, "encoding: out of memory");
}

/* ---- decoding ----------------------------------------------------------------------------- */

/* Appends the UTF-8 lossy decoding of b[0..n) (Rust String::from_utf8_lossy: each maximal
 * invalid subpart becomes U+FFFD). dst has room for 3 * n bytes. Returns bytes written. */
static size_t utf8_lossy(const unsigned char *b, size_t n, unsigned char *dst)
{
    size_t i = 0, o = 0;
    while (i < n) {
        unsigned c = b[i];
        if (c < 0x80) {
            dst[o++] = (unsigned char)c;
            i++;
            continue;
        }
        size_t need;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF)
            need = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 3;
            if (c == 0xE0)
                lo = 0xA0;
            if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 4;
            if (c == 0xF0)
                lo = 0x90;
            if (c == 0xF4)
                hi = 0x8F;
        } else {
            need = 0;
        }
        size_t k = 1;
        if (need) {
            while (k < need && i + k < n) {
                unsigned d = b[i + k];
                if (k == 1 ? (d < lo || d > hi) : (d < 0x80 || d > 0xBF))
                    break;
                k++;
            }
        }
        if (need && k == need) {
            memcpy(dst + o, b + i, k);
            o += k;
        } else {
            dst[o++] = 0xEF;
            dst[o++] = 0xBF;
            dst[o++] = 0xBD;
        }
        i += k;
    }
    return o;
}

enum lms_status lms_tokenizer_decode(const struct lms_tokenizer *tk, const int32_t *ids,
                                     size_t n_ids, bool skip_special, char **out,
                                     size_t *out_len, struct lms_error *err)
{
    size_t cap = 64, len = 0;
    unsigned char *bytes = lms_malloc(cap);
    if (!bytes)
        goto oom;
    for (size_t k = 0; k < n_ids; k++) {
        int32_t id = ids[k];
        if (id < 0 || id >= tk->n_tokens || !tk->tokens[id].s) {
            lms_free(bytes);
            return lms_error_set(err, LMS_EFORMAT, "decoding: unknown id %d at position %zu", id,
                                 k);
        }
        const struct token_str *t = &tk->tokens[id];
        if (t->added >= 0 && skip_special && tk->added[t->added].special)
            continue;
        if (!grow((void **)&bytes, &cap, len + t->len, 1))
            goto oom;
        /* map back through the ByteLevel alphabet when every char belongs to it */
        const unsigned char *s = (const unsigned char *)t->s;
        size_t start = len;
        bool all = true;
        for (size_t i = 0; i < t->len;) {
            uint32_t cp;
            size_t q = lms__utf8_decode(s + i, t->len - i, &cp);
            if (!q || cp >= 0x144 || tk->byte_of_char[cp] < 0) {
                all = false;
                break;
            }
            bytes[len++] = (unsigned char)tk->byte_of_char[cp];
            i += q;
        }
        if (!all) {
            len = start;
            memcpy(bytes + len, s, t->len);
            len += t->len;
        }
    }
    unsigned char *text = lms_malloc(3 * len + 1);
    if (!text)
        goto oom;
    size_t n = utf8_lossy(bytes, len, text);
    text[n] = '\0';
    lms_free(bytes);
    *out = (char *)text;
    *out_len = n;
    return LMS_OK;
oom:
    lms_free(bytes);
    return lms_error_set(err, LMS_ENOMEM, "decoding: out of memory");
}
