/* The training engine against PyTorch's own numbers and against finite differences of itself at
 * the model level.
 *
 * Golden (fixtures/models/qwen3-tiny-distill-reference, written by PyTorch autograd in fp32):
 * the losses kd_T1, kd_T2 (KL times T^2), ce and kd_T1 + 0.5 ce within 1e-5 relative, every
 * parameter gradient within 1e-4 x max |g| of that loss, and the weights after one AdamW step
 * (lr 1e-3, betas 0.9/0.95, eps 1e-8, weight decay 0.1 on every tensor, no clipping) within
 * 1e-6. The teacher is given both as its logits and as a forward engine on the bf16 teacher.
 * Model level: central differences of the trainer's own loss for the tied-embedding GQA llama
 * and the qkv-bias qwen2 fixtures; recomputation and gradient accumulation change nothing. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check_main.h"
#include "lms/format.h"
#include "lms/safetensors.h"
#include "lms/surgery.h"
#include "lms/train.h"

#define REF_DIR "models/qwen3-tiny-distill-reference"

/* One thread: these models are tiny, and on a loaded machine every OpenMP barrier of a tiny op
 * can cost a scheduler slice. The threaded paths of the ops are covered by test_train_ops, and
 * the AdamW golden test runs the whole step on two threads. */
static int n_threads = 1;

static struct lms_backend *open_cpu(void)
{
    struct lms_error err;
    struct lms_backend *be = NULL;
    struct lms_backend_opts bo = {.n_threads = n_threads};
    ck_assert_msg(lms_backend_open_name("cpu", &bo, &be, &err) == LMS_OK, "%s", err.msg);
    return be;
}

/* The backend of the golden tests: LMS_TEST_DEVICE (default "cpu") in LMS_TEST_PRECISION
 * (default "fp32"). The gpu suite runs the "golden" case again on cuda (tests/gpu/meson.build);
 * those tests reach parameters only through lms_buf_download / lms_buf_upload. */
static struct lms_backend *open_test_backend(void)
{
    const char *dev = getenv("LMS_TEST_DEVICE"), *prec = getenv("LMS_TEST_PRECISION");
    if (!dev || !strcmp(dev, "cpu"))
        return open_cpu();
    struct lms_error err;
    struct lms_backend *be = NULL;
    struct lms_backend_opts bo = {.n_threads = n_threads};
    ck_assert_msg(lms_precision_parse(prec ? prec : "fp32", &bo.precision, &err) == LMS_OK, "%s",
                  err.msg);
    ck_assert_msg(lms_backend_open_name(dev, &bo, &be, &err) == LMS_OK, "%s", err.msg);
    return be;
}

/* A host copy of n floats at a backend address (malloc'd). */
static float *host_copy(struct lms_backend *be, const float *src, int64_t n)
{
    struct lms_error err;
    float *h = malloc((size_t)(n ? n : 1) * 4);
    ck_assert_ptr_nonnull(h);
    ck_assert_msg(lms_buf_download(be, h, (size_t)n * 4, src, (size_t)n * 4, &err) == LMS_OK,
                  "%s", err.msg);
    return h;
}

static void read_model(const char *rel, struct lms_model *m)
{
    struct lms_error err;
    char path[4096];
    ck_assert_msg(lms_checkpoint_read(fixture_path(rel, path, sizeof path), m, &err) == LMS_OK,
                  "%s: %s", rel, err.msg);
}

/* Tensor name of f as fp32 (int64 ids as int32 when ids). NULL when absent. */

struct golden {
    struct lms_st_file ref;
    struct lms_model student;
    struct lms_backend *be;
    struct lms_trainer *tr;
    int32_t *ids, *targets;
    float *teacher_logits;
    int64_t B, S;
};

static void golden_open(struct golden *g, bool recompute)
{
    struct lms_error err;
    char path[4096];
    memset(g, 0, sizeof *g);
    ck_assert_msg(lms_st_open(fixture_path(REF_DIR "/reference.safetensors", path, sizeof path),
                              &g->ref, &err) == LMS_OK,
                  "%s", err.msg);
    int64_t n;
    g->ids = read_ref(&g->ref, "input_ids", true, &n);
    ck_assert_ptr_nonnull(g->ids);
    g->B = 2;
    g->S = 24;
    ck_assert_int_eq(n, g->B * g->S);
    g->teacher_logits = read_ref(&g->ref, "teacher_logits", false, &n);
    ck_assert_int_eq(n, g->B * g->S * 512);
    g->targets = malloc((size_t)n * 4);
    for (int64_t b = 0; b < g->B; b++)
        for (int64_t t = 0; t < g->S; t++)
            g->targets[b * g->S + t] = t + 1 < g->S ? g->ids[b * g->S + t + 1] : -1;
    read_model(REF_DIR "/student", &g->student);
    g->be = open_test_backend();
    struct lms_train_opts to = {.max_batch = 2, .max_seq = 24, .logits_rows = 7,
                                .recompute = recompute};
    ck_assert_msg(lms_trainer_new(&g->student, g->be, &to, &g->tr, &err) == LMS_OK, "%s",
                  err.msg);
}

static void golden_close(struct golden *g)
{
    lms_trainer_free(g->tr);
    lms_backend_free(g->be);
    lms_model_release(&g->student);
    lms_st_close(&g->ref);
    free(g->ids);
    free(g->targets);
    free(g->teacher_logits);
}

static double ref_scalar(const struct lms_st_file *f, const char *name)
{
    int64_t n;
    float *v = read_ref(f, name, false, &n);
    ck_assert_msg(v != NULL, "%s missing", name);
    double x = v[0];
    free(v);
    return x;
}

static void check_rel(double got, double want, double tol, const char *what)
{
    ck_assert_msg(fabs(got - want) <= tol * fabs(want), "%s: %.9g, PyTorch %.9g", what, got,
                  want);
}

/* Every parameter's gradient against grad.<loss>.<name>. */
static void check_grads_tol(struct golden *g, const char *loss, double tol)
{
    for (size_t i = 0; i < lms_trainer_n_params(g->tr); i++) {
        const struct lms_train_param *p = lms_trainer_param(g->tr, i);
        char name[512];
        snprintf(name, sizeof name, "grad.%s.%s", loss, p->name);
        int64_t n;
        float *want = read_ref(&g->ref, name, false, &n);
        ck_assert_msg(want != NULL, "%s missing", name);
        ck_assert_int_eq(n, p->numel);
        float *got = host_copy(g->be, p->g, p->numel);
        double mx = 0, worst = 0;
        int64_t at = 0;
        for (int64_t k = 0; k < n; k++)
            mx = fmax(mx, fabs(want[k]));
        for (int64_t k = 0; k < n; k++)
            if (fabs(got[k] - want[k]) > worst) {
                worst = fabs(got[k] - want[k]);
                at = k;
            }
        ck_assert_msg(worst <= tol * mx + 1e-12,
                      "%s: element %lld is %.8g, PyTorch %.8g (max |g| %.3g)", name,
                      (long long)at, got[at], want[at], mx);
        free(want);
        free(got);
    }
}

static void check_grads(struct golden *g, const char *loss)
{
    check_grads_tol(g, loss, 1e-4);
}

static void micro(struct golden *g, const struct lms_loss_opts *lo, struct lms_loss_parts *lp)
{
    struct lms_error err;
    struct lms_train_batch b = {.ids = g->ids, .batch = g->B, .seq = g->S,
                                .targets = g->targets, .teacher_logits = g->teacher_logits};
    ck_assert_msg(lms_trainer_zero_grads(g->tr, &err) == LMS_OK, "%s", err.msg);
    ck_assert_msg(lms_trainer_micro_step(g->tr, &b, lo, 1.0, lp, &err) == LMS_OK, "%s",
                  err.msg);
}

static void golden_losses_and_grads(bool recompute)
{
    struct golden g;
    golden_open(&g, recompute);
    struct lms_loss_opts lo;
    struct lms_loss_parts lp;

    lms_loss_opts_default(&lo);
    lo.t2_scale = true;
    micro(&g, &lo, &lp);
    check_rel(lp.kd, ref_scalar(&g.ref, "loss.kd_T1"), 1e-5, "kd_T1");
    check_rel(lp.ce, ref_scalar(&g.ref, "loss.ce"), 1e-5, "ce (reported)");
    check_rel(lp.total, lp.kd, 1e-12, "total of kd alone");
    ck_assert_int_eq(lp.n_kd, 48);
    ck_assert_int_eq(lp.n_ce, 46);
    check_grads(&g, "kd_T1");

    lo.temperature = 2.0;
    micro(&g, &lo, &lp);
    check_rel(lp.kd, ref_scalar(&g.ref, "loss.kd_T2"), 1e-5, "kd_T2");

    lms_loss_opts_default(&lo);
    lo.kd_weight = 0;
    lo.ce_weight = 1;
    micro(&g, &lo, &lp);
    check_rel(lp.total, ref_scalar(&g.ref, "loss.ce"), 1e-5, "ce");
    check_grads(&g, "ce");

    /* no teacher: cross-entropy alone trains, and eval reports it (a validation loss) */
    struct lms_error err;
    struct lms_train_batch nt = {.ids = g.ids, .batch = g.B, .seq = g.S, .targets = g.targets};
    ck_assert_int_eq(lms_trainer_zero_grads(g.tr, &err), LMS_OK);
    ck_assert_msg(lms_trainer_micro_step(g.tr, &nt, &lo, 1.0, &lp, &err) == LMS_OK, "%s",
                  err.msg);
    check_rel(lp.total, ref_scalar(&g.ref, "loss.ce"), 1e-5, "ce without a teacher");
    check_grads(&g, "ce");
    lms_loss_opts_default(&lo);
    ck_assert_int_eq(lms_trainer_eval(g.tr, &nt, &lo, &lp, &err), LMS_OK);
    check_rel(lp.ce, ref_scalar(&g.ref, "loss.ce"), 1e-5, "eval ce without a teacher");
    ck_assert_int_eq(lms_trainer_micro_step(g.tr, &nt, &lo, 1.0, &lp, &err), LMS_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "needs a teacher"));

    lms_loss_opts_default(&lo);
    lo.ce_weight = 0.5;
    micro(&g, &lo, &lp);
    check_rel(lp.total, ref_scalar(&g.ref, "loss.kd_T1_plus_half_ce"), 1e-5,
              "kd_T1_plus_half_ce");
    check_grads(&g, "kd_T1_plus_half_ce");
    golden_close(&g);
}

START_TEST(golden_losses_gradients)
{
    golden_losses_and_grads(false);
}
END_TEST

START_TEST(golden_recompute)
{
    golden_losses_and_grads(true);
}
END_TEST

/* One AdamW step against PyTorch's weights. With PyTorch's own gradients loaded into the
 * trainer, every weight within 1e-6 (the optimiser's arithmetic). With the trainer's gradients,
 * the same where |g| >= 1e-5: a step-1 update is lr g / (|g| + eps), which for |g| near eps
 * (1e-8) turns a gradient difference far below the gradient tolerance into a visible weight
 * difference; there the update only has to stay within the step size lr. */
static void adamw_against_torch(struct golden *g, bool own_grads)
{
    struct lms_error err;
    char path[4096];
    struct lms_loss_opts lo;
    lms_loss_opts_default(&lo);
    micro(g, &lo, NULL);
    float **ref_g = calloc(lms_trainer_n_params(g->tr), sizeof *ref_g);
    for (size_t i = 0; i < lms_trainer_n_params(g->tr); i++) {
        const struct lms_train_param *p = lms_trainer_param(g->tr, i);
        char name[512];
        int64_t n;
        snprintf(name, sizeof name, "grad.kd_T1.%s", p->name);
        ref_g[i] = read_ref(&g->ref, name, false, &n);
        ck_assert_ptr_nonnull(ref_g[i]);
        if (!own_grads)
            ck_assert_msg(lms_buf_upload(g->be, p->g, ref_g[i], (size_t)n * 4, &err) == LMS_OK,
                          "%s", err.msg);
    }
    struct lms_adamw_opts ao;
    lms_adamw_megatron(&ao);
    ao.lr = 1e-3;
    ao.eps = 1e-8;
    ao.decay_all = true;
    ao.clip_norm = 0;
    ao.step = 1;
    double norm = -1;
    ck_assert_msg(lms_trainer_adamw(g->tr, &ao, &norm, &err) == LMS_OK, "%s", err.msg);
    ck_assert(norm > 0);
    struct lms_st_file after;
    ck_assert_msg(lms_st_open(fixture_path(REF_DIR "/after_one_adamw_step.safetensors", path,
                                           sizeof path),
                              &after, &err) == LMS_OK,
                  "%s", err.msg);
    for (size_t i = 0; i < lms_trainer_n_params(g->tr); i++) {
        const struct lms_train_param *p = lms_trainer_param(g->tr, i);
        int64_t n;
        float *want = read_ref(&after, p->name, false, &n);
        ck_assert_msg(want != NULL, "%s missing", p->name);
        ck_assert_int_eq(n, p->numel);
        float *w = host_copy(g->be, p->w, n);
        for (int64_t k = 0; k < n; k++) {
            double tol = !own_grads || fabs(ref_g[i][k]) >= 1e-5 ? 1e-6 : ao.lr;
            ck_assert_msg(fabs(w[k] - want[k]) <= tol, "%s[%lld]: %.9g, PyTorch %.9g",
                          p->name, (long long)k, w[k], want[k]);
        }
        free(w);
        free(want);
        free(ref_g[i]);
    }
    free(ref_g);
    lms_st_close(&after);
}

START_TEST(golden_adamw_step)
{
    struct golden g;
    struct lms_error err;
    n_threads = 2;
    golden_open(&g, false);
    adamw_against_torch(&g, false);
    golden_close(&g);
    golden_open(&g, false);
    adamw_against_torch(&g, true);
    /* export: the same numbers in an IR model, in F32 and rounded to BF16 */
    struct lms_model out;
    ck_assert_msg(lms_trainer_export(g.tr, LMS_DTYPE_F32, &out, &err) == LMS_OK, "%s", err.msg);
    ck_assert_msg(lms_model_validate(&out, &err) == LMS_OK, "%s", err.msg);
    for (size_t i = 0; i < lms_trainer_n_params(g.tr); i++) {
        const struct lms_train_param *p = lms_trainer_param(g.tr, i);
        struct lms_tensor *t = lms_model_find_name(&out, p->name);
        ck_assert_ptr_nonnull(t);
        float *v = malloc((size_t)p->numel * 4);
        ck_assert_int_eq(lms_view_read_as(t->view, 0, p->numel, LMS_DTYPE_F32, v, &err),
                         LMS_OK);
        float *w = host_copy(g.be, p->w, p->numel);
        ck_assert_int_eq(memcmp(v, w, (size_t)p->numel * 4), 0);
        free(w);
        free(v);
    }
    lms_model_release(&out);
    ck_assert_msg(lms_trainer_export(g.tr, LMS_DTYPE_BF16, &out, &err) == LMS_OK, "%s", err.msg);
    ck_assert_int_eq(out.arch.dtype, LMS_DTYPE_BF16);
    ck_assert_int_eq(out.tensors[0].view->dtype, LMS_DTYPE_BF16);
    lms_model_release(&out);
    ck_assert_int_eq(lms_trainer_export(g.tr, LMS_DTYPE_I32, &out, &err), LMS_EINVAL);
    golden_close(&g);
    n_threads = 1;
}
END_TEST

/* The teacher as a forward engine (bf16 checkpoint upcast on the CPU) gives the same KD loss and
 * gradients as its logits. */
START_TEST(golden_teacher_engine)
{
    struct golden g;
    struct lms_error err;
    golden_open(&g, false);
    struct lms_model tm;
    read_model("models/qwen3-tiny-bf16-sharded", &tm);
    struct lms_engine *te;
    struct lms_engine_opts eo = {.max_batch = 2, .max_seq = 24};
    ck_assert_msg(lms_engine_new(&tm, g.be, &eo, &te, &err) == LMS_OK, "%s", err.msg);
    struct lms_loss_opts lo;
    lms_loss_opts_default(&lo);
    struct lms_loss_parts lp;
    struct lms_train_batch b = {.ids = g.ids, .batch = g.B, .seq = g.S, .teacher = te};
    ck_assert_int_eq(lms_trainer_zero_grads(g.tr, &err), LMS_OK);
    ck_assert_msg(lms_trainer_micro_step(g.tr, &b, &lo, 1.0, &lp, &err) == LMS_OK, "%s",
                  err.msg);
    /* the engine's teacher logits match PyTorch's within the forward's 1e-4 x max |logit|,
     * which moves the KD gradient by up to a few 1e-4 of its largest entry */
    check_rel(lp.kd, ref_scalar(&g.ref, "loss.kd_T1"), 1e-5, "kd_T1 (teacher engine)");
    check_grads_tol(&g, "kd_T1", 1e-3);
    /* both teachers at once, or none, is refused */
    b.teacher_logits = g.teacher_logits;
    ck_assert_int_eq(lms_trainer_micro_step(g.tr, &b, &lo, 1.0, &lp, &err), LMS_EINVAL);
    lms_engine_free(te);
    lms_model_release(&tm);
    golden_close(&g);
}
END_TEST

/* ---- a teacher wider than its student ------------------------------------------------------- */

/* The trainer's gradients, one host array per parameter. */
static float **download_grads(struct lms_trainer *tr, struct lms_backend *be)
{
    struct lms_error err;
    size_t n = lms_trainer_n_params(tr);
    float **g = calloc(n, sizeof *g);
    for (size_t i = 0; i < n; i++) {
        const struct lms_train_param *p = lms_trainer_param(tr, i);
        size_t bytes = (size_t)p->numel * 4;
        g[i] = malloc(bytes);
        ck_assert_int_eq(lms_buf_download(be, g[i], bytes, p->g, bytes, &err), LMS_OK);
    }
    return g;
}

/* A student pruned on every width axis at once (hidden 64 -> 48, FFN 160 -> 96, 2 -> 1 query
 * groups of 2 heads) learning from its unpruned teacher through the teacher engine, which
 * runs at the teacher's own width: the loss and every gradient equal those of the same step
 * given the teacher's logits computed beforehand by the engine alone. Planned without the
 * teacher's hidden size, the step is refused with a message naming the option. */
START_TEST(width_pruned_student_teacher_engine)
{
    struct lms_error err;
    struct lms_model tm, sm;
    read_model("models/qwen3-tiny", &tm);
    struct lms_prune_targets t = {.hidden = 48, .ffn = 96,
                                  .n_heads = 2, .n_groups = 1};
    struct lms_prune_plan plan;
    ck_assert_msg(lms_prune_plan_make(&tm, &t, NULL, &plan, NULL, &err) == LMS_OK, "%s",
                  err.msg);
    ck_assert_msg(lms_prune_apply(&tm, &plan, &sm, &err) == LMS_OK, "%s", err.msg);
    lms_prune_plan_release(&plan);
    ck_assert_int_eq(sm.arch.hidden, 48);
    struct lms_backend *be = open_test_backend();
    enum { B = 2, S = 12 };
    struct lms_engine *te;
    struct lms_engine_opts eo = {.max_batch = B, .max_seq = S};
    ck_assert_msg(lms_engine_new(&tm, be, &eo, &te, &err) == LMS_OK, "%s", err.msg);
    int64_t V = lms_engine_logits_cols(te);
    int32_t ids[B * S], tgt[B * S];
    uint64_t x = 0x2545F4914F6CDD1Dull;
    for (int i = 0; i < 2 * B * S; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        (i < B * S ? ids : tgt)[i % (B * S)] = (int32_t)(x % (uint64_t)V);
    }
    float *tl = malloc((size_t)(B * S * V) * 4);
    struct lms_forward f = {.ids = ids, .batch = B, .seq = S, .logits = tl,
                            .logits_cap = (size_t)(B * S * V)};
    ck_assert_msg(lms_engine_forward(te, &f, &err) == LMS_OK, "%s", err.msg);

    struct lms_loss_opts lo;
    lms_loss_opts_default(&lo);
    lo.ce_weight = 0.5;
    struct lms_train_opts to = {.max_batch = B, .max_seq = S, .logits_rows = 7,
                                .teacher_hidden = tm.arch.hidden};
    struct lms_trainer *tr_engine, *tr_logits;
    ck_assert_msg(lms_trainer_new(&sm, be, &to, &tr_engine, &err) == LMS_OK, "%s", err.msg);
    ck_assert_msg(lms_trainer_new(&sm, be, &to, &tr_logits, &err) == LMS_OK, "%s", err.msg);
    struct lms_train_batch b = {.ids = ids, .batch = B, .seq = S, .targets = tgt, .teacher = te};
    struct lms_loss_parts pe, pl;
    ck_assert_int_eq(lms_trainer_zero_grads(tr_engine, &err), LMS_OK);
    ck_assert_msg(lms_trainer_micro_step(tr_engine, &b, &lo, 1.0, &pe, &err) == LMS_OK, "%s",
                  err.msg);
    b.teacher = NULL;
    b.teacher_logits = tl;
    ck_assert_int_eq(lms_trainer_zero_grads(tr_logits, &err), LMS_OK);
    ck_assert_msg(lms_trainer_micro_step(tr_logits, &b, &lo, 1.0, &pl, &err) == LMS_OK, "%s",
                  err.msg);
    ck_assert(pe.kd > 0.01); /* the pruned student is not its teacher */
    check_rel(pe.kd, pl.kd, 1e-5, "kd (wider teacher engine)");
    check_rel(pe.ce, pl.ce, 1e-6, "ce (wider teacher engine)");
    float **ge = download_grads(tr_engine, be), **gl = download_grads(tr_logits, be);
    for (size_t i = 0; i < lms_trainer_n_params(tr_engine); i++) {
        const struct lms_train_param *p = lms_trainer_param(tr_engine, i);
        double mx = 0;
        for (int64_t k = 0; k < p->numel; k++)
            mx = fmax(mx, fabs(gl[i][k]));
        for (int64_t k = 0; k < p->numel; k++)
            ck_assert_msg(fabs(ge[i][k] - gl[i][k]) <= 1e-4 * mx + 1e-9,
                          "%s[%lld]: %g vs %g", p->name, (long long)k, ge[i][k], gl[i][k]);
        free(ge[i]);
        free(gl[i]);
    }
    free(ge);
    free(gl);
    lms_trainer_free(tr_engine);
    lms_trainer_free(tr_logits);

    /* planned at the student's width, the teacher's wider final-norm output has no room */
    to.teacher_hidden = 0;
    ck_assert_int_eq(lms_trainer_new(&sm, be, &to, &tr_engine, &err), LMS_OK);
    b.teacher = te;
    b.teacher_logits = NULL;
    ck_assert_int_eq(lms_trainer_micro_step(tr_engine, &b, &lo, 1.0, &pe, &err), LMS_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "teacher_hidden"));
    lms_trainer_free(tr_engine);
    free(tl);
    lms_engine_free(te);
    lms_backend_free(be);
    lms_model_release(&sm);
    lms_model_release(&tm);
}
END_TEST

/* ---- model-level finite differences --------------------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double urand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

/* For fixture rel: random ids (B x S), targets and random teacher logits; the trainer's gradient
 * of kd + 0.7 ce (T = 1.5, T^2 scaled) against central differences of its own eval loss at the
 * largest-gradient element of every parameter (and a random one); fp32 arithmetic, so the
 * tolerance is 2 % of the element, 1e-3 of the tensor's max and 1e-4 of the model's max. */
static void fd_model(const char *rel, int64_t B, int64_t S, enum lms_kd_kind kind)
{
    struct lms_error err;
    struct lms_model m;
    read_model(rel, &m);
    struct lms_backend *be = open_cpu();
    struct lms_trainer *tr;
    struct lms_train_opts to = {.max_batch = B, .max_seq = S, .logits_rows = 5};
    ck_assert_msg(lms_trainer_new(&m, be, &to, &tr, &err) == LMS_OK, "%s", err.msg);
    int64_t N = B * S, V = lms_trainer_logits_cols(tr);
    int32_t *ids = malloc((size_t)N * 4), *tgt = malloc((size_t)N * 4);
    float *tl = malloc((size_t)(N * V) * 4);
    for (int64_t i = 0; i < N; i++) {
        ids[i] = (int32_t)(urand() * 40); /* few distinct ids: repeated rows in the embedding */
        tgt[i] = i % S == S - 1 ? -1 : (int32_t)(urand() * V);
    }
    for (int64_t i = 0; i < N * V; i++)
        tl[i] = (float)(urand() * 6 - 3);
    struct lms_loss_opts lo;
    lms_loss_opts_default(&lo);
    lo.kd = kind;
    lo.top_k = 37;
    lo.temperature = 1.5;
    lo.t2_scale = true;
    lo.ce_weight = 0.7;
    struct lms_train_batch b = {.ids = ids, .batch = B, .seq = S, .targets = tgt,
                                .teacher_logits = tl};
    struct lms_loss_parts lp;
    ck_assert_int_eq(lms_trainer_zero_grads(tr, &err), LMS_OK);
    ck_assert_msg(lms_trainer_micro_step(tr, &b, &lo, 1.0, &lp, &err) == LMS_OK, "%s", err.msg);
    double all_max = 0;
    for (size_t i = 0; i < lms_trainer_n_params(tr); i++)
        for (int64_t k = 0; k < lms_trainer_param(tr, i)->numel; k++)
            all_max = fmax(all_max, fabs(lms_trainer_param(tr, i)->g[k]));
    for (size_t i = 0; i < lms_trainer_n_params(tr); i++) {
        const struct lms_train_param *p = lms_trainer_param(tr, i);
        int64_t best = 0;
        double mx = 0;
        for (int64_t k = 0; k < p->numel; k++)
            if (fabs(p->g[k]) > mx) {
                mx = fabs(p->g[k]);
                best = k;
            }
        int64_t picks[2] = {best, (int64_t)(urand() * p->numel)};
        for (int j = 0; j < 2; j++) {
            int64_t k = picks[j];
            float w0 = p->w[k];
            double h = fmax(1e-2 * fabs(w0), 2e-3);
            struct lms_loss_parts a, c;
            p->w[k] = (float)(w0 + h);
            ck_assert_int_eq(lms_trainer_eval(tr, &b, &lo, &a, &err), LMS_OK);
            p->w[k] = (float)(w0 - h);
            ck_assert_int_eq(lms_trainer_eval(tr, &b, &lo, &c, &err), LMS_OK);
            p->w[k] = w0;
            double fd = (a.total - c.total) / (2 * h);
            /* the difference quotient carries the loss's fp32 rounding divided by h: an
             * absolute floor scaled by the largest gradient of the model */
            ck_assert_msg(fabs(fd - p->g[k]) <= 0.02 * fabs(fd) + 1e-3 * mx + 1e-4 * all_max,
                          "%s %s[%lld]: gradient %.6g, central difference %.6g (max %.3g)", rel,
                          p->name, (long long)k, p->g[k], fd, mx);
        }
    }
    lms_trainer_free(tr);
    lms_backend_free(be);
    lms_model_release(&m);
    free(ids);
    free(tgt);
    free(tl);
}

START_TEST(fd_llama_tied_gqa)
{
    fd_model("models/llama-tiny", 2, 7, LMS_KD_FORWARD_KL);
}
END_TEST

START_TEST(fd_qwen2_bias_reverse_kl)
{
    fd_model("models/qwen2-tiny", 1, 33, LMS_KD_REVERSE_KL);
}
END_TEST

START_TEST(fd_qwen3_top_k)
{
    fd_model("models/qwen3-tiny", 3, 5, LMS_KD_TOP_K);
}
END_TEST

/* ---- intermediate losses ------------------------------------------------------------------ */

/* A student 48 channels wide (every fourth hidden channel of qwen3-tiny dropped) of layers 0 and
 * 2, against the full qwen3-tiny as a teacher engine: the learned 64 x 48 map is trained. */
struct hidden_setup {
    struct lms_model teacher, student;
    struct lms_backend *be;
    struct lms_engine *te;
    struct lms_trainer *tr;
    int32_t ids[2 * 9], tgt[2 * 9];
};

static const struct lms_hidden_pair hidden_pairs[3] = {
    {LMS_HOOK_EMBED_OUT, -1, LMS_HOOK_EMBED_OUT, -1},
    {LMS_HOOK_MLP_NORM_OUT, 1, LMS_HOOK_MLP_NORM_OUT, 2},
    {LMS_HOOK_FINAL_NORM_OUT, -1, LMS_HOOK_FINAL_NORM_OUT, -1},
};

static void hidden_open(struct hidden_setup *h)
{
    struct lms_error err;
    read_model("models/qwen3-tiny", &h->teacher);
    struct lms_prune_plan pp;
    lms_prune_plan_init(&pp, 4);
    pp.hidden.n = 48;
    pp.hidden.index = malloc(48 * sizeof(int64_t));
    for (int64_t i = 0, k = 0; i < 64; i++)
        if (i % 4 != 1)
            pp.hidden.index[k++] = i;
    pp.layers.n = 2;
    pp.layers.index = malloc(2 * sizeof(int64_t));
    pp.layers.index[0] = 0;
    pp.layers.index[1] = 2;
    ck_assert_msg(lms_prune_apply(&h->teacher, &pp, &h->student, &err) == LMS_OK, "%s", err.msg);
    lms_prune_plan_release(&pp);
    h->be = open_cpu();
    struct lms_engine_opts eo = {.max_batch = 2, .max_seq = 9};
    ck_assert_msg(lms_engine_new(&h->teacher, h->be, &eo, &h->te, &err) == LMS_OK, "%s",
                  err.msg);
    struct lms_train_opts to = {.max_batch = 2, .max_seq = 9, .logits_rows = 4,
                                .teacher_hidden = 64, .max_hidden_pairs = 3};
    ck_assert_msg(lms_trainer_new(&h->student, h->be, &to, &h->tr, &err) == LMS_OK, "%s",
                  err.msg);
    for (int i = 0; i < 18; i++) {
        h->ids[i] = (int32_t)(urand() * 512);
        h->tgt[i] = i % 9 == 8 ? -1 : (int32_t)(urand() * 512);
    }
}

static void hidden_close(struct hidden_setup *h)
{
    lms_trainer_free(h->tr);
    lms_engine_free(h->te);
    lms_backend_free(h->be);
    lms_model_release(&h->student);
    lms_model_release(&h->teacher);
}

/* Gradients of lo into a fresh host copy (one array per parameter). */
static float **grads_of(struct hidden_setup *h, const struct lms_loss_opts *lo,
                        struct lms_loss_parts *lp)
{
    struct lms_error err;
    struct lms_train_batch b = {.ids = h->ids, .batch = 2, .seq = 9, .targets = h->tgt,
                                .teacher = h->te};
    ck_assert_int_eq(lms_trainer_zero_grads(h->tr, &err), LMS_OK);
    ck_assert_msg(lms_trainer_micro_step(h->tr, &b, lo, 1.0, lp, &err) == LMS_OK, "%s", err.msg);
    size_t n = lms_trainer_n_params(h->tr);
    float **g = calloc(n, sizeof *g);
    for (size_t i = 0; i < n; i++) {
        const struct lms_train_param *p = lms_trainer_param(h->tr, i);
        g[i] = malloc((size_t)p->numel * 4);
        memcpy(g[i], p->g, (size_t)p->numel * 4);
    }
    return g;
}

static void free_grads(struct hidden_setup *h, float **g)
{
    for (size_t i = 0; i < lms_trainer_n_params(h->tr); i++)
        free(g[i]);
    free(g);
}

/* Weighted cosine loss on three pairs through the learned map: central differences. */
START_TEST(hidden_loss_fd)
{
    struct lms_error err;
    struct hidden_setup h;
    hidden_open(&h);
    size_t np = lms_trainer_n_params(h.tr);
    const struct lms_train_param *map = lms_trainer_param(h.tr, np - 2);
    ck_assert_str_eq(map->name, "distill.hidden_map.weight");
    ck_assert_int_eq(map->shape[0], 64);
    ck_assert_int_eq(map->shape[1], 48);
    for (int kind = 0; kind < 2; kind++) {
        struct lms_loss_opts lo;
        lms_loss_opts_default(&lo);
        lo.ce_weight = 0.3;
        lo.hidden_weight = kind ? 0.05 : 2.0;
        lo.hidden_kind = kind ? LMS_HIDDEN_MSE : LMS_HIDDEN_COSINE;
        lo.pairs = hidden_pairs;
        lo.n_pairs = 3;
        struct lms_loss_parts lp;
        float **g = grads_of(&h, &lo, &lp);
        ck_assert(lp.hidden > 0);
        struct lms_train_batch b = {.ids = h.ids, .batch = 2, .seq = 9, .targets = h.tgt,
                                    .teacher = h.te};
        for (size_t i = 0; i < np; i++) {
            const struct lms_train_param *p = lms_trainer_param(h.tr, i);
            int64_t best = 0;
            double mx = 0;
            for (int64_t k = 0; k < p->numel; k++)
                if (fabs(g[i][k]) > mx) {
                    mx = fabs(g[i][k]);
                    best = k;
                }
            float w0 = p->w[best];
            double step = fmax(1e-2 * fabs(w0), 2e-3);
            struct lms_loss_parts a, c;
            p->w[best] = (float)(w0 + step);
            ck_assert_int_eq(lms_trainer_eval(h.tr, &b, &lo, &a, &err), LMS_OK);
            p->w[best] = (float)(w0 - step);
            ck_assert_int_eq(lms_trainer_eval(h.tr, &b, &lo, &c, &err), LMS_OK);
            p->w[best] = w0;
            double fd = (a.total - c.total) / (2 * step);
            ck_assert_msg(fabs(fd - g[i][best]) <= 0.02 * fabs(fd) + 2e-5,
                          "hidden kind %d %s[%lld]: gradient %.6g, central difference %.6g",
                          kind, p->name, (long long)best, g[i][best], fd);
        }
        free_grads(&h, g);
    }
    hidden_close(&h);
}
END_TEST

/* The scaled combination is, by definition, a fixed linear combination of the three gradients
 * with coefficients from the loss values: L_int' = L_int (L_logits / L_int), then with CE on
 * L = w L_ce + lambda (L_logits + L_int') (L_ce / (L_logits + L_int')), for the CE weight w = 1
 * (the Minitron rule) and another (the weight must reach the CE term). */
START_TEST(hidden_scaled_rule)
{
    struct hidden_setup h;
    hidden_open(&h);
    struct lms_loss_opts base;
    lms_loss_opts_default(&base);
    base.pairs = hidden_pairs;
    base.n_pairs = 3;
    base.hidden_kind = LMS_HIDDEN_MSE;
    struct lms_loss_opts kd = base, ce = base, hid = base;
    kd.kd_weight = 1;
    ce.kd_weight = 0;
    ce.ce_weight = 1;
    hid.kd_weight = 0;
    hid.hidden_weight = 1;
    struct lms_loss_parts lk, lc, lh, ls;
    float **gk = grads_of(&h, &kd, &lk), **gc = grads_of(&h, &ce, &lc);
    float **gh = grads_of(&h, &hid, &lh);
    double Ll = lk.kd, Lc = lc.ce, Li = lh.hidden;
    ck_assert(Ll > 0 && Lc > 0 && Li > 0);
    const double ce_weights[2] = {1.0, 0.4};
    for (int c = 0; c < 2; c++) {
        double w = ce_weights[c];
        struct lms_loss_opts sc = base;
        sc.combine = LMS_COMBINE_SCALED;
        sc.kd_weight = 0.7; /* lambda */
        sc.ce_weight = w;
        float **gs = grads_of(&h, &sc, &ls);
        double r = Lc / (Ll + Ll), ak = 0.7 * r, ah = 0.7 * r * Ll / Li;
        check_rel(ls.total, w * Lc + 0.7 * Lc, 1e-6, "scaled total");
        for (size_t i = 0; i < lms_trainer_n_params(h.tr); i++) {
            const struct lms_train_param *p = lms_trainer_param(h.tr, i);
            double mx = 0;
            for (int64_t k = 0; k < p->numel; k++)
                mx = fmax(mx, fabs(gs[i][k]));
            for (int64_t k = 0; k < p->numel; k++) {
                double want = ak * gk[i][k] + w * gc[i][k] + ah * gh[i][k];
                ck_assert_msg(fabs(gs[i][k] - want) <= 1e-4 * mx + 1e-9,
                              "CE weight %g: %s[%lld]: %.8g, combination %.8g", w, p->name,
                              (long long)k, gs[i][k], want);
            }
        }
        free_grads(&h, gs);
    }
    free_grads(&h, gk);
    free_grads(&h, gc);
    free_grads(&h, gh);
    /* a trainer planned without the map cannot compare 48 channels with the teacher's 64 */
    struct lms_error err;
    struct lms_trainer *plain;
    struct lms_train_opts to = {.max_batch = 2, .max_seq = 9, .max_hidden_pairs = 3};
    ck_assert_int_eq(lms_trainer_new(&h.student, h.be, &to, &plain, &err), LMS_OK);
    struct lms_train_batch b = {.ids = h.ids, .batch = 2, .seq = 9, .teacher = h.te};
    ck_assert_int_eq(lms_trainer_micro_step(plain, &b, &hid, 1.0, NULL, &err), LMS_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "hidden size 64 exceeds the 48 planned"));
    lms_trainer_free(plain);
    hidden_close(&h);
}
END_TEST

/* Two micro-steps at grad_scale 0.5 on the same batch give the gradient of one at 1. */
START_TEST(accumulation)
{
    struct golden g;
    struct lms_error err;
    golden_open(&g, false);
    struct lms_loss_opts lo;
    lms_loss_opts_default(&lo);
    struct lms_train_batch b = {.ids = g.ids, .batch = g.B, .seq = g.S,
                                .teacher_logits = g.teacher_logits};
    ck_assert_int_eq(lms_trainer_zero_grads(g.tr, &err), LMS_OK);
    ck_assert_int_eq(lms_trainer_micro_step(g.tr, &b, &lo, 0.5, NULL, &err), LMS_OK);
    ck_assert_int_eq(lms_trainer_micro_step(g.tr, &b, &lo, 0.5, NULL, &err), LMS_OK);
    check_grads(&g, "kd_T1");
    /* one row of the two, with kd_mask, scores 24 positions */
    uint8_t mask[48];
    for (int i = 0; i < 48; i++)
        mask[i] = i < 24;
    b.kd_mask = mask;
    struct lms_loss_parts lp;
    ck_assert_int_eq(lms_trainer_eval(g.tr, &b, &lo, &lp, &err), LMS_OK);
    ck_assert_int_eq(lp.n_kd, 24);
    golden_close(&g);
}
END_TEST

/* Two runs of the same steps on two threads, one of them recomputing activations, give
 * bit-identical weights and moments (what resuming relies on): no reduction depends on thread
 * timing, and a recomputed layer is the layer. */
START_TEST(deterministic)
{
    struct lms_error err;
    struct golden g[2];
    n_threads = 2;
    for (int k = 0; k < 2; k++) {
        golden_open(&g[k], k == 1);
        struct lms_loss_opts lo;
        lms_loss_opts_default(&lo);
        lo.ce_weight = 0.25;
        struct lms_adamw_opts ao;
        lms_adamw_defaults(&ao);
        ao.lr = 1e-3;
        ao.clip_norm = 0.5;
        for (int step = 1; step <= 2; step++) {
            micro(&g[k], &lo, NULL);
            ao.step = step;
            ck_assert_int_eq(lms_trainer_adamw(g[k].tr, &ao, NULL, &err), LMS_OK);
        }
    }
    for (size_t i = 0; i < lms_trainer_n_params(g[0].tr); i++) {
        const struct lms_train_param *a = lms_trainer_param(g[0].tr, i);
        const struct lms_train_param *b = lms_trainer_param(g[1].tr, i);
        size_t bytes = (size_t)a->numel * 4;
        ck_assert_msg(!memcmp(a->w, b->w, bytes) && !memcmp(a->m, b->m, bytes) &&
                          !memcmp(a->v, b->v, bytes),
                      "%s differs between two identical runs", a->name);
    }
    golden_close(&g[0]);
    golden_close(&g[1]);
    n_threads = 1;
}
END_TEST

START_TEST(plan_and_errors)
{
    struct lms_error err;
    struct lms_model m;
    read_model("models/qwen3-tiny", &m);
    struct lms_train_plan p, pr;
    struct lms_train_opts to = {.max_batch = 4, .max_seq = 64};
    ck_assert_int_eq(lms_train_plan_make(&m.arch, 512, &to, &p, &err), LMS_OK);
    ck_assert_int_eq(p.n_params, lms_arch_n_params(&m.arch));
    ck_assert(p.weights >= (size_t)p.n_params * 4);
    ck_assert_int_eq(p.moments, 2 * p.weights);
    to.recompute = true;
    ck_assert_int_eq(lms_train_plan_make(&m.arch, 512, &to, &pr, &err), LMS_OK);
    ck_assert(pr.activations < p.activations);
    to.max_batch = 0;
    ck_assert_int_eq(lms_train_plan_make(&m.arch, 512, &to, &p, &err), LMS_EINVAL);
    to.max_batch = INT64_MAX / 2;
    ck_assert_int_eq(lms_train_plan_make(&m.arch, 512, &to, &p, &err), LMS_EINVAL);

    struct lms_backend *be = open_cpu();
    struct lms_trainer *tr;
    to = (struct lms_train_opts){.max_batch = 1, .max_seq = 8};
    ck_assert_int_eq(lms_trainer_new(&m, be, &to, &tr, &err), LMS_OK);
    int32_t ids[16] = {0};
    float *tl = calloc(16 * 512, 4);
    struct lms_loss_opts lo;
    lms_loss_opts_default(&lo);
    struct lms_train_batch b = {.ids = ids, .batch = 2, .seq = 8, .teacher_logits = tl};
    ck_assert_int_eq(lms_trainer_micro_step(tr, &b, &lo, 1.0, NULL, &err), LMS_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "outside the planned"));
    b.batch = 1;
    ids[3] = 512;
    ck_assert_int_eq(lms_trainer_micro_step(tr, &b, &lo, 1.0, NULL, &err), LMS_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "token id 512"));
    ids[3] = 0;
    lo.kd = LMS_KD_TOP_K;
    lo.top_k = 0;
    ck_assert_int_eq(lms_trainer_micro_step(tr, &b, &lo, 1.0, NULL, &err), LMS_EINVAL);
    struct lms_adamw_opts ao;
    lms_adamw_defaults(&ao);
    ao.lr = 1e-3;
    ck_assert_int_eq(lms_trainer_adamw(tr, &ao, NULL, &err), LMS_EINVAL); /* step 0 */
    /* the decay grouping: 2-D weights decay, 1-D norms do not */
    for (size_t i = 0; i < lms_trainer_n_params(tr); i++) {
        const struct lms_train_param *q = lms_trainer_param(tr, i);
        ck_assert_int_eq(q->decay, q->ndim == 2);
    }
    /* a teacher with another vocabulary: the student's first 256 rows of embedding and head */
    struct lms_model tm;
    ck_assert_int_eq(lms_model_clone(&m, &tm, &err), LMS_OK);
    tm.arch.vocab = tm.arch.padded_vocab = 256;
    for (size_t i = 0; i < tm.n_tensors; i++) {
        struct lms_tensor *t = &tm.tensors[i];
        if (t->role != LMS_ROLE_EMBED && t->role != LMS_ROLE_LM_HEAD)
            continue;
        struct lms_view *v;
        ck_assert_int_eq(lms_view_new_range(t->view, 0, 0, 256, &v, &err), LMS_OK);
        lms_view_release(t->view);
        t->view = v;
    }
    struct lms_engine *te;
    struct lms_engine_opts eo = {.max_batch = 1, .max_seq = 8};
    ck_assert_msg(lms_engine_new(&tm, be, &eo, &te, &err) == LMS_OK, "%s", err.msg);
    b.teacher_logits = NULL;
    b.teacher = te;
    lo.kd = LMS_KD_FORWARD_KL;
    ck_assert_int_eq(lms_trainer_micro_step(tr, &b, &lo, 1.0, NULL, &err), LMS_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "vocabularies must be equal"));
    lms_engine_free(te);
    lms_model_release(&tm);
    free(tl);
    lms_trainer_free(tr);
    lms_backend_free(be);
    lms_model_release(&m);
}
END_TEST

/* A gradient that is not finite: LMS_ENONFINITE with the norm reported, and no weight or
 * moment changed (the caller skips the step). */
START_TEST(adamw_nonfinite_updates_nothing)
{
    struct lms_error err;
    struct lms_model m;
    read_model("models/qwen3-tiny", &m);
    struct lms_backend *be = open_cpu();
    struct lms_trainer *tr;
    struct lms_train_opts to = {.max_batch = 1, .max_seq = 8};
    ck_assert_int_eq(lms_trainer_new(&m, be, &to, &tr, &err), LMS_OK);
    ck_assert_int_eq(lms_trainer_zero_grads(tr, &err), LMS_OK);
    size_t n = lms_trainer_n_params(tr);
    float **before = calloc(n, sizeof *before);
    for (size_t i = 0; i < n; i++) {
        const struct lms_train_param *p = lms_trainer_param(tr, i);
        before[i] = host_copy(be, p->w, p->numel);
        float *g = calloc((size_t)p->numel, 4);
        for (int64_t k = 0; k < p->numel; k++)
            g[k] = 1e-3f;
        if (i == n / 2)
            g[p->numel / 2] = NAN;
        ck_assert(lms_buf_upload(be, p->g, g, (size_t)p->numel * 4, &err) == LMS_OK);
        free(g);
    }
    struct lms_adamw_opts ao;
    lms_adamw_defaults(&ao);
    ao.lr = 1e-2;
    ao.step = 1;
    double norm = 0;
    ck_assert_int_eq(lms_trainer_adamw(tr, &ao, &norm, &err), LMS_ENONFINITE);
    ck_assert(isnan(norm));
    ck_assert_ptr_nonnull(strstr(err.msg, "not finite"));
    for (size_t i = 0; i < n; i++) {
        const struct lms_train_param *p = lms_trainer_param(tr, i);
        float *after = host_copy(be, p->w, p->numel);
        ck_assert_msg(memcmp(after, before[i], (size_t)p->numel * 4) == 0, "%s changed",
                      p->name);
        free(after);
        free(before[i]);
    }
    free(before);
    lms_trainer_free(tr);
    lms_backend_free(be);
    lms_model_release(&m);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("train");
    /* against PyTorch's golden losses, gradients and AdamW step; device-parametrised */
    TCase *gc = tcase_create("golden");
    tcase_set_timeout(gc, 120);
    tcase_add_test(gc, golden_losses_gradients);
    tcase_add_test(gc, golden_recompute);
    tcase_add_test(gc, golden_adamw_step);
    tcase_add_test(gc, golden_teacher_engine);
    tcase_add_test(gc, width_pruned_student_teacher_engine);
    suite_add_tcase(s, gc);
    TCase *tc = tcase_create("train");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, fd_llama_tied_gqa);
    tcase_add_test(tc, fd_qwen2_bias_reverse_kl);
    tcase_add_test(tc, fd_qwen3_top_k);
    tcase_add_test(tc, hidden_loss_fd);
    tcase_add_test(tc, hidden_scaled_rule);
    tcase_add_test(tc, accumulation);
    tcase_add_test(tc, deterministic);
    tcase_add_test(tc, plan_and_errors);
    tcase_add_test(tc, adamw_nonfinite_updates_nothing);
    suite_add_tcase(s, tc);
    return s;
}
