/* lmsurgeon eval: mean next-token cross-entropy and perplexity of a checkpoint over the first N
 * non-overlapping windows of a token dataset (the evaluation protocol every quality figure
 * uses): window k is stream positions [k*S, (k+1)*S), positions 0..S-2 predict 1..S-1, fp32. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "lms/alloc.h"
#include "lms/dataset.h"
#include "lms/engine.h"
#include "lms/format.h"
#include "lms/json.h"
#include "lms/score.h"

static const char usage_text[] =
    "usage: lmsurgeon eval MODEL --data PREFIX [--seq-length 512] [--num-samples N | --all]\n"
    "                      [--batch-size B] [--device cpu|cuda[:N]] [--threads N] [--json]\n"
    "                      [--precision fp32|bf16|auto] [--quiet]\n"
    "\n"
    "Mean next-token cross-entropy (nats/token) and perplexity of MODEL over the first N\n"
    "non-overlapping windows of S tokens of the dataset: each window's positions 0..S-2\n"
    "predict 1..S-1, computed in fp32.\n"
    "\n"
    "  --data PREFIX        Megatron indexed dataset PREFIX.bin/.idx, or a raw id file ending\n"
    "                       in .u16 or .i32 (ids back to back, little-endian)\n"
    "  --seq-length S       tokens per window (default 512)\n"
    "  --num-samples N      windows to score (default 256)\n"
    "  --all                score every full window of the dataset\n"
    "  --batch-size B       windows per forward pass (default 8)\n"
    "  --device DEV         cpu (default), cuda or cuda:N\n"
    "  --precision P        GEMM and attention arithmetic on devices that have a choice:\n"
    "                       fp32 (default, the protocol), bf16 (16-bit weights kept, GEMM\n"
    "                       operands rounded to them, tensor-core attention), auto (the\n"
    "                       device's default: bf16 on CUDA)\n"
    "  --threads N          CPU threads (default: all cores)\n"
    "  --json               print one JSON object on stdout\n"
    "  --quiet              no progress bar, no summary\n"
    "  -h, --help           show this help\n";

struct eval_args {
    struct cli_args base;
    const char *data;
    int64_t S, n_win, B; /* n_win 0: not given */
    bool all;
};

static const struct cli_opt opts[] = {
    CLI_REQUIRED("data", struct eval_args, data, "--data PREFIX is required"),
    CLI_COUNT("seq-length", struct eval_args, S, 2, 1 << 20,
              "invalid --seq-length '%s' (2 to 1048576)"),
    CLI_COUNT("num-samples", struct eval_args, n_win, 1, 0, "invalid --num-samples '%s'"),
    CLI_FLAG("all", struct eval_args, all),
    CLI_COUNT("batch-size", struct eval_args, B, 1, 4096, "invalid --batch-size '%s' (1 to 4096)"),
    CLI_END,
};
static const char *cmd = "eval";

static int check(void *args)
{
    struct eval_args *a = args;
    if (a->all && a->n_win)
        return cli_usage_error(cmd, "--all and --num-samples exclude each other");
    if (!a->all && !a->n_win)
        a->n_win = 256;
    return CLI_PARSED;
}

static int run(void *args);

static const struct cli_spec spec = {
    .name = "eval", .help = {usage_text}, .shorts = "hq", .groups = CLI_RUN | CLI_PRECISION,
    .positional = CLI_POS_ONE, .positional_usage = "expected one MODEL", .opts = opts,
    .check = check,
    .run = run,
};

/* Scores the windows [0, n_win) of ds; OUT: *sum (nats) over *n_scored targets. */
static enum lms_status score_windows(struct lms_engine *e, struct lms_dataset *ds, int64_t n_win,
                                     int64_t B, int64_t S, bool quiet, double *sum,
                                     int64_t *n_scored, struct lms_error *err)
{
    int32_t *ids = lms_malloc((size_t)(B * S) * sizeof(int32_t));
    int32_t *tgt = lms_malloc((size_t)(B * S) * sizeof(int32_t));
    enum lms_status rc = LMS_OK;
    if (!ids || !tgt)
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory for %lld x %lld ids", (long long)B,
                           (long long)S);
    struct cli_progress bar;
    if (!rc)
        cli_progress_begin(&bar, "evaluating", (uint64_t)(n_win * S), false, quiet);
    for (int64_t w0 = 0; !rc && w0 < n_win; w0 += B) {
        int64_t nb = n_win - w0 < B ? n_win - w0 : B;
        rc = lms_dataset_read(ds, w0 * S, (w0 + nb) * S, ids, (size_t)(B * S), err);
        for (int64_t i = 0; !rc && i < nb * S; i++)
            tgt[i] = i % S == S - 1 ? -1 : ids[i + 1];
        struct lms_forward f = {.ids = ids, .batch = nb, .seq = S, .targets = tgt};
        if (!rc && !(rc = lms_engine_forward(e, &f, err))) {
            *sum += f.loss_sum;
            *n_scored += f.n_scored;
            cli_progress_update(&bar, (uint64_t)((w0 + nb) * S));
        }
    }
    if (!rc)
        cli_progress_end(&bar);
    else if (ids && tgt && bar.enabled)
        fputc('\n', stderr);
    lms_free(ids);
    lms_free(tgt);
    return rc;
}

static int run(void *args)
{
    struct eval_args *a = args;
    const char *model_path = a->base.in;
    int64_t S = a->S, B = a->B, n_win = a->n_win;
    struct lms_error err;
    lms_error_clear(&err);
    int rc = CLI_EXIT_OK;
    struct lms_dataset *ds = NULL;
    struct cli_model cm = {0};

    if (lms_data_open(a->data, &ds, &err))
        goto fail;
    int64_t avail = lms_dataset_n_tokens(ds) / S;
    if (a->all)
        n_win = avail;
    if (n_win > avail || n_win == 0) {
        rc = cli_usage_error(cmd, "dataset '%s' has %lld tokens: %lld full windows of %lld, "
                             "%lld requested",
                             a->data, (long long)lms_dataset_n_tokens(ds), (long long)avail,
                             (long long)S, (long long)n_win);
        goto out;
    }
    if (B > n_win)
        B = n_win;
    struct lms_engine_opts eo = {.max_batch = B, .max_seq = S};
    if (cli_model_read(&cm, model_path, &err))
        goto fail;
    char what[64];
    snprintf(what, sizeof what, "--seq-length %lld", (long long)S);
    cli_warn_positions(cmd, &a->base.co, model_path, &cm.m.arch, S, what);
    if (cli_model_backend(&cm, &a->base, &err) ||
        cli_model_engine(&cm, &eo, "", model_path, &err))
        goto fail;

    double t0 = cli_now(), sum = 0;
    int64_t n_scored = 0;
    if (score_windows(cm.e, ds, n_win, B, S, a->base.co.quiet || a->base.co.json, &sum,
                      &n_scored, &err))
        goto fail;
    double secs = cli_now() - t0;
    double loss = sum / (double)n_scored, tps = secs > 0 ? (double)(n_win * S) / secs : 0;
    if (a->base.co.json) {
        json_t *o = json_pack("{s:b,s:s,s:s,s:I,s:I,s:I,s:f,s:f,s:f,s:f,s:s,s:i,s:s}", "ok", 1,
                              "model", model_path, "data", a->data, "n_windows",
                              (json_int_t)n_win, "seq_length", (json_int_t)S, "n_scored",
                              (json_int_t)n_scored, "loss", loss, "perplexity", exp(loss),
                              "tokens_per_second", tps, "seconds", secs, "device",
                              lms_backend_name(cm.be), "n_threads", lms_backend_n_threads(cm.be),
                              "precision", a->base.precision);
        cli_print_json(o);
    } else if (!a->base.co.quiet) {
        printf("eval '%s' on '%s': %lld windows x %lld tokens, loss %.5f nats/token, "
               "perplexity %.4f (%lld scored tokens; %s, %d threads, %.2f s, %.0f tokens/s)\n",
               model_path, a->data, (long long)n_win, (long long)S, loss, exp(loss),
               (long long)n_scored, lms_backend_name(cm.be), lms_backend_n_threads(cm.be), secs,
               tps);
    }
    goto out;
fail:
    rc = cli_fail(cmd, &a->base.co, &err);
out:
    cli_model_close(&cm);
    lms_dataset_free(ds);
    return rc;
}

int cmd_eval(int argc, char **argv)
{
    struct eval_args a = {.S = 512, .B = 8, .base.precision = "fp32"};
    return cli_main(&spec, argc, argv, &a);
}
