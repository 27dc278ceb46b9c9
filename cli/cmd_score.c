/* lmsurgeon score: activation importance of a model on calibration data (include/lms/score.h),
 * written as an importance file that `prune --importance` reads; `--merge` adds the raw sums of
 * files scored over disjoint rows into one. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "lms/alloc.h"
#include "lms/comm.h"
#include "lms/format.h"
#include "lms/json.h"
#include "lms/outdir.h"
#include "lms/paths.h"
#include "lms/score.h"

/* Several processes (mpirun / srun): rank k scores its share of the rows, the raw sums are added
 * over the ranks (they are additive, as for --merge), and rank 0 derives and writes the file
 * of the whole row range. */
static enum lms_status sum_over_ranks(struct lms_comm *c, struct lms_importance *imp,
                                      struct lms_gram *g, const struct lms_score_opts *whole,
                                      struct lms_error *err)
{
    struct lms_importance_raw *x = &imp->raw;
    int64_t L = imp->n_layers, n_starts = imp->block_size ? L - imp->block_size + 1 : 0;
    struct {
        double *p;
        int64_t n;
    } arrays[] = {{x->hidden_sq, L * 2 * imp->hidden}, {x->ffn_sq, L * imp->ffn},
                  {x->head_sq, L * imp->n_heads},      {x->layer_cos, L},
                  {x->block_cos, n_starts},            {x->layer_loss, L},
                  {x->block_loss, n_starts}};
    enum lms_status rc = LMS_OK;
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0] && !rc; i++)
        if (arrays[i].p) /* the same on every rank: the options are */
            rc = lms_comm_sum(c, arrays[i].p, arrays[i].n, err);
    double counts[4] = {(double)x->n_rows, (double)x->n_cos_rows, (double)x->n_loss_tokens,
                        x->base_loss};
    if (!rc)
        rc = lms_comm_sum(c, counts, 4, err);
    for (int k = 0; g && !rc && k < LMS_GRAM_KINDS; k++) {
        int64_t d = g->dim[k];
        rc = lms_comm_sum(c, g->gram[k], g->n_layers * d * d, err);
        if (!rc)
            rc = lms_comm_sum(c, g->sum[k], g->n_layers * d, err);
    }
    if (rc)
        return rc;
    if (g) {
        g->n_rows = (int64_t)counts[0];
        g->n_tokens = g->n_rows * g->row_length;
    }
    x->n_rows = (int64_t)counts[0];
    x->n_cos_rows = (int64_t)counts[1];
    x->n_loss_tokens = (int64_t)counts[2];
    x->base_loss = counts[3];
    if (imp->source) {
        json_object_set_new(imp->source, "rows", json_integer(x->n_rows));
        json_object_set_new(imp->source, "row_begin", json_integer(whole->row_begin));
        json_object_set_new(imp->source, "row_end", json_integer(whole->row_end));
        json_object_set_new(imp->source, "ranks", json_integer(lms_comm_world(c)));
    }
    return lms_importance_derive(imp, imp->groups != NULL, err);
}

static const char usage_text[] =
    "usage: lmsurgeon score MODEL --data PREFIX -o FILE [--num-samples 1024 | --rows FROM:TO]\n"
    "                       [--seq-length 4096] [--micro-batch-size 4] [--seed 1234]\n"
    "                       [--sequential] [--layer-metric bi|block-bi|ppl|contiguous]\n"
    "                       [--target-num-layers N | --block-size N] [--axes LIST]\n"
    "                       [--device cpu|cuda[:N]] [--threads N] [--precision fp32|bf16|auto]\n"
    "                       [--reconstruct] [--force] [--json] [--quiet]\n"
    "       lmsurgeon score --merge A.json B.json ... -o FILE [--force] [--json] [--quiet]\n"
    "\n"
    "Runs MODEL forward over calibration rows and writes the activation importance of every\n"
    "layer, FFN neuron, attention head and hidden channel (README: \"Importance file\"), with\n"
    "the raw sums they are made of, so that files scored over disjoint rows merge exactly.\n"
    "\n"
    "Rows: the data's token stream is cut into non-overlapping windows of S tokens (only whole\n"
    "windows, one pass); with a seed the documents and then the windows are shuffled by the\n"
    "sampler (deterministic), with --sequential they stay in stream order. Row r is the r-th\n"
    "window of that order; a run reads rows [FROM, TO) (--num-samples N = rows 0:N).\n"
    "\n"
    "  --data PREFIX          Megatron indexed dataset PREFIX.bin/.idx, or a raw id file ending\n"
    "                         in .u16 or .i32 (--data_paths is accepted as well)\n"
    "  -o, --output FILE      the importance file to write (atomically)\n"
    "  --num-samples N        rows 0..N-1 (default 1024; --num_train_samples accepted)\n"
    "  --rows FROM:TO         rows FROM..TO-1 instead, to split a calibration across processes\n"
    "  --seq-length S         tokens per row (default 4096)\n"
    "  --micro-batch-size B   rows per forward pass (default 4; --mbs accepted)\n"
    "  --seed N               sampler seed (default 1234)\n"
    "  --sequential           rows in stream order, no shuffling (the eval command's windows)\n"
    "  --layer-metric M       depth score: bi (Block Influence per layer, default), block-bi\n"
    "                         (Block Influence of every block of n layers), ppl (LM loss with\n"
    "                         each layer skipped: L more passes), contiguous (LM loss with each\n"
    "                         block of n layers skipped: L-n+1 more passes)\n"
    "  --target-num-layers N  for block metrics: blocks of n = L - N layers\n"
    "  --block-size n         the same, given as n\n"
    "  --axes LIST            comma list of layers,hidden,ffn,heads,groups (default\n"
    "                         layers,hidden,ffn,heads; groups = legacy query-group scores)\n"
    "  --device DEV           cpu (default), cuda or cuda:N\n"
    "  --threads N            CPU threads (default: all cores)\n"
    "  --precision P          GEMM and attention arithmetic: auto (default: the device's\n"
    "                         own, fp32 on the CPU, bf16 on CUDA as the reference workflow\n"
    "                         runs), fp32 or bf16; the statistics are fp32 or better always\n"
    "";
static const char usage_more[] =
    "  --reconstruct          also gather the statistics of weight reconstruction (prune\n"
    "                         --reconstruct lsq): per layer the sums of a a^T and a over the\n"
    "                         inputs a of down_proj and o_proj, 8 L (F^2 + (n_h d)^2) bytes,\n"
    "                         held in memory during the run and written beside FILE as\n"
    "                         FILE-without-.json + .gram.safetensors (float64), which FILE names\n"
    "  --merge FILE...        add the raw sums of importance files scored over disjoint rows\n"
    "                         of the same data, model, order, seed and row length (anything\n"
    "                         else is refused, naming both files); their reconstruction\n"
    "                         statistics are added too when every file has them\n"
    "  --force                overwrite an existing output file\n"
    "  --json                 print one JSON object on stdout\n"
    "  --quiet                no progress bar, no summary\n"
    "  -h, --help             show this help\n"
    "Several processes (mpirun -np N, srun): each rank scores its share of the rows, the sums\n"
    "are added over the ranks and rank 0 writes the file (the same numbers as one process).\n"
    "Every rank must be given the same options, model and data: a difference ends all ranks\n"
    "before any row is scored, naming the option (-o, --threads and the GPU index may differ).\n";

static const char *cmd = "score";


static bool parse_rows(const char *s, int64_t *from, int64_t *to)
{
    char *end;
    long long a = strtoll(s, &end, 10);
    if (end == s || *end != ':' || a < 0)
        return false;
    const char *t = end + 1;
    long long b = strtoll(t, &end, 10);
    if (end == t || *end || b <= a)
        return false;
    *from = a;
    *to = b;
    return true;
}

static bool parse_axes(const char *s, unsigned *mask)
{
    static const struct {
        const char *name;
        unsigned bit;
    } names[] = {{"layers", LMS_AXIS_LAYERS}, {"hidden", LMS_AXIS_HIDDEN},
                 {"ffn", LMS_AXIS_FFN},       {"heads", LMS_AXIS_HEADS},
                 {"groups", LMS_AXIS_GROUPS}};
    *mask = 0;
    while (*s) {
        size_t n = strcspn(s, ",");
        bool found = false;
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if (strlen(names[i].name) == n && !strncmp(s, names[i].name, n)) {
                *mask |= names[i].bit;
                found = true;
            }
        if (!found)
            return false;
        s += n;
        if (*s == ',')
            s++;
    }
    return *mask != 0;
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* The sidecar written for out, removed when the importance file could not follow it. */
static void remove_sidecar(const char *out)
{
    char p[4096];
    lms_gram_sidecar_path(out, p, sizeof p);
    unlink(p);
}

/* Writes the reconstruction sidecar beside out and names it in imp (before imp is written, so
 * that the importance file never names a file that is not there). */
static enum lms_status write_sidecar(const struct lms_gram *g, const char *out, bool force,
                                     struct lms_importance *imp, struct lms_error *err)
{
    char p[4096];
    lms_gram_sidecar_path(out, p, sizeof p);
    enum lms_status rc = lms_gram_write(g, p, force, err);
    if (!rc && !(imp->gram_file = lms_strdup(lms_path_basename(p))))
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
    return rc;
}

static void print_summary(const struct lms_importance *imp, const char *out, double secs,
                          const char *what)
{
    printf("score: wrote '%s' (%s", out, what);
    if (imp->raw.present)
        printf(", %lld rows x %lld tokens", (long long)imp->raw.n_rows,
               (long long)imp->raw.seq_len);
    printf(", %.2f s)\n", secs);
    if (imp->layers) {
        printf("  layers (%s):", lms_layer_metric_name(imp->layer_metric));
        for (int64_t l = 0; l < imp->n_layers; l++)
            printf(" %.4f", imp->layers[l]);
        printf("\n");
    }
    if (imp->blocks) {
        int64_t best = 0, n = imp->n_layers - imp->block_size + 1;
        for (int64_t s = 1; s < n; s++)
            if (imp->blocks[s] < imp->blocks[best])
                best = s;
        printf("  blocks of %lld layers: least important %lld-%lld (0-based; score %.4f)\n",
               (long long)imp->block_size, (long long)best,
               (long long)(best + imp->block_size - 1), imp->blocks[best]);
    }
    unsigned axes = lms_importance_axes(imp);
    printf("  axes:%s%s%s%s%s\n", axes & LMS_AXIS_LAYERS ? " layers" : "",
           axes & LMS_AXIS_HIDDEN ? " hidden" : "", axes & LMS_AXIS_FFN ? " ffn" : "",
           axes & LMS_AXIS_HEADS ? " heads" : "", axes & LMS_AXIS_GROUPS ? " query_groups" : "");
    if (imp->gram_file)
        printf("  reconstruction statistics: %s (beside it)\n", imp->gram_file);
}

static json_t *result_json(const struct lms_importance *imp, const char *out, double secs,
                           double tokens_per_s)
{
    json_t *o = json_pack("{s:b,s:s,s:s,s:f}", "ok", 1, "output", out, "method",
                          imp->method ? imp->method : "", "seconds", secs);
    if (imp->raw.present) {
        json_object_set_new(o, "rows", json_integer((json_int_t)imp->raw.n_rows));
        json_object_set_new(o, "row_length", json_integer((json_int_t)imp->raw.seq_len));
    }
    if (tokens_per_s > 0)
        json_object_set_new(o, "tokens_per_second", json_real(tokens_per_s));
    if (imp->gram_file)
        json_object_set_new(o, "reconstruction_statistics", json_string(imp->gram_file));
    if (imp->layer_metric)
        json_object_set_new(o, "layer_metric",
                            json_string(lms_layer_metric_name(imp->layer_metric)));
    if (imp->layers) {
        json_t *a = json_array();
        for (int64_t l = 0; l < imp->n_layers; l++)
            json_array_append_new(a, json_real(imp->layers[l]));
        json_object_set_new(o, "layers", a);
    }
    if (imp->blocks) {
        json_t *a = json_array();
        for (int64_t s = 0; s < imp->n_layers - imp->block_size + 1; s++)
            json_array_append_new(a, json_real(imp->blocks[s]));
        json_object_set_new(o, "blocks", a);
        json_object_set_new(o, "block_size", json_integer((json_int_t)imp->block_size));
    }
    return o;
}

/* Reads every file, refuses any pair that is not disjoint rows of one calibration set (naming
 * both files) and adds them in order. */
static enum lms_status merge_files(char **files, int n, struct lms_importance *acc,
                                   struct lms_error *err)
{
    struct lms_importance *imp = lms_calloc((size_t)n, sizeof *imp);
    if (!imp)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    enum lms_status rc = LMS_OK;
    int n_read = 0;
    for (; !rc && n_read < n; n_read++)
        rc = lms_importance_read(files[n_read], &imp[n_read], err);
    for (int i = 0; !rc && i < n; i++)
        for (int j = i + 1; !rc && j < n; j++)
            if ((rc = lms_importance_mergeable(&imp[i], &imp[j], err)))
                lms_error_wrap(err, "merging '%s' and '%s': ", files[i], files[j]);
    for (int i = 1; !rc && i < n; i++)
        if ((rc = lms_importance_merge(&imp[0], &imp[i], err)))
            lms_error_wrap(err, "merging '%s' into the files before it: ", files[i]);
    if (!rc) {
        *acc = imp[0];
        lms_importance_init(&imp[0], NULL);
    }
    for (int i = 0; i < n_read; i++)
        lms_importance_release(&imp[i]);
    lms_free(imp);
    return rc;
}

/* The inputs' reconstruction sidecars, added into OUT's (every input has one, or none does).
 * OUT: acc names the merged sidecar. */
static enum lms_status merge_sidecars(char **files, int n, const char *out, bool force,
                                      struct lms_importance *acc, bool *written,
                                      struct lms_error *err)
{
    *written = false;
    char **paths = lms_calloc((size_t)n, sizeof *paths);
    if (!paths)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    enum lms_status rc = LMS_OK;
    int with = 0;
    for (int i = 0; !rc && i < n; i++) {
        struct lms_importance imp;
        if ((rc = lms_importance_read(files[i], &imp, err)))
            break;
        char p[4096];
        if (lms_importance_gram_path(&imp, files[i], p, sizeof p)) {
            with++;
            if (!(paths[i] = lms_strdup(p)))
                rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
        }
        lms_importance_release(&imp);
    }
    if (!rc && with && with != n)
        rc = lms_error_set(err, LMS_EFORMAT, "merging: some files have reconstruction "
                           "statistics and others not (score every part with --reconstruct, or "
                           "none)");
    char sidecar[4096];
    lms_gram_sidecar_path(out, sidecar, sizeof sidecar);
    if (!rc && with) {
        rc = lms_gram_merge_files((const char *const *)paths, n, sidecar, force, err);
        *written = !rc;
        lms_free(acc->gram_file);
        acc->gram_file = rc ? NULL : lms_strdup(lms_path_basename(sidecar));
        if (!rc && !acc->gram_file)
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++)
        lms_free(paths[i]);
    lms_free(paths);
    return rc;
}

static int run_merge(struct cli_common *co, char **files, int n, const char *out, bool force)
{
    struct lms_error err;
    lms_error_clear(&err);
    struct lms_importance acc;
    lms_importance_init(&acc, NULL);
    double t0 = cli_now();
    bool sidecar = false;
    enum lms_status rc = merge_files(files, n, &acc, &err);
    if (!rc)
        rc = merge_sidecars(files, n, out, force, &acc, &sidecar, &err);
    if (!rc)
        rc = lms_importance_write(&acc, out, force, &err);
    if (rc && sidecar)
        remove_sidecar(out);
    int code;
    if (rc) {
        code = cli_fail(cmd, co, &err);
    } else {
        code = CLI_EXIT_OK;
        if (co->json)
            cli_print_json(result_json(&acc, out, cli_now() - t0, 0));
        else if (!co->quiet)
            print_summary(&acc, out, cli_now() - t0, "merged");
    }
    lms_importance_release(&acc);
    return code;
}

struct score_args {
    struct cli_args base;
    const char *data, *out;
    struct lms_score_opts so;
    int64_t n_rows, target_layers, block; /* n_rows 0: --num-samples not given */
    int64_t seed;                         /* -1: not given */
    bool have_rows, merge;
    bool reconstruct; /* --reconstruct: gather the gram statistics too */
};

enum { O_ROWS, O_METRIC, O_AXES };

static const struct cli_opt opts[] = {
    CLI_STRING("data", struct score_args, data),
    CLI_STRING("data-paths", struct score_args, data),
    {.name = "output", .kind = CLI_OPT_STRING, .field = offsetof(struct score_args, out),
     .letter = 'o'},
    CLI_COUNT("num-samples", struct score_args, n_rows, 1, 0,
              "invalid --num-samples '%s' (a positive count)"),
    CLI_COUNT("num-train-samples", struct score_args, n_rows, 1, 0,
              "invalid --num-samples '%s' (a positive count)"),
    CLI_CALL("rows", O_ROWS),
    CLI_COUNT("seq-length", struct score_args, so.seq_len, 2, 1 << 24,
              "invalid --seq-length '%s' (2 to 16777216)"),
    CLI_COUNT("micro-batch-size", struct score_args, so.micro_batch, 1, 65536,
              "invalid --micro-batch-size '%s' (1 to 65536)"),
    CLI_COUNT("mbs", struct score_args, so.micro_batch, 1, 65536,
              "invalid --micro-batch-size '%s' (1 to 65536)"),
    CLI_COUNT("seed", struct score_args, seed, 0, 0, "invalid --seed '%s'"),
    CLI_FLAG("sequential", struct score_args, so.sequential),
    CLI_CALL("layer-metric", O_METRIC),
    CLI_COUNT("target-num-layers", struct score_args, target_layers, 1, 0,
              "invalid --target-num-layers '%s'"),
    CLI_COUNT("block-size", struct score_args, block, 1, 0, "invalid --block-size '%s'"),
    CLI_CALL("axes", O_AXES),
    CLI_FLAG("merge", struct score_args, merge),
    CLI_FLAG("reconstruct", struct score_args, reconstruct),
    CLI_END,
};

static int on_option(void *args, int id, const char *value, const char *word)
{
    (void)word;
    struct score_args *a = args;
    switch (id) {
    case O_ROWS:
        if (!parse_rows(value, &a->so.row_begin, &a->so.row_end))
            return cli_usage_error(cmd, "invalid --rows '%s' (FROM:TO with 0 <= FROM < TO)",
                                   value);
        a->have_rows = true;
        return 0;
    case O_METRIC: {
        struct lms_error e;
        if (lms_layer_metric_parse(value, &a->so.layer_metric, &e))
            return cli_usage_error(cmd, "%s", e.msg);
        return 0;
    }
    case O_AXES:
        if (!parse_axes(value, &a->so.axes))
            return cli_usage_error(cmd, "invalid --axes '%s' (comma list of layers, hidden, "
                                   "ffn, heads, groups)", value);
        return 0;
    }
    return 0;
}

/* The output against every input: the model and the data, or the files merged. */
static int check_paths(const struct score_args *a)
{
    int n = a->merge ? a->base.n_rest : 2;
    struct lms_path_role *roles = lms_calloc((size_t)n + 2, sizeof *roles);
    if (!roles)
        return cli_usage_error(cmd, "out of memory");
    roles[0] = (struct lms_path_role){a->out, NULL, LMS_PATH_WRITE};
    char sidecar[4096];
    lms_gram_sidecar_path(a->out, sidecar, sizeof sidecar);
    if (a->reconstruct || a->merge)
        roles[n + 1] = (struct lms_path_role){sidecar, "the reconstruction statistics",
                                              LMS_PATH_WRITE};
    if (a->merge)
        for (int i = 0; i < n; i++)
            roles[i + 1] = (struct lms_path_role){a->base.rest[i], "the input", LMS_PATH_READ};
    else {
        roles[1] = (struct lms_path_role){a->base.in, "the model", LMS_PATH_READ};
        roles[2] = (struct lms_path_role){a->data, "the data", LMS_PATH_READ_DATA};
    }
    struct lms_error err;
    lms_error_clear(&err);
    enum lms_status st = lms_paths_check(roles, (size_t)n + 2, &err);
    lms_free(roles);
    return st ? cli_fail(cmd, &a->base.co, &err) : CLI_PARSED;
}

static int check(void *args)
{
    struct score_args *a = args;
    struct lms_score_opts *so = &a->so;
    if (!a->out)
        return cli_usage_error(cmd, "-o FILE is required");
    if (exists(a->out) && !a->base.wo.force)
        return cli_usage_error(cmd, "'%s' exists (use --force to overwrite it)", a->out);
    char sidecar[4096];
    lms_gram_sidecar_path(a->out, sidecar, sizeof sidecar);
    if (a->reconstruct && exists(sidecar) && !a->base.wo.force)
        return cli_usage_error(cmd, "'%s' exists (use --force to overwrite it)", sidecar);
    if (a->merge && a->reconstruct)
        return cli_usage_error(cmd, "--merge adds the files' reconstruction statistics when they "
                               "have them; --reconstruct is for a scoring run");
    if (a->merge) {
        if (a->base.n_rest < 2)
            return cli_usage_error(cmd, "--merge needs at least two importance files");
        for (int i = 0; i < a->base.n_rest; i++)
            if (!strcmp(a->base.rest[i], a->out))
                return cli_usage_error(cmd, "the output '%s' is one of the inputs", a->out);
        a->base.device = a->base.precision = NULL; /* a merge runs no model */
        return check_paths(a);
    }
    if (a->base.n_rest != 1)
        return cli_usage_error(cmd, "expected one MODEL");
    a->base.in = a->base.rest[0];
    if (!a->data)
        return cli_usage_error(cmd, "--data PREFIX is required");
    if (a->have_rows && a->n_rows)
        return cli_usage_error(cmd, "--rows and --num-samples exclude each other");
    if (so->sequential && a->seed >= 0)
        return cli_usage_error(cmd, "--sequential reads rows in stream order; --seed does not "
                               "apply");
    if (a->target_layers && a->block)
        return cli_usage_error(cmd, "--target-num-layers and --block-size exclude each other");
    if (!a->have_rows) {
        so->row_begin = 0;
        so->row_end = a->n_rows ? a->n_rows : 1024;
    }
    if (a->seed >= 0)
        so->seed = (uint64_t)a->seed;
    so->data_name = a->data;
    so->model_name = a->base.in;
    if (so->micro_batch > so->row_end - so->row_begin)
        so->micro_batch = so->row_end - so->row_begin;
    return check_paths(a);
}

static int run(void *args);

static const struct cli_spec spec = {
    .name = "score", .help = {usage_text, usage_more}, .shorts = "ho:q",
    .groups = CLI_FORCE | CLI_RUN | CLI_PRECISION, .positional = CLI_POS_REST, .opts = opts,
    .on_option = on_option, .check = check,
    .run = run,
};

/* With several ranks: this rank's share of the rows, its GPU, and rank 0 alone reporting. */
static int share_rows(struct score_args *a, struct lms_comm *comm, struct lms_score_opts *so,
                      struct cli_common *co)
{
    int rank = lms_comm_rank(comm), world = lms_comm_world(comm);
    int64_t n = so->row_end - so->row_begin, begin = so->row_begin;
    if (n < world)
        return cli_usage_error(cmd, "%lld rows cannot be shared by %d ranks", (long long)n, world);
    /* rank k: rows [begin + n k / world, begin + n (k + 1) / world) */
    so->row_begin = begin + n * rank / world;
    so->row_end = begin + n * (rank + 1) / world;
    if (so->micro_batch > so->row_end - so->row_begin)
        so->micro_batch = so->row_end - so->row_begin;
    cli_rank_device(&a->base, comm);
    if (rank > 0) {
        co->quiet = true;
        co->json = false;
    }
    return CLI_PARSED;
}

/* The block of consecutive layers a block metric scores: --block-size, or the layers
 * --target-num-layers drops. */
static int layer_block(const struct score_args *a, int64_t n_layers, struct lms_score_opts *so)
{
    int64_t block = a->block;
    bool block_metric = lms_layer_metric_is_block(so->layer_metric);
    if (a->target_layers) {
        if (a->target_layers >= n_layers)
            return cli_usage_error(cmd, "--target-num-layers %lld: the model has %lld layers",
                                   (long long)a->target_layers, (long long)n_layers);
        block = n_layers - a->target_layers;
    }
    if (block_metric && !block)
        return cli_usage_error(cmd, "--layer-metric %s needs --target-num-layers N or "
                               "--block-size n", lms_layer_metric_name(so->layer_metric));
    so->block_size = block_metric ? block : 0;
    return CLI_PARSED;
}

/* Refuses a run that does not fit in memory (before the data is read or anything allocated),
 * then opens the data and checks it holds the rows. */
static enum lms_status open_data(const struct score_args *a, const struct cli_model *cm,
                                 const struct lms_score_opts *so, struct lms_dataset **ds,
                                 struct lms_error *err)
{
    uint64_t need, avail_mem = lms_score_memory_available(cm->be);
    enum lms_status st = lms_score_memory_plan(&cm->m, cm->be, so, &need, err);
    if (st)
        return st;
    if (avail_mem && need > avail_mem)
        return lms_error_set(err, LMS_ENOMEM,
                             "'%s' with --micro-batch-size %lld x --seq-length %lld needs %.2f GB "
                             "(weights, activations, statistics); %s has %.2f GB available",
                             a->base.in, (long long)so->micro_batch, (long long)so->seq_len,
                             (double)need / 1e9, lms_backend_name(cm->be),
                             (double)avail_mem / 1e9);
    if ((st = lms_data_open(a->data, ds, err)))
        return st;
    int64_t avail = lms_score_rows_available(*ds, so->seq_len);
    if (so->row_end > avail)
        return lms_error_set(err, LMS_EINVAL,
                             "dataset '%s' has %lld tokens: %lld rows of %lld tokens, rows "
                             "[%lld, %lld) requested",
                             a->data, (long long)lms_dataset_n_tokens(*ds), (long long)avail,
                             (long long)so->seq_len, (long long)so->row_begin,
                             (long long)so->row_end);
    return LMS_OK;
}

/* What every rank of a run must agree on (cli_ranks_agree), keyed by option: the model and the
 * data by their content fingerprints, and every option that decides the rows and what is
 * gathered from them (the whole run's rows, before they are shared out). Left out: -o (rank 0
 * writes), --threads, the device's index, --json and --quiet. */
static enum lms_status rank_options(const struct score_args *a, const char *model_fp,
                                    const struct lms_score_opts *so, json_t **out,
                                    struct lms_error *err)
{
    char data_fp[LMS_HASH64_HEX];
    enum lms_status st = lms_data_fingerprint(a->data, data_fp, err);
    if (st)
        return st;
    const struct lms_score_opts *w = &a->so; /* the whole run's rows */
    *out = json_pack("{s:s,s:s,s:[I,I],s:I,s:I,s:I,s:b,s:i,s:i,s:I,s:i,s:i,s:b}", "MODEL",
                     model_fp, "--data", data_fp, "--rows", (json_int_t)w->row_begin,
                     (json_int_t)w->row_end, "--seq-length", (json_int_t)w->seq_len,
                     "--micro-batch-size", (json_int_t)w->micro_batch, "--seed",
                     (json_int_t)w->seed, "--sequential", w->sequential, "--layer-metric",
                     (int)so->layer_metric, "--axes", (int)so->axes, "--block-size",
                     (json_int_t)so->block_size, "--device", (int)a->base.dev.kind,
                     "--precision", (int)a->base.prec, "--force", a->base.wo.force);
    if (*out && json_object_set_new(*out, "--reconstruct", json_boolean(a->reconstruct))) {
        json_decref(*out);
        *out = NULL;
    }
    if (!*out)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    return LMS_OK;
}

static void report(const struct score_args *a, const struct cli_common *co,
                   const struct cli_model *cm, const struct lms_importance *imp,
                   const struct lms_score_opts *so, double secs)
{
    double tps = secs > 0 ? (double)((so->row_end - so->row_begin) * so->seq_len) / secs : 0;
    if (co->json) {
        json_t *o = result_json(imp, a->out, secs, tps);
        json_object_set_new(o, "device", json_string(lms_backend_name(cm->be)));
        json_object_set_new(o, "n_threads", json_integer(lms_backend_n_threads(cm->be)));
        json_object_set_new(o, "precision", json_string(a->base.precision));
        cli_print_json(o);
    } else if (!co->quiet) {
        char what[160];
        snprintf(what, sizeof what, "%s on %s, %d threads, %.0f tokens/s",
                 lms_backend_name(cm->be), a->data, lms_backend_n_threads(cm->be), tps);
        print_summary(imp, a->out, secs, what);
    }
}

static int run_score(struct score_args *a)
{
    struct cli_common co = a->base.co;
    struct lms_score_opts so = a->so, whole = a->so;
    struct lms_error err;
    lms_error_clear(&err);
    struct lms_comm *comm = NULL;
    if (lms_comm_open(&comm, &err))
        return cli_fail(cmd, &co, &err);
    int rc = comm ? share_rows(a, comm, &so, &co) : CLI_PARSED;
    struct lms_dataset *ds = NULL;
    struct cli_model cm = {0};
    struct lms_importance imp;
    lms_importance_init(&imp, NULL);
    struct lms_gram gram = {0};
    if (a->reconstruct)
        so.gram = &gram;
    bool agreed = false;
    if (rc != CLI_PARSED)
        goto out;
    if (cli_model_read(&cm, a->base.in, &err))
        goto fail;
    if ((rc = layer_block(a, cm.m.arch.n_layers, &so)) != CLI_PARSED)
        goto out;
    if (cli_model_backend(&cm, &a->base, &err) || open_data(a, &cm, &so, &ds, &err))
        goto fail;
    char model_fp[LMS_HASH64_HEX];
    if (comm) { /* before any row is scored, every rank runs the same thing */
        json_t *ro;
        if (lms_model_fingerprint(&cm.m, model_fp, &err)) {
            lms_error_wrap(&err, "'%s': ", a->base.in);
            goto fail;
        }
        so.model_fingerprint = model_fp; /* the provenance records it too: read the weights once */
        if (rank_options(a, model_fp, &so, &ro, &err))
            goto fail;
        rc = cli_ranks_agree(cmd, &co, comm, ro);
        json_decref(ro);
        if (rc != CLI_PARSED)
            goto out;
    }
    char what[64]; /* once every check passed, as the pass starts */
    snprintf(what, sizeof what, "--seq-length %lld", (long long)so.seq_len);
    cli_warn_positions(cmd, &co, a->base.in, &cm.m.arch, so.seq_len, what);
    struct cli_progress bar;
    cli_progress_begin(&bar, "scoring", 0, false, co.quiet || co.json);
    so.progress = cli_progress_cb;
    so.progress_ctx = &bar;
    double t0 = cli_now();
    enum lms_status sst = lms_score_run(&cm.m, cm.be, ds, &so, &imp, &err);
    if (comm) { /* every rank learns whether all scored, then the sums are added */
        int64_t failed = sst != LMS_OK;
        if (lms_comm_max(comm, &failed, 1, &err))
            goto fail;
        agreed = true;
        if (!sst && failed)
            sst = lms_error_set(&err, LMS_EIO, "another rank failed (its message says why)");
        if (!sst && sum_over_ranks(comm, &imp, a->reconstruct ? &gram : NULL, &whole, &err)) {
            agreed = false;
            goto fail;
        }
        so = whole;
    }
    if (sst) {
        if (bar.enabled)
            fputc('\n', stderr);
        goto fail;
    }
    cli_progress_end(&bar);
    double secs = cli_now() - t0;
    if (lms_comm_rank(comm) == 0 && a->reconstruct &&
        write_sidecar(&gram, a->out, a->base.wo.force, &imp, &err)) {
        agreed = false;
        goto fail;
    }
    if (lms_comm_rank(comm) == 0 && lms_importance_write(&imp, a->out, a->base.wo.force, &err)) {
        agreed = false; /* the others are done: ending them is harmless */
        if (a->reconstruct)
            remove_sidecar(a->out);
        goto fail;
    }
    report(a, &co, &cm, &imp, &so, secs);
    rc = CLI_EXIT_OK;
    goto out;
fail:
    rc = cli_fail_ranks(cmd, &co, &err, comm, agreed);
out:
    lms_importance_release(&imp);
    lms_gram_release(&gram);
    lms_comm_close(comm);
    cli_model_close(&cm);
    lms_dataset_free(ds);
    return rc;
}

/* --merge FILE... OUT, or a scoring run. */
static int run(void *args)
{
    struct score_args *a = args;
    if (a->merge)
        return run_merge(&a->base.co, a->base.rest, a->base.n_rest, a->out, a->base.wo.force);
    return run_score(a);
}

int cmd_score(int argc, char **argv)
{
    struct score_args a = {.base.precision = "auto", .seed = -1};
    lms_score_opts_default(&a.so);
    return cli_main(&spec, argc, argv, &a);
}
