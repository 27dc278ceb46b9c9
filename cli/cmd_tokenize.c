/* lmsurgeon tokenize: text in, token ids out (and back with --decode), for users and scripts.
 *
 * Modes: --text TEXT, or the whole of stdin as one text, or --jsonl (one JSON string or object
 * per stdin line, one output line per input line). Ids are printed space-separated, or as a
 * JSON array with --json. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "lms/alloc.h"
#include "lms/dataset.h"
#include "lms/json.h"
#include "lms/tokenizer.h"

static const char usage_text[] =
    "usage: lmsurgeon tokenize --tokenizer DIR_OR_JSON [--text TEXT] [options]\n"
    "\n"
    "Encodes text with a Hugging Face tokenizer.json (byte-level BPE: Qwen2/3, Llama-3,\n"
    "GPT-2) exactly as the `tokenizers` library does, and prints the ids.\n"
    "\n"
    "  --tokenizer PATH       tokenizer.json or a directory holding it (required); a GGUF\n"
    "                         file: its tokenizer, rebuilt from tokenizer.ggml.* if need be\n"
    "  --text TEXT            text to encode (default: all of stdin)\n"
    "  --jsonl                stdin holds one JSON string or object per line; prints one line\n"
    "                         of ids per input line\n"
    "  --json-key KEY         field of each --jsonl object to encode (default: text)\n"
    "  --no-special-tokens    do not add the post-processor's tokens (Llama-3 BOS)\n"
    "  --decode               input is ids (space or comma separated); prints the text\n"
    "                         (a word that is no id, or an unknown id: exit 3, bad input)\n"
    "  --dataset PREFIX       read an indexed dataset (PREFIX.bin/.idx; validated) instead:\n"
    "                         prints the ids of each document, one line each (the text with\n"
    "                         --decode; a summary object with --json); --tokenizer optional\n"
    "  --doc N                with --dataset: only document N\n"
    "  --skip-special-tokens  with --decode: drop special added tokens\n"
    "  --json                 print a JSON result object / JSON arrays\n"
    "  --quiet                no messages except errors\n"
    "  --help                 this text\n";

static const char *cmd = "tokenize";

static int read_all(FILE *f, char **out, size_t *out_len)
{
    size_t cap = 1 << 16, len = 0;
    char *buf = lms_malloc(cap);
    if (!buf)
        return -1;
    for (;;) {
        if (len == cap) {
            char *p = lms_realloc(buf, cap * 2);
            if (!p) {
                lms_free(buf);
                return -1;
            }
            buf = p;
            cap *= 2;
        }
        size_t k = fread(buf + len, 1, cap - len, f);
        len += k;
        if (k == 0)
            break;
    }
    *out = buf;
    *out_len = len;
    return 0;
}

static void print_ids(const struct lms_ids *ids, bool json)
{
    if (json)
        fputc('[', stdout);
    for (size_t i = 0; i < ids->len; i++)
        printf(i ? (json ? ",%d" : " %d") : "%d", ids->data[i]);
    if (json)
        fputc(']', stdout);
}

/* Parses the decimal id at [p, end) without reading past end: the input is raw bytes from
 * stdin with no terminator, so strtol (which scans to a NUL) must not be used on it. Returns
 * the byte after the id, or NULL when [p, end) does not start with an id in 0..INT32_MAX. */
static const char *parse_id(const char *p, const char *end, int32_t *out)
{
    int64_t v = 0;
    const char *q = p;
    while (q < end && *q >= '0' && *q <= '9') {
        v = v * 10 + (*q - '0');
        if (v > INT32_MAX)
            return NULL;
        q++;
    }
    if (q == p)
        return NULL;
    *out = (int32_t)v;
    return q;
}

static bool is_id_separator(char c)
{
    return c == ' ' || c == ',' || c == '\n' || c == '\t' || c == '[' || c == ']' || c == '\r';
}

static int decode_mode(struct lms_tokenizer *tk, const char *text, size_t len, bool skip,
                       const struct cli_common *co)
{
    struct lms_error err = {0};
    size_t cap = 64, n = 0;
    int32_t *ids = lms_malloc(cap * sizeof(int32_t));
    const char *p = text, *end = text + len;
    while (ids && p < end) {
        while (p < end && is_id_separator(*p))
            p++;
        if (p >= end)
            break;
        int32_t v;
        const char *q = parse_id(p, end, &v);
        if (!q || (q < end && !is_id_separator(*q))) {
            const char *tok_end = p;
            while (tok_end < end && tok_end - p < 20 && !is_id_separator(*tok_end))
                tok_end++;
            lms_free(ids);
            lms_error_set(&err, LMS_EFORMAT, "decoding: '%.*s' is not a token id",
                          (int)(tok_end - p), p);
            return cli_fail(cmd, co, &err);
        }
        if (n == cap) {
            int32_t *r = lms_realloc(ids, 2 * cap * sizeof(int32_t));
            if (!r) {
                lms_free(ids);
                ids = NULL;
                break;
            }
            ids = r;
            cap *= 2;
        }
        ids[n++] = v;
        p = q;
    }
    if (!ids) {
        lms_error_set(&err, LMS_ENOMEM, "out of memory");
        return cli_fail(cmd, co, &err);
    }
    char *out;
    size_t out_len;
    enum lms_status st = lms_tokenizer_decode(tk, ids, n, skip, &out, &out_len, &err);
    lms_free(ids);
    if (st)
        return cli_fail(cmd, co, &err);
    if (co->json) {
        json_t *o = json_pack("{s:b,s:s%}", "ok", 1, "text", out, out_len);
        cli_print_json(o);
    } else {
        fwrite(out, 1, out_len, stdout);
    }
    lms_free(out);
    return CLI_EXIT_OK;
}

static int dataset_mode(const char *prefix, struct lms_tokenizer *tk, long doc, bool decode,
                        bool skip, const struct cli_common *co)
{
    struct lms_error err = {0};
    struct lms_dataset *ds;
    if (lms_dataset_open(prefix, &ds, &err))
        return cli_fail(cmd, co, &err);
    int64_t n_docs = lms_dataset_n_docs(ds);
    int rc = CLI_EXIT_OK;
    if (doc >= n_docs) {
        lms_error_set(&err, LMS_EINVAL, "--doc %ld: dataset has %lld documents", doc,
                      (long long)n_docs);
        rc = cli_fail(cmd, co, &err);
        goto out;
    }
    if (co->json) {
        printf("{\"ok\":true,\"documents\":%lld,\"sequences\":%lld,\"tokens\":%lld,"
               "\"dtype_code\":%d}\n", (long long)n_docs,
               (long long)lms_dataset_n_sequences(ds), (long long)lms_dataset_n_tokens(ds),
               (int)lms_dataset_dtype(ds));
        goto out;
    }
    for (int64_t d = doc >= 0 ? doc : 0; d < (doc >= 0 ? doc + 1 : n_docs); d++) {
        struct lms_ids ids = {0};
        if (lms_dataset_read_doc(ds, d, &ids.data, &ids.len, &err)) {
            rc = cli_fail(cmd, co, &err);
            goto out;
        }
        if (decode) {
            char *text;
            size_t len;
            if (lms_tokenizer_decode(tk, ids.data, ids.len, skip, &text, &len, &err)) {
                lms_free(ids.data);
                rc = cli_fail(cmd, co, &err);
                goto out;
            }
            fwrite(text, 1, len, stdout);
            fputc('\n', stdout);
            lms_free(text);
        } else {
            print_ids(&ids, false);
            fputc('\n', stdout);
        }
        lms_free(ids.data);
    }
out:
    lms_dataset_free(ds);
    return rc;
}

static int jsonl_mode(struct lms_tokenizer_ctx *ctx, const char *key, unsigned flags,
                      const struct cli_common *co)
{
    struct lms_error err = {0};
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t n;
    long lineno = 0;
    struct lms_ids ids = {0};
    int rc = CLI_EXIT_OK;
    while ((n = getline(&line, &line_cap, stdin)) >= 0) {
        lineno++;
        json_error_t je;
        json_t *v = json_loadb(line, (size_t)n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
        json_t *s = json_is_object(v) ? json_object_get(v, key) : v;
        if (!json_is_string(s)) {
            json_decref(v);
            lms_error_set(&err, LMS_EFORMAT, "stdin line %ld: not a JSON string or an object "
                          "with a string '%s'", lineno, key);
            rc = cli_fail(cmd, co, &err);
            break;
        }
        ids.len = 0;
        enum lms_status st = lms_tokenizer_encode(ctx, json_string_value(s), json_string_length(s),
                                                  flags, &ids, &err);
        json_decref(v);
        if (st) {
            lms_error_wrap(&err, "stdin line %ld: ", lineno);
            rc = cli_fail(cmd, co, &err);
            break;
        }
        print_ids(&ids, co->json);
        fputc('\n', stdout);
    }
    free(line);
    lms_ids_release(&ids);
    return rc;
}

struct tokenize_args {
    struct cli_args base;
    const char *tok_path, *text, *key, *dataset;
    long doc; /* -1: every document */
    bool jsonl, decode, skip, no_special;
};

enum { O_DOC };
static const struct cli_opt opts[] = {
    CLI_STRING("tokenizer", struct tokenize_args, tok_path),
    CLI_STRING("text", struct tokenize_args, text),
    CLI_FLAG("jsonl", struct tokenize_args, jsonl),
    CLI_STRING("json-key", struct tokenize_args, key),
    CLI_FLAG("no-special-tokens", struct tokenize_args, no_special),
    CLI_FLAG("decode", struct tokenize_args, decode),
    CLI_STRING("dataset", struct tokenize_args, dataset),
    CLI_CALL("doc", O_DOC),
    CLI_FLAG("skip-special-tokens", struct tokenize_args, skip),
    CLI_END,
};

static int on_option(void *args, int id, const char *value, const char *word)
{
    struct tokenize_args *a = args;
    char *end;
    a->doc = strtol(value, &end, 10);
    if (*end || a->doc < 0)
        return cli_usage_error(cmd, "--doc: '%s' is not a document number", value);
    return 0;
}

static int check(void *args)
{
    const struct tokenize_args *a = args;
    if (!a->tok_path && !(a->dataset && !a->decode))
        return cli_usage_error(cmd, "--tokenizer is required");
    if (a->jsonl && (a->text || a->decode))
        return cli_usage_error(cmd, "--jsonl cannot be combined with --text or --decode");
    return CLI_PARSED;
}

static int run(void *args);

static const struct cli_spec spec = {
    .name = "tokenize", .help = {usage_text}, .shorts = "h", .positional = CLI_POS_NONE,
    .opts = opts, .on_option = on_option, .check = check,
    .run = run,
};

/* Encodes the text (--text, or all of stdin) and prints its ids. */
static int encode_mode(struct lms_tokenizer_ctx *ctx, const char *src, size_t len,
                       unsigned flags, const struct cli_common *co)
{
    struct lms_error err = {0};
    struct lms_ids ids = {0};
    if (lms_tokenizer_encode(ctx, src, len, flags, &ids, &err)) {
        lms_ids_release(&ids);
        return cli_fail(cmd, co, &err);
    }
    if (co->json) {
        printf("{\"ok\":true,\"n_tokens\":%zu,\"ids\":", ids.len);
        print_ids(&ids, true);
        printf("}\n");
    } else {
        print_ids(&ids, false);
        fputc('\n', stdout);
    }
    lms_ids_release(&ids);
    return CLI_EXIT_OK;
}

static int run(void *args)
{
    const struct tokenize_args *a = args;
    const struct cli_common *co = &a->base.co;
    unsigned flags = a->no_special ? 0 : LMS_TOK_ADD_SPECIAL;
    struct lms_error err = {0};
    struct lms_tokenizer *tk = NULL;
    struct lms_tokenizer_ctx *ctx = NULL;
    char *input = NULL;
    size_t input_len = 0;
    int rc;
    if (a->tok_path &&
        (lms_tokenizer_load(a->tok_path, &tk, &err) || lms_tokenizer_ctx_new(tk, &ctx, &err)))
        rc = cli_fail(cmd, co, &err);
    else if (a->dataset)
        rc = dataset_mode(a->dataset, tk, a->doc, a->decode, a->skip, co);
    else if (a->jsonl)
        rc = jsonl_mode(ctx, a->key, flags, co);
    else if (!a->text && read_all(stdin, &input, &input_len) != 0) {
        lms_error_set(&err, LMS_ENOMEM, "reading stdin: out of memory");
        rc = cli_fail(cmd, co, &err);
    } else {
        const char *src = a->text ? a->text : input;
        size_t len = a->text ? strlen(a->text) : input_len;
        rc = a->decode ? decode_mode(tk, src, len, a->skip, co)
                       : encode_mode(ctx, src, len, flags, co);
    }
    lms_free(input);
    lms_tokenizer_ctx_free(ctx);
    lms_tokenizer_free(tk);
    return rc;
}

int cmd_tokenize(int argc, char **argv)
{
    struct tokenize_args a = {.key = "text", .doc = -1};
    return cli_main(&spec, argc, argv, &a);
}
