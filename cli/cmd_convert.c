/* lmsurgeon convert: read a checkpoint in any known format, write it in the chosen one,
 * optionally resharded and cast. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "lms/format.h"
#include "lms/json.h"
#include "lms/outdir.h"

static const char usage_text[] =
    "usage: lmsurgeon convert IN OUT [--to FORMAT] [--dtype bf16|f16|f32] [--max-shard-size SIZE]\n"
    "                         [--force] [--json] [--quiet]\n"
    "\n"
    "Converts the checkpoint IN (format detected) to OUT. OUT is written beside itself in a\n"
    "temporary directory and renamed into place only when complete; an interrupted run leaves\n"
    "OUT as it was.\n"
    "\n"
    "  --to FORMAT           output format: hf, nemo (NeMo 2), megatron (Megatron-Bridge\n"
    "                        iter_N layout) or nemo1 (a NeMo 1 .nemo tarball: OUT is one file)\n"
    "                        (default: the input's format)\n"
    "  --dtype TYPE          cast floating-point tensors (round to nearest even; NaN/Inf kept)\n"
    "  --max-shard-size SIZE bytes of tensor data per shard, e.g. 5GB, 500MB, 2GiB (default 5GB)\n"
    "  --force               replace OUT if it exists and is not empty\n"
    "  --json                print one JSON object on stdout\n"
    "  --quiet               no progress bar, no summary\n"
    "  -h, --help            show this help\n"
    "\n"
    "Aliases of the reference workflow: --restore-path/--restore_path (IN), --save-path (OUT).\n";

int cmd_convert(int argc, char **argv)
{
    static const struct option opts[] = {
        {"to", required_argument, NULL, 'T'},
        {"dtype", required_argument, NULL, 'd'},
        {"max-shard-size", required_argument, NULL, 's'},
        {"force", no_argument, NULL, 'f'},
        {"json", no_argument, NULL, 'j'},
        {"quiet", no_argument, NULL, 'q'},
        {"restore-path", required_argument, NULL, 'i'},
        {"save-path", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct cli_common co = {0};
    struct lms_write_opts wo = {.dtype = LMS_DTYPE_COUNT};
    const char *to = NULL, *in = NULL, *out = NULL;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "hfq", opts, NULL)) != -1) {
        switch (c) {
        case 'T':
            to = optarg;
            break;
        case 'd':
            if (!lms_dtype_parse_user(optarg, &wo.dtype) || !lms_dtype_is_castable(wo.dtype))
                return cli_usage_error("convert", "unknown --dtype '%s' (bf16, f16, f32)", optarg);
            break;
        case 's':
            if (!cli_parse_size(optarg, &wo.max_shard_size) || wo.max_shard_size == 0)
                return cli_usage_error("convert", "invalid --max-shard-size '%s'", optarg);
            break;
        case 'f':
            wo.force = true;
            break;
        case 'j':
            co.json = true;
            break;
        case 'q':
            co.quiet = true;
            break;
        case 'i':
            in = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 'h':
            fputs(usage_text, stdout);
            return CLI_EXIT_OK;
        default:
            return cli_usage_error("convert", "unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    int npos = argc - optind;
    if (!in && npos > 0)
        in = argv[optind++], npos--;
    if (!out && npos > 0)
        out = argv[optind++], npos--;
    if (!in || !out || npos > 0)
        return cli_usage_error("convert", "expected IN and OUT");

    struct lms_error err;
    lms_error_clear(&err);
    if (lms_path_check_not_input(out, in, &err))
        return cli_fail("convert", &co, &err);
    const struct lms_format *src = lms_format_detect(in, &err);
    if (!src)
        return cli_fail("convert", &co, &err);
    const struct lms_format *dst = to ? lms_format_find(to) : src;
    if (!dst)
        return cli_usage_error("convert", "unknown --to '%s'", to);

    double t0 = cli_now();
    struct lms_model m;
    if (src->read(in, &m, &err))
        return cli_fail("convert", &co, &err);
    struct cli_progress bar;
    cli_progress_begin(&bar, "converting", lms_model_nbytes(&m), true, co.quiet);
    wo.progress = cli_progress_cb;
    wo.progress_ctx = &bar;
    struct lms_write_result res;
    enum lms_status rc = dst->write(&m, out, &wo, &res, &err);
    if (!rc)
        cli_progress_end(&bar);
    else if (bar.enabled)
        fputc('\n', stderr);
    double secs = cli_now() - t0;
    if (rc) {
        lms_model_release(&m);
        return cli_fail("convert", &co, &err);
    }
    const char *out_dtype = wo.dtype != LMS_DTYPE_COUNT ? lms_dtype_name(wo.dtype) : "unchanged";
    if (co.json) {
        json_t *o = json_pack("{s:b,s:s,s:s,s:s,s:s,s:s,s:i,s:i,s:I,s:i,s:f}", "ok", 1, "input", in,
                              "output", out, "from", src->name, "to", dst->name, "dtype", out_dtype,
                              "n_tensors", res.n_tensors, "n_shards", res.n_shards, "bytes",
                              (json_int_t)res.bytes, "n_files_copied", res.n_aux_files, "seconds",
                              secs);
        cli_print_json(o);
    } else if (!co.quiet) {
        char bytes[32], rate[32];
        cli_format_bytes(res.bytes, bytes, sizeof(bytes));
        cli_format_bytes(secs > 0 ? (uint64_t)((double)res.bytes / secs) : 0, rate, sizeof(rate));
        printf("converted '%s' (%s, %s) to '%s' (%s, dtype %s): %d tensors, %s in %d shard%s, "
               "%d file%s copied, %.2f s (%s/s)\n",
               in, src->name, lms_dtype_name(m.arch.dtype), out, dst->name, out_dtype,
               res.n_tensors, bytes, res.n_shards, res.n_shards == 1 ? "" : "s", res.n_aux_files,
               res.n_aux_files == 1 ? "" : "s", secs, rate);
    }
    lms_model_release(&m);
    return CLI_EXIT_OK;
}
