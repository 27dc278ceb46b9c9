/* Prune planning (lms_prune_plan_make) and the parameter-budget search, against hand-worked
 * expectations: kept sets derived by hand from the scores below, the teacher's published Block
 * Influence values and kept set, and parameter counts worked out from the config and checked
 * against the pruned IR's own tensor count. */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "check_main.h"
#include "lms/alloc.h"
#include "lms/format.h"
#include "lms/importance.h"
#include "lms/surgery.h"

static void load(const char *rel, struct lms_model *m)
{
    char p[1024];
    struct lms_error err;
    ck_assert_msg(lms_checkpoint_read(fixture_path(rel, p, sizeof(p)), m, &err) == LMS_OK, "%s",
                  err.msg);
}

static void assert_keep(const struct lms_keep *k, const int64_t *want, int64_t n)
{
    ck_assert_int_eq(k->n, n);
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(k->index[i] == want[i], "index %lld: %lld, want %lld", (long long)i,
                      (long long)k->index[i], (long long)want[i]);
}

/* The teacher's Block Influence per layer over 64 calibration windows, as published with the
 * reference data; the 4 lowest are layers 9 (0.059), 2 and 7 (0.061, tie), 8 (0.065). */
static const double teacher_bi[12] = {0.763, 0.126, 0.061, 0.133, 0.101, 0.069,
                                      0.073, 0.061, 0.065, 0.059, 0.067, 0.089};

/* An importance holding only a layer metric. */
static void depth_scores(struct lms_importance *imp, const struct lms_model *m,
                         enum lms_layer_metric metric, const double *layers, int64_t n_blocks,
                         const double *blocks)
{
    lms_importance_init(imp, &m->arch);
    imp->layer_metric = metric;
    if (layers) {
        imp->layers = lms_malloc(12 * sizeof(double));
        memcpy(imp->layers, layers, 12 * sizeof(double));
    }
    if (blocks) {
        imp->block_size = 13 - n_blocks;
        imp->blocks = lms_malloc((size_t)n_blocks * sizeof(double));
        memcpy(imp->blocks, blocks, (size_t)n_blocks * sizeof(double));
    }
}

static void release_scores(struct lms_importance *imp)
{
    lms_free(imp->blocks); /* owned by the importance, freed here in case release predates it */
    imp->blocks = NULL;
    lms_importance_release(imp);
}

START_TEST(depth_by_block_influence)
{
    struct lms_model m;
    load("teacher", &m);
    struct lms_prune_targets t = {.n_layers = 8, .selection = LMS_LAYERS_AUTO};
    struct lms_importance d;
    depth_scores(&d, &m, LMS_LAYER_METRIC_BI, teacher_bi, 0, NULL);
    struct lms_prune_plan p;
    json_t *rep;
    struct lms_error err;
    ck_assert_msg(lms_prune_plan_make(&m, &t, &d, &p, &rep, &err) == LMS_OK, "%s", err.msg);
    const int64_t want[] = {0, 1, 3, 4, 5, 6, 10, 11};
    assert_keep(&p.layers, want, 8);
    json_t *l = json_object_get(rep, "layers");
    ck_assert_str_eq(json_string_value(json_object_get(l, "selection")), "bi");
    ck_assert_ptr_nonnull(json_object_get(l, "chosen_by"));
    ck_assert_int_eq(json_array_size(json_object_get(l, "dropped")), 4);
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(l, "dropped"), 0)), 2);
    ck_assert_ptr_null(p.ffn);
    ck_assert_ptr_null(p.hidden.index);
    json_decref(rep);
    lms_prune_plan_release(&p);

    /* ppl: the layers whose removal raises the loss most are kept */
    double ppl[12];
    for (int i = 0; i < 12; i++)
        ppl[i] = 3.0 + teacher_bi[i];
    ppl[11] = 3.0; /* removing the last layer costs nothing: it goes first */
    struct lms_importance dp;
    depth_scores(&dp, &m, LMS_LAYER_METRIC_PPL, ppl, 0, NULL);
    t.selection = LMS_LAYERS_METRIC;
    t.metric = LMS_LAYER_METRIC_PPL;
    ck_assert_int_eq(lms_prune_plan_make(&m, &t, &dp, &p, NULL, &err), LMS_OK);
    /* the four lowest: 11 (3.0), 9 (3.059), 2 and 7 (3.061); 8 (3.065) stays */
    const int64_t want_ppl[] = {0, 1, 3, 4, 5, 6, 8, 10};
    assert_keep(&p.layers, want_ppl, 8);
    lms_prune_plan_release(&p);

    /* bi asked with only ppl scores, or without any: refused */
    t.selection = LMS_LAYERS_METRIC;
    t.metric = LMS_LAYER_METRIC_BI;
    ck_assert_int_eq(lms_prune_plan_make(&m, &t, &dp, &p, NULL, &err), LMS_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "calibration"));
    ck_assert_int_eq(lms_prune_plan_make(&m, &t, NULL, &p, NULL, &err), LMS_EINVAL);
    release_scores(&dp);
    /* AUTO without any scores: contiguous-last (layers 8..11 1-based dropped, last kept) */
    t.selection = LMS_LAYERS_AUTO;
    ck_assert_int_eq(lms_prune_plan_make(&m, &t, NULL, &p, NULL, &err), LMS_OK);
    const int64_t want_cl[] = {0, 1, 2, 3, 4, 5, 6, 11};
    assert_keep(&p.layers, want_cl, 8);
    lms_prune_plan_release(&p);
    release_scores(&d);
    lms_model_release(&m);
}
END_TEST

START_TEST(depth_by_blocks)
{
    struct lms_model m;
    load("teacher", &m);
    /* 12 -> 8: blocks of 4 layers, starts 0..8 */
    double bbi[9] = {0.9, 0.5, 0.3, 0.2, 0.25, 0.2, 0.22, 0.4, 0.6};
    struct lms_importance d;
    depth_scores(&d, &m, LMS_LAYER_METRIC_BLOCK_BI, teacher_bi, 9, bbi);
    struct lms_prune_targets t = {.n_layers = 8, .selection = LMS_LAYERS_METRIC,
                                  .metric = LMS_LAYER_METRIC_BLOCK_BI};
    struct lms_prune_plan p;
    json_t *rep;
    struct lms_error err;
    ck_assert_msg(lms_prune_plan_make(&m, &t, &d, &p, &rep, &err) == LMS_OK, "%s", err.msg);
    /* lowest 0.2 at starts 3 and 5: the earlier block 3..6 goes */
    const int64_t want[] = {0, 1, 2, 7, 8, 9, 10, 11};
    assert_keep(&p.layers, want, 8);
    json_t *l = json_object_get(rep, "layers");
    ck_assert_int_eq(json_integer_value(json_object_get(l, "dropped_block_start")), 3);
    json_decref(rep);
    lms_prune_plan_release(&p);
    /* block-bi scores also carry the per-layer BI: bi works from them */
    t.selection = LMS_LAYERS_METRIC;
    t.metric = LMS_LAYER_METRIC_BI;
    ck_assert_int_eq(lms_prune_plan_make(&m, &t, &d, &p, NULL, &err), LMS_OK);
    const int64_t want_bi[] = {0, 1, 3, 4, 5, 6, 10, 11};
    assert_keep(&p.layers, want_bi, 8);
    lms_prune_plan_release(&p);
    /* contiguous needs its own metric */
    t.selection = LMS_LAYERS_METRIC;
    t.metric = LMS_LAYER_METRIC_CONTIGUOUS;
    ck_assert_int_eq(lms_prune_plan_make(&m, &t, &d, &p, NULL, &err), LMS_EINVAL);
    release_scores(&d);
    bbi[8] = 0.1; /* the last block wins: layers 8..11 */
    depth_scores(&d, &m, LMS_LAYER_METRIC_CONTIGUOUS, NULL, 9, bbi);
    ck_assert_int_eq(lms_prune_plan_make(&m, &t, &d, &p, NULL, &err), LMS_OK);
    const int64_t want_c[] = {0, 1, 2, 3, 4, 5, 6, 7};
    assert_keep(&p.layers, want_c, 8);
    lms_prune_plan_release(&p);
    /* AUTO follows the metric the scores hold */
    t.selection = LMS_LAYERS_AUTO;
    ck_assert_int_eq(lms_prune_plan_make(&m, &t, &d, &p, NULL, &err), LMS_OK);
    assert_keep(&p.layers, want_c, 8);
    lms_prune_plan_release(&p);
    /* metrics for another block length do not apply, and the message says why */
    t.n_layers = 9;
    ck_assert_int_eq(lms_prune_plan_make(&m, &t, &d, &p, NULL, &err), LMS_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "blocks of 4 layers"));
    release_scores(&d);
    /* explicit lists are 1-based */
    t = (struct lms_prune_targets){.drop_layers = "3,8-10", .selection = LMS_LAYERS_AUTO};
    ck_assert_int_eq(lms_prune_plan_make(&m, &t, NULL, &p, NULL, &err), LMS_OK);
    const int64_t want_e[] = {0, 1, 3, 4, 5, 6, 10, 11};
    assert_keep(&p.layers, want_e, 8);
    lms_prune_plan_release(&p);
    lms_model_release(&m);
}
END_TEST

START_TEST(width_from_scores)
{
    struct lms_model m;
    load("models/qwen3-tiny", &m); /* L 4, H 64, F 160, 4 heads in 2 groups */
    struct lms_importance imp;
    lms_importance_init(&imp, &m.arch);
    imp.method = lms_strdup("activation");
    imp.hidden_s = lms_malloc(64 * sizeof(double));
    imp.ffn_s = lms_malloc(4 * 160 * sizeof(double));
    imp.heads = lms_malloc(4 * 4 * sizeof(double));
    imp.groups = lms_malloc(4 * 2 * sizeof(double));
    for (int i = 0; i < 64; i++)
        imp.hidden_s[i] = (i * 37) % 64; /* a permutation of 0..63 */
    for (int l = 0; l < 4; l++) {
        for (int j = 0; j < 160; j++)
            imp.ffn_s[l * 160 + j] = j == 10 * l ? 100 : j == 150 - l ? 99 : 1;
        /* heads: group 0 = {0.1, 0.9}, group 1 = {0.8, 0.3}; groups rank 1 over 0 in layer 2 */
        double h[4] = {0.1, 0.9, 0.8, 0.3};
        memcpy(imp.heads + l * 4, h, sizeof h);
        imp.groups[l * 2] = l == 2 ? 0.5 : 2;
        imp.groups[l * 2 + 1] = 1;
    }
    struct lms_prune_targets t = {.hidden = 4, .ffn = 2, .n_heads = 2,
                                  .selection = LMS_LAYERS_AUTO};
    struct lms_prune_plan p;
    json_t *rep;
    struct lms_error err;
    ck_assert_msg(lms_prune_plan_make(&m, &t, &imp, &p, &rep, &err) == LMS_OK, "%s",
                  err.msg);
    /* the inverse of 37 mod 64 is 45 (37 * 45 = 26 * 64 + 1), so the value v sits at
     * i = 45 v mod 64: 63 -> 19, 62 -> 38, 61 -> 57, 60 -> 12 */
    const int64_t want_h[] = {12, 19, 38, 57};
    assert_keep(&p.hidden, want_h, 4);
    for (int l = 0; l < 4; l++) {
        const int64_t want_f[] = {10 * l, 150 - l};
        assert_keep(&p.ffn[l], want_f, 2);
        /* one head per group, the best inside each group: 1 and 2 */
        const int64_t want_a[] = {1, 2};
        assert_keep(&p.heads[l], want_a, 2);
    }
    ck_assert_ptr_null(p.groups);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(rep, "ffn_hidden_size"),
                                                       "scores")),
                     "activation");
    json_decref(rep);
    lms_prune_plan_release(&p);

    /* one group of two heads: layer 2 keeps group 1 (heads 2, 3), the others group 0 */
    t = (struct lms_prune_targets){.n_groups = 1, .selection = LMS_LAYERS_AUTO};
    ck_assert_int_eq(lms_prune_plan_make(&m, &t, &imp, &p, NULL, &err), LMS_OK);
    for (int l = 0; l < 4; l++)
        ck_assert_int_eq(p.groups[l].index[0], l == 2 ? 1 : 0);
    ck_assert_ptr_null(p.heads);
    lms_prune_plan_release(&p);
    /* one group, one head: the best head inside the kept group */
    t.n_heads = 1;
    ck_assert_int_eq(lms_prune_plan_make(&m, &t, &imp, &p, NULL, &err), LMS_OK);
    for (int l = 0; l < 4; l++)
        ck_assert_int_eq(p.heads[l].index[0], l == 2 ? 2 : 1);
    lms_prune_plan_release(&p);

    /* axes the scores lack are ranked by weight magnitude, and the report says so */
    lms_free(imp.ffn_s);
    imp.ffn_s = NULL;
    t = (struct lms_prune_targets){.ffn = 80, .hidden = 32, .selection = LMS_LAYERS_AUTO};
    ck_assert_int_eq(lms_prune_plan_make(&m, &t, &imp, &p, &rep, &err), LMS_OK);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(rep, "ffn_hidden_size"),
                                                       "scores")),
                     "weight-magnitude");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(rep, "hidden_size"),
                                                       "scores")),
                     "activation");
    ck_assert_int_eq(p.ffn[3].n, 80);
    json_decref(rep);
    lms_prune_plan_release(&p);
    lms_importance_release(&imp);
    lms_model_release(&m);
}
END_TEST

START_TEST(targets_are_checked)
{
    struct lms_model m;
    load("teacher", &m);
    struct lms_prune_plan p;
    struct lms_error err;
    const struct {
        struct lms_prune_targets t;
        const char *msg;
    } bad[] = {
        {{.ffn = 1000}, "larger than the current"},
        {{.n_layers = 13}, "larger than the current"},
        {{.n_heads = 3}, "not a multiple"},
        {{.n_groups = 1, .n_heads = 6}, "more than the 4 heads per group"},
        {{.drop_layers = "1-12"}, "drops every layer"},
        {{.drop_layers = "0"}, "outside 1..12"},
        {{.drop_layers = "2", .n_layers = 8}, "only one of"},
        {{.n_layers = 8, .selection = LMS_LAYERS_IMPORTANCE}, "needs an --importance"},
        {{.n_layers = 8, .selection = LMS_LAYERS_METRIC, .metric = LMS_LAYER_METRIC_CONTIGUOUS},
         "calibration"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lms_error_clear(&err);
        ck_assert_int_eq(lms_prune_plan_make(&m, &bad[i].t, NULL, &p, NULL, &err),
                         LMS_EINVAL);
        ck_assert_msg(strstr(err.msg, bad[i].msg), "case %zu: '%s'", i, err.msg);
        ck_assert_ptr_null(p.layers.index);
        lms_prune_plan_release(&p);
    }
    lms_model_release(&m);
}
END_TEST

START_TEST(budget_search_counts_exactly)
{
    struct lms_model m;
    load("teacher", &m);
    /* P = 2 V H + H + L (2H + H d (n_h + 2 n_g) + n_h d H + 3 H F + 2 d), V 4096, d 32, n_g 2:
     * the teacher, L 12, H 256, F 768, n_h 8: 2097152 + 256 + 12 * 754240 = 11148288 */
    ck_assert_int_eq(lms_arch_n_params(&m.arch), 11148288);
    struct lms_search_opts o = {.target_params = 7000000, .max_candidates = 5,
                                .layers = {8, 12, 0}, .ffn = {384, 0, 0}, .hidden = {192, 0, 0}};
    struct lms_candidate *c;
    int64_t n, n_fit;
    struct lms_error err;
    ck_assert_msg(lms_search_candidates(&m.arch, &o, &c, &n, &n_fit, &err) == LMS_OK, "%s",
                  err.msg);
    ck_assert_int_eq(n, 5);
    /* L 10, F 768, H 192, n_h 6: 1572864 + 192 + 10 * (384 + 61440 + 36864 + 442368 + 64) */
    ck_assert_int_eq(c[0].n_layers, 10);
    ck_assert_int_eq(c[0].ffn, 768);
    ck_assert_int_eq(c[0].hidden, 192);
    ck_assert_int_eq(c[0].n_heads, 6);
    ck_assert_int_eq(c[0].n_params, 6984256);
    for (int64_t i = 0; i < n; i++) {
        ck_assert(c[i].n_params <= 7000000);
        ck_assert(i == 0 || c[i].n_params <= c[i - 1].n_params);
        /* the count equals the IR's count of the pruned model */
        struct lms_prune_targets t = {.n_layers = c[i].n_layers, .ffn = c[i].ffn,
                                      .hidden = c[i].hidden, .n_heads = c[i].n_heads,
                                      .selection = LMS_LAYERS_AUTO};
        struct lms_prune_plan p;
        struct lms_model out;
        ck_assert_int_eq(lms_prune_plan_make(&m, &t, NULL, &p, NULL, &err), LMS_OK);
        ck_assert_int_eq(lms_prune_apply(&m, &p, &out, &err), LMS_OK);
        ck_assert_int_eq(lms_model_n_params(&out), c[i].n_params);
        lms_model_release(&out);
        lms_prune_plan_release(&p);
    }
    lms_free(c);

    /* default grid: L 10..12 step 2, F 480..768 step 32 (10), H 160..256 step 16 (7), heads 6, 8;
     * a budget above the model keeps every shape, the model itself first */
    o = (struct lms_search_opts){.target_params = 20000000, .max_candidates = 1000};
    ck_assert_int_eq(lms_search_candidates(&m.arch, &o, &c, &n, &n_fit, &err), LMS_OK);
    ck_assert_int_eq(n_fit, 2 * 10 * 7 * 2);
    ck_assert_int_eq(c[0].n_params, 11148288);
    lms_free(c);
    o.target_params = 1000;
    ck_assert_int_eq(lms_search_candidates(&m.arch, &o, &c, &n, &n_fit, &err), LMS_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "no shape"));
    o = (struct lms_search_opts){.target_params = 5000000, .layers = {1, 0, 1},
                                 .ffn = {1, 0, 1}, .hidden = {1, 0, 1}};
    ck_assert_int_eq(lms_search_candidates(&m.arch, &o, &c, &n, &n_fit, &err), LMS_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "narrow"));
    lms_model_release(&m);
}
END_TEST

/* The documented grid of one axis, worked out here by brute force: the values in [lo, hi] that
 * are multiples of step and of unit, below hi, plus hi when it is a multiple of unit. */
static int64_t grid_axis(int64_t lo, int64_t hi, int64_t step, int64_t unit, int64_t *v)
{
    int64_t n = 0;
    for (int64_t x = lo; x < hi; x++)
        if (x % step == 0 && x % unit == 0)
            v[n++] = x;
    if (hi % unit == 0)
        v[n++] = hi;
    return n;
}

/* Keeps the values of v that pass keep(x, m) (the --multiple-of rule), in order. */
static int64_t filter_axis(int64_t *v, int64_t n, int64_t m, bool heads)
{
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++)
        if ((heads ? v[i] * 32 : v[i]) % m == 0) /* the teacher's head_dim is 32 */
            v[k++] = v[i];
    return k;
}

static int64_t find(const int64_t *v, int64_t n, int64_t x)
{
    for (int64_t i = 0; i < n; i++)
        if (v[i] == x)
            return i;
    return -1;
}

START_TEST(budget_search_multiple_of)
{
    struct lms_model m;
    load("teacher", &m);
    /* the teacher's default grid (README): L 10..12 step 2; F from ceil(0.6 x 768) = 461,
     * step 32; H from 154, step 16; heads from 5, multiples of the 2 groups */
    const int64_t ms[] = {1, 32, 64, 96, 128, 256};
    for (size_t t = 0; t < sizeof ms / sizeof ms[0]; t++) {
        int64_t M = ms[t], vl[16], vf[512], vh[512], va[16];
        int64_t nl = grid_axis(10, 12, 2, 1, vl);
        int64_t nf = filter_axis(vf, grid_axis(461, 768, 32, 1, vf), M, false);
        int64_t nh = filter_axis(vh, grid_axis(154, 256, 16, 1, vh), M, false);
        int64_t na = filter_axis(va, grid_axis(5, 8, 2, 2, va), M, true);
        struct lms_search_opts o = {.target_params = INT64_C(1) << 40, .max_candidates = 100000,
                                    .multiple_of = M};
        struct lms_candidate *c;
        int64_t n, n_fit;
        struct lms_error err;
        ck_assert_msg(lms_search_candidates(&m.arch, &o, &c, &n, &n_fit, &err) == LMS_OK,
                      "M %lld: %s", (long long)M, err.msg);
        /* the same set: as many shapes, each in the expected product, none twice */
        ck_assert_msg(n_fit == nl * nf * nh * na, "M %lld: %lld shapes, want %lld", (long long)M,
                      (long long)n_fit, (long long)(nl * nf * nh * na));
        bool *seen = lms_calloc((size_t)n_fit, sizeof(bool));
        for (int64_t i = 0; i < n; i++) {
            ck_assert(c[i].ffn % M == 0 && c[i].hidden % M == 0 && c[i].n_heads * 32 % M == 0);
            int64_t il = find(vl, nl, c[i].n_layers), jf = find(vf, nf, c[i].ffn),
                    kh = find(vh, nh, c[i].hidden), ha = find(va, na, c[i].n_heads);
            ck_assert_msg(il >= 0 && jf >= 0 && kh >= 0 && ha >= 0,
                          "M %lld: unexpected shape L %lld F %lld H %lld n_h %lld", (long long)M,
                          (long long)c[i].n_layers, (long long)c[i].ffn, (long long)c[i].hidden,
                          (long long)c[i].n_heads);
            int64_t idx = ((il * nf + jf) * nh + kh) * na + ha;
            ck_assert(!seen[idx]);
            seen[idx] = true;
        }
        lms_free(seen);
        lms_free(c);
    }
    /* by hand for 128: F 512, 640, 768; H 256; heads 4 x 32 = 128: 8 (6 is not) */
    struct lms_search_opts o = {.target_params = INT64_C(1) << 40, .max_candidates = 100000,
                                .multiple_of = 128};
    struct lms_candidate *c;
    int64_t n, n_fit;
    struct lms_error err;
    ck_assert_int_eq(lms_search_candidates(&m.arch, &o, &c, &n, &n_fit, &err), LMS_OK);
    ck_assert_int_eq(n_fit, 2 * 3 * 1 * 1);
    lms_free(c);
    /* an explicit maximum that is not a multiple is rounded down and stays a candidate:
     * F 500:700:50 holds no multiple of 64, so 640 (= 10 x 64) alone */
    o.multiple_of = 64;
    o.ffn = (struct lms_search_axis){500, 700, 50};
    ck_assert_int_eq(lms_search_candidates(&m.arch, &o, &c, &n, &n_fit, &err), LMS_OK);
    for (int64_t i = 0; i < n; i++)
        ck_assert_int_eq(c[i].ffn, 640);
    lms_free(c);
    /* 10 heads searched 1:9 step 4 under 96: 4 and 8 give rows 128 and 256, no multiple of 96,
     * 9 is no multiple of the groups; the top is the largest head count <= 9 that is a multiple
     * of 3 (3 x 32 = 96) and of the 2 groups: 6 */
    struct lms_arch a10 = m.arch;
    a10.n_heads = 10;
    o.multiple_of = 96;
    o.ffn = (struct lms_search_axis){0};
    o.heads = (struct lms_search_axis){1, 9, 4};
    ck_assert_msg(lms_search_candidates(&a10, &o, &c, &n, &n_fit, &err) == LMS_OK, "%s",
                  err.msg);
    for (int64_t i = 0; i < n; i++)
        ck_assert_int_eq(c[i].n_heads, 6);
    lms_free(c);
    o.heads = (struct lms_search_axis){0};
    o.multiple_of = INT64_C(1) << 21;
    ck_assert_int_eq(lms_search_candidates(&m.arch, &o, &c, &n, &n_fit, &err), LMS_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "is not in 1..1048576"));
    /* no multiple in a range, or none under the budget: the error names --multiple-of */
    o.multiple_of = 512;
    o.ffn = (struct lms_search_axis){0};
    ck_assert_int_eq(lms_search_candidates(&m.arch, &o, &c, &n, &n_fit, &err), LMS_EINVAL);
    ck_assert_msg(strstr(err.msg, "no shape") && strstr(err.msg, "--multiple-of 512"), "%s",
                  err.msg);
    o.multiple_of = 32;
    o.target_params = 2000000;
    ck_assert_int_eq(lms_search_candidates(&m.arch, &o, &c, &n, &n_fit, &err), LMS_EINVAL);
    ck_assert_msg(strstr(err.msg, "no shape") && strstr(err.msg, "--multiple-of"), "%s",
                  err.msg);

    /* explicit targets: refused with the nearest valid values, accepted when they fit */
    const struct {
        struct lms_prune_targets t;
        const char *msg; /* NULL: accepted */
    } cases[] = {
        {{.ffn = 700, .multiple_of = 128}, "--target-ffn-hidden-size 700: the width is not a "
                                           "multiple of --multiple-of 128 (nearest valid 640 or "
                                           "768)"},
        {{.hidden = 100, .multiple_of = 128}, "(nearest valid 128)"},
        {{.n_heads = 6, .multiple_of = 128}, "the query rows 6 x 32 = 192 are not a multiple of "
                                             "--multiple-of 128 (nearest valid 4 or 8)"},
        {{.n_groups = 1, .multiple_of = 64}, "--target-num-query-groups 1: the key/value rows 1 "
                                             "x 32 = 32"},
        {{.ffn = 640, .hidden = 192, .n_heads = 6, .multiple_of = 64}, NULL},
        {{.n_groups = 1, .multiple_of = 32}, NULL},
        {{.ffn = 700, .multiple_of = 1}, NULL},
        {{.ffn = 700}, NULL},
        {{.n_layers = 8, .multiple_of = 4096}, NULL}, /* no width changes */
        {{.ffn = 512, .multiple_of = -1}, "--multiple-of -1 is not in 1..1048576"},
        {{.ffn = 512, .multiple_of = INT64_C(1) << 40}, "is not in 1..1048576"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        enum lms_status rc = lms_prune_targets_check(&cases[i].t, &m.arch, &err);
        if (!cases[i].msg) {
            ck_assert_msg(rc == LMS_OK, "case %zu: %s", i, err.msg);
            continue;
        }
        ck_assert_int_eq(rc, LMS_EINVAL);
        ck_assert_msg(strstr(err.msg, cases[i].msg), "case %zu: '%s'", i, err.msg);
    }
    lms_model_release(&m);
}
END_TEST

START_TEST(mixed_qwen2_llama_counts)
{
    /* biases and tied embeddings: the search's count equals the pruned IR's */
    const char *fx[] = {"models/qwen2-tiny", "models/llama-tiny"};
    for (int f = 0; f < 2; f++) {
        struct lms_model m;
        load(fx[f], &m);
        struct lms_search_opts o = {.target_params = lms_arch_n_params(&m.arch) * 3 / 4,
                                    .max_candidates = 3, .layers = {1, 0, 1}};
        struct lms_candidate *c;
        int64_t n, n_fit;
        struct lms_error err;
        ck_assert_msg(lms_search_candidates(&m.arch, &o, &c, &n, &n_fit, &err) == LMS_OK, "%s",
                      err.msg);
        for (int64_t i = 0; i < n; i++) {
            struct lms_prune_targets t = {.n_layers = c[i].n_layers, .ffn = c[i].ffn,
                                          .hidden = c[i].hidden, .n_heads = c[i].n_heads,
                                          .selection = LMS_LAYERS_LAST};
            struct lms_prune_plan p;
            struct lms_model out;
            ck_assert_int_eq(lms_prune_plan_make(&m, &t, NULL, &p, NULL, &err), LMS_OK);
            ck_assert_int_eq(lms_prune_apply(&m, &p, &out, &err), LMS_OK);
            ck_assert_int_eq(lms_model_n_params(&out), c[i].n_params);
            lms_model_release(&out);
            lms_prune_plan_release(&p);
        }
        lms_free(c);
        lms_model_release(&m);
    }
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("plan");
    TCase *tc = tcase_create("plan");
    tcase_add_test(tc, depth_by_block_influence);
    tcase_add_test(tc, depth_by_blocks);
    tcase_add_test(tc, width_from_scores);
    tcase_add_test(tc, targets_are_checked);
    tcase_add_test(tc, budget_search_counts_exactly);
    tcase_add_test(tc, budget_search_multiple_of);
    tcase_add_test(tc, mixed_qwen2_llama_counts);
    suite_add_tcase(s, tc);
    return s;
}
