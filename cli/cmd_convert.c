/* lmsurgeon convert: read a checkpoint in any known format, write it in the chosen one,
 * optionally resharded and cast. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "lms/format.h"
#include "lms/json.h"
#include "lms/paths.h"

static const char usage_text[] =
    "usage: lmsurgeon convert IN OUT [--to FORMAT] [--dtype bf16|f16|f32|fp8|q8_0]\n"
    "                         [--max-shard-size SIZE] [--force] [--json] [--quiet]\n"
    "\n"
    "Converts the checkpoint IN (format detected) to OUT. OUT is written beside itself in a\n"
    "temporary directory and renamed into place only when complete; an interrupted run leaves\n"
    "OUT as it was. Without --force, an OUT that appears during the run is left alone (exit 2;\n"
    "the finished output is kept beside it).\n"
    "\n"
    "  --to FORMAT           output format: hf, nemo (NeMo 2), megatron (Megatron-Bridge\n"
    "                        iter_N layout), nemo1 (a NeMo 1 .nemo tarball: OUT is one file)\n"
    "                        or gguf (llama.cpp's GGUF: OUT is one file)\n"
    "                        (default: the input's format)\n"
    "  --dtype TYPE          cast floating-point tensors (round to nearest even; NaN/Inf kept);\n"
    "                        fp8 (hf only): linear weights as E4M3 in 128 x 128 blocks, each\n"
    "                        with a float32 scale (NAME_scale_inv), the rest bf16;\n"
    "                        q8_0 (gguf only): matrices as llama.cpp's Q8_0 blocks, 1-D f32\n"
    "  --max-shard-size SIZE bytes of tensor data per shard, e.g. 5GB, 500MB, 2GiB (default 5GB)\n"
    "  --force               replace OUT if it exists and is not empty (whatever is there when\n"
    "                        the output is complete)\n"
    "  --json                print one JSON object on stdout\n"
    "  --quiet               no progress bar, no summary\n"
    "  -h, --help            show this help\n"
    "\n"
    "Aliases of the reference workflow: --restore-path/--restore_path (IN), --save-path (OUT).\n";

static int run(void *args);

static const struct cli_spec spec = {
    .name = "convert", .help = {usage_text}, .shorts = "hfq", .groups = CLI_FORCE | CLI_WRITE,
    .positional = CLI_POS_IN_OUT,
    .run = run,
};

static int run(void *args)
{
    const struct cli_args *a = args;
    struct lms_error err;
    lms_error_clear(&err);
    const struct lms_path_role paths[] = {{a->out, NULL, LMS_PATH_WRITE},
                                          {a->in, NULL, LMS_PATH_READ}};
    if (lms_paths_check(paths, 2, &err))
        return cli_fail(spec.name, &a->co, &err);
    const struct lms_format *src, *dst;
    int code = cli_formats(spec.name, a, &src, &dst);
    if (code != CLI_PARSED)
        return code;

    double t0 = cli_now();
    struct lms_model m;
    if (src->read(a->in, &m, &err))
        return cli_fail(spec.name, &a->co, &err);
    struct lms_write_result res;
    enum lms_status rc = cli_write_checkpoint(a, dst, &m, a->out, "converting", &res, &err);
    double secs = cli_now() - t0;
    if (rc) {
        lms_model_release(&m);
        return cli_fail(spec.name, &a->co, &err);
    }
    const char *out_dtype = a->gguf.q8_0                    ? "Q8_0"
                            : a->wo.dtype != LMS_DTYPE_COUNT ? lms_dtype_name(a->wo.dtype)
                                                             : "unchanged";
    if (a->co.json) {
        json_t *o = json_pack("{s:b,s:s,s:s,s:s,s:s,s:s,s:i,s:i,s:I,s:i,s:f}", "ok", 1, "input",
                              a->in, "output", a->out, "from", src->name, "to", dst->name,
                              "dtype", out_dtype, "n_tensors", res.n_tensors, "n_shards",
                              res.n_shards, "bytes", (json_int_t)res.bytes, "n_files_copied",
                              res.n_aux_files, "seconds", secs);
        cli_print_json(o);
    } else if (!a->co.quiet) {
        char bytes[32], rate[32];
        cli_format_bytes(res.bytes, bytes, sizeof(bytes));
        cli_format_bytes(secs > 0 ? (uint64_t)((double)res.bytes / secs) : 0, rate, sizeof(rate));
        printf("converted '%s' (%s, %s) to '%s' (%s, dtype %s): %d tensors, %s in %d shard%s, "
               "%d file%s copied, %.2f s (%s/s)\n",
               a->in, src->name, lms_dtype_name(m.arch.dtype), a->out, dst->name, out_dtype,
               res.n_tensors, bytes, res.n_shards, res.n_shards == 1 ? "" : "s", res.n_aux_files,
               res.n_aux_files == 1 ? "" : "s", secs, rate);
    }
    lms_model_release(&m);
    return CLI_EXIT_OK;
}

int cmd_convert(int argc, char **argv)
{
    struct cli_args a = {0};
    return cli_main(&spec, argc, argv, &a);
}
