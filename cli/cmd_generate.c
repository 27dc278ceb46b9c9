/* lmsurgeon generate: greedy continuation of a prompt, a human sanity check of a (pruned)
 * model. The prompt is encoded with the model's tokenizer.json (or --tokenizer), then each step
 * runs the whole sequence through the engine and appends the arg-max of the last position's
 * logits (no KV cache: this is a check, not a server). */
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "lms/alloc.h"
#include "lms/engine.h"
#include "lms/format.h"
#include "lms/json.h"
#include "lms/tokenizer.h"

static const char usage_text[] =
    "usage: lmsurgeon generate MODEL --prompt TEXT [--max-new-tokens N] [--tokenizer PATH]\n"
    "                          [--device cpu|cuda[:N]] [--threads N] [--json] [--quiet]\n"
    "\n"
    "Greedy decoding from MODEL: prints the prompt followed by up to N new tokens, stopping\n"
    "early at the tokenizer's end-of-sequence token.\n"
    "\n"
    "  --prompt TEXT        text to continue (required)\n"
    "  --max-new-tokens N   tokens to generate (default 32)\n"
    "  --tokenizer PATH     tokenizer.json or a directory holding it (default: MODEL's)\n"
    "  --device DEV         cpu (default), cuda or cuda:N\n"
    "  --threads N          CPU threads (default: all cores)\n"
    "  --json               print one JSON object on stdout\n"
    "  --quiet              print only the generated text\n"
    "  -h, --help           show this help\n";

static const char *cmd = "generate";

static json_t *ids_json(const int32_t *ids, int64_t n)
{
    json_t *a = json_array();
    for (int64_t i = 0; a && i < n; i++)
        json_array_append_new(a, json_integer(ids[i]));
    return a;
}

int cmd_generate(int argc, char **argv)
{
    static const struct option opts[] = {
        {"prompt", required_argument, NULL, 'p'},
        {"max-new-tokens", required_argument, NULL, 'n'},
        {"tokenizer", required_argument, NULL, 'k'},
        {"device", required_argument, NULL, 'd'},
        {"threads", required_argument, NULL, 't'},
        {"json", no_argument, NULL, 'j'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct cli_common co = {0};
    const char *prompt = NULL, *tok_path = NULL, *device = "cpu", *model_path = NULL;
    int64_t max_new = 32, threads = 0;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "hq", opts, NULL)) != -1) {
        switch (c) {
        case 'p':
            prompt = optarg;
            break;
        case 'n':
            if (!cli_parse_count(optarg, &max_new) || max_new > (1 << 20))
                return cli_usage_error(cmd, "invalid --max-new-tokens '%s'", optarg);
            break;
        case 'k':
            tok_path = optarg;
            break;
        case 'd':
            device = optarg;
            break;
        case 't':
            if (!cli_parse_count(optarg, &threads) || threads > 4096)
                return cli_usage_error(cmd, "invalid --threads '%s'", optarg);
            break;
        case 'j':
            co.json = true;
            break;
        case 'q':
            co.quiet = true;
            break;
        case 'h':
            fputs(usage_text, stdout);
            return CLI_EXIT_OK;
        default:
            return cli_usage_error(cmd, "unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        model_path = argv[optind++];
    if (!model_path || optind < argc)
        return cli_usage_error(cmd, "expected one MODEL");
    if (!prompt)
        return cli_usage_error(cmd, "--prompt TEXT is required");
    if (!tok_path)
        tok_path = model_path;

    struct lms_error err;
    lms_error_clear(&err);
    struct lms_device dev;
    if (lms_device_parse(device, &dev, &err))
        return cli_usage_error(cmd, "%s", err.msg);

    int rc = CLI_EXIT_OK;
    struct lms_tokenizer *tk = NULL;
    struct lms_tokenizer_ctx *tctx = NULL;
    struct lms_ids pids = {0};
    struct lms_backend *be = NULL;
    struct lms_engine *e = NULL;
    struct lms_model m;
    bool have_model = false;
    int32_t *seq = NULL;
    float *logits = NULL;
    char *text = NULL;
    size_t text_len = 0;

    if (lms_tokenizer_load(tok_path, &tk, &err) || lms_tokenizer_ctx_new(tk, &tctx, &err) ||
        lms_tokenizer_encode(tctx, prompt, strlen(prompt), LMS_TOK_ADD_SPECIAL, &pids, &err))
        goto fail;
    if (pids.len == 0) {
        rc = cli_usage_error(cmd, "the prompt encodes to no tokens");
        goto out;
    }
    if (lms_checkpoint_read(model_path, &m, &err))
        goto fail;
    have_model = true;
    int64_t n_prompt = (int64_t)pids.len, max_seq = n_prompt + max_new;
    if (m.arch.max_position > 0 && max_seq > m.arch.max_position) {
        lms_error_set(&err, LMS_EINVAL,
                      "prompt (%lld tokens) + %lld new tokens exceed the model's %lld positions",
                      (long long)n_prompt, (long long)max_new, (long long)m.arch.max_position);
        goto fail;
    }
    struct lms_backend_opts bo = {.n_threads = (int)threads};
    if (lms_backend_open(&dev, &bo, &be, &err))
        goto fail;
    struct lms_engine_opts eo = {.max_batch = 1, .max_seq = max_seq};
    if (lms_engine_new(&m, be, &eo, &e, &err)) {
        lms_error_wrap(&err, "'%s': ", model_path);
        goto fail;
    }
    int64_t V = lms_engine_logits_cols(e);
    seq = lms_malloc((size_t)max_seq * sizeof(int32_t));
    logits = lms_malloc((size_t)V * sizeof(float));
    if (!seq || !logits) {
        lms_error_set(&err, LMS_ENOMEM, "out of memory");
        goto fail;
    }
    memcpy(seq, pids.data, (size_t)n_prompt * sizeof(int32_t));
    int32_t eos = lms_tokenizer_eos_id(tk);
    int64_t n = n_prompt;
    double t0 = cli_now();
    while (n < max_seq) {
        struct lms_forward f = {.ids = seq, .batch = 1, .seq = n, .logits = logits,
                                .logits_cap = (size_t)V, .last_only = true};
        if (lms_engine_forward(e, &f, &err))
            goto fail;
        int64_t best = 0;
        for (int64_t v = 1; v < V; v++)
            if (logits[v] > logits[best])
                best = v;
        seq[n++] = (int32_t)best;
        if (best == eos)
            break;
    }
    double secs = cli_now() - t0;
    int64_t n_new = n - n_prompt;
    if (lms_tokenizer_decode(tk, seq + n_prompt, (size_t)n_new, true, &text, &text_len, &err))
        goto fail;
    if (co.json) {
        json_t *o = json_pack("{s:b,s:s,s:s,s:o,s:o,s:s%,s:f}", "ok", 1, "model", model_path,
                              "prompt", prompt, "prompt_ids", ids_json(seq, n_prompt), "ids",
                              ids_json(seq + n_prompt, n_new), "text", text, text_len,
                              "tokens_per_second", secs > 0 ? (double)n_new / secs : 0.0);
        cli_print_json(o);
    } else {
        if (!co.quiet)
            fputs(prompt, stdout);
        fwrite(text, 1, text_len, stdout);
        fputc('\n', stdout);
        if (!co.quiet)
            fprintf(stderr, "%lld new tokens in %.2f s (%s)\n", (long long)n_new, secs,
                    lms_backend_name(be));
    }
    goto out;
fail:
    rc = cli_fail(cmd, &co, &err);
out:
    lms_free(text);
    lms_free(seq);
    lms_free(logits);
    lms_engine_free(e);
    lms_backend_free(be);
    if (have_model)
        lms_model_release(&m);
    lms_ids_release(&pids);
    lms_tokenizer_ctx_free(tctx);
    lms_tokenizer_free(tk);
    return rc;
}
