/* lmsurgeon preprocess: JSONL or text -> Megatron indexed dataset (PREFIX_KEY_document.bin/.idx),
 * compatible with Megatron's tools/preprocess_data.py.
 *
 * The input is read in chunks of lines; each chunk is tokenized in parallel over documents
 * (OpenMP, one tokenizer context per thread) and then written in input order, so the output
 * does not depend on the number of workers. */
#include <errno.h>
#include <getopt.h>
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

int cmd_preprocess(int argc, char **argv)
{
    enum { O_NO_SPECIAL = 256, O_SKIP_EMPTY, O_SKIP_BAD, O_JSON_KEY, O_OUT, O_EOD };
    static const struct option opts[] = {
        {"input", required_argument, NULL, 'i'},
        {"json-key", required_argument, NULL, O_JSON_KEY},
        {"json-keys", required_argument, NULL, O_JSON_KEY},
        {"tokenizer", required_argument, NULL, 't'},
        {"output-prefix", required_argument, NULL, O_OUT},
        {"append-eod", no_argument, NULL, O_EOD},
        {"no-special-tokens", no_argument, NULL, O_NO_SPECIAL},
        {"skip-empty-docs", no_argument, NULL, O_SKIP_EMPTY},
        {"skip-bad-lines", no_argument, NULL, O_SKIP_BAD},
        {"workers", required_argument, NULL, 'w'},
        {"force", no_argument, NULL, 'f'},
        {"json", no_argument, NULL, 'j'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct cli_common co = {0};
    const char *input = NULL, *tok_path = NULL, *prefix = NULL, *key = "text";
    bool eod = false, skip_empty = false, skip_bad = false, force = false;
    unsigned flags = LMS_TOK_ADD_SPECIAL;
    long workers = sysconf(_SC_NPROCESSORS_ONLN);
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'i': input = optarg; break;
        case O_JSON_KEY: key = optarg; break;
        case 't': tok_path = optarg; break;
        case O_OUT: prefix = optarg; break;
        case O_EOD: eod = true; break;
        case O_NO_SPECIAL: flags &= ~(unsigned)LMS_TOK_ADD_SPECIAL; break;
        case O_SKIP_EMPTY: skip_empty = true; break;
        case O_SKIP_BAD: skip_bad = true; break;
        case 'w': {
            char *end;
            workers = strtol(optarg, &end, 10);
            if (*end || workers < 1 || workers > 1024)
                return cli_usage_error(cmd, "--workers: '%s' is not a count in 1..1024", optarg);
            break;
        }
        case 'f': force = true; break;
        case 'j': co.json = true; break;
        case 'q': co.quiet = true; break;
        case 'h': fputs(usage_text, stdout); return CLI_EXIT_OK;
        default: return cli_usage_error(cmd, "unknown option");
        }
    }
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if (!input || !tok_path || !prefix)
        return cli_usage_error(cmd, "--input, --tokenizer and --output-prefix are required");
    if (workers < 1)
        workers = 1;
    size_t in_len = strlen(input);
    bool txt = in_len > 4 && strcmp(input + in_len - 4, ".txt") == 0;

    struct lms_error err = {0};
    struct lms_tokenizer *tk = NULL;
    struct lms_dataset_writer *w = NULL;
    struct lms_tokenizer_ctx **ctx = NULL;
    struct doc_result *res = NULL;
    char **lines = NULL;
    size_t *line_len = NULL;
    long *line_no = NULL;
    FILE *in = NULL;
    int rc = CLI_EXIT_OK;
    long n_bad = 0, lineno = 0;
    int64_t n_seq_total = 0;
    char out_prefix[4096];
    snprintf(out_prefix, sizeof(out_prefix), "%s_%s_document", prefix, key);

    json_object_seed(0); /* before threads: jansson seeds its hash once */
    if (lms_tokenizer_load(tok_path, &tk, &err))
        goto fail;
    int32_t eod_id = -1;
    if (eod) {
        eod_id = lms_tokenizer_eos_id(tk);
        if (eod_id < 0) {
            lms_error_set(&err, LMS_EFORMAT, "--append-eod: tokenizer '%s' has no eos_token in "
                          "tokenizer_config.json", tok_path);
            goto fail;
        }
    }
    in = fopen(input, "rb");
    if (!in) {
        lms_error_set(&err, LMS_EIO, "opening '%s': %s", input, strerror(errno));
        goto fail;
    }
    struct stat sb;
    uint64_t in_size = fstat(fileno(in), &sb) == 0 ? (uint64_t)sb.st_size : 0;
    enum lms_index_dtype code = lms_index_dtype_for_vocab(lms_tokenizer_vocab_size(tk));
    if (lms_dataset_writer_new(out_prefix, code, force, &w, &err))
        goto fail;
    ctx = lms_calloc((size_t)workers, sizeof(*ctx));
    res = lms_calloc(CHUNK_LINES, sizeof(*res));
    lines = lms_calloc(CHUNK_LINES, sizeof(*lines));
    line_len = lms_calloc(CHUNK_LINES, sizeof(*line_len));
    line_no = lms_calloc(CHUNK_LINES, sizeof(*line_no));
    size_t *line_cap = lms_calloc(CHUNK_LINES, sizeof(size_t));
    if (!ctx || !res || !lines || !line_len || !line_no || !line_cap) {
        lms_free(line_cap);
        lms_error_set(&err, LMS_ENOMEM, "out of memory");
        goto fail;
    }
    for (long t = 0; t < workers; t++)
        if (lms_tokenizer_ctx_new(tk, &ctx[t], &err)) {
            lms_free(line_cap);
            goto fail;
        }
    struct job jb = {ctx, key, txt, flags, eod_id};
    struct cli_progress prog;
    char label[160] = "preprocess";
    cli_progress_begin(&prog, label, in_size, true, co.quiet);
    uint64_t done_bytes = 0;
    double t0 = cli_now();
    bool stop = false;
    while (!stop) {
        size_t n = 0;
        while (n < CHUNK_LINES) {
            ssize_t k = getline(&lines[n], &line_cap[n], in);
            if (k < 0)
                break;
            done_bytes += (uint64_t)k;
            if (k > 0 && lines[n][k - 1] == '\n')
                k--;
            if (k > 0 && lines[n][k - 1] == '\r' && !txt)
                k--;
            line_len[n] = (size_t)k;
            lineno++;
            if (!txt && k == 0) /* blank JSONL line: not a document */
                continue;
            line_no[n] = lineno;
            res[n].bad = false;
            res[n].ids.len = 0;
            res[n].n_seq = 0;
            lms_free(res[n].seq_len);
            res[n].seq_len = NULL;
            n++;
        }
        if (n == 0)
            break;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 16) num_threads(workers)
#endif
        for (long i = 0; i < (long)n; i++) {
#ifdef _OPENMP
            int t = omp_get_thread_num();
#else
            int t = 0;
#endif
            process_line(&jb, ctx[t], lines[i], line_len[i], &res[i]);
        }
        for (size_t i = 0; i < n && !stop; i++) {
            struct doc_result *r = &res[i];
            if (r->bad) {
                long ln = line_no[i];
                if (!skip_bad) {
                    lms_error_set(&err, LMS_EFORMAT, "'%s' line %ld: %s", input, ln, r->msg);
                    stop = true;
                    break;
                }
                if (!co.quiet)
                    fprintf(stderr, "lmsurgeon %s: warning: skipping '%s' line %ld: %s\n", cmd,
                            input, ln, r->msg);
                n_bad++;
                continue;
            }
            if (skip_empty && r->n_seq == 0)
                continue;
            size_t off = 0;
            for (size_t s = 0; s < r->n_seq; s++) {
                if (lms_dataset_writer_add(w, r->ids.data + off, r->seq_len[s], &err)) {
                    stop = true;
                    break;
                }
                off += r->seq_len[s];
                n_seq_total++;
            }
            if (!stop && lms_dataset_writer_end_doc(w, &err))
                stop = true;
        }
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
    for (size_t i = 0; i < CHUNK_LINES; i++)
        free(lines[i]);
    lms_free(line_cap);
    if (err.status)
        goto fail;
    if (ferror(in)) {
        lms_error_set(&err, LMS_EIO, "reading '%s': read error", input);
        goto fail;
    }
    if (lms_dataset_writer_finish(w, &err))
        goto fail;
    cli_progress_end(&prog);
    double secs = cli_now() - t0;
    int64_t docs = lms_dataset_writer_n_docs(w), toks = lms_dataset_writer_n_tokens(w);
    if (co.json) {
        printf("{\"ok\":true,\"output_prefix\":");
        json_t *s = json_string(out_prefix);
        struct lms_buf_str b = {0};
        if (s && lms_json_dump(s, LMS_JSON_COMPACT, &b, NULL) == LMS_OK)
            fputs(b.data, stdout);
        lms_buf_str_release(&b);
        json_decref(s);
        printf(",\"documents\":%lld,\"sequences\":%lld,\"tokens\":%lld,\"dtype\":\"%s\","
               "\"skipped_lines\":%ld,\"seconds\":%.3f}\n",
               (long long)docs, (long long)n_seq_total, (long long)toks,
               code == LMS_INDEX_U16 ? "uint16" : "int32", n_bad, secs);
    } else if (!co.quiet) {
        fprintf(stderr, "wrote %s.bin/.idx: %lld documents, %lld tokens (%s) in %.2f s "
                "(%.2fM tokens/s)%s\n", out_prefix, (long long)docs, (long long)toks,
                code == LMS_INDEX_U16 ? "uint16" : "int32", secs,
                secs > 0 ? (double)toks / secs / 1e6 : 0.0, n_bad ? ", some lines skipped" : "");
    }
    goto out;
fail:
    rc = cli_fail(cmd, &co, &err);
out:
    if (in)
        fclose(in);
    if (res)
        for (size_t i = 0; i < CHUNK_LINES; i++) {
            lms_ids_release(&res[i].ids);
            lms_free(res[i].seq_len);
        }
    lms_free(res);
    lms_free(lines);
    lms_free(line_len);
    lms_free(line_no);
    if (ctx)
        for (long t = 0; t < workers; t++)
            lms_tokenizer_ctx_free(ctx[t]);
    lms_free(ctx);
    lms_dataset_writer_free(w);
    lms_tokenizer_free(tk);
    return rc;
}
