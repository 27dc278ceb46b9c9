/* The command scaffold (cli/cli.h): one option parser driven by each command's table, the
 * shared option groups, the write tail and the model a command runs. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "lms/alloc.h"
#include "lms/comm.h"
#include "lms/engine.h"
#include "lms/hash.h"
#include "lms/json.h"
#include "lms/outdir.h"

#define MAX_OPTIONS 64

/* The shared groups as table rows: their fields lie in struct cli_args, the first member of
 * every command's argument struct, so the same offsets serve. */
enum { WRITE_DTYPE, WRITE_SHARD_SIZE };
static const struct group_row {
    unsigned group; /* 0: every command */
    struct cli_opt row;
} group_rows[] = {
    {0, CLI_FLAG("json", struct cli_args, co.json)},
    {0, {.name = "quiet", .kind = CLI_OPT_FLAG, .field = offsetof(struct cli_args, co.quiet),
         .letter = 'q'}},
    {CLI_FORCE, {.name = "force", .kind = CLI_OPT_FLAG,
                 .field = offsetof(struct cli_args, wo.force), .letter = 'f'}},
    {CLI_WRITE, CLI_STRING("to", struct cli_args, to)},
    {CLI_WRITE, CLI_CALL("dtype", WRITE_DTYPE)},
    {CLI_WRITE, CLI_CALL("max-shard-size", WRITE_SHARD_SIZE)},
    {CLI_RUN, CLI_STRING("device", struct cli_args, device)},
    {CLI_RUN, CLI_COUNT("threads", struct cli_args, threads, 1, 4096, "invalid --threads '%s'")},
    {CLI_PRECISION, CLI_STRING("precision", struct cli_args, precision)},
};
/* IN and OUT by name, the reference workflow's spelling (CLI_POS_IN_OUT) */
static const struct cli_opt in_out_rows[] = {
    CLI_STRING("restore-path", struct cli_args, in),
    CLI_STRING("save-path", struct cli_args, out),
};

/* The rows one command takes; getopt's code for a row is CODE + its index (above the codes
 * getopt itself returns: '?', ':' and the short options). */
#define CODE 256
struct table {
    const struct cli_opt *row[MAX_OPTIONS];
    bool shared[MAX_OPTIONS];
    struct option getopt[MAX_OPTIONS + 2];
    int n, help; /* help: the code of --help */
};

/* Two names of one option: rows that store the same way. */
static bool same_option(const struct cli_opt *x, const struct cli_opt *y)
{
    return x->kind == y->kind && x->field == y->field && x->id == y->id && x->min == y->min &&
           x->max == y->max && (x->bad == y->bad || (x->bad && y->bad && !strcmp(x->bad, y->bad)));
}

static void add_row(struct table *t, const struct cli_opt *row, bool shared)
{
    lms_assert(t->n < MAX_OPTIONS); /* a command's table outgrew the scaffold */
    /* the names of one option share their code, so that getopt takes an abbreviation of
     * both (--dat for --data and --data-paths) as that option rather than as ambiguous */
    int code = CODE + t->n;
    for (int i = 0; i < t->n; i++)
        if (t->shared[i] == shared && same_option(t->row[i], row)) {
            code = CODE + i;
            break;
        }
    t->row[t->n] = row;
    t->shared[t->n] = shared;
    t->getopt[t->n] = (struct option){row->name,
                                      row->kind == CLI_OPT_FLAG ? no_argument : required_argument,
                                      NULL, code};
    t->n++;
}

/* The row a short option stands for (spec.shorts decides which getopt accepts). */
static int short_row(const struct table *t, int c)
{
    if (c == 'h')
        return t->help;
    for (int i = 0; i < t->n; i++)
        if (t->row[i]->letter == c)
            return i;
    return -1;
}

static void build_table(const struct cli_spec *spec, struct table *t)
{
    t->n = 0;
    for (size_t i = 0; i < sizeof group_rows / sizeof group_rows[0]; i++)
        if (!group_rows[i].group || (spec->groups & group_rows[i].group))
            add_row(t, &group_rows[i].row, true);
    if (spec->positional == CLI_POS_IN_OUT)
        for (size_t i = 0; i < sizeof in_out_rows / sizeof in_out_rows[0]; i++)
            add_row(t, &in_out_rows[i], true);
    for (int i = 0; spec->opts && spec->opts[i].name; i++)
        add_row(t, &spec->opts[i], false);
    t->help = t->n;
    t->getopt[t->n] = (struct option){"help", no_argument, NULL, CODE + t->n};
    t->getopt[t->n + 1] = (struct option){NULL, 0, NULL, 0};
}

/* The write options' values, checked as they are read. */
static int write_option(const char *cmd, struct cli_args *b, int id, const char *value)
{
    if (id == WRITE_DTYPE && strcmp(value, "q8_0") == 0) {
        b->gguf.q8_0 = true; /* a GGUF block type, not an element type: checked in cli_formats */
        b->wo.dtype = LMS_DTYPE_COUNT;
        return 0;
    }
    if (id == WRITE_DTYPE)
        b->gguf.q8_0 = false; /* the last --dtype wins */
    if (id == WRITE_DTYPE &&
        (!lms_dtype_parse_user(value, &b->wo.dtype) ||
         (!lms_dtype_is_castable(b->wo.dtype) && b->wo.dtype != LMS_DTYPE_F8_E4M3)))
        return cli_usage_error(cmd, "unknown --dtype '%s' (bf16, f16, f32, fp8 for hf, q8_0 for "
                               "gguf)", value);
    if (id == WRITE_SHARD_SIZE &&
        (!cli_parse_size(value, &b->wo.max_shard_size) || b->wo.max_shard_size == 0))
        return cli_usage_error(cmd, "invalid --max-shard-size '%s'", value);
    return 0;
}

static int store(const struct cli_spec *spec, const struct cli_opt *row, bool shared, void *args,
                 const char *value, const char *word)
{
    char *dst = (char *)args + row->field;
    switch (row->kind) {
    case CLI_OPT_FLAG:
        *(bool *)(void *)dst = true;
        return 0;
    case CLI_OPT_STRING:
        *(const char **)(void *)dst = value;
        return 0;
    case CLI_OPT_COUNT: {
        int64_t *v = (int64_t *)(void *)dst;
        bool zero = row->min == 0 && !strcmp(value, "0"); /* cli_parse_count takes 1 and up */
        if (zero)
            *v = 0;
        else if (!cli_parse_count(value, v) || *v < row->min || (row->max && *v > row->max))
            return cli_usage_error(spec->name, row->bad, value);
        return 0;
    }
    case CLI_OPT_REAL: {
        double *v = (double *)(void *)dst;
        if (!cli_parse_real(value, v) || (row->min && *v == 0))
            return cli_usage_error(spec->name, row->bad, value);
        return 0;
    }
    case CLI_OPT_CALL:
        return shared ? write_option(spec->name, args, row->id, value)
                      : spec->on_option(args, row->id, value, word);
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
    case CLI_POS_REST:
        b->rest = argv + optind;
        b->n_rest = npos;
        break;
    }
    return CLI_PARSED;
}

/* The required options' usage errors, in table order. */
static int required(const struct cli_spec *spec, void *args)
{
    for (int i = 0; spec->opts && spec->opts[i].name; i++) {
        const struct cli_opt *row = &spec->opts[i];
        if (row->kind == CLI_OPT_STRING && row->bad &&
            !*(const char **)(void *)((char *)args + row->field))
            return cli_usage_error(spec->name, "%s", row->bad);
    }
    return CLI_PARSED;
}

int cli_parse(const struct cli_spec *spec, int argc, char **argv, void *args)
{
    struct cli_args *b = args;
    b->wo.dtype = LMS_DTYPE_COUNT;
    struct table t;
    build_table(spec, &t);
    int c;
    optind = 1;
    opterr = 0; /* the one usage line below names a bad option, not getopt */
    while ((c = getopt_long(argc, argv, spec->shorts, t.getopt, NULL)) != -1) {
        int i = c >= CODE ? c - CODE : short_row(&t, c);
        if (i == t.help) {
            for (size_t k = 0; k < sizeof spec->help / sizeof spec->help[0] && spec->help[k]; k++)
                fputs(spec->help[k], stdout);
            return CLI_EXIT_OK;
        }
        if (i < 0 || i >= t.n)
            return cli_usage_error(spec->name, "unknown or incomplete option '%s'",
                                   argv[optind - 1]);
        int rc = store(spec, t.row[i], t.shared[i], args, optarg, argv[optind - 1]);
        if (rc)
            return rc;
        if (spec->seen && !t.shared[i])
            spec->seen(args, t.row[i]->name);
    }
    int code = positionals(spec, argc, argv, b);
    if (code == CLI_PARSED)
        code = required(spec, args);
    if (code == CLI_PARSED && spec->check)
        code = spec->check(args);
    if (code == CLI_PARSED && spec->groups & CLI_RUN)
        code = cli_run_check(spec->name, b);
    return code;
}

int cli_main(const struct cli_spec *spec, int argc, char **argv, void *args)
{
    int code = cli_parse(spec, argc, argv, args);
    if (code != CLI_PARSED)
        return code;
    cli_interrupt_json(((const struct cli_args *)args)->co.json);
    return spec->run(args);
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
    if (a->gguf.q8_0 && strcmp((*dst)->name, "gguf") != 0)
        return cli_usage_error(cmd, "--dtype q8_0 is for --to gguf only");
    return CLI_PARSED;
}

struct lms_write_opts cli_write_opts(const struct cli_args *a)
{
    struct lms_write_opts wo = a->wo;
    if (a->gguf.q8_0) {
        wo.format_opts_for = "gguf";
        wo.format_opts = &a->gguf;
    }
    return wo;
}

enum lms_status cli_write_checkpoint(const struct cli_args *a, const struct lms_format *dst,
                                     const struct lms_model *m, const char *out,
                                     const char *label, struct lms_write_result *res,
                                     struct lms_error *err)
{
    struct cli_progress bar;
    cli_progress_begin(&bar, label, lms_model_nbytes(m), true, a->co.quiet);
    struct lms_write_opts wo = cli_write_opts(a);
    wo.progress = cli_progress_cb;
    wo.progress_ctx = &bar;
    enum lms_status rc = lms_checkpoint_write(dst, m, out, &wo, res, err);
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

enum lms_status cli_model_backend(struct cli_model *cm, const struct cli_args *a,
                                  struct lms_error *err)
{
    struct lms_backend_opts bo = {.n_threads = (int)a->threads, .precision = a->prec};
    return lms_backend_open(&a->dev, &bo, &cm->be, err);
}

enum lms_status cli_model_engine(struct cli_model *cm, const struct lms_engine_opts *eo,
                                 const char *role, const char *path, struct lms_error *err)
{
    enum lms_status rc = lms_engine_new(&cm->m, cm->be, eo, &cm->e, err);
    if (rc)
        lms_error_wrap(err, "%s'%s': ", role, path);
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

void cli_rank_device(struct cli_args *a, const struct lms_comm *comm)
{
    if (comm && a->dev.kind != LMS_DEVICE_CPU && a->device && !strchr(a->device, ':')) {
        struct lms_launch launch;
        lms_launch_detect(&launch);
        a->dev.index = launch.local_rank;
    }
}

int cli_fail_ranks(const char *cmd, const struct cli_common *co, struct lms_error *err,
                   struct lms_comm *comm, bool agreed)
{
    int world = lms_comm_world(comm);
    if (world > 1)
        lms_error_wrap(err, "rank %d of %d: ", lms_comm_rank(comm), world);
    int rc = cli_fail(cmd, co, err);
    if (world > 1 && !agreed) {
        fflush(NULL); /* the message goes out before the launcher ends this process */
        lms_comm_abort(comm, rc);
    }
    return rc;
}

/* An option's value as one 63-bit number: the hash of its canonical JSON text (sorted keys,
 * reals to 17 digits), so that 1e-4 and 0.0001 agree. Non-negative, so that its negation, which
 * turns the maximum over ranks into the minimum, cannot overflow. */
static int64_t option_hash(const json_t *v)
{
    char *s = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY |
                                JSON_REAL_PRECISION(17));
    uint64_t h = s ? lms_hash64(s, strlen(s), 0) : 0;
    free(s);
    return (int64_t)(h >> 1);
}

int cli_ranks_agree(const char *cmd, const struct cli_common *co, struct lms_comm *comm,
                    const json_t *opts)
{
    if (lms_comm_world(comm) < 2)
        return CLI_PARSED;
    struct lms_error err;
    lms_error_clear(&err);
    /* each option's hash, then their negations: one maximum over all ranks gives every
     * option's maximum and minimum (the same binary lists the same options everywhere) */
    size_t n = json_object_size(opts);
    int64_t *v = lms_calloc(2 * n + 1, sizeof *v);
    if (!v) {
        lms_error_set(&err, LMS_ENOMEM, "out of memory comparing the ranks' options");
        return cli_fail_ranks(cmd, co, &err, comm, false);
    }
    size_t i = 0;
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)opts, key, val)
        v[i++] = option_hash(val);
    for (i = 0; i < n; i++)
        v[n + i] = -v[i];
    if (lms_comm_max(comm, v, (int64_t)(2 * n), &err)) {
        lms_free(v);
        return cli_fail_ranks(cmd, co, &err, comm, false);
    }
    const char *differs = NULL;
    i = 0;
    json_object_foreach((json_t *)opts, key, val) {
        if (!differs && v[i] != -v[n + i])
            differs = key;
        i++;
    }
    lms_free(v);
    if (!differs)
        return CLI_PARSED;
    /* every rank knows: rank 0 says it once, the others leave with the same status */
    lms_error_set(&err, LMS_EINVAL, "the ranks were started with different %s; every rank of a "
                  "run needs the same options and inputs", differs);
    int rc = lms_comm_rank(comm) == 0 ? cli_fail(cmd, co, &err) : cli_exit_code(err.status);
    /* the reason is said once: a launcher that stops the other ranks when the first one leaves
     * must not add their interrupt lines to it, and no rank leaves before rank 0 has said it */
    cli_interrupt_silence();
    int64_t said = 0;
    struct lms_error ignored;
    lms_comm_max(comm, &said, 1, &ignored);
    return rc;
}
