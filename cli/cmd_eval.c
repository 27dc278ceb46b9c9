/* lmsurgeon eval: mean next-token cross-entropy and perplexity of a checkpoint over the first N
 * non-overlapping windows of a token dataset (the evaluation protocol every quality figure
 * uses): window k is stream positions [k*S, (k+1)*S), positions 0..S-2 predict 1..S-1, fp32. */
#include <getopt.h>
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

static const char *cmd = "eval";

int cmd_eval(int argc, char **argv)
{
    static const struct option opts[] = {
        {"data", required_argument, NULL, 'D'},
        {"seq-length", required_argument, NULL, 'S'},
        {"num-samples", required_argument, NULL, 'n'},
        {"all", no_argument, NULL, 'a'},
        {"batch-size", required_argument, NULL, 'b'},
        {"device", required_argument, NULL, 'd'},
        {"threads", required_argument, NULL, 't'},
        {"precision", required_argument, NULL, 'P'},
        {"json", no_argument, NULL, 'j'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct cli_common co = {0};
    const char *data = NULL, *device = "cpu", *model_path = NULL, *precision = "fp32";
    int64_t S = 512, n_win = 256, B = 8, threads = 0;
    bool all = false, have_n = false;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "hq", opts, NULL)) != -1) {
        switch (c) {
        case 'D':
            data = optarg;
            break;
        case 'S':
            if (!cli_parse_count(optarg, &S) || S < 2 || S > (1 << 20))
                return cli_usage_error(cmd, "invalid --seq-length '%s' (2 to 1048576)", optarg);
            break;
        case 'n':
            if (!cli_parse_count(optarg, &n_win))
                return cli_usage_error(cmd, "invalid --num-samples '%s'", optarg);
            have_n = true;
            break;
        case 'a':
            all = true;
            break;
        case 'b':
            if (!cli_parse_count(optarg, &B) || B > 4096)
                return cli_usage_error(cmd, "invalid --batch-size '%s' (1 to 4096)", optarg);
            break;
        case 'd':
            device = optarg;
            break;
        case 't':
            if (!cli_parse_count(optarg, &threads) || threads > 4096)
                return cli_usage_error(cmd, "invalid --threads '%s'", optarg);
            break;
        case 'P':
            precision = optarg;
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
    if (!data)
        return cli_usage_error(cmd, "--data PREFIX is required");
    if (all && have_n)
        return cli_usage_error(cmd, "--all and --num-samples exclude each other");

    struct lms_error err;
    lms_error_clear(&err);
    struct lms_device dev;
    if (lms_device_parse(device, &dev, &err))
        return cli_usage_error(cmd, "%s", err.msg);
    enum lms_precision prec;
    if (lms_precision_parse(precision, &prec, &err))
        return cli_usage_error(cmd, "%s", err.msg);

    int rc = CLI_EXIT_OK;
    struct lms_dataset *ds = NULL;
    struct lms_backend *be = NULL;
    struct lms_engine *e = NULL;
    struct lms_model m;
    int32_t *ids = NULL, *tgt = NULL;
    bool have_model = false;

    if (lms_data_open(data, &ds, &err))
        goto fail;
    int64_t avail = lms_dataset_n_tokens(ds) / S;
    if (all)
        n_win = avail;
    if (n_win > avail || n_win == 0) {
        rc = cli_usage_error(cmd, "dataset '%s' has %lld tokens: %lld full windows of %lld, "
                             "%lld requested",
                             data, (long long)lms_dataset_n_tokens(ds), (long long)avail,
                             (long long)S, (long long)n_win);
        goto out;
    }
    if (B > n_win)
        B = n_win;
    if (lms_checkpoint_read(model_path, &m, &err))
        goto fail;
    have_model = true;
    struct lms_backend_opts bo = {.n_threads = (int)threads, .precision = prec};
    if (lms_backend_open(&dev, &bo, &be, &err))
        goto fail;
    struct lms_engine_opts eo = {.max_batch = B, .max_seq = S};
    if (lms_engine_new(&m, be, &eo, &e, &err)) {
        lms_error_wrap(&err, "'%s': ", model_path);
        goto fail;
    }
    ids = lms_malloc((size_t)(B * S) * sizeof(int32_t));
    tgt = lms_malloc((size_t)(B * S) * sizeof(int32_t));
    if (!ids || !tgt) {
        lms_error_set(&err, LMS_ENOMEM, "out of memory for %lld x %lld ids", (long long)B,
                      (long long)S);
        goto fail;
    }

    struct cli_progress bar;
    cli_progress_begin(&bar, "evaluating", (uint64_t)(n_win * S), false, co.quiet || co.json);
    double t0 = cli_now(), sum = 0;
    int64_t n_scored = 0;
    for (int64_t w0 = 0; w0 < n_win; w0 += B) {
        int64_t nb = n_win - w0 < B ? n_win - w0 : B;
        if (lms_dataset_read(ds, w0 * S, (w0 + nb) * S, ids, (size_t)(B * S), &err))
            goto fail_bar;
        for (int64_t i = 0; i < nb * S; i++)
            tgt[i] = i % S == S - 1 ? -1 : ids[i + 1];
        struct lms_forward f = {.ids = ids, .batch = nb, .seq = S, .targets = tgt};
        if (lms_engine_forward(e, &f, &err))
            goto fail_bar;
        sum += f.loss_sum;
        n_scored += f.n_scored;
        cli_progress_update(&bar, (uint64_t)((w0 + nb) * S));
    }
    cli_progress_end(&bar);
    double secs = cli_now() - t0;
    double loss = sum / (double)n_scored, tps = secs > 0 ? (double)(n_win * S) / secs : 0;
    if (co.json) {
        json_t *o = json_pack("{s:b,s:s,s:s,s:I,s:I,s:I,s:f,s:f,s:f,s:f,s:s,s:i,s:s}", "ok", 1,
                              "model", model_path, "data", data, "n_windows", (json_int_t)n_win,
                              "seq_length", (json_int_t)S, "n_scored", (json_int_t)n_scored,
                              "loss", loss, "perplexity", exp(loss), "tokens_per_second", tps,
                              "seconds", secs, "device", lms_backend_name(be), "n_threads",
                              lms_backend_n_threads(be), "precision", precision);
        cli_print_json(o);
    } else if (!co.quiet) {
        printf("eval '%s' on '%s': %lld windows x %lld tokens, loss %.5f nats/token, "
               "perplexity %.4f (%lld scored tokens; %s, %d threads, %.2f s, %.0f tokens/s)\n",
               model_path, data, (long long)n_win, (long long)S, loss, exp(loss),
               (long long)n_scored, lms_backend_name(be), lms_backend_n_threads(be), secs, tps);
    }
    goto out;
fail_bar:
    if (bar.enabled)
        fputc('\n', stderr);
fail:
    rc = cli_fail(cmd, &co, &err);
out:
    lms_free(ids);
    lms_free(tgt);
    lms_engine_free(e);
    lms_backend_free(be);
    if (have_model)
        lms_model_release(&m);
    lms_dataset_free(ds);
    return rc;
}
