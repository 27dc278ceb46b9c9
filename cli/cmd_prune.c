/* lmsurgeon prune: cut a model to a target shape in one shot (depth and width) and write a
 * complete checkpoint. Scores come from calibration data (--data-paths: the model runs over it
 * first, as the reference workflow does), from an importance file, or from weight magnitudes.
 * Calibration (lms_calib_run), the budget search (lms_search_run) and planning
 * (lms_prune_plan_calibrated) are the library's; this file parses, calls, prints and writes. */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "lms/alloc.h"
#include "lms/distill_run.h"
#include "lms/format.h"
#include "lms/importance.h"
#include "lms/json.h"
#include "lms/paths.h"
#include "lms/recon.h"
#include "lms/score.h"
#include "lms/surgery.h"

static const char usage_text[] =
    "usage: lmsurgeon prune IN OUT [targets...] [--data-paths PREFIX | --importance FILE]\n"
    "                       [--dry-run] [--json] [--quiet]\n"
    "\n"
    "Depth (layers are numbered from 1, as in the reference workflow; layer 1 is model.layers.0):\n"
    "  --drop-layers LIST           drop these layers, e.g. 24-31,33\n"
    "  --keep-layers LIST           keep only these layers\n"
    "  --target-num-layers N        keep N layers chosen by --layer-selection\n"
    "  --layer-selection SEL        (alias --layer-metric) which layers go:\n"
    "                                 bi          the lowest Block Influence layers, one by one\n"
    "                                 block-bi    the contiguous block of lowest Block Influence\n"
    "                                 ppl         the layers whose lone removal costs least loss\n"
    "                                 contiguous  the contiguous block whose removal costs least\n"
    "                                 contiguous-last  one block ending before the last layer\n"
    "                                 last        the final layers\n"
    "                                 importance  the lowest layer scores of --importance FILE\n"
    "                               bi, block-bi, ppl and contiguous calibrate on --data-paths.\n"
    "                               Default: bi with data, importance with a file that has layer\n"
    "                               scores, else contiguous-last.\n"
    "Width (the same width in every layer; kept channels keep their original order):\n"
    "  --target-ffn-hidden-size F   FFN neurons per layer\n"
    "  --target-hidden-size H       hidden (residual stream) channels\n"
    "  --target-num-attention-heads N  query heads per layer, the same number in every group\n"
    "  --target-num-query-groups G  whole KV groups with their query heads\n"
    "  --multiple-of M              every width a target changes must be a multiple of M (128\n"
    "                               for FP8 128x128 block scales and tensor-parallel shards):\n"
    "                               F, H, the query rows N x head_dim and the key/value rows\n"
    "                               G x head_dim (head_dim is never pruned); --target-params\n"
    "                               searches only such shapes. Default 1 (no constraint)\n";
static const char usage_data[] =
    "Calibration (the model runs over the data once before pruning; activation scores rank the\n"
    "channels, the depth metric ranks the layers):\n"
    "  --data-paths PREFIX          token dataset: Megatron PREFIX.bin/.idx, or a raw .u16/.i32\n"
    "                               id file (alias --data)\n"
    "  --num-train-samples N        calibration windows (default 1024; alias --num-samples)\n"
    "  --seq-length S               tokens per window (default 4096)\n"
    "  --mbs B                      windows per forward pass (default 4; --micro-batch-size)\n"
    "  --seed N                     window sampling seed (see lmsurgeon score --help)\n"
    "  --device DEV                 cpu (default) or cuda[:N]\n"
    "  --precision P                fp32, bf16 or auto (default: bf16 GEMMs on CUDA, fp32 on\n"
    "                               the CPU), as for eval\n"
    "  --threads N                  CPU threads (default: all cores)\n"
    "  --devices N                  accepted for the reference workflow: its number of GPUs.\n"
    "                               lmsurgeon calibrates on the one --device (split rows across\n"
    "                               machines with 'lmsurgeon score --rows' and --merge instead)\n"
    "  --tp-size N, --pp-size N     accepted for the reference workflow: its tensor and pipeline\n"
    "                               parallel sizes while pruning. They change nothing here: one\n"
    "                               process holds the model, and the checkpoint written loads\n"
    "                               under any parallel layout\n"
    "  --legacy-ckpt                accepted for the reference workflow (it loads checkpoints of\n"
    "                               older Transformer Engine versions); every layout this tool\n"
    "                               reads is read without it\n"
    "";
static const char usage_search[] =
    "Parameter budget (search the shape instead of giving it):\n"
    "  --target-params N            e.g. 6B, 1.5M, 11148288: enumerate homogeneous shapes\n"
    "                               (layers, FFN, hidden, query heads) with at most N parameters,\n"
    "                               keep the largest --num-candidates, prune each (scores as\n"
    "                               above) and rank them by LM loss on held-out windows of the\n"
    "                               data (without data: by size); print the table, prune to the\n"
    "                               best\n"
    "  --candidate K                prune to the K-th candidate of the table instead\n"
    "  --num-candidates K           candidates evaluated (default 10)\n"
    "  --eval-samples N             held-out windows per candidate (default 16)\n"
    "  --rank-by loss|distill       loss (default): rank by held-out loss right after pruning.\n"
    "                               distill: then distill the best --rank-top of them from IN\n"
    "                               for --rank-tokens tokens each and rank those first, by\n"
    "                               held-out loss after that (the rest follow by loss); prune\n"
    "                               writes the pruned (not the distilled) best. Recipe: logit\n"
    "                               KD (forward KL), the gpt AdamW preset, rows of --seq-length\n"
    "                               tokens, --mbs rows per step, lr 1e-4 after steps/10 warm-up\n"
    "                               steps, cosine to 1e-5, seed 1234, on the calibration rows\n"
    "                               after the held-out ones (see README); needs --data-paths\n"
    "  --rank-tokens N              distillation tokens per candidate, e.g. 2M, 500k (default\n"
    "                               2M; at least --mbs x --seq-length)\n"
    "  --rank-top K                 candidates distilled (default 3; at most the table's rows)\n"
    "  --search-num-layers MIN:MAX[:STEP]    default 80%..100% of L, step 2\n"
    "  --search-ffn-hidden-size MIN:MAX[:STEP]  default 60%..100%, step F/16 (power of 2, <=512)\n"
    "  --search-hidden-size MIN:MAX[:STEP]   default 60%..100%, step H/16 (power of 2, <=256)\n"
    "  --search-num-attention-heads MIN:MAX  default 60%..100%, multiples of the query groups\n"
    "Scores and output:\n"
    "  --importance FILE            importance scores (lmsurgeon-importance JSON, see README);\n"
    "                               axes missing from it fall back to weight magnitudes\n"
    "  --reconstruct lsq|none       after FFN or head pruning, refit the kept columns of each\n"
    "                               layer's down_proj / o_proj (and o_proj's bias, where the\n"
    "                               model has one) by least squares so that the projection's\n"
    "                               output on the calibration activations matches the unpruned\n"
    "                               layer's (ridge 1e-2 x mean diagonal, in float64). The\n"
    "                               statistics come from the --data-paths pass (8 L (F^2 +\n"
    "                               (n_h d)^2) bytes more memory) or from the sidecar of an\n"
    "                               --importance file scored with 'score --reconstruct'.\n"
    "                               Default none (the kept columns as they are)\n"
    "  --dry-run                    print the resulting config, size and kept indices (and the\n"
    "                               candidate table); write nothing\n"
    "  --to FORMAT                  output format: hf, nemo, megatron, nemo1 or gguf (nemo1\n"
    "                               and gguf: OUT is one file) (default: the input's)\n"
    "  --dtype TYPE                 cast floating-point tensors (bf16, f16, f32), or quantise:\n"
    "                               fp8 (hf only), q8_0 (gguf only), as convert does\n"
    "  --max-shard-size SIZE        bytes per shard (default 5GB)\n"
    "  --force                      replace OUT if it exists and is not empty\n"
    "  --json, --quiet, -h/--help\n"
    "Aliases: --restore-path (IN), --save-path (OUT); underscores work as hyphens, so the\n"
    "reference commands run as written:\n"
    "  lmsurgeon prune --restore_path IN --save_path OUT --seq_length 4096 \\\n"
    "      --num_train_samples 1024 --mbs 4 --data_paths PREFIX --target_num_layers 24\n";

struct prune_args {
    struct cli_args base; /* IN, OUT, --to, the write options, --json, --quiet */
    const char *importance, *selection;
    const char *reconstruct; /* --reconstruct: "lsq" or "none" (NULL: none) */
    bool lsq;                /* --reconstruct lsq */
    struct lms_gram gram_file; /* the statistics of an --importance file's sidecar */
    int64_t n_refit;           /* projections refitted */
    struct lms_prune_targets t;
    bool dry_run, legacy_ckpt;
    struct lms_calib_opts cal; /* data and device options; what to gather is set per run */
    int64_t target_params, candidate, n_candidates;
    struct lms_search_opts so;
    const char *rank_by;
    int64_t rank_tokens, rank_top; /* 0: not given */
    struct cli_progress rank_bar;
    int64_t rank_bar_of;           /* the candidate the bar counts (-1: none) */
};

static const char *cmd = "prune";

/* "MIN:MAX[:STEP]" (MAX or STEP may be empty). */
static bool parse_range(const char *s, struct lms_search_axis *ax)
{
    long long v[3] = {0, 0, 0};
    int n = 0;
    const char *p = s;
    while (n < 3) {
        char *end;
        if (*p == ':' || !*p) {
            v[n] = 0;
            end = (char *)p;
        } else {
            v[n] = strtoll(p, &end, 10);
            if (end == p || v[n] < 1)
                return false;
        }
        n++;
        if (!*end)
            break;
        if (*end != ':')
            return false;
        p = end + 1;
    }
    if (*p && n == 3 && strchr(p, ':'))
        return false;
    ax->min = v[0];
    ax->max = v[1];
    ax->step = v[2];
    return v[0] > 0 && (!v[1] || v[1] >= v[0]);
}

/* ---- output ------------------------------------------------------------------------------- */

static void print_indices(const char *label, json_t *a, int64_t base)
{
    size_t i;
    json_t *v;
    printf("%s", label);
    json_array_foreach(a, i, v) printf(" %" PRId64, (int64_t)json_integer_value(v) + base);
}

static void print_depth(json_t *d)
{
    const char *sel = json_string_value(json_object_get(d, "selection"));
    if (!sel || !json_object_get(d, "kept"))
        return;
    printf(" (%s%s;", sel, json_object_get(d, "chosen_by") ? ", the default" : "");
    print_indices(" kept, 1-based:", json_object_get(d, "kept"), 1);
    printf(")\n");
    json_t *scores = json_object_get(d, "scores"), *blocks = json_object_get(d, "block_scores");
    const char *metric = json_string_value(json_object_get(d, "metric"));
    if (scores) {
        printf("                       dropped");
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(d, "dropped"), i, v) {
            int64_t l = json_integer_value(v);
            printf(" %" PRId64 " (%.4g)", l + 1, json_number_value(json_array_get(scores, l)));
        }
        printf(" by %s\n", metric);
    } else if (blocks) {
        int64_t s = json_integer_value(json_object_get(d, "dropped_block_start"));
        int64_t n = json_integer_value(json_object_get(d, "block_length"));
        printf("                       dropped block %" PRId64 "-%" PRId64 " (%.4g, lowest of %zu "
               "blocks) by %s\n",
               s + 1, s + n, json_number_value(json_array_get(blocks, (size_t)s)),
               json_array_size(blocks), metric);
    }
    json_t *src = json_object_get(d, "source");
    if (json_is_object(src) && json_object_get(src, "rows"))
        printf("                       metric from %" PRId64 " windows x %" PRId64
               " tokens of '%s'\n",
               (int64_t)json_integer_value(json_object_get(src, "rows")),
               (int64_t)json_integer_value(json_object_get(src, "row_length")),
               json_string_value(json_object_get(src, "data")) ? json_string_value(
                                                                     json_object_get(src, "data"))
                                                               : "?");
}

static void print_width(json_t *rep, const char *key, const char *label, const char *scores_from)
{
    json_t *o = json_object_get(rep, key);
    printf("  %-20s %" PRId64 " -> %" PRId64, label,
           (int64_t)json_integer_value(json_object_get(o, "from")),
           (int64_t)json_integer_value(json_object_get(o, "to")));
    const char *s = json_string_value(json_object_get(o, "scores"));
    if (s)
        printf(" (ranked by %s)",
               !strcmp(s, "weight-magnitude") ? "weight magnitude" : scores_from);
    printf("\n");
}

static void print_summary(const struct prune_args *a, json_t *rep, const struct lms_model *in,
                          const struct lms_model *out, const char *scores_from)
{
    char b1[32], b2[32];
    cli_format_bytes(lms_model_nbytes(in), b1, sizeof(b1));
    cli_format_bytes(lms_model_nbytes(out), b2, sizeof(b2));
    printf("%s '%s' -> '%s'\n", a->dry_run ? "would prune" : "pruned", a->base.in, a->base.out);
    printf("  layers               %" PRId64 " -> %" PRId64, in->arch.n_layers, out->arch.n_layers);
    json_t *d = json_object_get(rep, "layers");
    if (json_object_get(d, "kept"))
        print_depth(d);
    else
        printf("\n");
    print_width(rep, "hidden_size", "hidden_size", scores_from);
    print_width(rep, "ffn_hidden_size", "intermediate_size", scores_from);
    print_width(rep, "num_attention_heads", "num_attention_heads", scores_from);
    print_width(rep, "num_query_groups", "num_key_value_heads", scores_from);
    printf("  head_dim             %" PRId64 " (unchanged, written explicitly)\n",
           out->arch.head_dim);
    printf("  parameters           %" PRId64 " -> %" PRId64 " (%.1f%%)\n", lms_model_n_params(in),
           lms_model_n_params(out),
           100.0 * (double)lms_model_n_params(out) / (double)lms_model_n_params(in));
    printf("  tensor bytes         %s -> %s\n", b1, b2);
    if (a->lsq && a->dry_run)
        printf("  reconstruction       least squares (not computed in a dry run)\n");
    else if (a->lsq)
        printf("  reconstruction       least-squares refit of %" PRId64 " projections "
               "(down_proj, o_proj)\n", a->n_refit);
}

static json_t *real_or_null(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

static json_t *rank_or_null(int64_t r)
{
    return r > 0 ? json_integer((json_int_t)r) : json_null();
}

/* The rows, with both losses and both places when the search ranked by distillation. */
static json_t *candidates_json(const struct lms_candidate *c, int64_t n, int64_t chosen,
                               bool distilled)
{
    json_t *arr = json_array();
    for (int64_t i = 0; i < n; i++) {
        json_t *o = json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:o,s:b}", "num_layers",
                              (json_int_t)c[i].n_layers, "ffn_hidden_size", (json_int_t)c[i].ffn,
                              "hidden_size", (json_int_t)c[i].hidden, "num_attention_heads",
                              (json_int_t)c[i].n_heads, "num_query_groups",
                              (json_int_t)c[i].n_groups, "n_params", (json_int_t)c[i].n_params,
                              "loss", real_or_null(c[i].loss), "chosen", i == chosen);
        if (distilled) {
            json_object_set_new(o, "distill_loss", real_or_null(c[i].distill_loss));
            json_object_set_new(o, "loss_rank", rank_or_null(c[i].loss_rank));
            json_object_set_new(o, "distill_rank", rank_or_null(c[i].distill_rank));
        }
        json_array_append_new(arr, o);
    }
    return arr;
}

/* Row numbers (1-based, as --candidate takes them) in the order of the post-prune loss. */
static json_t *loss_order_json(const struct lms_candidate *c, int64_t n)
{
    json_t *arr = json_array();
    for (int64_t r = 1; r <= n; r++)
        for (int64_t i = 0; i < n; i++)
            if (c[i].loss_rank == r)
                json_array_append_new(arr, json_integer((json_int_t)(i + 1)));
    return arr;
}

/* Row numbers of the distilled candidates, best first: they lead the table. */
static json_t *distill_order_json(const struct lms_search_result *r)
{
    json_t *arr = json_array();
    for (int64_t i = 0; i < r->n_distilled; i++)
        json_array_append_new(arr, json_integer((json_int_t)(i + 1)));
    return arr;
}

/* The recipe of the ranking runs, what `lmsurgeon distill` takes to repeat one, and the rows. */
static json_t *rank_json(const struct prune_args *a, const struct lms_search_result *r)
{
    struct lms_distill_opts d;
    lms_search_rank_recipe(&a->so.rank, &a->cal, &d);
    int64_t held = a->cal.n_samples, rows = lms_search_rank_rows(&a->so.rank, &a->cal);
    return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:f,s:s,s:s,s:s,s:I,s:s,s:[I,I],"
                     "s:[I,I]}",
                     "tokens", (json_int_t)a->so.rank.tokens, "top", (json_int_t)r->n_distilled,
                     "steps", (json_int_t)d.max_steps, "seq_length", (json_int_t)d.seq,
                     "micro_batch_size", (json_int_t)d.mbs, "global_batch_size",
                     (json_int_t)d.gbs, "warmup_steps", (json_int_t)d.warmup, "lr", d.lr,
                     "min_lr", d.min_lr, "optim_preset", "gpt", "kd_loss", "forward-kl",
                     "feature_pairs", "none", "seed", (json_int_t)d.seed, "split", d.split,
                     "held_out_rows", (json_int_t)held, (json_int_t)(held + a->cal.eval_samples),
                     "distill_rows", (json_int_t)(held + a->cal.eval_samples),
                     (json_int_t)(held + a->cal.eval_samples + rows));
}

/* The table of a search ranked by distillation: both losses and the place by each. */
static void print_distilled(const struct prune_args *a, const struct lms_search_result *r,
                            int64_t chosen)
{
    printf("parameter budget %" PRId64 ": %" PRId64 " shapes fit; the %" PRId64 " largest, ranked "
           "by LM loss on held-out calibration windows; the best %" PRId64 " then distilled "
           "from '%s' for %" PRId64 " tokens each and ranked first, by held-out loss after that\n",
           a->target_params, r->n_fit, r->n, r->n_distilled, a->base.in, a->so.rank.tokens);
    printf("  %4s %6s %6s %6s %6s %6s %14s %9s %7s %9s\n", "rank", "layers", "ffn", "hidden",
           "heads", "groups", "parameters", "loss", "by loss", "distilled");
    for (int64_t i = 0; i < r->n; i++) {
        const struct lms_candidate *c = &r->c[i];
        char loss[32] = "-", dl[32] = "-";
        if (isfinite(c->loss))
            snprintf(loss, sizeof loss, "%.4f", c->loss);
        if (isfinite(c->distill_loss))
            snprintf(dl, sizeof dl, "%.4f", c->distill_loss);
        printf("  %4" PRId64 " %6" PRId64 " %6" PRId64 " %6" PRId64 " %6" PRId64 " %6" PRId64
               " %14" PRId64 " %9s %7" PRId64 " %9s%s\n",
               i + 1, c->n_layers, c->ffn, c->hidden, c->n_heads, c->n_groups, c->n_params,
               loss, c->loss_rank, dl, i == chosen ? "  <- pruned to" : "");
    }
}

static void print_candidates(const struct prune_args *a, const struct lms_candidate *c,
                             int64_t n, int64_t n_fit, int64_t chosen, bool ranked)
{
    printf("parameter budget %" PRId64 ": %" PRId64 " shapes fit; the %" PRId64 " largest, %s\n",
           a->target_params, n_fit, n,
           ranked ? "ranked by LM loss on held-out calibration windows (no training)"
                  : "ranked by size (no --data-paths to rank them by loss)");
    printf("  %4s %6s %6s %6s %6s %6s %14s %9s\n", "rank", "layers", "ffn", "hidden", "heads",
           "groups", "parameters", "loss");
    for (int64_t i = 0; i < n; i++) {
        char loss[32] = "-";
        if (isfinite(c[i].loss))
            snprintf(loss, sizeof loss, "%.4f", c[i].loss);
        printf("  %4" PRId64 " %6" PRId64 " %6" PRId64 " %6" PRId64 " %6" PRId64 " %6" PRId64
               " %14" PRId64 " %9s%s\n",
               i + 1, c[i].n_layers, c[i].ffn, c[i].hidden, c[i].n_heads, c[i].n_groups,
               c[i].n_params, loss, i == chosen ? "  <- pruned to" : "");
    }
}

/* The former summary shape: [before, after] per dimension and the kept layers. */
static json_t *shape_json(json_t *rep, const struct lms_model *in, const struct lms_model *out)
{
    json_t *o = json_pack(
        "{s:[I,I],s:[I,I],s:[I,I],s:[I,I],s:[I,I]}", "layers", (json_int_t)in->arch.n_layers,
        (json_int_t)out->arch.n_layers, "hidden_size", (json_int_t)in->arch.hidden,
        (json_int_t)out->arch.hidden, "ffn_hidden_size", (json_int_t)in->arch.ffn,
        (json_int_t)out->arch.ffn, "num_attention_heads", (json_int_t)in->arch.n_heads,
        (json_int_t)out->arch.n_heads, "num_query_groups", (json_int_t)in->arch.n_groups,
        (json_int_t)out->arch.n_groups);
    json_t *kept = json_object_get(json_object_get(rep, "layers"), "kept");
    if (kept)
        json_object_set(o, "kept_layers", kept);
    return o;
}

/* Which scores ranked the width axes, in words (given: the source of the scores, or ""). */
static void describe_scores(json_t *rep, const char *given, char *dst, size_t cap)
{
    static const char *const keys[] = {"hidden_size", "ffn_hidden_size", "num_attention_heads",
                                       "num_query_groups"};
    bool any = false, magnitude = false;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const char *s = json_string_value(json_object_get(json_object_get(rep, keys[i]), "scores"));
        any |= s != NULL;
        magnitude |= s && !strcmp(s, "weight-magnitude");
    }
    if (!any)
        snprintf(dst, cap, "%s", given[0] ? given : "none needed");
    else if (!given[0])
        snprintf(dst, cap, "weight magnitude (no --importance or --data-paths given)");
    else
        snprintf(dst, cap, "%s%s", given, magnitude ? " + weight magnitude for axes they lack" : "");
}

/* ---- the run ------------------------------------------------------------------------------ */

static void print_candidate(void *ctx, int64_t i, int64_t n, const struct lms_candidate *c)
{
    (void)ctx;
    fprintf(stderr, "candidate %" PRId64 "/%" PRId64 ": loss %.4f\n", i + 1, n, c->loss);
}

/* A bar per ranking distillation (on a terminal), steps done of the run. */
static void rank_step(void *ctx, int64_t i, int64_t k, int64_t step, int64_t steps)
{
    struct prune_args *a = ctx;
    if (a->rank_bar_of != i) {
        static char label[64];
        snprintf(label, sizeof label, "distilling %" PRId64 "/%" PRId64, i + 1, k);
        cli_progress_begin(&a->rank_bar, label, (uint64_t)steps, false,
                           a->base.co.quiet || a->base.co.json);
        a->rank_bar_of = i;
    }
    cli_progress_update(&a->rank_bar, (uint64_t)step);
    if (step == steps)
        cli_progress_end(&a->rank_bar);
}

static void rank_done(void *ctx, int64_t i, int64_t k, const struct lms_candidate *c)
{
    struct prune_args *a = ctx;
    if (!a->base.co.quiet && !a->base.co.json)
        fprintf(stderr, "distilled %" PRId64 "/%" PRId64 " (rank %" PRId64 " by loss): loss "
                "%.4f\n", i + 1, k, c->loss_rank, c->distill_loss);
}

/* The budget search (lms_search_run); t gets the chosen shape. OUT: *table (JSON) and the
 * table printed unless quiet/json. */
static enum lms_status search(struct prune_args *a, const struct lms_model *in,
                              const struct lms_importance *imp, struct lms_calib *cal,
                              json_t **table, struct lms_error *err)
{
    struct lms_search_result r;
    a->so.target_params = a->target_params;
    a->so.multiple_of = a->t.multiple_of;
    a->so.max_candidates = a->n_candidates;
    if (!a->base.co.quiet && !a->base.co.json)
        a->so.on_candidate = print_candidate;
    a->so.rank.on_step = rank_step;
    a->so.rank.on_distilled = rank_done;
    a->so.rank.ctx = a;
    a->rank_bar_of = -1;
    enum lms_status rc = lms_search_run(in, &a->t, &a->so, imp, cal, &r, err);
    if (rc && a->rank_bar_of >= 0 && a->rank_bar.enabled)
        fputc('\n', stderr);
    if (rc)
        return rc;
    int64_t chosen = a->candidate ? a->candidate - 1 : 0;
    if (chosen >= r.n)
        rc = lms_error_set(err, LMS_EINVAL, "--candidate %lld: the table has %lld row%s",
                           (long long)a->candidate, (long long)r.n, r.n == 1 ? "" : "s");
    if (!rc) {
        lms_candidate_targets(&r.c[chosen], &a->t);
        a->t.drop_layers = a->t.keep_layers = NULL;
        *table = json_pack("{s:I,s:I,s:b,s:o}", "target_params", (json_int_t)a->target_params,
                           "n_fitting", (json_int_t)r.n_fit, "ranked_by_loss", r.ranked,
                           "candidates", candidates_json(r.c, r.n, chosen, r.distilled));
        if (r.distilled) {
            json_object_set_new(*table, "rank_by", json_string("distill"));
            json_object_set_new(*table, "loss_order", loss_order_json(r.c, r.n));
            json_object_set_new(*table, "distill_order", distill_order_json(&r));
            json_object_set_new(*table, "rank", rank_json(a, &r));
        }
        if (!a->base.co.quiet && !a->base.co.json && r.distilled)
            print_distilled(a, &r, chosen);
        else if (!a->base.co.quiet && !a->base.co.json)
            print_candidates(a, r.c, r.n, r.n_fit, chosen, r.ranked);
    }
    lms_search_result_release(&r);
    return rc;
}

/* Watches the calibration passes: the positions warning before the first, a progress bar for
 * each. The bar comes first: cli_progress_cb takes the struct as its bar. */
struct calib_watch {
    struct cli_progress bar;
    bool quiet, hidden, warned;
    const char *model;
    const struct lms_arch *arch;
    int64_t seq_len;
};

static void calib_begin(void *ctx, const char *label)
{
    struct calib_watch *w = ctx;
    if (!w->warned) {
        char what[64];
        snprintf(what, sizeof what, "--seq-length %lld", (long long)w->seq_len);
        cli_warn_positions(cmd, &(struct cli_common){.quiet = w->quiet}, w->model, w->arch,
                           w->seq_len, what);
        w->warned = true;
    }
    cli_progress_begin(&w->bar, label, 0, false, w->hidden);
}

static void calib_end(void *ctx, bool ok)
{
    struct calib_watch *w = ctx;
    if (ok)
        cli_progress_end(&w->bar);
    else if (w->bar.enabled)
        fputc('\n', stderr);
}

/* The reconstruction sidecar an importance file names, checked against the model being pruned
 * (its dims and its fingerprint). OUT: *g. */
static enum lms_status open_statistics(const struct prune_args *a, const struct lms_model *in,
                                       const struct lms_importance *imp, struct lms_gram *g,
                                       struct lms_error *err)
{
    char path[4096];
    if (!lms_importance_gram_path(imp, a->importance, path, sizeof path))
        return lms_error_set(err, LMS_EFORMAT, "--reconstruct lsq: '%s' has no reconstruction "
                             "statistics (score with --reconstruct, or calibrate with "
                             "--data-paths)", a->importance);
    char fp[LMS_HASH64_HEX];
    enum lms_status rc = lms_gram_open(path, g, err);
    if (!rc && (rc = lms_model_fingerprint(in, fp, err)))
        lms_error_wrap(err, "'%s': ", a->base.in);
    if (!rc)
        rc = lms_gram_check(g, &in->arch, fp, err);
    return rc;
}

/* The scores the plan ranks by: an importance file's, or the model's activations on the
 * calibration data (*cal keeps the run for the depth metrics and the budget search). OUT:
 * scores_from says where they came from, in words ("" for none). */
static enum lms_status gather_scores(struct prune_args *a, const struct lms_model *in,
                                     struct lms_importance *imp, struct lms_calib **cal,
                                     struct calib_watch *watch, char *scores_from, size_t cap,
                                     struct lms_error *err)
{
    enum lms_status rc = LMS_OK;
    if (a->importance) {
        lms_importance_release(imp);
        rc = lms_importance_read(a->importance, imp, err);
        if (!rc)
            rc = lms_importance_check(imp, &in->arch, a->importance, err);
        snprintf(scores_from, cap, "%s scores of '%s'", imp->method ? imp->method : "the",
                 a->importance);
    }
    if (!rc && a->lsq && a->importance)
        rc = open_statistics(a, in, imp, &a->gram_file, err);
    if (!rc && a->cal.data) {
        lms_prune_calib_setup(&in->arch, &a->t, a->target_params != 0, &a->cal);
        a->cal.gram = a->lsq;
        a->cal.reserve_rows = lms_search_rank_rows(&a->so.rank, &a->cal);
        *watch = (struct calib_watch){.quiet = a->base.co.quiet,
                                      .hidden = a->base.co.quiet || a->base.co.json,
                                      .model = a->base.in, .arch = &in->arch,
                                      .seq_len = a->cal.seq_len};
        a->cal.model = a->base.in;
        a->cal.progress = (struct lms_calib_progress){.begin = calib_begin,
                                                      .step = cli_progress_cb,
                                                      .end = calib_end, .ctx = watch};
        rc = lms_calib_run(in, &a->cal, cal, imp, err);
        if (!rc && lms_calib_describe(*cal))
            snprintf(scores_from, cap, "activations on %s", lms_calib_describe(*cal));
    }
    return rc;
}

static void print_result(const struct prune_args *a, json_t *report, const struct lms_model *in,
                         const struct lms_model *out, const struct lms_calib *cal,
                         json_t *table, const char *scores_from)
{
    if (a->base.co.json) {
        json_t *o = json_pack("{s:b,s:b,s:s,s:s,s:O,s:I,s:I,s:I}", "ok", 1, "dry_run",
                              a->dry_run, "input", a->base.in, "output", a->base.out, "plan",
                              report, "n_params_before", (json_int_t)lms_model_n_params(in),
                              "n_params_after", (json_int_t)lms_model_n_params(out),
                              "tensor_bytes", (json_int_t)lms_model_nbytes(out));
        char words[600];
        describe_scores(report, scores_from, words, sizeof words);
        json_object_set_new(o, "scores", json_string(words));
        json_object_set_new(o, "shape", shape_json(report, in, out));
        if (cal)
            json_object_set_new(o, "calibration", lms_calib_json(cal));
        if (a->lsq)
            json_object_set_new(o, "reconstruction",
                                json_pack("{s:s,s:I,s:f}", "method", "lsq", "refitted",
                                          (json_int_t)a->n_refit, "ridge", LMS_RECON_RIDGE));
        if (table)
            json_object_set_new(o, "search", json_incref(table));
        cli_print_json(o);
    } else if (!a->base.co.quiet) {
        print_summary(a, report, in, out, scores_from[0] ? scores_from : "the given scores");
    }
}

static int run(void *args)
{
    struct prune_args *a = args;
    struct lms_error err;
    lms_error_clear(&err);
    const struct lms_format *src, *dst;
    int code = cli_formats(cmd, &a->base, &src, &dst);
    if (code != CLI_PARSED)
        return code;
    struct lms_model in, out;
    if (src->read(a->base.in, &in, &err))
        return cli_fail(cmd, &a->base.co, &err);
    cli_warn_model(cmd, &a->base.co, &in);
    struct lms_importance imp;
    lms_importance_init(&imp, &in.arch);
    struct lms_prune_plan plan;
    lms_prune_plan_init(&plan, in.arch.n_layers);
    struct lms_calib *cal = NULL;
    struct calib_watch watch;
    json_t *report = NULL, *table = NULL;
    bool have_out = false;
    char scores_from[512] = "";
    enum lms_status rc = lms_prune_targets_check(&a->t, &in.arch, &err);
    if (!rc)
        rc = gather_scores(a, &in, &imp, &cal, &watch, scores_from, sizeof scores_from, &err);
    if (!rc && a->target_params)
        rc = search(a, &in, &imp, cal, &table, &err);
    if (!rc)
        rc = lms_prune_plan_calibrated(&in, &a->t, &imp, cal, &plan, &report, &err);
    if (!rc && !(rc = lms_prune_apply(&in, &plan, &out, &err)))
        have_out = true;
    if (!rc && a->lsq && !a->dry_run)
        rc = lms_prune_reconstruct(&in, &plan, a->importance ? &a->gram_file : lms_calib_gram(cal),
                                   &out, &a->n_refit, &err);
    struct lms_write_result res = {0};
    if (!rc && !a->dry_run)
        rc = cli_write_checkpoint(&a->base, dst, &out, a->base.out, "pruning", &res, &err);
    if (rc)
        code = cli_fail(cmd, &a->base.co, &err);
    else
        print_result(a, report, &in, &out, cal, table, scores_from), code = CLI_EXIT_OK;
    if (have_out)
        lms_model_release(&out);
    json_decref(report);
    json_decref(table);
    lms_calib_free(cal);
    lms_prune_plan_release(&plan);
    lms_importance_release(&imp);
    lms_gram_release(&a->gram_file);
    lms_model_release(&in);
    return code;
}

/* ---- the arguments ------------------------------------------------------------------------ */

enum { O_PREC, O_IGNORED_COUNT, O_PARAMS, O_RANK_TOKENS, O_SEARCH_LAYERS, O_SEARCH_FFN,
       O_SEARCH_HIDDEN, O_SEARCH_HEADS };

#define TARGET(n, f)                                                                           \
    CLI_COUNT(n, struct prune_args, t.f, 1, INT64_C(1) << 40,                                  \
              "a --target option needs a positive integer, got '%s'")

static const struct cli_opt opts[] = {
    CLI_STRING("drop-layers", struct prune_args, t.drop_layers),
    CLI_STRING("keep-layers", struct prune_args, t.keep_layers),
    TARGET("target-num-layers", n_layers),
    CLI_STRING("layer-selection", struct prune_args, selection),
    CLI_STRING("layer-metric", struct prune_args, selection),
    TARGET("target-ffn-hidden-size", ffn),
    TARGET("target-hidden-size", hidden),
    TARGET("target-num-attention-heads", n_heads),
    TARGET("target-num-query-groups", n_groups),
    CLI_COUNT("multiple-of", struct prune_args, t.multiple_of, 1, INT64_C(1) << 20,
              "invalid --multiple-of '%s' (1 to 1048576)"),
    CLI_STRING("importance", struct prune_args, importance),
    CLI_STRING("reconstruct", struct prune_args, reconstruct),
    CLI_FLAG("dry-run", struct prune_args, dry_run),
    CLI_STRING("data-paths", struct prune_args, cal.data),
    CLI_STRING("data", struct prune_args, cal.data),
    CLI_COUNT("num-train-samples", struct prune_args, cal.n_samples, 1, INT64_C(1) << 32,
              "--num-train-samples needs a positive integer, got '%s'"),
    CLI_COUNT("num-samples", struct prune_args, cal.n_samples, 1, INT64_C(1) << 32,
              "--num-train-samples needs a positive integer, got '%s'"),
    CLI_COUNT("seq-length", struct prune_args, cal.seq_len, 2, 1 << 20,
              "invalid --seq-length '%s' (2 to 1048576)"),
    CLI_COUNT("mbs", struct prune_args, cal.mbs, 1, 4096, "invalid --mbs '%s' (1 to 4096)"),
    CLI_COUNT("micro-batch-size", struct prune_args, cal.mbs, 1, 4096,
              "invalid --mbs '%s' (1 to 4096)"),
    CLI_COUNT("seed", struct prune_args, cal.seed, 0, 0, "invalid --seed '%s'"),
    CLI_STRING("device", struct prune_args, cal.device),
    CLI_CALL("precision", O_PREC),
    CLI_COUNT("threads", struct prune_args, cal.threads, 1, 4096, "invalid --threads '%s'"),
    CLI_CALL("devices", O_IGNORED_COUNT),
    CLI_CALL("tp-size", O_IGNORED_COUNT),
    CLI_CALL("pp-size", O_IGNORED_COUNT),
    CLI_FLAG("legacy-ckpt", struct prune_args, legacy_ckpt),
    CLI_CALL("target-params", O_PARAMS),
    CLI_COUNT("candidate", struct prune_args, candidate, 1, 10000,
              "invalid --candidate '%s' (1 to 10000)"),
    CLI_COUNT("num-candidates", struct prune_args, n_candidates, 1, 10000,
              "invalid --num-candidates '%s' (1 to 10000)"),
    CLI_COUNT("eval-samples", struct prune_args, cal.eval_samples, 1, 1000000,
              "invalid --eval-samples '%s'"),
    CLI_STRING("rank-by", struct prune_args, rank_by),
    CLI_CALL("rank-tokens", O_RANK_TOKENS),
    CLI_COUNT("rank-top", struct prune_args, rank_top, 1, 10000,
              "invalid --rank-top '%s' (1 to 10000)"),
    CLI_CALL("search-num-layers", O_SEARCH_LAYERS),
    CLI_CALL("search-ffn-hidden-size", O_SEARCH_FFN),
    CLI_CALL("search-hidden-size", O_SEARCH_HIDDEN),
    CLI_CALL("search-num-attention-heads", O_SEARCH_HEADS),
    CLI_END,
};

static int on_option(void *args, int id, const char *value, const char *word)
{
    struct prune_args *a = args;
    switch (id) {
    case O_PREC: {
        struct lms_error perr;
        if (lms_precision_parse(value, &a->cal.precision, &perr))
            return cli_usage_error(cmd, "%s", perr.msg);
        return 0;
    }
    case O_IGNORED_COUNT: {
        int64_t ignored;
        if (!cli_parse_count(value, &ignored) || ignored > 65536)
            return cli_usage_error(cmd, "%s needs a positive integer, got '%s'", word, value);
        return 0;
    }
    case O_PARAMS:
        if (!cli_parse_param_count(value, &a->target_params))
            return cli_usage_error(cmd, "invalid --target-params '%s' (e.g. 6B, 1.5M, "
                                   "11148288)", value);
        return 0;
    case O_RANK_TOKENS:
        if (!cli_parse_param_count(value, &a->rank_tokens))
            return cli_usage_error(cmd, "invalid --rank-tokens '%s' (e.g. 2M, 500k, 65536)",
                                   value);
        return 0;
    default: {
        struct lms_search_axis *axes[] = {&a->so.layers, &a->so.ffn, &a->so.hidden,
                                          &a->so.heads};
        if (!parse_range(value, axes[id - O_SEARCH_LAYERS]))
            return cli_usage_error(cmd, "invalid search range '%s' (MIN:MAX[:STEP])", value);
        return 0;
    }
    }
}

/* --rank-by and its options; fills a->so.rank. */
static int check_rank(struct prune_args *a)
{
    bool distill = a->rank_by && !strcmp(a->rank_by, "distill");
    if (a->rank_by && !distill && strcmp(a->rank_by, "loss"))
        return cli_usage_error(cmd, "unknown --rank-by '%s' (loss or distill)", a->rank_by);
    if (!distill && (a->rank_tokens || a->rank_top))
        return cli_usage_error(cmd, "--rank-tokens and --rank-top need --rank-by distill");
    if (!distill)
        return CLI_PARSED;
    if (!a->target_params)
        return cli_usage_error(cmd, "--rank-by distill ranks the --target-params search: give "
                               "--target-params");
    if (!a->cal.data)
        return cli_usage_error(cmd, "--rank-by distill needs calibration data (--data-paths) "
                               "to distill on and to score");
    a->so.rank = (struct lms_search_rank_opts){
        .by = LMS_RANK_DISTILL, .tokens = a->rank_tokens ? a->rank_tokens : 2000000,
        .top = a->rank_top ? a->rank_top : 3, .teacher = a->base.in};
    if (a->so.rank.tokens < a->cal.mbs * a->cal.seq_len)
        return cli_usage_error(cmd, "--rank-tokens %lld is less than one distillation step "
                               "(--mbs %lld x --seq-length %lld tokens)",
                               (long long)a->so.rank.tokens, (long long)a->cal.mbs,
                               (long long)a->cal.seq_len);
    return CLI_PARSED;
}

/* The checks of the whole set, before any file is read. */
static int check(void *args)
{
    struct prune_args *a = args;
    if (!a->base.out && !a->dry_run)
        return cli_usage_error(cmd, "expected IN and OUT");
    if (!a->base.out)
        a->base.out = "(dry run)";
    struct lms_error err;
    lms_error_clear(&err);
    const struct lms_path_role paths[] = {{a->base.out, NULL, LMS_PATH_WRITE},
                                          {a->base.in, NULL, LMS_PATH_READ},
                                          {a->cal.data, "the calibration data", LMS_PATH_READ_DATA},
                                          {a->importance, "the importance file", LMS_PATH_READ}};
    if (!a->dry_run && lms_paths_check(paths, sizeof paths / sizeof paths[0], &err))
        return cli_fail(cmd, &a->base.co, &err);
    if (a->selection && !lms_layer_selection_parse(a->selection, &a->t.selection, &a->t.metric))
        return cli_usage_error(cmd, "unknown --layer-selection '%s' (bi, block-bi, ppl, "
                               "contiguous, contiguous-last, last, importance, explicit)",
                               a->selection);
    if (lms_layer_selection_needs_data(a->t.selection, a->t.metric) && !a->cal.data &&
        !a->importance)
        return cli_usage_error(cmd, "--layer-selection %s needs calibration data (--data-paths) "
                               "or an --importance file scored with that layer metric",
                               a->selection);
    if (a->cal.data && a->importance)
        return cli_usage_error(cmd, "--data-paths and --importance exclude each other (calibrate "
                               "or read scores, not both)");
    if (a->reconstruct && strcmp(a->reconstruct, "lsq") && strcmp(a->reconstruct, "none"))
        return cli_usage_error(cmd, "unknown --reconstruct '%s' (lsq, none)", a->reconstruct);
    a->lsq = a->reconstruct && !strcmp(a->reconstruct, "lsq");
    if (a->lsq && !a->cal.data && !a->importance)
        return cli_usage_error(cmd, "--reconstruct lsq needs its statistics: calibration data "
                               "(--data-paths) or an --importance file scored with 'score "
                               "--reconstruct'");
    if (a->lsq && !a->t.ffn && !a->t.n_heads && !a->t.n_groups && !a->target_params)
        return cli_usage_error(cmd, "--reconstruct lsq refits after FFN or head pruning: give "
                               "--target-ffn-hidden-size, --target-num-attention-heads or "
                               "--target-num-query-groups");
    if (a->target_params && (a->t.ffn || a->t.hidden || a->t.n_heads || a->t.n_layers ||
                             a->t.n_groups || a->t.drop_layers || a->t.keep_layers))
        return cli_usage_error(cmd, "--target-params searches the shape: give no other target "
                               "(bound the search with the --search-* ranges instead)");
    if ((a->candidate || a->n_candidates) && !a->target_params)
        return cli_usage_error(cmd, "--candidate and --num-candidates need --target-params");
    if (a->candidate && a->n_candidates && a->candidate > a->n_candidates)
        return cli_usage_error(cmd, "--candidate %lld is beyond --num-candidates %lld",
                               (long long)a->candidate, (long long)a->n_candidates);
    return check_rank(a);
}

static const struct cli_spec spec = {
    .name = "prune", .help = {usage_text, usage_data, usage_search}, .shorts = "hfq",
    .groups = CLI_FORCE | CLI_WRITE,
    .positional = CLI_POS_IN_OUT, .out_optional = true, .opts = opts, .on_option = on_option,
    .check = check,
    .run = run,
};

int cmd_prune(int argc, char **argv)
{
    struct prune_args a = {.t = {.selection = LMS_LAYERS_AUTO}};
    lms_calib_opts_default(&a.cal);
    return cli_main(&spec, argc, argv, &a);
}
