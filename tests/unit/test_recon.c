/* Weight reconstruction after width pruning (include/lms/recon.h).
 *
 * - the closed form against numpy's lstsq (SVD, not the normal equations) on a fixture layer
 *   given by formulas, with and without a bias: golden numbers from tests/tools/recon_golden.py;
 * - what the refit is for: on calibration rows NOT used to gather the statistics, each pruned
 *   layer's projection output (down_proj and o_proj of the teacher cut to FFN 576 and 6 heads)
 *   is closer to the unpruned layer's with the refit than with the plain slice. The inputs of
 *   both are the unpruned model's activations, taken by the engine's hooks;
 * - the sidecar: written, read back layer by layer equal to the sums in memory, merged parts
 *   equal to their sum, and refused for another model. */
#include <cblas.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "check_main.h"
#include "lms/alloc.h"
#include "lms/backend.h"
#include "lms/dataset.h"
#include "lms/engine.h"
#include "lms/format.h"
#include "lms/recon.h"
#include "lms/score.h"
#include "lms/surgery.h"

/* ---- the golden fixture layer (the formulas of tests/tools/recon_golden.py) ------------- */

enum { GN = 40, GIN = 6, GROWS = 3, GK = 3 };
static const int64_t gkeep[GK] = {0, 2, 5};
static const double golden_plain[] = {1.1964301432972033, 0.68094788829640174, 1.1401251984281759, 1.0156768740965669, 0.75350499470682986, 1.0492955273449607, 0.94501346018036747, 0.59366275980075611, 1.1454613680674763};
static const double golden_bias_w[] = {0.22040263813457772, 0.32153465517101054, 1.4028331776679406, 0.23333477227665711, 0.46541464608662775, 1.2598710608787766, 0.44488766833067217, 0.40949599516829238, 1.2800754393385823};
static const double golden_bias_b[] = {1.0977891726508457, 1.1600968148050885, 1.1137585829009851};

static void fixture_layer(double *gram, double *sum, double *w, double *b)
{
    double a[GN][GIN];
    for (int t = 0; t < GN; t++)
        for (int i = 0; i < GIN; i++)
            a[t][i] = sin(0.7 * t + 1.3 * i) + 0.1 * i + cos(0.3 * t * i);
    memset(gram, 0, GIN * GIN * sizeof(double));
    memset(sum, 0, GIN * sizeof(double));
    for (int t = 0; t < GN; t++)
        for (int i = 0; i < GIN; i++) {
            sum[i] += a[t][i];
            for (int j = 0; j < GIN; j++)
                gram[i * GIN + j] += a[t][i] * a[t][j];
        }
    for (int r = 0; r < GROWS; r++) {
        for (int i = 0; i < GIN; i++)
            w[r * GIN + i] = 0.5 - 0.1 * r + 0.05 * i * i - 0.2 * cos(r + i);
        b[r] = 0.3 * r - 0.1;
    }
}

static void assert_golden(const double *got, const double *want, int n, const char *what)
{
    for (int i = 0; i < n; i++)
        ck_assert_msg(fabs(got[i] - want[i]) <= 1e-9 * (1 + fabs(want[i])),
                      "%s[%d]: %.17g, numpy %.17g", what, i, got[i], want[i]);
}

START_TEST(closed_form_matches_lstsq)
{
    double gram[GIN * GIN], sum[GIN], w[GROWS * GIN], b[GROWS], out[GROWS * GK];
    fixture_layer(gram, sum, w, b);
    struct lms_error err;
    ck_assert_msg(lms_recon_solve(w, NULL, GROWS, GIN, gram, sum, GN, gkeep, GK, 0.0, out, NULL,
                                  &err) == LMS_OK,
                  "%s", err.msg);
    assert_golden(out, golden_plain, GROWS * GK, "plain refit");
}
END_TEST

START_TEST(closed_form_with_bias_matches_lstsq)
{
    double gram[GIN * GIN], sum[GIN], w[GROWS * GIN], b[GROWS], out[GROWS * GK], bout[GROWS];
    fixture_layer(gram, sum, w, b);
    struct lms_error err;
    ck_assert_msg(lms_recon_solve(w, b, GROWS, GIN, gram, sum, GN, gkeep, GK, 0.0, out, bout,
                                  &err) == LMS_OK,
                  "%s", err.msg);
    assert_golden(out, golden_bias_w, GROWS * GK, "refit with bias: weight");
    assert_golden(bout, golden_bias_b, GROWS, "refit with bias: bias");
}
END_TEST

START_TEST(no_signal_is_refused)
{
    double gram[GIN * GIN] = {0}, sum[GIN] = {0}, w[GROWS * GIN] = {0}, out[GROWS * GK];
    struct lms_error err;
    ck_assert_int_eq(lms_recon_solve(w, NULL, GROWS, GIN, gram, sum, GN, gkeep, GK, 0.0, out,
                                     NULL, &err),
                     LMS_EINVAL);
}
END_TEST

/* ---- held-out layer-output error on the teacher ----------------------------------------- */

enum { CAL_ROWS = 32, HELD_ROWS = 8, SEQ = 256, MBS = 4 };

struct err_acc {
    const struct lms_model *full, *plain, *recon;
    const struct lms_prune_plan *plan;
    int64_t d; /* head_dim */
    double err[2][2][64]; /* [plain, recon][down, o][layer] */
    float *act;
};

/* The projection's weight of a model as f32 (rows x cols). */
static float *weight_f32(const struct lms_model *m, enum lms_role role, int64_t l, int64_t *rows,
                         int64_t *cols)
{
    const struct lms_tensor *t = lms_model_find(m, role, l);
    ck_assert_ptr_nonnull(t);
    *rows = t->view->shape[0];
    *cols = t->view->shape[1];
    float *w = lms_malloc((size_t)(*rows * *cols) * sizeof(float));
    struct lms_error err;
    ck_assert_msg(lms_view_read_as(t->view, 0, *rows * *cols, LMS_DTYPE_F32, w, &err) == LMS_OK,
                  "%s", err.msg);
    return w;
}

/* Sum over tokens of || W a - W'_K a_K ||^2 for the n x cols activations a. */
static double output_error(const float *a, int64_t n, int64_t cols, const float *w, int64_t rows,
                           const float *wk, const int64_t *keep, int64_t k)
{
    float *ak = lms_malloc((size_t)(n * k) * sizeof(float));
    float *y = lms_malloc((size_t)(n * rows) * sizeof(float));
    for (int64_t t = 0; t < n; t++)
        for (int64_t c = 0; c < k; c++)
            ak[t * k + c] = a[t * cols + keep[c]];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)rows, (int)cols, 1.0f, a,
                (int)cols, w, (int)cols, 0.0f, y, (int)rows);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)rows, (int)k, -1.0f, ak,
                (int)k, wk, (int)k, 1.0f, y, (int)rows);
    double e = 0;
    for (int64_t i = 0; i < n * rows; i++)
        e += (double)y[i] * y[i];
    lms_free(ak);
    lms_free(y);
    return e;
}

static enum lms_status on_act(void *ctx, struct lms_backend *be, const struct lms_activation *act,
                              struct lms_error *err)
{
    struct err_acc *acc = ctx;
    int64_t n = act->batch * act->seq, cols = act->cols, l = act->layer;
    enum lms_status rc = lms_buf_download(be, acc->act, (size_t)(n * cols) * 4, act->data,
                                          (size_t)(n * cols) * 4, err);
    if (rc)
        return rc;
    bool down = act->point == LMS_HOOK_DOWN_INPUT;
    enum lms_role role = down ? LMS_ROLE_DOWN : LMS_ROLE_O;
    /* the kept columns: FFN neurons, or the d channels of each kept head */
    int64_t k, *keep;
    if (down) {
        k = acc->plan->ffn[l].n;
        keep = acc->plan->ffn[l].index;
    } else {
        const struct lms_keep *h = &acc->plan->heads[l];
        k = h->n * acc->d;
        keep = lms_malloc((size_t)k * sizeof(int64_t));
        for (int64_t i = 0; i < k; i++)
            keep[i] = h->index[i / acc->d] * acc->d + i % acc->d;
    }
    int64_t rows, c, r2, k2;
    float *w = weight_f32(acc->full, role, l, &rows, &c);
    for (int v = 0; v < 2; v++) {
        float *wk = weight_f32(v ? acc->recon : acc->plain, role, l, &r2, &k2);
        ck_assert_int_eq(k2, k);
        acc->err[v][!down][l] += output_error(acc->act, n, cols, w, rows, wk, keep, k);
        lms_free(wk);
    }
    lms_free(w);
    if (!down)
        lms_free(keep);
    return LMS_OK;
}

START_TEST(refit_lowers_held_out_layer_error)
{
    char tp[1024], dp[1024];
    struct lms_error err;
    struct lms_model m;
    ck_assert_msg(lms_checkpoint_read(fixture_path("teacher", tp, sizeof tp), &m, &err) == LMS_OK,
                  "%s", err.msg);
    struct lms_prune_targets t = {.ffn = 576, .n_heads = 6};
    struct lms_calib_opts co;
    lms_calib_opts_default(&co);
    co.data = fixture_path("corpus/val.ids.u16", dp, sizeof dp);
    co.n_samples = CAL_ROWS;
    co.seq_len = SEQ;
    co.mbs = MBS;
    co.threads = 1;
    lms_prune_calib_setup(&m.arch, &t, false, &co);
    co.gram = true;
    struct lms_importance imp;
    lms_importance_init(&imp, &m.arch);
    struct lms_calib *cal;
    ck_assert_msg(lms_calib_run(&m, &co, &cal, &imp, &err) == LMS_OK, "%s", err.msg);
    const struct lms_gram *g = lms_calib_gram(cal);
    ck_assert_ptr_nonnull(g);
    ck_assert_int_eq(g->n_tokens, CAL_ROWS * SEQ);

    struct lms_prune_plan plan;
    ck_assert_msg(lms_prune_plan_calibrated(&m, &t, &imp, cal, &plan, NULL, &err) == LMS_OK,
                  "%s", err.msg);
    struct lms_model plain, recon;
    ck_assert(lms_prune_apply(&m, &plan, &plain, &err) == LMS_OK);
    ck_assert(lms_prune_apply(&m, &plan, &recon, &err) == LMS_OK);
    int64_t n_refit;
    ck_assert_msg(lms_prune_reconstruct(&m, &plan, g, &recon, &n_refit, &err) == LMS_OK, "%s",
                  err.msg);
    ck_assert_int_eq(n_refit, 2 * m.arch.n_layers);

    /* the unpruned model over the held-out rows (after the calibration rows, same order) */
    struct lms_backend *be;
    struct lms_backend_opts bo = {.n_threads = 1};
    ck_assert(lms_backend_open_name("cpu", &bo, &be, &err) == LMS_OK);
    struct lms_dataset *ds;
    struct lms_sampler *smp;
    ck_assert(lms_data_open(co.data, &ds, &err) == LMS_OK);
    ck_assert(lms_sampler_new_calibration(ds, SEQ, (uint64_t)co.seed, true, &smp, &err) == LMS_OK);
    struct lms_engine *e;
    struct lms_engine_opts eo = {.max_batch = MBS, .max_seq = SEQ};
    ck_assert_msg(lms_engine_new(&m, be, &eo, &e, &err) == LMS_OK, "%s", err.msg);
    struct err_acc acc = {.full = &m, .plain = &plain, .recon = &recon, .plan = &plan,
                          .d = m.arch.head_dim};
    acc.act = lms_malloc((size_t)(MBS * SEQ * m.arch.ffn) * sizeof(float));
    int32_t ids[MBS * SEQ];
    for (int64_t r0 = 0; r0 < HELD_ROWS; r0 += MBS) {
        for (int64_t b = 0; b < MBS; b++)
            ck_assert(lms_sampler_window(smp, CAL_ROWS + r0 + b, ids + b * SEQ, SEQ, &err) ==
                      LMS_OK);
        struct lms_forward f = {.ids = ids, .batch = MBS, .seq = SEQ, .hook = on_act,
                                .hook_ctx = &acc,
                                .hook_mask = 1u << LMS_HOOK_DOWN_INPUT |
                                             1u << LMS_HOOK_ATTN_CONTEXT};
        ck_assert_msg(lms_engine_forward(e, &f, &err) == LMS_OK, "%s", err.msg);
    }
    for (int64_t l = 0; l < m.arch.n_layers; l++)
        for (int k = 0; k < 2; k++)
            ck_assert_msg(acc.err[1][k][l] < acc.err[0][k][l],
                          "layer %lld %s: held-out output error %.6g with the refit, %.6g "
                          "without",
                          (long long)l, k ? "o_proj" : "down_proj", acc.err[1][k][l],
                          acc.err[0][k][l]);
    lms_free(acc.act);
    lms_engine_free(e);
    lms_sampler_free(smp);
    lms_dataset_free(ds);
    lms_backend_free(be);
    lms_model_release(&plain);
    lms_model_release(&recon);
    lms_prune_plan_release(&plan);
    lms_calib_free(cal);
    lms_importance_release(&imp);
    lms_model_release(&m);
}
END_TEST

/* ---- the sidecar ------------------------------------------------------------------------- */

/* Small in-memory statistics of a 2-layer model with F = 3 and C = 2 (values by formula). */
static void small_gram(struct lms_gram *g, double scale)
{
    struct lms_arch a = {.n_layers = 2, .ffn = 3, .n_heads = 2, .head_dim = 1};
    struct lms_error err;
    ck_assert(lms_gram_alloc(g, &a, &err) == LMS_OK);
    for (int k = 0; k < LMS_GRAM_KINDS; k++) {
        int64_t d = g->dim[k];
        for (int64_t i = 0; i < 2 * d * d; i++)
            g->gram[k][i] = scale * (1.5 + (double)i * (k + 1));
        for (int64_t i = 0; i < 2 * d; i++)
            g->sum[k][i] = scale * (0.25 - (double)i);
    }
    g->n_tokens = 10, g->n_rows = 2, g->row_length = 5;
    memcpy(g->model_fp, "0123456789abcdef", LMS_HASH64_HEX);
    memcpy(g->data_fp, "fedcba9876543210", LMS_HASH64_HEX);
}

static void tmp_path(const char *name, char *dst, size_t cap)
{
    const char *dir = getenv("TMPDIR");
    snprintf(dst, cap, "%s/lms-recon-%d-%s", dir ? dir : "/tmp", (int)getpid(), name);
}

START_TEST(sidecar_round_trip_and_merge)
{
    struct lms_gram a, b, r;
    small_gram(&a, 1.0);
    small_gram(&b, 2.0);
    char pa[512], pb[512], pm[512];
    tmp_path("a.safetensors", pa, sizeof pa);
    tmp_path("b.safetensors", pb, sizeof pb);
    tmp_path("m.safetensors", pm, sizeof pm);
    struct lms_error err;
    ck_assert_msg(lms_gram_write(&a, pa, true, &err) == LMS_OK, "%s", err.msg);
    ck_assert_msg(lms_gram_write(&b, pb, true, &err) == LMS_OK, "%s", err.msg);
    const char *parts[] = {pa, pb};
    ck_assert_msg(lms_gram_merge_files(parts, 2, pm, true, &err) == LMS_OK, "%s", err.msg);
    ck_assert_msg(lms_gram_open(pm, &r, &err) == LMS_OK, "%s", err.msg);
    ck_assert_int_eq(r.n_tokens, 20);
    ck_assert_str_eq(r.model_fp, "0123456789abcdef");
    for (int k = 0; k < LMS_GRAM_KINDS; k++)
        for (int64_t l = 0; l < 2; l++) {
            double gm[9], sm[3];
            int64_t d = r.dim[k];
            ck_assert(lms_gram_layer(&r, k, l, gm, sm, &err) == LMS_OK);
            for (int64_t i = 0; i < d * d; i++) /* 1x + 2x of exactly representable values */
                ck_assert(gm[i] == 3 * a.gram[k][l * d * d + i]);
            for (int64_t i = 0; i < d; i++)
                ck_assert(sm[i] == 3 * a.sum[k][l * d + i]);
        }
    struct lms_arch same = {.n_layers = 2, .ffn = 3, .n_heads = 2, .head_dim = 1};
    struct lms_arch other = {.n_layers = 2, .ffn = 4, .n_heads = 2, .head_dim = 1};
    ck_assert_int_eq(lms_gram_check(&r, &same, "0123456789abcdef", &err), LMS_OK);
    ck_assert_int_eq(lms_gram_check(&r, &other, NULL, &err), LMS_ESHAPE);
    ck_assert_int_eq(lms_gram_check(&r, &same, "0000000000000000", &err), LMS_EFORMAT);
    lms_gram_release(&r);
    lms_gram_release(&a);
    lms_gram_release(&b);
    unlink(pa), unlink(pb), unlink(pm);
}
END_TEST

START_TEST(sidecar_path_beside_the_importance_file)
{
    char p[256];
    lms_gram_sidecar_path("out/scores.json", p, sizeof p);
    ck_assert_str_eq(p, "out/scores.gram.safetensors");
    lms_gram_sidecar_path("scores", p, sizeof p);
    ck_assert_str_eq(p, "scores.gram.safetensors");
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("recon");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, closed_form_matches_lstsq);
    tcase_add_test(tc, closed_form_with_bias_matches_lstsq);
    tcase_add_test(tc, no_signal_is_refused);
    tcase_add_test(tc, sidecar_round_trip_and_merge);
    tcase_add_test(tc, sidecar_path_beside_the_importance_file);
    tcase_add_test(tc, refit_lowers_held_out_layer_error);
    suite_add_tcase(s, tc);
    return s;
}
