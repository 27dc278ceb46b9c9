/* The command scaffold (cli/cli.h): one option parser driven by each command's table, the
 * shared option groups, the write tail and the model a command runs. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "lms/engine.h"
#include "lms/outdir.h"

/* getopt codes of the shared options; a command's own rows are OWN + their index */
enum {
    G_JSON = 1000, G_QUIET, G_HELP, G_FORCE, G_TO, G_DTYPE, G_SHARD, G_IN, G_OUT, G_DEVICE,
    G_THREADS, G_PRECISION, OWN = 2000,
};

#define MAX_OPTIONS 64

struct group_opt {
    unsigned group; /* 0: every command */
    struct option o;
};

static const struct group_opt group_opts[] = {
    {0, {"json", no_argument, NULL, G_JSON}},
    {0, {"quiet", no_argument, NULL, G_QUIET}},
    {0, {"help", no_argument, NULL, G_HELP}},
    {CLI_FORCE, {"force", no_argument, NULL, G_FORCE}},
    {CLI_WRITE, {"to", required_argument, NULL, G_TO}},
    {CLI_WRITE, {"dtype", required_argument, NULL, G_DTYPE}},
    {CLI_WRITE, {"max-shard-size", required_argument, NULL, G_SHARD}},
    {CLI_RUN, {"device", required_argument, NULL, G_DEVICE}},
    {CLI_RUN, {"threads", required_argument, NULL, G_THREADS}},
    {CLI_PRECISION, {"precision", required_argument, NULL, G_PRECISION}},
};

/* IN and OUT by name: the reference workflow's spelling */
static const struct option in_out_opts[] = {
    {"restore-path", required_argument, NULL, G_IN},
    {"save-path", required_argument, NULL, G_OUT},
};

static int own_option(const struct cli_spec *spec, const struct cli_opt *row, void *args,
                      const char *word)
{
    char *dst = (char *)args + row->field;
    switch (row->kind) {
    case CLI_OPT_FLAG:
        *(bool *)(void *)dst = true;
        return 0;
    case CLI_OPT_STRING:
        *(const char **)(void *)dst = optarg;
        return 0;
    case CLI_OPT_COUNT: {
        int64_t *v = (int64_t *)(void *)dst;
        if (!cli_parse_count(optarg, v) || *v < row->min || (row->max && *v > row->max))
            return cli_usage_error(spec->name, row->bad, optarg);
        return 0;
    }
    case CLI_OPT_CALL:
        return spec->on_option(args, row->id, optarg, word);
    }
    return 0;
}

static int group_option(const struct cli_spec *spec, int code, struct cli_args *b)
{
    switch (code) {
    case G_JSON: b->co.json = true; break;
    case G_QUIET: b->co.quiet = true; break;
    case G_FORCE: b->wo.force = true; break;
    case G_TO: b->to = optarg; break;
    case G_IN: b->in = optarg; break;
    case G_OUT: b->out = optarg; break;
    case G_DEVICE: b->device = optarg; break;
    case G_PRECISION: b->precision = optarg; break;
    case G_DTYPE:
        if (!lms_dtype_parse_user(optarg, &b->wo.dtype) || !lms_dtype_is_castable(b->wo.dtype))
            return cli_usage_error(spec->name, "unknown --dtype '%s' (bf16, f16, f32)", optarg);
        break;
    case G_SHARD:
        if (!cli_parse_size(optarg, &b->wo.max_shard_size) || b->wo.max_shard_size == 0)
            return cli_usage_error(spec->name, "invalid --max-shard-size '%s'", optarg);
        break;
    case G_THREADS:
        if (!cli_parse_count(optarg, &b->threads) || b->threads > 4096)
            return cli_usage_error(spec->name, "invalid --threads '%s'", optarg);
        break;
    }
    return 0;
}

static int positionals(const struct cli_spec *spec, int argc, char **argv, struct cli_args *b)
{
    int npos = argc - optind;
    switch (spec->positional) {
    case CLI_POS_NONE:
        if (npos > 0)
            return cli_usage_error(spec->name, "unexpected argument '%s'", argv[optind]);
        break;
    case CLI_POS_ONE:
        if (npos != 1)
            return cli_usage_error(spec->name, spec->positional_usage, npos);
        b->in = argv[optind];
        break;
    case CLI_POS_IN_OUT:
        if (!b->in && npos > 0)
            b->in = argv[optind++], npos--;
        if (!b->out && npos > 0)
            b->out = argv[optind++], npos--;
        if (!b->in || npos > 0 || (!b->out && !spec->out_optional))
            return cli_usage_error(spec->name, "expected IN and OUT");
        break;
    }
    return CLI_PARSED;
}

int cli_parse(const struct cli_spec *spec, int argc, char **argv, void *args)
{
    struct cli_args *b = args;
    b->wo.dtype = LMS_DTYPE_COUNT;
    struct option opts[MAX_OPTIONS + 1];
    int n = 0;
    for (size_t i = 0; i < sizeof group_opts / sizeof group_opts[0]; i++)
        if (!group_opts[i].group || (spec->groups & group_opts[i].group))
            opts[n++] = group_opts[i].o;
    if (spec->positional == CLI_POS_IN_OUT) {
        opts[n++] = in_out_opts[0];
        opts[n++] = in_out_opts[1];
    }
    for (int i = 0; spec->opts && spec->opts[i].name && n < MAX_OPTIONS; i++) {
        const struct cli_opt *row = &spec->opts[i];
        opts[n++] = (struct option){row->name, row->kind == CLI_OPT_FLAG ? no_argument
                                                                          : required_argument,
                                    NULL, OWN + i};
    }
    opts[n] = (struct option){NULL, 0, NULL, 0};

    int c;
    optind = 1;
    opterr = spec->getopt_reports;
    while ((c = getopt_long(argc, argv, spec->shorts, opts, NULL)) != -1) {
        int rc = 0;
        if (c >= OWN) {
            rc = own_option(spec, &spec->opts[c - OWN], args, argv[optind - 1]);
        } else if (c == G_HELP || c == 'h') {
            for (int i = 0; spec->help[i]; i++)
                fputs(spec->help[i], stdout);
            return CLI_EXIT_OK;
        } else if (c == 'q' || c == 'f' || c >= G_JSON) {
            rc = group_option(spec, c == 'q' ? G_QUIET : c == 'f' ? G_FORCE : c, b);
        } else if (spec->getopt_reports) {
            return cli_usage_error(spec->name, "unknown option");
        } else {
            return cli_usage_error(spec->name, "unknown or incomplete option '%s'",
                                   argv[optind - 1]);
        }
        if (rc)
            return rc;
    }
    if (spec->groups & CLI_RUN && !b->device)
        b->device = "cpu";
    return positionals(spec, argc, argv, b);
}

int cli_run_check(const char *cmd, struct cli_args *a)
{
    struct lms_error err;
    lms_error_clear(&err);
    if (lms_device_parse(a->device ? a->device : "cpu", &a->dev, &err))
        return cli_usage_error(cmd, "%s", err.msg);
    a->prec = LMS_PRECISION_AUTO;
    if (a->precision && lms_precision_parse(a->precision, &a->prec, &err))
        return cli_usage_error(cmd, "%s", err.msg);
    return CLI_PARSED;
}

int cli_formats(const char *cmd, const struct cli_args *a, const struct lms_format **src,
                const struct lms_format **dst)
{
    struct lms_error err;
    lms_error_clear(&err);
    *src = lms_format_detect(a->in, &err);
    if (!*src)
        return cli_fail(cmd, &a->co, &err);
    *dst = a->to ? lms_format_find(a->to) : *src;
    if (!*dst)
        return cli_usage_error(cmd, "unknown --to '%s'", a->to);
    return CLI_PARSED;
}

enum lms_status cli_write_checkpoint(const struct cli_args *a, const struct lms_format *dst,
                                     const struct lms_model *m, const char *out,
                                     const char *label, struct lms_write_result *res,
                                     struct lms_error *err)
{
    struct cli_progress bar;
    cli_progress_begin(&bar, label, lms_model_nbytes(m), true, a->co.quiet);
    struct lms_write_opts wo = a->wo;
    wo.progress = cli_progress_cb;
    wo.progress_ctx = &bar;
    enum lms_status rc = dst->write(m, out, &wo, res, err);
    if (!rc)
        cli_progress_end(&bar);
    else if (bar.enabled)
        fputc('\n', stderr); /* the error goes on its own line, not after the bar */
    return rc;
}

enum lms_status cli_model_read(struct cli_model *cm, const char *path, struct lms_error *err)
{
    enum lms_status rc = lms_checkpoint_read(path, &cm->m, err);
    cm->have_model = rc == LMS_OK;
    return rc;
}

enum lms_status cli_model_start(struct cli_model *cm, const struct cli_args *a,
                                const struct lms_engine_opts *eo, const char *path,
                                struct lms_error *err)
{
    struct lms_backend_opts bo = {.n_threads = (int)a->threads, .precision = a->prec};
    enum lms_status rc = lms_backend_open(&a->dev, &bo, &cm->be, err);
    if (!rc && eo && (rc = lms_engine_new(&cm->m, cm->be, eo, &cm->e, err)))
        lms_error_wrap(err, "'%s': ", path);
    return rc;
}

void cli_model_close(struct cli_model *cm)
{
    lms_engine_free(cm->e);
    lms_backend_free(cm->be);
    if (cm->have_model)
        lms_model_release(&cm->m);
    memset(cm, 0, sizeof *cm);
}
