/* lmsurgeon preprocess: JSONL or text -> Megatron indexed dataset (PREFIX_KEY_document.bin/.idx),
 * compatible with Megatron's tools/preprocess_data.py.
 *
 * The input is read in chunks of lines; each chunk is tokenized in parallel over documents
 * (OpenMP, one tokenizer context per thread) and then written in input order, so the output
 * does not depend on the number of workers. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "cli/cli.h"
#include "lms/alloc.h"
#include "lms/dataset.h"
#include "lms/json.h"
#include "lms/paths.h"
#include "lms/tokenizer.h"

static const char usage_text[] =
    "usage: lmsurgeon preprocess --input FILE.jsonl|FILE.txt --tokenizer DIR_OR_JSON\n"
    "                            --output-prefix PREFIX [options]\n"
    "\n"
    "Tokenizes documents into a Megatron/NeMo indexed dataset, written as\n"
    "PREFIX_KEY_document.bin and .idx (KEY = --json-key), as Megatron's preprocess_data.py\n"
    "names them. Ids are identical to Hugging Face `tokenizers`; the token dtype is uint16 for\n"
    "vocabularies under 65500 entries, else int32.\n"
    "\n"
    "  --input FILE           JSON Lines (one object per line; the key holds a string or an\n"
    "                         array of strings = sentences) or, for *.txt, one document per line\n"
    "  --json-key KEY         field holding the text (default: text)\n"
    "  --tokenizer PATH       tokenizer.json or a directory holding it and tokenizer_config.json\n"
    "                         (or a GGUF file: its tokenizer, rebuilt from tokenizer.ggml.*)\n"
    "  --output-prefix PREFIX output path prefix\n"
    "  --append-eod           end every non-empty document with the eos_token id\n"
    "  --no-special-tokens    do not add the post-processor's tokens (Llama-3 BOS), as NeMo's\n"
    "                         script does (Megatron's adds them)\n"
    "  --skip-empty-docs      do not record documents without tokens (NeMo behaviour)\n"
    "  --skip-bad-lines       report malformed lines and continue (default: stop)\n"
    "  --workers N            tokenizer threads (default: all cores)\n"
    "  --force                replace existing output files\n"
    "  --json                 print a JSON result object on stdout\n"
    "  --quiet                no progress or summary\n"
    "  --help                 this text\n";

static const char *cmd = "preprocess";

#define CHUNK_LINES 4096

struct doc_result {
    struct lms_ids ids;   /* all ids of the document */
    size_t *seq_len;      /* ids per kept sentence; owned */
    size_t n_seq;
    bool bad;             /* line is malformed */
    char msg[256];        /* why, when bad */
};

struct job {
    struct lms_tokenizer_ctx **ctx; /* one per thread */
    const char *key;
    bool txt;
    unsigned flags;
    int32_t eod;          /* -1 = no EOD */
};

static void set_bad(struct doc_result *r, const char *fmt, const char *detail)
{
    r->bad = true;
    snprintf(r->msg, sizeof(r->msg), fmt, detail);
}

static void process_line(const struct job *jb, struct lms_tokenizer_ctx *ctx, char *line,
                         size_t len, struct doc_result *r)
{
    struct lms_error err = {0};
    json_t *root = NULL;
    const char *single = NULL;
    size_t single_len = 0, n_sent = 1;
    json_t *arr = NULL;
    if (jb->txt) {
        single = line;
        single_len = len;
    } else {
        json_error_t je;
        root = json_loadb(line, len, JSON_ALLOW_NUL, &je);
        if (!root) {
            set_bad(r, "%s", je.text);
            return;
        }
        json_t *v = json_object_get(root, jb->key);
        if (json_is_string(v)) {
            single = json_string_value(v);
            single_len = json_string_length(v);
        } else if (json_is_array(v)) {
            arr = v;
            n_sent = json_array_size(v);
        } else {
            set_bad(r, "no string or array of strings under key '%s'", jb->key);
            json_decref(root);
            return;
        }
    }
    r->seq_len = lms_calloc(n_sent ? n_sent : 1, sizeof(size_t));
    if (!r->seq_len) {
        set_bad(r, "%s", "out of memory");
        json_decref(root);
        return;
    }
    for (size_t i = 0; i < n_sent; i++) {
        const char *s = single;
        size_t n = single_len;
        if (arr) {
            json_t *e = json_array_get(arr, i);
            if (!json_is_string(e)) {
                set_bad(r, "element of '%s' is not a string", jb->key);
                break;
            }
            s = json_string_value(e);
            n = json_string_length(e);
        }
        size_t before = r->ids.len;
        if (lms_tokenizer_encode(ctx, s, n, jb->flags, &r->ids, &err)) {
            set_bad(r, "%s", err.msg);
            break;
        }
        if (r->ids.len > before) /* sentences without ids are dropped */
            r->seq_len[r->n_seq++] = r->ids.len - before;
    }
    json_decref(root);
    if (!r->bad && jb->eod >= 0 && r->n_seq) { /* step 2: EOD joins the last sentence */
        if (r->ids.len == r->ids.cap) {
            int32_t *p = lms_realloc(r->ids.data, (r->ids.cap + 1) * sizeof(int32_t));
            if (!p) {
                set_bad(r, "%s", "out of memory");
                return;
            }
            r->ids.data = p;
            r->ids.cap++;
        }
        r->ids.data[r->ids.len++] = jb->eod;
        r->seq_len[r->n_seq - 1]++;
    }
}

struct preprocess_args {
    struct cli_args base; /* --force, --json, --quiet */
    const char *input, *tok_path, *prefix, *key;
    bool eod, skip_empty, skip_bad, no_special;
    int64_t workers;
};

#define REQUIRED(n, f)                                                                         \
    CLI_REQUIRED(n, struct preprocess_args, f,                                                 \
                 "--input, --tokenizer and --output-prefix are required")
static const struct cli_opt opts[] = {
    REQUIRED("input", input),
    CLI_STRING("json-key", struct preprocess_args, key),
    CLI_STRING("json-keys", struct preprocess_args, key),
    REQUIRED("tokenizer", tok_path),
    REQUIRED("output-prefix", prefix),
    CLI_FLAG("append-eod", struct preprocess_args, eod),
    CLI_FLAG("no-special-tokens", struct preprocess_args, no_special),
    CLI_FLAG("skip-empty-docs", struct preprocess_args, skip_empty),
    CLI_FLAG("skip-bad-lines", struct preprocess_args, skip_bad),
    CLI_COUNT("workers", struct preprocess_args, workers, 1, 1024,
              "--workers: '%s' is not a count in 1..1024"),
    CLI_END,
};
static int run(void *args);

static const struct cli_spec spec = {
    .name = "preprocess", .help = {usage_text}, .shorts = "h", .groups = CLI_FORCE,
    .positional = CLI_POS_NONE, .opts = opts,
    .run = run,
};

/* One input line of a chunk and its result; a chunk is an array of CHUNK_LINES. */
struct line {
    char *text; /* getline's buffer, reused from chunk to chunk */
    size_t len, cap;
    long no;    /* 1-based line number in the input */
    struct doc_result res;
};

static void chunk_free(struct line *ck)
{
    for (size_t i = 0; ck && i < CHUNK_LINES; i++) {
        free(ck[i].text);
        lms_ids_release(&ck[i].res.ids);
        lms_free(ck[i].res.seq_len);
    }
    lms_free(ck);
}

/* Reads up to CHUNK_LINES documents (a JSONL file's blank lines are none); returns how many. */
static size_t read_chunk(FILE *in, bool txt, struct line *ck, long *lineno, uint64_t *bytes)
{
    size_t n = 0;
    while (n < CHUNK_LINES) {
        struct line *l = &ck[n];
        ssize_t k = getline(&l->text, &l->cap, in);
        if (k < 0)
            break;
        *bytes += (uint64_t)k;
        if (k > 0 && l->text[k - 1] == '\n')
            k--;
        if (k > 0 && l->text[k - 1] == '\r' && !txt)
            k--;
        l->len = (size_t)k;
        ++*lineno;
        if (!txt && k == 0)
            continue;
        l->no = *lineno;
        l->res.bad = false;
        l->res.ids.len = 0;
        l->res.n_seq = 0;
        lms_free(l->res.seq_len);
        l->res.seq_len = NULL;
        n++;
    }
    return n;
}

/* Tokenizes the chunk's n documents in parallel, one tokenizer context per thread. */
static void tokenize_chunk(const struct job *jb, struct line *ck, size_t n, int64_t workers)
{
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 16) num_threads(workers)
#endif
    for (long i = 0; i < (long)n; i++) {
#ifdef _OPENMP
        int t = omp_get_thread_num();
#else
        int t = 0;
#endif
        process_line(jb, jb->ctx[t], ck[i].text, ck[i].len, &ck[i].res);
    }
}

/* Writes the chunk's documents in input order; a bad line stops the run unless --skip-bad-lines.
 * Counts skipped lines in *n_bad and sentences in *n_seq. */
static enum lms_status write_chunk(const struct preprocess_args *a, struct lms_dataset_writer *w,
                                   const struct line *ck, size_t n, long *n_bad, int64_t *n_seq,
                                   struct lms_error *err)
{
    for (size_t i = 0; i < n; i++) {
        const struct doc_result *r = &ck[i].res;
        if (r->bad) {
            if (!a->skip_bad)
                return lms_error_set(err, LMS_EFORMAT, "'%s' line %ld: %s", a->input,
                                     ck[i].no, r->msg);
            if (!a->base.co.quiet)
                fprintf(stderr, "lmsurgeon %s: warning: skipping '%s' line %ld: %s\n", cmd,
                        a->input, ck[i].no, r->msg);
            ++*n_bad;
            continue;
        }
        if (a->skip_empty && r->n_seq == 0)
            continue;
        size_t off = 0;
        for (size_t k = 0; k < r->n_seq; k++) {
            enum lms_status rc = lms_dataset_writer_add(w, r->ids.data + off, r->seq_len[k], err);
            if (rc)
                return rc;
            off += r->seq_len[k];
            ++*n_seq;
        }
        enum lms_status rc = lms_dataset_writer_end_doc(w, err);
        if (rc)
            return rc;
    }
    return LMS_OK;
}

static void report(const struct cli_common *co, const char *out_prefix,
                   struct lms_dataset_writer *w, int64_t n_seq, enum lms_index_dtype code,
                   long n_bad, double secs)
{
    int64_t docs = lms_dataset_writer_n_docs(w), toks = lms_dataset_writer_n_tokens(w);
    if (co->json) {
        printf("{\"ok\":true,\"output_prefix\":");
        json_t *s = json_string(out_prefix);
        struct lms_buf_str b = {0};
        if (s && lms_json_dump(s, LMS_JSON_COMPACT, &b, NULL) == LMS_OK)
            fputs(b.data, stdout);
        lms_buf_str_release(&b);
        json_decref(s);
        printf(",\"documents\":%lld,\"sequences\":%lld,\"tokens\":%lld,\"dtype\":\"%s\","
               "\"skipped_lines\":%ld,\"seconds\":%.3f}\n",
               (long long)docs, (long long)n_seq, (long long)toks,
               code == LMS_INDEX_U16 ? "uint16" : "int32", n_bad, secs);
    } else if (!co->quiet) {
        fprintf(stderr, "wrote %s.bin/.idx: %lld documents, %lld tokens (%s) in %.2f s "
                "(%.2fM tokens/s)%s\n", out_prefix, (long long)docs, (long long)toks,
                code == LMS_INDEX_U16 ? "uint16" : "int32", secs,
                secs > 0 ? (double)toks / secs / 1e6 : 0.0, n_bad ? ", some lines skipped" : "");
    }
}

/* The end-of-document id for --append-eod (-1 without). */
static enum lms_status eod_id_of(const struct preprocess_args *a, struct lms_tokenizer *tk,
                                 int32_t *eod, struct lms_error *err)
{
    *eod = a->eod ? lms_tokenizer_eos_id(tk) : -1;
    if (a->eod && *eod < 0)
        return lms_error_set(err, LMS_EFORMAT, "--append-eod: tokenizer '%s' has no eos_token "
                             "in tokenizer_config.json", a->tok_path);
    return LMS_OK;
}

struct totals {
    long n_bad;    /* lines skipped (--skip-bad-lines) */
    int64_t n_seq; /* sentences written */
    double secs;
};

/* Reads, tokenizes and writes the whole input chunk by chunk, then finishes the dataset. */
static enum lms_status tokenize_all(const struct preprocess_args *a, FILE *in, bool txt,
                                    const struct job *jb, struct line *ck,
                                    struct lms_dataset_writer *w, struct totals *tot,
                                    struct lms_error *err)
{
    struct stat sb;
    uint64_t in_size = fstat(fileno(in), &sb) == 0 ? (uint64_t)sb.st_size : 0;
    struct cli_progress prog;
    char label[160] = "preprocess";
    cli_progress_begin(&prog, label, in_size, true, a->base.co.quiet);
    uint64_t done_bytes = 0;
    long lineno = 0;
    double t0 = cli_now();
    enum lms_status rc = LMS_OK;
    for (;;) {
        size_t n = read_chunk(in, txt, ck, &lineno, &done_bytes);
        if (n == 0)
            break;
        tokenize_chunk(jb, ck, n, a->workers);
        if ((rc = write_chunk(a, w, ck, n, &tot->n_bad, &tot->n_seq, err)))
            return rc;
        double el = cli_now() - t0;
        if (el > 0)
            snprintf(label, sizeof(label), "preprocess %lld docs (%.0f docs/s, %.2fM tok/s)",
                     (long long)lms_dataset_writer_n_docs(w),
                     (double)lms_dataset_writer_n_docs(w) / el,
                     (double)lms_dataset_writer_n_tokens(w) / el / 1e6);
        cli_progress_update(&prog, done_bytes);
        if (n < CHUNK_LINES)
            break;
    }
    if (ferror(in))
        return lms_error_set(err, LMS_EIO, "reading '%s': read error", a->input);
    if ((rc = lms_dataset_writer_finish(w, err)))
        return rc;
    cli_progress_end(&prog);
    tot->secs = cli_now() - t0;
    return LMS_OK;
}

static int run(void *args)
{
    const struct preprocess_args *a = args;
    size_t in_len = strlen(a->input);
    bool txt = in_len > 4 && strcmp(a->input + in_len - 4, ".txt") == 0;
    struct lms_error err = {0};
    struct lms_tokenizer *tk = NULL;
    struct lms_dataset_writer *w = NULL;
    struct lms_tokenizer_ctx **ctx = NULL;
    struct line *ck = NULL;
    FILE *in = NULL;
    int rc = CLI_EXIT_OK;
    char out_prefix[4096];
    snprintf(out_prefix, sizeof(out_prefix), "%s_%s_document", a->prefix, a->key);

    char out_bin[4200], out_idx[4200];
    snprintf(out_bin, sizeof out_bin, "%s.bin", out_prefix);
    snprintf(out_idx, sizeof out_idx, "%s.idx", out_prefix);
    const struct lms_path_role paths[] = {{out_bin, NULL, LMS_PATH_WRITE},
                                          {out_idx, NULL, LMS_PATH_WRITE},
                                          {a->input, NULL, LMS_PATH_READ},
                                          {a->tok_path, "the tokenizer", LMS_PATH_READ}};
    if (lms_paths_check(paths, sizeof paths / sizeof paths[0], &err))
        goto fail;
    json_object_seed(0); /* before threads: jansson seeds its hash once */
    int32_t eod_id;
    if (lms_tokenizer_load(a->tok_path, &tk, &err) || eod_id_of(a, tk, &eod_id, &err))
        goto fail;
    in = fopen(a->input, "rb");
    if (!in) {
        lms_error_set(&err, LMS_EIO, "opening '%s': %s", a->input, strerror(errno));
        goto fail;
    }
    enum lms_index_dtype code = lms_index_dtype_for_vocab(lms_tokenizer_vocab_size(tk));
    if (lms_dataset_writer_new(out_prefix, code, a->base.wo.force, &w, &err))
        goto fail;
    ctx = lms_calloc((size_t)a->workers, sizeof(*ctx));
    ck = lms_calloc(CHUNK_LINES, sizeof(*ck));
    if (!ck || !ctx) {
        lms_error_set(&err, LMS_ENOMEM, "out of memory");
        goto fail;
    }
    for (int64_t t = 0; t < a->workers; t++)
        if (lms_tokenizer_ctx_new(tk, &ctx[t], &err))
            goto fail;
    struct job jb = {ctx, a->key, txt, a->no_special ? 0 : LMS_TOK_ADD_SPECIAL, eod_id};
    struct totals tot = {0};
    if (tokenize_all(a, in, txt, &jb, ck, w, &tot, &err))
        goto fail;
    report(&a->base.co, out_prefix, w, tot.n_seq, code, tot.n_bad, tot.secs);
    goto out;
fail:
    rc = cli_fail(cmd, &a->base.co, &err);
out:
    if (in)
        fclose(in);
    chunk_free(ck);
    if (ctx)
        for (int64_t t = 0; t < a->workers; t++)
            lms_tokenizer_ctx_free(ctx[t]);
    lms_free(ctx);
    lms_dataset_writer_free(w);
    lms_tokenizer_free(tk);
    return rc;
}

int cmd_preprocess(int argc, char **argv)
{
    struct preprocess_args a = {.key = "text", .workers = sysconf(_SC_NPROCESSORS_ONLN)};
    if (a.workers < 1)
        a.workers = 1;
    return cli_main(&spec, argc, argv, &a);
}
