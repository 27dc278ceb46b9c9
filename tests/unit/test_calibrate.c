/* Calibration and the budget search called from the library as a batch script would
 * (lms_calib_run, lms_search_run, lms_prune_plan_calibrated), on the fixture teacher, against
 * tests/golden/prune_search_teacher.json: the --json output of the command line
 *
 *   lmsurgeon prune fixtures/teacher OUT --dry-run --json --target-params 9M \
 *       --search-num-layers 10:11:1 --num-candidates 3 --eval-samples 2 \
 *       --data-paths fixtures/corpus/val.ids.u16 --num-train-samples 2 --seq-length 64 --mbs 2 \
 *       --layer-selection block-bi --threads 1
 *
 * written by the command as it was before calibration and the search moved into the library
 * (its seconds zeroed, input and output paths shortened). The search exercises every part: one
 * calibration pass for the width scores, block-bi rescored per candidate depth (blocks of 1
 * and 2), held-out losses, the ranking, and the plan of the chosen shape.
 * tests/cli/test_prune_cli.sh holds today's command line to the same file. */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "check_main.h"
#include "lms/format.h"
#include "lms/score.h"
#include "lms/surgery.h"

static json_t *golden(void)
{
    char path[4096];
    const char *root = getenv("LMS_SOURCE_ROOT");
    snprintf(path, sizeof path, "%s/tests/golden/prune_search_teacher.json", root ? root : ".");
    json_error_t je;
    json_t *g = json_load_file(path, 0, &je);
    ck_assert_msg(g != NULL, "%s: %s", path, je.text);
    return g;
}

static int64_t geti(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    ck_assert_msg(json_is_integer(v), "golden: '%s' is not an integer", key);
    return (int64_t)json_integer_value(v);
}

/* Losses and metrics are sums of float activations: thread counts and BLAS builds move the
 * last digits, not the choice. */
static void assert_close(double got, double want, const char *what, size_t i)
{
    ck_assert_msg(fabs(got - want) <= 1e-5 * fabs(want) + 1e-9, "%s %zu: %.10g, golden %.10g",
                  what, i, got, want);
}

START_TEST(search_matches_the_command_line)
{
    json_t *g = golden();
    char tp[1024], dp[1024];
    struct lms_error err;
    struct lms_model m;
    ck_assert_msg(lms_checkpoint_read(fixture_path("teacher", tp, sizeof tp), &m, &err) ==
                      LMS_OK,
                  "%s", err.msg);

    /* the options of the command line above */
    struct lms_prune_targets t = {.selection = LMS_LAYERS_METRIC,
                                  .metric = LMS_LAYER_METRIC_BLOCK_BI};
    struct lms_calib_opts co;
    lms_calib_opts_default(&co);
    co.data = fixture_path("corpus/val.ids.u16", dp, sizeof dp);
    co.n_samples = 2;
    co.seq_len = 64;
    co.mbs = 2;
    co.eval_samples = 2;
    co.threads = 1;
    lms_prune_calib_setup(&m.arch, &t, true, &co);
    struct lms_search_opts so = {.target_params = 9000000, .layers = {10, 11, 1},
                                 .max_candidates = 3};

    struct lms_importance imp;
    lms_importance_init(&imp, &m.arch);
    struct lms_calib *cal;
    ck_assert_msg(lms_calib_run(&m, &co, &cal, &imp, &err) == LMS_OK, "%s", err.msg);
    struct lms_search_result r;
    ck_assert_msg(lms_search_run(&m, &t, &so, &imp, cal, &r, &err) == LMS_OK, "%s", err.msg);

    /* the table: same shapes, sizes and order, losses to float accuracy */
    const json_t *gs = json_object_get(g, "search");
    const json_t *gc = json_object_get(gs, "candidates");
    ck_assert(json_is_true(json_object_get(gs, "ranked_by_loss")) && r.ranked);
    ck_assert_int_eq(r.n_fit, geti(gs, "n_fitting"));
    ck_assert_int_eq(r.n, (int64_t)json_array_size(gc));
    for (size_t i = 0; i < json_array_size(gc); i++) {
        const json_t *w = json_array_get(gc, i);
        const struct lms_candidate *c = &r.c[i];
        ck_assert_int_eq(c->n_layers, geti(w, "num_layers"));
        ck_assert_int_eq(c->ffn, geti(w, "ffn_hidden_size"));
        ck_assert_int_eq(c->hidden, geti(w, "hidden_size"));
        ck_assert_int_eq(c->n_heads, geti(w, "num_attention_heads"));
        ck_assert_int_eq(c->n_groups, geti(w, "num_query_groups"));
        ck_assert_int_eq(c->n_params, geti(w, "n_params"));
        assert_close(c->loss, json_number_value(json_object_get(w, "loss")), "loss", i);
    }
    ck_assert(json_is_true(json_object_get(json_array_get(gc, 0), "chosen")));

    /* the plan of the best: the same layers dropped by the same block scores, the same size */
    lms_candidate_targets(&r.c[0], &t);
    struct lms_prune_plan plan;
    json_t *rep;
    ck_assert_msg(lms_prune_plan_calibrated(&m, &t, &imp, cal, &plan, &rep, &err) == LMS_OK,
                  "%s", err.msg);
    const json_t *gl = json_object_get(json_object_get(g, "plan"), "layers");
    const json_t *l = json_object_get(rep, "layers");
    ck_assert_str_eq(json_string_value(json_object_get(l, "selection")), "block-bi");
    ck_assert(json_equal(json_object_get(l, "kept"), json_object_get(gl, "kept")));
    ck_assert_int_eq(geti(l, "dropped_block_start"), geti(gl, "dropped_block_start"));
    const json_t *gb = json_object_get(gl, "block_scores"), *b = json_object_get(l, "block_scores");
    ck_assert_int_eq(json_array_size(b), json_array_size(gb));
    for (size_t i = 0; i < json_array_size(gb); i++)
        assert_close(json_number_value(json_array_get(b, i)),
                     json_number_value(json_array_get(gb, i)), "block score", i);
    struct lms_model out;
    ck_assert_msg(lms_prune_apply(&m, &plan, &out, &err) == LMS_OK, "%s", err.msg);
    ck_assert_int_eq(lms_model_n_params(&out), geti(g, "n_params_after"));

    /* what the calibration says it was */
    json_t *cj = lms_calib_json(cal), *gj = json_object_get(g, "calibration");
    const char *keys[] = {"num_samples", "seq_length", "micro_batch", "seed",
                          "held_out_samples"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        ck_assert_int_eq(geti(cj, keys[i]), geti(gj, keys[i]));
    /* no layer metric in the first pass: block-bi is scored per candidate depth */
    ck_assert_ptr_null(json_object_get(gj, "layer_metric"));
    ck_assert_ptr_null(json_object_get(cj, "layer_metric"));

    json_decref(cj);
    lms_model_release(&out);
    json_decref(rep);
    lms_prune_plan_release(&plan);
    lms_search_result_release(&r);
    lms_calib_free(cal);
    lms_importance_release(&imp);
    lms_model_release(&m);
    json_decref(g);
}
END_TEST

/* Without held-out rows there is nothing to rank by: the search says so instead of reading past
 * the calibration rows. */
START_TEST(eval_needs_held_out_rows)
{
    char tp[1024], dp[1024];
    struct lms_error err;
    struct lms_model m;
    ck_assert_int_eq(lms_checkpoint_read(fixture_path("teacher", tp, sizeof tp), &m, &err),
                     LMS_OK);
    struct lms_calib_opts co;
    lms_calib_opts_default(&co);
    co.data = fixture_path("corpus/val.ids.u16", dp, sizeof dp);
    co.threads = 1;
    struct lms_importance imp;
    lms_importance_init(&imp, &m.arch);
    struct lms_calib *cal;
    /* nothing to gather: no pass runs, and no held-out rows were asked for */
    ck_assert_msg(lms_calib_run(&m, &co, &cal, &imp, &err) == LMS_OK, "%s", err.msg);
    ck_assert_ptr_null(lms_calib_describe(cal));
    double loss;
    ck_assert_int_eq(lms_calib_eval(cal, &m, &loss, &err), LMS_EINVAL);
    ck_assert(isnan(loss));
    lms_calib_free(cal);
    lms_importance_release(&imp);
    lms_model_release(&m);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("calibrate");
    TCase *tc = tcase_create("calibrate");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, search_matches_the_command_line);
    tcase_add_test(tc, eval_needs_held_out_rows);
    suite_add_tcase(s, tc);
    return s;
}
