/* lmsurgeon prune: cut a model to a target shape in one shot (depth and width), by importance
 * scores from a file or, without one, by weight magnitude; write a complete checkpoint. */
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "lms/alloc.h"
#include "lms/format.h"
#include "lms/importance.h"
#include "lms/json.h"
#include "lms/outdir.h"
#include "lms/surgery.h"

static const char usage_text[] =
    "usage: lmsurgeon prune IN OUT [axes...] [--importance FILE] [--dry-run] [--json] [--quiet]\n"
    "\n"
    "Depth (layers are numbered from 1, as in the reference workflow; layer 1 is model.layers.0):\n"
    "  --drop-layers LIST           drop these layers, e.g. 24-31,33\n"
    "  --keep-layers LIST           keep only these layers\n"
    "  --target-num-layers N        keep N layers chosen by --layer-selection\n"
    "  --layer-selection SEL        contiguous-last (default without layer scores: drop one block\n"
    "                               ending just before the last layer), last (drop the last\n"
    "                               layers), importance (drop the lowest-scoring layers; the\n"
    "                               default when --importance has layer scores), explicit\n"
    "Width (the same width in every layer; kept channels keep their original order):\n"
    "  --target-ffn-hidden-size F   FFN neurons per layer\n"
    "  --target-hidden-size H       hidden (residual stream) channels\n"
    "  --target-num-attention-heads N  query heads per layer, the same number in every group\n"
    "  --target-num-query-groups G  whole KV groups with their query heads\n"
    "Scores and output:\n"
    "  --importance FILE            importance scores (lmsurgeon-importance JSON, see README);\n"
    "                               axes missing from it fall back to weight magnitudes\n"
    "  --dry-run                    print the resulting config, size and kept indices; write nothing\n"
    "  --to FORMAT                  output format (default: the input's)\n"
    "  --dtype TYPE                 cast floating-point tensors (bf16, f16, f32)\n"
    "  --max-shard-size SIZE        bytes per shard (default 5GB)\n"
    "  --force                      replace OUT if it exists and is not empty\n"
    "  --json, --quiet, -h/--help\n"
    "Aliases: --restore-path (IN), --save-path (OUT); underscores work as hyphens.\n";

struct prune_args {
    const char *in, *out, *importance, *to;
    const char *drop_layers, *keep_layers;
    int64_t target_layers, target_ffn, target_hidden, target_heads, target_groups; /* 0 = unset */
    const char *selection;
    bool dry_run;
    struct cli_common co;
    struct lms_write_opts wo;
};

/* Parses "24-31,33" (1-based, inclusive ranges) into a 0-based membership array of L. */
static enum lms_status parse_layer_list(const char *s, int64_t L, bool *member,
                                        struct lms_error *err)
{
    const char *p = s;
    while (*p) {
        char *end;
        long long a = strtoll(p, &end, 10), b;
        if (end == p)
            return lms_error_set(err, LMS_EINVAL, "bad layer list '%s'", s);
        b = a;
        p = end;
        if (*p == '-') {
            b = strtoll(p + 1, &end, 10);
            if (end == p + 1)
                return lms_error_set(err, LMS_EINVAL, "bad layer list '%s'", s);
            p = end;
        }
        if (a < 1 || b > L || a > b)
            return lms_error_set(err, LMS_EINVAL,
                                 "layer range %lld-%lld is outside 1..%lld (layers are numbered from 1)",
                                 a, b, (long long)L);
        for (long long l = a; l <= b; l++)
            member[l - 1] = true;
        if (*p == ',')
            p++;
        else if (*p)
            return lms_error_set(err, LMS_EINVAL, "bad layer list '%s'", s);
    }
    return LMS_OK;
}

/* Depth part of the plan. */
static enum lms_status plan_layers(const struct prune_args *a, const struct lms_model *m,
                                   const struct lms_importance *imp, struct lms_prune_plan *plan,
                                   const char **how, struct lms_error *err)
{
    int64_t L = m->arch.n_layers;
    int n_ways = !!a->drop_layers + !!a->keep_layers + !!a->target_layers;
    if (n_ways == 0)
        return LMS_OK;
    if (n_ways > 1)
        return lms_error_set(err, LMS_EINVAL,
                             "use only one of --drop-layers, --keep-layers, --target-num-layers");
    if (a->drop_layers || a->keep_layers) {
        bool *member = lms_calloc((size_t)L, sizeof(bool));
        if (!member)
            return lms_error_set(err, LMS_ENOMEM, "out of memory");
        enum lms_status rc =
            parse_layer_list(a->drop_layers ? a->drop_layers : a->keep_layers, L, member, err);
        int64_t n = 0;
        for (int64_t l = 0; l < L; l++)
            n += a->drop_layers ? !member[l] : member[l];
        if (!rc && n == 0)
            rc = lms_error_set(err, LMS_EINVAL, "the layer list drops every layer");
        if (!rc && !(plan->layers.index = lms_malloc((size_t)n * sizeof(int64_t))))
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
        if (!rc) {
            plan->layers.n = 0;
            for (int64_t l = 0; l < L; l++)
                if (a->drop_layers ? !member[l] : member[l])
                    plan->layers.index[plan->layers.n++] = l;
        }
        lms_free(member);
        *how = "explicit";
        return rc;
    }
    if (a->target_layers > L)
        return lms_error_set(err, LMS_EINVAL, "--target-num-layers %lld is larger than the %lld layers",
                             (long long)a->target_layers, (long long)L);
    enum lms_layer_selection sel =
        imp && imp->layers ? LMS_LAYERS_IMPORTANCE : LMS_LAYERS_CONTIGUOUS_LAST;
    if (a->selection) {
        if (!strcmp(a->selection, "contiguous-last"))
            sel = LMS_LAYERS_CONTIGUOUS_LAST;
        else if (!strcmp(a->selection, "last"))
            sel = LMS_LAYERS_LAST;
        else if (!strcmp(a->selection, "importance"))
            sel = LMS_LAYERS_IMPORTANCE;
        else if (!strcmp(a->selection, "explicit"))
            return lms_error_set(err, LMS_EINVAL,
                                 "--layer-selection explicit needs --drop-layers or --keep-layers");
        else
            return lms_error_set(err, LMS_EINVAL, "unknown --layer-selection '%s'", a->selection);
    }
    if (sel == LMS_LAYERS_IMPORTANCE && !(imp && imp->layers))
        return lms_error_set(err, LMS_EINVAL,
                             "--layer-selection importance needs an --importance file with layer scores");
    *how = sel == LMS_LAYERS_IMPORTANCE ? "importance" : sel == LMS_LAYERS_LAST ? "last"
                                                                                : "contiguous-last";
    return lms_select_layers(sel, L, a->target_layers, imp ? imp->layers : NULL, &plan->layers,
                             err);
}

static struct lms_keep *per_layer(int64_t L)
{
    return lms_calloc((size_t)L, sizeof(struct lms_keep));
}

/* Width part of the plan from the scores. */
static enum lms_status plan_width(const struct prune_args *a, const struct lms_arch *ar,
                                  const struct lms_importance *imp, struct lms_prune_plan *plan,
                                  struct lms_error *err)
{
    int64_t L = ar->n_layers;
    enum lms_status rc = LMS_OK;
    if (a->target_hidden && a->target_hidden < ar->hidden)
        rc = lms_rank_keep(imp->hidden_s, ar->hidden, a->target_hidden, &plan->hidden, err);
    if (!rc && a->target_ffn && a->target_ffn < ar->ffn) {
        if (!(plan->ffn = per_layer(L)))
            return lms_error_set(err, LMS_ENOMEM, "out of memory");
        for (int64_t l = 0; l < L && !rc; l++)
            rc = lms_rank_keep(imp->ffn_s + l * ar->ffn, ar->ffn, a->target_ffn, &plan->ffn[l],
                               err);
    }
    int64_t ng = a->target_groups ? a->target_groups : ar->n_groups;
    int64_t r = ar->n_heads / ar->n_groups;
    if (!rc && ng < ar->n_groups) {
        if (!(plan->groups = per_layer(L)))
            return lms_error_set(err, LMS_ENOMEM, "out of memory");
        for (int64_t l = 0; l < L && !rc; l++)
            rc = lms_rank_keep(imp->groups + l * ar->n_groups, ar->n_groups, ng, &plan->groups[l],
                               err);
    }
    int64_t rk = a->target_heads ? a->target_heads / ng : r;
    if (!rc && rk < r) {
        /* group-local ranking (§3.2): the best rk heads inside every kept group */
        if (!(plan->heads = per_layer(L)))
            return lms_error_set(err, LMS_ENOMEM, "out of memory");
        for (int64_t l = 0; l < L && !rc; l++) {
            struct lms_keep *h = &plan->heads[l];
            if (!(h->index = lms_malloc((size_t)(ng * rk) * sizeof(int64_t))))
                return lms_error_set(err, LMS_ENOMEM, "out of memory");
            h->n = 0;
            for (int64_t gi = 0; gi < ng && !rc; gi++) {
                int64_t g = plan->groups ? plan->groups[l].index[gi] : gi;
                struct lms_keep in_group;
                rc = lms_rank_keep(imp->heads + l * ar->n_heads + g * r, r, rk, &in_group, err);
                for (int64_t j = 0; !rc && j < rk; j++)
                    h->index[h->n++] = g * r + in_group.index[j];
                if (!rc)
                    lms_free(in_group.index);
            }
        }
    }
    return rc;
}

static enum lms_status check_targets(const struct prune_args *a, const struct lms_arch *ar,
                                     struct lms_error *err)
{
    const struct {
        const char *flag;
        int64_t target, current;
    } t[] = {
        {"--target-num-layers", a->target_layers, ar->n_layers},
        {"--target-ffn-hidden-size", a->target_ffn, ar->ffn},
        {"--target-hidden-size", a->target_hidden, ar->hidden},
        {"--target-num-attention-heads", a->target_heads, ar->n_heads},
        {"--target-num-query-groups", a->target_groups, ar->n_groups},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        if (t[i].target < 0)
            return lms_error_set(err, LMS_EINVAL, "%s must be at least 1", t[i].flag);
        if (t[i].target > t[i].current)
            return lms_error_set(err, LMS_EINVAL, "%s %lld is larger than the current %lld",
                                 t[i].flag, (long long)t[i].target, (long long)t[i].current);
    }
    int64_t ng = a->target_groups ? a->target_groups : ar->n_groups;
    int64_t nh = a->target_heads ? a->target_heads : (ar->n_heads / ar->n_groups) * ng;
    if (nh % ng)
        return lms_error_set(err, LMS_EINVAL,
                             "--target-num-attention-heads %lld is not a multiple of the %lld query "
                             "groups (every group keeps the same number of heads)",
                             (long long)nh, (long long)ng);
    if (nh / ng > ar->n_heads / ar->n_groups)
        return lms_error_set(err, LMS_EINVAL,
                             "%lld heads over %lld query groups is more than the %lld heads per "
                             "group the model has",
                             (long long)nh, (long long)ng, (long long)(ar->n_heads / ar->n_groups));
    return LMS_OK;
}

static json_t *keep_summary(const struct lms_prune_plan *p, const struct lms_model *in,
                            const struct lms_model *out)
{
    json_t *o = json_object();
    if (p->layers.index) {
        json_t *kept = json_array();
        for (int64_t i = 0; i < p->layers.n; i++)
            json_array_append_new(kept, json_integer(p->layers.index[i]));
        json_object_set_new(o, "kept_layers", kept);
    }
    json_object_set_new(o, "layers", json_pack("[I,I]", (json_int_t)in->arch.n_layers,
                                               (json_int_t)out->arch.n_layers));
    json_object_set_new(o, "hidden_size", json_pack("[I,I]", (json_int_t)in->arch.hidden,
                                                    (json_int_t)out->arch.hidden));
    json_object_set_new(o, "ffn_hidden_size", json_pack("[I,I]", (json_int_t)in->arch.ffn,
                                                        (json_int_t)out->arch.ffn));
    json_object_set_new(o, "num_attention_heads", json_pack("[I,I]", (json_int_t)in->arch.n_heads,
                                                            (json_int_t)out->arch.n_heads));
    json_object_set_new(o, "num_query_groups", json_pack("[I,I]", (json_int_t)in->arch.n_groups,
                                                         (json_int_t)out->arch.n_groups));
    return o;
}

static void print_summary(const struct prune_args *a, const struct lms_prune_plan *p,
                          const struct lms_model *in, const struct lms_model *out,
                          const char *scores, const char *depth_how)
{
    const struct lms_arch *x = &in->arch, *y = &out->arch;
    char b1[32], b2[32];
    cli_format_bytes(lms_model_nbytes(in), b1, sizeof(b1));
    cli_format_bytes(lms_model_nbytes(out), b2, sizeof(b2));
    printf("%s '%s' -> '%s'\n", a->dry_run ? "would prune" : "pruned", a->in, a->out);
    printf("  layers               %" PRId64 " -> %" PRId64, x->n_layers, y->n_layers);
    if (p->layers.index) {
        printf(" (%s; kept, 1-based:", depth_how);
        for (int64_t i = 0; i < p->layers.n; i++)
            printf(" %" PRId64, p->layers.index[i] + 1);
        printf(")");
    }
    printf("\n  hidden_size          %" PRId64 " -> %" PRId64 "\n", x->hidden, y->hidden);
    printf("  intermediate_size    %" PRId64 " -> %" PRId64 "\n", x->ffn, y->ffn);
    printf("  num_attention_heads  %" PRId64 " -> %" PRId64 "\n", x->n_heads, y->n_heads);
    printf("  num_key_value_heads  %" PRId64 " -> %" PRId64 "\n", x->n_groups, y->n_groups);
    printf("  head_dim             %" PRId64 " (unchanged, written explicitly)\n", y->head_dim);
    printf("  parameters           %" PRId64 " -> %" PRId64 " (%.1f%%)\n", lms_model_n_params(in),
           lms_model_n_params(out),
           100.0 * (double)lms_model_n_params(out) / (double)lms_model_n_params(in));
    printf("  tensor bytes         %s -> %s\n", b1, b2);
    printf("  channel scores       %s\n", scores);
}

static int run(struct prune_args *a)
{
    struct lms_error err;
    lms_error_clear(&err);
    struct cli_common *co = &a->co;
    if (!a->dry_run && lms_path_check_not_input(a->out, a->in, &err))
        return cli_fail("prune", co, &err);
    const struct lms_format *src = lms_format_detect(a->in, &err);
    if (!src)
        return cli_fail("prune", co, &err);
    const struct lms_format *dst = a->to ? lms_format_find(a->to) : src;
    if (!dst)
        return cli_usage_error("prune", "unknown --to '%s'", a->to);
    struct lms_model in, out;
    struct lms_read_opts ro = {0};
    if (src->read(a->in, &ro, &in, &err))
        return cli_fail("prune", co, &err);
    int code = CLI_EXIT_OK;
    struct lms_importance imp;
    lms_importance_init(&imp, &in.arch);
    struct lms_prune_plan plan;
    lms_prune_plan_init(&plan, in.arch.n_layers);
    const char *depth_how = "";
    enum lms_status rc = check_targets(a, &in.arch, &err);
    if (!rc && a->importance) {
        lms_importance_release(&imp);
        rc = lms_importance_read(a->importance, &imp, &err);
        if (!rc)
            rc = lms_importance_check(&imp, &in.arch, a->importance, &err);
    }
    /* width axes without scores fall back to weight magnitudes */
    unsigned need = (a->target_hidden && a->target_hidden < in.arch.hidden ? LMS_AXIS_HIDDEN : 0) |
                    (a->target_ffn && a->target_ffn < in.arch.ffn ? LMS_AXIS_FFN : 0) |
                    (a->target_heads ? LMS_AXIS_HEADS : 0) |
                    (a->target_groups && a->target_groups < in.arch.n_groups ? LMS_AXIS_GROUPS : 0);
    unsigned missing = need & ~lms_importance_axes(&imp);
    if (!rc && missing)
        rc = lms_importance_magnitude(&in, missing, &imp, &err);
    char scores[160];
    snprintf(scores, sizeof(scores), "%s%s",
             !need ? "none needed"
             : a->importance ? a->importance
                             : "weight magnitude (no --importance given)",
             a->importance && missing ? " + weight magnitude for axes it lacks" : "");
    if (!rc)
        rc = plan_layers(a, &in, a->importance ? &imp : NULL, &plan, &depth_how, &err);
    if (!rc)
        rc = plan_width(a, &in.arch, &imp, &plan, &err);
    if (!rc)
        rc = lms_prune_apply(&in, &plan, &out, &err);
    if (rc) {
        code = cli_fail("prune", co, &err);
        goto done;
    }
    struct lms_write_result res = {0};
    if (!a->dry_run) {
        struct cli_progress bar;
        cli_progress_begin(&bar, "pruning", lms_model_nbytes(&out), true, co->quiet);
        a->wo.progress = cli_progress_cb;
        a->wo.progress_ctx = &bar;
        rc = dst->write(&out, a->out, &a->wo, &res, &err);
        if (!rc)
            cli_progress_end(&bar);
        else if (bar.enabled)
            fputc('\n', stderr);
    }
    if (rc) {
        code = cli_fail("prune", co, &err);
    } else if (co->json) {
        json_t *o = json_pack("{s:b,s:b,s:s,s:s,s:o,s:I,s:I,s:I,s:s}", "ok", 1, "dry_run",
                              a->dry_run, "input", a->in, "output", a->out, "shape",
                              keep_summary(&plan, &in, &out), "n_params_before",
                              (json_int_t)lms_model_n_params(&in), "n_params_after",
                              (json_int_t)lms_model_n_params(&out), "tensor_bytes",
                              (json_int_t)lms_model_nbytes(&out), "scores", scores);
        cli_print_json(o);
    } else if (!co->quiet) {
        print_summary(a, &plan, &in, &out, scores, depth_how);
    }
    lms_model_release(&out);
done:
    lms_prune_plan_release(&plan);
    lms_importance_release(&imp);
    lms_model_release(&in);
    return code;
}

int cmd_prune(int argc, char **argv)
{
    enum { O_DROP = 256, O_KEEP, O_TL, O_SEL, O_TF, O_TH, O_TA, O_TG, O_IMP, O_DRY, O_TO,
           O_DTYPE, O_SHARD, O_RESTORE, O_SAVE };
    static const struct option opts[] = {
        {"drop-layers", required_argument, NULL, O_DROP},
        {"keep-layers", required_argument, NULL, O_KEEP},
        {"target-num-layers", required_argument, NULL, O_TL},
        {"layer-selection", required_argument, NULL, O_SEL},
        {"target-ffn-hidden-size", required_argument, NULL, O_TF},
        {"target-hidden-size", required_argument, NULL, O_TH},
        {"target-num-attention-heads", required_argument, NULL, O_TA},
        {"target-num-query-groups", required_argument, NULL, O_TG},
        {"importance", required_argument, NULL, O_IMP},
        {"dry-run", no_argument, NULL, O_DRY},
        {"to", required_argument, NULL, O_TO},
        {"dtype", required_argument, NULL, O_DTYPE},
        {"max-shard-size", required_argument, NULL, O_SHARD},
        {"restore-path", required_argument, NULL, O_RESTORE},
        {"save-path", required_argument, NULL, O_SAVE},
        {"force", no_argument, NULL, 'f'},
        {"json", no_argument, NULL, 'j'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct prune_args a = {.wo = {.dtype = LMS_DTYPE_COUNT}};
    int64_t *counts[] = {[O_TL - O_TL] = &a.target_layers, [O_TF - O_TL] = &a.target_ffn,
                         [O_TH - O_TL] = &a.target_hidden, [O_TA - O_TL] = &a.target_heads,
                         [O_TG - O_TL] = &a.target_groups};
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "hfq", opts, NULL)) != -1) {
        switch (c) {
        case O_DROP:
            a.drop_layers = optarg;
            break;
        case O_KEEP:
            a.keep_layers = optarg;
            break;
        case O_SEL:
            a.selection = optarg;
            break;
        case O_TL:
        case O_TF:
        case O_TH:
        case O_TA:
        case O_TG:
            if (!cli_parse_count(optarg, counts[c - O_TL]) || *counts[c - O_TL] > (INT64_C(1) << 40))
                return cli_usage_error("prune", "a --target option needs a positive integer, got '%s'",
                                       optarg);
            break;
        case O_IMP:
            a.importance = optarg;
            break;
        case O_DRY:
            a.dry_run = true;
            break;
        case O_TO:
            a.to = optarg;
            break;
        case O_DTYPE:
            if (!lms_dtype_parse_user(optarg, &a.wo.dtype) || !lms_dtype_is_castable(a.wo.dtype))
                return cli_usage_error("prune", "unknown --dtype '%s' (bf16, f16, f32)", optarg);
            break;
        case O_SHARD:
            if (!cli_parse_size(optarg, &a.wo.max_shard_size) || a.wo.max_shard_size == 0)
                return cli_usage_error("prune", "invalid --max-shard-size '%s'", optarg);
            break;
        case O_RESTORE:
            a.in = optarg;
            break;
        case O_SAVE:
            a.out = optarg;
            break;
        case 'f':
            a.wo.force = true;
            break;
        case 'j':
            a.co.json = true;
            break;
        case 'q':
            a.co.quiet = true;
            break;
        case 'h':
            fputs(usage_text, stdout);
            return CLI_EXIT_OK;
        default:
            return cli_usage_error("prune", "unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    int npos = argc - optind;
    if (!a.in && npos > 0)
        a.in = argv[optind++], npos--;
    if (!a.out && npos > 0)
        a.out = argv[optind++], npos--;
    if (!a.in || npos > 0 || (!a.out && !a.dry_run))
        return cli_usage_error("prune", "expected IN and OUT");
    if (!a.out)
        a.out = "(dry run)";
    return run(&a);
}
