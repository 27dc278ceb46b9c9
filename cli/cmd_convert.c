/* lmsurgeon convert: read a checkpoint in any known format, write it in the chosen one,
 * optionally resharded and cast. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/convert_batch.h"
#include "lms/format.h"
#include "lms/json.h"
#include "lms/paths.h"

const char cli_convert_usage[] =
    "usage: lmsurgeon convert IN OUT [--to FORMAT] [--dtype bf16|f16|f32|fp8|q8_0]\n"
    "                         [--max-shard-size SIZE] [--skip-unchanged] [--force] [--json]\n"
    "                         [--quiet]\n"
    "       lmsurgeon convert --batch MANIFEST.jsonl [--jobs N] [--max-memory SIZE] [--force]\n"
    "                         [--json] [--quiet]\n"
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
    "  --skip-unchanged      keep a record beside OUT (OUT" CLI_RECORD_SUFFIX "): the content\n"
    "                        fingerprint of IN's files and these options; when OUT exists, its\n"
    "                        record matches and OUT's files are as the record left them, write\n"
    "                        nothing and report it skipped (otherwise convert as usual)\n"
    "  --force               replace OUT if it exists and is not empty (whatever is there when\n"
    "                        the output is complete)\n"
    "  --json                print one JSON object on stdout\n"
    "  --quiet               no progress bar, no summary\n"
    "  -h, --help            show this help\n"
    "\n"
    "Batch: --batch MANIFEST.jsonl converts one item per line, each a JSON object\n"
    "  {\"in\": IN, \"out\": OUT, \"to\": ..., \"dtype\": ..., \"max-shard-size\": ...,\n"
    "   \"force\": true}\n"
    "(in and out required; blank lines ignored), each as 'convert IN OUT ... --skip-unchanged'\n"
    "in a process of its own, so a failing item never stops the others. One JSON line per item\n"
    "on stdout as it ends: {\"line\", \"status\": ok|skipped|failed, \"in\", \"out\", \"bytes\",\n"
    "\"seconds\", \"error\", \"exit_code\", \"warning\"}; --json adds a summary line last.\n"
    "Exit 0 when every item is ok or skipped, 8 when any failed.\n"
    "  --jobs N              items converting at once (default 1). An item starts, in manifest\n"
    "                        order, only when its estimated peak memory (64 MiB + the tensors\n"
    "                        its reader holds in memory: a Q8_0 GGUF input as f32; the writers\n"
    "                        stream) fits beside those of the items running, within\n"
    "                        --max-memory, and its estimated output fits the free space of\n"
    "                        OUT's file system beside theirs. An item that cannot fit even\n"
    "                        alone fails (exit 5 or 4)\n"
    "  --max-memory SIZE     memory the items may use together (default: MemAvailable when\n"
    "                        the batch starts)\n"
    "  --force               every item replaces its OUT (as \"force\": true does for one)\n"
    "\n"
    "Aliases of the reference workflow: --restore-path/--restore_path (IN), --save-path (OUT).\n";

static int run(void *args);

struct convert_args {
    struct cli_args base;
    bool skip_unchanged;
};

static const struct cli_opt opts[] = {
    CLI_FLAG("skip-unchanged", struct convert_args, skip_unchanged),
    CLI_END,
};

static const struct cli_spec spec = {
    .name = "convert", .help = {cli_convert_usage}, .shorts = "hfq",
    .groups = CLI_FORCE | CLI_WRITE, .positional = CLI_POS_IN_OUT, .opts = opts, .run = run,
};

/* The options that decide what a conversion writes, as its record keeps them: the format's
 * name and the dtype as written, the shard size with its default resolved. */
static json_t *record_options(const struct cli_args *a, const struct lms_format *dst)
{
    const char *dtype = a->gguf.q8_0                    ? "q8_0"
                        : a->wo.dtype != LMS_DTYPE_COUNT ? lms_dtype_name(a->wo.dtype)
                                                         : "unchanged";
    uint64_t shard = a->wo.max_shard_size ? a->wo.max_shard_size : LMS_DEFAULT_SHARD_SIZE;
    return json_pack("{s:s,s:s,s:I}", "to", dst->name, "dtype", dtype, "max_shard_size",
                     (json_int_t)shard);
}

static void print_skipped(const struct cli_args *a, const struct lms_format *src,
                          const struct lms_format *dst, uint64_t bytes, double secs)
{
    if (a->co.json) {
        json_t *o = json_pack("{s:b,s:b,s:s,s:s,s:s,s:s,s:I,s:I,s:f}", "ok", 1, "skipped", 1,
                              "input", a->in, "output", a->out, "from", src->name, "to",
                              dst->name, "bytes", (json_int_t)0, "output_bytes",
                              (json_int_t)bytes, "seconds", secs);
        cli_print_json(o);
    } else if (!a->co.quiet) {
        printf("skipped '%s': '%s' is its conversion with these options, unchanged since "
               "(record %s%s)\n", a->in, a->out, a->out, CLI_RECORD_SUFFIX);
    }
}

static int run(void *args)
{
    const struct convert_args *ca = args;
    const struct cli_args *a = &ca->base;
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
    char input_fp[LMS_HASH64_HEX] = "";
    json_t *record = NULL;
    if (ca->skip_unchanged) {
        uint64_t in_bytes, out_bytes;
        record = record_options(a, dst);
        if (!record)
            lms_error_set(&err, LMS_ENOMEM, "out of memory");
        else if (!cli_tree_fingerprint(a->in, true, input_fp, &in_bytes, &err) &&
                 cli_record_matches(a->out, input_fp, record, &out_bytes)) {
            json_decref(record);
            print_skipped(a, src, dst, out_bytes, cli_now() - t0);
            return CLI_EXIT_OK;
        }
        if (err.status) {
            json_decref(record);
            return cli_fail(spec.name, &a->co, &err);
        }
    }
    struct lms_model m;
    if (src->read(a->in, &m, &err)) {
        json_decref(record);
        return cli_fail(spec.name, &a->co, &err);
    }
    cli_warn_model(spec.name, &a->co, &m);
    struct lms_write_result res;
    enum lms_status rc = cli_write_checkpoint(a, dst, &m, a->out, "converting", &res, &err);
    if (!rc && record)
        rc = cli_record_write(a->out, a->in, input_fp, record, &err);
    json_decref(record);
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
        if (o && ca->skip_unchanged)
            json_object_set_new(o, "skipped", json_false());
        /* the reader's warning, also under --quiet: a script (or --batch) has no stderr line */
        if (o)
            json_object_set_new(o, "warning", m.warning ? json_string(m.warning) : json_null());
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

/* --batch (before any "--") makes it the batch runner, whose options differ. */
static bool wants_batch(int argc, char **argv)
{
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
        if (!strcmp(argv[i], "--batch") || !strncmp(argv[i], "--batch=", 8))
            return true;
    return false;
}

int cmd_convert(int argc, char **argv)
{
    if (wants_batch(argc, argv))
        return cmd_convert_batch(argc, argv);
    struct convert_args a = {0};
    return cli_main(&spec, argc, argv, &a);
}

