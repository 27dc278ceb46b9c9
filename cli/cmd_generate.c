/* lmsurgeon generate: greedy continuation of a prompt, a human sanity check of a (pruned)
 * model. The prompt is encoded with the model's tokenizer.json (or --tokenizer), then each step
 * runs the whole sequence through the engine and appends the arg-max of the last position's
 * logits (no KV cache: this is a check, not a server). */
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
    "  --tokenizer PATH     tokenizer.json, a directory holding it or a GGUF file (default:\n"
    "                       MODEL's)\n"
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

struct generate_args {
    struct cli_args base;
    const char *prompt, *tok_path;
    int64_t max_new;
};

static const struct cli_opt opts[] = {
    CLI_REQUIRED("prompt", struct generate_args, prompt, "--prompt TEXT is required"),
    CLI_COUNT("max-new-tokens", struct generate_args, max_new, 1, 1 << 20,
              "invalid --max-new-tokens '%s'"),
    CLI_STRING("tokenizer", struct generate_args, tok_path),
    CLI_END,
};

static int check(void *args)
{
    struct generate_args *a = args;
    if (!a->tok_path)
        a->tok_path = a->base.in;
    return CLI_PARSED;
}

static int run(void *args);

static const struct cli_spec spec = {
    .name = "generate", .help = {usage_text}, .shorts = "hq", .groups = CLI_RUN,
    .positional = CLI_POS_ONE, .positional_usage = "expected one MODEL", .opts = opts,
    .check = check,
    .run = run,
};

/* Appends greedy tokens to seq[0, *n) until max_seq or the end-of-sequence id. */
static enum lms_status greedy(struct lms_engine *e, int32_t *seq, int64_t *n, int64_t max_seq,
                              int32_t eos, struct lms_error *err)
{
    int64_t V = lms_engine_logits_cols(e);
    float *logits = lms_malloc((size_t)V * sizeof(float));
    if (!logits)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    enum lms_status rc = LMS_OK;
    while (*n < max_seq) {
        struct lms_forward f = {.ids = seq, .batch = 1, .seq = *n, .logits = logits,
                                .logits_cap = (size_t)V, .last_only = true};
        if ((rc = lms_engine_forward(e, &f, err)))
            break;
        int64_t best = 0;
        for (int64_t v = 1; v < V; v++)
            if (logits[v] > logits[best])
                best = v;
        seq[(*n)++] = (int32_t)best;
        if (best == eos)
            break;
    }
    lms_free(logits);
    return rc;
}

static int run(void *args)
{
    const struct generate_args *a = args;
    const char *model_path = a->base.in, *prompt = a->prompt;
    const struct cli_common *co = &a->base.co;
    struct lms_error err;
    lms_error_clear(&err);
    int rc = CLI_EXIT_OK;
    struct lms_tokenizer *tk = NULL;
    struct lms_tokenizer_ctx *tctx = NULL;
    struct lms_ids pids = {0};
    struct cli_model cm = {0};
    int32_t *seq = NULL;
    char *text = NULL;
    size_t text_len = 0;

    if (lms_tokenizer_load(a->tok_path, &tk, &err) || lms_tokenizer_ctx_new(tk, &tctx, &err) ||
        lms_tokenizer_encode(tctx, prompt, strlen(prompt), LMS_TOK_ADD_SPECIAL, &pids, &err))
        goto fail;
    if (pids.len == 0) {
        rc = cli_usage_error(cmd, "the prompt encodes to no tokens");
        goto out;
    }
    if (cli_model_read(&cm, model_path, &err))
        goto fail;
    int64_t n_prompt = (int64_t)pids.len, max_seq = n_prompt + a->max_new;
    char what[96];
    snprintf(what, sizeof what, "the prompt (%lld tokens) + --max-new-tokens %lld",
             (long long)n_prompt, (long long)a->max_new);
    cli_warn_positions(cmd, co, model_path, &cm.m.arch, max_seq, what);
    struct lms_engine_opts eo = {.max_batch = 1, .max_seq = max_seq};
    if (cli_model_backend(&cm, &a->base, &err) ||
        cli_model_engine(&cm, &eo, "", model_path, &err))
        goto fail;
    seq = lms_malloc((size_t)max_seq * sizeof(int32_t));
    if (!seq) {
        lms_error_set(&err, LMS_ENOMEM, "out of memory");
        goto fail;
    }
    memcpy(seq, pids.data, (size_t)n_prompt * sizeof(int32_t));
    int64_t n = n_prompt;
    double t0 = cli_now();
    if (greedy(cm.e, seq, &n, max_seq, lms_tokenizer_eos_id(tk), &err))
        goto fail;
    double secs = cli_now() - t0;
    int64_t n_new = n - n_prompt;
    if (lms_tokenizer_decode(tk, seq + n_prompt, (size_t)n_new, true, &text, &text_len, &err))
        goto fail;
    if (co->json) {
        json_t *o = json_pack("{s:b,s:s,s:s,s:o,s:o,s:s%,s:f}", "ok", 1, "model", model_path,
                              "prompt", prompt, "prompt_ids", ids_json(seq, n_prompt), "ids",
                              ids_json(seq + n_prompt, n_new), "text", text, text_len,
                              "tokens_per_second", secs > 0 ? (double)n_new / secs : 0.0);
        cli_print_json(o);
    } else {
        if (!co->quiet)
            fputs(prompt, stdout);
        fwrite(text, 1, text_len, stdout);
        fputc('\n', stdout);
        if (!co->quiet)
            fprintf(stderr, "%lld new tokens in %.2f s (%s)\n", (long long)n_new, secs,
                    lms_backend_name(cm.be));
    }
    goto out;
fail:
    rc = cli_fail(cmd, co, &err);
out:
    lms_free(text);
    lms_free(seq);
    cli_model_close(&cm);
    lms_ids_release(&pids);
    lms_tokenizer_ctx_free(tctx);
    lms_tokenizer_free(tk);
    return rc;
}

int cmd_generate(int argc, char **argv)
{
    struct generate_args a = {.max_new = 32};
    return cli_main(&spec, argc, argv, &a);
}
